"""jaxreg: regularization for JAX, as pure functions that compose with optax."""

from jaxreg import ensemble, es, masks, variational
from jaxreg.constraints import max_norm, non_negative, unit_norm
from jaxreg.dropout import dropout, mc_dropout, mc_dropout_samples
from jaxreg.early_stopping import EarlyStopping, EarlyStoppingState, freeze_stopped, retrain_budget
from jaxreg.loss import Terms, regularize
from jaxreg.penalties import Penalty, elastic_net, group_lasso, l1, l2, tie
from jaxreg.sharing import Share, Shared
from jaxreg.training import FitResult, History, fit, retrain
from jaxreg.transforms import add_penalty_grad, project, proximal, proximal_adam
from jaxreg.uncertainty import (
    Prediction,
    expected_calibration_error,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    predictive_probs,
)
from jaxreg.variational import kl_normal

__version__ = "0.1.0"


__all__ = [
    "add_penalty_grad",
    "benchmark",
    "dropout",
    "EarlyStopping",
    "EarlyStoppingState",
    "elastic_net",
    "ensemble",
    "es",
    "expected_calibration_error",
    "expected_entropy",
    "fit",
    "FitResult",
    "freeze_stopped",
    "group_lasso",
    "History",
    "kl_normal",
    "l1",
    "l2",
    "masks",
    "max_norm",
    "mc_dropout",
    "mc_dropout_samples",
    "mutual_information",
    "non_negative",
    "Penalty",
    "Prediction",
    "predictive_entropy",
    "predictive_probs",
    "project",
    "proximal",
    "proximal_adam",
    "regularize",
    "retrain",
    "retrain_budget",
    "Share",
    "Shared",
    "Terms",
    "tie",
    "unit_norm",
    "variational",
]


def __getattr__(name: str):
    # Lazy re-export (PEP 562), issue 11: `import jaxreg` stays free of the benchmark tools.
    if name == "benchmark":
        import importlib

        return importlib.import_module("jaxreg.benchmark")
    raise AttributeError(f"module 'jaxreg' has no attribute {name!r}")
