"""Tests for gradchain/wrappers/loss_scaling.py: `dynamic_loss_scale` and `loss_scale`.

The scale and growth tracker are compared step by step with torch's `torch.amp.GradScaler("cpu")`
(driven with the same scaled gradients and the same planted overflow steps, around SGD with
momentum, so a skipped step that touched the momentum would show in the params) and with a float64
numpy transcription of torch's `_amp_update_scale_` rule; the float16 loop checks that unscaled
float16 gradients underflow to zero while scaled ones train.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from references.loss_scaling import ref_scales

import gradchain as gc
from gradchain import DynamicLossScaleState, dynamic_loss_scale, loss_scale, reduce_on_plateau

SHAPES = {"a": (3,), "b": (2, 4), "c": ()}
N = 120


def grad_trees(seed: int, n: int = N) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    scales = {"a": 1.0, "b": 1e-3, "c": 30.0}
    return [
        {k: np.asarray(rng.standard_normal(s) * scales[k], np.float32) for k, s in SHAPES.items()} for _ in range(n)
    ]


def planted(seed: int, n: int = N) -> list[str | None]:
    """Per step: None (finite), or which non-finite value to plant ("inf", "-inf", "nan")."""
    rng = np.random.default_rng(seed + 1)
    kinds: list[str | None] = [None] * n
    for start in (4, 5, 6, 30, 31, 77):  # runs of overflows, and single ones
        kinds[start] = "inf"
    for k in rng.choice(np.arange(40, n), size=10, replace=False):
        kinds[int(k)] = str(rng.choice(["inf", "-inf", "nan"]))
    return kinds


def plant(tree: dict[str, np.ndarray], kind: str | None, step: int) -> dict[str, np.ndarray]:
    if kind is None:
        return tree
    out = dict(tree)
    leaf = "ab"[step % 2]
    bad = out[leaf].copy().reshape(-1)
    bad[step % bad.size] = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}[kind]
    out[leaf] = bad.reshape(out[leaf].shape)
    return out


def run_torch(grads, kinds, params0, *, init_scale, growth_interval, growth_factor, backoff_factor):
    import torch  # only reached from tests that take the `torch` fixture

    params = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in params0.items()}
    opt = torch.optim.SGD(list(params.values()), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler(
        "cpu",
        init_scale=init_scale,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        growth_interval=growth_interval,
    )
    scaler.scale(torch.ones(()))  # creates the scale tensor
    history = []
    for t, g in enumerate(grads):
        scale = scaler._scale
        scaled = {k: torch.from_numpy(v) * scale for k, v in g.items()}
        scaled = {
            k: torch.from_numpy(v) for k, v in plant({k: v.numpy() for k, v in scaled.items()}, kinds[t], t).items()
        }
        for k, p in params.items():
            p.grad = scaled[k].reshape(p.shape).clone()
        scaler.step(opt)
        scaler.update()
        history.append(
            (
                np.float32(scaler.get_scale()),
                int(scaler._growth_tracker.item()),
                {k: p.detach().numpy().copy() for k, p in params.items()},
            )
        )
    return history


def run_gradchain(grads, kinds, params0, **kwargs):
    tx = dynamic_loss_scale(gc.sgd(0.1, momentum=0.9), **kwargs)
    params = {k: jnp.asarray(v) for k, v in params0.items()}
    state = tx.init(params)

    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    history = []
    for t, g in enumerate(grads):
        scaled = {k: np.asarray(jnp.asarray(v) * loss_scale(state)) for k, v in g.items()}
        params, state = step(plant(scaled, kinds[t], t), state, params)
        history.append((np.float32(loss_scale(state)), int(state.growth_tracker), jax.device_get(params)))
    return history, state, step


TORCH_CASES = [
    # init_scale, growth_interval, growth_factor, backoff_factor
    (2.0**10, 5, 2.0, 0.5),
    (2.0**15, 3, 2.0, 0.25),
    (1000.0, 4, 3.0, 0.3),  # not powers of two: unscaling rounds as in torch
    (2.0**125, 2, 2.0, 0.5),  # growth past float32's max is dropped; large gradients overflow on their own
    (8.0, 1, 1.5, 0.9),
]


@pytest.mark.parametrize(("init_scale", "growth_interval", "growth_factor", "backoff_factor"), TORCH_CASES)
def test_matches_torch_grad_scaler(init_scale, growth_interval, growth_factor, backoff_factor, torch):
    grads, kinds = grad_trees(0), planted(0)
    params0 = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    kw = dict(
        init_scale=init_scale,
        growth_interval=growth_interval,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
    )
    expected = run_torch(grads, kinds, params0, **kw)
    actual, state, _ = run_gradchain(grads, kinds, params0, min_scale=0.0, **kw)
    for t, ((s_t, n_t, p_t), (s_g, n_g, p_g)) in enumerate(zip(expected, actual, strict=True)):
        assert s_g == pytest.approx(s_t, rel=1e-6), f"step {t}: scale {s_g} vs torch {s_t}"
        assert n_g == n_t, f"step {t}: growth tracker {n_g} vs torch {n_t}"
        for k in SHAPES:
            mag = max(np.abs(p_t[k]).max(), 1e-30)
            np.testing.assert_allclose(p_g[k], p_t[k], rtol=0, atol=1e-6 * mag, err_msg=f"step {t} leaf {k}")
    # The planted steps (and, for the huge scale, natural overflows) were all skipped.
    skipped = sum(1 for t in range(N) if (expected[t][0] < (expected[t - 1][0] if t else init_scale)))
    assert int(state.num_skipped) == skipped >= sum(k is not None for k in kinds)


@pytest.mark.parametrize(("init_scale", "growth_interval", "growth_factor", "backoff_factor"), TORCH_CASES[:3])
@pytest.mark.parametrize("min_scale", [0.0, 1.0, 100.0])
def test_scale_rule_matches_numpy(init_scale, growth_interval, growth_factor, backoff_factor, min_scale):
    grads, kinds = grad_trees(1), planted(1)
    # Add a long run of overflows so that the floor is reached.
    kinds = [("nan" if 85 <= t < 110 else k) for t, k in enumerate(kinds)]
    params0 = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    actual, _, _ = run_gradchain(
        grads,
        kinds,
        params0,
        init_scale=init_scale,
        growth_interval=growth_interval,
        growth_factor=growth_factor,
        backoff_factor=backoff_factor,
        min_scale=min_scale,
    )
    expected = ref_scales(
        [k is None for k in kinds], init_scale, growth_interval, growth_factor, backoff_factor, min_scale
    )
    for t, ((s_e, n_e), (s_a, n_a, _)) in enumerate(zip(expected, actual, strict=True)):
        # gradchain rounds the factor to float32 before multiplying (torch multiplies by the double):
        # for a factor like 0.3, one float32 ulp per scale change, 25 changes in a row here.
        assert s_a == pytest.approx(s_e, rel=2e-6) and n_a == n_e, f"step {t}"
    if min_scale:
        assert actual[-12][0] == np.float32(min_scale)  # inside the long run of overflows: floored


def test_skipped_step_zero_updates_and_inner_untouched():
    # check_finite raises if it ever sees a non-finite gradient: the inner must not run at all.
    inner = gc.chain(gc.check_finite(), gc.adam(1e-2))
    tx = dynamic_loss_scale(inner, init_scale=4.0)
    params = {"w": jnp.ones(3), "h": jnp.ones(2, jnp.float16), "none": None}
    state = tx.init(params)
    step = jax.jit(tx.update)
    _, state = step({"w": jnp.ones(3), "h": jnp.ones(2, jnp.float16), "none": None}, state, params)
    bad = {"w": jnp.array([1.0, jnp.nan, 1.0]), "h": jnp.ones(2, jnp.float16), "none": None}
    updates, new_state = step(bad, state, params)
    assert (updates["w"] == 0).all() and (updates["h"] == 0).all() and updates["h"].dtype == jnp.float16
    assert updates["none"] is None
    for old, new in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(new_state.inner_state), strict=True):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
    assert loss_scale(new_state) == 2.0 and int(new_state.num_skipped) == 1 and int(new_state.growth_tracker) == 0


def test_unscaled_gradients_reach_inner_in_float32():
    # float16 gradients 2^-20 * S: representable scaled, not unscaled. The inner (identity) sees float32.
    seen = {}

    def spy_update(updates, state, params=None, **extra_args):
        seen.update(dtypes=jax.tree.map(lambda g: g.dtype, updates), extra=extra_args)
        return updates, state

    tx = dynamic_loss_scale(gc.GradientTransformation(lambda p: gc.EmptyState(), spy_update), init_scale=2.0**15)
    params = {"h": jnp.zeros(4, jnp.float16)}
    g = jnp.full(4, 2.0**-20 * 2.0**15, jnp.float16)
    updates, _ = tx.update({"h": g}, tx.init(params), params, value=1.5)
    assert seen["dtypes"]["h"] == jnp.float32 and seen["extra"] == {"value": 1.5}
    assert updates["h"].dtype == jnp.float16
    # 2^-20 is a float16 subnormal: the updates cast back to float16 keep it.
    assert (updates["h"] == jnp.float16(2.0**-20)).all()


def _f16_problem():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    w_true = rng.standard_normal((8, 1)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(x @ w_true)


def _f16_loss(params, x, y):
    # float16 compute, float32 master weights; the 1e-3 factor puts per-weight gradients below
    # float16's smallest subnormal (6e-8) in the backward pass.
    pred = x.astype(jnp.float16) @ params["w"].astype(jnp.float16) + params["b"].astype(jnp.float16)
    return (1e-3 * jnp.mean(jnp.square(pred - y.astype(jnp.float16))) / 2e4).astype(jnp.float32)


def test_float16_training_underflows_without_scaling_and_trains_with_it():
    x, y = _f16_problem()
    params0 = {"w": jnp.zeros((8, 1)), "b": jnp.zeros(1)}

    def train(tx, scaled: bool, steps: int = 150):
        state = tx.init(params0)

        @jax.jit
        def step(params, state):
            s = loss_scale(state) if scaled else jnp.float32(1.0)
            grads = jax.grad(lambda p: _f16_loss(p, x, y) * s)(params)
            updates, state = tx.update(grads, state, params)
            return gc.apply_updates(params, updates), state, grads

        params = params0
        for _ in range(steps):
            params, state, grads = step(params, state)
        return params, state, grads

    plain, _, grads = train(gc.adam(0.05), scaled=False)
    assert all((g == 0).all() for g in jax.tree.leaves(grads))  # underflowed: no training at all
    assert all((p == 0).all() for p in jax.tree.leaves(plain))

    # The true float32 gradient at step 0 is small but far from zero.
    true = jax.grad(lambda p: 1e-3 * jnp.mean(jnp.square(x @ p["w"] + p["b"] - y)) / 2e4)(params0)
    assert np.abs(np.asarray(true["w"])).max() > 1e-8

    tx = dynamic_loss_scale(gc.adam(0.05), init_scale=2.0**15, growth_interval=20)
    trained, state, _ = train(tx, scaled=True)
    loss0 = float(_f16_loss(params0, x, y))
    loss1 = float(_f16_loss(trained, x, y))
    assert loss1 < 1e-2 * loss0, (loss0, loss1)
    # The scale grew until the float16 backward overflowed, then settled (some steps were skipped).
    assert int(state.num_skipped) >= 1 and float(loss_scale(state)) >= 2.0**15


def test_scaled_float16_gradients_match_float32_gradients():
    x, y = _f16_problem()
    params = {"w": jnp.full((8, 1), 0.1), "b": jnp.zeros(1)}
    tx = dynamic_loss_scale(gc.identity(), init_scale=2.0**15)
    state = tx.init(params)
    grads = jax.grad(lambda p: _f16_loss(p, x, y) * loss_scale(state))(params)
    unscaled, _ = tx.update(grads, state, params)
    true = jax.grad(lambda p: 1e-3 * jnp.mean(jnp.square(x @ p["w"] + p["b"] - y)) / 2e4)(params)
    for k in params:
        np.testing.assert_allclose(unscaled[k], true[k], rtol=0, atol=2e-2 * np.abs(true[k]).max())


def test_jit_no_retrace_and_abstract_init():
    traces = []
    tx = dynamic_loss_scale(gc.adamw(1e-3), init_scale=8.0, growth_interval=2)
    params = {"a": jnp.ones(3), "h": jnp.ones((2, 2), jnp.float16), "none": None}

    @jax.jit
    def step(grads, state, params):
        traces.append(1)
        return tx.update(grads, state, params)

    state = tx.init(params)
    for t in range(6):
        g = jax.tree.map(lambda p: jnp.full_like(p, jnp.inf if t == 2 else 1.0), params)
        _, state = step(g, state, params)
    assert len(traces) == 1 and step._cache_size() == 1
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    shapes = jax.eval_shape(tx.init, abstract)
    assert isinstance(shapes, DynamicLossScaleState) and shapes.loss_scale.dtype == jnp.float32
    assert jax.tree.structure(shapes) == jax.tree.structure(tx.init(params))


def test_inner_optax_state_keeps_dtypes():
    # optax's float16 moments would be promoted by float32 gradients; the wrapper keeps them.
    tx = dynamic_loss_scale(optax.adam(1e-3), init_scale=4.0)
    params = {"h": jnp.ones(3, jnp.float16)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(3):
        _, state = step({"h": jnp.ones(3, jnp.float16)}, state, params)
    assert state.inner_state[0].mu["h"].dtype == jnp.float16 and step._cache_size() == 1


def test_hyperparams_and_set_without_recompile():
    tx = dynamic_loss_scale(gc.sgd(0.1), init_scale=4.0, growth_interval=1, growth_factor=2.0)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    hp = gc.hyperparams(state)
    assert {"growth_factor", "backoff_factor", "min_scale", "learning_rate"} <= set(hp)
    step = jax.jit(tx.update)
    _, state = step({"w": jnp.ones(2)}, state, params)
    assert loss_scale(state) == 8.0
    state = gc.set_hyperparams(state, growth_factor=4.0)
    _, state = step({"w": jnp.ones(2)}, state, params)
    assert loss_scale(state) == 32.0 and step._cache_size() == 1


def test_extra_args_reach_inner_and_loss_scale_is_found_nested():
    inner = gc.chain(gc.sgd(1.0), reduce_on_plateau(factor=0.5, patience=0))
    tx = gc.chain(gc.clip_by_global_norm(1e30), dynamic_loss_scale(inner, init_scale=2.0))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    assert loss_scale(state) == 2.0
    for loss in [1.0, 2.0]:
        updates, state = tx.update({"w": jnp.full(2, 2.0)}, state, params, value=loss)
    # unscaled gradient 1 (scale 2), sgd -1, plateau halved after the second (worse) value.
    assert jnp.allclose(updates["w"], -0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"init_scale": 0.0}, ValueError, "init_scale"),
        ({"init_scale": float("inf")}, ValueError, "init_scale"),
        ({"init_scale": 1e39}, ValueError, "init_scale"),
        ({"growth_interval": 0}, ValueError, "growth_interval"),
        ({"growth_interval": 2.5}, TypeError, "growth_interval"),
        ({"growth_factor": 0.5}, ValueError, "growth_factor"),
        ({"backoff_factor": 1.0}, ValueError, "backoff_factor"),
        ({"backoff_factor": 0.0}, ValueError, "backoff_factor"),
        ({"min_scale": -1.0}, ValueError, "min_scale"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        dynamic_loss_scale(gc.sgd(0.1), **kwargs)


def test_bad_inner_and_missing_state():
    with pytest.raises(TypeError, match="inner"):
        dynamic_loss_scale(0.1)
    with pytest.raises(ValueError, match="dynamic_loss_scale"):
        loss_scale(gc.sgd(0.1).init({"w": jnp.zeros(1)}))
    with pytest.raises(ValueError, match="backoff_factor"):
        gc.set_hyperparams(dynamic_loss_scale(gc.sgd(0.1)).init({"w": jnp.zeros(1)}), backoff_factor=1.5)
