"""Dynamic loss scaling for float16 training: scale the loss up, unscale the gradients, skip overflows."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _checks
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, with_extra_args_support
from gradchain._checks import Check, check_transformation
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._numerics import safe_increment


class DynamicLossScaleState(NamedTuple):
    """State of `dynamic_loss_scale`.

    Attributes:
        loss_scale: the scale $S$ to multiply the *next* loss by (float32 scalar); read it with
            `loss_scale(state)`.
        growth_tracker: consecutive steps with finite gradients since the scale last changed (int32),
            as torch's `GradScaler._growth_tracker`.
        num_skipped: how many steps were skipped because a gradient was not finite (int32, saturating).
        inner_state: the wrapped transformation's state (unchanged by a skipped step).
        hyperparams: `growth_factor`, `backoff_factor`, `min_scale`.
    """

    loss_scale: jax.Array
    growth_tracker: jax.Array
    num_skipped: jax.Array
    inner_state: Any
    hyperparams: Hyperparams


def dynamic_loss_scale(
    inner: GradientTransformation,
    *,
    init_scale: float = 2.0**15,
    growth_interval: int = 2000,
    growth_factor: float | jax.Array = 2.0,
    backoff_factor: float | jax.Array = 0.5,
    min_scale: float | jax.Array = 1.0,
) -> GradientTransformation:
    """Dynamic loss scaling around `inner`, as `torch.amp.GradScaler` does it.

    float16 has a narrow range: small gradients underflow to zero in the backward pass. The user
    multiplies the loss by the current scale $S$ (`loss_scale(state)`) before differentiating, so
    every gradient is $S$ times larger; this wrapper divides it back out, in at least float32, and
    hands the true gradients to `inner`. When a gradient is not finite (the scaled backward pass
    overflowed), the step is skipped: the updates are zero, `inner` is not called and its state
    does not change, and the scale backs off. After `growth_interval` finite steps in a row it grows:

    $$ \\hat g = g_S / S, \\qquad
       (S, n) \\leftarrow \\begin{cases}
         (\\max(\\beta S, S_{\\min}),\\ 0) & \\hat g \\text{ not finite (step skipped)} \\\\
         (\\gamma S,\\ 0) & n + 1 = N \\\\
         (S,\\ n + 1) & \\text{otherwise}
       \\end{cases} $$

    with $\\gamma$ = `growth_factor`, $\\beta$ = `backoff_factor`, $N$ = `growth_interval`. This is
    torch's `_amp_update_scale_` step for step (a growth that would overflow float32 is dropped, as
    in torch, and the tracker restarts); torch has no floor, `min_scale=0` reproduces it exactly.
    The gradients are unscaled by multiplying with the float32 reciprocal of $S$, as torch does.

    The inner transformation receives float32 (at least) gradients, so values that only the scale
    kept representable survive; its updates are cast back to the dtype of each incoming gradient.
    Extra arguments (`value=loss`, ...) go to `inner` unchanged: pass the *unscaled* loss there.

    Combining with `apply_if_finite`: put `dynamic_loss_scale` outermost,
    `dynamic_loss_scale(apply_if_finite(opt, ...))`. Overflow steps are then handled (skipped, scale
    backed off) here and never reach the inner check, which only sees finite gradients and guards
    against non-finite *updates* (e.g. a NaN produced inside `opt`). The other order,
    `apply_if_finite(dynamic_loss_scale(opt))`, would discard this wrapper's state on every overflow,
    so the scale could never back off.

    Args:
        inner: the transformation to run on the unscaled gradients (an optimizer).
        init_scale: the first scale, a finite number > 0 (torch's default, $2^{15}$).
        growth_interval: $N$, finite steps in a row before the scale grows (static int >= 1).
        growth_factor: $\\gamma \\ge 1$ (hyperparameter `growth_factor`).
        backoff_factor: $\\beta \\in (0, 1)$ (hyperparameter `backoff_factor`).
        min_scale: $S_{\\min} \\ge 0$, the floor of the scale (hyperparameter `min_scale`; default 1,
            so float16 gradients are never scaled *down*).

    Returns:
        A `GradientTransformation` with `DynamicLossScaleState`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.dynamic_loss_scale(gc.sgd(0.1), init_scale=1024.0, growth_interval=2)
        params = {"w": jnp.ones(3, jnp.float32)}
        state = tx.init(params)

        def scaled_loss(params, scale):
            w = params["w"].astype(jnp.float16)  # float16 compute, float32 master weights
            return jnp.sum(w * w).astype(jnp.float32) * scale

        grads = jax.grad(scaled_loss)(params, gc.loss_scale(state))
        updates, state = tx.update(grads, state, params)
        assert jnp.allclose(updates["w"], -0.2)  # the unscaled gradient is 2 w
        assert gc.loss_scale(state) == 1024.0  # one finite step; growth after two

        bad = {"w": jnp.array([jnp.inf, 1.0, 1.0])}
        updates, state = tx.update(bad, state, params)
        assert (updates["w"] == 0).all() and gc.loss_scale(state) == 512.0
        ```

    References:
        Micikevicius et al., *Mixed Precision Training*, ICLR 2018; PyTorch `torch.amp.GradScaler`.
    """
    check_transformation("dynamic_loss_scale: inner", inner)
    inner = with_extra_args_support(inner)
    owner = "dynamic_loss_scale"
    _checks.check(f"{owner}: init_scale", init_scale, Check.POSITIVE)
    if callable(init_scale) or not float(init_scale) < float(jnp.finfo(jnp.float32).max):
        raise ValueError(f"{owner}: init_scale must be a finite float32 number > 0, got {init_scale!r}")
    growth_interval = _checks.check_int(f"{owner}: growth_interval", growth_interval, minimum=1)
    spec = HyperparamSpec(
        owner,
        allow_schedules=False,
        growth_factor=(growth_factor, Check.POSITIVE),
        backoff_factor=(backoff_factor, Check.UNIT_INTERVAL),
        min_scale=(min_scale, Check.NONNEGATIVE),
    )
    gf, bf = _checks.concrete_float(growth_factor), _checks.concrete_float(backoff_factor)
    if gf is not None and gf < 1:
        raise ValueError(f"{owner}: growth_factor must be >= 1, got {growth_factor!r}")
    if bf is not None and bf <= 0:
        raise ValueError(f"{owner}: backoff_factor must be in (0, 1), got {backoff_factor!r}")

    def init(params):
        scalars = (
            jnp.asarray(init_scale, jnp.float32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
        )
        scalars = tree_util.place_like(scalars, params)
        return DynamicLossScaleState(*scalars, inner.init(params), tree_util.place_like(spec.init(), params))

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, DynamicLossScaleState):
            raise TypeError(f"{owner}: expected a DynamicLossScaleState, got {type(state).__name__}")
        hp = state.hyperparams
        scale = state.loss_scale
        # torch multiplies by the float32 reciprocal (one multiply per element, not a division).
        inv_scale = (1.0 / scale).astype(jnp.float32)

        def unscale(g):
            return g.astype(jnp.promote_types(g.dtype, jnp.float32)) * inv_scale

        grads = jax.tree.map(unscale, updates)
        leaves = jax.tree.leaves(grads)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves])) if leaves else jnp.array(True)

        def cast_back(new):
            return jax.tree.map(lambda u, g: jnp.asarray(u).astype(g.dtype), new, updates)

        def apply(inner_state):
            new, new_state = inner.update(grads, inner_state, params, **extra_args)
            # The inner state keeps its dtypes: an optax ingredient whose float16 moments meet the
            # float32 unscaled gradients would otherwise promote them and recompile the next step.
            new_state = jax.tree.map(_keep_dtype, new_state, inner_state)
            return cast_back(new), new_state

        out_shapes = jax.eval_shape(apply, state.inner_state)

        def skip(inner_state):
            # Zero updates, and the inner state as it was.
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shapes[0]), inner_state

        # lax.cond rather than a select: on an overflow step `inner` must not run at all (a
        # `check_finite` inside it would raise, and the work would be wasted).
        new_updates, inner_state = jax.lax.cond(finite, apply, skip, state.inner_state)

        # torch's _amp_update_scale_: back off on overflow, grow after `growth_interval` good steps.
        successful = state.growth_tracker + 1
        due = successful >= growth_interval
        grown = scale * hp.growth_factor.astype(jnp.float32)
        grown = jnp.where(due & jnp.isfinite(grown), grown, scale)
        backed_off = jnp.maximum(scale * hp.backoff_factor.astype(jnp.float32), hp.min_scale.astype(jnp.float32))
        new_scale = jnp.where(finite, grown, backed_off).astype(jnp.float32)
        tracker = jnp.where(finite & ~due, successful, 0).astype(jnp.int32)
        num_skipped = jnp.where(finite, state.num_skipped, safe_increment(state.num_skipped))
        return new_updates, DynamicLossScaleState(new_scale, tracker, num_skipped, inner_state, hp)

    return GradientTransformation(init, update)


def _keep_dtype(new: Any, old: Any) -> Any:
    old_dtype = getattr(old, "dtype", None)
    if old_dtype is None or getattr(new, "dtype", None) == old_dtype:
        return new
    return jnp.asarray(new).astype(old_dtype)


def loss_scale(state: Any) -> jax.Array:
    """The current loss scale of the `dynamic_loss_scale` state found in `state` (outermost first).

    Multiply the loss by it before differentiating; works inside `jit` (the scale is a traced
    float32 scalar, so a new scale never recompiles the step).

    Args:
        state: a `DynamicLossScaleState`, or any optimizer state containing one (in a chain, ...).

    Returns:
        The scale, a float32 scalar array.

    Raises:
        ValueError: no `dynamic_loss_scale` state in `state`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.clip_by_global_norm(1.0), gc.dynamic_loss_scale(gc.adam(1e-3)))
        state = tx.init({"w": jnp.zeros(2)})
        assert gc.loss_scale(state) == 2.0**15
        ```
    """
    found = tree_util.find_nodes(state, DynamicLossScaleState)
    if not found:
        raise ValueError(
            f"loss_scale: no dynamic_loss_scale state (DynamicLossScaleState) in the given "
            f"{type(state).__name__}; pass the state of a transformation built with dynamic_loss_scale"
        )
    return found[0].loss_scale
