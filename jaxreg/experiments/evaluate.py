"""Evaluation of a trained run: one row of metrics per regime, and the MC-dropout curve.

The regimes that need no extra training are derived here: early stopping (the unregularized
member's best-validation snapshot), bagging (the ensemble's mean probabilities through
:func:`jaxreg.ensemble.predict`) and MC-dropout (the dropout member predicted with many masks,
:func:`jaxreg.mc_dropout`; the curve over K takes running means of the same masks).
"""

from __future__ import annotations

import dataclasses
import functools
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

__all__ = ["MEASURES", "Evaluation", "evaluate", "evaluate_seeds", "first_reaching", "summarize", "take"]

MEASURES = (
    "train_loss",
    "val_loss",
    "train_acc",
    "val_acc",
    "test_acc",
    "test_nll",
    "test_ece",
    "gap",
    "acc_gap",
    "steps_to_target",
    "steps_to_best",
    "best_val_loss",
    "zero_frac",
    "weight_norm",
    "sat_frac",
    "best_step",
    "member_mean_test_acc",
)
"""The numbers of a row that are measured once per seed and summarized by an interval."""


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


def _stochastic(params, x, rng, rate):
    return jax.nn.softmax(R.apply(params, x, jnp.zeros([], jnp.float32), rate, rng), axis=-1)


@functools.partial(jax.jit, static_argnames="num")
def _mc_samples(params, x, key, rate, *, num):
    """Class probabilities under ``num`` dropout masks, ``(num, n, classes)`` (one compile per shape)."""
    return jr.mc_dropout_samples(lambda p, xx, k: _stochastic(p, xx, k, rate), params, x, key, num)


@jax.jit
def _bagged(stacked, x):
    # One vmap, fixed: a measured chunking could differ between runs, and a run is bitwise
    # deterministic for a seed.
    members = jax.tree.leaves(stacked)[0].shape[0]
    return jr.ensemble.predict(_probs_fn(0.0), stacked, x, chunk_size=members).mean


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
    *,
    seed_index: int = 0,
) -> Evaluation:
    """Evaluates every regime of a trained run on the train, validation and test parts.

    ``seed_index`` picks the MC-dropout masks (seed 0: the single-seed run's masks).
    """
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
        # Steps to the best validation loss: the first evaluation at the minimum of the
        # regime's validation curve (an ensemble's: the mean of its members' curves).
        val_curve = np.mean(trained.val_loss[idx], axis=0)
        steps_to_best = int(trained.step[int(np.argmin(val_curve))])
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
            "steps_to_best": steps_to_best,
            "best_val_loss": float(np.min(val_curve)),
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
    ens_all = _bagged(stacked, x_all)
    bag_row = add_row("bagging", "ensemble", bag, stacked, _by_part(np.asarray(ens_all), sizes))
    bag_row["member_test_acc"] = [float(np.mean(final_probs["test"][j].argmax(-1) == split.y_test)) for j in bag]
    bag_row["member_mean_test_acc"] = float(np.mean(bag_row["member_test_acc"]))
    bag_row["member_test_nll"] = [
        R.classification_metrics(final_probs["test"][j], split.y_test, ece=False)["loss"] for j in bag
    ]

    # MC-dropout: the dropout member predicted with K masks (jr.mc_dropout_samples, the masks
    # evaluated in parallel; the row is their mean, as jr.mc_dropout's); the curve over
    # K = 1, 2, 4, ... takes running means of the same masks.
    d = index["dropout"][0]
    dparams = take(trained.final, d)
    rate = jnp.asarray(s.dropout, jnp.float32)
    mc_key = jax.random.fold_in(jax.random.PRNGKey(s.seed), 11)
    if seed_index:
        mc_key = jax.random.fold_in(mc_key, seed_index)
    samples_all = np.asarray(_mc_samples(dparams, x_all, mc_key, rate, num=s.mc_samples))
    mc_row = add_row("mc_dropout", "mc_dropout", [d], dparams, _by_part(samples_all.mean(axis=0), sizes, axis=0))
    mc_row["num_masks"] = s.mc_samples
    samples = samples_all[:, -len(split.y_test) :]  # the test part is last
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


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """``mean``, ``lo``, ``hi`` of a measure's per-seed values (95% Student's t interval,
    :func:`jaxreg.stats.mean_interval`) and the ``values``; ``None`` where a seed has no value
    (a target never reached) or, for ``lo``/``hi``, with one seed."""
    vals = [None if v is None else float(v) for v in values]
    out: dict[str, Any] = {"mean": None, "lo": None, "hi": None, "values": vals}
    if vals and all(v is not None for v in vals):
        iv = jr.stats.mean_interval(np.asarray(vals, np.float64))
        out["mean"] = float(iv.mean)
        if np.isfinite(iv.lo):
            out["lo"], out["hi"] = float(iv.lo), float(iv.hi)
    return out


def _seed_view(seeded: presets.Seeded, trained: R.Trained, r: int) -> tuple[list[R.Member], R.Trained, R.Hyper]:
    """Seed ``r``'s members, renumbered ``0 .. B-1`` as in :func:`presets.members`."""
    idx = np.arange(r, len(seeded.members), seeded.seeds)
    view = dataclasses.replace(
        trained,
        final=take(trained.final, idx),
        best=take(trained.best, idx),
        best_step=trained.best_step[idx],
        train_loss=trained.train_loss[idx],
        val_loss=trained.val_loss[idx],
        val_acc=trained.val_acc[idx],
        averaged=None if trained.averaged is None else take(trained.averaged, idx),
    )
    return [seeded.members[i] for i in idx], view, take(seeded.hyper, idx)


def evaluate_seeds(s: presets.Settings, split: jdata.Split, seeded: presets.Seeded, trained: R.Trained) -> Evaluation:
    """:func:`evaluate` once per seed, then one row per regime with every measure summarized.

    A row keeps the layout of a single-seed row with each measure of :data:`MEASURES` replaced
    by its mean over seeds, and adds ``measures[name] = {"mean", "lo", "hi", "values"}``
    (:func:`summarize`) and ``seeds``. Params are stacked over seeds (a new leading axis, before
    an ensemble's member axis). The MC-dropout curve holds per K the mean, ``lo``/``hi`` and the
    per-seed values of each measure.
    """
    base_index = presets.members(s)[1]
    evs = []
    for r in range(seeded.seeds):
        mem, view, hyper = _seed_view(seeded, trained, r)
        evs.append(evaluate(s, split, mem, base_index, hyper, view, seed_index=r))
    rows = []
    for j, row in enumerate(evs[0].rows):
        per_seed = [ev.rows[j] for ev in evs]
        assert all(p["regime"] == row["regime"] for p in per_seed)
        out = dict(row)
        out["members"] = [m for p in per_seed for m in p["members"]]
        out["seeds"] = seeded.seeds
        out["measures"] = {}
        for key in MEASURES:
            if key not in row or (key != "steps_to_target" and all(p.get(key) is None for p in per_seed)):
                continue
            summary = summarize([p.get(key) for p in per_seed])
            out["measures"][key] = summary
            out[key] = summary["mean"]
        for key in ("member_test_acc", "member_test_nll"):
            if key in row:
                out[key] = [v for p in per_seed for v in p[key]]
        rows.append(out)
    params = {
        name: jax.tree.map(lambda *a: np.stack([np.asarray(v) for v in a]), *[ev.params[name] for ev in evs])
        for name in evs[0].params
    }
    curve = dict(evs[0].mc_curve)
    for key in ("test_acc", "test_nll", "test_ece"):
        by_k = np.asarray([ev.mc_curve[key] for ev in evs], np.float64)  # (seeds, K values)
        curve[key] = [summarize(by_k[:, k]) for k in range(by_k.shape[1])]
    return Evaluation(rows, params, curve)


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
