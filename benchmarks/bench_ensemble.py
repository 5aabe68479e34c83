"""Comparisons 2 and 7: ensemble training step, N members, member-steps/s.

jaxreg's ensemble step (``jr.ensemble.train_step``: ``jr.ensemble.map`` of the step) against plain ``jax.vmap``
of the hand-written step and a Python loop of the jitted hand-written single step, timed in
alternation. Every member sees the same batch with its own dropout key. Also each ensemble
step's achieved GFLOP/s (FLOPs from XLA's cost analysis) as a fraction of the matmul peak and of
the layer-shape matmul rate, both timed in the same rounds (comparison 7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr
from benchmarks import bench_peak, common
from benchmarks.common import Row, Settings

IN_AXES = (0, 0, None, None, 0)


def ensemble_map() -> tuple[Callable | None, str]:
    """``jr.ensemble.train_step`` if it exists yet, else ``(None, why)``."""
    ens = getattr(jr, "ensemble", None)
    fn = getattr(ens, "train_step", None)
    if fn is None:
        return None, "jr.ensemble.train_step not available"
    return fn, ""


def jaxreg_ensemble_step() -> tuple[Callable, Any]:
    """``jr.ensemble.train_step`` of the jaxreg loss (``jr.regularize`` + ``jr.dropout``), unjitted."""
    train_step, why = ensemble_map()
    if train_step is None:
        raise RuntimeError(why)
    drop, _ = common.jaxreg_dropout()
    opt = optax.adam(common.LR)
    loss = jr.regularize(
        lambda params, batch, rng, hparams: common.cross_entropy(
            common.mlp_apply(params, batch[0], rng, dropout=drop), batch[1]
        ),
        jr.l2(common.L2, mask=jr.masks.kernels),
        has_aux=False,
    )
    return train_step(loss, opt, has_aux=True), opt


def stacked_inputs(n: int, opt: Any) -> tuple[Any, ...]:
    """(params, opt_state, x, y, keys) with a leading member axis of size ``n``."""
    x, y = common.batch()
    params = jax.vmap(common.init_mlp)(jax.random.split(jax.random.key(0), n))
    opt_state = jax.vmap(opt.init)(params)
    keys = jax.random.split(jax.random.key(1), n)
    return params, opt_state, x, y, keys


def unstack(tree: Any, n: int) -> list[Any]:
    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]


_BUILT: dict[tuple[int, str], tuple[Callable, tuple[Any, ...], float]] = {}


def build(n: int, which: str) -> tuple[Callable, tuple[Any, ...], float]:
    """As :func:`build_new`, cached per process (sections 2 and 3 share the compiled steps)."""
    if (n, which) not in _BUILT:
        _BUILT[(n, which)] = build_chunked(n) if which == "chunked" else build_new(n, which)
    return _BUILT[(n, which)]


def build_new(n: int, which: str) -> tuple[Callable, tuple[Any, ...], float]:
    """An N-member ensemble step ``(fn, args, flops_per_call)``; ``which`` is "jaxreg", "vmap" or "loop".

    "jaxreg": ``jr.ensemble.train_step`` of the jaxreg loss, jitted; "vmap": ``jax.jit(jax.vmap(step))``
    of the hand-written step; "loop": a Python loop over members of the jitted hand-written step.
    """
    if which == "jaxreg":
        step, opt = jaxreg_ensemble_step()
        params, opt_state, x, y, _ = stacked_inputs(n, opt)
        args = (params, opt_state, (x, y), jax.random.key(1))
        c = jr.benchmark.compile_fn(step, *args)
        return c, args, c.flops
    step, opt = common.make_hand_step()
    args = stacked_inputs(n, opt)
    if which == "vmap":
        c = jr.benchmark.compile_fn(jax.vmap(step, in_axes=IN_AXES), *args)
        return c, args, c.flops
    if which == "loop":
        params, opt_state, x, y, keys = args
        single = jr.benchmark.compile_fn(step, *unstack(args[:2], 1)[0], x, y, keys[0])
        members = list(zip(unstack(params, n), unstack(opt_state, n), list(keys)))

        def loop(members=members, x=x, y=y):
            return [single(p, s, x, y, k) for p, s, k in members]

        return loop, (), single.flops * n
    raise ValueError(f"which must be 'jaxreg', 'vmap' or 'loop', got which = {which!r}.")


# Block sizes tried for a Chunked state (jr.ensemble.chunk); the best is measured per N in the run.
# At most MAX_BLOCKS blocks: each is its own copy of the step in the program (compile time).
BLOCK_CANDIDATES = (1, 2, 4, 8, 16, 32)
MAX_BLOCKS = 16
_BLOCK: dict[int, int] = {}


def build_chunked(n: int) -> tuple[Callable, tuple[Any, ...], float] | None:
    """``jr.ensemble.train_step`` on a state held as ``jr.ensemble.Chunked`` blocks, jitted, with
    the block size timed among :data:`BLOCK_CANDIDATES` below ``n`` making at most
    :data:`MAX_BLOCKS` blocks (3 interleaved rounds of 50 ms repeats); ``None`` when ``n`` is too
    small to split. The chosen size is in ``_BLOCK[n]``."""
    candidates = [c for c in BLOCK_CANDIDATES if c < n and -(-n // c) <= MAX_BLOCKS]
    if not candidates:
        return None
    step, opt = jaxreg_ensemble_step()
    params, opt_state, x, y, _ = stacked_inputs(n, opt)
    built = []
    for c in candidates:
        args = (jr.ensemble.chunk(params, c), jr.ensemble.chunk(opt_state, c), (x, y), jax.random.key(1))
        built.append((jr.benchmark.compile_fn(step, *args), args))
    ts = jr.benchmark.interleave([f for f, _ in built], [a for _, a in built], rounds=3, warmup=1, min_time=0.05)
    best = int(np.argmin([t.median for t in ts]))
    _BLOCK[n] = candidates[best]
    c_fn, c_args = built[best]
    return c_fn, c_args, c_fn.flops


def _paired_row(section, workload, jlabel, blabel, tj, tb, n, target="", note="", extra=None) -> Row:
    speedups = [b / a for a, b in zip(tj.times, tb.times)]
    return Row(
        section=section,
        workload=workload,
        jaxreg=jlabel,
        baseline=blabel,
        unit="member-steps/s",
        jaxreg_value=n / tj.median,
        baseline_value=n / tb.median,
        ratio=float(np.median(speedups)),
        ratio_q25=float(np.quantile(speedups, 0.25)),
        ratio_q75=float(np.quantile(speedups, 0.75)),
        ratios=speedups,
        jaxreg_rel_iqr=tj.rel_iqr,
        baseline_rel_iqr=tb.rel_iqr,
        target=target,
        note=note,
        extra=extra or {},
    )


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    emap, why = ensemble_map()
    ctx.setdefault("ensemble_jax", {})
    for n in settings.members:
        workload = f"ensemble step, N = {n}"
        vmap_fn, vmap_args, vmap_flops = build(n, "vmap")
        loop_fn, loop_args, loop_flops = build(n, "loop")
        fns, args, labels = [vmap_fn, loop_fn], [vmap_args, loop_args], ["vmap", "loop"]
        if emap is not None:
            j_fn, j_args, j_flops = build(n, "jaxreg")
            fns, args, labels = [j_fn, *fns], [j_args, *args], ["jaxreg", *labels]
        # The state held as jr.ensemble.Chunked blocks (block size measured here), where N allows.
        chunked = build(n, "chunked") if emap is not None else None
        if chunked is not None:
            fns, args, labels = [*fns, chunked[0]], [*args, chunked[1]], [*labels, "chunked"]
        # The matmul peak, timed in the same rounds: each round's achieved fraction is paired.
        size = settings.peak_size
        mats = (jnp.ones((size, size), jnp.float32), jnp.ones((size, size), jnp.float32))
        fns, args, labels = [*fns, jr.benchmark.compile_fn(jnp.matmul, *mats)], [*args, mats], [*labels, "peak"]
        # ... and the layer-shape matmul rate (a chain in one program, bench_peak.layer_chain).
        layer_fn, layer_args, layer_flops = bench_peak.layer_chain(settings)
        fns, args, labels = [*fns, layer_fn], [*args, layer_args], [*labels, "layer"]
        ts = jr.benchmark.interleave(
            fns, args, rounds=settings.pairs, warmup=settings.warmup, number=settings.number, min_time=settings.min_time
        )
        t = dict(zip(labels, ts))
        peak_t, layer_t, chunked_t = t.pop("peak"), t.pop("layer"), t.pop("chunked", None)
        labels = [k for k in labels if k in t]
        compile_s = {k: getattr(f, "compile_s", None) for k, f in zip(labels, fns)}
        best_jax = min(("vmap", "loop") + (("jaxreg",) if emap is not None else ()), key=lambda k: t[k].median)
        ctx["ensemble_jax"][n] = {k: n / v.median for k, v in t.items()} | {"best": best_jax}
        if chunked_t is not None:
            block = _BLOCK[n]
            c_label = f"jr.ensemble.train_step, Chunked state (blocks of {block}, measured)"
            ctx["ensemble_jax"][n]["chunked"] = n / chunked_t.median
            cpu_target = "" if settings.gpu else ">= 1.0"  # blocks are for many members on a CPU
            for base, blabel, target in (
                ("vmap", "plain jax.vmap", cpu_target),
                ("loop", "loop of jitted steps", cpu_target),
                ("jaxreg", "jr.ensemble.train_step, stacked state", ""),
            ):
                rows.append(_paired_row("2 ensemble", workload, c_label, blabel, chunked_t, t[base], n, target=target))
        if emap is None:
            rows.append(common.unavailable("2 ensemble", workload, why))
            rows.append(
                _paired_row(
                    "2 ensemble",
                    workload,
                    "plain vmap (hand step)",
                    "loop of jitted steps",
                    t["vmap"],
                    t["loop"],
                    n,
                    note="no jaxreg helper yet: vmap vs loop",
                    extra={"compile_s": compile_s},
                )
            )
            j_label, j_flops, tj = "plain vmap", vmap_flops, t["vmap"]
        else:
            for base, blabel in (("vmap", "plain jax.vmap"), ("loop", "loop of jitted steps")):
                rows.append(
                    _paired_row(
                        "2 ensemble",
                        workload,
                        "jr.ensemble.train_step",
                        blabel,
                        t["jaxreg"],
                        t[base],
                        n,
                        target=">= 1.0",
                        extra={"compile_s": compile_s},
                    )
                )
            j_label, j_flops, tj = "jr.ensemble.train_step", j_flops, t["jaxreg"]
        # FLOPs per call: the single-member step's cost analysis times N. XLA's cost analysis
        # counts a while loop's body once, so it undercounts the chunked (fori_loop) program.
        flops = loop_flops
        peak_flops = 2.0 * size**3
        per_round = [(flops / a) / (peak_flops / p) for a, p in zip(tj.times, peak_t.times)]
        frac = float(np.median(per_round))
        peak_gflops = peak_flops / peak_t.median / 1e9
        rows.append(
            Row(
                "7 peak fraction",
                workload,
                j_label,
                f"matmul {size}^3 in the same rounds",
                unit="GFLOP/s",
                jaxreg_value=flops / tj.median / 1e9,
                baseline_value=peak_gflops,
                ratio=frac,
                ratio_q25=float(np.quantile(per_round, 0.25)),
                ratio_q75=float(np.quantile(per_round, 0.75)),
                ratios=per_round,
                target=">= 0.65" if n >= 8 and not settings.gpu else "",  # CPU targets (a GPU's peak is TF32's)
                status="info",
                note=f"{frac:.0%} of the peak (paired per round); {flops / n / 1e6:.1f} MFLOP per member-step (XLA)",
                extra={
                    "flops_per_call": flops,
                    "cost_analysis_flops_per_call": dict(
                        zip(labels, [j_flops, vmap_flops, loop_flops][-len(labels) :])
                    ),
                    "fraction_by_method": {
                        k: float(np.median([(flops / a) / (peak_flops / p) for a, p in zip(t[k].times, peak_t.times)]))
                        for k in labels
                    },
                    "peak_timing": peak_t.to_dict(),
                },
            )
        )
        rows.append(_layer_row(workload, j_label, tj, flops, layer_t, layer_flops, n, ctx, settings.gpu))
        if chunked_t is not None:
            rows.append(_layer_row(workload, c_label, chunked_t, flops, layer_t, layer_flops, n, ctx, settings.gpu))
    return rows


def _layer_row(
    workload: str, label: str, tj: Any, flops: float, layer_t: Any, layer_flops: float, n: int, ctx, gpu: bool
) -> Row:
    """Achieved GFLOP/s of a step against the layer-shape matmul chain timed in the same rounds."""
    per_round = [(flops / a) / (layer_flops / b) for a, b in zip(tj.times, layer_t.times)]
    layer_gflops = layer_flops / layer_t.median / 1e9
    frac_1024 = flops / tj.median / 1e9 / ctx["peak_1024"] if ctx.get("peak_1024") else float("nan")
    return Row(
        "7 layer fraction",
        workload,
        label,
        "layer-shape matmul (128x256 @ 256x256, chained) in the same rounds",
        unit="GFLOP/s",
        jaxreg_value=flops / tj.median / 1e9,
        baseline_value=layer_gflops,
        ratio=float(np.median(per_round)),
        ratio_q25=float(np.quantile(per_round, 0.25)),
        ratio_q75=float(np.quantile(per_round, 0.75)),
        ratios=per_round,
        target=">= 0.85" if n >= 8 and not gpu else "",  # a CPU target
        note=f"{float(np.median(per_round)):.0%} of the layer-shape rate (paired per round); "
        f"{frac_1024:.0%} of the 1024^3 rate (section peak, not paired)",
        extra={"fraction_of_1024": frac_1024, "layer_timing": layer_t.to_dict()},
    )
