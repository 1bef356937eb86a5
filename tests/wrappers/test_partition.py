"""Parameter groups: masked, partition, freeze, reset_group, labels_by_path, mask_by_path.

References: optax.masked / optax.multi_transform (same updates over 100 steps), a float64 numpy
transcription of SGD momentum and Adam applied to different groups, and torch.optim.AdamW with two
param groups.
"""

from __future__ import annotations

import pickle
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from reference import RTOL, RTOL32, assert_stacked_close, assert_trees_equal, grad_sequence, param_tree

import gradchain as gc
from gradchain import MaskedState, PartitionState, freeze, labels_by_path, mask_by_path, masked, partition, reset_group

N = 100
SHAPES = {
    "dense": {"kernel": (5, 3), "bias": (3,)},
    "conv": {"kernel": (2, 2, 3), "bias": (3,)},
    "norm": {"scale": (3,)},
    "head": (4,),
}
# no weight decay on biases and norm scales; the head is frozen in the three-group tables.
LABELS = {
    "dense": {"kernel": "decay", "bias": "no_decay"},
    "conv": {"kernel": "decay", "bias": "no_decay"},
    "norm": "no_decay",
    "head": "frozen",
}
MASK = {"dense": {"kernel": True, "bias": False}, "conv": True, "norm": False, "head": True}


def _params():
    return jax.tree.map(jnp.asarray, param_tree(SHAPES, seed=7))


def _grads(seed=3):
    seq = grad_sequence(SHAPES, N, seed)
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *seq)


def _run(tx, params, grads, apply=gc.apply_updates):
    """The updates of every step (stacked) and the final state, in one jitted scan."""

    @jax.jit
    def go(p, gs):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            return (apply(p, u), s), u

        (p, s), us = jax.lax.scan(body, (p, tx.init(p)), gs)
        return us, s

    return go(params, grads)


def _param_trajectory(tx, params, grads):
    """The params after every step (stacked), in one jitted scan."""

    @jax.jit
    def go(p, gs):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            p = gc.apply_updates(p, u)
            return (p, s), p

        return jax.lax.scan(body, (p, tx.init(p)), gs)[1]

    return go(params, grads)


def _buffer_bytes(state) -> int:
    """Bytes of per-parameter buffers, leaving out the scalars (a chain or partition keeps them in one block)."""
    compact = (gc.ChainState, gc.NamedChainState)  # a PartitionState is one too

    def states(node):  # the transformations' states, without the block
        return list(node.values()) if isinstance(node, gc.NamedChainState) else list(node)

    return sum(
        _buffer_bytes(states(node)) if isinstance(node, compact) else (node.nbytes if jnp.ndim(node) > 0 else 0)
        for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, compact))
    )


# ---------------------------------------------------------------------------------------------
# Against optax.


# The wrappers are compared bit for bit with optax's wrappers around the same gradchain inner
# transformation (that isolates the wrapper), and with optax's wrappers around optax's optimizers on
# the param trajectories to OPTAX_RTOL (as in test_optimizers.py: gradchain's Adam rounds its bias
# corrections differently from optax's, about 7e-6 of an update at the first steps).
OPTAX_RTOL = 5e-6

MASKED_CASES = {
    "adamw": (lambda: gc.adamw(1e-2, weight_decay=0.1), lambda: optax.adamw(1e-2, weight_decay=0.1)),
    "sgd_momentum": (lambda: gc.sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    "nesterov": (lambda: gc.sgd(0.05, momentum=0.9, nesterov=True), lambda: optax.sgd(0.05, 0.9, nesterov=True)),
}


@pytest.mark.parametrize("case", list(MASKED_CASES))
@pytest.mark.parametrize("mask_kind", ["tree", "function", "patterns"])
def test_masked_matches_optax(case, mask_kind):
    ours, theirs = MASKED_CASES[case]
    mask = {
        "tree": MASK,
        "function": lambda p: jax.tree.map(lambda x: x.ndim != 1, p),
        "patterns": mask_by_path("*kernel", "conv/*", "head"),
    }[mask_kind]
    optax_mask = mask if mask_kind == "function" else MASK  # the patterns select MASK's leaves
    params, grads = _params(), _grads()
    actual, state = _run(masked(ours(), mask), params, grads)
    same_inner, _ = _run(optax.masked(ours(), optax_mask), params, grads)
    assert_stacked_close(actual, same_inner, 1e-7)
    assert isinstance(state, MaskedState)
    if mask_kind == "tree":  # the inner optimizers against optax's, once per case
        ours_p = _param_trajectory(masked(ours(), mask), params, grads)
        theirs_p = _param_trajectory(optax.masked(theirs(), optax_mask), params, grads)
        assert_stacked_close(ours_p, theirs_p, OPTAX_RTOL)


def _groups(lib):
    if lib == "gradchain":
        return {"decay": gc.adamw(1e-2, weight_decay=0.1), "no_decay": gc.sgd(0.05, momentum=0.9), "frozen": freeze()}
    return {
        "decay": optax.adamw(1e-2, weight_decay=0.1),
        "no_decay": optax.sgd(0.05, momentum=0.9),
        "frozen": optax.set_to_zero(),
    }


def test_partition_matches_optax_multi_transform():
    full_labels = jax.tree.map(lambda x, lab: lab, _params(), {**LABELS, "norm": {"scale": "no_decay"}})
    params, grads = _params(), _grads()
    actual, state = _run(partition(_groups("gradchain"), LABELS), params, grads)
    same_inner, _ = _run(optax.multi_transform(_groups("gradchain"), full_labels), params, grads)
    assert_stacked_close(actual, same_inner, 1e-7)
    assert (actual["head"] == 0).all()
    assert isinstance(state, PartitionState) and list(state) == ["decay", "no_decay", "frozen"]
    ours_p = _param_trajectory(partition(_groups("gradchain"), LABELS), params, grads)
    theirs_p = _param_trajectory(optax.multi_transform(_groups("optax"), full_labels), params, grads)
    assert_stacked_close(ours_p, theirs_p, OPTAX_RTOL)


# ---------------------------------------------------------------------------------------------
# Against a float64 numpy transcription: SGD momentum on kernels, Adam on biases and scales.


def _ref_momentum(gs, lr, beta):
    v, out = None, []
    for g in gs:
        g = np.asarray(g, np.float64)
        v = g if v is None else beta * v + g  # PyTorch/optax trace: v_1 = g_1
        out.append(-lr * v)
    return out


def _ref_adam(gs, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = v = 0.0
    out = []
    for t, g in enumerate(gs, start=1):
        g = np.asarray(g, np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append(-lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return out


def test_partition_matches_numpy_transcription():
    labels = labels_by_path({"*kernel": "momentum", "head": "frozen"}, default="adam")
    tx = partition({"momentum": gc.sgd(0.1, momentum=0.9), "adam": gc.adam(1e-2), "frozen": freeze()}, labels)
    params, grads = _params(), _grads(seed=11)
    actual, _ = _run(tx, params, grads)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        name = jax.tree_util.keystr(path)
        seq = list(np.asarray(g))
        if "kernel" in name:
            expected = _ref_momentum(seq, 0.1, 0.9)
        elif "head" in name:
            expected = [np.zeros_like(x, np.float64) for x in seq]
        else:
            expected = _ref_adam(seq, 1e-2)
        got = np.asarray(actual_leaf(actual, path), np.float64)
        scale = max(np.max(np.abs(np.stack(expected))), 1e-30)
        err = np.max(np.abs(got - np.stack(expected)))
        assert err <= RTOL * scale, f"{name}: relative error {err / scale:.3g}"


def actual_leaf(tree, path):
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if p == path:
            return x
    raise KeyError(path)


# ---------------------------------------------------------------------------------------------
# Against torch.optim.AdamW with two param groups.


def test_partition_matches_torch_adamw_param_groups(torch):
    lr = 1e-2
    params, grads = _params(), _grads(seed=5)
    labels = labels_by_path({"*kernel": "decay"}, default="no_decay")
    tx = partition(
        {"decay": gc.adamw(lr, weight_decay=0.01), "no_decay": gc.adamw(lr, weight_decay=0.0)},
        labels,
    )
    trajectory = _param_trajectory(tx, params, grads)
    flat_p, treedef = jax.tree.flatten(params)
    paths = gc.tree.leaf_paths(params)
    tparams = [torch.tensor(np.asarray(x), requires_grad=True) for x in flat_p]
    decay = [t for t, p in zip(tparams, paths, strict=True) if "kernel" in p]
    no_decay = [t for t, p in zip(tparams, paths, strict=True) if "kernel" not in p]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    flat_g = [np.asarray(g) for g in jax.tree.leaves(grads)]
    history = []
    for k in range(N):
        for t, g in zip(tparams, flat_g, strict=True):
            t.grad = torch.tensor(g[k])
        opt.step()
        history.append([t.detach().numpy().copy() for t in tparams])
    expected = treedef.unflatten([np.stack([h[i] for h in history]) for i in range(len(tparams))])
    assert_stacked_close(trajectory, expected, RTOL32)


# ---------------------------------------------------------------------------------------------
# State: masked-out leaves allocate none; hyperparameters per group; reset_group.


def test_masked_out_leaves_allocate_no_state():
    params = {k: v for k, v in _params().items() if k != "head"} | {"big": jnp.zeros((64, 64))}
    mask = mask_by_path("*bias", "norm/*")
    state = masked(gc.adam(1e-3), mask).init(params)
    selected = 4 * (3 + 3 + 3)  # float32 bias, bias, scale
    assert _buffer_bytes(state) == 2 * selected  # mu and nu, nothing for kernels and "big"
    assert state.inner_state[0].mu["big"] is None
    abstract = jax.eval_shape(masked(gc.adam(1e-3), mask).init, params)
    buffers = jax.tree.leaves(tuple(abstract.inner_state))  # the chain's states, its scalar block left out
    assert sum(x.size * x.dtype.itemsize for x in buffers if x.ndim) == 2 * selected

    state = partition({"a": gc.adam(1e-3), "f": freeze()}, labels_by_path({"big": "f"}, default="a")).init(params)
    assert _buffer_bytes(state) == 2 * 4 * (15 + 3 + 12 + 3 + 3)
    assert state["f"] == gc.EmptyState()


def test_hyperparams_per_group_and_set_without_recompiling():
    tx = partition(
        {"decay": gc.adamw(1e-2, weight_decay=0.01), "no_decay": gc.adamw(1e-2, weight_decay=0.0)},
        labels_by_path({"*kernel": "decay"}, default="no_decay"),
    )
    params, grads = _params(), _grads()
    g0 = jax.tree.map(lambda x: x[0], grads)
    state = tx.init(params)
    hp = gc.hyperparams(state)
    names = ["b1", "b2", "eps", "eps_root", "weight_decay", "learning_rate"]
    assert set(hp) == {f"{g}/{n}" for g in ("decay", "no_decay") for n in names}
    assert hp["decay/weight_decay"] == np.float32(0.01) and hp["no_decay/weight_decay"] == 0.0

    traces = []

    @jax.jit
    def step(state, g):
        traces.append(1)
        return tx.update(g, state, params)

    base_u, _ = step(state, g0)
    lowered = gc.set_hyperparams(state, {"no_decay/learning_rate": 1e-3})
    u, new_state = step(lowered, g0)
    assert len(traces) == 1
    assert jnp.isclose(gc.hyperparams(new_state)["no_decay/learning_rate"], 1e-3)
    assert jnp.isclose(gc.hyperparams(new_state)["decay/learning_rate"], 1e-2)
    for path in ("dense", "conv"):
        np.testing.assert_array_equal(u[path]["kernel"], base_u[path]["kernel"])  # the other group: unchanged
        np.testing.assert_allclose(u[path]["bias"], 0.1 * base_u[path]["bias"], rtol=1e-6)
    np.testing.assert_allclose(u["head"], 0.1 * base_u["head"], rtol=1e-6)


def test_reset_group_after_unfreezing():
    params, grads = _params(), _grads()
    labels = labels_by_path({"head": "head"}, default="backbone")
    frozen = partition({"backbone": freeze(), "head": gc.adam(1e-2)}, labels)
    unfrozen = partition({"backbone": gc.adam(1e-3), "head": gc.adam(1e-2)}, labels)
    first = jax.tree.map(lambda x: x[:5], grads)
    rest = jax.tree.map(lambda x: x[5:], grads)

    def run_from(tx, state, gs, p):
        def body(s, g):
            u, s = tx.update(g, s, p)
            return s, u

        return jax.lax.scan(body, state, gs)

    state, u_first = run_from(frozen, frozen.init(params), first, params)
    assert (u_first["dense"]["kernel"] == 0).all() and state["backbone"] == gc.EmptyState()
    new_state = jax.jit(lambda s, p: reset_group(unfrozen, s, p, "backbone"))(state, params)
    assert_trees_equal(new_state["head"], state["head"])  # carried over, untouched
    assert new_state["backbone"][0].count == 0
    assert all((x == 0).all() for x in jax.tree.leaves(new_state["backbone"][0].mu))

    _, u_rest = run_from(unfrozen, new_state, rest, params)
    # The head continues its 100-step trajectory; the backbone starts a fresh Adam at step 6.
    full_head, _ = _run(partition({"h": gc.adam(1e-2)}, "h"), {"head": params["head"]}, {"head": grads["head"]})
    np.testing.assert_allclose(u_rest["head"], full_head["head"][5:], rtol=1e-6, atol=1e-9)
    fresh, _ = _run(gc.adam(1e-3), params["dense"], rest["dense"])
    np.testing.assert_allclose(u_rest["dense"]["kernel"], fresh["kernel"], rtol=1e-6, atol=1e-9)

    # Resetting a trained group of the same transformation: that group fresh, the other as it was.
    trained, _ = run_from(unfrozen, unfrozen.init(params), first, params)
    again = reset_group(unfrozen, trained, params, ["head"])
    assert_trees_equal(again["backbone"], trained["backbone"])
    assert again["head"][0].count == 0 and (again["head"][0].nu["head"] == 0).all()
    assert trained["head"][0].count == 5


# ---------------------------------------------------------------------------------------------
# Any pytree: equinox modules, flax NNX State, None leaves, packed trees.


def _flat_dict(tree):
    return dict(zip(gc.tree.leaf_paths(tree), jax.tree.leaves(tree), strict=True))


@pytest.mark.parametrize("labels_kind", ["patterns", "tree"])
def test_equinox_module_non_array_leaves_left_alone(labels_kind):
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0))
    arrays = eqx.filter(model, eqx.is_array)
    if labels_kind == "patterns":
        labels = labels_by_path({"*bias": "no_decay"}, default="decay")
    else:  # an equinox module of labels: callable, but a pytree, not a label function
        labels = jax.tree.map(lambda x: "decay" if x.ndim > 1 else "no_decay", arrays)
    txs = {"decay": gc.adamw(1e-2, weight_decay=0.1), "no_decay": gc.sgd(0.1, momentum=0.9)}
    tx = partition(txs, labels)
    state = tx.init(model)  # the whole module, activation functions included
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), arrays)
    step = eqx.filter_jit(tx.update)
    for _ in range(3):
        updates, state = step(grads, state, model)
        model = eqx.apply_updates(model, updates)
    assert updates.activation is None and model.activation is jax.nn.relu

    # The same groups on a plain dict of the same arrays give the same numbers.
    d_params = _flat_dict(eqx.filter(eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0)), eqx.is_array))
    d_labels = {k: ("no_decay" if "bias" in k else "decay") for k in d_params}
    d_tx = partition(txs, d_labels)
    d_state = d_tx.init(d_params)
    d_grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), d_params)
    for _ in range(3):
        d_updates, d_state = d_tx.update(d_grads, d_state, d_params)
        d_params = gc.apply_updates(d_params, d_updates)
    assert_trees_equal(_flat_dict(eqx.filter(model, eqx.is_array)), d_params)


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 4, rngs=rngs)
        self.ln = nnx.LayerNorm(4, rngs=rngs)


@pytest.mark.parametrize(
    "labels",
    [
        {"lin": {"kernel": "decay", "bias": "no_decay"}, "ln": "no_decay"},  # a dict for a State
        labels_by_path({"lin/kernel": "decay"}, default="no_decay"),  # "/value" left out
        labels_by_path({"lin/kernel/value": "decay"}, default="no_decay"),
    ],
    ids=["dict", "patterns", "patterns_value"],
)
def test_flax_nnx_state(labels):
    state_tree = nnx.state(_Net(nnx.Rngs(0)), nnx.Param)
    txs = {"decay": gc.adamw(1e-2, weight_decay=0.1), "no_decay": gc.adam(1e-2)}
    tx = partition(txs, labels)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.25), state_tree)
    opt_state = tx.init(state_tree)
    updates, opt_state = jax.jit(tx.update)(grads, opt_state, state_tree)
    assert type(updates) is type(state_tree)

    # The same groups on the pure dict (optax's multi_transform around the same inner optimizers).
    pure = state_tree.to_pure_dict()
    ref_labels = {"lin": {"kernel": "decay", "bias": "no_decay"}, "ln": {"bias": "no_decay", "scale": "no_decay"}}
    ref = optax.multi_transform(txs, ref_labels)
    expected, _ = ref.update(jax.tree.map(lambda x: jnp.full_like(x, 0.25), pure), ref.init(pure), pure)
    assert_trees_equal(nnx.State(updates).to_pure_dict(), expected)
    assert opt_state["decay"][0].mu["ln"]["scale"].value is None


def test_none_leaves_abstract_init_and_pickle():
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3), "gone": None}
    tx = partition({"a": gc.adam(1e-3), "b": gc.sgd(0.1, momentum=0.5)}, {"w": "a", "b": "b", "gone": "a"})
    state = tx.init(params)
    abstract = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    updates, state = tx.update({"w": jnp.ones((2, 3)), "b": jnp.ones(3), "gone": None}, state, params)
    assert updates["gone"] is None
    back = pickle.loads(pickle.dumps(jax.device_get(state)))
    assert isinstance(back, PartitionState) and jax.tree.structure(back) == jax.tree.structure(state)
    m = masked(gc.adam(1e-3), {"w": True, "b": False, "gone": False})
    m_state = pickle.loads(pickle.dumps(jax.device_get(m.init(params))))
    assert isinstance(m_state, MaskedState)


def test_packed_params_and_updates():
    params, grads = _params(), _grads()
    tx = partition(
        {"decay": gc.adamw(1e-2, weight_decay=0.1), "no_decay": gc.sgd(0.05, momentum=0.9), "frozen": freeze()},
        LABELS,
    )
    packed = gc.pack(params)
    state = tx.init(packed)
    plain_state = tx.init(params)
    for k in range(3):
        g = jax.tree.map(lambda x, k=k: x[k], grads)
        u, state = tx.update(gc.pack(g, packed.layout), state, packed)
        v, plain_state = tx.update(g, plain_state, params)
        assert isinstance(u, gc.Packed)
        assert_trees_equal(gc.unpack(u), v)


def test_jitted_step_traces_once_and_forwards_extra_args():
    seen = []

    def init(params):
        return gc.EmptyState()

    def update(updates, state, params=None, *, value, **extra_args):
        seen.append(value)
        return jax.tree.map(lambda u: u * value, updates), state

    scaled_by_loss = gc.GradientTransformation(init, update)
    tx = gc.chain(partition({"a": scaled_by_loss, "b": gc.sgd(1.0)}, {"x": "a", "y": "b"}), masked(gc.sgd(1.0), True))
    params = {"x": jnp.ones(2), "y": jnp.ones(3)}
    traces = []

    @jax.jit
    def step(state, g, loss):
        traces.append(1)
        return tx.update(g, state, params, value=loss)

    state = tx.init(params)
    for loss in (2.0, 3.0, 4.0):
        u, state = step(state, {"x": jnp.ones(2), "y": jnp.ones(3)}, loss)
    assert len(traces) == 1 and len(seen) == 1
    np.testing.assert_allclose(u["x"], -4.0)
    np.testing.assert_allclose(u["y"], 1.0)


def test_freeze_standalone_and_labels_by_path_order():
    params = {"enc": {"w": jnp.ones(2), "b": jnp.ones(2)}, "dec": {"w": jnp.ones(2)}}
    u, _ = freeze(mask_by_path("enc/*")).update(jax.tree.map(jnp.ones_like, params), gc.EmptyState(), params)
    assert (u["enc"]["w"] == 0).all() and (u["enc"]["b"] == 0).all() and (u["dec"]["w"] == 1).all()
    # first match wins
    labels = labels_by_path([("enc/b", "x"), ("enc/*", "y"), ("*", "z")])(params)
    assert labels == {"enc": {"w": "y", "b": "x"}, "dec": {"w": "z"}}


# ---------------------------------------------------------------------------------------------
# Bad input: the type and a message that names the argument, the label or the leaf path.

_P = {"layer": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "out": jnp.ones(3)}
_TXS = {"decay": gc.sgd(0.1), "no_decay": gc.sgd(0.01)}


def _init_partition(labels, txs=_TXS):
    return partition(txs, labels).init(_P)


BAD = [
    (
        "label_tree_missing_leaf",
        lambda: _init_partition({"layer": {"w": "decay"}, "out": "decay"}),
        ValueError,
        r"no value for the params leaf layer/b",
    ),
    (
        "label_tree_extra_entry",
        lambda: _init_partition({"layer": "decay", "out": "decay", "head": "decay"}),
        ValueError,
        r"entry at head",
    ),
    (
        "label_tree_too_deep",
        lambda: _init_partition({"layer": "decay", "out": {"x": "decay"}}),
        ValueError,
        r"entry at out/x",
    ),
    (
        "label_without_transform",
        lambda: _init_partition({"layer": "decay", "out": "oops"}),
        ValueError,
        r"leaf out has the label 'oops'.*'decay', 'no_decay'",
    ),
    (
        "label_function_without_transform",
        lambda: _init_partition(lambda p: jax.tree.map(lambda _: "oops", p)),
        ValueError,
        r"leaf layer/b has the label 'oops'",
    ),
    (
        "non_string_label",
        lambda: _init_partition({"layer": 1, "out": "decay"}),
        TypeError,
        r"labels must be strings.*layer",
    ),
    ("transforms_not_mapping", lambda: partition([gc.sgd(0.1)], "a"), TypeError, r"partition: transforms"),
    ("transform_not_a_transformation", lambda: partition({"a": 3}, "a"), TypeError, r"transforms\['a'\]"),
    (
        "pattern_matches_nothing",
        lambda: _init_partition(labels_by_path({"*bais": "no_decay"}, default="decay")),
        ValueError,
        r"pattern '\*bais' matches no leaf",
    ),
    (
        "leaf_matches_no_pattern",
        lambda: _init_partition(labels_by_path({"*b": "no_decay"})),
        ValueError,
        r"leaf layer/w matches none of the patterns",
    ),
    (
        "mask_wrong_structure",
        lambda: masked(gc.sgd(0.1), {"layer": {"w": True, "b": True, "c": True}}).init(_P),
        ValueError,
        r"masked: the mask tree has an entry at layer/c",
    ),
    (
        "mask_missing_leaf",
        lambda: masked(gc.sgd(0.1), {"layer": True}).init(_P),
        ValueError,
        r"no value for the params leaf out",
    ),
    (
        "mask_not_bool",
        lambda: masked(gc.sgd(0.1), {"layer": {"w": 1, "b": True}, "out": False}),
        TypeError,
        r"mask leaves must be booleans.*layer/w",
    ),
    (
        "mask_pattern_matches_nothing",
        lambda: freeze(mask_by_path("head/*")).update(_P, gc.EmptyState(), _P),
        ValueError,
        r"pattern 'head/\*' matches no leaf",
    ),
    (
        "freeze_mask_wrong",
        lambda: freeze({"layer": True, "out": True, "x": False}).update(_P, gc.EmptyState(), _P),
        ValueError,
        r"freeze: the mask tree has an entry at x",
    ),
    ("masked_inner_not_transformation", lambda: masked(None, True), TypeError, r"masked: inner"),
    (
        "update_leaf_not_in_params",
        lambda: partition(_TXS, "decay").update({**_P, "extra": jnp.ones(1)}, _init_partition("decay"), _P),
        ValueError,
        r"updates leaf extra",
    ),
    (
        "wrong_state",
        lambda: partition(_TXS, "decay").update(_P, gc.EmptyState(), _P),
        TypeError,
        r"expected a PartitionState",
    ),
    (
        "reset_unknown_label",
        lambda: reset_group(partition(_TXS, "decay"), _init_partition("decay"), _P, "nope"),
        ValueError,
        r"label 'nope' is not a group.*'decay', 'no_decay'",
    ),
    (
        "reset_not_partition",
        lambda: reset_group(gc.sgd(0.1), _init_partition("decay"), _P, "decay"),
        TypeError,
        r"reset_group: tx must be",
    ),
    (
        "reset_other_groups",
        lambda: reset_group(partition({"decay": gc.sgd(0.1)}, "decay"), _init_partition("decay"), _P, "decay"),
        ValueError,
        r"the state has the groups",
    ),
    ("labels_by_path_bad_rules", lambda: labels_by_path({"*": 3}), TypeError, r"labels_by_path: rules"),
    ("mask_by_path_no_patterns", lambda: mask_by_path(), ValueError, r"mask_by_path: give at least one"),
]


@pytest.mark.parametrize(("name", "call", "exc", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, call, exc, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(exc, match=match):
            call()


def test_unused_group_warns_and_keeps_empty_state():
    with pytest.warns(UserWarning, match=r"label\(s\) 'no_decay'"):
        state = _init_partition("decay")
    assert _buffer_bytes(state["no_decay"]) == 0
    assert "no_decay/learning_rate" in gc.hyperparams(state)
