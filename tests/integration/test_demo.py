"""`python -m gradchain demo` (gradchain/__main__.py, gradchain/_demo.py) and the code in README.md.

Each full demo run costs about three jit compilations of a training step, so the expensive runs happen
once, in module-scoped fixtures: the default demo in-process (with the plot), `python -m gradchain demo
--steps 50 --no-plot` in a subprocess, and the README's code.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from gradchain import _demo
from gradchain.__main__ import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPTIMIZERS = ["sgd+momentum", "adam", "adamw+cosine"]


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """The demo's results table as `optimizer -> {column: cell}`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("optimizer "))
    header = [cell.strip() for cell in lines[start].split("|")]
    assert header == list(_demo.TABLE_HEADER)
    assert set(lines[start + 1]) <= {"-", "+"}, lines[start + 1]
    rows = {}
    for line in lines[start + 2 :]:
        if " | " not in line:
            break
        cells = [cell.strip() for cell in line.split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def percent(cell: str) -> float:
    assert cell.endswith("%"), cell
    return float(cell[:-1])


def demo_schedule(step: int, steps: int) -> float:
    """The AdamW learning rate of the demo at `step` (0-based): an independent transcription."""
    warmup, peak, end = steps // 10, 2e-2, 1e-4
    if step < warmup:
        return peak * step / warmup
    length = steps - warmup
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * min(step - warmup, length) / length))


# --------------------------------------------------------------------------------------------------
# The default demo, in-process
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "curves.png"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--out", str(out)])
    return code, stdout.getvalue(), out


def test_default_run_prints_a_table_with_three_optimizers(default_run):
    code, text, _ = default_run
    assert code == 0
    rows = parse_table(text)
    assert list(rows) == OPTIMIZERS
    for row in rows.values():
        assert int(row["steps"]) == _demo.DEFAULT_STEPS
        assert 0.0 < float(row["final train loss"]) < 0.1
        assert 0.0 < float(row["wall time (s)"])
        for column in ("train accuracy", "test accuracy"):
            assert 0.0 <= percent(row[column]) <= 100.0


@pytest.mark.parametrize(("name", "minimum"), [("sgd+momentum", 90.0), ("adam", 95.0), ("adamw+cosine", 95.0)])
def test_default_run_accuracies_on_moons(default_run, name, minimum):
    rows = parse_table(default_run[1])
    assert percent(rows[name]["test accuracy"]) > minimum
    assert percent(rows[name]["train accuracy"]) > minimum


def test_default_run_progress_shows_the_learning_rate_read_from_the_state(default_run):
    text, steps = default_run[1], _demo.DEFAULT_STEPS
    progress = re.findall(r"^\s*(\S+)  step\s+(\d+)/(\d+)  loss (\S+)  lr (\S+)$", text, re.MULTILINE)
    every = steps // 5
    for name in OPTIMIZERS:
        lines = [p for p in progress if p[0] == name]
        # Not a terminal (stdout is a StringIO): plain lines, about 5 per optimizer, the last at the end.
        assert [int(p[1]) for p in lines] == list(range(every, steps + 1, every))
        assert all(int(p[2]) == steps and math.isfinite(float(p[3])) for p in lines)
        for _, step, _, _, lr in lines:
            expected = {"sgd+momentum": 0.05, "adam": 1e-2}.get(name) or demo_schedule(int(step) - 1, steps)
            assert lr == f"{expected:.2e}", (name, step)


def test_default_run_writes_the_png_and_says_where(default_run):
    _, text, out = default_run
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 10_000  # three curves, not an empty canvas
    assert f"loss curves written to {out}" in text


# --------------------------------------------------------------------------------------------------
# `python -m gradchain ...` in a subprocess
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subprocess_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    result = subprocess.run(
        [sys.executable, "-m", "gradchain", "demo", "--steps", "50", "--no-plot"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, cwd


def test_subprocess_demo_exits_0_and_no_plot_writes_nothing(subprocess_run):
    result, cwd = subprocess_run
    assert result.returncode == 0, result.stderr
    rows = parse_table(result.stdout)
    assert list(rows) == OPTIMIZERS
    assert all(row["steps"] == "50" for row in rows.values())
    assert "loss curves" not in result.stdout and "skipped" not in result.stdout
    assert list(cwd.iterdir()) == []


def test_demo_is_deterministic_for_a_seed(subprocess_run):
    # The same seed in another process gives the same numbers (all but the wall time).
    result, _ = subprocess_run
    reported = parse_table(result.stdout)["adam"]
    again = _demo.train(
        "adam",
        _demo.make_optimizers(50)["adam"],
        _demo.make_dataset("moons", _demo.DEFAULT_SEED),
        steps=50,
        seed=_demo.DEFAULT_SEED,
        stream=io.StringIO(),
    )
    row = parse_table(_demo.format_table([again]))["adam"]
    for column in ("final train loss", "train accuracy", "test accuracy", "steps"):
        assert row[column] == reported[column], column


def test_no_command_prints_usage_and_exits_2():
    result = subprocess.run([sys.executable, "-m", "gradchain"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "usage: python -m gradchain" in result.stderr
    assert "demo" in result.stderr


# --------------------------------------------------------------------------------------------------
# Command-line parsing (no training)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], ["usage: python -m gradchain", "demo"]),
        (["demo", "--help"], ["--steps", "--seed", "--dataset", "moons", "spirals", "--out", "--no-plot"]),
    ],
)
def test_help_exits_0(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in expected:
        assert word in text


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["demo", "--steps", "0"], "--steps"),
        (["demo", "--steps", "ten"], "--steps"),
        (["demo", "--seed", "1.5"], "--seed"),
        (["demo", "--seed", "-1"], "--seed"),
        (["demo", "--dataset", "mnist"], "--dataset"),
        (["demo", "--out", "no/such/directory/curves.png"], "--out"),
        (["train"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(capsys, argv, names):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert names in capsys.readouterr().err


def test_defaults():
    args = build_parser().parse_args(["demo"])
    assert (args.steps, args.seed, args.dataset, args.out, args.no_plot) == (
        _demo.DEFAULT_STEPS,
        0,
        "moons",
        Path("gradchain_demo.png"),  # relative: the current directory
        False,
    )


# --------------------------------------------------------------------------------------------------
# The demo's parts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _demo.DATASETS)
def test_dataset_is_balanced_standardised_and_seeded(name):
    data = _demo.make_dataset(name, seed=3)
    assert data.x_train.shape == (750, 2) and data.x_test.shape == (250, 2)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, rtol=1e-6)
    labels = np.concatenate([data.y_train, data.y_test])
    assert set(np.unique(labels)) == {0, 1} and labels.sum() == 500
    same = _demo.make_dataset(name, seed=3)
    other = _demo.make_dataset(name, seed=4)
    np.testing.assert_array_equal(data.x_train, same.x_train)
    np.testing.assert_array_equal(data.y_test, same.y_test)
    assert not np.array_equal(data.x_train, other.x_train)


def test_moons_lie_on_their_half_circles():
    x, y = _demo.make_moons(400, noise=0.0, rng=np.random.default_rng(0))
    upper, lower = x[y == 0], x[y == 1]
    np.testing.assert_allclose(np.hypot(*upper.T), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.hypot(lower[:, 0] - 1.0, lower[:, 1] - 0.5), 1.0, rtol=1e-12)
    assert (upper[:, 1] >= 0).all() and (lower[:, 1] <= 0.5).all()


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match=r"make_dataset: name must be one of .*got 'mnist'"):
        _demo.make_dataset("mnist", seed=0)


@pytest.mark.parametrize(("n", "batch", "steps"), [(750, 64, 30), (10, 4, 7), (3, 64, 5)])
def test_minibatches_are_epochs_of_permutations(n, batch, steps):
    batches = list(_demo.minibatches(n, batch, steps, seed=0))
    size = min(batch, n)
    per_epoch = n // size
    assert len(batches) == steps and all(len(b) == size for b in batches)
    for start in range(0, steps, per_epoch):
        epoch = np.concatenate(batches[start : start + per_epoch])
        assert len(np.unique(epoch)) == len(epoch) and epoch.max() < n
    again = list(_demo.minibatches(n, batch, steps, seed=0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_mlp_shapes_and_loss():
    params = _demo.init_mlp(jax.random.key(0))
    assert [(layer["w"].shape, layer["b"].shape) for layer in params] == [
        ((2, 32), (32,)),
        ((32, 32), (32,)),
        ((32, 2), (2,)),
    ]
    x = jnp.array([[0.5, -1.0], [2.0, 0.0], [0.0, 0.0]])
    y = jnp.array([1, 0, 1])
    logits = np.asarray(_demo.mlp(params, x), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -log_probs[np.arange(3), np.asarray(y)].mean()
    np.testing.assert_allclose(float(_demo.cross_entropy(params, x, y)), expected, rtol=1e-6)
    assert _demo.accuracy(params, x, y) == np.mean(logits.argmax(axis=1) == np.asarray(y))


@pytest.mark.parametrize("window", [1, 3, 10])
def test_smooth_is_a_trailing_moving_average(window):
    values = np.random.default_rng(0).uniform(size=25)
    expected = [values[max(0, i + 1 - window) : i + 1].mean() for i in range(len(values))]
    np.testing.assert_allclose(_demo.smooth(values, window), expected, rtol=1e-12)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "lines"), [(FakeTerminal(), 1), (io.StringIO(), 5)])
def test_progress_redraws_on_a_terminal_and_prints_lines_elsewhere(stream, lines):
    progress = _demo.ProgressLine("adam", 1000, stream)
    for step in range(1, 1001):
        if progress.due(step):
            progress.show(step, loss=1.0 / step, learning_rate=1e-3)
    text = stream.getvalue()
    assert text.count("\n") == lines and text.endswith("\n")
    updates = text.count("\r") if lines == 1 else text.count("\n")
    assert updates == (50 if lines == 1 else 5)
    assert text.rstrip().endswith("adam  step 1000/1000  loss 0.0010  lr 1.00e-03")


def fake_results() -> list[_demo.RunResult]:
    losses = np.geomspace(0.7, 0.01, 40)
    return [
        _demo.RunResult(name, losses * (i + 1), 0.0123 * (i + 1), 0.98, 0.975 - i / 100, 40, 1.5 + i)
        for i, name in enumerate(OPTIMIZERS)
    ]


def test_table_format():
    rows = parse_table(_demo.format_table(fake_results()))
    assert rows["adam"] == {
        "optimizer": "adam",
        "final train loss": "0.0246",
        "train accuracy": "98.0%",
        "test accuracy": "96.5%",
        "steps": "40",
        "wall time (s)": "2.50",
    }


def test_report_without_matplotlib_says_it_skipped_the_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    stream = io.StringIO()
    _demo.report(fake_results(), out=tmp_path / "curves.png", dataset="moons", stream=stream)
    assert "matplotlib is not installed: skipped the plot (pip install 'gradchain[demo]')" in stream.getvalue()
    assert list(tmp_path.iterdir()) == []


def test_report_with_no_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stream = io.StringIO()
    _demo.report(fake_results(), out=None, dataset="moons", stream=stream)
    assert list(parse_table(stream.getvalue())) == OPTIMIZERS
    assert "loss curves" not in stream.getvalue() and "skipped" not in stream.getvalue()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# README.md
# --------------------------------------------------------------------------------------------------

README_COMMANDS = [
    'python3 -m venv .venv && . .venv/bin/activate && pip install ".[demo]" && python -m gradchain demo',
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && pytest && mkdocs build --strict',
]


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.DOTALL)


class CompileCounter(logging.Handler):
    """Counts XLA compilations of functions called `name`, from `jax.log_compiles()`'s log records."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.pattern = f"XLA compilation of jit({name})"
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.pattern in record.getMessage():
            self.count += 1


@pytest.fixture(scope="module")
def readme_run():
    code = "\n".join(readme_blocks("python"))
    namespace: dict = {"__name__": "readme"}
    stdout = io.StringIO()
    counter = CompileCounter("train_step")
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    try:
        with jax.log_compiles(), contextlib.redirect_stdout(stdout):
            exec(compile(code, str(README), "exec"), namespace)
    finally:
        logger.removeHandler(counter)
    return namespace, stdout.getvalue(), counter.count


def test_readme_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert lines[0].startswith("# gradchain")
    assert readme_blocks("bash")[:2] == [command + "\n" for command in README_COMMANDS]
    # Title, one sentence, then the commands.
    assert [line for line in lines[1:6] if line.strip()][1] == "```bash"


def test_readme_quick_start_runs_and_prints_what_it_says(readme_run):
    namespace, text, _ = readme_run
    first, second = text.strip().splitlines()
    # The scheduled learning rate read back after 500 steps is the schedule's value at step 499.
    loss, lr = re.fullmatch(r"loss (\S+), learning rate (\S+)", first).groups()
    expected_lr = 0.05 * 0.5 * (1 + math.cos(math.pi * (499 - 50) / 450))
    assert lr == f"{expected_lr:.1e}"
    assert float(loss) < 1e-6
    # The recipe's hyperparameters after set_hyperparams: the new learning rate, the rest as built.
    assert ast.literal_eval(second) == {
        "b1": "0.9",
        "b2": "0.999",
        "eps": "1e-08",
        "eps_root": "0",
        "weight_decay": "0.0001",
        "learning_rate": "0.0001",
    }
    params = namespace["params"]
    np.testing.assert_allclose(params["w"], [1.0, -2.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(params["b"], 0.3, atol=1e-3)


def test_readme_train_step_compiles_once_per_optimizer(readme_run):
    # Two optimizers, so two compilations; neither later steps nor set_hyperparams may compile again.
    assert readme_run[2] == 2


@pytest.mark.parametrize("placement", ["default", "one device", "sharded"])
def test_set_hyperparams_does_not_recompile_the_step(placement):
    # The README's promise, isolated from the first steps: once the step has run, new hyperparameter
    # values must not compile it again, wherever the params live.
    params = {"w": jnp.arange(16.0).reshape(8, 2), "b": jnp.ones(8)}
    if placement == "one device":
        params = jax.device_put(params, jax.devices()[0])
    elif placement == "sharded":
        mesh = jax.make_mesh((len(jax.devices()),), ("data",))
        params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    tx = gc.sgd(learning_rate=0.1, momentum=0.9)

    @jax.jit
    def train_step(params, state):
        updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        return gc.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(2):  # warm-up: the first steps may compile
        params, state = train_step(params, state)
    counter = CompileCounter("train_step")
    logger = logging.getLogger("jax")
    logger.addHandler(counter)
    try:
        with jax.log_compiles():
            for name, value in [("learning_rate", 0.05), ("learning_rate", 0.01), ("decay", 0.5)]:
                state = gc.set_hyperparams(state, {name: value})
                params, state = train_step(params, state)
    finally:
        logger.removeHandler(counter)
    assert counter.count == 0


def numpy_adamw(params, grads, schedule, *, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
    """AdamW (Loshchilov & Hutter 2019, in PyTorch's form) in float64: the update at every step."""
    p = [np.asarray(x, np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    updates = []
    for t in range(1, len(grads[0]) + 1):
        lr = schedule(t - 1)
        step = []
        for i, g in enumerate(grads):
            g = np.asarray(g[t - 1], np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            step.append(-lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p[i]))
            p[i] = p[i] + step[-1]
        updates.append(step)
    return [np.stack([u[i] for u in updates]) for i in range(len(params))]


def test_readme_adamw_from_ingredients_is_adamw(readme_run):
    namespace = readme_run[0]
    steps = 200
    rng = np.random.default_rng(0)
    shapes = {"dense": {"w": (4, 3), "b": (3,)}, "scale": (), "embed": (7, 2, 2)}
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal((steps, *p.shape)), jnp.float32), params)
    optimizers = {
        "readme": namespace["my_adamw"],
        "recipe": gc.adamw(namespace["schedule"], weight_decay=1e-4),
        "optax": optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 0.05, 50, 500), weight_decay=1e-4),
    }

    @jax.jit
    def trajectories(params, grads):
        out = {}
        for name, tx in optimizers.items():

            def step(carry, g, tx=tx):
                p, state = carry
                updates, state = tx.update(g, state, p)
                return (gc.apply_updates(p, updates), state), updates

            _, out[name] = jax.lax.scan(step, (params, tx.init(params)), grads)
        return out

    out = trajectories(params, grads)

    def schedule(t):
        return 0.05 * t / 50 if t < 50 else 0.05 * 0.5 * (1 + math.cos(math.pi * min(t - 50, 450) / 450))

    leaves = jax.tree.leaves(params)
    expected = numpy_adamw(leaves, jax.tree.leaves(grads), schedule)
    # The README's chain and the recipe are the same chain: the same numbers, bit for bit.
    for a, b in zip(jax.tree.leaves(out["readme"]), jax.tree.leaves(out["recipe"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # Against float64 numpy, relative to each leaf's largest update. optax's AdamW is off by up to ~7e-6:
    # it computes the bias corrections 1 - b**t directly in float32; gradchain uses -expm1(t log b).
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for name, rtol in [("readme", 1e-6), ("optax", 1e-5)]:
        for path, got, want in zip(paths, jax.tree.leaves(out[name]), expected, strict=True):
            error = np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()
            assert error <= rtol, (name, path, error)


def test_readme_lists_every_public_name():
    text = README.read_text()
    names = gc.__all__ + gc.schedules.__all__ + gc.tree.__all__
    missing = [name for name in names if f"`{name}`" not in text and f"`gc.{name}`" not in text]
    assert missing == [], f"README.md's table of what is available lacks {missing}"


def test_readme_links_point_to_files():
    links = re.findall(r"\]\(([^)#]+)\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert {"docs/torch_migration.md", "docs/hyperparameters.md", "CHANGELOG.md", "LICENSE"} <= set(local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []
