"""Comparison 6: ES gradient of the MLP's batch loss, population 256 (antithetic).

jaxreg: ``jax.jit`` of ``jr.es.gradient`` (the population ``vmap``-ped). Baseline: a Python loop
over the 128 antithetic pairs of a jitted evaluation that draws the pair's noise, evaluates
``L(theta + sigma eps)`` and ``L(theta - sigma eps)`` and accumulates ``(f+ - f-) eps`` (the same
estimate, one dispatch per pair).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import jaxreg as jr
from benchmarks import common
from benchmarks.common import Row, Settings

SIGMA = 0.01


def es_available() -> tuple[Any, str]:
    es = getattr(jr, "es", None)
    fn = getattr(es, "gradient", None)
    return (fn, "") if fn is not None else (None, "jr.es.gradient not available")


def _loss(params, x, y):
    return common.cross_entropy(common.mlp_apply(params, x, None), y)


def build_jaxreg(population: int):
    x, y = common.batch()
    params = common.init_mlp(jax.random.key(0))

    def grad(p, x, y, key):
        return jr.es.gradient(lambda q: _loss(q, x, y), p, key, sigma=SIGMA, population=population)

    args = (params, x, y, jax.random.key(3))
    return jr.benchmark.compile_fn(grad, *args), args


def build_loop(population: int):
    x, y = common.batch()
    params = common.init_mlp(jax.random.key(0))
    leaves, treedef = jax.tree.flatten(params)

    def pair(g, p, x, y, key):
        keys = jax.random.split(key, len(leaves))
        eps = jax.tree.unflatten(
            treedef, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
        )
        plus = _loss(jax.tree.map(lambda a, e: a + SIGMA * e, p, eps), x, y)
        minus = _loss(jax.tree.map(lambda a, e: a - SIGMA * e, p, eps), x, y)
        return jax.tree.map(lambda acc, e: acc + (plus - minus) * e, g, eps)

    zeros = jax.tree.map(jnp.zeros_like, params)
    compiled = jr.benchmark.compile_fn(pair, zeros, params, x, y, jax.random.key(0))
    keys = list(jax.random.split(jax.random.key(3), population // 2))
    scale = 1.0 / (population * SIGMA)

    def loop():
        g = zeros
        for k in keys:
            g = compiled(g, params, x, y, k)
        return jax.tree.map(lambda a: a * scale, g)

    return loop, (), compiled


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    fn, why = es_available()
    pop = settings.es_population
    workload = f"ES gradient, population {pop} (antithetic), MLP batch loss"
    if fn is None:
        return [common.unavailable("6 es", workload, why)]
    jfn, jargs = build_jaxreg(pop)
    lfn, largs, lcompiled = build_loop(pop)
    comp = jr.benchmark.compare(
        jfn,
        lfn,
        jargs,
        largs,
        pairs=settings.pairs,
        warmup=settings.warmup,
        number=settings.number,
        min_time=settings.min_time,
    )
    return [
        common.row_from_comparison(
            "6 es",
            workload,
            "jr.es.gradient (vmap)",
            "loop of jitted evaluations",
            comp,
            unit="gradients/s",
            target=">= 1.0",
            extra={"jaxreg_compile": jfn.to_dict(), "baseline_compile_per_pair": lcompiled.to_dict()},
        )
    ]
