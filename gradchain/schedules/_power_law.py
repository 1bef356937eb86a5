"""Power-law schedules: inverse square root (with a warmup), power-law and inverse-time decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradchain._base import Schedule
from gradchain._checks import Check, check_int
from gradchain.schedules._common import check_bool, check_value, finish, float_steps


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
    check_value("peak_value", peak_value)
    warmup = check_int("warmup_steps", warmup_steps, minimum=0)
    if timescale is None:
        timescale = max(warmup, 1)
    else:
        check_value("timescale", timescale, Check.POSITIVE)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        value = peak_value / jnp.sqrt(1.0 + jnp.maximum(t - warmup, 0.0) / timescale)
        if warmup > 0:
            value = jnp.where(t < warmup, peak_value * (t / warmup), value)
        return finish(value, t)

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
    check_value("init_value", init_value)
    check_value("tau", tau, Check.POSITIVE)
    check_value("alpha", alpha, Check.NONNEGATIVE)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        return finish(init_value * jnp.exp(-alpha * jnp.log1p(t / tau)), t)

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
    check_value("init_value", init_value)
    check_value("decay_rate", decay_rate, Check.NONNEGATIVE)
    length = check_int("decay_steps", decay_steps, minimum=1)
    staircase = check_bool("staircase", staircase)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        k = t / length
        if staircase:
            k = jnp.floor(k)
        return finish(init_value / (1.0 + decay_rate * k), t)

    return schedule
