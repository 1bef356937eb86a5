"""Adam's descendants as recipes: AdaBelief, Yogi, RAdam, Adan, NovoGrad.

Each is a `chain` of public ingredients (`gradchain.transforms.adam_family` and the weight-decay,
momentum and learning-rate ingredients), with the conventions of `gradchain.optimizers.recipe`:
an optional part whose argument is `None` is left out of the chain; any value, `0.0` included, puts
it in, and its hyperparameter can then be changed between steps with `set_hyperparams`.
"""

from __future__ import annotations

from typing import Any

from jax.typing import DTypeLike

from gradchain._base import GradientTransformation, ScalarOrSchedule
from gradchain._checks import Check, check
from gradchain.optimizers.recipe import Scalar, recipe
from gradchain.transforms.adam_family import (
    scale_by_adan,
    scale_by_belief,
    scale_by_novograd,
    scale_by_radam,
    scale_by_yogi,
)
from gradchain.transforms.momentum import trace
from gradchain.transforms.scaling import scale_by_learning_rate
from gradchain.transforms.weight_decay import add_decayed_weights, add_l2_regularization


def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    *,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any = None,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """AdaBelief: Adam whose denominator is the spread of the gradient around its moving average.

    $$ \\mu_t = \\beta_1 \\mu_{t-1} + (1-\\beta_1) g_t, \\qquad
       s_t = \\beta_2 s_{t-1} + (1-\\beta_2) |g_t - \\mu_t|^2 + \\epsilon_{root} $$
    $$ p_t = p_{t-1} - \\eta_t \\Big( \\frac{\\mu_t / (1-\\beta_1^t)}{\\sqrt{s_t / (1-\\beta_2^t)} + \\epsilon}
       + \\lambda p_{t-1} \\Big) $$

    Recipe: `scale_by_belief(b1, b2, eps, eps_root, nesterov=...)` →
    `add_decayed_weights(weight_decay, mask)` (only when `weight_decay` is given) →
    `scale_by_learning_rate(learning_rate)`. Without `weight_decay` this is `optax.adabelief`, same
    arguments, order and defaults. The decay is decoupled (multiplied by $\\eta_t$, not divided by
    the denominator), as in the authors' PyTorch package with `weight_decouple=True`; optax has none.
    PyTorch has no AdaBelief.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: $\\beta_1 \\in [0, 1)$.
        b2: $\\beta_2 \\in [0, 1)$.
        eps: $\\epsilon \\ge 0$ outside the root.
        eps_root: $\\epsilon_{root} \\ge 0$ added to $s_t$.
        nesterov: Nesterov (NAdam) first moment.
        weight_decay: decoupled decay $\\lambda \\ge 0$, a schedule, or None.
        mask: which leaves to decay (tree of bools or function of the params).
        mu_dtype: storage dtype of $\\mu$.
        nu_dtype: storage dtype of $s$.
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
        tx = gc.adabelief(learning_rate=0.1)
        state, step = tx.init(params), jax.jit(tx.update)
        for _ in range(50):
            updates, state = step(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert loss(params) < 3e-2  # from 3.0: 100x lower in 50 steps
        ```

    References:
        Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan, *AdaBelief Optimizer: Adapting
        Stepsizes by the Belief in Observed Gradients*, NeurIPS 2020.
    """
    return recipe(
        scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        None if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def yogi(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-3,
    *,
    eps_root: Scalar = 0.0,
    initial_accumulator_value: float = 1e-6,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """Yogi: Adam with an additive, sign-controlled update of the second moment.

    $$ \\nu_t = \\nu_{t-1} - (1-\\beta_2)\\, \\operatorname{sign}(\\nu_{t-1} - |g_t|^2)\\, |g_t|^2, $$
    $$ p_t = p_{t-1} - \\eta_t \\frac{\\hat\\mu_t}{\\sqrt{\\hat\\nu_t + \\epsilon_{root}} + \\epsilon} $$

    with $\\mu_t$ Adam's first moment, hats dividing by $1 - \\beta_i^t$, and
    $\\mu_0 = \\nu_0$ = `initial_accumulator_value`. Recipe:
    `scale_by_yogi(b1, b2, eps, eps_root, initial_accumulator_value)` →
    `scale_by_learning_rate(learning_rate)`. This is `optax.yogi` (same positional arguments and
    defaults, its $\\nu_0 = \\mu_0 = 10^{-6}$); `eps_root` and `initial_accumulator_value` are
    keyword-only here because `optax.yogi` does not take them (`optax.scale_by_yogi` does). PyTorch
    has no Yogi.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: $\\beta_1 \\in [0, 1)$.
        b2: $\\beta_2 \\in [0, 1)$.
        eps: $\\epsilon \\ge 0$ outside the root.
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root.
        initial_accumulator_value: $\\mu_0 = \\nu_0 \\ge 0$.
        mu_dtype: storage dtype of $\\mu$.
        nu_dtype: storage dtype of $\\nu$.
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
        tx = gc.yogi(learning_rate=0.2)
        state, step = tx.init(params), jax.jit(tx.update)
        for _ in range(50):
            updates, state = step(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert loss(params) < 3e-2  # from 3.0: 100x lower in 50 steps
        ```

    References:
        Zaheer, Reddi, Sachan, Kale & Kumar, *Adaptive Methods for Nonconvex Optimization*, NeurIPS 2018.
    """
    return recipe(
        scale_by_yogi(b1, b2, eps, eps_root, initial_accumulator_value, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def radam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    threshold: Scalar = 5.0,
    *,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule | None = None,
    decoupled_weight_decay: bool = False,
    mask: Any = None,
    eps_before_bias_correction: bool = False,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """Rectified Adam: momentum SGD while Adam's adaptive rate is too noisy, then rectified Adam steps.

    With $\\rho_t$, $r_t$ and the threshold $\\rho_{thr}$ of `scale_by_radam`:

    $$ p_t = p_{t-1} - \\eta_t \\begin{cases}
       r_t\\, \\hat\\mu_t / (\\sqrt{\\hat\\nu_t + \\epsilon_{root}} + \\epsilon) & \\rho_t \\ge \\rho_{thr} \\\\
       \\hat\\mu_t & \\text{otherwise} \\end{cases} $$

    Recipe: `add_l2_regularization(weight_decay, mask)` (coupled decay) → `scale_by_radam(b1, b2,
    eps, eps_root, threshold, ...)` → `add_decayed_weights(weight_decay, mask)` (decoupled decay,
    `decoupled_weight_decay=True`) → `scale_by_learning_rate(learning_rate)`; only one of the two
    decays is in the chain, and none when `weight_decay` is None.

    - `optax.radam(lr, b1, b2, eps, eps_root, threshold, nesterov=...)` is `radam` with the same
      arguments (same order and defaults).
    - `torch.optim.RAdam(lr, betas=(b1, b2), eps, weight_decay, decoupled_weight_decay)` is
      `radam(lr, b1, b2, eps, weight_decay=weight_decay, decoupled_weight_decay=...,
      eps_before_bias_correction=True)` (PyTorch's defaults: `lr=1e-3`, `weight_decay=0`, coupled).
      PyTorch's decoupled decay multiplies the param by $1 - \\eta\\lambda$ before the step: the same
      as adding $\\lambda p_{t-1}$ to the update here. Its complex params are treated as pairs of
      real numbers (a second moment per real and imaginary part); here $|g|^2$ is used, as in optax.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: $\\beta_1 \\in [0, 1)$.
        b2: $\\beta_2 \\in [0, 1)$.
        eps: $\\epsilon \\ge 0$.
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root.
        threshold: $\\rho_{thr} \\ge 4$: rectified steps once $\\rho_t \\ge \\rho_{thr}$ (5 in optax,
            PyTorch and the paper).
        nesterov: Nesterov (NAdam) first moment.
        weight_decay: decay $\\lambda \\ge 0$, a schedule, or None.
        decoupled_weight_decay: decoupled (AdamW-style) decay instead of L2 added to the gradient.
        mask: which leaves to decay (tree of bools or function of the params).
        eps_before_bias_correction: PyTorch's placement of $\\epsilon$ (see `scale_by_radam`).
        mu_dtype: storage dtype of $\\mu$.
        nu_dtype: storage dtype of $\\nu$.
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
        tx = gc.radam(learning_rate=0.15)
        state, step = tx.init(params), jax.jit(tx.update)
        for _ in range(50):
            updates, state = step(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert loss(params) < 1e-3
        ```

    References:
        Liu, Jiang, He, Chen, Liu, Gao & Han, *On the Variance of the Adaptive Learning Rate and
        Beyond*, ICLR 2020.
    """
    if not isinstance(decoupled_weight_decay, bool):
        raise TypeError(f"radam: decoupled_weight_decay must be a bool, got {decoupled_weight_decay!r}")
    decay = None
    if weight_decay is not None:
        check("radam: weight_decay", weight_decay, Check.NONNEGATIVE)
        decay = (add_decayed_weights if decoupled_weight_decay else add_l2_regularization)(weight_decay, mask)
    return recipe(
        None if decoupled_weight_decay else decay,
        scale_by_radam(
            b1,
            b2,
            eps,
            eps_root,
            threshold,
            nesterov=nesterov,
            eps_before_bias_correction=eps_before_bias_correction,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        decay if decoupled_weight_decay else None,
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def adan(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.98,
    b2: Scalar = 0.92,
    b3: Scalar = 0.99,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule | None = 0.0,
    mask: Any = None,
    *,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """Adan: adaptive Nesterov momentum from moments of the gradient and of its differences.

    With $u_t$ the update of `scale_by_adan`:

    $$ p_t = p_{t-1} - \\eta_t \\big(u_t + \\lambda p_{t-1}\\big) $$

    Recipe: `scale_by_adan(b1, b2, b3, eps, eps_root)` → `add_decayed_weights(weight_decay, mask)`
    → `scale_by_learning_rate(learning_rate)`. This is `optax.adan`: same arguments, order and
    defaults (`eps_root=1e-8` here, 0 in `scale_by_adan`, as in optax). The paper's decay is the
    proximal step $p_t = (p_{t-1} - \\eta_t u_t) / (1 + \\eta_t\\lambda)$; the decoupled form used
    here (and by optax) agrees with it to first order in $\\eta_t\\lambda$. `weight_decay=None`
    leaves the decay out (then `update` does not need the params). PyTorch has no Adan.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: decay of the gradient's moving average, in $[0, 1)$.
        b2: decay of the moving average of gradient differences, in $[0, 1)$.
        b3: decay of the second moment, in $[0, 1)$.
        eps: $\\epsilon \\ge 0$.
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root.
        weight_decay: decoupled decay $\\lambda \\ge 0$, a schedule, or None.
        mask: which leaves to decay (tree of bools or function of the params).
        mu_dtype: storage dtype of $m$ and $v$.
        nu_dtype: storage dtype of $n$.
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
        tx = gc.adan(learning_rate=0.2)
        state, step = tx.init(params), jax.jit(tx.update)
        for _ in range(50):
            updates, state = step(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert loss(params) < 0.3  # from 3.0; b1 = 0.98 is heavy momentum, still settling
        ```

    References:
        Xie, Zhou, Li, Lin & Yan, *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
        Deep Models*, IEEE TPAMI 2024 (arXiv 2208.06677, 2022).
    """
    return recipe(
        scale_by_adan(b1, b2, b3, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        None if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def novograd(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.25,
    eps: Scalar = 1e-6,
    eps_root: Scalar = 0.0,
    weight_decay: ScalarOrSchedule | None = 0.0,
    *,
    mask: Any = None,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    pack: bool | None = None,
) -> GradientTransformation:
    """NovoGrad: gradients normalised per layer by a moving average of their norm, then momentum.

    For every leaf (layer) $\\ell$, with one scalar $v_\\ell$ ($v_{\\ell,1} = \\|g_{\\ell,1}\\|^2$):

    $$ v_{\\ell,t} = \\beta_2 v_{\\ell,t-1} + (1-\\beta_2) \\|g_{\\ell,t}\\|^2, \\qquad
       m_{\\ell,t} = \\beta_1 m_{\\ell,t-1} + \\frac{g_{\\ell,t}}{\\sqrt{v_{\\ell,t} + \\epsilon_{root}} + \\epsilon}
       + \\lambda p_{\\ell,t-1}, \\qquad p_t = p_{t-1} - \\eta_t m_t $$

    Recipe: `scale_by_novograd(b2, eps, eps_root)` → `add_decayed_weights(weight_decay, mask)` →
    `trace(b1, accumulator_dtype=mu_dtype)` → `scale_by_learning_rate(learning_rate)`. This is
    `optax.novograd` with the same arguments, order and defaults (note optax's `eps=1e-6` here but
    `1e-8` in `scale_by_novograd`); optax computes the same thing in one transformation. The decay
    sits inside the momentum, as in the paper. The hyperparameters in the state are named after the
    ingredients: $\\beta_1$ is the `trace`'s `decay` (and `dampening`, 0, comes with it).
    `weight_decay=None` leaves the decay out. PyTorch has no NovoGrad.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: the momentum $\\beta_1 \\in [0, 1)$.
        b2: $\\beta_2 \\in [0, 1)$ of the per-layer second moment.
        eps: $\\epsilon \\ge 0$.
        eps_root: $\\epsilon_{root} \\ge 0$ inside the root.
        weight_decay: $\\lambda \\ge 0$, a schedule, or None.
        mask: which leaves to decay (tree of bools or function of the params).
        mu_dtype: storage dtype of the momentum.
        nu_dtype: storage dtype of the per-layer $v$ (at least float32 by default).
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
        tx = gc.novograd(learning_rate=0.05)
        state, step = tx.init(params), jax.jit(tx.update)
        for _ in range(50):
            updates, state = step(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert loss(params) < 1e-2  # from 3.0
        assert state[0].nu["w"].shape == ()  # one second moment per leaf
        ```

    References:
        Ginsburg, Castonguay, Hrinchuk, Kuchaiev, Lavrukhin, Leary, Li, Nguyen, Zhang & Cohen,
        *Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep Networks*,
        arXiv 1905.11286, 2019.
    """
    # Checked here so that the message names novograd's b1, not trace's decay.
    check("novograd: b1", b1, Check.UNIT_INTERVAL)
    return recipe(
        scale_by_novograd(b2, eps, eps_root, nu_dtype=nu_dtype),
        None if weight_decay is None else add_decayed_weights(weight_decay, mask),
        trace(b1, accumulator_dtype=mu_dtype),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )
