"""Tests of jaxreg.es: evolution-strategy gradient estimates."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import rankdata

import jaxreg as jr

ROOT = Path(__file__).resolve().parents[1]

# A quadratic L(w) = 1/2 (w - c)^T A (w - c) on a pytree of two leaves (dimension d = 10).
_rng = np.random.default_rng(0)
_M = _rng.normal(size=(10, 10))
A = jnp.asarray(_M @ _M.T / 10 + np.eye(10), jnp.float32)
C = jnp.asarray(_rng.normal(size=10), jnp.float32)
PARAMS = {
    "a": jnp.asarray(_rng.normal(size=(2, 3)), jnp.float32),
    "b": (jnp.asarray(_rng.normal(size=4), jnp.float32),),
}


def flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def quadratic(tree):
    d = flat(tree) - C
    return 0.5 * d @ A @ d


TRUE_GRAD = A @ (flat(PARAMS) - C)


def cosine(u, v):
    return float(u @ v / (jnp.linalg.norm(u) * jnp.linalg.norm(v)))


def test_centered_ranks_match_scipy_with_ties():
    x = jnp.array([3.0, -1.0, 10.0, 3.0, 0.5, 3.0, -7.0])
    expected = (rankdata(np.asarray(x)) - 1) / (len(x) - 1) - 0.5
    np.testing.assert_allclose(np.asarray(jr.es.centered_ranks(x)), expected, rtol=1e-6)
    assert abs(float(jnp.sum(jr.es.centered_ranks(x)))) < 1e-6


def test_estimate_on_quadratic_is_aligned_with_the_true_gradient():
    grads = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, sigma=0.1, population=4096))(PARAMS, jax.random.key(0))
    assert jax.tree.structure(grads) == jax.tree.structure(PARAMS)
    # Antithetic on a quadratic: g_hat = (2/n) sum_j eps_j eps_j^T g, relative MSE (d + 1) / (n / 2).
    # With d = 10 and n / 2 = 2048, the expected cosine is about 1 - 11 / 4096.
    assert cosine(flat(grads), TRUE_GRAD) > 0.98, cosine(flat(grads), TRUE_GRAD)


@pytest.mark.parametrize("antithetic", [True, False])
def test_estimate_is_unbiased_and_its_variance_matches_theory(antithetic):
    population, repeats = 32, 500
    keys = jax.random.split(jax.random.key(1), repeats)
    estimate = jax.jit(
        jax.vmap(
            lambda k: flat(
                jr.es.gradient(quadratic, PARAMS, k, sigma=0.05, population=population, antithetic=antithetic)
            )
        )
    )
    g = np.asarray(estimate(keys), np.float64)
    true = np.asarray(TRUE_GRAD, np.float64)
    mse = np.mean(np.sum((g - true) ** 2, axis=1))
    d, norm2 = true.size, np.sum(true**2)
    if antithetic:  # exactly (1/m) sum_j eps_j eps_j^T g with m = n / 2 directions
        theory = (d + 1) * norm2 / (population // 2)
        assert 0.85 < mse / theory < 1.15, (mse, theory)
    # Unbiased: the mean of many estimates is within a few standard errors of the true gradient.
    err = g.mean(0) - true
    stderr = np.sqrt(mse / repeats / d)  # per-coordinate standard error (average over coordinates)
    assert np.max(np.abs(err)) < 5 * stderr, (np.max(np.abs(err)), stderr)
    assert np.linalg.norm(err) < 0.1 * np.linalg.norm(true), np.linalg.norm(err)


def test_antithetic_estimate_on_a_quadratic_does_not_depend_on_sigma():
    # f(w + s e) - f(w - s e) = 2 s e^T g exactly, so sigma cancels; sigma is traced under vmap.
    grads = jax.jit(
        jax.vmap(lambda s: flat(jr.es.gradient(quadratic, PARAMS, jax.random.key(2), sigma=s, population=64)))
    )(jnp.array([0.1, 0.5, 1.0]))
    np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(grads[0]), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(grads[2]), np.asarray(grads[0]), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("antithetic", "chunk_size"), [(True, 6), (False, 5)])
def test_chunked_estimate_equals_unchunked(antithetic, chunk_size):
    kwargs = dict(sigma=0.1, population=20, antithetic=antithetic)  # raw fitness: the one-pass path
    full = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, **kwargs))(PARAMS, jax.random.key(3))
    chunked = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, chunk_size=chunk_size, **kwargs))(
        PARAMS, jax.random.key(3)
    )
    np.testing.assert_allclose(np.asarray(flat(chunked)), np.asarray(flat(full)), rtol=1e-5, atol=1e-6)


def test_automatic_chunks_give_the_same_estimate_as_one_vmap():
    # Large activations make chunk_size=None split the population on CPU; the estimate must not change.
    x = jnp.asarray(np.random.default_rng(8).normal(size=(256, 64)), jnp.float32)
    params = {"w1": 0.1 * jnp.ones((64, 256)), "w2": 0.1 * jnp.ones((256, 1))}
    loss = lambda p: jnp.mean(jax.nn.relu(x @ p["w1"]) @ p["w2"])  # noqa: E731
    leaves, treedef = jax.tree.flatten(params)
    assert jr.es._auto_dirs_per_chunk(loss, leaves, treedef, 32, True) < 32  # it does chunk here
    for shaping in ["centered_ranks"]:  # the two-pass path (one-pass: test_chunked_...)
        kwargs = dict(sigma=0.1, population=64, fitness_shaping=shaping)
        auto = jax.jit(lambda p, k, kw=kwargs: jr.es.gradient(loss, p, k, **kw))(params, jax.random.key(9))
        whole = jax.jit(lambda p, k, kw=kwargs: jr.es.gradient(loss, p, k, chunk_size=64, **kw))(
            params, jax.random.key(9)
        )
        scale = float(jnp.max(jnp.abs(flat(whole))))  # summation order differs: compare to the largest entry
        np.testing.assert_allclose(np.asarray(flat(auto)), np.asarray(flat(whole)), rtol=1e-4, atol=1e-4 * scale)


def test_centered_ranks_make_the_estimate_invariant_to_monotone_transforms():
    kwargs = dict(sigma=0.1, population=64, fitness_shaping="centered_ranks")
    g1 = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, **kwargs))(PARAMS, jax.random.key(4))
    g2 = jax.jit(lambda p, k: jr.es.gradient(lambda q: jnp.exp(quadratic(q) / 10.0) - 3.0, p, k, **kwargs))(
        PARAMS, jax.random.key(4)
    )
    np.testing.assert_allclose(np.asarray(flat(g2)), np.asarray(flat(g1)), rtol=1e-6)
    assert cosine(flat(g1), TRUE_GRAD) > 0.5


def test_value_and_gradient():
    value, grads = jax.jit(lambda p, k: jr.es.value_and_gradient(quadratic, p, k, sigma=0.1, population=16))(
        PARAMS, jax.random.key(5)
    )
    np.testing.assert_allclose(float(value), float(quadratic(PARAMS)), rtol=1e-6)
    expected = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, sigma=0.1, population=16))(
        PARAMS, jax.random.key(5)
    )
    np.testing.assert_allclose(np.asarray(flat(grads)), np.asarray(flat(expected)), rtol=1e-6)


def test_es_with_adam_reaches_the_least_squares_optimum():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5) + 0.3 * rng.normal(size=40)).astype(np.float32)
    solution = np.linalg.lstsq(x, y, rcond=None)[0]
    loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)  # noqa: E731
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    opt = optax.adam(optax.exponential_decay(0.1, 800, 0.01))

    def step(carry, key):
        params, state = carry
        grads = jr.es.gradient(loss, params, key, sigma=0.01, population=32)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.jit(lambda c, k: jax.lax.scan(step, c, k))(
        (params, opt.init(params)), jax.random.split(jax.random.key(7), 800)
    )
    with_bias = np.linalg.lstsq(np.c_[x, np.ones(40)], y, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(params["w"]), with_bias[:5], atol=1e-2)
    np.testing.assert_allclose(float(params["b"]), with_bias[5], atol=1e-2)
    assert np.max(np.abs(with_bias[:5] - solution)) < 0.5  # sanity: the bias column matters little


def test_bad_input():
    def g(**kw):
        args = dict(sigma=0.1, population=8)
        args.update(kw)
        return jr.es.gradient(quadratic, PARAMS, jax.random.key(0), **args)

    with pytest.raises(ValueError, match=r"es.gradient: sigma must be finite and > 0, got sigma = 0.0"):
        g(sigma=0.0)
    with pytest.raises(ValueError, match=r"sigma must be finite and > 0, got sigma = -1.0"):
        g(sigma=-1.0)
    with pytest.raises(ValueError, match=r"sigma must be a scalar, got sigma with shape \(2,\)"):
        g(sigma=jnp.ones(2))
    with pytest.raises(ValueError, match=r"population must be >= 2, got population = 1"):
        g(population=1, antithetic=False)
    with pytest.raises(ValueError, match=r"population must be an int >= 2, got population = 8.0"):
        g(population=8.0)
    with pytest.raises(ValueError, match=r"must be even, got population = 7"):
        g(population=7)
    with pytest.raises(ValueError, match=r"chunk_size must be even, got chunk_size = 3"):
        g(chunk_size=3)
    with pytest.raises(ValueError, match=r"fitness_shaping must be None, 'centered_ranks' or a callable"):
        g(fitness_shaping="ranks")
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar, got an output of shape \(2,\)"):
        jr.es.gradient(lambda p: jnp.ones(2), PARAMS, jax.random.key(0), sigma=0.1, population=4)
    with pytest.raises(ValueError, match=r"leaf 'n' with dtype int32"):
        jr.es.gradient(lambda p: 0.0, {"n": jnp.zeros(2, jnp.int32)}, jax.random.key(0), sigma=0.1, population=4)
    with pytest.raises(ValueError, match=r"es.value_and_gradient: population must be >= 2"):
        jr.es.value_and_gradient(quadratic, PARAMS, jax.random.key(0), sigma=0.1, population=0)
    # Population is odd but allowed without antithetic pairs.
    assert jax.tree.structure(g(population=7, antithetic=False)) == jax.tree.structure(PARAMS)


def test_example_es_vs_backprop():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "es_vs_backprop.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    start, end = (float(v) for v in lines["ES train accuracy"].split("->"))
    assert end > start + 0.5, out.stdout  # the ES objective (accuracy) improved
    assert float(lines["ES test accuracy"].split()[0]) > 0.8, out.stdout  # chance is 0.1
    assert float(lines["backprop test accuracy"].split()[0]) > 0.8, out.stdout
    assert float(lines["autodiff gradient of the accuracy"].split("=")[1]) == 0.0, out.stdout
