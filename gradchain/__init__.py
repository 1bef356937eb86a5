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
    identity,
    stateless,
    with_extra_args_support,
)
from gradchain._checks import Check
from gradchain._combine import chain, named_chain
from gradchain._hyperparams import Hyperparams, HyperparamSpec, hyperparams, set_hyperparams
from gradchain._lift import Slot, elementwise
from gradchain._masking import labels_by_path, mask_by_path
from gradchain._numerics import safe_increment
from gradchain._packing import Packed, pack, unpack
from gradchain.doctor import Diagnosis, Finding, LRRangeResult, diagnose, lr_range_test
from gradchain.interop import from_optax, to_optax
from gradchain.optimizers.adam_variants import adabelief, adan, novograd, radam, yogi
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
from gradchain.optimizers.layerwise import fromage, lamb, lars, sm3
from gradchain.optimizers.lbfgs import MinimizeResult, ScaleByLbfgsState, lbfgs, minimize, scale_by_lbfgs
from gradchain.optimizers.modern import adafactor, lion
from gradchain.optimizers.sgd_variants import (
    adadelta,
    asgd,
    noisy_sgd,
    optimistic_adam,
    optimistic_gradient_descent,
    polyak_sgd,
    rprop,
    sign_sgd,
    signum,
)
from gradchain.transforms.adam_variants import (
    ScaleByAdanState,
    ScaleByBeliefState,
    ScaleByNovogradState,
    scale_by_adan,
    scale_by_belief,
    scale_by_novograd,
    scale_by_radam,
    scale_by_yogi,
)
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
from gradchain.transforms.layerwise import (
    AdaptiveGradClipState,
    ScaleByFromageStepState,
    ScaleByParamBlockNormState,
    ScaleBySM3State,
    ScaleByTrustRatioState,
    adaptive_grad_clip,
    centralize,
    scale_by_fromage_step,
    scale_by_param_block_norm,
    scale_by_sm3,
    scale_by_trust_ratio,
)
from gradchain.transforms.linesearch import (
    ScaleByBacktrackingLinesearchState,
    ScaleByZoomLinesearchState,
    find_linesearch_state,
    scale_by_backtracking_linesearch,
    scale_by_zoom_linesearch,
    value_and_grad_from_state,
)
from gradchain.transforms.momentum import EmaState, TraceState, ema, trace
from gradchain.transforms.scaling import ScaleState, scale, scale_by_learning_rate, scale_by_schedule
from gradchain.transforms.sgd_variants import (
    AddNoiseState,
    ScaleByAdadeltaState,
    ScaleByAsgdState,
    ScaleByOptimisticGradientState,
    ScaleByPolyakState,
    ScaleByRpropState,
    add_noise,
    asgd_averaged_params,
    scale_by_adadelta,
    scale_by_asgd,
    scale_by_optimistic_gradient,
    scale_by_polyak,
    scale_by_rprop,
)
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
    masked,
    partition,
    reset_group,
)
from gradchain.wrappers.plateau import ReduceOnPlateauState, reduce_on_plateau
from gradchain.wrappers.safety import ApplyIfFiniteState, SkipOnSpikeState, apply_if_finite, skip_on_spike
from gradchain.wrappers.sanitize import ZeroNansState, keep_params_nonnegative, zero_nans

__version__ = "0.1.0"

__all__ = [
    "Diagnosis",
    "Finding",
    "LRRangeResult",
    "diagnose",
    "lr_range_test",
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
    "with_extra_args_support",
    "safe_increment",
    # writing ingredients
    "elementwise",
    "Slot",
    "HyperparamSpec",
    "Check",
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
    # ingredients: more adaptive, layer-wise and second-order
    "scale_by_belief",
    "scale_by_yogi",
    "scale_by_radam",
    "scale_by_adan",
    "scale_by_novograd",
    "ScaleByBeliefState",
    "ScaleByAdanState",
    "ScaleByNovogradState",
    "scale_by_adadelta",
    "scale_by_rprop",
    "scale_by_asgd",
    "add_noise",
    "scale_by_optimistic_gradient",
    "scale_by_polyak",
    "scale_by_trust_ratio",
    "centralize",
    "scale_by_param_block_norm",
    "adaptive_grad_clip",
    "scale_by_sm3",
    "scale_by_fromage_step",
    "scale_by_lbfgs",
    "scale_by_zoom_linesearch",
    "scale_by_backtracking_linesearch",
    "ScaleByAdadeltaState",
    "ScaleByRpropState",
    "ScaleByAsgdState",
    "AddNoiseState",
    "ScaleByOptimisticGradientState",
    "ScaleByPolyakState",
    "ScaleByTrustRatioState",
    "ScaleByParamBlockNormState",
    "AdaptiveGradClipState",
    "ScaleBySM3State",
    "ScaleByFromageStepState",
    "ScaleByLbfgsState",
    "ScaleByZoomLinesearchState",
    "ScaleByBacktrackingLinesearchState",
    # helpers for these
    "asgd_averaged_params",
    "value_and_grad_from_state",
    "find_linesearch_state",
    "minimize",
    "MinimizeResult",
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
    "adabelief",
    "yogi",
    "radam",
    "adan",
    "novograd",
    "adadelta",
    "rprop",
    "sign_sgd",
    "signum",
    "asgd",
    "noisy_sgd",
    "optimistic_gradient_descent",
    "optimistic_adam",
    "polyak_sgd",
    "lars",
    "lamb",
    "fromage",
    "sm3",
    "lbfgs",
    # modules
    "schedules",
    "tree",
]
