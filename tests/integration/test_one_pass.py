"""Smoke tests of benchmarks/one_pass.py: its AdamW formulations compute AdamW, and the one-pass loop runs in place."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

# benchmarks/ is not installed: it runs from the repository root, as `python -m benchmarks.one_pass`.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import one_pass

# With 256-element chunks: "a" is 3 chunks and a 232-element tail, "b" 4 whole chunks, "c" a tail only.
# First dimensions are even, so that the 2-device formulation can split every leaf in two.
SHAPES = {"a": (1000,), "b": (4, 256), "c": (6, 13)}
CHUNK = 256
STEPS = 10
REFERENCE_STEPS = 100
RTOL = 1e-6


def _tree_data(shapes, steps, seed=0):
    """float32 params ~ N(0, 0.05^2) and a fixed sequence of gradient trees ~ N(0, 1), independent of the params."""
    rng = np.random.default_rng(seed)
    params = {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(steps)]
    return params, grads


def _run(form, params, grads_seq):
    """`form` over the gradient sequence, jitted; `{"params", "mu", "nu"}` numpy trees at the end."""
    step = jax.jit(form.step)
    p, s = form.init(params)
    for grads in grads_seq:
        p, s = step(p, s, form.put_grads(grads))
    return form.unpack(p, s)


def _f32(x):
    """A constant as the float32 step sees it."""
    return float(np.float32(x))


def _numpy_adamw(params, grads_seq):
    """AdamW (Loshchilov & Hutter) with bias correction, float64, leaf by leaf: the independent reference.

    The constants are rounded to float32 as the jitted step uses them (`1 - b` rounded from the exact
    value, as `plain` computes it in Python): b2 = float32(0.999) is 1.3e-8 above 0.999, which moves
    1 - b2^t by 1.2e-5 relative at every t, and the params by ~5e-6 of their scale in 100 steps.
    """
    out = {"params": {}, "mu": {}, "nu": {}}
    lr, b1, b2, eps, wd = map(_f32, (one_pass.LR, one_pass.B1, one_pass.B2, one_pass.EPS, one_pass.WD))
    one_minus_b1, one_minus_b2 = _f32(1 - one_pass.B1), _f32(1 - one_pass.B2)
    for k, p0 in params.items():
        p, mu, nu = p0.astype(np.float64), np.zeros(p0.shape), np.zeros(p0.shape)
        for t, grads in enumerate(grads_seq, start=1):
            g = grads[k].astype(np.float64)
            mu = b1 * mu + one_minus_b1 * g
            nu = b2 * nu + one_minus_b2 * g**2
            p = p - lr * ((mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps) + wd * p)
        out["params"][k], out["mu"][k], out["nu"][k] = p, mu, nu
    return out


def _assert_close(got, want, rtol):
    for name in ("params", "mu", "nu"):
        for k, w in want[name].items():
            err = np.max(np.abs(got[name][k] - w)) / np.max(np.abs(w))
            assert err <= rtol, f"{name}[{k!r}]: max error {err:.2e} of max |{name}|, tolerance {rtol:g}"


@pytest.fixture(scope="module")
def plain_result():
    params, grads = _tree_data(SHAPES, STEPS)
    return _run(one_pass.tree_formulation("plain", one_pass.plain_step, one_pass.init_state), params, grads)


def test_plain_is_adamw():
    params, grads = _tree_data(SHAPES, REFERENCE_STEPS, seed=1)
    got = _run(one_pass.tree_formulation("plain", one_pass.plain_step, one_pass.init_state), params, grads)
    _assert_close(got, _numpy_adamw(params, grads), RTOL)


@pytest.mark.parametrize("order", list(one_pass.CHUNK_UPDATES))
@pytest.mark.parametrize("chunk", [CHUNK, 1000, 4096])  # a tail in some leaves; a leaf that is one chunk; tails only
def test_one_pass_equals_plain(plain_result, order, chunk):
    params, grads = _tree_data(SHAPES, STEPS)
    form = one_pass.tree_formulation("one-pass", one_pass.one_pass_step(chunk, order), one_pass.init_state)
    _assert_close(_run(form, params, grads), plain_result, RTOL)


def test_other_formulations_equal_plain(plain_result):
    params, grads = _tree_data(SHAPES, STEPS)
    names = []
    for form in one_pass.formulations(SHAPES, chunks=(CHUNK,)):
        if form.name in ("plain", "stream p += c*g"):
            continue
        # gradchain rounds 1 - b2 in float32 (1.3e-5 off in nu): see one_pass.MOMENTS_RTOL.
        _assert_close(_run(form, params, grads), plain_result, 2e-5 if form.name == "gradchain" else RTOL)
        names.append(form.name)
    assert len(names) == 9 and "one-pass 256, 2 devices" in names, names


@pytest.mark.parametrize(("order", "in_place"), [("update first", True), ("moments first", True), ("naive", False)])
def test_one_pass_loop_updates_in_place(order, in_place):
    """No copy of a leaf in the compiled step, except in the naive loop, which copies mu and nu each iteration."""
    shapes = {"a": (8, 1024), "b": (5000,)}
    params, grads = _tree_data(shapes, 1)
    form = one_pass.tree_formulation("one-pass", one_pass.one_pass_step(1024, order), one_pass.init_state)
    p, s = form.init(params)
    stats = one_pass.hlo_stats(one_pass.compile_step(form, p, s, form.put_grads(grads[0])))
    assert stats["whiles"] == 2
    assert (stats["copies"] == 0) == in_place, stats


def test_check_rejects_a_wrong_step(plain_result):
    params, _ = _tree_data(SHAPES, STEPS)
    assert one_pass.agrees(one_pass.errors(plain_result, plain_result, params))
    for name, rtol in (("params", one_pass.RTOL), ("nu", one_pass.MOMENTS_RTOL)):
        wrong = {n: {k: v.copy() for k, v in tree.items()} for n, tree in plain_result.items()}
        leaf = wrong[name]["a"]
        leaf[-1] += 2 * rtol * np.max(np.abs(leaf))  # the last element: in the tail of the 256-element chunks
        assert not one_pass.agrees(one_pass.errors(wrong, plain_result, params)), name


def test_bandwidth_probe_jax_triad_writes_in_place():
    from benchmarks import _machine

    triad = _machine._triads(4096, jax.devices()[0])["jax"]
    ja = dict(zip(triad.__code__.co_freevars, (c.cell_contents for c in triad.__closure__), strict=True))["ja"]
    before = ja[0].unsafe_buffer_pointer()
    triad()
    assert ja[0].unsafe_buffer_pointer() == before, "the triad's result is not written over the donated array"
