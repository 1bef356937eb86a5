"""Memory-light optimizers: Adafactor (factored second moment), SM3 (a cover of accumulators).

Each is a `chain` of public ingredients, with the conventions of `gradchain.optimizers.recipe`: an
optional part whose argument is left as `None` is left out of the chain (no state, no work); any
value, `0.0` included, puts it in, and its hyperparameter can then be changed between steps with
`set_hyperparams`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax.typing import DTypeLike

from gradchain._base import GradientTransformation, ScalarOrSchedule
from gradchain._checks import Check, check, check_int, check_state_dtype
from gradchain.optimizers.recipe import Scalar, recipe
from gradchain.transforms.clipping import clip_by_block_rms
from gradchain.transforms.factored import scale_by_factored_rms, scale_by_param_block_rms
from gradchain.transforms.momentum import ema
from gradchain.transforms.scaling import scale, scale_by_learning_rate
from gradchain.transforms.sm3 import scale_by_sm3
from gradchain.transforms.weight_decay import add_decayed_weights


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: Scalar = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Scalar | None = 1.0,
    momentum: Scalar | None = None,
    dtype_momentum: DTypeLike | None = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: Scalar = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """Adafactor: a factored second moment, update clipping, steps relative to the parameters' scale.

    With $U_t$ the factored RMS scaling of `scale_by_factored_rms` ($\\hat\\beta_t = 1 - t^{-c}$),
    $d$ the clipping threshold and $s_{\\min} = 10^{-3}$:

    $$ \\tilde U_t = \\frac{U_t}{\\max\\big(1, \\mathrm{rms}(U_t) / d\\big)}, \\qquad
       x_t = \\eta_t \\max\\big(\\mathrm{rms}(p_{t-1}), s_{\\min}\\big)\\, \\tilde U_t $$
    $$ m_t = \\beta_1 m_{t-1} + (1-\\beta_1)\\, x_t \\;\\text{ (with momentum, else } m_t = x_t), \\qquad
       p_t = p_{t-1} - m_t - \\lambda p_{t-1} $$

    $\\mathrm{rms}$ is taken per leaf. Recipe, as `optax.adafactor`: `scale_by_factored_rms(factored,
    decay_rate, decay_offset, min_dim_size_to_factor, eps)` → `clip_by_block_rms(clipping_threshold)`
    → `scale_by_learning_rate(learning_rate, flip_sign=False)` →
    `scale_by_param_block_rms()` (if `multiply_by_parameter_scale`) →
    `ema(momentum, debias=False, accumulator_dtype=dtype_momentum)` →
    `add_decayed_weights(weight_decay_rate, weight_decay_mask)` → `scale(-1.0)`. An argument left as
    None (or `multiply_by_parameter_scale=False`) leaves its ingredient out; without a learning rate
    $\\eta_t = 1$. The weight decay comes after the learning rate, so $\\lambda$ is an absolute rate
    (not multiplied by $\\eta_t$), as in optax. The hyperparameters in the state are named after
    the ingredients: `decay_rate`, `epsilon`, `threshold`, `learning_rate`, `min_scale`, `decay`
    (the momentum), `weight_decay`, and `step_size` (the final -1).

    The paper's relative step size is the schedule $\\eta_t = \\min(10^{-2}, 1/\\sqrt t)$:
    `learning_rate=lambda count: jnp.minimum(1e-2, jax.lax.rsqrt(count + 1.0))`. With it,
    `torch.optim.Adafactor(lr, beta2_decay, eps=(eps1, eps2), d, weight_decay)` is `adafactor(
    lambda count: jnp.minimum(lr, jax.lax.rsqrt(count + 1.0)), min_dim_size_to_factor=0,
    decay_rate=-beta2_decay, clipping_threshold=d, eps=0.0, weight_decay_rate=lr * weight_decay)` with
    $s_{\\min} = \\epsilon_2$ = 1e-3 (PyTorch's default; for another $\\epsilon_2$, build the chain with
    `scale_by_param_block_rms(eps2)`), up to two conventions: PyTorch factors the last two axes of a
    tensor of 3 or more dimensions (here: the two largest), and clamps its statistics below by
    $\\epsilon_1$ instead of adding $\\epsilon$ to $g^2$ (the two agree where the mean squared
    gradients exceed $\\epsilon_1$, by default the machine epsilon of the param dtype).

    Args:
        learning_rate: $\\eta \\ge 0$, a schedule, or None ($\\eta = 1$).
        min_dim_size_to_factor: factor a leaf's second moment only if its second largest dimension
            is at least this.
        decay_rate: the exponent $c \\in [0, 1]$ of $\\hat\\beta_t = 1 - t^{-c}$.
        decay_offset: subtracted from the step count in $\\hat\\beta_t$ (for fine-tuning from a
            restored count).
        multiply_by_parameter_scale: multiply the step by $\\max(\\mathrm{rms}(p), 10^{-3})$.
        clipping_threshold: $d \\ge 0$, or None for no update clipping.
        momentum: $\\beta_1 \\in [0, 1)$ for a (not debiased) moving average of the steps, or None.
        dtype_momentum: storage dtype of the momentum buffer (float32 by default, as in optax;
            None keeps the param's dtype).
        weight_decay_rate: $\\lambda \\ge 0$, a schedule, or None.
        eps: $\\epsilon \\ge 0$ added to $g^2$ (hyperparameter `epsilon`).
        factored: factor the second moment of matrices at all.
        weight_decay_mask: which leaves to decay (tree of bools or function of the params).
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        import gradchain as gc

        loss = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum((p["b"] + 1.0) ** 2)
        params = {"w": jnp.full((3, 4), 0.5), "b": jnp.full(3, -0.5)}
        tx = gc.adafactor(learning_rate=0.1, min_dim_size_to_factor=2)
        state = tx.init(params)
        assert state[0].v_row["w"].shape == (3,) and state[0].v_col["w"].shape == (4,)  # factored
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = gc.apply_updates(params, updates)
        assert jnp.allclose(params["w"], 1.0, atol=0.05) and jnp.allclose(params["b"], -1.0, atol=0.05)
        assert set(gc.hyperparams(state)) == {"decay_rate", "epsilon", "threshold", "learning_rate", "min_scale",
                                           "step_size"}
        ```

    References:
        Shazeer & Stern, *Adafactor: Adaptive Learning Rates with Sublinear Memory Cost*, ICML 2018.
    """
    # Checked here too, so that a message names adafactor's argument, not the ingredient's.
    min_dim_size_to_factor = check_int("adafactor: min_dim_size_to_factor", min_dim_size_to_factor)
    decay_offset = check_int("adafactor: decay_offset", decay_offset)
    check("adafactor: decay_rate", decay_rate, Check.CLOSED_UNIT_INTERVAL)
    check("adafactor: eps", eps, Check.NONNEGATIVE)
    if clipping_threshold is not None:
        check("adafactor: clipping_threshold", clipping_threshold, Check.NONNEGATIVE)
    if momentum is not None:
        check("adafactor: momentum", momentum, Check.UNIT_INTERVAL)
        check_state_dtype("adafactor", "dtype_momentum", dtype_momentum)
    if weight_decay_rate is not None:
        check("adafactor: weight_decay_rate", weight_decay_rate, Check.NONNEGATIVE)
    return recipe(
        scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps),
        None if clipping_threshold is None else clip_by_block_rms(clipping_threshold),
        None if learning_rate is None else scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_param_block_rms() if multiply_by_parameter_scale else None,
        None if momentum is None else ema(momentum, debias=False, accumulator_dtype=dtype_momentum),
        None if weight_decay_rate is None else add_decayed_weights(weight_decay_rate, weight_decay_mask),
        scale(-1.0),
        pack=pack,
    )


def sm3(learning_rate: ScalarOrSchedule, momentum: Scalar = 0.9, *, pack: bool | None = None) -> GradientTransformation:
    """SM3: AdaGrad with one accumulator per row, column, ... of each leaf, and momentum.

    With $\\tilde g_t$ the scaling of `scale_by_sm3` ($\\beta_2 = 1$, $\\epsilon = 10^{-8}$):

    $$ m_t = \\beta m_{t-1} + (1-\\beta)\\, \\tilde g_t, \\qquad p_t = p_{t-1} - \\eta_t m_t $$

    Recipe, as `optax.sm3`: `scale_by_sm3(b1=momentum)` → `scale_by_learning_rate(learning_rate)`
    (optax: `scale(-learning_rate)`, so no schedules there). For other $\\beta_2$ or $\\epsilon$,
    chain the two ingredients. State: the momentum (params-sized) and, for a matrix of shape
    $(m, n)$, $m + n$ accumulators. PyTorch has no SM3.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        momentum: $\\beta \\in [0, 1)$ (hyperparameter `b1`).
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        from gradchain import apply_updates
        import gradchain as gc

        loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2)
        params = {"w": jnp.zeros((3, 4))}
        tx = gc.sm3(learning_rate=1.0, momentum=0.5)
        state = tx.init(params)
        assert [m.shape for m in state[0].mu["w"]] == [(3,), (4,)]
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = apply_updates(params, updates)
        assert jnp.allclose(params["w"], 2.0, atol=1e-3)
        ```

    References:
        Anil, Gupta, Koren & Singer, *Memory-Efficient Adaptive Optimization*, NeurIPS 2019.
    """
    check("sm3: momentum", momentum, Check.UNIT_INTERVAL)
    return recipe(scale_by_sm3(b1=momentum), scale_by_learning_rate(learning_rate), pack=pack)
