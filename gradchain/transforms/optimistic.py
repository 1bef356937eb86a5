"""Optimism: the optimistic gradient step, which extrapolates from the previous gradient.

Written for one array and lifted by `gradchain._lift.elementwise`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain._base import GradientTransformation, Updates
from gradchain._checks import Check
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot, elementwise

# ---------------------------------------------------------------------------------------------------
# Optimism


class ScaleByOptimisticGradientState(NamedTuple):
    """State of `scale_by_optimistic_gradient`: step count, `previous_gradient`, `alpha`, `beta`."""

    count: jax.Array
    previous_gradient: Updates
    hyperparams: Hyperparams


def scale_by_optimistic_gradient(
    alpha: float | jax.Array = 1.0, beta: float | jax.Array = 1.0
) -> GradientTransformation:
    """Optimistic (extrapolated) gradients: the current one plus a multiple of its change.

    $$ u_t = (\\alpha + \\beta)\\, g_t - \\beta\\, g_{t-1}, \\qquad g_0 = g_1 $$

    so the first step is $\\alpha g_1$. With $\\alpha = \\beta = 1$ this is $2 g_t - g_{t-1}$, optimistic
    gradient descent (Daskalakis et al. 2018; the generalised form of Mokhtari et al. 2020). As
    `optax.scale_by_optimistic_gradient`, formula and first step included (optax issue #1082).

    Args:
        alpha: $\\alpha$ (hyperparameter `alpha`), any finite number.
        beta: $\\beta$ (hyperparameter `beta`), any finite number.

    Returns:
        A `GradientTransformation` with `ScaleByOptimisticGradientState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_optimistic_gradient()
        state = tx.init({"w": jnp.zeros(1)})
        u, state = tx.update({"w": jnp.array([1.0])}, state)
        u, state = tx.update({"w": jnp.array([3.0])}, state)
        assert jnp.allclose(u["w"], 5.0)  # 2 * 3 - 1
        ```

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, *Training GANs with Optimism*, ICLR 2018; Mokhtari,
        Ozdaglar & Pattathil, *A Unified Analysis of Extra-gradient and Optimistic Gradient Methods
        for Saddle Point Problems*, AISTATS 2020.
    """
    spec = HyperparamSpec("scale_by_optimistic_gradient", alpha=(alpha, Check.FINITE), beta=(beta, Check.FINITE))

    def rule(g, prev, *, alpha, beta, t):
        prev = jnp.where(t == 1, g, prev)
        return (alpha + beta) * g - beta * prev, (g,)

    slots = [Slot("previous_gradient")]
    return elementwise(rule, ScaleByOptimisticGradientState, spec, slots=slots)
