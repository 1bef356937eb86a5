"""The protocol: a gradient transformation is a pair of pure functions, and they compose."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from gradchain import _packing as packing
from gradchain import tree as tree_util

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree


class InitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class UpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions `(init, update)`: the one protocol everything in gradchain speaks.

    - `init(params) -> state` builds the state from the parameters (or from `jax.ShapeDtypeStruct`s
      under `jax.eval_shape`, to derive state shapes and shardings before allocating memory).
    - `update(updates, state, params=None, **extra_args) -> (updates, state)` transforms a gradient
      tree into an update tree. Extra keyword arguments (a loss value, a step key) are passed down a
      chain, and every transformation ignores those it does not use.

    The layout is that of optax's `GradientTransformation`, so a gradchain transformation works
    wherever optax's does (flax `TrainState`, `nnx.Optimizer`, code calling `tx.init`/`tx.update`).

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        def init(params):
            return gc.EmptyState()

        def update(updates, state, params=None, **extra_args):
            return jax.tree.map(lambda g: -0.1 * g, updates), state

        tx = gc.GradientTransformation(init, update)
        params = {"w": jnp.ones(2)}
        updates, state = tx.update({"w": jnp.ones(2)}, tx.init(params))
        assert jnp.allclose(gc.apply_updates(params, updates)["w"], 0.9)
        ```
    """

    init: InitFn
    update: UpdateFn


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none.

    Example:
        ```python
        import gradchain as gc
        assert gc.identity().init({}) == gc.EmptyState()
        ```
    """


def _accepts_extra_args(update: Callable) -> bool:
    """Whether `update` takes `**kwargs` (or has no signature to tell)."""
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _accepted_extra_args(update: Callable, extra_args: dict) -> dict:
    """The extra args `update` takes: all with `**kwargs`, else those its signature names."""
    try:
        parameters = inspect.signature(update).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return extra_args
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return extra_args
    named = {n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return {k: v for k, v in extra_args.items() if k in named}


def _call_update(tx: Any, updates, state, params, extra_args):
    # Transformations written for plain optax take no **extra_args: give each only the extra args it
    # names (`value=` for a loss-driven one), and drop the rest rather than fail.
    if not extra_args:
        return tx.update(updates, state, params)
    return tx.update(updates, state, params, **_accepted_extra_args(tx.update, extra_args))


def _check_transform(where: str, tx: Any) -> None:
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(f"{where} must be a GradientTransformation (with init and update), got {tx!r}")


def chain(*transforms: GradientTransformation, pack: bool | None = None) -> GradientTransformation:
    """Apply transformations one after another; the state is the tuple of their states.

    $$ u = f_n(\\dots f_2(f_1(g))) $$

    Packed execution: element-wise ingredients (momentum, RMS and Adam-family moments, weight
    decay, scaling, value clipping) and global-norm clipping run over a few contiguous buffers of
    packed leaves instead of leaf by leaf, and their state stays packed between steps. The chain
    packs the gradients (and the params, if an ingredient reads them) on entry and unpacks the
    updates on exit; ingredients that need the tree (factored moments, block RMS, checks that name
    leaves) get it, so a mixed chain still packs what it can. The numbers are those of the unpacked
    path: bit for bit for element-wise arithmetic, and to rounding for global norms. See `pack` and
    the Performance page.

    Args:
        *transforms: the transformations, applied left to right.
        pack: None (default, automatic) packs leaves of up to 65,536 elements where at least 32
            of them share a dtype and placement, and leaves the rest as they are; True packs every
            leaf that can share a buffer; False never packs. Sharded leaves are never packed. A
            chain with no per-leaf state never packs.

    Returns:
        A `GradientTransformation` whose state is a tuple with one entry per transformation.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.clip_by_global_norm(1.0), gc.scale_by_adam(), gc.scale_by_learning_rate(1e-3))
        params = {"w": jnp.ones(3)}
        state = tx.init(params)
        updates, state = tx.update({"w": jnp.full(3, 10.0)}, state, params)

        # Packed: the moments of 100 small leaves live in one buffer.
        params = {f"b{i}": jnp.zeros(4) for i in range(100)}
        tx = gc.chain(gc.scale_by_adam(), gc.scale_by_learning_rate(1e-3))
        state = tx.init(params)
        assert isinstance(state[0].mu, gc.Packed) and state[0].mu.buffers[0].shape == (400,)
        updates, state = tx.update(params, state, params)
        assert updates["b7"].shape == (4,)
        ```
    """
    for i, tx in enumerate(transforms):
        _check_transform(f"chain: transform {i}", tx)
    runner = _PackedRunner("chain", transforms, pack)

    def init(params):
        return tuple(runner.init(params))

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(
                f"chain: expected a state tuple of {len(transforms)} entries (one per transform), "
                f"got {type(state).__name__} of length {len(state) if isinstance(state, tuple) else '?'}"
            )
        updates, new_state = runner.update(updates, list(state), params, extra_args)
        return updates, tuple(new_state)

    return GradientTransformation(init, runner.mark(update))


class _PackedRunner:
    """Runs a sequence of transformations, on packed buffers where they allow it (see `chain`)."""

    def __init__(self, owner: str, transforms: tuple[Any, ...], pack: bool | None):
        if pack is not None and not isinstance(pack, bool):
            raise TypeError(f"{owner}: pack must be True, False or None (automatic), got {pack!r}")
        self.owner = owner
        self.transforms = transforms
        self.pack = pack
        self.infos = [packing.pack_info(tx) for tx in transforms]

    def mark(self, update: Callable) -> Callable:
        # A chain of packable transformations is itself packable (nested chains run packed).
        if self.infos and all(info is not None for info in self.infos):
            members = tuple(info for info in self.infos if info is not None)
            info = packing.PackInfo(
                owner=self.owner,
                uses_params=any(m.uses_params for m in members),
                complex_ok=all(m.complex_ok for m in members),
                members=members,
            )
            packing.mark_packable(update, info)
        return update

    def _check_leaves(self, what: str, tree: Any) -> None:
        from gradchain._lift import check_leaf_dtypes  # _lift builds on _base

        # One walk over the leaves, in the name of the first ingredient that would refuse them.
        members = [leaf for info in self.infos if info is not None for leaf in packing.flat_infos(info)]
        strict = next((m for m in members if not m.complex_ok), None)
        first = strict or members[0]
        check_leaf_dtypes(first.owner, what, tree, complex_ok=first.complex_ok)

    def _layout(self, params: Any) -> packing.Layout | None:
        if isinstance(params, packing.Packed):
            return params.layout
        if self.pack is False or params is None or not any(self.infos):
            return None
        self._check_leaves("param", params)
        tags = self._mask_tags(params)
        if self.pack:
            layout = packing.make_layout(params, max_leaf_size=None, tags=tags)
        else:
            layout = packing.make_layout(
                params,
                max_leaf_size=packing.AUTO_MAX_LEAF_SIZE,
                min_group_size=packing.AUTO_MIN_GROUP_SIZE,
                tags=tags,
            )
        return layout if any(layout.packed) else None

    def _mask_tags(self, params: Any) -> list[tuple[bool, ...]] | None:
        from gradchain._lift import resolve_mask

        masks = [
            leaf_info
            for info in self.infos
            if info is not None
            for leaf_info in packing.flat_infos(info)
            if leaf_info.mask is not None
        ]
        if not masks:
            return None
        bits = [resolve_mask(m.owner, m.mask, params, params) for m in masks]
        return list(zip(*bits, strict=True))

    def init(self, params: Any) -> list[Any]:
        layout = self._layout(params)
        if layout is None:
            return [tx.init(packing.unpack(params)) for tx in self.transforms]
        packed = packing.pack(params, layout)
        tree = packing.unpack(params)
        return [
            tx.init(packed if info is not None else tree) for tx, info in zip(self.transforms, self.infos, strict=True)
        ]

    def update(self, updates: Any, states: list[Any], params: Any, extra_args: dict) -> tuple[Any, list[Any]]:
        given_packed = isinstance(updates, packing.Packed)
        layout = updates.layout if given_packed else packing.find_layout(states)
        if layout is None:
            new_states = []
            for tx, state in zip(self.transforms, states, strict=True):
                updates, state = _call_update(tx, updates, state, params, extra_args)
                new_states.append(state)
            return updates, new_states

        if not given_packed:
            packing.check_matches(layout, updates, what="updates", where=self.owner)
            self._check_leaves("update", updates)
        views: dict[str, Any] = {}

        def params_as(packed: bool) -> Any:
            if params is None:
                return None
            key = "packed" if packed else "tree"
            if key not in views:
                if packed:
                    if not isinstance(params, packing.Packed):
                        packing.check_matches(layout, params, what="params", where=self.owner)
                    views[key] = packing.pack(params, layout)
                else:
                    views[key] = packing.unpack(params)
            return views[key]

        new_states = []
        for tx, info, state in zip(self.transforms, self.infos, states, strict=True):
            if info is not None:
                updates = packing.pack(updates, layout)
                p = params_as(True) if info.uses_params else params
            else:
                updates = packing.unpack(updates)
                p = params_as(False)
            updates, state = _call_update(tx, updates, state, p, extra_args)
            new_states.append(state)
        updates = packing.pack(updates, layout) if given_packed else packing.unpack(updates)
        return updates, new_states


def named_chain(*transforms: tuple[str, GradientTransformation], pack: bool | None = None) -> GradientTransformation:
    """Like `chain`, but the state is a dict keyed by the names given.

    Names also qualify hyperparameter keys where they repeat (`"adam/eps"`), see `hyperparams`.

    Args:
        *transforms: `(name, transformation)` pairs, applied left to right. Names must be unique.
        pack: packed execution, as in `chain`.

    Returns:
        A `GradientTransformation` whose state is a dict `name -> state`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.named_chain(("clip", gc.clip(1.0)), ("adam", gc.scale_by_adam()), ("lr", gc.scale(-1e-3)))
        state = tx.init({"w": jnp.ones(3)})
        assert list(state) == ["clip", "adam", "lr"]
        ```
    """
    names = [name for name, _ in transforms]
    repeated = sorted({name for name in names if names.count(name) > 1}, key=str)
    if repeated:
        raise ValueError(f"named_chain: names must be unique; repeated: {repeated}")
    for name, tx in transforms:
        if not isinstance(name, str):
            raise TypeError(f"named_chain: names must be strings, got {name!r}")
        _check_transform(f"named_chain: transform {name!r}", tx)

    runner = _PackedRunner("named_chain", tuple(tx for _, tx in transforms), pack)

    def init(params):
        return dict(zip(names, runner.init(params), strict=True))

    def update(updates, state, params=None, **extra_args):
        # Compared as sets: jax rebuilds dicts with sorted keys, so a jitted state comes back reordered.
        if not isinstance(state, dict) or set(state) != set(names):
            got = list(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"named_chain: expected a state dict with keys {names}, got {got}")
        updates, new_states = runner.update(updates, [state[name] for name in names], params, extra_args)
        return updates, dict(zip(names, new_states, strict=True))

    return GradientTransformation(init, runner.mark(update))


def identity() -> GradientTransformation:
    """The transformation that returns the updates unchanged and keeps no state.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.identity()
        updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(None))
        assert (updates["w"] == 1).all()
        ```
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return updates, state

    return GradientTransformation(init, update)


def stateless(
    fn: Callable[[Updates, Params | None], Updates],
) -> GradientTransformation:
    """Turn a function `fn(updates, params) -> updates` into a transformation with no state.

    Args:
        fn: a pure function of the whole update tree and the params (which may be None).

    Returns:
        A `GradientTransformation` with `EmptyState`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        halve = gc.stateless(lambda updates, params: jax.tree.map(lambda u: u / 2, updates))
        updates, _ = halve.update({"w": jnp.ones(2)}, halve.init(None))
        assert (updates["w"] == 0.5).all()
        ```
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return fn(updates, params), state

    return GradientTransformation(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Add the updates to the params, leaf by leaf, keeping each param's dtype.

    $$ p \\leftarrow p + u $$

    The sum is computed in the wider of the two dtypes and then cast back to the param's dtype, so a
    bfloat16 param updated by a float32 update stays bfloat16. `None` leaves pass through.

    Args:
        params: the parameter tree.
        updates: a tree of the same structure (the output of `update`).

    Returns:
        The new parameter tree.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        params = {"w": jnp.ones(2, jnp.bfloat16), "b": None}
        new = gc.apply_updates(params, {"w": jnp.full(2, -0.5), "b": None})
        assert new["w"].dtype == jnp.bfloat16 and new["b"] is None
        ```
    """

    # Broadcasting would silently change a param's shape; the check runs at trace time only.
    tree_util.check_same_structure(
        params, updates, expected_name="params", actual_name="updates", where="apply_updates"
    )

    def add(p, u):
        if p is None:
            return None
        return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)
