"""Hyperparameters held in the state: `hyperparams(state)` and `set_hyperparams(state, ...)`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

F32 = np.float32


def make_params() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
        "k": [jnp.asarray(rng.normal(size=(2, 2, 3)), jnp.float32)],
    }


def make_grads(steps: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
            "k": [jnp.asarray(rng.normal(size=(2, 2, 3)), jnp.float32)],
        }
        for _ in range(steps)
    ]


def as_floats(hp: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in hp.items()}


def assert_trees_equal(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------------------
# names and values

# (optimizer, expected keys in order, expected values)
NAMES_TABLE: list[tuple[str, Callable[[], gc.GradientTransformation], dict[str, float]]] = [
    ("sgd", lambda: gc.sgd(0.1), {"learning_rate": 0.1}),
    (
        "sgd_momentum",
        lambda: gc.sgd(0.1, momentum=0.8, dampening=0.1),
        {"decay": 0.8, "dampening": 0.1, "learning_rate": 0.1},
    ),
    (
        "sgd_momentum_wd",
        lambda: gc.sgd(0.1, momentum=0.8, weight_decay=1e-3),
        {"weight_decay": 1e-3, "decay": 0.8, "dampening": 0.0, "learning_rate": 0.1},
    ),
    ("sgd_wd", lambda: gc.sgd(0.2, weight_decay=0.0), {"weight_decay": 0.0, "learning_rate": 0.2}),
    (
        "adam",
        lambda: gc.adam(1e-3, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-9),
        {"b1": 0.8, "b2": 0.99, "eps": 1e-6, "eps_root": 1e-9, "learning_rate": 1e-3},
    ),
    (
        "adam_wd",
        lambda: gc.adam(1e-3, weight_decay=0.05),
        {"weight_decay": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "learning_rate": 1e-3},
    ),
    (
        "adamw",
        lambda: gc.adamw(2e-3, b1=0.85, weight_decay=0.1),
        {"b1": 0.85, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "weight_decay": 0.1, "learning_rate": 2e-3},
    ),
    (
        "nadamw",
        lambda: gc.nadamw(2e-3, weight_decay=0.1),
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "weight_decay": 0.1, "learning_rate": 2e-3},
    ),
    (
        "amsgrad",
        lambda: gc.amsgrad(1e-3, b2=0.98),
        {"b1": 0.9, "b2": 0.98, "eps": 1e-8, "eps_root": 0.0, "learning_rate": 1e-3},
    ),
    ("adamax", lambda: gc.adamax(2e-3, eps=1e-7), {"b1": 0.9, "b2": 0.999, "eps": 1e-7, "learning_rate": 2e-3}),
    (
        "adamaxw",
        lambda: gc.adamaxw(2e-3, weight_decay=0.3),
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.3, "learning_rate": 2e-3},
    ),
    ("adagrad", lambda: gc.adagrad(0.1, eps=1e-6), {"eps": 1e-6, "learning_rate": 0.1}),
    ("rmsprop", lambda: gc.rmsprop(0.01, decay=0.95, eps=1e-6), {"decay": 0.95, "eps": 1e-6, "learning_rate": 0.01}),
    # Momentum adds a second `decay` (trace's): both are qualified by the transformation holding them.
    (
        "rmsprop_momentum",
        lambda: gc.rmsprop(0.01, decay=0.95, momentum=0.5),
        {"scale_by_rms/decay": 0.95, "eps": 1e-8, "trace/decay": 0.5, "dampening": 0.0, "learning_rate": 0.01},
    ),
    ("clip_by_global_norm", lambda: gc.clip_by_global_norm(2.0), {"max_norm": 2.0, "eps": 0.0}),
    ("clip", lambda: gc.clip(0.3), {"max_delta": 0.3}),
    ("clip_by_block_rms", lambda: gc.clip_by_block_rms(0.3), {"threshold": 0.3}),
    ("scale", lambda: gc.scale(-0.5), {"step_size": -0.5}),
    ("ema", lambda: gc.ema(0.7), {"decay": 0.7}),
    ("identity", gc.identity, {}),
]


@pytest.mark.parametrize("name, make, expected", NAMES_TABLE, ids=[row[0] for row in NAMES_TABLE])
def test_hyperparams_names_and_values(name, make, expected):
    tx = make()
    params = make_params()
    state = tx.init(params)
    for _ in range(2):  # at init and after updates: the same names and values
        hp = gc.hyperparams(state)
        assert list(hp) == list(expected), name
        for key, value in expected.items():
            assert hp[key].dtype == jnp.float32 and hp[key].shape == ()
            assert hp[key] == F32(value), key
        _, state = tx.update(make_grads(1)[0], state, params)


def test_qualified_keys_in_a_chain():
    tx = gc.chain(gc.scale_by_adam(eps=1e-6), gc.scale_by_rms(eps=1e-4), gc.scale_by_learning_rate(0.1))
    hp = gc.hyperparams(tx.init(make_params()))
    assert list(hp) == ["b1", "b2", "scale_by_adam/eps", "eps_root", "decay", "scale_by_rms/eps", "learning_rate"]
    assert hp["scale_by_adam/eps"] == F32(1e-6) and hp["scale_by_rms/eps"] == F32(1e-4)


def test_qualified_keys_stay_the_same_when_the_chain_grows():
    without = gc.hyperparams(gc.rmsprop(0.1, momentum=0.9).init(make_params()))
    with_decay = gc.hyperparams(gc.rmsprop(0.1, momentum=0.9, weight_decay=0.1).init(make_params()))
    assert {"scale_by_rms/decay", "trace/decay"} <= set(without) & set(with_decay)


def test_qualified_keys_in_a_named_chain():
    tx = gc.named_chain(("adam", gc.scale_by_adam(eps=1e-6)), ("rms", gc.scale_by_rms(eps=1e-4)))
    hp = gc.hyperparams(tx.init(make_params()))
    assert hp["adam/eps"] == F32(1e-6) and hp["rms/eps"] == F32(1e-4)
    assert "eps" not in hp and "b1" in hp and "decay" in hp


def test_qualified_keys_nested():
    tx = gc.named_chain(
        ("opt", gc.chain(gc.scale_by_adam(), gc.scale_by_learning_rate(0.1))), ("rms", gc.scale_by_rms())
    )
    assert set(gc.hyperparams(tx.init(make_params()))) == {
        "b1", "b2", "opt/eps", "eps_root", "learning_rate", "decay", "rms/eps"
    }  # fmt: skip


def test_hyperparams_of_a_tree_of_states():
    a, b = gc.sgd(0.1), gc.sgd(0.2)
    params = make_params()
    hp = gc.hyperparams({"a": a.init(params), "b": b.init(params)})
    # Qualified by the user's names alone: the chain position inside each adds nothing.
    assert as_floats(hp) == {"a/learning_rate": F32(0.1), "b/learning_rate": F32(0.2)}
    both = gc.set_hyperparams({"a": a.init(params), "b": b.init(params)}, {"a/0/learning_rate": 0.5})
    assert as_floats(gc.hyperparams(both))["a/learning_rate"] == F32(0.5)


def test_names_on_the_path_that_do_not_tell_entries_apart_fall_back_to_the_full_path():
    tx = gc.named_chain(("opt", gc.chain(gc.scale_by_rms(eps=1e-3), gc.scale_by_rms(eps=1e-4))))
    hp = gc.hyperparams(tx.init(make_params()))
    assert {"opt/0/eps", "opt/1/eps", "opt/0/decay", "opt/1/decay"} <= set(hp)


def test_hyperparams_returns_a_plain_dict_of_the_state_arrays():
    state = gc.adam(1e-3).init(make_params())
    hp = gc.hyperparams(state)
    assert type(hp) is dict
    assert hp["learning_rate"] is state[1].hyperparams["learning_rate"]


# ---------------------------------------------------------------------------------------------------
# schedules


def _schedules() -> list[tuple[str, Callable]]:
    out = [("lambda", lambda count: 0.1 / (1.0 + count))]
    if hasattr(gc.schedules, "warmup_cosine_decay_schedule"):
        out.append(("warmup_cosine", gc.schedules.warmup_cosine_decay_schedule(0.0, 1.0, 3, 12, 0.1)))
    if hasattr(gc.schedules, "exponential_decay"):
        out.append(("exponential", gc.schedules.exponential_decay(0.1, 1, 0.5)))
    return out


@pytest.mark.parametrize("sched_name, schedule", _schedules(), ids=[s[0] for s in _schedules()])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_schedule_value_of_the_last_step(sched_name, schedule, optimizer):
    tx = gc.sgd(schedule) if optimizer == "sgd" else gc.adamw(schedule, weight_decay=0.0)
    params = make_params()
    state = tx.init(params)
    assert gc.hyperparams(state)["learning_rate"] == F32(schedule(0))
    step = jax.jit(tx.update)
    for k, g in enumerate(make_grads(10)):
        u, state = step(g, state, params)
        lr = gc.hyperparams(state)["learning_rate"]
        assert lr.dtype == jnp.float32 and lr.shape == ()
        # Compiled inside the step, a schedule's cos/exp may round differently (by an ulp) from a
        # separate call, so allow a few ulps; the values of neighbouring steps differ by far more.
        np.testing.assert_allclose(float(lr), float(schedule(k)), rtol=5e-7, atol=1e-12, err_msg=str(k))
        assert abs(float(lr) - float(schedule(k + 1))) > 1e-6 * abs(float(lr))
        if optimizer == "sgd":  # the update used that very value
            np.testing.assert_array_equal(np.asarray(u["w"]), -np.asarray(lr) * np.asarray(g["w"]))


def test_scheduled_weight_decay_is_readable():
    schedule = lambda count: 0.01 * (count + 1)  # noqa: E731
    tx = gc.adamw(1e-3, weight_decay=schedule)
    params = make_params()
    state = tx.init(params)
    for k, g in enumerate(make_grads(5)):
        _, state = tx.update(g, state, params)
        assert gc.hyperparams(state)["weight_decay"] == F32(schedule(jnp.int32(k)))
        np.testing.assert_allclose(float(gc.hyperparams(state)["weight_decay"]), 0.01 * (k + 1), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# set_hyperparams: lookup


def test_set_by_plain_name_keyword_and_mapping():
    state = gc.adamw(1e-3).init(make_params())
    new = gc.set_hyperparams(state, learning_rate=0.5, b1=0.5)
    assert gc.hyperparams(new)["learning_rate"] == F32(0.5) and gc.hyperparams(new)["b1"] == F32(0.5)
    new = gc.set_hyperparams(state, {"weight_decay": 0.25}, eps=1e-3)
    assert gc.hyperparams(new)["weight_decay"] == F32(0.25) and gc.hyperparams(new)["eps"] == F32(1e-3)
    # Nothing else changed.
    unchanged = {k: v for k, v in as_floats(gc.hyperparams(new)).items() if k not in ("weight_decay", "eps")}
    assert unchanged == {k: v for k, v in as_floats(gc.hyperparams(state)).items() if k not in ("weight_decay", "eps")}


def test_set_by_qualified_key():
    tx = gc.chain(gc.scale_by_adam(eps=1e-6), gc.scale_by_rms(eps=1e-4))
    state = tx.init(make_params())
    for key in ("1/eps", "scale_by_rms/eps"):  # path-qualified and transformation-qualified
        new = gc.set_hyperparams(state, {key: 0.5})
        hp = gc.hyperparams(new)
        assert hp["scale_by_rms/eps"] == F32(0.5) and hp["scale_by_adam/eps"] == F32(1e-6)
        assert new[1].hyperparams["eps"] == F32(0.5)

    tx = gc.named_chain(("adam", gc.scale_by_adam(eps=1e-6)), ("rms", gc.scale_by_rms(eps=1e-4)))
    new = gc.set_hyperparams(tx.init(make_params()), {"adam/eps": 0.25})
    assert new["adam"].hyperparams["eps"] == F32(0.25) and new["rms"].hyperparams["eps"] == F32(1e-4)


def test_set_by_unique_suffix():
    tx = gc.named_chain(
        ("opt", gc.chain(gc.scale_by_adam(), gc.scale_by_learning_rate(0.1))), ("rms", gc.scale_by_rms())
    )
    state = tx.init(make_params())
    new = gc.set_hyperparams(state, {"0/eps": 0.5})  # suffix of the full path "opt/0/eps" only
    assert gc.hyperparams(new)["opt/eps"] == F32(0.5)
    assert gc.hyperparams(new)["rms/eps"] == F32(1e-8)


def test_every_key_shown_by_hyperparams_can_be_set():
    """The docstring: keys are the names `hyperparams(state)` shows.

    Here "0/eps" is shown (the first Adam's eps) and is also a suffix of "1/0/eps" (the nested one);
    the exact key must win over the suffix match.
    """
    tx = gc.chain(gc.scale_by_adam(), gc.chain(gc.scale_by_adam(), gc.scale_by_learning_rate(0.1)))
    state = tx.init(make_params())
    keys = list(gc.hyperparams(state))
    assert "0/eps" in keys and "1/0/eps" in keys
    for i, key in enumerate(keys):
        value = 0.5 + 0.01 * i
        new = gc.set_hyperparams(state, {key: value})
        assert gc.hyperparams(new)[key] == F32(value), key


def test_set_then_read_every_key_of_every_optimizer():
    for _, make, expected in NAMES_TABLE:
        state = make().init(make_params())
        for key in expected:
            old = float(gc.hyperparams(state)[key])
            value = 0.0 if old != 0.0 else 0.125
            new = gc.set_hyperparams(state, {key: value})
            assert gc.hyperparams(new)[key] == F32(value)


# ---------------------------------------------------------------------------------------------------
# set_hyperparams: effect on the trajectory


def test_new_learning_rate_changes_the_trajectory_as_a_fresh_optimizer_would():
    params, grads = make_params(), make_grads(40)
    tx = gc.sgd(0.1, momentum=0.9)
    step = jax.jit(tx.update)
    state = tx.init(params)
    p = params
    for g in grads[:20]:
        u, state = step(g, state, p)
        p = gc.apply_updates(p, u)
    state_new = gc.set_hyperparams(state, learning_rate=0.03)

    # A fresh optimizer built with lr=0.03, carrying the old state with only the lr replaced.
    fresh = gc.sgd(0.03, momentum=0.9)
    fresh_state = gc.ChainState(
        (state[0], state[1]._replace(hyperparams=state[1].hyperparams.replace(learning_rate=jnp.float32(0.03))))
    )
    assert_trees_equal(fresh_state, state_new)
    p_fresh = p
    fresh_step = jax.jit(fresh.update)
    for g in grads[20:]:
        u, state_new = step(g, state_new, p)
        u_fresh, fresh_state = fresh_step(g, fresh_state, p_fresh)
        p, p_fresh = gc.apply_updates(p, u), gc.apply_updates(p_fresh, u_fresh)
        assert_trees_equal(u, u_fresh)
    assert_trees_equal(p, p_fresh)


def test_set_hyperparams_midway_matches_the_formula():
    """SGD with momentum (lr 0.1 -> 0.03 at step 50) and Adam (b1 0.9 -> 0.5, eps, lr changed at step 60)."""
    n = 120
    params, grads = make_params(), make_grads(n)
    leaves = lambda t: [np.asarray(x, np.float64) for x in jax.tree.leaves(t)]  # noqa: E731

    # SGD + momentum: v = beta v + g; p -= lr v.
    tx = gc.sgd(0.1, momentum=0.9)
    step = jax.jit(tx.update)
    state, p = tx.init(params), params
    p_ref, v = leaves(params), [np.zeros_like(x) for x in leaves(params)]
    for t, g in enumerate(grads):
        if t == 50:
            state = gc.set_hyperparams(state, learning_rate=0.03)
        lr = float(F32(0.1 if t < 50 else 0.03))
        u, state = step(g, state, p)
        p = gc.apply_updates(p, u)
        for i, gi in enumerate(leaves(g)):
            v[i] = float(F32(0.9)) * v[i] + gi
            p_ref[i] = p_ref[i] - lr * v[i]
    for x, y in zip(leaves(p), p_ref, strict=True):
        assert np.max(np.abs(x - y)) <= 1e-6 * np.max(np.abs(y))

    # Adam: the bias corrections use the new b1 with the running step count.
    tx = gc.adam(1e-2, b1=0.9, b2=0.99, eps=1e-8)
    step = jax.jit(tx.update)
    state = tx.init(params)
    mu = [np.zeros_like(x) for x in leaves(params)]
    nu = [np.zeros_like(x) for x in leaves(params)]
    b1, b2, eps, lr = (float(F32(x)) for x in (0.9, 0.99, 1e-8, 1e-2))
    for t, g in enumerate(grads, start=1):
        if t == 61:
            state = gc.set_hyperparams(state, b1=0.5, eps=1e-3, learning_rate=3e-3)
            b1, eps, lr = (float(F32(x)) for x in (0.5, 1e-3, 3e-3))
        u, state = step(g, state, params)
        for i, gi in enumerate(leaves(g)):
            mu[i] = b1 * mu[i] + (1 - b1) * gi
            nu[i] = b2 * nu[i] + (1 - b2) * gi * gi
            ref = -lr * (mu[i] / (1 - b1**t)) / (np.sqrt(nu[i] / (1 - b2**t)) + eps)
            got = leaves(u)[i]
            # float32's rounding of 1 - b2**t limits the agreement to a few 1e-6 in early steps.
            assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref)), t


# ---------------------------------------------------------------------------------------------------
# set_hyperparams: errors


def test_unknown_key_raises_key_error_listing_known_keys():
    state = gc.sgd(0.1, momentum=0.9).init(make_params())
    with pytest.raises(KeyError, match=r"'lr'.*known: 'decay', 'dampening', 'learning_rate'"):
        gc.set_hyperparams(state, lr=0.1)
    with pytest.raises(KeyError, match=r"'adam/eps'"):
        gc.set_hyperparams(state, {"adam/eps": 0.1})
    with pytest.raises(KeyError, match=r"known: none"):
        gc.set_hyperparams(gc.identity().init(None), learning_rate=0.1)


def test_ambiguous_key_raises_value_error_listing_candidates():
    # The candidates are the keys `hyperparams` shows, and each of them works.
    state = gc.chain(gc.scale_by_adam(), gc.scale_by_rms()).init(make_params())
    with pytest.raises(ValueError, match=r"'eps' is ambiguous.*'scale_by_adam/eps', 'scale_by_rms/eps'"):
        gc.set_hyperparams(state, eps=0.1)
    state = gc.rmsprop(0.1, momentum=0.9).init(make_params())
    with pytest.raises(ValueError, match=r"'decay' is ambiguous.*'scale_by_rms/decay', 'trace/decay'"):
        gc.set_hyperparams(state, decay=0.5)
    assert {"scale_by_rms/decay", "trace/decay"} <= set(gc.hyperparams(state))
    state = gc.set_hyperparams(state, {"trace/decay": 0.5})
    assert gc.hyperparams(state)["trace/decay"] == 0.5


@pytest.mark.parametrize(
    "make, key, value, pattern",
    [
        (lambda: gc.sgd(0.1), "learning_rate", -0.1, r"learning_rate must be a finite number >= 0, got -0.1"),
        (lambda: gc.sgd(0.1), "learning_rate", float("nan"), r"learning_rate must be"),
        (lambda: gc.sgd(0.1), "learning_rate", float("inf"), r"learning_rate must be"),
        (lambda: gc.adam(0.1), "b1", 1.0, r"b1 must be a number in \[0, 1\), got 1.0"),
        (lambda: gc.adam(0.1), "b2", 1.5, r"b2 must be a number in \[0, 1\)"),
        (lambda: gc.adam(0.1), "b1", -0.1, r"b1 must be a number in \[0, 1\)"),
        (lambda: gc.adam(0.1), "eps", -1e-8, r"eps must be a finite number >= 0"),
        (lambda: gc.adamw(0.1), "weight_decay", -1.0, r"weight_decay must be a finite number >= 0"),
        (lambda: gc.sgd(0.1, momentum=0.9), "dampening", 1.5, r"dampening must be a number in \[0, 1\]"),
        (lambda: gc.chain(gc.scale_by_adam(), gc.scale_by_rms()), "1/eps", -1.0, r"scale_by_rms/eps must be"),
        (lambda: gc.clip_by_global_norm(1.0), "max_norm", -1.0, r"max_norm must be a finite number >= 0"),
    ],
)
def test_invalid_value_raises_naming_the_key(make, key, value, pattern):
    state = make().init(make_params())
    with pytest.raises(ValueError, match=pattern):
        gc.set_hyperparams(state, {key: value})


def test_non_scalar_or_non_number_raises_type_error():
    state = gc.sgd(0.1).init(make_params())
    with pytest.raises(TypeError, match=r"learning_rate must be a scalar, got an array of shape \(2,\)"):
        gc.set_hyperparams(state, learning_rate=jnp.ones(2))
    with pytest.raises(TypeError, match=r"learning_rate must be a number or a schedule, got str"):
        gc.set_hyperparams(state, learning_rate="0.1")


def test_setting_a_scheduled_value_raises():
    state = gc.adamw(lambda count: 0.1 / (1 + count)).init(make_params())
    with pytest.raises(ValueError, match=r"learning_rate' is produced by a schedule"):
        gc.set_hyperparams(state, learning_rate=0.1)
    # The other hyperparameters of the same optimizer can still be set.
    new = gc.set_hyperparams(state, weight_decay=0.5)
    assert gc.hyperparams(new)["weight_decay"] == F32(0.5)


def test_failed_set_leaves_nothing_half_done():
    state = gc.adamw(0.1).init(make_params())
    before = as_floats(gc.hyperparams(state))
    with pytest.raises(ValueError):
        gc.set_hyperparams(state, learning_rate=0.5, b1=2.0)
    assert as_floats(gc.hyperparams(state)) == before


# ---------------------------------------------------------------------------------------------------
# set_hyperparams: immutability, jit, dtype and shape


def test_state_passed_in_is_not_modified():
    tx = gc.adamw(0.1)
    params = make_params()
    state = tx.init(params)
    _, state = tx.update(make_grads(1)[0], state, params)
    snapshot = jax.tree.map(np.array, state)
    leaves_before = [id(x) for x in jax.tree.leaves(state)]
    hp_node = state[2].hyperparams
    new = gc.set_hyperparams(state, learning_rate=0.5, b1=0.1, weight_decay=0.0)
    assert new is not state
    assert [id(x) for x in jax.tree.leaves(state)] == leaves_before
    assert state[2].hyperparams is hp_node
    assert_trees_equal(state, snapshot)
    assert gc.hyperparams(state)["learning_rate"] == F32(0.1)
    # The per-parameter buffers are shared, not copied.
    assert new[0].mu["w"] is state[0].mu["w"]


def test_set_hyperparams_inside_jit_with_a_traced_value():
    tx = gc.sgd(0.1, momentum=0.9)
    params = make_params()
    state = tx.init(params)

    @jax.jit
    def step(state, lr, g):
        state = gc.set_hyperparams(state, learning_rate=lr)
        return tx.update(g, state, params)

    g = make_grads(1)[0]
    for lr in (0.5, 0.25):
        u, new = step(state, jnp.float32(lr), g)
        assert gc.hyperparams(new)["learning_rate"] == F32(lr)
        np.testing.assert_array_equal(np.asarray(u["w"]), -F32(lr) * np.asarray(g["w"]))
    assert step._cache_size() == 1


@pytest.mark.parametrize("value", [0.5, 1, np.float64(0.5), np.float32(0.5), jnp.float32(0.5), jnp.bfloat16(0.5)])
def test_stored_dtype_and_shape_are_preserved(value):
    state = gc.adamw(0.1).init(make_params())
    new = gc.set_hyperparams(state, learning_rate=value)
    before = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    after = jax.tree.map(lambda x: (x.shape, x.dtype), new)
    assert before == after
    assert jax.tree.structure(state) == jax.tree.structure(new)
    lr = gc.hyperparams(new)["learning_rate"]
    assert lr.dtype == jnp.float32 and lr.shape == () and lr == F32(value)
    assert not lr.weak_type


def test_shape_of_a_batched_hyperparameter_is_preserved():
    """A state built under vmap holds one value per problem; a scalar sets them all."""
    tx = gc.sgd(0.1, momentum=0.9)
    state = jax.vmap(tx.init)({"w": jnp.ones((4, 3))})
    assert gc.hyperparams(state)["learning_rate"].shape == (4,)
    new = gc.set_hyperparams(state, learning_rate=0.5)
    lr = gc.hyperparams(new)["learning_rate"]
    assert lr.shape == (4,) and (np.asarray(lr) == F32(0.5)).all()


def test_set_hyperparams_with_x64_keeps_the_state_dtype():
    with jax.enable_x64(True):
        state = gc.sgd(0.1).init({"w": jnp.ones(2)})
        assert gc.hyperparams(state)["learning_rate"].dtype == jnp.float64
        new = gc.set_hyperparams(state, learning_rate=np.float32(0.5))
        assert gc.hyperparams(new)["learning_rate"].dtype == jnp.float64


def test_round_trip_hyperparams_into_set_hyperparams_is_identity():
    for _, make, _ in NAMES_TABLE:
        state = make().init(make_params())
        hp = gc.hyperparams(state)
        if hp:
            assert_trees_equal(gc.set_hyperparams(state, hp), state)


def test_hyperparams_node_is_a_read_only_mapping():
    node = gc.sgd(0.1).init(make_params())[0].hyperparams
    assert isinstance(node, gc.Hyperparams)
    assert node.learning_rate == F32(0.1) and node["learning_rate"] == F32(0.1)
    assert list(node) == ["learning_rate"] and len(node) == 1
    with pytest.raises(TypeError):
        node["learning_rate"] = 0.5  # type: ignore[index]
    with pytest.raises(AttributeError, match="b1"):
        _ = node.b1
    assert re.search(r"Hyperparams\(\{'learning_rate'", repr(node))


def test_hyperparams_survive_copy_and_pickle():
    """Checkpointing a state (pickle, deepcopy) keeps the values, the schedule flags and the checks."""
    import copy
    import pickle

    tx = gc.adamw(lambda count: 0.1 / (1 + count), b1=0.8)
    params = make_params()
    state = gc.set_hyperparams(tx.init(params), weight_decay=0.25)
    for restored in (copy.copy(state), copy.deepcopy(state), pickle.loads(pickle.dumps(state))):
        assert jax.tree.structure(restored) == jax.tree.structure(state)
        assert as_floats(gc.hyperparams(restored)) == as_floats(gc.hyperparams(state))
        with pytest.raises(ValueError, match="schedule"):
            gc.set_hyperparams(restored, learning_rate=0.1)
        with pytest.raises(ValueError, match=r"b1 must be"):
            gc.set_hyperparams(restored, b1=1.0)
        u1, _ = tx.update(make_grads(1)[0], restored, params)
        u2, _ = tx.update(make_grads(1)[0], state, params)
        assert_trees_equal(u1, u2)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        # optax's trace(decay, nesterov, accumulator_dtype) by position: the dtype lands on `dampening`
        (lambda: gc.trace(0.9, False, jnp.float32), "dampening"),
        (lambda: gc.scale_by_learning_rate(jnp.float32), "learning_rate"),
        (lambda: gc.adam(1e-3, np.dtype("float32")), "b1"),
    ],
)
def test_a_dtype_is_not_taken_for_a_schedule(build, name):
    # Classes are callable, so without this check a dtype became a "schedule" of the step count.
    with pytest.raises(TypeError, match=rf"{name} must be a number or a schedule, got the type float32"):
        build()


def test_hyperparams_are_plain_arrays_under_nnx_optimizer():
    """flax NNX wraps every state leaf in a Variable; `hyperparams` still returns arrays, which format."""
    from flax import nnx

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, gc.adamw(1e-3, weight_decay=1e-4), wrt=nnx.Param)
    hp = gc.hyperparams(opt.opt_state)
    assert all(isinstance(v, jax.Array) for v in hp.values())
    assert f"{hp['learning_rate']:.1e}" == "1.0e-03"
    assert float(hp["weight_decay"]) == pytest.approx(1e-4)
