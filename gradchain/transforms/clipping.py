"""Gradient clipping: by value, by global norm, by per-leaf RMS."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation
from gradchain._checks import Check, check_leaf_dtypes
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import elementwise
from gradchain._packing import PackInfo, mark_packable


class ClipState(NamedTuple):
    """State of `clip`: step count and `max_delta`."""

    count: jax.Array
    hyperparams: Hyperparams


def clip(max_delta: float | jax.Array) -> GradientTransformation:
    """Clip every coordinate of the updates to $[-\\delta, \\delta]$.

    $$ u_i = \\min(\\max(g_i, -\\delta), \\delta) $$

    Complex updates have no order and raise TypeError.

    Args:
        max_delta: $\\delta \\ge 0$ (hyperparameter `max_delta`).

    Returns:
        A `GradientTransformation` with `ClipState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.clip(1.0)
        u, _ = tx.update({"w": jnp.array([-3.0, 0.5, 2.0])}, tx.init({"w": jnp.zeros(3)}))
        assert (u["w"] == jnp.array([-1.0, 0.5, 1.0])).all()
        ```
    """
    spec = HyperparamSpec("clip", max_delta=(max_delta, Check.NONNEGATIVE))

    def rule(g, *, max_delta):
        return jnp.clip(g, -max_delta, max_delta), ()

    return elementwise(rule, ClipState, spec, complex_ok=False)


def _shrink_factor(size: jax.Array, limit: jax.Array) -> jax.Array:
    """limit / size where size exceeds limit, else 1; the division only happens where size > 0."""
    over = size > limit
    return jnp.where(over, limit / jnp.where(over, size, 1), 1).astype(size.dtype)


class ClipByGlobalNormState(NamedTuple):
    """State of `clip_by_global_norm`: the norm of the last incoming updates (before clipping)."""

    global_norm: jax.Array
    hyperparams: Hyperparams


def clip_by_global_norm(max_norm: float | jax.Array, *, eps: float | jax.Array = 0.0) -> GradientTransformation:
    """Scale all updates down together when their global L2 norm exceeds `max_norm`.

    $$ \\|g\\| = \\sqrt{\\textstyle\\sum_{\\text{leaves}} \\|g_\\ell\\|^2}, \\qquad
       u = g \\cdot \\min\\Big(1, \\frac{c}{\\|g\\| + \\epsilon}\\Big) $$

    The norm of the incoming updates is kept in the state (`global_norm`) for logging; read it with
    `gradchain.tree.tree_get(state, "global_norm")`. It is computed in at least float32. With
    `eps=1e-6` this is PyTorch's `clip_grad_norm_`; with the default `eps=0` it matches optax.

    Args:
        max_norm: $c \\ge 0$ (hyperparameter `max_norm`).
        eps: $\\epsilon \\ge 0$ added to the norm (hyperparameter `eps`).

    Returns:
        A `GradientTransformation` with `ClipByGlobalNormState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.clip_by_global_norm(1.0)
        u, state = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))
        assert jnp.allclose(u["a"], 0.6) and state.global_norm == 5.0
        ```

    References:
        Pascanu, Mikolov & Bengio, *On the difficulty of training recurrent neural networks*, ICML 2013.
    """
    spec = HyperparamSpec(
        "clip_by_global_norm",
        allow_schedules=False,
        max_norm=(max_norm, Check.NONNEGATIVE),
        eps=(eps, Check.NONNEGATIVE),
    )

    def init(params):
        return tree_util.place_like(ClipByGlobalNormState(jnp.zeros((), jnp.float32), spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes("clip_by_global_norm", "update", updates, complex_ok=True)
        hp = state.hyperparams
        norm = tree_util.global_norm(updates)
        factor = _shrink_factor(norm + hp.eps.astype(norm.dtype), hp.max_norm.astype(norm.dtype))
        clipped = jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates)
        return clipped, ClipByGlobalNormState(norm.astype(jnp.float32), hp)

    # The norm of the packed buffers is the norm of the leaves (summed in another order).
    return GradientTransformation(init, mark_packable(update, PackInfo("clip_by_global_norm")))


class ClipByBlockRmsState(NamedTuple):
    """State of `clip_by_block_rms`: `threshold`."""

    hyperparams: Hyperparams


def clip_by_block_rms(threshold: float | jax.Array) -> GradientTransformation:
    """Scale each leaf (block) down so that its root mean square is at most `threshold`.

    $$ \\mathrm{rms}(g_\\ell) = \\sqrt{\\tfrac{1}{n_\\ell}\\textstyle\\sum_i |g_{\\ell,i}|^2}, \\qquad
       u_\\ell = g_\\ell \\cdot \\min\\Big(1, \\frac{c}{\\mathrm{rms}(g_\\ell)}\\Big) $$

    Args:
        threshold: $c \\ge 0$ (hyperparameter `threshold`).

    Returns:
        A `GradientTransformation` with `ClipByBlockRmsState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.clip_by_block_rms(1.0)
        u, _ = tx.update({"a": jnp.full(4, 2.0), "b": jnp.full(2, 0.5)}, tx.init(None))
        assert jnp.allclose(u["a"], 1.0) and jnp.allclose(u["b"], 0.5)
        ```

    References:
        Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*, ICML 2018
        (update clipping by block RMS).
    """
    spec = HyperparamSpec("clip_by_block_rms", allow_schedules=False, threshold=(threshold, Check.NONNEGATIVE))

    def init(params):
        return tree_util.place_like(ClipByBlockRmsState(spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes("clip_by_block_rms", "update", updates, complex_ok=True)
        threshold = state.hyperparams.threshold

        def clip_leaf(g):
            x = g.astype(jnp.promote_types(g.dtype, jnp.float32))
            rms = jnp.sqrt(jnp.mean(tree_util.abs_sq(x))) if x.size else jnp.zeros((), x.real.dtype)
            factor = _shrink_factor(rms, threshold.astype(rms.dtype))
            return (x * factor).astype(g.dtype)

        return jax.tree.map(clip_leaf, updates), state

    return GradientTransformation(init, update)
