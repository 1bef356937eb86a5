"""Small numerical helpers shared by the rules and wrappers: dtypes, step counters, bias corrections."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.tree import abs_sq

INT32_MAX = jnp.iinfo(jnp.int32).max


def float_dtype() -> jnp.dtype:
    """The default float dtype: float32, or float64 when x64 is enabled."""
    return jnp.zeros((), dtype=float).dtype


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype a rule runs in for a leaf of `dtype`: at least float32, complex kept complex."""
    return jnp.promote_types(dtype, jnp.float32)


def widen(x: Any) -> jax.Array:
    """`x` in its compute dtype: at least float32 (complex stays complex)."""
    x = jnp.asarray(x)
    return x.astype(compute_dtype(x.dtype))


def leaf_norm(x: jax.Array, axis: Any = None, keepdims: bool = False) -> jax.Array:
    """The L2 (Frobenius) norm of a leaf already in its compute dtype; real for complex leaves."""
    return jnp.sqrt(jnp.sum(abs_sq(x), axis=axis, keepdims=keepdims))


def real_dtype(dtype: Any) -> jnp.dtype:
    """The real dtype of `dtype` (float32 for complex64, float64 for complex128, itself if real)."""
    return jnp.finfo(dtype).dtype


def safe_increment(count: jax.Array) -> jax.Array:
    """`count + 1`, stopping at the int32 maximum so that a long run never wraps to a negative step.

    The name is optax's (`optax.safe_increment`); every step counter in gradchain goes through it.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        assert gc.safe_increment(jnp.int32(2**31 - 1)) == 2**31 - 1
        ```
    """
    return jnp.where(count < INT32_MAX, count + 1, INT32_MAX).astype(count.dtype)


def one_minus_pow(decay: jax.Array, t: jax.Array) -> jax.Array:
    """$1 - \\beta^t$, the bias-correction factor, accurate to a few ulp in float32.

    Computed as $-\\operatorname{expm1}(t \\log \\beta)$: the direct form subtracts two numbers near 1
    and loses most of its digits for $\\beta$ close to 1 and small $t$ (with $\\beta_2 = 0.999$ at
    $t = 2$, float32 `1 - b2**2` is off by ~1.5e-5 relative; PyTorch avoids this by working in
    double precision on the host). $\\beta = 0$ gives $\\log 0 = -\\infty$ and the exact answer 1.
    """
    return -jnp.expm1(t * jnp.log(decay))
