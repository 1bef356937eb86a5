"""`diagnose`: read a loss curve (and a validation curve) and report the classic patterns it shows.

Part of the training doctor (see `gradchain.doctor`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradchain._checks import check_int
from gradchain.doctor.findings import ADVICE, KINDS, Diagnosis, Finding, pct

__all__ = ["diagnose"]


# Running medians are evaluated at no more than this many centres (and interpolated between them),
# so that a history of a million steps costs a few thousand medians.
_MAX_CENTRES = 2000
# The standard error of the median of k iid normal samples is sqrt(pi / 2) * sigma / sqrt(k).
_MEDIAN_SE = math.sqrt(math.pi / 2)
# For Gaussian noise of standard deviation sigma, median |y[t] - y[t-1]| = 0.6745 * sqrt(2) * sigma.
_MAD_DIFF = 0.6745 * math.sqrt(2)
# A change counts only when it is more than this many standard errors of the noise.
_SIGNIFICANCE = 3.0
# A stall whose step noise is below this fraction of its level is deterministic training that
# converged (float32 rounding jitter is ~1e-7; mini-batch noise, even averaged over an epoch, ~1e-3+).
_SMOOTH = 1e-4


class _Curve:
    """A history, smoothed by a running median, with the noise of each smoothed value.

    Noise is measured on the log scale when every value is positive (the noise of a loss usually
    scales with the loss: multiplicative noise is uniform there) and on the linear scale otherwise;
    `g` maps to that scale and `values_g`, `se` live on it. `values` is the smoothed history in loss
    units (a running median commutes with the log, up to the mean of the two middle values of an
    even, truncated window). At most `_MAX_CENTRES` centres (`steps`) are
    evaluated; windows are truncated at the ends. `se` is the standard error of each running median,
    from the local step noise (a running median of |differences|): local, because the noise of a
    loss changes as it falls.
    """

    def __init__(self, y: np.ndarray, half: int):
        n = len(y)
        self.log = bool((y > 0).all())
        if n <= _MAX_CENTRES:
            centres = np.arange(n)
        else:
            centres = np.unique(np.round(np.linspace(0, n - 1, _MAX_CENTRES)).astype(np.int64))
        g = self.g(y)
        self.steps = centres
        self.width = 2 * half + 1
        self.values = _running_median(y, half, centres)
        self.values_g = self.g(self.values)
        jumps = np.abs(np.diff(g, prepend=g[0]))
        jumps[0] = jumps[1] if n > 1 else 0.0
        self.noise = _running_median(jumps, half, centres) / _MAD_DIFF
        counts = np.minimum(centres, half) + np.minimum(n - 1 - centres, half) + 1
        self.se = _MEDIAN_SE * self.noise / np.sqrt(counts)
        # The lowest (highest) of K independent window medians lies about sqrt(2 ln K) standard
        # errors below (above) their level: an allowance for picking extremes out of a noisy curve.
        self.extreme = math.sqrt(2 * math.log(max(n / self.width, 1.0)))

    def g(self, x: Any) -> Any:
        return np.log(x) if self.log else x

    def drop_needed(self, x: float, allowance: float) -> float:
        """How far (in loss units) a value x must fall to fall by `allowance` on the noise scale."""
        return x * -math.expm1(-allowance) if self.log else allowance

    def at(self, step: float) -> float:
        return float(np.interp(step, self.steps, self.values))


def _running_median(y: np.ndarray, half: int, centres: np.ndarray) -> np.ndarray:
    width = 2 * half + 1
    padded = np.concatenate([np.full(half, np.nan), y, np.full(half, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    values = np.empty(len(centres))
    block = max(1, 2_000_000 // width)  # bound the memory of one nanmedian call
    for i in range(0, len(centres), block):
        values[i : i + block] = np.nanmedian(windows[centres[i : i + block]], axis=1)
    return values


def _step_noise(y: np.ndarray) -> float:
    """The standard deviation of the step-to-step noise: the robust spread of the differences / sqrt(2).

    Differences cancel a slowly moving trend; the median absolute deviation ignores the few steps
    where the trend is steep (a fast initial drop) and isolated spikes.
    """
    if len(y) < 3:
        return 0.0
    d = np.diff(y)
    return float(np.median(np.abs(d - np.median(d))) / _MAD_DIFF)


def _as_history(name: str, value: Any) -> np.ndarray:
    try:
        y = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"diagnose: {name} must be a 1-D sequence of numbers, got {type(value).__name__}") from e
    if y.ndim != 1:
        raise ValueError(f"diagnose: {name} must be 1-D (one loss per step), got shape {y.shape}")
    if len(y) == 0:
        raise ValueError(f"diagnose: {name} is empty")
    return y


def _check_threshold(name: str, value: Any, *, upper: float = math.inf, lower: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"diagnose: {name} must be a number, got {type(value).__name__}: {value!r}")
    x = float(value)
    if not (lower < x <= upper):
        raise ValueError(f"diagnose: {name} must be in ({lower:g}, {upper:g}], got {value!r}")
    return x


def diagnose(
    loss_history: Any,
    *,
    loss_every: int = 1,
    val_history: Any = None,
    val_every: int | None = None,
    smoothing: float = 0.1,
    window: float = 0.25,
    min_steps: int = 10,
    explode_factor: float = 2.0,
    explode_rise: float = 0.1,
    flat_drop: float = 0.1,
    plateau_gain: float = 0.01,
    noise_level: float = 0.1,
    overfit_rise: float = 0.1,
) -> Diagnosis:
    """Read a loss curve and report which of the classic patterns it shows, with evidence and advice.

    Host-side numpy (not jitted): call it on the logged losses after training, or every so often
    during it. The patterns, most severe first: **exploding** (NaN/Inf, or the smoothed loss rising
    to `explode_factor` times its best), **flat** (never fell by `flat_drop` of its start),
    **overfitting** (validation ends `overfit_rise` above its minimum while training did not rise),
    **plateau** (the last `window` brought under `plateau_gain` of the total improvement) and
    **noisy** (step noise at least `noise_level` of the level). A change counts only when it is
    larger than the curve's own noise can explain. The exact rules (smoothing, noise estimate,
    evidence keys, step alignment) are in the Training doctor guide, docs/doctor.md, section
    "The exact rules".

    `loss_history[i]` is the loss at training step `i * loss_every`; `val_history[j]` sits at step
    `j * val_every` (or, with `val_every=None`, evenly from the first to the last step). Histories
    shorter than `min_steps` get notes, not findings, so calling it from the first step is safe.

    Args:
        loss_history: the training loss, one value per step or epoch (list, numpy or jax array);
            NaN/Inf allowed.
        loss_every: training steps between the values of `loss_history` (1: one per step).
        val_history: the validation loss, evaluated every `val_every` steps or equally spaced.
        val_every: training steps between validation evaluations, or None (see above).
        smoothing: the running-median window, as a fraction of the history (at least 3 steps).
        window: the fraction of the history, at its end, read for the plateau and noise checks.
        min_steps: the fewest finite losses for the patterns other than NaN/Inf (>= 3).
        explode_factor: exploding: the smoothed loss reaches this multiple of its best earlier value.
        explode_rise: exploding: and rises by at least this fraction of the loss scale.
        flat_drop: flat: the loss fell by less than this fraction of its start level.
        plateau_gain: plateau: the last `window` brought less than this fraction of the total
            improvement.
        noise_level: noisy: the step noise is at least this fraction of the loss level.
        overfit_rise: overfitting: the validation loss ends at least this fraction above its minimum.

    Returns:
        A `Diagnosis`: `findings` (most severe first), `kinds`, `healthy`, `notes`; `str()` is a
        readable report.

    Raises:
        TypeError: a history that is not a sequence of numbers; a threshold that is not a number.
        ValueError: an empty or non-1-D history (the message names it); a threshold out of range;
            `loss_every` or `val_every` not an integer >= 1; `val_every` without `val_history`, or
            placing validation values beyond the training history.

    Example:
        ```python
        import numpy as np
        import gradchain as gc

        steps = np.arange(400)
        rng = np.random.default_rng(0)
        train = (0.2 + np.exp(-steps / 30)) * (1 + 0.3 * rng.standard_normal(400))  # noisy, stalls
        d = gc.diagnose(train)
        assert d.kinds == ("plateau", "noisy")
        print(d)

        val = 0.3 + 0.5 * np.exp(-steps[::10] / 30) + 1e-3 * steps[::10]  # lowest near step 80
        d = gc.diagnose(np.exp(-steps / 150), val_history=val, val_every=10)
        assert d.kinds == ("overfitting",) and d["overfitting"].evidence["best_val_step"] < 150
        ```

    References:
        CMU 10-701 lecture 6 ("Debugging training: a tiny flowchart", "Noise floor"); "ML
        Optimization; A Primer" ("Debugging Training: The Troubleshooting Guide").
    """
    y = _as_history("loss_history", loss_history)
    smoothing = _check_threshold("smoothing", smoothing, upper=1.0)
    window = _check_threshold("window", window, upper=1.0)
    min_steps = check_int("diagnose: min_steps", min_steps, minimum=3)
    loss_every = check_int("diagnose: loss_every", loss_every, minimum=1)
    explode_factor = _check_threshold("explode_factor", explode_factor, lower=1.0)
    explode_rise = _check_threshold("explode_rise", explode_rise)
    flat_drop = _check_threshold("flat_drop", flat_drop, upper=1.0)
    plateau_gain = _check_threshold("plateau_gain", plateau_gain, upper=1.0)
    noise_level = _check_threshold("noise_level", noise_level)
    overfit_rise = _check_threshold("overfit_rise", overfit_rise)
    val = None if val_history is None else _as_history("val_history", val_history)
    if val_every is not None:
        if val is None:
            raise ValueError("diagnose: val_every needs val_history")
        val_every = check_int("diagnose: val_every", val_every, minimum=1)
        last = (len(val) - 1) * val_every
        if last > (len(y) - 1) * loss_every:
            raise ValueError(
                f"diagnose: val_every={val_every} puts the last of the {len(val)} val_history values at "
                f"training step {last}, beyond the last loss_history value (step {(len(y) - 1) * loss_every})"
            )

    n = len(y)
    notes: list[str] = []
    finite = np.isfinite(y)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        first = int(bad[0]) * loss_every
        evidence = {
            "nonfinite_steps": float(len(bad)),
            "steps": float(n * loss_every),
            "first_nonfinite_step": float(first),
        }
        before = ""
        if bad[0] > 0:
            evidence["last_finite_loss"] = float(y[bad[0] - 1])
            before = f" (the loss before it: {y[bad[0] - 1]:.4g})"
        finding = Finding(
            "exploding",
            f"{len(bad)} of {n} losses are NaN or Inf, the first at step {first}{before}",
            ADVICE["exploding"],
            evidence,
        )
        notes.append("the loss exploded: the other patterns were not assessed (fix this first)")
        return Diagnosis((finding,), tuple(notes), n * loss_every)
    if n < min_steps:
        notes.append(f"{n} losses are fewer than min_steps={min_steps}: only NaN/Inf was checked")
        return Diagnosis((), tuple(notes), n * loss_every)

    s = _Curve(y, max(1, round(smoothing * n / 2)))
    i_best = int(np.argmin(s.values_g))
    best = float(s.values[i_best])
    start, drop, flat_threshold, flat = _start_level(s, y, i_best, max(1, round(smoothing * n)), flat_drop)
    scale = max(abs(start), start - best) or 1.0

    exploding = _exploding(s, start, explode_factor, explode_rise * scale, loss_every)
    if exploding is not None:
        notes.append("the loss exploded: the other patterns were not assessed (fix this first)")
        return Diagnosis((exploding,), tuple(notes), n * loss_every)

    findings: list[Finding] = []
    if flat:
        findings.append(
            Finding(
                "flat",
                f"over {n * loss_every} steps the loss fell by only {pct(drop)} of its start level "
                f"(from {start:.4g} to at best {best:.4g}; threshold {pct(flat_threshold)})",
                ADVICE["flat"],
                {
                    "steps": float(n * loss_every),
                    "start": start,
                    "best": best,
                    "drop": drop,
                    "threshold": flat_threshold,
                },
            )
        )

    if val is None:
        notes.append("no val_history: overfitting not assessed")
    else:
        overfit = _overfitting(val, val_every, loss_every, n, s, overfit_rise, notes)
        if overfit is not None:
            findings.append(overfit)

    t0 = n - max(3, round(window * n))
    tail = y[t0:]
    tail_sigma = _step_noise(tail)
    level = float(np.median(tail))
    # The level noise is measured against: at least 0.1% of the start, so that the rounding jitter of
    # a loss that reached about 0 is not noise.
    floor = max(abs(level), 1e-3 * abs(start), np.finfo(np.float64).tiny)
    relative = tail_sigma / floor
    if not flat:
        stall = _stall(y, s, t0, start - best, plateau_gain, tail_sigma, window, loss_every)
        smooth = relative < _SMOOTH or bool(np.all(np.diff(tail) <= _SMOOTH * floor))  # no noise, or never rising
        if stall is not None and smooth and stall.evidence["gain"] > -plateau_gain:
            ev = stall.evidence
            notes.append(
                f"converged: the loss has stayed near {ev['level']:.4g} since step ~{ev['stalled_since_step']:.0f}, "
                "smoothly (no step noise, or never rising): deterministic training that stalls is at its optimum "
                "or a saddle; a decaying rate would not help, stopping earlier would save the steps"
            )
        elif stall is not None:
            findings.append(stall)
    if relative >= noise_level:
        findings.append(
            Finding(
                "noisy",
                f"over the last {pct(window)} of the steps the loss moves by {tail_sigma:.3g} from step to "
                f"step, {pct(relative)} of its level {level:.4g}",
                ADVICE["noisy"],
                {"window": window, "noise": tail_sigma, "level": level, "relative_noise": relative},
            )
        )

    findings.sort(key=lambda f: KINDS.index(f.kind))
    return Diagnosis(tuple(findings), tuple(notes), n * loss_every)


def _start_level(s: _Curve, y: np.ndarray, i_best: int, k: int, flat_drop: float) -> tuple[float, float, float, bool]:
    """The start level, the drop from it to the best smoothed loss, the flat threshold, and whether flat.

    The start is read three ways: the first loss, the median of the first 3, and the median of the
    first `k` (the `smoothing` fraction). The median of many is precise but sits past a drop that
    happens within those steps; the first loss sees such a drop but is as noisy as one step. The
    low point is read two ways: the lowest smoothed loss (which, picked out of many, dips below
    the level by about `extreme` standard errors of noise), and the median of the last `k` losses.
    The loss is not flat if its drop from a start to a low point is both at least `flat_drop` of
    that start and more than the noise allows (3 standard errors of the two medians compared, plus
    the dip for the lowest one). The start reported is the one with the largest such drop, else the
    median of the most losses (the first `k`, or 3 if `k` is smaller).
    """
    g = s.g(y)
    sigma_start = s.noise[0]  # the step noise at the start and at the end, on the noise scale
    sigma_end = s.noise[-1]
    tail_g = float(np.median(g[-k:]))
    lows = [
        (float(s.values[i_best]), float(s.values_g[i_best]), float(s.se[i_best]), s.extreme * float(s.se[i_best])),
        (float(np.exp(tail_g)) if s.log else tail_g, tail_g, _MEDIAN_SE * sigma_end / math.sqrt(k), 0.0),
    ]
    best = lows[0][0]
    chosen = None
    for size in sorted({1, min(3, len(y)), k}, reverse=True):
        start_g = float(np.median(g[:size]))
        start = float(np.exp(start_g)) if s.log else start_g
        start_scale = abs(start) or 1.0
        se_start = _MEDIAN_SE * sigma_start / math.sqrt(size)
        for i, (low, low_g, se_low, dip) in enumerate(lows):
            allowance = _SIGNIFICANCE * math.hypot(se_start, se_low) + dip
            threshold = max(flat_drop, s.drop_needed(start, allowance) / start_scale)
            drop = (start - low) / start_scale
            if chosen is None and i == 0:
                chosen = (start, (start - best) / start_scale, threshold, True)  # the default report
            if drop >= threshold and start_g - low_g >= allowance and (chosen[3] or drop > chosen[1]):
                chosen = (start, (start - best) / start_scale, threshold, False)
    assert chosen is not None
    return chosen


def _exploding(s: _Curve, start: float, factor: float, min_rise: float, every: int) -> Finding | None:
    v, vg = s.values, s.values_g
    index = np.arange(len(v))
    best_g = np.minimum.accumulate(vg)
    i_best_before = np.maximum.accumulate(np.where(vg <= best_g, index, 0))
    best_before = v[i_best_before]
    noise = _SIGNIFICANCE * np.hypot(s.se, s.se[i_best_before]) + s.extreme * (s.se + s.se[i_best_before])
    hit = (v - best_before >= min_rise) & (vg - best_g >= noise)
    if s.log:
        hit &= vg - best_g >= math.log(factor)
    else:
        hit &= (best_before <= 0) | (v >= factor * best_before)
    if not hit.any():
        return None
    first = int(np.argmax(hit))
    i_best = int(i_best_before[first])
    i_peak = first + int(np.argmax(v[first:]))
    best, peak = float(v[i_best]), float(v[i_peak])
    best_step, peak_step = int(s.steps[i_best]) * every, int(s.steps[i_peak]) * every
    ratio = peak / best if best > 0 else math.inf
    times = f", {ratio:.3g}x" if math.isfinite(ratio) else ""
    return Finding(
        "exploding",
        f"the smoothed loss rose from its best {best:.4g} (step {best_step}) to {peak:.4g} "
        f"(step {peak_step}){times}; it started at about {start:.4g}",
        ADVICE["exploding"],
        {
            "start": start,
            "best": best,
            "best_step": float(best_step),
            "peak": peak,
            "peak_step": float(peak_step),
            "factor": ratio,
        },
    )


def _stall(
    y: np.ndarray,
    s: _Curve,
    t0: int,
    total: float,
    gain_threshold: float,
    tail_sigma: float,
    window: float,
    every: int,
) -> Finding | None:
    n = len(y)
    third = max(1, (n - t0) // 3)
    first_level = float(np.median(y[t0 : t0 + third]))
    level = float(np.median(y[n - third :]))
    se = _MEDIAN_SE * _step_noise(s.g(y[t0:])) * math.sqrt(2 / third)
    threshold = max(gain_threshold, s.drop_needed(first_level, _SIGNIFICANCE * se) / total)
    gain = (first_level - level) / total
    if gain >= threshold:
        return None
    # Since when has the loss stayed within the threshold of its later best? Read on a 3-step running
    # median (the wide one's truncated first window would already sit past a fast initial drop).
    future_best = np.interp(np.arange(n), s.steps, np.minimum.accumulate(s.values[::-1])[::-1])
    near = _Curve(y, 1)
    slack = max(threshold * total, _SIGNIFICANCE * _MEDIAN_SE * tail_sigma / math.sqrt(3))
    since = min(int(near.steps[int(np.argmax(near.values - future_best[near.steps] <= slack))]), t0) * every
    summary = (
        f"over the last {pct(window)} of the steps (from step {t0 * every}) the loss improved by {pct(gain)} of its "
        f"total improvement {total:.4g} (threshold {pct(threshold)}); no real improvement since step ~{since}, "
        f"the loss is now about {level:.4g}"
    )
    evidence = {
        "window": window,
        "window_start_step": float(t0 * every),
        "gain": gain,
        "threshold": threshold,
        "level": level,
        "total_improvement": total,
        "stalled_since_step": float(since),
    }
    return Finding("plateau", summary, ADVICE["plateau"], evidence)


def _overfitting(
    val: np.ndarray,
    val_every: int | None,
    loss_every: int,
    n: int,
    train: _Curve,
    rise: float,
    notes: list[str],
) -> Finding | None:
    m = len(val)
    if val_every is not None:  # positions in loss_history entries; reported in training steps
        positions = np.arange(m, dtype=np.float64) * val_every / loss_every
    else:
        positions = np.linspace(0, n - 1, m) if m > 1 else np.zeros(1)
    keep = np.isfinite(val)
    if not keep.all():
        notes.append(f"{int((~keep).sum())} non-finite val_history values were dropped")
    val, positions = val[keep], positions[keep]
    if len(val) < 3:
        notes.append(f"{len(val)} finite val_history values are too few (3 needed): overfitting not assessed")
        return None
    # A 3-point running median: validation minima are often early and sharp, and a validation set
    # is fixed, so its curve carries no batch-sampling noise to average away.
    sv = _Curve(val, 1)
    j = int(np.argmin(sv.values_g))
    best, final = float(sv.values[j]), float(sv.values[-1])
    val_rise = (final - best) / (abs(best) or 1.0)
    significant = sv.values_g[-1] - sv.values_g[j] >= (
        _SIGNIFICANCE * math.hypot(sv.se[j], sv.se[-1]) + sv.extreme * sv.se[j]
    )
    best_at = float(positions[j])
    best_step = best_at * loss_every
    i_train = int(np.clip(np.searchsorted(train.steps, best_at), 0, len(train.steps) - 1))
    train_at_best = train.at(best_at)
    final_train = float(train.values[-1])
    train_rose = train.values_g[-1] - train.values_g[i_train] > _SIGNIFICANCE * math.hypot(
        train.se[i_train], train.se[-1]
    )
    if val_rise < rise or not significant or train_rose:
        return None
    return Finding(
        "overfitting",
        f"the validation loss bottomed at {best:.4g} (step {best_step:.0f}) and ended {pct(val_rise)} above it, "
        f"at {final:.4g}, while the training loss went from {train_at_best:.4g} to {final_train:.4g}",
        ADVICE["overfitting"],
        {
            "best_val": best,
            "best_val_step": best_step,
            "final_val": final,
            "val_rise": val_rise,
            "train_at_best_val": train_at_best,
            "final_train": final_train,
        },
    )
