"""Timing of jitted steps: compile vs run, paired ratios, FLOPs, peak fraction.

Benchmarking a JIT-compiled training step has traps: the first call compiles, dispatch is
asynchronous (a call returns before the work is done), a new shape silently retraces, and on a
shared or throttled CPU absolute times drift by tens of percent within minutes. What lives where:

* :mod:`jaxreg.benchmark.compilation`: :func:`compile_fn` compiles ahead of time
  (``jax.jit(f).lower(*args).compile()``) and reports the trace+lower and compile times apart,
  with the FLOPs of XLA's own cost analysis (:func:`cost_flops`); :func:`compile_log` records
  JAX's compile events inside a block.
* :mod:`jaxreg.benchmark.timing`: :func:`time_fn` warms up, then times repeats that end in
  ``jax.block_until_ready`` (:class:`Timing`: median and spread); :func:`compare` interleaves two
  (or :func:`interleave`, several) workloads, A B B A ..., one ratio per pair
  (:class:`Comparison`), so drift cancels.
* :mod:`jaxreg.benchmark.peak`: :func:`matmul_peak` measures the sustained matmul rate on the
  spot and :func:`fraction_of_peak` turns FLOPs and seconds into the achieved fraction of it.

Retraces are caught with ``chex.assert_max_traces``. The machine and allocator description and
the peak-memory probes serve the benchmark runner only and live in ``benchmarks/common.py``.
``import jaxreg`` does not import this package; ``jaxreg.benchmark`` imports it on first access.
"""

from jaxreg.benchmark.compilation import CompiledFn, CompileLog, compile_fn, compile_log, cost_flops
from jaxreg.benchmark.peak import Peak, fraction_of_peak, matmul_peak
from jaxreg.benchmark.timing import Comparison, ExternalTimer, Timing, compare, interleave, time_fn

__all__ = [
    "CompileLog",
    "Comparison",
    "CompiledFn",
    "ExternalTimer",
    "Peak",
    "Timing",
    "compare",
    "compile_fn",
    "compile_log",
    "cost_flops",
    "fraction_of_peak",
    "interleave",
    "matmul_peak",
    "time_fn",
]
