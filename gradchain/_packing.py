"""Packed execution: many small leaves as a few contiguous buffers.

An optimizer step is a handful of element-wise passes over params, grads and state. Run leaf by
leaf, a model with thousands of small leaves (norm scales, biases) costs one kernel per leaf per
pass, and a compile time that grows with the number of kernels. Packed, the same arithmetic runs
over a few flat buffers: one kernel per buffer per step.

A `Layout` says which leaves share a buffer. Leaves are grouped so that nothing is promoted or
moved between devices: a buffer holds leaves of one dtype, with one placement (fully replicated
over one set of devices, or unplaced). Sharded leaves, and leaves larger than a size limit, stay
as they are (a "standalone" buffer is the leaf itself, shape kept): for them a per-leaf kernel is
already as fast as a packed one, and packing them would cost a copy.

`Packed` is a pytree node whose children are the buffers; the layout is its static aux data. So
every element-wise rule runs unchanged on a `Packed` tree, the state of a packed transformation
holds `Packed` moments that stay packed between steps, and `jax.jit` sees the same structure each
step. `chain` packs the gradients (and params) on entry and unpacks the updates on exit; users
who keep their params packed (`pack(params)`, and `unpack` inside the loss) skip even that.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import tree as tree_util
from gradchain._scalar_block import is_concrete, put_like

PyTree = Any

# Leaves above this many elements stay standalone under automatic packing: one kernel over 64K
# elements already amortises its launch, and packing it would add a copy of it each step.
AUTO_MAX_LEAF_SIZE = 1 << 16
# ... and a group of fewer small leaves than this stays unpacked: a few kernels cost little, and
# packing them would cost a copy of the gradients and of the updates.
AUTO_MIN_GROUP_SIZE = 32


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """Which leaves of a tree share which buffer (static: hashable, compared by value).

    Attributes:
        treedef: the structure of the unpacked tree.
        shapes, dtypes: one per leaf, in `jax.tree.leaves` order.
        buffers: for each buffer, the indices of its leaves in order.
        packed: for each buffer, True if it is a flat concatenation of its leaves, False if it is a
            single standalone leaf kept as it is.
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    buffers: tuple[tuple[int, ...], ...]
    packed: tuple[bool, ...]

    @functools.cached_property
    def _key(self) -> tuple:
        return (self.treedef, self.shapes, self.dtypes, self.buffers, self.packed)

    @functools.cached_property
    def _hash(self) -> int:
        # A jitted step hashes its arguments' structure on every call: hash a big layout once.
        return hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Layout) and self._hash == other._hash and self._key == other._key)

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def num_leaves(self) -> int:
        return len(self.shapes)

    def abstract_tree(self) -> PyTree:
        """The unpacked tree as `jax.ShapeDtypeStruct` leaves (for structure checks and messages)."""
        leaves = [jax.ShapeDtypeStruct(s, d) for s, d in zip(self.shapes, self.dtypes, strict=True)]
        return self.treedef.unflatten(leaves)

    def describe(self) -> str:
        n_packed = sum(len(ix) for ix, p in zip(self.buffers, self.packed, strict=True) if p)
        return (
            f"{self.num_leaves} leaves in {len(self.buffers)} buffers "
            f"({n_packed} packed into {sum(self.packed)}, {self.num_leaves - n_packed} standalone)"
        )


class Packed:
    """A tree of arrays stored as a few contiguous buffers; a pytree whose leaves are the buffers.

    Build one with `pack`, get the tree back with `unpack` (or `.unpack()`). Any gradchain
    transformation, `apply_updates` and `jax.tree.map` work on `Packed` trees directly, one kernel
    per buffer instead of one per leaf.

    Attributes:
        buffers: the arrays: 1-D concatenations of small leaves of one dtype and placement, or
            standalone leaves kept as they are.
        layout: the static `Layout` (which leaf lives where).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
        packed = gc.pack(params)
        assert len(packed.buffers) == 1 and packed.buffers[0].shape == (9,)
        assert (gc.unpack(packed)["w"] == 1).all()
        ```
    """

    __slots__ = ("buffers", "layout")

    def __init__(self, buffers: Sequence[Any], layout: Layout):
        self.buffers = tuple(buffers)
        self.layout = layout

    def unpack(self) -> PyTree:
        """The tree this was packed from (see `unpack`)."""
        return unpack(self)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{getattr(b, 'dtype', '?')}{list(getattr(b, 'shape', ()))}" for b in self.buffers)
        return f"Packed({self.layout.describe()}: {shapes})"


def _flatten_with_keys(p: Packed):
    return tuple((jax.tree_util.SequenceKey(j), b) for j, b in enumerate(p.buffers)), p.layout


jax.tree_util.register_pytree_with_keys(
    Packed,
    _flatten_with_keys,
    lambda layout, buffers: Packed(buffers, layout),
    flatten_func=lambda p: (p.buffers, p.layout),
)


def is_packed(x: Any) -> bool:
    return isinstance(x, Packed)


def _placement_key(x: Any) -> Any:
    """Leaves with equal keys may share a buffer; None means the leaf must stay standalone."""
    if isinstance(x, jax.core.Tracer):
        # Under tracing only explicit sharding is visible: keep explicitly sharded leaves apart.
        spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
        return "unplaced" if spec is None or all(axis is None for axis in spec) else None
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        return "unplaced"
    if not sharding.is_fully_replicated:
        return None
    committed = getattr(x, "committed", True)
    return (tuple(sorted(d.id for d in sharding.device_set)), committed)


def make_layout(
    tree: PyTree,
    *,
    max_leaf_size: int | None = AUTO_MAX_LEAF_SIZE,
    min_group_size: int = 2,
    tags: Sequence[Any] | None = None,
) -> Layout:
    """Group the leaves of `tree` into buffers.

    Leaves share a buffer when they have the same dtype, the same placement and the same tag (the
    chain tags leaves with their mask values, so a masked rule applies to whole buffers). Floating
    leaves only; leaves over `max_leaf_size` elements, sharded leaves, and groups of one stay
    standalone, as do groups of fewer than `min_group_size` leaves. Buffers are ordered by their
    first leaf.
    """
    leaves, treedef = jax.tree.flatten(tree)
    shapes = tuple(tuple(int(d) for d in jnp.shape(x)) for x in leaves)
    dtypes = tuple(jnp.dtype(getattr(x, "dtype", None) or jnp.result_type(x)) for x in leaves)
    groups: dict[Any, list[int]] = {}
    order: list[Any] = []
    for i, (x, shape, dtype) in enumerate(zip(leaves, shapes, dtypes, strict=True)):
        place = _placement_key(x)
        small = max_leaf_size is None or math.prod(shape) <= max_leaf_size
        if place is None or not small or not jnp.issubdtype(dtype, jnp.inexact):
            key: Any = ("standalone", i)
        else:
            key = ("group", dtype, place, None if tags is None else tags[i])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(i)
    buffers, packed = [], []
    for key in order:
        members = groups[key]
        if key[0] == "group" and len(members) >= max(min_group_size, 2):
            buffers.append(tuple(members))
            packed.append(True)
        else:
            buffers.extend((i,) for i in members)
            packed.extend(False for _ in members)
    # Keep buffers in first-leaf order, so the packed state reads like the params.
    by_first = sorted(range(len(buffers)), key=lambda j: buffers[j][0])
    return Layout(treedef, shapes, dtypes, tuple(buffers[j] for j in by_first), tuple(packed[j] for j in by_first))


# Eagerly, a group of more leaves than this is concatenated or split on the host. XLA compiles a
# concatenation or split of N pieces into code that grows with N (46 s for 20,000 leaves on CPU;
# the split, 170 s), while numpy does either in milliseconds plus one transfer each way.
HOST_MIN_PIECES = 64


def _concat(parts: list[Any]) -> Any:
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in parts):
        size = sum(math.prod(x.shape) for x in parts)
        return jax.ShapeDtypeStruct((size,), parts[0].dtype, sharding=getattr(parts[0], "sharding", None))
    if len(parts) >= HOST_MIN_PIECES and all(is_concrete(x) for x in parts):
        host = jax.device_get(parts)
        return put_like(np.concatenate([np.ravel(x) for x in host]), parts[0])
    return jnp.concatenate([jnp.ravel(x) for x in parts])


def _split(buffer: Any, sizes: list[int], shapes: list[tuple[int, ...]]) -> list[Any]:
    if isinstance(buffer, jax.ShapeDtypeStruct):
        return [jax.ShapeDtypeStruct(s, buffer.dtype, sharding=buffer.sharding) for s in shapes]
    if len(sizes) >= HOST_MIN_PIECES and is_concrete(buffer):
        host = np.asarray(jax.device_get(buffer))
        pieces = np.split(host, np.cumsum(sizes)[:-1])
        return put_like([x.reshape(s) for x, s in zip(pieces, shapes, strict=True)], buffer)
    return [x.reshape(s) for x, s in zip(jax.lax.split(buffer, sizes), shapes, strict=True)]


def check_matches(layout: Layout, tree: PyTree, *, what: str, where: str) -> None:
    """Raise ValueError, naming leaf paths, if `tree` does not have the layout's structure and shapes."""
    if jax.tree.structure(tree) == layout.treedef and all(
        jnp.shape(x) == s for x, s in zip(jax.tree.leaves(tree), layout.shapes, strict=True)
    ):
        return
    tree_util.check_same_structure(layout.abstract_tree(), tree, expected_name="state", actual_name=what, where=where)
    raise ValueError(f"{where}: the {what} tree does not match the packed state's tree")  # pragma: no cover


def pack(tree: PyTree, layout: Layout | None = None, *, max_leaf_size: int | None = None) -> Packed:
    """Pack the leaves of `tree` into a few contiguous buffers.

    Leaves of one dtype and one placement share a 1-D buffer (in tree order); sharded leaves and,
    with `max_leaf_size`, leaves larger than that stay standalone. Differentiable: `unpack` is a
    split whose transpose is a concatenation, so `jax.grad` of a loss of `unpack(packed)` comes out
    packed.

    Args:
        tree: a pytree of arrays (or `jax.ShapeDtypeStruct`s).
        layout: pack like this (e.g. gradients like the params: `pack(grads, params_packed.layout)`);
            the tree must match it. None derives one from `tree`.
        max_leaf_size: leaves with more elements stay standalone (None packs them all).

    Returns:
        A `Packed` tree.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
        packed = gc.pack(params)
        tx = gc.adam(1e-2)
        state = tx.init(packed)

        def loss(p):
            p = gc.unpack(p)
            return jnp.sum((jnp.ones(3) @ p["w"] + p["b"] - 1.0) ** 2)

        grads = jax.grad(loss)(packed)           # packed like the params
        updates, state = tx.update(grads, state, packed)
        packed = gc.apply_updates(packed, updates)
        assert gc.unpack(packed)["w"].shape == (3, 2)
        ```
    """
    if isinstance(tree, Packed):
        return tree
    if layout is None:
        layout = make_layout(tree, max_leaf_size=max_leaf_size)
    else:
        check_matches(layout, tree, what="packed", where="pack")
    leaves = layout.treedef.flatten_up_to(tree)
    buffers = [
        _concat([leaves[i] for i in members]) if is_packed_buffer else leaves[members[0]]
        for members, is_packed_buffer in zip(layout.buffers, layout.packed, strict=True)
    ]
    return Packed(buffers, layout)


def unpack(packed: PyTree) -> PyTree:
    """The tree a `Packed` tree was made from; in any other tree, every `Packed` node unpacked.

    So `unpack(state)` shows an optimizer state with its moments laid out like the params.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tree = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
        back = gc.unpack(gc.pack(tree))
        assert (back["a"] == tree["a"]).all() and back["b"].shape == (2, 2)

        tx = gc.adam(1e-3, pack=True)
        state = gc.unpack(tx.init(tree))
        assert state[0].mu["b"].shape == (2, 2)
        ```
    """
    if not isinstance(packed, Packed):
        if any(isinstance(x, Packed) for x in jax.tree.leaves(packed, is_leaf=is_packed)):
            return jax.tree.map(unpack, packed, is_leaf=is_packed)
        return packed
    layout = packed.layout
    leaves: list[Any] = [None] * layout.num_leaves
    for buffer, members, is_packed_buffer in zip(packed.buffers, layout.buffers, layout.packed, strict=True):
        if not is_packed_buffer:
            leaves[members[0]] = buffer
            continue
        parts = _split(buffer, [layout.sizes[i] for i in members], [layout.shapes[i] for i in members])
        for i, part in zip(members, parts, strict=True):
            leaves[i] = part
    return layout.treedef.unflatten(leaves)


def per_buffer(layout: Layout, values: Sequence[Any]) -> list[Any]:
    """Per-leaf values (mask bits) per buffer: the common value, or the list when they differ."""
    out = []
    for members in layout.buffers:
        vals = [values[i] for i in members]
        out.append(vals[0] if all(v == vals[0] for v in vals) else vals)
    return out


def expand(layout: Layout, j: int, per_leaf: Sequence[Any]) -> jax.Array:
    """A per-element array for buffer `j` from one value per leaf of it."""
    members = layout.buffers[j]
    return jnp.concatenate([jnp.full(layout.sizes[i], v) for i, v in zip(members, per_leaf, strict=True)])


# ---------------------------------------------------------------------------------------------
# Which transformations can run on a packed tree.


class PackInfo(NamedTuple):
    """What a chain needs to know to run a transformation on packed buffers.

    owner: its public name (errors name it); uses_params: it reads the params (the chain packs them
    too); complex_ok: whether it accepts complex leaves; mask: its mask (a tree, a prefix, or a
    function of the params) or None. The chain tags leaves by their mask values so that each
    buffer is wholly in or out.
    """

    owner: str
    uses_params: bool = False
    complex_ok: bool = True
    mask: Any = None
    members: tuple[PackInfo, ...] = ()


def mark_packable(update: Callable, info: PackInfo) -> Callable:
    """Declare that `update` works on `Packed` trees (its rule does not depend on leaf boundaries)."""
    update.gradchain_pack_info = info  # type: ignore[attr-defined]
    return update


def pack_info(tx: Any) -> PackInfo | None:
    return getattr(getattr(tx, "update", None), "gradchain_pack_info", None)


def flat_infos(info: PackInfo) -> list[PackInfo]:
    if info.members:
        return [leaf for member in info.members for leaf in flat_infos(member)]
    return [info]


def find_layout(state: PyTree) -> Layout | None:
    """The layout of the first `Packed` node in a state, or None when nothing in it is packed."""
    for node in jax.tree.leaves(state, is_leaf=is_packed):
        if isinstance(node, Packed):
            return node.layout
    return None
