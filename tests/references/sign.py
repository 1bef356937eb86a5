"""Float64 numpy transcriptions of `scale_by_sign`, `scale_by_lion` and the `lion` recipe, one leaf at a time.

The formulas of gradchain/transforms/sign.py's docstrings and of Chen et al. 2023, Algorithm 2, transcribed
independently of its code. Hyperparameters may be numbers or functions of the 0-based step (a schedule,
or a value changed midway with set_hyperparams). `ref_sign` and `ref_lion` return a `RefRun`: the
per-step updates, with the reference's final state as `.state`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from reference import RefRun, _at, _wide


def ref_sign(grads: list[Any]) -> RefRun:
    """signSGD: $u_t = \\mathrm{sign}(g_t)$."""
    out = RefRun(np.sign(_wide(g)) for g in grads)
    out.state = {}
    return out


def ref_lion(grads: list[Any], b1: Any = 0.9, b2: Any = 0.99) -> RefRun:
    """Chen et al. 2023, Algorithm 2, without learning rate and decay: $c_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t$,
    $u_t = \\mathrm{sign}(c_t)$, $m_t = \\beta_2 m_{t-1} + (1-\\beta_2) g_t$."""
    out, m = RefRun(), 0.0
    for k, g in enumerate(map(_wide, grads)):
        beta1, beta2 = _at(b1, k), _at(b2, k)
        out.append(np.sign(beta1 * m + (1 - beta1) * g))
        m = beta2 * m + (1 - beta2) * g
    out.state = {"mu": m}
    return out


def ref_lion_params(p0: Any, grads: list[Any], learning_rate: Any, b1=0.9, b2=0.99, weight_decay=1e-3) -> np.ndarray:
    """Lion with decoupled decay, the params after every step (stacked):
    $p_t = p_{t-1} - \\eta_t (\\mathrm{sign}(c_t) + \\lambda_t p_{t-1})$ (decay None: $\\lambda = 0$)."""
    signs = ref_lion(grads, b1, b2)
    p, out = _wide(p0), []
    for k, s in enumerate(signs):
        decay = 0.0 if weight_decay is None else _at(weight_decay, k)
        p = p - _at(learning_rate, k) * (s + decay * p)
        out.append(p)
    return np.stack(out)
