"""Reporting of runs and sweeps: the printed tables, the CSV columns and the findings in words.

Shared by ``jaxreg run`` (:func:`run_summary`, :func:`findings`) and ``jaxreg sweep``
(:func:`sweep_table`); everything here reads the results dicts and computes nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "SWEEP_COLUMNS", "findings", "format_table", "run_summary", "sweep_table"]

COLUMNS = (
    ("label", "regime", "{}"),
    ("train_loss", "train_loss", "{:.4f}"),
    ("val_loss", "val_loss", "{:.4f}"),
    ("train_acc", "train_acc", "{:.3f}"),
    ("val_acc", "val_acc", "{:.3f}"),
    ("test_acc", "test_acc", "{:.3f}"),
    ("test_nll", "test_nll", "{:.3f}"),
    ("test_ece", "test_ece", "{:.3f}"),
    ("gap", "gap", "{:.3f}"),
    ("steps_to_target", "steps_to", "{}"),
    ("zero_frac", "zero_frac", "{:.3f}"),
    ("weight_norm", "w_norm", "{:.3f}"),
    ("sat_frac", "sat_frac", "{:.3f}"),
)
"""(key in a row, table header, format) of the printed table; the CSV has ``regime`` and these keys."""

SWEEP_COLUMNS = (
    ("name", "member", "{}"),
    ("train_loss", "train_loss", "{:.4f}"),
    ("val_loss", "val_loss", "{:.4f}"),
    ("val_acc", "val_acc", "{:.3f}"),
    ("test_acc", "test_acc", "{:.3f}"),
    ("test_acc_std", "test_sd", "{:.3f}"),
    ("gap", "gap", "{:.3f}"),
    ("zero_frac", "zero_frac", "{:.3f}"),
    ("weight_norm", "w_norm", "{:.3f}"),
)
"""The sweep's table; its CSV has ``name``, ``strength`` and the other keys."""


def format_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    """A plain-text table, one line per row; ``None`` prints as ``-`` (``n/a`` for sat_frac)."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        v = row.get(key)
        if v is None:
            return "n/a" if key == "sat_frac" else "-"
        return fmt.format(v)

    cells = [[h for _, h, _ in columns]] + [[cell(r, k, f) for k, _, f in columns] for r in rows]
    widths = [max(len(c[j]) for c in cells) for j in range(len(columns))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(c, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def findings(results: dict[str, Any]) -> list[str]:
    """Plain statements of what the run found, computed from its results (no judgement baked in)."""
    rows = {r["regime"]: r for r in results["regimes"]}
    none = rows["none"]
    out = []
    regs = ["l2", "weight_decay", "l1", "elastic_net", "max_norm", "dropout", "early_stopping", "bagging", "mc_dropout"]
    smaller = [n for n in regs if rows[n]["gap"] < none["gap"]]
    larger = [n for n in regs if rows[n]["gap"] >= none["gap"]]
    out.append(
        f"generalization gap (val - train loss): none {none['gap']:.3f}; smaller for {', '.join(smaller) or 'no regime'}"
        + (f"; not smaller for {', '.join(larger)}" if larger else "")
    )
    better = [n for n in regs if rows[n]["test_acc"] > none["test_acc"]]
    worse = [n for n in regs if rows[n]["test_acc"] <= none["test_acc"]]
    out.append(
        f"test accuracy: none {none['test_acc']:.3f}; higher for {', '.join(better) or 'no regime'}"
        + (f"; not higher for {', '.join(worse)}" if worse else "")
    )
    out.append(
        f"exact zeros: L1 (proximal) {rows['l1']['zero_frac']:.1%} of kernel weights, elastic net "
        f"{rows['elastic_net']['zero_frac']:.1%}, L2 {rows['l2']['zero_frac']:.1%}, none {none['zero_frac']:.1%}"
    )
    bag = rows["bagging"]
    out.append(
        f"bagging ({len(bag['members'])} members): test acc {bag['test_acc']:.3f} (members alone: mean "
        f"{np.mean(bag['member_test_acc']):.3f}), NLL {bag['test_nll']:.3f} vs none {none['test_nll']:.3f}, "
        f"ECE {bag['test_ece']:.3f} vs none {none['test_ece']:.3f}"
    )
    mc, det = rows["mc_dropout"], rows["dropout"]
    out.append(
        f"MC-dropout ({mc['num_masks']} masks) vs the same net with weight scaling: test acc {mc['test_acc']:.3f} "
        f"vs {det['test_acc']:.3f}, NLL {mc['test_nll']:.3f} vs {det['test_nll']:.3f}, "
        f"ECE {mc['test_ece']:.3f} vs {det['test_ece']:.3f}"
    )
    es = rows["early_stopping"]
    out.append(
        f"early stopping: best validation loss at step {es['best_step']} of {results['num_steps']}; test acc "
        f"{es['test_acc']:.3f} vs {none['test_acc']:.3f} at the end, NLL {es['test_nll']:.3f} vs {none['test_nll']:.3f}"
    )
    slow = [n for n in regs if rows[n]["steps_to_target"] is None]
    fmt = {n: rows[n]["steps_to_target"] for n in ["none", "l2", "weight_decay", "l1", "max_norm", "dropout"]}
    out.append(
        "steps to the target training loss: "
        + ", ".join(f"{n} {'never' if v is None else v}" for n, v in fmt.items())
        + (f" (never reached: {', '.join(slow)})" if slow else "")
    )
    if "sigmoid" in rows and "sigmoid_l2" in rows:
        out.append(
            f"saturated sigmoid units: {rows['sigmoid']['sat_frac']:.1%} without regularization, "
            f"{rows['sigmoid_l2']['sat_frac']:.1%} with L2"
        )
    sweep = [r for r in results["regimes"] if r["kind"] == "sweep"]
    if sweep:
        best = max(sweep, key=lambda r: r["val_acc"])
        last = sweep[-1]
        out.append(
            f"L2 sweep: best validation accuracy {best['val_acc']:.3f} at scale {best['hyper']['l2']:.0e} "
            f"(none {none['val_acc']:.3f}); at the largest scale {last['hyper']['l2']:.0e} train acc "
            f"{last['train_acc']:.3f}, val acc {last['val_acc']:.3f}"
        )
    out += optimizer_findings(results)
    return out


def optimizer_findings(results: dict[str, Any]) -> list[str]:
    """The findings of the SWA, SAM and spectral-norm rows and the lr x wd grid (where present)."""
    rows = {r["regime"]: r for r in results["regimes"]}
    none, out = rows["none"], []
    new = [n for n in ("swa", "sam", "spectral_norm") if n in rows]
    if new:
        out.append(
            "through the optimizer: "
            + "; ".join(
                f"{n} gap {rows[n]['gap']:.3f}, test acc {rows[n]['test_acc']:.3f}, NLL {rows[n]['test_nll']:.3f}, "
                f"ECE {rows[n]['test_ece']:.3f}"
                for n in new
            )
            + f" (none: gap {none['gap']:.3f}, test acc {none['test_acc']:.3f}, NLL {none['test_nll']:.3f}, "
            f"ECE {none['test_ece']:.3f})"
        )
    grid = [r for r in results["regimes"] if r["kind"] == "grid"]
    if grid:
        best = max(grid, key=lambda r: r["val_acc"])
        wds = sorted({r["wd"] for r in grid})
        by_wd = {w: [r for r in grid if r["wd"] == w] for w in wds}
        out.append(
            f"lr x weight-decay grid: best validation accuracy {best['val_acc']:.3f} at lr {best['lr']:.0e}, "
            f"wd {best['wd']:g} (test acc {best['test_acc']:.3f}); the lr with the best val acc per wd: "
            + ", ".join(f"wd {w:g}: {max(by_wd[w], key=lambda r: r['val_acc'])['lr']:.0e}" for w in wds)
        )
    return out


def grid_table(rows: list[dict[str, Any]], key: str = "test_acc", fmt: str = "{:.3f}") -> str:
    """The lr x wd grid rows as a matrix of ``key``: one line per learning rate, one column per weight decay."""
    lrs = sorted({r["lr"] for r in rows})
    wds = sorted({r["wd"] for r in rows})
    cell = {(r["lr"], r["wd"]): r.get(key) for r in rows}
    table = [{"lr": f"{lr:.0e}", **{f"wd={w:g}": cell.get((lr, w)) for w in wds}} for lr in lrs]
    return format_table(table, [("lr", "lr", "{}"), *((f"wd={w:g}", f"wd={w:g}", fmt) for w in wds)])


def run_summary(results: dict[str, Any]) -> list[str]:
    """The lines ``jaxreg run`` prints: the regimes' table, the L2 sweep's, MC-dropout, findings."""
    main_rows = [r for r in results["regimes"] if r["kind"] not in ("sweep", "grid")]
    sweep_rows = [r for r in results["regimes"] if r["kind"] == "sweep"]
    curve = results["mc_dropout_curve"]
    return [
        "",
        format_table(main_rows),
        "",
        "L2 sweep (coupled L2 scale in the loss):",
        format_table(sweep_rows),
        "",
        *_grid_lines(results),
        "MC-dropout test accuracy by number of masks: "
        + ", ".join(f"K={k}: {a:.3f}" for k, a in zip(curve["num_masks"], curve["test_acc"])),
        *(f"- {line}" for line in findings(results)),
        "",
        f"training: {results['num_members']} members x {results['num_steps']} steps as one program in "
        f"{results['train_program_s']:.1f} s (compilation included); no per-regime time exists",
    ]


def _grid_lines(results: dict[str, Any]) -> list[str]:
    grid = [r for r in results["regimes"] if r["kind"] == "grid"]
    if not grid:
        return []
    return [
        "Learning rate x decoupled weight decay grid (one member per point):",
        format_table(grid),
        "",
        "The grid's test accuracy, and its gap (val - train loss):",
        grid_table(grid),
        grid_table(grid, "gap"),
        "",
    ]


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The sweep table as text, one line per strength (the baseline first)."""
    return format_table(rows, SWEEP_COLUMNS)
