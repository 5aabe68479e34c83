"""``jaxreg sweep``: one regularizer or optimizer hyperparameter over a range, as one vmapped program.

Each value is a member whose leaf holds it (times ``replicates`` members with different
initializations), plus one baseline member (no regularization, the run's learning rate, Adam's
default ``b1``); all of them train together through :func:`jaxreg.experiments.regimes.train`.
The optimizer hyperparameters are leaves like the penalty scales: ``--reg lr`` sets each
member's learning rate (a leaf of its training state, read by ``optax.scale_by_learning_rate``
and the proximal step), ``--reg b1`` Adam's first-moment decay (``jr.sweepable(
optax.scale_by_adam)(b1=...)``, a leaf of the optimizer state), ``--reg wd`` the decoupled
weight decay; a new value is new data, never a new program.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jaxreg import data as jdata
from jaxreg import stats as jstats
from jaxreg.experiments import files, report
from jaxreg.experiments import regimes as R

__all__ = ["DEFAULTS", "QUICK", "RANGES", "REGULARIZERS", "check_values", "strengths", "sweep"]

REGULARIZERS = {
    "l2": ("l2", "coupled L2 scale (in the loss)"),
    "wd": ("wd", "decoupled weight decay (AdamW-style)"),
    "l1": ("l1", "L1 scale (proximal step)"),
    "max_norm": ("max_norm", "max-norm bound per unit"),
    "dropout": ("dropout", "dropout rate of hidden units"),
    "lr": ("lr", "learning rate (Adam)"),
    "b1": ("b1", "Adam's b1 (first-moment decay)"),
}
"""``--reg`` choices: the :class:`~jaxreg.experiments.regimes.Member` field each one sets, its label."""

RANGES = {
    "l2": (1e-5, 1e-1, False),
    "wd": (0.1, 10.0, False),
    "l1": (0.01, 1.0, False),
    "max_norm": (0.25, 4.0, False),
    "dropout": (0.0, 0.8, True),
    "lr": (1e-4, 1e-2, False),
    "b1": (0.5, 0.99, True),
}
"""Default ``(min, max, linear)`` of each regularizer's strengths."""

DEFAULTS = {"steps": 600, "hidden": 256, "num": 8, "eval_every": 20}
QUICK = {"steps": 200, "hidden": 128, "num": 4, "eval_every": 10}
"""The sweep's settings without and with ``--quick``."""


def strengths(low: float, high: float, num: int, *, log: bool = True) -> list[float]:
    """``num`` strengths from ``low`` to ``high``, log- or evenly spaced.

    Raises:
      ValueError: if ``num < 1``, ``low > high``, ``num == 1`` with ``low != high`` (one value has
        no range), ``num > 1`` with ``low == high`` (the same value trained ``num`` times, under
        one row name: replicates are ``--members``), or a log range does not start above 0.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got num = {num}.")
    if num == 1 and low != high:
        raise ValueError(f"num = 1 takes one value, got min = {low}, max = {high}; give them equal.")
    if num > 1 and low == high:
        raise ValueError(
            f"num = {num} values from min = max = {low} are one value {num} times; give a range, or --num 1 "
            f"(and --members for replicates)."
        )
    if low > high:
        raise ValueError(f"the range must have min <= max, got min = {low}, max = {high}.")
    if log and low <= 0:
        raise ValueError(f"a log-spaced range needs min > 0, got min = {low}; pass --linear for a range from 0.")
    values = np.geomspace(low, high, num) if log else np.linspace(low, high, num)
    return [float(v) for v in values]


def value_names(reg: str, values: list[float]) -> list[str]:
    """The rows' names, ``reg=value`` with 3 significant digits, or as many more as tell the values apart."""
    for digits in range(3, 18):
        names = [f"{reg}={v:.{digits}g}" for v in values]
        if len(set(names)) == len(set(values)):
            return names
    return [f"{reg}={v!r}" for v in values]


def _plural(count: int, what: str) -> str:
    return f"{count} {what}{'s' if count != 1 else ''}"


def check_values(reg: str, values: list[float]) -> None:
    """Raises ``ValueError`` naming ``reg`` and the first value outside its domain.

    Each value is checked as it trains: rounded to float32 (0.99999999 is a b1 or dropout rate
    of 1 there, 1e39 an infinite scale, 1e-50 a learning rate of 0).
    """
    for given in values:
        with np.errstate(over="ignore"):  # 1e39 becomes inf: said below
            v = float(np.float32(given)) if np.isfinite(given) else given
        if np.isfinite(given) and v != given and (v in (0.0, 1.0) or not np.isfinite(v)):
            raise ValueError(f"{reg} value {given} is {v} in float32, which the sweep trains in.")
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{reg} strengths must be finite and >= 0, got {given}.")
        if reg == "max_norm" and v <= 0:
            raise ValueError(f"max_norm bounds must be > 0, got {given}.")
        if reg == "dropout" and v >= 1:
            raise ValueError(f"dropout rates must be in [0, 1), got {given}.")
        if reg == "lr" and v <= 0:
            raise ValueError(f"learning rates (lr) must be > 0, got {given}.")
        if reg == "b1" and v >= 1:
            raise ValueError(f"Adam's b1 values must be in [0, 1), got {given}.")


def sweep(
    reg: str,
    values: list[float],
    split: jdata.Split,
    out_dir: str,
    *,
    seed: int = 0,
    steps: int = 600,
    hidden: int = 256,
    replicates: int = 1,
    eval_every: int = 20,
    learning_rate: float = 1e-3,
    progress: bool = True,
    echo: Any = print,
    log_spaced: bool | None = None,
) -> dict[str, Any]:
    """Trains ``len(values) * replicates + 1`` members as one program and writes the results.

    Args:
      reg: a key of :data:`REGULARIZERS` (``"lr"``, ``"b1"``: optimizer hyperparameters).
      values: the values swept, in their domain (``lr > 0``, ``b1`` in ``[0, 1)``, rates in
        ``[0, 1)``, scales ``>= 0``).
      learning_rate: every member's learning rate but an ``lr`` sweep's swept members (the
        baseline's too).
      log_spaced: how ``values`` were spaced (:func:`strengths`' ``log``), recorded as
        ``spacing`` for the figure's x axis; ``None``: not known (log for positive values).

    Returns:
      The results written to ``sweep.json`` (``rows``: the baseline first, then one per value).

    Raises:
      ValueError: naming ``reg`` or the first value outside its domain, before anything is
        compiled.
    """
    if reg not in REGULARIZERS:
        raise ValueError(f"unknown regularizer, got reg = {reg!r}; choose one of {', '.join(REGULARIZERS)}.")
    check_values(reg, values)
    field, label = REGULARIZERS[reg]
    os.makedirs(out_dir, exist_ok=True)
    members = [R.Member("none", init=r) for r in range(replicates)]
    for name, v in zip(value_names(reg, values), values):
        members += [R.Member(name, init=r, **{field: v}) for r in range(replicates)]
    config = R.Config(hidden=(hidden, hidden), learning_rate=learning_rate, steps=steps, eval_every=eval_every)
    hyper = R.stack_hypers(members, seed, len(split.y_train))
    echo(
        f"jaxreg sweep: {label} over {_plural(len(values), 'value')} x {_plural(replicates, 'replicate')} + baseline = "
        f"{len(members)} members, {R.num_steps_for(config)} steps, one vmapped program"
    )
    arrays = {"x_train": split.x_train, "y_train": split.y_train, "x_val": split.x_val, "y_val": split.y_val}
    trained = R.train(config, hyper, arrays, split.num_classes, seed=seed, progress=progress, echo=echo)
    sig = np.asarray(hyper.sigmoid)
    probs = {
        "train": (R.member_probs(trained.final, sig, split.x_train), split.y_train),
        "val": (R.member_probs(trained.final, sig, split.x_val), split.y_val),
        "test": (R.member_probs(trained.final, sig, split.x_test), split.y_test),
    }
    per_member = []
    for i in range(len(members)):
        m = {k: R.classification_metrics(p[i], y, ece=False) for k, (p, y) in probs.items()}
        stats = R.weight_stats({k: {n: np.asarray(a[i]) for n, a in d.items()} for k, d in trained.final.items()})
        per_member.append(
            {
                "train_loss": m["train"]["loss"],
                "val_loss": m["val"]["loss"],
                "val_acc": m["val"]["acc"],
                "test_acc": m["test"]["acc"],
                "test_nll": m["test"]["loss"],
                "gap": m["val"]["loss"] - m["train"]["loss"],
                **stats,
            }
        )
    rows = []
    groups = [("none", None), *zip(value_names(reg, values), values)]
    for g, (name, v) in enumerate(groups):
        chunk = per_member[g * replicates : (g + 1) * replicates]
        row = {"name": name, "strength": v}
        for key in chunk[0]:
            row[key] = float(np.mean([c[key] for c in chunk]))
        # test accuracy over the replicates with its 95% Student t interval, as jaxreg run's measures
        # (one replicate: the mean alone, no interval claimed)
        accs = [float(c["test_acc"]) for c in chunk]
        interval = jstats.mean_interval(accs) if len(accs) > 1 else None
        row["test_acc_lo"] = None if interval is None else float(interval.lo)
        row["test_acc_hi"] = None if interval is None else float(interval.hi)
        row["measures"] = {
            "test_acc": {"mean": row["test_acc"], "lo": row["test_acc_lo"], "hi": row["test_acc_hi"], "values": accs}
        }
        rows.append(row)
    results = {
        "regularizer": reg,
        "label": label,
        "values": values,
        "spacing": None if log_spaced is None else ("log" if log_spaced else "linear"),
        "replicates": replicates,
        "seed": seed,
        "num_steps": trained.num_steps,
        # what fixes the numbers besides the values: --quick and --hidden change these
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "optimizer": f"optax.scale_by_adam (b1 = {R.ADAM_B1} unless swept) then the learning rate, full batch",
        "model": {"sizes": [split.num_features, hidden, hidden, split.num_classes]},
        "data": {"name": split.name, **split.sizes()},
        "rows": rows,
        "train_program_s": trained.wall_s,
    }
    files.write_json(os.path.join(out_dir, "sweep.json"), results)
    keys = ["name", "strength", *(c[0] for c in report.SWEEP_COLUMNS[1:]), "test_acc_lo", "test_acc_hi"]
    files.write_csv(os.path.join(out_dir, "sweep.csv"), rows, keys)
    return results
