"""Answers with error bars: intervals over seeds, and verdicts that respect them.

A result trained under S seeds (a seed axis of an ensemble, see ``jr.ensemble``) is S numbers.
:func:`mean_interval` gives their mean with a 95% interval (Student's t, or a percentile
bootstrap); :func:`paired_difference` the interval of the difference of two regimes trained
under the same seeds (paired: the seed's shared noise cancels); :func:`verdict` turns that
interval into words only when it excludes zero. These run on the host, on numpy arrays: they
summarize finished runs, they are not part of a compiled step.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from jax.typing import ArrayLike

from jaxreg import _checks

__all__ = ["Interval", "mean_interval", "paired_difference", "verdict"]

Method = Literal["t", "bootstrap"]


class Interval(NamedTuple):
    """A mean and the bounds of its confidence interval (arrays when the input had more axes)."""

    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def format(self, digits: int = 3) -> str:
        """``"0.925 ± 0.012"``: the mean ± the larger distance from it to a bound (the half-width of a
        symmetric interval; for an asymmetric one, such as a bootstrap's, the printed range holds it);
        the mean alone when a bound is not finite (one value)."""
        mean, lo, hi = (_scalar(v, "Interval.format", name) for v, name in zip(self, self._fields))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {max(mean - lo, hi - mean):.{digits}f}"


def _scalar(value: ArrayLike, where: str, name: str) -> float:
    """A bound of the interval of one quantity (``mean_interval`` of a 2-d input has arrays)."""
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise ValueError(
            f"{where}: expects the interval of one quantity, got {name}.shape = {arr.shape}; "
            "index the Interval's fields (or call mean_interval per quantity)."
        )
    return float(arr)


def _numbers(values: ArrayLike, name: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
        if not np.iscomplexobj(arr):  # as float64 it lost its imaginary part, with a warning only
            return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be numbers, got {name} = {values!r}.") from None
    raise ValueError(f"{where}: {name} must be real numbers, got {name} of dtype {arr.dtype}.")


def _check_confidence(confidence: float, where: str) -> None:
    try:  # a number (a 0-d array too); a string or a bool is not one
        number = None if isinstance(confidence, (str, bytes, bool, np.bool_)) else float(confidence)
    except (TypeError, ValueError):
        number = None
    if number is None or not 0.0 < number < 1.0:
        raise ValueError(f"{where}: confidence must be in (0, 1), got confidence = {confidence!r}.")


def _interval(
    x: np.ndarray, name: str, where: str, axis: int, confidence: float, method: str, num_resamples: int, seed: int
) -> Interval:
    """:func:`mean_interval` of the numbers ``x`` (with a seed axis), its errors naming ``where``
    and the input ``name``."""
    _check_confidence(confidence, where)
    if isinstance(axis, bool | np.bool_) or not isinstance(axis, int | np.integer) or not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"{where}: axis must be an int in [-{x.ndim}, {x.ndim}) for {name} of shape {x.shape}, got axis = {axis!r}."
        )
    if x.shape[int(axis)] == 0:
        shape_name = "a.shape = b.shape" if name == "a and b" else f"{name}.shape"
        raise ValueError(f"{where}: {name} must hold at least one seed, got {shape_name} = {x.shape}.")
    x = np.moveaxis(x, int(axis), 0)  # no quantities (shape (seeds, 0)) gives empty intervals, as numpy's mean
    if method not in ("t", "bootstrap"):
        raise ValueError(f"{where}: method must be 't' or 'bootstrap', got method = {method!r}.")
    if method == "bootstrap":
        _checks.check_int_at_least("num_resamples", num_resamples, 1, where)
        _checks.check_int_at_least("seed", seed, 0, where, maximum=None)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:  # one seed: no interval
        nan = np.full_like(mean, np.nan)[()]  # np.float64 for one quantity, as the mean
        return Interval(mean, nan, nan)
    if method == "t":
        from scipy import stats as scipy_stats

        half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(axis=0, ddof=1) / np.sqrt(n)
        return Interval(mean, mean - half, mean + half)
    idx = np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2], axis=0)
    return Interval(mean, lo, hi)


def mean_interval(
    values: ArrayLike,
    *,
    axis: int = 0,
    confidence: float = 0.95,
    method: Method = "t",
    num_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    r"""The mean over ``axis`` (the seeds) with a ``confidence`` interval.

    With ``method="t"`` (the default) the interval is Student's:

    .. math:: \bar x \pm t_{(1 + c)/2,\, S - 1} \, \frac{s}{\sqrt S}

    with :math:`s` the sample standard deviation (ddof = 1). With ``method="bootstrap"`` it is
    the percentile bootstrap: the :math:`(1 - c)/2` and :math:`(1 + c)/2` quantiles of the
    means of ``num_resamples`` resamples of the seeds with replacement (numpy generator seeded
    with ``seed``). With one seed, or NaN values, the bounds are NaN: no interval is claimed.

    Args:
      values: results with a seed axis.
      axis: the seed axis.
      confidence: the coverage, in (0, 1).
      method: ``"t"`` or ``"bootstrap"``.
      num_resamples: bootstrap resamples.
      seed: the bootstrap's generator seed.

    Returns:
      An :class:`Interval` of numpy arrays (0-d for a 1-d input).

    Raises:
      ValueError: for a scalar or empty input, an ``axis`` out of range, a confidence outside
        (0, 1), an unknown method or (bootstrap) ``num_resamples`` below 1 or a negative ``seed``.

    Examples:
      >>> import jaxreg as jr
      >>> iv = jr.stats.mean_interval([0.91, 0.93, 0.92])
      >>> round(float(iv.mean), 3), round(float(iv.hi - iv.mean), 4)
      (0.92, 0.0248)
    """
    x = _numbers(values, "values", "mean_interval")
    if x.ndim == 0:
        raise ValueError(f"mean_interval: values must have a seed axis, got a scalar {float(x)!r}.")
    return _interval(x, "values", "mean_interval", axis, confidence, method, num_resamples, seed)


def paired_difference(
    a: ArrayLike,
    b: ArrayLike,
    *,
    axis: int = 0,
    confidence: float = 0.95,
    method: Method = "t",
    num_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    r"""The interval of ``mean(a - b)``, paired by seed (``a[s]`` and ``b[s]`` share seed ``s``).

    .. math:: \overline{a - b} \pm t_{(1 + c)/2,\, S - 1} \, \frac{s_{a - b}}{\sqrt S}

    (or the percentile bootstrap of the differences), i.e. :func:`mean_interval` of ``a - b``:
    scipy's paired t-test interval. Pairing removes the noise the two regimes share through their
    seed (the same init, data order and masks), so the interval of the difference is narrower than
    the two intervals side by side suggest. It holds when seed ``s`` of ``a`` and of ``b`` drew the
    same randomness: two :func:`jaxreg.fit` runs with the same ``rng`` and ``num_members`` give
    member ``m`` the same keys in both, but members of one run (keys from
    ``split(rng, num_members)``) share nothing, so regimes stacked as members of one run are not
    paired by seed.

    Args:
      a: results of one regime with a seed axis.
      b: results of the other, the same shape, seed for seed.
      axis: the seed axis.
      confidence: the coverage, in (0, 1).
      method: ``"t"`` or ``"bootstrap"``.
      num_resamples: bootstrap resamples.
      seed: the bootstrap's generator seed.

    Returns:
      An :class:`Interval` of the mean difference.

    Raises:
      ValueError: if ``a`` and ``b`` differ in shape, or as :func:`mean_interval`.

    Examples:
      >>> import jaxreg as jr
      >>> iv = jr.stats.paired_difference([0.93, 0.94, 0.95], [0.91, 0.92, 0.93])
      >>> jr.stats.verdict(iv)
      'higher'
    """
    a, b = _numbers(a, "a", "paired_difference"), _numbers(b, "b", "paired_difference")
    if a.shape != b.shape:
        raise ValueError(
            f"paired_difference: a and b must have one value per seed each, got shapes {a.shape} and {b.shape}."
        )
    if a.ndim == 0:
        raise ValueError(
            f"paired_difference: a and b must have a seed axis, got scalars a = {float(a)!r}, b = {float(b)!r}."
        )
    return _interval(a - b, "a and b", "paired_difference", axis, confidence, method, num_resamples, seed)


def verdict(
    difference: Interval,
    *,
    higher: str = "higher",
    lower: str = "lower",
    same: str = "no difference detected at this size",
) -> str:
    """``higher`` if the interval of a difference lies above 0, ``lower`` if below, else ``same``.

    A NaN bound (one seed) is never a difference. The rule is per interval: with many
    comparisons, about 1 in 20 differences that are truly 0 is called at 95%.

    Args:
      difference: an :class:`Interval` of one difference (e.g. from :func:`paired_difference`).
      higher: returned when ``lo > 0``.
      lower: returned when ``hi < 0``.
      same: returned otherwise.

    Returns:
      One of ``higher``, ``lower``, ``same``.

    Raises:
      ValueError: if ``difference`` is not an :class:`Interval` or its bounds are arrays (the
        interval of several quantities).

    Examples:
      >>> import jaxreg as jr
      >>> jr.stats.verdict(jr.stats.paired_difference([0.93, 0.95, 0.94], [0.90, 0.91, 0.92]))
      'higher'
      >>> jr.stats.verdict(jr.stats.paired_difference([0.93, 0.89, 0.94], [0.90, 0.91, 0.92]))
      'no difference detected at this size'
    """
    if not isinstance(difference, Interval):
        raise ValueError(
            f"verdict: difference must be an Interval (from stats.mean_interval or paired_difference), got "
            f"difference = {difference!r}."
        )
    lo, hi = _scalar(difference.lo, "verdict", "lo"), _scalar(difference.hi, "verdict", "hi")
    if np.isfinite(lo) and lo > 0:
        return higher
    if np.isfinite(hi) and hi < 0:
        return lower
    return same
