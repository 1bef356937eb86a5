"""The textbook optimizers: SGD (momentum, Nesterov), AdaGrad, RMSProp, the Adam family.

Each is a `chain` of public ingredients. Coupled L2 decay (PyTorch's `weight_decay` in SGD, Adam,
Adagrad, RMSprop, Adamax) is `add_l2_regularization` at the head of the chain; decoupled decay (the
`*w` optimizers) is `add_decayed_weights` between the adaptive scaling and the learning rate.

Optional parts follow one rule: an argument left as `None` leaves its ingredient out of the chain
(no state, no work); any value, `0.0` included, puts it in, and its hyperparameter can then be
changed between steps with `set_hyperparams`.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.typing import DTypeLike

from gradchain import schedules
from gradchain._base import GradientTransformation
from gradchain._checks import Check, check
from gradchain._combine import chain
from gradchain.transforms.adaptive import (
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_rms,
    scale_by_rss,
)
from gradchain.transforms.momentum import trace
from gradchain.transforms.scaling import ScalarOrSchedule, scale_by_learning_rate
from gradchain.transforms.weight_decay import add_decayed_weights, add_l2_regularization

Scalar = float | jax.Array


def recipe(*parts: GradientTransformation | None, pack: bool | None) -> GradientTransformation:
    return chain(*(p for p in parts if p is not None), pack=pack)


def _l2(weight_decay: ScalarOrSchedule | None) -> GradientTransformation | None:
    return None if weight_decay is None else add_l2_regularization(weight_decay)


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
        tx = gc.sgd(learning_rate=0.1, momentum=0.9)
        state = tx.init(params)
        for _ in range(200):
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
        _l2(weight_decay),
        None if momentum is None else trace(momentum, nesterov, dampening, accumulator_dtype),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


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
        _l2(weight_decay),
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
        _l2(weight_decay),
        scale_by_rms(
            decay, eps, initial_scale, eps_in_sqrt=eps_in_sqrt, centered=centered, bias_correction=bias_correction
        ),
        None if momentum is None else trace(momentum, nesterov),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


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
        tx = gc.adam(learning_rate=0.05)
        state = tx.init(params)
        for _ in range(300):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(params["w"], 1.0, atol=1e-2)
        ```

    References:
        Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    return recipe(
        _l2(weight_decay),
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
        _l2(weight_decay),
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
        _l2(weight_decay),
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
    return recipe(_l2(weight_decay), scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate), pack=pack)


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
