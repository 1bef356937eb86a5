"""Composing transformations: `chain`, `named_chain`, and the packed runner under both.

optax calls this idea "combine". A chain applies its transformations one after another and keeps
their states side by side; the runner under it packs many small leaves into a few contiguous
buffers for the element-wise ingredients that allow it (`_packing.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gradchain import _packing as packing
from gradchain._base import GradientTransformation, with_extra_args_support
from gradchain._checks import check_leaf_dtypes, check_transformation
from gradchain._compact import ChainState, NamedChainState
from gradchain._masking import resolve_mask

__all__ = ["PackedRunner", "chain", "named_chain"]


def chain(*transforms: GradientTransformation, pack: bool | None = None) -> GradientTransformation:
    """Apply transformations one after another; the state holds their states, in order.

    $$ u = f_n(\\dots f_2(f_1(g))) $$

    The state is a `ChainState`: it reads like optax's tuple of states (`state[0].mu`,
    `state[1].count`, unpacking, `len`), and as a pytree it keeps every scalar of the chain (step
    counts, hyperparameters, a recorded norm; nested chains included) in one float array, so a
    jitted step passes one scalar buffer per chain instead of one per scalar (see `ChainState`).

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
        A `GradientTransformation` whose state is a `ChainState` with one entry per transformation.

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
        check_transformation(f"chain: transform {i}", tx)
    runner = PackedRunner("chain", transforms, pack)

    def init(params):
        return ChainState(runner.init(params))

    def update(updates, state, params=None, **extra_args):
        # A plain tuple of the transformations' states (built by hand, or by an older version) is accepted too.
        if not isinstance(state, ChainState | tuple) or len(state) != len(transforms):
            length = len(state) if isinstance(state, ChainState | tuple) else "?"
            raise ValueError(
                f"chain: expected a state of {len(transforms)} entries (one per transform), "
                f"got {type(state).__name__} of length {length}"
            )
        updates, new_state = runner.update(updates, list(state), params, extra_args)
        return updates, ChainState(new_state)

    return GradientTransformation(init, runner.mark(update))


class PackedRunner:
    """Runs a sequence of transformations, on packed buffers where they allow it (see `chain`).

    `chain` and `named_chain` are this runner with a tuple or a dict around its states. Each
    transformation is adapted with `with_extra_args_support` once, here, so `update` forwards the
    extra arguments without inspecting signatures on every call.
    """

    def __init__(self, owner: str, transforms: tuple[Any, ...], pack: bool | None):
        if pack is not None and not isinstance(pack, bool):
            raise TypeError(f"{owner}: pack must be True, False or None (automatic), got {pack!r}")
        self.owner = owner
        self.transforms = tuple(with_extra_args_support(tx) for tx in transforms)
        self.pack = pack
        self.infos = [packing.pack_info(tx) for tx in self.transforms]

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
                updates, state = tx.update(updates, state, params, **extra_args)
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
            updates, state = tx.update(updates, state, p, **extra_args)
            new_states.append(state)
        updates = packing.pack(updates, layout) if given_packed else packing.unpack(updates)
        return updates, new_states


def named_chain(*transforms: tuple[str, GradientTransformation], pack: bool | None = None) -> GradientTransformation:
    """Like `chain`, but the state is a mapping keyed by the names given (a `NamedChainState`).

    Names also qualify hyperparameter keys where they repeat (`"adam/eps"`), see `hyperparams`.

    Args:
        *transforms: `(name, transformation)` pairs, applied left to right. Names must be unique.
        pack: packed execution, as in `chain`.

    Returns:
        A `GradientTransformation` whose state is a `NamedChainState`, a mapping `name -> state` in
        the order given, its scalars in one array as in `chain`.

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
        check_transformation(f"named_chain: transform {name!r}", tx)

    runner = PackedRunner("named_chain", tuple(tx for _, tx in transforms), pack)

    def init(params):
        return NamedChainState(dict(zip(names, runner.init(params), strict=True)))

    def update(updates, state, params=None, **extra_args):
        # Compared as sets: a plain dict (accepted too) comes back from jax with its keys sorted.
        if not isinstance(state, Mapping) or set(state) != set(names):
            got = list(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"named_chain: expected a state with keys {names}, got {got}")
        updates, new_states = runner.update(updates, [state[name] for name in names], params, extra_args)
        return updates, NamedChainState(dict(zip(names, new_states, strict=True)))

    return GradientTransformation(init, runner.mark(update))
