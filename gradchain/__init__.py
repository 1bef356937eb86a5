"""gradchain: composable gradient transformations for JAX.

Every ingredient of an optimizer (momentum, RMS scaling, bias correction, weight decay, schedules,
clipping) is a `GradientTransformation`, a pure `init`/`update` pair over pytrees; optimizers are
chains of them. Numeric hyperparameters live in the state: change them without recompiling, read
back the values in effect (`hyperparams`, `set_hyperparams`).
"""

from gradchain import schedules, tree
from gradchain._base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    Updates,
    apply_updates,
    chain,
    identity,
    named_chain,
    stateless,
)
from gradchain._hyperparams import Hyperparams, hyperparams, set_hyperparams
from gradchain._packing import Packed, pack, unpack
from gradchain.interop import from_optax, to_optax
from gradchain.optimizers.classic import (
    adagrad,
    adam,
    adamax,
    adamaxw,
    adamw,
    amsgrad,
    nadam,
    nadamw,
    rmsprop,
    sgd,
)
from gradchain.optimizers.modern import adafactor, lion
from gradchain.transforms.adaptive import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByNadamState,
    ScaleByRmsState,
    ScaleByRssState,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_rms,
    scale_by_rss,
)
from gradchain.transforms.clipping import (
    ClipByBlockRmsState,
    ClipByGlobalNormState,
    ClipState,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
)
from gradchain.transforms.debugging import check_finite
from gradchain.transforms.factored import (
    ScaleByFactoredRmsState,
    ScaleByParamBlockRmsState,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradchain.transforms.momentum import EmaState, TraceState, ema, trace
from gradchain.transforms.scaling import ScaleState, scale, scale_by_learning_rate, scale_by_schedule
from gradchain.transforms.sign import ScaleByLionState, ScaleBySignState, scale_by_lion, scale_by_sign
from gradchain.transforms.weight_decay import WeightDecayState, add_decayed_weights, add_l2_regularization
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
from gradchain.wrappers.partition import (
    MaskedState,
    PartitionState,
    freeze,
    labels_by_path,
    mask_by_path,
    masked,
    partition,
    reset_group,
)
from gradchain.wrappers.plateau import ReduceOnPlateauState, reduce_on_plateau
from gradchain.wrappers.safety import ApplyIfFiniteState, SkipOnSpikeState, apply_if_finite, skip_on_spike
from gradchain.wrappers.sanitize import ZeroNansState, keep_params_nonnegative, zero_nans

__version__ = "0.1.0"

__all__ = [
    # protocol
    "GradientTransformation",
    "EmptyState",
    "Params",
    "Updates",
    "OptState",
    "chain",
    "named_chain",
    "identity",
    "stateless",
    "apply_updates",
    "Packed",
    "pack",
    "unpack",
    # hyperparameters
    "Hyperparams",
    "hyperparams",
    "set_hyperparams",
    # ingredients
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "trace",
    "ema",
    "scale_by_rss",
    "scale_by_rms",
    "scale_by_adam",
    "scale_by_amsgrad",
    "scale_by_adamax",
    "scale_by_nadam",
    "scale_by_sign",
    "scale_by_lion",
    "scale_by_factored_rms",
    "scale_by_param_block_rms",
    "add_decayed_weights",
    "add_l2_regularization",
    "clip",
    "clip_by_global_norm",
    "clip_by_block_rms",
    "check_finite",
    # states
    "ScaleState",
    "TraceState",
    "EmaState",
    "ScaleByRssState",
    "ScaleByRmsState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByNadamState",
    "WeightDecayState",
    "ClipState",
    "ClipByGlobalNormState",
    "ClipByBlockRmsState",
    "ScaleBySignState",
    "ScaleByLionState",
    "ScaleByFactoredRmsState",
    "ScaleByParamBlockRmsState",
    # wrappers: parameter groups
    "masked",
    "partition",
    "freeze",
    "reset_group",
    "labels_by_path",
    "mask_by_path",
    "MaskedState",
    "PartitionState",
    # wrappers: accumulation and bad steps
    "multi_steps",
    "has_updated",
    "apply_if_finite",
    "skip_on_spike",
    "dynamic_loss_scale",
    "loss_scale",
    "zero_nans",
    "keep_params_nonnegative",
    "MultiStepsState",
    "ApplyIfFiniteState",
    "SkipOnSpikeState",
    "DynamicLossScaleState",
    "ZeroNansState",
    # wrappers: averaging, lookahead, loss-driven schedules
    "ema_params",
    "swa",
    "lookahead",
    "averaged_params",
    "slow_params",
    "reduce_on_plateau",
    "ParamEmaState",
    "SwaState",
    "LookaheadState",
    "ReduceOnPlateauState",
    # monitoring and interop
    "monitored",
    "metrics",
    "MonitorState",
    "from_optax",
    "to_optax",
    # optimizers
    "sgd",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "nadam",
    "nadamw",
    "amsgrad",
    "adamax",
    "adamaxw",
    "lion",
    "adafactor",
    # modules
    "schedules",
    "tree",
]
