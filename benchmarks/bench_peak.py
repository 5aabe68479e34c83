"""Comparison 7 (the machine's limit): sustained float32 matmul GFLOP/s measured in this run.

Also the 1024^3 rate, and the rate of matmuls at this MLP's layer shape (128x256 @ 256x256)
chained inside one program, the best a step made of such matmuls could reach. Achieved GFLOP/s
are reported as fractions of the large-matmul figure (``ctx["peak"]``) and, for the ensemble
step, of the layer-shape rate timed in the same rounds.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import jaxreg as jr
from benchmarks import common
from benchmarks.common import BATCH, Row, Settings

LAYER_CHAIN = 32  # layer-shape matmuls per call of the in-program layer rate


def layer_chain(settings: Settings):
    """``(fn, args, flops)``: ``LAYER_CHAIN`` dependent 128x256 @ 256x256 products in one program.

    The rate a step made of this MLP's widest layer could reach inside one compiled program: a
    chain ``c <- c @ b`` (each product needs the last, so XLA can neither hoist nor batch them),
    with no per-call dispatch in the figure, unlike a jitted single matmul called from Python.
    """
    a = jax.random.normal(common.key(settings, 0), (BATCH, 256), jnp.float32)
    b = jax.random.normal(common.key(settings, 1), (256, 256), jnp.float32) / 16.0  # keeps |c| ~ 1

    @jax.jit
    def chain(a, b):
        return jax.lax.fori_loop(0, LAYER_CHAIN, lambda i, c: c @ b, a)

    return chain, (a, b), 2.0 * LAYER_CHAIN * BATCH * 256 * 256


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    repeats = max(settings.pairs, 5)
    peak = jr.benchmark.matmul_peak(settings.peak_size, repeats=repeats)
    ctx["peak"] = peak
    rows = []
    if settings.peak_size != 1024:
        small = jr.benchmark.matmul_peak(1024, repeats=repeats)
        ctx["peak_1024"] = small.gflops
        rows.append(
            Row("7 machine", f"float32 matmul 1024^3 ({small.backend})", "jnp.matmul", "-", unit="GFLOP/s",
                jaxreg_value=small.gflops, jaxreg_rel_iqr=small.timing.rel_iqr, status="info",
                note=f"{small.gflops / peak.gflops:.0%} of the {peak.size}^3 rate", extra={"peak": small.to_dict()})
        )  # fmt: skip
    else:
        ctx["peak_1024"] = peak.gflops
    fn, args, flops = layer_chain(settings)
    layer = jr.benchmark.time_fn(fn, *args, repeats=repeats, min_time=0.05)
    layer_gflops = flops / layer.median / 1e9
    ctx["layer_gflops"] = layer_gflops
    rows.append(
        Row(
            "7 machine",
            f"float32 matmul 128x256 @ 256x256 (layer shape), {LAYER_CHAIN} chained in one program",
            "jnp.matmul",
            "-",
            unit="GFLOP/s",
            jaxreg_value=layer_gflops,
            jaxreg_rel_iqr=layer.rel_iqr,
            status="info",
            note=f"{layer_gflops / peak.gflops:.0%} of the {peak.size}^3 rate",
            extra={"timing": layer.to_dict()},
        )
    )
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
        *rows,
    ]
