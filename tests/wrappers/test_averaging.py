"""Parameter averaging (`ema_params`, `swa`) and `lookahead`, from gradchain/wrappers/averaging.py.

References: float64 numpy transcriptions (TensorFlow's EMA with and without its `num_updates`
warm-up, Adam-style debiasing, the SWA running mean, Algorithm 1 of Zhang et al. 2019 for
lookahead), `torch.optim.swa_utils.AveragedModel` step for step, and `optax.lookahead`.

Every trajectory has `N` steps of fixed pseudo-random gradients (independent of the params, so that
rounding is not amplified), on a tree of four leaves of different shapes and scales. The averages are
compared with the reference relative to the leaf's largest magnitude.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from reference import RTOL, RTOL32, TREE_SCALES, TREE_SHAPES, assert_stacked_close, grad_sequence, param_tree, stored
from references.adam import ref_adam
from references.averaging import ref_ema_params, ref_lookahead, ref_swa
from references.momentum import ref_trace
from references.scaling import ref_scale

import gradchain as gc
from gradchain import LookaheadState, ParamEmaState, SwaState, averaged_params, ema_params, lookahead, slow_params, swa

PyTree = Any
N = 120
# float32 averages: each step rounds a + w (p - a) to 2^-24 |a|; those errors decay with the average,
# so they stay below RTOL = 1e-6 of the leaf's magnitude (measured: at most 4.4e-7 here; torch's EMA
# agrees bit for bit). A wrong weight (an off-by-one step, a warm-up of t/(10+t) instead of
# (1+n)/(10+n)) is orders of magnitude above it. Param trajectories (lookahead) use RTOL32.
RTOL_AVG = RTOL


def _stack(trees: list[PyTree]) -> PyTree:
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _data(seed: int = 0, dtype: Any = np.float32) -> tuple[PyTree, PyTree, list[PyTree]]:
    grads = grad_sequence(TREE_SHAPES, N, seed, dtype, leaf_scales=TREE_SCALES)
    return param_tree(TREE_SHAPES, dtype=dtype), _stack(grads), grads


PARAMS, GRADS, GRAD_LIST = _data()


def _read_none(state: Any) -> None:
    return None


def run_many(entries: list[tuple[Any, Callable[[Any], Any]]], params: PyTree, grads: PyTree) -> list[tuple]:
    """Run every `(tx, read)` as an optimizer from `params`, all in one jitted scan (one compilation).

    Returns one `(params after every step, read(state) after every step, final state)` per entry,
    with a leading step axis.
    """

    def body(carry, g):
        new, outs = [], []
        for (tx, read), (p, s) in zip(entries, carry, strict=True):
            u, s = tx.update(g, s, p)
            p = gc.apply_updates(p, u)
            new.append((p, s))
            outs.append((p, read(s)))
        return new, outs

    @jax.jit
    def go(params, grads):
        final, outs = jax.lax.scan(body, [(params, tx.init(params)) for tx, _ in entries], grads)
        return [(p, r, s) for (p, r), (_, s) in zip(outs, final, strict=True)]

    return go(params, grads)


def _np(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _per_leaf(ref_fn: Callable[[list[np.ndarray]], list[np.ndarray]], grad_list: list[PyTree]) -> PyTree:
    """Apply a per-leaf update reference (tests/reference.py) to the gradient sequence; stacked."""
    treedef = jax.tree.structure(grad_list[0])
    columns = zip(*(treedef.flatten_up_to(g) for g in grad_list), strict=True)
    return treedef.unflatten([np.stack(ref_fn(list(col))) for col in columns])


# ---------------------------------------------------------------------------------------------------
# inner optimizers: (gradchain, optax, float64 reference of the updates)


@dataclasses.dataclass(frozen=True)
class Inner:
    id: str
    make: Callable[[], Any]
    make_optax: Callable[[], Any]
    ref: Callable[[list[np.ndarray]], list[np.ndarray]]


LR_SGD, LR_ADAM = 0.05, 1e-2
INNERS = [
    Inner("sgd", lambda: gc.sgd(LR_SGD), lambda: optax.sgd(LR_SGD), lambda g: ref_scale(g, -stored(LR_SGD))),
    Inner(
        "sgd_momentum",
        lambda: gc.sgd(LR_SGD, momentum=0.9),
        lambda: optax.sgd(LR_SGD, momentum=0.9),
        lambda g: [-stored(LR_SGD) * v for v in ref_trace(g, stored(0.9))],
    ),
    Inner(
        "adam",
        lambda: gc.adam(LR_ADAM),
        lambda: optax.adam(LR_ADAM),
        lambda g: [-stored(LR_ADAM) * u for u in ref_adam(g, stored(0.9), stored(0.999), stored(1e-8))],
    ),
]
INNER = {inner.id: inner for inner in INNERS}


def inner_trajectory(inner_id: str) -> PyTree:
    """The params trajectory of the inner optimizer alone: the wrappers must not change it."""
    return run_case("ema", ("inner", inner_id))[0]


# ---------------------------------------------------------------------------------------------------
# ema_params


def _average(state: Any) -> Any:
    return averaged_params(state)


EMA_CASES = [
    ("sgd", 0.9, "plain"),
    ("sgd", 0.99, "plain"),
    ("sgd", 0.99, "warmup"),
    ("sgd", 0.99, "debias"),
    ("sgd_momentum", 0.99, "warmup"),
    ("adam", 0.99, "plain"),
    ("adam", 0.999, "warmup"),
    ("adam", 0.99, "debias"),
    ("sgd", 0.999, "debias"),
]


def _make_ema(inner_id: str, decay: float, mode: str, **kwargs: Any) -> Any:
    return ema_params(INNER[inner_id].make(), decay, debias=mode == "debias", warmup=mode == "warmup", **kwargs)


@pytest.mark.parametrize("inner_id, decay, mode", EMA_CASES)
def test_ema_params_matches_numpy(inner_id, decay, mode):
    trajectory, averages, state = run_case("ema", ("ema", inner_id, decay, mode))
    # The wrapper passes the inner updates through bit for bit.
    jax.tree.map(np.testing.assert_array_equal, trajectory, inner_trajectory(inner_id))
    expected = ref_ema_params(PARAMS, trajectory, stored(decay), mode)
    assert_stacked_close(averages, expected, RTOL_AVG)
    assert int(state.count) == N


def test_ema_params_modes_differ_where_they_should():
    """The three modes are not the same number (the comparisons above could not tell otherwise)."""
    runs = {mode: run_case("ema", ("ema", "sgd", 0.99, mode))[1] for mode in ("plain", "warmup", "debias")}
    for a, b in [("plain", "warmup"), ("plain", "debias"), ("warmup", "debias")]:
        diff = max(
            float(np.max(np.abs(x[-1] - y[-1])))
            for x, y in zip(jax.tree.leaves(runs[a]), jax.tree.leaves(runs[b]), strict=True)
        )
        assert diff > 1e-3, (a, b, diff)
    # Debiasing forgets p_0 at once: the first average is p_1, exactly.
    first = jax.tree.map(lambda x: x[0], runs["debias"])
    p1 = jax.tree.map(lambda x: x[0], inner_trajectory("sgd"))
    jax.tree.map(np.testing.assert_array_equal, first, p1)


def _torch_module(tree: PyTree) -> Any:  # a torch.nn.Module
    import torch  # only reached from tests that take the `torch` fixture

    module = torch.nn.Module()
    module.leaves = torch.nn.ParameterList(
        [torch.nn.Parameter(torch.tensor(np.asarray(x))) for x in jax.tree.leaves(tree)]
    )
    return module


def _torch_set(module: Any, tree: PyTree) -> None:  # module: a torch.nn.Module
    import torch  # only reached from tests that take the `torch` fixture

    with torch.no_grad():
        for param, x in zip(module.leaves, jax.tree.leaves(tree), strict=True):
            param.copy_(torch.tensor(np.asarray(x)))


def _torch_read(averaged: Any, like: PyTree) -> PyTree:
    values = [p.detach().numpy().astype(np.float64) for p in averaged.module.leaves]
    return jax.tree.structure(like).unflatten(values)


def _torch_averages(avg_fn_kwargs: dict, trajectory: PyTree, call_at: Callable[[int], bool]) -> PyTree:
    """AveragedModel fed the params of every step t (t = 0: PARAMS) where `call_at(t)`; after every step."""
    import torch  # only reached from tests that take the `torch` fixture

    model = _torch_module(PARAMS)
    averaged = torch.optim.swa_utils.AveragedModel(model, use_buffers=False, **avg_fn_kwargs)
    if call_at(0):
        averaged.update_parameters(model)
    out = []
    for t in range(1, N + 1):
        _torch_set(model, jax.tree.map(lambda x, t=t: x[t - 1], trajectory))
        if call_at(t):
            averaged.update_parameters(model)
        out.append(_torch_read(averaged, PARAMS))
    return _stack(out)


@pytest.mark.parametrize("inner_id, decay", [("sgd", 0.9), ("adam", 0.99)])
def test_ema_params_matches_torch_averaged_model(inner_id, decay, torch):
    trajectory, averages, _ = run_case("ema", ("ema", inner_id, decay, "plain"))
    ema_fn = {"multi_avg_fn": torch.optim.swa_utils.get_ema_multi_avg_fn(stored(decay))}
    # With update_parameters also called before the first step, torch averages from p_0 as we do.
    expected = _torch_averages(ema_fn, trajectory, lambda t: True)
    assert_stacked_close(averages, expected, RTOL_AVG)
    # torch's usual loop (update_parameters after each step only) starts from p_1 instead: ours
    # minus torch's is then exactly d^t (p_0 - p_1), the difference the docstring states.
    torch_default = _torch_averages(ema_fn, trajectory, lambda t: t >= 1)
    d = stored(decay)
    t = np.arange(1, N + 1, dtype=np.float64)

    def predicted(p0, ps):
        return d ** t.reshape((-1,) + (1,) * np.ndim(p0)) * (np.float64(p0) - np.float64(ps[0]))

    differences = jax.tree.map(lambda a, b: np.float64(a) - b, averages, torch_default)
    scale = jax.tree.map(lambda ps: np.max(np.abs(ps)), trajectory)
    visible = max(
        float(np.max(np.abs(pred[0]) / s))
        for pred, s in zip(
            jax.tree.leaves(jax.tree.map(predicted, PARAMS, trajectory)), jax.tree.leaves(scale), strict=True
        )
    )
    assert visible > 1e-3  # the difference is far above the tolerance at the start
    for diff, pred, s in zip(
        jax.tree.leaves(differences),
        jax.tree.leaves(jax.tree.map(predicted, PARAMS, trajectory)),
        jax.tree.leaves(scale),
        strict=True,
    ):
        np.testing.assert_allclose(diff, pred, rtol=0, atol=RTOL_AVG * s)


def test_ema_params_matches_a_manual_optax_loop():
    """optax.ema averages updates, not params; a loop with optax.adam + a hand-written EMA is ours."""
    decay = stored(0.99)
    tx = optax.adam(LR_ADAM)
    p, s = jax.tree.map(jnp.asarray, PARAMS), None
    s = tx.init(p)
    average = p
    step = jax.jit(tx.update)
    expected = []
    for g in GRAD_LIST:
        u, s = step(g, s, p)
        p = optax.apply_updates(p, u)
        average = jax.tree.map(lambda a, x: a + (1 - decay) * (x - a), average, p)
        expected.append(average)
    _, averages, _ = run_case("ema", ("optax_adam",))
    assert_stacked_close(averages, _stack([_np(a) for a in expected]), RTOL_AVG)


def test_ema_params_bfloat16_params_with_float32_average():
    params, grads, _ = _data(seed=3, dtype=jnp.bfloat16)
    tx = ema_params(gc.sgd(0.1), 0.9, accumulator_dtype=jnp.float32)
    (trajectory, averages, state), (_, low, low_state) = run_many(
        [(tx, _average), (ema_params(gc.sgd(0.1), 0.9), _average)], params, grads
    )
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.average))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(trajectory))
    assert_stacked_close(averages, ref_ema_params(params, trajectory, stored(0.9), "plain"), RTOL_AVG)
    # Kept in bfloat16 (the default), the average is far off: the reason for accumulator_dtype.
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(low_state.average))
    with pytest.raises(AssertionError):
        assert_stacked_close(low, ref_ema_params(params, trajectory, stored(0.9), "plain"), RTOL_AVG)


def test_ema_params_decay_is_a_hyperparameter():
    tx = ema_params(gc.sgd(0.1, momentum=0.9), 0.9)
    state = tx.init(PARAMS)
    hp = gc.hyperparams(state)
    assert float(hp["ema_params/decay"]) == stored(0.9) and float(hp["trace/decay"]) == stored(0.9)
    assert float(hp["learning_rate"]) == stored(0.1)
    state = gc.set_hyperparams(state, {"ema_params/decay": 0.5})
    params = jax.tree.map(jnp.asarray, PARAMS)
    updates, state = tx.update(GRAD_LIST[0], state, params)
    new = gc.apply_updates(params, updates)
    expected = jax.tree.map(lambda a, b: 0.5 * np.float64(a) + 0.5 * np.float64(b), params, new)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7), averaged_params(state), expected)
    with pytest.raises(ValueError, match="decay"):
        gc.set_hyperparams(state, {"ema_params/decay": 1.0})


# ---------------------------------------------------------------------------------------------------
# swa

SWA_CASES = [(0, 1), (1, 1), (50, 1), (30, 7), (0, 4), (119, 3), (200, 1)]


@pytest.mark.parametrize("start_step, every", SWA_CASES)
def test_swa_matches_numpy_and_torch(start_step, every, torch):
    inner_id = "adam"
    trajectory, averages, _ = run_case("swa", (start_step, every))
    averages, counts = averages
    jax.tree.map(np.testing.assert_array_equal, trajectory, inner_trajectory(inner_id))
    expected, expected_counts = ref_swa(PARAMS, trajectory, start_step, every)
    np.testing.assert_array_equal(np.asarray(counts), expected_counts)
    assert_stacked_close(averages, expected, RTOL_AVG)

    def taken(t):
        return t >= start_step and (t - start_step) % every == 0

    torch_expected = _torch_averages({}, trajectory, taken)
    assert_stacked_close(averages, torch_expected, RTOL_AVG)


def test_swa_uses_the_new_params_not_the_old():
    """With start_step=N, exactly the final params are averaged (an off-by-one would give the ones before)."""
    _, averages, state = run_case("swa", ("final",))
    assert int(state.n_averaged) == 1
    jax.tree.map(lambda a, p: np.testing.assert_array_equal(a[-1], p[-1]), averages, inner_trajectory("sgd"))
    jax.tree.map(lambda a: np.testing.assert_array_equal(a[-2], a[0]), averages)  # p_0 until then


# ---------------------------------------------------------------------------------------------------
# lookahead

LOOKAHEAD_CASES = [
    ("sgd", 6, 0.5),
    ("sgd", 1, 0.8),
    ("sgd_momentum", 5, 0.5),
    ("adam", 6, 0.5),
    ("adam", 7, 0.3),
    ("adam", 4, 1.0),
    ("adam", 5, 0.0),
]


def _slow(state: Any) -> Any:
    return slow_params(state)


@pytest.mark.parametrize("inner_id, sync_period, alpha", LOOKAHEAD_CASES)
def test_lookahead_matches_the_paper(inner_id, sync_period, alpha):
    inner = INNER[inner_id]
    fast_updates = _per_leaf(inner.ref, GRAD_LIST)
    expected_fast, expected_slow = ref_lookahead(PARAMS, fast_updates, sync_period, stored(alpha))
    trajectory, slows, state = run_case("lookahead", (inner_id, sync_period, alpha))
    assert_stacked_close(trajectory, expected_fast, RTOL32)
    assert_stacked_close(slows, expected_slow, RTOL32)
    assert int(state.steps_since_sync) == N % sync_period
    if alpha not in (0.0, 1.0) and sync_period > 1:
        # Not trivially the inner trajectory, nor the slow weights at every step.
        assert not np.allclose(jax.tree.leaves(trajectory)[1], jax.tree.leaves(inner_trajectory(inner_id))[1])
        assert not np.allclose(jax.tree.leaves(trajectory)[1], jax.tree.leaves(slows)[1])


OPTAX_LOOKAHEAD_CASES = [(*case, same) for case in LOOKAHEAD_CASES if case[2] > 0 for same in (True, False)]


@functools.cache
def optax_lookahead_runs() -> dict[tuple, Any]:
    """`optax.lookahead` over the same steps, every case in one scan: LookaheadParams after each step."""
    txs = []
    for inner_id, sync_period, alpha, same_inner in OPTAX_LOOKAHEAD_CASES:
        inner = INNER[inner_id]
        txs.append(optax.lookahead(inner.make() if same_inner else inner.make_optax(), sync_period, alpha))

    def body(carry, g):
        new = []
        for tx, (p, s) in zip(txs, carry, strict=True):
            u, s = tx.update(g, s, p)
            new.append((optax.apply_updates(p, u), s))
        return new, [p for p, _ in new]

    @jax.jit
    def go(params, grads):
        params = optax.LookaheadParams.init_synced(params)
        return jax.lax.scan(body, [(params, tx.init(params)) for tx in txs], grads)[1]

    return dict(zip(OPTAX_LOOKAHEAD_CASES, go(PARAMS, GRADS), strict=True))


@pytest.mark.parametrize(
    "inner_id, sync_period, alpha, same_inner",
    OPTAX_LOOKAHEAD_CASES,
    ids=[f"{i}-{k}-{a}-{'gradchain' if same else 'optax'}_inner" for i, k, a, same in OPTAX_LOOKAHEAD_CASES],
)
def test_lookahead_matches_optax(inner_id, sync_period, alpha, same_inner):
    """optax keeps (fast, slow) in LookaheadParams; the fast params it returns are the params we return."""
    expected = optax_lookahead_runs()[(inner_id, sync_period, alpha, same_inner)]
    trajectory, slows, _ = run_case("lookahead", (inner_id, sync_period, alpha))
    assert_stacked_close(trajectory, expected.fast, RTOL32)
    assert_stacked_close(slows, expected.slow, RTOL32)


def test_lookahead_sync_resets_the_params_to_the_slow_weights():
    sync_period = 6
    trajectory, slows, _ = run_case("lookahead", ("adam", sync_period, 0.5))
    for t in range(1, N + 1):
        for p, s in zip(jax.tree.leaves(trajectory), jax.tree.leaves(slows), strict=True):
            if t % sync_period == 0:  # p = fl(p + fl(slow - p)): the slow weights to an ulp
                np.testing.assert_allclose(p[t - 1], s[t - 1], rtol=0, atol=2**-23 * np.max(np.abs(p)))
            else:
                assert not np.array_equal(p[t - 1], s[t - 1])


def test_lookahead_alpha_is_a_hyperparameter():
    tx = lookahead(gc.sgd(1.0), sync_period=2, alpha=0.5)
    params = {"w": jnp.zeros(1)}
    state = gc.set_hyperparams(tx.init(params), alpha=0.25)
    assert float(gc.hyperparams(state)["alpha"]) == 0.25
    for _ in range(2):
        updates, state = tx.update({"w": -jnp.ones(1)}, state, params)
        params = gc.apply_updates(params, updates)
    assert float(slow_params(state)["w"][0]) == 0.5 and float(params["w"][0]) == 0.5
    with pytest.raises(ValueError, match="alpha"):
        gc.set_hyperparams(state, alpha=1.5)


# ---------------------------------------------------------------------------------------------------
# the runs the comparisons above share, one compiled scan per group


def _swa_read(state: Any) -> Any:
    return averaged_params(state), state.n_averaged


def _batches() -> dict[str, dict[tuple, tuple[Callable[[], Any], Callable[[Any], Any]]]]:
    ema = {("inner", inner.id): (inner.make, _read_none) for inner in INNERS}
    ema |= {("ema", *case): (functools.partial(_make_ema, *case), _average) for case in EMA_CASES}
    ema[("optax_adam",)] = (lambda: ema_params(optax.adam(LR_ADAM), 0.99), _average)
    swas = {case: (functools.partial(swa, INNER["adam"].make(), *case), _swa_read) for case in SWA_CASES}
    swas[("final",)] = (lambda: swa(gc.sgd(LR_SGD), N), _average)
    lookaheads = {
        case: (functools.partial(lookahead, INNER[case[0]].make(), case[1], case[2]), _slow) for case in LOOKAHEAD_CASES
    }
    return {"ema": ema, "swa": swas, "lookahead": lookaheads}


@functools.cache
def _batch(name: str) -> dict[tuple, tuple]:
    entries = _batches()[name]
    results = run_many([(make(), read) for make, read in entries.values()], PARAMS, GRADS)
    return dict(zip(entries, results, strict=True))


def run_case(name: str, key: tuple) -> tuple:
    """(params after every step, what the case reads from the state after every step, final state)."""
    return _batch(name)[key]


# ---------------------------------------------------------------------------------------------------
# common behaviour of the three wrappers

WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "ema_params": lambda inner: ema_params(inner, 0.99),
    "ema_params_debias": lambda inner: ema_params(inner, 0.99, debias=True),
    "ema_params_warmup": lambda inner: ema_params(inner, 0.99, warmup=True, accumulator_dtype=jnp.float32),
    "swa": lambda inner: swa(inner, 3, 2),
    "lookahead": lambda inner: lookahead(inner, 3, 0.5),
}
STATE_TYPES = {"ema_params": ParamEmaState, "swa": SwaState, "lookahead": LookaheadState}


def _committed(tree: PyTree) -> PyTree:
    return jax.device_put(jax.tree.map(jnp.asarray, tree), jax.devices()[0])


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_jitted_step_traces_once(name):
    tx = WRAPPERS[name](gc.adamw(1e-3, weight_decay=1e-2))
    traces: list[int] = []

    @jax.jit
    def step(params, state, g):
        traces.append(1)
        updates, state = tx.update(g, state, params)
        return gc.apply_updates(params, updates), state

    params = _committed(PARAMS)
    state = tx.init(params)
    for k, g in enumerate(GRAD_LIST[:8]):
        if k == 4:
            key = "alpha" if name == "lookahead" else "ema_params/decay" if name.startswith("ema") else None
            state = gc.set_hyperparams(state, {"learning_rate": 1e-4, **({key: 0.5} if key else {})})
        params, state = step(params, state, _committed(g))
    assert len(traces) == 1 and step._cache_size() == 1


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_state_is_a_named_tuple_with_an_inner_state(name):
    tx = WRAPPERS[name](gc.adam(1e-3))
    state = tx.init(PARAMS)
    assert isinstance(state, STATE_TYPES[name.split("_debias")[0].split("_warmup")[0]])
    assert "inner_state" in state._fields
    assert ("hyperparams" in state._fields) == (name != "swa")
    inner_state = gc.adam(1e-3).init(PARAMS)
    assert jax.tree.structure(state.inner_state) == jax.tree.structure(inner_state)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_eval_shape_init_matches_concrete_init(name):
    tx = WRAPPERS[name](gc.adam(1e-3))
    params = {"w": np.ones((3, 2), np.float32), "b": np.ones(2, jnp.bfloat16)}
    abstract = jax.eval_shape(tx.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
    concrete = tx.init(jax.tree.map(jnp.asarray, params))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(lambda x: (x.shape, x.dtype), concrete)


@pytest.fixture
def explicit_mesh():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    with jax.sharding.set_mesh(mesh):
        yield mesh


def _spec(sharding: Any, ndim: int) -> tuple:
    return tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_init_keeps_param_shardings(name, explicit_mesh):
    shardings = {"w": NamedSharding(explicit_mesh, P("x")), "b": NamedSharding(explicit_mesh, P())}
    params = {
        "w": jax.device_put(np.arange(48, dtype=np.float32).reshape(16, 3), shardings["w"]),
        "b": jax.device_put(np.ones(8, np.float32), shardings["b"]),
    }
    tx = WRAPPERS[name](gc.adam(1e-3))
    field = "slow" if name == "lookahead" else "average"
    abstract = jax.eval_shape(
        tx.init, jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params)
    )
    concrete = tx.init(params)
    for key, sharding in shardings.items():
        for state in (abstract, concrete):
            leaf = getattr(state, field)[key]
            assert _spec(leaf.sharding, leaf.ndim) == _spec(sharding, leaf.ndim), (key, leaf.sharding)
        # A copy, not an alias of the params' buffer (a step donating both would donate it twice).
        pointers = [
            {shard.data.unsafe_buffer_pointer() for shard in x.addressable_shards}
            for x in (getattr(concrete, field)[key], params[key])
        ]
        assert not pointers[0] & pointers[1]
        np.testing.assert_array_equal(getattr(concrete, field)[key], params[key])


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_none_leaves(name):
    tx = WRAPPERS[name](gc.sgd(0.1))
    params = {"w": jnp.ones(3), "frozen": None}
    state = tx.init(params)
    for _ in range(4):
        updates, state = tx.update({"w": jnp.ones(3), "frozen": None}, state, params)
        params = gc.apply_updates(params, updates)
    assert updates["frozen"] is None and params["frozen"] is None
    kept = slow_params(state) if name == "lookahead" else averaged_params(state)
    assert kept["frozen"] is None and kept["w"].shape == (3,)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_params_are_required(name):
    tx = WRAPPERS[name](gc.sgd(0.1))
    state = tx.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"params is None"):
        tx.update({"w": jnp.ones(3)}, state)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_mismatched_updates_name_the_leaf(name):
    tx = WRAPPERS[name](gc.identity())
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"leaf b\b"):
        tx.update({"w": jnp.ones(3), "b": jnp.ones(4)}, state, params)


def test_extra_args_reach_the_inner_transformation():
    seen = []

    def update(updates, state, params=None, **extra_args):
        seen.append(extra_args["value"])
        return updates, state

    inner = gc.GradientTransformation(lambda p: gc.EmptyState(), update)
    params = {"w": jnp.ones(2)}
    for name in sorted(WRAPPERS):
        tx = WRAPPERS[name](inner)
        tx.update({"w": jnp.ones(2)}, tx.init(params), params, value=3.0)
        # optax transformations take no extra args: they are dropped for them.
        tx = WRAPPERS[name](optax.sgd(0.1))
        tx.update({"w": jnp.ones(2)}, tx.init(params), params, value=3.0)
    assert seen == [3.0] * len(WRAPPERS)


def test_finding_the_state_through_nesting():
    params = {"w": jnp.ones(2)}
    tx = gc.named_chain(("clip", gc.clip_by_global_norm(1.0)), ("avg", ema_params(lookahead(gc.adam(1e-3)), 0.5)))
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
    assert averaged_params(state) is state["avg"].average
    assert slow_params(state) is state["avg"].inner_state.slow
    # Outermost wins: swa around ema_params gives swa's average.
    state = swa(ema_params(gc.sgd(0.1)), 0).init(params)
    assert averaged_params(state) is state.average and isinstance(state, SwaState)
    with pytest.raises(ValueError, match="averaged_params: no ParamEmaState or SwaState"):
        averaged_params(gc.adam(1e-3).init(params))
    with pytest.raises(ValueError, match="slow_params: no LookaheadState"):
        slow_params(ema_params(gc.adam(1e-3)).init(params))
    side_by_side = (ema_params(gc.sgd(0.1)).init(params), swa(gc.sgd(0.1), 0).init(params))
    with pytest.raises(ValueError, match="averaged_params: the state holds 2"):
        averaged_params(side_by_side)


def test_packed_params():
    """Params and gradients passed as `gc.Packed` trees: plain tree maps work on them unchanged."""
    params = {f"b{i}": jnp.full(4, float(i)) for i in range(40)}
    packed = gc.pack(params)
    for make in WRAPPERS.values():
        tx = make(gc.sgd(0.5))
        state = tx.init(packed)
        p_packed, p_tree = packed, params
        state_tree = make(gc.sgd(0.5)).init(params)
        for k in range(7):
            g = {name: jnp.full(4, float(k)) for name in params}
            u, state = tx.update(gc.pack(g, packed.layout), state, p_packed)
            p_packed = gc.apply_updates(p_packed, u)
            u, state_tree = make(gc.sgd(0.5)).update(g, state_tree, p_tree)
            p_tree = gc.apply_updates(p_tree, u)
        jax.tree.map(np.testing.assert_array_equal, gc.unpack(p_packed), p_tree)


BAD_ARGS = [
    (lambda: ema_params(gc.sgd(0.1), 1.0), ValueError, "ema_params: decay"),
    (lambda: ema_params(gc.sgd(0.1), -0.1), ValueError, "ema_params: decay"),
    (lambda: ema_params(gc.sgd(0.1), debias=True, warmup=True), ValueError, "debias and warmup"),
    (lambda: ema_params(gc.sgd(0.1), debias=1), TypeError, "debias"),
    (lambda: ema_params(gc.sgd(0.1), accumulator_dtype=jnp.int32), TypeError, "accumulator_dtype"),
    (lambda: ema_params(None), TypeError, "ema_params: inner"),
    (lambda: ema_params(gc.sgd(0.1), lambda t: 0.9), TypeError, "decay"),
    (lambda: swa(gc.sgd(0.1), -1), ValueError, "swa: start_step"),
    (lambda: swa(gc.sgd(0.1), 2.0), TypeError, "swa: start_step"),
    (lambda: swa(gc.sgd(0.1), 0, every=0), ValueError, "swa: every"),
    (lambda: swa(gc.sgd(0.1), 0, accumulator_dtype="int8"), TypeError, "accumulator_dtype"),
    (lambda: swa("sgd", 0), TypeError, "swa: inner"),
    (lambda: lookahead(gc.sgd(0.1), 0), ValueError, "lookahead: sync_period"),
    (lambda: lookahead(gc.sgd(0.1), 1.5), TypeError, "lookahead: sync_period"),
    (lambda: lookahead(gc.sgd(0.1), 5, 1.5), ValueError, "lookahead: alpha"),
    (lambda: lookahead(gc.sgd(0.1), 5, float("nan")), ValueError, "lookahead: alpha"),
    (lambda: lookahead(gc.sgd(0.1), 5, slow_dtype=jnp.bool_), TypeError, "slow_dtype"),
    (lambda: lookahead(object()), TypeError, "lookahead: fast"),
]


@pytest.mark.parametrize("make, error, message", BAD_ARGS, ids=[f"{i}-{m}" for i, (_, _, m) in enumerate(BAD_ARGS)])
def test_bad_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()
