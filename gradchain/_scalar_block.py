"""The scalar block of a compact state: which scalars go in, and how they are written and read.

A chain's scalars (0-d arrays of a float, integer or bool dtype) are kept in one 1-D float array
(float32, or float64 when a scalar is), in groups: floats, bools and integers of up to 16 bits by
value, one entry each; each wider integer dtype as 16-bit pieces, piece-major, each an integer a
float holds exactly. One group is one vector op each way, so a step adds no kernels per scalar.
`Layout` is the static description (where each scalar lives, and how to rebuild the states around
them, see `_compact.py`); `pack_block` and `unpack_block` work on host arrays with numpy, on traced
ones with jax.numpy, the same layout either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Layout", "is_concrete", "make_layout", "pack_block", "plain", "put_like", "scalar_dtype", "unpack_block"]


def is_concrete(x: Any) -> bool:
    """A materialised array (not a tracer, not a `ShapeDtypeStruct`) whose data this process can read."""
    return isinstance(x, np.ndarray | np.generic) or (
        isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_fully_addressable
    )


def put_like(values: Any, like: Any) -> Any:
    """Host arrays (a pytree) placed where `like` is: on its devices if committed there, else unplaced.

    `values` may differ from `like` in rank (the scalars of a block): a replicated named sharding
    is then restated for them (`P()`), as its spec names axes of `like`.
    """
    if isinstance(like, jax.Array) and like.committed:
        sharding = like.sharding
        if isinstance(sharding, jax.sharding.NamedSharding) and sharding.is_fully_replicated:
            sharding = replicated(sharding)
        return jax.device_put(values, sharding)
    return jax.device_put(values)


def replicated(sharding: Any) -> Any:
    """A fully replicated named sharding, for values of any rank."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(), memory_kind=sharding.memory_kind)
    return sharding


def slots(dtype: np.dtype) -> int | None:
    """How many block entries a scalar of `dtype` takes; None: it stays a leaf of its own.

    A float (16, 32 or 64 bits) or a bool takes one, converted by value (exact: the block is at
    least as wide). An integer is split into 16-bit pieces, one per entry, each an integer that
    any float of 32 bits or more holds exactly: so counts survive without a bitcast, and the float
    entries stay differentiable (a meta-gradient through the learning rate flows into the block).
    """
    if dtype == np.bool_ or jnp.issubdtype(dtype, jnp.floating):
        return 1
    if jnp.issubdtype(dtype, jnp.integer):
        return max(1, dtype.itemsize // 2)
    return None


def scalar_dtype(x: Any) -> np.dtype | None:
    """The dtype of `x` if it goes into the block, else None."""
    if not isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct):
        return None
    if jnp.ndim(x) != 0:
        return None
    try:
        dtype = jnp.dtype(x.dtype)
    except TypeError:  # extended dtypes (PRNG keys)
        return None
    return dtype if slots(dtype) is not None else None


def block_dtype(dtypes: Sequence[np.dtype]) -> np.dtype:
    wide = any(jnp.issubdtype(d, jnp.floating) and d.itemsize == 8 for d in dtypes)
    return jnp.dtype(jnp.float64 if wide else jnp.float32)


def _bitcast(xp: Any, x: Any, dtype: np.dtype) -> Any:
    """Reinterpret an integer array as the integer type of the same width and other signedness."""
    return x.view(dtype) if xp is np else jax.lax.bitcast_convert_type(x, dtype)


def _group(dtype: np.dtype) -> str:
    """Scalars are encoded in groups: "value" (floats, bools and integers of up to 16 bits, one
    entry each, by value), or one group per wider integer dtype (16-bit pieces, piece-major)."""
    if slots(dtype) == 1:
        return "value"
    return dtype.name


def _encode_group(xp: Any, group: str, members: list[Any], block: np.dtype) -> list[Any]:
    """The block entries of one group, as 1-D arrays, from its members' values (0-d each)."""
    if group == "value":
        out = []
        for x in members:
            dtype = jnp.dtype(x.dtype)
            if jnp.issubdtype(dtype, jnp.integer) and dtype.kind == "i":
                x = _bitcast(xp, x, jnp.dtype(f"uint{8 * dtype.itemsize}"))
            out.append(x.astype(block))
        return [xp.stack(out)]
    dtype = jnp.dtype(group)
    unsigned = jnp.dtype(f"uint{8 * dtype.itemsize}")
    u = xp.stack(members)
    u = u if dtype == unsigned else _bitcast(xp, u, unsigned)
    n = slots(dtype)
    return [((u >> (16 * (n - 1 - k))) & 0xFFFF).astype(block) for k in range(n)]


def _decode_value(x: Any, dtype: np.dtype, xp: Any) -> Any:
    if dtype == np.bool_:
        return x != 0
    if jnp.issubdtype(dtype, jnp.floating) or dtype.kind == "u":
        return x.astype(dtype)
    return _bitcast(xp, x.astype(jnp.dtype(f"uint{8 * dtype.itemsize}")), dtype)


def _decode_group(xp: Any, group: str, pieces: list[Any]) -> Any:
    """A wide integer group's values (1-D, or with leading axes) from its pieces."""
    dtype = jnp.dtype(group)
    unsigned = jnp.dtype(f"uint{8 * dtype.itemsize}")
    u = pieces[0].astype(unsigned)
    for piece in pieces[1:]:
        u = (u << 16) | piece.astype(unsigned)
    return u if dtype == unsigned else _bitcast(xp, u, dtype)


class Layout:
    """The static part of a compact state: where each scalar of each transformation's state lives.

    `plans[i]` says how to rebuild transformation i's state from what stayed a leaf and the
    scalars (see `_plan`); `specs` holds one `(dtype name, group, index in the group)` per scalar,
    in order; `groups` the `(group, members, first entry)` of each group (see `_group`), in block
    order; `dtype` is the block's (float32, or float64 when a scalar is).
    """

    __slots__ = ("_hash", "dtype", "groups", "keys", "plans", "size", "specs")

    def __init__(self, keys, plans, specs, dtype):
        self.keys = keys
        self.plans = plans
        self.specs = specs
        self.dtype = dtype
        counts: dict[str, int] = {}
        for _, group, _ in specs:
            counts[group] = counts.get(group, 0) + 1
        groups, start = [], 0
        for group in sorted(counts, key=lambda g: (g != "value", g)):
            groups.append((group, counts[group], start))
            start += counts[group] * (1 if group == "value" else slots(jnp.dtype(group)))
        self.groups = tuple(groups)
        self.size = start
        self._hash = hash((keys, plans, specs, dtype))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, Layout)
            and self._hash == other._hash
            and (self.keys, self.plans, self.specs, self.dtype) == (other.keys, other.plans, other.specs, other.dtype)
        )

    def __len__(self) -> int:
        return len(self.plans)


# One object per distinct layout: a jitted step compares its arguments' tree structure with the
# one it was compiled for on every call, and an identical layout object makes that comparison an
# identity check instead of a walk over the plans (the state an `init` returns and the one a step
# returns are built apart, but share their layout).
_LAYOUTS: dict[Layout, Layout] = {}


def make_layout(keys: tuple[str, ...] | None, plans: tuple, dtypes: Sequence[np.dtype]) -> Layout:
    """The (interned) layout of a block holding scalars of `dtypes`, in order."""
    specs, seen = [], {}
    for dtype in dtypes:
        group = _group(dtype)
        specs.append((dtype.name, group, seen.get(group, 0)))
        seen[group] = seen.get(group, 0) + 1
    layout = Layout(keys, plans, tuple(specs), block_dtype(dtypes).name)
    return _LAYOUTS.setdefault(layout, layout)


def pack_block(values: list[Any], layout: Layout) -> Any:
    block = jnp.dtype(layout.dtype)
    if any(isinstance(v, jax.ShapeDtypeStruct) for v in values):
        sharding = getattr(values[0], "sharding", None)
        return jax.ShapeDtypeStruct((layout.size,), block, sharding=None if sharding is None else replicated(sharding))
    concrete = all(is_concrete(v) for v in values)
    xp = np if concrete else jnp
    like = values[0]
    values = [np.asarray(v) for v in jax.device_get(values)] if concrete else [jnp.asarray(v) for v in values]
    members: dict[str, list[Any]] = {}
    for v, (dtype, group, _) in zip(values, layout.specs, strict=True):
        members.setdefault(group, []).append(v.astype(dtype))
    parts = [part for group, _, _ in layout.groups for part in _encode_group(xp, group, members[group], block)]
    out = xp.concatenate(parts) if len(parts) > 1 else parts[0]
    return put_like(out, like) if concrete else out


def plain(x: Any) -> Any:
    """The array inside a framework's wrapper (flax NNX keeps each state leaf in a `Variable`)."""
    if isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct):
        return x
    leaves = jax.tree.leaves(x)
    return leaves[0] if len(leaves) == 1 else x


def unpack_block(block: Any, layout: Layout) -> list[Any]:
    """The scalars back from the block; leading axes (a state made by `jax.vmap(tx.init)`) are kept."""
    block = plain(block)
    batch = tuple(block.shape[:-1])
    dtypes = [jnp.dtype(d) for d, _, _ in layout.specs]
    if isinstance(block, jax.ShapeDtypeStruct):
        sharding = replicated(block.sharding) if block.sharding is not None and not batch else block.sharding
        return [jax.ShapeDtypeStruct(batch, d, sharding=sharding) for d in dtypes]
    if isinstance(block, jax.core.ShapedArray):  # a state of avals, `jax.tree.map(jax.typeof, state)`
        return [jax.core.ShapedArray(batch, d) for d in dtypes]
    concrete = is_concrete(block)
    xp = np if concrete else jnp
    entries = np.asarray(jax.device_get(block)) if concrete else block
    decoded = {}
    for group, count, start in layout.groups:
        if group == "value":
            decoded[group] = (entries, start)
        else:
            n = slots(jnp.dtype(group))
            pieces = [entries[..., start + k * count : start + (k + 1) * count] for k in range(n)]
            decoded[group] = (_decode_group(xp, group, pieces), 0)
    out = []
    for dtype, (_, group, index) in zip(dtypes, layout.specs, strict=True):
        source, start = decoded[group]
        x = source[..., start + index]
        out.append(_decode_value(x, dtype, xp) if group == "value" else x)
    return put_like([np.asarray(x) for x in out], block) if concrete else out
