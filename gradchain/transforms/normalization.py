"""Normalizing the updates per leaf or per output unit: gradient centralization, block norms.

Neither is element-wise: gradient centralization subtracts a mean per output unit, and
`scale_by_param_block_norm` scales a whole leaf by its parameter's norm. Norms are computed in at
least float32, and the updates cast back to the gradients' dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import EmptyState, GradientTransformation
from gradchain._checks import Check, check_leaf_dtypes, check_params_given
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._numerics import leaf_norm, real_dtype, widen

_CENTRALIZE = "centralize"
_BLOCK_NORM = "scale_by_param_block_norm"


# ---------------------------------------------------------------------------------------------
# gradient centralization


def centralize() -> GradientTransformation:
    """Gradient centralization: subtract from every output unit's gradient its mean.

    For a leaf with 2 or more dimensions, the mean over all axes but the first is subtracted:

    $$ u_{i,\\dots} = g_{i,\\dots} - \\frac{1}{n}\\textstyle\\sum_{j} g_{i,j} $$

    where $j$ runs over the $n$ entries of the slice $g_{i,\\dots}$; vectors and scalars (biases,
    norms' scales) pass unchanged. As optax's `centralize`: the first axis is taken as the output
    axis, which is PyTorch's layout (`Linear`: `(out, in)`, `Conv2d`: `(out, in, h, w)`) and the
    paper's. A flax `Dense` kernel is `(in, out)`: there the mean is taken over the outputs, not
    over each unit's inputs as in the paper (transpose, or use `partition` to leave such leaves
    out). The mean is computed in at least float32. Stateless.

    Returns:
        A `GradientTransformation` with `EmptyState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.centralize()
        g = {"w": jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "b": jnp.array([1.0, 2.0])}
        u, _ = tx.update(g, tx.init(g))
        assert jnp.allclose(u["w"], jnp.array([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]))
        assert jnp.allclose(u["b"], g["b"])  # vectors are left alone
        ```

    References:
        Yong, Huang, Hua & Zhang, *Gradient Centralization: A New Optimization Technique for Deep
        Neural Networks*, ECCV 2020.
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes(_CENTRALIZE, "update", updates, complex_ok=True)

        def center(g):
            if g.ndim < 2 or g.size == 0:
                return g
            x = widen(g)
            return (x - jnp.mean(x, axis=tuple(range(1, g.ndim)), keepdims=True)).astype(g.dtype)

        return jax.tree.map(center, updates), state

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------
# scaling by the params' block norm


class ScaleByParamBlockNormState(NamedTuple):
    """State of `scale_by_param_block_norm`: hyperparameter `min_scale`."""

    hyperparams: Hyperparams


def scale_by_param_block_norm(min_scale: float | jax.Array = 1e-3) -> GradientTransformation:
    """Scale each leaf's update by the L2 norm of its parameter, at least `min_scale`.

    $$ u_\\ell = g_\\ell \\cdot \\max\\big(\\|p_\\ell\\|, s_{\\min}\\big), \\qquad
       \\|p_\\ell\\| = \\sqrt{\\textstyle\\sum_i |p_{\\ell,i}|^2} $$

    The norm counterpart of `scale_by_param_block_rms` (the two differ by $\\sqrt{n_\\ell}$, the
    leaf's size). As optax's `scale_by_param_block_norm`; the norm is computed in at least float32;
    `update` needs the params.

    Args:
        min_scale: $s_{\\min} \\ge 0$ (hyperparameter `min_scale`).

    Returns:
        A `GradientTransformation` with `ScaleByParamBlockNormState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_param_block_norm(min_scale=1e-3)
        params = {"w": jnp.array([3.0, -4.0]), "b": jnp.zeros(2)}
        u, _ = tx.update({"w": jnp.ones(2), "b": jnp.ones(2)}, tx.init(params), params)
        assert jnp.allclose(u["w"], 5.0) and jnp.allclose(u["b"], 1e-3)
        ```
    """
    spec = HyperparamSpec(_BLOCK_NORM, allow_schedules=False, min_scale=(min_scale, Check.NONNEGATIVE))

    def init(params):
        return tree_util.place_like(ScaleByParamBlockNormState(spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        check_params_given(_BLOCK_NORM, params, updates)
        check_leaf_dtypes(_BLOCK_NORM, "update", updates, complex_ok=True)
        min_scale = state.hyperparams.min_scale

        def scale_leaf(g, p):
            x = widen(g)
            norm = leaf_norm(widen(p)).astype(real_dtype(x.dtype))
            return (x * jnp.maximum(norm, min_scale.astype(norm.dtype))).astype(g.dtype)

        return jax.tree.map(scale_leaf, updates, params), state

    return GradientTransformation(init, update)
