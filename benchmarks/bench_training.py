"""Comparison 5: the training loop. ``jr.fit`` against hand-written loops of the same vmapped step.

Digits split 1437 train / 360 validation (a fixed shuffle), Adam. Each ``jr.fit`` run is timed
end to end in rounds that alternate the sides (``jr.benchmark.interleave``: A B C, B C A, ...),
after an untimed warm-up call of each that compiles it; ratios are per round, medians reported.
The hand-written sides get what a careful user would write, and every advantage:

- bare scan: one jitted ``lax.scan`` over all steps of ``jax.vmap(step)``, its batches and rngs
  gathered BEFORE the call (the batch order and rngs of ``jr.fit``, so both do the same work:
  their final states are checked to agree), no evaluation at all;
- hand scan: the same with an evaluation, early-stopping update and freezing of stopped members
  every ``eval_every`` steps (an outer scan over evaluation blocks), returning each block's mean
  training loss and validation loss (the curves ``jr.fit``'s history holds);
- dispatch: a jitted ``vmap(step)`` called from Python per step on pre-sliced batches, and a jitted
  evaluation + early-stopping update + freeze per block.

Rows:

- "5 fit/scan": the dispatch-bound workload (softmax regression 64-10, batch 32, 8 members, 400
  steps, an evaluation every 50 steps): ``jr.fit`` with early stopping against the bare scan
  (target >= 0.9; its note gives the time of the data order alone: the run's shuffles and
  gathers), against a bare scan that draws its own shuffles in the same call (what a hand loop
  must pay too; target >= 0.9) and against dispatch.
- "5 fit/best": the digits MLP 64-256-256-10 (dropout 0.5, L2) at N = 1, 8, 32 with early stopping
  on (patience above the number of evaluations: nobody stops, all the machinery runs): ``jr.fit``
  against the best of the hand scan and dispatch (target >= 1.0).
Member compaction and successive halving are measured in section "sweep" (``bench_sweep``).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr
from benchmarks import common
from benchmarks.common import Row, Settings

ROUNDS = 7  # timed rounds per comparison (each is a whole training run)


def _split():
    x, y = common.digits()
    perm = np.random.default_rng(0).permutation(len(x))
    tr, va = perm[:1437], perm[1437:]
    return (jnp.asarray(x[tr]), jnp.asarray(y[tr])), (jnp.asarray(x[va]), jnp.asarray(y[va]))


def _adam_update(opt, grads, opt_state, params):
    with jax.numpy_dtype_promotion("standard"):  # optax.scale_by_adam computes b ** count (int32)
        return opt.update(grads, opt_state, params)


# ----------------------------------------------------------------------------- workloads


class Workload:
    """A member step and evaluation, an initial stacked state, and the data."""

    def __init__(self, step_fn, eval_fn, init_fn, batch_size: int):
        self.step_fn, self.eval_fn, self.init_fn, self.batch_size = step_fn, eval_fn, init_fn, batch_size
        self.train, self.val = _split()

    def state(self, n: int) -> Any:
        return jax.jit(jax.vmap(self.init_fn))(jax.random.split(jax.random.key(0), n))


def mlp_workload(*, per_member_lr: bool = False) -> Workload:
    """The digits MLP: CE + L2 on kernels, dropout 0.5, Adam (learning rate from the state if asked)."""
    drop, _ = common.jaxreg_dropout()
    opt = optax.adam(common.LR) if not per_member_lr else optax.scale_by_adam()
    loss = jr.regularize(
        lambda p, x, y, rng: common.cross_entropy(common.mlp_apply(p, x, rng, dropout=drop), y),
        jr.l2(common.L2, mask=jr.masks.kernels),
    )

    def init_fn(key):
        params = common.init_mlp(key)
        return {"params": params, "opt": opt.init(params), "lr": jnp.asarray(common.LR, jnp.float32)}

    def step_fn(state, batch, rng):
        params = state["params"]
        (total, _), grads = jax.value_and_grad(loss, has_aux=True)(params, batch[0], batch[1], rng)
        updates, opt_state = _adam_update(opt, grads, state["opt"], params)
        if per_member_lr:
            updates = jax.tree.map(lambda u: -state["lr"] * u, updates)
        return {**state, "params": optax.apply_updates(params, updates), "opt": opt_state}, total

    def eval_fn(state, val):
        logits = common.mlp_apply(state["params"], val[0], None)
        return common.cross_entropy(logits, val[1]), jnp.mean(jnp.argmax(logits, -1) == val[1])

    return Workload(step_fn, eval_fn, init_fn, common.BATCH)


def linear_workload() -> Workload:
    """Dispatch-bound: softmax regression 64-10 with Adam, batch 32."""
    opt = optax.adam(1e-2)

    def loss(params, x, y):
        return common.cross_entropy(x @ params["kernel"] + params["bias"][None, :], y)

    def init_fn(key):
        params = {"kernel": jax.random.normal(key, (64, 10), jnp.float32) / 8.0, "bias": jnp.zeros((10,), jnp.float32)}
        return {"params": params, "opt": opt.init(params)}

    def step_fn(state, batch, rng):
        del rng
        value, grads = jax.value_and_grad(loss)(state["params"], *batch)
        updates, opt_state = _adam_update(opt, grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, value

    def eval_fn(state, val):
        return loss(state["params"], *val), jnp.float32(0)

    return Workload(step_fn, eval_fn, init_fn, 32)


# ----------------------------------------------------------------------------- the sides


def _batch_maker(w: Workload, n: int, num_steps: int):
    """``make(train) -> (batches, rngs)``: ``jr.fit``'s documented batches and rngs for rng key(1).

    Batches ``(steps, n, batch, ...)``, rngs ``(steps, n)``; each epoch's shuffle is
    ``jax.random.permutation`` of the member's data key folded with the epoch, as a user would
    write it (``jr.fit`` draws the same permutations its own, faster way).
    """
    num_ex = w.train[0].shape[0]
    per_epoch = num_ex // w.batch_size
    data_key, step_key = jax.random.split(jax.random.key(1))
    data_keys, step_keys = jax.random.split(data_key, n), jax.random.split(step_key, n)

    def make(train):
        steps = jnp.arange(num_steps, dtype=jnp.int32)
        epochs = jnp.arange(-(-num_steps // per_epoch), dtype=jnp.int32)
        perms = jax.vmap(
            lambda k: jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(k, e), num_ex))(epochs)
        )(data_keys)  # (n, epochs, num_ex)
        flat = (steps // per_epoch)[:, None] * num_ex + (steps % per_epoch)[:, None] * w.batch_size
        flat = flat + jnp.arange(w.batch_size, dtype=jnp.int32)[None, :]
        idx = jnp.moveaxis(jnp.take(perms.reshape(n, -1), flat, axis=1), 1, 0)  # (steps, n, batch)
        rngs = jax.vmap(lambda s: jax.vmap(lambda k: jax.random.fold_in(k, s))(step_keys))(steps)
        return jax.tree.map(lambda a: a[idx], train), rngs

    return make


def fit_batches(w: Workload, n: int, num_steps: int) -> tuple[Any, jax.Array]:
    """``jr.fit``'s documented batches ``(steps, n, batch, ...)`` and rngs ``(steps, n)`` for rng key(1)."""
    return jax.jit(_batch_maker(w, n, num_steps))(w.train)


def make_fit(w: Workload, n: int, num_steps: int, eval_every: int, stopper, **kwargs):
    state = w.state(n)

    def run():
        return jr.fit(
            w.step_fn, w.eval_fn, state, w.train, w.val, rng=jax.random.key(1), num_steps=num_steps,
            batch_size=w.batch_size, eval_every=eval_every, num_members=n, early_stopping=stopper,
            progress=False, **kwargs,
        )  # fmt: skip

    return run


def make_bare_scan(w: Workload, n: int, num_steps: int):
    state = w.state(n)
    batches, rngs = fit_batches(w, n, num_steps)
    step = jax.vmap(w.step_fn)

    @jax.jit
    def scan(state, batches, rngs):
        return jax.lax.scan(lambda s, xs: step(s, *xs), state, (batches, rngs))

    return lambda: scan(state, batches, rngs)[0]


def make_shuffling_scan(w: Workload, n: int, num_steps: int):
    """The bare scan paying for its own data order: one jitted call that draws every epoch's
    permutations (``jax.random.permutation``), gathers the batches and scans; no evaluation."""
    state = w.state(n)
    make = _batch_maker(w, n, num_steps)
    step = jax.vmap(w.step_fn)

    @jax.jit
    def scan(state, train):
        return jax.lax.scan(lambda s, xs: step(s, *xs), state, make(train))

    return lambda: scan(state, w.train)[0]


def make_hand_scan(w: Workload, n: int, num_steps: int, eval_every: int, stopper):
    state = w.state(n)
    batches, rngs = fit_batches(w, n, num_steps)
    blocks = num_steps // eval_every
    batches, rngs = jax.tree.map(lambda a: a.reshape(blocks, eval_every, *a.shape[1:]), (batches, rngs))
    step = jax.vmap(w.step_fn)
    stopper = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,)), stopper)

    @jax.jit
    def run(state, batches, rngs, val):
        def block(carry, xs):
            state, es = carry
            new, losses = jax.lax.scan(lambda s, x: step(s, *x), state, xs)
            state = jr.freeze_stopped(es.stopped, new, state)
            val_loss, _ = jax.vmap(lambda s: w.eval_fn(s, val))(state)
            es = jax.vmap(lambda st, e, m, p: st.update(e, m, p))(stopper, es, val_loss, state)
            return (state, es), (jnp.mean(losses, axis=0), val_loss)

        es = jax.vmap(stopper.init)(state)
        return jax.lax.scan(block, (state, es), (batches, rngs))

    # The curves are returned, as jr.fit's history holds them: otherwise XLA drops the loss
    # values (the L2 term's sum of squares, the cross-entropy's reduction) the gradient does not need.
    return lambda: run(state, batches, rngs, w.val)[0][0]


def make_dispatch(w: Workload, n: int, num_steps: int, eval_every: int, stopper):
    state0 = w.state(n)
    batches, rngs = fit_batches(w, n, num_steps)
    per_step = [jax.tree.map(lambda a, s=s: a[s], (batches, rngs)) for s in range(num_steps)]
    jax.block_until_ready(per_step)
    stopper = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,)), stopper)
    step = jax.jit(jax.vmap(w.step_fn))

    @jax.jit
    def evaluate(old, new, es, val):
        new = jr.freeze_stopped(es.stopped, new, old)
        val_loss, _ = jax.vmap(lambda s: w.eval_fn(s, val))(new)
        return new, jax.vmap(lambda st, e, m, p: st.update(e, m, p))(stopper, es, val_loss, new)

    init_es = jax.jit(jax.vmap(stopper.init))

    def run():
        state, es = state0, init_es(state0)
        block_start = state
        for s in range(num_steps):
            batch, rng = per_step[s]
            state, _ = step(state, batch, rng)
            if (s + 1) % eval_every == 0:
                state, es = evaluate(block_start, state, es, w.val)
                block_start = state
        return state

    return run


def _interleaved(fns: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    timings = jr.benchmark.interleave(
        [lambda f=f: jax.block_until_ready(f()) for f in fns.values()], rounds=rounds, warmup=1, number=1
    )
    return {name: list(t.times) for name, t in zip(fns, timings)}


def _ratio_row(section, workload, jaxreg, baseline, t_jaxreg, t_base, *, work, target, note="", extra=None) -> Row:
    sp = [b / a for a, b in zip(t_jaxreg, t_base)]
    return Row(
        section, workload, jaxreg, baseline, unit="member-steps/s",
        jaxreg_value=work / float(np.median(t_jaxreg)), baseline_value=work / float(np.median(t_base)),
        ratio=float(np.median(sp)), ratio_q25=float(np.quantile(sp, 0.25)), ratio_q75=float(np.quantile(sp, 0.75)),
        ratios=sp, target=target, note=note, extra=extra or {},
    )  # fmt: skip


def _never_stops(num_evals: int):
    return jr.EarlyStopping(num_evals + 1)


def _check_same_work(fit_state, other_state, what: str) -> str:
    """Both sides ran the same steps: their final params agree to float32 rounding (else a note)."""
    a, b = jax.tree.leaves(fit_state["params"]), jax.tree.leaves(other_state["params"])
    err = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b))
    return "" if err < 1e-3 else f"; WARNING: final params differ from {what} by {err:.2g}"


# ----------------------------------------------------------------------------- rows


def dispatch_bound_rows(mode: str) -> list[Row]:
    n, steps, every = 8, 400, 50
    if mode == "tiny":
        steps, every = 40, 20
    w = linear_workload()
    stopper = _never_stops(steps // every)
    fit = make_fit(w, n, steps, every, stopper)
    order = jax.jit(_batch_maker(w, n, steps))  # the data order alone: shuffles, gathers, rngs
    fns = {
        "fit": fit,
        "bare": make_bare_scan(w, n, steps),
        "shuffling": make_shuffling_scan(w, n, steps),
        "dispatch": make_dispatch(w, n, steps, every, stopper),
        "order": lambda: order(w.train),
    }
    note = _check_same_work(fit().state, fns["bare"](), "the bare scan")
    t = _interleaved(fns, 3 if mode == "tiny" else 2 * ROUNDS + 1)
    work = n * steps
    per_epoch = w.train[0].shape[0] // w.batch_size
    epochs = n * -(-steps // per_epoch)
    order_ms = 1e3 * float(np.median(t["order"]))
    label = f"softmax regression 64-10, batch 32, {n} members x {steps} steps, eval every {every}"
    return [
        _ratio_row("5 fit/scan", label, "jr.fit (early stopping on)", "bare lax.scan (no evaluation)",
                   t["fit"], t["bare"], work=work, target=">= 0.9",
                   note=f"batches gathered before the call; drawing the {epochs} member-epoch shuffles and "
                   f"gathering the batches alone takes {order_ms:.1f} ms (jax.random.permutation)" + note,
                   extra={"data_order_s": t["order"]}),
        _ratio_row("5 fit/scan", label, "jr.fit (early stopping on)", "bare lax.scan drawing its own shuffles",
                   t["fit"], t["shuffling"], work=work, target=">= 0.9",
                   note="one jitted call: permutations per epoch, gather, scan; no evaluation"),
        _ratio_row("5 fit/scan", label, "jr.fit (early stopping on)", "per-step dispatch", t["fit"], t["dispatch"],
                   work=work, target=">= 1.0", extra={"bare_vs_dispatch": [d / b for b, d in zip(t["bare"], t["dispatch"])]}),
    ]  # fmt: skip


def mlp_rows(mode: str) -> list[Row]:
    members, steps, every = (1, 8, 32), 100, 20
    if mode == "tiny":
        members, steps = (2,), 40
    w = mlp_workload()
    rows = []
    for n in members:
        stopper = _never_stops(steps // every)
        fns = {
            "fit": make_fit(w, n, steps, every, stopper),
            "scan": make_hand_scan(w, n, steps, every, stopper),
            "dispatch": make_dispatch(w, n, steps, every, stopper),
        }
        t = _interleaved(fns, 3 if mode == "tiny" else ROUNDS)
        best = [min(s, d) for s, d in zip(t["scan"], t["dispatch"])]
        rows.append(
            _ratio_row(
                "5 fit/best", f"digits MLP, {n} members x {steps} steps, eval + early stopping every {every}",
                "jr.fit", "best of hand scan and dispatch (per round)", t["fit"], best, work=n * steps,
                target=">= 1.0",
                note=f"vs hand scan {np.median([s / f for f, s in zip(t['fit'], t['scan'])]):.2f}, "
                f"vs dispatch {np.median([d / f for f, d in zip(t['fit'], t['dispatch'])]):.2f}",
                extra={"seconds": t},
            )
        )  # fmt: skip
    return rows


def run(settings: Settings, ctx: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for make in (dispatch_bound_rows, mlp_rows):
        t0 = time.perf_counter()
        rows += make(settings.mode)
        ctx.setdefault("training_s", {})[make.__name__] = time.perf_counter() - t0
    return rows


if __name__ == "__main__":
    import sys

    mode = sys.argv[1] if len(sys.argv) > 1 else "quick"
    which = sys.argv[2:] or ["dispatch_bound_rows", "mlp_rows"]
    print(common.machine().to_dict().get("cpu_model", ""), common.allocator())
    for name in which:
        for row in globals()[name](mode):
            print(f"{row.section:14s} {row.workload[:70]:70s} {row.jaxreg} vs {row.baseline}: ratio {row.ratio:.3f} "
                  f"[{row.ratio_q25 or 0:.2f}, {row.ratio_q75 or 0:.2f}] {row.note}", flush=True)  # fmt: skip
