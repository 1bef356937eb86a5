"""Float64 numpy transcriptions of `scale_by_sm3` and the `sm3` recipe, one leaf at a time.

SM3-II (Anil et al. 2019, Algorithm 2) as gradchain/transforms/sm3.py's docstrings state it, written with
explicit loops over entries and cover sets, independently of its code.
"""

from __future__ import annotations

import numpy as np
from reference import abs_sq


def ref_sm3(grads: list[np.ndarray], b1=0.9, b2=1.0, eps=1e-8) -> list[np.ndarray]:
    """SM3-II (Anil et al. 2019, Algorithm 2) with the covers {slices along each axis}, written with
    explicit loops over entries and cover sets, plus optax's eps and momentum (not in the paper)."""
    shape = grads[0].shape
    ndim = len(shape)
    c = 1.0 if b2 == 1.0 else 1.0 - b2
    # Cover sets: (axis a, index j) for a k-d leaf; a vector or scalar has one set per entry.
    if ndim < 2:
        covers_of = {i: [i] for i in np.ndindex(*shape)}
        mu = {i: 0.0 for i in np.ndindex(*shape)}
    else:
        covers_of = {i: [(a, i[a]) for a in range(ndim)] for i in np.ndindex(*shape)}
        mu = {(a, j): 0.0 for a in range(ndim) for j in range(shape[a])}
    m = np.zeros(shape, grads[0].dtype)
    out = []
    for g in grads:
        nu = np.zeros(shape)
        new_mu = dict.fromkeys(mu, 0.0)
        for i in np.ndindex(*shape):
            nu[i] = c * abs_sq(g[i]) + b2 * min(mu[r] for r in covers_of[i])
            for r in covers_of[i]:
                new_mu[r] = max(new_mu[r], nu[i])
        mu = new_mu
        scaled = np.where(nu > 0, g / np.sqrt(np.where(nu > 0, nu, 1.0) + eps), 0.0)
        m = b1 * m + (1 - b1) * scaled
        out.append(m.copy())
    return out


def ref_sm3_params(p0, grads, lr, momentum=0.9):
    p, out = p0.copy(), []
    for m in ref_sm3(grads, b1=momentum):
        p = p - lr * m
        out.append(p.copy())
    return out
