"""Runs jaxreg's benchmarks and prints/writes the results table.

Usage (from the repository root)::

    jaxreg bench [--quick | --tiny] [--json PATH] [--only step,ensemble,...] [--seed N] [--gpu] [--no-tune-malloc]

or ``python -m benchmarks.run`` with the same options. Every comparison is timed in alternation with its
baseline in this one run (paired ratios; the ratio column is always "times better than the
baseline", > 1 meaning jaxreg is faster), as the median of >= 5 timed repeats after warm-up, with
compile time reported apart. Modes: ``--tiny`` (under a minute on a quiet 2-core machine; the
test suite's end-to-end check, its figures mean little), ``--quick`` (a few minutes), default full
(about 12 minutes on an idle 2-core AMD EPYC). ``--markdown`` also prints the table as markdown.

Allocator: with glibc's default malloc XLA returns its multi-MB temporaries to the OS and faults
them back every step (PERF-NOTES). Unless ``--no-tune-malloc`` is given or ``MALLOC_*`` /
``LD_PRELOAD`` are already set, the runner re-runs itself in a subprocess with
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456``
(they must be set before the process starts). Worker processes (PyTorch, memory) inherit the
same environment, so every side runs with the same allocator; the JSON records which one ran.

GPU: ``--gpu`` runs the table on JAX's default device when it is a GPU and writes the same JSON;
it sets nothing that only a CPU wants (no malloc re-run; the PyTorch peers, whose thread settings
are CPU ones, and the host-RSS memory section are skipped with a note; the CPU targets of the
matmul-rate rows are not applied) and its default mode is ``quick`` (minutes; ``--mode full`` for
every size). On a machine whose default backend is a GPU these settings apply without the flag.
Without a GPU ``--gpu`` prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import jax

import jaxreg as jr
from benchmarks import common
from benchmarks.common import Row, Settings

# (name, module) in run order; "peak" first: the others use its figure.
SECTIONS = (
    ("peak", "benchmarks.bench_peak"),
    ("step", "benchmarks.bench_step"),
    ("ensemble", "benchmarks.bench_ensemble"),
    ("anatomy", "benchmarks.bench_anatomy"),
    ("torch", "benchmarks.bench_torch"),
    ("mc_dropout", "benchmarks.bench_mc_dropout"),
    ("training", "benchmarks.bench_training"),
    ("sweep", "benchmarks.bench_sweep"),
    ("es", "benchmarks.bench_es"),
    ("eager", "benchmarks.bench_eager"),
    ("memory", "benchmarks.bench_memory"),
    ("gpu", "benchmarks.bench_gpu"),
)

SECTION_NAMES = tuple(name for name, _ in SECTIONS)
CPU_ONLY = {
    "torch": "CPU-only comparison (torch thread settings); not run with --gpu",
    "memory": "host peak RSS; not run with --gpu",
}
"""Sections skipped on a GPU, with the note their row carries."""

REPO_ROOT = Path(__file__).resolve().parent.parent


def _allocator_is_set() -> bool:
    return bool(os.environ.get("LD_PRELOAD")) or any(k.startswith("MALLOC_") for k in os.environ)


def _rerun_with_malloc_tuning(args: argparse.Namespace) -> dict[str, Any]:
    """Re-runs the benchmark in a subprocess with the glibc tuning variables set."""
    env = dict(os.environ)
    env.update(common.MALLOC_TUNING)
    # the child runs in the checkout (cwd=REPO_ROOT): a relative path is the caller's, made absolute
    json_path = None if args.json is None else os.path.abspath(args.json)
    tmp = None
    if json_path is None:
        tmp = REPO_ROOT / f".bench-{os.getpid()}.json"
        json_path = str(tmp)
    argv = [sys.executable, "-m", "benchmarks.run", "--no-tune-malloc", "--json", json_path, "--mode", args.mode]
    argv += ["--seed", str(args.seed)]
    if args.only:
        argv += ["--only", args.only]
    if args.no_table:
        argv += ["--no-table"]
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(argv, env=env, cwd=str(REPO_ROOT), check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)  # the subprocess has reported its error already
    with open(json_path) as f:
        result = json.load(f)
    if tmp is not None:
        tmp.unlink(missing_ok=True)
    return result


def run(
    quick: bool = False,
    json_path: str | None = None,
    *,
    tiny: bool = False,
    only: str | list[str] | None = None,
    tune_malloc: bool = True,
    table: bool = True,
    seed: int = 0,
    gpu: bool = False,
) -> dict[str, Any]:
    """Runs the benchmarks and returns the results (also written to ``json_path`` if given).

    Args:
      quick: a few minutes instead of about 12.
      json_path: where to write the JSON results.
      tiny: seconds; for the test suite (overrides ``quick``).
      only: section names (comma-separated or a list) to run; default all.
      tune_malloc: re-run in a subprocess with the glibc malloc tuning unless an allocator
        setting is already in the environment.
      table: print the table.
      seed: seed of the inputs, initializations and dropout keys.
      gpu: run on the GPU without CPU-only settings (no malloc re-run, no PyTorch CPU peers, no
        host-RSS memory section, no CPU targets); implied when JAX's default backend is a GPU.

    Returns:
      ``{"machine", "settings", "command", "rows", "duration_s", ...}``.
    """
    mode = "tiny" if tiny else ("quick" if quick else "full")
    gpu = gpu or common.on_gpu()
    if isinstance(only, list):
        only = ",".join(only)
    wanted = _sections(only)
    if tune_malloc and not gpu and not _allocator_is_set():
        ns = argparse.Namespace(json=json_path, mode=mode, only=only, no_table=not table, seed=seed)
        return _rerun_with_malloc_tuning(ns)
    return _run_here(Settings.for_mode(mode, seed=seed, gpu=gpu), json_path, wanted, table)


def _sections(only: str | None) -> set[str] | None:
    """The section names in ``only`` (comma-separated), or ``None`` for all.

    Raises:
      ValueError: naming the unknown sections and the known ones.
    """
    wanted = None if not only else {s.strip() for s in only.split(",") if s.strip()}
    unknown = (wanted or set()) - set(SECTION_NAMES)
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTION_NAMES)}")
    return wanted


def _run_here(settings: Settings, json_path: str | None, wanted: set[str] | None, table: bool) -> dict[str, Any]:
    mode = settings.mode
    started = time.time()
    ctx: dict[str, Any] = {}
    rows: list[Row] = []
    timings: dict[str, float] = {}
    for name, module_name in SECTIONS:
        if wanted is not None and name not in wanted and not (name == "peak"):
            continue
        t0 = time.perf_counter()
        if settings.gpu and name in CPU_ONLY:
            rows.append(Row(name, "-", "-", "-", status="skipped", note=CPU_ONLY[name]))
            continue
        try:
            module = importlib.import_module(module_name)
            rows.extend(module.run(settings, ctx))
        except Exception as e:  # one comparison failing must not lose the others
            rows.append(
                Row(
                    name,
                    "-",
                    "-",
                    "-",
                    status="error",
                    note=f"{type(e).__name__}: {e}"[:500],
                    extra={"traceback": traceback.format_exc()},
                )
            )
        timings[name] = time.perf_counter() - t0
        print(f"[bench] {name}: {timings[name]:.1f} s", file=sys.stderr, flush=True)
    for cleanup in ctx.get("cleanup", []):
        cleanup()
    result = {
        "jaxreg": jr.__version__,
        "command": os.environ.get("JAXREG_BENCH_COMMAND") or " ".join(["jaxreg bench", *sys.argv[1:]]),
        "mode": mode,
        "settings": {k: v for k, v in settings.__dict__.items()},
        "machine": common.machine().to_dict(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": time.time() - started,
        "section_seconds": timings,
        "rows": [r.to_dict() | {"target_met": target_met(r.to_dict())} for r in rows],
        "torch_workers": ctx.get("torch_info"),
    }
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1, default=_json_default)
    if table:
        print_table(result)
    return result


def target_met(row: dict[str, Any]) -> bool | None:
    """Whether the row's ratio meets its target (``">= x ..."``); ``None`` without either."""
    bound, ratio = _target_bound(row), row.get("ratio")
    if bound is None or ratio is None:
        return None
    return bool(ratio >= bound)


def _json_default(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _target_bound(row: dict[str, Any]) -> float | None:
    target = row.get("target") or ""
    if not target.startswith(">="):
        return None
    try:
        return float(target[2:].split()[0])
    except ValueError:
        return None


def _fmt_ratio(ratio: float, bound: float | None) -> str:
    """Two decimals; more where two would round a missed target up to its bound (0.9695 is not 0.97)."""
    digits = 2
    while bound is not None and ratio < bound <= float(f"{ratio:.{digits}f}") and digits < 8:
        digits += 1
    return f"{ratio:.{digits}f}"


def format_rows(result: dict[str, Any]) -> list[list[str]]:
    """Table cells: section, workload, jaxreg, value, baseline, value, unit, ratio [IQR], target, note."""
    out = []
    for r in result["rows"]:
        quartiles = r.get("ratio_q25") is not None and r.get("ratio_q75") is not None
        if r["ratio"] is not None and r["status"] == "ok" and quartiles:
            ratio = f"{_fmt_ratio(r['ratio'], _target_bound(r))} [{r['ratio_q25']:.2f}-{r['ratio_q75']:.2f}]"
        elif r["ratio"] is not None:
            ratio = _fmt_ratio(r["ratio"], _target_bound(r))
        else:
            ratio = r["status"] if r["status"] not in ("ok", "info") else "-"
        out.append(
            [
                r["section"],
                r["workload"],
                r["jaxreg"],
                _fmt(r["jaxreg_value"]),
                r["baseline"],
                _fmt(r["baseline_value"]),
                r["unit"],
                ratio,
                r["target"] + {True: " (met)", False: " (missed)", None: ""}[target_met(r)],
                r["note"],
            ]
        )
    return out


HEADER = ["#", "workload", "jaxreg", "value", "baseline", "value", "unit", "ratio [IQR]", "target", "note"]


def print_table(result: dict[str, Any]) -> None:
    m = result["machine"]
    title = (
        f"jaxreg {result['jaxreg']} benchmarks ({result['mode']}): {m['cpu_model']}, {m['usable_cpus']} CPUs, "
        f"jax {m['jax']} ({m['backend']}), {m['allocator']}"
    )
    cells = format_rows(result)
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, show_lines=False)
        for h in HEADER:
            t.add_column(h, overflow="fold")
        for row in cells:
            t.add_row(*row)
        Console(width=220).print(t)
    except ImportError:
        print(title)
        print(markdown_table(result))


def markdown_table(result: dict[str, Any]) -> str:
    """The results as a markdown table (for the README)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in format_rows(result):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    return "\n".join(lines)


def _only(text: str) -> str:
    try:
        _sections(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    from jaxreg.cli import SEED_MAX, Parser, int_at_least

    p = Parser(prog="jaxreg bench", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", dest="mode", const="quick", help="a few minutes")
    g.add_argument("--tiny", action="store_const", dest="mode", const="tiny", help="seconds, for the tests")
    g.add_argument(
        "--mode", choices=("tiny", "quick", "full"), help="tiny, quick or full (default full; quick on a GPU)"
    )
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON (default: none)")
    p.add_argument(
        "--only",
        type=_only,
        default=None,
        help="comma-separated sections (default: all; 'peak' always runs): " + ",".join(SECTION_NAMES),
    )
    p.add_argument(
        "--seed",
        type=int_at_least(0, SEED_MAX),
        default=0,
        help="seed of inputs, initializations, dropout keys (default 0)",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="run on the GPU (JAX's default device) without CPU-only settings; one line and exit 0 without a GPU",
    )
    p.add_argument("--no-tune-malloc", action="store_true", help="keep the allocator this process started with")
    p.add_argument("--no-table", action="store_true", help="do not print the table")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "JAXREG_BENCH_COMMAND" not in os.environ:
        shown = sys.argv[1:] if argv is None else list(argv)
        os.environ["JAXREG_BENCH_COMMAND"] = " ".join(["jaxreg bench", *shown])
    if args.gpu and not common.on_gpu():
        print(
            f"jaxreg bench: --gpu: no GPU (JAX's default backend is {jax.default_backend()}); skipped", file=sys.stderr
        )
        return 0
    gpu = args.gpu or common.on_gpu()  # on a GPU, CPU-only settings would be wrong: as --gpu
    mode = args.mode or ("quick" if gpu else "full")  # a GPU run in minutes; --mode full for all of it
    result = run(
        quick=mode == "quick",
        json_path=args.json,
        tiny=mode == "tiny",
        only=args.only,
        tune_malloc=not args.no_tune_malloc,
        table=not args.no_table,
        seed=args.seed,
        gpu=gpu,
    )
    if args.markdown:
        print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
