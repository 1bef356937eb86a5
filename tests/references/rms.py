"""Float64 numpy transcriptions of `scale_by_rss` (AdaGrad) and `scale_by_rms` (RMSProp), one leaf at a time,
and of the whole optimizers (`ref_adagrad_optimizer`, `ref_rmsprop_optimizer`).

The formulas of gradchain/transforms/rms.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import _wide, abs_sq, value_at, with_l2


def _denominator(v: np.ndarray, eps: float, eps_in_sqrt: bool) -> np.ndarray:
    return np.sqrt(v + eps) if eps_in_sqrt else np.sqrt(v) + eps


def ref_rss(
    grads: Sequence[Any], initial_accumulator_value: float = 0.1, eps: float = 1e-7, *, eps_in_sqrt: bool = True
) -> list[np.ndarray]:
    """AdaGrad: $s_t = s_{t-1} + |g_t|^2$ ($s_0$ given), $u_t = g_t / \\sqrt{s_t+\\epsilon}$ or
    $g_t / (\\sqrt{s_t} + \\epsilon)$; 0 where the denominator is 0."""
    out, s = [], float(initial_accumulator_value)
    for g in map(_wide, grads):
        s = s + abs_sq(g)
        d = _denominator(s, eps, eps_in_sqrt)
        out.append(np.where(d > 0, g / np.where(d > 0, d, 1.0), 0.0))
    return out


def ref_rms(
    grads: Sequence[Any],
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    *,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    bias_correction: bool = False,
) -> list[np.ndarray]:
    """RMSProp (Tieleman & Hinton 2012), centered variant (Graves 2013), optional bias correction.

    $\\nu_t = \\rho \\nu_{t-1} + (1-\\rho)|g_t|^2$ ($\\nu_0$ = `initial_scale`),
    $\\mu_t = \\rho \\mu_{t-1} + (1-\\rho) g_t$ ($\\mu_0 = 0$, centered only); with bias correction both
    are divided by $c_t = 1-\\rho^t$; $v_t = \\max(\\hat\\nu_t - |\\hat\\mu_t|^2, 0)$ (centered) or
    $\\hat\\nu_t$; $u_t = g_t / \\sqrt{v_t + \\epsilon}$ or $g_t / (\\sqrt{v_t} + \\epsilon)$.
    """
    out, nu, mu = [], float(initial_scale), 0.0
    for t, g in enumerate(map(_wide, grads), 1):
        nu = decay * nu + (1 - decay) * abs_sq(g)
        c = (1 - decay**t) if bias_correction else 1.0
        v = nu / c
        if centered:
            mu = decay * mu + (1 - decay) * g
            v = np.maximum(v - abs_sq(mu / c), 0.0)
        out.append(g / _denominator(v, eps, eps_in_sqrt))
    return out


# ---------------------------------------------------------------------------------------------------
# Whole optimizers (`adagrad`, `rmsprop`), learning rate and weight decay
# included, as tests/optimizers/test_optimizers.py runs them. Each returns
# (init(p) -> state, step(g, p, state, t) -> (update, state)) for one array; t is the 1-based step;
# hyperparameters may be schedules of the 0-based step (`value_at`). They follow the papers (and
# PyTorch where gradchain documents PyTorch's convention), not gradchain's code.


def ref_adagrad_optimizer(
    learning_rate, initial_accumulator_value=0.1, eps=1e-7, *, eps_in_sqrt=True, lr_decay=None, weight_decay=None
):
    def init(p):
        return {"s": np.full_like(p, initial_accumulator_value)}

    def step(g, p, s, t):
        g = with_l2(g, p, weight_decay, t)
        acc = s["s"] + g * g  # Duchi et al.: sum of all squared gradients
        denom = np.sqrt(acc + eps) if eps_in_sqrt else np.sqrt(acc) + eps
        u = np.divide(g, denom, out=np.zeros_like(g), where=denom > 0)
        lr = value_at(learning_rate, t - 1)
        if lr_decay is not None:
            lr = lr / (1 + lr_decay * (t - 1))  # torch: clr = lr / (1 + (step - 1) * lr_decay)
        return -lr * u, {"s": acc}

    return init, step


def ref_rmsprop_optimizer(
    learning_rate,
    decay=0.9,
    eps=1e-8,
    initial_scale=0.0,
    eps_in_sqrt=True,
    centered=False,
    momentum=None,
    nesterov=False,
    bias_correction=False,
    *,
    weight_decay=None,
    lr_in_buffer=False,
):
    """lr_in_buffer: optax's order (the learning rate applied before the momentum buffer)."""

    def init(p):
        return {"nu": np.full_like(p, initial_scale), "mu": np.zeros_like(p), "buf": np.zeros_like(p)}

    def step(g, p, s, t):
        g = with_l2(g, p, weight_decay, t)
        nu = decay * s["nu"] + (1 - decay) * g * g  # Tieleman & Hinton
        mu = decay * s["mu"] + (1 - decay) * g
        c = 1 - decay**t if bias_correction else 1.0
        var = nu / c - (mu / c) ** 2 if centered else nu / c  # Graves 2013
        u = g / (np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps)
        lr = value_at(learning_rate, t - 1)
        if lr_in_buffer:
            u, lr = -lr * u, -1.0
        buf = s["buf"]
        if momentum is not None:
            buf = momentum * buf + u
            u = u + momentum * buf if nesterov else buf
        return -lr * u, {"nu": nu, "mu": mu, "buf": buf}

    return init, step
