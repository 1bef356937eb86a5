"""Tests for gradchain/transforms/clipping.py: `clip`, `clip_by_global_norm`, `clip_by_block_rms`,
`adaptive_grad_clip`.

Each runs for 100 steps on a fixed gradient sequence over a tree of four leaves of different shapes
and magnitudes (so that some leaves are always clipped, some never, and some sometimes), with
steps scaled below the threshold and all-zero steps mixed in, and is compared step by step with a
float64 numpy transcription of its formula (tests/reference.py) and with optax. PyTorch's
`clip_grad_norm_` (eps = 1e-6) is checked against numpy here and against torch by the optimizer tests.
Bad arguments, integer params and updates, and count saturation are tested for every ingredient in
tests/transforms/test_boundaries.py.

`adaptive_grad_clip` reads the params: it runs on the layer-wise tree of tests/reference.py (200
steps, five leaves of ranks 0 to 4, gradients and params both fixed pseudo-random sequences) and is
compared with its float64 transcription (Brock et al. 2021 eq. 3, tests/references/clipping.py) and
optax at the end of this file, with its unit axes, bad arguments, missing params, integer, complex and
bfloat16 leaves, and the state's size per parameter.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import (
    LAYER_GRAD_SCALES,
    LAYER_PARAM_SCALES,
    LAYER_SHAPES,
    N_STEPS,
    RTOL,
    RTOL64,
    TREE_SCALES,
    TREE_SHAPES,
    Ingredient,
    assert_hyperparams,
    assert_trajectory_close,
    cached_runs,
    grad_sequence,
    ingredient_runs,
    l2_norm,
    layer_grads,
    layer_params,
    param_tree,
    per_leaf,
    reference_tree,
    run_pairs,
    run_transform,
    standard_grads,
    state_bytes_per_param,
    stored,
    wide,
)
from references.clipping import ref_agc, ref_clip, ref_clip_by_block_rms, ref_clip_by_global_norm, ref_global_norm

import gradchain as gc
from gradchain import adaptive_grad_clip

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


# ---------------------------------------------------------------------------------------------
# adaptive_grad_clip (Brock et al. 2021 eq. 3), on the layer-wise tree of tests/reference.py: 200
# steps, five leaves of ranks 0 to 4, fixed pseudo-random gradients and params, against the float64
# transcription (tests/references/clipping.py) and optax 0.2.8.


AGC_INGREDIENTS = [
    Ingredient(
        "agc",
        lambda: adaptive_grad_clip(0.5),
        lambda: optax.adaptive_grad_clip(0.5),
        lambda g, p: ref_agc(g, p, 0.5, stored(1e-3)),
    ),
    Ingredient(
        "agc_eps",
        lambda: adaptive_grad_clip(2.0, eps=1.0),
        lambda: optax.adaptive_grad_clip(2.0, eps=1.0),
        lambda g, p: ref_agc(g, p, 2.0, 1.0),
    ),
]


@functools.cache
def _agc_runs() -> dict[str, tuple[list, list]]:
    return ingredient_runs(AGC_INGREDIENTS)


@pytest.mark.parametrize("case", AGC_INGREDIENTS, ids=lambda c: c.id)
def test_ingredient_matches_numpy_reference(case: Ingredient):
    ours, _ = _agc_runs()[case.id]
    expected = [per_leaf(case.ref, g, p) for g, p in zip(layer_grads(), layer_params(), strict=True)]
    assert_trajectory_close(ours, expected, RTOL, per_step=True)


@pytest.mark.parametrize("case", AGC_INGREDIENTS, ids=lambda c: c.id)
def test_ingredient_matches_optax(case: Ingredient):
    ours, theirs = _agc_runs()[case.id]
    assert_trajectory_close(ours, theirs, RTOL, per_step=True)


@pytest.mark.parametrize(("clipping", "eps"), [(0.5, 1e-3), (2.0, 1.0)])
def test_agc_cases_clip_some_units_and_keep_others(clipping, eps):
    counts = {True: 0, False: 0}
    for g, p in zip(layer_grads()[:20], layer_params()[:20], strict=True):
        for key in LAYER_SHAPES:
            ref_agc(wide(g[key]), wide(p[key]), clipping, eps, counts)
    assert counts[True] > 0 and counts[False] > 0, counts


def test_agc_uses_the_units_of_each_rank():
    # One unit clipped, the other not, for each layout: the unit axes are the right ones.
    tx = adaptive_grad_clip(1.0, eps=0.0)
    params = {"dense": jnp.ones((2, 2)), "conv": jnp.ones((1, 1, 2, 2)), "vec": jnp.ones((1, 2))}
    g = {"dense": jnp.array([[3.0, 0.1], [4.0, 0.1]]), "conv": jnp.array([[[[3.0, 0.1], [4.0, 0.1]]]])}
    g["vec"] = jnp.array([[3.0, 4.0]])
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["dense"][:, 0], np.array([3.0, 4.0]) * np.sqrt(2) / 5, rtol=1e-6)
    np.testing.assert_allclose(u["dense"][:, 1], 0.1, rtol=1e-6)
    np.testing.assert_allclose(u["conv"][0, 0], u["dense"], rtol=1e-6)
    np.testing.assert_allclose(u["vec"], np.array([[3.0, 4.0]]) * np.sqrt(2) / 5, rtol=1e-6)  # one unit
    # An explicit axis overrides the rules, for every leaf.
    tx = adaptive_grad_clip(1.0, eps=0.0, axis=1)
    u, _ = tx.update({"w": g["dense"]}, tx.init(params), {"w": params["dense"]})
    np.testing.assert_allclose(u["w"][0], np.array([3.0, 0.1]) * np.sqrt(2) / l2_norm(np.array([3.0, 0.1])), rtol=1e-6)
    ref, _ = optax.adaptive_grad_clip(1.0, eps=0.0, axis=1).update({"w": g["dense"]}, None, {"w": params["dense"]})
    np.testing.assert_allclose(u["w"], ref["w"], rtol=1e-6)


def test_complex_gradients_and_params():
    shapes = {"v": (5,), "m": (3, 4)}
    gs = grad_sequence(shapes, 30, 3, np.complex64)
    ps = grad_sequence(shapes, 30, 4, np.complex64)
    cases = [
        (adaptive_grad_clip(0.7), lambda g, p: ref_agc(g, p, stored(0.7), stored(1e-3))),
    ]
    for tx, ref in cases:
        ours = run_pairs(tx, gs, ps)
        assert ours[0]["m"].dtype == np.complex64
        expected = [{k: ref(wide(g[k]), wide(p[k])) for k in shapes} for g, p in zip(gs, ps, strict=True)]
        assert_trajectory_close(ours, expected, RTOL, per_step=True)


AGC_LOW_PRECISION = [
    ("agc", lambda: adaptive_grad_clip(0.5), lambda g, p: ref_agc(g, p, 0.5, stored(1e-3))),
]


@pytest.mark.parametrize(("name", "make", "ref"), AGC_LOW_PRECISION, ids=[c[0] for c in AGC_LOW_PRECISION])
def test_bfloat16_leaves_round_once_from_float32_arithmetic(name, make, ref):
    gs = grad_sequence(LAYER_SHAPES, 20, 5, jnp.bfloat16, leaf_scales=LAYER_GRAD_SCALES)
    ps = grad_sequence(LAYER_SHAPES, 20, 6, jnp.bfloat16, leaf_scales=LAYER_PARAM_SCALES)
    ours = run_pairs(make(), gs, ps)
    assert ours[0]["m"].dtype == jnp.bfloat16
    expected = [per_leaf(ref, g, p) for g, p in zip(gs, ps, strict=True)]
    # One rounding to bfloat16 (8 significant bits): 2^-9 of the value, at most 2^-8 of the leaf's max.
    assert_trajectory_close(ours, expected, 2**-8, per_step=True)


AGC_BAD = [
    (lambda: adaptive_grad_clip(-0.1), ValueError, "clipping"),
    (lambda: adaptive_grad_clip(0.1, eps=-1.0), ValueError, "adaptive_grad_clip: eps"),
    (lambda: adaptive_grad_clip(0.1, axis="0"), TypeError, "axis"),
    (lambda: adaptive_grad_clip(0.1, axis=(0, 1.5)), TypeError, "axis"),
]


@pytest.mark.parametrize(("make", "error", "match"), AGC_BAD, ids=[b[2] + str(i) for i, b in enumerate(AGC_BAD)])
def test_bad_hyperparameters_are_named(make, error, match):
    with pytest.raises(error, match=re.escape(match)):
        make()


AGC_NEEDS_PARAMS = [
    ("adaptive_grad_clip", lambda: adaptive_grad_clip(0.1)),
]


@pytest.mark.parametrize(("name", "make"), AGC_NEEDS_PARAMS, ids=[n for n, _ in AGC_NEEDS_PARAMS])
def test_missing_params_and_mismatched_trees_are_named(name, make):
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(ValueError, match=f"{name} needs the params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match=r"leaf b\b"):
        tx.update({"w": jnp.ones((2, 3)), "b": jnp.ones(4)}, state, params)


@pytest.mark.parametrize("make", [lambda: adaptive_grad_clip(0.1)])
def test_integer_leaves_are_named(make):
    params = {"w": jnp.ones((2, 3)), "step": jnp.ones(3)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"leaf step\b"):
        tx.update({"w": jnp.ones((2, 3)), "step": jnp.ones(3, jnp.int32)}, state, params)


def test_agc_names_a_leaf_without_unit_axes():
    params = {"deep": jnp.ones((2,) * 6)}
    tx = adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match=re.escape("leaf deep has shape (2, 2, 2, 2, 2, 2)") + ".*axis"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match=re.escape("leaf v has shape (3,), which has no axis 2")):
        tx = adaptive_grad_clip(0.1, axis=2)
        tx.update({"v": jnp.ones(3)}, tx.init(None), {"v": jnp.ones(3)})
    tx = adaptive_grad_clip(0.1, axis=(0, 5))  # any axes, any rank
    u, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_allclose(u["deep"], 0.1, rtol=1e-6)  # |g| = |p| per unit: clipped to 0.1 g


BIG = {"w": jnp.zeros((1024, 1024), jnp.float32)}
AGC_STATE_BYTES = [
    ("adaptive_grad_clip", lambda: adaptive_grad_clip(0.1), 0.0),
]


@pytest.mark.parametrize(("name", "make", "expected"), AGC_STATE_BYTES, ids=[s[0] for s in AGC_STATE_BYTES])
def test_state_bytes_per_float32_param(name, make, expected):
    assert state_bytes_per_param(make(), BIG) == pytest.approx(expected, abs=1e-9)
