"""Adam's descendants: AdaBelief, Yogi, RAdam and Adan (element-wise), NovoGrad (layer-wise).

The first four keep per-coordinate moments like `scale_by_adam` and are written as per-array rules
lifted by `gradchain._lift.elementwise` (dtype policy, packing, masks and errors come from there).
NovoGrad's second moment is one number per leaf (the squared norm of the leaf's gradient), so it is
a plain per-leaf transformation, like Adafactor's factored statistics.

Squared gradients are $|g|^2 = g \\bar g$ throughout, so complex parameters work, with real
second moments.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, Updates
from gradchain._checks import Check, check, check_leaf_dtypes, check_state_dtype, concrete_float
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot, elementwise
from gradchain._numerics import compute_dtype, one_minus_pow, real_dtype, safe_increment
from gradchain.transforms.adam import ScaleByAdamState, adam_spec, first_moment_hat
from gradchain.tree import abs_sq

# ---------------------------------------------------------------------------------------------------
# AdaBelief


class ScaleByBeliefState(NamedTuple):
    """State of `scale_by_belief`: step count, first moment `mu`, the belief `nu` (variance of
    $g - \\mu$), hyperparameters."""

    count: jax.Array
    mu: Updates
    nu: Updates
    hyperparams: Hyperparams


def scale_by_belief(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-16,
    eps_root: float | jax.Array = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Scale by Adam's first moment over the root of the variance of the gradient around it (AdaBelief).

    $$ \\mu_t = \\beta_1 \\mu_{t-1} + (1-\\beta_1) g_t, \\qquad
       s_t = \\beta_2 s_{t-1} + (1-\\beta_2) |g_t - \\mu_t|^2 + \\epsilon_{root} $$
    $$ u_t = \\frac{\\mu_t / (1-\\beta_1^t)}{\\sqrt{s_t / (1-\\beta_2^t)} + \\epsilon} $$

    The step is large where the gradient agrees with its prediction $\\mu_t$ (small $s_t$) and
    small where it does not. $\\epsilon_{root}$ is added to the stored $s_t$ at every step, as in
    the paper's Algorithm 2 and optax. With `nesterov=True` the first moment is Dozat's look-ahead
    form of `scale_by_adam(nesterov=True)`. Defaults, formulas and state fields are
    `optax.scale_by_belief`'s; the arithmetic runs in at least float32.

    Args:
        b1: $\\beta_1 \\in [0, 1)$ (hyperparameter `b1`).
        b2: $\\beta_2 \\in [0, 1)$ (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ outside the root (hyperparameter `eps`).
        eps_root: $\\epsilon_{root} \\ge 0$ added to $s_t$ (hyperparameter `eps_root`).
        nesterov: use the Nesterov (NAdam) first moment (static).
        mu_dtype: storage dtype of $\\mu$; None keeps the param's dtype.
        nu_dtype: storage dtype of $s$; None keeps the param's real dtype (float32 for float16).

    Returns:
        A `GradientTransformation` with `ScaleByBeliefState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_belief(eps=0.0, eps_root=0.0)
        state = tx.init({"w": jnp.zeros(1)})
        u, state = tx.update({"w": jnp.array([2.0])}, state)
        # t = 1: mu = 0.2, s = 0.001 * 1.8**2, so u = (0.2 / 0.1) / (1.8 * sqrt(0.001 / 0.001)) = 2 / 1.8
        assert jnp.allclose(u["w"], 2.0 / 1.8)
        ```

    References:
        Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan, *AdaBelief Optimizer: Adapting
        Stepsizes by the Belief in Observed Gradients*, NeurIPS 2020.
    """
    owner = "scale_by_belief"
    check_state_dtype(owner, "mu_dtype", mu_dtype)
    check_state_dtype(owner, "nu_dtype", nu_dtype)
    spec = adam_spec(owner, b1, b2, eps, eps_root=(eps_root, Check.NONNEGATIVE))

    def rule(g, mu, nu, *, b1, b2, eps, eps_root, t):
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * abs_sq(g - mu) + eps_root
        mu_hat = first_moment_hat(g, mu, b1, t, nesterov=nesterov, bias_correction=True)
        nu_hat = nu / one_minus_pow(b2, t)
        return mu_hat / (jnp.sqrt(nu_hat) + eps), (mu, nu)

    slots = [Slot("mu", dtype=mu_dtype), Slot("nu", dtype=nu_dtype, real=True)]
    return elementwise(rule, ScaleByBeliefState, spec, slots=slots)


# ---------------------------------------------------------------------------------------------------
# Yogi


def scale_by_yogi(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-3,
    eps_root: float | jax.Array = 0.0,
    initial_accumulator_value: float = 1e-6,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Adam with an additive second-moment update that cannot grow the effective rate too fast (Yogi).

    $$ \\mu_t = \\beta_1 \\mu_{t-1} + (1-\\beta_1) g_t, \\qquad
       \\nu_t = \\nu_{t-1} - (1-\\beta_2)\\, \\operatorname{sign}\\big(\\nu_{t-1} - |g_t|^2\\big)\\, |g_t|^2 $$
    $$ u_t = \\frac{\\mu_t / (1-\\beta_1^t)}{\\sqrt{\\nu_t / (1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon} $$

    Adam moves $\\nu$ by $(1-\\beta_2)(|g|^2 - \\nu)$, i.e. by a fraction of $\\nu$ itself; Yogi moves
    it by $(1-\\beta_2)|g|^2$ in the direction of $|g|^2$, so a sudden drop of the gradients does
    not shrink $\\nu$ (and blow up the step) as fast. $\\nu_t > 0$ for all $t$ when $\\nu_0 > 0$.

    As `optax.scale_by_yogi` (same defaults and formulas): both moments start at
    `initial_accumulator_value` ($\\mu_0 = \\nu_0 = 10^{-6}$; the paper's Algorithm 2 starts $\\mu$
    at 0 and recommends a small positive $\\nu_0$), and both are bias-corrected (the paper's
    Algorithm 2 does not correct them). The state is a `ScaleByAdamState`, as in optax.

    Args:
        b1: $\\beta_1 \\in [0, 1)$ (hyperparameter `b1`).
        b2: $\\beta_2 \\in [0, 1)$ (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ outside the root (hyperparameter `eps`; the paper's default $10^{-3}$).
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root (hyperparameter `eps_root`).
        initial_accumulator_value: $\\mu_0 = \\nu_0 \\ge 0$ (static: it only sets the initial state).
        mu_dtype: storage dtype of $\\mu$; None keeps the param's dtype.
        nu_dtype: storage dtype of $\\nu$; None keeps the param's real dtype (float32 for float16).

    Returns:
        A `GradientTransformation` with `ScaleByAdamState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_yogi(b2=0.5, initial_accumulator_value=0.0)
        state = tx.init({"w": jnp.zeros(1)})
        _, state = tx.update({"w": jnp.array([2.0])}, state)
        assert jnp.allclose(state.nu["w"], 2.0)  # 0 - 0.5 * sign(0 - 4) * 4
        _, state = tx.update({"w": jnp.array([0.0])}, state)
        assert jnp.allclose(state.nu["w"], 2.0)  # a zero gradient leaves nu alone (Adam would halve it)
        ```

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar, *Adaptive Methods for Nonconvex Optimization*, NeurIPS 2018.
    """
    owner = "scale_by_yogi"
    check(f"{owner}: initial_accumulator_value", initial_accumulator_value, Check.NONNEGATIVE)
    check_state_dtype(owner, "mu_dtype", mu_dtype)
    check_state_dtype(owner, "nu_dtype", nu_dtype)
    spec = adam_spec(owner, b1, b2, eps, eps_root=(eps_root, Check.NONNEGATIVE))

    def rule(g, mu, nu, *, b1, b2, eps, eps_root, t):
        mu = b1 * mu + (1 - b1) * g
        g2 = abs_sq(g)
        nu = nu - (1 - b2) * jnp.sign(nu - g2) * g2
        mu_hat = mu / one_minus_pow(b1, t)
        nu_hat = nu / one_minus_pow(b2, t)
        return mu_hat / (jnp.sqrt(nu_hat + eps_root) + eps), (mu, nu)

    value = float(initial_accumulator_value)
    slots = [Slot("mu", init=value, dtype=mu_dtype), Slot("nu", init=value, dtype=nu_dtype, real=True)]
    return elementwise(rule, ScaleByAdamState, spec, slots=slots)


# ---------------------------------------------------------------------------------------------------
# RAdam

# C(x) = (x / (e^x - 1) - 1 + x / 2) / x^2 = sum_k B_2k x^(2k-2) / (2k)!, the Bernoulli numbers B_2k:
# ten terms are exact to float64 rounding for |x| <= 1 (the terms shrink by (x / 2 pi)^2 each).
_C_SERIES = (
    1 / 12,
    -1 / 720,
    1 / 30240,
    -1 / 1209600,
    1 / 47900160,
    -691 / 1307674368000,
    1 / 74724249600,
    -3617 / 10670622842880000,
    43867 / 5109094217170944000,
    -174611 / 802857662698291200000,
)


def _bernoulli_c(x: jax.Array) -> jax.Array:
    """$C(x) = (x/(e^x-1) - 1 + x/2) / x^2$ for $0 \\le x \\le 1$, by its series (float64-exact)."""
    x2 = x * x
    acc = jnp.zeros_like(x) + _C_SERIES[-1]
    for c in reversed(_C_SERIES[:-1]):
        acc = acc * x2 + c
    return acc


def _sma_length(b2: jax.Array, t: jax.Array) -> jax.Array:
    """RAdam's length of the approximated simple moving average, $\\rho_t$, accurate in float32.

    $$ \\rho_\\infty = \\frac{2}{1-\\beta_2} - 1, \\qquad
       \\rho_t = \\rho_\\infty - \\frac{2 t \\beta_2^t}{1-\\beta_2^t} $$

    The direct form subtracts two numbers near $\\rho_\\infty$ (about 2000 for $\\beta_2 = 0.999$) to
    get $\\rho_t \\approx t$: in float32 that leaves an error of ~1e-4 at $t \\approx 5$, which moves
    the rectifier by ~1e-4 relative right where rectification starts (optax computes it this way;
    PyTorch in float64 on the host). With $L = -\\log\\beta_2$, $x = tL$ and
    $C(x) = (x/(e^x-1) - 1 + x/2)/x^2$, the exact identity
    $\\rho_t = t + 2L\\,\\big(C(L) - t^2 C(x)\\big)$ has no cancellation for $x < 1$ ($C$ from its
    series); for $x \\ge 1$ the direct form is accurate ($\\rho_t \\ge 0.4\\, \\rho_\\infty$).

    Args:
        b2: $\\beta_2 \\in [0, 1)$, a real scalar.
        t: the 1-based step, a real scalar of the same dtype.

    Returns:
        $\\rho_t$ in the dtype of `b2`.
    """
    log_b2 = jnp.log1p(b2 - 1)  # 1 - b2 is exact in floating point; log1p keeps its digits
    L = -log_b2
    x = t * L
    rho_inf = 2 / (1 - b2) - 1
    # expm1(x) overflows to inf for large x (and b2 = 0 gives L = inf): 2t / inf = 0, rho_t = rho_inf.
    direct = rho_inf - 2 * t / jnp.expm1(x)
    # Clamped so that the branch not taken stays finite (no NaN in gradients through jnp.where).
    Ls, xs = jnp.minimum(L, 1), jnp.minimum(x, 1)
    series = t + 2 * Ls * (_bernoulli_c(Ls) - t * t * _bernoulli_c(xs))
    return jnp.where(x < 1, series, direct)


def _rectifier(rho: jax.Array, rho_inf: jax.Array) -> jax.Array:
    """RAdam's variance rectification term $r_t$ (0 where $\\rho_t \\le 4$, where it is undefined).

    $$ r_t = \\sqrt{\\frac{(\\rho_t - 4)(\\rho_t - 2)\\,\\rho_\\infty}
                       {(\\rho_\\infty - 4)(\\rho_\\infty - 2)\\,\\rho_t}} $$
    """
    r2 = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
    return jnp.sqrt(jnp.maximum(r2, 0))


def scale_by_radam(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    threshold: float | jax.Array = 5.0,
    *,
    nesterov: bool = False,
    eps_before_bias_correction: bool = False,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Rectified Adam: Adam's step scaled by $r_t$ once the variance of $1/\\sqrt{\\hat\\nu}$ is tractable.

    With $\\mu_t, \\nu_t$ as in `scale_by_adam`, $\\hat\\mu_t = \\mu_t / (1-\\beta_1^t)$ and $\\rho_t$,
    $r_t$ as in `_sma_length` and `_rectifier` (in this file):

    $$ u_t = \\begin{cases} r_t\\, \\dfrac{\\hat\\mu_t}{\\sqrt{\\nu_t / (1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon}
       & \\rho_t \\ge \\rho_{thr} \\\\[1ex] \\hat\\mu_t & \\text{otherwise (momentum SGD)} \\end{cases} $$

    Defaults, formulas and the state (`ScaleByAdamState`) are `optax.scale_by_radam`'s (threshold
    5, `>=`). `eps_before_bias_correction=True` puts $\\epsilon$ where PyTorch's `RAdam` does,
    $r_t \\hat\\mu_t \\sqrt{1-\\beta_2^t} / (\\sqrt{\\nu_t + \\epsilon_{root}} + \\epsilon)$; the two differ
    only where $\\sqrt{\\hat\\nu_t}$ is not much larger than $\\epsilon$. PyTorch's test is
    $\\rho_t > 5$ (never exactly 5 in practice). Differences from optax, both deliberate:
    $\\rho_t$ is computed without cancellation (optax's float32 $\\rho_t$ is off by
    ~1e-4 near $t = 6$ with $\\beta_2 = 0.999$), and $1-\\beta^t$ with `one_minus_pow`.

    Args:
        b1: $\\beta_1 \\in [0, 1)$ (hyperparameter `b1`).
        b2: $\\beta_2 \\in [0, 1)$ (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root (hyperparameter `eps_root`).
        threshold: $\\rho_{thr} \\ge 4$ (hyperparameter `threshold`; below 4 $r_t$ is undefined).
        nesterov: use the Nesterov (NAdam) first moment (static).
        eps_before_bias_correction: PyTorch's placement of $\\epsilon$ (static).
        mu_dtype: storage dtype of $\\mu$; None keeps the param's dtype.
        nu_dtype: storage dtype of $\\nu$; None keeps the param's real dtype (float32 for float16).

    Returns:
        A `GradientTransformation` with `ScaleByAdamState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_radam(b1=0.0)
        state = tx.init({"w": jnp.zeros(1)})
        u, state = tx.update({"w": jnp.array([3.0])}, state)
        assert jnp.allclose(u["w"], 3.0)  # rho_1 = 1 < 5: not rectified, the step is mu_hat = g
        ```

    References:
        Liu, Jiang, He, Chen, Liu, Gao & Han, *On the Variance of the Adaptive Learning Rate and
        Beyond*, ICLR 2020.
    """
    owner = "scale_by_radam"
    check_state_dtype(owner, "mu_dtype", mu_dtype)
    check_state_dtype(owner, "nu_dtype", nu_dtype)
    value = concrete_float(threshold) if not callable(threshold) else None
    if value is not None and not value >= 4:
        raise ValueError(f"{owner}: threshold must be >= 4 (the rectifier is undefined below), got {threshold!r}")
    spec = HyperparamSpec(
        owner,
        b1=(b1, Check.UNIT_INTERVAL),
        b2=(b2, Check.UNIT_INTERVAL),
        eps=(eps, Check.NONNEGATIVE),
        eps_root=(eps_root, Check.NONNEGATIVE),
        threshold=(threshold, Check.NONNEGATIVE),
    )

    def rule(g, mu, nu, *, b1, b2, eps, eps_root, threshold, t):
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * abs_sq(g)
        mu_hat = first_moment_hat(g, mu, b1, t, nesterov=nesterov, bias_correction=True)
        correction = one_minus_pow(b2, t)
        if eps_before_bias_correction:
            denom = (jnp.sqrt(nu + eps_root) + eps) / jnp.sqrt(correction)
        else:
            denom = jnp.sqrt(nu / correction + eps_root) + eps
        rho = _sma_length(b2, t)
        r = _rectifier(rho, 2 / (1 - b2) - 1)
        return jnp.where(rho >= threshold, r * mu_hat / denom, mu_hat), (mu, nu)

    slots = [Slot("mu", dtype=mu_dtype), Slot("nu", dtype=nu_dtype, real=True)]
    return elementwise(rule, ScaleByAdamState, spec, slots=slots)


# ---------------------------------------------------------------------------------------------------
# Adan


class ScaleByAdanState(NamedTuple):
    """State of `scale_by_adan`: step count, the moments `m`, `v`, `n`, the last gradient `prev_grad`."""

    count: jax.Array
    m: Updates
    v: Updates
    n: Updates
    prev_grad: Updates
    hyperparams: Hyperparams


def scale_by_adan(
    b1: float | jax.Array = 0.98,
    b2: float | jax.Array = 0.92,
    b3: float | jax.Array = 0.99,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Adaptive Nesterov momentum (Adan): moments of the gradient, of its difference, and of their sum.

    With $\\Delta_t = g_t - g_{t-1}$ ($\\Delta_1 = 0$):

    $$ m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad v_t = \\beta_2 v_{t-1} + (1-\\beta_2) \\Delta_t, $$
    $$ n_t = \\beta_3 n_{t-1} + (1-\\beta_3) \\big|g_t + (1-\\beta_2) \\Delta_t\\big|^2, \\qquad
       u_t = \\frac{\\hat m_t + (1-\\beta_2)\\, \\hat v_t}{\\sqrt{\\hat n_t + \\epsilon_{root}} + \\epsilon} $$

    where hats divide by $1 - \\beta_i^t$. The betas are decay rates, as in optax: the paper's
    $\\beta_i$ are $1 -$ these ($0.02, 0.08, 0.01$). Defaults and formulas are `optax.scale_by_adan`'s,
    whose bias correction follows the authors' implementation (the paper's Algorithm 1 starts the
    moments at $m_0 = g_0$ instead). The state keeps the last gradient (`prev_grad`, in the
    param's dtype): four params-sized buffers.

    Args:
        b1: decay of $m$, in $[0, 1)$ (hyperparameter `b1`).
        b2: decay of $v$, in $[0, 1)$ (hyperparameter `b2`).
        b3: decay of $n$, in $[0, 1)$ (hyperparameter `b3`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root (hyperparameter `eps_root`).
        mu_dtype: storage dtype of $m$ and $v$; None keeps the param's dtype.
        nu_dtype: storage dtype of $n$; None keeps the param's real dtype (float32 for float16).

    Returns:
        A `GradientTransformation` with `ScaleByAdanState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_adan(eps=0.0)
        state = tx.init({"w": jnp.zeros(2)})
        u, state = tx.update({"w": jnp.array([0.5, -2.0])}, state)
        assert jnp.allclose(u["w"], jnp.array([1.0, -1.0]))  # Delta_1 = 0: Adam's first step, sign(g)
        assert (state.prev_grad["w"] == jnp.array([0.5, -2.0])).all()
        ```

    References:
        Xie, Zhou, Li, Lin & Yan, *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
        Deep Models*, IEEE TPAMI 2024 (arXiv 2208.06677, 2022).
    """
    owner = "scale_by_adan"
    check_state_dtype(owner, "mu_dtype", mu_dtype)
    check_state_dtype(owner, "nu_dtype", nu_dtype)
    spec = HyperparamSpec(
        owner,
        b1=(b1, Check.UNIT_INTERVAL),
        b2=(b2, Check.UNIT_INTERVAL),
        b3=(b3, Check.UNIT_INTERVAL),
        eps=(eps, Check.NONNEGATIVE),
        eps_root=(eps_root, Check.NONNEGATIVE),
    )

    def rule(g, m, v, n, prev_grad, *, b1, b2, b3, eps, eps_root, t):
        diff = jnp.where(t == 1, jnp.zeros_like(g), g - prev_grad)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * abs_sq(g + (1 - b2) * diff)
        m_hat = m / one_minus_pow(b1, t)
        v_hat = v / one_minus_pow(b2, t)
        n_hat = n / one_minus_pow(b3, t)
        u = (m_hat + (1 - b2) * v_hat) / (jnp.sqrt(n_hat + eps_root) + eps)
        return u, (m, v, n, g)

    slots = [
        Slot("m", dtype=mu_dtype),
        Slot("v", dtype=mu_dtype),
        Slot("n", dtype=nu_dtype, real=True),
        Slot("prev_grad"),
    ]
    return elementwise(rule, ScaleByAdanState, spec, slots=slots)


# ---------------------------------------------------------------------------------------------------
# NovoGrad


class ScaleByNovogradState(NamedTuple):
    """State of `scale_by_novograd`: step count, `nu` (one scalar per leaf), hyperparameters."""

    count: jax.Array
    nu: Updates
    hyperparams: Hyperparams


def scale_by_novograd(
    b2: float | jax.Array = 0.25,
    eps: float | jax.Array = 1e-8,
    eps_root: float | jax.Array = 0.0,
    *,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Normalise each leaf by a moving average of the squared norm of its gradient (NovoGrad's scaling).

    For every leaf (layer) $\\ell$, with one scalar $v_\\ell$:

    $$ v_{\\ell,1} = \\|g_{\\ell,1}\\|^2, \\qquad
       v_{\\ell,t} = \\beta_2 v_{\\ell,t-1} + (1-\\beta_2) \\|g_{\\ell,t}\\|^2, $$
    $$ u_{\\ell,t} = \\frac{g_{\\ell,t}}{\\sqrt{v_{\\ell,t} + \\epsilon_{root}} + \\epsilon} $$

    This is only the layer-wise second moment: NovoGrad (the `novograd` recipe) follows it with
    `add_decayed_weights` and a momentum `trace(b1)`, as the paper does. `optax.scale_by_novograd`
    bundles all three in one transformation; here each is a public ingredient (so the decay can take
    a mask and the momentum a dtype). The first step initialises $v$ with $\\|g\\|^2$ (no
    $1 - \\beta_2$ factor, no bias correction), as in the paper and optax. $v$ is stored as a real
    scalar per leaf, in at least float32 (or `nu_dtype`); the norm is computed in at least float32.
    The rule couples the elements of a leaf, so the transformation is not packable (a packed
    `chain` unpacks around it).

    Args:
        b2: $\\beta_2 \\in [0, 1)$ (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root (hyperparameter `eps_root`).
        nu_dtype: storage dtype of $v$; None: the param's real dtype, at least float32.

    Returns:
        A `GradientTransformation` with `ScaleByNovogradState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_novograd(eps=0.0)
        params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
        state = tx.init(params)
        assert state.nu["w"].shape == ()  # one number per leaf
        u, state = tx.update({"w": jnp.full((2, 2), 3.0), "b": jnp.array([0.0, 3.0, 4.0])}, state)
        assert jnp.allclose(u["w"], 0.5) and jnp.allclose(u["b"], jnp.array([0.0, 0.6, 0.8]))
        ```

    References:
        Ginsburg, Castonguay, Hrinchuk, Kuchaiev, Lavrukhin, Leary, Li, Nguyen, Zhang & Cohen,
        *Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep Networks*,
        arXiv 1905.11286, 2019.
    """
    owner = "scale_by_novograd"
    check_state_dtype(owner, "nu_dtype", nu_dtype)
    spec = HyperparamSpec(
        owner, b2=(b2, Check.UNIT_INTERVAL), eps=(eps, Check.NONNEGATIVE), eps_root=(eps_root, Check.NONNEGATIVE)
    )

    def nu_storage(dtype) -> jnp.dtype:
        return jnp.dtype(nu_dtype) if nu_dtype is not None else real_dtype(compute_dtype(dtype))

    def init(params):
        check_leaf_dtypes(owner, "param", params, complex_ok=True)
        nu = jax.tree.map(lambda p: tree_util.zeros_like(jax.ShapeDtypeStruct((), nu_storage(p.dtype))), params)
        state = ScaleByNovogradState(jnp.zeros((), jnp.int32), nu, spec.init())
        return tree_util.place_like(state, params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes(owner, "update", updates, complex_ok=True)
        # Structure only: nu holds one scalar per leaf, not the leaf's shape.
        tree_util.check_same_structure(
            jax.tree.map(lambda _: 0, state.nu),
            jax.tree.map(lambda _: 0, updates),
            expected_name="state",
            actual_name="updates",
            where=owner,
        )
        hp = spec.at(state.hyperparams, state.count)
        count = safe_increment(state.count)
        first = count == 1

        def leaf(g, nu):
            x = g.astype(compute_dtype(g.dtype))
            rdtype = real_dtype(x.dtype)
            b2, eps, eps_root = (hp[k].astype(rdtype) for k in ("b2", "eps", "eps_root"))
            sq_norm = jnp.sum(abs_sq(x))
            new = jnp.where(first, sq_norm, b2 * nu.astype(rdtype) + (1 - b2) * sq_norm).astype(nu.dtype)
            # The update uses v as stored, so that a later step sees exactly the value it divided by.
            u = x / (jnp.sqrt(new.astype(rdtype) + eps_root) + eps)
            return u.astype(g.dtype), new

        treedef = jax.tree.structure(updates)
        out = [
            leaf(g, nu) for g, nu in zip(treedef.flatten_up_to(updates), treedef.flatten_up_to(state.nu), strict=True)
        ]
        new_updates = treedef.unflatten([u for u, _ in out])
        new_nu = treedef.unflatten([n for _, n in out])
        return new_updates, ScaleByNovogradState(count, new_nu, hp)

    return GradientTransformation(init, update)
