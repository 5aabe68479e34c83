"""Structured noise: stochastic depth (drop path), Gaussian dropout and noise, DropConnect.

Every function takes its PRNG key explicitly and its rate (or standard deviation) as a possibly
traced scalar, so a sweep over rates is a ``vmap``; a *concrete* rate (or stddev) of 0 returns the
input unchanged without drawing random numbers. The Bernoulli masks (:func:`drop_path`,
:func:`dropconnect`) come from the cheap threefry-counter bits of :func:`jaxreg.dropout.dropout`
(through its public :func:`jaxreg.dropout.dropout`); the Gaussian ones draw
``jax.random.normal``.

:func:`mc_dropconnect` averages a model over many weight masks, the DropConnect analogue of
:func:`jaxreg.mc_dropout` (and built on it: same keys, chunking and ``Prediction``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxreg import _checks, _chunking, _random
from jaxreg._tree import compute_dtype, resolve_mask
from jaxreg.dropout import dropout, mc_dropout
from jaxreg.uncertainty import Prediction

PyTree = Any

__all__ = ["dropconnect", "drop_path", "gaussian_dropout", "gaussian_noise", "mc_dropconnect"]


def _is_zero(value: Any) -> bool:
    v = _checks.concrete(value)
    return v is not None and float(v) == 0.0


def drop_path(rng: jax.Array, x: ArrayLike, rate: ArrayLike) -> jax.Array:
    r"""Stochastic depth (DropPath): drops a residual branch for whole examples, with ``1 / keep`` scaling.

    .. math::
      y_n = \frac{m_n}{1 - p}\, x_n, \qquad m_n \sim \mathrm{Bernoulli}(1 - p)
      \text{ independently for each example } n \text{ (leading axis)}

    This is timm's ``drop_path`` (``keep_prob = 1 - rate``, ``x / keep_prob * mask`` with one mask
    value per example); apply it to the branch, ``x + drop_path(rng, f(x), rate)`` (Huang et al.
    2016). The mask is :func:`jaxreg.dropout.dropout`'s, broadcast over the non-leading axes, at
    32-bit threshold precision (one random word per example), so the drop probability is
    ``rate`` rounded to float32 (:func:`jaxreg.dropout.quantize_rate` with ``precision=32``) and
    :math:`\mathbb{E}[y] = x` for float32 and half-precision ``x``. A float64 ``x`` (x64) is
    scaled by :math:`1 / (1 - p)` in float64, so :math:`\mathbb{E}[y] = x (1 - \tilde p) / (1 - p)`,
    off by up to :math:`2^{-25} / (1 - p)` relative (0.0014 at ``rate=0.99999``).

    Args:
      rng: a PRNG key.
      x: the branch output, examples on the leading axis (``ndim >= 1``), floating point (or
        complex: the mask is real).
      rate: drop probability in [0, 1); may be traced (a sweep over rates is a ``vmap``). A
        concrete 0 returns ``x`` unchanged.

    Returns:
      An array of ``x``'s shape and dtype: each example's slice is either 0 or ``x_n / (1 - rate)``.

    Raises:
      ValueError: if ``rng`` is not a PRNG key, a concrete ``rate`` is outside [0, 1), or ``x`` is
        a scalar or not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> y = jr.drop_path(jax.random.key(0), jnp.ones((6, 3)), 0.5)
      >>> sorted({float(v) for v in y.ravel()}), bool(jnp.all(y == y[:, :1]))
      ([0.0, 2.0], True)

    References:
      Huang et al., `Deep Networks with Stochastic Depth <https://arxiv.org/abs/1603.09382>`_, 2016.
    """
    _random.check_key(rng, "drop_path")
    _checks.check_rate("rate", rate, "drop_path", float32_mask=True)
    x = _checks.as_inexact_array(x, "x", "drop_path")  # complex too: the mask is real
    if x.ndim == 0:
        raise ValueError("drop_path: x must have a leading example axis (ndim >= 1), got a scalar x.")
    if _is_zero(rate):
        return x
    return dropout(rng, x, rate, broadcast_dims=tuple(range(1, x.ndim)), precision=32)


def gaussian_dropout(rng: jax.Array, x: ArrayLike, rate: ArrayLike) -> jax.Array:
    r"""Gaussian dropout: multiplicative noise with mean 1 and variance ``rate / (1 - rate)``.

    .. math::
      y = x \odot \epsilon, \qquad \epsilon_i \sim \mathcal{N}\!\left(1, \frac{p}{1 - p}\right)

    As keras's ``GaussianDropout(rate)`` (``stddev = sqrt(rate / (1 - rate))``): the same mean and
    variance as inverted Bernoulli dropout with drop probability ``p`` (Srivastava et al. 2014,
    section 10).

    Args:
      rng: a PRNG key.
      x: the input, real floating point.
      rate: in [0, 1); may be traced. A concrete 0 returns ``x`` unchanged. A concrete rate's
        stddev is computed in float64, as keras does, so a rate just below 1 gives a finite one; a
        traced rate is used in ``x``'s compute dtype (float32 for float32 and half-precision
        ``x``, x64 or not), where a rate of ``1 - 2**-25`` or more is 1 (an infinite stddev): pass
        such a rate closed over or static under ``jax.jit``.

    Returns:
      An array of ``x``'s shape and dtype.

    Raises:
      ValueError: if ``rng`` is not a PRNG key, a concrete ``rate`` is outside [0, 1), or ``x`` is
        not real floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> y = jr.gaussian_dropout(jax.random.key(0), jnp.ones(100_000), 0.5)
      >>> round(float(y.mean()), 1), round(float(y.var()), 1)
      (1.0, 1.0)

    References:
      Srivastava et al., `Dropout: A Simple Way to Prevent Neural Networks from Overfitting
      <https://jmlr.org/papers/v15/srivastava14a.html>`_, JMLR 2014.
    """
    _random.check_key(rng, "gaussian_dropout")
    _checks.check_rate("rate", rate, "gaussian_dropout")
    x = _checks.as_inexact_array(x, "x", "gaussian_dropout", real=True)  # a complex x got a complex multiplier
    if _is_zero(rate):
        return x
    value = _checks.concrete(rate)
    if value is not None:  # as keras: in float64, so a rate just below 1 gives a finite stddev
        stddev = jnp.asarray(np.sqrt(float(value) / (1.0 - float(value))), x.dtype)
    else:
        p = jnp.asarray(rate, compute_dtype(x.dtype))
        stddev = jnp.sqrt(p / (1.0 - p)).astype(x.dtype)
    return x * (1.0 + stddev * _random.normal(rng, x.shape, x.dtype))


def gaussian_noise(rng: jax.Array, x: ArrayLike, stddev: ArrayLike) -> jax.Array:
    r"""Additive Gaussian noise with standard deviation ``stddev``.

    .. math:: y = x + \sigma \epsilon, \qquad \epsilon_i \sim \mathcal{N}(0, 1)

    As keras's ``GaussianNoise(stddev)``; use it at training time only.

    Args:
      rng: a PRNG key.
      x: the input, real floating point.
      stddev: :math:`\sigma \ge 0`, a scalar; may be traced. A concrete 0 returns ``x`` unchanged.

    Returns:
      An array of ``x``'s shape and dtype.

    Raises:
      ValueError: if ``rng`` is not a PRNG key, a concrete ``stddev`` is negative or not finite, or
        ``x`` is not real floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> y = jr.gaussian_noise(jax.random.key(0), jnp.zeros(100_000), 2.0)
      >>> round(float(y.std()), 1)
      2.0
    """
    _random.check_key(rng, "gaussian_noise")
    _checks.check_nonnegative("stddev", stddev, "gaussian_noise", scalar=True)
    x = _checks.as_inexact_array(x, "x", "gaussian_noise", real=True)
    if _is_zero(stddev):
        return x
    sigma = jnp.asarray(stddev, compute_dtype(x.dtype)).astype(x.dtype)
    return x + sigma * _random.normal(rng, x.shape, x.dtype)


def _float_leaf(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def dropconnect(rng: jax.Array, params: PyTree, rate: ArrayLike, *, mask: Any = None) -> PyTree:
    r"""DropConnect: inverted dropout on the weights, an independent mask for every selected leaf.

    .. math::
      \tilde W = \frac{M \odot W}{1 - p}, \qquad M_{ij} \sim \mathrm{Bernoulli}(1 - p)

    Call it on the params before the forward pass, ``apply_fn(dropconnect(rng, params, rate), x)``:
    one weight mask per call, shared by the batch (Wan et al. 2013). The masks are
    :func:`jaxreg.dropout.dropout`'s (the same quantized rate, exact ``1 / (1 - rate)`` scaling);
    leaf ``i`` (in flattening order) uses ``jax.random.fold_in(rng, i)``.

    Args:
      rng: a PRNG key.
      params: a pytree of parameters.
      rate: drop probability in [0, 1); may be traced. A concrete 0 returns ``params`` unchanged.
      mask: which leaves get masks (a pytree of bools, a callable or a ``jr.masks`` mask, e.g.
        ``jr.masks.kernels`` to leave biases alone); default every floating-point leaf.

    Returns:
      A pytree like ``params``; unselected and non-floating leaves are passed through.

    Raises:
      ValueError: if ``rng`` is not a PRNG key, a concrete ``rate`` is outside [0, 1), or ``mask``
        does not match ``params``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> p = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
      >>> q = jr.dropconnect(jax.random.key(0), p, 0.5, mask=jr.masks.kernels)
      >>> sorted({float(v) for v in q["w"].ravel()} - {0.0, 2.0}), bool(jnp.all(q["b"] == 1.0))
      ([], True)

    References:
      Wan et al., `Regularization of Neural Networks using DropConnect
      <https://proceedings.mlr.press/v28/wan13.html>`_, ICML 2013.
    """
    _random.check_key(rng, "dropconnect")
    _checks.check_rate("rate", rate, "dropconnect", float32_mask=True)
    keep = jax.tree.leaves(resolve_mask(mask, params, "dropconnect"))
    if _is_zero(rate):
        return params
    leaves, treedef = jax.tree.flatten(params)
    out = [
        dropout(jax.random.fold_in(rng, i), x, rate) if k and _float_leaf(x) else x
        for i, (x, k) in enumerate(zip(leaves, keep))
    ]
    return jax.tree.unflatten(treedef, out)


def mc_dropconnect(
    apply_fn: Callable[[PyTree, Any], PyTree],
    params: PyTree,
    x: Any,
    rng: jax.Array,
    num_samples: int,
    rate: ArrayLike,
    *,
    mask: Any = None,
    chunk_size: int | None = None,
) -> Prediction:
    r"""Monte Carlo DropConnect: the mean and variance of a model's outputs over many weight masks.

    .. math::
      \mu = \frac{1}{K} \sum_{k=1}^K f(x; \tilde W_k), \qquad
      \sigma^2 = \frac{1}{K} \sum_{k=1}^K \big(f(x; \tilde W_k) - \mu\big)^2,
      \qquad \tilde W_k = \mathrm{dropconnect}(\xi_k, W, p)

    :func:`jaxreg.mc_dropout` with ``apply_fn(dropconnect(key, params, rate, mask=mask), x)`` as
    the stochastic pass: the same keys (``jax.random.split(rng, num_samples)``), the same
    chunking (``chunk_size``) and the same ``ddof=0`` variance. ``rate`` is an argument of the
    pass, not a closure, so a traced rate (a sweep) is one compiled program.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``, deterministic.
      params: the parameters the masks act on.
      x: inputs shared by every mask.
      rng: a PRNG key.
      num_samples: the number of weight masks, ``K >= 1``.
      rate: drop probability in [0, 1); may be traced.
      mask: which leaves get masks, as in :func:`dropconnect`.
      chunk_size: masks per ``vmap``, as in :func:`jaxreg.mc_dropout`.

    Returns:
      ``jr.Prediction(mean, variance)`` with the structure of ``outputs``.

    Raises:
      ValueError: as :func:`dropconnect` and :func:`jaxreg.mc_dropout`.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> pred = jr.mc_dropconnect(lambda w, x: x @ w, jnp.ones((100, 1)), jnp.ones((1, 100)),
      ...                          jax.random.key(0), 256, 0.5)
      >>> round(float(pred.mean[0, 0]) / 100, 1), round(float(pred.variance[0, 0]) / 100, 1)
      (1.0, 1.0)
    """
    _checks.check_callable("apply_fn", apply_fn, "mc_dropconnect", "a function (params, x) -> outputs")
    _random.check_key(rng, "mc_dropconnect")
    _checks.check_rate("rate", rate, "mc_dropconnect", float32_mask=True)
    # checked here too, so the message names this function rather than mc_dropout
    _checks.check_int_at_least("num_samples", num_samples, 1, "mc_dropconnect")
    _chunking.check_chunk_size(chunk_size, "mc_dropconnect")

    def one(p_and_rate: tuple[PyTree, jax.Array], inputs: Any, key: jax.Array) -> PyTree:
        p, r = p_and_rate
        return apply_fn(dropconnect(key, p, r, mask=mask), inputs)

    # the default float dtype (float64 under x64, as dropconnect's scale), traced: no retrace per rate
    return mc_dropout(one, (params, _checks.as_float_array(rate)), x, rng, num_samples, chunk_size=chunk_size)
