"""Validation at the boundary: hyperparameters when a transformation is built, leaves when it first runs.

Every check takes the argument's name (or the owner and the leaf path) so the error says which
argument was wrong and what came. Traced values (inside `jit`) and schedules cannot be checked at
build time and pass through; their values are the user's responsibility at trace time.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from gradchain import tree as tree_util


class Check(enum.StrEnum):
    """The named checks a hyperparameter can carry.

    A string enum, so that the check recorded next to a value in the state is static, hashable and
    readable, and `set_hyperparams` re-applies the same check to a new value.

    Example:
        ```python
        import gradchain as gc

        spec = gc.HyperparamSpec("my_ingredient", eps=(1e-8, gc.Check.NONNEGATIVE))
        assert gc.Check.NONNEGATIVE == "nonnegative"
        ```
    """

    ANY = "any"
    FINITE = "finite"
    NONNEGATIVE = "nonnegative"
    POSITIVE = "positive"
    UNIT_INTERVAL = "unit_interval"  # betas and decay rates: [0, 1)
    CLOSED_UNIT_INTERVAL = "closed_unit_interval"  # fractions, dampening, alphas: [0, 1]


CHECKS: dict[Check, Callable[[float], bool]] = {
    Check.ANY: lambda x: True,
    Check.FINITE: lambda x: math.isfinite(x),
    Check.NONNEGATIVE: lambda x: math.isfinite(x) and x >= 0,
    Check.POSITIVE: lambda x: math.isfinite(x) and x > 0,
    Check.UNIT_INTERVAL: lambda x: 0 <= x < 1,
    Check.CLOSED_UNIT_INTERVAL: lambda x: 0 <= x <= 1,
}

DESCRIPTIONS: dict[Check, str] = {
    Check.ANY: "a number",
    Check.FINITE: "a finite number",
    Check.NONNEGATIVE: "a finite number >= 0",
    Check.POSITIVE: "a finite number > 0",
    Check.UNIT_INTERVAL: "a number in [0, 1)",
    Check.CLOSED_UNIT_INTERVAL: "a number in [0, 1]",
}


def concrete_float(value: Any) -> float | None:
    """Return `value` as a Python float when it is a concrete scalar, else None (traced/array)."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (int, float, np.number)):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.shape(value) == ():
        try:
            return float(np.asarray(value))
        except Exception:  # traced or abstract value
            return None
    return None


def check(name: str, value: Any, kind: Check) -> None:
    """Raise ValueError naming `name` unless `value` satisfies the named check `kind`.

    Schedules (callables) and traced values are not checked. A non-scalar array raises TypeError:
    hyperparameters are scalars.
    """
    if isinstance(value, (type, np.dtype)):  # classes are callable: a dtype must not pass for a schedule
        raise TypeError(
            f"{name} must be a number or a schedule, got the type {getattr(value, '__name__', value)!s} "
            "(a dtype passed by position where a hyperparameter goes?)"
        )
    if callable(value):
        return
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number or a schedule, got the boolean {value!r}")
    if hasattr(value, "shape") and np.shape(value) != ():
        raise TypeError(f"{name} must be a scalar, got an array of shape {np.shape(value)}")
    if not isinstance(value, jax.core.Tracer) and not (
        isinstance(value, (int, float, np.number)) or hasattr(value, "dtype")
    ):
        raise TypeError(f"{name} must be a number or a schedule, got {type(value).__name__}: {value!r}")
    x = concrete_float(value)
    if x is None:
        return
    kind = Check(kind)
    if not CHECKS[kind](x):
        raise ValueError(f"{name} must be {DESCRIPTIONS[kind]}, got {value!r}")


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """Return `value` as an int, raising ValueError/TypeError naming `name` if it is not an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_transformation(where: str, tx: Any) -> None:
    """Raise TypeError naming `where` unless `tx` has callable `init` and `update` (any optax-protocol object)."""
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(f"{where} must be a GradientTransformation (with init and update), got {tx!r}")


def check_params_given(owner: str, params: Any, updates: Any) -> None:
    """Raise unless `params` were passed to `update` and have the structure of `updates`."""
    if params is None:
        raise ValueError(f"{owner} needs the params: call update(updates, state, params)")
    tree_util.check_same_structure(params, updates, expected_name="params", actual_name="updates", where=owner)


def check_leaf_dtypes(owner: str, what: str, tree: Any, *, complex_ok: bool) -> None:
    """Raise TypeError naming the leaf path for integer/boolean leaves, or complex ones if unsupported."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = jnp.dtype(getattr(leaf, "dtype", None) or jnp.result_type(leaf))
        where = tree_util.path_str(path)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{owner}: {what} leaf {where} has dtype {dtype}; optimizers need floating-point "
                "(or complex) arrays. Keep integer or boolean leaves out of the optimized tree, or mask them."
            )
        if not complex_ok and jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"{owner}: {what} leaf {where} is {dtype}; {owner} does not support complex values")


def check_state_dtype(owner: str, name: str, dtype: DTypeLike | None) -> DTypeLike | None:
    """Validate a user-given storage dtype such as `mu_dtype` (a floating dtype or None)."""
    if dtype is None:
        return None
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{owner}: {name} must be a floating dtype or None, got {dtype!r}") from e
    if not jnp.issubdtype(resolved, jnp.inexact):
        raise TypeError(f"{owner}: {name} must be a floating dtype or None, got {resolved}")
    return dtype
