"""What ``jaxreg run`` trains: its settings (``default`` and ``quick`` presets) and the members.

:class:`Settings` holds every number a run uses; :func:`members` turns it into the members of
one seed (one network per regime, a bagging ensemble, an L2 sweep) and the index of each
regime's members; :func:`seeded` replicates them ``seeds`` times for the one training program
(:func:`jaxreg.ensemble.replicate`: each copy its own initialization, bootstrap resamples and
dropout masks, the data split fixed); :func:`label` names a regime with its hyperparameters
(``l2 (1e-03)``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

import jaxreg as jr
from jaxreg.experiments import regimes as R

__all__ = ["FIGURES", "INIT_STRIDE", "Seeded", "Settings", "label", "members", "seeded"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a run does; ``quick()`` and ``default()`` give the two presets."""

    seed: int = 0
    seeds: int = 3  # replicates of every regime (its own init, resamples, masks), one program
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
    # ES vs gradient descent on Rastrigin (jaxreg.experiments.es_minima), its own seeds
    es_dim: int = 8
    es_seeds: int = 16
    es_evaluations: int = 12_800
    es_population: int = 128
    sam_rho: float = 0.05  # SAM radius (its member is trained in a second program)
    spectral: float = 2.0  # bound on each kernel's largest singular value
    lr_grid: tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # learning rate x decoupled weight decay grid
    wd_grid: tuple[float, ...] = (0.0, 3.0)  # (1e-3, 0) and (1e-3, wd) are the none and weight_decay members

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        base = dict(
            steps=200,
            hidden=64,
            members=3,
            mc_samples=16,
            sweep=tuple(float(v) for v in np.geomspace(1e-4, 1e-1, 4)),
            eval_every=10,
            es_dim=4,
            es_seeds=8,
            es_evaluations=3_200,
            es_population=64,
            lr_grid=(1e-3, 3e-3),
            wd_grid=(0.0, 3.0),
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
    "val_overlay": "val_loss_all.png",
    "es_minima": "es_minima.png",
}
"""The figures of a run; :func:`jaxreg.plots.draw_run` draws them from the saved results."""


def members(s: Settings) -> tuple[list[R.Member], dict[str, list[int]]]:
    """The members of the one training program and, per regime, the indices of its members."""
    M = R.Member
    out = [
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
    index = {m.name: [i] for i, m in enumerate(out)}
    start = len(out)
    out += [M(f"bag{i}", init=1000 + i, bootstrap=i) for i in range(s.members)]
    index["bagging"] = list(range(start, len(out)))
    for v in s.sweep:
        index[f"l2={v:.0e}"] = [len(out)]
        out.append(M(f"l2={v:.0e}", l2=v))
    _optimizer_members(s, out, index)
    return out, index


def grid_name(lr: float, wd: float) -> str:
    """The name of a learning-rate x weight-decay grid point, e.g. ``"lr=3e-03,wd=1"``."""
    return f"lr={lr:.0e},wd={wd:g}"


def _optimizer_members(s: Settings, out: list[R.Member], index: dict[str, list[int]]) -> None:
    """Appends the spectral-norm and SAM members and the lr x wd grid (issues 13, 15, 16).

    SWA needs no member (it is read off the unregularized member's averaged params). A grid
    point equal to an existing member (``none``, ``weight_decay``) reuses that member.
    """
    M = R.Member
    index["swa"] = list(index["none"])
    index["spectral_norm"] = [len(out)]
    out.append(M("spectral_norm", spectral=s.spectral))
    index["sam"] = [len(out)]
    out.append(M("sam", sam_rho=s.sam_rho))
    same = {(s.learning_rate, 0.0): "none", (s.learning_rate, float(s.wd)): "weight_decay"}
    for lr in s.lr_grid:
        for wd in s.wd_grid:
            name = grid_name(lr, wd)
            if (float(lr), float(wd)) in same:
                index[name] = list(index[same[float(lr), float(wd)]])
            else:
                index[name] = [len(out)]
                out.append(M(name, lr=float(lr), wd=float(wd)))


def label(regime: str, s: Settings) -> str:
    """The regime's name with the hyperparameters that define it, e.g. ``"l2 (1e-03)"``."""
    hyper = {
        "l2": f"{s.l2:.0e}",
        "weight_decay": f"{s.wd:g}",
        "l1": f"{s.l1:g}",
        "elastic_net": f"l1 {s.elastic[0]:g}, l2 {s.elastic[1]:.0e}",
        "max_norm": f"{s.max_norm:g}",
        "dropout": f"{s.dropout:g}",
        "sigmoid_l2": f"l2 {s.l2:.0e}",
        "bagging": f"{s.members} member{'s' if s.members != 1 else ''}",
        "mc_dropout": f"{s.mc_samples} masks",
        "early_stopping": "best val loss",
        "swa": f"last {1 - R.Config.swa_start:.0%} of steps",
        "sam": f"rho {s.sam_rho:g}",
        "spectral_norm": f"{s.spectral:g} per layer",
    }.get(regime)
    return regime if hyper is None else f"{regime} ({hyper})"


INIT_STRIDE = 100_000
"""Seed ``r`` of a member with init index ``i`` starts from init index ``i + r * INIT_STRIDE``."""


@dataclasses.dataclass
class Seeded:
    """The members of a run with seeds: ``members[j * seeds + r]`` is member ``j`` under seed ``r``.

    ``index[r]`` maps a regime to its members' indices under seed ``r``; ``hyper`` is stacked
    over all ``len(members)`` members.
    """

    members: list[R.Member]
    index: list[dict[str, list[int]]]
    hyper: R.Hyper
    seeds: int


def seeded(s: Settings, num_train: int) -> Seeded:
    """Every member of :func:`members` replicated ``s.seeds`` times, copies adjacent.

    Copy ``r`` of a member differs from copy 0 in what a seed decides and in nothing else: its
    initialization (init index ``+ r * INIT_STRIDE``; within a seed every regime with the same
    init index starts from the same weights, so regimes compare paired by seed), its bootstrap
    resample (bagging members) and, because ``jr.fit`` gives every member its own step keys, its
    dropout masks. The data split is the same for every seed (it is drawn from ``s.seed``).
    Copy 0 has the single-seed run's member's initialization and resample; its dropout masks
    differ (``jr.fit``'s step keys follow a member's index in the stack, which the number of
    seeds changes), so a dropout row of ``--seeds 1`` is not seed 0 of ``--seeds 3``.
    """
    base, index = members(s)
    num = s.seeds
    hyper1 = R.stack_hypers(base, s.seed, num_train)
    hyper = jr.ensemble.replicate(hyper1, num, stacked=True)
    num_boot = max([m.bootstrap for m in base] + [-1]) + 1
    weights = np.asarray(hyper.weights).copy()
    if num_boot:
        k_boot = jax.random.fold_in(jax.random.PRNGKey(s.seed), 1)  # copy 0: R.stack_hypers' draw
        for r in range(1, num):
            boot = np.asarray(jr.ensemble.bootstrap_weights(jax.random.fold_in(k_boot, r), num_boot, num_train))
            for j, m in enumerate(base):
                if m.bootstrap >= 0:
                    weights[j * num + r] = boot[m.bootstrap]
    out = [
        dataclasses.replace(m, name=f"{m.name}#{r}", init=m.init + r * INIT_STRIDE) for m in base for r in range(num)
    ]
    init = np.asarray([m.init for m in out], np.int32)
    hyper = hyper._replace(init=jax.numpy.asarray(init), weights=jax.numpy.asarray(weights))
    per_seed = [{k: [j * num + r for j in v] for k, v in index.items()} for r in range(num)]
    return Seeded(out, per_seed, hyper, num)
