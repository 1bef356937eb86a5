"""Tests for gradchain/transforms/adam.py: `scale_by_adam` (Adam, NAdam form), `scale_by_amsgrad`,
`scale_by_adamax`.

Every flag combination runs for 100 steps on a fixed gradient sequence over a tree of four
leaves of different shapes and magnitudes, and is compared step by step with a float64 numpy
transcription of its formula (tests/references/adam.py) and, where optax defines the same thing,
with optax. The leaf magnitudes (1, 1e-3, 10, 0.1) and the eps values are chosen so that every eps
and every flag changes the result by far more than the tolerance (checked by
`test_reference_comparison_detects_a_flag_change`). PyTorch's conventions (AMSGrad's maximum before
debiasing) are checked against numpy here and against torch by the optimizer tests. Most tests run
the update eagerly, which reuses compiled primitives across tests and keeps the file fast;
`test_jitted_update_matches_numpy_reference` runs one case per ingredient as a single compiled
scan. Bad arguments, integer params, mismatched update trees and count saturation (where the bias
corrections vanish) are tested for every ingredient in tests/transforms/test_boundaries.py. AdaGrad
and RMSProp (`scale_by_rss`, `scale_by_rms`) are tested the same way in tests/transforms/test_rms.py.
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
from references.adam import ref_adam, ref_adamax, ref_amsgrad

import gradchain as gc

# optax computes Adam's bias correction 1 - b2**t directly in float32, which loses digits for b2
# close to 1 (about 1e-5 relative at t = 2 with b2 = 0.999); gradchain computes -expm1(t log b2)
# and matches the float64 reference to ~3e-7, so against optax the tolerance is optax's error.
OPTAX_BIAS_RTOL = 2e-5

# Scaled leaves make eps visible (on leaf "b", sqrt(nu) ~ 1e-3). The first step and one step in the
# middle are all-zero: a zero gradient must give a zero update while the count (and so the bias
# correction) moves on.
STEP_SCALES = [0.0 if k in (0, 50) else 1.0 for k in range(N_STEPS)]


def make_grads(dtype: Any = np.float32, seed: int = 0) -> list:
    return standard_grads(dtype, seed, step_scales=STEP_SCALES)


GRADS = make_grads()
PARAMS = param_tree()

B1, B2 = 0.9, 0.999
ADAM_EPS, ADAM_EPS_ROOT = 1e-6, 1e-8  # both visible on leaf "b" (nu ~ 1e-6)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    make: Callable[..., Any]  # make(**extra) -> gradchain transformation
    reference: Callable[[list], list]  # gradient trees -> expected update trees (float64)
    optax: Callable[[], Any] | None  # optax with the same arguments, where it has them
    hyperparams: dict[str, float]
    buffers: tuple[str, ...]  # per-parameter state fields
    real_buffers: tuple[str, ...]  # those kept real for complex params (accumulators of |g|^2)
    optax_rtol: float = RTOL


def adam_case(nesterov: bool, bias_correction: bool) -> Case:
    return Case(
        f"adam-nesterov={nesterov}-bias_correction={bias_correction}",
        lambda **kw: gc.scale_by_adam(
            B1, B2, ADAM_EPS, ADAM_EPS_ROOT, nesterov=nesterov, bias_correction=bias_correction, **kw
        ),
        lambda g: reference_tree(
            ref_adam,
            g,
            stored(B1),
            stored(B2),
            stored(ADAM_EPS),
            stored(ADAM_EPS_ROOT),
            nesterov=nesterov,
            bias_correction=bias_correction,
        ),
        (lambda: optax.scale_by_adam(B1, B2, ADAM_EPS, ADAM_EPS_ROOT, nesterov=nesterov)) if bias_correction else None,
        {"b1": B1, "b2": B2, "eps": ADAM_EPS, "eps_root": ADAM_EPS_ROOT},
        ("mu", "nu"),
        ("nu",),
        OPTAX_BIAS_RTOL,
    )


def amsgrad_case(debias_before_max: bool) -> Case:
    return Case(
        f"amsgrad-debias_before_max={debias_before_max}",
        lambda **kw: gc.scale_by_amsgrad(B1, B2, ADAM_EPS, ADAM_EPS_ROOT, debias_before_max=debias_before_max, **kw),
        lambda g: reference_tree(
            ref_amsgrad,
            g,
            stored(B1),
            stored(B2),
            stored(ADAM_EPS),
            stored(ADAM_EPS_ROOT),
            debias_before_max=debias_before_max,
        ),
        (lambda: optax.scale_by_amsgrad(B1, B2, ADAM_EPS, ADAM_EPS_ROOT)) if debias_before_max else None,
        {"b1": B1, "b2": B2, "eps": ADAM_EPS, "eps_root": ADAM_EPS_ROOT},
        ("mu", "nu", "nu_max"),
        ("nu", "nu_max"),
        OPTAX_BIAS_RTOL,
    )


def adamax_case(eps: float = ADAM_EPS) -> Case:
    return Case(
        f"adamax-eps={eps}",
        lambda **kw: gc.scale_by_adamax(B1, B2, eps, **kw),
        lambda g: reference_tree(ref_adamax, g, stored(B1), stored(B2), stored(eps)),
        lambda: optax.scale_by_adamax(B1, B2, eps),
        {"b1": B1, "b2": B2, "eps": eps},
        ("mu", "nu"),
        ("nu",),
    )


CASES = (
    [adam_case(n, b) for n, b in itertools.product([False, True], [True, False])]
    + [amsgrad_case(d) for d in [True, False]]
    + [adamax_case()]
)
CASE_IDS = [c.id for c in CASES]
OPTAX_CASES = [c for c in CASES if c.optax is not None]
# One case per ingredient (with its most involved flags) for the tests that need not repeat all.
REPRESENTATIVE = [
    adam_case(True, True),
    amsgrad_case(False),
    adamax_case(),
]
REPRESENTATIVE_IDS = [c.id for c in REPRESENTATIVE]


# case id -> the case's 100-step run on GRADS, computed once for the tests below. Eager updates:
# the compiled primitives are shared by all cases, so 7 cases cost little.
_gradchain_run = cached_runs(CASES, PARAMS, GRADS, jit=False)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(case: Case):
    assert_trajectory_close(_gradchain_run(case.id), case.reference(GRADS), RTOL)


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=REPRESENTATIVE_IDS)
def test_jitted_update_matches_numpy_reference(case: Case):
    # The same 100 steps as one compiled `lax.scan`: XLA fuses the rule differently, same tolerance.
    run = run_transform(case.make(), PARAMS, GRADS, jit=True)
    assert_trajectory_close(run, case.reference(GRADS), RTOL)


@pytest.mark.parametrize("case", OPTAX_CASES, ids=[c.id for c in OPTAX_CASES])
def test_matches_optax(case: Case):
    expected = run_transform(case.optax(), PARAMS, GRADS, jit=False)
    assert_trajectory_close(_gradchain_run(case.id), expected, case.optax_rtol)


FLAG_CHANGES = [
    ("adam-nesterov=False-bias_correction=True", adam_case(True, True)),
    ("adam-nesterov=False-bias_correction=True", adam_case(False, False)),
    ("amsgrad-debias_before_max=True", amsgrad_case(False)),
    ("amsgrad-debias_before_max=True", adam_case(False, True)),
    (f"adamax-eps={ADAM_EPS}", adamax_case(1e-4)),
]


@pytest.mark.parametrize("case_id, other", FLAG_CHANGES, ids=[f"{a}-vs-{b.id}" for a, b in FLAG_CHANGES])
def test_reference_comparison_detects_a_flag_change(case_id: str, other: Case):
    with pytest.raises(AssertionError):
        assert_trajectory_close(_gradchain_run(case_id), other.reference(GRADS), RTOL)


@pytest.mark.parametrize("swap", ["eps", "eps_root"])
def test_reference_comparison_tells_eps_from_eps_root(swap: str):
    # eps outside the root and eps_root inside it: moving the value from one to the other must show.
    moved = {"eps": (0.0, ADAM_EPS + ADAM_EPS_ROOT), "eps_root": (ADAM_EPS + ADAM_EPS_ROOT, 0.0)}[swap]
    expected = reference_tree(ref_adam, GRADS, stored(B1), stored(B2), stored(moved[0]), stored(moved[1]))
    with pytest.raises(AssertionError):
        assert_trajectory_close(_gradchain_run("adam-nesterov=False-bias_correction=True"), expected, RTOL)


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=REPRESENTATIVE_IDS)
def test_float64_matches_reference(x64, case: Case):
    grads = make_grads(np.float64)
    run = run_transform(case.make(), param_tree(dtype=np.float64), grads, jit=False)
    assert all(u.dtype == np.float64 for u in jax.tree.leaves(run[-1]))
    for name in case.buffers:
        assert all(b.dtype == jnp.float64 for b in jax.tree.leaves(getattr(run.state, name)))
    assert all(v.dtype == jnp.float64 for v in gc.hyperparams(run.state).values())
    assert_trajectory_close(run, case.reference(grads), RTOL64)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=REPRESENTATIVE_IDS)
def test_low_precision_default_state_matches_param_dtype(case: Case, dtype):
    steps = 30
    # An all-zero first step: 0 / (0 + eps) must be 0, not NaN (eps is added in float32).
    grads = grad_sequence(TREE_SHAPES, steps, seed=3, dtype=dtype, step_scales=[0.0] + [1.0] * (steps - 1))
    run = run_transform(case.make(), param_tree(dtype=dtype), grads, jit=False)
    assert all((u == 0).all() for u in jax.tree.leaves(run[0]))
    for updates in run:
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    for name in case.buffers:
        # float16 cannot hold squared gradients, so those accumulators default to float32.
        want = jnp.float32 if dtype == jnp.float16 and name in case.real_buffers else dtype
        assert all(b.dtype == want for b in jax.tree.leaves(getattr(run.state, name))), name
    # The buffers are rounded to `dtype` at every step: the trajectory stays within a few ulps.
    assert_trajectory_close(run, case.reference(grads), 16 * float(jnp.finfo(dtype).eps))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32], ids=["bfloat16", "float16", "float32"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: gc.scale_by_adam(),
        lambda: gc.scale_by_adam(nesterov=True),
        lambda: gc.scale_by_amsgrad(),
        lambda: gc.scale_by_adamax(),
    ],
    ids=["adam", "nadam", "amsgrad", "adamax"],
)
def test_all_zero_gradient_steps_give_zero_updates(make, dtype):
    tx = make()
    params = {"a": jnp.zeros((), dtype), "b": jnp.zeros((3, 2), dtype)}
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        for u in jax.tree.leaves(updates):
            assert u.dtype == dtype
            assert (np.asarray(u, np.float32) == 0).all()


@pytest.mark.parametrize("case", [adam_case(True, True), amsgrad_case(False)], ids=["adam", "amsgrad"])
def test_float32_moments_for_bfloat16_params(case: Case):
    steps = 40
    grads = grad_sequence(TREE_SHAPES, steps, seed=4, dtype=jnp.bfloat16, leaf_scales=TREE_SCALES)
    run = run_transform(
        case.make(mu_dtype=jnp.float32, nu_dtype=jnp.float32),
        param_tree(dtype=jnp.bfloat16),
        grads,
        jit=False,
    )
    for name in case.buffers:
        assert all(b.dtype == jnp.float32 for b in jax.tree.leaves(getattr(run.state, name))), name
    for updates in run:
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    # Float32 moments: the only bfloat16 rounding is the final cast of the update (half an ulp, at
    # most 2^-8 relative); the reference sees exactly the bfloat16 gradients.
    assert_trajectory_close(run, case.reference(grads), float(jnp.finfo(jnp.bfloat16).eps) / 2 + RTOL)


def test_float32_moments_choose_dtypes_independently():
    params = {"w": jnp.zeros(3, jnp.bfloat16)}
    state = gc.scale_by_adam(mu_dtype=jnp.float32).init(params)
    assert state.mu["w"].dtype == jnp.float32 and state.nu["w"].dtype == jnp.bfloat16
    state = gc.scale_by_amsgrad(nu_dtype=jnp.float32).init(params)
    assert state.mu["w"].dtype == jnp.bfloat16
    assert state.nu["w"].dtype == jnp.float32 and state.nu_max["w"].dtype == jnp.float32


@pytest.mark.parametrize("g", [1e-3, 2e-3], ids=["1e-3", "2e-3"])
def test_float16_adam_small_gradient_then_zero_gradient(g: float):
    params = {"w": jnp.zeros(3, jnp.float16)}
    grads = [{"w": np.full(3, g, np.float16)}, {"w": np.zeros(3, np.float16)}]
    run = run_transform(gc.scale_by_adam(), params, grads, jit=False)
    expected = reference_tree(ref_adam, grads, stored(B1), stored(B2), stored(1e-8))
    assert_trajectory_close(run, expected, float(jnp.finfo(jnp.float16).eps), per_step=True)


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=REPRESENTATIVE_IDS)
def test_complex_params(case: Case):
    grads = make_grads(np.complex64, seed=5)
    run = run_transform(case.make(), param_tree(dtype=np.complex64), grads, jit=False)
    assert all(u.dtype == np.complex64 for u in jax.tree.leaves(run[-1]))
    for name in case.buffers:
        expected_dtype = jnp.float32 if name in case.real_buffers else jnp.complex64
        assert all(b.dtype == expected_dtype for b in jax.tree.leaves(getattr(run.state, name))), name
    # The reference uses |g|^2 = g conj(g); a rule that used g^2 would be complex and fail here.
    assert_trajectory_close(run, case.reference(grads), RTOL)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hyperparams_in_state(case: Case):
    assert_hyperparams(_gradchain_run(case.id).state, case.hyperparams)
