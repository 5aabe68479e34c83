"""Comparison 7b: where the stacked ensemble step spends its time (its anatomy), N members.

The plain ``jax.vmap`` of the jaxreg digits-MLP step (``jr.l2`` on the kernels in the loss,
``jr.dropout`` 0.5, Adam) against variants of it, all timed in the same interleaved rounds:

- without dropout (rate 0, which ``jr.dropout`` turns into the identity): the cost of the
  masks' random bits and their multiply;
- SGD instead of Adam: the cost of Adam's elementwise passes over params and both moments;
- the gradient alone (no optimizer update at all);
- the step's GEMMs alone: the 3 forward products, the 3 weight gradients and the 2 input
  gradients of the same shapes (128x64 @ 64x256, 128x256 @ 256x256, 128x256 @ 256x10 and their
  transposes), vmapped over the members: the floor a step made of these products could reach.

Each row's ratio is the variant's time over the full step's (paired per round; below 1 means
the variant is cheaper): ``1 - ratio`` is the share of the step the left-out part costs. The
GEMMs' row says how much of the step is the batched matrix products themselves, which no
fusion of jaxreg's elementwise passes can remove.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

import jaxreg as jr
from benchmarks import common
from benchmarks.common import Row, Settings


def variants(n: int) -> dict[str, tuple[Callable, tuple[Any, ...]]]:
    """The full step and its variants, compiled for ``n`` members: ``name -> (fn, args)``."""
    x, y = common.batch()
    params = jax.vmap(common.init_mlp)(jax.random.split(jax.random.key(0), n))
    keys = jax.random.split(jax.random.key(1), n)

    drop, _ = common.jaxreg_dropout()
    penalty = jr.l2(common.L2, mask=jr.masks.kernels)

    def loss(p, k, rate):
        return common.cross_entropy(common.mlp_apply(p, x, k, rate=rate, dropout=drop), y) + penalty(p)

    def step(opt, rate):
        def one(p, s, k):
            value, grads = jax.value_and_grad(loss)(p, k, rate)
            with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
                updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, value

        return one

    def gradient(p, s, k):
        return jax.grad(loss)(p, k, common.RATE), s

    def gemms(p, s, k):
        w = [p[f"Dense_{i}"]["kernel"] for i in range(3)]
        h1 = x @ w[0]
        h2 = h1 @ w[1]
        out = h2 @ w[2]
        d2 = out @ w[2].T
        d1 = d2 @ w[1].T
        return (x.T @ d1, h1.T @ d2, h2.T @ out), s

    adam, sgd = optax.adam(common.LR), optax.sgd(common.LR)
    table = {
        "full step": (step(adam, common.RATE), adam),
        "without dropout": (step(adam, 0.0), adam),
        "SGD instead of Adam": (step(sgd, common.RATE), sgd),
        "gradient alone": (gradient, adam),
        "GEMMs alone": (gemms, adam),
    }
    out = {}
    for name, (fn, opt) in table.items():
        args = (params, jax.vmap(opt.init)(params), keys)
        out[name] = (jr.benchmark.compile_fn(jax.vmap(fn), *args), args)
    return out


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for n in settings.members:
        if n < 2:
            continue  # one member: no stacking to dissect
        v = variants(n)
        ts = jr.benchmark.interleave(
            [f for f, _ in v.values()],
            [a for _, a in v.values()],
            rounds=settings.pairs,
            warmup=settings.warmup,
            number=settings.number,
            min_time=settings.min_time,
        )
        t = dict(zip(v, ts))
        full = t.pop("full step")
        flops = common.member_flops() * n
        for name, tv in t.items():
            share = [b / a for a, b in zip(full.times, tv.times)]
            rows.append(
                Row(
                    "7 anatomy",
                    f"plain vmap step, N = {n}",
                    name,
                    "full step (jr.l2, jr.dropout 0.5, Adam)",
                    unit="ms",
                    jaxreg_value=1e3 * tv.median,
                    baseline_value=1e3 * full.median,
                    ratio=float(np.median(share)),
                    ratio_q25=float(np.quantile(share, 0.25)),
                    ratio_q75=float(np.quantile(share, 0.75)),
                    ratios=share,
                    status="info",
                    note=f"time / full step's (paired); full step {flops / full.median / 1e9:.0f} GFLOP/s",
                )
            )
    return rows
