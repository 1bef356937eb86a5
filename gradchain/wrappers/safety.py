"""Surviving bad steps: skip steps with non-finite gradients, or with a loss or gradient-norm spike."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import _checks
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, with_extra_args_support
from gradchain._checks import Check, check_transformation
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._numerics import one_minus_pow, safe_increment


def _update_or_skip(run: jax.Array, inner: Any, updates, inner_state, params, extra_args):
    """`inner.update(...)` where `run` is True; else zero updates and `inner_state` unchanged.

    The two cases are the branches of a `jax.lax.cond`, so a skipped step does no inner work at run
    time (under `jax.vmap` the cond becomes a select and both branches run).
    """

    def step(_):
        return inner.update(updates, inner_state, params, **extra_args)

    def skip(_):
        # Zeros shaped like the inner update's output; eval_shape traces it, it does not run it.
        shapes = jax.eval_shape(lambda: step(None)[0])
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), inner_state

    return jax.lax.cond(run, step, skip, None)


# ----------------------------------------------------------------------------------------------------
# apply_if_finite


class ApplyIfFiniteState(NamedTuple):
    """State of `apply_if_finite` (field names as in optax's `ApplyIfFiniteState`).

    Attributes:
        notfinite_count: non-finite steps in a row, up to and including the last one (int32).
        last_finite: whether the last step's gradients were all finite (bool).
        total_notfinite: non-finite steps since `init` (int32, saturating).
        inner_state: the wrapped transformation's state; skipped steps leave it bit for bit as it was.
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


_ON_TOO_MANY = ("raise", "skip", "apply")


def _too_many_message(count: Any, limit: int, paths: tuple[str, ...], flags: Any) -> str:
    bad = [p for p, ok in zip(paths, np.asarray(flags), strict=True) if not ok]
    shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    return (
        f"apply_if_finite: {int(count)} steps in a row with NaN or Inf gradients, more than "
        f"max_consecutive_errors={limit}; non-finite at leaf {shown}"
    )


def apply_if_finite(
    inner: GradientTransformation,
    max_consecutive_errors: int,
    *,
    on_too_many: Literal["raise", "skip", "apply"] = "raise",
) -> GradientTransformation:
    """Skip every step whose gradients contain a NaN or an Inf; count them; stop a run that is stuck.

    $$ (u_t, s_t) = \\begin{cases} f_{\\text{inner}}(g_t, s_{t-1}) & \\text{all } g_{t,i} \\text{ finite}\\\\
       (0,\\ s_{t-1}) & \\text{otherwise} \\end{cases} $$

    A skipped step returns zero updates and leaves the inner state (moments, step count, schedules)
    exactly as it was, so a run with a bad batch inserted gives the same numbers as the run without
    it. The state counts the non-finite steps in a row (`notfinite_count`) and in total
    (`total_notfinite`).

    After more than `max_consecutive_errors` non-finite steps in a row, something is wrong with the
    run rather than with one batch. What happens then is `on_too_many`:

    - `"raise"` (default): the step is skipped and a `FloatingPointError` is raised naming the
      non-finite leaves. Called eagerly it is raised at once, before anything is returned. Inside
      `jax.jit` it comes from a host callback that runs only on that step (the check itself stays on
      the device, so good steps never synchronise with the host); JAX reports it as a
      `jax.errors.JaxRuntimeError` whose message contains the `FloatingPointError`, at the latest
      when the step's outputs are read. The state passed in is still valid (unless its buffers were
      donated), so a loop can catch the error and restore a checkpoint.
    - `"skip"`: keep skipping and counting; the loop decides by reading `notfinite_count`.
    - `"apply"`: optax's behaviour: the step goes through to `inner`, so the NaNs reach the params
      and the user sees them.

    gradchain departs from optax's default because a NaN in the params is usually unrecoverable and
    is noticed late, far from its cause, while an error names the leaves at the step where the run
    got stuck.

    Args:
        inner: the transformation to protect.
        max_consecutive_errors: how many non-finite steps in a row are skipped quietly, an int >= 0.
        on_too_many: `"raise"`, `"skip"` or `"apply"` (static), see above.

    Returns:
        A `GradientTransformation` with `ApplyIfFiniteState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.apply_if_finite(gc.adam(1e-3), max_consecutive_errors=2)
        params = {"w": jnp.ones(2)}
        state = tx.init(params)
        u, state = tx.update({"w": jnp.array([1.0, jnp.nan])}, state, params)
        assert (u["w"] == 0).all() and state.notfinite_count == 1
        assert state.inner_state[0].count == 0  # Adam did not take the step
        u, state = tx.update({"w": jnp.ones(2)}, state, params)
        assert state.notfinite_count == 0 and state.total_notfinite == 1
        ```

    References:
        optax `apply_if_finite` (google-deepmind/optax, `optax/_src/wrappers.py`).
    """
    check_transformation("apply_if_finite: inner", inner)
    inner = with_extra_args_support(inner)
    limit = _checks.check_int("apply_if_finite: max_consecutive_errors", max_consecutive_errors, minimum=0)
    if on_too_many not in _ON_TOO_MANY:
        raise ValueError(f"apply_if_finite: on_too_many must be one of {_ON_TOO_MANY}, got {on_too_many!r}")

    def init(params):
        scalars = (jnp.zeros((), jnp.int32), jnp.ones((), jnp.bool_), jnp.zeros((), jnp.int32))
        count, last_finite, total = tree_util.place_like(scalars, params)
        return ApplyIfFiniteState(count, last_finite, total, inner.init(params))

    def update(updates, state, params=None, **extra_args):
        flat = jax.tree_util.tree_flatten_with_path(updates)[0]
        paths = tuple(tree_util.path_str(p) for p, _ in flat)
        flags = jnp.stack([jnp.all(jnp.isfinite(x)) for _, x in flat]) if flat else jnp.ones((0,), jnp.bool_)
        finite = jnp.all(flags)
        count = jnp.where(finite, 0, safe_increment(state.notfinite_count))
        total = jnp.where(finite, state.total_notfinite, safe_increment(state.total_notfinite))
        too_many = count > limit

        if on_too_many == "raise":
            if isinstance(too_many, jax.core.Tracer):

                def report(c, f):
                    raise FloatingPointError(_too_many_message(c, limit, paths, f))

                def warn(_):
                    jax.debug.callback(report, count, flags)

                jax.lax.cond(too_many, warn, lambda _: None, None)
            elif bool(too_many):
                raise FloatingPointError(_too_many_message(count, limit, paths, flags))

        run = jnp.logical_or(finite, too_many) if on_too_many == "apply" else finite
        new_updates, inner_state = _update_or_skip(run, inner, updates, state.inner_state, params, extra_args)
        return new_updates, ApplyIfFiniteState(count, finite, total, inner_state)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------------------------------
# skip_on_spike


class SkipOnSpikeState(NamedTuple):
    """State of `skip_on_spike`.

    Attributes:
        loss_avg, grad_norm_avg: the exponential moving averages of the accepted steps' loss and
            gradient norm, before bias correction (float32; 0 for a signal not watched).
        accepted: steps that entered the averages (int32, saturating).
        consecutive_skips: skipped steps in a row, up to and including the last one (int32).
        total_skips: skipped steps since `init` (int32, saturating).
        last_skipped: whether the last step was skipped (bool).
        loss, grad_norm: the last step's loss and gradient norm (float32; 0 for a signal not watched).
        hyperparams: `factor` and `decay`.
        inner_state: the wrapped transformation's state; skipped steps leave it as it was.
    """

    loss_avg: jax.Array
    grad_norm_avg: jax.Array
    accepted: jax.Array
    consecutive_skips: jax.Array
    total_skips: jax.Array
    last_skipped: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    hyperparams: Hyperparams
    inner_state: Any


_WATCH = ("both", "loss", "grad_norm")


def _loss_signal(value: Any) -> jax.Array:
    if jnp.ndim(value) != 0:
        raise ValueError(f"skip_on_spike: value (the loss) must be a scalar, got shape {jnp.shape(value)}")
    x = jnp.asarray(value)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.float32)


def skip_on_spike(
    inner: GradientTransformation,
    factor: float | jax.Array,
    *,
    decay: float | jax.Array = 0.99,
    warmup_steps: int = 10,
    watch: Literal["both", "loss", "grad_norm"] = "both",
    max_consecutive_skips: int | None = None,
) -> GradientTransformation:
    """Skip a step whose loss or gradient norm exceeds `factor` times its running average.

    For each watched signal $x_t$ (the loss, passed as the extra argument `value`, and/or the global
    L2 norm of the gradients), with $m$ its moving average over the $n$ steps accepted so far:

    $$ \\hat m = \\frac{m}{1 - \\beta^{n}}, \\qquad
       \\text{skip}_t = \\neg\\,\\mathrm{finite}(x_t) \\ \\lor\\ \\big(n \\ge n_{\\text{warmup}}
       \\ \\land\\ x_t > c\\,\\hat m\\big) $$

    A skipped step returns zero updates and leaves the inner state unchanged; an accepted one runs
    `inner` and updates the averages, $m \\leftarrow \\beta m + (1 - \\beta) x_t$, $n \\leftarrow n + 1$.
    With `watch="both"`, a spike in either signal skips the step.

    Choices, documented because they matter:

    - Skipped steps do not enter the averages, so a spike cannot raise the bar for the next one.
      The flip side: if the loss level moves up for good, every later step looks like a spike. Set
      `max_consecutive_skips` to accept (and average in) the next finite step after that many skips
      in a row.
    - The first `warmup_steps` accepted steps are never skipped for size (early averages are noisy
      and the loss falls fast), but a non-finite signal is skipped even then and never averaged in.
    - The averages are bias-corrected (as Adam's moments), so $\\hat m$ is a proper average from the
      first step and `decay` only sets the window, about $1/(1-\\beta)$ steps.
    - The loss rule assumes a positive loss (a ratio test means nothing for a loss that can be
      negative); watch `"grad_norm"` for such losses.

    The state records the skips (`last_skipped`, `consecutive_skips`, `total_skips`) and the last
    loss and gradient norm, for logging.

    Args:
        inner: the transformation to protect.
        factor: $c > 0$ (hyperparameter `factor`); a step is a spike when its signal exceeds $c$
            times the average, e.g. 5.
        decay: $\\beta \\in [0, 1)$ of the moving averages (hyperparameter `decay`).
        warmup_steps: accepted steps before spikes are looked for, an int >= 1 (static).
        watch: which signals to watch: `"both"` (default), `"loss"` or `"grad_norm"` (static).
            Watching the loss needs it: call `update(grads, state, params, value=loss)`.
        max_consecutive_skips: None (default: no limit), or an int >= 1 (static): after that many
            skipped steps in a row, the next step with finite signals is accepted.

    Returns:
        A `GradientTransformation` with `SkipOnSpikeState`.

    Raises:
        TypeError: at `update`, when the loss is watched and no `value` is given.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.skip_on_spike(gc.sgd(0.1), factor=3.0, warmup_steps=2, watch="loss")
        params = {"w": jnp.ones(2)}
        state = tx.init(params)
        for loss in [1.0, 1.2, 0.9, 10.0, 1.1]:
            u, state = tx.update({"w": jnp.ones(2)}, state, params, value=loss)
            if loss == 10.0:
                assert state.last_skipped and (u["w"] == 0).all()
        assert state.total_skips == 1 and state.accepted == 4
        ```

    References:
        The loss-spike skipping of large-model training runs, e.g. Chowdhery et al., *PaLM: Scaling
        Language Modeling with Pathways* (2022), §5.1; optax has no equivalent.
    """
    check_transformation("skip_on_spike: inner", inner)
    inner = with_extra_args_support(inner)
    spec = HyperparamSpec(
        "skip_on_spike", allow_schedules=False, factor=(factor, Check.POSITIVE), decay=(decay, Check.UNIT_INTERVAL)
    )
    warmup = _checks.check_int("skip_on_spike: warmup_steps", warmup_steps, minimum=1)
    if watch not in _WATCH:
        raise ValueError(f"skip_on_spike: watch must be one of {_WATCH}, got {watch!r}")
    max_skips = (
        None
        if max_consecutive_skips is None
        else _checks.check_int("skip_on_spike: max_consecutive_skips", max_consecutive_skips, minimum=1)
    )
    watch_loss = watch in ("both", "loss")
    watch_norm = watch in ("both", "grad_norm")

    def init(params):
        f32 = jnp.zeros((), jnp.float32)
        i32 = jnp.zeros((), jnp.int32)
        scalars = (f32, f32, i32, i32, i32, jnp.zeros((), jnp.bool_), f32, f32, spec.init())
        return SkipOnSpikeState(*tree_util.place_like(scalars, params), inner.init(params))

    def update(updates, state, params=None, **extra_args):
        if watch_loss and extra_args.get("value") is None:
            raise TypeError(
                f"skip_on_spike(watch={watch!r}) needs the loss: call update(updates, state, params, value=loss)"
            )
        hp = state.hyperparams
        factor, beta = hp.factor.astype(jnp.float32), hp.decay.astype(jnp.float32)
        n = state.accepted
        correction = jnp.where(n > 0, one_minus_pow(beta, n.astype(jnp.float32)), 1.0)
        in_warmup = n < warmup

        signals = []  # (value, old average) per watched signal
        loss = _loss_signal(extra_args["value"]) if watch_loss else jnp.zeros((), jnp.float32)
        norm = tree_util.global_norm(updates).astype(jnp.float32) if watch_norm else jnp.zeros((), jnp.float32)
        if watch_loss:
            signals.append((loss, state.loss_avg))
        if watch_norm:
            signals.append((norm, state.grad_norm_avg))

        finite = jnp.all(jnp.stack([jnp.isfinite(x) for x, _ in signals]))
        spike = jnp.any(jnp.stack([x > factor * (m / correction) for x, m in signals]))
        skip = jnp.logical_or(~finite, jnp.logical_and(~in_warmup, spike))
        if max_skips is not None:
            skip = jnp.logical_and(skip, jnp.logical_or(~finite, state.consecutive_skips < max_skips))

        def averaged(x, m):
            return jnp.where(skip, m, beta * m + (1 - beta) * x.astype(jnp.float32)).astype(jnp.float32)

        loss_avg = averaged(loss, state.loss_avg) if watch_loss else state.loss_avg
        norm_avg = averaged(norm, state.grad_norm_avg) if watch_norm else state.grad_norm_avg
        new_updates, inner_state = _update_or_skip(~skip, inner, updates, state.inner_state, params, extra_args)
        new_state = SkipOnSpikeState(
            loss_avg=loss_avg,
            grad_norm_avg=norm_avg,
            accepted=jnp.where(skip, n, safe_increment(n)),
            consecutive_skips=jnp.where(skip, safe_increment(state.consecutive_skips), 0).astype(jnp.int32),
            total_skips=jnp.where(skip, safe_increment(state.total_skips), state.total_skips),
            last_skipped=skip,
            loss=loss.astype(jnp.float32),
            grad_norm=norm,
            hyperparams=hp,
            inner_state=inner_state,
        )
        return new_updates, new_state

    return GradientTransformation(init, update)
