"""gradchain.tree: global_norm, zeros_like / full_like, cast, tree_get, check_same_structure, leaf_paths."""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gradchain as gc
from gradchain import tree


def _random_tree(dtype, scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    make = lambda *s: jnp.asarray(scale * rng.normal(size=s)).astype(dtype)  # noqa: E731
    return {"w": make(3, 4), "b": make(4), "seq": [make(2, 3, 2), (make(5), make())]}


def _np_norm(t) -> float:
    return float(np.sqrt(sum(np.sum(np.abs(np.asarray(x, np.complex128)) ** 2) for x in jax.tree.leaves(t))))


# ---------------------------------------------------------------------------------------------------
# global_norm


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_global_norm_matches_numpy(dtype):
    t = _random_tree(dtype)
    norm = tree.global_norm(t)
    assert norm.dtype == jnp.float32 and norm.shape == ()
    # Every leaf value is exact in float32; only the float32 sum of squares rounds.
    np.testing.assert_allclose(float(norm), _np_norm(t), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_global_norm_of_half_precision_leaves_does_not_overflow(dtype):
    """Values ~1e3 square to ~1e6, past float16's max (65504): the sum runs in float32."""
    t = _random_tree(dtype, scale=1e3)
    assert max(float(jnp.max(jnp.abs(x.astype(jnp.float32)))) for x in jax.tree.leaves(t)) > 256
    norm = tree.global_norm(t)
    assert norm.dtype == jnp.float32 and bool(jnp.isfinite(norm))
    np.testing.assert_allclose(float(norm), _np_norm(t), rtol=1e-6)


def test_global_norm_complex_leaves():
    rng = np.random.default_rng(1)
    t = {
        "z": jnp.asarray(rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2)), jnp.complex64),
        "x": jnp.asarray(rng.normal(size=4), jnp.float32),
    }
    norm = tree.global_norm(t)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(float(norm), _np_norm(t), rtol=1e-6)
    assert tree.global_norm({"z": jnp.array([3 + 4j], jnp.complex64)}) == 5.0


def test_global_norm_float64_under_x64():
    with jax.enable_x64(True):
        t = _random_tree(jnp.float64)
        norm = tree.global_norm(t)
        assert norm.dtype == jnp.float64
        np.testing.assert_allclose(float(norm), _np_norm(t), rtol=1e-14)


def test_global_norm_edge_cases():
    assert tree.global_norm({}) == 0.0 and tree.global_norm({}).dtype == jnp.float32
    assert tree.global_norm({"a": None, "b": jnp.array([3.0, 4.0])}) == 5.0  # None leaves skipped
    assert tree.global_norm(jnp.array([[3.0], [4.0]])) == 5.0  # a bare array
    assert tree.global_norm({"e": jnp.zeros((0, 3)), "a": jnp.array([1.0])}) == 1.0  # empty leaf
    assert jax.jit(tree.global_norm)(_random_tree(jnp.float32)) == pytest.approx(_np_norm(_random_tree(jnp.float32)))


# ---------------------------------------------------------------------------------------------------
# zeros_like / full_like / cast


@pytest.mark.parametrize("dtype", [None, jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32])
def test_zeros_like_and_full_like(dtype):
    t = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": [jnp.ones(4, jnp.float32), None]}
    fill = 7 if dtype == jnp.int32 else 1.5
    for value, out in ((0, tree.zeros_like(t, dtype)), (fill, tree.full_like(t, fill, dtype))):
        assert out["b"][1] is None
        for x, y in zip(jax.tree.leaves(t), jax.tree.leaves(out), strict=True):
            assert y.shape == x.shape
            assert y.dtype == (x.dtype if dtype is None else jnp.dtype(dtype))
            assert (np.asarray(y, np.float64) == value).all()


def test_zeros_like_on_shape_dtype_structs_under_eval_shape():
    abstract = {"w": jax.ShapeDtypeStruct((2, 3), jnp.bfloat16), "b": [jax.ShapeDtypeStruct((5,), jnp.float32)]}
    out = jax.eval_shape(tree.zeros_like, abstract)
    assert out["w"] == jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)
    assert out["b"][0] == jax.ShapeDtypeStruct((5,), jnp.float32)
    out = jax.eval_shape(lambda t: tree.full_like(t, 0.5, jnp.float32), abstract)
    assert out["w"].shape == (2, 3) and out["w"].dtype == jnp.float32
    # Called directly (outside eval_shape) on ShapeDtypeStructs, it allocates.
    concrete = tree.zeros_like(abstract, jnp.float16)
    assert isinstance(concrete["w"], jax.Array) and concrete["w"].dtype == jnp.float16


def test_full_like_keeps_sharding():
    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    sharding = NamedSharding(mesh, PartitionSpec("d"))
    x = jax.device_put(jnp.arange(8.0), sharding)
    out = tree.full_like({"x": x}, 2.0, jnp.bfloat16)["x"]
    assert out.sharding == sharding
    abstract = jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharding)
    assert tree.zeros_like(abstract).sharding == sharding


def test_full_like_under_jit():
    out = jax.jit(lambda t: tree.full_like(t, 3.0, jnp.float16))({"a": jnp.ones(2)})
    assert out["a"].dtype == jnp.float16 and (np.asarray(out["a"]) == 3).all()


def test_cast():
    t = {"a": jnp.ones(2), "b": [jnp.ones(3, jnp.float16), None], "c": (jnp.ones((), jnp.bfloat16),)}
    out = tree.cast(t, jnp.bfloat16)
    assert out["b"][1] is None and isinstance(out["c"], tuple)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))
    assert tree.cast(t, None) is t
    assert tree.cast({"a": 1.5}, jnp.float32)["a"].dtype == jnp.float32  # Python scalars too


# ---------------------------------------------------------------------------------------------------
# tree_get


def test_tree_get_finds_global_norm_in_nested_chain_states():
    tx = gc.chain(gc.sgd(0.1), gc.named_chain(("clip", gc.clip_by_global_norm(1.0)), ("adam", gc.scale_by_adam())))
    params = _random_tree(jnp.float32)
    g = _random_tree(jnp.float32, seed=3)
    _, state = tx.update(g, tx.init(params), params)
    norm = tree.tree_get(state, "global_norm")
    np.testing.assert_allclose(float(norm), _np_norm(jax.tree.map(lambda x: 0.1 * x, g)), rtol=1e-6)
    assert tree.tree_get(state, "global_norm") is state[1]["clip"].global_norm


def test_tree_get_returns_the_first_match_and_finds_dict_keys():
    state = gc.chain(gc.trace(0.9), gc.scale_by_adam()).init({"w": jnp.ones(2)})
    assert tree.tree_get(state, "count") is state[0].count
    assert tree.tree_get(state, "mu") is state[1].mu
    assert tree.tree_get({"x": [{"y": 1}], "y": 2}, "y") == 2
    assert tree.tree_get([{"a": 1}, {"y": 3}], "y") == 3


def test_tree_get_returns_default_when_absent():
    state = gc.adam(1e-3).init({"w": jnp.ones(2)})
    sentinel = object()
    assert tree.tree_get(state, "global_norm") is None
    assert tree.tree_get(state, "global_norm", sentinel) is sentinel
    assert tree.tree_get({}, "x", 5) == 5
    assert tree.tree_get(jnp.ones(2), "x", 5) == 5


# ---------------------------------------------------------------------------------------------------
# check_same_structure


def _check(expected, actual):
    tree.check_same_structure(expected, actual, expected_name="params", actual_name="grads", where="demo")


def test_check_same_structure_accepts_equal_structures():
    t = _random_tree(jnp.float32)
    _check(t, jax.tree.map(lambda x: x.astype(jnp.bfloat16), t))  # dtypes may differ
    _check({"a": None, "b": jnp.ones(2)}, {"a": None, "b": jnp.zeros(2)})


def test_check_same_structure_missing_leaf():
    with pytest.raises(ValueError, match=re.escape("demo: the grads tree does not match the params tree")) as e:
        _check({"layer": {"w": jnp.ones(2), "b": jnp.ones(2)}}, {"layer": {"w": jnp.ones(2)}})
    assert "missing from grads: layer/b" in str(e.value)


def test_check_same_structure_extra_leaf():
    with pytest.raises(ValueError, match=re.escape("not in params: seq/2")):
        _check({"seq": [jnp.ones(1), jnp.ones(1)]}, {"seq": [jnp.ones(1), jnp.ones(1), jnp.ones(1)]})


def test_check_same_structure_shape_mismatch():
    with pytest.raises(
        ValueError, match=re.escape("leaf a/1 has shape (3,) in grads, expected (2,) as in params")
    ):
        _check({"a": [jnp.ones(1), jnp.ones(2)]}, {"a": [jnp.ones(1), jnp.ones(3)]})


def test_check_same_structure_container_types_and_none():
    with pytest.raises(ValueError, match="different container types"):
        _check({"a": [jnp.ones(1)]}, {"a": (jnp.ones(1),)})
    with pytest.raises(ValueError, match=re.escape("leaf a is None in one of params/grads only")):
        _check({"a": None}, {"a": jnp.ones(1)})


def test_update_with_mismatched_tree_names_the_leaf_path():
    tx = gc.adam(1e-3)
    params = {"enc": {"w": jnp.ones((2, 2))}, "dec": [jnp.ones(3)]}
    state = tx.init(params)
    with pytest.raises(ValueError, match=re.escape("dec/0 has shape (4,)")):
        tx.update({"enc": {"w": jnp.ones((2, 2))}, "dec": [jnp.ones(4)]}, state, params)
    with pytest.raises(ValueError, match=re.escape("missing from updates: enc/w")):
        tx.update({"enc": {}, "dec": [jnp.ones(3)]}, state, params)


# ---------------------------------------------------------------------------------------------------
# leaf_paths / path_str


class _Pair(NamedTuple):
    x: jax.Array
    y: jax.Array


def test_leaf_paths():
    t = {"b": [jnp.ones(1), (jnp.ones(1), None)], "a": _Pair(jnp.ones(1), jnp.ones(1)), "c": jnp.ones(1)}
    assert tree.leaf_paths(t) == ["a/x", "a/y", "b/0", "b/1/0", "c"]
    assert tree.leaf_paths(jnp.ones(2)) == ["<root>"]
    assert tree.leaf_paths({}) == []


def test_public_names():
    assert set(tree.__all__) >= {
        "cast", "path_str", "full_like", "global_norm", "leaf_paths", "check_same_structure", "tree_get", "zeros_like"
    }  # fmt: skip
    for name in tree.__all__:
        assert callable(getattr(tree, name))


# ---------------------------------------------------------------------------------------------------
# replicated_sharding / place_like


def test_replicated_sharding():
    dev = jax.devices()[1]
    assert tree.replicated_sharding({"w": jnp.ones(2)}) is None  # uncommitted: no placement chosen
    assert tree.replicated_sharding({}) is None
    single = tree.replicated_sharding({"a": jnp.ones(2), "w": jax.device_put(jnp.ones(2), dev)})
    assert single.device_set == {dev}
    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    sharded = jax.device_put(jnp.arange(8.0), NamedSharding(mesh, PartitionSpec("d")))
    replicated = tree.replicated_sharding({"w": sharded})
    assert isinstance(replicated, NamedSharding)
    assert replicated.mesh == mesh and replicated.spec == PartitionSpec()
    assert jax.jit(lambda t: tree.replicated_sharding(t) is None and t)({"w": jnp.ones(1)})  # tracers: None


def test_place_like():
    dev = jax.devices()[2]
    params = {"w": jax.device_put(jnp.ones(3), dev)}
    committed = jax.device_put(jnp.zeros(3), dev)
    state = {"count": jnp.zeros((), jnp.int32), "buf": committed, "none": None}
    placed = tree.place_like(state, params)
    assert placed["count"].committed and placed["count"].devices() == {dev}
    assert placed["buf"] is committed and placed["none"] is None
    assert tree.place_like(state, {"w": jnp.ones(3)}) is state  # uncommitted params: no-op

    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    sharded = {"w": jax.device_put(jnp.arange(8.0), NamedSharding(mesh, PartitionSpec("d")))}
    placed = tree.place_like({"count": jnp.zeros((), jnp.int32)}, sharded)
    assert placed["count"].sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec()), 0)


def test_init_places_scalars_like_the_params():
    """An optimizer's count and hyperparameters live where its buffers do."""
    mesh = Mesh(np.array(jax.devices()[:4]), ("d",))
    params = {"w": jax.device_put(jnp.ones((8, 2)), NamedSharding(mesh, PartitionSpec("d")))}
    state = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3)).init(params)
    assert state[1][0].mu["w"].sharding == params["w"].sharding
    for leaf in jax.tree.leaves(state):
        assert leaf.committed and leaf.sharding.device_set == params["w"].sharding.device_set
