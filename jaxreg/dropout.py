"""Dropout with cheap random bits, and MC-dropout: many masks averaged in one compiled program.

Random bits are most of the cost of dropout on a CPU. :func:`dropout` hashes one counter per
32-bit word with threefry and cuts each word into two 16-bit thresholds (the default; four 8-bit
ones, or one 32-bit one, on request). The drop probability actually used is the rate rounded to
a multiple of ``2**-precision`` (:func:`quantize_rate`), while the survivors are scaled by exactly
``1 / (1 - rate)`` as in flax, so :math:`\\mathbb{E}[\\mathrm{dropout}(x)] = x` up to that rounding
(exactly for rates such as 0.5 or 0.25; within :math:`2^{-17}` of the rate at 16 bits).

:func:`mc_dropout` evaluates ``num_samples`` masks with ``vmap``, or in chunks of ``chunk_size``
masks inside a loop (``jaxreg._chunking``, shared with ``ensemble.map``, ``es`` and
``variational``), so that peak memory grows with the chunk, not with ``num_samples``; the
moments become a :class:`jaxreg.Prediction` in :mod:`jaxreg.uncertainty`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxreg import _checks, _chunking, _eager, _random, uncertainty
from jaxreg._tree import compute_dtype

PyTree = Any

__all__ = ["dropout", "keep_mask", "mc_dropout", "mc_dropout_samples", "quantize_rate"]


_PRECISIONS = (8, 16, 32)
_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}
# Largest float32 strictly below 2**32, so that a 32-bit threshold never overflows uint32.
_MAX_F32_BELOW_2_32 = float(np.nextafter(np.float32(2.0**32), np.float32(0.0)))


def _check_precision(precision: Any, where: str) -> int:
    if isinstance(precision, jax.core.Tracer):
        raise ValueError(
            f"{where}: precision is static (it sets the mask's integer width), so it cannot be traced; "
            f"got precision = a traced value. Pass a Python int, one of {_PRECISIONS}."
        )
    if isinstance(precision, bool) or precision not in _PRECISIONS:
        raise ValueError(
            f"{where}: precision must be one of {_PRECISIONS} (bits per threshold), got precision = {precision!r}."
        )
    return int(precision)


def quantize_rate(rate: ArrayLike, precision: int = 16) -> jax.Array:
    r"""The drop rate that :func:`dropout` actually uses: ``rate`` rounded to a multiple of ``2**-precision``.

    .. math:: \tilde p = \mathrm{round}(p \, 2^b) / 2^b

    With ``precision=16`` (``dropout``'s default) the rate moves by at most 2**-17; with
    ``precision=8`` by at most 1/512 (0.5 stays 0.5, 0.1 becomes 26/256 = 0.1015625); with
    ``precision=32`` the resolution is that of float32.

    Args:
      rate: drop probability in [0, 1) (or an array of them); may be traced.
      precision: bits per random threshold, 8, 16 or 32.

    Returns:
      The quantized rate, float32, of ``rate``'s shape.

    Raises:
      ValueError: if a concrete ``rate`` is outside [0, 1), or ``precision`` is not 8, 16 or 32.

    Examples:
      >>> from jaxreg.dropout import quantize_rate
      >>> float(quantize_rate(0.1, precision=8)), float(quantize_rate(0.1))
      (0.1015625, 0.100006103515625)
    """
    precision = _check_precision(precision, "quantize_rate")
    _checks.check_rate("rate", rate, "quantize_rate", float32_mask=True, scalar=False)
    levels = float(2**precision)
    return _drop_levels(rate, precision) / levels


def _drop_levels(rate: ArrayLike, precision: int) -> jax.Array:
    """``round(rate * 2**b)``, capped where :func:`keep_mask` caps its threshold (one level kept)."""
    levels = float(2**precision)
    cap = _MAX_F32_BELOW_2_32 if precision == 32 else levels - 1.0
    return jnp.clip(jnp.round(jnp.asarray(rate, jnp.float32) * levels), 0.0, cap)


def _random_words(rng: jax.Array, num_words: int, where: str, *, write_once: bool = False) -> jax.Array:
    """``num_words`` uint32 words: threefry of a counter (non-partitionable stream, cheap on CPU).

    The hash is ``_random.threefry_2x32``: jax's bits in one pass (jax's CPU lowering loops over
    the words 5 times); ``write_once`` as there.
    """
    _random.check_key(rng, where)
    found = _random.threefry_key_data(rng)
    if found is None:  # another kind of key: jax's bits of it
        return jax.random.bits(rng, (num_words,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, num_words)
    return _random.threefry_2x32(found[0], counter, write_once=write_once)


def keep_mask(rng: jax.Array, shape: Sequence[int], rate: ArrayLike, *, precision: int = 16) -> jax.Array:
    r"""A boolean mask of kept units, each kept independently with probability ``1 - quantize_rate(rate)``.

    .. math:: m_i = [u_i \ge \mathrm{round}(p\,2^b)], \quad u_i \sim \mathrm{Uniform}\{0, \dots, 2^b - 1\}

    Args:
      rng: a PRNG key (typed or raw ``uint32[2]``).
      shape: the mask's shape.
      rate: drop probability in [0, 1), a scalar or an array broadcasting to ``shape`` (a rate
        per unit); may be traced.
      precision: bits per threshold: 8 (four thresholds per random 32-bit word), 16 (the default,
        two per word) or 32 (one per word).

    Returns:
      A bool array of ``shape``.

    Raises:
      ValueError: if ``rng`` is not a PRNG key, a concrete ``rate`` is outside [0, 1), ``rate``
        does not broadcast to ``shape``, or ``precision`` is not 8, 16 or 32.
    """
    precision = _check_precision(precision, "keep_mask")
    _checks.check_rate("rate", rate, "keep_mask", float32_mask=True, scalar=False)  # -1 kept all, 2.0 dropped all
    shape = tuple(int(s) for s in shape)
    if not _checks.broadcasts_to(jnp.shape(rate), shape):
        raise ValueError(f"keep_mask: rate must broadcast to shape {shape}, got rate.shape = {jnp.shape(rate)}.")
    return _keep_mask(rng, shape, rate, precision, "keep_mask")


def _keep_mask(rng: jax.Array, shape: tuple[int, ...], rate: ArrayLike, precision: int, where: str) -> jax.Array:
    size = math.prod(shape)
    per_word = 32 // precision
    # 8-bit thresholds: each hash feeds 8 of them; recomputing it per threshold cost more than a pass
    words = _random_words(rng, max(1, -(-size // per_word)), where, write_once=precision == 8)
    dtype = _UINT[precision]
    u = words if precision == 32 else jax.lax.bitcast_convert_type(words, dtype).reshape(-1)
    if u.shape[0] != size:
        u = u[:size]
    u = u.reshape(shape)
    threshold = _drop_levels(rate, precision).astype(dtype)
    if threshold.ndim:  # a rate per unit; explicit, for jax_numpy_rank_promotion="raise"
        threshold = jnp.broadcast_to(threshold, shape)
    return u >= threshold


def dropout(
    rng: jax.Array,
    x: ArrayLike,
    rate: ArrayLike,
    *,
    broadcast_dims: int | Sequence[int] = (),
    precision: int = 16,
) -> jax.Array:
    r"""Inverted dropout: zero each unit with probability ``rate``, scale the survivors by ``1 / (1 - rate)``.

    .. math::
      y_i = \frac{m_i\, x_i}{1 - p}, \quad m_i \sim \mathrm{Bernoulli}(1 - \tilde p),
      \quad \tilde p = \mathrm{round}(p\, 2^b) / 2^b

    ``rate`` (:math:`p`) is the probability of *dropping* a unit (as in flax). Survivors are
    scaled by exactly :math:`1 / (1 - p)`, as ``flax.linen.Dropout`` does. The keep decision
    compares ``precision``-bit random integers with a threshold, so the drop probability
    actually used is :math:`\tilde p`, ``rate`` rounded to a multiple of ``2**-precision``
    (:func:`quantize_rate`): with the default ``precision=16`` it is within
    :math:`2^{-17} \approx 7.6 \cdot 10^{-6}` of ``rate`` and
    :math:`\mathbb{E}[y] = x (1 - \tilde p) / (1 - p)`, unbiased to that resolution (exactly for
    rates that are multiples of ``2**-precision``, such as 0.5 or 0.25); ``precision=8`` has
    steps of 1/256, ``precision=32`` that of float32. The relative bias of the mean,
    :math:`|\tilde p - p| / (1 - p) \le 2^{-b-1} / (1 - p)`, grows as :math:`p \to 1`: at
    ``rate=0.99999`` with 16 bits the kept fraction is 1.5e-5, not 1e-5 (the mean 1.5x); above
    :math:`1 - 2^{-b-1}` the threshold is capped to keep one level, :math:`\tilde p = 1 - 2^{-b}`
    (at ``rate=0.999`` with 8 bits the mean is 3.9x). Take ``precision=32`` for rates that close
    to 1. A concrete rate that is 1 in float32 is refused; a traced rate of 1 gives zeros.

    Random bits come from threefry hashing one counter per 32-bit word (the stream
    ``jax.random.bits`` gives with ``jax_threefry_partitionable`` off, whatever that flag says),
    cut into ``32 / precision`` thresholds each, low bits first, and hashed in one pass (jax's CPU
    lowering loops over the words 5 times): on a 2-core AMD EPYC at 64x512x512, 4.5x faster than
    ``jax.random.bernoulli`` dropout at the default 16 bits and 5.9x at 8 bits (README). The
    counter spans the whole mask, so shard the member or mask axis (``vmap``-ed keys), not the
    axes of one mask.

    Args:
      rng: a PRNG key.
      x: the input array.
      rate: drop probability in [0, 1); may be a traced scalar (a sweep over rates is a vmap).
        A concrete 0 returns ``x`` unchanged without drawing bits.
      broadcast_dims: an axis or axes along which one mask value is shared (e.g. ``(0,)`` drops the same
        units for every example; the default is an independent mask per element).
      precision: bits per random threshold: 8, 16 (default) or 32.

    Returns:
      An array of ``x``'s shape and dtype.

    Raises:
      ValueError: if ``rng`` is not a PRNG key (an int seed: use ``jax.random.key(seed)``), a
        concrete ``rate`` is outside [0, 1) or not a scalar, ``precision`` is not 8, 16 or 32,
        or ``broadcast_dims`` is not ints, names an axis ``x`` does not have or repeats one.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> y = jr.dropout(jax.random.key(0), jnp.ones((4, 1000)), 0.25)
      >>> sorted({round(float(v), 4) for v in jnp.unique(y)})
      [0.0, 1.3333]
      >>> bool(jnp.all(jr.dropout(jax.random.key(0), jnp.ones(3), 0.0) == 1.0))
      True
    """
    _random.check_key(rng, "dropout")
    _checks.check_rate("rate", rate, "dropout", float32_mask=True)
    precision = _check_precision(precision, "dropout")
    x = _checks.as_inexact_array(x, "x", "dropout")  # complex too: the mask is real
    if isinstance(broadcast_dims, (int, np.integer)) and not isinstance(broadcast_dims, bool):
        broadcast_dims = (broadcast_dims,)  # one axis, as an int
    try:  # any iterable of ints (a range, a numpy array); not floats nor bools
        if isinstance(broadcast_dims, bool) or any(isinstance(d, (bool, np.bool_)) for d in broadcast_dims):
            raise TypeError
        broadcast_dims = tuple(operator.index(d) for d in broadcast_dims)
    except TypeError:
        raise ValueError(
            f"dropout: broadcast_dims must be an int or a sequence of ints, got broadcast_dims = {broadcast_dims!r}."
        ) from None
    dims = set()
    for d in broadcast_dims:  # checked before the rate-0 shortcut: a sweep away from 0 must not be what finds it
        if not -x.ndim <= int(d) < x.ndim:
            raise ValueError(
                f"dropout: broadcast_dims must be axes of x (ndim {x.ndim}), got broadcast_dims = {tuple(broadcast_dims)}."
            )
        if int(d) % x.ndim in dims:
            raise ValueError(
                f"dropout: broadcast_dims must not repeat an axis, got broadcast_dims = {tuple(broadcast_dims)}."
            )
        dims.add(int(d) % x.ndim)
    rate_value = _checks.concrete(rate)
    if rate_value is not None and float(rate_value) == 0.0:
        return x
    mask_shape = tuple(1 if i in dims else s for i, s in enumerate(x.shape))
    keep = _keep_mask(rng, mask_shape, rate, precision, "dropout")  # rate checked above
    if mask_shape != x.shape:
        keep = jnp.broadcast_to(keep, x.shape)
    # float32 at least, float64 for float64 x: the survivors' scale is 1 / (1 - rate) rounded once
    keep_prob = 1.0 - jnp.asarray(rate, compute_dtype(x.dtype))
    # Guarded so that a traced rate of 1 gives zeros (and zero gradients), not inf * 0.
    scale = jnp.where(keep_prob > 0.0, 1.0 / jnp.where(keep_prob > 0.0, keep_prob, 1.0), 0.0).astype(x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))


# ----------------------------------------------------------------------------------------------
# MC-dropout


def _run_masks(
    apply_fn: Callable[..., Any],
    params: Any,
    x: Any,
    rng: Any,
    num_samples: Any,
    chunk_size: Any,
    where: str,
    program: Callable[[Any, Any, jax.Array, int], Any],
) -> Any:
    """``program(params, x, keys, chunk)`` with the mask keys and the masks per chunk.

    ``mc_dropout`` and ``mc_dropout_samples`` share it, so both see the same keys in the same order;
    the chunk is explicit, or measured, cached or static (``jaxreg._chunking``).
    """
    _checks.check_callable("apply_fn", apply_fn, where, "a function (params, x, rng) -> outputs")
    num_samples = _checks.check_int_at_least("num_samples", num_samples, 1, where)
    chunk = _chunking.check_chunk_size(chunk_size, where)
    _random.check_key(rng, where)
    keys = jax.random.split(rng, num_samples)
    if chunk is not None:
        c = min(chunk, num_samples)
        return _eager.call(lambda p, x_, k: program(p, x_, k, c), params, x, keys, compiled=c < num_samples)
    jaxpr = _chunking.trace_item(apply_fn, params, x, keys[0])
    static = _chunking.static_chunk(num_samples, None if jaxpr is None else _chunking.jaxpr_bytes(jaxpr.jaxpr))
    return _chunking.run_auto(
        None,
        num_samples,
        where=where,
        program=lambda c: lambda p, x_, k: program(p, x_, k, c),
        args=(params, x, keys),
        items=keys,
        item_jaxpr=jaxpr,
        static=static,
        # The moments of many masks: chunks bound memory (the stacked samples of
        # mc_dropout_samples grow with K anyway).
        memory_bound=where == "mc_dropout",
    )


def mc_dropout(
    apply_fn: Callable[[PyTree, Any, jax.Array], PyTree],
    params: PyTree,
    x: Any,
    rng: jax.Array,
    num_samples: int,
    *,
    chunk_size: int | None = None,
) -> uncertainty.Prediction:
    r"""Monte Carlo dropout: the mean and variance of a stochastic model's outputs over many masks.

    .. math::
      \mu = \frac{1}{K} \sum_{k=1}^K f(x; \theta, \xi_k), \qquad
      \sigma^2 = \frac{1}{K} \sum_{k=1}^K \big(f(x; \theta, \xi_k) - \mu\big)^2

    Each mask gets its own key from ``jax.random.split(rng, num_samples)``. The masks are
    evaluated with ``vmap`` in chunks of ``chunk_size`` inside a loop, and the chunks' moments
    merged (:func:`jaxreg.uncertainty.predict_chunked`), so peak memory grows with the chunk,
    not with ``num_samples``.

    Args:
      apply_fn: ``apply_fn(params, x, rng) -> outputs`` (an array or a pytree of arrays), with
        dropout driven by ``rng`` (for flax linen: ``model.apply(params, x, rngs={"dropout": rng})``;
        for flax nnx: ``m = nnx.merge(graphdef, state); nnx.reseed(m, dropout=rng); m(x)``, or
        ``rngs=rng`` in the Dropout's call). A model that draws from a stream of its own and
        ignores ``rng`` gives every mask the same draw: a variance of 0.
      params: the model's parameters (for nnx, the state from ``nnx.split``), shared by every
        mask; its arrays are passed through ``vmap`` unmapped, not closed over, so an nnx model
        merged from them may reseed itself.
      x: the inputs, shared by every mask.
      rng: a PRNG key.
      num_samples: the number of masks, ``K >= 1``.
      chunk_size: masks evaluated together by one ``vmap``; ``chunk_size >= num_samples`` is a
        plain ``vmap``, 1 a loop over masks. ``None`` chooses by measurement: on the first call
        (under ``jit``: at trace time, on stand-ins of the arguments) a few chunkings (one
        ``vmap``, a loop, powers of two between) are compiled and timed on this machine within
        about 1 s (``JAXREG_AUTOTUNE_BUDGET``) and the fastest is cached for the process; under
        ``vmap`` or ``grad`` the cached choice for the same program and shapes is used, else a
        static rule from the size of one mask's
        intermediates (one ``vmap`` if all fit in 128 MiB, else chunks within 48 MiB).
        ``JAXREG_AUTOTUNE=0`` always uses the static rule. The result does not depend on it
        beyond float rounding.

    Returns:
      ``Prediction(mean, variance)`` with the structure of ``outputs``; the variance is over
      masks with ``ddof=0``. For a classifier returning logits, ``mean`` is the mean logit, not
      the predictive distribution: take :func:`jaxreg.predictive_probs` of
      :func:`mc_dropout_samples`, or return probabilities from ``apply_fn``.

    Raises:
      ValueError: if ``num_samples < 1``, ``chunk_size < 1`` or ``rng`` is not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> apply_fn = lambda w, x, rng: jr.dropout(rng, x, 0.5) @ w
      >>> pred = jr.mc_dropout(apply_fn, jnp.ones((100, 1)), jnp.ones((1, 100)), jax.random.key(0), 256)
      >>> round(float(pred.mean[0, 0]) / 100, 1), round(float(pred.variance[0, 0]) / 100, 1)
      (1.0, 1.0)
    """

    def program(p: Any, x_: Any, keys: jax.Array, chunk: int) -> uncertainty.Prediction:
        return uncertainty.predict_chunked(
            lambda k, p_, x__: apply_fn(p_, x__, k), keys, chunk, consts=(p, x_), where="mc_dropout"
        )

    return _run_masks(apply_fn, params, x, rng, num_samples, chunk_size, "mc_dropout", program)


def mc_dropout_samples(
    apply_fn: Callable[[PyTree, Any, jax.Array], PyTree],
    params: PyTree,
    x: Any,
    rng: jax.Array,
    num_samples: int,
    *,
    chunk_size: int | None = None,
) -> PyTree:
    """The outputs of ``num_samples`` dropout masks, stacked on a leading axis.

    The same keys as :func:`mc_dropout`, so ``mc_dropout`` is the mean and ``ddof=0`` variance
    of these samples. Feed them to :mod:`jaxreg.uncertainty` (predictive entropy, BALD).

    Args:
      apply_fn: ``apply_fn(params, x, rng) -> outputs``.
      params: shared parameters.
      x: shared inputs.
      rng: a PRNG key.
      num_samples: the number of masks, ``>= 1``.
      chunk_size: masks per ``vmap`` inside a loop over chunks; ``None`` chooses by measurement
        as in :func:`mc_dropout`.

    Returns:
      ``outputs`` with a leading axis of ``num_samples``.

    Raises:
      ValueError: if ``num_samples < 1``, ``chunk_size < 1`` or ``rng`` is not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> s = jr.mc_dropout_samples(lambda p, x, k: jr.dropout(k, x, 0.5), None, jnp.ones(3), jax.random.key(0), 5)
      >>> s.shape
      (5, 3)
    """

    def program(p: Any, x_: Any, keys: jax.Array, chunk: int) -> PyTree:
        return _chunking.map_chunks(lambda k, p_, x__: apply_fn(p_, x__, k), keys, chunk, consts=(p, x_))

    return _run_masks(apply_fn, params, x, rng, num_samples, chunk_size, "mc_dropout_samples", program)
