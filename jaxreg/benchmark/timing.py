"""Steady-state timing of jitted calls: repeats, interleaved A/B pairs, paired ratios.

Dispatch is asynchronous (a call returns before its work is done) and a shared CPU drifts by tens
of percent within minutes. :func:`time_fn` warms up and times repeats that end in
``jax.block_until_ready``; :func:`interleave` and :func:`compare` alternate workloads
(A B, B A, ...) so that drift cancels in the per-pair ratios. :class:`ExternalTimer` wraps work
timed elsewhere (a worker process). Results are dataclasses with ``to_dict()`` for JSON.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxreg import _checks

__all__ = ["Comparison", "ExternalTimer", "Timing", "compare", "interleave", "time_fn"]


def _record(obj: Any, names: Sequence[str], suffix: str = "") -> dict[str, Any]:
    """``{name + suffix: getattr(obj, name)}`` for ``name`` in ``names``: the ``to_dict`` of a result.

    Fields and properties alike, in the order given (JSON records of :class:`Timing`,
    :class:`Comparison`, ``CompiledFn`` and ``Peak``).
    """
    return {f"{name}{suffix}": getattr(obj, name) for name in names}


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
        stats = _record(self, ("median", "q25", "q75", "iqr", "min", "max"), "_s")
        return {"times_s": list(self.times), "number": self.number, **stats}


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
        stats = _record(self, ("median_ratio", "ratio_q25", "ratio_q75", "speedup"))
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "ratios": list(self.ratios), **stats}


class ExternalTimer:
    """A workload that times itself: ``timer(number) -> seconds`` for ``number`` calls in total.

    Use it in :func:`compare` or :func:`interleave` for work measured elsewhere, e.g. in a
    worker process (another framework, another environment), so that only the worker's own
    clock counts and not the messaging around it.

    Args:
      timer: ``number -> total seconds`` of ``number`` calls.
    """

    def __init__(self, timer: Callable[[int], float]):
        if not callable(timer):
            raise ValueError(f"ExternalTimer: timer must be a function number -> seconds, got timer = {timer!r}.")
        self.timer = timer

    def __call__(self, number: int) -> float:
        seconds = float(self.timer(number))
        if not (math.isfinite(seconds) and seconds >= 0):  # a NaN time would rank as any other
            raise ValueError(f"ExternalTimer: timer({number}) must return finite seconds >= 0, got {seconds!r}.")
        return seconds


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


def _check_counts(
    where: str, repeats: int, warmup: int, number: int | None, repeats_name: str = "repeats", min_time: float = 0.05
) -> None:
    _checks.check_int_at_least(repeats_name, repeats, 1, where)
    _checks.check_int_at_least("warmup", warmup, 0, where)
    if number is not None:
        _checks.check_int_at_least("number", number, 1, where)
    _checks.check_nonnegative("min_time", min_time, where, scalar=True)


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
    _check_counts("time_fn", repeats, warmup, number, min_time=min_time)
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
    _check_counts("interleave", rounds, warmup, number, "rounds", min_time)
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
    _check_counts("compare", pairs, warmup, number, "pairs", min_time)
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
