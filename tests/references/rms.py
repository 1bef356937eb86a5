"""Float64 numpy transcriptions of `scale_by_rss` (AdaGrad) and `scale_by_rms` (RMSProp), one leaf at a time.

The formulas of gradchain/transforms/rms.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import _wide, abs_sq


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
