"""Comparison 13: a learning-rate sweep as one ``jr.fit`` against one ``jr.fit`` per value.

Digits split 1437 train / 360 validation (a fixed shuffle), MLP 64-256-256-10, batch 128,
Adam, L2 on the kernels and dropout 0.5, an evaluation every ``EVAL_EVERY`` steps, no early
stopping. The sweep is ``NUM_VALUES`` learning rates, log-spaced over [1e-4, 1e-2].

jaxreg: one ``jr.fit`` of ``NUM_VALUES`` members whose optimizer is
``jr.sweepable(optax.adam)``: each member's learning rate is a leaf of its optimizer state
(built under ``jax.vmap`` with the traced rate), so the sweep is one compiled program.
Baseline, what a user does without it: for each value, ``optax.adam(lr)`` with the Python
float, a step function closing over it and a ``jr.fit`` of one model (each a new compile).

Both are timed end to end, compile included (each side builds fresh step functions every round,
as a new process would), in alternation (A B, B A, ...); the ratio is the median of the paired
wall-time ratios. JAX's own compile time inside each call (``jr.benchmark.compile_log``) is
reported beside it. Target: >= 3x.

Standalone: ``python -m benchmarks.bench_sweep [--quick | --tiny] [--json PATH]`` (it re-runs
itself with the glibc malloc tuning of ``common.MALLOC_TUNING`` unless an allocator
setting is already in the environment, as ``benchmarks.run`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr
from benchmarks import common
from benchmarks.common import BATCH, Row, Settings

EVAL_EVERY = 100
TARGET = ">= 3"
# mode -> (number of learning rates, steps per run, rounds of the pair)
PLAN = {"tiny": (4, 40, 1), "quick": (16, 200, 1), "full": (16, 1000, 2)}
# An info row: the same sweep as fits of GROUP members (one compile), where a block of 16
# vmapped members runs below a loop (PERF-NOTES: AMD EPYC, N >= 16). Not a tuned default.
GROUP = {"tiny": 2, "quick": 8, "full": 8}


def _split():
    x, y = common.digits()
    perm = np.random.default_rng(0).permutation(len(x))
    tr, va = perm[:1437], perm[1437:]
    return (jnp.asarray(x[tr]), jnp.asarray(y[tr])), (jnp.asarray(x[va]), jnp.asarray(y[va]))


def _fns(opt: optax.GradientTransformation):
    """Fresh step and eval closures over ``opt`` (new functions: jit compiles them anew)."""
    drop, _ = common.jaxreg_dropout()
    loss = jr.regularize(
        lambda p, x, y, rng: common.cross_entropy(common.mlp_apply(p, x, rng, dropout=drop), y),
        jr.l2(common.L2, mask=jr.masks.kernels),
    )

    def step_fn(state, batch, rng):
        params, opt_state = state
        (total, _), grads = jax.value_and_grad(loss, has_aux=True)(params, batch[0], batch[1], rng)
        # optax's scale_by_adam computes b ** count (int32): the plain-adam baseline needs
        # standard promotion under a strict-promotion config; jr.sweepable scopes it itself.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), total

    def eval_fn(state, val):
        logits = common.mlp_apply(state[0], val[0], None)
        return common.cross_entropy(logits, val[1]), jnp.mean(jnp.argmax(logits, -1) == val[1])

    return step_fn, eval_fn


def learning_rates(num_values: int) -> np.ndarray:
    return np.geomspace(1e-4, 1e-2, num_values).astype(np.float32)


def make_sweep_run(num_values: int, num_steps: int, group: int | None = None):
    """jaxreg: one jr.fit, one member per learning rate, the rate a leaf of the optimizer state.

    With ``group``, the sweep runs as ``num_values / group`` fits of ``group`` members each: the
    same step function and shapes, so one compile (a user's lever while ``jr.fit`` vmaps all
    members in one block: plain ``vmap`` of many members runs below a loop on some CPUs).
    """
    train, val = _split()
    lrs = jnp.asarray(learning_rates(num_values))
    params0 = common.init_mlp(jax.random.key(0))
    group = num_values if group is None else group

    def run():
        make = jr.sweepable(optax.adam)
        step_fn, eval_fn = _fns(make(learning_rate=common.LR))
        finals = []
        for start in range(0, num_values, group):
            part = lrs[start : start + group]
            n = part.shape[0]
            params = jax.tree.map(lambda a, n=n: jnp.stack([a] * n), params0)
            opt_state = jax.vmap(lambda p, lr: make(learning_rate=lr).init(p))(params, part)
            result = jr.fit(
                step_fn,
                eval_fn,
                (params, opt_state),
                train,
                val,
                key=jax.random.key(1),
                num_steps=num_steps,
                batch_size=BATCH,
                eval_every=EVAL_EVERY if num_steps % EVAL_EVERY == 0 else num_steps,
                num_members=n,
                progress=False,
            )
            finals.append(np.asarray(result.history.val_loss[-1]))
        return np.concatenate(finals)

    return run


def make_separate_runs(num_values: int, num_steps: int):
    """Baseline: for each rate, optax.adam(python float), its own step function, its own jr.fit."""
    train, val = _split()
    params0 = common.init_mlp(jax.random.key(0))

    def run():
        finals = []
        for lr in learning_rates(num_values).tolist():
            opt = optax.adam(lr)
            step_fn, eval_fn = _fns(opt)
            with jax.numpy_dtype_promotion("standard"):  # scale_by_adam's init, as in step_fn
                state = (params0, opt.init(params0))
            result = jr.fit(
                step_fn,
                eval_fn,
                state,
                train,
                val,
                key=jax.random.key(1),
                num_steps=num_steps,
                batch_size=BATCH,
                eval_every=EVAL_EVERY if num_steps % EVAL_EVERY == 0 else num_steps,
                progress=False,
            )
            finals.append(float(result.history.val_loss[-1]))
        return np.asarray(finals)

    return run


def _timed(fn):
    with jr.benchmark.compile_log() as log:
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
    return wall, log, out


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    del ctx
    num_values, num_steps, rounds = PLAN[settings.mode]
    workload = f"{num_values}-value lr sweep x {num_steps} steps, digits MLP, Adam"
    if getattr(jr, "sweepable", None) is None:
        return [common.unavailable("13 sweep", workload, "jr.sweepable not available", target=TARGET)]
    sides = {"sweep": make_sweep_run(num_values, num_steps), "separate": make_separate_runs(num_values, num_steps)}
    group = GROUP.get(settings.mode)
    if group is not None:
        sides["grouped"] = make_sweep_run(num_values, num_steps, group)
    walls: dict[str, list[float]] = {k: [] for k in sides}
    compile_s: dict[str, list[float]] = {k: [] for k in sides}
    finals: dict[str, Any] = {}
    for r in range(rounds):
        order = list(sides.items())
        for name, fn in order if r % 2 == 0 else order[::-1]:
            wall, log, out = _timed(fn)
            walls[name].append(wall)
            compile_s[name].append(log.total_s)
            finals[name] = out
    ratios = [b / a for a, b in zip(walls["sweep"], walls["separate"])]
    ta, tb = jr.benchmark.Timing(tuple(walls["sweep"])), jr.benchmark.Timing(tuple(walls["separate"]))
    lrs = learning_rates(num_values)
    best = {k: (float(lrs[int(np.nanargmin(v))]), float(np.nanmin(v))) for k, v in finals.items()}
    rows = [
        Row(
            "13 sweep",
            workload,
            "one jr.fit, jr.sweepable(optax.adam)",
            f"{num_values} jr.fit runs, optax.adam(float)",
            unit="sweeps/s",
            jaxreg_value=1.0 / ta.median,
            baseline_value=1.0 / tb.median,
            ratio=float(np.median(ratios)),
            ratio_q25=float(np.quantile(ratios, 0.25)),
            ratio_q75=float(np.quantile(ratios, 0.75)),
            ratios=ratios,
            jaxreg_rel_iqr=ta.rel_iqr,
            baseline_rel_iqr=tb.rel_iqr,
            target=TARGET,
            note=(
                f"wall time incl. compile, {rounds} interleaved pair(s): sweep {np.median(walls['sweep']):.1f} s "
                f"(compile {np.median(compile_s['sweep']):.1f} s), separate {np.median(walls['separate']):.1f} s "
                f"(compile {np.median(compile_s['separate']):.1f} s); best lr {best['sweep'][0]:.2g} "
                f"(val loss {best['sweep'][1]:.4f}) vs {best['separate'][0]:.2g} ({best['separate'][1]:.4f})"
            ),
            extra={
                "wall_s": walls,
                "compile_s": compile_s,
                "learning_rates": lrs.tolist(),
                "final_val_loss": {k: np.asarray(v).tolist() for k, v in finals.items()},
                "allocator": common.allocator(),
            },
        )
    ]
    if "grouped" in walls:
        g_ratios = [b / a for a, b in zip(walls["grouped"], walls["separate"])]
        tg = jr.benchmark.Timing(tuple(walls["grouped"]))
        rows.append(
            Row(
                "13 sweep",
                f"{workload}, as fits of {group} members",
                f"{num_values // group} jr.fit of {group} members, jr.sweepable(optax.adam)",
                f"{num_values} jr.fit runs, optax.adam(float)",
                unit="sweeps/s",
                jaxreg_value=1.0 / tg.median,
                baseline_value=1.0 / tb.median,
                ratio=float(np.median(g_ratios)),
                ratio_q25=float(np.quantile(g_ratios, 0.25)),
                ratio_q75=float(np.quantile(g_ratios, 0.75)),
                ratios=g_ratios,
                jaxreg_rel_iqr=tg.rel_iqr,
                baseline_rel_iqr=tb.rel_iqr,
                status="info",
                note=(
                    f"wall time incl. compile: grouped {np.median(walls['grouped']):.1f} s (compile "
                    f"{np.median(compile_s['grouped']):.1f} s); member groups a user can choose while jr.fit "
                    f"vmaps all members as one block"
                ),
                extra={"wall_s": walls["grouped"], "compile_s": compile_s["grouped"], "group": group},
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="benchmarks.bench_sweep", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="16 values x 200 steps, 1 pair")
    g.add_argument("--tiny", action="store_true", help="4 values x 40 steps, 1 pair (a smoke run)")
    p.add_argument("--json", help="write the row as JSON here")
    p.add_argument("--no-tune-malloc", action="store_true", help="keep the current allocator")
    args = p.parse_args(argv)
    tuned = bool(os.environ.get("LD_PRELOAD")) or any(k.startswith("MALLOC_") for k in os.environ)
    if not args.no_tune_malloc and not tuned:
        env = {**os.environ, **common.MALLOC_TUNING}
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.bench_sweep", *sys.argv[1:]], env)
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    rows = run(Settings.for_mode(mode), {})
    for row in rows:
        print(
            f"{row.section} | {row.workload} | {row.jaxreg} vs {row.baseline} | ratio {row.ratio:.2f}x "
            f"[{row.ratio_q25:.2f}, {row.ratio_q75:.2f}] (target {row.target}) | {row.note}"
        )
    print(f"allocator: {common.allocator()}; machine: {common.machine()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
