"""Tests for gradchain/transforms/clipping.py: `clip`, `clip_by_global_norm`, `clip_by_block_rms`.

Each runs for 100 steps on a fixed gradient sequence over a tree of four leaves of different shapes
and magnitudes (so that some leaves are always clipped, some never, and some sometimes), with
steps scaled below the threshold and all-zero steps mixed in, and is compared step by step with a
float64 numpy transcription of its formula (tests/reference.py) and with optax. PyTorch's
`clip_grad_norm_` (eps = 1e-6) is checked against numpy here and against torch by the optimizer tests.
Bad arguments, integer params and updates, and count saturation are tested for every ingredient in
tests/transforms/test_boundaries.py.
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
    TREE_SCALES,
    TREE_SHAPES,
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
from references.clipping import ref_clip, ref_clip_by_block_rms, ref_clip_by_global_norm, ref_global_norm

import gradchain as gc

# Every comparison here measures RTOL relative to the leaf's largest magnitude at each step
# (`per_step=True`): a step below a threshold must be as exact as one above it.

# Steps 0 and 50 are all-zero; every 7th step is scaled down by 100 (below every threshold here);
# the last step is ordinary, so the recorded global norm can be checked after the run.
STEP_SCALES = [0.0 if k in (0, 50) else 0.01 if k % 7 == 3 else 1.0 for k in range(N_STEPS)]


def make_grads(dtype: Any = np.float32, seed: int = 0) -> list:
    return standard_grads(dtype, seed, step_scales=STEP_SCALES)


GRADS = make_grads()
PARAMS = param_tree()
# The global norm of an ordinary step is ~40 (leaf "c" dominates), of a scaled-down step ~0.4.
MAX_NORM = 20.0
MAX_DELTA = 0.5
THRESHOLD = 0.5  # block RMS: "c" (rms ~10) clipped at ordinary steps, "b" and "d" never, "a" sometimes


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]
    reference: Callable[[list], list]  # gradient trees -> expected update trees (float64)
    optax: Callable[[], Any] | None
    hyperparams: dict[str, float]


CASES = [
    Case(
        "clip",
        lambda: gc.clip(MAX_DELTA),
        lambda g: reference_tree(ref_clip, g, stored(MAX_DELTA)),
        lambda: optax.clip(MAX_DELTA),
        {"max_delta": MAX_DELTA},
    ),
    Case(
        "clip_by_global_norm-eps=0",
        lambda: gc.clip_by_global_norm(MAX_NORM),
        lambda g: ref_clip_by_global_norm(g, stored(MAX_NORM)),
        lambda: optax.clip_by_global_norm(MAX_NORM),
        {"max_norm": MAX_NORM, "eps": 0.0},
    ),
    Case(
        "clip_by_global_norm-eps=1e-6",
        lambda: gc.clip_by_global_norm(MAX_NORM, eps=1e-6),
        lambda g: ref_clip_by_global_norm(g, stored(MAX_NORM), stored(1e-6)),
        None,
        {"max_norm": MAX_NORM, "eps": 1e-6},
    ),
    Case(
        "clip_by_block_rms",
        lambda: gc.clip_by_block_rms(THRESHOLD),
        lambda g: reference_tree(ref_clip_by_block_rms, g, stored(THRESHOLD)),
        lambda: optax.clip_by_block_rms(THRESHOLD),
        {"threshold": THRESHOLD},
    ),
]
CASE_IDS = [c.id for c in CASES]
OPTAX_CASES = [c for c in CASES if c.optax is not None]
REAL_AND_COMPLEX = [c for c in CASES if c.id != "clip"]


# case id -> the case's jitted 100-step run on GRADS, computed once for the tests below.
_gradchain_run = cached_runs(CASES, PARAMS, GRADS)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(case: Case):
    assert_trajectory_close(_gradchain_run(case.id), case.reference(GRADS), RTOL, per_step=True)


@pytest.mark.parametrize("case", OPTAX_CASES, ids=[c.id for c in OPTAX_CASES])
def test_matches_optax(case: Case):
    expected = run_transform(case.optax(), PARAMS, GRADS, jit=False)
    assert_trajectory_close(_gradchain_run(case.id), expected, RTOL, per_step=True)


def test_the_test_sequence_exercises_both_sides_of_each_threshold():
    norms = [ref_global_norm(g) for g in GRADS]
    assert sum(n > MAX_NORM for n in norms) > 50 and sum(0 < n < MAX_NORM for n in norms) > 5
    assert sum(n == 0 for n in norms) == 2
    rms = {k: [float(np.sqrt(np.mean(np.square(g[k], dtype=np.float64)))) for g in GRADS] for k in "abcd"}
    assert sum(r > THRESHOLD for r in rms["a"]) > 5 and sum(0 < r < THRESHOLD for r in rms["a"]) > 5
    assert all(r < THRESHOLD for r in rms["b"] + rms["d"])
    assert sum(r > THRESHOLD for r in rms["c"]) > 80
    values = np.concatenate([g["c"].ravel() for g in GRADS])
    assert (np.abs(values) > MAX_DELTA).mean() > 0.5 and (np.abs(values) < MAX_DELTA).mean() > 0.01


def test_reference_comparison_can_fail():
    # Per-leaf norms instead of the global norm, or eps dropped where it matters, must not pass.
    per_leaf = [{k: ref_clip_by_global_norm([{k: g[k]}], stored(MAX_NORM))[0][k] for k in g} for g in GRADS]
    with pytest.raises(AssertionError):
        assert_trajectory_close(_gradchain_run("clip_by_global_norm-eps=0"), per_leaf, RTOL, per_step=True)
    tiny = [jax.tree.map(lambda x: x * np.float32(1e-6), g) for g in GRADS[:5]]
    run = run_transform(gc.clip_by_global_norm(1e-5, eps=1e-6), PARAMS, tiny)
    with pytest.raises(AssertionError):
        assert_trajectory_close(run, ref_clip_by_global_norm(tiny, stored(1e-5)), RTOL, per_step=True)
    assert_trajectory_close(run, ref_clip_by_global_norm(tiny, stored(1e-5), stored(1e-6)), RTOL, per_step=True)


@pytest.mark.parametrize("case", [c for c in CASES if c.id.startswith("clip_by_global")], ids=lambda c: c.id)
def test_global_norm_is_recorded_before_clipping(case: Case):
    state = _gradchain_run(case.id).state
    assert state.global_norm.dtype == jnp.float32
    np.testing.assert_allclose(float(state.global_norm), ref_global_norm(GRADS[-1]), rtol=RTOL)
    assert float(gc.tree.tree_get(state, "global_norm")) == float(state.global_norm)
    tx = case.make()
    state = tx.init(None)
    for g in GRADS[:4]:  # a zero step, an ordinary one, another one and a small one
        _, state = tx.update(jax.tree.map(jnp.asarray, g), state)
        np.testing.assert_allclose(float(state.global_norm), ref_global_norm(g), rtol=RTOL)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float64_matches_reference(x64, case: Case):
    grads = make_grads(np.float64)
    run = run_transform(case.make(), param_tree(dtype=np.float64), grads, jit=False)
    assert all(u.dtype == np.float64 for u in jax.tree.leaves(run[-1]))
    assert all(v.dtype == jnp.float64 for v in gc.hyperparams(run.state).values())
    assert_trajectory_close(run, case.reference(grads), RTOL64, per_step=True)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_keeps_dtype(case: Case, dtype):
    steps = 16
    grads = grad_sequence(
        TREE_SHAPES, steps, seed=3, dtype=dtype, leaf_scales=TREE_SCALES, step_scales=STEP_SCALES[:steps]
    )
    run = run_transform(case.make(), param_tree(dtype=dtype), grads, jit=False)
    for updates in run:
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    assert all((u == 0).all() for u in jax.tree.leaves(run[0]))  # the all-zero step: no NaN
    # The norm / rms and the factor in float32, one rounding of each update to `dtype`.
    half_ulp = float(jnp.finfo(dtype).eps) / 2
    assert_trajectory_close(run, case.reference(grads), half_ulp + RTOL, per_step=True)


@pytest.mark.parametrize("case", REAL_AND_COMPLEX, ids=[c.id for c in REAL_AND_COMPLEX])
def test_float16_squares_do_not_overflow(case: Case):
    # |g|^2 for g = 300 is 9e4, above float16's maximum (65504): the norm must be computed in float32.
    grads = [{"a": np.full(4, 300.0, np.float16), "b": np.full(3, -200.0, np.float16)}]
    run = run_transform(case.make(), {"a": np.zeros(4, np.float16), "b": np.zeros(3, np.float16)}, grads, jit=False)
    assert_trajectory_close(run, case.reference(grads), float(jnp.finfo(jnp.float16).eps) / 2, per_step=True)


@pytest.mark.parametrize("case", REAL_AND_COMPLEX, ids=[c.id for c in REAL_AND_COMPLEX])
def test_complex_params(case: Case):
    grads = make_grads(np.complex64, seed=5)
    run = run_transform(case.make(), param_tree(dtype=np.complex64), grads, jit=False)
    assert all(u.dtype == np.complex64 for u in jax.tree.leaves(run[-1]))
    # The reference uses |g|^2 = g conj(g); summing g^2 would give a complex "norm" and fail here.
    assert_trajectory_close(run, case.reference(grads), RTOL, per_step=True)
    if case.id.startswith("clip_by_global"):
        assert run.state.global_norm.dtype == jnp.float32
        np.testing.assert_allclose(float(run.state.global_norm), ref_global_norm(grads[-1]), rtol=RTOL)


def test_clip_by_value_rejects_complex_updates_naming_the_leaf():
    tx = gc.clip(1.0)
    with pytest.raises(TypeError, match=r"leaf b\b"):
        tx.update({"a": jnp.ones(2), "b": jnp.ones(2, jnp.complex64)}, tx.init({"a": jnp.ones(2), "b": jnp.ones(2)}))
    with pytest.raises(TypeError, match=r"leaf b\b"):
        tx.init({"a": jnp.ones(2), "b": jnp.ones(2, jnp.complex64)})


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hyperparams_in_state(case: Case):
    assert_hyperparams(_gradchain_run(case.id).state, case.hyperparams)


@pytest.mark.parametrize(
    "make", [lambda: gc.clip_by_global_norm(0.0), lambda: gc.clip_by_block_rms(0.0)], ids=["global_norm", "block_rms"]
)
def test_zero_threshold_gives_zero_updates_without_nan(make):
    tx = make()
    state = tx.init(None)
    for scale in [0.0, 1.0]:
        updates, state = tx.update({"a": jnp.full(3, scale), "b": jnp.zeros(2)}, state)
        assert all((np.asarray(u) == 0).all() for u in jax.tree.leaves(updates))


@pytest.mark.parametrize(
    "make, name",
    [(gc.clip_by_global_norm, "max_norm"), (gc.clip_by_block_rms, "threshold")],
    ids=["global_norm", "block_rms"],
)
def test_a_schedule_threshold_is_rejected_or_followed(make, name):
    def schedule(count):
        return 1.0 + count

    try:
        tx = make(schedule)
    except (TypeError, ValueError) as e:  # rejecting it, naming the argument, is fine too
        assert name in str(e)
        return
    state = tx.init(None)
    for k in range(3):
        updates, state = tx.update({"w": jnp.full(4, 100.0)}, state)
        # One leaf of 4 equal entries: global norm = 2 * rms, and both are clipped to schedule(k).
        size = float(np.linalg.norm(np.asarray(updates["w"])))
        expected = schedule(k) if name == "max_norm" else 2 * schedule(k)
        np.testing.assert_allclose(size, expected, rtol=RTOL)
