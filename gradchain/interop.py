"""optax interop: optax transformations as gradchain ones, and gradchain ones as optax ones.

gradchain speaks optax's protocol, so most code mixes the two as they are. These two functions
make the conversion explicit, for a migration where both libraries run side by side:

- `from_optax(tx)` makes an optax transformation a gradchain one: it accepts (and drops, if the
  optax transformation takes none) extra arguments such as `value=loss`, and it exposes the
  hyperparameters of `optax.inject_hyperparams` to `hyperparams` / `set_hyperparams`.
- `to_optax(tx)` makes a gradchain transformation an `optax.GradientTransformationExtraArgs`, for
  code that checks the type (`optax.MultiSteps`, `optax.chain` and friends accept either).

gradchain does not depend on optax: optax is imported only inside `to_optax`.
"""

from __future__ import annotations

import sys
from typing import Any

import jax

from gradchain._base import GradientTransformation, with_extra_args_support
from gradchain._checks import check_transformation
from gradchain._hyperparams import Hyperparams

__all__ = ["from_optax", "to_optax"]

# The owner recorded in the `Hyperparams` node that replaces an inject_hyperparams dict: it
# qualifies repeated names in `hyperparams` (`"inject_hyperparams/learning_rate"`).
_INJECT_OWNER = "inject_hyperparams"


def _inject_state_types() -> tuple[type, ...]:
    # The transformation being wrapped came from optax, so optax is already imported when it
    # matters; looking it up in sys.modules keeps gradchain free of an import-time dependency.
    optax = sys.modules.get("optax")
    if optax is None:
        return ()
    names = ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
    return tuple(t for t in (getattr(optax, name, None) for name in names) if isinstance(t, type))


def _expose_hyperparams(state: Any, types: tuple[type, ...]) -> Any:
    """`state` with the hyperparameter dict of each inject_hyperparams state made a `Hyperparams` node.

    optax reads that field as a mapping (`.items()`), which `Hyperparams` is, so optax's update runs
    on it unchanged; gradchain's `hyperparams` and `set_hyperparams` find it. Scheduled entries (those
    with a schedule state) are marked, so `set_hyperparams` refuses them as it does gradchain's own.
    Keys are sorted, so the leaves flatten in the order of optax's dict.
    """
    if not types:
        return state

    def convert(node: Any) -> Any:
        if not isinstance(node, types):
            return node
        values = node.hyperparams
        scheduled = frozenset(getattr(node, "hyperparams_states", None) or ())
        exposed = Hyperparams({k: values[k] for k in sorted(values)}, None, scheduled, _INJECT_OWNER)
        return node._replace(hyperparams=exposed, inner_state=_expose_hyperparams(node.inner_state, types))

    return jax.tree.map(convert, state, is_leaf=lambda x: isinstance(x, types))


def from_optax(tx: Any) -> GradientTransformation:
    """Wrap an optax transformation as a gradchain `GradientTransformation`.

    The updates and the optimizer state are optax's, unchanged, with two additions:

    - extra keyword arguments of `update` (`value=loss`, ...) are accepted and forwarded when the
      optax transformation takes them (`GradientTransformationExtraArgs`), dropped when it does not;
    - the hyperparameters of `optax.inject_hyperparams` states, at any depth, become visible to
      `gradchain.hyperparams` and settable with `gradchain.set_hyperparams` (no recompilation).
      Their dict is held as a read-only `Hyperparams` mapping, which optax reads as it reads its
      dict; set values with `set_hyperparams` rather than by item assignment. Hyperparameters
      driven by a schedule cannot be set, as in gradchain.

    A gradchain transformation is returned as it is.

    Args:
        tx: an optax `GradientTransformation` (or anything with `init` and `update`).

    Returns:
        A gradchain `GradientTransformation`.

    Raises:
        TypeError: `tx` has no callable `init` and `update`.

    Example:
        ```python
        import jax.numpy as jnp
        import optax
        import gradchain as gc

        sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
        tx = gc.chain(gc.clip_by_global_norm(1.0), gc.from_optax(sgd))
        params = {"w": jnp.zeros(2)}
        state = tx.init(params)
        state = gc.set_hyperparams(state, learning_rate=0.5)
        updates, state = tx.update({"w": jnp.array([0.6, 0.8])}, state, params, value=jnp.ones(()))
        assert jnp.allclose(updates["w"], jnp.array([-0.3, -0.4]))
        assert gc.hyperparams(state)["learning_rate"] == 0.5
        ```
    """
    check_transformation("from_optax: tx", tx)
    if isinstance(tx, GradientTransformation):
        return tx
    types = _inject_state_types()
    inner = with_extra_args_support(tx)

    def init(params):
        return _expose_hyperparams(inner.init(params), types)

    def update(updates, state, params=None, **extra_args):
        updates, state = inner.update(updates, state, params, **extra_args)
        return updates, _expose_hyperparams(state, types)

    return GradientTransformation(init, update)


def to_optax(tx: Any) -> Any:
    """Wrap a gradchain transformation as an `optax.GradientTransformationExtraArgs`.

    The wrapped transformation computes the same numbers and keeps the same state (hyperparameters
    stay readable with `gradchain.hyperparams`); only the container type changes, for code that
    checks it. Extra keyword arguments (`value=loss`) pass through. An optax transformation is
    returned as it is (one without extra-argument support gets it, as `optax.with_extra_args_support`
    gives it).

    Args:
        tx: a gradchain `GradientTransformation` (or anything with `init` and `update`).

    Returns:
        An `optax.GradientTransformationExtraArgs`.

    Raises:
        ImportError: optax is not installed.
        TypeError: `tx` has no callable `init` and `update`.

    Example:
        ```python
        import jax.numpy as jnp
        import optax
        import gradchain as gc

        tx = gc.to_optax(gc.adam(1e-3))
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
        params = {"w": jnp.ones(2)}
        opt = optax.MultiSteps(tx, every_k_schedule=2)
        updates, state = opt.update({"w": jnp.ones(2)}, opt.init(params), params)
        assert (updates["w"] == 0).all()  # the first of two accumulated micro-steps
        ```
    """
    try:
        import optax
    except ImportError as error:
        raise ImportError("to_optax needs optax, which gradchain does not install: pip install optax") from error
    check_transformation("to_optax: tx", tx)
    if isinstance(tx, optax.GradientTransformationExtraArgs):
        return tx
    if isinstance(tx, optax.GradientTransformation):
        return optax.with_extra_args_support(tx)
    # A gradchain update (which takes **extra_args) is kept itself, so packed-execution marks on it survive.
    adapted = with_extra_args_support(tx)
    return optax.GradientTransformationExtraArgs(adapted.init, adapted.update)
