"""Smoke tests of benchmarks/small_step.py and benchmarks/train_step.py: report structure and agreement, not timings."""

import json
import math
import sys
from pathlib import Path

import pytest

# benchmarks/ is not installed: it runs from the repository root, as `python -m benchmarks.small_step`.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax
import jax.numpy as jnp
import optax

# The benchmarks import torch themselves (they time it side by side): without torch there is nothing to smoke-test.
pytest.importorskip("torch", reason="benchmarks/small_step.py and train_step.py run torch side by side")

from benchmarks import small_step, train_step
from benchmarks._train_models import digits_model, transformer_model

SMALL = small_step.Config(rounds=1, block=2, warmup=1, agree_steps=2)
TRAIN = train_step.Config(
    layers=1, mlp_rounds=1, transformer_rounds=1, block=2, warmup=1, compile_repeats=1, agree_steps=2
)


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def small_report():
    return small_step.run(SMALL, log=quiet)


@pytest.fixture(scope="module")
def train_report():
    return train_step.run(TRAIN, log=quiet)


def positive_int(x) -> bool:
    return isinstance(x, int) and x > 0


def positive_finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


# ---------------------------------------------------------------------------------------------------
# small_step


def test_small_step_has_every_case_in_both_settings(small_report):
    keys = [(r["case"], r["setting"]) for r in small_report["results"]]
    assert keys == [(case, setting) for setting in small_step.SETTINGS for case in small_step.CASES]
    assert small_report["model"] == {"widths": [64, 64, 64, 10], "param_leaves": 6, "params": 8_970, "batch": 32}
    assert {"cpu", "cores", "versions", "jax_backend", "load_average"} <= set(small_report["machine"])


def test_small_step_rows_agree_and_are_timed(small_report):
    for row in small_report["results"]:
        assert row["agree"], row
        assert row["params_rel_err"] <= 1e-5 and row["update_rel_err"] <= 1e-3
        for lib in small_step.LIBRARIES:
            assert positive_int(row["state_leaves"][lib]), row
            assert positive_finite(row["median_us"][lib]), row
            assert len(row["samples_us"][lib]) == SMALL.rounds * SMALL.block
        assert positive_finite(row["ratio"])
        assert row["ratio"] == pytest.approx(row["median_us"]["gradchain"] / row["median_us"]["optax"])


def test_small_step_counts_optax_adamw_state(small_report):
    """optax's AdamW state is a count and one mu and one nu per param leaf, with or without NNX."""
    adamw = [r for r in small_report["results"] if r["case"] == "adamw"]
    assert [r["state_leaves"]["optax"] for r in adamw] == [1 + 2 * 6] * 2


def test_small_step_markdown_and_json(small_report):
    md = small_step.markdown(small_report)
    assert "| case | setting | state leaves gradchain |" in md
    rows = [line for line in md.splitlines() if "| jit |" in line or "| nnx |" in line]
    assert len(rows) == len(small_report["results"])
    assert json.loads(json.dumps(small_report, default=str))["results"][0]["case"] == "adamw"


def test_small_step_mismatch_is_not_timed(monkeypatch):
    """Two optimizers that do different work are a loud MISMATCH row, not a ratio."""
    wrong = {"gradchain": lambda: optax.adamw(2e-3, weight_decay=1e-4), "optax": lambda: optax.adamw(1e-3)}
    monkeypatch.setattr(small_step, "CASES", {"adamw": wrong})
    monkeypatch.setattr(small_step, "SETTINGS", ("jit",))
    report = small_step.run(SMALL, log=quiet)
    [row] = report["results"]
    assert not row["agree"] and row["ratio"] is None and row["samples_us"] == {}
    assert "MISMATCH" in small_step.markdown(report)


# ---------------------------------------------------------------------------------------------------
# train_step


def test_transformer_leaf_count():
    """15 leaves per layer (no key bias, see _train_models) and the shared embedding."""
    assert transformer_model(12).num_leaves == 12 * 15 + 1


@pytest.mark.parametrize("model", [digits_model(), transformer_model(1)], ids=lambda m: m.name)
def test_jax_and_torch_models_compute_the_same_loss(model, torch):
    x, y = model.batches[0]
    jax_loss = float(jax.jit(model.jax_loss)(jax.tree.map(jnp.asarray, model.params), jnp.asarray(x), jnp.asarray(y)))
    torch_params = jax.tree.map(torch.from_numpy, model.params)
    torch_loss = model.torch_loss(torch_params, torch.from_numpy(x), torch.from_numpy(y).long()).item()
    assert torch_loss == pytest.approx(jax_loss, rel=train_step.LOSS_RTOL)


@pytest.mark.slow  # compiles 12 training and update steps: ~30 s on 2 cores
def test_train_step_structure(train_report):
    names = [m["model"]["name"] for m in train_report["models"]]
    assert names == ["digits MLP", "transformer[1]"]
    assert [m["model"]["leaves"] for m in train_report["models"]] == [6, 16]
    keys = [(r["model"], r["library"]) for r in train_report["results"]]
    assert keys == [(name, lib) for name in names for lib in train_step.LIBRARIES]


@pytest.mark.slow  # compiles 12 training and update steps: ~30 s on 2 cores
def test_train_step_every_variant_agrees_and_is_timed(train_report):
    for model in train_report["models"]:
        for check in ("train", "update"):
            assert model["agreement"][check]["params_rel_err"] <= 1e-5, model["agreement"]
            assert model["agreement"][check]["update_rel_err"] <= 1e-3, model["agreement"]
        assert model["torch_first_loss_rel_err"] <= train_step.LOSS_RTOL
        for key, samples in model["samples_us"].items():
            assert len(samples) == TRAIN.block * TRAIN.transformer_rounds, key
    for row in train_report["results"]:
        assert row["status"] == "ok", row
        assert positive_int(row["state_leaves"]) and positive_finite(row["step_us"])
        assert positive_finite(row["step_vs_optax"])


@pytest.mark.slow  # compiles 12 training and update steps: ~30 s on 2 cores
def test_train_step_jax_rows_have_compile_times_and_optimizer_share(train_report):
    for row in train_report["results"]:
        if row["library"] == "torch":
            assert row["total_s"] is None and row["update_us"] is None and row["optimizer_share"] is None
            continue
        assert positive_finite(row["lower_s"]) and positive_finite(row["compile_s"])
        assert row["total_s"] > 0 and positive_finite(row["compile_vs_optax"])
        assert positive_finite(row["update_us"]) and positive_finite(row["optimizer_share"])
        assert row["optimizer_share"] == pytest.approx(row["update_us"] / row["step_us"])
        if row["library"] == "optax":
            assert row["step_vs_optax"] == row["update_vs_optax"] == row["compile_vs_optax"] == 1.0


@pytest.mark.slow  # compiles 12 training and update steps: ~30 s on 2 cores
def test_train_step_markdown(train_report):
    md = train_step.markdown(train_report)
    assert "| " + " | ".join(train_step.HEADER) + " |" in md
    body = [line for line in md.splitlines() if line.startswith(("| digits MLP |", "| transformer[1] |"))]
    assert len(body) == len(train_report["results"])
