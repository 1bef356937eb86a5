"""Two libraries side by side on one step: interleaved round-robin timing, AOT compile time.

Used by `small_step` and `train_step`, whose steps take microseconds to milliseconds: there, a
variant timed in one long run after another would be compared across different moments of a
shared machine (another process, the clock speed, a garbage collection), and the noise would
exceed the difference being measured. Alternating the variants in short blocks, many times, and
taking medians spreads those moments over all of them alike.
"""

from __future__ import annotations

import argparse
import gc  # Python's garbage collector (gradchain is not imported in this module)
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._measure import step_function

# One step of a variant, which returns only once its result is ready (`jax.block_until_ready`).
Step = Callable[[], object]


def time_interleaved(steps: Mapping[str, Step], *, rounds: int, block: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of every timed step, per variant: `rounds` rounds of `block` steps of each variant in turn.

    Every variant first runs `warmup` untimed steps (its compilation, the first touch of donated
    buffers). The order of the variants rotates every round, so that none always runs right after
    the same other one. Python's garbage collector is paused while the rounds run and collects
    between them: a collection inside a timed step would charge its pause to whichever variant it hit.

    Args:
        steps: `name -> step`; each step must block until its outputs are ready.
        rounds: how many times every variant gets a block.
        block: consecutive steps of one variant per round, each timed on its own.
        warmup: untimed steps of each variant before the first round.

    Returns:
        `name -> list of rounds * block step times in seconds`, in the order they ran.
    """
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    was_enabled = gc.isenabled()
    # Everything alive now (jax, torch, the models) moves to a generation that is never collected, so
    # that the collection between rounds looks at what the steps allocated only: a full collection
    # of a process holding jax and torch takes ~0.1 s, longer than many rounds.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                step, out = steps[name], samples[name]
                for _ in range(block):
                    start = time.perf_counter()
                    step()
                    out.append(time.perf_counter() - start)
            gc.collect()
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
    return samples


def median_us(samples: Sequence[float]) -> float:
    """The median of step times given in seconds, in microseconds."""
    return 1e6 * statistics.median(samples)


def compile_seconds(
    builds: Mapping[str, Callable[[], tuple[Callable, tuple[Any, ...]]]],
    *,
    donate_argnums: tuple[int, ...],
    repeats: int,
) -> dict[str, dict[str, float]]:
    """Lowering and XLA compilation time of each variant's step, median of `repeats`, variants interleaved.

    `builds[name]()` returns a *new* step function object and its example arguments: new each
    time, so that jax's caches keyed on the function (tracing, lowering, the compiled executable)
    cannot hide a cost. What stays warm between repeats is shared by every variant alike (the
    jaxprs of jax's own jitted helpers), which is why the repeats are interleaved.

    Returns:
        `name -> {"lower_s", "compile_s", "total_s"}` (medians; `total_s` is the median of the sums).
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
    for _ in range(repeats):
        for name, build in builds.items():
            fn, args = build()
            start = time.perf_counter()
            lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
            lowered_at = time.perf_counter()
            lowered.compile()
            times[name].append((lowered_at - start, time.perf_counter() - lowered_at))
    return {
        name: {
            "lower_s": statistics.median(t[0] for t in pairs),
            "compile_s": statistics.median(t[1] for t in pairs),
            "total_s": statistics.median(t[0] + t[1] for t in pairs),
        }
        for name, pairs in times.items()
    }


class UpdateStep:
    """`tx.update` + `apply_updates` in one `jax.jit` step, params and state donated, on fixed grads.

    Calling it runs one step and waits for it. The params start as copies of `params` (donation
    consumes its inputs); `start` keeps them, keyed by path, for `_measure.agreement`.
    """

    def __init__(self, tx: Any, apply_updates: Callable, params: Any, grads: Any) -> None:
        self.start = path_arrays(params)
        self._params = jax.tree.map(jnp.array, params)
        # Jitted: run eagerly, `init` would compile each of its small ops on its own (seconds on CPU).
        self._state = jax.jit(tx.init)(self._params)
        self._grads = grads
        self._step = jax.jit(step_function(tx, apply_updates), donate_argnums=(0, 1))

    def __call__(self) -> None:
        self._params, self._state = self._step(self._params, self._state, self._grads)
        # The outputs of one execution become ready together, so waiting on the params waits for the
        # state too; waiting on every leaf would charge a larger state a per-leaf cost of measuring.
        jax.block_until_ready(self._params)

    def params(self) -> dict[str, np.ndarray]:
        return path_arrays(self._params)

    def state_leaves(self) -> int:
        return len(jax.tree.leaves(self._state))


def path_arrays(tree: Any) -> dict[str, np.ndarray]:
    """`keystr(path) -> numpy copy` of every leaf: the form `_measure.agreement` compares."""
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def machine_lines(machine: dict[str, Any]) -> list[str]:
    """Markdown bullet lines for a `_machine.machine_info` record: what the numbers were measured on."""
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    load = ", ".join(f"{x:.1f}" for x in machine["load_average"])
    return [
        f"- Machine: {machine['cpu']}, {machine['cores_usable']} cores, {machine['ram_gb']} GB RAM; "
        f"JAX {machine['jax_backend']} ({machine['jax_device']}); torch threads {machine['torch_threads']}.",
        f"- Versions: {versions}.",
        f"- Date {machine['date']}; load average (1, 5, 15 min) at the start: {load}.",
    ]


def cli_main(description: str, run, markdown, quick, full, argv: list[str] | None = None) -> None:
    """The command line both benchmarks share: `--quick`, `--json PATH`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--json", type=Path, help="write the raw numbers (every step time) here")
    args = parser.parse_args(argv)
    report = run(quick if args.quick else full)
    print(markdown(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
