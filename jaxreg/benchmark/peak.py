"""The machine's dense-float limit measured on the spot, and an achieved fraction of it.

:func:`matmul_peak` times a large ``jnp.matmul`` on the default device in the same run as the
figures it normalizes (clocks, turbo and neighbours change it); :func:`fraction_of_peak` turns
FLOPs and seconds into the achieved fraction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg import _checks
from jaxreg.benchmark.timing import Timing, _record, time_fn

__all__ = ["Peak", "fraction_of_peak", "matmul_peak"]


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
        return {**_record(self, ("gflops", "gflops_best", "size", "dtype", "backend")), "timing": self.timing.to_dict()}


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
    _checks.check_int_at_least("repeats", repeats, 1, "matmul_peak")
    if number is not None:
        _checks.check_int_at_least("number", number, 1, "matmul_peak")
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(f"matmul_peak: dtype must be a floating-point dtype, got dtype = {dtype!r}.")
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
    _checks.check_nonnegative("flops", flops, "fraction_of_peak", scalar=True)
    _checks.check_positive("seconds", seconds, "fraction_of_peak", scalar=True)
    rate = peak.gflops if isinstance(peak, Peak) else peak
    _checks.check_positive("peak", rate, "fraction_of_peak", scalar=True)
    return flops / seconds / 1e9 / float(rate)
