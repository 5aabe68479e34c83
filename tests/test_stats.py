"""Intervals over seeds against scipy's, and verdicts that flip when the interval covers 0."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

import jaxreg as jr

EPS64 = float(np.finfo(np.float64).eps)


def test_t_interval_equals_scipy():
    x = np.random.default_rng(0).normal(0.9, 0.02, size=7)
    lo, hi = scipy_stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    iv = jr.stats.mean_interval(x)
    np.testing.assert_allclose([iv.mean, iv.lo, iv.hi], [x.mean(), lo, hi], rtol=16 * EPS64)


def test_t_interval_over_an_axis_equals_scipy_per_column():
    x = np.random.default_rng(1).normal(size=(5, 3))
    iv = jr.stats.mean_interval(x, axis=0, confidence=0.9)
    for j in range(3):
        lo, hi = scipy_stats.t.interval(0.9, 4, loc=x[:, j].mean(), scale=scipy_stats.sem(x[:, j]))
        # mean - half can cancel: the error is relative to the magnitudes combined, not the result.
        np.testing.assert_allclose([iv.lo[j], iv.hi[j]], [lo, hi], rtol=0, atol=16 * EPS64 * np.abs(x).max())


def test_bootstrap_interval_agrees_with_scipy_within_monte_carlo_error():
    x = np.random.default_rng(2).exponential(size=20)
    ours = jr.stats.mean_interval(x, method="bootstrap", num_resamples=20_000)
    ref = scipy_stats.bootstrap((x,), np.mean, method="percentile", n_resamples=20_000, random_state=3)
    # Quantiles of 20,000 resampled means: Monte Carlo error of a 2.5% quantile is about
    # sqrt(q (1 - q) / n) / density ~ 0.1 standard errors of the mean; allow 0.3.
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert abs(ours.lo - ref.confidence_interval.low) < 0.3 * se
    assert abs(ours.hi - ref.confidence_interval.high) < 0.3 * se


def test_t_interval_covers_the_true_mean_at_its_nominal_rate():
    # 2,000 experiments of 5 seeds from N(0, 1): coverage 0.95, binomial sd 0.0049; allow 4 sd.
    x = np.random.default_rng(4).normal(size=(5, 2000))
    iv = jr.stats.mean_interval(x)
    coverage = np.mean((iv.lo <= 0) & (0 <= iv.hi))
    assert abs(coverage - 0.95) < 4 * np.sqrt(0.95 * 0.05 / 2000)


def test_verdict_flips_from_higher_to_no_difference_when_the_interval_covers_zero():
    base = np.array([0.90, 0.92, 0.91, 0.93])
    clearly = jr.stats.paired_difference(base + 0.02, base)  # the same +0.02 under every seed
    assert jr.stats.verdict(clearly) == "higher"
    noisy = jr.stats.paired_difference(base + np.array([0.02, -0.03, 0.01, -0.01]), base)
    assert noisy.lo < 0 < noisy.hi
    assert jr.stats.verdict(noisy) == "no difference detected at this size"
    assert jr.stats.verdict(jr.stats.paired_difference(base - 0.02, base)) == "lower"


def test_pairing_narrows_the_interval_when_seeds_share_noise():
    seed_noise = np.random.default_rng(5).normal(scale=0.05, size=6)
    a, b = 0.9 + seed_noise + 0.01, 0.9 + seed_noise
    paired = jr.stats.paired_difference(a, b)
    unpaired = jr.stats.mean_interval(a).hi - jr.stats.mean_interval(a).lo
    assert paired.hi - paired.lo < 1e-6 < unpaired


def test_one_seed_claims_no_interval():
    for method in ("t", "bootstrap"):
        iv = jr.stats.mean_interval([0.9], method=method)
        assert np.isnan(iv.lo) and np.isnan(iv.hi)
        assert type(iv.lo) is type(iv.hi) is type(iv.mean) is np.float64  # one quantity: numbers, as with 2 seeds
    assert jr.stats.verdict(jr.stats.paired_difference([0.95], [0.9])) == "no difference detected at this size"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: jr.stats.mean_interval(0.5), "mean_interval: values must have a seed axis"),
        (
            lambda: jr.stats.mean_interval([1.0, 2.0], confidence=1.5),
            r"confidence must be in \(0, 1\), got confidence = 1.5",
        ),
        (lambda: jr.stats.mean_interval([1.0, 2.0], method="z"), "method must be 't' or 'bootstrap', got method = 'z'"),
        (
            lambda: jr.stats.paired_difference([1.0, 2.0], [1.0]),
            "paired_difference: a and b must have one value per seed",
        ),
        (
            lambda: jr.stats.mean_interval([1.0, 2.0, 3.0], method="bootstrap", num_resamples=0),
            r"^mean_interval: num_resamples must be an int >= 1, got num_resamples = 0\.",
        ),
        (
            lambda: jr.stats.verdict(jr.stats.mean_interval(np.ones((3, 2)))),
            r"^verdict: expects the interval of one quantity, got lo\.shape = \(2,\)",
        ),
        (
            lambda: jr.stats.mean_interval(np.ones((3, 2))).format(),
            r"^Interval\.format: expects the interval of one quantity, got mean\.shape = \(2,\)",
        ),
        (
            lambda: jr.stats.mean_interval([]),
            r"^mean_interval: values must hold at least one seed, got values.shape = \(0,\)",
        ),
        (
            lambda: jr.stats.mean_interval(np.ones((3, 2)), axis=2),
            r"^mean_interval: axis must be an int in \[-2, 2\) for values of shape \(3, 2\), got axis = 2\.",
        ),
        (
            lambda: jr.stats.mean_interval(np.ones(3), axis=0.0),
            r"^mean_interval: axis must be an int .* got axis = 0\.0",
        ),
        (
            lambda: jr.stats.mean_interval(np.ones(3), method="bootstrap", seed=-1),
            r"^mean_interval: seed must be an int >= 0, got seed = -1\.",
        ),
        (
            lambda: jr.stats.mean_interval(np.ones(3), confidence="0.9"),
            r"^mean_interval: confidence must be in \(0, 1\), got confidence = '0.9'\.",
        ),
        (
            lambda: jr.stats.paired_difference(np.ones(2), ["x", "y"]),
            r"^paired_difference: b must be numbers, got b = \['x', 'y'\]\.",
        ),
        # paired_difference's own name and arguments, not mean_interval's nor the difference's value
        (
            lambda: jr.stats.paired_difference(1.0, 2.0),
            r"^paired_difference: a and b must have a seed axis, got scalars a = 1\.0, b = 2\.0\.",
        ),
        (
            lambda: jr.stats.paired_difference([], []),
            r"^paired_difference: a and b must hold at least one seed, got a\.shape = b\.shape = \(0,\)",
        ),
        (
            lambda: jr.stats.paired_difference([1.0, 2.0], [0.0, 1.0], axis=3),
            r"^paired_difference: axis must be an int in \[-1, 1\) for a and b of shape \(2,\), got axis = 3\.",
        ),
        (
            lambda: jr.stats.paired_difference([1.0, 2.0], [0.0, 1.0], confidence=2),
            r"^paired_difference: confidence must be in \(0, 1\), got confidence = 2\.",
        ),
        # numpy dropped the imaginary part with a warning and the interval was of the real parts
        (
            lambda: jr.stats.mean_interval(np.arange(5) + 1j),
            r"^mean_interval: values must be real numbers, got values of dtype complex128\.",
        ),
        (
            lambda: jr.stats.paired_difference([1.0, 2.0], [0.0, 1j]),
            r"^paired_difference: b must be real numbers, got b of dtype complex128\.",
        ),
    ],
    ids=[
        "scalar",
        "confidence",
        "method",
        "unpaired",
        "no-resamples",
        "verdict-of-arrays",
        "format-of-arrays",
        "empty",
        "axis-out-of-range",
        "axis-float",
        "negative-seed",
        "confidence-string",
        "paired-strings",
        "paired-scalars",
        "paired-empty",
        "paired-axis",
        "paired-confidence",
        "complex",
        "paired-complex",
    ],
)
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_paired_bootstrap_is_the_percentile_bootstrap_of_the_differences():
    # numpy's own resampling of the differences with the same generator and seed
    rng = np.random.default_rng(5)
    a = rng.normal(size=7)
    b = a - 0.1 + 0.05 * rng.normal(size=7)
    iv = jr.stats.paired_difference(a, b, method="bootstrap", num_resamples=500, seed=3)
    d = a - b
    means = d[np.random.default_rng(3).integers(0, 7, size=(500, 7))].mean(axis=1)
    np.testing.assert_allclose([iv.lo, iv.hi], np.quantile(means, [0.025, 0.975]), rtol=1e-12)


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_seeds_of_no_quantity_give_empty_intervals_as_numpy_gives_an_empty_mean(method):
    got = jr.stats.mean_interval(np.zeros((3, 0)), method=method)
    assert got.mean.shape == got.lo.shape == got.hi.shape == np.zeros((3, 0)).mean(axis=0).shape == (0,)
    with pytest.raises(
        ValueError, match=r"^mean_interval: values must hold at least one seed, got values.shape = \(3, 0\)"
    ):
        jr.stats.mean_interval(np.zeros((3, 0)), axis=1)


def test_verdict_and_mean_interval_name_what_is_not_theirs():
    with pytest.raises(
        ValueError, match=r"^verdict: difference must be an Interval .* got difference = \(0\.0, 1\.0, 2\.0\)"
    ):
        jr.stats.verdict((0.0, 1.0, 2.0))  # was AttributeError
    with pytest.raises(ValueError, match=r"^mean_interval: values must be numbers, got values = \['a', 'b'\]"):
        jr.stats.mean_interval(["a", "b"])


def test_format_prints_a_range_that_holds_an_asymmetric_interval():
    iv = jr.stats.Interval(np.float64(0.458), np.float64(0.257), np.float64(0.700))
    mean, half = (float(t) for t in iv.format().split(" ± "))
    assert mean == 0.458 and mean - half <= 0.257 and mean + half >= 0.700 and half == 0.242
    assert jr.stats.Interval(np.float64(0.5), np.float64(np.nan), np.float64(np.nan)).format() == "0.500"
    assert jr.stats.Interval(np.float64(0.5), np.float64(0.4), np.float64(np.nan)).format() == "0.500"
