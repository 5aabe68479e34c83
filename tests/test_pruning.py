"""Member compaction and successive halving in ``jr.fit``: against ``compact=False`` and a plain-Python rule."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg as jr

N_EX, N_VAL, D, H, C = 32, 16, 4, 8, 3
EPS = float(np.finfo(np.float32).eps)
nan = float("nan")


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, C))
    x = rng.normal(size=(N_EX + N_VAL, D)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(N_EX + N_VAL, C)), axis=1).astype(np.int32)
    return (jnp.asarray(x[:N_EX]), jnp.asarray(y[:N_EX])), (jnp.asarray(x[N_EX:]), jnp.asarray(y[N_EX:]))


TRAIN, VAL = make_data()
opt = optax.sgd(0.2, momentum=0.9)


# ---- a small MLP with dropout: every member has its own init, batches and rngs -------------------
def init_member(key):
    k1, k2 = jax.random.split(key)
    params = {
        "w1": jax.random.normal(k1, (D, H), jnp.float32) / 2.0,
        "w2": jax.random.normal(k2, (H, C), jnp.float32) / 3.0,
    }
    return {"params": params, "opt": opt.init(params)}


def apply(params, x, rng):
    h = jax.nn.relu(x @ params["w1"])
    if rng is not None:
        h = jnp.where(jax.random.bernoulli(rng, 0.8, h.shape), h / 0.8, 0.0)
    return h @ params["w2"]


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def step(state, batch, rng):
    loss, g = jax.value_and_grad(lambda p: xent(apply(p, batch[0], rng), batch[1]))(state["params"])
    updates, opt_state = opt.update(g, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, loss


def evaluate(state, data):
    logits = apply(state["params"], data[0], None)
    return xent(logits, data[1]), jnp.mean(jnp.argmax(logits, -1) == data[1])


def stacked_init(n):
    return jax.jit(jax.vmap(init_member))(jax.random.split(jax.random.key(3), n))


def active_counts(stop_eval, budget, num_evals, eval_every):
    """Members training at the start of each evaluation block: not stopped before it, budget not spent."""
    counts = []
    for b in range(num_evals):
        active = [s > b and b * eval_every < m for s, m in zip(stop_eval, budget)]
        if not any(active):
            break
        counts.append(sum(active))
    return counts


def compacted_member_steps(counts, num_members, eval_every, end=None):
    """The documented cost: each evaluation block runs the active count rounded up to a power of
    two (at most N) for its steps, whatever the chunks (a chunk ends where the stack shrinks); a
    run whose members have all stopped ends at that evaluation (``end`` steps)."""
    end = len(counts) * eval_every if end is None else end
    return sum(
        min(num_members, 2 ** math.ceil(math.log2(a))) * min(eval_every, end - b * eval_every)
        for b, a in enumerate(counts)
    )


# ---- compaction against compact=False ----------------------------------------------------------
N, EVERY, SPC, STEPS = 8, 2, 4, 24  # 12 evaluations, 6 chunks of 2 evaluations
EVALS = STEPS // EVERY
PATIENCE = np.array([1, 1, 2, 3, 4, 6, 9, 20])  # member i stops after evaluation 1 + patience_i
BUDGET = np.array([24, 3, 24, 8, 24, 13, 24, 5])  # some not multiples of eval_every (a masked block)

# Tolerance. Both runs do the same float32 operations per member; only the stacked size differs,
# so XLA may vectorize (and order a sum) differently. The longest sums are over a batch (8) times
# the hidden width (8): a sum of n terms rounds by at most n * eps relative to the sum of its
# magnitudes, and errors of successive steps add (momentum 0.9 keeps them within a factor 10),
# so after s steps the params differ by at most rtol = 10 * s * 64 * eps (params are O(1): atol
# the same). An evaluation is one forward pass over 16 examples through 8 hidden units.
STATE_TOL = 10 * STEPS * 8 * H * EPS
EVAL_TOL = STATE_TOL + (N_VAL + H) * EPS


def fit_both(**kwargs):
    run = dict(
        rng=jax.random.key(7), num_steps=STEPS, batch_size=8, eval_every=EVERY, steps_per_chunk=SPC,
        num_members=N, progress=False,
    )  # fmt: skip
    run.update(kwargs)
    states = stacked_init(N)
    return (
        jr.fit(step, evaluate, states, TRAIN, VAL, compact=True, **run),
        jr.fit(step, evaluate, states, TRAIN, VAL, compact=False, **run),
    )


def assert_same_run(a, b):
    chex.assert_trees_all_close(a.state, b.state, rtol=STATE_TOL, atol=STATE_TOL)
    chex.assert_trees_all_close(a.best, b.best, rtol=STATE_TOL, atol=STATE_TOL)
    for name in ("train_loss", "val_loss", "metric"):
        x, y = np.asarray(getattr(a.history, name)), np.asarray(getattr(b.history, name))
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        np.testing.assert_allclose(x, y, rtol=EVAL_TOL, atol=EVAL_TOL, err_msg=name)
    np.testing.assert_array_equal(a.history.step, b.history.step)
    np.testing.assert_array_equal(a.history.stopped, b.history.stopped)
    np.testing.assert_array_equal(a.history.pruned, b.history.pruned)
    np.testing.assert_array_equal(a.best_num_steps, b.best_num_steps)
    if a.stopping is not None:
        np.testing.assert_array_equal(a.stopping.stopped, b.stopping.stopped)
        np.testing.assert_array_equal(a.stopping.best_step, b.stopping.best_step)
    assert a.num_steps == b.num_steps


def test_compaction_equals_no_compaction_with_spread_out_early_stops():
    stopper = jr.EarlyStopping(jnp.asarray(PATIENCE), min_delta=1e30)  # only the first evaluation improves
    compact, full = fit_both(early_stopping=stopper)
    assert_same_run(compact, full)
    stop_eval = np.minimum(1 + PATIENCE, EVALS + 1)  # 1-based evaluation after which member i is stopped
    stopped = np.asarray(full.history.stopped)
    np.testing.assert_array_equal(stopped, np.arange(1, EVALS + 1)[None, :] >= stop_eval[:, None])
    counts = active_counts(stop_eval, [STEPS] * N, EVALS, EVERY)
    assert counts == [8, 8, 6, 5, 4, 3, 3, 2, 2, 2, 1, 1]  # the spread the member-steps below depend on
    assert full.member_steps_computed == N * EVERY * len(counts)
    assert compact.member_steps_computed == compacted_member_steps(counts, N, EVERY)
    assert compact.member_steps_computed < full.member_steps_computed
    # a member that stopped is frozen at its stopping evaluation: its NaN losses from then on
    train = np.asarray(compact.history.train_loss)
    for i, s in enumerate(stop_eval):
        assert np.all(np.isfinite(train[i, : min(s, EVALS)])) and np.all(np.isnan(train[i, s:]))


def test_compaction_equals_no_compaction_with_member_budgets():
    compact, full = fit_both(member_steps=jnp.asarray(BUDGET, jnp.int32))
    assert_same_run(compact, full)
    counts = active_counts([EVALS + 1] * N, BUDGET, EVALS, EVERY)
    assert compact.member_steps_computed == compacted_member_steps(counts, N, EVERY) < full.member_steps_computed
    # member i trained in the blocks holding its BUDGET[i] updates, and in no later one
    train = np.asarray(compact.history.train_loss)
    for i, b in enumerate(BUDGET):
        assert np.all(np.isfinite(train[i, : -(-b // EVERY)])) and np.all(np.isnan(train[i, -(-b // EVERY) :]))


@pytest.mark.slow
def test_resume_with_compaction_equals_uninterrupted_run(tmp_path):
    stopper = jr.EarlyStopping(jnp.asarray(PATIENCE), min_delta=1e30)
    run = dict(
        rng=jax.random.key(7), num_steps=STEPS, batch_size=8, eval_every=EVERY, steps_per_chunk=SPC,
        num_members=N, early_stopping=stopper, prune=jr.SuccessiveHalving(eta=2, first_rung=4), progress=False,
    )  # fmt: skip
    states = stacked_init(N)
    full = jr.fit(step, evaluate, states, TRAIN, VAL, **run)

    class Killed(Exception):
        pass

    def kill(k, hist, state):
        if k == 3 * SPC:
            raise Killed

    with pytest.raises(Killed):
        jr.fit(step, evaluate, states, TRAIN, VAL, checkpoint_dir=tmp_path / "ckpt", callback=kill, **run)
    resumed = jr.fit(step, evaluate, states, TRAIN, VAL, checkpoint_dir=tmp_path / "ckpt", **run)
    chex.assert_trees_all_equal(resumed.state, full.state)
    chex.assert_trees_all_equal(resumed.best, full.best)
    chex.assert_trees_all_equal(resumed.history, full.history)
    chex.assert_trees_all_equal(resumed.stopping, full.stopping)
    assert resumed.member_steps_computed == full.member_steps_computed < N * STEPS


# ---- successive halving against a plain-Python reference ---------------------------------------
def halving_reference(values, first_rung, eta, mode, patience=None, min_delta=0.0):
    """The documented rule in plain Python.

    ``values[i][k]`` is member i's monitored value at evaluation k + 1. Per evaluation: the
    early-stopping update of every running member (``patience=None``: none), then at a rung
    (``first_rung * eta ** r``) the running members are ranked by the value (best first; NaN
    and infinities last; ties by the lower member index) and all but the first
    ``max(1, running // eta)`` are pruned. Every member's budget is the whole run, spent at the
    last evaluation: no member is running there, so a rung there prunes none. Returns
    ``(stopped, pruned)``, bool ``(members, evals)``.
    """
    n, e = len(values), len(values[0])
    rungs, k = set(), first_rung
    while k <= e:
        rungs.add(k)
        k *= eta
    best = [math.inf if mode == "min" else -math.inf] * n
    wait, stopped_now = [0] * n, [False] * n
    stopped = np.zeros((n, e), bool)
    pruned = np.zeros((n, e), bool)
    for t in range(e):
        for i in range(n):
            if stopped_now[i] or patience is None:
                continue
            m = values[i][t]
            better = math.isfinite(m) and ((m < best[i] - min_delta) if mode == "min" else (m > best[i] + min_delta))
            best[i], wait[i] = (m, 0) if better else (best[i], wait[i] + 1)
            stopped_now[i] = wait[i] >= patience[i]
        if t + 1 in rungs and t + 1 < e:  # at the last evaluation every budget is spent
            running = [i for i in range(n) if not stopped_now[i]]

            def key(i, t=t):
                v = values[i][t]
                bad = not math.isfinite(v)  # NaN or +-inf: a diverged member ranks last
                return (bad, (v if mode == "min" else -v) if not bad else 0.0, i)

            keep = set(sorted(running, key=key)[: max(1, len(running) // eta)])
            for i in running:
                if i not in keep:
                    stopped_now[i], pruned[i, t] = True, True
        stopped[:, t] = stopped_now
    return stopped, pruned


def table_step(state, batch, rng):
    del batch, rng
    return {**state, "t": state["t"] + 1}, jnp.zeros((), jnp.float32)


def table_eval(state, data):
    """The member's value of the evaluation that just ran (its own row of a table)."""
    del data
    value = state["values"][state["t"] // EVERY_T - 1]
    return value, value


EVERY_T, N_T, EVALS_T = 2, 8, 12


def run_table(values, prune, *, steps_per_chunk, compact=True, patience=None, min_delta=0.0, mode="min"):
    state = {"t": jnp.zeros((N_T,), jnp.int32), "values": jnp.asarray(values, jnp.float32)}
    stopper = None if patience is None else jr.EarlyStopping(jnp.asarray(patience), min_delta=min_delta, mode=mode)
    return jr.fit(
        table_step, table_eval, state, TRAIN, None, rng=jax.random.key(0), num_steps=EVALS_T * EVERY_T,
        batch_size=4, eval_every=EVERY_T, steps_per_chunk=steps_per_chunk, num_members=N_T,
        early_stopping=stopper, prune=prune, compact=compact, progress=False,
    )  # fmt: skip


def assert_matches_reference(values, eta, first_rung, spc, mode, patience, min_delta=0.0):
    prune = jr.SuccessiveHalving(eta=eta, first_rung=first_rung, mode=None if patience is not None else mode)
    result = run_table(values, prune, steps_per_chunk=spc, patience=patience, min_delta=min_delta, mode=mode)
    stopped, pruned = halving_reference(values, first_rung, eta, mode, patience, min_delta)
    k = result.history.stopped.shape[1]  # the run ends at the evaluation after which all stopped
    np.testing.assert_array_equal(np.asarray(result.history.pruned), pruned[:, :k])
    np.testing.assert_array_equal(np.asarray(result.history.stopped), stopped[:, :k])
    assert not pruned[:, k:].any() and (k == EVALS_T or stopped[:, k - 1].all())
    np.testing.assert_array_equal(result.stopping.stopped, stopped[:, k - 1])
    # a member trained exactly until the evaluation after which it stopped (frozen from then on)
    stop_eval = np.where(stopped.any(1), np.argmax(stopped, 1) + 1, EVALS_T + 1)
    np.testing.assert_array_equal(result.state["t"], np.minimum(stop_eval, EVALS_T) * EVERY_T)
    # and the compiled programs ran the documented number of member-steps
    counts = active_counts(stop_eval, [EVALS_T * EVERY_T] * N_T, EVALS_T, EVERY_T)
    assert result.member_steps_computed == compacted_member_steps(counts, N_T, EVERY_T, end=k * EVERY_T)
    return result


VALUES = st.lists(
    st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, nan, -math.inf, math.inf]), min_size=EVALS_T, max_size=EVALS_T),
    min_size=N_T,
    max_size=N_T,
)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(
    values=VALUES,
    schedule=st.sampled_from([(2, 1, 2), (2, 2, 4), (3, 1, 6), (2, 3, 8)]),  # (eta, first_rung, steps_per_chunk)
    mode=st.sampled_from(["min", "max"]),
)
def test_halving_keeps_the_reference_members_on_random_values_with_nans_and_ties(values, schedule, mode):
    eta, first_rung, spc = schedule
    assert_matches_reference(values, eta, first_rung, spc, mode, patience=None)


@settings(max_examples=8, deadline=None)
@given(values=VALUES, patience=st.lists(st.integers(1, 6), min_size=N_T, max_size=N_T))
def test_halving_with_early_stopping_ranks_only_the_members_still_running(values, patience):
    assert_matches_reference(values, 2, 2, 4, "min", patience=patience, min_delta=0.25)


def test_halving_rule_stated_cases():
    """The rule's corners, stated: NaN and -inf rank last, ties go to the lower index, at least one survives."""
    rows = [[1.0] * EVALS_T for _ in range(N_T)]
    for i, v in enumerate([nan, 0.5, 0.5, 0.2, -math.inf, 0.5, 3.0, 0.2]):
        rows[i][0] = v
    result = run_table(rows, jr.SuccessiveHalving(eta=2, first_rung=1), steps_per_chunk=2)
    # rung 1: keep 4 of 8: 0.2 (3), 0.2 (7), 0.5 (1), 0.5 (2) -- member 5's 0.5 loses the tie
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(result.history.stopped[:, 0])), [1, 2, 3, 7])
    np.testing.assert_array_equal(np.flatnonzero(result.history.pruned[:, 0]), [0, 4, 5, 6])
    # rungs 2, 4, 8 (all values 1.0): ties -> lower index; 4 -> 2 -> 1 -> 1 (never below one)
    survivors = [np.flatnonzero(~np.asarray(result.history.stopped[:, k - 1])).tolist() for k in (2, 4, 8)]
    assert survivors == [[1, 2], [1], [1]]
    assert not np.asarray(result.history.pruned[:, 7]).any()
    all_nan = run_table([[nan] * EVALS_T] * N_T, jr.SuccessiveHalving(eta=4, first_rung=3), steps_per_chunk=6)
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(all_nan.history.stopped[:, 2])), [0, 1])


def test_a_member_whose_budget_ends_at_a_rung_takes_no_place():
    # "the n_r members still running (not stopped, budget not spent) are ranked": members 3 and 4
    # have the best values at rung 2 but their budgets (2 evaluations) end there, so the 6 others
    # are ranked and floor(6 / 2) = 3 continue: 7, 6 and 5. (Ranked too, 3 and 4 took two of
    # floor(8 / 2) = 4 places and member 5 was pruned.)
    values = [[1.0] * EVALS_T for _ in range(N_T)]
    for i, v in enumerate([0.9, 0.8, 0.7, 0.1, 0.2, 0.5, 0.4, 0.3]):
        values[i][1] = v
    state = {"t": jnp.zeros((N_T,), jnp.int32), "values": jnp.asarray(values, jnp.float32)}
    budget = np.full(N_T, EVALS_T * EVERY_T)
    budget[[3, 4]] = 2 * EVERY_T
    result = jr.fit(
        table_step, table_eval, state, TRAIN, None, rng=jax.random.key(0), num_steps=EVALS_T * EVERY_T,
        batch_size=4, eval_every=EVERY_T, num_members=N_T, member_steps=budget,
        prune=jr.SuccessiveHalving(eta=2, first_rung=2), progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(np.flatnonzero(result.history.pruned[:, 1]), [0, 1, 2])
    assert (np.asarray(result.state["t"])[[5, 6, 7]] > 2 * EVERY_T).all()
    np.testing.assert_array_equal(np.asarray(result.state["t"])[[0, 1, 2, 3, 4]], 2 * EVERY_T)


def test_halving_with_and_without_compaction_agree():
    rng = np.random.default_rng(4)
    values = np.round(rng.uniform(0, 2, (N_T, EVALS_T)), 1)
    values[rng.uniform(size=values.shape) < 0.15] = np.nan
    prune = jr.SuccessiveHalving(eta=2, first_rung=2)
    a = run_table(values, prune, steps_per_chunk=4, compact=True)
    b = run_table(values, prune, steps_per_chunk=4, compact=False)
    chex.assert_trees_all_equal(a.state, b.state)
    chex.assert_trees_all_equal(a.history, b.history)
    chex.assert_trees_all_equal(a.stopping, b.stopping)
    assert a.member_steps_computed < b.member_steps_computed == N_T * a.num_steps


@pytest.mark.slow
def test_halving_on_a_real_model_keeps_what_the_reference_keeps_from_its_own_history():
    """The MLP: the rung decisions follow the recorded val losses, with and without compaction."""
    compact, full = fit_both(prune=jr.SuccessiveHalving(eta=2, first_rung=2))
    assert_same_run(compact, full)
    values = np.asarray(full.history.val_loss)  # NaN after a member stopped: not read by the rule
    stopped, pruned = halving_reference(values.tolist(), 2, 2, "min")
    np.testing.assert_array_equal(full.history.pruned, pruned)
    np.testing.assert_array_equal(full.history.stopped, stopped)
    assert compact.member_steps_computed < full.member_steps_computed


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eta": 1}, r"SuccessiveHalving: eta must be an int >= 2, got eta = 1\."),
        ({"eta": 2.0}, r"SuccessiveHalving: eta must be an int >= 2, got eta = 2\.0\."),
        ({"first_rung": 0}, r"SuccessiveHalving: first_rung must be an int >= 1, got first_rung = 0\."),
        ({"mode": "median"}, r"SuccessiveHalving: mode must be \"min\", \"max\" or None, got mode = 'median'\."),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jr.SuccessiveHalving(**kwargs)


def test_numpy_integers_are_ints_and_keep_checks_its_arguments():
    sh = jr.SuccessiveHalving(eta=np.int64(3), first_rung=np.int32(2))
    assert sh == jr.SuccessiveHalving(eta=3, first_rung=2) and type(sh.eta) is int
    assert sh.rungs(20) == (2, 6, 18)
    with pytest.raises(ValueError, match=r"keep: mode must be \"min\", \"max\" or None, got mode = 'minimum'\."):
        sh.keep(jnp.ones(3), jnp.ones(3, bool), mode="minimum")  # was read as "max"
    with pytest.raises(ValueError, match=r"keep: mode must be \"min\", \"max\" or None, got mode = ''\."):
        jr.SuccessiveHalving(mode="max").keep(jnp.ones(3), jnp.ones(3, bool), mode="")  # fell back to "max"
    with pytest.raises(ValueError, match=r"value.shape = \(3,\), running.shape = \(4,\)"):
        sh.keep(jnp.ones(3), jnp.ones(4, bool))


def test_keep_ranks_float64_values_without_rounding():
    # 1 + 1e-12 and 1 are one float32 value: rounded, they would tie and the lower index win.
    with jax.enable_x64(True):
        value = jnp.array([1.0 + 1e-12, 1.0], jnp.float64)
        kept = jr.SuccessiveHalving().keep(value, jnp.array([True, True]))
        np.testing.assert_array_equal(kept, [False, True])
        np.testing.assert_array_equal(
            jr.SuccessiveHalving().keep(value, jnp.array([True, True]), mode="max"), [True, False]
        )


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.uint32])
def test_keep_ranks_integer_values_in_their_own_dtype(dtype):
    """Integers were ranked as float32: 2**24 + 1 and 2**24 tied and the lower index won. "max"
    ranks by ~x, which does not wrap around as -x does at a signed minimum or any unsigned value."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    value = np.concatenate([np.array([info.min, info.max], dtype), rng.integers(info.min, info.max, 14, dtype=dtype)])
    assert value.dtype == dtype
    running = np.ones(value.shape, bool)
    for mode, order in (("min", np.argsort(value, kind="stable")), ("max", np.argsort(~value, kind="stable"))):
        expected = np.zeros(value.shape, bool)
        expected[order[: value.size // 2]] = True
        np.testing.assert_array_equal(jr.SuccessiveHalving(eta=2).keep(value, running, mode=mode), expected)
    if dtype == np.int32:
        tied = np.array([2**24 + 1, 2**24], dtype)
        np.testing.assert_array_equal(jr.SuccessiveHalving().keep(tied, np.ones(2, bool)), [False, True])
        np.testing.assert_array_equal(jr.SuccessiveHalving().keep(tied, np.ones(2, bool), mode="max"), [True, False])
