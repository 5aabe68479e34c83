"""fit's chunk policy: the numbers do not depend on how the run is cut into chunks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr
from jaxreg import training
from tests.test_training import TRAIN, VAL, evaluate, init_state, stack, step

MEMBERS = 3
RUN = dict(rng=jax.random.key(7), num_steps=40, batch_size=8, eval_every=4, num_members=MEMBERS, progress=False)
# 5 steps per epoch and blocks of 4: blocks straddle epochs, so the carried shuffle cache is used


def states():
    return stack([init_state(i, rate=0.1 * i) for i in range(MEMBERS)])


def run(**kwargs):
    chunks = []
    result = jr.fit(
        step, evaluate, states(), TRAIN, VAL, callback=lambda k, hist, state: chunks.append(k), **{**RUN, **kwargs}
    )
    return result, chunks


@pytest.fixture
def long_chunks(monkeypatch):
    """The default policy with a time budget no chunk reaches: chunks as long as allowed."""
    monkeypatch.setattr(training, "CHUNK_SECONDS", 1e9)


@pytest.mark.parametrize("stopper", [None, jr.EarlyStopping(jnp.asarray([1, 3, 100]))])
def test_results_bit_identical_across_chunk_policies(long_chunks, stopper):
    # without compaction every chunk runs the same program on the same stack: equal bits
    runs = [run(steps_per_chunk=spc, early_stopping=stopper, compact=False)[0] for spc in (4, 8, 20, 40, None, None)]
    for other in runs[1:]:
        chex.assert_trees_all_equal(other.state, runs[0].state)
        chex.assert_trees_all_equal(other.history, runs[0].history)
        chex.assert_trees_all_equal(other.best, runs[0].best)
        chex.assert_trees_all_equal(other.best_num_steps, runs[0].best_num_steps)
        assert other.num_steps == runs[0].num_steps and other.member_steps_computed == runs[0].member_steps_computed


STAGGERED = jr.EarlyStopping(jnp.asarray([1, 3, 100]), min_delta=jnp.asarray([1e-3, 1e-3, 0.0]))


def _assert_same_run(a, b):
    chex.assert_trees_all_equal(a.state, b.state)
    chex.assert_trees_all_equal(a.history, b.history)
    chex.assert_trees_all_equal(a.best, b.best)
    chex.assert_trees_all_equal(a.best_num_steps, b.best_num_steps)
    assert a.num_steps == b.num_steps and a.member_steps_computed == b.member_steps_computed


def test_compacted_results_bit_identical_across_chunk_policies(monkeypatch):
    """With compaction (the default) members stopping at different times shrink the stack 3 -> 2
    -> 1, and a stack of another size rounds differently in the last bits: the stack shrinks at
    the first block where it can, so where chunks end (given, or timed) changes no bit."""
    runs = [run(steps_per_chunk=spc, early_stopping=STAGGERED)[0] for spc in (4, 8, 20, 40)]
    for seconds in (1e-12, 1e9):  # the timed policy: one block per chunk, and chunks as long as allowed
        monkeypatch.setattr(training, "CHUNK_SECONDS", seconds)
        runs.append(run(early_stopping=STAGGERED)[0])
    assert runs[0].member_steps_computed < MEMBERS * RUN["num_steps"]  # members did leave the stack
    for other in runs[1:]:
        _assert_same_run(other, runs[0])


def test_given_chunks_stay_aligned_after_compaction_ends_one_early():
    # member 0 stops at the evaluation of step 20: that chunk ends there, the next at 24 again
    _, chunks = run(steps_per_chunk=8, early_stopping=STAGGERED)
    assert chunks == [8, 16, 20, 24, 32, 40]


def test_a_compacted_run_resumed_with_other_chunk_ends_equals_the_uninterrupted_run(monkeypatch, tmp_path):
    """The timed policy ends chunks where the machine's speed says; a run killed and resumed
    ends them elsewhere than an uninterrupted one, and compacts at the same blocks."""
    monkeypatch.setattr(training, "CHUNK_SECONDS", 1e9)
    full, _ = run(early_stopping=STAGGERED)
    assert full.member_steps_computed < MEMBERS * RUN["num_steps"]  # a member left the stack

    class Killed(Exception):
        pass

    def kill(k, hist, state):
        if k == 28:
            raise Killed

    monkeypatch.setattr(training, "CHUNK_SECONDS", 1e-12)  # one block per chunk until the kill
    training._SECONDS_PER_BLOCK.clear()
    with pytest.raises(Killed):
        jr.fit(step, evaluate, states(), TRAIN, VAL, early_stopping=STAGGERED, checkpoint_dir=tmp_path, callback=kill,
               **RUN)  # fmt: skip
    monkeypatch.setattr(training, "CHUNK_SECONDS", 1e9)
    training._SECONDS_PER_BLOCK.clear()  # a new process: the policy measures again, 1 block then 1 block
    resumed = jr.fit(step, evaluate, states(), TRAIN, VAL, early_stopping=STAGGERED, checkpoint_dir=tmp_path, **RUN)
    _assert_same_run(resumed, full)


def test_default_policy_grows_chunks_to_the_measured_length(long_chunks):
    run()  # compiles, measures
    _, chunks = run()
    assert chunks == [40]  # measured: the whole run in one chunk, one host sync


def test_default_policy_uses_small_chunks_when_blocks_are_slow(monkeypatch):
    monkeypatch.setattr(training, "CHUNK_SECONDS", 1e-12)
    _, chunks = run()
    assert chunks == list(range(4, 41, 4))  # one block per chunk


def test_a_chunk_ends_when_every_member_has_stopped(long_chunks):
    stopper = jr.EarlyStopping(1, min_delta=1e30)  # only the first evaluation improves: all stop at the 2nd
    for spc in (40, None):
        result, _ = run(steps_per_chunk=spc, early_stopping=stopper)
        assert result.num_steps == 8 and result.history.val_loss.shape == (MEMBERS, 2)
        assert result.member_steps_computed == MEMBERS * 8
        assert np.all(np.asarray(result.history.stopped[:, -1]))


@pytest.mark.slow
def test_default_chunks_end_at_prune_rungs(long_chunks):
    # members leave only at rungs; chunks ending at every rung compact as well as one block per chunk
    prune = jr.SuccessiveHalving(eta=2, first_rung=2)
    per_block, _ = run(steps_per_chunk=4, prune=prune)
    for _ in range(2):
        auto, chunks = run(prune=prune)
        assert auto.member_steps_computed == per_block.member_steps_computed
        chex.assert_trees_all_equal(auto.history.pruned, per_block.history.pruned)
    rung_steps = [4 * r for r in prune.rungs(10)]
    assert set(rung_steps) <= set(chunks)


def test_a_weakly_typed_state_leaf_compiles_the_chunk_once():
    # flax's TrainState.create holds step=0, a Python int: the first chunk's carry was weakly
    # typed and every later chunk's strongly typed, two programs for one run.
    def counting_step(state, batch, rng):
        new, loss = step(state["inner"], batch, rng)
        return {"inner": new, "t": state["t"] + 1}, loss

    def counting_eval(state, data):
        return evaluate(state["inner"], data)

    compiled = training._run_chunk._cache_size()
    result = jr.fit(
        counting_step, counting_eval, {"inner": init_state(0), "t": 0}, TRAIN, VAL,
        **{**RUN, "num_members": None, "steps_per_chunk": 8},
    )  # fmt: skip
    assert training._run_chunk._cache_size() - compiled == 1
    assert int(result.state["t"]) == RUN["num_steps"] and not result.state["t"].weak_type


def test_a_callback_history_compiles_nothing(caplog):
    # History built with jnp.asarray on host column slices compiled a copy program per shape: 3
    # programs per chunk for a callback's history.
    jr.fit(step, evaluate, states(), TRAIN, VAL, **{**RUN, "steps_per_chunk": 4})  # compiled, no callback
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        result, chunks = run(steps_per_chunk=4)
    assert len(chunks) == 10
    compiles = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert compiles == [], compiles[:3]
    assert result.history.val_loss.shape == (MEMBERS, 10)
