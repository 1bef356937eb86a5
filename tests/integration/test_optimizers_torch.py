"""Every optimizer that torch.optim also has, reproduced with the gradchain arguments the docstrings give.

torch runs in float64 (`foreach=False`, gradients set by hand on `p.grad`), gradchain in float32 and,
with `jax_enable_x64`, in float64, on the same fixed sequence of pseudo-random gradients (independent
of the params), and the parameter trajectories are compared at every step, leaf by leaf. Each row of
docs/torch_migration.md is one of these tests (or one of tests/schedules/test_schedules.py's `test_matches_torch`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import RTOL32, LazyModule, assert_stacked_close, optimizer_data, scan_trajectories

import gradchain as gc

# float32 trajectories to RTOL32 = 2e-6 of each leaf's largest |p| (reference.py: the rounding of
# p + u over 120 steps); float64 ones to RTOL64.
STEPS = 120
RTOL64 = 1e-10

# The tree of reference.py's OPTIMIZER_TREE_SHAPES: float64 params and STEPS stacked gradient trees
# (another seed than tests/optimizers/test_optimizers.py's), for torch and, cast, for gradchain.
PARAMS64, GRADS64 = optimizer_data(seed=1, steps=STEPS)


# ---------------------------------------------------------------------------------------------------
# Running both libraries.


def run_many(txs: list[Any], dtype: Any, *, with_states: bool = False) -> list[Any]:
    """Trajectories (params after every step) of gradchain transformations, all in one jitted scan.

    The params and gradients are cast to `dtype`. With `with_states`, (trajectory, final state) pairs.
    """
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), PARAMS64)
    grads = jax.tree.map(lambda x: jnp.asarray(x, dtype), GRADS64)
    results = jax.tree.map(np.asarray, scan_trajectories(txs, params, grads))
    return results if with_states else [trajectory for trajectory, _ in results]


def run_torch(
    make_optimizer: Callable,
    make_scheduler: Callable | None = None,
    *,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    lr_changes: dict[int, float] | None = None,
    with_optimizer: bool = False,
) -> Any:
    """torch's float64 trajectory: p.grad set by hand, then (clip,) step, (scheduler step)."""
    import torch  # only reached from tests that take the `torch` fixture

    # torch keeps scalar state (NAdam's mu_product, step counts) in float32 unless the default dtype
    # is float64; that alone moves NAdam's float64 trajectory by 2e-10.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        trajectory, optimizer, tensors = _run_torch(make_optimizer, make_scheduler, clip_norm, clip_value, lr_changes)
    finally:
        torch.set_default_dtype(default_dtype)
    return (trajectory, optimizer, tensors) if with_optimizer else trajectory


def _run_torch(make_optimizer, make_scheduler, clip_norm, clip_value, lr_changes):
    import torch  # only reached from tests that take the `torch` fixture

    leaves, treedef = jax.tree.flatten(PARAMS64)
    tensors = [torch.tensor(np.array(p), dtype=torch.float64, requires_grad=True) for p in leaves]
    optimizer = make_optimizer(tensors)
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    g_leaves = treedef.flatten_up_to(GRADS64)
    out: list[list[np.ndarray]] = [[] for _ in leaves]
    for t in range(STEPS):
        if lr_changes and t in lr_changes:
            for group in optimizer.param_groups:
                group["lr"] = lr_changes[t]
        for p, g in zip(tensors, g_leaves, strict=True):
            p.grad = torch.tensor(g[t], dtype=torch.float64)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(tensors, clip_norm)
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(tensors, clip_value)
        optimizer.step()
        if scheduler is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scheduler.step()
        for o, p in zip(out, tensors, strict=True):
            o.append(p.detach().numpy().copy())
    return treedef.unflatten([np.stack(o) for o in out]), optimizer, tensors


def max_relative_error(actual: Any, expected: Any) -> float:
    return max(
        float(np.max(np.abs(np.asarray(a) - e)) / np.max(np.abs(e)))
        for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True)
    )


# ---------------------------------------------------------------------------------------------------
# The table: torch.optim call -> the gradchain call its docstring documents.

O = LazyModule("torch.optim")  # imported when a table entry runs (skips without torch)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    torch: Callable[[list], Any]
    gradchain: Callable[[], Any]


CASES = [
    # SGD(lr, momentum, dampening, weight_decay, nesterov) -> sgd(lr, momentum, nesterov, dampening=, weight_decay=)
    Case("SGD", lambda ps: O.SGD(ps, lr=0.05, foreach=False), lambda: gc.sgd(0.05)),
    Case("SGD-momentum", lambda ps: O.SGD(ps, lr=0.02, momentum=0.9, foreach=False), lambda: gc.sgd(0.02, 0.9)),
    Case(
        "SGD-dampening",
        lambda ps: O.SGD(ps, lr=0.02, momentum=0.9, dampening=0.5, foreach=False),
        lambda: gc.sgd(0.02, 0.9, dampening=0.5),
    ),
    Case(
        "SGD-nesterov",
        lambda ps: O.SGD(ps, lr=0.02, momentum=0.9, nesterov=True, foreach=False),
        lambda: gc.sgd(0.02, 0.9, True),
    ),
    Case(
        "SGD-weight_decay",
        lambda ps: O.SGD(ps, lr=0.05, weight_decay=0.1, foreach=False),
        lambda: gc.sgd(0.05, weight_decay=0.1),
    ),
    Case(
        "SGD-momentum-dampening-weight_decay",
        lambda ps: O.SGD(ps, lr=0.02, momentum=0.8, dampening=0.3, weight_decay=0.1, foreach=False),
        lambda: gc.sgd(0.02, 0.8, dampening=0.3, weight_decay=0.1),
    ),
    Case(
        "SGD-nesterov-weight_decay",
        lambda ps: O.SGD(ps, lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.1, foreach=False),
        lambda: gc.sgd(0.02, 0.9, True, weight_decay=0.1),
    ),
    # maximize=True: negate the gradient first (before the coupled decay, as torch does)
    Case(
        "SGD-maximize",
        lambda ps: O.SGD(ps, lr=0.02, momentum=0.9, weight_decay=0.1, maximize=True, foreach=False),
        lambda: gc.chain(gc.scale(-1.0), gc.sgd(0.02, 0.9, weight_decay=0.1)),
    ),
    # Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
    #   -> adagrad(lr, initial_accumulator_value, eps, eps_in_sqrt=False, lr_decay=, weight_decay=)
    Case(
        "Adagrad",
        lambda ps: O.Adagrad(ps, lr=0.1, foreach=False),
        lambda: gc.adagrad(0.1, 0.0, 1e-10, eps_in_sqrt=False),
    ),
    Case(
        "Adagrad-lr_decay",
        lambda ps: O.Adagrad(ps, lr=0.1, lr_decay=0.05, foreach=False),
        lambda: gc.adagrad(0.1, 0.0, 1e-10, eps_in_sqrt=False, lr_decay=0.05),
    ),
    Case(
        "Adagrad-weight_decay",
        lambda ps: O.Adagrad(ps, lr=0.1, weight_decay=0.1, foreach=False),
        lambda: gc.adagrad(0.1, 0.0, 1e-10, eps_in_sqrt=False, weight_decay=0.1),
    ),
    Case(
        "Adagrad-initial_accumulator_value-eps",
        lambda ps: O.Adagrad(ps, lr=0.1, initial_accumulator_value=0.5, eps=0.05, foreach=False),
        lambda: gc.adagrad(0.1, 0.5, 0.05, eps_in_sqrt=False),
    ),
    Case(
        "Adagrad-all",
        lambda ps: O.Adagrad(
            ps, lr=0.2, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.1, eps=1e-3, foreach=False
        ),
        lambda: gc.adagrad(0.2, 0.1, 1e-3, eps_in_sqrt=False, lr_decay=0.01, weight_decay=0.05),
    ),
    # lr_decay is also the schedule inverse_time_decay(lr, lr_decay)
    Case(
        "Adagrad-lr_decay-as-schedule",
        lambda ps: O.Adagrad(ps, lr=0.1, lr_decay=0.05, foreach=False),
        lambda: gc.adagrad(gc.schedules.inverse_time_decay(0.1, 0.05), 0.0, 1e-10, eps_in_sqrt=False),
    ),
    # RMSprop(lr, alpha, eps, weight_decay, momentum, centered)
    #   -> rmsprop(lr, decay=alpha, eps=eps, eps_in_sqrt=False, centered=, momentum=momentum or None, weight_decay=)
    Case(
        "RMSprop",
        lambda ps: O.RMSprop(ps, lr=0.01, foreach=False),
        lambda: gc.rmsprop(0.01, decay=0.99, eps=1e-8, eps_in_sqrt=False),
    ),
    Case(
        "RMSprop-alpha-eps",
        lambda ps: O.RMSprop(ps, lr=0.01, alpha=0.9, eps=0.05, foreach=False),
        lambda: gc.rmsprop(0.01, decay=0.9, eps=0.05, eps_in_sqrt=False),
    ),
    Case(
        "RMSprop-centered",
        lambda ps: O.RMSprop(ps, lr=0.01, centered=True, eps=1e-3, foreach=False),
        lambda: gc.rmsprop(0.01, decay=0.99, eps=1e-3, eps_in_sqrt=False, centered=True),
    ),
    Case(
        "RMSprop-momentum",
        lambda ps: O.RMSprop(ps, lr=0.003, momentum=0.9, foreach=False),
        lambda: gc.rmsprop(0.003, decay=0.99, eps=1e-8, eps_in_sqrt=False, momentum=0.9),
    ),
    Case(
        "RMSprop-weight_decay",
        lambda ps: O.RMSprop(ps, lr=0.01, weight_decay=0.1, foreach=False),
        lambda: gc.rmsprop(0.01, decay=0.99, eps=1e-8, eps_in_sqrt=False, weight_decay=0.1),
    ),
    Case(
        "RMSprop-all",
        lambda ps: O.RMSprop(
            ps, lr=0.003, alpha=0.95, eps=1e-3, weight_decay=0.1, momentum=0.8, centered=True, foreach=False
        ),
        lambda: gc.rmsprop(
            0.003, decay=0.95, eps=1e-3, eps_in_sqrt=False, centered=True, momentum=0.8, weight_decay=0.1
        ),
    ),
    # Adam(lr, betas, eps, weight_decay) -> adam(lr, *betas, eps, weight_decay=) (coupled L2)
    Case("Adam", lambda ps: O.Adam(ps, lr=0.01, foreach=False), lambda: gc.adam(0.01)),
    Case(
        "Adam-betas-eps",
        lambda ps: O.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-3, foreach=False),
        lambda: gc.adam(0.01, 0.8, 0.99, 1e-3),
    ),
    Case(
        "Adam-weight_decay",
        lambda ps: O.Adam(ps, lr=0.01, weight_decay=0.1, foreach=False),
        lambda: gc.adam(0.01, weight_decay=0.1),
    ),
    # Adam(amsgrad=True) -> amsgrad(lr, *betas, eps, debias_before_max=False, weight_decay=)
    Case(
        "Adam-amsgrad",
        lambda ps: O.Adam(ps, lr=0.01, betas=(0.9, 0.95), amsgrad=True, foreach=False),
        lambda: gc.amsgrad(0.01, 0.9, 0.95, debias_before_max=False),
    ),
    Case(
        "Adam-amsgrad-weight_decay",
        lambda ps: O.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, amsgrad=True, foreach=False),
        lambda: gc.amsgrad(0.01, 0.8, 0.99, 1e-4, debias_before_max=False, weight_decay=0.1),
    ),
    Case(
        "Adam-maximize",
        lambda ps: O.Adam(ps, lr=0.01, weight_decay=0.1, maximize=True, foreach=False),
        lambda: gc.chain(gc.scale(-1.0), gc.adam(0.01, weight_decay=0.1)),
    ),
    # AdamW(lr, betas, eps, weight_decay) -> adamw(lr, *betas, eps, weight_decay=) (torch's default decay 0.01)
    Case("AdamW", lambda ps: O.AdamW(ps, lr=0.01, foreach=False), lambda: gc.adamw(0.01, weight_decay=0.01)),
    Case(
        "AdamW-weight_decay",
        lambda ps: O.AdamW(ps, lr=0.01, betas=(0.85, 0.99), eps=1e-4, weight_decay=0.3, foreach=False),
        lambda: gc.adamw(0.01, 0.85, 0.99, 1e-4, weight_decay=0.3),
    ),
    # AdamW(amsgrad=True): no single gradchain optimizer; the chain below.
    Case(
        "AdamW-amsgrad",
        lambda ps: O.AdamW(ps, lr=0.01, weight_decay=0.3, amsgrad=True, foreach=False),
        lambda: gc.chain(
            gc.scale_by_amsgrad(debias_before_max=False), gc.add_decayed_weights(0.3), gc.scale_by_learning_rate(0.01)
        ),
    ),
    # Adamax(lr, betas, eps, weight_decay) -> adamax(lr, *betas, eps, weight_decay=)
    Case("Adamax", lambda ps: O.Adamax(ps, lr=0.01, foreach=False), lambda: gc.adamax(0.01)),
    Case(
        "Adamax-weight_decay",
        lambda ps: O.Adamax(ps, lr=0.01, betas=(0.8, 0.9), eps=0.01, weight_decay=0.1, foreach=False),
        lambda: gc.adamax(0.01, 0.8, 0.9, 0.01, weight_decay=0.1),
    ),
    # NAdam(lr, betas, eps, weight_decay, momentum_decay) -> nadam(lr, *betas, eps, momentum_decay=, weight_decay=)
    Case("NAdam", lambda ps: O.NAdam(ps, lr=0.01, foreach=False), lambda: gc.nadam(0.01, momentum_decay=4e-3)),
    Case(
        "NAdam-weight_decay",
        lambda ps: O.NAdam(
            ps, lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, momentum_decay=0.1, foreach=False
        ),
        lambda: gc.nadam(0.01, 0.8, 0.99, 1e-4, momentum_decay=0.1, weight_decay=0.1),
    ),
    # NAdam(decoupled_weight_decay=True) -> nadamw(lr, *betas, eps, weight_decay=, momentum_decay=)
    Case(
        "NAdam-decoupled_weight_decay",
        lambda ps: O.NAdam(ps, lr=0.01, weight_decay=0.3, decoupled_weight_decay=True, foreach=False),
        lambda: gc.nadamw(0.01, weight_decay=0.3, momentum_decay=4e-3),
    ),
]
CASES_BY_ID = {c.id: c for c in CASES}


@functools.cache
def gradchain_results(dtype: str) -> dict[str, Any]:
    """case id -> gradchain trajectory, in `dtype` (float64 only under the x64 fixture)."""
    if dtype == "float64":
        assert jax.config.jax_enable_x64, "float64 results need the x64 fixture"
    out = {}
    for start in range(0, len(CASES), 12):  # a few cases per compilation: fast, and not one huge program
        batch = CASES[start : start + 12]
        out.update(zip([c.id for c in batch], run_many([c.gradchain() for c in batch], jnp.dtype(dtype)), strict=True))
    return out


@functools.cache
def torch_results(case_id: str) -> Any:
    return run_torch(CASES_BY_ID[case_id].torch)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float32_matches_torch_float64(case: Case, torch):
    assert_stacked_close(gradchain_results("float32")[case.id], torch_results(case.id), RTOL32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float64_matches_torch_float64(case: Case, x64, torch):
    ours = gradchain_results("float64")[case.id]
    assert jax.tree.leaves(ours)[0].dtype == np.float64
    assert_stacked_close(ours, torch_results(case.id), RTOL64)


# The comparisons can fail: the optax-convention arguments (or a wrong default) are far from torch.
NEAR_MISSES = [
    ("Adagrad-initial_accumulator_value-eps", lambda: gc.adagrad(0.1, 0.5, 0.05)),  # eps inside the root
    ("Adagrad", lambda: gc.adagrad(0.1)),  # optax's defaults: s_0 = 0.1, eps = 1e-7
    ("Adagrad-lr_decay", lambda: gc.adagrad(0.1, 0.0, 1e-10, eps_in_sqrt=False)),
    ("RMSprop", lambda: gc.rmsprop(0.01, eps_in_sqrt=False)),  # optax's decay 0.9, not torch's alpha 0.99
    ("RMSprop-alpha-eps", lambda: gc.rmsprop(0.01, decay=0.9, eps=0.05)),  # eps inside the root
    ("SGD-dampening", lambda: gc.sgd(0.02, 0.9)),
    ("Adam-weight_decay", lambda: gc.adamw(0.01, weight_decay=0.1)),  # decoupled instead of coupled
    ("Adam-amsgrad", lambda: gc.amsgrad(0.01, 0.9, 0.95)),  # optax's debias-before-max
    ("AdamW", lambda: gc.adamw(0.01)),  # optax's default decay 1e-4, not torch's 0.01
    ("NAdam", lambda: gc.nadam(0.01)),  # optax's NAdam: constant momentum, no Dozat schedule
]


@functools.cache
def near_miss_results() -> list[Any]:
    return run_many([wrong() for _, wrong in NEAR_MISSES], jnp.float32)


@pytest.mark.parametrize(("case_id", "wrong"), NEAR_MISSES, ids=[f"{m[0]}-{i}" for i, m in enumerate(NEAR_MISSES)])
def test_other_conventions_do_not_match_torch(case_id, wrong, torch):
    ours = near_miss_results()[[m[1] for m in NEAR_MISSES].index(wrong)]
    with pytest.raises(AssertionError, match="max error"):
        assert_stacked_close(ours, torch_results(case_id), 10 * RTOL32)


def test_default_nadam_is_not_torch_nadam(torch):
    """`gc.nadam` without `momentum_decay` is optax's NAdam, not torch's.

    torch.optim.NAdam warms the momentum up with Dozat's schedule mu_t = b1 (1 - 0.5 * 0.96^(t psi));
    optax's (and gradchain's default) NAdam uses a constant b1. This pins the difference down: if the
    default ever switches to torch's variant, this test fails and the migration page must change.
    """
    (default, dozat) = run_many([gc.nadam(0.01), gc.nadam(0.01, momentum_decay=4e-3)], jnp.float32)
    expected = torch_results("NAdam")
    assert max_relative_error(default, expected) > 1e-3
    assert_stacked_close(dozat, expected, RTOL32)


# ---------------------------------------------------------------------------------------------------
# The rest of a torch training loop: schedulers, changing param_groups' lr, gradient clipping.

S = gc.schedules
LRS = LazyModule("torch.optim.lr_scheduler")  # imported when a table entry runs (skips without torch)

SCHEDULED = [
    # The learning rate multiplies the momentum buffer as in torch (p -= lr_t * buf), so a schedule
    # reproduces torch's scheduler in momentum methods too (optax's rmsprop differs there).
    (
        "SGD-momentum-StepLR",
        lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, foreach=False),
        lambda o: LRS.StepLR(o, step_size=30, gamma=0.5),
        lambda: gc.sgd(S.exponential_decay(0.05, 30, 0.5, staircase=True), 0.9),
    ),
    (
        "RMSprop-momentum-ExponentialLR",
        lambda ps: O.RMSprop(ps, lr=0.005, momentum=0.9, foreach=False),
        lambda o: LRS.ExponentialLR(o, gamma=0.98),
        lambda: gc.rmsprop(S.exponential_decay(0.005, 1, 0.98), decay=0.99, eps_in_sqrt=False, momentum=0.9),
    ),
    (
        "Adam-MultiStepLR",
        lambda ps: O.Adam(ps, lr=0.02, foreach=False),
        lambda o: LRS.MultiStepLR(o, milestones=[40, 80], gamma=0.3),
        lambda: gc.adam(S.piecewise_constant_schedule(0.02, {40: 0.3, 80: 0.3})),
    ),
    (
        "AdamW-CosineAnnealingLR",
        lambda ps: O.AdamW(ps, lr=0.02, weight_decay=0.1, foreach=False),
        lambda o: LRS.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.002),
        lambda: gc.adamw(S.cosine_decay_schedule(0.02, STEPS, alpha=0.1), weight_decay=0.1),
    ),
    (
        "Adagrad-LinearLR",
        lambda ps: O.Adagrad(ps, lr=0.2, foreach=False),
        lambda o: LRS.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=50),
        lambda: gc.adagrad(S.linear_schedule(0.05, 0.2, 50), 0.0, 1e-10, eps_in_sqrt=False),
    ),
    (
        "SGD-nesterov-CosineAnnealingWarmRestarts",
        lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, foreach=False),
        lambda o: LRS.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=2, eta_min=0.001),
        lambda: gc.sgd(S.cosine_warm_restarts_schedule(0.05, 20, 2, 0.001), 0.9, True),
    ),
    (
        "Adamax-OneCycleLR",
        lambda ps: O.Adamax(ps, lr=0.01, foreach=False),
        lambda o: LRS.OneCycleLR(o, max_lr=0.03, total_steps=STEPS, cycle_momentum=False),
        lambda: gc.adamax(S.cosine_onecycle_schedule(STEPS, 0.03, torch_convention=True)),
    ),
]


@functools.cache
def scheduled_results() -> list[Any]:
    return run_many([make() for *_, make in SCHEDULED], jnp.float32)


@pytest.mark.parametrize("index", range(len(SCHEDULED)), ids=[s[0] for s in SCHEDULED])
def test_lr_scheduler_is_a_schedule(index, torch):
    _, make_optimizer, make_scheduler, _ = SCHEDULED[index]
    assert_stacked_close(scheduled_results()[index], run_torch(make_optimizer, make_scheduler), RTOL32)


@pytest.mark.parametrize(
    ("make_optimizer", "make_tx"),
    [
        (lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, foreach=False), lambda: gc.sgd(0.05, 0.9)),
        (lambda ps: O.Adam(ps, lr=0.02, weight_decay=0.01, foreach=False), lambda: gc.adam(0.02, weight_decay=0.01)),
        (
            lambda ps: O.RMSprop(ps, lr=0.005, momentum=0.5, foreach=False),
            lambda: gc.rmsprop(0.005, decay=0.99, eps_in_sqrt=False, momentum=0.5),
        ),
    ],
    ids=["SGD", "Adam", "RMSprop"],
)
def test_setting_param_groups_lr_is_set_hyperparams(make_optimizer, make_tx, torch):
    """torch: `group["lr"] = x` between steps; gradchain: `set_hyperparams(state, learning_rate=x)`.

    (That the new value does not recompile the step is tests/test_jit.py's business.)
    """
    changes = {40: 0.001, 80: 0.03}
    expected = run_torch(make_optimizer, lr_changes=changes)

    tx = make_tx()
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS64)
    grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), GRADS64)

    @jax.jit
    def step(p, state, g):
        updates, state = tx.update(g, state, p)
        return gc.apply_updates(p, updates), state

    state = tx.init(params)
    trajectory = []
    for t in range(STEPS):
        if t in changes:
            state = gc.set_hyperparams(state, learning_rate=changes[t])
        params, state = step(params, state, jax.tree.map(lambda g, t=t: g[t], grads))
        trajectory.append(params)
    assert np.isclose(gc.hyperparams(state)["learning_rate"], 0.03)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *trajectory)
    assert_stacked_close(stacked, expected, RTOL32)


def test_adagrad_lr_decay_new_base_rate_is_a_rebuilt_optimizer_on_the_same_state(torch):
    """torch: `group["lr"] = x` on Adagrad(lr_decay=d); gradchain: adagrad(x, ..., lr_decay=d) continuing the state.

    With `lr_decay` the learning rate is a schedule, which `set_hyperparams` refuses to overwrite.
    """
    changes = {40: 0.3, 80: 0.05}
    expected = run_torch(lambda ps: O.Adagrad(ps, lr=0.1, lr_decay=0.05, foreach=False), lr_changes=changes)

    def make(lr):
        return gc.adagrad(lr, 0.0, 1e-10, eps_in_sqrt=False, lr_decay=0.05)

    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS64)
    state = make(0.1).init(params)
    with pytest.raises(ValueError, match="learning_rate"):
        gc.set_hyperparams(state, learning_rate=0.3)
    pieces = []
    for start, stop, lr in [(0, 40, 0.1), (40, 80, 0.3), (80, STEPS, 0.05)]:
        tx = make(lr)

        def body(carry, g, tx=tx):
            p, state = carry
            updates, state = tx.update(g, state, p)
            p = gc.apply_updates(p, updates)
            return (p, state), p

        grads = jax.tree.map(lambda x: jnp.asarray(x[start:stop], jnp.float32), GRADS64)
        (params, state), trajectory = jax.jit(lambda c, gs, body=body: jax.lax.scan(body, c, gs))(
            (params, state), grads
        )
        pieces.append(trajectory)
    ours = jax.tree.map(lambda *xs: np.concatenate(xs), *pieces)
    assert_stacked_close(ours, expected, RTOL32)


def test_clip_grad_norm_is_clip_by_global_norm_with_eps(torch):
    """torch.nn.utils.clip_grad_norm_(params, c) before the step is clip_by_global_norm(c, eps=1e-6)."""
    max_norm = 8.0  # the gradients' global norm is about 11: most steps clip, some do not
    norms = np.sqrt(sum(np.sum(g.reshape(STEPS, -1) ** 2, axis=1) for g in jax.tree.leaves(GRADS64)))
    assert (norms > max_norm).any() and (norms < max_norm).any()
    expected = run_torch(lambda ps: O.SGD(ps, lr=0.02, momentum=0.9, foreach=False), clip_norm=max_norm)
    ours, optax_eps = run_many(
        [
            gc.chain(gc.clip_by_global_norm(max_norm, eps=1e-6), gc.sgd(0.02, 0.9)),
            gc.chain(gc.clip_by_global_norm(max_norm), gc.sgd(0.02, 0.9)),
        ],
        jnp.float32,
    )
    assert_stacked_close(ours, expected, RTOL32)
    # eps=0 (optax's clip_by_global_norm) differs by a relative 1e-6 / 11 per clipped step only: visible in float64.
    assert max_relative_error(optax_eps, expected) < 1e-5


def test_clip_grad_value_is_clip(torch):
    expected = run_torch(lambda ps: O.Adam(ps, lr=0.01, foreach=False), clip_value=0.5)
    (ours,) = run_many([gc.chain(gc.clip(0.5), gc.adam(0.01))], jnp.float32)
    assert_stacked_close(ours, expected, RTOL32)


def test_param_groups_without_decay_are_a_mask(torch):
    """torch: a second param group with weight_decay=0 (biases, scales); gradchain: `mask=`."""
    leaves = jax.tree.leaves(PARAMS64)
    decayed = [np.ndim(p) > 1 for p in leaves]

    def make_torch(ps):
        groups = [
            {"params": [p for p, d in zip(ps, decayed, strict=True) if d]},
            {"params": [p for p, d in zip(ps, decayed, strict=True) if not d], "weight_decay": 0.0},
        ]
        return O.AdamW(groups, lr=0.01, weight_decay=0.3, foreach=False)

    mask = jax.tree.map(lambda p: np.ndim(p) > 1, PARAMS64)
    expected = run_torch(make_torch)
    (ours,) = run_many([gc.adamw(0.01, weight_decay=0.3, mask=mask)], jnp.float32)
    assert_stacked_close(ours, expected, RTOL32)
    with pytest.raises(AssertionError, match="max error"):  # the mask matters
        assert_stacked_close(run_many([gc.adamw(0.01, weight_decay=0.3)], jnp.float32)[0], expected, RTOL32)


def test_clip_grad_norm_eps_in_float64(x64, torch):
    max_norm = 8.0
    expected = run_torch(lambda ps: O.SGD(ps, lr=0.05, foreach=False), clip_norm=max_norm)
    torch_eps, no_eps = run_many(
        [
            gc.chain(gc.clip_by_global_norm(max_norm, eps=1e-6), gc.sgd(0.05)),
            gc.chain(gc.clip_by_global_norm(max_norm), gc.sgd(0.05)),
        ],
        jnp.float64,
    )
    assert_stacked_close(torch_eps, expected, RTOL64)
    with pytest.raises(AssertionError, match="max error"):
        assert_stacked_close(no_eps, expected, RTOL64)


# ---------------------------------------------------------------------------------------------------
# Defaults that differ between torch and gradchain (the migration page lists them).


def test_documented_default_differences(torch):
    defaults = {
        name: {k: p.default for k, p in inspect.signature(getattr(gc, name)).parameters.items()}
        for name in ("adagrad", "rmsprop", "adamw", "sgd", "adam", "adamax")
    }
    # torch: Adagrad(initial_accumulator_value=0, eps=1e-10), eps outside the root
    assert defaults["adagrad"]["initial_accumulator_value"] == 0.1 and defaults["adagrad"]["eps"] == 1e-7
    assert defaults["adagrad"]["eps_in_sqrt"] is True
    # torch: RMSprop(alpha=0.99, eps=1e-8), eps outside the root
    assert defaults["rmsprop"]["decay"] == 0.9 and defaults["rmsprop"]["eps_in_sqrt"] is True
    # torch: AdamW(weight_decay=1e-2)
    assert defaults["adamw"]["weight_decay"] == 1e-4
    # torch's weight_decay=0 default is "no decay": gradchain's None (which leaves the ingredient out)
    for name in ("sgd", "adam", "adamax", "adagrad", "rmsprop"):
        assert defaults[name]["weight_decay"] is None
    # torch's defaults for the rest agree: Adam betas (0.9, 0.999), eps 1e-8; Adamax the same
    assert (defaults["adam"]["b1"], defaults["adam"]["b2"], defaults["adam"]["eps"]) == (0.9, 0.999, 1e-8)
    assert (defaults["adamax"]["b1"], defaults["adamax"]["b2"], defaults["adamax"]["eps"]) == (0.9, 0.999, 1e-8)
    torch_defaults = {
        "Adagrad": O.Adagrad([torch.zeros(1, requires_grad=True)]).defaults,
        "RMSprop": O.RMSprop([torch.zeros(1, requires_grad=True)]).defaults,
        "AdamW": O.AdamW([torch.zeros(1, requires_grad=True)]).defaults,
        "NAdam": O.NAdam([torch.zeros(1, requires_grad=True)]).defaults,
    }
    assert torch_defaults["Adagrad"]["initial_accumulator_value"] == 0 and torch_defaults["Adagrad"]["eps"] == 1e-10
    assert torch_defaults["RMSprop"]["alpha"] == 0.99 and torch_defaults["RMSprop"]["eps"] == 1e-8
    assert torch_defaults["AdamW"]["weight_decay"] == 1e-2
    assert torch_defaults["NAdam"]["momentum_decay"] == 4e-3


def test_schedule_names_of_the_migration_page_exist():
    for name in (
        "exponential_decay",
        "piecewise_constant_schedule",
        "cosine_decay_schedule",
        "cosine_warm_restarts_schedule",
        "linear_schedule",
        "polynomial_schedule",
        "cosine_onecycle_schedule",
        "linear_onecycle_schedule",
        "cyclic_schedule",
        "inverse_time_decay",
    ):
        assert callable(getattr(gc.schedules, name)), name


# ---------------------------------------------------------------------------------------------------
# Where torch's per-parameter state and param_groups live in gradchain's state.

STATE_FIELDS = [
    ("SGD-momentum-dampening-weight_decay", {"momentum_buffer": "trace"}),
    ("Adagrad-all", {"sum": "sum_of_squares"}),
    ("RMSprop-all", {"square_avg": "nu", "grad_avg": "mu", "momentum_buffer": "trace"}),
    ("Adam-weight_decay", {"exp_avg": "mu", "exp_avg_sq": "nu"}),
    ("Adam-amsgrad-weight_decay", {"exp_avg": "mu", "exp_avg_sq": "nu", "max_exp_avg_sq": "nu_max"}),
    ("AdamW-weight_decay", {"exp_avg": "mu", "exp_avg_sq": "nu"}),
    ("Adamax-weight_decay", {"exp_avg": "mu", "exp_inf": "nu"}),
    ("NAdam-weight_decay", {"exp_avg": "mu", "exp_avg_sq": "nu", "mu_product": "mu_product", "step": "count"}),
]


def test_torch_state_is_gradchain_state(x64, torch):
    """optimizer.state[p][key] after 120 steps is the gradchain state field of the same leaf (float64)."""
    results = run_many([CASES_BY_ID[case_id].gradchain() for case_id, _ in STATE_FIELDS], jnp.float64, with_states=True)
    for (case_id, fields), (_, state) in zip(STATE_FIELDS, results, strict=True):
        _, optimizer, tensors = run_torch(CASES_BY_ID[case_id].torch, with_optimizer=True)
        for torch_key, field in fields.items():
            ours = gc.tree.tree_get(state, field)
            assert ours is not None, f"{case_id}: no state field {field!r}"
            if torch_key in ("mu_product", "step"):  # one scalar per parameter in torch, one per state here
                expected = [float(optimizer.state[p][torch_key]) for p in tensors]
                np.testing.assert_allclose(expected, float(ours), rtol=1e-12, err_msg=f"{case_id}: {torch_key}")
                continue
            for p, leaf in zip(tensors, jax.tree.leaves(ours), strict=True):
                expected = optimizer.state[p][torch_key].numpy()
                np.testing.assert_allclose(
                    leaf,
                    expected,
                    rtol=1e-9,
                    atol=1e-12 * np.max(np.abs(expected)),
                    err_msg=f"{case_id}: {torch_key} vs {field}",
                )


HYPERPARAMS = [
    # (torch optimizer, gradchain optimizer, {param_groups key: hyperparams key})
    (lambda ps: O.SGD(ps, lr=0.02, momentum=0.9, dampening=0.3, weight_decay=0.1),
     gc.sgd(0.02, 0.9, dampening=0.3, weight_decay=0.1),
     {"lr": "learning_rate", "momentum": "decay", "dampening": "dampening", "weight_decay": "weight_decay"}),
    (lambda ps: O.Adagrad(ps, lr=0.1, eps=1e-3, weight_decay=0.1),
     gc.adagrad(0.1, 0.0, 1e-3, eps_in_sqrt=False, weight_decay=0.1),
     {"lr": "learning_rate", "eps": "eps", "weight_decay": "weight_decay"}),
    (lambda ps: O.RMSprop(ps, lr=0.003, alpha=0.95, eps=1e-3, weight_decay=0.1, momentum=0.8),
     gc.rmsprop(0.003, decay=0.95, eps=1e-3, eps_in_sqrt=False, momentum=0.8, weight_decay=0.1),
     {"lr": "learning_rate", "alpha": "scale_by_rms/decay", "momentum": "trace/decay", "eps": "eps",
      "weight_decay": "weight_decay"}),
    (lambda ps: O.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1),
     gc.adam(0.01, 0.8, 0.99, 1e-4, weight_decay=0.1),
     {"lr": "learning_rate", "betas": ("b1", "b2"), "eps": "eps", "weight_decay": "weight_decay"}),
    (lambda ps: O.NAdam(ps, lr=0.01, momentum_decay=0.1),
     gc.nadam(0.01, momentum_decay=0.1),
     {"lr": "learning_rate", "betas": ("b1", "b2"), "eps": "eps", "momentum_decay": "momentum_decay"}),
]  # fmt: skip


@pytest.mark.parametrize(("make_torch", "tx", "names"), HYPERPARAMS, ids=["SGD", "Adagrad", "RMSprop", "Adam", "NAdam"])
def test_param_groups_are_hyperparams(make_torch, tx, names, torch):
    group = make_torch([torch.zeros(2, requires_grad=True)]).param_groups[0]
    hp = gc.hyperparams(tx.init(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS64)))
    for torch_key, key in names.items():
        keys = key if isinstance(key, tuple) else (key,)
        values = group[torch_key] if isinstance(key, tuple) else (group[torch_key],)
        for k, v in zip(keys, values, strict=True):
            assert np.isclose(float(hp[k]), v, rtol=1e-7), f"{torch_key} -> {k}: {float(hp[k])} != {v}"


def test_migration_page_examples_run():
    """Every ```python block of docs/torch_migration.md runs."""
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parents[2] / "docs" / "torch_migration.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page.name}:block{i}", "exec"), {})


def test_every_test_the_migration_page_names_exists():
    """The last column of the page's tables names tests; each must exist, so a renamed test breaks here."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    page = (root / "docs" / "torch_migration.md").read_text()
    known = set(CASES_BY_ID) | {s[0] for s in SCHEDULED} | {n for n in globals() if n.startswith("test_")}
    tests = root / "tests"

    def find(name: str) -> pathlib.Path:
        """A test file by its name: tests/ mirrors gradchain/, so the page names files, not folders."""
        name = name.removeprefix("tests/")
        found = sorted(tests.rglob(pathlib.Path(name).name))
        assert found, f"the page names a test file that does not exist: {name}"
        return found[0]

    schedules_tests = find("test_schedules.py").read_text()
    named = 0
    for table in re.findall(r"((?:^\|.*\|\n)+)", page, flags=re.M):
        rows = [row for row in table.strip().split("\n") if not re.match(r"^\|[-| ]+\|$", row)]
        if not rows[0].rstrip("| ").split("|")[-1].strip().startswith("test"):
            continue
        for row in rows[1:]:
            for token in re.findall(r"`([^`]+)`", row.rstrip("| ").split("|")[-1]):
                named += 1
                if "::" in token:
                    path, name = token.split("::")
                    file = find(path if path.endswith(".py") else path + ".py")
                    assert f"def {name.split('[')[0]}(" in file.read_text(), token
                elif token.endswith(".py"):
                    assert find(token).exists(), token
                else:
                    assert token in known or f'"{token}"' in schedules_tests, (
                        f"the page names an unknown test {token!r}"
                    )
    assert named > 60
