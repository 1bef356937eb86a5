"""Packed execution: the same numbers as the unpacked path, the same state semantics, fewer kernels."""

from __future__ import annotations

import functools
import pickle
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import assert_trees_close, assert_trees_equal

import gradchain as gc

N_STEPS = 30


def many_leaves(seed: int = 0) -> dict:
    """40 small leaves of three dtypes and several shapes, one large leaf, a scalar and a None."""
    rng = np.random.default_rng(seed)
    shapes = [(3,), (4, 5), (7,), (2, 3, 2), (1,), ()]
    tree = {}
    for i in range(40):
        dtype = [np.float32, jnp.bfloat16, np.float16][i % 3] if i % 4 == 0 else np.float32
        tree[f"layer{i:02d}"] = {
            "w": jnp.asarray(rng.normal(size=shapes[i % len(shapes)]), dtype),
            "b": jnp.asarray(rng.normal(size=(i % 5 + 1,)), np.float32),
        }
    tree["big"] = jnp.asarray(rng.normal(size=(70_000,)), np.float32)
    tree["frozen"] = None
    return tree


def grad_trees(params: dict, n: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1e-3, 10.0, n)
    return [
        jax.tree.map(lambda p, s=s: jnp.asarray(s * rng.normal(size=p.shape), p.dtype), params)
        for s in rng.permutation(scales)
    ]


PARAMS = many_leaves()
GRADS = grad_trees(PARAMS, N_STEPS)


def _decay_matrices(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


OPTIMIZERS = {
    "sgd": lambda pack: gc.sgd(0.1, pack=pack),
    "sgd_momentum": lambda pack: gc.sgd(0.05, momentum=0.9, weight_decay=1e-3, pack=pack),
    "sgd_nesterov_dampening": lambda pack: gc.sgd(0.05, 0.9, nesterov=True, pack=pack),
    "adagrad": lambda pack: gc.adagrad(0.05, weight_decay=1e-2, pack=pack),
    "rmsprop_centered_momentum": lambda pack: gc.rmsprop(1e-3, centered=True, momentum=0.9, pack=pack),
    "adam": lambda pack: gc.adam(1e-3, pack=pack),
    "adam_l2_nesterov": lambda pack: gc.adam(1e-3, weight_decay=1e-2, nesterov=True, pack=pack),
    "adamw": lambda pack: gc.adamw(1e-3, weight_decay=0.1, pack=pack),
    "adamw_masked": lambda pack: gc.adamw(1e-3, weight_decay=0.1, mask=_decay_matrices, pack=pack),
    "adamw_schedule_f32_state": lambda pack: gc.adamw(
        gc.schedules.warmup_cosine_decay_schedule(0.0, 1e-3, 5, N_STEPS),
        mu_dtype=jnp.float32,
        nu_dtype=jnp.float32,
        pack=pack,
    ),
    "nadam": lambda pack: gc.nadam(1e-3, pack=pack),
    "nadamw_torch": lambda pack: gc.nadamw(1e-3, momentum_decay=4e-3, pack=pack),
    "amsgrad": lambda pack: gc.amsgrad(1e-3, pack=pack),
    "adamax": lambda pack: gc.adamax(1e-3, pack=pack),
    "adamaxw": lambda pack: gc.adamaxw(1e-3, pack=pack),
    "chain_clip_trace": lambda pack: gc.chain(
        gc.clip(0.5), gc.trace(0.9), gc.add_decayed_weights(1e-2), gc.scale(-0.01), pack=pack
    ),
    "mixed_chain_block_rms": lambda pack: gc.chain(
        gc.scale_by_adam(), gc.clip_by_block_rms(1.0), gc.trace(0.5), gc.scale_by_learning_rate(1e-2), pack=pack
    ),
}


def _step(tx):
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state, updates

    return step


def _eager_step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state, updates

    return step


def trajectory(tx, params=PARAMS, grads=GRADS, *, jit=True):
    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)
    step = _step(tx) if jit else _eager_step(tx)
    out = []
    for g in grads:
        params, state, updates = step(params, state, g)
        out.append(updates)
    return params, state, out


@functools.cache
def runs(name: str, pack: bool | None, jit: bool = True):
    grads = GRADS if jit else GRADS[:4]
    return trajectory(OPTIMIZERS[name](pack), grads=grads, jit=jit)


# Op by op, the packed arithmetic is the unpacked arithmetic on other array boundaries. For these
# rules (products and sums) the bits are equal. The Adam family divides by a square root, and XLA's
# CPU kernels for a long buffer and for a 5-element leaf can round that one unit in the last place
# apart (vector body versus scalar remainder); those are compared to 1e-6 below.
BIT_EXACT = [
    "sgd",
    "sgd_momentum",
    "sgd_nesterov_dampening",
    "adagrad",
    "rmsprop_centered_momentum",
    "chain_clip_trace",
]


@pytest.mark.parametrize("name", BIT_EXACT)
def test_packed_equals_unpacked_bit_for_bit(name):
    params, state, updates = runs(name, True, jit=False)
    params_ref, state_ref, updates_ref = runs(name, False, jit=False)
    for u, u_ref in zip(updates, updates_ref, strict=True):
        assert_trees_equal(u, u_ref)
    assert_trees_equal(params, params_ref)
    # The transformations' states: a 0-d param's moments sit in the chain's scalar block unpacked,
    # in a buffer packed, so the chain states' own pytrees differ there.
    assert_trees_equal(tuple(gc.unpack(state)), tuple(state_ref))
    if name != "sgd":  # a chain without per-leaf state has nothing to pack
        assert _packed_nodes(state)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_packed_equals_unpacked_under_jit(name):
    params, state, _ = runs(name, True)
    params_ref, state_ref, _ = runs(name, False)
    assert_trees_close(params, params_ref, rtol=1e-6)
    assert_trees_close(tuple(gc.unpack(state)), tuple(state_ref), rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw_masked", "sgd_momentum"])
def test_automatic_packing_equals_unpacked(name):
    params, state, _ = runs(name, None)
    params_ref, state_ref, _ = runs(name, False)
    assert_trees_close(params, params_ref, rtol=1e-6)
    assert_trees_close(tuple(gc.unpack(state)), tuple(state_ref), rtol=1e-6)


def test_global_norm_clipping_packed_matches_to_rounding():
    def make(pack):
        return gc.chain(gc.clip_by_global_norm(1.0), gc.scale_by_adam(), gc.scale_by_learning_rate(1e-3), pack=pack)

    params, state, _ = trajectory(make(True))
    params_ref, state_ref, _ = trajectory(make(False))
    assert_trees_close(params, params_ref, rtol=1e-6)
    np.testing.assert_allclose(state[0].global_norm, state_ref[0].global_norm, rtol=1e-6)


def _index_of(tree, leaf) -> int:
    return next(i for i, x in enumerate(jax.tree.leaves(tree)) if x is leaf)


def _packed_nodes(state):
    return [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, gc.Packed)) if isinstance(x, gc.Packed)]


def test_automatic_layout_packs_many_small_leaves_and_keeps_large_ones():
    state = gc.adam(1e-3).init(PARAMS)
    mu = state[0].mu
    assert isinstance(mu, gc.Packed)
    layout = mu.layout
    big = _index_of(PARAMS, PARAMS["big"])
    standalone = [members[0] for members, packed in zip(layout.buffers, layout.packed, strict=True) if not packed]
    assert big in standalone, "a leaf over 65,536 elements stays as it is"
    # float32 small leaves share one buffer; the few bfloat16/float16 leaves are too few to pack.
    packed_dtypes = [mu.buffers[j].dtype for j, p in enumerate(layout.packed) if p]
    assert packed_dtypes == [jnp.float32]
    assert gc.unpack(mu)["big"].shape == (70_000,)


def test_few_leaves_are_not_packed_automatically():
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    assert not _packed_nodes(gc.adamw(1e-3).init(params))
    assert _packed_nodes(gc.adamw(1e-3, pack=True).init(params))
    assert not _packed_nodes(gc.adamw(1e-3, pack=False).init(many_leaves()))


def test_packing_never_promotes_dtypes():
    state = gc.adam(1e-3, pack=True).init(PARAMS)
    for buffer, members in zip(state[0].mu.buffers, state[0].mu.layout.buffers, strict=True):
        dtypes = {jax.tree.leaves(PARAMS)[i].dtype for i in members}
        assert dtypes == {buffer.dtype}


def test_masks_split_buffers_so_each_buffer_is_wholly_in_or_out():
    tx = gc.adamw(1e-3, weight_decay=0.1, mask=_decay_matrices, pack=True)
    state = tx.init(PARAMS)
    layout = state[0].mu.layout
    leaves = jax.tree.leaves(PARAMS)
    for members in layout.buffers:
        assert len({leaves[i].ndim > 1 for i in members}) == 1


def test_mask_over_a_packed_buffer_with_mixed_leaves():
    # A user-packed tree is laid out without knowing the mask: the rule then masks element-wise.
    params = {f"p{i}": jnp.full((2, 2) if i % 2 else (3,), 1.0) for i in range(6)}
    packed = gc.pack(params)
    tx = gc.add_decayed_weights(0.5, mask=_decay_matrices)
    updates, _ = tx.update(gc.pack(jax.tree.map(jnp.zeros_like, params)), tx.init(packed), packed)
    out = gc.unpack(updates)
    for i in range(6):
        expected = 0.5 if i % 2 else 0.0
        assert (out[f"p{i}"] == expected).all()


def test_packed_params_mode_equals_the_tree_mode():
    """Params kept packed: grads come out packed through `unpack`, and the step is flat."""
    params = {f"l{i}": {"w": jnp.full((3, 2), 0.1 * i), "b": jnp.zeros(2)} for i in range(10)}
    x = jnp.linspace(-1.0, 1.0, 3)

    def loss(p):
        return sum(jnp.sum(jnp.tanh(x @ layer["w"] + layer["b"]) ** 2) for layer in p.values())

    tx = gc.adamw(1e-2, weight_decay=0.1)
    tree_params, tree_state = params, tx.init(params)
    packed, packed_state = gc.pack(params), tx.init(gc.pack(params))
    for _ in range(20):
        g = jax.grad(loss)(tree_params)
        u, tree_state = tx.update(g, tree_state, tree_params)
        tree_params = gc.apply_updates(tree_params, u)

        pg = jax.grad(lambda p: loss(gc.unpack(p)))(packed)
        assert isinstance(pg, gc.Packed) and len(pg.buffers) == 1
        u, packed_state = tx.update(pg, packed_state, packed)
        packed = gc.apply_updates(packed, u)
    assert_trees_close(gc.unpack(packed), tree_params, rtol=1e-6)
    assert gc.hyperparams(packed_state) == gc.hyperparams(tree_state)


def test_hyperparameters_read_and_set_the_same_when_packed():
    tx = gc.adamw(1e-3, weight_decay=0.1, pack=True)
    state = tx.init(PARAMS)
    assert set(gc.hyperparams(state)) == set(gc.hyperparams(gc.adamw(1e-3, pack=False).init(PARAMS)))
    state = gc.set_hyperparams(state, learning_rate=1e-2)
    assert float(gc.hyperparams(state)["learning_rate"]) == pytest.approx(1e-2)


def test_no_recompilation_across_steps_and_hyperparameter_changes():
    tx = gc.adamw(gc.schedules.linear_schedule(1e-3, 0.0, 100), weight_decay=0.1, pack=True)
    traces = []

    def step(params, state, grads):
        traces.append(1)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    step = jax.jit(step)
    params, state = PARAMS, tx.init(PARAMS)
    for k, g in enumerate(GRADS[:5]):  # the schedule advances every step
        params, state = step(params, state, g)
        if k == 2:
            state = gc.set_hyperparams(state, weight_decay=0.5)
    assert len(traces) == 1
    assert step._cache_size() == 1


def test_params_and_state_are_donated_and_reused():
    tx = gc.adam(1e-3, pack=True)
    params = jax.tree.map(jnp.copy, PARAMS)
    state = tx.init(params)
    step = _step(tx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "donated buffers were not usable" would be an error
        params, state, _ = step(params, state, GRADS[0])
        buffers = [b.unsafe_buffer_pointer() for b in jax.tree.leaves(state[0].mu)]
        old_mu = state[0].mu
        params, state, _ = step(params, state, GRADS[1])
    assert all(b.is_deleted() for b in jax.tree.leaves(old_mu)), "the packed state was donated"
    assert [b.unsafe_buffer_pointer() for b in jax.tree.leaves(state[0].mu)] == buffers


def test_state_never_aliases_params():
    params = jax.tree.map(jnp.copy, PARAMS)
    state = gc.sgd(0.1, momentum=0.9, pack=True).init(params)
    param_ptrs = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(params)}
    state_ptrs = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(state) if x.size > 0}
    assert not param_ptrs & state_ptrs


def test_checkpoint_round_trip_resumes_bit_for_bit(tmp_path):
    tx = gc.adamw(1e-3, weight_decay=0.1, pack=True)
    params, state, _ = trajectory(tx, grads=GRADS[:10])
    leaves, treedef = jax.tree.flatten(state)
    with open(tmp_path / "state.pkl", "wb") as f:
        pickle.dump([np.asarray(x) for x in leaves], f)  # numpy keeps bfloat16 (ml_dtypes)
    with open(tmp_path / "state.pkl", "rb") as f:
        restored = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in pickle.load(f)])
    # Restoring into a freshly initialised state's structure works too.
    template = jax.tree.structure(tx.init(PARAMS))
    assert template == treedef
    step = _step(tx)
    a_params, a_state = jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state)
    b_params, b_state = jax.tree.map(jnp.copy, params), restored
    for g in GRADS[10:15]:
        a_params, a_state, _ = step(a_params, a_state, g)
        b_params, b_state, _ = step(b_params, b_state, g)
    assert_trees_equal(a_params, b_params)
    assert_trees_equal(a_state, b_state)


def test_abstract_init_gives_the_packed_shapes():
    tx = gc.adam(1e-3, pack=True)
    abstract = jax.eval_shape(tx.init, PARAMS)
    concrete = tx.init(PARAMS)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    assert [x.shape for x in jax.tree.leaves(abstract)] == [x.shape for x in jax.tree.leaves(concrete)]


def test_packed_step_traces_far_fewer_operations():
    def eqns(pack):
        tx = gc.adamw(1e-3, pack=pack)
        state = tx.init(PARAMS)

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return gc.apply_updates(params, updates), state

        return len(jax.make_jaxpr(step)(PARAMS, state, GRADS[0]).jaxpr.eqns)

    packed, unpacked = eqns(True), eqns(False)
    assert packed < unpacked / 2, (packed, unpacked)


def test_nested_chains_run_packed():
    inner = gc.chain(gc.scale_by_adam(), gc.add_decayed_weights(0.1))
    tx = gc.chain(gc.clip(1.0), inner, gc.scale_by_learning_rate(1e-3), pack=True)
    ref = gc.chain(gc.clip(1.0), inner, gc.scale_by_learning_rate(1e-3), pack=False)
    params, state, _ = trajectory(tx, grads=GRADS[:5])
    params_ref, _, _ = trajectory(ref, grads=GRADS[:5])
    assert_trees_equal(params, params_ref)
    assert isinstance(state[1][0].mu, gc.Packed)


def test_updates_that_do_not_match_the_packed_state_are_rejected_by_path():
    tx = gc.adam(1e-3, pack=True)
    state = tx.init(PARAMS)
    bad = dict(GRADS[0])
    bad["layer03"] = {"w": jnp.ones(99), "b": GRADS[0]["layer03"]["b"]}
    with pytest.raises(ValueError, match=r"layer03.*w"):
        tx.update(bad, state, PARAMS)
    missing = {k: v for k, v in GRADS[0].items() if k != "layer05"}
    with pytest.raises(ValueError, match="layer05"):
        tx.update(missing, state, PARAMS)


def test_integer_leaves_are_rejected_by_path_before_packing():
    params = dict(many_leaves())
    params["step"] = jnp.zeros(3, jnp.int32)
    with pytest.raises(TypeError, match=r"leaf step\b.*int32"):
        gc.adam(1e-3, pack=True).init(params)


def test_pack_checks_the_layout_and_the_pack_argument():
    layout = gc.pack({"a": jnp.ones(2), "b": jnp.ones(3)}).layout
    with pytest.raises(ValueError, match=r"leaf b\b"):
        gc.pack({"a": jnp.ones(2), "b": jnp.ones(4)}, layout)
    with pytest.raises(TypeError, match="pack"):
        gc.chain(gc.trace(0.9), pack="yes")


def test_unpack_of_a_state_lays_moments_out_like_params():
    state = gc.unpack(gc.adam(1e-3, pack=True).init(PARAMS))
    assert jax.tree.structure(state[0].mu) == jax.tree.structure(PARAMS)
    assert state[0].mu["layer07"]["w"].shape == PARAMS["layer07"]["w"].shape


def test_sharded_leaves_stay_standalone_and_keep_their_sharding():
    mesh = jax.make_mesh((8,), ("x",))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params = {f"b{i}": jax.device_put(jnp.full(5, float(i)), replicated) for i in range(40)}
    params["w"] = jax.device_put(jnp.ones((16, 4)), sharded)
    tx = gc.adam(1e-3, pack=True)
    state = tx.init(params)
    mu = state[0].mu
    assert isinstance(mu, gc.Packed)
    w_index = _index_of(params, params["w"])
    for buffer, members, packed in zip(mu.buffers, mu.layout.buffers, mu.layout.packed, strict=True):
        if members == (w_index,):
            assert not packed and buffer.sharding.is_equivalent_to(sharded, 2)
        else:
            assert buffer.sharding.is_fully_replicated
    grads = jax.tree.map(jnp.ones_like, params)
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    updates, state = step(params, state, grads)
    assert updates["w"].sharding.is_equivalent_to(sharded, 2)
    ref_updates, _ = gc.adam(1e-3, pack=False).update(grads, gc.adam(1e-3, pack=False).init(params), params)
    assert_trees_close(updates, ref_updates, rtol=1e-6)


@pytest.mark.parametrize("committed", [False, True])
def test_eager_pack_of_many_leaves_runs_on_the_host_and_keeps_placement(committed):
    # Eagerly, groups of many leaves are concatenated and split with numpy (XLA compiles a
    # concatenation of N pieces into code that grows with N); the result must equal the traced path
    # bit for bit, keep every dtype, and land where the leaves were.
    from gradchain import _packing

    device = jax.devices()[3]
    tree = {
        f"l{i:03d}": jnp.asarray(np.arange(i % 7 + 1) * 0.5 + i, [np.float32, jnp.bfloat16][i % 2]) for i in range(150)
    }
    if committed:
        tree = jax.device_put(tree, device)
    assert sum(1 for _ in jax.tree.leaves(tree)) >= 2 * _packing.HOST_MIN_PIECES
    packed = gc.pack(tree)
    traced = jax.jit(gc.pack)(tree)
    assert_trees_equal(packed.buffers, traced.buffers)
    assert [b.dtype for b in packed.buffers] == [jnp.dtype(np.float32), jnp.dtype(jnp.bfloat16)]
    back = gc.unpack(packed)
    assert_trees_equal(back, tree)
    assert jax.tree.map(jnp.shape, back) == jax.tree.map(jnp.shape, tree)
    for leaf in [*packed.buffers, *jax.tree.leaves(back)]:
        assert leaf.committed == committed
        assert leaf.devices() == ({device} if committed else {jax.devices()[0]})
