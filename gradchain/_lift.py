"""Lifting a per-array update rule over pytrees.

An element-wise ingredient (momentum, RMS scaling, Adam's moments, weight decay, ...) states its
rule for a single array, as the math reads in the paper:

    def rule(g, mu, nu, *, b1, b2, eps, eps_root, t):
        mu = b1 * mu + (1 - b1) * g
        ...
        return update, (mu, nu)

`elementwise` turns such a rule into a `GradientTransformation`. Everything that is not the math
lives here, once, for every ingredient:

- the contract: the rule's parameters are checked against the declared slots and hyperparameters
  when the transformation is built (see `elementwise`);
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
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradchain import _packing as packing
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation
from gradchain._checks import check_leaf_dtypes
from gradchain._hyperparams import HyperparamSpec
from gradchain._masking import resolve_mask
from gradchain._numerics import compute_dtype, float_dtype, real_dtype, safe_increment


@dataclasses.dataclass(frozen=True)
class Slot:
    """One per-parameter buffer of an element-wise rule's state.

    Attributes:
        name: the field name in the state (`mu`, `nu`, `trace`, ...), and the name of the rule's
            positional parameter that receives it.
        init: the initial value of every element.
        dtype: storage dtype; None means the param's dtype (a user's choice is checked by the
            ingredient with `check_state_dtype`, in the name of its argument).
        real: an accumulator of |g|^2: stored in the real dtype for complex params, and in float32
            (not float16) for float16 params, whose range cannot hold small squared gradients.
        enabled: False leaves the slot out: the state holds `()` in its field, and the rule is
            called without it, so its parameter takes its default (centered RMSProp's `mu=None`).

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        nu = gc.Slot("nu", real=True)  # |g|^2 accumulates in the real dtype
        assert nu.storage_dtype(jnp.complex64) == jnp.float32
        assert gc.Slot("mu", dtype=jnp.float32).storage_dtype(jnp.bfloat16) == jnp.float32
        ```
    """

    name: str
    init: float = 0.0
    dtype: DTypeLike | None = None
    real: bool = False
    enabled: bool = True

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


def _bind(
    owner: str,
    what: str,
    fn: Callable,
    *,
    positional: Sequence[str],
    optional: frozenset[str] = frozenset(),
    required: frozenset[str],
    allowed: frozenset[str],
) -> frozenset[str]:
    """Check `fn`'s parameters against what it will be given; return its keyword names.

    The positional parameters stand for `positional` in order (any names); those in `optional`
    (slots that may be switched off, and then are not passed) need a default. The keyword-only
    ones must include every name in `required` and nothing outside `allowed`. Errors name the
    ingredient, the function and the name, so a misspelt hyperparameter fails when the
    transformation is built rather than when it is traced.
    """
    params = inspect.signature(fn).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TypeError(f"{owner}: the {what} must name its arguments (no *args or **kwargs)")
    given = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(given) != len(positional):
        raise TypeError(
            f"{owner}: the {what} must take {len(positional)} positional parameters (for "
            f"{', '.join(positional) or 'nothing'}: the gradient, then the state slots in order); "
            f"got ({', '.join(p.name for p in given)})"
        )
    for name, p in zip(positional, given, strict=True):
        if name in optional and p.default is inspect.Parameter.empty:
            raise TypeError(
                f"{owner}: the {what}'s parameter {p.name!r} stands for the optional slot {name!r} and needs a default"
            )
    keywords = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY)
    unknown = sorted(keywords - allowed)
    if unknown:
        raise TypeError(
            f"{owner}: the {what} takes {unknown[0]!r}, which is not a hyperparameter of {owner} "
            f"(declared: {', '.join(sorted(allowed)) or 'none'})"
        )
    missing = sorted(required - keywords)
    if missing:
        raise TypeError(f"{owner}: the {what} does not take the declared hyperparameter {missing[0]!r}")
    return keywords


def _check_state_type(owner: str, state_type: type, fields: Sequence[str]) -> None:
    declared = getattr(state_type, "_fields", None)
    if declared is None:
        raise TypeError(f"{owner}: the state type must be a NamedTuple, got {state_type!r}")
    if tuple(declared) != tuple(fields):
        raise TypeError(
            f"{owner}: the state type {state_type.__name__} has the fields ({', '.join(declared)}); "
            f"the rule's state needs ({', '.join(fields)}): count, the slots, the scalars, hyperparams"
        )


def elementwise(
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
    """Build a transformation from a per-array rule (the contract every element-wise ingredient follows).

    The rule is the math for one array:

        def rule(g, mu, nu, *, b1, b2, eps, eps_root, t):
            ...
            return update, (mu, nu)

    Its positional parameters are the gradient and the slots, in the order of `slots` (a disabled
    optional slot is not passed, so its parameter needs a default); its keyword-only
    parameters are the hyperparameters by the names the user passed them under, plus `t` (the
    1-based step as a real scalar) if the rule wants it, `p` (the param) when `uses_params`, and
    the shared scalars. All of this is checked here, when the transformation is built, as is the
    state type's field list: a misspelt name fails at construction with the ingredient's name.

    Args:
        rule: `rule(g, *slots, **hyperparameters, [t], [p], **scalars) -> (update, new_slots)`.
            `g`, the slots and `p` arrive in the compute dtype (at least float32); hyperparameters,
            `t` and scalars in its real dtype. `new_slots` is a tuple, one per enabled slot.
        state_type: a NamedTuple with the fields `count`, one per slot (in order), one per scalar,
            and `hyperparams`.
        hyperparams: the transformation's hyperparameters; its `owner` names the ingredient in
            every error message.
        slots: the per-parameter buffers.
        scalars: state shared by all leaves, `name -> initial value` (stored in the default float
            dtype), such as NAdam's running product of momentum coefficients.
        scalar_rule: `scalar_rule(*, <hyperparameters it uses>, [t], <every scalar>) -> dict of new
            scalars`, run once per step before the leaves; the rule then receives the new scalars.
        uses_params: pass the params to the rule as `p` (update then requires params).
        complex_ok: whether complex leaves are allowed.
        mask: None, or anything `masked` accepts (a tree of bools, the updates' tree or a prefix of
            it, a function of the params, `mask_by_path(...)`): False leaves pass through
            unchanged. Only for rules without slots.

    Returns:
        A `GradientTransformation` whose state is `state_type(count, *slots, *scalars, hyperparams)`;
        it runs packed inside a `chain` like the built-in ingredients.

    Raises:
        TypeError: the rule, the scalar rule or the state type does not match the declaration
            (the message names the ingredient and the parameter).

    Example:
        ```python
        from typing import NamedTuple

        import jax
        import jax.numpy as jnp
        import gradchain as gc

        class ScaleByEmaSignState(NamedTuple):
            count: jax.Array
            mu: dict
            hyperparams: gc.Hyperparams

        def scale_by_ema_sign(decay=0.9):
            spec = gc.HyperparamSpec("scale_by_ema_sign", decay=(decay, gc.Check.UNIT_INTERVAL))

            def rule(g, mu, *, decay):
                mu = decay * mu + (1 - decay) * g
                return jnp.sign(mu), (mu,)

            return gc.elementwise(rule, ScaleByEmaSignState, spec, slots=[gc.Slot("mu")])

        tx = scale_by_ema_sign()
        params = {"w": jnp.zeros(2)}
        updates, state = tx.update({"w": jnp.array([0.5, -2.0])}, tx.init(params))
        assert (updates["w"] == jnp.array([1.0, -1.0])).all()
        assert gc.hyperparams(state)["decay"] == jnp.float32(0.9)

        def misspelt(g, mu, *, decya):  # caught when the transformation is built
            return g, (mu,)

        spec = gc.HyperparamSpec("scale_by_ema_sign", decay=(0.9, gc.Check.UNIT_INTERVAL))
        try:
            gc.elementwise(misspelt, ScaleByEmaSignState, spec, slots=[gc.Slot("mu")])
        except TypeError as e:
            assert "'decya'" in str(e)
        ```
    """
    owner = hyperparams.owner
    slots = tuple(slots)
    active_slots = tuple(slot for slot in slots if slot.enabled)
    scalars = dict(scalars or {})
    if bool(scalars) != (scalar_rule is not None):
        raise ValueError(f"{owner}: scalars and scalar_rule go together")
    if mask is not None and slots:
        raise ValueError(f"{owner}: masks are only supported for rules without state buffers")
    _check_state_type(owner, state_type, ["count", *(s.name for s in slots), *scalars, "hyperparams"])
    hp_names = frozenset(hyperparams.values)
    extra = {"t"} | ({"p"} if uses_params else set())
    rule_keywords = _bind(
        owner,
        "rule",
        rule,
        positional=["g", *(s.name for s in slots)],
        optional=frozenset(s.name for s in slots if not s.enabled),
        required=hp_names | frozenset(scalars) | ({"p"} if uses_params else frozenset()),
        allowed=hp_names | frozenset(scalars) | extra,
    )
    wants_t = "t" in rule_keywords
    if scalar_rule is not None:
        scalar_keywords = _bind(
            owner,
            "scalar_rule",
            scalar_rule,
            positional=[],
            required=frozenset(scalars),
            allowed=hp_names | frozenset(scalars) | {"t"},
        )
    empty = {slot.name: () for slot in slots if not slot.enabled}

    def init(params):
        check_leaf_dtypes(owner, "param", params, complex_ok=complex_ok)
        buffers = {
            slot.name: jax.tree.map(
                lambda p, slot=slot: tree_util.full_like(p, slot.init, slot.storage_dtype(p.dtype)), params
            )
            for slot in active_slots
        }
        shared = {name: jnp.asarray(value, float_dtype()) for name, value in scalars.items()}
        state = state_type(count=jnp.zeros((), jnp.int32), **buffers, **empty, **shared, hyperparams=hyperparams.init())
        return tree_util.place_like(state, params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if uses_params and params is None:
            raise ValueError(f"{owner} needs the params: call update(updates, state, params)")
        check_leaf_dtypes(owner, "update", updates, complex_ok=complex_ok)
        if active_slots:
            tree_util.check_same_structure(
                getattr(state, active_slots[0].name),
                updates,
                expected_name="state",
                actual_name="updates",
                where=owner,
            )
        if uses_params:
            tree_util.check_same_structure(params, updates, expected_name="params", actual_name="updates", where=owner)

        hp_state = hyperparams.at(state.hyperparams, state.count)
        count = safe_increment(state.count)
        shared = {}
        if scalar_rule is not None:
            given = {"t": count.astype(float_dtype()), **hp_state, **{name: getattr(state, name) for name in scalars}}
            new = scalar_rule(**{k: given[k] for k in scalar_keywords})
            shared = {name: jnp.asarray(new[name], getattr(state, name).dtype) for name in scalars}

        treedef = jax.tree.structure(updates)
        g_leaves = treedef.flatten_up_to(updates)
        slot_leaves = [treedef.flatten_up_to(getattr(state, slot.name)) for slot in active_slots]
        p_leaves = treedef.flatten_up_to(params) if uses_params else [None] * len(g_leaves)
        active = _active(owner, mask, params, updates) or [True] * len(g_leaves)

        @functools.cache
        def keywords_in(dtype):
            # Hyperparameters, step and shared scalars in a leaf's real compute dtype: cast once per
            # dtype, not once per leaf, so the traced step does not grow by these casts per leaf.
            rdtype = real_dtype(compute_dtype(dtype))
            values = {k: v.astype(rdtype) for k, v in hp_state.items()}
            values.update({k: v.astype(rdtype) for k, v in shared.items()})
            if wants_t:
                values["t"] = count.astype(rdtype)
            return values

        out_updates, out_slots = [], [[] for _ in active_slots]
        for i, g in enumerate(g_leaves):
            stored = [leaves[i] for leaves in slot_leaves]
            if active[i] is False:
                u, new = g, stored
            else:
                u, new = _apply(rule, g, stored, p_leaves[i], keywords_in(g.dtype), uses_params)
                if active[i] is not True:  # a packed buffer holding masked and unmasked leaves
                    u = jnp.where(active[i], u, g)
            out_updates.append(u)
            for k, value in enumerate(new):
                out_slots[k].append(value)

        new_buffers = {slot.name: treedef.unflatten(out_slots[k]) for k, slot in enumerate(active_slots)}
        new_state = state_type(count=count, **new_buffers, **empty, **shared, hyperparams=hp_state)
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


def _apply(rule, g, stored, p, keywords, uses_params):
    """Run the rule on one leaf: cast in, compute in at least float32, cast out."""
    cdtype = compute_dtype(g.dtype)
    rdtype = real_dtype(cdtype)
    ins = [s.astype(jnp.promote_types(s.dtype, rdtype)) for s in stored]
    kwargs = dict(keywords)
    if uses_params:
        kwargs["p"] = jnp.asarray(p).astype(cdtype)
    u, new = rule(g.astype(cdtype), *ins, **kwargs)
    return u.astype(g.dtype), [n.astype(s.dtype) for n, s in zip(new, stored, strict=True)]
