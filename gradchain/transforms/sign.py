"""Sign-based scaling: signSGD's `scale_by_sign` and Lion's interpolated-momentum sign.

Every coordinate of the update is -1, 0 or +1, so the step size is set by the learning rate alone.
Complex parameters are rejected: the sign of a complex number has two reasonable meanings (the
phase $z/|z|$, or the signs of the real and imaginary parts taken separately), and neither paper
picks one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradchain._base import GradientTransformation, Updates
from gradchain._checks import Check, check_state_dtype
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot, elementwise


class ScaleBySignState(NamedTuple):
    """State of `scale_by_sign`: the step count (and an empty set of hyperparameters)."""

    count: jax.Array
    hyperparams: Hyperparams


def scale_by_sign(mask: Any = None) -> GradientTransformation:
    """Replace every coordinate of the updates by its sign (signSGD).

    $$ u_i = \\operatorname{sign}(g_i) \\in \\{-1, 0, +1\\} $$

    A zero coordinate stays 0; a NaN stays NaN.

    Args:
        mask: which leaves to transform: a tree of bools like the updates (or a prefix of it), or a
            function `params -> tree`. False leaves pass through unchanged.

    Returns:
        A `GradientTransformation` with `ScaleBySignState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_sign()
        u, _ = tx.update({"w": jnp.array([-3.0, 0.0, 0.2])}, tx.init({"w": jnp.zeros(3)}))
        assert (u["w"] == jnp.array([-1.0, 0.0, 1.0])).all()
        ```

    References:
        Bernstein, Wang, Azizzadenesheli & Anandkumar, *signSGD: Compressed Optimisation for
        Non-Convex Problems*, ICML 2018.
    """
    spec = HyperparamSpec("scale_by_sign")

    def rule(g):
        return jnp.sign(g), ()

    return elementwise(rule, ScaleBySignState, spec, complex_ok=False, mask=mask)


class ScaleByLionState(NamedTuple):
    """State of `scale_by_lion`: step count, the momentum `mu`, hyperparameters `b1`, `b2`."""

    count: jax.Array
    mu: Updates
    hyperparams: Hyperparams


def scale_by_lion(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.99,
    mu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Scale by the sign of an interpolation between the momentum and the gradient (Lion).

    $$ c_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad u_t = \\operatorname{sign}(c_t), \\qquad
       m_t = \\beta_2 m_{t-1} + (1-\\beta_2) g_t, \\qquad m_0 = 0 $$

    Two betas: $\\beta_1$ weighs the momentum in the step taken now, $\\beta_2$ is the decay of the
    momentum kept for later (Chen et al. 2023, Algorithm 2). Both may be anywhere in $[0, 1]$: no
    division by $1-\\beta$ is involved ($\\beta_1 = 0$ is signSGD, $\\beta_2 = 1$ keeps $m = 0$).
    The arithmetic runs in at least float32; `mu_dtype` sets the storage dtype of the momentum
    (e.g. float32 for bfloat16 params). Complex params raise TypeError.

    Args:
        b1: $\\beta_1 \\in [0, 1]$ (hyperparameter `b1`).
        b2: $\\beta_2 \\in [0, 1]$ (hyperparameter `b2`).
        mu_dtype: storage dtype of $m$; None keeps the param's dtype.

    Returns:
        A `GradientTransformation` with `ScaleByLionState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_lion(b1=0.9, b2=0.99)
        state = tx.init({"w": jnp.zeros(2)})
        u, state = tx.update({"w": jnp.array([0.5, -2.0])}, state)
        assert (u["w"] == jnp.array([1.0, -1.0])).all()  # m_0 = 0: the sign of the gradient
        assert jnp.allclose(state.mu["w"], jnp.array([0.005, -0.02]))
        ```

    References:
        Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh, Lu & Le, *Symbolic Discovery of
        Optimization Algorithms*, NeurIPS 2023.
    """
    check_state_dtype("scale_by_lion", "mu_dtype", mu_dtype)
    spec = HyperparamSpec("scale_by_lion", b1=(b1, Check.CLOSED_UNIT_INTERVAL), b2=(b2, Check.CLOSED_UNIT_INTERVAL))

    def rule(g, mu, *, b1, b2):
        u = jnp.sign(b1 * mu + (1 - b1) * g)
        mu = b2 * mu + (1 - b2) * g
        return u, (mu,)

    slots = [Slot("mu", dtype=mu_dtype)]
    return elementwise(rule, ScaleByLionState, spec, slots=slots, complex_ok=False)
