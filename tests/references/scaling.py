"""Float64 numpy transcriptions of `scale`, `scale_by_learning_rate`, `scale_by_schedule`, one leaf at a time.

The formulas of gradchain/transforms/scaling.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from reference import Schedule, _at, _wide


def ref_scale(grads: Sequence[Any], step_size: float | Schedule) -> list[np.ndarray]:
    """$u_t = s\\, g_t$; `step_size` a number or a schedule of the 0-based step."""
    return [_at(step_size, k) * _wide(g) for k, g in enumerate(grads)]
