"""Float64 numpy transcription of dynamic loss scaling's scale update (gradchain/wrappers/loss_scaling.py).

torch's GradScaler rule, step by step, from the finiteness of each step's gradients, independently of
gradchain's code.
"""

from __future__ import annotations

import numpy as np


def ref_scales(finite: list[bool], init_scale, growth_interval, growth_factor, backoff_factor, min_scale=0.0):
    """torch's _amp_update_scale_ (aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp), plus a floor.

    The scale is stored in float32 (as torch's scale tensor) and multiplied in float64.
    """
    scale, tracker, out = float(init_scale), 0, []
    for ok in finite:
        if not ok:
            scale, tracker = max(float(np.float32(scale * backoff_factor)), min_scale), 0
        else:
            tracker += 1
            if tracker == growth_interval:
                grown = np.float32(scale * growth_factor)
                scale = float(grown) if np.isfinite(grown) else scale
                tracker = 0
        out.append((np.float32(scale), tracker))
    return out
