"""check_finite: NaN/Inf updates stop the run with the leaf path in the message."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

PARAMS = {"layer": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "scale": jnp.ones(())}


def _grads(bad_leaf: str | None, value: float):
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    if bad_leaf == "w":
        grads["layer"]["w"] = grads["layer"]["w"].at[1, 2].set(value)
    elif bad_leaf == "scale":
        grads["scale"] = jnp.asarray(value)
    return grads


@pytest.mark.parametrize(("leaf", "path"), [("w", "layer/w"), ("scale", "scale")])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_eager_raises_naming_the_leaf(leaf, path, value):
    tx = gc.chain(gc.check_finite(), gc.adam(1e-3))
    state = tx.init(PARAMS)
    with pytest.raises(FloatingPointError, match=path.replace("[", r"\[").replace("]", r"\]")):
        tx.update(_grads(leaf, value), state, PARAMS)


def test_jit_raises_naming_the_leaf():
    tx = gc.chain(gc.check_finite(), gc.adam(1e-3))
    state = tx.init(PARAMS)
    step = jax.jit(tx.update)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"FloatingPointError.*layer/w"):
        updates, _ = step(_grads("w", np.nan), state, PARAMS)
        jax.block_until_ready(updates)


def test_finite_updates_pass_through_unchanged():
    tx = gc.check_finite()
    grads = _grads(None, 0.0)
    for update in (tx.update, jax.jit(tx.update)):
        out, state = update(grads, tx.init(PARAMS))
        assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), out, grads))
        assert state == gc.EmptyState()
