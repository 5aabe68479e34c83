"""jaxreg: regularization for JAX, as pure functions that compose with optax."""

from jaxreg import data, ensemble, es, masks, stats, variational
from jaxreg._checks import traced_checks
from jaxreg.constraints import max_norm, non_negative, unit_norm
from jaxreg.dropout import dropout, mc_dropout, mc_dropout_samples
from jaxreg.early_stopping import EarlyStopping, EarlyStoppingState, freeze_stopped, retrain_budget

# issue 13: optimizer hyperparameters as state leaves (sweep)
from jaxreg.hyperparams import SweepableSchedule, SweepableState, schedule, sweepable
from jaxreg.loss import Terms, regularize
from jaxreg.penalties import Penalty, elastic_net, group_lasso, l1, l2, tie
from jaxreg.pruning import SuccessiveHalving  # issue 13
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

# issue 15: regularizers through the optimizer (weight averaging, SAM, gradient noise, plateaus)
from jaxreg.averaging import (  # isort: skip
    EmaState,
    SwagState,
    SwaState,
    averaged_params,
    ema,
    swa,
    swag,
    swag_sample,
)
from jaxreg.early_stopping import PlateauState, ReduceOnPlateau  # isort: skip
from jaxreg.gradient_noise import GradientNoiseState, add_gradient_noise  # isort: skip
from jaxreg.sharpness import sam_gradient  # isort: skip

# isort: split
# issue 16: regularizers on the model
from jaxreg import mixing, noise, spectral
from jaxreg.mixing import cutmix, mixup
from jaxreg.noise import drop_path, dropconnect, gaussian_dropout, gaussian_noise, mc_dropconnect
from jaxreg.spectral import orthogonal, orthogonalize, spectral_norm, spectral_penalty

__version__ = "0.1.0"


__all__ = [
    "add_penalty_grad",
    "benchmark",
    "data",
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
    # issue 13
    "SuccessiveHalving",
    "Shared",
    "stats",
    "Terms",
    "tie",
    "traced_checks",
    "unit_norm",
    "variational",
    # issue 13: optimizer hyperparameters as state leaves (sweep)
    "schedule",
    "SweepableSchedule",
    "SweepableState",
    "sweepable",
    # issue 15
    "add_gradient_noise",
    "averaged_params",
    "ema",
    "EmaState",
    "GradientNoiseState",
    "PlateauState",
    "ReduceOnPlateau",
    "sam_gradient",
    "swa",
    "SwaState",
    "swag",
    "swag_sample",
    "SwagState",
    # issue 16
    "cutmix",
    "dropconnect",
    "drop_path",
    "gaussian_dropout",
    "gaussian_noise",
    "mc_dropconnect",
    "mixing",
    "mixup",
    "noise",
    "orthogonal",
    "orthogonalize",
    "spectral",
    "spectral_norm",
    "spectral_penalty",
]


def __getattr__(name: str):
    # Lazy re-export (PEP 562), issue 11: `import jaxreg` stays free of the benchmark tools.
    if name == "benchmark":
        import importlib

        return importlib.import_module("jaxreg.benchmark")
    raise AttributeError(f"module 'jaxreg' has no attribute {name!r}")
