"""Building blocks shared by the schedule builders: argument checks and numerical helpers.

Every builder validates its arguments with the `_check_*` helpers (so errors name the argument and
the value) and builds its schedule from `float_steps`, the weight functions and `finish`, which
carry the conventions listed in `gradchain.schedules`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain._base import Schedule
from gradchain._checks import Check, check, concrete_float

# ----------------------------------------------------------------------------------------------------
# Validation helpers.


def check_value(name: str, value: Any, kind: str = Check.FINITE) -> None:
    # `check` lets callables through because optimizers accept schedules as hyperparameters; a
    # schedule's own parameters must be numbers (concrete or traced), so anything else is a mistake.
    number = isinstance(value, (int, float, np.number, jax.core.Tracer)) or hasattr(value, "dtype")
    if isinstance(value, (bool, np.bool_)) or callable(value) or not number:
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    check(name, value, kind)


def check_concrete(name: str, value: Any, kind: str) -> float:
    """Check `value` and return it as a Python float; it must be known at build time."""
    check_value(name, value, kind)
    x = concrete_float(value)
    if x is None:
        raise TypeError(f"{name} must be a concrete number (it fixes the shape of the schedule), got {value!r}")
    return x


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}: {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def geometric(rate: Any, per: int) -> Callable[[jax.Array], jax.Array]:
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


def float_steps(step: jax.typing.ArrayLike) -> jax.Array:
    """The step as a float array, with negative steps clamped to 0."""
    return jnp.maximum(jnp.asarray(step, dtype=float), 0.0)


def finish(value: jax.typing.ArrayLike, like: jax.Array) -> jax.Array:
    """The value as a default-float array broadcast to the step's shape."""
    return jnp.broadcast_to(jnp.asarray(value, dtype=float), jnp.shape(like))


def linear_weights(s: jax.Array, length: float) -> tuple[jax.Array, jax.Array]:
    """Weights of the start and end values for a linear ramp at offset `s` of `length` steps.

    Both weights are computed directly (rather than one as `1 - other`) so that the value near either
    end keeps full relative precision.
    """
    s = jnp.clip(s, 0.0, length)
    return (length - s) / length, s / length


def cosine_weights(s: jax.Array, length: float, exponent: jax.typing.ArrayLike = 1.0) -> tuple[jax.Array, jax.Array]:
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


def interpolate(
    knots: Sequence[tuple[float, jax.typing.ArrayLike]],
    weights: Callable[[jax.Array, float], tuple[jax.Array, jax.Array]],
) -> Schedule:
    """Schedule through `(step, value)` knots: a zero-length segment is a jump; after the last knot, hold."""

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = float_steps(step)
        value = jnp.broadcast_to(jnp.asarray(knots[0][1], dtype=float), t.shape)
        for (b0, v0), (b1, v1) in itertools.pairwise(knots):
            if b1 > b0:
                w0, w1 = weights(t - b0, b1 - b0)
                value = jnp.where(t >= b0, v0 * w0 + v1 * w1, value)
        value = jnp.where(t >= knots[-1][0], knots[-1][1], value)
        return finish(value, t)

    return schedule
