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
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "band",
    "curves",
    "draw_run",
    "draw_sweep",
    "es_minima",
    "mc_dropout",
    "overlay",
    "sweep",
    "weight_histograms",
]


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


def _save(fig: Any, path: str, *, grid: tuple[int, int] | None = None) -> str:
    """Writes the PNG. A ``grid`` of ``(rows, cols)`` panels gets fixed margins (matplotlib's
    tight layout measures every label of every panel: seconds for a 4 x 3 grid on a shared CPU)."""
    if grid is None:
        fig.tight_layout()
    else:
        w, h = fig.get_size_inches()
        fig.subplots_adjust(left=0.8 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.85 / h, wspace=0.3, hspace=0.6)
    fig.savefig(path, dpi=110)
    return path


def band(values: Any, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-interval bounds over ``axis`` (the seeds) of ``values``; with one seed the
    bounds are the mean (no band is drawn). A 1-D ``values`` is one seed's curve (one value per
    x, not seeds): it is returned as the mean and both bounds."""
    from jaxreg import stats

    v = np.asarray(values, np.float64)
    if v.ndim == 1 or v.shape[axis] < 2:
        m = v if v.ndim == 1 else np.mean(v, axis=axis)
        return m, m, m
    iv = stats.mean_interval(v, axis=axis)
    return np.asarray(iv.mean), np.asarray(iv.lo), np.asarray(iv.hi)


def _line_band(ax: Any, x: Any, values: Any, *, floor: float | None = None, **style: Any) -> None:
    """A line at the mean over seeds (rows of ``values``) and a shaded 95% band around it.

    With ``floor`` (a log axis) the band's lower edge is clipped at the smallest seed's value (a
    t interval of a positive quantity may reach below 0, which a log axis cannot show) and at
    ``floor``.
    """
    mean, lo, hi = band(values)
    if floor is not None:
        v = np.asarray(values, np.float64)
        lo = np.maximum(lo, v.min(axis=0) if v.ndim == 2 else v)
        mean, lo, hi = (np.maximum(a, floor) for a in (mean, lo, hi))
    (line,) = ax.plot(x, mean, **style)
    if np.any(hi > lo):
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)


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
      series: ``label -> (train_loss, val_loss)``, each ``(evals,)`` or ``(seeds, evals)``: with
        seeds, the mean is drawn with its 95% t band.
      target: optional target training loss, drawn as a labelled dotted line in every panel.
      stops: optional ``label -> step`` of an early-stopping snapshot, drawn as a dashed line.

    Returns:
      ``path``.
    """
    n = len(series)
    fig = _figure((4.2 * min(3, n), 3.0 * math.ceil(n / 3)))
    axes, _ = _grid(fig, n, sharex=True, sharey=True)
    for ax, (name, (tr, va)) in zip(axes.ravel(), series.items()):
        _line_band(ax, step, tr, floor=1e-6, label="train (objective's data term)", color="tab:blue")
        _line_band(ax, step, va, floor=1e-6, label="validation", color="tab:orange")
        if target is not None:
            ax.axhline(target, color="gray", linestyle=":", linewidth=1, label=f"target train loss {target:g}")
        if stops and name in stops:
            ax.axvline(stops[name], color="tab:green", linestyle="--", linewidth=1, label="early-stopping snapshot")
        ax.set_yscale("log")
        ax.minorticks_off()
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("training and validation loss per regime (mean over seeds, 95% band)")
    return _save(fig, path, grid=(math.ceil(n / 3), min(3, n)))


def overlay(
    path: str,
    step: np.ndarray,
    series: Mapping[str, np.ndarray],
    *,
    ylabel: str = "validation loss (cross-entropy)",
    title: str = "validation loss of every regime",
    log_y: bool = True,
) -> str:
    """Every regime's curve in ONE panel: ``label -> (seeds, evals)`` as mean and 95% t band.

    Returns:
      ``path``.
    """
    fig = _figure((8.0, 5.0))
    ax = fig.subplots()
    for j, (name, values) in enumerate(series.items()):
        style = dict(label=name, color=f"C{j % 10}", linestyle="-" if j < 10 else "--")
        _line_band(ax, step, values, floor=1e-6 if log_y else None, **style)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def es_minima(path: str, result: Mapping[str, Any]) -> str:
    """ES vs gradient descent: final loss per method (mean, 95% t interval, every seed as a dot)
    and the fraction of seeds that ended in the global minimum's basin.

    Returns:
      ``path``.
    """
    fig = _figure((10.0, 3.8))
    a1, a2 = fig.subplots(1, 2)
    names = list(result["methods"])
    x = np.arange(len(names))
    for j, name in enumerate(names):
        fl = result["methods"][name]["final_loss"]
        vals = np.asarray(fl["values"], np.float64)
        jitter = (np.arange(len(vals)) / max(len(vals) - 1, 1) - 0.5) * 0.3
        a1.scatter(j + jitter, vals, s=8, color=f"C{j}", alpha=0.5, label="one seed" if j == 0 else None)
        a1.errorbar(
            [j],
            [fl["mean"]],
            yerr=[[fl["mean"] - fl["lo"]], [fl["hi"] - fl["mean"]]],
            fmt="o",
            color="black",
            capsize=4,
            label="mean, 95% t interval" if j == 0 else None,
        )
    start = result["start_loss"]["mean"]
    a1.axhline(start, color="gray", linestyle=":", label=f"mean start loss {start:.1f}")
    a1.set_xticks(x, names, fontsize=8)
    a1.set_ylabel("final Rastrigin loss")
    a1.set_xlabel("method (equal loss evaluations)")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    a2.bar(x, [result["methods"][n]["global_basin"] for n in names], color=[f"C{j}" for j in range(len(names))])
    a2.set_xticks(x, names, fontsize=8)
    a2.set_ylim(0, 1)
    a2.set_ylabel("fraction of seeds in the global basin")
    a2.set_xlabel("method")
    a2.grid(alpha=0.3)
    cfg = result["config"]
    fig.suptitle(f"ES vs gradient descent on Rastrigin (d = {cfg['dim']}, {cfg['seeds']} seeds)")
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
    A series given as ``(means, lo, hi)`` is drawn with error bars (its 95% interval over seeds).
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
            if isinstance(ys, tuple):
                mean, lo, hi = (np.asarray(v, np.float64)[keep] for v in ys)
                ax.errorbar(x[keep], mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label=name)
                continue
            ax.plot(x[keep], np.asarray(ys, np.float64)[keep], marker="o", label=name)
        if baselines and ylabel in baselines:
            ax.axhline(baselines[ylabel], color="gray", linestyle="--", label="no regularization")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[0]) > 1:
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
        counts, _ = np.histogram(w, bins=edges)
        ax.stairs(counts, edges, fill=True, color="tab:blue")  # one artist, not one bar per bin
        ax.set_yscale("log")
        ax.minorticks_off()
        ax.set_title(f"{name}: {np.mean(w == 0.0):.1%} exactly 0", fontsize=10)
        ax.set_xlabel("kernel weight")
        ax.set_ylabel("count (log)")
        ax.grid(alpha=0.3)
    fig.suptitle("kernel weights")
    return _save(fig, path, grid=(math.ceil(n / 3), min(3, n)))


def mc_dropout(
    path: str,
    num_masks: Sequence[int],
    acc: Any,
    nll: Any,
    *,
    reference: Mapping[str, tuple[Any, Any]] | None = None,
) -> str:
    """MC-dropout test accuracy and NLL against the number of masks, with reference models.

    Args:
      path: the PNG.
      num_masks: K values.
      acc, nll: test accuracy and negative log-likelihood at each K: ``(K,)``, or ``(seeds, K)``
        drawn as the mean with error bars (95% t interval).
      reference: ``name -> (acc, nll)`` drawn as horizontal lines; each a number or ``(seeds,)``
        values, drawn as the mean with a shaded 95% band.

    Returns:
      ``path``.
    """
    fig = _figure((9.5, 3.6))
    a1, a2 = fig.subplots(1, 2)
    for ax, ys in ((a1, acc), (a2, nll)):
        mean, lo, hi = band(ys)
        ax.errorbar(num_masks, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label="MC-dropout")
    for j, (name, (ra, rn)) in enumerate((reference or {}).items()):
        style = dict(color=f"C{j + 1}", linestyle="--", label=name)
        for ax, v in ((a1, ra), (a2, rn)):
            m, lo, hi = (float(np.mean(b)) for b in band(np.atleast_1d(np.asarray(v, np.float64))[:, None]))
            ax.axhline(m, **style)
            if hi > lo:
                ax.axhspan(lo, hi, color=style["color"], alpha=0.12, linewidth=0)
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


def _seed_of(name: str) -> int:
    """The seed of a history member name ``"<member>#<seed>"`` (0 without a suffix)."""
    _, sep, r = name.rpartition("#")
    return int(r) if sep and r.isdigit() else 0


def draw_run(out_dir: str, only: Collection[str] | None = None) -> dict[str, str]:
    """Draws the figures of a ``jaxreg run`` from the files it saved in ``out_dir``.

    Reads ``results.json``, ``history.npz`` and ``params/*``; writes the figures named in
    ``results["figures"]``: ``curves`` (train and validation loss of every regime that is not a
    sweep point, per seed averaged over its members, then the mean over seeds with a 95% band;
    an ensemble's curve is labelled as its members' own curves, since its table row reports the
    averaged prediction),
    ``val_overlay`` (every such regime's validation loss in one panel, with bands),
    ``l2_sweep`` (accuracy vs the sweep's L2 scale, with error bars), ``weights`` (kernel
    histograms of every regime, all seeds pooled), ``mc_dropout`` (accuracy and NLL vs number of
    masks, with the reference regimes the results name) and ``es_minima`` (ES vs gradient
    descent, when the results hold it).

    Args:
      out_dir: the run's output folder.
      only: optional names of the figures to draw (default: all of them).

    Returns:
      ``name -> path`` of the figures written.
    """
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    names = {k: v for k, v in res["figures"].items() if only is None or k in only}
    rows = {r["regime"]: r for r in res["regimes"]}
    main = [r for r in res["regimes"] if r["kind"] not in ("sweep", "grid")]
    sweep_rows = [r for r in res["regimes"] if r["kind"] == "sweep"]
    baseline = rows[res["baseline"]]
    with np.load(os.path.join(out_dir, "history.npz")) as h:
        members = [str(m) for m in h["members"]]
        step, train_loss, val_loss = h["step"], h["train_loss"], h["val_loss"]

    def seed_curves(curves: np.ndarray, row: dict[str, Any]) -> np.ndarray:
        """``(seeds, evals)``: per seed, the mean curve of the row's members under that seed."""
        by_seed: dict[int, list[int]] = {}
        for m in row["members"]:
            by_seed.setdefault(_seed_of(m), []).append(members.index(m))
        return np.stack([np.mean(curves[by_seed[r]], axis=0) for r in sorted(by_seed)])

    def curve_label(row: dict[str, Any]) -> str:
        """The regime's label; an ensemble's curve is its members' own losses averaged, not the
        loss of the ensemble's averaged prediction (what its table row reports), so it says so."""
        per_seed = len(row["members"]) / max(1, len({_seed_of(m) for m in row["members"]}))
        return f"{row['label']}: its members' own curves" if per_seed > 1 else row["label"]

    def measure(row: dict[str, Any], key: str) -> Any:
        m = row.get("measures", {}).get(key)
        if m is None:
            return row[key]
        return m["values"]

    out = {}
    if "curves" in names:
        out["curves"] = curves(
            os.path.join(out_dir, names["curves"]),
            step,
            {curve_label(r): (seed_curves(train_loss, r), seed_curves(val_loss, r)) for r in main},
            target=res["settings"]["target_loss"],
            stops={curve_label(r): r["best_step"] for r in main if r["best_step"] is not None},
        )
    if "val_overlay" in names:
        seen, series = set(), {}
        for r in main:  # regimes read off the same members (early stopping, MC-dropout) add no curve
            key = tuple(r["members"])
            if key not in seen:
                seen.add(key)
                series[curve_label(r)] = seed_curves(val_loss, r)
        out["val_overlay"] = overlay(
            os.path.join(out_dir, names["val_overlay"]),
            step,
            series,
            title=f"validation loss of every regime (mean over {res.get('seeds', 1)} seeds, 95% t band)",
        )

    def bars(key: str) -> tuple[list[float], list[float], list[float]]:
        ms = [r.get("measures", {}).get(key) or {"mean": r[key], "lo": None, "hi": None} for r in sweep_rows]
        mean = [m["mean"] for m in ms]
        lo = [m["mean"] if m["lo"] is None else m["lo"] for m in ms]
        hi = [m["mean"] if m["hi"] is None else m["hi"] for m in ms]
        return mean, lo, hi

    if "l2_sweep" in names:
        out["l2_sweep"] = sweep(
            os.path.join(out_dir, names["l2_sweep"]),
            [r["hyper"]["l2"] for r in sweep_rows],
            [
                ("accuracy", {"validation": bars("val_acc"), "test": bars("test_acc"), "train": bars("train_acc")}),
                ("generalization gap (val - train loss)", {"gap": bars("gap")}),
            ],
            baselines={"accuracy": baseline["val_acc"], "generalization gap (val - train loss)": baseline["gap"]},
            xlabel="L2 scale (coupled, in the loss)",
            title=f"{res['data']['name']}: accuracy vs L2 scale (mean over seeds, 95% t interval)",
        )
    if "weights" in names:
        out["weights"] = weight_histograms(
            os.path.join(out_dir, names["weights"]),
            {r["label"]: _kernels(os.path.join(out_dir, r["params_file"])) for r in main},
        )
    curve = res["mc_dropout_curve"]

    def per_k(key: str) -> np.ndarray:
        vals = curve[key]
        if vals and isinstance(vals[0], dict):
            return np.asarray([v["values"] for v in vals], np.float64).T  # (seeds, K)
        return np.asarray(vals, np.float64)

    if "mc_dropout" in names:
        out["mc_dropout"] = mc_dropout(
            os.path.join(out_dir, names["mc_dropout"]),
            curve["num_masks"],
            per_k("test_acc"),
            per_k("test_nll"),
            reference={
                rows[n]["label"]: (measure(rows[n], "test_acc"), measure(rows[n], "test_nll"))
                for n in curve["reference"]
            },
        )
    if "es_minima" in names and res.get("es_minima"):
        out["es_minima"] = es_minima(os.path.join(out_dir, names["es_minima"]), res["es_minima"])
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
        log_x=_log_axis(res),
    )


def _log_axis(res: Mapping[str, Any]) -> bool:
    """A log x axis for positive values spaced by ``log`` (``--linear`` ones, and b1's default, were
    drawn on a log axis); a ``sweep.json`` without ``spacing``: log for positive values."""
    return min(res["values"]) > 0 and res.get("spacing") != "linear"
