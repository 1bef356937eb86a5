"""Tests for gradchain/transforms/scaling.py: `scale`, `scale_by_learning_rate`, `scale_by_schedule`.

Each ingredient runs for 100 steps on a fixed gradient sequence over a tree of four leaves of
different shapes and magnitudes, and is compared step by step with a float64 numpy transcription of
its formula (tests/reference.py) and with optax's counterpart. Bad arguments, integer params and
updates, and count saturation are tested for every ingredient in tests/transforms/test_boundaries.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import (
    N_STEPS,
    RTOL,
    RTOL64,
    TREE_SHAPES,
    Harmonic,
    assert_hyperparams,
    assert_trajectory_close,
    cached_runs,
    grad_sequence,
    param_tree,
    reference_tree,
    run_transform,
    standard_grads,
    stored,
)
from references.scaling import ref_scale

import gradchain as gc

GRADS = standard_grads()
PARAMS = param_tree()

# A schedule whose float32 value is the correctly rounded 0.5 / (1 + count): exactly `halving.ref(k)`.
halving = Harmonic(0.5)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]  # the gradchain transformation
    step_size: Callable[[int], float]  # the factor applied at 0-based step k, as stored
    optax: Callable[[], Any]  # the optax transformation with the same arguments
    hyperparams: Callable[[int], dict[str, float]]  # expected hyperparams(state) after k >= 1 steps


CASES = [
    Case(
        "scale",
        lambda: gc.scale(-0.37),
        lambda k: stored(-0.37),
        lambda: optax.scale(-0.37),
        lambda k: {"step_size": -0.37},
    ),
    Case(
        "learning_rate",
        lambda: gc.scale_by_learning_rate(0.05),
        lambda k: -stored(0.05),
        lambda: optax.scale_by_learning_rate(0.05),
        lambda k: {"learning_rate": 0.05},
    ),
    Case(
        "learning_rate_no_flip",
        lambda: gc.scale_by_learning_rate(0.05, flip_sign=False),
        lambda k: stored(0.05),
        lambda: optax.scale_by_learning_rate(0.05, flip_sign=False),
        lambda k: {"learning_rate": 0.05},
    ),
    Case(
        "learning_rate_schedule",
        lambda: gc.scale_by_learning_rate(halving),
        lambda k: -halving.ref(k),
        lambda: optax.scale_by_learning_rate(halving),
        lambda k: {"learning_rate": 0.5 / k},  # the value used at the last step, k - 1
    ),
    Case(
        "schedule",
        lambda: gc.scale_by_schedule(halving),
        halving.ref,
        lambda: optax.scale_by_schedule(halving),
        lambda k: {"step_size": 0.5 / k},
    ),
]
CASE_IDS = [c.id for c in CASES]


# case id -> the case's jitted 100-step run on GRADS, computed once for the tests below.
_gradchain_run = cached_runs(CASES, PARAMS, GRADS)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(case: Case):
    expected = reference_tree(ref_scale, GRADS, case.step_size)
    assert_trajectory_close(_gradchain_run(case.id), expected, RTOL, per_step=True)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_optax(case: Case):
    expected = run_transform(case.optax(), PARAMS, GRADS, jit=False)
    assert_trajectory_close(_gradchain_run(case.id), expected, RTOL, per_step=True)


def test_reference_comparison_can_fail():
    # The schedule is evaluated at the count before the step (0-based); a reference shifted by one
    # step must not pass.
    shifted = reference_tree(ref_scale, GRADS, lambda k: halving.ref(k + 1))
    with pytest.raises(AssertionError):
        assert_trajectory_close(_gradchain_run("schedule"), shifted, RTOL, per_step=True)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float64_matches_reference(x64, case: Case):
    grads = standard_grads(np.float64)
    params = param_tree(dtype=np.float64)
    run = run_transform(case.make(), params, grads, jit=False)
    assert all(u.dtype == np.float64 for u in jax.tree.leaves(run[-1]))
    assert all(v.dtype == jnp.float64 for v in gc.hyperparams(run.state).values())
    assert_trajectory_close(run, reference_tree(ref_scale, grads, case.step_size), RTOL64, per_step=True)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_keeps_dtype(case: Case, dtype):
    steps = 10
    grads = grad_sequence(TREE_SHAPES, steps, seed=3, dtype=dtype, step_scales=[1.0] * (steps - 1) + [0.0])
    run = run_transform(case.make(), param_tree(dtype=dtype), grads, jit=False)
    for updates in run:
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    # One multiplication in float32, one rounding to the gradient's dtype: within one half-ulp.
    half_ulp = float(jnp.finfo(dtype).eps) / 2
    assert_trajectory_close(run, reference_tree(ref_scale, grads, case.step_size), half_ulp, per_step=True)
    assert all((u == 0).all() for u in jax.tree.leaves(run[-1]))  # the all-zero step


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hyperparams_in_state(case: Case):
    assert_hyperparams(_gradchain_run(case.id).state, case.hyperparams(N_STEPS))


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: gc.scale_by_learning_rate(halving), "learning_rate"),
        (lambda: gc.scale_by_schedule(halving), "step_size"),
    ],
    ids=["learning_rate", "schedule"],
)
def test_scheduled_hyperparam_records_the_value_of_the_last_step(make, name):
    tx = make()
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    assert float(gc.hyperparams(state)[name]) == stored(0.5)  # schedule(0) before any step
    for k in range(4):
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
        assert float(gc.hyperparams(state)[name]) == halving.ref(k)
