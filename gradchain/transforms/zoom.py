"""The zoom line search: step sizes that satisfy the strong Wolfe conditions.

Sufficient decrease and small curvature, found by the interval search and zoom of Nocedal & Wright
(algorithms 3.5 and 3.6), the line search of L-BFGS. It follows optax's `scale_by_zoom_linesearch`
(same arguments, defaults and decisions, so the same iterates), with the numeric hyperparameters
held in the state. Its state types live in `gradchain.transforms.linesearch`, next to
`find_linesearch_state`, which looks for them; the helpers it shares with the backtracking search
are there too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain._base import GradientTransformation, Updates
from gradchain._checks import Check, check_int, check_leaf_dtypes
from gradchain._hyperparams import HyperparamSpec
from gradchain.transforms.linesearch import (
    ScaleByZoomLinesearchState,
    ZoomLinesearchInfo,
    check_linesearch_args,
    nan_to_inf,
    scalar_dtype,
    scaled,
    step_along,
    value_fn_kwargs,
    vdot,
)

_ZOOM = "scale_by_zoom_linesearch"


class _Zoom(NamedTuple):
    """The loop state of one zoom line search (one point on the line, the bracket, the best safe step)."""

    count: jax.Array
    stepsize: jax.Array
    value: jax.Array
    grad: Updates
    slope: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array
    interval_found: jax.Array
    done: jax.Array
    failed: jax.Array
    low: jax.Array
    value_low: jax.Array
    slope_low: jax.Array
    high: jax.Array
    value_high: jax.Array
    slope_high: jax.Array
    cubic_ref: jax.Array
    value_cubic_ref: jax.Array
    safe_stepsize: jax.Array
    safe_value: jax.Array
    safe_grad: Updates


def _cubic_minimizer(a, fa, dfa, b, fb, c, fc):
    """The critical point of the cubic through $(a, f_a)$ with slope $f'_a$, $(b, f_b)$ and $(c, f_c)$.

    NaN when the cubic has none (negative discriminant); the caller then rejects it.
    """
    db, dc = b - a, c - a
    rb, rc = fb - fa - dfa * db, fc - fa - dfa * dc  # what the linear part leaves over at b and c
    denom = (db * dc) ** 2 * (db - dc)
    p3 = (dc**2 * rb - db**2 * rc) / denom  # coefficient of (x - a)^3
    p2 = (db**3 * rc - dc**3 * rb) / denom  # coefficient of (x - a)^2
    return a + (-p2 + jnp.sqrt(p2 * p2 - 3.0 * p3 * dfa)) / (3.0 * p3)


def _quadratic_minimizer(a, fa, dfa, b, fb):
    """The critical point of the quadratic through $(a, f_a)$ with slope $f'_a$ and $(b, f_b)$."""
    db = b - a
    p2 = (fb - fa - dfa * db) / db**2
    return a - dfa / (2.0 * p2)


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    max_learning_rate: float | jax.Array | None = None,
    tol: float | jax.Array = 0.0,
    increase_factor: float | jax.Array = 2.0,
    slope_rtol: float | jax.Array = 1e-4,
    curv_rtol: float | jax.Array = 0.9,
    approx_dec_rtol: float | jax.Array | None = 1e-6,
    stepsize_precision: float | jax.Array = 1e-5,
    initial_guess_strategy: str = "keep",
) -> GradientTransformation:
    """Scale the update direction by a step size satisfying the strong Wolfe conditions (zoom line search).

    With $w$ the params, $u$ the incoming update, $f$ the objective and $\\phi(\\eta) = f(w + \\eta u)$,
    find $\\eta$ with sufficient decrease and small curvature:

    $$ \\phi(\\eta) \\le \\phi(0) + c_1 \\eta\\, \\phi'(0) + \\epsilon, \\qquad
       |\\phi'(\\eta)| \\le c_2 |\\phi'(0)| + \\epsilon $$

    and return $\\eta u$. The sufficient decrease may also be met by the approximate Wolfe condition
    of Hager & Zhang, $\\phi'(\\eta) \\le (2c_1 - 1)\\phi'(0)$ and
    $\\phi(\\eta) \\le \\phi(0) + \\delta |\\phi(0)|$, which holds near a minimum where rounding hides the
    decrease. The search first grows a trial step (by `increase_factor` from the initial guess)
    until it brackets an acceptable one, then zooms into the bracket by cubic or quadratic
    interpolation, or bisection when these fall too close to an end (Nocedal & Wright, algorithms
    3.5 and 3.6). When it runs out of steps, or the bracket shrinks below `stepsize_precision`, it
    takes the best step with sufficient decrease met so far, if any. Each step of the search costs
    one evaluation of the value and gradient of $f$; the value and gradient at the accepted point
    are stored in the state (read them with `value_and_grad_from_state`).

    This is optax's `scale_by_zoom_linesearch`, with the same arguments (less `verbose`), defaults
    and decisions. Differences: the numeric arguments are hyperparameters in the state (`tol`,
    `increase_factor`, `slope_rtol`, `curv_rtol`, `stepsize_precision`, and `max_learning_rate` and
    `approx_dec_rtol` when not None); extra args that `value_fn` does not take are ignored rather than
    rejected; complex params are not supported.

    Args:
        max_linesearch_steps: the most evaluations of $f$ per search (static integer $\\ge 1$).
        max_learning_rate: the largest step size tried, or None for no bound.
        tol: $\\epsilon \\ge 0$, the slack on both conditions.
        increase_factor: $> 0$, the growth of the trial step while bracketing.
        slope_rtol: $c_1 \\ge 0$ of the sufficient decrease condition.
        curv_rtol: $c_2 \\ge 0$ of the curvature condition (`inf` turns it off: a backtracking
            search by interpolation).
        approx_dec_rtol: $\\delta \\ge 0$ of the approximate Wolfe condition, or None to use only
            the Armijo condition.
        stepsize_precision: $> 0$; a bracket shorter than this ends the search with the best step
            found that decreases $f$ enough.
        initial_guess_strategy: `"keep"` starts from the last accepted step size, `"one"` from 1
            (the natural step of a quasi-Newton direction).

    Returns:
        A `GradientTransformation` with `ScaleByZoomLinesearchState`; its `update` needs the
        keyword arguments `value`, `grad` and `value_fn` (TypeError naming those missing).

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        f = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
        tx = gc.chain(gc.scale(-1.0), gc.scale_by_zoom_linesearch(max_linesearch_steps=15))
        params = {"w": jnp.zeros(2)}
        state = tx.init(params)
        value_and_grad = gc.value_and_grad_from_state(f)
        value, grad = value_and_grad(params, state=state)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=f)
        params = gc.apply_updates(params, updates)
        # The exact minimiser along -grad is at step 1/2; it meets both Wolfe conditions.
        assert jnp.allclose(params["w"], 3.0) and state[1].learning_rate == 0.5
        assert state[1].value == f(params)  # kept for the next step: no recomputation
        ```

    References:
        Nocedal & Wright, *Numerical Optimization*, 2nd ed., 2006, algorithms 3.5 and 3.6; Hager &
        Zhang, *Algorithm 851: CG_DESCENT, a conjugate gradient method with guaranteed descent*,
        ACM TOMS 2006.
    """
    max_steps = check_int(f"{_ZOOM}: max_linesearch_steps", max_linesearch_steps, minimum=1)
    if initial_guess_strategy not in ("keep", "one"):
        raise ValueError(f"{_ZOOM}: initial_guess_strategy must be 'keep' or 'one', got {initial_guess_strategy!r}")
    _check_curv_rtol(curv_rtol)
    entries: dict[str, tuple[Any, str]] = dict(
        tol=(tol, Check.NONNEGATIVE),
        increase_factor=(increase_factor, Check.POSITIVE),
        slope_rtol=(slope_rtol, Check.NONNEGATIVE),
        curv_rtol=(curv_rtol, Check.ANY),  # checked above: inf is allowed (no curvature condition)
        stepsize_precision=(stepsize_precision, Check.POSITIVE),
    )
    if max_learning_rate is not None:
        entries["max_learning_rate"] = (max_learning_rate, Check.POSITIVE)
    if approx_dec_rtol is not None:
        entries["approx_dec_rtol"] = (approx_dec_rtol, Check.NONNEGATIVE)
    spec = HyperparamSpec(_ZOOM, allow_schedules=False, **entries)

    def init(params):
        check_leaf_dtypes(_ZOOM, "param", params, complex_ok=False)
        dtype = scalar_dtype(params)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.ones((), dtype),
            value=jnp.full((), jnp.inf, dtype),
            grad=jax.tree.map(jnp.zeros_like, params),
            info=ZoomLinesearchInfo(
                jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, dtype), jnp.full((), jnp.inf, dtype)
            ),
            hyperparams=spec.init(),
        )

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args):
        check_linesearch_args(_ZOOM, params, value, grad, value_fn)
        dtype = scalar_dtype(params)
        hp = jax.tree.map(lambda x: x.astype(dtype), dict(state.hyperparams))
        fn_kwargs = value_fn_kwargs(value_fn, extra_args)
        value_and_grad = jax.value_and_grad(lambda p: value_fn(p, **fn_kwargs))
        value0 = jnp.asarray(value, dtype)
        grad = jax.tree.map(lambda g, p: jnp.asarray(g, p.dtype), grad, params)
        slope0 = vdot(updates, grad, dtype)
        # The first trial step: the last accepted one ("keep"), or 1 (a quasi-Newton step).
        guess = state.learning_rate.astype(dtype) if initial_guess_strategy == "keep" else jnp.ones((), dtype)

        def on_line(stepsize):
            v, g = value_and_grad(step_along(params, stepsize, updates))
            g = jax.tree.map(lambda gi, p: gi.astype(p.dtype), g, params)
            return jnp.asarray(v, dtype), g, vdot(g, updates, dtype)

        def errors(stepsize, v, slope):
            decrease = v - value0 - hp["slope_rtol"] * stepsize * slope0  # Armijo
            if "approx_dec_rtol" in hp:  # approximate Wolfe (Hager & Zhang)
                approx = jnp.maximum(
                    slope - (2 * hp["slope_rtol"] - 1.0) * slope0,
                    v - value0 - hp["approx_dec_rtol"] * jnp.abs(value0),
                )
                decrease = jnp.minimum(decrease, approx)
            curvature = jnp.abs(slope) - hp["curv_rtol"] * jnp.abs(slope0)
            return nan_to_inf(jnp.maximum(decrease, 0.0)), nan_to_inf(jnp.maximum(curvature, 0.0))

        def pick(cond, a, b):
            return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)

        def search_interval(s: _Zoom) -> _Zoom:
            # Algorithm 3.5: grow the trial step until it brackets an acceptable one.
            stepsize = jnp.where(s.count == 0, guess, hp["increase_factor"] * s.stepsize)
            at_max = jnp.asarray(False)
            if "max_learning_rate" in hp:
                at_max = stepsize >= hp["max_learning_rate"]
                stepsize = jnp.minimum(stepsize, hp["max_learning_rate"])
            v, g, slope = on_line(stepsize)
            dec, curv = errors(stepsize, v, slope)
            error = jnp.maximum(dec, curv)
            safe = pick(dec <= hp["tol"], (stepsize, v, g), (s.safe_stepsize, s.safe_value, s.safe_grad))
            # Too far: the objective went up (or not down enough): the minimum is before this step.
            high_is_new = (dec > 0.0) | ((v >= s.value) & (s.count > 0))
            # Gone past the minimum while still going down enough: the bracket runs backwards.
            low_is_new = (slope >= 0.0) & ~high_is_new
            new, prev = (stepsize, v, slope), (s.stepsize, s.value, s.slope)
            low, high = pick(low_is_new, new, prev), pick(low_is_new, prev, new)
            found = high_is_new | low_is_new | (error <= hp["tol"])
            done = (error <= hp["tol"]) | (at_max & ~found)
            return s._replace(
                count=s.count + 1,
                stepsize=stepsize,
                value=v,
                grad=g,
                slope=slope,
                decrease_error=dec,
                curvature_error=curv,
                interval_found=found,
                done=done,
                failed=(s.count + 1 >= max_steps) & ~done,
                low=low[0],
                value_low=low[1],
                slope_low=low[2],
                high=high[0],
                value_high=high[1],
                slope_high=high[2],
                cubic_ref=low[0],
                value_cubic_ref=low[1],
                safe_stepsize=safe[0],
                safe_value=safe[1],
                safe_grad=safe[2],
            )

        def zoom(s: _Zoom) -> _Zoom:
            # Algorithm 3.6: shrink the bracket [low, high] around an acceptable step.
            width = jnp.abs(s.high - s.low)
            left, right = jnp.minimum(s.low, s.high), jnp.maximum(s.low, s.high)
            cubic = _cubic_minimizer(
                s.low, s.value_low, s.slope_low, s.high, s.value_high, s.cubic_ref, s.value_cubic_ref
            )
            quadratic = _quadratic_minimizer(s.low, s.value_low, s.slope_low, s.high, s.value_high)
            # An interpolant's minimum too close to an end of the bracket would shrink it too slowly.
            cubic_ok = (cubic > left + 0.2 * width) & (cubic < right - 0.2 * width)
            quadratic_ok = (quadratic > left + 0.1 * width) & (quadratic < right - 0.1 * width)
            middle = jnp.where(cubic_ok, cubic, jnp.where(quadratic_ok, quadratic, (s.low + s.high) / 2.0))
            v, g, slope = on_line(middle)
            dec, curv = errors(middle, v, slope)
            error = jnp.maximum(dec, curv)
            better_safe = (dec <= hp["tol"]) & (v < s.safe_value)
            safe = pick(better_safe, (middle, v, g), (s.safe_stepsize, s.safe_value, s.safe_grad))
            done = error <= hp["tol"]
            high_is_middle = (dec > 0.0) | (v >= s.value_low)
            high_is_low = (slope * (s.high - s.low) >= 0.0) & ~high_is_middle
            mid, old_low, old_high = (
                (middle, v, slope),
                (s.low, s.value_low, s.slope_low),
                (s.high, s.value_high, s.slope_high),
            )
            high = pick(high_is_middle, mid, pick(high_is_low, old_low, old_high))
            low = pick(high_is_middle, old_low, mid)
            # The third point of the next cubic: the end of the bracket that was dropped.
            ref = pick(high_is_middle | high_is_low, old_high[:2], old_low[:2])
            too_narrow = (width <= hp["stepsize_precision"]) & (safe[0] > 0.0)
            return s._replace(
                count=s.count + 1,
                stepsize=middle,
                value=v,
                grad=g,
                slope=slope,
                decrease_error=dec,
                curvature_error=curv,
                done=done,
                failed=((s.count + 1 >= max_steps) | too_narrow) & ~done,
                low=low[0],
                value_low=low[1],
                slope_low=low[2],
                high=high[0],
                value_high=high[1],
                slope_high=high[2],
                cubic_ref=ref[0],
                value_cubic_ref=ref[1],
                safe_stepsize=safe[0],
                safe_value=safe[1],
                safe_grad=safe[2],
            )

        def fall_back(s: _Zoom) -> _Zoom:
            # Out of steps: take the best step with sufficient decrease, or none (0) when even the
            # last trial left the objective's domain.
            use_safe = (s.safe_stepsize > 0.0) | jnp.isinf(s.decrease_error)
            stepsize, v, g = pick(use_safe, (s.safe_stepsize, s.safe_value, s.safe_grad), (s.stepsize, s.value, s.grad))
            return s._replace(stepsize=stepsize, value=v, grad=g)

        def body(s: _Zoom) -> _Zoom:
            s = jax.lax.cond(s.interval_found, zoom, search_interval, s)
            return jax.lax.cond(s.failed, fall_back, lambda x: x, s)

        zero = jnp.zeros((), dtype)
        start = _Zoom(
            count=jnp.zeros((), jnp.int32),
            stepsize=zero,
            value=value0,
            grad=grad,
            slope=slope0,
            decrease_error=jnp.full((), jnp.inf, dtype),
            curvature_error=jnp.full((), jnp.inf, dtype),
            interval_found=jnp.asarray(False),
            done=jnp.asarray(False),
            failed=jnp.asarray(False),
            low=zero,
            value_low=value0,
            slope_low=slope0,
            high=zero,
            value_high=value0,
            slope_high=slope0,
            cubic_ref=zero,
            value_cubic_ref=value0,
            safe_stepsize=zero,
            safe_value=value0,
            safe_grad=grad,
        )
        final = jax.lax.while_loop(lambda s: ~(s.done | s.failed), body, start)
        new_state = ScaleByZoomLinesearchState(
            learning_rate=final.stepsize.astype(state.learning_rate.dtype),
            value=final.value.astype(state.value.dtype),
            grad=jax.tree.map(lambda g, old: g.astype(old.dtype), final.grad, state.grad),
            info=ZoomLinesearchInfo(
                final.count,
                final.decrease_error.astype(state.info.decrease_error.dtype),
                final.curvature_error.astype(state.info.curvature_error.dtype),
            ),
            hyperparams=state.hyperparams,
        )
        return scaled(final.stepsize, updates), new_state

    return GradientTransformation(init, update)


def _check_curv_rtol(curv_rtol: Any) -> None:
    if isinstance(curv_rtol, (int, float)) and not isinstance(curv_rtol, bool) and not curv_rtol >= 0:
        raise ValueError(f"{_ZOOM}: curv_rtol must be a number >= 0 (inf allowed), got {curv_rtol!r}")
