"""Comparisons 0 and 1: one jitted training step through jaxreg vs the same math by hand.

0. (issue 2) L2 (coupled, ``jr.add_penalty_grad``) + L1 (``jr.proximal``) + max-norm
   (``jr.project``) in an optax chain, no dropout, vs the same chain written by hand: L2 added to
   the gradient, Adam, soft threshold and max-norm rescaling of the kernels.
1. ``jr.regularize`` + ``jr.dropout`` vs an L2 term and ``jax.random.bernoulli`` dropout by hand;
   and ``jr.dropout`` alone (rate 0.5, 16- and 8-bit thresholds) vs ``jax.random.bernoulli``
   dropout as flax writes it, on a 64x512x512 activation (8x64x64 in ``--tiny``).

Target: jaxreg within 3% of hand-written (ratio >= 0.97); the dropout rows have none.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

import jaxreg as jr
from benchmarks import common
from benchmarks.common import L1, L2, LR, MAX_NORM, Row, Settings

TARGET = ">= 0.97 (within 3%)"


def make_prox_steps() -> tuple[Any, Any, Any, Any]:
    """(jaxreg_step, jaxreg_opt, hand_step, hand_opt) for comparison 0; both are pure, unjitted."""
    kernels = jr.masks.kernels
    jopt = optax.chain(
        jr.add_penalty_grad(jr.l2(L2, mask=kernels)),
        optax.adam(LR),
        jr.proximal(jr.l1(L1, mask=kernels), LR),
        jr.project(jr.max_norm(MAX_NORM, axis=0, mask=kernels)),
    )

    def data_loss(params, x, y):
        return common.cross_entropy(common.mlp_apply(params, x, None), y)

    def jaxreg_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(data_loss)(params, x, y)
        with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
            updates, opt_state = jopt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    hopt = optax.adam(LR)

    def soft_threshold(w, t):
        return jnp.sign(w) * jnp.maximum(jnp.abs(w) - t, 0.0)

    def max_norm(w):
        norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=0, keepdims=True))
        return w * jnp.where(norm > MAX_NORM, MAX_NORM / jnp.where(norm > 0, norm, 1.0), 1.0)

    def hand_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(data_loss)(params, x, y)
        grads = {
            name: {"kernel": g["kernel"] + 2.0 * L2 * params[name]["kernel"], "bias": g["bias"]}
            for name, g in grads.items()
        }
        with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
            updates, opt_state = hopt.update(grads, opt_state, params)
        stepped = optax.apply_updates(params, updates)
        new = {
            name: {"kernel": max_norm(soft_threshold(p["kernel"], LR * L1)), "bias": p["bias"]}
            for name, p in stepped.items()
        }
        return new, opt_state, loss

    return jaxreg_step, jopt, hand_step, hopt


def _compare_steps(settings: Settings, jstep, jargs, hstep, hargs):
    cj = jr.benchmark.compile_fn(jstep, *jargs)
    ch = jr.benchmark.compile_fn(hstep, *hargs)
    comp = jr.benchmark.compare(
        cj,
        ch,
        jargs,
        hargs,
        pairs=settings.pairs,
        warmup=settings.warmup,
        number=settings.number,
        min_time=settings.min_time,
    )
    return cj, ch, comp


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    x, y = common.batch()
    params = common.init_mlp(common.key(settings, 0))
    rows = []

    # 0. L2 + L1 (proximal) + max-norm (project), no dropout.
    jstep, jopt, hstep, hopt = make_prox_steps()
    cj, ch, comp = _compare_steps(
        settings, jstep, (params, jopt.init(params), x, y), hstep, (params, hopt.init(params), x, y)
    )
    rows.append(
        common.row_from_comparison(
            "0 step (issue 2)",
            "MLP step, L2 + L1 prox + max-norm, Adam",
            "jr.add_penalty_grad/proximal/project",
            "optax by hand",
            comp,
            unit="steps/s",
            target=TARGET,
            extra={
                "jaxreg_compile": cj.to_dict(),
                "baseline_compile": ch.to_dict(),
                "peak_fraction_jaxreg": _fraction(cj.flops, comp.a.median, ctx),
            },
        )
    )

    # 1. regularize + dropout vs L2 term + bernoulli dropout.
    jstep, jopt, note = common.make_jaxreg_step()
    hstep, hopt = common.make_hand_step()
    key = common.key(settings, 1)
    cj, ch, comp = _compare_steps(
        settings, jstep, (params, jopt.init(params), x, y, key), hstep, (params, hopt.init(params), x, y, key)
    )
    rows.append(
        common.row_from_comparison(
            "1 step",
            "MLP step, L2 + dropout 0.5, Adam",
            "jr.regularize + jr.dropout",
            "optax + bernoulli dropout by hand",
            comp,
            unit="steps/s",
            target=TARGET,
            note=note,
            extra={
                "jaxreg_compile": cj.to_dict(),
                "baseline_compile": ch.to_dict(),
                "peak_fraction_jaxreg": _fraction(cj.flops, comp.a.median, ctx),
                "peak_fraction_baseline": _fraction(ch.flops, comp.b.median, ctx),
            },
        )
    )
    rows += dropout_rows(settings)
    return rows


def dropout_rows(settings: Settings) -> list[Row]:
    """``jr.dropout`` vs ``jax.random.bernoulli`` dropout on one large activation (random bits dominate)."""
    shape = (8, 64, 64) if settings.mode == "tiny" else (64, 512, 512)
    x = jnp.ones(shape, jnp.float32)
    key = common.key(settings, 2)
    bernoulli = jax.jit(lambda k, x: common.bernoulli_dropout(k, x, common.RATE))
    rows = []
    for precision in (16, 8):
        ours = jax.jit(lambda k, x, p=precision: jr.dropout(k, x, common.RATE, precision=p))
        comp = jr.benchmark.compare(
            ours, bernoulli, (key, x), (key, x), pairs=settings.pairs, warmup=settings.warmup,
            number=settings.number, min_time=settings.min_time,
        )  # fmt: skip
        rows.append(
            common.row_from_comparison(
                "1 dropout", f"dropout 0.5 of a float32 {'x'.join(map(str, shape))} activation",
                f"jr.dropout (precision={precision})", "jax.random.bernoulli dropout (flax's)", comp,
                unit="calls/s", target="",
            )
        )  # fmt: skip
    return rows


def _fraction(flops: float, seconds: float, ctx: dict[str, Any]) -> float | None:
    peak = ctx.get("peak")
    return None if peak is None else jr.benchmark.fraction_of_peak(flops, seconds, peak)
