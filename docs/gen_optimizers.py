"""Generate `docs/optimizers.md`: every optimizer, its paper, its state size, and its optax / torch.optim twins.

Run from the repository root: `python docs/gen_optimizers.py` (rewrites the page). The state size is
measured, not declared: each optimizer is initialised (abstractly) on a 256 x 256 float32 matrix and a
256-element float32 vector, and the bytes of its state are divided by the number of parameters; what
optax and torch.optim offer is read from the installed packages. `tests/test_catalogue.py` checks
that the page is what this script writes.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import gradchain as gc

PAGE = pathlib.Path(__file__).resolve().parent / "optimizers.md"


class Entry(NamedTuple):
    name: str
    make: Callable[[], Any]
    paper: str
    optax: str | None  # the optax name, if any
    torch: str | None  # the torch.optim class, if any


LR = 1e-3
NADAMW_TORCH = "NAdam(decoupled_weight_decay=True)"
ENTRIES = [
    Entry("sgd", lambda: gc.sgd(LR, momentum=0.9), "Robbins & Monro 1951; Polyak 1964 (momentum)", "sgd", "SGD"),
    Entry("adagrad", lambda: gc.adagrad(LR), "Duchi, Hazan & Singer 2011", "adagrad", "Adagrad"),
    Entry("rmsprop", lambda: gc.rmsprop(LR), "Tieleman & Hinton 2012 (lecture 6.5)", "rmsprop", "RMSprop"),
    Entry("adadelta", lambda: gc.adadelta(), "Zeiler 2012", "adadelta", "Adadelta"),
    Entry("adam", lambda: gc.adam(LR), "Kingma & Ba 2015", "adam", "Adam"),
    Entry("adamw", lambda: gc.adamw(LR), "Loshchilov & Hutter 2019", "adamw", "AdamW"),
    Entry("amsgrad", lambda: gc.amsgrad(LR), "Reddi, Kale & Kumar 2018", "amsgrad", "Adam(amsgrad=True)"),
    Entry("adamax", lambda: gc.adamax(LR), "Kingma & Ba 2015 (section 7)", "adamax", "Adamax"),
    Entry("adamaxw", lambda: gc.adamaxw(LR), "Kingma & Ba 2015; Loshchilov & Hutter 2019", "adamaxw", None),
    Entry("nadam", lambda: gc.nadam(LR), "Dozat 2016", "nadam", "NAdam"),
    Entry(
        "nadamw",
        lambda: gc.nadamw(LR),
        "Dozat 2016; Loshchilov & Hutter 2019",
        "nadamw",
        "NAdam(decoupled_weight_decay=True)",
    ),
    Entry("radam", lambda: gc.radam(LR), "Liu et al. 2020", "radam", "RAdam"),
    Entry("adabelief", lambda: gc.adabelief(LR), "Zhuang et al. 2020", "adabelief", None),
    Entry("yogi", lambda: gc.yogi(LR), "Zaheer et al. 2018", "yogi", None),
    Entry("adan", lambda: gc.adan(LR), "Xie et al. 2022", "adan", None),
    Entry("novograd", lambda: gc.novograd(LR), "Ginsburg et al. 2019", "novograd", None),
    Entry("lion", lambda: gc.lion(LR), "Chen et al. 2023", "lion", None),
    Entry("adafactor", lambda: gc.adafactor(LR), "Shazeer & Stern 2018", "adafactor", "Adafactor"),
    Entry("sm3", lambda: gc.sm3(LR), "Anil et al. 2019", "sm3", None),
    Entry("lars", lambda: gc.lars(LR), "You, Gitman & Ginsburg 2017", "lars", None),
    Entry("lamb", lambda: gc.lamb(LR), "You et al. 2020", "lamb", None),
    Entry("fromage", lambda: gc.fromage(LR), "Bernstein et al. 2020", "fromage", None),
    Entry("sign_sgd", lambda: gc.sign_sgd(LR), "Bernstein et al. 2018", "sign_sgd", None),
    Entry("signum", lambda: gc.signum(LR), "Bernstein et al. 2018", "signum", None),
    Entry("rprop", lambda: gc.rprop(LR), "Riedmiller & Braun 1993", "rprop", "Rprop"),
    Entry("asgd", lambda: gc.asgd(LR), "Polyak & Juditsky 1992", None, "ASGD"),
    Entry("noisy_sgd", lambda: gc.noisy_sgd(LR), "Neelakantan et al. 2015", "noisy_sgd", None),
    Entry(
        "optimistic_gradient_descent",
        lambda: gc.optimistic_gradient_descent(LR),
        "Daskalakis et al. 2018",
        "optimistic_gradient_descent",
        None,
    ),
    Entry("optimistic_adam", lambda: gc.optimistic_adam(LR), "Daskalakis et al. 2018", "optimistic_adam", None),
    Entry("polyak_sgd", lambda: gc.polyak_sgd(), "Loizou et al. 2021", "polyak_sgd", None),
    Entry("lbfgs", lambda: gc.lbfgs(), "Liu & Nocedal 1989; Nocedal & Wright 2006 (line searches)", "lbfgs", "LBFGS"),
]

SHAPES = {"matrix": (256, 256), "vector": (256,)}


def state_bytes_per_param(make: Callable[[], Any], shape: tuple[int, ...]) -> float:
    """Bytes of optimizer state per float32 parameter, for one leaf of `shape` (abstract: no memory used)."""
    params = {"w": jax.ShapeDtypeStruct(shape, jnp.float32)}
    state = jax.eval_shape(make().init, params)
    total = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    return total / math.prod(shape)


def _has_optax(name: str | None) -> bool:
    try:
        import optax
    except ImportError:  # pragma: no cover - optax is a dev dependency
        return False
    return name is not None and hasattr(optax, name)


def _has_torch(name: str | None) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dev dependency
        return False
    return name is not None and hasattr(torch.optim, name.split("(")[0])


def _bytes(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 0.005 else f"{value:.2f}"


def render() -> str:
    rows = []
    for e in ENTRIES:
        matrix, vector = (state_bytes_per_param(e.make, s) for s in SHAPES.values())
        optax_cell = f"`optax.{e.optax}`" if _has_optax(e.optax) else "—"
        torch_cell = f"`torch.optim.{e.torch}`" if _has_torch(e.torch) else "—"
        rows.append(f"| `{e.name}` | {e.paper} | {_bytes(matrix)} | {_bytes(vector)} | {optax_cell} | {torch_cell} |")
    header = [
        "# Optimizers",
        "",
        "<!-- Generated by `python docs/gen_optimizers.py`; do not edit by hand. -->",
        "",
        "Every optimizer in gradchain, the paper it comes from, the bytes of optimizer state it keeps per",
        "float32 parameter (measured by initialising it on a 256 × 256 matrix and on a 256-element vector:",
        "factored and per-leaf statistics make the two differ; step counts and hyperparameters add a few",
        "bytes per leaf, not per parameter), and its counterparts in optax and `torch.optim`. Each is a",
        "`chain` of public ingredients; its docstring gives the update rule, the recipe and where its",
        "defaults differ from optax's or torch's. Defaults are used here (e.g. `sgd` with `momentum=0.9`).",
        "",
        "| optimizer | paper | state bytes/param (matrix) | (vector) | optax | torch.optim |",
        "|---|---|---|---|---|---|",
    ]
    footer = [
        "",
        "Not here, on purpose: `torch.optim.SparseAdam`, whose point is to update only the rows of an",
        "embedding that a batch touched, given a sparse gradient. JAX gradients are dense arrays, so its",
        "lazy moments would be Adam's on the touched rows and stale elsewhere; with dense gradients use",
        "`adam`, or `masked` to restrict updates to some leaves. `torch.optim.LBFGS`'s closure interface",
        "becomes `gc.lbfgs` with `value_fn=`, or the `gc.minimize` helper.",
        "",
    ]
    return "\n".join([*header, *rows, *footer])


def main() -> None:
    PAGE.write_text(render())
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
