"""jaxreg: regularization for JAX, as pure functions that compose with optax."""

from jaxreg import masks
from jaxreg.constraints import max_norm, non_negative, unit_norm
from jaxreg.loss import Terms, regularize
from jaxreg.penalties import Penalty, elastic_net, group_lasso, l1, l2, tie
from jaxreg.sharing import Share, Shared
from jaxreg.transforms import add_penalty_grad, project, proximal, proximal_adam

# [issue 3: dropout, uncertainty, ensemble]
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
    # [__all__ issue 3]
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
