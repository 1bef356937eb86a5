"""Float64 transcription of `reduce_on_plateau` (gradchain/transforms/plateau.py): torch's ReduceLROnPlateau.

The learning rate torch's scheduler sets after every value, starting from `base_lr`, transcribed from
torch's `step()` independently of gradchain's code.
"""

from __future__ import annotations

import math

import numpy as np


def ref_plateau(values, *, base_lr, factor, patience, threshold, threshold_mode, mode, cooldown, min_lr, eps):
    """torch's ReduceLROnPlateau.step, transcribed in float64; returns (lrs, smallest relative margin)."""
    best = math.inf if mode == "min" else -math.inf
    bad, cd, lr, lrs, margin = 0, 0, base_lr, [], math.inf
    for v in map(float, values):
        if mode == "min":
            limit = best * (1 - threshold) if threshold_mode == "rel" else best - threshold
            better = v < limit
        else:
            limit = best * (1 + threshold) if threshold_mode == "rel" else best + threshold
            better = v > limit
        if math.isfinite(limit):
            margin = min(margin, abs(v - limit) / abs(v))
        if better:
            best, bad = v, 0
        else:
            bad += 1
        if cd > 0:
            cd, bad = cd - 1, 0
        if bad > patience:
            new = max(lr * factor, min_lr)
            if lr - new > eps:
                lr = new
            cd, bad = cooldown, 0
        lrs.append(lr)
    return np.asarray(lrs), margin
