"""Lifting a per-array update rule over pytrees.

An element-wise ingredient (momentum, RMS scaling, Adam's moments, weight decay, ...) states its
rule for a single array, as the math reads in the paper:

    def adam_rule(g, mu, nu, *, hp, t):
        mu = hp.b1 * mu + (1 - hp.b1) * g
        ...
        return update, (mu, nu)

`elementwise` turns such a rule into a `GradientTransformation`. Everything that is not the math
lives here, once, for every ingredient:

- the state: a step count, one buffer per declared `Slot` for every leaf, and the hyperparameters;
- the dtype policy: each slot's storage dtype (the param's, or one the user chose, e.g. float32
  moments for bfloat16 params), and the compute dtype: the rule runs in at least float32 so that
  eps and bias corrections do not underflow in float16/bfloat16, and the update is cast back to
  the gradient's dtype;
- checks at the boundary: integer/boolean params, updates whose tree or shapes differ from the
  state's, complex leaves for rules that do not support them, each named by leaf path;
- masks (leaves a rule leaves alone) and `None` leaves;
- the loop over leaves, which the packed execution path replaces by a loop over a few buffers.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from gradchain import _packing as packing
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation
from gradchain._hyperparams import HyperparamSpec, float_dtype

INT32_MAX = jnp.iinfo(jnp.int32).max


@dataclasses.dataclass(frozen=True)
class Slot:
    """One per-parameter buffer of an element-wise rule's state.

    Attributes:
        name: the field name in the state (`mu`, `nu`, `trace`, ...).
        init: the initial value of every element.
        dtype: storage dtype; None means the param's dtype.
        real: an accumulator of |g|^2: stored in the real dtype for complex params, and in float32
            (not float16) for float16 params, whose range cannot hold small squared gradients.
    """

    name: str
    init: float = 0.0
    dtype: DTypeLike | None = None
    real: bool = False

    def storage_dtype(self, param_dtype: Any) -> jnp.dtype:
        if self.dtype is not None:
            return jnp.dtype(self.dtype)
        dtype = jnp.dtype(param_dtype)
        if self.real and jnp.issubdtype(dtype, jnp.complexfloating):
            return jnp.finfo(dtype).dtype
        if self.real and dtype == jnp.float16:
            # float16 cannot hold squared gradients: (1 - b2) g^2 is 0 below |g| ~ 8e-3, and a later
            # step then divides by eps alone. bfloat16 has float32's range and keeps its own dtype.
            return jnp.dtype(jnp.float32)
        return dtype


def check_state_dtype(owner: str, name: str, dtype: DTypeLike | None) -> DTypeLike | None:
    """Validate a user-given storage dtype such as `mu_dtype` (a floating dtype or None)."""
    if dtype is None:
        return None
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{owner}: {name} must be a floating dtype or None, got {dtype!r}") from e
    if not jnp.issubdtype(resolved, jnp.inexact):
        raise TypeError(f"{owner}: {name} must be a floating dtype or None, got {resolved}")
    return dtype


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype a rule runs in for a leaf of `dtype`: at least float32, complex kept complex."""
    return jnp.promote_types(dtype, jnp.float32)


def real_dtype(dtype: Any) -> jnp.dtype:
    return jnp.finfo(dtype).dtype


def saturating_increment(count: jax.Array) -> jax.Array:
    """count + 1, stopping at the int32 maximum so that a long run never wraps to a negative step."""
    return jnp.where(count < INT32_MAX, count + 1, INT32_MAX).astype(count.dtype)


def check_leaf_dtypes(owner: str, what: str, tree: Any, *, complex_ok: bool) -> None:
    """Raise TypeError naming the leaf path for integer/boolean leaves, or complex ones if unsupported."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = jnp.dtype(getattr(leaf, "dtype", None) or jnp.result_type(leaf))
        where = tree_util.path_str(path)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{owner}: {what} leaf {where} has dtype {dtype}; optimizers need floating-point "
                "(or complex) arrays. Keep integer or boolean leaves out of the optimized tree, or mask them."
            )
        if not complex_ok and jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"{owner}: {what} leaf {where} is {dtype}; {owner} does not support complex values")


def resolve_mask(owner: str, mask: Any, params: Any, updates: Any) -> list[bool] | None:
    if mask is None:
        return None
    if callable(mask):
        if params is None:
            raise ValueError(f"{owner}: a callable mask needs params; call update(updates, state, params)")
        mask = mask(params)
    # The mask may be a prefix of the updates tree (as in optax): a bool for a whole subtree.
    mask_def = jax.tree.structure(mask)
    try:
        subtrees = mask_def.flatten_up_to(updates)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{owner}: the mask tree is not a prefix of the updates tree: {e}\n"
            f"  mask:    {mask_def}\n  updates: {jax.tree.structure(updates)}"
        ) from None
    leaves = []
    for value, subtree in zip(jax.tree.leaves(mask), subtrees, strict=True):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{owner}: mask leaves must be booleans, got {value!r}")
        leaves.extend([bool(value)] * len(jax.tree.leaves(subtree)))
    return leaves


def elementwise(
    owner: str,
    rule: Callable[..., tuple[jax.Array, tuple[jax.Array, ...]]],
    state_type: type,
    hyperparams: HyperparamSpec,
    *,
    slots: Sequence[Slot] = (),
    scalars: Mapping[str, float] | None = None,
    scalar_rule: Callable[..., dict[str, jax.Array]] | None = None,
    uses_params: bool = False,
    complex_ok: bool = True,
    mask: Any = None,
) -> GradientTransformation:
    """Build a transformation from a per-array rule.

    Args:
        owner: the public name, used in error messages.
        rule: `rule(g, *slots, hp=..., t=..., [p=...]) -> (update, tuple_of_new_slots)`. `g`, the slots
            and `p` arrive in the compute dtype; `hp` has the hyperparameters as attributes (real
            compute dtype); `t` is the 1-based step number as a real scalar.
        state_type: a NamedTuple with fields `count`, one per slot (in order), one per scalar, and
            `hyperparams`.
        hyperparams: the transformation's hyperparameters.
        slots: the per-parameter buffers.
        scalars: state shared by all leaves, `name -> initial value` (stored in the default float
            dtype), such as NAdam's running product of momentum coefficients.
        scalar_rule: `scalar_rule(hp=..., t=..., **scalars) -> dict of new scalars`, run once per
            step before the leaves; the rule then receives the new scalars as keyword arguments.
        uses_params: pass the params to the rule as `p` (update then requires params).
        complex_ok: whether complex leaves are allowed.
        mask: None, or a tree of bools (the updates' tree or a prefix of it) / a function of the
            params giving one: False leaves pass through unchanged. Only for rules without slots.
    """
    slots = tuple(slots)
    scalars = dict(scalars or {})
    if bool(scalars) != (scalar_rule is not None):
        raise ValueError(f"{owner}: scalars and scalar_rule go together")
    if mask is not None and slots:
        raise ValueError(f"{owner}: masks are only supported for rules without state buffers")

    def init(params):
        check_leaf_dtypes(owner, "param", params, complex_ok=complex_ok)
        buffers = {
            slot.name: jax.tree.map(
                lambda p, slot=slot: tree_util.full_like(p, slot.init, slot.storage_dtype(p.dtype)), params
            )
            for slot in slots
        }
        shared = {name: jnp.asarray(value, float_dtype()) for name, value in scalars.items()}
        state = state_type(count=jnp.zeros((), jnp.int32), **buffers, **shared, hyperparams=hyperparams.init())
        return tree_util.place_like(state, params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if uses_params and params is None:
            raise ValueError(f"{owner} needs the params: call update(updates, state, params)")
        check_leaf_dtypes(owner, "update", updates, complex_ok=complex_ok)
        if slots:
            tree_util.check_same_structure(
                getattr(state, slots[0].name), updates, expected_name="state", actual_name="updates", where=owner
            )
        if uses_params:
            tree_util.check_same_structure(params, updates, expected_name="params", actual_name="updates", where=owner)

        hp_state = hyperparams.at(state.hyperparams, state.count)
        count = saturating_increment(state.count)
        shared = {}
        if scalar_rule is not None:
            hp_view = types.SimpleNamespace(**hp_state)
            old = {name: getattr(state, name) for name in scalars}
            shared = {
                name: jnp.asarray(v, old[name].dtype)
                for name, v in scalar_rule(hp=hp_view, t=count.astype(float_dtype()), **old).items()
            }

        treedef = jax.tree.structure(updates)
        g_leaves = treedef.flatten_up_to(updates)
        slot_leaves = [treedef.flatten_up_to(getattr(state, slot.name)) for slot in slots]
        p_leaves = treedef.flatten_up_to(params) if uses_params else [None] * len(g_leaves)
        active = _active(owner, mask, params, updates) or [True] * len(g_leaves)

        @functools.cache
        def scalars_in(dtype):
            # Hyperparameters, step and shared scalars in a leaf's real compute dtype: cast once per
            # dtype, not once per leaf, so the traced step does not grow by these casts per leaf.
            rdtype = real_dtype(compute_dtype(dtype))
            hp_view = types.SimpleNamespace(**{k: v.astype(rdtype) for k, v in hp_state.items()})
            return {"hp": hp_view, "t": count.astype(rdtype), **{k: v.astype(rdtype) for k, v in shared.items()}}

        out_updates, out_slots = [], [[] for _ in slots]
        for i, g in enumerate(g_leaves):
            stored = [leaves[i] for leaves in slot_leaves]
            if active[i] is False:
                u, new = g, stored
            else:
                u, new = _apply(rule, g, stored, p_leaves[i], scalars_in(g.dtype), uses_params)
                if active[i] is not True:  # a packed buffer holding masked and unmasked leaves
                    u = jnp.where(active[i], u, g)
            out_updates.append(u)
            for k, value in enumerate(new):
                out_slots[k].append(value)

        new_buffers = {slot.name: treedef.unflatten(out_slots[k]) for k, slot in enumerate(slots)}
        new_state = state_type(count=count, **new_buffers, **shared, hyperparams=hp_state)
        return treedef.unflatten(out_updates), new_state

    info = packing.PackInfo(owner, uses_params=uses_params, complex_ok=complex_ok, mask=mask)
    return GradientTransformation(init, packing.mark_packable(update, info))


def _active(owner: str, mask: Any, params: Any, updates: Any) -> list[Any] | None:
    """Per leaf (or per packed buffer): True, False, or a per-element bool array for mixed buffers."""
    if mask is None:
        return None
    if not isinstance(updates, packing.Packed):
        return resolve_mask(owner, mask, params, updates)
    layout = updates.layout
    tree = packing.unpack(params) if params is not None else None
    bits = resolve_mask(owner, mask, tree, layout.abstract_tree())
    return [
        common if not isinstance(common, list) else packing.expand(layout, j, common)
        for j, common in enumerate(packing.per_buffer(layout, bits))
    ]


def _apply(rule, g, stored, p, scalars, uses_params):
    """Run the rule on one leaf: cast in, compute in at least float32, cast out."""
    cdtype = compute_dtype(g.dtype)
    rdtype = real_dtype(cdtype)
    ins = [s.astype(jnp.promote_types(s.dtype, rdtype)) for s in stored]
    kwargs = dict(scalars)
    if uses_params:
        kwargs["p"] = jnp.asarray(p).astype(cdtype)
    u, new = rule(g.astype(cdtype), *ins, **kwargs)
    return u.astype(g.dtype), [n.astype(s.dtype) for n, s in zip(new, stored, strict=True)]
