"""Tests of jaxreg.benchmark and of the benchmark runner (no assertion on any measured time)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr
from jaxreg import benchmark as bm

REPO_ROOT = Path(__file__).resolve().parent.parent
EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
sys.path.insert(0, str(REPO_ROOT))  # the benchmarks/ package of the checkout


# ----------------------------------------------------------------------------- light import


def test_import_jaxreg_leaves_out_benchmark_plots_and_the_command_deps():
    code = (
        "import sys, jaxreg; "
        "print(sorted(m for m in ('jaxreg.benchmark', 'jaxreg.plots', 'matplotlib', 'sklearn', 'resource') "
        "if m in sys.modules)); "
        "jaxreg.benchmark.compile_fn; print('jaxreg.benchmark' in sys.modules); "
        "jaxreg.plots.band; print('jaxreg.plots' in sys.modules)"  # jr.plots without `import jaxreg.plots`
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), capture_output=True, text=True, check=True)
    assert proc.stdout.split("\n")[:3] == ["[]", "True", "True"], proc.stdout


def test_unknown_attribute_of_jaxreg_raises_attribute_error():
    with pytest.raises(AttributeError, match="module 'jaxreg' has no attribute 'nosuch'"):
        _ = jr.nosuch


# ----------------------------------------------------------------------------- cost analysis


@pytest.mark.parametrize(("m", "k", "n"), [(8, 4, 2), (64, 32, 16), (128, 256, 10)])
def test_matmul_flops_from_cost_analysis_are_2mnk(m, k, n):
    c = bm.compile_fn(jnp.matmul, jnp.ones((m, k)), jnp.ones((k, n)))
    assert c.flops == 2 * m * n * k
    assert bm.cost_flops(c.compiled) == 2 * m * n * k
    assert bm.cost_flops(c) == 2 * m * n * k


def test_compile_fn_result_computes_the_function():
    a = jax.random.normal(jax.random.key(0), (5, 3))
    b = jax.random.normal(jax.random.key(1), (3, 4))
    c = bm.compile_fn(lambda a, b: jnp.tanh(a @ b), a, b)
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    # float32 dot of 3 terms: error <= 3 eps * sum|a_i b_i|; tanh is 1-Lipschitz and adds 1 ulp.
    bound = 3 * EPS32 * (np.abs(a64) @ np.abs(b64)) + 2 * EPS32
    np.testing.assert_array_less(np.abs(np.asarray(c(a, b), np.float64) - np.tanh(a64 @ b64)), bound)
    assert c.lower_s >= 0 and c.compile_s >= 0


def test_compile_fn_says_when_jax_answered_from_its_caches():
    # A fresh program compiles (compile_log, JAX's own backend events, sees one compile inside
    # compile_s); the same program once called is a cache lookup: no compile, cached is True. The
    # step is not retraced, so a chex.assert_max_traces(n=1) step survives compile_fn.
    step = jax.jit(chex.assert_max_traces(lambda x: jnp.sin(x) @ x @ jnp.cos(x), n=1))
    x = jnp.ones((32, 32))
    chex.clear_trace_counter()
    with bm.compile_log() as log:
        fresh = bm.compile_fn(step, x)
    assert log.compiles == 1 and not fresh.cached and fresh.compile_s >= log.compile_s > 0
    step(x).block_until_ready()
    with bm.compile_log() as log:
        again = bm.compile_fn(step, x)
    assert log.compiles == 0 and again.cached and again.to_dict()["cached"] is True
    np.testing.assert_array_equal(again(x), step(x))


def test_fraction_of_peak_closed_form():
    assert bm.fraction_of_peak(30e9, 0.5, 120.0) == pytest.approx(0.5)
    peak = bm.Peak(gflops=60.0, size=2, dtype="float32", backend="cpu", timing=bm.Timing((1.0,)))
    assert bm.fraction_of_peak(6e9, 1.0, peak) == pytest.approx(0.1)


# ----------------------------------------------------------------------------- retraces


def test_assert_max_traces_sees_new_shapes_and_dtypes_not_new_values():
    # chex.assert_max_traces replaces the former jr.benchmark.TraceCounter.
    f = jax.jit(chex.assert_max_traces(lambda x: jnp.sum(x * 2), n=1))
    f(jnp.ones(3))
    f(jnp.zeros(3))
    f(jnp.arange(3.0))  # new values, same shape and dtype: no trace
    with pytest.raises(AssertionError, match=r"traced > 1 times"):
        f(jnp.ones(4))  # a new shape traces again


def test_no_retrace_for_a_new_penalty_scale():
    f = jax.jit(chex.assert_max_traces(lambda pen, w: pen(w), n=1))
    for scale in (0.1, 0.2, 0.3):
        f(jr.l2(scale), jnp.ones(3))


def test_compile_log_counts_compiles():
    x = jnp.ones(7)
    f = jax.jit(lambda x: jnp.sin(x) * 3)
    with bm.compile_log() as log:
        f(x).block_until_ready()
    assert log.compiles == 1 and log.compile_s > 0
    with bm.compile_log() as again:
        f(x).block_until_ready()
    assert again.compiles == 0 and again.total_s == 0.0


# ----------------------------------------------------------------------------- timing logic


def _fake(per_call: float, log: list[str] | None = None, name: str = ""):
    def timer(number: int) -> float:
        if log is not None:
            log.append(name)
        return per_call * number

    return bm.ExternalTimer(timer)


def test_timing_statistics_match_numpy():
    times = (3.0, 1.0, 4.0, 1.5, 9.0, 2.6)
    t = bm.Timing(times)
    assert t.median == np.median(times)
    assert t.q25 == pytest.approx(np.percentile(times, 25))
    assert t.q75 == pytest.approx(np.percentile(times, 75))
    assert t.iqr == pytest.approx(np.percentile(times, 75) - np.percentile(times, 25))
    assert (t.min, t.max) == (1.0, 9.0)
    assert t.per_second(10.0) == pytest.approx(10.0 / np.median(times))
    assert json.loads(json.dumps(t.to_dict()))["median_s"] == np.median(times)


def test_time_fn_calibrates_number_to_min_time():
    t = bm.time_fn(_fake(0.01), repeats=5, warmup=0, min_time=0.05)
    assert t.number == 8  # 4 calls last 0.04 s < 0.05, 8 calls 0.08 s
    assert len(t.times) == 5
    assert all(v == pytest.approx(0.01) for v in t.times)


def test_compare_ratios_are_a_over_b_per_pair():
    c = bm.compare(_fake(0.002), _fake(0.001), pairs=6, warmup=1, number=3)
    assert len(c.ratios) == 6 == len(c.a.times) == len(c.b.times)
    for r, a, b in zip(c.ratios, c.a.times, c.b.times):
        assert r == a / b
    assert c.median_ratio == pytest.approx(2.0)
    assert c.speedup == pytest.approx(0.5)


def test_compare_of_real_functions_records_a_ratio_per_pair():
    x = jnp.ones((32, 32))
    f = jax.jit(lambda x: x @ x)
    c = bm.compare(f, f, (x,), pairs=5, warmup=1, number=2)
    assert len(c.ratios) == 5 and c.a.number == c.b.number == 2
    assert all(r == a / b and r > 0 for r, a, b in zip(c.ratios, c.a.times, c.b.times))


def test_interleave_alternates_which_goes_first():
    order: list[str] = []
    bm.interleave([_fake(1e-3, order, "A"), _fake(1e-3, order, "B")], rounds=4, warmup=0, number=1)
    assert order == ["A", "B", "B", "A", "A", "B", "B", "A"]
    order.clear()
    bm.interleave([_fake(1e-3, order, x) for x in "ABC"], rounds=3, warmup=0, number=1)
    assert order == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pairs": 0}, r"compare: pairs must be an int >= 1, got pairs = 0\."),
        ({"number": 0}, r"compare: number must be an int >= 1, got number = 0\."),
        ({"min_time": -1.0}, r"compare: min_time must be finite and >= 0, got min_time = -1\.0\."),
        ({"min_time": float("nan")}, r"compare: min_time must be finite and >= 0, got min_time = nan\."),
    ],
)
def test_compare_rejects_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bm.compare(_fake(1.0), _fake(1.0), **kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: bm.fraction_of_peak(1e9, 0.0, 100.0),
            r"fraction_of_peak: seconds must be finite and > 0, got seconds = 0\.0",
        ),
        (
            lambda: bm.fraction_of_peak(1e9, -1.0, 100.0),
            r"fraction_of_peak: seconds must be finite and > 0, got seconds = -1\.0",
        ),
        (lambda: bm.fraction_of_peak(1e9, 1.0, 0.0), r"fraction_of_peak: peak must be finite and > 0, got peak = 0\.0"),
        (
            lambda: bm.time_fn(_fake(1.0), min_time=-0.5),
            r"time_fn: min_time must be finite and >= 0, got min_time = -0\.5",
        ),
        (lambda: bm.matmul_peak(8, repeats=0), r"matmul_peak: repeats must be an int >= 1, got repeats = 0"),
        (
            lambda: bm.compile_fn(jax.jit(lambda x, n: x * n), jnp.ones(2), 3, static_argnums=1),
            r"compile_fn: static_argnums apply when fn is not jitted yet; fn is already jax.jit-wrapped",
        ),
    ],
)
def test_bad_arguments_are_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):  # ZeroDivisionError, silent options or runs before
        call()


def test_interleave_rejects_mismatched_args():
    with pytest.raises(ValueError, match="one tuple per workload, got 1 for 2 fns"):
        bm.interleave([_fake(1.0), _fake(1.0)], [()])


# ----------------------------------------------------------------------------- memory, machine (benchmarks/common.py)


def test_peak_rss_of_sees_a_200_mib_allocation():
    from benchmarks import common

    small = common.peak_rss_of("x = bytearray(1)")
    big = common.peak_rss_of("x = bytearray(200 * 2**20)")
    # 200 MiB written (bytearray zero-fills), so resident; the interpreter's own pages vary by a
    # few MiB between two processes: the difference lies within 200 MiB -/+ 50 MiB.
    assert 150 * 2**20 < big - small < 250 * 2**20


def test_peak_rss_of_reports_a_failing_subprocess():
    from benchmarks import common

    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        common.peak_rss_of("1 / 0")


def test_allocator_reflects_the_environment(monkeypatch):
    from benchmarks import common

    for k in [k for k in __import__("os").environ if k.startswith("MALLOC_") or k == "LD_PRELOAD"]:
        monkeypatch.delenv(k)
    assert common.allocator() == "glibc malloc (default)"
    monkeypatch.setenv("MALLOC_TOP_PAD_", "268435456")
    assert common.allocator() == "glibc malloc (tuned: MALLOC_TOP_PAD_=268435456)"
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc.so.4")
    assert common.allocator() == "tcmalloc (LD_PRELOAD)"


def test_machine_description():
    from benchmarks import common

    m = common.machine()
    d = json.loads(json.dumps(m.to_dict()))
    assert d["jax"] == jax.__version__
    assert d["backend"] == jax.default_backend()
    assert d["has_gpu"] == (jax.default_backend() == "gpu")
    assert d["logical_cpus"] >= d["usable_cpus"] >= 1
    assert d["cpu_model"]


# ----------------------------------------------------------------------------- the benchmarks' workloads


def test_comparison_0_jaxreg_chain_is_the_hand_written_math():
    from benchmarks import bench_step, common

    jstep, jopt, hstep, hopt = bench_step.make_prox_steps()
    x, y = common.batch()
    params = common.init_mlp(jax.random.key(0))
    # Large weights so that max-norm binds; L1's threshold zeroes some.
    params = jax.tree.map(lambda w: 8.0 * w, params)
    jp, js, hp, hs = params, jopt.init(params), params, hopt.init(params)
    js_step, hs_step = jax.jit(jstep), jax.jit(hstep)
    for _ in range(3):
        jp, js, jl = js_step(jp, js, x, y)
        hp, hs, hl = hs_step(hp, hs, x, y)
    # Both sides float32, the same math in another op order. A step moves each weight by at most
    # lr (Adam's |m_hat / sqrt(v_hat)| <= 1 here), and the soft threshold and max-norm rescaling
    # are 1-Lipschitz, so differences stay at the rounding of the weights: about 4 roundings per
    # step, 3 steps, 12 eps relative (|w| <= 4: 6e-6); rtol 2e-5 (~170 eps) leaves room for the
    # gradients' summation order. The loss: a mean of 128 cross-entropies (~log2(128) = 7
    # roundings) at weights equal to that tolerance, ~ 8 eps32 relative.
    assert jl == pytest.approx(float(hl), rel=8 * EPS32)
    for a, b in zip(jax.tree.leaves(jp), jax.tree.leaves(hp)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    norms = jnp.sqrt(jnp.sum(jnp.square(jp["Dense_0"]["kernel"]), axis=0))
    assert float(jnp.max(norms)) <= common.MAX_NORM * (1 + 8 * EPS32)  # a rescaled norm: a few roundings


def test_comparison_1_steps_agree_without_dropout():
    from benchmarks import common

    jstep, jopt, _ = common.make_jaxreg_step(rate=0.0)
    hstep, hopt = common.make_hand_step(rate=0.0)
    x, y = common.batch()
    params = common.init_mlp(jax.random.key(0))
    key = jax.random.key(1)
    jp, _, jl = jax.jit(jstep)(params, jopt.init(params), x, y, key)
    hp, _, hl = jax.jit(hstep)(params, hopt.init(params), x, y, key)
    # The same float32 loss (the L2 term summed in another order: 85k squares, pairwise, ~17 eps
    # relative of a term 1% of the loss) and one Adam step, whose update lr * g / (|g| + eps) is
    # lr * sign(g) up to rounding: weights agree to a few ulps (rtol 1e-5 ~ 80 eps32), and an
    # update of a near-zero gradient to eps32 * lr (atol 1e-7 ~ lr * eps32 * 800 is generous).
    assert float(jl) == pytest.approx(float(hl), rel=8 * EPS32)
    for a, b in zip(jax.tree.leaves(jp), jax.tree.leaves(hp)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_ensemble_loop_and_vmap_baselines_compute_the_same_steps():
    from benchmarks import bench_ensemble

    vfn, vargs, vflops = bench_ensemble.build_new(3, "vmap")
    lfn, _, lflops = bench_ensemble.build_new(3, "loop")
    vp, _, vl = vfn(*vargs)
    outs = lfn()
    # XLA counts the same dots; the vmapped program may count the batched key split differently.
    assert vflops == pytest.approx(lflops, rel=0.05)
    for i, (p, _, loss) in enumerate(outs):
        # A batched dot sums its 64-256 terms in another blocking: ~sqrt(256) eps32 relative each,
        # through three layers and the mean of 128 cross-entropies: rel 1e-5 (~80 eps32).
        assert float(loss) == pytest.approx(float(vl[i]), rel=1e-5)
        # One Adam step, lr * sign(g) up to rounding, except where g is near 0 and its rounding
        # moves m / (sqrt(v) + eps): weights to ~800 eps32 relative, 1e-6 absolute (lr * 1e-3).
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(jax.tree.map(lambda t, i=i: t[i], vp))):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chunked_ensemble_bench_step_computes_the_stacked_step():
    from benchmarks import bench_ensemble

    cfn, cargs, _ = bench_ensemble.build_chunked(8)
    jfn, jargs, _ = bench_ensemble.build_new(8, "jaxreg")
    assert bench_ensemble._BLOCK[8] in (1, 2, 4)  # the candidates below 8
    c_out, j_out = cfn(*cargs), jfn(*jargs)
    # The same member step with the same keys; only the batched dots' blocking may differ (as in
    # the loop/vmap test above): losses to ~80 eps32, one Adam step to lr * 1e-3 where g ~ 0.
    np.testing.assert_allclose(c_out[2], j_out[2], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jr.ensemble.unchunk(c_out[0])), jax.tree.leaves(j_out[0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- end to end


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_table_prints_a_ratio_without_quartiles():
    """A count ratio (successive halving's member-steps) has no per-pair ratios, hence no IQR."""
    from benchmarks import run

    row = {
        "section": "13 sweep",
        "workload": "w",
        "jaxreg": "a",
        "baseline": "b",
        "jaxreg_value": 2520,
        "baseline_value": 38400,
        "unit": "member-steps",
        "ratio": 38400 / 2520,
        "ratio_q25": None,
        "ratio_q75": None,
        "ratios": [],
        "target": "",
        "status": "ok",
        "note": "",
    }
    paired = {**row, "ratio": 2.0, "ratio_q25": 1.5, "ratio_q75": 2.5, "ratios": [1.5, 2.0, 2.5]}
    cells = run.format_rows({"rows": [row, paired]})
    assert cells[0][7] == f"{38400 / 2520:.2f}"
    assert cells[1][7] == "2.00 [1.50-2.50]"
    # A missed target is never printed rounded up to its bound beside "(missed)".
    near = [{**row, "ratio": r, "target": ">= 0.97 (within 3%)"} for r in (0.9695, 0.96999, 0.971, 0.9649)]
    cells = run.format_rows({"rows": near})
    assert [c[7] for c in cells] == ["0.9695", "0.96999", "0.97", "0.96"]
    assert [c[8].endswith("(missed)") for c in cells] == [True, True, False, True]


@pytest.mark.parametrize(
    ("backend", "argv", "expected"),
    [
        ("gpu", [], ("quick", True)),  # a GPU backend implies --gpu, whose default mode is quick
        ("cuda", ["--mode", "full"], ("full", True)),
        ("cpu", [], ("full", False)),  # and re-runs itself with the malloc tuning
    ],
)
def test_the_runner_follows_the_backend(monkeypatch, backend, argv, expected):
    from benchmarks import run

    seen = {}
    monkeypatch.setattr(run.jax, "default_backend", lambda: backend)
    monkeypatch.setattr(run, "_run_here", lambda settings, *a: seen.update(how="here", settings=settings) or {})
    monkeypatch.setattr(run, "_rerun_with_malloc_tuning", lambda ns: seen.update(how="rerun", mode=ns.mode) or {})
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    assert run.main(["--no-table", *argv]) == 0
    mode, gpu = expected
    if gpu:
        assert seen["how"] == "here" and seen["settings"].gpu and seen["settings"].mode == mode, seen
    else:
        assert seen == {"how": "rerun", "mode": mode}, seen
    # --gpu without a GPU: one line, nothing run
    if backend == "cpu":
        seen.clear()
        assert run.main(["--gpu", "--no-table"]) == 0 and seen == {}


def _bench_json(tmp_path, *extra):
    """Runs ``jaxreg bench --tiny --json bench.json`` from ``tmp_path`` (the runner re-executes
    itself with the malloc tuning, in the checkout) and returns the JSON it wrote there: a
    relative path is the caller's (the child wrote it in the checkout, and the parent failed)."""
    out = tmp_path / "bench.json"
    code = "import sys; from jaxreg.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "bench", "--tiny", "--json", "bench.json", "--no-table", *extra],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check_bench_json(result):
    """Asserts the rows' invariants; returns the sections that reported rows."""
    assert result["mode"] == "tiny"
    m = result["machine"]
    assert m["jax"] == jax.__version__ and m["cpu_model"] and m["usable_cpus"] >= 1
    assert m["allocator"].startswith("glibc malloc (tuned") or "LD_PRELOAD" in m["allocator"]
    rows = result["rows"]
    errors = [(r["section"], r["note"]) for r in rows if r["status"] == "error"]
    assert errors == []
    keys = {"workload", "jaxreg", "baseline", "jaxreg_value", "baseline_value", "ratio", "ratios", "unit", "status"}
    for r in rows:
        assert keys <= set(r)
        assert r["status"] in {"ok", "info", "skipped", "not available"}
        if r["ratio"] is not None:
            assert _positive_finite(r["ratio"]), r
        assert all(_positive_finite(v) for v in r["ratios"]), r
        if r["status"] == "ok":
            assert _positive_finite(r["jaxreg_value"]) and _positive_finite(r["baseline_value"]), r
            # A paired row's ratio is the median of its per-pair ratios (--tiny runs few pairs).
            if r["ratios"]:
                assert r["ratio"] == pytest.approx(float(np.median(r["ratios"])))
    peak = next(r for r in rows if r["section"] == "7 machine")
    assert _positive_finite(peak["jaxreg_value"])
    return {r["section"].split()[0] for r in rows}


def test_bench_command_one_section_end_to_end(tmp_path):
    """One section (and the machine's peak, always measured) through the command, in seconds."""
    sections = _check_bench_json(_bench_json(tmp_path, "--only", "step"))
    assert sections == {"0", "1", "7"}  # --only keeps the others out; the machine's peak always runs


@pytest.mark.slow
def test_bench_command_end_to_end(tmp_path):
    """Every section through the command (minutes on 2 cores: `python -m pytest -m slow`)."""
    sections = _check_bench_json(_bench_json(tmp_path))
    assert {"0", "1", "2", "3", "4", "5", "6", "7", "8", "13", "memory"} <= sections


def test_a_bad_dtype_and_a_nan_external_time_are_named():
    with pytest.raises(ValueError, match=r"^matmul_peak: dtype must be a floating-point dtype, got dtype = 'float33'"):
        jr.benchmark.matmul_peak(8, repeats=1, number=1, dtype="float33")
    timer = jr.benchmark.ExternalTimer(lambda n: float("nan"))
    with pytest.raises(ValueError, match=r"^ExternalTimer: timer\(3\) must return finite seconds >= 0, got nan"):
        timer(3)
    assert jr.benchmark.ExternalTimer(lambda n: 0.5 * n)(4) == 2.0
