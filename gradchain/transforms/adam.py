"""Adam and its direct variants: Adam, AMSGrad, AdaMax, NAdam.

Accumulators of squared gradients use $|g|^2 = g \\bar g$, so complex parameters work, and are kept
in the real dtype (half the memory of a complex buffer). `adam_spec` and `first_moment_hat` are the
pieces that the rest of the family (`gradchain.transforms.adam_family`) shares.
"""

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
from gradchain.tree import abs_sq


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam` / `scale_by_adamax`: step count, moments `mu` and `nu`, hyperparameters."""

    count: jax.Array
    mu: Updates
    nu: Updates
    hyperparams: Hyperparams


def adam_spec(owner: str, b1, b2, eps, **extra: tuple) -> HyperparamSpec:
    return HyperparamSpec(
        owner, b1=(b1, Check.UNIT_INTERVAL), b2=(b2, Check.UNIT_INTERVAL), eps=(eps, Check.NONNEGATIVE), **extra
    )


def first_moment_hat(g, mu, b1, t, *, nesterov: bool, bias_correction: bool):
    """Adam's debiased first moment, or Nesterov's look-ahead form of it (Dozat 2016)."""
    if not bias_correction:
        return b1 * mu + (1 - b1) * g if nesterov else mu
    if nesterov:
        return b1 * mu / one_minus_pow(b1, t + 1) + (1 - b1) * g / one_minus_pow(b1, t)
    return mu / one_minus_pow(b1, t)


def scale_by_adam(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
    bias_correction: bool = True,
) -> GradientTransformation:
    """Scale by Adam's debiased first moment over the root of its debiased second moment.

    $$ \\mu_t = \\beta_1 \\mu_{t-1} + (1-\\beta_1) g_t, \\qquad
       \\nu_t = \\beta_2 \\nu_{t-1} + (1-\\beta_2) |g_t|^2 $$
    $$ \\hat\\mu_t = \\frac{\\mu_t}{1-\\beta_1^t}, \\qquad \\hat\\nu_t = \\frac{\\nu_t}{1-\\beta_2^t},
       \\qquad u_t = \\frac{\\hat\\mu_t}{\\sqrt{\\hat\\nu_t + \\epsilon_{root}} + \\epsilon} $$

    With `nesterov=True` (NAdam, Dozat 2016, in the form optax uses)
    $\\hat\\mu_t = \\beta_1 \\mu_t / (1-\\beta_1^{t+1}) + (1-\\beta_1) g_t / (1-\\beta_1^t)$.

    The moments can be stored in a different dtype from the params (`mu_dtype`, `nu_dtype`; e.g.
    float32 moments for bfloat16 params); the arithmetic always runs in at least float32, so
    $\\epsilon$ and $1-\\beta^t$ do not underflow in half precision. PyTorch's `Adam` computes the same
    quantity as $\\frac{\\mu_t}{1-\\beta_1^t} / (\\sqrt{\\nu_t}/\\sqrt{1-\\beta_2^t} + \\epsilon)$, equal up
    to rounding.

    Args:
        b1: $\\beta_1 \\in [0, 1)$ (hyperparameter `b1`).
        b2: $\\beta_2 \\in [0, 1)$ (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ outside the root (hyperparameter `eps`).
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root; make it positive to differentiate through
            the update when gradients can be 0 (hyperparameter `eps_root`).
        mu_dtype: storage dtype of $\\mu$; None keeps the param's dtype.
        nu_dtype: storage dtype of $\\nu$; None keeps the param's real dtype, except float16 params,
            whose $\\nu$ defaults to float32 (float16 cannot hold $g^2$ for $|g| < 10^{-2}$).
        nesterov: use the NAdam first moment.
        bias_correction: divide the moments by $1-\\beta^t$.

    Returns:
        A `GradientTransformation` with `ScaleByAdamState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_adam()
        u, state = tx.update({"w": jnp.array([0.5, -2.0])}, tx.init({"w": jnp.zeros(2)}))
        assert jnp.allclose(u["w"], jnp.array([1.0, -1.0]), atol=1e-6)  # first step: sign(g)
        ```

    References:
        Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015;
        Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
    """
    check_state_dtype("scale_by_adam", "mu_dtype", mu_dtype)
    check_state_dtype("scale_by_adam", "nu_dtype", nu_dtype)
    spec = adam_spec("scale_by_adam", b1, b2, eps, eps_root=(eps_root, Check.NONNEGATIVE))

    def rule(g, mu, nu, *, b1, b2, eps, eps_root, t):
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * abs_sq(g)
        mu_hat = first_moment_hat(g, mu, b1, t, nesterov=nesterov, bias_correction=bias_correction)
        nu_hat = nu / one_minus_pow(b2, t) if bias_correction else nu
        return mu_hat / (jnp.sqrt(nu_hat + eps_root) + eps), (mu, nu)

    slots = [Slot("mu", dtype=mu_dtype), Slot("nu", dtype=nu_dtype, real=True)]
    return elementwise(rule, ScaleByAdamState, spec, slots=slots)


class ScaleByAmsgradState(NamedTuple):
    """State of `scale_by_amsgrad`: step count, `mu`, `nu`, the running maximum `nu_max`, hyperparameters."""

    count: jax.Array
    mu: Updates
    nu: Updates
    nu_max: Updates
    hyperparams: Hyperparams


def scale_by_amsgrad(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    debias_before_max: bool = True,
) -> GradientTransformation:
    """Adam with the running maximum of the second moment in the denominator (AMSGrad).

    With $\\mu_t, \\nu_t$ as in `scale_by_adam`, and `debias_before_max=True` (optax's convention):

    $$ m_t = \\max(m_{t-1}, \\nu_t / (1-\\beta_2^t)), \\qquad
       u_t = \\frac{\\mu_t / (1-\\beta_1^t)}{\\sqrt{m_t + \\epsilon_{root}} + \\epsilon} $$

    With `debias_before_max=False` (PyTorch's `Adam(amsgrad=True)`), the maximum is taken over the
    raw $\\nu_t$ and the current correction is applied afterwards:
    $m_t = \\max(m_{t-1}, \\nu_t)$, $u_t = \\frac{\\mu_t / (1-\\beta_1^t)}
    {\\sqrt{m_t / (1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon}$. The two differ while the bias
    correction still changes (early steps).

    Args:
        b1: as in `scale_by_adam` (hyperparameters of the same names).
        b2: as in `scale_by_adam` (hyperparameters of the same names).
        eps: as in `scale_by_adam` (hyperparameters of the same names).
        eps_root: as in `scale_by_adam` (hyperparameters of the same names).
        mu_dtype: storage dtype of $\\mu$.
        nu_dtype: storage dtype of $\\nu$ and of the maximum.
        debias_before_max: which convention to follow (see above).

    Returns:
        A `GradientTransformation` with `ScaleByAmsgradState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_amsgrad()
        state = tx.init({"w": jnp.zeros(1)})
        _, state = tx.update({"w": jnp.array([10.0])}, state)
        _, state = tx.update({"w": jnp.array([0.0])}, state)
        assert state.nu_max["w"] > state.nu["w"] / (1 - 0.999**2)  # the maximum remembers step 1
        ```

    References:
        Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018.
    """
    check_state_dtype("scale_by_amsgrad", "mu_dtype", mu_dtype)
    check_state_dtype("scale_by_amsgrad", "nu_dtype", nu_dtype)
    spec = adam_spec("scale_by_amsgrad", b1, b2, eps, eps_root=(eps_root, Check.NONNEGATIVE))

    def rule(g, mu, nu, nu_max, *, b1, b2, eps, eps_root, t):
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * abs_sq(g)
        correction = one_minus_pow(b2, t)
        if debias_before_max:
            nu_max = jnp.maximum(nu_max, nu / correction)
            nu_hat = nu_max
        else:
            nu_max = jnp.maximum(nu_max, nu)
            nu_hat = nu_max / correction
        mu_hat = mu / one_minus_pow(b1, t)
        return mu_hat / (jnp.sqrt(nu_hat + eps_root) + eps), (mu, nu, nu_max)

    slots = [
        Slot("mu", dtype=mu_dtype),
        Slot("nu", dtype=nu_dtype, real=True),
        Slot("nu_max", dtype=nu_dtype, real=True),
    ]
    return elementwise(rule, ScaleByAmsgradState, spec, slots=slots)


def scale_by_adamax(
    b1: float | jax.Array = 0.9, b2: float | jax.Array = 0.999, eps: float | jax.Array = 1e-8
) -> GradientTransformation:
    """Scale by Adam's debiased first moment over an exponentially weighted infinity norm (AdaMax).

    $$ \\mu_t = \\beta_1 \\mu_{t-1} + (1-\\beta_1) g_t, \\qquad
       \\nu_t = \\max(\\beta_2 \\nu_{t-1},\\ |g_t| + \\epsilon), \\qquad
       u_t = \\frac{\\mu_t}{(1-\\beta_1^t)\\, \\nu_t} $$

    $\\epsilon$ sits inside the maximum, as in both optax and PyTorch, so $\\nu_t > 0$ when
    $\\epsilon > 0$ (with $\\epsilon = 0$ a zero gradient on a zero $\\nu$ gives 0/0).

    Args:
        b1: $\\beta_1 \\in [0, 1)$ (hyperparameter `b1`).
        b2: $\\beta_2 \\in [0, 1)$ (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).

    Returns:
        A `GradientTransformation` with `ScaleByAdamState` (`nu` holds the infinity norm).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_adamax(eps=0.0)
        u, _ = tx.update({"w": jnp.array([-3.0])}, tx.init({"w": jnp.zeros(1)}))
        assert jnp.allclose(u["w"], -1.0)
        ```

    References:
        Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015, section 7.1.
    """
    spec = adam_spec("scale_by_adamax", b1, b2, eps)

    def rule(g, mu, nu, *, b1, b2, eps, t):
        mu = b1 * mu + (1 - b1) * g
        nu = jnp.maximum(b2 * nu, jnp.abs(g) + eps)
        return mu / one_minus_pow(b1, t) / nu, (mu, nu)

    slots = [Slot("mu"), Slot("nu", real=True)]
    return elementwise(rule, ScaleByAdamState, spec, slots=slots)


class ScaleByNadamState(NamedTuple):
    """State of `scale_by_nadam`: step count, `mu`, `nu`, the running product of momentum coefficients."""

    count: jax.Array
    mu: Updates
    nu: Updates
    mu_product: jax.Array
    hyperparams: Hyperparams


def _momentum_coefficient(b1: jax.Array, momentum_decay: jax.Array, t: jax.Array) -> jax.Array:
    # Dozat's warming momentum schedule: starts near b1 / 2 and rises towards b1.
    return b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))


def scale_by_nadam(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    momentum_decay: float | jax.Array = 4e-3,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """NAdam with Dozat's momentum schedule, as in the paper and PyTorch's `NAdam`.

    With $\\psi$ the momentum decay, $\\mu_t = \\beta_1 (1 - \\tfrac12\\, 0.96^{t\\psi})$ and
    $\\Pi_t = \\prod_{i \\le t} \\mu_i$:

    $$ m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad \\nu_t = \\beta_2 \\nu_{t-1} + (1-\\beta_2) |g_t|^2,
       \\qquad d_t = \\sqrt{\\nu_t / (1-\\beta_2^t)} + \\epsilon $$
    $$ u_t = \\frac{1-\\mu_t}{1-\\Pi_t} \\frac{g_t}{d_t} + \\frac{\\mu_{t+1}}{1-\\Pi_t \\mu_{t+1}} \\frac{m_t}{d_t} $$

    This differs from `scale_by_adam(nesterov=True)` (optax's NAdam), which uses a constant
    $\\mu_t = \\beta_1$. $\\Pi_t$ is a scalar in the state (`mu_product`), updated once per step.

    Args:
        b1: $\\beta_1 \\in [0, 1)$ (hyperparameter `b1`).
        b2: $\\beta_2 \\in [0, 1)$ (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        momentum_decay: $\\psi \\ge 0$ (hyperparameter `momentum_decay`; PyTorch's default 0.004).
        mu_dtype: storage dtype of $m$.
        nu_dtype: storage dtype of $\\nu$.

    Returns:
        A `GradientTransformation` with `ScaleByNadamState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_nadam()
        state = tx.init({"w": jnp.zeros(2)})
        u, state = tx.update({"w": jnp.array([1.0, -1.0])}, state)
        assert jnp.isclose(state.mu_product, 0.9 * (1 - 0.5 * 0.96**0.004))
        ```

    References:
        Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
    """
    check_state_dtype("scale_by_nadam", "mu_dtype", mu_dtype)
    check_state_dtype("scale_by_nadam", "nu_dtype", nu_dtype)
    spec = adam_spec("scale_by_nadam", b1, b2, eps, momentum_decay=(momentum_decay, Check.NONNEGATIVE))

    def scalar_rule(*, b1, momentum_decay, t, mu_product):
        return {"mu_product": mu_product * _momentum_coefficient(b1, momentum_decay, t)}

    def rule(g, mu, nu, *, b1, b2, eps, momentum_decay, t, mu_product):
        coefficient = _momentum_coefficient(b1, momentum_decay, t)
        next_coefficient = _momentum_coefficient(b1, momentum_decay, t + 1)
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * abs_sq(g)
        denom = jnp.sqrt(nu / one_minus_pow(b2, t)) + eps
        u = (1 - coefficient) / (1 - mu_product) * g / denom + (
            next_coefficient / (1 - mu_product * next_coefficient)
        ) * mu / denom
        return u, (mu, nu)

    slots = [Slot("mu", dtype=mu_dtype), Slot("nu", dtype=nu_dtype, real=True)]
    return elementwise(
        rule,
        ScaleByNadamState,
        spec,
        slots=slots,
        scalars={"mu_product": 1.0},
        scalar_rule=scalar_rule,
    )
