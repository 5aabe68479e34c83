"""Comparison 5: training a 32-member ensemble with early stopping: ``jr.fit`` vs per-step dispatch.

Digits split 1437 train / 360 validation (a fixed shuffle), batch 128, Adam, L2 + dropout 0.5,
evaluation and an early-stopping update every ``EVAL_EVERY`` steps. Patience is set above the
number of evaluations, so no member stops and both sides do every step (the early-stopping
state, its best-snapshot copy and the freezing of stopped members still run every time).

jaxreg: ``jr.fit`` (chunks of ``lax.scan`` over evaluation periods, one compiled program).
Baseline, the same math dispatched per step from Python: a jitted ensemble step (batch gather
from the epoch's permutations, ``vmap`` of the step, ``jr.freeze_stopped``), a jitted permutation
per epoch and a jitted evaluation + early-stopping update per period.

Both are timed end to end in alternation; the compile time inside each call is read from JAX's
own events (``jr.benchmark.compile_log``) and subtracted for the run-time ratio (the end-to-end
ratio is in the note). ``jr.fit``'s compile time is also reported against the number of steps
(one call stopped after its first chunk by a raising callback).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr
from benchmarks import common
from benchmarks.common import BATCH, Row, Settings

EVAL_EVERY = 20
ROUNDS = 5  # whole training runs per side (each run is long; 5 is the minimum for a median)


def fit_available() -> tuple[Any, str]:
    if getattr(jr, "fit", None) is None or getattr(jr, "EarlyStopping", None) is None:
        return None, "jr.fit / jr.EarlyStopping not available"
    return jr.fit, ""


def _split():
    x, y = common.digits()
    perm = np.random.default_rng(0).permutation(len(x))
    tr, va = perm[:1437], perm[1437:]
    return (jnp.asarray(x[tr]), jnp.asarray(y[tr])), (jnp.asarray(x[va]), jnp.asarray(y[va]))


def member_fns():
    drop, _ = common.jaxreg_dropout()
    opt = optax.adam(common.LR)
    loss = jr.regularize(
        lambda p, x, y, rng: common.cross_entropy(common.mlp_apply(p, x, rng, dropout=drop), y),
        jr.l2(common.L2, mask=jr.masks.kernels),
    )

    def step_fn(state, batch, rng):
        params, opt_state = state
        (total, _), grads = jax.value_and_grad(loss, has_aux=True)(params, batch[0], batch[1], rng)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), total

    def eval_fn(state, val):
        logits = common.mlp_apply(state[0], val[0], None)
        return common.cross_entropy(logits, val[1]), jnp.mean(jnp.argmax(logits, -1) == val[1])

    return step_fn, eval_fn, opt


def initial_state(n: int, opt):
    params = jax.vmap(common.init_mlp)(jax.random.split(jax.random.key(0), n))
    return params, jax.vmap(opt.init)(params)


class _StopAfterFirstChunk(Exception):
    pass


def _stop(*args: Any) -> None:
    raise _StopAfterFirstChunk


def make_fit_run(n: int, num_steps: int, *, first_chunk_only: bool = False):
    step_fn, eval_fn, opt = member_fns()
    train, val = _split()
    state = initial_state(n, opt)
    stopper = jr.EarlyStopping(num_steps // EVAL_EVERY + 1)

    def run():
        try:
            result = jr.fit(
                step_fn,
                eval_fn,
                state,
                train,
                val,
                key=jax.random.key(1),
                num_steps=num_steps,
                batch_size=BATCH,
                eval_every=EVAL_EVERY,
                num_members=n,
                early_stopping=stopper,
                progress=False,
                callback=_stop if first_chunk_only else None,
            )
        except _StopAfterFirstChunk:
            return None
        return result.state

    return run


def make_dispatch_run(n: int, num_steps: int):
    step_fn, eval_fn, opt = member_fns()
    (xtr, ytr), val = _split()
    state0 = initial_state(n, opt)
    stopper = jr.EarlyStopping(num_steps // EVAL_EVERY + 1)
    num_ex = xtr.shape[0]
    per_epoch = num_ex // BATCH
    data_keys, step_keys = (jax.random.split(k, n) for k in jax.random.split(jax.random.key(1)))

    @jax.jit
    def perms(keys, epoch):
        return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), num_ex))(keys)

    @jax.jit
    def step(state, perm, s, keys, stopped, xtr, ytr):
        idx = jax.lax.dynamic_slice_in_dim(perm, (s % per_epoch) * BATCH, BATCH, axis=1)
        batch = jax.vmap(lambda i: (jnp.take(xtr, i, axis=0), jnp.take(ytr, i, axis=0)))(idx)
        rngs = jax.vmap(lambda k: jax.random.fold_in(k, s))(keys)
        new, loss = jax.vmap(step_fn)(state, batch, rngs)
        return jr.freeze_stopped(stopped, new, state), loss

    @jax.jit
    def evaluate(state, es, val):
        val_loss, _ = jax.vmap(lambda st: eval_fn(st, val))(state)
        return jax.vmap(stopper.update)(es, val_loss, state), val_loss

    init_es = jax.jit(jax.vmap(stopper.init))

    def run():
        state, es = state0, init_es(state0)
        perm = None
        for s in range(num_steps):
            if s % per_epoch == 0:
                perm = perms(data_keys, s // per_epoch)
            state, _ = step(state, perm, s, step_keys, es.stopped, xtr, ytr)
            if (s + 1) % EVAL_EVERY == 0:
                es, _ = evaluate(state, es, val)
        return state

    return run


def _timed(fn):
    """Wall seconds of ``fn()`` to completion, and the compile log inside it."""
    import time

    with jr.benchmark.compile_log() as log:
        t0 = time.perf_counter()
        out = fn()
        if out is not None:
            jax.block_until_ready(out)
        wall = time.perf_counter() - t0
    return wall, log


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    fit, why = fit_available()
    n, steps = settings.train_members, settings.train_steps
    workload = f"train {n} members x {steps} steps, early stopping"
    if fit is None:
        return [common.unavailable("5 training", workload, why, target=">= 1.6")]
    rows: list[Row] = []
    fit_run = make_fit_run(n, steps)
    dispatch_run = make_dispatch_run(n, steps)
    walls: dict[str, list[float]] = {"fit": [], "dispatch": []}
    compile_s: dict[str, list[float]] = {"fit": [], "dispatch": []}
    for r in range(ROUNDS):
        order = [("fit", fit_run), ("dispatch", dispatch_run)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            wall, log = _timed(fn)
            walls[name].append(wall)
            compile_s[name].append(log.total_s)
    # Run time = wall time minus the compile time JAX reported inside the call (jr.fit compiles
    # its chunk program on every call; the dispatch loop compiles its jits on the first).
    run_s = {k: [w - c for w, c in zip(walls[k], compile_s[k])] for k in walls}
    sp = [d / f for f, d in zip(run_s["fit"], run_s["dispatch"])]
    sp_wall = [d / f for f, d in zip(walls["fit"], walls["dispatch"])]
    tf = jr.benchmark.Timing(tuple(run_s["fit"]))
    td = jr.benchmark.Timing(tuple(run_s["dispatch"]))
    rows.append(
        Row(
            "5 training",
            workload,
            "jr.fit (scan)",
            "per-step dispatch",
            unit="member-steps/s",
            jaxreg_value=n * steps / tf.median,
            baseline_value=n * steps / td.median,
            ratio=float(np.median(sp)),
            ratio_q25=float(np.quantile(sp, 0.25)),
            ratio_q75=float(np.quantile(sp, 0.75)),
            ratios=sp,
            jaxreg_rel_iqr=tf.rel_iqr,
            baseline_rel_iqr=td.rel_iqr,
            target=">= 1.6",
            note=(
                f"run time excl. compile (fit compiles {np.median(compile_s['fit']):.1f} s per call); "
                f"end to end incl. compile: {np.median(sp_wall):.2f}x; no member stops (patience > evaluations)"
            ),
            extra={"wall_s": walls, "compile_s": compile_s, "run_s": run_s, "ratios_end_to_end": sp_wall},
        )
    )
    # Compile time against the number of steps: one call of jr.fit stopped after its first chunk.
    for s in settings.train_steps_compile:
        wall, log = _timed(make_fit_run(n, s, first_chunk_only=True))
        rows.append(
            Row(
                "5 compile",
                f"jr.fit compile, {n} members x {s} steps",
                "jr.fit",
                "-",
                unit="s",
                jaxreg_value=log.total_s,
                status="info",
                note=f"{log.compiles} compiles (trace+lower+compile); call to the first chunk {wall:.1f} s",
                extra={"compile": log.to_dict(), "wall_s": wall},
            )
        )
    return rows
