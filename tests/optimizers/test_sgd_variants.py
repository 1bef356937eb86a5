"""Adadelta, Rprop, signSGD/Signum, ASGD, noisy SGD, optimistic methods and Polyak SGD.

Trajectories are compared with optax and torch.optim (and float64 numpy transcriptions where the
two libraries disagree with the documented formula), over 250 steps of a fixed gradient sequence
that does not depend on the params, leaf by leaf, relative to each leaf's largest magnitude.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import LazyModule, assert_stacked_close, optimizer_data, scan_trajectories, stored

import gradchain as gc

STEPS = 250
# float32 param trajectories: every step rounds p + u to 2^-24 |p|; over 250 steps that random walk
# stays below ~1e-6 of the leaf's largest |p| (measured worst case below 6e-7 for these tests).
RTOL_F32 = 1e-6
RTOL_F64 = 1e-12


def _data(seed: int = 0, dtype: Any = np.float32) -> tuple[Any, Any]:
    params, grads = optimizer_data(seed, STEPS)
    cast = lambda t: jax.tree.map(lambda x: jnp.asarray(x, dtype), t)  # noqa: E731
    return cast(params), cast(grads)


def _optax_adam_v1(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return optax.optimistic_adam(*args, **kwargs)


# (id, gradchain optimizer, optax optimizer)
OPTAX_CASES: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
    ("adadelta", lambda: gc.adadelta(1.0), lambda: optax.adadelta(1.0)),
    (
        "adadelta_wd",
        lambda: gc.adadelta(0.5, rho=0.95, eps=1e-5, weight_decay=1e-2),
        lambda: optax.adadelta(0.5, rho=0.95, eps=1e-5, weight_decay=1e-2),
    ),
    ("sign_sgd", lambda: gc.sign_sgd(0.01), lambda: optax.sign_sgd(0.01)),
    ("signum", lambda: gc.signum(0.01, beta=0.8), lambda: optax.signum(0.01, beta=0.8)),
    (
        "noisy_sgd",
        lambda: gc.noisy_sgd(0.01, eta=0.3, gamma=0.55, key=3),
        lambda: optax.noisy_sgd(0.01, 0.3, 0.55, key=3),
    ),
    ("ogd", lambda: gc.optimistic_gradient_descent(0.01), lambda: optax.optimistic_gradient_descent(0.01)),
    (
        "ogd_custom",
        lambda: gc.optimistic_gradient_descent(0.02, alpha=0.5, beta=2.0),
        lambda: optax.optimistic_gradient_descent(0.02, alpha=0.5, beta=2.0),
    ),
    (
        "optimistic_adam_plain",
        lambda: gc.optimistic_adam(3e-3, None, b1=0.8, b2=0.99, eps=1e-6, nesterov=False),
        lambda: _optax_adam_v1(3e-3, None, b1=0.8, b2=0.99, eps=1e-6, nesterov=False),
    ),
]


@pytest.mark.parametrize("make, make_optax", [c[1:] for c in OPTAX_CASES], ids=[c[0] for c in OPTAX_CASES])
def test_matches_optax(make, make_optax):
    params, grads = _data()
    (ours, _), (theirs, _) = scan_trajectories([make(), make_optax()], params, grads)
    assert_stacked_close(ours, theirs, RTOL_F32)


def test_optimistic_adam_nesterov_matches_optax_to_its_bias_correction_rounding():
    # gradchain's scale_by_adam(nesterov=True) and optax's differ by up to 6.7e-6 relative in the
    # first updates (measured; gradchain's is the one that matches float64), so this comparison
    # uses 1e-4 of the leaf's max |p| (measured worst 6e-6) instead of 1e-6.
    params, grads = _data()
    (ours, _), (theirs, _) = scan_trajectories(
        [gc.optimistic_adam(1e-2, 1.0), _optax_adam_v1(1e-2, 1.0)], params, grads
    )
    assert_stacked_close(ours, theirs, 1e-4)


def _rprop_updates(tx, grads):
    state = tx.init(jax.tree.map(lambda g: g[0], grads))
    step = jax.jit(tx.update)
    out = []
    for k in range(STEPS):
        u, state = step(jax.tree.map(lambda g: g[k], grads), state)
        out.append(u)
    return out


def test_rprop_optax_applies_the_previous_steps_move():
    """optax.rprop returns the move computed at the previous step (zeroed where the sign flips now).

    Its update function selects `state.prev_updates` (the old moves) instead of the new ones, so
    its first update is 0 and every later one is late by a step. gradchain follows PyTorch (tested
    above); this test pins optax's behaviour: optax_t = [s_t >= 0] * ours_{t-1}.
    """
    _, grads = _data(9)
    kw = dict(eta_minus=0.3, eta_plus=1.5, min_step_size=1e-4, max_step_size=1.0)
    ours = _rprop_updates(gc.rprop(0.1, **kw), grads)
    theirs = _rprop_updates(optax.rprop(0.1, **kw), grads)
    for leaf in range(len(jax.tree.leaves(grads))):
        g = np.asarray(jax.tree.leaves(grads)[leaf])
        o = np.stack([np.asarray(jax.tree.leaves(u)[leaf]) for u in ours])
        t = np.stack([np.asarray(jax.tree.leaves(u)[leaf]) for u in theirs])
        assert np.all(t[0] == 0)
        # The sign of the previous *kept* gradient is -sign(ours_{t-1}) (ours are descent moves).
        flip = np.sign(g[1:]) * np.sign(-o[:-1]) < 0
        np.testing.assert_allclose(t[1:], np.where(flip, 0.0, o[:-1]), rtol=1e-6)
        assert not np.allclose(t, o)


def test_optimistic_adam_v2_is_the_documented_chain():
    params, grads = _data(1)
    ours = gc.chain(
        gc.scale_by_adam(nesterov=True), gc.scale_by_optimistic_gradient(0.3, 1.5), gc.scale_by_learning_rate(0.01)
    )
    theirs = optax.optimistic_adam_v2(0.01, alpha=0.3, beta=1.5)
    (a, _), (b, _) = scan_trajectories([ours, theirs], params, grads)
    assert_stacked_close(a, b, RTOL_F32)


# --------------------------------------------------------------------------------------------------
# torch.optim


def _torch_run(make_torch, params, grads, dtype) -> list[np.ndarray]:
    import torch  # only reached from tests that take the `torch` fixture

    leaves = [torch.tensor(np.asarray(p, np.float64), dtype=dtype, requires_grad=True) for p in jax.tree.leaves(params)]
    g_leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    optimizer = make_torch(leaves)
    out = [[] for _ in leaves]
    for k in range(STEPS):
        for p, g in zip(leaves, g_leaves, strict=True):
            p.grad = torch.tensor(g[k], dtype=dtype)
        optimizer.step()
        for i, p in enumerate(leaves):
            out[i].append(p.detach().numpy().copy())
    return [np.stack(o) for o in out]


O = LazyModule("torch.optim")  # imported when a table entry runs (skips without torch)
TORCH_CASES = [
    ("adadelta", lambda: gc.adadelta(), lambda ps: O.Adadelta(ps)),
    (
        "adadelta_wd",
        lambda: gc.adadelta(0.5, rho=0.95, eps=1e-5, weight_decay=1e-2),
        lambda ps: O.Adadelta(ps, lr=0.5, rho=0.95, eps=1e-5, weight_decay=1e-2),
    ),
    ("rprop", lambda: gc.rprop(0.01), lambda ps: O.Rprop(ps)),
    (
        "rprop_custom",
        lambda: gc.rprop(0.1, 0.3, 1.5, 1e-4, 1.0),
        lambda ps: O.Rprop(ps, lr=0.1, etas=(0.3, 1.5), step_sizes=(1e-4, 1.0)),
    ),
    # An initial step size outside [min, max]: PyTorch clips it at the first step (optax does not).
    (
        "rprop_lr_above_max",
        lambda: gc.rprop(2.0, max_step_size=0.5),
        lambda ps: O.Rprop(ps, lr=2.0, step_sizes=(1e-6, 0.5)),
    ),
    ("asgd", lambda: gc.asgd(), lambda ps: O.ASGD(ps)),
    (
        "asgd_averaging",
        lambda: gc.asgd(0.05, lambd=1e-2, alpha=0.6, t0=100.0, weight_decay=1e-3),
        lambda ps: O.ASGD(ps, lr=0.05, lambd=1e-2, alpha=0.6, t0=100.0, weight_decay=1e-3),
    ),
]


def _compare_with_torch(make, make_torch, dtype, rtol):
    import torch  # only reached from tests that take the `torch` fixture

    params, grads = _data(2, dtype)
    ((ours, state),) = scan_trajectories([make()], params, grads)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    previous = torch.get_default_dtype()
    # PyTorch keeps ASGD's eta and mu in the default dtype: float64 for the float64 comparison.
    torch.set_default_dtype(torch_dtype)
    try:
        theirs = _torch_run(make_torch, params, grads, torch_dtype)
    finally:
        torch.set_default_dtype(previous)
    assert_stacked_close(ours, jax.tree.unflatten(jax.tree.structure(params), theirs), rtol)
    return state


@pytest.mark.parametrize("make, make_torch", [c[1:] for c in TORCH_CASES], ids=[c[0] for c in TORCH_CASES])
def test_matches_torch_float32(make, make_torch, request, torch):
    # PyTorch's float32 ASGD multiplies p by the rounded constant (1 - lambd * eta): the same
    # rounding every step, so its error grows linearly (measured 4.3e-6 of max|p| after 250 steps);
    # gradchain's p - eta (g + lambd p) stays within 1e-6 of the float64 run (next test).
    rtol = 1e-5 if "asgd" in request.node.callspec.id else RTOL_F32
    _compare_with_torch(make, make_torch, np.float32, rtol)


def test_asgd_float32_follows_the_float64_trajectory(torch):
    params, grads = _data(2, np.float32)
    ((ours, _),) = scan_trajectories([gc.asgd()], params, grads)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = _torch_run(lambda ps: torch.optim.ASGD(ps), params, grads, torch.float64)
    finally:
        torch.set_default_dtype(previous)
    assert_stacked_close(ours, jax.tree.unflatten(jax.tree.structure(params), ref), RTOL_F32)


@pytest.mark.parametrize("make, make_torch", [c[1:] for c in TORCH_CASES], ids=[c[0] for c in TORCH_CASES])
def test_matches_torch_float64(make, make_torch, x64, torch):
    _compare_with_torch(make, make_torch, np.float64, RTOL_F64)


def test_asgd_average_matches_torch_ax(x64, torch):
    params, grads = _data(3, np.float64)
    t0 = 50.0
    ((_, state),) = scan_trajectories([gc.asgd(0.05, lambd=1e-3, t0=t0)], params, grads)
    leaves = [torch.tensor(np.asarray(p), requires_grad=True) for p in jax.tree.leaves(params)]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        optimizer = torch.optim.ASGD(leaves, lr=0.05, lambd=1e-3, t0=t0)
        for k in range(STEPS):
            for p, g in zip(leaves, jax.tree.leaves(grads), strict=True):
                p.grad = torch.tensor(np.asarray(g[k]))
            optimizer.step()
    finally:
        torch.set_default_dtype(previous)
    ax = [optimizer.state[p]["ax"].numpy() for p in leaves]
    ours = jax.tree.leaves(gc.asgd_averaged_params(state))
    for a, b in zip(ours, ax, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())
    # Averaging really started: the average is not the last iterate.
    assert not np.allclose(ours[0], np.asarray(jax.tree.leaves(params)[0]))


def test_rprop_initial_step_outside_bounds_differs_from_optax_as_documented():
    params, grads = _data(4)
    (ours, _), (theirs, _) = scan_trajectories(
        [gc.rprop(2.0, max_step_size=0.5), optax.rprop(2.0, max_step_size=0.5)], params, grads
    )
    first_ours = jax.tree.leaves(ours)[0][0] - jax.tree.leaves(params)[0]
    # optax's moves are late by one step (see the next test): its second move is the first one.
    first_theirs = jax.tree.leaves(theirs)[0][1] - jax.tree.leaves(theirs)[0][0]
    assert np.abs(np.asarray(first_ours)).max() <= 0.5 + 1e-6  # clipped, as PyTorch
    assert np.isclose(np.abs(np.asarray(first_theirs)).max(), 2.0)  # optax: unclipped


# --------------------------------------------------------------------------------------------------
# noisy SGD


def test_noisy_sgd_without_noise_is_sgd_exactly():
    params, grads = _data(5)
    (a, _), (b, _) = scan_trajectories([gc.noisy_sgd(0.02, eta=0.0), gc.sgd(0.02)], params, grads)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_add_noise_statistics():
    eta, gamma = 0.5, 0.55
    tx = gc.add_noise(eta, gamma, key=jax.random.key(7))
    zeros = {"big": jnp.zeros((200, 100)), "small": jnp.zeros(3)}
    state = tx.init(zeros)
    step = jax.jit(tx.update)
    samples = []
    for t in range(1, 6):
        u, state = step(zeros, state)
        z = np.asarray(u["big"], np.float64) / np.sqrt(eta / t**gamma)
        samples.append(z)
        # mean 0 and variance 1 of 20,000 standard normals: 5 sigma bounds.
        assert abs(z.mean()) < 5 / np.sqrt(z.size)
        assert abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
    # Fresh noise every step, independent of the last.
    assert abs(np.corrcoef(samples[0].ravel(), samples[1].ravel())[0, 1]) < 5 / np.sqrt(samples[0].size)
    assert state.rng_key.dtype == jnp.uint32 and int(state.count) == 5


def test_add_noise_same_key_same_noise_as_optax_and_int_seed_equals_key():
    g = {"a": jnp.ones((4, 3)), "b": jnp.zeros(5)}
    ours = [gc.add_noise(0.1, 0.55, key=11), gc.add_noise(0.1, 0.55, key=jax.random.key(11))]
    theirs = optax.add_noise(0.1, 0.55, key=11)
    s_theirs = theirs.init(g)
    states = [tx.init(g) for tx in ours]
    for _ in range(3):
        ut, s_theirs = theirs.update(g, s_theirs)
        for i, tx in enumerate(ours):
            u, states[i] = tx.update(g, states[i])
            for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(ut), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------------------------
# Polyak SGD


def _values(seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(0.5, 5.0, STEPS), jnp.float32)


def _run_with_values(txs, params, grads, values):
    def body(carry, xs):
        g, v = xs
        new = []
        for tx, (p, s) in zip(txs, carry, strict=True):
            u, s = tx.update(g, s, p, value=v)
            new.append((gc.apply_updates(p, u), s))
        return new, [p for p, _ in new]

    @jax.jit
    def go(p, gs, vs):
        _, trajectories = jax.lax.scan(body, [(p, tx.init(p)) for tx in txs], (gs, vs))
        return trajectories

    return go(params, grads, values)


def _ref_polyak(params, grads, values, *, scaling, max_lr, f_min, eps, plus=False, optax_scaling=False):
    """float64 numpy: p -= s * min(gap / (|g|^2 + eps), max_lr) * g (optax: s^2 |g|^2 in the norm)."""
    p = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    gl = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
    out = [[] for _ in p]
    for k in range(STEPS):
        g = [x[k] for x in gl]
        sq = sum(float(np.sum(x * x)) for x in g) * (scaling**2 if optax_scaling else 1.0)
        gap = float(values[k]) - f_min
        gap = max(gap, 0.0) if plus else gap
        step = min(gap / (sq + eps), max_lr)
        for i in range(len(p)):
            p[i] = p[i] - scaling * step * g[i]
            out[i].append(p[i])
    return jax.tree.unflatten(jax.tree.structure(params), [np.stack(o) for o in out])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(max_learning_rate=0.05, f_min=0.3, eps=1e-3),
        dict(max_learning_rate=0.02, f_min=2.0, variant="sps+"),
    ],
    ids=["default", "capped", "sps_plus"],
)
def test_polyak_sgd_matches_optax_and_numpy(kwargs):
    params, grads = _data(6)
    grads = jax.tree.map(lambda g: 0.1 * g, grads)
    values = _values(0)
    ours, theirs = _run_with_values([gc.polyak_sgd(**kwargs), optax.polyak_sgd(**kwargs)], params, grads, values)
    assert_stacked_close(ours, theirs, RTOL_F32)
    ref = _ref_polyak(
        params,
        grads,
        np.asarray(values),
        scaling=1.0,
        max_lr=stored(kwargs.get("max_learning_rate", 1.0)),
        f_min=stored(kwargs.get("f_min", 0.0)),
        eps=stored(kwargs.get("eps", 0.0)),
        plus=kwargs.get("variant") == "sps+",
    )
    assert_stacked_close(ours, ref, RTOL_F32)


def test_polyak_scaling_follows_the_documented_formula_where_optax_differs():
    params, grads = _data(7)
    grads = jax.tree.map(lambda g: 0.1 * g, grads)
    values = _values(1)
    kw = dict(scaling=0.5, max_learning_rate=10.0)
    ours, theirs = _run_with_values([gc.polyak_sgd(**kw), optax.polyak_sgd(**kw)], params, grads, values)
    common = dict(max_lr=10.0, f_min=0.0, eps=0.0)
    assert_stacked_close(ours, _ref_polyak(params, grads, np.asarray(values), scaling=0.5, **common), RTOL_F32)
    # optax puts the scaling into the norm: its step is s * gap / (s^2 |g|^2).
    optax_ref = _ref_polyak(params, grads, np.asarray(values), scaling=0.5, optax_scaling=True, **common)
    assert_stacked_close(theirs, optax_ref, RTOL_F32)
    with pytest.raises(AssertionError):
        assert_stacked_close(ours, theirs, 1e-2)


@pytest.mark.parametrize(
    "make", [lambda: gc.polyak_sgd(), lambda: gc.scale_by_polyak()], ids=["polyak_sgd", "ingredient"]
)
def test_polyak_without_value_raises_type_error_naming_value(make):
    tx = make()
    params = {"w": jnp.ones(3)}
    with pytest.raises(TypeError, match="value"):
        tx.update({"w": jnp.ones(3)}, tx.init(params), params)


def test_polyak_zero_gradient_gives_zero_step_not_nan():
    tx = gc.polyak_sgd()
    params = {"w": jnp.ones(3)}
    u, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params, value=0.0)
    assert (u["w"] == 0).all() and float(state[0].step_size) == 0.0


# --------------------------------------------------------------------------------------------------
# Complex params, packing, hyperparameters


def test_adadelta_complex_matches_numpy_reference():
    rng = np.random.default_rng(0)
    g = (rng.standard_normal((STEPS, 4)) + 1j * rng.standard_normal((STEPS, 4))).astype(np.complex64)
    tx = jax.jit(gc.scale_by_adadelta(0.9, 1e-6).update)
    state = gc.scale_by_adadelta(0.9, 1e-6).init({"z": jnp.zeros(4, jnp.complex64)})
    rho, eps = stored(0.9), stored(1e-6)
    e_g = e_x = np.zeros(4)
    for k in range(STEPS):
        u, state = tx({"z": jnp.asarray(g[k])}, state)
        gk = g[k].astype(np.complex128)
        e_g = rho * e_g + (1 - rho) * np.abs(gk) ** 2
        ref = np.sqrt(e_x + eps) / np.sqrt(e_g + eps) * gk
        e_x = rho * e_x + (1 - rho) * np.abs(ref) ** 2
        np.testing.assert_allclose(np.asarray(u["z"]), ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())
    assert state.e_g["z"].dtype == jnp.float32


@pytest.mark.parametrize(
    "make",
    [lambda: gc.rprop(0.01), lambda: gc.sign_sgd(0.1), lambda: gc.signum(0.1)],
    ids=["rprop", "sign_sgd", "signum"],
)
def test_sign_based_optimizers_reject_complex_naming_the_leaf(make):
    with pytest.raises(TypeError, match="w"):
        make().init({"ok": jnp.zeros(2), "w": jnp.zeros(2, jnp.complex64)})


@pytest.mark.parametrize(
    "make",
    [
        lambda pack: gc.rprop(0.05, pack=pack),
        lambda pack: gc.adadelta(pack=pack),
        lambda pack: gc.asgd(0.05, t0=10.0, pack=pack),
        lambda pack: gc.optimistic_adam(1e-2, pack=pack),
    ],
    ids=["rprop", "adadelta", "asgd", "optimistic_adam"],
)
def test_packed_equals_unpacked_bit_for_bit(make):
    rng = np.random.default_rng(8)
    params = {f"b{i}": jnp.asarray(rng.standard_normal(3), jnp.float32) for i in range(40)}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal((60, *p.shape)), jnp.float32), params)
    packed = make(None)
    is_packed = lambda x: isinstance(x, gc.Packed)  # noqa: E731
    assert any(is_packed(x) for x in jax.tree.leaves(packed.init(params), is_leaf=is_packed))
    (a, _), (b, _) = scan_trajectories([packed, make(False)], params, grads)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_rprop_state_keeps_int8_signs_and_asgd_average_unpacks():
    params = {f"b{i}": jnp.ones(3) for i in range(40)}
    state = gc.rprop(0.01).init(params)
    assert all(leaf.dtype == jnp.int8 for leaf in jax.tree.leaves(state[0].prev_sign))
    tx = gc.asgd(0.1)
    state = tx.init(params)
    _, state = tx.update(params, state, params)
    assert isinstance(state[0].ax, gc.Packed)
    ax = gc.asgd_averaged_params(state)
    assert set(ax) == set(params) and ax["b0"].shape == (3,)
    np.testing.assert_allclose(np.asarray(ax["b0"]), 1 - 0.1 * (1 + 1e-4), rtol=1e-6)


def test_hyperparameters_are_readable_and_settable():
    params = {"w": jnp.ones(3)}
    state = gc.adadelta(0.5, rho=0.8).init(params)
    hp = gc.hyperparams(state)
    assert set(hp) == {"rho", "eps", "learning_rate"} and np.isclose(float(hp["rho"]), 0.8)
    state = gc.set_hyperparams(state, rho=0.7)
    assert np.isclose(float(gc.hyperparams(state)["rho"]), 0.7)
    rprop_hp = gc.hyperparams(gc.rprop(0.01).init(params))
    assert {"eta_minus", "eta_plus", "min_step_size", "max_step_size"} <= set(rprop_hp)
    assert set(gc.hyperparams(gc.asgd().init(params))) == {"learning_rate", "lambd", "alpha", "t0"}
    assert {"eta", "gamma", "learning_rate"} == set(gc.hyperparams(gc.noisy_sgd(0.1).init(params)))


# --------------------------------------------------------------------------------------------------
# Convergence


def _rosenbrock(p):
    x = p["xy"]
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


_SCALES = jnp.logspace(0, 2, 10)  # condition number 100


def _quadratic(p):
    return 0.5 * jnp.sum(_SCALES * (p["w"] - 1.0) ** 2)


def _run(tx, loss, params, steps, *, with_value=False):
    def body(carry, _):
        p, s = carry
        v, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p, value=v) if with_value else tx.update(g, s, p)
        return (gc.apply_updates(p, u), s), None

    (p, _), _ = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=steps))(params)
    return float(loss(p))


CONVERGENCE = [
    # (id, optimizer, steps, quadratic factor, rosenbrock factor, needs value)
    ("adadelta", lambda: gc.adadelta(1.0, rho=0.95, eps=1e-4), 2000, 1e-3, 1e-1, False),
    ("rprop", lambda: gc.rprop(0.01), 500, 1e-6, 1e-2, False),
    ("sign_sgd", lambda: gc.sign_sgd(gc.schedules.exponential_decay(0.05, 100, 0.5)), 1000, 1e-3, 2e-1, False),
    ("signum", lambda: gc.signum(gc.schedules.exponential_decay(0.05, 100, 0.5)), 1000, 1e-3, 1e-1, False),
    ("asgd", lambda: gc.asgd(1e-3, t0=500.0), 2000, 1e-3, 1e-1, False),
    ("noisy_sgd", lambda: gc.noisy_sgd(1e-3, eta=1e-4, key=1), 2000, 1e-2, 1e-1, False),
    ("ogd", lambda: gc.optimistic_gradient_descent(1e-3), 2000, 1e-3, 1e-1, False),
    ("optimistic_adam", lambda: gc.optimistic_adam(1e-2), 2000, 1e-3, 1e-1, False),
    ("polyak_sgd", lambda: gc.polyak_sgd(max_learning_rate=1.0), 2000, 1e-3, 1e-1, True),
]


@pytest.mark.slow  # long convergence runs; the step-by-step comparisons above are the fast check
@pytest.mark.parametrize(
    "make, steps, quad_factor, rosen_factor, with_value", [c[1:] for c in CONVERGENCE], ids=[c[0] for c in CONVERGENCE]
)
def test_convergence(make, steps, quad_factor, rosen_factor, with_value):
    quad0 = {"w": jnp.zeros(10)}
    rosen0 = {"xy": jnp.array([-1.2, 1.0])}
    quad = _run(make(), _quadratic, quad0, steps, with_value=with_value)
    rosen = _run(make(), _rosenbrock, rosen0, steps, with_value=with_value)
    assert quad < quad_factor * float(_quadratic(quad0)), quad
    assert rosen < rosen_factor * float(_rosenbrock(rosen0)), rosen


# --------------------------------------------------------------------------------------------------
# Bad hyperparameters and state size


BAD = [
    (lambda: gc.adadelta(rho=1.0), ValueError, "rho"),
    (lambda: gc.adadelta(eps=-1.0), ValueError, "eps"),
    (lambda: gc.adadelta(learning_rate=-1.0), ValueError, "learning_rate"),
    (lambda: gc.rprop(0.0), ValueError, "learning_rate"),
    (lambda: gc.rprop(lambda c: 0.1), TypeError, "learning_rate"),
    (lambda: gc.rprop(0.1, eta_minus=1.5), ValueError, "eta_minus"),
    (lambda: gc.rprop(0.1, eta_plus=0.0), ValueError, "eta_plus"),
    (lambda: gc.rprop(0.1, min_step_size=1.0, max_step_size=0.5), ValueError, "min_step_size"),
    (lambda: gc.signum(0.1, beta=1.0), ValueError, "beta"),
    (lambda: gc.sign_sgd(-0.1), ValueError, "learning_rate"),
    (lambda: gc.asgd(lambd=-1.0), ValueError, "lambd"),
    (lambda: gc.asgd(t0=float("nan")), ValueError, "t0"),
    (lambda: gc.asgd(alpha=-0.5), ValueError, "alpha"),
    (lambda: gc.noisy_sgd(0.1, eta=-1.0), ValueError, "eta"),
    (lambda: gc.noisy_sgd(0.1, gamma=-1.0), ValueError, "gamma"),
    (lambda: gc.noisy_sgd(0.1, key="seed"), TypeError, "key"),
    (lambda: gc.optimistic_gradient_descent(0.1, alpha=float("inf")), ValueError, "alpha"),
    (lambda: gc.optimistic_adam(lambda c: 0.1), TypeError, "learning_rate"),
    (lambda: gc.optimistic_adam(1e-2, b2=1.5), ValueError, "b2"),
    (lambda: gc.polyak_sgd(max_learning_rate=-1.0), ValueError, "max_learning_rate"),
    (lambda: gc.polyak_sgd(variant="sps-"), ValueError, "variant"),
    (lambda: gc.polyak_sgd(eps=-1.0), ValueError, "eps"),
]


@pytest.mark.parametrize("make, error, name", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_hyperparameters(make, error, name):
    with pytest.raises(error, match=name):
        make()


# Bytes of optimizer state per float32 parameter (per-parameter buffers only; scalars are O(1)).
STATE_BYTES = [
    ("adadelta", lambda: gc.adadelta(), 8),
    ("rprop", lambda: gc.rprop(0.01), 5),
    ("sign_sgd", lambda: gc.sign_sgd(0.01), 0),
    ("signum", lambda: gc.signum(0.01), 4),
    ("asgd", lambda: gc.asgd(), 4),
    ("noisy_sgd", lambda: gc.noisy_sgd(0.01), 0),
    ("ogd", lambda: gc.optimistic_gradient_descent(0.01), 4),
    ("optimistic_adam", lambda: gc.optimistic_adam(0.01), 12),
    ("polyak_sgd", lambda: gc.polyak_sgd(), 0),
]


@pytest.mark.parametrize("make, per_param", [c[1:] for c in STATE_BYTES], ids=[c[0] for c in STATE_BYTES])
def test_state_bytes_per_float32_parameter(make, per_param):
    n = 1_000_000
    params = {"w": jax.ShapeDtypeStruct((n // 2,), jnp.float32), "b": jax.ShapeDtypeStruct((n // 2,), jnp.float32)}
    state = jax.eval_shape(make().init, params)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert total // n == per_param and total - per_param * n < 200, total
