"""What the numbers were measured on: machine description, memory bandwidth, peak memory of a code block."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import importlib.metadata
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def on_gpu(device: jax.Device) -> bool:
    return device.platform in GPU_PLATFORMS


def machine_info(jax_device: jax.Device) -> dict[str, Any]:
    """CPU, memory, load, library versions and the devices used, recorded with every result."""
    from benchmarks._torch_runner import torch_info

    versions = {name: _version(name) for name in ("jax", "jaxlib", "optax", "torch", "numpy", "gradchain")}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpuinfo_field("model name") or platform.processor(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gb": round(_meminfo_kb("MemTotal") / 2**20, 1),
        "python": platform.python_version(),
        "versions": versions,
        "jax_backend": jax.default_backend(),
        "jax_device": jax_device.device_kind,
        "jax_devices": jax.device_count(),
        **torch_info(jax_device),
        "load_average": os.getloadavg(),  # 1, 5 and 15 min: other processes competing for the cores
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _cpuinfo_field(field: str) -> str | None:
    with contextlib.suppress(OSError):
        match = re.search(rf"^{field}\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        return match.group(1).strip() if match else None
    return None


def _meminfo_kb(field: str) -> int:
    with contextlib.suppress(OSError):
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return int(match.group(1)) if match else 0
    return 0


def available_ram_bytes() -> int:
    return _meminfo_kb("MemAvailable") * 1024


# ---------------------------------------------------------------------------------------------------
# Memory bandwidth


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # first touch of the output pages, and compilation for JAX
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _triads(num_floats: int, jax_device: jax.Device) -> dict[str, Callable[[], object]]:
    """`a = b + c` on float32 arrays, one per library: 3 * 4 bytes per element streamed."""
    triads: dict[str, Callable[[], object]] = {}
    jb, jc = (jax.device_put(jnp.full(num_floats, v, jnp.float32), jax_device) for v in (1.0, 2.0))
    ja = [jax.device_put(jnp.zeros(num_floats, jnp.float32), jax_device)]
    # Donated, and kept though unused, so that the sum overwrites a in place, as in STREAM: without
    # keep_unused, jit prunes a and writes a fresh output every call (page faults, 5x slower on CPU).
    add = jax.jit(lambda a, b, c: b + c, donate_argnums=0, keep_unused=True)

    def jax_triad() -> None:
        ja[0] = add(ja[0], jb, jc).block_until_ready()

    triads["jax"] = jax_triad
    if not on_gpu(jax_device):
        from benchmarks._torch_runner import torch_triad

        na, nb, nc = np.zeros(num_floats, np.float32), np.ones(num_floats, np.float32), np.ones(num_floats, np.float32)
        triads["numpy"] = lambda: np.add(nb, nc, out=na)
        triads["torch"] = torch_triad(num_floats)
    return triads


def probe_bandwidth(num_bytes: int, repeats: int, jax_device: jax.Device) -> dict[str, Any]:
    """Streaming bandwidth in GB/s (1e9 bytes) of the best of `repeats` triads per library.

    Each of the three arrays has `num_bytes`, far more than any cache. On CPU the best of numpy
    (one thread), torch and JAX (their thread pools) is taken as the machine's bandwidth; on a GPU,
    JAX's. Write-allocate traffic is not counted, as in STREAM.
    """
    num_floats = num_bytes // 4
    moved = 3 * 4 * num_floats
    rates = {name: moved / _best_seconds(fn, repeats) / 1e9 for name, fn in _triads(num_floats, jax_device).items()}
    gc.collect()
    return {
        "array_mb": round(num_bytes / 2**20),
        "repeats": repeats,
        **{f"{name}_gbs": round(rate, 2) for name, rate in rates.items()},
        "gbs": round(max(rates.values()), 2),
    }


# ---------------------------------------------------------------------------------------------------
# Peak memory


class PeakMemory(contextlib.AbstractContextManager):
    """Peak memory above what was live at entry, over a `with` block; `.bytes` after exit (None if unknown).

    - host (CPU runs): freed heap pages are handed back to the OS (`malloc_trim`) and the kernel's
      resident-set high-water mark is reset (`/proc/self/clear_refs`), so the peak of the block is
      `VmHWM - VmRSS at entry`, whatever earlier blocks in the process allocated.
    - JAX on a GPU: `peak_bytes_in_use` cannot be reset; the block's peak is known only when it raises
      the process-wide peak, else `.bytes` is None.
    - torch on CUDA: `torch.cuda.reset_peak_memory_stats` and `max_memory_allocated`.
    """

    def __init__(self, where: str | jax.Device) -> None:
        self.where = where
        self.bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.where == "cuda":
            import torch  # only here: JAX-only subprocesses never import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        elif isinstance(self.where, jax.Device) and on_gpu(self.where):
            stats = self.where.memory_stats() or {}
            self._start, self._peak = stats.get("bytes_in_use", 0), stats.get("peak_bytes_in_use", 0)
        else:
            _release_free_heap()
            self._reset_hwm = _reset_rss_peak()
            self._start = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.where == "cuda":
            import torch

            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self._start
        elif isinstance(self.where, jax.Device) and on_gpu(self.where):
            peak = (self.where.memory_stats() or {}).get("peak_bytes_in_use", 0)
            self.bytes = peak - self._start if peak > self._peak else None
        elif self._reset_hwm:
            self.bytes = _status_kb("VmHWM") * 1024 - self._start


def _release_free_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0
