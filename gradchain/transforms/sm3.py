"""SM3: one accumulator per row, per column, ... of a leaf instead of one per element.

Not element-wise: written as plain `init`/`update` over the leaves, with its numeric
hyperparameters in the state, so `hyperparams(state)` and `set_hyperparams` work on it.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, Updates
from gradchain._checks import Check, check_leaf_dtypes
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot
from gradchain._numerics import real_dtype, widen

_SM3 = "scale_by_sm3"


# ---------------------------------------------------------------------------------------------
# SM3


class ScaleBySM3State(NamedTuple):
    """State of `scale_by_sm3`: the cover accumulators `mu`, the momentum `nu`, hyperparameters.

    Field names are optax's. For a leaf of shape $(d_1, \\dots, d_k)$ with $k \\ge 2$, its entry in
    `mu` is a tuple of $k$ vectors of shapes $(d_1,), \\dots, (d_k,)$: one accumulator per slice
    along each axis (per row and per column of a matrix). A vector or a scalar keeps a full
    accumulator: a 1-tuple holding an array of its own shape. `nu` has the params' shapes.
    """

    mu: Updates
    nu: Updates
    hyperparams: Hyperparams


def _kept_axis_sharding(p: Any, axis: int) -> jax.sharding.Sharding | None:
    """The layout of `p` restricted to `axis`, where the user chose one (else None: uncommitted)."""
    if isinstance(p, jax.Array) and not p.committed:
        return None
    sharding = getattr(p, "sharding", None)
    if isinstance(sharding, NamedSharding):
        spec = list(sharding.spec) + [None] * (len(p.shape) - len(sharding.spec))
        # P(None) written as P(): jit writes its outputs' specs without trailing Nones.
        return NamedSharding(sharding.mesh, PartitionSpec(*([spec[axis]] if spec[axis] is not None else [])))
    if isinstance(sharding, SingleDeviceSharding):
        return sharding
    return None


def _zeros_along_axis(p: Any, axis: int, dtype: Any) -> jax.Array:
    """Zeros of shape `(p.shape[axis],)`, sharded like `p` along that axis."""
    others = tuple(a for a in range(len(p.shape)) if a != axis)
    if isinstance(p, jax.core.Tracer):
        return jnp.zeros_like(jax.eval_shape(functools.partial(jnp.sum, axis=others), p), dtype=dtype)
    target = jax.ShapeDtypeStruct((p.shape[axis],), dtype, sharding=_kept_axis_sharding(p, axis))
    return tree_util.zeros_like(target)


def _sm3_init_leaf(p: Any, dtype: Any) -> tuple[jax.Array, ...]:
    if len(p.shape) < 2:
        return (tree_util.zeros_like(p, dtype),)
    return tuple(_zeros_along_axis(p, i, dtype) for i in range(len(p.shape)))


def scale_by_sm3(
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 1.0,
    eps: float | jax.Array = 1e-8,
) -> GradientTransformation:
    """Scale by SM3's memory-light second moment (one accumulator per row, column, ...), with momentum.

    For a leaf of shape $(d_1, \\dots, d_k)$, $k \\ge 2$, SM3 keeps $\\mu^{(a)} \\in \\mathbb R^{d_a}$ for
    every axis $a$ (a cover of the entries by slices). At step $t$, for every entry $i = (i_1, \\dots, i_k)$:

    $$ \\nu'_t(i) = c\\, g_t(i)^2 + \\beta_2 \\min_a \\mu^{(a)}_{t-1}(i_a), \\qquad
       \\mu^{(a)}_t(j) = \\max_{i:\\, i_a = j} \\nu'_t(i) $$
    $$ \\tilde g_t = \\frac{g_t}{\\sqrt{\\nu'_t + \\epsilon}} \\;(0 \\text{ where } \\nu'_t = 0), \\qquad
       m_t = \\beta_1 m_{t-1} + (1-\\beta_1)\\, \\tilde g_t, \\qquad u_t = m_t $$

    with $c = 1 - \\beta_2$, or $c = 1$ when $\\beta_2 = 1$ (the default: SM3-II of the paper, sums
    of squared gradients as in AdaGrad). Vectors and scalars keep a full accumulator
    ($\\nu'_t = c\\, g_t^2 + \\beta_2 \\nu'_{t-1}$: AdaGrad). Memory: $d_1 + \\dots + d_k$ numbers
    instead of $d_1 \\cdots d_k$ for the second moment, plus the momentum (params-sized).

    As optax's `scale_by_sm3` (same defaults, formulas and state fields; optax's $\\epsilon$ and
    momentum are not in the paper, which has neither), with three differences: scalar leaves work
    (optax raises IndexError on them); complex gradients are supported, with $|g|^2$ and real
    accumulators (optax rejects them); the arithmetic runs in at least float32 and the accumulators
    are stored in float32 for float16 params (the policy of Adam's $\\nu$).

    Args:
        b1: momentum $\\beta_1 \\in [0, 1)$ (hyperparameter `b1`; not debiased).
        b2: decay $\\beta_2 \\in [0, 1]$ of the accumulators (hyperparameter `b2`).
        eps: $\\epsilon \\ge 0$ inside the root (hyperparameter `eps`).

    Returns:
        A `GradientTransformation` with `ScaleBySM3State`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_sm3(b1=0.0, eps=0.0)
        params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
        state = tx.init(params)
        assert [m.shape for m in state.mu["w"]] == [(2,), (3,)]  # 5 numbers for 6 entries
        g = {"w": jnp.array([[1.0, 2.0, 2.0], [-1.0, 0.0, 4.0]]), "b": jnp.array([3.0, 0.0, -1.0])}
        u, state = tx.update(g, state)
        assert jnp.allclose(u["b"], jnp.array([1.0, 0.0, -1.0]))  # first step: g / |g|
        assert jnp.allclose(state.mu["w"][0], jnp.array([4.0, 16.0]))  # row maxima of g^2
        assert jnp.allclose(state.mu["w"][1], jnp.array([1.0, 4.0, 16.0]))  # column maxima
        ```

    References:
        Anil, Gupta, Koren & Singer, *Memory-Efficient Adaptive Optimization*, NeurIPS 2019.
    """
    spec = HyperparamSpec(
        _SM3,
        allow_schedules=False,
        b1=(b1, Check.UNIT_INTERVAL),
        b2=(b2, Check.CLOSED_UNIT_INTERVAL),
        eps=(eps, Check.NONNEGATIVE),
    )
    acc_slot, mom_slot = Slot("mu", real=True), Slot("nu")

    def init(params):
        check_leaf_dtypes(_SM3, "param", params, complex_ok=True)
        treedef = jax.tree.structure(params)
        leaves = treedef.flatten_up_to(params)
        mu = treedef.unflatten([_sm3_init_leaf(p, acc_slot.storage_dtype(p.dtype)) for p in leaves])
        nu = treedef.unflatten([tree_util.zeros_like(p, mom_slot.storage_dtype(p.dtype)) for p in leaves])
        return tree_util.place_like(ScaleBySM3State(mu, nu, spec.init()), params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes(_SM3, "update", updates, complex_ok=True)
        tree_util.check_same_structure(state.nu, updates, expected_name="state", actual_name="updates", where=_SM3)
        hp = state.hyperparams
        treedef = jax.tree.structure(updates)
        out = [
            _sm3_leaf(g, mu, nu, hp)
            for g, mu, nu in zip(
                treedef.flatten_up_to(updates),
                treedef.flatten_up_to(state.mu),
                treedef.flatten_up_to(state.nu),
                strict=True,
            )
        ]
        u, mu, nu = (treedef.unflatten([o[k] for o in out]) for k in range(3))
        return u, ScaleBySM3State(mu, nu, hp)

    return GradientTransformation(init, update)


def _sm3_leaf(g, mu, nu, hp):
    x = widen(g)
    rdtype = real_dtype(x.dtype)
    b1, b2, eps = (hp[k].astype(rdtype) for k in ("b1", "b2", "eps"))
    ndim = g.ndim
    if ndim < 2:
        previous = mu[0].astype(rdtype)
    else:
        # The entry (i_1, ..., i_k) reads min_a mu^(a)(i_a): each vector broadcast along its own axis.
        expanded = [
            jnp.reshape(m.astype(rdtype), [1] * a + [g.shape[a]] + [1] * (ndim - a - 1)) for a, m in enumerate(mu)
        ]
        previous = functools.reduce(jnp.minimum, expanded)
    # beta_2 = 1 sums squared gradients (AdaGrad); below 1 the accumulators are moving averages.
    coefficient = jnp.where(b2 == 1, jnp.ones((), rdtype), 1 - b2)
    acc = coefficient * tree_util.abs_sq(x) + b2 * previous
    positive = acc > 0
    scaled = x * jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, acc, 1) + eps), 0)
    momentum = b1 * nu.astype(x.dtype) + (1 - b1) * scaled
    if ndim < 2:
        new_mu = (acc.astype(mu[0].dtype),)
    elif g.size == 0:
        new_mu = mu
    else:
        new_mu = tuple(
            jnp.max(acc, axis=tuple(b for b in range(ndim) if b != a)).astype(m.dtype) for a, m in enumerate(mu)
        )
    new_nu = momentum.astype(nu.dtype)
    return momentum.astype(g.dtype), new_mu, new_nu
