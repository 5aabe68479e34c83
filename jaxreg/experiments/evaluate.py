"""Evaluation of a trained run: one row of metrics per regime, and the MC-dropout curve.

The regimes that need no extra training are derived here: early stopping (the unregularized
member's best-validation snapshot), bagging (the ensemble's mean probabilities through
:func:`jaxreg.ensemble.predict`) and MC-dropout (the dropout member predicted with many masks,
:func:`jaxreg.mc_dropout`; the curve over K takes running means of the same masks).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg as jr
from jaxreg import data as jdata
from jaxreg.experiments import presets
from jaxreg.experiments import regimes as R

__all__ = ["Evaluation", "evaluate", "first_reaching", "take"]


@dataclasses.dataclass
class Evaluation:
    """Rows of metrics (one per regime, main regimes then the L2 sweep), each regime's params
    (stacked for an ensemble) and the MC-dropout curve."""

    rows: list[dict[str, Any]]
    params: dict[str, Any]
    mc_curve: dict[str, list[float]]


def first_reaching(step: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    """The first step whose value is ``<= target``, or ``None``."""
    hit = np.flatnonzero(curve <= target)
    return int(step[hit[0]]) if hit.size else None


def take(tree: Any, i: int | Sequence[int]) -> Any:
    """Member(s) ``i`` of a stacked tree."""
    return jax.tree.map(lambda a: a[np.asarray(i)], tree)


def _hyper_dict(m: R.Member) -> dict[str, Any]:
    d = dataclasses.asdict(m)
    if d["max_norm"] >= R.NO_MAX_NORM:
        d["max_norm"] = None
    if d.get("spectral", 0.0) >= R.NO_SPECTRAL_NORM:
        d["spectral"] = None
    d["activation"] = "sigmoid" if d.pop("sigmoid") else "relu"
    return d


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


def evaluate(
    s: presets.Settings,
    split: jdata.Split,
    members: list[R.Member],
    index: dict[str, list[int]],
    hyper: R.Hyper,
    trained: R.Trained,
) -> Evaluation:
    """Evaluates every regime of a trained run on the train, validation and test parts."""
    sigmoid = np.asarray(hyper.sigmoid)
    parts = [(split.x_train, split.y_train), (split.x_val, split.y_val), (split.x_test, split.y_test)]
    # Probabilities of every member's final and best params on every part: one vmapped call each.
    sizes = [len(y) for _, y in parts]
    x_all = jnp.asarray(np.concatenate([x for x, _ in parts]))
    final_probs = _by_part(R.member_probs(trained.final, sigmoid, x_all), sizes, axis=1)
    best_probs = _by_part(R.member_probs(trained.best, sigmoid, x_all), sizes, axis=1)

    rows: list[dict[str, Any]] = []
    params_of: dict[str, Any] = {}

    def add_row(name: str, kind: str, idx: list[int], params: Any, probs: dict[str, np.ndarray], *, best=False):
        m = members[idx[0]]
        curves = trained.train_loss[idx]
        steps = [first_reaching(trained.step, c, s.target_loss) for c in curves]
        if best:
            # The snapshot was taken at best_step; the target counts only if reached by then.
            steps = [st if st is not None and st <= int(trained.best_step[i]) else None for st, i in zip(steps, idx)]
        stats = [R.weight_stats(take(params, i) if kind == "ensemble" else params) for i in range(len(idx))]
        params_of[name] = params
        row = {
            "regime": name,
            "label": presets.label(name, s) if kind != "sweep" else name,
            "kind": kind,
            "members": [members[i].name for i in idx],
            "hyper": _hyper_dict(m) if kind != "ensemble" else {**_hyper_dict(m), "bootstrap": "per member"},
            **_metrics_from_probs(split, probs),
            "steps_to_target": None if any(v is None for v in steps) else max(steps),
            "zero_frac": float(np.mean([st["zero_frac"] for st in stats])),
            "weight_norm": float(np.mean([st["weight_norm"] for st in stats])),
            "sat_frac": R.saturation(params, split.x_test, s.saturation) if m.sigmoid else None,
            "best_step": int(trained.best_step[idx[0]]) if best else None,
            "params_file": f"params/{name}.msgpack",
            "activation": "sigmoid" if m.sigmoid else "relu",
        }
        rows.append(row)
        return row

    def of_member(which: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in which.items()}

    for name in ["none", "l2", "weight_decay", "l1", "elastic_net", "max_norm", "dropout"]:
        i = index[name][0]
        add_row(name, "single", [i], take(trained.final, i), of_member(final_probs, i))
    i = index["none"][0]
    add_row("early_stopping", "single", [i], take(trained.best, i), of_member(best_probs, i), best=True)

    # Bagging: the ensemble's mean probabilities (jr.ensemble.predict over the member axis).
    bag = index["bagging"]
    stacked = take(trained.final, bag)
    probs_fn = _probs_fn(0.0)
    ens_all = jax.jit(lambda p, x: jr.ensemble.predict(probs_fn, p, x).mean)(stacked, x_all)
    bag_row = add_row("bagging", "ensemble", bag, stacked, _by_part(np.asarray(ens_all), sizes))
    bag_row["member_test_acc"] = [float(np.mean(final_probs["test"][j].argmax(-1) == split.y_test)) for j in bag]
    bag_row["member_test_nll"] = [
        R.classification_metrics(final_probs["test"][j], split.y_test, ece=False)["loss"] for j in bag
    ]

    # MC-dropout: the dropout member predicted with K masks (jr.mc_dropout); the curve over
    # K = 1, 2, 4, ... takes running means of the same masks (jr.mc_dropout_samples).
    d = index["dropout"][0]
    dparams = take(trained.final, d)
    rate = jnp.asarray(s.dropout, jnp.float32)

    def stochastic(params, x, rng):
        return jax.nn.softmax(R.apply(params, x, jnp.zeros([], jnp.float32), rate, rng), axis=-1)

    mc_key = jax.random.fold_in(jax.random.PRNGKey(s.seed), 11)
    mc_all = jax.jit(lambda p, x: jr.mc_dropout(stochastic, p, x, mc_key, s.mc_samples).mean)(dparams, x_all)
    mc_row = add_row("mc_dropout", "mc_dropout", [d], dparams, _by_part(np.asarray(mc_all), sizes))
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
        "reference": ["dropout", "none", "bagging"],  # regimes drawn beside the curve
    }

    for name in ["sigmoid", "sigmoid_l2"]:
        i = index[name][0]
        add_row(name, "single", [i], take(trained.final, i), of_member(final_probs, i))

    for v in s.sweep:
        name = f"l2={v:.0e}"
        i = index[name][0]
        add_row(name, "sweep", [i], take(trained.final, i), of_member(final_probs, i))["l2"] = v
    _optimizer_rows(s, index, trained, sigmoid, x_all, sizes, final_probs, add_row)
    return Evaluation(rows, params_of, mc_curve)


def _optimizer_rows(s, index, trained, sigmoid, x_all, sizes, final_probs, add_row) -> None:
    """The rows of issues 13, 15 and 16: SWA (the unregularized member's averaged params), SAM,
    spectral norm, and the learning-rate x weight-decay grid (kind ``"grid"``)."""
    if "swa" in index and trained.averaged is not None:
        i = index["swa"][0]
        avg = _by_part(R.member_probs(trained.averaged, sigmoid, x_all), sizes, axis=1)
        row = add_row("swa", "single", [i], take(trained.averaged, i), {k: v[i] for k, v in avg.items()})
        row["swa_start"] = int(trained.swa_start)
    for name in ["sam", "spectral_norm"]:
        if name in index:
            i = index[name][0]
            add_row(name, "single", [i], take(trained.final, i), {k: v[i] for k, v in final_probs.items()})
    for lr in s.lr_grid:
        for wd in s.wd_grid:
            name = presets.grid_name(lr, wd)
            i = index[name][0]
            row = add_row(name, "grid", [i], take(trained.final, i), {k: v[i] for k, v in final_probs.items()})
            row.update(lr=float(lr), wd=float(wd))
