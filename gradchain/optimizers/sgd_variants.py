"""SGD variants: Adadelta, Rprop, signSGD/Signum, ASGD, noisy SGD, optimistic methods, Polyak steps.

Each is a `chain` of public ingredients, with the conventions of `gradchain.optimizers.classic`: an
optional part whose argument is left as `None` is left out of the chain (no state, no work); any
value, `0.0` included, puts it in.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.typing import DTypeLike

from gradchain._base import GradientTransformation
from gradchain._checks import Check, check
from gradchain.optimizers.classic import recipe
from gradchain.transforms.adaptive import scale_by_adam
from gradchain.transforms.momentum import ema
from gradchain.transforms.scaling import ScalarOrSchedule, scale, scale_by_learning_rate
from gradchain.transforms.sgd_variants import (
    add_noise,
    scale_by_adadelta,
    scale_by_asgd,
    scale_by_optimistic_gradient,
    scale_by_polyak,
    scale_by_rprop,
)
from gradchain.transforms.sign import scale_by_sign
from gradchain.transforms.weight_decay import add_l2_regularization

Scalar = float | jax.Array

__all__ = [
    "adadelta",
    "asgd",
    "noisy_sgd",
    "optimistic_adam",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "rprop",
    "sign_sgd",
    "signum",
]


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
        for _ in range(100):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert 0.0 < float(params["w"][0]) < 1.0  # slowly moving towards 1
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
        for _ in range(100):
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
        tx = gc.asgd(learning_rate=0.1, t0=50.0)
        state = tx.init(params)
        for _ in range(200):
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
        for _ in range(200):
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
        tx = gc.optimistic_gradient_descent(0.3)
        state = tx.init(params)
        for _ in range(300):
            g = {"x": params["y"], "y": -params["x"]}
            updates, state = tx.update(g, state, params)
            params = gc.apply_updates(params, updates)
        assert abs(float(params["x"])) < 1e-3 and abs(float(params["y"])) < 1e-3
        ```

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, *Training GANs with Optimism*, ICLR 2018.
    """
    return recipe(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate), pack=pack)


def optimistic_adam(
    learning_rate: Scalar,
    optimism: Scalar | None = None,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = True,
    pack: bool | None = None,
) -> GradientTransformation:
    """Optimistic Adam: optimism applied to Adam's scaled step.

    With $r_t$ the step of `scale_by_adam` ($\\hat m_t / (\\sqrt{\\hat v_t + \\bar\\epsilon} + \\epsilon)$,
    Nesterov's $\\hat m_t$ by default) and $o$ the optimism:

    $$ p_t = p_{t-1} - \\big(\\eta\\, r_t + o\\,(r_t - r_{t-1})\\big), \\qquad r_0 = r_1 $$

    Recipe: `scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nesterov=nesterov)` →
    `scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism)` → `scale(-1.0)`, as
    `optax.optimistic_adam` (same arguments and defaults; `optimism=None` is the learning rate, as in
    the paper). The learning rate is therefore the hyperparameter `alpha` of the optimistic
    ingredient, and takes no schedule (as in optax). optax's `optimistic_adam_v2(lr, alpha=a,
    beta=b, ...)` is `chain(scale_by_adam(..., nesterov=True), scale_by_optimistic_gradient(a, b),
    scale_by_learning_rate(lr))`, which does take a schedule.

    Args:
        learning_rate: $\\eta$, a number.
        optimism: $o$, a number, or None for $o = \\eta$.
        b1: $\\beta_1 \\in [0, 1)$.
        b2: $\\beta_2 \\in [0, 1)$.
        eps: $\\epsilon \\ge 0$, outside the root.
        eps_root: $\\bar\\epsilon \\ge 0$, inside the root.
        mu_dtype: storage dtype of the first moment.
        nesterov: Nesterov's first moment (optax's default, True).
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        params = {"x": jnp.array(1.0), "y": jnp.array(2.0)}
        tx = gc.optimistic_adam(1e-2, 1.0)
        state = tx.init(params)
        for _ in range(1025):
            g = {"x": params["y"], "y": -params["x"]}   # min_x max_y x * y
            updates, state = tx.update(g, state, params)
            params = gc.apply_updates(params, updates)
        assert float(jnp.hypot(params["x"], params["y"])) < 0.01
        ```

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, *Training GANs with Optimism*, ICLR 2018.
    """
    if callable(learning_rate):
        raise TypeError(
            "optimistic_adam: learning_rate must be a number (it also sets the default optimism); for a "
            "schedule, chain scale_by_adam, scale_by_optimistic_gradient and scale_by_learning_rate"
        )
    check("optimistic_adam: learning_rate", learning_rate, Check.NONNEGATIVE)
    if optimism is None:
        optimism = learning_rate
    check("optimistic_adam: optimism", optimism, Check.FINITE)
    return recipe(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism),
        scale(-1.0),
        pack=pack,
    )


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
