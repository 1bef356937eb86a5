"""Float64 numpy transcriptions of `scale_by_adam`, `scale_by_amsgrad`, `scale_by_adamax`, one leaf at a time.

The formulas of gradchain/transforms/adam.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import _wide, abs_sq


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
