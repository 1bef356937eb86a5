"""gradchain, optax and torch.optim side by side: `python -m benchmarks.run [--quick] [--only large,mlp] ...`.

For each tree and optimizer: optax's one-step params (op by op) are the reference; every variant is
built, checked against them, and timed only if it agrees. Writes `<out>/<name>.json` and `.md` and
prints the markdown. See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from benchmarks import _report
from benchmarks._isolate import default_memory_limit, run_isolated
from benchmarks._machine import machine_info, probe_bandwidth
from benchmarks._measure import (
    ALL_VARIANTS,
    FULL_PLAN,
    GRADCHAIN_VARIANTS,
    QUICK_PLAN,
    RepeatPlan,
    Result,
    Variant,
    measure,
    reference_step,
    save_reference,
    variants_for,
)
from benchmarks._optimizers import OPTIMIZERS, OptimizerSpec
from benchmarks._trees import TreeSpec, Workload, workload

RESULTS_DIR = Path(__file__).resolve().parent / "results"
Log = Callable[[str], None]

# A tree with 20,000 leaves only shows compile time; a few steps are timed where it compiled.
TINY_PLAN = RepeatPlan(warmup=0, target_s=0.1, min_steps=3, max_steps=10)


@dataclasses.dataclass(frozen=True)
class TreeJob:
    """One tree: which variants run on it, how long each is timed, and whether JAX variants run isolated.

    `isolated`: each JAX variant runs in a subprocess with a time and memory limit, so that a
    compilation blow-up (optax at 20,000 leaves) is recorded as `timeout`/`killed`. There, once a
    variant has failed so, it is skipped for the optimizers after it (sgd, the cheapest, comes first).
    """

    tree: TreeSpec
    variants: tuple[Variant, ...] = ALL_VARIANTS
    plan: RepeatPlan = FULL_PLAN
    isolated: bool = False
    optimizers: tuple[str, ...] | None = None  # None: the suite's
    compile_only: bool = False  # isolated, and only compiled (`compile_curve.measure_compile`): no check, no steps


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    jobs: tuple[TreeJob, ...]
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    quick: bool = False
    bandwidth_mib: int = 256
    bandwidth_repeats: int = 10
    timeout_s: float = 60.0
    memory_limit: int = dataclasses.field(default_factory=default_memory_limit)
    notes: tuple[str, ...] = ()


def full_config(trees: Sequence[str] = ("large", "mlp", "small", "tiny")) -> SuiteConfig:
    jobs = {
        "large": TreeJob(TreeSpec.full("large")),
        "mlp": TreeJob(TreeSpec.full("mlp")),
        "small": TreeJob(TreeSpec.full("small")),
        "tiny": TreeJob(TreeSpec.full("tiny"), plan=TINY_PLAN, isolated=True),
    }
    return SuiteConfig(tuple(jobs[t] for t in trees))


QUICK_SMALL_LAYERS = 5
QUICK_MLP_LAYERS = 8
QUICK_OPTIMIZERS = ("adamw", "lion", "adafactor")  # not adam or sgd: adamw covers their code path
QUICK_NOTES = (
    "quick: `large` skipped; `mlp` shrunk to 8 layers (16 leaves); `small` shrunk to 5 layers (80 leaves, "
    "80K params); no Adam or SGD (AdamW covers their code path); "
    "steps timed for ~0.05 s (2 to 10 steps, no warm-up besides the checked step) instead of ~1 s (5 to 200, "
    "2 warm-ups); bandwidth triads best of 3 instead of 10.",
    "quick: `tiny` (20,000 leaves): gradchain's AdamW step on packed params is compiled only (no check against "
    "optax, whose op-by-op reference alone takes ~40 s at this size, and no steps), with a 20 s limit; with tree "
    "params (gradchain's other variants, optax) it takes minutes to compile (see "
    "`python -m benchmarks.compile_curve`); torch is not run.",
)


def quick_config(trees: Sequence[str] = ("mlp", "small", "tiny")) -> SuiteConfig:
    jobs = {
        "large": TreeJob(TreeSpec.full("large"), plan=QUICK_PLAN),  # only if asked for with --only
        "mlp": TreeJob(TreeSpec("mlp", QUICK_MLP_LAYERS), plan=QUICK_PLAN),
        "small": TreeJob(TreeSpec("small", QUICK_SMALL_LAYERS), plan=QUICK_PLAN),
        "tiny": TreeJob(TreeSpec.full("tiny"), GRADCHAIN_VARIANTS[3:], optimizers=("adamw",), compile_only=True),
    }
    return SuiteConfig(
        tuple(jobs[t] for t in trees),
        optimizers=QUICK_OPTIMIZERS,
        quick=True,
        bandwidth_repeats=3,
        timeout_s=20.0,
        notes=QUICK_NOTES,
    )


# ---------------------------------------------------------------------------------------------------
# Running


def run_suite(
    config: SuiteConfig, log: Log = _report.print_now, checkpoint: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run every job; the report as a dict (see `_report.markdown` for its layout).

    `checkpoint`, if given, receives the report so far after each tree, so that a run stopped
    part way (a time limit) still leaves the trees it finished.
    """
    start, load_at_start = time.perf_counter(), os.getloadavg()
    device = jax.devices()[0]
    outer_log = log

    def log(line: str) -> None:
        outer_log(f"[{time.perf_counter() - start:6.0f} s] {line}")

    def report() -> dict[str, Any]:
        return {
            "machine": {**machine_info(device), "load_average_at_start": load_at_start},
            "bandwidth": bandwidth,
            "config": _config_json(config),
            "trees": {job.tree.name: job.tree.summary() for job in config.jobs},
            "notes": [*config.notes, *_skip_notes(results)],
            "results": _report.annotate(results, ideal, bandwidth["gbs"]),
            "wall_s": time.perf_counter() - start,
        }

    log(f"bandwidth probe ({config.bandwidth_mib} MiB arrays) ...")
    bandwidth = probe_bandwidth(config.bandwidth_mib * 2**20, config.bandwidth_repeats, device)
    log(f"  {bandwidth}")
    results: list[Result] = []
    ideal: dict[tuple[str, str], int] = {}
    for job in config.jobs:
        log(f"tree {job.tree.name}: {job.tree.num_leaves} leaves, {job.tree.num_params:,} params")
        work = None if job.compile_only else workload(job.tree, device)
        failed: dict[Variant, str] = {}  # isolated variants that timed out or were killed, and where
        for name in _optimizers_for(job, config):
            spec = OPTIMIZERS[name]
            ideal[(job.tree.name, name)] = spec.ideal_bytes(job.tree.shapes.values())
            if work is None:
                results += [_compile_only(job, spec, variant, config, log) for variant in job.variants]
            else:
                results += _run_optimizer(job, spec, work, config, log, failed)
        del work
        gc.collect()
        if checkpoint is not None:
            checkpoint(report())
    return report()


def _optimizers_for(job: TreeJob, config: SuiteConfig) -> tuple[str, ...]:
    if job.optimizers is None:
        return config.optimizers
    return tuple(name for name in config.optimizers if name in job.optimizers)


def _run_optimizer(
    job: TreeJob, spec: OptimizerSpec, work: Workload, config: SuiteConfig, log: Log, failed: dict[Variant, str]
) -> list[Result]:
    work.reference = reference_step(spec, work)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        reference_path = save_reference(work.reference, tmp) if job.isolated else ""
        for variant in variants_for(spec, job.variants):
            if job.isolated and variant.library != "torch":
                result = _isolated(job, spec, variant, reference_path, failed, config)
            else:
                result = _guarded(spec, variant, work, job.plan)
            log(_progress(result))
            results.append(result)
    return results


def _guarded(spec: OptimizerSpec, variant: Variant, work: Workload, plan: RepeatPlan) -> Result:
    """`measure`, with an unexpected exception recorded as an `error` row instead of ending the run."""
    try:
        return measure(spec, variant, work, plan)
    except Exception as e:
        traceback.print_exc()
        note = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return Result(work.tree.name, spec.name, variant.library, variant.name, status="error", note=note)


def _isolated(
    job: TreeJob, spec: OptimizerSpec, variant: Variant, reference: str, failed: dict[Variant, str], config: SuiteConfig
) -> Result:
    row = Result(job.tree.name, spec.name, variant.library, variant.name)
    if variant in failed:
        row.status, row.note = "skipped", f"not retried: {failed[variant]}"
        return row
    kwargs = {
        "tree": [job.tree.kind, job.tree.size],
        "optimizer": spec.name,
        "variant": [variant.library, variant.name],
        "plan": dataclasses.asdict(job.plan),
        "reference": reference,
    }
    out = run_isolated(
        "benchmarks._measure:measure_isolated", kwargs, timeout_s=config.timeout_s, memory_limit=config.memory_limit
    )
    if "tree" in out:
        return Result(**out)
    row.status, row.note = out["status"], out["note"]
    if row.status in ("timeout", "killed"):
        failed[variant] = f"{row.status} on {spec.name} ({row.note})"
    return row


def _compile_only(job: TreeJob, spec: OptimizerSpec, variant: Variant, config: SuiteConfig, log: Log) -> Result:
    kwargs = {"variant": [variant.library, variant.name], "num_leaves": job.tree.size, "optimizer": spec.name}
    out = run_isolated(
        "benchmarks.compile_curve:measure_compile", kwargs, timeout_s=config.timeout_s, memory_limit=config.memory_limit
    )
    row = Result(job.tree.name, spec.name, variant.library, variant.name, status=out["status"], note=out["note"])
    if row.status == "ok":
        row.lower_s, row.compile_s, row.pack_s = out["lower_s"], out["compile_s"], out["pack_s"]
        row.status, row.note = "compiled", "compile time only: not checked, not stepped"
    log(_progress(row))
    return row


def _progress(r: Result) -> str:
    where = f"  [{r.tree} {r.optimizer}] {r.library} {r.variant}:"
    if r.status == "compiled":
        return f"{where} compile {r.lower_s + r.compile_s:.2f} s"
    if r.status != "ok":
        loud = "!!! MISMATCH !!! " if r.status == "mismatch" else ""
        return f"{where} {loud}{r.status} {r.note}"
    compile_s = "" if r.compile_s is None else f", compile {r.lower_s + r.compile_s:.2f} s"
    return f"{where} {r.median_ms:.3f} ms median of {r.steps}{compile_s}, params err {r.params_rel_err:.1e}"


def _skip_notes(results: list[Result]) -> list[str]:
    """One note per distinct reason a variant could not be built (an API not landed yet, typically)."""
    reasons: dict[str, set[str]] = {}
    for r in results:
        if r.status == "skipped" and r.library == "gradchain" and not r.note.startswith("not retried"):
            reasons.setdefault(r.note, set()).add(f"{r.optimizer} {r.variant}")
    return [f"skipped: {', '.join(sorted(where))}: {why}" for why, where in reasons.items()]


def _config_json(config: SuiteConfig) -> dict[str, Any]:
    return {
        "quick": config.quick,
        "optimizers": list(config.optimizers),
        "jobs": [
            {
                "tree": job.tree.name,
                "variants": [v.label for v in job.variants],
                "plan": dataclasses.asdict(job.plan),
                "isolated": job.isolated,
                "compile_only": job.compile_only,
                "optimizers": list(_optimizers_for(job, config)),
            }
            for job in config.jobs
        ],
        "timeout_s": config.timeout_s,
        "memory_limit_gib": round(config.memory_limit / 2**30, 1),
    }


# ---------------------------------------------------------------------------------------------------
# Command line


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run, under 90 s on 2 cores (see README)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (default: %(default)s)")
    parser.add_argument("--name", help="file name stem (default: a UTC timestamp)")
    parser.add_argument("--only", help="comma-separated trees: large, mlp, small, tiny")
    parser.add_argument("--optimizers", help=f"comma-separated, from {', '.join(OPTIMIZERS)}")
    parser.add_argument("--timeout", type=float, help="limit in s for one isolated (tiny tree) measurement")
    return parser.parse_args(argv)


def _split(value: str | None, allowed: Sequence[str], what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"--{what}: unknown {unknown}; choose from {', '.join(allowed)}")
    return names


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    make = quick_config if args.quick else full_config
    trees = _split(args.only, ("large", "mlp", "small", "tiny"), "only")
    config = make(trees) if trees else make()
    optimizers = _split(args.optimizers, tuple(OPTIMIZERS), "optimizers")
    if optimizers:
        config = dataclasses.replace(config, optimizers=optimizers)
    if args.timeout:
        config = dataclasses.replace(config, timeout_s=args.timeout)
    return config


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    name = args.name or f"{stamp}{'-quick' if args.quick else ''}"
    report = run_suite(config_from_args(args), checkpoint=lambda partial: _report.write(partial, args.out, name))
    json_path, md_path = _report.write(report, args.out, name)
    print(_report.markdown(report))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
