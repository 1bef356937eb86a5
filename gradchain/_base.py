"""The protocol: a gradient transformation is a pair of pure functions, and they compose."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

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
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _call_update(tx: Any, updates, state, params, extra_args):
    # Transformations written for plain optax take no **extra_args; drop them rather than fail.
    if extra_args and not _accepts_extra_args(tx.update):
        return tx.update(updates, state, params)
    return tx.update(updates, state, params, **extra_args)


def _check_transform(where: str, tx: Any) -> None:
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(f"{where} must be a GradientTransformation (with init and update), got {tx!r}")


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations one after another; the state is the tuple of their states.

    $$ u = f_n(\\dots f_2(f_1(g))) $$

    Args:
        *transforms: the transformations, applied left to right.

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
        ```
    """
    for i, tx in enumerate(transforms):
        _check_transform(f"chain: transform {i}", tx)

    def init(params):
        return tuple(tx.init(params) for tx in transforms)

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise ValueError(
                f"chain: expected a state tuple of {len(transforms)} entries (one per transform), "
                f"got {type(state).__name__} of length {len(state) if isinstance(state, tuple) else '?'}"
            )
        new_state = []
        for tx, inner in zip(transforms, state, strict=True):
            updates, inner = _call_update(tx, updates, inner, params, extra_args)
            new_state.append(inner)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
    """Like `chain`, but the state is a dict keyed by the names given.

    Names also qualify hyperparameter keys where they repeat (`"adam/eps"`), see `hyperparams`.

    Args:
        *transforms: `(name, transformation)` pairs, applied left to right. Names must be unique.

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

    def init(params):
        return {name: tx.init(params) for name, tx in transforms}

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, dict) or list(state) != names:
            got = list(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"named_chain: expected a state dict with keys {names}, got {got}")
        new_state = {}
        for name, tx in transforms:
            updates, new_state[name] = _call_update(tx, updates, state[name], params, extra_args)
        return updates, new_state

    return GradientTransformation(init, update)


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
