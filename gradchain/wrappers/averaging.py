"""Averages of the parameters kept in the optimizer state: EMA (Polyak), SWA, and lookahead.

Each wrapper runs an inner optimizer unchanged and, after its update, folds the NEW params
$p_t = p_{t-1} + u_t$ (rounded to the param dtype, as `apply_updates` leaves them) into an average
kept in the state. `averaged_params(state)` returns that average for evaluation, laid out like the
params; `slow_params(state)` returns lookahead's slow weights.

The wrappers see the params as the user will hold them only if nothing changes the updates after
them: put them outermost (or last in a `chain`), or inside wrappers that either pass the inner
updates through or return zeros without running the inner transformation (`multi_steps`,
`apply_if_finite`, `skip_on_spike`, `dynamic_loss_scale`, `monitored`). Inside `multi_steps` they
step once per real step; outside it, once per micro-step (folding in unchanged params).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, Params, with_extra_args_support
from gradchain._checks import Check, check_int, check_state_dtype, check_transformation
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._numerics import float_dtype, one_minus_pow, safe_increment

__all__ = [
    "LookaheadState",
    "ParamEmaState",
    "SwaState",
    "averaged_params",
    "ema_params",
    "lookahead",
    "slow_params",
    "swa",
]


# ---------------------------------------------------------------------------------------------------
# shared helpers


def _require_params(owner: str, params: Any) -> None:
    if params is None:
        raise ValueError(
            f"{owner}: params is None; this wrapper needs the current params to form the new ones "
            "(params + updates): call update(updates, state, params)"
        )


def _check_trees(owner: str, params: Any, updates: Any, kept: Any, kept_name: str) -> None:
    # Runs at trace time only; names the leaf path where the trees part.
    tree_util.check_same_structure(params, updates, expected_name="params", actual_name="updates", where=owner)
    tree_util.check_same_structure(params, kept, expected_name="params", actual_name=kept_name, where=owner)


def _copy(params: Params, dtype: DTypeLike | None) -> Params:
    """A fresh buffer per leaf holding the params (cast to `dtype`), laid out like them.

    Built as zeros (which keep each leaf's sharding, also under `eval_shape`) plus the params, so the
    state never aliases the params' buffers (a step donating both would donate one buffer twice).
    """
    zeros = tree_util.zeros_like(params, dtype)
    return jax.tree.map(lambda z, p: z + jnp.asarray(p).astype(z.dtype), zeros, params)


def _compute_dtype(*dtypes: Any) -> jnp.dtype:
    return jnp.result_type(float_dtype(), *dtypes)


def _new_params(p: jax.Array, u: jax.Array, dtype: Any) -> jax.Array:
    """The params `apply_updates` gives the user (p + u, rounded to the param dtype), as `dtype`.

    XLA may skip a rounding to a narrower dtype that is converted back up inside one computation
    (`xla_allow_excess_precision`, on by default: bfloat16 p + u then stays float32 on CPU), so the
    average would see other numbers than the params the user holds; `reduce_precision` is an explicit
    rounding that XLA keeps.
    """
    p = jnp.asarray(p)
    new = jnp.asarray(p + u).astype(p.dtype).astype(dtype)
    narrow, wide = jnp.finfo(p.dtype), jnp.finfo(dtype)
    if (narrow.nexp, narrow.nmant) != (wide.nexp, wide.nmant) and narrow.bits < wide.bits:
        new = jax.lax.reduce_precision(new, exponent_bits=narrow.nexp, mantissa_bits=narrow.nmant)
    return new


def _lerp(average: jax.Array, p: jax.Array, u: jax.Array, weight: jax.Array) -> jax.Array:
    """average + weight * (p + u - average), in at least float32, stored in the average's dtype.

    A weight of exactly 1 (the first SWA step, the first debiased EMA step, lookahead with alpha = 1)
    copies the new params exactly, as torch's AveragedModel does, instead of a + (x - a).
    """
    c = _compute_dtype(average.dtype, jnp.asarray(p).dtype, jnp.asarray(u).dtype)
    a = average.astype(c)
    x = _new_params(p, u, c)
    w = weight.astype(c)
    return jnp.where(w == 1, x, a + w * (x - a)).astype(average.dtype)


def _find(state: Any, types: tuple[type, ...], owner: str, hint: str) -> Any:
    """The outermost node of one of `types` in `state` (through chains, dicts and wrappers)."""
    found = tree_util.find_nodes(state, types)
    if not found:
        raise ValueError(f"{owner}: no {' or '.join(t.__name__ for t in types)} in this state; {hint}")
    if len(found) > 1:
        raise ValueError(
            f"{owner}: the state holds {len(found)} side-by-side {'/'.join(t.__name__ for t in types)} "
            "nodes; pass the one you want (e.g. state[i] of a chain)"
        )
    return found[0]


# ---------------------------------------------------------------------------------------------------
# EMA of the params


class ParamEmaState(NamedTuple):
    """State of `ema_params`: step count, the average of the params, `decay`, the inner state."""

    count: jax.Array
    average: Params
    hyperparams: Hyperparams
    inner_state: Any


def ema_params(
    inner: GradientTransformation,
    decay: float | jax.Array = 0.999,
    *,
    debias: bool = False,
    warmup: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Run `inner` and keep an exponential moving average (Polyak averaging) of the new params.

    After the inner update, the new params $p_t = p_{t-1} + u_t$ enter the average
    $\\bar p$ (`state.average`, read it with `averaged_params`):

    $$ \\bar p_0 = p_0, \\qquad \\bar p_t = \\bar p_{t-1} + w_t\\,(p_t - \\bar p_{t-1}), \\qquad
       w_t = \\begin{cases} 1 - \\beta & \\text{plain} \\\\
                            (1 - \\beta_t), \\ \\beta_t = \\min\\big(\\beta, \\tfrac{t}{9 + t}\\big)
                            & \\text{warmup} \\\\
                            \\dfrac{1 - \\beta}{1 - \\beta^t} & \\text{debias} \\end{cases} $$

    - plain: $\\bar p_t = \\beta \\bar p_{t-1} + (1-\\beta) p_t$ from $\\bar p_0 = p_0$, the EMA of
      TensorFlow's `ExponentialMovingAverage` and of timm's `ModelEmaV2`. It is
      `torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))` when
      `update_parameters(model)` is also called once before the first step; without that call
      torch starts from $\\bar p_1 = p_1$ and differs from this by exactly $\\beta^t (p_0 - p_1)$.
    - `warmup`: TensorFlow's `num_updates` rule, $\\beta_t = \\min(\\beta, (1 + n)/(10 + n))$ with
      $n = t - 1$ updates done before this one; the early average forgets $p_0$ quickly.
    - `debias`: Adam's bias correction (Kingma & Ba 2015, section 3): $\\bar p_t = m_t / (1 - \\beta^t)$
      with $m_0 = 0$, $m_t = \\beta m_{t-1} + (1-\\beta) p_t$, stored already divided (the recursion
      above is the same number); $p_0$ gets weight 0 from the first step on ($w_1 = 1$).

    The params entering the average are rounded to the param dtype, as `apply_updates` leaves them;
    the average is updated in at least float32 and stored in `accumulator_dtype`.

    Args:
        inner: the optimizer whose params are averaged; its state is `state.inner_state`.
        decay: $\\beta \\in [0, 1)$ (hyperparameter `decay`).
        debias: Adam-style bias correction (static).
        warmup: TensorFlow's warm-up of the decay (static). Excludes `debias`: both correct the
            start of the average.
        accumulator_dtype: storage dtype of the average (e.g. float32 for bfloat16 params); None
            keeps each param's dtype.

    Returns:
        A `GradientTransformation` with `ParamEmaState`. The average is of params + the updates it
        returns, so nothing may change those updates (see the module docstring for where it may sit).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.ema_params(gc.sgd(1.0), decay=0.5)
        params = {"w": jnp.zeros(2)}
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update({"w": -jnp.ones(2)}, state, params)
            params = gc.apply_updates(params, updates)  # w: 1, then 2
        # 0.5 * (0.5 * 0 + 0.5 * 1) + 0.5 * 2
        assert jnp.allclose(gc.averaged_params(state)["w"], 1.25)
        ```

    References:
        Polyak & Juditsky, *Acceleration of stochastic approximation by averaging*, SIAM J. Control
        Optim. 1992; TensorFlow `tf.train.ExponentialMovingAverage` (`num_updates`);
        Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    check_transformation("ema_params: inner", inner)
    inner = with_extra_args_support(inner)
    check_state_dtype("ema_params", "accumulator_dtype", accumulator_dtype)
    for name, flag in (("debias", debias), ("warmup", warmup)):
        if not isinstance(flag, bool):
            raise TypeError(f"ema_params: {name} must be True or False, got {flag!r}")
    if debias and warmup:
        raise ValueError("ema_params: debias and warmup both correct the start of the average; choose one")
    spec = HyperparamSpec("ema_params", allow_schedules=False, decay=(decay, Check.UNIT_INTERVAL))

    def init(params):
        state = ParamEmaState(jnp.zeros((), jnp.int32), None, spec.init(), None)
        state = tree_util.place_like(state, params)
        return state._replace(average=_copy(params, accumulator_dtype), inner_state=inner.init(params))

    def update(updates, state, params=None, **extra_args):
        _require_params("ema_params", params)
        _check_trees("ema_params", params, updates, state.average, "state.average")
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        count = safe_increment(state.count)
        d = state.hyperparams.decay
        t = count.astype(d.dtype)
        if debias:
            # Exactly 1 at the first step (the rounded quotient need not be), so p_0 is forgotten.
            weight = jnp.where(count == 1, 1, (1 - d) / one_minus_pow(d, t)).astype(d.dtype)
        elif warmup:
            weight = 1 - jnp.minimum(d, t / (9 + t))
        else:
            weight = 1 - d
        average = jax.tree.map(lambda a, p, u: _lerp(a, p, u, weight), state.average, params, updates)
        return updates, ParamEmaState(count, average, state.hyperparams, inner_state)

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------------
# SWA


class SwaState(NamedTuple):
    """State of `swa`: step count, how many params were averaged, their average, the inner state."""

    count: jax.Array
    n_averaged: jax.Array
    average: Params
    inner_state: Any


def swa(
    inner: GradientTransformation,
    start_step: int,
    every: int = 1,
    *,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Run `inner` and keep the equal-weight average of the params from `start_step` on (SWA).

    The params after step $t$ (1-based; $t = 0$ are the params given to `init`) are averaged when
    $t \\ge s$ and $(t - s) \\bmod k = 0$, for `start_step` $s$ and `every` $k$:

    $$ \\bar p \\leftarrow \\bar p + \\frac{p_t - \\bar p}{n + 1}, \\qquad n \\leftarrow n + 1 $$

    so after $n$ averaged steps $\\bar p$ is their arithmetic mean. This is
    `torch.optim.swa_utils.AveragedModel`'s default average (`use_buffers=False`) with
    `update_parameters(model)` called after those steps. Before the first averaged step
    `averaged_params` returns the params given to `init`. The mean is updated in at least float32
    and stored in `accumulator_dtype`.

    Args:
        inner: the optimizer whose params are averaged; its state is `state.inner_state`.
        start_step: $s \\ge 0$, the first step whose params are averaged (static; 0 includes the
            initial params).
        every: $k \\ge 1$, average every k-th step from `start_step` on (static).
        accumulator_dtype: storage dtype of the average; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` with `SwaState`; nothing may change its updates after it (see the
        module docstring).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.swa(gc.sgd(1.0), start_step=2)
        params = {"w": jnp.zeros(2)}
        state = tx.init(params)
        for _ in range(4):  # w: 1, 2, 3, 4; steps 2, 3 and 4 are averaged
            updates, state = tx.update({"w": -jnp.ones(2)}, state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(gc.averaged_params(state)["w"], 3.0) and state.n_averaged == 3
        ```

    References:
        Izmailov et al., *Averaging Weights Leads to Wider Optima and Better Generalization*, UAI 2018.
    """
    check_transformation("swa: inner", inner)
    inner = with_extra_args_support(inner)
    start_step = check_int("swa: start_step", start_step, minimum=0)
    every = check_int("swa: every", every, minimum=1)
    check_state_dtype("swa", "accumulator_dtype", accumulator_dtype)

    def init(params):
        n0 = jnp.asarray(1 if start_step == 0 else 0, jnp.int32)
        state = SwaState(jnp.zeros((), jnp.int32), n0, None, None)
        state = tree_util.place_like(state, params)
        return state._replace(average=_copy(params, accumulator_dtype), inner_state=inner.init(params))

    def update(updates, state, params=None, **extra_args):
        _require_params("swa", params)
        _check_trees("swa", params, updates, state.average, "state.average")
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        count = safe_increment(state.count)
        take = (count >= start_step) & ((count - start_step) % every == 0)
        # A step not averaged gets weight 0: the average is unchanged bit for bit.
        weight = jnp.where(take, 1 / (state.n_averaged + 1).astype(float_dtype()), 0).astype(float_dtype())
        average = jax.tree.map(lambda a, p, u: _lerp(a, p, u, weight), state.average, params, updates)
        n_averaged = state.n_averaged + take.astype(jnp.int32)
        return updates, SwaState(count, n_averaged, average, inner_state)

    return GradientTransformation(init, update)


def averaged_params(state: Any) -> Params:
    """The averaged params that `ema_params` or `swa` keep, found anywhere in `state`.

    Searches through chains, `named_chain` dicts and other wrappers for the outermost
    `ParamEmaState` / `SwaState` and returns its average: a tree laid out like the params (packed
    if the params were), in the wrapper's `accumulator_dtype` (cast it with
    `gradchain.tree.cast` to evaluate in the params' dtype).

    Args:
        state: an optimizer state containing one `ema_params` or `swa` state.

    Returns:
        The average, for evaluation.

    Raises:
        ValueError: the state holds no averaging state, or several side by side.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.clip_by_global_norm(1.0), gc.ema_params(gc.adam(1e-3)))
        state = tx.init({"w": jnp.ones(3)})
        assert jnp.allclose(gc.averaged_params(state)["w"], 1.0)  # the initial params
        ```
    """
    node = _find(
        state,
        (ParamEmaState, SwaState),
        "averaged_params",
        "wrap the optimizer with ema_params or swa (for lookahead's slow weights use slow_params)",
    )
    return node.average


# ---------------------------------------------------------------------------------------------------
# Lookahead


class LookaheadState(NamedTuple):
    """State of `lookahead`: fast steps since the last sync, the slow weights, `alpha`, the fast state."""

    steps_since_sync: jax.Array
    slow: Params
    hyperparams: Hyperparams
    inner_state: Any


def lookahead(
    fast: GradientTransformation,
    sync_period: int = 6,
    alpha: float | jax.Array = 0.5,
    *,
    slow_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Lookahead: `sync_period` steps of the fast optimizer, then one step of the slow weights.

    The slow weights $\\phi$ start at the params and live in the state; the params the user holds
    are the fast weights $\\theta$. Every step runs the fast optimizer; every $k$-th step
    (`sync_period`) the slow weights move towards the fast ones and the fast ones restart there:

    $$ \\theta_t = \\theta_{t-1} + u_t, \\qquad \\text{if } k \\mid t:\\quad
       \\phi \\leftarrow \\phi + \\alpha\\,(\\theta_t - \\phi), \\quad \\theta_t \\leftarrow \\phi $$

    (Zhang et al. 2019, Algorithm 1). The reset is done through the returned updates
    ($u = \\phi - \\theta_{t-1}$ on a sync step), so plain params and `apply_updates` follow it;
    after a sync the params equal $\\phi$ up to the rounding of $\\theta + (\\phi - \\theta)$ (one ulp).
    The fast optimizer's state is kept across syncs (the paper's default; optax's
    `reset_state=False`).

    Difference from `optax.lookahead`: optax needs `LookaheadParams(fast, slow)` as the params and
    returns updates for both; here the params are plain and the slow weights sit in the state (read
    them with `slow_params`, which the paper evaluates). The fast params the user holds follow the
    same trajectory as optax's `params.fast`.

    Args:
        fast: the inner ("fast") optimizer; its state is `state.inner_state`.
        sync_period: $k \\ge 1$ fast steps per slow step (static).
        alpha: the slow step size $\\alpha \\in [0, 1]$ (hyperparameter `alpha`).
        slow_dtype: storage dtype of the slow weights; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` with `LookaheadState`; it resets the params through its updates, so
        nothing may change them after it (see the module docstring).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.lookahead(gc.sgd(1.0), sync_period=2, alpha=0.5)
        params = {"w": jnp.zeros(1)}
        state = tx.init(params)
        for _ in range(2):  # fast: 1, 2; then sync: slow = 0 + 0.5 * (2 - 0) = 1
            updates, state = tx.update({"w": -jnp.ones(1)}, state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(gc.slow_params(state)["w"], 1.0) and jnp.allclose(params["w"], 1.0)
        ```

    References:
        Zhang, Lucas, Hinton & Ba, *Lookahead Optimizer: k steps forward, 1 step back*, NeurIPS 2019.
    """
    check_transformation("lookahead: fast", fast)
    fast = with_extra_args_support(fast)
    sync_period = check_int("lookahead: sync_period", sync_period, minimum=1)
    check_state_dtype("lookahead", "slow_dtype", slow_dtype)
    spec = HyperparamSpec("lookahead", allow_schedules=False, alpha=(alpha, Check.CLOSED_UNIT_INTERVAL))

    def init(params):
        state = LookaheadState(jnp.zeros((), jnp.int32), None, spec.init(), None)
        state = tree_util.place_like(state, params)
        return state._replace(slow=_copy(params, slow_dtype), inner_state=fast.init(params))

    def update(updates, state, params=None, **extra_args):
        _require_params("lookahead", params)
        _check_trees("lookahead", params, updates, state.slow, "state.slow")
        updates, inner_state = fast.update(updates, state.inner_state, params, **extra_args)
        steps = state.steps_since_sync + 1
        sync = steps == sync_period
        alpha = state.hyperparams.alpha

        def leaf(p, u, s):
            synced = _lerp(s, p, u, jnp.where(sync, alpha, 0).astype(alpha.dtype))
            c = _compute_dtype(p.dtype, u.dtype, s.dtype)
            reset = (synced.astype(c) - jnp.asarray(p).astype(c)).astype(u.dtype)
            return jnp.where(sync, reset, u), synced

        # Flatten against the params' structure (None leaves are empty nodes there) to map a
        # function with two outputs; the params' own tuples would confuse a tree_map over pairs.
        treedef = jax.tree.structure(params)
        pairs = [
            leaf(p, u, s)
            for p, u, s in zip(
                treedef.flatten_up_to(params),
                treedef.flatten_up_to(updates),
                treedef.flatten_up_to(state.slow),
                strict=True,
            )
        ]
        new_updates = treedef.unflatten([u for u, _ in pairs])
        slow = treedef.unflatten([s for _, s in pairs])
        steps = jnp.where(sync, 0, steps).astype(jnp.int32)
        return new_updates, LookaheadState(steps, slow, state.hyperparams, inner_state)

    return GradientTransformation(init, update)


def slow_params(state: Any) -> Params:
    """Lookahead's slow weights, found anywhere in `state`: the weights the paper evaluates.

    Args:
        state: an optimizer state containing one `lookahead` state.

    Returns:
        The slow weights, laid out like the params (in the wrapper's `slow_dtype`).

    Raises:
        ValueError: the state holds no `LookaheadState`, or several side by side.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        state = gc.lookahead(gc.adam(1e-3)).init({"w": jnp.ones(2)})
        assert jnp.allclose(gc.slow_params(state)["w"], 1.0)
        ```
    """
    node = _find(state, (LookaheadState,), "slow_params", "wrap the optimizer with lookahead")
    return node.slow
