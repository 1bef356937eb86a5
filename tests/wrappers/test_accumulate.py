"""Tests of `multi_steps` (gradient accumulation): against the large batch, a float64 mean, and optax."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import assert_trajectory_close, assert_trees_close, assert_trees_equal, grad_sequence

import gradchain as gc
from gradchain import MultiStepsState, apply_if_finite, has_updated, multi_steps, skip_on_spike

SHAPES = {"w": (3, 5), "b": (5,), "layers": [(2, 2, 3), (1,)]}


def _jnp(tree):
    return jax.tree.map(jnp.asarray, tree)


# --------------------------------------------------------------------------------------------------
# The mean that reaches the inner transformation


@pytest.mark.parametrize(
    "dtype, accumulator_dtype, rtol",
    [
        (np.float32, None, 1e-6),
        (np.float32, jnp.float32, 1e-6),
        # bfloat16 gradients summed in float32: the mean is the float64 mean rounded once to bfloat16.
        (jnp.bfloat16, jnp.float32, 2.0**-8),
    ],
)
@pytest.mark.parametrize("k", [1, 3, 4])
def test_mean_matches_float64_reference(dtype, accumulator_dtype, rtol, k):
    grads = grad_sequence(SHAPES, 30 * k, seed=k, dtype=dtype)
    tx = multi_steps(gc.identity(), k, accumulator_dtype=accumulator_dtype)
    params = jax.tree.map(lambda g: jnp.zeros(g.shape, g.dtype), grads[0])
    step = jax.jit(tx.update)
    state = tx.init(params)
    outs = []
    for g in grads:
        u, state = step(_jnp(g), state)
        outs.append(u)
    for j, u in enumerate(outs):
        assert all(leaf.dtype == jnp.dtype(dtype) for leaf in jax.tree.leaves(u))
        if j % k != k - 1:
            assert all((np.asarray(leaf, np.float64) == 0).all() for leaf in jax.tree.leaves(u)), f"step {j}"
    expected = [
        jax.tree.map(lambda *gs: np.mean(np.stack([np.asarray(x, np.float64) for x in gs]), axis=0), *grads[i : i + k])
        for i in range(0, len(grads), k)
    ]
    assert_trajectory_close(outs[k - 1 :: k], expected, rtol)


def test_bfloat16_accumulator_loses_precision_float32_does_not():
    # Why the option exists: 64 bfloat16 micro-gradients summed in bfloat16 drift; in float32 they don't.
    k = 64
    rng = np.random.default_rng(0)
    grads = [{"w": jnp.asarray(rng.uniform(0.5, 1.5, 16), jnp.bfloat16)} for _ in range(k)]
    exact = np.mean([np.asarray(g["w"], np.float64) for g in grads], axis=0)
    errors = {}
    for acc in (jnp.bfloat16, jnp.float32):
        tx = multi_steps(gc.identity(), k, accumulator_dtype=acc)
        state = tx.init({"w": jnp.zeros(16, jnp.bfloat16)})
        assert state.acc_grads["w"].dtype == acc
        step = jax.jit(tx.update)
        for g in grads:
            u, state = step(g, state)
        errors[acc] = np.max(np.abs(np.asarray(u["w"], np.float64) - exact) / exact)
    assert errors[jnp.float32] <= 2.0**-8
    assert errors[jnp.bfloat16] > 4 * errors[jnp.float32]


# --------------------------------------------------------------------------------------------------
# k micro-batches of size B == one batch of size kB


def _mlp_loss(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    pred = h @ params["w2"] + params["b2"]
    return jnp.mean((pred - y) ** 2)


def _schedule():
    return gc.schedules.linear_schedule(0.05, 0.005, 12)


def _schedule_np(t):
    return 0.05 + (0.005 - 0.05) * min(t, 12) / 12


OPTIMIZERS = {
    "sgd": lambda lr: gc.sgd(lr, momentum=0.9),
    "adam": lambda lr: gc.adam(lr),
    "adamw": lambda lr: gc.adamw(lr, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_accumulation_equals_large_batch(name):
    k, batch, steps = 4, 8, 15
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps, k * batch, 6)).astype(np.float32)
    y = rng.standard_normal((steps, k * batch, 2)).astype(np.float32)
    params0 = {
        "w1": jnp.asarray(rng.standard_normal((6, 16)) / 3, jnp.float32),
        "b1": jnp.zeros(16),
        "w2": jnp.asarray(rng.standard_normal((16, 2)) / 4, jnp.float32),
        "b2": jnp.zeros(2),
    }
    big, acc = OPTIMIZERS[name](_schedule()), multi_steps(OPTIMIZERS[name](_schedule()), k)
    grad = jax.jit(jax.grad(_mlp_loss))
    big_step, acc_step = jax.jit(big.update), jax.jit(acc.update)

    p_big, s_big = params0, big.init(params0)
    p_acc, s_acc = params0, acc.init(params0)
    big_traj, acc_traj = [], []
    for t in range(steps):
        u, s_big = big_step(grad(p_big, x[t], y[t]), s_big, p_big)
        p_big = gc.apply_updates(p_big, u)
        for j in range(k):
            sl = slice(j * batch, (j + 1) * batch)
            u, s_acc = acc_step(grad(p_acc, x[t, sl], y[t, sl]), s_acc, p_acc)
            p_acc = gc.apply_updates(p_acc, u)
            assert bool(has_updated(s_acc)) == (j == k - 1)
            if j < k - 1:  # params do not move on non-final micro-steps
                assert all((np.asarray(leaf) == 0).all() for leaf in jax.tree.leaves(u))
        big_traj.append(p_big)
        acc_traj.append(p_acc)
        # The schedule advanced once per real step: the learning rate used at real step t is eta(t).
        lr_acc, lr_big = gc.hyperparams(s_acc)["learning_rate"], gc.hyperparams(s_big)["learning_rate"]
        assert lr_acc == lr_big
        np.testing.assert_allclose(float(lr_acc), _schedule_np(t), rtol=1e-6)
        assert int(s_acc.gradient_step) == t + 1 and int(s_acc.mini_step) == 0
    assert_trajectory_close(acc_traj, big_traj, 2e-6)
    # The run moved: a test where nothing changes could not fail.
    assert np.abs(np.asarray(p_acc["w1"]) - np.asarray(params0["w1"])).max() > 1e-2


# --------------------------------------------------------------------------------------------------
# Against optax.MultiSteps


@pytest.mark.parametrize(
    "gc_tx, optax_tx",
    [
        (lambda: gc.sgd(0.1, momentum=0.9), lambda: optax.sgd(0.1, momentum=0.9)),
        (
            lambda: gc.adam(optax.cosine_decay_schedule(1e-2, 40)),
            lambda: optax.adam(optax.cosine_decay_schedule(1e-2, 40)),
        ),
    ],
    ids=["sgd", "adam_schedule"],
)
def test_matches_optax_multisteps(gc_tx, optax_tx):
    k, steps = 4, 120
    grads = grad_sequence(SHAPES, steps, seed=3)
    params = _jnp(jax.tree.map(lambda g: np.ones_like(g), grads[0]))
    ours, theirs = multi_steps(gc_tx(), k), optax.MultiSteps(optax_tx(), k)
    step_ours, step_theirs = jax.jit(ours.update), jax.jit(theirs.update)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    p_ours = p_theirs = params
    traj_ours, traj_theirs = [], []
    for j, g in enumerate(grads):
        g = _jnp(g)
        u, s_ours = step_ours(g, s_ours, p_ours)
        p_ours = gc.apply_updates(p_ours, u)
        u, s_theirs = step_theirs(g, s_theirs, p_theirs)
        p_theirs = optax.apply_updates(p_theirs, u)
        traj_ours.append(p_ours)
        traj_theirs.append(p_theirs)
        assert bool(has_updated(s_ours)) == bool(theirs.has_updated(s_theirs)), f"step {j}"
        assert int(s_ours.mini_step) == int(s_theirs.mini_step)
        assert int(s_ours.gradient_step) == int(s_theirs.gradient_step)
    # optax keeps a running mean, gradchain a sum divided by k: equal to float32 rounding.
    assert_trajectory_close(traj_ours, traj_theirs, 1e-6)


# --------------------------------------------------------------------------------------------------
# No inner work on non-final micro-steps


def _counting(counter: list):
    """An identity transformation that counts, on the host, how many times its update really runs."""

    def init(params):
        return gc.EmptyState()

    def update(updates, state, params=None, **extra_args):
        jax.debug.callback(lambda: counter.append(1))
        return updates, state

    return gc.GradientTransformation(init, update)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_inner_update_runs_only_on_real_steps(k):
    counter = []
    tx = multi_steps(_counting(counter), k)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    assert "cond" in str(jax.make_jaxpr(tx.update)(params, state, params))
    n = 4 * k + (k - 1)
    for _ in range(n):
        _, state = step(params, state, params)
    jax.effects_barrier()
    assert len(counter) == n // k
    assert int(state.gradient_step) == n // k and int(state.mini_step) == (k - 1) % k


# --------------------------------------------------------------------------------------------------
# State: memory, jit, abstract init, trees


@pytest.mark.parametrize("param_dtype, accumulator_dtype", [(jnp.float32, None), (jnp.bfloat16, jnp.float32)])
def test_state_bytes_are_inner_plus_one_accumulator(param_dtype, accumulator_dtype):
    params = {"w": jnp.zeros((64, 32), param_dtype), "b": jnp.zeros(32, param_dtype), "none": None}
    inner = gc.adam(1e-3)
    tx = multi_steps(inner, 8, accumulator_dtype=accumulator_dtype)
    state = tx.init(params)

    def nbytes(tree):
        return sum(x.nbytes for x in jax.tree.leaves(tree))

    acc_itemsize = jnp.dtype(accumulator_dtype or param_dtype).itemsize
    expected = nbytes(inner.init(params)) + acc_itemsize * (64 * 32 + 32) + 2 * 4
    assert nbytes(state) == expected
    assert state.acc_grads["none"] is None


def test_jit_compiles_once():
    traces = []
    tx = multi_steps(gc.adamw(gc.schedules.cosine_decay_schedule(1e-2, 10)), 3)

    def step(g, state, params):
        traces.append(1)
        return tx.update(g, state, params)

    step = jax.jit(step)
    params = _jnp(grad_sequence(SHAPES, 1, seed=9)[0])
    state = tx.init(params)
    for g in grad_sequence(SHAPES, 7, seed=1):
        _, state = step(_jnp(g), state, params)
    assert len(traces) == 1


def test_abstract_init_and_pickle():
    params = {"w": jnp.ones((3, 2)), "b": None, "h": jnp.ones(4, jnp.bfloat16)}
    tx = multi_steps(gc.adam(1e-3), 4, accumulator_dtype=jnp.float32)
    abstract = jax.eval_shape(tx.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
    state = tx.init(params)
    assert isinstance(abstract, MultiStepsState) and isinstance(state, MultiStepsState)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (c.shape, c.dtype)
    assert state.acc_grads["h"].dtype == jnp.float32 and state.mini_step.dtype == jnp.int32
    _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert_trees_equal(pickle.loads(pickle.dumps(state)), state)


def test_packed_params_give_the_tree_results():
    shapes = {f"b{i}": (3,) for i in range(8)}
    params = _jnp(grad_sequence(shapes, 1, seed=7)[0])
    grads = [_jnp(g) for g in grad_sequence(shapes, 6, seed=2)]
    results = []
    for packed in (False, True):
        tx = multi_steps(gc.adam(1e-2), 3)
        p = gc.pack(params) if packed else params
        seq = [gc.pack(g, p.layout) for g in grads] if packed else grads
        state, step = tx.init(p), jax.jit(tx.update)
        assert isinstance(state.acc_grads, gc.Packed) == packed
        for g in seq:
            u, state = step(g, state, p)
            p = gc.apply_updates(p, u)
        results.append(gc.unpack(p) if packed else p)
    assert_trees_close(results[1], results[0], 1e-6)


def test_extra_args_reach_the_inner_transformation():
    tx = multi_steps(skip_on_spike(gc.sgd(0.1), 3.0, watch="loss", warmup_steps=1), 2)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    with pytest.raises(TypeError, match="value"):
        tx.update({"w": jnp.ones(2)}, state, params)
    for loss in (1.0, 1.0, 1.0, 50.0):
        u, state = tx.update({"w": jnp.ones(2)}, state, params, value=loss)
    # The loss of the final micro-step is the one the inner transformation sees.
    assert bool(state.inner_state.last_skipped) and (u["w"] == 0).all()
    assert int(state.inner_state.accepted) == 1


# --------------------------------------------------------------------------------------------------
# Composition with apply_if_finite


def _nan_like(tree):
    return jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), tree)


def test_apply_if_finite_around_multi_steps_drops_only_the_bad_micro_step():
    k, grads = 4, [_jnp(g) for g in grad_sequence(SHAPES, 40, seed=5)]
    tx = apply_if_finite(multi_steps(gc.adam(gc.schedules.linear_schedule(1e-2, 1e-3, 10)), k), 3)
    step = jax.jit(tx.update)
    params = _jnp(jax.tree.map(np.ones_like, grads[0]))

    def run(sequence):
        state, p, traj = tx.init(params), params, []
        for g in sequence:
            u, state = step(g, state, p)
            p = gc.apply_updates(p, u)
            traj.append(p)
        return traj, state

    clean, clean_state = run(grads)
    bad_at = {5, 17, 18}
    with_nans = [g for i, g in enumerate(grads) for g in ([_nan_like(g), g] if i in bad_at else [g])]
    dirty, dirty_state = run(with_nans)
    # Remove the params recorded right after each NaN step: they repeat the previous ones.
    kept = [p for i, p in enumerate(dirty) if not np.isnan(np.asarray(jax.tree.leaves(with_nans[i])[0])).any()]
    assert len(kept) == len(clean)
    for a, e in zip(kept, clean, strict=True):
        assert_trees_equal(a, e)
    assert_trees_equal(dirty_state.inner_state, clean_state.inner_state)
    assert int(dirty_state.total_notfinite) == len(bad_at)


def test_multi_steps_around_apply_if_finite_skips_the_whole_real_step():
    k = 3
    tx = multi_steps(apply_if_finite(gc.adam(1e-2), 2), k)
    params = {"w": jnp.ones(4), "b": jnp.ones(2)}
    state, step = tx.init(params), jax.jit(tx.update)
    g = {"w": jnp.ones(4), "b": jnp.ones(2)}
    for j in range(2 * k):
        u, state = step(_nan_like(g) if j == 1 else g, state, params)
    inner = state.inner_state
    # The NaN micro-step poisoned the mean of the first real step, which was skipped; the second ran.
    assert int(inner.total_notfinite) == 1 and int(inner.notfinite_count) == 0
    assert int(inner.inner_state[0].count) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.acc_grads))
    assert all((np.asarray(x) != 0).all() for x in jax.tree.leaves(u))


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"every_k": 0}, ValueError, "every_k"),
        ({"every_k": 2.0}, TypeError, "every_k"),
        ({"every_k": True}, TypeError, "every_k"),
        ({"every_k": 2, "accumulator_dtype": jnp.int32}, TypeError, "accumulator_dtype"),
        ({"every_k": 2, "accumulator_dtype": "notadtype"}, TypeError, "accumulator_dtype"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        multi_steps(gc.sgd(0.1), **kwargs)


def test_bad_inner_and_bad_trees():
    with pytest.raises(TypeError, match="inner"):
        multi_steps(lambda g: g, 2)
    tx = multi_steps(gc.sgd(0.1), 2)
    state = tx.init({"w": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"(leaf |: )b\b"):
        tx.update({"w": jnp.ones(2), "b": jnp.ones(4)}, state)
    with pytest.raises(ValueError, match=r"(leaf |: )c\b"):
        tx.update({"w": jnp.ones(2), "b": jnp.ones(3), "c": jnp.ones(1)}, state)
    with pytest.raises(ValueError, match="MultiStepsState"):
        has_updated(gc.sgd(0.1).init({"w": jnp.ones(2)}))
