"""The parameter trees the benchmarks run on, and their (deterministic) values.

A tree is a flat dict `path -> float32 array`, with the paths zero-padded so that their sorted
order (the order of `jax.tree.leaves`) is the order in which they were made; torch gets the same
arrays, in the same order, as a list of tensors. A `TreeSpec` is just a name and a size, so that a
subprocess can rebuild exactly the same tree from two JSON values.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable

import jax
import numpy as np

Shapes = dict[str, tuple[int, ...]]
Arrays = dict[str, np.ndarray]

PARAM_SCALE = 0.05  # params ~ N(0, 0.05^2): typical initialisation scale
GRAD_SCALE = 1.0  # grads ~ N(0, 1): an SGD update (lr * g) is then far above the float32 rounding of p


def _large(num_leaves: int) -> Shapes:
    """A few big matrices: 8 x (2048, 4096) is 67M params, where memory bandwidth is all that counts."""
    return {f"w{i:02d}": (2048, 4096) for i in range(num_leaves)}


_MLP_WIDTHS = (512, 1024, 768, 384, 640)


def _mlp(num_layers: int) -> Shapes:
    """A multilayer perceptron with varied widths: 25 layers is 50 leaves and 10.9M params."""
    widths = [_MLP_WIDTHS[i % len(_MLP_WIDTHS)] for i in range(num_layers + 1)]
    shapes: Shapes = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        shapes[f"layer_{i:03d}/bias"] = (fan_out,)
        shapes[f"layer_{i:03d}/kernel"] = (fan_in, fan_out)
    return shapes


_D_MODEL = 36
_D_MLP = 4 * _D_MODEL


def _small(num_layers: int) -> Shapes:
    """A transformer-like stack, 16 leaves per layer: 125 layers of width 36 is 2,000 leaves and 2.0M params."""
    d, h = _D_MODEL, _D_MLP
    layer: Shapes = {
        "ln1/bias": (d,),
        "ln1/scale": (d,),
        "ln2/bias": (d,),
        "ln2/scale": (d,),
        **{f"attn/{n}/kernel": (d, d) for n in "qkvo"},
        **{f"attn/{n}/bias": (d,) for n in "qkvo"},
        "mlp/in/kernel": (d, h),
        "mlp/in/bias": (h,),
        "mlp/out/kernel": (h, d),
        "mlp/out/bias": (d,),
    }
    return {f"layer_{i:03d}/{name}": shape for i in range(num_layers) for name, shape in sorted(layer.items())}


_TINY_SHAPES = ((1,), (3,), (8,), (4, 4), (16,))


def _tiny(num_leaves: int) -> Shapes:
    """Many tiny leaves (cycling through a few shapes): the per-leaf overhead is all that counts."""
    return {f"leaf_{i:05d}": _TINY_SHAPES[i % len(_TINY_SHAPES)] for i in range(num_leaves)}


_BUILDERS: dict[str, Callable[[int], Shapes]] = {"large": _large, "mlp": _mlp, "small": _small, "tiny": _tiny}

# The size argument of each builder in a full run: leaves for large and tiny, layers for mlp and small.
FULL_SIZES: dict[str, int] = {"large": 8, "mlp": 25, "small": 125, "tiny": 20_000}


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """A benchmark tree: a builder name (`large`, `mlp`, `small`, `tiny`) and its size argument."""

    kind: str
    size: int

    def __post_init__(self) -> None:
        if self.kind not in _BUILDERS:
            raise ValueError(f"unknown tree kind {self.kind!r}; expected one of {sorted(_BUILDERS)}")

    @classmethod
    def full(cls, kind: str) -> TreeSpec:
        return cls(kind, FULL_SIZES[kind])

    @functools.cached_property
    def shapes(self) -> Shapes:
        return _BUILDERS[self.kind](self.size)

    @property
    def name(self) -> str:
        """`kind`, or `kind[size]` when the size is not the full run's."""
        return self.kind if FULL_SIZES[self.kind] == self.size else f"{self.kind}[{self.size}]"

    @property
    def num_leaves(self) -> int:
        return len(self.shapes)

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def summary(self) -> dict[str, object]:
        return {"kind": self.kind, "size": self.size, "leaves": self.num_leaves, "params": self.num_params}


def make_arrays(spec: TreeSpec, seed: int = 0) -> tuple[Arrays, Arrays]:
    """Params and one fixed gradient tree, float32, from numpy's PCG64 seeded by `seed`."""
    return _normal(spec.shapes, [seed, 0], PARAM_SCALE), _normal(spec.shapes, [seed, 1], GRAD_SCALE)


def _normal(shapes: Shapes, seed: list[int], scale: float) -> Arrays:
    rng = np.random.default_rng(seed)
    return {path: rng.standard_normal(shape, dtype=np.float32) * np.float32(scale) for path, shape in shapes.items()}


@dataclasses.dataclass
class Workload:
    """A tree's values, the device JAX runs on, and optax's one-step params for the optimizer at hand."""

    tree: TreeSpec
    params: Arrays
    grads: Arrays
    device: jax.Device
    reference: Arrays | None = None


def workload(tree: TreeSpec, device: jax.Device | None = None) -> Workload:
    params, grads = make_arrays(tree)
    return Workload(tree, params, grads, device or jax.devices()[0])
