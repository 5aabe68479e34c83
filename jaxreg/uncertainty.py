"""Predictive uncertainty from stacked samples: MC-dropout masks or ensemble members alike.

:class:`Prediction` is what :func:`jaxreg.mc_dropout`, :func:`jaxreg.ensemble.predict` and
:func:`jaxreg.variational.predict` return: mean and variance over masks, members or weight draws.

Every function takes ``samples`` with a leading sample (or member) axis and classes on the last
axis, as logits (``from_logits=True``, the default) or probabilities. Entropies are in nats.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxreg import _checks

__all__ = [
    "Prediction",
    "expected_calibration_error",
    "expected_entropy",
    "mutual_information",
    "predictive_entropy",
    "predictive_probs",
]


class Prediction(NamedTuple):
    """Mean and variance over masks or members (``ddof=0``: the variance of the uniform mixture)."""

    mean: Any
    variance: Any

    @property
    def std(self) -> Any:
        """The standard deviation, ``sqrt(variance)``."""
        return jax.tree.map(jnp.sqrt, self.variance)


def _check_samples(samples: ArrayLike, where: str) -> jax.Array:
    samples = jnp.asarray(samples)
    if samples.ndim < 2:
        raise ValueError(
            f"{where}: samples must have a leading sample axis and a class axis, got samples.shape = {samples.shape}."
        )
    if samples.shape[0] < 1:
        raise ValueError(f"{where}: samples needs at least one sample, got samples.shape = {samples.shape}.")
    return samples


def _log_probs(samples: jax.Array, from_logits: bool) -> jax.Array:
    if from_logits:
        return jax.nn.log_softmax(samples, axis=-1)
    return jnp.log(samples)


def _entropy_from_log(logp: jax.Array) -> jax.Array:
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def predictive_probs(samples: ArrayLike, *, from_logits: bool = True) -> jax.Array:
    r"""The predictive distribution: class probabilities averaged over samples.

    .. math:: \bar p(y \mid x) = \frac{1}{S} \sum_{s=1}^S p_s(y \mid x)

    Args:
      samples: shape ``(S, ..., C)``: logits or probabilities of ``S`` samples.
      from_logits: whether ``samples`` are logits (softmax over the last axis) or probabilities.

    Returns:
      Shape ``(..., C)``.

    Raises:
      ValueError: if ``samples`` has fewer than 2 dimensions.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> [round(float(p), 2) for p in jr.predictive_probs(jnp.array([[0.2, 0.8], [0.6, 0.4]]), from_logits=False)]
      [0.4, 0.6]
    """
    samples = _check_samples(samples, "predictive_probs")
    if from_logits:
        return jnp.mean(jax.nn.softmax(samples, axis=-1), axis=0)
    return jnp.mean(samples, axis=0)


def predictive_entropy(samples: ArrayLike, *, from_logits: bool = True) -> jax.Array:
    r"""Entropy of the predictive distribution (total uncertainty).

    .. math:: \mathbb{H}[\bar p] = -\sum_c \bar p_c \log \bar p_c

    Args:
      samples: shape ``(S, ..., C)``: logits or probabilities.
      from_logits: whether ``samples`` are logits.

    Returns:
      Shape ``(...)``, in nats.

    Raises:
      ValueError: if ``samples`` has fewer than 2 dimensions.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> round(float(jr.predictive_entropy(jnp.array([[1.0, 0.0], [0.0, 1.0]]), from_logits=False)), 4)
      0.6931
    """
    samples = _check_samples(samples, "predictive_entropy")
    logp = _log_probs(samples, from_logits)
    log_mean = jax.nn.logsumexp(logp, axis=0) - jnp.log(jnp.asarray(samples.shape[0], logp.dtype))
    return _entropy_from_log(log_mean)


def expected_entropy(samples: ArrayLike, *, from_logits: bool = True) -> jax.Array:
    r"""Mean entropy of the samples' distributions (aleatoric uncertainty).

    .. math:: \frac{1}{S} \sum_{s=1}^S \mathbb{H}[p_s]

    Args:
      samples: shape ``(S, ..., C)``: logits or probabilities.
      from_logits: whether ``samples`` are logits.

    Returns:
      Shape ``(...)``, in nats.

    Raises:
      ValueError: if ``samples`` has fewer than 2 dimensions.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> round(float(jr.expected_entropy(jnp.array([[1.0, 0.0], [0.0, 1.0]]), from_logits=False)), 4)
      0.0
    """
    samples = _check_samples(samples, "expected_entropy")
    return jnp.mean(_entropy_from_log(_log_probs(samples, from_logits)), axis=0)


def mutual_information(samples: ArrayLike, *, from_logits: bool = True) -> jax.Array:
    r"""Mutual information between the prediction and the model (BALD; epistemic uncertainty).

    .. math:: \mathbb{I}[y; \theta] = \mathbb{H}[\bar p] - \frac{1}{S} \sum_{s=1}^S \mathbb{H}[p_s]

    Clipped at 0 against rounding (it is non-negative by Jensen's inequality).

    Args:
      samples: shape ``(S, ..., C)``: logits or probabilities.
      from_logits: whether ``samples`` are logits.

    Returns:
      Shape ``(...)``, in nats.

    Raises:
      ValueError: if ``samples`` has fewer than 2 dimensions.

    References:
      Houlsby et al., 2011. Bayesian Active Learning for Classification and Preference Learning.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> round(float(jr.mutual_information(jnp.array([[1.0, 0.0], [0.0, 1.0]]), from_logits=False)), 4)
      0.6931
    """
    samples = _check_samples(samples, "mutual_information")
    mi = predictive_entropy(samples, from_logits=from_logits) - expected_entropy(samples, from_logits=from_logits)
    return jnp.maximum(mi, 0.0)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, *, num_bins: int = 15) -> jax.Array:
    r"""Expected calibration error with equal-width confidence bins.

    .. math::
      \mathrm{ECE} = \sum_{b=1}^B \frac{|B_b|}{n} \big| \mathrm{acc}(B_b) - \mathrm{conf}(B_b) \big|

    The confidence of an example is its largest class probability, the prediction its argmax;
    bin ``b`` holds confidences in :math:`((b-1)/B, b/B]` (a confidence of 0 joins the first bin).

    Args:
      probs: shape ``(n, C)``: predicted probabilities (e.g. :func:`predictive_probs`).
      labels: shape ``(n,)``: integer class labels.
      num_bins: ``B >= 1``.

    Returns:
      A scalar in [0, 1].

    Raises:
      ValueError: if ``num_bins < 1`` or the shapes disagree.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> probs = jnp.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
      >>> round(float(jr.expected_calibration_error(probs, jnp.array([0, 1, 0, 0]))), 4)
      0.4
    """
    num_bins = _checks.check_int_at_least("num_bins", num_bins, 1, "expected_calibration_error")
    probs, labels = jnp.asarray(probs), jnp.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            "expected_calibration_error: probs must be (n, C) and labels (n,), got "
            f"probs.shape = {probs.shape}, labels.shape = {labels.shape}."
        )
    n = probs.shape[0]
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
    bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    conf_sum = jnp.zeros(num_bins, probs.dtype).at[bins].add(confidence)
    acc_sum = jnp.zeros(num_bins, probs.dtype).at[bins].add(correct)
    return jnp.sum(jnp.abs(acc_sum - conf_sum)) / n
