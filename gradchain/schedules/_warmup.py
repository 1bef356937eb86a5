"""Warmup-then-decay schedules: a linear warmup to a peak, then a cosine, linear, exponential or WSD decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from gradchain._base import Schedule
from gradchain._checks import Check, check_int
from gradchain.schedules._basic import exponential_decay
from gradchain.schedules._common import (
    check_choice,
    check_value,
    cosine_weights,
    finish,
    float_steps,
    linear_weights,
)


def _check_warmup_decay(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: jax.typing.ArrayLike,
) -> tuple[int, int]:
    """Check the arguments of a warmup plus decay of `decay_steps` in all; return (warmup, decay length)."""
    check_value("init_value", init_value)
    check_value("peak_value", peak_value)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    total = check_int("decay_steps", decay_steps, minimum=1)
    if total <= warmup:
        raise ValueError(
            f"decay_steps must be > warmup_steps (it counts the warmup too), got decay_steps={total}, "
            f"warmup_steps={warmup}"
        )
    check_value("end_value", end_value)
    return warmup, total - warmup


def _blend(
    peak_value: jax.typing.ArrayLike,
    end_value: jax.typing.ArrayLike,
    start: int,
    weights: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
) -> Callable[[jax.Array], jax.Array]:
    """The decay `t -> peak_value * w0 + end_value * w1`, with `(w0, w1) = weights(t - start)`."""

    def decay(t: jax.Array) -> jax.Array:
        w0, w1 = weights(t - start)
        return peak_value * w0 + end_value * w1

    return decay


def _warmup_then(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup: int,
    decay: Callable[[jax.Array], jax.Array],
) -> Schedule:
    """Linear warmup from `init_value` at step 0 to `peak_value` at step `warmup`, then `decay`.

    `decay` receives the (clamped, float) step itself, not the steps since the warmup, and is used from
    step `warmup` on; `warmup=0` skips the warmup.
    """

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        value = decay(t)
        if warmup > 0:
            u0, u1 = linear_weights(t, warmup)
            value = jnp.where(t < warmup, init_value * u0 + peak_value * u1, value)
        return finish(value, t)

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
    warmup, length = _check_warmup_decay(init_value, peak_value, warmup_steps, decay_steps, end_value)
    check_value("exponent", exponent, Check.POSITIVE)
    decay = _blend(peak_value, end_value, warmup, lambda s: cosine_weights(s, length, exponent))
    return _warmup_then(init_value, peak_value, warmup, decay)


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
    warmup, length = _check_warmup_decay(init_value, peak_value, warmup_steps, decay_steps, end_value)
    decay = _blend(peak_value, end_value, warmup, lambda s: linear_weights(s, length))
    return _warmup_then(init_value, peak_value, warmup, decay)


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
    check_value("init_value", init_value)
    check_value("peak_value", peak_value)  # before exponential_decay, which would call it init_value
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    decay = exponential_decay(
        peak_value,
        transition_steps=transition_steps,
        decay_rate=decay_rate,
        transition_begin=transition_begin,
        staircase=staircase,
        end_value=end_value,
    )
    return _warmup_then(init_value, peak_value, warmup, lambda t: decay(t - warmup))


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
    check_value("peak_value", peak_value)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    stable = check_int("stable_steps", stable_steps, minimum=0)
    length = check_int("decay_steps", decay_steps, minimum=1)
    check_value("init_value", init_value)
    check_value("end_value", end_value)
    kind = check_choice("decay_type", decay_type, ("linear", "cosine", "sqrt"))
    start = warmup + stable

    def decay_weights(s: jax.Array) -> tuple[jax.Array, jax.Array]:
        if kind == "linear":
            return linear_weights(s, length)
        if kind == "cosine":
            return cosine_weights(s, length)
        s = jnp.clip(s, 0.0, length)
        root = jnp.sqrt(s / length)
        # 1 - sqrt(f) = (1 - f) / (1 + sqrt(f)) keeps its precision as f -> 1.
        return ((length - s) / length) / (1.0 + root), root

    decay = _blend(peak_value, end_value, start, decay_weights)
    return _warmup_then(init_value, peak_value, warmup, decay)
