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
from gradchain._checks import Check, check, check_state_dtype, concrete_float
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


# ---------------------------------------------------------------------------------------------------
# Rprop


class ScaleByRpropState(NamedTuple):
    """State of `scale_by_rprop`: step count, per-coordinate `step_sizes`, `prev_sign` (int8), etas and bounds."""

    count: jax.Array
    step_sizes: Updates
    prev_sign: Updates
    hyperparams: Hyperparams


def scale_by_rprop(
    learning_rate: float,
    eta_minus: float | jax.Array = 0.5,
    eta_plus: float | jax.Array = 1.2,
    min_step_size: float | jax.Array = 1e-6,
    max_step_size: float | jax.Array = 50.0,
) -> GradientTransformation:
    """Resilient backpropagation: per-coordinate step sizes adapted to sign changes (iRprop-).

    With $s_t = \\operatorname{sign}(g_t)\\, \\operatorname{sign}(\\tilde g_{t-1})$, $\\tilde g_0 = 0$:

    $$ \\Delta_t = \\operatorname{clip}\\Big(\\Delta_{t-1} \\cdot
       \\begin{cases} \\eta^+ & s_t > 0 \\\\ \\eta^- & s_t < 0 \\\\ 1 & s_t = 0 \\end{cases},\\;
       \\Delta_{\\min}, \\Delta_{\\max}\\Big), \\qquad
       \\tilde g_t = \\begin{cases} 0 & s_t < 0 \\\\ g_t & \\text{else} \\end{cases}, \\qquad
       u_t = \\Delta_t \\operatorname{sign}(\\tilde g_t) $$

    from $\\Delta_0$ = `learning_rate`. After a sign change the coordinate does not move and its
    gradient is forgotten, so the next step only grows or keeps its size (Igel & Hüsken's iRprop-,
    the variant of PyTorch and optax). The update points *up* the gradient, as optax's: follow it
    with `scale(-1.0)` (see `gradchain.optimizers.sign.rprop`).

    The state keeps only the sign of $\\tilde g$ (int8, 1 byte per parameter; PyTorch keeps the
    gradient and optax the last update, which it returns one step late: its first update is 0) and
    compares signs, not the product $g_t \\tilde g_{t-1}$, which underflows to 0 in float32 below
    $|g| \\approx 10^{-23}$. The step size is clipped at every step, the first included, as in
    PyTorch; optax leaves it unclipped while $s_t = 0$, so the two differ only when `learning_rate`
    lies outside $[\\Delta_{\\min}, \\Delta_{\\max}]$. Complex params raise TypeError (the sign of a
    complex number is ambiguous).

    Args:
        learning_rate: the initial step size $\\Delta_0 > 0$ (a number, static: it only fills the
            initial `step_sizes`).
        eta_minus: $\\eta^- \\in [0, 1)$, the shrink factor after a sign change (hyperparameter).
        eta_plus: $\\eta^+ > 0$ (normally $> 1$), the growth factor while the sign holds (hyperparameter).
        min_step_size: $\\Delta_{\\min} \\ge 0$ (hyperparameter).
        max_step_size: $\\Delta_{\\max} \\ge \\Delta_{\\min}$ (hyperparameter).

    Returns:
        A `GradientTransformation` with `ScaleByRpropState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_rprop(learning_rate=0.1)
        state = tx.init({"w": jnp.zeros(2)})
        u, state = tx.update({"w": jnp.array([1.0, -1.0])}, state)   # first step: 0.1 * sign
        u, state = tx.update({"w": jnp.array([3.0, 2.0])}, state)    # same sign / flipped
        assert jnp.allclose(u["w"], jnp.array([0.12, 0.0]))
        assert jnp.allclose(state.step_sizes["w"], jnp.array([0.12, 0.05]))
        ```

    References:
        Riedmiller & Braun, *A direct adaptive method for faster backpropagation learning: the
        RPROP algorithm*, ICNN 1993; Igel & Hüsken, *Improving the Rprop learning algorithm*, 2000.
    """
    owner = "scale_by_rprop"
    if callable(learning_rate):
        raise TypeError(f"{owner}: learning_rate is the initial step size, a number; schedules are not supported")
    check(f"{owner}: learning_rate", learning_rate, Check.POSITIVE)
    initial = concrete_float(learning_rate)
    if initial is None:
        raise TypeError(f"{owner}: learning_rate must be a concrete number, got {learning_rate!r}")
    spec = HyperparamSpec(
        owner,
        eta_minus=(eta_minus, Check.UNIT_INTERVAL),
        eta_plus=(eta_plus, Check.POSITIVE),
        min_step_size=(min_step_size, Check.NONNEGATIVE),
        max_step_size=(max_step_size, Check.NONNEGATIVE),
    )
    low, high = concrete_float(min_step_size), concrete_float(max_step_size)
    if low is not None and high is not None and low > high:
        raise ValueError(f"{owner}: min_step_size ({low}) must be <= max_step_size ({high})")

    def rule(g, step, prev, *, eta_minus, eta_plus, min_step_size, max_step_size):
        direction = jnp.sign(g)
        s = direction * prev
        factor = jnp.where(s > 0, eta_plus, jnp.where(s < 0, eta_minus, 1.0))
        step = jnp.clip(step * factor, min_step_size, max_step_size)
        direction = jnp.where(s < 0, 0.0, direction)
        return step * direction, (step, direction)

    slots = [Slot("step_sizes", init=initial), Slot("prev_sign", dtype=jnp.int8)]
    return elementwise(rule, ScaleByRpropState, spec, slots=slots, complex_ok=False)
