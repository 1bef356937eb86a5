"""Cyclical schedules: the linear and cosine one-cycle policies and PyTorch's `CyclicLR`."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from gradchain._base import Schedule
from gradchain._checks import Check, check_int
from gradchain.schedules._common import (
    check_bool,
    check_choice,
    check_concrete,
    check_value,
    cosine_weights,
    finish,
    float_steps,
    geometric,
    interpolate,
    linear_weights,
)


def _onecycle_arguments(
    transition_steps: int,
    peak_value: jax.typing.ArrayLike,
    pct_start: float,
    div_factor: jax.typing.ArrayLike,
    final_div_factor: jax.typing.ArrayLike,
    torch_convention: bool,
) -> tuple[int, float, bool, jax.typing.ArrayLike, jax.typing.ArrayLike]:
    """Check the arguments both one-cycle schedules take; return them with the initial and final values."""
    steps = check_int("transition_steps", transition_steps, minimum=1)
    check_value("peak_value", peak_value)
    start = check_concrete("pct_start", pct_start, Check.CLOSED_UNIT_INTERVAL)
    check_value("div_factor", div_factor, Check.POSITIVE)
    check_value("final_div_factor", final_div_factor, Check.POSITIVE)
    torch_convention = check_bool("torch_convention", torch_convention)
    if torch_convention and not start * steps - 1 > 0:
        # torch's first phase ends at pct_start * total_steps - 1; at or below 0 it divides by zero
        # (or runs backwards).
        raise ValueError(
            "pct_start * transition_steps must be > 1 with torch_convention=True, got "
            f"pct_start={pct_start!r}, transition_steps={steps}"
        )
    init_value = peak_value / div_factor
    return steps, start, torch_convention, init_value, init_value / final_div_factor


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
    steps, start, torch_convention, init_value, end_value = _onecycle_arguments(
        transition_steps, peak_value, pct_start, div_factor, final_div_factor, torch_convention
    )
    final = check_concrete("pct_final", pct_final, Check.CLOSED_UNIT_INTERVAL)
    if final < start:
        raise ValueError(f"pct_final must be >= pct_start, got pct_final={pct_final!r}, pct_start={pct_start!r}")
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
    return interpolate(knots, linear_weights)


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
    steps, start, torch_convention, init_value, end_value = _onecycle_arguments(
        transition_steps, peak_value, pct_start, div_factor, final_div_factor, torch_convention
    )
    if torch_convention:
        b1, b2 = start * steps - 1, steps - 1
        if not b1 < b2:
            raise ValueError(f"pct_start must be < 1 with torch_convention=True, got pct_start={pct_start!r}")
    else:
        b1, b2 = int(start * steps), steps
    knots = [(0.0, init_value), (b1, peak_value), (b2, end_value)]
    return interpolate(knots, cosine_weights)


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
    check_value("base_value", base_value)
    check_value("max_value", max_value)
    up = check_int("step_size_up", step_size_up, minimum=1)
    down = up if step_size_down is None else check_int("step_size_down", step_size_down, minimum=1)
    mode = check_choice("mode", mode, ("triangular", "triangular2", "exp_range"))
    check_value("gamma", gamma, Check.POSITIVE)
    power = geometric(gamma, 1)
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
            t = float_steps(step)
            position = jnp.mod(t, period)
            cycle = jnp.round((t - position) / period)
        height = jnp.where(position <= up, position / up, (period - position) / down)
        if mode == "triangular2":
            height = height * jnp.exp2(-cycle)
        elif mode == "exp_range":
            height = height * power(t)
        return finish(base_value + (max_value - base_value) * height, t)

    return schedule
