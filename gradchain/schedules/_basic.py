"""Basic schedules: constant, linear, polynomial, exponential and piecewise-constant, and joining them."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp

from gradchain._base import Schedule
from gradchain._checks import Check, check_int, concrete_float
from gradchain.schedules._common import (
    check_bool,
    check_value,
    finish,
    float_steps,
    geometric,
    linear_weights,
)


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
    check_value("value", value)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        return finish(value, jnp.asarray(step))

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
    check_value("init_value", init_value)
    check_value("end_value", end_value)
    length = check_int("transition_steps", transition_steps, minimum=1)
    begin = check_int("transition_begin", transition_begin, minimum=0)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        w0, w1 = linear_weights(t - begin, length)
        return finish(init_value * w0 + end_value * w1, t)

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
    check_value("init_value", init_value)
    check_value("end_value", end_value)
    check_value("power", power, Check.POSITIVE)
    length = check_int("transition_steps", transition_steps, minimum=1)
    begin = check_int("transition_begin", transition_begin, minimum=0)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        s = jnp.clip(t - begin, 0.0, length)
        remaining = (length - s) / length
        w_init = remaining**power
        # The weight of end_value is 1 - remaining**power; expm1/log1p keep it accurate near the start,
        # where the schedule rises from a small init_value towards a large end_value.
        w_end = s / length if concrete_float(power) == 1.0 else -jnp.expm1(power * jnp.log1p(-s / length))
        return finish(init_value * w_init + end_value * w_end, t)

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
    check_value("init_value", init_value)
    length = check_int("transition_steps", transition_steps, minimum=1)
    check_value("decay_rate", decay_rate, Check.POSITIVE)
    begin = check_int("transition_begin", transition_begin, minimum=0)
    staircase = check_bool("staircase", staircase)
    if end_value is not None:
        check_value("end_value", end_value)
    # A staircase counts whole periods; a continuous decay counts steps, each a 1/length period.
    power = geometric(decay_rate, 1 if staircase else length)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        s = jnp.maximum(t - begin, 0.0)
        value = init_value * power(jnp.floor(s / length) if staircase else s)
        if end_value is not None:
            value = jnp.where(jnp.asarray(decay_rate) < 1, jnp.maximum(value, end_value), jnp.minimum(value, end_value))
        return finish(value, t)

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
    check_value("init_value", init_value)
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
        check_value(f"boundaries_and_scales[{boundary!r}]", scale, Check.NONNEGATIVE)
        items.append((b, scale))
    items.sort(key=lambda item: item[0])

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        value = jnp.broadcast_to(jnp.asarray(init_value, dtype=float), t.shape)
        for b, scale in items:
            value = jnp.where(t >= b, value * scale, value)
        return finish(value, t)

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
        value = finish(fns[0](t), t)
        for b, fn in zip(bounds, fns[1:], strict=True):
            value = jnp.where(t < b, value, finish(fn(t - b), t))
        return value

    return schedule
