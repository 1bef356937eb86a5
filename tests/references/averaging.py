"""Float64 numpy transcriptions of `ema_params`, `swa` and `lookahead` (gradchain/wrappers/averaging.py).

Each maps the initial params `p0` and a trajectory (leaves with a leading step axis) to what the wrapper
holds after every step, transcribed from the papers and TensorFlow's / torch's definitions, independently
of gradchain's code.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

PyTree = Any


def _float64(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def ref_ema_params(p0: PyTree, trajectory: PyTree, decay: float, mode: str) -> PyTree:
    """The average after every step of the params in `trajectory` (leading step axis), from `p0`.

    plain: a_0 = p_0, a_t = d a_{t-1} + (1 - d) p_t (TensorFlow's ExponentialMovingAverage);
    warmup: the same with d_t = min(d, (1 + n) / (10 + n)), n = t - 1 updates before this one;
    debias: m_0 = 0, m_t = d m_{t-1} + (1 - d) p_t, a_t = m_t / (1 - d^t) (Adam's bias correction).
    """

    def leaf(p0, ps):
        a, m, out = p0, np.zeros_like(p0), []
        for t, p in enumerate(ps, 1):
            if mode == "debias":
                m = decay * m + (1 - decay) * p
                a = m / (1 - decay**t)
            else:
                d = min(decay, (1 + (t - 1)) / (10 + (t - 1))) if mode == "warmup" else decay
                a = d * a + (1 - d) * p
            out.append(a)
        return np.stack(out)

    return jax.tree.map(leaf, _float64(p0), _float64(trajectory))


def ref_swa(p0: PyTree, trajectory: PyTree, start_step: int, every: int) -> tuple[PyTree, list[int]]:
    """The mean of p_t over t = s, s + k, ... (t = 0 being `p0`) after every step; p0 before any."""

    def leaf(p0, ps):
        taken = [p0] if start_step == 0 else []
        out = []
        for t, p in enumerate(ps, 1):
            if t >= start_step and (t - start_step) % every == 0:
                taken.append(p)
            out.append(np.mean(taken, axis=0) if taken else p0)
        return np.stack(out)

    n = len(jax.tree.leaves(trajectory)[0])  # the number of steps
    counts = [
        sum(1 for s in range(t + 1) if s >= start_step and (s - start_step) % every == 0) for t in range(1, n + 1)
    ]
    return jax.tree.map(leaf, _float64(p0), _float64(trajectory)), counts


def ref_lookahead(p0: PyTree, fast_updates: PyTree, sync_period: int, alpha: float) -> tuple[PyTree, PyTree]:
    """Zhang et al. 2019, Algorithm 1: theta += u_t; every k steps phi += alpha (theta - phi), theta = phi.

    Returns the params the user holds (theta) and the slow weights (phi) after every step. The fast
    updates do not depend on the params here (sgd/adam on fixed gradients), so they are precomputed.
    """

    def leaf(p0, us):
        theta, phi, thetas, phis = p0.copy(), p0.copy(), [], []
        for t, u in enumerate(us, 1):
            theta = theta + u
            if t % sync_period == 0:
                phi = phi + alpha * (theta - phi)
                theta = phi.copy()
            thetas.append(theta)
            phis.append(phi)
        return np.stack(thetas), np.stack(phis)

    pairs = jax.tree.map(leaf, _float64(p0), fast_updates)
    first = jax.tree.map(lambda x: x[0], pairs, is_leaf=lambda x: isinstance(x, tuple))
    second = jax.tree.map(lambda x: x[1], pairs, is_leaf=lambda x: isinstance(x, tuple))
    return first, second
