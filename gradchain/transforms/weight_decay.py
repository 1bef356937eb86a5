"""Weight decay: decoupled (AdamW) and coupled L2 (Adam + L2), one rule in two places of a chain.

Both add $\\lambda p$ to the incoming updates. What makes decay *decoupled* or *coupled* is where the
ingredient sits in a chain: after the adaptive scaling (`scale_by_adam` → `add_decayed_weights` →
`scale_by_learning_rate`: every weight shrinks by the same factor $\\eta\\lambda$, Loshchilov & Hutter)
or before it (`add_l2_regularization` → `scale_by_adam`: the decay is the gradient of
$\\tfrac{\\lambda}{2}\\|p\\|^2$ and gets divided by $\\sqrt{\\hat\\nu}$ like the rest of the gradient).
Two names, so that a chain says which one it means.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from gradchain._base import GradientTransformation, ScalarOrSchedule
from gradchain._checks import Check
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import elementwise


class AddDecayedWeightsState(NamedTuple):
    """State of `add_decayed_weights` / `add_l2_regularization`: step count and `weight_decay`."""

    count: jax.Array
    hyperparams: Hyperparams


def _decay_rule(g, *, p, weight_decay):
    return g + weight_decay * p, ()


def _weight_decay(owner: str, weight_decay: ScalarOrSchedule, mask: Any) -> GradientTransformation:
    spec = HyperparamSpec(owner, weight_decay=(weight_decay, Check.NONNEGATIVE))
    return elementwise(_decay_rule, AddDecayedWeightsState, spec, uses_params=True, mask=mask)


def add_decayed_weights(weight_decay: ScalarOrSchedule = 0.0, mask: Any = None) -> GradientTransformation:
    """Add decoupled weight decay: $\\lambda$ times the params, after the adaptive scaling.

    $$ u = g + \\lambda\\, p $$

    Placed after `scale_by_adam` and before `scale_by_learning_rate`, this is AdamW's decay
    (Loshchilov & Hutter 2019) in the form PyTorch and optax use: the parameter shrinks by
    $\\eta_t \\lambda p$ each step, the same relative amount for every weight.

    Args:
        weight_decay: $\\lambda \\ge 0$, a number or a schedule (hyperparameter `weight_decay`).
        mask: which leaves to decay: a tree of bools like the params (or a prefix of it: one bool
            for a whole subtree), or a function `params -> tree` (e.g. decay matrices but not
            biases). False leaves pass through unchanged.

    Returns:
        A `GradientTransformation` with `AddDecayedWeightsState`; `update` needs the params.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
        tx = gc.add_decayed_weights(0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
        u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        assert jnp.allclose(u["w"], 0.1) and jnp.allclose(u["b"], 0.0)
        ```

    References:
        Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    return _weight_decay("add_decayed_weights", weight_decay, mask)


def add_l2_regularization(weight_decay: ScalarOrSchedule = 0.0, mask: Any = None) -> GradientTransformation:
    """Add the gradient of an L2 penalty $\\tfrac{\\lambda}{2}\\|p\\|^2$ to the raw gradient (coupled decay).

    $$ g \\leftarrow g + \\lambda\\, p $$

    Place it first in a chain, before any adaptive scaling: that is PyTorch's `weight_decay` in
    `SGD`, `Adam`, `Adagrad`, `RMSprop` and `Adamax`, and the "Adam + L2" baseline of the AdamW
    paper. The same arithmetic as `add_decayed_weights`; the name says where it belongs.

    Args:
        weight_decay: $\\lambda \\ge 0$, a number or a schedule (hyperparameter `weight_decay`).
        mask: which leaves to regularise (tree of bools or function of the params).

    Returns:
        A `GradientTransformation` with `AddDecayedWeightsState`; `update` needs the params.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        adam_l2 = gc.chain(gc.add_l2_regularization(1e-2), gc.scale_by_adam(), gc.scale_by_learning_rate(1e-3))
        params = {"w": jnp.ones(3)}
        updates, state = adam_l2.update({"w": jnp.zeros(3)}, adam_l2.init(params), params)
        assert (updates["w"] < 0).all()  # the penalty alone pulls the weights towards 0
        ```

    References:
        Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019 (the comparison).
    """
    return _weight_decay("add_l2_regularization", weight_decay, mask)
