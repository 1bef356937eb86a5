"""Gradient clipping: by value, by global norm, by per-leaf RMS."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation
from gradchain._checks import Check, check_leaf_dtypes, check_params_given
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import elementwise
from gradchain._numerics import leaf_norm, real_dtype, widen
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


_AGC = "adaptive_grad_clip"


# ---------------------------------------------------------------------------------------------
# adaptive gradient clipping


class AdaptiveGradClipState(NamedTuple):
    """State of `adaptive_grad_clip`: hyperparameters `clipping`, `eps`."""

    hyperparams: Hyperparams


# Below this unit norm the clipping factor divides by it instead (only reached with a gradient
# norm that is both tiny and above the limit, i.e. clipping * max(|p|, eps) < 1e-6); as optax.
_AGC_DIV_EPS = 1e-6


def _unit_axes(where: str, shape: tuple[int, ...], axis: int | tuple[int, ...] | None) -> tuple[int, ...]:
    """The axes a unit of a leaf spans (the norm is taken over them): `axis`, or optax's rules."""
    ndim = len(shape)
    if axis is not None:
        axes = (axis,) if isinstance(axis, int) else axis
        if any(not -ndim <= a < ndim for a in axes):
            raise ValueError(f"{_AGC}: leaf {where} has shape {shape}, which has no axis {axis!r}")
        return tuple(a % ndim for a in axes)
    if sum(d != 1 for d in shape) <= 1:  # scalars, vectors, and vectors with size-1 axes
        return tuple(range(ndim))
    if ndim in (2, 3):  # Dense (in, out); multi-head (in, heads, out)
        return (0,)
    if ndim in (4, 5):  # conv kernels HWIO and DHWIO: the fan-in
        return tuple(range(ndim - 1))
    raise ValueError(
        f"{_AGC}: leaf {where} has shape {shape}: no default unit axes for {ndim} dimensions "
        "(1 to 5 have one); pass axis"
    )


def adaptive_grad_clip(
    clipping: float | jax.Array,
    eps: float | jax.Array = 1e-3,
    axis: int | tuple[int, ...] | None = None,
) -> GradientTransformation:
    """Adaptive gradient clipping (NFNets): clip each unit's gradient relative to its weights' norm.

    For every unit $i$ of a leaf (the slice feeding one output: a column of a Dense kernel),
    with $\\|\\cdot\\|$ the L2 norm over the unit:

    $$ G_i \\leftarrow \\begin{cases} \\lambda \\dfrac{\\max(\\|W_i\\|, \\epsilon)}{\\|G_i\\|}\\, G_i
       & \\text{if } \\|G_i\\| \\ge \\lambda \\max(\\|W_i\\|, \\epsilon) \\\\ G_i & \\text{otherwise} \\end{cases} $$

    Units, for `axis=None` (optax's rules, JAX layouts): the whole leaf for scalars and vectors
    (also with size-1 axes); axis 0 for 2-d and 3-d leaves (Dense `(in, out)`, multi-head
    `(in, heads, out)`); the fan-in axes `(0, 1, 2)` / `(0, 1, 2, 3)` for 4-d / 5-d convolution
    kernels (HWIO, DHWIO). Other ranks need `axis`, which is applied to every leaf. $\\epsilon$
    keeps zero-initialised weights from freezing. As optax's `adaptive_grad_clip`, including its
    guard: the division is by $\\max(\\|G_i\\|, 10^{-6})$. Norms are computed in at least float32.
    `update` needs the params.

    Args:
        clipping: $\\lambda \\ge 0$, the largest ratio of a unit's gradient norm to its weights'
            norm (hyperparameter `clipping`; the paper uses 0.01 for batch size 4096).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        axis: static axis or axes a unit spans (the norm is taken over them), or None for the
            rules above.

    Returns:
        A `GradientTransformation` with `AdaptiveGradClipState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.adaptive_grad_clip(0.1)
        params = {"w": jnp.array([[3.0, 1.0], [4.0, 0.0]])}  # column norms 5 and 1
        g = {"w": jnp.array([[0.3, 1.0], [0.4, 0.0]])}  # column norms 0.5 and 1
        u, _ = tx.update(g, tx.init(params), params)
        assert jnp.allclose(u["w"][:, 0], g["w"][:, 0])  # 0.5 < 0.1 * 5: kept
        assert jnp.allclose(u["w"][:, 1], jnp.array([0.1, 0.0]))  # 1 > 0.1 * 1: clipped to 0.1
        ```

    References:
        Brock, De, Smith & Simonyan, *High-Performance Large-Scale Image Recognition Without
        Normalization*, ICML 2021.
    """
    spec = HyperparamSpec(
        _AGC, allow_schedules=False, clipping=(clipping, Check.NONNEGATIVE), eps=(eps, Check.NONNEGATIVE)
    )
    if axis is not None:
        axes = (axis,) if isinstance(axis, int) else axis
        if not isinstance(axes, tuple) or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
            raise TypeError(f"{_AGC}: axis must be None, an int or a tuple of ints, got {axis!r}")

    def init(params):
        return tree_util.place_like(AdaptiveGradClipState(spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        check_params_given(_AGC, params, updates)
        check_leaf_dtypes(_AGC, "update", updates, complex_ok=True)
        hp = state.hyperparams
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        out = []
        for (path, g), p in zip(flat, treedef.flatten_up_to(params), strict=True):
            axes = _unit_axes(tree_util.path_str(path), tuple(g.shape), axis)
            x = widen(g)
            rdtype = real_dtype(x.dtype)
            g_norm = leaf_norm(x, axis=axes, keepdims=True)
            p_norm = leaf_norm(widen(p), axis=axes, keepdims=True).astype(rdtype)
            limit = hp.clipping.astype(rdtype) * jnp.maximum(p_norm, hp.eps.astype(rdtype))
            clipped = x * (limit / jnp.maximum(g_norm, _AGC_DIV_EPS))
            out.append(jnp.where(g_norm < limit, x, clipped).astype(g.dtype))
        return treedef.unflatten(out), state

    return GradientTransformation(init, update)
