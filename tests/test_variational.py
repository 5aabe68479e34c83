"""Tests of jaxreg.variational: kl_normal, mean-field Gaussians, the ELBO, predictions."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxreg as jr
from jaxreg import variational as vi

ROOT = Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)
# float32 KL vs float64 numpy: every elementwise KL term is >= 0 (no cancellation in the sum);
# each costs ~6 rounded ops (log, square, divide) and the float32 sum of <= 20 terms adds <= 20
# eps relative: ~26 eps, doubled for margin. Holds on any IEEE float32 unit (AVX2, AVX-512, GPU).
KL_RTOL = 64 * EPS32


def np_kl(m, s, pm, ps):
    m, s, pm, ps = (np.asarray(a, np.float64) for a in (m, s, pm, ps))
    return float(np.sum(np.log(ps / s) + (s**2 + (m - pm) ** 2) / (2 * ps**2) - 0.5))


def np_log_normal(x, m, s):
    return -0.5 * np.log(2 * np.pi) - np.log(s) - 0.5 * ((x - m) / s) ** 2


# ----------------------------------------------------------------------------- kl_normal


def test_kl_normal_matches_numpy_closed_form():
    rng = np.random.default_rng(0)
    m, pm = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    s, ps = rng.uniform(0.1, 2.0, size=(3, 4)), rng.uniform(0.1, 2.0, size=(3, 4))
    got = jr.kl_normal(jnp.asarray(m), jnp.asarray(s), jnp.asarray(pm), jnp.asarray(ps))
    np.testing.assert_allclose(float(got), np_kl(m, s, pm, ps), rtol=KL_RTOL)
    # Scalar prior broadcast to every element.
    np.testing.assert_allclose(
        float(jr.kl_normal(jnp.asarray(m), jnp.asarray(s), 0.3, 2.0)), np_kl(m, s, 0.3, 2.0), rtol=KL_RTOL
    )


@pytest.mark.parametrize("rho", [-40.0, -20.1, -19.9, -5.0])
def test_kl_normal_softplus_is_float64_exact_in_the_small_std_tail(rho):
    # numpy float64: sigma = log1p(exp(rho)) is exact to an ulp here (no underflow above -700),
    # and -log(sigma) dominates the KL, so float64 agrees to a few ulps (x alone gave 1e-9 at -20.1).
    sigma = np.log1p(np.exp(rho))
    expected = -np.log(sigma) + sigma**2 / 2 - 0.5
    with jax.enable_x64(True):
        got = jr.kl_normal(jnp.zeros(1, jnp.float64), jnp.full(1, rho, jnp.float64), parameterization="softplus")
        grad = jax.grad(lambda r: jr.kl_normal(jnp.zeros(1), r, parameterization="softplus"))(jnp.full(1, rho))
    eps = np.finfo(np.float64).eps
    # numpy's own log1p differs by a few ulps between CPUs (SVML on AVX-512, glibc on AVX2).
    np.testing.assert_allclose(float(got), expected, rtol=32 * eps)
    # d/drho [-log softplus(rho) + softplus(rho)^2 / 2] = sigmoid(rho) * (sigma - 1 / sigma); the
    # gradient chains sigmoid, softplus and a quotient, each a few ulps in XLA's vector exp/log1p
    # (8 ulps apart between an AMD and an Intel CPU at -19.9), still 1e5x below the 1e-9 to catch.
    s = 1 / (1 + np.exp(-rho))
    np.testing.assert_allclose(np.asarray(grad), [s * (sigma - 1 / sigma)], rtol=32 * eps)


def test_kl_normal_matches_monte_carlo():
    rng = np.random.default_rng(1)
    m, s = np.array([0.5, -1.0, 2.0]), np.array([0.7, 1.5, 0.3])
    pm, ps = np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.0, 0.5])
    x = m + s * rng.normal(size=(400_000, 3))
    terms = np.sum(np_log_normal(x, m, s) - np_log_normal(x, pm, ps), axis=1)
    mc, stderr = terms.mean(), terms.std() / np.sqrt(len(terms))
    got = float(jr.kl_normal(jnp.asarray(m), jnp.asarray(s), jnp.asarray(pm), jnp.asarray(ps)))
    assert abs(got - mc) < 4 * stderr, (got, mc, stderr)


@pytest.mark.parametrize("parameterization", ["std", "log_std", "softplus"])
def test_kl_of_a_distribution_to_itself_is_zero(parameterization):
    m = jnp.array([[0.3, -2.0], [5.0, 0.0]])
    s = jnp.array([[0.01, 1.0], [3.0, 0.5]])
    arg = {"std": s, "log_std": jnp.log(s), "softplus": vi.inverse_softplus(s)}[parameterization]
    got = jr.kl_normal(m, arg, m, s, parameterization=parameterization)
    assert abs(float(got)) < 1e-5, float(got)


def test_parameterizations_agree():
    m = jnp.array([0.3, -2.0, 1.0])
    s = jnp.array([0.05, 1.0, 3.0])
    expected = np_kl(m, s, 0.5, 1.5)
    for name, arg in [("std", s), ("log_std", jnp.log(s)), ("softplus", vi.inverse_softplus(s))]:
        np.testing.assert_allclose(float(jr.kl_normal(m, arg, 0.5, 1.5, parameterization=name)), expected, rtol=KL_RTOL)


def test_small_std_is_stable_with_log_std_and_softplus():
    # sigma = exp(-200): its square and log underflow float32, but the KL is -log(sigma) - 1/2 + ...
    expected = 200.0 + (0.0 + 0.0) / 2 - 0.5  # log(1 / sigma) + (sigma^2 + 0) / 2 - 1/2
    got_log = jr.kl_normal(jnp.zeros(1), jnp.full(1, -200.0), parameterization="log_std")
    got_sp = jr.kl_normal(jnp.zeros(1), jnp.full(1, -200.0), parameterization="softplus")
    # 200 - 0.5 and the other terms underflow to 0: a handful of float32 ops on values ~200.
    np.testing.assert_allclose(float(got_log), expected, rtol=8 * EPS32)
    np.testing.assert_allclose(float(got_sp), expected, rtol=8 * EPS32)
    g = jax.grad(lambda r: jr.kl_normal(jnp.zeros(1), r, parameterization="softplus"))(jnp.full(1, -200.0))
    np.testing.assert_allclose(np.asarray(g), [-1.0], rtol=8 * EPS32)  # d/drho of -log softplus(rho) -> -1


@pytest.mark.parametrize(
    ("mean", "std", "prior_std"),
    [(0.0, 1e-30, 1e-30), (0.0, 1e20, 1e20), (1e-20, 1e-20, 1e-20), (0.0, 1e-22, 1e-20)],
)
def test_kl_normal_is_finite_at_tiny_and_huge_scales(mean, std, prior_std):
    # sigma^2 and sigma_0^2 squared apart under- or overflowed in float32 (0 / 0): NaN where the
    # KL is finite. The float64 closed form on the same float32 inputs is the reference.
    m, s, ps = (float(np.float32(v)) for v in (mean, std, prior_std))
    ref = np.log(ps / s) + ((s / ps) ** 2 + (m / ps) ** 2) / 2 - 0.5
    got = float(jr.kl_normal(jnp.float32(mean), jnp.float32(std), 0.0, jnp.float32(prior_std)))
    np.testing.assert_allclose(got, ref, rtol=8 * EPS32, atol=8 * EPS32)


def test_kl_normal_gradients_match_finite_differences():
    m, log_s = jnp.array([0.3, -1.0]), jnp.array([-0.5, 0.2])
    check_grads(
        lambda a, b: jr.kl_normal(a, b, 0.2, 1.3, parameterization="log_std"),
        (m, log_s),
        order=1,
        modes="rev",
        eps=1e-3,
    )
    check_grads(
        lambda a, b: jr.kl_normal(a, b, 0.2, 1.3, parameterization="softplus"),
        (m, log_s),
        order=1,
        modes="rev",
        eps=1e-3,
    )


def test_kl_normal_on_pytrees_sums_the_leaves():
    mean = {"a": jnp.array([0.1, 0.2]), "b": (jnp.ones((2, 2)),)}
    std = {"a": jnp.array([0.5, 2.0]), "b": (jnp.full((2, 2), 0.3),)}
    prior = {"a": jnp.zeros(2), "b": (jnp.full((2, 2), 0.5),)}
    expected = np_kl(mean["a"], std["a"], prior["a"], 0.8) + np_kl(mean["b"][0], std["b"][0], prior["b"][0], 0.8)
    np.testing.assert_allclose(float(jr.kl_normal(mean, std, prior, 0.8)), expected, rtol=KL_RTOL)


def test_kl_normal_traced_std_and_vmap_over_prior_std():
    m, s = jnp.array([0.5, -0.5]), jnp.array([0.4, 0.9])
    prior_stds = jnp.array([0.5, 1.0, 2.0])
    got = jax.jit(jax.vmap(lambda ps: jr.kl_normal(m, s, 0.0, ps)))(prior_stds)
    np.testing.assert_allclose(np.asarray(got), [np_kl(m, s, 0.0, p) for p in [0.5, 1.0, 2.0]], rtol=KL_RTOL)
    # A traced non-positive std is not checked (no error inside jit), as documented.
    assert np.isnan(float(jax.jit(lambda s: jr.kl_normal(0.0, s))(-1.0)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: jr.kl_normal(jnp.zeros(2), jnp.array([0.0, 1.0])),
            r"kl_normal: std must be finite and > 0, got std = \[0\. 1\.\]",
        ),
        (lambda: jr.kl_normal(0.0, -1.0), r"std must be finite and > 0, got std = -1.0"),
        (lambda: jr.kl_normal(0.0, 1.0, prior_std=0.0), r"prior_std must be finite and > 0, got prior_std = 0.0"),
        (lambda: jr.kl_normal(0.0, 1.0, parameterization="logstd"), r"parameterization must be one of"),
        (
            lambda: jr.kl_normal({"a": jnp.zeros(2), "b": jnp.zeros(2)}, 1.0, {"a": jnp.zeros(2)}),
            r"prior_mean must be a scalar, an array, or a pytree",
        ),
        (lambda: jr.kl_normal(jnp.zeros(2), jnp.ones(3)), r"std of shape \(3,\) does not broadcast"),
        # a complex mean gave a complex "KL" ((-0.12+0.05j)), a bool one a number, text jax's TypeError
        (lambda: jr.kl_normal(0.1 + 0.5j, 1.0), r"^kl_normal: mean must be real numbers, got dtype complex64\.$"),
        (lambda: jr.kl_normal(True, 1.0), r"^kl_normal: mean must be real numbers, got dtype bool\.$"),
        (lambda: jr.kl_normal("0", 1.0), r"^kl_normal: mean must be real numbers, got a str that is not an array"),
        (
            lambda: jr.kl_normal({"w": jnp.array([1j])}, 1.0),
            r"^kl_normal: mean \(leaf 'w'\) must be real numbers, got dtype complex64\.$",
        ),
    ],
)
def test_kl_normal_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_kl_normal_accepts_a_negative_log_std():
    # log_std = -3 is sigma = e^-3: KL(N(0, e^-6) || N(0, 1)) = 3 + e^-6 / 2 - 1/2 (float64 closed form).
    np.testing.assert_allclose(
        float(jr.kl_normal(0.0, -3.0, parameterization="log_std")), 3.0 + np.exp(-6.0) / 2 - 0.5, rtol=8 * EPS32
    )


# ----------------------------------------------------------------------------- mean field


def test_init_sample_and_reparameterization():
    params = {"w": jnp.zeros((50, 40)), "b": jnp.full(2000, 3.0)}
    vparams = vi.init(params, init_std=0.2)
    # softplus(inverse_softplus(0.2)): ~6 float32 ops, each 1 ulp, none ill-conditioned near 0.2.
    np.testing.assert_allclose(np.asarray(vparams.std["w"]), 0.2, rtol=16 * EPS32)
    draw = vi.sample(jax.random.key(0), vparams)
    for leaf, mu in [(draw["w"], 0.0), (draw["b"], 3.0)]:
        assert abs(float(leaf.mean()) - mu) < 0.02 and abs(float(leaf.std()) - 0.2) < 0.01
    # w = mu + softplus(rho) * eps: dw/dmu = 1 and dw/drho = sigmoid(rho) * eps.
    eps = (draw["b"] - 3.0) / 0.2
    grads = jax.grad(lambda vp: jnp.sum(vi.sample(jax.random.key(0), vp)["b"]))(vparams)
    np.testing.assert_allclose(np.asarray(grads.mean["b"]), 1.0)
    np.testing.assert_allclose(
        # eps is recovered from draws ~3 rounded to float32 (half an ulp of 4 = 2 eps), divided by
        # 0.2, times sigmoid(rho) < 1: an absolute error of ~10 eps.
        np.asarray(grads.raw_std["b"]),
        np.asarray(jax.nn.sigmoid(vparams.raw_std["b"]) * eps),
        rtol=8 * EPS32,
        atol=4 * 2 * EPS32 / 0.2,
    )


def test_kl_of_meanfield_against_closed_form_and_reference_prior():
    params = {"w": jnp.array([[0.5, -1.0]]), "b": jnp.array([2.0])}
    vparams = vi.init(params, init_std=0.3)
    expected = np_kl(np.array([0.5, -1.0, 2.0]), 0.3, 0.0, 0.7)
    np.testing.assert_allclose(float(vi.kl(vparams, prior_std=0.7)), expected, rtol=KL_RTOL)
    reference = {"w": jnp.array([[0.0, 1.0]]), "b": jnp.array([1.0])}
    expected_ref = np_kl(np.array([0.5, -1.0, 2.0]), 0.3, np.array([0.0, 1.0, 1.0]), 0.7)
    np.testing.assert_allclose(float(vi.kl(vparams, reference, 0.7)), expected_ref, rtol=KL_RTOL)


def test_elbo_loss_is_nll_plus_kl_per_example():
    x = jnp.arange(6.0).reshape(3, 2)
    y = jnp.array([1.0, 0.0, 2.0])
    nll = lambda p, x, y: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)  # noqa: E731
    vparams = vi.init({"w": jnp.array([0.1, 0.2]), "b": jnp.zeros(())}, init_std=0.5)
    fn = vi.elbo_loss(nll, num_examples=30, prior_std=2.0, num_samples=4)
    rng = jax.random.key(3)
    total, terms = fn(vparams, rng, x, y)
    nlls = [nll(vi.sample(k, vparams), x, y) for k in jax.random.split(rng, 4)]
    # The same float32 losses (3 squared errors each) vmapped vs one by one, averaged over 4.
    np.testing.assert_allclose(float(terms.nll), np.mean(nlls), rtol=32 * EPS32)
    np.testing.assert_allclose(float(terms.kl), np_kl([0.1, 0.2, 0.0], 0.5, 0.0, 2.0), rtol=KL_RTOL)
    np.testing.assert_allclose(float(total), np.mean(nlls) + float(terms.kl) / 30, rtol=32 * EPS32)


def test_elbo_loss_passes_shared_arguments_through_vmap_and_averages_a_per_example_loss():
    from flax import nnx

    # A deterministic nnx feature layer in the loss's arguments, merged and reseeded per sample:
    # closed over by the vmap over samples, nnx refused the mutation (TraceContextError).
    class Features(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.0, rngs=rngs)  # rate 0: the reseed is the only mutation

        def __call__(self, x):
            return self.drop(self.lin(x))

    graphdef, state = nnx.split(Features(nnx.Rngs(0, dropout=1)))
    x = jnp.arange(6.0).reshape(3, 2)
    y = jnp.array([1.0, 0.0, 2.0])

    def per_example(p, state, x, y):
        model = nnx.merge(graphdef, state)
        nnx.reseed(model, dropout=jax.random.key(7))
        return (model(x) @ p["w"] - y) ** 2  # (3,): averaged with the samples, as before

    vparams = vi.init({"w": jnp.array([0.1, 0.2, -0.3])}, init_std=0.5)
    rng = jax.random.key(3)
    _, terms = vi.elbo_loss(per_example, num_examples=30, num_samples=4)(vparams, rng, state, x, y)
    feats = nnx.merge(graphdef, state).lin(x)
    nlls = [np.mean((feats @ vi.sample(k, vparams)["w"] - y) ** 2) for k in jax.random.split(rng, 4)]
    np.testing.assert_allclose(float(terms.nll), np.mean(nlls), rtol=32 * EPS32)


def test_elbo_optimum_is_the_exact_posterior_for_bayesian_linear_regression():
    # With one weight the mean-field family contains the exact Gaussian posterior, so Bayes by
    # Backprop must find it: precision = 1/prior^2 + sum(x^2)/noise^2, mean = sum(x y)/noise^2 / precision.
    rng = np.random.default_rng(0)
    x = rng.normal(size=40).astype(np.float32)
    noise = 0.5
    y = (1.5 * x + noise * rng.normal(size=40)).astype(np.float32)
    precision = 1.0 + np.sum(x**2) / noise**2
    post_mean, post_std = np.sum(x * y) / noise**2 / precision, precision**-0.5

    nll = lambda p: jnp.mean(0.5 * ((y - p * x) / noise) ** 2)  # noqa: E731  (+ const)
    fn = vi.elbo_loss(nll, num_examples=40, num_samples=32)
    opt = optax.adam(optax.exponential_decay(0.05, 1500, 0.01))
    vparams = vi.init(jnp.zeros(()), init_std=0.5)

    def step(carry, key):
        vparams, state = carry
        grads, _ = jax.grad(fn, has_aux=True)(vparams, key)
        with jax.numpy_dtype_promotion("standard"):  # optax's adam computes decay ** int32 count
            updates, state = opt.update(grads, state)
        return (optax.apply_updates(vparams, updates), state), None

    (vparams, _), _ = jax.jit(lambda c, k: jax.lax.scan(step, c, k))(
        (vparams, opt.init(vparams)), jax.random.split(jax.random.key(0), 1500)
    )
    np.testing.assert_allclose(float(vparams.mean), post_mean, atol=0.01 * post_std + 1e-3)
    np.testing.assert_allclose(float(vparams.std), post_std, rtol=0.05)


def test_predict_matches_its_samples_and_the_linear_closed_form():
    vparams = vi.init({"w": jnp.array([1.0, -2.0])}, init_std=0.5)
    apply = lambda p, x: x * p["w"]  # noqa: E731
    x = jnp.array([2.0, 3.0])
    rng = jax.random.key(1)
    pred = jax.jit(lambda vp: vi.predict(apply, vp, x, rng, 20_000))(vparams)
    np.testing.assert_allclose(np.asarray(pred.mean), [2.0, -6.0], atol=0.05)
    np.testing.assert_allclose(np.asarray(pred.variance), [0.25 * 4, 0.25 * 9], rtol=0.05)
    samples = np.asarray(jax.jit(lambda vp: vi.predict_samples(apply, vp, x, rng, 20_000))(vparams), np.float64)
    # float64 moments of the same float32 samples (|y| <= ~8): the float32 mean of 20,000 terms
    # is within ~sqrt(20,000) eps max|y| (pairwise-ish accumulation; 6 sigma), the variance
    # likewise relative to max|y|^2.
    scale = float(np.max(np.abs(samples)))
    tol = 6 * 20_000**0.5 * EPS32
    np.testing.assert_allclose(np.asarray(pred.mean), samples.mean(0), rtol=0, atol=tol * scale)
    np.testing.assert_allclose(np.asarray(pred.variance), samples.var(0), rtol=0, atol=tol * scale**2)
    for chunk in (1, 3000, 20_000):  # a loop, chunks with a remainder, one vmap
        chunked = jax.jit(lambda vp, c=chunk: vi.predict(apply, vp, x, rng, 20_000, chunk_size=c))(vparams)
        np.testing.assert_allclose(np.asarray(chunked.mean), samples.mean(0), rtol=0, atol=tol * scale)
        np.testing.assert_allclose(np.asarray(chunked.variance), samples.var(0), rtol=0, atol=tol * scale**2)
    chunked_samples = jax.jit(lambda vp: vi.predict_samples(apply, vp, x, rng, 20_000, chunk_size=3000))(vparams)
    # Sample s uses key s whatever the chunking: the same float32 ops for each sample.
    np.testing.assert_allclose(np.asarray(chunked_samples), samples, rtol=0, atol=4 * EPS32 * scale)
    assert isinstance(pred, jr.uncertainty.Prediction)


def _mlp(params, x):
    h = jax.nn.relu(x @ params["w1"] + params["b1"][None, :])
    return h @ params["w2"] + params["b2"][None, :]


def test_bayesian_mlp_variance_is_larger_off_the_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(64, 1)).astype(np.float32)
    y = (np.sin(3 * x) + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (1, 32)),
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 1)) / np.sqrt(32),
        "b2": jnp.zeros(1),
    }
    nll = lambda p: jnp.mean(0.5 * ((_mlp(p, x) - y) / 0.1) ** 2)  # noqa: E731
    fn = vi.elbo_loss(nll, num_examples=64, num_samples=4)
    opt = optax.adam(1e-2)
    vparams = vi.init(params, init_std=1e-2)

    def step(carry, key):
        vparams, state = carry
        grads, _ = jax.grad(fn, has_aux=True)(vparams, key)
        with jax.numpy_dtype_promotion("standard"):  # optax's adam computes decay ** int32 count
            updates, state = opt.update(grads, state)
        return (optax.apply_updates(vparams, updates), state), None

    (vparams, _), _ = jax.jit(lambda c, k: jax.lax.scan(step, c, k))(
        (vparams, opt.init(vparams)), jax.random.split(jax.random.key(1), 600)
    )
    on = vi.predict(_mlp, vparams, jnp.linspace(-0.9, 0.9, 50)[:, None], jax.random.key(2), 200)
    off = vi.predict(
        _mlp,
        vparams,
        jnp.concatenate([jnp.linspace(-5, -3, 25), jnp.linspace(3, 5, 25)])[:, None],
        jax.random.key(2),
        200,
    )
    fit = float(jnp.mean((on.mean - jnp.sin(3 * jnp.linspace(-0.9, 0.9, 50))[:, None]) ** 2))
    assert fit < 0.05, fit  # it learned the data
    on_var, off_var = float(jnp.mean(on.variance)), float(jnp.mean(off.variance))
    assert off_var > 3 * on_var, (on_var, off_var)


_VP = vi.init({"w": jnp.zeros(2)}, init_std=0.1)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: vi.init({"w": jnp.zeros(2)}, init_std=0.0),
            r"variational.init: init_std must be finite and > 0, got init_std = 0.0",
        ),
        (lambda: vi.init({"n": jnp.zeros(2, jnp.int32)}, init_std=0.1), r"leaf 'n' with dtype int32"),
        (lambda: vi.sample(jax.random.key(0), {"w": jnp.zeros(2)}), r"vparams must be a MeanField"),
        (lambda: vi.sample(0, _VP), r"variational.sample: rng must be a PRNG key.*jax.random.key\(0\)"),
        (
            lambda: vi.elbo_loss(lambda p: 0.0, num_examples=0),
            r"num_examples must be finite and > 0, got num_examples = 0",
        ),
        (
            lambda: vi.elbo_loss(lambda p: 0.0, num_examples=10, num_samples=0),
            r"num_samples must be an int >= 1, got num_samples = 0",
        ),
        (
            lambda: vi.elbo_loss(lambda p: 0.0, num_examples=10, prior_std=-1.0),
            r"prior_std must be finite and > 0, got prior_std = -1.0",
        ),
        (
            lambda: vi.elbo_loss(lambda p: 0.0, num_examples=10)(_VP, 5),
            r"variational.elbo_loss: rng must be a PRNG key",
        ),
        # outside vmap it gave a (2,) "loss", which failed later in value_and_grad
        (
            lambda: vi.elbo_loss(lambda p: 0.0, num_examples=jnp.array([100.0, 200.0])),
            r"^variational.elbo_loss: num_examples must be a scalar, got num_examples.shape = \(2,\)",
        ),
        (
            lambda: vi.predict(lambda p, x: x, _VP, 0.0, jax.random.key(0), 0),
            r"num_samples must be an int >= 1, got num_samples = 0",
        ),
        (
            lambda: vi.predict(lambda p, x: x, _VP, 0.0, jax.random.key(0), 4, chunk_size=2.5),
            r"chunk_size must be an int >= 1, got chunk_size = 2.5",
        ),
        (lambda: vi.predict(lambda p, x: x, _VP, 0.0, 1, 4), r"variational.predict: rng must be a PRNG key"),
        (
            lambda: vi.elbo_loss(lambda p: 0.0, num_examples=10, prior_mean={"nope": 0.0})(_VP, jax.random.key(0)),
            r"^variational.elbo_loss: prior_mean must be a scalar, an array, or a pytree with the structure of the mean",
        ),
        (
            lambda: vi.kl(_VP, prior_std=[1.0, 2.0]),
            r"^variational.kl: prior_std must be a scalar, an array, or a pytree with the structure of the mean",
        ),
        # the values too name the function called (they named kl_normal, which kl calls)
        (lambda: vi.kl(_VP, prior_std=0.0), r"^variational.kl: prior_std must be finite and > 0, got prior_std = 0.0"),
        (lambda: vi.kl(_VP, prior_mean=np.nan), r"^variational.kl: prior_mean must be finite, got prior_mean = nan"),
        # refused when built (it failed only at call time, naming kl_normal)
        (
            lambda: vi.elbo_loss(lambda p: 0.0, num_examples=10, prior_mean=np.nan),
            r"^variational.elbo_loss: prior_mean must be finite, got prior_mean = nan",
        ),
        (
            lambda: vi.predict_samples(lambda p, x: x, _VP, 0.0, 1, 4),
            r"variational.predict_samples: rng must be a PRNG key",
        ),
    ],
)
def test_meanfield_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- examples


def _run_example(name: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _value(stdout: str, key: str) -> float:
    lines = [line for line in stdout.splitlines() if line.startswith(key + ":")]
    assert lines, stdout
    return float(lines[-1].split(":", 1)[1].split()[0])


# The examples' full default runs, as a newcomer types them (25-30 s on 2 vCPUs together): out of
# the default run, in `python -m pytest -m slow`; tests/test_examples.py runs both at small
# settings in the default run.
@pytest.mark.slow
def test_example_bayesian_mlp():
    out = _run_example("bayesian_mlp.py")
    assert _value(out, "test accuracy") > 0.85, out
    # Predictive entropy is higher on inputs unlike the training data than on the test digits.
    assert _value(out, "entropy off data") > _value(out, "entropy on test"), out


@pytest.mark.slow
def test_example_vae():
    out = _run_example("vae.py")
    assert _value(out, "final loss") < _value(out, "initial loss") - 5.0, out
    assert _value(out, "final kl") > 0.0, out


def test_kl_normal_broadcasts_jointly_like_numpy():
    std = np.linspace(0.5, 2.0, 20).reshape(4, 5)
    expected = np.sum(np.log(1.5 / std) + (std**2 + (0.3 - 0.1) ** 2) / (2 * 1.5**2) - 0.5)
    np.testing.assert_allclose(jr.kl_normal(0.3, jnp.asarray(std), 0.1, 1.5), expected, rtol=KL_RTOL)


def test_a_mean_field_whose_std_is_shaped_unlike_its_mean_is_named():
    vparams = jr.variational.MeanField({"w": jnp.ones(3)}, {"w": jnp.ones(2)})
    match = r"vparams.raw_std must be shaped like vparams.mean, got leaf \['w'\] of shape \(2,\)"
    with pytest.raises(ValueError, match=r"^variational.sample: " + match):
        jr.variational.sample(jax.random.key(0), vparams)  # was jax's "mul got incompatible shapes"
    with pytest.raises(ValueError, match=r"^variational.kl: " + match):
        jr.variational.kl(vparams)


def test_sample_of_params_mixing_bfloat16_and_float32_is_the_float32_draw_rounded():
    # Strict promotion (on for the tests) refused bfloat16 beside float32 when the one flat noise
    # draw picked its dtype. The draw is float32 for both: the float32 leaf gets the all-float32
    # sample exactly, the bfloat16 leaf it within bfloat16's rounding of mean + std * eps (<= 2).
    mixed = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2)}
    as32 = jax.tree.map(lambda x: x.astype(jnp.float32), mixed)
    got = jr.variational.sample(jax.random.key(0), jr.variational.init(mixed, init_std=0.5))
    ref = jr.variational.sample(jax.random.key(0), jr.variational.init(as32, init_std=0.5))
    assert got["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(got["b"], ref["b"])
    bf16_eps = float(jnp.finfo(jnp.bfloat16).eps)
    np.testing.assert_allclose(np.asarray(got["w"], np.float32), ref["w"], rtol=0, atol=3 * bf16_eps * 2)
