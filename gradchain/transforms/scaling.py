"""Scaling by a constant, a learning rate, or a schedule."""

from __future__ import annotations

from typing import NamedTuple

import jax

from gradchain._base import GradientTransformation, ScalarOrSchedule, Schedule
from gradchain._checks import Check
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import elementwise


class ScaleState(NamedTuple):
    """State of `scale`, `scale_by_learning_rate` and `scale_by_schedule`: a step count and the factor."""

    count: jax.Array
    hyperparams: Hyperparams


def scale(step_size: float | jax.Array) -> GradientTransformation:
    """Multiply the updates by a constant.

    $$ u = \\alpha\\, g $$

    Args:
        step_size: the factor $\\alpha$ (any finite number; negative flips the direction). Stored in
            the state as hyperparameter `step_size`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale(-0.5)
        updates, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
        assert (updates["w"] == -0.5).all()
        ```
    """
    spec = HyperparamSpec("scale", step_size=(step_size, Check.FINITE))

    def rule(g, *, step_size):
        return step_size * g, ()

    return elementwise(rule, ScaleState, spec)


def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *, flip_sign: bool = True) -> GradientTransformation:
    """Multiply the updates by minus the learning rate (a constant or a schedule of the step).

    $$ u = -\\eta_t\\, g $$

    The learning rate lives in the state as hyperparameter `learning_rate`: change it between steps
    with `set_hyperparams` (no recompile), and read the value used at the last step, scheduled or not,
    with `hyperparams(state)["learning_rate"]`.

    Args:
        learning_rate: $\\eta$, a number $\\ge 0$ or a schedule `step -> value` (the step starts at 0).
        flip_sign: multiply by $-\\eta$ (default, for descent) rather than $\\eta$.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_learning_rate(gc.schedules.exponential_decay(0.1, 1, 0.5))
        state = tx.init({"w": jnp.ones(2)})
        u0, state = tx.update({"w": jnp.ones(2)}, state)
        u1, state = tx.update({"w": jnp.ones(2)}, state)
        assert jnp.allclose(u0["w"], -0.1) and jnp.allclose(u1["w"], -0.05)
        ```
    """
    spec = HyperparamSpec("scale_by_learning_rate", learning_rate=(learning_rate, Check.NONNEGATIVE))
    sign = -1.0 if flip_sign else 1.0

    def rule(g, *, learning_rate):
        return sign * learning_rate * g, ()

    return elementwise(rule, ScaleState, spec)


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiply the updates by a schedule of the step count.

    $$ u = s(t)\\, g, \\quad t = 0, 1, 2, \\dots $$

    The value used at the last step is readable as hyperparameter `step_size`.

    Args:
        step_size_fn: a function `step -> factor` (see `gradchain.schedules`).

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_schedule(lambda step: 1.0 / (1.0 + step))
        state = tx.init({"w": jnp.ones(2)})
        _, state = tx.update({"w": jnp.ones(2)}, state)
        u, state = tx.update({"w": jnp.ones(2)}, state)
        assert jnp.allclose(u["w"], 0.5)
        ```
    """
    if not callable(step_size_fn):
        raise TypeError(f"scale_by_schedule: step_size_fn must be callable, got {step_size_fn!r}")
    spec = HyperparamSpec("scale_by_schedule", step_size=(step_size_fn, Check.ANY))

    def rule(g, *, step_size):
        return step_size * g, ()

    return elementwise(rule, ScaleState, spec)
