"""Cosine schedules: a cosine decay, and cosine annealing with warm restarts (SGDR)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain._base import Schedule
from gradchain._checks import Check, check_int
from gradchain.schedules._basic import join_schedules
from gradchain.schedules._common import check_value, cosine_weights, finish, float_steps
from gradchain.schedules._warmup import warmup_cosine_decay_schedule


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
    check_value("init_value", init_value)
    length = check_int("decay_steps", decay_steps, minimum=1)
    check_value("alpha", alpha)
    check_value("exponent", exponent, Check.POSITIVE)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        w0, w1 = cosine_weights(t, length, exponent)
        return finish(init_value * w0 + (alpha * init_value) * w1, t)

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
    check_value("init_value", init_value)
    first = check_int("first_cycle_steps", first_cycle_steps, minimum=1)
    mult = check_int("cycle_mult", cycle_mult, minimum=1)
    check_value("min_value", min_value)

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
        t = jnp.maximum(step, 0) if integer else float_steps(step)
        if mult == 1:
            position = jnp.asarray(t % first, dtype=float)
            length = jnp.asarray(float(first))
        else:
            table = jnp.asarray(starts, dtype=t.dtype)
            index = jnp.sum(t[..., None] >= table[1:], axis=-1)
            position = jnp.asarray(t - table[index], dtype=float)
            length = jnp.asarray(lengths, dtype=float)[index]
        w0, w1 = cosine_weights(position, length)
        return finish(init_value * w0 + min_value * w1, position)

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
            f"cosine_kwargs must be a sequence of dicts, got {type(cosine_kwargs).__name__}: {cosine_kwargs!r}"
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
