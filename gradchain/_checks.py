"""Validation of hyperparameters at build time.

Every check takes the argument's name so the error says which argument was wrong and what came.
Traced values (inside `jit`) and schedules cannot be checked here and pass through; their values
are the user's responsibility at trace time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# Named checks, so that a hyperparameter's check can be recorded (as a string, which is static and
# hashable) next to its value in the state and re-applied by `set_hyperparams`.
CHECKS: dict[str, Callable[[float], bool]] = {
    "any": lambda x: True,
    "finite": lambda x: math.isfinite(x),
    "nonnegative": lambda x: math.isfinite(x) and x >= 0,
    "positive": lambda x: math.isfinite(x) and x > 0,
    "unit_interval": lambda x: 0 <= x < 1,  # betas and decay rates: [0, 1)
    "closed_unit_interval": lambda x: 0 <= x <= 1,  # fractions, dampening, alphas: [0, 1]
}

DESCRIPTIONS: dict[str, str] = {
    "any": "a number",
    "finite": "a finite number",
    "nonnegative": "a finite number >= 0",
    "positive": "a finite number > 0",
    "unit_interval": "a number in [0, 1)",
    "closed_unit_interval": "a number in [0, 1]",
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


def check(name: str, value: Any, kind: str) -> None:
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
    if not CHECKS[kind](x):
        raise ValueError(f"{name} must be {DESCRIPTIONS[kind]}, got {value!r}")


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """Return `value` as an int, raising ValueError/TypeError naming `name` if it is not an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
