"""Measuring one variant: build it, check one step against optax, then time it.

A variant is one implementation of an optimizer: gradchain (default, `pack=False`, `pack=True`,
packed params), optax, or torch.optim (for-loop, foreach, fused). Each is wrapped in a runner with
the same four operations (`init`, `step`, `params`, `state_bytes`), so that the checking, memory
and timing code below is written once for all of them.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradchain as gc
from benchmarks._machine import PeakMemory
from benchmarks._optimizers import OPTIMIZERS, OptimizerSpec, Unavailable
from benchmarks._trees import Arrays, TreeSpec, Workload, workload

PARAMS_RTOL = 1e-5  # one-step params, relative to the leaf's largest |param|
# The one-step change of the params, relative to the leaf's largest |change|. Adafactor's step is lr x RMS(p),
# small against p: the float32 rounding of p alone is ~3e-4 of it.
UPDATE_RTOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Variant:
    library: str  # "gradchain", "optax" or "torch"
    name: str

    @property
    def label(self) -> str:
        return f"{self.library} {self.name}"


GRADCHAIN_VARIANTS = tuple(Variant("gradchain", n) for n in ("default", "pack=False", "pack=True", "packed params"))
OPTAX_VARIANT = Variant("optax", "default")
TORCH_VARIANTS = tuple(Variant("torch", n) for n in ("for-loop", "foreach", "fused"))
ALL_VARIANTS = (*GRADCHAIN_VARIANTS, OPTAX_VARIANT, *TORCH_VARIANTS)
NO_TORCH = Variant("torch", "—")  # the row of an optimizer torch.optim does not have

_GRADCHAIN_KWARGS: dict[str, dict[str, Any]] = {"pack=False": {"pack": False}, "pack=True": {"pack": True}}


def variants_for(spec: OptimizerSpec, wanted: tuple[Variant, ...]) -> list[Variant]:
    """The wanted variants that exist for `spec`; torch's missing optimizers get one `—` row."""
    out = [v for v in wanted if v.library != "torch" or v.name in spec.torch_variants]
    if spec.torch is None and any(v.library == "torch" for v in wanted):
        out.append(NO_TORCH)
    return out


@dataclasses.dataclass
class Result:
    """One row of the report. Times in ms (step) and s (compile); memory in bytes."""

    tree: str
    optimizer: str
    library: str
    variant: str
    status: str = "ok"  # ok, skipped, mismatch, error, timeout, killed; compiled (compile-only jobs)
    note: str = ""
    lower_s: float | None = None
    compile_s: float | None = None
    pack_s: float | None = None  # packed params: `gc.pack` of the params and the grads, outside the step
    params_rel_err: float | None = None
    update_rel_err: float | None = None
    worst_leaf: str | None = None
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    steps: int | None = None
    state_bytes: int | None = None
    peak_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class RepeatPlan:
    """How long to time: `warmup` steps, then enough steps for `target_s` within [min_steps, max_steps]."""

    warmup: int
    target_s: float
    min_steps: int
    max_steps: int


FULL_PLAN = RepeatPlan(warmup=2, target_s=1.0, min_steps=5, max_steps=200)
QUICK_PLAN = RepeatPlan(warmup=0, target_s=0.05, min_steps=2, max_steps=10)


# ---------------------------------------------------------------------------------------------------
# Runners


def on_device(arrays: Arrays, device: jax.Device) -> dict[str, jax.Array]:
    """Copies on `device` (`jnp.array` copies), so that donation never writes into the numpy arrays."""
    return {k: jax.device_put(jnp.array(v), device) for k, v in arrays.items()}


def device_trees(work: Workload, packed: bool) -> tuple[Any, Any, float | None]:
    """Params and grads on the workload's device, packed with `gc.pack` for the packed-params variant.

    Returns them and the seconds `gc.pack` took (None unpacked).
    """
    params, grads = on_device(work.params, work.device), on_device(work.grads, work.device)
    if not packed:
        return params, grads, None
    start = time.perf_counter()
    params, grads = jax.block_until_ready((gc.pack(params), gc.pack(grads)))
    return params, grads, time.perf_counter() - start


class Runner(Protocol):
    """What `measure` needs of a variant; times in s, None where they do not apply (torch compiles nothing)."""

    lower_s: float | None
    compile_s: float | None
    pack_s: float | None
    memory_where: str | jax.Device  # for `PeakMemory`

    def init(self) -> None: ...
    def step(self) -> None: ...
    def params(self) -> Arrays: ...
    def state_bytes(self) -> int: ...


def step_function(tx: Any, apply_updates: Callable) -> Callable:
    """A new `step(params, state, grads) -> (params, state)` function object on every call.

    New each time, so that no trace or compilation cache keyed on the function can hide a cost.
    """

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    return step


def compile_step(tx: Any, apply_updates: Callable, params: Any, state: Any, grads: Any) -> tuple[float, float, Any]:
    """AOT-compile a donating step (params and state donated, grads not); `(lower_s, compile_s, compiled)`."""
    start = time.perf_counter()
    lowered = jax.jit(step_function(tx, apply_updates), donate_argnums=(0, 1)).lower(params, state, grads)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at, compiled


class JaxRunner:
    """A gradchain or optax transformation, stepped by one AOT-compiled, donating `jax.jit` step."""

    def __init__(self, tx: Any, apply_updates: Callable, work: Workload, *, packed: bool = False) -> None:
        self._tx, self._packed, self.memory_where = tx, packed, work.device
        self._params, self._grads, self.pack_s = device_trees(work, packed)
        abstract_state = jax.eval_shape(tx.init, self._params)
        self.lower_s, self.compile_s, self._step = compile_step(
            tx, apply_updates, self._params, abstract_state, self._grads
        )
        self._state: Any = None

    def init(self) -> None:
        self._state = jax.block_until_ready(self._tx.init(self._params))

    def step(self) -> None:
        self._params, self._state = jax.block_until_ready(self._step(self._params, self._state, self._grads))

    def params(self) -> Arrays:
        tree = gc.unpack(self._params) if self._packed else self._params
        return {k: np.asarray(v) for k, v in tree.items()}

    def state_bytes(self) -> int:
        return sum(leaf.nbytes for leaf in jax.tree.leaves(self._state))


def _gradchain_tx(spec: OptimizerSpec, **kwargs: Any) -> Any:
    try:
        return spec.gradchain(**kwargs)
    except (AttributeError, TypeError) as e:  # the optimizer or the keyword has not landed yet
        raise Unavailable(f"not in gradchain yet ({type(e).__name__}: {e})") from e


def jax_transformation(spec: OptimizerSpec, variant: Variant) -> tuple[Any, Callable, bool]:
    """`(tx, apply_updates, packed_params)` of a gradchain or optax variant; `Unavailable` if not there yet."""
    if variant.library == "optax":
        return spec.optax(), optax.apply_updates, False
    tx = _gradchain_tx(spec, **_GRADCHAIN_KWARGS.get(variant.name, {}))
    packed = variant.name == "packed params"
    if packed and not (hasattr(gc, "pack") and hasattr(gc, "unpack")):
        raise Unavailable("gradchain.pack / gradchain.unpack not in gradchain yet")
    return tx, gc.apply_updates, packed


def make_runner(spec: OptimizerSpec, variant: Variant, work: Workload) -> Runner:
    """Build (and, for JAX, compile) the variant; raises `Unavailable` if it cannot exist here."""
    if variant.library != "torch":
        tx, apply_updates, packed = jax_transformation(spec, variant)
        return JaxRunner(tx, apply_updates, work, packed=packed)
    from benchmarks._torch_runner import TorchRunner  # imported here: JAX-only subprocesses never load torch

    return TorchRunner(spec, variant.name, work)


# ---------------------------------------------------------------------------------------------------
# Reference, agreement, timing


def reference_step(spec: OptimizerSpec, work: Workload) -> Arrays:
    """optax's params after one step, run op by op (no jit): what every variant must reproduce."""
    tx = spec.optax()
    params, grads = on_device(work.params, work.device), on_device(work.grads, work.device)
    updates, _ = tx.update(grads, tx.init(params), params)
    return {k: np.asarray(v) for k, v in optax.apply_updates(params, updates).items()}


def agreement(got: Arrays, want: Arrays, start: Arrays) -> tuple[float, float, str]:
    """`(params error, update error, worst leaf)`: how far a variant's one-step params are from optax's.

    The params error is the largest `|got - want|` over the tree relative to the tree's largest
    `|param|` (before or after the step): the tree agrees to that relative precision. The update
    error divides each leaf's difference by that leaf's largest step `|want - start|`, so that a
    wrong update cannot hide below the size of the params, not even in a small leaf. (A per-leaf
    params scale would fail one-element leaves that the step brings to about 0, where library
    rounding of the step itself, ~1e-5 of it for Adam, becomes a large fraction of the param.)
    """
    if got.keys() != want.keys():
        raise ValueError(f"the variant's tree has leaves {sorted(got)[:3]}..., expected {sorted(want)[:3]}...")
    diffs = {path: _max_abs_diff(got[path], w) for path, w in want.items()}
    scale = max(max(_max_abs(want[p]), _max_abs(start[p])) for p in want)
    update_errors = {
        path: _ratio(diff, _max_abs(want[path].astype(np.float64) - start[path])) for path, diff in diffs.items()
    }
    params_errors = {path: _ratio(diff, scale) for path, diff in diffs.items()}
    worst = max(diffs, key=lambda path: max(params_errors[path] / PARAMS_RTOL, update_errors[path] / UPDATE_RTOL))
    return max(params_errors.values()), max(update_errors.values()), worst


def _max_abs(x: np.ndarray) -> float:
    return float(np.max(np.abs(x), initial=0.0))


def _max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return math.inf
    return _max_abs(got.astype(np.float64) - want.astype(np.float64))


def _ratio(diff: float, scale: float) -> float:
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def time_steps(step: Callable[[], None], plan: RepeatPlan) -> dict[str, float | int]:
    """Median, min and max ms over an adaptive number of steps, after `plan.warmup` steps."""
    for _ in range(plan.warmup):
        step()
    probe = _seconds(step)
    steps = min(plan.max_steps, max(plan.min_steps, math.ceil(plan.target_s / max(probe, 1e-9))))
    ms = [1e3 * _seconds(step) for _ in range(steps)]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "steps": steps}


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------
# One measurement


def measure(spec: OptimizerSpec, variant: Variant, work: Workload, plan: RepeatPlan) -> Result:
    """Build, check one step against `work.reference`, and time the variant unless it disagrees.

    Peak memory covers building the state (a second time: the first compiles `init`'s eager ops) and
    the first step (torch builds its state lazily, in the first step): state and the temporaries of
    a step, above what was live before.
    """
    result = Result(work.tree.name, spec.name, variant.library, variant.name)
    try:
        runner = make_runner(spec, variant, work)
        runner.init()  # once before measuring: eager `init` compiles its ops, which is no step's memory
        with PeakMemory(runner.memory_where) as peak:
            runner.init()
            runner.step()
    except Unavailable as e:
        result.status, result.note = "skipped", str(e)
        return result
    result.lower_s, result.compile_s, result.pack_s = runner.lower_s, runner.compile_s, runner.pack_s
    result.state_bytes, result.peak_bytes = runner.state_bytes(), peak.bytes
    result.params_rel_err, result.update_rel_err, result.worst_leaf = agreement(
        runner.params(), work.reference, work.params
    )
    if result.params_rel_err > PARAMS_RTOL or result.update_rel_err > UPDATE_RTOL:
        result.status = "mismatch"
        result.note = (
            f"one step differs from optax at {result.worst_leaf}: params {result.params_rel_err:.2e} "
            f"(tol {PARAMS_RTOL:g}), update {result.update_rel_err:.2e} (tol {UPDATE_RTOL:g}); not timed"
        )
        return result
    for key, value in time_steps(runner.step, plan).items():
        setattr(result, key, value)
    return result


def measure_isolated(
    tree: list[Any], optimizer: str, variant: list[str], plan: dict[str, Any], reference: str
) -> dict[str, Any]:
    """`measure` in a subprocess (see `_isolate`): everything arrives as JSON values and the reference as a .npz."""
    spec, work = OPTIMIZERS[optimizer], workload(TreeSpec(*tree))
    with np.load(reference) as saved:
        work.reference = {k: saved[f"arr_{i}"] for i, k in enumerate(work.params)}
    return dataclasses.asdict(measure(spec, Variant(*variant), work, RepeatPlan(**plan)))


def save_reference(reference: Arrays, directory: str | Path) -> str:
    """Write the reference leaves in tree order to a .npz a subprocess can read; returns its path."""
    path = Path(tempfile.mkstemp(suffix=".npz", dir=directory)[1])
    np.savez(path, *reference.values())
    return str(path)
