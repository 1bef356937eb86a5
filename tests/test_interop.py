"""gradchain inside other libraries' training loops: flax (linen TrainState, NNX), equinox, optax.

gradchain speaks optax's protocol, so its transformations drop into code written for optax. Each test
runs the same steps with gradchain in the foreign loop and with a plain gradchain loop (expected: bit
for bit) or with optax's optimizer of the same formula (expected: to about 1e-6), and checks that
gradchain's hyperparameter access still works on the state as the library stores it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import assert_trajectory_close, grad_sequence, param_tree, reference_tree, stored
from references.adam import ref_adam
from references.clipping import ref_clip_by_global_norm

import gradchain as gc

PyTree = Any


def f32(x: float) -> float:
    """`x` rounded to float32, as a Python float."""
    return float(np.float32(x))


# optax.adam rounds its betas inconsistently: with b2 = 0.999 it multiplies by (1 - 0.999) computed
# in float64 and then rounded to float32 (0.0010000000475), but divides by 1 - float32(0.999)**t
# (0.00099998713 at t = 1), so its first update is |g| / (|g| * 1.0000064): 6.4e-6 relative off
# the formula (gradchain: < 1e-7, as it derives everything from the stored float32 betas). With
# betas that are exact float32 numbers both roundings agree, and optax follows the formula to about
# 3e-6 (its 1 - b**t, with an integer t, loses a few more bits than gradchain's: < 4e-7).
OPTAX_B1, OPTAX_B2 = f32(0.9), f32(0.999)


def assert_trees_equal(a: PyTree, b: PyTree) -> None:
    """Same structure, dtypes and bit-for-bit equal leaves."""
    assert jax.tree.structure(a) == jax.tree.structure(b), f"{jax.tree.structure(a)} != {jax.tree.structure(b)}"
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def assert_trees_close(a: PyTree, b: PyTree, rtol: float) -> None:
    """Leaf by leaf, max|a - b| <= rtol * max|b|."""
    a_leaves = jax.tree_util.tree_flatten_with_path(a)[0]
    b_leaves = jax.tree.leaves(b)
    assert len(a_leaves) == len(b_leaves)
    for (path, x), y in zip(a_leaves, b_leaves, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(float(np.max(np.abs(y), initial=0.0)), 1e-30)
        err = float(np.max(np.abs(x - y), initial=0.0))
        assert err <= rtol * scale, f"{jax.tree_util.keystr(path)}: relative error {err / scale:.3g} > {rtol:g}"


def _regression(n: int = 32, d_in: int = 4, d_out: int = 2, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal((d_in, d_out))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


# ------------------------------------------------------------------------------------------------
# (a) flax linen: TrainState


def test_flax_train_state_apply_gradients_equals_a_plain_loop_bit_for_bit():
    nn = pytest.importorskip("flax.linen")
    train_state = pytest.importorskip("flax.training.train_state")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.relu(nn.Dense(8)(x)))

    model = MLP()
    x, _ = _regression()
    params = model.init(jax.random.key(0), x)
    tx = gc.adamw(gc.schedules.linear_schedule(0.02, 0.002, 50), weight_decay=0.01)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    # A fixed gradient sequence shaped like the params (independent of them).
    rng = np.random.default_rng(1)
    grads_seq = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params) for _ in range(50)]

    apply_gradients = jax.jit(lambda s, g: s.apply_gradients(grads=g))

    @jax.jit
    def plain_step(p, s, g):
        updates, s = tx.update(g, s, p)
        return gc.apply_updates(p, updates), s

    p, s = params, tx.init(params)
    for grads in grads_seq:
        state = apply_gradients(state, grads)
        p, s = plain_step(p, s, grads)
    assert int(state.step) == 50
    assert_trees_equal(state.params, p)
    assert_trees_equal(state.opt_state, s)
    hp = gc.hyperparams(state.opt_state)
    np.testing.assert_allclose(float(hp["learning_rate"]), 0.02 + (0.002 - 0.02) * 49 / 50, rtol=1e-6)


def test_flax_train_state_trains_and_hyperparams_can_be_changed():
    nn = pytest.importorskip("flax.linen")
    train_state = pytest.importorskip("flax.training.train_state")
    model = nn.Dense(2)
    x, y = _regression()
    params = model.init(jax.random.key(0), x)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=gc.adam(0.05))

    def loss(params, x, y):
        return jnp.mean((model.apply(params, x) - y) ** 2)

    traces = []

    @jax.jit
    def step(state):
        traces.append(1)
        return state.apply_gradients(grads=jax.grad(loss)(state.params, x, y))

    initial = loss(state.params, x, y)
    for _ in range(50):
        state = step(state)
    assert loss(state.params, x, y) < 0.5 * initial
    # Change the learning rate between steps the flax way (replace the opt_state); no retrace.
    state = state.replace(opt_state=gc.set_hyperparams(state.opt_state, learning_rate=0.0))
    before = state.params
    state = step(state)
    assert_trees_equal(state.params, before)  # learning rate 0: the params do not move
    assert len(traces) == 1  # (recompilation on committedness changes is tested in test_jit.py)


# ------------------------------------------------------------------------------------------------
# (b) flax NNX: nnx.Optimizer


def _nnx_mlp(nnx: Any, seed: int = 0) -> Any:
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(4, 8, rngs=rngs)
            self.out = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.hidden(x)))

    return MLP(nnx.Rngs(seed))


def _nnx_train(nnx: Any, tx: Any, steps: int = 50) -> tuple[Any, Any, list[float]]:
    model = _nnx_mlp(nnx)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = _regression()

    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(steps)]
    losses.append(float(loss_fn(model)))
    return model, optimizer, losses


def test_nnx_optimizer_trains_and_matches_optax_adam():
    nnx = pytest.importorskip("flax.nnx")
    model, optimizer, losses = _nnx_train(nnx, gc.adam(0.01))
    ref_model, _, ref_losses = _nnx_train(nnx, optax.adam(0.01, b1=OPTAX_B1, b2=OPTAX_B2))
    assert losses[-1] < 0.5 * losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    assert_trees_close(nnx.state(model, nnx.Param), nnx.state(ref_model, nnx.Param), rtol=1e-6)
    assert int(optimizer.step[...]) == 50


def test_nnx_optimizer_state_exposes_hyperparams():
    nnx = pytest.importorskip("flax.nnx")
    _, optimizer, _ = _nnx_train(nnx, gc.adamw(0.01, weight_decay=0.05), steps=3)
    # nnx wraps every state leaf in an `OptArray` Variable; the Hyperparams node itself survives,
    # so `hyperparams` finds it. Its values are those Variables (they convert like arrays).
    hp = gc.hyperparams(optimizer.opt_state)
    assert set(hp) == {"b1", "b2", "eps", "eps_root", "weight_decay", "learning_rate"}
    values = {k: float(jnp.asarray(v)) for k, v in hp.items()}
    np.testing.assert_allclose(
        [values["learning_rate"], values["weight_decay"], values["b1"]], [0.01, 0.05, 0.9], rtol=1e-6
    )
    counts = [int(jnp.asarray(s.count)) for s in optimizer.opt_state if hasattr(s, "count")]
    assert counts == [3, 3, 3]


def test_nnx_learning_rate_set_between_steps_takes_effect_without_retracing():
    """`hyperparams` gives plain arrays under NNX; `set_hyperparams` is how to change one."""
    nnx = pytest.importorskip("flax.nnx")
    model = _nnx_mlp(nnx)
    optimizer = nnx.Optimizer(model, gc.sgd(0.1), wrt=nnx.Param)
    x, y = _regression()
    traces = []

    @nnx.jit
    def step(model, optimizer, grads):
        traces.append(1)
        optimizer.update(model, grads)

    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    step(model, optimizer, grads)
    assert isinstance(gc.hyperparams(optimizer.opt_state)["learning_rate"], jax.Array)
    optimizer.opt_state = gc.set_hyperparams(optimizer.opt_state, learning_rate=0.5)
    before = jnp.asarray(model.out.kernel[...])
    step(model, optimizer, grads)
    np.testing.assert_allclose(model.out.kernel[...], before - 0.5 * grads.out.kernel[...], rtol=1e-6)
    assert len(traces) == 1


def test_nnx_set_hyperparams_on_the_optimizer_state_keeps_it_usable():
    """`set_hyperparams(optimizer.opt_state, ...)` must give a state the optimizer can go on with.

    Now it replaces the `OptArray` Variable nnx put in the Hyperparams node by a plain array, and
    the next `optimizer.update` fails inside `nnx.update` with "Cannot set key 'learning_rate' on
    immutable node of type Hyperparams". Replacing the value *inside* each leaf
    (`jax.tree.map(lambda leaf: new_value_like(leaf), old)`) would keep the wrapper.
    """
    nnx = pytest.importorskip("flax.nnx")
    model = _nnx_mlp(nnx)
    optimizer = nnx.Optimizer(model, gc.sgd(0.1), wrt=nnx.Param)
    x, y = _regression()
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.opt_state = gc.set_hyperparams(optimizer.opt_state, learning_rate=0.5)
    before = jnp.asarray(model.out.kernel[...])
    optimizer.update(model, grads)
    np.testing.assert_allclose(model.out.kernel[...], before - 0.5 * grads.out.kernel[...], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# (c) equinox


def _eqx_train(eqx: Any, tx: Any, steps: int = 50) -> tuple[Any, list[float]]:
    model = eqx.nn.MLP(in_size=4, out_size=2, width_size=8, depth=2, key=jax.random.key(0))
    x, y = _regression()
    state = tx.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(steps):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    losses.append(float(loss_fn(model)))
    return model, losses


def test_equinox_mlp_trains_and_matches_optax_adam():
    eqx = pytest.importorskip("equinox")
    model, losses = _eqx_train(eqx, gc.adam(0.01))
    ref_model, ref_losses = _eqx_train(eqx, optax.adam(0.01, b1=OPTAX_B1, b2=OPTAX_B2))
    assert losses[-1] < 0.5 * losses[0]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    assert_trees_close(eqx.filter(model, eqx.is_array), eqx.filter(ref_model, eqx.is_array), rtol=1e-6)


def test_equinox_none_leaves_of_a_filtered_model_are_handled():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(in_size=3, out_size=1, width_size=4, depth=1, key=jax.random.key(1))
    params = eqx.filter(model, eqx.is_array)
    assert any(leaf is None for leaf in jax.tree.leaves(params, is_leaf=lambda v: v is None))
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2, weight_decay=0.1))
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = eqx.filter_jit(tx.update)(grads, state, params)
    np.testing.assert_allclose(float(state[0].global_norm), np.sqrt(sum(g.size for g in jax.tree.leaves(grads))))
    new = eqx.apply_updates(model, updates)
    assert jax.tree.structure(eqx.filter(new, eqx.is_array)) == jax.tree.structure(params)


# ------------------------------------------------------------------------------------------------
# (d) optax: apply_updates, and gradchain transformations inside optax.chain (and back)


def test_optax_apply_updates_equals_gradchain_apply_updates():
    params = jax.tree.map(jnp.asarray, param_tree())
    tx = gc.adamw(0.01, weight_decay=0.1)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for grads in grad_sequence(n_steps=5):
        updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
        ours, theirs = gc.apply_updates(params, updates), optax.apply_updates(params, updates)
        assert_trees_equal(ours, theirs)
        params = ours


CLIP, LR = 1.0, 0.01
# Steps below and above the clipping threshold (the standard tree has norm about 6).
SCALES = [0.05, 1.0, 0.1, 3.0] * 25


def _clip_adam_reference(grads_seq: list[PyTree]) -> list[PyTree]:
    clipped = ref_clip_by_global_norm(grads_seq, stored(CLIP))
    adam = reference_tree(ref_adam, clipped, stored(0.9), stored(0.999), stored(1e-8))
    return [jax.tree.map(lambda u: -stored(LR) * u, t) for t in adam]


MIXED_CHAINS: dict[str, Callable[[], Any]] = {
    "optax.chain(optax clip, gradchain adam)": lambda: optax.chain(optax.clip_by_global_norm(CLIP), gc.adam(LR)),
    "gradchain.chain(optax clip, gradchain adam)": lambda: gc.chain(optax.clip_by_global_norm(CLIP), gc.adam(LR)),
    "optax.chain(gradchain clip, optax adam)": lambda: optax.chain(
        gc.clip_by_global_norm(CLIP), optax.adam(LR, b1=OPTAX_B1, b2=OPTAX_B2)
    ),
    "gradchain only": lambda: gc.chain(gc.clip_by_global_norm(CLIP), gc.adam(LR)),
    "optax only": lambda: optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(LR, b1=OPTAX_B1, b2=OPTAX_B2)),
}


@pytest.mark.parametrize("name", list(MIXED_CHAINS))
def test_gradchain_and_optax_transformations_compose(name):
    tx = MIXED_CHAINS[name]()
    params = jax.tree.map(jnp.asarray, param_tree())
    grads_seq = grad_sequence(n_steps=len(SCALES), step_scales=SCALES)
    # An extra keyword argument (optax's `value=loss` convention) must pass through either chain.
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.ones(())))
    state = tx.init(params)
    out = []
    for grads in grads_seq:
        updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
        out.append(jax.device_get(updates))
    rtol = 5e-6 if "optax adam" in name or name == "optax only" else 2e-6  # see OPTAX_B1 above
    assert_trajectory_close(out, _clip_adam_reference(grads_seq), rtol=rtol)
    if "gradchain adam" in name or name == "gradchain only":
        # gradchain's hyperparameter access sees through the foreign containers of the state.
        np.testing.assert_allclose(float(gc.hyperparams(state)["learning_rate"]), LR, rtol=1e-6)


def test_first_adam_step_follows_the_formula_where_optax_default_betas_do_not():
    """Adam's first update is exactly -lr * g / (|g| + eps), whatever b1 and b2 are."""
    grads = jax.tree.map(jnp.asarray, grad_sequence(n_steps=1)[0])
    params = jax.tree.map(jnp.zeros_like, grads)
    tx = gc.adam(LR)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    exact = jax.tree.map(lambda g: -LR * np.asarray(g, np.float64) / (np.abs(np.asarray(g, np.float64)) + 1e-8), grads)
    # A few float32 roundings (optax.adam with its default betas: 6.4e-6, see OPTAX_B1 above).
    assert_trajectory_close([jax.device_get(updates)], [exact], rtol=1e-6, per_step=True)


def test_gradchain_state_inside_optax_chain_can_be_changed_with_set_hyperparams():
    tx = optax.chain(optax.clip_by_global_norm(CLIP), gc.adam(LR))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    state = gc.set_hyperparams(state, learning_rate=0.5)
    grads = {"w": jnp.asarray([0.1, -0.2, 0.3])}
    updates, state = tx.update(grads, state, params)
    np.testing.assert_allclose(updates["w"], -0.5 * np.sign(grads["w"]), rtol=1e-6)
