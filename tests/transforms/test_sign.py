"""Lion and signSGD: `scale_by_sign`, `scale_by_lion` (gradchain/transforms/sign.py) and the recipe
`lion` (gradchain/optimizers/sign.py).

Every ingredient and the optimizer run for 100+ steps on a fixed sequence of pseudo-random gradients
(independent of the params) over a tree of seven leaves (the same tree as tests/transforms/test_factored.py:
a scalar, a vector, matrices, a batch of matrices and a 3-d leaf), with magnitudes from 1e-3 to 10.
Each is compared step by step, leaf by leaf, with

(a) a float64 numpy transcription of the paper (tests/references/sign.py: Chen et al. 2023,
    Algorithm 2), in float32 and with x64 in float64;
(b) optax 0.2.8 (`scale_by_lion`, `lion`) with the same arguments.

Then: bad arguments and leaves are named, hyperparameters are readable and settable, a jitted step
never recompiles, bfloat16 params keep float32 state where asked, and the recipe is its chain.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from reference import (
    FACTOR_MIN_DIM,
    RTOL,
    RTOL32,
    RTOL64,
    SEVEN_LEAF_SHAPES,
    SEVEN_LEAF_STEPS,
    RefRun,
    Trajectory,
    assert_hyperparams,
    assert_leaf_close,
    assert_stacked_close,
    assert_state_close,
    assert_trajectory_close,
    assert_trees_equal,
    leaf_series,
    leafwise,
    param_tree,
    ref_updates,
    run_transform,
    scan_trajectories,
    seven_leaf_grads,
    side_by_side,
    stack_trees,
    stored,
)
from references.sign import ref_lion, ref_lion_params, ref_sign

import gradchain as gc
from gradchain import lion, scale_by_lion, scale_by_sign

N_STEPS, MIN_DIM, SHAPES = SEVEN_LEAF_STEPS, FACTOR_MIN_DIM, SEVEN_LEAF_SHAPES  # tests/reference.py
# Updates against the float64 reference, relative to the leaf's largest update: reference.py's RTOL
# in float32 (the factored statistics pass through a mean, a product and two square roots; measured
# worst 3.4e-7, optax 2.5e-7), RTOL64 in float64 (measured 5e-16). Lion's signs match exactly.
RTOL_F32 = RTOL
RTOL_F64 = RTOL64


make_grads = seven_leaf_grads


GRADS = make_grads()
PARAMS = param_tree(SHAPES)


# ---------------------------------------------------------------------------------------------------
# (a) the ingredients against numpy


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]  # the gradchain ingredient
    reference: Callable[[list], dict[str, RefRun]]  # gradient trees -> per-leaf reference runs
    optax: Callable[[], Any] | None = None  # optax with the same arguments, where it has them
    optax_state_rtol: float = RTOL_F32  # the state buffers against optax's


# optax forms Lion's 1 - b2 from the Python float (1 - 0.99 = 0.01, then rounded to float32), gradchain
# from b2 as the state stores it (float32 0.99000001, so 1 - b2 = 0.0099999905): their momenta differ by
# ~1.1e-6 relative (the updates, signs, do not). With a b2 that float32 holds exactly, only rounding is left
# (~5e-7 after 120 steps).
OPTAX_LION_MU_RTOL = 2e-6


def lion_case(b1: float, b2: float) -> Case:
    exact = stored(b2, np.float32) == b2
    return Case(
        f"lion-b1={b1}-b2={b2}",
        lambda: scale_by_lion(b1, b2),
        lambda g: leafwise(ref_lion, g, stored(b1), stored(b2)),
        lambda: optax.scale_by_lion(b1, b2),
        optax_state_rtol=RTOL_F32 if exact else OPTAX_LION_MU_RTOL,
    )


CASES = [
    lion_case(0.9, 0.99),
    lion_case(0.0, 0.99),
    lion_case(0.95, 0.98),
    lion_case(0.5, 1.0),
    lion_case(0.875, 1 - 2.0**-7),  # betas that float32 holds exactly
    Case("sign", lambda: scale_by_sign(), lambda g: leafwise(ref_sign, g), None),
]
OPTAX_CASES = [case for case in CASES if case.optax is not None]


@functools.cache
def case_runs(library: str, dtype_name: str) -> dict[str, Trajectory]:
    """case id -> its 120-step run on GRADS (cast to `dtype_name`): every case of `library` in one scan."""
    cases = CASES if library == "gradchain" else OPTAX_CASES
    txs = [case.make() if library == "gradchain" else case.optax() for case in cases]
    dtype = np.dtype(dtype_name)
    grads = make_grads(dtype)
    params = param_tree(SHAPES, dtype=dtype)
    together = run_transform(side_by_side(txs), params, grads)
    runs = {}
    for i, case in enumerate(cases):
        runs[case.id] = Trajectory(step[i] for step in together)
        runs[case.id].state = together.state[i]
    return runs


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_numpy_reference_float32(case: Case):
    traj = case_runs("gradchain", "float32")[case.id]
    runs = case.reference(GRADS)
    assert_trajectory_close(traj, ref_updates(runs, GRADS[0]), RTOL_F32)
    assert_state_close(traj.state, runs, RTOL_F32)
    assert all(u.dtype == np.float32 for u in jax.tree.leaves(traj[-1]))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_numpy_reference_float64(case: Case, x64):
    traj = case_runs("gradchain", "float64")[case.id]
    grads = make_grads(np.float64)
    runs = case.reference(grads)
    assert_trajectory_close(traj, ref_updates(runs, grads[0]), RTOL_F64)
    assert_state_close(traj.state, runs, RTOL_F64)
    assert all(u.dtype == np.float64 for u in jax.tree.leaves(traj[-1]))


@pytest.mark.parametrize("case", OPTAX_CASES, ids=lambda c: c.id)
def test_matches_optax(case: Case):
    ours = case_runs("gradchain", "float32")[case.id]
    theirs = case_runs("optax", "float32")[case.id]
    # Same float32 arithmetic up to the order of a few operations.
    assert_trajectory_close(ours, theirs, RTOL_F32)
    for field in ("mu", "v_row", "v_col", "v"):
        if hasattr(theirs.state, field):
            mine, other = getattr(ours.state, field), getattr(theirs.state, field)
            for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(mine)[0], jax.tree.leaves(other), strict=True):
                assert a.shape == b.shape, f"{field}{jax.tree_util.keystr(path)}"  # placeholders too: (1,)
                assert_leaf_close([a], [b], case.optax_state_rtol, where=f"{field}{jax.tree_util.keystr(path)}")


def test_reference_comparison_detects_a_convention_change():
    """The tolerance is far below what a wrong convention costs: b1 and b2 swapped (the decay, eps and axes
    conventions of the factored statistics: tests/transforms/test_factored.py)."""
    lion_run = case_runs("gradchain", "float32")[lion_case(0.95, 0.98).id]
    with pytest.raises(AssertionError, match="relative error"):
        assert_trajectory_close(lion_run, ref_updates(leafwise(ref_lion, GRADS, 0.98, 0.95), GRADS[0]), 0.5)


def test_scale_by_sign_mask_passes_masked_leaves_through():
    mask = {name: name != "mat" for name in SHAPES}
    traj = run_transform(scale_by_sign(mask=mask), PARAMS, GRADS[:10])
    for k, u in enumerate(traj):
        np.testing.assert_array_equal(u["mat"], GRADS[k]["mat"])
        np.testing.assert_array_equal(u["vec"], np.sign(GRADS[k]["vec"]))


@pytest.mark.parametrize("make", [lambda: scale_by_lion(), lambda: scale_by_sign()], ids=["lion", "sign"])
def test_sign_rules_reject_complex_params_naming_the_leaf(make):
    with pytest.raises(TypeError, match=r"leaf z\b.*complex"):
        make().init({"w": jnp.zeros(2), "z": jnp.zeros(2, jnp.complex64)})


# ---------------------------------------------------------------------------------------------------
# (a, b) the optimizer, param trajectories against numpy and optax


def _mask_fn(params: Any) -> Any:
    return {name: np.ndim(p) >= 2 for name, p in params.items()}


def _lr_schedule(count: Any) -> Any:
    return 0.02 * 0.99**count


@dataclasses.dataclass(frozen=True)
class OptCase:
    id: str
    gradchain: Callable[..., Any]
    optax: Callable[[], Any]
    reference: Callable[[Any, list, str], np.ndarray]  # (p0 of a leaf, its grads, its name) -> params


def _stored_at(value: Any) -> Any:
    """A hyperparameter as the library stores it: a number rounded by `stored`, a schedule as given."""
    return value if value is None or callable(value) else stored(value)


def lion_opt(id_: str, lr: Any, np_lr: Any, **kw: Any) -> OptCase:
    b1, b2, wd = kw.get("b1", 0.9), kw.get("b2", 0.99), kw.get("weight_decay", 1e-3)
    mask = kw.get("mask")

    def reference(p0, grads, name):
        decay = None if mask is not None and not _mask_fn(PARAMS)[name] else _stored_at(wd)
        return ref_lion_params(p0, grads, _stored_at(np_lr), stored(b1), stored(b2), decay)

    optax_kw = {k: v for k, v in kw.items() if k in ("b1", "b2", "mask")}
    optax_kw["weight_decay"] = 0.0 if wd is None else wd
    return OptCase(id_, lambda **extra: lion(lr, **kw, **extra), lambda: optax.lion(lr, **optax_kw), reference)


OPT_CASES = [
    lion_opt("lion-default", 0.01, 0.01),
    lion_opt("lion-no_decay", 0.01, 0.01, weight_decay=None),
    lion_opt("lion-betas-mask", 3e-3, 3e-3, b1=0.8, b2=0.95, weight_decay=0.5, mask=_mask_fn),
    lion_opt("lion-schedule", _lr_schedule, lambda k: stored(0.02 * 0.99**k), weight_decay=0.1),
]
OPT_BY_ID = {case.id: case for case in OPT_CASES}
# The cases the float64 test repeats with x64.
OPT_CASES_64 = ["lion-betas-mask"]


def reference_params(case: OptCase, params: Any, grads: list[Any]) -> dict[str, np.ndarray]:
    return {name: case.reference(params[name], [g[name] for g in grads], name) for name in SHAPES if name in params}


@functools.cache
def optimizer_runs() -> dict[str, tuple[Any, Any]]:
    """case id -> (gradchain trajectory, optax trajectory), every case of both libraries in one scan."""
    txs = [c.gradchain() for c in OPT_CASES] + [c.optax() for c in OPT_CASES]
    results = jax.tree.map(np.asarray, scan_trajectories(txs, PARAMS, stack_trees(GRADS)))
    n = len(OPT_CASES)
    return {c.id: (results[i][0], results[n + i][0]) for i, c in enumerate(OPT_CASES)}


@functools.cache
def optimizer_runs64() -> dict[str, Any]:
    """case id -> the float64 gradchain trajectory of the OPT_CASES_64 cases (call with x64 on)."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), PARAMS)
    extra = {"lion": {}}
    txs = [OPT_BY_ID[i].gradchain(**extra[i.split("-")[0]]) for i in OPT_CASES_64]
    results = jax.tree.map(np.asarray, scan_trajectories(txs, params, stack_trees(make_grads(np.float64))))
    return {case_id: trajectory for case_id, (trajectory, _) in zip(OPT_CASES_64, results, strict=True)}


@pytest.mark.parametrize("case", OPT_CASES, ids=lambda c: c.id)
def test_optimizer_matches_numpy_reference(case: OptCase):
    ours, _ = optimizer_runs()[case.id]
    assert_stacked_close(ours, reference_params(case, PARAMS, GRADS), RTOL32)


@pytest.mark.parametrize("case", OPT_CASES, ids=lambda c: c.id)
def test_optimizer_matches_optax(case: OptCase):
    ours, theirs = optimizer_runs()[case.id]
    assert_stacked_close(ours, theirs, RTOL32)


@pytest.mark.parametrize("case_id", OPT_CASES_64)
def test_optimizer_matches_numpy_reference_float64(case_id, x64):
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), PARAMS)
    expected = reference_params(OPT_BY_ID[case_id], params, make_grads(np.float64))
    assert_stacked_close(optimizer_runs64()[case_id], expected, 1e-11)


def _lion_chain() -> Any:
    """`lion-betas-mask` as its docstring's chain of ingredients (run leaf by leaf)."""
    return gc.chain(
        scale_by_lion(0.8, 0.95), gc.add_decayed_weights(0.5, _mask_fn), gc.scale_by_learning_rate(3e-3), pack=False
    )


PLUMBING = {
    "lion-packed": lambda: OPT_BY_ID["lion-betas-mask"].gradchain(pack=True),
    "lion-unpacked": lambda: OPT_BY_ID["lion-betas-mask"].gradchain(pack=False),
    "lion-chain": _lion_chain,
}


@functools.cache
def plumbing_runs() -> dict[str, Any]:
    """name -> 30-step param trajectory of each PLUMBING variant (one scan)."""
    results = scan_trajectories([make() for make in PLUMBING.values()], PARAMS, stack_trees(GRADS[:30]))
    return {name: trajectory for name, (trajectory, _) in zip(PLUMBING, results, strict=True)}


@pytest.mark.parametrize("name", ["lion"])
def test_packed_and_unpacked_runs_are_identical(name):
    """pack=True runs the element-wise ingredients over packed buffers, pack=False leaf by leaf: same bits."""
    runs = plumbing_runs()
    assert_trees_equal(runs[f"{name}-packed"], runs[f"{name}-unpacked"])


@pytest.mark.parametrize("name", ["lion"])
def test_recipe_is_its_chain_bit_for_bit(name):
    runs = plumbing_runs()
    assert_trees_equal(runs[f"{name}-unpacked"], runs[f"{name}-chain"])


# ---------------------------------------------------------------------------------------------------
# Bad input: the exception type, and a message naming the argument or the leaf path.

BAD_ARGUMENTS = [
    (lambda: lion(-0.1), ValueError, "learning_rate"),
    (lambda: lion(float("nan")), ValueError, "learning_rate"),
    (lambda: lion(0.1, b1=1.5), ValueError, "b1"),
    (lambda: lion(0.1, b2=-0.01), ValueError, "b2"),
    (lambda: lion(0.1, weight_decay=-1e-3), ValueError, "weight_decay"),
    (lambda: lion(0.1, mu_dtype=jnp.int32), TypeError, "mu_dtype"),
    (lambda: scale_by_lion(b1=1.01), ValueError, "scale_by_lion: b1"),
    (lambda: scale_by_lion(b2=jnp.ones(2)), TypeError, "b2"),
]


@pytest.mark.parametrize(("build", "exception", "match"), BAD_ARGUMENTS, ids=[m for _, _, m in BAD_ARGUMENTS])
def test_bad_arguments_are_named(build, exception, match):
    with pytest.raises(exception, match=match):
        build()


INT_PARAMS = {"w": jnp.zeros((4, 4)), "n": jnp.zeros(3, jnp.int32)}


@pytest.mark.parametrize(
    "make",
    [
        lambda: lion(0.1),
        lambda: lion(0.1, pack=False),
        lambda: scale_by_lion(),
        lambda: scale_by_sign(),
    ],
    ids=["lion", "lion-unpacked", "scale_by_lion", "sign"],
)
def test_integer_params_are_named(make):
    with pytest.raises(TypeError, match=r"leaf n has dtype int32"):
        make().init(INT_PARAMS)


# ---------------------------------------------------------------------------------------------------
# Hyperparameters: names, values, set_hyperparams


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: lion(0.01), {"learning_rate": 0.01, "b1": 0.9, "b2": 0.99, "weight_decay": 1e-3}),
        (lambda: lion(0.01, b1=0.0, b2=1.0, weight_decay=None), {"learning_rate": 0.01, "b1": 0.0, "b2": 1.0}),
        (lambda: scale_by_sign(), {}),
    ],
    ids=["lion", "lion-no_decay", "sign"],
)
def test_hyperparams_names_and_values(make, expected):
    assert_hyperparams(make().init(PARAMS), expected, dtype=np.float32)


def test_set_hyperparams_checks_like_the_constructor():
    state = lion(0.01).init(PARAMS)
    with pytest.raises(ValueError, match="b1"):
        gc.set_hyperparams(state, b1=1.5)
    with pytest.raises(ValueError, match="learning_rate"):
        gc.set_hyperparams(state, learning_rate=-1.0)


def _switch(before: float, after: float, at: int) -> Callable[[int], float]:
    return lambda k: before if k < at else after


def test_set_hyperparams_midway_lion_matches_the_formula():
    tx = lion(0.01, weight_decay=0.1, pack=False)
    first = run_transform(tx, PARAMS, GRADS[:50], apply=True)
    state = gc.set_hyperparams(first.state, learning_rate=0.003, b1=0.5, b2=0.9, weight_decay=0.0)
    second = run_transform(tx, first.params, GRADS[50:], state=state, apply=True)
    final = jax.tree.map(np.asarray, second.params)
    lr, b1 = _switch(stored(0.01), stored(0.003), 50), _switch(stored(0.9), stored(0.5), 50)
    b2, wd = _switch(stored(0.99), stored(0.9), 50), _switch(stored(0.1), 0.0, 50)
    for name in SHAPES:
        expected = ref_lion_params(PARAMS[name], [g[name] for g in GRADS], lr, b1, b2, wd)[-1]
        assert_leaf_close([final[name]], [expected], RTOL32, where=name)


# ---------------------------------------------------------------------------------------------------
# jit: one trace, one compilation, across steps and hyperparameter changes; sharding; eval_shape


def _loss(params: Any, batch: jax.Array) -> jax.Array:
    return sum(jnp.sum(jnp.sin(p.astype(jnp.float32) * batch)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize(
    ("make", "changes"),
    [
        (lambda: lion(_lr_schedule, weight_decay=0.1), [{"b1": 0.5}, {"weight_decay": 0.0, "b2": 1.0}]),
    ],
    ids=["lion"],
)
def test_jitted_step_never_recompiles(make, changes):
    tx = make()
    traces: list[int] = []

    def step(params, state, batch):
        traces.append(1)  # runs only while tracing
        grads = jax.grad(_loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    step = jax.jit(step)
    params = jax.device_put(jax.tree.map(jnp.asarray, PARAMS), jax.devices()[0])
    state = tx.init(params)
    batches = jax.device_put([jnp.float32(0.1 * k) for k in range(8)], jax.devices()[0])
    for k, batch in enumerate(batches):
        if k in (3, 6):
            state = gc.set_hyperparams(state, changes[k // 3 - 1])
        params, state = step(params, state, batch)
    assert len(traces) == 1
    assert step._cache_size() == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: lion(_lr_schedule, mu_dtype=jnp.float32),
    ],
    ids=["lion"],
)
def test_donated_step_reuses_every_state_buffer(make):
    """No two state leaves share a buffer (a buffer donated twice is an error), the placeholders included."""
    tx = make()
    params = jax.tree.map(jnp.asarray, PARAMS)
    state = tx.init(params)
    buffers = [x for x in jax.tree.leaves(state)]
    assert len({id(x) for x in buffers}) == len(buffers)

    def step(params, state, batch):
        updates, state = tx.update(jax.grad(_loss)(params, batch), state, params)
        return gc.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Some donated buffers were not usable" would fail here
        for k in range(3):
            old = state
            params, state = step(params, state, jnp.float32(0.1 * k))
            assert all(x.is_deleted() for x in jax.tree.leaves(old) if x.ndim > 0)


def _sharded_train_step(tx: Any) -> Callable:
    # "b" apart from "w", so that jit's sharding propagation leaves "b" replicated.
    def loss(params, x):
        return jnp.sum(jnp.tanh(x @ params["w"]) ** 2) + jnp.sum(jnp.sin(params["b"]))

    @jax.jit
    def step(params, state, x):
        updates, state = tx.update(jax.grad(loss)(params, x), state, params)
        return gc.apply_updates(params, updates), state

    return step


@pytest.mark.xfail(
    strict=True,
    reason="library bug (gradchain/tree.py full_like/_device_kwargs): state buffers copy the params' spec "
    "P('d', None) verbatim, a jitted step returns them as the equivalent P('d'), and the step compiles twice",
)
def test_trailing_none_in_a_param_spec_does_not_recompile():
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
    params = {
        "w": jax.device_put(jnp.ones((8, 6)), NamedSharding(mesh, PartitionSpec("d", None))),
        "b": jax.device_put(jnp.ones(6), NamedSharding(mesh, PartitionSpec())),
    }
    tx = lion(0.01, pack=False)
    state = tx.init(params)
    step = _sharded_train_step(tx)
    for k in range(3):
        params, state = step(params, state, jnp.full((3, 8), 0.1 * (k + 1)))
    assert step._cache_size() == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: lion(0.01, mu_dtype=jnp.float32),
    ],
    ids=["lion"],
)
def test_eval_shape_init_matches_concrete_init(make):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), PARAMS)
    abstract = jax.eval_shape(make().init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
    concrete = make().init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
        assert (a.shape, a.dtype) == (c.shape, c.dtype)


# ---------------------------------------------------------------------------------------------------
# Low precision: bfloat16 params, float32 state where asked


def test_lion_bfloat16_params_with_float32_momentum():
    grads = make_grads(jnp.bfloat16)
    params = jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16), PARAMS)
    traj = run_transform(scale_by_lion(mu_dtype=jnp.float32), params, grads)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(traj.state.mu))
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(traj[-1]))
    runs = leafwise(ref_lion, grads, stored(0.9), stored(0.99))  # from the bfloat16 gradients, in float64
    assert_trajectory_close(traj, ref_updates(runs, grads[0]), 1e-6)  # signs: exact in bfloat16
    assert_state_close(traj.state, runs, RTOL_F32)


def test_lion_optimizer_bfloat16_params_steps_match_the_formula():
    """The whole optimizer on bfloat16 params: each step's update is -lr (sign(c) + wd p) of the params it saw."""
    grads = make_grads(jnp.bfloat16)[:60]
    params = jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16), PARAMS)
    traj = run_transform(lion(0.01, mu_dtype=jnp.float32, weight_decay=0.1, pack=False), params, grads, apply=True)
    assert traj.state[0].mu["mat"].dtype == jnp.float32
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(traj.params))
    signs = leafwise(ref_lion, grads, stored(0.9), stored(0.99))
    seen = leaf_series(traj.param_history)
    expected = {
        path: [
            -stored(0.01) * (s + stored(0.1) * np.asarray(p, np.float64))
            for s, p in zip(signs[path], seen[path], strict=True)
        ]
        for path in signs
    }
    # Each ingredient casts its output back to bfloat16 (the decay's sum, then the learning rate's
    # product): two roundings of 2^-9 relative at most.
    assert_trajectory_close(traj, ref_updates(expected, grads[0]), 2**-7, per_step=True)
