"""Polyak step sizes: one step size from the objective's value and the global gradient norm."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _packing as packing
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation
from gradchain._checks import Check, check_leaf_dtypes
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._numerics import compute_dtype, real_dtype

# ---------------------------------------------------------------------------------------------------
# Polyak step size


class ScaleByPolyakState(NamedTuple):
    """State of `scale_by_polyak`: the step size of the last step (`step_size`), and the hyperparameters."""

    step_size: jax.Array
    hyperparams: Hyperparams


_POLYAK_VARIANTS = ("sps", "sps+")


def scale_by_polyak(
    f_min: float | jax.Array = 0.0,
    max_learning_rate: float | jax.Array = 1.0,
    eps: float | jax.Array = 0.0,
    variant: str = "sps",
) -> GradientTransformation:
    """Scale the updates by the (stochastic) Polyak step size, from the loss passed as `value=`.

    $$ \\gamma_t = \\min\\Big(\\frac{f(x_t) - f^\\star}{\\|g_t\\|^2 + \\epsilon},\\ \\gamma_{\\max}\\Big),
       \\qquad u_t = \\gamma_t\\, g_t $$

    with $\\|g\\|$ the global norm over all leaves; `variant="sps+"` uses $(f(x_t) - f^\\star)_+$
    (Garrigos et al. 2023). Where $\\|g\\|^2 + \\epsilon = 0$ the step is 0 (the update is 0 anyway;
    this avoids $0/0$). optax instead sets the step to 0 whenever $\\|g\\|^2 + \\epsilon \\le 2.2\\cdot
    10^{-16}$ (float64's machine epsilon), whatever the scale of the problem. The update is along
    $+g$ (no sign flip): follow with `scale_by_learning_rate`. The step size used is kept in the
    state as `step_size` for logging.

    `update(updates, state, params=None, *, value)` needs the loss $f(x_t)$ as the keyword
    argument `value` (inside a `chain`, pass `value=` to the chain's update).

    Args:
        f_min: $f^\\star$, a lower bound of the loss (hyperparameter `f_min`).
        max_learning_rate: $\\gamma_{\\max} \\ge 0$ (hyperparameter `max_learning_rate`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        variant: `"sps"` or `"sps+"` (static).

    Returns:
        A `GradientTransformation` with `ScaleByPolyakState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_polyak(max_learning_rate=10.0)
        g = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
        u, state = tx.update(g, tx.init(g), value=50.0)  # 50 / 25 = 2
        assert jnp.allclose(u["a"], 6.0) and jnp.allclose(state.step_size, 2.0)
        ```

    References:
        Loizou, Vaswani, Laradji & Lacoste-Julien, *Stochastic Polyak Step-size for SGD: An Adaptive
        Learning Rate for Fast Convergence*, AISTATS 2021; Garrigos, Gower & Schaipp, *Function Value
        Learning: Adaptive Learning Rates Based on the Polyak Stepsize and Function Splitting in ERM*, 2023.
    """
    owner = "scale_by_polyak"
    if variant not in _POLYAK_VARIANTS:
        raise ValueError(f"{owner}: variant must be one of {_POLYAK_VARIANTS}, got {variant!r}")
    spec = HyperparamSpec(
        owner,
        allow_schedules=False,
        f_min=(f_min, Check.FINITE),
        max_learning_rate=(max_learning_rate, Check.NONNEGATIVE),
        eps=(eps, Check.NONNEGATIVE),
    )

    def init(params):
        return tree_util.place_like(ScaleByPolyakState(jnp.zeros((), jnp.float32), spec.init()), params)

    def update(updates, state, params=None, *, value: Any = None, **extra_args):
        del params, extra_args
        if value is None:
            raise TypeError(
                f"{owner} needs the loss: call update(updates, state, params, value=loss) "
                "(the keyword argument `value` is missing)"
            )
        check_leaf_dtypes(owner, "update", updates, complex_ok=True)
        hp = state.hyperparams
        # The squared norm summed directly (as optax does), not squared back from the norm.
        leaves = jax.tree.leaves(updates)
        squares = [jnp.sum(tree_util.abs_sq(g.astype(compute_dtype(g.dtype)))) for g in leaves]
        norm_sq = sum(squares[1:], squares[0]) if squares else jnp.zeros((), jnp.float32)
        dtype = norm_sq.dtype
        gap = jnp.asarray(value).astype(dtype) - hp.f_min.astype(dtype)
        if variant == "sps+":
            gap = jnp.maximum(gap, 0)
        denom = norm_sq + hp.eps.astype(dtype)
        safe = jnp.where(denom > 0, denom, 1)
        step = jnp.where(denom > 0, jnp.minimum(gap / safe, hp.max_learning_rate.astype(dtype)), 0)
        scaled = jax.tree.map(lambda g: (g * step.astype(real_dtype(compute_dtype(g.dtype)))).astype(g.dtype), updates)
        return scaled, ScaleByPolyakState(step.astype(jnp.float32), hp)

    # The global norm of packed buffers is that of the leaves (summed in another order).
    return GradientTransformation(init, packing.mark_packable(update, packing.PackInfo(owner)))
