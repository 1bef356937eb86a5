"""Independent references for gradchain's ingredients, and helpers to run and compare trajectories.

Test modules import this file as `from reference import ...` (pyproject's `pythonpath = ["tests"]` puts
`tests/` on `sys.path`, from every subfolder and under `pytest -n auto` too). The numpy transcriptions
of the update rules live in `tests/references/`, one file per family (`from references.adam import ...`).

Six groups of helpers:

- **Constants** shared by the ingredient tests (`tests/transforms/`): `N_STEPS` steps per
  trajectory, the tolerances `RTOL` (float32) and `RTOL64` (x64), `INT32_MAX` where step counts
  saturate; `RTOL32` for the 120-step param trajectories of the optimizer tests.
- **Inputs.** `grad_sequence(tree_shapes, n_steps, seed, dtype)` is a fixed pseudo-random sequence
  of gradient trees (numpy arrays), independent of the params, so that trajectories compare without
  chaotic amplification of rounding; `param_tree` makes a params tree of the same layout.
  `stored(x, dtype)` is a hyperparameter rounded as gradchain stores it (a float32 scalar unless x64
  is on): pass `stored(0.999)` to a reference so that both sides use the same $\\beta$.
  `standard_grads()` is the ingredient tests' sequence (`N_STEPS` trees of `TREE_SHAPES`, leaves
  scaled by `TREE_SCALES`); `Harmonic(eta0)` a schedule with exactly known float32 values;
  `optimizer_data(seed, steps)` the optimizer tests' params and stacked gradients (float64).
- **Running.** `run_transform(tx, params, grads_seq)` runs a transformation (jitted by default) and
  returns a `Trajectory`: the list of per-step update trees (numpy), with the final state and params
  as attributes; `cached_runs(cases, params, grads_seq)` caches one per case of a test table.
  `scan_trajectories(txs, params, grads)` runs several optimizers in one jitted scan and returns
  their param trajectories. `state_buffers(state)` lists the per-parameter buffers of a state
  (`mu`, `nu`, `trace`, ...).
- **References.** `tests/references/<family>.py`'s `ref_*` functions are float64 numpy transcriptions of
  the per-array formulas, as the papers (and gradchain's docstrings) state them. Each maps the list of
  gradients of ONE leaf (one array per step) to the list of updates (float64, or complex128 for complex input), except
  `ref_clip_by_global_norm`, which maps a list of gradient TREES to a list of update trees because the
  norm couples the leaves. The whole-optimizer references (`ref_<name>_optimizer`, `references/adam_family.py`,
  the `*_params` recipes) and `references/schedules.py` say what they return in their docstrings.
  `reference_tree(ref_fn, grads_seq, ...)` applies a per-leaf reference to every leaf of a tree
  sequence. Complex gradients use $|g|^2 = g \\bar g$ throughout. The references share `abs_sq`,
  `l2_norm`, `value_at` (a hyperparameter or schedule at a step), `with_l2` (coupled decay) and
  `RefRun` (per-step updates with the final state as `.state`).
- **Comparing.** `assert_trajectory_close(actual, expected, rtol)` compares leaf by leaf and step by
  step, measuring the error relative to the leaf's largest magnitude (over the trajectory, or at
  each step with `per_step=True`). `assert_stacked_close` does the same for stacked trajectories
  (leaves with a leading step axis, as `scan_trajectories` returns them); `assert_trees_close` and
  `assert_trees_equal` compare two single trees (relative to each leaf's magnitude, or bit for bit);
  `assert_hyperparams(state, expected)` the hyperparameters a state holds.
- **The layer-wise tree** (tests/transforms/test_trust_ratio.py, test_normalization.py,
  test_clipping.py's `adaptive_grad_clip` tests, test_sm3.py): `LAYER_SHAPES` (five leaves of ranks 0
  to 4), `layer_grads()` and `layer_params()` (`LAYER_STEPS` cached trees each); `run_many(txs, grads,
  params)` runs ingredients that read the params in one jitted scan, `ingredient_runs(cases)` a table
  of `Ingredient`s and their optax counterparts; `opt_data`, `optimizer_runs(cases)` and `leaf_runs`
  compare `Opt` param trajectories (to `RTOL_TRAJ`); `convergence_losses(cases)` runs optimizers on
  `rosenbrock` and `quadratic`; `state_bytes_per_param(tx, params)` measures a state's size.

The `ref_*` references never call gradchain; of the helpers, only `scan_trajectories` and
`convergence_losses` (which apply updates with `gc.apply_updates`, as a training loop does),
`side_by_side` (which builds a `gc.GradientTransformation`) and `assert_hyperparams` (which reads
`gc.hyperparams`) do.

Step numbering: references use the 1-based step $t$ of the papers for bias corrections; schedules
(`learning_rate`, `weight_decay`, `step_size` as callables) receive the 0-based count before the step,
as in gradchain and optax.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradchain as gc

PyTree = Any
Schedule = Callable[[int], float]

__all__ = [
    "FACTOR_MIN_DIM",
    "SEVEN_LEAF_SCALES",
    "SEVEN_LEAF_SHAPES",
    "SEVEN_LEAF_STEPS",
    "SEVEN_LEAF_STEP_SCALES",
    "seven_leaf_grads",
    "BUFFER_FIELDS",
    "INT32_MAX",
    "N_STEPS",
    "OPTIMIZER_GRAD_SCALES",
    "OPTIMIZER_TREE_SHAPES",
    "RTOL",
    "RTOL32",
    "RTOL64",
    "TREE_SCALES",
    "TREE_SHAPES",
    "Harmonic",
    "RefRun",
    "Trajectory",
    "abs_sq",
    "assert_hyperparams",
    "assert_leaf_close",
    "assert_state_close",
    "assert_stacked_close",
    "assert_trajectory_close",
    "assert_trees_close",
    "assert_trees_equal",
    "cached_runs",
    "grad_sequence",
    "l2_norm",
    "leaf_series",
    "leafwise",
    "max_relative_error",
    "optimizer_data",
    "param_tree",
    "ref_updates",
    "reference_tree",
    "run_transform",
    "scan_trajectories",
    "side_by_side",
    "standard_grads",
    "state_buffers",
    "stack_trees",
    "stored",
    "value_at",
    "with_l2",
    "x64_enabled",
    "LAYER_STEPS",
    "LAYER_SHAPES",
    "LAYER_GRAD_SCALES",
    "LAYER_PARAM_SCALES",
    "RTOL_TRAJ",
    "layer_grads",
    "layer_params",
    "run_many",
    "run_pairs",
    "run_optimizers",
    "wide",
    "per_leaf",
    "leaf_runs",
    "Ingredient",
    "ingredient_runs",
    "Opt",
    "opt_data",
    "optimizer_runs",
    "rosenbrock",
    "quadratic",
    "convergence_losses",
    "state_bytes_per_param",
]

# The standard test tree: a scalar, a vector, a matrix and a 3-d array, so that per-leaf rules and
# tree-wide ones (global norm) both see several shapes.
TREE_SHAPES: dict[str, tuple[int, ...]] = {"a": (), "b": (7,), "c": (3, 5), "d": (2, 3, 4)}
# Magnitudes per leaf for `grad_sequence(..., leaf_scales=TREE_SCALES)`: leaves of very different
# sizes make every eps visible somewhere (on "b", sqrt(nu) ~ 1e-3) and put clipping thresholds
# between leaves.
TREE_SCALES: dict[str, float] = {"a": 1.0, "b": 1e-3, "c": 10.0, "d": 0.1}

# The ingredient tests (tests/transforms/test_*.py) compare N_STEPS steps with the float64 reference,
# to RTOL in float32 and RTOL64 with x64 enabled, relative to the leaf's largest magnitude (over the
# run, or at each step with `per_step=True`).
N_STEPS = 100
RTOL = 1e-6
RTOL64 = 1e-12
# Step counts are int32 and saturate here instead of wrapping around.
INT32_MAX = int(np.iinfo(np.int32).max)

# The optimizer tests' tree (tests/optimizers/test_*.py): a dense layer, a conv kernel and a scalar,
# with gradients of different scales per leaf (see `optimizer_data`).
OPTIMIZER_TREE_SHAPES: dict[str, Any] = {"dense": {"w": (5, 3), "b": (3,)}, "conv": (2, 2, 3), "scale": ()}
OPTIMIZER_GRAD_SCALES: dict[str, Any] = {"dense": {"w": 1.0, "b": 0.1}, "conv": 3.0, "scale": 0.5}
# Their float32 param trajectories: float32 rounds p + u to 2^-24 |p| at every step; over 120 steps
# that random walk (plus the rounding inside the update) stays below about 1.5e-6 of the largest |p|
# of a leaf; a wrong constant, a misplaced eps or an off-by-one step count shows up orders of
# magnitude above it.
RTOL32 = 2e-6

# The per-parameter buffers of gradchain's states (the fields `state_buffers` looks for).
BUFFER_FIELDS = ("mu", "nu", "nu_max", "trace", "sum_of_squares")


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _random_leaf(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2.0)
    else:
        x = rng.standard_normal(shape)
    return np.asarray(x).astype(dtype)


def grad_sequence(
    tree_shapes: PyTree = TREE_SHAPES,
    n_steps: int = 100,
    seed: int = 0,
    dtype: Any = np.float32,
    *,
    step_scales: Sequence[float] | None = None,
    leaf_scales: PyTree | None = None,
) -> list[PyTree]:
    """A fixed pseudo-random sequence of gradient trees (standard normal entries, numpy arrays).

    Args:
        tree_shapes: a pytree whose leaves are shape tuples, e.g. `{"w": (3, 5), "b": (5,)}` (a
            shape tuple is treated as a leaf, not as a container).
        n_steps: the number of gradient trees.
        seed: the numpy seed; the same arguments always give the same sequence.
        dtype: the leaves' dtype (numpy or jax dtype: float16, `jnp.bfloat16`, complex64, ...). The
            values are rounded to it, so a float64 reference computed from them sees exactly the
            numbers the library sees. Complex entries have independent real and imaginary parts, each
            of variance 1/2.
        step_scales: optional per-step factors (length `n_steps`): step `k` is multiplied by
            `step_scales[k]` (a 0 makes an all-zero gradient step; large or small factors put a step
            above or below a clipping threshold).
        leaf_scales: optional tree of floats with the structure of `tree_shapes` (e.g.
            `TREE_SCALES`): every step of a leaf is multiplied by its factor.

    Returns:
        A list of `n_steps` trees shaped like `tree_shapes`, with numpy array leaves.
    """
    rng = np.random.default_rng(seed)
    treedef = jax.tree.structure(tree_shapes, is_leaf=_is_shape)
    shapes = jax.tree.leaves(tree_shapes, is_leaf=_is_shape)
    per_leaf = [1.0] * len(shapes) if leaf_scales is None else treedef.flatten_up_to(leaf_scales)
    if step_scales is not None and len(step_scales) != n_steps:
        raise ValueError(f"step_scales has {len(step_scales)} entries, expected n_steps={n_steps}")
    wide = np.complex128 if np.issubdtype(np.dtype(dtype), np.complexfloating) else np.float64
    out = []
    for k in range(n_steps):
        factor = 1.0 if step_scales is None else step_scales[k]
        leaves = []
        for shape, leaf_factor in zip(shapes, per_leaf, strict=True):
            x = _random_leaf(rng, shape, wide)
            leaves.append(np.asarray(x * (factor * leaf_factor)).astype(dtype))
        out.append(treedef.unflatten(leaves))
    return out


def param_tree(tree_shapes: PyTree = TREE_SHAPES, seed: int = 1234, dtype: Any = np.float32) -> PyTree:
    """A params tree shaped like `tree_shapes` (standard normal entries in `dtype`, numpy arrays)."""
    return grad_sequence(tree_shapes, 1, seed, dtype)[0]


def standard_grads(
    dtype: Any = np.float32, seed: int = 0, *, step_scales: Sequence[float] | None = None
) -> list[PyTree]:
    """The ingredient tests' gradients: `N_STEPS` trees of `TREE_SHAPES`, leaves scaled by `TREE_SCALES`.

    `grad_sequence(TREE_SHAPES, N_STEPS, seed, dtype, leaf_scales=TREE_SCALES, step_scales=...)`.
    """
    return grad_sequence(TREE_SHAPES, N_STEPS, seed, dtype, step_scales=step_scales, leaf_scales=TREE_SCALES)


@dataclasses.dataclass(frozen=True)
class Harmonic:
    """The schedule $\\eta_k = \\eta_0 / (1 + k)$ of the 0-based count `k`, with its exact stored values.

    For an $\\eta_0$ that float32 holds exactly (0.5, 0.25), float32 evaluates the quotient correctly
    rounded, so `ref(k)` (the quotient rounded by `stored`) is bit for bit the value the library uses.
    """

    eta0: float

    def __call__(self, count: Any) -> Any:
        return self.eta0 / (1.0 + count)

    def ref(self, k: int) -> float:
        """The value at the 0-based step `k`, as gradchain stores it."""
        return stored(self.eta0 / (1.0 + k))


def optimizer_data(seed: int, steps: int) -> tuple[PyTree, PyTree]:
    """The optimizer tests' initial params and gradients (float64 numpy, `OPTIMIZER_TREE_SHAPES`).

    The gradients are stacked: each leaf has a leading axis of `steps`, leaf scales from
    `OPTIMIZER_GRAD_SCALES`. Leaves of 3 or more dimensions get a few exact zeros, where
    AdaGrad/RMSProp/AdaMax must not divide by zero.
    """
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(size=s), OPTIMIZER_TREE_SHAPES, is_leaf=_is_shape)

    def grads(shape, scale):
        g = scale * rng.normal(size=(steps, *shape))
        if g.ndim >= 3:
            g[::7, 0] = 0.0
        return g

    return params, jax.tree.map(grads, OPTIMIZER_TREE_SHAPES, OPTIMIZER_GRAD_SCALES, is_leaf=_is_shape)


class LazyModule:
    """A module imported when a table entry first uses it: `O = LazyModule("torch.optim")`, then `O.SGD(...)`.

    Tables of lambdas build optional libraries' objects at module level; the import waits until a test calls
    one, and skips that test (as the `torch` fixture of conftest.py does) where the library is not installed.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import pytest

        return getattr(pytest.importorskip(self._name), attr)


def stored(x: float, dtype: Any = None) -> float:
    """`x` rounded to the dtype gradchain stores hyperparameters in (float32, float64 under x64).

    References take Python floats; passing `stored(b2)` makes them use exactly the $\\beta_2$ the
    library uses, so the comparison measures the algorithm, not the rounding of `0.999` to float32.
    """
    if dtype is None:
        dtype = jnp.zeros((), dtype=float).dtype  # float32, or float64 when x64 is enabled
    return float(np.asarray(x, dtype=dtype))


@contextlib.contextmanager
def x64_enabled() -> Iterator[None]:
    """Enable `jax_enable_x64` inside the block and restore the previous setting afterwards.

    Use it in a fixture (`with x64_enabled(): yield`), so a failing test cannot leak the setting.
    """
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


class Trajectory(list):
    """The per-step update trees of a run (a plain `list` of numpy trees), plus the final state.

    Attributes:
        state: the transformation's state after the last step.
        params: the params after the last step (unchanged unless `run_transform(..., apply=True)`).
        param_history: the params each step saw (`param_history[k]` was passed to step `k`), numpy.
    """

    state: Any
    params: Any
    param_history: list[Any]


def run_transform(
    tx: Any,
    params: PyTree,
    grads_seq: Sequence[PyTree],
    jit: bool = True,
    *,
    state: Any = None,
    apply: bool = False,
    **extra_args: Any,
) -> Trajectory:
    """Run `tx` over a fixed sequence of gradient trees and collect the updates.

    Args:
        tx: a `GradientTransformation` (gradchain or optax).
        params: the params tree (numpy or jax leaves); passed to `init` and to every `update`.
        grads_seq: the gradient trees, one per step (e.g. from `grad_sequence`); numpy leaves are
            converted with `jnp.asarray`, keeping their dtype (float64 needs x64 enabled).
        jit: run all steps as one jitted `jax.lax.scan` over `tx.update` (one compilation, one
            dispatch) instead of eager Python-loop updates. `tx.update` is then traced once, so
            Python-side checks in it run once, on abstract values.
        state: start from this state instead of `tx.init(params)`.
        apply: if True, apply each step's updates to the params (`p + u`, cast back to the param's
            dtype) before the next step, as an optimizer loop does; otherwise the params stay fixed.
        **extra_args: passed to every `update` call.

    Returns:
        A `Trajectory`: `traj[k]` is the update tree of step `k` as numpy arrays (dtype kept, e.g.
        bfloat16); `traj.state` is the final state (jax arrays); `traj.params` the final params.
    """
    params = jax.tree.map(jnp.asarray, params)
    if state is None:
        state = tx.init(params)
    out = Trajectory()
    if not grads_seq:
        out.state, out.params, out.param_history = state, params, []
        return out

    def step(carry, grads):
        state, params = carry
        updates, state = tx.update(grads, state, params, **extra_args)
        new_params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates) if apply else params
        return (state, new_params), (updates, params)

    if jit:
        # One compiled scan over the steps: a single dispatch instead of one per step.
        treedef = jax.tree.structure(grads_seq[0])
        stacked = treedef.unflatten(
            [
                jnp.asarray(np.stack(leaves))
                for leaves in zip(*(treedef.flatten_up_to(g) for g in grads_seq), strict=True)
            ]
        )
        (state, params), (updates, history) = jax.jit(lambda c, xs: jax.lax.scan(step, c, xs))((state, params), stacked)
        updates, history = jax.device_get((updates, history))
        n = len(grads_seq)
        out.extend(jax.tree.map(lambda x, k=k: x[k], updates) for k in range(n))
        out.param_history = [jax.tree.map(lambda x, k=k: x[k], history) for k in range(n)]
    else:
        out.param_history = []
        for grads in grads_seq:
            (state, new_params), (updates, _) = step((state, params), jax.tree.map(jnp.asarray, grads))
            out.param_history.append(jax.device_get(params))
            out.append(jax.device_get(updates))
            params = new_params
    out.state = state
    out.params = params
    return out


def cached_runs(
    cases: Sequence[Any], params: PyTree, grads_seq: Sequence[PyTree], **run_kwargs: Any
) -> Callable[[str], Trajectory]:
    """`case id -> run_transform(case.make(), params, grads_seq, **run_kwargs)`, each run computed once.

    For a table of test cases with fields `id` and `make` (a function returning the transformation):
    the tests that compare one run with several things (numpy, optax, its state) share it.
    """
    by_id = {case.id: case for case in cases}
    assert len(by_id) == len(cases), "case ids must be unique"

    @functools.cache
    def run(case_id: str) -> Trajectory:
        return run_transform(by_id[case_id].make(), params, grads_seq, **run_kwargs)

    return run


def scan_trajectories(txs: Sequence[Any], params: PyTree, grads: PyTree) -> list[tuple[PyTree, Any]]:
    """Run every transformation in `txs` as an optimizer, all in one jitted `jax.lax.scan`.

    Each starts from `params` and its own `init`, and at every step applies its updates to its params
    with `gc.apply_updates`. `grads` is stacked: each leaf has a leading step axis. One compilation
    for many optimizers keeps the optimizer tests fast.

    Returns:
        One (trajectory, final state) per transformation (jax arrays); the trajectory holds the params
        after every step (leading step axis).
    """

    def body(carry, g):
        new = []
        for tx, (p, state) in zip(txs, carry, strict=True):
            updates, state = tx.update(g, state, p)
            new.append((gc.apply_updates(p, updates), state))
        return new, [p for p, _ in new]

    @jax.jit
    def go(p, gs):
        final, trajectories = jax.lax.scan(body, [(p, tx.init(p)) for tx in txs], gs)
        return [(trajectory, state) for trajectory, (_, state) in zip(trajectories, final, strict=True)]

    return go(params, grads)


def state_buffers(state: Any) -> Iterator[tuple[str, str, Any]]:
    """(field, param path, leaf) for every per-parameter buffer (`BUFFER_FIELDS`) in `state`.

    Walks the NamedTuple states of an ingredient or of a chain (a `ChainState` or tuple of them).
    """
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        for field in BUFFER_FIELDS:
            if field in state._fields:
                for path, leaf in jax.tree_util.tree_flatten_with_path(getattr(state, field))[0]:
                    yield field, gc.tree.path_str(path), leaf
    elif isinstance(state, tuple | gc.ChainState):
        for s in state:
            yield from state_buffers(s)


# ----------------------------------------------------------------------------------------------
# References (float64 numpy, one leaf at a time)
# ----------------------------------------------------------------------------------------------


def _wide(g: Any) -> np.ndarray:
    """The gradient in float64 (complex128 for complex input)."""
    g = np.asarray(g)
    return g.astype(np.complex128 if np.iscomplexobj(g) else np.float64)


def abs_sq(g: np.ndarray) -> np.ndarray:
    """$|g|^2 = g \\bar g$, real, element-wise."""
    return (g * np.conj(g)).real if np.iscomplexobj(g) else g * g


def l2_norm(x: Any) -> float:
    """$\\|x\\|_2 = \\sqrt{\\sum |x|^2}$ of one array, in float64."""
    return float(np.sqrt(np.sum(abs_sq(_wide(x)))))


def _at(value: float | Schedule, step: int) -> float:
    return float(value(step)) if callable(value) else float(value)


def value_at(x: Any, step: int) -> float:
    """A hyperparameter's value at the 0-based step `step` (as a schedule sees it), in float64.

    A schedule carrying its own numpy twin as `np_fn` (the optimizer tests' `Sched`) is read from that;
    any other callable is called.
    """
    np_fn = getattr(x, "np_fn", None)
    if np_fn is not None:
        return np_fn(step)
    if callable(x):
        return float(x(step))
    return float(x)


def with_l2(g: np.ndarray, p: np.ndarray, weight_decay: Any, t: int) -> np.ndarray:
    """The gradient with coupled (L2) weight decay $g + \\lambda_{t-1} p$ added (`None`: no decay), 1-based t."""
    return g if weight_decay is None else g + value_at(weight_decay, t - 1) * p


class RefRun(list):
    """The per-step updates of one leaf (a list), and the final state of the reference as `.state`."""

    state: dict[str, np.ndarray]


def reference_tree(
    ref_fn: Callable[..., list[np.ndarray]],
    grads_seq: Sequence[PyTree],
    *args: Any,
    params: PyTree | None = None,
    **kwargs: Any,
) -> list[PyTree]:
    """Apply a per-leaf reference to every leaf of a sequence of gradient trees.

    Args:
        ref_fn: one of the per-leaf `ref_*` functions (not `ref_clip_by_global_norm`).
        grads_seq: the gradient trees, one per step.
        *args, **kwargs: passed to `ref_fn` after the leaf's gradient list.
        params: for `ref_decay`: a params tree (fixed), or a list of params trees (one per step);
            the matching leaf is passed as `ref_fn`'s second argument.

    Returns:
        The list of update trees (float64 / complex128 numpy leaves).
    """
    treedef = jax.tree.structure(grads_seq[0])
    per_leaf = list(zip(*(treedef.flatten_up_to(g) for g in grads_seq), strict=True))
    if params is not None:
        if isinstance(params, list):
            p_leaves = list(zip(*(treedef.flatten_up_to(p) for p in params), strict=True))
            p_leaves = [list(x) for x in p_leaves]
        else:
            p_leaves = treedef.flatten_up_to(params)
        results = [ref_fn(list(gs), p, *args, **kwargs) for gs, p in zip(per_leaf, p_leaves, strict=True)]
    else:
        results = [ref_fn(list(gs), *args, **kwargs) for gs in per_leaf]
    return [treedef.unflatten([r[k] for r in results]) for k in range(len(grads_seq))]


# ----------------------------------------------------------------------------------------------
# Comparing
# ----------------------------------------------------------------------------------------------


def leaf_series(trees: Sequence[PyTree]) -> dict[str, list[np.ndarray]]:
    """`{leaf path: [value at step 0, step 1, ...]}` for a sequence of trees (numpy arrays)."""
    out: dict[str, list[np.ndarray]] = {}
    for tree in trees:
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            out.setdefault(jax.tree_util.keystr(path) or "<root>", []).append(np.asarray(leaf))
    return out


def _to_wide(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if np.iscomplexobj(x):
        return x.astype(np.complex128)
    return x.astype(np.float64)


def _magnitude(x: np.ndarray) -> float:
    return float(np.max(np.abs(x), initial=0.0))


def assert_leaf_close(
    actual: Sequence[Any],
    expected: Sequence[Any],
    rtol: float,
    *,
    where: str = "",
    per_step: bool = False,
    floor: float = 1e-30,
) -> None:
    """Assert `actual[k] ≈ expected[k]` for every step `k` of one leaf.

    The error at step `k` is `max|a_k - e_k|`; it must be at most `rtol * scale`, where `scale` is
    the leaf's largest magnitude over the whole trajectory (`max_k max|e_k|`), or with `per_step`
    over step `k` only (stricter where values vary a lot between steps: a step below a clipping
    threshold, an all-zero step that must give an exactly-zero update). The whole-trajectory scale is
    right for running averages, whose value at a step can be much smaller than the gradients that
    formed it (float32 rounding then is relative to those gradients, not to the average). `floor`
    keeps the scale positive. Non-finite actual values fail.
    """
    assert len(actual) == len(expected), f"{where}: {len(actual)} steps, expected {len(expected)}"
    actual = [_to_wide(a) for a in actual]
    expected = [_to_wide(e) for e in expected]
    leaf_scale = max([_magnitude(e) for e in expected] + [floor])
    for k, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.shape == e.shape, f"{where} step {k}: shape {a.shape}, expected {e.shape}"
        assert np.all(np.isfinite(a)), f"{where} step {k}: non-finite values {a.ravel()[:6]}"
        scale = max(_magnitude(e), floor) if per_step else leaf_scale
        err = _magnitude(a - e)
        assert err <= rtol * scale, (
            f"{where} step {k}: max |actual - expected| = {err:.3e} > {rtol:.1e} * {scale:.3e} "
            f"(relative error {err / scale:.3e})\n  actual:   {a.ravel()[:6]}\n  expected: {e.ravel()[:6]}"
        )


def assert_trajectory_close(
    actual: Sequence[PyTree], expected: Sequence[PyTree], rtol: float, *, per_step: bool = False, floor: float = 1e-30
) -> None:
    """Assert two sequences of trees agree leaf by leaf and step by step (see `assert_leaf_close`).

    The leaf paths must be the same; `actual` may hold any dtype (bfloat16 included).
    """
    assert len(actual) == len(expected), f"{len(actual)} steps, expected {len(expected)}"
    a_series, e_series = leaf_series(actual), leaf_series(expected)
    assert list(a_series) == list(e_series), f"leaf paths {list(a_series)}, expected {list(e_series)}"
    for path in e_series:
        assert_leaf_close(a_series[path], e_series[path], rtol, where=f"leaf {path}", per_step=per_step, floor=floor)


def assert_stacked_close(actual: PyTree, expected: PyTree, rtol: float) -> None:
    """Two stacked trajectories (leaves with a leading step axis) agree at every step of every leaf.

    The error at each step must be within `rtol` times the leaf's largest magnitude over the whole
    run of `expected`; the message names the leaf and the worst step ("max error ... at step ...").
    """
    flat_e, treedef = jax.tree_util.tree_flatten_with_path(expected)
    flat_a = treedef.flatten_up_to(actual)
    for (path, e), a in zip(flat_e, flat_a, strict=True):
        e, a = np.asarray(e, np.float64), np.asarray(a, np.float64)
        assert a.shape == e.shape, f"{jax.tree_util.keystr(path)}: shape {a.shape} != {e.shape}"
        scale = np.max(np.abs(e))
        err = np.abs(a - e).reshape(len(e), -1).max(axis=1)
        step = int(np.argmax(err))
        assert err[step] <= rtol * scale, (
            f"leaf {jax.tree_util.keystr(path)}: max error {err[step]:.3g} at step {step + 1} exceeds "
            f"{rtol:g} * max|p| = {rtol * scale:.3g}"
        )


def assert_trees_close(actual: PyTree, expected: PyTree, rtol: float) -> None:
    """Same structure and, leaf by leaf, the same shape and `max|a - e| <= rtol * max|e|`."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        assert a.shape == e.shape, f"{jax.tree_util.keystr(path)}: shape {a.shape}, expected {e.shape}"
        scale = max(float(np.max(np.abs(e), initial=0.0)), 1e-30)
        err = float(np.max(np.abs(a - e), initial=0.0))
        assert err <= rtol * scale, f"{jax.tree_util.keystr(path)}: relative error {err / scale:.3g} > {rtol:g}"


def assert_trees_equal(actual: PyTree, expected: PyTree) -> None:
    """Same structure and every leaf bit for bit the same: dtype, shape and values (NaN equals nothing)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        where = jax.tree_util.keystr(path)
        assert a.dtype == e.dtype, f"{where}: dtype {a.dtype}, expected {e.dtype}"
        assert a.shape == e.shape, f"{where}: shape {a.shape}, expected {e.shape}"
        assert np.array_equal(a, e), f"{where} differs:\n  actual:   {a.ravel()[:6]}\n  expected: {e.ravel()[:6]}"


def assert_hyperparams(state: Any, expected: dict[str, float], dtype: Any = None) -> None:
    """`gc.hyperparams(state)` has exactly the names of `expected`, each equal to its value as stored.

    With `dtype`, each value must also have that dtype.
    """
    hp = gc.hyperparams(state)
    assert set(hp) == set(expected)
    for name, value in expected.items():
        assert float(hp[name]) == stored(value), name
        if dtype is not None:
            assert hp[name].dtype == dtype, f"{name}: {hp[name].dtype}, expected {np.dtype(dtype)}"


def max_relative_error(actual: Sequence[PyTree], expected: Sequence[PyTree], *, per_step: bool = False) -> float:
    """The largest error relative to the leaf's max magnitude, as `assert_trajectory_close` measures it."""
    worst = 0.0
    a_series, e_series = leaf_series(actual), leaf_series(expected)
    for path in e_series:
        es = [_to_wide(e) for e in e_series[path]]
        leaf_scale = max([_magnitude(e) for e in es] + [1e-30])
        for a, e in zip(a_series[path], es, strict=True):
            scale = max(_magnitude(e), 1e-30) if per_step else leaf_scale
            worst = max(worst, _magnitude(_to_wide(a) - e) / scale)
    return worst


# ----------------------------------------------------------------------------------------------
# Running whole tables of cases, and per-leaf `RefRun` references (tests/transforms/test_sign.py,
# test_factored.py)
# ----------------------------------------------------------------------------------------------


def stack_trees(trees: list[Any], dtype: Any = None) -> Any:
    """A list of trees as one tree with a leading step axis (what `scan_trajectories` takes)."""
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs), dtype), *trees)


def leafwise(ref_fn: Callable[..., RefRun], grads_seq: list[Any], *args: Any, **kwargs: Any) -> dict[str, RefRun]:
    """`{leaf path: ref_fn(that leaf's gradients, ...)}` over a sequence of gradient trees."""
    return {path: ref_fn(series, *args, **kwargs) for path, series in leaf_series(grads_seq).items()}


def ref_updates(runs: dict[str, RefRun], like: Any) -> list[Any]:
    """The per-step update trees (shaped like `like`) of per-leaf reference runs."""
    treedef = jax.tree.structure(like)
    paths = list(leaf_series([like]))
    return [treedef.unflatten([runs[path][k] for path in paths]) for k in range(len(next(iter(runs.values()))))]


def assert_state_close(state: Any, runs: dict[str, RefRun], rtol: float) -> None:
    """Each per-leaf buffer the reference keeps (`mu`, `v_row`, `v_col`, `v`) matches the state's."""
    for path, run in runs.items():
        for field, expected in run.state.items():
            actual = leaf_series([getattr(state, field)])[path][0]
            assert_leaf_close([actual], [expected], rtol, where=f"{field} {path}")


def side_by_side(txs: list[Any]) -> gc.GradientTransformation:
    """Several transformations fed the same gradients; updates and states are tuples, one entry each.

    A whole table of cases then runs as one transformation: one compiled scan instead of one per case.
    """

    def init(params):
        return tuple(tx.init(params) for tx in txs)

    def update(updates, state, params=None, **extra_args):
        outs = [tx.update(updates, s, params) for tx, s in zip(txs, state, strict=True)]
        return tuple(u for u, _ in outs), tuple(s for _, s in outs)

    return gc.GradientTransformation(init, update)


# ----------------------------------------------------------------------------------------------
# The layer-wise tree: tests of trust ratios, normalization, adaptive clipping and SM3
# (tests/transforms/test_trust_ratio.py, test_normalization.py, test_clipping.py, test_sm3.py)
# ----------------------------------------------------------------------------------------------

# Five leaves (a scalar, a vector, a matrix, a 3-d and a 4-d array), magnitudes from 1e-2 to 10.
LAYER_STEPS = 200
LAYER_SHAPES: dict[str, tuple[int, ...]] = {"s": (), "v": (5,), "m": (4, 6), "h": (3, 2, 4), "k": (2, 2, 3, 4)}
LAYER_GRAD_SCALES = {"s": 1.0, "v": 1e-2, "m": 3.0, "h": 0.1, "k": 1.0}
LAYER_PARAM_SCALES = {"s": 2.0, "v": 1.0, "m": 0.5, "h": 10.0, "k": 0.05}
# float32 param trajectories over 200 steps: p + u rounds to 2^-24 |p| at every step, a random walk
# that stays below ~2e-6 of the leaf's largest |p| (measured: at most 1.3e-6, see the report).
RTOL_TRAJ = 3e-6


@functools.cache
def layer_grads(seed: int = 0, dtype: Any = np.float32) -> list[dict]:
    """LAYER_STEPS fixed pseudo-random gradient trees of LAYER_SHAPES (cached)."""
    return grad_sequence(LAYER_SHAPES, LAYER_STEPS, seed, dtype, leaf_scales=LAYER_GRAD_SCALES)


@functools.cache
def layer_params(seed: int = 1, dtype: Any = np.float32) -> list[dict]:
    """LAYER_STEPS fixed pseudo-random param trees of LAYER_SHAPES (cached), independent of the updates."""
    return grad_sequence(LAYER_SHAPES, LAYER_STEPS, seed, dtype, leaf_scales=LAYER_PARAM_SCALES)


def _stack(trees: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *trees)


def _unstack(tree: Any, n: int) -> list[Any]:
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

    return [_unstack(u, len(grads)) for u in go(_stack(grads), _stack(params))]


def run_pairs(tx: Any, grads: list[dict], params: list[dict]) -> list[dict]:
    """`run_many` for one transformation."""
    return run_many([tx], grads, params)[0]


def run_optimizers(txs: list[Any], p0: dict, grads: list[dict]) -> list[dict]:
    """Param trajectories (leading step axis) of several optimizers from p0, in one jitted scan."""
    runs = scan_trajectories(txs, jax.tree.map(jnp.asarray, p0), _stack(grads))
    return jax.device_get([trajectory for trajectory, _ in runs])


def wide(x: Any) -> np.ndarray:
    """x in float64 (complex128 for complex input)."""
    return _wide(x)


def per_leaf(fn: Callable, *trees: dict) -> dict:
    """`{leaf: fn(that leaf of each tree, in float64)}` over trees of one flat dict layout."""
    return {k: fn(*(wide(t[k]) for t in trees)) for k in trees[0]}


def leaf_runs(ref: Callable, p0: dict, grads: list[dict], **per_leaf_kwargs: Any) -> dict:
    """`ref` (p0, grads -> param trajectory) run on every leaf; kwargs given as dicts are taken per leaf."""
    out = {}
    for key in p0:
        kw = {k: (v[key] if isinstance(v, dict) else v) for k, v in per_leaf_kwargs.items()}
        out[key] = np.stack(ref(wide(p0[key]), [wide(g[key]) for g in grads], **kw))
    return out


@dataclasses.dataclass(frozen=True)
class Ingredient:
    """A layer-wise ingredient, its optax counterpart and its per-leaf reference (g, p -> update)."""

    id: str
    ours: Callable[[], Any]
    theirs: Callable[[], Any]
    ref: Callable[[np.ndarray, np.ndarray], np.ndarray]


def ingredient_runs(cases: Sequence[Ingredient]) -> dict[str, tuple[list, list]]:
    """`{case id: (our updates, optax's updates)}` on `layer_grads()` and `layer_params()`, one scan."""
    txs = [c.ours() for c in cases] + [c.theirs() for c in cases]
    runs = run_many(txs, layer_grads(), layer_params())
    return {c.id: (runs[i], runs[len(cases) + i]) for i, c in enumerate(cases)}


@dataclasses.dataclass(frozen=True)
class Opt:
    """A layer-wise optimizer, its optax counterpart and its whole-trajectory reference."""

    id: str
    ours: Callable[[], Any]
    theirs: Callable[[], Any]
    ref: Callable[[dict, list[dict]], dict]  # (p0, grads) -> {leaf: stacked trajectory}
    no_scalar: bool = False  # optax's SM3 fails on scalar leaves


def opt_data(no_scalar: bool = False) -> tuple[dict, list[dict]]:
    """The optimizer comparisons' start params and gradients (without the scalar leaf if asked)."""
    p0, gs = layer_params(7)[0], layer_grads(8)
    if no_scalar:
        p0 = {k: v for k, v in p0.items() if k != "s"}
        gs = [{k: v for k, v in g.items() if k != "s"} for g in gs]
    return p0, gs


def optimizer_runs(cases: Sequence[Opt]) -> dict[str, tuple[Any, Any]]:
    """`{case id: (our param trajectory, optax's)}` from `opt_data`, one scan per `no_scalar` value."""
    out = {}
    for no_scalar in (False, True):
        group = [c for c in cases if c.no_scalar == no_scalar]
        if not group:
            continue
        p0, gs = opt_data(no_scalar)
        trajectories = run_optimizers([c.ours() for c in group] + [c.theirs() for c in group], p0, gs)
        for i, c in enumerate(group):
            out[c.id] = (trajectories[i], trajectories[len(group) + i])
    return out


def rosenbrock(p):
    """Rosenbrock's function of the 2-vector leaf "xy"."""
    x, y = p["xy"][0], p["xy"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def quadratic(p):
    """An ill-conditioned quadratic of the leaves "w" (8,) and "b" (3,)."""
    # Condition number 1e3 across the coordinates of one leaf, and another leaf 100x steeper.
    d = jnp.logspace(0, 3, 8)
    return 0.5 * jnp.sum(d * (p["w"] - 1.0) ** 2) + 50.0 * jnp.sum((p["b"] + 0.5) ** 2)


def convergence_losses(cases: Sequence[tuple]) -> dict[str, tuple[float, float]]:
    """`{case id: (start loss, final loss)}` for (id, optimizer, problem, steps, factor) cases.

    The problems are "rosenbrock" and "quadratic"; the cases of one problem run in one jitted scan for
    the steps of its first case.
    """
    starts = {"rosenbrock": {"xy": jnp.array([-1.2, 1.0])}, "quadratic": {"w": -jnp.ones(8), "b": jnp.ones(3)}}
    losses = {"rosenbrock": rosenbrock, "quadratic": quadratic}
    out = {}
    for problem in losses:
        group = [c for c in cases if c[2] == problem]
        if not group:
            continue
        steps = group[0][3]
        txs = [c[1]() for c in group]
        loss = losses[problem]

        def body(carry, _, txs=txs, loss=loss):
            new = []
            for tx, (p, s) in zip(txs, carry, strict=True):
                u, s = tx.update(jax.grad(loss)(p), s, p)
                new.append((gc.apply_updates(p, u), s))
            return new, None

        p0 = starts[problem]
        final = jax.jit(lambda p: jax.lax.scan(body, [(p, tx.init(p)) for tx in txs], None, length=steps)[0])(p0)
        for c, (p, _) in zip(group, final, strict=True):
            out[c[0]] = (float(loss(p0)), float(loss(p)))
    return out


def state_bytes_per_param(tx: Any, params: dict) -> float:
    """Bytes of per-parameter state (arrays of rank >= 1, the chain's scalar block excluded) per param."""
    state = tx.init(params)
    n = sum(x.size for x in jax.tree.leaves(params))
    # Scalars (counts, hyperparameters; a chain keeps them in its scalar block) are a fixed cost.
    block = getattr(state, "scalar_block", None)
    return sum(x.nbytes for x in jax.tree.leaves(state) if x.ndim > 0 and x is not block) / n


# ----------------------------------------------------------------------------------------------
# The seven-leaf tree of the sign and factored tests (tests/transforms/test_sign.py, test_factored.py)
# ----------------------------------------------------------------------------------------------

SEVEN_LEAF_STEPS = 120
FACTOR_MIN_DIM = 4
# A scalar, a vector; "mat" and "tall" are factored (row axis 0 / column axis 1, and the reverse);
# "thin" is not (its second largest dimension is below FACTOR_MIN_DIM); "batch" is a batch of factored
# matrices; "cube" factors its axes 2 (rows) and 0 (columns), which are not adjacent.
SEVEN_LEAF_SHAPES: dict[str, tuple[int, ...]] = {
    "scalar": (),
    "vec": (7,),
    "mat": (5, 8),
    "tall": (9, 4),
    "thin": (3, 6),
    "batch": (2, 5, 6),
    "cube": (6, 2, 5),
}
SEVEN_LEAF_SCALES: dict[str, float] = {
    "scalar": 1.0,
    "vec": 1e-3,
    "mat": 10.0,
    "tall": 0.1,
    "thin": 1.0,
    "batch": 3.0,
    "cube": 0.5,
}
# Step 0 and step 60 are all-zero gradients: with epsilon = 0 the statistics are then exactly 0.
SEVEN_LEAF_STEP_SCALES = [0.0 if k in (0, 60) else 1.0 for k in range(SEVEN_LEAF_STEPS)]


def seven_leaf_grads(dtype: Any = np.float32, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The gradient sequence of the seven-leaf tree: SEVEN_LEAF_STEPS trees, leaf magnitudes SEVEN_LEAF_SCALES."""
    return grad_sequence(
        SEVEN_LEAF_SHAPES,
        SEVEN_LEAF_STEPS,
        seed,
        dtype,
        step_scales=SEVEN_LEAF_STEP_SCALES,
        leaf_scales=SEVEN_LEAF_SCALES,
    )
