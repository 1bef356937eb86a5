"""Every ready-made optimizer solves the textbook problems to a tight tolerance.

(a) Full-batch linear least squares, the running example of the CMU 10-701 lecture on optimization
    (shared/seeds/003): $L(w, b) = \\frac1N \\|Xw + b - y\\|^2$ with X 200x5, y = X w* + b* + noise;
    the answer is the closed-form `np.linalg.lstsq` solution, and with coupled L2 decay the ridge one.
(b) The ill-conditioned quadratic $\\tfrac12 x^T \\mathrm{diag}(1, 100) x$ (condition number 100), whose
    optimum is 0; plus the textbook facts about gradient descent on it (shared/seeds/002): the step
    size $2/(L+\\mu)$ contracts by exactly $(\\kappa-1)/(\\kappa+1)$ per step, above $2/L$ it diverges,
    and heavy-ball momentum needs about $\\sqrt\\kappa$ times fewer steps.

Convergence alone proves little about an optimizer's formula (tests/optimizers/test_optimizers.py checks that);
this file checks that the recipes work end to end, in jitted loops, in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

pytestmark = pytest.mark.slow  # every optimizer, 1000 jitted steps per problem

S = gc.schedules
N_STEPS = 1000


def decaying(lr: float) -> Callable:
    """lr decayed exponentially by 1000x over the run: adaptive steps otherwise hover at the scale of lr."""
    return S.exponential_decay(lr, N_STEPS, 1e-3)


# (id, builder: learning rate -> optimizer, learning rate for least squares, for the quadratic)
# Decoupled decay moves the minimum away from the least-squares one, so the `*w` optimizers run with
# weight_decay=0 here (their decay is checked in tests/optimizers/test_optimizers.py).
CASES: list[tuple[str, Callable[[Any], gc.GradientTransformation], Any, Any]] = [
    ("sgd", lambda lr: gc.sgd(lr), 0.5, 0.015),
    ("sgd-momentum", lambda lr: gc.sgd(lr, 0.9), 0.1, 0.01),
    ("sgd-nesterov", lambda lr: gc.sgd(lr, 0.9, True), 0.1, 0.01),
    ("sgd-dampening", lambda lr: gc.sgd(lr, 0.9, dampening=0.5), 0.2, 0.01),
    ("adagrad", lambda lr: gc.adagrad(lr), 0.5, 0.5),
    ("adagrad-torch", lambda lr: gc.adagrad(lr, 0.0, 1e-10, eps_in_sqrt=False, lr_decay=1e-3), 0.5, 0.5),
    ("rmsprop", lambda lr: gc.rmsprop(lr), decaying(0.01), decaying(0.01)),
    ("rmsprop-centered-momentum", lambda lr: gc.rmsprop(lr, centered=True, momentum=0.9), decaying(0.01),
     decaying(0.01)),
    ("rmsprop-torch", lambda lr: gc.rmsprop(lr, decay=0.99, eps_in_sqrt=False), decaying(0.03), decaying(0.01)),
    ("adam", lambda lr: gc.adam(lr), 0.05, 0.05),
    ("adamw", lambda lr: gc.adamw(lr, weight_decay=0.0), 0.05, 0.05),
    ("nadam", lambda lr: gc.nadam(lr), decaying(0.05), 0.05),
    ("nadam-momentum_decay", lambda lr: gc.nadam(lr, momentum_decay=4e-3), decaying(0.05), 0.05),
    ("nadamw", lambda lr: gc.nadamw(lr, weight_decay=0.0), decaying(0.05), 0.05),
    ("amsgrad", lambda lr: gc.amsgrad(lr), 0.05, 0.05),
    ("amsgrad-torch", lambda lr: gc.amsgrad(lr, debias_before_max=False), 0.05, 0.05),
    ("adamax", lambda lr: gc.adamax(lr), 0.05, 0.05),
    ("adamaxw", lambda lr: gc.adamaxw(lr, weight_decay=0.0), 0.05, 0.05),
]  # fmt: skip
IDS = [c[0] for c in CASES]


def test_every_optimizer_is_in_the_table():
    names = {case_id.split("-")[0] for case_id in IDS}
    assert names == {"sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax", "adamaxw"}


def minimize_all(txs: list[gc.GradientTransformation], loss: Callable, params: Any, steps: int) -> list[Any]:
    """Run every optimizer `steps` full-batch steps on `loss`, all in one jitted scan; final params."""

    def body(carry, _):
        new = []
        for tx, (p, state) in zip(txs, carry, strict=True):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            new.append((gc.apply_updates(p, updates), state))
        return new, None

    @jax.jit
    def go(p):
        final, _ = jax.lax.scan(body, [(p, tx.init(p)) for tx in txs], None, length=steps)
        return [p for p, _ in final]

    return [jax.tree.map(np.asarray, p) for p in go(params)]


# ---------------------------------------------------------------------------------------------------
# (a) linear least squares


def _regression_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 5))
    w_star, b_star = rng.normal(size=5), 0.5
    y = X @ w_star + b_star + 0.1 * rng.normal(size=200)
    return X, y


X, Y = _regression_data()
A = np.hstack([X, np.ones((len(X), 1))])  # [x; 1]: the bias as one more weight
LSTSQ = np.linalg.lstsq(A, Y, rcond=None)[0]
X32, Y32 = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)
ZERO_PARAMS = {"w": jnp.zeros(5), "b": jnp.zeros(())}


def mse(params):
    return jnp.mean((X32 @ params["w"] + params["b"] - Y32) ** 2)


def _flat(params) -> np.ndarray:
    return np.append(np.asarray(params["w"], np.float64), np.float64(params["b"]))


@functools.cache
def least_squares_results() -> dict[str, np.ndarray]:
    finals = minimize_all([make(lr) for _, make, lr, _ in CASES], mse, ZERO_PARAMS, N_STEPS)
    return {case_id: _flat(p) for case_id, p in zip(IDS, finals, strict=True)}


def test_closed_form_is_the_minimum():
    gradient = 2 / len(X) * A.T @ (A @ LSTSQ - Y)
    assert np.max(np.abs(gradient)) < 1e-12
    np.testing.assert_allclose(jax.grad(mse)({"w": LSTSQ[:5], "b": LSTSQ[5]})["w"], 0, atol=1e-5)


@pytest.mark.parametrize("case_id", IDS)
def test_least_squares_reaches_lstsq(case_id):
    found = least_squares_results()[case_id]
    error = np.linalg.norm(found - LSTSQ) / np.linalg.norm(LSTSQ)
    assert error < 1e-4, f"{case_id}: relative distance to the lstsq solution {error:.2e} after {N_STEPS} steps"


# Coupled L2 decay is the gradient of (lambda / 2) ||theta||^2 (over every leaf, the bias included), so
# these optimizers minimise the ridge objective: (2/N A^T A + lambda I) theta = 2/N A^T y.
RIDGE_LAMBDA = 0.3
RIDGE = np.linalg.solve(2 / len(X) * A.T @ A + RIDGE_LAMBDA * np.eye(6), 2 / len(X) * A.T @ Y)
RIDGE_CASES = [
    ("sgd", lambda: gc.sgd(0.2, 0.5, weight_decay=RIDGE_LAMBDA)),
    ("adagrad", lambda: gc.adagrad(0.5, weight_decay=RIDGE_LAMBDA)),
    ("rmsprop", lambda: gc.rmsprop(decaying(0.01), weight_decay=RIDGE_LAMBDA)),
    ("adam", lambda: gc.adam(0.05, weight_decay=RIDGE_LAMBDA)),
    ("nadam", lambda: gc.nadam(decaying(0.05), weight_decay=RIDGE_LAMBDA)),
    ("amsgrad", lambda: gc.amsgrad(0.05, weight_decay=RIDGE_LAMBDA)),
    ("adamax", lambda: gc.adamax(0.05, weight_decay=RIDGE_LAMBDA)),
    ("adamw", lambda: gc.adamw(0.05, weight_decay=RIDGE_LAMBDA)),  # decoupled: NOT the ridge solution
]


@functools.cache
def ridge_results() -> dict[str, np.ndarray]:
    finals = minimize_all([make() for _, make in RIDGE_CASES], mse, ZERO_PARAMS, N_STEPS)
    return {name: _flat(p) for (name, _), p in zip(RIDGE_CASES, finals, strict=True)}


@pytest.mark.parametrize("name", [c[0] for c in RIDGE_CASES if c[0] != "adamw"])
def test_coupled_weight_decay_reaches_the_ridge_solution(name):
    assert np.linalg.norm(RIDGE - LSTSQ) > 0.1 * np.linalg.norm(LSTSQ)  # the two minima are far apart
    error = np.linalg.norm(ridge_results()[name] - RIDGE) / np.linalg.norm(RIDGE)
    assert error < 1e-4, f"{name}: relative distance to the ridge solution {error:.2e}"


def test_decoupled_weight_decay_is_not_ridge():
    # AdamW's fixed point balances the *normalised* gradient against lambda * theta, not the gradient.
    found = ridge_results()["adamw"]
    assert np.linalg.norm(found - RIDGE) / np.linalg.norm(RIDGE) > 1e-2
    assert np.linalg.norm(found - LSTSQ) / np.linalg.norm(LSTSQ) > 1e-2


# ---------------------------------------------------------------------------------------------------
# (b) the ill-conditioned quadratic


CURVATURES = jnp.array([1.0, 100.0])
START = {"x": jnp.array([1.0, 1.0])}


def quadratic(params):
    return 0.5 * jnp.sum(CURVATURES * params["x"] ** 2)


@functools.cache
def quadratic_results() -> dict[str, np.ndarray]:
    finals = minimize_all([make(lr) for _, make, _, lr in CASES], quadratic, START, N_STEPS)
    return {case_id: np.asarray(p["x"], np.float64) for case_id, p in zip(IDS, finals, strict=True)}


@pytest.mark.parametrize("case_id", IDS)
def test_quadratic_reaches_the_optimum(case_id):
    distance = np.linalg.norm(quadratic_results()[case_id])
    assert distance < 1e-3, f"{case_id}: |x| = {distance:.2e} after {N_STEPS} steps"


def _trajectory(tx: gc.GradientTransformation, steps: int) -> np.ndarray:
    def body(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(quadratic)(p), state, p)
        p = gc.apply_updates(p, updates)
        return (p, state), p["x"]

    return np.asarray(jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=steps)[1])(START))


def test_gradient_descent_at_the_optimal_step_contracts_by_kappa_ratio():
    """With eta = 2/(L+mu), x_k = ((1 - eta mu)^k, (1 - eta L)^k) = ((99/101)^k, (-99/101)^k)."""
    k = np.arange(1, 201)
    rate = 99 / 101
    xs = _trajectory(gc.sgd(2 / 101), 200)
    np.testing.assert_allclose(xs[:, 0], rate**k, rtol=1e-5)
    np.testing.assert_allclose(xs[:, 1], (-rate) ** k, rtol=1e-4)


def test_gradient_descent_diverges_above_two_over_L():
    xs = _trajectory(gc.sgd(2.02 / 100), 300)
    assert abs(xs[-1, 1]) > 1.0 and abs(xs[-1, 1]) > abs(xs[-100, 1])
    stable = _trajectory(gc.sgd(1.98 / 100), 300)
    assert abs(stable[-1, 1]) < 0.1


def test_heavy_ball_needs_about_sqrt_kappa_fewer_steps():
    """Polyak's tuning beta = ((sqrt(k)-1)/(sqrt(k)+1))^2, eta = 4/(sqrt(L)+sqrt(mu))^2: rate 9/11, not 99/101."""
    beta, eta = (9 / 11) ** 2, 4 / 11**2
    plain = np.linalg.norm(_trajectory(gc.sgd(2 / 101), 400), axis=1)
    heavy = np.linalg.norm(_trajectory(gc.sgd(eta, beta), 400), axis=1)
    first = lambda norms: int(np.argmax(norms < 1e-3)) + 1  # noqa: E731
    assert np.all(plain[-1] < 1e-3) and heavy[-1] < 1e-3
    assert first(plain) > 300  # log(1e-3 / sqrt 2) / log(99/101) = 359
    assert first(heavy) < 60  # ~ log(1e-3) / log(9/11) = 35, times a polynomial factor


# ---------------------------------------------------------------------------------------------------
# (c) Rosenbrock's banana, $f(x, y) = (1-x)^2 + 100 (y-x^2)^2$ from (-1.2, 1): a curved valley whose
# floor is nearly flat, minimum 0 at (1, 1). f starts at 24.2; each optimizer must bring it below
# 24.2e-4 (a 1e4 reduction) in 4,000 jitted float32 steps. The newer optimizers are checked on it in
# their own test files (test_adam_variants.py, test_sgd_variants.py, test_trust_ratio.py, test_sm3.py,
# test_lbfgs.py).

ROSENBROCK_STEPS = 4000


def rosenbrock(params):
    x, y = params["x"], params["y"]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rosenbrock_decay(lr: float) -> Callable:
    return S.exponential_decay(lr, ROSENBROCK_STEPS, 1e-2)


# Learning rates from a sweep over 1e-3..3 (the best of each, rounded to the grid); AdaGrad and AMSGrad
# already shrink their steps and run at a constant rate.
ROSENBROCK_CASES = {
    "sgd_momentum": lambda: gc.sgd(_rosenbrock_decay(3e-3), momentum=0.9),
    "adagrad": lambda: gc.adagrad(0.3),
    "rmsprop": lambda: gc.rmsprop(_rosenbrock_decay(1e-2)),
    "adam": lambda: gc.adam(_rosenbrock_decay(0.3)),
    "adamw": lambda: gc.adamw(_rosenbrock_decay(0.3), weight_decay=0.0),
    "nadam": lambda: gc.nadam(_rosenbrock_decay(0.3)),
    "nadamw": lambda: gc.nadamw(_rosenbrock_decay(0.3), weight_decay=0.0),
    "amsgrad": lambda: gc.amsgrad(1.0),
    "adamax": lambda: gc.adamax(_rosenbrock_decay(1.0)),
    "adamaxw": lambda: gc.adamaxw(_rosenbrock_decay(1.0), weight_decay=0.0),
    "lion": lambda: gc.lion(_rosenbrock_decay(0.01), weight_decay=None),
    "adafactor": lambda: gc.adafactor(_rosenbrock_decay(0.1)),
}


@pytest.mark.parametrize("name", sorted(ROSENBROCK_CASES))
def test_classic_optimizers_descend_the_rosenbrock_valley(name):
    tx = ROSENBROCK_CASES[name]()
    params = {"x": jnp.float32(-1.2), "y": jnp.float32(1.0)}

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(rosenbrock)(p), s, p)
        return (gc.apply_updates(p, u), s), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=ROSENBROCK_STEPS))((params, tx.init(params)))
    assert float(rosenbrock(params)) < 24.2e-4, (name, float(rosenbrock(params)))
