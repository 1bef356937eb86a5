"""Tests for gradchain/transforms/weight_decay.py: `add_decayed_weights` and `add_l2_regularization`.

Both add $\\lambda p$ to the updates (where they sit in a chain makes the decay decoupled or coupled;
the optimizer tests check that). Each variant (constant, tree mask, callable mask, schedule) runs for
100 steps on a fixed gradient sequence over a tree of four leaves of different shapes and
magnitudes, and is compared step by step with a float64 numpy transcription of the formula
(tests/reference.py) and with optax's `add_decayed_weights`. Bad weight decays, integer params,
mismatched update trees and count saturation are tested for every ingredient in
tests/transforms/test_boundaries.py; the masks and the params the decay needs are tested here.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
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
    grad_sequence,
    param_tree,
    reference_tree,
    run_transform,
    standard_grads,
    stored,
)
from references.weight_decay import ref_decay

import gradchain as gc

WEIGHT_DECAY = 0.3

GRADS = standard_grads()
PARAMS = param_tree()

TREE_MASK = {"a": False, "b": True, "c": True, "d": False}


def matrices_only(params):
    """A callable mask: decay leaves with at least two dimensions (here "c" and "d")."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


# A schedule whose float32 value is the correctly rounded 0.25 / (1 + count): exactly `halving.ref(k)`.
halving = Harmonic(0.25)


@dataclasses.dataclass(frozen=True)
class Variant:
    id: str
    weight_decay: Any  # a number or a schedule
    weight_decay_ref: Any  # the same for the reference: k -> value at 0-based step k, as stored
    mask: Any  # None, a tree of bools, or a function of the params
    active: dict[str, bool]  # which leaves of the test tree are decayed


VARIANTS = [
    Variant("constant", WEIGHT_DECAY, lambda k: stored(WEIGHT_DECAY), None, dict.fromkeys("abcd", True)),
    Variant("tree_mask", WEIGHT_DECAY, lambda k: stored(WEIGHT_DECAY), TREE_MASK, TREE_MASK),
    Variant(
        "callable_mask",
        WEIGHT_DECAY,
        lambda k: stored(WEIGHT_DECAY),
        matrices_only,
        {"a": False, "b": False, "c": True, "d": True},
    ),
    Variant("schedule", halving, halving.ref, None, dict.fromkeys("abcd", True)),
]
INGREDIENTS = {"add_decayed_weights": gc.add_decayed_weights, "add_l2_regularization": gc.add_l2_regularization}
CASES = list(itertools.product(INGREDIENTS, VARIANTS))
CASE_IDS = [f"{name}-{v.id}" for name, v in CASES]


def _make(name: str, variant: Variant):
    return INGREDIENTS[name](variant.weight_decay, mask=variant.mask)


def _reference(variant: Variant, grads: list, params: Any) -> list:
    """Per leaf: g + lambda p where the mask is on, g unchanged where it is off."""
    full = reference_tree(ref_decay, grads, variant.weight_decay_ref, params=params)
    return [
        {k: (full[step][k] if variant.active[k] else np.asarray(grads[step][k])) for k in grads[step]}
        for step in range(len(grads))
    ]


@functools.cache
def _gradchain_run(name: str, variant_id: str):
    variant = next(v for v in VARIANTS if v.id == variant_id)
    return run_transform(_make(name, variant), PARAMS, GRADS)


@pytest.mark.parametrize("name, variant", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(name: str, variant: Variant):
    run = _gradchain_run(name, variant.id)
    assert_trajectory_close(run, _reference(variant, GRADS, PARAMS), RTOL)
    for k, active in variant.active.items():
        if not active:  # masked-out leaves pass through bit for bit
            assert all((np.asarray(u[k]) == g[k]).all() for u, g in zip(run, GRADS, strict=True))


@pytest.mark.parametrize("name, variant", CASES, ids=CASE_IDS)
def test_matches_optax(name: str, variant: Variant):
    expected = run_transform(optax.add_decayed_weights(variant.weight_decay, variant.mask), PARAMS, GRADS, jit=False)
    assert_trajectory_close(_gradchain_run(name, variant.id), expected, RTOL)


def test_reference_comparison_can_fail():
    # Decaying the masked-out leaves too, or using the schedule one step late, must not pass.
    everything = dataclasses.replace(VARIANTS[1], active=dict.fromkeys("abcd", True))
    with pytest.raises(AssertionError):
        assert_trajectory_close(
            _gradchain_run("add_decayed_weights", "tree_mask"), _reference(everything, GRADS, PARAMS), RTOL
        )
    late = dataclasses.replace(VARIANTS[3], weight_decay_ref=lambda k: halving.ref(k + 1))
    with pytest.raises(AssertionError):
        assert_trajectory_close(
            _gradchain_run("add_decayed_weights", "schedule"), _reference(late, GRADS, PARAMS), RTOL
        )


@pytest.mark.parametrize("name", INGREDIENTS)
def test_uses_the_current_params_in_an_optimizer_loop(name: str):
    # p_{t+1} = p_t - lr (g_t + lambda_t p_t): the decay must use the params of each step, not those at init.
    lr = 0.1
    tx = gc.chain(INGREDIENTS[name](halving), gc.scale(-lr))
    run = run_transform(tx, PARAMS, GRADS, apply=True)
    p = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
    expected_updates = []
    for step, g in enumerate(GRADS):
        u = {k: -lr * (np.asarray(g[k], np.float64) + halving.ref(step) * p[k]) for k in p}
        expected_updates.append(u)
        p = {k: p[k] + u[k] for k in p}
    assert_trajectory_close(run, expected_updates, 1e-5)
    assert_trajectory_close([run.params], [p], 1e-5)


@pytest.mark.parametrize("name, variant", CASES, ids=CASE_IDS)
def test_float64_matches_reference(x64, name: str, variant: Variant):
    grads = standard_grads(np.float64)
    params = param_tree(dtype=np.float64)
    run = run_transform(_make(name, variant), params, grads, jit=False)
    assert all(u.dtype == np.float64 for u in jax.tree.leaves(run[-1]))
    assert gc.hyperparams(run.state)["weight_decay"].dtype == jnp.float64
    assert_trajectory_close(run, _reference(variant, grads, params), RTOL64)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name, variant", CASES, ids=CASE_IDS)
def test_low_precision_keeps_dtype(name: str, variant: Variant, dtype):
    steps = 10
    grads = grad_sequence(TREE_SHAPES, steps, seed=3, dtype=dtype, step_scales=[0.0] + [1.0] * (steps - 1))
    params = param_tree(dtype=dtype)
    run = run_transform(_make(name, variant), params, grads, jit=False)
    for updates in run:
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    # g + lambda p in float32, one rounding to `dtype` (half an ulp of the result, which is at most
    # the leaf's largest value); on the all-zero first step the update is lambda p.
    half_ulp = float(jnp.finfo(dtype).eps) / 2
    assert_trajectory_close(run, _reference(variant, grads, params), half_ulp + RTOL)


@pytest.mark.parametrize("name, variant", CASES, ids=CASE_IDS)
def test_complex_params(name: str, variant: Variant):
    grads = standard_grads(np.complex64, seed=5)
    params = param_tree(dtype=np.complex64)
    run = run_transform(_make(name, variant), params, grads, jit=False)
    assert all(u.dtype == np.complex64 for u in jax.tree.leaves(run[-1]))
    assert_trajectory_close(run, _reference(variant, grads, params), RTOL)


@pytest.mark.parametrize("name, variant", CASES, ids=CASE_IDS)
def test_hyperparams_in_state(name: str, variant: Variant):
    # The value used at the last step (a schedule's, at the 0-based step N_STEPS - 1), as stored.
    assert_hyperparams(_gradchain_run(name, variant.id).state, {"weight_decay": variant.weight_decay_ref(N_STEPS - 1)})


@pytest.mark.parametrize("name", INGREDIENTS)
def test_scheduled_weight_decay_records_the_value_of_the_last_step(name: str):
    tx = INGREDIENTS[name](halving)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    assert float(gc.hyperparams(state)["weight_decay"]) == stored(0.25)  # schedule(0) before any step
    for k in range(4):
        updates, state = tx.update({"w": jnp.zeros(2)}, state, params)
        assert float(gc.hyperparams(state)["weight_decay"]) == halving.ref(k)
        assert (np.asarray(updates["w"]) == np.float32(halving.ref(k))).all()
    with pytest.raises(ValueError, match="weight_decay"):  # a scheduled value cannot be overridden
        gc.set_hyperparams(state, weight_decay=0.1)


@pytest.mark.parametrize("name", INGREDIENTS)
@pytest.mark.parametrize("mask", [None, TREE_MASK, matrices_only], ids=["no_mask", "tree_mask", "callable_mask"])
def test_update_without_params_raises(name: str, mask):
    tx = INGREDIENTS[name](0.1, mask=mask)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="params"):
        tx.update(GRADS[0], state)


@pytest.mark.parametrize("name", INGREDIENTS)
@pytest.mark.parametrize(
    "mask, error, match",
    [
        ({"a": True, "b": True}, ValueError, "mask"),  # leaves missing from the mask
        ({"a": True, "b": True, "c": True, "d": True, "e": True}, ValueError, "mask"),  # an extra leaf
        ({"a": True, "b": 1, "c": True, "d": True}, TypeError, "mask"),  # not a boolean
        (lambda params: {"a": True}, ValueError, "mask"),  # a callable giving the wrong tree
    ],
    ids=["missing", "extra", "int_leaf", "callable_wrong_tree"],
)
def test_bad_mask_raises(name: str, mask, error, match):
    tx = INGREDIENTS[name](0.1, mask=mask)
    state = tx.init(PARAMS)
    with pytest.raises(error, match=match):
        tx.update(GRADS[0], state, PARAMS)


@pytest.mark.parametrize("name", sorted(INGREDIENTS))
def test_numpy_bool_mask_leaves_work_like_python_bools(name: str):
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    grads = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    tx = INGREDIENTS[name](0.5, mask={"a": np.bool_(True), "b": np.bool_(False)})
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["a"]), 0.5)
    np.testing.assert_array_equal(np.asarray(updates["b"]), 0.0)
