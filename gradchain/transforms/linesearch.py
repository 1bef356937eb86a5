"""Line searches: scale the update direction by a step size that the objective itself accepts.

Both ingredients take the extra update arguments `value` (the objective at the params), `grad` (its
gradient there) and `value_fn` (the objective, a function of the params), and search along the
incoming update direction $u$ for a step size $\\eta$ with a `jax.lax.while_loop`, so the update stays
jit-compatible. They keep the value (and gradient) at the accepted point in their state, so that the
next step can read them with `value_and_grad_from_state` instead of evaluating the objective again.

- `scale_by_zoom_linesearch` (in `gradchain.transforms.zoom`): strong Wolfe conditions (sufficient
  decrease and small curvature), by the interval search and zoom of Nocedal & Wright (algorithms 3.5
  and 3.6), the line search of L-BFGS.
- `scale_by_backtracking_linesearch` (here): sufficient decrease (Armijo) only, by shrinking the step.

This module holds what both share: the helpers, both line searches' state types (so that
`find_linesearch_state` finds either without an import cycle) and the reuse of their evaluation.

They follow optax's `scale_by_zoom_linesearch` and `scale_by_backtracking_linesearch` (same
arguments, defaults and decisions, so the same iterates), with the numeric hyperparameters held in
the state. Extra keyword arguments of `update` that `value_fn` names (a batch of data) are passed to
it; the others are ignored, as everywhere in a gradchain chain (optax raises on them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, OptState, Params, Updates, accepted_keywords
from gradchain._checks import Check, check_int, check_leaf_dtypes
from gradchain._hyperparams import Hyperparams, HyperparamSpec

_BACKTRACKING = "scale_by_backtracking_linesearch"

# ---------------------------------------------------------------------------------------------------
# Shared helpers


def scalar_dtype(params: Params) -> jnp.dtype:
    """The dtype of values, slopes and step sizes: the params' widest float dtype, at least float32."""
    return jnp.result_type(jnp.float32, *(jnp.dtype(x.dtype) for x in jax.tree.leaves(params)))


def vdot(a: Any, b: Any, dtype: jnp.dtype) -> jax.Array:
    """$\\sum_\\text{leaves} \\langle a, b \\rangle$, accumulated in `dtype`."""
    terms = [
        jnp.vdot(x.astype(dtype), y.astype(dtype)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros((), dtype)


def step_along(params: Params, stepsize: jax.Array, updates: Updates) -> Params:
    """$w + \\eta u$, leaf by leaf, in each param's dtype."""
    return jax.tree.map(lambda p, u: (p + stepsize * u).astype(p.dtype), params, updates)


def scaled(stepsize: jax.Array, updates: Updates) -> Updates:
    return jax.tree.map(lambda u: (stepsize * u).astype(u.dtype), updates)


def nan_to_inf(x: jax.Array) -> jax.Array:
    # A NaN objective (outside its domain) must count as the worst possible error, never as success.
    return jnp.where(jnp.isnan(x), jnp.inf, x)


def value_fn_kwargs(value_fn: Callable, extra_args: dict[str, Any]) -> dict[str, Any]:
    """The extra args that `value_fn` takes: all with `**kwargs`, else those its signature names."""
    try:
        named = accepted_keywords(value_fn)
    except (TypeError, ValueError):
        return {}
    if named is None:
        return dict(extra_args)
    return {k: v for k, v in extra_args.items() if k in named}


def check_linesearch_args(owner: str, params: Any, value: Any, grad: Any, value_fn: Any) -> None:
    missing = [name for name, x in (("value", value), ("grad", grad), ("value_fn", value_fn)) if x is None]
    if missing:
        raise TypeError(
            f"{owner}: update needs the extra keyword arguments value (the objective at params), grad "
            f"(its gradient) and value_fn (the objective); missing: {', '.join(missing)}. Call "
            "tx.update(grad, state, params, value=value, grad=grad, value_fn=fn)"
        )
    if not callable(value_fn):
        raise TypeError(f"{owner}: value_fn must be callable, got {value_fn!r}")
    if params is None:
        raise TypeError(f"{owner}: update needs the params (the point the line search starts from)")
    check_leaf_dtypes(owner, "param", params, complex_ok=False)


# ---------------------------------------------------------------------------------------------------
# Zoom line search (strong Wolfe): its state; the search itself is in `gradchain.transforms.zoom`


class ZoomLinesearchInfo(NamedTuple):
    """What the last zoom line search did: evaluations made, and the errors of the two conditions.

    A positive `decrease_error` means no step with sufficient decrease was found (the step taken may
    not decrease the objective); a positive `curvature_error` alone is milder (the step decreases the
    objective but the curvature condition does not hold, for example with a small
    `max_learning_rate`).
    """

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array


class ScaleByZoomLinesearchState(NamedTuple):
    """State of `scale_by_zoom_linesearch`.

    `learning_rate` is the step size accepted at the last step; `value` and `grad` are the objective
    and its gradient at the accepted point (`value` is `inf` before the first step), read back by
    `value_and_grad_from_state`; `info` is a `ZoomLinesearchInfo`.
    """

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates
    info: ZoomLinesearchInfo
    hyperparams: Hyperparams


# ---------------------------------------------------------------------------------------------------
# Backtracking line search (Armijo)


class BacktrackingLinesearchInfo(NamedTuple):
    """What the last backtracking search did: evaluations made, and the error of the Armijo condition."""

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """State of `scale_by_backtracking_linesearch`.

    `learning_rate` is the step size accepted at the last step; `value` the objective at the accepted
    point (`inf` before the first step); `grad` its gradient there with `store_grad=True`, else None;
    `info` a `BacktrackingLinesearchInfo`.
    """

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates | None
    info: BacktrackingLinesearchInfo
    hyperparams: Hyperparams


def scale_by_backtracking_linesearch(
    max_backtracking_steps: int,
    slope_rtol: float | jax.Array = 1e-4,
    decrease_factor: float | jax.Array = 0.8,
    increase_factor: float | jax.Array = 1.5,
    max_learning_rate: float | jax.Array = 1.0,
    atol: float | jax.Array = 0.0,
    rtol: float | jax.Array = 0.0,
    store_grad: bool = False,
) -> GradientTransformation:
    """Scale the update direction by a step size with sufficient decrease (backtracking, Armijo).

    With $w$ the params, $u$ the incoming update and $f$ the objective, start from
    $\\eta = \\min(\\gamma_+ \\eta_\\text{prev}, \\eta_\\max)$ and multiply it by $\\gamma_-$ until

    $$ f(w + \\eta u) \\le (1 + \\delta) f(w) + c\\, \\eta \\langle u, \\nabla f(w) \\rangle + \\epsilon $$

    or `max_backtracking_steps` reductions have been made (then the last $\\eta$ is taken, or 0 if the
    objective there is NaN or infinite), and return $\\eta u$. Each trial costs one evaluation of
    $f$; with `store_grad=True` the gradient at the accepted point is computed too (one backward
    pass, from the accepted trial's forward pass) and stored with the value, for
    `value_and_grad_from_state`.

    This is optax's `scale_by_backtracking_linesearch`, with the same arguments (less `verbose`),
    defaults and decisions (so up to `max_backtracking_steps + 1` evaluations). Differences: the
    numeric arguments are hyperparameters in the state; extra args that `value_fn` does not take are
    ignored rather than rejected; complex params are not supported.

    Args:
        max_backtracking_steps: the most reductions of the step per search (static integer $\\ge 0$).
        slope_rtol: $c \\ge 0$, the fraction of the linear decrease required.
        decrease_factor: $\\gamma_- \\in [0, 1)$, the reduction of the step.
        increase_factor: $\\gamma_+ > 0$, the growth of the previous step to start the next search
            (1 starts from the previous step, `inf` always from `max_learning_rate`).
        max_learning_rate: $\\eta_\\max > 0$, the largest step size tried.
        atol: $\\epsilon \\ge 0$, absolute slack on the decrease.
        rtol: $\\delta \\ge 0$, relative slack on the decrease.
        store_grad: keep the gradient at the accepted point in the state (static).

    Returns:
        A `GradientTransformation` with `ScaleByBacktrackingLinesearchState`; its `update` needs the
        keyword arguments `value`, `grad` and `value_fn` (TypeError naming those missing).

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        f = lambda p: jnp.sum(p["w"] ** 2)
        tx = gc.chain(gc.scale(-1.0), gc.scale_by_backtracking_linesearch(max_backtracking_steps=15))
        params = {"w": jnp.array([1.0, 2.0])}
        state = tx.init(params)
        value, grad = jax.value_and_grad(f)(params)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=f)
        # Step 1 overshoots to -w (no decrease); 0.8 gives -0.6 w, which decreases f enough.
        assert jnp.isclose(state[1].learning_rate, 0.8) and state[1].info.num_linesearch_steps == 2
        assert jnp.allclose(gc.apply_updates(params, updates)["w"], jnp.array([-0.6, -1.2]))
        ```

    References:
        Armijo, *Minimization of functions having Lipschitz continuous first partial derivatives*,
        Pacific Journal of Mathematics, 1966; Nocedal & Wright, *Numerical Optimization*, 2nd ed.,
        2006, algorithm 3.1.
    """
    max_steps = check_int(f"{_BACKTRACKING}: max_backtracking_steps", max_backtracking_steps)
    if not isinstance(store_grad, bool):
        raise TypeError(f"{_BACKTRACKING}: store_grad must be a bool, got {store_grad!r}")
    if isinstance(increase_factor, (int, float)) and not increase_factor > 0:
        raise ValueError(
            f"{_BACKTRACKING}: increase_factor must be a number > 0 (inf allowed), got {increase_factor!r}"
        )
    spec = HyperparamSpec(
        _BACKTRACKING,
        allow_schedules=False,
        slope_rtol=(slope_rtol, Check.NONNEGATIVE),
        decrease_factor=(decrease_factor, Check.UNIT_INTERVAL),
        increase_factor=(increase_factor, Check.ANY),  # checked above: inf is allowed
        max_learning_rate=(max_learning_rate, Check.POSITIVE),
        atol=(atol, Check.NONNEGATIVE),
        rtol=(rtol, Check.NONNEGATIVE),
    )

    def init(params):
        check_leaf_dtypes(_BACKTRACKING, "param", params, complex_ok=False)
        dtype = scalar_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.ones((), dtype),
            value=jnp.full((), jnp.inf, dtype),
            grad=jax.tree.map(jnp.zeros_like, params) if store_grad else None,
            info=BacktrackingLinesearchInfo(jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, dtype)),
            hyperparams=spec.init(),
        )

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args):
        check_linesearch_args(_BACKTRACKING, params, value, grad, value_fn)
        dtype = scalar_dtype(params)
        hp = jax.tree.map(lambda x: x.astype(dtype), dict(state.hyperparams))
        fn_kwargs = value_fn_kwargs(value_fn, extra_args)
        value0 = jnp.asarray(value, dtype)
        slope0 = vdot(updates, grad, dtype)
        no_grad = jax.tree.map(jnp.zeros_like, params)

        def decrease_error(stepsize, v):
            excess = v - (1.0 + hp["rtol"]) * value0 - stepsize * hp["slope_rtol"] * slope0
            return jnp.maximum(nan_to_inf(excess), 0.0)

        def body(loop):
            stepsize, _, g, _, count = loop
            stepsize = jnp.where(count > 0, hp["decrease_factor"] * stepsize, stepsize)
            trial = step_along(params, stepsize, updates)
            if store_grad:
                v, pullback = jax.vjp(lambda p: value_fn(p, **fn_kwargs), trial)
                v = jnp.asarray(v, dtype)
                dec = decrease_error(stepsize, v)
                # The backward pass only for the step that will be taken.
                last = (dec <= hp["atol"]) | (count == max_steps)
                g = jax.lax.cond(
                    last,
                    lambda: jax.tree.map(lambda x, p: x.astype(p.dtype), pullback(jnp.ones((), v.dtype))[0], params),
                    lambda: g,
                )
            else:
                v = jnp.asarray(value_fn(trial, **fn_kwargs), dtype)
                dec = decrease_error(stepsize, v)
            return stepsize, v, g, dec, count + 1

        def keep_going(loop):
            _, _, _, dec, count = loop
            return ~(dec <= hp["atol"]) & (count <= max_steps)

        start = (
            jnp.minimum(hp["increase_factor"] * state.learning_rate.astype(dtype), hp["max_learning_rate"]),
            value0,
            no_grad,
            jnp.full((), jnp.inf, dtype),
            jnp.zeros((), jnp.int32),
        )
        stepsize, v, g, dec, count = jax.lax.while_loop(keep_going, body, start)
        # No finite value anywhere on the searched steps: stay put rather than step into NaNs.
        stepsize = jnp.where(jnp.isinf(dec), 0.0, stepsize)
        new_state = ScaleByBacktrackingLinesearchState(
            learning_rate=stepsize.astype(state.learning_rate.dtype),
            value=v.astype(state.value.dtype),
            grad=g if store_grad else None,
            info=BacktrackingLinesearchInfo(count, dec.astype(state.info.decrease_error.dtype)),
            hyperparams=state.hyperparams,
        )
        return scaled(stepsize, updates), new_state

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------------
# Reusing the line search's evaluation

_LINESEARCH_STATES = (ScaleByZoomLinesearchState, ScaleByBacktrackingLinesearchState)


def find_linesearch_state(state: OptState) -> ScaleByZoomLinesearchState | ScaleByBacktrackingLinesearchState | None:
    """The line-search state inside an optimizer state (a chain of any nesting), or None if it has none.

    Raises ValueError if the state holds more than one line search (which one's value to use would
    be ambiguous).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        state = gc.lbfgs().init({"w": jnp.ones(3)})
        assert gc.find_linesearch_state(state) is not None
        assert gc.find_linesearch_state(gc.sgd(0.1).init({"w": jnp.ones(3)})) is None
        ```
    """
    found = tree_util.find_nodes(state, _LINESEARCH_STATES)
    if len(found) > 1:
        raise ValueError(f"the optimizer state holds {len(found)} line searches; expected at most one")
    return found[0] if found else None


def value_and_grad_from_state(value_fn: Callable[..., jax.Array]) -> Callable[..., tuple[jax.Array, Updates]]:
    """Like `jax.value_and_grad(value_fn)`, but reuse the value and gradient a line search stored.

    The returned function is called as `fn(params, *args, state=opt_state, **kwargs)`. It finds the
    line-search state in `opt_state` (see `find_linesearch_state`); if the value stored there is
    finite, it returns the stored value and gradient (computed by the line search at the point it
    accepted, which is `params` when the update has been applied), otherwise (before the first step,
    or after a non-finite value) it evaluates `jax.value_and_grad(value_fn)(params, *args, **kwargs)`.
    As `optax.value_and_grad_from_state`; the stored values are only valid when the objective does
    not change between steps (full batch).

    Args:
        value_fn: the objective, a scalar function of the params (and further arguments).

    Returns:
        A function `(params, *args, state, **kwargs) -> (value, grad)`. It raises ValueError if
        `state` holds no line search, or one that does not store the gradient
        (`scale_by_backtracking_linesearch(store_grad=False)`).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        f = lambda w: jnp.sum((w - 1.0) ** 2)
        tx = gc.lbfgs()
        params = jnp.zeros(3)
        state = tx.init(params)
        value_and_grad = gc.value_and_grad_from_state(f)
        value, grad = value_and_grad(params, state=state)  # first step: computed
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=f)
        params = params + updates
        value, grad = value_and_grad(params, state=state)  # now read from the state
        assert value == state[2].value and jnp.allclose(value, f(params))
        ```
    """
    value_and_grad = jax.value_and_grad(value_fn)

    def fn(params: Params, *args: Any, state: OptState, **kwargs: Any) -> tuple[jax.Array, Updates]:
        ls = find_linesearch_state(state)
        if ls is None:
            raise ValueError("value_and_grad_from_state: the optimizer state holds no line search")
        if ls.grad is None:
            raise ValueError(
                "value_and_grad_from_state: the line search does not store the gradient; build it with store_grad=True"
            )

        def compute():
            v, g = value_and_grad(params, *args, **kwargs)
            return jnp.asarray(v, ls.value.dtype), jax.tree.map(lambda x, s: x.astype(s.dtype), g, ls.grad)

        return jax.lax.cond(jnp.isfinite(ls.value), lambda: (ls.value, ls.grad), compute)

    return fn
