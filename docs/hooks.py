"""mkdocs hooks: the notebooks' executed copies, their place in the navigation, their claims table, and
the benchmark tables rendered from the committed results (`docs/results/*.json`).

The notebooks in `notebooks/` are committed without outputs. The site renders executed copies from
`docs/notebooks/`, which the test suite writes (`notebooks/conftest.py`); this hook executes any that
are missing or older than their source, so `mkdocs build` works on a fresh checkout too (slower).
"""

from __future__ import annotations

import html
import importlib.util
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLACEHOLDER = "<!-- claims table -->"
# `<!-- results docs/results/NAME.json -->` in a page becomes that run's report, as the benchmark wrote it;
# `<!-- results docs/results/NAME.json TREE OPTIMIZER -->` one tree and optimizer of it, variant by variant.
RESULTS = re.compile(r"<!-- results (\S+\.json)(?: (\w+) (\w+))? -->")


def _executor():
    spec = importlib.util.spec_from_file_location("notebook_execute", ROOT / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _title(path: pathlib.Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def on_config(config, **kwargs):
    execute = _executor()
    entries = []
    for source in execute.sources():
        copy = execute.OUT / source.name
        if not copy.exists() or copy.stat().st_mtime < source.stat().st_mtime:
            print(f"hooks: executing {source.name} (no up-to-date executed copy)")
            execute.execute(source)
        entries.append({_title(source): f"notebooks/{source.name}"})
    for section in config["nav"]:
        if isinstance(section, dict) and "Notebooks" in section:
            section["Notebooks"] = ["notebooks.md", *entries]
    return config


def _cell(text: str) -> str:
    """Text as a table cell: HTML escaped, and Markdown's table and emphasis characters taken literally."""
    text = html.escape(text, quote=False)
    return re.sub(r"([|*_`\[\]\\])", r"\\\1", text)


def _claims_table() -> str:
    rows = ["| notebook | claim | run | evidence |", "|---|---|---|---|"]
    for record_path in sorted((ROOT / "docs" / "notebooks").glob("*.claims.json")):
        record = json.loads(record_path.read_text())
        name = record["notebook"]
        link = f"[{name.removesuffix('.ipynb')}](notebooks/{name})"
        for claim in record["claims"]:
            if claim["verdict"] == "AGREES":
                verdict = "agrees" if claim["expected"] else "**agrees**, the notebook expected not"
            else:
                verdict = "disagrees: the notebook explains why" if not claim["expected"] else "**disagrees**"
            rows.append(f"| {link} | {_cell(claim['claim'])} | {verdict} | {_cell(claim['evidence'])} |")
    return "\n".join(rows)


def _results(match: re.Match) -> str:
    """A benchmark run's markdown report, from its JSON, with headings moved under the page's."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import _report, compile_curve

    report = json.loads((ROOT / match.group(1)).read_text())
    if match.group(2):
        return _focus(report, match.group(2), match.group(3))
    render = compile_curve.markdown if "memory_limit_gib" in report else _report.markdown
    text = render(report)
    return re.sub(r"^(#+) ", lambda m: "#" * min(len(m.group(1)) + 4, 6) + " ", text, flags=re.MULTILINE)


def _focus(report: dict, tree: str, optimizer: str) -> str:
    """One tree and optimizer of a benchmark run: each variant's step and compile time, as ratios to optax
    and to torch's fused step."""
    rows = [r for r in report["results"] if r["tree"] == tree and r["optimizer"] == optimizer and r["median_ms"]]
    if not rows:
        raise ValueError(f"hooks: no {tree}/{optimizer} results in the benchmark report")

    def find(library: str, variant: str) -> dict | None:
        return next((r for r in rows if r["library"] == library and r["variant"] == variant), None)

    optax, fused = find("optax", "default"), find("torch", "fused")

    def ratio(x: float | None, ref: float | None) -> str:
        if x is None or ref is None:
            return "—"
        r = x / ref
        return f"{r:.2f}×" + (f" ({1 / r:.3g}× faster)" if r < 0.5 else "")

    lines = [
        "| variant | step ms | compile s | vs optax step | vs torch fused | vs optax compile |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["library"] != "optax", r["library"] != "torch", -r["median_ms"])):
        if row["library"] == "torch" and row["variant"] != "fused":
            continue
        name = (
            row["library"]
            if row["variant"] == "default" and row["library"] == "optax"
            else (f"{row['library']} {row['variant']}")
        )
        compile_s = row.get("compile_s")
        lines.append(
            f"| {name} | {row['median_ms']:.3g} | {'—' if compile_s is None else f'{compile_s:.3g}'} "
            f"| {ratio(row['median_ms'], optax and optax['median_ms'])} "
            f"| {ratio(row['median_ms'], fused and fused['median_ms'])} "
            f"| {ratio(compile_s, optax and optax.get('compile_s'))} |"
        )
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri == "notebooks.md":
        markdown = markdown.replace(PLACEHOLDER, _claims_table())
    return RESULTS.sub(_results, markdown)
