"""Tests for gradchain.schedules.

Every schedule is checked against its formula written out independently in float64 NumPy
(tests/references/schedules.py), against optax's schedule of the same name, against PyTorch's
scheduler of the same shape, under jit and vmap, and for its argument checks and runnable docstring
example.
"""

import inspect
import math
import re
import textwrap
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import LazyModule
from references.schedules import (
    ref_cosine,
    ref_cyclic,
    ref_exponential,
    ref_inverse_sqrt,
    ref_inverse_time,
    ref_join,
    ref_linear,
    ref_onecycle,
    ref_piecewise,
    ref_polynomial,
    ref_power_law,
    ref_sgdr,
    ref_warm_restarts,
    ref_warmup_cosine,
    ref_warmup_exponential,
    ref_warmup_linear,
    ref_wsd,
)

from gradchain import schedules

optax = pytest.importorskip("optax")

RTOL = 1e-6
FLOAT = jnp.zeros((), dtype=float).dtype  # the default float dtype (float32 unless x64 is on)


def _np(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _as_f32(t: np.ndarray) -> np.ndarray:
    # Schedules see steps in float32; references are evaluated at the same rounded steps so that the
    # comparison measures the schedule's error, not the step's.
    return np.asarray(t, dtype=np.float32).astype(np.float64)


# ----------------------------------------------------------------------------------------------------
# The table of schedules: (builder name, kwargs, reference, number of steps to check).

S = schedules
_SGDR_CYCLES = [
    dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=30),
    dict(init_value=0.5, peak_value=0.8, warmup_steps=0, decay_steps=40, end_value=0.1),
    dict(init_value=0.1, peak_value=0.6, warmup_steps=10, decay_steps=25, end_value=0.01),
]
_JOIN_PARTS = dict(
    schedules=[S.linear_schedule(0.0, 1.0, 10), S.constant_schedule(1.0), S.exponential_decay(1.0, 5, 0.5)],
    boundaries=[10, 20],
)

CASES = [
    ("constant_schedule", dict(value=0.3), lambda t: np.full_like(t, 0.3)),
    ("linear_schedule", dict(init_value=0.0, end_value=1.0, transition_steps=50, transition_begin=10),
     ref_linear(0.0, 1.0, 50, 10)),
    ("linear_schedule", dict(init_value=1.0, end_value=0.01, transition_steps=40), ref_linear(1.0, 0.01, 40)),
    ("polynomial_schedule",
     dict(init_value=1.0, end_value=0.01, power=2.0, transition_steps=60, transition_begin=5),
     ref_polynomial(1.0, 0.01, 2.0, 60, 5)),
    ("polynomial_schedule", dict(init_value=0.0, end_value=2.0, power=0.5, transition_steps=30),
     ref_polynomial(0.0, 2.0, 0.5, 30)),
    ("polynomial_schedule", dict(init_value=1.0, end_value=0.0, power=3.0, transition_steps=50),
     ref_polynomial(1.0, 0.0, 3.0, 50)),
    ("exponential_decay", dict(init_value=1.0, transition_steps=10, decay_rate=0.5),
     ref_exponential(1.0, 10, 0.5)),
    ("exponential_decay",
     dict(init_value=0.5, transition_steps=7, decay_rate=0.3, transition_begin=5, staircase=True),
     ref_exponential(0.5, 7, 0.3, 5, True)),
    ("exponential_decay", dict(init_value=1.0, transition_steps=5, decay_rate=0.8, end_value=0.3),
     ref_exponential(1.0, 5, 0.8, end=0.3)),
    ("exponential_decay", dict(init_value=0.1, transition_steps=10, decay_rate=2.0, end_value=1.0),
     ref_exponential(0.1, 10, 2.0, end=1.0)),
    ("piecewise_constant_schedule", dict(init_value=1.0, boundaries_and_scales={10: 0.5, 30: 0.1, 50: 2.0}),
     ref_piecewise(1.0, {10: 0.5, 30: 0.1, 50: 2.0})),
    ("piecewise_constant_schedule", dict(init_value=0.7, boundaries_and_scales={5: 0.1, 0: 0.5}),
     ref_piecewise(0.7, {0: 0.5, 5: 0.1})),
    ("piecewise_constant_schedule", dict(init_value=0.2), lambda t: np.full_like(t, 0.2)),
    ("cosine_decay_schedule", dict(init_value=1.0, decay_steps=80), ref_cosine(1.0, 80)),
    ("cosine_decay_schedule", dict(init_value=2.0, decay_steps=100, alpha=0.1, exponent=2.0),
     ref_cosine(2.0, 100, 0.1, 2.0)),
    ("cosine_decay_schedule", dict(init_value=1.0, decay_steps=60, exponent=0.5),
     ref_cosine(1.0, 60, 0.0, 0.5)),
    ("warmup_cosine_decay_schedule",
     dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100, end_value=0.05),
     ref_warmup_cosine(0.0, 1.0, 10, 100, 0.05)),
    ("warmup_cosine_decay_schedule", dict(init_value=0.3, peak_value=1.0, warmup_steps=0, decay_steps=50),
     ref_warmup_cosine(0.3, 1.0, 0, 50)),
    ("warmup_cosine_decay_schedule",
     dict(init_value=0.1, peak_value=0.5, warmup_steps=20, decay_steps=70, end_value=0.0, exponent=1.5),
     ref_warmup_cosine(0.1, 0.5, 20, 70, 0.0, 1.5)),
    ("cosine_warm_restarts_schedule", dict(init_value=1.0, first_cycle_steps=10),
     ref_warm_restarts(1.0, 10, 1)),
    ("cosine_warm_restarts_schedule", dict(init_value=0.5, first_cycle_steps=7, cycle_mult=2, min_value=0.01),
     ref_warm_restarts(0.5, 7, 2, 0.01)),
    ("cosine_warm_restarts_schedule", dict(init_value=1.0, first_cycle_steps=3, cycle_mult=3),
     ref_warm_restarts(1.0, 3, 3)),
    ("sgdr_schedule", dict(cosine_kwargs=_SGDR_CYCLES), ref_sgdr(_SGDR_CYCLES)),
    ("warmup_linear_decay_schedule",
     dict(init_value=0.1, peak_value=1.0, warmup_steps=10, decay_steps=60, end_value=0.05),
     ref_warmup_linear(0.1, 1.0, 10, 60, 0.05)),
    ("warmup_linear_decay_schedule", dict(init_value=0.0, peak_value=1.0, warmup_steps=0, decay_steps=40),
     ref_warmup_linear(0.0, 1.0, 0, 40)),
    ("warmup_exponential_decay_schedule",
     dict(init_value=0.0, peak_value=1.0, warmup_steps=10, transition_steps=5, decay_rate=0.7,
          transition_begin=3, end_value=0.05),
     ref_warmup_exponential(0.0, 1.0, 10, 5, 0.7, 3, False, 0.05)),
    ("warmup_exponential_decay_schedule",
     dict(init_value=0.2, peak_value=1.0, warmup_steps=8, transition_steps=6, decay_rate=0.5, staircase=True),
     ref_warmup_exponential(0.2, 1.0, 8, 6, 0.5, 0, True)),
    ("warmup_stable_decay_schedule", dict(peak_value=1.0, warmup_steps=10, stable_steps=30, decay_steps=20),
     ref_wsd(1.0, 10, 30, 20)),
    ("warmup_stable_decay_schedule",
     dict(peak_value=1.0, warmup_steps=10, stable_steps=20, decay_steps=30, init_value=0.1, end_value=0.01,
          decay_type="cosine"),
     ref_wsd(1.0, 10, 20, 30, 0.1, 0.01, "cosine")),
    ("warmup_stable_decay_schedule",
     dict(peak_value=2.0, warmup_steps=0, stable_steps=0, decay_steps=40, decay_type="sqrt"),
     ref_wsd(2.0, 0, 0, 40, kind="sqrt")),
    ("inverse_sqrt_schedule", dict(peak_value=1.0, warmup_steps=20), ref_inverse_sqrt(1.0, 20)),
    ("inverse_sqrt_schedule", dict(peak_value=0.5), ref_inverse_sqrt(0.5)),
    ("inverse_sqrt_schedule", dict(peak_value=1.0, warmup_steps=10, timescale=50.0),
     ref_inverse_sqrt(1.0, 10, 50.0)),
    ("power_law_schedule", dict(init_value=1.0, tau=10.0, alpha=0.75), ref_power_law(1.0, 10.0, 0.75)),
    ("power_law_schedule", dict(init_value=0.3, tau=2.5, alpha=1.0), ref_power_law(0.3, 2.5, 1.0)),
    ("inverse_time_decay", dict(init_value=1.0, decay_rate=0.1), ref_inverse_time(1.0, 0.1)),
    ("inverse_time_decay", dict(init_value=0.5, decay_rate=0.5, decay_steps=10, staircase=True),
     ref_inverse_time(0.5, 0.5, 10, True)),
    ("linear_onecycle_schedule", dict(transition_steps=100, peak_value=1.0),
     ref_onecycle(100, 1.0, 0.3, 0.85, 25.0, 1e4, "linear", False)),
    ("linear_onecycle_schedule", dict(transition_steps=50, peak_value=2.0, pct_start=0.29, pct_final=0.7),
     ref_onecycle(50, 2.0, 0.29, 0.7, 25.0, 1e4, "linear", False)),
    ("linear_onecycle_schedule",
     dict(transition_steps=100, peak_value=1.0, pct_start=0.25, pct_final=0.5, torch_convention=True),
     ref_onecycle(100, 1.0, 0.25, 0.5, 25.0, 1e4, "linear", True)),
    ("cosine_onecycle_schedule", dict(transition_steps=100, peak_value=1.0),
     ref_onecycle(100, 1.0, 0.3, None, 25.0, 1e4, "cos", False)),
    ("cosine_onecycle_schedule",
     dict(transition_steps=37, peak_value=0.5, pct_start=0.3, div_factor=10.0, final_div_factor=100.0),
     ref_onecycle(37, 0.5, 0.3, None, 10.0, 100.0, "cos", False)),
    ("cosine_onecycle_schedule",
     dict(transition_steps=100, peak_value=1.0, pct_start=0.25, torch_convention=True),
     ref_onecycle(100, 1.0, 0.25, None, 25.0, 1e4, "cos", True)),
    ("cyclic_schedule", dict(base_value=0.1, max_value=1.0, step_size_up=10), ref_cyclic(0.1, 1.0, 10)),
    ("cyclic_schedule", dict(base_value=0.1, max_value=1.0, step_size_up=5, step_size_down=15),
     ref_cyclic(0.1, 1.0, 5, 15)),
    ("cyclic_schedule", dict(base_value=0.01, max_value=0.1, step_size_up=8, mode="triangular2"),
     ref_cyclic(0.01, 0.1, 8, mode="triangular2")),
    ("cyclic_schedule", dict(base_value=0.01, max_value=0.1, step_size_up=12, mode="exp_range", gamma=0.99),
     ref_cyclic(0.01, 0.1, 12, mode="exp_range", gamma=0.99)),
    ("join_schedules", _JOIN_PARTS,
     ref_join([ref_linear(0.0, 1.0, 10), lambda t: np.ones_like(t), ref_exponential(1.0, 5, 0.5)], [10, 20])),
]  # fmt: skip


# Every schedule is evaluated on the same grid: eager JAX compiles each operation once per shape, so
# one shape keeps the whole file fast. The grid covers every phase of every case above.
N = 160
STEPS = np.arange(N)
CASE_PARAMS = [pytest.param(*case, id=f"{case[0]}-{i}") for i, case in enumerate(CASES)]
_FIRST_CASES = {}
for _case in CASES:
    _FIRST_CASES.setdefault(_case[0], _case)
FIRST_CASE_PARAMS = [pytest.param(*case, id=name) for name, case in _FIRST_CASES.items()]
# Arguments that fix the shape of a schedule and so cannot be traced.
_STATIC = {"pct_start", "pct_final"}


def _value_arguments(kwargs: dict) -> list[str]:
    return [key for key, value in kwargs.items() if isinstance(value, float) and key not in _STATIC]


TRACEABLE_PARAMS = [
    pytest.param(name, kwargs, _value_arguments(kwargs), id=name)
    for name, (_, kwargs, _) in _FIRST_CASES.items()
    if _value_arguments(kwargs)
]


def _build(name: str, kwargs: dict) -> Callable:
    return getattr(schedules, name)(**kwargs)


# ----------------------------------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize(("name", "kwargs", "ref"), CASE_PARAMS)
def test_closed_form(name, kwargs, ref):
    sched = _build(name, kwargs)
    np.testing.assert_allclose(_np(sched(jnp.asarray(STEPS))), ref(_np(STEPS)), rtol=RTOL, atol=0)
    # Fractional steps too: each schedule is defined between integer steps.
    fractional = STEPS + 0.375
    np.testing.assert_allclose(
        _np(sched(jnp.asarray(fractional, dtype=FLOAT))), ref(_as_f32(fractional)), rtol=RTOL, atol=0
    )


# Step types and shapes are handled once per builder, so one case per builder covers them.
@pytest.mark.parametrize(("name", "kwargs", "ref"), FIRST_CASE_PARAMS)
def test_step_types_and_output_type(name, kwargs, ref):
    sched = _build(name, kwargs)
    # Shapes and dtypes are checked abstractly (eval_shape compiles nothing), for every kind of step.
    for step in (37, np.int64(37), jnp.int32(37), 37.0, np.float32(37.0), jnp.zeros((8, 20), jnp.int32)):
        out = jax.eval_shape(sched, step)
        assert out.shape == jnp.shape(step)
        assert out.dtype == FLOAT
    # Values of Python-int steps (the common call); other step types share their code with the array
    # steps checked elsewhere, and each new step type costs eager JAX a compilation per operation.
    table = _np(sched(jnp.asarray(STEPS)))
    for step in (0, 1, 37, 100):
        np.testing.assert_allclose(float(sched(step)), table[step], rtol=RTOL)
    # A vmapped schedule is the schedule, eagerly too.
    np.testing.assert_allclose(_np(jax.vmap(sched)(jnp.asarray(STEPS))), table, rtol=RTOL)


def test_multidimensional_steps():
    steps = jnp.asarray(STEPS).reshape(8, 20)
    # The schedule that looks its cycle up in a table is the one where a step's shape could matter;
    # the others are elementwise.
    sched = S.cosine_warm_restarts_schedule(1.0, 3, 2)
    np.testing.assert_allclose(_np(sched(steps)).ravel(), _np(sched(jnp.asarray(STEPS))), rtol=RTOL)


@pytest.mark.parametrize(("name", "kwargs", "ref"), CASE_PARAMS)
def test_negative_steps_are_clamped_to_zero(name, kwargs, ref):
    sched = _build(name, kwargs)
    at_zero = float(sched(0))
    assert float(sched(-3)) == at_zero
    np.testing.assert_array_equal(_np(sched(jnp.asarray(STEPS - N))), at_zero)
    np.testing.assert_array_equal(_np(sched(jnp.asarray(STEPS - N + 0.5, dtype=FLOAT))), at_zero)


@pytest.mark.parametrize(("name", "kwargs", "ref"), CASE_PARAMS)
def test_jit_and_vmap_match_eager(name, kwargs, ref):
    sched = _build(name, kwargs)
    steps = jnp.asarray(STEPS)
    eager = _np(sched(steps))
    # One compilation covers both the plain and the vmapped schedule under jit.
    jitted, jitted_vmapped = jax.jit(lambda s: (sched(s), jax.vmap(sched)(s)))(steps)
    # XLA may fuse and reorder float32 operations, so "equal" means within an ulp or two here.
    np.testing.assert_allclose(_np(jitted), eager, rtol=RTOL)
    np.testing.assert_allclose(_np(jitted_vmapped), eager, rtol=RTOL)


@pytest.mark.parametrize(("name", "kwargs", "traced"), TRACEABLE_PARAMS)
def test_value_arguments_can_be_traced(name, kwargs, traced):
    steps = jnp.asarray(STEPS)
    eager = _np(_build(name, kwargs)(steps))

    def run(values):
        return _build(name, {**kwargs, **values})(steps)

    # All value arguments traced at once: one compilation per builder.
    result = jax.jit(run)({key: kwargs[key] for key in traced})
    np.testing.assert_allclose(_np(result), eager, rtol=RTOL)


# ----------------------------------------------------------------------------------------------------
# optax.

_OPTAX_NAMES = {
    "constant_schedule": optax.constant_schedule,
    "linear_schedule": optax.linear_schedule,
    "polynomial_schedule": optax.polynomial_schedule,
    "exponential_decay": optax.exponential_decay,
    "piecewise_constant_schedule": optax.piecewise_constant_schedule,
    "cosine_decay_schedule": optax.cosine_decay_schedule,
    "warmup_cosine_decay_schedule": optax.warmup_cosine_decay_schedule,
    "warmup_exponential_decay_schedule": optax.warmup_exponential_decay_schedule,
    "sgdr_schedule": optax.sgdr_schedule,
    "linear_onecycle_schedule": optax.linear_onecycle_schedule,
    "cosine_onecycle_schedule": optax.cosine_onecycle_schedule,
}
# The rows of CASES whose schedule optax also has (torch-convention one-cycles are not optax's).
OPTAX_PARAMS = [
    pytest.param(name, kwargs, id=f"{name}-{i}")
    for i, (name, kwargs, _) in enumerate(CASES)
    if name in _OPTAX_NAMES and not kwargs.get("torch_convention", False)
]
OPTAX_PARAMS.append(
    pytest.param(
        "join_schedules",
        dict(
            schedules=[
                optax.linear_schedule(0.0, 1.0, 10),
                optax.constant_schedule(1.0),
                optax.exponential_decay(1.0, 5, 0.5),
            ],
            boundaries=[10, 20],
        ),
        id="join_schedules",
    )
)


@pytest.mark.parametrize(("name", "kwargs"), OPTAX_PARAMS)
def test_matches_optax(name, kwargs):
    ours = _np(_build(name, kwargs)(jnp.asarray(STEPS)))
    optax_builder = _OPTAX_NAMES.get(name, optax.join_schedules)
    # optax is evaluated in float64: in float32 its own formulas lose up to 1e-4 relative accuracy near
    # the end of a decay (1 + cos(pi t / T) cancels), which would hide whether ours is right. Its
    # one-cycle schedules only take scalar steps, hence the vmap; jit compiles each schedule once
    # rather than each of its operations.
    with jax.enable_x64(True):
        theirs = _np(jax.jit(jax.vmap(optax_builder(**kwargs)))(jnp.asarray(STEPS)))
    # The tiny atol only admits optax's residuals of ~1e-50 where the exact value is 0 (XLA divides by
    # multiplying with a reciprocal, so 1 - T / T can come out as -2e-17 before being raised to a power).
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=1e-12)


def test_matches_optax_in_float32_where_optax_is_accurate():
    # Away from cancellation optax's own float32 values agree with ours to float32 rounding (a few ulps,
    # hence 2e-6: both sides round).
    cases = [
        (S.warmup_cosine_decay_schedule(0.1, 1.0, 10, 100, 0.1),
         optax.warmup_cosine_decay_schedule(0.1, 1.0, 10, 100, 0.1)),
        (S.exponential_decay(1.0, 10, 0.9), optax.exponential_decay(1.0, 10, 0.9)),
        (S.piecewise_constant_schedule(1.0, {3: 0.5}), optax.piecewise_constant_schedule(1.0, {3: 0.5})),
    ]  # fmt: skip
    for ours, theirs in cases:
        steps = jnp.asarray(STEPS)
        np.testing.assert_allclose(_np(ours(steps)), _np(theirs(steps)), rtol=2 * RTOL)


# ----------------------------------------------------------------------------------------------------
# PyTorch.


def _torch_lrs(make_scheduler: Callable, lr: float, n: int) -> np.ndarray:
    """param_groups[0]["lr"] at last_epoch = 0 .. n - 1, stepping a dummy float64 SGD."""
    import torch  # only reached from tests that take the `torch` fixture

    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make_scheduler(optimizer)
    out = []
    # The optimizer is never stepped (the learning rate does not depend on it); torch warns about that.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            out.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return np.array(out, dtype=np.float64)


LRS = LazyModule("torch.optim.lr_scheduler")  # imported when a table entry runs (skips without torch)
# (id, scheduler factory, optimizer lr, gradchain schedule, steps compared: at most N).
TORCH_CASES = [
    ("StepLR", lambda o: LRS.StepLR(o, step_size=7, gamma=0.5), 0.1,
     S.exponential_decay(0.1, 7, 0.5, staircase=True), N),
    ("MultiStepLR", lambda o: LRS.MultiStepLR(o, milestones=[30, 60, 90], gamma=0.2), 0.5,
     S.piecewise_constant_schedule(0.5, {30: 0.2, 60: 0.2, 90: 0.2}), N),
    ("ExponentialLR", lambda o: LRS.ExponentialLR(o, gamma=0.97), 0.1,
     S.exponential_decay(0.1, 1, 0.97), N),
    # CosineAnnealingLR only up to T_max: beyond it torch's cosine rises again, ours holds.
    ("CosineAnnealingLR", lambda o: LRS.CosineAnnealingLR(o, T_max=120, eta_min=0.001), 0.1,
     S.cosine_decay_schedule(0.1, 120, alpha=0.001 / 0.1), 121),
    ("CosineAnnealingLR-eta0", lambda o: LRS.CosineAnnealingLR(o, T_max=100), 1.0,
     S.cosine_decay_schedule(1.0, 100), 101),
    ("CosineAnnealingWarmRestarts-mult2",
     lambda o: LRS.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-3), 0.1,
     S.cosine_warm_restarts_schedule(0.1, 10, 2, 1e-3), N),
    ("CosineAnnealingWarmRestarts-mult1", lambda o: LRS.CosineAnnealingWarmRestarts(o, T_0=17), 0.3,
     S.cosine_warm_restarts_schedule(0.3, 17), N),
    ("LinearLR-up", lambda o: LRS.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=40), 0.2,
     S.linear_schedule(0.2 * 0.1, 0.2, 40), N),
    ("LinearLR-down", lambda o: LRS.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=80), 0.2,
     S.linear_schedule(0.2, 0.2 * 0.05, 80), N),
    ("PolynomialLR", lambda o: LRS.PolynomialLR(o, total_iters=100, power=2.0), 0.1,
     S.polynomial_schedule(0.1, 0.0, 2.0, 100), N),
    ("PolynomialLR-0.9", lambda o: LRS.PolynomialLR(o, total_iters=110, power=0.9), 0.1,
     S.polynomial_schedule(0.1, 0.0, 0.9, 110), N),
    # OneCycleLR runs total_steps steps (last_epoch 0 .. total_steps - 1).
    ("OneCycleLR-cos", lambda o: LRS.OneCycleLR(o, max_lr=0.5, total_steps=150, cycle_momentum=False), 0.1,
     S.cosine_onecycle_schedule(150, 0.5, torch_convention=True), 150),
    ("OneCycleLR-cos-custom",
     lambda o: LRS.OneCycleLR(o, max_lr=1.0, total_steps=123, pct_start=0.25, div_factor=10.0,
                                       final_div_factor=100.0, cycle_momentum=False), 0.1,
     S.cosine_onecycle_schedule(123, 1.0, 0.25, 10.0, 100.0, torch_convention=True), 123),
    ("OneCycleLR-linear-three-phase",
     lambda o: LRS.OneCycleLR(o, max_lr=1.0, total_steps=120, pct_start=0.3, anneal_strategy="linear",
                                       three_phase=True, cycle_momentum=False), 0.1,
     S.linear_onecycle_schedule(120, 1.0, pct_start=0.3, pct_final=0.6, torch_convention=True), 120),
    ("CyclicLR-triangular",
     lambda o: LRS.CyclicLR(o, 0.01, 0.1, step_size_up=10, step_size_down=15, cycle_momentum=False), 0.01,
     S.cyclic_schedule(0.01, 0.1, 10, 15), N),
    ("CyclicLR-triangular2",
     lambda o: LRS.CyclicLR(o, 0.01, 0.1, step_size_up=8, mode="triangular2", cycle_momentum=False), 0.01,
     S.cyclic_schedule(0.01, 0.1, 8, mode="triangular2"), N),
    ("CyclicLR-exp_range",
     lambda o: LRS.CyclicLR(o, 0.01, 0.1, step_size_up=12, mode="exp_range", gamma=0.995,
                                     cycle_momentum=False), 0.01,
     S.cyclic_schedule(0.01, 0.1, 12, mode="exp_range", gamma=0.995), N),
    ("LambdaLR-power-law", lambda o: LRS.LambdaLR(o, lambda t: (1 + t / 10.0) ** -0.75), 0.5,
     S.power_law_schedule(0.5, 10.0, 0.75), N),
    ("LambdaLR-inverse-sqrt",
     lambda o: LRS.LambdaLR(o, lambda t: min(t / 25, math.sqrt(25 / t)) if t else 0.0), 1.0,
     S.inverse_sqrt_schedule(1.0, 25), N),
    ("LambdaLR-inverse-time", lambda o: LRS.LambdaLR(o, lambda t: 1 / (1 + 0.05 * t)), 0.3,
     S.inverse_time_decay(0.3, 0.05), N),
]  # fmt: skip


@pytest.mark.parametrize(("make_scheduler", "lr", "sched", "n"), [pytest.param(*c[1:], id=c[0]) for c in TORCH_CASES])
def test_matches_torch(make_scheduler, lr, sched, n, torch):
    expected = _torch_lrs(make_scheduler, lr, n)
    np.testing.assert_allclose(_np(sched(jnp.asarray(STEPS)))[:n], expected, rtol=RTOL, atol=0)


def test_torch_onecycle_differs_from_optax_convention():
    # The two conventions put the peak one step apart; the flag is what makes torch's schedule reachable.
    torch_like = S.cosine_onecycle_schedule(100, 1.0, torch_convention=True)
    optax_like = S.cosine_onecycle_schedule(100, 1.0)
    assert float(torch_like(29)) == 1.0 and float(optax_like(30)) == 1.0
    assert float(optax_like(29)) < 1.0


def test_inverse_time_decay_reproduces_torch_adagrad_lr_decay(torch):
    lr, lr_decay, eps = 0.1, 0.03, 1e-10
    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adagrad([param], lr=lr, lr_decay=lr_decay, eps=eps)
    sched = S.inverse_time_decay(lr, lr_decay)
    effective = []
    for k in range(1, N + 1):
        before = param.detach().clone()
        param.grad = torch.ones_like(param)
        optimizer.step()
        # With a unit gradient, Adagrad's sum of squares after k steps is k, so the update is
        # -clr / (sqrt(k) + eps): recover clr from it.
        effective.append(float((before - param.detach())[0]) * (math.sqrt(k) + eps))
    np.testing.assert_allclose(_np(sched(jnp.asarray(STEPS))), effective, rtol=RTOL)


# ----------------------------------------------------------------------------------------------------
# Relations between schedules and other properties.


def test_linear_is_polynomial_of_power_one():
    steps = jnp.asarray(STEPS)
    linear = S.linear_schedule(0.3, 1.2, 50, transition_begin=7)
    poly = S.polynomial_schedule(0.3, 1.2, 1.0, 50, transition_begin=7)
    poly_traced_power = jax.jit(lambda p: S.polynomial_schedule(0.3, 1.2, p, 50, transition_begin=7)(steps))
    np.testing.assert_allclose(_np(linear(steps)), _np(poly(steps)), rtol=RTOL)
    np.testing.assert_allclose(_np(linear(steps)), _np(poly_traced_power(1.0)), rtol=RTOL)


def test_warm_restarts_with_constant_cycles_is_sgdr():
    cycle = dict(init_value=0.0, peak_value=0.4, warmup_steps=0, decay_steps=12, end_value=0.02)
    sgdr = S.sgdr_schedule([cycle] * 14)  # 14 * 12 steps cover the grid
    restarts = S.cosine_warm_restarts_schedule(0.4, 12, 1, 0.02)
    steps = jnp.asarray(STEPS)
    np.testing.assert_allclose(_np(sgdr(steps)), _np(restarts(steps)), rtol=RTOL)


def test_periodic_schedules_keep_their_phase_at_large_integer_steps():
    restarts = S.cosine_warm_restarts_schedule(1.0, 10)
    grown = S.cosine_warm_restarts_schedule(1.0, 1, cycle_mult=2)  # restarts at 2**k - 1
    cyclic = S.cyclic_schedule(0.0, 1.0, 10)
    big = 10**9
    np.testing.assert_allclose(float(restarts(jnp.int32(big + 5))), 0.5, rtol=RTOL)
    assert float(grown(jnp.int32(2**30 - 1))) == 1.0
    np.testing.assert_allclose(float(cyclic(jnp.int32(big + 5))), 0.5, rtol=RTOL)
    np.testing.assert_allclose(float(jax.jit(cyclic)(big + 10)), 1.0, rtol=RTOL)


def test_join_schedules_passes_integer_steps_and_restarts_counts():
    seen = []

    def record(step):
        seen.append(jnp.asarray(step).dtype)
        return jnp.asarray(step, dtype=float)

    joined = S.join_schedules([record, record], [5])
    np.testing.assert_allclose(_np(joined(jnp.asarray(STEPS))), np.where(STEPS < 5, STEPS, STEPS - 5))
    assert all(jnp.issubdtype(d, jnp.integer) for d in seen)
    np.testing.assert_allclose(_np(S.join_schedules([lambda s: 2.0], [])(jnp.asarray(STEPS))), 2.0)


def test_vmap_over_a_learning_rate():
    lrs = jnp.array([0.1, 0.2, 0.4])
    values = jax.jit(jax.vmap(lambda lr: S.warmup_cosine_decay_schedule(0.0, lr, 10, 100)(55)))(lrs)
    np.testing.assert_allclose(_np(values), 0.5 * _np(lrs), rtol=RTOL)


# ----------------------------------------------------------------------------------------------------
# Argument checks: (builder, kwargs, exception, text the message must contain).

_OK = dict(
    linear=dict(init_value=1.0, end_value=0.0, transition_steps=10),
    poly=dict(init_value=1.0, end_value=0.0, power=2.0, transition_steps=10),
    exp=dict(init_value=1.0, transition_steps=10, decay_rate=0.5),
    cos=dict(init_value=1.0, decay_steps=10),
    wcos=dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=20),
    wlin=dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=20),
    wexp=dict(init_value=0.0, peak_value=1.0, warmup_steps=5, transition_steps=10, decay_rate=0.5),
    wsd=dict(peak_value=1.0, warmup_steps=5, stable_steps=5, decay_steps=5),
    restarts=dict(init_value=1.0, first_cycle_steps=10),
    onecycle=dict(transition_steps=100, peak_value=1.0),
    cyclic=dict(base_value=0.1, max_value=1.0, step_size_up=10),
)


def _bad(builder, base, exc, text, **changes):
    kwargs = {**_OK[base], **changes} if base else changes
    # Ids must be the same in every xdist worker, so no reprs that contain addresses.
    label = ",".join(
        f"{k}={v!r}" if isinstance(v, (int, float, str, type(None))) else f"{k}=<{type(v).__name__}>"
        for k, v in changes.items()
    )[:60]
    return pytest.param(builder, kwargs, exc, text, id=f"{builder.__name__}-{label}")


_BAD_ROWS = [
    _bad(S.constant_schedule, None, ValueError, "value", value=float("nan")),
    _bad(S.constant_schedule, None, TypeError, "value", value="0.1"),
    _bad(S.constant_schedule, None, TypeError, "value", value=lambda t: t),
    _bad(S.constant_schedule, None, TypeError, "value", value=np.ones(3)),
    _bad(S.constant_schedule, None, TypeError, "value", value=True),
    _bad(S.linear_schedule, "linear", ValueError, "transition_steps", transition_steps=0),
    _bad(S.linear_schedule, "linear", ValueError, "transition_steps", transition_steps=-5),
    _bad(S.linear_schedule, "linear", TypeError, "transition_steps", transition_steps=10.0),
    _bad(S.linear_schedule, "linear", ValueError, "transition_begin", transition_begin=-1),
    _bad(S.linear_schedule, "linear", ValueError, "init_value", init_value=float("inf")),
    _bad(S.linear_schedule, "linear", TypeError, "end_value", end_value=None),
    _bad(S.polynomial_schedule, "poly", ValueError, "power", power=0.0),
    _bad(S.polynomial_schedule, "poly", ValueError, "power", power=-1.0),
    _bad(S.polynomial_schedule, "poly", ValueError, "transition_steps", transition_steps=0),
    _bad(S.polynomial_schedule, "poly", TypeError, "transition_begin", transition_begin=1.5),
    _bad(S.exponential_decay, "exp", ValueError, "transition_steps", transition_steps=0),
    _bad(S.exponential_decay, "exp", ValueError, "decay_rate", decay_rate=0.0),
    _bad(S.exponential_decay, "exp", ValueError, "decay_rate", decay_rate=-0.5),
    _bad(S.exponential_decay, "exp", ValueError, "transition_begin", transition_begin=-3),
    _bad(S.exponential_decay, "exp", TypeError, "staircase", staircase="yes"),
    _bad(S.exponential_decay, "exp", ValueError, "end_value", end_value=float("nan")),
    _bad(S.piecewise_constant_schedule, None, ValueError, "boundaries_and_scales", init_value=1.0,
         boundaries_and_scales={10: -0.1}),
    _bad(S.piecewise_constant_schedule, None, ValueError, "boundaries_and_scales", init_value=1.0,
         boundaries_and_scales={-10: 0.1}),
    _bad(S.piecewise_constant_schedule, None, TypeError, "boundaries_and_scales", init_value=1.0,
         boundaries_and_scales={10.5: 0.1}),
    _bad(S.piecewise_constant_schedule, None, TypeError, "boundaries_and_scales", init_value=1.0,
         boundaries_and_scales=[(10, 0.1)]),
    _bad(S.piecewise_constant_schedule, None, ValueError, "init_value", init_value=float("inf")),
    _bad(S.cosine_decay_schedule, "cos", ValueError, "decay_steps", decay_steps=0),
    _bad(S.cosine_decay_schedule, "cos", TypeError, "decay_steps", decay_steps=10.0),
    _bad(S.cosine_decay_schedule, "cos", ValueError, "exponent", exponent=0.0),
    _bad(S.cosine_decay_schedule, "cos", ValueError, "alpha", alpha=float("nan")),
    _bad(S.warmup_cosine_decay_schedule, "wcos", ValueError, "decay_steps", decay_steps=5),
    _bad(S.warmup_cosine_decay_schedule, "wcos", ValueError, "warmup_steps", warmup_steps=-1),
    _bad(S.warmup_cosine_decay_schedule, "wcos", ValueError, "exponent", exponent=-2.0),
    _bad(S.warmup_cosine_decay_schedule, "wcos", ValueError, "peak_value", peak_value=float("inf")),
    _bad(S.warmup_linear_decay_schedule, "wlin", ValueError, "decay_steps", decay_steps=3),
    _bad(S.warmup_linear_decay_schedule, "wlin", TypeError, "warmup_steps", warmup_steps=2.0),
    _bad(S.warmup_linear_decay_schedule, "wlin", ValueError, "end_value", end_value=float("-inf")),
    _bad(S.warmup_exponential_decay_schedule, "wexp", ValueError, "warmup_steps", warmup_steps=-1),
    _bad(S.warmup_exponential_decay_schedule, "wexp", ValueError, "transition_steps", transition_steps=0),
    _bad(S.warmup_exponential_decay_schedule, "wexp", ValueError, "decay_rate", decay_rate=0.0),
    _bad(S.warmup_exponential_decay_schedule, "wexp", TypeError, "staircase", staircase=1),
    _bad(S.warmup_stable_decay_schedule, "wsd", ValueError, "decay_steps", decay_steps=0),
    _bad(S.warmup_stable_decay_schedule, "wsd", ValueError, "stable_steps", stable_steps=-1),
    _bad(S.warmup_stable_decay_schedule, "wsd", ValueError, "warmup_steps", warmup_steps=-2),
    _bad(S.warmup_stable_decay_schedule, "wsd", ValueError, "decay_type", decay_type="exponential"),
    _bad(S.warmup_stable_decay_schedule, "wsd", ValueError, "init_value", init_value=float("nan")),
    _bad(S.inverse_sqrt_schedule, None, ValueError, "timescale", peak_value=1.0, timescale=0.0),
    _bad(S.inverse_sqrt_schedule, None, ValueError, "warmup_steps", peak_value=1.0, warmup_steps=-1),
    _bad(S.inverse_sqrt_schedule, None, ValueError, "peak_value", peak_value=float("nan")),
    _bad(S.power_law_schedule, None, ValueError, "tau", init_value=1.0, tau=0.0, alpha=1.0),
    _bad(S.power_law_schedule, None, ValueError, "alpha", init_value=1.0, tau=1.0, alpha=-0.5),
    _bad(S.power_law_schedule, None, TypeError, "init_value", init_value=None, tau=1.0, alpha=1.0),
    _bad(S.inverse_time_decay, None, ValueError, "decay_rate", init_value=1.0, decay_rate=-0.1),
    _bad(S.inverse_time_decay, None, ValueError, "decay_steps", init_value=1.0, decay_rate=0.1,
         decay_steps=0),
    _bad(S.inverse_time_decay, None, TypeError, "staircase", init_value=1.0, decay_rate=0.1, staircase=None),
    _bad(S.cosine_warm_restarts_schedule, "restarts", ValueError, "first_cycle_steps", first_cycle_steps=0),
    _bad(S.cosine_warm_restarts_schedule, "restarts", ValueError, "cycle_mult", cycle_mult=0),
    _bad(S.cosine_warm_restarts_schedule, "restarts", TypeError, "cycle_mult", cycle_mult=1.5),
    _bad(S.cosine_warm_restarts_schedule, "restarts", ValueError, "min_value", min_value=float("nan")),
    _bad(S.sgdr_schedule, None, ValueError, "cosine_kwargs", cosine_kwargs=[]),
    _bad(S.sgdr_schedule, None, TypeError, "cosine_kwargs", cosine_kwargs=dict(decay_steps=10)),
    _bad(S.sgdr_schedule, None, TypeError, "cosine_kwargs[0]", cosine_kwargs=[5]),
    _bad(S.sgdr_schedule, None, ValueError, "cosine_kwargs[1]: decay_steps",
         cosine_kwargs=[_OK["wcos"], {**_OK["wcos"], "decay_steps": 2}]),
    _bad(S.sgdr_schedule, None, TypeError, "cosine_kwargs[0]", cosine_kwargs=[dict(init_value=0.0)]),
    _bad(S.linear_onecycle_schedule, "onecycle", ValueError, "transition_steps", transition_steps=0),
    _bad(S.linear_onecycle_schedule, "onecycle", ValueError, "pct_start", pct_start=1.5),
    _bad(S.linear_onecycle_schedule, "onecycle", ValueError, "pct_final", pct_start=0.5, pct_final=0.4),
    _bad(S.linear_onecycle_schedule, "onecycle", ValueError, "div_factor", div_factor=0.0),
    _bad(S.linear_onecycle_schedule, "onecycle", ValueError, "final_div_factor", final_div_factor=-1.0),
    _bad(S.linear_onecycle_schedule, "onecycle", ValueError, "pct_final", pct_start=0.3, pct_final=0.305,
         torch_convention=True),
    _bad(S.linear_onecycle_schedule, "onecycle", TypeError, "torch_convention", torch_convention="torch"),
    _bad(S.cosine_onecycle_schedule, "onecycle", ValueError, "transition_steps", transition_steps=-1),
    _bad(S.cosine_onecycle_schedule, "onecycle", ValueError, "pct_start", pct_start=-0.1),
    _bad(S.cosine_onecycle_schedule, "onecycle", ValueError, "pct_start", pct_start=0.01,
         torch_convention=True),
    _bad(S.cosine_onecycle_schedule, "onecycle", ValueError, "pct_start", pct_start=1.0,
         torch_convention=True),
    _bad(S.cosine_onecycle_schedule, "onecycle", ValueError, "peak_value", peak_value=float("inf")),
    _bad(S.cyclic_schedule, "cyclic", ValueError, "step_size_up", step_size_up=0),
    _bad(S.cyclic_schedule, "cyclic", ValueError, "step_size_down", step_size_down=0),
    _bad(S.cyclic_schedule, "cyclic", TypeError, "step_size_down", step_size_down=2.5),
    _bad(S.cyclic_schedule, "cyclic", ValueError, "mode", mode="cosine"),
    _bad(S.cyclic_schedule, "cyclic", ValueError, "gamma", gamma=0.0),
    _bad(S.cyclic_schedule, "cyclic", ValueError, "max_value", max_value=float("nan")),
    _bad(S.join_schedules, None, ValueError, "schedules", schedules=[], boundaries=[]),
    _bad(S.join_schedules, None, TypeError, "schedules[1]", schedules=[S.constant_schedule(1.0), 2.0],
         boundaries=[3]),
    _bad(S.join_schedules, None, ValueError, "boundaries", schedules=[S.constant_schedule(1.0)] * 2,
         boundaries=[]),
    _bad(S.join_schedules, None, ValueError, "boundaries", schedules=[S.constant_schedule(1.0)] * 3,
         boundaries=[5, 2]),
    _bad(S.join_schedules, None, ValueError, "boundaries[0]", schedules=[S.constant_schedule(1.0)] * 2,
         boundaries=[-1]),
    _bad(S.join_schedules, None, TypeError, "boundaries[0]", schedules=[S.constant_schedule(1.0)] * 2,
         boundaries=[1.5]),
]  # fmt: skip
# Numbered ids: several rows of one builder change the same argument.
BAD_ARGUMENTS = [pytest.param(*row.values, id=f"{i}-{row.id}") for i, row in enumerate(_BAD_ROWS)]


@pytest.mark.parametrize(("builder", "kwargs", "exc", "text"), BAD_ARGUMENTS)
def test_bad_arguments(builder, kwargs, exc, text):
    with pytest.raises(exc) as info:
        builder(**kwargs)
    # The message names the argument and says what came.
    assert text in str(info.value)
    assert "got" in str(info.value)


def test_every_builder_has_bad_argument_rows():
    covered = {p.values[0].__name__ for p in BAD_ARGUMENTS}
    assert covered == set(schedules.__all__) - {"Schedule"}


def test_shape_arguments_must_be_concrete():
    with pytest.raises(TypeError, match="pct_start"):
        jax.jit(lambda p: S.cosine_onecycle_schedule(100, 1.0, pct_start=p)(3))(0.3)


def test_accepted_edge_values():
    # Zero-length phases that no formula divides by are allowed, and skip the phase.
    assert float(S.warmup_cosine_decay_schedule(0.0, 1.0, 0, 10)(0)) == 1.0
    assert float(S.warmup_stable_decay_schedule(1.0, 0, 0, 10)(0)) == 1.0
    assert float(S.inverse_sqrt_schedule(1.0, 0)(0)) == 1.0
    assert float(S.piecewise_constant_schedule(1.0, {})(5)) == 1.0
    no_rise = S.linear_onecycle_schedule(10, 1.0, pct_start=0.0, pct_final=0.0)
    np.testing.assert_allclose(float(no_rise(0)), 0.04)


# ----------------------------------------------------------------------------------------------------
# The public surface and its documentation.

PUBLIC_BUILDERS = [name for name in schedules.__all__ if name != "Schedule"]


def test_all_lists_every_public_name():
    public = {
        name
        for name, obj in vars(schedules).items()
        if not name.startswith("_") and callable(obj) and getattr(obj, "__module__", None) == schedules.__name__
    }
    assert public <= set(schedules.__all__)
    assert "Schedule" in schedules.__all__
    for name in schedules.__all__:
        assert hasattr(schedules, name), name


@pytest.mark.parametrize("name", PUBLIC_BUILDERS)
def test_docstring_sections_and_example(name):
    fn = getattr(schedules, name)
    doc = inspect.getdoc(fn)
    assert doc and doc.splitlines()[0].strip().endswith(".")
    for section in ("$$", "Args:", "Returns:", "Example:", "```python"):
        assert section in doc, f"{name}: missing {section!r}"
    assert all(p in doc for p in inspect.signature(fn).parameters), f"{name}: an argument is undocumented"
    for builder in ("sgdr", "warm_restarts", "onecycle", "cyclic", "stable_decay", "inverse_sqrt"):
        if builder in name:
            assert "References:" in doc, name
    examples = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert examples
    for source in examples:
        source = textwrap.dedent(source)
        imports = ("import gradchain.schedules as schedules", "from gradchain import schedules")
        assert any(line in source for line in imports)
        exec(compile(source, f"<{name} example>", "exec"), {})


def test_every_public_function_has_type_hints():
    for name in PUBLIC_BUILDERS:
        signature = inspect.signature(getattr(schedules, name))
        assert signature.return_annotation is not inspect.Signature.empty, name
        for parameter in signature.parameters.values():
            assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)


def test_warmup_exponential_decay_names_a_bad_peak_value():
    with pytest.raises(ValueError, match="peak_value"):
        schedules.warmup_exponential_decay_schedule(0.0, float("nan"), 10, 10, 0.5)
