"""Section eager: the library's looped programs called outside ``jit``, cached vs op by op.

jaxreg: an eager call of ``jr.mc_dropout``, ``jr.ensemble.map`` and ``jr.es.gradient`` with an
explicit chunk (a loop over chunks), which compiles the traced program once and reuses it
(``jaxreg/_eager.py``). Baseline: the same call with ``JAXREG_EAGER_CACHE=0``, op by op, which
traces and compiles its loop on every call (what every eager call did before the cache).
Each call traces the program either way; inside ``jax.jit`` the same calls cost a few ms. One
row is one ``vmap`` of all members, which runs op by op either way (the ratio is 1 there).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import jaxreg as jr
from benchmarks import common
from benchmarks.common import Row, Settings


def _op_by_op(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        before = os.environ.get("JAXREG_EAGER_CACHE")
        os.environ["JAXREG_EAGER_CACHE"] = "0"
        try:
            return fn()
        finally:
            if before is None:
                del os.environ["JAXREG_EAGER_CACHE"]
            else:
                os.environ["JAXREG_EAGER_CACHE"] = before

    return run


def cases() -> list[tuple[str, Callable[[], Any]]]:
    """(workload, call) of the digits MLP's eager calls."""
    x, y = common.batch()
    params = common.init_mlp(jax.random.key(0))
    stacked = jr.ensemble.replicate(params, 16)

    def apply(p, x_, rng):
        return common.mlp_apply(p, x_, rng, dropout=jr.dropout)

    def logits(p, x_):
        return common.mlp_apply(p, x_, None)

    return [
        (
            "jr.mc_dropout, K = 64 masks in chunks of 8",
            lambda: jr.mc_dropout(apply, params, x, jax.random.key(1), 64, chunk_size=8),
        ),
        (
            "jr.ensemble.map of 16 members' logits in chunks of 4",
            lambda: jr.ensemble.map(logits, in_axes=(0, None), chunk_size=4)(stacked, x),
        ),
        (
            "jr.ensemble.map of 16 members' logits in one vmap (no loop: op by op either way)",
            lambda: jr.ensemble.map(logits, in_axes=(0, None), chunk_size=16)(stacked, x),
        ),
        (
            "jr.es.gradient, population 32 in chunks of 4 directions",
            lambda: jr.es.gradient(
                lambda p: common.cross_entropy(logits(p, x), y),
                params,
                jax.random.key(2),
                sigma=0.01,
                population=32,
                chunk_size=4,
            ),
        ),
    ]


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    rows = []
    batch = jnp.shape(common.batch()[0])[0]
    for workload, call in cases():
        cached = lambda call=call: jax.block_until_ready(call())  # noqa: E731
        comp = jr.benchmark.compare(
            cached,
            _op_by_op(cached),
            pairs=settings.pairs,
            warmup=max(1, settings.warmup),
            number=1,
        )
        rows.append(
            common.row_from_comparison(
                "eager",
                f"{workload}, called outside jit (MLP {common.SIZES}, batch {batch})",
                "eager call, compiled once (the cache)",
                "op by op (JAXREG_EAGER_CACHE=0)",
                comp,
                target=">= 1.0" if "one vmap" not in workload else "",
            )
        )
    return rows
