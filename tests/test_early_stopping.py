"""EarlyStopping against a plain-Python reference of the rule, inside scan, while_loop and vmap."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg as jr

nan = float("nan")


def reference(metrics, patience, min_delta=0.0, mode="min"):
    """The documented rule in plain Python: one (best_metric, best_step, step, wait, stopped) per update."""
    best, best_step, step, wait, stopped = (math.inf if mode == "min" else -math.inf), -1, 0, 0, False
    out = []
    for m in metrics:
        if not stopped:
            better = (m < best - min_delta) if mode == "min" else (m > best + min_delta)  # False on NaN
            if better:
                best, best_step, wait = m, step, 0
            else:
                wait += 1
            step += 1
            stopped = wait >= patience
        out.append((best, best_step, step, wait, stopped))
    return out


def params_at(t):
    """Params tagged with the update index t, so a snapshot says which update it came from."""
    return {"w": jnp.full((2, 3), t, jnp.float32), "b": jnp.asarray(t, jnp.int32)}


def run_scan_impl(stopper, metrics):
    state = stopper.init(params_at(-1))

    def body(state, xs):
        t, m = xs
        state = stopper.update(state, m, params_at(t))
        return state, (state.best_metric, state.best_step, state.step, state.wait, state.stopped)

    return jax.lax.scan(body, state, (jnp.arange(metrics.shape[0]), metrics))


run_scan = jax.jit(run_scan_impl)


def assert_matches(records, metrics, patience, min_delta, mode):
    ref = reference(metrics, patience, min_delta, mode)
    best, best_step, step, wait, stopped = (np.asarray(r) for r in records)
    np.testing.assert_array_equal(best, np.float32([r[0] for r in ref]))
    np.testing.assert_array_equal(best_step, [r[1] for r in ref])
    np.testing.assert_array_equal(step, [r[2] for r in ref])
    np.testing.assert_array_equal(wait, [r[3] for r in ref])
    np.testing.assert_array_equal(stopped, [r[4] for r in ref])


CASES = [
    # plateau: the first value improves on +inf, equal values never improve
    ([1.0, 1.0, 1.0, 1.0, 1.0], 3, 0.0, "min"),
    # NaNs never improve, even as the first value, and count as waits
    ([nan, 3.0, nan, nan, 2.0, nan, nan, nan, 1.0], 3, 0.0, "min"),
    # ties at exactly min_delta (all values exact in float32) do not improve; beyond it they do
    ([2.0, 1.5, 1.0, 0.4375, 0.5, 0.25, 0.25], 2, 0.5, "min"),
    ([0.5, 1.0, 1.5, 1.75, 2.25, 2.25, 2.0], 2, 0.5, "max"),
    # improvement after waiting resets wait; stops at patience and then ignores later improvements
    ([5.0, 4.0, 4.5, 4.2, 3.0, 3.1, 3.2, 3.3, 0.0, -1.0], 3, 0.0, "min"),
    # infinities: +inf never improves in "min"; -inf does
    ([math.inf, 2.0, -math.inf, 0.0], 2, 0.0, "min"),
    # patience 1 stops at the first non-improvement
    ([0.1, 0.2, 0.3, 0.9], 1, 0.0, "max"),
]


@pytest.mark.parametrize(("metrics", "patience", "min_delta", "mode"), CASES)
def test_scan_matches_reference(metrics, patience, min_delta, mode):
    stopper = jr.EarlyStopping(patience, min_delta=min_delta, mode=mode)
    state, records = run_scan(stopper, jnp.asarray(metrics, jnp.float32))
    assert_matches(records, metrics, patience, min_delta, mode)
    # the snapshot holds the params passed with the best update (tagged -1: the initial params)
    best_step = reference(metrics, patience, min_delta, mode)[-1][1]
    chex.assert_trees_all_equal(state.best_params, params_at(best_step))


def test_state_dtypes_and_init():
    state = jr.EarlyStopping(2, mode="max").init({"w": jnp.ones(3)})
    assert state.best_metric.dtype == jnp.float32 and float(state.best_metric) == -math.inf
    assert state.best_step.dtype == jnp.int32 and int(state.best_step) == -1
    assert state.step.dtype == jnp.int32 and state.wait.dtype == jnp.int32
    assert state.stopped.dtype == jnp.bool_ and not bool(state.stopped)


def test_vmap_members_stop_on_their_own_with_traced_patience_and_min_delta():
    """A sweep over (patience, min_delta) is one vmap over the stopper; each member follows the rule alone."""
    metrics = np.array(
        [
            [3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
            [3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.5, 0.5],
            [nan, nan, 1.0, 1.0, 0.5, 0.25, nan, nan],
            [1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    patience = np.array([1, 2, 3, 4], np.int32)
    min_delta = np.array([0.0, 0.5, 0.25, 0.25], np.float32)
    stoppers = jr.EarlyStopping(patience, min_delta=min_delta)
    traces = []

    @jax.jit
    @jax.vmap
    def run(stopper, ms):
        traces.append(1)
        return run_scan_impl(stopper, ms)

    state, records = run(stoppers, jnp.asarray(metrics))
    for i in range(4):
        member = [np.asarray(r)[i] for r in records]
        assert_matches(member, metrics[i].tolist(), int(patience[i]), float(min_delta[i]), "min")
        best_step = reference(metrics[i].tolist(), int(patience[i]), float(min_delta[i]))[-1][1]
        np.testing.assert_array_equal(state.best_params["w"][i], np.full((2, 3), best_step, np.float32))
    # members stopped at different updates
    first_stop = [int(np.argmax(np.asarray(records[4])[i])) for i in range(4)]
    assert len(set(first_stop)) > 1, first_stop
    # new patience values reuse the compiled program
    run(jr.EarlyStopping(patience + 1, min_delta=min_delta), jnp.asarray(metrics))
    assert len(traces) == 1, f"retraced {len(traces)} times"


def test_batched_update_without_vmap_equals_vmap():
    metrics = jnp.array([[1.0, 0.5, 0.6, 0.7], [2.0, 2.0, 1.0, 0.0]])
    stopper = jr.EarlyStopping(2)
    params = {"w": jnp.zeros((2, 3))}
    batched = jax.vmap(stopper.init)(params)
    mapped = jax.vmap(stopper.init)(params)
    for t in range(4):
        p = {"w": jnp.full((2, 3), float(t))}
        batched = stopper.update(batched, metrics[:, t], p)
        mapped = jax.vmap(stopper.update)(mapped, metrics[:, t], p)
    chex.assert_trees_all_equal(batched, mapped)
    assert np.asarray(batched.stopped).tolist() == [True, False]


def test_while_loop_stops_at_reference_index():
    metrics = jnp.array([4.0, 3.0, 3.5, 2.0, 2.5, 2.2, 2.1, 1.0, 0.0], jnp.float32)
    stopper = jr.EarlyStopping(3)

    def cond(carry):
        t, state = carry
        return jnp.logical_and(t < metrics.shape[0], jnp.logical_not(state.stopped))

    def body(carry):
        t, state = carry
        return t + 1, stopper.update(state, metrics[t], params_at(t))

    t, state = jax.jit(lambda: jax.lax.while_loop(cond, body, (0, stopper.init(params_at(-1)))))()
    ref = reference(metrics.tolist(), 3)
    first_stop = next(i for i, r in enumerate(ref) if r[4])
    assert int(t) == first_stop + 1
    assert int(state.best_step) == ref[first_stop][1] == 3
    chex.assert_trees_all_equal(state.best_params, params_at(3))


def test_update_after_stop_changes_nothing():
    stopper = jr.EarlyStopping(1)
    state = stopper.init(params_at(-1))
    state = stopper.update(state, 1.0, params_at(0))
    state = stopper.update(state, 2.0, params_at(1))
    assert bool(state.stopped)
    after = stopper.update(state, -100.0, params_at(2))
    chex.assert_trees_all_equal(after, state)


@settings(max_examples=30, deadline=None)
@given(
    metrics=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, nan, math.inf]), min_size=12, max_size=12),
    patience=st.integers(1, 5),
    min_delta=st.sampled_from([0.0, 0.25, 0.5]),
    mode=st.sampled_from(["min", "max"]),
)
def test_random_sequences_match_reference(metrics, patience, min_delta, mode):
    stopper = jr.EarlyStopping(patience, min_delta=min_delta, mode=mode)
    _, records = run_scan(stopper, jnp.asarray(metrics, jnp.float32))
    assert_matches(records, metrics, patience, min_delta, mode)


def test_freeze_stopped_keeps_stopped_members():
    old = {"w": jnp.zeros((3, 2, 2)), "count": jnp.zeros((3,), jnp.int32)}
    new = {"w": jnp.ones((3, 2, 2)), "count": jnp.ones((3,), jnp.int32)}
    out = jr.freeze_stopped(jnp.array([True, False, True]), new, old)
    np.testing.assert_array_equal(out["w"][:, 0, 0], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(out["count"], [0, 1, 0])
    chex.assert_trees_all_equal(jr.freeze_stopped(True, new, old), old)
    with pytest.raises(ValueError, match="stopped must have the leading"):
        jr.freeze_stopped(jnp.array([True, False]), new, old)


def test_frozen_members_unchanged_after_stop_in_scan():
    """Members whose metric plateaus stop; their params and counters stop changing in the same scan."""
    stopper = jr.EarlyStopping(jnp.array([1, 2, 100]))
    params = jnp.zeros((3,))
    metric_of = jnp.array([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [3.0, 2.0, 2.0, 2.0, 2.0, 2.0], [6.0, 5, 4, 3, 2, 1]])

    def body(carry, t):
        params, es = carry
        new = params + 1.0  # "training"
        params = jr.freeze_stopped(es.stopped, new, params)
        es = stopper.update(es, metric_of[:, t], params)  # batched: patience per member, min_delta shared
        return (params, es), params

    (params, es), trace = jax.lax.scan(body, (params, jax.vmap(stopper.init)(params)), jnp.arange(6))
    # member 0 stops after update 1 (two updates: params 1, 2), member 1 after update 3, member 2 never
    np.testing.assert_array_equal(np.asarray(trace)[:, 0], [1, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(np.asarray(trace)[:, 1], [1, 2, 3, 4, 4, 4])
    np.testing.assert_array_equal(np.asarray(trace)[:, 2], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(es.best_params, [1.0, 2.0, 6.0])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"patience must be an integer >= 1, got patience = 0\."):
        jr.EarlyStopping(0)
    with pytest.raises(ValueError, match=r"got patience = 1\.5"):
        jr.EarlyStopping(1.5)
    with pytest.raises(ValueError, match=r"got patience = \[2 0\]"):
        jr.EarlyStopping(np.array([2, 0]))
    with pytest.raises(ValueError, match=r"mode must be \"min\" or \"max\", got mode = 'avg'\."):
        jr.EarlyStopping(3, mode="avg")
    with pytest.raises(ValueError, match=r"min_delta must be finite and >= 0, got min_delta = -0\.1"):
        jr.EarlyStopping(3, min_delta=-0.1)
    with pytest.raises(ValueError, match=r"policy must be \"updates\" or \"epochs\", got policy = 'steps'"):
        jr.retrain_budget(10, num_train=100, num_val=10, batch_size=10, policy="steps")
    with pytest.raises(ValueError, match=r"num_train must be >= 10, got num_train = 5"):
        jr.retrain_budget(10, num_train=5, num_val=10, batch_size=10)


def test_traced_patience_skips_checks():
    out = jax.jit(lambda p: jr.EarlyStopping(p).patience)(jnp.asarray(3))
    assert int(out) == 3


@pytest.mark.parametrize("policy", ["updates", "epochs"])
def test_retrain_budget_closed_form(policy):
    u = np.array([0, 1, 7, 50, 123])
    n_train, n_val, bs = 1437, 360, 128
    got = np.asarray(jr.retrain_budget(jnp.asarray(u), num_train=n_train, num_val=n_val, batch_size=bs, policy=policy))
    if policy == "updates":
        expected = u
    else:  # same number of epochs, each floor(n / bs) updates: 11 per epoch before, 14 after
        expected = np.array([math.ceil(x * 14 / 11) for x in u])
        # same epochs means more updates
        assert np.all(expected[1:] > u[1:])
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32
