"""Float64 numpy transcription of `keep_params_nonnegative` (gradchain/transforms/sanitize.py), one step of one leaf.

An update that would take a param below 0 becomes the one taking it to exactly 0.
"""

from __future__ import annotations

import numpy as np


def ref_nonnegative(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.where(p + u < 0, -p, u)
