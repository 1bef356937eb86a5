"""Checks that stop a run loudly instead of letting bad numbers through."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, stateless


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
