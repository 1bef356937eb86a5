"""Layer-wise and memory-light ingredients: trust ratios, gradient centralization, unit-wise clipping, SM3.

None of these is element-wise. The trust ratio (LARS, LAMB, Fromage) scales a whole leaf by the
ratio of two norms; gradient centralization subtracts a mean per output unit; adaptive gradient
clipping compares norms per unit; SM3 keeps one accumulator per row, per column, ... of a leaf
instead of one per element. Each is written as plain `init`/`update` over the leaves (like
`clip_by_block_rms` and `scale_by_factored_rms`), with its numeric hyperparameters in the state, so
`hyperparams(state)` and `set_hyperparams` work on them. A leaf is one "layer" (or "block"): a
weight matrix, a bias vector, a convolution kernel. Norms are computed in at least float32, and the
updates cast back to the gradients' dtype.

`scale_by_fromage_step` is element-wise (Fromage's learning-rate step, which also rescales the
params) and goes through `elementwise`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from gradchain import tree as tree_util
from gradchain._base import EmptyState, GradientTransformation, Updates
from gradchain._checks import Check, check_leaf_dtypes
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot, elementwise
from gradchain._numerics import compute_dtype, real_dtype
from gradchain.transforms.scaling import ScalarOrSchedule

_TRUST = "scale_by_trust_ratio"
_CENTRALIZE = "centralize"
_BLOCK_NORM = "scale_by_param_block_norm"
_AGC = "adaptive_grad_clip"
_SM3 = "scale_by_sm3"
_FROMAGE = "scale_by_fromage_step"


def _wide(x: Any) -> jax.Array:
    """`x` in its compute dtype: at least float32 (complex stays complex)."""
    x = jnp.asarray(x)
    return x.astype(compute_dtype(x.dtype))


def _norm(x: jax.Array, axis: Any = None, keepdims: bool = False) -> jax.Array:
    """The L2 (Frobenius) norm of a leaf already in its compute dtype; real for complex leaves."""
    return jnp.sqrt(jnp.sum(tree_util.abs_sq(x), axis=axis, keepdims=keepdims))


def _needs_params(owner: str, params: Any, updates: Any) -> None:
    if params is None:
        raise ValueError(f"{owner} needs the params: call update(updates, state, params)")
    tree_util.check_same_structure(params, updates, expected_name="params", actual_name="updates", where=owner)


# ---------------------------------------------------------------------------------------------
# trust ratio


class ScaleByTrustRatioState(NamedTuple):
    """State of `scale_by_trust_ratio`: hyperparameters `min_norm`, `trust_coefficient`, `eps`."""

    hyperparams: Hyperparams


def scale_by_trust_ratio(
    min_norm: float | jax.Array = 0.0,
    trust_coefficient: float | jax.Array = 1.0,
    eps: float | jax.Array = 0.0,
) -> GradientTransformation:
    """Scale each leaf's update by its trust ratio: the parameter's norm over the update's norm.

    With $\\|\\cdot\\|$ the L2 (Frobenius) norm of a whole leaf $\\ell$, clipped below at $n_{\\min}$:

    $$ r_\\ell = \\frac{c\\, \\max(\\|p_\\ell\\|, n_{\\min})}{\\max(\\|g_\\ell\\|, n_{\\min}) + \\epsilon}, \\qquad
       u_\\ell = r_\\ell\\, g_\\ell $$

    and $r_\\ell = 1$ where either clipped norm is 0 (a parameter initialised at zero, or a zero
    update, is left as it is rather than frozen or divided by zero). Every leaf then moves by
    $c\\,\\|p_\\ell\\|$ per unit of learning rate, whatever the scale of its gradient: the layer-wise
    adaptation of LARS, LAMB and Fromage. Same formula, defaults and zero-norm rule as optax's
    `scale_by_trust_ratio`; the norms are computed in at least float32 (optax: in the param's
    dtype). Complex leaves use $|g|^2$. `update` needs the params.

    Args:
        min_norm: $n_{\\min} \\ge 0$, the floor of both norms (hyperparameter `min_norm`).
        trust_coefficient: $c \\ge 0$ (hyperparameter `trust_coefficient`; LARS's $\\eta$, 0.001 there).
        eps: $\\epsilon \\ge 0$ added to the update's norm (hyperparameter `eps`).

    Returns:
        A `GradientTransformation` with `ScaleByTrustRatioState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_trust_ratio()
        params = {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}
        u, _ = tx.update({"w": jnp.array([0.0, 0.1]), "b": jnp.ones(2)}, tx.init(params), params)
        assert jnp.allclose(u["w"], jnp.array([0.0, 5.0]))  # |u| = |p| = 5
        assert jnp.allclose(u["b"], 1.0)  # zero params: ratio 1
        ```

    References:
        You, Gitman & Ginsburg, *Large Batch Training of Convolutional Networks*, 2017.
    """
    spec = HyperparamSpec(
        _TRUST,
        allow_schedules=False,
        min_norm=(min_norm, Check.NONNEGATIVE),
        trust_coefficient=(trust_coefficient, Check.NONNEGATIVE),
        eps=(eps, Check.NONNEGATIVE),
    )

    def init(params):
        return tree_util.place_like(ScaleByTrustRatioState(spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        _needs_params(_TRUST, params, updates)
        check_leaf_dtypes(_TRUST, "update", updates, complex_ok=True)
        hp = state.hyperparams

        def scale_leaf(g, p):
            x = _wide(g)
            rdtype = real_dtype(x.dtype)
            min_norm = hp.min_norm.astype(rdtype)
            p_norm = jnp.maximum(_norm(_wide(p)).astype(rdtype), min_norm)
            g_norm = jnp.maximum(_norm(x), min_norm)
            zero = (p_norm == 0) | (g_norm == 0)
            # The division runs only where both norms are positive, so a zero norm never makes a NaN.
            ratio = hp.trust_coefficient.astype(rdtype) * p_norm / (jnp.where(zero, 1, g_norm) + hp.eps.astype(rdtype))
            return (x * jnp.where(zero, 1, ratio)).astype(g.dtype)

        return jax.tree.map(scale_leaf, updates, params), state

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# gradient centralization


def centralize() -> GradientTransformation:
    """Gradient centralization: subtract from every output unit's gradient its mean.

    For a leaf with 2 or more dimensions, the mean over all axes but the first is subtracted:

    $$ u_{i,\\dots} = g_{i,\\dots} - \\frac{1}{n}\\textstyle\\sum_{j} g_{i,j} $$

    where $j$ runs over the $n$ entries of the slice $g_{i,\\dots}$; vectors and scalars (biases,
    norms' scales) pass unchanged. As optax's `centralize`: the first axis is taken as the output
    axis, which is PyTorch's layout (`Linear`: `(out, in)`, `Conv2d`: `(out, in, h, w)`) and the
    paper's. A flax `Dense` kernel is `(in, out)`: there the mean is taken over the outputs, not
    over each unit's inputs as in the paper (transpose, or use `partition` to leave such leaves
    out). The mean is computed in at least float32. Stateless.

    Returns:
        A `GradientTransformation` with `EmptyState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.centralize()
        g = {"w": jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "b": jnp.array([1.0, 2.0])}
        u, _ = tx.update(g, tx.init(g))
        assert jnp.allclose(u["w"], jnp.array([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]))
        assert jnp.allclose(u["b"], g["b"])  # vectors are left alone
        ```

    References:
        Yong, Huang, Hua & Zhang, *Gradient Centralization: A New Optimization Technique for Deep
        Neural Networks*, ECCV 2020.
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes(_CENTRALIZE, "update", updates, complex_ok=True)

        def center(g):
            if g.ndim < 2 or g.size == 0:
                return g
            x = _wide(g)
            return (x - jnp.mean(x, axis=tuple(range(1, g.ndim)), keepdims=True)).astype(g.dtype)

        return jax.tree.map(center, updates), state

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# scaling by the params' block norm


class ScaleByParamBlockNormState(NamedTuple):
    """State of `scale_by_param_block_norm`: hyperparameter `min_scale`."""

    hyperparams: Hyperparams


def scale_by_param_block_norm(min_scale: float | jax.Array = 1e-3) -> GradientTransformation:
    """Scale each leaf's update by the L2 norm of its parameter, at least `min_scale`.

    $$ u_\\ell = g_\\ell \\cdot \\max\\big(\\|p_\\ell\\|, s_{\\min}\\big), \\qquad
       \\|p_\\ell\\| = \\sqrt{\\textstyle\\sum_i |p_{\\ell,i}|^2} $$

    The norm counterpart of `scale_by_param_block_rms` (the two differ by $\\sqrt{n_\\ell}$, the
    leaf's size). As optax's `scale_by_param_block_norm`; the norm is computed in at least float32;
    `update` needs the params.

    Args:
        min_scale: $s_{\\min} \\ge 0$ (hyperparameter `min_scale`).

    Returns:
        A `GradientTransformation` with `ScaleByParamBlockNormState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_param_block_norm(min_scale=1e-3)
        params = {"w": jnp.array([3.0, -4.0]), "b": jnp.zeros(2)}
        u, _ = tx.update({"w": jnp.ones(2), "b": jnp.ones(2)}, tx.init(params), params)
        assert jnp.allclose(u["w"], 5.0) and jnp.allclose(u["b"], 1e-3)
        ```
    """
    spec = HyperparamSpec(_BLOCK_NORM, allow_schedules=False, min_scale=(min_scale, Check.NONNEGATIVE))

    def init(params):
        return tree_util.place_like(ScaleByParamBlockNormState(spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        _needs_params(_BLOCK_NORM, params, updates)
        check_leaf_dtypes(_BLOCK_NORM, "update", updates, complex_ok=True)
        min_scale = state.hyperparams.min_scale

        def scale_leaf(g, p):
            x = _wide(g)
            norm = _norm(_wide(p)).astype(real_dtype(x.dtype))
            return (x * jnp.maximum(norm, min_scale.astype(norm.dtype))).astype(g.dtype)

        return jax.tree.map(scale_leaf, updates, params), state

    return GradientTransformation(init, update)


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
        _needs_params(_AGC, params, updates)
        check_leaf_dtypes(_AGC, "update", updates, complex_ok=True)
        hp = state.hyperparams
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        out = []
        for (path, g), p in zip(flat, treedef.flatten_up_to(params), strict=True):
            axes = _unit_axes(tree_util.path_str(path), tuple(g.shape), axis)
            x = _wide(g)
            rdtype = real_dtype(x.dtype)
            g_norm = _norm(x, axis=axes, keepdims=True)
            p_norm = _norm(_wide(p), axis=axes, keepdims=True).astype(rdtype)
            limit = hp.clipping.astype(rdtype) * jnp.maximum(p_norm, hp.eps.astype(rdtype))
            clipped = x * (limit / jnp.maximum(g_norm, _AGC_DIV_EPS))
            out.append(jnp.where(g_norm < limit, x, clipped).astype(g.dtype))
        return treedef.unflatten(out), state

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# SM3


class ScaleBySM3State(NamedTuple):
    """State of `scale_by_sm3`: the cover accumulators `mu`, the momentum `nu`, hyperparameters.

    Field names are optax's. For a leaf of shape $(d_1, \\dots, d_k)$ with $k \\ge 2$, its entry in
    `mu` is a tuple of $k$ vectors of shapes $(d_1,), \\dots, (d_k,)$: one accumulator per slice
    along each axis (per row and per column of a matrix). A vector or a scalar keeps a full
    accumulator: a 1-tuple holding an array of its own shape. `nu` has the params' shapes.
    """

    mu: Updates
    nu: Updates
    hyperparams: Hyperparams


def _kept_axis_sharding(p: Any, axis: int) -> jax.sharding.Sharding | None:
    """The layout of `p` restricted to `axis`, where the user chose one (else None: uncommitted)."""
    if isinstance(p, jax.Array) and not p.committed:
        return None
    sharding = getattr(p, "sharding", None)
    if isinstance(sharding, NamedSharding):
        spec = list(sharding.spec) + [None] * (len(p.shape) - len(sharding.spec))
        # P(None) written as P(): jit writes its outputs' specs without trailing Nones.
        return NamedSharding(sharding.mesh, PartitionSpec(*([spec[axis]] if spec[axis] is not None else [])))
    if isinstance(sharding, SingleDeviceSharding):
        return sharding
    return None


def _zeros_along_axis(p: Any, axis: int, dtype: Any) -> jax.Array:
    """Zeros of shape `(p.shape[axis],)`, sharded like `p` along that axis."""
    others = tuple(a for a in range(len(p.shape)) if a != axis)
    if isinstance(p, jax.core.Tracer):
        return jnp.zeros_like(jax.eval_shape(functools.partial(jnp.sum, axis=others), p), dtype=dtype)
    target = jax.ShapeDtypeStruct((p.shape[axis],), dtype, sharding=_kept_axis_sharding(p, axis))
    return tree_util.zeros_like(target)


def _sm3_init_leaf(p: Any, dtype: Any) -> tuple[jax.Array, ...]:
    if len(p.shape) < 2:
        return (tree_util.zeros_like(p, dtype),)
    return tuple(_zeros_along_axis(p, i, dtype) for i in range(len(p.shape)))


def scale_by_sm3(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 1.0,
    eps: float | jax.Array = 1e-8,
) -> GradientTransformation:
    """Scale by SM3's memory-light second moment (one accumulator per row, column, ...), with momentum.

    For a leaf of shape $(d_1, \\dots, d_k)$, $k \\ge 2$, SM3 keeps $\\mu^{(a)} \\in \\mathbb R^{d_a}$ for
    every axis $a$ (a cover of the entries by slices). At step $t$, for every entry $i = (i_1, \\dots, i_k)$:

    $$ \\nu'_t(i) = c\\, g_t(i)^2 + \\beta_2 \\min_a \\mu^{(a)}_{t-1}(i_a), \\qquad
       \\mu^{(a)}_t(j) = \\max_{i:\\, i_a = j} \\nu'_t(i) $$
    $$ \\tilde g_t = \\frac{g_t}{\\sqrt{\\nu'_t + \\epsilon}} \\;(0 \\text{ where } \\nu'_t = 0), \\qquad
       m_t = \\beta_1 m_{t-1} + (1-\\beta_1)\\, \\tilde g_t, \\qquad u_t = m_t $$

    with $c = 1 - \\beta_2$, or $c = 1$ when $\\beta_2 = 1$ (the default: SM3-II of the paper, sums
    of squared gradients as in AdaGrad). Vectors and scalars keep a full accumulator
    ($\\nu'_t = c\\, g_t^2 + \\beta_2 \\nu'_{t-1}$: AdaGrad). Memory: $d_1 + \\dots + d_k$ numbers
    instead of $d_1 \\cdots d_k$ for the second moment, plus the momentum (params-sized).

    As optax's `scale_by_sm3` (same defaults, formulas and state fields; optax's $\\epsilon$ and
    momentum are not in the paper, which has neither), with three differences: scalar leaves work
    (optax raises IndexError on them); complex gradients are supported, with $|g|^2$ and real
    accumulators (optax rejects them); the arithmetic runs in at least float32 and the accumulators
    are stored in float32 for float16 params (the policy of Adam's $\\nu$).

    Args:
        b1: momentum $\\beta_1 \\in [0, 1)$ (hyperparameter `b1`; not debiased).
        b2: decay $\\beta_2 \\in [0, 1]$ of the accumulators (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ inside the root (hyperparameter `eps`).

    Returns:
        A `GradientTransformation` with `ScaleBySM3State`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_sm3(b1=0.0, eps=0.0)
        params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
        state = tx.init(params)
        assert [m.shape for m in state.mu["w"]] == [(2,), (3,)]  # 5 numbers for 6 entries
        g = {"w": jnp.array([[1.0, 2.0, 2.0], [-1.0, 0.0, 4.0]]), "b": jnp.array([3.0, 0.0, -1.0])}
        u, state = tx.update(g, state)
        assert jnp.allclose(u["b"], jnp.array([1.0, 0.0, -1.0]))  # first step: g / |g|
        assert jnp.allclose(state.mu["w"][0], jnp.array([4.0, 16.0]))  # row maxima of g^2
        assert jnp.allclose(state.mu["w"][1], jnp.array([1.0, 4.0, 16.0]))  # column maxima
        ```

    References:
        Anil, Gupta, Koren & Singer, *Memory-Efficient Adaptive Optimization*, NeurIPS 2019.
    """
    spec = HyperparamSpec(
        _SM3,
        allow_schedules=False,
        b1=(b1, Check.UNIT_INTERVAL),
        b2=(b2, Check.CLOSED_UNIT_INTERVAL),
        eps=(eps, Check.NONNEGATIVE),
    )
    acc_slot, mom_slot = Slot("mu", real=True), Slot("nu")

    def init(params):
        check_leaf_dtypes(_SM3, "param", params, complex_ok=True)
        treedef = jax.tree.structure(params)
        leaves = treedef.flatten_up_to(params)
        mu = treedef.unflatten([_sm3_init_leaf(p, acc_slot.storage_dtype(p.dtype)) for p in leaves])
        nu = treedef.unflatten([tree_util.zeros_like(p, mom_slot.storage_dtype(p.dtype)) for p in leaves])
        return tree_util.place_like(ScaleBySM3State(mu, nu, spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes(_SM3, "update", updates, complex_ok=True)
        tree_util.check_same_structure(state.nu, updates, expected_name="state", actual_name="updates", where=_SM3)
        hp = state.hyperparams
        treedef = jax.tree.structure(updates)
        out = [
            _sm3_leaf(g, mu, nu, hp)
            for g, mu, nu in zip(
                treedef.flatten_up_to(updates),
                treedef.flatten_up_to(state.mu),
                treedef.flatten_up_to(state.nu),
                strict=True,
            )
        ]
        u, mu, nu = (treedef.unflatten([o[k] for o in out]) for k in range(3))
        return u, ScaleBySM3State(mu, nu, hp)

    return GradientTransformation(init, update)


def _sm3_leaf(g, mu, nu, hp):
    x = _wide(g)
    rdtype = real_dtype(x.dtype)
    b1, b2, eps = (hp[k].astype(rdtype) for k in ("b1", "b2", "eps"))
    ndim = g.ndim
    if ndim < 2:
        previous = mu[0].astype(rdtype)
    else:
        # The entry (i_1, ..., i_k) reads min_a mu^(a)(i_a): each vector broadcast along its own axis.
        expanded = [
            jnp.reshape(m.astype(rdtype), [1] * a + [g.shape[a]] + [1] * (ndim - a - 1)) for a, m in enumerate(mu)
        ]
        previous = functools.reduce(jnp.minimum, expanded)
    # beta_2 = 1 sums squared gradients (AdaGrad); below 1 the accumulators are moving averages.
    coefficient = jnp.where(b2 == 1, jnp.ones((), rdtype), 1 - b2)
    acc = coefficient * tree_util.abs_sq(x) + b2 * previous
    positive = acc > 0
    scaled = x * jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, acc, 1) + eps), 0)
    momentum = b1 * nu.astype(x.dtype) + (1 - b1) * scaled
    if ndim < 2:
        new_mu = (acc.astype(mu[0].dtype),)
    elif g.size == 0:
        new_mu = mu
    else:
        new_mu = tuple(
            jnp.max(acc, axis=tuple(b for b in range(ndim) if b != a)).astype(m.dtype) for a, m in enumerate(mu)
        )
    new_nu = momentum.astype(nu.dtype)
    return momentum.astype(g.dtype), new_mu, new_nu


# ---------------------------------------------------------------------------------------------
# Fromage's step


class ScaleByFromageStepState(NamedTuple):
    """State of `scale_by_fromage_step`: step count and `learning_rate`."""

    count: jax.Array
    hyperparams: Hyperparams


def scale_by_fromage_step(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Fromage's step: move by $-\\eta\\, g$, then shrink the params by $1/\\sqrt{1+\\eta^2}$.

    The new params are $p' = (p - \\eta g)/\\sqrt{1 + \\eta^2}$, so the update is

    $$ u = \\frac{p - \\eta\\, g}{\\sqrt{1+\\eta^2}} - p
         = -\\frac{\\eta}{\\sqrt{1+\\eta^2}}\\, g - \\frac{\\eta^2}{\\sqrt{1+\\eta^2}\\,(1+\\sqrt{1+\\eta^2})}\\, p $$

    (the second form avoids the cancellation in $1/\\sqrt{1+\\eta^2} - 1$ for small $\\eta$). After
    `scale_by_trust_ratio`, $g$ has the norm of $p$ per leaf, and the shrink undoes the growth of
    the norm that a step orthogonal to $p$ would cause (Bernstein et al. 2020, section 4). Place it
    last in a chain, in place of `scale_by_learning_rate`. optax builds the same update from
    `scale_by_learning_rate(lr * m)` and `add_decayed_weights(m - 1)` with $m = 1/\\sqrt{1+\\eta^2}$;
    one ingredient keeps one hyperparameter, so `set_hyperparams(state, learning_rate=...)` changes
    both parts together. `update` needs the params.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule (hyperparameter `learning_rate`).

    Returns:
        A `GradientTransformation` with `ScaleByFromageStepState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_fromage_step(0.75)  # sqrt(1 + 0.75^2) = 1.25
        params = {"w": jnp.array([2.0, 1.0])}
        u, _ = tx.update({"w": jnp.array([0.0, 4.0])}, tx.init(params), params)
        assert jnp.allclose(params["w"] + u["w"], jnp.array([2.0, 1.0 - 3.0]) / 1.25)
        ```

    References:
        Bernstein, Vahdat, Yue & Liu, *On the distance between two neural networks and the stability
        of learning*, NeurIPS 2020.
    """
    spec = HyperparamSpec(_FROMAGE, learning_rate=(learning_rate, Check.NONNEGATIVE))

    def rule(g, *, learning_rate, p):
        eta = learning_rate
        root = jnp.sqrt(1 + eta * eta)
        return -(eta / root) * g - (eta * eta / (root * (1 + root))) * p, ()

    return elementwise(rule, ScaleByFromageStepState, spec, uses_params=True)
