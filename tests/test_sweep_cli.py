"""``jaxreg sweep --reg lr / wd / b1``: optimizer hyperparameters swept as one program.

Each swept member is checked against an independent computation: plain ``optax.adam`` with the
member's value as a Python float, on the same MLP, data and initialization, full batch. The
bad-range checks go through ``jaxreg.cli.main`` (one line on stderr, exit status 2).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import cli, training
from jaxreg.experiments import files
from jaxreg.experiments import regimes as R
from jaxreg.experiments import sweep as sw

EPS = float(np.finfo(np.float32).eps)
SEED = 0
STEPS = 10
HIDDEN = 8


@pytest.fixture(scope="module")
def split():
    return files.load_data("digits", seed=SEED, train_size=120, val_size=60)


def _sweep(reg, values, split, out, monkeypatch):
    """Runs ``sw.sweep`` and returns its results with the members' trained params (from R.train)."""
    captured = {}
    train = R.train

    def spy(*args, **kwargs):
        captured["trained"] = train(*args, **kwargs)
        return captured["trained"]

    monkeypatch.setattr(R, "train", spy)
    compiled = training._run_chunk._cache_size()
    res = sw.sweep(
        reg,
        values,
        split,
        str(out),
        seed=SEED,
        steps=STEPS,
        hidden=HIDDEN,
        eval_every=5,
        progress=False,
        echo=lambda *a: None,
    )
    return res, captured["trained"], training._run_chunk._cache_size() - compiled


def _optax_run(split, opt):
    """``STEPS`` full-batch steps of ``opt`` alone: the member's computation without the sweep."""
    sizes = (split.num_features, HIDDEN, HIDDEN, split.num_classes)
    p = jax.tree.map(jnp.asarray, R.init_params(SEED, 0, sizes))
    x, y = jnp.asarray(split.x_train), jnp.asarray(split.y_train)

    def loss(params):
        logits = R.apply(params, x, jnp.zeros([], jnp.float32))
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    @jax.jit
    def run(p):
        with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam: float ** int32
            state = opt.init(p)
        for _ in range(STEPS):
            g = jax.grad(loss)(p)
            with jax.numpy_dtype_promotion("standard"):  # as above
                u, state = opt.update(g, state, p)
            p = optax.apply_updates(p, u)
        return p

    return run(p)


def _member(tree, i):
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def _max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_lr_sweep_members_are_separate_optax_adam_runs_in_one_program(split, tmp_path, monkeypatch):
    lrs = [3e-4, 3e-3]
    res, trained, compiles = _sweep("lr", lrs, split, tmp_path, monkeypatch)
    assert compiles == 1 and trained.programs == 1  # every value in one compiled chunk program
    assert [r["name"] for r in res["rows"]] == ["none", "lr=0.0003", "lr=0.003"]
    assert res["regularizer"] == "lr" and res["values"] == lrs
    on_disk = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["strength"] for r in on_disk["rows"]] == [None, *lrs]
    # the settings that fix the numbers besides the values (--quick, --hidden) are in the file
    assert on_disk["model"]["sizes"] == [split.num_features, HIDDEN, HIDDEN, split.num_classes]
    assert on_disk["settings"]["hidden"] == [HIDDEN, HIDDEN] and on_disk["settings"]["eval_every"] == 5
    assert on_disk["settings"]["learning_rate"] == 1e-3 and on_disk["settings"]["steps"] == STEPS
    finals = []
    for i, lr in enumerate([1e-3, *lrs]):  # the baseline runs at the sweep's default learning rate
        want = _optax_run(split, optax.adam(lr))
        got = _member(trained.final, i)
        # The same arithmetic up to how XLA vectorizes the vmapped matmuls (float32 rounding of the
        # gradient); Adam normalizes the update, so each step adds at most ~lr of that rounding.
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            tol = STEPS * 4 * EPS * (np.max(np.abs(np.asarray(b))) + lr)
            np.testing.assert_allclose(a, b, rtol=0, atol=tol)
        finals.append(want)
    # not vacuous: the members' own learning rates move them far apart
    assert _max_diff(finals[1], finals[2]) > 1e3 * STEPS * 4 * EPS


@pytest.mark.slow  # a second compile of the sweep program (~10-20 s on 2 shared cores)
def test_b1_sweep_members_are_separate_optax_adam_runs(split, tmp_path, monkeypatch):
    b1s = [0.5, 0.99]
    res, trained, compiles = _sweep("b1", b1s, split, tmp_path, monkeypatch)
    assert compiles == 1 and trained.programs == 1
    assert [r["name"] for r in res["rows"]] == ["none", "b1=0.5", "b1=0.99"]
    lr = 1e-3
    finals = []
    for i, b1 in enumerate([R.ADAM_B1, *b1s]):
        want = _optax_run(split, optax.adam(lr, b1=b1))
        got = _member(trained.final, i)
        # The vmap rounding as for lr, plus b1 as a float32 leaf: 1 - b1 is computed from the
        # rounded b1 (relative error eps/2 * b1 / (1 - b1)), as is the bias correction 1 - b1**t
        # (at most t times that); each of the STEPS updates (size <= lr) carries it.
        leaf = STEPS * lr * 2 * STEPS * EPS * b1 / (1 - b1)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            tol = STEPS * 4 * EPS * (np.max(np.abs(np.asarray(b))) + lr) + leaf
            np.testing.assert_allclose(a, b, rtol=0, atol=tol)
        finals.append(want)
    assert _max_diff(finals[1], finals[2]) > 1e3 * STEPS * 4 * EPS


def test_a_run_without_b1_keeps_plain_adam():
    # No member sets b1: the chain is optax.scale_by_adam() itself (the numbers of `jaxreg run`),
    # not the sweepable one, whose 1 - b1 is computed from a float32 b1.
    plain = R.stack_hypers([R.Member("none"), R.Member("l2", l2=1e-2)], SEED, 4)
    assert np.all(np.isnan(np.asarray(plain.b1)))
    filled = plain._replace(lr=jnp.full((2,), 1e-3, jnp.float32), b1=jnp.full((2,), R.ADAM_B1, jnp.float32))
    h = jax.tree.map(lambda a: a[0], filled)
    params = {"dense0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros((3,))}}
    with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam: float ** int32
        adam_state = R._optimizer(h, h.lr).init(params)[0]
        leaf_state = R._optimizer(h, h.lr, b1_leaf=True).init(params)[0]
    assert isinstance(adam_state, optax.ScaleByAdamState)
    assert float(leaf_state.hyperparams["b1"]) == np.float32(R.ADAM_B1)


def test_wd_sweep_sets_the_decoupled_weight_decay():
    assert sw.REGULARIZERS["wd"][0] == "wd"
    values = sw.strengths(*sw.RANGES["wd"][:2], 3, log=True)
    np.testing.assert_allclose(values, [0.1, 1.0, 10.0], rtol=1e-12)


def test_help_lists_the_optimizer_hyperparameters_and_their_ranges(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("lr: learning rate (Adam)", "b1: Adam's b1", "wd: decoupled weight decay", "lr 0.0001..0.01"):
        assert text in out
    assert "b1 0.5..0.99" in out and "dropout, b1: linear" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--reg", "b1", "--min", "0.5", "--max", "1"], "Adam's b1 values must be in [0, 1), got 1.0."),
        (["--reg", "b1", "--min", "-0.5", "--max", "0.9"], "b1 strengths must be finite and >= 0, got -0.5."),
        (["--reg", "lr", "--min", "0", "--max", "0.01", "--linear"], "learning rates (lr) must be > 0, got 0.0."),
        (
            ["--reg", "lr", "--min", "0", "--max", "0.01"],
            "a log-spaced range needs min > 0, got min = 0.0; pass --linear for a range from 0.",
        ),
        (["--reg", "wd", "--min", "1", "--max", "0.1"], "the range must have min <= max, got min = 1.0, max = 0.1."),
        # Values are checked as they train, in float32 (a b1 of 1 gave NaN rows, exit 0).
        (
            ["--reg", "b1", "--min", "0.9", "--max", "0.99999999", "--linear"],
            "b1 value 0.99999999 is 1.0 in float32, which the sweep trains in.",
        ),
        (
            ["--reg", "l2", "--min", "1e38", "--max", "1e39", "--num", "2"],
            "l2 value 1e+39 is inf in float32, which the sweep trains in.",
        ),
        (
            ["--reg", "lr", "--min", "1e-50", "--max", "1e-46"],
            "lr value 1e-50 is 0.0 in float32, which the sweep trains in.",
        ),
        # One value has no range: --max was silently dropped.
        (
            ["--reg", "l2", "--num", "1", "--min", "0.01", "--max", "0.1"],
            "num = 1 takes one value, got min = 0.01, max = 0.1; give them equal.",
        ),
        # The same value num times, as rows of one name (replicates are --members).
        (
            ["--reg", "l2", "--num", "3", "--min", "0.001", "--max", "0.001"],
            "num = 3 values from min = max = 0.001 are one value 3 times; give a range, or --num 1 (and --members "
            "for replicates).",
        ),
    ],
)
def test_bad_ranges_exit_2_with_one_line(argv, message, capsys, tmp_path):
    out = tmp_path / "o"
    assert cli.main(["sweep", *argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"jaxreg sweep: error: {message}"]
    assert not out.exists()  # nothing written before the values are checked


@pytest.mark.parametrize("flag", ["--min", "--max", None])
def test_num_one_trains_the_value_given(flag, tmp_path, monkeypatch):
    # With --num 1 the one end given is the value (--max was dropped for the default --min).
    class Stop(Exception):
        pass

    def spy(reg, values, *args, **kwargs):
        raise Stop(values)

    monkeypatch.setattr(sw, "sweep", spy)
    with pytest.raises(Stop) as e:
        given = [flag, "0.02"] if flag else []
        cli.main(["sweep", "--num", "1", *given, "--out", str(tmp_path / "o"), "--no-progress"])
    assert e.value.args[0] == ([0.02] if flag else [sw.RANGES["l2"][0]])  # neither: the default --min


def test_value_names_tell_close_values_apart():
    values = sw.strengths(1e-3, 1.0001e-3, 3)
    names = sw.value_names("l2", values)
    assert len(set(names)) == 3 and names[0] == "l2=0.001"
    shown = [float(n.split("=")[1]) for n in names]
    assert shown == sorted(shown) and shown == pytest.approx(values, rel=1e-6)  # 6 digits tell them apart
    assert sw.value_names("wd", [0.1, 1.0, 10.0]) == ["wd=0.1", "wd=1", "wd=10"]


def test_check_values_names_the_domains():
    sw.check_values("lr", [1e-4, 1.0])
    sw.check_values("b1", [0.0, 0.999])
    with pytest.raises(ValueError, match=r"b1 values must be in \[0, 1\), got 1.5"):
        sw.check_values("b1", [0.9, 1.5])
    with pytest.raises(ValueError, match="lr strengths must be finite"):
        sw.check_values("lr", [float("nan")])


def test_the_sweep_figure_uses_a_log_axis_only_for_log_spaced_values():
    """--linear (and b1's evenly spaced default) with positive values was drawn on a log axis."""
    from jaxreg import plots

    def axis(low, high, num, log):
        return plots._log_axis({"values": sw.strengths(low, high, num, log=log), "spacing": "log" if log else "linear"})

    assert axis(1e-4, 1e-1, 4, True)
    assert not axis(0.5, 0.99, 4, False)  # positive, evenly spaced
    assert not axis(0.5, 0.99, 2, False)  # two values: evenly spaced too (the values alone cannot tell)
    assert not axis(0.0, 0.9, 4, False)  # 0 has no log
