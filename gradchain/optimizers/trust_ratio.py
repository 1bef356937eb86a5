"""Layer-wise optimizers: LARS, LAMB, Fromage (trust ratios).

Each is a `chain` of public ingredients, with the conventions of `gradchain.optimizers.recipe`: an
optional part whose argument is left as `None` is left out of the chain (no state, no work); any
value, `0.0` included, puts it in, and its hyperparameter can then be changed between steps with
`set_hyperparams`. Arguments, order and defaults are optax's.
"""

from __future__ import annotations

from typing import Any

from gradchain._base import GradientTransformation, ScalarOrSchedule
from gradchain._checks import Check, check
from gradchain.optimizers.recipe import Scalar, recipe
from gradchain.transforms.adam import scale_by_adam
from gradchain.transforms.momentum import trace
from gradchain.transforms.scaling import scale_by_learning_rate
from gradchain.transforms.trust_ratio import scale_by_fromage_step, scale_by_trust_ratio
from gradchain.transforms.weight_decay import add_decayed_weights
from gradchain.wrappers.partition import masked


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule | None = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: Scalar = 0.001,
    eps: Scalar = 0.0,
    trust_ratio_mask: Any = True,
    momentum: Scalar | None = 0.9,
    nesterov: bool = False,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """LARS: SGD with momentum whose step, per layer, is proportional to the layer's weight norm.

    Per leaf $\\ell$, with $\\|\\cdot\\|$ the L2 norm of the whole leaf:

    $$ d_t = g_t + \\lambda p_{t-1}, \\qquad
       r_t = \\frac{c\\, \\|p_{t-1}\\|}{\\|d_t\\| + \\epsilon} \\;(1 \\text{ if a norm is } 0), \\qquad
       v_t = \\beta v_{t-1} + \\eta_t\\, r_t\\, d_t, \\qquad p_t = p_{t-1} - v_t $$

    Recipe, as `optax.lars`: `add_decayed_weights(weight_decay, weight_decay_mask)` →
    `scale_by_trust_ratio(trust_coefficient=..., eps=...)` (inside `masked(..., trust_ratio_mask)`
    unless the mask is True) → `scale_by_learning_rate(learning_rate)` → `trace(momentum, nesterov)`.
    The learning rate enters the velocity before the momentum, as in the paper (Algorithm 1) and
    optax: a schedule changes only the new contributions. The paper's ratio has $\\|g_t\\| + \\lambda
    \\|p_{t-1}\\|$ in the denominator; optax's and this recipe's the norm of the decayed gradient
    $\\|g_t + \\lambda p_{t-1}\\|$ (the same when $\\lambda = 0$, never smaller). A common practice is
    to leave biases and normalisation scales out of both the decay and the trust ratio: pass
    `weight_decay_mask` and `trust_ratio_mask` (e.g. `lambda p: jax.tree.map(lambda x: x.ndim > 1, p)`).
    PyTorch has no LARS.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        weight_decay: $\\lambda \\ge 0$ (coupled: added before the trust ratio), a schedule, or None.
        weight_decay_mask: which leaves to decay: True (all), a tree of bools, or a function of the params.
        trust_coefficient: $c \\ge 0$ (the paper's $\\eta$).
        eps: $\\epsilon \\ge 0$ added to the update's norm.
        trust_ratio_mask: which leaves get the trust ratio: True (all), a tree of bools, or a
            function of the params; the others take plain momentum SGD steps.
        momentum: $\\beta \\in [0, 1)$, or None for no momentum.
        nesterov: Nesterov momentum (static).
        pack: packed execution: None (automatic), True or False; see `chain`.

    Returns:
        A `GradientTransformation`.

    Example:
        ```python
        import jax
        import jax.numpy as jnp
        from gradchain import apply_updates, schedules
        import gradchain as gc

        loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2)
        params = {"w": jnp.ones(4)}
        # Every step moves by about lr * 0.001 * |p|: a decaying rate lets it settle.
        tx = gc.lars(learning_rate=schedules.cosine_decay_schedule(20.0, 50), momentum=0.9)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = apply_updates(params, updates)
        assert jnp.allclose(params["w"], 2.0, atol=0.05)
        ```

    References:
        You, Gitman & Ginsburg, *Large Batch Training of Convolutional Networks*, 2017.
    """
    check("lars: trust_coefficient", trust_coefficient, Check.NONNEGATIVE)
    check("lars: eps", eps, Check.NONNEGATIVE)
    if momentum is not None:
        check("lars: momentum", momentum, Check.UNIT_INTERVAL)
    elif nesterov:
        raise ValueError("lars: nesterov needs a momentum value; got momentum=None")
    if weight_decay is not None:
        check("lars: weight_decay", weight_decay, Check.NONNEGATIVE)
    trust = scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    return recipe(
        None if weight_decay is None else add_decayed_weights(weight_decay, _all_or(weight_decay_mask)),
        trust if trust_ratio_mask is True else masked(trust, trust_ratio_mask),
        scale_by_learning_rate(learning_rate),
        None if momentum is None else trace(momentum, nesterov),
        pack=pack,
    )


def _all_or(mask: Any) -> Any:
    """optax's `True` (every leaf) as gradchain's `None`, so that no mask is resolved at each step."""
    return None if mask is True else mask


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-6,
    eps_root: Scalar = 0.0,
    weight_decay: ScalarOrSchedule | None = 0.0,
    mask: Any = None,
    *,
    pack: bool | None = None,
) -> GradientTransformation:
    """LAMB: AdamW's direction, rescaled per layer to the layer's weight norm.

    Per leaf, with $\\hat m_t, \\hat v_t$ Adam's debiased moments and $\\|\\cdot\\|$ the L2 norm of the
    whole leaf:

    $$ r_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{\\text{root}}} + \\epsilon} + \\lambda p_{t-1},
       \\qquad p_t = p_{t-1} - \\eta_t \\frac{\\|p_{t-1}\\|}{\\|r_t\\|}\\, r_t
       \\;\\;(\\text{ratio } 1 \\text{ if a norm is } 0) $$

    Recipe, as `optax.lamb`: `scale_by_adam(b1, b2, eps, eps_root)` →
    `add_decayed_weights(weight_decay, mask)` → `scale_by_trust_ratio()` →
    `scale_by_learning_rate(learning_rate)`. This is Algorithm 2 of the paper with $\\phi$ the
    identity (no clipping of the weight norm). Two hyperparameters are called `eps` (Adam's and the
    trust ratio's, 0): `hyperparams` shows them as `scale_by_adam/eps` and `scale_by_trust_ratio/eps`.
    PyTorch has no LAMB.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule.
        b1: $\\beta_1 \\in [0, 1)$.
        b2: $\\beta_2 \\in [0, 1)$.
        eps: $\\epsilon \\ge 0$ outside the root.
        eps_root: $\\epsilon_{\\text{root}} \\ge 0$ inside the root.
        weight_decay: $\\lambda \\ge 0$ (decoupled: added after Adam's scaling), a schedule, or None.
        mask: which leaves to decay (tree of bools or function of the params).
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
        params = {"w": jnp.ones(4)}
        tx = gc.lamb(learning_rate=0.02, b1=0.5)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = apply_updates(params, updates)
        assert jnp.allclose(params["w"], 2.0, atol=0.05)
        ```

    References:
        You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer & Hsieh, *Large Batch
        Optimization for Deep Learning: Training BERT in 76 minutes*, ICLR 2020.
    """
    if weight_decay is not None:
        check("lamb: weight_decay", weight_decay, Check.NONNEGATIVE)
    return recipe(
        scale_by_adam(b1, b2, eps, eps_root),
        None if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
        pack=pack,
    )


def fromage(
    learning_rate: ScalarOrSchedule, min_norm: Scalar = 1e-6, *, pack: bool | None = None
) -> GradientTransformation:
    """Fromage: a step of relative size $\\eta$ per layer, then a shrink that keeps the norms in check.

    Per leaf, with $\\|\\cdot\\|$ the L2 norm of the whole leaf, clipped below at $n_{\\min}$:

    $$ p_t = \\frac{1}{\\sqrt{1+\\eta_t^2}} \\Big(p_{t-1} - \\eta_t \\frac{\\|p_{t-1}\\|}{\\|g_t\\|}\\, g_t\\Big) $$

    Recipe: `scale_by_trust_ratio(min_norm)` → `scale_by_fromage_step(learning_rate)`. The same
    updates as `optax.fromage` (which chains `scale_by_learning_rate(lr * m)` and
    `add_decayed_weights(m - 1)`, $m = 1/\\sqrt{1+\\eta^2}$); here one hyperparameter
    `learning_rate` drives both parts, so it can be changed with `set_hyperparams`. PyTorch has no
    Fromage.

    Args:
        learning_rate: $\\eta \\ge 0$ (the paper's default is 0.01), or a schedule.
        min_norm: $n_{\\min} \\ge 0$, the floor of both norms.
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
        params = {"w": jnp.full(4, 1.0)}
        tx = gc.fromage(learning_rate=0.02)
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = apply_updates(params, updates)
        assert loss(params) < 0.01 * loss({"w": jnp.full(4, 1.0)})
        ```

    References:
        Bernstein, Vahdat, Yue & Liu, *On the distance between two neural networks and the stability
        of learning*, NeurIPS 2020.
    """
    return recipe(scale_by_trust_ratio(min_norm), scale_by_fromage_step(learning_rate), pack=pack)
