"""Tests for gradchain/doctor/: `lr_range_test` and `diagnose`.

`lr_range_test` runs on quadratics with known curvature, where plain SGD diverges exactly above
2/L, and on least squares with per-step mini-batches; its curves are compared with float64 numpy
transcriptions of SGD (with and without momentum) on the same problems, over a pytree of several
leaves, and its Adam/AdamW/chain sweeps with optax's transformations built from the same traced rate.

`diagnose` reads synthetic curves of each kind (seeded), combinations, and real curves produced by
small gradchain runs that mirror the notebooks (least squares at too high, too low and good rates,
mini-batch SGD at a constant rate, an over-parameterised polynomial with a validation set). Its
evidence numbers are recomputed here from their documented definitions.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest

import gradchain as gc

matplotlib.use("Agg")

# ====================================================================================================
# lr_range_test: a quadratic with known curvature

# f(p) = 1/2 sum_i lam_i (p_i - c_i)^2 over a tree of three leaves; the largest curvature is L = 4,
# so plain SGD, p <- p - lr * lam * (p - c), diverges exactly for lr > 2 / L = 0.5.
L = 4.0
EDGE = 2 / L
CURVATURE = {
    "a": np.array([0.3, 1.0, L], np.float32),
    "b": np.array([[0.5, 2.0], [3.0, 0.7]], np.float32),
    "c": np.float32(1.5),
}
TARGET = {"a": np.array([1.0, -2.0, 0.5], np.float32), "b": np.array([[0.3, 0.1], [-1.0, 2.0]], np.float32), "c": 0.4}
START = {"a": np.zeros(3, np.float32), "b": np.ones((2, 2), np.float32), "c": np.float32(-1.0)}


def quadratic(params):
    terms = jax.tree.map(lambda p, lam, c: 0.5 * jnp.sum(lam * (p - c) ** 2), params, CURVATURE, TARGET)
    return sum(jax.tree.leaves(terms))


def start_params():
    return jax.tree.map(jnp.asarray, START)


def ref_quadratic_sgd(lr: float, steps: int, momentum: float | None = None) -> tuple[np.ndarray, float]:
    """float64 SGD (heavy ball, torch's v_1 = g_1, with momentum) on the quadratic: logged losses, final loss."""
    lr = float(np.float32(lr))  # gradchain keeps the rate as a float32 hyperparameter
    lam = {k: np.asarray(v, np.float64) for k, v in CURVATURE.items()}
    p = {k: np.asarray(v, np.float64) for k, v in START.items()}
    c = {k: np.asarray(v, np.float64) for k, v in TARGET.items()}
    v = {k: np.zeros_like(p[k]) for k in p}

    def loss(p):
        return sum(0.5 * np.sum(lam[k] * (p[k] - c[k]) ** 2) for k in p)

    logged = []
    for _ in range(steps):
        logged.append(loss(p))
        for k in p:
            g = lam[k] * (p[k] - c[k])
            v[k] = g if momentum is None else momentum * v[k] + g
            p[k] = p[k] - lr * v[k]
    return np.array(logged), loss(p)


def grid_around(edge: float, num: int, per_decade: int, below: int) -> tuple[float, float]:
    """min_lr, max_lr of a log grid whose point `below` lies half a grid step under `edge`."""
    ratio = 10 ** (1 / per_decade)
    min_lr = edge * ratio ** (-below - 0.5)
    return min_lr, min_lr * ratio ** (num - 1)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def assert_rows_close(actual: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    """Row by row (one run per row), relative to the row's largest magnitude.

    Where the float64 reference leaves float32's range, the float32 run must have overflowed.
    """
    actual, expected = np.atleast_2d(actual), np.atleast_2d(expected)
    assert actual.shape == expected.shape
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        fits = np.abs(e) < FLOAT32_MAX / 10
        assert not np.isfinite(a[np.abs(e) > FLOAT32_MAX]).any(), f"row {i}: no overflow where expected"
        scale = np.max(np.abs(e[fits]))
        err = np.max(np.abs(a[fits] - e[fits])) / scale
        assert err <= rtol, f"row {i}: relative error {err:.3g} > {rtol:g}"


@pytest.mark.parametrize(
    ("num", "per_decade", "below", "steps"),
    [(25, 6, 18, 10), (40, 8, 30, 10), (12, 3, 7, 20), (30, 10, 20, 30)],
)
def test_sgd_diverges_exactly_above_two_over_L(num, per_decade, below, steps):
    min_lr, max_lr = grid_around(EDGE, num, per_decade, below)
    result = gc.lr_range_test(quadratic, start_params(), gc.sgd, min_lr=min_lr, max_lr=max_lr, num=num, steps=steps)
    lrs = result.learning_rates
    assert lrs[below] < EDGE < lrs[below + 1]
    # The first rate above 2/L diverges, every rate below it does not.
    assert result.diverged_lr == lrs[below + 1]
    np.testing.assert_array_equal(result.diverged, lrs > EDGE)
    assert result.suggested_lr <= result.min_loss_lr < EDGE
    # The reported numbers are those of the float64 reference.
    for i in range(num):
        curve, final = ref_quadratic_sgd(lrs[i], steps)
        assert_rows_close(result.curves[i], curve, 2e-6)
        if final < FLOAT32_MAX / 10:
            assert abs(result.losses[i] - final) <= 2e-6 * max(final, np.max(curve))
        else:
            assert not np.isfinite(result.losses[i])
    assert result.initial_loss == pytest.approx(ref_quadratic_sgd(1.0, 1)[0][0], rel=1e-6)
    # min_loss_lr is the argmin below divergence, suggested_lr the steepest descent up to it.
    ok = ~result.diverged
    i_min = int(np.argmin(result.losses[ok]))
    assert result.min_loss_lr == lrs[i_min]
    slope = np.gradient(result.losses[ok], np.log(lrs[ok]))
    assert result.suggested_lr == lrs[int(np.argmin(slope[: i_min + 1]))]


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_curves_match_numpy_sgd_over_100_steps(momentum):
    # Rates below the edge (for heavy ball the edge is 2 (1 + beta) / L), 100 steps each.
    def factory(lr):
        return gc.sgd(lr) if momentum is None else gc.sgd(lr, momentum=momentum)

    result = gc.lr_range_test(quadratic, start_params(), factory, min_lr=1e-3, max_lr=0.45, num=6, steps=100)
    assert result.diverged_lr is None
    for i, lr in enumerate(result.learning_rates):
        curve, final = ref_quadratic_sgd(lr, 100, momentum)
        assert_rows_close(result.curves[i], curve, 1e-6)
        assert result.losses[i] == pytest.approx(final, rel=1e-6, abs=1e-6 * curve[0])


# ====================================================================================================
# lr_range_test: least squares with mini-batches

N_DATA, DIM, BATCH = 64, 3, 8


def regression_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_DATA, DIM)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * rng.normal(size=N_DATA)).astype(np.float32)
    return x, y


def mse(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def ref_regression_sgd(lr: float, xs: np.ndarray, ys: np.ndarray, final_batch) -> tuple[np.ndarray, float]:
    """float64 SGD on the mean squared error, one (x, y) batch per step; the final loss on `final_batch`."""
    lr = float(np.float32(lr))
    w, b = np.zeros(DIM), 0.0
    logged = []
    for x, y in zip(xs.astype(np.float64), ys.astype(np.float64), strict=True):
        r = x @ w + b - y
        logged.append(np.mean(r**2))
        w, b = w - lr * 2 * x.T @ r / len(y), b - lr * 2 * np.mean(r)
    x, y = (np.asarray(a, np.float64) for a in final_batch)
    return np.array(logged), float(np.mean((x @ w + b - y) ** 2))


def zero_params():
    return {"w": jnp.zeros(DIM), "b": jnp.zeros(())}


def test_batches_follow_the_per_step_batches():
    x, y = regression_data()
    steps = 12
    rng = np.random.default_rng(1)
    idx = np.stack([rng.choice(N_DATA, BATCH, replace=False) for _ in range(steps)])
    xs, ys = x[idx], y[idx]
    result = gc.lr_range_test(mse, zero_params(), gc.sgd, batches=(xs, ys), min_lr=1e-3, max_lr=3.0, num=9)
    assert result.curves.shape == (9, steps)  # steps taken from the batches
    for i, lr in enumerate(result.learning_rates):
        curve, final = ref_regression_sgd(lr, xs, ys, (xs[-1], ys[-1]))
        assert_rows_close(result.curves[i], curve, 2e-6)
        # The final loss is a float32 evaluation after the last of 12 steps; near divergence (the
        # largest rates) its roundoff reaches a few 1e-6 of the curve's peak.
        assert result.losses[i] == pytest.approx(final, rel=2e-6, abs=4e-6 * np.max(curve))
    assert result.initial_loss == pytest.approx(ref_regression_sgd(1.0, xs[:1], ys[:1], (xs[0], ys[0]))[0][0], rel=1e-6)


def test_batch_batches_and_no_batch_agree():
    x, y = regression_data()
    steps = 10
    kwargs = {"min_lr": 1e-3, "max_lr": 3.0, "num": 9, "steps": steps}
    full = gc.lr_range_test(mse, zero_params(), gc.sgd, batch=(x, y), **kwargs)
    stacked = (np.broadcast_to(x, (steps, *x.shape)), np.broadcast_to(y, (steps, *y.shape)))
    repeated = gc.lr_range_test(mse, zero_params(), gc.sgd, batches=stacked, **kwargs)
    closed = gc.lr_range_test(lambda p: mse(p, x, y), zero_params(), gc.sgd, **kwargs)
    for other in (repeated, closed):
        ok = ~full.diverged
        assert_rows_close(other.curves[ok], full.curves[ok], 1e-6)
        np.testing.assert_allclose(other.losses[ok], full.losses[ok], rtol=1e-6)
        np.testing.assert_array_equal(other.diverged, full.diverged)
        assert other.suggested_lr == full.suggested_lr and other.diverged_lr == full.diverged_lr
    for i, lr in enumerate(full.learning_rates[~full.diverged]):
        curve, _ = ref_regression_sgd(lr, *stacked, (x, y))
        assert_rows_close(full.curves[i], curve, 2e-6)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 9, 100])
def test_chunk_size_gives_the_same_numbers(chunk_size):
    x, y = regression_data()
    kwargs = {"batch": (x, y), "min_lr": 1e-4, "max_lr": 10.0, "num": 9}
    whole = gc.lr_range_test(mse, zero_params(), gc.adam, **kwargs)
    chunked = gc.lr_range_test(mse, zero_params(), gc.adam, chunk_size=chunk_size, **kwargs)
    # Same numbers up to float rounding: the vectorised batch size changes how XLA fuses the step.
    assert_rows_close(chunked.curves, whole.curves, 1e-6)
    np.testing.assert_allclose(chunked.losses, whole.losses, rtol=1e-5)
    assert chunked.suggested_lr == whole.suggested_lr
    assert chunked.diverged_lr == whole.diverged_lr


@pytest.mark.parametrize(
    ("name", "ours", "theirs"),
    [
        ("sgd", gc.sgd, optax.sgd),
        ("adam", gc.adam, optax.adam),
        ("adamw", lambda lr: gc.adamw(lr, weight_decay=0.1), lambda lr: optax.adamw(lr, weight_decay=0.1)),
        (
            "chain",
            lambda lr: gc.chain(gc.clip_by_global_norm(1.0), gc.sgd(lr, momentum=0.9)),
            lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr, momentum=0.9)),
        ),
    ],
)
def test_optimizer_factories_match_optax(name, ours, theirs):
    # optax builds its transformations from the same traced rate: an independent reference.
    x, y = regression_data()
    kwargs = {"batch": (x, y), "min_lr": 1e-4, "max_lr": 1.0, "num": 7, "steps": 20}
    result = gc.lr_range_test(mse, zero_params(), ours, **kwargs)
    reference = gc.lr_range_test(mse, zero_params(), theirs, **kwargs)
    assert np.isfinite(result.losses).all()
    assert_rows_close(result.curves, reference.curves, 1e-5)
    np.testing.assert_allclose(result.losses, reference.losses, rtol=1e-4)
    assert result.min_loss_lr == reference.min_loss_lr


@pytest.mark.parametrize("chunk_size", [None, 4, 5])
def test_the_sweep_is_traced_once_whatever_the_number_of_rates(chunk_size):
    traces = []

    def counted(params):
        traces.append(1)
        return quadratic(params)

    counts = []
    for num in (5, 45):  # the same remainder for every chunk size tried
        traces.clear()
        gc.lr_range_test(counted, start_params(), gc.sgd, num=num, chunk_size=chunk_size, steps=3)
        counts.append(len(traces))
    # loss_fn is traced once at each of its 3 call sites (initial loss, the step, the final loss);
    # lax.map with a remainder traces the step once more for the remainder's vmap.
    assert counts[0] == counts[1] <= 5


def test_a_run_that_blows_up_does_not_touch_the_others():
    # Rates up to 1e6 overflow to inf and then NaN; the three shared rates must give the same numbers.
    wide = gc.lr_range_test(quadratic, start_params(), gc.sgd, min_lr=1e-2, max_lr=1e6, num=9, steps=30)
    narrow = gc.lr_range_test(quadratic, start_params(), gc.sgd, min_lr=1e-2, max_lr=1.0, num=3, steps=30)
    np.testing.assert_allclose(wide.learning_rates[:3], narrow.learning_rates, rtol=1e-12)
    assert not np.isfinite(wide.losses[-1]) and not np.isfinite(wide.curves[-1]).all()
    assert_rows_close(wide.curves[:2], narrow.curves[:2], 1e-6)
    np.testing.assert_allclose(wide.losses[:2], narrow.losses[:2], rtol=1e-6)
    assert wide.diverged_lr == 1.0 and wide.diverged[2:].all()
    assert np.isfinite(wide.suggested_lr) and wide.suggested_lr < EDGE


def test_every_rate_diverged():
    result = gc.lr_range_test(quadratic, start_params(), gc.sgd, min_lr=1.0, max_lr=10.0, num=4)
    assert result.diverged.all() and result.diverged_lr == 1.0
    assert math.isnan(result.suggested_lr) and math.isnan(result.min_loss_lr)
    assert "every rate diverged" in str(result)


def test_lowest_loss_at_the_smallest_rate_is_reported():
    # All rates between 2/L and 4/L: each run grows on the stiff leaf, the smallest grows least.
    result = gc.lr_range_test(
        quadratic, start_params(), gc.sgd, min_lr=0.51, max_lr=0.6, num=3, steps=2, divergence_factor=1e9
    )
    assert result.diverged_lr is None
    assert result.suggested_lr == result.min_loss_lr == result.learning_rates[0]
    assert "lower min_lr" in str(result)


def test_negative_losses_use_the_margin_of_the_initial_loss():
    # Shifting a loss down must not make every run "diverged" (4 x a negative loss lies below it).
    shifted = gc.lr_range_test(lambda p: quadratic(p) - 100.0, start_params(), gc.sgd, min_lr=1e-3, max_lr=0.4, num=5)
    assert shifted.initial_loss < 0 and shifted.diverged_lr is None
    blown = gc.lr_range_test(lambda p: quadratic(p) - 100.0, start_params(), gc.sgd, min_lr=0.1, max_lr=3.0, num=5)
    threshold = blown.initial_loss + 3 * abs(blown.initial_loss)
    expected = (blown.curves > threshold).any(axis=1) | (blown.losses > threshold) | ~np.isfinite(blown.losses)
    np.testing.assert_array_equal(blown.diverged, expected)
    assert blown.diverged.any()


def test_plot_marks_the_suggested_and_diverged_rates():
    import matplotlib.pyplot as plt

    result = gc.lr_range_test(quadratic, start_params(), gc.sgd, min_lr=1e-3, max_lr=5.0, num=12)
    ax = result.plot()
    try:
        assert isinstance(ax, matplotlib.axes.Axes) and ax.get_xscale() == "log"
        labels = [line.get_label() for line in ax.get_lines()]
        assert any(label.startswith("suggested") for label in labels)
        assert any(label.startswith("diverged") for label in labels)
        fig, given = plt.subplots()
        assert result.plot(given) is given
        plt.close(fig)
    finally:
        plt.close(ax.figure)


def test_str_summarises_the_sweep():
    result = gc.lr_range_test(quadratic, start_params(), gc.sgd, min_lr=1e-3, max_lr=5.0, num=12)
    text = str(result)
    assert f"suggested lr={result.suggested_lr:.3g}" in text
    assert f"diverged from lr={result.diverged_lr:.3g}" in text
    assert f"lowest loss {result.losses[result.learning_rates == result.min_loss_lr][0]:.4g}" in text
    assert "LRRangeResult(num=12" in repr(result)


def test_an_optimizer_that_needs_a_concrete_rate_is_refused():
    with pytest.raises(TypeError, match=r"optimizer\(learning_rate\) must build .* traced"):
        gc.lr_range_test(quadratic, start_params(), lambda lr: gc.sgd(float(lr)))
    with pytest.raises(TypeError, match=r"optimizer\(learning_rate\) must build .* traced"):
        gc.lr_range_test(quadratic, start_params(), lambda lr: gc.sgd(0.1) if lr > 0.5 else gc.sgd(lr))


def bad_calls():
    x, y = regression_data()
    p = zero_params()
    ok = {"loss_fn": mse, "params": p, "optimizer": gc.sgd, "batch": (x, y)}
    return [
        ("loss_fn not callable", {**ok, "loss_fn": 3.0}, TypeError, "loss_fn must be callable"),
        ("a transformation", {**ok, "optimizer": gc.sgd(0.1)}, TypeError, "optimizer must be a function.*gc.adam"),
        (
            "not a transformation",
            {**ok, "optimizer": lambda lr: lr},
            TypeError,
            r"optimizer\(learning_rate\) must return",
        ),
        ("min_lr <= 0", {**ok, "min_lr": 0.0}, ValueError, "min_lr must be a finite number > 0"),
        ("min_lr nan", {**ok, "min_lr": float("nan")}, ValueError, "min_lr"),
        ("max_lr <= min_lr", {**ok, "min_lr": 0.1, "max_lr": 0.1}, ValueError, "max_lr must be > min_lr"),
        ("num < 3", {**ok, "num": 2}, ValueError, "num must be an integer >= 3"),
        ("num float", {**ok, "num": 10.0}, TypeError, "num must be an integer"),
        ("steps < 1", {**ok, "steps": 0}, ValueError, "steps must be an integer >= 1"),
        ("chunk_size < 1", {**ok, "chunk_size": 0}, ValueError, "chunk_size must be an integer >= 1"),
        ("divergence_factor <= 1", {**ok, "divergence_factor": 1.0}, ValueError, "divergence_factor must be > 1"),
        ("both batch and batches", {**ok, "batches": (x[None], y[None])}, ValueError, "batch .* or batches"),
        ("batch not a tuple", {**ok, "batch": x}, TypeError, "batch must be a tuple"),
        ("batches not a tuple", {**ok, "batch": None, "batches": x[None]}, TypeError, "batches must be a tuple"),
        (
            "batches' axis is not steps",
            {**ok, "batch": None, "batches": (x[None], np.stack([y] * 4)), "steps": 4},
            ValueError,
            r"batches/0 must be stacked .* steps=4",
        ),
        (
            "loss not a scalar",
            {**ok, "loss_fn": lambda p, x, y: (x @ p["w"] - y) ** 2},
            ValueError,
            "loss_fn must return a scalar",
        ),
        (
            "integer loss",
            {**ok, "loss_fn": lambda p, x, y: jnp.sum(x > 0)},
            TypeError,
            "loss_fn must return a floating",
        ),
        (
            "integer params",
            {**ok, "params": {"w": jnp.zeros(DIM, jnp.int32), "b": jnp.zeros(())}},
            TypeError,
            r"params must be floating point; leaf w\b",
        ),
        ("no params", {**ok, "params": {}}, ValueError, "params has no array leaves"),
    ]


BAD_CALLS = bad_calls()


@pytest.mark.parametrize(("case", "kwargs", "error", "match"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_are_named(case, kwargs, error, match):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=match):
        gc.lr_range_test(kwargs.pop("loss_fn"), kwargs.pop("params"), kwargs.pop("optimizer"), **kwargs)


# ====================================================================================================
# diagnose: synthetic curves

N = 400


def _noise(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


def _decay(n: int = N, tau: float = N / 3, floor: float = 0.1, top: float = 2.0) -> np.ndarray:
    return floor + top * np.exp(-np.arange(n) / tau)


def _u_shaped_val(m: int = 40, seed: int = 0) -> np.ndarray:
    t = np.arange(m)
    return (0.3 + np.exp(-t / 6) + 0.01 * t) * (1 + 0.01 * _noise(seed, m))


SYNTHETIC = {
    # name: (seed -> (loss history, diagnose kwargs), expected kinds)
    "healthy": (lambda s: (_decay() * (1 + 0.02 * _noise(s)), {}), ()),
    "healthy, no noise": (lambda s: (_decay(), {}), ()),
    "healthy, a straight line": (lambda s: (np.linspace(2.0, 0.5, N) * (1 + 0.02 * _noise(s)), {}), ()),
    "healthy, 20 epochs": (lambda s: (_decay(20, 10) * (1 + 0.01 * _noise(s, 20)), {}), ()),
    "healthy with spikes": (
        lambda s: (_decay() * (1 + 0.02 * _noise(s)) * np.where(np.arange(N) % 97 == 50, 20.0, 1.0), {}),
        (),
    ),
    "healthy, negative losses": (lambda s: (_decay() - 3.0 + 0.01 * _noise(s), {}), ()),
    # Deterministic convergence to 0 at any scale: converged (a note), not a plateau.
    "converged, tiny scale": (lambda s: (1e-30 * np.exp(-np.arange(N) / (10 + s)), {}), ()),
    "converged, huge scale": (lambda s: (1e30 * np.exp(-np.arange(N) / (10 + s)), {}), ()),
    "healthy, with validation": (
        lambda s: (_decay(), {"val_history": _decay(40, 13, 0.3) * (1 + 0.01 * _noise(s, 40))}),
        (),
    ),
    "exploding: NaN": (lambda s: (np.where(np.arange(N) > 300, np.nan, _decay()), {}), ("exploding",)),
    "exploding: inf": (lambda s: (np.where(np.arange(N) == 399, np.inf, _decay()), {}), ("exploding",)),
    "exploding: grows": (
        lambda s: ((_decay(tau=40) + 1e-3 * 1.05 ** np.arange(N)) * (1 + 0.05 * _noise(s)), {}),
        ("exploding",),
    ),
    "exploding from the start": (lambda s: (1.03 ** np.arange(N) * (1 + 0.05 * _noise(s)), {}), ("exploding",)),
    "flat": (lambda s: (np.linspace(2.0, 1.95, N) * (1 + 0.05 * _noise(s)), {}), ("flat",)),
    "flat, no noise": (lambda s: (np.linspace(2.0, 1.9, N), {}), ("flat",)),
    "flat and noisy": (lambda s: (2.0 * (1 + 0.3 * _noise(s)), {}), ("flat", "noisy")),
    "noisy": (lambda s: (np.linspace(2.0, 0.5, N) * (1 + 0.15 * _noise(s)), {}), ("noisy",)),
    "plateau": (lambda s: (_decay(tau=30, floor=0.3) * (1 + 0.03 * _noise(s)), {}), ("plateau",)),
    "plateau and noisy": (lambda s: (_decay(tau=30, floor=0.3) * (1 + 0.3 * _noise(s)), {}), ("plateau", "noisy")),
    "overfitting": (
        lambda s: (_decay(), {"val_history": _u_shaped_val(seed=s)}),
        ("overfitting",),
    ),
    "overfitting, plateau and noisy": (
        lambda s: (
            _decay(tau=30, floor=0.3) * (1 + 0.3 * _noise(s)),
            {"val_history": _u_shaped_val(seed=s), "val_every": 10},
        ),
        ("overfitting", "plateau", "noisy"),
    ),
    # The training loss creeps up (not twice its best: not exploding) with the validation loss.
    "no overfitting when both rise": (
        lambda s: (
            np.r_[_decay(200, 30), _decay(200, 30)[-1] * np.linspace(1, 1.9, 200)],
            {"val_history": _u_shaped_val(seed=s)},
        ),
        ("plateau",),
    ),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_curves(name, seed):
    make, expected = SYNTHETIC[name]
    history, kwargs = make(seed)
    d = gc.diagnose(history, **kwargs)
    assert d.kinds == expected, str(d)
    assert d.healthy == (expected == ())
    if name.startswith("converged"):
        assert any(note.startswith("converged") for note in d.notes)
    for finding in d.findings:
        assert isinstance(finding.advice, tuple) and all(isinstance(a, str) for a in finding.advice)
        assert all(isinstance(v, float) for v in finding.evidence.values())
        assert_summary_quotes_evidence(finding)


def assert_summary_quotes_evidence(finding: gc.Finding) -> None:
    """Every number in the summary is an evidence value (as is, or as a percentage)."""
    values = list(finding.evidence.values())
    for text in re.findall(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?%?", finding.summary):
        percent = text.endswith("%")
        number = float(text.rstrip("%"))
        candidates = [100 * v for v in values] if percent else values
        assert any(math.isclose(number, c, rel_tol=5e-3, abs_tol=5e-4) for c in candidates), (text, finding)


# ====================================================================================================
# diagnose: the evidence, recomputed from the documented definitions


def running_median(y: np.ndarray, half: int) -> np.ndarray:
    return np.array([np.median(y[max(0, i - half) : i + half + 1]) for i in range(len(y))])


def test_nonfinite_evidence():
    y = _decay()
    y[[120, 150, 151]] = [np.nan, np.inf, -np.inf]
    f = gc.diagnose(y)["exploding"]
    assert f.evidence == {
        "nonfinite_steps": 3.0,
        "steps": float(N),
        "first_nonfinite_step": 120.0,
        "last_finite_loss": y[119],
    }
    assert gc.diagnose([np.nan, 1.0])["exploding"].evidence["first_nonfinite_step"] == 0


def test_exploding_evidence():
    t = np.arange(N)
    y = _decay(tau=20) + 1e-3 * 1.04 ** np.clip(t - 200, 0, None)
    f = gc.diagnose(y)["exploding"]
    smooth = running_median(y, round(0.1 * N / 2))
    assert f.evidence["peak"] == pytest.approx(smooth.max()) and f.evidence["peak_step"] == N - 1
    assert f.evidence["best"] == pytest.approx(smooth[: int(f.evidence["peak_step"])].min())
    assert f.evidence["factor"] == pytest.approx(f.evidence["peak"] / f.evidence["best"])
    assert f.evidence["best_step"] < f.evidence["peak_step"]


def test_flat_evidence():
    y = np.linspace(2.0, 1.9, N)
    f = gc.diagnose(y)["flat"]
    k = round(0.1 * N)
    start, best = np.median(y[:k]), running_median(y, round(0.1 * N / 2)).min()
    assert f.evidence["start"] == pytest.approx(start) and f.evidence["best"] == pytest.approx(best)
    assert f.evidence["drop"] == pytest.approx((start - best) / start)
    assert f.evidence["threshold"] == 0.1  # no noise: the threshold alone


def test_plateau_evidence():
    y = _decay(tau=30, floor=0.3) * (1 + 0.03 * _noise(1))
    f = gc.diagnose(y)["plateau"]
    t0 = N - round(0.25 * N)
    third = (N - t0) // 3
    level = np.median(y[N - third :])
    k = round(0.1 * N)
    smooth = running_median(y, round(0.1 * N / 2))
    # The start: the largest drop of the medians of the first loss, the first 3 and the first k.
    starts = [np.median(y[:size]) for size in (k, 3, 1)]
    assert any(f.evidence["total_improvement"] == pytest.approx(s - smooth.min()) for s in starts)
    assert f.evidence["window_start_step"] == t0
    assert f.evidence["level"] == pytest.approx(level)
    total = f.evidence["total_improvement"]
    assert f.evidence["gain"] == pytest.approx((np.median(y[t0 : t0 + third]) - level) / total)
    assert f.evidence["gain"] < f.evidence["threshold"]
    assert 0 < f.evidence["stalled_since_step"] < t0


def test_noisy_evidence():
    y = np.linspace(2.0, 1.0, N) * (1 + 0.25 * _noise(2))
    f = gc.diagnose(y)["noisy"]
    tail = y[N - round(0.25 * N) :]
    d = np.diff(tail)
    sigma = np.median(np.abs(d - np.median(d))) / (0.6745 * math.sqrt(2))
    assert f.evidence["noise"] == pytest.approx(sigma)
    assert f.evidence["level"] == pytest.approx(np.median(tail))
    assert f.evidence["relative_noise"] == pytest.approx(sigma / np.median(tail))
    # The robust estimate recovers the noise put in (25% of a level of ~1.1).
    assert f.evidence["relative_noise"] == pytest.approx(0.25, rel=0.25)


@pytest.mark.parametrize("val_every", [None, 10])
def test_overfitting_evidence_and_alignment(val_every):
    m = 40
    val = _u_shaped_val(m, seed=3)
    d = gc.diagnose(_decay(), val_history=val, val_every=val_every)
    f = d["overfitting"]
    smooth = running_median(val, 1)
    j = int(np.argmin(smooth))
    step = j * 10 if val_every else j * (N - 1) / (m - 1)
    assert f.evidence["best_val_step"] == pytest.approx(step)
    assert f.evidence["best_val"] == pytest.approx(smooth[j])
    assert f.evidence["final_val"] == pytest.approx(np.median(val[-2:]))
    assert f.evidence["val_rise"] == pytest.approx((f.evidence["final_val"] - smooth[j]) / smooth[j])
    train = running_median(_decay(), round(0.1 * N / 2))
    assert f.evidence["train_at_best_val"] == pytest.approx(np.interp(step, np.arange(N), train))
    assert f.evidence["final_train"] == pytest.approx(train[-1])


def test_findings_are_in_order_of_severity_and_the_report_has_them_all():
    make, expected = SYNTHETIC["overfitting, plateau and noisy"]
    history, kwargs = make(0)
    d = gc.diagnose(history, **kwargs)
    assert d.kinds == expected
    text = str(d)
    for f in d.findings:
        assert f.summary in text and all(a in text for a in f.advice)
    assert "no pattern found" in str(gc.diagnose(_decay()))


# ====================================================================================================
# diagnose: short histories, inputs, bad arguments


def test_short_histories_are_read_for_nan_only():
    d = gc.diagnose([3.0, 2.0, 1.0, 0.5, 0.4])
    assert d.healthy and any("min_steps=10" in note for note in d.notes)
    assert gc.diagnose([1.0, 2.0, np.nan]).kinds == ("exploding",)
    # min_steps is a knob: with 5 allowed, a 5-step flat curve is read.
    assert gc.diagnose([1.0, 1.0, 0.99, 0.99, 0.99], min_steps=5).kinds == ("flat",)
    few_val = gc.diagnose(_decay(), val_history=[1.0, np.nan, 0.5])
    assert few_val.healthy and any("too few" in note for note in few_val.notes)


def test_inputs_as_lists_numpy_and_jax_arrays_agree():
    y = _decay(tau=30, floor=0.3) * (1 + 0.3 * _noise(5))
    reference = gc.diagnose(y)
    for history in (list(y), jnp.asarray(y, jnp.float32), y.astype(np.float32)):
        d = gc.diagnose(history)
        assert d.kinds == reference.kinds
        for a, b in zip(d.findings, reference.findings, strict=True):
            for key in a.evidence:
                assert a.evidence[key] == pytest.approx(b.evidence[key], rel=1e-5)


def test_a_long_history_is_read_quickly():
    # 200k steps: running medians are evaluated at no more than 2000 centres.
    n = 200_000
    y = _decay(n, n / 20, 0.3) * (1 + 0.3 * _noise(0, n))
    assert gc.diagnose(y).kinds == ("plateau", "noisy")


BAD_DIAGNOSES = [
    ("empty", ([],), {}, ValueError, "loss_history is empty"),
    ("2-D", (np.ones((3, 4)),), {}, ValueError, r"loss_history must be 1-D .* shape \(3, 4\)"),
    ("text", (["a", "b"],), {}, TypeError, "loss_history must be a 1-D sequence of numbers"),
    ("2-D val", (_decay(),), {"val_history": np.ones((2, 2))}, ValueError, "val_history must be 1-D"),
    ("val_every alone", (_decay(),), {"val_every": 10}, ValueError, "val_every needs val_history"),
    (
        "val_every 0",
        (_decay(),),
        {"val_history": np.ones(5), "val_every": 0},
        ValueError,
        "val_every must be an integer >= 1",
    ),
    (
        "val_every too far",
        (_decay(),),
        {"val_history": np.ones(50), "val_every": 10},
        ValueError,
        "val_every=10 puts the last of the 50 val_history values at training step 490",
    ),
    ("loss_every 0", (_decay(),), {"loss_every": 0}, ValueError, "loss_every must be an integer >= 1"),
    (
        "val_every too far, in training steps",
        (_decay(40),),
        {"loss_every": 10, "val_history": np.ones(41), "val_every": 10},
        ValueError,
        r"training step 400, beyond the last loss_history value \(step 390\)",
    ),
    ("smoothing 0", (_decay(),), {"smoothing": 0.0}, ValueError, r"smoothing must be in \(0, 1\]"),
    ("window > 1", (_decay(),), {"window": 1.5}, ValueError, r"window must be in \(0, 1\]"),
    ("min_steps 2", (_decay(),), {"min_steps": 2}, ValueError, "min_steps must be an integer >= 3"),
    ("explode_factor 1", (_decay(),), {"explode_factor": 1.0}, ValueError, "explode_factor must be in"),
    ("explode_rise 0", (_decay(),), {"explode_rise": 0}, ValueError, "explode_rise must be in"),
    ("flat_drop 0", (_decay(),), {"flat_drop": 0.0}, ValueError, "flat_drop must be in"),
    ("plateau_gain 2", (_decay(),), {"plateau_gain": 2.0}, ValueError, "plateau_gain must be in"),
    ("noise_level < 0", (_decay(),), {"noise_level": -0.1}, ValueError, "noise_level must be in"),
    ("overfit_rise text", (_decay(),), {"overfit_rise": "0.1"}, TypeError, "overfit_rise must be a number"),
]


@pytest.mark.parametrize(("case", "args", "kwargs", "error", "match"), BAD_DIAGNOSES, ids=[c[0] for c in BAD_DIAGNOSES])
def test_bad_diagnose_arguments_are_named(case, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        gc.diagnose(*args, **kwargs)


def test_finding_lookup():
    d = gc.diagnose(np.linspace(2.0, 1.9, 50))
    assert "flat" in d and "plateau" not in d
    assert d["flat"] is d.findings[0]
    with pytest.raises(KeyError, match="no 'plateau' pattern; found: \\['flat'\\]"):
        d["plateau"]


# ====================================================================================================
# diagnose: real curves from small gradchain runs (the notebooks' experiments, in miniature)


def regression_problem(seed: int = 0, n: int = 256, dim: int = 8, noise: float = 0.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (x @ rng.normal(size=dim) + noise * rng.normal(size=n)).astype(np.float32)
    design = np.c_[x, np.ones(n)]
    curvature = 2 * np.linalg.eigvalsh(design.T @ design / n).max()  # of the mean squared error
    return jnp.asarray(x), jnp.asarray(y), float(curvature)


def train_regression(tx, x, y, steps: int, batch_size: int | None = None, seed: int = 0, log_full: bool = False):
    """Train least squares with `tx` (jit + scan); the per-step loss: the batch's, or the full one."""
    n, dim = x.shape
    rng = np.random.default_rng(seed)
    if batch_size is None:
        idx = np.broadcast_to(np.arange(n), (steps, n))
    else:
        idx = np.stack([rng.choice(n, batch_size, replace=False) for _ in range(steps)])

    def step(carry, i):
        params, state = carry
        loss, grads = jax.value_and_grad(mse)(params, x[i], y[i])
        updates, state = tx.update(grads, state, params)
        logged = mse(params, x, y) if log_full else loss
        return (gc.apply_updates(params, updates), state), logged

    params = {"w": jnp.zeros(dim), "b": jnp.zeros(())}
    run = jax.jit(lambda p, s, i: jax.lax.scan(step, (p, s), i)[1])
    return np.asarray(run(params, tx.init(params), jnp.asarray(idx)))


def test_real_too_high_rate_explodes():
    x, y, curvature = regression_problem()
    losses = train_regression(gc.sgd(2.3 / curvature), x, y, 100)
    d = gc.diagnose(losses)
    assert d.kinds == ("exploding",), str(d)
    assert d["exploding"].evidence["factor"] > 1e6
    huge = train_regression(gc.sgd(50 / curvature), x, y, 100)  # overflows to inf, then NaN
    assert not np.isfinite(huge).all()
    assert gc.diagnose(huge).kinds == ("exploding",)


def test_real_tiny_rate_is_flat():
    x, y, _ = regression_problem()
    d = gc.diagnose(train_regression(gc.sgd(1e-4), x, y, 200))
    assert d.kinds == ("flat",), str(d)


@pytest.mark.parametrize("fraction", [0.05, 0.5])
def test_real_good_rate_is_healthy(fraction):
    # A good rate converges; deterministic, full-batch training that has converged is no plateau.
    x, y, curvature = regression_problem()
    d = gc.diagnose(train_regression(gc.sgd(2 * fraction / curvature), x, y, 200))
    assert d.healthy, str(d)
    assert any(note.startswith("converged") for note in d.notes)


def test_real_good_rate_still_improving_is_healthy_without_a_note():
    x, y, curvature = regression_problem()
    d = gc.diagnose(train_regression(gc.sgd(0.02 / curvature), x, y, 120))
    assert d.healthy and not any(note.startswith("converged") for note in d.notes), str(d)


@pytest.mark.parametrize("batch_size", [4, 16])
def test_real_minibatch_sgd_at_a_constant_rate_is_noisy(batch_size):
    x, y, curvature = regression_problem()
    d = gc.diagnose(train_regression(gc.sgd(0.3 / curvature), x, y, 400, batch_size))
    assert "noisy" in d and "exploding" not in d and "flat" not in d, str(d)
    # It also hovers on its noise floor: a decaying rate is the advice for both.
    assert d.kinds == ("plateau", "noisy")


@pytest.mark.parametrize("seed", range(3))
def test_real_constant_rate_sgd_on_its_noise_floor_is_a_plateau(seed):
    # The full training loss along a mini-batch SGD run: drops, then hovers above the optimum.
    x, y, curvature = regression_problem()
    losses = train_regression(gc.sgd(0.3 / curvature), x, y, 400, 32, seed=seed, log_full=True)
    d = gc.diagnose(losses)
    assert d.kinds == ("plateau",), str(d)
    assert d["plateau"].evidence["stalled_since_step"] < 100


def test_real_step_schedule_ends_on_a_plateau():
    x, y, curvature = regression_problem()
    schedule = gc.schedules.piecewise_constant_schedule(0.3 / curvature, {150: 0.3, 300: 0.3})
    losses = train_regression(gc.sgd(schedule), x, y, 600, 32, log_full=True)
    assert gc.diagnose(losses).kinds == ("plateau",)


def polynomial_problem(seed: int = 0, n_train: int = 12, n_val: int = 200, degree: int = 11):
    rng = np.random.default_rng(seed)

    def sample(n):
        t = rng.uniform(-1, 1, n)
        features = np.polynomial.legendre.legvander(t, degree).astype(np.float32)
        return jnp.asarray(features), jnp.asarray((np.sin(np.pi * t) + 0.3 * rng.normal(size=n)).astype(np.float32))

    return sample(n_train), sample(n_val)


@pytest.mark.parametrize("seed", range(2))
def test_real_overparameterised_polynomial_overfits(seed):
    (xt, yt), (xv, yv) = polynomial_problem(seed)

    def loss(w, x, y):
        return jnp.mean((x @ w - y) ** 2)

    tx = gc.adam(0.03)

    def step(carry, _):
        w, state = carry
        value, grads = jax.value_and_grad(loss)(w, xt, yt)
        updates, state = tx.update(grads, state, w)
        return (gc.apply_updates(w, updates), state), (value, loss(w, xv, yv))

    w0 = jnp.zeros(xt.shape[1])
    train, val = jax.jit(lambda w, s: jax.lax.scan(step, (w, s), None, length=2000)[1])(w0, tx.init(w0))
    train, val = np.asarray(train), np.asarray(val)
    d = gc.diagnose(train, val_history=val[::20], val_every=20)
    assert "overfitting" in d, str(d)
    f = d["overfitting"]
    assert f.evidence["best_val_step"] < 500 and f.evidence["final_val"] > 2 * f.evidence["best_val"]
    assert f.evidence["final_train"] < f.evidence["train_at_best_val"]
    # Without the validation curve nothing says overfitting, and a note says why.
    alone = gc.diagnose(train)
    assert "overfitting" not in alone and any("no val_history" in n for n in alone.notes)


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_loss_every_reports_training_steps_and_changes_nothing_else(case):
    # The same records logged every 10 steps: the same findings, with every step quoted times 10.
    history, kwargs = SYNTHETIC[case][0](0)
    every = dict(kwargs)
    if every.get("val_every"):
        every["val_every"] *= 10
    per_step, per_10 = gc.diagnose(history, **kwargs), gc.diagnose(history, loss_every=10, **every)
    assert per_10.kinds == per_step.kinds and per_10.steps == 10 * per_step.steps
    for a, b in zip(per_step.findings, per_10.findings, strict=True):
        assert a.evidence.keys() == b.evidence.keys()
        for key, value in a.evidence.items():
            scaled = 10 * value if key.endswith("_step") or key == "steps" else value
            assert b.evidence[key] == pytest.approx(scaled), (case, key)
        assert b.advice == a.advice
