"""Averaged SGD's ingredient: PyTorch's ASGD step and the running average of the params it keeps.

`scale_by_asgd` is written for one array and lifted by `gradchain._lift.elementwise`;
`asgd_averaged_params` reads the average back from an optimizer state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _packing as packing
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, Params
from gradchain._checks import Check
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot, elementwise

# ---------------------------------------------------------------------------------------------------
# ASGD


class ScaleByAsgdState(NamedTuple):
    """State of `scale_by_asgd`: step count, the averaged params `ax`, and the hyperparameters."""

    count: jax.Array
    ax: Params
    hyperparams: Hyperparams


def scale_by_asgd(
    learning_rate: float | jax.Array = 0.01,
    lambd: float | jax.Array = 1e-4,
    alpha: float | jax.Array = 0.75,
    t0: float | jax.Array = 1e6,
) -> GradientTransformation:
    """Averaged SGD's step with decaying step size and weight shrinkage, and the running average of iterates.

    At step $t = 1, 2, \\dots$ with learning rate $\\eta$:

    $$ \\eta_t = \\frac{\\eta}{(1 + \\lambda \\eta (t-1))^{\\alpha}}, \\qquad
       u_t = -\\eta_t\\, (g_t + \\lambda p_{t-1}), \\qquad p_t = p_{t-1} + u_t $$
    $$ \\mu_t = \\frac{1}{\\max(1,\\ t - 1 - t_0)}, \\qquad
       \\bar x_t = \\bar x_{t-1} + \\mu_t (p_t - \\bar x_{t-1}) \\quad (\\bar x_t = p_t \\text{ when } \\mu_t = 1) $$

    This is `torch.optim.ASGD(lr, lambd, alpha, t0)` step for step: $\\bar x_t = p_t$ up to step
    $t_0 + 2$, and from there on $\\bar x_t$ is the mean of $p_{t_0+2}, \\dots, p_t$ (Polyak &
    Juditsky 1992).
    The update already contains the step size and its sign: it is the last ingredient of a chain,
    because the average needs the params that `apply_updates` will produce. PyTorch computes
    $p (1 - \\lambda\\eta_t) - \\eta_t g$; here $p + (-\\eta_t (g + \\lambda p))$: the same number
    up to one rounding per step. Read $\\bar x$ with `asgd_averaged_params(state)`.

    Args:
        learning_rate: $\\eta \\ge 0$ (hyperparameter `learning_rate`).
        lambd: $\\lambda \\ge 0$, the decay term (hyperparameter `lambd`).
        alpha: $\\alpha \\ge 0$, the power of the step-size decay (hyperparameter `alpha`).
        t0: $t_0 \\ge 0$, the step after which averaging starts (hyperparameter `t0`).

    Returns:
        A `GradientTransformation` with `ScaleByAsgdState`; `update` needs the params.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_asgd(learning_rate=1.0, lambd=0.0, t0=0.0)
        params = {"w": jnp.zeros(1)}
        state = tx.init(params)
        for _ in range(3):  # w: 1, 2, 3
            u, state = tx.update({"w": -jnp.ones(1)}, state, params)
            params = gc.apply_updates(params, u)
        assert jnp.allclose(gc.asgd_averaged_params(state)["w"], 2.5)  # t0 = 0: the mean of p_2 and p_3
        ```

    References:
        Polyak & Juditsky, *Acceleration of stochastic approximation by averaging*, SIAM J. Control
        Optim. 1992; Bottou, *Stochastic Gradient Descent Tricks*, 2012 (the step-size schedule).
    """
    spec = HyperparamSpec(
        "scale_by_asgd",
        learning_rate=(learning_rate, Check.NONNEGATIVE),
        lambd=(lambd, Check.NONNEGATIVE),
        alpha=(alpha, Check.NONNEGATIVE),
        t0=(t0, Check.NONNEGATIVE),
    )

    def rule(g, ax, *, learning_rate, lambd, alpha, t0, t, p):
        eta = learning_rate / (1 + lambd * learning_rate * (t - 1)) ** alpha
        u = -eta * (g + lambd * p)
        new_p = p + u
        mu = 1 / jnp.maximum(1.0, t - 1 - t0)
        # PyTorch copies the params while mu is 1 rather than forming ax + (p - ax).
        ax = jnp.where(mu == 1, new_p, ax + mu * (new_p - ax))
        return u, (ax,)

    return elementwise(rule, ScaleByAsgdState, spec, slots=[Slot("ax")], uses_params=True)


def asgd_averaged_params(state: Any) -> Params:
    """The averaged params $\\bar x$ of `scale_by_asgd` (or `asgd`), found anywhere in `state`.

    Returns the average as a tree like the params (unpacked, if the chain packed its state). Before
    the first step it is zeros, as PyTorch's `ax`.

    Args:
        state: an optimizer state holding exactly one `ScaleByAsgdState`.

    Returns:
        The averaged params.

    Raises:
        ValueError: no `ScaleByAsgdState` in the state, or several.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.asgd(learning_rate=0.1)
        params = {"w": jnp.ones(2)}
        state = tx.init(params)
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
        assert gc.asgd_averaged_params(state)["w"].shape == (2,)
        ```
    """
    found = tree_util.find_nodes(state, ScaleByAsgdState)
    if len(found) != 1:
        raise ValueError(f"asgd_averaged_params: expected one ScaleByAsgdState in the state, found {len(found)}")
    return packing.unpack(found[0].ax)
