"""The two models of `train_step`, each written once in JAX and once in torch, from the same numpy params.

- `digits`: an MLP 64-128-128-10 (ReLU) on scikit-learn's bundled digits (8x8 images, 1,797 of
  them; no download), cross-entropy, batches of 128.
- `transformer`: a pre-LayerNorm decoder of width 64 (4 heads, MLP 64-256-64, tanh GELU, causal
  attention), 15 leaves per layer (2 LayerNorms; q/k/v/out projections and the two MLP matrices,
  each with a bias but the key's) and one token embedding, tied with the output projection;
  next-token cross-entropy on uniform random tokens (vocabulary 256), sequences of 32, batches of 16.

The JAX and torch versions compute the same function to float32 rounding (`train_step` checks
their first loss on the same params and batch); torch's attention is `scaled_dot_product_attention`,
JAX's `jax.nn.dot_product_attention`: what a user of each would write.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

Params = dict[str, Any]  # nested dicts of arrays: numpy, jax or torch alike
Batch = tuple[np.ndarray, np.ndarray]  # inputs, integer targets (int32; torch's losses want them as int64)

DIGITS_WIDTHS = (64, 128, 128, 10)
DIGITS_BATCH = 128
WIDTH = 64
HEADS = 4
MLP_WIDTH = 256
VOCAB = 256
SEQ_LEN = 32
TOKEN_BATCH = 16
TOKEN_BATCHES = 4  # distinct random batches, cycled
LN_EPS = 1e-5  # torch's LayerNorm default, used by both


@dataclasses.dataclass(frozen=True)
class Model:
    """A model in both libraries: numpy params, batches, and the mean loss of a batch in each."""

    name: str
    params: Params
    batches: list[Batch]
    jax_loss: Callable[[Params, jax.Array, jax.Array], jax.Array]
    torch_loss: Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]

    @property
    def num_leaves(self) -> int:
        return len(jax.tree.leaves(self.params))

    @property
    def num_params(self) -> int:
        return sum(p.size for p in jax.tree.leaves(self.params))


def _dense(rng: np.random.Generator, n_in: int, n_out: int, gain: float = 1.0) -> dict[str, np.ndarray]:
    """A weight `(n_in, n_out)` ~ N(0, gain / n_in) and a zero bias, float32."""
    w = rng.standard_normal((n_in, n_out)) * math.sqrt(gain / n_in)
    return {"w": w.astype(np.float32), "b": np.zeros(n_out, np.float32)}


# ---------------------------------------------------------------------------------------------------
# digits MLP


def digits_model(seed: int = 0) -> Model:
    """The digits MLP: He-normal weights; pixels scaled to [0, 1]; the 14 full batches of a seeded shuffle."""
    rng = np.random.default_rng(seed)
    params = {
        f"layer{i}": _dense(rng, n_in, n_out, gain=2.0)
        for i, (n_in, n_out) in enumerate(itertools.pairwise(DIGITS_WIDTHS))
    }
    data = load_digits()
    order = rng.permutation(len(data.target))
    x, y = (data.data[order] / 16.0).astype(np.float32), data.target[order].astype(np.int32)
    batches = [
        (x[i : i + DIGITS_BATCH], y[i : i + DIGITS_BATCH]) for i in range(0, len(y) - DIGITS_BATCH + 1, DIGITS_BATCH)
    ]
    return Model("digits MLP", params, batches, _digits_jax_loss, _digits_torch_loss)


def _digits_jax_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    layers = [params[f"layer{i}"] for i in range(len(params))]
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    logits = x @ layers[-1]["w"] + layers[-1]["b"]
    return _jax_cross_entropy(logits, y)


def _digits_torch_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    layers = [params[f"layer{i}"] for i in range(len(params))]
    for layer in layers[:-1]:
        x = torch.relu(x @ layer["w"] + layer["b"])
    return F.cross_entropy(x @ layers[-1]["w"] + layers[-1]["b"], y)


def _jax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1).mean()


# ---------------------------------------------------------------------------------------------------
# transformer


def transformer_model(layers: int, seed: int = 0) -> Model:
    """The decoder with `layers` layers: 15 leaves each, plus the embedding (N(0, 0.02²), as in GPT-2)."""
    rng = np.random.default_rng(seed)
    params: Params = {"embed": (0.02 * rng.standard_normal((VOCAB, WIDTH))).astype(np.float32)}
    for i in range(layers):
        ones, zeros = np.ones(WIDTH, np.float32), np.zeros(WIDTH, np.float32)
        params[f"layer{i:02d}"] = {
            "ln1": {"scale": ones.copy(), "bias": zeros.copy()},
            "q": _dense(rng, WIDTH, WIDTH),
            # No key bias: it adds the same q·b to every score of a row, which softmax ignores, so its
            # gradient is 0 but for rounding, and Adam turns that noise into full-size steps of random
            # sign: two correct optimizers (or two compilations of one) would disagree there.
            "k": {"w": _dense(rng, WIDTH, WIDTH)["w"]},
            "v": _dense(rng, WIDTH, WIDTH),
            "out": _dense(rng, WIDTH, WIDTH),
            "ln2": {"scale": ones.copy(), "bias": zeros.copy()},
            "mlp_in": _dense(rng, WIDTH, MLP_WIDTH),
            "mlp_out": _dense(rng, MLP_WIDTH, WIDTH),
        }
    tokens = rng.integers(0, VOCAB, (TOKEN_BATCHES, TOKEN_BATCH, SEQ_LEN + 1)).astype(np.int32)
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]  # predict the next token
    return Model(f"transformer[{layers}]", params, batches, _transformer_jax_loss, _transformer_torch_loss)


def _affine(x: Any, p: Params) -> Any:
    """`x @ w + b`, or `x @ w` for a layer without bias; operators only, so JAX and torch share it."""
    return x @ p["w"] + p["b"] if "b" in p else x @ p["w"]


def _layer_names(params: Params) -> list[str]:
    return sorted(k for k in params if k.startswith("layer"))


def _jax_layer_norm(x: jax.Array, p: Params) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * p["scale"] + p["bias"]


def _transformer_jax_loss(params: Params, tokens: jax.Array, targets: jax.Array) -> jax.Array:
    embed = params["embed"]
    x = embed[tokens]  # (batch, seq, width)
    batch, seq = tokens.shape
    heads = lambda t: t.reshape(batch, seq, HEADS, WIDTH // HEADS)  # noqa: E731
    for name in _layer_names(params):
        p = params[name]
        h = _jax_layer_norm(x, p["ln1"])
        q, k, v = (heads(_affine(h, p[n])) for n in ("q", "k", "v"))
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(batch, seq, WIDTH)
        x = x + _affine(attended, p["out"])
        h = jax.nn.gelu(_affine(_jax_layer_norm(x, p["ln2"]), p["mlp_in"]), approximate=True)
        x = x + _affine(h, p["mlp_out"])
    return _jax_cross_entropy(x @ embed.T, targets)


def _transformer_torch_loss(params: Params, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    embed = params["embed"]
    x = embed[tokens]
    batch, seq = tokens.shape
    # torch's attention takes (batch, heads, seq, head width); JAX's (batch, seq, heads, head width).
    heads = lambda t: t.reshape(batch, seq, HEADS, WIDTH // HEADS).transpose(1, 2)  # noqa: E731
    for name in _layer_names(params):
        p = params[name]
        h = F.layer_norm(x, (WIDTH,), p["ln1"]["scale"], p["ln1"]["bias"], eps=LN_EPS)
        q, k, v = (heads(_affine(h, p[n])) for n in ("q", "k", "v"))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, seq, WIDTH)
        x = x + _affine(attended, p["out"])
        h = F.layer_norm(x, (WIDTH,), p["ln2"]["scale"], p["ln2"]["bias"], eps=LN_EPS)
        x = x + _affine(F.gelu(_affine(h, p["mlp_in"]), approximate="tanh"), p["mlp_out"])
    logits = x @ embed.T
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
