"""Layer-wise and memory-light optimizers: the ingredients of gradchain/transforms/layerwise.py
(`scale_by_trust_ratio`, `centralize`, `scale_by_param_block_norm`, `adaptive_grad_clip`,
`scale_by_sm3`, `scale_by_fromage_step`) and the recipes of gradchain/optimizers/layerwise.py
(`lars`, `lamb`, `fromage`, `sm3`).

Every ingredient runs for 200 steps over a tree of five leaves (a scalar, a vector, a matrix, a 3-d
and a 4-d array, magnitudes from 1e-2 to 10) on fixed pseudo-random gradients, and for the
ingredients that read the params, on a fixed pseudo-random sequence of params too (nothing depends
on the outputs, so rounding is never amplified). Each is compared step by step, leaf by leaf, with

(a) a float64 numpy transcription of the paper's formula (tests/references/; You et al. 2017 Algorithm 1,
    You et al. 2020 Algorithm 2, Bernstein et al. 2020 Algorithm 1, Anil et al. 2019 SM3-II written
    with explicit loops over the cover sets, Brock et al. 2021 eq. 3, Yong et al. 2020 eq. 4);
(b) optax 0.2.8 with the same arguments.

The optimizers are compared the same way on their param trajectories (200 steps, gradients
independent of the params). Then: convergence on Rosenbrock and an ill-conditioned quadratic,
masks, bad hyperparameters, complex and bfloat16 leaves, hyperparameters in the state, and the
state's size per parameter.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from reference import (
    assert_stacked_close,
    assert_trajectory_close,
    grad_sequence,
    l2_norm,
    scan_trajectories,
    stored,
)
from references.clipping import ref_agc
from references.normalization import ref_block_norm, ref_centralize
from references.sm3 import ref_sm3, ref_sm3_params
from references.trust_ratio import ref_fromage, ref_lamb, ref_lars, ref_trust_ratio

import gradchain as gc
from gradchain import (
    adaptive_grad_clip,
    centralize,
    fromage,
    lamb,
    lars,
    scale_by_fromage_step,
    scale_by_param_block_norm,
    scale_by_sm3,
    scale_by_trust_ratio,
    sm3,
)

STEPS = 200
SHAPES: dict[str, tuple[int, ...]] = {"s": (), "v": (5,), "m": (4, 6), "h": (3, 2, 4), "k": (2, 2, 3, 4)}
GRAD_SCALES = {"s": 1.0, "v": 1e-2, "m": 3.0, "h": 0.1, "k": 1.0}
PARAM_SCALES = {"s": 2.0, "v": 1.0, "m": 0.5, "h": 10.0, "k": 0.05}
# float32 single-step ingredients: a few roundings of the output, relative to the leaf's size.
RTOL = 1e-6
# float32 param trajectories over 200 steps: p + u rounds to 2^-24 |p| at every step, a random walk
# that stays below ~2e-6 of the leaf's largest |p| (measured: at most 1.3e-6, see the report).
RTOL_TRAJ = 3e-6


@functools.cache
def grads_list(seed: int = 0, dtype: Any = np.float32) -> list[dict]:
    return grad_sequence(SHAPES, STEPS, seed, dtype, leaf_scales=GRAD_SCALES)


@functools.cache
def params_list(seed: int = 1, dtype: Any = np.float32) -> list[dict]:
    return grad_sequence(SHAPES, STEPS, seed, dtype, leaf_scales=PARAM_SCALES)


def stack(trees: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *trees)


def unstack(tree: Any, n: int) -> list[Any]:
    tree = jax.device_get(tree)
    return [jax.tree.map(lambda x, k=k: np.asarray(x[k]), tree) for k in range(n)]


def run_many(txs: list[Any], grads: list[dict], params: list[dict]) -> list[list[dict]]:
    """The updates of each of `txs` at every step, step k seeing grads[k] and params[k].

    All transformations run in one jitted scan (one compilation for a whole table of cases).
    """

    def step(states, gp):
        g, p = gp
        out = [tx.update(g, s, p) for tx, s in zip(txs, states, strict=True)]
        return [s for _, s in out], [u for u, _ in out]

    @jax.jit
    def go(gs, ps):
        p0 = jax.tree.map(lambda x: x[0], ps)
        return jax.lax.scan(step, [tx.init(p0) for tx in txs], (gs, ps))[1]

    return [unstack(u, len(grads)) for u in go(stack(grads), stack(params))]


def run_pairs(tx: Any, grads: list[dict], params: list[dict]) -> list[dict]:
    return run_many([tx], grads, params)[0]


class WithoutScalar(NamedTuple):
    """An optax transformation applied to the tree without its scalar leaf "s" (optax's SM3 fails on
    scalars), returning zeros there."""

    inner: Any

    def init(self, params):
        return self.inner.init(_drop_s(params))

    def update(self, updates, state, params=None):
        u, state = self.inner.update(_drop_s(updates), state, None if params is None else _drop_s(params))
        return {**u, "s": jnp.zeros_like(updates["s"])}, state


def _drop_s(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "s"}


def run_optimizers(txs: list[Any], p0: dict, grads: list[dict]) -> list[dict]:
    """Param trajectories (leading step axis) of several optimizers from p0, in one jitted scan."""
    runs = scan_trajectories(txs, jax.tree.map(jnp.asarray, p0), stack(grads))
    return jax.device_get([trajectory for trajectory, _ in runs])


def wide(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def per_leaf(fn: Callable, *trees: dict) -> dict:
    return {k: fn(*(wide(t[k]) for t in trees)) for k in trees[0]}


# ---------------------------------------------------------------------------------------------
# Running the float64 numpy transcriptions of the papers (tests/references/trust_ratio.py,
# normalization.py, clipping.py, sm3.py) leaf by leaf.


def leaf_runs(ref: Callable, p0: dict, grads: list[dict], **per_leaf_kwargs: Any) -> Callable:
    """A function running `ref` on every leaf; kwargs given as dicts are taken per leaf."""
    out = {}
    for key in p0:
        kw = {k: (v[key] if isinstance(v, dict) else v) for k, v in per_leaf_kwargs.items()}
        out[key] = np.stack(ref(wide(p0[key]), [wide(g[key]) for g in grads], **kw))
    return out


# ---------------------------------------------------------------------------------------------
# ingredients against numpy and optax


@dataclasses.dataclass(frozen=True)
class Ingredient:
    id: str
    ours: Callable[[], Any]
    theirs: Callable[[], Any]
    ref: Callable[[np.ndarray, np.ndarray], np.ndarray]


INGREDIENTS = [
    Ingredient("trust_default", scale_by_trust_ratio, optax.scale_by_trust_ratio, ref_trust_ratio),
    Ingredient(
        "trust_all",
        lambda: scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.02, eps=0.3),
        lambda: optax.scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.02, eps=0.3),
        lambda g, p: ref_trust_ratio(g, p, 0.5, stored(0.02), stored(0.3)),
    ),
    Ingredient("centralize", centralize, optax.centralize, lambda g, p: ref_centralize(g)),
    Ingredient("block_norm", scale_by_param_block_norm, optax.scale_by_param_block_norm, ref_block_norm),
    Ingredient(
        "block_norm_floor",
        lambda: scale_by_param_block_norm(5.0),
        lambda: optax.scale_by_param_block_norm(5.0),
        lambda g, p: ref_block_norm(g, p, 5.0),
    ),
    Ingredient(
        "agc",
        lambda: adaptive_grad_clip(0.5),
        lambda: optax.adaptive_grad_clip(0.5),
        lambda g, p: ref_agc(g, p, 0.5, stored(1e-3)),
    ),
    Ingredient(
        "agc_eps",
        lambda: adaptive_grad_clip(2.0, eps=1.0),
        lambda: optax.adaptive_grad_clip(2.0, eps=1.0),
        lambda g, p: ref_agc(g, p, 2.0, 1.0),
    ),
]


@functools.cache
def ingredient_runs() -> dict[str, tuple[list, list]]:
    txs = [c.ours() for c in INGREDIENTS] + [c.theirs() for c in INGREDIENTS]
    runs = run_many(txs, grads_list(), params_list())
    return {c.id: (runs[i], runs[len(INGREDIENTS) + i]) for i, c in enumerate(INGREDIENTS)}


@pytest.mark.parametrize("case", INGREDIENTS, ids=lambda c: c.id)
def test_ingredient_matches_numpy_reference(case: Ingredient):
    ours, _ = ingredient_runs()[case.id]
    expected = [per_leaf(case.ref, g, p) for g, p in zip(grads_list(), params_list(), strict=True)]
    assert_trajectory_close(ours, expected, RTOL, per_step=True)


@pytest.mark.parametrize("case", INGREDIENTS, ids=lambda c: c.id)
def test_ingredient_matches_optax(case: Ingredient):
    ours, theirs = ingredient_runs()[case.id]
    assert_trajectory_close(ours, theirs, RTOL, per_step=True)


@pytest.mark.parametrize(("clipping", "eps"), [(0.5, 1e-3), (2.0, 1.0)])
def test_agc_cases_clip_some_units_and_keep_others(clipping, eps):
    counts = {True: 0, False: 0}
    for g, p in zip(grads_list()[:20], params_list()[:20], strict=True):
        for key in SHAPES:
            ref_agc(wide(g[key]), wide(p[key]), clipping, eps, counts)
    assert counts[True] > 0 and counts[False] > 0, counts


def test_agc_uses_the_units_of_each_rank():
    # One unit clipped, the other not, for each layout: the unit axes are the right ones.
    tx = adaptive_grad_clip(1.0, eps=0.0)
    params = {"dense": jnp.ones((2, 2)), "conv": jnp.ones((1, 1, 2, 2)), "vec": jnp.ones((1, 2))}
    g = {"dense": jnp.array([[3.0, 0.1], [4.0, 0.1]]), "conv": jnp.array([[[[3.0, 0.1], [4.0, 0.1]]]])}
    g["vec"] = jnp.array([[3.0, 4.0]])
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["dense"][:, 0], np.array([3.0, 4.0]) * np.sqrt(2) / 5, rtol=1e-6)
    np.testing.assert_allclose(u["dense"][:, 1], 0.1, rtol=1e-6)
    np.testing.assert_allclose(u["conv"][0, 0], u["dense"], rtol=1e-6)
    np.testing.assert_allclose(u["vec"], np.array([[3.0, 4.0]]) * np.sqrt(2) / 5, rtol=1e-6)  # one unit
    # An explicit axis overrides the rules, for every leaf.
    tx = adaptive_grad_clip(1.0, eps=0.0, axis=1)
    u, _ = tx.update({"w": g["dense"]}, tx.init(params), {"w": params["dense"]})
    np.testing.assert_allclose(u["w"][0], np.array([3.0, 0.1]) * np.sqrt(2) / l2_norm(np.array([3.0, 0.1])), rtol=1e-6)
    ref, _ = optax.adaptive_grad_clip(1.0, eps=0.0, axis=1).update({"w": g["dense"]}, None, {"w": params["dense"]})
    np.testing.assert_allclose(u["w"], ref["w"], rtol=1e-6)


@functools.cache
def sm3_runs() -> dict[str, tuple]:
    cases = {"default": {}, "decay": {"b1": 0.5, "b2": 0.9, "eps": 1e-3}, "no_momentum": {"b1": 0.0, "eps": 0.0}}
    gs = grads_list()
    # Exact zeros in some steps: an entry whose accumulator is still 0 gives 0 (not 0/0).
    gs = [{k: (v * 0 if (k == "m" and n < 3) else v) for k, v in g.items()} for n, g in enumerate(gs)]
    txs = [scale_by_sm3(**kw) for kw in cases.values()] + [
        WithoutScalar(optax.scale_by_sm3(**kw)) for kw in cases.values()
    ]
    runs = run_many(txs, gs, params_list())
    return {name: (kw, gs, runs[i], runs[len(cases) + i]) for i, (name, kw) in enumerate(cases.items())}


@pytest.mark.parametrize("name", ["default", "decay", "no_momentum"])
def test_sm3_matches_paper_transcription(name):
    kw, gs, ours, _ = sm3_runs()[name]
    kw = {k: stored(v) for k, v in kw.items()}
    expected = {key: ref_sm3([wide(g[key]) for g in gs], **kw) for key in SHAPES}
    expected = [{key: expected[key][k] for key in SHAPES} for k in range(STEPS)]
    # Whole-run scale: the momentum is a running average (see reference.assert_leaf_close).
    assert_trajectory_close(ours, expected, RTOL)
    assert np.all(ours[0]["m"] == 0)  # zero accumulators: zero updates, not NaN


@pytest.mark.parametrize("name", ["default", "decay", "no_momentum"])
def test_sm3_matches_optax(name):
    _, _, ours, theirs = sm3_runs()[name]
    assert_trajectory_close([_drop_s(u) for u in ours], [_drop_s(u) for u in theirs], RTOL)


def test_sm3_scalar_leaf_works_where_optax_raises():
    params = {"s": jnp.zeros(())}
    with pytest.raises(IndexError):
        tx = optax.scale_by_sm3()
        tx.update({"s": jnp.ones(())}, tx.init(params))
    tx = scale_by_sm3(b1=0.0, eps=0.0)
    state = tx.init(params)
    assert state.mu["s"][0].shape == ()
    u, state = tx.update({"s": jnp.array(2.0)}, state)
    u, state = tx.update({"s": jnp.array(1.0)}, state)
    np.testing.assert_allclose(u["s"], 1.0 / np.sqrt(5.0), rtol=1e-6)  # AdaGrad: 1 / sqrt(4 + 1)


def test_sm3_state_is_sublinear_and_fields_are_named():
    state = scale_by_sm3().init({"w": jnp.zeros((64, 32, 3)), "b": jnp.zeros(5)})
    assert [m.shape for m in state.mu["w"]] == [(64,), (32,), (3,)]
    assert [m.shape for m in state.mu["b"]] == [(5,)]
    assert state.nu["w"].shape == (64, 32, 3)
    abstract = jax.eval_shape(scale_by_sm3().init, {"w": jax.ShapeDtypeStruct((4, 6), jnp.bfloat16)})
    assert [(m.shape, m.dtype) for m in abstract.mu["w"]] == [((4,), jnp.bfloat16), ((6,), jnp.bfloat16)]


def test_sm3_state_is_sharded_like_the_params_axes():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
    p = jax.device_put(jnp.zeros((4, 6)), NamedSharding(mesh, PartitionSpec("a", "b")))
    state = scale_by_sm3().init({"w": p})
    assert state.mu["w"][0].sharding.spec == PartitionSpec("a")
    assert state.mu["w"][1].sharding.spec == PartitionSpec("b")
    step = jax.jit(scale_by_sm3().update)
    _, state2 = step({"w": p + 1.0}, state)
    assert state2.mu["w"][0].sharding.is_equivalent_to(state.mu["w"][0].sharding, 1)


def test_fromage_step_matches_its_formula_and_optax_pieces():
    lr = 0.3
    p, g = params_list()[0], grads_list()[0]
    u, _ = scale_by_fromage_step(lr).update(g, scale_by_fromage_step(lr).init(p), p)
    mult = 1 / np.sqrt(1 + stored(lr) ** 2)
    for key in SHAPES:
        expected = (wide(p[key]) - stored(lr) * wide(g[key])) * mult - wide(p[key])
        np.testing.assert_allclose(u[key], expected, rtol=2e-6, atol=1e-6 * np.abs(wide(p[key])).max())


# ---------------------------------------------------------------------------------------------
# complex and low-precision leaves


def test_complex_gradients_and_params():
    shapes = {"v": (5,), "m": (3, 4)}
    gs = grad_sequence(shapes, 30, 3, np.complex64)
    ps = grad_sequence(shapes, 30, 4, np.complex64)
    cases = [
        (scale_by_trust_ratio(trust_coefficient=0.5), lambda g, p: ref_trust_ratio(g, p, 0.0, 0.5)),
        (centralize(), lambda g, p: ref_centralize(g)),
        (scale_by_param_block_norm(), ref_block_norm),
        (adaptive_grad_clip(0.7), lambda g, p: ref_agc(g, p, stored(0.7), stored(1e-3))),
    ]
    for tx, ref in cases:
        ours = run_pairs(tx, gs, ps)
        assert ours[0]["m"].dtype == np.complex64
        expected = [{k: ref(wide(g[k]), wide(p[k])) for k in shapes} for g, p in zip(gs, ps, strict=True)]
        assert_trajectory_close(ours, expected, RTOL, per_step=True)
    ours = run_pairs(scale_by_sm3(), gs, ps)
    expected = {k: ref_sm3([wide(g[k]) for g in gs]) for k in shapes}
    assert_trajectory_close(ours, [{k: expected[k][n] for k in shapes} for n in range(30)], RTOL)
    assert scale_by_sm3().init(ps[0]).mu["m"][0].dtype == np.float32  # real accumulators


LOW_PRECISION = [
    ("trust", scale_by_trust_ratio, ref_trust_ratio),
    ("centralize", centralize, lambda g, p: ref_centralize(g)),
    ("block_norm", scale_by_param_block_norm, ref_block_norm),
    ("agc", lambda: adaptive_grad_clip(0.5), lambda g, p: ref_agc(g, p, 0.5, stored(1e-3))),
]


@pytest.mark.parametrize(("name", "make", "ref"), LOW_PRECISION, ids=[c[0] for c in LOW_PRECISION])
def test_bfloat16_leaves_round_once_from_float32_arithmetic(name, make, ref):
    gs = grad_sequence(SHAPES, 20, 5, jnp.bfloat16, leaf_scales=GRAD_SCALES)
    ps = grad_sequence(SHAPES, 20, 6, jnp.bfloat16, leaf_scales=PARAM_SCALES)
    ours = run_pairs(make(), gs, ps)
    assert ours[0]["m"].dtype == jnp.bfloat16
    expected = [per_leaf(ref, g, p) for g, p in zip(gs, ps, strict=True)]
    # One rounding to bfloat16 (8 significant bits): 2^-9 of the value, at most 2^-8 of the leaf's max.
    assert_trajectory_close(ours, expected, 2**-8, per_step=True)


# ---------------------------------------------------------------------------------------------
# optimizers against numpy and optax


def _matrices(p: Any) -> Any:
    return jax.tree.map(lambda x: x.ndim > 1, p)


MASK_TREE = {"s": False, "v": False, "m": True, "h": True, "k": False}


def lr_schedule(count):
    return 2.0 / (1.0 + count / 50.0)


def lr_schedule_ref(k):
    return stored(2.0 / (1.0 + k / 50.0))


@dataclasses.dataclass(frozen=True)
class Opt:
    id: str
    ours: Callable[[], Any]
    theirs: Callable[[], Any]
    ref: Callable[[dict, list[dict]], dict]  # (p0, grads) -> {leaf: stacked trajectory}
    no_scalar: bool = False  # optax's SM3 fails on scalar leaves


OPTS = [
    Opt("lars_default", lambda: lars(1.0), lambda: optax.lars(1.0), lambda p, g: leaf_runs(ref_lars, p, g, lr=1.0)),
    Opt(
        "lars_wd_nesterov",
        lambda: lars(3.0, weight_decay=0.01, trust_coefficient=0.02, eps=0.1, momentum=0.8, nesterov=True),
        lambda: optax.lars(3.0, weight_decay=0.01, trust_coefficient=0.02, eps=0.1, momentum=0.8, nesterov=True),
        lambda p, g: leaf_runs(
            ref_lars,
            p,
            g,
            lr=3.0,
            wd=stored(0.01),
            c=stored(0.02),
            eps=stored(0.1),
            momentum=stored(0.8),
            nesterov=True,
        ),
    ),
    Opt(
        "lars_masks",
        lambda: lars(2.0, weight_decay=0.05, weight_decay_mask=_matrices, trust_ratio_mask=MASK_TREE),
        lambda: optax.lars(2.0, weight_decay=0.05, weight_decay_mask=_matrices, trust_ratio_mask=MASK_TREE),
        lambda p, g: leaf_runs(
            ref_lars,
            p,
            g,
            lr=2.0,
            wd=stored(0.05),
            decay={k: len(SHAPES[k]) > 1 for k in SHAPES},
            trust=MASK_TREE,
        ),
    ),
    Opt(
        "lars_schedule",
        lambda: lars(lr_schedule, momentum=0.5),
        lambda: optax.lars(lr_schedule, momentum=0.5),
        lambda p, g: leaf_runs(ref_lars, p, g, lr=lr_schedule_ref, momentum=0.5),
    ),
    Opt("lamb_default", lambda: lamb(0.01), lambda: optax.lamb(0.01), lambda p, g: leaf_runs(ref_lamb, p, g, lr=0.01)),
    Opt(
        "lamb_wd_mask",
        lambda: lamb(0.02, b1=0.8, b2=0.99, eps=1e-4, eps_root=1e-8, weight_decay=0.1, mask=_matrices),
        lambda: optax.lamb(0.02, b1=0.8, b2=0.99, eps=1e-4, eps_root=1e-8, weight_decay=0.1, mask=_matrices),
        lambda p, g: leaf_runs(
            ref_lamb,
            p,
            g,
            lr=stored(0.02),
            b1=stored(0.8),
            b2=stored(0.99),
            eps=stored(1e-4),
            eps_root=stored(1e-8),
            wd=stored(0.1),
            decay={k: len(SHAPES[k]) > 1 for k in SHAPES},
        ),
    ),
    Opt(
        "fromage",
        lambda: fromage(0.01),
        lambda: optax.fromage(0.01),
        lambda p, g: leaf_runs(ref_fromage, p, g, lr=stored(0.01)),
    ),
    Opt(
        "fromage_schedule_floor",
        lambda: fromage(lambda c: 0.1 / (1.0 + c / 50.0), min_norm=0.5),
        lambda: optax.fromage(lambda c: 0.1 / (1.0 + c / 50.0), min_norm=0.5),
        lambda p, g: leaf_runs(ref_fromage, p, g, lr=lambda k: stored(0.1 / (1.0 + k / 50.0)), min_norm=0.5),
    ),
    Opt(
        "sm3",
        lambda: sm3(0.05),
        lambda: optax.sm3(0.05),
        lambda p, g: leaf_runs(ref_sm3_params, p, g, lr=stored(0.05)),
        no_scalar=True,
    ),
    Opt(
        "sm3_momentum",
        lambda: sm3(0.1, momentum=0.5),
        lambda: optax.sm3(0.1, momentum=0.5),
        lambda p, g: leaf_runs(ref_sm3_params, p, g, lr=stored(0.1), momentum=0.5),
        no_scalar=True,
    ),
]


def opt_data(no_scalar: bool = False) -> tuple[dict, list[dict]]:
    p0, gs = params_list(7)[0], grads_list(8)
    if no_scalar:
        p0 = {k: v for k, v in p0.items() if k != "s"}
        gs = [{k: v for k, v in g.items() if k != "s"} for g in gs]
    return p0, gs


@functools.cache
def optimizer_runs() -> dict[str, tuple[Any, Any]]:
    out = {}
    for no_scalar in (False, True):
        cases = [c for c in OPTS if c.no_scalar == no_scalar]
        p0, gs = opt_data(no_scalar)
        trajectories = run_optimizers([c.ours() for c in cases] + [c.theirs() for c in cases], p0, gs)
        for i, c in enumerate(cases):
            out[c.id] = (trajectories[i], trajectories[len(cases) + i])
    return out


@pytest.mark.parametrize("case", OPTS, ids=lambda c: c.id)
def test_optimizer_matches_numpy_reference(case: Opt):
    p0, gs = opt_data(case.no_scalar)
    ours, _ = optimizer_runs()[case.id]
    assert_stacked_close(ours, case.ref(p0, gs), RTOL_TRAJ)


@pytest.mark.parametrize("case", OPTS, ids=lambda c: c.id)
def test_optimizer_matches_optax(case: Opt):
    ours, theirs = optimizer_runs()[case.id]
    assert_stacked_close(ours, theirs, RTOL_TRAJ)


def test_optimizer_comparison_detects_a_convention_change():
    # The paper's LARS denominator |g| + wd |p| instead of |g + wd p|: a real difference the
    # comparison must see (the test above would pass with any tolerance otherwise).
    p0, gs = opt_data()
    ours, _ = optimizer_runs()["lars_wd_nesterov"]
    kw = {"lr": 3.0, "wd": stored(0.01), "c": stored(0.02), "eps": stored(0.1), "momentum": stored(0.8)}
    wrong = leaf_runs(ref_lars, p0, gs, nesterov=True, paper=True, **kw)
    with pytest.raises(AssertionError):
        assert_stacked_close(ours, wrong, RTOL_TRAJ)


PACKABLE = [
    ("lars", lambda pack: lars(0.5, pack=pack)),
    ("lamb", lambda pack: lamb(0.01, pack=pack)),
    ("fromage", lambda pack: fromage(0.01, pack=pack)),
    ("sm3", lambda pack: sm3(0.1, pack=pack)),
]


@pytest.mark.parametrize(("name", "make"), PACKABLE, ids=[c[0] for c in PACKABLE])
def test_packed_and_unpacked_chains_agree(name, make):
    # Packing is an execution detail: the chain unpacks around the per-leaf ingredients.
    p0, gs = opt_data()
    default, packed, unpacked = run_optimizers([make(None), make(True), make(False)], p0, gs[:50])
    assert_stacked_close(packed, unpacked, 1e-7)
    assert_stacked_close(default, unpacked, 1e-7)


# ---------------------------------------------------------------------------------------------
# convergence


def rosenbrock(p):
    x, y = p["xy"][0], p["xy"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def quadratic(p):
    # Condition number 1e3 across the coordinates of one leaf, and another leaf 100x steeper.
    d = jnp.logspace(0, 3, 8)
    return 0.5 * jnp.sum(d * (p["w"] - 1.0) ** 2) + 50.0 * jnp.sum((p["b"] + 0.5) ** 2)


# Learning rates tuned once (the trust-ratio methods take steps of relative size lr, so they need a
# decaying rate to settle); each reaches at least 1e5 below its start: 1e4 leaves a margin.
CONVERGENCE = [
    # (id, optimizer, problem, steps, factor the loss must drop by)
    ("lars_rosenbrock", lambda: lars(optax.cosine_decay_schedule(3.0, 2000)), "rosenbrock", 2000, 1e4),
    ("lamb_rosenbrock", lambda: lamb(optax.cosine_decay_schedule(0.03, 2000)), "rosenbrock", 2000, 1e4),
    ("fromage_rosenbrock", lambda: fromage(optax.cosine_decay_schedule(0.3, 2000)), "rosenbrock", 2000, 1e4),
    ("sm3_rosenbrock", lambda: sm3(2.0), "rosenbrock", 2000, 1e4),
    ("lars_quadratic", lambda: lars(optax.cosine_decay_schedule(10.0, 500)), "quadratic", 500, 1e4),
    ("lamb_quadratic", lambda: lamb(optax.cosine_decay_schedule(0.3, 500)), "quadratic", 500, 1e4),
    ("fromage_quadratic", lambda: fromage(optax.cosine_decay_schedule(0.3, 500)), "quadratic", 500, 1e4),
    ("sm3_quadratic", lambda: sm3(0.3), "quadratic", 500, 1e4),
]


@functools.cache
def convergence_losses() -> dict[str, tuple[float, float]]:
    starts = {"rosenbrock": {"xy": jnp.array([-1.2, 1.0])}, "quadratic": {"w": -jnp.ones(8), "b": jnp.ones(3)}}
    losses = {"rosenbrock": rosenbrock, "quadratic": quadratic}
    out = {}
    for problem in losses:
        cases = [c for c in CONVERGENCE if c[2] == problem]
        steps = cases[0][3]
        txs = [c[1]() for c in cases]
        loss = losses[problem]

        def body(carry, _, txs=txs, loss=loss):
            new = []
            for tx, (p, s) in zip(txs, carry, strict=True):
                u, s = tx.update(jax.grad(loss)(p), s, p)
                new.append((gc.apply_updates(p, u), s))
            return new, None

        p0 = starts[problem]
        final = jax.jit(lambda p: jax.lax.scan(body, [(p, tx.init(p)) for tx in txs], None, length=steps)[0])(p0)
        for c, (p, _) in zip(cases, final, strict=True):
            out[c[0]] = (float(loss(p0)), float(loss(p)))
    return out


@pytest.mark.slow  # long convergence runs; the step-by-step comparisons above are the fast check
@pytest.mark.parametrize("case", CONVERGENCE, ids=lambda c: c[0])
def test_convergence(case):
    start, end = convergence_losses()[case[0]]
    assert np.isfinite(end) and end <= start / case[4], (start, end)


# ---------------------------------------------------------------------------------------------
# bad arguments, missing params, wrong trees


BAD = [
    (lambda: scale_by_trust_ratio(min_norm=-1.0), ValueError, "min_norm"),
    (lambda: scale_by_trust_ratio(trust_coefficient=float("nan")), ValueError, "trust_coefficient"),
    (lambda: scale_by_trust_ratio(eps=-1e-3), ValueError, "scale_by_trust_ratio: eps"),
    (lambda: scale_by_trust_ratio(eps=lambda c: 0.1), TypeError, "eps"),
    (lambda: scale_by_param_block_norm(-1.0), ValueError, "min_scale"),
    (lambda: adaptive_grad_clip(-0.1), ValueError, "clipping"),
    (lambda: adaptive_grad_clip(0.1, eps=-1.0), ValueError, "adaptive_grad_clip: eps"),
    (lambda: adaptive_grad_clip(0.1, axis="0"), TypeError, "axis"),
    (lambda: adaptive_grad_clip(0.1, axis=(0, 1.5)), TypeError, "axis"),
    (lambda: scale_by_sm3(b1=1.0), ValueError, "b1"),
    (lambda: scale_by_sm3(b2=1.5), ValueError, "b2"),
    (lambda: scale_by_sm3(eps=-1.0), ValueError, "scale_by_sm3: eps"),
    (lambda: scale_by_fromage_step(-0.1), ValueError, "learning_rate"),
    (lambda: lars(-1.0), ValueError, "learning_rate"),
    (lambda: lars(0.1, momentum=1.0), ValueError, "lars: momentum"),
    (lambda: lars(0.1, trust_coefficient=-1.0), ValueError, "lars: trust_coefficient"),
    (lambda: lars(0.1, eps=-1.0), ValueError, "lars: eps"),
    (lambda: lars(0.1, weight_decay=-1.0), ValueError, "lars: weight_decay"),
    (lambda: lars(0.1, momentum=None, nesterov=True), ValueError, "nesterov"),
    (lambda: lamb(0.1, b1=1.5), ValueError, "b1"),
    (lambda: lamb(0.1, eps=-1.0), ValueError, "eps"),
    (lambda: lamb(0.1, weight_decay=-1.0), ValueError, "lamb: weight_decay"),
    (lambda: fromage(-0.01), ValueError, "learning_rate"),
    (lambda: fromage(0.01, min_norm=-1.0), ValueError, "min_norm"),
    (lambda: sm3(0.1, momentum=1.0), ValueError, "sm3: momentum"),
    (lambda: sm3(float("inf")), ValueError, "learning_rate"),
]


@pytest.mark.parametrize(("make", "error", "match"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_hyperparameters_are_named(make, error, match):
    with pytest.raises(error, match=re.escape(match)):
        make()


NEEDS_PARAMS = [
    ("scale_by_trust_ratio", scale_by_trust_ratio),
    ("scale_by_param_block_norm", scale_by_param_block_norm),
    ("adaptive_grad_clip", lambda: adaptive_grad_clip(0.1)),
    ("scale_by_fromage_step", lambda: scale_by_fromage_step(0.1)),
]


@pytest.mark.parametrize(("name", "make"), NEEDS_PARAMS, ids=[n for n, _ in NEEDS_PARAMS])
def test_missing_params_and_mismatched_trees_are_named(name, make):
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(ValueError, match=f"{name} needs the params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match=r"leaf b\b"):
        tx.update({"w": jnp.ones((2, 3)), "b": jnp.ones(4)}, state, params)


@pytest.mark.parametrize(
    "make", [scale_by_trust_ratio, centralize, scale_by_param_block_norm, lambda: adaptive_grad_clip(0.1), scale_by_sm3]
)
def test_integer_leaves_are_named(make):
    params = {"w": jnp.ones((2, 3)), "step": jnp.ones(3)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"leaf step\b"):
        tx.update({"w": jnp.ones((2, 3)), "step": jnp.ones(3, jnp.int32)}, state, params)


def test_agc_names_a_leaf_without_unit_axes():
    params = {"deep": jnp.ones((2,) * 6)}
    tx = adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match=re.escape("leaf deep has shape (2, 2, 2, 2, 2, 2)") + ".*axis"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match=re.escape("leaf v has shape (3,), which has no axis 2")):
        tx = adaptive_grad_clip(0.1, axis=2)
        tx.update({"v": jnp.ones(3)}, tx.init(None), {"v": jnp.ones(3)})
    tx = adaptive_grad_clip(0.1, axis=(0, 5))  # any axes, any rank
    u, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_allclose(u["deep"], 0.1, rtol=1e-6)  # |g| = |p| per unit: clipped to 0.1 g


def test_sm3_rejects_updates_of_another_shape():
    tx = scale_by_sm3()
    state = tx.init({"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"leaf w\b"):
        tx.update({"w": jnp.ones((3, 2))}, state)


# ---------------------------------------------------------------------------------------------
# hyperparameters in the state; state size


def test_hyperparams_are_readable_and_settable_without_recompiling():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    g = {"w": jnp.full((3, 4), 0.5), "b": jnp.full(4, -0.2)}
    tx = fromage(0.01)
    state = tx.init(params)
    assert set(gc.hyperparams(state)) == {"min_norm", "trust_coefficient", "eps", "learning_rate"}
    step = jax.jit(tx.update)
    step(g, state, params)
    state2 = gc.set_hyperparams(state, learning_rate=0.2)
    u2, _ = step(g, state2, params)
    assert step._cache_size() == 1
    u_fresh, _ = fromage(0.2).update(g, fromage(0.2).init(params), params)
    np.testing.assert_allclose(u2["w"], u_fresh["w"], rtol=1e-6)
    state = lamb(1e-3).init(params)
    keys = set(gc.hyperparams(state))
    assert {"scale_by_adam/eps", "scale_by_trust_ratio/eps", "learning_rate", "weight_decay"} <= keys
    state = gc.set_hyperparams(state, {"scale_by_trust_ratio/eps": 0.5})
    assert gc.hyperparams(state)["scale_by_trust_ratio/eps"] == 0.5
    assert set(gc.hyperparams(sm3(0.1).init(params))) == {"b1", "b2", "eps", "learning_rate"}
    assert set(gc.hyperparams(scale_by_sm3().init(params))) == {"b1", "b2", "eps"}
    with pytest.raises(ValueError, match="b2"):
        gc.set_hyperparams(scale_by_sm3().init(params), b2=2.0)


def state_bytes_per_param(tx: Any, params: dict) -> float:
    state = tx.init(params)
    n = sum(x.size for x in jax.tree.leaves(params))
    # Scalars (counts, hyperparameters; a chain keeps them in its scalar block) are a fixed cost.
    block = getattr(state, "scalar_block", None)
    return sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim > 0 and x is not block) / n


BIG = {"w": jnp.zeros((1024, 1024), jnp.float32)}
STATE_BYTES = [
    ("lars", lambda: lars(0.1), 4.0),
    ("lars_no_momentum", lambda: lars(0.1, momentum=None), 0.0),
    ("lamb", lambda: lamb(0.1), 8.0),
    ("fromage", lambda: fromage(0.1), 0.0),
    ("sm3", lambda: sm3(0.1), 4.0 + 8.0 / 1024),  # momentum, plus 1024 + 1024 accumulators
    ("scale_by_trust_ratio", scale_by_trust_ratio, 0.0),
    ("adaptive_grad_clip", lambda: adaptive_grad_clip(0.1), 0.0),
    ("centralize", centralize, 0.0),
]


@pytest.mark.parametrize(("name", "make", "expected"), STATE_BYTES, ids=[s[0] for s in STATE_BYTES])
def test_state_bytes_per_float32_param(name, make, expected):
    assert state_bytes_per_param(make(), BIG) == pytest.approx(expected, abs=1e-9)
