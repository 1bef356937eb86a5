"""Turning results into rows with ratios, a markdown report and a JSON file."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._measure import Result

MIB = 2**20
COLUMNS = (
    "tree",
    "optimizer",
    "library",
    "variant",
    "median ms",
    "min–max ms",
    "compile s",
    "vs optax",
    "vs torch",
    "vs roofline",
    "state MB",
    "peak MB",
    "note",
)


def print_now(line: str) -> None:
    """Progress lines, flushed so that they show as they come even when the output goes to a file."""
    print(line, flush=True)


def annotate(results: Iterable[Result], ideal_bytes: dict[tuple[str, str], int], gbs: float) -> list[dict[str, Any]]:
    """Rows with the roofline and the ratios: each median over optax's, torch's best and the roofline's.

    torch's reference is `fused` where it ran, else `foreach`. `ideal_bytes` maps (tree, optimizer)
    to the bytes an ideal step moves; `gbs` is the measured bandwidth in GB/s.
    """
    rows = [dataclasses.asdict(r) for r in results]
    for row in rows:
        group = [r for r in rows if (r["tree"], r["optimizer"]) == (row["tree"], row["optimizer"])]
        ideal = ideal_bytes.get((row["tree"], row["optimizer"]))
        row["ideal_bytes"] = ideal
        row["roofline_ms"] = None if ideal is None else 1e3 * ideal / (gbs * 1e9)
        row["torch_reference"] = _torch_reference(group)
        row["vs_optax"] = _over(row["median_ms"], _median_of(group, "optax", "default"))
        row["vs_torch"] = _over(row["median_ms"], _median_of(group, "torch", row["torch_reference"]))
        row["vs_roofline"] = _over(row["median_ms"], row["roofline_ms"])
    return rows


def _median_of(group: list[dict[str, Any]], library: str, variant: str | None) -> float | None:
    for row in group:
        if (row["library"], row["variant"]) == (library, variant) and row["status"] == "ok":
            return row["median_ms"]
    return None


def _torch_reference(group: list[dict[str, Any]]) -> str | None:
    for variant in ("fused", "foreach"):
        if _median_of(group, "torch", variant) is not None:
            return variant
    return None


def _over(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


# ---------------------------------------------------------------------------------------------------
# Markdown


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}×"


def _mib(x: int | None) -> str:
    return "" if x is None else f"{x / MIB:.1f}"


def _compile(row: dict[str, Any]) -> str:
    if row["compile_s"] is None:
        return ""
    return f"{row['lower_s'] + row['compile_s']:.2f}"


def _time_cells(row: dict[str, Any]) -> tuple[str, str]:
    if row["status"] == "ok":
        return _num(row["median_ms"]), f"{_num(row['min_ms'])}–{_num(row['max_ms'])}"
    return ("MISMATCH" if row["status"] == "mismatch" else row["status"] if row["status"] != "skipped" else "—"), ""


def _cells(row: dict[str, Any]) -> list[str]:
    median, spread = _time_cells(row)
    return [
        row["tree"],
        row["optimizer"],
        row["library"],
        row["variant"],
        median,
        spread,
        _compile(row),
        _ratio(row["vs_optax"]),
        _ratio(row["vs_torch"]),
        _ratio(row["vs_roofline"]),
        _mib(row["state_bytes"]),
        _mib(row["peak_bytes"]),
        _note(row),
    ]


def _note(row: dict[str, Any]) -> str:
    pack = f"gc.pack {row['pack_s']:.2f} s" if row.get("pack_s") is not None else ""
    return "; ".join(filter(None, [row["note"].replace("|", "/"), pack]))


def table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def _best(group: list[dict[str, Any]], library: str) -> dict[str, Any] | None:
    timed = [r for r in group if r["library"] == library and r["status"] == "ok"]
    return min(timed, key=lambda r: r["median_ms"]) if timed else None


def _summary_cells(group: list[dict[str, Any]]) -> list[str]:
    default = next((r for r in group if (r["library"], r["variant"]) == ("gradchain", "default")), None)
    best_gc, optax_row, best_torch = _best(group, "gradchain"), _best(group, "optax"), _best(group, "torch")

    def ms(row: dict[str, Any] | None, named: bool = False) -> str:
        if row is None or row["status"] != "ok":
            return "—"
        return f"{_num(row['median_ms'])} ({row['variant']})" if named else _num(row["median_ms"])

    optax_ms = optax_row["median_ms"] if optax_row else None
    return [
        group[0]["tree"],
        group[0]["optimizer"],
        ms(default),
        ms(best_gc, named=True),
        ms(optax_row),
        ms(best_torch, named=True),
        _num(group[0]["roofline_ms"]),
        _ratio(_over(default["median_ms"] if default else None, optax_ms)),
        _ratio(_over(best_gc["median_ms"] if best_gc else None, optax_ms)),
    ]


def summary(rows: list[dict[str, Any]]) -> str:
    """One line per tree x optimizer: gradchain's default and best variant against optax and torch's best."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["tree"], row["optimizer"]), []).append(row)
    header = (
        "tree",
        "optimizer",
        "gradchain ms",
        "best gradchain ms",
        "optax ms",
        "best torch ms",
        "roofline ms",
        "gradchain / optax",
        "best gradchain / optax",
    )
    return table(header, (_summary_cells(g) for g in groups.values()))


def markdown(report: dict[str, Any]) -> str:
    m, bw = report["machine"], report["bandwidth"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    bandwidths = ", ".join(f"{k[:-4]} {v} GB/s" for k, v in bw.items() if k.endswith("_gbs"))
    lines = [
        f"# gradchain benchmark ({'quick' if report['config']['quick'] else 'full'}), {m['date']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores_usable']} cores, {m['ram_gb']} GB RAM; torch threads {m['torch_threads']}.",
        f"- JAX backend {m['jax_backend']} ({m['jax_device']}); torch on {m['torch_device'] or 'unavailable'}.",
        f"- Versions: {versions}.",
        f"- Bandwidth (triad `a = b + c`, {bw['array_mb']} MiB arrays, best of {bw['repeats']}): {bandwidths}; "
        f"roofline uses {bw['gbs']} GB/s.",
        f"- Wall time {report['wall_s']:.0f} s; load average (1, 5, 15 min) {_load(m['load_average_at_start'])} "
        f"at the start, {_load(m['load_average'])} at the end.",
        *[f"- {note}" for note in report["notes"]],
        "",
        "## Summary (median ms per step; ratios below 1 mean gradchain is faster)",
        "",
        summary(report["results"]),
        "",
        "## All variants",
        "",
        table(COLUMNS, (_cells(r) for r in report["results"])),
        "",
    ]
    return "\n".join(lines)


def _load(load: Sequence[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in load)


def write(report: dict[str, Any], directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str))
    md_path.write_text(markdown(report))
    return json_path, md_path
