r"""Schedules: pure functions from a step count to a hyperparameter value.

A schedule is any callable `step -> value` (see `Schedule`). The builders in this module validate their
arguments when called and return schedules that are safe under `jax.jit` and `jax.vmap`: they use only
`jax.numpy` operations on the step, never Python control flow on its value.

Conventions shared by every schedule here:

* Steps count from 0: `schedule(0)` is the value used for the first update, which is also what
  PyTorch's schedulers give at `last_epoch == 0` (right after construction).
* A step may be a Python int or float, or an integer or float array of any shape (traced or not). The
  result is a float array of the default float dtype (`jnp.asarray(x, dtype=float)`: float32 unless
  x64 is enabled) with the step's shape, so `jax.vmap(schedule)(jnp.arange(n))` works.
* Negative steps are treated as step 0 (they are clamped), so no schedule extrapolates backwards.
* Steps are converted to floating point, so in float32 they are exact up to $2^{24}$ (about 16.7M).
  The periodic schedules (`cosine_warm_restarts_schedule`, `cyclic_schedule`) locate the position
  inside a cycle in integer arithmetic when given an integer step, so their phase stays exact.
* Step-count arguments (`transition_steps`, `decay_steps`, `warmup_steps`, ...) must be Python or
  NumPy ints. A count that divides in the formula must be positive; a count that only skips a phase
  (such as `warmup_steps=0`) may be zero.
* Value arguments (`init_value`, `peak_value`, `end_value`, `decay_rate`, ...) may be traced scalars,
  e.g. to `vmap` over learning rates; arguments that fix the shape of the schedule (step counts,
  `pct_start`, `pct_final`, flags, modes) must be concrete.
* The formulas are arranged to avoid cancellation (e.g. a cosine's tail is computed as a squared sine
  of the remaining fraction), so float32 values stay within about 1e-6 relative of the exact values.
  A traced `decay_rate` or `gamma` is the exception: it arrives rounded to float32, so `rate ** k`
  is only accurate to about `k * 6e-8` relative (concrete rates are used in float64).

Mapping from PyTorch's `torch.optim.lr_scheduler` (with `lr` the optimizer's learning rate; torch's
`last_epoch` equals gradchain's step):

* `StepLR(step_size, gamma)`: `exponential_decay(lr, step_size, gamma, staircase=True)`
* `MultiStepLR(milestones, gamma)`: `piecewise_constant_schedule(lr, {m: gamma for m in milestones})`
* `ExponentialLR(gamma)`: `exponential_decay(lr, 1, gamma)`
* `CosineAnnealingLR(T_max, eta_min)`: `cosine_decay_schedule(lr, T_max, alpha=eta_min / lr)` (*)
* `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`:
  `cosine_warm_restarts_schedule(lr, T_0, T_mult, eta_min)`
* `LinearLR(start_factor, end_factor, total_iters)`:
  `linear_schedule(lr * start_factor, lr * end_factor, total_iters)`
* `PolynomialLR(total_iters, power)`: `polynomial_schedule(lr, 0.0, power, total_iters)`
* `OneCycleLR(lr, n, p)` (cosine, two phases): `cosine_onecycle_schedule(n, lr, p, torch_convention=True)`
* `OneCycleLR(lr, n, p, anneal_strategy="linear", three_phase=True)`:
  `linear_onecycle_schedule(n, lr, p, pct_final=2 * p, torch_convention=True)`
* `CyclicLR(base_lr, max_lr, up, down, mode, gamma)`:
  `cyclic_schedule(base_lr, max_lr, up, down, mode, gamma)`
* `Adagrad(lr, lr_decay=d)`'s decayed learning rate: `inverse_time_decay(lr, d)`
* `LambdaLR(lr_lambda)`: any schedule, e.g. `power_law_schedule(lr, tau, alpha)`

(*) Up to step `T_max`; beyond it torch's cosine keeps oscillating, while gradchain holds `eta_min`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from gradchain._checks import check, check_int, concrete_float

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "cosine_warm_restarts_schedule",
    "cyclic_schedule",
    "exponential_decay",
    "inverse_sqrt_schedule",
    "inverse_time_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "power_law_schedule",
    "sgdr_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_linear_decay_schedule",
    "warmup_stable_decay_schedule",
]

Schedule: TypeAlias = Callable[[jax.typing.ArrayLike], jax.Array]
"""A function from a step count (int or float, scalar or array) to a float array of the same shape."""


# ----------------------------------------------------------------------------------------------------
# Validation helpers.


def _check_value(name: str, value: Any, kind: str = "finite") -> None:
    # `check` lets callables through because optimizers accept schedules as hyperparameters; a
    # schedule's own parameters must be numbers (concrete or traced), so anything else is a mistake.
    number = isinstance(value, (int, float, np.number, jax.core.Tracer)) or hasattr(value, "dtype")
    if isinstance(value, (bool, np.bool_)) or callable(value) or not number:
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    check(name, value, kind)


def _check_concrete(name: str, value: Any, kind: str) -> float:
    """Check `value` and return it as a Python float; it must be known at build time."""
    _check_value(name, value, kind)
    x = concrete_float(value)
    if x is None:
        raise TypeError(
            f"{name} must be a concrete number (it fixes the shape of the schedule), got {value!r}"
        )
    return x


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}: {value!r}")
    return bool(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _geometric(rate: Any, per: int) -> Callable[[jax.Array], jax.Array]:
    """Return `x -> rate ** (x / per)` for counts `x >= 0`.

    In float32 the exponent `x * log(rate) / per` cannot be rounded to better than about 6e-8 of its
    own size, so a decay over ten e-folds would already be off by 6e-7 relative. When `rate` is
    concrete, its per-count log is split (in float64) into a 12-bit head, whose product with an
    integer count below 2**12 is exact in float32, and a tail too small to matter; the result is then
    as accurate as `exp` itself.
    """
    r = concrete_float(rate)
    if r is None:
        per_count = jnp.log(rate) / per
        return lambda x: jnp.exp(x * per_count)
    per_count = math.log(r) / per
    mantissa, exponent = math.frexp(per_count)
    head = math.ldexp(round(mantissa * 2**12), exponent - 12)
    tail = per_count - head
    return lambda x: jnp.exp(x * head) * jnp.exp(x * tail)


# ----------------------------------------------------------------------------------------------------
# Numerical building blocks.


def _float_steps(step: jax.typing.ArrayLike) -> jax.Array:
    """The step as a float array, with negative steps clamped to 0."""
    return jnp.maximum(jnp.asarray(step, dtype=float), 0.0)


def _finish(value: jax.typing.ArrayLike, like: jax.Array) -> jax.Array:
    """The value as a default-float array broadcast to the step's shape."""
    return jnp.broadcast_to(jnp.asarray(value, dtype=float), jnp.shape(like))


def _linear_weights(s: jax.Array, length: float) -> tuple[jax.Array, jax.Array]:
    """Weights of the start and end values for a linear ramp at offset `s` of `length` steps.

    Both weights are computed directly (rather than one as `1 - other`) so that the value near either
    end keeps full relative precision.
    """
    s = jnp.clip(s, 0.0, length)
    return (length - s) / length, s / length


def _cosine_weights(
    s: jax.Array, length: float, exponent: jax.typing.ArrayLike = 1.0
) -> tuple[jax.Array, jax.Array]:
    r"""Weights $(c^p, 1 - c^p)$ with $c = \tfrac12(1 + \cos(\pi s / L))$, for a cosine ramp.

    $\tfrac12(1 + \cos \pi f) = \sin^2(\tfrac\pi2 (1 - f))$ and
    $\tfrac12(1 - \cos \pi f) = \sin^2(\tfrac\pi2 f)$; the sine forms avoid
    the cancellation in $1 + \cos$ near the end of the ramp.
    """
    s = jnp.clip(s, 0.0, length)
    start = jnp.sin((0.5 * math.pi) * ((length - s) / length)) ** 2
    end = jnp.sin((0.5 * math.pi) * (s / length)) ** 2
    if concrete_float(exponent) == 1.0:
        return start, end
    # 1 - c**p = -expm1(p * log(c)) and log(c) = log1p(-(1 - c)): accurate while c is close to 1.
    return start**exponent, -jnp.expm1(exponent * jnp.log1p(-end))


def _interpolate(
    knots: Sequence[tuple[float, jax.typing.ArrayLike]],
    weights: Callable[[jax.Array, float], tuple[jax.Array, jax.Array]],
) -> Schedule:
    """Schedule through `(step, value)` knots: a zero-length segment is a jump; after the last knot, hold."""

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        value = jnp.broadcast_to(jnp.asarray(knots[0][1], dtype=float), t.shape)
        for (b0, v0), (b1, v1) in itertools.pairwise(knots):
            if b1 > b0:
                w0, w1 = weights(t - b0, b1 - b0)
                value = jnp.where(t >= b0, v0 * w0 + v1 * w1, value)
        value = jnp.where(t >= knots[-1][0], knots[-1][1], value)
        return _finish(value, t)

    return schedule


# ----------------------------------------------------------------------------------------------------
# Basic schedules.


def constant_schedule(value: jax.typing.ArrayLike) -> Schedule:
    r"""Return a schedule that holds one value at every step.

    $$ v(t) = v $$

    Args:
        value: the value returned at every step (a finite scalar).

    Returns:
        A `Schedule` returning `value` as a float array shaped like the step.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.constant_schedule(0.1)
        assert float(sched(0)) == float(sched(10_000))
        ```
    """
    _check_value("value", value)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        return _finish(value, jnp.asarray(step))

    return schedule


def linear_schedule(
    init_value: jax.typing.ArrayLike,
    end_value: jax.typing.ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Return a schedule that moves linearly from `init_value` to `end_value`.

    With $I$ = `init_value`, $E$ = `end_value`, $B$ = `transition_begin`, $T$ = `transition_steps` and
    $s = \min(\max(t - B, 0), T)$:

    $$ v(t) = I \, \frac{T - s}{T} + E \, \frac{s}{T} $$

    so $v = I$ up to step $B$ and $v = E$ from step $B + T$ on. Unlike optax, `transition_steps=0`
    raises instead of silently returning a constant schedule.

    Args:
        init_value: the value before and at step `transition_begin`.
        end_value: the value from step `transition_begin + transition_steps` on.
        transition_steps: length of the ramp in steps (int >= 1).
        transition_begin: steps to hold `init_value` before the ramp starts (int >= 0).

    Returns:
        A `Schedule`. PyTorch's `LinearLR(start_factor, end_factor, total_iters)` on a learning rate
        `lr` is `linear_schedule(lr * start_factor, lr * end_factor, total_iters)`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.linear_schedule(init_value=1.0, end_value=0.0, transition_steps=10)
        assert abs(float(sched(5)) - 0.5) < 1e-7
        assert float(sched(50)) == 0.0
        ```
    """
    _check_value("init_value", init_value)
    _check_value("end_value", end_value)
    length = check_int("transition_steps", transition_steps, minimum=1)
    begin = check_int("transition_begin", transition_begin, minimum=0)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        w0, w1 = _linear_weights(t - begin, length)
        return _finish(init_value * w0 + end_value * w1, t)

    return schedule


def polynomial_schedule(
    init_value: jax.typing.ArrayLike,
    end_value: jax.typing.ArrayLike,
    power: jax.typing.ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Return a schedule that moves from `init_value` to `end_value` along a polynomial.

    With $I$ = `init_value`, $E$ = `end_value`, $p$ = `power`, $B$ = `transition_begin`,
    $T$ = `transition_steps` and $s = \min(\max(t - B, 0), T)$:

    $$ v(t) = (I - E) \left(1 - \frac{s}{T}\right)^{p} + E $$

    Args:
        init_value: the value before and at step `transition_begin`.
        end_value: the value from step `transition_begin + transition_steps` on.
        power: the exponent $p$ of the polynomial (> 0); 1 gives `linear_schedule`.
        transition_steps: length of the transition in steps (int >= 1).
        transition_begin: steps to hold `init_value` before the transition starts (int >= 0).

    Returns:
        A `Schedule`. PyTorch's `PolynomialLR(total_iters, power)` on a learning rate `lr` is
        `polynomial_schedule(lr, 0.0, power, total_iters)`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.polynomial_schedule(init_value=1.0, end_value=0.0, power=2.0, transition_steps=10)
        assert abs(float(sched(5)) - 0.25) < 1e-7
        ```
    """
    _check_value("init_value", init_value)
    _check_value("end_value", end_value)
    _check_value("power", power, "positive")
    length = check_int("transition_steps", transition_steps, minimum=1)
    begin = check_int("transition_begin", transition_begin, minimum=0)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        s = jnp.clip(t - begin, 0.0, length)
        remaining = (length - s) / length
        w_init = remaining**power
        # The weight of end_value is 1 - remaining**power; expm1/log1p keep it accurate near the start,
        # where the schedule rises from a small init_value towards a large end_value.
        w_end = s / length if concrete_float(power) == 1.0 else -jnp.expm1(power * jnp.log1p(-s / length))
        return _finish(init_value * w_init + end_value * w_end, t)

    return schedule


def exponential_decay(
    init_value: jax.typing.ArrayLike,
    transition_steps: int,
    decay_rate: jax.typing.ArrayLike,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: jax.typing.ArrayLike | None = None,
) -> Schedule:
    r"""Return a schedule that decays (or grows) exponentially, continuously or in steps.

    With $I$ = `init_value`, $r$ = `decay_rate`, $B$ = `transition_begin`, $T$ = `transition_steps`:

    $$ v(t) = I \, r^{k(t)}, \qquad k(t) = \frac{\max(t - B, 0)}{T} \;\;
       \text{(or } \lfloor \cdot \rfloor \text{ if staircase)} $$

    then, if `end_value` is given, clipped to it from below (when $r < 1$) or above (when $r \ge 1$).

    Args:
        init_value: the value before and at step `transition_begin`.
        transition_steps: steps over which the value is multiplied by `decay_rate` once (int >= 1).
        decay_rate: the factor per `transition_steps` steps (> 0; > 1 grows).
        transition_begin: steps to hold `init_value` before decaying (int >= 0).
        staircase: if True, decay in jumps every `transition_steps` steps (a step decay).
        end_value: optional bound the value never crosses.

    Returns:
        A `Schedule`. PyTorch's `StepLR(step_size, gamma)` is
        `exponential_decay(lr, step_size, gamma, staircase=True)` and `ExponentialLR(gamma)` is
        `exponential_decay(lr, 1, gamma)`.

    Example:
        ```python
        from gradchain import schedules

        step_lr = schedules.exponential_decay(1.0, transition_steps=30, decay_rate=0.1, staircase=True)
        assert float(step_lr(29)) == 1.0
        assert abs(float(step_lr(30)) - 0.1) < 1e-7
        ```
    """
    _check_value("init_value", init_value)
    length = check_int("transition_steps", transition_steps, minimum=1)
    _check_value("decay_rate", decay_rate, "positive")
    begin = check_int("transition_begin", transition_begin, minimum=0)
    staircase = _check_bool("staircase", staircase)
    if end_value is not None:
        _check_value("end_value", end_value)
    # A staircase counts whole periods; a continuous decay counts steps, each a 1/length period.
    power = _geometric(decay_rate, 1 if staircase else length)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        s = jnp.maximum(t - begin, 0.0)
        value = init_value * power(jnp.floor(s / length) if staircase else s)
        if end_value is not None:
            value = jnp.where(
                jnp.asarray(decay_rate) < 1, jnp.maximum(value, end_value), jnp.minimum(value, end_value)
            )
        return _finish(value, t)

    return schedule


def piecewise_constant_schedule(
    init_value: jax.typing.ArrayLike,
    boundaries_and_scales: Mapping[int, jax.typing.ArrayLike] | None = None,
) -> Schedule:
    r"""Return a piecewise-constant schedule that is multiplied by a factor at each boundary.

    With $I$ = `init_value` and `boundaries_and_scales` = $\{b_i: s_i\}$:

    $$ v(t) = I \prod_{i \,:\, t \ge b_i} s_i $$

    Args:
        init_value: the value before the first boundary.
        boundaries_and_scales: mapping from a step $b_i$ (int >= 0) to the factor $s_i$ (>= 0) the value
            is multiplied by from that step on. None or empty gives a constant schedule.

    Returns:
        A `Schedule`. PyTorch's `MultiStepLR(milestones, gamma)` is
        `piecewise_constant_schedule(lr, {m: gamma for m in milestones})`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.1})
        assert float(sched(99)) == 1.0
        assert abs(float(sched(200)) - 0.01) < 1e-8
        ```
    """
    _check_value("init_value", init_value)
    if boundaries_and_scales is None:
        boundaries_and_scales = {}
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            "boundaries_and_scales must be a mapping {step: scale} or None, "
            f"got {type(boundaries_and_scales).__name__}: {boundaries_and_scales!r}"
        )
    items = []
    for boundary, scale in boundaries_and_scales.items():
        b = check_int(f"boundaries_and_scales key {boundary!r}", boundary, minimum=0)
        _check_value(f"boundaries_and_scales[{boundary!r}]", scale, "nonnegative")
        items.append((b, scale))
    items.sort(key=lambda item: item[0])

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        value = jnp.broadcast_to(jnp.asarray(init_value, dtype=float), t.shape)
        for b, scale in items:
            value = jnp.where(t >= b, value * scale, value)
        return _finish(value, t)

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""Return a schedule that runs `schedules` one after another, switching at `boundaries`.

    With schedules $f_0, \dots, f_n$ and boundaries $b_1 \le \dots \le b_n$ (and $b_0 = 0$):

    $$ v(t) = f_i(t - b_i) \quad \text{for } b_i \le t < b_{i+1} $$

    so each later schedule restarts its own count at its boundary (optax's semantics). The step passed
    on keeps its dtype (an integer step stays an integer) and is clamped at 0 first.

    Args:
        schedules: the schedules to run, in order (at least one). Any callable `step -> value` works.
        boundaries: the steps at which to switch to the next schedule (`len(schedules) - 1` ints >= 0,
            non-decreasing).

    Returns:
        A `Schedule`.

    Example:
        ```python
        from gradchain import schedules

        warmup = schedules.linear_schedule(0.0, 1.0, transition_steps=10)
        decay = schedules.cosine_decay_schedule(1.0, decay_steps=90)
        sched = schedules.join_schedules([warmup, decay], boundaries=[10])
        assert float(sched(10)) == 1.0
        assert abs(float(sched(100))) < 1e-7
        ```
    """
    if isinstance(schedules, (str, bytes)) or not isinstance(schedules, Iterable):
        raise TypeError(f"schedules must be a sequence of schedules, got {type(schedules).__name__}")
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Iterable):
        raise TypeError(f"boundaries must be a sequence of ints, got {type(boundaries).__name__}")
    fns = list(schedules)
    bounds = list(boundaries)
    if not fns:
        raise ValueError("schedules must hold at least one schedule, got an empty sequence")
    for i, fn in enumerate(fns):
        if not callable(fn):
            raise TypeError(f"schedules[{i}] must be callable, got {type(fn).__name__}: {fn!r}")
    if len(bounds) != len(fns) - 1:
        raise ValueError(
            f"boundaries must hold len(schedules) - 1 = {len(fns) - 1} steps, got {len(bounds)}: {bounds!r}"
        )
    bounds = [check_int(f"boundaries[{i}]", b, minimum=0) for i, b in enumerate(bounds)]
    if any(later < earlier for earlier, later in itertools.pairwise(bounds)):
        raise ValueError(f"boundaries must be non-decreasing, got {bounds!r}")

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = jnp.maximum(jnp.asarray(step), 0)
        value = _finish(fns[0](t), t)
        for b, fn in zip(bounds, fns[1:], strict=True):
            value = jnp.where(t < b, value, _finish(fn(t - b), t))
        return value

    return schedule


# ----------------------------------------------------------------------------------------------------
# Cosine schedules.


def cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    decay_steps: int,
    alpha: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    r"""Return a schedule that decays along a half cosine from `init_value` to `alpha * init_value`.

    With $I$ = `init_value`, $T$ = `decay_steps`, $\alpha$ = `alpha`, $p$ = `exponent` and
    $s = \min(t, T)$:

    $$ v(t) = I \left[ (1 - \alpha) \left( \tfrac12 \left(1 + \cos \frac{\pi s}{T}\right) \right)^{p}
       + \alpha \right] $$

    Args:
        init_value: the value at step 0.
        decay_steps: length of the decay in steps (int >= 1); the value is held from then on.
        alpha: the final value as a fraction of `init_value`.
        exponent: the power $p$ (> 0) applied to the cosine factor.

    Returns:
        A `Schedule`. PyTorch's `CosineAnnealingLR(T_max, eta_min)` is
        `cosine_decay_schedule(lr, T_max, alpha=eta_min / lr)` up to step `T_max` (torch's keeps
        oscillating afterwards; this one holds).

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.cosine_decay_schedule(1.0, decay_steps=100, alpha=0.1)
        assert abs(float(sched(50)) - 0.55) < 1e-6
        assert abs(float(sched(1000)) - 0.1) < 1e-7
        ```

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """
    _check_value("init_value", init_value)
    length = check_int("decay_steps", decay_steps, minimum=1)
    _check_value("alpha", alpha)
    _check_value("exponent", exponent, "positive")

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        w0, w1 = _cosine_weights(t, length, exponent)
        return _finish(init_value * w0 + (alpha * init_value) * w1, t)

    return schedule


def warmup_cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    r"""Return a linear warmup to `peak_value` followed by a cosine decay to `end_value`.

    With $I, P, E$ = `init_value`, `peak_value`, `end_value`, $W$ = `warmup_steps`, $D$ = `decay_steps`
    (the total length, warmup included, as in optax), $L = D - W$ and $s = \min(t - W, L)$:

    $$ v(t) = \begin{cases} I + (P - I)\, t / W & t < W \\
       E + (P - E) \left( \tfrac12 \left(1 + \cos \frac{\pi s}{L}\right) \right)^{p} & t \ge W \end{cases} $$

    Args:
        init_value: the value at step 0.
        peak_value: the value at the end of the warmup (step `warmup_steps`).
        warmup_steps: length of the warmup (int >= 0; 0 starts directly at `peak_value`).
        decay_steps: total length of warmup plus decay (int > `warmup_steps`); `end_value` is held after.
        end_value: the final value.
        exponent: the power $p$ (> 0) applied to the cosine factor.

    Returns:
        A `Schedule`. It matches optax's, except that a `peak_value` of 0 still decays to `end_value`
        (optax then returns 0 throughout the decay).

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)
        assert abs(float(sched(5)) - 0.5) < 1e-7
        assert float(sched(10)) == 1.0
        assert abs(float(sched(60)) - 0.5) < 1e-6
        ```

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """
    _check_value("init_value", init_value)
    _check_value("peak_value", peak_value)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    total = check_int("decay_steps", decay_steps, minimum=1)
    if total <= warmup:
        raise ValueError(
            f"decay_steps must be > warmup_steps (it counts the warmup too), got decay_steps={total}, "
            f"warmup_steps={warmup}"
        )
    _check_value("end_value", end_value)
    _check_value("exponent", exponent, "positive")
    length = total - warmup

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        w0, w1 = _cosine_weights(t - warmup, length, exponent)
        value = peak_value * w0 + end_value * w1
        if warmup > 0:
            u0, u1 = _linear_weights(t, warmup)
            value = jnp.where(t < warmup, init_value * u0 + peak_value * u1, value)
        return _finish(value, t)

    return schedule


def cosine_warm_restarts_schedule(
    init_value: jax.typing.ArrayLike,
    first_cycle_steps: int,
    cycle_mult: int = 1,
    min_value: jax.typing.ArrayLike = 0.0,
) -> Schedule:
    r"""Return cosine annealing with warm restarts (SGDR), as PyTorch's `CosineAnnealingWarmRestarts`.

    Cycle $i$ lasts $T_i = T_0 m^i$ steps ($T_0$ = `first_cycle_steps`, $m$ = `cycle_mult`). With
    $t_\mathrm{cur}$ the steps since the last restart:

    $$ v(t) = v_\min + \tfrac12 (I - v_\min) \left(1 + \cos \frac{\pi\, t_\mathrm{cur}}{T_i}\right) $$

    The value restarts at `init_value` at the start of every cycle and never quite reaches `min_value`.

    Args:
        init_value: the value at the start of each cycle (torch's initial `lr`).
        first_cycle_steps: length $T_0$ of the first cycle (int >= 1; torch's `T_0`).
        cycle_mult: factor $m$ by which each cycle is longer than the previous (int >= 1; torch's `T_mult`).
        min_value: the value approached at the end of each cycle (torch's `eta_min`).

    Returns:
        A `Schedule` equal to `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)` at `last_epoch == t`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.cosine_warm_restarts_schedule(1.0, first_cycle_steps=10, cycle_mult=2)
        assert float(sched(0)) == float(sched(10)) == float(sched(30)) == 1.0
        assert abs(float(sched(5)) - 0.5) < 1e-6
        ```

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """
    _check_value("init_value", init_value)
    first = check_int("first_cycle_steps", first_cycle_steps, minimum=1)
    mult = check_int("cycle_mult", cycle_mult, minimum=1)
    _check_value("min_value", min_value)

    # Cycle starts for a growing cycle length; enough of them to cover every int32 step, which keeps
    # the table short (at most 32 entries) and exactly representable in the step's integer dtype.
    starts, lengths = [0], [first]
    if mult > 1:
        while starts[-1] + lengths[-1] <= np.iinfo(np.int32).max:
            starts.append(starts[-1] + lengths[-1])
            lengths.append(lengths[-1] * mult)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step)
        integer = jnp.issubdtype(step.dtype, jnp.integer)
        # Integer steps stay integers until the position in the cycle is known, so that the phase is
        # exact however long training runs.
        t = jnp.maximum(step, 0) if integer else _float_steps(step)
        if mult == 1:
            position = jnp.asarray(t % first, dtype=float)
            length = jnp.asarray(float(first))
        else:
            table = jnp.asarray(starts, dtype=t.dtype)
            index = jnp.sum(t[..., None] >= table[1:], axis=-1)
            position = jnp.asarray(t - table[index], dtype=float)
            length = jnp.asarray(lengths, dtype=float)[index]
        w0, w1 = _cosine_weights(position, length)
        return _finish(init_value * w0 + min_value * w1, position)

    return schedule


def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, Any]]) -> Schedule:
    r"""Return SGD-with-warm-restarts as a chain of warmup-cosine cycles, each with its own arguments.

    Cycle $k$ is `warmup_cosine_decay_schedule(**cosine_kwargs[k])` started at step
    $\sum_{j<k} D_j$ where $D_j$ is cycle $j$'s `decay_steps`:

    $$ v(t) = f_k\Big(t - \sum_{j<k} D_j\Big) \quad \text{for } \sum_{j<k} D_j \le t < \sum_{j\le k} D_j $$

    The last cycle holds its `end_value` after it ends. For PyTorch's geometric cycles use
    `cosine_warm_restarts_schedule`.

    Args:
        cosine_kwargs: one dict of `warmup_cosine_decay_schedule` arguments per cycle (at least one).

    Returns:
        A `Schedule` (optax's `sgdr_schedule` semantics).

    Example:
        ```python
        from gradchain import schedules

        cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=50)
        sched = schedules.sgdr_schedule([cycle, cycle])
        assert float(sched(5)) == float(sched(55)) == 1.0
        ```

    References:
        Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """
    if isinstance(cosine_kwargs, (str, bytes, Mapping)) or not isinstance(cosine_kwargs, Iterable):
        raise TypeError(
            "cosine_kwargs must be a sequence of dicts, "
            f"got {type(cosine_kwargs).__name__}: {cosine_kwargs!r}"
        )
    cycles = list(cosine_kwargs)
    if not cycles:
        raise ValueError("cosine_kwargs must hold at least one cycle, got an empty sequence")
    parts: list[Schedule] = []
    ends: list[int] = []
    for i, kwargs in enumerate(cycles):
        if not isinstance(kwargs, Mapping):
            raise TypeError(
                f"cosine_kwargs[{i}] must be a dict of warmup_cosine_decay_schedule arguments, "
                f"got {type(kwargs).__name__}: {kwargs!r}"
            )
        try:
            parts.append(warmup_cosine_decay_schedule(**kwargs))
        except (TypeError, ValueError) as error:
            # Re-raise with the cycle's index so the message says which dict was wrong.
            raise type(error)(f"cosine_kwargs[{i}]: {error} (got {dict(kwargs)!r})") from error
        ends.append((ends[-1] if ends else 0) + kwargs["decay_steps"])
    return join_schedules(parts, ends[:-1])


# ----------------------------------------------------------------------------------------------------
# Warmup-then-decay schedules.


def warmup_linear_decay_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: jax.typing.ArrayLike = 0.0,
) -> Schedule:
    r"""Return a linear warmup to `peak_value` followed by a linear decay to `end_value`.

    With $I, P, E$ = `init_value`, `peak_value`, `end_value`, $W$ = `warmup_steps`, $D$ = `decay_steps`
    (the total length, warmup included, like `warmup_cosine_decay_schedule`) and $L = D - W$:

    $$ v(t) = \begin{cases} I + (P - I)\, t / W & t < W \\
       P + (E - P) \min(t - W, L) / L & t \ge W \end{cases} $$

    Args:
        init_value: the value at step 0.
        peak_value: the value at step `warmup_steps`.
        warmup_steps: length of the warmup (int >= 0; 0 starts directly at `peak_value`).
        decay_steps: total length of warmup plus decay (int > `warmup_steps`); `end_value` is held after.
        end_value: the final value.

    Returns:
        A `Schedule`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.warmup_linear_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=30)
        assert float(sched(10)) == 1.0
        assert abs(float(sched(20)) - 0.5) < 1e-7
        assert float(sched(30)) == 0.0
        ```
    """
    _check_value("init_value", init_value)
    _check_value("peak_value", peak_value)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    total = check_int("decay_steps", decay_steps, minimum=1)
    if total <= warmup:
        raise ValueError(
            f"decay_steps must be > warmup_steps (it counts the warmup too), got decay_steps={total}, "
            f"warmup_steps={warmup}"
        )
    _check_value("end_value", end_value)
    length = total - warmup

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        w0, w1 = _linear_weights(t - warmup, length)
        value = peak_value * w0 + end_value * w1
        if warmup > 0:
            u0, u1 = _linear_weights(t, warmup)
            value = jnp.where(t < warmup, init_value * u0 + peak_value * u1, value)
        return _finish(value, t)

    return schedule


def warmup_exponential_decay_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: jax.typing.ArrayLike,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: jax.typing.ArrayLike | None = None,
) -> Schedule:
    r"""Return a linear warmup to `peak_value` followed by `exponential_decay` from `peak_value`.

    With $W$ = `warmup_steps` and $g$ = `exponential_decay(peak_value, transition_steps, decay_rate,
    transition_begin, staircase, end_value)`:

    $$ v(t) = \begin{cases} I + (P - I)\, t / W & t < W \\ g(t - W) & t \ge W \end{cases} $$

    Args:
        init_value: the value at step 0.
        peak_value: the value at step `warmup_steps`.
        warmup_steps: length of the warmup (int >= 0; 0 skips it).
        transition_steps: see `exponential_decay` (int >= 1).
        decay_rate: see `exponential_decay` (> 0).
        transition_begin: steps to hold `peak_value` after the warmup (int >= 0).
        staircase: see `exponential_decay`.
        end_value: see `exponential_decay`.

    Returns:
        A `Schedule` (optax's semantics).

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.warmup_exponential_decay_schedule(
            0.0, 1.0, warmup_steps=10, transition_steps=10, decay_rate=0.5
        )
        assert abs(float(sched(5)) - 0.5) < 1e-7
        assert abs(float(sched(20)) - 0.5) < 1e-6
        ```
    """
    _check_value("init_value", init_value)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    decay = exponential_decay(
        peak_value,
        transition_steps=transition_steps,
        decay_rate=decay_rate,
        transition_begin=transition_begin,
        staircase=staircase,
        end_value=end_value,
    )
    _check_value("peak_value", peak_value)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        value = decay(t - warmup)
        if warmup > 0:
            u0, u1 = _linear_weights(t, warmup)
            value = jnp.where(t < warmup, init_value * u0 + peak_value * u1, value)
        return _finish(value, t)

    return schedule


def warmup_stable_decay_schedule(
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    init_value: jax.typing.ArrayLike = 0.0,
    end_value: jax.typing.ArrayLike = 0.0,
    decay_type: Literal["linear", "cosine", "sqrt"] = "linear",
) -> Schedule:
    r"""Return a warmup-stable-decay (WSD, "trapezoidal") schedule.

    Three consecutive phases of $W$ = `warmup_steps`, $S$ = `stable_steps` and $D$ = `decay_steps`
    steps (here `decay_steps` is the length of the decay phase alone; the schedule ends at
    $W + S + D$). With $I, P, E$ = `init_value`, `peak_value`, `end_value` and $f = \min(t - W - S, D)/D$:

    $$ v(t) = \begin{cases} I + (P - I)\, t / W & t < W \\ P & W \le t < W + S \\
       E + (P - E)\, d(f) & t \ge W + S \end{cases} $$

    where $d(f) = 1 - f$ (linear), $\tfrac12(1 + \cos \pi f)$ (cosine) or $1 - \sqrt f$ (sqrt).

    Args:
        peak_value: the value held during the stable phase.
        warmup_steps: length of the linear warmup (int >= 0).
        stable_steps: length of the stable phase (int >= 0).
        decay_steps: length of the decay phase (int >= 1); `end_value` is held after it.
        init_value: the value at step 0.
        end_value: the final value.
        decay_type: the shape $d$ of the decay: "linear", "cosine" or "sqrt" (1 - sqrt, Hägele et al.).

    Returns:
        A `Schedule`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.warmup_stable_decay_schedule(1.0, warmup_steps=10, stable_steps=80, decay_steps=10)
        assert float(sched(10)) == float(sched(90)) == 1.0
        assert abs(float(sched(95)) - 0.5) < 1e-7
        assert float(sched(100)) == 0.0
        ```

    References:
        Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with Scalable Training
        Strategies", 2024 (WSD). Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed
        Training Durations", 2024 (1 - sqrt decay).
    """
    _check_value("peak_value", peak_value)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    stable = check_int("stable_steps", stable_steps, minimum=0)
    length = check_int("decay_steps", decay_steps, minimum=1)
    _check_value("init_value", init_value)
    _check_value("end_value", end_value)
    kind = _check_choice("decay_type", decay_type, ("linear", "cosine", "sqrt"))
    start = warmup + stable

    def decay_weights(s: jax.Array) -> tuple[jax.Array, jax.Array]:
        if kind == "linear":
            return _linear_weights(s, length)
        if kind == "cosine":
            return _cosine_weights(s, length)
        s = jnp.clip(s, 0.0, length)
        root = jnp.sqrt(s / length)
        # 1 - sqrt(f) = (1 - f) / (1 + sqrt(f)) keeps its precision as f -> 1.
        return ((length - s) / length) / (1.0 + root), root

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        w0, w1 = decay_weights(t - start)
        value = peak_value * w0 + end_value * w1
        if warmup > 0:
            u0, u1 = _linear_weights(t, warmup)
            value = jnp.where(t < warmup, init_value * u0 + peak_value * u1, value)
        return _finish(value, t)

    return schedule


# ----------------------------------------------------------------------------------------------------
# Power-law schedules.


def inverse_sqrt_schedule(
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int = 0,
    timescale: jax.typing.ArrayLike | None = None,
) -> Schedule:
    r"""Return a linear warmup from 0 followed by inverse-square-root decay.

    With $P$ = `peak_value`, $W$ = `warmup_steps` and $\tau$ = `timescale`:

    $$ v(t) = \begin{cases} P\, t / W & t < W \\ P \Big/ \sqrt{1 + (t - W)/\tau} & t \ge W \end{cases} $$

    The default $\tau = \max(W, 1)$ gives, for $W > 0$, $v(t) = P \min(t/W, \sqrt{W/t})$: the
    Transformer schedule $d^{-1/2} \min(t^{-1/2}, t W^{-3/2})$ with $P = (d W)^{-1/2}$.

    Args:
        peak_value: the value at the end of the warmup.
        warmup_steps: length of the warmup (int >= 0; 0 starts at `peak_value`).
        timescale: steps over which the decay's argument grows by one (> 0). Defaults to
            `max(warmup_steps, 1)`.

    Returns:
        A `Schedule`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.inverse_sqrt_schedule(1.0, warmup_steps=100)
        assert float(sched(100)) == 1.0
        assert abs(float(sched(400)) - 0.5) < 1e-7
        ```

    References:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """
    _check_value("peak_value", peak_value)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    if timescale is None:
        timescale = max(warmup, 1)
    else:
        _check_value("timescale", timescale, "positive")

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        value = peak_value / jnp.sqrt(1.0 + jnp.maximum(t - warmup, 0.0) / timescale)
        if warmup > 0:
            value = jnp.where(t < warmup, peak_value * (t / warmup), value)
        return _finish(value, t)

    return schedule


def power_law_schedule(
    init_value: jax.typing.ArrayLike,
    tau: jax.typing.ArrayLike,
    alpha: jax.typing.ArrayLike,
) -> Schedule:
    r"""Return the power-law ("inverse-time") decay $v_0 / (1 + t/\tau)^\alpha$.

    $$ v(t) = \frac{I}{(1 + t / \tau)^{\alpha}} $$

    $\alpha \in (1/2, 1]$ satisfies the Robbins-Monro conditions; $\alpha = 1$ is the classic $1/t$ decay
    and $\alpha = 1/2$ an inverse-square-root decay.

    Args:
        init_value: the value $I$ at step 0.
        tau: the time scale $\tau$ (> 0) in steps: the value has dropped by $2^\alpha$ at step $\tau$.
        alpha: the exponent $\alpha$ (>= 0).

    Returns:
        A `Schedule`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.power_law_schedule(1.0, tau=10.0, alpha=1.0)
        assert abs(float(sched(10)) - 0.5) < 1e-7
        assert abs(float(sched(30)) - 0.25) < 1e-7
        ```

    References:
        Robbins & Monro, "A Stochastic Approximation Method", Ann. Math. Statist. 1951.
    """
    _check_value("init_value", init_value)
    _check_value("tau", tau, "positive")
    _check_value("alpha", alpha, "nonnegative")

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        return _finish(init_value * jnp.exp(-alpha * jnp.log1p(t / tau)), t)

    return schedule


def inverse_time_decay(
    init_value: jax.typing.ArrayLike,
    decay_rate: jax.typing.ArrayLike,
    decay_steps: int = 1,
    staircase: bool = False,
) -> Schedule:
    r"""Return the inverse-time decay $v_0 / (1 + r\, t / T)$.

    With $I$ = `init_value`, $r$ = `decay_rate`, $T$ = `decay_steps`:

    $$ v(t) = \frac{I}{1 + r\, k(t)}, \qquad k(t) = \frac{t}{T} \;\;
       \text{(or } \lfloor t / T \rfloor \text{ if staircase)} $$

    PyTorch's Adagrad uses $\mathrm{lr} / (1 + (n - 1)\, \mathrm{lr\_decay})$ at its step $n$ counted
    from 1; gradchain counts from 0, so `inverse_time_decay(lr, lr_decay)` reproduces it.

    Args:
        init_value: the value $I$ at step 0.
        decay_rate: the rate $r$ (>= 0; 0 gives a constant).
        decay_steps: steps per unit of $k$ (int >= 1).
        staircase: if True, $k$ only grows every `decay_steps` steps.

    Returns:
        A `Schedule`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.inverse_time_decay(1.0, decay_rate=0.5, decay_steps=10)
        assert abs(float(sched(20)) - 0.5) < 1e-7
        ```
    """
    _check_value("init_value", init_value)
    _check_value("decay_rate", decay_rate, "nonnegative")
    length = check_int("decay_steps", decay_steps, minimum=1)
    staircase = _check_bool("staircase", staircase)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _float_steps(step)
        k = t / length
        if staircase:
            k = jnp.floor(k)
        return _finish(init_value / (1.0 + decay_rate * k), t)

    return schedule


# ----------------------------------------------------------------------------------------------------
# Cyclical schedules.


def _onecycle_checks(
    transition_steps: int,
    peak_value: jax.typing.ArrayLike,
    pct_start: float,
    div_factor: jax.typing.ArrayLike,
    final_div_factor: jax.typing.ArrayLike,
    torch_convention: bool,
) -> tuple[int, float, bool]:
    steps = check_int("transition_steps", transition_steps, minimum=1)
    _check_value("peak_value", peak_value)
    start = _check_concrete("pct_start", pct_start, "closed_unit_interval")
    _check_value("div_factor", div_factor, "positive")
    _check_value("final_div_factor", final_div_factor, "positive")
    torch_convention = _check_bool("torch_convention", torch_convention)
    if torch_convention and not start * steps - 1 > 0:
        # torch's first phase ends at pct_start * total_steps - 1; at or below 0 it divides by zero
        # (or runs backwards).
        raise ValueError(
            "pct_start * transition_steps must be > 1 with torch_convention=True, got "
            f"pct_start={pct_start!r}, transition_steps={steps}"
        )
    return steps, start, torch_convention


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: jax.typing.ArrayLike,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: jax.typing.ArrayLike = 25.0,
    final_div_factor: jax.typing.ArrayLike = 1e4,
    torch_convention: bool = False,
) -> Schedule:
    r"""Return a three-phase linear one-cycle schedule.

    With $P$ = `peak_value`, $I = P / $ `div_factor`, $F = I / $ `final_div_factor`, $N$ =
    `transition_steps`, the value goes linearly through the knots

    $$ (0, I) \to (b_1, P) \to (b_2, I) \to (b_3, F), \text{ then holds } F $$

    where by default (optax) $b_1 = \lfloor p_s N \rfloor$, $b_2 = \lfloor p_f N \rfloor$, $b_3 = N$
    ($p_s$ = `pct_start`, $p_f$ = `pct_final`). With `torch_convention=True` the knots are PyTorch's,
    $b_1 = p_s N - 1$, $b_2 = p_f N - 2$, $b_3 = N - 1$: then
    `linear_onecycle_schedule(N, P, p, pct_final=2 * p, torch_convention=True)` equals
    `OneCycleLR(max_lr=P, total_steps=N, pct_start=p, anneal_strategy="linear", three_phase=True)` at
    its steps 0 to N - 1 (torch always mirrors the first phase, i.e. fixes $p_f = 2 p_s$).

    Args:
        transition_steps: the cycle length $N$ (int >= 1).
        peak_value: the peak value $P$.
        pct_start: fraction of the cycle spent rising to the peak (in [0, 1]).
        pct_final: fraction of the cycle at which the value is back at $I$ (in [`pct_start`, 1]).
        div_factor: $P / I$ (> 0).
        final_div_factor: $I / F$ (> 0).
        torch_convention: use PyTorch's phase boundaries instead of optax's.

    Returns:
        A `Schedule`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.linear_onecycle_schedule(100, 1.0, pct_start=0.25, pct_final=0.5)
        assert abs(float(sched(0)) - 0.04) < 1e-8
        assert float(sched(25)) == 1.0
        assert abs(float(sched(100)) - 0.04 / 1e4) < 1e-12
        ```

    References:
        Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large Learning
        Rates", 2018.
    """
    steps, start, torch_convention = _onecycle_checks(
        transition_steps, peak_value, pct_start, div_factor, final_div_factor, torch_convention
    )
    final = _check_concrete("pct_final", pct_final, "closed_unit_interval")
    if final < start:
        raise ValueError(
            f"pct_final must be >= pct_start, got pct_final={pct_final!r}, pct_start={pct_start!r}"
        )
    init_value = peak_value / div_factor
    end_value = init_value / final_div_factor
    if torch_convention:
        b1, b2, b3 = start * steps - 1, final * steps - 2, steps - 1
        if not b1 < b2 < b3:
            raise ValueError(
                "pct_final must leave each phase a positive length with torch_convention=True "
                f"(pct_start * N - 1 < pct_final * N - 2 < N - 1), got pct_start={pct_start!r}, "
                f"pct_final={pct_final!r}, transition_steps={steps}"
            )
    else:
        # int() of the products, exactly as optax computes its boundaries.
        b1, b2, b3 = int(start * steps), int(final * steps), steps
    knots = [(0.0, init_value), (b1, peak_value), (b2, init_value), (b3, end_value)]
    return _interpolate(knots, _linear_weights)


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: jax.typing.ArrayLike,
    pct_start: float = 0.3,
    div_factor: jax.typing.ArrayLike = 25.0,
    final_div_factor: jax.typing.ArrayLike = 1e4,
    torch_convention: bool = False,
) -> Schedule:
    r"""Return the two-phase cosine one-cycle schedule.

    With $P$ = `peak_value`, $I = P / $ `div_factor`, $F = I / $ `final_div_factor`, $N$ =
    `transition_steps`, the value follows half cosines through the knots

    $$ (0, I) \to (b_1, P) \to (b_2, F), \text{ then holds } F, \qquad
       v = E + \tfrac12 (S - E)\left(1 + \cos \pi \tfrac{t - b_a}{b_b - b_a}\right) \text{ on each phase} $$

    where by default (optax) $b_1 = \lfloor p_s N \rfloor$ and $b_2 = N$ ($p_s$ = `pct_start`). With
    `torch_convention=True` the knots are PyTorch's, $b_1 = p_s N - 1$ and $b_2 = N - 1$, and the
    schedule equals `OneCycleLR(max_lr=P, total_steps=N, pct_start=p_s)` (`anneal_strategy="cos"`,
    `three_phase=False`) at its steps 0 to N - 1.

    Args:
        transition_steps: the cycle length $N$ (int >= 1).
        peak_value: the peak value $P$.
        pct_start: fraction of the cycle spent rising to the peak (in [0, 1]).
        div_factor: $P / I$ (> 0).
        final_div_factor: $I / F$ (> 0).
        torch_convention: use PyTorch's phase boundaries instead of optax's.

    Returns:
        A `Schedule`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.cosine_onecycle_schedule(100, 1.0, pct_start=0.3)
        assert float(sched(30)) == 1.0
        torch_like = schedules.cosine_onecycle_schedule(100, 1.0, pct_start=0.3, torch_convention=True)
        assert float(torch_like(29)) == 1.0
        ```

    References:
        Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large Learning
        Rates", 2018.
    """
    steps, start, torch_convention = _onecycle_checks(
        transition_steps, peak_value, pct_start, div_factor, final_div_factor, torch_convention
    )
    init_value = peak_value / div_factor
    end_value = init_value / final_div_factor
    if torch_convention:
        b1, b2 = start * steps - 1, steps - 1
        if not b1 < b2:
            raise ValueError(f"pct_start must be < 1 with torch_convention=True, got pct_start={pct_start!r}")
    else:
        b1, b2 = int(start * steps), steps
    knots = [(0.0, init_value), (b1, peak_value), (b2, end_value)]
    return _interpolate(knots, _cosine_weights)


def cyclic_schedule(
    base_value: jax.typing.ArrayLike,
    max_value: jax.typing.ArrayLike,
    step_size_up: int,
    step_size_down: int | None = None,
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
    gamma: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    r"""Return a cyclical (triangular) schedule, as PyTorch's `CyclicLR`.

    Each cycle rises linearly for $U$ = `step_size_up` steps from $B$ = `base_value` towards
    $M$ = `max_value` and falls back for $D$ = `step_size_down` steps. With $c = \lfloor t / (U + D)
    \rfloor$ the cycle index and $x = t \bmod (U + D)$:

    $$ v(t) = B + (M - B)\, h(x)\, a(t), \qquad
       h(x) = \begin{cases} x / U & x \le U \\ (U + D - x) / D & x > U \end{cases} $$

    where the amplitude factor is $a = 1$ ("triangular"), $a = 2^{-c}$ ("triangular2", halved each
    cycle) or $a = \gamma^{t}$ ("exp_range").

    Args:
        base_value: the lower value $B$ (torch's `base_lr`).
        max_value: the upper value $M$ (torch's `max_lr`).
        step_size_up: steps in the rising half of a cycle (int >= 1).
        step_size_down: steps in the falling half (int >= 1); defaults to `step_size_up`.
        mode: "triangular", "triangular2" or "exp_range".
        gamma: the per-step amplitude factor for "exp_range" (> 0).

    Returns:
        A `Schedule` equal to `CyclicLR(base_lr, max_lr, step_size_up, step_size_down, mode, gamma)`
        at `last_epoch == t`.

    Example:
        ```python
        from gradchain import schedules

        sched = schedules.cyclic_schedule(0.1, 1.0, step_size_up=10, mode="triangular2")
        assert float(sched(10)) == 1.0
        assert abs(float(sched(30)) - 0.55) < 1e-7
        ```

    References:
        Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    """
    _check_value("base_value", base_value)
    _check_value("max_value", max_value)
    up = check_int("step_size_up", step_size_up, minimum=1)
    down = up if step_size_down is None else check_int("step_size_down", step_size_down, minimum=1)
    mode = _check_choice("mode", mode, ("triangular", "triangular2", "exp_range"))
    _check_value("gamma", gamma, "positive")
    power = _geometric(gamma, 1)
    period = up + down

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step)
        if jnp.issubdtype(step.dtype, jnp.integer):
            # Integer arithmetic keeps the phase exact at any step count.
            t = jnp.maximum(step, 0)
            position = jnp.asarray(t % period, dtype=float)
            cycle = jnp.asarray(t // period, dtype=float)
            t = jnp.asarray(t, dtype=float)
        else:
            t = _float_steps(step)
            position = jnp.mod(t, period)
            cycle = jnp.round((t - position) / period)
        height = jnp.where(position <= up, position / up, (period - position) / down)
        if mode == "triangular2":
            height = height * jnp.exp2(-cycle)
        elif mode == "exp_range":
            height = height * power(t)
        return _finish(base_value + (max_value - base_value) * height, t)

    return schedule
