"""Compact chain states: every scalar of a chain's state in one small array.

A chain of ingredients keeps, next to its per-parameter buffers, a handful of scalars per
ingredient: step counts, hyperparameters, a recorded norm. Kept as separate leaves, each costs a
buffer to pass, flatten and donate on every jitted step, which on a small model is most of what
the step costs. `ChainState` keeps them in one float array instead, the "scalar block", with the
layout (which leaf of which ingredient lives in which entries, and its dtype) as static tree
metadata. Its pytree children are the non-scalar leaves and the block, so a jitted step sees one
scalar buffer per chain, however many ingredients it has; nested chains share the outermost one.

For Python code nothing changes: a `ChainState` is a sequence of the ingredients' states
(`state[0].mu`, `state[1].count`, iteration, `len`), rebuilt from the block on first access. The
rebuilding and the packing are slices, conversions and one concatenation inside the jitted step;
from a jitted step's output to its next input the state is passed through untouched.

Which leaves go into the block: 0-d arrays of a float dtype, an integer dtype or bool. The block
is float32 (float64 when a scalar is float64): floats go in by value, exactly and differentiably
(a meta-gradient with respect to a learning rate held in the state flows through it), integers
as 16-bit pieces, each exact in a float, and bools as 0 or 1. They come back with their dtype and
not weakly typed (a weakly typed scalar, such as `jnp.asarray(0.0)`, would otherwise flip
between the block and a leaf of its own as it goes through a step, and the tree structure with
it). The rest (complex scalars, keys, Python numbers, every non-scalar) stay leaves.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from gradchain._scalar_block import Layout, make_layout, pack_block, scalar_dtype, unpack_block

PyTree = Any

__all__ = [
    "ChainState",
    "NamedChainState",
    "from_view",
    "register_compact_state",
    "restore_from_view",
    "to_view",
]

_BLOCK_KEY = "scalars"


# ---------------------------------------------------------------------------------------------
# Views: a compact state shown as its ingredients' states (what `hyperparams` and friends walk).


class ChainView(tuple):
    """A `ChainState` as a plain pytree of its ingredients' states (children keyed 0, 1, ...)."""

    __slots__ = ()


class NamedChainView(dict):
    """A `NamedChainState` as a plain pytree of its ingredients' states (children keyed by name).

    `kind` is the class of the state it shows (`NamedChainState`, or a subclass such as
    `PartitionState`), so that `from_view` gives that class back.
    """

    def __init__(self, items: Any = (), kind: type | None = None):
        super().__init__(items)
        self.kind = kind or NamedChainState


jax.tree_util.register_pytree_with_keys(
    ChainView,
    lambda v: (tuple((jax.tree_util.SequenceKey(i), x) for i, x in enumerate(v)), None),
    lambda _, children: ChainView(children),
    flatten_func=lambda v: (tuple(v), None),
)
jax.tree_util.register_pytree_with_keys(
    NamedChainView,
    lambda v: (tuple((jax.tree_util.DictKey(k), x) for k, x in v.items()), (tuple(v), v.kind)),
    lambda aux, children: NamedChainView(zip(aux[0], children, strict=True), aux[1]),
    flatten_func=lambda v: (tuple(v.values()), (tuple(v), v.kind)),
)


def _is_compact(x: Any) -> bool:
    return isinstance(x, _CompactState)


def _is_view(x: Any) -> bool:
    return isinstance(x, ChainView | NamedChainView)


def _map_nodes(tree: PyTree, stop: Any, fn: Any) -> PyTree:
    """`tree` with `fn` applied to its outermost nodes for which `stop` holds; unchanged parts are kept as they are.

    Keeping them (not rebuilding every container, as `jax.tree.map` would) means a buffer read
    through a view is the object the state holds.
    """
    if stop(tree):
        return fn(tree)
    children, treedef = _one_level(tree)
    if treedef.num_nodes == 1 and treedef.num_leaves <= 1:  # a leaf, None or an empty node
        return tree
    new = [_map_nodes(child, stop, fn) for child in children]
    if all(a is b for a, b in zip(new, children, strict=True)):
        return tree
    return treedef.unflatten(new)


def to_view(tree: PyTree) -> PyTree:
    """`tree` with every compact state in it (nested ones too) shown as a view of its ingredients' states.

    The view is an ordinary pytree: its leaves are the scalars and buffers themselves, at the paths
    the ingredients' states give them (`0/count`, `1/mu/w`). `from_view` turns it back.
    """
    return _map_nodes(tree, _is_compact, lambda state: state.view())


def from_view(tree: PyTree) -> PyTree:
    """The inverse of `to_view`: every view in `tree` made a compact state again."""

    def back(view: Any) -> Any:
        if isinstance(view, NamedChainView):
            return view.kind({k: from_view(v) for k, v in view.items()})
        return ChainState(tuple(from_view(v) for v in view))

    return _map_nodes(tree, _is_view, back)


def restore_from_view(original: PyTree, view: PyTree) -> PyTree:
    """`from_view(view)`, keeping the leaf wrappers of `original`'s compact states (see `replace_scalars`).

    For code that takes a state's view, changes scalars in it and gives the state back
    (`set_hyperparams`): under flax NNX, whose optimizer keeps each state leaf in a `Variable`, the
    state it gets back still holds those Variables.
    """

    def back(old: Any, new: Any) -> Any:
        return old.replace_scalars(from_view(new)) if _is_compact(old) else new

    if view is original:
        return original
    return jax.tree.map(back, original, view, is_leaf=_is_compact)


_KEEP = ("keep",)
_HOLE = ("scalar",)


def _one_level(node: Any) -> tuple[list[Any], Any]:
    """The direct children of a pytree node (None children included) and the node's one-level structure."""
    return jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)


def _plan(node: Any, scalars: list[Any]) -> tuple[Any, tuple]:
    """Split `node` into what stays a leaf (its skeleton) and its block scalars (appended to `scalars`).

    Returns the skeleton, `node` with each scalar and each subtree of scalars alone replaced by
    None, and a static plan to rebuild `node` from the skeleton and the scalars:

    - `("keep",)`: the skeleton holds this subtree as it is (it has no scalars);
    - `("scalar",)`: one scalar;
    - `("scalars", treedef, n)`: a subtree of n scalars and nothing else (a `Hyperparams`, a count);
    - `("node", treedef, plans)`: a node holding both, `treedef` its one-level structure;
    - `("chain", plans)` and `("named", names, plans)`: a nested chain's view, whose skeleton is a
      plain tuple (a dict) of its states' skeletons, so that code walking a state meets only
      ordinary containers there.

    Subtrees without scalars are kept whole, never described: a framework may wrap their leaves
    (flax NNX puts each in a `Variable`, then takes it out again), and their plan stays the same.
    """
    if scalar_dtype(node) is not None:
        scalars.append(node)
        return None, _HOLE
    if isinstance(node, NamedChainView):
        planned = [_plan(child, scalars) for child in node.values()]
        return dict(zip(node, (s for s, _ in planned), strict=True)), (
            "named",
            tuple(node),
            tuple(p for _, p in planned),
            node.kind,
        )
    if isinstance(node, ChainView):
        planned = [_plan(child, scalars) for child in node]
        return tuple(s for s, _ in planned), ("chain", tuple(p for _, p in planned))
    leaves = jax.tree.leaves(node, is_leaf=_is_view)
    is_scalar = [scalar_dtype(leaf) is not None for leaf in leaves]
    if not any(is_scalar) and not any(map(_is_view, leaves)):
        return node, _KEEP
    leaves = jax.tree.leaves(node)
    is_scalar = [scalar_dtype(leaf) is not None for leaf in leaves]
    if all(is_scalar):
        scalars.extend(leaves)
        return None, ("scalars", jax.tree.structure(node), len(leaves))
    children, treedef = _one_level(node)
    planned = [_plan(child, scalars) for child in children]
    return treedef.unflatten([s for s, _ in planned]), ("node", treedef, tuple(p for _, p in planned))


def _rebuild_link(skeleton: Any, plan: tuple, scalars: Iterator[Any]) -> Any:
    kind = plan[0]
    if kind == "keep":
        return skeleton
    if kind == "scalar":
        return next(scalars)
    if kind == "scalars":
        return plan[1].unflatten([next(scalars) for _ in range(plan[2])])
    if kind == "chain":
        return ChainView(_rebuild_link(c, p, scalars) for c, p in zip(skeleton, plan[1], strict=True))
    if kind == "named":
        _, names, plans, kind = plan
        return NamedChainView(
            ((n, _rebuild_link(skeleton[n], p, scalars)) for n, p in zip(names, plans, strict=True)), kind
        )
    _, treedef, plans = plan
    children, _ = _one_level(skeleton)
    if len(children) != len(plans):
        raise ValueError(f"a compact state's skeleton has {len(children)} children where {len(plans)} were stored")
    return treedef.unflatten([_rebuild_link(c, p, scalars) for c, p in zip(children, plans, strict=True)])


# ---------------------------------------------------------------------------------------------
# Packing the scalars into the block and back.


def _encode(links: Sequence[Any], keys: tuple[str, ...] | None) -> tuple[tuple[Any, ...], Layout]:
    skeletons, plans, values = [], [], []
    for link in links:
        skeleton, plan = _plan(to_view(link), values)
        skeletons.append(skeleton)
        plans.append(plan)
    layout = make_layout(keys, tuple(plans), [scalar_dtype(value) for value in values])
    # A state of scalars alone (a count and hyperparameters) leaves nothing of its own: not a child.
    children = tuple(skeleton for skeleton, plan in zip(skeletons, plans, strict=True) if _has_skeleton(plan))
    if values:
        children += (pack_block(values, layout),)
    return children, layout


def _has_skeleton(plan: tuple) -> bool:
    """Whether a transformation's state keeps anything beside its scalars (else it has no child)."""
    return plan[0] not in ("scalar", "scalars")


def _decode(children: Sequence[Any], layout: Layout, scalars: Sequence[Any]) -> tuple[Any, ...]:
    values, skeletons = iter(scalars), iter(children)
    return tuple(
        from_view(_rebuild_link(next(skeletons) if _has_skeleton(plan) else None, plan, values))
        for plan in layout.plans
    )


# ---------------------------------------------------------------------------------------------
# The states.


class _CompactState:
    __slots__ = ("_children", "_layout", "_links")

    def _init_links(self, links: tuple[Any, ...]) -> None:
        self._links = links
        self._children = None
        self._layout = None

    @classmethod
    def _lazy(cls, layout: Layout, children: Sequence[Any]) -> _CompactState:
        self = object.__new__(cls)
        self._links = None
        self._children = tuple(children)
        self._layout = layout
        return self

    # Either form is computed from the other when first needed, and kept unless it was computed
    # under a trace: a state may outlive the trace it was read in (a `lax.cond` branch reading a
    # state from outside), and must not keep that trace's values.

    def _states(self) -> tuple[Any, ...]:
        if self._links is not None:
            return self._links
        scalars = unpack_block(self._children[-1], self._layout) if self._layout.size else []
        links = _decode(self._children, self._layout, scalars)
        if not any(isinstance(x, jax.core.Tracer) for x in scalars):
            self._links = links
        return links

    def _compact(self) -> tuple[tuple[Any, ...], Layout]:
        if self._children is not None:
            return self._children, self._layout
        children, layout = _encode(self._links, self._link_keys())
        if not (layout.size and isinstance(children[-1], jax.core.Tracer)):
            self._children, self._layout = children, layout
        return children, layout

    def _link_keys(self) -> tuple[str, ...] | None:
        return None

    def __len__(self) -> int:
        return len(self._links) if self._links is not None else len(self._layout)

    @property
    def scalar_block(self) -> Any:
        """The 1-D float array holding every scalar of this state (None when it has none)."""
        children, layout = self._compact()
        return children[-1] if layout.size else None

    def replace_scalars(self, new: _CompactState) -> _CompactState:
        """`new`, whose non-scalar leaves are this state's, with this state's leaves and block wrappers kept.

        For code that changes scalars only (`set_hyperparams`): a framework that wraps each state
        leaf (flax NNX) gets its own wrappers back, holding the new block.
        """
        children, layout = self._compact()
        new_children, new_layout = new._compact()
        if new_layout != layout or not layout.size:
            return new
        old_block, block = children[-1], new_children[-1]
        if not isinstance(old_block, jax.Array | np.ndarray | jax.ShapeDtypeStruct):
            block = jax.tree.map(lambda _: block, old_block)
        return type(self)._lazy(layout, (*children[:-1], block))

    def view(self) -> Any:
        raise NotImplementedError

    def __reduce__(self):
        return (_rebuild, (type(self), self._link_keys(), self._states()))


def _rebuild(cls: type, keys: tuple[str, ...] | None, links: tuple[Any, ...]) -> _CompactState:
    return cls(links) if keys is None else cls(dict(zip(keys, links, strict=True)))


class ChainState(_CompactState, Sequence):
    """The state of a `chain`: one state per transformation, its scalars kept in one array.

    Reads like the tuple of the transformations' states that optax's `chain` keeps: `state[0]`,
    `state[1].mu`, `len(state)`, iteration and unpacking all give the transformations' own states.
    As a pytree it is smaller: its children are the non-scalar leaves of those states and one
    float array, `scalar_block`, holding every step count, hyperparameter and other scalar of
    the chain (nested chains included), so a jitted step passes, flattens and donates one scalar
    buffer instead of one per scalar. The layout is static tree metadata: changing a
    hyperparameter with `set_hyperparams` does not recompile.

    `jax.tree.map` over a state sees that array as one leaf (a cast or a `where` applies to it as a
    whole); `gc.hyperparams`, `set_hyperparams` and `gc.tree.find_nodes` see the transformations'
    states.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
        state = gc.adamw(1e-3).init(params)
        assert isinstance(state, gc.ChainState) and len(state) == 3
        assert state[0].mu["w"].shape == (3,) and int(state[0].count) == 0
        # mu and nu for both leaves, and one array for the counts and the five hyperparameters
        assert len(jax.tree.leaves(state)) == 5
        assert state.scalar_block.dtype == jnp.float32  # counts go in as exact 16-bit pieces
        ```
    """

    __slots__ = ()

    def __init__(self, states: Sequence[Any] = ()):
        self._init_links(tuple(states))

    def __getitem__(self, index):
        return self._states()[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._states())

    def __eq__(self, other: object) -> bool:
        # As a tuple of the states would compare, without rebuilding them: a state of avals or
        # shardings (`jax.tree.map(f, state)`) compares like one of arrays.
        if isinstance(other, ChainState):
            mine, layout = self._compact()
            theirs, other_layout = other._compact()
            return layout == other_layout and mine == theirs
        if isinstance(other, tuple):
            return tuple(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ChainState({self._states()!r})"

    def view(self) -> ChainView:
        return ChainView(to_view(link) for link in self._states())


class NamedChainState(_CompactState, Mapping):
    """The state of a `named_chain`: a mapping `name -> state`, its scalars kept in one array.

    Like `ChainState`, keyed by the names given to `named_chain` (in their order).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.named_chain(("adam", gc.scale_by_adam()), ("lr", gc.scale_by_learning_rate(1e-3)))
        state = tx.init({"w": jnp.zeros(3)})
        assert list(state) == ["adam", "lr"] and state["adam"].nu["w"].shape == (3,)
        ```
    """

    __slots__ = ("_names",)

    def __init__(self, states: Mapping[str, Any]):
        self._names = tuple(states)
        self._init_links(tuple(states.values()))

    @classmethod
    def _lazy(cls, layout: Layout, children: Sequence[Any]) -> NamedChainState:
        self = super()._lazy(layout, children)
        self._names = layout.keys
        return self

    def _link_keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, name: str) -> Any:
        try:
            index = self._names.index(name)
        except ValueError:
            raise KeyError(name) from None
        return self._states()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __repr__(self) -> str:
        return f"NamedChainState({dict(zip(self._names, self._states(), strict=True))!r})"

    def view(self) -> NamedChainView:
        return NamedChainView(zip(self._names, (to_view(link) for link in self._states()), strict=True), type(self))


def _flatten(state: _CompactState) -> tuple[tuple[Any, ...], Layout]:
    return state._compact()


@functools.lru_cache(maxsize=4096)
def _child_keys(layout: Layout) -> tuple[Any, ...]:
    # Attribute keys, all strings (frameworks sort a node's keys, so they must compare): "0", "1", ...
    # or the names of a named chain, then "scalars" for the block (renamed if a link took the name).
    names = [str(i) for i in range(len(layout))] if layout.keys is None else list(layout.keys)
    names = [name for name, plan in zip(names, layout.plans, strict=True) if _has_skeleton(plan)]
    if layout.size:
        block = _BLOCK_KEY
        while block in names:
            block += "_"
        names.append(block)
    return tuple(jax.tree_util.GetAttrKey(name) for name in names)


def _flatten_with_keys(state: _CompactState):
    children, layout = state._compact()
    return tuple(zip(_child_keys(layout), children, strict=True)), layout


def register_compact_state(cls: type) -> type:
    """Register a subclass of `ChainState` or `NamedChainState` as a pytree (jax registers exact types)."""
    jax.tree_util.register_pytree_with_keys(
        cls,
        _flatten_with_keys,
        functools.partial(lambda cls, layout, children: cls._lazy(layout, children), cls),
        flatten_func=_flatten,
    )
    return cls


register_compact_state(ChainState)
register_compact_state(NamedChainState)
