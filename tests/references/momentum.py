"""Float64 numpy transcriptions of `trace` (heavy ball, Nesterov, dampening) and `ema`, one leaf at a time.

The formulas of gradchain/transforms/momentum.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import _wide


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
