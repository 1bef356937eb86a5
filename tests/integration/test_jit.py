"""Compilation behaviour: no recompiles, donation, vmap, differentiating through update, eval_shape, no callbacks."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gradchain as gc


def _warmup_cosine(peak: float = 1e-3) -> Callable:
    if hasattr(gc.schedules, "warmup_cosine_decay_schedule"):
        return gc.schedules.warmup_cosine_decay_schedule(0.0, peak, warmup_steps=3, decay_steps=20, end_value=1e-5)
    return lambda count: peak * jnp.minimum(count / 3.0, 1.0)  # pragma: no cover


# Optimizers with simple valid settings; the dtypes of mixed trees exercise the state dtype policy.
OPTIMIZERS: dict[str, Callable[[], gc.GradientTransformation]] = {
    "sgd": lambda: gc.sgd(0.1),
    "sgd_nesterov_wd": lambda: gc.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "sgd_dampening_f32_acc": lambda: gc.sgd(0.1, momentum=0.9, dampening=0.1, accumulator_dtype=jnp.float32),
    "adagrad": lambda: gc.adagrad(0.1, lr_decay=0.01),
    "rmsprop_centered_momentum": lambda: gc.rmsprop(1e-2, centered=True, momentum=0.9, bias_correction=True),
    "adam_wd": lambda: gc.adam(1e-3, weight_decay=1e-2),
    "adam_mixed_dtypes": lambda: gc.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32),
    "adamw_schedule": lambda: gc.adamw(_warmup_cosine(), weight_decay=1e-2),
    "nadam": lambda: gc.nadam(1e-3),
    "nadamw": lambda: gc.nadamw(1e-3, mu_dtype=jnp.float32),
    "amsgrad": lambda: gc.amsgrad(1e-3, nu_dtype=jnp.float32),
    "adamax": lambda: gc.adamax(2e-3),
    "adamaxw": lambda: gc.adamaxw(2e-3),
    "clip_chain": lambda: gc.chain(
        gc.clip_by_global_norm(1.0), gc.clip(0.5), gc.clip_by_block_rms(1.0), gc.ema(0.9), gc.scale(-0.1)
    ),
}


def make_params(mixed: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    half = jnp.bfloat16 if mixed else jnp.float32
    return {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), half),
        "blocks": [jnp.asarray(rng.normal(size=(2, 3, 2)), half), jnp.asarray(rng.normal(size=()), jnp.float32)],
    }


def make_batches(n: int, seed: int = 1) -> list[jax.Array]:
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=(5, 4)), jnp.float32) for _ in range(n)]


def _up(x: jax.Array) -> jax.Array:
    """At least float32 (half-precision params), float64 kept (the x64 meta-gradient tests)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def loss_fn(params: Any, batch: jax.Array) -> jax.Array:
    h = jnp.tanh(batch @ _up(params["w"]) + _up(params["b"]))
    reg = sum(jnp.sum(jnp.sin(_up(x))) for x in params["blocks"])
    return jnp.mean(h**2) + 0.1 * reg


def make_step(tx: gc.GradientTransformation, traces: list | None = None) -> Callable:
    def step(params, state, batch):
        if traces is not None:
            traces.append(1)  # runs once per trace, never at run time
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state, loss

    return step


# ---------------------------------------------------------------------------------------------------
# (a) no recompilation

# (optimizer, a sequence of hyperparameter changes applied between steps)
RECOMPILE_CASES: list[tuple[str, Callable[[], gc.GradientTransformation], list[dict[str, Any]]]] = [
    (
        "sgd_momentum",
        lambda: gc.sgd(0.1, momentum=0.9, weight_decay=1e-4),
        [{"learning_rate": 0.05}, {"decay": 0.5}, {"dampening": 0.2}, {"weight_decay": 0.0}, {"learning_rate": 1}],
    ),
    (
        "adamw_warmup_cosine",
        lambda: gc.adamw(_warmup_cosine(), weight_decay=1e-2),
        [{"b1": 0.5}, {"eps": 1e-3}, {"weight_decay": 0.1}, {"b2": 0.9, "eps_root": 1e-12}],
    ),
    (
        "rmsprop",
        lambda: gc.rmsprop(1e-2, momentum=0.9),
        [
            {"learning_rate": 3e-3},
            {"eps": 1e-4},
            {"scale_by_rms/decay": 0.5},
            {"trace/decay": 0.0},
            {"learning_rate": np.float64(1e-3)},
        ],
    ),
]


# Two counts. `traces` counts Python traces of the step (a side effect that runs only while tracing).
# `step._cache_size()` counts jit's compiled entries: an argument whose sharding or committedness
# differs from the last call's (an array made by `jnp.asarray` is uncommitted, a jit output is
# committed to its device) costs a new XLA compilation without a new trace. Params a user feeds a
# jitted loop are committed (outputs of `jax.device_put` or of a jitted init), as here, so that any
# extra compilation left is the optimizer's doing.


def _committed(tree: Any) -> Any:
    return jax.device_put(tree, jax.devices()[0])


def _run_with_changes(name, make, changes, state_fn):
    tx = make()
    traces: list[int] = []
    step = jax.jit(make_step(tx, traces))
    params = _committed(make_params())
    state = state_fn(tx.init(params))
    batches = iter(_committed(make_batches(3 + 2 * len(changes))))
    for _ in range(3):
        params, state, _ = step(params, state, next(batches))
    for change in changes:
        state = gc.set_hyperparams(state, change)
        for _ in range(2):  # schedules advance meanwhile
            params, state, _ = step(params, state, next(batches))
        for key, value in change.items():
            assert gc.hyperparams(state)[key] == np.float32(value)
    return traces, step


@pytest.mark.parametrize("name, make, changes", RECOMPILE_CASES, ids=[c[0] for c in RECOMPILE_CASES])
def test_no_recompilation_on_the_second_step(name, make, changes):
    """The state that `init` returns must look to jit like the state a step returns."""
    tx = make()
    step = jax.jit(make_step(tx))
    params = _committed(make_params())
    state = tx.init(params)
    for batch in _committed(make_batches(3)):
        params, state, _ = step(params, state, batch)
    assert step._cache_size() == 1


def test_no_recompilation_with_sharded_params():
    """Params sharded over a mesh: init's scalars are replicated there, set values keep their placement."""
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
    spec = {"w": PartitionSpec("d"), "b": PartitionSpec(), "blocks": [PartitionSpec(), PartitionSpec()]}
    params = jax.tree.map(
        lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), make_params(), spec, is_leaf=lambda x: x is None
    )
    tx = gc.adamw(_warmup_cosine(), weight_decay=1e-2)
    step = jax.jit(make_step(tx))
    state = tx.init(params)
    for k, batch in enumerate(make_batches(4)):
        if k == 2:
            state = gc.set_hyperparams(state, b1=0.5, weight_decay=0.0)
        params, state, _ = step(params, state, batch)
    assert params["w"].sharding.spec == PartitionSpec("d")
    assert state[0].mu["w"].sharding.spec == PartitionSpec("d")
    assert step._cache_size() == 1


@pytest.mark.parametrize("name, make, changes", RECOMPILE_CASES, ids=[c[0] for c in RECOMPILE_CASES])
def test_no_recompilation_on_a_hyperparameter_change(name, make, changes):
    """set_hyperparams between steps (learning rate, b1, eps, weight decay, ...) neither retraces nor recompiles."""
    # The state is committed up front so that only set_hyperparams is under test here.
    traces, step = _run_with_changes(name, make, changes, _committed)
    assert len(traces) == 1, f"{name}: traced {len(traces)} times"
    assert step._cache_size() == 1


def test_hyperparameter_as_a_jit_argument_does_not_recompile():
    """The pattern that avoids host-side state edits: pass the value in, set it inside the step."""
    tx = gc.adamw(1e-3, weight_decay=1e-2)
    inner = make_step(tx)
    step = jax.jit(lambda p, s, b, lr, wd: inner(p, gc.set_hyperparams(s, learning_rate=lr, weight_decay=wd), b))
    params = _committed(make_params())
    state = _committed(tx.init(params))
    for k, batch in enumerate(_committed(make_batches(6))):
        params, state, _ = step(params, state, batch, 1e-3 / (k + 1), 0.1 * k)
        assert gc.hyperparams(state)["learning_rate"] == np.float32(1e-3 / (k + 1))
    assert step._cache_size() == 1


def test_schedule_advances_without_recompiling():
    schedule = _warmup_cosine(peak=1e-2)
    tx = gc.adamw(schedule, weight_decay=1e-2)
    traces: list[int] = []
    step = jax.jit(make_step(tx, traces))
    params = _committed(make_params())
    state = _committed(tx.init(params))
    seen = []
    for k, batch in enumerate(_committed(make_batches(25))):
        params, state, _ = step(params, state, batch)
        seen.append(float(gc.hyperparams(state)["learning_rate"]))
        np.testing.assert_allclose(seen[-1], float(schedule(k)), rtol=5e-7, atol=1e-12)
    assert len(set(seen)) > 15  # the schedule really moved
    assert len(traces) == 1 and step._cache_size() == 1


# ---------------------------------------------------------------------------------------------------
# (b) donation


def _aval(x: jax.Array) -> Any:
    return jax.typeof(x) if hasattr(jax, "typeof") else jax.core.get_aval(x)


def _pointers(tree: Any) -> list[int]:
    return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) if x.size > 0]


# One of each kind of state: momentum buffer, a schedule, centered moments, mixed slot dtypes,
# a running maximum, stateless clipping with a recorded norm.
DONATION_CASES = [
    "sgd_nesterov_wd",
    "adagrad",
    "rmsprop_centered_momentum",
    "adam_mixed_dtypes",
    "adamw_schedule",
    "amsgrad",
    "clip_chain",
]


@pytest.mark.parametrize("name", DONATION_CASES)
def test_donation(name):
    tx = OPTIMIZERS[name]()
    params = make_params(mixed=True)
    state = tx.init(params)
    # Nothing in the state aliases the params, and no two state leaves share a buffer
    # (a buffer donated twice is an error).
    assert not set(_pointers(state)) & set(_pointers(params))
    assert len(set(_pointers(state))) == len(_pointers(state))

    init_avals = jax.tree.map(_aval, state)
    assert not any(a.weak_type for a in jax.tree.leaves(init_avals))

    step = jax.jit(make_step(tx), donate_argnums=(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Some donated buffers were not usable" would fail here
        for batch in make_batches(3):
            old_params, old_state = params, state
            params, state, _ = step(params, state, batch)
            assert all(x.is_deleted() for x in jax.tree.leaves(old_params))
            # Every params-sized buffer was donated. (A scalar whose old value the step never reads,
            # such as a scheduled learning rate or the last gradient norm, is pruned, not donated.)
            assert all(x.is_deleted() for x in jax.tree.leaves(old_state) if x.ndim > 0)
            assert not set(_pointers(state)) & set(_pointers(params))
            assert len(set(_pointers(state))) == len(_pointers(state))
            # The state keeps its avals (weak types included): what a jitted step needs not to retrace.
            assert jax.tree.map(_aval, state) == init_avals


def test_donated_run_equals_undonated_run():
    tx = OPTIMIZERS["adamw_schedule"]()
    p1 = p2 = make_params()
    s1, s2 = tx.init(p1), tx.init(p2)
    donating = jax.jit(make_step(tx), donate_argnums=(0, 1))
    plain = jax.jit(make_step(tx))
    for batch in make_batches(5):
        p1, s1, _ = donating(jax.tree.map(jnp.copy, p1), s1, batch)
        p2, s2, _ = plain(p2, s2, batch)
    for x, y in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------------------
# (c) vmap over independent problems


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


@pytest.mark.parametrize(
    "make, per_problem",
    [
        (lambda: gc.sgd(0.1, momentum=0.9), {"learning_rate": [0.1, 0.05, 0.01, 0.0]}),
        (
            lambda: gc.adamw(1e-2, weight_decay=1e-2),
            {"learning_rate": [1e-2, 3e-3, 1e-3, 0.0], "b1": [0.9, 0.5, 0.0, 0.8]},
        ),
        (lambda: gc.rmsprop(1e-2, centered=True), {"eps": [1e-8, 1e-4, 1e-2, 1.0]}),
    ],
    ids=["sgd_momentum", "adamw", "rmsprop"],
)
def test_vmap_over_problems_equals_separate_runs(make, per_problem):
    n, steps = 4, 10
    tx = make()
    rng = np.random.default_rng(2)
    problems = [make_params() for _ in range(n)]
    problems = [jax.tree.map(lambda x, k=k: x + k, p) for k, p in enumerate(problems)]  # all different
    batches = [[jnp.asarray(rng.normal(size=(5, 4)), jnp.float32) for _ in range(n)] for _ in range(steps)]

    # Batched: vmap init, a vmapped set_hyperparams for per-problem values, vmap update.
    params = _stack(problems)
    state = jax.vmap(tx.init)(params)
    values = {k: jnp.asarray(v, jnp.float32) for k, v in per_problem.items()}
    state = jax.vmap(lambda s, v: gc.set_hyperparams(s, v))(state, values)
    for key, v in values.items():
        np.testing.assert_array_equal(gc.hyperparams(state)[key], v)
    batched_step = jax.jit(jax.vmap(make_step(tx)))
    for batch in batches:
        params, state, _ = batched_step(params, state, jnp.stack(batch))

    # Separately.
    step = jax.jit(make_step(tx))
    for i in range(n):
        p = problems[i]
        s = gc.set_hyperparams(tx.init(p), {k: v[i] for k, v in per_problem.items()})
        for batch in batches:
            p, s, _ = step(p, s, batch[i])
        for (path, x), y in zip(
            jax.tree_util.tree_flatten_with_path((p, s))[0], jax.tree.leaves(_unstack((params, state), i)), strict=True
        ):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            scale = max(np.max(np.abs(x)), 1e-30)
            assert np.max(np.abs(x - y)) <= 1e-6 * scale, (i, jax.tree_util.keystr(path))


# ---------------------------------------------------------------------------------------------------
# (d) differentiating through update with respect to a hyperparameter


def _meta_setup():
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3)), "blocks": [
        jnp.asarray(rng.normal(size=(2, 3, 2))), jnp.asarray(rng.normal())]}  # fmt: skip
    batches = [jnp.asarray(rng.normal(size=(5, 4))) for _ in range(6)]
    return params, batches


def _finite_difference(f: Callable[[float], jax.Array], x: float, h: float = 1e-6) -> float:
    return float((f(x + h) - f(x - h)) / (2 * h))


def test_meta_gradient_sgd_closed_form(x64):
    params, batches = _meta_setup()
    assert params["w"].dtype == jnp.float64
    tx = gc.sgd(0.1)
    state = tx.init(params)
    g0 = jax.grad(loss_fn)(params, batches[0])

    def meta_loss(lr):
        s = gc.set_hyperparams(state, learning_rate=lr)
        updates, _ = tx.update(g0, s, params)
        return loss_fn(gc.apply_updates(params, updates), batches[1])

    lr = 0.3
    grad = float(jax.jit(jax.grad(meta_loss))(lr))
    p1 = jax.tree.map(lambda p, g: p - lr * g, params, g0)
    g1 = jax.grad(loss_fn)(p1, batches[1])
    closed_form = -sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True))
    assert abs(closed_form) > 1e-3
    np.testing.assert_allclose(grad, closed_form, rtol=1e-12)
    np.testing.assert_allclose(grad, _finite_difference(jax.jit(meta_loss), lr), rtol=1e-7)


@pytest.mark.parametrize(
    "make, values",
    [
        (lambda: gc.sgd(0.1, momentum=0.9), {"learning_rate": 0.2, "decay": 0.7, "dampening": 0.1}),
        (
            lambda: gc.adamw(0.05, eps_root=1e-8, weight_decay=0.1),
            {"learning_rate": 0.05, "b1": 0.8, "b2": 0.95, "eps": 1e-3, "weight_decay": 0.1},
        ),
        (lambda: gc.rmsprop(0.01, eps=1e-4), {"learning_rate": 0.01, "decay": 0.9, "eps": 1e-4}),
    ],
    ids=["sgd_momentum", "adamw", "rmsprop"],
)
def test_meta_gradient_matches_finite_differences(x64, make, values):
    """d loss(after 3 steps) / d hyperparameters, the values set once through set_hyperparams."""
    params, batches = _meta_setup()
    tx = make()
    state = tx.init(params)
    # A zero gradient component: Adam's sqrt(nu_hat + eps_root) must stay differentiable there.
    zero_grad = lambda g: {**g, "blocks": [g["blocks"][0], jnp.zeros_like(g["blocks"][1])]}  # noqa: E731

    @jax.jit
    def meta_loss(hp):
        s = gc.set_hyperparams(state, hp)
        p = params
        for batch in batches[:3]:
            g = zero_grad(jax.grad(loss_fn)(p, batch))
            updates, s = tx.update(g, s, p)
            p = gc.apply_updates(p, updates)
        return loss_fn(p, batches[5])

    grads = jax.jit(jax.grad(meta_loss))(values)
    for key, value in values.items():
        grad = float(grads[key])
        assert np.isfinite(grad) and abs(grad) > 1e-8, key
        h = 1e-6 * max(abs(value), 1e-3)
        fd = (meta_loss({**values, key: value + h}) - meta_loss({**values, key: value - h})) / (2 * h)
        np.testing.assert_allclose(grad, float(fd), rtol=1e-6, err_msg=key)


def test_x64_fixture_restores_the_flag():
    # The meta-gradient tests above ran under the `x64` fixture of tests/conftest.py.
    assert not jax.config.jax_enable_x64


# ---------------------------------------------------------------------------------------------------
# (e) abstract init


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_eval_shape_init_matches_concrete_init(name):
    tx = OPTIMIZERS[name]()
    params = make_params(mixed=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    abstract_state = jax.eval_shape(tx.init, abstract)
    state = tx.init(params)
    assert jax.tree.structure(abstract_state) == jax.tree.structure(state)
    for a, c in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(state), strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype) == (c.shape, c.dtype)


@pytest.mark.parametrize(
    "make, slot_dtypes",
    [
        (lambda: gc.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32), {"mu": jnp.bfloat16, "nu": jnp.float32}),
        (lambda: gc.adamw(1e-3, mu_dtype=jnp.float32, nu_dtype=jnp.float32), {"mu": jnp.float32, "nu": jnp.float32}),
        (lambda: gc.amsgrad(1e-3, nu_dtype=jnp.float32), {"nu": jnp.float32, "nu_max": jnp.float32}),
    ],
)
def test_eval_shape_init_with_state_dtypes(make, slot_dtypes):
    tx = make()
    abstract = {"w": jax.ShapeDtypeStruct((3, 2), jnp.bfloat16), "b": jax.ShapeDtypeStruct((2,), jnp.float16)}
    state = jax.eval_shape(tx.init, abstract)
    concrete = tx.init(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract))
    inner = state[0]
    for slot, dtype in slot_dtypes.items():
        for leaf_name in ("w", "b"):
            assert getattr(inner, slot)[leaf_name].dtype == dtype
            assert getattr(inner, slot)[leaf_name].shape == abstract[leaf_name].shape
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == jax.tree.map(lambda x: (x.shape, x.dtype), concrete)


# ---------------------------------------------------------------------------------------------------
# (f) no host callbacks


def _primitives(jaxpr: Any) -> set[str]:
    """Names of all primitives in a (closed) jaxpr, sub-jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    names |= _primitives(sub)
    return names


def _host_primitives(names: set[str]) -> set[str]:
    return {n for n in names if "callback" in n or n in ("infeed", "outfeed", "print")}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_has_no_host_callbacks(name):
    tx = OPTIMIZERS[name]()
    params = make_params(mixed=True)
    state = tx.init(params)
    names = _primitives(jax.make_jaxpr(make_step(tx))(params, state, make_batches(1)[0]))
    assert "dot_general" in names  # the walk sees the step's arithmetic
    assert not _host_primitives(names), name
    names = _primitives(jax.make_jaxpr(tx.init)(params))
    assert not _host_primitives(names), name


def test_callback_detection_works():
    """The check above can fail: a transformation with a host callback is caught."""
    if not hasattr(gc, "check_finite"):
        pytest.skip("no check_finite")
    tx = gc.chain(gc.check_finite(), gc.sgd(0.1))
    params = make_params()
    names = _primitives(jax.make_jaxpr(make_step(tx))(params, tx.init(params), make_batches(1)[0]))
    assert _host_primitives(names)
