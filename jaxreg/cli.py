"""The ``jaxreg`` command: ``run`` (the main job), ``sweep`` and ``bench``.

``jaxreg run`` trains a grid of regularization regimes on scikit-learn's digits as one vmapped,
jitted program and prints a table per regime; ``jaxreg sweep --reg l1 --min 0.01 --max 1``
sweeps one regularizer's strength as one ``vmap``; ``jaxreg bench`` runs the benchmarks of the
source checkout (``benchmarks/run.py``). Bad input (a bad flag, a missing or malformed ``--data``
file, a missing extra) ends with one line on stderr, in jaxreg's words, and exit status 2. The
command needs the ``cli`` extra (``pip install "jaxreg[cli]"``: scikit-learn, matplotlib).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["Parser", "main", "missing_extra"]

PROG = "jaxreg"
EXTRA = "cli"
EXTRA_MODULES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: ... (see PROG --help)``, exit 2.

    argparse prints the whole usage block before its error; here the one line names the command,
    the argument, what was expected and where the help is. Subcommand parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def missing_extra(modules: Sequence[str] = tuple(EXTRA_MODULES)) -> str | None:
    """The one-line error for a missing ``cli`` extra, or ``None`` when all of ``modules`` import."""
    missing = [EXTRA_MODULES.get(m, m) for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"{PROG}: error: the command needs the '{EXTRA}' extra ({', '.join(missing)} not installed): "
        f'pip install "jaxreg[{EXTRA}]"'
    )


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low`` (and ``<= high``), with the bad text in the message."""
    expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected
    return parse


SEED_MAX = 2**32 - 2  # the data split seeds its second shuffle with seed + 1 (numpy takes < 2**32)
_positive_int = int_at_least(1)
_seed = int_at_least(0, SEED_MAX)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _size(text: str) -> float | int:
    try:
        value: float | int = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a count or a fraction in (0, 1), got {text!r}") from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"expected a count or a fraction in (0, 1), got {text!r}") from None
        return value
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or a fraction in (0, 1), got {text!r}")
    return value


def _common(p: argparse.ArgumentParser, defaults: dict[str, tuple[Any, Any]]) -> None:
    """Options of ``run`` and ``sweep``; ``defaults[name] = (default, quick default)`` for the help."""

    def d(name: str) -> str:
        full, quick = defaults[name][:2]
        return f"default {full}; with --quick {quick}" if full != quick else f"default {full}"

    g = p.add_argument_group("common options")
    g.add_argument("--seed", type=_seed, default=0, help="seed of the split, initialization and masks (default 0)")
    g.add_argument("--out", metavar="DIR", help="output folder (default ./jaxreg-out/<command>-<timestamp>)")
    g.add_argument(
        "--steps",
        type=_positive_int,
        help=f"training steps, full batch, rounded up to a whole evaluation ({d('steps')})",
    )
    g.add_argument("--members", type=_positive_int, help=f"{defaults['members'][2]} ({d('members')})")
    g.add_argument("--data", metavar="PATH", help="a .npz with arrays x (n, d) and integer labels y (n,)")
    g.add_argument(
        "--dataset",
        default="digits",
        choices=["digits", "breast_cancer", "wine"],
        help="bundled scikit-learn data set, ignored with --data (default digits)",
    )
    g.add_argument(
        "--train-size",
        type=_size,
        help="training examples, a count or a fraction (default: digits 200, other data 0.3)",
    )
    g.add_argument(
        "--val-size",
        type=_size,
        help="validation examples, a count or a fraction (default: digits 500, other data 0.3)",
    )
    g.add_argument("--hidden", type=_positive_int, help=f"width of the two hidden layers ({d('hidden')})")
    g.add_argument("--quick", action="store_true", help="a small setting that finishes in under a minute")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> Parser:
    from jaxreg.experiments import presets, sweep

    full, quick = presets.Settings.default(), presets.Settings.quick()
    parser = Parser(
        prog=PROG,
        description="Regularization experiments with jaxreg: every regime trained as one vmapped, jitted program.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,sweep,bench}", required=True)
    run = sub.add_parser(
        "run",
        help="the main job: a grid of regularization regimes on digits, with tables and figures",
        description=(
            "Trains none, L2 (coupled), decoupled weight decay, L1 (proximal), elastic net, max-norm, dropout, "
            "sigmoid MLPs, SWA, spectral norm, a bagging ensemble, an L2 sweep and an lr x weight-decay grid as "
            "one vmapped program, every seed in it (SAM, a second gradient, is a second program); derives early "
            "stopping (best-validation snapshot) and MC-dropout, and runs ES against gradient descent on "
            "Rastrigin; prints tables and findings with 95% intervals over seeds and writes results.json, "
            "results.csv, history.npz, data.npz, params, PNG figures and report.html."
        ),
    )
    _common(
        run,
        {
            "steps": (full.steps, quick.steps),
            "members": (full.members, quick.members, "bagging ensemble size"),
            "hidden": (full.hidden, quick.hidden),
        },
    )
    run.add_argument(
        "--seeds",
        type=_positive_int,
        help=(
            f"seeds per regime, trained in the same program: each its own init, bootstrap resamples and dropout "
            f"masks, the data split fixed; tables show mean ± 95%% t interval (default {full.seeds}; "
            f"with --quick {quick.seeds})"
        ),
    )
    run.add_argument(
        "--mc-samples",
        type=_positive_int,
        help=f"dropout masks for MC-dropout (default {full.mc_samples}; with --quick {quick.mc_samples})",
    )
    sw = sub.add_parser(
        "sweep",
        help="one regularizer, or the learning rate or Adam's b1, over a range of values, as one vmap",
        description=(
            "Trains one member per value (plus an unregularized baseline at the default learning rate and b1) as "
            "one vmapped program: penalty scales, dropout rates, the learning rate (--reg lr), decoupled weight "
            "decay (--reg wd) and Adam's b1 (--reg b1) are all per-member leaves, so a new value never recompiles."
        ),
    )
    _common(
        sw,
        {
            "steps": (sweep.DEFAULTS["steps"], sweep.QUICK["steps"]),
            "members": (1, 1, "replicates per strength"),
            "hidden": (sweep.DEFAULTS["hidden"], sweep.QUICK["hidden"]),
        },
    )
    ranges = ", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi, _) in sweep.RANGES.items())
    choices = "; ".join(f"{k}: {label}" for k, (_, label) in sweep.REGULARIZERS.items())
    linear = ", ".join(k for k, (_, _, lin) in sweep.RANGES.items() if lin)
    sw.add_argument(
        "--reg", default="l2", choices=list(sweep.REGULARIZERS), help=f"what to sweep ({choices}) (default l2)"
    )
    sw.add_argument("--min", type=_number, dest="low", help=f"smallest value (default by --reg: {ranges})")
    sw.add_argument("--max", type=_number, dest="high", help="largest value (default by --reg, as above)")
    sw.add_argument(
        "--num",
        type=_positive_int,
        help=f"number of values (default {sweep.DEFAULTS['num']}; with --quick {sweep.QUICK['num']}; "
        "--num 1 trains the one value given by --min or --max, else the default --min)",
    )
    sw.add_argument(
        "--linear", action="store_true", help=f"evenly spaced values (default: log-spaced; {linear}: linear)"
    )
    sub.add_parser(
        "bench",
        help="the benchmarks of the source checkout (see 'jaxreg bench --help'); arguments pass through",
        add_help=False,
    )
    return parser


def _out_dir(args: argparse.Namespace) -> str:
    if args.out:
        return os.path.abspath(args.out)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join("jaxreg-out", f"{args.command}-{stamp}"))


def _load(args: argparse.Namespace):
    from jaxreg import data as jdata
    from jaxreg.experiments.files import load_data

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


def _whole_evaluations(command: str, steps: int | None, eval_every: int) -> int | None:
    """``steps`` rounded up to a multiple of ``eval_every``, with a one-line warning if it changed."""
    if steps is None or steps % eval_every == 0:
        return steps
    rounded = -(-steps // eval_every) * eval_every
    print(
        f"{PROG} {command}: warning: --steps {steps} rounded up to {rounded} "
        f"(a whole number of evaluations, one every {eval_every} steps)",
        file=sys.stderr,
    )
    return rounded


def _cmd_run(args: argparse.Namespace) -> int:
    from jaxreg.experiments import presets, report
    from jaxreg.experiments import run as job

    preset = presets.Settings.quick if args.quick else presets.Settings.default
    eval_every = preset().eval_every
    overrides: dict[str, Any] = dict(
        seed=args.seed,
        steps=_whole_evaluations("run", args.steps, eval_every),
        members=args.members,
        hidden=args.hidden,
        mc_samples=args.mc_samples,
        seeds=args.seeds,
        progress=not args.no_progress,
    )
    settings = preset(**overrides)
    split = _load(args)
    out = _out_dir(args)
    _prepare_out(out)
    results = job.run(settings, split, out)  # draws the figures too
    report.write_html(os.path.join(out, "report.html"), results, results["figures"])
    for line in report.run_summary(results):
        print(line)
    print()
    print(f"results: {out}")
    print(
        "  results.json, results.csv, history.npz, data.npz, params/*.msgpack, report.html, "
        + ", ".join(os.path.basename(p) for p in results["figures"].values())
    )
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from jaxreg import plots
    from jaxreg.experiments import report
    from jaxreg.experiments import sweep as sw

    preset = sw.QUICK if args.quick else sw.DEFAULTS
    low, high, linear = sw.RANGES[args.reg]
    low = args.low if args.low is not None else low
    high = args.high if args.high is not None else high
    num = args.num or preset["num"]
    if num == 1 and (args.low is None or args.high is None):  # one value: the end given, else the default start
        low = high = high if args.low is None and args.high is not None else low
    steps = _whole_evaluations("sweep", args.steps, preset["eval_every"])
    split = _load(args)
    try:
        log_spaced = not (args.linear or linear)
        values = sw.strengths(low, high, num, log=log_spaced)
        sw.check_values(args.reg, values)  # before the output folder is made
        out = _out_dir(args)
        _prepare_out(out)
        results = sw.sweep(
            args.reg,
            values,
            split,
            out,
            seed=args.seed,
            steps=steps or preset["steps"],
            hidden=args.hidden or preset["hidden"],
            replicates=args.members or 1,
            eval_every=preset["eval_every"],
            progress=not args.no_progress,
            log_spaced=log_spaced,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    figure = plots.draw_sweep(out)
    print()
    print(report.sweep_table(results["rows"]))
    print()
    print(f"results: {out}")
    print(f"  sweep.json, sweep.csv, {os.path.basename(figure)}")
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    import jaxreg

    root = Path(jaxreg.__file__).resolve().parent.parent
    runner = root / "benchmarks" / "run.py"
    if not runner.is_file():
        print(
            f"{PROG} bench: error: the benchmarks are not installed: {runner} is missing "
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
    wants_help = any(a in ("-h", "--help") for a in argv)
    if argv and argv[0] == "bench":
        message = None if wants_help else missing_extra(("sklearn",))
        if message:
            print(message, file=sys.stderr)
            return 2
        return _cmd_bench(argv[1:])
    message = None if wants_help else missing_extra()
    if message:
        print(message, file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        return _cmd_sweep(args)
    except UsageError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:  # numpy's: sizes too large for this machine
        return _out_of_memory(args, str(e))
    except RuntimeError as e:  # XLA's allocator: a jax.errors.JaxRuntimeError with RESOURCE_EXHAUSTED
        import jax

        if not (isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e)):
            raise
        return _out_of_memory(args, str(e))


def _out_of_memory(args: argparse.Namespace, detail: str) -> int:
    first = detail.strip().splitlines()[0] if detail.strip() else "out of memory"
    sizes = ", ".join(
        f"--{k.replace('_', '-')} {v}"
        for k in ("hidden", "members", "mc_samples", "seeds", "num")
        if (v := getattr(args, k, None))
    )
    print(
        f"{PROG} {args.command}: error: out of memory{f' with {sizes}' if sizes else ''}: {first} (try smaller sizes)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
