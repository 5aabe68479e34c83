"""End-to-end tests of the `jaxreg` command, each in a subprocess (the examples: test_examples.py).

The runs use a setting smaller than --quick (40 steps, width 32, 2 seeds) so that the whole file
takes well under a minute and a half; they start together and share the two cores.
"""

import base64
import csv
import html as htmllib
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.serialization
import numpy as np
import pytest
import scipy.stats

import jaxreg
from jaxreg import cli
from jaxreg.experiments import presets, report

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--quick",
    "--steps",
    "40",
    "--hidden",
    "32",
    "--members",
    "2",
    "--mc-samples",
    "4",
    "--seeds",
    "2",
    "--no-progress",
]
SEEDS = 2
TINY_SWEEP = ["--quick", "--hidden", "32", "--no-progress"]


# The subprocesses run under the promotion rules of conftest.py too, and import this checkout.
ENV = {
    **os.environ,
    "JAX_NUMPY_DTYPE_PROMOTION": "strict",
    "JAX_NUMPY_RANK_PROMOTION": "raise",
    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}


def _start(args, cwd, env=None):
    return subprocess.Popen(
        [sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    """Starts every subprocess of this file at once; each test waits for the ones it reads."""
    base = tmp_path_factory.mktemp("cli")
    bad = base / "bad.npz"
    bad.write_text("this is not a zip archive\n")
    started = {
        "a": _start(["-m", "jaxreg", "run", *TINY, "--seed", "3", "--out", str(base / "a")], base, ENV),
        "b": _start(["-m", "jaxreg", "run", *TINY, "--seed", "3", "--out", str(base / "b")], base, ENV),
        "sweep": _start(
            [
                "-m",
                "jaxreg",
                "sweep",
                "--reg",
                "l1",
                "--min",
                "0.01",
                "--max",
                "1",
                "--num",
                "3",
                "--members",
                "2",  # two replicates per strength: test accuracy with a t interval
                *TINY_SWEEP,
                "--steps",
                "35",  # rounded up to 40, a whole number of evaluations (every 10 steps), with a warning
                "--out",
                str(base / "s"),
            ],
            base,
            ENV,
        ),
        "bad": _start(["-m", "jaxreg", "run", "--data", str(bad), "--out", str(base / "x")], base, ENV),
    }
    done = {}

    def result(name):
        if name not in done:
            out, err = started[name].communicate(timeout=600)
            done[name] = (started[name].returncode, out, err)
        return done[name]

    yield base, result
    for p in started.values():
        if p.poll() is None:
            p.kill()


def _mlp_probs(params, x, sigmoid=False):
    """A numpy reference of the MLP: dense layers, ReLU or sigmoid hidden units, softmax."""
    h = np.asarray(x, np.float64)
    n = len(params)
    for i in range(n):
        layer = params[f"dense{i}"]
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)[None, :]
        if i < n - 1:
            h = 1.0 / (1.0 + np.exp(-h)) if sigmoid else np.maximum(h, 0.0)
    h = h - h.max(-1, keepdims=True)
    e = np.exp(h)
    return e / e.sum(-1, keepdims=True)


def _load_params(path):
    with open(path, "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


def _nll(p, y):
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def test_run_writes_results_and_figures(procs):
    base, result = procs
    code, out, err = result("a")
    assert code == 0, err[-3000:]
    out_dir = base / "a"
    assert f"results: {out_dir}" in out
    for name in ["results.json", "results.csv", "history.npz", "data.npz", "report.html"]:
        assert (out_dir / name).is_file(), name
    res = json.loads((out_dir / "results.json").read_text())
    assert set(res["figures"]) == {"curves", "l2_sweep", "weights", "mc_dropout", "val_overlay", "es_minima"}
    html = (out_dir / "report.html").read_text()
    for fig in res["figures"].values():
        png = (out_dir / fig).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", fig
        # The report is self-contained: every figure embedded as base64, byte for byte.
        assert base64.b64encode(png).decode("ascii") in html, fig
    assert "±" in html and "<h2>Findings</h2>" in html
    # the grid's section as printed: its own heading and table, and both matrices (not in the regimes table)
    grid = [r for r in res["regimes"] if r["kind"] == "grid"]
    assert grid and "Learning rate x decoupled weight decay grid" in out
    regimes_table = html[html.index("<h2>Regimes</h2>") : html.index("<h2>L2 sweep")]
    assert all(f"<td>{r['regime']}</td>" not in regimes_table for r in grid)
    assert "<h2>Learning rate x decoupled weight decay grid (one member per point)</h2>" in html
    for matrix in (report.grid_table(grid), report.grid_table(grid, "gap")):
        assert matrix in out and htmllib.escape(matrix) in html
    names = [r["regime"] for r in res["regimes"]]
    for regime in [
        "none",
        "l2",
        "weight_decay",
        "l1",
        "elastic_net",
        "max_norm",
        "dropout",
        "early_stopping",
        "bagging",
        "mc_dropout",
        "sigmoid",
        "sigmoid_l2",
    ]:
        assert regime in names
    assert sum(r["kind"] == "sweep" for r in res["regimes"]) == len(presets.Settings.quick().sweep)
    # The table is printed: one line per regime, starting with its name.
    lines = out.splitlines()
    for regime in names:
        assert any(line.split()[:1] == [regime] for line in lines), regime


def _seed_params(params, r):
    """Seed ``r``'s params of a saved regime (the seed axis leads every leaf)."""
    return {k: {n: v[r] for n, v in layer.items()} for k, layer in params.items()}


def test_per_seed_values_match_a_recomputation_from_saved_params(procs):
    base, result = procs
    code, _, err = result("a")
    assert code == 0, err[-3000:]
    out_dir = base / "a"
    res = json.loads((out_dir / "results.json").read_text())
    assert res["seeds"] == SEEDS
    d = np.load(out_dir / "data.npz")
    n_test = len(d["y_test"])
    for row in res["regimes"]:
        saved = _load_params(out_dir / row["params_file"])
        m = row["measures"]
        for r in range(SEEDS):
            params = _seed_params(saved, r)
            kernels = [params[k]["kernel"] for k in params]
            sigmoid = row["activation"] == "sigmoid"
            if row["kind"] == "ensemble":
                # Stacked members: the ensemble predicts with the mean of the members' probabilities.
                k = kernels[0].shape[0]
                members = [{a: {n: v[j] for n, v in layer.items()} for a, layer in params.items()} for j in range(k)]
                probs = {p: np.mean([_mlp_probs(q, d[f"x_{p}"]) for q in members], axis=0) for p in ("train", "test")}
                zero = np.mean(
                    [sum(int(np.sum(w[j] == 0)) for w in kernels) / sum(w[j].size for w in kernels) for j in range(k)]
                )
            else:
                zero = sum(int(np.sum(w == 0)) for w in kernels) / sum(w.size for w in kernels)
                # MC-dropout's probabilities are random; its weights are the dropout net's.
                stochastic = row["kind"] == "mc_dropout"
                probs = None if stochastic else {p: _mlp_probs(params, d[f"x_{p}"], sigmoid) for p in ("train", "test")}
            assert m["zero_frac"]["values"][r] == pytest.approx(zero, abs=1e-12), row["regime"]
            if probs is None:
                continue
            acc = np.mean(probs["test"].argmax(-1) == d["y_test"])
            # float32 in the run vs float64 here: at most one near-tie may flip.
            got = m["test_acc"]["values"][r]
            assert abs(acc - got) <= 1.0 / n_test + 1e-12, (row["regime"], r, acc, got)
            assert _nll(probs["train"], d["y_train"]) == pytest.approx(m["train_loss"]["values"][r], rel=1e-3, abs=1e-5)
            assert m["gap"]["values"][r] == pytest.approx(m["val_loss"]["values"][r] - m["train_loss"]["values"][r])
    rows = {r["regime"]: r for r in res["regimes"]}
    # L1 (proximal) gives exact zeros; without a penalty none appear.
    assert min(rows["l1"]["measures"]["zero_frac"]["values"]) > 0.0
    assert rows["none"]["measures"]["zero_frac"]["values"] == [0.0] * SEEDS
    # Max-norm: no unit's incoming weight vector exceeds the bound, under any seed.
    mn = _load_params(out_dir / rows["max_norm"]["params_file"])
    bound = rows["max_norm"]["hyper"]["max_norm"]
    for layer in mn.values():
        assert np.max(np.linalg.norm(layer["kernel"], axis=-2)) <= bound * (1 + 1e-5)


def test_seeds_differ_in_init_and_results(procs):
    base, result = procs
    code, _, err = result("a")
    assert code == 0, err[-3000:]
    out_dir = base / "a"
    res = json.loads((out_dir / "results.json").read_text())
    rows = {r["regime"]: r for r in res["regimes"]}
    # Different initializations: the trained weights and the per-seed numbers differ.
    p = _load_params(out_dir / rows["none"]["params_file"])
    assert not np.array_equal(p["dense0"]["kernel"][0], p["dense0"]["kernel"][1])
    for regime in ("none", "l2", "dropout", "bagging"):
        vals = rows[regime]["measures"]["val_loss"]["values"]
        assert len(vals) == SEEDS and vals[0] != vals[1], regime
    # Bagging: seed 1 draws its own bootstrap resamples, so its members differ from seed 0's too.
    bag = _load_params(out_dir / rows["bagging"]["params_file"])
    assert bag["dense0"]["kernel"].shape[:2] == (SEEDS, 2)
    assert not np.array_equal(bag["dense0"]["kernel"][0], bag["dense0"]["kernel"][1])


def _t_interval(values):
    """Student's t 95% interval of the mean, from scipy (an independent recomputation)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    v = np.asarray(values, np.float64)
    half = scipy_stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


def test_printed_cells_and_json_intervals_are_t_intervals_of_the_per_seed_values(procs):
    base, result = procs
    code, out, err = result("a")
    assert code == 0, err[-3000:]
    res = json.loads((base / "a" / "results.json").read_text())
    from jaxreg.experiments import report

    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("regime ") and "test_acc" in line)
    cols = [h for _, h, _ in report.COLUMNS]
    checked = 0
    for row in res["regimes"]:
        for key, m in row["measures"].items():
            if any(v is None for v in m["values"]):
                continue
            mean, lo, hi = _t_interval(m["values"])
            scale = max(1.0, abs(mean))
            assert m["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12 * scale), (row["regime"], key)
            assert m["lo"] == pytest.approx(lo, rel=1e-9, abs=1e-9 * scale), (row["regime"], key)
            assert m["hi"] == pytest.approx(hi, rel=1e-9, abs=1e-9 * scale), (row["regime"], key)
            assert row[key] == m["mean"]
            checked += 1
        # The printed cell: "mean ± half-width", each rounded as the column's format says.
        if row["kind"] == "sweep":
            continue
        line = next(x for x in lines[header + 2 :] if x.startswith(row["label"] + "  "))
        cells = [c for c in line[len(row["label"]) :].split("  ") if c.strip()]
        assert len(cells) == len(cols) - 1, line
        for (key, _, fmt), cell in zip(report.COLUMNS[1:], cells):
            m = row["measures"].get(key)
            if m is None or m["mean"] is None:
                continue
            mean, lo, hi = _t_interval(m["values"])
            assert cell.strip() == f"{fmt.format(mean)} ± {fmt.format(hi - mean)}", (row["regime"], key, cell)
    assert checked > 100


def test_csv_holds_means_and_bounds(procs):
    base, result = procs
    code, _, err = result("a")
    assert code == 0, err[-3000:]
    out_dir = base / "a"
    res = json.loads((out_dir / "results.json").read_text())
    with open(out_dir / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["regime"] for t in table] == [r["regime"] for r in res["regimes"]]
    for t, r in zip(table, res["regimes"]):
        for key in ("test_acc", "val_loss", "zero_frac"):
            m = r["measures"][key]
            assert float(t[key]) == pytest.approx(m["mean"])
            assert float(t[f"{key}_lo"]) == pytest.approx(m["lo"])
            assert float(t[f"{key}_hi"]) == pytest.approx(m["hi"])
        assert int(t["seeds"]) == SEEDS


def test_history_and_derived_regimes_are_consistent(procs):
    base, result = procs
    code, _, err = result("a")
    assert code == 0, err[-3000:]
    out_dir = base / "a"
    res = json.loads((out_dir / "results.json").read_text())
    h = np.load(out_dir / "history.npz")
    rows = {r["regime"]: r for r in res["regimes"]}
    names = list(h["members"])
    for r in range(SEEDS):
        i = names.index(f"none#{r}")
        # Early stopping: the snapshot is the first evaluation with the lowest validation loss.
        best = int(h["step"][np.argmin(h["val_loss"][i])])
        assert rows["early_stopping"]["measures"]["best_step"]["values"][r] == best
        assert rows["none"]["measures"]["steps_to_best"]["values"][r] == best
        hit = np.flatnonzero(h["train_loss"][i] <= res["settings"]["target_loss"])
        expected = int(h["step"][hit[0]]) if hit.size else None
        assert rows["none"]["measures"]["steps_to_target"]["values"][r] == expected
    # MC-dropout: the curve's last point uses the same masks as the regime's row, per seed.
    curve = res["mc_dropout_curve"]
    assert curve["num_masks"] == [1, 2, 4]
    for r in range(SEEDS):
        last = curve["test_acc"][-1]["values"][r]
        assert abs(last - rows["mc_dropout"]["measures"]["test_acc"]["values"][r]) <= 1.0 / res["data"]["test"] + 1e-12
    # ES vs gradient descent ran as a section, with per-seed values and a verdict per sigma.
    es = res["es_minima"]
    gd = es["methods"]["gradient descent"]["final_loss"]
    assert len(gd["values"]) == es["config"]["seeds"] and gd["lo"] <= gd["mean"] <= gd["hi"]
    assert all("verdict" in e for n, e in es["methods"].items() if n != "gradient descent")


def test_an_ensembles_curve_is_labelled_as_its_members_curves(procs, monkeypatch):
    # The bagging row reports the averaged prediction's loss; the curve drawn for it is the mean
    # of its members' own loss curves, which is higher: the label must not pass it off as the row.
    import jaxreg.plots as plots

    base, result = procs
    code, _, err = result("a")
    assert code == 0, err[-3000:]
    out_dir = base / "a"
    res = json.loads((out_dir / "results.json").read_text())
    seen = {}
    monkeypatch.setattr(plots, "curves", lambda path, step, series, **kw: seen.setdefault("curves", series) and path)
    monkeypatch.setattr(plots, "overlay", lambda path, step, series, **kw: seen.setdefault("overlay", series) and path)
    plots.draw_run(str(out_dir), only={"curves", "val_overlay"})
    with np.load(out_dir / "history.npz") as h:
        members, val_loss = [str(m) for m in h["members"]], h["val_loss"]
    rows = {r["regime"]: r for r in res["regimes"]}
    bag, none = rows["bagging"], rows["none"]
    label = f"{bag['label']}: its members' own curves"
    assert label in seen["curves"] and label in seen["overlay"] and bag["label"] not in seen["overlay"]
    assert none["label"] in seen["overlay"]  # one member per seed: the plain label
    # ... and it is the members' mean, per seed (bagging's members are named "bagging/<member>#<seed>").
    first_seed = sorted({m.rsplit("#", 1)[1] for m in bag["members"]})[0]
    idx = [members.index(m) for m in bag["members"] if m.rsplit("#", 1)[1] == first_seed]
    np.testing.assert_allclose(seen["overlay"][label][0], val_loss[idx].mean(axis=0), rtol=1e-6)


def _synthetic_results(acc_l2, *, seeds=3):
    """Results as `jaxreg run` writes them, with every measure equal across regimes and seeds
    except l2's test accuracy (``acc_l2``, one value per seed) against none's 0.90, 0.91, 0.92."""
    from jaxreg.experiments import evaluate, report

    base = {k: [0.5 + 0.01 * r for r in range(seeds)] for k in evaluate.MEASURES}
    base["test_acc"] = [0.90 + 0.01 * r for r in range(seeds)]
    regimes = []
    for name in ["none", *report.REGULARIZED]:
        vals = dict(base, test_acc=list(acc_l2)) if name == "l2" else base
        measures = {k: evaluate.summarize(v) for k, v in vals.items()}
        regimes.append(
            {
                "regime": name,
                "label": name,
                "kind": "ensemble" if name == "bagging" else "single",
                "members": [f"{name}#{r}" for r in range(seeds)],
                "num_masks": 4,
                "measures": measures,
                **{k: m["mean"] for k, m in measures.items()},
            }
        )
    return {"regimes": regimes, "num_steps": 100, "settings": {"target_loss": 0.05}}


def _accuracy_finding(results):
    from jaxreg.experiments import report

    return next(line for line in report.findings(results) if line.startswith("test accuracy"))


def test_a_finding_says_higher_only_when_the_paired_interval_excludes_zero():
    scipy_stats = pytest.importorskip("scipy.stats")
    none = np.asarray([0.90, 0.91, 0.92])
    # l2 = none + 0.010 +- 0.001: the paired difference's interval lies above 0 -> "higher".
    clear = none + np.asarray([0.009, 0.010, 0.011])
    line = _accuracy_finding(_synthetic_results(clear))
    assert "higher for l2 (+0.010 [" in line and "no difference detected at this size (n = 3) for" in line
    assert "l2" not in line.split("no difference detected")[1]
    # The same mean difference with noise: the interval covers 0 (scipy's t says so) -> no claim.
    noisy = none + np.asarray([-0.010, 0.010, 0.030])
    d = noisy - none
    half = scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert d.mean() - half < 0 < d.mean() + half
    line = _accuracy_finding(_synthetic_results(noisy))
    assert "higher" not in line
    assert f"no difference detected at this size (n = 3) for l2 (+0.010 [{d.mean() - half:+.3f}, " in line
    # Lower when the interval lies below 0.
    line = _accuracy_finding(_synthetic_results(none - np.asarray([0.009, 0.010, 0.011])))
    assert line.split(": ", 1)[1].startswith("lower for l2 (-0.010 [")


def test_the_same_difference_in_every_seed_is_not_called_and_the_header_says_what_intervals_cover():
    # Steps counted on the evaluation grid gave +10 for each of 3 seeds: a zero-width t interval
    # ("slower, +10 [+10, +10]") with no variance estimate behind it.
    from jaxreg.experiments import report

    none = np.asarray([0.90, 0.91, 0.92])
    results = _synthetic_results(none + 0.0)
    rows = {r["regime"]: r for r in results["regimes"]}
    rows["none"]["measures"]["test_acc"]["values"] = [0.5, 0.25, 0.75]  # exact in binary: d = 0.125
    rows["l2"]["measures"]["test_acc"]["values"] = [0.625, 0.375, 0.875]
    line = _accuracy_finding(results)
    assert "higher for l2" not in line
    assert "the same difference in every seed, no spread to give an interval (n = 3) for l2 (+0.125)" in line
    # 5 more of 1,097 test digits right in each seed: the differences differ in the last bits
    # (0.004557885141294515 and ...404), and the t interval of width 1e-15 called it "higher".
    rows["none"]["measures"]["test_acc"]["values"] = [955 / 1097, 946 / 1097, 990 / 1097]
    rows["l2"]["measures"]["test_acc"]["values"] = [960 / 1097, 951 / 1097, 995 / 1097]
    d = np.subtract([960, 951, 995], [955, 946, 990]) / 1097
    assert np.ptp(np.divide([960, 951, 995], 1097) - np.divide([955, 946, 990], 1097)) > 0 and np.ptp(d) == 0
    line = _accuracy_finding(results)
    assert "higher for l2" not in line
    assert "the same difference in every seed, no spread to give an interval (n = 3) for l2 (+0.005)" in line
    # and a difference of the values' rounding in every seed is none (a zero-width interval called it)
    rows["l2"]["measures"]["test_acc"]["values"] = list(np.nextafter([955 / 1097, 946 / 1097, 990 / 1097], 1))
    line = _accuracy_finding(results)
    assert "higher for l2" not in line and "no difference detected at this size (n = 3) for l2" in line
    header = report.findings(results)[0]
    assert "no correction" in header and "not that of the fixed split" in header


def test_the_l2_sweep_finding_compares_the_chosen_scale_on_test_data():
    from jaxreg.experiments import evaluate, report

    # Chosen by validation accuracy, where it is far ahead; on test data it is not different.
    results = _synthetic_results(np.asarray([0.90, 0.91, 0.92]))
    values = {k: list(m["values"]) for k, m in results["regimes"][0]["measures"].items()}
    values["val_acc"] = [v + 0.1 for v in values["val_acc"]]
    measures = {k: evaluate.summarize(v) for k, v in values.items()}
    results["regimes"].append(
        {"regime": "l2=1e-03", "kind": "sweep", "hyper": {"l2": 1e-3}, "measures": measures, "val_acc": 0.6}
    )
    line = next(x for x in report.findings(results) if x.startswith("L2 sweep"))
    assert "its test accuracy vs none: no difference detected" in line, line


def test_masks_needed_reads_the_paired_intervals():
    from jaxreg.experiments import evaluate, report

    ks = [1, 2, 4, 8, 16]
    # Per-seed accuracy by K: K = 1, 2 clearly below K = 16; from K = 4 on within noise of it.
    acc = np.asarray(
        [[0.80, 0.85, 0.910, 0.921, 0.920], [0.81, 0.86, 0.925, 0.919, 0.922], [0.79, 0.84, 0.918, 0.925, 0.921]]
    )
    curve = {"num_masks": ks, "test_acc": [evaluate.summarize(acc[:, j]) for j in range(len(ks))]}
    need = report.masks_needed(curve)
    assert need["paired"] == 4
    # By hand: K = 2's paired difference to K = 16 excludes 0, K = 4's covers it.
    for j, covers in ((1, False), (2, True)):  # columns of K = 2 and K = 4
        diff = jaxreg.stats.paired_difference(acc[:, j], acc[:, -1])
        assert (diff.lo <= 0 <= diff.hi) == covers


def test_masks_needed_when_no_smaller_k_matches_the_largest_says_so():
    """The next smaller K differs from the largest: the finding compared K = 8 with itself ("from
    K = 8 on, no difference ... to K = 8"), as if K = 8 had been shown to be enough."""
    from jaxreg.experiments import evaluate, report

    ks = [1, 2, 4, 8]
    acc = np.asarray([[0.80, 0.85, 0.88, 0.920], [0.81, 0.86, 0.89, 0.922], [0.79, 0.84, 0.87, 0.921]])
    curve = {"num_masks": ks, "test_acc": [evaluate.summarize(acc[:, j]) for j in range(len(ks))]}
    assert report.masks_needed(curve)["paired"] == 8
    for j in range(3):  # by hand: each smaller K's paired difference to K = 8 excludes 0
        diff = jaxreg.stats.paired_difference(acc[:, j], acc[:, -1])
        assert not diff.lo <= 0 <= diff.hi
    results = _synthetic_results([0.90, 0.91, 0.92])
    results["mc_dropout_curve"] = curve
    (line,) = [line for line in report.findings(results) if line.startswith("MC-dropout masks needed")]
    assert line.startswith("MC-dropout masks needed: K = 4 already differs in test accuracy from K = 8")
    assert "no K below 8 to be enough" in line and "from K = 8 on" not in line


def test_a_called_difference_prints_a_small_bound_with_the_digits_that_show_it():
    scipy_stats = pytest.importorskip("scipy.stats")
    none = np.asarray([0.90, 0.91, 0.92])
    d = np.asarray([0.0004, 0.0005, 0.0006])  # lower bound about +0.00025: "+0.000" at 3 digits
    half = scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    line = _accuracy_finding(_synthetic_results(none + d))
    assert "higher for l2 (" in line
    text = line.split("higher for l2 (", 1)[1].split(")", 1)[0]
    mean_t, bounds = text.split(" [")
    lo_t, hi_t = bounds.rstrip("]").split(", ")
    digits = len(lo_t.split(".")[1])
    assert float(lo_t) > 0, line
    for t, ref in ((mean_t, d.mean()), (lo_t, d.mean() - half), (hi_t, d.mean() + half)):
        assert len(t.split(".")[1]) == digits and abs(float(t) - ref) <= 0.5 * 10.0**-digits, (t, ref)


def test_a_difference_that_rounds_to_zero_prints_unsigned():
    from jaxreg.experiments import report

    # A mean of exactly 0 has no sign; a tiny nonzero one gets the digits that show its sign.
    assert report._diff_text(jaxreg.stats.Interval(0.0, -0.004, 0.004)) == "0.000 [-0.004, +0.004]"
    assert report._diff_text(jaxreg.stats.Interval(-0.0002, -0.004, 0.004)) == "-0.0002 [-0.0040, +0.0040]"
    assert report._diff_text(jaxreg.stats.Interval(1e-9, -0.004, 0.004)) == "0.00000 [-0.00400, +0.00400]"


def test_one_seed_claims_no_interval_and_no_mask_count():
    from jaxreg.experiments import evaluate, report

    curve = {"num_masks": [1, 2, 4], "test_acc": [evaluate.summarize([a]) for a in (0.80, 0.85, 0.90)]}
    assert report.masks_needed(curve) == {"paired": None, "overlap": None}
    results = _synthetic_results([0.95], seeds=1)
    results["mc_dropout_curve"] = curve
    lines = report.findings(results)
    assert "no intervals" in lines[0] and "±" not in lines[0]
    assert not any(line.startswith("MC-dropout masks needed") for line in lines)
    assert not any(v in _accuracy_finding(results) for v in ("higher for", "lower for"))


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if not k.endswith("_s")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def test_same_seed_gives_the_same_numbers(procs):
    base, result = procs
    for name in ("a", "b"):
        code, _, err = result(name)
        assert code == 0, err[-3000:]
    a = _strip_times(json.loads((base / "a" / "results.json").read_text()))
    b = _strip_times(json.loads((base / "b" / "results.json").read_text()))
    assert a == b
    pa, pb = _load_params(base / "a" / "params" / "l1.msgpack"), _load_params(base / "b" / "params" / "l1.msgpack")
    for layer in pa:
        for name in pa[layer]:
            np.testing.assert_array_equal(pa[layer][name], pb[layer][name])


def test_sweep_trains_one_member_per_strength(procs):
    base, result = procs
    code, out, err = result("sweep")
    assert code == 0, err[-3000:]
    res = json.loads((base / "s" / "sweep.json").read_text())
    assert res["regularizer"] == "l1"
    np.testing.assert_allclose(res["values"], np.geomspace(0.01, 1.0, 3))
    assert [r["name"] for r in res["rows"]] == ["none", "l1=0.01", "l1=0.1", "l1=1"]
    assert res["rows"][0]["zero_frac"] == 0.0
    zeros = [r["zero_frac"] for r in res["rows"][1:]]
    assert zeros == sorted(zeros) and zeros[-1] > 0.0  # a larger L1 scale never gives fewer zeros here
    assert (base / "s" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "l1=0.1" in out
    assert res["num_steps"] == 40 and res["replicates"] == 2
    # test accuracy over the replicates: the mean and scipy's 95% Student t interval, in JSON and CSV
    csv_rows = list(csv.DictReader((base / "s" / "sweep.csv").open()))
    for row, csv_row in zip(res["rows"], csv_rows):
        accs = np.array(row["measures"]["test_acc"]["values"])
        lo, hi = scipy.stats.t.interval(0.95, len(accs) - 1, loc=accs.mean(), scale=scipy.stats.sem(accs))
        if accs.std() == 0:  # identical replicates: a zero-width interval (scipy gives NaN)
            lo = hi = accs.mean()
        np.testing.assert_allclose([row["test_acc"], row["test_acc_lo"], row["test_acc_hi"]], [accs.mean(), lo, hi])
        np.testing.assert_allclose(
            [float(csv_row[k]) for k in ("test_acc", "test_acc_lo", "test_acc_hi", "test_nll")],
            [row["test_acc"], row["test_acc_lo"], row["test_acc_hi"], row["test_nll"]],
        )
    assert err.strip().splitlines() == [
        "jaxreg sweep: warning: --steps 35 rounded up to 40 (a whole number of evaluations, one every 10 steps)"
    ]


def test_bad_data_file_exits_2_with_one_line(procs):
    _, result = procs
    code, _out, err = result("bad")
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    # a text file: named as not an archive (numpy's own message spoke of pickles and allow_pickle)
    assert len(lines) == 1 and lines[0].startswith("jaxreg run: error: "), err
    assert lines[0].endswith("bad.npz is not an .npz archive (a zip of arrays x and y, as np.savez writes)"), err


def _bad(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: str(t / "missing.npz"), "data file not found"),
        (lambda t: _bad(t, "k.npz", x=np.zeros((60, 2))), "lacks array(s) y"),
        (lambda t: _bad(t, "s.npz", x=np.zeros((60, 2)), y=np.zeros(59, int)), "same number of examples"),
        (lambda t: _bad(t, "d.npz", x=np.zeros((60, 2, 2)), y=np.zeros(60, int)), "x must be a 2-d array"),
        (lambda t: _bad(t, "l.npz", x=np.zeros((60, 2)), y=np.linspace(0, 2, 60)), "labels y must be integers"),
    ],
)
def test_bad_data_in_process(tmp_path, capsys, make, message):
    assert cli.main(["run", "--data", make(tmp_path), "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxreg run: error: ") and message in lines[0], captured.err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize(
    "command, flags",
    [
        ("run", ["--quick", "--mc-samples", "--seeds", "default 3; with --quick 3", "95% t interval"]),
        ("sweep", ["--reg", "--min", "--max", "--num", "default 600; with --quick 200", "(default l2)"]),
    ],
)
def test_help_lists_the_options_and_their_defaults(capsys, command, flags):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag in ["--seed", "--out", "--steps", "--members", "--data", "--quick", "(default 0)", *flags]:
        assert flag in text


def test_bench_help_calls_itself_jaxreg_bench(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.startswith("usage: jaxreg bench ")
    for flag in ["--quick", "--tiny", "--json", "--only", "--seed", "--gpu", "(default 0)"]:
        assert flag in text


# One case per bad argument: exit 2 and one line on stderr, in jaxreg's words, naming the
# command and the argument, with where to find the help.
BAD_ARGUMENTS = [
    (["run", "--steps", "0"], "jaxreg run: error: argument --steps: expected an integer >= 1, got '0'"),
    (["run", "--steps", "ten"], "jaxreg run: error: argument --steps: expected an integer >= 1, got 'ten'"),
    (["run", "--seed", "-1"], "jaxreg run: error: argument --seed: expected an integer in [0, 4294967294], got '-1'"),
    (
        ["run", "--seed", "4294967295"],
        "jaxreg run: error: argument --seed: expected an integer in [0, 4294967294], got '4294967295'",
    ),
    (["run", "--members", "-3"], "jaxreg run: error: argument --members: expected an integer >= 1, got '-3'"),
    (["run", "--seeds", "0"], "jaxreg run: error: argument --seeds: expected an integer >= 1, got '0'"),
    (["run", "--seeds", "-1"], "jaxreg run: error: argument --seeds: expected an integer >= 1, got '-1'"),
    (["run", "--seeds", "2.5"], "jaxreg run: error: argument --seeds: expected an integer >= 1, got '2.5'"),
    (["run", "--seeds", "three"], "jaxreg run: error: argument --seeds: expected an integer >= 1, got 'three'"),
    (["run", "--train-size", "1.5"], "jaxreg run: error: argument --train-size: expected a count or a fraction"),
    (["run", "--train-size", "0"], "jaxreg run: error: argument --train-size: expected a count >= 1"),
    (["run", "--dataset", "mnist"], "jaxreg run: error: argument --dataset: invalid choice: 'mnist'"),
    (["run", "--nosuch"], "jaxreg: error: unrecognized arguments: --nosuch"),
    (["sweep", "--reg", "l7"], "jaxreg sweep: error: argument --reg: invalid choice: 'l7'"),
    (["sweep", "--min", "abc"], "jaxreg sweep: error: argument --min: expected a number, got 'abc'"),
    (["sweep", "--max", "inf"], "jaxreg sweep: error: argument --max: expected a finite number, got 'inf'"),
    (["bench", "--only", "nosuch"], "jaxreg bench: error: argument --only: unknown section(s) nosuch; choose from"),
    (
        ["bench", "--seed", "-2"],
        "jaxreg bench: error: argument --seed: expected an integer in [0, 4294967294], got '-2'",
    ),
    (
        ["bench", "--seed", str(2**63)],
        f"jaxreg bench: error: argument --seed: expected an integer in [0, 4294967294], got '{2**63}'",
    ),
    (["bench", "--mode", "huge"], "jaxreg bench: error: argument --mode: invalid choice: 'huge'"),
    (["nosuch"], "jaxreg: error: argument {run,sweep,bench}: invalid choice: 'nosuch'"),
]


@pytest.mark.parametrize("argv, start", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_argument_exits_2_with_one_line(capsys, argv, start):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), captured.err
    assert lines[0].endswith("--help')") and captured.out == ""


def test_sweep_bad_range_exits_2_with_one_line(capsys, tmp_path):
    assert cli.main(["sweep", "--reg", "l2", "--min", "0", "--max", "1", "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "jaxreg sweep: error: a log-spaced range needs min > 0, got min = 0.0; pass --linear for a range from 0."
    ]


@pytest.mark.parametrize("missing", ["sklearn", "matplotlib"])
def test_run_without_the_cli_extra_names_it_and_exits_2(monkeypatch, capsys, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # importlib.util.find_spec -> None: "not installed"
    assert cli.main(["run", "--quick"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    name = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}[missing]
    assert lines == [
        f"jaxreg: error: the command needs the 'cli' extra ({name} not installed): pip install \"jaxreg[cli]\""
    ]


def test_bench_gpu_without_a_gpu_is_one_line_and_exit_0(capsys):
    import jax

    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present: --gpu runs the benchmarks")
    assert cli.main(["bench", "--gpu", "--tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == ["jaxreg bench: --gpu: no GPU (JAX's default backend is cpu); skipped"]
    assert captured.out == ""


def test_bench_without_benchmarks_exits_2(monkeypatch, tmp_path, capsys):
    fake = tmp_path / "site" / "jaxreg" / "__init__.py"
    fake.parent.mkdir(parents=True)
    monkeypatch.setattr(jaxreg, "__file__", str(fake))
    assert cli.main(["bench", "--tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxreg bench: error: the benchmarks are not installed")
    assert str(tmp_path) in err[0]


@pytest.mark.parametrize("kind", ["numpy", "xla"])
def test_out_of_memory_is_one_line_naming_the_sizes_and_exits_2(monkeypatch, capsys, tmp_path, kind):
    import jax

    from jaxreg.experiments import run as job

    def run(*args, **kwargs):
        if kind == "numpy":
            raise MemoryError("Unable to allocate 954. GiB for an array with shape (64, 2000000000)")
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8000000000 bytes.\nmore")

    monkeypatch.setattr(job, "run", run)
    argv = ["run", "--quick", "--hidden", "2000000000", "--members", "3", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("jaxreg run: error: out of memory with --hidden 2000000000, --members 3: ")
    assert ("954. GiB" if kind == "numpy" else "RESOURCE_EXHAUSTED") in lines[0]


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch, tmp_path):
    from jaxreg.experiments import run as job

    def run(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(job, "run", run)
    with pytest.raises(RuntimeError, match="something else"):
        cli.main(["run", "--quick", "--out", str(tmp_path / "o")])
