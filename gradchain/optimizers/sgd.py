"""SGD and its variants: momentum and Nesterov, noisy SGD, averaged SGD, optimism, Polyak steps.

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
from gradchain.optimizers.recipe import Scalar, optional_l2, recipe
from gradchain.transforms.asgd import scale_by_asgd
from gradchain.transforms.momentum import trace
from gradchain.transforms.noise import add_noise
from gradchain.transforms.optimistic import scale_by_optimistic_gradient
from gradchain.transforms.polyak import scale_by_polyak
from gradchain.transforms.scaling import scale_by_learning_rate
from gradchain.transforms.weight_decay import add_l2_regularization


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    *,
    dampening: Scalar = 0.0,
    weight_decay: ScalarOrSchedule | None = None,
    accumulator_dtype: DTypeLike | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """Stochastic gradient descent, optionally with (Nesterov) momentum and coupled weight decay.

    $$ g_t \\leftarrow g_t + \\lambda p_{t-1}, \\quad v_t = \\beta v_{t-1} + (1-\\tau) g_t
       \\;(v_1 = g_1), \\quad p_t = p_{t-1} - \\eta_t\\, (v_t \\text{ or } g_t + \\beta v_t) $$

    Recipe: `add_l2_regularization(weight_decay)` → `trace(momentum, nesterov, dampening)` →
    `scale_by_learning_rate(learning_rate)`. Without momentum, $p_t = p_{t-1} - \\eta_t g_t$.
    `torch.optim.SGD(lr, momentum, dampening, weight_decay, nesterov)` is
    `sgd(lr, momentum, nesterov, dampening=dampening, weight_decay=weight_decay)`, step for step.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        momentum: $\\beta \\in [0, 1)$, or None for plain SGD.
        nesterov: Nesterov momentum (needs `momentum`).
        dampening: PyTorch's dampening $\\tau$ (needs `momentum`).
        weight_decay: coupled L2 coefficient $\\lambda$, or None.
        accumulator_dtype: storage dtype of the momentum buffer.
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
        tx = gc.sgd(learning_rate=0.1, momentum=0.5)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(params["w"], 3.0, atol=1e-3)
        ```

    References:
        Robbins & Monro, *A Stochastic Approximation Method*, 1951; Polyak 1964; Sutskever et al. 2013.
    """
    if momentum is None and (nesterov or dampening != 0.0):
        raise ValueError("sgd: nesterov and dampening need a momentum value; got momentum=None")
    # Checked here too so the message names the optimizer's argument, not trace's `decay`.
    if momentum is not None:
        check("sgd: momentum", momentum, Check.UNIT_INTERVAL)
    return recipe(
        optional_l2(weight_decay),
        None if momentum is None else trace(momentum, nesterov, dampening, accumulator_dtype),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def asgd(
    learning_rate: Scalar = 0.01,
    lambd: Scalar = 1e-4,
    alpha: Scalar = 0.75,
    t0: Scalar = 1e6,
    weight_decay: ScalarOrSchedule | None = None,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """Averaged SGD (PyTorch's ASGD): decaying steps, weight shrinkage, and a running average of the params.

    $$ g_t \\leftarrow g_t + w p_{t-1}, \\quad \\eta_t = \\frac{\\eta}{(1 + \\lambda\\eta(t-1))^\\alpha},
       \\quad p_t = p_{t-1} - \\eta_t (g_t + \\lambda p_{t-1}), \\quad
       \\bar x_t = \\bar x_{t-1} + \\frac{p_t - \\bar x_{t-1}}{\\max(1, t - 1 - t_0)} $$

    Recipe: `add_l2_regularization(weight_decay)` → `scale_by_asgd(learning_rate, lambd, alpha, t0)`.
    `torch.optim.ASGD(lr, lambd, alpha, t0, weight_decay)` is `asgd(lr, lambd, alpha, t0,
    weight_decay)`, with the same defaults. optax has no ASGD. The averaged params (PyTorch's
    `ax`) are `asgd_averaged_params(state)`; evaluate with them, train with the params.

    Args:
        learning_rate: $\\eta \\ge 0$ (a number: the decay of the step is built in).
        lambd: $\\lambda \\ge 0$.
        alpha: $\\alpha \\ge 0$.
        t0: $t_0 \\ge 0$, the step from which the average is taken.
        weight_decay: coupled L2 coefficient $w$, a schedule, or None.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`; `update` needs the params.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2)
        params = {"w": jnp.zeros(2)}
        tx = gc.asgd(learning_rate=0.2, t0=10.0)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(gc.asgd_averaged_params(state)["w"], 2.0, atol=1e-3)
        ```

    References:
        Polyak & Juditsky, *Acceleration of stochastic approximation by averaging*, SIAM J. Control
        Optim. 1992.
    """
    return recipe(
        None if weight_decay is None else add_l2_regularization(weight_decay),
        scale_by_asgd(learning_rate, lambd, alpha, t0),
        pack=pack,
    )


def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: Scalar = 0.01,
    gamma: Scalar = 0.55,
    key: Any = 0,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """SGD on gradients with annealed Gaussian noise added.

    $$ p_t = p_{t-1} - \\eta_t \\big(g_t + \\sigma_t \\xi_t\\big), \\qquad
       \\sigma_t^2 = \\frac{\\eta_{\\text{noise}}}{t^{\\gamma}}, \\quad \\xi_t \\sim \\mathcal N(0, I) $$

    Recipe: `add_noise(eta, gamma, key)` → `scale_by_learning_rate(learning_rate)`, as
    `optax.noisy_sgd` (same arguments and defaults; optax's `key=None` means seed 0, here the
    default is 0). With the same integer seed or key, the noise is optax's, bit for bit in float32.

    Args:
        learning_rate: $\\eta_t \\ge 0$, or a schedule.
        eta: the noise variance at the first step, $\\ge 0$.
        gamma: the annealing exponent $\\gamma \\ge 0$.
        key: an int seed or a `jax.random.key`.
        pack: packed execution: None (automatic), True or False; see `chain` (this chain keeps no
            per-leaf state and never packs).

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        loss = lambda p: jnp.sum((p["w"] - 1.0) ** 2)
        params = {"w": jnp.zeros(4)}
        tx = gc.noisy_sgd(0.1, eta=0.01, key=42)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(params["w"], 1.0, atol=0.05)
        ```

    References:
        Neelakantan et al., *Adding Gradient Noise Improves Learning for Very Deep Networks*,
        arXiv:1511.06807, 2015.
    """
    return recipe(add_noise(eta, gamma, key), scale_by_learning_rate(learning_rate), pack=pack)


def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule,
    alpha: Scalar = 1.0,
    beta: Scalar = 1.0,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """Optimistic gradient descent: a step along the gradient extrapolated from its last change.

    $$ p_t = p_{t-1} - \\eta_t \\big((\\alpha + \\beta) g_t - \\beta g_{t-1}\\big), \\qquad g_0 = g_1 $$

    Recipe: `scale_by_optimistic_gradient(alpha, beta)` → `scale_by_learning_rate(learning_rate)`,
    as `optax.optimistic_gradient_descent` (same arguments and defaults). For min-max games its
    last iterate converges where plain gradient descent-ascent cycles.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        alpha: $\\alpha$, the weight of the current gradient.
        beta: $\\beta$, the weight of the gradient's change (the optimism).
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        # min_x max_y x * y: descent on x, ascent on y (negated gradient); the saddle is (0, 0).
        params = {"x": jnp.array(1.0), "y": jnp.array(1.0)}
        tx = gc.optimistic_gradient_descent(0.5)
        state = tx.init(params)
        for _ in range(50):
            g = {"x": params["y"], "y": -params["x"]}
            updates, state = tx.update(g, state, params)
            params = gc.apply_updates(params, updates)
        assert abs(float(params["x"])) < 1e-3 and abs(float(params["y"])) < 1e-3
        ```

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, *Training GANs with Optimism*, ICLR 2018.
    """
    return recipe(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate), pack=pack)


def polyak_sgd(
    max_learning_rate: Scalar = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: Scalar = 0.0,
    eps: Scalar = 0.0,
    variant: str = "sps",
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """SGD with the stochastic Polyak step size, from the loss passed to `update` as `value=`.

    $$ p_t = p_{t-1} - s_t \\min\\Big(\\frac{f(p_{t-1}) - f^\\star}{\\|g_t\\|^2 + \\epsilon},\\
       \\gamma_{\\max}\\Big)\\, g_t $$

    Recipe: `scale_by_polyak(f_min, max_learning_rate, eps, variant)` →
    `scale_by_learning_rate(scaling)`. Call `tx.update(grads, state, params, value=loss)`; a
    missing `value` raises TypeError. Same arguments and defaults as `optax.polyak_sgd`, and the
    same numbers for `scaling=1`. For another scaling, optax applies it *before* the Polyak
    ingredient (`chain(sgd(scaling), scale_by_polyak(...))`), whose norm then includes it: optax's
    step is $s \\min\\big((f - f^\\star)/(s^2\\|g\\|^2 + \\epsilon), \\gamma_{\\max}\\big)$, not the
    formula its documentation (and this function) states.

    Args:
        max_learning_rate: $\\gamma_{\\max} \\ge 0$.
        scaling: $s_t \\ge 0$, or a schedule (hyperparameter `learning_rate`).
        f_min: $f^\\star$, a lower bound of the loss (0 for models that interpolate the data).
        eps: $\\epsilon \\ge 0$.
        variant: `"sps"`, or `"sps+"` for $(f - f^\\star)_+$.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation` whose update takes the keyword argument `value`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        f = lambda p: jnp.sum(p["w"] ** 2)
        params = {"w": jnp.array([1.0, 2.0, 3.0])}
        tx = gc.polyak_sgd()
        state = tx.init(params)
        value, grad = jax.value_and_grad(f)(params)
        updates, state = tx.update(grad, state, params, value=value)
        params = gc.apply_updates(params, updates)
        assert jnp.allclose(f(params), 3.5)  # step 14 / 56 = 0.25: w halves
        ```

    References:
        Loizou, Vaswani, Laradji & Lacoste-Julien, *Stochastic Polyak Step-size for SGD: An Adaptive
        Learning Rate for Fast Convergence*, AISTATS 2021.
    """
    return recipe(
        scale_by_polyak(f_min, max_learning_rate, eps, variant),
        scale_by_learning_rate(scaling),
        pack=pack,
    )
