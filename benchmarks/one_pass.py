"""Can an AdamW step on CPU get closer to the memory-bandwidth roofline by updating each leaf in one pass?

XLA compiles a plain AdamW step on CPU into three loop fusions per leaf (new mu, new nu, new params):
read g, mu, nu, p and write p, mu, nu (28 bytes per float32 param) becomes about 40 bytes, because
the params fusion reads the new moments back from memory. This probe times, on the `large` tree
(8 x (2048, 4096) float32, 67M params), one donated AdamW step (lr 1e-3, b1 0.9, b2 0.999,
eps 1e-8, weight decay 1e-2, bias correction) written in several ways:

- `gradchain`: `gc.adamw(1e-3, weight_decay=1e-2)` + `gc.apply_updates` (tree mode, the default);
- `optax`: `optax.adamw` + `optax.apply_updates`;
- `plain`: a hand-written `jnp` step, leaf by leaf; it is the reference the others are checked against;
- `one-pass C`: per leaf, a `fori_loop` over chunks of C elements of the flattened leaf that reads the
  p, g, mu, nu chunk with `dynamic_slice`, computes the new chunk and writes it back in place with
  `dynamic_update_slice`, so that DRAM sees every byte once (28 bytes/param); the new params are
  written first and the moments after them (see `_chunk_update_first` for why the order matters);
- `one-pass C, moments first`: the same loop, writing the moments first and reading them back;
- `one-pass C, naive`: the loop as one would first write it; XLA copies two whole leaves per
  iteration (compiled and inspected only, far too slow to time);
- `one-pass C, 2 devices`: the one-pass loop under `shard_map` over two host devices, one per core
  (XLA runs a while loop's body on one thread, while a plain loop fusion is split across the cores);
  `plain, 2 devices` is the same split of `plain`, the control;
- `combined [p;mu;nu] ...`: params and moments stored together in blocks of shape (3, C), so that one
  fusion reads and writes all three: as a chunk loop (in place) and as one fusion over the whole
  buffer (not in place: XLA cannot prove the cross-row reads safe, so the output is a new buffer).
- `stream p += c*g`: not AdamW, a 12-byte/param in-place XLA stream on the same tree, for scale.

Every AdamW formulation is first checked against `plain` after 3 steps (max error per leaf relative
to the leaf's largest magnitude: params < 1e-5, mu and nu < 1e-4 (see `MOMENTS_RTOL`), the change
of the params < 1e-3 of its largest element) and timed only if it agrees: the median and min of 15
steps after 3 warm-up steps, in each of 3 rounds (the formulations in a rotated order each round);
the table reports each formulation's best round, and `cores`, the process CPU time over the wall
time while it was timed (1 means one thread did the work, or another process held the other core).

Columns: `× roofline` is the time over 28 bytes/param at the bandwidth of `_machine.probe_bandwidth`
(a triad, whose write-allocate traffic is not counted), `bytes/param` what the median time moves at
that bandwidth; `× stream` is the time over 28 bytes/param at the bandwidth of the in-place stream
row, which is the better yardstick for in-place updates (no write-allocate: every line written was
just read). The HLO column counts, in the compiled step, kernels (fusions, scalar ones included),
while loops, and copies of arrays of >= 1024 elements.

Run from the repository root:

    python -m benchmarks.one_pass            # the large tree, 3 rounds: about 2 min on 2 cores
    python -m benchmarks.one_pass --quick    # 2 leaves, 1 round, smaller bandwidth probe: under 30 s
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import gradchain as gc
from benchmarks._machine import probe_bandwidth
from benchmarks._measure import RepeatPlan, on_device, time_steps
from benchmarks._trees import Arrays, TreeSpec, make_arrays

LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 1e-2
IDEAL_BYTES = 28  # per float32 param: read p, g, mu, nu; write p, mu, nu
STREAM_BYTES = 12  # the reference stream p += c * g: read p, g; write p
CHUNKS = (16_384, 65_536, 262_144)
DEFAULT_CHUNK = 16_384
CHECK_STEPS = 3
RTOL = 1e-5  # params after CHECK_STEPS steps, relative to the leaf's largest magnitude
# mu and nu, likewise. Looser than RTOL because gradchain keeps b2 as a float32 hyperparameter:
# 1 - float32(0.999) = 0.00099998713 is 1.3e-5 below the 0.001 that optax and `plain` use. A wrong
# chunk or a moment written to the wrong place is an O(1) error.
MOMENTS_RTOL = 1e-4
STEP_RTOL = 1e-3  # the params' change over CHECK_STEPS steps, relative to its largest element
PLAN = RepeatPlan(warmup=3, target_s=0.0, min_steps=15, max_steps=15)
BIG_COPY_ELEMENTS = 1024

Tree = dict[str, jax.Array]


class AdamState(NamedTuple):
    """The state of the hand-written formulations: the step count and one moment per leaf."""

    count: jax.Array
    mu: Tree
    nu: Tree


# ---------------------------------------------------------------------------------------------------
# The math, once: what every hand-written formulation computes for an array or a chunk of one.


def new_moments(g: jax.Array, mu: jax.Array, nu: jax.Array) -> tuple[jax.Array, jax.Array]:
    return B1 * mu + (1 - B1) * g, B2 * nu + (1 - B2) * g * g


def new_params(p: jax.Array, mu: jax.Array, nu: jax.Array, c1: jax.Array, c2: jax.Array) -> jax.Array:
    """AdamW's params from the new moments; `c1`, `c2` are the bias corrections 1 - b^t."""
    return p - LR * ((mu / c1) / (jnp.sqrt(nu / c2) + EPS) + WD * p)


def step_scalars(count: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The new count, both bias corrections, and an int32 zero that XLA cannot prove to be zero.

    `min(count, 0)` is 0 at run time (the count is >= 1), but the compiler cannot fold it: an index
    offset by it keeps XLA from simplifying `dynamic_slice(dynamic_update_slice(x, u, i), i)` to `u`.
    """
    count = count + 1
    t = count.astype(jnp.float32)
    return count, 1 - B1**t, 1 - B2**t, jnp.minimum(count, 0)


def init_state(params: Tree) -> AdamState:
    def zeros() -> Tree:  # distinct buffers for mu and nu: both are donated
        return {k: jnp.zeros_like(p) for k, p in params.items()}

    return AdamState(jnp.zeros((), jnp.int32), zeros(), zeros())


def plain_step(params: Tree, state: AdamState, grads: Tree) -> tuple[Tree, AdamState]:
    """(c) The textbook step, leaf by leaf: XLA makes three fusions per leaf of it."""
    count, c1, c2, _ = step_scalars(state.count)
    out, mu, nu = {}, {}, {}
    for k, p in params.items():
        mu[k], nu[k] = new_moments(grads[k], state.mu[k], state.nu[k])
        out[k] = new_params(p, mu[k], nu[k], c1, c2)
    return out, AdamState(count, mu, nu)


# ---------------------------------------------------------------------------------------------------
# One pass per leaf: a loop over chunks, updated in place.

Carry = tuple[jax.Array, jax.Array, jax.Array]  # flat p, mu, nu of one leaf
ChunkUpdate = Callable[[Carry, jax.Array, Any, int, jax.Array, jax.Array, jax.Array], Carry]


def _chunk_update_first(carry: Carry, g, start, size: int, c1, c2, zero) -> Carry:
    """Update `size` elements from `start`: the params first, then the moments.

    XLA fuses the moments into the params' fusion (it recomputes them from the old mu and nu rather
    than reading them back), so that fusion reads the old moments. Written first, it reads them before
    the moments' in-place writes; the moments' indices are then made to depend on one element read
    back from the written params, so XLA schedules their writes after it and needs no copy. (With the
    three writes independent, as in `_chunk_naive`, XLA copies mu and nu whole each iteration;
    `lax.optimization_barrier` on the new moments does not stop the recomputation on CPU.)
    """
    p, mu, nu = carry

    def chunk(x, at):
        return lax.dynamic_slice(x, (at,), (size,))

    m, v = new_moments(chunk(g, start), chunk(mu, start), chunk(nu, start))
    p = lax.dynamic_update_slice(p, new_params(chunk(p, start), m, v, c1, c2), (start,))
    written = lax.bitcast_convert_type(lax.dynamic_slice(p, (start + zero,), (1,))[0], jnp.int32)
    after = start + written * zero  # == start, but known only once the params chunk is written
    m, v = new_moments(chunk(g, after), chunk(mu, after), chunk(nu, after))
    return p, lax.dynamic_update_slice(mu, m, (after,)), lax.dynamic_update_slice(nu, v, (after,))


def _chunk_moments_first(carry: Carry, g, start, size: int, c1, c2, zero) -> Carry:
    """Update the moments in place, then the params from the new moments read back from mu and nu."""
    p, mu, nu = carry

    def chunk(x, at):
        return lax.dynamic_slice(x, (at,), (size,))

    m, v = new_moments(chunk(g, start), chunk(mu, start), chunk(nu, start))
    mu, nu = lax.dynamic_update_slice(mu, m, (start,)), lax.dynamic_update_slice(nu, v, (start,))
    back = start + zero  # without the runtime zero XLA reads m, v, i.e. recomputes them from the old mu, nu
    p = lax.dynamic_update_slice(p, new_params(chunk(p, start), chunk(mu, back), chunk(nu, back), c1, c2), (start,))
    return p, mu, nu


def _chunk_naive(carry: Carry, g, start, size: int, c1, c2, zero) -> Carry:
    """The loop body as first written: three independent in-place writes. XLA copies mu and nu."""
    del zero
    p, mu, nu = carry

    def chunk(x):
        return lax.dynamic_slice(x, (start,), (size,))

    m, v = new_moments(chunk(g), chunk(mu), chunk(nu))
    p = lax.dynamic_update_slice(p, new_params(chunk(p), m, v, c1, c2), (start,))
    return p, lax.dynamic_update_slice(mu, m, (start,)), lax.dynamic_update_slice(nu, v, (start,))


CHUNK_UPDATES: dict[str, ChunkUpdate] = {
    "update first": _chunk_update_first,
    "moments first": _chunk_moments_first,
    "naive": _chunk_naive,
}


def one_pass_leaf(p, g, mu, nu, c1, c2, zero, *, chunk: int, update: ChunkUpdate = _chunk_update_first) -> Carry:
    """One leaf in chunks of `chunk` elements: a `fori_loop` over the full chunks, then the tail."""
    shape = p.shape
    p, g, mu, nu = (x.reshape(-1) for x in (p, g, mu, nu))
    full, tail = divmod(p.size, chunk)
    carry = (p, mu, nu)
    if full:
        carry = lax.fori_loop(0, full, lambda i, c: update(c, g, i * chunk, chunk, c1, c2, zero), carry)
    if tail:
        carry = update(carry, g, full * chunk, tail, c1, c2, zero)
    p, mu, nu = (x.reshape(shape) for x in carry)
    return p, mu, nu


def one_pass_step(chunk: int, order: str = "update first") -> Callable[..., tuple[Tree, AdamState]]:
    """(d) The whole step: `one_pass_leaf` on every leaf."""
    update = CHUNK_UPDATES[order]

    def step(params: Tree, state: AdamState, grads: Tree) -> tuple[Tree, AdamState]:
        count, c1, c2, zero = step_scalars(state.count)
        out, mu, nu = {}, {}, {}
        for k, p in params.items():
            out[k], mu[k], nu[k] = one_pass_leaf(
                p, grads[k], state.mu[k], state.nu[k], c1, c2, zero, chunk=chunk, update=update
            )
        return out, AdamState(count, mu, nu)

    return step


# ---------------------------------------------------------------------------------------------------
# Params and moments stored together: blocks of shape (3, C) holding C params, their mu and their nu.


def to_blocks(params: Arrays, chunk: int) -> dict[str, np.ndarray]:
    """Each leaf as an (n_blocks, 3, chunk) array [p; mu; nu] (moments 0), zero-padded to whole blocks."""
    out = {}
    for k, p in params.items():
        flat = _padded(p, chunk)
        out[k] = np.stack([flat, np.zeros_like(flat), np.zeros_like(flat)], axis=1)
    return out


def grads_to_blocks(grads: Arrays, chunk: int) -> dict[str, np.ndarray]:
    return {k: _padded(g, chunk) for k, g in grads.items()}


def _padded(x: np.ndarray, chunk: int) -> np.ndarray:
    flat = x.reshape(-1)
    flat = np.concatenate([flat, np.zeros(-flat.size % chunk, flat.dtype)])
    return flat.reshape(-1, chunk)


def from_blocks(blocks: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, dict[str, np.ndarray]]:
    """`{"params": ..., "mu": ..., "nu": ...}` from the (n_blocks, 3, chunk) arrays."""
    out: dict[str, dict[str, np.ndarray]] = {"params": {}, "mu": {}, "nu": {}}
    for k, shape in shapes.items():
        b = np.asarray(blocks[k])
        for row, name in enumerate(out):
            out[name][k] = b[:, row].reshape(-1)[: math.prod(shape)].reshape(shape)
    return out


def _block_update(block: jax.Array, g: jax.Array, c1, c2) -> jax.Array:
    # `where` on the row index rather than `jnp.stack`: XLA emits the concatenate inside the in-place
    # update as scalar code (no <8 x float> in its LLVM IR), 1.5x slower still.
    p, mu, nu = block[:, 0], block[:, 1], block[:, 2]
    m, v = new_moments(g, mu, nu)
    row = lax.broadcasted_iota(jnp.int32, block.shape, 1)
    return jnp.where(row == 0, new_params(p, m, v, c1, c2)[:, None], jnp.where(row == 1, m[:, None], v[:, None]))


def blocks_loop_step(blocks: Tree, count: jax.Array, grads: Tree) -> tuple[Tree, jax.Array]:
    """(e) A loop over the blocks: one fusion per iteration reads a (3, C) block and g, writes it in place."""
    count, c1, c2, _ = step_scalars(count)
    out = {}
    for k, b in blocks.items():
        g, size = grads[k], b.shape[2]

        def body(i, b, g=g, size=size):
            block = lax.dynamic_slice(b, (i, 0, 0), (1, 3, size))
            new = _block_update(block, lax.dynamic_slice(g, (i, 0), (1, size)), c1, c2)
            return lax.dynamic_update_slice(b, new, (i, 0, 0))

        out[k] = lax.fori_loop(0, b.shape[0], body, b)
    return out, count


def blocks_fused_step(blocks: Tree, count: jax.Array, grads: Tree) -> tuple[Tree, jax.Array]:
    """(e) One fusion over each whole block buffer: split across the cores, but it writes a new buffer."""
    count, c1, c2, _ = step_scalars(count)
    return {k: _block_update(b, grads[k], c1, c2) for k, b in blocks.items()}, count


# ---------------------------------------------------------------------------------------------------
# The formulations, behind one interface.


@dataclasses.dataclass
class Formulation:
    """One way to write the step, with what it takes to feed it and to read its result back.

    `init(params) -> (params, state)` and `put_grads(grads)` place the numpy trees as the step wants
    them; `unpack(params, state)` returns `{"params": ..., "mu": ..., "nu": ...}` numpy trees (mu and
    nu may be missing); `timed=False` compiles and checks it but does not time it.
    """

    name: str
    step: Callable[..., tuple[Any, Any]]
    init: Callable[[Arrays], tuple[Any, Any]]
    put_grads: Callable[[Arrays], Any]
    unpack: Callable[[Any, Any], dict[str, dict[str, np.ndarray]]]
    bytes_per_param: int = IDEAL_BYTES
    timed: bool = True
    note: str = ""


def _tree_unpack(params: Any, state: Any) -> dict[str, dict[str, np.ndarray]]:
    """Params and, from any state holding `mu` and `nu` fields (optax's, gradchain's, ours), the moments."""
    out: dict[str, dict[str, np.ndarray]] = {"params": {k: np.asarray(v) for k, v in params.items()}}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        names = [getattr(key, "name", None) for key in path]
        moment = next((n for n in names if n in ("mu", "nu")), None)
        if moment is not None and isinstance(path[-1], jax.tree_util.DictKey):
            out.setdefault(moment, {})[path[-1].key] = np.asarray(leaf)
    return out


def tree_formulation(name: str, step: Callable, make_state: Callable, **kwargs: Any) -> Formulation:
    """A formulation on the params tree itself, on the default device; `make_state(params)` is its state."""
    device = jax.devices()[0]

    def init(params: Arrays) -> tuple[Tree, Any]:
        p = on_device(params, device)
        return p, make_state(p)

    return Formulation(name, step, init, lambda g: on_device(g, device), _tree_unpack, **kwargs)


def library_step(tx: Any, apply_updates: Callable) -> Callable:
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    return step


def two_device_formulation(name: str, local_step: Callable) -> Formulation | None:
    """`local_step` under `shard_map` over two host devices, each leaf split along its first axis.

    None when JAX has a single device (the flag that makes two must be set before JAX starts).
    """
    if len(jax.devices()) < 2:
        return None
    mesh = Mesh(np.array(jax.devices()[:2]), ("cores",))
    split, whole = NamedSharding(mesh, P("cores")), NamedSharding(mesh, P())
    specs = (P("cores"), AdamState(P(), P("cores"), P("cores")), P("cores"))
    step = jax.shard_map(local_step, mesh=mesh, in_specs=specs, out_specs=specs[:2], check_vma=False)

    def put(arrays: Arrays) -> Tree:
        return {k: jax.device_put(jnp.array(v), split) for k, v in arrays.items()}

    def init(params: Arrays) -> tuple[Tree, AdamState]:
        p = put(params)
        state = init_state(p)
        return p, state._replace(count=jax.device_put(state.count, whole))

    return Formulation(name, step, init, put, _tree_unpack)


def blocks_formulation(name: str, step: Callable, chunk: int, shapes: dict[str, tuple[int, ...]]) -> Formulation:
    device = jax.devices()[0]

    def init(params: Arrays) -> tuple[Tree, jax.Array]:
        return on_device(to_blocks(params, chunk), device), jnp.zeros((), jnp.int32)

    return Formulation(
        name,
        step,
        init,
        lambda g: on_device(grads_to_blocks(g, chunk), device),
        lambda blocks, count: from_blocks(blocks, shapes),
        note="params stored with the moments",
    )


def stream_step(params: Tree, state: jax.Array, grads: Tree) -> tuple[Tree, jax.Array]:
    return {k: p - LR * grads[k] for k, p in params.items()}, state


def formulations(shapes: dict[str, tuple[int, ...]], chunks: tuple[int, ...] = CHUNKS) -> list[Formulation]:
    """Every formulation measured, `plain` first (it is the reference).

    The variants of the one-pass loop use 16K chunks (the fastest on a 2-core AMD EPYC) where
    `chunks` has them, else the first chunk size; the naive loop the last (the fewest iterations,
    each copying two whole leaves).
    """
    mid = DEFAULT_CHUNK if DEFAULT_CHUNK in chunks else chunks[0]
    forms = [
        tree_formulation("plain", plain_step, init_state),
        tree_formulation("gradchain", *_library(gc.adamw(LR, weight_decay=WD), gc.apply_updates)),
        tree_formulation(
            "optax", *_library(optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD), optax.apply_updates)
        ),
        *(tree_formulation(f"one-pass {_k(c)}", one_pass_step(c), init_state) for c in chunks),
        tree_formulation(f"one-pass {_k(mid)}, moments first", one_pass_step(mid, "moments first"), init_state),
        tree_formulation(
            f"one-pass {_k(chunks[-1])}, naive",
            one_pass_step(chunks[-1], "naive"),
            init_state,
            timed=False,
            note="copies mu and nu whole every iteration: not timed",
        ),
        two_device_formulation(f"one-pass {_k(mid)}, 2 devices", one_pass_step(mid)),
        two_device_formulation("plain, 2 devices", plain_step),
        blocks_formulation(f"combined [p;mu;nu] {_k(mid)} loop", blocks_loop_step, mid, shapes),
        blocks_formulation(f"combined [p;mu;nu] {_k(mid)} one fusion", blocks_fused_step, mid, shapes),
        tree_formulation(
            "stream p += c*g",
            stream_step,
            lambda p: jnp.zeros((), jnp.int32),
            bytes_per_param=STREAM_BYTES,
            note="not AdamW: 12 bytes/param, for scale",
        ),
    ]
    return [f for f in forms if f is not None]


def _library(tx: Any, apply_updates: Callable) -> tuple[Callable, Callable]:
    return library_step(tx, apply_updates), tx.init


def _k(chunk: int) -> str:
    return f"{chunk // 1024}K" if chunk % 1024 == 0 else str(chunk)


# ---------------------------------------------------------------------------------------------------
# Checking, HLO statistics, timing.


def compile_step(form: Formulation, params: Any, state: Any, grads: Any) -> Any:
    return jax.jit(form.step, donate_argnums=(0, 1)).lower(params, state, grads).compile()


def run_steps(compiled: Any, params: Any, state: Any, grads: Any, steps: int) -> tuple[Any, Any]:
    for _ in range(steps):
        params, state = compiled(params, state, grads)
    return jax.block_until_ready((params, state))


def errors(got: dict[str, dict[str, np.ndarray]], want: dict[str, dict[str, np.ndarray]], start: Arrays) -> dict:
    """Worst per-leaf error of params, mu, nu (relative to the leaf's largest magnitude) and of the change of p."""
    out = {}
    for name in ("params", "mu", "nu"):
        if name in got:
            out[name] = max(_rel(got[name][k], w) for k, w in want[name].items())
    out["step"] = max(_rel(got["params"][k] - start[k], w - start[k]) for k, w in want["params"].items())
    return out


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return math.inf
    scale = float(np.max(np.abs(want), initial=0.0))
    diff = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def agrees(errs: dict[str, float]) -> bool:
    limits = {"params": RTOL, "mu": MOMENTS_RTOL, "nu": MOMENTS_RTOL, "step": STEP_RTOL}
    return all(errs[k] < limit for k, limit in limits.items() if k in errs)


_COPY = re.compile(r"= \w+\[([\d,]+)\]\S* copy\(")


def hlo_stats(compiled: Any) -> dict[str, int]:
    """Kernels (loop fusions), while loops and copies of arrays of >= 1024 elements in the compiled step."""
    text = compiled.as_text()
    copies = sum(math.prod(int(d) for d in m.group(1).split(",")) >= BIG_COPY_ELEMENTS for m in _COPY.finditer(text))
    return {
        "fusions": len(re.findall(r" fusion\(", text)),
        "whiles": len(re.findall(r" while\(", text)),
        "copies": copies,
    }


@dataclasses.dataclass
class Row:
    name: str
    bytes_per_param: int
    note: str = ""
    hlo: dict[str, int] | None = None
    errors: dict[str, float] | None = None
    status: str = "ok"
    medians: list[float] = dataclasses.field(default_factory=list)
    mins: list[float] = dataclasses.field(default_factory=list)
    cores: list[float] = dataclasses.field(default_factory=list)  # process CPU time / wall time while timed


def measure(form: Formulation, params: Arrays, grads: Arrays, reference: dict, row: Row, cache: dict) -> None:
    """Check (first round) and time one formulation; appends this round's median and min to `row`."""
    p, s = form.init(params)
    g = form.put_grads(grads)
    if form.name not in cache:
        cache[form.name] = compile_step(form, p, s, g)
        row.hlo = hlo_stats(cache[form.name])
    compiled = cache[form.name]
    if row.errors is None and form.bytes_per_param == IDEAL_BYTES:
        start = time.perf_counter()
        p, s = run_steps(compiled, p, s, g, CHECK_STEPS)
        row.errors = errors(form.unpack(p, s), reference, params)
        if not agrees(row.errors):
            row.status = "MISMATCH"
        elif not form.timed:
            row.note += f" (3 steps took {time.perf_counter() - start:.1f} s)"
    if row.status != "ok" or not form.timed:
        return
    state = [p, s]

    def step() -> None:
        state[0], state[1] = jax.block_until_ready(compiled(state[0], state[1], g))

    cpu_start, wall_start = time.process_time(), time.perf_counter()
    timing = time_steps(step, PLAN)
    row.cores.append((time.process_time() - cpu_start) / (time.perf_counter() - wall_start))
    row.medians.append(timing["median_ms"])
    row.mins.append(timing["min_ms"])


def reference_after(params: Arrays, grads: Arrays, steps: int) -> dict[str, dict[str, np.ndarray]]:
    """`plain` after `steps` steps, as float64 numpy trees: what every AdamW formulation must reproduce."""
    form = tree_formulation("plain", plain_step, init_state)
    p, s = form.init(params)
    p, s = run_steps(jax.jit(plain_step), p, s, form.put_grads(grads), steps)
    return {name: {k: v.astype(np.float64) for k, v in tree.items()} for name, tree in form.unpack(p, s).items()}


# ---------------------------------------------------------------------------------------------------
# The run and its table.


def run(tree: TreeSpec, rounds: int, bandwidth_mib: int, bandwidth_repeats: int, chunks=CHUNKS) -> dict[str, Any]:
    load_start = os.getloadavg()
    device = jax.devices()[0]
    print(f"tree {tree.name}: {tree.num_leaves} leaves, {tree.num_params:,} params; load {load_start}", flush=True)
    bandwidth = probe_bandwidth(bandwidth_mib * 2**20, bandwidth_repeats, device)
    print(f"bandwidth: {bandwidth}", flush=True)
    params, grads = make_arrays(tree)
    reference = reference_after(params, grads, CHECK_STEPS)
    forms = formulations(tree.shapes, chunks)
    rows = {f.name: Row(f.name, f.bytes_per_param, f.note) for f in forms}
    cache: dict[str, Any] = {}
    for r in range(rounds):
        order = forms[r % len(forms) :] + forms[: r % len(forms)]
        for form in order:
            measure(form, params, grads, reference, rows[form.name], cache)
            row = rows[form.name]
            shown = f"{row.medians[-1]:.1f} ms" if row.medians and len(row.medians) == r + 1 else row.status
            print(f"  round {r + 1}: {form.name:38s} {shown}", flush=True)
    return {
        "tree": tree,
        "bandwidth": bandwidth,
        "rows": list(rows.values()),
        "load": (load_start, os.getloadavg()),
    }


def table(result: dict[str, Any]) -> str:
    """The markdown report. Ratios are against each row's own ideal bytes (28/param for AdamW, 12 for the stream).

    `× roofline` uses the probe's bandwidth; `× stream` the bandwidth of the in-place stream row, which
    has no write-allocate traffic either (every line written was just read), unlike the probe's triad.
    """
    tree, gbs = result["tree"], result["bandwidth"]["gbs"]
    roofline_ms = IDEAL_BYTES * tree.num_params / (gbs * 1e9) * 1e3
    stream = next((r for r in result["rows"] if r.bytes_per_param == STREAM_BYTES and r.medians), None)
    stream_gbs = STREAM_BYTES * tree.num_params / (min(stream.medians) * 1e6) if stream else math.nan
    lines = [
        "| formulation | median ms | min ms | rounds (median ms) | cores | × roofline | bytes/param | × stream "
        "| HLO fusions / whiles / big copies | max rel. error p / mu / nu / Δp | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        hlo = "{fusions} / {whiles} / {copies}".format(**row.hlo) if row.hlo else ""
        errs = " / ".join(f"{row.errors[k]:.1e}" for k in ("params", "mu", "nu", "step")) if row.errors else ""
        if row.medians:
            best = min(row.medians)
            ideal_ms = row.bytes_per_param * tree.num_params / 1e6
            cells = [
                f"{best:.1f}",
                f"{min(row.mins):.1f}",
                " / ".join(f"{m:.1f}" for m in row.medians),
                f"{max(row.cores):.1f}",
                f"{best / (ideal_ms / gbs):.2f}×",
                f"{best * 1e6 * gbs / tree.num_params:.1f}",
                f"{best / (ideal_ms / stream_gbs):.2f}×",
            ]
        else:
            cells = [row.status if row.status != "ok" else "—", "", "", "", "", "", ""]
        lines.append(f"| {row.name} | {' | '.join(cells)} | {hlo} | {errs} | {row.note.strip()} |")
    load_start, load_end = result["load"]
    bw = result["bandwidth"]
    return "\n".join(
        [
            f"AdamW step on `{tree.name}` ({tree.num_leaves} leaves, {tree.num_params:,} float32 params), "
            f"best of {len(result['rows'][0].medians)} round(s) of the median of {PLAN.min_steps} steps.",
            f"Bandwidth probe: {bw}; roofline = {IDEAL_BYTES} bytes/param at {gbs} GB/s = {roofline_ms:.1f} ms.",
            f"In-place stream (`stream` row): {stream_gbs:.1f} GB/s; {IDEAL_BYTES} bytes/param at that rate = "
            f"{IDEAL_BYTES * tree.num_params / (stream_gbs * 1e6):.1f} ms.",
            f"Load average at start {_load(load_start)}, at end {_load(load_end)}.",
            "",
            *lines,
        ]
    )


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 leaves, 1 round, small bandwidth probe (< 30 s)")
    parser.add_argument("--rounds", type=int, default=None, help="repeats of the whole measurement (default 3)")
    parser.add_argument("--chunks", default=",".join(map(str, CHUNKS)), help="chunk sizes of the one-pass loop")
    args = parser.parse_args(argv)
    chunks = tuple(int(c) for c in args.chunks.split(","))
    tree = TreeSpec("large", 2 if args.quick else 8)
    rounds = args.rounds or (1 if args.quick else 3)
    result = run(tree, rounds, *((64, 3) if args.quick else (256, 10)), chunks=chunks)
    print()
    print(table(result))


def _two_host_devices() -> None:
    """Ask XLA for two CPU devices (one per core), for the `2 devices` formulation, unless told otherwise.

    XLA reads the flag when JAX first touches a device, so this must run before anything does.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()


if __name__ == "__main__":
    _two_host_devices()
    main()
