"""Tests for gradchain/wrappers/sanitize.py: `zero_nans` and `keep_params_nonnegative`.

Both run for 100 steps over a tree of leaves of different shapes and dtypes (with a `None` leaf),
against a numpy transcription and against optax's transformations of the same name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from references.sanitize import ref_nonnegative

import gradchain as gc
from gradchain import ZeroNansState, keep_params_nonnegative, zero_nans

N = 100
LEAVES = {
    "a": ((3,), np.float32),
    "b": ((2, 5), np.float32),
    "h": ((4,), np.float16),
    "bf": ((3, 2), ml_dtypes.bfloat16),
    "s": ((), np.float32),
}


def grad_seq(seed: int, *, poison: bool) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(N):
        tree = {}
        for k, (shape, dtype) in LEAVES.items():
            x = rng.standard_normal(shape)
            if poison and t % 3 != 0:  # some steps clean; others with NaN, +-Inf at random places
                flat = x.reshape(-1)
                for i in range(flat.size):
                    r = rng.random()
                    flat[i] = np.nan if r < 0.15 else np.inf if r < 0.2 else -np.inf if r < 0.25 else flat[i]
                x = flat.reshape(shape)
            tree[k] = np.asarray(x, dtype)
        tree["none"] = None
        out.append(tree)
    return out


def params_tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tree = {k: np.asarray(np.abs(rng.standard_normal(shape)), dtype) for k, (shape, dtype) in LEAVES.items()}
    tree["none"] = None
    return tree


def _jnp(tree):
    return jax.tree.map(jnp.asarray, tree)


def test_zero_nans_matches_numpy_and_optax():
    grads = grad_seq(0, poison=True)
    params = _jnp(params_tree(1))
    tx, ref = zero_nans(), optax.zero_nans()
    state, ref_state = tx.init(params), ref.init(params)
    step, ref_step = jax.jit(tx.update), jax.jit(ref.update)
    total_nans = 0
    for t, g in enumerate(grads):
        g = _jnp(g)
        u, state = step(g, state, params)
        u_ref, ref_state = ref_step(g, ref_state, params)
        count = 0
        for k in LEAVES:
            x = np.asarray(g[k]).astype(np.float64)
            expected = np.where(np.isnan(x), 0.0, x)  # numpy transcription: NaN -> 0, +-Inf kept
            assert u[k].dtype == g[k].dtype
            np.testing.assert_array_equal(np.asarray(u[k]).astype(np.float64), expected, err_msg=f"step {t} {k}")
            np.testing.assert_array_equal(np.asarray(u[k]), np.asarray(u_ref[k]))
            assert bool(state.found_nan[k]) == bool(np.isnan(x).any()) == bool(ref_state.found_nan[k])
            count += int(np.isnan(x).sum())
        assert u["none"] is None and state.found_nan["none"] is None
        assert int(state.nan_count) == count, f"step {t}"
        total_nans += count
    assert total_nans > 50  # the sequence does exercise the replacement
    assert step._cache_size() == 1


def test_zero_nans_complex_and_integer_leaves():
    tx = zero_nans()
    g = {"z": jnp.array([1 + 1j, complex(np.nan, 1.0), complex(1.0, np.nan)], jnp.complex64), "i": jnp.arange(3)}
    u, state = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(np.asarray(u["z"]), [1 + 1j, 0, 0])
    np.testing.assert_array_equal(np.asarray(u["i"]), [0, 1, 2])
    assert int(state.nan_count) == 2 and bool(state.found_nan["z"]) and not bool(state.found_nan["i"])


def test_zero_nans_abstract_init_and_empty_tree():
    tx = zero_nans()
    abstract = {"w": jax.ShapeDtypeStruct((3, 2), jnp.bfloat16), "none": None}
    state = jax.eval_shape(tx.init, abstract)
    assert isinstance(state, ZeroNansState) and state.found_nan["w"].dtype == jnp.bool_
    assert state.found_nan["none"] is None
    u, state = tx.update({}, tx.init({}))
    assert u == {} and int(state.nan_count) == 0


@pytest.mark.parametrize("step_size", [0.3, 1.0, 3.0])
def test_keep_params_nonnegative_matches_numpy_and_optax(step_size):
    # The incoming updates are -step_size * g, rounded once to each leaf's dtype, fed to both.
    grads = grad_seq(2, poison=False)
    params = _jnp(params_tree(3))
    params["neg"] = jnp.array([-1.0, -0.5, 0.2])  # negative params are moved to 0 when pushed down
    grads = [{**g, "neg": np.array([0.1, -1.0, -2.0], np.float32)} for g in grads]
    incoming = [
        {k: None if x is None else np.asarray(-step_size * x.astype(np.float64), x.dtype) for k, x in g.items()}
        for g in grads
    ]
    tx, ref = keep_params_nonnegative(), optax.keep_params_nonnegative()
    mine, theirs = jax.jit(tx.update), jax.jit(ref.update)
    state, ref_state = tx.init(params), ref.init(params)
    p_ref = params
    clamped = 0
    for t, g in enumerate(incoming):
        g = _jnp(g)
        p_np = {k: np.asarray(params[k], np.float64) for k in [*LEAVES, "neg"]}
        u, state = mine(g, state, params)
        v, ref_state = theirs(g, ref_state, p_ref)
        for k in [*LEAVES, "neg"]:
            assert u[k].dtype == params[k].dtype
            np.testing.assert_array_equal(np.asarray(u[k]), np.asarray(v[k]), err_msg=f"step {t} leaf {k}")
            expected = ref_nonnegative(p_np[k], np.asarray(g[k], np.float64))
            np.testing.assert_array_equal(np.asarray(u[k], np.float64), expected, err_msg=f"step {t} leaf {k}")
            clamped += int((p_np[k] + np.asarray(g[k], np.float64) < 0).sum())
        assert u["none"] is None
        params, p_ref = gc.apply_updates(params, u), optax.apply_updates(p_ref, v)
        for k in [*LEAVES, "neg"]:
            np.testing.assert_array_equal(np.asarray(params[k]), np.asarray(p_ref[k]))
            assert (np.asarray(params[k], np.float64) >= 0).all(), f"step {t} leaf {k}"
    assert clamped > 20


def test_keep_params_nonnegative_narrow_updates():
    # float32 params that bfloat16 cannot hold: -p rounded to bfloat16 may overshoot below -p.
    p = jnp.asarray(np.linspace(0.001, 3.0, 257), jnp.float32)
    u = jnp.full(p.shape, -10.0, jnp.bfloat16)
    new, _ = keep_params_nonnegative().update(u, gc.EmptyState(), p)
    assert new.dtype == jnp.bfloat16
    assert (gc.apply_updates(p, new) >= 0).all()
    # ... and it is the closest such value: one bfloat16 step down would cross zero.
    below = jnp.nextafter(new, jnp.asarray(-jnp.inf, jnp.bfloat16))
    assert ((p + below.astype(jnp.float32)) < 0).all()
    # optax returns float32 updates here (-p itself): the same params, a different update dtype.
    ref, _ = optax.keep_params_nonnegative().update(u, optax.EmptyState(), p)
    assert ref.dtype == jnp.float32 and (gc.apply_updates(p, ref) == 0).all()


def test_keep_params_nonnegative_jit_no_retrace():
    traces = []
    tx = keep_params_nonnegative()
    params = {"w": jnp.ones(3), "none": None}

    @jax.jit
    def step(g, p):
        traces.append(1)
        return tx.update(g, tx.init(p), p)[0]

    for _ in range(3):
        step({"w": -2 * jnp.ones(3), "none": None}, params)
    assert len(traces) == 1
    assert jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}) == gc.EmptyState()


@pytest.mark.parametrize(
    ("updates", "params", "error", "match"),
    [
        ({"w": jnp.ones(2)}, None, ValueError, "params"),
        ({"w": jnp.ones(2, jnp.complex64)}, {"w": jnp.ones(2)}, TypeError, r"(leaf |: )w\b"),
        ({"w": jnp.ones(2)}, {"w": jnp.ones(2, jnp.int32)}, TypeError, r"param leaf w\b"),
        ({"w": jnp.ones(3)}, {"w": jnp.ones(2)}, ValueError, r"(leaf |: )w\b"),
        ({"w": jnp.ones(2)}, {"v": jnp.ones(2)}, ValueError, r"(leaf |: )v\b"),
    ],
)
def test_keep_params_nonnegative_bad_input(updates, params, error, match):
    with pytest.raises(error, match=match):
        keep_params_nonnegative().update(updates, gc.EmptyState(), params)
