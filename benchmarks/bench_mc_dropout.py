"""Comparison 4: MC-dropout over all 1797 digits, K masks: ``jr.mc_dropout`` vs loops.

jaxreg: ``jax.jit`` of ``jr.mc_dropout`` (masks ``vmap``-ped in chunks, moments merged) with
``jr.dropout``. Baselines, each returning the same mean and variance of the softmax outputs:
a Python loop of K calls of a jitted pass that accumulates the sums (hand-written JAX with
``jax.random.bernoulli`` dropout), and PyTorch's loop (``torch.no_grad``, 1 thread and 2
threads passive, the faster reported) when torch is installed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg as jr
from benchmarks import bench_torch, common
from benchmarks.common import Row, Settings


def mc_available() -> tuple[Any, str]:
    fn = getattr(jr, "mc_dropout", None)
    return (fn, "") if fn is not None else (None, "jr.mc_dropout not available")


def build_jaxreg(k: int, chunk_size: int | None = None) -> tuple[Any, tuple[Any, ...]]:
    """(compiled, args) of ``jr.mc_dropout`` with K masks over all digits."""
    drop, _ = common.jaxreg_dropout()
    x = jnp.asarray(common.digits()[0])
    params = common.init_mlp(jax.random.key(0))

    def apply_fn(p, x, rng):
        return jax.nn.softmax(common.mlp_apply(p, x, rng, dropout=drop))

    fn = jax.jit(lambda p, x, key: jr.mc_dropout(apply_fn, p, x, key, k, chunk_size=chunk_size))
    args = (params, x, jax.random.key(2))
    return jr.benchmark.compile_fn(fn, *args), args


def build_loop(k: int) -> tuple[Any, tuple[Any, ...]]:
    """A Python loop of K jitted passes (bernoulli dropout) accumulating sum and sum of squares."""
    x = jnp.asarray(common.digits()[0])
    params = common.init_mlp(jax.random.key(0))

    def acc(s, s2, p, x, key):
        out = jax.nn.softmax(common.mlp_apply(p, x, key))
        return s + out, s2 + out * out

    zeros = jnp.zeros((x.shape[0], common.SIZES[-1]), jnp.float32)
    compiled = jr.benchmark.compile_fn(acc, zeros, zeros, params, x, jax.random.key(0))
    keys = list(jax.random.split(jax.random.key(2), k))

    def loop():
        s, s2 = zeros, zeros
        for key in keys:
            s, s2 = compiled(s, s2, params, x, key)
        mean = s / k
        return mean, s2 / k - mean * mean

    return loop, ()


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    mc, why = mc_available()
    if mc is None:
        return [common.unavailable("4 mc-dropout", f"MC-dropout, K = {k}", why) for k in settings.mc_samples]
    rows: list[Row] = []
    # PyTorch's workers are CPU ones (thread settings, OMP_WAIT_POLICY): no peer for a GPU run.
    workers = bench_torch.workers(ctx) if bench_torch.torch_available() and not settings.gpu else {}
    for k in settings.mc_samples:
        jfn, jargs = build_jaxreg(k)
        lfn, largs = build_loop(k)
        fns, args, labels = [jfn, lfn], [jargs, largs], ["jaxreg", "loop"]
        ids = []
        for wname, w in workers.items():
            wid = w.setup("mc_loop", k)
            ids.append((w, wid))
            fns.append(w.timer(wid))
            args.append(())
            labels.append(f"torch loop, {wname}")
        ts = jr.benchmark.interleave(
            fns,
            args,
            rounds=5,  # calls last up to seconds; the calibration call doubles as warm-up
            warmup=0 if settings.number is None else settings.warmup,
            number=settings.number,
            min_time=settings.min_time,
        )
        t = dict(zip(labels, ts))
        workload = f"MC-dropout, 1797 inputs, K = {k}"
        baselines = [("loop", "JAX loop of jitted passes", ">= 1.0")]
        if workers:
            best = min(labels[2:], key=lambda name: t[name].median)
            baselines.append((best, f"best torch: {best}", ">= 1.5" if k == 64 else ""))
        for key, blabel, target in baselines:
            sp = [b / a for a, b in zip(t["jaxreg"].times, t[key].times)]
            rows.append(
                Row(
                    "4 mc-dropout",
                    workload,
                    "jr.mc_dropout",
                    blabel,
                    unit="ms",
                    jaxreg_value=1e3 * t["jaxreg"].median,
                    baseline_value=1e3 * t[key].median,
                    ratio=float(np.median(sp)),
                    ratio_q25=float(np.quantile(sp, 0.25)),
                    ratio_q75=float(np.quantile(sp, 0.75)),
                    ratios=sp,
                    jaxreg_rel_iqr=t["jaxreg"].rel_iqr,
                    baseline_rel_iqr=t[key].rel_iqr,
                    target=target,
                    note="; ".join(f"{n}: {1e3 * v.median:.0f} ms" for n, v in t.items() if n.startswith("torch"))
                    if key != "loop"
                    else "",
                    extra={"ms": {n: 1e3 * v.median for n, v in t.items()}, "jaxreg_compile": jfn.to_dict()},
                )
            )
        for w, wid in ids:
            w.drop(wid)
    if not workers:
        rows.append(
            Row(
                "4 mc-dropout",
                "MC-dropout vs PyTorch",
                "-",
                "-",
                status="skipped",
                note="PyTorch's peers are CPU ones; not run with --gpu" if settings.gpu else "torch not installed",
            )
        )
    return rows
