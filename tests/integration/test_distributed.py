"""Multi-device use: `pmap`, `shard_map`, `jit` with `NamedSharding`, abstract `init` for sharded state.

`tests/conftest.py` gives jax 8 simulated CPU devices. Every test here compares the multi-device run
with the same optimizer on one device, and checks that the optimizer state is laid out like the params
and that the compiled step moves no data between devices (no gather), as DESIGN.md promises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from reference import assert_trees_close, state_buffers

import gradchain as gc

pytestmark = pytest.mark.slow  # 8 simulated devices: every test compiles multi-device steps

N_DEVICES = 8
if len(jax.devices()) != N_DEVICES:
    pytest.skip(
        f"needs {N_DEVICES} devices, found {len(jax.devices())}: tests/conftest.py sets "
        "XLA_FLAGS=--xla_force_host_platform_device_count=8, which only works if jax was not imported "
        "(and its backend not initialised) before conftest.py ran",
        allow_module_level=True,
    )

PyTree = Any


# ------------------------------------------------------------------------------------------------
# (a), (b) data parallelism: per-device batches, gradients averaged across devices


def _least_squares(seed: int = 0) -> tuple[PyTree, np.ndarray, np.ndarray]:
    """A multi-output linear regression: params {w: (5, 3), b: (3,)}, data x: (64, 5), y: (64, 3)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8 * N_DEVICES, 5)).astype(np.float32)
    y = (x @ rng.standard_normal((5, 3)) + 0.5 + 0.1 * rng.standard_normal((8 * N_DEVICES, 3))).astype(np.float32)
    params = {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    return params, x, y


def _loss(params: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.sum((x @ params["w"] + params["b"] - y) ** 2, axis=-1))


DATA_PARALLEL_OPTIMIZERS: dict[str, Callable[[], gc.GradientTransformation]] = {
    "adamw": lambda: gc.adamw(0.05, weight_decay=0.01),
    "clip+adamw+schedule": lambda: gc.chain(
        gc.clip_by_global_norm(1.0), gc.adamw(gc.schedules.linear_schedule(0.05, 0.01, 20), weight_decay=0.01)
    ),
}
STEPS = 20


def _make_step(tx: gc.GradientTransformation, axis_name: str | None) -> Callable:
    def step(params, state, x, y):
        grads = jax.grad(_loss)(params, x, y)
        if axis_name is not None:
            # Equal per-device batch sizes: the mean of the per-device means is the full-batch mean.
            grads = jax.lax.pmean(grads, axis_name)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    return step


def _single_device_run(tx: gc.GradientTransformation, params: PyTree, x: np.ndarray, y: np.ndarray) -> tuple:
    step = jax.jit(_make_step(tx, None))
    state = tx.init(params)
    for _ in range(STEPS):
        params, state = step(params, state, x, y)
    return params, state


def _replicate(tree: PyTree) -> PyTree:
    """One copy per device along a new leading axis, as `pmap` takes it (host copies: see the next test)."""
    return jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (N_DEVICES, *np.shape(a))), tree)


def _assert_replicas_identical(tree: PyTree) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        leaf = np.asarray(leaf)
        for i in range(1, N_DEVICES):
            np.testing.assert_array_equal(leaf[i], leaf[0], err_msg=f"replica {i} of {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("name", list(DATA_PARALLEL_OPTIMIZERS))
def test_pmap_data_parallel_matches_single_device_full_batch(name):
    tx = DATA_PARALLEL_OPTIMIZERS[name]()
    params, x, y = _least_squares()
    expected_params, expected_state = _single_device_run(tx, params, x, y)

    p_step = jax.pmap(_make_step(tx, "batch"), axis_name="batch")
    p_params, p_state = _replicate(params), _replicate(tx.init(params))
    xs, ys = x.reshape(N_DEVICES, -1, 5), y.reshape(N_DEVICES, -1, 3)
    for _ in range(STEPS):
        p_params, p_state = p_step(p_params, p_state, xs, ys)

    _assert_replicas_identical((p_params, p_state))
    unreplicated_params = jax.tree.map(lambda a: a[0], p_params)
    unreplicated_state = jax.tree.map(lambda a: a[0], p_state)
    assert_trees_close(unreplicated_params, expected_params, rtol=1e-6)
    assert_trees_close(unreplicated_state, expected_state, rtol=1e-5)
    assert _loss(unreplicated_params, x, y) < 0.5 * _loss(params, x, y)  # it did train
    # The replicated state still exposes its hyperparameters (one copy per device).
    hp = gc.hyperparams(p_state)
    assert hp["weight_decay"].shape == (N_DEVICES,)
    np.testing.assert_allclose(np.asarray(hp["weight_decay"]), 0.01, rtol=1e-6)


def test_init_leaves_uncommitted_params_state_uncommitted():
    """`init` of params that jax may still place anywhere must not pin the state to one device.

    `jnp.zeros(3)` is uncommitted; `optax.adam(1e-3).init` keeps its moments uncommitted too, so
    `jnp.broadcast_to(state_leaf, (8, ...))` can be fed to `pmap` and the state can meet arrays on
    any device inside `jit`. A state committed to device 0 makes `pmap` fail with "Sharding passed
    to jit does not match the sharding on the respective arg".
    """
    tx = gc.adamw(0.05, weight_decay=0.01)
    params, x, y = _least_squares()
    assert not any(p.committed for p in jax.tree.leaves(params))
    state = tx.init(params)
    committed = [f"{f} {p}" for f, p, leaf in state_buffers(state) if leaf.committed]
    assert not committed, f"init committed these buffers of uncommitted params to a device: {committed}"
    p_step = jax.pmap(_make_step(tx, "batch"), axis_name="batch")
    replicate = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (N_DEVICES, *a.shape)), t)  # noqa: E731
    p_step(replicate(params), replicate(state), x.reshape(N_DEVICES, -1, 5), y.reshape(N_DEVICES, -1, 3))


def _shard_map_step(tx: gc.GradientTransformation, check_vma: bool) -> Callable:
    if not check_vma:
        return _make_step(tx, "batch")  # as under pmap: per-device gradients, then pmean

    # With varying-manual-axes checking, params replicated over "batch" are invariant, and the
    # gradient of the per-device loss with respect to them already comes back summed over devices
    # (the transpose of the implicit broadcast is a psum): a pmean of the gradients would leave
    # that sum, 8 times the full-batch gradient. Averaging the loss gives the mean gradient.
    def step(params, state, x, y):
        grads = jax.grad(lambda p: jax.lax.pmean(_loss(p, x, y), "batch"))(params)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    return step


@pytest.mark.parametrize("check_vma", [True, False], ids=["check_vma", "no_check_vma"])
@pytest.mark.parametrize("name", list(DATA_PARALLEL_OPTIMIZERS))
def test_shard_map_data_parallel_matches_single_device_full_batch(name, check_vma):
    tx = DATA_PARALLEL_OPTIMIZERS[name]()
    params, x, y = _least_squares()
    expected_params, expected_state = _single_device_run(tx, params, x, y)

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    step = jax.jit(
        jax.shard_map(
            _shard_map_step(tx, check_vma),
            mesh=mesh,
            in_specs=(P(), P(), P("batch"), P("batch")),
            out_specs=(P(), P()),
            check_vma=check_vma,
        )
    )
    batch = NamedSharding(mesh, P("batch"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    replicated = NamedSharding(mesh, P())
    s_params = jax.device_put(params, replicated)
    s_state = jax.device_put(tx.init(params), replicated)
    for _ in range(STEPS):
        s_params, s_state = step(s_params, s_state, xs, ys)

    for leaf in jax.tree.leaves((s_params, s_state)):
        assert leaf.sharding.is_fully_replicated
    assert_trees_close(s_params, expected_params, rtol=1e-6)
    assert_trees_close(s_state, expected_state, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# (c) jit with NamedSharding: state sharded like the params, no gather in the step


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("x",))


def _sharded_params(mesh: Mesh, seed: int = 0) -> tuple[PyTree, PyTree]:
    """Params with a matrix and a 3-d array sharded on their first axis, and a replicated bias."""
    rng = np.random.default_rng(seed)
    shardings = {
        "w": NamedSharding(mesh, P("x")),  # not P("x", None): jit returns the trailing-None-free spec,
        # and a spec that differs only by it is another jit signature (one more compilation)
        "t": NamedSharding(mesh, P("x")),
        "b": NamedSharding(mesh, P()),
    }
    shapes = {"w": (2 * N_DEVICES, 6), "t": (N_DEVICES, 3, 2), "b": (8,)}
    params = {k: jax.device_put(rng.standard_normal(shapes[k]).astype(np.float32), shardings[k]) for k in shapes}
    return params, shardings


def _grad_sequence(params: PyTree, steps: int, seed: int = 1) -> list[PyTree]:
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda p: jax.device_put(rng.standard_normal(p.shape).astype(np.float32), p.sharding), params)
        for _ in range(steps)
    ]


ELEMENTWISE_OPTIMIZERS: dict[str, Callable[[], gc.GradientTransformation]] = {
    "sgd_momentum": lambda: gc.sgd(0.05, momentum=0.9),
    "adagrad": lambda: gc.adagrad(0.1),
    "rmsprop": lambda: gc.rmsprop(0.01),
    "adam": lambda: gc.adam(0.01),
    "adamw": lambda: gc.adamw(0.01, weight_decay=0.1),
    "nadam": lambda: gc.nadam(0.01),
    "amsgrad": lambda: gc.amsgrad(0.01),
    "adamax": lambda: gc.adamax(0.01),
}
SHARDED_OPTIMIZERS = {
    **ELEMENTWISE_OPTIMIZERS,
    "clip_by_global_norm+adamw": lambda: gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(0.01, weight_decay=0.1)),
}


def assert_state_sharded_like_params(state: Any, param_shardings: PyTree, *, exact: bool = False) -> None:
    """Every buffer's sharding is equivalent to its param's (with `exact`, equal as objects too)."""
    by_path = {gc.tree.path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}
    found = list(state_buffers(state))
    assert found, "no per-parameter buffers found in the state"
    for field, path, leaf in found:
        expected = by_path[path]
        assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (
            f"state {field} {path} has sharding {leaf.sharding}, expected the param's {expected}"
        )
        if exact:
            assert leaf.sharding == expected, f"state {field}{path}: {leaf.sharding} != {expected}"


def _step_fn(tx: gc.GradientTransformation) -> Callable:
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    return step


COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def _collectives(hlo: str) -> dict[str, list[str]]:
    """The result types of every cross-device operation in compiled HLO text, by operation.

    A line reads `%name = TYPE op(operands), ...`, TYPE being `f32[16,6]{1,0}` or a tuple `(f32[], f32[])`.
    """
    found: dict[str, list[str]] = {op: [] for op in COLLECTIVES}
    pattern = re.compile(r"= (\([^)]*\)|\S+) (" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for line in hlo.splitlines():
        m = pattern.search(line)
        if m:
            found[m.group(2)].append(m.group(1))
    return found


def _is_scalar_f32(types: str) -> bool:
    arrays = re.findall(r"\w+\[[^\]]*\]", types)
    return bool(arrays) and all(a == "f32[]" for a in arrays)


@pytest.mark.parametrize("name", list(SHARDED_OPTIMIZERS))
def test_jit_with_named_sharding_keeps_shardings_and_never_gathers(mesh, name):
    tx = SHARDED_OPTIMIZERS[name]()
    params, shardings = _sharded_params(mesh)
    grads_seq = _grad_sequence(params, 10)

    state = tx.init(params)
    assert_state_sharded_like_params(state, shardings, exact=True)

    step = jax.jit(_step_fn(tx))
    hlo = step.lower(params, state, grads_seq[0]).compile().as_text()
    collectives = _collectives(hlo)
    for op in ("all-gather", "all-to-all", "collective-permute", "reduce-scatter"):
        assert not collectives[op], f"{name}: the compiled step contains {op} of {collectives[op]}"
    if name.startswith("clip_by_global_norm"):
        # The only communication: the scalar sums of squares of the global norm.
        assert collectives["all-reduce"], f"{name}: expected the global norm's all-reduce"
        for types in collectives["all-reduce"]:
            assert _is_scalar_f32(types), f"{name}: an all-reduce of {types}, expected scalars only"
    else:
        assert not collectives["all-reduce"], f"{name}: the element-wise step all-reduces {collectives['all-reduce']}"

    unsharded_params = jax.device_get(params)
    unsharded_state = tx.init(unsharded_params)
    plain_step = jax.jit(_step_fn(tx))
    for grads in grads_seq:
        params, state = step(params, state, grads)
        unsharded_params, unsharded_state = plain_step(unsharded_params, unsharded_state, jax.device_get(grads))

    for key, p in params.items():
        assert p.sharding.is_equivalent_to(shardings[key], p.ndim), f"params[{key!r}]: {p.sharding}"
    assert_state_sharded_like_params(state, shardings)
    # Not bit for bit: the per-shard kernels XLA generates round differently from the whole-array
    # one in the last bit (seen: 1 ulp in a few entries), and a sharded norm sums in another order.
    assert_trees_close(params, unsharded_params, rtol=1e-6)
    assert_trees_close(state, unsharded_state, rtol=1e-6)


def test_sharded_step_does_not_recompile_on_the_second_step(mesh):
    """The state `init` returns must look to jit like the state the step returns.

    The step returns the count and hyperparameters replicated over the params' mesh
    (`NamedSharding(mesh, P())`), so `init` must place them so too, or the second step compiles again.
    """
    tx = gc.adamw(0.01, weight_decay=0.1)
    params, _ = _sharded_params(mesh)
    state = tx.init(params)
    step = jax.jit(_step_fn(tx))
    for grads in _grad_sequence(params, 3):
        params, state = step(params, state, grads)
    assert step._cache_size() == 1, f"{step._cache_size()} compilations for 3 steps"


def test_sharded_state_hyperparams_change_without_recompiling(mesh):
    """`set_hyperparams` on a sharded state must keep each value's sharding, or the step recompiles."""
    tx = gc.adamw(0.01, weight_decay=0.1)
    params, _ = _sharded_params(mesh)
    grads = _grad_sequence(params, 4)
    state = tx.init(params)
    step = jax.jit(_step_fn(tx))
    for g in grads[:2]:  # warm up: after this the state has the step's own output shardings
        params, state = step(params, state, g)
    compiled = step._cache_size()
    old_sharding = gc.hyperparams(state)["learning_rate"].sharding
    state = gc.set_hyperparams(state, learning_rate=0.001)
    new_value = gc.hyperparams(state)["learning_rate"]
    np.testing.assert_allclose(float(new_value), 0.001, rtol=1e-6)
    for g in grads[2:]:
        params, state = step(params, state, g)
    assert new_value.sharding == old_sharding, f"set_hyperparams changed {old_sharding} to {new_value.sharding}"
    assert step._cache_size() == compiled, "set_hyperparams caused a recompilation"


# ------------------------------------------------------------------------------------------------
# (d) abstract init: derive the state's shardings before allocating it (the ZeRO-friendly path)


def _abstract(params: PyTree) -> PyTree:
    return jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params)


def _state_shardings_from_params(abstract_state: Any, param_shardings: PyTree, mesh: Mesh) -> Any:
    """Shardings for a state: each buffer like its param, every scalar (count, hyperparams) replicated.

    The buffers of an element-wise transformation are trees shaped like the params, so a state
    subtree with the params' structure gets the params' shardings.
    """
    params_def = jax.tree.structure(param_shardings)
    replicated = NamedSharding(mesh, P())

    def visit(node: Any) -> Any:
        if jax.tree.structure(node) == params_def:
            return param_shardings
        if isinstance(node, gc.ChainState):
            # Its children: the buffers, inside their states' skeletons, and the block of scalars.
            children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
            return treedef.unflatten([replicated if c is node.scalar_block else visit(c) for c in children])
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(visit(getattr(node, f)) for f in node._fields))
        if isinstance(node, tuple):
            return tuple(visit(n) for n in node)
        if isinstance(node, dict):
            return {k: visit(v) for k, v in node.items()}
        return jax.tree.map(lambda _: replicated, node)

    return visit(abstract_state)


@pytest.mark.parametrize("name", list(SHARDED_OPTIMIZERS))
def test_eval_shape_init_then_jit_init_with_derived_out_shardings(mesh, name):
    tx = SHARDED_OPTIMIZERS[name]()
    params, shardings = _sharded_params(mesh)
    abstract_state = jax.eval_shape(tx.init, _abstract(params))
    eager_state = tx.init(params)
    # Shapes and dtypes come out right without allocating anything.
    assert jax.tree.structure(abstract_state) == jax.tree.structure(eager_state)
    for a, e in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(eager_state), strict=True):
        assert (a.shape, a.dtype) == (e.shape, e.dtype)

    out_shardings = _state_shardings_from_params(abstract_state, shardings, mesh)
    state = jax.jit(tx.init, out_shardings=out_shardings)(params)
    assert_state_sharded_like_params(state, shardings)
    assert_trees_close(state, eager_state, rtol=0.0)
    # ... and the state it gives drives the sharded step like the eager one.
    grads = _grad_sequence(params, 1)[0]
    step = jax.jit(_step_fn(tx))
    assert_trees_close(step(params, state, grads), step(params, eager_state, grads), rtol=0.0)


def test_zero1_state_sharded_further_than_the_params(mesh):
    """ZeRO-1: the replicated bias's moments are sharded across devices; the step keeps that layout."""
    tx = gc.adamw(0.01, weight_decay=0.1)
    params, shardings = _sharded_params(mesh)
    zero_shardings = {**shardings, "b": NamedSharding(mesh, P("x"))}  # b: (8,) split over 8 devices
    abstract_state = jax.eval_shape(tx.init, _abstract(params))
    state_shardings = _state_shardings_from_params(abstract_state, zero_shardings, mesh)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    assert_state_sharded_like_params(state, zero_shardings)
    assert state[0].mu["b"].addressable_shards[0].data.shape == (1,)

    step = jax.jit(_step_fn(tx), out_shardings=(shardings, state_shardings))
    plain_step = jax.jit(_step_fn(tx))
    plain_params, plain_state = jax.device_get(params), tx.init(jax.device_get(params))
    for grads in _grad_sequence(params, 5):
        params, state = step(params, state, grads)
        plain_params, plain_state = plain_step(plain_params, plain_state, jax.device_get(grads))
    assert params["b"].sharding.is_equivalent_to(shardings["b"], 1)
    assert_state_sharded_like_params(state, zero_shardings)
    assert_trees_close(params, plain_params, rtol=1e-7)
    assert_trees_close(state, plain_state, rtol=1e-7)


@pytest.fixture
def explicit_mesh() -> Iterator[Mesh]:
    mesh = jax.make_mesh((N_DEVICES,), ("x",), axis_types=(AxisType.Explicit,))
    with jax.sharding.set_mesh(mesh):
        yield mesh


def _spec(sharding: NamedSharding, ndim: int) -> tuple:
    """The partition spec padded with None to `ndim` entries, so P() and P(None,) compare equal."""
    return tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))


def test_eval_shape_init_carries_param_shardings_with_explicit_axes(explicit_mesh):
    """With explicit mesh axes the sharding is part of the abstract value: init must keep it.

    optax 0.2.8 does (`jax.eval_shape(optax.adam(1e-3).init, abstract)` gives `mu['w']` with
    P('x', None)); gradchain's `tree.full_like` builds buffers with `jnp.full(x.shape, ...)`, which
    drops the sharding of a traced leaf, so abstract and jitted init give replicated state: all of it
    on every device, the opposite of ZeRO.
    """
    tx = gc.adam(1e-3)
    params, shardings = _sharded_params(explicit_mesh)
    abstract_state = jax.eval_shape(tx.init, _abstract(params))
    for field, path, leaf in state_buffers(abstract_state):
        expected = _spec(shardings[path], leaf.ndim)
        actual = None if leaf.sharding is None else _spec(leaf.sharding, leaf.ndim)
        assert actual == expected, f"abstract state {field} {path}: spec {actual}, expected {expected}"
    state = jax.jit(tx.init)(params)
    assert_state_sharded_like_params(state, shardings)
