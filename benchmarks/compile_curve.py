"""How compilation grows with the number of leaves: `python -m benchmarks.compile_curve [--max-leaves N] [--quick]`.

For AdamW on trees of tiny leaves (shapes cycling through (1,), (3,), (8,), (4, 4), (16,)), and for
gradchain (default, pack=True, pack=False, packed params) and optax: the size of the step's jaxpr
(equations, nested ones included), the time to lower it and the time to compile it. Each
(variant, leaf count) runs in its own subprocess with a time and memory limit, so that a blow-up
is a `timeout` or `killed` cell, not a crashed run. Writes `<out>/compile_curve-<name>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax

from benchmarks import _report
from benchmarks._isolate import default_memory_limit, run_isolated
from benchmarks._machine import machine_info
from benchmarks._measure import (
    GRADCHAIN_VARIANTS,
    OPTAX_VARIANT,
    Unavailable,
    Variant,
    compile_step,
    device_trees,
    jax_transformation,
    step_function,
)
from benchmarks._optimizers import OPTIMIZERS
from benchmarks._trees import TreeSpec, workload

LEAF_COUNTS = (10, 100, 1_000, 2_000, 5_000, 10_000, 20_000)
QUICK_LEAF_COUNTS = (10, 100, 1_000)
VARIANTS = (*GRADCHAIN_VARIANTS, OPTAX_VARIANT)
OPTIMIZER = "adamw"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
METRICS = {"eqns": "jaxpr equations", "lower_s": "lowering s", "compile_s": "compile s"}


def count_eqns(jaxpr: Any) -> int:
    """Equations of a jaxpr, counting those of nested jaxprs (pjit, cond, scan, custom_jvp, ...) too."""
    return sum(1 + sum(count_eqns(sub) for sub in _nested(eqn.params.values())) for eqn in jaxpr.eqns)


def _nested(values: Any) -> Iterator[Any]:
    for value in values:
        if isinstance(value, tuple | list):
            yield from _nested(value)
        elif hasattr(value, "eqns"):  # a Jaxpr
            yield value
        elif hasattr(getattr(value, "jaxpr", None), "eqns"):  # a ClosedJaxpr
            yield value.jaxpr


def measure_compile(variant: list[str], num_leaves: int, optimizer: str = OPTIMIZER) -> dict[str, Any]:
    """One cell of the curve, in this process: jaxpr size, lowering and compile time of a step."""
    row: dict[str, Any] = {"variant": " ".join(variant), "leaves": num_leaves}
    try:
        tx, apply_updates, packed = jax_transformation(OPTIMIZERS[optimizer], Variant(*variant))
    except Unavailable as e:
        return {**row, "status": "skipped", "note": str(e)}
    params, grads, pack_s = device_trees(workload(TreeSpec("tiny", num_leaves)), packed)
    state = jax.eval_shape(tx.init, params)
    eqns = count_eqns(jax.make_jaxpr(step_function(tx, apply_updates))(params, state, grads).jaxpr)
    lower_s, compile_s, _ = compile_step(tx, apply_updates, params, state, grads)
    times = {"lower_s": lower_s, "compile_s": compile_s, "pack_s": pack_s}  # pack_s: gc.pack, packed params only
    return {**row, "status": "ok", "note": "", "eqns": eqns, **times}


def run_curve(
    leaf_counts: Sequence[int],
    variants: Sequence[Variant] = VARIANTS,
    *,
    timeout_s: float = 120.0,
    memory_limit: int | None = None,
    log: Callable[[str], None] = _report.print_now,
) -> dict[str, Any]:
    """Every (variant, leaf count) in its own subprocess; the report as a dict.

    Once a variant has timed out or been killed, its larger leaf counts are not run (they would
    only fail the same way, each costing the full time limit) and say so.
    """
    start = time.perf_counter()
    limit = memory_limit or default_memory_limit()
    rows = []
    for variant in variants:
        failure = None
        for n in sorted(leaf_counts):
            if failure is not None:
                rows.append({"variant": variant.label, "leaves": n, "status": "skipped", "note": failure})
                continue
            kwargs = {"variant": [variant.library, variant.name], "num_leaves": n}
            out = run_isolated(
                "benchmarks.compile_curve:measure_compile", kwargs, timeout_s=timeout_s, memory_limit=limit
            )
            row = out if "leaves" in out else {"variant": variant.label, "leaves": n, **out}
            outcome = (
                f"compile {row['compile_s']:.2f} s" if row["status"] == "ok" else f"{row['status']}: {row['note']}"
            )
            log(f"  {row['variant']} at {n:,} leaves: {outcome}")
            rows.append(row)
            if row["status"] in ("timeout", "killed"):
                failure = f"{variant.label}: not run above {n:,} leaves, where it was {row['status']} ({row['note']})"
    return {
        "machine": machine_info(jax.devices()[0]),
        "config": {"optimizer": OPTIMIZER, "leaf_counts": list(leaf_counts), "timeout_s": timeout_s},
        "memory_limit_gib": round(limit / 2**30, 1),
        "results": rows,
        "wall_s": time.perf_counter() - start,
    }


def _cell(row: dict[str, Any] | None, metric: str) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return "—" if row["status"] == "skipped" else row["status"]
    value = row[metric]
    return str(value) if metric == "eqns" else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    rows = report["results"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    counts = list(dict.fromkeys(r["leaves"] for r in rows))
    by_key = {(r["variant"], r["leaves"]): r for r in rows}
    m = report["machine"]
    lines = [
        f"# Compile time against leaf count ({report['config']['optimizer']}), {m['date']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores_usable']} cores, {m['ram_gb']} GB RAM; jax {m['versions']['jax']}, "
        f"optax {m['versions']['optax']}.",
        f"- Each cell in its own process, limits {report['config']['timeout_s']:g} s and "
        f"{report['memory_limit_gib']} GiB. Wall time {report['wall_s']:.0f} s.",
    ]
    notes = sorted({r["note"] for r in rows if r["status"] == "skipped"})  # where each variant stopped, and why
    lines += [f"- {note}" for note in notes]
    for metric, title in METRICS.items():
        cells = ([f"{n:,}", *(_cell(by_key.get((v, n)), metric) for v in variants)] for n in counts)
        lines += ["", f"## {title}", "", _report.table(["leaves", *variants], cells)]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"compile_curve-{name}.json", directory / f"compile_curve-{name}.md"
    json_path.write_text(json.dumps(report, indent=1))
    md_path.write_text(markdown(report))
    return json_path, md_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_curve", description=__doc__.splitlines()[0])
    parser.add_argument("--max-leaves", type=int, help="largest leaf count to measure")
    parser.add_argument("--quick", action="store_true", help=f"leaf counts {QUICK_LEAF_COUNTS}, 60 s limit")
    parser.add_argument("--timeout", type=float, help="limit in s for one cell (default 120, quick 60)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (default: %(default)s)")
    parser.add_argument("--name", help="file name stem (default: a UTC timestamp)")
    args = parser.parse_args(argv)
    counts = [n for n in (QUICK_LEAF_COUNTS if args.quick else LEAF_COUNTS) if n <= (args.max_leaves or n)]
    report = run_curve(counts, timeout_s=args.timeout or (60.0 if args.quick else 120.0))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    paths = write(report, args.out, args.name or stamp)
    print(markdown(report))
    print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
