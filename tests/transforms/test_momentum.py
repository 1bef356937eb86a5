"""Tests for gradchain/transforms/momentum.py: `trace` (heavy ball, Nesterov, dampening) and `ema`.

Each flag combination runs for 100 steps on a fixed gradient sequence over a tree of four leaves of
different shapes and magnitudes, and is compared step by step with a float64 numpy transcription of
its formula (tests/reference.py) and, where optax defines the same thing, with optax. PyTorch's
dampening convention (the first step keeps the whole gradient) is checked against numpy here and
against torch by the optimizer tests. Bad arguments, integer params, mismatched update trees and
count saturation are tested for every ingredient in tests/transforms/test_boundaries.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import (
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
from references.momentum import ref_ema, ref_trace

import gradchain as gc

DECAY = 0.9

GRADS = standard_grads()
PARAMS = param_tree()


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    make: Callable[..., Any]  # make(**dtype_kwargs) -> gradchain transformation
    reference: Callable[[list], list]  # gradient trees -> expected update trees (float64)
    optax: Callable[[], Any] | None  # optax's transformation with the same arguments, if it has one
    hyperparams: dict[str, float]


def _trace_case(nesterov: bool, dampening: float) -> Case:
    return Case(
        f"trace-nesterov={nesterov}-dampening={dampening}",
        lambda **kw: gc.trace(DECAY, nesterov=nesterov, dampening=dampening, **kw),
        lambda grads: reference_tree(ref_trace, grads, stored(DECAY), nesterov=nesterov, dampening=stored(dampening)),
        (lambda: optax.trace(DECAY, nesterov=nesterov)) if dampening == 0 else None,
        {"decay": DECAY, "dampening": dampening},
    )


def _ema_case(debias: bool) -> Case:
    return Case(
        f"ema-debias={debias}",
        lambda **kw: gc.ema(DECAY, debias=debias, **kw),
        lambda grads: reference_tree(ref_ema, grads, stored(DECAY), debias=debias),
        lambda: optax.ema(DECAY, debias=debias),
        {"decay": DECAY},
    )


CASES = [_trace_case(n, d) for n, d in itertools.product([False, True], [0.0, 0.3])] + [
    _ema_case(d) for d in [True, False]
]
CASE_IDS = [c.id for c in CASES]
OPTAX_CASES = [c for c in CASES if c.optax is not None]


# case id -> the case's jitted 100-step run on GRADS, computed once for the tests below.
_gradchain_run = cached_runs(CASES, PARAMS, GRADS)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(case: Case):
    assert_trajectory_close(_gradchain_run(case.id), case.reference(GRADS), RTOL)


@pytest.mark.parametrize("case", OPTAX_CASES, ids=[c.id for c in OPTAX_CASES])
def test_matches_optax(case: Case):
    expected = run_transform(case.optax(), PARAMS, GRADS, jit=False)
    assert_trajectory_close(_gradchain_run(case.id), expected, RTOL)


@pytest.mark.parametrize(
    "case_id, other",
    [
        ("trace-nesterov=False-dampening=0.3", _trace_case(False, 0.0)),
        ("trace-nesterov=False-dampening=0.3", _trace_case(True, 0.3)),
        ("trace-nesterov=True-dampening=0.0", _trace_case(False, 0.0)),
        ("ema-debias=True", _ema_case(False)),
    ],
    ids=["dampening", "nesterov-on", "nesterov-off", "debias"],
)
def test_reference_comparison_detects_a_flag_change(case_id: str, other: Case):
    with pytest.raises(AssertionError):
        assert_trajectory_close(_gradchain_run(case_id), other.reference(GRADS), RTOL)


def test_dampening_keeps_the_first_gradient_whole():
    # PyTorch's SGD starts the buffer at g_1 whatever the dampening; afterwards (1 - tau) g_t.
    tx = gc.trace(0.5, dampening=0.5)
    state = tx.init({"w": jnp.zeros(1)})
    u1, state = tx.update({"w": jnp.full(1, 4.0)}, state)
    u2, state = tx.update({"w": jnp.full(1, 2.0)}, state)
    assert float(u1["w"][0]) == 4.0
    assert float(u2["w"][0]) == 0.5 * 4.0 + 0.5 * 2.0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float64_matches_reference(x64, case: Case):
    grads = standard_grads(np.float64)
    run = run_transform(case.make(), param_tree(dtype=np.float64), grads, jit=False)
    assert all(u.dtype == np.float64 for u in jax.tree.leaves(run[-1]))
    assert all(v.dtype == jnp.float64 for v in gc.hyperparams(run.state).values())
    assert_trajectory_close(run, case.reference(grads), RTOL64)


def _buffer(state) -> Any:
    return state.trace if isinstance(state, gc.TraceState) else state.ema


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_default_state_matches_param_dtype(case: Case, dtype):
    steps = 20
    # An all-zero first step (no NaN from 0/0 anywhere), then ordinary steps.
    grads = grad_sequence(TREE_SHAPES, steps, seed=3, dtype=dtype, step_scales=[0.0] + [1.0] * (steps - 1))
    run = run_transform(case.make(), param_tree(dtype=dtype), grads, jit=False)
    assert all((u == 0).all() for u in jax.tree.leaves(run[0]))
    for updates in run:
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    assert all(b.dtype == dtype for b in jax.tree.leaves(_buffer(run.state)))
    # The buffer is rounded to `dtype` every step, so the trajectory drifts by a few ulps of `dtype`.
    assert_trajectory_close(run, case.reference(grads), 8 * float(jnp.finfo(dtype).eps))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_accumulator_for_bfloat16_params(case: Case):
    steps = 30
    grads = grad_sequence(TREE_SHAPES, steps, seed=4, dtype=jnp.bfloat16, leaf_scales=TREE_SCALES)
    run = run_transform(case.make(accumulator_dtype=jnp.float32), param_tree(dtype=jnp.bfloat16), grads, jit=False)
    assert all(b.dtype == jnp.float32 for b in jax.tree.leaves(_buffer(run.state)))
    for updates in run:
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    # A float32 buffer: the only bfloat16 rounding is the final cast of each update (half an ulp, at
    # most 2^-8 relative); the reference sees exactly the bfloat16 gradients.
    assert_trajectory_close(run, case.reference(grads), float(jnp.finfo(jnp.bfloat16).eps) / 2 + RTOL, per_step=True)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_complex_params(case: Case):
    grads = standard_grads(np.complex64, seed=5)
    run = run_transform(case.make(), param_tree(dtype=np.complex64), grads, jit=False)
    assert all(u.dtype == np.complex64 for u in jax.tree.leaves(run[-1]))
    assert all(b.dtype == jnp.complex64 for b in jax.tree.leaves(_buffer(run.state)))
    assert_trajectory_close(run, case.reference(grads), RTOL)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hyperparams_in_state(case: Case):
    assert_hyperparams(_gradchain_run(case.id).state, case.hyperparams, dtype=jnp.float32)
