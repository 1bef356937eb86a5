"""Momentum (heavy ball, Nesterov, PyTorch's dampening) and exponential moving averages."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradchain._base import GradientTransformation, Updates
from gradchain._checks import Check, check_state_dtype
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot, elementwise
from gradchain._numerics import one_minus_pow


class TraceState(NamedTuple):
    """State of `trace`: step count, the momentum buffer, hyperparameters `decay`, `dampening`."""

    count: jax.Array
    trace: Updates
    hyperparams: Hyperparams


def trace(
    decay: float | jax.Array,
    nesterov: bool = False,
    dampening: float | jax.Array = 0.0,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Momentum: accumulate a decaying sum of past updates.

    Heavy ball (Polyak 1964), with PyTorch's dampening $\\tau$:

    $$ v_1 = g_1, \\qquad v_t = \\beta\\, v_{t-1} + (1 - \\tau)\\, g_t, \\qquad
       u_t = v_t \\;\\text{ or, with Nesterov, }\\; u_t = g_t + \\beta\\, v_t $$

    With $\\tau = 0$ (the default) this is optax's `trace` and PyTorch's SGD momentum; with
    $\\tau > 0$ it is exactly PyTorch's `SGD(momentum, dampening)`, whose first step keeps the whole
    gradient. Nesterov's look-ahead uses the form of Sutskever et al. (2013) that PyTorch and optax
    share.

    Followed by `scale_by_learning_rate(lr)`, the step is $p_{t} = p_{t-1} - \\eta_t v_t$. The
    lecture-note form $m_t = \\beta m_{t-1} - \\eta g_t,\\ p_t = p_{t-1} + m_t$ folds the learning
    rate into the buffer; the two give the same iterates while $\\eta$ is constant ($m_t = -\\eta v_t$),
    and differ once it changes: here a new learning rate rescales the whole accumulated velocity at
    once, there it only affects new gradients.

    Args:
        decay: the momentum $\\beta \\in [0, 1)$ (hyperparameter `decay`).
        nesterov: use Nesterov momentum (static).
        dampening: $\\tau \\in [0, 1]$, PyTorch's dampening (hyperparameter `dampening`).
        accumulator_dtype: storage dtype of the buffer; None keeps the param's dtype.

    Returns:
        A `GradientTransformation` with `TraceState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.trace(decay=0.9)
        state = tx.init({"w": jnp.zeros(1)})
        u, state = tx.update({"w": jnp.ones(1)}, state)
        u, state = tx.update({"w": jnp.ones(1)}, state)
        assert jnp.allclose(u["w"], 1.9)
        ```

    References:
        Polyak, *Some methods of speeding up the convergence of iteration methods*, 1964;
        Sutskever et al., *On the importance of initialization and momentum in deep learning*, ICML 2013.
    """
    check_state_dtype("trace", "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec(
        "trace", decay=(decay, Check.UNIT_INTERVAL), dampening=(dampening, Check.CLOSED_UNIT_INTERVAL)
    )

    def rule(g, v, *, decay, dampening, t):
        weight = jnp.where(t == 1, 1.0, 1.0 - dampening)
        v = decay * v + weight * g
        u = g + decay * v if nesterov else v
        return u, (v,)

    return elementwise(rule, TraceState, spec, slots=[Slot("trace", dtype=accumulator_dtype)])


class EmaState(NamedTuple):
    """State of `ema`: step count, the moving average, hyperparameter `decay`."""

    count: jax.Array
    ema: Updates
    hyperparams: Hyperparams


def ema(
    decay: float | jax.Array, debias: bool = True, accumulator_dtype: DTypeLike | None = None
) -> GradientTransformation:
    """Exponential moving average of the updates, optionally debiased.

    $$ m_t = \\beta\\, m_{t-1} + (1-\\beta)\\, g_t, \\qquad u_t = m_t / (1 - \\beta^t) \\;\\text{(debiased)}
       \\;\\text{ or }\\; u_t = m_t $$

    Debiasing removes the pull towards the zero initialisation (Kingma & Ba 2015, section 3).

    Args:
        decay: $\\beta \\in [0, 1)$ (hyperparameter `decay`).
        debias: divide by $1 - \\beta^t$ (static).
        accumulator_dtype: storage dtype of the average; None keeps the param's dtype.

    Returns:
        A `GradientTransformation` with `EmaState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.ema(decay=0.5)
        u, _ = tx.update({"w": jnp.full(1, 4.0)}, tx.init({"w": jnp.zeros(1)}))
        assert jnp.allclose(u["w"], 4.0)  # debiased: the first average is the first value
        ```

    References:
        Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    check_state_dtype("ema", "accumulator_dtype", accumulator_dtype)
    spec = HyperparamSpec("ema", decay=(decay, Check.UNIT_INTERVAL))

    def rule(g, m, *, decay, t):
        m = decay * m + (1 - decay) * g
        u = m / one_minus_pow(decay, t) if debias else m
        return u, (m,)

    return elementwise(rule, EmaState, spec, slots=[Slot("ema", dtype=accumulator_dtype)])
