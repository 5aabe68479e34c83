"""Runs jaxreg's benchmarks and prints/writes the results table.

Usage (from the repository root)::

    python -m benchmarks.run [--quick | --tiny] [--json PATH] [--only step,ensemble,...] [--no-tune-malloc]

or ``jaxreg bench`` with the same options. Every comparison is timed in alternation with its
baseline in this one run (paired ratios; the ratio column is always "times better than the
baseline", > 1 meaning jaxreg is faster), as the median of >= 5 timed repeats after warm-up, with
compile time reported apart. Modes: ``--tiny`` (under a minute on a quiet 2-core machine; the
test suite's end-to-end check, its figures mean little), ``--quick`` (a few minutes), default full
(about 11 minutes on 2 shared cores). ``--markdown`` also prints the table as markdown.

Allocator: with glibc's default malloc XLA returns its multi-MB temporaries to the OS and faults
them back every step (PERF-NOTES). Unless ``--no-tune-malloc`` is given or ``MALLOC_*`` /
``LD_PRELOAD`` are already set, the runner re-runs itself in a subprocess with
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456``
(they must be set before the process starts). Worker processes (PyTorch, memory) inherit the
same environment, so every side runs with the same allocator; the JSON records which one ran.
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

import jaxreg as jr
from benchmarks import common
from benchmarks.common import Row, Settings

# (name, module) in run order; "peak" first: the others use its figure.
SECTIONS = (
    ("peak", "benchmarks.bench_peak"),
    ("step", "benchmarks.bench_step"),
    ("ensemble", "benchmarks.bench_ensemble"),
    ("torch", "benchmarks.bench_torch"),
    ("mc_dropout", "benchmarks.bench_mc_dropout"),
    ("training", "benchmarks.bench_training"),
    ("es", "benchmarks.bench_es"),
    ("memory", "benchmarks.bench_memory"),
    ("gpu", "benchmarks.bench_gpu"),
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _allocator_is_set() -> bool:
    return bool(os.environ.get("LD_PRELOAD")) or any(k.startswith("MALLOC_") for k in os.environ)


def _rerun_with_malloc_tuning(args: argparse.Namespace) -> dict[str, Any]:
    """Re-runs the benchmark in a subprocess with the glibc tuning variables set."""
    env = dict(os.environ)
    env.update(common.MALLOC_TUNING)
    json_path = args.json
    tmp = None
    if json_path is None:
        tmp = REPO_ROOT / f".bench-{os.getpid()}.json"
        json_path = str(tmp)
    argv = [sys.executable, "-m", "benchmarks.run", "--no-tune-malloc", "--json", json_path, "--mode", args.mode]
    if args.only:
        argv += ["--only", args.only]
    if args.no_table:
        argv += ["--no-table"]
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(argv, env=env, cwd=str(REPO_ROOT), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed with exit code {proc.returncode}")
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
) -> dict[str, Any]:
    """Runs the benchmarks and returns the results (also written to ``json_path`` if given).

    Args:
      quick: about 2 minutes instead of about 15.
      json_path: where to write the JSON results.
      tiny: seconds; for the test suite (overrides ``quick``).
      only: section names (comma-separated or a list) to run; default all.
      tune_malloc: re-run in a subprocess with the glibc malloc tuning unless an allocator
        setting is already in the environment.
      table: print the table.

    Returns:
      ``{"machine", "settings", "command", "rows", "duration_s", ...}``.
    """
    mode = "tiny" if tiny else ("quick" if quick else "full")
    if isinstance(only, list):
        only = ",".join(only)
    if tune_malloc and not _allocator_is_set():
        ns = argparse.Namespace(json=json_path, mode=mode, only=only, no_table=not table)
        return _rerun_with_malloc_tuning(ns)
    return _run_here(mode, json_path, only, table)


def _run_here(mode: str, json_path: str | None, only: str | None, table: bool) -> dict[str, Any]:
    settings = Settings.for_mode(mode)
    wanted = None if not only else {s.strip() for s in only.split(",") if s.strip()}
    unknown = (wanted or set()) - {name for name, _ in SECTIONS}
    if unknown:
        raise ValueError(f"only: unknown sections {sorted(unknown)}; choose from {[n for n, _ in SECTIONS]}.")
    started = time.time()
    ctx: dict[str, Any] = {}
    rows: list[Row] = []
    timings: dict[str, float] = {}
    for name, module_name in SECTIONS:
        if wanted is not None and name not in wanted and not (name == "peak"):
            continue
        t0 = time.perf_counter()
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
        "command": os.environ.get("JAXREG_BENCH_COMMAND") or " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
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
    target, ratio = row.get("target") or "", row.get("ratio")
    if not target.startswith(">=") or ratio is None:
        return None
    try:
        bound = float(target[2:].split()[0])
    except ValueError:
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


def format_rows(result: dict[str, Any]) -> list[list[str]]:
    """Table cells: section, workload, jaxreg, value, baseline, value, unit, ratio [IQR], target, note."""
    out = []
    for r in result["rows"]:
        if r["ratio"] is not None and r["status"] == "ok":
            ratio = f"{r['ratio']:.2f} [{r['ratio_q25']:.2f}-{r['ratio_q75']:.2f}]"
        elif r["ratio"] is not None:
            ratio = f"{r['ratio']:.2f}"
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", dest="mode", const="quick", help="about 2 minutes")
    g.add_argument("--tiny", action="store_const", dest="mode", const="tiny", help="seconds, for tests")
    g.add_argument("--mode", choices=("tiny", "quick", "full"), default="full")
    p.add_argument("--json", metavar="PATH", default=None, help="write results as JSON")
    p.add_argument("--only", default=None, help="comma-separated sections: " + ",".join(n for n, _ in SECTIONS))
    p.add_argument("--no-tune-malloc", action="store_true", help="keep the allocator this process started with")
    p.add_argument("--no-table", action="store_true", help="do not print the table")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "JAXREG_BENCH_COMMAND" not in os.environ:
        shown = sys.argv[1:] if argv is None else list(argv)
        os.environ["JAXREG_BENCH_COMMAND"] = " ".join(["bench", *shown])
    mode = args.mode or "full"
    result = run(
        quick=mode == "quick",
        json_path=args.json,
        tiny=mode == "tiny",
        only=args.only,
        tune_malloc=not args.no_tune_malloc,
        table=not args.no_table,
    )
    if args.markdown:
        print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
