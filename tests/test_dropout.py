"""Tests of jr.dropout, jr.mc_dropout and jr.mc_dropout_samples."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxreg as jr
from jaxreg.dropout import keep_mask, quantize_rate

EPS32 = float(np.finfo(np.float32).eps)


def _assert_within(observed, expected, std, sigmas=5.0):
    assert abs(observed - expected) <= sigmas * std, f"observed {observed}, expected {expected} +- {sigmas} * {std}"


@pytest.mark.parametrize("precision", [8, 16, 32])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_keep_fraction_matches_quantized_rate(precision, rate):
    n = 200_003  # not a multiple of 4: the last word is cut
    mask = np.asarray(keep_mask(jax.random.key(0), (n,), rate, precision=precision))
    q = round(rate * 2**precision) / 2**precision
    _assert_within(mask.mean(), 1 - q, math.sqrt(q * (1 - q) / n))


def test_quantized_rate_and_exact_scale():
    assert float(quantize_rate(0.1, 8)) == 26 / 256
    assert float(quantize_rate(0.1)) == round(0.1 * 65536) / 65536
    for precision in (8, 16, 32):
        y = np.asarray(jr.dropout(jax.random.key(1), jnp.ones(10_000), 0.1, precision=precision))
        values = set(np.unique(y).tolist())
        # Survivors are scaled by exactly 1 / (1 - rate), whatever the threshold resolution.
        assert values == {0.0, (np.float32(1.0) / (np.float32(1.0) - np.float32(0.1))).item()}, values


@pytest.mark.parametrize("fn", ["dropout", "drop_path"])
def test_float64_survivors_are_scaled_in_float64(fn):
    # Under x64 a float64 x is scaled by 1 / (1 - rate) rounded once in float64 (flax's x / keep_prob).
    with jax.enable_x64(True):
        x = jnp.ones((1000, 1), jnp.float64)
        y = np.asarray(getattr(jr, fn)(jax.random.key(1), x, 0.3))
    assert y.dtype == np.float64
    assert set(np.unique(y).tolist()) == {0.0, 1.0 / (1.0 - 0.3)}


def test_survivors_equal_flax_dropout_values():
    x = jnp.linspace(0.5, 2.0, 4000).reshape(40, 100)
    rate = 0.37
    ours = np.asarray(jr.dropout(jax.random.key(5), x, rate))
    ref = np.asarray(nn.Dropout(rate, deterministic=False).apply({}, x, rngs={"dropout": jax.random.key(6)}))
    kept_ours, kept_ref = ours != 0, ref != 0
    # x * (1 / (1 - rate)) in float32 vs x / (1 - rate) in float64: two roundings, 2 ulp.
    np.testing.assert_allclose(ours[kept_ours], np.asarray(x, np.float64)[kept_ours] / (1 - rate), rtol=2 * EPS32)
    np.testing.assert_allclose(ours[kept_ours & kept_ref], ref[kept_ours & kept_ref], rtol=2 * EPS32)
    _assert_within(kept_ours.mean(), 1 - rate, math.sqrt(rate * (1 - rate) / x.size))


@pytest.mark.parametrize("precision", [8, 16, 32])
def test_unbiased_mean(precision):
    x = jnp.linspace(-1.0, 2.0, 64)
    keys = jax.random.split(jax.random.key(2), 4000)
    ys = jax.vmap(lambda k: jr.dropout(k, x, 0.3, precision=precision))(keys)
    q = float(quantize_rate(0.3, precision))
    std = np.abs(np.asarray(x)) * math.sqrt(q / (1 - q) / len(keys))
    expected = np.asarray(x) * (1 - q) / (1 - 0.3)  # x itself to within 2**-(precision+1) / 0.7
    err = np.abs(np.asarray(ys.mean(0)) - expected)
    assert np.all(err <= 5 * std + 1e-6), err.max()


def test_masks_independent_across_keys_and_positions():
    a = np.asarray(keep_mask(jax.random.key(3), (100_000,), 0.5))
    b = np.asarray(keep_mask(jax.random.key(4), (100_000,), 0.5))
    # Two independent Bernoulli(1/2) masks agree half the time.
    _assert_within((a == b).mean(), 0.5, math.sqrt(0.25 / a.size))
    # Neighbouring units (bytes of one 32-bit word) are independent too.
    _assert_within((a[:-1] == a[1:]).mean(), 0.5, math.sqrt(0.25 / a.size))
    _assert_within((a[:-4] == a[4:]).mean(), 0.5, math.sqrt(0.25 / a.size))


def test_rate_zero_is_identity_and_traced_rate_sweeps():
    x = jnp.arange(6.0)
    assert jr.dropout(jax.random.key(0), x, 0.0) is x
    rates = jnp.array([0.0, 0.25, 0.5])
    ys = jax.vmap(lambda r: jr.dropout(jax.random.key(5), jnp.ones(40_000), r))(rates)
    kept = np.asarray((ys != 0).mean(axis=1))
    np.testing.assert_allclose(kept, [1.0, 0.75, 0.5], atol=0.015)
    np.testing.assert_allclose(np.asarray(ys.max(axis=1)), [1.0, 4 / 3, 2.0], rtol=2 * EPS32)  # 1 / 0.75: 1 ulp


def test_rate_rounding_to_one_gives_zeros_not_nan():
    y = jax.jit(lambda r: jr.dropout(jax.random.key(0), jnp.ones(8), r))(0.999)
    assert np.all(np.asarray(y) == 0.0)


def test_broadcast_dims_share_the_mask():
    y = np.asarray(jr.dropout(jax.random.key(6), jnp.ones((16, 300)), 0.5, broadcast_dims=(0,)))
    assert np.all(y == y[:1]), "the mask must be the same for every row"
    assert 0 < (y[0] == 0).sum() < 300
    # One axis as an int is the same (it was a TypeError: 'int' object is not iterable).
    for dims in (0, range(1), np.array([0])):  # any iterable of ints, as before
        np.testing.assert_array_equal(jr.dropout(jax.random.key(6), jnp.ones((16, 300)), 0.5, broadcast_dims=dims), y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 1.0}, r"rate = 1.0"),
        ({"rate": -0.1}, r"rate = -0.1"),
        ({"rate": float("nan")}, r"rate = nan"),
        ({"rate": jnp.array([0.1, 0.2])}, r"rate must be a scalar"),
        ({"rate": 0.5, "precision": 12}, r"precision = 12"),
        ({"rate": 0.5, "broadcast_dims": (2,)}, r"broadcast_dims = \(2,\)"),
        ({"rate": 0.5, "broadcast_dims": (0.5,)}, r"broadcast_dims must be an int or a sequence of ints"),
        ({"rate": 0.5, "broadcast_dims": True}, r"broadcast_dims = True"),
        (
            {"rate": 0.5, "rng": 0},
            r"dropout: rng must be a PRNG key; pass a PRNG key such as jax.random.key\(0\).*rng = 0",
        ),
        ({"rate": 0.5, "rng": jnp.int32(3)}, r"dropout: rng must be a PRNG key.*dtype int32"),
        (
            {"rate": 0.5, "rng": jnp.zeros(2, jnp.float32)},
            r"dropout: rng must be a PRNG key.*dtype float32 and shape \(2,\)",
        ),
        (
            {"rate": 0.5, "rng": jax.random.split(jax.random.key(0), 2)},
            r"dropout: rng must be a single PRNG key, got a key array of shape \(2,\)",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"rng": jax.random.key(0), **kwargs}
    with pytest.raises(ValueError, match=match):
        jr.dropout(args.pop("rng"), jnp.ones((2, 3)), **args)


def test_a_raw_uint32_key_gives_the_typed_keys_mask():
    # jax.random.PRNGKey(0) is the raw data of jax.random.key(0): the same threefry stream.
    x = jnp.ones((4, 64))
    np.testing.assert_array_equal(
        np.asarray(jr.dropout(jax.random.PRNGKey(0), x, 0.5)), np.asarray(jr.dropout(jax.random.key(0), x, 0.5))
    )


def test_dropout_through_linear_map_analytic_moments():
    # y = w . dropout(x): E[y] = w . x, Var[y] = sum (w x)^2 q / (1 - q), q the quantized rate.
    x = jnp.linspace(0.5, 1.5, 20)
    w = jnp.linspace(-1.0, 1.0, 20)
    rate = 0.3
    q = float(quantize_rate(rate))
    mean = float(w @ x)
    var = float(jnp.sum((w * x) ** 2)) * q / (1 - q)
    k = 8192
    pred = jr.mc_dropout(lambda w, x, rng: jr.dropout(rng, x, rate) @ w, w, x, jax.random.key(7), k, chunk_size=512)
    _assert_within(float(pred.mean), mean, math.sqrt(var / k))
    # The sample variance of K draws has standard error about var * sqrt(2 / K) (near-Gaussian sums).
    _assert_within(float(pred.variance), var, var * math.sqrt(2.0 / k) * 1.5)


def _mlp_apply(params, x, rng):
    h = jax.nn.relu(x @ params["w1"])
    h = jr.dropout(rng, h, 0.5)
    return h @ params["w2"]


@pytest.mark.parametrize("chunk_size", [None, 3, 40])
def test_mc_dropout_equals_stacked_samples(chunk_size):
    params = {"w1": jax.random.normal(jax.random.key(0), (5, 16)), "w2": jax.random.normal(jax.random.key(1), (16, 3))}
    x = jax.random.normal(jax.random.key(2), (4, 5))
    rng, k = jax.random.key(3), 10
    keys = jax.random.split(rng, k)
    single = jax.jit(_mlp_apply)
    samples = np.stack([np.asarray(single(params, x, keys[i])) for i in range(k)]).astype(np.float64)
    pred = jax.jit(lambda p, x, r: jr.mc_dropout(_mlp_apply, p, x, r, k, chunk_size=chunk_size))(params, x, rng)
    stacked = jax.jit(lambda p, r: jr.mc_dropout_samples(_mlp_apply, p, x, r, k, chunk_size=chunk_size))(params, rng)
    _assert_moments_of(pred, samples, hidden=16)
    # Each sample: the same masks, the same float32 ops (a vmap width may change the SIMD rounding
    # of the 5- and 16-term dot products): (5 + 16) eps of the largest |term| sum, bounded by scale.
    scale = float(np.max(np.abs(samples)))
    np.testing.assert_allclose(np.asarray(stacked), samples, rtol=0, atol=2 * 21 * EPS32 * max(scale, 1.0))


def _assert_moments_of(pred, samples, hidden):
    """pred is the mean and ddof=0 variance of float32 samples (compared with float64 moments).

    Each sample carries ~(inputs + hidden) eps of rounding relative to its magnitude ``scale``
    (two dot products); the mean of K such samples the same plus K eps of summation; the
    variance twice that relative to ``scale**2`` (squares, Chan's merge across chunks).
    """
    k = samples.shape[0]
    scale = max(float(np.max(np.abs(samples))), 1.0)
    rel = (5 + hidden + k) * EPS32
    np.testing.assert_allclose(np.asarray(pred.mean), samples.mean(0), rtol=0, atol=2 * rel * scale)
    np.testing.assert_allclose(np.asarray(pred.variance), samples.var(0, ddof=0), rtol=0, atol=4 * rel * scale**2)


def test_mc_dropout_pytree_outputs():
    def apply_fn(p, x, rng):
        y = jr.dropout(rng, x, 0.5) * p
        return {"y": y, "twice": 2 * y}

    pred = jax.jit(lambda r: jr.mc_dropout(apply_fn, 1.0, jnp.ones(3), r, 6, chunk_size=4))(jax.random.key(0))
    # Scaling by 2 commutes with every float32 rounding (barring underflow): equal to the bit.
    np.testing.assert_array_equal(np.asarray(pred.mean["twice"]), 2 * np.asarray(pred.mean["y"]))
    np.testing.assert_array_equal(np.asarray(pred.variance["twice"]), 4 * np.asarray(pred.variance["y"]))


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"num_samples": 0}, "num_samples = 0"), ({"chunk_size": 0}, "chunk_size = 0")]
)
def test_mc_dropout_bad_arguments(kwargs, match):
    args = {"num_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        jr.mc_dropout(_mlp_apply, None, None, jax.random.key(0), **args)


class _Linen(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic: bool = False):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.Dropout(0.5, deterministic=deterministic)(x)
        return nn.Dense(3)(x)


def test_flax_linen_dropout_rng_stream_feeds_mc_dropout():
    model = _Linen()
    x = jax.random.normal(jax.random.key(0), (4, 5))
    variables = model.init(jax.random.key(1), x, deterministic=True)

    def apply_fn(v, x, rng):
        return model.apply(v, x, rngs={"dropout": rng})

    rng, k = jax.random.key(2), 12
    keys = jax.random.split(rng, k)
    single = jax.jit(apply_fn)
    samples = np.stack([np.asarray(single(variables, x, keys[i])) for i in range(k)]).astype(np.float64)
    pred = jax.jit(lambda v, r: jr.mc_dropout(apply_fn, v, x, r, k, chunk_size=5))(variables, rng)
    _assert_moments_of(pred, samples, hidden=16)
    assert float(pred.variance.max()) > 0.0  # the masks differ


class _Nnx(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(5, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.5)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x, rng):
        return self.l2(self.drop(nnx.relu(self.l1(x)), rngs=rng))


def test_flax_nnx_model_feeds_mc_dropout():
    graphdef, state = nnx.split(_Nnx(nnx.Rngs(0)))

    def apply_fn(state, x, rng):
        return nnx.merge(graphdef, state)(x, rng)

    x = jax.random.normal(jax.random.key(0), (4, 5))
    rng, k = jax.random.key(2), 8
    keys = jax.random.split(rng, k)
    single = jax.jit(apply_fn)
    samples = np.stack([np.asarray(single(state, x, keys[i])) for i in range(k)]).astype(np.float64)
    pred = jax.jit(lambda s, r: jr.mc_dropout(apply_fn, s, x, r, k))(state, rng)
    _assert_moments_of(pred, samples, hidden=16)


class _NnxOwnStream(nnx.Module):
    """nnx's usual form: the Dropout holds its own stream, which the caller reseeds per mask."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(5, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.l1(x))))


@pytest.mark.parametrize("chunk_size", [1, 3, 8, None])
def test_an_nnx_model_reseeded_inside_apply_fn_feeds_mc_dropout(chunk_size):
    # nnx refuses to mutate a variable (nnx.reseed) merged from values of an outer trace: the
    # params and inputs closed over by the vmap failed with a TraceContextError (a plain
    # jax.vmap with in_axes=None ran).
    graphdef, state = nnx.split(_NnxOwnStream(nnx.Rngs(0, dropout=1)))

    def apply_fn(state, x, rng):
        model = nnx.merge(graphdef, state)
        nnx.reseed(model, dropout=rng)
        return model(x)

    x = jax.random.normal(jax.random.key(0), (4, 5))
    rng, k = jax.random.key(2), 8
    keys = jax.random.split(rng, k)
    single = jax.jit(apply_fn)
    samples = np.stack([np.asarray(single(state, x, keys[i])) for i in range(k)]).astype(np.float64)
    pred = jax.jit(lambda s, r: jr.mc_dropout(apply_fn, s, x, r, k, chunk_size=chunk_size))(state, rng)
    _assert_moments_of(pred, samples, hidden=16)
    assert float(pred.variance.max()) > 0.0  # the masks differ
    eager = jr.mc_dropout_samples(apply_fn, state, x, rng, k, chunk_size=chunk_size)
    np.testing.assert_allclose(np.asarray(eager), samples, rtol=4 * EPS32, atol=4 * EPS32 * np.abs(samples).max())


@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_an_nnx_model_reseeded_inside_ensemble_map_with_a_shared_state(chunk_size):
    # ensemble.map with in_axes=(None, 0): the shared state passes through vmap unmapped, as
    # jax.vmap passes it, so the model merged from it may reseed (it was closed over: nnx's
    # TraceContextError).
    graphdef, state = nnx.split(_NnxOwnStream(nnx.Rngs(0, dropout=1)))
    x = jax.random.normal(jax.random.key(0), (4, 5))

    def masked(state, key):
        model = nnx.merge(graphdef, state)
        nnx.reseed(model, dropout=key)
        return model(x)

    keys = jax.random.split(jax.random.key(3), 8)
    want = jax.vmap(masked, in_axes=(None, 0))(state, keys)
    got = jr.ensemble.map(masked, in_axes=(None, 0), chunk_size=chunk_size)(state, keys)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(want), rtol=4 * EPS32, atol=4 * EPS32 * float(jnp.abs(want).max())
    )


@pytest.mark.slow
def test_chunked_mc_dropout_memory_flat_in_num_samples():
    # XLA's own accounting of temporaries: with chunk_size the peak does not grow with K,
    # with a plain vmap it grows about linearly.
    params = {"w1": jnp.ones((5, 64)), "w2": jnp.ones((64, 3))}
    x = jnp.ones((64, 5))

    def temp_bytes(k, chunk):
        f = jax.jit(lambda p, r: jr.mc_dropout(_mlp_apply, p, x, r, k, chunk_size=chunk))
        analysis = f.lower(params, jax.random.key(0)).compile().memory_analysis()
        if analysis is None:
            pytest.skip("no memory analysis on this backend")
        return analysis.temp_size_in_bytes

    chunked = [temp_bytes(k, 4) for k in (16, 128)]
    plain = [temp_bytes(k, k) for k in (16, 128)]
    assert chunked[1] <= 1.1 * chunked[0] + 4096, chunked
    assert plain[1] >= 4 * plain[0], plain


def test_jr_dropout_stays_the_function_after_importing_the_submodule():
    import importlib
    import types

    module = importlib.import_module("jaxreg.dropout")
    assert isinstance(module, types.ModuleType)
    y = jr.dropout(jax.random.key(0), jnp.ones((2, 64)), 0.5)
    assert isinstance(jr.dropout, types.FunctionType)
    assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize(("precision", "rate"), [(8, 0.999), (16, 0.999995)])
def test_quantize_rate_is_the_rate_used_up_to_one_kept_level(precision, rate):
    # above 1 - 2**-(b+1) the threshold is capped to keep one level: p~ = 1 - 2**-b, not 1
    from jaxreg.dropout import quantize_rate

    assert float(quantize_rate(rate, precision=precision)) == 1 - 2.0**-precision
    n = 2**22
    kept = float(jnp.mean(jr.dropout(jax.random.key(0), jnp.ones(n), rate, precision=precision) > 0))
    p_keep = 2.0**-precision
    assert abs(kept - p_keep) < 6 * np.sqrt(p_keep / n)  # binomial: 6 standard deviations


def test_rate_zero_checks_broadcast_dims_and_a_rate_that_is_one_in_float32_is_refused():
    x = jnp.ones((2, 3))
    for rate in (0.0, 0.5):  # the rate-0 shortcut skipped the check: a sweep found it later
        with pytest.raises(
            ValueError, match=r"broadcast_dims must be axes of x \(ndim 2\), got broadcast_dims = \(5,\)"
        ):
            jr.dropout(jax.random.key(0), x, rate, broadcast_dims=(5,))
    with pytest.raises(
        ValueError, match=r"^dropout: broadcast_dims must not repeat an axis, got broadcast_dims = \(0, -2\)"
    ):
        jr.dropout(jax.random.key(0), x, 0.5, broadcast_dims=(0, -2))  # as max_norm's axis refuses
    with pytest.raises(ValueError, match=r"dropout: rate must be below 1 in float32, got rate = 0\.99999999"):
        jr.dropout(jax.random.key(0), x, 0.99999999)  # it kept 2**-16 of the units, scaled by 0


@pytest.mark.parametrize(
    "fn",
    [
        lambda b: jr.dropout(jax.random.key(0), jnp.ones(4), 0.5, precision=b),
        lambda b: keep_mask(jax.random.key(0), (4,), 0.5, precision=b),
        lambda b: quantize_rate(0.1, precision=b),
    ],
)
def test_precision_is_static_and_checked_by_name(fn):
    with pytest.raises(ValueError, match=r"precision is static .* got precision = a traced value"):
        jax.jit(fn)(16)  # was jax's TracerBoolConversionError from inside the check
    with pytest.raises(
        ValueError, match=r"precision must be one of \(8, 16, 32\) \(bits per threshold\), got precision = 12"
    ):
        fn(12)


def test_an_nnx_rngs_given_as_the_key_is_refused_with_the_fix():
    """An nnx.Rngs answers .dtype with a stream (flax's fallback), and numpy's TypeError named
    neither the argument nor what to pass."""
    from flax import nnx

    rngs = nnx.Rngs(0)
    for rng, kind in ((rngs, "Rngs"), (rngs.dropout, "RngStream")):
        with pytest.raises(ValueError, match=rf"^dropout: rng must be a PRNG key; .* Got an nnx.{kind}; draw a key"):
            jr.dropout(rng, jnp.ones(3), 0.5)
    with pytest.raises(ValueError, match=r"^ensemble.init: rng must be a PRNG key; .* Got an nnx.Rngs"):
        jr.ensemble.init(lambda k: jnp.zeros(2), rngs, 2)
    np.testing.assert_array_equal(jr.dropout(rngs.dropout(), jnp.ones(3), 0.0), jnp.ones(3))  # a drawn key works


@pytest.mark.parametrize("rate", [-1.0, 2.0, float("nan"), True, "0.5", jnp.array([0.1, 1.5])], ids=str)
@pytest.mark.parametrize("fn", ["keep_mask", "quantize_rate"])
def test_keep_mask_and_quantize_rate_check_the_rate_as_dropout_does(fn, rate):
    """Both are public: -1 and NaN kept every unit, 2.0 and True dropped all, the text '0.5'
    worked as 0.5."""
    from jaxreg.dropout import keep_mask, quantize_rate

    call = {
        "keep_mask": lambda: keep_mask(jax.random.key(0), (8,), rate),
        "quantize_rate": lambda: quantize_rate(rate),
    }[fn]
    with pytest.raises(ValueError, match=rf"^{fn}: rate must be"):
        call()
    with pytest.raises(ValueError, match=r"^dropout: rate must be"):  # the same refusal as dropout's
        jr.dropout(jax.random.key(0), jnp.ones(8), rate)


def test_keep_mask_and_quantize_rate_take_a_rate_per_unit():
    """An array of rates broadcasting to the mask (a rate per column) is each unit's own rate."""
    from jaxreg.dropout import keep_mask, quantize_rate

    rates = jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_array_equal(quantize_rate(rates, 8), [float(quantize_rate(r, 8)) for r in (0.1, 0.5, 0.9)])
    n = 20_000
    kept = np.asarray(keep_mask(jax.random.key(0), (n, 3), rates)).mean(axis=0)
    p_keep = 1 - np.asarray(quantize_rate(rates))
    assert np.all(np.abs(kept - p_keep) < 6 * np.sqrt(p_keep * (1 - p_keep) / n))  # 6 binomial sds
    with pytest.raises(ValueError, match=r"^keep_mask: rate must broadcast to shape \(4, 3\), got rate.shape = \(2,\)"):
        keep_mask(jax.random.key(0), (4, 3), jnp.array([0.1, 0.2]))
