"""The optimizers compared, each configured identically in gradchain, optax and torch.optim.

Every spec also says how many bytes an ideal step must move for a leaf (each array read or written
once, float32): the numerator of the roofline.

Adafactor is configured as torch defines it, which factors the second moment of every matrix:
`min_dim_size_to_factor=1` in gradchain and optax (their default, 128, keeps a full second moment
for matrices with a side under 128, which torch never does). With that, one step agrees to float32
rounding in all three libraries (torch's relative step size `min(lr, 1/sqrt(t))` is `lr` here).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import optax

import gradchain as gc

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
FLOAT32_BYTES = 4

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer, built the same way in each library.

    Attributes:
        name: the row label.
        gradchain: `(**variant_kwargs) -> GradientTransformation`; looks the optimizer up on `gradchain`
            when called, so that an API that has not landed yet fails there (AttributeError/TypeError).
        optax: `() -> optax.GradientTransformation`.
        torch: the `torch.optim` class name, or None where torch has no such optimizer.
        torch_kwargs: its arguments besides `lr` (which is `LEARNING_RATE` for every library).
        torch_variants: the torch implementations that exist for it (`for-loop`, `foreach`, `fused`).
        leaf_bytes: the bytes an ideal step moves for a leaf of a given shape.
    """

    name: str
    gradchain: Callable[..., Any]
    optax: Callable[[], Any]
    torch: str | None
    torch_kwargs: dict[str, Any]
    torch_variants: tuple[str, ...]
    leaf_bytes: Callable[[Shape], int]

    def ideal_bytes(self, shapes: Iterable[Shape]) -> int:
        """Bytes an ideal step moves: every array read or written once, nothing else."""
        return sum(self.leaf_bytes(shape) for shape in shapes)


def _streams(arrays: int) -> Callable[[Shape], int]:
    """An element-wise step that reads plus writes `arrays` params-sized float32 arrays."""
    return lambda shape: arrays * FLOAT32_BYTES * math.prod(shape)


def _adafactor_bytes(shape: Shape) -> int:
    size = math.prod(shape)
    if len(shape) < 2:  # a full second moment: read p, g, v; write p, v
        return 5 * FLOAT32_BYTES * size
    # read p, g; write p; read and write the row and column statistics of the last two dimensions
    rows, cols = math.prod(shape[:-1]), math.prod(shape[:-2]) * shape[-1]
    return (3 * size + 2 * (rows + cols)) * FLOAT32_BYTES


class Unavailable(Exception):
    """A variant cannot be built here: an API that has not landed yet, or no such implementation."""


def _gradchain(name: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
    def make(**variant_kwargs: Any) -> Any:
        return getattr(gc, name)(*args, **kwargs, **variant_kwargs)

    return make


LR, WD = LEARNING_RATE, WEIGHT_DECAY
_ALL_TORCH = ("for-loop", "foreach", "fused")

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            "sgd",
            _gradchain("sgd", LR, momentum=0.9),
            lambda: optax.sgd(LR, momentum=0.9),
            "SGD",
            {"momentum": 0.9},
            _ALL_TORCH,
            _streams(5),  # read p, g, buf; write p, buf
        ),
        OptimizerSpec(
            "adam",
            _gradchain("adam", LR),
            lambda: optax.adam(LR),
            "Adam",
            {},
            _ALL_TORCH,
            _streams(7),  # read p, g, m, v; write p, m, v
        ),
        OptimizerSpec(
            "adamw",
            _gradchain("adamw", LR, weight_decay=WD),
            lambda: optax.adamw(LR, weight_decay=WD),
            "AdamW",
            {"weight_decay": WD},
            _ALL_TORCH,
            _streams(7),
        ),
        OptimizerSpec(
            "lion",
            _gradchain("lion", LR, weight_decay=WD),
            lambda: optax.lion(LR, weight_decay=WD),
            None,
            {},
            (),
            _streams(5),  # read p, g, m; write p, m
        ),
        OptimizerSpec(
            "adafactor",
            _gradchain("adafactor", LR, min_dim_size_to_factor=1),
            lambda: optax.adafactor(LR, min_dim_size_to_factor=1),
            "Adafactor",
            {},
            ("for-loop", "foreach"),
            _adafactor_bytes,
        ),
    )
}
