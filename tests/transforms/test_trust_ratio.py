"""Tests for gradchain/transforms/trust_ratio.py (`scale_by_trust_ratio`, `scale_by_fromage_step`) and
the recipes of gradchain/optimizers/trust_ratio.py (`lars`, `lamb`, `fromage`).

Every ingredient runs for 200 steps over the layer-wise tree of tests/reference.py (five leaves: a
scalar, a vector, a matrix, a 3-d and a 4-d array, magnitudes from 1e-2 to 10) on fixed pseudo-random
gradients and a fixed pseudo-random sequence of params (nothing depends on the outputs, so rounding is
never amplified). Each is compared step by step, leaf by leaf, with

(a) a float64 numpy transcription of the paper's formula (tests/references/trust_ratio.py; You et al.
    2017 Algorithm 1, You et al. 2020 Algorithm 2, Bernstein et al. 2020 Algorithm 1);
(b) optax 0.2.8 with the same arguments.

The optimizers are compared the same way on their param trajectories (200 steps, gradients
independent of the params). Then: convergence on Rosenbrock and an ill-conditioned quadratic,
masks, bad hyperparameters, complex and bfloat16 leaves, hyperparameters in the state, and the
state's size per parameter. The same checks for the other layer-wise ingredients live in
test_normalization.py, test_clipping.py (`adaptive_grad_clip`) and test_sm3.py.
"""

from __future__ import annotations

import functools
import re
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
    RTOL,
    RTOL_TRAJ,
    Ingredient,
    Opt,
    assert_stacked_close,
    assert_trajectory_close,
    convergence_losses,
    grad_sequence,
    ingredient_runs,
    layer_grads,
    layer_params,
    leaf_runs,
    opt_data,
    optimizer_runs,
    per_leaf,
    run_optimizers,
    run_pairs,
    state_bytes_per_param,
    stored,
    wide,
)
from references.trust_ratio import ref_fromage, ref_lamb, ref_lars, ref_trust_ratio

import gradchain as gc
from gradchain import fromage, lamb, lars, scale_by_fromage_step, scale_by_trust_ratio

# ---------------------------------------------------------------------------------------------
# ingredients against numpy and optax


INGREDIENTS = [
    Ingredient("trust_default", scale_by_trust_ratio, optax.scale_by_trust_ratio, ref_trust_ratio),
    Ingredient(
        "trust_all",
        lambda: scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.02, eps=0.3),
        lambda: optax.scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.02, eps=0.3),
        lambda g, p: ref_trust_ratio(g, p, 0.5, stored(0.02), stored(0.3)),
    ),
]


@functools.cache
def _ingredient_runs() -> dict[str, tuple[list, list]]:
    return ingredient_runs(INGREDIENTS)


@pytest.mark.parametrize("case", INGREDIENTS, ids=lambda c: c.id)
def test_ingredient_matches_numpy_reference(case: Ingredient):
    ours, _ = _ingredient_runs()[case.id]
    expected = [per_leaf(case.ref, g, p) for g, p in zip(layer_grads(), layer_params(), strict=True)]
    assert_trajectory_close(ours, expected, RTOL, per_step=True)


@pytest.mark.parametrize("case", INGREDIENTS, ids=lambda c: c.id)
def test_ingredient_matches_optax(case: Ingredient):
    ours, theirs = _ingredient_runs()[case.id]
    assert_trajectory_close(ours, theirs, RTOL, per_step=True)


def test_fromage_step_matches_its_formula_and_optax_pieces():
    lr = 0.3
    p, g = layer_params()[0], layer_grads()[0]
    u, _ = scale_by_fromage_step(lr).update(g, scale_by_fromage_step(lr).init(p), p)
    mult = 1 / np.sqrt(1 + stored(lr) ** 2)
    for key in LAYER_SHAPES:
        expected = (wide(p[key]) - stored(lr) * wide(g[key])) * mult - wide(p[key])
        np.testing.assert_allclose(u[key], expected, rtol=2e-6, atol=1e-6 * np.abs(wide(p[key])).max())


# ---------------------------------------------------------------------------------------------
# complex and low-precision leaves


def test_complex_gradients_and_params():
    shapes = {"v": (5,), "m": (3, 4)}
    gs = grad_sequence(shapes, 30, 3, np.complex64)
    ps = grad_sequence(shapes, 30, 4, np.complex64)
    cases = [
        (scale_by_trust_ratio(trust_coefficient=0.5), lambda g, p: ref_trust_ratio(g, p, 0.0, 0.5)),
    ]
    for tx, ref in cases:
        ours = run_pairs(tx, gs, ps)
        assert ours[0]["m"].dtype == np.complex64
        expected = [{k: ref(wide(g[k]), wide(p[k])) for k in shapes} for g, p in zip(gs, ps, strict=True)]
        assert_trajectory_close(ours, expected, RTOL, per_step=True)


LOW_PRECISION = [
    ("trust", scale_by_trust_ratio, ref_trust_ratio),
]


@pytest.mark.parametrize(("name", "make", "ref"), LOW_PRECISION, ids=[c[0] for c in LOW_PRECISION])
def test_bfloat16_leaves_round_once_from_float32_arithmetic(name, make, ref):
    gs = grad_sequence(LAYER_SHAPES, 20, 5, jnp.bfloat16, leaf_scales=LAYER_GRAD_SCALES)
    ps = grad_sequence(LAYER_SHAPES, 20, 6, jnp.bfloat16, leaf_scales=LAYER_PARAM_SCALES)
    ours = run_pairs(make(), gs, ps)
    assert ours[0]["m"].dtype == jnp.bfloat16
    expected = [per_leaf(ref, g, p) for g, p in zip(gs, ps, strict=True)]
    # One rounding to bfloat16 (8 significant bits): 2^-9 of the value, at most 2^-8 of the leaf's max.
    assert_trajectory_close(ours, expected, 2**-8, per_step=True)


# ---------------------------------------------------------------------------------------------
# optimizers against numpy and optax


def _matrices(p: Any) -> Any:
    return jax.tree.map(lambda x: x.ndim > 1, p)


MASK_TREE = {"s": False, "v": False, "m": True, "h": True, "k": False}


def lr_schedule(count):
    return 2.0 / (1.0 + count / 50.0)


def lr_schedule_ref(k):
    return stored(2.0 / (1.0 + k / 50.0))


OPTS = [
    Opt("lars_default", lambda: lars(1.0), lambda: optax.lars(1.0), lambda p, g: leaf_runs(ref_lars, p, g, lr=1.0)),
    Opt(
        "lars_wd_nesterov",
        lambda: lars(3.0, weight_decay=0.01, trust_coefficient=0.02, eps=0.1, momentum=0.8, nesterov=True),
        lambda: optax.lars(3.0, weight_decay=0.01, trust_coefficient=0.02, eps=0.1, momentum=0.8, nesterov=True),
        lambda p, g: leaf_runs(
            ref_lars,
            p,
            g,
            lr=3.0,
            wd=stored(0.01),
            c=stored(0.02),
            eps=stored(0.1),
            momentum=stored(0.8),
            nesterov=True,
        ),
    ),
    Opt(
        "lars_masks",
        lambda: lars(2.0, weight_decay=0.05, weight_decay_mask=_matrices, trust_ratio_mask=MASK_TREE),
        lambda: optax.lars(2.0, weight_decay=0.05, weight_decay_mask=_matrices, trust_ratio_mask=MASK_TREE),
        lambda p, g: leaf_runs(
            ref_lars,
            p,
            g,
            lr=2.0,
            wd=stored(0.05),
            decay={k: len(LAYER_SHAPES[k]) > 1 for k in LAYER_SHAPES},
            trust=MASK_TREE,
        ),
    ),
    Opt(
        "lars_schedule",
        lambda: lars(lr_schedule, momentum=0.5),
        lambda: optax.lars(lr_schedule, momentum=0.5),
        lambda p, g: leaf_runs(ref_lars, p, g, lr=lr_schedule_ref, momentum=0.5),
    ),
    Opt("lamb_default", lambda: lamb(0.01), lambda: optax.lamb(0.01), lambda p, g: leaf_runs(ref_lamb, p, g, lr=0.01)),
    Opt(
        "lamb_wd_mask",
        lambda: lamb(0.02, b1=0.8, b2=0.99, eps=1e-4, eps_root=1e-8, weight_decay=0.1, mask=_matrices),
        lambda: optax.lamb(0.02, b1=0.8, b2=0.99, eps=1e-4, eps_root=1e-8, weight_decay=0.1, mask=_matrices),
        lambda p, g: leaf_runs(
            ref_lamb,
            p,
            g,
            lr=stored(0.02),
            b1=stored(0.8),
            b2=stored(0.99),
            eps=stored(1e-4),
            eps_root=stored(1e-8),
            wd=stored(0.1),
            decay={k: len(LAYER_SHAPES[k]) > 1 for k in LAYER_SHAPES},
        ),
    ),
    Opt(
        "fromage",
        lambda: fromage(0.01),
        lambda: optax.fromage(0.01),
        lambda p, g: leaf_runs(ref_fromage, p, g, lr=stored(0.01)),
    ),
    Opt(
        "fromage_schedule_floor",
        lambda: fromage(lambda c: 0.1 / (1.0 + c / 50.0), min_norm=0.5),
        lambda: optax.fromage(lambda c: 0.1 / (1.0 + c / 50.0), min_norm=0.5),
        lambda p, g: leaf_runs(ref_fromage, p, g, lr=lambda k: stored(0.1 / (1.0 + k / 50.0)), min_norm=0.5),
    ),
]


@functools.cache
def _optimizer_runs() -> dict[str, tuple[Any, Any]]:
    return optimizer_runs(OPTS)


@pytest.mark.parametrize("case", OPTS, ids=lambda c: c.id)
def test_optimizer_matches_numpy_reference(case: Opt):
    p0, gs = opt_data(case.no_scalar)
    ours, _ = _optimizer_runs()[case.id]
    assert_stacked_close(ours, case.ref(p0, gs), RTOL_TRAJ)


@pytest.mark.parametrize("case", OPTS, ids=lambda c: c.id)
def test_optimizer_matches_optax(case: Opt):
    ours, theirs = _optimizer_runs()[case.id]
    assert_stacked_close(ours, theirs, RTOL_TRAJ)


def test_optimizer_comparison_detects_a_convention_change():
    # The paper's LARS denominator |g| + wd |p| instead of |g + wd p|: a real difference the
    # comparison must see (the test above would pass with any tolerance otherwise).
    p0, gs = opt_data()
    ours, _ = _optimizer_runs()["lars_wd_nesterov"]
    kw = {"lr": 3.0, "wd": stored(0.01), "c": stored(0.02), "eps": stored(0.1), "momentum": stored(0.8)}
    wrong = leaf_runs(ref_lars, p0, gs, nesterov=True, paper=True, **kw)
    with pytest.raises(AssertionError):
        assert_stacked_close(ours, wrong, RTOL_TRAJ)


PACKABLE = [
    ("lars", lambda pack: lars(0.5, pack=pack)),
    ("lamb", lambda pack: lamb(0.01, pack=pack)),
    ("fromage", lambda pack: fromage(0.01, pack=pack)),
]


@pytest.mark.parametrize(("name", "make"), PACKABLE, ids=[c[0] for c in PACKABLE])
def test_packed_and_unpacked_chains_agree(name, make):
    # Packing is an execution detail: the chain unpacks around the per-leaf ingredients.
    p0, gs = opt_data()
    default, packed, unpacked = run_optimizers([make(None), make(True), make(False)], p0, gs[:50])
    assert_stacked_close(packed, unpacked, 1e-7)
    assert_stacked_close(default, unpacked, 1e-7)


# ---------------------------------------------------------------------------------------------
# convergence (problems in tests/reference.py: `rosenbrock`, `quadratic`)


# Learning rates tuned once (the trust-ratio methods take steps of relative size lr, so they need a
# decaying rate to settle); each reaches at least 1e5 below its start: 1e4 leaves a margin.
CONVERGENCE = [
    # (id, optimizer, problem, steps, factor the loss must drop by)
    ("lars_rosenbrock", lambda: lars(optax.cosine_decay_schedule(3.0, 2000)), "rosenbrock", 2000, 1e4),
    ("lamb_rosenbrock", lambda: lamb(optax.cosine_decay_schedule(0.03, 2000)), "rosenbrock", 2000, 1e4),
    ("fromage_rosenbrock", lambda: fromage(optax.cosine_decay_schedule(0.3, 2000)), "rosenbrock", 2000, 1e4),
    ("lars_quadratic", lambda: lars(optax.cosine_decay_schedule(10.0, 500)), "quadratic", 500, 1e4),
    ("lamb_quadratic", lambda: lamb(optax.cosine_decay_schedule(0.3, 500)), "quadratic", 500, 1e4),
    ("fromage_quadratic", lambda: fromage(optax.cosine_decay_schedule(0.3, 500)), "quadratic", 500, 1e4),
]


@functools.cache
def _convergence_losses() -> dict[str, tuple[float, float]]:
    return convergence_losses(CONVERGENCE)


@pytest.mark.slow  # long convergence runs; the step-by-step comparisons above are the fast check
@pytest.mark.parametrize("case", CONVERGENCE, ids=lambda c: c[0])
def test_convergence(case):
    start, end = _convergence_losses()[case[0]]
    assert np.isfinite(end) and end <= start / case[4], (start, end)


# ---------------------------------------------------------------------------------------------
# bad arguments, missing params, wrong trees


BAD = [
    (lambda: scale_by_trust_ratio(min_norm=-1.0), ValueError, "min_norm"),
    (lambda: scale_by_trust_ratio(trust_coefficient=float("nan")), ValueError, "trust_coefficient"),
    (lambda: scale_by_trust_ratio(eps=-1e-3), ValueError, "scale_by_trust_ratio: eps"),
    (lambda: scale_by_trust_ratio(eps=lambda c: 0.1), TypeError, "eps"),
    (lambda: scale_by_fromage_step(-0.1), ValueError, "learning_rate"),
    (lambda: lars(-1.0), ValueError, "learning_rate"),
    (lambda: lars(0.1, momentum=1.0), ValueError, "lars: momentum"),
    (lambda: lars(0.1, trust_coefficient=-1.0), ValueError, "lars: trust_coefficient"),
    (lambda: lars(0.1, eps=-1.0), ValueError, "lars: eps"),
    (lambda: lars(0.1, weight_decay=-1.0), ValueError, "lars: weight_decay"),
    (lambda: lars(0.1, momentum=None, nesterov=True), ValueError, "nesterov"),
    (lambda: lamb(0.1, b1=1.5), ValueError, "b1"),
    (lambda: lamb(0.1, eps=-1.0), ValueError, "eps"),
    (lambda: lamb(0.1, weight_decay=-1.0), ValueError, "lamb: weight_decay"),
    (lambda: fromage(-0.01), ValueError, "learning_rate"),
    (lambda: fromage(0.01, min_norm=-1.0), ValueError, "min_norm"),
]


@pytest.mark.parametrize(("make", "error", "match"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_hyperparameters_are_named(make, error, match):
    with pytest.raises(error, match=re.escape(match)):
        make()


NEEDS_PARAMS = [
    ("scale_by_trust_ratio", scale_by_trust_ratio),
    ("scale_by_fromage_step", lambda: scale_by_fromage_step(0.1)),
]


@pytest.mark.parametrize(("name", "make"), NEEDS_PARAMS, ids=[n for n, _ in NEEDS_PARAMS])
def test_missing_params_and_mismatched_trees_are_named(name, make):
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(ValueError, match=f"{name} needs the params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match=r"leaf b\b"):
        tx.update({"w": jnp.ones((2, 3)), "b": jnp.ones(4)}, state, params)


@pytest.mark.parametrize("make", [scale_by_trust_ratio])
def test_integer_leaves_are_named(make):
    params = {"w": jnp.ones((2, 3)), "step": jnp.ones(3)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"leaf step\b"):
        tx.update({"w": jnp.ones((2, 3)), "step": jnp.ones(3, jnp.int32)}, state, params)


# ---------------------------------------------------------------------------------------------
# hyperparameters in the state; state size


def test_hyperparams_are_readable_and_settable_without_recompiling():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    g = {"w": jnp.full((3, 4), 0.5), "b": jnp.full(4, -0.2)}
    tx = fromage(0.01)
    state = tx.init(params)
    assert set(gc.hyperparams(state)) == {"min_norm", "trust_coefficient", "eps", "learning_rate"}
    step = jax.jit(tx.update)
    step(g, state, params)
    state2 = gc.set_hyperparams(state, learning_rate=0.2)
    u2, _ = step(g, state2, params)
    assert step._cache_size() == 1
    u_fresh, _ = fromage(0.2).update(g, fromage(0.2).init(params), params)
    np.testing.assert_allclose(u2["w"], u_fresh["w"], rtol=1e-6)
    state = lamb(1e-3).init(params)
    keys = set(gc.hyperparams(state))
    assert {"scale_by_adam/eps", "scale_by_trust_ratio/eps", "learning_rate", "weight_decay"} <= keys
    state = gc.set_hyperparams(state, {"scale_by_trust_ratio/eps": 0.5})
    assert gc.hyperparams(state)["scale_by_trust_ratio/eps"] == 0.5


BIG = {"w": jnp.zeros((1024, 1024), jnp.float32)}
STATE_BYTES = [
    ("lars", lambda: lars(0.1), 4.0),
    ("lars_no_momentum", lambda: lars(0.1, momentum=None), 0.0),
    ("lamb", lambda: lamb(0.1), 8.0),
    ("fromage", lambda: fromage(0.1), 0.0),
    ("scale_by_trust_ratio", scale_by_trust_ratio, 0.0),
]


@pytest.mark.parametrize(("name", "make", "expected"), STATE_BYTES, ids=[s[0] for s in STATE_BYTES])
def test_state_bytes_per_float32_param(name, make, expected):
    assert state_bytes_per_param(make(), BIG) == pytest.approx(expected, abs=1e-9)
