"""Parameter groups: `masked`, `partition` (optax's `multi_transform`), `freeze`, and `reset_group`.

PyTorch users know these as param groups: one optimizer (or one set of hyperparameters) for some
parameters, another for the rest. Here each group is a `GradientTransformation` of its own, applied
to the leaves of its group only:

- the leaves of a group are chosen by a tree of labels or booleans (the params' tree or a prefix
  of it), by a function of the params that returns one, or by glob patterns over leaf paths
  (`labels_by_path`, `mask_by_path`);
- a group's transformation sees the leaves of the other groups as `None`, so it keeps no state for
  them (gradchain's lifting passes `None` leaves through with no buffers);
- leaves that are not floating-point arrays (the functions and ints an equinox module holds,
  integer buffers, `None`) belong to no group and pass through unchanged;
- label and mask trees are matched to the params by path, not by container type: a nested dict of
  labels works for a flax NNX `State`, a dataclass or an equinox module with the same keys.

Leaf paths are written with `/` between keys: `{"layer0": {"bias": b}}` has the leaf `layer0/bias`,
`[w, b]` the leaves `0` and `1`, an equinox `MLP` the leaves `layers/0/weight`, ... . A flax NNX
`State` keeps each array in a `Variable`, whose leaf path ends in `/value` (`lin/bias/value`); path
patterns may leave that last `/value` out.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain._base import EmptyState, GradientTransformation, _call_update
from gradchain._packing import Packed, pack, unpack

PyTree = Any
Parts = tuple[str, ...]

__all__ = [
    "MaskedState",
    "PartitionState",
    "freeze",
    "labels_by_path",
    "mask_by_path",
    "masked",
    "partition",
    "reset_group",
]


# ---------------------------------------------------------------------------------------------
# Leaf paths.


def _key_name(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _show(parts: Parts) -> str:
    return "/".join(parts) or "<root>"


def _is_none(x: Any) -> bool:
    return x is None


def _is_trainable(x: Any) -> bool:
    """A floating-point (or complex) array, concrete, traced or abstract: what a group optimizes."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        return False
    try:
        return bool(jnp.issubdtype(dtype, jnp.inexact))
    except TypeError:  # float0 and other dtypes numpy does not know
        return False


def _is_function(spec: Any) -> bool:
    # An equinox module is callable but is a pytree node (a label tree built over a module is one).
    if not callable(spec):
        return False
    leaves = jax.tree.leaves(spec, is_leaf=_is_none)
    return len(leaves) == 1 and leaves[0] is spec


class _Flat(NamedTuple):
    """A tree flattened with `None` as a leaf: its structure, and every leaf with its path."""

    treedef: Any
    parts: list[Parts]
    leaves: list[Any]

    @classmethod
    def of(cls, tree: PyTree) -> _Flat:
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
        return cls(treedef, [tuple(_key_name(k) for k in path) for path, _ in flat], [x for _, x in flat])

    def view(self) -> PyTree:
        """The tree with every leaf that is not a floating-point array replaced by None."""
        return self.treedef.unflatten([x if _is_trainable(x) else None for x in self.leaves])

    def examples(self) -> str:
        shown = [_show(p) for p, x in zip(self.parts, self.leaves, strict=True) if _is_trainable(x)]
        return ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "") if shown else "none"


def _resolve(owner: str, what: str, spec: Any, flat: _Flat, check_value: Callable[[Parts, Any], None]) -> dict:
    """The value `spec` gives every trainable leaf of `flat`, keyed by the leaf's path.

    `spec` is a tree whose leaves apply to the subtree at their path (a prefix tree), or a function
    of the params (called with non-array leaves as None) returning one. Matching goes by path, so
    the spec's containers need not be the params' (a dict of labels for an NNX `State`).
    """
    if _is_function(spec):
        spec = spec(flat.view())
    table: dict[Parts, Any] = {}
    for path, value in jax.tree_util.tree_flatten_with_path(spec, is_leaf=_is_none)[0]:
        table[tuple(_key_name(k) for k in path)] = value
    prefixes = {parts[:k] for parts in flat.parts for k in range(len(parts) + 1)}
    for parts in table:
        if parts not in prefixes:
            raise ValueError(
                f"{owner}: the {what} tree has an entry at {_show(parts)}, which is not a leaf or subtree "
                f"of the params (params leaves: {flat.examples()})"
            )
    out = {}
    for parts, leaf in zip(flat.parts, flat.leaves, strict=True):
        if not _is_trainable(leaf):
            continue
        value = next((table[parts[:k]] for k in range(len(parts), -1, -1) if parts[:k] in table), None)
        if value is None:
            raise ValueError(f"{owner}: the {what} tree gives no value for the params leaf {_show(parts)}")
        check_value(parts, value)
        out[parts] = value
    return out


def _check_label(owner: str, labels: Sequence[str]) -> Callable[[Parts, Any], None]:
    def check(parts: Parts, value: Any) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{owner}: labels must be strings, got {value!r} for leaf {_show(parts)}")
        if value not in labels:
            raise ValueError(
                f"{owner}: leaf {_show(parts)} has the label {value!r}, which has no transformation; "
                f"labels with one: {', '.join(map(repr, labels))}"
            )

    return check


def _check_bool(owner: str) -> Callable[[Parts, Any], None]:
    def check(parts: Parts, value: Any) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{owner}: mask leaves must be booleans, got {value!r} for leaf {_show(parts)}")

    return check


def _check_static(owner: str, what: str, spec: Any, check_value: Callable[[Parts, Any], None]) -> None:
    """Check a spec's values when the transformation is built (a function is checked when it runs)."""
    if _is_function(spec):
        return
    for path, value in jax.tree_util.tree_flatten_with_path(spec)[0]:
        check_value(tuple(_key_name(k) for k in path), value)


# ---------------------------------------------------------------------------------------------
# Path patterns.


class _PathRules:
    """A function `params -> tree of values`, from glob patterns over leaf paths (first match wins)."""

    def __init__(self, owner: str, rules: Sequence[tuple[str, Any]], default: Any, kind: str):
        self.owner = owner
        self.rules = tuple(rules)
        self.default = default
        self.kind = kind

    def __repr__(self) -> str:
        return f"{self.owner}({dict(self.rules)!r}, default={self.default!r})"

    def __call__(self, tree: PyTree) -> PyTree:
        flat = _Flat.of(tree)
        used = [False] * len(self.rules)
        values = []
        for parts, leaf in zip(flat.parts, flat.leaves, strict=True):
            if not _is_trainable(leaf):
                values.append(None)
                continue
            names = [_show(parts)]
            if len(parts) > 1 and parts[-1] == "value":  # flax NNX: the array sits in Variable.value
                names.append(_show(parts[:-1]))
            hit = next(
                (i for i, (pattern, _) in enumerate(self.rules) if any(fnmatch.fnmatchcase(n, pattern) for n in names)),
                None,
            )
            if hit is not None:
                used[hit] = True
                values.append(self.rules[hit][1])
            elif self.default is not None:
                values.append(self.default)
            else:
                patterns = ", ".join(repr(p) for p, _ in self.rules)
                raise ValueError(
                    f"{self.owner}: leaf {_show(parts)} matches none of the patterns ({patterns}) "
                    f"and no default was given"
                )
        unused = [pattern for (pattern, _), u in zip(self.rules, used, strict=True) if not u]
        if unused:
            raise ValueError(
                f"{self.owner}: pattern {unused[0]!r} matches no leaf of the params (params leaves: {flat.examples()})"
            )
        return flat.treedef.unflatten(values)


def labels_by_path(
    rules: Mapping[str, str] | Sequence[tuple[str, str]], *, default: str | None = None
) -> Callable[[PyTree], PyTree]:
    """Label the leaves of the params by glob patterns over their paths, for `partition`.

    A leaf's path joins its keys with `/` (`"encoder/layer0/bias"`, `"layers/1/weight"`; a flax
    NNX `State` leaf may be named with or without its final `/value`). Patterns are matched with
    `fnmatch` (`*` also matches `/`), in order; the first pattern that matches a leaf gives its
    label. Leaves that are not floating-point arrays get no label.

    Args:
        rules: `pattern -> label`, a mapping or a sequence of pairs, tried in order.
        default: the label of leaves that match no pattern; None makes such a leaf an error.

    Returns:
        A function `params -> tree of labels`, to pass as `partition`'s `labels`. It raises
        ValueError naming the leaf when a leaf matches nothing (with no default), and naming the
        pattern when a pattern matches no leaf (a typo, most likely).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "norm": {"scale": jnp.ones(3)}}
        labels = gc.labels_by_path({"*bias": "no_decay", "norm/*": "no_decay"}, default="decay")(params)
        assert labels == {"dense": {"kernel": "decay", "bias": "no_decay"}, "norm": {"scale": "no_decay"}}
        ```
    """
    pairs = list(rules.items()) if isinstance(rules, Mapping) else [tuple(r) for r in rules]
    for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(pair[1], str):
            raise TypeError(f"labels_by_path: rules must be (pattern, label) pairs of strings, got {pair!r}")
    if default is not None and not isinstance(default, str):
        raise TypeError(f"labels_by_path: default must be a string label or None, got {default!r}")
    return _PathRules("labels_by_path", pairs, default, "label")


def mask_by_path(*patterns: str) -> Callable[[PyTree], PyTree]:
    """Select the leaves of the params whose paths match any of the glob patterns, for `masked`/`freeze`.

    Paths and patterns are as in `labels_by_path`: `"*bias"` selects every bias, `"encoder/*"`
    every leaf under `encoder`.

    Args:
        *patterns: one or more `fnmatch` patterns.

    Returns:
        A function `params -> tree of bools`. It raises ValueError naming a pattern that matches no
        leaf.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        params = {"encoder": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2)}}
        assert gc.mask_by_path("encoder/*")(params) == {"encoder": {"w": True}, "head": {"w": False}}
        ```
    """
    if not patterns:
        raise ValueError("mask_by_path: give at least one pattern")
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"mask_by_path: patterns must be strings, got {pattern!r}")
    return _PathRules("mask_by_path", [(p, True) for p in patterns], False, "mask")


# ---------------------------------------------------------------------------------------------
# Running transformations on groups of leaves.


def _check_transform(where: str, tx: Any) -> None:
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(f"{where} must be a GradientTransformation (with init and update), got {tx!r}")


class _Groups:
    """Split a tree into groups of leaves (others as None), run one transformation per group, merge."""

    def __init__(self, owner: str, transforms: Mapping[str, Any], assign: Callable[[_Flat], dict]):
        self.owner = owner
        self.transforms = dict(transforms)
        self.assign = assign  # flat params -> {path: label} for the trainable leaves

    def subtree(self, flat: _Flat, groups: dict, label: str, source: dict | None = None) -> PyTree:
        """The tree of `flat` with the leaves of group `label` (taken from `source`, by path) and None elsewhere."""
        leaves = []
        for parts, leaf in zip(flat.parts, flat.leaves, strict=True):
            keep = _is_trainable(leaf) and groups.get(parts) == label
            leaves.append((leaf if source is None else source.get(parts)) if keep else None)
        return flat.treedef.unflatten(leaves)

    def init(self, params: PyTree, labels: Sequence[str]) -> dict[str, Any]:
        flat = _Flat.of(unpack(params))
        groups = self.assign(flat)
        return {label: self.transforms[label].init(self.subtree(flat, groups, label)) for label in labels}

    def update(self, updates, states: Mapping[str, Any], params, extra_args) -> tuple[PyTree, dict[str, Any]]:
        layout = updates.layout if isinstance(updates, Packed) else None
        flat = _Flat.of(unpack(updates))
        source = flat if params is None else _Flat.of(unpack(params))
        groups = self.assign(source)
        by_path = None if params is None else dict(zip(source.parts, source.leaves, strict=True))
        for parts, leaf in zip(flat.parts, flat.leaves, strict=True):
            if _is_trainable(leaf) and parts not in groups:
                raise ValueError(
                    f"{self.owner}: the updates leaf {_show(parts)} is not a floating-point leaf of the params "
                    f"(params leaves: {source.examples()})"
                )
        out = list(flat.leaves)
        new_states = {}
        for label, tx in self.transforms.items():
            sub_updates = self.subtree(flat, groups, label)
            sub_params = None if by_path is None else self.subtree(flat, groups, label, by_path)
            new, new_states[label] = _call_update(tx, sub_updates, states[label], sub_params, extra_args)
            new_flat = _Flat.of(new)
            if new_flat.treedef != flat.treedef:
                raise ValueError(
                    f"{self.owner}: the transformation of group {label!r} returned updates of another tree "
                    f"structure:\n  expected: {flat.treedef}\n  got:      {new_flat.treedef}"
                )
            for i, (parts, leaf) in enumerate(zip(flat.parts, flat.leaves, strict=True)):
                if _is_trainable(leaf) and groups.get(parts) == label:
                    out[i] = new_flat.leaves[i]
        merged = flat.treedef.unflatten(out)
        return (pack(merged, layout) if layout is not None else merged), new_states


# ---------------------------------------------------------------------------------------------
# masked


class MaskedState(NamedTuple):
    """State of `masked`: the inner transformation's state, which holds buffers for selected leaves only."""

    inner_state: Any


def masked(inner: GradientTransformation, mask: Any) -> GradientTransformation:
    """Apply `inner` to the selected leaves only; the other leaves pass through unchanged.

    $$ u_\\ell = \\begin{cases} \\mathrm{inner}(g)_\\ell & m_\\ell \\\\ g_\\ell & \\text{otherwise} \\end{cases} $$

    `inner` sees the unselected leaves as `None` (updates and params), so its state holds no
    buffers for them. Leaves that are not floating-point arrays are never selected. This is
    `optax.masked` (same updates), with `None` where optax puts `MaskedNode`s.

    Args:
        inner: the transformation for the selected leaves.
        mask: which leaves to select: a tree of bools shaped like the params or a prefix of it (one
            bool for a whole subtree; matched by path, so a nested dict works for an NNX `State`);
            a function `params -> such a tree` (called with non-array leaves as None; in `update`,
            with the params if given, else the updates); or `mask_by_path(*patterns)`.

    Returns:
        A `GradientTransformation` with `MaskedState`.

    Raises:
        ValueError: a mask tree that does not fit the params (the message names the leaf or
            entry), at `init`/`update`; TypeError: non-boolean mask leaves (names the leaf).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
        tx = gc.masked(gc.sgd(0.1, momentum=0.9), {"w": True, "b": False})
        state = tx.init(params)
        assert state.inner_state[0].trace["b"] is None  # no momentum buffer for the bias
        u, state = tx.update({"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, state, params)
        assert jnp.allclose(u["w"], -0.1) and jnp.allclose(u["b"], 1.0)
        ```
    """
    _check_transform("masked: inner", inner)
    check = _check_bool("masked")
    _check_static("masked", "mask", mask, check)

    def assign(flat: _Flat) -> dict:
        selected = _resolve("masked", "mask", mask, flat, check)
        # Unselected leaves map to None: known leaves of the params, in no group.
        return {parts: "inner" if on else None for parts, on in selected.items()}

    groups = _Groups("masked", {"inner": inner}, assign)

    def init(params):
        return MaskedState(groups.init(params, ["inner"])["inner"])

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, MaskedState):
            raise TypeError(f"masked: expected a MaskedState, got {type(state).__name__}")
        updates, states = groups.update(updates, {"inner": state.inner_state}, params, extra_args)
        return updates, MaskedState(states["inner"])

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# partition


@jax.tree_util.register_pytree_with_keys_class
class PartitionState(Mapping[str, Any]):
    """State of `partition`: `label -> that group's state`, a read-only mapping (also `.inner_states`).

    A pytree whose children are keyed by label (no field name in between), so `hyperparams` shows a
    group's hyperparameters under the group's name (`"no_decay/learning_rate"`), and
    `set_hyperparams` takes those keys.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.partition({"a": gc.sgd(0.1), "b": gc.adam(1e-3)}, {"x": "a", "y": "b"})
        state = tx.init({"x": jnp.ones(2), "y": jnp.ones(3)})
        assert isinstance(state, gc.PartitionState) and list(state) == ["a", "b"]
        assert state["b"][0].mu["x"] is None and state["b"][0].mu["y"].shape == (3,)
        ```
    """

    __slots__ = ("inner_states",)

    def __init__(self, inner_states: Mapping[str, Any]):
        self.inner_states = dict(inner_states)

    def __getitem__(self, label: str) -> Any:
        return self.inner_states[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner_states)

    def __len__(self) -> int:
        return len(self.inner_states)

    def __repr__(self) -> str:
        return f"PartitionState({self.inner_states!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"inner_states": self.inner_states}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.inner_states = state["inner_states"]

    def tree_flatten_with_keys(self):
        labels = tuple(self.inner_states)
        return [(jax.tree_util.DictKey(k), self.inner_states[k]) for k in labels], labels

    @classmethod
    def tree_unflatten(cls, labels, children):
        return cls(dict(zip(labels, children, strict=True)))


class _PartitionInfo(NamedTuple):
    """What `reset_group` needs from a `partition` transformation (attached to its `init`)."""

    labels: tuple[str, ...]
    groups: _Groups


def partition(transforms: Mapping[str, GradientTransformation], labels: Any) -> GradientTransformation:
    """Param groups: each leaf of the params gets a label, each label its own transformation.

    $$ u_\\ell = T_{c(\\ell)}\\big(\\{g_k : c(k) = c(\\ell)\\}\\big)_\\ell $$

    where $c(\\ell)$ is the label of leaf $\\ell$. The transformation of a group sees only its
    leaves (the others as `None`, updates and params alike), so its state keeps buffers for them
    only. Leaves that are not floating-point arrays (the functions or ints an equinox module holds,
    integer buffers, `None`) have no label and pass through unchanged. This is `optax.multi_transform`
    (optax.partition), and PyTorch's param groups when every group uses the same optimizer with its
    own hyperparameters.

    A label with a transformation but no leaves is allowed, with a `UserWarning` at `init`: its state
    keeps no buffers, and the state's structure (and its hyperparameter keys) does not depend on the
    model (a model without norm layers still has the `"no_decay"` group). Re-initialise one group with
    `reset_group`; read and set a group's hyperparameters as `"label/..."` keys of `hyperparams`.

    Args:
        transforms: `label -> transformation`, one per group (string labels).
        labels: the label of every leaf: a tree of strings shaped like the params or a prefix of it
            (one label for a whole subtree; matched by path, so a nested dict works for an NNX
            `State`); a function `params -> such a tree` (called with non-array leaves as None; in
            `update`, with the params if given, else the updates); or `labels_by_path(...)`.

    Returns:
        A `GradientTransformation` with `PartitionState`.

    Raises:
        ValueError: at build time or `init`: a label with no transformation; a label tree that does
            not fit the params; the message names the leaf path. TypeError: non-string labels.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
        tx = gc.partition(
            {"decay": gc.adamw(1e-3, weight_decay=0.01), "no_decay": gc.adamw(1e-3, weight_decay=0.0)},
            gc.labels_by_path({"*bias": "no_decay"}, default="decay"),
        )
        state = tx.init(params)
        state = gc.set_hyperparams(state, {"no_decay/learning_rate": 1e-4})
        hp = gc.hyperparams(state)
        assert jnp.isclose(hp["no_decay/learning_rate"], 1e-4) and jnp.isclose(hp["decay/learning_rate"], 1e-3)
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        assert jnp.allclose(updates["dense"]["bias"], -1e-4, rtol=1e-3)
        ```
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(
            f"partition: transforms must be a non-empty mapping label -> transformation, got {transforms!r}"
        )
    for label, tx in transforms.items():
        if not isinstance(label, str):
            raise TypeError(f"partition: labels must be strings, got the transforms key {label!r}")
        _check_transform(f"partition: transforms[{label!r}]", tx)
    names = tuple(transforms)
    check = _check_label("partition", names)
    _check_static("partition", "labels", labels, check)

    def assign(flat: _Flat) -> dict:
        return _resolve("partition", "labels", labels, flat, check)

    groups = _Groups("partition", transforms, assign)

    def init(params):
        used = set(assign(_Flat.of(unpack(params))).values())
        unused = [label for label in names if label not in used]
        if unused:
            warnings.warn(
                f"partition: no leaf of the params has the label(s) {', '.join(map(repr, unused))}; "
                "their transformations keep an empty state",
                UserWarning,
                stacklevel=2,
            )
        return PartitionState(groups.init(params, names))

    def update(updates, state, params=None, **extra_args):
        _check_partition_state("partition", state, names)
        updates, states = groups.update(updates, state.inner_states, params, extra_args)
        return updates, PartitionState(states)

    init.gradchain_partition = _PartitionInfo(names, groups)  # type: ignore[attr-defined]
    return GradientTransformation(init, update)


def _check_partition_state(owner: str, state: Any, names: Sequence[str]) -> None:
    if not isinstance(state, PartitionState):
        raise TypeError(f"{owner}: expected a PartitionState, got {type(state).__name__}")
    if list(state) != list(names):
        raise ValueError(f"{owner}: the state has the groups {list(state)}, the transformation {list(names)}")


def reset_group(
    tx: GradientTransformation, state: PartitionState, params: PyTree, label: str | Sequence[str]
) -> PartitionState:
    """Re-initialise the state of one group (or several) of a `partition`, keeping the others as they are.

    Use it after unfreezing a group (build a new `partition` with the group's optimizer in place of
    `freeze()`, then reset that group from the old state), after swapping a group's optimizer, or to
    restart one group's moments. Only the named groups are initialised; the state of the others is
    carried over, untouched. Works under `jax.jit` (with `tx` and `label` static) and on
    `jax.ShapeDtypeStruct` params.

    Args:
        tx: the `partition(...)` transformation the new state is for. Its groups' labels must be
            those of `state`; the named groups' transformations may differ from the ones that built
            `state`.
        state: a `PartitionState` (for a partition inside a `chain`, pass its entry of the chain's
            state, e.g. `state[1]`).
        params: the params (the whole tree; the group's leaves are picked as in `partition`).
        label: the label of the group to reset, or a sequence of labels.

    Returns:
        A new `PartitionState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        params = {"backbone": jnp.ones(3), "head": jnp.ones(2)}
        labels = {"backbone": "backbone", "head": "head"}
        frozen = gc.partition({"backbone": gc.freeze(), "head": gc.adam(1e-3)}, labels)
        state = frozen.init(params)
        grads = {"backbone": jnp.ones(3), "head": jnp.ones(2)}
        updates, state = frozen.update(grads, state, params)
        assert (updates["backbone"] == 0).all()

        unfrozen = gc.partition({"backbone": gc.adam(1e-4), "head": gc.adam(1e-3)}, labels)
        new_state = gc.reset_group(unfrozen, state, params, "backbone")
        assert new_state["head"] is state["head"]  # untouched
        assert (new_state["backbone"][0].mu["backbone"] == 0).all()  # fresh moments
        updates, new_state = unfrozen.update(grads, new_state, params)
        ```
    """
    info = getattr(getattr(tx, "init", None), "gradchain_partition", None)
    if not isinstance(info, _PartitionInfo):
        raise TypeError(f"reset_group: tx must be a transformation built by partition(...), got {tx!r}")
    _check_partition_state("reset_group", state, info.labels)
    chosen = [label] if isinstance(label, str) else list(label)
    unknown = [x for x in chosen if x not in info.labels]
    if unknown or not chosen:
        raise ValueError(
            f"reset_group: label {unknown[0] if unknown else label!r} is not a group of the partition; "
            f"groups: {', '.join(map(repr, info.labels))}"
        )
    fresh = info.groups.init(params, chosen)
    return PartitionState({x: fresh[x] if x in fresh else state[x] for x in info.labels})


# ---------------------------------------------------------------------------------------------
# freeze


def freeze(mask: Any = True) -> GradientTransformation:
    """Zero the updates of the selected leaves (frozen parameters); the others pass through unchanged.

    $$ u_\\ell = \\begin{cases} 0 & m_\\ell \\\\ g_\\ell & \\text{otherwise} \\end{cases} $$

    It keeps no state. As a group of `partition` (`freeze()` freezes the whole group) the frozen
    leaves have no optimizer state at all, which is the point: a frozen backbone costs no moments.
    That is optax's `set_to_zero()` under `multi_transform`, and what `requires_grad_(False)` does
    in PyTorch. Chained after an optimizer (`chain(adamw(...), freeze(mask))`) it keeps the frozen
    params fixed too, but the optimizer still allocates state for them; prefer `partition`.

    Args:
        mask: which leaves to freeze: True (all, the default), or a tree of bools / function /
            `mask_by_path(...)` as in `masked`.

    Returns:
        A `GradientTransformation` with `EmptyState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        params = {"encoder": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}
        tx = gc.freeze(gc.mask_by_path("encoder/*"))
        u, _ = tx.update({"encoder": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}, tx.init(params), params)
        assert (u["encoder"]["w"] == 0).all() and (u["head"]["w"] == 1).all()

        tx = gc.partition({"frozen": gc.freeze(), "train": gc.adam(1e-3)}, {"encoder": "frozen", "head": "train"})
        state = tx.init(params)
        assert state["train"][0].mu["encoder"]["w"] is None  # no moments for frozen leaves
        ```
    """
    check = _check_bool("freeze")
    _check_static("freeze", "mask", mask, check)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        layout = updates.layout if isinstance(updates, Packed) else None
        flat = _Flat.of(unpack(updates))
        source = flat if params is None else _Flat.of(unpack(params))
        selected = _resolve("freeze", "mask", mask, source, check)
        out = [
            jnp.zeros_like(leaf) if _is_trainable(leaf) and selected.get(parts, False) else leaf
            for parts, leaf in zip(flat.parts, flat.leaves, strict=True)
        ]
        merged = flat.treedef.unflatten(out)
        return (pack(merged, layout) if layout is not None else merged), state

    return GradientTransformation(init, update)
