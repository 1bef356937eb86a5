"""Hyperparameters held in the optimizer state, and name-based access to them.

A transformation keeps its numeric hyperparameters (learning rate, betas, eps, ...) in a
`Hyperparams` node inside its state instead of closing over them. They are then ordinary traced
inputs of a jitted step: changing one between steps does not recompile, and the values in effect at
the last step can be read back for logging. Which entries come from a schedule, and which check
guards each entry, is static metadata of the node (part of the tree structure), so it costs nothing
at run time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _checks
from gradchain import tree as tree_util
from gradchain._checks import Check
from gradchain._compact import restore_from_view, to_view
from gradchain._numerics import float_dtype
from gradchain._scalar_block import plain


@jax.tree_util.register_pytree_with_keys_class
class Hyperparams(Mapping[str, jax.Array]):
    """Read-only mapping `name -> scalar array` stored in a transformation's state.

    Entries named in `scheduled` are produced by a schedule each step: reading them gives the value
    used at the last step; they cannot be overridden with `set_hyperparams`. Entries read as items or
    attributes. Users rarely touch this class: `hyperparams(state)` and `set_hyperparams` find every
    node in a state.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        state = gc.scale_by_adam(b1=0.8).init({"w": jnp.zeros(2)})
        assert isinstance(state.hyperparams, gc.Hyperparams)
        assert jnp.isclose(state.hyperparams["b1"], 0.8) and jnp.isclose(state.hyperparams.b1, 0.8)
        ```
    """

    __slots__ = ("_checks", "_owner", "_scheduled", "_values")

    def __init__(
        self,
        values: Mapping[str, Any],
        checks: Mapping[str, str] | None = None,
        scheduled: frozenset[str] = frozenset(),
        owner: str = "",
    ):
        self._values = dict(values)
        self._checks = dict(checks or {})
        self._scheduled = frozenset(scheduled)
        self._owner = owner

    def __getitem__(self, name: str) -> jax.Array:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> jax.Array:
        # Only called when normal lookup fails; private names must not recurse into _values (copy,
        # pickle and deepcopy probe attributes before __init__ has run).
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"Hyperparams({self._values!r})"

    @property
    def scheduled(self) -> frozenset[str]:
        return self._scheduled

    @property
    def owner(self) -> str:
        """The public name of the transformation these hyperparameters belong to."""
        return self._owner

    def check_kind(self, name: str) -> str:
        return self._checks.get(name, Check.ANY)

    def replace(self, **values: Any) -> Hyperparams:
        """A copy with some values replaced (no checks; see `set_hyperparams` for the checked way)."""
        return Hyperparams({**self._values, **values}, self._checks, self._scheduled, self._owner)

    def tree_flatten(self):
        # Without keys: what jit and tree maps use, cheaper than building the keys.
        keys = tuple(self._values)
        return tuple(self._values[k] for k in keys), (
            keys,
            tuple(sorted(self._checks.items())),
            self._scheduled,
            self._owner,
        )

    def tree_flatten_with_keys(self):
        keys = tuple(self._values)
        children = [(jax.tree_util.DictKey(k), self._values[k]) for k in keys]
        aux = (keys, tuple(sorted(self._checks.items())), self._scheduled, self._owner)
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        keys, checks, scheduled, owner = aux
        return cls(dict(zip(keys, children, strict=True)), dict(checks), scheduled, owner)


class HyperparamSpec:
    """The hyperparameters of one transformation, as given when it was built.

    Each entry is a number (stored in the state as a scalar array) or a schedule `step -> value`
    (static; its value at the current step is stored in the state). Numbers are checked here, when
    the transformation is built, so the error points at the user's call. A transformation whose state
    keeps no step count passes `allow_schedules=False`, so a schedule is rejected rather than frozen.

    Args:
        owner: the public name of the transformation, used in error messages and `hyperparams` keys.
        allow_schedules: whether entries may be schedules.
        **entries: `name=(value, check)` with `check` a `Check` (the same check `set_hyperparams`
            applies to a new value later).

    Example:
        ```python
        import gradchain as gc

        spec = gc.HyperparamSpec("my_ingredient", decay=(0.9, gc.Check.UNIT_INTERVAL))
        assert spec.init()["decay"] == 0.9
        try:
            gc.HyperparamSpec("my_ingredient", decay=(1.5, gc.Check.UNIT_INTERVAL))
        except ValueError as e:
            assert "my_ingredient: decay must be a number in [0, 1)" in str(e)
        ```
    """

    def __init__(self, owner: str, *, allow_schedules: bool = True, **entries: tuple[Any, str]):
        self.owner = owner
        self.values: dict[str, Any] = {}
        self.checks: dict[str, str] = {}
        for name, (value, kind) in entries.items():
            if callable(value) and not allow_schedules:
                raise TypeError(f"{owner}: {name} must be a number; this transformation does not take schedules")
            _checks.check(f"{owner}: {name}", value, kind)
            self.values[name] = value
            self.checks[name] = kind
        self.schedules = {k: v for k, v in self.values.items() if callable(v)}

    def _evaluate(self, name: str, count: jax.Array) -> jax.Array:
        value = self.values[name]
        if callable(value):
            value = value(count)
        return jnp.asarray(value, dtype=float_dtype())

    def init(self) -> Hyperparams:
        count = jnp.zeros((), jnp.int32)
        values = {name: self._evaluate(name, count) for name in self.values}
        return Hyperparams(values, self.checks, frozenset(self.schedules), self.owner)

    def at(self, hyperparams: Hyperparams, count: jax.Array) -> Hyperparams:
        """The hyperparameters in effect at step `count`: schedules evaluated, the rest from the state."""
        if not self.schedules:
            return hyperparams
        return hyperparams.replace(**{name: self._evaluate(name, count) for name in self.schedules})


def _is_hyperparams(x: Any) -> bool:
    return isinstance(x, Hyperparams)


def _nodes(state: Any) -> list[tuple[tuple, Hyperparams]]:
    """(path, node) for every Hyperparams node in `state`, the path ending at the node's container."""
    # Compact chain states hold their hyperparameters in one array: walk their transformations' states.
    flat, _ = jax.tree_util.tree_flatten_with_path(to_view(state), is_leaf=_is_hyperparams)
    # The node sits in a state field called `hyperparams`; that last key says nothing.
    return [(path[:-1], node) for path, node in flat if isinstance(node, Hyperparams)]


class _Entry(NamedTuple):
    key: str  # as `hyperparams` shows it
    name: str  # the argument name, e.g. "eps"
    node: int  # index of the Hyperparams node in flattening order
    full: str  # the path-qualified key, e.g. "1/eps" or "adam/eps"
    owner: str  # the transformation-qualified key, e.g. "scale_by_rms/eps"
    named: str | None  # qualified by the user's names on the path alone, e.g. "decay/learning_rate"


def _entries(state: Any) -> list[_Entry]:
    """Every hyperparameter of `state`, with the key `hyperparams` shows for it.

    A name that occurs once is shown plain. A repeated one is qualified, most readable first: by the
    names the user gave (a `named_chain`'s names or a `partition`'s labels, when the path has any:
    `decay/learning_rate`, or the whole path `decay/2/learning_rate` where the names alone do not
    tell the entries apart), else by the transformation that holds it (`trace/decay`,
    `scale_by_rms/decay`: stable when the chain grows), else, for the same transformation used twice,
    by its position in the state (`0/eps`, `2/eps`).
    """
    raw = []
    for i, (path, node) in enumerate(_nodes(state)):
        prefix = "/".join(tree_util.path_parts(path))
        names_on_path = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        for name in node:
            full = f"{prefix}/{name}" if prefix else name
            owner = f"{node.owner}/{name}" if node.owner else full
            named = "/".join([*names_on_path, name]) if names_on_path else None
            raw.append((name, i, full, owner, named))
    names = [r[0] for r in raw]
    owners = [r[3] for r in raw]
    named_keys = [r[4] for r in raw]
    out = []
    for name, i, full, owner, named in raw:
        if names.count(name) == 1:
            key = name
        elif named is not None:
            key = named if named_keys.count(named) == 1 else full
        elif owners.count(owner) > 1:
            key = full
        else:
            key = owner
        out.append(_Entry(key, name, i, full, owner, named))
    return out


def hyperparams(state: Any) -> dict[str, jax.Array]:
    """Return every hyperparameter in `state` as a flat dict `name -> value`.

    The values are those in effect at the last step: for a scheduled hyperparameter (a learning-rate
    schedule, say), the value the schedule produced for that step. Names are the transformations'
    argument names (`learning_rate`, `b1`, `b2`, `eps`, `weight_decay`, `max_norm`, ...). Where a
    name occurs more than once in the state, each occurrence is qualified, `/`-separated:

    - by the names of a `named_chain` on its path, when there are any (`"adam/eps"`);
    - else by the transformation that holds it: `rmsprop(..., momentum=0.9)` shows
      `"scale_by_rms/decay"` and `"trace/decay"`, keys that stay the same when the chain grows;
    - else, for one transformation used twice, by its position in the `chain` (`"0/eps"`, `"2/eps"`).

    Args:
        state: any optimizer state, or a pytree containing optimizer states.

    Returns:
        A flat `dict` of scalar arrays, in the order the transformations appear in the state. A
        state wrapped by a framework (flax NNX's `nnx.Optimizer` keeps each leaf in a `Variable`)
        still gives plain arrays, so `f"{hyperparams(opt.opt_state)['learning_rate']:.1e}"` works.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.adamw(learning_rate=gc.schedules.linear_schedule(1e-3, 0.0, 100))
        params = {"w": jnp.ones(3)}
        state = tx.init(params)
        _, state = tx.update({"w": jnp.ones(3)}, state, params)
        hp = gc.hyperparams(state)
        assert set(hp) >= {"learning_rate", "b1", "b2", "eps", "weight_decay"}
        assert jnp.isclose(hp["learning_rate"], 1e-3)  # the value used at step 0
        ```
    """
    view = to_view(state)  # once: a compact state's scalars are read out of its block here
    nodes = _nodes(view)
    # `plain`: the array inside a framework's wrapper (flax NNX keeps each state leaf in a `Variable`).
    return {e.key: plain(nodes[e.node][1][e.name]) for e in _entries(view)}


def _like(value: Any, old: jax.Array) -> jax.Array:
    """`value` with the dtype, shape and placement of `old`, so a jitted step sees the same signature."""
    new = jnp.broadcast_to(jnp.asarray(value, dtype=old.dtype), jnp.shape(old))
    if isinstance(old, jax.Array) and not isinstance(old, jax.core.Tracer) and old.committed:
        # A committed/uncommitted flip is a new signature for a jitted step, which would recompile.
        new = jax.device_put(new, old.sharding)
    return new


def set_hyperparams(state: Any, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
    """Return a copy of `state` with some hyperparameters replaced, found by name.

    Keys are the names `hyperparams(state)` shows. A plain name (`learning_rate`) must match exactly
    one entry; where it occurs in several transformations, give the qualified key `hyperparams`
    shows (`"scale_by_rms/decay"`, `"adam/eps"`), the path-qualified one (`"1/decay"`), or any
    `/`-suffix of a path that is unique. Qualified keys go in the positional mapping, plain names may
    also be keyword arguments.

    New values are checked like the transformation's own arguments (a negative learning rate raises
    ValueError) and cast to the stored dtype and shape, so a jitted step that takes the new state
    does not recompile. Hyperparameters driven by a schedule cannot be set: change the schedule.

    Args:
        state: an optimizer state (or a pytree containing one).
        values: optional mapping `key -> value`.
        **kwargs: more `name=value` pairs.

    Returns:
        The new state; `state` itself is not modified.

    Raises:
        KeyError: a key that names no hyperparameter in the state (the message lists the known keys).
        ValueError: an ambiguous key, a scheduled hyperparameter, or a value that fails its check.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.sgd(learning_rate=0.1, momentum=0.9)
        state = tx.init({"w": jnp.ones(3)})
        state = gc.set_hyperparams(state, learning_rate=0.01)
        assert jnp.isclose(gc.hyperparams(state)["learning_rate"], 0.01)
        ```
    """
    requested = {**(values or {}), **kwargs}
    view = to_view(state)  # once; `_entries` and `_nodes` walk it as they would the state
    entries = _entries(view)
    targets: dict[int, dict[str, Any]] = {}
    for key, value in requested.items():
        # Keys exactly as `hyperparams` shows them, path- or transformation-qualified, win over
        # suffix matches, so that "0/eps" never collides with "1/0/eps".
        matches = [e for e in entries if key in (e.key, e.full, e.owner, e.named)]
        if not matches:
            matches = [e for e in entries if e.full.endswith("/" + key)]
        if not matches:
            known = ", ".join(repr(e.key) for e in entries) or "none"
            raise KeyError(f"set_hyperparams: no hyperparameter {key!r} in this state; known: {known}")
        if len(matches) > 1:
            options = ", ".join(repr(e.key) for e in matches)  # the keys `hyperparams` shows
            raise ValueError(f"set_hyperparams: {key!r} is ambiguous; it matches {options}: give one of those keys")
        entry = matches[0]
        targets.setdefault(entry.node, {})[entry.name] = (entry.key, value)

    counter = iter(range(len(_nodes(view))))

    def replace(node: Any) -> Any:
        if not isinstance(node, Hyperparams):
            return node
        index = next(counter)
        if index not in targets:
            return node
        new = {}
        for name, (shown, value) in targets[index].items():
            if name in node.scheduled:
                raise ValueError(
                    f"set_hyperparams: {shown!r} is produced by a schedule and cannot be set; "
                    "build the transformation with a different schedule instead"
                )
            _checks.check(shown, value, node.check_kind(name))
            # Map over the old entry rather than replace it: frameworks may wrap state leaves (flax
            # NNX keeps each in a Variable), and the wrapper must survive.
            new[name] = jax.tree.map(lambda leaf, value=value: _like(value, leaf), node[name])
        return node.replace(**new)

    return restore_from_view(state, jax.tree_util.tree_map(replace, view, is_leaf=_is_hyperparams))
