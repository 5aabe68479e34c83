"""Figures of the experiments: learning curves, sweeps, weight histograms, MC-dropout curves.

Every function draws one PNG with matplotlib's non-interactive ``Agg`` backend, writes it to
``path`` and returns ``path``. Inputs are plain arrays and dicts, so the figures can be redrawn
from a run's ``history.npz`` and ``results.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["curves", "draw_run", "draw_sweep", "mc_dropout", "sweep", "weight_histograms"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def curves(
    path: str,
    step: np.ndarray,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    target: float | None = None,
    best_step: int | None = None,
) -> str:
    """Training and validation loss against steps, one panel per regime (log scale).

    Args:
      path: the PNG to write.
      step: ``(evals,)`` steps of the evaluations.
      series: ``name -> (train_loss, val_loss)``, each ``(evals,)``.
      target: optional target training loss, drawn as a dotted line.
      best_step: optional step of the unregularized model's best validation loss (early stopping).

    Returns:
      ``path``.
    """
    plt = _plt()
    n = len(series)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, (name, (tr, va)) in zip(axes.ravel(), series.items()):
        ax.plot(step, np.maximum(tr, 1e-6), label="train (objective)", color="tab:blue")
        ax.plot(step, va, label="validation", color="tab:orange")
        if target is not None:
            ax.axhline(target, color="gray", linestyle=":", linewidth=1)
        if best_step is not None and name == "none":
            ax.axvline(best_step, color="tab:green", linestyle="--", linewidth=1, label="early stop")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("cross-entropy")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("training and validation loss per regime")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep(
    path: str,
    values: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    baseline: float | None = None,
    xlabel: str = "strength",
    ylabel: str = "accuracy",
    title: str = "",
    log_x: bool = True,
) -> str:
    """A metric against a regularization strength; ``baseline`` is drawn as a dashed line.

    Zero or negative strengths are dropped from a log-scale axis.

    Returns:
      ``path``.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = np.asarray(values, np.float64)
    keep = x > 0 if log_x else np.ones_like(x, bool)
    for name, ys in series.items():
        ys = np.asarray(ys, np.float64)
        ax.plot(x[keep], ys[keep], marker="o", label=name)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="no regularization (val)")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def weight_histograms(path: str, weights: Mapping[str, np.ndarray], *, bins: int = 80) -> str:
    """Histograms of kernel weights per regime (log counts); exact zeros are reported in the title.

    Returns:
      ``path``.
    """
    plt = _plt()
    n = len(weights)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    lim = max(float(np.max(np.abs(w))) for w in weights.values()) or 1.0
    edges = np.linspace(-lim, lim, bins + 1)
    for ax, (name, w) in zip(axes.ravel(), weights.items()):
        w = np.ravel(np.asarray(w))
        ax.hist(w, bins=edges, color="tab:blue", log=True)
        ax.set_title(f"{name}: {np.mean(w == 0.0):.0%} exactly 0", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("kernel weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mc_dropout(
    path: str,
    num_masks: Sequence[int],
    acc: Sequence[float],
    nll: Sequence[float],
    *,
    reference: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """MC-dropout test accuracy and NLL against the number of masks, with reference models.

    Args:
      path: the PNG.
      num_masks: K values.
      acc, nll: test accuracy and negative log-likelihood at each K.
      reference: ``name -> (acc, nll)`` drawn as horizontal lines.

    Returns:
      ``path``.
    """
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    a1.plot(num_masks, acc, marker="o", label="MC-dropout")
    a2.plot(num_masks, nll, marker="o", label="MC-dropout")
    for j, (name, (ra, rn)) in enumerate((reference or {}).items()):
        style = dict(color=f"C{j + 1}", linestyle="--", label=name)
        a1.axhline(ra, **style)
        a2.axhline(rn, **style)
    for ax, label in ((a1, "test accuracy"), (a2, "test NLL")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of dropout masks K")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    a1.legend(fontsize=8)
    fig.suptitle("MC-dropout: how many masks are enough")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _kernels(path: str) -> np.ndarray:
    with np.load(path) as z:
        return np.concatenate([np.ravel(z[k]) for k in z.files if k.endswith("/kernel")])


def draw_run(out_dir: str) -> dict[str, str]:
    """Draws the figures of a ``jaxreg run`` from the files it saved in ``out_dir``.

    Reads ``results.json``, ``history.npz`` and ``params/*.npz``; writes ``curves.png`` (train
    and validation loss per regime), ``l2_sweep.png`` (accuracy vs L2 scale), ``weights.png``
    (kernel histograms) and ``mc_dropout.png`` (accuracy and NLL vs number of masks).

    Returns:
      ``name -> path`` of the figures written.
    """
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    names = res["figures"]
    rows = {r["regime"]: r for r in res["regimes"]}
    sweep_rows = [r for r in res["regimes"] if r["kind"] == "sweep"]
    with np.load(os.path.join(out_dir, "history.npz")) as h:
        members = [str(m) for m in h["members"]]
        step, train_loss, val_loss = h["step"], h["train_loss"], h["val_loss"]
    shown = ["none", "l2", "weight_decay", "l1", "elastic_net", "max_norm", "dropout", "sigmoid", "sigmoid_l2"]
    out = {}
    out["curves"] = curves(
        os.path.join(out_dir, names["curves"]),
        step,
        {n: (train_loss[members.index(n)], val_loss[members.index(n)]) for n in shown if n in members},
        target=res["settings"]["target_loss"],
        best_step=rows["early_stopping"]["best_step"],
    )
    out["l2_sweep"] = sweep(
        os.path.join(out_dir, names["l2_sweep"]),
        [r["hyper"]["l2"] for r in sweep_rows],
        {"validation": [r["val_acc"] for r in sweep_rows], "test": [r["test_acc"] for r in sweep_rows]},
        baseline=rows["none"]["val_acc"],
        xlabel="L2 scale (coupled, in the loss)",
        title=f"{res['data']['name']}: accuracy vs L2 scale",
    )
    out["weights"] = weight_histograms(
        os.path.join(out_dir, names["weights"]),
        {
            n: _kernels(os.path.join(out_dir, rows[n]["params_file"]))
            for n in ["none", "l2", "weight_decay", "l1", "max_norm", "dropout"]
        },
    )
    curve = res["mc_dropout_curve"]
    out["mc_dropout"] = mc_dropout(
        os.path.join(out_dir, names["mc_dropout"]),
        curve["num_masks"],
        curve["test_acc"],
        curve["test_nll"],
        reference={
            "dropout, weight scaling": (rows["dropout"]["test_acc"], rows["dropout"]["test_nll"]),
            "none": (rows["none"]["test_acc"], rows["none"]["test_nll"]),
            "bagging": (rows["bagging"]["test_acc"], rows["bagging"]["test_nll"]),
        },
    )
    return out


def draw_sweep(out_dir: str) -> str:
    """Draws ``sweep.png`` (validation and test accuracy vs strength) from ``sweep.json``."""
    with open(os.path.join(out_dir, "sweep.json")) as f:
        res = json.load(f)
    rows = res["rows"]
    return sweep(
        os.path.join(out_dir, "sweep.png"),
        res["values"],
        {"validation": [r["val_acc"] for r in rows[1:]], "test": [r["test_acc"] for r in rows[1:]]},
        baseline=rows[0]["val_acc"],
        xlabel=res["label"],
        title=f"{res['data']['name']}: accuracy vs {res['regularizer']}",
        log_x=min(res["values"]) > 0,
    )
