"""Eager calls of the looped programs: compiled once, reused, never stale (jaxreg/_eager.py)."""

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr
from jaxreg import _chunking, _eager

EPS32 = float(jnp.finfo(jnp.float32).eps)


@contextlib.contextmanager
def count_compiles():
    """The number of XLA backend compiles in the block (jax's own monitoring event)."""
    seen = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


W = {"w1": jnp.asarray(np.random.default_rng(0).normal(size=(6, 16)), jnp.float32) * 0.3}
W["w2"] = jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32) * 0.3


def mlp(p, x):
    return jax.nn.relu(x @ p["w1"]) @ p["w2"]  # relu is a custom_jvp: its rules are new on every trace


def _calls():
    """(name, call(x, key)) of every public entry point that builds a looped program per call."""
    stacked = jr.ensemble.replicate(W, 6)
    stacked = jax.tree.map(lambda a: a * jnp.arange(1, 7, dtype=a.dtype).reshape((6,) + (1,) * (a.ndim - 1)), stacked)
    vparams = jr.variational.init(W, 0.05)

    def dropped(p, x, k):
        return mlp(p, jr.dropout(k, x, 0.3))

    return [
        ("mc_dropout", lambda x, k: jr.mc_dropout(dropped, W, x, k, 12, chunk_size=4)),
        ("ensemble.map", lambda x, k: jr.ensemble.map(mlp, in_axes=(0, None), chunk_size=2)(stacked, x)),
        ("ensemble.predict", lambda x, k: jr.ensemble.predict(mlp, stacked, x, chunk_size=4)),
        ("variational.predict", lambda x, k: jr.variational.predict(mlp, vparams, x, k, 8, chunk_size=2)),
        (
            "es.gradient",
            lambda x, k: jr.es.gradient(
                lambda p: jnp.mean(mlp(p, x) ** 2), W, k, sigma=0.1, population=8, chunk_size=2
            ),
        ),
    ]


@pytest.mark.parametrize(("name", "call"), _calls(), ids=[n for n, _ in _calls()])
def test_a_second_eager_call_on_new_data_compiles_nothing_and_matches_jit(name, call):
    rng = np.random.default_rng(2)
    x1, x2 = (jnp.asarray(rng.normal(size=(5, 6)), jnp.float32) for _ in range(2))
    call(x1, jax.random.key(0))  # compiles
    with count_compiles() as compiles:
        got = call(x2, jax.random.key(1))
    # Op by op, every call traced and compiled its loop over chunks again.
    assert compiles == []
    want = jax.jit(call)(x2, jax.random.key(1))
    # The same jaxpr compiled by XLA either way; fusion may differ by rounding: a few eps of the
    # largest magnitude (sums of ~16 products of O(1) terms).
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    chex.assert_trees_all_close(got, want, rtol=0, atol=64 * EPS32 * scale)


def test_closed_over_arrays_are_arguments_and_python_numbers_are_part_of_the_program():
    table = {"shift": jnp.zeros((5, 3))}
    factor = [2.0]

    def f(p, x):
        return mlp(p, x) * factor[0] + table["shift"]

    x = jnp.ones((5, 6))
    stacked = jr.ensemble.replicate(W, 4)
    run = lambda: jr.ensemble.map(f, in_axes=(0, None), chunk_size=2)(stacked, x)  # noqa: E731
    base = mlp(W, x)
    chex.assert_trees_all_close(run(), jnp.broadcast_to(base * 2.0, (4, 5, 3)), rtol=4 * EPS32)
    table["shift"] = shift = jnp.arange(15.0).reshape(5, 3)  # a new array closed over: the compiled program is reused
    with count_compiles() as compiles:
        out = run()
    assert compiles == []
    chex.assert_trees_all_close(out, jnp.broadcast_to(base * 2.0 + shift, (4, 5, 3)), rtol=4 * EPS32)
    factor[0] = 3.0  # a Python number is a literal of the program: a new one is compiled, not reused
    chex.assert_trees_all_close(run(), jnp.broadcast_to(base * 3.0 + shift, (4, 5, 3)), rtol=4 * EPS32, atol=8 * EPS32)


def test_programs_that_differ_only_in_a_callback_are_not_conflated_nor_kept():
    x = jnp.ones((2, 3))

    def with_callback(host_fn):
        def f(p):
            return jax.pure_callback(host_fn, jax.ShapeDtypeStruct(p.shape, p.dtype), p)

        return jr.ensemble.map(f, chunk_size=1)(x)

    _eager.clear_cache()
    np.testing.assert_array_equal(np.asarray(with_callback(lambda a: np.asarray(a) + 1)), 2.0)
    np.testing.assert_array_equal(np.asarray(with_callback(lambda a: np.asarray(a) * 5)), 5.0)
    # A callback's function is no value to compare: such programs run as they are, and the cache
    # keeps no function (nor what it closes over) alive.
    assert len(_eager._COMPILED) == 0


def test_an_inner_jit_over_a_numpy_array_changed_in_place_is_not_served_stale():
    table = np.ones(3, np.float32)

    def f(p):
        return jax.jit(lambda q: q * table)(p)  # the inner program's constant: that array

    run = lambda: jr.ensemble.map(f, chunk_size=1)(jnp.arange(1.0, 3.0))  # noqa: E731
    np.testing.assert_array_equal(np.asarray(run()), [[1.0] * 3, [2.0] * 3])
    table[:] = 5.0
    np.testing.assert_array_equal(np.asarray(run()), [[5.0] * 3, [10.0] * 3])


def test_a_jax_setting_that_changes_the_numbers_but_not_the_jaxpr_is_part_of_the_key():
    # jax_threefry_partitionable changes random_bits' stream, not the jaxpr's text.
    def draws():
        fn = jr.ensemble.map(lambda p, k: jax.random.normal(k, (4,)) * p, in_axes=(0, None), chunk_size=1)
        return fn(jnp.arange(1.0, 3.0), jax.random.key(1))

    for setting in (True, False, True):
        with jax.threefry_partitionable(setting):
            want = jnp.stack([jax.random.normal(jax.random.key(1), (4,)) * m for m in (1.0, 2.0)])
            chex.assert_trees_all_close(draws(), want, rtol=4 * EPS32)


def test_traced_and_disabled_jit_calls_run_the_program_as_it_is(monkeypatch):
    x = jnp.ones((5, 6))
    stacked = jr.ensemble.replicate(W, 4)
    fn = jr.ensemble.map(mlp, in_axes=(0, None), chunk_size=2)
    _eager.clear_cache()
    eager = fn(stacked, x)
    assert len(_eager._COMPILED) == 1
    _eager.clear_cache()
    jitted = jax.jit(fn)(stacked, x)
    grads = jax.grad(lambda s: jnp.sum(fn(s, x)))(stacked)
    with jax.disable_jit():
        plain = fn(stacked, x)
    monkeypatch.setenv("JAXREG_EAGER_CACHE", "off")
    switched_off = fn(stacked, x)
    assert len(_eager._COMPILED) == 0  # none of these went through the cache
    tol = 64 * EPS32 * float(jnp.max(jnp.abs(eager)))
    chex.assert_trees_all_close(jitted, eager, rtol=0, atol=tol)
    chex.assert_trees_all_close(plain, eager, rtol=0, atol=tol)
    chex.assert_trees_all_close(switched_off, eager, rtol=0, atol=tol)
    # d/dw2 sum(relu(x w1) w2) over members = relu(x w1) summed over the batch, per output
    want = jnp.broadcast_to(jnp.sum(jax.nn.relu(x @ W["w1"]), axis=0)[:, None], (4, 16, 3))
    chex.assert_trees_all_close(grads["w2"], want, rtol=16 * EPS32)


def test_a_function_that_reads_a_concrete_argument_in_python_still_runs():
    # Lifted to a parameter for the trace, a shared jax.Array has no sharding to read; op by op
    # (a concrete value closed over by the loop) it had: such a program runs as it is.
    x = jnp.asarray([1.0, -2.0, 3.0])

    def f(p, x_):
        return p * x_ * len(x_.sharding.device_set)

    out = jr.ensemble.map(f, in_axes=(0, None), chunk_size=1)(jnp.arange(3.0), x)
    np.testing.assert_array_equal(np.asarray(out), np.arange(3.0)[:, None] * np.asarray(x))


def test_one_vmap_of_all_items_runs_op_by_op_and_a_new_number_compiles_nothing():
    # No loop: jax runs its primitives from its own cache; traced and keyed, every new Python
    # number would have been a new program to compile.
    _eager.clear_cache()
    x = jnp.ones(3)
    jr.ensemble.map(lambda p: p * 2.0, chunk_size=3)(x)
    with count_compiles() as compiles:
        out = jr.ensemble.map(lambda p: p * 3.0, chunk_size=3)(x)
    assert compiles == [] and len(_eager._COMPILED) == 0
    np.testing.assert_array_equal(np.asarray(out), 3.0)


def test_the_cache_keeps_at_most_max_entries(monkeypatch):
    monkeypatch.setattr(_eager, "MAX_ENTRIES", 2)
    _eager.clear_cache()
    for k in range(4):  # four Python numbers, four programs
        jr.ensemble.map(lambda p, k=k: p * (k + 1.0), chunk_size=1)(jnp.ones(2))
    assert len(_eager._COMPILED) == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda k: jr.dropout(k, jnp.ones((8, 300)), 0.5, precision=8),  # its words written once by a loop
        lambda k: jr.variational.sample(k, jr.variational.init(W, 0.1)),  # noise written once by a loop
        lambda k: jr.spectral_penalty(0.1)({"w": W["w1"] * jax.random.uniform(k)}),  # power iteration
    ],
    ids=["dropout-8-bits", "variational.sample", "spectral_penalty"],
)
def test_functions_with_an_inner_loop_compile_nothing_on_a_second_eager_call(call):
    # Their loops are jitted functions of their own; built anew on each call, they were compiled
    # again on every eager call.
    first = call(jax.random.key(0))
    with count_compiles() as compiles:
        second = call(jax.random.key(1))
    assert compiles == []
    assert jax.tree.structure(first) == jax.tree.structure(second)
    # Eager and jitted programs may round differently (a fused multiply-add in mu + std * eps):
    # a few eps of the largest magnitude.
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(second))
    chex.assert_trees_all_close(second, jax.jit(call)(jax.random.key(1)), rtol=0, atol=8 * EPS32 * scale)


def test_ensemble_init_compiles_once_per_program():
    # It built a new jax.jit on every call, compiled again each time.
    def init(k):
        return {"w": jax.random.normal(k, (64, 10)), "b": jnp.zeros(10)}

    first = jr.ensemble.init(init, jax.random.key(0), 8)
    with count_compiles() as compiles:
        second = jr.ensemble.init(init, jax.random.key(1), 8)
    assert compiles == []
    keys = jax.random.split(jax.random.key(1), 8)
    for i in range(8):  # each member from its own key, as init_fn alone gives it
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], second), init(keys[i]), rtol=0, atol=0)
    assert not np.allclose(np.asarray(first["w"]), np.asarray(second["w"]))


def test_a_raw_uint32_key_wrapped_inside_the_program_is_cached():
    # random_wrap's parameter (the PRNG impl) is a tuple of functions: compared by value.
    def apply(p, x, k):
        key = jax.random.wrap_key_data(jax.random.key_data(k))  # as flax does with a raw key
        return mlp(p, jr.dropout(key, x, 0.3))

    x = jnp.ones((5, 6))
    jr.mc_dropout(apply, W, x, jax.random.key(0), 8, chunk_size=2)
    with count_compiles() as compiles:
        got = jr.mc_dropout(apply, W, x, jax.random.key(1), 8, chunk_size=2)
    assert compiles == []
    want = jax.jit(lambda k: jr.mc_dropout(apply, W, x, k, 8, chunk_size=2))(jax.random.key(1))
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    chex.assert_trees_all_close(got, want, rtol=0, atol=64 * EPS32 * scale)


def test_a_measured_chunking_is_compiled_once_for_the_calls_after_the_measurement(monkeypatch):
    # The tuner's candidates go through the cache: the next eager call finds the winner compiled
    # (it compiled it again, and, traced under compile-time evaluation, missed the cache).
    monkeypatch.setenv("JAXREG_AUTOTUNE", "1")
    monkeypatch.setenv("JAXREG_AUTOTUNE_BUDGET", "0.2")
    _chunking.clear_cache()
    stacked = jr.ensemble.replicate(W, 6)
    x = jnp.ones((5, 6))
    first = jr.ensemble.predict(mlp, stacked, x)  # measures
    x2 = x * 2.0
    with count_compiles() as compiles:
        second = jr.ensemble.predict(mlp, stacked, x2)
    assert compiles == []
    want = jax.vmap(lambda p: mlp(p, x * 2.0))(stacked)  # identical members: variance 0
    scale = float(jnp.max(jnp.abs(want)))
    chex.assert_trees_all_close(second.mean, want[0], rtol=0, atol=16 * EPS32 * scale)
    assert not np.allclose(np.asarray(first.mean), np.asarray(second.mean))


def test_programs_that_differ_only_in_wiring_or_a_literal_bit_are_not_conflated():
    p, x = jnp.arange(1.0, 4.0), jnp.full((3,), 10.0)
    fn = lambda f: jr.ensemble.map(f, in_axes=(0, None), chunk_size=1)(p, x)  # noqa: E731
    members = np.arange(1.0, 4.0)[:, None] * np.ones(3)
    np.testing.assert_array_equal(np.asarray(fn(lambda a, b: a - b)), members - 10.0)
    np.testing.assert_array_equal(np.asarray(fn(lambda a, b: b - a)), 10.0 - members)
    # 0.0 and -0.0 compare equal as numbers; their bytes differ, and so do the products' signs.
    assert not np.signbit(np.asarray(fn(lambda a, b: a * 0.0))).any()
    assert np.signbit(np.asarray(fn(lambda a, b: a * -0.0))).all()


def test_a_setting_entered_inside_the_program_and_a_float_parameter_bit_are_part_of_the_key():
    # jax keeps a `with jax.threefry_partitionable(...)` on each equation and eval_jaxpr applies it.
    def draws(flag):
        def f(p, k):
            with jax.threefry_partitionable(flag):
                return jax.random.normal(k, (4,)) * p

        return jr.ensemble.map(f, in_axes=(0, None), chunk_size=1)(jnp.arange(1.0, 3.0), jax.random.key(1))

    for flag in (False, True):
        with jax.threefry_partitionable(flag):
            want = jnp.stack([jax.random.normal(jax.random.key(1), (4,)) * m for m in (1.0, 2.0)])
        chex.assert_trees_all_close(draws(flag), want, rtol=4 * EPS32)

    # A parameter (not a literal) of 0.0 and of -0.0: equal as numbers, not as programs.
    def gather_fill(fill):
        return jr.ensemble.map(lambda p: 1.0 / (p * jnp.ones(3)).at[9].get(mode="fill", fill_value=fill), chunk_size=1)(
            jnp.arange(1.0, 3.0)
        )

    assert np.all(np.asarray(gather_fill(0.0)) == np.inf)
    jitted = jax.jit(lambda p: 1.0 / (p * jnp.ones(3)).at[9].get(mode="fill", fill_value=-0.0))
    assert np.all(np.asarray(jitted(jnp.float32(1.0))) == -np.inf)  # what the program computes
    assert np.all(np.asarray(gather_fill(-0.0)) == -np.inf)
