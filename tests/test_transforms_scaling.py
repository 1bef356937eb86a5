"""Tests for gradchain/transforms/scaling.py: `scale`, `scale_by_learning_rate`, `scale_by_schedule`.

Each ingredient runs for 100 steps on a fixed gradient sequence over a tree of four leaves of
different shapes and magnitudes, and is compared step by step with a float64 numpy transcription of
its formula (tests/reference.py) and with optax's counterpart.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import (
    TREE_SCALES,
    TREE_SHAPES,
    assert_trajectory_close,
    grad_sequence,
    param_tree,
    ref_scale,
    reference_tree,
    run_transform,
    stored,
    x64_enabled,
)

import gradchain as gc

N_STEPS = 100
RTOL = 1e-6  # float32, relative to the leaf's largest magnitude
RTOL64 = 1e-12
INT32_MAX = int(np.iinfo(np.int32).max)

GRADS = grad_sequence(TREE_SHAPES, N_STEPS, seed=0, leaf_scales=TREE_SCALES)
PARAMS = param_tree(TREE_SHAPES)


def halving(count):
    """A schedule whose float32 value is the correctly rounded 0.5 / (1 + count): exactly `stored(...)`."""
    return 0.5 / (1.0 + count)


def halving_ref(k: int) -> float:
    return stored(0.5 / (1.0 + k))


@pytest.fixture
def x64():
    with x64_enabled():
        yield


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
        lambda k: -halving_ref(k),
        lambda: optax.scale_by_learning_rate(halving),
        lambda k: {"learning_rate": 0.5 / k},  # the value used at the last step, k - 1
    ),
    Case(
        "schedule",
        lambda: gc.scale_by_schedule(halving),
        lambda k: halving_ref(k),
        lambda: optax.scale_by_schedule(halving),
        lambda k: {"step_size": 0.5 / k},
    ),
]
CASE_IDS = [c.id for c in CASES]


@functools.cache
def _gradchain_run(case_id: str):
    case = CASES[CASE_IDS.index(case_id)]
    return run_transform(case.make(), PARAMS, GRADS)


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
    shifted = reference_tree(ref_scale, GRADS, lambda k: halving_ref(k + 1))
    with pytest.raises(AssertionError):
        assert_trajectory_close(_gradchain_run("schedule"), shifted, RTOL, per_step=True)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float64_matches_reference(x64, case: Case):
    grads = grad_sequence(TREE_SHAPES, N_STEPS, seed=0, dtype=np.float64, leaf_scales=TREE_SCALES)
    params = param_tree(TREE_SHAPES, dtype=np.float64)
    run = run_transform(case.make(), params, grads, jit=False)
    assert all(u.dtype == np.float64 for u in jax.tree.leaves(run[-1]))
    assert all(v.dtype == jnp.float64 for v in gc.hyperparams(run.state).values())
    assert_trajectory_close(run, reference_tree(ref_scale, grads, case.step_size), RTOL64, per_step=True)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_keeps_dtype(case: Case, dtype):
    steps = 10
    grads = grad_sequence(TREE_SHAPES, steps, seed=3, dtype=dtype, step_scales=[1.0] * (steps - 1) + [0.0])
    run = run_transform(case.make(), param_tree(TREE_SHAPES, dtype=dtype), grads, jit=False)
    for updates in run:
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    # One multiplication in float32, one rounding to the gradient's dtype: within one half-ulp.
    half_ulp = float(jnp.finfo(dtype).eps) / 2
    assert_trajectory_close(run, reference_tree(ref_scale, grads, case.step_size), half_ulp, per_step=True)
    assert all((u == 0).all() for u in jax.tree.leaves(run[-1]))  # the all-zero step


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hyperparams_in_state(case: Case):
    run = _gradchain_run(case.id)
    hp = gc.hyperparams(run.state)
    expected = case.hyperparams(N_STEPS)
    assert set(hp) == set(expected)
    for name, value in expected.items():
        assert float(hp[name]) == stored(value), name


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
        assert float(gc.hyperparams(state)[name]) == halving_ref(k)


BAD_ARGS = [
    (lambda: gc.scale(float("nan")), ValueError, "step_size"),
    (lambda: gc.scale(float("inf")), ValueError, "step_size"),
    (lambda: gc.scale(-float("inf")), ValueError, "step_size"),
    (lambda: gc.scale("0.1"), TypeError, "step_size"),
    (lambda: gc.scale(jnp.ones(2)), TypeError, "step_size"),
    (lambda: gc.scale_by_learning_rate(-0.1), ValueError, "learning_rate"),
    (lambda: gc.scale_by_learning_rate(float("nan")), ValueError, "learning_rate"),
    (lambda: gc.scale_by_learning_rate(float("inf")), ValueError, "learning_rate"),
    (lambda: gc.scale_by_learning_rate("0.1"), TypeError, "learning_rate"),
    (lambda: gc.scale_by_learning_rate(None), TypeError, "learning_rate"),
    (lambda: gc.scale_by_schedule(0.1), TypeError, "step_size_fn"),
    (lambda: gc.scale_by_schedule("linear"), TypeError, "step_size_fn"),
]


@pytest.mark.parametrize("make, error, match", BAD_ARGS)
def test_bad_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("bad", [jnp.ones(3, jnp.int32), jnp.ones(3, bool)], ids=["int32", "bool"])
def test_integer_or_boolean_params_raise_at_init(case: Case, bad):
    with pytest.raises(TypeError, match=r"\['b'\]"):
        case.make().init({"a": jnp.ones(2), "b": bad})


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_integer_updates_raise(case: Case):
    tx = case.make()
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(TypeError, match=r"\['b'\]"):
        tx.update({"a": jnp.ones(2), "b": jnp.ones(3, jnp.int32)}, tx.init(params), params)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_count_saturates(case: Case):
    tx = case.make()
    params = {"w": jnp.ones(3)}
    state = tx.init(params)._replace(count=jnp.asarray(INT32_MAX - 1, jnp.int32))
    update = jax.jit(tx.update)
    for _ in range(3):
        updates, state = update({"w": jnp.full(3, 2.0)}, state, params)
        assert np.isfinite(np.asarray(updates["w"])).all()
    assert state.count.dtype == jnp.int32
    assert int(state.count) == INT32_MAX
