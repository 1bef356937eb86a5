"""Float64 numpy transcriptions of `clip`, `clip_by_global_norm`, `clip_by_block_rms`, one leaf at a time.

The formulas of gradchain/transforms/clipping.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from reference import PyTree, _wide, abs_sq


def ref_clip(grads: Sequence[Any], max_delta: float) -> list[np.ndarray]:
    """$u_t = \\min(\\max(g_t, -\\delta), \\delta)$ element-wise (real gradients only)."""
    return [np.clip(_wide(g), -max_delta, max_delta) for g in grads]


def ref_global_norm(tree: PyTree) -> float:
    """$\\sqrt{\\sum_{leaves}\\sum_i |g_i|^2}$ in float64."""
    return float(np.sqrt(sum(float(np.sum(abs_sq(_wide(x)))) for x in jax.tree.leaves(tree))))


def ref_clip_by_global_norm(grad_trees: Sequence[PyTree], max_norm: float, eps: float = 0.0) -> list[PyTree]:
    """Clipping by global norm, on whole trees: $u = g \\min(1, c / (\\|g\\| + \\epsilon))$.

    Written as "scale by $c/(\\|g\\|+\\epsilon)$ where that is below 1", which is the same number and
    leaves a zero tree unchanged when $c = \\epsilon = 0$. `eps=0` is optax's form, `eps=1e-6`
    PyTorch's `clip_grad_norm_`.
    """
    out = []
    for tree in grad_trees:
        n = ref_global_norm(tree) + eps
        factor = max_norm / n if n > max_norm else 1.0
        out.append(jax.tree.map(lambda g, f=factor: _wide(g) * f, tree))
    return out


def ref_clip_by_block_rms(grads: Sequence[Any], threshold: float) -> list[np.ndarray]:
    """Per-leaf RMS clipping (Adafactor's update clipping): $u = g \\min(1, c / \\mathrm{rms}(g))$,
    $\\mathrm{rms}(g) = \\sqrt{\\mathrm{mean}|g|^2}$."""
    out = []
    for g in map(_wide, grads):
        rms = float(np.sqrt(np.mean(abs_sq(g)))) if g.size else 0.0
        out.append(g * (threshold / rms if rms > threshold else 1.0))
    return out
