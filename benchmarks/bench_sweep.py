"""Comparison 13 (section "sweep"): sweeps as one program, compaction and successive halving.

(a) A learning-rate sweep as one ``jr.fit`` against one ``jr.fit`` per value (below). (b) Member
compaction: a ``POP_PLAN`` population (64 members in quick and full mode, learning rates
log-spaced over ``POP_LR``, early-stopping patience cycling over ``PATIENCE`` evaluations, so
members stop at spread-out times) as ``jr.fit`` with compaction (the default) against
``compact=False``; warm wall time in interleaved pairs (after one cold call of each side, whose
compile-included times are reported too), the member-steps computed
(``FitResult.member_steps_computed``) and the fraction saved. Target >= 1.8x. (c) Successive
halving: the same population without early stopping, ``jr.SuccessiveHalving(eta=2)`` with the
first rung at 1/32 of the evaluations, against the full grid: the ratio is the grid's
member-steps over the halving run's (target >= 2.86, i.e. at most 35%), with the best surviving
member's best validation loss beside the grid's best.

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

Standalone: ``python -m benchmarks.bench_sweep [--quick | --tiny] [--json PATH]`` (all three parts) (it re-runs
itself with the glibc malloc tuning of ``common.MALLOC_TUNING`` unless an allocator
setting is already in the environment, as ``benchmarks.run`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
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
                rng=jax.random.key(1),
                num_steps=num_steps,
                batch_size=BATCH,
                eval_every=EVAL_EVERY if num_steps % EVAL_EVERY == 0 else num_steps,
                num_members=n,
                progress=False,
            )
            finals.append(np.asarray(result.history.val_loss[:, -1]))  # (members, evals): the last evaluation
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
                rng=jax.random.key(1),
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
    """The section "sweep": (a) the lr sweep as one fit, (b) member compaction, (c) successive halving."""
    rows = run_lr_sweep(settings, ctx)
    for part in (run_compaction, run_pruning):
        if getattr(jr, "SuccessiveHalving", None) is None:
            break
        rows.append(part(settings))
    return rows


def run_lr_sweep(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    """(a) a learning-rate sweep as one jr.fit against one jr.fit per value, compile included."""
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


# --------------------------------------------------------------------------- compaction and pruning

# mode -> (members, steps, eval_every, timed pairs after a warm-up of each side)
POP_PLAN = {"tiny": (8, 40, 5, 1), "quick": (64, 200, 10, 1), "full": (64, 600, 10, 2)}
POP_LR = (1e-3, 1e-1)  # the members' learning rates, log-spaced: fast ones overfit and stop first
PATIENCE = (1, 4)  # and their patience in evaluations, cycling (a spread of stopping times)
COMPACT_TARGET = ">= 1.8"
PRUNE_TARGET = ">= 2.86 (member-steps <= 35% of the grid's)"


def _population(num_members: int):
    """Stacked params and jr.sweepable(optax.adam) states, one learning rate per member."""
    lrs = jnp.asarray(np.geomspace(*POP_LR, num_members).astype(np.float32))
    params0 = common.init_mlp(jax.random.key(0))
    params = jax.tree.map(lambda a: jnp.stack([a] * num_members), params0)
    make = jr.sweepable(optax.adam)
    opt_state = jax.vmap(lambda p, lr: make(learning_rate=lr).init(p))(params, lrs)
    return (params, opt_state), make, np.asarray(lrs)


def _patience(num_members: int) -> np.ndarray:
    lo, hi = PATIENCE
    return (lo + np.arange(num_members) % (hi - lo + 1)).astype(np.int32)


def make_population_fit(mode: str, **options):
    """A function running one ``jr.fit`` of the population with ``options`` (the step functions
    are built once, so repeated calls reuse the compiled programs, as a long-lived process does)."""
    num_members, num_steps, eval_every, _ = POP_PLAN[mode]
    train, val = _split()
    state, make, lrs = _population(num_members)
    step_fn, eval_fn = _fns(make(learning_rate=common.LR))

    def snapshot_fn(state):
        return state[0]

    def run():
        return jr.fit(
            step_fn,
            eval_fn,
            state,
            train,
            val,
            rng=jax.random.key(1),
            num_steps=num_steps,
            batch_size=BATCH,
            eval_every=eval_every,
            num_members=num_members,
            snapshot_fn=snapshot_fn,
            progress=False,
            **options,
        )

    return run, lrs


def _timed_result(fn):
    with jr.benchmark.compile_log() as log:
        t0 = time.perf_counter()
        result = fn()
        jax.block_until_ready(result.state)
        wall = time.perf_counter() - t0
    return wall, log.total_s, result


def _paired(sides: dict[str, Any], pairs: int):
    """A cold call of each side (compile included), then ``pairs`` interleaved warm pairs."""
    cold = {name: _timed_result(fn) for name, fn in sides.items()}
    walls: dict[str, list[float]] = {k: [] for k in sides}
    results = {k: v[2] for k, v in cold.items()}
    order = list(sides.items())
    for r in range(pairs):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            wall, _, results[name] = _timed_result(fn)
            walls[name].append(wall)
    return cold, walls, results


def _stop_evals(result) -> np.ndarray:
    """The evaluation (1-based) after which each member had stopped (the run's last for those that never did)."""
    stopped = np.asarray(result.history.stopped)
    first = np.argmax(stopped, axis=1) + 1
    return np.where(stopped.any(axis=1), first, stopped.shape[1])


def run_compaction(settings: Settings) -> Row:
    """(b) early stopping at spread-out times: jr.fit with member compaction against compact=False."""
    mode = settings.mode
    num_members, num_steps, eval_every, pairs = POP_PLAN[mode]
    stopper = jr.EarlyStopping(patience=jnp.asarray(_patience(num_members)))
    workload = (
        f"{num_members}-member lr sweep ({POP_LR[0]:g}..{POP_LR[1]:g}) x {num_steps} steps with early stopping "
        f"(patience {PATIENCE[0]}..{PATIENCE[1]} evals of {eval_every} steps), digits MLP, Adam"
    )
    compact, _ = make_population_fit(mode, early_stopping=stopper)
    full, _ = make_population_fit(mode, early_stopping=stopper, compact=False)
    cold, walls, res = _paired({"compact": compact, "full": full}, pairs)
    ratios = [b / a for a, b in zip(walls["compact"], walls["full"])]
    ta, tb = jr.benchmark.Timing(tuple(walls["compact"])), jr.benchmark.Timing(tuple(walls["full"]))
    steps_c, steps_f = res["compact"].member_steps_computed, res["full"].member_steps_computed
    saved = 1.0 - steps_c / steps_f
    stops = _stop_evals(res["compact"])
    same = bool(np.array_equal(stops, _stop_evals(res["full"])))
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(res["compact"].state[0]), jax.tree.leaves(res["full"].state[0]))
    )
    q = np.quantile(stops, [0.1, 0.5, 0.9]) * eval_every
    cold_ratio = cold["full"][0] / cold["compact"][0]
    return Row(
        "13 sweep",
        workload,
        "jr.fit, member compaction (default)",
        "jr.fit(compact=False)",
        unit="runs/s",
        jaxreg_value=1.0 / ta.median,
        baseline_value=1.0 / tb.median,
        ratio=float(np.median(ratios)),
        ratio_q25=float(np.quantile(ratios, 0.25)),
        ratio_q75=float(np.quantile(ratios, 0.75)),
        ratios=ratios,
        jaxreg_rel_iqr=ta.rel_iqr,
        baseline_rel_iqr=tb.rel_iqr,
        target=COMPACT_TARGET,
        note=(
            f"warm wall time, {pairs} interleaved pair(s): {np.median(walls['compact']):.1f} s vs "
            f"{np.median(walls['full']):.1f} s; member-steps {steps_c:,} vs {steps_f:,} ({saved:.0%} saved); "
            f"members stop after {q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f} steps (10/50/90%); cold (compile incl.) "
            f"{cold['compact'][0]:.1f} s (compile {cold['compact'][1]:.1f} s) vs {cold['full'][0]:.1f} s "
            f"(compile {cold['full'][1]:.1f} s) = {cold_ratio:.2f}x; same stops {same}, max |param diff| {diff:.1e}"
        ),
        extra={
            "wall_s": walls,
            "cold_wall_s": {k: v[0] for k, v in cold.items()},
            "cold_compile_s": {k: v[1] for k, v in cold.items()},
            "member_steps_computed": {"compact": steps_c, "full": steps_f},
            "fraction_saved": saved,
            "stop_step": (stops * eval_every).tolist(),
            "same_stops": same,
            "max_param_diff": diff,
        },
    )


def _best_val(result) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows cannot happen: every member evaluates once
        return np.nanmin(np.asarray(result.history.val_loss), axis=1)


def run_pruning(settings: Settings) -> Row:
    """(c) successive halving (eta = 2) against the full grid: member-steps and the best val loss."""
    mode = settings.mode
    num_members, num_steps, eval_every, _ = POP_PLAN[mode]
    num_evals = num_steps // eval_every
    first_rung = max(1, num_evals // 32)
    sh = jr.SuccessiveHalving(eta=2, first_rung=first_rung)
    workload = (
        f"{num_members}-member lr sweep ({POP_LR[0]:g}..{POP_LR[1]:g}) x {num_steps} steps, successive halving "
        f"eta 2 at evals {', '.join(map(str, sh.rungs(num_evals)))} (of {eval_every} steps), digits MLP, Adam"
    )
    pruned, lrs = make_population_fit(mode, prune=sh)
    grid, _ = make_population_fit(mode)
    (w_sh, c_sh, r_sh), (w_grid, c_grid, r_grid) = _timed_result(pruned), _timed_result(grid)
    warm_sh = _timed_result(pruned)[0]  # the halving run's programs compiled: its run time alone
    steps_sh, steps_grid = r_sh.member_steps_computed, r_grid.member_steps_computed
    best_sh, best_grid = _best_val(r_sh), _best_val(r_grid)
    survivors = np.flatnonzero(~np.asarray(r_sh.history.stopped)[:, -1])
    s = survivors[int(np.argmin(best_sh[survivors]))] if survivors.size else int(np.nanargmin(best_sh))
    g = int(np.nanargmin(best_grid))
    rank = int(np.sum(best_grid < best_grid[s]))  # grid members better than the survivor (0: it is the grid's best)
    return Row(
        "13 sweep",
        workload,
        f"jr.fit(prune=jr.SuccessiveHalving(eta=2, first_rung={first_rung}))",
        "jr.fit, the full grid",
        unit="member-steps",
        jaxreg_value=float(steps_sh),
        baseline_value=float(steps_grid),
        ratio=steps_grid / steps_sh,
        ratio_q25=steps_grid / steps_sh,  # a count, not a timing: no spread
        ratio_q75=steps_grid / steps_sh,
        ratios=[steps_grid / steps_sh],
        target=PRUNE_TARGET,
        note=(
            f"member-steps {steps_sh:,} = {steps_sh / steps_grid:.1%} of the grid's {steps_grid:,}; best survivor "
            f"lr {lrs[s]:.2g}: best val loss {best_sh[s]:.4f} (the grid's run of it {best_grid[s]:.4f}, rank "
            f"{rank + 1} of {num_members}) vs the grid's best lr {lrs[g]:.2g}: {best_grid[g]:.4f}; one run each, "
            f"wall incl. compile {w_sh:.1f} s (compile {c_sh:.1f} s, {len(sh.rungs(num_evals)) + 1} stack sizes) vs "
            f"{w_grid:.1f} s (compile {c_grid:.1f} s); halving again, compiled: {warm_sh:.1f} s"
        ),
        extra={
            "member_steps_computed": {"halving": steps_sh, "grid": steps_grid},
            "fraction": steps_sh / steps_grid,
            "survivors": survivors.tolist(),
            "survivor_lr": float(lrs[s]),
            "survivor_best_val_loss": float(best_sh[s]),
            "grid_best_lr": float(lrs[g]),
            "grid_best_val_loss": float(best_grid[g]),
            "grid_best_val_loss_by_member": best_grid.tolist(),
            "wall_s": {"halving": w_sh, "grid": w_grid, "halving_compiled": warm_sh},
            "compile_s": {"halving": c_sh, "grid": c_grid},
            "rungs": list(sh.rungs(num_evals)),
        },
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="benchmarks.bench_sweep", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="16 values x 200 steps; 64 members x 200 steps; 1 pair")
    g.add_argument("--tiny", action="store_true", help="4 values x 40 steps; 8 members x 40 steps (a smoke run)")
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
        spread = f" [{row.ratio_q25:.2f}, {row.ratio_q75:.2f}]" if row.ratio_q25 is not None else ""
        print(
            f"{row.section} | {row.workload} | {row.jaxreg} vs {row.baseline} | ratio {row.ratio:.2f}x{spread} "
            f"(target {row.target or '-'}) | {row.note}"
        )
    print(f"allocator: {common.allocator()}; machine: {common.machine()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
