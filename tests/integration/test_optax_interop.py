"""from_optax / to_optax: optax transformations in gradchain code and gradchain ones in optax code.

Mixed chains must give optax's numbers (optax is the reference there), gradchain optimizers inside
optax's combinators must give gradchain's numbers (bit for bit where the combinator only routes the
trees; against a float64 numpy reference where it averages), extra arguments must pass through, and
`optax.inject_hyperparams` states must become readable and settable with `gc.hyperparams` /
`gc.set_hyperparams`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import assert_trajectory_close, assert_trees_equal, grad_sequence, param_tree

import gradchain as gc
from gradchain.interop import from_optax, to_optax

PyTree = Any
N_STEPS = 100
# Betas that are exact float32 numbers, so optax's and gradchain's roundings of 1 - b agree (see
# tests/test_interop.py, OPTAX_B1).
B1, B2 = float(np.float32(0.9)), float(np.float32(0.999))
LR = 1e-2
# Steps below and above the clipping threshold (the standard tree has a norm of about 6).
SCALES = [0.05, 1.0, 0.1, 3.0] * (N_STEPS // 4)


def _params() -> PyTree:
    return jax.tree.map(jnp.asarray, param_tree())


def _grads(n: int = N_STEPS) -> list[PyTree]:
    return [jax.tree.map(jnp.asarray, g) for g in grad_sequence(n_steps=n, step_scales=SCALES[:n])]


def _trajectory(tx: Any, params: PyTree, grads: list[PyTree], **extra: Any) -> list[PyTree]:
    """The params after each step of a jitted loop (gradients do not depend on the params)."""

    @jax.jit
    def step(p, s, g):  # as flax's TrainState.apply_gradients does, in one compiled function
        updates, s = tx.update(g, s, p, **extra)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    out = []
    for g in grads:
        params, state = step(params, state, g)
        out.append(jax.device_get(params))
    return out


# ------------------------------------------------------------------------------------------------
# from_optax: optax ingredients chained with gradchain ones give optax's numbers

MIXED: dict[str, tuple[Callable[[], Any], Callable[[], Any], float]] = {
    # name: (mixed chain, pure optax chain, rtol)
    "optax adam between gradchain clip and lr": (
        lambda: gc.chain(
            gc.clip_by_global_norm(1.0), from_optax(optax.scale_by_adam(B1, B2)), gc.scale_by_learning_rate(LR)
        ),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(B1, B2), optax.scale(-LR)),
        2e-6,
    ),
    "optax weight decay before gradchain sgd momentum": (
        lambda: gc.chain(from_optax(optax.add_decayed_weights(0.1)), gc.sgd(LR, momentum=0.9)),
        lambda: optax.chain(optax.add_decayed_weights(0.1), optax.sgd(LR, momentum=0.9)),
        1e-6,
    ),
    "gradchain adam after optax clip, all in optax.chain": (
        lambda: optax.chain(from_optax(optax.clip_by_global_norm(1.0)), to_optax(gc.adam(LR, b1=B1, b2=B2))),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR, b1=B1, b2=B2)),
        5e-6,  # optax's bias correction 1 - b**t loses a few more bits than gradchain's
    ),
    "optax inject_hyperparams adamw, wrapped": (
        lambda: gc.chain(from_optax(optax.inject_hyperparams(optax.adamw)(LR, B1, B2, weight_decay=0.05))),
        lambda: optax.inject_hyperparams(optax.adamw)(LR, B1, B2, weight_decay=0.05),
        0.0,  # the same optax code runs: bit for bit
    ),
}


@pytest.mark.parametrize("name", list(MIXED))
def test_mixed_chains_give_optax_numbers(name):
    mixed, pure, rtol = MIXED[name]
    params, grads = _params(), _grads()
    ours = _trajectory(mixed(), params, grads)
    theirs = _trajectory(pure(), params, grads)
    if rtol == 0.0:
        assert_trees_equal(ours, theirs)
    else:
        assert_trajectory_close(ours, theirs, rtol=rtol)


def test_optax_transformation_without_extra_args_gets_them_dropped():
    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):  # no **extra_args: plain optax
        return jax.tree.map(lambda u: 2 * u, updates), state

    tx = gc.chain(from_optax(optax.GradientTransformation(init, update)), gc.scale(-1.0))
    updates, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), value=jnp.ones(()))
    assert (updates["w"] == -2.0).all()


def test_extra_args_reach_optax_reduce_on_plateau_through_from_optax():
    plateau = lambda: optax.contrib.reduce_on_plateau(factor=0.5, patience=2, accumulation_size=1)  # noqa: E731
    mixed = gc.chain(gc.sgd(LR), from_optax(plateau()))
    pure = optax.chain(optax.sgd(LR), plateau())
    params, grads = _params(), _grads(20)
    losses = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8] * 4
    results = []
    for tx in (mixed, pure):
        state, p, out = tx.init(params), params, []
        for g, loss in zip(grads, losses, strict=False):
            updates, state = jax.jit(tx.update)(g, state, p, value=jnp.asarray(loss))
            p = optax.apply_updates(p, updates)
            out.append(p)
        results.append((out, state))
    assert_trees_equal(results[0][0], results[1][0])
    # The plateau rule fired (otherwise this would not test that `value` arrived).
    assert float(optax.tree_utils.tree_get(results[1][1], "scale")) < 1.0


# ------------------------------------------------------------------------------------------------
# from_optax: inject_hyperparams states through gradchain's hyperparameter access


def _inject_adam(**kwargs: Any) -> Any:
    return optax.inject_hyperparams(optax.adam)(**{"learning_rate": LR, "b1": B1, "b2": B2, **kwargs})


def test_inject_hyperparams_are_readable_and_settable_without_recompiling():
    params, grads = _params(), _grads(12)
    tx = from_optax(_inject_adam())
    native = _inject_adam()
    traces = []

    def step(g, s, p):
        traces.append(1)
        return tx.update(g, s, p)

    step = jax.jit(step)
    state, native_state = tx.init(params), native.init(params)
    assert set(gc.hyperparams(state)) == {"learning_rate", "b1", "b2", "eps", "eps_root"}
    # The leaves are optax's, in optax's order.
    assert_trees_equal(jax.tree.leaves(state), jax.tree.leaves(native_state))
    p, p_native = params, params
    for t, g in enumerate(grads):
        if t == 6:
            state = gc.set_hyperparams(state, learning_rate=LR / 4, b1=0.5)
            native_state.hyperparams["learning_rate"] = jnp.asarray(LR / 4)  # optax's documented way
            native_state.hyperparams["b1"] = jnp.asarray(0.5)
        updates, state = step(g, state, p)
        native_updates, native_state = jax.jit(native.update)(g, native_state, p_native)
        p, p_native = optax.apply_updates(p, updates), optax.apply_updates(p_native, native_updates)
        assert_trees_equal(p, p_native)
    assert len(traces) == 1
    assert float(gc.hyperparams(state)["learning_rate"]) == np.float32(LR / 4)
    assert float(gc.hyperparams(state)["b1"]) == 0.5


def test_scheduled_inject_hyperparams_show_the_value_in_effect_and_cannot_be_set():
    schedule = optax.linear_schedule(1.0, 0.0, 10)
    tx = gc.chain(gc.clip_by_global_norm(1.0), from_optax(optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    for _ in range(3):
        _, state = jax.jit(tx.update)({"w": jnp.ones(2)}, state, params)
    # optax stores the value it used at the last step (count 2): 1 - 2/10.
    np.testing.assert_allclose(gc.hyperparams(state)["learning_rate"], 0.8, rtol=1e-6)
    with pytest.raises(ValueError, match=r"learning_rate.*schedule"):
        gc.set_hyperparams(state, learning_rate=0.1)


def test_repeated_inject_hyperparams_names_are_qualified():
    tx = gc.chain(from_optax(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)), gc.adam(1e-3))
    hp = gc.hyperparams(tx.init({"w": jnp.ones(2)}))
    assert hp["inject_hyperparams/learning_rate"] == np.float32(0.1)
    assert hp["scale_by_learning_rate/learning_rate"] == np.float32(1e-3)


# ------------------------------------------------------------------------------------------------
# to_optax: gradchain optimizers in optax's combinators and in flax


def test_to_optax_type_and_pass_through():
    tx = to_optax(gc.adam(LR))
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    native = optax.adam(LR)
    assert isinstance(native, optax.GradientTransformationExtraArgs) and to_optax(native) is native
    plain = optax.GradientTransformation(lambda p: optax.EmptyState(), lambda u, s, p=None: (u, s))
    assert isinstance(to_optax(plain), optax.GradientTransformationExtraArgs)
    assert to_optax(plain).update({"w": 1.0}, optax.EmptyState(), None, value=1.0)[0] == {"w": 1.0}
    gc_tx = gc.adam(LR)
    assert from_optax(gc_tx) is gc_tx


@pytest.mark.parametrize(
    "name",
    ["optax.chain", "optax.chain with value", "flax TrainState"],
)
def test_to_optax_inside_optax_code_is_bit_for_bit_gradchain(name):
    params, grads = _params(), _grads()
    schedule = gc.schedules.cosine_decay_schedule(LR, N_STEPS)
    make = lambda: gc.adamw(schedule, weight_decay=0.1)  # noqa: E731
    expected = _trajectory(make(), params, grads)
    if name == "flax TrainState":
        from flax.training import train_state

        ts = train_state.TrainState.create(apply_fn=None, params=params, tx=to_optax(make()))
        apply = jax.jit(lambda ts, g: ts.apply_gradients(grads=g))
        ours = []
        for g in grads:
            ts = apply(ts, g)
            ours.append(jax.device_get(ts.params))
        assert jnp.isclose(gc.hyperparams(ts.opt_state)["learning_rate"], schedule(N_STEPS - 1))
    else:
        extra = {"value": jnp.ones(())} if "value" in name else {}
        ours = _trajectory(optax.chain(to_optax(make())), params, grads, **extra)
    assert_trees_equal(ours, expected)


def test_to_optax_inside_optax_multi_steps_matches_the_averaged_gradient_reference():
    k, lr = 4, 0.1
    params, grads = _params(), _grads(N_STEPS)
    ours = _trajectory(optax.MultiSteps(to_optax(gc.sgd(lr)), every_k_schedule=k), params, grads)
    # float64 reference: every k-th step, p -= lr * mean of the last k gradients; else unchanged.
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    expected = []
    for t in range(N_STEPS):
        if (t + 1) % k == 0:
            window = grads[t + 1 - k : t + 1]
            mean = jax.tree.map(lambda *g: np.mean([np.asarray(x, np.float64) for x in g], axis=0), *window)
            p = jax.tree.map(lambda x, g: x - np.float32(lr) * g, p, mean)
        expected.append(p)
    assert_trajectory_close(ours, expected, rtol=2e-6)
    assert not np.array_equal(ours[-1]["c"], np.asarray(params["c"]))


def test_to_optax_inside_optax_masked_runs_gradchain_on_the_masked_leaves_only():
    params, grads = _params(), _grads()
    mask = {"a": False, "b": True, "c": True, "d": False}
    tx = optax.masked(to_optax(gc.adam(LR)), mask)
    state = tx.init(params)
    update = jax.jit(tx.update)
    sub = lambda tree: {k: tree[k] for k in ("b", "c")}  # noqa: E731
    alone = gc.adam(LR)
    alone_state = alone.init(sub(params))
    alone_update = jax.jit(alone.update)
    for g in grads:
        updates, state = update(g, state, params)
        expected, alone_state = alone_update(sub(g), alone_state, sub(params))
        assert_trees_equal(sub(updates), expected)  # gradchain's numbers on the masked leaves
        assert_trees_equal({k: updates[k] for k in "ad"}, {k: g[k] for k in "ad"})  # the rest untouched


def test_gradchain_packing_survives_to_optax():
    params = {f"b{i}": jnp.ones(3) for i in range(4)}
    tx = gc.chain(to_optax(gc.scale_by_adam()), gc.scale_by_learning_rate(LR), pack=True)
    state = tx.init(params)
    assert isinstance(state[0].mu, gc.Packed)
    updates, _ = tx.update(params, state, params)
    assert updates["b3"].shape == (3,)


# ------------------------------------------------------------------------------------------------
# No dependency on optax; errors


def test_gradchain_does_not_import_optax_and_to_optax_says_what_is_missing():
    code = textwrap.dedent(
        """
        import sys
        import gradchain, gradchain.interop, gradchain.wrappers.monitoring
        assert "optax" not in sys.modules, "importing gradchain imported optax"
        sys.modules["optax"] = None  # as if it were not installed
        import jax.numpy as jnp
        from gradchain.interop import from_optax, to_optax
        tx = from_optax(gradchain.sgd(0.1))  # works without optax
        tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.ones(1)}))
        try:
            to_optax(gradchain.sgd(0.1))
        except ImportError as e:
            assert "pip install optax" in str(e), e
        else:
            raise AssertionError("no ImportError")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_to_optax_raises_import_error_when_optax_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "optax", None)
    with pytest.raises(ImportError, match="to_optax needs optax"):
        to_optax(gc.sgd(0.1))


@pytest.mark.parametrize("fn", [from_optax, to_optax])
@pytest.mark.parametrize("bad", [None, optax.adam, "adam"])
def test_non_transformations_raise_type_error_naming_tx(fn, bad):
    with pytest.raises(TypeError, match=rf"{fn.__name__}: tx must be a GradientTransformation"):
        fn(bad)
