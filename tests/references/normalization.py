"""Float64 numpy transcriptions of `centralize` and `scale_by_param_block_norm`, one step of one leaf.

The formulas of gradchain/transforms/normalization.py's docstrings and of Yong et al. 2020, eq. 4,
transcribed independently of its code.
"""

from __future__ import annotations

import numpy as np
from reference import l2_norm


def ref_centralize(g):
    """Yong et al. 2020, eq. 4: subtract from each output unit (first axis) the mean of its weights' gradient."""
    if g.ndim < 2:
        return g
    out = np.empty_like(g)
    for i in range(g.shape[0]):
        out[i] = g[i] - g[i].mean()
    return out


def ref_block_norm(g, p, min_scale=1e-3):
    return g * max(l2_norm(p), min_scale)
