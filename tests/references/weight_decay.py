"""Float64 numpy transcriptions of `add_decayed_weights` and `add_l2_regularization`, one leaf at a time.

The formulas of gradchain/transforms/weight_decay.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import Schedule, _at, _wide


def ref_decay(grads: Sequence[Any], params: Any, weight_decay: float | Schedule) -> list[np.ndarray]:
    """Weight decay / L2 gradient: $u_t = g_t + \\lambda_t p_t$.

    Args:
        grads: the leaf's gradients, one per step.
        params: the leaf's params: one array (fixed for every step) or a list with one per step.
        weight_decay: $\\lambda$, a number or a schedule of the 0-based step.
    """
    if isinstance(params, (list, tuple)):
        ps = [_wide(p) for p in params]
    else:
        ps = [_wide(params)] * len(grads)
    return [_wide(g) + _at(weight_decay, k) * p for k, (g, p) in enumerate(zip(grads, ps, strict=True))]
