"""Timing of jitted steps: compile vs run, paired ratios, FLOPs, peak fraction, memory, machine.

Benchmarking a JIT-compiled training step has traps: the first call compiles, dispatch is
asynchronous (a call returns before the work is done), a new shape silently retraces, and on a
shared or throttled CPU absolute times drift by tens of percent within minutes. The tools here
address each one:

* :func:`compile_fn` compiles ahead of time (``jax.jit(f).lower(*args).compile()``) and reports
  the trace+lower and compile times separately, with the FLOPs from XLA's own cost analysis.
* :func:`time_fn` warms up, then times repeats that end in ``jax.block_until_ready`` and reports
  the median and the spread (:class:`Timing`).
* :func:`compare` interleaves two (or :func:`interleave`, several) workloads, A B B A A B ...,
  and reports the ratio of each pair and their median (:class:`Comparison`): drift cancels out.
* :class:`TraceCounter` counts Python traces (retraces) of a function.
* :func:`matmul_peak` measures the sustained float32 matmul rate on the spot, and
  :func:`fraction_of_peak` turns FLOPs and seconds into the achieved fraction of it.
* :func:`peak_rss` and :func:`peak_rss_of` read peak resident memory from the OS, the latter for
  a piece of code run in a fresh subprocess (one configuration per process).
* :func:`machine` describes where the figures were measured (CPU, cores, versions, backend,
  allocator), so that runs on different machines can be told apart.

Every result is a dataclass with ``to_dict()`` for JSON.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _checks

__all__ = [
    "CompileLog",
    "Comparison",
    "CompiledFn",
    "ExternalTimer",
    "Machine",
    "Peak",
    "TraceCounter",
    "Timing",
    "MALLOC_TUNING",
    "allocator",
    "compare",
    "compile_fn",
    "compile_log",
    "cost_flops",
    "fraction_of_peak",
    "interleave",
    "machine",
    "matmul_peak",
    "peak_rss",
    "peak_rss_of",
    "time_fn",
]

# The glibc malloc tuning of PERF-NOTES: keeps XLA's multi-MB temporaries in the heap instead of
# returning them to the OS and faulting them back in every step.
MALLOC_TUNING = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "268435456",
}


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    return float(np.quantile(np.asarray(sorted_values, dtype=np.float64), q))


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call over timed repeats (after warm-up).

    Attributes:
      times: seconds per call of each repeat, in the order measured.
      number: calls per repeat (each repeat's time is its total divided by ``number``).
    """

    times: tuple[float, ...]
    number: int = 1

    @property
    def median(self) -> float:
        return float(statistics.median(self.times))

    @property
    def min(self) -> float:
        return float(min(self.times))

    @property
    def max(self) -> float:
        return float(max(self.times))

    @property
    def q25(self) -> float:
        return _quantile(sorted(self.times), 0.25)

    @property
    def q75(self) -> float:
        return _quantile(sorted(self.times), 0.75)

    @property
    def iqr(self) -> float:
        """Interquartile range, seconds."""
        return self.q75 - self.q25

    @property
    def rel_iqr(self) -> float:
        """Interquartile range relative to the median (0.05: a 5% spread)."""
        return self.iqr / self.median if self.median > 0 else math.nan

    def per_second(self, work: float = 1.0) -> float:
        """Throughput: ``work`` units per call divided by the median seconds per call."""
        return work / self.median

    def to_dict(self) -> dict[str, Any]:
        return {
            "times_s": list(self.times),
            "number": self.number,
            "median_s": self.median,
            "q25_s": self.q25,
            "q75_s": self.q75,
            "iqr_s": self.iqr,
            "min_s": self.min,
            "max_s": self.max,
        }


@dataclasses.dataclass(frozen=True)
class Comparison:
    """An interleaved A/B comparison: ``ratios[i] = a.times[i] / b.times[i]`` (time ratios).

    A ratio above 1 means A took longer than B in that pair; ``speedup`` (``1 / median_ratio``)
    is how many times faster A ran.
    """

    a: Timing
    b: Timing
    ratios: tuple[float, ...]

    @property
    def median_ratio(self) -> float:
        return float(statistics.median(self.ratios))

    @property
    def speedup(self) -> float:
        """How many times faster A is than B: ``1 / median_ratio``."""
        return 1.0 / self.median_ratio

    @property
    def ratio_q25(self) -> float:
        return _quantile(sorted(self.ratios), 0.25)

    @property
    def ratio_q75(self) -> float:
        return _quantile(sorted(self.ratios), 0.75)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "ratios": list(self.ratios),
            "median_ratio": self.median_ratio,
            "ratio_q25": self.ratio_q25,
            "ratio_q75": self.ratio_q75,
            "speedup": self.speedup,
        }


@dataclasses.dataclass(frozen=True)
class CompiledFn:
    """An ahead-of-time compiled function with its compile costs and XLA cost analysis.

    Attributes:
      compiled: the ``jax.stages.Compiled``; call it with the same argument shapes.
      lower_s: seconds to trace and lower to StableHLO.
      compile_s: seconds XLA took to compile.
      flops: floating-point operations per call from ``compiled.cost_analysis()`` (NaN if
        the backend reports none).
      bytes_accessed: bytes read and written per call from the same analysis (NaN if none).
    """

    compiled: Any
    lower_s: float
    compile_s: float
    flops: float
    bytes_accessed: float

    def __call__(self, *args: Any) -> Any:
        return self.compiled(*args)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower_s": self.lower_s,
            "compile_s": self.compile_s,
            "flops": self.flops,
            "bytes_accessed": self.bytes_accessed,
        }


def _cost_value(analysis: Any, key: str) -> float:
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    if not analysis or key not in analysis:
        return math.nan
    return float(analysis[key])


def cost_flops(compiled: Any) -> float:
    """FLOPs per call of a compiled function, from XLA's own cost analysis.

    Args:
      compiled: a ``jax.stages.Compiled`` (``jax.jit(f).lower(*args).compile()``) or a
        :class:`CompiledFn`.

    Returns:
      The ``"flops"`` entry of ``compiled.cost_analysis()``, or NaN where the backend has none.
      XLA counts the body of a loop (``lax.scan``, ``fori_loop``, ``lax.map``) once, not once per
      iteration: for such programs take the FLOPs of the body's own function times the trip count.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> c = jax.jit(jnp.matmul).lower(jnp.ones((8, 4)), jnp.ones((4, 2))).compile()
      >>> jr.benchmark.cost_flops(c)  # 2 * m * n * k
      128.0
    """
    if isinstance(compiled, CompiledFn):
        return compiled.flops
    return _cost_value(compiled.cost_analysis(), "flops")


def compile_fn(
    fn: Callable[..., Any], *args: Any, static_argnums: int | Sequence[int] = (), **jit_kwargs: Any
) -> CompiledFn:
    r"""Compiles ``fn`` ahead of time for ``args``, timing trace+lower and compile apart.

    .. math:: t_\text{first call} \approx t_\text{lower} + t_\text{compile} + t_\text{run}

    Args:
      fn: a Python function or an already ``jax.jit``-wrapped one.
      *args: example arguments (arrays or ``jax.ShapeDtypeStruct``).
      static_argnums: passed to ``jax.jit`` when ``fn`` is not jitted yet.
      **jit_kwargs: other ``jax.jit`` options (``donate_argnums``, ...).

    Returns:
      A :class:`CompiledFn`: callable, with ``lower_s``, ``compile_s``, ``flops`` and
      ``bytes_accessed``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> c = jr.benchmark.compile_fn(lambda a, b: a @ b, jnp.ones((16, 8)), jnp.ones((8, 4)))
      >>> c.flops, c.compile_s >= 0.0
      (1024.0, True)
      >>> c(jnp.ones((16, 8)), jnp.ones((8, 4))).shape
      (16, 4)
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn, static_argnums=static_argnums, **jit_kwargs)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    analysis = compiled.cost_analysis()
    return CompiledFn(
        compiled=compiled,
        lower_s=t1 - t0,
        compile_s=t2 - t1,
        flops=_cost_value(analysis, "flops"),
        bytes_accessed=_cost_value(analysis, "bytes accessed"),
    )


_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}


@dataclasses.dataclass
class CompileLog:
    """Time JAX spent tracing, lowering and compiling inside a :func:`compile_log` block.

    Attributes:
      trace_s: seconds tracing Python to jaxprs.
      lower_s: seconds lowering jaxprs to StableHLO.
      compile_s: seconds in the XLA backend compiler.
      compiles: number of backend compilations.
    """

    trace_s: float = 0.0
    lower_s: float = 0.0
    compile_s: float = 0.0
    compiles: int = 0

    @property
    def total_s(self) -> float:
        return self.trace_s + self.lower_s + self.compile_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_s": self.total_s}


class compile_log:
    """Context manager recording JAX's own compile-time events inside the block.

    Separates compile time from run time where ahead-of-time compilation is not at hand, e.g.
    inside a library call that jits internally (a training loop). Uses ``jax.monitoring``'s
    duration events; everything compiled in the process during the block counts.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> x = jnp.ones(5)
      >>> with jr.benchmark.compile_log() as log:
      ...     _ = jax.jit(lambda x: jnp.cos(x) + 1)(x)
      >>> log.compiles, log.compile_s > 0
      (1, True)
    """

    def __init__(self) -> None:
        self.log = CompileLog()

    def _listener(self, event: str, duration: float, **kwargs: Any) -> None:
        field = _COMPILE_EVENTS.get(event)
        if field is not None:
            setattr(self.log, field, getattr(self.log, field) + float(duration))
            if field == "compile_s":
                self.log.compiles += 1

    def __enter__(self) -> CompileLog:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self.log

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)


class ExternalTimer:
    """A workload that times itself: ``timer(number) -> seconds`` for ``number`` calls in total.

    Use it in :func:`compare` or :func:`interleave` for work measured elsewhere, e.g. in a
    worker process (another framework, another environment), so that only the worker's own
    clock counts and not the messaging around it.

    Args:
      timer: ``number -> total seconds`` of ``number`` calls.
    """

    def __init__(self, timer: Callable[[int], float]):
        self.timer = timer

    def __call__(self, number: int) -> float:
        return float(self.timer(number))


def _as_timer(fn: Any, args: Sequence[Any]) -> Callable[[int], float]:
    if isinstance(fn, ExternalTimer):
        return fn

    def timer(number: int) -> float:
        out = None
        t0 = time.perf_counter()
        for _ in range(number):
            out = fn(*args)
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    return timer


def _check_counts(where: str, repeats: int, warmup: int, number: int | None, repeats_name: str = "repeats") -> None:
    _checks.check_int_at_least(repeats_name, repeats, 1, where)
    _checks.check_int_at_least("warmup", warmup, 0, where)
    if number is not None:
        _checks.check_int_at_least("number", number, 1, where)


def _calibrate(timers: Sequence[Callable[[int], float]], min_time: float) -> int:
    """The smallest power of two of calls per repeat with which the slowest timer's repeat
    lasts ``min_time`` (one calibration call each, which also counts as warm-up)."""
    per_call = max(t(1) for t in timers)
    if per_call <= 0:
        return 1
    number = 1
    while number * per_call < min_time and number < 1 << 20:
        number *= 2
    return number


def time_fn(
    fn: Callable[..., Any] | ExternalTimer,
    *args: Any,
    repeats: int = 7,
    warmup: int = 2,
    number: int | None = None,
    min_time: float = 0.05,
) -> Timing:
    """Steady-state seconds per call of ``fn(*args)``, after warm-up.

    Each repeat calls ``fn`` ``number`` times and then waits for the last result with
    ``jax.block_until_ready``; asynchronous dispatch therefore overlaps calls within a repeat
    as it does in a training loop, and a repeat ends only when the work is done.

    Args:
      fn: the function (jit it first, or pass a :class:`CompiledFn`), or an
        :class:`ExternalTimer`.
      *args: its arguments.
      repeats: timed repeats, >= 1 (use >= 5 for a median worth reporting).
      warmup: untimed calls first (the first call of a jitted function compiles).
      number: calls per repeat; ``None`` picks a power of two so a repeat lasts ``min_time``.
      min_time: seconds a repeat should last when ``number`` is ``None``.

    Returns:
      A :class:`Timing` with seconds per call of each repeat.

    Raises:
      ValueError: if ``repeats < 1``, ``warmup < 0`` or ``number < 1``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> f = jax.jit(lambda x: jnp.tanh(x) @ x)
      >>> t = jr.benchmark.time_fn(f, jnp.ones((64, 64)), repeats=5, number=3)
      >>> len(t.times), t.number, t.min <= t.median <= t.max
      (5, 3, True)
    """
    _check_counts("time_fn", repeats, warmup, number)
    timer = _as_timer(fn, args)
    for _ in range(warmup):
        timer(1)
    n = number if number is not None else _calibrate([timer], min_time)
    return Timing(times=tuple(timer(n) / n for _ in range(repeats)), number=n)


def interleave(
    fns: Sequence[Callable[..., Any] | ExternalTimer],
    args: Sequence[Sequence[Any]] | None = None,
    *,
    rounds: int = 7,
    warmup: int = 2,
    number: int | None = None,
    min_time: float = 0.05,
) -> list[Timing]:
    """Times several workloads in alternation, rotating which goes first each round.

    Round ``r`` times every workload once, starting from workload ``r mod len(fns)`` (for two:
    A B, B A, A B, ...), so slow drift of the machine hits them alike and the per-round ratios
    stay meaningful when absolute times do not.

    Args:
      fns: the workloads (callables or :class:`ExternalTimer`).
      args: one argument tuple per workload (default: no arguments).
      rounds: timed rounds, >= 1.
      warmup: untimed calls of each workload first.
      number: calls per timed repeat, the same for all; ``None`` calibrates each workload (a
        power of two of calls such that its repeat lasts ``min_time``).
      min_time: seconds each workload's repeat should last when ``number`` is ``None``.

    Returns:
      One :class:`Timing` per workload; ``timings[j].times[r]`` was measured in round ``r``.

    Raises:
      ValueError: if ``fns`` is empty, ``args`` does not match it, or the counts are invalid.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> x = jnp.ones((32, 32))
      >>> ts = jr.benchmark.interleave([jax.jit(jnp.sin), jax.jit(jnp.cos)], [(x,), (x,)], rounds=5, number=2)
      >>> [len(t.times) for t in ts]
      [5, 5]
    """
    _check_counts("interleave", rounds, warmup, number, "rounds")
    if len(fns) == 0:
        raise ValueError("interleave: fns must name at least one workload, got fns = [].")
    if args is None:
        args = [()] * len(fns)
    if len(args) != len(fns):
        raise ValueError(f"interleave: args must give one tuple per workload, got {len(args)} for {len(fns)} fns.")
    timers = [_as_timer(f, a) for f, a in zip(fns, args)]
    for _ in range(warmup):
        for t in timers:
            t(1)
    # Each workload gets its own calls per repeat, so a fast one is not timed on a single call
    # because a slow one lasts min_time already; the per-call times of a round stay comparable.
    ns = [number if number is not None else _calibrate([t], min_time) for t in timers]
    times: list[list[float]] = [[] for _ in timers]
    k = len(timers)
    for r in range(rounds):
        for j in range(k):
            idx = (r + j) % k
            times[idx].append(timers[idx](ns[idx]) / ns[idx])
    return [Timing(times=tuple(ts), number=n) for ts, n in zip(times, ns)]


def compare(
    a: Callable[..., Any] | ExternalTimer,
    b: Callable[..., Any] | ExternalTimer,
    args_a: Sequence[Any] = (),
    args_b: Sequence[Any] | None = None,
    *,
    pairs: int = 7,
    warmup: int = 2,
    number: int | None = None,
    min_time: float = 0.05,
) -> Comparison:
    r"""Paired A/B timing: A and B alternate (A B, B A, ...), one ratio per pair.

    .. math:: r_i = t_{A,i} / t_{B,i}, \qquad \text{ratio} = \operatorname{median}_i r_i

    Args:
      a, b: the two workloads (callables, :class:`CompiledFn`, or :class:`ExternalTimer`).
      args_a: arguments of ``a``.
      args_b: arguments of ``b`` (default: ``args_a``).
      pairs: number of timed pairs, >= 1.
      warmup: untimed calls of each first.
      number: calls per timed repeat (the same for both); ``None`` calibrates each.
      min_time: seconds each repeat should last when ``number`` is ``None``.

    Returns:
      A :class:`Comparison`; ``ratios[i] == a.times[i] / b.times[i]``.

    Raises:
      ValueError: if the counts are invalid.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> x = jnp.ones((128, 128))
      >>> one = jax.jit(lambda x: x @ x)
      >>> four = jax.jit(lambda x: x @ x @ x @ x @ x)
      >>> c = jr.benchmark.compare(four, one, (x,), pairs=5, number=4)
      >>> len(c.ratios), c.median_ratio > 1.0
      (5, True)
    """
    _check_counts("compare", pairs, warmup, number, "pairs")
    timings = interleave(
        [a, b],
        [tuple(args_a), tuple(args_a if args_b is None else args_b)],
        rounds=pairs,
        warmup=warmup,
        number=number,
        min_time=min_time,
    )
    ta, tb = timings
    return Comparison(a=ta, b=tb, ratios=tuple(x / y for x, y in zip(ta.times, tb.times)))


class TraceCounter:
    """Wraps a function and counts how often JAX traces it (each trace is a (re)compile).

    Python code inside a jitted function runs only when JAX traces it: on the first call, and
    again for each new input shape, dtype, static argument or pytree structure, never for new
    values. ``count`` counts those traces.

    Args:
      fn: the function to wrap; jit the wrapper.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> counted = jr.benchmark.TraceCounter(lambda x: 2 * x)
      >>> f = jax.jit(counted)
      >>> _ = f(jnp.ones(3)); _ = f(jnp.zeros(3)); _ = f(jnp.ones(4))
      >>> counted.count
      2
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.count = 0
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", "fn")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.fn(*args, **kwargs)

    def reset(self) -> None:
        self.count = 0


@dataclasses.dataclass(frozen=True)
class Peak:
    """Sustained matmul rate measured on the spot.

    Attributes:
      gflops: billions of floating-point operations per second at the median repeat.
      size: the square matrix size ``n`` (one call: ``2 n^3`` FLOPs).
      dtype: the element type.
      backend: the JAX backend it ran on.
      timing: the :class:`Timing` of one matmul.
    """

    gflops: float
    size: int
    dtype: str
    backend: str
    timing: Timing

    @property
    def gflops_best(self) -> float:
        """The rate of the fastest repeat."""
        return 2.0 * self.size**3 / self.timing.min / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "gflops": self.gflops,
            "gflops_best": self.gflops_best,
            "size": self.size,
            "dtype": self.dtype,
            "backend": self.backend,
            "timing": self.timing.to_dict(),
        }


def matmul_peak(size: int = 2048, *, dtype: Any = jnp.float32, repeats: int = 5, number: int | None = None) -> Peak:
    r"""Measures the sustained matmul rate of the default device: a large ``jnp`` matmul.

    .. math:: \text{GFLOP/s} = \frac{2 n^3}{t_\text{median}} \cdot 10^{-9}

    This is the machine's practical limit for dense float work (the figure against which an
    achieved rate is a fraction), measured in the same run because clocks, turbo and
    neighbours change it.

    Args:
      size: the square matrix size ``n`` (2048: about 17 GFLOP per call).
      dtype: the element type.
      repeats: timed repeats.
      number: calls per repeat (``None``: calibrated to about 0.2 s).

    Returns:
      A :class:`Peak`.

    Raises:
      ValueError: if ``size < 1``.

    Examples:
      >>> import jaxreg as jr
      >>> p = jr.benchmark.matmul_peak(128, repeats=3, number=2)
      >>> p.size, p.gflops > 0
      (128, True)
    """
    _checks.check_int_at_least("size", size, 1, "matmul_peak")
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    f = jax.jit(jnp.matmul)
    timing = time_fn(f, a, b, repeats=repeats, warmup=1, number=number, min_time=0.2)
    return Peak(
        gflops=2.0 * size**3 / timing.median / 1e9,
        size=size,
        dtype=jnp.dtype(dtype).name,
        backend=jax.default_backend(),
        timing=timing,
    )


def fraction_of_peak(flops: float, seconds: float, peak: Peak | float) -> float:
    r"""Achieved fraction of a peak rate: :math:`\frac{\text{flops} / \text{seconds}}{\text{peak}}`.

    Args:
      flops: FLOPs per call (e.g. :attr:`CompiledFn.flops`).
      seconds: seconds per call (e.g. ``Timing.median``).
      peak: a :class:`Peak`, or a rate in GFLOP/s.

    Returns:
      The fraction (1.0: the call ran at the peak rate).

    Examples:
      >>> import jaxreg as jr
      >>> jr.benchmark.fraction_of_peak(50e9, 1.0, 100.0)
      0.5
    """
    rate = peak.gflops if isinstance(peak, Peak) else float(peak)
    return flops / seconds / 1e9 / rate


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes, from the OS.

    Reads ``VmHWM`` from ``/proc/self/status`` where it exists (Linux), else
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS).

    Returns:
      Bytes.

    Examples:
      >>> import numpy as np, jaxreg as jr
      >>> x = np.ones(64 * 2**20 // 8)  # 64 MiB, written, so resident
      >>> jr.benchmark.peak_rss() >= x.nbytes
      True
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


_RSS_EPILOGUE = """
def _jaxreg_peak_rss():
    import resource, sys
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
import sys as _sys
_sys.stdout.flush()
print("\\n__JAXREG_PEAK_RSS__" + str(_jaxreg_peak_rss()))
"""


def peak_rss_of(code: str, *, env: dict[str, str] | None = None, timeout: float = 600.0) -> int:
    """Peak resident memory, in bytes, of a fresh Python process that runs ``code``.

    Peak memory is a high-water mark: within one process a configuration measured after a
    larger one reports the larger one's peak. Run each configuration in its own process, and
    subtract a baseline process (the same imports and setup without the work) to isolate it.

    Args:
      code: Python source run with ``python -c`` (it must finish its work before it ends,
        e.g. with ``jax.block_until_ready``).
      env: extra environment variables for the subprocess.
      timeout: seconds before the subprocess is killed.

    Returns:
      The subprocess's peak resident memory in bytes (``VmHWM``).

    Raises:
      RuntimeError: if the subprocess fails (its stderr tail is in the message).

    Examples:
      >>> import jaxreg as jr
      >>> small = jr.benchmark.peak_rss_of("x = bytearray(1)")
      >>> big = jr.benchmark.peak_rss_of("x = bytearray(200 * 2**20)")
      >>> big - small > 150 * 2**20
      True
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", code + "\n" + _RSS_EPILOGUE],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    marker = "__JAXREG_PEAK_RSS__"
    if proc.returncode != 0 or marker not in proc.stdout:
        raise RuntimeError(f"peak_rss_of: the subprocess failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return int(proc.stdout.rsplit(marker, 1)[1].strip())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    wanted = ("avx", "avx2", "avx512f", "fma", "amx_tile", "neon", "asimd")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def allocator() -> str:
    """Which allocator this process runs with, from the environment it started with.

    Returns:
      ``"tcmalloc (LD_PRELOAD)"``, ``"jemalloc (LD_PRELOAD)"``, ``"glibc malloc (tuned: ...)"``
      or ``"glibc malloc (default)"`` (or the preloaded library's path).

    Examples:
      >>> import jaxreg as jr
      >>> isinstance(jr.benchmark.allocator(), str)
      True
    """
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if name in preload:
            return f"{name} (LD_PRELOAD)"
    if preload:
        return f"LD_PRELOAD={preload}"
    tuned = sorted(k for k in os.environ if k.startswith("MALLOC_"))
    if tuned:
        return "glibc malloc (tuned: " + ", ".join(f"{k}={os.environ[k]}" for k in tuned) + ")"
    return "glibc malloc (default)"


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where figures were measured: hardware, software and the settings that change speed."""

    cpu_model: str
    cpu_flags: list[str]
    logical_cpus: int
    usable_cpus: int
    platform: str
    python: str
    jax: str
    jaxlib: str | None
    optax: str | None
    flax: str | None
    numpy: str
    torch: str | None
    backend: str
    devices: list[str]
    device_kind: str
    allocator: str
    env: dict[str, str]
    threefry_partitionable: bool

    @property
    def has_gpu(self) -> bool:
        return self.backend in ("gpu", "cuda", "rocm")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["has_gpu"] = self.has_gpu
        return d


_ENV_KEYS = ("LD_PRELOAD", "XLA_FLAGS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "JAX_PLATFORMS")


def machine() -> Machine:
    """Describes this machine and process: CPU, cores, versions, backend, allocator, env.

    Returns:
      A :class:`Machine` (``to_dict()`` for JSON).

    Examples:
      >>> import jax, jaxreg as jr
      >>> m = jr.benchmark.machine()
      >>> m.jax == jax.__version__, m.backend == jax.default_backend(), m.logical_cpus >= 1
      (True, True, True)
    """
    devices = jax.devices()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_") or k in _ENV_KEYS}
    return Machine(
        cpu_model=_cpu_model(),
        cpu_flags=_cpu_flags(),
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=usable,
        platform=platform.platform(),
        python=platform.python_version(),
        jax=jax.__version__,
        jaxlib=_version("jaxlib"),
        optax=_version("optax"),
        flax=_version("flax"),
        numpy=np.__version__,
        torch=_version("torch"),
        backend=jax.default_backend(),
        devices=[str(d) for d in devices],
        device_kind=devices[0].device_kind if devices else "",
        allocator=allocator(),
        env=env,
        threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
    )
