"""Tests of jaxreg.es: evolution-strategy gradient estimates."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import rankdata

import jaxreg as jr

EPS32 = float(np.finfo(np.float32).eps)

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
    # Each utility is one float32 division and one subtraction of values <= 1: 2 ulp of 1.
    np.testing.assert_allclose(np.asarray(jr.es.centered_ranks(x)), expected, rtol=0, atol=2 * EPS32)
    # Their float32 sum: 7 terms of magnitude <= 1/2, each rounding at most eps * (running sum <= 7/2).
    assert abs(float(jnp.sum(jr.es.centered_ranks(x)))) <= 7 * 3.5 * EPS32


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
    # In float32, f(w + s e) - f(w - s e) cancels two losses of size F: its error is about
    # (d + 2) eps F (two length-d dot products), divided by 2 s in the estimate, summed over
    # m = 32 directions weighted by |e_k| (~1): an error of order sqrt(m) (d + 2) eps F / (n s)
    # per coordinate. F <= 0.5 ||A|| (||w - c|| + s ||e||)^2, at most ~1100 for s = 1.
    loss_scale = (
        0.5 * float(jnp.linalg.norm(A, 2)) * (float(jnp.linalg.norm(flat(PARAMS) - C)) + 1.0 * 5 * 10**0.5) ** 2
    )
    atol = 6 * 32**0.5 * 12 * EPS32 * loss_scale / (64 * 0.1)
    assert atol < 0.05 * float(jnp.max(jnp.abs(grads[0])))  # still far below one direction's share
    np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(grads[0]), rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(grads[2]), np.asarray(grads[0]), rtol=0, atol=atol)


@pytest.mark.parametrize(("antithetic", "chunk_size"), [(True, 6), (False, 5)])
def test_chunked_estimate_equals_unchunked(antithetic, chunk_size):
    kwargs = dict(sigma=0.1, population=20, antithetic=antithetic)  # raw fitness: the one-pass path
    full = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, **kwargs))(PARAMS, jax.random.key(3))
    chunked = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, chunk_size=chunk_size, **kwargs))(
        PARAMS, jax.random.key(3)
    )
    # Same terms, another summation order and another vmap width (so other SIMD rounding of each
    # loss, which differs by AVX2 / AVX-512 / GPU). Per coordinate the estimate sums m terms
    # (f+ - f-) e_jk / (n s) (antithetic) or f_i e_ik / ((n - 1) s); each loss F carries
    # (d + 2) eps F of rounding and the sum m eps sum|terms|. Bound |e| <= 5 (200 draws) and
    # F <= 0.5 ||A|| (||w - c|| + s 5 sqrt(d))^2.
    m, n, s = (10, 20, 0.1) if antithetic else (20, 20, 0.1)
    loss_scale = 0.5 * float(jnp.linalg.norm(A, 2)) * (float(jnp.linalg.norm(flat(PARAMS) - C)) + s * 5 * 10**0.5) ** 2
    atol = (12 + m) * EPS32 * 2 * loss_scale * m * 5 / ((n - 1) * s)
    assert atol < 0.1  # far below one direction's share (~ |g| s |e|^2 / (n s) ~ 1)
    chex.assert_trees_all_close(chunked, full, rtol=0, atol=atol)


@pytest.mark.parametrize(("offset", "sigma", "population"), [(1e3, 0.1, 200), (1e4, 0.05, 400)])
@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_raw_fitness_estimate_does_not_see_a_constant_added_to_the_loss(offset, sigma, population, chunk_size):
    # sum_i (f_i - mean f) eps_i / ((n - 1) sigma) is blind to a constant. In float32 the only
    # difference left is the rounding of each loss f_i + offset, delta_i within half its ulp,
    # unrelated to eps: sum_i delta_i eps_ik has standard deviation at most
    # sqrt(n) ulp / (2 sqrt 3); 5 of them, over (n - 1) sigma. (Summed as sum f eps - mean(f) sum
    # eps, the two terms of size offset * sqrt(n) cancelled: 3-10x that bound, chunk by chunk.)
    kwargs = dict(sigma=sigma, population=population, antithetic=False, chunk_size=chunk_size)
    base = jr.es.gradient(quadratic, PARAMS, jax.random.key(3), **kwargs)
    shifted = jr.es.gradient(lambda p: quadratic(p) + offset, PARAMS, jax.random.key(3), **kwargs)
    ulp = float(np.spacing(np.float32(2 * offset)))  # every loss + offset is below 2 * offset here
    atol = 5 * population**0.5 * ulp / (2 * 3**0.5) / ((population - 1) * sigma)
    chex.assert_trees_all_close(shifted, base, rtol=0, atol=atol)


@pytest.mark.parametrize("shaping", [None, "centered_ranks"])
def test_every_chunking_gives_the_same_estimate(shaping):
    # One vmap, a loop, chunks with a remainder: the noise of direction j depends only on (rng, j).
    x = jnp.asarray(np.random.default_rng(8).normal(size=(32, 8)), jnp.float32)
    params = {"w1": 0.1 * jnp.ones((8, 16)), "w2": 0.1 * jnp.ones((16, 1))}
    loss = lambda p: jnp.mean(jax.nn.relu(x @ p["w1"]) @ p["w2"])  # noqa: E731
    kwargs = dict(sigma=0.1, population=24, fitness_shaping=shaping)
    est = jax.jit(lambda p, k, c: jr.es.gradient(loss, p, k, chunk_size=c, **kwargs), static_argnums=2)
    whole = est(params, jax.random.key(9), 24)
    # Utilities (ranks, |u| <= 1/2) or losses (|f| <= ~1 here) times |e| <= 5, 12 directions,
    # each loss with ~(8 + 16) eps of relative rounding: tol ~ m (24 + m) eps * 5 / (n s).
    atol = 12 * (24 + 12) * EPS32 * 5 / (23 * 0.1)
    for c in (2, 6, 10):
        chex.assert_trees_all_close(est(params, jax.random.key(9), c), whole, rtol=0, atol=atol)


def test_integer_losses_and_mixed_half_params_work_under_strict_promotion():
    # Strict dtype promotion is on for the tests: an integer loss (an error count) and params
    # mixing bfloat16 and float32 failed inside jaxreg. An integer loss estimates as its floats do.
    x = jnp.array([3, -1, 10, 3, 0, 3, -7], jnp.int32)
    chex.assert_trees_all_equal(jr.es.centered_ranks(x), jr.es.centered_ranks(x.astype(jnp.float32)))
    count = lambda p: jnp.sum(jnp.round(4 * flat(p))).astype(jnp.int32)  # noqa: E731
    kw = dict(sigma=0.3, population=8, chunk_size=8)
    chex.assert_trees_all_equal(_es_call(count, **kw), _es_call(lambda p: count(p).astype(jnp.float32), **kw))
    mixed = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2)}
    loss = lambda p: jnp.sum(p["w"].astype(jnp.float32) ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
    g = _es_call(loss, params=mixed, **kw)
    g32 = _es_call(loss, params=jax.tree.map(lambda a: a.astype(jnp.float32), mixed), **kw)
    # The same float32 draw for both (noise is drawn in float32 for half leaves): the bfloat16
    # leaf's perturbation is the float32 one rounded, so its losses differ by bfloat16 rounding.
    assert g["w"].dtype == jnp.bfloat16 and g["b"].dtype == jnp.float32
    chex.assert_trees_all_close(g["b"], g32["b"], rtol=0.05, atol=0.05)


def test_centered_ranks_make_the_estimate_invariant_to_monotone_transforms():
    # The same chunking on both sides (a measured one could differ between the two programs).
    kwargs = dict(sigma=0.1, population=64, fitness_shaping="centered_ranks", chunk_size=16)
    g1 = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, **kwargs))(PARAMS, jax.random.key(4))
    g2 = jax.jit(lambda p, k: jr.es.gradient(lambda q: jnp.exp(quadratic(q) / 10.0) - 3.0, p, k, **kwargs))(
        PARAMS, jax.random.key(4)
    )
    # Both use the same utilities exactly (ranks of the same order) and the same noise: the same
    # float32 operations, so equal to the last bit.
    chex.assert_trees_all_close(g2, g1, rtol=0, atol=0)
    assert cosine(flat(g1), TRUE_GRAD) > 0.5


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_eager_gradient_does_not_compile_again_for_a_new_sigma(chunk_size, caplog):
    # The eager cache keys a Python number by value: a float sigma compiled a program per value.
    def loss(p):
        return jnp.sum(p["w"] ** 2)

    params = {"w": jnp.arange(3.0)}
    first = jr.es.gradient(loss, params, jax.random.key(0), sigma=0.1, population=8, chunk_size=chunk_size)
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        later = [
            jr.es.gradient(loss, params, jax.random.key(0), sigma=s, population=8, chunk_size=chunk_size)
            for s in (0.2, 0.3, jnp.float32(0.4))
        ]
    compiles = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert compiles == [], compiles[:3]
    # Antithetic on a quadratic the estimate does not depend on sigma (see above): the calls agree.
    for g in later:
        np.testing.assert_allclose(g["w"], first["w"], rtol=1e-5, atol=1e-6)


def test_value_and_gradient():
    value, grads = jax.jit(lambda p, k: jr.es.value_and_gradient(quadratic, p, k, sigma=0.1, population=16))(
        PARAMS, jax.random.key(5)
    )
    # The value: the same quadratic in float32 (d = 10, two dot products) vs float64 numpy.
    a64, d64 = np.asarray(A, np.float64), np.asarray(flat(PARAMS), np.float64) - np.asarray(C, np.float64)
    exact = 0.5 * d64 @ a64 @ d64
    np.testing.assert_allclose(
        float(value), exact, rtol=0, atol=12 * EPS32 * 0.5 * np.abs(d64) @ np.abs(a64) @ np.abs(d64)
    )
    expected = jax.jit(lambda p, k: jr.es.gradient(quadratic, p, k, sigma=0.1, population=16))(
        PARAMS, jax.random.key(5)
    )
    # The same program inside another jit: the same float32 operations.
    loss_scale = float(jnp.max(jnp.abs(flat(expected))))
    chex.assert_trees_all_close(grads, expected, rtol=0, atol=16 * EPS32 * loss_scale)


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
        with jax.numpy_dtype_promotion("standard"):  # optax's adam computes decay ** int32 count
            updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.jit(lambda c, k: jax.lax.scan(step, c, k))(
        (params, opt.init(params)), jax.random.split(jax.random.key(7), 800)
    )
    with_bias = np.linalg.lstsq(np.c_[x, np.ones(40)], y, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(params["w"]), with_bias[:5], atol=1e-2)
    np.testing.assert_allclose(float(params["b"]), with_bias[5], atol=1e-2)
    assert np.max(np.abs(with_bias[:5] - solution)) < 0.5  # sanity: the bias column matters little


def _es_call(loss=quadratic, params=PARAMS, rng=None, fn=jr.es.gradient, **kw):
    args = dict(sigma=0.1, population=8)
    args.update(kw)
    return fn(loss, params, jax.random.key(0) if rng is None else rng, **args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, r"es.gradient: sigma must be finite and > 0, got sigma = 0.0"),
        ({"sigma": -1.0}, r"sigma must be finite and > 0, got sigma = -1.0"),
        ({"sigma": jnp.ones(2)}, r"sigma must be a scalar, got sigma.shape = \(2,\)"),
        ({"population": 1, "antithetic": False}, r"population must be an int >= 2, got population = 1"),
        ({"population": 8.0}, r"population must be an int >= 2, got population = 8.0"),
        ({"population": 7}, r"must be even, got population = 7"),
        ({"chunk_size": 3}, r"chunk_size must be even, got chunk_size = 3"),
        ({"chunk_size": 0, "antithetic": False}, r"chunk_size must be an int >= 1, got chunk_size = 0"),
        ({"fitness_shaping": "ranks"}, r"fitness_shaping must be None, 'centered_ranks' or a callable"),
        (
            {"loss": lambda p: jnp.ones(2), "population": 4},
            r"loss_fn must return a scalar, got an output of shape \(2,\)",
        ),
        (
            {"loss": lambda p: 0.0, "params": {"n": jnp.zeros(2, jnp.int32)}, "population": 4},
            r"leaf 'n' with dtype int32",
        ),
        (
            {"loss": lambda p: 0.0, "params": jnp.zeros(2, jnp.int32), "population": 4},
            r"leaf '<root>' with dtype int32",
        ),
        ({"fn": jr.es.value_and_gradient, "population": 0}, r"es.value_and_gradient: population must be an int >= 2"),
        ({"rng": 0}, r"es.gradient: rng must be a PRNG key; pass a PRNG key such as jax.random.key\(0\)"),
        ({"rng": jnp.zeros(2, jnp.float32)}, r"rng must be a PRNG key.*dtype float32"),
        ({"rng": 3, "fn": jr.es.value_and_gradient}, r"es.value_and_gradient: rng must be a PRNG key"),
        ({"mesh": jax.devices()}, r"es.gradient: mesh must be a jax.sharding.Mesh or None, got mesh = \[Cpu"),
        # a has_aux loss reused for ES: np.shape of a tuple of tracers, jax's TracerArrayConversionError
        (
            {"loss": lambda p: (jnp.sum(p["a"]), {}), "population": 4},
            r"^es.gradient: loss_fn must return a scalar, got a tuple; for a loss with aux pass lambda p: loss_fn\(p\)\[0\]",
        ),
        (
            {"loss": lambda p: (jnp.sum(p["a"]), {}), "population": 4, "chunk_size": 2},
            r"^es.gradient: loss_fn must return a scalar, got a tuple",
        ),
        ({"loss": lambda p: None, "population": 4}, r"^es.gradient: loss_fn must return a scalar, got None\.$"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _es_call(**kwargs)


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize(("shaping", "chunk_size"), [(None, None), ("centered_ranks", None), ("centered_ranks", 4)])
def test_a_one_device_mesh_gives_the_unsplit_estimate(antithetic, shaping, chunk_size):
    # The shard_map path on one device: the same directions, sums and utilities (8 devices:
    # tests/sharding_checks.py). Both sum the same terms in the same order.
    mesh = jax.make_mesh((1,), ("pop",))
    bounded = lambda p: jax.nn.sigmoid(quadratic(p) - 14.0)  # noqa: E731  losses in (0, 1)
    kw = dict(population=24, antithetic=antithetic, fitness_shaping=shaping, chunk_size=chunk_size)
    split = _es_call(bounded, mesh=mesh, **kw)
    whole = _es_call(bounded, **kw)
    # The weighted sum may be fused or ordered differently: coefficients |c| <= 1 (losses or
    # utilities), |e| <= 5, at most 24 terms of ~(24 + 10) eps each: tol ~ m (24 + m) eps 5 / (n s).
    chex.assert_trees_all_close(split, whole, rtol=0, atol=24 * (24 + 24) * EPS32 * 5 / (23 * 0.1))
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(whole)) > 0.1  # the tolerance is ~1e-3 of it
    value, grads = jr.es.value_and_gradient(bounded, PARAMS, jax.random.key(0), sigma=0.1, mesh=mesh, **kw)
    assert value == bounded(PARAMS)
    chex.assert_trees_all_close(grads, split, rtol=0, atol=0)


def test_odd_population_is_allowed_without_antithetic_pairs():
    grads = _es_call(population=7, antithetic=False)
    assert jax.tree.structure(grads) == jax.tree.structure(PARAMS)


def test_a_raw_uint32_key_is_accepted_like_the_typed_one():
    # jax.random.PRNGKey(0) (raw uint32[2]) and jax.random.key(0) hold the same threefry key.
    chex.assert_trees_all_close(_es_call(rng=jax.random.PRNGKey(0)), _es_call(rng=jax.random.key(0)), rtol=0, atol=0)


def test_python_float_params_are_a_0d_array():
    """A Python float is a pytree leaf: it failed in the chunking ('float' object is not subscriptable)."""
    loss = lambda q: q**2  # noqa: E731
    key = jax.random.key(0)
    want = jr.es.gradient(loss, jnp.float32(1.0), key, sigma=0.1, population=8)
    np.testing.assert_array_equal(jr.es.gradient(loss, 1.0, key, sigma=0.1, population=8), want)
