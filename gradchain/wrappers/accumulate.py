"""Gradient accumulation: average k micro-batch gradients, then apply the inner update once."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradchain import _checks
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, with_extra_args_support
from gradchain._checks import check_state_dtype, check_transformation
from gradchain._numerics import safe_increment


class MultiStepsState(NamedTuple):
    """State of `multi_steps`.

    Attributes:
        mini_step: micro-steps accumulated since the last real step, in `[0, every_k)` (int32).
        gradient_step: real steps taken, i.e. calls that ran the inner update (int32, saturating).
        acc_grads: the running sum of the micro-batch gradients of the current real step, one
            params-shaped tree in `accumulator_dtype`.
        inner_state: the wrapped transformation's state; it changes only on real steps.
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    acc_grads: Any
    inner_state: Any


def multi_steps(
    inner: GradientTransformation, every_k: int, *, accumulator_dtype: DTypeLike | None = None
) -> GradientTransformation:
    """Accumulate gradients over `every_k` micro-steps, then apply `inner` once to their mean.

    With micro-batch gradients $g_1, \\dots, g_k$ of one real step ($k$ = `every_k`):

    $$ u_j = 0 \\quad (j < k), \\qquad u_k = f_{\\text{inner}}\\Big(\\frac{1}{k}\\sum_{j=1}^{k} g_j\\Big) $$

    so $k$ micro-steps on batches of size $B$ give the update of one step on the batch of size $kB$
    (for a loss that averages over the batch). The inner state, and with it the step count that
    drives schedules, changes on real steps only: a schedule advances once per $k$ calls.

    Differences from `optax.MultiSteps`, on purpose (optax issue #472): the inner update runs only
    on the final micro-step (the two cases are the branches of a `jax.lax.cond`, so a non-final
    micro-step does no inner work at run time; under `jax.vmap` a cond becomes a select and both
    branches run), and the state holds one params-shaped buffer besides the inner state. The mean
    is the running sum divided by $k$ (optax keeps a running mean, $a \\leftarrow a + (g - a)/(j+1)$;
    the two agree to rounding). `every_k` is a static int here, not a schedule, and there is no
    `should_skip_update_fn`: wrap the inner transformation, or this one, in `apply_if_finite` or
    `skip_on_spike` instead.

    Use `has_updated(state)` to know whether the last call applied an update (to log, or to step an
    EMA of the params only on real steps).

    Args:
        inner: the transformation applied to the mean gradient on every `every_k`-th call.
        every_k: micro-steps per real step, an int >= 1 (static).
        accumulator_dtype: storage dtype of the accumulator (static). None (default) keeps each
            leaf's params dtype, which is exact for float32 params and costs nothing extra; for
            bfloat16/float16 params pass `jnp.float32`, so that summing many micro-batch gradients
            does not lose their low bits. The mean is cast back to the gradients' dtype before it
            reaches `inner`.

    Returns:
        A `GradientTransformation` with `MultiStepsState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.multi_steps(gc.sgd(learning_rate=0.1), every_k=2)
        params = {"w": jnp.zeros(2)}
        state = tx.init(params)
        u, state = tx.update({"w": jnp.array([1.0, 2.0])}, state, params)
        assert (u["w"] == 0).all() and not gc.has_updated(state)
        u, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)
        assert jnp.allclose(u["w"], jnp.array([-0.2, -0.3])) and gc.has_updated(state)
        ```

    References:
        optax `MultiSteps` (google-deepmind/optax, `optax/_src/wrappers.py`).
    """
    check_transformation("multi_steps: inner", inner)
    inner = with_extra_args_support(inner)
    k = _checks.check_int("multi_steps: every_k", every_k, minimum=1)
    acc_dtype = check_state_dtype("multi_steps", "accumulator_dtype", accumulator_dtype)

    def init(params):
        scalars = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
        mini_step, gradient_step = tree_util.place_like(scalars, params)
        acc = tree_util.zeros_like(params, acc_dtype)
        return MultiStepsState(mini_step, gradient_step, acc, inner.init(params))

    def update(updates, state, params=None, **extra_args):
        tree_util.check_same_structure(
            state.acc_grads, updates, expected_name="params", actual_name="updates", where="multi_steps"
        )
        total = jax.tree.map(lambda a, g: a + g.astype(a.dtype), state.acc_grads, updates)
        final = state.mini_step == k - 1

        def inner_update():
            mean = jax.tree.map(lambda s, g: (s / k).astype(g.dtype), total, updates)
            return inner.update(mean, state.inner_state, params, **extra_args)

        def apply(_):
            new_updates, inner_state = inner_update()
            return new_updates, inner_state, jax.tree.map(jnp.zeros_like, total)

        def accumulate(_):
            # Zeros shaped like the inner update's output; eval_shape traces it, it does not run it.
            shapes = jax.eval_shape(lambda: inner_update()[0])
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            return zeros, state.inner_state, total

        new_updates, inner_state, acc = jax.lax.cond(final, apply, accumulate, None)
        mini_step = jnp.where(final, 0, state.mini_step + 1).astype(jnp.int32)
        gradient_step = jnp.where(final, safe_increment(state.gradient_step), state.gradient_step)
        return new_updates, MultiStepsState(mini_step, gradient_step, acc, inner_state)

    return GradientTransformation(init, update)


def has_updated(state: Any) -> jax.Array:
    """Whether the last call of a `multi_steps` transformation applied the inner update.

    True after the final micro-step of a real step, False after a non-final one and before the
    first real step (optax's `MultiSteps.has_updated`). Works under `jit` (returns a boolean array).

    It describes the `multi_steps` state only: if a wrapper outside it skipped the last call
    (`apply_if_finite`, `skip_on_spike`), the `multi_steps` state did not change, and this still
    reports the real step before. Count real steps from `gradient_step` or the outer wrapper's
    counters instead.

    Args:
        state: a `MultiStepsState`, or any optimizer state containing exactly one.

    Returns:
        A boolean scalar array.

    Raises:
        ValueError: `state` contains no `MultiStepsState`, or more than one.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.clip_by_global_norm(1.0), gc.multi_steps(gc.adam(1e-3), every_k=3))
        params = {"w": jnp.zeros(2)}
        state = tx.init(params)
        flags = []
        for _ in range(6):
            _, state = tx.update({"w": jnp.ones(2)}, state, params)
            flags.append(bool(gc.has_updated(state)))
        assert flags == [False, False, True, False, False, True]
        ```
    """
    found = tree_util.find_nodes(state, MultiStepsState)
    if len(found) != 1:
        raise ValueError(
            f"has_updated: expected a state containing exactly one MultiStepsState (from multi_steps), "
            f"found {len(found)}"
        )
    s = found[0]
    return jnp.logical_and(s.mini_step == 0, s.gradient_step > 0)
