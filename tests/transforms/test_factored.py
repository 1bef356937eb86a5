"""Adafactor: `scale_by_factored_rms`, `scale_by_param_block_rms` (gradchain/transforms/factored.py)
and the recipe `adafactor` (gradchain/optimizers/factored.py).

Every ingredient and the optimizer run for 100+ steps on a fixed sequence of pseudo-random gradients
(independent of the params) over a tree of seven leaves: a scalar, a vector, matrices above and
below the factoring threshold (`MIN_DIM = 4`), one whose largest axis comes first, a batch of
matrices and a 3-d leaf whose two largest axes are not adjacent, with magnitudes from 1e-3 to 10.
Each is compared step by step, leaf by leaf, with

(a) a float64 numpy transcription of the paper (tests/references/factored.py: Shazeer & Stern 2018,
    Algorithms 4 and 5, with the paper's row and column *sums*, where gradchain and optax keep
    means), in float32 and with x64 in float64;
(b) optax 0.2.8 (`scale_by_factored_rms`, `scale_by_param_block_rms`, `adafactor`) with the same
    arguments;
(c) `torch.optim.Adafactor`, through the mapping the `adafactor` docstring gives.

Then: bad arguments and leaves are named, hyperparameters are readable and settable, a jitted step
never recompiles, bfloat16 params keep float32 state where asked, and the recipe is its chain.
Lion and signSGD, on the same tree, are tested in tests/transforms/test_sign.py.
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
    grad_sequence,
    leaf_series,
    leafwise,
    max_relative_error,
    param_tree,
    ref_updates,
    run_transform,
    scan_trajectories,
    seven_leaf_grads,
    side_by_side,
    stack_trees,
    stored,
)
from references.factored import ref_adafactor_params, ref_factored_rms, ref_param_block_rms

import gradchain as gc
from gradchain import adafactor, scale_by_factored_rms, scale_by_param_block_rms

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


def factored_case(
    decay_rate: float = 0.8,
    epsilon: float = 1e-30,
    *,
    factored: bool = True,
    step_offset: int = 0,
    decay_fn: Callable | None = None,
    optax_ok: bool = True,
) -> Case:
    flags = dict(factored=factored, min_dim=MIN_DIM, step_offset=step_offset, decay_fn=decay_fn)
    name = f"factored-decay_rate={decay_rate}-eps={epsilon}-factored={factored}-offset={step_offset}"
    extra = {} if decay_fn is None else {"decay_rate_fn": lambda step, rate: decay_fn(step, rate)}

    def make_optax():
        kwargs = {} if decay_fn is None else {"decay_rate_fn": decay_fn}
        return optax.scale_by_factored_rms(factored, decay_rate, step_offset, MIN_DIM, epsilon, **kwargs)

    return Case(
        name + ("-custom_decay" if decay_fn else ""),
        lambda: scale_by_factored_rms(factored, decay_rate, step_offset, MIN_DIM, epsilon, **extra),
        lambda g: leafwise(ref_factored_rms, g, stored(decay_rate), stored(epsilon), **flags),
        make_optax if optax_ok else None,
    )


def _constant_decay(step: Any, rate: Any) -> Any:
    """A decay_rate_fn: the constant beta = decay_rate (an Adam-like second moment, no bias correction)."""
    del step
    return rate


CASES = [
    factored_case(),
    factored_case(0.5, 1e-3),  # eps visible on "vec" (g^2 ~ 1e-6)
    # The arithmetic mean of all past g^2; zero steps give zero statistics and zero updates (optax: NaN).
    factored_case(1.0, 0.0, optax_ok=False),
    factored_case(0.8, 1e-30, factored=False),
    # Steps before the offset count as the first; optax raises a negative number to -c there (NaN).
    factored_case(0.8, 1e-6, step_offset=7, optax_ok=False),
    factored_case(0.9, 1e-30, decay_fn=_constant_decay),
]
CASES_BY_ID = {case.id: case for case in CASES}
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


def test_optax_factored_decay_is_float32_even_with_x64(x64):
    """Documented difference: optax computes 1 - t^(-c) in float32 whatever the dtype, so its float64
    updates are off by ~1e-7 relative (gradchain: ~1e-15, as float64 should be)."""
    case = CASES_BY_ID[factored_case().id]
    grads = make_grads(np.float64)
    expected = ref_updates(case.reference(grads), grads[0])
    theirs = run_transform(case.optax(), param_tree(SHAPES, dtype=np.float64), grads)
    assert 1e-8 < max_relative_error(theirs, expected) < 1e-6
    assert max_relative_error(case_runs("gradchain", "float64")[case.id], expected) < RTOL_F64


def test_factored_rms_step_offset_matches_optax_after_the_offset():
    """With the count past `step_offset` (a restored pre-training count), both use t = count - offset + 1."""
    ours, theirs = scale_by_factored_rms(True, 0.8, 7, MIN_DIM), optax.scale_by_factored_rms(True, 0.8, 7, MIN_DIM)
    start = {"count": jnp.asarray(20, jnp.int32)}
    a = run_transform(ours, PARAMS, GRADS[:40], state=ours.init(PARAMS)._replace(**start))
    b = run_transform(theirs, PARAMS, GRADS[:40], state=theirs.init(PARAMS)._replace(**start))
    assert_trajectory_close(a, b, RTOL_F32)
    expected = leafwise(ref_factored_rms, GRADS[:40], stored(0.8), stored(1e-30), min_dim=MIN_DIM, step_offset=-13)
    assert_trajectory_close(a, ref_updates(expected, GRADS[0]), RTOL_F32)


def test_reference_comparison_detects_a_convention_change():
    """The tolerance is far below what a wrong convention costs: decay schedule, eps, axes (Lion's b1/b2
    swapped: tests/transforms/test_sign.py)."""
    factored = case_runs("gradchain", "float32")[factored_case(0.5, 1e-3).id]
    near_misses = [
        leafwise(ref_factored_rms, GRADS, stored(0.5), 0.0, min_dim=MIN_DIM),  # eps dropped
        leafwise(ref_factored_rms, GRADS, stored(0.55), stored(1e-3), min_dim=MIN_DIM),
        leafwise(ref_factored_rms, GRADS, stored(0.5), stored(1e-3), min_dim=MIN_DIM, step_offset=1),
        leafwise(ref_factored_rms, GRADS, stored(0.5), stored(1e-3), min_dim=MIN_DIM + 2),  # "mat" unfactored
    ]
    for runs in near_misses:
        with pytest.raises(AssertionError, match="relative error"):
            assert_trajectory_close(factored, ref_updates(runs, GRADS[0]), 10 * RTOL_F32)


def test_factored_statistics_have_the_documented_shapes():
    state = scale_by_factored_rms(min_dim_size_to_factor=MIN_DIM).init(PARAMS)
    shapes = {f: {k: v.shape for k, v in getattr(state, f).items()} for f in ("v_row", "v_col", "v")}
    assert shapes["v_row"] == {
        "scalar": (1,), "vec": (1,), "mat": (5,), "tall": (4,), "thin": (1,), "batch": (2, 5), "cube": (2, 5)
    }  # fmt: skip
    assert shapes["v_col"] == {
        "scalar": (1,), "vec": (1,), "mat": (8,), "tall": (9,), "thin": (1,), "batch": (2, 6), "cube": (6, 2)
    }  # fmt: skip
    assert shapes["v"] == {
        "scalar": (), "vec": (7,), "mat": (1,), "tall": (1,), "thin": (3, 6), "batch": (1,), "cube": (1,)
    }  # fmt: skip


def test_param_block_rms_matches_numpy_and_optax():
    params = {**PARAMS, "vec": np.zeros(7, np.float32), "thin": np.full((3, 6), 1e-4, np.float32)}  # below min_scale
    ours = run_transform(scale_by_param_block_rms(0.01), params, GRADS[:20])
    theirs = run_transform(optax.scale_by_param_block_rms(0.01), params, GRADS[:20])
    expected = {
        path: ref_param_block_rms(series, [leaf_series([params])[path][0]] * 20, stored(0.01))
        for path, series in leaf_series(GRADS[:20]).items()
    }
    assert_trajectory_close(ours, ref_updates(expected, GRADS[0]), 1e-6, per_step=True, floor=1e-30)
    assert_trajectory_close(ours, theirs, 1e-6, per_step=True)


def test_complex_gradients_use_abs_squared_and_keep_real_statistics():
    grads = grad_sequence({"m": (4, 6), "v": (5,)}, 30, 3, np.complex64)
    params = param_tree({"m": (4, 6), "v": (5,)}, dtype=np.complex64)
    traj = run_transform(scale_by_factored_rms(min_dim_size_to_factor=MIN_DIM, epsilon=1e-6), params, grads)
    runs = leafwise(ref_factored_rms, grads, stored(0.8), stored(1e-6), min_dim=MIN_DIM)
    assert_trajectory_close(traj, ref_updates(runs, grads[0]), RTOL_F32)
    assert traj.state.v_row["m"].dtype == traj.state.v["v"].dtype == np.float32


# ---------------------------------------------------------------------------------------------------
# Zero gradients, epsilon = 0 and float16: gradchain stays finite where optax gives NaN.


def test_zero_gradients_with_zero_epsilon_give_zero_updates_not_nan():
    ours = scale_by_factored_rms(True, 0.8, 0, MIN_DIM, 0.0)
    theirs = optax.scale_by_factored_rms(True, 0.8, 0, MIN_DIM, 0.0)
    zeros = jax.tree.map(np.zeros_like, GRADS[0])
    u, _ = jax.jit(ours.update)(zeros, ours.init(PARAMS))
    assert all(np.array_equal(np.asarray(x), np.zeros_like(x)) for x in jax.tree.leaves(u))
    # optax computes 0 * 0^(-1/2) = NaN there (documented difference).
    u_optax, _ = jax.jit(theirs.update)(zeros, theirs.init(PARAMS), PARAMS)
    assert np.isnan(np.asarray(u_optax["mat"])).all()


def test_float16_zero_gradient_is_finite_where_optax_is_nan():
    """eps = 1e-30 is 0 in float16; gradchain computes in float32 (and stores float16 statistics in float32)."""
    params = {"w": jnp.ones((4, 4), jnp.float16), "b": jnp.ones(3, jnp.float16)}
    grads = {"w": jnp.zeros((4, 4), jnp.float16), "b": jnp.array([0.0, 1e-3, -2.0], jnp.float16)}
    tx = scale_by_factored_rms(min_dim_size_to_factor=MIN_DIM)
    u, state = jax.jit(tx.update)(grads, tx.init(params))
    assert state.v_row["w"].dtype == state.v["b"].dtype == jnp.float32
    assert u["w"].dtype == jnp.float16 and np.array_equal(np.asarray(u["w"]), np.zeros((4, 4)))
    np.testing.assert_allclose(np.asarray(u["b"], np.float64), [0.0, 1.0, -1.0], rtol=1e-3)
    ot = optax.scale_by_factored_rms(min_dim_size_to_factor=MIN_DIM)
    theirs, _ = jax.jit(ot.update)(grads, ot.init(params), params)
    assert np.isnan(np.asarray(theirs["w"], np.float32)).all()


# ---------------------------------------------------------------------------------------------------
# (a, b) the optimizers, param trajectories against numpy and optax


def _mask_fn(params: Any) -> Any:
    return {name: np.ndim(p) >= 2 for name, p in params.items()}


def _relative_step(count: Any) -> Any:
    """The paper's relative step size $\\min(10^{-2}, 1/\\sqrt t)$ (here min(0.2, ...), so it moves)."""
    return jnp.minimum(0.2, jax.lax.rsqrt(count + 1.0))


@dataclasses.dataclass(frozen=True)
class OptCase:
    id: str
    gradchain: Callable[..., Any]
    optax: Callable[[], Any]
    reference: Callable[[Any, list, str], np.ndarray]  # (p0 of a leaf, its grads, its name) -> params


def _stored_at(value: Any) -> Any:
    """A hyperparameter as the library stores it: a number rounded by `stored`, a schedule as given."""
    return value if value is None or callable(value) else stored(value)


def adafactor_opt(id_: str, np_lr: Any = None, **kw: Any) -> OptCase:
    kw.setdefault("min_dim_size_to_factor", MIN_DIM)

    def reference(p0, grads, name):
        mask = kw.get("weight_decay_mask")
        return ref_adafactor_params(
            p0,
            grads,
            _stored_at(np_lr),
            decay_rate=stored(kw.get("decay_rate", 0.8)),
            decay_offset=kw.get("decay_offset", 0),
            min_dim=kw["min_dim_size_to_factor"],
            param_scale=kw.get("multiply_by_parameter_scale", True),
            clipping_threshold=_stored_at(kw.get("clipping_threshold", 1.0)),
            momentum=_stored_at(kw.get("momentum")),
            weight_decay_rate=_stored_at(kw.get("weight_decay_rate")),
            decay_this_leaf=mask is None or _mask_fn(PARAMS)[name],
            eps=stored(kw.get("eps", 1e-30)),
            factored=kw.get("factored", True),
        )

    return OptCase(id_, lambda **extra: adafactor(**kw, **extra), lambda: optax.adafactor(**kw), reference)


OPT_CASES = [
    adafactor_opt("adafactor-default"),
    adafactor_opt("adafactor-lr", 0.05, learning_rate=0.05),
    adafactor_opt(
        "adafactor-relative_step-momentum-decay",
        lambda k: stored(min(0.2, 1 / np.sqrt(k + 1))),
        learning_rate=_relative_step,
        momentum=0.9,
        weight_decay_rate=1e-3,
        weight_decay_mask=_mask_fn,
    ),
    adafactor_opt(
        "adafactor-no_clip-no_param_scale-eps",
        0.01,
        learning_rate=0.01,
        clipping_threshold=None,
        multiply_by_parameter_scale=False,
        decay_rate=0.6,
        eps=1e-3,
    ),
    adafactor_opt("adafactor-unfactored-clip", 0.05, learning_rate=0.05, factored=False, clipping_threshold=0.5),
]
OPT_BY_ID = {case.id: case for case in OPT_CASES}
# The cases the float64 test repeats with x64 (the momentum buffer then kept in float64).
OPT_CASES_64 = ["adafactor-relative_step-momentum-decay", "adafactor-unfactored-clip"]


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
    extra = {"adafactor": {"dtype_momentum": None}}
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


def test_optimizer_comparison_detects_a_convention_change():
    """Decay multiplied by the learning rate (torch's AdamW convention) or no momentum are far off."""
    ours, _ = optimizer_runs()["adafactor-relative_step-momentum-decay"]
    case = OPT_BY_ID["adafactor-relative_step-momentum-decay"]
    changed = dataclasses.replace(
        case,
        reference=lambda p0, g, name: ref_adafactor_params(
            p0, g, lambda k: min(0.2, 1 / np.sqrt(k + 1)), min_dim=MIN_DIM, momentum=None, weight_decay_rate=1e-3
        ),
    )
    with pytest.raises(AssertionError, match="max error"):
        assert_stacked_close(ours, reference_params(changed, PARAMS, GRADS), 10 * RTOL32)


def _adafactor_chain() -> Any:
    """`adafactor-relative_step-momentum-decay` as its docstring's chain of ingredients (run leaf by leaf)."""
    return gc.chain(
        scale_by_factored_rms(True, 0.8, 0, MIN_DIM, 1e-30),
        gc.clip_by_block_rms(1.0),
        gc.scale_by_learning_rate(_relative_step, flip_sign=False),
        scale_by_param_block_rms(),
        gc.ema(0.9, debias=False, accumulator_dtype=jnp.float32),
        gc.add_decayed_weights(1e-3, _mask_fn),
        gc.scale(-1.0),
        pack=False,
    )


PLUMBING = {
    "adafactor-packed": lambda: OPT_BY_ID["adafactor-relative_step-momentum-decay"].gradchain(pack=True),
    "adafactor-unpacked": lambda: OPT_BY_ID["adafactor-relative_step-momentum-decay"].gradchain(pack=False),
    "adafactor-chain": _adafactor_chain,
}


@functools.cache
def plumbing_runs() -> dict[str, Any]:
    """name -> 30-step param trajectory of each PLUMBING variant (one scan)."""
    results = scan_trajectories([make() for make in PLUMBING.values()], PARAMS, stack_trees(GRADS[:30]))
    return {name: trajectory for name, (trajectory, _) in zip(PLUMBING, results, strict=True)}


@pytest.mark.parametrize("name", ["adafactor"])
def test_packed_and_unpacked_runs_are_identical(name):
    """pack=True runs the element-wise ingredients over packed buffers, pack=False leaf by leaf: same bits.

    (Lion's packed and unpacked runs are equal bit for bit: tests/transforms/test_sign.py.) Op for op
    (eagerly) the bits are the same. Compiled, the two are different XLA graphs, and for
    Adafactor (powers of the step count, block RMS) XLA's CPU code for them rounds differently in
    the last bit from the third step on, which 30 steps amplify to about 5e-5 of a leaf's scale.
    """
    runs = plumbing_runs()
    for a, e in zip(jax.tree.leaves(runs[f"{name}-packed"]), jax.tree.leaves(runs[f"{name}-unpacked"]), strict=True):
        np.testing.assert_allclose(a, e, rtol=0, atol=2e-4 * float(np.max(np.abs(e))))
    packed, unpacked = PLUMBING[f"{name}-packed"](), PLUMBING[f"{name}-unpacked"]()
    params_a = params_b = PARAMS
    state_a, state_b = packed.init(PARAMS), unpacked.init(PARAMS)
    for g in GRADS[:4]:
        u_a, state_a = packed.update(g, state_a, params_a)
        u_b, state_b = unpacked.update(g, state_b, params_b)
        params_a, params_b = gc.apply_updates(params_a, u_a), gc.apply_updates(params_b, u_b)
        assert_trees_equal(params_a, params_b)


@pytest.mark.parametrize("name", ["adafactor"])
def test_recipe_is_its_chain_bit_for_bit(name):
    runs = plumbing_runs()
    assert_trees_equal(runs[f"{name}-unpacked"], runs[f"{name}-chain"])


# ---------------------------------------------------------------------------------------------------
# (c) torch.optim.Adafactor


# torch factors the last two axes of every tensor of 2 or more dimensions; gradchain the two largest
# axes of those whose second largest is at least min_dim_size_to_factor. With min_dim_size_to_factor=0
# the two agree wherever the last two axes are the largest: every leaf here but "cube".
TORCH_SHAPES = {name: shape for name, shape in SHAPES.items() if name != "cube"}


def run_torch_adafactor(params: dict, grads: list[dict], **kwargs: Any) -> dict[str, np.ndarray]:
    """torch.optim.Adafactor in float64 (single-tensor path): the params after every step."""
    import torch  # only reached from tests that take the `torch` fixture

    names = list(params)
    tensors = {n: torch.tensor(np.asarray(params[n], np.float64), requires_grad=True) for n in names}
    optimizer = torch.optim.Adafactor(list(tensors.values()), foreach=False, **kwargs)
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for g in grads:
        for n in names:
            tensors[n].grad = torch.tensor(np.asarray(g[n], np.float64))
        optimizer.step()
        for n in names:
            out[n].append(tensors[n].detach().numpy().copy())
    return {n: np.stack(v) for n, v in out.items()}


def torch_adafactor_as_gradchain(lr: float, beta2_decay: float, d: float, weight_decay: float) -> Any:
    """The mapping in `adafactor`'s docstring."""
    return adafactor(
        lambda count: jnp.minimum(lr, jax.lax.rsqrt(count + 1.0)),
        min_dim_size_to_factor=0,
        decay_rate=-beta2_decay,
        clipping_threshold=d,
        eps=0.0,
        weight_decay_rate=lr * weight_decay,
    )


TORCH_CONFIGS = [
    {"lr": 0.2, "beta2_decay": -0.8, "d": 1.0, "weight_decay": 0.0},
    {"lr": 0.05, "beta2_decay": -0.5, "d": 1.5, "weight_decay": 0.1},
    {"lr": 1e-2, "beta2_decay": -1.0, "d": 1.0, "weight_decay": 0.02},
]
TORCH_IDS = ["-".join(f"{k}={v}" for k, v in config.items()) for config in TORCH_CONFIGS]
# torch clamps its statistics below by eps1 where gradchain adds eps (here 0): the two differ only
# where the mean squared gradient is below eps1 (machine epsilon), so the all-zero step 0 is left out.
TORCH_GRADS = GRADS[1:]


@functools.cache
def torch_runs() -> list[dict[str, np.ndarray]]:
    return [run_torch_adafactor(PARAMS, TORCH_GRADS, **config) for config in TORCH_CONFIGS]


@functools.cache
def gradchain_torch_runs() -> list[dict[str, np.ndarray]]:
    txs = [torch_adafactor_as_gradchain(**config) for config in TORCH_CONFIGS]
    results = scan_trajectories(txs, jax.tree.map(jnp.asarray, PARAMS), stack_trees(TORCH_GRADS))
    return [jax.tree.map(np.asarray, trajectory) for trajectory, _ in results]


def _without_cube(tree: dict[str, Any]) -> dict[str, Any]:
    return {name: x for name, x in tree.items() if name in TORCH_SHAPES}


@pytest.mark.parametrize("index", range(len(TORCH_CONFIGS)), ids=TORCH_IDS)
def test_adafactor_matches_torch(index, torch):
    ours, theirs = gradchain_torch_runs()[index], torch_runs()[index]
    assert_stacked_close(_without_cube(ours), _without_cube(theirs), RTOL32)


def test_adafactor_matches_torch_float64(x64, torch):
    tx = torch_adafactor_as_gradchain(**TORCH_CONFIGS[1])
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), PARAMS)
    ((ours, _),) = scan_trajectories([tx], params, stack_trees(TORCH_GRADS, jnp.float64))
    assert_stacked_close(_without_cube(jax.tree.map(np.asarray, ours)), _without_cube(torch_runs()[1]), 1e-11)


def test_torch_factors_other_axes_of_a_3d_leaf(torch):
    """Documented difference: for "cube" (6, 2, 5) torch factors axes (1, 2), gradchain (and optax) axes (2, 0)."""
    ours, theirs = gradchain_torch_runs()[0]["cube"], torch_runs()[0]["cube"]
    error = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert error > 1e-3


def test_torch_adafactor_is_the_numpy_reference_under_the_mapping(torch):
    """torch itself against the float64 transcription: min(lr, 1/sqrt t) max(rms p, 1e-3) U, decay lr wd."""
    config = TORCH_CONFIGS[1]
    lr, wd = config["lr"], config["weight_decay"]
    expected = {
        name: ref_adafactor_params(
            PARAMS[name],
            [g[name] for g in TORCH_GRADS],
            lambda k: min(lr, 1 / np.sqrt(k + 1)),
            decay_rate=-config["beta2_decay"],
            min_dim=0,
            clipping_threshold=config["d"],
            weight_decay_rate=lr * wd,
            eps=0.0,
        )
        for name in TORCH_SHAPES
    }
    assert_stacked_close(_without_cube(torch_runs()[1]), expected, 1e-11)


# ---------------------------------------------------------------------------------------------------
# Bad input: the exception type, and a message naming the argument or the leaf path.

BAD_ARGUMENTS = [
    (lambda: adafactor(-1.0), ValueError, "learning_rate"),
    (lambda: adafactor(decay_rate=1.5), ValueError, "adafactor: decay_rate"),
    (lambda: adafactor(decay_rate=-0.8), ValueError, "adafactor: decay_rate"),  # torch's beta2_decay sign
    (lambda: adafactor(decay_offset=-1), ValueError, "adafactor: decay_offset"),
    (lambda: adafactor(min_dim_size_to_factor=-1), ValueError, "adafactor: min_dim_size_to_factor"),
    (lambda: adafactor(min_dim_size_to_factor=2.5), TypeError, "adafactor: min_dim_size_to_factor"),
    (lambda: adafactor(clipping_threshold=-1.0), ValueError, "adafactor: clipping_threshold"),
    (lambda: adafactor(momentum=1.0), ValueError, "adafactor: momentum"),
    (lambda: adafactor(momentum=0.9, dtype_momentum=jnp.int8), TypeError, "dtype_momentum"),
    (lambda: adafactor(weight_decay_rate=-0.1), ValueError, "adafactor: weight_decay_rate"),
    (lambda: adafactor(eps=-1e-30), ValueError, "adafactor: eps"),
    (lambda: scale_by_factored_rms(decay_rate=2.0), ValueError, "scale_by_factored_rms: decay_rate"),
    (lambda: scale_by_factored_rms(epsilon=-1.0), ValueError, "scale_by_factored_rms: epsilon"),
    (lambda: scale_by_factored_rms(factored="yes"), TypeError, "factored"),
    (lambda: scale_by_factored_rms(step_offset=-3), ValueError, "step_offset"),
    (lambda: scale_by_factored_rms(nu_dtype=jnp.int32), TypeError, "nu_dtype"),
    (lambda: scale_by_factored_rms(decay_rate_fn=0.5), TypeError, "decay_rate_fn"),
    (lambda: scale_by_param_block_rms(-1e-3), ValueError, "min_scale"),
]


@pytest.mark.parametrize(("build", "exception", "match"), BAD_ARGUMENTS, ids=[m for _, _, m in BAD_ARGUMENTS])
def test_bad_arguments_are_named(build, exception, match):
    with pytest.raises(exception, match=match):
        build()


INT_PARAMS = {"w": jnp.zeros((4, 4)), "n": jnp.zeros(3, jnp.int32)}


@pytest.mark.parametrize(
    "make",
    [
        lambda: adafactor(min_dim_size_to_factor=2),
        lambda: adafactor(min_dim_size_to_factor=2, pack=False),
        lambda: scale_by_factored_rms(),
    ],
    ids=["adafactor", "adafactor-unpacked", "factored"],
)
def test_integer_params_are_named(make):
    with pytest.raises(TypeError, match=r"leaf n has dtype int32"):
        make().init(INT_PARAMS)


@pytest.mark.parametrize("make", [scale_by_factored_rms, scale_by_param_block_rms], ids=["factored", "param_block"])
def test_integer_updates_are_named(make):
    params = {"w": jnp.zeros((4, 4)), "n": jnp.zeros(3)}
    tx = make()
    with pytest.raises(TypeError, match=r"leaf n has dtype int32"):
        tx.update(INT_PARAMS, tx.init(params), params)


def test_factored_update_of_another_shape_names_the_leaf():
    tx = scale_by_factored_rms(min_dim_size_to_factor=2)
    state = tx.init({"a": jnp.zeros(3), "w": jnp.zeros((4, 5))})
    with pytest.raises(ValueError, match=r"leaf w has shape \(4, 6\) in updates"):
        tx.update({"a": jnp.zeros(3), "w": jnp.zeros((4, 6))}, state)
    with pytest.raises(ValueError, match=r"missing from updates: a"):
        tx.update({"w": jnp.zeros((4, 5))}, state)


def test_param_block_rms_needs_params():
    tx = scale_by_param_block_rms()
    with pytest.raises(ValueError, match="scale_by_param_block_rms needs the params"):
        tx.update({"w": jnp.ones(2)}, tx.init(None))
    with pytest.raises(ValueError, match=r"leaf w has shape \(3,\)"):
        tx.update({"w": jnp.ones(3)}, tx.init(None), {"w": jnp.ones(2)})


# ---------------------------------------------------------------------------------------------------
# Hyperparameters: names, values, set_hyperparams


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: adafactor(),
            {"decay_rate": 0.8, "epsilon": 1e-30, "threshold": 1.0, "min_scale": 1e-3, "step_size": -1.0},
        ),
        (
            lambda: adafactor(0.05, clipping_threshold=None, momentum=0.9, weight_decay_rate=0.01, eps=1e-3),
            {
                "decay_rate": 0.8,
                "epsilon": 1e-3,
                "learning_rate": 0.05,
                "min_scale": 1e-3,
                "decay": 0.9,
                "weight_decay": 0.01,
                "step_size": -1.0,
            },
        ),
        (lambda: scale_by_factored_rms(decay_rate=0.5, epsilon=1e-8), {"decay_rate": 0.5, "epsilon": 1e-8}),
        (lambda: scale_by_param_block_rms(0.01), {"min_scale": 0.01}),
    ],
    ids=["adafactor", "adafactor-all", "factored", "param_block"],
)
def test_hyperparams_names_and_values(make, expected):
    assert_hyperparams(make().init(PARAMS), expected, dtype=np.float32)


def test_set_hyperparams_checks_like_the_constructor():
    state = adafactor().init(PARAMS)
    with pytest.raises(ValueError, match="decay_rate"):
        gc.set_hyperparams(state, decay_rate=1.2)
    with pytest.raises(ValueError, match="epsilon"):
        gc.set_hyperparams(state, epsilon=-1.0)


def _switch(before: float, after: float, at: int) -> Callable[[int], float]:
    return lambda k: before if k < at else after


def test_set_hyperparams_midway_factored_matches_the_formula():
    tx = scale_by_factored_rms(min_dim_size_to_factor=MIN_DIM)
    first = run_transform(tx, PARAMS, GRADS[:50])
    state = gc.set_hyperparams(first.state, decay_rate=0.5, epsilon=1e-4)
    second = run_transform(tx, PARAMS, GRADS[50:], state=state)
    runs = leafwise(
        ref_factored_rms,
        GRADS,
        _switch(stored(0.8), stored(0.5), 50),
        _switch(stored(1e-30), stored(1e-4), 50),
        min_dim=MIN_DIM,
    )
    assert_trajectory_close(list(first) + list(second), ref_updates(runs, GRADS[0]), RTOL_F32)
    assert_state_close(second.state, runs, RTOL_F32)


# ---------------------------------------------------------------------------------------------------
# jit: one trace, one compilation, across steps and hyperparameter changes; sharding; eval_shape


def _loss(params: Any, batch: jax.Array) -> jax.Array:
    return sum(jnp.sum(jnp.sin(p.astype(jnp.float32) * batch)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize(
    ("make", "changes"),
    [
        (
            lambda: adafactor(_relative_step, min_dim_size_to_factor=MIN_DIM, momentum=0.9, weight_decay_rate=1e-3),
            [{"decay_rate": 0.5}, {"epsilon": 1e-3, "threshold": 2.0, "min_scale": 0.0, "decay": 0.0}],
        ),
    ],
    ids=["adafactor"],
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
        lambda: adafactor(_relative_step, min_dim_size_to_factor=MIN_DIM, momentum=0.9, weight_decay_rate=1e-3),
    ],
    ids=["adafactor"],
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


# "w" is (8, 6): its column axis is 0 (the larger), its row axis 1. v_row drops axis 0 and keeps the
# sharding of axis 1; v_col drops axis 1 and keeps that of axis 0.
@pytest.mark.parametrize(
    ("w_spec", "row_spec", "col_spec"),
    [
        (PartitionSpec("d"), PartitionSpec(), PartitionSpec("d")),
        (PartitionSpec(None, "d"), PartitionSpec("d"), PartitionSpec()),
    ],
    ids=["rows_sharded", "columns_sharded"],
)
def test_sharded_params_shard_the_factored_statistics_and_never_recompile(w_spec, row_spec, col_spec):
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))
    params = {
        "w": jax.device_put(jnp.ones((8, 6)), NamedSharding(mesh, w_spec)),
        "b": jax.device_put(jnp.ones(6), NamedSharding(mesh, PartitionSpec())),
    }
    tx = adafactor(0.01, min_dim_size_to_factor=MIN_DIM, momentum=0.9, pack=False)
    state = tx.init(params)
    v_row, v_col = state[0].v_row["w"], state[0].v_col["w"]
    assert (v_row.shape, v_row.sharding.spec, v_col.shape, v_col.sharding.spec) == ((6,), row_spec, (8,), col_spec)
    step = _sharded_train_step(tx)
    for k in range(3):
        params, state = step(params, state, jnp.full((3, 8), 0.1 * (k + 1)))
    assert params["w"].sharding.is_equivalent_to(NamedSharding(mesh, w_spec), 2)
    assert state[0].v_col["w"].sharding.spec == col_spec and state[4].ema["w"].sharding.spec == w_spec
    assert step._cache_size() == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: scale_by_factored_rms(min_dim_size_to_factor=MIN_DIM, nu_dtype=jnp.float32),
        lambda: adafactor(min_dim_size_to_factor=MIN_DIM, momentum=0.9),
    ],
    ids=["factored", "adafactor"],
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


def test_factored_bfloat16_params_with_float32_statistics():
    grads = make_grads(jnp.bfloat16)
    params = jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16), PARAMS)
    traj = run_transform(scale_by_factored_rms(min_dim_size_to_factor=MIN_DIM, nu_dtype=jnp.float32), params, grads)
    for field in ("v_row", "v_col", "v"):
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(getattr(traj.state, field)))
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(traj[-1]))
    runs = leafwise(ref_factored_rms, grads, stored(0.8), stored(1e-30), min_dim=MIN_DIM)
    assert_state_close(traj.state, runs, RTOL_F32)  # the statistics: float32 accuracy
    assert_trajectory_close(traj, ref_updates(runs, grads[0]), 2**-8)  # the update: one bfloat16 rounding


def test_adafactor_bfloat16_params_keep_a_float32_momentum():
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), PARAMS)
    tx = adafactor(0.01, min_dim_size_to_factor=MIN_DIM, momentum=0.9, pack=False)
    grads = jax.tree.map(jnp.asarray, make_grads(jnp.bfloat16)[1])
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[4].ema))  # dtype_momentum, as optax
    assert state[0].v_row["mat"].dtype == jnp.bfloat16  # the statistics keep the param dtype, as optax
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
