"""torch.optim's side: where torch runs, and the runner that steps a torch optimizer.

Imported only where torch is used, so that the subprocesses that measure JAX alone start without
importing torch (a second each).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import torch

from benchmarks._optimizers import LEARNING_RATE, OptimizerSpec, Unavailable
from benchmarks._trees import Arrays, Workload

GPU_PLATFORMS = ("gpu", "cuda", "rocm")
VARIANT_KWARGS: dict[str, dict[str, bool]] = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def torch_device(jax_device: jax.Device) -> str | None:
    """Where torch runs: beside JAX. None when JAX is on a GPU that this torch build cannot use."""
    if jax_device.platform not in GPU_PLATFORMS:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def torch_info(jax_device: jax.Device) -> dict[str, object]:
    return {"torch_device": torch_device(jax_device), "torch_threads": torch.get_num_threads()}


def torch_triad(num_floats: int) -> Callable[[], object]:
    """`a = b + c` in torch's thread pool (see `_machine.probe_bandwidth`)."""
    a, b, c = torch.zeros(num_floats), torch.ones(num_floats), torch.ones(num_floats)
    return lambda: torch.add(b, c, out=a)


class TorchRunner:
    """A torch.optim optimizer: `.grad` set once to the fixed gradients, `step()` under `no_grad`."""

    def __init__(self, spec: OptimizerSpec, variant: str, work: Workload) -> None:
        device = torch_device(work.device)
        if spec.torch is None:
            raise Unavailable(f"torch.optim has no {spec.name}")
        if device is None:
            raise Unavailable("this torch build has no CUDA; torch runs on CPU only")
        self._make = lambda tensors: getattr(torch.optim, spec.torch)(
            tensors, lr=LEARNING_RATE, **spec.torch_kwargs, **VARIANT_KWARGS[variant]
        )
        self._cuda = device == "cuda"
        self.memory_where = "cuda" if self._cuda else "host"
        self._names = list(work.params)
        self._tensors = [torch.tensor(work.params[k], device=device) for k in self._names]  # copies
        for tensor, name in zip(self._tensors, self._names, strict=True):
            tensor.grad = torch.tensor(work.grads[name], device=device)
        self.lower_s = self.compile_s = self.pack_s = None
        self._opt: torch.optim.Optimizer | None = None

    def init(self) -> None:
        self._opt = self._make(self._tensors)

    def step(self) -> None:
        with torch.no_grad():
            self._opt.step()
        if self._cuda:
            torch.cuda.synchronize()

    def params(self) -> Arrays:
        return {k: t.detach().cpu().numpy().copy() for k, t in zip(self._names, self._tensors, strict=True)}

    def state_bytes(self) -> int:
        tensors = [v for s in self._opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return sum(t.nbytes for t in tensors)
