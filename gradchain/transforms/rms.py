"""Per-coordinate scaling by accumulated squared gradients: AdaGrad's sum, RMSProp's mean, Adadelta.

Accumulators of squared gradients use $|g|^2 = g \\bar g$, so complex parameters work, and are kept
in the real dtype (half the memory of a complex buffer).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, Updates
from gradchain._checks import Check, check
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot, elementwise
from gradchain._numerics import one_minus_pow
from gradchain.tree import abs_sq


def _denominator(second_moment: jax.Array, eps: jax.Array, eps_in_sqrt: bool) -> jax.Array:
    return jnp.sqrt(second_moment + eps) if eps_in_sqrt else jnp.sqrt(second_moment) + eps


class ScaleByRssState(NamedTuple):
    """State of `scale_by_rss`: step count, the running sum of squared gradients, hyperparameters."""

    count: jax.Array
    sum_of_squares: Updates
    hyperparams: Hyperparams


def scale_by_rss(
    initial_accumulator_value: float = 0.1, eps: float | jax.Array = 1e-7, *, eps_in_sqrt: bool = True
) -> GradientTransformation:
    """Scale by the root of the sum of all past squared gradients (AdaGrad).

    $$ s_t = s_{t-1} + |g_t|^2, \\qquad u_t = \\frac{g_t}{\\sqrt{s_t + \\epsilon}} \\;\\text{ or }\\;
       \\frac{g_t}{\\sqrt{s_t} + \\epsilon} $$

    The defaults are optax's ($s_0 = 0.1$, $\\epsilon = 10^{-7}$ inside the root). PyTorch's
    `Adagrad` is `initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False`. Where $s_t = 0$ and
    $\\epsilon = 0$ the update is 0 rather than NaN.

    Args:
        initial_accumulator_value: $s_0 \\ge 0$ (static: it only sets the initial state).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        eps_in_sqrt: add $\\epsilon$ inside the square root (optax) or outside (PyTorch).

    Returns:
        A `GradientTransformation` with `ScaleByRssState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
        u, _ = tx.update({"w": jnp.array([3.0])}, tx.init({"w": jnp.zeros(1)}))
        assert jnp.allclose(u["w"], 1.0)
        ```

    References:
        Duchi, Hazan & Singer, *Adaptive Subgradient Methods for Online Learning and Stochastic
        Optimization*, JMLR 2011.
    """
    check("scale_by_rss: initial_accumulator_value", initial_accumulator_value, Check.NONNEGATIVE)
    spec = HyperparamSpec("scale_by_rss", eps=(eps, Check.NONNEGATIVE))

    def rule(g, s, *, eps):
        s = s + abs_sq(g)
        denom = _denominator(s, eps, eps_in_sqrt)
        # 0 where nothing has accumulated yet (s = eps = 0), instead of 0/0; a NaN denominator must
        # still give NaN, so the test is `== 0`, not `> 0`.
        return jnp.where(denom == 0, 0, g / jnp.where(denom == 0, 1, denom)), (s,)

    slot = Slot("sum_of_squares", init=initial_accumulator_value, real=True)
    return elementwise(rule, ScaleByRssState, spec, slots=[slot])


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms`: step count, second moment `nu`, first moment `mu` (centered only)."""

    count: jax.Array
    nu: Updates
    mu: Updates
    hyperparams: Hyperparams


def scale_by_rms(
    decay: float | jax.Array = 0.9,
    eps: float | jax.Array = 1e-8,
    initial_scale: float = 0.0,
    *,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Scale by a moving root mean square of the gradients (RMSProp).

    $$ \\nu_t = \\rho\\, \\nu_{t-1} + (1-\\rho) |g_t|^2, \\qquad
       \\mu_t = \\rho\\, \\mu_{t-1} + (1-\\rho) g_t \\;\\text{(centered)} $$
    $$ v_t = \\nu_t - |\\mu_t|^2 \\;\\text{(centered) or}\\; \\nu_t, \\qquad
       u_t = \\frac{g_t}{\\sqrt{v_t + \\epsilon}} \\;\\text{ or }\\; \\frac{g_t}{\\sqrt{v_t} + \\epsilon} $$

    With `bias_correction`, $\\nu_t$ and $\\mu_t$ are divided by $1 - \\rho^t$ first. The defaults
    are optax's; PyTorch's `RMSprop` is `decay=alpha=0.99, eps_in_sqrt=False`. The centered variance
    is clamped at 0, so rounding never takes a square root of a negative number.

    Args:
        decay: $\\rho \\in [0, 1)$ (hyperparameter `decay`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        initial_scale: $\\nu_0$ (static: it only sets the initial state).
        eps_in_sqrt: add $\\epsilon$ inside the root (optax) or outside (PyTorch).
        centered: subtract the squared mean gradient (Graves 2013; PyTorch's `centered=True`).
        bias_correction: debias the moving averages.

    Returns:
        A `GradientTransformation` with `ScaleByRmsState` (`mu` is an empty tuple unless centered).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_rms(decay=0.0, eps=0.0)
        u, _ = tx.update({"w": jnp.array([-2.0])}, tx.init({"w": jnp.zeros(1)}))
        assert jnp.allclose(u["w"], -1.0)
        ```

    References:
        Tieleman & Hinton, *Lecture 6.5 - RMSProp*, COURSERA: Neural Networks for Machine Learning,
        2012; Graves, *Generating Sequences With Recurrent Neural Networks*, 2013 (centered).
    """
    check("scale_by_rms: initial_scale", initial_scale, Check.NONNEGATIVE)
    spec = HyperparamSpec("scale_by_rms", decay=(decay, Check.UNIT_INTERVAL), eps=(eps, Check.NONNEGATIVE))

    def rule(g, nu, mu=None, *, decay, eps, t):
        # `mu` is the centered variant's mean gradient; without `centered` the slot is off and absent.
        nu = decay * nu + (1 - decay) * abs_sq(g)
        correction = one_minus_pow(decay, t) if bias_correction else 1
        variance = nu / correction
        if mu is None:
            return g / _denominator(variance, eps, eps_in_sqrt), (nu,)
        mu = decay * mu + (1 - decay) * g
        variance = jnp.maximum(variance - abs_sq(mu / correction), 0)
        return g / _denominator(variance, eps, eps_in_sqrt), (nu, mu)

    slots = [Slot("nu", init=initial_scale, real=True), Slot("mu", enabled=centered)]
    return elementwise(rule, ScaleByRmsState, spec, slots=slots)


# ---------------------------------------------------------------------------------------------------
# Adadelta


class ScaleByAdaDeltaState(NamedTuple):
    """State of `scale_by_adadelta`: step count, $E[g^2]$ (`e_g`), $E[\\Delta x^2]$ (`e_x`), `rho`, `eps`."""

    count: jax.Array
    e_g: Updates
    e_x: Updates
    hyperparams: Hyperparams


def scale_by_adadelta(rho: float | jax.Array = 0.9, eps: float | jax.Array = 1e-6) -> GradientTransformation:
    """Scale by the ratio of the RMS of past updates to the RMS of past gradients (Adadelta).

    $$ E[g^2]_t = \\rho E[g^2]_{t-1} + (1-\\rho) |g_t|^2, \\qquad
       u_t = \\frac{\\sqrt{E[\\Delta x^2]_{t-1} + \\epsilon}}{\\sqrt{E[g^2]_t + \\epsilon}}\\, g_t, \\qquad
       E[\\Delta x^2]_t = \\rho E[\\Delta x^2]_{t-1} + (1-\\rho) |u_t|^2 $$

    from $E[g^2]_0 = E[\\Delta x^2]_0 = 0$ (Zeiler 2012, Algorithm 1). $u_t$ is the update *before*
    any learning rate, as in optax and PyTorch (both accumulate $E[\\Delta x^2]$ of the unscaled
    step). The ratio is formed as in both: $\\sqrt{a + \\epsilon} / \\sqrt{b + \\epsilon}$, then times
    $g$. Complex gradients use $|g|^2$ and keep real statistics (PyTorch treats the real and
    imaginary parts as separate parameters instead; optax squares the complex number).

    Args:
        rho: the decay $\\rho \\in [0, 1)$ (hyperparameter `rho`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`); also sets the size of the very first steps,
            $\\sqrt{\\epsilon / ((1-\\rho) g^2 + \\epsilon)}\\, g$.

    Returns:
        A `GradientTransformation` with `ScaleByAdaDeltaState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_adadelta(rho=0.9, eps=1e-6)
        u, state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
        expected = jnp.sqrt(1e-6) / jnp.sqrt(0.1 * 4.0 + 1e-6) * 2.0
        assert jnp.allclose(u["w"], expected) and jnp.allclose(state.e_g["w"], 0.4)
        ```

    References:
        Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, arXiv:1212.5701, 2012.
    """
    spec = HyperparamSpec("scale_by_adadelta", rho=(rho, Check.UNIT_INTERVAL), eps=(eps, Check.NONNEGATIVE))

    def rule(g, e_g, e_x, *, rho, eps):
        e_g = rho * e_g + (1 - rho) * tree_util.abs_sq(g)
        u = jnp.sqrt(e_x + eps) / jnp.sqrt(e_g + eps) * g
        e_x = rho * e_x + (1 - rho) * tree_util.abs_sq(u)
        return u, (e_g, e_x)

    slots = [Slot("e_g", real=True), Slot("e_x", real=True)]
    return elementwise(rule, ScaleByAdaDeltaState, spec, slots=slots)
