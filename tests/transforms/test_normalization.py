"""Tests for gradchain/transforms/normalization.py: `centralize` and `scale_by_param_block_norm`.

Each runs for 200 steps over the layer-wise tree of tests/reference.py (five leaves: a scalar, a
vector, a matrix, a 3-d and a 4-d array, magnitudes from 1e-2 to 10) on fixed pseudo-random gradients
and a fixed pseudo-random sequence of params, and is compared step by step, leaf by leaf, with

(a) a float64 numpy transcription of the formula (tests/references/normalization.py; Yong et al.
    2020 eq. 4 for gradient centralization);
(b) optax 0.2.8 with the same arguments.

Then: bad hyperparameters, missing params, integer leaves, complex and bfloat16 leaves, and the
state's size per parameter.
"""

from __future__ import annotations

import functools
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import (
    LAYER_GRAD_SCALES,
    LAYER_PARAM_SCALES,
    LAYER_SHAPES,
    RTOL,
    Ingredient,
    assert_trajectory_close,
    grad_sequence,
    ingredient_runs,
    layer_grads,
    layer_params,
    per_leaf,
    run_pairs,
    state_bytes_per_param,
    wide,
)
from references.normalization import ref_block_norm, ref_centralize

from gradchain import centralize, scale_by_param_block_norm

# ---------------------------------------------------------------------------------------------
# ingredients against numpy and optax


INGREDIENTS = [
    Ingredient("centralize", centralize, optax.centralize, lambda g, p: ref_centralize(g)),
    Ingredient("block_norm", scale_by_param_block_norm, optax.scale_by_param_block_norm, ref_block_norm),
    Ingredient(
        "block_norm_floor",
        lambda: scale_by_param_block_norm(5.0),
        lambda: optax.scale_by_param_block_norm(5.0),
        lambda g, p: ref_block_norm(g, p, 5.0),
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


# ---------------------------------------------------------------------------------------------
# complex and low-precision leaves


def test_complex_gradients_and_params():
    shapes = {"v": (5,), "m": (3, 4)}
    gs = grad_sequence(shapes, 30, 3, np.complex64)
    ps = grad_sequence(shapes, 30, 4, np.complex64)
    cases = [
        (centralize(), lambda g, p: ref_centralize(g)),
        (scale_by_param_block_norm(), ref_block_norm),
    ]
    for tx, ref in cases:
        ours = run_pairs(tx, gs, ps)
        assert ours[0]["m"].dtype == np.complex64
        expected = [{k: ref(wide(g[k]), wide(p[k])) for k in shapes} for g, p in zip(gs, ps, strict=True)]
        assert_trajectory_close(ours, expected, RTOL, per_step=True)


LOW_PRECISION = [
    ("centralize", centralize, lambda g, p: ref_centralize(g)),
    ("block_norm", scale_by_param_block_norm, ref_block_norm),
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
# bad arguments, missing params, wrong trees


BAD = [
    (lambda: scale_by_param_block_norm(-1.0), ValueError, "min_scale"),
]


@pytest.mark.parametrize(("make", "error", "match"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_hyperparameters_are_named(make, error, match):
    with pytest.raises(error, match=re.escape(match)):
        make()


NEEDS_PARAMS = [
    ("scale_by_param_block_norm", scale_by_param_block_norm),
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


@pytest.mark.parametrize("make", [centralize, scale_by_param_block_norm])
def test_integer_leaves_are_named(make):
    params = {"w": jnp.ones((2, 3)), "step": jnp.ones(3)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"leaf step\b"):
        tx.update({"w": jnp.ones((2, 3)), "step": jnp.ones(3, jnp.int32)}, state, params)


# ---------------------------------------------------------------------------------------------
# state size


BIG = {"w": jnp.zeros((1024, 1024), jnp.float32)}
STATE_BYTES = [
    ("centralize", centralize, 0.0),
]


@pytest.mark.parametrize(("name", "make", "expected"), STATE_BYTES, ids=[s[0] for s in STATE_BYTES])
def test_state_bytes_per_float32_param(name, make, expected):
    assert state_bytes_per_param(make(), BIG) == pytest.approx(expected, abs=1e-9)
