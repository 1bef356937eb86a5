"""Wrappers: transformations that take another transformation (or the whole step) and change how it runs.

Parameter groups and freezing, gradient accumulation, surviving bad steps, loss scaling, averaging
and lookahead, and monitoring. Each is a `GradientTransformation`, so they nest and chain with every
ingredient and optimizer.
"""

from gradchain.wrappers.accumulate import MultiStepsState, has_updated, multi_steps
from gradchain.wrappers.averaging import (
    LookaheadState,
    ParamEmaState,
    SwaState,
    averaged_params,
    ema_params,
    lookahead,
    slow_params,
    swa,
)
from gradchain.wrappers.loss_scaling import DynamicLossScaleState, dynamic_loss_scale, loss_scale
from gradchain.wrappers.monitoring import MonitorState, metrics, monitored
from gradchain.wrappers.partition import MaskedState, PartitionState, freeze, masked, partition, reset_group
from gradchain.wrappers.safety import ApplyIfFiniteState, SkipOnSpikeState, apply_if_finite, skip_on_spike

__all__ = [
    "apply_if_finite",
    "ApplyIfFiniteState",
    "averaged_params",
    "dynamic_loss_scale",
    "DynamicLossScaleState",
    "ema_params",
    "freeze",
    "has_updated",
    "lookahead",
    "LookaheadState",
    "loss_scale",
    "masked",
    "MaskedState",
    "metrics",
    "monitored",
    "MonitorState",
    "multi_steps",
    "MultiStepsState",
    "ParamEmaState",
    "partition",
    "PartitionState",
    "reset_group",
    "skip_on_spike",
    "SkipOnSpikeState",
    "slow_params",
    "swa",
    "SwaState",
]
