"""The ready-made optimizers of `gradchain.optimizers.classic`, step by step.

Each optimizer runs for `STEPS` steps on a pytree of four leaves of different shapes, fed a fixed
pseudo-random sequence of gradients that does not depend on the params (so rounding differences are
not amplified by the dynamics), and its whole parameter trajectory is compared, leaf by leaf, with

(a) a float64 numpy transcription of the optimizer's update rule, written from the papers
    (learning rate and weight decay included; tests/references/momentum.py, rms.py, adam.py), and
(b) optax's optimizer of the same name with the same arguments (or the optax chain that means the
    same thing where gradchain has an argument optax lacks).

Then: each optimizer equals, bit for bit, the chain of public ingredients its docstring names; `chain`
equals applying its members by hand; and Adam + L2 differs from AdamW in the way Loshchilov & Hutter
describe.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import RTOL32, assert_stacked_close, assert_trees_equal, optimizer_data, scan_trajectories
from references.adam import (
    ref_adam_optimizer,
    ref_adamax_optimizer,
    ref_adamaxw_optimizer,
    ref_adamw_optimizer,
    ref_amsgrad_optimizer,
    ref_nadam_optimizer,
    ref_nadamw_optimizer,
)
from references.momentum import ref_sgd_optimizer
from references.rms import ref_adagrad_optimizer, ref_rmsprop_optimizer

import gradchain as gc

# The float32 trajectories are compared to RTOL32 = 2e-6 of each leaf's largest |p| (reference.py:
# the float32 rounding of p + u accumulated over these 120 steps, far below any wrong constant).
STEPS = 120
# The tree of reference.py's OPTIMIZER_TREE_SHAPES (a dense layer, a conv kernel, a scalar): float64
# params and STEPS stacked gradient trees, and their float32 copies that the optimizers run on.
PARAMS64, GRADS64 = optimizer_data(seed=0, steps=STEPS)
PARAMS32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS64)
GRADS32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), GRADS64)


def run(tx: Any, params: Any, grads: Any) -> tuple[Any, Any]:
    """One transformation over the gradient sequence: (params after every step, final state)."""
    return scan_trajectories([tx], params, grads)[0]


# ---------------------------------------------------------------------------------------------------
# Schedules that carry their own float64 numpy formula for the reference.


@dataclasses.dataclass(frozen=True)
class Sched:
    """A learning-rate (or decay) schedule: the jax function for gradchain/optax, numpy for the reference."""

    name: str
    jax_fn: Callable[[Any], Any]
    np_fn: Callable[[int], float]

    def __call__(self, count):
        return self.jax_fn(count)

    def __repr__(self) -> str:
        return self.name


def _np_cosine(init: float, steps: int, alpha: float) -> Callable[[int], float]:
    def fn(t):
        frac = min(t, steps) / steps
        return init * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * frac)) + alpha)

    return fn


COSINE = Sched("cosine", gc.schedules.cosine_decay_schedule(0.03, 100, alpha=0.1), _np_cosine(0.03, 100, 0.1))
EXPONENTIAL = Sched("exponential", lambda c: 0.03 * 0.98**c, lambda t: 0.03 * 0.98**t)
DECAY_SCHEDULE = Sched("wd_linear", lambda c: 0.2 - 0.001 * c, lambda t: 0.2 - 0.001 * t)


# ---------------------------------------------------------------------------------------------------
# The float64 numpy references (tests/references/momentum.py, rms.py, adam.py: `ref_<name>_optimizer`).
# Each returns (init(p) -> state, step(g, p, state, t) -> (update, state)) for one array; t is the 1-based
# step number. They read a `Sched` through its numpy formula (reference.py's `value_at`).


REFERENCES = {
    "sgd": ref_sgd_optimizer,
    "adagrad": ref_adagrad_optimizer,
    "rmsprop": ref_rmsprop_optimizer,
    "adam": ref_adam_optimizer,
    "adamw": ref_adamw_optimizer,
    "nadam": ref_nadam_optimizer,
    "nadamw": ref_nadamw_optimizer,
    "amsgrad": ref_amsgrad_optimizer,
    "adamax": ref_adamax_optimizer,
    "adamaxw": ref_adamaxw_optimizer,
}


def reference_trajectory(name: str, kwargs: dict[str, Any], params: Any = PARAMS64, grads: Any = GRADS64) -> Any:
    """The float64 trajectory of optimizer `name` with gradchain's `kwargs`, from the numpy references."""
    kwargs = dict(kwargs)
    mask = kwargs.pop("mask", None)
    leaves, treedef = jax.tree.flatten(params)
    g_leaves = treedef.flatten_up_to(grads)
    if mask is None:
        mask_leaves = [True] * len(leaves)
    else:
        mask_leaves = treedef.flatten_up_to(mask(params) if callable(mask) else mask)
    out = []
    for p, gs, m in zip(leaves, g_leaves, mask_leaves, strict=True):
        extra = {} if mask is None else {"mask_leaf": m}
        init, step = REFERENCES[name](**kwargs, **extra)
        p = np.array(p, np.float64)
        state = init(p)
        trajectory = []
        for t in range(1, len(gs) + 1):
            u, state = step(gs[t - 1], p, state, t)
            p = p + u
            trajectory.append(p)
        out.append(np.stack(trajectory))
    return treedef.unflatten(out)


# ---------------------------------------------------------------------------------------------------
# The table: (gradchain optimizer, kwargs, the same thing in optax or None where optax has no such option).

MASK_TREE = {"dense": {"w": True, "b": False}, "conv": True, "scale": False}


def MASK_FN(p):
    return jax.tree.map(lambda x: np.ndim(x) > 1, p)


def _optax_l2(wd, inner):
    """Coupled decay in optax: the decay term added to the gradient before the optimizer."""
    return optax.chain(optax.add_decayed_weights(wd), inner)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    name: str
    kwargs: dict[str, Any]
    optax: Callable[[], Any] | None

    def gradchain(self):
        return getattr(gc, self.name)(**self.kwargs)


CASES = [
    # sgd
    Case("sgd-default", "sgd", {"learning_rate": 0.05}, lambda: optax.sgd(0.05)),
    Case("sgd-momentum", "sgd", {"learning_rate": 0.02, "momentum": 0.9}, lambda: optax.sgd(0.02, 0.9)),
    Case(
        "sgd-nesterov",
        "sgd",
        {"learning_rate": 0.02, "momentum": 0.9, "nesterov": True},
        lambda: optax.sgd(0.02, 0.9, nesterov=True),
    ),
    Case("sgd-dampening", "sgd", {"learning_rate": 0.02, "momentum": 0.9, "dampening": 0.5}, None),
    Case(
        "sgd-weight_decay",
        "sgd",
        {"learning_rate": 0.02, "momentum": 0.9, "weight_decay": 0.1},
        lambda: _optax_l2(0.1, optax.sgd(0.02, 0.9)),
    ),
    Case("sgd-schedule", "sgd", {"learning_rate": EXPONENTIAL, "momentum": 0.8}, lambda: optax.sgd(EXPONENTIAL, 0.8)),
    # adagrad
    Case("adagrad-default", "adagrad", {"learning_rate": 0.1}, lambda: optax.adagrad(0.1)),
    Case(
        "adagrad-torch",
        "adagrad",
        {"learning_rate": 0.1, "initial_accumulator_value": 0.0, "eps": 1e-10, "eps_in_sqrt": False},
        None,
    ),
    Case("adagrad-eps_outside", "adagrad", {"learning_rate": 0.1, "eps": 0.05, "eps_in_sqrt": False}, None),
    Case(
        "adagrad-lr_decay-weight_decay",
        "adagrad",
        {"learning_rate": 0.1, "initial_accumulator_value": 0.5, "eps": 0.01, "lr_decay": 0.05, "weight_decay": 0.1},
        lambda: _optax_l2(0.1, optax.adagrad(lambda c: 0.1 / (1 + 0.05 * c), 0.5, 0.01)),
    ),
    Case(
        "adagrad-schedule", "adagrad", {"learning_rate": COSINE, "eps": 1e-3}, lambda: optax.adagrad(COSINE, eps=1e-3)
    ),
    # rmsprop
    Case("rmsprop-default", "rmsprop", {"learning_rate": 0.01}, lambda: optax.rmsprop(0.01)),
    Case(
        "rmsprop-centered",
        "rmsprop",
        {"learning_rate": 0.01, "decay": 0.95, "centered": True, "eps": 1e-4},
        lambda: optax.rmsprop(0.01, 0.95, 1e-4, centered=True),
    ),
    Case(
        "rmsprop-momentum",
        "rmsprop",
        {"learning_rate": 0.005, "momentum": 0.9},
        lambda: optax.rmsprop(0.005, momentum=0.9),
    ),
    Case(
        "rmsprop-nesterov",
        "rmsprop",
        {"learning_rate": 0.005, "momentum": 0.9, "nesterov": True},
        lambda: optax.rmsprop(0.005, momentum=0.9, nesterov=True),
    ),
    Case(
        "rmsprop-eps_outside-bias_correction-centered",
        "rmsprop",
        {
            "learning_rate": 0.01,
            "decay": 0.9,
            "eps": 0.05,
            "initial_scale": 0.5,
            "eps_in_sqrt": False,
            "centered": True,
            "bias_correction": True,
        },
        lambda: optax.rmsprop(0.01, 0.9, 0.05, 0.5, eps_in_sqrt=False, centered=True, bias_correction=True),
    ),
    Case(
        "rmsprop-bias_correction",
        "rmsprop",
        {"learning_rate": 0.01, "decay": 0.99, "bias_correction": True},
        lambda: optax.rmsprop(0.01, 0.99, bias_correction=True),
    ),
    Case(
        "rmsprop-weight_decay",
        "rmsprop",
        {"learning_rate": 0.005, "momentum": 0.5, "weight_decay": 0.1},
        lambda: _optax_l2(0.1, optax.rmsprop(0.005, momentum=0.5)),
    ),
    Case("rmsprop-schedule", "rmsprop", {"learning_rate": COSINE}, lambda: optax.rmsprop(COSINE)),
    # optax scales by the learning rate *before* the momentum buffer, gradchain (and torch) after it:
    # with a schedule the two differ (see test_rmsprop_momentum_with_schedule_differs_from_optax).
    Case("rmsprop-momentum-schedule", "rmsprop", {"learning_rate": EXPONENTIAL, "momentum": 0.9}, None),
    # adam
    Case("adam-default", "adam", {"learning_rate": 0.01}, lambda: optax.adam(0.01)),
    Case(
        "adam-hyperparams",
        "adam",
        {"learning_rate": 0.01, "b1": 0.8, "b2": 0.99, "eps": 1e-3, "eps_root": 1e-4},
        lambda: optax.adam(0.01, 0.8, 0.99, 1e-3, 1e-4),
    ),
    Case("adam-nesterov", "adam", {"learning_rate": 0.01, "nesterov": True}, lambda: optax.adam(0.01, nesterov=True)),
    Case(
        "adam-weight_decay",
        "adam",
        {"learning_rate": 0.01, "weight_decay": 0.1},
        lambda: _optax_l2(0.1, optax.adam(0.01)),
    ),
    Case("adam-schedule", "adam", {"learning_rate": COSINE, "eps": 1e-6}, lambda: optax.adam(COSINE, eps=1e-6)),
    # adamw
    Case("adamw-default", "adamw", {"learning_rate": 0.01}, lambda: optax.adamw(0.01)),
    Case(
        "adamw-weight_decay",
        "adamw",
        {"learning_rate": 0.01, "b1": 0.85, "eps": 1e-4, "weight_decay": 0.3},
        lambda: optax.adamw(0.01, 0.85, eps=1e-4, weight_decay=0.3),
    ),
    Case(
        "adamw-mask_tree",
        "adamw",
        {"learning_rate": 0.01, "weight_decay": 0.3, "mask": MASK_TREE},
        lambda: optax.adamw(0.01, weight_decay=0.3, mask=MASK_TREE),
    ),
    Case(
        "adamw-mask_fn",
        "adamw",
        {"learning_rate": 0.01, "weight_decay": 0.3, "mask": MASK_FN},
        lambda: optax.adamw(0.01, weight_decay=0.3, mask=MASK_FN),
    ),
    Case(
        "adamw-schedules",
        "adamw",
        {"learning_rate": EXPONENTIAL, "weight_decay": DECAY_SCHEDULE},
        lambda: optax.adamw(EXPONENTIAL, weight_decay=DECAY_SCHEDULE),
    ),
    Case(
        "adamw-nesterov",
        "adamw",
        {"learning_rate": 0.01, "weight_decay": 0.1, "nesterov": True},
        lambda: optax.adamw(0.01, weight_decay=0.1, nesterov=True),
    ),
    # nadam / nadamw
    Case("nadam-default", "nadam", {"learning_rate": 0.01}, lambda: optax.nadam(0.01)),
    Case(
        "nadam-weight_decay",
        "nadam",
        {"learning_rate": 0.01, "b1": 0.95, "eps": 1e-5, "weight_decay": 0.1},
        lambda: _optax_l2(0.1, optax.nadam(0.01, 0.95, eps=1e-5)),
    ),
    Case("nadam-schedule", "nadam", {"learning_rate": COSINE}, lambda: optax.nadam(COSINE)),
    # Dozat's momentum schedule (PyTorch's NAdam): no optax counterpart.
    Case("nadam-momentum_decay", "nadam", {"learning_rate": 0.01, "momentum_decay": 4e-3}, None),
    Case(
        "nadam-momentum_decay-weight_decay",
        "nadam",
        {"learning_rate": EXPONENTIAL, "b1": 0.8, "b2": 0.99, "eps": 1e-4, "momentum_decay": 0.1, "weight_decay": 0.1},
        None,
    ),
    Case(
        "nadamw-momentum_decay",
        "nadamw",
        {"learning_rate": 0.01, "weight_decay": 0.3, "mask": MASK_TREE, "momentum_decay": 4e-3},
        None,
    ),
    Case("nadamw-default", "nadamw", {"learning_rate": 0.01}, lambda: optax.nadamw(0.01)),
    Case(
        "nadamw-mask",
        "nadamw",
        {"learning_rate": 0.01, "weight_decay": 0.3, "mask": MASK_TREE},
        lambda: optax.nadamw(0.01, weight_decay=0.3, mask=MASK_TREE),
    ),
    Case(
        "nadamw-schedules",
        "nadamw",
        {"learning_rate": COSINE, "weight_decay": DECAY_SCHEDULE},
        lambda: optax.nadamw(COSINE, weight_decay=DECAY_SCHEDULE),
    ),
    # amsgrad
    Case("amsgrad-default", "amsgrad", {"learning_rate": 0.01}, lambda: optax.amsgrad(0.01)),
    Case(
        "amsgrad-hyperparams",
        "amsgrad",
        {"learning_rate": 0.01, "b1": 0.8, "b2": 0.95, "eps": 1e-4},
        lambda: optax.amsgrad(0.01, 0.8, 0.95, 1e-4),
    ),
    Case("amsgrad-torch", "amsgrad", {"learning_rate": 0.01, "b2": 0.95, "debias_before_max": False}, None),
    Case(
        "amsgrad-weight_decay",
        "amsgrad",
        {"learning_rate": 0.01, "weight_decay": 0.1},
        lambda: _optax_l2(0.1, optax.amsgrad(0.01)),
    ),
    Case("amsgrad-schedule", "amsgrad", {"learning_rate": EXPONENTIAL}, lambda: optax.amsgrad(EXPONENTIAL)),
    # adamax / adamaxw
    Case("adamax-default", "adamax", {"learning_rate": 0.01}, lambda: optax.adamax(0.01)),
    Case(
        "adamax-hyperparams",
        "adamax",
        {"learning_rate": 0.01, "b1": 0.8, "b2": 0.9, "eps": 0.01},
        lambda: optax.adamax(0.01, 0.8, 0.9, 0.01),
    ),
    Case(
        "adamax-weight_decay",
        "adamax",
        {"learning_rate": 0.01, "weight_decay": 0.1},
        lambda: _optax_l2(0.1, optax.adamax(0.01)),
    ),
    Case("adamax-schedule", "adamax", {"learning_rate": COSINE}, lambda: optax.adamax(COSINE)),
    Case("adamaxw-default", "adamaxw", {"learning_rate": 0.01}, lambda: optax.adamaxw(0.01)),
    Case(
        "adamaxw-mask",
        "adamaxw",
        {"learning_rate": 0.01, "weight_decay": 0.3, "mask": MASK_FN},
        lambda: optax.adamaxw(0.01, weight_decay=0.3, mask=MASK_FN),
    ),
    Case(
        "adamaxw-schedules",
        "adamaxw",
        {"learning_rate": EXPONENTIAL, "weight_decay": DECAY_SCHEDULE},
        lambda: optax.adamaxw(EXPONENTIAL, weight_decay=DECAY_SCHEDULE),
    ),
]

OPTAX_CASES = [c for c in CASES if c.optax is not None]
CASES_BY_ID = {c.id: c for c in CASES}
# optax computes Adam's `(1 - b2) * g**2` with b2 as a Python float (1 - 0.999 = 1e-3 exactly) but
# the bias correction `1 - b2**t` with b2 rounded to float32 (0.99900001): early on its nu_hat is off
# by 1.3e-5 relative, which leaves its float32 trajectory up to ~3e-6 (relative to max|p|) from the
# float64 one, where gradchain's stays below 1e-6 (see test_adam_matches_optax_tightly_with_float32_betas).
OPTAX_RTOL = 5e-6


@functools.cache
def family_results(name: str) -> dict[str, tuple[Any, Any]]:
    """case id -> (gradchain trajectory, optax trajectory or None) for every case of optimizer `name`."""
    cases = [c for c in CASES if c.name == name]
    txs = [c.gradchain() for c in cases] + [c.optax() for c in cases if c.optax is not None]
    results = iter(scan_trajectories(txs, PARAMS32, GRADS32))
    ours = {c.id: next(results)[0] for c in cases}
    return {c.id: (ours[c.id], next(results)[0] if c.optax is not None else None) for c in cases}


def test_every_optimizer_is_in_the_table():
    names = {c.name for c in CASES}
    assert (
        names
        == set(REFERENCES)
        == {"sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax", "adamaxw"}
    )
    assert {c.name for c in OPTAX_CASES} == names
    assert len(CASES_BY_ID) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_numpy_reference(case: Case):
    ours, _ = family_results(case.name)[case.id]
    assert_stacked_close(ours, reference_trajectory(case.name, case.kwargs), RTOL32)


@pytest.mark.parametrize("case", OPTAX_CASES, ids=lambda c: c.id)
def test_matches_optax(case: Case):
    ours, theirs = family_results(case.name)[case.id]
    assert_stacked_close(ours, theirs, rtol=OPTAX_RTOL)


def test_adam_matches_optax_tightly_with_float32_betas():
    """With betas that float32 holds exactly, optax's rounding inconsistency vanishes and both agree closely."""
    b1, b2 = 0.875, 1 - 2.0**-10
    (ours, _), (theirs, _) = scan_trajectories([gc.adam(0.01, b1, b2), optax.adam(0.01, b1, b2)], PARAMS32, GRADS32)
    assert_stacked_close(ours, theirs, rtol=5e-7)
    assert_stacked_close(ours, reference_trajectory("adam", {"learning_rate": 0.01, "b1": b1, "b2": b2}), RTOL32)


# The comparison with the reference must be able to fail: a reference that differs from the case in
# one convention only is far outside the tolerance.
NEAR_MISSES = [
    ("sgd-dampening", {"dampening": 0.0}),
    ("sgd-nesterov", {"nesterov": False}),
    ("adagrad-eps_outside", {"eps_in_sqrt": True}),
    ("adagrad-lr_decay-weight_decay", {"lr_decay": None}),
    ("rmsprop-bias_correction", {"bias_correction": False}),
    ("rmsprop-centered", {"centered": False}),
    ("adam-default", {"b2": 0.998}),
    ("adam-hyperparams", {"eps": 1e-4, "eps_root": 1e-3}),
    ("adam-weight_decay", {"weight_decay": None}),
    ("amsgrad-torch", {"debias_before_max": True}),
    ("nadam-default", {"b1": 0.91}),
    ("nadam-momentum_decay", {"momentum_decay": None}),
    ("nadam-momentum_decay-weight_decay", {"momentum_decay": 0.05}),
    ("adamw-mask_tree", {"mask": None}),
    ("adamw-schedules", {"learning_rate": Sched("shifted", EXPONENTIAL.jax_fn, lambda t: EXPONENTIAL.np_fn(t + 1))}),
    ("adamax-hyperparams", {"eps": 1e-4}),
]


@pytest.mark.parametrize(("case_id", "change"), NEAR_MISSES, ids=[m[0] for m in NEAR_MISSES])
def test_reference_comparison_detects_a_convention_change(case_id, change):
    case = CASES_BY_ID[case_id]
    ours, _ = family_results(case.name)[case.id]
    with pytest.raises(AssertionError, match="max error"):
        assert_stacked_close(ours, reference_trajectory(case.name, {**case.kwargs, **change}), rtol=10 * RTOL32)


def test_rmsprop_momentum_with_schedule_differs_from_optax():
    """Documented difference: gradchain (like torch) scales the momentum buffer by the current rate.

    optax's rmsprop chains `scale_by_learning_rate` *before* `trace`, so its buffer holds past
    learning rates; gradchain's `rmsprop` follows its docstring, $p_t = p_{t-1} - \\eta_t \\mathrm{trace}(\\cdot)$,
    which is PyTorch's RMSprop under an lr scheduler. With a constant rate both agree (`rmsprop-momentum`).
    """
    case = CASES_BY_ID["rmsprop-momentum-schedule"]
    ours, _ = family_results("rmsprop")[case.id]
    theirs, _ = run(optax.rmsprop(EXPONENTIAL, momentum=0.9), PARAMS32, GRADS32)
    assert_stacked_close(ours, reference_trajectory("rmsprop", case.kwargs), RTOL32)
    assert_stacked_close(theirs, reference_trajectory("rmsprop", {**case.kwargs, "lr_in_buffer": True}), RTOL32)
    with pytest.raises(AssertionError, match="max error"):
        assert_stacked_close(ours, theirs, rtol=1e-3)


def test_adamw_mask_prefix_tree_like_optax():
    prefix_mask = {"dense": True, "conv": False, "scale": False}
    ours, _ = run(gc.adamw(0.01, weight_decay=0.3, mask=prefix_mask), PARAMS32, GRADS32)
    theirs, _ = run(optax.adamw(0.01, weight_decay=0.3, mask=prefix_mask), PARAMS32, GRADS32)
    assert_stacked_close(ours, theirs, RTOL32)


# ---------------------------------------------------------------------------------------------------
# Recipes: every optimizer is the chain of public ingredients its docstring names, bit for bit.


def _adagrad_lr(lr, d):
    return lambda count: lr / (1 + d * count)


RECIPES = [
    ("sgd", gc.sgd(0.05), gc.chain(gc.scale_by_learning_rate(0.05))),
    (
        "sgd-all",
        gc.sgd(EXPONENTIAL, 0.9, dampening=0.3, weight_decay=0.1),
        gc.chain(gc.add_l2_regularization(0.1), gc.trace(0.9, False, 0.3), gc.scale_by_learning_rate(EXPONENTIAL)),
    ),
    ("sgd-nesterov", gc.sgd(0.02, 0.9, True), gc.chain(gc.trace(0.9, nesterov=True), gc.scale_by_learning_rate(0.02))),
    ("adagrad", gc.adagrad(0.1), gc.chain(gc.scale_by_rss(0.1, 1e-7), gc.scale_by_learning_rate(0.1))),
    (
        "adagrad-torch",
        gc.adagrad(0.1, 0.0, 1e-10, eps_in_sqrt=False, lr_decay=0.05, weight_decay=0.1),
        gc.chain(
            gc.add_l2_regularization(0.1),
            gc.scale_by_rss(0.0, 1e-10, eps_in_sqrt=False),
            gc.scale_by_learning_rate(_adagrad_lr(0.1, 0.05)),
        ),
    ),
    ("rmsprop", gc.rmsprop(0.01), gc.chain(gc.scale_by_rms(0.9, 1e-8), gc.scale_by_learning_rate(0.01))),
    (
        "rmsprop-all",
        gc.rmsprop(0.01, 0.95, 1e-3, 0.2, False, True, 0.9, True, True, weight_decay=0.1),
        gc.chain(
            gc.add_l2_regularization(0.1),
            gc.scale_by_rms(0.95, 1e-3, 0.2, eps_in_sqrt=False, centered=True, bias_correction=True),
            gc.trace(0.9, nesterov=True),
            gc.scale_by_learning_rate(0.01),
        ),
    ),
    ("adam", gc.adam(0.01), gc.chain(gc.scale_by_adam(), gc.scale_by_learning_rate(0.01))),
    (
        "adam-l2",
        gc.adam(COSINE, 0.8, 0.99, 1e-6, 1e-9, weight_decay=0.1),
        gc.chain(
            gc.add_l2_regularization(0.1), gc.scale_by_adam(0.8, 0.99, 1e-6, 1e-9), gc.scale_by_learning_rate(COSINE)
        ),
    ),
    (
        "adamw",
        gc.adamw(0.01, weight_decay=0.3, mask=MASK_TREE),
        gc.chain(gc.scale_by_adam(), gc.add_decayed_weights(0.3, MASK_TREE), gc.scale_by_learning_rate(0.01)),
    ),
    (
        "nadam",
        gc.nadam(0.01, weight_decay=0.1),
        gc.chain(gc.add_l2_regularization(0.1), gc.scale_by_adam(nesterov=True), gc.scale_by_learning_rate(0.01)),
    ),
    (
        "nadam-momentum_decay",
        gc.nadam(0.01, 0.8, momentum_decay=0.1, weight_decay=0.1),
        gc.chain(
            gc.add_l2_regularization(0.1), gc.scale_by_nadam(0.8, momentum_decay=0.1), gc.scale_by_learning_rate(0.01)
        ),
    ),
    (
        "nadamw-momentum_decay",
        gc.nadamw(0.01, weight_decay=0.3, momentum_decay=4e-3),
        gc.chain(gc.scale_by_nadam(momentum_decay=4e-3), gc.add_decayed_weights(0.3), gc.scale_by_learning_rate(0.01)),
    ),
    (
        "nadamw",
        gc.nadamw(0.01, weight_decay=DECAY_SCHEDULE, mask=MASK_FN),
        gc.chain(
            gc.scale_by_adam(nesterov=True),
            gc.add_decayed_weights(DECAY_SCHEDULE, MASK_FN),
            gc.scale_by_learning_rate(0.01),
        ),
    ),
    ("amsgrad", gc.amsgrad(0.01), gc.chain(gc.scale_by_amsgrad(), gc.scale_by_learning_rate(0.01))),
    (
        "amsgrad-torch",
        gc.amsgrad(0.01, debias_before_max=False, weight_decay=0.1),
        gc.chain(
            gc.add_l2_regularization(0.1), gc.scale_by_amsgrad(debias_before_max=False), gc.scale_by_learning_rate(0.01)
        ),
    ),
    (
        "adamax",
        gc.adamax(0.01, weight_decay=0.1),
        gc.chain(gc.add_l2_regularization(0.1), gc.scale_by_adamax(), gc.scale_by_learning_rate(0.01)),
    ),
    (
        "adamaxw",
        gc.adamaxw(0.01, 0.8, 0.9, 1e-3, 0.3, MASK_TREE),
        gc.chain(
            gc.scale_by_adamax(0.8, 0.9, 1e-3), gc.add_decayed_weights(0.3, MASK_TREE), gc.scale_by_learning_rate(0.01)
        ),
    ),
]


@functools.cache
def recipe_results() -> dict[str, Any]:
    results = scan_trajectories(
        [tx for _, optimizer, recipe in RECIPES for tx in (optimizer, recipe)], PARAMS32, GRADS32
    )
    return {name: (results[2 * i], results[2 * i + 1]) for i, (name, _, _) in enumerate(RECIPES)}


@pytest.mark.parametrize(("name", "optimizer", "recipe"), RECIPES, ids=[r[0] for r in RECIPES])
def test_optimizer_is_its_recipe_bit_for_bit(name, optimizer, recipe):
    (ours, state), (rebuilt, rebuilt_state) = recipe_results()[name]
    assert_trees_equal(ours, rebuilt)
    assert_trees_equal(state, rebuilt_state)
    assert list(gc.hyperparams(state)) == list(gc.hyperparams(rebuilt_state))


PAIRS = [
    ("clip-adam", gc.clip_by_global_norm(2.0), gc.scale_by_adam()),
    ("l2-trace", gc.add_l2_regularization(0.1), gc.trace(0.9, nesterov=True)),
    ("rms-lr_schedule", gc.scale_by_rms(0.9, centered=True), gc.scale_by_learning_rate(COSINE)),
    ("amsgrad-decay", gc.scale_by_amsgrad(), gc.add_decayed_weights(0.1, MASK_FN)),
    ("adamw-then-clip", gc.adamw(0.01, weight_decay=0.1), gc.clip(0.005)),
]


def _by_hand(a, b) -> gc.GradientTransformation:
    return gc.GradientTransformation(
        lambda p: gc.ChainState((a.init(p), b.init(p))),  # the same state container as the chain's
        lambda g, s, p=None: _by_hand_update(a, b, g, s, p),
    )


@functools.cache
def pair_results() -> list[Any]:
    return scan_trajectories([tx for _, a, b in PAIRS for tx in (gc.chain(a, b), _by_hand(a, b))], PARAMS32, GRADS32)


@pytest.mark.parametrize("index", range(len(PAIRS)), ids=[p[0] for p in PAIRS])
def test_chain_is_applying_one_then_the_other(index):
    (ours, state), (manual, manual_state) = pair_results()[2 * index : 2 * index + 2]
    assert_trees_equal(ours, manual)
    assert_trees_equal(state, manual_state)


def _by_hand_update(a, b, g, state, params):
    u, sa = a.update(g, state[0], params)
    u, sb = b.update(u, state[1], params)
    return u, gc.ChainState((sa, sb))


# ---------------------------------------------------------------------------------------------------
# Adam + L2 versus AdamW (Loshchilov & Hutter 2019, section 2): with L2 the decay of weight i is divided
# by sqrt(nu_hat_i) + eps like the rest of the gradient; decoupled decay is the same for every weight.


def test_adam_l2_and_adamw_decay_as_the_adamw_paper_says():
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    params = {"a": jnp.array([1.0, -2.0, 0.5, 3.0]), "b": jnp.array([[0.7, -1.5], [2.5, 0.2]])}
    # A second moment spanning six orders of magnitude, as if built by earlier steps; mu = 0 and
    # g = 0 this step, so the only force is the decay.
    nu = {"a": jnp.array([1e-6, 1e-2, 1.0, 4.0]), "b": jnp.array([[0.25, 1e-4], [9.0, 1e-3]])}
    count = 10  # the step about to be taken is t = 11
    zeros = jax.tree.map(jnp.zeros_like, params)

    def with_moments(state, adam_index):
        adam_state = state[adam_index]._replace(count=jnp.asarray(count, jnp.int32), nu=nu)
        return (*state[:adam_index], adam_state, *state[adam_index + 1 :])

    adam_l2 = gc.adam(lr, b1, b2, eps, weight_decay=wd)
    adamw = gc.adamw(lr, b1, b2, eps, weight_decay=wd)
    u_l2, s_l2 = adam_l2.update(zeros, with_moments(adam_l2.init(params), 1), params)
    u_w, _ = adamw.update(zeros, with_moments(adamw.init(params), 0), params)

    t = count + 1
    for key in params:
        p = np.asarray(params[key], np.float64)
        # effective decay coefficient of each weight: p_new = p - lr * coefficient * p
        coeff_l2 = -np.asarray(u_l2[key], np.float64) / (lr * p)
        coeff_w = -np.asarray(u_w[key], np.float64) / (lr * p)
        # AdamW: uniform, exactly wd.
        np.testing.assert_allclose(coeff_w, wd, rtol=1e-6)
        # Adam + L2: wd (through the first moment, debiased) / (sqrt(nu_hat_i) + eps), nu_hat from the new state.
        nu_hat = np.asarray(s_l2[1].nu[key], np.float64) / (1 - b2**t)
        expected = wd * (1 - b1) / (1 - b1**t) / (np.sqrt(nu_hat) + eps)
        np.testing.assert_allclose(coeff_l2, expected, rtol=1e-5)
        np.testing.assert_allclose(coeff_l2 * (np.sqrt(nu_hat) + eps), wd * (1 - b1) / (1 - b1**t), rtol=1e-5)
        # ... and so far from uniform: the weights with the smallest second moment decay the most.
        assert coeff_l2.max() / coeff_l2.min() > 100
        assert np.argmax(coeff_l2) == np.argmin(np.asarray(nu[key]))


# ---------------------------------------------------------------------------------------------------
# Hyperparameters live in the state under their argument names, and bad arguments are named.


@pytest.mark.parametrize(
    ("optimizer", "names"),
    [
        (gc.sgd(0.1, 0.9, weight_decay=0.01), {"learning_rate", "decay", "dampening", "weight_decay"}),
        (gc.adagrad(0.1), {"learning_rate", "eps"}),
        (gc.rmsprop(0.1, momentum=0.9), {"learning_rate", "decay", "eps", "dampening"}),
        (gc.adamw(0.1), {"learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"}),
        (gc.amsgrad(0.1, weight_decay=0.0), {"learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"}),
        (gc.adamaxw(0.1), {"learning_rate", "b1", "b2", "eps", "weight_decay"}),
    ],
)
def test_hyperparameter_names(optimizer, names):
    hp = gc.hyperparams(optimizer.init(PARAMS32))
    assert names <= {k.split("/")[-1] for k in hp}
    assert "learning_rate" in hp


def test_weight_decay_none_leaves_the_ingredient_out_and_zero_keeps_it():
    without = gc.adam(0.01).init(PARAMS32)
    with_zero = gc.adam(0.01, weight_decay=0.0).init(PARAMS32)
    assert len(without) == 2 and len(with_zero) == 3
    assert "weight_decay" not in gc.hyperparams(without)
    assert float(gc.hyperparams(with_zero)["weight_decay"]) == 0.0


@pytest.mark.parametrize(
    ("build", "exception", "match"),
    [
        (lambda: gc.sgd(0.1, nesterov=True), ValueError, "nesterov"),
        (lambda: gc.sgd(0.1, dampening=0.5), ValueError, "dampening"),
        (lambda: gc.sgd(-0.1), ValueError, "learning_rate"),
        (lambda: gc.sgd(0.1, momentum=1.0), ValueError, "sgd: momentum"),
        (lambda: gc.rmsprop(0.1, nesterov=True), ValueError, "nesterov"),
        (lambda: gc.rmsprop(0.1, decay=1.5), ValueError, "decay"),
        (lambda: gc.adagrad(0.1, lr_decay=-1.0), ValueError, "lr_decay"),
        (lambda: gc.adagrad(COSINE, lr_decay=0.1), ValueError, "lr_decay"),
        (lambda: gc.adagrad(0.1, initial_accumulator_value=-1.0), ValueError, "initial_accumulator_value"),
        (lambda: gc.adam(0.1, b1=1.0), ValueError, "b1"),
        (lambda: gc.adam(0.1, eps=-1e-8), ValueError, "eps"),
        (lambda: gc.adam(0.1, weight_decay=-0.1), ValueError, "weight_decay"),
        (lambda: gc.adamw(0.1, weight_decay=-0.1), ValueError, "weight_decay"),
        (lambda: gc.adamw(0.1, mu_dtype=jnp.int32), TypeError, "mu_dtype"),
        (lambda: gc.nadamw(0.1, b2=-0.5), ValueError, "b2"),
        (lambda: gc.nadam(0.1, eps_root=1e-8, momentum_decay=4e-3), ValueError, "eps_root"),
        (lambda: gc.nadamw(0.1, momentum_decay=-1.0), ValueError, "momentum_decay"),
        (lambda: gc.amsgrad(0.1, eps_root=-1.0), ValueError, "eps_root"),
        (lambda: gc.adamax(0.1, b2=2.0), ValueError, "b2"),
        (lambda: gc.adamaxw(float("nan")), ValueError, "learning_rate"),
    ],
)
def test_bad_arguments_are_named(build, exception, match):
    with pytest.raises(exception, match=match):
        build()


def test_mask_that_does_not_match_names_the_mask():
    tx = gc.adamw(0.01, weight_decay=0.1, mask={"dense": {"w": True}, "conv": True, "scale": False})
    with pytest.raises(ValueError, match="mask"):
        tx.update(PARAMS32, tx.init(PARAMS32), PARAMS32)


@pytest.mark.parametrize("build", [lambda: gc.sgd(0.1, momentum=1.0), lambda: gc.rmsprop(0.1, momentum=1.5)])
def test_bad_momentum_is_named_momentum(build):
    with pytest.raises(ValueError, match="momentum"):
        build()
