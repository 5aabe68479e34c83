"""End-to-end tests of the `jaxreg` command and the examples, each in a subprocess.

The runs use a setting smaller than --quick (40 steps, width 32) so that the whole file takes
well under a minute and a half; they start together and share the two cores.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.serialization
import numpy as np
import pytest

import jaxreg
from jaxreg import cli

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--steps", "40", "--hidden", "32", "--members", "2", "--mc-samples", "4", "--no-progress"]
TINY_SWEEP = ["--quick", "--hidden", "32", "--no-progress"]
EXAMPLES = ["weight_decay_chain", "l1_proximal", "sweep_vmap", "activity_sow"]


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
        **{name: _start([str(ROOT / "examples" / f"{name}.py")], base, ENV) for name in EXAMPLES},
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
    for name in ["results.json", "results.csv", "history.npz", "data.npz"]:
        assert (out_dir / name).is_file(), name
    res = json.loads((out_dir / "results.json").read_text())
    assert set(res["figures"]) == {"curves", "l2_sweep", "weights", "mc_dropout"}
    for fig in res["figures"].values():
        assert (out_dir / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
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
    assert sum(r["kind"] == "sweep" for r in res["regimes"]) == 5
    # The table is printed: one line per regime, starting with its name.
    lines = out.splitlines()
    for regime in names:
        assert any(line.split()[:1] == [regime] for line in lines), regime


def test_json_figures_match_a_recomputation_from_saved_params(procs):
    base, result = procs
    code, _, err = result("a")
    assert code == 0, err[-3000:]
    out_dir = base / "a"
    res = json.loads((out_dir / "results.json").read_text())
    d = np.load(out_dir / "data.npz")
    n_test = len(d["y_test"])
    for row in res["regimes"]:
        params = _load_params(out_dir / row["params_file"])
        kernels = [params[k]["kernel"] for k in params]
        sigmoid = row["activation"] == "sigmoid"
        if row["kind"] == "ensemble":
            # Stacked members: the ensemble predicts with the mean of the members' probabilities.
            m = kernels[0].shape[0]
            members = [{k: {n: v[j] for n, v in layer.items()} for k, layer in params.items()} for j in range(m)]
            probs = {p: np.mean([_mlp_probs(q, d[f"x_{p}"]) for q in members], axis=0) for p in ("train", "test")}
            zero = np.mean(
                [sum(int(np.sum(k[j] == 0)) for k in kernels) / sum(k[j].size for k in kernels) for j in range(m)]
            )
        else:
            zero = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
            # MC-dropout's probabilities are random; its weights are the dropout net's.
            stochastic = row["kind"] == "mc_dropout"
            probs = None if stochastic else {p: _mlp_probs(params, d[f"x_{p}"], sigmoid) for p in ("train", "test")}
        assert row["zero_frac"] == pytest.approx(zero, abs=1e-12), row["regime"]
        if probs is None:
            continue
        acc = np.mean(probs["test"].argmax(-1) == d["y_test"])
        # float32 in the run vs float64 here: at most one near-tie may flip.
        assert abs(acc - row["test_acc"]) <= 1.0 / n_test + 1e-12, (row["regime"], acc, row["test_acc"])
        assert _nll(probs["train"], d["y_train"]) == pytest.approx(row["train_loss"], rel=1e-3, abs=1e-5)
        assert row["gap"] == pytest.approx(row["val_loss"] - row["train_loss"], abs=1e-9)
    rows = {r["regime"]: r for r in res["regimes"]}
    # L1 (proximal) gives exact zeros; without a penalty none appear.
    assert rows["l1"]["zero_frac"] > 0.0
    assert rows["none"]["zero_frac"] == 0.0
    # Max-norm: no unit's incoming weight vector exceeds the bound.
    mn = _load_params(out_dir / rows["max_norm"]["params_file"])
    bound = rows["max_norm"]["hyper"]["max_norm"]
    for layer in mn.values():
        assert np.max(np.linalg.norm(layer["kernel"], axis=0)) <= bound * (1 + 1e-5)


def test_history_and_derived_regimes_are_consistent(procs):
    base, result = procs
    code, _, err = result("a")
    assert code == 0, err[-3000:]
    out_dir = base / "a"
    res = json.loads((out_dir / "results.json").read_text())
    h = np.load(out_dir / "history.npz")
    rows = {r["regime"]: r for r in res["regimes"]}
    i = list(h["members"]).index("none")
    # Early stopping: the snapshot is the first evaluation with the lowest validation loss.
    assert rows["early_stopping"]["best_step"] == int(h["step"][np.argmin(h["val_loss"][i])])
    hit = np.flatnonzero(h["train_loss"][i] <= res["settings"]["target_loss"])
    expected = int(h["step"][hit[0]]) if hit.size else None
    assert rows["none"]["steps_to_target"] == expected
    # MC-dropout: the curve's last point uses the same masks as the regime's row.
    curve = res["mc_dropout_curve"]
    assert curve["num_masks"] == [1, 2, 4]
    assert abs(curve["test_acc"][-1] - rows["mc_dropout"]["test_acc"]) <= 1.0 / res["data"]["test"] + 1e-12
    # The CSV holds the JSON's numbers.
    with open(out_dir / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["regime"] for t in table] == [r["regime"] for r in res["regimes"]]
    for t, r in zip(table, res["regimes"]):
        assert float(t["test_acc"]) == pytest.approx(r["test_acc"])
        assert float(t["zero_frac"]) == pytest.approx(r["zero_frac"])


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
    assert res["num_steps"] == 40
    assert err.strip().splitlines() == [
        "jaxreg sweep: warning: --steps 35 rounded up to 40 (a whole number of evaluations, one every 10 steps)"
    ]


def test_bad_data_file_exits_2_with_one_line(procs):
    _, result = procs
    code, _out, err = result("bad")
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxreg run: error: cannot read"), err


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
        ("run", ["--quick", "--mc-samples", "default 1000; with --quick 300", "default 64; with --quick 16"]),
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
    (["run", "--seed", "-1"], "jaxreg run: error: argument --seed: expected an integer >= 0, got '-1'"),
    (["run", "--members", "-3"], "jaxreg run: error: argument --members: expected an integer >= 1, got '-3'"),
    (["run", "--train-size", "1.5"], "jaxreg run: error: argument --train-size: expected a count or a fraction"),
    (["run", "--train-size", "0"], "jaxreg run: error: argument --train-size: expected a count >= 1"),
    (["run", "--dataset", "mnist"], "jaxreg run: error: argument --dataset: invalid choice: 'mnist'"),
    (["run", "--nosuch"], "jaxreg: error: unrecognized arguments: --nosuch"),
    (["sweep", "--reg", "l7"], "jaxreg sweep: error: argument --reg: invalid choice: 'l7'"),
    (["sweep", "--min", "abc"], "jaxreg sweep: error: argument --min: expected a number, got 'abc'"),
    (["sweep", "--max", "inf"], "jaxreg sweep: error: argument --max: expected a finite number, got 'inf'"),
    (["bench", "--only", "nosuch"], "jaxreg bench: error: argument --only: unknown section(s) nosuch; choose from"),
    (["bench", "--seed", "-2"], "jaxreg bench: error: argument --seed: expected an integer >= 0, got '-2'"),
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


def _facts(out):
    facts = {}
    for line in out.splitlines():
        key, _, value = line.partition(": ")
        facts[key] = value
    return facts


def test_example_weight_decay_chain(procs):
    code, out, err = procs[1]("weight_decay_chain")
    assert code == 0, err[-2000:]
    f = _facts(out)
    assert float(f["decoupled_vs_adamw_max_abs_diff"]) < 1e-6  # decoupled chain == optax.adamw
    assert float(f["coupled_vs_adamw_max_abs_diff"]) > 1e-2  # coupled is a different method


def test_example_l1_proximal(procs):
    code, out, err = procs[1]("l1_proximal")
    assert code == 0, err[-2000:]
    f = _facts(out)
    assert int(f["proximal_exact_zeros"]) > 0
    assert int(f["subgradient_exact_zeros"]) == 0
    assert f["same_support_as_sklearn"] == "True"
    assert float(f["max_abs_diff_to_sklearn"]) < 1e-3


def test_example_sweep_vmap(procs):
    code, out, err = procs[1]("sweep_vmap")
    assert code == 0, err[-2000:]
    f = _facts(out)
    assert f["traces"] == "1"  # eight scales, two calls, one trace
    assert float(f["max_abs_diff_to_closed_form"]) < 1e-4
    norms = json.loads(f["weight_norms"])
    assert norms == sorted(norms, reverse=True)


def test_example_activity_sow(procs):
    code, out, err = procs[1]("activity_sow")
    assert code == 0, err[-2000:]
    f = _facts(out)
    assert float(f["l1_mean_activation"]) < 0.5 * float(f["plain_mean_activation"])
    assert float(f["l1_zero_activations"]) > float(f["plain_zero_activations"])
