"""Float64 numpy transcriptions of `clip`, `clip_by_global_norm`, `clip_by_block_rms` and `adaptive_grad_clip`
(Brock et al. 2021, eq. 3), one leaf at a time.

The formulas of gradchain/transforms/clipping.py's docstrings and papers, transcribed independently of its code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from reference import PyTree, _wide, abs_sq, l2_norm


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


def ref_unit_axes(shape):
    if sum(d != 1 for d in shape) <= 1:
        return tuple(range(len(shape)))
    return (0,) if len(shape) in (2, 3) else tuple(range(len(shape) - 1))


def ref_agc(g, p, clipping, eps, counts=None):
    """Brock et al. 2021, eq. 3, unit by unit: each unit is one index of the axes the norm leaves out."""
    axes = ref_unit_axes(g.shape)
    kept = [a for a in range(g.ndim) if a not in axes]
    out = g.copy()
    for idx in np.ndindex(*[g.shape[a] for a in kept]):
        sel = [slice(None)] * g.ndim
        for a, i in zip(kept, idx, strict=True):
            sel[a] = i
        sel = tuple(sel)
        limit = clipping * max(l2_norm(p[sel]), eps)
        gn = l2_norm(g[sel])
        clipped = gn > limit
        if counts is not None:
            counts[clipped] += 1
        if clipped:
            out[sel] = g[sel] * (limit / gn)
    return out
