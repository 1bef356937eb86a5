"""Float64 numpy transcriptions of `trace` (heavy ball, Nesterov, dampening) and `ema`, one leaf at a time,
and of the whole `sgd` optimizer (`ref_sgd_optimizer`).

The formulas of gradchain/transforms/momentum.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import _wide, value_at, with_l2


def ref_trace(
    grads: Sequence[Any], decay: float, *, nesterov: bool = False, dampening: float = 0.0
) -> list[np.ndarray]:
    """Heavy-ball momentum with PyTorch's dampening (`torch.optim.SGD`'s buffer).

    $v_1 = g_1$, $v_t = \\beta v_{t-1} + (1-\\tau) g_t$; $u_t = v_t$, or $g_t + \\beta v_t$ (Nesterov).
    """
    out, v = [], None
    for g in map(_wide, grads):
        v = g if v is None else decay * v + (1 - dampening) * g
        out.append(g + decay * v if nesterov else v)
    return out


def ref_ema(grads: Sequence[Any], decay: float, *, debias: bool = True) -> list[np.ndarray]:
    """$m_t = \\beta m_{t-1} + (1-\\beta) g_t$, $u_t = m_t / (1-\\beta^t)$ (debiased) or $m_t$."""
    out, m = [], 0.0
    for t, g in enumerate(map(_wide, grads), 1):
        m = decay * m + (1 - decay) * g
        out.append(m / (1 - decay**t) if debias else m)
    return out


# ---------------------------------------------------------------------------------------------------
# Whole optimizers (`sgd`, with PyTorch's coupled decay), learning rate and weight decay
# included, as tests/optimizers/test_optimizers.py runs them. Each returns
# (init(p) -> state, step(g, p, state, t) -> (update, state)) for one array; t is the 1-based step;
# hyperparameters may be schedules of the 0-based step (`value_at`). They follow the papers (and
# PyTorch where gradchain documents PyTorch's convention), not gradchain's code.


def ref_sgd_optimizer(learning_rate, momentum=None, nesterov=False, *, dampening=0.0, weight_decay=None):
    def init(p):
        return {"v": np.zeros_like(p)}

    def step(g, p, s, t):
        g = with_l2(g, p, weight_decay, t)  # PyTorch's coupled decay
        if momentum is not None:
            v = g if t == 1 else momentum * s["v"] + (1 - dampening) * g  # Sutskever et al.; torch
            s = {"v": v}
            g = g + momentum * v if nesterov else v
        return -value_at(learning_rate, t - 1) * g, s

    return init, step
