"""Loss-driven schedule: scale the updates down when the loss stops improving."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _checks
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation
from gradchain._checks import Check
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._numerics import float_dtype, safe_increment


class ReduceOnPlateauState(NamedTuple):
    """State of `reduce_on_plateau` (field names as in optax's `ReduceLROnPlateauState`).

    Attributes:
        scale: the factor the updates are multiplied by; the learning rate in effect is
            `base_lr * scale` (log it, or read it with `gc.tree.tree_get(state, "scale")`).
        best_value: the best (accumulated) value seen so far.
        plateau_count: values in a row without improvement (torch's `num_bad_epochs`).
        cooldown_count: evaluations left in the cooldown after a reduction.
        count: values accumulated towards the next evaluation (0 when `accumulation_size=1`).
        avg_value: their running mean.
        hyperparams: `factor`, `threshold`, `min_scale`, `eps`.
    """

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    count: jax.Array
    avg_value: jax.Array
    hyperparams: Hyperparams


_MODES = ("min", "max")
_THRESHOLD_MODES = ("rel", "abs")


def reduce_on_plateau(
    *,
    factor: float | jax.Array = 0.1,
    patience: int = 10,
    threshold: float | jax.Array = 1e-4,
    threshold_mode: Literal["rel", "abs"] = "rel",
    mode: Literal["min", "max"] = "min",
    cooldown: int = 0,
    min_scale: float | jax.Array = 0.0,
    eps: float | jax.Array = 0.0,
    accumulation_size: int = 1,
) -> GradientTransformation:
    """Multiply the updates by a scale that drops by `factor` when the loss stops improving.

    The loss (or any monitored value) comes as the extra argument `value`:
    `tx.update(grads, state, params, value=loss)`. Every `accumulation_size` calls, the mean $v$ of
    the values passed is evaluated, exactly as torch's `ReduceLROnPlateau.step(v)`:

    $$ \\text{better} = \\begin{cases}
         v < b\\,(1 - \\theta) & \\text{min, rel} \\qquad v < b - \\theta \\quad \\text{min, abs} \\\\
         v > b\\,(1 + \\theta) & \\text{max, rel} \\qquad v > b + \\theta \\quad \\text{max, abs}
       \\end{cases} $$

    then $b \\leftarrow v$ and $n \\leftarrow 0$ if better, else $n \\leftarrow n + 1$; during a cooldown
    ($c > 0$) $c \\leftarrow c - 1$ and $n \\leftarrow 0$; and if $n >$ `patience`:

    $$ s' = \\max(f s, s_{\\min}), \\quad s \\leftarrow s' \\text{ if } s - s' > \\epsilon, \\quad
       c \\leftarrow \\text{cooldown}, \\quad n \\leftarrow 0 $$

    starting from $s = 1$, $b = +\\infty$ (min) or $-\\infty$ (max). The updates of this call are
    multiplied by the scale *after* this evaluation (as optax does). Put it after the optimizer:
    `chain(adam(lr), reduce_on_plateau(...))`; the learning rate in effect is `lr * scale`.

    Matching torch: with `min_scale = min_lr / lr` and `eps = torch_eps / lr`, `scale * lr` is
    torch's learning rate after `scheduler.step(loss)`, step for step. torch's default `eps=1e-8`
    is an absolute amount of learning rate, which this transformation cannot know; the default here
    is `eps=0`, which differs from torch only once the learning rate is within 1e-8 of `min_lr`
    or of zero. A torch loop that calls `scheduler.step(loss)` *after* `optimizer.step()` applies a
    reduction one step later than this transformation does.

    Differences from `optax.contrib.reduce_on_plateau`: optax reduces after `patience` bad values,
    torch (and this) after `patience + 1` (optax's `patience=p+1` is torch's `patience=p`); optax's
    improvement test is $v < (1 - \\text{rtol})\\,b - \\text{atol}$ (both tolerances at once, min
    mode only), here it is one of torch's four tests; optax has no `eps` and clamps to `min_scale`
    on every evaluation; optax keeps `scale` in the params' lowest float dtype (bfloat16 params give
    a bfloat16 scale), here it is float32 (float64 with x64). The accumulation over
    `accumulation_size` calls (a running mean, then reset) is optax's; torch has none.

    Args:
        factor: $f \\in [0, 1)$ (hyperparameter `factor`).
        patience: bad evaluations tolerated before a reduction (static int >= 0).
        threshold: $\\theta \\ge 0$ (hyperparameter `threshold`).
        threshold_mode: "rel" or "abs" (static).
        mode: "min" (the value should decrease) or "max" (static).
        cooldown: evaluations after a reduction during which bad values are not counted (static int).
        min_scale: $s_{\\min} \\ge 0$ (hyperparameter `min_scale`); torch's `min_lr / lr`.
        eps: $\\epsilon \\ge 0$, the smallest reduction of the scale applied (hyperparameter `eps`).
        accumulation_size: values averaged per evaluation (static int >= 1).

    Returns:
        A `GradientTransformation` with `ReduceOnPlateauState`; `update` requires `value=`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.sgd(0.1), gc.reduce_on_plateau(factor=0.5, patience=1))
        params = {"w": jnp.ones(2)}
        state = tx.init(params)
        for loss in [1.0, 0.5, 0.5, 0.5]:  # two bad values in a row after the best, 0.5
            updates, state = tx.update({"w": jnp.ones(2)}, state, params, value=loss)
        assert state[1].scale == 0.5 and jnp.allclose(updates["w"], -0.05)
        ```

    References:
        PyTorch `torch.optim.lr_scheduler.ReduceLROnPlateau`; optax `contrib.reduce_on_plateau`.
    """
    owner = "reduce_on_plateau"
    if mode not in _MODES:
        raise ValueError(f"{owner}: mode must be one of {_MODES}, got {mode!r}")
    if threshold_mode not in _THRESHOLD_MODES:
        raise ValueError(f"{owner}: threshold_mode must be one of {_THRESHOLD_MODES}, got {threshold_mode!r}")
    patience = _checks.check_int(f"{owner}: patience", patience, minimum=0)
    cooldown = _checks.check_int(f"{owner}: cooldown", cooldown, minimum=0)
    accumulation_size = _checks.check_int(f"{owner}: accumulation_size", accumulation_size, minimum=1)
    spec = HyperparamSpec(
        owner,
        allow_schedules=False,
        factor=(factor, Check.UNIT_INTERVAL),
        threshold=(threshold, Check.NONNEGATIVE),
        min_scale=(min_scale, Check.NONNEGATIVE),
        eps=(eps, Check.NONNEGATIVE),
    )

    def init(params):
        dtype = float_dtype()
        worst = jnp.inf if mode == "min" else -jnp.inf
        state = ReduceOnPlateauState(
            scale=jnp.ones((), dtype),
            best_value=jnp.asarray(worst, dtype),
            plateau_count=jnp.zeros((), jnp.int32),
            cooldown_count=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
            avg_value=jnp.zeros((), dtype),
            hyperparams=spec.init(),
        )
        return tree_util.place_like(state, params)

    def is_better(v, best, theta):
        if mode == "min":
            return v < (best * (1 - theta) if threshold_mode == "rel" else best - theta)
        return v > (best * (1 + theta) if threshold_mode == "rel" else best + theta)

    def evaluate(state: ReduceOnPlateauState, v: jax.Array) -> ReduceOnPlateauState:
        hp = state.hyperparams
        better = is_better(v, state.best_value, hp.threshold)
        best = jnp.where(better, v, state.best_value)
        bad = jnp.where(better, 0, safe_increment(state.plateau_count))
        in_cooldown = state.cooldown_count > 0
        cooldown_count = jnp.where(in_cooldown, state.cooldown_count - 1, state.cooldown_count)
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > patience
        reduced = jnp.maximum(state.scale * hp.factor, hp.min_scale)
        # torch skips a reduction smaller than eps, but still starts the cooldown.
        scale = jnp.where(reduce & (state.scale - reduced > hp.eps), reduced, state.scale)
        return state._replace(
            scale=scale.astype(state.scale.dtype),
            best_value=best,
            plateau_count=jnp.where(reduce, 0, bad).astype(jnp.int32),
            cooldown_count=jnp.where(reduce, cooldown, cooldown_count).astype(jnp.int32),
        )

    def update(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise TypeError(
                f"{owner}: update needs the monitored loss as the extra argument `value`: "
                "tx.update(grads, state, params, value=loss)"
            )
        if jnp.shape(value) != ():
            raise TypeError(f"{owner}: `value` must be a scalar, got shape {jnp.shape(value)}")
        dtype = state.avg_value.dtype
        count = state.count + 1
        # Running mean over the accumulation window (optax's formula).
        avg = ((state.count * state.avg_value + jnp.asarray(value).astype(dtype)) / count).astype(dtype)
        ready = count >= accumulation_size
        evaluated = evaluate(state, avg)
        waiting = state._replace(count=count.astype(jnp.int32), avg_value=avg)
        reset = evaluated._replace(count=jnp.zeros((), jnp.int32), avg_value=jnp.zeros((), dtype))
        new_state = jax.tree.map(lambda a, b: jnp.where(ready, a, b), reset, waiting)
        scale = new_state.scale

        def rescale(g):
            return (g.astype(jnp.promote_types(g.dtype, jnp.float32)) * scale).astype(g.dtype)

        return jax.tree.map(rescale, updates), new_state

    return GradientTransformation(init, update)
