"""End-to-end training step, gradchain vs optax vs torch: `python -m benchmarks.train_step [--quick] [--json PATH]`.

What share of a real training step is the optimizer, and does gradchain's part of it show? One
step is forward, backward and AdamW update (learning rate 1e-3, weight decay 1e-4):

- `gradchain`, `optax`: `step(params, state, x, y) -> (params, state, loss)` in one `jax.jit`,
  params and state donated;
- `torch`: the same model in torch (`_train_models`), an eager loop of `zero_grad`, forward,
  `backward` and `torch.optim.AdamW(...).step()` (torch's default implementation: `foreach` is
  left unset), with torch's default thread count.

on two models (`_train_models`): an MLP on scikit-learn's digits and a 12-layer transformer of
width 64 (181 leaves). For each library the report gives the median step time; the compile time
of the JAX step (lowering + XLA compilation, `jax.jit(step).lower(...).compile()` on a new
function object, median of a few, interleaved); and the time of an update-only step
(`tx.update` + `apply_updates`, jitted and donated, on the same params and a fixed gradient), whose
ratio to the full step is the optimizer's share of it. Ratios are to optax.

Before timing, gradchain's and optax's params after one training step and after a few update-only
steps must agree as in `benchmarks.run` (`_measure.agreement`), and torch's first loss must equal
JAX's on the same params and batch (the same model); what disagrees is not timed.
All variants are timed interleaved (`_side_by_side.time_interleaved`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import gradchain as gc
from benchmarks import _report
from benchmarks._machine import machine_info
from benchmarks._measure import PARAMS_RTOL, UPDATE_RTOL, agreement
from benchmarks._side_by_side import (
    UpdateStep,
    cli_main,
    compile_seconds,
    machine_lines,
    median_us,
    path_arrays,
    time_interleaved,
)
from benchmarks._torch_runner import torch_device
from benchmarks._train_models import Model, digits_model, transformer_model

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4  # optax's and gradchain's default; torch's (1e-2) is overridden to match
LOSS_RTOL = 1e-4  # torch's first loss against JAX's: the same function, summed in another order
JAX_LIBRARIES = ("gradchain", "optax")
LIBRARIES = (*JAX_LIBRARIES, "torch")
OPTIMIZERS: dict[str, Callable[[], Any]] = {
    "gradchain": lambda: gc.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
    "optax": lambda: optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
}
APPLY_UPDATES = {"gradchain": gc.apply_updates, "optax": optax.apply_updates}


@dataclasses.dataclass(frozen=True)
class Config:
    """Model size and how long to time: `*_rounds` x `block` timed steps per variant after `warmup`."""

    layers: int = 12
    mlp_rounds: int = 200
    transformer_rounds: int = 40
    block: int = 5
    warmup: int = 5
    compile_repeats: int = 3
    agree_steps: int = 3  # update-only steps checked; the training step is checked after one step
    quick: bool = False


QUICK = Config(layers=2, mlp_rounds=40, transformer_rounds=15, block=3, warmup=2, compile_repeats=1, quick=True)


# ---------------------------------------------------------------------------------------------------
# The steps


def train_step_function(tx: Any, apply_updates: Callable, loss: Callable) -> Callable:
    """A new `step(params, state, x, y) -> (params, state, loss)` function object on every call.

    New each time, so that no cache keyed on the function hides a compilation (see `compile_seconds`).
    """

    def step(params, state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state, value

    return step


class JaxTrainStep:
    """One library's jitted, donating training step over the model's batches in turn."""

    def __init__(self, library: str, model: Model) -> None:
        tx = OPTIMIZERS[library]()
        self.start = path_arrays(model.params)
        self._params = jax.tree.map(jnp.array, model.params)  # copies: donation consumes them
        self._state = jax.jit(tx.init)(self._params)  # jitted: see `UpdateStep`
        self._batches = [tuple(jnp.asarray(a) for a in b) for b in model.batches]
        self._step = jax.jit(train_step_function(tx, APPLY_UPDATES[library], model.jax_loss), donate_argnums=(0, 1))
        self.steps = 0
        self.first_loss: float | None = None

    def __call__(self) -> None:
        x, y = self._batches[self.steps % len(self._batches)]
        self._params, self._state, loss = self._step(self._params, self._state, x, y)
        # The loss is an output of the same execution as the new params and state: they are ready together.
        jax.block_until_ready(loss)
        if self.steps == 0:
            self.first_loss = float(loss)
        self.steps += 1

    def params(self) -> dict[str, np.ndarray]:
        return path_arrays(self._params)

    def state_leaves(self) -> int:
        return len(jax.tree.leaves(self._state))


class TorchTrainStep:
    """torch's eager step: `zero_grad`, forward, `backward`, `AdamW.step()`, over the same batches."""

    def __init__(self, model: Model, device: str) -> None:
        self.start = path_arrays(model.params)
        self._params = jax.tree.map(lambda a: torch.tensor(a, device=device, requires_grad=True), model.params)
        self._leaves = jax.tree.leaves(self._params)  # the same leaf order as the JAX trees
        self._optimizer = torch.optim.AdamW(self._leaves, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self._batches = [
            (torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)) for x, y in model.batches
        ]
        self._loss, self._cuda = model.torch_loss, device == "cuda"
        self.steps = 0
        self.first_loss: float | None = None

    def __call__(self) -> None:
        x, y = self._batches[self.steps % len(self._batches)]
        self._optimizer.zero_grad(set_to_none=True)
        loss = self._loss(self._params, x, y)
        loss.backward()
        self._optimizer.step()
        if self._cuda:
            torch.cuda.synchronize()
        if self.steps == 0:
            self.first_loss = loss.item()  # only once: `.item()` is a sync that a training loop avoids
        self.steps += 1

    def params(self) -> dict[str, np.ndarray]:
        arrays = [t.detach().cpu().numpy() for t in self._leaves]
        return dict(zip(self.start, arrays, strict=True))

    def state_leaves(self) -> int:
        return sum(len(s) for s in self._optimizer.state.values())  # step, exp_avg, exp_avg_sq per param


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def _compile_builds(model: Model) -> dict[str, Callable[[], tuple[Callable, tuple[Any, ...]]]]:
    """For `compile_seconds`: each library's new step function and abstract arguments (nothing is allocated)."""

    def build(library: str) -> tuple[Callable, tuple[Any, ...]]:
        tx, params = OPTIMIZERS[library](), _abstract(model.params)
        step = train_step_function(tx, APPLY_UPDATES[library], model.jax_loss)
        return step, (params, jax.eval_shape(tx.init, params), *_abstract(model.batches[0]))

    return {lib: (lambda lib=lib: build(lib)) for lib in JAX_LIBRARIES}


# ---------------------------------------------------------------------------------------------------
# Running


def run_model(model: Model, rounds: int, config: Config) -> dict[str, Any]:
    """Agreement, interleaved step times, compile times and the optimizer's share for one model."""
    train: dict[str, Any] = {lib: JaxTrainStep(lib, model) for lib in JAX_LIBRARIES}
    where = torch_device(jax.devices()[0])
    if where is not None:  # None: JAX is on a GPU that this torch build cannot use
        train["torch"] = TorchTrainStep(model, where)
    batch0 = tuple(jnp.asarray(a) for a in model.batches[0])
    grads = jax.jit(jax.grad(model.jax_loss))(jax.tree.map(jnp.asarray, model.params), *batch0)
    update = {lib: UpdateStep(OPTIMIZERS[lib](), APPLY_UPDATES[lib], model.params, grads) for lib in JAX_LIBRARIES}

    # One training step: from the same params, every library computes the same gradients, so the params
    # differ only by how the optimizers round. After more steps they would also differ by the gradients
    # at those slightly different params, which Adam amplifies where a gradient is near 0: a 12-layer
    # model drifts past the tolerance in 3 steps with two correct optimizers. The update-only steps,
    # on fixed gradients, check the later steps (bias corrections, counts).
    for runner in train.values():
        runner()
    for runner in update.values():
        for _ in range(config.agree_steps):
            runner()
    checks, status, torch_loss_err = _agreement(train, update)

    timed = {f"{lib} step": train[lib] for lib in train if status[lib] == "ok"}
    timed |= {f"{lib} update": update[lib] for lib in JAX_LIBRARIES if status[lib] == "ok"}
    samples = time_interleaved(timed, rounds=rounds, block=config.block, warmup=config.warmup)
    compiles = compile_seconds(_compile_builds(model), donate_argnums=(0, 1), repeats=config.compile_repeats)

    def med(key: str) -> float | None:
        return median_us(samples[key]) if key in samples else None

    rows = []
    for lib in LIBRARIES:
        row: dict[str, Any] = {
            "model": model.name,
            "library": lib,
            "status": status[lib],
            "state_leaves": train[lib].state_leaves() if lib in train else None,
            "step_us": med(f"{lib} step"),
            "update_us": med(f"{lib} update"),
            **{k: compiles.get(lib, {}).get(k) for k in ("lower_s", "compile_s", "total_s")},
        }
        row["optimizer_share"] = _over(row["update_us"], row["step_us"])
        rows.append(row)
    optax_row = rows[LIBRARIES.index("optax")]
    for row in rows:
        row["step_vs_optax"] = _over(row["step_us"], optax_row["step_us"])
        row["update_vs_optax"] = _over(row["update_us"], optax_row["update_us"])
        row["compile_vs_optax"] = _over(row["total_s"], optax_row["total_s"])
    return {
        "model": {"name": model.name, "leaves": model.num_leaves, "params": model.num_params},
        "agreement": {
            name: {"params_rel_err": p, "update_rel_err": u, "worst_leaf": w} for name, (p, u, w) in checks.items()
        },
        "torch_first_loss_rel_err": torch_loss_err,
        "first_loss": {lib: train[lib].first_loss for lib in train},
        "results": rows,
        "samples_us": {key: [round(1e6 * t, 2) for t in s] for key, s in samples.items()},
    }


def _agreement(train: dict[str, Any], update: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], float | None]:
    """`(checks, status per library, torch's first-loss error)` once every runner has run the same steps.

    gradchain and optax must agree with each other after the training step and the update-only
    steps (`_measure.agreement`); torch must have computed the same first loss.
    """
    checks = {
        "train": agreement(train["gradchain"].params(), train["optax"].params(), train["optax"].start),
        "update": agreement(update["gradchain"].params(), update["optax"].params(), update["optax"].start),
    }
    jax_agree = all(p <= PARAMS_RTOL and u <= UPDATE_RTOL for p, u, _ in checks.values())
    status = dict.fromkeys(JAX_LIBRARIES, "ok" if jax_agree else "mismatch")
    if "torch" not in train:
        return checks, {**status, "torch": "skipped"}, None
    # torch is not gated on its params: its gradients differ from JAX's by float32 rounding, which
    # Adam's first steps amplify where a gradient is near 0. The same first loss shows the same model;
    # the params' agreement is recorded for information.
    first = train["optax"].first_loss
    torch_loss_err = abs(train["torch"].first_loss - first) / abs(first)
    checks["torch train"] = agreement(train["torch"].params(), train["optax"].params(), train["optax"].start)
    return checks, {**status, "torch": "ok" if torch_loss_err <= LOSS_RTOL else "mismatch"}, torch_loss_err


def _over(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def run(config: Config, log: Callable[[str], None] = _report.print_now) -> dict[str, Any]:
    """Both models; the report as a dict (`markdown` renders it)."""
    start = time.perf_counter()
    machine = machine_info(jax.devices()[0])
    models = [(digits_model(), config.mlp_rounds), (transformer_model(config.layers), config.transformer_rounds)]
    reports = []
    for model, rounds in models:
        reports.append(run_model(model, rounds, config))
        steps = {r["library"]: r["step_vs_optax"] for r in reports[-1]["results"]}
        log(f"{model.name}: step vs optax " + ", ".join(f"{k} {_ratio(v)}" for k, v in steps.items()))
    return {
        "benchmark": "train_step",
        "machine": machine,
        "config": dataclasses.asdict(config),
        "models": reports,
        "results": [row for r in reports for row in r["results"]],
        "wall_s": time.perf_counter() - start,
    }


def _ms(us: float | None) -> str:
    if us is None:
        return "—"
    ms = us / 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:#.3g}"  # three significant digits, trailing zeros kept


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _share(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


HEADER = (
    "model",
    "library",
    "state leaves",
    "step ms",
    "step vs optax",
    "compile s",
    "compile vs optax",
    "update-only ms",
    "update vs optax",
    "optimizer share",
)


def _cells(row: dict[str, Any]) -> tuple[str, ...]:
    step = _ms(row["step_us"]) if row["status"] == "ok" else row["status"].upper()
    return (
        row["model"],
        row["library"],
        "—" if row["state_leaves"] is None else str(row["state_leaves"]),
        step,
        _ratio(row["step_vs_optax"]),
        "—" if row["total_s"] is None else f"{row['total_s']:.2f}",
        _ratio(row["compile_vs_optax"]),
        _ms(row["update_us"]),
        _ratio(row["update_vs_optax"]),
        _share(row["optimizer_share"]),
    )


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the machine and the models, then one row per model and library."""
    c = report["config"]
    model_lines = []
    for m in report["models"]:
        worst = max(m["agreement"][k]["params_rel_err"] for k in ("train", "update"))
        torch_err = m["torch_first_loss_rel_err"]
        model_lines.append(
            f"- {m['model']['name']}: {m['model']['leaves']} leaves, {m['model']['params']:,} params; "
            f"gradchain vs optax params (1 training step, {c['agree_steps']} update-only): rel err {worst:.1e}"
            + ("" if torch_err is None else f"; torch's first loss vs JAX's: rel err {torch_err:.1e}")
            + "."
        )
    return "\n".join(
        [
            f"# Training step: forward + backward + AdamW{' (quick)' if c['quick'] else ''}",
            "",
            *machine_lines(report["machine"]),
            *model_lines,
            f"- Medians of {c['mlp_rounds']} (MLP) / {c['transformer_rounds']} (transformer) rounds × {c['block']} "
            f"steps per variant, interleaved, after {c['warmup']} warm-up steps; compile: lowering + XLA compilation, "
            f"median of {c['compile_repeats']}. Optimizer share: update-only step / full step, same library.",
            f"- Wall time {report['wall_s']:.0f} s.",
            "",
            _report.table(HEADER, (_cells(r) for r in report["results"])),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: `--quick`, `--json PATH`."""
    cli_main(__doc__.splitlines()[0], run, markdown, QUICK, Config(), argv)


if __name__ == "__main__":
    main()
