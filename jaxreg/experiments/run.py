"""The main job: a grid of regularization regimes trained as one program, with tables and figures.

:func:`run` builds the members (one network per regime, a bagging ensemble and an L2 sweep),
trains them together (:func:`jaxreg.experiments.regimes.train`), derives the regimes that need
no extra training (early stopping: each member's best-validation snapshot; MC-dropout: the
dropout member predicted with many masks; bagging: the ensemble's mean probabilities), and
writes ``results.json``, ``results.csv``, ``history.npz``, ``data.npz`` and one ``params/*.npz``
per regime into the output folder; :func:`jaxreg.plots.draw_run` draws the figures from them
(plots sit above experiments in the module order).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg as jr
from jaxreg import data as jdata
from jaxreg.experiments import regimes as R

__all__ = [
    "COLUMNS",
    "FIGURES",
    "Settings",
    "findings",
    "format_table",
    "load_data",
    "load_params",
    "run",
    "save_params",
]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a run does; ``quick()`` and ``default()`` give the two presets."""

    seed: int = 0
    steps: int = 1000
    hidden: int = 256
    members: int = 8  # bagging ensemble size
    mc_samples: int = 64
    l2: float = 1e-3
    wd: float = 3.0
    l1: float = 0.3
    elastic: tuple[float, float] = (0.1, 1e-3)  # (l1, l2)
    max_norm: float = 0.5
    dropout: float = 0.5
    sweep: tuple[float, ...] = tuple(float(v) for v in np.geomspace(1e-5, 1e-1, 9))
    eval_every: int = 10
    learning_rate: float = 1e-3
    target_loss: float = 0.05
    saturation: float = 0.05
    progress: bool = True

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        base = dict(
            steps=300,
            hidden=128,
            members=4,
            mc_samples=16,
            sweep=tuple(float(v) for v in np.geomspace(1e-5, 1e-1, 5)),
            eval_every=10,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @classmethod
    def default(cls, **overrides: Any) -> Settings:
        return cls(**{k: v for k, v in overrides.items() if v is not None})


FIGURES = {
    "curves": "curves.png",
    "l2_sweep": "l2_sweep.png",
    "weights": "weights.png",
    "mc_dropout": "mc_dropout.png",
}
"""The figures of a run; :func:`jaxreg.plots.draw_run` draws them from the saved results."""

COLUMNS = (
    ("regime", "regime", "{}"),
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
    ("wall_s", "wall_s", "{:.1f}"),
)
"""(key in a row, table header, format) of the printed table and the CSV."""


def load_data(
    dataset: str = "digits",
    *,
    path: str | None = None,
    seed: int = 0,
    train_size: float | int | None = None,
    val_size: float | int | None = None,
) -> jdata.Split:
    """The run's split: digits 200 train / 500 validation / rest test, else 30% / 30% / 40%.

    Raises:
      jaxreg.data.DataError: for an unusable ``--data`` file or a regression data set.
    """
    small = dataset == "digits" and path is None
    train_size = train_size if train_size is not None else (200 if small else 0.3)
    val_size = val_size if val_size is not None else (500 if small else 0.3)
    if path is not None:
        return jdata.load_npz(path, seed=seed, train_size=train_size, val_size=val_size)
    split = jdata.load(dataset, seed=seed, train_size=train_size, val_size=val_size)
    if split.task != "classification":
        raise jdata.DataError(f"the experiments are for classification; {dataset!r} is a regression data set")
    return split


# --------------------------------------------------------------------------- members and regimes


def _members(s: Settings) -> tuple[list[R.Member], dict[str, list[int]]]:
    M = R.Member
    members = [
        M("none"),
        M("l2", l2=s.l2),
        M("weight_decay", wd=s.wd),
        M("l1", l1=s.l1),
        M("elastic_net", l1=s.elastic[0], l2=s.elastic[1]),
        M("max_norm", max_norm=s.max_norm),
        M("dropout", dropout=s.dropout),
        M("sigmoid", sigmoid=True),
        M("sigmoid_l2", sigmoid=True, l2=s.l2),
    ]
    index = {m.name: [i] for i, m in enumerate(members)}
    start = len(members)
    members += [M(f"bag{i}", init=1000 + i, bootstrap=i) for i in range(s.members)]
    index["bagging"] = list(range(start, len(members)))
    for v in s.sweep:
        index[f"l2={v:.0e}"] = [len(members)]
        members.append(M(f"l2={v:.0e}", l2=v))
    return members, index


def _hyper_dict(m: R.Member) -> dict[str, Any]:
    d = dataclasses.asdict(m)
    if d["max_norm"] >= R.NO_MAX_NORM:
        d["max_norm"] = None
    d["activation"] = "sigmoid" if d.pop("sigmoid") else "relu"
    return d


def _first_reaching(step: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(curve <= target)
    return int(step[hit[0]]) if hit.size else None


def _take(tree: Any, i: int | Sequence[int]) -> Any:
    return jax.tree.map(lambda a: a[np.asarray(i)], tree)


def save_params(path: str, params: Any) -> None:
    """Saves an MLP's params (or stacked params) as ``.npz`` with keys ``dense0/kernel`` ..."""
    flat = {f"{layer}/{name}": np.asarray(v) for layer, d in params.items() for name, v in d.items()}
    np.savez(path, **flat)


def load_params(path: str) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of :func:`save_params`."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as z:
        for key in z.files:
            layer, name = key.split("/")
            out.setdefault(layer, {})[name] = z[key]
    return out


def _probs_fn(sigmoid: float):
    """``apply_fn(params, x) -> class probabilities`` of the MLP."""
    s = jnp.asarray(sigmoid, jnp.float32)

    def probs(params, x):
        return jax.nn.softmax(R.apply(params, x, s), axis=-1)

    return probs


def _metrics_from_probs(split: jdata.Split, probs: dict[str, np.ndarray]) -> dict[str, float]:
    tr = R.classification_metrics(probs["train"], split.y_train, ece=False)
    va = R.classification_metrics(probs["val"], split.y_val, ece=False)
    te = R.classification_metrics(probs["test"], split.y_test)
    return {
        "train_loss": tr["loss"],
        "train_acc": tr["acc"],
        "val_loss": va["loss"],
        "val_acc": va["acc"],
        "test_acc": te["acc"],
        "test_nll": te["loss"],
        "test_ece": te["ece"],
        "gap": va["loss"] - tr["loss"],
        "acc_gap": tr["acc"] - te["acc"],
    }


def _by_part(a: np.ndarray, sizes: list[int], axis: int = 0) -> dict[str, np.ndarray]:
    """Splits an array over the concatenated train, val and test inputs back into the parts."""
    pieces = np.split(a, np.cumsum(sizes)[:-1], axis=axis)
    return dict(zip(("train", "val", "test"), pieces))


def _parts(split: jdata.Split) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "train": (split.x_train, split.y_train),
        "val": (split.x_val, split.y_val),
        "test": (split.x_test, split.y_test),
    }


def run(
    settings: Settings,
    split: jdata.Split,
    out_dir: str,
    *,
    echo: Any = print,
) -> dict[str, Any]:
    """Runs the main job on ``split`` and writes everything into ``out_dir``; returns the results."""
    s = settings
    os.makedirs(os.path.join(out_dir, "params"), exist_ok=True)
    config = R.Config(
        hidden=(s.hidden, s.hidden),
        learning_rate=s.learning_rate,
        steps=s.steps,
        eval_every=s.eval_every,
        target_loss=s.target_loss,
        saturation=s.saturation,
    )
    members, index = _members(s)
    hyper = R.stack_hypers(members, s.seed, len(split.y_train))
    arrays = {"x_train": split.x_train, "y_train": split.y_train, "x_val": split.x_val, "y_val": split.y_val}
    echo(
        f"jaxreg run: {split.name}, train/val/test = {len(split.y_train)}/{len(split.y_val)}/{len(split.y_test)}, "
        f"MLP {split.num_features}-{s.hidden}-{s.hidden}-{split.num_classes}, {len(members)} members "
        f"x {R.num_steps_for(config)} full-batch Adam steps as one vmapped program"
    )
    trained = R.train(config, hyper, arrays, split.num_classes, seed=s.seed, progress=s.progress)
    total_members = len(members)
    sigmoid = np.asarray(hyper.sigmoid)
    parts = _parts(split)

    # Probabilities of every member's final and best params on every part: one vmapped call each.
    sizes = [len(y) for _, y in parts.values()]
    x_all = jnp.asarray(np.concatenate([x for x, _ in parts.values()]))
    t0 = time.perf_counter()
    final_probs = _by_part(R.member_probs(trained.final, sigmoid, x_all), sizes, axis=1)
    best_probs = _by_part(R.member_probs(trained.best, sigmoid, x_all), sizes, axis=1)
    shared_eval = (time.perf_counter() - t0) / total_members

    rows: list[dict[str, Any]] = []
    mc_curve: dict[str, Any] = {}

    def add_row(
        name: str, kind: str, idx: list[int], params: Any, probs: dict[str, np.ndarray], eval_s: float, *, best=False
    ):
        m = members[idx[0]]
        metrics = _metrics_from_probs(split, probs)
        curves = trained.train_loss[idx]
        steps = [_first_reaching(trained.step, c, s.target_loss) for c in curves]
        if best:
            # The snapshot was taken at best_step; the target counts only if reached by then.
            steps = [st if st is not None and st <= int(trained.best_step[i]) else None for st, i in zip(steps, idx)]
        stats = [R.weight_stats(_take(params, i) if kind == "ensemble" else params) for i in range(len(idx))]
        sat = None
        if m.sigmoid:
            sat = R.saturation(params, split.x_test, s.saturation)
        fname = f"params/{name}.npz"
        save_params(os.path.join(out_dir, fname), params)
        share = trained.wall_s * len(idx) / total_members
        row = {
            "regime": name,
            "kind": kind,
            "members": [members[i].name for i in idx],
            "hyper": _hyper_dict(m) if kind != "ensemble" else {**_hyper_dict(m), "bootstrap": "per member"},
            **metrics,
            "steps_to_target": None if any(v is None for v in steps) else max(steps),
            "zero_frac": float(np.mean([st["zero_frac"] for st in stats])),
            "weight_norm": float(np.mean([st["weight_norm"] for st in stats])),
            "sat_frac": sat,
            "best_step": int(trained.best_step[idx[0]]) if best else None,
            "params_file": fname,
            "activation": "sigmoid" if m.sigmoid else "relu",
            "train_share_s": share,
            "eval_s": eval_s,
            "wall_s": share + eval_s,
        }
        rows.append(row)
        return row

    def member_probs(which: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in which.items()}

    singles = ["none", "l2", "weight_decay", "l1", "elastic_net", "max_norm", "dropout"]
    for name in singles:
        i = index[name][0]
        add_row(name, "single", [i], _take(trained.final, i), member_probs(final_probs, i), shared_eval)
    i = index["none"][0]
    add_row(
        "early_stopping", "single", [i], _take(trained.best, i), member_probs(best_probs, i), shared_eval, best=True
    )

    # Bagging: the ensemble's mean probabilities (jr.ensemble.predict over the member axis).
    bag = index["bagging"]
    stacked = _take(trained.final, bag)
    t0 = time.perf_counter()
    probs_fn = _probs_fn(0.0)
    ens_all = jax.jit(lambda p, x: jr.ensemble.predict(probs_fn, p, x).mean)(stacked, x_all)
    ens = _by_part(np.asarray(ens_all), sizes)
    bag_row = add_row("bagging", "ensemble", bag, stacked, ens, time.perf_counter() - t0)
    bag_row["member_test_acc"] = [float(np.mean(final_probs["test"][j].argmax(-1) == split.y_test)) for j in bag]
    bag_row["member_test_nll"] = [
        R.classification_metrics(final_probs["test"][j], split.y_test, ece=False)["loss"] for j in bag
    ]

    # MC-dropout: the dropout member predicted with K masks (jr.mc_dropout); the curve over
    # K = 1, 2, 4, ... takes running means of the same masks (jr.mc_dropout_samples).
    d = index["dropout"][0]
    dparams = _take(trained.final, d)
    rate = jnp.asarray(s.dropout, jnp.float32)

    def stochastic(params, x, rng):
        return jax.nn.softmax(R.apply(params, x, jnp.zeros([], jnp.float32), rate, rng), axis=-1)

    mc_key = jax.random.fold_in(jax.random.PRNGKey(s.seed), 11)
    t0 = time.perf_counter()
    mc_all = jax.jit(lambda p, x: jr.mc_dropout(stochastic, p, x, mc_key, s.mc_samples).mean)(dparams, x_all)
    mc = _by_part(np.asarray(mc_all), sizes)
    mc_row = add_row("mc_dropout", "mc_dropout", [d], dparams, mc, time.perf_counter() - t0)
    mc_row["num_masks"] = s.mc_samples
    samples = np.asarray(
        jax.jit(lambda p, x: jr.mc_dropout_samples(stochastic, p, x, mc_key, s.mc_samples))(dparams, x_all)
    )[:, -len(split.y_test) :]  # the same masks as the row above; the test part is last
    running = np.cumsum(samples.astype(np.float64), axis=0) / np.arange(1, s.mc_samples + 1)[:, None, None]
    ks = [2**j for j in range(int(math.log2(s.mc_samples)) + 1)]
    if ks[-1] != s.mc_samples:
        ks.append(s.mc_samples)
    curve = [R.classification_metrics(running[k - 1], split.y_test) for k in ks]
    mc_curve = {
        "num_masks": ks,
        "test_acc": [c["acc"] for c in curve],
        "test_nll": [c["loss"] for c in curve],
        "test_ece": [c["ece"] for c in curve],
    }

    for name in ["sigmoid", "sigmoid_l2"]:
        i = index[name][0]
        add_row(name, "single", [i], _take(trained.final, i), member_probs(final_probs, i), shared_eval)

    sweep_rows = []
    for v in s.sweep:
        name = f"l2={v:.0e}"
        i = index[name][0]
        row = add_row(name, "sweep", [i], _take(trained.final, i), member_probs(final_probs, i), shared_eval)
        row["l2"] = v
        sweep_rows.append(row)

    # ---------------------------------------------------------------- files
    names = [m.name for m in members]
    np.savez(
        os.path.join(out_dir, "history.npz"),
        step=trained.step,
        train_loss=trained.train_loss,
        val_loss=trained.val_loss,
        val_acc=trained.val_acc,
        members=np.asarray(names),
    )
    np.savez(
        os.path.join(out_dir, "data.npz"),
        x_train=split.x_train,
        y_train=split.y_train,
        x_val=split.x_val,
        y_val=split.y_val,
        x_test=split.x_test,
        y_test=split.y_test,
    )
    results = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()},
        "data": {"name": split.name, **split.sizes(), "num_classes": split.num_classes, "features": split.num_features},
        "model": {"sizes": [split.num_features, s.hidden, s.hidden, split.num_classes]},
        "num_steps": trained.num_steps,
        "num_members": total_members,
        "definitions": {
            "gap": "validation loss - training loss (cross-entropy, no dropout)",
            "acc_gap": "training accuracy - test accuracy",
            "steps_to_target": f"first evaluation step where the training objective's data term <= {s.target_loss}",
            "zero_frac": "fraction of kernel entries exactly 0.0",
            "weight_norm": "mean L2 norm of a unit's incoming weight vector, over all layers",
            "sat_frac": f"fraction of hidden sigmoid activations on the test set within {s.saturation} of 0 or 1",
            "wall_s": "share of the one training program's time (by members) + this regime's own evaluation",
        },
        "regimes": rows,
        "mc_dropout_curve": mc_curve,
        "train_wall_s": trained.wall_s,
        "figures": dict(FIGURES),
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([c[0] for c in COLUMNS])
        for r in rows:
            w.writerow(["" if r[c[0]] is None else r[c[0]] for c in COLUMNS])
    return results


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


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
    return out
