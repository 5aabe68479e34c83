"""Peak resident memory (from the OS) of the ensemble step and of MC-dropout, per member / mask.

Peak RSS is a high-water mark, so every configuration runs in its own fresh process
(``benchmarks.common.peak_rss_of``), and the per-member (per-mask) figure is the difference from a
one-member (one-mask) process divided by the extra members (masks):

    per member = (peak(N) - peak(1)) / (N - 1)

Ensemble: ``jr.ensemble.train_step`` (chunked members) vs plain ``jax.vmap``, three steps each.
MC-dropout: ``jr.mc_dropout`` with its default chunk (16 masks) vs one ``vmap`` over all K masks
(``chunk_size=K``), over all 1797 digits.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import Row, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 2.0**20

ENSEMBLE_CODE = """
import jax
from benchmarks import bench_ensemble
fn, args, _ = bench_ensemble.build_new({n}, {which!r})
for _ in range(3):
    out = fn(*args)
jax.block_until_ready(out)
"""

MC_CODE = """
import jax
from benchmarks import bench_mc_dropout
fn, args = bench_mc_dropout.build_jaxreg({k}, chunk_size={chunk})
for _ in range(2):
    out = fn(*args)
jax.block_until_ready(out)
"""


def _peak(code: str) -> int:
    env = {"PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return common.peak_rss_of(code, env=env)


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    if not settings.memory:
        return [
            Row("memory", "peak RSS per member / mask", "-", "-", status="skipped", note=f"not in {settings.mode} mode")
        ]
    n = max(settings.members)
    k = max(settings.mc_samples)
    jobs = {
        ("ens", "jaxreg", 1): ENSEMBLE_CODE.format(n=1, which="jaxreg"),
        ("ens", "jaxreg", n): ENSEMBLE_CODE.format(n=n, which="jaxreg"),
        ("ens", "vmap", 1): ENSEMBLE_CODE.format(n=1, which="vmap"),
        ("ens", "vmap", n): ENSEMBLE_CODE.format(n=n, which="vmap"),
        ("mc", "base", 1): MC_CODE.format(k=1, chunk=1),
        ("mc", "chunked", k): MC_CODE.format(k=k, chunk=None),
        ("mc", "vmap", k): MC_CODE.format(k=k, chunk=k),
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(_peak, code) for key, code in jobs.items()}
        peaks = {key: f.result() for key, f in futures.items()}
    per_member = {w: (peaks[("ens", w, n)] - peaks[("ens", w, 1)]) / (n - 1) / MIB for w in ("jaxreg", "vmap")}
    per_mask = {w: (peaks[("mc", w, k)] - peaks[("mc", "base", 1)]) / (k - 1) / MIB for w in ("chunked", "vmap")}
    raw = {"/".join(map(str, key)): v / MIB for key, v in peaks.items()}

    def ratio(base: float, ours: float) -> float | None:
        return base / ours if ours > 0 and base > 0 else None

    return [
        Row(
            "memory",
            f"ensemble step, peak RSS per member (N = 1 vs {n})",
            "jr.ensemble.train_step",
            "plain jax.vmap",
            unit="MiB/member",
            jaxreg_value=per_member["jaxreg"],
            baseline_value=per_member["vmap"],
            ratio=ratio(per_member["vmap"], per_member["jaxreg"]),
            status="info",
            note=f"whole process at N = {n}: {raw[f'ens/jaxreg/{n}']:.0f} vs {raw[f'ens/vmap/{n}']:.0f} MiB",
            extra={"peak_rss_mib": raw},
        ),
        Row(
            "memory",
            f"MC-dropout, peak RSS per mask (K = 1 vs {k}, 1797 inputs)",
            "jr.mc_dropout (chunks of 16)",
            f"one vmap over {k} masks",
            unit="MiB/mask",
            jaxreg_value=per_mask["chunked"],
            baseline_value=per_mask["vmap"],
            ratio=ratio(per_mask["vmap"], per_mask["chunked"]),
            status="info",
            note=f"whole process: {raw[f'mc/chunked/{k}']:.0f} vs {raw[f'mc/vmap/{k}']:.0f} MiB",
            extra={"peak_rss_mib": raw},
        ),
    ]
