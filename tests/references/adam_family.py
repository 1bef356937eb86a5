"""Float64 numpy transcriptions of the `adabelief`, `yogi`, `radam`, `adan`, `novograd` optimizers, one leaf at a time.

The updates of gradchain/transforms/adam_family.py's docstrings and of the papers (Zhuang et al. 2020,
Zaheer et al. 2018, Liu et al. 2020, Xie et al. 2022, Ginsburg et al. 2019), in the conventions the
docstrings state, transcribed independently of its code. Each `ref_*(lr, ...)` returns
`(init(p) -> state, step(g, p, state, t) -> (p, state))` for one array, t the 1-based step; the betas
are rounded as gradchain stores them (`stored`).
"""

from __future__ import annotations

import numpy as np
from reference import abs_sq, stored


def _m_hat(g, m, b1, t, nesterov):
    if nesterov:
        return b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
    return m / (1 - b1**t)


def ref_adabelief(lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, *, nesterov=False, weight_decay=None, centered=True):
    b1, b2 = stored(b1), stored(b2)

    def init(p):
        return np.zeros_like(p), np.zeros(p.shape)

    def step(g, p, s, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        # Zhuang et al. 2020, Algorithm 2 (centered=False: Adam's second moment, for a near miss).
        v = b2 * v + (1 - b2) * abs_sq(g - m if centered else g) + eps_root
        u = _m_hat(g, m, b1, t, nesterov) / (np.sqrt(v / (1 - b2**t)) + eps)
        if weight_decay is not None:
            u = u + weight_decay * p
        return p - lr * u, (m, v)

    return init, step


def ref_yogi(lr, b1=0.9, b2=0.999, eps=1e-3, *, eps_root=0.0, initial_accumulator_value=1e-6):
    b1, b2 = stored(b1), stored(b2)

    def init(p):
        return np.full_like(p, initial_accumulator_value), np.full(p.shape, initial_accumulator_value)

    def step(g, p, s, t):
        m, v = s
        m = b1 * m + (1 - b1) * g
        g2 = abs_sq(g)
        v = v - (1 - b2) * np.sign(v - g2) * g2  # Zaheer et al. 2018, Algorithm 2
        u = m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)
        return p - lr * u, (m, v)

    return init, step


def ref_radam(
    lr,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    threshold=5.0,
    *,
    nesterov=False,
    weight_decay=None,
    decoupled_weight_decay=False,
    eps_before_bias_correction=False,
    round_betas=True,
):
    if round_betas:
        b1, b2 = stored(b1), stored(b2)

    def init(p):
        return np.zeros_like(p), np.zeros(p.shape)

    def step(g, p, s, t):
        m, v = s
        if weight_decay is not None and not decoupled_weight_decay:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * abs_sq(g)
        m_hat = _m_hat(g, m, b1, t, nesterov)
        # Liu et al. 2020, Algorithm 2: rho_t, and r_t once rho_t passes the threshold.
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= threshold:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            if eps_before_bias_correction:
                denom = (np.sqrt(v + eps_root) + eps) / np.sqrt(1 - b2**t)
            else:
                denom = np.sqrt(v / (1 - b2**t) + eps_root) + eps
            u = r * m_hat / denom
        else:
            u = m_hat
        if weight_decay is not None and decoupled_weight_decay:
            u = u + weight_decay * p
        return p - lr * u, (m, v)

    return init, step


def ref_adan(lr, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, weight_decay=0.0):
    b1, b2, b3 = stored(b1), stored(b2), stored(b3)

    def init(p):
        return np.zeros_like(p), np.zeros_like(p), np.zeros(p.shape), np.zeros_like(p)

    def step(g, p, s, t):
        m, v, n, prev = s
        diff = np.zeros_like(g) if t == 1 else g - prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * abs_sq(g + (1 - b2) * diff)  # Xie et al. 2022, Algorithm 1
        u = (m / (1 - b1**t) + (1 - b2) * v / (1 - b2**t)) / (np.sqrt(n / (1 - b3**t) + eps_root) + eps)
        if weight_decay is not None:
            u = u + weight_decay * p
        return p - lr * u, (m, v, n, g)

    return init, step


def ref_novograd(lr, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, weight_decay=0.0):
    b1, b2 = stored(b1), stored(b2)

    def init(p):
        return np.zeros_like(p), 0.0

    def step(g, p, s, t):
        m, v = s
        norm2 = float(np.sum(abs_sq(g)))  # one second moment per layer (leaf)
        v = norm2 if t == 1 else b2 * v + (1 - b2) * norm2  # Ginsburg et al. 2019, Algorithm 1
        u = g / (np.sqrt(v + eps_root) + eps)
        if weight_decay is not None:
            u = u + weight_decay * p
        m = b1 * m + u
        return p - lr * m, (m, v)

    return init, step
