"""What every optimizer here is made of: `recipe`, a `chain` that leaves out the parts set to `None`.

Optional parts follow one rule: an argument left as `None` leaves its ingredient out of the chain
(no state, no work); any value, `0.0` included, puts it in, and its hyperparameter can then be
changed between steps with `set_hyperparams`. Coupled L2 decay (PyTorch's `weight_decay` in SGD,
Adam, Adagrad, RMSprop, Adamax) is `add_l2_regularization` at the head of the chain
(`optional_l2`); decoupled decay (the `*w` optimizers) is `add_decayed_weights` between the
adaptive scaling and the learning rate.
"""

from __future__ import annotations

import jax

from gradchain._base import GradientTransformation, ScalarOrSchedule
from gradchain._combine import chain
from gradchain.transforms.weight_decay import add_l2_regularization

Scalar = float | jax.Array


def recipe(*parts: GradientTransformation | None, pack: bool | None) -> GradientTransformation:
    return chain(*(p for p in parts if p is not None), pack=pack)


def optional_l2(weight_decay: ScalarOrSchedule | None) -> GradientTransformation | None:
    return None if weight_decay is None else add_l2_regularization(weight_decay)
