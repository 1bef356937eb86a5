"""The protocol: a gradient transformation is a pair of pure functions.

This module holds the protocol only: the `GradientTransformation` pair, the empty state, the two
trivial transformations, the extension contract for extra arguments, and `apply_updates`. How
transformations compose (`chain`, `named_chain`) is `_combine.py`; how a per-array rule becomes a
transformation is `_lift.py`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeAlias, Union

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._checks import check_transformation

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree
Schedule: TypeAlias = Callable[[jax.typing.ArrayLike], jax.Array]
"""A function from a step count (int or float, scalar or array) to a float array of the same shape."""
# typing.Union rather than `|`: a `|` union of these types cannot carry the docstring below.
ScalarOrSchedule: TypeAlias = Union[float, jax.Array, Schedule]  # noqa: UP007
ScalarOrSchedule.__doc__ = """A hyperparameter's value: a number, or a `Schedule` of the step count.

A schedule is called with the ingredient's step count at each update; the value in effect is kept
in the state, where `hyperparams` reads it.

Example:
    ```python
    import jax.numpy as jnp
    import gradchain as gc

    constant = gc.sgd(0.1)
    decayed = gc.sgd(gc.schedules.exponential_decay(0.1, 100, 0.5))
    params = {"w": jnp.ones(3)}
    assert constant.init(params) is not None and decayed.init(params) is not None
    ```
"""


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


def accepted_keywords(fn: Callable) -> frozenset[str] | None:
    """The names `fn` accepts as keyword arguments, or None when it takes any (`**kwargs`).

    Raises TypeError or ValueError (from `inspect.signature`) when `fn` has no signature to read.
    """
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return frozenset(n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def with_extra_args_support(tx: Any) -> GradientTransformation:
    """The extension contract: a transformation whose `update` accepts any extra keyword arguments.

    gradchain passes extra keyword arguments of `update` (`value=loss`, `key=...`) down every chain
    and through every wrapper, and each transformation uses those it names. Transformations written
    for plain optax often take none (`update(updates, state, params=None)`). This adapts such a
    transformation once, when it is built: its signature is read here, and the returned `update`
    forwards only the extra arguments it names, dropping the rest. A transformation that already
    takes `**extra_args` (every gradchain one) is returned as it is, so wrapping costs nothing.

    This is what a wrapper calls on the transformation it wraps; see the "Extending gradchain" page.
    The name and the behaviour are optax's `with_extra_args_support`.

    Args:
        tx: anything with callable `init` and `update` (a gradchain or optax transformation).

    Returns:
        `tx` itself if its `update` takes `**kwargs` (or has no signature to read), else a
        `GradientTransformation` that filters the extra arguments.

    Raises:
        TypeError: `tx` has no callable `init` and `update`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        def update(updates, state, params=None):  # written for optax: no **extra_args
            return updates, state

        tx = gc.with_extra_args_support(gc.GradientTransformation(lambda p: (), update))
        updates, _ = tx.update({"w": jnp.ones(2)}, (), None, value=jnp.float32(0.5))  # value= dropped
        adam = gc.adam(1e-3)
        assert gc.with_extra_args_support(adam) is adam
        ```
    """
    check_transformation("with_extra_args_support: tx", tx)
    try:
        named = accepted_keywords(tx.update)
    except (TypeError, ValueError):  # builtins and some C callables have no signature to read
        return tx
    if named is None:
        return tx
    inner_update = tx.update

    def update(updates, state, params=None, **extra_args):
        if not extra_args:
            return inner_update(updates, state, params)
        return inner_update(updates, state, params, **{k: v for k, v in extra_args.items() if k in named})

    return GradientTransformation(tx.init, update)


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
