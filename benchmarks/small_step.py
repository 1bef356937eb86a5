"""One optimizer step of a small MLP, gradchain vs optax: `python -m benchmarks.small_step [--quick] [--json PATH]`.

A 3-layer MLP of width 64 (64 -> 64 -> 64 -> 10, float32; 6 param leaves, 8,970 params) is small
enough that a step costs what the library does around the arithmetic: dispatching the jitted
call, flattening the params and state, the few ops per leaf. Each case is one optimizer in both
libraries:

- `adamw`: `adamw(1e-3, weight_decay=1e-4)`;
- `clip+adamw(mask)`: `chain(clip_by_global_norm(1.0), adamw(1e-3, weight_decay=1e-4, mask=...))`,
  weight decay on the weights only;
- `partition(2 adam)`: weights and biases in two groups, an Adam each with its own learning rate
  (`gc.partition`, `optax.multi_transform`);

each run two ways:

- `jit`: `step(params, state, grads) -> (params, state)`, `tx.update` then `apply_updates`, jitted
  with params and state donated, on a fixed gradient (the loss gradient at the initial params);
- `nnx`: flax NNX's `nnx.Optimizer` on an `nnx.Module` of the same shape, in one `nnx.jit` train
  step (model and optimizer donated) that computes the loss of a fixed batch, its gradient and
  `optimizer.update(model, grads)`.

Before timing, both variants of a case run a few steps from the same params and must agree as in
`benchmarks.run` (`_measure.agreement`: within 1e-5 of the tree's largest |param|, and within 1e-3
of each leaf's largest change); a case that does not is shown as a mismatch and not timed. Steps
are timed interleaved (`_side_by_side.time_interleaved`), each step until its outputs are ready.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradchain as gc
from benchmarks import _report
from benchmarks._machine import machine_info
from benchmarks._measure import PARAMS_RTOL, UPDATE_RTOL, agreement
from benchmarks._side_by_side import UpdateStep, cli_main, machine_lines, median_us, path_arrays, time_interleaved

WIDTHS = (64, 64, 64, 10)  # input, two hidden layers, output
BATCH = 32
LEARNING_RATE = 1e-3
BIAS_LEARNING_RATE = 3e-3  # the second group of `partition(2 adam)`
WEIGHT_DECAY = 1e-4
MAX_NORM = 1.0
LIBRARIES = ("gradchain", "optax")
SETTINGS = ("jit", "nnx")


@dataclasses.dataclass(frozen=True)
class Config:
    """How long to time: `rounds` x `block` timed steps per variant after `warmup`; `agree_steps` checked."""

    rounds: int = 300
    block: int = 10
    warmup: int = 20
    agree_steps: int = 3
    quick: bool = False


QUICK = Config(rounds=40, block=5, warmup=5, quick=True)


# ---------------------------------------------------------------------------------------------------
# The optimizers: which leaves are weights


def _leaf_name(path: tuple[Any, ...]) -> str:
    """The last dict key on a leaf's path: `w`/`b` here, `kernel`/`bias` in NNX.

    The last *dict* key, because `nnx.Optimizer` calls `tx.init` on a state of `nnx.Param`
    variables, whose array sits one attribute (`.value`) deeper than in the pure arrays `update` gets.
    """
    return next(key.key for key in reversed(path) if isinstance(key, jax.tree_util.DictKey))


def _is_weight(path: tuple[Any, ...]) -> bool:
    return _leaf_name(path) in ("w", "kernel")


def weight_mask(params: Any) -> Any:
    """True on the weight matrices, False on the biases: which leaves get weight decay."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_weight(path), params)


def weight_labels(params: Any) -> Any:
    """`"weights"` or `"biases"` on every leaf: the two groups of `partition(2 adam)`."""
    return jax.tree_util.tree_map_with_path(lambda path, _: "weights" if _is_weight(path) else "biases", params)


# A function of the params for the masks and labels (not a fixed tree), so that one definition fits
# both the plain dict tree and NNX's `State`, in `init` and in `update`.
CASES: dict[str, dict[str, Callable[[], Any]]] = {
    "adamw": {
        "gradchain": lambda: gc.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
        "optax": lambda: optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
    },
    "clip+adamw(mask)": {
        "gradchain": lambda: gc.chain(
            gc.clip_by_global_norm(MAX_NORM), gc.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY, mask=weight_mask)
        ),
        "optax": lambda: optax.chain(
            optax.clip_by_global_norm(MAX_NORM),
            optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY, mask=weight_mask),
        ),
    },
    "partition(2 adam)": {
        "gradchain": lambda: gc.partition(
            {"weights": gc.adam(LEARNING_RATE), "biases": gc.adam(BIAS_LEARNING_RATE)}, weight_labels
        ),
        "optax": lambda: optax.multi_transform(
            {"weights": optax.adam(LEARNING_RATE), "biases": optax.adam(BIAS_LEARNING_RATE)}, weight_labels
        ),
    },
}
APPLY_UPDATES = {"gradchain": gc.apply_updates, "optax": optax.apply_updates}


# ---------------------------------------------------------------------------------------------------
# The model, in plain JAX and in NNX


def init_params(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """`{"layer<i>": {"w", "b"}}` in float32: He-normal weights, zero biases (numpy, seeded)."""
    rng = np.random.default_rng(seed)
    return {
        f"layer{i}": {
            "w": (rng.standard_normal((n_in, n_out)) * math.sqrt(2.0 / n_in)).astype(np.float32),
            "b": np.zeros(n_out, np.float32),
        }
        for i, (n_in, n_out) in enumerate(itertools.pairwise(WIDTHS))
    }


def mlp(params: Any, x: jax.Array) -> jax.Array:
    """The logits: ReLU between the layers, none after the last."""
    layers = [params[f"layer{i}"] for i in range(len(params))]
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def batch(seed: int = 1) -> tuple[jax.Array, jax.Array]:
    """A fixed batch: Gaussian inputs, uniform integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, WIDTHS[0])).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, WIDTHS[-1], BATCH))


def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class NnxMLP(nnx.Module):
    """The same MLP as an `nnx.Module` (flax's default init: LeCun-normal kernels, zero biases)."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(n_in, n_out, rngs=rngs) for n_in, n_out in itertools.pairwise(WIDTHS)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


# ---------------------------------------------------------------------------------------------------
# The two ways to step


def _nnx_train_step(model: NnxMLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    value, grads = nnx.value_and_grad(lambda m: loss(m(x), y))(model)
    optimizer.update(model, grads)
    return value


class NnxRunner:
    """`nnx.Optimizer` in an `nnx.jit` step (loss, grads, update) on a fixed batch; model and optimizer donated."""

    def __init__(self, tx: Any, x: jax.Array, y: jax.Array) -> None:
        self._model = NnxMLP(nnx.Rngs(0))  # the same seed for both libraries: the same initial params
        self._optimizer = nnx.Optimizer(self._model, tx, wrt=nnx.Param)
        self.start = self.params()
        self._x, self._y = x, y
        # A new function object per runner: each variant gets its own trace and executable.
        self._step = nnx.jit(lambda *args: _nnx_train_step(*args), donate_argnums=(0, 1))

    def __call__(self) -> None:
        # The loss is an output of the same execution as the new params and state (see UpdateStep).
        jax.block_until_ready(self._step(self._model, self._optimizer, self._x, self._y))

    def params(self) -> dict[str, np.ndarray]:
        return path_arrays(nnx.state(self._model, nnx.Param))

    def state_leaves(self) -> int:
        return len(jax.tree.leaves(self._optimizer.opt_state))


# ---------------------------------------------------------------------------------------------------
# Running


def run_case(case: str, setting: str, config: Config, grads: Any, data: tuple[jax.Array, jax.Array]) -> dict[str, Any]:
    """One case in one setting: state leaves, the agreement of the params, and the interleaved step times."""
    runners = {
        lib: UpdateStep(CASES[case][lib](), APPLY_UPDATES[lib], init_params(), grads)
        if setting == "jit"
        else NnxRunner(CASES[case][lib](), *data)
        for lib in LIBRARIES
    }
    for runner in runners.values():
        for _ in range(config.agree_steps):
            runner()
    params_err, update_err, worst = agreement(
        runners["gradchain"].params(), runners["optax"].params(), runners["optax"].start
    )
    row: dict[str, Any] = {
        "case": case,
        "setting": setting,
        "state_leaves": {lib: r.state_leaves() for lib, r in runners.items()},
        "params_rel_err": params_err,
        "update_rel_err": update_err,
        "worst_leaf": worst,
        "agree": params_err <= PARAMS_RTOL and update_err <= UPDATE_RTOL,
        "median_us": dict.fromkeys(LIBRARIES),
        "ratio": None,
        "samples_us": {},
    }
    if not row["agree"]:
        return row  # different work: not timed
    samples = time_interleaved(runners, rounds=config.rounds, block=config.block, warmup=config.warmup)
    row["median_us"] = {lib: median_us(s) for lib, s in samples.items()}
    row["ratio"] = row["median_us"]["gradchain"] / row["median_us"]["optax"]
    row["samples_us"] = {lib: [round(1e6 * t, 2) for t in s] for lib, s in samples.items()}
    return row


def run(config: Config, log: Callable[[str], None] = _report.print_now) -> dict[str, Any]:
    """Every case in both settings; the report as a dict (`markdown` renders it)."""
    start = time.perf_counter()
    machine = machine_info(jax.devices()[0])
    data = batch()
    params = jax.tree.map(jnp.asarray, init_params())
    grads = jax.jit(jax.grad(lambda p: loss(mlp(p, data[0]), data[1])))(params)
    rows = []
    for setting in SETTINGS:
        for case in CASES:
            row = run_case(case, setting, config, grads, data)
            log(f"{setting:>3} {case:<18} " + ("MISMATCH" if not row["agree"] else f"{row['ratio']:.2f}x"))
            rows.append(row)
    return {
        "benchmark": "small_step",
        "machine": machine,
        "config": dataclasses.asdict(config),
        "model": {
            "widths": list(WIDTHS),
            "param_leaves": len(jax.tree.leaves(params)),
            "params": sum(p.size for p in jax.tree.leaves(params)),
            "batch": BATCH,
        },
        "results": rows,
        "wall_s": time.perf_counter() - start,
    }


def _us(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the machine, then one row per case and setting."""
    c = report["config"]
    header = (
        "case",
        "setting",
        "state leaves gradchain",
        "state leaves optax",
        "gradchain µs",
        "optax µs",
        "gradchain / optax",
        "params rel err",
        "update rel err",
    )
    lines = [
        (
            r["case"],
            r["setting"],
            str(r["state_leaves"]["gradchain"]),
            str(r["state_leaves"]["optax"]),
            _us(r["median_us"]["gradchain"]),
            _us(r["median_us"]["optax"]),
            f"{r['ratio']:.2f}×" if r["agree"] else "MISMATCH",
            f"{r['params_rel_err']:.1e}",
            f"{r['update_rel_err']:.1e}",
        )
        for r in report["results"]
    ]
    m = report["model"]
    return "\n".join(
        [
            f"# Small step: MLP {'-'.join(map(str, m['widths']))} ({m['param_leaves']} leaves, {m['params']:,} params)"
            f"{' (quick)' if c['quick'] else ''}",
            "",
            *machine_lines(report["machine"]),
            f"- Median of {c['rounds']} rounds × {c['block']} steps per variant, interleaved, after {c['warmup']} "
            f"warm-up steps; params compared after {c['agree_steps']} steps (`_measure.agreement`: params within "
            f"{PARAMS_RTOL:g} of the largest |param|, changes within {UPDATE_RTOL:g} of each leaf's largest).",
            f"- Wall time {report['wall_s']:.0f} s.",
            "",
            _report.table(header, lines),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: `--quick`, `--json PATH`."""
    cli_main(__doc__.splitlines()[0], run, markdown, QUICK, Config(), argv)


if __name__ == "__main__":
    main()
