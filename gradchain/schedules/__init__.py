r"""Schedules: pure functions from a step count to a hyperparameter value.

A schedule is any callable `step -> value` (see `Schedule`). The builders in this module validate their
arguments when called and return schedules that are safe under `jax.jit` and `jax.vmap`: they use only
`jax.numpy` operations on the step, never Python control flow on its value.

Conventions shared by every schedule here:

* Steps count from 0: `schedule(0)` is the value used for the first update, which is also what
  PyTorch's schedulers give at `last_epoch == 0` (right after construction).
* A step may be a Python int or float, or an integer or float array of any shape (traced or not). The
  result is a float array of the default float dtype (`jnp.asarray(x, dtype=float)`: float32 unless
  x64 is enabled) with the step's shape, so `jax.vmap(schedule)(jnp.arange(n))` works.
* Negative steps are treated as step 0 (they are clamped), so no schedule extrapolates backwards.
* Steps are converted to floating point, so in float32 they are exact up to $2^{24}$ (about 16.7M).
  The periodic schedules (`cosine_warm_restarts_schedule`, `cyclic_schedule`) locate the position
  inside a cycle in integer arithmetic when given an integer step, so their phase stays exact.
* Step-count arguments (`transition_steps`, `decay_steps`, `warmup_steps`, ...) must be Python or
  NumPy ints. A count that divides in the formula must be positive; a count that only skips a phase
  (such as `warmup_steps=0`) may be zero.
* Value arguments (`init_value`, `peak_value`, `end_value`, `decay_rate`, ...) may be traced scalars,
  e.g. to `vmap` over learning rates; arguments that fix the shape of the schedule (step counts,
  `pct_start`, `pct_final`, flags, modes) must be concrete.
* The formulas are arranged to avoid cancellation (e.g. a cosine's tail is computed as a squared sine
  of the remaining fraction), so float32 values stay within about 1e-6 relative of the exact values.
  A traced `decay_rate` or `gamma` is the exception: it arrives rounded to float32, so `rate ** k`
  is only accurate to about `k * 6e-8` relative (concrete rates are used in float64).

Mapping from PyTorch's `torch.optim.lr_scheduler` (with `lr` the optimizer's learning rate; torch's
`last_epoch` equals gradchain's step):

* `StepLR(step_size, gamma)`: `exponential_decay(lr, step_size, gamma, staircase=True)`
* `MultiStepLR(milestones, gamma)`: `piecewise_constant_schedule(lr, {m: gamma for m in milestones})`
* `ExponentialLR(gamma)`: `exponential_decay(lr, 1, gamma)`
* `CosineAnnealingLR(T_max, eta_min)`: `cosine_decay_schedule(lr, T_max, alpha=eta_min / lr)` (*)
* `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`:
  `cosine_warm_restarts_schedule(lr, T_0, T_mult, eta_min)`
* `LinearLR(start_factor, end_factor, total_iters)`:
  `linear_schedule(lr * start_factor, lr * end_factor, total_iters)`
* `PolynomialLR(total_iters, power)`: `polynomial_schedule(lr, 0.0, power, total_iters)`
* `OneCycleLR(lr, n, p)` (cosine, two phases): `cosine_onecycle_schedule(n, lr, p, torch_convention=True)`
* `OneCycleLR(lr, n, p, anneal_strategy="linear", three_phase=True)`:
  `linear_onecycle_schedule(n, lr, p, pct_final=2 * p, torch_convention=True)`
* `CyclicLR(base_lr, max_lr, up, down, mode, gamma)`:
  `cyclic_schedule(base_lr, max_lr, up, down, mode, gamma)`
* `Adagrad(lr, lr_decay=d)`'s decayed learning rate: `inverse_time_decay(lr, d)`
* `LambdaLR(lr_lambda)`: any schedule, e.g. `power_law_schedule(lr, tau, alpha)`

(*) Up to step `T_max`; beyond it torch's cosine keeps oscillating, while gradchain holds `eta_min`.
"""

from gradchain._base import Schedule
from gradchain.schedules._basic import (
    constant_schedule,
    exponential_decay,
    join_schedules,
    linear_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
)
from gradchain.schedules._cosine import cosine_decay_schedule, cosine_warm_restarts_schedule, sgdr_schedule
from gradchain.schedules._cyclic import cosine_onecycle_schedule, cyclic_schedule, linear_onecycle_schedule
from gradchain.schedules._power_law import inverse_sqrt_schedule, inverse_time_decay, power_law_schedule
from gradchain.schedules._warmup import (
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
    warmup_linear_decay_schedule,
    warmup_stable_decay_schedule,
)

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "cosine_warm_restarts_schedule",
    "cyclic_schedule",
    "exponential_decay",
    "inverse_sqrt_schedule",
    "inverse_time_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "power_law_schedule",
    "sgdr_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_linear_decay_schedule",
    "warmup_stable_decay_schedule",
]

# The builders live in private modules but belong to this one: report it as their module, as before
# the split, so that `help`, documentation tools and pickling show `gradchain.schedules.<name>`.
for _name in __all__:
    if _name != "Schedule":
        globals()[_name].__module__ = __name__
del _name
