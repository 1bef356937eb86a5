"""Checks and fixes of bad numbers: stop a run loudly, zero NaNs, keep params non-negative.

These are plain ingredients (they take no inner transformation): `check_finite` raises on a NaN or
Inf in the updates, `zero_nans` replaces NaNs with zeros, and `keep_params_nonnegative` clips the
updates so that the params stay non-negative.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import tree as tree_util
from gradchain._base import EmptyState, GradientTransformation, stateless
from gradchain._checks import check_leaf_dtypes


def _raise_if_nonfinite(paths: tuple[str, ...], flags: np.ndarray) -> None:
    bad = [path for path, ok in zip(paths, np.asarray(flags), strict=True) if not ok]
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise FloatingPointError(f"check_finite: NaN or Inf in the updates at leaf {shown}")


def check_finite() -> GradientTransformation:
    """Raise an error naming the leaf path when any update contains NaN or Inf.

    $$ u = g \\quad \\text{if every } g_i \\text{ is finite, else an error} $$

    Put it first in a chain while debugging a run that produces NaNs. Called eagerly it raises
    `FloatingPointError` at once. Inside `jax.jit` the check runs on the device (one boolean per
    leaf) and the host raises the same `FloatingPointError` from a callback; JAX then surfaces it as
    a `JaxRuntimeError` whose message contains the leaf path. The callback synchronises the step with
    the host, so remove the check from production runs (a later release adds `apply_if_finite`,
    which skips bad steps instead).

    Returns:
        A stateless `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.check_finite(), gc.sgd(0.1))
        params = {"w": jnp.ones(2), "b": jnp.ones(1)}
        state = tx.init(params)
        try:
            tx.update({"w": jnp.array([1.0, jnp.nan]), "b": jnp.ones(1)}, state, params)
        except FloatingPointError as e:
            assert "leaf w" in str(e)
        ```
    """

    def check(updates, params):
        del params
        flat = jax.tree_util.tree_flatten_with_path(updates)[0]
        if not flat:
            return updates
        paths = tuple(tree_util.path_str(p) for p, _ in flat)
        flags = jnp.stack([jnp.all(jnp.isfinite(leaf)) for _, leaf in flat])
        if isinstance(flags, jax.core.Tracer):
            jax.debug.callback(lambda f: _raise_if_nonfinite(paths, f), flags)
        else:
            _raise_if_nonfinite(paths, np.asarray(flags))
        return updates

    return stateless(check)


class ZeroNansState(NamedTuple):
    """State of `zero_nans`.

    Attributes:
        found_nan: a tree shaped like the updates with one boolean scalar per leaf, True where that
            leaf had a NaN at the last step (as optax's `ZeroNansState.found_nan`).
        nan_count: how many NaN entries were replaced at the last step, over all leaves (int32).
    """

    found_nan: Any
    nan_count: jax.Array


def zero_nans() -> GradientTransformation:
    """Replace NaN entries of the updates by zero, and record where they were.

    $$ u_i = \\begin{cases} 0 & g_i \\text{ is NaN} \\\\ g_i & \\text{otherwise} \\end{cases} $$

    Only NaNs are replaced, as in optax's `zero_nans`: $\\pm\\infty$ passes through. An infinite
    gradient is an overflow signal (loss scaling backs off on it, `apply_if_finite` skips the step),
    and zeroing it silently would hide it. A complex entry counts as NaN when either part is NaN.
    Integer leaves have no NaN and pass through; `None` leaves stay `None`.

    Returns:
        A `GradientTransformation` with `ZeroNansState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.zero_nans()
        params = {"a": jnp.zeros(3), "b": jnp.zeros(2)}
        u, state = tx.update({"a": jnp.array([1.0, jnp.nan, jnp.inf]), "b": jnp.ones(2)}, tx.init(params))
        assert u["a"][1] == 0 and u["a"][2] == jnp.inf
        assert bool(state.found_nan["a"]) and not bool(state.found_nan["b"]) and state.nan_count == 1
        ```
    """

    def init(params):
        found = jax.tree.map(lambda p: jnp.zeros((), jnp.bool_), params)
        return tree_util.place_like(ZeroNansState(found, jnp.zeros((), jnp.int32)), params)

    def update(updates, state, params=None, **extra_args):
        del state, params, extra_args
        masks = jax.tree.map(jnp.isnan, updates)
        found = jax.tree.map(jnp.any, masks)
        counts = [jnp.sum(m, dtype=jnp.int32) for m in jax.tree.leaves(masks)]
        nan_count = sum(counts[1:], counts[0]) if counts else jnp.zeros((), jnp.int32)
        clean = jax.tree.map(lambda g, m: jnp.where(m, jnp.zeros((), g.dtype), g), updates, masks)
        return clean, ZeroNansState(found, nan_count)

    return GradientTransformation(init, update)


def _nonnegative_leaf(p: jax.Array, u: jax.Array) -> jax.Array:
    wide = jnp.promote_types(p.dtype, u.dtype)
    pw, uw = p.astype(wide), u.astype(wide)
    below = pw + uw < 0
    out = jnp.where(below, -pw, uw).astype(u.dtype)
    # Where the update is narrower than the param (float32 param, bfloat16 update), -p rounded to
    # the update's dtype can land just below -p; one step up makes p + u >= 0 hold exactly.
    short = below & (pw + out.astype(wide) < 0)
    return jnp.where(short, jnp.nextafter(out, jnp.asarray(jnp.inf, u.dtype)), out)


def keep_params_nonnegative() -> GradientTransformation:
    """Change the updates so that the params stay non-negative after `apply_updates`.

    $$ u_i \\leftarrow \\begin{cases} -p_i & p_i + u_i < 0 \\\\ u_i & \\text{otherwise} \\end{cases} $$

    This is optax's `keep_params_nonnegative`: put it last in a chain. A param that is already
    negative is moved to 0 when its update would keep it negative. The updates keep their dtype
    (optax returns the wider of the param and update dtypes); where the update's dtype cannot hold
    $-p$ exactly, the nearest value above is used, so $p + u \\ge 0$ holds in the dtype
    `apply_updates` adds in. `None` leaves stay `None`; complex or integer leaves raise TypeError
    naming the leaf.

    Returns:
        A `GradientTransformation` with `EmptyState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.sgd(1.0), gc.keep_params_nonnegative())
        params = {"w": jnp.array([0.5, 2.0])}
        u, _ = tx.update({"w": jnp.array([1.0, 1.0])}, tx.init(params), params)
        assert (gc.apply_updates(params, u)["w"] == jnp.array([0.0, 1.0])).all()
        ```
    """
    owner = "keep_params_nonnegative"

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(f"{owner}: needs params; call update(updates, state, params)")
        tree_util.check_same_structure(params, updates, expected_name="params", actual_name="updates", where=owner)
        check_leaf_dtypes(owner, "param", params, complex_ok=False)
        check_leaf_dtypes(owner, "update", updates, complex_ok=False)
        new = jax.tree.map(
            lambda p, u: None if p is None else _nonnegative_leaf(jnp.asarray(p), jnp.asarray(u)),
            params,
            updates,
            is_leaf=lambda x: x is None,
        )
        return new, state

    return GradientTransformation(init, update)
