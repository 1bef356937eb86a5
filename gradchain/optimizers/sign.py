"""Optimizers that step by the sign of the update: signSGD, Signum, Lion, Rprop.

Each is a `chain` of public ingredients, with the conventions of `gradchain.optimizers.recipe`: an
optional part whose argument is left as `None` is left out of the chain (no state, no work); any
value, `0.0` included, puts it in, and its hyperparameter can then be changed between steps with
`set_hyperparams`.
"""

from __future__ import annotations

from typing import Any

from jax.typing import DTypeLike

from gradchain._base import GradientTransformation, ScalarOrSchedule
from gradchain._checks import Check, check
from gradchain.optimizers.recipe import Scalar, recipe
from gradchain.transforms.momentum import ema
from gradchain.transforms.scaling import scale, scale_by_learning_rate
from gradchain.transforms.sign import scale_by_lion, scale_by_rprop, scale_by_sign
from gradchain.transforms.weight_decay import add_decayed_weights


def rprop(
    learning_rate: float,
    eta_minus: Scalar = 0.5,
    eta_plus: Scalar = 1.2,
    min_step_size: Scalar = 1e-6,
    max_step_size: Scalar = 50.0,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """Rprop: per-coordinate step sizes, grown while the gradient's sign holds and cut when it flips.

    $$ \\Delta_t = \\operatorname{clip}(\\Delta_{t-1} \\eta^{\\pm}, \\Delta_{\\min}, \\Delta_{\\max}),
       \\qquad p_t = p_{t-1} - \\Delta_t \\operatorname{sign}(\\tilde g_t) $$

    ($\\tilde g_t = 0$ after a sign change; see `scale_by_rprop`). Recipe:
    `scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)` →
    `scale(-1.0)`, as `optax.rprop` (same arguments and defaults; but optax applies each move one
    step late, its first update being 0, and leaves the first step unclipped: gradchain follows
    PyTorch, see `scale_by_rprop`). `torch.optim.Rprop(lr,
    etas=(eta_minus, eta_plus), step_sizes=(min_step_size, max_step_size))` is `rprop(lr, eta_minus,
    eta_plus, min_step_size, max_step_size)`; PyTorch's default lr is 0.01. Rprop is a full-batch
    method: noisy minibatch gradients flip signs at random and shrink the steps to the minimum.

    Args:
        learning_rate: the initial step size $\\Delta_0 > 0$ (a number).
        eta_minus: $\\eta^- \\in [0, 1)$.
        eta_plus: $\\eta^+ > 0$.
        min_step_size: $\\Delta_{\\min} \\ge 0$.
        max_step_size: $\\Delta_{\\max} \\ge \\Delta_{\\min}$.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
        params = {"w": jnp.zeros(2)}
        tx = gc.rprop(learning_rate=0.1)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(params["w"], 3.0, atol=1e-3)
        ```

    References:
        Riedmiller & Braun, *A direct adaptive method for faster backpropagation learning: the
        RPROP algorithm*, ICNN 1993.
    """
    return recipe(
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size),
        scale(-1.0),
        pack=pack,
    )


def sign_sgd(learning_rate: ScalarOrSchedule, *, pack: bool | None = None) -> GradientTransformation:
    """signSGD: a step of the learning rate against the sign of every gradient coordinate.

    $$ p_t = p_{t-1} - \\eta_t \\operatorname{sign}(g_t) $$

    Recipe: `scale_by_sign()` → `scale_by_learning_rate(learning_rate)`, as `optax.sign_sgd`.
    Complex params raise TypeError.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.sign_sgd(0.1)
        u, _ = tx.update({"w": jnp.array([5.0, -1e-3, 0.0])}, tx.init({"w": jnp.zeros(3)}))
        assert jnp.allclose(u["w"], jnp.array([-0.1, 0.1, 0.0]))
        ```

    References:
        Bernstein, Wang, Azizzadenesheli & Anandkumar, *signSGD: Compressed Optimisation for
        Non-Convex Problems*, ICML 2018.
    """
    return recipe(scale_by_sign(), scale_by_learning_rate(learning_rate), pack=pack)


def signum(
    learning_rate: ScalarOrSchedule,
    beta: Scalar = 0.9,
    accumulator_dtype: DTypeLike | None = None,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """Signum: signSGD on an exponential moving average of the gradients.

    $$ m_t = \\beta m_{t-1} + (1-\\beta) g_t, \\qquad p_t = p_{t-1} - \\eta_t \\operatorname{sign}(m_t) $$

    Recipe: `ema(beta, debias=False, accumulator_dtype)` → `scale_by_sign()` →
    `scale_by_learning_rate(learning_rate)`, as `optax.signum` (same arguments and defaults; no
    debiasing, which would not change the sign).

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        beta: $\\beta \\in [0, 1)$ (hyperparameter `decay` of the `ema`).
        accumulator_dtype: storage dtype of $m$; None keeps the param's dtype.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.signum(0.1, beta=0.9)
        state = tx.init({"w": jnp.zeros(1)})
        _, state = tx.update({"w": jnp.array([1.0])}, state)    # m = 0.1
        u, state = tx.update({"w": jnp.array([-0.5])}, state)   # m = 0.09 - 0.05 > 0
        assert jnp.allclose(u["w"], -0.1)
        ```

    References:
        Bernstein, Wang, Azizzadenesheli & Anandkumar, *signSGD: Compressed Optimisation for
        Non-Convex Problems*, ICML 2018.
    """
    check("signum: beta", beta, Check.UNIT_INTERVAL)
    return recipe(
        ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
        scale_by_sign(),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def lion(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: DTypeLike | None = None,
    weight_decay: ScalarOrSchedule | None = 1e-3,
    mask: Any = None,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """Lion: the sign of an interpolation of momentum and gradient, with decoupled weight decay.

    $$ c_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad
       p_t = p_{t-1} - \\eta_t \\big(\\operatorname{sign}(c_t) + \\lambda p_{t-1}\\big), \\qquad
       m_t = \\beta_2 m_{t-1} + (1-\\beta_2) g_t $$

    Recipe: `scale_by_lion(b1, b2, mu_dtype)` → `add_decayed_weights(weight_decay, mask)` →
    `scale_by_learning_rate(learning_rate)`; `weight_decay=None` leaves the decay out. This is
    `optax.lion` with the same arguments in the same order; the decay is multiplied by the learning
    rate, as in optax and PyTorch's AdamW. Every step has the same size $\\eta$ per coordinate, so
    Lion's learning rate is typically 3-10x smaller than AdamW's and its weight decay 3-10x larger
    (Chen et al. 2023, section 5).

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: $\\beta_1 \\in [0, 1]$, the weight of the momentum in the step.
        b2: $\\beta_2 \\in [0, 1]$, the decay of the momentum.
        mu_dtype: storage dtype of the momentum $m$; None keeps the param's dtype.
        weight_decay: $\\lambda \\ge 0$, a schedule, or None.
        mask: which leaves to decay (tree of bools or function of the params).
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
        tx = gc.lion(learning_rate=0.01, weight_decay=None)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(params["w"], 0.5, atol=1e-5)  # 50 steps of exactly 0.01 towards 1
        ```

    References:
        Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh, Lu & Le, *Symbolic Discovery of
        Optimization Algorithms*, NeurIPS 2023.
    """
    return recipe(
        scale_by_lion(b1, b2, mu_dtype),
        None if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )
