"""Comparison 7 (the machine's limit): sustained float32 matmul GFLOP/s measured in this run.

Also the rate of one matmul at this MLP's layer shape (128x256 @ 256x256), the best a step made
of such matmuls could reach. Every other comparison's achieved GFLOP/s is a fraction of the
large-matmul figure (``ctx["peak"]``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import jaxreg as jr
from benchmarks import common
from benchmarks.common import BATCH, Row, Settings


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    peak = jr.benchmark.matmul_peak(settings.peak_size, repeats=max(settings.pairs, 5))
    ctx["peak"] = peak
    a = jax.random.normal(common.key(settings, 0), (BATCH, 256), jnp.float32)
    b = jax.random.normal(common.key(settings, 1), (256, 256), jnp.float32)
    layer = jr.benchmark.time_fn(jax.jit(jnp.matmul), a, b, repeats=max(settings.pairs, 5), min_time=0.05)
    layer_gflops = 2.0 * BATCH * 256 * 256 / layer.median / 1e9
    ctx["layer_gflops"] = layer_gflops
    return [
        Row(
            "7 machine",
            f"float32 matmul {peak.size}^3 ({peak.backend})",
            "jnp.matmul",
            "-",
            unit="GFLOP/s",
            jaxreg_value=peak.gflops,
            jaxreg_rel_iqr=peak.timing.rel_iqr,
            status="info",
            note=f"best repeat {peak.gflops_best:.1f} GFLOP/s",
            extra={"peak": peak.to_dict()},
        ),
        Row(
            "7 machine",
            "float32 matmul 128x256 @ 256x256 (layer shape)",
            "jnp.matmul",
            "-",
            unit="GFLOP/s",
            jaxreg_value=layer_gflops,
            jaxreg_rel_iqr=layer.rel_iqr,
            status="info",
            note=f"{layer_gflops / peak.gflops:.0%} of the large-matmul rate",
            extra={"timing": layer.to_dict()},
        ),
    ]
