"""Tests for gradchain/transforms/rms.py: `scale_by_rss` (AdaGrad), `scale_by_rms` (RMSProp,
centered, bias-corrected).

Every flag combination runs for 100 steps on a fixed gradient sequence over a tree of four
leaves of different shapes and magnitudes, and is compared step by step with a float64 numpy
transcription of its formula (tests/references/rms.py) and, where optax defines the same thing,
with optax. The leaf magnitudes (1, 1e-3, 10, 0.1) and the eps values are chosen so that every eps
and every flag changes the result by far more than the tolerance (checked by
`test_reference_comparison_detects_a_flag_change`). PyTorch's conventions (eps outside the root)
are checked against numpy here and against torch by the optimizer tests. Most tests run the update
eagerly, which reuses compiled primitives across tests and keeps the file fast;
`test_jitted_update_matches_numpy_reference` runs one case per ingredient as a single compiled
scan. Bad arguments, integer params, mismatched update trees and count saturation (where the bias
corrections vanish) are tested for every ingredient in tests/transforms/test_boundaries.py. The
Adam family (`scale_by_adam`, `scale_by_amsgrad`, `scale_by_adamax`) is tested the same way in
tests/transforms/test_adam.py.
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
from references.rms import ref_rms, ref_rss

import gradchain as gc

# Scaled leaves make eps visible (on leaf "b", sqrt(nu) ~ 1e-3). The first step and one step in the
# middle are all-zero: a zero gradient must give a zero update while the count (and so the bias
# correction) moves on. Starting with a zero step also keeps centered RMSProp with bias correction
# well conditioned: from nu_0 = 0 a non-zero first gradient makes nu_hat - |mu_hat|^2 exactly 0 in
# exact arithmetic, and the square root of float32 rounding noise (~1e-7 g^2) would dominate.
STEP_SCALES = [0.0 if k in (0, 50) else 1.0 for k in range(N_STEPS)]


def make_grads(dtype: Any = np.float32, seed: int = 0) -> list:
    return standard_grads(dtype, seed, step_scales=STEP_SCALES)


GRADS = make_grads()
PARAMS = param_tree()

# RMSProp's decay: 1 - 0.875 is a power of two, so the first step's moments are exact in float32.
RMS_DECAY = 0.875


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


def rss_case(eps_in_sqrt: bool, initial: float) -> Case:
    eps = 1e-7
    return Case(
        f"rss-eps_in_sqrt={eps_in_sqrt}-initial={initial}",
        lambda **kw: gc.scale_by_rss(initial, eps, eps_in_sqrt=eps_in_sqrt, **kw),
        lambda g: reference_tree(ref_rss, g, stored(initial), stored(eps), eps_in_sqrt=eps_in_sqrt),
        (lambda: optax.scale_by_rss(initial, eps)) if eps_in_sqrt else None,
        {"eps": eps},
        ("sum_of_squares",),
        ("sum_of_squares",),
    )


def rms_case(eps_in_sqrt: bool, centered: bool, bias_correction: bool, initial_scale: float) -> Case:
    eps = 1e-8
    flags = dict(eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction)
    optax_fn = optax.scale_by_stddev if centered else optax.scale_by_rms
    return Case(
        f"rms-eps_in_sqrt={eps_in_sqrt}-centered={centered}-bias_correction={bias_correction}-initial={initial_scale}",
        lambda **kw: gc.scale_by_rms(RMS_DECAY, eps, initial_scale, centered=centered, **flags, **kw),
        lambda g: reference_tree(
            ref_rms, g, stored(RMS_DECAY), stored(eps), stored(initial_scale), centered=centered, **flags
        ),
        lambda: optax_fn(RMS_DECAY, eps, initial_scale, **flags),
        {"decay": RMS_DECAY, "eps": eps},
        ("nu", "mu") if centered else ("nu",),
        ("nu",),
    )


CASES = [rss_case(e, i) for e, i in itertools.product([True, False], [0.0, 0.1])] + [
    rms_case(*flags) for flags in itertools.product([True, False], [True, False], [True, False], [0.0, 0.5])
]
CASE_IDS = [c.id for c in CASES]
OPTAX_CASES = [c for c in CASES if c.optax is not None]
# One case per ingredient (with its most involved flags) for the tests that need not repeat all.
REPRESENTATIVE = [
    rss_case(False, 0.1),
    rms_case(True, False, True, 0.5),
    rms_case(False, True, True, 0.0),
]
REPRESENTATIVE_IDS = [c.id for c in REPRESENTATIVE]


# case id -> the case's 100-step run on GRADS, computed once for the tests below. Eager updates:
# the compiled primitives are shared by all cases, so 20 cases cost little.
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
    ("rss-eps_in_sqrt=True-initial=0.0", rss_case(False, 0.0)),
    ("rss-eps_in_sqrt=True-initial=0.0", rss_case(True, 0.1)),
    ("rms-eps_in_sqrt=True-centered=False-bias_correction=False-initial=0.0", rms_case(False, False, False, 0.0)),
    ("rms-eps_in_sqrt=True-centered=False-bias_correction=False-initial=0.0", rms_case(True, True, False, 0.0)),
    ("rms-eps_in_sqrt=True-centered=False-bias_correction=False-initial=0.0", rms_case(True, False, True, 0.0)),
    ("rms-eps_in_sqrt=True-centered=False-bias_correction=False-initial=0.0", rms_case(True, False, False, 0.5)),
]


@pytest.mark.parametrize("case_id, other", FLAG_CHANGES, ids=[f"{a}-vs-{b.id}" for a, b in FLAG_CHANGES])
def test_reference_comparison_detects_a_flag_change(case_id: str, other: Case):
    with pytest.raises(AssertionError):
        assert_trajectory_close(_gradchain_run(case_id), other.reference(GRADS), RTOL)


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
        lambda: gc.scale_by_rss(0.0, 0.0),
        lambda: gc.scale_by_rss(0.0, 1e-7),
        lambda: gc.scale_by_rss(0.0, 1e-10, eps_in_sqrt=False),
        lambda: gc.scale_by_rms(),
        lambda: gc.scale_by_rms(centered=True, bias_correction=True),
    ],
    ids=["rss-eps=0", "rss", "rss-torch", "rms", "rms-centered"],
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


def test_initial_values_are_static_not_hyperparameters():
    state = gc.scale_by_rss(initial_accumulator_value=0.25).init({"w": jnp.zeros(2)})
    assert set(gc.hyperparams(state)) == {"eps"}
    assert (state.sum_of_squares["w"] == 0.25).all()
    state = gc.scale_by_rms(initial_scale=0.5, centered=True).init({"w": jnp.zeros(2)})
    assert set(gc.hyperparams(state)) == {"decay", "eps"}
    assert (state.nu["w"] == 0.5).all() and (state.mu["w"] == 0).all()
