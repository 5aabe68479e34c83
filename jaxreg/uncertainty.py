"""Predictive uncertainty from stacked samples: MC-dropout masks or ensemble members alike.

:class:`Prediction` is what :func:`jaxreg.mc_dropout`, :func:`jaxreg.ensemble.predict` and
:func:`jaxreg.variational.predict` return: mean and variance over masks, members or weight draws.
All three build it here, one way: :meth:`Prediction.from_samples` for stacked samples, and
:func:`predict_chunked` when the samples are evaluated a chunk at a time (chunk moments merged,
so that memory grows with the chunk, not with the number of samples).

Every function takes ``samples`` with a leading sample (or member) axis and classes on the last
axis, as logits (``from_logits=True``, the default) or probabilities. Entropies are in nats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxreg import _checks, _chunking
from jaxreg._tree import compute_dtype, default_float, statistic_dtype

__all__ = [
    "Prediction",
    "expected_calibration_error",
    "expected_entropy",
    "mutual_information",
    "predict_chunked",
    "predictive_entropy",
    "predictive_probs",
]


class Prediction(NamedTuple):
    """Mean and variance over masks or members (``ddof=0``: the variance of the uniform mixture).

    Each leaf has its output's dtype: half-precision outputs are accumulated in float32 (chunks
    merged too) and rounded once; an integer or bool output gives a float mean and variance.
    """

    mean: Any
    variance: Any

    @property
    def std(self) -> Any:
        """The standard deviation, ``sqrt(variance)``."""
        return jax.tree.map(jnp.sqrt, self.variance)

    @classmethod
    def from_samples(cls, samples: Any) -> Prediction:
        r"""Mean and ``ddof=0`` variance over the leading axis of every leaf of ``samples``.

        .. math:: \mu = \frac1S \sum_s y_s, \qquad \sigma^2 = \frac1S \sum_s (y_s - \mu)^2

        Args:
          samples: an array or pytree of arrays, each with a leading sample axis.

        Returns:
          ``Prediction(mean, variance)`` with the structure of ``samples``, one axis fewer.

        Raises:
          ValueError: if ``samples`` has no leaves, a leaf has no leading axis or no sample, or
            the leaves disagree on the number of samples.

        Examples:
          >>> import jax.numpy as jnp, jaxreg as jr
          >>> p = jr.Prediction.from_samples(jnp.array([1.0, 3.0]))
          >>> float(p.mean), float(p.variance)
          (2.0, 1.0)
        """
        samples = jax.tree.map(jnp.asarray, samples)
        sizes = {jnp.shape(s)[0] if jnp.ndim(s) else 0 for s in jax.tree.leaves(samples)}
        if len(sizes) != 1 or 0 in sizes:
            shapes = [jnp.shape(s) for s in jax.tree.leaves(samples)]
            raise ValueError(
                "Prediction.from_samples: samples must be arrays sharing a leading sample axis of at least one "
                f"sample, got leaf shapes {shapes}."
            )
        return cls(*_finish(_moments(samples), jax.tree.map(jnp.result_type, samples)))


class _Moments(NamedTuple):
    """What a chunk's samples contribute to the mean and variance over all of them.

    ``shift`` (the chunk's largest sample) and ``offset`` (the mean of the samples minus
    ``shift``) locate the mean to the precision of the samples' spread: two chunk means each
    rounded to ``eps * |mean|`` differ by an error that Chan's ``delta**2`` term turned into a
    relative error of ``eps * |mean| / spread`` in the variance (5e-4 at a mean of 1 and a spread
    of 1e-4, one sample per chunk, against 5e-6 for one float32 pass).
    """

    mean: Any
    m2: Any  # the sum of squared deviations from the mean
    count: jax.Array
    shift: Any
    offset: Any


def _moments(samples: Any) -> _Moments:
    """The moments over the leading axis (two passes: exact).

    Half-precision outputs are accumulated in float32: summed and merged in bfloat16, the squared
    deviations of 1,024 samples of variance 9 stalled at a variance of 4 once each sample was its
    own chunk (an addend below half the sum's rounding step is lost).
    """
    samples = jax.tree.map(lambda o: o.astype(statistic_dtype(o.dtype)), samples)
    mean = jax.tree.map(lambda o: jnp.mean(o, axis=0), samples)
    # The shift is a sample (the largest: a reduction, so an item axis sharded over devices needs
    # no slice), not the mean: a computed shift is read by several fusions, and XLA may contract
    # one reader's sum * (1/n) - x into an FMA that skips the rounding the others see (a 1.3e-2
    # error in a loop of chunks). The deviations from it are exact for samples within a factor 2
    # of it (Sterbenz: outputs far from zero, where it matters); their mean is the offset, and the
    # squared deviations are taken from it: those from the rounded mean were off by its rounding,
    # eps * |mean| (a relative 1.5e-2 in the variance at a mean of 1e4, spread 1e-2). The cost,
    # measured (MC-dropout, K = 64, a 64-256-10 MLP on 1,797 inputs, AMD EPYC): 1.05x the two
    # passes' time in one vmap or chunks of 32, 1.14x in chunks of 8.
    shift = jax.tree.map(lambda o: jnp.max(o, axis=0), samples)
    shifted = jax.tree.map(lambda o, s: o - s[None], samples, shift)
    offset = jax.tree.map(lambda d: jnp.mean(d, axis=0), shifted)
    m2 = jax.tree.map(lambda d, o: jnp.sum(jnp.square(d - o[None]), axis=0), shifted, offset)
    # float64 under x64: the merge weights n_b / n and n_a n_b / n of float64 outputs (float32 ones
    # left them 1e-8 from numpy's moments once more than one chunk ran)
    count = jnp.asarray(jnp.shape(jax.tree.leaves(samples)[0])[0], default_float())
    return _Moments(mean, m2, count, shift, offset)


def _merge(a: _Moments, b: _Moments) -> _Moments:
    """Chan et al.'s pairwise merge. In the variance, the difference of the means is taken
    through the shifts (``shift_b - shift_a``: exact for samples within a factor 2 of each other,
    Sterbenz) and their offsets (of the size of the spread), not from the two rounded means."""
    n = a.count + b.count
    frac, w = b.count / n, a.count * b.count / n
    delta = jax.tree.map(lambda sa, oa, sb, ob: (sb - sa) + (ob - oa), a.shift, a.offset, b.shift, b.offset)
    # The mean as before, from the rounded means: through the offsets its error would grow with the
    # spread (1.1e-6 sd for N(0.01, 1) in chunks of 8, against 8e-9); the variance needs the shifts.
    mean = jax.tree.map(lambda ma, mb: ma + (mb - ma) * frac.astype(mb.dtype), a.mean, b.mean)
    offset = jax.tree.map(lambda oa, d: oa + d * frac.astype(d.dtype), a.offset, delta)
    m2 = jax.tree.map(lambda x, y, d: x + y + jnp.square(d) * w.astype(d.dtype), a.m2, b.m2, delta)
    return _Moments(mean, m2, n, a.shift, offset)


def predict_chunked(
    sample_fn: Callable[..., Any], items: Any, chunk: int, *, consts: tuple = (), where: str = "predict_chunked"
) -> Prediction:
    r"""``Prediction.from_samples(jax.vmap(sample_fn, in_axes=(0, None, ...))(items, *consts))``, in chunks.

    The items are evaluated ``chunk`` at a time; each chunk's mean and sum of squared deviations are merged into the running ones (Chan et
    al.'s pairwise update), so memory holds one chunk of samples, never all of them:

    .. math::
      n = n_a + n_b, \quad \delta = \mu_b - \mu_a, \quad
      \mu = \mu_a + \delta\, \frac{n_b}{n}, \quad
      M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n}

    In :math:`M_2`, :math:`\delta` is taken through each chunk's largest sample :math:`s` and
    the mean of its samples minus :math:`s`, :math:`\delta = (s_b - s_a) + (o_b - o_a)`, and
    each chunk's :math:`M_2` from the deviations from :math:`s + o`: the variance is then
    accurate to the float rounding of the spread, not of the mean (outputs far from zero).

    Args:
      sample_fn: ``sample_fn(item, *consts) -> outputs`` (an array or pytree), for one item (a
        key, a member's params).
      items: a pytree whose leaves have a leading item axis.
      chunk: items evaluated together by one ``vmap`` (``>= len(items)``: one ``vmap``).
      consts: arguments shared by every item (params, inputs), passed to ``sample_fn`` through
        ``vmap`` rather than closed over: a flax nnx model merged from them may then mutate its
        variables (``nnx.reseed``), which nnx refuses for values of an outer trace.
      where: the caller's name in error messages (a chunk that does not split over the devices
        of an explicitly sharded item axis).

    Returns:
      ``Prediction(mean, variance)`` over the items, ``ddof=0``.

    References:
      Chan, Golub and LeVeque, *Algorithms for computing the sample variance*, 1983.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> p = jr.uncertainty.predict_chunked(lambda x: 2.0 * x, jnp.arange(5.0), chunk=2)
      >>> float(p.mean), float(p.variance)
      (4.0, 8.0)
    """
    chunk = _checks.check_int_at_least("chunk", chunk, 1, where)
    if not isinstance(consts, (tuple, list)):  # an array was unpacked row by row into sample_fn's arguments
        kind = "jax.Array" if isinstance(consts, jax.Array) else type(consts).__name__
        raise ValueError(f"{where}: consts must be a tuple of arguments, got consts of type {kind}; pass (x,).")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(items)}
    if not sizes or None in sizes or len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"{where}: items must be arrays sharing a leading axis of at least one item, got leading sizes "
            f"{sorted(sizes, key=str)}."
        )
    dtypes = []  # the outputs' dtypes, read while the first block is traced (no extra trace)

    sample_fn, consts = _chunking.pass_arrays(sample_fn, tuple(consts))
    in_axes = (0,) + (None,) * len(consts)

    def block_moments(block: Any, *cs: Any) -> tuple[_Moments, None]:
        samples = jax.vmap(sample_fn, in_axes=in_axes)(block, *cs)
        if not jax.tree.leaves(samples):  # a forgotten return: an IndexError below
            fn = "sample_fn" if where == "predict_chunked" else "apply_fn"
            raise ValueError(f"{where}: {fn} must return arrays, got {samples!r}.")
        if not dtypes:
            dtypes.append(jax.tree.map(jnp.result_type, samples))
        return _moments(samples), None

    moments, _ = _chunking.run_chunks(block_moments, items, chunk, combine=_merge, consts=consts, where=where)
    return Prediction(*_finish(moments, dtypes[0]))


def _finish(moments: _Moments, dtypes: Any) -> tuple[Any, Any]:
    """Mean and ``ddof=0`` variance from the moments, each float leaf in its output's dtype
    (``dtypes``: the outputs' jax dtypes; an int or bool output's mean stays a float)."""
    mean, m2, count = moments.mean, moments.m2, moments.count

    def as_output(x: jax.Array, dtype: Any) -> jax.Array:
        return x.astype(dtype) if jnp.issubdtype(dtype, jnp.floating) else x

    variance = jax.tree.map(lambda s: s / count.astype(s.dtype), m2)
    return jax.tree.map(as_output, mean, dtypes), jax.tree.map(as_output, variance, dtypes)


def _check_samples(samples: ArrayLike, where: str, from_logits: Any) -> tuple[jax.Array, bool]:
    from_logits = _checks.check_flag("from_logits", from_logits, where)
    if not isinstance(samples, jax.Array):  # a jax array holds numbers: no host copy of it
        given = _checks.concrete(samples)
        if given is not None and given.dtype.kind in "USOV":  # text or objects: jax's TypeError named no argument
            raise ValueError(f"{where}: samples must be numbers, got samples of dtype {given.dtype}.")
    samples = jnp.asarray(samples)
    _checks.check_real("samples", samples, where, "entropies are of real logits or probabilities.")
    # integer or bool (one-hot) samples as floats, as jnp.mean would (strict promotion refused them)
    samples = samples.astype(statistic_dtype(samples.dtype))
    if samples.ndim < 2:
        raise ValueError(
            f"{where}: samples must have a leading sample axis and a class axis, got samples.shape = {samples.shape}."
        )
    if samples.shape[0] < 1:
        raise ValueError(f"{where}: samples needs at least one sample, got samples.shape = {samples.shape}.")
    arr = None if from_logits else _checks.concrete(samples)
    if arr is None and not from_logits and isinstance(samples, jax.core.Tracer):
        in_range = (samples >= 0) & (samples <= 1) | jnp.isnan(samples)
        _checks.traced_check(
            in_range, f"{where}: with from_logits=False samples must be probabilities in [0, 1], got", samples
        )
    if arr is not None and np.any((arr < 0) | (arr > 1)):  # NaN passes: a diverged member reads as NaN
        # Logits read as probabilities gave NaN entropies and negative "probabilities".
        bad = arr[(arr < 0) | (arr > 1)]
        raise ValueError(
            f"{where}: with from_logits=False samples must be probabilities in [0, 1], got values such as "
            f"{np.array2string(bad[:4])}; pass from_logits=True for logits."
        )
    return samples, from_logits


def _log_probs(samples: jax.Array, from_logits: bool) -> jax.Array:
    if from_logits:
        return jax.nn.log_softmax(samples, axis=-1)
    # Double where: log(0) = -inf with a zero (not NaN) gradient. Only an exact 0 is impossible:
    # a NaN (a diverged member) stays NaN instead of counting as a certain prediction.
    zero = samples == 0
    return jnp.where(zero, -jnp.inf, jnp.log(jnp.where(zero, 1.0, samples)))


def _entropy_from_log(logp: jax.Array) -> jax.Array:
    # 0 log 0 = 0; the double where keeps the gradient at an impossible class 0, not 0 * inf = NaN.
    possible = logp != -jnp.inf  # NaN is possible: it propagates
    safe = jnp.where(possible, logp, 0.0)
    return -jnp.sum(jnp.where(possible, jnp.exp(safe) * safe, 0.0), axis=-1)


def predictive_probs(samples: ArrayLike, *, from_logits: bool = True) -> jax.Array:
    r"""The predictive distribution: class probabilities averaged over samples.

    .. math:: \bar p(y \mid x) = \frac{1}{S} \sum_{s=1}^S p_s(y \mid x)

    Args:
      samples: shape ``(S, ..., C)``: logits or probabilities of ``S`` samples.
      from_logits: whether ``samples`` are logits (softmax over the last axis) or probabilities.

    Returns:
      Shape ``(..., C)``.

    Raises:
      ValueError: if ``samples`` has fewer than 2 dimensions, ``from_logits`` is not ``True`` or
        ``False``, or with ``from_logits=False`` concrete ``samples`` lie outside [0, 1] (logits;
        a NaN passes and gives NaN).

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> [round(float(p), 2) for p in jr.predictive_probs(jnp.array([[0.2, 0.8], [0.6, 0.4]]), from_logits=False)]
      [0.4, 0.6]
    """
    samples, from_logits = _check_samples(samples, "predictive_probs", from_logits)
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
      ValueError: if ``samples`` has fewer than 2 dimensions, ``from_logits`` is not ``True`` or
        ``False``, or with ``from_logits=False`` concrete ``samples`` lie outside [0, 1] (logits;
        a NaN passes and gives NaN).

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> round(float(jr.predictive_entropy(jnp.array([[1.0, 0.0], [0.0, 1.0]]), from_logits=False)), 4)
      0.6931
    """
    samples, from_logits = _check_samples(samples, "predictive_entropy", from_logits)
    return _predictive_entropy(samples, from_logits)


def _predictive_entropy(samples: jax.Array, from_logits: bool) -> jax.Array:
    if not from_logits:
        # log of the mean, not a logsumexp of logs: a sample's zero probability of a class that
        # another sample deems possible has the finite gradient -(log p_bar + 1) / S
        return _entropy_from_log(_log_probs(jnp.mean(samples, axis=0), False))
    logp = _log_probs(samples, from_logits)
    # A class impossible under every sample has mean -inf; logsumexp's gradient there would be NaN.
    possible = jnp.any(logp != -jnp.inf, axis=0)
    lse = jax.nn.logsumexp(jnp.where(possible, logp, 0.0), axis=0)
    log_mean = jnp.where(possible, lse - jnp.log(jnp.asarray(samples.shape[0], logp.dtype)), -jnp.inf)
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
      ValueError: if ``samples`` has fewer than 2 dimensions, ``from_logits`` is not ``True`` or
        ``False``, or with ``from_logits=False`` concrete ``samples`` lie outside [0, 1] (logits;
        a NaN passes and gives NaN).

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> round(float(jr.expected_entropy(jnp.array([[1.0, 0.0], [0.0, 1.0]]), from_logits=False)), 4)
      0.0
    """
    samples, from_logits = _check_samples(samples, "expected_entropy", from_logits)
    return _expected_entropy(samples, from_logits)


def _expected_entropy(samples: jax.Array, from_logits: bool) -> jax.Array:
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
      ValueError: if ``samples`` has fewer than 2 dimensions, ``from_logits`` is not ``True`` or
        ``False``, or with ``from_logits=False`` concrete ``samples`` lie outside [0, 1] (logits;
        a NaN passes and gives NaN).

    References:
      Houlsby et al., 2011. Bayesian Active Learning for Classification and Preference Learning.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> round(float(jr.mutual_information(jnp.array([[1.0, 0.0], [0.0, 1.0]]), from_logits=False)), 4)
      0.6931
    """
    samples, from_logits = _check_samples(samples, "mutual_information", from_logits)
    # Checked once (a concrete probability check reads the samples on the host).
    mi = _predictive_entropy(samples, from_logits) - _expected_entropy(samples, from_logits)
    return jnp.maximum(mi, 0.0)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, *, num_bins: int = 15) -> jax.Array:
    r"""Expected calibration error with equal-width confidence bins.

    .. math::
      \mathrm{ECE} = \sum_{b=1}^B \frac{|B_b|}{n} \big| \mathrm{acc}(B_b) - \mathrm{conf}(B_b) \big|

    The confidence of an example is its largest class probability, the prediction its argmax;
    bin ``b`` holds confidences in :math:`((b-1)/B, b/B]` (a confidence of 0 joins the first bin),
    the edges exact: the confidence as given is compared with the real number :math:`b/B`
    (float32(2/3) > 10/15 is in bin 11 of 15; numpy's float64 edges on the same values agree,
    while rounded float32 edges, as ``torch.linspace``'s in Guo et al.'s code, can move a
    confidence that equals an edge's rounding by one bin). A float64 ``probs`` is float32 unless
    x64 is on, as every jax array.
    Sums are accumulated in float32 at least (half-precision sums stall past 256 examples).

    Args:
      probs: shape ``(n, C)``: predicted probabilities (e.g. :func:`predictive_probs`).
      labels: shape ``(n,)``: integer class labels.
      num_bins: ``B >= 1``.

    Returns:
      A scalar in [0, 1].

    Raises:
      ValueError: if ``num_bins < 1``, the shapes disagree, there are no examples, concrete
        ``probs`` are not in [0, 1] (logits, or NaN), ``labels`` are not integers, or concrete
        ``labels`` are outside ``[0, C)`` (1-based labels).

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> probs = jnp.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
      >>> round(float(jr.expected_calibration_error(probs, jnp.array([0, 1, 0, 0]))), 4)
      0.4
    """
    num_bins = _checks.check_int_at_least("num_bins", num_bins, 1, "expected_calibration_error")
    probs, labels = jnp.asarray(probs), jnp.asarray(labels)
    probs = probs.astype(statistic_dtype(probs.dtype))  # bool or integer one-hot probabilities as floats
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            "expected_calibration_error: probs must be (n, C) and labels (n,), got "
            f"probs.shape = {probs.shape}, labels.shape = {labels.shape}."
        )
    n = probs.shape[0]
    if n == 0:
        raise ValueError(
            f"expected_calibration_error: probs needs at least one example, got probs.shape = {probs.shape}."
        )
    _checks.check_in_range("probs", probs, 0, 1, "expected_calibration_error", closed_high=True)
    _checks.check_labels("labels", labels, probs.shape[1], "expected_calibration_error")
    # bools are binary labels; any integer type is compared with argmax's int32 (strict promotion too)
    labels = labels.astype(jnp.int32)
    acc = compute_dtype(probs.dtype)  # float32 at least (an int8 one-hot sum wrapped: floats above)
    confidence = jnp.max(probs, axis=-1).astype(acc)
    correct = (jnp.argmax(probs, axis=-1).astype(jnp.int32) == labels).astype(acc)  # int64 under x64
    # ceil(conf * B) in float64, where the product of a float32 and a small integer is exact
    with jax.enable_x64(True):
        bins = (jnp.ceil(confidence.astype(jnp.float64) * num_bins) - 1).astype(jnp.int32)
    bins = jnp.clip(bins, 0, num_bins - 1)
    conf_sum = jnp.zeros(num_bins, acc).at[bins].add(confidence)
    acc_sum = jnp.zeros(num_bins, acc).at[bins].add(correct)
    return jnp.sum(jnp.abs(acc_sum - conf_sum)) / n
