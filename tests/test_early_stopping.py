"""EarlyStopping against a plain-Python reference of the rule, inside scan, while_loop and vmap."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import checkify

import jaxreg as jr

nan = float("nan")


def reference(metrics, patience, min_delta=0.0, mode="min"):
    """The documented rule in plain Python: one (best_metric, best_step, step, wait, stopped) per update."""
    best, best_step, step, wait, stopped = (math.inf if mode == "min" else -math.inf), -1, 0, 0, False
    out = []
    for m in metrics:
        if not stopped:
            # A non-finite metric (NaN, +-inf: a diverged run) never improves.
            better = math.isfinite(m) and ((m < best - min_delta) if mode == "min" else (m > best + min_delta))
            if better:
                best, best_step, wait = m, step, 0
            else:
                wait += 1
            step += 1
            stopped = wait >= patience
        out.append((best, best_step, step, wait, stopped))
    return out


def keras_reference(metrics, patience, min_delta=0.0, mode="min", baseline=None, start_from=0, keras=False):
    """keras's EarlyStopping.on_epoch_end rules in plain Python, one (best, best_step, step, wait, stopped) per update.

    keras: updates before start_from_epoch are skipped; wait += 1; an improvement on the best
    (``current - min_delta < best`` for "min", with keras's sign convention) sets the best, and
    resets wait only if it also improves on the baseline. With ``keras=True`` this also keeps
    keras's two quirks that jaxreg documents as differences: the stop test is skipped on an
    update that improved on the best, and there is no stop on epoch 0.
    """
    less = mode == "min"
    delta = -abs(min_delta) if less else abs(min_delta)

    def is_improvement(value, reference):  # keras: monitor_op(value - min_delta, reference)
        return (value - delta < reference) if less else (value - delta > reference)

    best, best_step, step, wait, stopped = (math.inf if less else -math.inf), -1, 0, 0, False
    out = []
    for epoch, current in enumerate(metrics):
        if not stopped:
            if epoch >= start_from:
                wait += 1
                # jaxreg's documented difference: a non-finite metric never improves (keras takes -inf)
                improved = is_improvement(current, best) and (keras or math.isfinite(current))
                if improved:
                    best, best_step = current, epoch
                    if baseline is None or is_improvement(current, baseline):
                        wait = 0
                if not (keras and improved) and wait >= patience and (epoch > 0 or not keras):
                    stopped = True
            step += 1
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
    # infinities never improve: +inf in "min", and -inf (a diverged loss) neither
    ([math.inf, 2.0, -math.inf, 0.0], 2, 0.0, "min"),
    ([1.0, math.inf, 2.0, -math.inf], 3, 0.0, "max"),
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
    # vmap maps every leaf: baseline and start_from get the member axis too (tree.map unflattens)
    stoppers = jax.tree.map(lambda a: jnp.broadcast_to(a, (4,)), jr.EarlyStopping(patience, min_delta=min_delta))
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
    run(
        jax.tree.map(lambda a: jnp.broadcast_to(a, (4,)), jr.EarlyStopping(patience + 1, min_delta=min_delta)),
        jnp.asarray(metrics),
    )
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


BAD = [
    (
        lambda: jr.EarlyStopping(0),
        r"EarlyStopping: patience must be an integer in \[1, 2147483647\], got patience = 0\.",
    ),
    (lambda: jr.EarlyStopping(1.5), r"got patience = 1\.5"),
    (lambda: jr.EarlyStopping(np.array([2, 0])), r"got patience = \[2 0\]"),
    (lambda: jr.EarlyStopping(True), r"got patience = True"),
    (lambda: jr.EarlyStopping(3, mode="avg"), r"mode must be \"min\" or \"max\", got mode = 'avg'\."),
    (lambda: jr.EarlyStopping(3, min_delta=-0.1), r"min_delta must be finite and >= 0, got min_delta = -0\.1"),
    (
        lambda: jr.EarlyStopping(3, baseline=nan),
        r"EarlyStopping: baseline must be a number or None, got baseline = nan",
    ),
    (
        lambda: jr.EarlyStopping(3, start_from=-1),
        r"start_from must be an integer in \[0, 2147483647\], got start_from = -1\.",
    ),
    (
        lambda: jr.EarlyStopping(3, start_from=2.5),
        r"start_from must be an integer in \[0, 2147483647\], got start_from = 2\.5",
    ),
    (
        lambda: jr.retrain_budget(10, num_train=100, num_val=10, batch_size=10, policy="steps"),
        r"policy must be \"updates\" or \"epochs\", got policy = 'steps'",
    ),
    (
        lambda: jr.retrain_budget(10, num_train=5, num_val=10, batch_size=10),
        r"^retrain_budget: batch_size must be at most the number of training examples \(num_train = 5\), "
        r"got batch_size = 10\.",
    ),
    (
        lambda: jr.retrain_budget(-3, num_train=50, num_val=30, batch_size=8),
        r"^retrain_budget: num_updates must be an integer in \[0, 2147483647\], got num_updates = -3\.",
    ),
    # counts kept in int32 leaves: too large is refused by name, not an OverflowError
    (
        lambda: jr.EarlyStopping(2**40),
        r"patience must be an integer in \[1, 2147483647\], got patience = 1099511627776",
    ),
    (
        lambda: jr.ReduceOnPlateau(0.5, 2, cooldown=2**40),
        r"cooldown must be an integer in \[0, 2147483647\], got cooldown = 1099511627776",
    ),
    (
        lambda: jr.retrain_budget(2**33, num_train=50, num_val=30, batch_size=8),
        r"num_updates must be an integer in \[0, 2147483647\], got num_updates = 8589934592",
    ),
    (
        lambda: jr.retrain_budget(2**31 - 1, num_train=50, num_val=30, batch_size=8, policy="epochs"),
        r"retrain_budget: the epochs policy needs \d+ updates for num_updates = 2147483647, more than an int32",
    ),
    (
        lambda: jr.retrain_budget(np.array([4, 2.7]), num_train=50, num_val=30, batch_size=8),
        r"^retrain_budget: num_updates must be an integer in \[0, 2147483647\], got num_updates = \[4\. +2\.7\]",
    ),
]


@pytest.mark.parametrize(("make", "match"), BAD)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("build", "bad", "good", "match"),
    [
        (
            lambda p: jr.EarlyStopping(p).patience,
            0,
            3,
            r"EarlyStopping: patience must be an integer in \[1, 2147483647\], got patience = 0 \(traced\)",
        ),
        (
            lambda p: jr.EarlyStopping(3, start_from=p).start_from,
            2.5,
            2.0,
            r"EarlyStopping: start_from must be an integer in \[0, 2147483647\], got start_from = 2\.5 \(traced\)",
        ),
        (
            lambda f: jr.ReduceOnPlateau(f, 2).factor,
            1.5,
            0.5,
            r"ReduceOnPlateau: factor must be in \(0, 1\), got factor = 1\.5 \(traced\)",
        ),
    ],
)
def test_traced_stopping_arguments_are_checked_under_traced_checks(build, bad, good, match):
    with jr.traced_checks():
        err, _ = checkify.checkify(jax.jit(build))(bad)
        ok, _ = checkify.checkify(jax.jit(build))(good)
    assert err.get() is not None and re.match(match, err.get()), err.get()
    assert ok.get() is None


def test_retrain_budget_at_imagenet_sizes_is_exact():
    # u * floor((nt + nv)/B) exceeds int32 (2.6e9 here): the ceiling in exact integers
    u = np.array([0, 1, 123_457, 500_000, 1_000_000])
    nt, nv, bs = 1_281_167, 50_000, 256
    expected = [-(-int(x) * ((nt + nv) // bs) // (nt // bs)) for x in u]
    assert expected[3] == 519_485
    for f in (
        jr.retrain_budget,
        jax.jit(jr.retrain_budget, static_argnames=("num_train", "num_val", "batch_size", "policy")),
    ):
        got = f(jnp.asarray(u, jnp.int32), num_train=nt, num_val=nv, batch_size=bs, policy="epochs")
        np.testing.assert_array_equal(np.asarray(got), expected)
        assert got.dtype == np.int32


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


# ---- baseline and start_from (keras's semantics) ------------------------------------------------


def run_options(metrics, patience, min_delta, mode, baseline, start_from):
    stopper = jr.EarlyStopping(patience, min_delta=min_delta, mode=mode, baseline=baseline, start_from=start_from)
    return run_scan(stopper, jnp.asarray(metrics, jnp.float32))


@settings(max_examples=40, deadline=None)
@given(
    metrics=st.lists(
        st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, nan, math.inf, -math.inf]), min_size=12, max_size=12
    ),
    patience=st.integers(1, 4),
    min_delta=st.sampled_from([0.0, 0.25]),
    mode=st.sampled_from(["min", "max"]),
    baseline=st.sampled_from([None, 0.25, 0.75, 1.0]),
    start_from=st.integers(0, 5),
)
def test_baseline_and_start_from_match_keras_rules(metrics, patience, min_delta, mode, baseline, start_from):
    """Random dyadic sequences with NaNs and infinities (every value and difference exact in float32)."""
    state, records = run_options(metrics, patience, min_delta, mode, baseline, start_from)
    ref = keras_reference(metrics, patience, min_delta, mode, baseline, start_from)
    best, best_step, step, wait, stopped = (np.asarray(r) for r in records)
    np.testing.assert_array_equal(best, np.float32([r[0] for r in ref]))
    np.testing.assert_array_equal(best_step, [r[1] for r in ref])
    np.testing.assert_array_equal(step, [r[2] for r in ref])
    np.testing.assert_array_equal(wait, [r[3] for r in ref])
    np.testing.assert_array_equal(stopped, [r[4] for r in ref])
    chex.assert_trees_all_equal(state.best_params, params_at(ref[-1][1]))


@settings(max_examples=25, deadline=None)
@given(
    metrics=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, nan]), min_size=10, max_size=10),
    patience=st.integers(1, 3),
    start_from=st.integers(0, 6),
    baseline=st.sampled_from([None, 0.5]),
)
def test_start_from_equals_a_stopper_fed_only_the_later_values(metrics, patience, start_from, baseline):
    state, _ = run_options(metrics, patience, 0.0, "min", baseline, start_from)
    later = jr.EarlyStopping(patience, baseline=baseline)
    ref = later.init(params_at(-1))
    for t in range(start_from, len(metrics)):
        ref = later.update(ref, metrics[t], params_at(t))
    for name in ("best_metric", "wait", "stopped"):
        np.testing.assert_array_equal(getattr(state, name), getattr(ref, name), err_msg=name)
    chex.assert_trees_all_equal(state.best_params, ref.best_params)
    # step and best_step index all updates: shifted by start_from
    assert int(state.best_step) == (int(ref.best_step) + start_from if int(ref.best_step) >= 0 else -1)
    assert int(state.step) == int(ref.step) + start_from


def test_documented_differences_from_keras():
    # improving on the best without beating the baseline: keras skips the stop test on such
    # updates and never stops; jaxreg stops after `patience` of them
    slow = [3.0, 2.0, 1.5, 1.25, 1.125, 1.0625]
    assert not keras_reference(slow, 2, baseline=0.5, keras=True)[-1][4]
    _, records = run_options(slow, 2, 0.0, "min", 0.5, 0)
    assert np.asarray(records[4]).tolist() == [False, True, True, True, True, True]
    # keras never stops on epoch 0; a NaN first metric with patience 1 stops here
    assert not keras_reference([nan, 1.0], 1, keras=True)[0][4]
    _, records = run_options([nan, 1.0], 1, 0.0, "min", None, 0)
    assert np.asarray(records[4]).tolist() == [True, True]
    # keras keeps a -inf loss as the best (a diverged run's snapshot); here it never improves
    assert keras_reference([1.0, -math.inf], 5, keras=True)[-1][:2] == (-math.inf, 1)
    state, _ = run_options([1.0, -math.inf], 5, 0.0, "min", None, 0)
    assert float(state.best_metric) == 1.0 and int(state.best_step) == 0


def test_unflatten_never_runs_the_checks():
    """jax rebuilds a stopper from placeholders (vmap's in_axes), zeros or tracers: no check fires."""
    stopper = jr.EarlyStopping(3, min_delta=0.5, baseline=1.0, start_from=2, mode="max")
    leaves, treedef = jax.tree.flatten(stopper)
    assert len(leaves) == 4  # patience, min_delta, baseline, start_from; mode is static
    placeholder = jax.tree.unflatten(treedef, [object()] * 4)
    assert isinstance(placeholder, jr.EarlyStopping)
    zeros = jax.tree.map(jnp.zeros_like, stopper)  # patience 0 would fail the public constructor
    assert int(zeros.patience) == 0 and zeros.mode == "max"
    axes = jax.vmap(lambda s: s.patience, in_axes=(jax.tree.map(lambda _: 0, stopper),))
    np.testing.assert_array_equal(axes(jax.tree.map(lambda a: jnp.stack([a, a]), stopper)), [3, 3])
    assert isinstance(stopper, jr.EarlyStopping) and stopper == jax.tree.unflatten(treedef, leaves)
    assert "EarlyStopping(patience=" in repr(stopper)


def test_new_values_do_not_recompile():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(stopper, metrics):
        return run_scan_impl(stopper, metrics)[0].stopped

    metrics = jnp.array([1.0, 2.0, 3.0, 0.5, 0.6, 0.7])
    outs = [
        bool(run(jr.EarlyStopping(p, min_delta=d, baseline=b, start_from=s), metrics))
        for p, d, b, s in [(1, 0.0, None, 0), (2, 0.1, 0.4, 3), (3, 0.0, 2.0, 1)]
    ]
    assert outs == [True, True, False]


def test_metric_dtype_is_kept():
    """No forced float32: narrower metrics compare exactly; with x64 a float64 metric is not rounded."""
    stopper = jr.EarlyStopping(2, mode="max")
    for dtype in (jnp.bfloat16, jnp.float16, jnp.int32):
        state = stopper.init(params_at(-1))
        for t, m in enumerate([1, 3, 2]):
            state = stopper.update(state, jnp.asarray(m, dtype), params_at(t))
        assert state.best_metric.dtype == jnp.float32 and float(state.best_metric) == 3.0, dtype
    with jax.enable_x64(True):
        state = stopper.init(0.0)
        assert state.best_metric.dtype == jnp.float64
        state = stopper.update(state, jnp.asarray(1.0, jnp.float64), 1.0)
        state = stopper.update(state, jnp.asarray(1.0 + 1e-12, jnp.float64), 2.0)  # 1 in float32
        assert int(state.best_step) == 1 and float(state.best_metric) == 1.0 + 1e-12
    state = stopper.init(0.0, dtype=jnp.bfloat16)
    state = stopper.update(state, jnp.asarray(0.5, jnp.bfloat16), 1.0)
    assert state.best_metric.dtype == jnp.bfloat16


# ---- ReduceOnPlateau ------------------------------------------------------------------------------


def keras_plateau(metrics, factor, patience, min_delta=0.0, cooldown=0, min_scale=0.0, mode="min"):
    """keras's ReduceLROnPlateau.on_epoch_end rules in plain Python, with lr = scale (starting at 1).

    The scale is kept in float32 (np.float32 arithmetic, as jaxreg stores it), so values compare
    exactly; keras's rules: cooldown first (counter -1, wait 0), then improvement, else (outside
    cooldown) wait += 1 and, once wait >= patience and lr > min_lr, lr = max(lr * factor, min_lr).
    """
    less = mode == "min"
    lr, best, wait, cd = np.float32(1.0), (math.inf if less else -math.inf), 0, 0
    out = []
    for current in metrics:
        if cd > 0:
            cd -= 1
            wait = 0
        # jaxreg's documented difference: a non-finite metric never improves (keras takes -inf)
        if math.isfinite(current) and ((current < best - min_delta) if less else (current > best + min_delta)):
            best, wait = current, 0
        elif not cd > 0:
            wait += 1
            if wait >= patience and lr > np.float32(min_scale):
                lr = max(np.float32(lr * np.float32(factor)), np.float32(min_scale))
                cd, wait = cooldown, 0
        out.append((lr, best, wait, cd))
    return out


def run_plateau_impl(plateau, metrics):
    def body(state, m):
        state = plateau.update(state, m)
        return state, (state.scale, state.best, state.wait, state.cooldown_count)

    return jax.lax.scan(body, plateau.init(), metrics)[1]


run_plateau = jax.jit(run_plateau_impl)


def assert_plateau_matches(records, ref):
    scale, best, wait, cd = (np.asarray(r) for r in records)
    np.testing.assert_array_equal(scale, np.float32([r[0] for r in ref]))
    np.testing.assert_array_equal(best, np.float32([r[1] for r in ref]))
    np.testing.assert_array_equal(wait, [r[2] for r in ref])
    np.testing.assert_array_equal(cd, [r[3] for r in ref])


@settings(max_examples=40, deadline=None)
@given(
    metrics=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, -1.0, nan]), min_size=16, max_size=16),
    factor=st.sampled_from([0.5, 0.1, 0.3]),
    patience=st.integers(1, 3),
    min_delta=st.sampled_from([0.0, 0.25]),
    cooldown=st.integers(0, 3),
    min_scale=st.sampled_from([0.0, 0.01, 0.2]),
    mode=st.sampled_from(["min", "max"]),
)
def test_plateau_matches_keras_rules(metrics, factor, patience, min_delta, cooldown, min_scale, mode):
    """Random sequences with NaNs and negative values; factors that are not dyadic included (the
    reference does the same float32 multiplications, so the scales agree exactly)."""
    plateau = jr.ReduceOnPlateau(
        factor, patience, min_delta=min_delta, cooldown=cooldown, min_scale=min_scale, mode=mode
    )
    records = run_plateau(plateau, jnp.asarray(metrics, jnp.float32))
    assert_plateau_matches(records, keras_plateau(metrics, factor, patience, min_delta, cooldown, min_scale, mode))


def test_plateau_vmap_sweep_without_recompiling():
    metrics = jnp.asarray([3.0, 2.0, 2.0, 2.0, nan, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0], jnp.float32)
    factor = np.array([0.5, 0.1, 0.5, 0.25], np.float32)
    patience = np.array([1, 2, 3, 1], np.int32)
    cooldown = np.array([0, 1, 0, 2], np.int32)
    min_scale = np.array([0.0, 0.0, 0.3, 0.01], np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sweep(plateaus, metrics):
        return jax.vmap(run_plateau_impl, in_axes=(0, None))(plateaus, metrics)

    plateaus = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (4,)),
        jr.ReduceOnPlateau(factor, patience, cooldown=cooldown, min_scale=min_scale),
    )
    records = sweep(plateaus, metrics)
    for i in range(4):
        ref = keras_plateau(metrics.tolist(), factor[i], patience[i], 0.0, cooldown[i], min_scale[i])
        assert_plateau_matches([np.asarray(r)[i] for r in records], ref)
    assert len({tuple(np.asarray(records[0])[i]) for i in range(4)}) == 4  # four different schedules
    sweep(jax.tree.map(lambda a: a[::-1], plateaus), metrics)  # new values, same program


def test_plateau_scale_scales_the_updates_like_a_learning_rate():
    """The documented recipe: scale * sgd(lr) updates == sgd(lr * scale) updates."""
    import optax

    grads = {"w": jnp.array([1.0, -2.0])}
    plateau = jr.ReduceOnPlateau(0.5, 1)
    state = plateau.update(plateau.update(plateau.init(), 1.0), 2.0)  # one reduction
    assert float(state.scale) == 0.5
    updates, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(grads))
    scaled = jax.tree.map(lambda u: state.scale.astype(u.dtype) * u, updates)
    expected, _ = optax.sgd(0.1 * 0.5).update(grads, optax.sgd(0.05).init(grads))
    chex.assert_trees_all_close(scaled, expected, rtol=2 * float(jnp.finfo(jnp.float32).eps))


@pytest.mark.parametrize("x64", [False, True])
def test_plateau_scale_as_an_injected_learning_rate_in_a_scan(x64):
    """The documented hyperparams recipe inside lax.scan, under x64 too (the carry keeps the
    hyperparameter's dtype): the same params as sgd with the learning rate times the scale."""
    import optax

    with jax.enable_x64(x64):
        lr = 0.1
        opt = jr.sweepable(optax.sgd)(learning_rate=lr)
        plateau = jr.ReduceOnPlateau(0.5, 1)
        metrics = jnp.array([3.0, 2.0, 2.0, 2.0, 2.0])

        def body(carry, metric):
            p, s, ps = carry
            ps = plateau.update(ps, metric)
            hp = s.hyperparams
            hp["learning_rate"] = (lr * ps.scale).astype(hp["learning_rate"].dtype)
            u, s = opt.update(jnp.ones(2), s, p)
            return (optax.apply_updates(p, u), s, ps), ps.scale

        p0 = jnp.zeros(2)
        (p, _, _), scales = jax.lax.scan(body, (p0, opt.init(p0), plateau.init()), metrics)
        np.testing.assert_array_equal(scales, [1.0, 1.0, 0.5, 0.25, 0.125])
        expected = -lr * float(np.sum(np.asarray(scales, np.float64)))
        tol = 8 * float(jnp.finfo(p.dtype).eps) * abs(expected)
        np.testing.assert_allclose(p, [expected, expected], atol=tol)


PLATEAU_BAD = [
    (lambda: jr.ReduceOnPlateau(1.0, 2), r"ReduceOnPlateau: factor must be in \(0, 1\), got factor = 1\.0\."),
    (lambda: jr.ReduceOnPlateau(0.0, 2), r"got factor = 0\.0\."),
    (
        lambda: jr.ReduceOnPlateau(0.5, 0),
        r"ReduceOnPlateau: patience must be an integer in \[1, 2147483647\], got patience = 0\.",
    ),
    (
        lambda: jr.ReduceOnPlateau(0.5, 2, cooldown=-1),
        r"cooldown must be an integer in \[0, 2147483647\], got cooldown = -1\.",
    ),
    (lambda: jr.ReduceOnPlateau(0.5, 2, min_delta=-1.0), r"min_delta must be finite and >= 0, got min_delta = -1\.0"),
    (lambda: jr.ReduceOnPlateau(0.5, 2, min_scale=-0.1), r"min_scale must be in \[0, 1\], got min_scale = -0\.1"),
    (
        lambda: jr.ReduceOnPlateau(0.5, 2, mode="up"),
        r"ReduceOnPlateau: mode must be \"min\" or \"max\", got mode = 'up'",
    ),
]


@pytest.mark.parametrize(("make", "match"), PLATEAU_BAD)
def test_plateau_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_metric_of_another_shape_is_refused_by_name():
    stopper, plateau = jr.EarlyStopping(2), jr.ReduceOnPlateau(0.5, 2)
    state = stopper.init(jnp.zeros(3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "EarlyStopping.update: metric must be a scalar or one per member, broadcasting to the state's best value of shape (), got metric.shape = (3,)."
        ),
    ):
        stopper.update(state, jnp.ones(3), jnp.zeros(3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "ReduceOnPlateau.update: metric must be a scalar or one per member, broadcasting to the state's best value of shape (), got metric.shape = (2,)."
        ),
    ):
        plateau.update(plateau.init(), jnp.ones(2))
    # A batched state takes one metric per member, or one for all.
    batched = jax.vmap(stopper.init)(jnp.zeros((4, 3)))
    one_each = stopper.update(batched, jnp.arange(4.0), jnp.zeros((4, 3)))
    np.testing.assert_array_equal(one_each.best_metric, np.arange(4.0))
    with pytest.raises(ValueError, match=re.escape("got metric.shape = (3,)")):
        stopper.update(batched, jnp.ones(3), jnp.zeros((4, 3)))
    # A metric that broadcasts without changing the state's shape: one per row of a (2, 4) state.
    grid = jax.vmap(jax.vmap(stopper.init))(jnp.zeros((2, 4, 3)))
    rows = stopper.update(grid, jnp.array([[1.0], [2.0]]), jnp.zeros((2, 4, 3)))
    np.testing.assert_array_equal(rows.best_metric, [[1.0] * 4, [2.0] * 4])


def test_a_metric_that_is_not_a_number_is_refused_by_name():
    stopper, plateau = jr.EarlyStopping(2), jr.ReduceOnPlateau(0.5, 2)
    with pytest.raises(ValueError, match=r"^EarlyStopping.update: metric must be a number .*, got metric = 'loss'\."):
        stopper.update(stopper.init(jnp.zeros(3)), "loss", jnp.zeros(3))
    with pytest.raises(ValueError, match=r"^ReduceOnPlateau.update: metric must be a number .*, got metric = None\."):
        plateau.update(plateau.init(), None)
    # jax's OverflowError ("An overflow was encountered while parsing an argument")
    with pytest.raises(ValueError, match=r"^EarlyStopping.update: metric must .*, got metric = an int of 1329 bits\."):
        stopper.update(stopper.init(jnp.zeros(3)), 10**400, jnp.zeros(3))


def test_init_holds_its_own_copy_so_a_step_may_donate_params_and_state():
    # best_params was the caller's own arrays: a jitted step donating both the params and the
    # stopper state donated one buffer twice (an INVALID_ARGUMENT error from XLA).
    stopper = jr.EarlyStopping(3)
    params = {"w": jnp.arange(3.0)}
    state = stopper.init(params)
    assert state.best_params["w"] is not params["w"]
    np.testing.assert_array_equal(state.best_params["w"], params["w"])

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        params = jax.tree.map(lambda w: w * 0.5, params)
        return params, stopper.update(state, jnp.sum(params["w"]), params)

    params, state = step(params, state)
    assert float(state.best_metric) == 1.5 and int(state.best_step) == 0
    np.testing.assert_array_equal(state.best_params["w"], [0.0, 0.5, 1.0])


def test_help_and_inspect_show_the_documented_signatures():
    # The metaclass's __call__(*args, **kwargs) hid them from inspect, help() and IDEs.
    import inspect

    sig = inspect.signature(jr.EarlyStopping)
    assert list(sig.parameters) == ["patience", "min_delta", "mode", "baseline", "start_from"]
    assert sig.parameters["patience"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(sig.parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in list(sig.parameters)[1:])
    defaults = {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"min_delta": 0.0, "mode": "min", "baseline": None, "start_from": 0}
    sig = inspect.signature(jr.ReduceOnPlateau)
    assert list(sig.parameters) == ["factor", "patience", "min_delta", "cooldown", "min_scale", "mode"]
    # bound as documented: a positional min_delta is refused
    with pytest.raises(TypeError):
        sig.bind(0.5, 3, 0.1)


def test_hyperparameters_that_do_not_fit_the_state_or_numbers_that_are_not_are_refused():
    # An array patience against a one-member state gave the state a member axis (an error at the
    # next update, naming freeze_stopped); a bool metric counted as 1.0; "yes" and 0.5 froze.
    params = jnp.ones(3)
    stopper = jr.EarlyStopping(patience=jnp.array([1, 3]))
    with pytest.raises(ValueError, match=r"^EarlyStopping.update: patience must be a scalar or one per member"):
        stopper.update(stopper.init(params), 1.0, params)
    plateau = jr.ReduceOnPlateau(0.5, patience=jnp.array([1, 2]))
    with pytest.raises(ValueError, match=r"^ReduceOnPlateau.update: patience must be a scalar or one per member"):
        plateau.update(plateau.init(), 1.0)
    # the same array patience fits a state batched on a member axis: member 0 stops after one
    # update without improvement, member 1 waits for three
    batched = jax.vmap(lambda p: stopper.init(p))(jnp.ones((2, 3)))
    for metric in (1.0, 2.0):
        batched = stopper.update(batched, jnp.full(2, metric), jnp.ones((2, 3)))
    assert batched.stopped.tolist() == [True, False]
    stopper = jr.EarlyStopping(2)
    with pytest.raises(ValueError, match=r"^EarlyStopping.update: metric must be a number .* got a bool metric"):
        stopper.update(stopper.init(params), True, params)
    for bad in ("yes", jnp.array([0.5, 0.0])):
        with pytest.raises(ValueError, match=r"^freeze_stopped: stopped must be a bool or an array of bools"):
            jr.freeze_stopped(bad, jnp.ones(2), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"^ReduceOnPlateau: min_scale must be in \[0, 1\], got min_scale = 2\.0\."):
        jr.ReduceOnPlateau(0.5, 1, min_scale=2.0)
    with pytest.raises(ValueError, match=r"^retrain_budget: batch_size must be at most the number of training"):
        jr.retrain_budget(10, num_train=5, num_val=1, batch_size=10)
