"""Reporting of runs and sweeps: the printed tables, the CSV columns and the findings in words.

Shared by ``jaxreg run`` (:func:`run_summary`, :func:`findings`) and ``jaxreg sweep``
(:func:`sweep_table`); everything here reads the results dicts and computes nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

import jaxreg as jr

__all__ = [
    "COLUMNS",
    "SWEEP_COLUMNS",
    "compare",
    "csv_columns",
    "csv_rows",
    "findings",
    "format_measure",
    "format_table",
    "masks_needed",
    "table_cells",
    "write_html",
    "run_summary",
    "sweep_table",
]

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
    ("steps_to_target", "steps_to", "{:.0f}"),
    ("steps_to_best", "best_at", "{:.0f}"),
    ("zero_frac", "zero_frac", "{:.3f}"),
    ("weight_norm", "w_norm", "{:.3f}"),
    ("sat_frac", "sat_frac", "{:.3f}"),
)
"""(key in a row, table header, format) of the printed table. A row with ``measures`` (a run
with seeds) prints ``mean ± half-width`` of the 95% interval; the CSV has ``regime``, ``label``
and per key the mean and its ``<key>_lo`` and ``<key>_hi`` columns (:func:`csv_columns`)."""

SWEEP_COLUMNS = (
    ("name", "member", "{}"),
    ("train_loss", "train_loss", "{:.4f}"),
    ("val_loss", "val_loss", "{:.4f}"),
    ("val_acc", "val_acc", "{:.3f}"),
    ("test_acc", "test_acc", "{:.3f}"),  # ± the 95% t half-width over replicates (with more than one)
    ("test_nll", "test_nll", "{:.3f}"),
    ("gap", "gap", "{:.3f}"),
    ("zero_frac", "zero_frac", "{:.3f}"),
    ("weight_norm", "w_norm", "{:.3f}"),
)
"""The sweep's table; its CSV has ``name``, ``strength`` and the other keys."""


def half_width(m: dict[str, Any]) -> float | None:
    """The half-width of a measure's interval (``max(mean - lo, hi - mean)``), ``None`` without one."""
    if m.get("mean") is None or m.get("lo") is None:
        return None
    return max(m["mean"] - m["lo"], m["hi"] - m["mean"])


def format_measure(m: dict[str, Any], fmt: str = "{:.3f}") -> str:
    """``"0.925 ± 0.012"``; the mean alone with one seed; ``-`` for a target no seed reached,
    ``k/S`` (seeds that reached it) when only some did."""
    if m.get("mean") is None:
        vals = m.get("values") or []
        hit = sum(v is not None for v in vals)
        return f"{hit}/{len(vals)}" if hit else "-"
    half = half_width(m)
    return fmt.format(m["mean"]) if half is None else f"{fmt.format(m['mean'])} ± {fmt.format(half)}"


def table_cells(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> list[list[str]]:
    """The header and one list of cell texts per row; ``None`` is ``-`` (``n/a`` for sat_frac).

    A key found in the row's ``measures`` (per-seed summaries) prints as :func:`format_measure`.
    """

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        m = row.get("measures", {}).get(key)
        if m is not None:
            return format_measure(m, fmt)
        v = row.get(key)
        if v is None:
            return "n/a" if key == "sat_frac" else "-"
        return fmt.format(v)

    return [[h for _, h, _ in columns]] + [[cell(r, k, f) for k, _, f in columns] for r in rows]


def format_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    """A plain-text table of :func:`table_cells`, one line per row."""
    cells = table_cells(rows, columns)
    widths = [max(len(c[j]) for c in cells) for j in range(len(columns))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(c, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def csv_columns(columns: Sequence[tuple[str, str, str]] = COLUMNS) -> list[str]:
    """``regime``, ``label``, then per measure its mean and ``_lo``/``_hi`` bounds, and ``seeds``."""
    out = ["regime", "label"]
    for key, _, _ in columns[1:]:
        out += [key, f"{key}_lo", f"{key}_hi"]
    return [*out, "seeds"]


def csv_rows(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> list[dict[str, Any]]:
    """The rows flattened for :func:`csv_columns`: ``key`` the mean, ``key_lo``/``key_hi`` its bounds."""
    out = []
    for r in rows:
        flat = {"regime": r["regime"], "label": r.get("label"), "seeds": r.get("seeds")}
        for key, _, _ in columns[1:]:
            m = r.get("measures", {}).get(key, {"mean": r.get(key)})
            flat[key], flat[f"{key}_lo"], flat[f"{key}_hi"] = m.get("mean"), m.get("lo"), m.get("hi")
        out.append(flat)
    return out


# --------------------------------------------------------------------------- findings


def _values(row: dict[str, Any], key: str) -> np.ndarray | None:
    """A measure's per-seed values, or ``None`` when the row lacks it or a seed has none."""
    m = row.get("measures", {}).get(key)
    if m is None or any(v is None for v in m["values"]):
        return None
    return np.asarray(m["values"], np.float64)


def _iv(m: dict[str, Any], digits: int = 3, pct: bool = False) -> str:
    if m.get("mean") is None:
        return "n/a"
    if pct:
        half = half_width(m)
        return f"{m['mean']:.1%}" + ("" if half is None else f" ± {half:.1%}")
    return format_measure(m, f"{{:.{digits}f}}")


def compare(
    a: dict[str, Any],
    b: dict[str, Any],
    key: str,
    *,
    higher: str = "higher",
    lower: str = "lower",
    digits: int = 3,
) -> tuple[str, jr.stats.Interval | None]:
    """The verdict on ``a[key] - b[key]``, paired by seed (:func:`jaxreg.stats.paired_difference`).

    ``higher``/``lower`` only when the 95% interval of the paired difference excludes 0, else
    ``"no difference detected at this size (n = S)"``; ``("n/a", None)`` when a value is missing.
    """
    va, vb = _values(a, key), _values(b, key)
    if va is None or vb is None or va.shape != vb.shape:
        return "n/a", None
    return _paired_verdict(va, vb, higher, lower)


def _paired_verdict(va: np.ndarray, vb: np.ndarray, higher: str = "higher", lower: str = "lower") -> tuple[str, Any]:
    """The verdict on the paired difference ``va - vb``, and the difference to print.

    The same nonzero difference in every seed (steps counted on the evaluation grid: +10 for
    each of 3 seeds) has a zero-width t interval, which would call it with no variance estimate
    behind it: it is reported as such, not called. "The same" up to the rounding of the values:
    5 more of 1,097 test digits right in each seed differs in the last bits between seeds.
    """
    va, vb = np.asarray(va, np.float64), np.asarray(vb, np.float64)
    d = va - vb
    rounding = 4 * np.finfo(np.float64).eps * max(np.max(np.abs(va), initial=0), np.max(np.abs(vb), initial=0))
    if d.size > 1 and np.ptp(d) <= rounding:
        if abs(d[0]) <= rounding:  # equal up to rounding in every seed: a zero-width interval would call it
            return f"no difference detected at this size (n = {d.size})", jr.stats.Interval(
                float(np.mean(d)), float("nan"), float("nan")
            )
        return f"the same difference in every seed, no spread to give an interval (n = {d.size})", jr.stats.Interval(
            float(d[0]), float("nan"), float("nan")
        )
    diff = jr.stats.paired_difference(va, vb)
    same = f"no difference detected at this size (n = {len(va)})"
    return jr.stats.verdict(diff, higher=higher, lower=lower, same=same), diff


def _signed(values: Sequence[float], digits: int) -> list[str]:
    """``values`` as ``+0.012``, with up to 2 more digits where a nonzero one rounds to 0 (an
    interval called "higher" printed ``[+0.000, ...]``); one still 0 prints as ``0.000``, unsigned."""
    d = digits
    while d < digits + 2 and any(v != 0 and round(v, d) == 0 for v in values):
        d += 1
    out = [f"{v:+.{d}f}" for v in values]
    return [t[1:] if float(t) == 0 else t for t in out]


def _diff_text(diff: jr.stats.Interval, digits: int = 3) -> str:
    lo, hi = float(diff.lo), float(diff.hi)
    mean = float(diff.mean)
    if not np.isfinite(lo):
        return _signed([mean], digits)[0]
    m, a, b = _signed([mean, lo, hi], digits)
    return f"{m} [{a}, {b}]"


def grouped_comparison(
    rows: dict[str, dict[str, Any]],
    names: Sequence[str],
    baseline: str,
    key: str,
    *,
    higher: str = "higher",
    lower: str = "lower",
    digits: int = 3,
) -> str:
    """``"higher for a (+0.01 [+0.00, +0.02]); lower for ...; no difference detected at this size
    (n = 3) for ..."``: each regime's paired difference to ``baseline`` on ``key``, grouped by verdict."""
    groups: dict[str, list[str]] = {}
    for n in names:
        if n not in rows:
            continue
        v, diff = compare(rows[n], rows[baseline], key, higher=higher, lower=lower, digits=digits)
        text = n if diff is None else f"{n} ({_diff_text(diff, digits)})"
        groups.setdefault(v, []).append(text)
    order = [higher, lower] + [v for v in groups if v not in (higher, lower)]
    return "; ".join(f"{v} for {', '.join(groups[v])}" for v in order if v in groups)


REGULARIZED = [
    "l2",
    "weight_decay",
    "l1",
    "elastic_net",
    "max_norm",
    "dropout",
    "early_stopping",
    "bagging",
    "mc_dropout",
    "swa",
    "sam",
    "spectral_norm",
]
"""The regimes compared against ``none`` in the findings (those a run has)."""

CLAIMED_MASKS = (10, 20)
"""The seed text's claim: MC-dropout needs 10 to 20 masks."""


def masks_needed(curve: dict[str, Any]) -> dict[str, Any]:
    """How many MC-dropout masks are enough, read from the intervals of the curve over K.

    ``paired``: the smallest K from which on (every K' >= K) the paired-by-seed difference of test
    accuracy to the largest K has a 95% interval covering 0. ``overlap``: the smallest K from which
    on each K's accuracy interval overlaps the largest K's. ``None`` without per-seed values.
    """
    ks = curve["num_masks"]
    accs = curve["test_acc"]
    if not accs or not isinstance(accs[0], dict):
        return {"paired": None, "overlap": None}
    ref = accs[-1]
    ref_vals = np.asarray(ref["values"], np.float64)
    if ref_vals.size < 2:  # one seed: no interval, so no K is shown to be enough
        return {"paired": None, "overlap": None}

    def covers(k: int) -> bool:
        diff = jr.stats.paired_difference(np.asarray(accs[k]["values"], np.float64), ref_vals)
        return jr.stats.verdict(diff) not in ("higher", "lower")

    def overlaps(k: int) -> bool:
        a = accs[k]
        if a["lo"] is None or ref["lo"] is None:
            return True
        return a["hi"] >= ref["lo"] and a["lo"] <= ref["hi"]

    def first(ok: Any) -> int:
        j = len(ks) - 1
        while j > 0 and ok(j - 1):
            j -= 1
        return ks[j]

    return {"paired": first(covers), "overlap": first(overlaps)}


def findings(results: dict[str, Any]) -> list[str]:
    """Plain statements of what the run found, computed from the intervals over seeds.

    Every "higher", "lower", "smaller", "faster" is a 95% interval of a difference paired by seed
    that excludes 0; otherwise the statement is "no difference detected at this size (n = S)".
    """
    rows = {r["regime"]: r for r in results["regimes"]}
    none = rows["none"]
    meas = none["measures"]
    seeds = len(meas["test_acc"]["values"])
    regs = [n for n in REGULARIZED if n in rows]
    if seeds > 1:
        intervals = (
            f"every number is a mean over {seeds} seeds ± the half-width of its 95% t interval; a difference "
            "is called only when the 95% t interval of the difference paired by seed excludes 0 "
            "(given as mean [lo, hi]). Each interval is for its own comparison, with no correction for the "
            "many below: about 1 in 20 of the differences that are truly 0 would be called by chance. The "
            "intervals cover the seeds' variation (init, bootstrap resamples, dropout masks), not that of the fixed split"
        )
    else:
        intervals = (
            "every regime's number is from 1 seed: no intervals (they need 2 seeds or more, --seeds), so no "
            "difference between regimes is called and no number of MC-dropout masks is shown to be enough "
            "(the ES comparison has seeds of its own)"
        )
    out = [intervals]
    out.append(
        f"generalization gap (val - train loss), none {_iv(meas['gap'])}: "
        + grouped_comparison(rows, regs, "none", "gap", higher="larger", lower="smaller")
        + (
            " (early stopping's snapshot is chosen by its validation loss, so its validation loss and gap are "
            "optimistic: its test measures are not)"
            if "early_stopping" in regs
            else ""
        )
    )
    out.append(f"test accuracy, none {_iv(meas['test_acc'])}: " + grouped_comparison(rows, regs, "none", "test_acc"))
    out.append(f"test NLL, none {_iv(meas['test_nll'])}: " + grouped_comparison(rows, regs, "none", "test_nll"))
    if "l1" in rows:
        zeros = ", ".join(
            f"{n} {_iv(rows[n]['measures']['zero_frac'], pct=True)}"
            for n in ["l1", "elastic_net", "l2", "none"]
            if n in rows
        )
        out.append(f"exact zeros (fraction of kernel weights): {zeros}")
    if "bagging" in rows:
        bag = rows["bagging"]
        v, diff = _bag_vs_members(bag)
        nll_v, nll_d = compare(bag, none, "test_nll")
        ece_v, ece_d = compare(bag, none, "test_ece")
        size = len(bag["members"]) // max(seeds, 1)
        out.append(
            f"bagging ({size} member{'s' if size != 1 else ''}): test acc {_iv(bag['measures']['test_acc'])} vs its members alone "
            f"{_iv(bag['measures']['member_mean_test_acc'])}: {_said(v, diff)}"
            + f"; NLL vs none: {_said(nll_v, nll_d)}"
            + f"; ECE vs none: {_said(ece_v, ece_d)}"
        )
    if "mc_dropout" in rows and "dropout" in rows:
        mc, det = rows["mc_dropout"], rows["dropout"]
        parts = []
        for key, name in (("test_acc", "test acc"), ("test_nll", "NLL"), ("test_ece", "ECE")):
            v, diff = compare(mc, det, key)
            parts.append(f"{name} {_iv(mc['measures'][key])} vs {_iv(det['measures'][key])}: {_said(v, diff)}")
        out.append(f"MC-dropout ({mc['num_masks']} masks) vs the same net with weight scaling: " + "; ".join(parts))
        curve = results.get("mc_dropout_curve")
        if curve:
            need = masks_needed(curve)
            k_max = curve["num_masks"][-1]
            lo, hi = CLAIMED_MASKS
            ks = curve["num_masks"]
            if need["paired"] is not None and need["paired"] == k_max and len(ks) > 1:
                # the largest K compared with itself is no finding: the next smaller K differs from it
                out.append(
                    f"MC-dropout masks needed: K = {ks[-2]} already differs in test accuracy from K = {k_max} "
                    f"(the paired 95% interval excludes 0), so this run shows no K below {k_max} to be enough; "
                    f"the seed text claims {lo} to {hi} masks (masks tried: {', '.join(map(str, ks))})"
                )
            elif need["paired"] is not None and len(ks) > 1:
                p = need["paired"]
                out.append(
                    f"MC-dropout masks needed: from K = {p} on, no difference in test accuracy to K = {k_max} "
                    f"is detected (the paired 95% interval covers 0; K = {need['overlap']} by overlapping "
                    f"intervals): with {seeds} seeds a limit of what this run resolves, not a proof that K = {p} "
                    f"is enough; the seed text claims {lo} to {hi} masks (masks tried: "
                    f"{', '.join(map(str, curve['num_masks']))})"
                )
    if "early_stopping" in rows:
        es = rows["early_stopping"]
        v, diff = compare(es, none, "test_acc")
        nv, nd = compare(es, none, "test_nll")
        out.append(
            f"early stopping: best validation loss at step {_iv(es['measures']['best_step'], 0)} of "
            f"{results['num_steps']}; test acc vs none at the end: {_said(v, diff)}" + f"; NLL: {_said(nv, nd)}"
        )
    conv = [n for n in ["none", "l2", "weight_decay", "l1", "elastic_net", "max_norm", "dropout"] if n in rows]
    out.append(
        f"steps to the target training loss {results['settings']['target_loss']:g}: "
        + ", ".join(f"{n} {_steps(rows[n]['measures']['steps_to_target'])}" for n in conv)
        + "; vs none: "
        + grouped_comparison(rows, conv[1:], "none", "steps_to_target", higher="slower", lower="faster", digits=0)
    )
    out.append(
        "steps to the best validation loss: "
        + ", ".join(f"{n} {_steps(rows[n]['measures']['steps_to_best'])}" for n in conv)
        + "; vs none: "
        + grouped_comparison(rows, conv[1:], "none", "steps_to_best", higher="later", lower="earlier", digits=0)
    )
    if "sigmoid" in rows and "sigmoid_l2" in rows:
        v, diff = compare(rows["sigmoid_l2"], rows["sigmoid"], "sat_frac")
        out.append(
            f"saturated sigmoid units: {_iv(rows['sigmoid']['measures']['sat_frac'], pct=True)} without "
            f"regularization, {_iv(rows['sigmoid_l2']['measures']['sat_frac'], pct=True)} with L2: L2 {_said(v, diff)}"
        )
    sweep = [r for r in results["regimes"] if r["kind"] == "sweep"]
    if sweep:
        best = max(sweep, key=lambda r: r["val_acc"])
        last = sweep[-1]
        # On test data: the scale was chosen by its validation accuracy, which would flatter it.
        bv, bd = compare(best, none, "test_acc")
        lv, ld = compare(last, none, "train_acc")
        out.append(
            f"L2 sweep: highest mean validation accuracy {_iv(best['measures']['val_acc'])} at scale "
            f"{best['hyper']['l2']:.0e} (its test accuracy vs none: {bv}"
            + (f", {_diff_text(bd)}" if bd is not None else "")
            + f"); at the largest scale {last['hyper']['l2']:.0e} train acc {_iv(last['measures']['train_acc'])}, "
            f"vs none: {_said(lv, ld)}"
        )
    es_res = results.get("es_minima")
    if es_res:
        out.append(es_finding(es_res))
    out += grid_findings(results)
    return out


def _bag_vs_members(bag: dict[str, Any]) -> tuple[str, jr.stats.Interval | None]:
    a, b = _values(bag, "test_acc"), _values(bag, "member_mean_test_acc")
    if a is None or b is None:
        return "n/a", None
    return _paired_verdict(a, b)


def _said(verdict: str, diff: jr.stats.Interval | None) -> str:
    """A verdict followed by its difference ``(mean [lo, hi])`` where one was computed."""
    return verdict if diff is None else f"{verdict} ({_diff_text(diff)})"


def _steps(m: dict[str, Any]) -> str:
    if m.get("mean") is None:
        vals = m.get("values") or []
        hit = sum(v is not None for v in vals)
        return f"reached by {hit}/{len(vals)} seeds" if hit else "never"
    return format_measure(m, "{:.0f}")


def es_finding(es: dict[str, Any]) -> str:
    """The ES comparison in one sentence: each sigma's verdict on the paired final-loss difference."""
    cfg = es["config"]
    gd = es["methods"]["gradient descent"]
    parts = []
    for name, entry in es["methods"].items():
        if name == "gradient descent":
            continue
        d = entry["minus_gradient_descent"]
        diff = jr.stats.Interval(d["mean"], d["lo"], d["hi"])
        parts.append(
            f"{name} {_iv(entry['final_loss'], 2)} ({entry['verdict']}, difference {_diff_text(diff, 2)}; "
            f"global basin {entry['global_basin']:.0%})"
        )
    return (
        f"ES vs gradient descent on Rastrigin (d = {cfg['dim']}, {cfg['seeds']} seeds, {cfg['evaluations']} loss "
        f"evaluations each): gradient descent final loss {_iv(gd['final_loss'], 2)} (global basin "
        f"{gd['global_basin']:.0%}); " + "; ".join(parts)
    )


def mc_curve_line(curve: dict[str, Any]) -> str:
    """``K=1: 0.853 ± 0.010, K=2: ...`` (per-seed summaries) or plain numbers (one seed)."""
    accs = curve["test_acc"]
    return ", ".join(
        f"K={k}: {format_measure(a) if isinstance(a, dict) else f'{a:.3f}'}" for k, a in zip(curve["num_masks"], accs)
    )


def grid_findings(results: dict[str, Any]) -> list[str]:
    """The lr x wd grid's finding (where present): the point with the best mean validation accuracy."""
    out = []
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
    """The lines ``jaxreg run`` prints: the regimes' table, the L2 sweep's, MC-dropout, ES, findings."""
    from jaxreg.experiments import es_minima

    main_rows = [r for r in results["regimes"] if r["kind"] not in ("sweep", "grid")]
    sweep_rows = [r for r in results["regimes"] if r["kind"] == "sweep"]
    curve = results["mc_dropout_curve"]
    seeds = results.get("seeds", 1)
    lines = [
        "",
        f"{seeds} seed{'s' if seeds != 1 else ''} per regime "
        f"({results.get('interval', 'mean') if seeds > 1 else 'no intervals with one seed'}); "
        f"{results.get('seeding', '')}",
        "",
        format_table(main_rows),
        "",
        "L2 sweep (coupled L2 scale in the loss):",
        format_table(sweep_rows),
        "",
        *_grid_lines(results),
        "MC-dropout test accuracy by number of masks: " + mc_curve_line(curve),
    ]
    if results.get("es_minima"):
        lines += ["", es_minima.format_result(results["es_minima"])]
    lines += [
        "",
        "findings:",
        *(f"- {line}" for line in findings(results)),
        "",
        f"training: {results['num_members']} members ({results['num_members'] // seeds} x {seeds} seed{'s' if seeds != 1 else ''}) x "
        f"{results['num_steps']} steps as {_programs(results)} in {results['train_program_s']:.1f} s (compilation "
        "included); no per-regime time exists",
    ]
    return lines


def _programs(results: dict[str, Any]) -> str:
    """How many compiled programs trained the members (SAM members need a second)."""
    n = results.get("train_programs", 1)
    return "one vmapped program" if n == 1 else f"{n} vmapped programs (the SAM members in the second)"


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


FIGURE_CAPTIONS = {
    "val_overlay": "Validation loss of every regime in one panel: which regularizer gives the lowest validation "
    "loss, and when (mean over seeds, shaded: 95% t band).",
    "curves": "Training and validation loss per regime (mean over seeds, 95% band); dotted: the target training "
    "loss; dashed: the early-stopping snapshot.",
    "l2_sweep": "Accuracy and generalization gap against the coupled L2 scale (error bars: 95% t interval over seeds).",
    "weights": "Kernel weights per regime (all seeds pooled); the title gives the fraction exactly 0.",
    "mc_dropout": "MC-dropout test accuracy and NLL against the number of masks (error bars: 95% t interval over "
    "seeds), beside reference regimes (dashed, shaded band).",
    "es_minima": "ES against gradient descent on Rastrigin at equal loss evaluations: final loss per seed (dots), "
    "mean with 95% t interval, and the fraction of seeds that ended in the global minimum's basin.",
}


def _html_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    import html

    cells = table_cells(rows, columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(path: str, results: dict[str, Any], figures: dict[str, str]) -> str:
    """A self-contained ``report.html``: settings, tables, findings and every figure as a base64 PNG.

    Returns:
      ``path``.
    """
    import base64
    import html
    import os

    from jaxreg.experiments import es_minima

    main_rows = [r for r in results["regimes"] if r["kind"] not in ("sweep", "grid")]
    sweep_rows = [r for r in results["regimes"] if r["kind"] == "sweep"]
    grid_rows = [r for r in results["regimes"] if r["kind"] == "grid"]
    d = results["data"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>jaxreg run</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}pre{font-size:12px}"
        "</style></head><body>",
        "<h1>jaxreg run</h1>",
        f"<p>{html.escape(d['name'])}: {d.get('train')} train / {d.get('val')} validation / {d.get('test')} test "
        f"examples; MLP {'-'.join(map(str, results['model']['sizes']))}; {results['num_steps']} full-batch Adam steps; "
        f"{results['num_members']} members trained as {_programs(results)} in {results['train_program_s']:.1f} s.</p>",
        f"<p><b>Seeds.</b> {html.escape(results.get('seeding', ''))}. <b>Cells.</b> "
        f"{html.escape(results.get('interval', ''))}.</p>",
        "<h2>Regimes</h2>",
        _html_table(main_rows),
        "<h2>L2 sweep (coupled L2 scale in the loss)</h2>",
        _html_table(sweep_rows),
    ]
    if grid_rows:  # the printed output's grid section: its rows, then test accuracy and gap as matrices
        parts += [
            "<h2>Learning rate x decoupled weight decay grid (one member per point)</h2>",
            _html_table(grid_rows),
            "<p>The grid's test accuracy, and its gap (val - train loss):</p>",
            f"<pre>{html.escape(grid_table(grid_rows))}</pre>",
            f"<pre>{html.escape(grid_table(grid_rows, 'gap'))}</pre>",
        ]
    parts += [
        f"<p>MC-dropout test accuracy by number of masks: {html.escape(mc_curve_line(results['mc_dropout_curve']))}</p>",
    ]
    if results.get("es_minima"):
        parts += [
            "<h2>ES vs gradient descent</h2>",
            f"<pre>{html.escape(es_minima.format_result(results['es_minima']))}</pre>",
        ]
    parts += ["<h2>Findings</h2>", "<ul>", *(f"<li>{html.escape(x)}</li>" for x in findings(results)), "</ul>"]
    parts.append("<h2>Figures</h2>")
    order = [k for k in FIGURE_CAPTIONS if k in figures] + [k for k in figures if k not in FIGURE_CAPTIONS]
    for name in order:
        with open(figures[name], "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        caption = FIGURE_CAPTIONS.get(name, name)
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(os.path.basename(figures[name]))}: {html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
