"""Small numerical helpers shared by the per-array rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def one_minus_pow(decay: jax.Array, t: jax.Array) -> jax.Array:
    """$1 - \\beta^t$, the bias-correction factor, accurate to a few ulp in float32.

    Computed as $-\\operatorname{expm1}(t \\log \\beta)$: the direct form subtracts two numbers near 1
    and loses most of its digits for $\\beta$ close to 1 and small $t$ (with $\\beta_2 = 0.999$ at
    $t = 2$, float32 `1 - b2**2` is off by ~1.5e-5 relative; PyTorch avoids this by working in
    double precision on the host). $\\beta = 0$ gives $\\log 0 = -\\infty$ and the exact answer 1.
    """
    return -jnp.expm1(t * jnp.log(decay))
