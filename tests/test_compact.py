"""Compact chain states (`gradchain/_compact.py`): one scalar block per chain, the same numbers.

Structural facts only (leaf counts, dtypes, placement, no recompilation); the timing is
`benchmarks/small_step.py`.
"""

from __future__ import annotations

import copy
import itertools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

WIDTHS = (64, 64, 64, 10)


def _mlp_params():
    """The benchmark's 3-layer MLP: 6 leaves."""
    rng = np.random.default_rng(0)
    return {
        f"layer{i}": {
            "w": jnp.asarray(rng.standard_normal((a, b)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(b), jnp.float32),
        }
        for i, (a, b) in enumerate(itertools.pairwise(WIDTHS))
    }


def _weights(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "w", params)


def _labels(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: "w" if path[-1].key == "w" else "b", params)


def _grads(params, k):
    return jax.tree.map(lambda p: jnp.cos(p * (k + 1)) * 0.1, params)


# ------------------------------------------------------------------------------------------------
# No more state leaves than optax


def test_state_leaf_counts_on_a_six_leaf_mlp_match_optax():
    optax = pytest.importorskip("optax")
    params = _mlp_params()
    cases = {
        "adamw": (gc.adamw(1e-3, weight_decay=1e-4), optax.adamw(1e-3, weight_decay=1e-4)),
        "clip+adamw(mask)": (
            gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3, weight_decay=1e-4, mask=_weights)),
            optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-4, mask=_weights)),
        ),
        "partition": (
            gc.partition({"w": gc.adam(1e-3), "b": gc.adam(3e-3)}, _labels),
            optax.multi_transform({"w": optax.adam(1e-3), "b": optax.adam(3e-3)}, _labels),
        ),
    }
    counts = {
        name: (len(jax.tree.leaves(ours.init(params))), len(jax.tree.leaves(theirs.init(params))))
        for name, (ours, theirs) in cases.items()
    }
    # mu and nu per param leaf, plus one scalar block (a partition shares one for its groups; optax:
    # one count per Adam).
    assert counts == {"adamw": (13, 13), "clip+adamw(mask)": (13, 13), "partition": (13, 14)}


def test_nested_chains_share_one_scalar_block():
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.chain(gc.adamw(1e-3), gc.clip(2.0)))
    state = tx.init(params)
    leaves = jax.tree.leaves(state)
    assert sum(x is state.scalar_block for x in leaves) == 1 and state.scalar_block.ndim == 1
    # every scalar of the five ingredients: the clip's norm and hyperparams, counts, Adam's, ...
    assert sum(x.ndim == 0 for x in jax.tree.leaves(state)) == 0
    assert isinstance(state[1], gc.ChainState) and isinstance(state[1][0], gc.ChainState)


# ------------------------------------------------------------------------------------------------
# The optax-shaped access


def test_state_reads_like_a_tuple_of_the_ingredients_states():
    params = {"w": jnp.ones(3)}
    state = gc.adamw(1e-3, weight_decay=0.1).init(params)
    adam, decay, lr = state  # unpacking
    assert len(state) == 3 and isinstance(adam, gc.ScaleByAdamState)
    assert adam.mu["w"].shape == (3,) and adam.count.dtype == jnp.int32 and int(adam.count) == 0
    assert float(decay.hyperparams["weight_decay"]) == pytest.approx(0.1)
    assert state[-1] is lr and state[:2] == (adam, decay)
    assert "ScaleByAdamState" in repr(state)


def test_named_chain_state_is_a_mapping_in_the_given_order():
    tx = gc.named_chain(("scale", gc.scale_by_adam()), ("clip", gc.clip(1.0)), ("lr", gc.scale(-0.1)))
    state = tx.init({"w": jnp.ones(2)})
    assert isinstance(state, gc.NamedChainState) and list(state) == ["scale", "clip", "lr"]
    assert state["scale"].nu["w"].shape == (2,)
    paths = [gc.tree.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths == ["scale/mu/w", "scale/nu/w", "scalars"]
    with pytest.raises(KeyError):
        state["adam"]


def test_a_named_chain_link_called_scalars_keeps_its_path():
    tx = gc.named_chain(("scalars", gc.scale_by_adam()), ("lr", gc.scale(-0.1)))
    state = tx.init({"w": jnp.ones(2)})
    paths = [gc.tree.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths == ["scalars/mu/w", "scalars/nu/w", "scalars_"]


def test_leaf_paths_of_a_chain_state_are_those_of_the_ingredients():
    state = gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-3)).init({"w": jnp.ones(2)})
    paths = [gc.tree.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths == ["1/0/mu/w", "1/0/nu/w", "scalars"]


def test_find_nodes_and_tree_get_see_the_ingredients_states():
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.sgd(0.1, momentum=0.9))
    params = {"w": jnp.zeros(2)}
    _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    assert float(gc.tree.tree_get(state, "global_norm")) == 5.0
    [trace] = gc.tree.find_nodes(state, gc.TraceState)
    assert trace.trace["w"].shape == (2,)


# ------------------------------------------------------------------------------------------------
# The same numbers, in jit and out


def _by_hand(transforms, params, grads_list):
    """The chain's arithmetic with each ingredient's own state: the reference for the compact state."""
    states = [tx.init(params) for tx in transforms]
    out = []
    for g in grads_list:
        u = g
        for i, tx in enumerate(transforms):
            u, states[i] = tx.update(u, states[i], params)
        out.append(u)
    return out, states


def test_a_chain_gives_the_numbers_of_its_ingredients_run_by_hand_bit_for_bit():
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}
    transforms = [gc.clip_by_global_norm(0.5), gc.scale_by_adam(b1=0.8), gc.add_decayed_weights(0.1), gc.scale(-0.01)]
    grads_list = [_grads(params, k) for k in range(6)]
    expected, states = _by_hand(transforms, params, grads_list)
    tx = gc.chain(*transforms, pack=False)
    eager, jitted = tx.init(params), tx.init(params)
    step = jax.jit(tx.update)
    for g, want in zip(grads_list, expected, strict=True):
        u, eager = tx.update(g, eager, params)  # op for op what the ingredients do alone
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
        u, jitted = step(g, jitted, params)  # XLA may fuse differently: to rounding
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(b))))
    assert int(eager[1].count) == int(jitted[1].count) == int(states[1].count) == 6
    np.testing.assert_array_equal(eager[0].global_norm, states[0].global_norm)


def test_no_recompilation_across_steps_and_after_set_hyperparams():
    params = _mlp_params()
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3, weight_decay=1e-4, mask=_weights))
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    state = tx.init(params)
    for k in range(3):
        params, state = step(params, state, _grads(params, k))
    state = gc.set_hyperparams(state, learning_rate=3e-4, max_norm=2.0)
    params, state = step(params, state, _grads(params, 3))
    assert len(traces) == 1
    hp = gc.hyperparams(state)
    assert float(hp["learning_rate"]) == pytest.approx(3e-4) and float(hp["max_norm"]) == 2.0
    assert int(state[1][0].count) == 4


def test_donated_state_is_reused_in_place():
    params = {"w": jnp.ones((4, 4))}
    tx = gc.adamw(1e-3)
    state = tx.init(params)
    step = jax.jit(lambda s, g: tx.update(g, s, params)[1], donate_argnums=0)
    compiled = step.lower(state, params).compile()
    # every state buffer, the scalar block included, is aliased to an output
    assert compiled.as_text().count("must-alias") + compiled.as_text().count("may-alias") >= len(jax.tree.leaves(state))
    new = step(state, params)
    assert state.scalar_block.is_deleted() and int(new[0].count) == 1


def test_state_dtypes_survive_the_block(x64):
    params = {"w": jnp.ones(2, jnp.float64)}
    tx = gc.chain(gc.scale_by_adam(), gc.scale_by_learning_rate(1e-3))
    state = tx.init(params)
    # float64 hyperparameters make a float64 block: b1, b2, eps, eps_root, the rate, two counts in 2 pieces
    assert state.scalar_block.dtype == jnp.float64 and state.scalar_block.shape == (5 + 2 * 2,)
    assert state[0].hyperparams["b1"].dtype == jnp.float64 and float(state[0].hyperparams["b1"]) == 0.9
    _, state = jax.jit(tx.update)(params, state, params)
    assert state[0].count.dtype == jnp.int32 and int(state[0].count) == 1


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_every_scalar_dtype_comes_back_exactly(jit):
    values = (
        jnp.int32(-5),
        jnp.int32(2**31 - 1),
        jnp.uint32(2**32 - 1),
        jnp.int8(-3),
        jnp.bool_(True),
        jnp.bfloat16(1.5),
        jnp.float16(-0.1),
        jnp.float32(jnp.inf),
        jnp.float32(1e-38),
    )
    state = gc.ChainState([values])
    rebuilt = jax.jit(lambda s: gc.ChainState([tuple(s[0])]))(state) if jit else jax.tree.map(lambda x: x, state)
    assert state.scalar_block.dtype == jnp.float32 and state.scalar_block.shape == (12,)
    for got, want in zip(rebuilt[0], values, strict=True):
        assert got.dtype == want.dtype and got.shape == ()
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_meta_gradient_flows_through_the_learning_rate_in_the_block():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 0.25])}
    tx = gc.sgd(0.1, momentum=0.9)

    def loss_after_one_step(lr):
        state = gc.set_hyperparams(tx.init(params), learning_rate=lr)
        updates, _ = tx.update(grads, state, params)
        return jnp.sum(gc.apply_updates(params, updates)["w"] ** 2)

    # d/d lr of sum((w - lr g)^2) = -2 sum((w - lr g) g)
    expected = -2 * jnp.sum((params["w"] - 0.1 * grads["w"]) * grads["w"])
    np.testing.assert_allclose(jax.grad(loss_after_one_step)(0.1), expected, rtol=1e-6)


def test_complex_scalars_stay_leaves_and_weakly_typed_ones_come_back_strong():
    def custom():
        def init(params):
            return (jnp.zeros((), jnp.complex64), jnp.asarray(1.0), jnp.zeros((), jnp.int32), {"x": jnp.ones(2)})

        def update(updates, state, params=None):
            return updates, state

        return gc.GradientTransformation(init, update)

    state = gc.chain(custom()).init({"w": jnp.ones(2)})
    leaves = jax.tree.leaves(state)
    assert [str(x.dtype) for x in leaves if x.ndim == 0] == ["complex64"]
    assert state.scalar_block.shape == (3,)  # the float, the int32 in two pieces
    rebuilt = jax.tree.map(lambda x: x, state)[0]
    assert rebuilt[1].dtype == jnp.float32 and not rebuilt[1].weak_type


# ------------------------------------------------------------------------------------------------
# Beyond jit: copies, pickles, eval_shape, tree maps, scan, placement


def test_pickle_deepcopy_and_eval_shape_round_trip():
    params = {"w": jnp.ones(3)}
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-2))
    _, state = tx.update(params, tx.init(params), params)
    for back in (pickle.loads(pickle.dumps(state)), copy.deepcopy(state)):
        assert isinstance(back, gc.ChainState)
        assert jax.tree.structure(back) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(a, b)
    abstract = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    assert abstract[1][0].count.dtype == jnp.int32 and abstract[1][0].count.shape == ()


def test_tree_maps_and_scan_treat_the_block_as_one_leaf():
    params = {"w": jnp.ones(3)}
    tx = gc.adam(1e-2)
    s0 = tx.init(params)
    _, s1 = tx.update(params, s0, params)
    picked = jax.tree.map(lambda a, b: jnp.where(False, a, b), s1, s0)  # as apply_if_finite does
    assert int(picked[0].count) == 0

    def body(state, _):
        _, state = tx.update(params, state, params)
        return state, None

    final, _ = jax.lax.scan(body, s0, None, length=5)
    assert int(final[0].count) == 5


def test_vmapped_init_and_update():
    params = {"w": jnp.ones((4, 3))}
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-2))
    states = jax.vmap(tx.init)(params)
    _, states = jax.vmap(tx.update)(params, states, params)
    assert states.scalar_block.shape[0] == 4 and states[1][0].count.shape == (4,)
    assert (states[1][0].count == 1).all()


def test_the_block_is_placed_like_the_params():
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several devices (the suite simulates 8 CPU devices)")
    mesh = jax.sharding.Mesh(np.array(devices[:2]), ("x",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    params = {"w": jax.device_put(jnp.ones((4, 2)), spec)}
    tx = gc.adamw(1e-3)
    state = tx.init(params)
    block = state.scalar_block
    assert block.sharding.is_fully_replicated and block.sharding.device_set == set(devices[:2])
    _, state = jax.jit(tx.update)(params, state, params)
    assert state.scalar_block.sharding.is_fully_replicated
    assert state[0].mu["w"].sharding.is_equivalent_to(spec, 2)
