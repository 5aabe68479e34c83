"""The one-pass threefry of ``jaxreg._random`` gives jax's random numbers bit for bit.

``jr.dropout``, ``jr.fit``'s shuffles and the library's Gaussian noise (ES perturbations,
noise injection, mean-field samples, SWAG, gradient noise) hash their bits through it, so a user
who writes the same draw with ``jax.random`` gets the same numbers. The hash itself is checked
against the published known-answer vectors of Threefry-2x32-20 (Salmon et al., 2011; Random123's
``kat_vectors``), which are independent of jax.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32 as jax_threefry_2x32

from jaxreg import _random

SHAPES = [(), (0,), (1,), (5,), (3, 7), (2, 3, 5), (1437,)]
KEYS = {
    "typed": lambda: jax.random.key(123),
    "raw": lambda: jax.random.PRNGKey(7),
}


def _data(key):
    return np.asarray(jax.random.key_data(key) if _random.is_key_array(key) else key)


@pytest.fixture(params=[True, False], ids=["partitionable", "original"])
def stream(request):
    with jax.threefry_partitionable(request.param):
        yield request.param


@pytest.mark.parametrize(
    "key, count, expected",
    [
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ],
)
def test_hash_matches_known_answers(key, count, expected):
    k = np.asarray(key, np.uint32)
    x1, x2 = _random.threefry2x32(k[0], k[1], jnp.uint32(count[0]), jnp.uint32(count[1]))
    assert (int(x1), int(x2)) == expected


@pytest.mark.parametrize("write_once", [False, True])
@pytest.mark.parametrize("size", [0, 1, 2, 3, 6, 11, 4096])
def test_threefry_2x32_equals_jax(size, write_once):
    key = np.asarray([0x13198A2E, 0x03707344], np.uint32)
    count = jnp.arange(size, dtype=jnp.uint32) * jnp.uint32(2654435761)  # not an iota: any counter
    ours = _random.threefry_2x32(key, count, write_once=write_once)
    np.testing.assert_array_equal(ours, jax_threefry_2x32(key, count))
    np.testing.assert_array_equal(_random.threefry_2x32(key, count.reshape(-1, 1)), ours.reshape(-1, 1))


@pytest.mark.parametrize("kind", KEYS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bits_equal_jax(stream, kind, shape):
    key = KEYS[kind]()
    ours = _random.bits(key, shape)
    assert ours.dtype == jnp.uint32 and ours.shape == shape
    np.testing.assert_array_equal(ours, jax.random.bits(key, shape, jnp.uint32))
    np.testing.assert_array_equal(jax.jit(lambda k: _random.bits(k, shape))(key), ours)


@pytest.mark.parametrize("kind", KEYS)
def test_split_and_fold_in_equal_jax(stream, kind):
    key = KEYS[kind]()
    for num in (1, 2, 3, 8):
        np.testing.assert_array_equal(_data(_random.split(key, num)), _data(jax.random.split(key, num)))
    for data in (0, 1, 17, 2**31 - 1, 2**32 - 1):
        np.testing.assert_array_equal(_data(_random.fold_in(key, data)), _data(jax.random.fold_in(key, data)))
    keys, steps = jax.random.split(key, 4), jnp.arange(4, dtype=jnp.int32) * 1000
    traced = jax.jit(jax.vmap(_random.fold_in))(keys, steps)
    np.testing.assert_array_equal(_data(traced), _data(jax.vmap(jax.random.fold_in)(keys, steps)))
    assert _random.is_key_array(_random.split(key)) == _random.is_key_array(key)


@pytest.mark.parametrize("write_once", [False, True])
@pytest.mark.parametrize("kind", KEYS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", [(), (0,), (1,), (2,), (3, 7), (1001,)])
def test_standard_normal_equals_jax(stream, kind, dtype, shape, write_once):
    key = KEYS[kind]()
    ours = _random.standard_normal(key, shape, dtype, write_once=write_once)
    assert ours.dtype == dtype
    np.testing.assert_array_equal(
        np.asarray(ours, np.float64), np.asarray(jax.random.normal(key, shape, dtype), np.float64)
    )


@pytest.mark.parametrize("write_once", [False, True])
def test_standard_normal_float64_equals_jax(stream, write_once):
    with jax.enable_x64(True):
        key = jax.random.key(4)
        for shape in [(), (5,), (3, 7), (1001,)]:
            ours = _random.standard_normal(key, shape, jnp.float64, write_once=write_once)
            assert ours.dtype == jnp.float64
            np.testing.assert_array_equal(ours, jax.random.normal(key, shape, jnp.float64))


@pytest.mark.parametrize("write_once", [False, True])
def test_stacked_keys_under_vmap_equal_jax(write_once):
    keys = jax.random.split(jax.random.key(9), 3)
    draw = jax.jit(jax.vmap(lambda k: _random.standard_normal(k, (4, 5), jnp.float32, write_once=write_once)))
    np.testing.assert_array_equal(draw(keys), jax.vmap(lambda k: jax.random.normal(k, (4, 5), jnp.float32))(keys))
    bits = jax.vmap(lambda k: _random.bits(k, (6,)))(keys)
    np.testing.assert_array_equal(bits, np.stack([jax.random.bits(k, (6,), jnp.uint32) for k in keys]))


def test_other_key_kinds_go_to_jax():
    key = jax.random.key(3, impl="rbg")
    np.testing.assert_array_equal(_random.bits(key, (7,)), jax.random.bits(key, (7,), jnp.uint32))
    np.testing.assert_array_equal(_random.standard_normal(key, (7,), jnp.float32), jax.random.normal(key, (7,)))
    np.testing.assert_array_equal(_data(_random.split(key, 3)), _data(jax.random.split(key, 3)))
    np.testing.assert_array_equal(_data(_random.fold_in(key, 5)), _data(jax.random.fold_in(key, 5)))


@pytest.mark.parametrize("write_once", [False, True])
def test_normal_leaves_equal_one_jax_draw(write_once):
    # normal_leaves cuts ONE draw of the total size into the leaves (documented): jax's draw,
    # also written once and read by several consumers under jit.
    leaves = [jnp.zeros((3, 4)), jnp.zeros((5,)), jnp.zeros(())]
    key = jax.random.key(11)
    flat = np.asarray(jax.random.normal(key, (18,), jnp.float32))
    got = _random.normal_leaves(key, leaves, write_once=write_once)
    np.testing.assert_array_equal(np.concatenate([np.ravel(g) for g in got]), flat)
    assert [g.shape for g in got] == [(3, 4), (5,), ()]

    @jax.jit
    def readers(k):
        eps = _random.normal_leaves(k, leaves, write_once=write_once)
        return [1.0 + e for e in eps], [1.0 - e for e in eps], sum(jnp.sum(e * e) for e in eps)

    plus, minus, sq = readers(key)
    plus, minus = (np.concatenate([np.ravel(a) for a in t]) for t in (plus, minus))
    if write_once:  # the readers read the written draw itself
        np.testing.assert_array_equal(plus, np.float32(1.0) + flat)
        np.testing.assert_array_equal(minus, np.float32(1.0) - flat)
    else:  # fused into each reader, where XLA may contract sqrt(2) * erfinv(u) + 1 into one rounding
        tol = 2 * np.finfo(np.float32).eps * (1.0 + np.abs(flat))
        assert np.all(np.abs(plus - (1.0 + flat.astype(np.float64))) <= tol)
        assert np.all(np.abs(minus - (1.0 - flat.astype(np.float64))) <= tol)
    np.testing.assert_allclose(sq, np.sum(flat.astype(np.float64) ** 2), rtol=1e-5)


@pytest.mark.parametrize("precision", [32, 16, 8])
@pytest.mark.parametrize("size", [1, 7, 4096])
def test_dropout_thresholds_are_jax_bits(precision, size):
    # jr.dropout's documented stream: jax.random.bits with partitionable off, each word cut into
    # 32 / precision thresholds, low bits first (numpy's little-endian view of the words).
    from jaxreg.dropout import keep_mask, quantize_rate

    key, rate = jax.random.key(21), 0.3
    per_word = 32 // precision
    with jax.threefry_partitionable(False):
        words = np.asarray(jax.random.bits(key, (-(-size // per_word),), jnp.uint32))
    u = words.view(f"<u{precision // 8}")[:size]
    expected = u >= round(float(quantize_rate(rate, precision)) * 2**precision)
    np.testing.assert_array_equal(keep_mask(key, (size,), rate, precision=precision), expected)


def test_raw_keys_of_another_default_impl_go_to_jax():
    # A raw philox key is uint32[2] too: it must not be hashed as a threefry key.
    with jax.default_prng_impl("philox4x32"):
        key = jax.random.PRNGKey(0)
        np.testing.assert_array_equal(_random.bits(key, (5,)), jax.random.bits(key, (5,), jnp.uint32))
        np.testing.assert_array_equal(_random.standard_normal(key, (5,), jnp.float32), jax.random.normal(key, (5,)))
        np.testing.assert_array_equal(_random.split(key, 3), jax.random.split(key, 3))
        np.testing.assert_array_equal(_random.fold_in(key, 9), jax.random.fold_in(key, 9))


def test_argument_forms_read_as_jax_reads_them():
    key = jax.random.key(8)
    np.testing.assert_array_equal(_random.bits(key, 5), jax.random.bits(key, 5, jnp.uint32))
    np.testing.assert_array_equal(_random.standard_normal(key, 5, None), jax.random.normal(key, 5))
    np.testing.assert_array_equal(_data(_random.split(key, (2, 3))), _data(jax.random.split(key, (2, 3))))
    with pytest.raises(TypeError, match="scalar"):
        _random.fold_in(key, jnp.arange(3))
    if not jax.config.jax_enable_x64:  # float64 without x64 is float32 in jax (with a warning)
        with pytest.warns(UserWarning):
            expected = jax.random.normal(key, (5,), jnp.float64)
        np.testing.assert_array_equal(_random.standard_normal(key, (5,), jnp.float64), expected)
