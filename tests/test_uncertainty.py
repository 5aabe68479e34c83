"""Tests of jaxreg.uncertainty against numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr


def _np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _np_entropy(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)


@pytest.fixture
def logits():
    return np.random.default_rng(0).normal(size=(7, 5, 4)).astype(np.float64) * 2.0


def test_predictive_probs(logits):
    probs = _np_softmax(logits)
    np.testing.assert_allclose(np.asarray(jr.predictive_probs(jnp.asarray(logits))), probs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(jr.predictive_probs(jnp.asarray(probs), from_logits=False)), probs.mean(0), rtol=1e-5
    )


def test_entropies_and_bald_match_numpy(logits):
    probs = _np_softmax(logits)
    pe = _np_entropy(probs.mean(0))
    ee = _np_entropy(probs).mean(0)
    for samples, from_logits in ((logits, True), (probs, False)):
        s = jnp.asarray(samples, jnp.float32)
        np.testing.assert_allclose(np.asarray(jr.predictive_entropy(s, from_logits=from_logits)), pe, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(jr.expected_entropy(s, from_logits=from_logits)), ee, rtol=1e-5)
        np.testing.assert_allclose(
            np.asarray(jr.mutual_information(s, from_logits=from_logits)), pe - ee, rtol=1e-4, atol=1e-6
        )
    assert np.all(pe - ee >= -1e-12)  # Jensen: the reference itself is non-negative


def test_limits_of_agreement_and_disagreement():
    same = jnp.tile(jnp.array([[0.7, 0.2, 0.1]]), (5, 1))
    assert float(jr.mutual_information(same, from_logits=False)) == pytest.approx(0.0, abs=1e-6)
    confident_disagree = jnp.eye(3)  # three members, each sure of a different class
    assert float(jr.mutual_information(confident_disagree, from_logits=False)) == pytest.approx(np.log(3), rel=1e-6)
    assert float(jr.expected_entropy(confident_disagree, from_logits=False)) == pytest.approx(0.0, abs=1e-7)


def _np_ece(probs, labels, num_bins):
    conf = probs.max(-1)
    correct = (probs.argmax(-1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    total = 0.0
    for b in range(num_bins):
        lo, hi = edges[b], edges[b + 1]
        inside = (conf > lo) & (conf <= hi) if b > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("num_bins", [1, 5, 15])
def test_ece_matches_numpy(num_bins):
    rng = np.random.default_rng(1)
    probs = _np_softmax(rng.normal(size=(500, 6)) * 3.0)
    labels = rng.integers(0, 6, size=500)
    got = float(jr.expected_calibration_error(jnp.asarray(probs, jnp.float32), jnp.asarray(labels), num_bins=num_bins))
    assert got == pytest.approx(_np_ece(probs, labels, num_bins), abs=1e-5)


def test_ece_perfect_calibration_is_zero():
    # Confidence 1 and always right.
    probs = jax.nn.one_hot(jnp.array([0, 1, 2, 1]), 3)
    assert float(jr.expected_calibration_error(probs, jnp.array([0, 1, 2, 1]))) == 0.0


def test_prediction_namedtuple():
    p = jr.Prediction(jnp.zeros(2), jnp.array([4.0, 9.0]))
    mean, variance = p
    assert mean.shape == (2,) and variance is p.variance
    np.testing.assert_allclose(np.asarray(p.std), [2.0, 3.0])


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (jr.predictive_entropy, (jnp.ones(3),), r"samples.shape = \(3,\)"),
        (jr.mutual_information, (jnp.ones(3),), r"samples.shape = \(3,\)"),
        (jr.expected_calibration_error, (jnp.ones((4, 2)), jnp.zeros(3, jnp.int32)), r"labels.shape = \(3,\)"),
    ],
)
def test_bad_shapes(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_ece_bad_num_bins():
    with pytest.raises(ValueError, match="num_bins = 0"):
        jr.expected_calibration_error(jnp.ones((2, 2)) / 2, jnp.zeros(2, jnp.int32), num_bins=0)
