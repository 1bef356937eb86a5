"""Tests for gradchain/wrappers/plateau.py: `reduce_on_plateau`.

A 200-step loss sequence with plateaus, improvements, noise and spikes drives gradchain, torch's
`ReduceLROnPlateau` (on an SGD optimizer) and a float64 numpy transcription of torch's rule; the
learning rate `base_lr * scale` must agree at every step, for several parameter combinations
(cooldown, rel/abs threshold, min/max mode, a floor, torch's eps). The same runs are compared with
`optax.contrib.reduce_on_plateau` where the two define the same thing (optax's patience is torch's
plus one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from references.plateau import ref_plateau

import gradchain as gc
from gradchain import ReduceOnPlateauState, reduce_on_plateau

BASE_LR = 0.1
N = 200


def loss_sequence(seed: int, n: int = N) -> np.ndarray:
    """Segments: steady decrease, flat plateaus with small noise, jumps up, tiny improvements."""
    rng = np.random.default_rng(seed)
    out, level = [], 10.0
    while len(out) < n:
        kind = rng.integers(4)
        length = int(rng.integers(3, 25))
        for _ in range(length):
            if kind == 0:
                level *= 0.9
                out.append(level)
            elif kind == 1:
                out.append(level * (1 + 0.002 * abs(rng.standard_normal())))  # plateau just above best
            elif kind == 2:
                out.append(level * (1.5 + rng.random()))  # spike
            else:
                level *= 1 - 3e-4  # improvements below/around the threshold, some above
                out.append(level)
    return np.asarray(out[:n], np.float32)


def torch_lrs(values, *, factor, patience, threshold, threshold_mode, mode, cooldown, min_lr, eps):
    import torch  # only reached from tests that take the `torch` fixture

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode=mode,
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_lr=min_lr,
        eps=eps,
    )
    lrs = []
    for v in values:
        sched.step(float(v))
        lrs.append(opt.param_groups[0]["lr"])
    return np.asarray(lrs)


def gradchain_scales(values, **kwargs):
    tx = reduce_on_plateau(**kwargs)
    state = tx.init({"w": jnp.zeros(2)})

    def body(state, v):
        _, state = tx.update({"w": jnp.ones(2)}, state, value=v)
        return state, state.scale

    _, scales = jax.jit(lambda s, vs: jax.lax.scan(body, s, vs))(state, jnp.asarray(values))
    return np.asarray(scales, np.float64)


# factor, patience, threshold, threshold_mode, mode, cooldown, min_lr, eps (torch's, in lr units), seed
CASES = [
    (0.1, 10, 1e-4, "rel", "min", 0, 0.0, 1e-8, 0),  # torch's defaults
    (0.5, 3, 1e-4, "rel", "min", 0, 0.0, 1e-8, 1),
    (0.5, 3, 1e-3, "rel", "min", 4, 0.0, 1e-8, 2),  # cooldown
    (0.7, 2, 0.05, "abs", "min", 0, 0.0, 1e-8, 3),  # absolute threshold
    (0.5, 1, 0.01, "abs", "min", 2, 1e-3, 1e-8, 4),  # abs + cooldown + a floor (min_lr)
    (0.3, 0, 1e-4, "rel", "min", 0, 2e-3, 1e-8, 5),  # patience 0, floor reached
    (0.5, 4, 1e-3, "rel", "max", 1, 0.0, 1e-8, 6),  # max mode
    (0.6, 2, 0.1, "abs", "max", 3, 1e-4, 1e-8, 7),
    (0.1, 2, 1e-4, "rel", "min", 0, 0.0, 1e-8, 8),  # lr falls to 1e-8: torch's eps stops it there
    (0.1, 2, 1e-4, "rel", "min", 0, 0.0, 1e-4, 9),  # a large eps: reductions below 1e-4 are ignored
]


def _values(mode: str, seed: int) -> np.ndarray:
    values = loss_sequence(seed)
    return values if mode == "min" else (1.0 / values).astype(np.float32)


@pytest.mark.parametrize(
    ("factor", "patience", "threshold", "threshold_mode", "mode", "cooldown", "min_lr", "eps", "seed"), CASES
)
def test_matches_torch_step_for_step(
    factor, patience, threshold, threshold_mode, mode, cooldown, min_lr, eps, seed, torch
):
    values = _values(mode, seed)
    kw = dict(
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        mode=mode,
        cooldown=cooldown,
    )
    expected, margin = ref_plateau(values, base_lr=BASE_LR, min_lr=min_lr, eps=eps, **kw)
    # No comparison is a near tie that float32 arithmetic could flip: the test is decisive.
    assert margin > 1e-5, margin
    np.testing.assert_allclose(torch_lrs(values, min_lr=min_lr, eps=eps, **kw), expected, rtol=1e-12)
    scales = gradchain_scales(values, min_scale=min_lr / BASE_LR, eps=eps / BASE_LR, **kw)
    np.testing.assert_allclose(BASE_LR * scales, expected, rtol=2e-6)
    assert len(set(expected.tolist())) >= 3  # several reductions happened in this run


def test_eps_case_stops_where_torch_does(torch):
    values = _values("min", 8)
    lrs = torch_lrs(
        values,
        factor=0.1,
        patience=2,
        threshold=1e-4,
        threshold_mode="rel",
        mode="min",
        cooldown=0,
        min_lr=0.0,
        eps=1e-8,
    )
    assert lrs[-1] == pytest.approx(1e-8)  # 1e-8 -> 1e-9 is a change below eps: ignored
    # With eps=0 (gradchain's default) the reductions go on.
    kw = dict(factor=0.1, patience=2, threshold=1e-4, threshold_mode="rel", mode="min", cooldown=0)
    assert BASE_LR * gradchain_scales(values, **kw)[-1] < 1e-10


@pytest.mark.parametrize(
    ("factor", "patience", "threshold", "threshold_mode", "mode", "cooldown"),
    [
        (0.5, 3, 1e-4, "rel", "min", 4),
        (0.7, 2, 0.05, "abs", "min", 0),
    ],
)
def test_trajectory_matches_torch_sgd(factor, patience, threshold, threshold_mode, mode, cooldown, torch):
    # The loss of step t (computed before the step) reaches both before the update is applied: in
    # torch, scheduler.step(loss) before optimizer.step(). Gradients are a fixed random sequence.
    values = _values(mode, 2)
    rng = np.random.default_rng(5)
    shapes = {"a": (3,), "b": (2, 3), "c": ()}
    grads = [{k: np.asarray(rng.standard_normal(s), np.float32) for k, s in shapes.items()} for _ in range(N)]
    kw = dict(factor=factor, patience=patience, threshold=threshold, threshold_mode=threshold_mode, mode=mode)

    params = {k: torch.zeros(s, requires_grad=True) for k, s in shapes.items()}
    opt = torch.optim.SGD(list(params.values()), lr=BASE_LR, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, cooldown=cooldown, eps=0.0, **kw)
    torch_history = []
    for g, v in zip(grads, values, strict=True):
        for k, p in params.items():
            p.grad = torch.from_numpy(g[k]).clone()
        sched.step(float(v))
        opt.step()
        torch_history.append({k: p.detach().numpy().copy() for k, p in params.items()})

    tx = gc.chain(gc.sgd(BASE_LR, momentum=0.9), reduce_on_plateau(cooldown=cooldown, **kw))
    p = {k: jnp.zeros(s) for k, s in shapes.items()}
    state = tx.init(p)

    @jax.jit
    def step(p, state, g, v):
        u, state = tx.update(g, state, p, value=v)
        return gc.apply_updates(p, u), state

    worst = 0.0
    for t, (g, v) in enumerate(zip(grads, values, strict=True)):
        p, state = step(p, state, g, v)
        for k in shapes:
            expected = torch_history[t][k]
            # Relative to the largest magnitude the leaf has had so far: params are sums of
            # updates that partly cancel, and each library rounds lr * scale * buffer its own way.
            mag = max(np.abs(h[k]).max() for h in torch_history[: t + 1])
            worst = max(worst, np.abs(np.asarray(p[k]) - expected).max() / mag)
    assert worst < 1e-6
    assert float(state[1].scale) < 1  # reductions happened


@pytest.mark.parametrize("accumulation_size", [1, 5])
@pytest.mark.parametrize(
    ("factor", "patience", "threshold", "threshold_mode", "cooldown", "min_scale", "seed"),
    [
        (0.5, 3, 1e-4, "rel", 0, 0.0, 1),
        (0.5, 2, 1e-3, "rel", 4, 0.0, 2),
        (0.7, 1, 0.05, "abs", 2, 0.01, 3),
    ],
)
def test_matches_optax_with_patience_plus_one(
    accumulation_size, factor, patience, threshold, threshold_mode, cooldown, min_scale, seed
):
    values = loss_sequence(seed)
    kw = dict(factor=factor, threshold=threshold, threshold_mode=threshold_mode, cooldown=cooldown, min_scale=min_scale)
    ours = gradchain_scales(values, patience=patience, accumulation_size=accumulation_size, **kw)
    rtol, atol = (threshold, 0.0) if threshold_mode == "rel" else (0.0, threshold)
    ref = optax.contrib.reduce_on_plateau(
        factor=factor,
        patience=patience + 1,
        rtol=rtol,
        atol=atol,
        cooldown=cooldown,
        accumulation_size=accumulation_size,
        min_scale=min_scale,
    )
    state = ref.init({"w": jnp.zeros(2)})
    step = jax.jit(lambda s, v: ref.update({"w": jnp.ones(2)}, s, value=v)[1])
    theirs = []
    for v in values:
        state = step(state, v)
        theirs.append(float(state.scale))
    np.testing.assert_allclose(ours, theirs, rtol=2e-6)
    assert ours.min() < 0.3
    # With the same patience number the two differ: optax reduces one bad value earlier.
    same_patience = gradchain_scales(values, patience=patience + 1, accumulation_size=accumulation_size, **kw)
    assert not np.allclose(same_patience, theirs)


def test_accumulation_averages_like_numpy():
    values = loss_sequence(4)
    k = 4
    kw = dict(factor=0.5, patience=1, threshold=1e-3, threshold_mode="rel", mode="min", cooldown=1)
    means = values.astype(np.float64).reshape(-1, k).mean(axis=1)
    expected, margin = ref_plateau(means, base_lr=BASE_LR, min_lr=0.0, eps=0.0, **kw)
    assert margin > 1e-5
    scales = gradchain_scales(values, accumulation_size=k, **kw)
    # Evaluated once every k values; the scale holds in between.
    np.testing.assert_allclose(BASE_LR * scales[k - 1 :: k], expected, rtol=2e-6)
    np.testing.assert_allclose(BASE_LR * scales[k::k], expected[:-1], rtol=2e-6)


def test_updates_scaled_with_dtypes_and_none_leaves():
    tx = reduce_on_plateau(factor=0.5, patience=0)
    params = {"a": jnp.ones(3), "h": jnp.ones(2, jnp.float16), "bf": jnp.ones(2, jnp.bfloat16), "none": None}
    state = tx.init(params)
    grads = {
        "a": jnp.full(3, 3.0),
        "h": jnp.full(2, 3.0, jnp.float16),
        "bf": jnp.full(2, 3.0, jnp.bfloat16),
        "none": None,
    }
    for v in [1.0, 2.0, 2.0]:
        u, state = tx.update(grads, state, params, value=v)
    assert float(state.scale) == 0.25
    for k in ["a", "h", "bf"]:
        assert u[k].dtype == params[k].dtype and (u[k] == 0.75).all()
    assert u["none"] is None


def test_jit_no_retrace_hyperparams_and_abstract_init():
    traces = []
    tx = gc.chain(gc.adam(1e-3), reduce_on_plateau(factor=0.5, patience=0))
    params = {"w": jnp.ones(3)}

    @jax.jit
    def step(state, v):
        traces.append(1)
        return tx.update({"w": jnp.ones(3)}, state, params, value=v)[1]

    state = tx.init(params)
    hp = gc.hyperparams(state)
    assert {"factor", "threshold", "min_scale", "reduce_on_plateau/eps", "learning_rate"} <= set(hp)
    for v in [1.0, 2.0]:
        state = step(state, v)
    assert float(gc.tree.tree_get(state, "scale")) == 0.5
    state = gc.set_hyperparams(state, factor=0.1)
    state = step(state, 3.0)
    assert float(state[1].scale) == pytest.approx(0.05) and len(traces) == 1 and step._cache_size() == 1
    abstract = jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    assert isinstance(abstract[1], ReduceOnPlateauState) and abstract[1].scale.shape == ()


def test_missing_or_bad_value():
    tx = reduce_on_plateau()
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(TypeError, match="value"):
        tx.update({"w": jnp.ones(2)}, state)
    with pytest.raises(TypeError, match="value"):
        gc.chain(gc.sgd(0.1), tx).update({"w": jnp.ones(2)}, (gc.sgd(0.1).init({"w": jnp.zeros(2)}), state))
    with pytest.raises(TypeError, match="value"):
        tx.update({"w": jnp.ones(2)}, state, value=jnp.ones(2))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "minimum"}, ValueError, "mode"),
        ({"threshold_mode": "relative"}, ValueError, "threshold_mode"),
        ({"patience": -1}, ValueError, "patience"),
        ({"cooldown": 1.5}, TypeError, "cooldown"),
        ({"accumulation_size": 0}, ValueError, "accumulation_size"),
        ({"factor": 1.0}, ValueError, "factor"),
        ({"threshold": -1e-4}, ValueError, "threshold"),
        ({"min_scale": -1.0}, ValueError, "min_scale"),
        ({"eps": float("nan")}, ValueError, "eps"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        reduce_on_plateau(**kwargs)
