"""The demo behind `python -m gradchain demo`: three gradchain optimizers train the same small MLP.

Read it top to bottom; it is a plain JAX training loop in four parts:

1. **Data**: two noisy moons (or two spirals) generated with numpy, split into train and test sets.
2. **Model**: a 2 → 32 → 32 → 2 tanh MLP, its cross-entropy loss and its accuracy.
3. **Training**: for each optimizer, one `jax.jit`-compiled step that takes the params and the optimizer
   state (both donated, so XLA updates their buffers in place) and returns new ones.
4. **Reporting**: a progress line per optimizer, a results table, and a loss-curve PNG (with matplotlib).

The optimizers are gradchain recipes: SGD with momentum, Adam, and AdamW with a warmup-cosine learning
rate. The learning rate shown while training is read back from the optimizer state with
`gc.hyperparams(state)["learning_rate"]`; for AdamW it is the value the schedule gave at that step.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np

import gradchain as gc

DATASETS = ("moons", "spirals")
DEFAULT_STEPS = 1500
DEFAULT_SEED = 0
DEFAULT_OUT = "gradchain_demo.png"
BATCH_SIZE = 64
LAYER_SIZES = (2, 32, 32, 2)

Params = list[dict[str, jax.Array]]
TrainStep = Callable[[Params, gc.OptState, jax.Array, jax.Array], tuple[Params, gc.OptState, jax.Array]]


# --------------------------------------------------------------------------------------------------
# 1. Data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Inputs (float32, standardised with the training set's mean and std) and labels (int32, 0 or 1)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def make_moons(n_samples: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles with Gaussian noise (the shape of scikit-learn's `make_moons`).

    Args:
        n_samples: total number of points, split evenly between the two classes.
        noise: standard deviation of the Gaussian noise added to each coordinate.
        rng: the numpy random generator to draw from.

    Returns:
        `(x, y)`: points of shape `(n_samples, 2)` and labels of shape `(n_samples,)`.
    """
    n_upper = n_samples // 2
    t_upper = rng.uniform(0.0, math.pi, n_upper)
    t_lower = rng.uniform(0.0, math.pi, n_samples - n_upper)
    upper = np.stack([np.cos(t_upper), np.sin(t_upper)], axis=1)
    lower = np.stack([1.0 - np.cos(t_lower), 0.5 - np.sin(t_lower)], axis=1)
    x = np.concatenate([upper, lower]) + noise * rng.standard_normal((n_samples, 2))
    y = np.concatenate([np.zeros(n_upper), np.ones(n_samples - n_upper)])
    return x, y


def make_spirals(
    n_samples: int, noise: float, rng: np.random.Generator, turns: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Two intertwined spirals (arms half a turn apart) with Gaussian noise.

    Args:
        n_samples: total number of points, split evenly between the two arms.
        noise: standard deviation of the Gaussian noise added to each coordinate.
        rng: the numpy random generator to draw from.
        turns: how many full turns each arm makes.

    Returns:
        `(x, y)`: points of shape `(n_samples, 2)` and labels of shape `(n_samples,)`.
    """
    y = np.arange(n_samples) % 2
    # sqrt spreads the points evenly along the arm (the arm gets longer as the radius grows).
    radius = np.sqrt(rng.uniform(0.02, 1.0, n_samples))
    angle = 2 * math.pi * turns * radius + math.pi * y
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return x + noise * rng.standard_normal((n_samples, 2)), y


def make_dataset(name: str, seed: int, n_samples: int = 1000, test_fraction: float = 0.25) -> Dataset:
    """Generate a data set, shuffle it, split it into train and test sets, and standardise it.

    Args:
        name: `"moons"` or `"spirals"`.
        seed: seeds the numpy generator, so the same seed gives the same data.
        n_samples: total number of points.
        test_fraction: the share of points held out for testing.

    Returns:
        A `Dataset`.
    """
    rng = np.random.default_rng(seed)
    if name == "moons":
        x, y = make_moons(n_samples, noise=0.15, rng=rng)
    elif name == "spirals":
        x, y = make_spirals(n_samples, noise=0.05, rng=rng)
    else:
        raise ValueError(f"make_dataset: name must be one of {DATASETS}, got {name!r}")
    order = rng.permutation(n_samples)
    x, y = x[order], y[order]
    n_test = round(n_samples * test_fraction)
    x_train, x_test = x[n_test:], x[:n_test]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)

    def prepare(points: np.ndarray) -> np.ndarray:
        return ((points - mean) / std).astype(np.float32)

    labels = y.astype(np.int32)
    return Dataset(name, prepare(x_train), labels[n_test:], prepare(x_test), labels[:n_test])


# --------------------------------------------------------------------------------------------------
# 2. Model
# --------------------------------------------------------------------------------------------------


def init_mlp(key: jax.Array, sizes: Sequence[int] = LAYER_SIZES) -> Params:
    """Initialise an MLP: one `{"w", "b"}` dict per layer, LeCun-normal weights and zero biases.

    Args:
        key: a `jax.random` key; the same key gives the same params.
        sizes: the layer widths, input first.

    Returns:
        The params, a list of dicts (a pytree, which is all gradchain needs).
    """
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (n_in, n_out)) / math.sqrt(n_in),
            "b": jnp.zeros(n_out),
        }
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params: Params, x: jax.Array) -> jax.Array:
    """The MLP's logits for a batch of inputs `x` of shape `(batch, 2)`: tanh hidden layers."""
    *hidden, last = params
    for layer in hidden:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ last["w"] + last["b"]


def cross_entropy(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of the MLP's predictions for inputs `x` against integer labels `y`."""
    log_probs = jax.nn.log_softmax(mlp(params, x))
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))


def accuracy(params: Params, x: jax.Array, y: jax.Array) -> float:
    """The fraction of inputs `x` whose most likely class is the label `y`."""
    return float(jnp.mean(jnp.argmax(mlp(params, x), axis=1) == y))


# --------------------------------------------------------------------------------------------------
# 3. Training
# --------------------------------------------------------------------------------------------------


def make_optimizers(steps: int) -> dict[str, gc.GradientTransformation]:
    """The three optimizers the demo compares, each a gradchain recipe.

    Args:
        steps: the length of training, which the AdamW learning-rate schedule spans.

    Returns:
        A dict `name -> GradientTransformation`.
    """
    schedule = gc.schedules.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=2e-2, warmup_steps=steps // 10, decay_steps=steps, end_value=1e-4
    )
    return {
        "sgd+momentum": gc.sgd(learning_rate=0.05, momentum=0.9),
        "adam": gc.adam(learning_rate=1e-2),
        "adamw+cosine": gc.adamw(learning_rate=schedule, weight_decay=1e-4),
    }


def make_train_step(tx: gc.GradientTransformation) -> TrainStep:
    """One compiled training step for the optimizer `tx`.

    The params and the optimizer state are donated (`donate_argnums`): their buffers are reused for
    the new params and state, so the caller must use only the returned ones.

    Args:
        tx: the optimizer.

    Returns:
        `train_step(params, opt_state, x, y) -> (params, opt_state, loss)`, with `loss` the
        mini-batch loss before the update.
    """

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(cross_entropy)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return gc.apply_updates(params, updates), opt_state, loss

    return train_step


def minibatches(n_examples: int, batch_size: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays for `steps` mini-batches: epochs of a fresh random permutation, tail dropped.

    The same seed gives the same batches, so every optimizer sees the same data in the same order.
    """
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, n_examples)
    per_epoch = n_examples // batch_size
    produced = 0
    while produced < steps:
        order = rng.permutation(n_examples)
        for i in range(min(per_epoch, steps - produced)):
            yield order[i * batch_size : (i + 1) * batch_size]
        produced += per_epoch


@dataclass
class RunResult:
    """What one optimizer's training run produced."""

    name: str
    losses: np.ndarray  # the mini-batch loss at each step
    train_loss: float  # full training-set loss with the final params
    train_accuracy: float
    test_accuracy: float
    steps: int
    wall_time: float  # seconds, jit compilation included


class ProgressLine:
    """Prints a training run's progress: step, mini-batch loss, learning rate.

    On a terminal it redraws one line in place (`\\r`) about 50 times per run; elsewhere (a log file,
    a pipe, CI) it prints a plain line about 5 times per run.
    """

    def __init__(self, name: str, steps: int, stream: TextIO):
        self.name, self.steps, self.stream = name, steps, stream
        self.in_place = stream.isatty()
        self.every = max(1, steps // (50 if self.in_place else 5))

    def due(self, step: int) -> bool:
        """Whether `step` (1-based) is one to show; reading values back is skipped on the others."""
        return step % self.every == 0 or step == self.steps

    def show(self, step: int, loss: float, learning_rate: float) -> None:
        """Print (or redraw) the line for `step`."""
        width = len(str(self.steps))
        line = f"{self.name:>12}  step {step:>{width}}/{self.steps}  loss {loss:.4f}  lr {learning_rate:.2e}"
        if self.in_place:
            self.stream.write("\r" + line + ("\n" if step == self.steps else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def train(
    name: str,
    tx: gc.GradientTransformation,
    data: Dataset,
    *,
    steps: int,
    seed: int,
    stream: TextIO,
    batch_size: int = BATCH_SIZE,
) -> RunResult:
    """Train a fresh MLP with the optimizer `tx` for `steps` mini-batch steps.

    Args:
        name: the optimizer's name, for the progress line and the results.
        tx: the optimizer.
        data: the data set.
        steps: how many steps to train.
        seed: seeds the params and the mini-batch order (the same for every optimizer).
        stream: where the progress line goes.
        batch_size: examples per mini-batch.

    Returns:
        A `RunResult`.
    """
    start = time.perf_counter()
    params = init_mlp(jax.random.key(seed))
    opt_state = tx.init(params)
    train_step = make_train_step(tx)
    progress = ProgressLine(name, steps, stream)
    losses = []
    for step, batch in enumerate(minibatches(len(data.y_train), batch_size, steps, seed), start=1):
        params, opt_state, loss = train_step(params, opt_state, data.x_train[batch], data.y_train[batch])
        losses.append(loss)
        if progress.due(step):
            # The learning rate in effect at this step, read from the state (for AdamW: the schedule's value).
            learning_rate = gc.hyperparams(opt_state)["learning_rate"]
            progress.show(step, float(loss), float(learning_rate))
    jax.block_until_ready(params)
    wall_time = time.perf_counter() - start
    return RunResult(
        name=name,
        losses=np.asarray(jnp.stack(losses)),
        train_loss=float(cross_entropy(params, data.x_train, data.y_train)),
        train_accuracy=accuracy(params, data.x_train, data.y_train),
        test_accuracy=accuracy(params, data.x_test, data.y_test),
        steps=steps,
        wall_time=wall_time,
    )


# --------------------------------------------------------------------------------------------------
# 4. Reporting
# --------------------------------------------------------------------------------------------------

TABLE_HEADER = ("optimizer", "final train loss", "train accuracy", "test accuracy", "steps", "wall time (s)")


def format_table(results: Sequence[RunResult]) -> str:
    """The results as a plain-text table, one row per optimizer, columns separated by `|`."""
    rows = [TABLE_HEADER] + [
        (
            r.name,
            f"{r.train_loss:.4f}",
            f"{100 * r.train_accuracy:.1f}%",
            f"{100 * r.test_accuracy:.1f}%",
            str(r.steps),
            f"{r.wall_time:.2f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]

    def line(row: Sequence[str]) -> str:
        first, *rest = row
        cells = [first.ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return " | ".join(cells)

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([line(rows[0]), rule] + [line(row) for row in rows[1:]])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average over the last `window` steps (fewer at the start), to show the trend of noisy losses."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def plot_losses(results: Sequence[RunResult], out: Path, dataset: str) -> None:
    """Write the loss curves (mini-batch loss vs step, log scale) to the PNG file `out`.

    Uses matplotlib's object-oriented API without pyplot, so no GUI backend or global state is involved.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, r in enumerate(results):
        color = f"C{i}"
        steps = np.arange(1, len(r.losses) + 1)
        ax.plot(steps, r.losses, color=color, alpha=0.2, linewidth=0.8)
        ax.plot(steps, smooth(r.losses, max(1, len(r.losses) // 50)), color=color, label=r.name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mini-batch cross-entropy")
    ax.set_title(f"gradchain demo: {dataset}, MLP {'-'.join(map(str, LAYER_SIZES))}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(out, dpi=120)


def run_demo(
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = DEFAULT_SEED,
    dataset: str = "moons",
    out: Path | None = Path(DEFAULT_OUT),
    stream: TextIO | None = None,
) -> list[RunResult]:
    """Run the demo: train with each optimizer, print the table, and plot the losses to `out`.

    Args:
        steps: training steps per optimizer.
        seed: seeds the data, the params and the mini-batch order; the same seed gives the same
            losses and accuracies.
        dataset: `"moons"` or `"spirals"`.
        out: the PNG file for the loss curves, or None for no plot.
        stream: where the progress and the results go (default: `sys.stdout` at the time of the call).

    Returns:
        One `RunResult` per optimizer.
    """
    stream = sys.stdout if stream is None else stream
    data = make_dataset(dataset, seed)
    print(
        f"gradchain demo: {dataset}, {len(data.y_train)} train / {len(data.y_test)} test points, "
        f"MLP {'-'.join(map(str, LAYER_SIZES))}, {steps} steps of batch {BATCH_SIZE}, seed {seed}",
        file=stream,
    )
    results = [
        train(name, tx, data, steps=steps, seed=seed, stream=stream) for name, tx in make_optimizers(steps).items()
    ]
    report(results, out=out, dataset=dataset, stream=stream)
    return results


def report(results: Sequence[RunResult], *, out: Path | None, dataset: str, stream: TextIO) -> None:
    """Print the results table, then plot the loss curves to `out` (None: no plot) if matplotlib is there.

    Args:
        results: one `RunResult` per optimizer.
        out: the PNG file for the loss curves, or None for no plot.
        dataset: the data set's name, for the plot's title.
        stream: where the table and the messages go.
    """
    print(file=stream)
    print(format_table(results), file=stream)
    print("(wall time includes jit compilation)", file=stream)
    if out is None:
        return
    try:
        import matplotlib  # noqa: F401  (only to know whether it is there)
    except ImportError:
        print("matplotlib is not installed: skipped the plot (pip install 'gradchain[demo]')", file=stream)
    else:
        plot_losses(results, out, dataset)
        print(f"loss curves written to {out}", file=stream)
