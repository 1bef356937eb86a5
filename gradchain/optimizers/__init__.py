"""Ready-made optimizers: recipes that chain public ingredients and hold no math of their own."""

from gradchain.optimizers.adam import adam, adamax, adamaxw, adamw, amsgrad, nadam, nadamw, optimistic_adam
from gradchain.optimizers.adam_family import adabelief, adan, novograd, radam, yogi
from gradchain.optimizers.factored import adafactor, sm3
from gradchain.optimizers.lbfgs import MinimizeResult, lbfgs, minimize
from gradchain.optimizers.rms import adadelta, adagrad, rmsprop
from gradchain.optimizers.sgd import asgd, noisy_sgd, optimistic_gradient_descent, polyak_sgd, sgd
from gradchain.optimizers.sign import lion, rprop, sign_sgd, signum
from gradchain.optimizers.trust_ratio import fromage, lamb, lars

__all__ = [
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "amsgrad",
    "asgd",
    "fromage",
    "lamb",
    "lars",
    "lbfgs",
    "lion",
    "minimize",
    "MinimizeResult",
    "nadam",
    "nadamw",
    "noisy_sgd",
    "novograd",
    "optimistic_adam",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
]
