"""Optimizers that scale by accumulated squared gradients: AdaGrad, RMSProp, Adadelta.

Each is a `chain` of public ingredients, with the conventions of `gradchain.optimizers.recipe`: an
optional part whose argument is left as `None` is left out of the chain (no state, no work); any
value, `0.0` included, puts it in, and its hyperparameter can then be changed between steps with
`set_hyperparams`.
"""

from __future__ import annotations

from typing import Any

from gradchain import schedules
from gradchain._base import GradientTransformation, ScalarOrSchedule
from gradchain._checks import Check, check
from gradchain.optimizers.recipe import Scalar, optional_l2, recipe
from gradchain.transforms.momentum import trace
from gradchain.transforms.rms import scale_by_adadelta, scale_by_rms, scale_by_rss
from gradchain.transforms.scaling import scale_by_learning_rate
from gradchain.transforms.weight_decay import add_l2_regularization


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: Scalar = 1e-7,
    *,
    eps_in_sqrt: bool = True,
    lr_decay: float | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """AdaGrad: per-coordinate steps shrinking with the root of the sum of past squared gradients.

    $$ s_t = s_{t-1} + g_t^2, \\qquad p_t = p_{t-1} - \\eta_t \\frac{g_t}{\\sqrt{s_t + \\epsilon}} $$

    Recipe: `add_l2_regularization` → `scale_by_rss` → `scale_by_learning_rate`. Defaults are
    optax's. `torch.optim.Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)` is
    `adagrad(lr, initial_accumulator_value, eps, eps_in_sqrt=False, lr_decay=lr_decay,
    weight_decay=weight_decay)`; PyTorch's defaults are `initial_accumulator_value=0.0, eps=1e-10`.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        initial_accumulator_value: $s_0 \\ge 0$.
        eps: $\\epsilon \\ge 0$.
        eps_in_sqrt: $\\epsilon$ inside the root (optax) or outside (PyTorch).
        lr_decay: PyTorch's `lr_decay` $d$: the rate becomes $\\eta / (1 + d\\, t)$, $t = 0, 1, \\dots$
            (needs a constant `learning_rate`).
        weight_decay: coupled L2 coefficient, or None.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.adagrad(learning_rate=1.0, initial_accumulator_value=0.0, eps=0.0)
        u, _ = tx.update({"w": jnp.array([4.0])}, tx.init({"w": jnp.zeros(1)}))
        assert jnp.allclose(u["w"], -1.0)
        ```

    References:
        Duchi, Hazan & Singer, JMLR 2011.
    """
    if lr_decay is not None:
        check("adagrad: lr_decay", lr_decay, Check.NONNEGATIVE)
        if callable(learning_rate):
            raise ValueError("adagrad: lr_decay needs a constant learning_rate; fold the decay into the schedule")
        learning_rate = schedules.inverse_time_decay(learning_rate, lr_decay)
    return recipe(
        optional_l2(weight_decay),
        scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=eps_in_sqrt),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """RMSProp: divide by a moving RMS of the gradients, optionally centered and with momentum.

    $$ \\nu_t = \\rho \\nu_{t-1} + (1-\\rho) g_t^2, \\qquad
       p_t = p_{t-1} - \\eta_t\\, \\mathrm{trace}_\\beta\\Big(\\frac{g_t}{\\sqrt{\\nu_t + \\epsilon}}\\Big) $$

    Recipe: `add_l2_regularization` → `scale_by_rms` → `trace(momentum)` → `scale_by_learning_rate`.
    Defaults are optax's. `torch.optim.RMSprop(lr, alpha, eps, weight_decay, momentum, centered)` is
    `rmsprop(lr, decay=alpha, eps=eps, eps_in_sqrt=False, centered=centered, momentum=momentum or
    None, weight_decay=weight_decay)` (PyTorch's `alpha` defaults to 0.99).

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        decay: $\\rho \\in [0, 1)$.
        eps: $\\epsilon \\ge 0$.
        initial_scale: $\\nu_0$.
        eps_in_sqrt: $\\epsilon$ inside the root (optax) or outside (PyTorch).
        centered: subtract the squared mean gradient.
        momentum: momentum applied to the scaled gradient, or None.
        nesterov: Nesterov momentum (needs `momentum`).
        bias_correction: debias the moving averages.
        weight_decay: coupled L2 coefficient, or None.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.rmsprop(learning_rate=0.01, momentum=0.9)
        params = {"w": jnp.ones(3)}
        updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
        assert updates["w"].shape == (3,)
        ```

    References:
        Tieleman & Hinton, 2012; Graves, 2013.
    """
    if momentum is None and nesterov:
        raise ValueError("rmsprop: nesterov needs a momentum value; got momentum=None")
    if momentum is not None:
        check("rmsprop: momentum", momentum, Check.UNIT_INTERVAL)
    return recipe(
        optional_l2(weight_decay),
        scale_by_rms(
            decay, eps, initial_scale, eps_in_sqrt=eps_in_sqrt, centered=centered, bias_correction=bias_correction
        ),
        None if momentum is None else trace(momentum, nesterov),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def adadelta(
    learning_rate: ScalarOrSchedule = 1.0,
    rho: Scalar = 0.9,
    eps: Scalar = 1e-6,
    weight_decay: ScalarOrSchedule | None = None,
    weight_decay_mask: Any = None,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """Adadelta: steps scaled by the RMS of past steps over the RMS of past gradients.

    $$ g_t \\leftarrow g_t + \\lambda p_{t-1}, \\quad E[g^2]_t = \\rho E[g^2]_{t-1} + (1-\\rho) g_t^2,
       \\quad \\Delta_t = \\frac{\\sqrt{E[\\Delta^2]_{t-1} + \\epsilon}}{\\sqrt{E[g^2]_t + \\epsilon}} g_t,
       \\quad E[\\Delta^2]_t = \\rho E[\\Delta^2]_{t-1} + (1-\\rho) \\Delta_t^2, \\quad
       p_t = p_{t-1} - \\eta_t \\Delta_t $$

    Recipe: `add_l2_regularization(weight_decay, weight_decay_mask)` → `scale_by_adadelta(rho, eps)`
    → `scale_by_learning_rate(learning_rate)`. `torch.optim.Adadelta(lr, rho, eps, weight_decay)` is
    `adadelta(lr, rho, eps, weight_decay)` step for step (PyTorch's defaults are these:
    lr=1.0, rho=0.9, eps=1e-6). `optax.adadelta` has the same arguments in the same order; its
    weight decay is also added to the gradient before the scaling. Two differences: optax's default
    `learning_rate=None` leaves the learning-rate scaling out *and with it the sign flip*, so that
    default ascends; here the default is PyTorch's 1.0 (descent). optax's default `weight_decay=0.0`
    is here None (the same numbers, without the ingredient).

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule (1.0: Zeiler's method, no learning rate).
        rho: $\\rho \\in [0, 1)$.
        eps: $\\epsilon \\ge 0$.
        weight_decay: coupled L2 coefficient $\\lambda \\ge 0$, a schedule, or None.
        weight_decay_mask: which leaves to decay (tree of bools or function of the params).
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        loss = lambda p: jnp.sum((p["w"] - 1.0) ** 2)
        params = {"w": jnp.zeros(3)}
        tx = gc.adadelta()
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert 0.1 < float(params["w"][0]) < 1.0  # slowly moving towards 1
        ```

    References:
        Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, arXiv:1212.5701, 2012.
    """
    return recipe(
        None if weight_decay is None else add_l2_regularization(weight_decay, weight_decay_mask),
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )
