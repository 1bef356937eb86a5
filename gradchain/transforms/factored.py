"""Adafactor's ingredients: the factored second moment, and scaling by the parameters' block RMS.

Neither is element-wise: `scale_by_factored_rms` keeps, for a matrix, one running mean of $g^2$ per
row and one per column instead of one per element, and `scale_by_param_block_rms` scales a whole
leaf by the root mean square of its parameter. Both are written as plain per-leaf transformations
(not through `elementwise`), with their numeric hyperparameters held in the state like everywhere
else, so `hyperparams(state)` and `set_hyperparams` work on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding
from jax.typing import DTypeLike

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, Updates
from gradchain._checks import Check, check_int, check_leaf_dtypes, check_state_dtype
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot
from gradchain._numerics import compute_dtype, real_dtype, safe_increment

_FACTORED = "scale_by_factored_rms"
_PARAM_BLOCK_RMS = "scale_by_param_block_rms"


class FactoredState(NamedTuple):
    """State of `scale_by_factored_rms`: step count, the statistics `v_row`, `v_col`, `v`, hyperparameters.

    Every leaf of the params has an entry in each of `v_row`, `v_col` and `v`; only one kind is
    used per leaf, the other entries are one-element placeholders of shape `(1,)` (as in optax:
    checkpointers such as orbax refuse zero-size arrays; the three trees keep the structure of the
    params). A factored leaf uses `v_row` (its shape without its largest axis) and `v_col` (its shape
    without its second largest axis); any other leaf uses `v` (its own shape).
    """

    count: jax.Array
    v_row: Updates
    v_col: Updates
    v: Updates
    hyperparams: Hyperparams


def _factored_dims(shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """(row axis, column axis) to factor over: the second largest and the largest axis, or None.

    Ties go to the later axis as the larger one (a stable sort), so a square matrix has row axis 0
    and column axis 1. An axis of size 0 is never factored (its mean would be 0/0).
    """
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape, kind="stable")
    row_axis, col_axis = int(order[-2]), int(order[-1])
    if shape[row_axis] < max(min_dim_size_to_factor, 1):
        return None
    return row_axis, col_axis


def _drop(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


_PLACEHOLDER_SHAPE = (1,)  # not (0,): orbax cannot save zero-size arrays


def _state_shapes(shape: tuple[int, ...], dims: tuple[int, int] | None) -> tuple[tuple[int, ...], ...]:
    """The shapes of (v_row, v_col, v) for a leaf of `shape`."""
    if dims is None:
        return _PLACEHOLDER_SHAPE, _PLACEHOLDER_SHAPE, tuple(shape)
    row_axis, col_axis = dims
    return _drop(shape, col_axis), _drop(shape, row_axis), _PLACEHOLDER_SHAPE


def _reduced_sharding(p: Any, axis: int) -> jax.sharding.Sharding | None:
    """The layout of `p` with `axis` removed, where the user chose one (else None: uncommitted)."""
    if isinstance(p, jax.Array) and not p.committed:
        return None
    sharding = getattr(p, "sharding", None)
    if isinstance(sharding, NamedSharding):
        spec = list(sharding.spec) + [None] * (len(p.shape) - len(sharding.spec))
        del spec[axis]
        # Trailing Nones dropped, as jit writes its outputs' specs: P("d", None) and P("d") are the
        # same layout but different signatures, and the second step would compile again.
        while spec and spec[-1] is None:
            spec.pop()
        return NamedSharding(sharding.mesh, PartitionSpec(*spec))
    if isinstance(sharding, SingleDeviceSharding):
        return sharding
    return None


def _zeros_without_axis(p: Any, axis: int, dtype: Any) -> jax.Array:
    """Zeros shaped like `p` without `axis`, sharded like `p` over its other axes."""
    if isinstance(p, jax.core.Tracer):
        # Under jit (or eval_shape) the layout lives in the abstract value: let jax derive it.
        return jnp.zeros_like(jax.eval_shape(lambda x: jnp.sum(x, axis=axis), p), dtype=dtype)
    target = jax.ShapeDtypeStruct(_drop(tuple(p.shape), axis), dtype, sharding=_reduced_sharding(p, axis))
    return tree_util.zeros_like(target)


def _init_leaf(p: Any, dims: tuple[int, int] | None, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    # One placeholder array per field: two state leaves sharing a buffer cannot both be donated.
    def placeholder():
        return jnp.zeros(_PLACEHOLDER_SHAPE, dtype)

    if dims is None:
        return placeholder(), placeholder(), tree_util.zeros_like(p, dtype)
    row_axis, col_axis = dims
    return _zeros_without_axis(p, col_axis, dtype), _zeros_without_axis(p, row_axis, dtype), placeholder()


def _rsqrt_or_zero(x: jax.Array) -> jax.Array:
    """$1/\\sqrt{x}$, and 0 where $x = 0$: no statistics (zero gradients with $\\epsilon = 0$) give a
    zero update rather than 0 * inf = NaN. A NaN statistic still gives NaN (the test is `== 0`)."""
    zero = x == 0
    return jnp.where(zero, 0, jax.lax.rsqrt(jnp.where(zero, 1, x)))


def _default_decay(step: jax.Array, decay_rate: jax.Array) -> jax.Array:
    # Adafactor's schedule: beta_t = 1 - t^(-c) with the 1-based t; beta_1 = 0 (no bias correction needed).
    return 1 - (step + 1) ** (-decay_rate)


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float | jax.Array = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float | jax.Array = 1e-30,
    *,
    decay_rate_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Scale by a factored estimate of the root mean square of the gradients (Adafactor).

    With $t$ the 1-based step (less `step_offset`) and $\\hat\\beta_t = 1 - t^{-c}$, a leaf that is
    factored (see below), with row axis $i$ and column axis $j$, keeps running means of $G^2$ along
    each axis:

    $$ R_t = \\hat\\beta_t R_{t-1} + (1-\\hat\\beta_t)\\, \\operatorname{mean}_j (G_t^2 + \\epsilon), \\qquad
       C_t = \\hat\\beta_t C_{t-1} + (1-\\hat\\beta_t)\\, \\operatorname{mean}_i (G_t^2 + \\epsilon) $$
    $$ \\hat V_t = \\frac{R_t\\, C_t}{\\operatorname{mean}_i R_t}, \\qquad U_t = \\frac{G_t}{\\sqrt{\\hat V_t}} $$

    and any other leaf keeps a full second moment:

    $$ v_t = \\hat\\beta_t v_{t-1} + (1-\\hat\\beta_t) (g_t^2 + \\epsilon), \\qquad u_t = \\frac{g_t}{\\sqrt{v_t}} $$

    A leaf is factored when `factored` is True, it has at least 2 dimensions, and its second
    largest dimension is at least `min_dim_size_to_factor`. Its column axis is the largest axis, its
    row axis the second largest (the later axis on a tie); other axes are kept (batched matrices).
    $\\hat\\beta_1 = 0$, so the first step needs no bias correction. This is optax's
    `scale_by_factored_rms` (same defaults, formulas and state layout, see
    `FactoredState`), with four differences, all deliberate:

    - the arithmetic runs in at least float32 (optax: in the param dtype, where $\\epsilon = 10^{-30}$
      is 0 in float16), and the update is cast back to the gradient's dtype; the statistics are
      stored in the param's real dtype (float32 for float16 params, as for `scale_by_adam`'s $\\nu$),
      or in `nu_dtype`;
    - steps before `step_offset` count as the first step ($t = \\max(\\cdot, 1)$), where optax raises
      0 or a negative number to the power $-c$ (inf or NaN);
    - with $\\epsilon = 0$, a zero statistic gives a zero update instead of NaN;
    - `update` does not need the params.

    Complex gradients use $|g|^2$ and keep real statistics.

    Args:
        factored: factor the second moment of matrices (static).
        decay_rate: the exponent $c \\in [0, 1]$ of $\\hat\\beta_t = 1 - t^{-c}$ (hyperparameter
            `decay_rate`). $c = 1$ averages all past gradients equally, $c = 0$ keeps none; above 1
            the first gradients would never be forgotten ($\\prod_t \\hat\\beta_t > 0$).
        step_offset: subtracted from the step count before the schedule (static integer $\\ge 0$);
            set it to the step a fine-tuning run starts from when the count carries on from
            pre-training.
        min_dim_size_to_factor: factor only when the second largest dimension is at least this
            (static integer $\\ge 0$).
        epsilon: $\\epsilon \\ge 0$ added to $g^2$ (hyperparameter `epsilon`).
        decay_rate_fn: a static function `(step, decay_rate) -> beta` replacing the schedule
            $1 - (\\text{step}+1)^{-c}$, as in optax; `step` is the 0-based count less `step_offset`
            (an int32 scalar, at least 0). With it, `decay_rate` may be any finite number (its
            meaning is the function's).
        nu_dtype: storage dtype of the statistics; None keeps the param's real dtype (float32 for
            float16 params).

    Returns:
        A `GradientTransformation` with `FactoredState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_factored_rms(min_dim_size_to_factor=2, epsilon=0.0)
        params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
        state = tx.init(params)
        assert state.v_row["w"].shape == (2,) and state.v_col["w"].shape == (3,)
        assert state.v["w"].shape == (1,) and state.v["b"].shape == (3,)  # (1,): an unused placeholder
        g = {"w": jnp.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]), "b": jnp.array([-2.0, 0.5, 0.0])}
        u, state = tx.update(g, state)
        assert jnp.allclose(u["b"], jnp.array([-1.0, 1.0, 0.0]))  # first step: g / |g|
        # A rank-one |G| is recovered exactly: V = R C / mean(R) = G^2.
        assert jnp.allclose(u["w"], 1.0)
        ```

    References:
        Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*, ICML 2018.
    """
    if not isinstance(factored, bool):
        raise TypeError(f"{_FACTORED}: factored must be a bool, got {factored!r}")
    step_offset = check_int(f"{_FACTORED}: step_offset", step_offset)
    min_dim_size_to_factor = check_int(f"{_FACTORED}: min_dim_size_to_factor", min_dim_size_to_factor)
    check_state_dtype(_FACTORED, "nu_dtype", nu_dtype)
    if decay_rate_fn is not None and not callable(decay_rate_fn):
        raise TypeError(f"{_FACTORED}: decay_rate_fn must be callable or None, got {decay_rate_fn!r}")
    decay_kind = Check.FINITE if decay_rate_fn is not None else Check.CLOSED_UNIT_INTERVAL
    spec = HyperparamSpec(_FACTORED, decay_rate=(decay_rate, decay_kind), epsilon=(epsilon, Check.NONNEGATIVE))
    decay_fn = decay_rate_fn or _default_decay
    slot = Slot("v", dtype=nu_dtype, real=True)  # the storage policy of Adam's nu

    def dims_of(shape: tuple[int, ...]) -> tuple[int, int] | None:
        return _factored_dims(tuple(shape), factored, min_dim_size_to_factor)

    def init(params):
        check_leaf_dtypes(_FACTORED, "param", params, complex_ok=True)
        treedef = jax.tree.structure(params)
        per_leaf = [_init_leaf(p, dims_of(p.shape), slot.storage_dtype(p.dtype)) for p in treedef.flatten_up_to(params)]
        v_row, v_col, v = (treedef.unflatten([buffers[k] for buffers in per_leaf]) for k in range(3))
        state = FactoredState(jnp.zeros((), jnp.int32), v_row, v_col, v, spec.init())
        return tree_util.place_like(state, params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes(_FACTORED, "update", updates, complex_ok=True)
        _check_state_fits(updates, state, dims_of)
        hp = spec.at(state.hyperparams, state.count)
        # The 0-based step of the schedule, clamped so that steps before the offset act as the first.
        step = jnp.maximum(state.count - step_offset, 0)

        treedef = jax.tree.structure(updates)
        leaves = zip(
            treedef.flatten_up_to(updates),
            treedef.flatten_up_to(state.v_row),
            treedef.flatten_up_to(state.v_col),
            treedef.flatten_up_to(state.v),
            strict=True,
        )
        out = [_update_leaf(g, r, c, v, dims_of(g.shape), step, hp, decay_fn) for g, r, c, v in leaves]
        u, v_row, v_col, v = (treedef.unflatten([o[k] for o in out]) for k in range(4))
        return u, FactoredState(safe_increment(state.count), v_row, v_col, v, hp)

    return GradientTransformation(init, update)


def _check_state_fits(updates: Any, state: FactoredState, dims_of: Callable) -> None:
    """The updates must have the params' tree, and each leaf the shape the state was built for."""
    tree_util.check_same_structure(
        jax.tree.map(lambda _: 0, state.v),
        jax.tree.map(lambda _: 0, updates),
        expected_name="state",
        actual_name="updates",
        where=_FACTORED,
    )
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    treedef = jax.tree.structure(updates)
    stored = zip(*(treedef.flatten_up_to(getattr(state, f)) for f in ("v_row", "v_col", "v")), strict=True)
    for (path, g), buffers in zip(flat, stored, strict=True):
        expected = _state_shapes(tuple(g.shape), dims_of(g.shape))
        actual = tuple(tuple(b.shape) for b in buffers)
        if actual != expected:
            raise ValueError(
                f"{_FACTORED}: leaf {tree_util.path_str(path)} has shape {tuple(g.shape)} in updates, but the "
                f"state was built for another shape: (v_row, v_col, v) have shapes {actual}, expected {expected}"
            )


def _update_leaf(g, v_row, v_col, v, dims, step, hp, decay_fn):
    """One leaf: new statistics (stored dtype) and the update (the gradient's dtype)."""
    cdtype = compute_dtype(g.dtype)
    rdtype = real_dtype(cdtype)
    x = g.astype(cdtype)
    beta = jnp.asarray(decay_fn(step, hp.decay_rate.astype(rdtype)), rdtype)
    sq = tree_util.abs_sq(x) + hp.epsilon.astype(rdtype)

    def ema(old, new):
        # Stored, then read back: the update uses the statistics exactly as the state keeps them.
        stored = (beta * old.astype(rdtype) + (1 - beta) * new).astype(old.dtype)
        return stored, stored.astype(rdtype)

    if dims is None:
        v, v_wide = ema(v, sq)
        return (x * _rsqrt_or_zero(v_wide)).astype(g.dtype), v_row, v_col, v
    row_axis, col_axis = dims
    v_row, r = ema(v_row, jnp.mean(sq, axis=col_axis))
    v_col, c = ema(v_col, jnp.mean(sq, axis=row_axis))
    # R / mean(R) normalises the row statistics; written as sqrt(mean R) / sqrt(R) so that zero
    # statistics (epsilon = 0) give 0, not 0/0.
    row_axis_of_r = row_axis - 1 if row_axis > col_axis else row_axis
    row_factor = jnp.sqrt(jnp.mean(r, axis=row_axis_of_r, keepdims=True)) * _rsqrt_or_zero(r)
    col_factor = _rsqrt_or_zero(c)
    u = x * jnp.expand_dims(row_factor, col_axis) * jnp.expand_dims(col_factor, row_axis)
    return u.astype(g.dtype), v_row, v_col, v


class ScaleByParamBlockRmsState(NamedTuple):
    """State of `scale_by_param_block_rms`: hyperparameter `min_scale`."""

    hyperparams: Hyperparams


def scale_by_param_block_rms(min_scale: float | jax.Array = 1e-3) -> GradientTransformation:
    """Scale each leaf's update by the root mean square of its parameter, at least `min_scale`.

    $$ u_\\ell = g_\\ell \\cdot \\max\\big(\\mathrm{rms}(p_\\ell),\\ s_{\\min}\\big), \\qquad
       \\mathrm{rms}(p_\\ell) = \\sqrt{\\tfrac{1}{n_\\ell}\\textstyle\\sum_i |p_{\\ell,i}|^2} $$

    Adafactor's relative step size (`multiply_by_parameter_scale`): each weight matrix or vector (a
    leaf, a "block") moves by an amount proportional to its own scale; $s_{\\min}$ lets parameters
    initialised at zero move at all. The RMS is computed in at least float32. As optax's
    `scale_by_param_block_rms`; `update` needs the params.

    Args:
        min_scale: $s_{\\min} \\ge 0$ (hyperparameter `min_scale`).

    Returns:
        A `GradientTransformation` with `ScaleByParamBlockRmsState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_param_block_rms(min_scale=1e-3)
        params = {"w": jnp.array([3.0, -3.0]), "b": jnp.zeros(2)}
        u, _ = tx.update({"w": jnp.ones(2), "b": jnp.ones(2)}, tx.init(params), params)
        assert jnp.allclose(u["w"], 3.0) and jnp.allclose(u["b"], 1e-3)
        ```

    References:
        Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*, ICML 2018
        (section 8, relative step size).
    """
    spec = HyperparamSpec(_PARAM_BLOCK_RMS, allow_schedules=False, min_scale=(min_scale, Check.NONNEGATIVE))

    def init(params):
        return tree_util.place_like(ScaleByParamBlockRmsState(spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(f"{_PARAM_BLOCK_RMS} needs the params: call update(updates, state, params)")
        check_leaf_dtypes(_PARAM_BLOCK_RMS, "update", updates, complex_ok=True)
        tree_util.check_same_structure(
            params, updates, expected_name="params", actual_name="updates", where=_PARAM_BLOCK_RMS
        )
        min_scale = state.hyperparams.min_scale

        def scale_leaf(u, p):
            x = jnp.asarray(p)
            x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            rms = jnp.sqrt(jnp.mean(tree_util.abs_sq(x))) if x.size else jnp.zeros((), real_dtype(x.dtype))
            factor = jnp.maximum(rms, min_scale.astype(rms.dtype))
            wide = u.astype(compute_dtype(u.dtype))
            return (wide * factor.astype(real_dtype(wide.dtype))).astype(u.dtype)

        return jax.tree.map(scale_leaf, updates, params), state

    return GradientTransformation(init, update)
