"""`lr_range_test`: a log-spaced learning-rate sweep, every rate in one compiled, vmapped function.

Part of the training doctor (see `gradchain.doctor`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, apply_updates
from gradchain._checks import check_int
from gradchain._numerics import float_dtype

__all__ = ["LRRangeResult", "lr_range_test"]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LRRangeResult:
    """What `lr_range_test` measured: the loss of a short run at each learning rate of a log grid.

    Attributes:
        learning_rates: `(num,)` float64, the log-spaced grid `geomspace(min_lr, max_lr, num)`.
        losses: `(num,)` float64, the loss of each run: `loss_fn` at the params after `steps`
            updates, on the batch of the last step (`batch` itself for a full batch, nothing for
            `loss_fn(params)`). NaN or Inf where a run blew up.
        curves: `(num, steps)` float64, the training loss of each run at each step, as a training
            loop logs it: `curves[i, t]` is `loss_fn` at the params *before* update `t`, on step
            `t`'s batch, so `curves[:, 0]` is the initial loss for every rate.
        initial_loss: `loss_fn` at the initial params on the first step's batch.
        suggested_lr: the rate of steepest descent of the loss against log(rate) (central
            differences over the grid), among the rates below `diverged_lr` and up to
            `min_loss_lr`. NaN if every rate diverged.
        min_loss_lr: the rate with the lowest loss, among the rates below `diverged_lr`. NaN if
            every rate diverged.
        diverged_lr: the smallest rate whose run diverged, or None.
        diverged: `(num,)` bool, which runs diverged: a logged or final loss that is NaN, Inf, or
            above `initial_loss + (divergence_factor - 1) * |initial_loss|` (that is, above
            `divergence_factor * initial_loss` for a positive initial loss).
        divergence_factor: the factor used.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        # f(p) = |p|^2 / 2 has curvature L = 1: plain SGD multiplies p by (1 - lr) at each step.
        loss_fn = lambda p: 0.5 * jnp.sum(p ** 2)
        result = gc.lr_range_test(loss_fn, jnp.ones(3), gc.sgd, min_lr=1e-3, max_lr=10.0, num=5, steps=5)
        assert result.losses.shape == (5,) and result.curves.shape == (5, 5)
        assert result.min_loss_lr == 1.0  # one step lands on the minimum
        assert result.diverged_lr == 10.0  # |1 - lr| = 9 > 1: diverges above 2/L = 2
        print(result)  # a short summary
        ```
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    curves: np.ndarray
    initial_loss: float
    suggested_lr: float
    min_loss_lr: float
    diverged_lr: float | None
    diverged: np.ndarray
    divergence_factor: float

    def __str__(self) -> str:
        lrs = self.learning_rates
        steps = self.curves.shape[1]
        lines = [
            f"lr_range_test: {len(lrs)} learning rates from {lrs[0]:.3g} to {lrs[-1]:.3g}, "
            f"{steps} step{'s' if steps != 1 else ''} each; initial loss {self.initial_loss:.4g}"
        ]
        if math.isnan(self.suggested_lr):
            lines.append(f"  every rate diverged (loss > {self.divergence_factor:g}x initial): lower min_lr")
            return "\n".join(lines)
        i_min = int(np.flatnonzero(lrs == self.min_loss_lr)[0])
        lines.append(f"  lowest loss {self.losses[i_min]:.4g} at lr={self.min_loss_lr:.3g}")
        lines.append(f"  suggested lr={self.suggested_lr:.3g} (steepest descent of the loss vs log lr)")
        if self.diverged_lr is None:
            lines.append(f"  no run diverged up to lr={lrs[-1]:.3g}")
        else:
            lines.append(f"  diverged from lr={self.diverged_lr:.3g} (loss > {self.divergence_factor:g}x initial)")
        if self.min_loss_lr == lrs[0]:
            lines.append("  the loss is lowest at the smallest rate: lower min_lr to see the descent")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"LRRangeResult(num={len(self.learning_rates)}, steps={self.curves.shape[1]}, "
            f"suggested_lr={self.suggested_lr:.3g}, min_loss_lr={self.min_loss_lr:.3g}, "
            f"diverged_lr={self.diverged_lr if self.diverged_lr is None else f'{self.diverged_lr:.3g}'})"
        )

    def plot(self, ax: Any = None) -> Any:
        """Plot the loss against the learning rate (log axis), marking the suggested and diverged rates.

        Runs that diverged are drawn as crosses at the divergence threshold. matplotlib is imported
        here, not with gradchain; with `ax=None` a new figure is made with `matplotlib.pyplot`, so
        that a notebook shows it.

        Args:
            ax: a matplotlib `Axes` to draw on, or None for a new figure.

        Returns:
            The `Axes`.

        Raises:
            ImportError: matplotlib is not installed (`pip install matplotlib`).

        Example:
            ```python
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import jax.numpy as jnp
            import gradchain as gc

            result = gc.lr_range_test(lambda p: jnp.sum(p ** 2), jnp.ones(3), gc.sgd, num=9, steps=5)
            ax = result.plot()
            assert ax.get_xscale() == "log"
            plt.close(ax.figure)
            ```
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - matplotlib is in the dev extras
            raise ImportError(
                "LRRangeResult.plot needs matplotlib, which is not installed: pip install matplotlib"
            ) from e
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        lrs, losses = self.learning_rates, self.losses
        threshold = _divergence_threshold(self.initial_loss, self.divergence_factor)
        ok = ~self.diverged
        ax.plot(lrs[ok], losses[ok], "o-", ms=3, color="C0", label="loss after the run")
        if self.diverged.any():
            ax.plot(lrs[~ok], np.full(int((~ok).sum()), threshold), "x", color="C3", label="diverged")
        ax.axhline(self.initial_loss, color="0.5", lw=0.8, ls=":", label="initial loss")
        if not math.isnan(self.suggested_lr):
            ax.axvline(self.suggested_lr, color="C2", ls="--", label=f"suggested {self.suggested_lr:.2g}")
        if self.diverged_lr is not None:
            ax.axvline(self.diverged_lr, color="C3", ls="--", label=f"diverged {self.diverged_lr:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title(f"learning-rate range test ({self.curves.shape[1]} steps per rate)")
        ax.legend(fontsize="small")
        return ax


def _divergence_threshold(initial_loss: float, factor: float) -> float:
    # factor x initial for a positive loss; for a negative or zero initial loss, the same margin
    # measured in |initial| (factor x a negative number would lie below the initial loss).
    return initial_loss + (factor - 1.0) * abs(initial_loss)


_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _traced_optimizer_error(e: Exception) -> TypeError:
    return TypeError(
        "lr_range_test: optimizer(learning_rate) must build a transformation from a traced learning "
        "rate (all rates run in one vmapped, compiled function), but it needed a concrete value: "
        f"{type(e).__name__}. Pass the rate straight through, e.g. optimizer=gc.adam or "
        "optimizer=lambda lr: gc.sgd(lr, momentum=0.9), not float(lr) or Python branches on lr."
    )


def _check_positive_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"lr_range_test: {name} must be a number, got {type(value).__name__}: {value!r}")
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"lr_range_test: {name} must be a finite number > 0, got {value!r}")
    return x


def _check_params(params: Any) -> None:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("lr_range_test: params has no array leaves")
    for path, leaf in flat:
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            where = tree_util.path_str(path)
            raise TypeError(
                f"lr_range_test: params must be floating point; leaf {where} has dtype {np.dtype(dtype).name}"
            )


def _check_batches(batch: Any, batches: Any, steps: int) -> None:
    if batch is not None and batches is not None:
        raise ValueError(
            "lr_range_test: give batch (one batch reused at every step) or batches (one per step), not both"
        )
    for name, value in (("batch", batch), ("batches", batches)):
        if value is not None and not isinstance(value, (tuple, list)):
            raise TypeError(
                f"lr_range_test: {name} must be a tuple of arrays, the arguments after params of "
                f"loss_fn(params, *{name}); got {type(value).__name__} (write {name}=(x, y), or {name}=(x,))"
            )
    if batches is None:
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(tuple(batches))[0]:
        shape = np.shape(leaf)
        if not shape or shape[0] != steps:
            where = "batches/" + tree_util.path_str(path)
            raise ValueError(
                f"lr_range_test: {where} must be stacked on a leading axis of length steps={steps} "
                f"(step t uses a[t]); got shape {shape}"
            )


def lr_range_test(
    loss_fn: Callable[..., Any],
    params: Any,
    optimizer: Callable[[Any], GradientTransformation],
    *,
    batch: Sequence[Any] | None = None,
    batches: Sequence[Any] | None = None,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num: int = 40,
    steps: int | None = None,
    chunk_size: int | None = None,
    divergence_factor: float = 4.0,
) -> LRRangeResult:
    """Sweep the learning rate on a log grid: a few steps per rate, from the same params each time.

    For each rate $\\eta_i$ of `geomspace(min_lr, max_lr, num)`, run `steps` updates of
    `optimizer(eta_i)` from `params` and record the training loss; then pick a rate from the
    curve of loss against rate:

    - a run **diverged** if a loss it logged (or its final loss) is NaN, Inf, or above
      `divergence_factor` times the initial loss; `diverged_lr` is the smallest such rate;
    - `min_loss_lr` is the rate with the lowest final loss below `diverged_lr`;
    - `suggested_lr` is the rate of **steepest descent** of the final loss against $\\log \\eta$
      (central differences over the grid, `np.gradient`: the slope across each rate's two
      neighbours), among the rates below `diverged_lr` and up to `min_loss_lr`: the rate where a bit more
      learning rate buys the most, safely below the edge. This is the "steep" rule of Smith's
      range test (Smith 2017, section 3.3), and the "Good" curve of the 3-curve test of CMU 10-701
      lecture 6; like the range test, it is a starting point for tuning, not an optimum.

    All rates run in one compiled function: the transformation is built *inside* the vmapped
    function from a traced rate (`optimizer(lr)`; gradchain's argument checks skip traced values),
    so the sweep traces `loss_fn` a fixed number of times whatever `num` is, and compiles once per
    call. Runs are independent under `vmap`: a run that blows up to NaN does not touch the others.
    Memory grows with the number of rates run at once (a copy of params and optimizer state per
    rate): `chunk_size` bounds it.

    Defaults: six decades of rates (1e-6 to 1) cover SGD on standardised data and Adam-family
    optimizers; 40 rates put about 6.5 per decade (neighbours 1.43x apart); 10 steps show whether a
    rate makes progress or blows up without paying for a training run.

    Args:
        loss_fn: `loss_fn(params, *batch) -> scalar` loss (a 0-d floating array).
        params: the initial params (any pytree of floating arrays); every run starts from them.
        optimizer: a function `learning_rate -> GradientTransformation`, such as `gc.adam`,
            `gc.adamw` or `lambda lr: gc.sgd(lr, momentum=0.9)`. It is called with a traced rate.
        batch: a tuple of arrays (or pytrees) passed to `loss_fn` after the params at every step
            (a full batch). Leave both `batch` and `batches` as None for `loss_fn(params)`.
        batches: a tuple of arrays (or pytrees) stacked on a leading axis of length `steps`:
            step `t` calls `loss_fn(params, *(a[t] for a in batches))`. Every rate sees the same
            batches in the same order, so batch noise does not blur the comparison between rates.
        min_lr: the smallest rate, > 0.
        max_lr: the largest rate, > `min_lr`.
        num: the number of rates, >= 3.
        steps: updates per rate, >= 1. None (default): the leading axis of `batches`, else 10.
        chunk_size: run at most this many rates at once (`jax.lax.map` with `batch_size`), to
            bound memory; None runs all `num` at once. The numbers do not depend on it.
        divergence_factor: a run diverged when its loss goes above this many times the initial
            loss (> 1). For a negative initial loss $L_0$ the threshold is
            $L_0 + (\\text{factor} - 1)|L_0|$.

    Returns:
        An `LRRangeResult`: `learning_rates`, `losses`, `curves`, `initial_loss`, `suggested_lr`,
        `min_loss_lr`, `diverged_lr`, `diverged`; `plot()` draws it, `str()` summarises it.

    Raises:
        TypeError: `loss_fn` or `optimizer` is not callable; `optimizer(lr)` cannot be built from
            a traced rate, or does not return a transformation; non-floating params (the message
            names the leaf); `batch`/`batches` not a tuple; a non-integer `num`, `steps` or
            `chunk_size`; a loss that is not floating point.
        ValueError: `min_lr <= 0`, `max_lr <= min_lr`, `num < 3`, `steps < 1`, `chunk_size < 1`,
            `divergence_factor <= 1`; both `batch` and `batches`; a `batches` leaf whose leading
            axis is not `steps` (the message names it); `loss_fn` not returning a scalar.

    Example:
        ```python
        import jax.numpy as jnp
        import numpy as np
        import gradchain as gc

        # Least squares with curvature L = 2 * max eigenvalue of X^T X / n: SGD diverges above 2/L.
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 3)).astype(np.float32)
        y = x @ np.array([1.0, -2.0, 0.5], np.float32)

        def loss_fn(params, x, y):
            return jnp.mean((x @ params["w"] - y) ** 2)

        result = gc.lr_range_test(loss_fn, {"w": jnp.zeros(3)}, gc.sgd, batch=(x, y), min_lr=1e-4, max_lr=10.0)
        edge = 2 / (2 * np.linalg.eigvalsh(x.T @ x / 64).max())
        assert result.suggested_lr < edge <= result.diverged_lr
        ```

    References:
        Smith, *Cyclical Learning Rates for Training Neural Networks*, WACV 2017, section 3.3;
        CMU 10-701 lecture 6, "Learning rate tuning: the 3 curve test".
    """
    if not callable(loss_fn):
        raise TypeError(f"lr_range_test: loss_fn must be callable, loss_fn(params, *batch) -> scalar; got {loss_fn!r}")
    if not callable(optimizer):
        hint = (
            " (a GradientTransformation was given: pass the factory, e.g. optimizer=gc.adam or "
            "optimizer=lambda lr: gc.sgd(lr, momentum=0.9))"
            if hasattr(optimizer, "init") and hasattr(optimizer, "update")
            else ""
        )
        raise TypeError(
            f"lr_range_test: optimizer must be a function learning_rate -> GradientTransformation{hint}; "
            f"got {type(optimizer).__name__}"
        )
    min_lr = _check_positive_finite("min_lr", min_lr)
    max_lr = _check_positive_finite("max_lr", max_lr)
    if max_lr <= min_lr:
        raise ValueError(f"lr_range_test: max_lr must be > min_lr, got min_lr={min_lr!r}, max_lr={max_lr!r}")
    num = check_int("lr_range_test: num", num, minimum=3)
    if steps is None:
        leaves = jax.tree.leaves(tuple(batches)) if isinstance(batches, (tuple, list)) else []
        steps = int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else 10
    steps = check_int("lr_range_test: steps", steps, minimum=1)
    if chunk_size is not None:
        chunk_size = check_int("lr_range_test: chunk_size", chunk_size, minimum=1)
    divergence_factor = _check_positive_finite("divergence_factor", divergence_factor)
    if divergence_factor <= 1:
        raise ValueError(f"lr_range_test: divergence_factor must be > 1, got {divergence_factor!r}")
    _check_params(params)
    _check_batches(batch, batches, steps)

    learning_rates = np.geomspace(min_lr, max_lr, num)
    sweep = _make_sweep(loss_fn, optimizer, steps, "batches" if batches is not None else "batch", chunk_size)
    data = tuple(batches) if batches is not None else (tuple(batch) if batch is not None else ())
    initial, curves, finals = sweep(jnp.asarray(learning_rates, float_dtype()), params, data)
    initial_loss = float(initial)
    curves = np.asarray(curves, np.float64)
    losses = np.asarray(finals, np.float64)
    return _summarise(learning_rates, losses, curves, initial_loss, divergence_factor)


def _make_sweep(loss_fn: Callable, optimizer: Callable, steps: int, mode: str, chunk_size: int | None) -> Callable:
    """The jitted sweep `(rates, params, data) -> (initial loss, curves, final losses)`."""

    def scalar_loss(params, *args):
        loss = loss_fn(params, *args)
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            loss = jnp.asarray(loss, float_dtype())
        shape = getattr(loss, "shape", None)
        if shape is None or shape != ():
            got = f"shape {shape}" if shape is not None else f"{type(loss).__name__}"
            raise ValueError(f"lr_range_test: loss_fn must return a scalar loss (a 0-d array), got {got}")
        if not jnp.issubdtype(loss.dtype, jnp.floating):
            raise TypeError(f"lr_range_test: loss_fn must return a floating-point loss, got dtype {loss.dtype}")
        return loss

    def sweep(rates, params, data):
        first = tuple(jax.tree.map(lambda a: a[0], d) for d in data) if mode == "batches" else data
        last = tuple(jax.tree.map(lambda a: a[-1], d) for d in data) if mode == "batches" else data
        initial = scalar_loss(params, *first)

        def run(lr):
            try:
                tx = optimizer(lr)
            except _TRACER_ERRORS as e:
                raise _traced_optimizer_error(e) from e
            if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
                raise TypeError(
                    f"lr_range_test: optimizer(learning_rate) must return a GradientTransformation, got {tx!r}"
                )
            try:
                state = tx.init(params)
            except _TRACER_ERRORS as e:
                raise _traced_optimizer_error(e) from e

            def step(carry, batch_t):
                p, s = carry
                args = batch_t if mode == "batches" else data
                loss, grads = jax.value_and_grad(scalar_loss)(p, *args)
                try:
                    updates, s = tx.update(grads, s, p)
                except _TRACER_ERRORS as e:
                    raise _traced_optimizer_error(e) from e
                return (apply_updates(p, updates), s), loss

            xs = data if mode == "batches" else None
            (p, _), logged = jax.lax.scan(step, (params, state), xs, length=steps)
            return logged, scalar_loss(p, *last)

        if chunk_size is None or chunk_size >= rates.shape[0]:
            curves, finals = jax.vmap(run)(rates)
        else:
            curves, finals = jax.lax.map(run, rates, batch_size=chunk_size)
        return initial, curves, finals

    return jax.jit(sweep)


def _summarise(
    lrs: np.ndarray, losses: np.ndarray, curves: np.ndarray, initial_loss: float, factor: float
) -> LRRangeResult:
    threshold = _divergence_threshold(initial_loss, factor)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(curves).all(axis=1) | ~np.isfinite(losses) | (curves > threshold).any(axis=1)
        bad |= losses > threshold
    first_bad = int(np.argmax(bad)) if bad.any() else len(lrs)
    diverged_lr = float(lrs[first_bad]) if bad.any() else None
    if first_bad == 0:
        suggested = min_loss = math.nan
    else:
        before = losses[:first_bad]
        i_min = int(np.argmin(before))
        if i_min == 0:
            i_steep = 0
        else:
            # Central differences: the slope over each rate's two neighbours, which smooths a little.
            slope = np.gradient(before, np.log(lrs[:first_bad]))
            i_steep = int(np.argmin(slope[: i_min + 1]))
            if slope[i_steep] >= 0:  # no descent at all: the lowest loss is the best guess
                i_steep = i_min
        suggested, min_loss = float(lrs[i_steep]), float(lrs[i_min])
    return LRRangeResult(
        learning_rates=lrs,
        losses=losses,
        curves=curves,
        initial_loss=initial_loss,
        suggested_lr=suggested,
        min_loss_lr=min_loss,
        diverged_lr=diverged_lr,
        diverged=bad,
        divergence_factor=factor,
    )
