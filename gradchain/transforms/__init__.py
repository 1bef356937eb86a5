"""Ingredients: small gradient transformations, one family per module."""

import warnings
from typing import Any

from gradchain.transforms.adam import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByNadamState,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
)
from gradchain.transforms.adam_family import (
    ScaleByAdanState,
    ScaleByBeliefState,
    ScaleByNovogradState,
    scale_by_adan,
    scale_by_belief,
    scale_by_novograd,
    scale_by_radam,
    scale_by_yogi,
)
from gradchain.transforms.asgd import ScaleByAsgdState, asgd_averaged_params, scale_by_asgd
from gradchain.transforms.clipping import (
    AdaptiveGradClipState,
    ClipByBlockRmsState,
    ClipByGlobalNormState,
    ClipState,
    adaptive_grad_clip,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
)
from gradchain.transforms.factored import (
    FactoredState,
    ScaleByParamBlockRmsState,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradchain.transforms.lbfgs import ScaleByLBFGSState, scale_by_lbfgs
from gradchain.transforms.linesearch import (
    ScaleByBacktrackingLinesearchState,
    ScaleByZoomLinesearchState,
    find_linesearch_state,
    scale_by_backtracking_linesearch,
    value_and_grad_from_state,
)
from gradchain.transforms.momentum import EmaState, TraceState, ema, trace
from gradchain.transforms.noise import AddNoiseState, add_noise
from gradchain.transforms.normalization import ScaleByParamBlockNormState, centralize, scale_by_param_block_norm
from gradchain.transforms.optimistic import ScaleByOptimisticGradientState, scale_by_optimistic_gradient
from gradchain.transforms.plateau import ReduceOnPlateauState, reduce_on_plateau
from gradchain.transforms.polyak import ScaleByPolyakState, scale_by_polyak
from gradchain.transforms.rms import (
    ScaleByAdaDeltaState,
    ScaleByRmsState,
    ScaleByRssState,
    scale_by_adadelta,
    scale_by_rms,
    scale_by_rss,
)
from gradchain.transforms.sanitize import ZeroNansState, check_finite, keep_params_nonnegative, zero_nans
from gradchain.transforms.scaling import ScaleState, scale, scale_by_learning_rate, scale_by_schedule
from gradchain.transforms.sign import (
    ScaleByLionState,
    ScaleByRpropState,
    ScaleBySignState,
    scale_by_lion,
    scale_by_rprop,
    scale_by_sign,
)
from gradchain.transforms.sm3 import ScaleBySM3State, scale_by_sm3
from gradchain.transforms.trust_ratio import (
    ScaleByFromageStepState,
    ScaleByTrustRatioState,
    scale_by_fromage_step,
    scale_by_trust_ratio,
)
from gradchain.transforms.weight_decay import AddDecayedWeightsState, add_decayed_weights, add_l2_regularization
from gradchain.transforms.zoom import scale_by_zoom_linesearch

__all__ = [
    "adaptive_grad_clip",
    "AdaptiveGradClipState",
    "add_decayed_weights",
    "add_l2_regularization",
    "add_noise",
    "AddDecayedWeightsState",
    "AddNoiseState",
    "asgd_averaged_params",
    "centralize",
    "check_finite",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "ClipByBlockRmsState",
    "ClipByGlobalNormState",
    "ClipState",
    "ema",
    "EmaState",
    "FactoredState",
    "find_linesearch_state",
    "keep_params_nonnegative",
    "reduce_on_plateau",
    "ReduceOnPlateauState",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_amsgrad",
    "scale_by_asgd",
    "scale_by_backtracking_linesearch",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_fromage_step",
    "scale_by_lbfgs",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_sign",
    "scale_by_sm3",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "scale_by_zoom_linesearch",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAdanState",
    "ScaleByAmsgradState",
    "ScaleByAsgdState",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByBeliefState",
    "ScaleByFromageStepState",
    "ScaleByLBFGSState",
    "ScaleByLionState",
    "ScaleByNadamState",
    "ScaleByNovogradState",
    "ScaleByOptimisticGradientState",
    "ScaleByParamBlockNormState",
    "ScaleByParamBlockRmsState",
    "ScaleByPolyakState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "ScaleBySignState",
    "ScaleBySM3State",
    "ScaleByTrustRatioState",
    "ScaleByZoomLinesearchState",
    "ScaleState",
    "trace",
    "TraceState",
    "value_and_grad_from_state",
    "zero_nans",
    "ZeroNansState",
]

# Old names of renamed states (optax's names since 0.2): importable, with a DeprecationWarning.
DEPRECATED_NAMES = {
    "ScaleByLbfgsState": "ScaleByLBFGSState",
    "ScaleByAdadeltaState": "ScaleByAdaDeltaState",
    "WeightDecayState": "AddDecayedWeightsState",
    "ScaleByFactoredRmsState": "FactoredState",
}


def __getattr__(name: str) -> Any:
    if name in DEPRECATED_NAMES:
        new = DEPRECATED_NAMES[name]
        warnings.warn(f"gradchain: {name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
