"""Execute the notebooks and collect the claims they check.

    python notebooks/execute.py                      # every notebook, executed copies in docs/notebooks/
    python notebooks/execute.py notebooks/01_*.ipynb  # some of them

The executed copies (with outputs and plots) are what the documentation site renders; the sources in
this folder are committed without outputs. `tests/test_notebooks.py` runs the same function, one test
per notebook, and fails when a notebook raises or when one of its claims disagrees.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "notebooks"
TIMEOUT_S = 600
# The test suite simulates 8 CPU devices (tests/conftest.py); a notebook runs on the machine as it is.
_TEST_ONLY_FLAG = "--xla_force_host_platform_device_count=8"


def sources() -> list[pathlib.Path]:
    """The notebooks, in reading order (their names start with a two-digit number)."""
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(path: pathlib.Path, out_dir: pathlib.Path = OUT) -> dict:
    """Run one notebook top to bottom in a fresh kernel; write the executed copy to `out_dir`.

    Returns a record with the notebook's name, its run time in seconds and the claims it printed (see
    `claims.py`). Raises `nbclient.exceptions.CellExecutionError` if a cell fails.
    """
    import nbclient
    import nbformat

    sys.path.insert(0, str(HERE))
    from claims import parse

    path = pathlib.Path(path).resolve()
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(_TEST_ONLY_FLAG, "").strip()
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    start = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out_dir / path.name)
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" and output.get("name") == "stdout"
    )
    record = {"notebook": path.name, "seconds": round(seconds, 1), "claims": parse(text)}
    (out_dir / (path.stem + ".claims.json")).write_text(json.dumps(record, indent=1) + "\n")
    return record


def claim_problems(record: dict) -> str:
    """Why a notebook's run does not back its claims ('' when it does): no claims, or a verdict other
    than the one the notebook expected (see `claims.check`'s `expected`)."""
    if not record["claims"]:
        return "the notebook checked no claims (call claims.check once per claim)"
    bad = [c for c in record["claims"] if (c["verdict"] == "AGREES") != c["expected"]]
    return "; ".join(f"{c['claim']}: {c['verdict']}, expected otherwise ({c['evidence']})" for c in bad)


def main(argv: list[str]) -> int:
    paths = [pathlib.Path(a) for a in argv] or sources()
    failed = 0
    for path in paths:
        record = execute(path)
        print(f"{record['notebook']}: {record['seconds']} s")
        for claim in record["claims"]:
            note = "" if claim["expected"] else " (expected DISAGREES)"
            print(f"  [{claim['verdict']}{note}] {claim['claim']} | {claim['evidence']}")
        if not record["claims"]:
            print("  (no claims checked)")
        failed += bool(claim_problems(record))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
