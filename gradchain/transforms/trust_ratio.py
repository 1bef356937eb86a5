"""Trust ratios: scale a whole leaf by the ratio of two norms (LARS, LAMB), and Fromage's step.

A leaf is one "layer": a weight matrix, a bias vector, a convolution kernel. The trust ratio is
written as plain `init`/`update` over the leaves, with its numeric hyperparameters in the state, so
`hyperparams(state)` and `set_hyperparams` work on it. Norms are computed in at least float32, and
the updates cast back to the gradients' dtype.

`scale_by_fromage_step` is element-wise (Fromage's learning-rate step, which also rescales the
params) and goes through `elementwise`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, ScalarOrSchedule
from gradchain._checks import Check, check_leaf_dtypes, check_params_given
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import elementwise
from gradchain._numerics import leaf_norm, real_dtype, widen

_TRUST = "scale_by_trust_ratio"
_FROMAGE = "scale_by_fromage_step"


# ---------------------------------------------------------------------------------------------
# trust ratio


class ScaleByTrustRatioState(NamedTuple):
    """State of `scale_by_trust_ratio`: hyperparameters `min_norm`, `trust_coefficient`, `eps`."""

    hyperparams: Hyperparams


def scale_by_trust_ratio(
    min_norm: float | jax.Array = 0.0,
    trust_coefficient: float | jax.Array = 1.0,
    eps: float | jax.Array = 0.0,
) -> GradientTransformation:
    """Scale each leaf's update by its trust ratio: the parameter's norm over the update's norm.

    With $\\|\\cdot\\|$ the L2 (Frobenius) norm of a whole leaf $\\ell$, clipped below at $n_{\\min}$:

    $$ r_\\ell = \\frac{c\\, \\max(\\|p_\\ell\\|, n_{\\min})}{\\max(\\|g_\\ell\\|, n_{\\min}) + \\epsilon}, \\qquad
       u_\\ell = r_\\ell\\, g_\\ell $$

    and $r_\\ell = 1$ where either clipped norm is 0 (a parameter initialised at zero, or a zero
    update, is left as it is rather than frozen or divided by zero). Every leaf then moves by
    $c\\,\\|p_\\ell\\|$ per unit of learning rate, whatever the scale of its gradient: the layer-wise
    adaptation of LARS, LAMB and Fromage. Same formula, defaults and zero-norm rule as optax's
    `scale_by_trust_ratio`; the norms are computed in at least float32 (optax: in the param's
    dtype). Complex leaves use $|g|^2$. `update` needs the params.

    Args:
        min_norm: $n_{\\min} \\ge 0$, the floor of both norms (hyperparameter `min_norm`).
        trust_coefficient: $c \\ge 0$ (hyperparameter `trust_coefficient`; LARS's $\\eta$, 0.001 there).
        eps: $\\epsilon \\ge 0$ added to the update's norm (hyperparameter `eps`).

    Returns:
        A `GradientTransformation` with `ScaleByTrustRatioState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_trust_ratio()
        params = {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}
        u, _ = tx.update({"w": jnp.array([0.0, 0.1]), "b": jnp.ones(2)}, tx.init(params), params)
        assert jnp.allclose(u["w"], jnp.array([0.0, 5.0]))  # |u| = |p| = 5
        assert jnp.allclose(u["b"], 1.0)  # zero params: ratio 1
        ```

    References:
        You, Gitman & Ginsburg, *Large Batch Training of Convolutional Networks*, 2017.
    """
    spec = HyperparamSpec(
        _TRUST,
        allow_schedules=False,
        min_norm=(min_norm, Check.NONNEGATIVE),
        trust_coefficient=(trust_coefficient, Check.NONNEGATIVE),
        eps=(eps, Check.NONNEGATIVE),
    )

    def init(params):
        return tree_util.place_like(ScaleByTrustRatioState(spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        check_params_given(_TRUST, params, updates)
        check_leaf_dtypes(_TRUST, "update", updates, complex_ok=True)
        hp = state.hyperparams

        def scale_leaf(g, p):
            x = widen(g)
            rdtype = real_dtype(x.dtype)
            min_norm = hp.min_norm.astype(rdtype)
            p_norm = jnp.maximum(leaf_norm(widen(p)).astype(rdtype), min_norm)
            g_norm = jnp.maximum(leaf_norm(x), min_norm)
            zero = (p_norm == 0) | (g_norm == 0)
            # The division runs only where both norms are positive, so a zero norm never makes a NaN.
            ratio = hp.trust_coefficient.astype(rdtype) * p_norm / (jnp.where(zero, 1, g_norm) + hp.eps.astype(rdtype))
            return (x * jnp.where(zero, 1, ratio)).astype(g.dtype)

        return jax.tree.map(scale_leaf, updates, params), state

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# Fromage's step


class ScaleByFromageStepState(NamedTuple):
    """State of `scale_by_fromage_step`: step count and `learning_rate`."""

    count: jax.Array
    hyperparams: Hyperparams


def scale_by_fromage_step(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Fromage's step: move by $-\\eta\\, g$, then shrink the params by $1/\\sqrt{1+\\eta^2}$.

    The new params are $p' = (p - \\eta g)/\\sqrt{1 + \\eta^2}$, so the update is

    $$ u = \\frac{p - \\eta\\, g}{\\sqrt{1+\\eta^2}} - p
         = -\\frac{\\eta}{\\sqrt{1+\\eta^2}}\\, g - \\frac{\\eta^2}{\\sqrt{1+\\eta^2}\\,(1+\\sqrt{1+\\eta^2})}\\, p $$

    (the second form avoids the cancellation in $1/\\sqrt{1+\\eta^2} - 1$ for small $\\eta$). After
    `scale_by_trust_ratio`, $g$ has the norm of $p$ per leaf, and the shrink undoes the growth of
    the norm that a step orthogonal to $p$ would cause (Bernstein et al. 2020, section 4). Place it
    last in a chain, in place of `scale_by_learning_rate`. optax builds the same update from
    `scale_by_learning_rate(lr * m)` and `add_decayed_weights(m - 1)` with $m = 1/\\sqrt{1+\\eta^2}$;
    one ingredient keeps one hyperparameter, so `set_hyperparams(state, learning_rate=...)` changes
    both parts together. `update` needs the params.

    Args:
        learning_rate: $\\eta \\ge 0$, or a schedule (hyperparameter `learning_rate`).

    Returns:
        A `GradientTransformation` with `ScaleByFromageStepState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_fromage_step(0.75)  # sqrt(1 + 0.75^2) = 1.25
        params = {"w": jnp.array([2.0, 1.0])}
        u, _ = tx.update({"w": jnp.array([0.0, 4.0])}, tx.init(params), params)
        assert jnp.allclose(params["w"] + u["w"], jnp.array([2.0, 1.0 - 3.0]) / 1.25)
        ```

    References:
        Bernstein, Vahdat, Yue & Liu, *On the distance between two neural networks and the stability
        of learning*, NeurIPS 2020.
    """
    spec = HyperparamSpec(_FROMAGE, learning_rate=(learning_rate, Check.NONNEGATIVE))

    def rule(g, *, learning_rate, p):
        eta = learning_rate
        root = jnp.sqrt(1 + eta * eta)
        return -(eta / root) * g - (eta * eta / (root * (1 + root))) * p, ()

    return elementwise(rule, ScaleByFromageStepState, spec, uses_params=True)
