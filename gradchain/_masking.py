"""Leaf paths, masks and labels: the one resolver behind every `mask=` and `labels=` in gradchain.

A spec says something about each leaf of the params: a boolean (`masked`, `freeze`, the `mask=` of
`adamw` and the other element-wise ingredients) or a group label (`partition`). It is written as

- a tree of values shaped like the params or a prefix of it (one value for a whole subtree),
  matched by leaf path rather than by container type, so a nested dict works for a flax NNX
  `State`, a dataclass or an equinox module with the same keys;
- a function of the params returning such a tree (called with non-array leaves as None);
- glob patterns over leaf paths: `mask_by_path(*patterns)`, `labels_by_path(rules, default=)`.

Leaf paths are written with `/` between keys (`tree.path_str`): `{"layer0": {"bias": b}}` has the
leaf `layer0/bias`, `[w, b]` the leaves `0` and `1`, an equinox `MLP` the leaves
`layers/0/weight`. A flax NNX `State` keeps each array in a `Variable`, whose leaf path ends in
`/value` (`lin/bias/value`); path patterns may leave that last `/value` out.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import tree as tree_util

PyTree = Any
Parts = tuple[str, ...]

__all__ = ["labels_by_path", "mask_by_path"]

# ---------------------------------------------------------------------------------------------
# Leaf paths.


def show_parts(parts: Parts) -> str:
    return "/".join(parts) or "<root>"


def is_none(x: Any) -> bool:
    return x is None


def is_trainable(x: Any) -> bool:
    """A floating-point (or complex) array, concrete, traced or abstract: what a group optimizes."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        return False
    try:
        return bool(jnp.issubdtype(dtype, jnp.inexact))
    except TypeError:  # float0 and other dtypes numpy does not know
        return False


def is_function(spec: Any) -> bool:
    # An equinox module is callable but is a pytree node (a label tree built over a module is one).
    if not callable(spec):
        return False
    leaves = jax.tree.leaves(spec, is_leaf=is_none)
    return len(leaves) == 1 and leaves[0] is spec


class FlatTree(NamedTuple):
    """A tree flattened with `None` as a leaf: its structure, and every leaf with its path."""

    treedef: Any
    parts: list[Parts]
    leaves: list[Any]

    @classmethod
    def of(cls, tree: PyTree) -> FlatTree:
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
        return cls(treedef, [tree_util.path_parts(path) for path, _ in flat], [x for _, x in flat])

    def view(self) -> PyTree:
        """The tree with every leaf that is not a floating-point array replaced by None."""
        return self.treedef.unflatten([x if is_trainable(x) else None for x in self.leaves])

    def examples(self) -> str:
        shown = [show_parts(p) for p, x in zip(self.parts, self.leaves, strict=True) if is_trainable(x)]
        return ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "") if shown else "none"


def resolve_spec(owner: str, what: str, spec: Any, flat: FlatTree, check_value: Callable[[Parts, Any], None]) -> dict:
    """The value `spec` gives every trainable leaf of `flat`, keyed by the leaf's path.

    `spec` is a tree whose leaves apply to the subtree at their path (a prefix tree), or a function
    of the params (called with non-array leaves as None) returning one. Matching goes by path, so
    the spec's containers need not be the params' (a dict of labels for an NNX `State`).
    """
    if is_function(spec):
        spec = spec(flat.view())
    table: dict[Parts, Any] = {}
    for path, value in jax.tree_util.tree_flatten_with_path(spec, is_leaf=is_none)[0]:
        table[tree_util.path_parts(path)] = value
    prefixes = {parts[:k] for parts in flat.parts for k in range(len(parts) + 1)}
    for parts in table:
        if parts not in prefixes:
            raise ValueError(
                f"{owner}: the {what} tree has an entry at {show_parts(parts)}, which is not a leaf or subtree "
                f"of the params (params leaves: {flat.examples()})"
            )
    out = {}
    for parts, leaf in zip(flat.parts, flat.leaves, strict=True):
        if not is_trainable(leaf):
            continue
        value = next((table[parts[:k]] for k in range(len(parts), -1, -1) if parts[:k] in table), None)
        if value is None:
            raise ValueError(f"{owner}: the {what} tree gives no value for the params leaf {show_parts(parts)}")
        check_value(parts, value)
        out[parts] = value
    return out


def label_check(owner: str, labels: Sequence[str]) -> Callable[[Parts, Any], None]:
    def check(parts: Parts, value: Any) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{owner}: labels must be strings, got {value!r} for leaf {show_parts(parts)}")
        if value not in labels:
            raise ValueError(
                f"{owner}: leaf {show_parts(parts)} has the label {value!r}, which has no transformation; "
                f"labels with one: {', '.join(map(repr, labels))}"
            )

    return check


def bool_check(owner: str) -> Callable[[Parts, Any], None]:
    def check(parts: Parts, value: Any) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{owner}: mask leaves must be booleans, got {value!r} for leaf {show_parts(parts)}")

    return check


def check_spec_values(owner: str, what: str, spec: Any, check_value: Callable[[Parts, Any], None]) -> None:
    """Check a spec's values when the transformation is built (a function is checked when it runs)."""
    if is_function(spec):
        return
    for path, value in jax.tree_util.tree_flatten_with_path(spec)[0]:
        check_value(tree_util.path_parts(path), value)


# ---------------------------------------------------------------------------------------------
# Path patterns.


class PathRules:
    """A function `params -> tree of values`, from glob patterns over leaf paths (first match wins)."""

    def __init__(self, owner: str, rules: Sequence[tuple[str, Any]], default: Any, kind: str):
        self.owner = owner
        self.rules = tuple(rules)
        self.default = default
        self.kind = kind

    def __repr__(self) -> str:
        return f"{self.owner}({dict(self.rules)!r}, default={self.default!r})"

    def __call__(self, tree: PyTree) -> PyTree:
        flat = FlatTree.of(tree)
        used = [False] * len(self.rules)
        values = []
        for parts, leaf in zip(flat.parts, flat.leaves, strict=True):
            if not is_trainable(leaf):
                values.append(None)
                continue
            names = [show_parts(parts)]
            if len(parts) > 1 and parts[-1] == "value":  # flax NNX: the array sits in Variable.value
                names.append(show_parts(parts[:-1]))
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
                    f"{self.owner}: leaf {show_parts(parts)} matches none of the patterns ({patterns}) "
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
    return PathRules("labels_by_path", pairs, default, "label")


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
    return PathRules("mask_by_path", [(p, True) for p in patterns], False, "mask")


# ---------------------------------------------------------------------------------------------
# Masks of element-wise ingredients.


def resolve_mask(owner: str, mask: Any, params: PyTree, updates: PyTree) -> list[bool] | None:
    """The mask's value for every leaf of `updates` (in `jax.tree.leaves` order), or None for no mask.

    `mask` is any spec `masked` accepts (a prefix tree of bools, a function of the params, or
    `mask_by_path(...)`); a function is called with the params.
    """
    if mask is None:
        return None
    if is_function(mask):
        if params is None:
            raise ValueError(f"{owner}: a callable mask needs params; call update(updates, state, params)")
        mask = mask(FlatTree.of(params).view())
    flat = FlatTree.of(updates)
    selected = resolve_spec(owner, "mask", mask, flat, bool_check(owner))
    return [selected[parts] for parts, leaf in zip(flat.parts, flat.leaves, strict=True) if leaf is not None]
