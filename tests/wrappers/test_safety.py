"""Tests of `apply_if_finite` and `skip_on_spike`: numpy transcriptions of the rules, optax, bit-identity."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import assert_trajectory_close, assert_trees_equal, grad_sequence

import gradchain as gc
from gradchain import ApplyIfFiniteState, SkipOnSpikeState, apply_if_finite, skip_on_spike

SHAPES = {"w": (3, 5), "b": (5,), "layers": [(2, 2, 3), (1,)]}


def _jnp(tree):
    return jax.tree.map(jnp.asarray, tree)


def _poison(tree, leaf: int, value: float):
    """`tree` with one entry of its `leaf`-th leaf set to `value` (NaN, Inf or -Inf)."""
    leaves, treedef = jax.tree.flatten(tree)
    leaves = list(leaves)
    x = np.array(leaves[leaf])
    x.flat[x.size // 2] = value
    leaves[leaf] = x
    return treedef.unflatten(leaves)


def _bad_sequence(n, bad: dict[int, tuple[int, float]], seed=0):
    grads = grad_sequence(SHAPES, n, seed=seed)
    return [_poison(g, *bad[i]) if i in bad else g for i, g in enumerate(grads)]


# --------------------------------------------------------------------------------------------------
# apply_if_finite


def _ref_counts(finite: list[bool]) -> list[tuple[int, int]]:
    """(consecutive, total) non-finite counts after each step."""
    out, run, total = [], 0, 0
    for ok in finite:
        run = 0 if ok else run + 1
        total += not ok
        out.append((run, total))
    return out


# Before clean step i, insert a run of bad steps: (leaf, value) for each.
BAD_RUNS = {3: [(0, np.nan)], 10: [(1, np.inf), (2, -np.inf), (3, np.nan)], 50: [(1, np.nan)]}


@pytest.mark.parametrize("on_too_many", ["raise", "skip", "apply"])
def test_bad_steps_change_nothing(on_too_many):
    # A run with bad steps inserted gives, bit for bit, the run without them (runs up to the limit, 3).
    n = 110
    grads = grad_sequence(SHAPES, n, seed=1)
    extra = grad_sequence(SHAPES, 5, seed=2)
    dirty_seq, is_bad = [], []
    for i, g in enumerate(grads):
        for leaf, value in BAD_RUNS.get(i, []):
            dirty_seq.append(_poison(extra[len(dirty_seq) % 5], leaf, value))
            is_bad.append(True)
        dirty_seq.append(g)
        is_bad.append(False)
    tx = apply_if_finite(
        gc.adamw(gc.schedules.cosine_decay_schedule(1e-2, n), weight_decay=0.01), 3, on_too_many=on_too_many
    )
    step = jax.jit(tx.update)
    params = _jnp(grad_sequence(SHAPES, 1, seed=9)[0])

    def run(seq):
        state, p, traj, states = tx.init(params), params, [], []
        for g in seq:
            u, state = step(_jnp(g), state, p)
            p = gc.apply_updates(p, u)
            traj.append(p)
            states.append(state)
        return traj, states

    clean, clean_states = run(grads)
    dirty, dirty_states = run(dirty_seq)
    good = [i for i, b in enumerate(is_bad) if not b]
    for i, j in enumerate(good):
        assert_trees_equal(dirty[j], clean[i])
        assert_trees_equal(dirty_states[j].inner_state, clean_states[i].inner_state)
    for j, b in enumerate(is_bad):
        if b:  # the bad step itself: zero update, inner state as before
            assert_trees_equal(dirty_states[j].inner_state, dirty_states[j - 1].inner_state)
            assert_trees_equal(dirty[j], dirty[j - 1])
    counts = _ref_counts([not b for b in is_bad])
    assert [(int(s.notfinite_count), int(s.total_notfinite)) for s in dirty_states] == counts
    assert [bool(s.last_finite) for s in dirty_states] == [not b for b in is_bad]


def _run_pair(ours, theirs, grads, params):
    step_o, step_t = jax.jit(ours.update), jax.jit(theirs.update)
    s_o, s_t, p_o, p_t = ours.init(params), theirs.init(params), params, params
    out = []
    for g in grads:
        g = _jnp(g)
        u, s_o = step_o(g, s_o, p_o)
        p_o = gc.apply_updates(p_o, u)
        u, s_t = step_t(g, s_t, p_t)
        p_t = optax.apply_updates(p_t, u)
        out.append((p_o, p_t, s_o, s_t))
    return out


def test_apply_mode_matches_optax():
    # Runs of 1, 2 and 3 bad steps with max_consecutive_errors=2: the third of a run goes through
    # (optax's rule), after which both runs are NaN; place that run last.
    n = 120
    bad = {5: (0, np.nan), 30: (1, np.inf), 31: (2, np.nan), 80: (3, -np.inf), 117: (0, np.nan), 118: (1, np.nan)}
    bad[119] = (2, np.nan)
    grads = _bad_sequence(n, bad, seed=4)
    params = _jnp(grad_sequence(SHAPES, 1, seed=8)[0])
    out = _run_pair(
        apply_if_finite(gc.adam(1e-2), 2, on_too_many="apply"),
        optax.apply_if_finite(optax.adam(1e-2), 2),
        grads,
        params,
    )
    for j, (_, _, s_o, s_t) in enumerate(out):
        assert int(s_o.notfinite_count) == int(s_t.notfinite_count), f"step {j}"
        assert int(s_o.total_notfinite) == int(s_t.total_notfinite), f"step {j}"
        assert bool(s_o.last_finite) == bool(s_t.last_finite), f"step {j}"
        assert int(s_o.inner_state[0].count) == int(s_t.inner_state[0].count), f"step {j}"
    assert_trajectory_close([o[0] for o in out[:119]], [o[1] for o in out[:119]], 1e-6)
    # The third bad step in a row went through, in both libraries.
    for p in (out[-1][0], out[-1][1]):
        assert np.isnan(np.asarray(jax.tree.leaves(p)[2])).any()
    assert int(out[-1][2].inner_state[0].count) == n - 6  # 7 bad steps, the last one applied


def test_skip_mode_keeps_skipping_past_the_limit():
    tx = apply_if_finite(gc.sgd(0.1), 1, on_too_many="skip")
    params = {"w": jnp.ones(3)}
    state, step = tx.init(params), jax.jit(tx.update)
    for _ in range(5):
        u, state = step({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
        assert (np.asarray(u["w"]) == 0).all()
    assert int(state.notfinite_count) == 5 and int(state.total_notfinite) == 5


def test_raise_mode_raises_after_the_limit():
    tx = apply_if_finite(gc.sgd(0.1), 2)  # on_too_many="raise" is the default
    params = {"layer": {"w": jnp.ones(3)}, "b": jnp.ones(1)}
    bad = {"layer": {"w": jnp.array([1.0, jnp.inf, 0.0])}, "b": jnp.ones(1)}
    good = jax.tree.map(jnp.ones_like, params)
    # Eager: the FloatingPointError itself, naming the leaf and the argument.
    state = tx.init(params)
    for _ in range(2):
        _, state = tx.update(bad, state, params)
    with pytest.raises(FloatingPointError, match=r"max_consecutive_errors=2.*layer/w"):
        tx.update(bad, state, params)
    # A good step resets the run.
    _, state = tx.update(good, state, params)
    _, state = tx.update(bad, state, params)
    assert int(state.notfinite_count) == 1
    # Under jit: the same message, surfaced by JAX from the host callback.
    step = jax.jit(tx.update)
    state = tx.init(params)
    for _ in range(2):
        _, state = step(bad, state, params)
    jax.block_until_ready(state)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"FloatingPointError.*layer/w"):
        _, state2 = step(bad, state, params)
        jax.block_until_ready(state2)
    # The state passed in is intact: a good step goes on from it.
    _, state = step(good, state, params)
    assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 2


def test_apply_if_finite_jit_once_abstract_init_pickle():
    traces = []
    tx = apply_if_finite(gc.adam(gc.schedules.linear_schedule(1e-2, 0.0, 10)), 2)

    def step(g, state, params):
        traces.append(1)
        return tx.update(g, state, params)

    step = jax.jit(step)
    params = {"w": jnp.ones((2, 3)), "none": None}
    state = tx.init(params)
    for g in ({"w": jnp.ones((2, 3)), "none": None}, {"w": jnp.full((2, 3), jnp.nan, jnp.float32), "none": None}) * 2:
        _, state = step(g, state, params)
    assert len(traces) == 1
    assert isinstance(state, ApplyIfFiniteState) and state.notfinite_count.dtype == jnp.int32
    abstract = jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32), "none": None})
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    assert_trees_equal(pickle.loads(pickle.dumps(state)), state)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((-1,), {}, ValueError, "max_consecutive_errors"),
        ((1.5,), {}, TypeError, "max_consecutive_errors"),
        ((1,), {"on_too_many": "warn"}, ValueError, "on_too_many"),
    ],
)
def test_apply_if_finite_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        apply_if_finite(gc.sgd(0.1), *args, **kwargs)
    with pytest.raises(TypeError, match="inner"):
        apply_if_finite(lambda g: g, 1)


# --------------------------------------------------------------------------------------------------
# skip_on_spike


def _ref_skip_on_spike(losses, norms, *, factor, decay, warmup, watch, max_skips):
    """The rule of `skip_on_spike`, transcribed in float64: per step (skip, loss_avg, norm_avg, n, run, total)."""
    names = {"both": ("loss", "norm"), "loss": ("loss",), "grad_norm": ("norm",)}[watch]
    avg = {"loss": 0.0, "norm": 0.0}
    n = run = total = 0
    out = []
    for loss, norm in zip(losses, norms, strict=True):
        x = {"loss": loss, "norm": norm}
        finite = all(np.isfinite(x[s]) for s in names)
        corr = 1.0 - decay**n if n > 0 else 1.0
        spike = any(x[s] > factor * avg[s] / corr for s in names)
        skip = (not finite) or (n >= warmup and spike)
        if max_skips is not None and finite and run >= max_skips:
            skip = False
        if skip:
            run, total = run + 1, total + 1
        else:
            for s in names:
                avg[s] = decay * avg[s] + (1 - decay) * x[s]
            n, run = n + 1, 0
        out.append((skip, avg["loss"], avg["norm"], n, run, total))
    return out


def _spiky_data(n=150, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.exp(0.1 * rng.standard_normal(n))
    losses = 2.0 * np.exp(-np.arange(n) / 100) * np.exp(0.1 * rng.standard_normal(n))
    for t in (20, 21, 60, 100):
        scales[t] *= 12.0  # gradient-norm spikes
    for t in (35, 61, 90):
        losses[t] *= 15.0  # loss spikes
    losses[75] = np.nan
    scales[3] *= 12.0  # inside the warmup: not skipped
    scales[120:] *= 8.0  # a lasting change of level: only max_consecutive_skips gets past it
    losses = losses.astype(np.float32)
    grads = grad_sequence(SHAPES, n, seed=seed + 1, step_scales=list(scales))
    return losses, grads


@pytest.mark.parametrize("watch", ["both", "loss", "grad_norm"])
@pytest.mark.parametrize("max_skips", [None, 4])
def test_skip_on_spike_matches_numpy_rule(watch, max_skips):
    factor, decay, warmup, lr = 4.0, 0.9, 5, 0.1
    losses, grads = _spiky_data()
    norms = [np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(g))) for g in grads]
    expected = _ref_skip_on_spike(
        [float(x) for x in losses], norms, factor=factor, decay=decay, warmup=warmup, watch=watch, max_skips=max_skips
    )
    tx = skip_on_spike(
        gc.sgd(lr), factor, decay=decay, warmup_steps=warmup, watch=watch, max_consecutive_skips=max_skips
    )
    params = _jnp(grad_sequence(SHAPES, 1, seed=5)[0])
    p, state, step = params, tx.init(params), jax.jit(tx.update)
    p_ref = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    traj, traj_ref = [], []
    for t, g in enumerate(grads):
        u, state = step(_jnp(g), state, p, value=losses[t])
        p = gc.apply_updates(p, u)
        skip, loss_avg, norm_avg, n, run, total = expected[t]
        assert bool(state.last_skipped) == skip, f"step {t}"
        assert (int(state.accepted), int(state.consecutive_skips), int(state.total_skips)) == (n, run, total)
        np.testing.assert_allclose(float(state.loss_avg), loss_avg, rtol=2e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(float(state.grad_norm_avg), norm_avg, rtol=2e-6, err_msg=f"step {t}")
        if watch != "loss":
            np.testing.assert_allclose(float(state.grad_norm), norms[t], rtol=1e-6)
        if not skip:
            p_ref = jax.tree.map(lambda x, gi: x - lr * np.asarray(gi, np.float64), p_ref, g)
        traj.append(p)
        traj_ref.append(p_ref)
    assert_trajectory_close(traj, traj_ref, 1e-6)
    skips = [e[0] for e in expected]
    # The planted events are what the test is about: make sure they did happen.
    assert not skips[3]
    if watch != "loss":
        assert skips[20] and skips[21] and skips[60]
    if watch != "grad_norm":
        assert skips[35] and skips[75]
    if watch != "loss":
        assert all(skips[120:]) if max_skips is None else not all(skips[120:]) and any(skips[120:])


def test_skipped_steps_leave_the_inner_state_unchanged():
    tx = skip_on_spike(gc.adam(gc.schedules.linear_schedule(1e-2, 0.0, 20)), 3.0, warmup_steps=2)
    params = {"w": jnp.ones(4), "b": jnp.ones(2)}
    state, step = tx.init(params), jax.jit(tx.update)
    g = {"w": jnp.ones(4), "b": jnp.ones(2)}
    for loss in (1.0, 1.0, 1.0):
        _, state = step(g, state, params, value=loss)
    before = state.inner_state
    u, state = step(g, state, params, value=100.0)
    assert bool(state.last_skipped)
    assert_trees_equal(state.inner_state, before)
    assert all((np.asarray(x) == 0).all() for x in jax.tree.leaves(u))
    u, state = step(jax.tree.map(lambda x: 50 * x, g), state, params, value=1.0)  # a grad-norm spike
    assert bool(state.last_skipped) and int(state.total_skips) == 2
    u, state = step(g, state, params, value=1.0)
    assert not bool(state.last_skipped) and int(state.inner_state[0].count) == 4


def test_hyperparams_are_state_and_change_without_recompiling():
    traces = []
    tx = skip_on_spike(gc.sgd(0.1, momentum=0.9), 3.0, decay=0.95, warmup_steps=1, watch="loss")

    def step(g, state, params, loss):
        traces.append(1)
        return tx.update(g, state, params, value=loss)

    step = jax.jit(step)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    hp = gc.hyperparams(state)
    assert float(hp["factor"]) == 3.0 and np.isclose(float(hp["skip_on_spike/decay"]), 0.95)
    _, state = step(params, state, params, 1.0)
    _, state = step(params, state, params, 5.0)
    assert bool(state.last_skipped)
    state = gc.set_hyperparams(state, factor=10.0)
    _, state = step(params, state, params, 5.0)
    assert not bool(state.last_skipped)
    assert len(traces) == 1
    abstract = jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    assert isinstance(abstract, SkipOnSpikeState) and jax.tree.structure(abstract) == jax.tree.structure(state)
    assert_trees_equal(pickle.loads(pickle.dumps(state)), state)


def test_missing_or_bad_loss():
    params = {"w": jnp.ones(2)}
    for watch in ("both", "loss"):
        tx = skip_on_spike(gc.sgd(0.1), 3.0, watch=watch)
        with pytest.raises(TypeError, match="value"):
            tx.update(params, tx.init(params), params)
        with pytest.raises(ValueError, match="value"):
            tx.update(params, tx.init(params), params, value=jnp.ones(3))
    tx = skip_on_spike(gc.sgd(0.1), 3.0, watch="grad_norm")
    u, _ = tx.update(params, tx.init(params), params)  # no loss needed
    assert np.allclose(np.asarray(u["w"]), -0.1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"factor": 0.0}, ValueError, "factor"),
        ({"factor": -2.0}, ValueError, "factor"),
        ({"factor": 3.0, "decay": 1.0}, ValueError, "decay"),
        ({"factor": 3.0, "decay": lambda t: 0.9}, TypeError, "decay"),
        ({"factor": 3.0, "warmup_steps": 0}, ValueError, "warmup_steps"),
        ({"factor": 3.0, "watch": "lr"}, ValueError, "watch"),
        ({"factor": 3.0, "max_consecutive_skips": 0}, ValueError, "max_consecutive_skips"),
    ],
)
def test_skip_on_spike_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        skip_on_spike(gc.sgd(0.1), **kwargs)
