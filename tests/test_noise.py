"""Tests of jr.drop_path, jr.gaussian_dropout, jr.gaussian_noise, jr.dropconnect and jr.mc_dropconnect.

Statistical checks use fixed keys and a bound of 6 standard errors of the statistic compared.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxreg as jr

SIGMAS = 6.0


def _assert_within(observed, expected, std, sigmas=SIGMAS):
    assert abs(observed - expected) <= sigmas * std, f"observed {observed}, expected {expected} +- {sigmas} * {std}"


def _timm_drop_path(x, keep_mask, rate):
    """timm.layers.drop_path in float64: random_tensor = bernoulli(keep_prob) / keep_prob; x * random_tensor."""
    keep_prob = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return np.asarray(x, np.float64) * (keep_mask.reshape(shape) / keep_prob)


# ---------------------------------------------------------------------------------------------
# drop_path


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_drop_path_whole_examples_and_timm_values(rate):
    n = 20_000
    x = jax.random.normal(jax.random.key(0), (n, 3, 2)) + 3.0  # no zeros in x
    y = np.asarray(jr.drop_path(jax.random.key(1), x, rate))
    flat = y.reshape(n, -1)
    kept = np.any(flat != 0, axis=1)
    # Per-example structure: an example is dropped entirely or kept entirely.
    assert np.all(np.all(flat != 0, axis=1) == kept)
    # Values: timm's formula with the same mask, in float64; float32 rounds 1/keep and the product
    # (2 ulp relative).
    np.testing.assert_allclose(y, _timm_drop_path(np.asarray(x), kept.astype(np.float64), rate), rtol=3e-7)
    _assert_within(kept.mean(), 1.0 - rate, math.sqrt(rate * (1 - rate) / n))


def test_drop_path_unbiased_per_example():
    x = jnp.linspace(-2.0, 2.0, 8 * 4).reshape(8, 4)
    rate, k = 0.3, 4000
    ys = np.asarray(jax.vmap(lambda key: jr.drop_path(key, x, rate))(jax.random.split(jax.random.key(2), k)))
    mean = ys.mean(0)
    # y = x b / keep with b ~ Bernoulli(keep): sd x * sqrt(rate / keep), standard error over k draws.
    se = np.abs(np.asarray(x)) * math.sqrt(rate / (1 - rate) / k)
    assert np.all(np.abs(mean - np.asarray(x)) <= SIGMAS * se + 1e-6), np.max(np.abs(mean - np.asarray(x)) / se)
    # Different examples get independent decisions: the empirical correlation of two examples'
    # keep indicators is within 6 / sqrt(k) of 0.
    keep = ys[:, :, 0] != 0
    corr = np.corrcoef(keep[:, 0], keep[:, 1])[0, 1]
    assert abs(corr) <= SIGMAS / math.sqrt(k), corr


def test_drop_path_zero_rate_is_identity_without_random_bits():
    x = jnp.arange(6.0).reshape(3, 2)
    assert jr.drop_path(jax.random.key(0), x, 0.0) is x
    key = jax.random.key(0)
    jaxpr = jax.make_jaxpr(lambda v: jr.drop_path(key, v, 0.0))(x)
    assert not jaxpr.jaxpr.eqns, jaxpr


def test_drop_path_rate_sweep_is_vmap_without_retrace():
    x = jax.random.normal(jax.random.key(3), (64, 5))
    key = jax.random.key(4)
    rates = jnp.array([0.0, 0.25, 0.5, 0.75], jnp.float32)

    def g(rate):
        return jr.drop_path(key, x, rate)

    f = jax.jit(chex.assert_max_traces(g, n=1))
    swept = np.asarray(jax.jit(jax.vmap(g))(rates))
    for i, r in enumerate(rates.tolist()):
        one = np.asarray(f(jnp.float32(r)))  # traced rate, one compile for every value
        np.testing.assert_array_equal(swept[i], one)
    # A traced rate of 0 keeps everything (scale exactly 1).
    np.testing.assert_array_equal(swept[0], np.asarray(x))


def test_drop_path_keeps_bfloat16():
    x = jnp.ones((16, 3), jnp.bfloat16)
    y = jr.drop_path(jax.random.key(0), x, 0.5)
    assert y.dtype == jnp.bfloat16
    assert set(np.unique(np.asarray(y, np.float32)).tolist()) <= {0.0, 2.0}


# ---------------------------------------------------------------------------------------------
# Gaussian dropout and noise


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_gaussian_dropout_matches_keras_distribution(rate):
    n = 100_000
    y = np.asarray(jr.gaussian_dropout(jax.random.key(5), jnp.ones(n), rate), np.float64)
    var = rate / (1 - rate)  # keras GaussianDropout: stddev = sqrt(rate / (1 - rate)), mean 1
    _assert_within(y.mean(), 1.0, math.sqrt(var / n))
    _assert_within(y.var(ddof=1), var, var * math.sqrt(2.0 / (n - 1)))  # sd of a normal sample variance
    ks = scipy.stats.kstest((y - 1.0) / math.sqrt(var), "norm")
    assert ks.pvalue > 1e-3, ks


def test_gaussian_dropout_rate_just_below_one_is_finite_as_keras():
    # 1 - 1e-9 passes the check (< 1) but is 1.0 in float32: keras computes the stddev of a
    # Python float rate in float64, sqrt(rate / (1 - rate)) ~ 31623, not inf.
    rate = 1 - 1e-9
    x = jnp.array([0.0, 1.0, 2.0])
    y = np.asarray(jr.gaussian_dropout(jax.random.key(0), x, rate))
    assert np.all(np.isfinite(y)) and y[0] == 0.0
    eps = np.asarray(jr.gaussian_dropout(jax.random.key(0), jnp.ones(3), rate), np.float64) - 1.0
    z = np.asarray(jax.random.normal(jax.random.key(0), (3,), jnp.float32), np.float64)
    np.testing.assert_allclose(eps, math.sqrt(rate / (1 - rate)) * z, rtol=4 * np.finfo(np.float32).eps)


def test_gaussian_dropout_is_multiplicative():
    key = jax.random.key(6)
    x = jnp.linspace(-3.0, 3.0, 50)
    noise = jr.gaussian_dropout(key, jnp.ones(50), 0.4)
    # The same key gives the same epsilon: y = x * eps (one float32 product, 1 ulp).
    np.testing.assert_allclose(np.asarray(jr.gaussian_dropout(key, x, 0.4)), np.asarray(x * noise), rtol=2.4e-7)


def test_gaussian_noise_distribution_and_additivity():
    n, stddev = 100_000, 0.7
    key = jax.random.key(7)
    x = jnp.linspace(-1.0, 1.0, n)
    e = np.asarray(jr.gaussian_noise(key, x, stddev), np.float64) - np.asarray(x, np.float64)
    _assert_within(e.mean(), 0.0, stddev / math.sqrt(n))
    _assert_within(e.var(ddof=1), stddev**2, stddev**2 * math.sqrt(2.0 / (n - 1)))
    ks = scipy.stats.kstest(e / stddev, "norm")
    assert ks.pvalue > 1e-3, ks
    # Additive with the same key: y(x) - x does not depend on x (up to one rounding of |y| <= ~5).
    e0 = np.asarray(jr.gaussian_noise(key, jnp.zeros(n), stddev), np.float64)
    np.testing.assert_allclose(e, e0, atol=4 * np.finfo(np.float32).eps * 5)


@pytest.mark.parametrize("fn", [jr.gaussian_dropout, jr.gaussian_noise])
def test_gaussian_zero_is_identity(fn):
    x = jnp.arange(4.0)
    assert fn(jax.random.key(0), x, 0.0) is x


def test_gaussian_sweeps_are_vmaps():
    key = jax.random.key(8)
    x = jnp.ones(20_000)
    values = jnp.array([0.0, 0.2, 0.5], jnp.float32)
    drop = np.asarray(jax.jit(jax.vmap(lambda r: jr.gaussian_dropout(key, x, r)))(values), np.float64)
    noise = np.asarray(jax.jit(jax.vmap(lambda s: jr.gaussian_noise(key, x, s)))(values), np.float64)
    np.testing.assert_array_equal(drop[0], 1.0)
    np.testing.assert_array_equal(noise[0], 1.0)
    for i, v in enumerate(values.tolist()[1:], start=1):
        var = v / (1 - v)
        _assert_within(drop[i].var(ddof=1), var, var * math.sqrt(2.0 / (x.size - 1)))
        _assert_within(noise[i].var(ddof=1), v**2, v**2 * math.sqrt(2.0 / (x.size - 1)))


# ---------------------------------------------------------------------------------------------
# DropConnect


def test_dropconnect_masks_selected_leaves_only():
    params = {"w": jnp.full((300, 200), 2.0), "b": jnp.full((200,), 5.0), "step": jnp.array(3, jnp.int32)}
    rate = 0.25
    out = jr.dropconnect(jax.random.key(9), params, rate, mask=jr.masks.kernels)
    np.testing.assert_array_equal(np.asarray(out["b"]), np.asarray(params["b"]))
    assert out["step"] is params["step"]
    w = np.asarray(out["w"])
    assert set(np.unique(w).tolist()) == {0.0, np.float32(2.0) * (np.float32(1.0) / np.float32(0.75))}
    _assert_within((w != 0).mean(), 1 - rate, math.sqrt(rate * (1 - rate) / w.size))


def test_dropconnect_leaves_get_independent_masks():
    params = [jnp.ones((100, 100)), jnp.ones((100, 100))]
    a, b = (np.asarray(v) != 0 for v in jr.dropconnect(jax.random.key(10), params, 0.5))
    # Independent Bernoulli(1/2) masks agree on half the entries: 6 standard errors.
    _assert_within((a == b).mean(), 0.5, math.sqrt(0.25 / a.size))


def test_mc_dropconnect_linear_model_closed_form():
    # f(W, x) = x @ W: mean x @ W, variance sum_i x_i^2 W_i^2 rate / keep (independent masks).
    d, rate, k = 50, 0.4, 4000
    w = jnp.linspace(0.5, 1.5, d).reshape(d, 1)
    x = jnp.linspace(-1.0, 1.0, 2 * d).reshape(2, d)
    pred = jax.jit(lambda r: jr.mc_dropconnect(lambda p, v: v @ p, w, x, jax.random.key(11), k, r))(rate)
    xs, ws = np.asarray(x, np.float64), np.asarray(w, np.float64)
    mean = xs @ ws
    var = (xs**2) @ (ws**2) * rate / (1 - rate)
    np.testing.assert_array_less(np.abs(np.asarray(pred.mean) - mean), SIGMAS * np.sqrt(var / k))
    # sd of a sample variance of a near-normal sum: var * sqrt(2 / (k - 1)).
    np.testing.assert_array_less(np.abs(np.asarray(pred.variance) - var), SIGMAS * var * math.sqrt(2.0 / (k - 1)))


def test_mc_dropconnect_is_mean_and_variance_of_dropconnect_samples():
    # The documented key contract: mask k uses jax.random.split(rng, K)[k], as jr.mc_dropout.
    w = {"w": jax.random.normal(jax.random.key(12), (6, 3)), "b": jnp.ones(3)}
    x = jax.random.normal(jax.random.key(13), (4, 6))

    def apply_fn(p, v):
        return jnp.tanh(v @ p["w"] + p["b"][None, :])

    rng, k = jax.random.key(14), 16
    one = jax.vmap(lambda key: apply_fn(jr.dropconnect(key, w, 0.3, mask=jr.masks.kernels), x))
    samples = np.asarray(jax.jit(one)(jax.random.split(rng, k)))
    pred = jr.mc_dropconnect(apply_fn, w, x, rng, k, 0.3, mask=jr.masks.kernels, chunk_size=5)
    # float32 means and variances of 16 values in [-1, 1]: a few ulp of the largest magnitude.
    np.testing.assert_allclose(np.asarray(pred.mean), samples.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pred.variance), samples.var(0), atol=1e-6)


def test_mc_dropconnect_scales_float64_weights_as_dropconnect():
    # under x64 the rate is float64 as dropconnect's: survivors scaled by exactly 1 / (1 - 0.1)
    with jax.enable_x64(True):
        w, x, rng = jnp.ones((50, 1), jnp.float64), jnp.ones((1, 50), jnp.float64), jax.random.key(0)
        pred = jr.mc_dropconnect(lambda p, v: v @ p, w, x, rng, 1, 0.1)
        direct = x @ jr.dropconnect(jax.random.split(rng, 1)[0], w, 0.1)
        kept = np.asarray(jr.dropconnect(jax.random.split(rng, 1)[0], w, 0.1))
        assert pred.mean.dtype == np.float64
        np.testing.assert_array_equal(np.asarray(pred.mean), np.asarray(direct))
        np.testing.assert_array_equal(np.unique(kept), [0.0, 1 / (1 - 0.1)])


def test_mc_dropconnect_rate_sweep_is_vmap():
    w, x = jnp.ones((40, 1)), jnp.ones((1, 40))
    rates = jnp.array([0.0, 0.5], jnp.float32)
    preds = jax.jit(jax.vmap(lambda r: jr.mc_dropconnect(lambda p, v: v @ p, w, x, jax.random.key(16), 512, r)))(rates)
    np.testing.assert_array_equal(np.asarray(preds.mean[0]), 40.0)  # rate 0: every mask keeps all
    np.testing.assert_array_equal(np.asarray(preds.variance[0]), 0.0)
    # rate 1/2: each output is 2 * Binomial(40, 1/2), variance 40; sample variance within 6 sd.
    var = 40.0
    _assert_within(float(preds.variance[1, 0, 0]), var, var * math.sqrt(2.0 / 511))


def test_dropconnect_rate_sweep_is_vmap():
    params = {"w": jnp.ones((200, 100))}
    rates = jnp.array([0.0, 0.5], jnp.float32)
    out = np.asarray(jax.jit(jax.vmap(lambda r: jr.dropconnect(jax.random.key(15), params, r)["w"]))(rates))
    np.testing.assert_array_equal(out[0], 1.0)
    _assert_within((out[1] != 0).mean(), 0.5, math.sqrt(0.25 / out[1].size))
    assert set(np.unique(out[1]).tolist()) == {0.0, 2.0}


# ---------------------------------------------------------------------------------------------
# Bad input: one case per test


KEY = jax.random.key(0)
X = jnp.ones((4, 3))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jr.drop_path(KEY, X, 1.0), r"drop_path: rate must be in \[0, 1\), got rate = 1.0"),
        (lambda: jr.drop_path(KEY, X, -0.1), r"drop_path: rate must be in \[0, 1\), got rate = -0.1"),
        (
            lambda: jr.drop_path(0, X, 0.5),
            r"drop_path: rng must be a PRNG key; pass a PRNG key such as jax.random.key\(0\).*rng = 0",
        ),
        (lambda: jr.drop_path(KEY, jnp.ones(()), 0.5), r"drop_path: x must have a leading example axis"),
        (lambda: jr.drop_path(KEY, jnp.ones(3, jnp.int32), 0.5), r"drop_path: x must be a floating-point array"),
        (lambda: jr.drop_path(jax.random.split(KEY, 2), X, 0.5), r"drop_path: rng must be a single PRNG key"),
        # None reached jnp.asarray: "None is not a valid value for jnp.array", naming neither
        (lambda: jr.drop_path(KEY, None, 0.5), r"^drop_path: x must be a floating-point array, got x = None\.$"),
        (lambda: jr.gaussian_noise(KEY, None, 0.1), r"^gaussian_noise: x must be a floating-point array, got x = None"),
        (lambda: jr.gaussian_dropout(KEY, "x", 0.1), r"^gaussian_dropout: x must be a floating-point array, got a str"),
        (lambda: jr.dropout(KEY, None, 0.1), r"^dropout: x must be a floating-point array, got x = None\.$"),
        # complex x: gaussian_noise drew complex noise, gaussian_dropout a complex multiplier (var 1/2 each part)
        (
            lambda: jr.gaussian_noise(KEY, X.astype(jnp.complex64), 0.1),
            r"^gaussian_noise: x must be a real floating-point array, got x.dtype = complex64\.$",
        ),
        (
            lambda: jr.gaussian_dropout(KEY, X.astype(jnp.complex64), 0.5),
            r"^gaussian_dropout: x must be a real floating-point array, got x.dtype = complex64\.$",
        ),
        (lambda: jr.gaussian_dropout(KEY, X, 1.0), r"gaussian_dropout: rate must be in \[0, 1\)"),
        (lambda: jr.gaussian_dropout(3, X, 0.5), r"gaussian_dropout: rng must be a PRNG key"),
        (lambda: jr.gaussian_noise(KEY, X, -1.0), r"gaussian_noise: stddev must be finite and >= 0, got stddev = -1.0"),
        (lambda: jr.gaussian_noise(KEY, X, jnp.ones(2)), r"gaussian_noise: stddev must be a scalar"),
        (lambda: jr.gaussian_noise(1, X, 0.1), r"gaussian_noise: rng must be a PRNG key"),
        (lambda: jr.dropconnect(KEY, {"w": X}, 1.5), r"dropconnect: rate must be in \[0, 1\)"),
        (lambda: jr.dropconnect(KEY, {"w": X}, 0.5, mask={"v": True}), r"dropconnect: mask does not match"),
        (lambda: jr.dropconnect(7, {"w": X}, 0.5), r"dropconnect: rng must be a PRNG key"),
        (
            lambda: jr.mc_dropconnect(lambda p, v: v, X, X, KEY, 4, 1.0),
            r"mc_dropconnect: rate must be in \[0, 1\)",
        ),
        (
            lambda: jr.mc_dropconnect(lambda p, v: v, X, X, KEY, 0, 0.5),
            r"^mc_dropconnect: num_samples must be an int >= 1, got num_samples = 0\.",
        ),
        (
            lambda: jr.mc_dropconnect(lambda p, v: v, X, X, KEY, 8, 0.5, chunk_size=0),
            r"^mc_dropconnect: chunk_size must be",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_drop_path_and_dropout_of_a_complex_input_are_a_real_mask():
    """The masks are real, so a complex activation (a complex-valued network) is dropped as its
    real and imaginary parts together: y = m * x with m in {0, 1 / (1 - p)}."""
    x = jax.lax.complex(jax.random.normal(KEY, (64, 8)), jax.random.normal(jax.random.key(1), (64, 8)))
    for y in (jr.drop_path(KEY, x, 0.5), jr.dropout(KEY, x, 0.5)):
        assert y.dtype == x.dtype
        y, x2 = np.asarray(y), 2 * np.asarray(x)  # 1 / (1 - p) = 2: exact, so y is 0 or 2x exactly
        kept = y != 0
        np.testing.assert_array_equal(y[kept], x2[kept])
        assert 0 < kept.mean() < 1


ONE_IN_FLOAT32 = 1 - 1e-9  # below 1 as a Python float, 1.0 in float32: every unit would drop


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda r: jr.dropout(KEY, X, r), "dropout"),
        (lambda r: jr.drop_path(KEY, X, r), "drop_path"),
        (lambda r: jr.dropconnect(KEY, {"w": X}, r), "dropconnect"),
        (lambda r: jr.mc_dropconnect(lambda p, v: v @ p, X.T, X, KEY, 4, r), "mc_dropconnect"),
        (lambda r: jr.mc_dropconnect(lambda p, v: v @ p, X.T, X, KEY, 4, r, chunk_size=2), "mc_dropconnect"),
    ],
)
def test_a_rate_that_is_one_in_float32_is_refused_by_the_function_called(call, name):
    assert np.float32(ONE_IN_FLOAT32) == 1.0 and ONE_IN_FLOAT32 < 1.0
    # mc_dropconnect passed it into its program, where a rate of 1 silently gave zeros
    with pytest.raises(ValueError, match=rf"^{name}: rate must be below 1 in float32, got rate = 0\.999999999\."):
        call(ONE_IN_FLOAT32)


# ---------------------------------------------------------------------------------------------
# The example


_N_DRAWS = 2**20


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    "noise",
    [
        lambda k, z: jr.gaussian_noise(k, z, 1.0),
        lambda k, z: jr.gaussian_dropout(k, z + 1, 0.5) - 1,  # stddev sqrt(0.5 / 0.5) = 1
        lambda k, z: jr.add_gradient_noise(1.0, key=k).update(z, jr.add_gradient_noise(1.0, key=k).init(z))[0],
        lambda k, z: jr.variational.sample(k, jr.variational.init(z, init_std=1.0)),
    ],
    ids=["gaussian_noise", "gaussian_dropout", "add_gradient_noise", "variational.sample"],  # (the last: es's draw)
)
def test_half_precision_noise_is_unbiased(noise, dtype):
    # es.gradient's perturbations are variational.sample's draw (_random.normal_leaves).
    # N(0, 1) noise on 2**20 zeros in half precision: its mean is within 5 standard errors of 0
    # (jax's sampler drawn in bfloat16 itself has mean -0.012, 12 standard errors; float16 -0.002).
    out = noise(jax.random.key(0), jnp.zeros(_N_DRAWS, dtype))
    assert out.dtype == dtype
    values = np.asarray(out, np.float64)
    assert abs(values.mean()) < 5 * values.std() / np.sqrt(_N_DRAWS), values.mean()
