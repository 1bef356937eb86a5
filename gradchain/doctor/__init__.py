"""The training doctor: a learning-rate range test, and a reader of loss curves.

Two tools for the first questions of any training run, in the order one asks them:

- `lr_range_test` sweeps the learning rate on a log grid, a few steps per rate, every run starting
  from the same params, all rates in one compiled and vmapped function. It returns the loss per rate
  and suggests a rate: the steepest descent of the loss against log(rate), before divergence. This
  is the "3-curve test" of CMU 10-701 lecture 6 (a quick log sweep: explodes, flat, good) run on
  every rate of a grid, and Smith's range test (Smith 2017, "Cyclical Learning Rates for Training
  Neural Networks", section 3.3) with independent short runs instead of one run with a growing rate.
- `diagnose` reads a loss history (host-side numpy, after or during training) and reports which of
  the classic patterns it shows, each with the numbers behind it and the usual remedies: exploding,
  flat, noisy, plateau, and, given a validation history, overfitting. The patterns and the advice are
  those of the loss-curve debugging flowchart of CMU 10-701 lecture 6 ("Explodes: lower the learning
  rate, check feature scaling, try gradient clipping. Flat: raise the learning rate. Noisy: increase
  the batch size, add momentum, decay the rate. Overfits: weight decay, early stopping") and of the
  debugging guide of the optimizer primer ("ML Optimization; A Primer": exploding, not decreasing,
  oscillating, plateauing).

Both are heuristics with documented, adjustable thresholds, not proofs: they say what a person
looking at the plot would say, with the numbers to check it.

References:
    CMU 10-701 (Introduction to Machine Learning), lecture 6, "Optimization for ML", 2026: the
    3-curve test and the debugging flowchart. "ML Optimization; A Primer": the debugging guide.
    Smith, *Cyclical Learning Rates for Training Neural Networks*, WACV 2017 (arXiv:1506.01186).
"""

from gradchain.doctor.curves import diagnose
from gradchain.doctor.findings import Diagnosis, Finding
from gradchain.doctor.range_test import LRRangeResult, lr_range_test

__all__ = ["Diagnosis", "Finding", "LRRangeResult", "diagnose", "lr_range_test"]
