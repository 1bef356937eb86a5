"""Tests for gradchain/transforms/sm3.py (`scale_by_sm3`) and its recipe `sm3`
(gradchain/optimizers/factored.py).

`scale_by_sm3` runs for 200 steps over the layer-wise tree of tests/reference.py (five leaves: a
scalar, a vector, a matrix, a 3-d and a 4-d array, magnitudes from 1e-2 to 10) on fixed pseudo-random
gradients, and is compared step by step, leaf by leaf, with

(a) a float64 numpy transcription of Anil et al. 2019 SM3-II written with explicit loops over the
    cover sets (tests/references/sm3.py);
(b) optax 0.2.8 with the same arguments (without the scalar leaf, on which optax's SM3 fails).

The optimizer is compared the same way on its param trajectories (200 steps, gradients independent
of the params). Then: convergence on Rosenbrock and an ill-conditioned quadratic, bad
hyperparameters, complex leaves, the state's layout, sharding and size per parameter, and
hyperparameters in the state.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import (
    LAYER_SHAPES,
    LAYER_STEPS,
    RTOL,
    RTOL_TRAJ,
    Opt,
    assert_stacked_close,
    assert_trajectory_close,
    convergence_losses,
    grad_sequence,
    layer_grads,
    layer_params,
    leaf_runs,
    opt_data,
    optimizer_runs,
    run_many,
    run_optimizers,
    run_pairs,
    state_bytes_per_param,
    stored,
    wide,
)
from references.sm3 import ref_sm3, ref_sm3_params

import gradchain as gc
from gradchain import scale_by_sm3, sm3


class WithoutScalar(NamedTuple):
    """An optax transformation applied to the tree without its scalar leaf "s" (optax's SM3 fails on
    scalars), returning zeros there."""

    inner: Any

    def init(self, params):
        return self.inner.init(_drop_s(params))

    def update(self, updates, state, params=None):
        u, state = self.inner.update(_drop_s(updates), state, None if params is None else _drop_s(params))
        return {**u, "s": jnp.zeros_like(updates["s"])}, state


def _drop_s(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "s"}


# ---------------------------------------------------------------------------------------------
# the ingredient against numpy and optax


@functools.cache
def sm3_runs() -> dict[str, tuple]:
    cases = {"default": {}, "decay": {"b1": 0.5, "b2": 0.9, "eps": 1e-3}, "no_momentum": {"b1": 0.0, "eps": 0.0}}
    gs = layer_grads()
    # Exact zeros in some steps: an entry whose accumulator is still 0 gives 0 (not 0/0).
    gs = [{k: (v * 0 if (k == "m" and n < 3) else v) for k, v in g.items()} for n, g in enumerate(gs)]
    txs = [scale_by_sm3(**kw) for kw in cases.values()] + [
        WithoutScalar(optax.scale_by_sm3(**kw)) for kw in cases.values()
    ]
    runs = run_many(txs, gs, layer_params())
    return {name: (kw, gs, runs[i], runs[len(cases) + i]) for i, (name, kw) in enumerate(cases.items())}


@pytest.mark.parametrize("name", ["default", "decay", "no_momentum"])
def test_sm3_matches_paper_transcription(name):
    kw, gs, ours, _ = sm3_runs()[name]
    kw = {k: stored(v) for k, v in kw.items()}
    expected = {key: ref_sm3([wide(g[key]) for g in gs], **kw) for key in LAYER_SHAPES}
    expected = [{key: expected[key][k] for key in LAYER_SHAPES} for k in range(LAYER_STEPS)]
    # Whole-run scale: the momentum is a running average (see reference.assert_leaf_close).
    assert_trajectory_close(ours, expected, RTOL)
    assert np.all(ours[0]["m"] == 0)  # zero accumulators: zero updates, not NaN


@pytest.mark.parametrize("name", ["default", "decay", "no_momentum"])
def test_sm3_matches_optax(name):
    _, _, ours, theirs = sm3_runs()[name]
    assert_trajectory_close([_drop_s(u) for u in ours], [_drop_s(u) for u in theirs], RTOL)


def test_sm3_scalar_leaf_works_where_optax_raises():
    params = {"s": jnp.zeros(())}
    with pytest.raises(IndexError):
        tx = optax.scale_by_sm3()
        tx.update({"s": jnp.ones(())}, tx.init(params))
    tx = scale_by_sm3(b1=0.0, eps=0.0)
    state = tx.init(params)
    assert state.mu["s"][0].shape == ()
    u, state = tx.update({"s": jnp.array(2.0)}, state)
    u, state = tx.update({"s": jnp.array(1.0)}, state)
    np.testing.assert_allclose(u["s"], 1.0 / np.sqrt(5.0), rtol=1e-6)  # AdaGrad: 1 / sqrt(4 + 1)


def test_sm3_state_is_sublinear_and_fields_are_named():
    state = scale_by_sm3().init({"w": jnp.zeros((64, 32, 3)), "b": jnp.zeros(5)})
    assert [m.shape for m in state.mu["w"]] == [(64,), (32,), (3,)]
    assert [m.shape for m in state.mu["b"]] == [(5,)]
    assert state.nu["w"].shape == (64, 32, 3)
    abstract = jax.eval_shape(scale_by_sm3().init, {"w": jax.ShapeDtypeStruct((4, 6), jnp.bfloat16)})
    assert [(m.shape, m.dtype) for m in abstract.mu["w"]] == [((4,), jnp.bfloat16), ((6,), jnp.bfloat16)]


def test_sm3_state_is_sharded_like_the_params_axes():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
    p = jax.device_put(jnp.zeros((4, 6)), NamedSharding(mesh, PartitionSpec("a", "b")))
    state = scale_by_sm3().init({"w": p})
    assert state.mu["w"][0].sharding.spec == PartitionSpec("a")
    assert state.mu["w"][1].sharding.spec == PartitionSpec("b")
    step = jax.jit(scale_by_sm3().update)
    _, state2 = step({"w": p + 1.0}, state)
    assert state2.mu["w"][0].sharding.is_equivalent_to(state.mu["w"][0].sharding, 1)


# ---------------------------------------------------------------------------------------------
# complex leaves


def test_complex_gradients_and_params():
    shapes = {"v": (5,), "m": (3, 4)}
    gs = grad_sequence(shapes, 30, 3, np.complex64)
    ps = grad_sequence(shapes, 30, 4, np.complex64)
    ours = run_pairs(scale_by_sm3(), gs, ps)
    expected = {k: ref_sm3([wide(g[k]) for g in gs]) for k in shapes}
    assert_trajectory_close(ours, [{k: expected[k][n] for k in shapes} for n in range(30)], RTOL)
    assert scale_by_sm3().init(ps[0]).mu["m"][0].dtype == np.float32  # real accumulators


# ---------------------------------------------------------------------------------------------
# the optimizer against numpy and optax


OPTS = [
    Opt(
        "sm3",
        lambda: sm3(0.05),
        lambda: optax.sm3(0.05),
        lambda p, g: leaf_runs(ref_sm3_params, p, g, lr=stored(0.05)),
        no_scalar=True,
    ),
    Opt(
        "sm3_momentum",
        lambda: sm3(0.1, momentum=0.5),
        lambda: optax.sm3(0.1, momentum=0.5),
        lambda p, g: leaf_runs(ref_sm3_params, p, g, lr=stored(0.1), momentum=0.5),
        no_scalar=True,
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


PACKABLE = [
    ("sm3", lambda pack: sm3(0.1, pack=pack)),
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


# Learning rates tuned once; each reaches at least 1e5 below its start: 1e4 leaves a margin.
CONVERGENCE = [
    # (id, optimizer, problem, steps, factor the loss must drop by)
    ("sm3_rosenbrock", lambda: sm3(2.0), "rosenbrock", 2000, 1e4),
    ("sm3_quadratic", lambda: sm3(0.3), "quadratic", 500, 1e4),
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
# bad arguments, wrong trees


BAD = [
    (lambda: scale_by_sm3(b1=1.0), ValueError, "b1"),
    (lambda: scale_by_sm3(b2=1.5), ValueError, "b2"),
    (lambda: scale_by_sm3(eps=-1.0), ValueError, "scale_by_sm3: eps"),
    (lambda: sm3(0.1, momentum=1.0), ValueError, "sm3: momentum"),
    (lambda: sm3(float("inf")), ValueError, "learning_rate"),
]


@pytest.mark.parametrize(("make", "error", "match"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_hyperparameters_are_named(make, error, match):
    with pytest.raises(error, match=re.escape(match)):
        make()


@pytest.mark.parametrize("make", [scale_by_sm3])
def test_integer_leaves_are_named(make):
    params = {"w": jnp.ones((2, 3)), "step": jnp.ones(3)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"leaf step\b"):
        tx.update({"w": jnp.ones((2, 3)), "step": jnp.ones(3, jnp.int32)}, state, params)


def test_sm3_rejects_updates_of_another_shape():
    tx = scale_by_sm3()
    state = tx.init({"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"leaf w\b"):
        tx.update({"w": jnp.ones((3, 2))}, state)


# ---------------------------------------------------------------------------------------------
# hyperparameters in the state; state size


def test_hyperparams_are_readable_and_settable_without_recompiling():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    assert set(gc.hyperparams(sm3(0.1).init(params))) == {"b1", "b2", "eps", "learning_rate"}
    assert set(gc.hyperparams(scale_by_sm3().init(params))) == {"b1", "b2", "eps"}
    with pytest.raises(ValueError, match="b2"):
        gc.set_hyperparams(scale_by_sm3().init(params), b2=2.0)


BIG = {"w": jnp.zeros((1024, 1024), jnp.float32)}
STATE_BYTES = [
    ("sm3", lambda: sm3(0.1), 4.0 + 8.0 / 1024),  # momentum, plus 1024 + 1024 accumulators
]


@pytest.mark.parametrize(("name", "make", "expected"), STATE_BYTES, ids=[s[0] for s in STATE_BYTES])
def test_state_bytes_per_float32_param(name, make, expected):
    assert state_bytes_per_param(make(), BIG) == pytest.approx(expected, abs=1e-9)
