"""Figures of the experiments: learning curves, sweeps, weight histograms, MC-dropout curves.

Every function draws one PNG on its own ``matplotlib.figure.Figure`` with the Agg canvas
(``FigureCanvasAgg``), writes it to ``path`` and returns ``path``: no pyplot state, and the
process's matplotlib backend (a notebook's, say) is left as it is. Inputs are plain arrays and
dicts, so the figures can be redrawn from a run's ``history.npz`` and ``results.json``; what to
draw (regimes, labels, baselines) comes from those files, not from names written here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["curves", "draw_run", "draw_sweep", "mc_dropout", "sweep", "weight_histograms"]


def _figure(figsize: tuple[float, float]) -> Any:
    """A figure on the Agg canvas, outside pyplot (nothing global is touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _grid(fig: Any, n: int, **kwargs: Any) -> tuple[np.ndarray, int]:
    cols = min(3, n)
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return axes, cols


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def curves(
    path: str,
    step: np.ndarray,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    target: float | None = None,
    stops: Mapping[str, int] | None = None,
) -> str:
    """Training and validation loss against steps, one panel per regime (log scale).

    Args:
      path: the PNG to write.
      step: ``(evals,)`` steps of the evaluations.
      series: ``label -> (train_loss, val_loss)``, each ``(evals,)``.
      target: optional target training loss, drawn as a labelled dotted line in every panel.
      stops: optional ``label -> step`` of an early-stopping snapshot, drawn as a dashed line.

    Returns:
      ``path``.
    """
    n = len(series)
    fig = _figure((4.2 * min(3, n), 3.0 * math.ceil(n / 3)))
    axes, _ = _grid(fig, n, sharex=True, sharey=True)
    for ax, (name, (tr, va)) in zip(axes.ravel(), series.items()):
        ax.plot(step, np.maximum(tr, 1e-6), label="train (objective's data term)", color="tab:blue")
        ax.plot(step, va, label="validation", color="tab:orange")
        if target is not None:
            ax.axhline(target, color="gray", linestyle=":", linewidth=1, label=f"target train loss {target:g}")
        if stops and name in stops:
            ax.axvline(stops[name], color="tab:green", linestyle="--", linewidth=1, label="early-stopping snapshot")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("training and validation loss per regime")
    return _save(fig, path)


def sweep(
    path: str,
    values: Sequence[float],
    panels: Sequence[tuple[str, Mapping[str, Sequence[float]]]],
    *,
    baselines: Mapping[str, float] | None = None,
    xlabel: str = "strength",
    title: str = "",
    log_x: bool = True,
) -> str:
    """Metrics against a regularization strength, one panel per ``(ylabel, {name: values})``.

    ``baselines`` maps a panel's ylabel to a dashed horizontal line (the unregularized model).
    Zero or negative strengths are dropped from a log-scale axis.

    Returns:
      ``path``.
    """
    fig = _figure((5.5 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    x = np.asarray(values, np.float64)
    keep = x > 0 if log_x else np.ones_like(x, bool)
    for ax, (ylabel, series) in zip(axes, panels):
        for name, ys in series.items():
            ax.plot(x[keep], np.asarray(ys, np.float64)[keep], marker="o", label=name)
        if baselines and ylabel in baselines:
            ax.axhline(baselines[ylabel], color="gray", linestyle="--", label="no regularization")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def weight_histograms(path: str, weights: Mapping[str, np.ndarray], *, bins: int = 80) -> str:
    """Histograms of kernel weights per regime (log counts); exact zeros are reported in the title.

    Returns:
      ``path``.
    """
    n = len(weights)
    fig = _figure((4.2 * min(3, n), 2.9 * math.ceil(n / 3)))
    axes, _ = _grid(fig, n)
    lim = max(float(np.max(np.abs(w))) for w in weights.values()) or 1.0
    edges = np.linspace(-lim, lim, bins + 1)
    for ax, (name, w) in zip(axes.ravel(), weights.items()):
        w = np.ravel(np.asarray(w))
        ax.hist(w, bins=edges, color="tab:blue", log=True)
        ax.set_title(f"{name}: {np.mean(w == 0.0):.1%} exactly 0", fontsize=10)
        ax.set_xlabel("kernel weight")
        ax.set_ylabel("count (log)")
        ax.grid(alpha=0.3)
    fig.suptitle("kernel weights")
    return _save(fig, path)


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
    fig = _figure((9.5, 3.6))
    a1, a2 = fig.subplots(1, 2)
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
        ax.legend(fontsize=8)
    fig.suptitle("MC-dropout: how many masks are enough")
    return _save(fig, path)


def _kernels(path: str) -> np.ndarray:
    """All kernel entries of the params saved (msgpack, flax.serialization) at ``path``."""
    import flax.serialization

    with open(path, "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    return np.concatenate([np.ravel(layer["kernel"]) for layer in params.values()])


def draw_run(out_dir: str) -> dict[str, str]:
    """Draws the figures of a ``jaxreg run`` from the files it saved in ``out_dir``.

    Reads ``results.json``, ``history.npz`` and ``params/*``; writes the figures named in
    ``results["figures"]``: ``curves`` (train and validation loss of every regime that is not a
    sweep point, averaged over its members), ``l2_sweep`` (accuracy vs the sweep's L2 scale),
    ``weights`` (kernel histograms of every regime) and ``mc_dropout`` (accuracy and NLL vs number
    of masks, with the reference regimes the results name).

    Returns:
      ``name -> path`` of the figures written.
    """
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    names = res["figures"]
    rows = {r["regime"]: r for r in res["regimes"]}
    main = [r for r in res["regimes"] if r["kind"] != "sweep"]
    sweep_rows = [r for r in res["regimes"] if r["kind"] == "sweep"]
    baseline = rows[res["baseline"]]
    with np.load(os.path.join(out_dir, "history.npz")) as h:
        members = [str(m) for m in h["members"]]
        step, train_loss, val_loss = h["step"], h["train_loss"], h["val_loss"]

    def mean_curve(curves: np.ndarray, row: dict[str, Any]) -> np.ndarray:
        return np.mean(curves[[members.index(m) for m in row["members"]]], axis=0)

    out = {}
    out["curves"] = curves(
        os.path.join(out_dir, names["curves"]),
        step,
        {r["label"]: (mean_curve(train_loss, r), mean_curve(val_loss, r)) for r in main},
        target=res["settings"]["target_loss"],
        stops={r["label"]: r["best_step"] for r in main if r["best_step"] is not None},
    )
    out["l2_sweep"] = sweep(
        os.path.join(out_dir, names["l2_sweep"]),
        [r["hyper"]["l2"] for r in sweep_rows],
        [("accuracy", {"validation": [r["val_acc"] for r in sweep_rows], "test": [r["test_acc"] for r in sweep_rows]})],
        baselines={"accuracy": baseline["val_acc"]},
        xlabel="L2 scale (coupled, in the loss)",
        title=f"{res['data']['name']}: accuracy vs L2 scale",
    )
    out["weights"] = weight_histograms(
        os.path.join(out_dir, names["weights"]),
        {r["label"]: _kernels(os.path.join(out_dir, r["params_file"])) for r in main},
    )
    curve = res["mc_dropout_curve"]
    out["mc_dropout"] = mc_dropout(
        os.path.join(out_dir, names["mc_dropout"]),
        curve["num_masks"],
        curve["test_acc"],
        curve["test_nll"],
        reference={rows[n]["label"]: (rows[n]["test_acc"], rows[n]["test_nll"]) for n in curve["reference"]},
    )
    return out


def draw_sweep(out_dir: str) -> str:
    """Draws ``sweep.png`` from ``sweep.json``: accuracy vs strength, and (when any strength
    gives exact zeros, as L1 does) the fraction of kernel weights exactly 0 beside it."""
    with open(os.path.join(out_dir, "sweep.json")) as f:
        res = json.load(f)
    base, rows = res["rows"][0], res["rows"][1:]
    panels = [("accuracy", {"validation": [r["val_acc"] for r in rows], "test": [r["test_acc"] for r in rows]})]
    if any(r["zero_frac"] > 0 for r in rows):
        panels.append(("fraction of kernel weights exactly 0", {"zeros": [r["zero_frac"] for r in rows]}))
    return sweep(
        os.path.join(out_dir, "sweep.png"),
        res["values"],
        panels,
        baselines={"accuracy": base["val_acc"], "fraction of kernel weights exactly 0": base["zero_frac"]},
        xlabel=res["label"],
        title=f"{res['data']['name']}: {res['regularizer']} sweep",
        log_x=min(res["values"]) > 0,
    )
