"""Float64 numpy transcriptions of `scale_by_trust_ratio` and the `lars`, `lamb`, `fromage` recipes, one leaf at a time.

The formulas of gradchain/transforms/trust_ratio.py's docstrings and of the papers (You et al. 2017, eq. 6
and Algorithm 1; You et al. 2020, Algorithm 2; Bernstein et al. 2020, Algorithm 1), transcribed
independently of its code. `ref_trust_ratio` maps one step's gradient and params to the update; the
recipes map (p0, gradients, learning rate, ...) to the list of params after every step.
"""

from __future__ import annotations

import numpy as np
from reference import l2_norm


def ref_trust_ratio(g, p, min_norm=0.0, c=1.0, eps=0.0):
    """LARS's local learning rate (You et al. 2017, eq. 6) with optax's floors and zero rule."""
    pn, gn = max(l2_norm(p), min_norm), max(l2_norm(g), min_norm)
    return g * (1.0 if pn == 0 or gn == 0 else c * pn / (gn + eps))


def ref_lars(
    p0, grads, lr, wd=0.0, c=0.001, eps=0.0, momentum=0.9, nesterov=False, decay=True, trust=True, paper=False
):
    """You et al. 2017, Algorithm 1, one leaf. The ratio's denominator is |g + wd p| (optax's form),
    or with `paper=True` the paper's |g| + wd |p|."""
    p, v, out = p0.copy(), np.zeros_like(p0), []
    for k, g in enumerate(grads):
        lr_k = lr(k) if callable(lr) else lr
        d = g + wd * p if decay else g
        pn, dn = l2_norm(p), (l2_norm(g) + wd * l2_norm(p) if paper else l2_norm(d))
        r = c * pn / (dn + eps) if trust and pn > 0 and dn > 0 else 1.0
        step = lr_k * r * d
        v = momentum * v + step
        p = p - (step + momentum * v if nesterov else v)
        out.append(p.copy())
    return out


def ref_lamb(p0, grads, lr, b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0, wd=0.0, decay=True):
    """You et al. 2020, Algorithm 2 (phi = identity), one leaf."""
    p, m, v, out = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)
        if decay:
            r = r + wd * p
        pn, rn = l2_norm(p), l2_norm(r)
        ratio = pn / rn if pn > 0 and rn > 0 else 1.0
        p = p - lr * ratio * r
        out.append(p.copy())
    return out


def ref_fromage(p0, grads, lr, min_norm=1e-6):
    """Bernstein et al. 2020, Algorithm 1, one leaf, norms floored at min_norm."""
    p, out = p0.copy(), []
    for k, g in enumerate(grads):
        lr_k = lr(k) if callable(lr) else lr
        pn, gn = max(l2_norm(p), min_norm), max(l2_norm(g), min_norm)
        p = (p - lr_k * (pn / gn) * g) / np.sqrt(1 + lr_k**2)
        out.append(p.copy())
    return out
