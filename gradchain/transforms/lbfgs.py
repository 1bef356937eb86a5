"""L-BFGS's ingredient: the limited-memory quasi-Newton direction $P_k g_k$ from the last $m$ steps.

`gradchain.optimizers.lbfgs` chains it with a sign flip and a line search.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, Params, Updates
from gradchain._checks import check_int, check_leaf_dtypes
from gradchain._numerics import safe_increment
from gradchain.transforms.linesearch import (
    scalar_dtype,
    vdot,
)

_LBFGS = "scale_by_lbfgs"


class ScaleByLBFGSState(NamedTuple):
    """State of `scale_by_lbfgs`.

    `count` is the number of steps taken; `params` and `updates` the params and incoming gradient of
    the last step (to form the next differences); `diff_params_memory` ($s_i$) and
    `diff_updates_memory` ($y_i$) the last $m$ differences, each leaf stacked along a new leading
    axis of size $m$ (a ring buffer: entry `(count - 1) % m` is the newest); `weights_memory` the
    $\\rho_i = 1/\\langle s_i, y_i \\rangle$ (0 for an unused entry).
    """

    count: jax.Array
    params: Params
    updates: Updates
    diff_params_memory: Updates
    diff_updates_memory: Updates
    weights_memory: jax.Array


def _axpy(alpha: jax.Array, x: Updates, y: Updates) -> Updates:
    """$y + \\alpha x$, in the dtypes of `y`."""
    return jax.tree.map(lambda xi, yi: (yi + alpha * xi).astype(yi.dtype), x, y)


def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True) -> GradientTransformation:
    """Multiply the gradient by the L-BFGS approximation of the inverse Hessian.

    With $w_k$ the params and $g_k$ the incoming gradient at step $k$, keep the last $m$ pairs
    $s_i = w_{i+1} - w_i$, $y_i = g_{i+1} - g_i$, $\\rho_i = 1 / \\langle s_i, y_i \\rangle$, and return
    $P_k g_k$ with

    $$ P_k = V_{k-1}^\\top \\cdots V_{k-m}^\\top\\, \\gamma_k I\\, V_{k-m} \\cdots V_{k-1}
       + \\sum_{j=k-m}^{k-1} \\rho_j\\, V_{k-1}^\\top \\cdots V_{j+1}^\\top s_j s_j^\\top V_{j+1} \\cdots V_{k-1},
       \\qquad V_j = I - \\rho_j y_j s_j^\\top $$

    computed by the two-loop recursion (Nocedal & Wright, algorithm 7.4) over the pytree. The
    initial scaling is $\\gamma_k = \\langle s_{k-1}, y_{k-1} \\rangle / \\langle y_{k-1}, y_{k-1}
    \\rangle$ (`scale_init_precond=True`) or 1; at the first step, with no pair yet,
    $\\gamma_0 = \\min(1, 1/\\|g_0\\|)$, so the first step of length at most 1 (as optax; a heuristic).
    The memory is updated from the params and gradient passed in, before the direction is formed,
    so it only holds steps that a line search accepted. A pair with $\\langle s, y\\rangle = 0$ gets
    $\\rho = 0$ (it is ignored); a pair of negative curvature is kept, as in optax (a line search
    with the curvature condition never produces one on a smooth function).

    This is optax's `scale_by_lbfgs`, with the same arguments, state layout and numbers. `update`
    needs the params. Complex params are not supported. The state holds $2m + 2$ copies of the
    params: 88 bytes per float32 parameter with $m = 10$.

    Args:
        memory_size: $m$, the number of pairs kept (static integer $\\ge 1$).
        scale_init_precond: scale the initial inverse Hessian by $\\gamma_k$ (static bool).

    Returns:
        A `GradientTransformation` with `ScaleByLBFGSState`. It gives the descent direction with a
        plus sign; chain it with `scale(-1.0)` and a line search (see `lbfgs`).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_lbfgs(memory_size=3)
        params = {"w": jnp.zeros(2)}
        state = tx.init(params)
        assert state.diff_params_memory["w"].shape == (3, 2)
        # Quadratic f = 2 |w|^2 (gradient 4 w): after one step the direction is the Newton step.
        d0, state = tx.update({"w": jnp.array([0.0, 4.0])}, state, {"w": jnp.array([0.0, 1.0])})
        assert jnp.allclose(d0["w"], jnp.array([0.0, 1.0]))  # first step: g / |g|
        d1, state = tx.update({"w": jnp.array([4.0, 0.0])}, state, {"w": jnp.array([1.0, 0.0])})
        assert jnp.allclose(d1["w"], jnp.array([1.0, 0.0]))  # H^{-1} g = w
        ```

    References:
        Liu & Nocedal, *On the limited memory BFGS method for large scale optimization*,
        Mathematical Programming, 1989; Nocedal & Wright, *Numerical Optimization*, 2nd ed., 2006,
        algorithms 7.4 and 7.5.
    """
    m = check_int(f"{_LBFGS}: memory_size", memory_size, minimum=1)
    if not isinstance(scale_init_precond, bool):
        raise TypeError(f"{_LBFGS}: scale_init_precond must be a bool, got {scale_init_precond!r}")

    def init(params):
        check_leaf_dtypes(_LBFGS, "param", params, complex_ok=False)
        return ScaleByLBFGSState(
            count=jnp.zeros((), jnp.int32),
            params=jax.tree.map(jnp.zeros_like, params),
            updates=jax.tree.map(jnp.zeros_like, params),
            diff_params_memory=jax.tree.map(lambda p: jnp.zeros((m, *p.shape), p.dtype), params),
            diff_updates_memory=jax.tree.map(lambda p: jnp.zeros((m, *p.shape), p.dtype), params),
            weights_memory=jnp.zeros((m,), scalar_dtype(params)),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise TypeError(f"{_LBFGS}: update needs the params (the memory holds their differences)")
        check_leaf_dtypes(_LBFGS, "update", updates, complex_ok=False)
        dtype = state.weights_memory.dtype
        first = state.count == 0
        newest = (state.count - 1) % m  # where this step's pair goes (m - 1 on the first step, unused)
        oldest = state.count % m

        # 1. The new pair (zero on the first step, when there is no previous point).
        s = jax.tree.map(lambda p, q: jnp.where(first, 0, p - q).astype(q.dtype), params, state.params)
        y = jax.tree.map(lambda g, h: jnp.where(first, 0, g - h).astype(h.dtype), updates, state.updates)
        sy = vdot(s, y, dtype)
        rho = jnp.where(sy == 0.0, 0.0, 1.0 / sy)
        s_mem = jax.tree.map(lambda mem, x: mem.at[newest].set(x), state.diff_params_memory, s)
        y_mem = jax.tree.map(lambda mem, x: mem.at[newest].set(x), state.diff_updates_memory, y)
        rhos = state.weights_memory.at[newest].set(rho)

        # 2. The scaling of the initial inverse Hessian.
        if scale_init_precond:
            yy = vdot(y, y, dtype)
            gamma = jnp.where(yy > 0.0, sy / yy, 1.0)
            # No pair yet: a first step of length at most 1 (a trust region, not in the references).
            gamma = jnp.where(first, jnp.minimum(1.0, 1.0 / tree_util.global_norm(updates).astype(dtype)), gamma)
        else:
            gamma = jnp.ones((), dtype)

        # 3. The two-loop recursion, newest pair first, then oldest first. Unused entries have rho = 0.
        order = (oldest + jnp.arange(m)) % m

        def pair(i):
            return jax.tree.map(lambda x: x[i], s_mem), jax.tree.map(lambda x: x[i], y_mem)

        def backward(q, i):
            s_i, y_i = pair(i)
            alpha = rhos[i] * vdot(s_i, q, dtype)
            return _axpy(-alpha, y_i, q), alpha

        def forward(r, i_alpha):
            i, alpha = i_alpha
            s_i, y_i = pair(i)
            beta = rhos[i] * vdot(y_i, r, dtype)
            return _axpy(alpha - beta, s_i, r), None

        q, alphas = jax.lax.scan(backward, updates, order, reverse=True)
        r = jax.tree.map(lambda x: (gamma * x).astype(x.dtype), q)
        direction, _ = jax.lax.scan(forward, r, (order, alphas))

        new_state = ScaleByLBFGSState(
            count=safe_increment(state.count),
            params=params,
            updates=updates,
            diff_params_memory=s_mem,
            diff_updates_memory=y_mem,
            weights_memory=rhos,
        )
        return direction, new_state

    return GradientTransformation(init, update)
