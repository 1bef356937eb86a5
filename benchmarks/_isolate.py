"""Run a measurement in a subprocess, with a time limit and a memory limit.

Compiling a step for tens of thousands of leaves can take minutes and tens of GB (optax AdamW at
20,000 leaves needs more than 15 GB). In a subprocess, such a blow-up becomes a row that says
`timeout` or `killed` instead of a crashed or swapping benchmark. The parent polls the child's
resident memory and kills it past the limit, rather than setting an address-space rlimit, which
XLA's large virtual reservations would hit long before real memory runs out.

Usage (by `run_isolated`): `python -m benchmarks._isolate module:function '<json kwargs>' result.json`.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._machine import available_ram_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.1


def default_memory_limit() -> int:
    """16 GiB, or half the memory available now if that is less: the machine may be shared."""
    return min(16 * 2**30, available_ram_bytes() // 2)


def run_isolated(target: str, kwargs: dict[str, Any], *, timeout_s: float, memory_limit: int) -> dict[str, Any]:
    """Call `module:function(**kwargs)` in a fresh Python; its JSON result, or `{"status", "note"}` on failure.

    `status` is `timeout` (past `timeout_s`), `killed` (resident memory past `memory_limit` bytes, or a
    signal such as the OOM killer's), or `error` (an exception: the last lines of its stderr).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp, "result.json"), Path(tmp, "stderr.txt")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.getenv("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "benchmarks._isolate", target, json.dumps(kwargs), str(out)]
        with log.open("w") as stderr:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            failure = _wait(proc, timeout_s, memory_limit)
        if failure is not None:
            return failure
        if proc.returncode == 0 and out.exists():
            return json.loads(out.read_text())
        if proc.returncode < 0:
            return {"status": "killed", "note": f"killed by signal {-proc.returncode}"}
        tail = log.read_text().strip().splitlines()[-3:]
        return {"status": "error", "note": " | ".join(tail) or f"exit status {proc.returncode}"}


def _wait(proc: subprocess.Popen, timeout_s: float, memory_limit: int) -> dict[str, Any] | None:
    """Wait for the child; kill it (by its pid) and say why if it runs out of time or memory."""
    start, peak = time.monotonic(), 0
    while proc.poll() is None:
        peak = max(peak, _rss_bytes(proc.pid))
        if peak > memory_limit:
            _kill(proc)
            return {"status": "killed", "note": f"resident memory over the {memory_limit / 2**30:.1f} GiB limit"}
        if time.monotonic() - start > timeout_s:
            _kill(proc)
            return {"status": "timeout", "note": f"over the {timeout_s:g} s limit"}
        time.sleep(POLL_S)
    return None


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:  # the child has just exited
        pass
    return 0


def _main(target: str, kwargs: str, out: str) -> None:
    module, function = target.split(":")
    result = getattr(importlib.import_module(module), function)(**json.loads(kwargs))
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    _main(*sys.argv[1:])
