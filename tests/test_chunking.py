"""Tests of the chunk-size tuner (jaxreg._chunking): fake clocks, never real speed."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr
from jaxreg import _chunking, _machine

EPS32 = float(np.finfo(np.float32).eps)


class FakeClock:
    """A clock that only moves when a fake compile or call says how long it took."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self):
        return self.now

    def prepare(self, compile_s, call_s):
        def prepare(c):
            self.now += compile_s.get(c, 0.0)

            def run():
                self.calls.append(c)
                self.now += call_s[c]

            return run

        return prepare


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.delenv("JAXREG_AUTOTUNE", raising=False)
    monkeypatch.delenv("JAXREG_AUTOTUNE_CACHE", raising=False)
    _chunking.clear_cache()
    yield
    _chunking.clear_cache()


def test_candidates_always_hold_one_vmap_and_a_loop():
    assert _chunking.candidates(32, 4) == [32, 1, 4, 2, 8, 16]  # 2, 4, 8, 16 thinned to 3 in log scale
    assert _chunking.candidates(1, 1) == [1]
    c = _chunking.candidates(128, 8)
    assert c[:3] == [128, 1, 8] and all(1 < x < 128 for x in c[3:]) and len(c) <= 6


def test_pick_fastest_picks_the_fastest_of_fake_timings():
    clock = FakeClock()
    call_s = {32: 0.030, 1: 0.020, 4: 0.010, 2: 0.015, 16: 0.025}
    chosen, samples = _chunking.pick_fastest(
        [32, 1, 4, 2, 16], clock.prepare({}, call_s), budget_s=1.0, clock=clock, max_rounds=3
    )
    assert chosen == 4
    assert all(len(v) == 3 for v in samples.values()), samples
    # Interleaved in alternating order: A B C D E, E D C B A, ...
    timed = clock.calls[5:]
    assert timed[:5] == [32, 1, 4, 2, 16] and timed[5:10] == [16, 2, 4, 1, 32], timed


def test_pick_fastest_stays_within_its_budget_and_drops_candidates_over_it():
    clock = FakeClock()
    compile_s = {64: 2.0, 1: 0.1, 8: 0.1, 2: 0.1}
    call_s = {64: 1.5, 1: 0.05, 8: 0.02, 2: 0.04}  # one call of the plain vmap exceeds the budget
    chosen, samples = _chunking.pick_fastest(
        [64, 1, 8, 2], clock.prepare(compile_s, call_s), budget_s=1.0, clock=clock, max_rounds=50
    )
    # The vmap is dropped; the loop and the static rule's 8 (always prepared) remain; half the
    # budget is spent, so 2 is never compiled; then 1 s of rounds (0.07 s each) times the two left.
    prepared = 2.0 + 1.5 + 0.1 + 0.05 + 0.1 + 0.02
    assert set(samples) == {1, 8} and chosen == 8, (chosen, samples)
    assert len(samples[1]) == len(samples[8]) == 15, samples  # rounds until 1 s of timing: ceil(1 / 0.07)
    assert prepared + 1.0 <= clock.now <= prepared + 1.0 + 0.07 + 1e-9, clock.now
    # With only the first two always prepared, 8 is never compiled and the loop is chosen.
    clock = FakeClock()
    chosen, samples = _chunking.pick_fastest(
        [64, 1, 8, 2], clock.prepare(compile_s, call_s), budget_s=1.0, clock=clock, max_rounds=50, always=2
    )
    assert samples == {1: []} and chosen == 1, (chosen, samples)


def test_pick_fastest_drops_a_candidate_the_device_cannot_hold():
    # On a GPU one vmap of every item can run out of memory where chunks fit: the user's call
    # must not fail in the tuner.
    oom = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB.")
    clock = FakeClock()
    call_s = {64: 0.02, 1: 0.05, 8: 0.01}
    inner = clock.prepare({}, call_s)

    def prepare(c):
        if c == 64:
            raise oom
        return inner(c)

    chosen, samples = _chunking.pick_fastest([64, 1, 8], prepare, budget_s=1.0, clock=clock, max_rounds=3)
    assert chosen == 8 and set(samples) == {1, 8}, (chosen, samples)
    # None fits: the device's own error, not a choice that fails later.
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):
        _chunking.pick_fastest([64, 1], lambda c: (_ for _ in ()).throw(oom), budget_s=1.0, clock=FakeClock())
    # Any other runtime error is the program's, raised as it is.
    other = jax.errors.JaxRuntimeError("INTERNAL: something else")
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        _chunking.pick_fastest([64, 1], lambda c: (_ for _ in ()).throw(other), budget_s=1.0, clock=FakeClock())


def test_the_tuner_key_tells_cpus_apart(monkeypatch):
    # Every CPU device's device_kind is "cpu": an AMD EPYC's measured choice in a shared disk
    # cache must not be read on an Intel Xeon, nor a 2-core machine's on a 64-core one.
    cpu = jax.devices("cpu")[0]
    keys = set()
    for model, flags, cores in (
        ("AMD EPYC 7B13", ["avx", "avx2"], 2),
        ("Intel(R) Xeon(R) Processor", ["avx", "avx2", "avx512f"], 2),
        ("AMD EPYC 7B13", ["avx", "avx2"], 64),
        ("Common KVM processor", ["avx2"], 2),
        ("Common KVM processor", ["avx512f"], 2),
    ):
        monkeypatch.setattr(_machine, "cpu_model", lambda model=model: model)
        monkeypatch.setattr(_machine, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(_machine, "usable_cpus", lambda cores=cores: cores)
        keys.add(_chunking._device_kind(cpu))
    assert len(keys) == 5, keys


def test_pick_fastest_prepares_more_candidates_while_half_the_budget_is_left():
    clock = FakeClock()
    compile_s = {64: 0.3, 1: 0.1, 8: 0.1, 2: 0.1}
    call_s = {64: 0.02, 1: 0.05, 8: 0.01, 2: 0.04}
    chosen, samples = _chunking.pick_fastest(
        [64, 1, 8, 2], clock.prepare(compile_s, call_s), budget_s=1.0, clock=clock, max_rounds=50
    )
    # 64, 1 and 8 are always prepared; then 2 is not (0.58 s spent > half the budget).
    assert set(samples) == {64, 1, 8} and chosen == 8, (chosen, samples)
    # Rounds stop once 1 s of timing is spent: at most one round (0.08 s) past it.
    assert 0.58 + 1.0 <= clock.now <= 0.58 + 1.0 + 0.08 + 1e-9, clock.now


def test_pick_fastest_times_at_least_two_rounds_even_past_the_budget():
    clock = FakeClock()
    call_s = {16: 0.6, 1: 0.9}  # one round (1.5 s) is past the 1 s budget; each call is within it
    chosen, samples = _chunking.pick_fastest([16, 1], clock.prepare({}, call_s), budget_s=1.0, clock=clock)
    assert chosen == 16 and [len(v) for v in samples.values()] == [2, 2], samples


def _resolve(program, args, n=8, static=2, clock=None):
    jaxpr = jax.make_jaxpr(lambda x: x * 2.0)(jnp.zeros(3))
    return _chunking.resolve_chunk(
        None, n, where="test", program=program, args=args, item_jaxpr=jaxpr, static=static, clock=clock or FakeClock()
    )


def test_cache_hit_does_not_measure_again_and_traced_calls_use_it(monkeypatch):
    measured = []

    def fake_pick(cands, prepare, **kw):
        measured.append(list(cands))
        return 4, {}

    monkeypatch.setattr(_chunking, "pick_fastest", fake_pick)
    program = lambda c: lambda x: x * 2.0  # noqa: E731
    x = jnp.zeros((8, 3))
    assert _resolve(program, (x,)) == 4
    assert _resolve(program, (x,)) == 4
    assert len(measured) == 1, measured
    # Inside jit the same program and shapes find the cached choice (the static rule says 2).
    seen = []
    jax.jit(lambda x: seen.append(_resolve(program, (x,))) or x)(x)
    assert seen == [4] and len(measured) == 1
    # Other shapes under jit: measured while tracing, on stand-ins of the arguments.
    seen.clear()
    jax.jit(lambda x: seen.append(_resolve(program, (x,), n=6)) or x)(jnp.zeros((6, 3)))
    assert seen == [4] and len(measured) == 2
    # Under vmap the program that runs is a batched one: nothing is measured, the static rule.
    seen.clear()
    jax.vmap(lambda x: seen.append(_resolve(program, (x,), n=5)) or x)(jnp.zeros((2, 5, 3)))
    assert seen == [2] and len(measured) == 2


def test_under_jit_the_candidates_run_on_stand_ins_and_the_trace_stays_clean(monkeypatch):
    # The candidates get concrete arrays of the traced arguments' shapes and dtypes (keys too),
    # the outer jaxpr holds only the real program; a closure over a value traced by the same jit
    # is measured with a stand-in for that value too, one traced by vmap is not.
    calls = []

    def fake_pick(cands, prepare, **kw):
        for c in cands[:2]:
            prepare(c)()
        return 1, {}

    monkeypatch.setattr(_chunking, "pick_fastest", fake_pick)

    def program(c):
        def run(x, keys):
            calls.append((type(x), x.shape, x.dtype, keys.shape))
            return x * 2.0 + jax.vmap(lambda k: jax.random.uniform(k))(keys)[:, None]

        return run

    item = jax.make_jaxpr(lambda x: x * 2.0)(jnp.zeros(3))

    def outer(x, keys):
        chunk = _chunking.resolve_chunk(
            None, 4, where="stand-ins", program=program, args=(x, keys), item_jaxpr=item, static=4
        )
        assert chunk == 1
        return program(chunk)(x, keys)

    x, keys = jnp.ones((4, 3), jnp.float32), jax.random.split(jax.random.key(0), 4)
    jaxpr = jax.make_jaxpr(outer)(x, keys)
    # Two candidates compiled and run (a leaked tracer would have raised), then the real program.
    assert len(calls) == 3 and all(c[1:] == ((4, 3), jnp.float32, (4,)) for c in calls), calls
    assert str(jaxpr) == str(jax.make_jaxpr(program(1))(x, keys))  # nothing of the measurement staged
    _chunking.clear_cache()
    scales = []

    def scaled(c):
        def run(x, keys):
            scales.append(y_now[0])
            return program(c)(x, keys) * y_now[0]

        return run

    def closes_over(y):
        y_now[:] = [y]
        item = jax.make_jaxpr(lambda x: x * y)(np.zeros(3, np.float32))  # y: a tracer of the outer trace
        return _chunking.resolve_chunk(
            None, 4, where="closure", program=scaled, args=(x, keys), item_jaxpr=item, static=3
        )

    y_now, seen = [None], []
    jaxpr = jax.make_jaxpr(lambda y: seen.append(closes_over(y)) or y)(jnp.float32(2.0))
    assert seen == [1], seen  # measured (the fake picks 1), not the static rule's 3
    # Traced once per candidate (the closed-over value a tracer there, a parameter of the compiled
    # candidate given a stand-in), and nothing of the measurement in the outer trace.
    assert len(scales) == 2 and all(isinstance(s, jax.core.Tracer) for s in scales), scales
    assert len(jaxpr.eqns) == 0, jaxpr
    _chunking.clear_cache()
    seen.clear()
    jax.vmap(lambda y: seen.append(closes_over(y)) or y)(jnp.ones((2,), jnp.float32))
    assert seen == [3], seen  # a closure over a vmap tracer: the static rule


def test_stand_ins_are_concrete_arrays_of_the_traced_shapes_and_dtypes():
    def check(x, i, k):
        with jax.ensure_compile_time_eval():
            sx, si, sk = (_chunking._stand_in(a) for a in (x, i, k))
        assert not isinstance(sx, jax.core.Tracer) and not isinstance(si, jax.core.Tracer)
        assert sx.shape == (4, 3) and sx.dtype == jnp.float16 and np.all(np.asarray(sx) == 0.5)
        assert si.shape == (5,) and si.dtype == jnp.int32 and np.all(np.asarray(si) == 0)
        assert not isinstance(sk, jax.core.Tracer) and sk.shape == (4,)
        assert jax.random.key_impl(sk) == jax.random.key_impl(k)
        return x

    jax.jit(check)(jnp.ones((4, 3), jnp.float16), jnp.ones(5, jnp.int32), jax.random.split(jax.random.key(0), 4))


def test_env_var_turns_measurement_off(monkeypatch):
    monkeypatch.setenv("JAXREG_AUTOTUNE", "0")
    monkeypatch.setattr(_chunking, "pick_fastest", lambda *a, **k: pytest.fail("measured with JAXREG_AUTOTUNE=0"))
    assert _resolve(lambda c: lambda x: x, (jnp.zeros((8, 3)),), static=2) == 2


def test_disk_cache_is_read_back_without_measuring(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXREG_AUTOTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(_chunking, "pick_fastest", lambda cands, prepare, **kw: (8, {}))
    program = lambda c: lambda x: x  # noqa: E731
    assert _resolve(program, (jnp.zeros((8, 3)),)) == 8
    data = json.loads((tmp_path / "chunks.json").read_text())
    assert list(data.values()) == [8]
    _chunking.clear_cache()  # a new process: only the file remembers
    monkeypatch.setattr(_chunking, "pick_fastest", lambda *a, **k: pytest.fail("measured despite the disk cache"))
    assert _resolve(program, (jnp.zeros((8, 3)),)) == 8


def test_real_measurement_compiles_and_times_the_candidates():
    # With the real clock: which candidate wins is the machine's business; that a valid one is
    # chosen, cached, and gives the plain vmap's numbers is ours.
    w = jax.random.normal(jax.random.key(0), (6, 4, 4))
    x = jax.random.normal(jax.random.key(1), (4,))
    f = jr.ensemble.map(lambda w, x: jnp.tanh(w @ x), in_axes=(0, None))
    got = f(w, x)
    assert len(_chunking._CACHE) == 1 and 1 <= next(iter(_chunking._CACHE.values())) <= 6
    # tanh of 4-term dot products (|w @ x| ~ 3): 4 ulp of the sum, any chunking, any SIMD width.
    chex.assert_trees_all_close(got, jax.vmap(lambda w: jnp.tanh(w @ x))(w), rtol=0, atol=8 * 4 * EPS32)


@pytest.mark.parametrize("chosen", [1, 2, pytest.param(3, marks=pytest.mark.slow), 5])
def test_results_do_not_depend_on_the_chunking_chosen(monkeypatch, chosen):
    # Whatever the tuner picks, ensemble.map, mc_dropout, es.gradient and variational.predict give
    # the plain vmap's answer within float32 rounding.
    monkeypatch.setattr(_chunking, "pick_fastest", lambda cands, prepare, **kw: (chosen, {}))
    w = jax.random.normal(jax.random.key(0), (5, 4, 8))
    x = jax.random.normal(jax.random.key(1), (3, 4))

    def apply(w, x, rng):
        return jr.dropout(rng, jnp.tanh(x @ w), 0.5)

    # Outputs: tanh of 4-term dot products, |y| <= 2 after dropout's 2x: 8 ulp of 2.
    tol = 8 * 2 * EPS32
    mapped = jr.ensemble.map(lambda w: jnp.tanh(x @ w))(w)
    chex.assert_trees_all_close(mapped, jax.vmap(lambda w: jnp.tanh(x @ w))(w), rtol=0, atol=tol)

    keys = jax.random.split(jax.random.key(2), 5)
    samples = jax.vmap(lambda k: apply(w[0], x, k))(keys)
    pred = jr.mc_dropout(apply, w[0], x, jax.random.key(2), 5)
    chex.assert_trees_all_close(pred, jr.Prediction.from_samples(samples), rtol=0, atol=4 * tol)
    chex.assert_trees_all_close(jr.mc_dropout_samples(apply, w[0], x, jax.random.key(2), 5), samples, rtol=0, atol=tol)

    loss = lambda p: jnp.sum(jnp.tanh(x @ p) ** 2)  # noqa: E731
    g = jr.es.gradient(loss, w[0], jax.random.key(3), sigma=0.1, population=10)
    g_ref = jr.es.gradient(loss, w[0], jax.random.key(3), sigma=0.1, population=10, chunk_size=10)
    # 5 directions of (f+ - f-) e / (n s): losses ~24 with ~(4 + 24) eps each, |e| <= 5.
    chex.assert_trees_all_close(g, g_ref, rtol=0, atol=5 * 28 * EPS32 * 2 * 24 * 5 / (10 * 0.1))

    vp = jr.variational.init({"w": w[0]}, init_std=0.1)
    vpred = jr.variational.predict(lambda p, x: jnp.tanh(x @ p["w"]), vp, x, jax.random.key(4), 5)
    vref = jr.variational.predict(lambda p, x: jnp.tanh(x @ p["w"]), vp, x, jax.random.key(4), 5, chunk_size=5)
    chex.assert_trees_all_close(vpred, vref, rtol=0, atol=4 * tol)


def test_abstract_tracing_errors_fall_back_to_the_static_rule_and_others_propagate():
    def needs_values(x):
        if x[0] > 0:  # a Python if on an array: abstract tracing cannot run it
            return x
        return -x

    assert _chunking.trace_item(needs_values, jnp.ones(3)) is None
    with pytest.raises(TypeError):
        _chunking.trace_item(lambda x: x @ jnp.ones((5, 2)), jnp.ones(3))  # a shape bug is a bug


def test_an_explicit_chunk_size_is_never_changed(monkeypatch):
    monkeypatch.setattr(_chunking, "pick_fastest", lambda *a, **k: pytest.fail("measured an explicit chunk_size"))
    assert _chunking.resolve_chunk(3, 8, where="t", program=lambda c: None, args=(), item_jaxpr=None, static=8) == 3


def test_mc_dropout_measures_no_chunk_above_the_static_rule_while_ensemble_map_measures_one_vmap(monkeypatch):
    # MC-dropout's moments over many masks: chunks bound memory, so the static rule's chunk is
    # the largest measured; ensemble members keep one vmap among the candidates.
    seen = []

    def fake_pick(cands, prepare, **kw):
        seen.append(list(cands))
        return cands[0], {}

    monkeypatch.setattr(_chunking, "pick_fastest", fake_pick)
    monkeypatch.setattr(_chunking, "static_chunk", lambda num, item_bytes, *a, **k: 4)
    w = jax.random.normal(jax.random.key(0), (3, 3))
    jr.mc_dropout(lambda p, x, k: jr.dropout(k, x @ p, 0.5), w, jnp.ones((2, 3)), jax.random.key(1), 16)
    assert max(seen[-1]) == 4 and 1 in seen[-1], seen
    jr.ensemble.map(lambda p: jnp.tanh(p @ jnp.ones(3)))(jnp.ones((16, 3, 3)))
    assert 16 in seen[-1] and 1 in seen[-1] and 4 in seen[-1], seen


def test_under_jit_arguments_over_the_stand_in_bound_are_not_measured(monkeypatch):
    # Stand-ins are a second copy of the traced arguments: above the bound, the static rule.
    monkeypatch.setattr(_chunking, "pick_fastest", lambda cands, prepare, **kw: (1, {}))
    monkeypatch.setattr(_chunking, "STAND_IN_MAX_BYTES", 8 * 3 * 4 - 1)  # one byte short of x
    seen = []
    jax.jit(lambda x: seen.append(_resolve(lambda c: lambda x: x * 2.0, (x,))) or x)(jnp.zeros((8, 3)))
    monkeypatch.setattr(_chunking, "STAND_IN_MAX_BYTES", 8 * 3 * 4)
    _chunking.clear_cache()
    jax.jit(lambda x: seen.append(_resolve(lambda c: lambda x: x * 2.0, (x,))) or x)(jnp.zeros((8, 3)))
    assert seen == [2, 1], seen


@pytest.mark.parametrize("n, chunk, traces", [(12, 4, 1), (14, 4, 2), (12, 12, 1)])
def test_run_chunks_traces_the_block_once_per_shape_and_matches_vmap(n, chunk, traces):
    # A chunk's program is traced once and replayed for the peeled chunk and the loop (the
    # remainder, of another shape, is a second trace); values, a closed-over traced weight and
    # gradients through it are those of one vmap.
    xs = jax.random.normal(jax.random.key(0), (n, 3))
    calls = []

    def run(w, xs):
        def block(b):
            calls.append(b.shape)
            y = jnp.tanh(b @ w)
            return jnp.sum(y), y

        return _chunking.run_chunks(block, xs, chunk, combine=jnp.add)

    w = jax.random.normal(jax.random.key(1), (3, 2))
    (total, ys) = jax.jit(run)(w, xs)
    assert len(calls) == traces, calls
    ref = jnp.tanh(xs @ w)
    # tanh of 3-term products: |y| <= 1, a few ulp; the sum of 2n of them, n ulp more.
    chex.assert_trees_all_close(ys, ref, rtol=0, atol=4 * EPS32)
    chex.assert_trees_all_close(total, jnp.sum(ref), rtol=0, atol=4 * n * EPS32)
    grad = jax.grad(lambda w: run(w, xs)[0])(w)
    grad_ref = jax.grad(lambda w: jnp.sum(jnp.tanh(xs @ w)))(w)
    chex.assert_trees_all_close(grad, grad_ref, rtol=0, atol=8 * n * EPS32)


def test_under_disable_jit_each_chunk_runs_on_values():
    # jax's way to debug: the loop over chunks runs in Python, the user's function on concrete
    # values (a print, a Python if). Tracing the chunk once for the loop took that away.
    seen = []

    def member(w):
        seen.append(float(w[0]))  # needs a value: a tracer has none
        return w * 2.0 if float(w[0]) > 0.5 else w

    w = jnp.linspace(0.0, 1.0, 6).reshape(6, 1)
    with jax.disable_jit():
        out = jr.ensemble.map(member, chunk_size=1)(w)
    np.testing.assert_array_equal(out, np.where(np.asarray(w) > 0.5, 2 * np.asarray(w), np.asarray(w)))
    assert seen == [float(v) for v in np.asarray(w)[:, 0]]


def test_a_cache_file_that_is_not_utf8_is_ignored_and_rewritten(monkeypatch, tmp_path):
    # A UnicodeDecodeError (neither OSError nor JSONDecodeError) failed every tuned call, and
    # the file was never rewritten.
    monkeypatch.setenv("JAXREG_AUTOTUNE_CACHE", str(tmp_path))
    (tmp_path / "chunks.json").write_bytes(b'{"abc": \xff\xfe 3}')
    monkeypatch.setattr(_chunking, "pick_fastest", lambda cands, prepare, **kw: (4, {}))
    assert _resolve(lambda c: lambda x: x, (jnp.zeros((8, 3)),)) == 4
    assert list(json.loads((tmp_path / "chunks.json").read_text()).values()) == [4]


def test_concurrent_writers_of_the_cache_file_keep_every_entry(monkeypatch, tmp_path):
    # Read, add, replace without a lock lost the other writer's entries (235 of 400 kept).
    import threading

    monkeypatch.setenv("JAXREG_AUTOTUNE_CACHE", str(tmp_path))

    def write(prefix):
        for i in range(150):
            _chunking._write_disk(f"{prefix}{i}", i + 1)

    threads = [threading.Thread(target=write, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads((tmp_path / "chunks.json").read_text())
    assert data == {f"{p}{i}": i + 1 for p in "ab" for i in range(150)}


def test_threads_asking_for_the_same_program_measure_it_once(monkeypatch):
    # Each thread measured (timing the others' work) and the last one's choice was cached.
    import threading
    import time as _time

    measured = []

    def slow_pick(cands, prepare, **kw):
        measured.append(threading.get_ident())
        _time.sleep(0.2)  # the other threads arrive meanwhile
        return 4, {}

    monkeypatch.setattr(_chunking, "pick_fastest", slow_pick)
    program = lambda c: lambda x: x * 2.0  # noqa: E731
    x = jnp.zeros((8, 3))
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(_resolve(program, (x,)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [4, 4, 4, 4] and len(measured) == 1, (seen, measured)


def test_no_measurement_inside_traced_checks_and_the_checks_still_run(monkeypatch):
    # The candidates carried checks that only checkify can run: "Cannot abstractly evaluate a
    # checkify.check which was not functionalized" from the tuner, with a valid rate.
    from jax.experimental import checkify

    monkeypatch.setattr(_chunking, "pick_fastest", lambda *a, **k: pytest.fail("measured inside traced_checks"))
    w, x = jnp.ones((4, 3)), jnp.ones((2, 4))

    def mean(rate):
        apply = lambda p, x_, k: jr.dropout(k, x_, rate) @ p  # noqa: E731
        return jr.mc_dropout(apply, w, x, jax.random.key(0), 8).mean

    with jr.traced_checks():
        ok, value = checkify.checkify(jax.jit(mean))(0.0)
        bad, _ = checkify.checkify(jax.jit(mean))(1.5)
    assert ok.get() is None and np.allclose(np.asarray(value), 4.0)  # rate 0: x @ w, 4 everywhere
    assert bad.get().startswith("dropout: rate must be in [0, 1), got rate = 1.5 (traced)")


def test_a_function_argument_keys_the_tuner_by_name_not_identity(monkeypatch):
    # es.gradient's fitness_shaping written as a lambda in each call was a new key every call:
    # measured again each time, the cache growing (and on disk, a repr with an address).
    measured = []
    monkeypatch.setattr(_chunking, "pick_fastest", lambda cands, prepare, **kw: measured.append(1) or (2, {}))
    for _ in range(3):
        jr.es.gradient(
            lambda p: jnp.sum(p**2),
            jnp.ones(3),
            jax.random.key(0),
            sigma=0.1,
            population=8,
            fitness_shaping=lambda losses: losses - jnp.mean(losses),
        )
    assert len(measured) == 1, measured
