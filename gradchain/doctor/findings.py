"""What `diagnose` reports: a `Diagnosis` made of `Finding`s, each with its evidence and advice.

Part of the training doctor (see `gradchain.doctor`).
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["ADVICE", "KINDS", "Diagnosis", "Finding", "fmt", "pct"]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One pattern `diagnose` found in a loss curve, with its evidence and the usual remedies.

    Attributes:
        kind: one of "exploding", "flat", "overfitting", "plateau", "noisy".
        summary: one line, quoting the numbers in `evidence`.
        advice: the usual remedies, most likely first (from the debugging flowchart of CMU 10-701
            lecture 6 and the optimizer primer's debugging guide).
        evidence: the numbers behind the finding, by name. Steps are 0-based indices into the
            training history; fractions are plain ratios (0.05 is 5%). `diagnose` lists each
            kind's keys.

    Example:
        ```python
        import numpy as np
        import gradchain as gc

        finding = gc.diagnose(np.linspace(1.0, 0.99, 100)).findings[0]
        assert finding.kind == "flat" and finding.evidence["drop"] < 0.1
        print(finding)  # the summary, the evidence and the advice
        ```
    """

    kind: str
    summary: str
    advice: tuple[str, ...]
    evidence: dict[str, float]

    def __post_init__(self) -> None:
        # Plain Python floats, whatever numpy scalar computed them, so the evidence reads cleanly.
        object.__setattr__(self, "advice", tuple(self.advice))
        object.__setattr__(self, "evidence", {k: float(v) for k, v in self.evidence.items()})

    def __str__(self) -> str:
        numbers = ", ".join(f"{k}={fmt(v)}" for k, v in self.evidence.items())
        lines = [f"{self.kind}: {self.summary}", f"  evidence: {numbers}"]
        lines += [f"  - {a}" for a in self.advice]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` found in a loss curve: the findings in order of severity, and notes.

    `"plateau" in d` tells whether a kind was found, and `d["plateau"]` returns its `Finding`.

    Attributes:
        findings: the patterns found, most severe first (exploding, flat, overfitting, plateau,
            noisy); empty for a healthy curve.
        notes: what was not assessed and why (too short a history, no validation history, the
            other patterns skipped because the loss exploded).
        steps: the training steps the history covers (its length times `loss_every`).

    Example:
        ```python
        import numpy as np
        import gradchain as gc

        healthy = gc.diagnose(np.exp(-np.arange(100) / 40))
        assert healthy.healthy and healthy.kinds == ()
        broken = gc.diagnose([1.0, 0.9, 1.5, 30.0, np.nan])
        assert broken.kinds == ("exploding",) and "exploding" in broken
        print(broken)  # each finding, its evidence and advice
        ```
    """

    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()
    steps: int = 0

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of the findings, in order of severity."""
        return tuple(f.kind for f in self.findings)

    @property
    def healthy(self) -> bool:
        """Whether no pattern was found."""
        return not self.findings

    def __getitem__(self, kind: str) -> Finding:
        for f in self.findings:
            if f.kind == kind:
                return f
        raise KeyError(f"diagnose found no {kind!r} pattern; found: {list(self.kinds) or 'none'}")

    def __contains__(self, kind: object) -> bool:
        return kind in self.kinds

    def __str__(self) -> str:
        head = f"diagnose: {self.steps} steps: "
        if self.healthy:
            lines = [head + "no pattern found (healthy)"]
        else:
            lines = [head + ", ".join(self.kinds)]
            lines += [str(f) for f in self.findings]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


KINDS = ("exploding", "flat", "overfitting", "plateau", "noisy")  # in order of severity

ADVICE: dict[str, tuple[str, ...]] = {
    "exploding": (
        "lower the learning rate (3-10x; gc.lr_range_test shows where it diverges)",
        "check the feature/input scaling (standardise the features)",
        "clip the gradients (gc.clip_by_global_norm) or skip bad steps (gc.apply_if_finite)",
    ),
    "flat": (
        "raise the learning rate (try 10x; gc.lr_range_test sweeps it)",
        "normalise the features and check the initialisation",
        "check that the gradients reach the params (a loss that does not depend on them is flat too)",
    ),
    "overfitting": (
        "add weight decay (gc.adamw, or weight_decay= in gc.sgd / gc.adam)",
        "stop early: keep the params of the best validation step",
        "more data or data augmentation; a smaller model",
    ),
    "plateau": (
        "decay the learning rate: a schedule (gc.schedules.cosine_decay_schedule, "
        "piecewise_constant_schedule) or gc.reduce_on_plateau",
        "if this level is the best the model can reach, training has converged: stop earlier",
        "otherwise try another optimizer (momentum, Adam) or a larger model",
    ),
    "noisy": (
        "increase the batch size",
        "add momentum (gc.sgd(lr, momentum=0.9)) or average the params (gc.ema_params)",
        "decay the learning rate to settle below the noise floor (a schedule)",
    ),
}


def fmt(x: float) -> str:
    if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e9:
        return str(int(x))
    return f"{x:.3g}"


def pct(x: float) -> str:
    return f"{100 * x:.3g}%"
