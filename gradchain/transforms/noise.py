"""Gradient noise: `add_noise` adds annealed Gaussian noise to the updates.

One random key is split over the leaves, as optax does, so the same key gives optax's noise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation
from gradchain._checks import Check, check_leaf_dtypes
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._numerics import compute_dtype, real_dtype, safe_increment

# ---------------------------------------------------------------------------------------------------
# Gradient noise


class AddNoiseState(NamedTuple):
    """State of `add_noise`: step count, the raw PRNG key data `rng_key` (uint32), `eta`, `gamma`."""

    count: jax.Array
    rng_key: jax.Array
    hyperparams: Hyperparams


def _key_data(key: Any) -> jax.Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if isinstance(key, (int, jnp.integer)) and not isinstance(key, bool):
        return jax.random.key_data(jax.random.key(key))
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32:
        return key
    raise TypeError(f"add_noise: key must be an int seed or a jax.random key, got {key!r}")


def add_noise(eta: float | jax.Array = 0.01, gamma: float | jax.Array = 0.55, key: Any = 0) -> GradientTransformation:
    """Add annealed Gaussian noise to the updates.

    $$ u_t = g_t + \\sigma_t\\, \\xi_t, \\qquad \\sigma_t^2 = \\frac{\\eta}{t^{\\gamma}}, \\quad
       t = 1, 2, \\dots, \\qquad \\xi_t \\sim \\mathcal N(0, I) $$

    (the paper's $\\eta / (1 + t)^\\gamma$ with $t$ counted from 0). The random stream is optax's:
    each step splits the key into (next key, sample key), splits the sample key into one key per
    leaf (in `jax.tree.leaves` order) and draws each leaf's noise from it, so `add_noise(eta, gamma,
    key)` adds exactly `optax.add_noise(eta, gamma, key)`'s noise to float32 leaves. Noise for
    float16/bfloat16 leaves is drawn in float32 (optax draws it in the leaf dtype); complex leaves get
    complex noise with $E|\\xi|^2 = 1$. The key is kept in the state as raw `uint32` key data, which
    checkpoints like any array. Not packed: the noise is drawn per leaf.

    Args:
        eta: $\\eta \\ge 0$, the variance at the first step (hyperparameter `eta`).
        gamma: $\\gamma \\ge 0$, the annealing exponent (hyperparameter `gamma`).
        key: an int seed or a `jax.random.key` (typed or raw uint32 data).

    Returns:
        A `GradientTransformation` with `AddNoiseState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.add_noise(eta=0.0, gamma=0.55, key=0)   # no variance: the updates pass through
        u, state = tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.zeros(3)}))
        assert (u["w"] == 1.0).all() and state.count == 1
        ```

    References:
        Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, *Adding Gradient Noise
        Improves Learning for Very Deep Networks*, arXiv:1511.06807, 2015.
    """
    owner = "add_noise"
    spec = HyperparamSpec(owner, eta=(eta, Check.NONNEGATIVE), gamma=(gamma, Check.NONNEGATIVE))
    key_data = _key_data(key)

    def init(params):
        state = AddNoiseState(jnp.zeros((), jnp.int32), jnp.array(key_data), spec.init())
        return tree_util.place_like(state, params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes(owner, "update", updates, complex_ok=True)
        hp = spec.at(state.hyperparams, state.count)
        count = safe_increment(state.count)
        std = jnp.sqrt(hp.eta / count.astype(hp.eta.dtype) ** hp.gamma)
        next_key, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng_key))
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sample_key, len(leaves))

        def noisy(g, k):
            cdtype = compute_dtype(g.dtype)
            xi = jax.random.normal(k, g.shape, cdtype)
            return (g.astype(cdtype) + std.astype(real_dtype(cdtype)) * xi).astype(g.dtype)

        out = [noisy(g, keys[i]) for i, g in enumerate(leaves)]
        return treedef.unflatten(out), AddNoiseState(count, jax.random.key_data(next_key), hp)

    return GradientTransformation(init, update)
