"""The main job: a grid of regularization regimes trained as one program, with tables and figures.

:func:`run` builds the members (:func:`jaxreg.experiments.presets.members`), trains them together
(:func:`jaxreg.experiments.regimes.train`), evaluates every regime
(:func:`jaxreg.experiments.evaluate.evaluate`) and writes ``results.json``, ``results.csv``,
``history.npz``, ``data.npz`` and one ``params/<regime>.msgpack`` per regime into the output
folder (:mod:`jaxreg.experiments.files`); :func:`jaxreg.plots.draw_run` draws the figures from
them and :mod:`jaxreg.experiments.report` prints the tables and findings.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any

import numpy as np

from jaxreg import data as jdata
from jaxreg import plots
from jaxreg.experiments import es_minima, evaluate, files, presets, report
from jaxreg.experiments import regimes as R

__all__ = ["run"]


def run(
    settings: presets.Settings, split: jdata.Split, out_dir: str, *, echo: Any = print, figures: bool = True
) -> dict[str, Any]:
    """Runs the main job on ``split`` and writes everything into ``out_dir``; returns the results.

    The ES comparison shares nothing with training; it compiles and runs in a thread while the
    trained members are evaluated and their figures drawn (``figures=False``: none are drawn;
    ``results["figures"]`` maps each figure drawn to its path). XLA's compiler and executables
    release the GIL and matplotlib holds one core, so on two cores the comparison costs no wall
    time. Training itself runs alone: its program already keeps both cores busy.
    """
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
    seeded = presets.seeded(s, len(split.y_train))
    members, hyper = seeded.members, seeded.hyper
    arrays = {"x_train": split.x_train, "y_train": split.y_train, "x_val": split.x_val, "y_val": split.y_val}
    echo(
        f"jaxreg run: {split.name}, train/val/test = {len(split.y_train)}/{len(split.y_val)}/{len(split.y_test)}, "
        f"MLP {split.num_features}-{s.hidden}-{s.hidden}-{split.num_classes}, {len(members) // s.seeds} members "
        f"x {s.seeds} seed{'s' if s.seeds != 1 else ''} x {R.num_steps_for(config)} full-batch Adam steps as one "
        "vmapped program "
        f"{'(SAM members, another gradient, as a second) ' if np.any(np.asarray(hyper.sam_rho) > 0) else ''}"
        "(a seed: its own init, bootstrap resamples and dropout masks; the data split is the same for every seed)"
    )
    trained = R.train(config, hyper, arrays, split.num_classes, seed=s.seed, progress=s.progress, echo=echo)
    echo(
        f"ES vs gradient descent on Rastrigin ({s.es_seeds} seeds, {s.es_evaluations} loss evaluations each) "
        "runs in a thread beside the evaluation and figures…"
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        es_future = pool.submit(es_minima.run, es_config(s))
        results = _evaluate_and_save(s, split, seeded, trained, out_dir)
        drawn = plots.draw_run(out_dir, only=set(presets.FIGURES) - {"es_minima"}) if figures else {}
        results["es_minima"] = es_future.result()
    files.write_json(os.path.join(out_dir, "results.json"), results)
    if figures:
        drawn.update(plots.draw_run(out_dir, only={"es_minima"}))
    results["figures"] = {k: drawn[k] for k in presets.FIGURES if k in drawn}
    return results


def _evaluate_and_save(
    s: presets.Settings, split: jdata.Split, seeded: presets.Seeded, trained: R.Trained, out_dir: str
) -> dict[str, Any]:
    """Evaluates every regime, writes the params, history, data, ``results.json`` (without the ES
    comparison) and ``results.csv``; returns the results."""
    members = seeded.members
    ev = evaluate.evaluate_seeds(s, split, seeded, trained)
    for row in ev.rows:
        files.save_params(os.path.join(out_dir, row["params_file"]), ev.params[row["regime"]])
    np.savez(
        os.path.join(out_dir, "history.npz"),
        step=trained.step,
        train_loss=trained.train_loss,
        val_loss=trained.val_loss,
        val_acc=trained.val_acc,
        members=np.asarray([m.name for m in members]),
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
        "num_members": len(members),
        "seeds": s.seeds,
        "seeding": (
            f"every regime trained under {s.seeds} seed{'s' if s.seeds != 1 else ''} in the same program: seed r gives each member its own "
            "initialization, bootstrap resamples (bagging) and dropout masks; the data split is fixed "
            f"(drawn from --seed {s.seed}); full-batch training has no data order"
        ),
        "interval": "mean over seeds ± half-width of a 95% Student's t interval (jaxreg.stats.mean_interval)",
        "definitions": {
            "gap": "validation loss - training loss (cross-entropy, no dropout)",
            "acc_gap": "training accuracy - test accuracy",
            "steps_to_target": f"first evaluation step where the training objective's data term <= {s.target_loss}",
            "zero_frac": "fraction of kernel entries exactly 0.0",
            "weight_norm": "mean L2 norm of a unit's incoming weight vector, over all layers",
            "sat_frac": f"fraction of hidden sigmoid activations on the test set within {s.saturation} of 0 or 1",
            "train_program_s": "seconds of the training programs of all members (compilation included)",
            "train_programs": "compiled training programs: 1, or 2 when SAM members (another gradient) are present",
            "steps_to_best": "first evaluation step at the lowest validation loss (an ensemble: of its members' mean curve)",
            "best_val_loss": "the lowest validation loss over the evaluations (an ensemble: of the mean of its "
            "members' validation losses, not the loss of its averaged predictions)",
            "measures": "per measure: mean, lo, hi (95% t interval over seeds) and the per-seed values",
        },
        "baseline": "none",
        "regimes": ev.rows,
        "mc_dropout_curve": ev.mc_curve,
        "train_program_s": trained.wall_s,
        "train_programs": trained.programs,
        "figures": dict(presets.FIGURES),
    }
    files.write_json(os.path.join(out_dir, "results.json"), results)
    files.write_csv(os.path.join(out_dir, "results.csv"), report.csv_rows(ev.rows), report.csv_columns())
    return results


def es_config(s: presets.Settings) -> es_minima.Config:
    """The ES comparison's settings of a run (``--quick``: smaller)."""
    return es_minima.Config(
        dim=s.es_dim, seeds=s.es_seeds, evaluations=s.es_evaluations, population=s.es_population, seed=s.seed
    )
