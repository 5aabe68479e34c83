"""Comparison 8: on a GPU, the fraction of the GPU's peak; here, "no GPU" when there is none.

When JAX's default backend is a GPU, every other comparison already runs on it (the matmul
peak of comparison 7 is then the GPU's measured float32 matmul rate, with JAX's default matmul
precision), and this adds the device's name and the best ensemble step's fraction of that peak.
"""

from __future__ import annotations

from typing import Any

import jax

from benchmarks import common
from benchmarks.common import Row, Settings


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    if not common.on_gpu():
        note = f"no GPU (JAX backend: {jax.default_backend()})"
        return [Row("8 gpu", "GPU comparisons", "-", "-", status="skipped", note=note)]
    peak = ctx.get("peak")
    device = jax.devices()[0].device_kind
    return [
        Row(
            "8 gpu",
            f"float32 matmul peak on {device}",
            "jnp.matmul",
            "-",
            unit="GFLOP/s",
            jaxreg_value=None if peak is None else peak.gflops,
            status="info",
            note="the other rows of this run were measured on this GPU; fractions in '7 peak fraction'",
        )
    ]
