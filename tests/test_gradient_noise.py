"""add_gradient_noise: its variance schedule and the independence of members, with explicit statistical bounds."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr


def noise_over_steps(eta, gamma, key, num_steps, size):
    """The noise added to zero updates at steps t = 0..num_steps-1, shape (num_steps, size)."""
    tx = jr.add_gradient_noise(eta, gamma, key=key)

    def step(state, _):
        u, state = tx.update(jnp.zeros(size), state)
        return state, u

    return jax.lax.scan(step, tx.init(jnp.zeros(size)), None, length=num_steps)[1]


def test_variance_follows_eta_over_one_plus_t_to_the_gamma():
    eta, gamma, n = 0.3, 0.55, 20000
    noise = np.asarray(jax.jit(noise_over_steps, static_argnums=(3, 4))(eta, gamma, jax.random.key(0), 6, n))
    for t in range(6):
        var = eta / (1 + t) ** gamma
        # the sample variance of n Gaussians has standard error var * sqrt(2 / (n - 1)): 6 of them
        assert abs(noise[t].var(ddof=1) - var) < 6 * var * np.sqrt(2 / (n - 1)), (t, noise[t].var(), var)
        assert abs(noise[t].mean()) < 6 * np.sqrt(var / n)
    # steps draw independent noise: correlation of consecutive steps within 6 / sqrt(n)
    assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 6 / np.sqrt(n)


def test_under_x64_eta_and_the_noise_scale_are_float64():
    # eta and gamma were float32 leaves whatever the mode: under x64 the stddev ratio of two etas
    # on the same key was float32-exact only (5.9e-8 off sqrt(1/3)).
    with jax.enable_x64(True):
        u = jnp.zeros(4, jnp.float64)
        a, b = (jr.add_gradient_noise(eta, 0.55, key=jax.random.key(0)) for eta in (0.01, 0.03))
        na, state = a.update(u, a.init(u))
        nb, _ = b.update(u, b.init(u))
        assert state.eta.dtype == jnp.float64 and float(state.eta) == 0.01 and na.dtype == jnp.float64
        # the same normal draw, scaled by sqrt(eta): the ratio to a few float64 ulps
        np.testing.assert_allclose(np.asarray(na) / np.asarray(nb), np.sqrt(1 / 3), rtol=8 * np.finfo(np.float64).eps)


def test_members_built_from_split_keys_get_independent_noise():
    members, n = 4, 20000
    keys = jax.random.split(jax.random.key(1), members)
    noise = np.asarray(jax.jit(jax.vmap(lambda k: noise_over_steps(1.0, 0.55, k, 2, n)))(keys))  # (members, 2, n)
    corr = np.corrcoef(noise[:, 0, :])
    off = ~np.eye(members, dtype=bool)
    assert np.all(np.abs(corr[off]) < 6 / np.sqrt(n)), corr
    # and a vmapped member equals the same member run alone
    alone = np.asarray(noise_over_steps(1.0, 0.55, keys[2], 2, n))
    np.testing.assert_array_equal(noise[2], alone)


def test_noise_is_added_to_every_leaf_in_its_dtype_inside_a_chain():
    params = {"w": jnp.ones((3, 2)), "h": jnp.ones(4, jnp.bfloat16)}
    opt = optax.chain(jr.add_gradient_noise(0.01, key=jax.random.key(2)), optax.sgd(1.0))
    updates, state = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    assert updates["h"].dtype == jnp.bfloat16 and updates["w"].dtype == jnp.float32
    assert np.all(np.asarray(updates["w"]) != 0) and int(state[0].count) == 1


def test_new_eta_does_not_recompile():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(eta):
        return noise_over_steps(eta, 0.55, jax.random.key(0), 2, 8)

    a, b = run(0.01), run(0.04)
    np.testing.assert_allclose(np.asarray(b), 2 * np.asarray(a), rtol=1e-5)  # same draws, twice the std


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-0.1,), r"add_gradient_noise: eta must be finite and >= 0, got eta = -0\.1"),
        ((0.1, -1.0), r"add_gradient_noise: gamma must be finite and >= 0, got gamma = -1\.0"),
        ((jnp.array([0.1, 0.2]),), r"add_gradient_noise: eta must be a scalar, got eta\.shape = \(2,\)"),
        ((0.1, jnp.ones(3)), r"add_gradient_noise: gamma must be a scalar, got gamma\.shape = \(3,\)"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        jr.add_gradient_noise(*args, key=jax.random.key(0))


def test_a_key_that_is_not_a_prng_key_is_refused():
    with pytest.raises(ValueError, match=r"add_gradient_noise: key must be a PRNG key.*Got key = 0\."):
        jr.add_gradient_noise(0.01, key=0)


def test_integer_leaves_pass_through():
    noise = jr.add_gradient_noise(0.1, key=jax.random.key(0))
    updates = {"w": jnp.zeros(2), "count": jnp.array(3, jnp.int32)}
    out, _ = noise.update(updates, noise.init(updates))
    assert out["count"].dtype == jnp.int32 and int(out["count"]) == 3
    assert np.all(np.asarray(out["w"]) != 0.0)  # the float leaf got its noise


def test_the_step_count_saturates_at_the_int32_maximum():
    # optax's counts saturate (optax.safe_increment); a wrapped count would make (1 + t)**gamma NaN.
    tx = jr.add_gradient_noise(0.1, key=jax.random.key(0))
    top = np.iinfo(np.int32).max
    state = tx.init(jnp.zeros(4))._replace(count=jnp.int32(top - 1))
    for _ in range(3):
        u, state = tx.update(jnp.zeros(4), state)
    assert int(state.count) == top
    assert bool(jnp.all(jnp.isfinite(u))) and float(jnp.max(jnp.abs(u))) > 0.0
