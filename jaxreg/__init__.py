"""jaxreg: regularization for JAX, as pure functions that compose with optax."""

from jaxreg import masks
from jaxreg.constraints import max_norm, non_negative, unit_norm
from jaxreg.loss import Terms, regularize
from jaxreg.penalties import Penalty, elastic_net, group_lasso, l1, l2, tie
from jaxreg.sharing import Share, Shared
from jaxreg.transforms import add_penalty_grad, project, proximal, proximal_adam

from jaxreg import ensemble
from jaxreg.dropout import dropout, mc_dropout, mc_dropout_samples
from jaxreg.uncertainty import (
    Prediction,
    expected_calibration_error,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    predictive_probs,
)
from jaxreg.early_stopping import EarlyStopping, EarlyStoppingState, freeze_stopped, retrain_budget
from jaxreg.training import FitResult, History, fit, retrain
from jaxreg import benchmark
from jaxreg import es, variational
from jaxreg.variational import kl_normal

__version__ = "0.1.0"

__all__ = [
    "Penalty",
    "Share",
    "Shared",
    "Terms",
    "add_penalty_grad",
    "elastic_net",
    "group_lasso",
    "l1",
    "l2",
    "masks",
    "max_norm",
    "non_negative",
    "project",
    "proximal",
    "proximal_adam",
    "regularize",
    "tie",
    "unit_norm",
    "Prediction",
    "dropout",
    "ensemble",
    "expected_calibration_error",
    "expected_entropy",
    "mc_dropout",
    "mc_dropout_samples",
    "mutual_information",
    "predictive_entropy",
    "predictive_probs",
    "EarlyStopping",
    "EarlyStoppingState",
    "FitResult",
    "History",
    "fit",
    "freeze_stopped",
    "retrain",
    "retrain_budget",
    "benchmark",
    "es",
    "kl_normal",
    "variational",
]
