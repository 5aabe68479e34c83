"""jaxreg: regularization for JAX, as pure functions that compose with optax.

This module only re-exports; see README "Layout" for what lives where. ``jr.benchmark`` (timing
tools) and ``jr.plots`` (figures) load on first attribute access, so ``import jaxreg`` stays free
of them.
"""

# Grouped by concern, not alphabetically.
# ruff: noqa: I001

from jaxreg import data, ensemble, es, masks, mixing, noise, spectral, stats, variational

# Penalties, constraints and their optax bridges
from jaxreg.penalties import Penalty, elastic_net, group_lasso, l1, l2, tie
from jaxreg.constraints import max_norm, non_negative, unit_norm
from jaxreg.spectral import orthogonal, orthogonalize, spectral_norm, spectral_penalty
from jaxreg.loss import Terms, regularize
from jaxreg.transforms import add_penalty_grad, project, proximal, proximal_adam
from jaxreg.sharing import Share, Shared

# Noise on activations, weights and inputs
from jaxreg.dropout import dropout, mc_dropout, mc_dropout_samples
from jaxreg.noise import drop_path, dropconnect, gaussian_dropout, gaussian_noise, mc_dropconnect
from jaxreg.mixing import cutmix, mixup
from jaxreg.variational import kl_normal

# Through the optimizer: swept hyperparameters, weight averaging, SAM, gradient noise
from jaxreg.hyperparams import SweepableSchedule, SweepableState, schedule, sweepable
from jaxreg.averaging import EmaState, SwaState, SwagState, averaged_params, ema, swa, swag, swag_sample
from jaxreg.sharpness import sam_gradient
from jaxreg.gradient_noise import GradientNoiseState, add_gradient_noise

# Stopping, plateaus, pruning and the training loop
from jaxreg.early_stopping import (
    EarlyStopping,
    EarlyStoppingState,
    PlateauState,
    ReduceOnPlateau,
    freeze_stopped,
    retrain_budget,
)
from jaxreg.pruning import SuccessiveHalving
from jaxreg.training import FitResult, History, fit, retrain

# Predictions and their uncertainty
from jaxreg.uncertainty import (
    Prediction,
    expected_calibration_error,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    predictive_probs,
)

# Argument checks
from jaxreg._checks import traced_checks

__version__ = "0.2.0"

__all__ = [
    # submodules
    "benchmark",
    "data",
    "ensemble",
    "es",
    "masks",
    "mixing",
    "noise",
    "plots",
    "spectral",
    "stats",
    "variational",
    # penalties, constraints and their optax bridges
    "Penalty",
    "elastic_net",
    "group_lasso",
    "l1",
    "l2",
    "tie",
    "max_norm",
    "non_negative",
    "unit_norm",
    "orthogonal",
    "orthogonalize",
    "spectral_norm",
    "spectral_penalty",
    "Terms",
    "regularize",
    "add_penalty_grad",
    "project",
    "proximal",
    "proximal_adam",
    "Share",
    "Shared",
    # noise on activations, weights and inputs
    "dropout",
    "mc_dropout",
    "mc_dropout_samples",
    "drop_path",
    "dropconnect",
    "gaussian_dropout",
    "gaussian_noise",
    "mc_dropconnect",
    "cutmix",
    "mixup",
    "kl_normal",
    # through the optimizer: swept hyperparameters, weight averaging, sam, gradient noise
    "SweepableSchedule",
    "SweepableState",
    "schedule",
    "sweepable",
    "EmaState",
    "SwaState",
    "SwagState",
    "averaged_params",
    "ema",
    "swa",
    "swag",
    "swag_sample",
    "sam_gradient",
    "GradientNoiseState",
    "add_gradient_noise",
    # stopping, plateaus, pruning and the training loop
    "EarlyStopping",
    "EarlyStoppingState",
    "PlateauState",
    "ReduceOnPlateau",
    "freeze_stopped",
    "retrain_budget",
    "SuccessiveHalving",
    "FitResult",
    "History",
    "fit",
    "retrain",
    # predictions and their uncertainty
    "Prediction",
    "expected_calibration_error",
    "expected_entropy",
    "mutual_information",
    "predictive_entropy",
    "predictive_probs",
    # argument checks
    "traced_checks",
]


def __getattr__(name: str):
    # PEP 562: the benchmark tools and the figures load on first access, not with the package.
    if name in ("benchmark", "plots"):
        import importlib

        return importlib.import_module(f"jaxreg.{name}")
    raise AttributeError(f"module 'jaxreg' has no attribute {name!r}")
