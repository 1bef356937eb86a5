"""Monitoring: the norms of each step recorded in the state, read back as a flat dict for a logger.

Nothing here runs unless an optimizer is wrapped with `monitored`: plain optimizers compute no norm
and keep no extra state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _packing as packing
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, OptState, with_extra_args_support
from gradchain._checks import check_transformation
from gradchain._compact import to_view
from gradchain._hyperparams import hyperparams
from gradchain._numerics import float_dtype, safe_increment
from gradchain.tree import path_str

__all__ = ["MonitorState", "metrics", "monitored"]


class MonitorState(NamedTuple):
    """State of `monitored`: the values recorded at the last step, and the inner state.

    Attributes:
        count: number of steps taken (int32, saturating).
        grad_norm: global L2 norm of the incoming updates (the gradients).
        update_norm: global L2 norm of the outgoing updates.
        param_norm: global L2 norm of the params passed to the step (before the update).
        update_param_ratio: `update_norm / param_norm` (0 when `update_norm` is 0, inf when only
            `param_norm` is).
        per_key: with `per_key=True`, `"grad_norm/<key>"`, `"update_norm/<key>"`,
            `"param_norm/<key>"` for each top-level key of the params; else an empty dict.
        inner_state: the wrapped transformation's state.
    """

    count: jax.Array
    grad_norm: jax.Array
    update_norm: jax.Array
    param_norm: jax.Array
    update_param_ratio: jax.Array
    per_key: dict[str, jax.Array]
    inner_state: OptState


_NORMS = ("grad_norm", "update_norm", "param_norm")


def _top_key(path: tuple) -> str:
    return path_str(path[:1])


def _groups(tree: Any) -> dict[str, list[Any]]:
    """The leaves of `tree` (unpacked) grouped by top-level key, in flattening order."""
    groups: dict[str, list[Any]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(packing.unpack(tree))[0]:
        groups.setdefault(_top_key(path), []).append(leaf)
    return groups


def _norm(tree: Any) -> jax.Array:
    # `global_norm` squares in at least float32, so bfloat16/float16 trees do not overflow or round.
    return tree_util.global_norm(tree).astype(float_dtype())


def monitored(inner: GradientTransformation, *, per_key: bool = False) -> GradientTransformation:
    """Record the norms of each step of `inner` in the state, for logging; the updates are unchanged.

    After each step the state holds, for the gradients $g$ coming in, the updates $u$ going out and
    the params $\\theta$ passed to the step (before the update is applied):

    $$ \\|g\\| = \\sqrt{\\textstyle\\sum_{\\text{leaves}} \\sum_i |g_i|^2}, \\quad \\|u\\|, \\quad
       \\|\\theta\\|, \\quad r = \\frac{\\|u\\|}{\\|\\theta\\|} $$

    and the step count. Read them, together with the hyperparameters in effect at that step
    (learning rate and the rest, as `hyperparams` shows them), with `metrics(state)`: a flat dict
    of scalars for any logger. Norms are computed in at least float32, whatever the params' dtype.
    The param norm is that of the params the update was computed at ($\\theta_t$, not
    $\\theta_{t+1}$), so the ratio is the relative size of the step about to be applied. The
    wrapper adds a few reductions to the step and nothing else; an optimizer that is not wrapped
    computes no norm and keeps no extra state.

    Packed params and updates (`pack`) and trees with `None` leaves work as they are (the norms run
    over the buffers or skip the `None` leaves).

    Args:
        inner: the transformation to monitor (an optimizer, a chain, another wrapper).
        per_key: also record the three norms of each top-level key of the params tree (each
            layer, say), as `"grad_norm/<key>"` and so on. Static.

    Returns:
        A `GradientTransformation` with `MonitorState`. Its `update` needs `params`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.monitored(gc.sgd(learning_rate=0.5))
        params = {"w": jnp.array([3.0, 4.0])}
        state = tx.init(params)
        updates, state = tx.update({"w": jnp.array([0.0, 2.0])}, state, params)
        m = gc.metrics(state)
        assert m["grad_norm"] == 2.0 and m["update_norm"] == 1.0 and m["param_norm"] == 5.0
        assert jnp.isclose(m["update_param_ratio"], 0.2) and m["learning_rate"] == 0.5
        assert m["count"] == 1
        ```
    """
    check_transformation("monitored: inner", inner)
    inner = with_extra_args_support(inner)
    if not isinstance(per_key, bool):
        raise TypeError(f"monitored: per_key must be True or False, got {per_key!r}")

    def init(params):
        zero = jnp.zeros((), float_dtype())
        keys = list(_groups(params)) if per_key else []
        recorded = {f"{norm}/{key}": zero for key in keys for norm in _NORMS}
        scalars = tree_util.place_like((jnp.zeros((), jnp.int32), zero, recorded), params)
        count, zero, recorded = scalars
        return MonitorState(count, zero, zero, zero, zero, recorded, inner.init(params))

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise TypeError("monitored: update needs params to record param_norm; call tx.update(grads, state, params)")
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        grad_norm, update_norm, param_norm = _norm(updates), _norm(new_updates), _norm(params)
        ratio = jnp.where(update_norm == 0, 0, update_norm / param_norm).astype(update_norm.dtype)
        recorded = {}
        if per_key:
            trees = {"grad_norm": updates, "update_norm": new_updates, "param_norm": params}
            for norm, tree in trees.items():
                groups = _groups(tree)
                expected = [k.split("/", 1)[1] for k in state.per_key if k.startswith(norm + "/")]
                if sorted(groups) != sorted(expected):  # jax rebuilds dicts with sorted keys
                    raise ValueError(
                        f"monitored: the top-level keys of the {norm.split('_')[0]} tree, {sorted(groups)}, "
                        f"differ from those of the params at init, {sorted(expected)}"
                    )
                recorded.update({f"{norm}/{k}": _norm(leaves) for k, leaves in groups.items()})
            recorded = {k: recorded[k] for k in state.per_key}
        new_state = MonitorState(
            safe_increment(state.count), grad_norm, update_norm, param_norm, ratio, recorded, inner_state
        )
        return new_updates, new_state

    return GradientTransformation(init, update)


def _is_monitor_state(x: Any) -> bool:
    return isinstance(x, MonitorState)


def _find(state: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], MonitorState]]:
    """Every `MonitorState` in `state`, nested ones included, with its path."""
    found = []
    flat = jax.tree_util.tree_flatten_with_path(to_view(state), is_leaf=_is_monitor_state)[0]
    for path, node in flat:
        if isinstance(node, MonitorState):
            where = prefix + tree_util.path_parts(path)
            found.append((where, node))
            found.extend(_find(node.inner_state, (*where, "inner_state")))
    return found


def metrics(state: Any) -> dict[str, jax.Array]:
    """The values `monitored` recorded at the last step, as a flat dict of scalars for a logger.

    Keys: `count`, `grad_norm`, `update_norm`, `param_norm`, `update_param_ratio`, the per-key
    norms when `per_key=True`, then every hyperparameter of the monitored transformation as
    `hyperparams` names it (`learning_rate`, `b1`, ...; a hyperparameter whose name is already a
    metric key shows as `hyperparams/<name>`). Where `state` holds several monitored states (two
    parameter groups, say), each key is prefixed by the path of its state (`"0/grad_norm"`), except
    for the state itself when it is a monitored state (the outer of two nested monitors).

    The values are device scalars; `jax.device_get(metrics(state))` gives numbers for any logger.
    Jittable.

    Args:
        state: an optimizer state containing a `MonitorState`, at any depth (inside a chain, an
            optax container, a flax `TrainState`'s `opt_state`).

    Returns:
        A flat `dict[str, jax.Array]` of scalars.

    Raises:
        ValueError: `state` holds no `MonitorState`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.chain(gc.clip_by_global_norm(1.0), gc.monitored(gc.adam(1e-3)))
        params = {"w": jnp.ones(3)}
        _, state = tx.update({"w": jnp.full(3, 4.0)}, tx.init(params), params)
        logged = jax.device_get(gc.metrics(state))
        assert abs(logged["grad_norm"] - 1.0) < 1e-6  # clipped before the monitored adam
        assert logged["learning_rate"] == jnp.float32(1e-3) and logged["count"] == 1
        ```
    """
    found = _find(state)
    if not found:
        raise ValueError(
            "metrics: no monitored state in `state`; wrap the optimizer with monitored(...) to record metrics"
        )
    out: dict[str, jax.Array] = {}
    for path, node in found:
        values: dict[str, jax.Array] = {
            "count": node.count,
            "grad_norm": node.grad_norm,
            "update_norm": node.update_norm,
            "param_norm": node.param_norm,
            "update_param_ratio": node.update_param_ratio,
            **node.per_key,
        }
        for name, value in hyperparams(node.inner_state).items():
            values[name if name not in values else f"hyperparams/{name}"] = value
        prefix = "/".join(path) + "/" if len(found) > 1 and path else ""
        out.update({prefix + key: value for key, value in values.items()})
    return out
