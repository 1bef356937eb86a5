"""Errors at the boundary and step-count saturation, for every ingredient of gradchain/transforms/.

DESIGN.md promises errors where a transformation is built or first sees a tree, in words that name
the argument or the leaf path. These tests run the same checks over one table of ingredients (the
cases of tests/transforms/test_scaling.py, test_momentum.py, test_rms.py, test_adam.py,
test_weight_decay.py and test_clipping.py, which compare the numbers):

- bad hyperparameters raise `ValueError` or `TypeError` naming the argument;
- integer or boolean params raise `TypeError` at `init`, naming the leaf (`b`);
- integer or boolean updates raise `TypeError` naming the leaf;
- updates whose tree does not match the state (or the params) raise `ValueError` naming the leaf;
- an int32 step count saturates at 2^31 - 1 instead of wrapping, and the updates stay finite (and,
  where the step number enters the rule, equal the rule with every $1-\\beta^t$ equal to 1).

Each table row is a constructor call, shown as the test id (e.g. `trace(0.9, nesterov=True, dampening=0.3)`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import INT32_MAX, RTOL, Harmonic, stored
from references.adam import ref_adam
from references.clipping import ref_clip
from references.momentum import ref_ema
from references.rms import ref_rms

import gradchain as gc


@dataclasses.dataclass(frozen=True)
class Call:
    """`fn(*args, **kwargs)`, called by the test; `str()` gives the call as it reads in code."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self) -> Any:
        return self.fn(*self.args, **self.kwargs)

    def __str__(self) -> str:
        shown = [_show(a) for a in self.args] + [f"{k}={_show(v)}" for k, v in self.kwargs.items()]
        return f"{self.fn.__name__}({', '.join(shown)})"


def _show(value: Any) -> str:
    """An argument as it reads in code; a dtype by its name, an array by its dtype and shape."""
    if isinstance(value, type):  # a dtype such as jnp.int32
        return value.__name__
    if isinstance(value, jax.Array):
        return f"{value.dtype}{list(value.shape)}"
    return repr(value)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Call:
    return Call(fn, args, kwargs)


# ------------------------------------------------------------------------------------------------
# The ingredients

HALVING = Harmonic(0.5)  # test_scaling.py's schedule
QUARTERING = Harmonic(0.25)  # test_weight_decay.py's schedule

SCALING = [
    call(gc.scale, -0.37),
    call(gc.scale_by_learning_rate, 0.05),
    call(gc.scale_by_learning_rate, 0.05, flip_sign=False),
    call(gc.scale_by_learning_rate, HALVING),
    call(gc.scale_by_schedule, HALVING),
]
MOMENTUM = [
    call(gc.trace, 0.9, nesterov=nesterov, dampening=dampening)
    for nesterov, dampening in itertools.product([False, True], [0.0, 0.3])
] + [call(gc.ema, 0.9, debias=debias) for debias in [True, False]]
# One case per adaptive ingredient, with its most involved flags.
ADAPTIVE = [
    call(gc.scale_by_rss, 0.1, 1e-7, eps_in_sqrt=False),
    call(gc.scale_by_rms, 0.875, 1e-8, 0.5, centered=False, eps_in_sqrt=True, bias_correction=True),
    call(gc.scale_by_rms, 0.875, 1e-8, 0.0, centered=True, eps_in_sqrt=False, bias_correction=True),
    call(gc.scale_by_adam, 0.9, 0.999, 1e-6, 1e-8, nesterov=True, bias_correction=True),
    call(gc.scale_by_amsgrad, 0.9, 0.999, 1e-6, 1e-8, debias_before_max=False),
    call(gc.scale_by_adamax, 0.9, 0.999, 1e-6),
]
WEIGHT_DECAY = [call(gc.add_decayed_weights, 0.1), call(gc.add_l2_regularization, 0.1)]
CLIPPING = [
    call(gc.clip, 0.5),
    call(gc.clip_by_global_norm, 20.0),
    call(gc.clip_by_global_norm, 20.0, eps=1e-6),
    call(gc.clip_by_block_rms, 0.5),
]


def _ids(rows: list[tuple]) -> list[str]:
    """Test ids: the values of each row as they read (calls, arrays, names), joined by "-"."""
    return ["-".join(str(x) if isinstance(x, Call | str) else _show(x) for x in row) for row in rows]


# ------------------------------------------------------------------------------------------------
# Bad hyperparameters: (constructor call, exception, what the message names)

BAD_ARGS = [
    # scaling.py
    (call(gc.scale, float("nan")), ValueError, "step_size"),
    (call(gc.scale, float("inf")), ValueError, "step_size"),
    (call(gc.scale, -float("inf")), ValueError, "step_size"),
    (call(gc.scale, "0.1"), TypeError, "step_size"),
    (call(gc.scale, jnp.ones(2)), TypeError, "step_size"),
    (call(gc.scale_by_learning_rate, -0.1), ValueError, "learning_rate"),
    (call(gc.scale_by_learning_rate, float("nan")), ValueError, "learning_rate"),
    (call(gc.scale_by_learning_rate, float("inf")), ValueError, "learning_rate"),
    (call(gc.scale_by_learning_rate, "0.1"), TypeError, "learning_rate"),
    (call(gc.scale_by_learning_rate, None), TypeError, "learning_rate"),
    (call(gc.scale_by_schedule, 0.1), TypeError, "step_size_fn"),
    (call(gc.scale_by_schedule, "linear"), TypeError, "step_size_fn"),
    # momentum.py
    (call(gc.trace, 1.0), ValueError, "decay"),
    (call(gc.trace, -0.1), ValueError, "decay"),
    (call(gc.trace, float("nan")), ValueError, "decay"),
    (call(gc.trace, float("inf")), ValueError, "decay"),
    (call(gc.trace, "0.9"), TypeError, "decay"),
    (call(gc.trace, 0.9, dampening=1.5), ValueError, "dampening"),
    (call(gc.trace, 0.9, dampening=-0.1), ValueError, "dampening"),
    (call(gc.trace, 0.9, dampening=float("nan")), ValueError, "dampening"),
    (call(gc.trace, 0.9, dampening="0"), TypeError, "dampening"),
    (call(gc.trace, 0.9, accumulator_dtype=jnp.int32), TypeError, "accumulator_dtype"),
    (call(gc.trace, 0.9, accumulator_dtype=jnp.bool_), TypeError, "accumulator_dtype"),
    (call(gc.trace, 0.9, accumulator_dtype="not a dtype"), TypeError, "accumulator_dtype"),
    (call(gc.ema, 1.0), ValueError, "decay"),
    (call(gc.ema, -0.1), ValueError, "decay"),
    (call(gc.ema, float("nan")), ValueError, "decay"),
    (call(gc.ema, -float("inf")), ValueError, "decay"),
    (call(gc.ema, "0.9"), TypeError, "decay"),
    (call(gc.ema, 0.9, accumulator_dtype=jnp.int32), TypeError, "accumulator_dtype"),
    # adaptive.py
    (call(gc.scale_by_rss, -0.1), ValueError, "initial_accumulator_value"),
    (call(gc.scale_by_rss, float("nan")), ValueError, "initial_accumulator_value"),
    (call(gc.scale_by_rss, float("inf")), ValueError, "initial_accumulator_value"),
    (call(gc.scale_by_rss, 0.1, -1e-7), ValueError, "eps"),
    (call(gc.scale_by_rss, 0.1, float("nan")), ValueError, "eps"),
    (call(gc.scale_by_rss, 0.1, "1e-7"), TypeError, "eps"),
    (call(gc.scale_by_rms, 1.0), ValueError, "decay"),
    (call(gc.scale_by_rms, -0.1), ValueError, "decay"),
    (call(gc.scale_by_rms, float("nan")), ValueError, "decay"),
    (call(gc.scale_by_rms, 0.9, -1e-8), ValueError, "eps"),
    (call(gc.scale_by_rms, 0.9, float("inf")), ValueError, "eps"),
    (call(gc.scale_by_rms, 0.9, 1e-8, -1.0), ValueError, "initial_scale"),
    (call(gc.scale_by_rms, "0.9"), TypeError, "decay"),
    (call(gc.scale_by_adam, b1=1.0), ValueError, "b1"),
    (call(gc.scale_by_adam, b1=-0.1), ValueError, "b1"),
    (call(gc.scale_by_adam, b1=float("nan")), ValueError, "b1"),
    (call(gc.scale_by_adam, b2=1.0), ValueError, "b2"),
    (call(gc.scale_by_adam, b2=float("inf")), ValueError, "b2"),
    (call(gc.scale_by_adam, eps=-1e-8), ValueError, "eps"),
    (call(gc.scale_by_adam, eps=float("nan")), ValueError, "eps"),
    (call(gc.scale_by_adam, eps_root=-1e-8), ValueError, "eps_root"),
    (call(gc.scale_by_adam, b1="0.9"), TypeError, "b1"),
    (call(gc.scale_by_adam, mu_dtype=jnp.int32), TypeError, "mu_dtype"),
    (call(gc.scale_by_adam, nu_dtype=jnp.int32), TypeError, "nu_dtype"),
    (call(gc.scale_by_adam, nu_dtype="not a dtype"), TypeError, "nu_dtype"),
    (call(gc.scale_by_amsgrad, b1=1.0), ValueError, "b1"),
    (call(gc.scale_by_amsgrad, b2=-0.1), ValueError, "b2"),
    (call(gc.scale_by_amsgrad, eps=-1.0), ValueError, "eps"),
    (call(gc.scale_by_amsgrad, eps_root=float("-inf")), ValueError, "eps_root"),
    (call(gc.scale_by_amsgrad, mu_dtype=jnp.int32), TypeError, "mu_dtype"),
    (call(gc.scale_by_amsgrad, nu_dtype=jnp.bool_), TypeError, "nu_dtype"),
    (call(gc.scale_by_amsgrad, b2="0.999"), TypeError, "b2"),
    (call(gc.scale_by_adamax, b1=1.0), ValueError, "b1"),
    (call(gc.scale_by_adamax, b2=-0.1), ValueError, "b2"),
    (call(gc.scale_by_adamax, eps=-1e-8), ValueError, "eps"),
    (call(gc.scale_by_adamax, eps=float("nan")), ValueError, "eps"),
    (call(gc.scale_by_adamax, b1=None), TypeError, "b1"),
    # weight_decay.py: negative, nan, inf, a string, None, and booleans (Python and numpy)
    *[
        (call(make, value), error, "weight_decay")
        for make in (gc.add_decayed_weights, gc.add_l2_regularization)
        for value, error in [
            (-0.1, ValueError),
            (float("nan"), ValueError),
            (float("inf"), ValueError),
            ("0.1", TypeError),
            (None, TypeError),
            (True, TypeError),
            (np.bool_(False), TypeError),
        ]
    ],
    # clipping.py
    (call(gc.clip, -1.0), ValueError, "max_delta"),
    (call(gc.clip, float("nan")), ValueError, "max_delta"),
    (call(gc.clip, float("inf")), ValueError, "max_delta"),
    (call(gc.clip, "1.0"), TypeError, "max_delta"),
    (call(gc.clip, jnp.ones(2)), TypeError, "max_delta"),
    (call(gc.clip_by_global_norm, -1.0), ValueError, "max_norm"),
    (call(gc.clip_by_global_norm, float("nan")), ValueError, "max_norm"),
    (call(gc.clip_by_global_norm, float("inf")), ValueError, "max_norm"),
    (call(gc.clip_by_global_norm, "1.0"), TypeError, "max_norm"),
    (call(gc.clip_by_global_norm, 1.0, eps=-1e-6), ValueError, "eps"),
    (call(gc.clip_by_global_norm, 1.0, eps=float("nan")), ValueError, "eps"),
    (call(gc.clip_by_block_rms, -1.0), ValueError, "threshold"),
    (call(gc.clip_by_block_rms, float("nan")), ValueError, "threshold"),
    (call(gc.clip_by_block_rms, float("inf")), ValueError, "threshold"),
    (call(gc.clip_by_block_rms, None), TypeError, "threshold"),
]


@pytest.mark.parametrize("make, error, match", BAD_ARGS, ids=[str(make) for make, _, _ in BAD_ARGS])
def test_bad_arguments_raise(make: Call, error: type[Exception], match: str):
    with pytest.raises(error, match=match):
        make()


# ------------------------------------------------------------------------------------------------
# Integer and boolean params and updates

INT32, BOOL = jnp.ones(3, jnp.int32), jnp.ones(3, bool)

# (ingredient, the params' bad leaf "b"). The clipping ingredients other than `clip` keep no
# per-parameter state and accept `init(None)`, so only `clip` checks the params' dtypes.
BAD_PARAMS = [
    (make, bad) for make in [*SCALING, *MOMENTUM, *ADAPTIVE, *WEIGHT_DECAY, call(gc.clip, 1.0)] for bad in (INT32, BOOL)
]


@pytest.mark.parametrize("make, bad", BAD_PARAMS, ids=_ids(BAD_PARAMS))
def test_integer_or_boolean_params_raise_at_init(make: Call, bad):
    with pytest.raises(TypeError, match=r"leaf b\b"):
        make().init({"a": jnp.ones(2), "b": bad})


# (ingredient, the updates' bad leaf "b")
BAD_UPDATES = [(make, INT32) for make in SCALING] + [(make, bad) for make in CLIPPING for bad in (INT32, BOOL)]


@pytest.mark.parametrize("make, bad", BAD_UPDATES, ids=_ids(BAD_UPDATES))
def test_integer_or_boolean_updates_raise(make: Call, bad):
    tx = make()
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(TypeError, match=r"leaf b\b"):
        tx.update({"a": jnp.ones(2), "b": bad}, tx.init(params), params)


# ------------------------------------------------------------------------------------------------
# Updates whose tree does not match the state (params {"a": (2,), "b": (3,)}), and the error names
# the leaf: (updates, pattern)

MISMATCHED_UPDATES = {
    "shape": ({"a": jnp.ones(2), "b": jnp.ones(4)}, r"leaf b has shape \(4,\).*\(3,\)"),  # a leaf of another shape
    "missing": ({"a": jnp.ones(2)}, r"(leaf |: )b\b"),
    "extra": ({"a": jnp.ones(2), "b": jnp.ones(3), "c": jnp.ones(1)}, r"(leaf |: )c\b"),
    "renamed": ({"a": jnp.ones(2), "x": jnp.ones(3)}, r"(leaf |: )x\b"),
    "container": ([jnp.ones(2), jnp.ones(3)], r"(leaf |: )a\b"),  # a list for a dict
}
# (ingredient, kind of mismatch, whether `update` gets the params: weight decay reads them, so its
# updates are checked against the params; the others keep the tree in their state)
MISMATCHES = (
    [(make, kind, False) for make in MOMENTUM for kind in ("shape", "missing", "extra", "renamed")]
    + [(make, kind, False) for make in ADAPTIVE for kind in ("shape", "missing", "extra", "container")]
    + [(make, kind, True) for make in WEIGHT_DECAY for kind in ("shape", "missing", "extra")]
)


@pytest.mark.parametrize("make, kind, with_params", MISMATCHES, ids=_ids([m[:2] for m in MISMATCHES]))
def test_updates_that_do_not_match_raise(make: Call, kind: str, with_params: bool):
    updates, match = MISMATCHED_UPDATES[kind]
    tx = make()
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=match):
        tx.update(updates, state, params if with_params else None)


# ------------------------------------------------------------------------------------------------
# Step-count saturation: (ingredient, the expected updates of the three steps from a fresh state
# whose count is INT32_MAX - 1, or None where only finiteness is checked, rtol). At t = 2^31 every
# 1 - beta^t is 1 in float32: the bias corrections vanish.


def _unbiased_adam(nesterov: bool) -> Callable[[list], list]:
    return lambda g: ref_adam(
        g, stored(0.9), stored(0.999), stored(1e-6), stored(1e-8), nesterov=nesterov, bias_correction=False
    )


SATURATION = [
    *[(make, None, None) for make in SCALING],
    *[
        (call(make, wd), None, None)
        for make in (gc.add_decayed_weights, gc.add_l2_regularization)
        for wd in (0.1, QUARTERING)
    ],
    *[(make, None, None) for make in MOMENTUM if make.fn is gc.trace],
    # The debiased average of a zero buffer is the plain one.
    *[(make, lambda g: ref_ema(g, stored(0.9), debias=False), RTOL) for make in MOMENTUM if make.fn is gc.ema],
    (
        call(gc.scale_by_adam, 0.9, 0.999, 1e-6, 1e-8, nesterov=False, bias_correction=True),
        _unbiased_adam(nesterov=False),
        RTOL,
    ),
    (
        call(gc.scale_by_adam, 0.9, 0.999, 1e-6, 1e-8, nesterov=True, bias_correction=True),
        _unbiased_adam(nesterov=True),
        RTOL,
    ),
    (
        call(gc.scale_by_rms, 0.875, 1e-8, 0.0, centered=True, eps_in_sqrt=True, bias_correction=True),
        lambda g: ref_rms(g, stored(0.875), stored(1e-8), centered=True),
        RTOL,
    ),
    (call(gc.scale_by_amsgrad, 0.9, 0.999, 1e-6, 1e-8, debias_before_max=True), None, None),
    (call(gc.scale_by_amsgrad, 0.9, 0.999, 1e-6, 1e-8, debias_before_max=False), None, None),
    (call(gc.scale_by_adamax, 0.9, 0.999, 1e-6), None, None),
    (call(gc.scale_by_rss, 0.1, 1e-7, eps_in_sqrt=True), None, None),
    # Clipping by value does not depend on the count: the exact clipped values.
    (call(gc.clip, 1.0), lambda g: ref_clip(g, 1.0), 0.0),
]


@pytest.mark.parametrize("make, expected, rtol", SATURATION, ids=[str(s[0]) for s in SATURATION])
def test_count_saturates(make: Call, expected: Callable[[list], list] | None, rtol: float | None):
    tx = make()
    params = {"w": jnp.ones(3)}
    state = tx.init(params)._replace(count=jnp.asarray(INT32_MAX - 1, jnp.int32))
    update = jax.jit(tx.update)
    grads = [np.array([2.0, -1.0, 0.5], np.float32) * (k + 1) for k in range(3)]
    outputs = []
    for g in grads:
        updates, state = update({"w": jnp.asarray(g)}, state, params)
        outputs.append(np.asarray(updates["w"]))
        assert np.isfinite(outputs[-1]).all()
    assert state.count.dtype == jnp.int32
    assert int(state.count) == INT32_MAX
    if expected is not None:
        for a, e in zip(outputs, expected(grads), strict=True):
            np.testing.assert_allclose(a, e, rtol=rtol, atol=0)
