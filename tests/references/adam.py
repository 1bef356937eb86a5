"""Float64 numpy transcriptions of `scale_by_adam`, `scale_by_amsgrad`, `scale_by_adamax`, one leaf at a time,
and of the whole optimizers built on them (`ref_adam_optimizer`, ..., `ref_adamaxw_optimizer`).

The formulas of gradchain/transforms/adam.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import _wide, abs_sq, value_at, with_l2


def ref_adam(
    grads: Sequence[Any],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    nesterov: bool = False,
    bias_correction: bool = True,
) -> list[np.ndarray]:
    """Adam (Kingma & Ba 2015), NAdam first moment (Dozat 2016) with `nesterov`.

    $\\mu_t = \\beta_1\\mu_{t-1} + (1-\\beta_1) g_t$, $\\nu_t = \\beta_2\\nu_{t-1} + (1-\\beta_2)|g_t|^2$,
    $\\hat\\mu_t = \\mu_t/(1-\\beta_1^t)$, or with Nesterov
    $\\beta_1\\mu_t/(1-\\beta_1^{t+1}) + (1-\\beta_1) g_t/(1-\\beta_1^t)$; $\\hat\\nu_t = \\nu_t/(1-\\beta_2^t)$;
    $u_t = \\hat\\mu_t / (\\sqrt{\\hat\\nu_t + \\epsilon_{root}} + \\epsilon)$. Without bias correction every
    $1-\\beta^k$ above is 1.
    """
    out, mu, nu = [], 0.0, 0.0
    for t, g in enumerate(map(_wide, grads), 1):
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * abs_sq(g)
        c1 = (lambda k: 1 - b1**k) if bias_correction else (lambda k: 1.0)
        c2 = (1 - b2**t) if bias_correction else 1.0
        mu_hat = b1 * mu / c1(t + 1) + (1 - b1) * g / c1(t) if nesterov else mu / c1(t)
        out.append(mu_hat / (np.sqrt(nu / c2 + eps_root) + eps))
    return out


def ref_amsgrad(
    grads: Sequence[Any],
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    debias_before_max: bool = True,
) -> list[np.ndarray]:
    """AMSGrad (Reddi et al. 2018): Adam with a running maximum of the second moment.

    `debias_before_max=True` (optax): $m_t = \\max(m_{t-1}, \\nu_t/(1-\\beta_2^t))$, denominator
    $\\sqrt{m_t + \\epsilon_{root}} + \\epsilon$. `False` (PyTorch): $m_t = \\max(m_{t-1}, \\nu_t)$,
    denominator $\\sqrt{m_t/(1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon$. Numerator $\\mu_t/(1-\\beta_1^t)$.
    """
    out, mu, nu, m = [], 0.0, 0.0, 0.0
    for t, g in enumerate(map(_wide, grads), 1):
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * abs_sq(g)
        c2 = 1 - b2**t
        if debias_before_max:
            m = np.maximum(m, nu / c2)
            nu_hat = m
        else:
            m = np.maximum(m, nu)
            nu_hat = m / c2
        out.append(mu / (1 - b1**t) / (np.sqrt(nu_hat + eps_root) + eps))
    return out


def ref_adamax(grads: Sequence[Any], b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> list[np.ndarray]:
    """AdaMax (Kingma & Ba 2015, section 7.1), eps inside the max as in optax and PyTorch.

    $\\mu_t = \\beta_1\\mu_{t-1} + (1-\\beta_1) g_t$, $\\nu_t = \\max(\\beta_2 \\nu_{t-1}, |g_t| + \\epsilon)$,
    $u_t = \\mu_t / ((1-\\beta_1^t)\\nu_t)$.
    """
    out, mu, nu = [], 0.0, 0.0
    for t, g in enumerate(map(_wide, grads), 1):
        mu = b1 * mu + (1 - b1) * g
        nu = np.maximum(b2 * nu, np.abs(g) + eps)
        out.append(mu / (1 - b1**t) / nu)
    return out


# ---------------------------------------------------------------------------------------------------
# Whole optimizers (`adam`, `adamw`, `nadam`, `nadamw`, `amsgrad`, `adamax`, `adamaxw`), learning rate and weight decay
# included, as tests/optimizers/test_optimizers.py runs them. Each returns
# (init(p) -> state, step(g, p, state, t) -> (update, state)) for one array; t is the 1-based step;
# hyperparameters may be schedules of the 0-based step (`value_at`). They follow the papers (and
# PyTorch where gradchain documents PyTorch's convention), not gradchain's code.


def _adam_family(
    learning_rate,
    b1,
    b2,
    eps,
    eps_root,
    *,
    nesterov=False,
    amsgrad=False,
    debias_before_max=True,
    l2=None,
    decoupled=None,
    mask_leaf=True,
):
    def init(p):
        return {"mu": np.zeros_like(p), "nu": np.zeros_like(p), "nu_max": np.zeros_like(p)}

    def step(g, p, s, t):
        g = with_l2(g, p, l2, t)
        mu = b1 * s["mu"] + (1 - b1) * g  # Kingma & Ba, algorithm 1
        nu = b2 * s["nu"] + (1 - b2) * g * g
        if nesterov:  # Dozat 2016, in optax's form
            mu_hat = b1 * mu / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            mu_hat = mu / (1 - b1**t)
        nu_hat = nu / (1 - b2**t)
        nu_max = s["nu_max"]
        if amsgrad:  # Reddi et al.; optax debiases before the maximum, torch after
            if debias_before_max:
                nu_max = np.maximum(nu_max, nu_hat)
                nu_hat = nu_max
            else:
                nu_max = np.maximum(nu_max, nu)
                nu_hat = nu_max / (1 - b2**t)
        u = mu_hat / (np.sqrt(nu_hat + eps_root) + eps)
        if decoupled is not None and mask_leaf:  # Loshchilov & Hutter: decay outside the adaptive scaling
            u = u + value_at(decoupled, t - 1) * p
        return -value_at(learning_rate, t - 1) * u, {"mu": mu, "nu": nu, "nu_max": nu_max}

    return init, step


def ref_adam_optimizer(learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, *, nesterov=False, weight_decay=None):
    return _adam_family(learning_rate, b1, b2, eps, eps_root, nesterov=nesterov, l2=weight_decay)


def ref_adamw_optimizer(
    learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4, *, nesterov=False, mask_leaf=True
):
    return _adam_family(
        learning_rate, b1, b2, eps, eps_root, nesterov=nesterov, decoupled=weight_decay, mask_leaf=mask_leaf
    )


def _dozat_nadam(learning_rate, b1, b2, eps, psi, *, l2=None, decoupled=None, mask_leaf=True):
    """Dozat 2016, algorithm 2, with the warming momentum schedule and PyTorch's debiased nu."""

    def init(p):
        return {"m": np.zeros_like(p), "v": np.zeros_like(p), "prod": 1.0}

    def step(g, p, s, t):
        g = with_l2(g, p, l2, t)
        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        prod = s["prod"] * mu_t
        m = b1 * s["m"] + (1 - b1) * g
        v = b2 * s["v"] + (1 - b2) * g * g
        d = np.sqrt(v / (1 - b2**t)) + eps
        u = (1 - mu_t) / (1 - prod) * g / d + mu_next / (1 - prod * mu_next) * m / d
        if decoupled is not None and mask_leaf:
            u = u + value_at(decoupled, t - 1) * p
        return -value_at(learning_rate, t - 1) * u, {"m": m, "v": v, "prod": prod}

    return init, step


def ref_nadam_optimizer(
    learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, *, momentum_decay=None, weight_decay=None
):
    if momentum_decay is not None:
        return _dozat_nadam(learning_rate, b1, b2, eps, momentum_decay, l2=weight_decay)
    return _adam_family(learning_rate, b1, b2, eps, eps_root, nesterov=True, l2=weight_decay)


def ref_nadamw_optimizer(
    learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, weight_decay=1e-4, *, momentum_decay=None, mask_leaf=True
):
    if momentum_decay is not None:
        return _dozat_nadam(learning_rate, b1, b2, eps, momentum_decay, decoupled=weight_decay, mask_leaf=mask_leaf)
    return _adam_family(
        learning_rate, b1, b2, eps, eps_root, nesterov=True, decoupled=weight_decay, mask_leaf=mask_leaf
    )


def ref_amsgrad_optimizer(
    learning_rate, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, *, debias_before_max=True, weight_decay=None
):
    return _adam_family(
        learning_rate, b1, b2, eps, eps_root, amsgrad=True, debias_before_max=debias_before_max, l2=weight_decay
    )


def _adamax_family(learning_rate, b1, b2, eps, *, l2=None, decoupled=None, mask_leaf=True):
    def init(p):
        return {"mu": np.zeros_like(p), "u": np.zeros_like(p)}

    def step(g, p, s, t):
        g = with_l2(g, p, l2, t)
        mu = b1 * s["mu"] + (1 - b1) * g  # Kingma & Ba, algorithm 2 (eps inside the max, as torch/optax)
        u_inf = np.maximum(b2 * s["u"], np.abs(g) + eps)
        upd = mu / (1 - b1**t) / u_inf
        if decoupled is not None and mask_leaf:
            upd = upd + value_at(decoupled, t - 1) * p
        return -value_at(learning_rate, t - 1) * upd, {"mu": mu, "u": u_inf}

    return init, step


def ref_adamax_optimizer(learning_rate, b1=0.9, b2=0.999, eps=1e-8, *, weight_decay=None):
    return _adamax_family(learning_rate, b1, b2, eps, l2=weight_decay)


def ref_adamaxw_optimizer(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4, *, mask_leaf=True):
    return _adamax_family(learning_rate, b1, b2, eps, decoupled=weight_decay, mask_leaf=mask_leaf)
