"""The protocol: GradientTransformation, chain / named_chain, identity, stateless, apply_updates."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from reference import assert_trees_close, assert_trees_equal

import gradchain as gc

SHAPES = {"w": (3, 4), "b": (4,), "seq": [(2, 3, 2), (5,)]}


def _tree_from(fn: Callable[[tuple[int, ...]], Any]) -> Any:
    return {"w": fn(SHAPES["w"]), "b": fn(SHAPES["b"]), "seq": [fn(s) for s in SHAPES["seq"]]}


def make_params(seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    return _tree_from(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32))


def make_grads(steps: int, seed: int = 1) -> list[Any]:
    """A fixed pseudo-random sequence of gradient trees (independent of the params)."""
    rng = np.random.default_rng(seed)
    return [_tree_from(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32)) for _ in range(steps)]


# ---------------------------------------------------------------------------------------------------
# GradientTransformation


def test_gradient_transformation_is_a_namedtuple_of_init_and_update():
    tx = gc.sgd(0.1)
    assert isinstance(tx, gc.GradientTransformation)
    assert isinstance(tx, tuple)
    assert gc.GradientTransformation._fields == ("init", "update")
    init, update = tx
    assert init is tx.init and update is tx.update
    # A user-built one works with the rest of the library.
    custom = gc.GradientTransformation(lambda p: gc.EmptyState(), lambda u, s, p=None, **kw: (u, s))
    tx = gc.chain(custom, gc.scale(2.0))
    updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(None))
    np.testing.assert_array_equal(updates["w"], 2.0)


def test_empty_state_is_empty():
    assert gc.EmptyState() == ()
    assert jax.tree.leaves(gc.EmptyState()) == []


# ---------------------------------------------------------------------------------------------------
# chain / named_chain


def _ingredients() -> list[gc.GradientTransformation]:
    return [
        gc.clip_by_global_norm(2.0),
        gc.trace(0.9),
        gc.scale_by_adam(b1=0.8, b2=0.99),
        gc.add_decayed_weights(0.01),
        gc.scale_by_learning_rate(0.05),
    ]


def _by_hand(ingredients, params, grads):
    states = [tx.init(params) for tx in ingredients]
    out = []
    for g in grads:
        u = g
        for i, tx in enumerate(ingredients):
            u, states[i] = tx.update(u, states[i], params)
        params = gc.apply_updates(params, u)
        out.append((u, params))
    return out, states


def _assert_steps_match(tx, state, params, grads, expected, *, check_params: bool = True):
    """Run `tx` as an optimizer from `state`; every step's updates (and params) equal `expected`'s."""
    p = params
    for (u_ref, p_ref), g in zip(expected, grads, strict=True):
        u, state = tx.update(g, state, p)
        p = gc.apply_updates(p, u)
        assert_trees_equal(u, u_ref)
        if check_params:
            assert_trees_equal(p, p_ref)
    return state


def test_chain_equals_applying_ingredients_one_by_one_bit_for_bit():
    params, grads = make_params(), make_grads(25)
    expected, expected_states = _by_hand(_ingredients(), params, grads)

    tx = gc.chain(*_ingredients())
    state = tx.init(params)
    assert isinstance(state, gc.ChainState) and len(state) == 5
    state = _assert_steps_match(tx, state, params, grads, expected)
    assert_trees_equal(tuple(state), tuple(expected_states))


def test_named_chain_state_is_a_mapping_and_matches_chain_bit_for_bit():
    names = ["clip", "momentum", "adam", "decay", "lr"]
    params, grads = make_params(), make_grads(20)
    expected, expected_states = _by_hand(_ingredients(), params, grads)

    tx = gc.named_chain(*zip(names, _ingredients(), strict=True))
    state = tx.init(params)
    assert isinstance(state, gc.NamedChainState) and list(state) == names
    state = _assert_steps_match(tx, state, params, grads, expected)
    assert list(state) == names
    for name, ref in zip(names, expected_states, strict=True):
        assert_trees_equal(state[name], ref)


def test_nested_chains_compose():
    params, grads = make_params(), make_grads(20)
    expected, _ = _by_hand(_ingredients(), params, grads)
    a, b, c, d, e = _ingredients()
    tx = gc.chain(gc.chain(a, b), gc.named_chain(("adam", c), ("rest", gc.chain(d, e))))
    _assert_steps_match(tx, tx.init(params), params, grads, expected, check_params=False)


def test_empty_chain_is_identity():
    tx = gc.chain()
    g = make_grads(1)[0]
    u, state = tx.update(g, tx.init(make_params()))
    assert state == ()
    assert_trees_equal(u, g)


@pytest.mark.parametrize(
    "names, duplicated",
    [(["a", "b", "a"], "a"), (["lr", "lr"], "lr"), (["x", "adam", "y", "adam"], "adam")],
)
def test_named_chain_duplicate_names_raise(names, duplicated):
    transforms = [(n, gc.identity()) for n in names]
    with pytest.raises(ValueError, match=rf"unique.*'{duplicated}'"):
        gc.named_chain(*transforms)


def test_named_chain_non_string_name_raises():
    with pytest.raises(TypeError, match=r"names must be strings.*3"):
        gc.named_chain(("a", gc.identity()), (3, gc.identity()))


@pytest.mark.parametrize("bad", ["oops", 3, None, (lambda p: p, 1), gc.sgd])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_chain_non_transformation_raises_naming_position(bad, position):
    transforms = [gc.identity(), gc.scale(1.0)]
    transforms.insert(position, bad)
    with pytest.raises(TypeError, match=rf"chain: transform {position} must be a GradientTransformation"):
        gc.chain(*transforms)


def test_named_chain_non_transformation_raises_naming_it():
    with pytest.raises(TypeError, match=r"transform 'second' must be a GradientTransformation"):
        gc.named_chain(("first", gc.identity()), ("second", "not a transform"))


def test_chain_state_length_mismatch_raises():
    tx = gc.chain(gc.trace(0.9), gc.scale_by_adam(), gc.scale_by_learning_rate(0.1))
    params = make_params()
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"3 entries.*length 2"):
        tx.update(make_grads(1)[0], state[:2], params)
    with pytest.raises(ValueError, match=r"3 entries.*length 4"):
        tx.update(make_grads(1)[0], (*state, gc.EmptyState()), params)
    with pytest.raises(ValueError, match=r"3 entries.*list"):
        tx.update(make_grads(1)[0], list(state), params)


def test_named_chain_state_keys_mismatch_raises():
    tx = gc.named_chain(("m", gc.trace(0.9)), ("lr", gc.scale_by_learning_rate(0.1)))
    params = make_params()
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"keys \['m', 'lr'\], got \['m'\]"):
        tx.update(make_grads(1)[0], {"m": state["m"]}, params)
    with pytest.raises(ValueError, match=r"keys \['m', 'lr'\], got tuple"):
        tx.update(make_grads(1)[0], tuple(state.values()), params)


# ---------------------------------------------------------------------------------------------------
# extra args: every public transformation and optimizer ignores those it does not use

# A constructor with simple valid arguments for every public transformation / optimizer.
CONSTRUCTORS: dict[str, Callable[[], gc.GradientTransformation]] = {
    "chain": lambda: gc.chain(gc.clip(1.0), gc.sgd(0.1, momentum=0.9)),
    "named_chain": lambda: gc.named_chain(("clip", gc.clip(1.0)), ("sgd", gc.sgd(0.1))),
    "identity": gc.identity,
    "stateless": lambda: gc.stateless(lambda u, p: jax.tree.map(lambda x, y: 2 * x + y, u, p)),
    "scale": lambda: gc.scale(-0.5),
    "scale_by_learning_rate": lambda: gc.scale_by_learning_rate(0.1),
    "scale_by_schedule": lambda: gc.scale_by_schedule(lambda count: 0.1 / (1.0 + count)),
    "trace": lambda: gc.trace(0.9, nesterov=True),
    "ema": lambda: gc.ema(0.9),
    "scale_by_rss": gc.scale_by_rss,
    "scale_by_rms": lambda: gc.scale_by_rms(centered=True),
    "scale_by_adam": gc.scale_by_adam,
    "scale_by_amsgrad": gc.scale_by_amsgrad,
    "scale_by_adamax": gc.scale_by_adamax,
    "scale_by_nadam": gc.scale_by_nadam,
    "add_decayed_weights": lambda: gc.add_decayed_weights(0.1),
    "add_l2_regularization": lambda: gc.add_l2_regularization(0.1),
    "clip": lambda: gc.clip(0.5),
    "clip_by_global_norm": lambda: gc.clip_by_global_norm(1.0),
    "clip_by_block_rms": lambda: gc.clip_by_block_rms(0.5),
    "check_finite": gc.check_finite,
    "sgd": lambda: gc.sgd(0.1, momentum=0.9, weight_decay=1e-3),
    "adagrad": lambda: gc.adagrad(0.1, lr_decay=0.01),
    "rmsprop": lambda: gc.rmsprop(0.01, centered=True, momentum=0.9),
    "adam": lambda: gc.adam(1e-3, weight_decay=1e-2),
    "adamw": lambda: gc.adamw(1e-3),
    "nadam": lambda: gc.nadam(1e-3),
    "nadamw": lambda: gc.nadamw(1e-3),
    "amsgrad": lambda: gc.amsgrad(1e-3),
    "adamax": lambda: gc.adamax(2e-3),
    "adamaxw": lambda: gc.adamaxw(2e-3),
    "scale_by_sign": gc.scale_by_sign,
    "scale_by_lion": gc.scale_by_lion,
    "scale_by_factored_rms": lambda: gc.scale_by_factored_rms(min_dim_size_to_factor=2),
    "scale_by_param_block_rms": gc.scale_by_param_block_rms,
    "lion": lambda: gc.lion(1e-3),
    "adafactor": lambda: gc.adafactor(1e-2, min_dim_size_to_factor=2, momentum=0.9, weight_decay_rate=1e-3),
    # wrappers
    "masked": lambda: gc.masked(gc.adam(1e-3), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    "partition": lambda: gc.partition(
        {"a": gc.sgd(0.1), "b": gc.adam(1e-3)}, lambda p: jax.tree.map(lambda x: "a" if x.ndim > 1 else "b", p)
    ),
    "freeze": lambda: gc.freeze(True),
    "multi_steps": lambda: gc.multi_steps(gc.adam(1e-3), 2),
    "apply_if_finite": lambda: gc.apply_if_finite(gc.sgd(0.1), 3),
    "skip_on_spike": lambda: gc.skip_on_spike(gc.sgd(0.1), 3.0),
    "dynamic_loss_scale": lambda: gc.dynamic_loss_scale(gc.sgd(0.1)),
    "zero_nans": gc.zero_nans,
    "keep_params_nonnegative": gc.keep_params_nonnegative,
    "ema_params": lambda: gc.ema_params(gc.sgd(0.1), 0.9),
    "swa": lambda: gc.swa(gc.sgd(0.1), 1),
    "lookahead": lambda: gc.lookahead(gc.sgd(0.1), 2, 0.5),
    "reduce_on_plateau": lambda: gc.reduce_on_plateau(patience=1),
    "monitored": lambda: gc.monitored(gc.adam(1e-3)),
    "from_optax": lambda: gc.from_optax(optax.adam(1e-3)),
    # the rest of the catalogue
    "scale_by_belief": gc.scale_by_belief,
    "scale_by_yogi": gc.scale_by_yogi,
    "scale_by_radam": gc.scale_by_radam,
    "scale_by_adan": gc.scale_by_adan,
    "scale_by_novograd": gc.scale_by_novograd,
    "adabelief": lambda: gc.adabelief(1e-3),
    "yogi": lambda: gc.yogi(1e-3),
    "radam": lambda: gc.radam(1e-3),
    "adan": lambda: gc.adan(1e-3),
    "novograd": lambda: gc.novograd(1e-3),
    "scale_by_adadelta": gc.scale_by_adadelta,
    "scale_by_rprop": lambda: gc.scale_by_rprop(0.01),
    "scale_by_asgd": lambda: gc.scale_by_asgd(0.01),
    "add_noise": lambda: gc.add_noise(0.01, 0.55, 0),
    "scale_by_optimistic_gradient": gc.scale_by_optimistic_gradient,
    "scale_by_polyak": gc.scale_by_polyak,
    "scale_by_trust_ratio": gc.scale_by_trust_ratio,
    "centralize": gc.centralize,
    "scale_by_param_block_norm": gc.scale_by_param_block_norm,
    "adaptive_grad_clip": lambda: gc.adaptive_grad_clip(0.1),
    "scale_by_sm3": gc.scale_by_sm3,
    "scale_by_fromage_step": lambda: gc.scale_by_fromage_step(0.01),
    "scale_by_lbfgs": gc.scale_by_lbfgs,
    "scale_by_zoom_linesearch": lambda: gc.scale_by_zoom_linesearch(max_linesearch_steps=10),
    "scale_by_backtracking_linesearch": lambda: gc.scale_by_backtracking_linesearch(max_backtracking_steps=10),
    "adadelta": gc.adadelta,
    "rprop": lambda: gc.rprop(0.01),
    "sign_sgd": lambda: gc.sign_sgd(0.01),
    "signum": lambda: gc.signum(0.01),
    "asgd": lambda: gc.asgd(0.01),
    "noisy_sgd": lambda: gc.noisy_sgd(0.01),
    "optimistic_gradient_descent": lambda: gc.optimistic_gradient_descent(0.01),
    "optimistic_adam": lambda: gc.optimistic_adam(0.01),
    "polyak_sgd": gc.polyak_sgd,
    "lars": lambda: gc.lars(0.1),
    "lamb": lambda: gc.lamb(1e-3),
    "fromage": lambda: gc.fromage(0.01),
    "sm3": lambda: gc.sm3(0.1),
    "lbfgs": gc.lbfgs,
}


def _quadratic(params):
    return sum(jnp.sum(x**2) for x in jax.tree.leaves(params))


def _line_search_args(params, grads):
    del grads
    value, grad = jax.value_and_grad(_quadratic)(params)
    return {"value": value, "grad": grad, "value_fn": _quadratic}


# Extra args a transformation needs: both runs get them, the second also unknown ones.
NEEDS_EXTRA: dict[str, Callable[[Any, Any], dict]] = {
    **{
        name: lambda p, g: {"value": 1.0}
        for name in ("polyak_sgd", "scale_by_polyak", "skip_on_spike", "reduce_on_plateau")
    },
    **{name: _line_search_args for name in ("lbfgs", "scale_by_zoom_linesearch", "scale_by_backtracking_linesearch")},
}

# Public names that are not transformation constructors.
NOT_TRANSFORMATIONS = {
    "GradientTransformation",
    "EmptyState",
    "Params",
    "Updates",
    "OptState",
    "Schedule",
    "ScalarOrSchedule",
    "apply_updates",
    "Packed",
    "pack",
    "unpack",
    "Hyperparams",
    "hyperparams",
    "set_hyperparams",
    "schedules",
    "tree",
    # helpers that read or rebuild states, and builders of labels and masks
    "reset_group",
    "labels_by_path",
    "mask_by_path",
    "has_updated",
    "loss_scale",
    "averaged_params",
    "slow_params",
    "metrics",
    "to_optax",  # returns an optax transformation (tested in test_optax_interop.py)
    "asgd_averaged_params",
    # the training doctor
    "lr_range_test",
    "LRRangeResult",
    "diagnose",
    "Diagnosis",
    "Finding",
    "value_and_grad_from_state",
    "find_linesearch_state",
    "minimize",
    "MinimizeResult",
    # the extension contract: builders of ingredients and wrappers, not transformations
    "with_extra_args_support",
    "safe_increment",
    "elementwise",
    "Slot",
    "HyperparamSpec",
    "Check",
}


def _is_state_class(name: str) -> bool:
    obj = getattr(gc, name)
    return isinstance(obj, type) and name.endswith("State")


PUBLIC_TRANSFORMATIONS = sorted(n for n in gc.__all__ if n not in NOT_TRANSFORMATIONS and not _is_state_class(n))


def test_constructor_table_covers_the_public_api():
    assert set(CONSTRUCTORS) <= set(gc.__all__)
    missing = sorted(set(PUBLIC_TRANSFORMATIONS) - set(CONSTRUCTORS))
    assert not missing, f"add these public names to CONSTRUCTORS (or NOT_TRANSFORMATIONS): {missing}"


@pytest.mark.parametrize("name", PUBLIC_TRANSFORMATIONS)
def test_unknown_extra_args_are_ignored(name):
    if name not in CONSTRUCTORS:
        pytest.fail(f"no constructor for public name {name!r} in CONSTRUCTORS")
    tx = CONSTRUCTORS[name]()
    assert isinstance(tx, gc.GradientTransformation)
    params = make_params()
    s_plain = s_extra = tx.init(params)
    for g in make_grads(3):
        value = NEEDS_EXTRA.get(name, lambda p, g: {})(params, g)
        u_plain, s_plain = tx.update(g, s_plain, params, **value)
        u_extra, s_extra = tx.update(g, s_extra, params, **value, loss=1.0, foo="bar")
        assert_trees_equal(u_extra, u_plain)
        assert_trees_equal(s_extra, s_plain)


def test_extra_args_reach_transformations_that_accept_them():
    seen: list[dict] = []

    def update(updates, state, params=None, **extra_args):
        seen.append(extra_args)
        return updates, state

    spy = gc.GradientTransformation(lambda p: gc.EmptyState(), update)
    for tx in (gc.chain(gc.sgd(0.1), spy), gc.named_chain(("sgd", gc.sgd(0.1)), ("spy", spy))):
        params = make_params()
        tx.update(make_grads(1)[0], tx.init(params), params, loss=1.0, foo="bar")
        assert seen.pop() == {"loss": 1.0, "foo": "bar"}


def test_transformation_without_extra_args_gets_them_dropped():
    calls = []

    def update(updates, state, params=None):  # optax-style: no **extra_args
        calls.append(1)
        return jax.tree.map(lambda u: 3 * u, updates), state

    plain = gc.GradientTransformation(lambda p: gc.EmptyState(), update)
    tx = gc.chain(plain, gc.scale(2.0))
    g = make_grads(1)[0]
    u, _ = tx.update(g, tx.init(None), None, loss=1.0, foo="bar")
    assert calls == [1]
    assert_trees_equal(u, jax.tree.map(lambda x: 2.0 * (3 * x), g))


# ---------------------------------------------------------------------------------------------------
# interplay with optax


# optax forms Adam's `1 - b` in Python double precision but `1 - b**t` in float32, so the two do not
# cancel exactly at step 1 the way gradchain's (both float32) do: optax's first Adam step is off by
# ~7e-6 relative (~1e-5 over 100 steps against a float64 transcription, gradchain ~3e-6, from the
# float32 rounding of `b2**t`). Comparisons with optax's Adam use this tolerance.
OPTAX_ADAM_RTOL = 2e-5


def test_optax_transformation_inside_gc_chain():
    """optax.scale_by_adam (no **extra_args) inside gc.chain: extra args dropped, numbers as gc.adam's."""
    params, grads = make_params(), make_grads(100)
    tx = gc.chain(optax.scale_by_adam(b1=0.9, b2=0.99), gc.scale_by_learning_rate(1e-2))
    ref = gc.adam(1e-2, b1=0.9, b2=0.99)
    state, ref_state = tx.init(params), ref.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, loss=1.0, foo="bar"))
    ref_step = jax.jit(ref.update)
    for g in grads:
        u, state = step(g, state, params)
        u_ref, ref_state = ref_step(g, ref_state, params)
        assert_trees_close(u, u_ref, rtol=OPTAX_ADAM_RTOL)
    assert isinstance(state[0], optax.ScaleByAdamState)


def test_gc_optimizer_inside_optax_chain_and_with_optax_apply_updates():
    params, grads = make_params(), make_grads(30)
    inner = gc.adamw(1e-2, weight_decay=1e-2)
    tx = optax.chain(optax.identity(), inner)
    state, ref_state = tx.init(params), inner.init(params)
    p = p_ref = params
    for g in grads:
        u, state = tx.update(g, state, p)
        u_ref, ref_state = inner.update(g, ref_state, p_ref)
        p = optax.apply_updates(p, u)
        p_ref = gc.apply_updates(p_ref, u_ref)
        assert_trees_equal(u, u_ref)
        assert_trees_equal(p, p_ref)
    assert_trees_equal(state[1], ref_state)


def test_gc_clip_and_adam_match_optax_over_100_steps():
    params, grads = make_params(), [jax.tree.map(lambda x: 3 * x, g) for g in make_grads(100)]
    ours = gc.chain(gc.clip_by_global_norm(4.0), gc.adam(1e-2))
    theirs = optax.chain(optax.clip_by_global_norm(4.0), optax.adam(1e-2))
    s1, s2 = ours.init(params), theirs.init(params)
    step1, step2 = jax.jit(ours.update), jax.jit(theirs.update)
    for g in grads:
        u1, s1 = step1(g, s1, params)
        u2, s2 = step2(g, s2, params)
        assert_trees_close(u1, u2, rtol=OPTAX_ADAM_RTOL)


# ---------------------------------------------------------------------------------------------------
# identity, stateless


def test_identity_returns_updates_unchanged():
    tx = gc.identity()
    assert tx.init(make_params()) == gc.EmptyState()
    for g in make_grads(3):
        u, state = tx.update(g, gc.EmptyState(), None, loss=2.0)
        assert state == gc.EmptyState()
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(g), strict=True):
            assert a is b


def test_stateless_passes_updates_and_params():
    received = []

    def fn(updates, params):
        received.append(params)
        return jax.tree.map(lambda u, p: u * p, updates, params)

    tx = gc.stateless(fn)
    params, g = make_params(), make_grads(1)[0]
    assert tx.init(params) == gc.EmptyState()
    u, state = tx.update(g, tx.init(params), params, foo="bar")
    assert state == gc.EmptyState()
    assert received[-1] is params
    assert_trees_equal(u, jax.tree.map(lambda a, b: a * b, g, params))

    halve = gc.stateless(lambda updates, params: jax.tree.map(lambda x: x / 2, updates))
    u, _ = halve.update(g, halve.init(None))  # params default to None
    assert_trees_equal(u, jax.tree.map(lambda x: x / 2, g))


# ---------------------------------------------------------------------------------------------------
# apply_updates

NP_DTYPES = {jnp.float32: np.float32, jnp.float16: np.float16, jnp.bfloat16: ml_dtypes.bfloat16}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_apply_updates_keeps_param_dtype(dtype):
    rng = np.random.default_rng(0)
    p32 = rng.normal(size=(7, 5)).astype(np.float32)
    u32 = (1e-2 * rng.normal(size=(7, 5))).astype(np.float32)
    p = jnp.asarray(p32).astype(dtype)
    new = gc.apply_updates({"w": p}, {"w": jnp.asarray(u32)})["w"]
    assert new.dtype == dtype
    # The sum is formed in float32 and rounded once to the param's dtype.
    expected = (np.asarray(p).astype(np.float32) + u32).astype(NP_DTYPES[dtype])
    np.testing.assert_array_equal(np.asarray(new), expected)


def test_apply_updates_mixed_dtypes_nested_containers_and_none():
    params = {
        "a": [jnp.ones(3, jnp.bfloat16), None, (jnp.ones((2, 2), jnp.float16), jnp.ones(1))],
        "b": {"c": None, "d": jnp.full((2,), 2.0)},
        "e": (None,),
    }
    updates = {
        "a": [jnp.full(3, 0.5), None, (jnp.full((2, 2), -0.25), jnp.full(1, 3.0, jnp.float16))],
        "b": {"c": None, "d": jnp.full((2,), -1.0)},
        "e": (None,),
    }
    new = gc.apply_updates(params, updates)
    assert jax.tree.structure(new, is_leaf=lambda x: x is None) == jax.tree.structure(
        params, is_leaf=lambda x: x is None
    )
    assert new["a"][1] is None and new["b"]["c"] is None and new["e"] == (None,)
    assert isinstance(new["a"], list) and isinstance(new["a"][2], tuple)
    assert new["a"][0].dtype == jnp.bfloat16 and (np.asarray(new["a"][0], np.float32) == 1.5).all()
    assert new["a"][2][0].dtype == jnp.float16 and (np.asarray(new["a"][2][0]) == 0.75).all()
    assert new["a"][2][1].dtype == jnp.float32 and (np.asarray(new["a"][2][1]) == 4.0).all()
    assert (np.asarray(new["b"]["d"]) == 1.0).all()


def test_apply_updates_under_jit_equals_eager():
    params, g = make_params(), make_grads(1)[0]
    assert_trees_equal(jax.jit(gc.apply_updates)(params, g), gc.apply_updates(params, g))


def test_apply_updates_structure_mismatch_raises():
    # jax's own message names the key today; gradchain's check_same_structure would say ['b'].
    with pytest.raises(ValueError, match=r"(leaf |: )b\b|key sets is\s+b\b"):
        gc.apply_updates({"a": jnp.ones(2), "b": jnp.ones(2)}, {"a": jnp.ones(2)})


@pytest.mark.parametrize("update_shape", [(3, 2), (3,), (1, 2)])
def test_apply_updates_shape_mismatch_raises_naming_the_leaf(update_shape):
    """An update of another shape must not broadcast the param into a new shape (nor fail unnamed)."""
    params = {"layer": {"w": jnp.ones(2), "b": jnp.ones(1)}}
    updates = {"layer": {"w": jnp.ones(update_shape), "b": jnp.ones(1)}}
    with pytest.raises(ValueError, match=re.escape("layer/w")):
        gc.apply_updates(params, updates)


class _Pair(NamedTuple):
    x: jax.Array
    y: jax.Array


def test_apply_updates_namedtuple_params():
    new = gc.apply_updates(_Pair(jnp.ones(2), jnp.zeros(1)), _Pair(jnp.ones(2), jnp.ones(1)))
    assert isinstance(new, _Pair)
    np.testing.assert_array_equal(new.x, 2.0)
    np.testing.assert_array_equal(new.y, 1.0)


def test_chain_gives_an_ingredient_the_extra_args_its_signature_names():
    seen = {}

    def update(updates, state, params=None, *, value):
        seen["value"] = value
        return updates, state

    keyword_only = gc.GradientTransformation(lambda p: gc.EmptyState(), update)
    plain = gc.GradientTransformation(lambda p: gc.EmptyState(), lambda u, s, p=None: (u, s))
    tx = gc.chain(plain, keyword_only)
    params = {"w": jnp.ones(2)}
    tx.update(params, tx.init(params), params, value=3.0, other=1)
    assert seen == {"value": 3.0}


def test_named_chain_with_unsorted_names_runs_under_jit():
    # A jitted step gives the state back in the names' order (a plain dict would come back sorted).
    tx = gc.named_chain(("clip", gc.clip_by_global_norm(1.0)), ("adam", gc.adam(1e-3)))
    params = {"w": jnp.ones(3)}
    step = jax.jit(lambda g, s: tx.update(g, s, params))
    state = tx.init(params)
    for _ in range(2):
        updates, state = step(params, state)
    assert list(state) == ["clip", "adam"] and updates["w"].shape == (3,)
