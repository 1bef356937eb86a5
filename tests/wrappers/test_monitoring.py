"""monitored / metrics: the norms of each step, recorded in the state, read back as a flat dict.

The recorded norms are checked against float64 numpy norms of the trees that went in and came out
of the step, over 100 steps; the wrapped optimizer's updates and state must be bit for bit those
of the unwrapped one; an optimizer that is not wrapped must compute nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import INT32_MAX, TREE_SCALES, assert_trees_equal, grad_sequence, param_tree

import gradchain as gc
from gradchain import MonitorState, metrics, monitored
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain.interop import to_optax

PyTree = Any
N_STEPS = 100
RTOL = 1e-6  # the norms are float32 reductions of float32 trees
SCHEDULE = gc.schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 10, N_STEPS)


def np_norm(tree: PyTree) -> float:
    """Global L2 norm in float64 numpy (None leaves skipped)."""
    return float(np.sqrt(sum(np.sum(np.abs(np.asarray(x, np.float64)) ** 2) for x in jax.tree.leaves(tree))))


def _run(tx: gc.GradientTransformation, params: PyTree, grads: list[PyTree], *, jit: bool = True):
    """Run `tx`, applying the updates; per step: (params before, grads, updates, state after)."""
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    steps = []
    for g in grads:
        updates, state = update(g, state, params)
        steps.append((params, g, updates, state))
        params = gc.apply_updates(params, updates)
    return steps


OPTIMIZERS: dict[str, Callable[[], gc.GradientTransformation]] = {
    "adamw_schedule": lambda: gc.adamw(SCHEDULE, weight_decay=0.1),
    "sgd_momentum": lambda: gc.sgd(0.05, momentum=0.9),
    "clip_adam": lambda: gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-3)),
    "lion_pack_true": lambda: gc.lion(1e-3, pack=True),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_recorded_norms_match_numpy_and_the_optimizer_is_unchanged(name):
    params = jax.tree.map(jnp.asarray, param_tree())
    grads = [jax.tree.map(jnp.asarray, g) for g in grad_sequence(n_steps=N_STEPS, leaf_scales=TREE_SCALES)]
    watched = _run(monitored(OPTIMIZERS[name]()), params, grads)
    plain = _run(OPTIMIZERS[name](), params, grads)
    for t, ((p, g, u, state), (p0, _, u0, state0)) in enumerate(zip(watched, plain, strict=True)):
        assert_trees_equal(p, p0)  # same trajectory: the wrapper changes no number
        assert_trees_equal(u, u0)
        assert_trees_equal(state.inner_state, state0)
        m = jax.device_get(metrics(state))
        expected = {"grad_norm": np_norm(g), "update_norm": np_norm(u), "param_norm": np_norm(p)}
        expected["update_param_ratio"] = expected["update_norm"] / expected["param_norm"]
        for key, value in expected.items():
            assert m[key].dtype == np.float32, key
            np.testing.assert_allclose(m[key], value, rtol=RTOL, err_msg=f"step {t}: {key}")
        assert m["count"] == t + 1 and m["count"].dtype == np.int32
        # The hyperparameters in effect at that step, through the core's `hyperparams`.
        hp = gc.hyperparams(state0)
        assert set(hp) <= set(m)
        for key in hp:
            assert m[key] == hp[key], key
    if name == "adamw_schedule":
        np.testing.assert_allclose(m["learning_rate"], SCHEDULE(N_STEPS - 1), rtol=1e-6)


def test_norms_are_computed_in_float32_for_low_precision_trees():
    # float16 squares overflow above 256: a float16 norm of these gradients would be inf.
    params = {"w": jnp.full((4, 4), 300.0, jnp.float16), "b": jnp.full(3, -2.0, jnp.bfloat16)}
    grads = {"w": jnp.full((4, 4), 1000.0, jnp.float16), "b": jnp.full(3, 0.5, jnp.bfloat16)}
    tx = monitored(gc.sgd(1e-3))
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    m = metrics(state)
    assert m["grad_norm"].dtype == jnp.float32
    np.testing.assert_allclose(m["grad_norm"], np.sqrt(16 * 1000.0**2 + 3 * 0.25), rtol=RTOL)
    np.testing.assert_allclose(m["param_norm"], np.sqrt(16 * 300.0**2 + 3 * 4.0), rtol=RTOL)
    # The updates are float16/bfloat16 (1e-3 * 1000 = 1 exactly; 5e-4 rounded to bfloat16).
    u_b = float(jnp.asarray(-1e-3, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32) * 0.5)
    np.testing.assert_allclose(m["update_norm"], np.sqrt(16 * 1.0 + 3 * u_b**2), rtol=1e-3)


def test_per_key_norms_match_numpy_per_top_level_key():
    shapes = {"encoder": {"w": (4, 3), "b": (3,)}, "decoder": [(3, 2), (2,)], "scale": ()}
    params = jax.tree.map(jnp.asarray, param_tree(shapes))
    grads = [jax.tree.map(jnp.asarray, g) for g in grad_sequence(shapes, n_steps=20)]
    steps = _run(monitored(gc.adam(1e-2), per_key=True), params, grads)
    for p, g, u, state in steps:
        m = metrics(state)
        for key in ("encoder", "decoder", "scale"):
            for norm, tree in (("grad_norm", g), ("update_norm", u), ("param_norm", p)):
                np.testing.assert_allclose(m[f"{norm}/{key}"], np_norm(tree[key]), rtol=RTOL, err_msg=f"{norm}/{key}")
        per_key_sq = sum(float(m[f"grad_norm/{k}"]) ** 2 for k in ("encoder", "decoder", "scale"))
        np.testing.assert_allclose(np.sqrt(per_key_sq), m["grad_norm"], rtol=RTOL)
    assert set(state.per_key) == {f"{n}/{k}" for n in ("grad_norm", "update_norm", "param_norm") for k in shapes}


@pytest.mark.parametrize("per_key", [False, True])
def test_packed_params_give_the_norms_of_the_tree(per_key):
    shapes = {f"b{i}": (3,) for i in range(6)} | {"w": (4, 5)}
    params = jax.tree.map(jnp.asarray, param_tree(shapes))
    grads = [jax.tree.map(jnp.asarray, g) for g in grad_sequence(shapes, n_steps=10)]
    packed = gc.pack(params)
    packed_grads = [gc.pack(g, packed.layout) for g in grads]
    tree_steps = _run(monitored(gc.adam(1e-2), per_key=per_key), params, grads)
    packed_steps = _run(monitored(gc.adam(1e-2), per_key=per_key), packed, packed_grads)
    for (_, _, _, s_tree), (_, _, u_packed, s_packed) in zip(tree_steps, packed_steps, strict=True):
        assert isinstance(u_packed, gc.Packed)
        m_tree, m_packed = metrics(s_tree), metrics(s_packed)
        assert list(m_tree) == list(m_packed)
        for key in m_tree:  # the same sums of squares, summed in another order
            np.testing.assert_allclose(m_packed[key], m_tree[key], rtol=RTOL, err_msg=key)


def test_none_leaves_are_skipped():
    params = {"w": jnp.array([3.0, 4.0]), "frozen": None, "b": jnp.array([12.0])}
    grads = {"w": jnp.array([0.0, 2.0]), "frozen": None, "b": jnp.array([0.0])}
    tx = monitored(gc.sgd(0.5), per_key=True)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    assert updates["frozen"] is None
    m = metrics(state)
    assert m["grad_norm"] == 2.0 and m["update_norm"] == 1.0 and m["param_norm"] == 13.0
    assert "param_norm/frozen" not in m and m["param_norm/b"] == 12.0


def test_jitted_step_traces_once_and_init_works_abstractly():
    params = jax.device_put(jax.tree.map(jnp.asarray, param_tree()), jax.devices()[0])
    tx = monitored(gc.adamw(SCHEDULE), per_key=True)
    traces = []

    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state, metrics(state)

    step = jax.jit(step)
    state = tx.init(params)
    abstract = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(abstract)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(state)
    ]
    # The recorded scalars sit where the (committed) params are, so step 2 has step 1's signature.
    assert all(x.committed for x in jax.tree.leaves(state))
    for g in grad_sequence(n_steps=5):
        params, state, logged = step(params, state, jax.device_put(g, jax.devices()[0]))
    assert len(traces) == 1
    assert logged["count"] == 5


def test_zero_cost_when_not_used():
    """A plain optimizer's step computes no norm; the monitored one adds only the three norms."""
    params = jax.tree.map(jnp.asarray, param_tree())
    tx = gc.sgd(0.1, momentum=0.9)

    def primitives(t: gc.GradientTransformation) -> list[str]:
        jaxpr = jax.make_jaxpr(t.update)(params, t.init(params), params)
        return [str(e.primitive) for e in jaxpr.eqns]

    plain, watched = primitives(tx), primitives(monitored(tx))
    assert "sqrt" not in plain and "reduce_sum" not in plain
    assert watched.count("sqrt") == 3  # grad, update and param norms
    extra = list(watched)
    for p in plain:  # every op of the plain step is still there, once
        extra.remove(p)
    assert set(extra) <= {
        "sqrt",
        "reduce_sum",
        "mul",
        "add",
        "convert_element_type",
        "div",
        "eq",
        "select_n",
        "lt",
        "jit",
        "pjit",
    }
    assert "sqrt" not in primitives(tx)  # building the wrapper did not change the optimizer
    with pytest.raises(ValueError, match="state"):
        metrics(tx.init(params))


def test_zero_updates_give_a_zero_ratio_and_zero_params_an_infinite_one():
    tx = monitored(gc.sgd(1.0))
    _, state = tx.update({"w": jnp.zeros(2)}, tx.init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})
    assert metrics(state)["update_param_ratio"] == 0.0
    _, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})
    assert metrics(state)["update_param_ratio"] == np.inf
    _, state = tx.update({"w": jnp.zeros(2)}, tx.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})
    assert metrics(state)["update_param_ratio"] == 0.0


def test_count_saturates_at_int32_max():
    tx = monitored(gc.sgd(0.1))
    params = {"w": jnp.ones(2)}
    state = tx.init(params)._replace(count=jnp.asarray(INT32_MAX - 1, jnp.int32))
    for _ in range(2):
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
    assert int(metrics(state)["count"]) == INT32_MAX


class _ValueState(NamedTuple):
    hyperparams: Hyperparams


def _times_value() -> gc.GradientTransformation:
    """Multiplies the updates by the extra argument `value`; has a hyperparameter named `count`."""
    spec = HyperparamSpec("times_value", count=(7.0, "any"))

    def update(updates, state, params=None, *, value, **extra_args):
        return jax.tree.map(lambda u: u * value, updates), state

    return gc.GradientTransformation(lambda params: _ValueState(spec.init()), update)


def test_extra_args_reach_the_inner_transformation_and_clashing_names_are_qualified():
    tx = monitored(_times_value())
    params = {"w": jnp.ones(2)}
    updates, state = tx.update({"w": jnp.ones(2)}, tx.init(params), params, value=3.0)
    assert (updates["w"] == 3.0).all()
    m = metrics(state)
    assert m["count"] == 1 and m["hyperparams/count"] == 7.0


def test_metrics_finds_monitors_at_any_depth_and_prefixes_several():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 2.0)}
    # Inside optax.chain (via to_optax), inside a flax TrainState.
    from flax.training import train_state

    tx = optax.chain(optax.clip_by_global_norm(1.0), to_optax(monitored(gc.adam(1e-3))))
    ts = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    ts = ts.apply_gradients(grads=grads)
    m = metrics(ts.opt_state)
    np.testing.assert_allclose(m["grad_norm"], 1.0, rtol=RTOL)  # clipped before the monitor
    assert jnp.isclose(m["learning_rate"], 1e-3)
    # Two monitors, one nested in the other: keys prefixed by the state path.
    tx = monitored(gc.chain(gc.clip_by_global_norm(1.0), monitored(gc.sgd(0.1))))
    _, state = tx.update(grads, tx.init(params), params)
    m = metrics(state)
    np.testing.assert_allclose(m["grad_norm"], np.sqrt(12.0), rtol=RTOL)
    np.testing.assert_allclose(m["inner_state/1/grad_norm"], 1.0, rtol=RTOL)
    np.testing.assert_allclose(m["inner_state/1/update_norm"], 0.1, rtol=RTOL)
    assert m["learning_rate"] == np.float32(0.1) and m["inner_state/1/learning_rate"] == np.float32(0.1)
    # Jittable.
    assert jax.jit(metrics)(state).keys() == m.keys()


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="inner"):
        monitored(lambda g: g)
    with pytest.raises(TypeError, match="per_key"):
        monitored(gc.sgd(0.1), per_key="yes")
    tx = monitored(gc.sgd(0.1))
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(TypeError, match="params"):
        tx.update({"w": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match="state"):
        metrics({"nothing": jnp.ones(2)})
    tx = monitored(gc.sgd(0.1), per_key=True)
    state = tx.init({"a": jnp.ones(2), "b": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"top-level keys.*\['a', 'c'\].*\['a', 'b'\]"):
        tx.update({"a": jnp.ones(2), "c": jnp.ones(2)}, state, {"a": jnp.ones(2), "c": jnp.ones(2)})


def test_state_is_a_named_tuple_with_the_inner_state():
    state = monitored(gc.adam(1e-3)).init({"w": jnp.ones(2)})
    assert isinstance(state, MonitorState)
    assert state._fields[-1] == "inner_state" and state.per_key == {}
    assert gc.hyperparams(state)["learning_rate"] == np.float32(1e-3)


def test_sharded_params_keep_their_sharding_and_the_step_compiles_once():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((len(jax.devices()),), ("x",))
    rows = 2 * len(jax.devices())
    params = {
        "w": jax.device_put(jnp.arange(rows * 4.0).reshape(rows, 4) / 10, NamedSharding(mesh, P("x"))),
        "b": jax.device_put(jnp.ones(4), NamedSharding(mesh, P())),
    }
    tx = monitored(gc.adam(1e-3), per_key=True)
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(1)
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s

    state = tx.init(params)
    for _ in range(3):
        before = jax.device_get(params)
        params, state = step(params, state, params)
    assert len(traces) == 1
    assert params["w"].sharding.is_equivalent_to(NamedSharding(mesh, P("x")), 2)
    np.testing.assert_allclose(metrics(state)["param_norm/w"], np_norm(before["w"]), rtol=RTOL)
