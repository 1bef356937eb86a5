"""Adam and its direct variants: Adam, AdamW, NAdam, NAdamW, AMSGrad, AdaMax, AdaMaxW, optimistic Adam.

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
from gradchain._combine import chain
from gradchain.optimizers.recipe import Scalar, optional_l2, recipe
from gradchain.transforms.adam import scale_by_adam, scale_by_adamax, scale_by_amsgrad, scale_by_nadam
from gradchain.transforms.optimistic import scale_by_optimistic_gradient
from gradchain.transforms.scaling import scale, scale_by_learning_rate
from gradchain.transforms.weight_decay import add_decayed_weights


def adam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """Adam, optionally with coupled L2 weight decay ("Adam + L2", PyTorch's `Adam(weight_decay=...)`).

    $$ p_t = p_{t-1} - \\eta_t \\frac{\\hat\\mu_t}{\\sqrt{\\hat\\nu_t + \\epsilon_{root}} + \\epsilon} $$

    with $\\hat\\mu_t, \\hat\\nu_t$ the debiased moments of `scale_by_adam` (of $g + \\lambda p$ when
    `weight_decay` is given). Recipe: `add_l2_regularization` → `scale_by_adam` →
    `scale_by_learning_rate`. `torch.optim.Adam(lr, betas, eps, weight_decay)` is
    `adam(lr, *betas, eps, weight_decay=weight_decay)`; for `amsgrad=True` see `amsgrad`.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: decay rate of the first moment, in $[0, 1)$.
        b2: decay rate of the second moment, in $[0, 1)$.
        eps: $\\epsilon$ added outside the square root.
        eps_root: $\\epsilon$ added inside the square root.
        mu_dtype: storage dtype of the first moment (default: the param's).
        nu_dtype: storage dtype of the second moment (default: the param's).
        nesterov: NAdam's first moment (see `nadam`).
        weight_decay: coupled L2 coefficient, or None. For decoupled decay use `adamw`.
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
        tx = gc.adam(learning_rate=0.2)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert loss(params) < 3e-2  # from 3.0: 100x lower in 50 steps
        ```

    References:
        Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    return recipe(
        optional_l2(weight_decay),
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nu_dtype: DTypeLike | None = None,
    nesterov: bool = False,
    pack: bool | None = None,
) -> GradientTransformation:
    """AdamW: Adam with decoupled weight decay.

    $$ p_t = p_{t-1} - \\eta_t \\Big(\\frac{\\hat\\mu_t}{\\sqrt{\\hat\\nu_t + \\epsilon_{root}} + \\epsilon}
       + \\lambda p_{t-1}\\Big) $$

    Recipe: `scale_by_adam` → `add_decayed_weights(weight_decay, mask)` → `scale_by_learning_rate`.
    The default $\\lambda = 10^{-4}$ is optax's. `torch.optim.AdamW(lr, betas, eps, weight_decay)`
    is `adamw(lr, *betas, eps, weight_decay=weight_decay)` (PyTorch's default decay is 0.01).

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: decay rate of the first moment, in $[0, 1)$.
        b2: decay rate of the second moment, in $[0, 1)$.
        eps: $\\epsilon$ added outside the square root.
        eps_root: $\\epsilon$ added inside the square root.
        mu_dtype: storage dtype of the first moment.
        weight_decay: $\\lambda \\ge 0$, or a schedule.
        mask: which leaves to decay (tree of bools or function of the params).
        nu_dtype: storage dtype of the second moment.
        nesterov: NAdam's first moment (see `nadamw`).
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.adamw(learning_rate=1e-3, weight_decay=0.1)
        params = {"w": jnp.ones(3)}
        updates, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
        assert jnp.allclose(updates["w"], -1e-3 * 0.1)  # zero gradient: only the decay acts
        ```

    References:
        Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    momentum_decay: Scalar | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """NAdam: Adam with Nesterov's look-ahead first moment (optax's form, or Dozat's/PyTorch's).

    $$ \\hat\\mu_t = \\frac{\\beta_1 \\mu_t}{1-\\beta_1^{t+1}} + \\frac{(1-\\beta_1) g_t}{1-\\beta_1^t},
       \\qquad p_t = p_{t-1} - \\eta_t \\frac{\\hat\\mu_t}{\\sqrt{\\hat\\nu_t + \\epsilon_{root}} + \\epsilon} $$

    Recipe: `adam(..., nesterov=True)`. With `momentum_decay` $\\psi$ given, the recipe is
    `scale_by_nadam` instead: Dozat's schedule $\\mu_t = \\beta_1 (1 - \\tfrac12 0.96^{t \\psi})$, which
    is what PyTorch's `NAdam` does: `torch.optim.NAdam(lr, betas, eps, weight_decay, momentum_decay)`
    is `nadam(lr, *betas, eps, momentum_decay=momentum_decay, weight_decay=weight_decay)` (PyTorch's
    default `momentum_decay` is 0.004; `eps_root` does not apply there).

    Args:
        learning_rate: as in `adam`.
        b1: as in `adam`.
        b2: as in `adam`.
        eps: as in `adam`.
        eps_root: as in `adam`.
        mu_dtype: as in `adam`.
        nu_dtype: as in `adam`.
        momentum_decay: None for optax's NAdam, or $\\psi \\ge 0$ for Dozat's momentum schedule.
        weight_decay: coupled L2 coefficient, or None.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.nadam(learning_rate=1e-3)
        params = {"w": jnp.ones(3)}
        updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
        assert (updates["w"] < 0).all()
        ```

    References:
        Dozat, *Incorporating Nesterov Momentum into Adam*, ICLR workshop 2016.
    """
    return recipe(
        optional_l2(weight_decay),
        _nadam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, momentum_decay),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def _nadam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, momentum_decay) -> GradientTransformation:
    if momentum_decay is None:
        return scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=True)
    if not (isinstance(eps_root, (int, float)) and eps_root == 0):
        raise ValueError("nadam: eps_root is not used with momentum_decay (Dozat's NAdam); leave it at 0")
    return scale_by_nadam(b1, b2, eps, momentum_decay, mu_dtype=mu_dtype, nu_dtype=nu_dtype)


def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nu_dtype: DTypeLike | None = None,
    momentum_decay: Scalar | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """NAdamW: NAdam's first moment with decoupled weight decay.

    $$ p_t = p_{t-1} - \\eta_t \\Big(\\frac{\\hat\\mu_t}{\\sqrt{\\hat\\nu_t + \\epsilon_{root}} + \\epsilon}
       + \\lambda p_{t-1}\\Big), \\quad \\hat\\mu_t \\text{ as in } `nadam` $$

    Recipe: `scale_by_adam(nesterov=True)` (or `scale_by_nadam` when `momentum_decay` is given) →
    `add_decayed_weights` → `scale_by_learning_rate`. `torch.optim.NAdam(lr, betas, eps,
    weight_decay, momentum_decay, decoupled_weight_decay=True)` is `nadamw(lr, *betas, eps,
    weight_decay=weight_decay, momentum_decay=momentum_decay)`.

    Args:
        learning_rate: as in `adamw`.
        b1: as in `adamw`.
        b2: as in `adamw`.
        eps: as in `adamw`.
        eps_root: as in `adamw`.
        mu_dtype: as in `adamw`.
        weight_decay: as in `adamw`.
        mask: as in `adamw`.
        nu_dtype: as in `adamw`.
        momentum_decay: None for optax's NAdam, or $\\psi \\ge 0$ for Dozat's momentum schedule.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.nadamw(learning_rate=1e-3, weight_decay=1e-2)
        params = {"w": jnp.ones(3)}
        updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
        assert (updates["w"] < 0).all()
        ```

    References:
        Dozat 2016; Loshchilov & Hutter, ICLR 2019.
    """
    return chain(
        _nadam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, momentum_decay),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: DTypeLike | None = None,
    *,
    nu_dtype: DTypeLike | None = None,
    debias_before_max: bool = True,
    weight_decay: ScalarOrSchedule | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """AMSGrad: Adam whose second moment never decreases.

    $$ p_t = p_{t-1} - \\eta_t \\frac{\\hat\\mu_t}{\\sqrt{\\max_{s \\le t} \\hat\\nu_s + \\epsilon_{root}}
       + \\epsilon} $$

    Recipe: `add_l2_regularization` → `scale_by_amsgrad` → `scale_by_learning_rate`.
    `torch.optim.Adam(lr, betas, eps, weight_decay, amsgrad=True)` is
    `amsgrad(lr, *betas, eps, debias_before_max=False, weight_decay=weight_decay)`.

    Args:
        learning_rate: as in `adam`.
        b1: as in `adam`.
        b2: as in `adam`.
        eps: as in `adam`.
        eps_root: as in `adam`.
        mu_dtype: as in `adam`.
        nu_dtype: as in `adam`.
        debias_before_max: optax's (True) or PyTorch's (False) place for the bias correction.
        weight_decay: coupled L2 coefficient, or None.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.amsgrad(learning_rate=1e-3)
        params = {"w": jnp.ones(3)}
        updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
        assert jnp.allclose(updates["w"], -1e-3, rtol=1e-4)
        ```

    References:
        Reddi, Kale & Kumar, ICLR 2018.
    """
    return recipe(
        optional_l2(weight_decay),
        scale_by_amsgrad(
            b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, debias_before_max=debias_before_max
        ),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    *,
    weight_decay: ScalarOrSchedule | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """AdaMax: Adam with the infinity norm in place of the root mean square.

    $$ \\nu_t = \\max(\\beta_2 \\nu_{t-1}, |g_t| + \\epsilon), \\qquad
       p_t = p_{t-1} - \\frac{\\eta_t}{1-\\beta_1^t} \\frac{\\mu_t}{\\nu_t} $$

    Recipe: `add_l2_regularization` → `scale_by_adamax` → `scale_by_learning_rate`.
    `torch.optim.Adamax(lr, betas, eps, weight_decay)` is `adamax(lr, *betas, eps, weight_decay=...)`.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: decay rate of the first moment, in $[0, 1)$.
        b2: decay rate of the infinity norm, in $[0, 1)$.
        eps: $\\epsilon \\ge 0$.
        weight_decay: coupled L2 coefficient, or None.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.adamax(learning_rate=0.002)
        params = {"w": jnp.ones(2)}
        updates, _ = tx.update({"w": jnp.array([1.0, -1.0])}, tx.init(params), params)
        assert jnp.allclose(updates["w"], jnp.array([-0.002, 0.002]), rtol=1e-5)
        ```

    References:
        Kingma & Ba, ICLR 2015, section 7.1.
    """
    return recipe(
        optional_l2(weight_decay), scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate), pack=pack
    )


def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """AdaMaxW: AdaMax with decoupled weight decay.

    $$ p_t = p_{t-1} - \\eta_t \\Big(\\frac{\\mu_t}{(1-\\beta_1^t)\\nu_t} + \\lambda p_{t-1}\\Big) $$

    Recipe: `scale_by_adamax` → `add_decayed_weights(weight_decay, mask)` → `scale_by_learning_rate`.

    Args:
        learning_rate: as in `adamax`.
        b1: as in `adamax`.
        b2: as in `adamax`.
        eps: as in `adamax`.
        weight_decay: $\\lambda \\ge 0$, or a schedule.
        mask: which leaves to decay.
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.adamaxw(learning_rate=0.002, weight_decay=0.1)
        params = {"w": jnp.ones(2)}
        updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
        assert jnp.allclose(updates["w"], -0.002 * 0.1)
        ```

    References:
        Kingma & Ba, ICLR 2015; Loshchilov & Hutter, ICLR 2019.
    """
    return chain(
        scale_by_adamax(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


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
        tx = gc.optimistic_adam(0.2, 3.0)
        state = tx.init(params)
        for _ in range(50):
            g = {"x": params["y"], "y": -params["x"]}   # min_x max_y x * y
            updates, state = tx.update(g, state, params)
            params = gc.apply_updates(params, updates)
        assert float(jnp.hypot(params["x"], params["y"])) < 0.1  # from sqrt(5): 20x closer to (0, 0)
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
