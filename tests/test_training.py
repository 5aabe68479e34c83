"""The scan-fused training loop: against a plain Python loop, history, freezing, resume, linen and nnx."""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxreg as jr

N_EX, N_VAL, D, C = 40, 16, 4, 3


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, C))
    x = rng.normal(size=(N_EX + N_VAL, D)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(N_EX + N_VAL, C)), axis=1).astype(np.int32)
    return (jnp.asarray(x[:N_EX]), jnp.asarray(y[:N_EX])), (jnp.asarray(x[N_EX:]), jnp.asarray(y[N_EX:]))


TRAIN, VAL = make_data()

# Tolerances. fit vmaps the step over members and scans it; the references run it alone, eagerly
# jitted. XLA may then order each float32 sum differently: a sum of n terms rounds by at most
# n * eps relative to the sum of its magnitudes. The longest sums here are over a batch (8) times
# the hidden width (8), and errors of successive steps add, so after s steps
# rtol = s * 64 * eps (params are O(1), so atol is the same number). An evaluation is one forward
# pass over the N_VAL = 16 validation examples through 8 hidden units: rel = (16 + 8) * eps.
EPS = float(np.finfo(np.float32).eps)
HIDDEN = 8


def steps_tol(num_steps, batch_size=8):
    return num_steps * batch_size * HIDDEN * EPS


EVAL_REL = (N_VAL + HIDDEN) * EPS


# ---- flax linen model, dropout rate as a per-member hyperparameter in the state -----------------
class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, rate, rng):
        h = nn.relu(nn.Dense(HIDDEN)(x))
        keep = jax.random.bernoulli(rng, 1.0 - rate, h.shape)
        h = jnp.where(keep, h / (1.0 - rate), 0.0)
        return nn.Dense(C)(h)


model = MLP()
opt = optax.adam(0.05)


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@jax.jit
def init_state(seed, rate=0.0):
    params = model.init(jax.random.key(seed), jnp.zeros((1, D)), 0.0, jax.random.key(0))
    return {"params": params, "opt": opt.init(params), "rate": jnp.asarray(rate, jnp.float32)}


def step(state, batch, rng):
    x, y = batch

    def loss_fn(p):
        return xent(model.apply(p, x, state["rate"], rng), y)

    loss, g = jax.value_and_grad(loss_fn)(state["params"])
    with jax.numpy_dtype_promotion("standard"):  # optax.scale_by_adam computes b ** count (int32)
        updates, opt_state = opt.update(g, state["opt"], state["params"])
    return {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt_state}, loss


def evaluate(state, data):
    x, y = data
    logits = model.apply(state["params"], x, 0.0, jax.random.key(0))
    return xent(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)


jit_step, jit_eval = jax.jit(step), jax.jit(evaluate)


def stack(states):
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


def member(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


BASE = dict(rng=jax.random.key(0), num_steps=12, batch_size=8, eval_every=4, progress=False)
S0 = init_state(0)
STACKED = stack([init_state(0), init_state(1)])


def reference_loop(state, key, num_steps, batch_size, eval_every, member_index=0, num_members=1):
    """The documented sampling and rng rule, one step at a time in Python."""
    data_key, step_key = jax.random.split(key)
    dk, sk = (
        jax.random.split(data_key, num_members)[member_index],
        jax.random.split(step_key, num_members)[member_index],
    )
    per_epoch = N_EX // batch_size
    losses, train_hist, val_hist = [], [], []
    for s in range(num_steps):
        perm = np.asarray(
            jax.jit(jax.random.permutation, static_argnums=1)(jax.random.fold_in(dk, s // per_epoch), N_EX)
        )
        idx = perm[(s % per_epoch) * batch_size : (s % per_epoch + 1) * batch_size]
        batch = (TRAIN[0][idx], TRAIN[1][idx])
        state, loss = jit_step(state, batch, jax.random.fold_in(sk, s))
        losses.append(float(loss))
        if (s + 1) % eval_every == 0:
            train_hist.append(np.mean(losses[-eval_every:]))
            val_hist.append(float(jit_eval(state, VAL)[0]))
    return state, np.array(train_hist), np.array(val_hist)


def test_single_model_matches_python_loop_and_history_matches_direct_evaluation():
    key = jax.random.key(3)
    s0 = init_state(0, rate=0.25)
    # 5 steps per epoch, evaluations every 4 steps, chunks of 8: epochs straddle evaluations and chunks
    result = jr.fit(
        step,
        evaluate,
        s0,
        TRAIN,
        VAL,
        rng=key,
        num_steps=16,
        batch_size=8,
        eval_every=4,
        steps_per_chunk=8,
        progress=False,
    )
    ref_state, ref_train, ref_val = reference_loop(s0, key, 16, 8, 4)
    tol = steps_tol(16)
    chex.assert_trees_all_close(result.state, ref_state, rtol=tol, atol=tol)
    np.testing.assert_allclose(result.history.train_loss, ref_train, rtol=tol)
    np.testing.assert_allclose(result.history.val_loss, ref_val, rtol=tol)
    np.testing.assert_array_equal(result.history.step, [4, 8, 12, 16])
    assert result.num_steps == 16
    # the last recorded validation loss is that of the final params, and the best is the minimum
    val, acc = evaluate(result.state, VAL)
    assert float(result.history.val_loss[-1]) == pytest.approx(float(val), rel=EVAL_REL)
    assert float(result.history.metric[-1]) == pytest.approx(float(acc), rel=EVAL_REL)
    best = int(np.argmin(result.history.val_loss))
    assert int(result.stopping.best_step) == best
    assert int(result.best_num_steps) == 4 * (best + 1)
    assert float(evaluate(result.best, VAL)[0]) == pytest.approx(float(result.history.val_loss[best]), rel=EVAL_REL)


def test_ensemble_members_shuffle_differently_and_see_every_example_once_per_epoch():
    n, bs = 12, 4

    def count_step(state, batch, rng):
        (i,) = batch
        counts = state["counts"] + jnp.zeros_like(state["counts"]).at[i].add(1)
        first = jnp.where(state["t"] == 0, i, state["first"])
        return {"counts": counts, "first": first, "t": state["t"] + 1}, jnp.zeros(())

    s = {
        "counts": jnp.zeros((3, n), jnp.int32),
        "first": jnp.zeros((3, bs), jnp.int32),
        "t": jnp.zeros((3,), jnp.int32),
    }
    result = jr.fit(
        count_step,
        None,
        s,
        (jnp.arange(n),),
        rng=jax.random.key(0),
        num_steps=6,
        batch_size=bs,
        eval_every=3,
        num_members=3,
        progress=False,
    )
    np.testing.assert_array_equal(result.state["counts"], np.full((3, n), 2))  # two epochs, each a permutation
    firsts = {tuple(np.sort(np.asarray(f)).tolist()) for f in result.state["first"]}
    assert len(firsts) == 3, firsts  # each member its own shuffle
    assert result.best is None and result.stopping is None
    assert np.all(np.isnan(np.asarray(result.history.val_loss)))


def test_ensemble_member_equals_python_loop_of_that_member():
    key = jax.random.key(7)
    states = [init_state(i, rate=r) for i, r in enumerate([0.0, 0.5])]
    result = jr.fit(
        step,
        evaluate,
        stack(states),
        TRAIN,
        VAL,
        rng=key,
        num_steps=8,
        batch_size=8,
        eval_every=4,
        steps_per_chunk=8,
        num_members=2,
        progress=False,
    )
    for i in range(2):
        ref_state, ref_train, ref_val = reference_loop(states[i], key, 8, 8, 4, member_index=i, num_members=2)
        tol = steps_tol(8)
        chex.assert_trees_all_close(member(result.state, i), ref_state, rtol=tol, atol=tol)
        np.testing.assert_allclose(result.history.val_loss[i], ref_val, rtol=tol)
        np.testing.assert_allclose(result.history.train_loss[i], ref_train, rtol=tol)


def test_full_batch_steps_on_the_data_in_order_shared_by_all_members():
    """batch_size = n: every step takes train_data as it is (documented), shared by all members."""
    key = jax.random.key(11)
    states = [init_state(i, rate=r) for i, r in enumerate([0.0, 0.5])]
    kwargs = dict(rng=key, num_steps=6, batch_size=N_EX, eval_every=3, num_members=2, progress=False)
    result = jr.fit(step, evaluate, stack(states), TRAIN, VAL, **kwargs)
    _, step_key = jax.random.split(key)
    tol = steps_tol(6, batch_size=N_EX)
    for i in range(2):
        sk = jax.random.split(step_key, 2)[i]
        ref, losses = states[i], []
        for s in range(6):
            ref, loss = jit_step(ref, TRAIN, jax.random.fold_in(sk, s))
            losses.append(float(loss))
        chex.assert_trees_all_close(member(result.state, i), ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(result.history.train_loss[i], np.reshape(losses, (2, 3)).mean(1), rtol=tol)
    # the counting step sees each example once per step, in order, with no shuffle drawn
    n = 12

    def count_step(state, batch, rng):
        (i,) = batch
        return {"counts": state["counts"].at[i].add(1), "order": i}, jnp.zeros(())

    s = {"counts": jnp.zeros((3, n), jnp.int32), "order": jnp.zeros((3, n), jnp.int32)}
    out = jr.fit(
        count_step,
        None,
        s,
        (jnp.arange(n),),
        rng=jax.random.key(0),
        num_steps=4,
        batch_size=n,
        eval_every=2,
        num_members=3,
        progress=False,
    )
    np.testing.assert_array_equal(out.state["counts"], np.full((3, n), 4))
    np.testing.assert_array_equal(out.state["order"], np.tile(np.arange(n), (3, 1)))


def test_early_stopping_freezes_stopped_members_and_ends_when_all_stopped():
    """Metric constant per member -> member i stops at evaluation patience_i; its state freezes there."""

    def flat_metric(state, data):
        return evaluate(state, data)[0], state["rate"]  # the metric never improves after the first

    states = stack([init_state(i) for i in range(3)])
    patience = jnp.array([1, 2, 4])
    seen = []
    result = jr.fit(
        step,
        flat_metric,
        states,
        TRAIN,
        VAL,
        rng=jax.random.key(1),
        num_steps=40,
        batch_size=8,
        eval_every=2,
        steps_per_chunk=2,
        num_members=3,
        early_stopping=jr.EarlyStopping(patience),
        monitor="metric",
        callback=lambda k, hist, state: seen.append((k, state)),
        progress=False,
    )
    stopped = np.asarray(result.history.stopped)
    first_stop = [int(np.argmax(stopped[i])) for i in range(3)]
    assert first_stop == [1, 2, 4]
    # all stopped after evaluation 4 (chunk 5): the run ends there and the history is cut
    assert result.num_steps == 10 and result.history.val_loss.shape == (3, 5)
    np.testing.assert_array_equal(result.stopping.best_step, [0, 0, 0])
    np.testing.assert_array_equal(result.best_num_steps, [2, 2, 2])
    for i in range(3):
        at_stop = seen[first_stop[i]][1]
        for _, later in seen[first_stop[i] :]:
            chex.assert_trees_all_equal(member(later, i), member(at_stop, i))  # params AND optimizer state
        chex.assert_trees_all_equal(member(result.state, i), member(at_stop, i))
        # the snapshot is the state at the first evaluation (the only improvement)
        chex.assert_trees_all_equal(member(result.best, i), member(seen[0][1], i))
    # still-running members kept changing while member 0 was frozen
    assert not np.allclose(
        seen[1][1]["params"]["params"]["Dense_0"]["kernel"][2], seen[2][1]["params"]["params"]["Dense_0"]["kernel"][2]
    )


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    states = stack([init_state(i, rate=0.25) for i in range(2)])
    kwargs = dict(
        rng=jax.random.key(5),
        num_steps=32,
        batch_size=8,
        eval_every=4,
        steps_per_chunk=8,
        num_members=2,
        early_stopping=jr.EarlyStopping(jnp.array([2, 50]), min_delta=1e-3),
        progress=False,
    )
    full = jr.fit(step, evaluate, states, TRAIN, VAL, **kwargs)

    class Killed(Exception):
        pass

    def kill_after_two(k, hist, state):
        if k == 16:
            raise Killed

    with pytest.raises(Killed):
        jr.fit(step, evaluate, states, TRAIN, VAL, checkpoint_dir=tmp_path / "ckpt", callback=kill_after_two, **kwargs)
    chunks_run = []
    resumed = jr.fit(
        step,
        evaluate,
        states,
        TRAIN,
        VAL,
        checkpoint_dir=tmp_path / "ckpt",
        callback=lambda k, h, s: chunks_run.append(k),
        **kwargs,
    )
    # it resumed after the second chunk; member 0 stops at step 28, where the stack shrinks to 1
    assert chunks_run == [24, 28, 32]
    chex.assert_trees_all_equal(resumed.state, full.state)
    chex.assert_trees_all_equal(resumed.best, full.best)
    chex.assert_trees_all_equal(resumed.history, full.history)
    chex.assert_trees_all_equal(resumed.stopping, full.stopping)


CKPT_RUN = dict(rng=jax.random.key(5), num_steps=16, batch_size=8, eval_every=4, steps_per_chunk=8, progress=False)


@pytest.fixture(scope="module")
def checkpoint_of_a_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    jr.fit(step, evaluate, S0, TRAIN, VAL, checkpoint_dir=directory, **CKPT_RUN)
    return directory


@pytest.mark.parametrize(
    "changed, match",
    [
        ({"rng": jax.random.key(6)}, r"another schedule: rng = \[0, 5\] there, rng = \[0, 6\] in this call"),
        ({"num_steps": 32}, r"another schedule: num_steps = 16 there, num_steps = 32 in this call"),
        ({"batch_size": 4}, r"another schedule: batch_size = 8 there, batch_size = 4 in this call"),
        ({"eval_every": 2}, r"another schedule: eval_every = 4 there, eval_every = 2 in this call"),
        ({"steps_per_chunk": 4}, r"another schedule: steps_per_chunk = 8 there, steps_per_chunk = 4 in this call"),
        ({"member_steps": 8}, r"another schedule: member_steps = \[16\] there, member_steps = \[8\] in this call"),
        (
            {"early_stopping": jr.EarlyStopping(2)},
            r"another schedule: early_stopping = .*'patience': \[1073741824\].* there, early_stopping = .*'patience': \[2\]",
        ),
        # what is monitored decides who stops; the snapshot is part of the carry
        (
            {"monitor": "metric", "early_stopping": jr.EarlyStopping(2**30, mode="max")},
            r"another schedule: (early_stopping|monitor) = ",
        ),
        ({"snapshot_fn": lambda st: st["params"]}, r"another schedule: snapshot = "),
        # the stack's size decides the rounding and the member-steps computed (it resumed silently)
        ({"compact": False}, r"another schedule: compact = True there, compact = False in this call"),
    ],
)
def test_resume_with_other_arguments_is_refused(checkpoint_of_a_run, changed, match):
    with pytest.raises(ValueError, match=match):
        jr.fit(step, evaluate, S0, TRAIN, VAL, checkpoint_dir=checkpoint_of_a_run, **{**CKPT_RUN, **changed})


def test_a_damaged_checkpoint_is_named_with_its_step(checkpoint_of_a_run, tmp_path):
    # A copy of a finished run's directory with its latest step's meta item removed: orbax's
    # KeyError becomes a ValueError naming checkpoint_dir and the step folder to remove.
    import shutil

    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoint_of_a_run, directory)
    latest = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    shutil.rmtree(directory / str(latest) / "meta")
    with pytest.raises(
        ValueError,
        match=rf"^fit: checkpoint_dir's latest checkpoint \(step {latest}\) cannot be restored into this run "
        rf"\(.*\); it is damaged .* Remove {re.escape(repr(str(directory / str(latest))))} to resume",
    ):
        jr.fit(step, evaluate, S0, TRAIN, VAL, checkpoint_dir=directory, **CKPT_RUN)


def test_compiled_once_whatever_the_number_of_steps():
    traces = []

    def counted_step(state, batch, rng):
        traces.append(1)
        return step(state, batch, rng)

    s0 = init_state(0)
    per_call = []
    for num_steps in (4, 20):  # 1 chunk, then 5 chunks: the same program, traced on the first call only
        r = jr.fit(
            counted_step,
            evaluate,
            s0,
            TRAIN,
            VAL,
            rng=jax.random.key(0),
            num_steps=num_steps,
            batch_size=8,
            eval_every=2,
            steps_per_chunk=4,
            progress=False,
        )
        assert r.num_steps == num_steps
        per_call.append(len(traces))
    # the first trace runs the step twice (the contract check by jax.eval_shape, then the scan)
    assert per_call == [2, 2], f"step traced {per_call} times after each call"


def test_nnx_model_via_split_merge():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(D, 8, rngs=rngs)
            self.b = nnx.Linear(8, C, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    graphdef, params = nnx.split(Net(nnx.Rngs(0)))
    tx = optax.sgd(0.1, momentum=0.9)

    def nnx_loss(params, x, y):
        return xent(nnx.merge(graphdef, params)(x), y)

    def nnx_step(state, batch, rng):
        params, opt_state = state
        loss, g = jax.value_and_grad(nnx_loss)(params, *batch)
        updates, opt_state = tx.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def nnx_eval(state, data):
        return nnx_loss(state[0], *data), 0.0

    result = jr.fit(
        nnx_step,
        nnx_eval,
        (params, tx.init(params)),
        TRAIN,
        VAL,
        rng=jax.random.key(2),
        num_steps=30,
        batch_size=10,
        eval_every=10,
        snapshot_fn=lambda s: s[0],
        progress=False,
    )
    assert float(result.history.val_loss[-1]) == pytest.approx(float(nnx_loss(result.state[0], *VAL)), rel=EVAL_REL)
    best = int(np.argmin(result.history.val_loss))
    assert float(nnx_loss(result.best, *VAL)) == pytest.approx(float(result.history.val_loss[best]), rel=EVAL_REL)
    assert float(result.history.train_loss[-1]) < float(result.history.train_loss[0])  # SGD on this data learns
    assert isinstance(result.best, nnx.State)


def test_retrain_runs_each_member_for_its_budget_on_all_data():
    def count_step(state, batch, rng):
        (i,) = batch
        return {"n": state["n"] + 1, "seen": state["seen"].at[i].add(1)}, jnp.zeros(())

    n_train, n_val, bs = 12, 4, 4
    budgets = jnp.array([3, 5])
    s = {"n": jnp.zeros((2,), jnp.int32), "seen": jnp.zeros((2, n_train + n_val), jnp.int32)}
    r = jr.retrain(
        count_step, s, (jnp.arange(n_train),), (n_train + jnp.arange(n_val),), budgets, rng=jax.random.key(0),
        batch_size=bs, policy="epochs", num_members=2, progress=False,
    )  # fmt: skip
    # 3 updates = 1 epoch of 3; on 16 examples 1 epoch = 4 updates. 5 updates -> ceil(5 * 4 / 3) = 7
    np.testing.assert_array_equal(r.state["n"], [4, 7])
    np.testing.assert_array_equal(r.state["seen"][0], np.ones(16))  # exactly one epoch of all the data
    assert int(r.state["seen"][1].sum()) == 7 * bs


def test_resume_with_another_monitor_alone_is_refused(tmp_path):
    stopper = jr.EarlyStopping(2**30, mode="min")
    jr.fit(step, evaluate, S0, TRAIN, VAL, checkpoint_dir=tmp_path, early_stopping=stopper, **CKPT_RUN)
    with pytest.raises(
        ValueError, match=r"another schedule: monitor = 'val_loss' there, monitor = 'metric' in this call"
    ):
        jr.fit(
            step, evaluate, S0, TRAIN, VAL, checkpoint_dir=tmp_path, early_stopping=stopper, monitor="metric",
            **CKPT_RUN,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("changed", "match"),
    [
        ({"step_fn": None}, r"^fit: step_fn must be a function .* got step_fn = None\."),
        ({"eval_fn": 3}, r"^fit: eval_fn must be a function or None, got eval_fn = 3\."),
        ({"snapshot_fn": 3}, r"^fit: snapshot_fn must be a function or None, got snapshot_fn = 3\."),
        ({"callback": 3}, r"^fit: callback must be a function or None, got callback = 3\."),  # was: after a chunk
        ({"checkpoint_dir": 3}, r"^fit: checkpoint_dir must be a path or None, got checkpoint_dir = 3\."),
        # os.path.abspath("") is the working directory: the run wrote its checkpoints there
        ({"checkpoint_dir": ""}, r"^fit: checkpoint_dir must name a directory, got checkpoint_dir = ''\."),
        # called after the first chunk (a TypeError once its work was done)
        (
            {"callback": lambda k, hist: None},
            r"^fit: callback must take \(num_steps, history, state\), got .* \(k, hist\)\.",
        ),
        # jax's TypeError from inside vmap, naming neither snapshot_fn nor the leaf
        (
            {"snapshot_fn": lambda st: {"w": "x"}},
            r"^fit: snapshot_fn must return a pytree of arrays .* got snapshot\['w'\] = 'x'\.",
        ),
        ({"compact": "no"}, r"^fit: compact must be True or False, got compact = 'no'\."),  # was: compaction on
        ({"progress": None}, r"^fit: progress must be True or False, got progress = None\."),
        # jax's TypeError naming no argument; bools were the losses 1 and 0
        ({"eval_fn": lambda s, v: "low"}, r"^fit: eval_fn must return real numbers, got 'low'\."),
        (
            {"eval_fn": lambda s, v: (jnp.bool_(True), 0.5)},
            r"^fit: eval_fn must return real numbers, got a value of dtype bool\.",
        ),
        # three numbers: the structure is named, not the numbers
        ({"eval_fn": lambda s, v: (0.5, 0.5, 0.5)}, r"^fit: eval_fn must return a scalar val_loss or a pair"),
        # step_fn's loss as eval_fn's: complex lost its imaginary part in the history, bool was 1 and 0,
        # text failed in jax's eval_shape
        (
            {"step_fn": lambda st, b, r: (step(st, b, r)[0], step(st, b, r)[1].astype(jnp.complex64))},
            r"^fit: step_fn must return a real scalar loss, got a loss of dtype complex64\.",
        ),
        (
            {"step_fn": lambda st, b, r: (step(st, b, r)[0], step(st, b, r)[1] > 0)},
            r"^fit: step_fn must return a real scalar loss, got a loss of dtype bool\.",
        ),
        (
            {"step_fn": lambda st, b, r: (step(st, b, r)[0], "nan")},
            r"^fit: step_fn must return a real scalar loss, got loss = 'nan'\.",
        ),
    ],
)
def test_fit_refuses_functions_flags_and_paths_that_are_not(changed, match):
    args = {"step_fn": step, "eval_fn": evaluate}
    kwargs = {**BASE, **{k: v for k, v in changed.items() if k not in args}}
    with pytest.raises(ValueError, match=match):
        jr.fit({**args, **changed}["step_fn"], {**args, **changed}["eval_fn"], S0, TRAIN, VAL, **kwargs)


def test_numpy_flags_are_written_to_a_checkpoint_as_json(tmp_path):
    # np.True_ passes the flag check, and orbax's JSON writer refused it in the checkpoint's meta
    run = jr.fit(step, evaluate, S0, TRAIN, VAL, checkpoint_dir=tmp_path, **{**BASE, "compact": np.True_})
    again = jr.fit(step, evaluate, S0, TRAIN, VAL, checkpoint_dir=tmp_path, **{**BASE, "compact": True})
    chex.assert_trees_all_equal(again.state, run.state)  # resumed from the finished run: the same numbers


def test_fit_refuses_a_state_without_leaves():
    with pytest.raises(ValueError, match=r"^fit: state must hold at least one array leaf, got state = \{\}\."):
        jr.fit(step, evaluate, {}, TRAIN, VAL, **BASE)


def test_fit_refuses_a_checkpoint_dir_that_is_a_file(tmp_path):
    # orbax failed only after the first chunk (NotADirectoryError, then a background TimeoutError)
    path = tmp_path / "ckpt"
    path.write_text("")
    with pytest.raises(
        ValueError,
        match=rf"^fit: checkpoint_dir must be a directory, got checkpoint_dir = {re.escape(repr(path))}, a file\.",
    ):
        jr.fit(step, evaluate, S0, TRAIN, VAL, checkpoint_dir=path, **BASE)


def test_retrain_names_its_rng_num_updates_and_state():
    s = {"n": jnp.zeros((), jnp.int32)}
    common = dict(batch_size=4, progress=False)
    one_step = lambda st, b, r: ({"n": st["n"] + 1}, jnp.zeros(()))  # noqa: E731
    data = ((jnp.arange(12),), (jnp.arange(4),))
    with pytest.raises(ValueError, match=r"^retrain: rng \(a PRNG key.*\) is required, got rng = None\."):
        jr.retrain(one_step, s, *data, 5, rng=None, **common)
    stacked = {"n": jnp.zeros((4,), jnp.int32)}
    with pytest.raises(
        ValueError, match=r"^retrain: num_updates must be one number or one per member, got num_updates.shape = \(3,\)"
    ):
        jr.retrain(one_step, stacked, *data, jnp.ones(3, jnp.int32), rng=jax.random.key(0), num_members=4, **common)
    with pytest.raises(
        ValueError, match=r"^retrain: every leaf of state must have a leading member axis of size num_members = 4"
    ):
        jr.retrain(one_step, s, *data, 5, rng=jax.random.key(0), num_members=4, **common)
    # train and validation examples are concatenated: their shapes past the example axis must agree
    with pytest.raises(
        ValueError,
        match=re.escape(
            "retrain: val_data's examples must be shaped like train_data's (they are concatenated), got "
            "val_data[0] of shape (4, 3) and dtype float32 for train_data's (12,) and int32."
        ),
    ):
        jr.retrain(one_step, s, (jnp.arange(12),), (jnp.ones((4, 3)),), 5, rng=jax.random.key(0), **common)
    # val_data's own leaves disagree: named val_data (it quoted them as train_data's)
    with pytest.raises(
        ValueError, match=r"^retrain: every leaf of val_data must have the same leading \(example\) axis"
    ):
        jr.retrain(
            one_step,
            s,
            (jnp.arange(12), jnp.arange(12)),
            (jnp.arange(4), jnp.arange(3)),
            5,
            rng=jax.random.key(0),
            **common,
        )
    with pytest.raises(ValueError, match=r"^retrain: eval_fn must be a function or None, got eval_fn = 3\."):
        jr.retrain(one_step, s, *data, 5, rng=jax.random.key(0), eval_fn=3, **common)


@pytest.mark.parametrize(
    ("num_updates", "batch_size", "match"),
    [
        (-3, 4, r"^retrain: num_updates must be an integer in \[0, 2147483647\], got num_updates = -3\."),
        (2.7, 4, r"^retrain: num_updates must be an integer in \[0, 2147483647\], got num_updates = 2\.7\."),
        (
            5,
            20,
            r"^retrain: batch_size must be at most the number of train_data examples \(12\), got batch_size = 20\.",
        ),
    ],
)
def test_retrain_errors_name_its_own_arguments(num_updates, batch_size, match):
    # Not fit's member_steps nor retrain_budget's num_train: what the caller of retrain passed.
    s = {"n": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=match):
        jr.retrain(
            lambda st, b, r: ({"n": st["n"] + 1}, jnp.zeros(())), s, (jnp.arange(12),), (jnp.arange(4),),
            num_updates, rng=jax.random.key(0), batch_size=batch_size, progress=False,
        )  # fmt: skip


def bad_step_pair(state, batch, rng):  # returns the new state only
    return step(state, batch, rng)[0]


def bad_step_structure(state, batch, rng):  # drops the optimizer state
    new, loss = step(state, batch, rng)
    return {"params": new["params"], "rate": new["rate"]}, loss


def bad_step_shape(state, batch, rng):  # the rate grows an axis
    new, loss = step(state, batch, rng)
    return {**new, "rate": jnp.stack([new["rate"], new["rate"]])}, loss


def bad_step_loss(state, batch, rng):  # per-example losses instead of their mean
    new, _ = step(state, batch, rng)
    return new, jnp.zeros((batch[0].shape[0],))


def bad_eval_vector(state, data):  # per-example losses
    return jnp.zeros((data[0].shape[0],)), 0.0


BAD_CALLS = {
    "eval_every": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, **{**BASE, "eval_every": 5}),
        r"eval_every must divide num_steps .* got eval_every = 5 for num_steps = 12",
    ),
    "steps_per_chunk": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, steps_per_chunk=6, **BASE),
        r"steps_per_chunk must be a multiple of eval_every = 4 .* got steps_per_chunk = 6",
    ),
    "batch_size": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, **{**BASE, "batch_size": 41}),
        r"batch_size must be at most the 40 training examples, got batch_size = 41",
    ),
    "monitor": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, monitor="acc", **BASE),
        r"monitor must be \"val_loss\" or \"metric\", got monitor = 'acc'",
    ),
    "metric_without_stopper": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, monitor="metric", **BASE),
        r'monitor = "metric" needs early_stopping, an EarlyStopping whose mode .* got early_stopping = None',
    ),
    "member_steps_negative": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, member_steps=-1, **BASE),
        r"fit: member_steps must be an integer >= 0, got member_steps = -1",
    ),
    "member_steps_fraction": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, member_steps=2.5, **BASE),
        r"fit: member_steps must be an integer >= 0, got member_steps = 2.5",
    ),
    "early_stopping_without_eval": (
        lambda: jr.fit(step, None, S0, TRAIN, VAL, early_stopping=jr.EarlyStopping(2), **BASE),
        r"early_stopping needs an eval_fn",
    ),
    "prune_without_eval": (
        lambda: jr.fit(step, None, S0, TRAIN, VAL, prune=jr.SuccessiveHalving(2, 1), **BASE),
        r"prune needs an eval_fn",
    ),
    "prune_eta": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, prune=jr.SuccessiveHalving(eta=1), **BASE),
        r"SuccessiveHalving: eta must be an int >= 2, got eta = 1",
    ),
    "member_axis": (
        lambda: jr.fit(step, evaluate, STACKED, TRAIN, VAL, num_members=3, **BASE),
        r"leading member axis of size num_members = 3, got state.* with shape \(2",
    ),
    "stopper_member_axis": (
        lambda: jr.fit(
            step,
            evaluate,
            STACKED,
            TRAIN,
            VAL,
            num_members=2,
            early_stopping=jr.EarlyStopping(jnp.array([1, 2, 3])),
            **BASE,
        ),
        r"early_stopping.patience must be a scalar or have shape \(num_members,\) = \(2,\), got shape \(3,\)",
    ),
    "member_steps_axis": (
        lambda: jr.fit(step, evaluate, STACKED, TRAIN, VAL, num_members=2, member_steps=np.array([4, 8, 12]), **BASE),
        r"member_steps must be a scalar or have shape \(num_members,\) = \(2,\), got shape \(3,\)",
    ),
    "example_axis": (
        lambda: jr.fit(step, evaluate, S0, (TRAIN[0], TRAIN[1][:5]), VAL, **BASE),
        r"same leading \(example\) axis",
    ),
    "key_and_rng": (
        lambda: jr.fit(step, evaluate, S0, TRAIN, VAL, key=jax.random.key(1), **BASE),
        r"fit: pass rng only \(key is its deprecated name\), got both",
    ),
    "step_not_a_pair": (
        lambda: jr.fit(bad_step_pair, evaluate, S0, TRAIN, VAL, **BASE),
        r"step_fn must return a pair \(new_state, loss\) for one member, got \{'opt'",
    ),
    "step_structure": (
        lambda: jr.fit(bad_step_structure, evaluate, S0, TRAIN, VAL, **BASE),
        r"step_fn must return a new_state with the structure of state, got new_state = \{'params'",
    ),
    "step_leaf_shape": (
        lambda: jr.fit(bad_step_shape, evaluate, S0, TRAIN, VAL, **BASE),
        r"step_fn must keep every leaf's shape and dtype .* got new_state\['rate'\] = float32\[2\] for "
        r"state\['rate'\] = float32\[\]",
    ),
    "step_vector_loss": (
        lambda: jr.fit(bad_step_loss, evaluate, S0, TRAIN, VAL, **BASE),
        r"step_fn must return a scalar loss for one member, got loss = float32\[8\]",
    ),
    "step_in_ensemble": (
        lambda: jr.fit(bad_step_loss, evaluate, STACKED, TRAIN, VAL, num_members=2, **BASE),
        r"step_fn must return a scalar loss for one member, got loss = float32\[8\]",
    ),
    "eval_vector": (
        lambda: jr.fit(step, bad_eval_vector, S0, TRAIN, VAL, **BASE),
        r"eval_fn must return a scalar val_loss or a pair \(val_loss, metric\) of scalars for one member, "
        r"got \('float32\[16\]', 'float32\[\]'\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments(case):
    call, match = BAD_CALLS[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_deprecated_names_warn_and_keep_working():
    kwargs = dict(num_steps=8, batch_size=8, eval_every=4, progress=False)
    new = jr.fit(step, evaluate, S0, TRAIN, VAL, rng=jax.random.key(4), steps_per_chunk=4, **kwargs)
    with pytest.warns(DeprecationWarning, match=r"fit: key= is deprecated, use rng="):
        with pytest.warns(DeprecationWarning, match=r"fit: chunk_size= is deprecated, use steps_per_chunk="):
            old = jr.fit(step, evaluate, S0, TRAIN, VAL, key=jax.random.key(4), chunk_size=4, **kwargs)
    chex.assert_trees_all_equal(old.state, new.state)


def test_fit_refuses_an_int_seed_as_rng():
    with pytest.raises(ValueError, match=r"fit: rng must be a PRNG key.*Got rng = 5\."):
        jr.fit(
            lambda s, b, r: (s, 0.0), None, jnp.zeros(()), jnp.ones(4), rng=5, num_steps=1, batch_size=1, eval_every=1
        )


def test_a_member_budget_above_num_steps_is_the_whole_run():
    # 1e10 does not fit int32: it must mean "every step", not overflow.
    full = jr.fit(step, evaluate, S0, TRAIN, VAL, **BASE)
    big = jr.fit(step, evaluate, S0, TRAIN, VAL, member_steps=10**10, **BASE)
    chex.assert_trees_all_equal(big.state, full.state)
    np.testing.assert_array_equal(big.best_num_steps, full.best_num_steps)


def test_a_resume_in_a_new_process_is_not_refused_for_static_fields(tmp_path):
    # a state with a static function field (flax's TrainState holds apply_fn and tx so) reprs with
    # the function's address, which a resuming process does not share: the checkpoint compares
    # leaf paths, shapes and dtypes only. Two equal lambdas stand in for the two processes.
    import flax.struct

    class Holder(flax.struct.PyTreeNode):
        inner: dict
        fn: object = flax.struct.field(pytree_node=False)

    def wrapped(fn):
        return lambda st, b, r: (Holder(step(st.inner, b, r)[0], st.fn), step(st.inner, b, r)[1])

    first, second = (lambda x: x), (lambda x: x)
    run = dict(CKPT_RUN, num_steps=16, steps_per_chunk=8)
    stop = []

    def interrupt(k, h, s):
        stop.append(k)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jr.fit(wrapped(first), lambda s, d: evaluate(s.inner, d), Holder(S0, first), TRAIN, VAL,
               checkpoint_dir=tmp_path, callback=interrupt, **run)  # fmt: skip
    resumed = jr.fit(wrapped(second), lambda s, d: evaluate(s.inner, d), Holder(S0, second), TRAIN, VAL,
                     checkpoint_dir=tmp_path, **run)  # fmt: skip
    assert stop == [8] and resumed.num_steps == 16


def test_under_x64_a_float64_metric_reaches_the_stopper_unrounded():
    # fit cast eval_fn's values to float32 before the early-stopping update: metrics 1e-9 apart
    # tied, and a member that improves at every evaluation stopped at the second. EarlyStopping
    # itself compares float64 metrics without rounding; fit gives it the same values. The
    # history keeps float32 records.
    with jax.enable_x64(True):

        def step(state, batch, rng):
            return state + 1, jnp.zeros((), jnp.float64)

        def evaluate(state, data):
            return 1.0 - 1e-9 * state.astype(jnp.float64)  # strictly improving in float64

        x = jnp.zeros((8, 1))
        res = jr.fit(
            step,
            evaluate,
            jnp.zeros((), jnp.int32),
            (x,),
            (x,),
            rng=jax.random.key(0),
            num_steps=40,
            batch_size=4,
            eval_every=5,
            early_stopping=jr.EarlyStopping(1),
        )
        stopper = jr.EarlyStopping(1)
        ref = stopper.init(jnp.zeros((), jnp.int32))
        for n in range(5, 45, 5):
            ref = stopper.update(ref, 1.0 - 1e-9 * n, jnp.asarray(n, jnp.int32))
        assert not bool(ref.stopped) and int(ref.best_step) == 7
        assert bool(res.stopping.stopped) == bool(ref.stopped)
        assert int(res.stopping.best_step) == int(ref.best_step)
        assert float(res.stopping.best_metric) == float(ref.best_metric)
        assert res.history.val_loss.dtype == jnp.float32


def test_resume_into_a_state_of_another_dtype_is_refused_without_eval_fn(tmp_path):
    """Without eval_fn no snapshot's dtypes were compared: orbax cast the saved float32 carry
    into the float16 state given and the run went on with numbers no uninterrupted run gives."""
    x = jnp.linspace(0.0, 1.0, 8)[:, None]

    def sgd_step(w, batch, rng):
        r = w[None] * batch[0] - 1.0
        g = jnp.mean(2 * r * batch[0], axis=0)
        return (w - 0.1 * g).astype(w.dtype), jnp.mean(r**2).astype(jnp.float32)

    kw = dict(rng=jax.random.key(0), num_steps=8, batch_size=4, eval_every=2, steps_per_chunk=4, progress=False)
    w = jnp.full((1,), 0.123456789, jnp.float32)
    jr.fit(sgd_step, None, w, (x,), checkpoint_dir=tmp_path, **kw)
    with pytest.raises(
        ValueError,
        match=r"^fit: checkpoint_dir holds a run of another state: state leaf <root> is float32 \(1, 1\) there, "
        r"float16 \(1, 1\) in this call",
    ):
        jr.fit(sgd_step, None, w.astype(jnp.float16), (x,), checkpoint_dir=tmp_path, **kw)
    seen = []
    resumed = jr.fit(sgd_step, None, w, (x,), checkpoint_dir=tmp_path, callback=lambda n, h, s: seen.append(n), **kw)
    assert seen == []  # the same state resumes: the run had finished, nothing is run again
    chex.assert_trees_all_equal(resumed.state, jr.fit(sgd_step, None, w, (x,), **kw).state)


def test_a_zero_size_leaf_is_checkpointed_and_resumed(tmp_path):
    """orbax refuses zero-size arrays: the first checkpoint failed after a chunk of training
    ("Cannot save arrays with zero size"); it holds no numbers, so resume takes it as given."""
    x = jnp.ones((8, 2))

    def decay(s, batch, rng):
        w, buf = s
        return (w - 0.1 * w * jnp.mean(batch[0]), buf), jnp.sum(w**2)

    state = (jnp.ones(2), jnp.zeros((0, 3)))
    kw = dict(rng=jax.random.key(0), num_steps=8, batch_size=4, eval_every=2, steps_per_chunk=4, progress=False)

    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop

    with pytest.raises(Stop):  # killed after the first chunk's checkpoint
        jr.fit(decay, None, state, (x,), checkpoint_dir=tmp_path, callback=stop, **kw)
    seen = []  # the steps done at each chunk's end: a resume runs only the second chunk
    resumed = jr.fit(decay, None, state, (x,), checkpoint_dir=tmp_path, callback=lambda n, h, s: seen.append(n), **kw)
    assert seen == [8]
    full = jr.fit(decay, None, state, (x,), **kw)
    chex.assert_trees_all_equal(resumed.state, full.state)
    assert resumed.state[1].shape == (0, 3)
