"""L-BFGS: the limited-memory quasi-Newton direction, the `lbfgs` recipe, and a loop that runs it.

`scale_by_lbfgs` is the ingredient (the direction $P_k g_k$ from the last $m$ steps); `lbfgs` chains
it with a sign flip and a line search (`gradchain.transforms.linesearch`); `minimize` runs any
optimizer on a deterministic objective until the gradient is small, reusing the value and gradient
that the line search already computed at the accepted point.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, OptState, Params, ScalarOrSchedule, apply_updates
from gradchain._checks import check_int
from gradchain.optimizers.recipe import recipe
from gradchain.transforms.lbfgs import scale_by_lbfgs
from gradchain.transforms.linesearch import (
    find_linesearch_state,
    value_and_grad_from_state,
)
from gradchain.transforms.scaling import scale, scale_by_learning_rate
from gradchain.transforms.zoom import scale_by_zoom_linesearch

# optax.lbfgs's default: the zoom search, starting each search from the quasi-Newton step 1.
_DEFAULT_LINESEARCH = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = _DEFAULT_LINESEARCH,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """L-BFGS: a limited-memory quasi-Newton direction, with a step size from a line search.

    $$ w_{k+1} = w_k - \\eta_k \\alpha_k P_k g_k $$

    with $P_k$ the L-BFGS inverse Hessian approximation of `scale_by_lbfgs`, $\\eta_k$ the learning
    rate (1 by default) and $\\alpha_k$ the step size of the line search (by default a zoom search
    for the strong Wolfe conditions, $c_1 = 10^{-4}$, $c_2 = 0.9$, at most 20 evaluations, starting
    from 1). Recipe: `scale_by_lbfgs(memory_size, scale_init_precond)` → `scale(-1.0)` (or
    `scale_by_learning_rate(learning_rate)`) → `linesearch` (left out if None). This is
    `optax.lbfgs` with the same arguments in the same order, and the same iterates.

    `update` needs the keyword arguments `value` (the objective at the params), `grad` (its
    gradient) and `value_fn` (the objective); extra keyword arguments that `value_fn` takes (a batch)
    are passed to it. The line search stores the value and gradient at the accepted point: read them
    for the next step with `value_and_grad_from_state` (no second evaluation), or let `minimize` run
    the loop. For deterministic (full-batch) objectives; a learning rate other than 1 with a line
    search scales the direction the line search starts from. The state holds $2m + 3$ copies of the
    params (92 bytes per float32 parameter with $m = 10$).

    Args:
        learning_rate: a fixed step size (a number or a schedule) instead of 1, or None.
        memory_size: $m$, the number of past steps kept (static integer $\\ge 1$).
        scale_init_precond: scale the initial inverse Hessian by
            $\\langle s, y\\rangle / \\langle y, y\\rangle$ (static bool).
        linesearch: the line search, a `GradientTransformation` taking `value`, `grad` and
            `value_fn` (`scale_by_zoom_linesearch`, `scale_by_backtracking_linesearch`), or None.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        def rosenbrock(p):
            x, y = p["x"], p["y"]
            return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2

        start = {"x": jnp.array(-1.2), "y": jnp.array(1.0)}
        result = gc.minimize(rosenbrock, start, gc.lbfgs(), max_steps=100, tol=1e-5)
        assert jnp.allclose(result.params["x"], 1.0, atol=1e-3) and result.num_steps < 60
        ```

    References:
        Liu & Nocedal, *On the limited memory BFGS method for large scale optimization*,
        Mathematical Programming, 1989; Nocedal & Wright, *Numerical Optimization*, 2nd ed., 2006,
        algorithms 3.5, 3.6, 7.4 and 7.5.
    """
    return recipe(
        scale_by_lbfgs(memory_size, scale_init_precond),
        scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate),
        linesearch,
        pack=pack,
    )


class MinimizeResult(NamedTuple):
    """What `minimize` returns.

    `params` and `state` are those after the last step; `num_steps` the steps taken; `num_fun_evals`
    the evaluations of value and gradient (line-search trials included); `value` and `grad_norm`
    the objective and gradient norm at `params`. `history` holds, per iterate $0..$`max_steps`
    (index 0: the start), `value`, `grad_norm` and `num_fun_evals` (cumulative); entries after the
    last step are NaN (and -1 for the counts).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        result = gc.minimize(lambda p: jnp.sum((p["w"] - 2.0) ** 2), {"w": jnp.zeros(3)}, max_steps=20)
        assert isinstance(result, gc.MinimizeResult) and float(result.grad_norm) < 1e-5
        assert jnp.allclose(result.params["w"], 2.0, atol=1e-5)
        ```
    """

    params: Params
    state: OptState
    num_steps: jax.Array
    num_fun_evals: jax.Array
    value: jax.Array
    grad_norm: jax.Array
    history: dict[str, jax.Array]


def minimize(
    value_fn: Callable[..., jax.Array],
    params: Params,
    tx: GradientTransformation | None = None,
    *,
    max_steps: int = 500,
    tol: float = 1e-6,
    fn_kwargs: dict[str, Any] | None = None,
    state: OptState | None = None,
) -> MinimizeResult:
    """Minimise a deterministic objective: run `tx` until the gradient norm is at most `tol`.

    Each step calls `tx.update(grad, state, params, value=value, grad=grad, value_fn=value_fn,
    **fn_kwargs)` and applies the update. When the optimizer has a line search, the value and
    gradient at the new params are the ones it stored (`value_and_grad_from_state`), so each step
    costs only the line search's evaluations; otherwise (Adam, SGD) they are computed once per step.
    The whole loop is one jitted `jax.lax.while_loop`, compiled once per `(value_fn, tx, max_steps)`
    and the shapes of the params (`tol`, the data and the state's hyperparameters are traced).

    Args:
        value_fn: the objective, `value_fn(params, **fn_kwargs) -> scalar`.
        params: the starting point (a pytree of float arrays).
        tx: the optimizer; None means `lbfgs()`.
        max_steps: the most steps (static integer $\\ge 0$).
        tol: stop once $\\|\\nabla f\\|_2 \\le$ `tol` (checked before each step, so a start that
            already meets it takes no step).
        fn_kwargs: further keyword arguments of `value_fn` (data), passed unchanged each step.
        state: the optimizer state to start from (to carry on a previous run, or with hyperparameters
            changed by `set_hyperparams`); None means `tx.init(params)`.

    Returns:
        A `MinimizeResult`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        f = lambda w, target: jnp.sum((w - target) ** 2)
        target = {"target": jnp.arange(4.0)}
        result = gc.minimize(f, jnp.zeros(4), fn_kwargs=target, tol=1e-4)
        assert jnp.allclose(result.params, jnp.arange(4.0)) and result.num_steps <= 3
        slow = gc.minimize(f, jnp.zeros(4), gc.sgd(0.1), fn_kwargs=target, max_steps=200, tol=1e-4)
        assert slow.num_steps > 40 and slow.num_fun_evals == slow.num_steps + 1  # no line search
        ```
    """
    tx = _DEFAULT_LBFGS if tx is None else tx
    max_steps = check_int("minimize: max_steps", max_steps)
    if not callable(value_fn):
        raise TypeError(f"minimize: value_fn must be callable, got {value_fn!r}")
    state = tx.init(params) if state is None else state
    return _minimize(value_fn, tx, max_steps, params, state, tol, dict(fn_kwargs or {}))


_DEFAULT_LBFGS = lbfgs()


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _minimize(value_fn, tx, max_steps, params, state, tol, kwargs) -> MinimizeResult:
    objective = jax.value_and_grad(lambda p: value_fn(p, **kwargs))
    has_linesearch = find_linesearch_state(state) is not None
    reuse = value_and_grad_from_state(lambda p: value_fn(p, **kwargs)) if has_linesearch else None
    value, grad = objective(params)
    dtype = jnp.result_type(jnp.float32, jnp.asarray(value).dtype)
    history = {
        "value": jnp.full((max_steps + 1,), jnp.nan, dtype).at[0].set(value),
        "grad_norm": jnp.full((max_steps + 1,), jnp.nan, dtype).at[0].set(tree_util.global_norm(grad)),
        "num_fun_evals": jnp.full((max_steps + 1,), -1, jnp.int32).at[0].set(1),
    }

    def keep_going(carry):
        _, _, _, _, step, _, history = carry
        return (step < max_steps) & (history["grad_norm"][step] > tol)

    def body(carry):
        params, state, value, grad, step, evals, history = carry
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=value_fn, **kwargs)
        params = apply_updates(params, updates)
        if has_linesearch:
            ls = find_linesearch_state(state)
            # A non-finite stored value makes value_and_grad_from_state evaluate once more.
            evals = evals + ls.info.num_linesearch_steps + jnp.where(jnp.isfinite(ls.value), 0, 1)
            value, grad = reuse(params, state=state)
        else:
            evals = evals + 1
            value, grad = objective(params)
        history = {
            "value": history["value"].at[step + 1].set(value),
            "grad_norm": history["grad_norm"].at[step + 1].set(tree_util.global_norm(grad)),
            "num_fun_evals": history["num_fun_evals"].at[step + 1].set(evals),
        }
        return params, state, value, grad, step + 1, evals, history

    carry = (params, state, value, grad, jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32), history)
    params, state, value, grad, step, evals, history = jax.lax.while_loop(keep_going, body, carry)
    return MinimizeResult(params, state, step, evals, value, history["grad_norm"][step], history)
