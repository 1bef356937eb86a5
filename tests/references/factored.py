"""Float64 numpy transcriptions of `scale_by_factored_rms`, `scale_by_param_block_rms` and the `adafactor`
recipe, one leaf at a time.

The formulas of gradchain/transforms/factored.py's docstrings and of Shazeer & Stern 2018, Algorithms 4 and
5 (with the paper's row and column *sums*, where gradchain and optax keep means), transcribed independently
of its code. Hyperparameters may be numbers or functions of the 0-based step. `ref_factored_rms` returns a
`RefRun`: the per-step updates, with the reference's final state (as gradchain lays it out) as `.state`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from reference import RefRun, _at, _wide, abs_sq


def _paper_axes(shape: tuple[int, ...], factored: bool, min_dim: int) -> tuple[int, int] | None:
    """(row axis, column axis): the second largest and the largest axis (the later one on a tie)."""
    if not factored or len(shape) < 2:
        return None
    ranked = sorted(range(len(shape)), key=lambda axis: (shape[axis], axis))
    row, col = ranked[-2], ranked[-1]
    return (row, col) if shape[row] >= max(min_dim, 1) else None


def ref_factored_rms(
    grads: list[Any],
    decay_rate: Any = 0.8,
    epsilon: Any = 1e-30,
    *,
    factored: bool = True,
    min_dim: int = 128,
    step_offset: int = 0,
    decay_fn: Callable[[int, float], float] | None = None,
) -> RefRun:
    """Adafactor's second-moment scaling (Shazeer & Stern 2018, Algorithms 4 and 5, no clipping).

    $\\hat\\beta_t = 1 - t^{-c}$ with $t = \\max(k - \\text{offset}, 0) + 1$ for the 0-based step $k$.
    A factored leaf, its row axis moved to -2 and its column axis to -1 (other axes are a batch),
    keeps the row sums $R_t = \\hat\\beta_t R_{t-1} + (1-\\hat\\beta_t) (G_t^2 + \\epsilon) 1_m$ and the
    column sums $C_t = \\hat\\beta_t C_{t-1} + (1-\\hat\\beta_t) 1_n^T (G_t^2 + \\epsilon)$, and
    $\\hat V_t = R_t C_t / (1_n^T R_t)$; any other leaf keeps $v_t = \\hat\\beta_t v_{t-1} + (1-\\hat\\beta_t)
    (g_t^2 + \\epsilon)$. $u_t = g_t / \\sqrt{\\hat V_t}$, and 0 where $\\hat V_t = 0$. The state is given
    as gradchain and optax lay it out: $v_{row} = R_t / m$, $v_{col} = C_t / n$ at the axes' places.
    """
    shape = np.shape(grads[0])
    axes = _paper_axes(shape, factored, min_dim)
    out, state = RefRun(), 0.0
    r = c = v = 0.0
    for k, g in enumerate(map(_wide, grads)):
        t = max(k - step_offset, 0) + 1
        rate = _at(decay_rate, k)
        beta = decay_fn(t - 1, rate) if decay_fn is not None else 1 - t ** (-rate)
        sq = abs_sq(g) + _at(epsilon, k)
        if axes is None:
            v = beta * v + (1 - beta) * sq
            v_hat = v
        else:
            row, col = axes
            moved = np.moveaxis(sq, (row, col), (-2, -1))
            r = beta * r + (1 - beta) * moved.sum(axis=-1)
            c = beta * c + (1 - beta) * moved.sum(axis=-2)
            total = r.sum(axis=-1)[..., None, None]
            v_hat = r[..., :, None] * c[..., None, :] / np.where(total == 0, 1, total)
            v_hat = np.moveaxis(v_hat, (-2, -1), (row, col))
        out.append(np.where(v_hat == 0, 0, g / np.sqrt(np.where(v_hat == 0, 1, v_hat))))
    if axes is None:
        state = {"v": np.broadcast_to(v, shape)}
    else:
        row, col = axes
        n, m = shape[row], shape[col]
        # v_row lacks the column axis: the row axis sits at `row`, less one if the column axis came first.
        state = {
            "v_row": np.moveaxis(r / m, -1, row - (col < row)),
            "v_col": np.moveaxis(c / n, -1, col - (row < col)),
        }
    out.state = state
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(abs_sq(x)))) if x.size else 0.0


def ref_param_block_rms(updates: list[Any], params: list[Any], min_scale: float = 1e-3) -> list[np.ndarray]:
    """$u = g \\max(\\mathrm{rms}(p), s_{\\min})$, per leaf, with the params of each step."""
    return [_wide(u) * max(_rms(_wide(p)), min_scale) for u, p in zip(updates, params, strict=True)]


def ref_adafactor_params(
    p0: Any,
    grads: list[Any],
    learning_rate: Any = None,
    *,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    min_dim: int = 128,
    param_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    weight_decay_rate: Any = None,
    decay_this_leaf: bool = True,
    eps: float = 1e-30,
    factored: bool = True,
) -> np.ndarray:
    """Adafactor (Shazeer & Stern 2018, Algorithm 4/5 and section 8), the params after every step:

    $\\tilde U_t = U_t / \\max(1, \\mathrm{rms}(U_t)/d)$ (update clipping),
    $x_t = \\eta_t \\max(\\mathrm{rms}(p_{t-1}), 10^{-3}) \\tilde U_t$ (relative step size),
    $m_t = \\beta_1 m_{t-1} + (1-\\beta_1) x_t$ (momentum, else $m_t = x_t$),
    $p_t = p_{t-1} - m_t - \\lambda_t p_{t-1}$.
    """
    scaled = ref_factored_rms(grads, decay_rate, eps, factored=factored, min_dim=min_dim, step_offset=decay_offset)
    p, m, out = _wide(p0), 0.0, []
    for k, u in enumerate(scaled):
        if clipping_threshold is not None:
            u = u / max(1.0, _rms(u) / clipping_threshold)
        if learning_rate is not None:
            u = _at(learning_rate, k) * u
        if param_scale:
            u = u * max(_rms(p), 1e-3)
        if momentum is not None:
            m = momentum * m + (1 - momentum) * u
            u = m
        if weight_decay_rate is not None and decay_this_leaf:
            u = u + _at(weight_decay_rate, k) * p
        p = p - u
        out.append(p)
    return np.stack(out)
