"""Smoke tests of the benchmark harness (benchmarks/): structure and the agreement check, never timings."""

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# benchmarks/ is not installed: it runs from the repository root, as `python -m benchmarks.run`.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import _report, compile_curve, run
from benchmarks._isolate import run_isolated
from benchmarks._measure import (
    GRADCHAIN_VARIANTS,
    OPTAX_VARIANT,
    RepeatPlan,
    Variant,
    agreement,
    measure,
    reference_step,
)
from benchmarks._optimizers import OPTIMIZERS
from benchmarks._trees import TreeSpec, make_arrays, workload

TWO_STEPS = RepeatPlan(warmup=1, target_s=0.0, min_steps=2, max_steps=2)
SMALL_TREE = TreeSpec("small", 1)  # one transformer-like layer: 16 leaves, 16,020 params
OPTIMIZERS_RUN = ("sgd", "adamw")
GRADCHAIN_DEFAULT = GRADCHAIN_VARIANTS[0]
IN_PROCESS = (*GRADCHAIN_VARIANTS, OPTAX_VARIANT, Variant("torch", "foreach"), Variant("torch", "fused"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One small suite: a 16-leaf tree in process, and a 10-leaf tiny tree through the subprocess path."""
    config = run.SuiteConfig(
        jobs=(
            run.TreeJob(SMALL_TREE, IN_PROCESS, TWO_STEPS),
            run.TreeJob(TreeSpec("tiny", 10), (GRADCHAIN_DEFAULT,), TWO_STEPS, isolated=True, optimizers=("adamw",)),
        ),
        optimizers=OPTIMIZERS_RUN,
        bandwidth_mib=8,
        bandwidth_repeats=1,
        timeout_s=60.0,
    )
    report = run.run_suite(config, log=lambda line: None)
    json_path, md_path = _report.write(report, tmp_path_factory.mktemp("results"), "smoke")
    return json.loads(json_path.read_text()), md_path.read_text()


def test_tree_sizes():
    assert SMALL_TREE.num_leaves == 16
    full = {kind: TreeSpec.full(kind) for kind in ("large", "mlp", "small", "tiny")}
    assert (full["large"].num_leaves, full["large"].num_params) == (8, 67_108_864)
    assert full["mlp"].num_leaves == 50 and 9e6 < full["mlp"].num_params < 12e6
    assert full["small"].num_leaves == 2_000 and 1.9e6 < full["small"].num_params < 2.1e6
    assert full["tiny"].num_leaves == 20_000


def test_trees_are_deterministic_float32():
    (p1, g1), (p2, g2) = make_arrays(SMALL_TREE), make_arrays(SMALL_TREE)
    for path in p1:
        assert p1[path].dtype == g1[path].dtype == np.float32
        np.testing.assert_array_equal(p1[path], p2[path])
        np.testing.assert_array_equal(g1[path], g2[path])
    assert list(p1) == sorted(p1) == list(SMALL_TREE.shapes)  # jax.tree.leaves order is torch's order


@pytest.mark.slow  # runs a benchmark suite (the module's `report`) or the compile curve
def test_report_json_structure(report):
    data, _ = report
    assert {"machine", "bandwidth", "config", "trees", "notes", "results", "wall_s"} <= set(data)
    assert {"cpu", "cores", "ram_gb", "versions", "jax_backend", "jax_device", "date", "torch_threads"} <= set(
        data["machine"]
    )
    assert {"jax", "jaxlib", "optax", "torch", "numpy"} <= set(data["machine"]["versions"])
    assert data["bandwidth"]["gbs"] > 0
    keys = {(r["tree"], r["optimizer"], r["library"], r["variant"]) for r in data["results"]}
    assert len(keys) == len(data["results"])  # one row per tree x optimizer x variant
    expected_in_process = {
        ("small[1]", opt, v.library, v.name) for opt in OPTIMIZERS_RUN for v in (*GRADCHAIN_VARIANTS, OPTAX_VARIANT)
    }
    expected_in_process |= {("small[1]", opt, "torch", "foreach") for opt in OPTIMIZERS_RUN}
    expected_isolated = {("tiny[10]", "adamw", "gradchain", "default")}
    assert expected_in_process | expected_isolated <= keys


@pytest.mark.slow  # runs a benchmark suite (the module's `report`) or the compile curve
def test_every_available_variant_agrees_with_optax_and_is_timed(report):
    data, _ = report
    statuses = {r["status"] for r in data["results"]}
    assert statuses <= {"ok", "skipped"}, [r for r in data["results"] if r["status"] not in ("ok", "skipped")]
    for row in data["results"]:
        if row["status"] == "skipped":
            assert row["note"] and row["median_ms"] is None
            continue
        assert row["params_rel_err"] <= 1e-5 and row["update_rel_err"] <= 1e-3, row
        assert row["steps"] == 2 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["state_bytes"] > 0 and row["roofline_ms"] > 0
    ran = {(r["optimizer"], r["library"]) for r in data["results"] if r["status"] == "ok"}
    assert {(opt, lib) for opt in OPTIMIZERS_RUN for lib in ("optax", "torch")} <= ran
    assert ("sgd", "gradchain") in ran and ("adamw", "gradchain") in ran


@pytest.mark.slow  # runs a benchmark suite (the module's `report`) or the compile curve
def test_ratios_refer_to_optax_and_torch(report):
    data, _ = report
    for row in data["results"]:
        if row["status"] == "ok" and (row["library"], row["variant"]) == ("optax", "default"):
            assert row["vs_optax"] == pytest.approx(1.0)
        if row["status"] == "ok" and row["torch_reference"] is not None:
            assert row["vs_torch"] > 0 and row["vs_roofline"] > 0
    fused = [r for r in data["results"] if (r["library"], r["variant"], r["status"]) == ("torch", "fused", "ok")]
    assert fused and all(r["vs_torch"] == pytest.approx(1.0) for r in fused)


@pytest.mark.slow  # runs a benchmark suite (the module's `report`) or the compile curve
def test_markdown_has_one_row_per_result(report):
    data, md = report
    assert "| " + " | ".join(_report.COLUMNS) + " |" in md
    assert "## Summary" in md
    body = md.split("## All variants")[1]
    assert sum(line.startswith("| small[1] |") or line.startswith("| tiny[10] |") for line in body.splitlines()) == len(
        data["results"]
    )


def test_agreement_check_catches_a_wrong_step():
    """A variant that disagrees with optax is a loud `mismatch` and is not timed."""
    spec, work = OPTIMIZERS["adamw"], workload(SMALL_TREE)
    work.reference = reference_step(spec, work)
    path = next(iter(work.reference))
    # Off by a tenth of a step: small against the params, large against the update.
    step = work.reference[path] - work.params[path]
    work.reference[path] = work.reference[path] + np.float32(0.1) * step
    result = measure(spec, OPTAX_VARIANT, work, TWO_STEPS)
    assert result.status == "mismatch" and result.worst_leaf == path and result.median_ms is None
    assert result.update_rel_err == pytest.approx(0.1 / 1.1, rel=1e-3)
    assert "not timed" in result.note


@pytest.mark.parametrize(
    ("optimizer", "variant"),
    [
        ("adafactor", Variant("torch", "for-loop")),  # torch's Adafactor, configured as optax's (see _optimizers)
        ("adafactor", Variant("torch", "foreach")),
        ("adafactor", GRADCHAIN_DEFAULT),
        ("lion", GRADCHAIN_DEFAULT),
    ],
)
def test_modern_optimizers_agree_with_optax(optimizer, variant):
    spec, work = OPTIMIZERS[optimizer], workload(SMALL_TREE)
    work.reference = reference_step(spec, work)
    result = measure(spec, variant, work, TWO_STEPS)
    if result.status == "skipped":
        pytest.skip(result.note)
    assert result.status == "ok", result.note
    assert result.params_rel_err <= 1e-5 and result.update_rel_err <= 1e-3


def test_agreement_scales_by_the_params_before_and_after_the_step():
    """A one-element leaf that one step brings to ~0: float32 rounding is not a large relative error."""
    start, want = {"w": np.array([1e-3], np.float32)}, {"w": np.array([1e-8], np.float32)}
    got = {"w": np.array([1e-8 + 1e-10], np.float32)}
    params_err, update_err, leaf = agreement(got, want, start)
    assert params_err == pytest.approx(1e-7, rel=0.05) and update_err == pytest.approx(1e-7, rel=0.05)
    assert leaf == "w"
    assert agreement({"w": np.array([2e-8], np.float32)}, want, start)[0] == pytest.approx(1e-5, rel=0.05)


def test_missing_gradchain_api_is_skipped_with_a_note():
    spec = OPTIMIZERS["sgd"]
    missing = dataclasses.replace(spec, gradchain=lambda **kw: spec.gradchain(no_such_keyword=True, **kw))
    work = workload(SMALL_TREE)
    work.reference = reference_step(spec, work)
    result = measure(missing, GRADCHAIN_DEFAULT, work, TWO_STEPS)
    assert result.status == "skipped" and "no_such_keyword" in result.note


def test_no_torch_lion_is_a_dash_row():
    work = workload(SMALL_TREE)
    result = measure(OPTIMIZERS["lion"], Variant("torch", "—"), work, TWO_STEPS)
    assert (result.status, result.note) == ("skipped", "torch.optim has no lion")


def test_roofline_bytes():
    shapes = [(4, 8), (8,)]
    assert OPTIMIZERS["adamw"].ideal_bytes(shapes) == 7 * 4 * 40
    assert OPTIMIZERS["sgd"].ideal_bytes(shapes) == 5 * 4 * 40
    # Adafactor: p, g read and p written for the matrix, plus its 4 row and 8 column statistics read and written;
    # the vector keeps a full second moment.
    assert OPTIMIZERS["adafactor"].ideal_bytes(shapes) == 4 * (3 * 32 + 2 * (4 + 8)) + 5 * 4 * 8


def test_isolated_run_reports_timeout_kill_and_error():
    assert run_isolated("json:dumps", {"obj": [1, 2]}, timeout_s=60, memory_limit=2**30) == "[1, 2]"
    timeout = run_isolated("json:dumps", {"obj": 1}, timeout_s=0.01, memory_limit=2**30)
    assert timeout["status"] == "timeout"
    killed = run_isolated("numpy:ones", {"shape": 200_000_000}, timeout_s=60, memory_limit=2**28)
    assert killed["status"] == "killed" and "limit" in killed["note"]
    error = run_isolated("json:loads", {"s": "not json"}, timeout_s=60, memory_limit=2**30)
    assert error["status"] == "error" and "JSONDecodeError" in error["note"]


def test_isolated_variant_that_times_out_is_not_retried():
    config = run.SuiteConfig(
        jobs=(run.TreeJob(TreeSpec("tiny", 10), (GRADCHAIN_DEFAULT,), TWO_STEPS, isolated=True),),
        optimizers=("sgd", "adamw"),
        bandwidth_mib=1,
        bandwidth_repeats=1,
        timeout_s=0.01,
    )
    partial = []
    rows = run.run_suite(config, log=lambda line: None, checkpoint=partial.append)["results"]
    assert [(r["optimizer"], r["status"]) for r in rows] == [("sgd", "timeout"), ("adamw", "skipped")]
    assert [len(p["results"]) for p in partial] == [2]  # one checkpoint per tree
    assert rows[1]["note"].startswith("not retried: timeout on sgd")


def test_compile_only_job_reports_compile_time():
    job = run.TreeJob(TreeSpec("tiny", 10), (GRADCHAIN_DEFAULT,), optimizers=("adamw",), compile_only=True)
    config = run.SuiteConfig(jobs=(job,), bandwidth_mib=1, bandwidth_repeats=1)
    report = run.run_suite(config, log=lambda line: None)
    [row] = report["results"]
    assert (row["optimizer"], row["status"], row["median_ms"]) == ("adamw", "compiled", None)
    assert row["compile_s"] > 0 and row["lower_s"] > 0
    assert "| tiny[10] | adamw | gradchain | default | compiled |" in _report.markdown(report)


def test_count_eqns_counts_nested_jaxprs():
    inner = jax.jit(lambda y: y * 2.0 + 1.0)
    jaxpr = jax.make_jaxpr(lambda x: inner(x) - 1.0)(jnp.ones(3)).jaxpr
    assert len(jaxpr.eqns) == 2  # the nested jit call and the subtraction
    assert compile_curve.count_eqns(jaxpr) == 4


@pytest.mark.slow  # runs a benchmark suite (the module's `report`) or the compile curve
def test_compile_curve(tmp_path):
    report = compile_curve.run_curve((10, 50), (GRADCHAIN_DEFAULT, OPTAX_VARIANT), timeout_s=60, log=lambda line: None)
    rows = {(r["variant"], r["leaves"]): r for r in report["results"]}
    assert set(rows) == {(v, n) for v in ("gradchain default", "optax default") for n in (10, 50)}
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["eqns"] > 0 and row["lower_s"] > 0 and row["compile_s"] > 0
    assert rows[("optax default", 50)]["eqns"] > rows[("optax default", 10)]["eqns"]  # one set of ops per leaf
    json_path, md_path = compile_curve.write(report, tmp_path, "smoke")
    assert json.loads(json_path.read_text())["results"] == report["results"]
    md = md_path.read_text()
    for title in compile_curve.METRICS.values():
        assert f"## {title}" in md
    assert "| 50 |" in md


def test_compile_curve_stops_a_variant_after_a_timeout():
    report = compile_curve.run_curve((10, 50), (GRADCHAIN_DEFAULT,), timeout_s=0.01, log=lambda line: None)
    assert [(r["leaves"], r["status"]) for r in report["results"]] == [(10, "timeout"), (50, "skipped")]
    assert "not run above 10 leaves" in report["results"][1]["note"]
