"""Tests of jaxreg.uncertainty against numpy formulas."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr

EPS32 = float(np.finfo(np.float32).eps)
# float32 vs float64 numpy for softmax/log/entropy of 7 samples x 4 classes: each entropy term
# -p log p >= 0 (no cancellation) after ~8 rounded ops (exp, sum of 4, divide, log, logsumexp of
# 7): ~20 eps relative, doubled.
RTOL = 40 * EPS32


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
    logits32 = jnp.asarray(logits, jnp.float32)
    np.testing.assert_allclose(np.asarray(jr.predictive_probs(logits32)), probs.mean(0), rtol=RTOL)
    np.testing.assert_allclose(
        np.asarray(jr.predictive_probs(jnp.asarray(probs, jnp.float32), from_logits=False)), probs.mean(0), rtol=RTOL
    )


def test_entropies_and_bald_match_numpy(logits):
    probs = _np_softmax(logits)
    pe = _np_entropy(probs.mean(0))
    ee = _np_entropy(probs).mean(0)
    for samples, from_logits in ((logits, True), (probs, False)):
        s = jnp.asarray(samples, jnp.float32)
        np.testing.assert_allclose(np.asarray(jr.predictive_entropy(s, from_logits=from_logits)), pe, rtol=RTOL)
        np.testing.assert_allclose(np.asarray(jr.expected_entropy(s, from_logits=from_logits)), ee, rtol=RTOL)
        # pe - ee cancels: its error is that of pe and ee, relative to pe (<= log 4), not to pe - ee.
        np.testing.assert_allclose(
            np.asarray(jr.mutual_information(s, from_logits=from_logits)), pe - ee, rtol=0, atol=2 * RTOL * np.max(pe)
        )
    assert np.all(pe - ee >= -1e-12)  # Jensen: the reference itself is non-negative


@pytest.mark.parametrize("fn", [jr.predictive_entropy, jr.expected_entropy, jr.mutual_information])
def test_an_impossible_class_has_zero_gradient_and_changes_nothing(fn, logits):
    # A class with logit -inf (probability 0 in every sample) contributes 0 log 0 = 0: the value
    # and the other classes' gradients are those of the problem without it, and its own gradient
    # is 0, not NaN (a masked softmax, a pruned class).
    z = jnp.asarray(logits, jnp.float32)
    with_impossible = z.at[..., 1].set(-jnp.inf)
    without = jnp.delete(z, 1, axis=-1)
    for from_logits, given, reduced in (
        (True, with_impossible, without),
        (False, jax.nn.softmax(with_impossible, axis=-1), jax.nn.softmax(without, axis=-1)),
    ):
        total = functools.partial(lambda x, f: jnp.sum(fn(x, from_logits=f)), f=from_logits)
        value, grad = jax.value_and_grad(total)(given)
        ref_value, ref_grad = jax.value_and_grad(total)(reduced)
        np.testing.assert_allclose(value, ref_value, rtol=RTOL)
        assert np.all(np.asarray(grad[..., 1]) == 0.0)
        np.testing.assert_allclose(
            jnp.delete(grad, 1, axis=-1), ref_grad, rtol=RTOL, atol=RTOL * float(jnp.max(jnp.abs(ref_grad)))
        )


def test_limits_of_agreement_and_disagreement():
    same = jnp.tile(jnp.array([[0.7, 0.2, 0.1]]), (5, 1))
    # H of 3 classes is ~0.8: identical rows cancel to a few ulp of it (or exactly, then clipped at 0).
    assert float(jr.mutual_information(same, from_logits=False)) == pytest.approx(0.0, abs=8 * EPS32)
    confident_disagree = jnp.eye(3)  # three members, each sure of a different class
    # log(3) from a float32 logsumexp: a few ulp.
    assert float(jr.mutual_information(confident_disagree, from_logits=False)) == pytest.approx(
        np.log(3), rel=8 * EPS32
    )
    assert float(jr.expected_entropy(confident_disagree, from_logits=False)) == 0.0  # 0 log 0 is taken as 0


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
    # A sum over 500 examples of |acc - conf| / n terms in float32 scatter-adds (<= 500 terms of
    # magnitude <= 1 per bin): 500 eps absolute, bounded; bin edges agree (conf is float32 in both).
    assert got == pytest.approx(_np_ece(probs.astype(np.float32).astype(np.float64), labels, num_bins), abs=500 * EPS32)


@pytest.mark.parametrize("dtype", [jnp.bool_, jnp.uint8, jnp.int8, jnp.int32])
def test_ece_of_integer_one_hot_probabilities_is_the_float_ece(dtype):
    # Sums in the probabilities' own narrow integers wrapped: a uint8 ECE of 63.75, an int8 of 0.15
    # for 1.0. 300 confident, always wrong examples: ECE 1; and a 4-example case of 0.25.
    wrong = jax.nn.one_hot(jnp.zeros(300, jnp.int32), 2).astype(dtype)
    assert float(jr.expected_calibration_error(wrong, jnp.ones(300, jnp.int32))) == 1.0
    probs = jnp.array([[1, 0], [0, 1], [1, 0], [0, 1]]).astype(dtype)
    labels = np.array([0, 0, 0, 1])
    assert float(jr.expected_calibration_error(probs, labels)) == _np_ece(np.asarray(probs, np.float64), labels, 15)


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_ece_under_x64_is_numpys_float64_ece(label_dtype):
    # argmax is int64 under x64 and the labels were int32: strict promotion (on for the tests)
    # refused comparing them, for every label dtype.
    rng = np.random.default_rng(3)
    probs = _np_softmax(rng.normal(size=(200, 2)) * 2.0)
    labels = rng.integers(0, 2, size=200).astype(label_dtype)
    with jax.enable_x64(True):
        got = jr.expected_calibration_error(jnp.asarray(probs, jnp.float64), jnp.asarray(labels))
        assert got.dtype == jnp.float64
    # float64 sums of 200 terms <= 1: 200 ulps
    assert float(got) == pytest.approx(_np_ece(probs, labels.astype(np.int64), 15), abs=200 * np.finfo(np.float64).eps)


def test_integer_samples_give_the_float_moments_and_entropies():
    # Under strict dtype promotion (on for the tests) integer or bool samples met a float and
    # failed; their statistics are those of the same values as floats.
    ints = jnp.array([[[1, 0, 0]], [[0, 1, 0]], [[0, 1, 0]]], jnp.int32)
    floats = ints.astype(jnp.float32)
    for fn in (jr.predictive_probs, jr.predictive_entropy, jr.expected_entropy, jr.mutual_information):
        for from_logits in (True, False):
            chex.assert_trees_all_equal(fn(ints, from_logits=from_logits), fn(floats, from_logits=from_logits))
    counts = jnp.arange(12).reshape(4, 3) % 5
    pred = jr.Prediction.from_samples({"n": counts, "flag": counts > 2})
    ref = np.asarray(counts, np.float64)
    # means of 4 small integers and their squared deviations: exact in float32 but for the 1/4 and
    # 1/3-like quotients, one rounding each
    np.testing.assert_allclose(pred.mean["n"], ref.mean(0), rtol=EPS32, atol=0)
    np.testing.assert_allclose(pred.variance["n"], ref.var(0), rtol=2 * EPS32, atol=0)
    np.testing.assert_allclose(pred.mean["flag"], (ref > 2).mean(0), rtol=EPS32, atol=0)


@pytest.mark.parametrize(
    ("samples", "shapes"),
    [
        (jnp.float32(2.0), r"\[\(\)\]"),
        (jnp.ones((0, 2)), r"\[\(0, 2\)\]"),
        ({"a": jnp.ones((3,)), "b": jnp.ones((2, 1))}, r"\[\(3,\), \(2, 1\)\]"),
        ({}, r"\[\]"),
    ],
    ids=["scalar", "no-sample", "disagree", "empty"],
)
def test_from_samples_refuses_what_has_no_sample_axis(samples, shapes):
    # a scalar failed with an IndexError, zero samples gave NaN silently
    with pytest.raises(
        ValueError, match=r"^Prediction.from_samples: samples must be arrays .* got leaf shapes " + shapes
    ):
        jr.Prediction.from_samples(samples)


def test_ece_perfect_calibration_is_zero():
    # Confidence 1 and always right.
    probs = jax.nn.one_hot(jnp.array([0, 1, 2, 1]), 3)
    assert float(jr.expected_calibration_error(probs, jnp.array([0, 1, 2, 1]))) == 0.0


def test_prediction_namedtuple():
    p = jr.Prediction(jnp.zeros(2), jnp.array([4.0, 9.0]))
    mean, variance = p
    assert mean.shape == (2,) and variance is p.variance
    np.testing.assert_array_equal(np.asarray(p.std), [2.0, 3.0])  # sqrt of a perfect square is exact (IEEE)


def test_prediction_from_samples_matches_float64_numpy_on_pytrees():
    rng = np.random.default_rng(2)
    samples = {"a": rng.normal(size=(9, 3)) * 2 + 5, "b": (rng.normal(size=(9,)),)}
    p = jr.Prediction.from_samples(jax.tree.map(lambda s: jnp.asarray(s, jnp.float32), samples))
    for got_m, got_v, ref in zip(jax.tree.leaves(p.mean), jax.tree.leaves(p.variance), jax.tree.leaves(samples)):
        ref32 = ref.astype(np.float32).astype(np.float64)  # the values the float32 code sees
        scale = np.max(np.abs(ref32))
        # A float32 mean of 9 terms: 9 eps of the largest; squared deviations twice that of scale^2.
        np.testing.assert_allclose(np.asarray(got_m), ref32.mean(0), rtol=0, atol=9 * EPS32 * scale)
        np.testing.assert_allclose(np.asarray(got_v), ref32.var(0), rtol=0, atol=18 * EPS32 * scale**2)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 10])
def test_predict_chunked_equals_moments_of_all_samples(chunk):
    # Chan's merge across chunks: on samples with a large common offset (1000 + N(0, 1)), a naive
    # E[y^2] - E[y]^2 would lose everything; the merged M2 stays within a few ulp of the offset
    # times the deviations.
    items = jnp.asarray(np.random.default_rng(3).normal(size=(10, 4)), jnp.float32)
    p = jax.jit(lambda it: jr.uncertainty.predict_chunked(lambda x: 1000.0 + x, it, chunk))(items)
    ref = np.asarray(1000.0 + items, np.float64)
    np.testing.assert_allclose(np.asarray(p.mean), ref.mean(0), rtol=0, atol=10 * EPS32 * 1000)
    dev = float(np.max(np.abs(ref - ref.mean(0))))
    np.testing.assert_allclose(np.asarray(p.variance), ref.var(0), rtol=0, atol=64 * EPS32 * 1000 * dev)


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (jr.predictive_entropy, (jnp.ones(3),), r"samples.shape = \(3,\)"),
        (jr.mutual_information, (jnp.ones(3),), r"samples.shape = \(3,\)"),
        # jax's TypeError ("Error interpreting argument") named no argument
        (
            jr.predictive_entropy,
            (np.array([["a", "b"]]),),
            r"^predictive_entropy: samples must be numbers, got samples of dtype <U1",
        ),
        (jr.expected_calibration_error, (jnp.ones((4, 2)), jnp.zeros(3, jnp.int32)), r"labels.shape = \(3,\)"),
        # complex logits gave a complex entropy, (1.0986-0j)
        (
            jr.predictive_entropy,
            (jnp.ones((2, 3), jnp.complex64),),
            r"^predictive_entropy: samples is complex \(complex64\); entropies are of real",
        ),
        (jr.mutual_information, (jnp.ones((2, 3), jnp.complex64),), r"^mutual_information: samples is complex"),
    ],
)
def test_bad_shapes(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_ece_bad_num_bins():
    with pytest.raises(ValueError, match="num_bins = 0"):
        jr.expected_calibration_error(jnp.ones((2, 2)) / 2, jnp.zeros(2, jnp.int32), num_bins=0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("n", [4096, 70_000])
def test_ece_of_half_precision_probabilities_is_the_float64_ece_of_the_same_values(dtype, n):
    # bin sums of thousands of examples stall in bfloat16 (past 256) and overflow in float16
    rng = np.random.default_rng(3)
    probs = _np_softmax(rng.normal(size=(n, 10)) * 2.0)
    labels = rng.integers(0, 10, size=n)
    half = jnp.asarray(probs, dtype)
    got = float(jr.expected_calibration_error(half, jnp.asarray(labels)))
    # the reference on the rounded values: float32 sums of n terms <= 1 per bin (n eps of 1, over n)
    assert got == pytest.approx(_np_ece(np.asarray(half, np.float64), labels, 15), abs=64 * EPS32)


def test_ece_bins_confidences_just_above_an_edge_above_it():
    # float32(2/3) = 0.66666669 > 10/15: bin 11 of 15, as Guo et al.'s float64 edges put it;
    # float32 ceil(conf * 15) rounds 10.0000003 to 10 (bin 10)
    conf = np.float32(2 / 3)
    assert np.float64(conf) > 10 / 15
    probs = np.array([[conf, 1 - conf]] * 3 + [[0.61, 0.39]], np.float32)
    labels = np.array([0, 1, 1, 0])
    got = float(jr.expected_calibration_error(jnp.asarray(probs), jnp.asarray(labels)))
    # in different bins: |1/3 - 2/3| * 3/4 + |1 - 0.61| / 4; in one bin it would be |2/4 - 2.61/4|
    expected = abs(1 / 3 - float(conf)) * 3 / 4 + (1 - float(np.float32(0.61))) / 4
    assert got == pytest.approx(expected, abs=8 * EPS32)
    assert got == pytest.approx(_np_ece(probs.astype(np.float64), labels, 15), abs=8 * EPS32)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("fn", [jr.predictive_entropy, jr.expected_entropy, jr.mutual_information])
def test_a_nan_sample_gives_nan_not_certainty(fn, from_logits):
    # a diverged member must not read as the most confident prediction (scipy: entropy of NaN is NaN)
    good = np.array([0.2, 0.8]) if not from_logits else np.array([0.0, 1.0])
    samples = jnp.asarray([good, [np.nan, good[1]]], jnp.float32)
    assert np.isnan(float(fn(samples, from_logits=from_logits)))
    assert np.isnan(float(fn(samples[1:], from_logits=from_logits)))


@pytest.mark.parametrize("fn", [jr.predictive_probs, jr.predictive_entropy, jr.expected_entropy, jr.mutual_information])
def test_logits_passed_as_probabilities_are_refused(fn):
    # They gave NaN entropies and negative "probabilities"; under jit they cannot be checked.
    logits = jnp.array([[2.0, -1.0], [0.5, 0.3]])
    with pytest.raises(ValueError, match=rf"{fn.__name__}: with from_logits=False samples must be probabilities"):
        fn(logits, from_logits=False)
    probs = jax.nn.softmax(logits, axis=-1)
    np.testing.assert_allclose(fn(probs, from_logits=False), fn(logits), rtol=8 * EPS32, atol=8 * EPS32)
    # Under jit they are checked under traced_checks (NaN passes: a diverged member).
    from jax.experimental import checkify

    checked = checkify.checkify(jax.jit(lambda s: fn(s, from_logits=False)))
    with jr.traced_checks():
        err = checked(logits)[0].get()
        ok = checked(jnp.asarray([[0.2, 0.8], [np.nan, 0.8]]))[0].get()
    assert err is not None and err.startswith(f"{fn.__name__}: with from_logits=False samples must be probabilities")
    assert ok is None


def test_gradient_of_predictive_entropy_at_a_zero_probability_of_a_possible_class():
    # H(p_bar) depends on p only through p_bar: dH/dp_s,c = -(log p_bar_c + 1) / S, finite where
    # another sample makes the class possible (p_bar_c > 0) even if p_s,c = 0
    p = jnp.array([[0.5, 0.5, 0.0], [0.2, 0.0, 0.8]], jnp.float32)
    g = np.asarray(jax.grad(lambda p: jr.predictive_entropy(p, from_logits=False))(p), np.float64)
    p_bar = np.asarray(p, np.float64).mean(0)
    expected = np.broadcast_to(-(np.log(p_bar) + 1) / 2, (2, 3))
    np.testing.assert_allclose(g, expected, rtol=8 * EPS32)


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (jnp.array([[2.0, -1.0], [0.5, 0.5]]), r"probs must be in \[0, 1\], got probs ="),
        (jnp.array([[np.nan, 0.5], [0.5, 0.5]]), r"probs must be in \[0, 1\], got probs ="),
        (jnp.zeros((0, 3)), r"probs needs at least one example, got probs.shape = \(0, 3\)"),
    ],
)
def test_ece_refuses_what_is_not_probabilities(probs, match):
    with pytest.raises(ValueError, match=match):
        jr.expected_calibration_error(probs, jnp.zeros(probs.shape[0], jnp.int32))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        # 1-based labels, a -1 "ignore" label, float labels: each gave a silently wrong ECE.
        (jnp.array([1, 2, 3]), r"labels must be class indices in \[0, 3\), got labels = \[3\] \(out of range\)"),
        (jnp.array([0, -1, 2]), r"labels must be class indices in \[0, 3\), got labels = \[-1\]"),
        (jnp.array([0.0, 1.0, 2.0]), r"labels must be integer class labels, got labels of dtype float32"),
    ],
)
def test_ece_refuses_labels_that_are_not_class_indices(labels, match):
    probs = jnp.full((3, 3), 1 / 3)
    with pytest.raises(ValueError, match="expected_calibration_error: " + match):
        jr.expected_calibration_error(probs, labels)
    jr.expected_calibration_error(probs, jnp.array([0, 1, 2]))  # the same shapes, in range: fine
    binary = jnp.array([[0.9, 0.1], [0.2, 0.8]])
    assert jr.expected_calibration_error(binary, jnp.array([False, True])) == jr.expected_calibration_error(
        binary, jnp.array([0, 1])
    )  # bools are binary labels


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7])
def test_chunked_float64_predictions_are_numpys_float64_moments(chunk_size):
    # Under x64 the chunks' merge weights are float64 too: every chunking agrees with numpy's
    # float64 mean and (ddof=0) variance to a few float64 ulps (float32 weights gave 1e-8).
    ys = np.random.default_rng(0).normal(size=(7, 5)) + 1.0

    def pick(w, x, r):
        return w[jax.random.randint(r, (), 0, 7)] * x

    with jax.enable_x64(True):
        p = jr.ensemble.predict(lambda w, x: w * x, jnp.asarray(ys), 1.0, chunk_size=chunk_size)
        m = jr.mc_dropout(pick, jnp.asarray(ys), 1.0, jax.random.key(0), 16, chunk_size=chunk_size)
        draws = np.asarray(jr.mc_dropout_samples(pick, jnp.asarray(ys), 1.0, jax.random.key(0), 16, chunk_size=16))
    eps = np.finfo(np.float64).eps
    for pred, samples in [(p, ys), (m, draws)]:
        assert pred.mean.dtype == np.float64
        np.testing.assert_allclose(pred.mean, samples.mean(0), rtol=0, atol=16 * eps * np.abs(samples).max())
        np.testing.assert_allclose(pred.variance, samples.var(0), rtol=64 * eps)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("chunk_size", [1, 8, 1024])
def test_half_precision_predictions_are_accumulated_in_float32(dtype, chunk_size):
    # Dropout at rate 0.5 on 3.0: every sample is 0 or 6 (exact in both dtypes), variance near 9.
    # Merged in bfloat16 one sample at a time, the squared deviations stalled at a variance of 4.
    # Accumulated in float32 and rounded once, each chunking gives numpy's float64 moments of
    # the same samples to half an ulp of the output dtype.
    def f(p, x, k):
        return jr.dropout(k, x, 0.5)

    x, key = jnp.full((4,), 3.0, dtype), jax.random.key(0)
    draws = np.asarray(jr.mc_dropout_samples(f, None, x, key, 1024).astype(jnp.float32), np.float64)
    pred = jr.mc_dropout(f, None, x, key, 1024, chunk_size=chunk_size)
    eps = float(jnp.finfo(dtype).eps)
    for got, ref in [(pred.mean, draws.mean(0)), (pred.variance, draws.var(0))]:
        assert got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), ref, rtol=eps / 2 + 1024 * EPS32)
    members = jnp.asarray(draws, dtype)  # the same values as an ensemble's outputs
    ens = jr.ensemble.predict(lambda w, _: w, members, None, chunk_size=chunk_size)
    for got, ref in [(ens.mean, draws.mean(0)), (ens.variance, draws.var(0))]:
        assert got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), ref, rtol=eps / 2 + 1024 * EPS32)


@pytest.mark.parametrize(
    ("items", "chunk", "match"),
    [
        (
            jnp.arange(0.0),
            2,
            r"items must be arrays sharing a leading axis of at least one item, got leading sizes \[0\]",
        ),
        (jnp.arange(4.0), 0, r"chunk must be an int >= 1, got chunk = 0"),
    ],
)
def test_predict_chunked_names_empty_items_and_a_zero_chunk(items, chunk, match):
    with pytest.raises(ValueError, match=r"^predict_chunked: " + match):
        jr.uncertainty.predict_chunked(lambda i: 2.0 * i, items, chunk)


def test_predict_chunked_names_consts_that_are_not_a_tuple_and_outputs_that_are_not_arrays():
    x = jnp.arange(3.0)
    # an array was unpacked row by row: "<lambda>() takes 2 positional arguments but 4 were given"
    with pytest.raises(
        ValueError, match=r"^predict_chunked: consts must be a tuple of arguments, got consts of type jax.Array"
    ):
        jr.uncertainty.predict_chunked(lambda i, v: v * i, jnp.arange(4.0), 2, consts=x)
    p = jr.uncertainty.predict_chunked(lambda i, v: v * i, jnp.arange(4.0), 2, consts=(x,))
    np.testing.assert_allclose(p.mean, 1.5 * x, rtol=1e-6)
    # a forgotten return: an IndexError from inside the merge
    with pytest.raises(ValueError, match=r"^ensemble.predict: apply_fn must return arrays, got None"):
        jr.ensemble.predict(lambda p, v: None, {"w": jnp.ones((2, 3))}, x)
    with pytest.raises(ValueError, match=r"^mc_dropout: apply_fn must return arrays, got None"):
        jr.mc_dropout(lambda p, v, k: None, {}, x, jax.random.key(0), 4)
