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

How labels and masks are resolved, and how leaf paths are written, is `gradchain._masking`: the
same resolver serves the `mask=` argument of `adamw` and the other element-wise ingredients.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from gradchain._base import EmptyState, GradientTransformation, with_extra_args_support
from gradchain._checks import check_transformation
from gradchain._compact import NamedChainState, register_compact_state
from gradchain._masking import (
    FlatTree,
    bool_check,
    check_spec_values,
    is_trainable,
    label_check,
    resolve_spec,
    show_parts,
)
from gradchain._packing import Packed, pack, unpack

PyTree = Any

__all__ = ["MaskedState", "PartitionState", "freeze", "masked", "partition", "reset_group"]


# ---------------------------------------------------------------------------------------------
# Running transformations on groups of leaves.


class _Groups:
    """Split a tree into groups of leaves (others as None), run one transformation per group, merge."""

    def __init__(self, owner: str, transforms: Mapping[str, Any], assign: Callable[[FlatTree], dict]):
        self.owner = owner
        self.transforms = {label: with_extra_args_support(tx) for label, tx in transforms.items()}
        self.assign = assign  # flat params -> {path: label} for the trainable leaves

    def subtree(self, flat: FlatTree, groups: dict, label: str, source: dict | None = None) -> PyTree:
        """The tree of `flat` with the leaves of group `label` (taken from `source`, by path) and None elsewhere."""
        leaves = []
        for parts, leaf in zip(flat.parts, flat.leaves, strict=True):
            keep = is_trainable(leaf) and groups.get(parts) == label
            leaves.append((leaf if source is None else source.get(parts)) if keep else None)
        return flat.treedef.unflatten(leaves)

    def init(self, params: PyTree, labels: Sequence[str]) -> dict[str, Any]:
        flat = FlatTree.of(unpack(params))
        groups = self.assign(flat)
        return {label: self.transforms[label].init(self.subtree(flat, groups, label)) for label in labels}

    def update(self, updates, states: Mapping[str, Any], params, extra_args) -> tuple[PyTree, dict[str, Any]]:
        layout = updates.layout if isinstance(updates, Packed) else None
        flat = FlatTree.of(unpack(updates))
        source = flat if params is None else FlatTree.of(unpack(params))
        groups = self.assign(source)
        by_path = None if params is None else dict(zip(source.parts, source.leaves, strict=True))
        for parts, leaf in zip(flat.parts, flat.leaves, strict=True):
            if is_trainable(leaf) and parts not in groups:
                raise ValueError(
                    f"{self.owner}: the updates leaf {show_parts(parts)} is not a floating-point leaf of the params "
                    f"(params leaves: {source.examples()})"
                )
        out = list(flat.leaves)
        new_states = {}
        for label, tx in self.transforms.items():
            sub_updates = self.subtree(flat, groups, label)
            sub_params = None if by_path is None else self.subtree(flat, groups, label, by_path)
            new, new_states[label] = tx.update(sub_updates, states[label], sub_params, **extra_args)
            new_flat = FlatTree.of(new)
            if new_flat.treedef != flat.treedef:
                raise ValueError(
                    f"{self.owner}: the transformation of group {label!r} returned updates of another tree "
                    f"structure:\n  expected: {flat.treedef}\n  got:      {new_flat.treedef}"
                )
            for i, (parts, leaf) in enumerate(zip(flat.parts, flat.leaves, strict=True)):
                if is_trainable(leaf) and groups.get(parts) == label:
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
    check_transformation("masked: inner", inner)
    check = bool_check("masked")
    check_spec_values("masked", "mask", mask, check)

    def assign(flat: FlatTree) -> dict:
        selected = resolve_spec("masked", "mask", mask, flat, check)
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


@register_compact_state
class PartitionState(NamedChainState):
    """State of `partition`: `label -> that group's state`, a read-only mapping (also `.inner_states`).

    A `NamedChainState` keyed by label: its pytree children are keyed by label (no field name in
    between), so `hyperparams` shows a group's hyperparameters under the group's name
    (`"no_decay/learning_rate"`) and `set_hyperparams` takes those keys; and the scalars of every
    group (counts, hyperparameters) share one array, as in a chain.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.partition({"a": gc.sgd(0.1), "b": gc.adam(1e-3)}, {"x": "a", "y": "b"})
        state = tx.init({"x": jnp.ones(2), "y": jnp.ones(3)})
        assert isinstance(state, gc.PartitionState) and list(state) == ["a", "b"]
        assert state["b"][0].mu["x"] is None and state["b"][0].mu["y"].shape == (3,)
        assert len(jax.tree.leaves(state)) == 3  # Adam's mu and nu for y, and one array of scalars
        ```
    """

    __slots__ = ()

    @property
    def inner_states(self) -> dict[str, Any]:
        """The groups' states, as a dict `label -> state` (optax's field name)."""
        return dict(self.items())

    def __repr__(self) -> str:
        return f"PartitionState({self.inner_states!r})"


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
        check_transformation(f"partition: transforms[{label!r}]", tx)
    names = tuple(transforms)
    check = label_check("partition", names)
    check_spec_values("partition", "labels", labels, check)

    def assign(flat: FlatTree) -> dict:
        return resolve_spec("partition", "labels", labels, flat, check)

    groups = _Groups("partition", transforms, assign)

    def init(params):
        used = set(assign(FlatTree.of(unpack(params))).values())
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
    check = bool_check("freeze")
    check_spec_values("freeze", "mask", mask, check)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        layout = updates.layout if isinstance(updates, Packed) else None
        flat = FlatTree.of(unpack(updates))
        source = flat if params is None else FlatTree.of(unpack(params))
        selected = resolve_spec("freeze", "mask", mask, source, check)
        out = [
            jnp.zeros_like(leaf) if is_trainable(leaf) and selected.get(parts, False) else leaf
            for parts, leaf in zip(flat.parts, flat.leaves, strict=True)
        ]
        merged = flat.treedef.unflatten(out)
        return (pack(merged, layout) if layout is not None else merged), state

    return GradientTransformation(init, update)
