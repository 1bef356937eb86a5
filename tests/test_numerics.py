"""Numerics of the built-in optimizers: half precision, state dtypes, float64, complex, bad dtypes, NaN.

The optimizers of `gradchain.optimizers.classic` covered here (SGD with momentum, AdaGrad, RMSProp,
Adam, AdamW, NAdam, AMSGrad, AdaMax) run on the standard test tree of `reference.py` (a scalar, a
vector, a matrix and a 3-d array) over fixed pseudo-random gradient sequences, and are compared leaf
by leaf with float64 numpy transcriptions of their formulas, composed from the per-ingredient
references of `reference.py` the way each optimizer is composed from ingredients.

The half-precision tests use one tree holding both a float16 and a bfloat16 copy of the standard
tree, so one compiled step covers both dtypes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import (
    INT32_MAX,
    TREE_SHAPES,
    Trajectory,
    assert_trajectory_close,
    grad_sequence,
    max_relative_error,
    param_tree,
    reference_tree,
    state_buffers,
    stored,
    x64_enabled,
)
from references.adam import ref_adam, ref_adamax, ref_amsgrad
from references.momentum import ref_trace
from references.rms import ref_rms, ref_rss

import gradchain as gc

PyTree = Any

LR = 0.01
SGD_LR = 0.05
ADAGRAD_LR = 0.1
MOMENTUM = 0.9
B1, B2, EPS = 0.9, 0.999, 1e-8
WD = 0.1
ADAGRAD_INIT, ADAGRAD_EPS = 0.1, 1e-7
RMS_DECAY, RMS_EPS = 0.9, 1e-8

# name -> (builder taking extra keyword arguments, learning rate). Hyperparameters are spelled out
# (not left to defaults) so that the references below visibly use the same numbers.
OPTIMIZERS: dict[str, tuple[Callable[..., gc.GradientTransformation], float]] = {
    "sgd_momentum": (lambda **kw: gc.sgd(SGD_LR, momentum=MOMENTUM, **kw), SGD_LR),
    "adagrad": (lambda **kw: gc.adagrad(ADAGRAD_LR, ADAGRAD_INIT, ADAGRAD_EPS, **kw), ADAGRAD_LR),
    "rmsprop": (lambda **kw: gc.rmsprop(LR, RMS_DECAY, RMS_EPS, **kw), LR),
    "adam": (lambda **kw: gc.adam(LR, B1, B2, EPS, **kw), LR),
    "adamw": (lambda **kw: gc.adamw(LR, B1, B2, EPS, weight_decay=WD, **kw), LR),
    "nadam": (lambda **kw: gc.nadam(LR, B1, B2, EPS, **kw), LR),
    "amsgrad": (lambda **kw: gc.amsgrad(LR, B1, B2, EPS, **kw), LR),
    "adamax": (lambda **kw: gc.adamax(LR, B1, B2, EPS, **kw), LR),
}
NAMES = list(OPTIMIZERS)
# The optimizers that can store their moments in another dtype than the params', and how.
# (adagrad, rmsprop and adamax have no such argument in this release.)
STATE_DTYPE_ARGS: dict[str, dict[str, Any]] = {
    "sgd_momentum": {"accumulator_dtype": jnp.float32},
    "adam": {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32},
    "adamw": {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32},
    "nadam": {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32},
    "amsgrad": {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32},
}
# Per-parameter buffers (`state_buffers`) that accumulate |g|^2 (or |g|): real for complex params.
REAL_BUFFER_FIELDS = ("nu", "nu_max", "sum_of_squares")

F16, BF16 = np.dtype(jnp.float16), np.dtype(jnp.bfloat16)


def default_storage(field: str, param_dtype: Any) -> np.dtype:
    """The storage dtype of a buffer when no state dtype is given: the param's, except that the
    accumulators of |g|^2 are real for complex params and float32 for float16 params (float16 cannot
    hold small squared gradients, nor large sums of them)."""
    dtype = np.dtype(param_dtype)
    if field in REAL_BUFFER_FIELDS:
        if np.issubdtype(dtype, np.complexfloating):
            return np.dtype(np.finfo(dtype).dtype)
        if dtype == F16:
            return np.dtype(np.float32)
    return dtype


HALF = {"f16": F16, "bf16": BF16}  # the two halves of the half-precision test tree
UNIT_ROUNDOFF = {"f16": 2.0**-11, "bf16": 2.0**-8}


def make(name: str, **kwargs: Any) -> gc.GradientTransformation:
    return OPTIMIZERS[name][0](**kwargs)


# ------------------------------------------------------------------------------------------------
# Running: one transformation and one compiled step per (optimizer, state dtype policy), shared by
# the tests below, so that a dtype or a step count that repeats does not compile again.


@functools.cache
def optimizer(name: str, float32_state: bool = False) -> tuple[gc.GradientTransformation, Callable]:
    tx = make(name, **(STATE_DTYPE_ARGS[name] if float32_state else {}))

    def step(grads, state, params, apply):
        updates, state = tx.update(grads, state, params)
        return updates, state, gc.apply_updates(params, updates) if apply else params

    return tx, jax.jit(step, static_argnames="apply")


def run(
    name: str,
    params: PyTree,
    grads_seq: Sequence[PyTree],
    *,
    apply: bool = True,
    state: Any = None,
    float32_state: bool = False,
) -> Trajectory:
    """Run optimizer `name` over `grads_seq` (one jitted step per gradient tree), collecting updates."""
    tx, step = optimizer(name, float32_state)
    # Committed inputs, like the step's outputs, so that the second step does not compile again.
    device = jax.devices()[0]
    params = jax.device_put(jax.tree.map(jnp.asarray, params), device)
    state = jax.device_put(tx.init(params) if state is None else state, device)
    out = Trajectory()
    out.param_history = []
    for grads in grads_seq:
        out.param_history.append(jax.device_get(params))
        grads = jax.device_put(jax.tree.map(jnp.asarray, grads), device)
        updates, state, params = step(grads, state, params, apply=apply)
        out.append(jax.device_get(updates))
    out.state, out.params = state, params
    return out


# The half-precision tree: leaves of four shapes, two in float16 and two in bfloat16 (few leaves, as
# compilation time grows with their number).
HALF_SHAPES = {"f16": {"a": (), "c": (3, 5)}, "bf16": {"b": (7,), "d": (2, 3, 4)}}


def half_params(seed: int = 1234) -> PyTree:
    return {key: param_tree(HALF_SHAPES[key], seed + i, dtype) for i, (key, dtype) in enumerate(HALF.items())}


def half_grads(n_steps: int, seed: int = 0, step_scales: Sequence[float] | None = None) -> list[PyTree]:
    halves = {
        key: grad_sequence(HALF_SHAPES[key], n_steps, seed + i, dtype, step_scales=step_scales)
        for i, (key, dtype) in enumerate(HALF.items())
    }
    return [{key: seq[k] for key, seq in halves.items()} for k in range(n_steps)]


def part(trees: Sequence[PyTree], key: str) -> list[PyTree]:
    return [t[key] for t in trees]


# ------------------------------------------------------------------------------------------------
# References: each optimizer as the composition of its ingredients' float64 references.


def _wide(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def _scaled(trees: Sequence[PyTree], factor: float) -> list[PyTree]:
    return [jax.tree.map(lambda u: factor * _wide(u), t) for t in trees]


def _decayed(trees: Sequence[PyTree], param_history: Sequence[PyTree], wd: float) -> list[PyTree]:
    return [
        jax.tree.map(lambda u, p: u + wd * _wide(p), u_t, p_t) for u_t, p_t in zip(trees, param_history, strict=True)
    ]


def reference_updates(
    name: str, grads_seq: Sequence[PyTree], param_history: Sequence[PyTree], dtype: Any = None
) -> list[PyTree]:
    """The float64 reference updates of optimizer `name`, hyperparameters rounded as gradchain stores them.

    `param_history[k]` are the params step `k` saw (only AdamW's decoupled decay reads them).
    """
    s = functools.partial(stored, dtype=dtype)
    if name == "sgd_momentum":
        inner = reference_tree(ref_trace, grads_seq, s(MOMENTUM))
    elif name == "adagrad":
        inner = reference_tree(ref_rss, grads_seq, s(ADAGRAD_INIT), s(ADAGRAD_EPS))
    elif name == "rmsprop":
        inner = reference_tree(ref_rms, grads_seq, s(RMS_DECAY), s(RMS_EPS))
    elif name in ("adam", "adamw", "nadam"):
        inner = reference_tree(ref_adam, grads_seq, s(B1), s(B2), s(EPS), nesterov=name == "nadam")
        if name == "adamw":
            inner = _decayed(inner, param_history, s(WD))
    elif name == "amsgrad":
        inner = reference_tree(ref_amsgrad, grads_seq, s(B1), s(B2), s(EPS))
    elif name == "adamax":
        inner = reference_tree(ref_adamax, grads_seq, s(B1), s(B2), s(EPS))
    else:
        raise AssertionError(f"no reference for {name}")
    return _scaled(inner, -s(OPTIMIZERS[name][1]))


def _late_amsgrad(grads: list[Any]) -> list[np.ndarray]:
    """AMSGrad with every $1-\\beta^t = 1$: $m_t = \\max(m_{t-1}, \\nu_t)$, $u = \\mu_t / (\\sqrt{m_t} + \\epsilon)$."""
    out, mu, nu, m = [], 0.0, 0.0, 0.0
    for g in map(_wide, grads):
        mu = stored(B1) * mu + (1 - stored(B1)) * g
        nu = stored(B2) * nu + (1 - stored(B2)) * g * g
        m = np.maximum(m, nu)
        out.append(mu / (np.sqrt(m) + stored(EPS)))
    return out


def reference_late_updates(name: str, grads_seq: Sequence[PyTree], params: PyTree) -> list[PyTree]:
    """Updates from zero moments at a step count near $2^{31}$, where every $\\beta^t$ is 0 in float32.

    Then all bias corrections $1-\\beta^t$ are exactly 1. `params` stay fixed (AdamW's decay).
    """
    s = stored
    if name in ("adam", "adamw", "nadam"):
        inner = reference_tree(
            ref_adam, grads_seq, s(B1), s(B2), s(EPS), nesterov=name == "nadam", bias_correction=False
        )
        if name == "adamw":
            inner = _decayed(inner, [params] * len(grads_seq), s(WD))
    elif name == "amsgrad":
        inner = reference_tree(_late_amsgrad, grads_seq)
    elif name == "adamax":
        # ref_adamax divides step t = 1, 2, ... by 1 - b1^t; multiply it back for the t -> infinity form.
        inner = reference_tree(ref_adamax, grads_seq, s(B1), s(B2), s(EPS))
        inner = [jax.tree.map(lambda u, k=k: u * (1 - s(B1) ** (k + 1)), t) for k, t in enumerate(inner)]
    else:  # sgd_momentum, adagrad, rmsprop: no bias correction, the step number does not enter
        return reference_updates(name, grads_seq, [params] * len(grads_seq))
    return _scaled(inner, -s(OPTIMIZERS[name][1]))


# ------------------------------------------------------------------------------------------------
# State helpers


def set_count(state: Any, count: int) -> Any:
    """`state` with the `count` field of every NamedTuple in it replaced (keeping its int32 dtype)."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        if "count" in state._fields:
            return state._replace(count=jnp.asarray(count, state.count.dtype))
        return state
    if isinstance(state, gc.ChainState):
        return gc.ChainState([set_count(s, count) for s in state])
    if isinstance(state, tuple):
        return tuple(set_count(s, count) for s in state)
    if isinstance(state, dict):
        return {k: set_count(v, count) for k, v in state.items()}
    return state


def counts(state: Any) -> list[int]:
    """The `count` of every NamedTuple in `state` that has one."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return [int(state.count)] if "count" in state._fields else []
    if isinstance(state, tuple | gc.ChainState):
        return [c for s in state for c in counts(s)]
    return []


def assert_all_finite(tree: PyTree, what: str) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        x = np.asarray(leaf)
        if not np.issubdtype(x.dtype, np.inexact) and x.dtype not in (F16, BF16):
            continue
        wide = x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)
        assert np.all(np.isfinite(wide)), f"{what}{jax.tree_util.keystr(path)} is not finite: {x.ravel()[:6]}"


# ------------------------------------------------------------------------------------------------
# (a) float16 / bfloat16 params


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_zero_gradients_give_zero_updates_and_no_nan(name):
    # optax 0.2.8 gives NaN here in float16 for adam, rmsprop and adamax (its eps underflows; optax
    # #1754, #1784, #1789); gradchain computes the denominator in at least float32.
    params = half_params()
    traj = run(name, params, half_grads(10, step_scales=[0.0] * 10))
    for k, updates in enumerate(traj):
        assert_all_finite(updates, f"step {k} update")
        for key, dtype in HALF.items():
            assert {u.dtype for u in jax.tree.leaves(updates[key])} == {dtype}, f"step {k}: updates[{key!r}]"
    assert_all_finite(traj.state, "state")
    if name == "adamw":
        # Only the decoupled decay acts: u = -lr * wd * p (rounded to the param dtype twice in the chain).
        decay_only = [jax.tree.map(lambda p: -stored(LR) * stored(WD) * _wide(p), p_k) for p_k in traj.param_history]
        for key in HALF:
            assert_trajectory_close(part(traj, key), part(decay_only, key), rtol=4 * UNIT_ROUNDOFF[key], per_step=True)
    else:
        for k, updates in enumerate(traj):
            for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
                np.testing.assert_array_equal(
                    np.asarray(u, np.float32), 0.0, err_msg=f"step {k} {jax.tree_util.keystr(path)}"
                )
        for p, p0 in zip(jax.tree.leaves(traj.params), jax.tree.leaves(params), strict=True):
            np.testing.assert_array_equal(np.asarray(p, np.float32), np.asarray(p0, np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_steps_stay_finite_and_keep_the_gradient_dtype(name):
    # Gradient magnitudes from 1e-4 to 10 (larger ones: test_float16_large_gradients_accumulate_...).
    scales = [1.0, 1e-4, 1e-2, 10.0] * 10
    params = half_params()
    grads = half_grads(len(scales), step_scales=scales)
    traj = run(name, params, grads)
    for k, updates in enumerate(traj):
        assert_all_finite(updates, f"step {k} update")
        for key, dtype in HALF.items():
            assert {u.dtype for u in jax.tree.leaves(updates[key])} == {dtype}, f"step {k}: updates[{key!r}]"
    assert_all_finite(traj.state, "state")
    assert_all_finite(traj.params, "params")
    for field, path, leaf in state_buffers(traj.state):
        expected = default_storage(field, HALF[path.split("/")[0]])  # path is "f16/..." or "bf16/..."
        assert leaf.dtype == expected, f"{field} {path}: {leaf.dtype}, expected {expected}"


@pytest.mark.parametrize("name", NAMES)
def test_updates_take_the_gradient_dtype_not_the_param_dtype(name):
    """bfloat16 params with float32 gradients give float32 updates (and the reverse)."""
    tx, _ = optimizer(name)
    for p_dtype, g_dtype in [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.bfloat16)]:
        params = {"w": jnp.linspace(-1, 1, 6, dtype=p_dtype).reshape(2, 3)}
        grads = {"w": jnp.linspace(0.5, -0.5, 6, dtype=g_dtype).reshape(2, 3)}
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        assert updates["w"].dtype == g_dtype, f"params {p_dtype.__name__}, grads {g_dtype.__name__}"
        assert_all_finite(updates, "update")
        for field, path, leaf in state_buffers(state):
            expected = default_storage(field, p_dtype)
            assert leaf.dtype == expected, f"{field} {path}: storage follows the params, got {leaf.dtype}"


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adam", "amsgrad", "adamax"])
def test_float16_large_gradients_accumulate_without_overflow(name):
    """Squares of float16 gradients above 256 overflow float16 (max 65504); AdaGrad's sum does soon.

    The |g|^2 accumulators of float16 params are kept in float32, so the updates follow the
    reference rather than collapsing to 0 (g / sqrt(inf)) or NaN.
    """
    params = {"w": np.linspace(-1, 1, 5).astype(F16)}
    grads = [{"w": (np.linspace(150, 300, 5) * (-1) ** k).astype(F16)} for k in range(6)]  # 6 * 9e4 > 65504
    traj = run(name, params, grads, apply=False)
    assert_all_finite(traj.state, "state")
    expected = reference_updates(name, grads, traj.param_history)
    assert_trajectory_close(list(traj), expected, rtol=4 * UNIT_ROUNDOFF["f16"])


# ------------------------------------------------------------------------------------------------
# (b) bias correction at the first step and near the int32 limit of the count


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_first_step_is_finite_and_exact(name):
    params = half_params()
    grads = half_grads(1)
    traj = run(name, params, grads, apply=False)
    assert_all_finite(traj[0], "update")
    expected = reference_updates(name, grads, traj.param_history)
    # The chain rounds to the param dtype after each ingredient: 2 to 3 roundings.
    for key in HALF:
        assert_trajectory_close(part(traj, key), part(expected, key), rtol=4 * UNIT_ROUNDOFF[key])
    if name in ("adam", "amsgrad"):  # step 1 of Adam is -lr * g / (|g| + eps) = -lr * sign(g)
        for u, g in zip(jax.tree.leaves(traj[0]["bf16"]), jax.tree.leaves(grads[0]["bf16"]), strict=True):
            sign = -LR * np.sign(np.asarray(g, np.float32))
            np.testing.assert_allclose(np.asarray(u, np.float32), sign, rtol=2.0**-7)


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_bias_correction_near_int32_max_count(name):
    """At a count near 2**31 - 1 every 1 - b**t is 1 (not 0, not NaN), and the count saturates."""
    params = half_params()
    grads = half_grads(6)
    tx, _ = optimizer(name)
    state = set_count(tx.init(jax.tree.map(jnp.asarray, params)), INT32_MAX - 3)
    assert counts(state) and set(counts(state)) == {INT32_MAX - 3}
    traj = run(name, params, grads, state=state, apply=False)
    for k, updates in enumerate(traj):
        assert_all_finite(updates, f"step {k} update")
    assert set(counts(traj.state)) == {INT32_MAX}, "the step count must saturate, not wrap around"
    assert_all_finite(traj.state, "state")
    expected = reference_late_updates(name, grads, params)
    # The moments are stored in the half dtype: a few roundings per step accumulate over 6 steps.
    for key in HALF:
        assert_trajectory_close(part(traj, key), part(expected, key), rtol=8 * UNIT_ROUNDOFF[key])


# ------------------------------------------------------------------------------------------------
# (c) float32 moments for half-precision params


@pytest.mark.parametrize("name", list(STATE_DTYPE_ARGS))
def test_float32_state_for_half_params_is_closer_to_the_reference(name):
    params = half_params()
    grads = half_grads(100)
    # Params stay fixed (apply=False): lr-sized steps would round away on bfloat16 params of size 1,
    # so the updates are what the optimizer controls. The reference sees the same rounded gradients.
    mixed = run(name, params, grads, apply=False, float32_state=True)
    plain = run(name, params, grads, apply=False)

    for field, path, leaf in state_buffers(mixed.state):
        assert leaf.dtype == jnp.float32, f"{field} {path}: {leaf.dtype}"
    for field, path, leaf in state_buffers(plain.state):
        expected = default_storage(field, HALF[path.split("/")[0]])
        assert leaf.dtype == expected, f"{field} {path}: {leaf.dtype}, expected {expected}"
    for traj in (mixed, plain):
        for updates in traj:
            for key, dtype in HALF.items():
                assert {u.dtype for u in jax.tree.leaves(updates[key])} == {dtype}

    expected = reference_updates(name, grads, mixed.param_history)
    for key in HALF:
        # Step by step, float32 state leaves only the roundings of the chain's outputs to the half dtype.
        assert_trajectory_close(part(mixed, key), part(expected, key), rtol=4 * UNIT_ROUNDOFF[key])
        # Over the trajectory p_k = p_0 + sum of the updates before k, those roundings average out, while
        # moments stored in the half dtype drift (b2 = 0.999 increments are below bfloat16's resolution).
        err_mixed = max_relative_error(displacements(part(mixed, key)), displacements(part(expected, key)))
        err_plain = max_relative_error(displacements(part(plain, key)), displacements(part(expected, key)))
        assert err_mixed < err_plain / 2, f"{key} params: float32 state error {err_mixed:.3g}, {key} {err_plain:.3g}"


def displacements(updates: Sequence[PyTree]) -> list[PyTree]:
    """The running sums of the updates (float64): the param trajectory minus its start."""
    out, total = [], jax.tree.map(lambda u: np.zeros(np.shape(u)), updates[0])
    for u in updates:
        total = jax.tree.map(lambda t, x: t + _wide(x), total, u)
        out.append(total)
    return out


# ------------------------------------------------------------------------------------------------
# (d) float64 with x64 enabled


@pytest.mark.parametrize("name", NAMES)
def test_float64_states_updates_hyperparams_and_trajectory(x64, name):
    params = param_tree(dtype=np.float64)
    grads = grad_sequence(n_steps=100, dtype=np.float64)
    traj = run(name, params, grads)

    for updates in traj:
        assert {u.dtype for u in jax.tree.leaves(updates)} == {np.dtype(np.float64)}
    assert {p.dtype for p in jax.tree.leaves(traj.params)} == {np.dtype(np.float64)}
    found = list(state_buffers(traj.state))
    assert found
    for field, path, leaf in found:
        assert leaf.dtype == jnp.float64, f"{field} {path}: {leaf.dtype}"
    hps = gc.hyperparams(traj.state)
    assert "learning_rate" in hps
    for key, value in hps.items():
        assert value.dtype == jnp.float64, f"hyperparameter {key}: {value.dtype}"
    assert float(hps["learning_rate"]) == OPTIMIZERS[name][1]  # the Python float itself, no float32 rounding

    expected = reference_updates(name, grads, traj.param_history, dtype=np.float64)
    assert_trajectory_close(list(traj), expected, rtol=1e-12)
    # The params follow p_k = p_0 + (sum of the reference updates before step k).
    p_ref = jax.tree.map(_wide, params)
    for k, u_ref in enumerate(expected):
        assert_trajectory_close([traj.param_history[k]], [p_ref], rtol=1e-12)
        p_ref = jax.tree.map(lambda p, u: p + u, p_ref, u_ref)
    assert_trajectory_close([jax.device_get(traj.params)], [p_ref], rtol=1e-12)


def test_x64_fixture_enables_and_restores_the_setting():
    before = bool(jax.config.jax_enable_x64)
    with x64_enabled():
        assert jnp.zeros((), dtype=float).dtype == jnp.float64
        tx = gc.adam(0.1)
        assert gc.hyperparams(tx.init({"w": jnp.ones(2)}))["b1"].dtype == jnp.float64
    assert bool(jax.config.jax_enable_x64) == before


# ------------------------------------------------------------------------------------------------
# (e) complex params


@pytest.mark.parametrize("name", NAMES)
def test_complex64_trajectory_matches_reference_with_real_second_moments(name):
    params = param_tree(dtype=np.complex64)
    grads = grad_sequence(n_steps=100, dtype=np.complex64)
    traj = run(name, params, grads)
    for updates in traj:
        assert {u.dtype for u in jax.tree.leaves(updates)} == {np.dtype(np.complex64)}
    found = list(state_buffers(traj.state))
    assert found
    for field, path, leaf in found:
        expected_dtype = jnp.float32 if field in REAL_BUFFER_FIELDS else jnp.complex64
        assert leaf.dtype == expected_dtype, f"{field} {path}: {leaf.dtype}, expected {expected_dtype}"
    # The references accumulate |g|^2 = g * conj(g) in the second moments.
    expected = reference_updates(name, grads, traj.param_history)
    assert_trajectory_close(list(traj), expected, rtol=2e-6)


def test_complex_adam_two_steps_by_hand():
    """Two Adam steps on one complex number, written out: mu complex, nu the EMA of |g|^2 (real)."""
    g1, g2 = 3 - 4j, -1 + 2j
    tx = gc.adam(1.0, b1=0.5, b2=0.75, eps=0.0)
    state = tx.init({"z": jnp.zeros((), jnp.complex64)})
    u1, state = tx.update({"z": jnp.asarray(g1, jnp.complex64)}, state)
    u2, state = tx.update({"z": jnp.asarray(g2, jnp.complex64)}, state)
    mu1, nu1 = 0.5 * g1, 0.25 * 25.0
    mu2, nu2 = 0.5 * mu1 + 0.5 * g2, 0.75 * nu1 + 0.25 * 5.0
    np.testing.assert_allclose(complex(u1["z"]), -(mu1 / 0.5) / np.sqrt(nu1 / 0.25), rtol=1e-6)
    np.testing.assert_allclose(complex(u2["z"]), -(mu2 / 0.75) / np.sqrt(nu2 / (1 - 0.75**2)), rtol=1e-6)
    assert state[0].nu["z"].dtype == jnp.float32
    np.testing.assert_allclose(float(state[0].nu["z"]), nu2, rtol=1e-6)


def _complex_least_squares() -> tuple[jax.Array, jax.Array, np.ndarray]:
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((12, 4)) + 1j * rng.standard_normal((12, 4))) / np.sqrt(24)
    b = rng.standard_normal(12) + 1j * rng.standard_normal(12)
    solution = np.linalg.lstsq(a, b, rcond=None)[0]
    return jnp.asarray(a, jnp.complex64), jnp.asarray(b, jnp.complex64), solution


def test_jax_grad_of_a_real_loss_is_the_conjugate_of_the_descent_direction():
    """JAX's convention: for real f(z), `jax.grad` gives $\\overline{2\\, \\partial f / \\partial \\bar z}$.

    Steepest descent moves along $-2\\,\\partial f/\\partial \\bar z$ = `-conj(jax.grad(f)(z))`, so a
    complex parameter is optimized by feeding `jnp.conj(grads)` to the optimizer.
    """
    a, b, _ = _complex_least_squares()
    z = jnp.asarray(np.arange(4) + 1j * np.arange(4, 0, -1), jnp.complex64)
    loss = lambda z: jnp.sum(jnp.abs(a @ z - b) ** 2)  # noqa: E731
    g = jax.grad(loss)(z)
    an, bn, zn = np.asarray(a, np.complex128), np.asarray(b, np.complex128), np.asarray(z, np.complex128)
    descent = 2 * an.conj().T @ (an @ zn - bn)  # 2 A^H (A z - b)
    np.testing.assert_allclose(np.asarray(g), np.conj(descent), rtol=1e-5)
    assert loss(z - 1e-3 * jnp.conj(g)) < loss(z)
    assert loss(z - 1e-3 * g) > loss(z - 1e-3 * jnp.conj(g))


COMPLEX_CONVERGENCE: dict[str, Callable[[], gc.GradientTransformation]] = {
    "sgd_momentum": lambda: gc.sgd(0.05, momentum=0.9),
    "adagrad": lambda: gc.adagrad(0.5),
    "rmsprop": lambda: gc.rmsprop(0.01),
    "adam": lambda: gc.adam(0.05),
    "adamw": lambda: gc.adamw(0.05, weight_decay=0.0),
    "amsgrad": lambda: gc.amsgrad(0.05),
    "adamax": lambda: gc.adamax(0.05),
}


@pytest.mark.parametrize("name", list(COMPLEX_CONVERGENCE))
def test_complex_least_squares_converges_with_conjugated_gradients(name):
    a, b, solution = _complex_least_squares()
    tx = COMPLEX_CONVERGENCE[name]()
    loss = lambda z: jnp.sum(jnp.abs(a @ z - b) ** 2)  # noqa: E731

    def step(carry, _):
        z, state = carry
        updates, state = tx.update(jnp.conj(jax.grad(loss)(z)), state, z)
        return (gc.apply_updates(z, updates), state), None

    z0 = jnp.zeros(4, jnp.complex64)
    (z, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=600))((z0, tx.init(z0)))
    error = np.linalg.norm(np.asarray(z) - solution) / np.linalg.norm(solution)
    assert error < 2e-2, f"{name}: relative distance to the least-squares solution {error:.3g}"


def test_clip_rejects_complex_updates_naming_the_leaf():
    updates = {"real": jnp.ones(2), "layer": {"z": jnp.ones(2, jnp.complex64)}}
    tx = gc.clip(1.0)
    with pytest.raises(TypeError, match=r"clip.*layer/z.*complex64"):
        tx.update(updates, tx.init(None))
    with pytest.raises(TypeError, match=r"clip.*layer/z"):
        tx.init(updates)
    chained = gc.chain(gc.clip(1.0), gc.adam(1e-3))
    with pytest.raises(TypeError, match=r"clip.*layer/z"):
        chained.init(updates)


def test_clip_by_global_norm_accepts_complex_updates():
    tx = gc.clip_by_global_norm(1.0)
    u, state = tx.update({"z": jnp.asarray([3 + 4j, 0j], jnp.complex64)}, tx.init(None))
    np.testing.assert_allclose(np.asarray(u["z"]), [0.6 + 0.8j, 0], rtol=1e-6)
    assert float(state.global_norm) == pytest.approx(5.0)


# ------------------------------------------------------------------------------------------------
# (f) integer / boolean params and gradients; NaN gradients


@pytest.mark.parametrize("bad_dtype", [jnp.int32, jnp.uint8, jnp.bool_], ids=["int32", "uint8", "bool"])
@pytest.mark.parametrize("name", NAMES)
def test_integer_or_bool_params_raise_type_error_naming_the_path(name, bad_dtype):
    params = {"w": jnp.ones((2, 3)), "meta": {"step": jnp.zeros(3, bad_dtype)}}
    with pytest.raises(TypeError, match=rf"meta/step.*{jnp.dtype(bad_dtype).name}"):
        make(name).init(params)


@pytest.mark.parametrize("name", NAMES)
def test_integer_gradients_raise_type_error_naming_the_path(name):
    params = {"w": jnp.ones((2, 3)), "b": [jnp.ones(2), jnp.ones(3)]}
    tx = make(name)
    state = tx.init(params)
    grads = {"w": jnp.ones((2, 3)), "b": [jnp.ones(2), jnp.ones(3, jnp.int32)]}
    with pytest.raises(TypeError, match=r"b/1.*int32"):
        tx.update(grads, state, params)


@pytest.mark.parametrize("name", NAMES)
def test_nan_gradients_propagate_and_stay_local(name):
    """Current behaviour: a NaN gradient entry makes that entry's update (and state) NaN from then on.

    Nothing replaces it silently, and other entries are unaffected, bit for bit (every rule is
    element-wise). Skipping non-finite steps is a wrapper's job (`apply_if_finite`, a later release).
    """
    params = param_tree()
    grads = grad_sequence(n_steps=8)
    poisoned = [jax.tree.map(np.copy, g) for g in grads]
    poisoned[3]["c"][1, 2] = np.nan
    clean = [jax.tree.map(np.copy, g) for g in grads]
    clean[3]["c"][1, 2] = 0.0  # the same as `poisoned` everywhere else
    bad, good = run(name, params, poisoned), run(name, params, clean)

    others = np.ones(TREE_SHAPES["c"], bool)
    others[1, 2] = False
    for k in range(len(grads)):
        if k < 3:
            assert np.all(np.isfinite(bad[k]["c"])), f"step {k}: NaN before it arrived"
        else:
            assert np.isnan(bad[k]["c"][1, 2]), f"step {k}: the NaN entry's update is {bad[k]['c'][1, 2]}, not NaN"
        np.testing.assert_array_equal(bad[k]["c"][others], good[k]["c"][others], err_msg=f"step {k}")
        for key in ("a", "b", "d"):
            np.testing.assert_array_equal(bad[k][key], good[k][key], err_msg=f"step {k} leaf {key}")
    assert np.isnan(np.asarray(bad.params["c"])[1, 2])
