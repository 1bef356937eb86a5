"""L-BFGS (`gradchain.optimizers.lbfgs`) and the line searches (`gradchain.transforms.linesearch`).

References: optax's `lbfgs` and line searches step for step; a float64 numpy transcription of the
L-BFGS inverse-Hessian recursion (as dense matrices) and of backtracking; scipy's L-BFGS-B for the
minima and iteration counts; Adam for the number of steps on a convex problem.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import gradchain as gc
from gradchain import (
    MinimizeResult,
    ScaleByBacktrackingLinesearchState,
    ScaleByLbfgsState,
    ScaleByZoomLinesearchState,
    lbfgs,
    minimize,
    scale_by_backtracking_linesearch,
    scale_by_lbfgs,
    scale_by_zoom_linesearch,
    value_and_grad_from_state,
)

# --------------------------------------------------------------------------------------------------
# Objectives


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosenbrock_tree(p):
    """Rosenbrock in 7 dimensions over a tree of three leaves of different shapes."""
    return rosenbrock(jnp.concatenate([p["a"], p["b"].ravel(), p["c"][None]]))


ROSEN_TREE_START = {
    "a": np.array([-1.2, 1.0]),
    "b": np.array([[0.5, -0.4], [1.1, 0.9]]),
    "c": np.array(0.3),
}


def _logistic_data(dtype=np.float64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10))
    labels = (x @ rng.normal(size=10) + rng.normal(size=200) > 0).astype(np.float64)
    return x.astype(dtype), labels.astype(dtype)


L2 = 1e-2


def logistic_loss(p, x, y):
    """Mean logistic loss of a linear model with bias, plus (L2 / 2) |params|^2: strongly convex."""
    z = x @ p["w"] + p["b"]
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * L2 * (jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _run(tx, value_fn, params, steps, *, reuse, fn_kwargs=None):
    """`steps` jitted steps of `tx` on `value_fn`; the params after each step, flattened."""
    fn_kwargs = fn_kwargs or {}
    value_and_grad = reuse(value_fn)

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, state=state, **fn_kwargs)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=value_fn, **fn_kwargs)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    path = []
    for _ in range(steps):
        params, state = step(params, state)
        path.append(_flat(params))
    return np.array(path), state


# --------------------------------------------------------------------------------------------------
# Against optax, step for step

OPTAX_CASES = [
    # id, gradchain optimizer, optax optimizer
    ("default", lambda: lbfgs(), lambda: optax.lbfgs()),
    (
        "memory_3_no_init_scaling",
        lambda: lbfgs(memory_size=3, scale_init_precond=False),
        lambda: optax.lbfgs(memory_size=3, scale_init_precond=False),
    ),
    (
        "zoom_keep_maxlr",
        lambda: lbfgs(linesearch=scale_by_zoom_linesearch(15, max_learning_rate=0.8, initial_guess_strategy="keep")),
        lambda: optax.lbfgs(
            linesearch=optax.scale_by_zoom_linesearch(15, max_learning_rate=0.8, initial_guess_strategy="keep")
        ),
    ),
    (
        "zoom_armijo_only",
        lambda: lbfgs(linesearch=scale_by_zoom_linesearch(20, curv_rtol=jnp.inf, approx_dec_rtol=None)),
        lambda: optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(20, curv_rtol=jnp.inf, approx_dec_rtol=None)),
    ),
    (
        "backtracking",
        lambda: lbfgs(linesearch=scale_by_backtracking_linesearch(30, store_grad=True)),
        lambda: optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(30, store_grad=True)),
    ),
    (
        "gd_backtracking",
        lambda: gc.chain(gc.scale(-1.0), scale_by_backtracking_linesearch(20, decrease_factor=0.5, store_grad=True)),
        lambda: optax.chain(
            optax.scale(-1.0), optax.scale_by_backtracking_linesearch(20, decrease_factor=0.5, store_grad=True)
        ),
    ),
]


@pytest.mark.parametrize("name, make, make_optax", OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES])
def test_matches_optax_float64_rosenbrock(name, make, make_optax):
    """Same iterates as optax over 40 steps of 7-D Rosenbrock, in float64 (measured: identical)."""
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, ROSEN_TREE_START)
        ours, _ = _run(make(), rosenbrock_tree, params, 40, reuse=value_and_grad_from_state)
        theirs, _ = _run(make_optax(), rosenbrock_tree, params, 40, reuse=optax.value_and_grad_from_state)
    assert ours.dtype == np.float64
    scale = np.abs(theirs).max(axis=1, keepdims=True)
    np.testing.assert_array_less(np.abs(ours - theirs) / scale, 1e-5)
    # The run made progress (not a trivially equal standstill).
    assert float(rosenbrock_tree(jax.tree.map(jnp.asarray, ROSEN_TREE_START))) > 10 * rosenbrock(jnp.asarray(ours[-1]))


def test_matches_optax_float32_logistic_with_data_kwargs():
    """float32, data passed as extra args to `value_fn`: same iterates as optax to 1e-5 over 12 steps.

    (The minimum is reached after ~12 steps; beyond it both sit at float32 rounding noise, where the
    line searches' decisions on values equal to rounding can differ.)
    """
    x, y = _logistic_data(np.float32)
    params = {"w": jnp.zeros(10), "b": jnp.zeros(())}
    kwargs = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    ours, _ = _run(lbfgs(), logistic_loss, params, 12, reuse=value_and_grad_from_state, fn_kwargs=kwargs)
    theirs, _ = _run(optax.lbfgs(), logistic_loss, params, 12, reuse=optax.value_and_grad_from_state, fn_kwargs=kwargs)
    scale = np.abs(theirs).max(axis=1, keepdims=True)
    np.testing.assert_array_less(np.abs(ours - theirs) / scale, 1e-5)


# --------------------------------------------------------------------------------------------------
# Against a numpy transcription of the L-BFGS recursion, with gradients that do not depend on params


def _numpy_lbfgs_directions(points, grads, memory, scale_init):
    """The L-BFGS direction $H_k g_k$ at each step, with $H_k$ built as a dense matrix (float64).

    $H = \\gamma I$, then for each of the last `memory` pairs, oldest first,
    $H \\leftarrow (I - \\rho s y^T) H (I - \\rho y s^T) + \\rho s s^T$.
    """
    n = points.shape[1]
    out = []
    pairs = []
    for k in range(len(points)):
        g = grads[k]
        if k > 0:
            s, y = points[k] - points[k - 1], g - grads[k - 1]
            pairs = [*pairs, (s, y)][-memory:]
        if k == 0:
            gamma = min(1.0, 1.0 / np.linalg.norm(g)) if scale_init else 1.0
        else:
            s, y = pairs[-1]
            gamma = (s @ y) / (y @ y) if scale_init else 1.0
        h = gamma * np.eye(n)
        for s, y in pairs:
            rho = 1.0 / (s @ y)
            v = np.eye(n) - rho * np.outer(y, s)
            h = v.T @ h @ v + rho * np.outer(s, s)
        out.append(h @ g)
    return np.array(out)


SHAPES = {"a": (3,), "b": (2, 3), "c": ()}


def _unflatten(vec, dtype):
    out, i = {}, 0
    for key, shape in SHAPES.items():
        size = int(np.prod(shape))
        out[key] = jnp.asarray(vec[i : i + size].reshape(shape), dtype)
        i += size
    return out


@pytest.mark.parametrize("memory, scale_init", [(1, True), (4, True), (10, True), (4, False)])
def test_scale_by_lbfgs_matches_dense_recursion(memory, scale_init):
    """120 steps over a 3-leaf tree in float32, against the dense float64 formula, 1e-6 relative."""
    rng = np.random.default_rng(memory)
    n, steps = 10, 120
    a = rng.normal(size=(n, n))
    hessian = a @ a.T / n + 0.5 * np.eye(n)  # SPD, so every pair has s.y > 0 and the formula is stable
    points = np.cumsum(rng.normal(size=(steps, n)), axis=0).astype(np.float32).astype(np.float64)
    grads = (points @ hessian + 0.1 * rng.normal(size=(steps, n))).astype(np.float32).astype(np.float64)
    expected = _numpy_lbfgs_directions(points, grads, memory, scale_init)

    tx = scale_by_lbfgs(memory, scale_init)
    state = tx.init(_unflatten(points[0], jnp.float32))
    update = jax.jit(tx.update)
    for k in range(steps):
        direction, state = update(_unflatten(grads[k], jnp.float32), state, _unflatten(points[k], jnp.float32))
        got = _flat(direction)
        assert got.dtype == np.float64 and direction["b"].dtype == jnp.float32
        np.testing.assert_allclose(got, expected[k], rtol=0, atol=2e-6 * np.abs(expected[k]).max(), err_msg=f"step {k}")
    assert int(state.count) == steps


# --------------------------------------------------------------------------------------------------
# The line searches on their own


def _numpy_backtracking(f, grad, w, u, prev_lr, max_steps, c=1e-4, shrink=0.8, grow=1.5, max_lr=1.0):
    """Armijo backtracking, as in optax: start at min(grow * prev, max_lr), shrink until decrease."""
    value, slope = f(w), grad(w) @ u
    lr = min(grow * prev_lr, max_lr)
    for i in range(max_steps + 1):
        if i > 0:
            lr *= shrink
        new = f(w + lr * u)
        if new - value - lr * c * slope <= 0:
            return lr, new, i + 1
    return lr, new, max_steps + 1


def test_backtracking_matches_numpy_gradient_descent():
    """Gradient descent with backtracking on 2-D Rosenbrock: 150 steps against numpy, step sizes and iterates."""

    def f_np(w):
        return float(100 * (w[1] - w[0] ** 2) ** 2 + (1 - w[0]) ** 2)

    def grad_np(w):
        return np.array([-400 * w[0] * (w[1] - w[0] ** 2) - 2 * (1 - w[0]), 200 * (w[1] - w[0] ** 2)])

    with jax.enable_x64(True):
        tx = gc.chain(gc.scale(-1.0), scale_by_backtracking_linesearch(25, store_grad=True))
        params = jnp.array([-1.2, 1.0])
        state = tx.init(params)
        value_and_grad = value_and_grad_from_state(rosenbrock)

        @jax.jit
        def step(params, state):
            value, grad = value_and_grad(params, state=state)
            updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=rosenbrock)
            return params + updates, state

        w, lr = np.array([-1.2, 1.0]), 1.0
        for k in range(150):
            params, state = step(params, state)
            lr, value, evals = _numpy_backtracking(f_np, grad_np, w, -grad_np(w), lr, 25)
            w = w - lr * grad_np(w)
            ls = state[1]
            assert isinstance(ls, ScaleByBacktrackingLinesearchState)
            np.testing.assert_allclose(float(ls.learning_rate), lr, rtol=1e-12, err_msg=f"step {k}")
            assert int(ls.info.num_linesearch_steps) == evals
            np.testing.assert_allclose(np.asarray(params), w, rtol=1e-10)
            np.testing.assert_allclose(float(ls.value), value, rtol=1e-10)
        assert f_np(w) < 0.1 * f_np(np.array([-1.2, 1.0]))


def test_zoom_steps_satisfy_strong_wolfe():
    """Every accepted L-BFGS step on 10-D Rosenbrock meets both Wolfe conditions, checked in numpy."""
    with jax.enable_x64(True):
        tx = lbfgs()
        params = jnp.asarray(np.tile([-1.2, 1.0], 5))
        state = tx.init(params)
        value_and_grad = jax.jit(jax.value_and_grad(rosenbrock))
        update = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v, grad=g, value_fn=rosenbrock))
        for k in range(40):
            value, grad = value_and_grad(params)
            updates, state = update(grad, state, params, value)
            eta = float(state[2].learning_rate)
            direction = np.asarray(updates) / eta
            new_value, new_grad = value_and_grad(params + updates)
            slope0, slope = np.asarray(grad) @ direction, np.asarray(new_grad) @ direction
            assert slope0 < 0, k
            armijo = float(new_value) <= float(value) + 1e-4 * eta * slope0
            approx_wolfe = slope <= (2e-4 - 1) * slope0 and float(new_value) <= float(value) + 1e-6 * abs(float(value))
            assert armijo or approx_wolfe, k
            assert abs(slope) <= 0.9 * abs(slope0) + 1e-12, k
            assert float(state[2].info.decrease_error) == 0 and float(state[2].info.curvature_error) == 0
            # The stored value and gradient are those at the accepted point.
            np.testing.assert_allclose(float(state[2].value), float(new_value), rtol=1e-12)
            np.testing.assert_allclose(np.asarray(state[2].grad), np.asarray(new_grad), rtol=1e-12)
            params = params + updates


def test_zoom_exact_step_on_a_quadratic():
    """On a quadratic along -grad the zoom search returns the exact minimiser's step after one interpolation."""
    hessian = jnp.diag(jnp.array([1.0, 4.0]))

    def f(w):
        return 0.5 * w @ hessian @ w

    tx = gc.chain(gc.scale(-1.0), scale_by_zoom_linesearch(10, initial_guess_strategy="one", curv_rtol=0.01))
    w = jnp.array([1.0, 1.0])
    state = tx.init(w)
    value, grad = jax.value_and_grad(f)(w)
    _, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=f)
    exact = float(grad @ grad / (grad @ hessian @ grad))  # 17 / 65
    np.testing.assert_allclose(float(state[1].learning_rate), exact, rtol=1e-5)


def test_line_search_reuses_its_evaluation():
    """With `value_and_grad_from_state`, each step evaluates the objective only inside the line search."""
    calls = []

    def f(w):
        jax.debug.callback(lambda: calls.append(1))
        return rosenbrock(w)

    tx = lbfgs()
    value_and_grad = value_and_grad_from_state(f)

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, state=state)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=f)
        return params + updates, state

    params, state = jnp.array([-1.2, 1.0]), tx.init(jnp.zeros(2))
    expected = 0
    for k in range(15):
        params, state = step(params, state)
        jax.effects_barrier()
        expected += int(state[2].info.num_linesearch_steps) + (1 if k == 0 else 0)  # one first evaluation
        assert len(calls) == expected, k


# --------------------------------------------------------------------------------------------------
# Against scipy's L-BFGS-B, and against Adam


def _scipy(fun, x0):
    return scipy.optimize.minimize(
        fun, x0, jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 2000}
    )


PROBLEMS = ["rosenbrock_2d", "rosenbrock_10d", "logistic"]


def _problem(name):
    if name.startswith("rosenbrock"):
        n = 2 if name == "rosenbrock_2d" else 10
        x0 = np.tile([-1.2, 1.0], n // 2)
        return rosenbrock, jnp.asarray(x0), {}, x0
    x, y = _logistic_data()
    return (
        logistic_loss,
        {"w": jnp.zeros(10), "b": jnp.zeros(())},
        {"x": jnp.asarray(x), "y": jnp.asarray(y)},
        np.zeros(11),
    )


@pytest.mark.parametrize("name", PROBLEMS)
def test_same_minimum_as_scipy(name):
    """Same minimiser as scipy's L-BFGS-B to 1e-6, with iteration counts of the same order.

    Measured (float64, gradient norm to 1e-10): Rosenbrock 2-D 36 steps / 47 evaluations (scipy 38 /
    46), 10-D 92 / 112 (scipy 76 / 94), logistic regression 17 / 18 (scipy 14 / 15).
    """
    with jax.enable_x64(True):
        fn, params, kwargs, x0 = _problem(name)
        result = minimize(fn, params, max_steps=500, tol=1e-10, fn_kwargs=kwargs)
        assert isinstance(result, MinimizeResult)
        structure = jax.tree.structure(params)
        sizes = [int(np.size(leaf)) for leaf in jax.tree.leaves(params)]
        shapes = [np.shape(leaf) for leaf in jax.tree.leaves(params)]

        value_and_grad = jax.jit(jax.value_and_grad(fn))

        def fun(v):
            leaves, i = [], 0
            for size, shape in zip(sizes, shapes, strict=True):
                leaves.append(jnp.asarray(v[i : i + size].reshape(shape)))
                i += size
            value, grad = value_and_grad(structure.unflatten(leaves), **kwargs)
            return float(value), _flat(grad)

        reference = _scipy(fun, x0)
    assert reference.success
    assert float(result.grad_norm) <= 1e-10 and int(result.num_steps) < 500
    ours = _flat(result.params)
    np.testing.assert_allclose(ours, reference.x, rtol=0, atol=1e-6 * np.abs(reference.x).max())
    np.testing.assert_allclose(float(result.value), reference.fun, rtol=1e-9, atol=1e-14)
    # Iteration and evaluation counts within a factor 2 of scipy's.
    assert 0.5 * reference.nit <= int(result.num_steps) <= 2 * reference.nit
    assert 0.5 * reference.nfev <= int(result.num_fun_evals) <= 2 * reference.nfev
    # The history is consistent with the result.
    steps = int(result.num_steps)
    assert np.all(np.isfinite(result.history["value"][: steps + 1])) and np.all(
        np.isnan(result.history["value"][steps + 1 :])
    )
    assert int(result.history["num_fun_evals"][steps]) == int(result.num_fun_evals)


def _ill_conditioned_quadratic():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    hessian = q @ np.diag(np.logspace(0, 4, 10)) @ q.T  # condition number 10^4, not axis-aligned
    target = rng.normal(size=10)

    def f(p):
        d = p - jnp.asarray(target)
        return 0.5 * d @ jnp.asarray(hessian) @ d

    return f, jnp.zeros(10), {}


@pytest.mark.parametrize("name", ["logistic", "quadratic"])
def test_far_fewer_steps_than_adam(name):
    """Steps to a gradient norm of 1e-6 (float64), L-BFGS vs Adam at its best of four learning rates.

    Measured: logistic regression L-BFGS 12 steps (13 evaluations), Adam 218 steps at best (lr 0.3);
    ill-conditioned 10-D quadratic (condition 10^4) L-BFGS 199 steps (224 evaluations), Adam 2951
    at best (lr 0.3), up to 10,289 (lr 0.01). (Scipy's L-BFGS-B also needs about 200 iterations on such
    problems: with inexact line searches L-BFGS does not finish a quadratic in n steps.)
    """
    with jax.enable_x64(True):
        if name == "logistic":
            fn, params, kwargs, _ = _problem("logistic")
        else:
            fn, params, kwargs = _ill_conditioned_quadratic()
        ours = minimize(fn, params, max_steps=1000, tol=1e-6, fn_kwargs=kwargs)
        adam = gc.adam(0.1)
        start = adam.init(params)
        adam_steps = [  # one compilation: the learning rate is a hyperparameter in the state
            int(
                minimize(
                    fn,
                    params,
                    adam,
                    max_steps=20_000,
                    tol=1e-6,
                    fn_kwargs=kwargs,
                    state=gc.set_hyperparams(start, learning_rate=lr),
                ).num_steps
            )
            for lr in (0.03, 0.1, 0.3, 1.0)
        ]
    assert float(ours.grad_norm) <= 1e-6
    best_adam = min(adam_steps)
    assert 10 * int(ours.num_steps) < best_adam, (int(ours.num_steps), adam_steps)
    assert 10 * int(ours.num_fun_evals) < best_adam


# --------------------------------------------------------------------------------------------------
# State, hyperparameters, bad inputs


def test_state_layout_and_bytes_per_parameter():
    """scale_by_lbfgs keeps 2m + 2 copies of the params: 88 bytes per float32 parameter with m = 10; lbfgs 92."""
    n = 100_000
    params = {"w": jnp.zeros((n // 4, 2)), "b": jnp.zeros(n // 2)}
    state = scale_by_lbfgs().init(params)
    assert isinstance(state, ScaleByLbfgsState)
    assert state.diff_params_memory["w"].shape == (10, n // 4, 2) and state.weights_memory.shape == (10,)

    def nbytes(tree):
        return sum(x.nbytes for x in jax.tree.leaves(tree))

    assert nbytes(state) - 10 * 4 - 4 == 88 * n  # less the weights and the count
    full = lbfgs().init(params)
    assert isinstance(full[2], ScaleByZoomLinesearchState)
    per_param = nbytes(full) / n
    assert 92 <= per_param < 92.01, per_param


def test_hyperparameters_in_state():
    state = lbfgs().init(jnp.zeros(3))
    hp = gc.hyperparams(state)
    assert float(hp["curv_rtol"]) == pytest.approx(0.9) and float(hp["slope_rtol"]) == pytest.approx(1e-4)
    assert float(hp["step_size"]) == -1.0
    # A change is used without rebuilding the optimizer: a tiny curv_rtol forces an exact line search.
    f = lambda w: jnp.sum(jnp.array([1.0, 10.0, 100.0]) * (w - 1.0) ** 2)  # noqa: E731
    tx = lbfgs()
    step = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v, grad=g, value_fn=f))
    p = jnp.zeros(3)
    v, g = jax.value_and_grad(f)(p)
    _, loose = step(g, tx.init(p), p, v)
    _, tight = step(g, gc.set_hyperparams(tx.init(p), curv_rtol=1e-3), p, v)
    assert int(tight[2].info.num_linesearch_steps) > int(loose[2].info.num_linesearch_steps)


@pytest.mark.parametrize(
    "kwargs, missing",
    [
        ({"grad": True, "value_fn": True}, "value"),
        ({"value": True, "grad": True}, "value_fn"),
        ({"value": True, "value_fn": True}, "grad"),
        ({}, "value, grad, value_fn"),
    ],
)
@pytest.mark.parametrize("which", ["zoom", "backtracking"])
def test_missing_extra_args(kwargs, missing, which):
    f = lambda w: jnp.sum(w**2)  # noqa: E731
    w = jnp.ones(2)
    value, grad = jax.value_and_grad(f)(w)
    given = {"value": value, "grad": grad, "value_fn": f}
    args = {k: given[k] for k in kwargs}
    search = scale_by_zoom_linesearch(5) if which == "zoom" else scale_by_backtracking_linesearch(5)
    tx = lbfgs(linesearch=search)
    with pytest.raises(TypeError, match=rf"missing: {missing}\. Call"):
        tx.update(grad, tx.init(w), w, **args)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: scale_by_lbfgs(memory_size=0), ValueError, "memory_size"),
        (lambda: lbfgs(memory_size=-1), ValueError, "memory_size"),
        (lambda: scale_by_lbfgs(memory_size=2.0), TypeError, "memory_size"),
        (lambda: scale_by_lbfgs(scale_init_precond=1), TypeError, "scale_init_precond"),
        (lambda: scale_by_zoom_linesearch(0), ValueError, "max_linesearch_steps"),
        (lambda: scale_by_zoom_linesearch(5, initial_guess_strategy="two"), ValueError, "initial_guess_strategy"),
        (lambda: scale_by_zoom_linesearch(5, slope_rtol=-1.0), ValueError, "slope_rtol"),
        (lambda: scale_by_zoom_linesearch(5, curv_rtol=-0.5), ValueError, "curv_rtol"),
        (lambda: scale_by_zoom_linesearch(5, max_learning_rate=0.0), ValueError, "max_learning_rate"),
        (lambda: scale_by_backtracking_linesearch(-1), ValueError, "max_backtracking_steps"),
        (lambda: scale_by_backtracking_linesearch(5, decrease_factor=1.0), ValueError, "decrease_factor"),
        (lambda: scale_by_backtracking_linesearch(5, increase_factor=0.0), ValueError, "increase_factor"),
        (lambda: scale_by_backtracking_linesearch(5, store_grad=1), TypeError, "store_grad"),
        (lambda: minimize(lambda w: w @ w, jnp.ones(2), max_steps=-3), ValueError, "max_steps"),
    ],
)
def test_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_complex_and_integer_params_rejected_naming_the_leaf():
    with pytest.raises(TypeError, match=r"scale_by_lbfgs: param leaf z.*complex"):
        lbfgs().init({"z": jnp.ones(2, jnp.complex64)})
    with pytest.raises(TypeError, match=r"leaf n\b.*int32"):
        lbfgs().init({"n": jnp.ones(2, jnp.int32)})


def test_value_and_grad_from_state_errors_and_first_step():
    f = lambda w: jnp.sum(w**2)  # noqa: E731
    with pytest.raises(ValueError, match="no line search"):
        value_and_grad_from_state(f)(jnp.ones(2), state=gc.adam(0.1).init(jnp.ones(2)))
    no_grad = gc.chain(gc.scale(-1.0), scale_by_backtracking_linesearch(5))
    with pytest.raises(ValueError, match="store_grad=True"):
        value_and_grad_from_state(f)(jnp.ones(2), state=no_grad.init(jnp.ones(2)))
    # Before the first step the stored value is inf: computed instead.
    value, grad = value_and_grad_from_state(f)(jnp.array([1.0, 2.0]), state=lbfgs().init(jnp.ones(2)))
    assert float(value) == 5.0 and np.allclose(grad, [2.0, 4.0])
