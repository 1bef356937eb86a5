"""Pytree utilities used across gradchain, public because custom transformations need them too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradchain._compact import from_view, to_view

PyTree = Any

__all__ = [
    "abs_sq",
    "cast",
    "path_parts",
    "path_str",
    "place_like",
    "replicated_sharding",
    "full_like",
    "global_norm",
    "leaf_paths",
    "check_same_structure",
    "tree_get",
    "find_nodes",
    "zeros_like",
]


def _is_none(x: Any) -> bool:
    return x is None


def path_parts(path: Sequence[Any]) -> tuple[str, ...]:
    """The keys of a jax key path as strings: dict keys, attribute names and sequence indices.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        from gradchain import tree

        (path, _), = jax.tree_util.tree_flatten_with_path({"layer": [jnp.ones(1)]})[0]
        assert tree.path_parts(path) == ("layer", "0")
        ```
    """
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return tuple(parts)


def path_str(path: Sequence[Any]) -> str:
    """A leaf path as gradchain writes it everywhere: keys joined by `/` (`layer/w`), `<root>` for a bare array.

    This one spelling is used in every error message, in `hyperparams` keys and in the path
    patterns of `labels_by_path` / `mask_by_path`, so a path copied from an error can be pasted
    into a pattern.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        from gradchain import tree

        (path, _), = jax.tree_util.tree_flatten_with_path({"layer": {"w": jnp.ones(1)}})[0]
        assert tree.path_str(path) == "layer/w"
        ```
    """
    return "/".join(path_parts(path)) or "<root>"


def leaf_paths(tree: PyTree) -> list[str]:
    """The path of every leaf of `tree` (as `path_str` writes it), in flattening order.

    Example:
        ```python
        import jax.numpy as jnp
        from gradchain import tree

        assert tree.leaf_paths({"a": jnp.ones(2), "b": [jnp.ones(1)]}) == ["a", "b/0"]
        ```
    """
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves of `tree` taken together, computed in at least float32.

    $$ \\|g\\| = \\sqrt{\\textstyle\\sum_{\\text{leaves}} \\sum_i |g_i|^2} $$

    Example:
        ```python
        import jax.numpy as jnp
        from gradchain import tree

        assert tree.global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}) == 5.0
        ```
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    squares = [jnp.sum(abs_sq(x.astype(jnp.promote_types(x.dtype, jnp.float32)))) for x in leaves]
    return jnp.sqrt(sum(squares[1:], squares[0]))


def abs_sq(x: jax.Array) -> jax.Array:
    """$|x|^2$ element-wise; real for complex inputs.

    Example:
        ```python
        import jax.numpy as jnp
        from gradchain import tree

        assert tree.abs_sq(jnp.array(3 + 4j)) == 25.0
        ```
    """
    return (x * x.conj()).real if jnp.iscomplexobj(x) else x * x


def _is_committed_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.committed


def _device_kwargs(x: Any) -> dict[str, Any]:
    # Lay a buffer out like the array it mirrors. Only a placement the user chose is copied: an
    # uncommitted param stays free to move, and committing its state would change the jitted step's
    # signature (and recompile it) as soon as outputs come back committed.
    if _is_committed_array(x) or (isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None):
        return {"device": x.sharding}
    return {}


def replicated_sharding(tree: PyTree) -> jax.sharding.Sharding | None:
    """A sharding that replicates a scalar over the devices of the first committed leaf of `tree`.

    None when no leaf has a placement the user chose (then scalars stay uncommitted too).

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        from gradchain import tree

        params = {"w": jax.device_put(jnp.ones(2), jax.devices()[0])}
        assert tree.replicated_sharding(params).device_set == {jax.devices()[0]}
        assert tree.replicated_sharding({"w": jnp.ones(2)}) is None
        ```
    """
    for leaf in jax.tree.leaves(tree):
        if not _is_committed_array(leaf):
            continue
        sharding = leaf.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        if isinstance(sharding, jax.sharding.SingleDeviceSharding):
            return sharding
    return None


def place_like(state: PyTree, params: PyTree) -> PyTree:
    """Commit the uncommitted arrays of `state` (counts, hyperparameters) replicated like `params`.

    A state whose buffers are committed to the params' devices but whose scalars are not changes
    signature after the first jitted step (outputs come back committed) and recompiles once;
    placing the scalars at `init` keeps the step at one compilation. No-op for uncommitted params
    and under tracing.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        from gradchain import tree

        params = {"w": jax.device_put(jnp.ones(2), jax.devices()[0])}
        state = tree.place_like({"count": jnp.zeros((), jnp.int32)}, params)
        assert state["count"].committed
        ```
    """
    sharding = replicated_sharding(params)
    if sharding is None:
        return state

    def place(x):
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.committed:
            return jax.device_put(x, sharding)
        return x

    return jax.tree.map(place, state)


def full_like(tree: PyTree, fill_value: Any, dtype: DTypeLike | None = None) -> PyTree:
    """A tree of arrays shaped like `tree`, filled with `fill_value`, optionally in another dtype.

    Works on arrays and on `jax.ShapeDtypeStruct` leaves (abstract init); keeps each leaf's sharding.
    `None` leaves stay `None`.

    Example:
        ```python
        import jax.numpy as jnp
        from gradchain import tree

        t = tree.full_like({"w": jnp.zeros(2, jnp.bfloat16)}, 0.5, dtype=jnp.float32)
        assert t["w"].dtype == jnp.float32 and (t["w"] == 0.5).all()
        ```
    """

    def fill(x):
        if isinstance(x, jax.core.Tracer):
            # Under jit/eval_shape the sharding lives in the tracer's type; full_like keeps it.
            return jnp.full_like(x, fill_value, dtype or x.dtype)
        return jnp.full(x.shape, fill_value, dtype or x.dtype, **_device_kwargs(x))

    return jax.tree.map(fill, tree)


def zeros_like(tree: PyTree, dtype: DTypeLike | None = None) -> PyTree:
    """A tree of zeros shaped like `tree`, optionally in another dtype (see `full_like`).

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        from gradchain import tree

        abstract = {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)}
        assert jax.eval_shape(tree.zeros_like, abstract)["w"].shape == (2, 3)
        ```
    """
    return full_like(tree, 0, dtype)


def cast(tree: PyTree, dtype: DTypeLike | None) -> PyTree:
    """Cast every leaf to `dtype` (no-op when `dtype` is None). `None` leaves stay `None`.

    Example:
        ```python
        import jax.numpy as jnp
        from gradchain import tree

        assert tree.cast({"w": jnp.ones(2)}, jnp.bfloat16)["w"].dtype == jnp.bfloat16
        ```
    """
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def find_nodes(tree: PyTree, types: type | tuple[type, ...]) -> list[Any]:
    """The outermost nodes of `tree` that are instances of `types`, in flattening order.

    Use it to pick one transformation's state out of a nested optimizer state (chains, dicts,
    wrappers) by its state class; the search does not descend into a node it returns.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        state = gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-3)).init({"w": jnp.zeros(2)})
        [adam_state] = gc.tree.find_nodes(state, gc.ScaleByAdamState)
        assert adam_state.mu["w"].shape == (2,)
        ```
    """
    # A chain's state keeps its scalars in one array: search its transformations' states.
    leaves = jax.tree_util.tree_leaves(to_view(tree), is_leaf=lambda x: isinstance(x, types))
    return [from_view(node) for node in leaves if isinstance(node, types)]


def tree_get(tree: PyTree, name: str, default: Any = None) -> Any:
    """The value of the first field called `name` found anywhere in `tree` (NamedTuples, dicts, ...).

    Use it to read a value out of a nested optimizer state without knowing its nesting, such as the
    gradient norm that `clip_by_global_norm` recorded.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.clip_by_global_norm(1.0), gc.sgd(0.1))
        params = {"w": jnp.zeros(2)}
        _, state = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
        assert gc.tree.tree_get(state, "global_norm") == 5.0
        ```
    """
    found: list[Any] = []

    def visit(node: Any) -> None:
        if found:
            return
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            if name in node._fields:
                found.append(getattr(node, name))
                return
            items = list(node)
        elif isinstance(node, Mapping):  # dicts, and the Hyperparams of a state
            if name in node:
                found.append(node[name])
                return
            items = list(node.values())
        elif isinstance(node, (list, tuple)):
            items = list(node)
        else:
            children = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]
            items = [] if children == [node] else children
        for item in items:
            visit(item)

    visit(to_view(tree))  # a chain's state shown as its transformations' states
    return from_view(found[0]) if found else default


def check_same_structure(expected: PyTree, actual: PyTree, *, expected_name: str, actual_name: str, where: str) -> None:
    """Raise ValueError if two trees differ in structure or leaf shapes, naming the leaf paths.

    Example:
        ```python
        import jax.numpy as jnp
        from gradchain import tree

        try:
            tree.check_same_structure({"w": jnp.ones(2)}, {"w": jnp.ones(3)},
                                      expected_name="params", actual_name="grads", where="demo")
        except ValueError as e:
            assert "leaf w " in str(e)
        ```
    """
    exp = jax.tree_util.tree_flatten_with_path(expected, is_leaf=_is_none)[0]
    act = jax.tree_util.tree_flatten_with_path(actual, is_leaf=_is_none)[0]
    exp_paths = {path_str(p): x for p, x in exp}
    act_paths = {path_str(p): x for p, x in act}
    missing = [p for p in exp_paths if p not in act_paths]
    extra = [p for p in act_paths if p not in exp_paths]
    if missing or extra:
        lines = [f"{where}: the {actual_name} tree does not match the {expected_name} tree."]
        if missing:
            lines.append(f"  missing from {actual_name}: {', '.join(missing[:10])}")
        if extra:
            lines.append(f"  not in {expected_name}: {', '.join(extra[:10])}")
        raise ValueError("\n".join(lines))
    if jax.tree.structure(expected, is_leaf=_is_none) != jax.tree.structure(actual, is_leaf=_is_none):
        raise ValueError(
            f"{where}: the {actual_name} tree has the same leaf paths as the {expected_name} tree but "
            f"different container types:\n  {expected_name}: {jax.tree.structure(expected)}\n"
            f"  {actual_name}: {jax.tree.structure(actual)}"
        )
    for path, e in exp_paths.items():
        a = act_paths[path]
        if (e is None) != (a is None):
            raise ValueError(f"{where}: leaf {path} is None in one of {expected_name}/{actual_name} only")
        if e is not None and jnp.shape(e) != jnp.shape(a):
            raise ValueError(
                f"{where}: leaf {path} has shape {jnp.shape(a)} in {actual_name}, "
                f"expected {jnp.shape(e)} as in {expected_name}"
            )
