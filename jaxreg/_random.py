"""Random-key helpers shared by ``dropout``, ``ensemble``, ``es`` and ``variational``.

``check_key`` turns a wrong ``rng`` (an int seed, a float array) into a ``ValueError`` that says
a PRNG key is needed, before XLA sees it; ``normal_leaves`` draws standard normal noise shaped
like a list of leaves from one random draw (ES perturbations and mean-field samples alike).
``bits``, ``split``, ``fold_in`` and ``standard_normal`` are jax's own draws bit for bit, with
threefry's rounds written out (one fused pass; jax's CPU lowering loops 5 times over the words).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._tree import compute_dtype, wider_dtype


def _dtype(x: Any) -> Any:
    """``x.dtype`` if it is a dtype (numpy's or a key's), else ``None``: an ``nnx.Rngs`` answers
    ``.dtype`` with an ``RngStream`` (flax's fallback for unknown names), which numpy then refused
    with a TypeError naming neither the argument nor the fix."""
    dtype = getattr(x, "dtype", None)
    try:
        jnp.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return None
    return dtype


def is_key_array(rng: Any) -> bool:
    """Whether ``rng`` is a typed key array (``jax.random.key``) of any shape."""
    dtype = _dtype(rng)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def check_key(rng: Any, where: str, *, stacked: bool = False, name: str = "rng") -> None:
    """Raise ``ValueError`` unless ``rng`` is a PRNG key (typed, or a raw ``uint32[2]`` key).

    With ``stacked=True`` a leading axis of keys (``jax.random.split(key, n)``) is accepted too.
    The check reads only dtype and shape, so it also holds for traced keys. ``name`` is the
    argument's name in the message (``key`` for ``add_gradient_noise``).
    """
    hint = "pass a PRNG key such as jax.random.key(0) (or jax.random.split(key, n) for one per member)"
    if is_key_array(rng):
        if jnp.ndim(rng) == 0 or (stacked and jnp.ndim(rng) == 1):
            return
        raise ValueError(f"{where}: {name} must be a single PRNG key, got a key array of shape {jnp.shape(rng)}.")
    dtype = _dtype(rng)
    shape = jnp.shape(rng) if dtype is not None else None
    if dtype is not None and dtype == np.uint32 and shape is not None and len(shape) >= 1 and shape[-1] == 2:
        if len(shape) == 1 or (stacked and len(shape) == 2):
            return  # a raw (legacy) jax.random.PRNGKey
    if dtype is not None:
        shown = f"{name} of dtype {dtype} and shape {shape}"
    elif type(rng).__name__ in ("Rngs", "RngStream"):  # flax's, not imported here
        shown = f"an nnx.{type(rng).__name__}; draw a key from it, e.g. rngs.dropout() or rngs()"
    else:
        text = repr(rng)
        shown = f"{name} = {text}" if len(text) <= 120 else f"a {type(rng).__name__}"
    raise ValueError(f"{where}: {name} must be a PRNG key; {hint}. Got {shown}.")


def normal(rng: jax.Array, shape: Any, dtype: Any, *, write_once: bool = False) -> jax.Array:
    """``jax.random.normal`` drawn in float32 for half precision, then rounded to ``dtype``.

    jax's normal sampler in bfloat16 (8 mantissa bits) has mean -0.012, 128 distinct values and
    no tail past 2.9 sigma; float16's mean is -0.002. Rounding a float32 draw is unbiased. The
    draw is jax's bit for bit, its bits hashed in one pass (``standard_normal``, which says when
    ``write_once`` pays).
    """
    return standard_normal(rng, shape, compute_dtype(dtype), write_once=write_once).astype(dtype)


def normal_leaves(rng: jax.Array, leaves: list[Any], *, write_once: bool = False) -> list[jax.Array]:
    """Standard normal noise shaped like each leaf, in the leaf's dtype, from ONE random draw (as ``normal``).

    One flat draw split into leaves (rather than one draw per leaf) keeps XLA compile time flat
    in the number of leaves: every threefry call is compiled separately, seconds each on a CPU.
    """
    sizes = [int(np.prod(jnp.shape(x), dtype=np.int64)) for x in leaves]
    dtype = functools.reduce(wider_dtype, [jnp.result_type(x) for x in leaves])  # bfloat16 beside float32 too
    flat = standard_normal(rng, (sum(sizes),), compute_dtype(dtype), write_once=write_once)  # float32 for half
    offsets = np.cumsum([0, *sizes])
    return [
        flat[int(start) : int(start) + size].reshape(jnp.shape(x)).astype(jnp.result_type(x))
        for start, size, x in zip(offsets, sizes, leaves)
    ]


# ----------------------------------------------------------------------------- threefry in one pass
#
# jax lowers its threefry2x32 hash on CPU as a rolled loop (a ``while`` of 5 iterations, to keep
# compile times down), which reads and writes both words of every counter 5 times and pays a few
# thunks per iteration: for a dropout mask of 16k words it ran 2.7x slower than the same 20 rounds
# written out, which XLA fuses into one elementwise pass (3.3x at 512k words; AMD EPYC). The
# functions below compute jax's bits bit for bit with the rounds written out; they serve
# threefry keys only and hand any other key to ``jax.random``.

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x: jax.Array, d: int) -> jax.Array:
    return jax.lax.shift_left(x, np.uint32(d)) | jax.lax.shift_right_logical(x, np.uint32(32 - d))


# Jitted: called outside jit its ~100 elementwise operations ran one dispatch each (jr.dropout
# of a 128x256 activation 5 ms a call, where jax's own random functions, jitted, take 0.2);
# inside jit XLA inlines the call and fuses the rounds as before.
@jax.jit
def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 hash (20 rounds) of counter words ``(x1, x2)`` under key ``(k1, k2)``.

    The same function as jax's ``threefry2x32_p`` (Salmon et al., 2011), written out round by
    round: one fused elementwise pass where jax's CPU lowering runs a 5-iteration loop.
    """
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ _rotate_left(x2, r)
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def threefry_2x32(keypair: jax.Array, count: jax.Array, *, write_once: bool = False) -> jax.Array:
    """``jax.extend.random.threefry_2x32(keypair, count)``, bit for bit: the hash of a ``uint32`` counter.

    The counter is flattened, zero-padded to even length and split in halves, as jax does. XLA
    fuses the hash into its consumers, computing it again for every element that reads a word:
    cheaper than writing the words out where each is read once or twice, but where each word
    feeds many elements (8-bit dropout cuts it into 4 thresholds, each hash gives 2 words) the
    recomputation dominated (64x512x512: 1.4x slower than with the words written once; AMD
    EPYC). ``write_once=True`` runs the hash as a ``lax.map`` over two halves of the pairs, a
    loop XLA neither inlines nor fuses into the consumer: one pass, its words written once.
    """
    count = jnp.asarray(count, jnp.uint32)
    flat = count.reshape(-1)
    size = flat.shape[0]
    pairs = -(-size // 2)
    flat = jnp.concatenate([flat, jnp.zeros((2 * pairs - size,), jnp.uint32)])
    x1, x2 = flat[:pairs], flat[pairs:]
    if write_once:
        y1, y2 = _hash_in_two_halves(keypair[0], keypair[1], x1, x2)
    else:
        y1, y2 = threefry2x32(keypair[0], keypair[1], x1, x2)
    return jnp.concatenate([y1, y2])[:size].reshape(count.shape)


# The loops below are jitted functions of their own: called outside jit, a lax.map built
# anew on each call was traced and compiled again every time (jr.dropout at 8 bits ran 110 ms a
# call eagerly against 6 at 16 bits); inside jit XLA inlines the call.
@jax.jit
def _hash_in_two_halves(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> Any:
    return _in_two_halves(functools.partial(threefry2x32, k1, k2), x1, x2)


@functools.partial(jax.jit, static_argnames="dtype")
def _normal_in_two_halves(key: jax.Array, low: jax.Array, dtype: Any) -> jax.Array:
    return _in_two_halves(functools.partial(_normal_of_index, key, dtype=dtype), low)


def _in_two_halves(fn: Any, *xs: jax.Array) -> Any:
    """``fn(*xs)`` of elementwise ``fn`` on 1-d ``xs``, run as a ``lax.map`` over two halves.

    XLA neither inlines that loop nor fuses it into the readers of its result, so the result is
    written once (the second half padded with zeros by at most one element, then cut).
    """
    n = xs[0].shape[0]
    rows = -(-n // 2)
    halves = [jnp.concatenate([x, jnp.zeros((2 * rows - n,), x.dtype)]).reshape(2, rows) for x in xs]
    out = jax.lax.map(lambda h: fn(*h), halves)
    return jax.tree.map(lambda y: y.reshape(-1)[:n], out)


def threefry_key_data(rng: jax.Array) -> tuple[jax.Array, bool] | None:
    """``(uint32[2] key data, typed)`` of a single threefry key, or None for another kind of key."""
    if is_key_array(rng):
        if str(jax.random.key_impl(rng)) != "threefry2x32" or jnp.ndim(rng) != 0:
            return None
        return jax.random.key_data(rng), True
    if (
        getattr(rng, "dtype", None) == np.uint32
        and jnp.shape(rng) == (2,)
        and jax.config.jax_default_prng_impl == "threefry2x32"  # (a raw philox key is uint32[2] too)
    ):
        return jnp.asarray(rng), False
    return None


def _shape(shape: Any) -> tuple[int, ...]:
    """A shape as a tuple of ints; an int is a 1-d shape, as ``jax.random`` reads it."""
    return (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)


def _as_key(data: jax.Array, typed: bool) -> jax.Array:
    return jax.random.wrap_key_data(data, impl="threefry2x32") if typed else data


def _hash_index(key: jax.Array, low: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The hash of the 64-bit indices whose low words are ``low`` (high words 0: a size below 2**32).

    jax's partitionable stream hashes each element's flat index (its ``iota_2x32_shape``):
    ``bits`` xors the two words, ``split`` stacks them, a float64 draw joins them high then low.
    """
    return threefry2x32(key[0], key[1], jnp.zeros(low.shape, jnp.uint32), low)


def _iota(shape: tuple[int, ...]) -> jax.Array:
    """The flat index of each element of ``shape``, as uint32."""
    return jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)


def bits(rng: jax.Array, shape: Any) -> jax.Array:
    """``jax.random.bits(rng, shape, jnp.uint32)``, bit for bit, in one pass for a threefry key.

    Both of jax's streams are reproduced: the default (``jax_threefry_partitionable`` on) hashes
    the pair (high, low) of each element's 64-bit index and xors the two words; the original one
    hashes a flat counter.
    """
    shape = _shape(shape)
    found = threefry_key_data(rng)
    if found is None or math.prod(shape) >= 2**32 - 1:  # jax splits such counters: its own
        return jax.random.bits(rng, shape, jnp.uint32)
    key, _ = found
    if jax.config.jax_threefry_partitionable:
        b1, b2 = _hash_index(key, _iota(shape))
        return b1 ^ b2
    return threefry_2x32(key, jax.lax.iota(jnp.uint32, math.prod(shape))).reshape(shape)


def split(rng: jax.Array, num: int = 2) -> jax.Array:
    """``jax.random.split(rng, num)``, bit for bit, in one pass for a threefry key."""
    found = threefry_key_data(rng)
    if found is None or np.ndim(num) != 0:  # a shape of keys: jax's own
        return jax.random.split(rng, num)
    key, typed = found
    if jax.config.jax_threefry_partitionable:
        new = jnp.stack(_hash_index(key, _iota((num,))), axis=1)
    else:
        new = threefry_2x32(key, jax.lax.iota(jnp.uint32, 2 * num)).reshape(num, 2)
    return _as_key(new, typed)


def fold_in(rng: jax.Array, data: Any) -> jax.Array:
    """``jax.random.fold_in(rng, data)``, bit for bit, in one pass for a threefry key.

    ``data`` is a scalar integer below ``2**32`` (jax keeps its low 32 bits), possibly traced.
    """
    found = threefry_key_data(rng)
    if found is None or jnp.ndim(data) != 0:  # jax's own error for an array of data
        return jax.random.fold_in(rng, data)
    key, typed = found
    word = jnp.asarray(data, jnp.uint32)  # as jax.random.fold_in converts it
    x1, x2 = threefry2x32(key[0], key[1], jnp.zeros((1,), jnp.uint32), word[None])
    return _as_key(jnp.concatenate([x1, x2]), typed)


def standard_normal(rng: jax.Array, shape: Any, dtype: Any, *, write_once: bool = False) -> jax.Array:
    r"""``jax.random.normal(rng, shape, dtype)``, bit for bit, its random bits hashed in one pass.

    jax's own steps: uniform ``u`` in ``(-1, 1)`` from the top mantissa bits of each random word,
    then :math:`\sqrt 2\, \mathrm{erf}^{-1}(u)`. At 680k float32 draws it ran 1.6x jax's, at 5.4M
    4.7x (AMD EPYC): the rolled hash's five passes over both counter words leave the cache there.
    Other dtypes (complex, half) and keys other than threefry go to ``jax.random.normal``.

    XLA fuses the draw into whatever reads it and computes it again for each reader. Where the
    noise has several readers (ES reads each direction's noise for ``theta + sigma eps``,
    ``theta - sigma eps`` and the weighted sum, and the loss's fusions may read it again),
    ``write_once=True`` computes the draw in a ``lax.map`` over two halves of the elements, a loop
    XLA neither inlines nor fuses into the readers: written once, read by all (the same numbers).
    With ``jax_threefry_partitionable`` off only the random words are written once
    (``threefry_2x32(write_once=True)``); the ``erfinv`` transform stays fused into each reader,
    where XLA may contract it with the reader's arithmetic (one rounding fewer).
    """
    dtype = jax.dtypes.canonicalize_dtype(float if dtype is None else dtype)  # float64 is float32 without x64
    shape = _shape(shape)
    found = threefry_key_data(rng)
    partitionable = jax.config.jax_threefry_partitionable
    size = math.prod(shape)
    if (
        found is None
        or size >= 2**32 - 1
        or dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))
        or (dtype == jnp.float64 and not partitionable)
    ):
        return jax.random.normal(rng, shape, dtype)
    key, _ = found
    if not partitionable:  # float32: the flat counter's words, then the transform
        words = threefry_2x32(key, jax.lax.iota(jnp.uint32, size), write_once=write_once).reshape(shape)
        return _normal_of_words(words, dtype)
    # Element i's draw depends on i alone (the hash of its 64-bit index, high word 0 here).
    low = jax.lax.iota(jnp.uint32, size)
    drawn = _normal_in_two_halves(key, low, dtype) if write_once else _normal_of_index(key, low, dtype)
    return drawn.reshape(shape)


def _normal_of_index(key: jax.Array, low: jax.Array, dtype: Any) -> jax.Array:
    """The partitionable stream's normal draw of the elements with flat indices ``low`` (below 2**32)."""
    b1, b2 = _hash_index(key, low)
    if dtype == jnp.float64:  # the two words joined, high then low
        words = jax.lax.shift_left(b1.astype(jnp.uint64), np.uint64(32)) | b2.astype(jnp.uint64)
    else:
        words = b1 ^ b2  # as ``bits``
    return _normal_of_words(words, dtype)


def _normal_of_words(words: jax.Array, dtype: Any) -> jax.Array:
    """jax's normal from random words: a uniform in ``(-1, 1)``, then ``sqrt(2) erfinv``."""
    uint = np.uint64 if dtype == jnp.float64 else np.uint32
    finfo = jnp.finfo(dtype)
    one = np.array(1.0, dtype)
    # as jax's uniform(minval=nextafter(-1, 0), maxval=1): mantissa bits under exponent 0, minus 1
    mantissa = jax.lax.shift_right_logical(words, uint(finfo.bits - finfo.nmant)) | one.view(uint)
    floats = jax.lax.bitcast_convert_type(mantissa, dtype) - jnp.array(1.0, dtype)
    lo = jax.lax.convert_element_type(np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype), dtype)
    hi = jax.lax.convert_element_type(one, dtype)
    u = jax.lax.max(lo, floats * (hi - lo) + lo)
    return jax.lax.mul(np.array(np.sqrt(2), dtype), jax.lax.erf_inv(u))
