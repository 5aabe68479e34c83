"""The ``jaxreg`` command: ``run`` (the main job), ``sweep`` and ``bench``.

``jaxreg run`` trains a grid of regularization regimes on scikit-learn's digits as one vmapped,
jitted program and prints a table per regime; ``jaxreg sweep --reg l1 --min 0.01 --max 1``
sweeps one regularizer's strength as one ``vmap``; ``jaxreg bench`` runs the benchmarks of the
source checkout. Bad input (a missing or malformed ``--data`` file, bad flags) ends with one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

PROG = "jaxreg"


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction in (0, 1), got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--seed", type=int, default=0, help="seed of the split, initialization, masks (default 0)")
    g.add_argument("--out", metavar="DIR", help="output folder (default ./jaxreg-out/<command>-<timestamp>)")
    g.add_argument("--steps", type=_positive_int, help="training steps (full batch)")
    g.add_argument("--members", type=_positive_int, help="run: bagging ensemble size; sweep: replicates per value")
    g.add_argument("--data", metavar="PATH", help="a .npz with arrays x (n, d) and integer labels y (n,)")
    g.add_argument(
        "--dataset",
        default="digits",
        choices=["digits", "breast_cancer", "wine"],
        help="bundled scikit-learn data set (default digits; ignored with --data)",
    )
    g.add_argument("--train-size", type=_size, help="training examples (count or fraction; digits: 200)")
    g.add_argument("--val-size", type=_size, help="validation examples (count or fraction; digits: 500)")
    g.add_argument("--hidden", type=_positive_int, help="width of the two hidden layers (256; quick: 128)")
    g.add_argument("--quick", action="store_true", help="a small setting that finishes in under a minute")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Regularization experiments with jaxreg: every regime trained as one vmapped, jitted program.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,sweep,bench}", required=True)
    run = sub.add_parser(
        "run",
        help="the main job: a grid of regularization regimes on digits, with tables and figures",
        description=(
            "Trains none, L2 (coupled), decoupled weight decay, L1 (proximal), elastic net, max-norm, dropout, "
            "sigmoid MLPs, a bagging ensemble and an L2 sweep as one vmapped program; derives early stopping "
            "(best-validation snapshot) and MC-dropout; prints a table and writes JSON, CSV, params and PNG figures."
        ),
    )
    _common(run)
    run.add_argument("--mc-samples", type=_positive_int, help="dropout masks for MC-dropout (64; quick: 16)")
    sweep = sub.add_parser(
        "sweep",
        help="one regularizer over a range of strengths, as one vmap",
        description="Trains one member per strength (plus an unregularized baseline) as one vmapped program.",
    )
    _common(sweep)
    sweep.add_argument("--reg", default="l2", choices=["l2", "wd", "l1", "max_norm", "dropout"], help="regularizer")
    sweep.add_argument("--min", type=float, dest="low", help="smallest strength (default by regularizer)")
    sweep.add_argument("--max", type=float, dest="high", help="largest strength (default by regularizer)")
    sweep.add_argument("--num", type=_positive_int, help="number of strengths (default 8; quick: 4)")
    sweep.add_argument("--linear", action="store_true", help="evenly spaced strengths (default: log-spaced)")
    sub.add_parser(
        "bench",
        help="the benchmarks (benchmarks/run.py of the source checkout); arguments pass through",
        add_help=False,
    )
    return parser


_SWEEP_RANGES = {
    "l2": (1e-5, 1e-1, False),
    "wd": (0.1, 10.0, False),
    "l1": (0.01, 1.0, False),
    "max_norm": (0.25, 4.0, False),
    "dropout": (0.0, 0.8, True),
}


def _out_dir(args: argparse.Namespace) -> str:
    if args.out:
        return os.path.abspath(args.out)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join("jaxreg-out", f"{args.command}-{stamp}"))


def _load(args: argparse.Namespace):
    from jaxreg import data as jdata
    from jaxreg.experiments.run import load_data

    try:
        return load_data(
            args.dataset, path=args.data, seed=args.seed, train_size=args.train_size, val_size=args.val_size
        )
    except (jdata.DataError, ValueError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _prepare_out(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out exists and is not a folder: {path}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the output folder {path}: {e.strerror}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from jaxreg.experiments import run as job
    from jaxreg.experiments.run import Settings

    split = _load(args)
    overrides: dict[str, Any] = dict(
        seed=args.seed,
        steps=args.steps,
        members=args.members,
        hidden=args.hidden,
        mc_samples=args.mc_samples,
        progress=not args.no_progress,
    )
    settings = Settings.quick(**overrides) if args.quick else Settings.default(**overrides)
    out = _out_dir(args)
    _prepare_out(out)
    results = job.run(settings, split, out)
    from jaxreg import plots

    plots.draw_run(out)
    main_rows = [r for r in results["regimes"] if r["kind"] != "sweep"]
    sweep_rows = [r for r in results["regimes"] if r["kind"] == "sweep"]
    print()
    print(job.format_table(main_rows))
    print()
    print("L2 sweep (coupled L2 scale in the loss):")
    print(job.format_table(sweep_rows))
    curve = results["mc_dropout_curve"]
    print()
    print(
        "MC-dropout test accuracy by number of masks: "
        + ", ".join(f"K={k}: {a:.3f}" for k, a in zip(curve["num_masks"], curve["test_acc"]))
    )
    for line in job.findings(results):
        print(f"- {line}")
    print()
    print(f"results: {out}")
    print(f"  results.json, results.csv, history.npz, data.npz, params/*.npz, {', '.join(results['figures'].values())}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from jaxreg.experiments import sweep as sw

    split = _load(args)
    low, high, linear = _SWEEP_RANGES[args.reg]
    low = args.low if args.low is not None else low
    high = args.high if args.high is not None else high
    num = args.num or (4 if args.quick else 8)
    try:
        values = sw.strengths(low, high, num, log=not (args.linear or linear))
        out = _out_dir(args)
        _prepare_out(out)
        results = sw.sweep(
            args.reg,
            values,
            split,
            out,
            seed=args.seed,
            steps=args.steps or (200 if args.quick else 600),
            hidden=args.hidden or (128 if args.quick else 256),
            replicates=args.members or 1,
            eval_every=10 if args.quick else 20,
            progress=not args.no_progress,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    from jaxreg import plots

    plots.draw_sweep(out)
    print()
    print(sw.format_rows(results["rows"]))
    print()
    print(f"results: {out}")
    print("  sweep.json, sweep.csv, sweep.png")
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    import jaxreg

    root = Path(jaxreg.__file__).resolve().parent.parent
    runner = root / "benchmarks" / "run.py"
    if not runner.is_file():
        print(
            f"{PROG}: error: the benchmarks are not installed: {runner} is missing "
            "(run `jaxreg bench` from a source checkout of jaxreg)",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("benchmarks.run")
    code = module.main(list(argv))
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxreg`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _cmd_bench(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        return _cmd_sweep(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
