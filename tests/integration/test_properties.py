"""Properties of every optimizer on random pytrees and random valid hyperparameters (hypothesis).

For any tree of floating arrays (nested dicts / lists / tuples, ranks 0 to 3, float32 / bfloat16 /
float16, and float64 when x64 is on) and any valid hyperparameters:

- `init` + `update` keep the tree structure and the shapes, and each update has its gradient's dtype;
- `update` returns a state with the same tree structure, shapes and dtypes as the state it was given
  (what keeps a jitted step at one compilation);
- finite inputs give finite outputs;
- hyperparameters round-trip through `set_hyperparams`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradchain as gc

SETTINGS = settings(
    max_examples=5,  # per optimizer: 10 optimizers x 5 examples per property
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # reproducible in CI; the table of optimizers gives the breadth
)


def _dtypes() -> list[Any]:
    dtypes = [jnp.float32, jnp.bfloat16, jnp.float16]
    if jax.config.jax_enable_x64:
        dtypes.append(jnp.float64)
    return dtypes


# ---------------------------------------------------------------------------------------------------
# strategies: pytrees


@dataclasses.dataclass(frozen=True)
class Leaf:
    """The description of one array leaf (a pytree leaf itself: dataclasses are not pytree nodes)."""

    shape: tuple[int, ...]
    dtype: Any


# Values come from a seeded generator, so that hypothesis does not draw arrays element by element.
leaf_specs = st.builds(
    Leaf,
    st.lists(st.integers(min_value=1, max_value=3), min_size=0, max_size=3).map(tuple),
    st.sampled_from(_dtypes()),
)

tree_specs = st.recursive(
    leaf_specs,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=2).map(tuple),
        st.dictionaries(st.sampled_from(["a", "b", "w", "bias", "layer"]), children, min_size=1, max_size=3),
    ),
    max_leaves=4,
)


def realise(spec: Any, rng: np.random.Generator, scale: float) -> Any:
    """A pytree of arrays following `spec`, values uniform in [-scale, scale], rounded to each dtype."""
    return jax.tree.map(lambda leaf: jnp.asarray(rng.uniform(-scale, scale, size=leaf.shape)).astype(leaf.dtype), spec)


def spec_of(tree: Any) -> Any:
    return jax.tree.map(lambda x: Leaf(x.shape, x.dtype), tree)


def all_finite(tree: Any) -> bool:
    return all(np.isfinite(np.asarray(x, np.float64)).all() for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------------
# strategies: optimizers with random valid hyperparameters
#
# Each optimizer has a strategy for its static structure (which optional parts are present, flags)
# and one for its numbers, so that two optimizers with the same structure and different numbers can
# be built (the round-trip property). eps is kept > 0 for the adaptive methods: with eps = 0 a zero
# gradient gives 0/0 (as in optax and PyTorch).

rates = st.floats(min_value=0.0, max_value=1.0)
betas = st.floats(min_value=0.0, max_value=0.999)
epsilons = st.floats(min_value=1e-8, max_value=1e-2)
decays = st.floats(min_value=0.0, max_value=0.1)


def _numbers(**fields: st.SearchStrategy) -> st.SearchStrategy[dict[str, float]]:
    return st.fixed_dictionaries(fields)


# name -> (static strategy, numbers strategy, build(static, numbers) -> transformation)
OPTIMIZERS: dict[
    str, tuple[st.SearchStrategy, st.SearchStrategy, Callable[[dict, dict], gc.GradientTransformation]]
] = {
    "sgd": (
        st.fixed_dictionaries({"momentum": st.booleans(), "nesterov": st.booleans(), "wd": st.booleans()}),
        _numbers(lr=rates, momentum=st.floats(0.0, 0.99), dampening=st.floats(0.0, 1.0), wd=decays),
        lambda s, n: gc.sgd(
            n["lr"],
            n["momentum"] if s["momentum"] else None,
            nesterov=s["nesterov"] and s["momentum"],
            dampening=n["dampening"] if s["momentum"] else 0.0,
            weight_decay=n["wd"] if s["wd"] else None,
        ),
    ),
    "adagrad": (
        # The initial accumulator only sets the initial state: static, not a hyperparameter.
        st.fixed_dictionaries({"eps_in_sqrt": st.booleans(), "wd": st.booleans(), "init": st.floats(0.0, 1.0)}),
        _numbers(lr=rates, eps=epsilons, wd=decays),
        lambda s, n: gc.adagrad(
            n["lr"], s["init"], n["eps"], eps_in_sqrt=s["eps_in_sqrt"], weight_decay=n["wd"] if s["wd"] else None
        ),
    ),
    "rmsprop": (
        st.fixed_dictionaries(
            {"centered": st.booleans(), "momentum": st.booleans(), "eps_in_sqrt": st.booleans(), "bc": st.booleans()}
        ),
        _numbers(lr=rates, decay=betas, eps=epsilons, momentum=st.floats(0.0, 0.99)),
        lambda s, n: gc.rmsprop(
            n["lr"],
            n["decay"],
            n["eps"],
            eps_in_sqrt=s["eps_in_sqrt"],
            centered=s["centered"],
            momentum=n["momentum"] if s["momentum"] else None,
            bias_correction=s["bc"],
        ),
    ),
    "adam": (
        st.fixed_dictionaries({"wd": st.booleans(), "nesterov": st.booleans(), "f32_moments": st.booleans()}),
        _numbers(lr=rates, b1=betas, b2=betas, eps=epsilons, eps_root=st.floats(0.0, 1e-6), wd=decays),
        lambda s, n: gc.adam(
            n["lr"],
            n["b1"],
            n["b2"],
            n["eps"],
            n["eps_root"],
            jnp.float32 if s["f32_moments"] else None,
            nu_dtype=jnp.float32 if s["f32_moments"] else None,
            nesterov=s["nesterov"],
            weight_decay=n["wd"] if s["wd"] else None,
        ),
    ),
    "adamw": (
        st.fixed_dictionaries({"schedule": st.booleans()}),
        _numbers(lr=rates, b1=betas, b2=betas, eps=epsilons, wd=decays),
        lambda s, n: gc.adamw(
            (lambda count, lr=n["lr"]: lr / (1.0 + count)) if s["schedule"] else n["lr"],
            n["b1"],
            n["b2"],
            n["eps"],
            weight_decay=n["wd"],
        ),
    ),
    "nadam": (
        st.just({}),
        _numbers(lr=rates, b1=betas, b2=betas, eps=epsilons),
        lambda s, n: gc.nadam(n["lr"], n["b1"], n["b2"], n["eps"]),
    ),
    "nadamw": (
        st.just({}),
        _numbers(lr=rates, b1=betas, b2=betas, eps=epsilons, wd=decays),
        lambda s, n: gc.nadamw(n["lr"], n["b1"], n["b2"], n["eps"], weight_decay=n["wd"]),
    ),
    "amsgrad": (
        st.fixed_dictionaries({"debias_before_max": st.booleans()}),
        _numbers(lr=rates, b1=betas, b2=betas, eps=epsilons),
        lambda s, n: gc.amsgrad(n["lr"], n["b1"], n["b2"], n["eps"], debias_before_max=s["debias_before_max"]),
    ),
    "adamax": (
        st.fixed_dictionaries({"wd": st.booleans()}),
        _numbers(lr=rates, b1=betas, b2=betas, eps=epsilons, wd=decays),
        lambda s, n: gc.adamax(n["lr"], n["b1"], n["b2"], n["eps"], weight_decay=n["wd"] if s["wd"] else None),
    ),
    "adamaxw": (
        st.just({}),
        _numbers(lr=rates, b1=betas, b2=betas, eps=epsilons, wd=decays),
        lambda s, n: gc.adamaxw(n["lr"], n["b1"], n["b2"], n["eps"], weight_decay=n["wd"]),
    ),
}


def test_every_optimizer_has_a_strategy():
    classic = {"sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax", "adamaxw"}
    assert classic <= set(OPTIMIZERS)
    assert set(OPTIMIZERS) <= set(gc.__all__)


def _avals(tree: Any) -> Any:
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


# ---------------------------------------------------------------------------------------------------
# properties


@pytest.mark.slow  # hypothesis: many random examples per optimizer
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@SETTINGS
@given(data=st.data())
def test_update_preserves_structure_shapes_dtypes_and_finiteness(name, data):
    static_strategy, numbers_strategy, build = OPTIMIZERS[name]
    tx = build(data.draw(static_strategy, "static"), data.draw(numbers_strategy, "numbers"))
    spec = data.draw(tree_specs, "tree")
    seed = data.draw(st.integers(0, 2**32 - 1), "seed")
    scale = data.draw(st.sampled_from([1e-3, 1.0, 10.0]), "scale")
    rng = np.random.default_rng(seed)
    params = realise(spec, rng, 1.0)
    treedef = jax.tree.structure(params)

    state = tx.init(params)
    state_treedef, state_avals = jax.tree.structure(state), _avals(state)
    for step in range(3):
        # Every third gradient is exactly zero somewhere: the eps-free denominators meet zeros.
        grads = realise(spec, rng, scale)
        if step == 1:
            grads = jax.tree.map(jnp.zeros_like, grads)
        updates, state = tx.update(grads, state, params)

        assert jax.tree.structure(updates) == treedef
        for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(updates), strict=True):
            assert u.shape == g.shape and u.dtype == g.dtype
        assert all_finite(updates), (step, updates)
        assert jax.tree.structure(state) == state_treedef
        assert _avals(state) == state_avals
        assert all_finite(state), step
        params = gc.apply_updates(params, updates)
        assert jax.tree.structure(params) == treedef
        assert all_finite(params)


@pytest.mark.slow  # hypothesis: many random examples per optimizer
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@SETTINGS
@given(data=st.data())
def test_hyperparams_round_trip_through_set_hyperparams(name, data):
    static_strategy, numbers_strategy, build = OPTIMIZERS[name]
    static = data.draw(static_strategy, "static")
    old_numbers = data.draw(numbers_strategy, "old numbers")
    new_numbers = data.draw(numbers_strategy, "new numbers")
    if static.get("schedule"):  # a scheduled learning rate is not a settable value: keep the schedule
        new_numbers = {**new_numbers, "lr": old_numbers["lr"]}
    tx_old, tx_new = build(static, old_numbers), build(static, new_numbers)
    params = realise(data.draw(tree_specs, "tree"), np.random.default_rng(0), 1.0)

    state = tx_old.init(params)
    target = gc.hyperparams(tx_new.init(params))
    scheduled = {"learning_rate"} if static.get("schedule") else set()
    values = {k: v for k, v in target.items() if k not in scheduled}

    # Setting and reading back: the same keys, the new values, the same state layout.
    new_state = gc.set_hyperparams(state, values)
    read = gc.hyperparams(new_state)
    assert list(read) == list(gc.hyperparams(state))
    for key, value in read.items():
        expected = values.get(key, gc.hyperparams(state)[key])
        assert value.dtype == expected.dtype and value.shape == expected.shape
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=key)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert _avals(new_state) == _avals(state)

    # Setting what was read is the identity.
    again = gc.set_hyperparams(new_state, {k: v for k, v in read.items() if k not in scheduled})
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(new_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # And the optimizer with the set values computes what the one built with them computes.
    grads = realise(spec_of(params), np.random.default_rng(1), 1.0)
    u_set, _ = tx_old.update(grads, new_state, params)
    u_new, _ = tx_new.update(grads, tx_new.init(params), params)
    for a, b in zip(jax.tree.leaves(u_set), jax.tree.leaves(u_new), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------------------
# a counterexample found by hand: float16 second moments


def _step2_reference(kind: str) -> float:
    """float64 update at step 2 for gradients 2e-3 then 0 (b1 = 0.9, b2 = 0.999, eps = 1e-8, lr = 1)."""
    b1, b2, eps, g = 0.9, 0.999, 1e-8, 2e-3
    mu = b1 * (1 - b1) * g  # mu_2 (the second gradient is 0)
    nu = b2 * (1 - b2) * g * g  # nu_2
    mu_hat = mu / (1 - b1**2)
    if kind == "nadam":  # the look-ahead first moment; the gradient term is 0 at step 2
        mu_hat = b1 * mu / (1 - b1**3)
    nu_hat = nu / (1 - b2**2)
    if kind == "amsgrad":  # the maximum of the debiased second moments of steps 1 and 2
        nu_hat = max((1 - b2) * g * g / (1 - b2), nu_hat)
    return -mu_hat / (np.sqrt(nu_hat) + eps)


@pytest.mark.parametrize(
    "kind, make",
    [
        ("adam", lambda **kw: gc.adam(1.0, **kw)),
        ("adamw", lambda **kw: gc.adamw(1.0, weight_decay=0.0, **kw)),
        ("nadam", lambda **kw: gc.nadam(1.0, **kw)),
        ("amsgrad", lambda **kw: gc.amsgrad(1.0, **kw)),
    ],
    ids=["adam", "adamw", "nadam", "amsgrad"],
)
@pytest.mark.parametrize("nu_dtype", [None, jnp.float32], ids=["default_nu_dtype", "float32_nu"])
def test_float16_params_zero_gradient_after_a_small_one(kind, make, nu_dtype):
    """A gradient of 2e-3 then 0, float16 params, default b1, b2, eps, and lr = 1.

    For Adam the exact step-2 update is -0.67. Stored in float16 (the default: the param's dtype),
    nu = (1 - b2) g^2 = 4e-9 is below float16's smallest subnormal (6e-8) and flushes to 0, so step
    2 divides mu_hat by eps alone: -9.5e4, which overflows float16 to -inf. Computing the
    denominator in float32 does not help once the stored moment is gone.
    """
    tx = make(nu_dtype=nu_dtype)
    params = {"w": jnp.zeros(3, jnp.float16)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full(3, 2e-3, jnp.float16)}, state, params)
    updates, _ = tx.update({"w": jnp.zeros(3, jnp.float16)}, state, params)
    assert all_finite(updates), updates
    # float16's 2e-3 is 0.0020008; the update is rounded to float16 (relative spacing 1e-3).
    np.testing.assert_allclose(np.asarray(updates["w"], np.float64), _step2_reference(kind), rtol=3e-3)
