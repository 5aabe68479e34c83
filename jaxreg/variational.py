r"""KL regularization: ``kl_normal`` and mean-field Gaussian parameters (Bayes by Backprop).

A mean-field Gaussian over a params pytree keeps, for every weight, a mean and a standard
deviation :math:`\sigma = \mathrm{softplus}(\rho)` stored through its raw value :math:`\rho`, so
that gradient steps on :math:`\rho` can never make :math:`\sigma` negative. Weights are drawn
with the reparameterization :math:`w = \mu + \sigma \odot \varepsilon`, and the KL to a Gaussian
prior (centred on zero or on reference weights) has a closed form. :func:`elbo_loss` weights
that KL per example, as in Bayes by Backprop, and :func:`predict` averages many weight samples
evaluated in parallel with ``vmap``.

References:
  Blundell et al., *Weight Uncertainty in Neural Networks*, ICML 2015.
  Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxreg import _checks, _chunking, _eager, _random
from jaxreg._tree import key_path_str, leaf_name
from jaxreg.uncertainty import Prediction, predict_chunked

PyTree = Any
Parameterization = Literal["std", "log_std", "softplus"]

__all__ = [
    "ElboTerms",
    "MeanField",
    "elbo_loss",
    "init",
    "inverse_softplus",
    "kl",
    "kl_normal",
    "predict",
    "predict_samples",
    "sample",
]

_PARAMETERIZATIONS = ("std", "log_std", "softplus")
# Below this raw value log(softplus(x)) = x + log(log1p(t) / t), t = exp(x), is x - t / 2 to
# O(t^2) = 4e-18 relative: exact in float64 too (x alone left 1e-9 there).
_LOG_SOFTPLUS_LINEAR_BELOW = -20.0


def _log_softplus(x: jax.Array) -> jax.Array:
    """``log(softplus(x))`` without underflow to ``-inf`` for very negative ``x`` (and finite grads)."""
    linear = x < _LOG_SOFTPLUS_LINEAR_BELOW
    safe = jnp.where(linear, jnp.zeros_like(x), x)
    tail = x - 0.5 * jnp.exp(jnp.minimum(x, _LOG_SOFTPLUS_LINEAR_BELOW))
    return jnp.where(linear, tail, jnp.log(jax.nn.softplus(safe)))


def inverse_softplus(y: ArrayLike) -> jax.Array:
    r"""The raw value :math:`\rho` with :math:`\mathrm{softplus}(\rho) = y`, for ``y > 0``.

    .. math:: \rho = \log(e^{y} - 1) = y + \log(1 - e^{-y})

    Args:
      y: positive values.

    Returns:
      ``rho`` such that ``jax.nn.softplus(rho) == y`` (to rounding).

    Raises:
      ValueError: if a concrete ``y`` is not finite and positive.

    Examples:
      >>> import jax, jaxreg as jr
      >>> round(float(jax.nn.softplus(jr.variational.inverse_softplus(0.05))), 6)
      0.05
    """
    _checks.check_positive("y", y, "inverse_softplus")
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.inexact):
        y = y.astype(jnp.float32)
    return y + jnp.log(-jnp.expm1(-y))


def _is_leafwise(tree: Any, reference: PyTree) -> bool:
    """Whether ``tree`` is a pytree with the structure of ``reference`` (rather than one array)."""
    ref = jax.tree.structure(reference)
    return not jax.tree_util.treedef_is_leaf(ref) and jax.tree.structure(tree) == ref


def _leaves_like(value: Any, reference: PyTree, name: str, where: str) -> list[Any]:
    """The leaves of ``value`` matched to ``reference``: a scalar/array broadcast, or a same-shaped tree."""
    n = len(jax.tree.leaves(reference))
    if _is_leafwise(value, reference):
        return jax.tree.leaves(value)
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(value)) and value is not None:
        return [value] * n
    raise ValueError(
        f"{where}: {name} must be a scalar, an array, or a pytree with the structure of the mean, got "
        f"{name} with structure {jax.tree.structure(value)} for mean {jax.tree.structure(reference)}."
    )


def _check_prior_values(prior_mean: Any, prior_std: Any, where: str) -> None:
    for leaf in jax.tree.leaves(prior_std):
        _checks.check_positive("prior_std", leaf, where)
    for leaf in jax.tree.leaves(prior_mean):
        _checks.check_finite("prior_mean", leaf, where)


def _broadcast(x: Any, shape: tuple[int, ...], name: str, where: str) -> jax.Array:
    x = jnp.asarray(x)
    try:
        return jnp.broadcast_to(x, shape)
    except ValueError:
        raise ValueError(f"{where}: {name} of shape {x.shape} does not broadcast to shape {shape}.") from None


def kl_normal(
    mean: ArrayLike | PyTree,
    std: ArrayLike | PyTree,
    prior_mean: ArrayLike | PyTree = 0.0,
    prior_std: ArrayLike | PyTree = 1.0,
    *,
    parameterization: Parameterization = "std",
) -> jax.Array:
    r"""Closed-form KL divergence between diagonal Gaussians, summed over all elements.

    .. math::
      \mathrm{KL}\big(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(\mu_0, \sigma_0^2)\big)
      = \sum_i \log\frac{\sigma_{0,i}}{\sigma_i}
        + \frac{\sigma_i^2 + (\mu_i - \mu_{0,i})^2}{2 \sigma_{0,i}^2} - \frac12

    The second argument is read according to ``parameterization``:

    * ``"std"``: :math:`\sigma` itself (must be positive);
    * ``"log_std"``: :math:`\log \sigma` (any real; the usual output of a VAE encoder). The
      :math:`\log \sigma` term is then exact even where :math:`\sigma` underflows;
    * ``"softplus"``: the raw :math:`\rho` with :math:`\sigma = \mathrm{softplus}(\rho)` (any
      real; the parameterization of :class:`MeanField`). :math:`\log \sigma` is computed
      without underflow for very negative :math:`\rho`.

    Args:
      mean: the mean :math:`\mu`: an array or a pytree of arrays.
      std: :math:`\sigma`, :math:`\log\sigma` or :math:`\rho` (see above), shaped like ``mean``
        (an array broadcastable to each leaf, or a pytree with the structure of ``mean``).
      prior_mean: :math:`\mu_0`: a scalar, an array broadcastable to ``mean``, or a pytree with
        the structure of ``mean`` (e.g. reference weights).
      prior_std: :math:`\sigma_0 > 0`, in the same forms as ``prior_mean``.
      parameterization: ``"std"`` (default), ``"log_std"`` or ``"softplus"``.

    Returns:
      The KL divergence, a scalar summed over every element of every leaf (float32 unless the
      inputs are wider).

    Raises:
      ValueError: if a concrete ``std`` (with ``parameterization="std"``) or ``prior_std`` is not
        finite and positive, if ``parameterization`` is unknown, or if the structures or shapes
        do not match.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> round(float(jr.kl_normal(jnp.zeros(3), jnp.ones(3))), 6)
      0.0
      >>> # KL(N(1, 2^2) || N(0, 1)) = log(1/2) + (4 + 1) / 2 - 1/2
      >>> round(float(jr.kl_normal(1.0, 2.0)), 4)
      1.3069
      >>> round(float(jr.kl_normal(1.0, jnp.log(2.0), parameterization="log_std")), 4)
      1.3069
    """
    return _kl_normal(mean, std, prior_mean, prior_std, parameterization, "kl_normal")


def _kl_normal(mean: Any, std: Any, prior_mean: Any, prior_std: Any, parameterization: str, where: str) -> jax.Array:
    """:func:`kl_normal`, its errors naming ``where`` (the public function called)."""
    if parameterization not in _PARAMETERIZATIONS:
        raise ValueError(
            f"{where}: parameterization must be one of {_PARAMETERIZATIONS}, got parameterization = {parameterization!r}."
        )
    mean_leaves, treedef = jax.tree.flatten(mean)
    if not mean_leaves:
        return jnp.zeros([], jnp.float32)
    std_leaves = _leaves_like(std, mean, "std", where)
    prior_mean_leaves = _leaves_like(prior_mean, mean, "prior_mean", where)
    prior_std_leaves = _leaves_like(prior_std, mean, "prior_std", where)
    del treedef
    paths = [key_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(mean)[0]]

    total = []
    for path, m, s, pm, ps in zip(paths, mean_leaves, std_leaves, prior_mean_leaves, prior_std_leaves):
        if parameterization == "std":
            _checks.check_positive("std", s, where)
        _checks.check_positive("prior_std", ps, where)
        _checks.check_finite("prior_mean", pm, where)
        leaf_name = f" (leaf {path!r})" if path else ""
        m = _checks.as_real_array(m, "mean" + leaf_name, where)
        with jax.numpy_dtype_promotion("standard"):  # the dtype is chosen here, also under 'strict'
            dtype = jnp.result_type(m, s, pm, ps, jnp.float32)
        # Broadcast jointly, as the numpy formula would (a scalar mean with an array std is fine).
        try:
            shape = jnp.broadcast_shapes(m.shape, jnp.shape(s), jnp.shape(pm), jnp.shape(ps))
        except ValueError:
            shape = m.shape  # _broadcast below names the argument that does not fit
        m = _broadcast(m, shape, "mean" + leaf_name, where).astype(dtype)
        s = _broadcast(s, shape, "std" + leaf_name, where).astype(dtype)
        pm = _broadcast(pm, shape, "prior_mean" + leaf_name, where).astype(dtype)
        ps = _broadcast(ps, shape, "prior_std" + leaf_name, where).astype(dtype)
        # Ratios to the prior's std before squaring: sigma^2 / sigma_0^2 squared apart under- or
        # overflowed both (0 / 0 = NaN at sigma = sigma_0 = 1e-30, where the KL is 0).
        log_ps = jnp.log(ps)
        if parameterization == "std":
            log_s, ratio = jnp.log(s), jnp.square(s / ps)
        elif parameterization == "log_std":
            log_s, ratio = s, jnp.exp(2.0 * (s - log_ps))
        else:
            log_s, ratio = _log_softplus(s), jnp.square(jax.nn.softplus(s) / ps)
        elementwise = log_ps - log_s + 0.5 * (ratio + jnp.square((m - pm) / ps)) - 0.5
        total.append(jnp.sum(elementwise))
    return sum(total[1:], total[0])


class MeanField(NamedTuple):
    r"""Mean-field Gaussian over a params pytree: :math:`w \sim \mathcal N(\mu, \mathrm{softplus}(\rho)^2)`.

    Both fields have the structure of the params. Train both with any optax optimizer; the
    ``std`` property gives :math:`\sigma = \mathrm{softplus}(\rho)`.
    """

    mean: PyTree
    raw_std: PyTree

    @property
    def std(self) -> PyTree:
        """The standard deviations, ``softplus(raw_std)``, shaped like the params."""
        return jax.tree.map(jax.nn.softplus, self.raw_std)


class ElboTerms(NamedTuple):
    """The parts of :func:`elbo_loss`: ``total = nll + kl / num_examples``."""

    nll: jax.Array
    kl: jax.Array
    aux: Any = None


def _check_float_leaves(params: PyTree, where: str) -> None:
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            raise ValueError(
                f"{where}: every params leaf must be floating point, got leaf {leaf_name(path)!r} "
                f"with dtype {jnp.result_type(x)}."
            )


def init(params: PyTree, init_std: ArrayLike = 1e-2) -> MeanField:
    r"""A mean-field Gaussian centred on deterministic ``params`` with a common initial std.

    .. math:: \mu = w, \qquad \rho = \mathrm{softplus}^{-1}(\sigma_\text{init})

    Args:
      params: a pytree of floating-point arrays (e.g. a flax ``init`` result).
      init_std: the initial :math:`\sigma > 0` of every weight (Bayes by Backprop starts small,
        about ``1e-3`` to ``1e-2``, so that early samples stay near the deterministic net).

    Returns:
      ``MeanField(mean=params, raw_std=...)``, ``raw_std`` in each leaf's dtype.

    Raises:
      ValueError: if a concrete ``init_std`` is not finite and positive, or a leaf is not
        floating point.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> vparams = jr.variational.init({"w": jnp.zeros((2, 3))}, init_std=0.1)
      >>> round(float(vparams.std["w"][0, 0]), 6)
      0.1
    """
    _checks.check_positive("init_std", init_std, "variational.init")
    _check_float_leaves(params, "variational.init")
    raw = inverse_softplus(init_std)
    raw_std = jax.tree.map(lambda p: jnp.broadcast_to(raw.astype(jnp.result_type(p)), jnp.shape(p)), params)
    return MeanField(mean=params, raw_std=raw_std)


def _check_meanfield(vparams: Any, where: str) -> None:
    if not isinstance(vparams, MeanField):
        raise ValueError(
            f"{where}: vparams must be a MeanField (from jaxreg.variational.init), got vparams of type "
            f"{type(vparams).__name__}."
        )
    if jax.tree.structure(vparams.mean) != jax.tree.structure(vparams.raw_std):
        raise ValueError(
            f"{where}: vparams.mean and vparams.raw_std must have the same structure, got "
            f"{jax.tree.structure(vparams.mean)} and {jax.tree.structure(vparams.raw_std)}."
        )
    _checks.check_like("vparams.raw_std", vparams.raw_std, "vparams.mean", vparams.mean, where)


def sample(rng: jax.Array, vparams: MeanField) -> PyTree:
    r"""One reparameterized draw of the weights: :math:`w = \mu + \mathrm{softplus}(\rho) \odot \varepsilon`.

    .. math:: \varepsilon \sim \mathcal N(0, I), \qquad w = \mu + \mathrm{softplus}(\rho) \odot \varepsilon

    Gradients flow to both ``mean`` and ``raw_std``. The noise of all leaves comes from one draw
    with ``rng``, split into the leaves in their flattening order.

    Args:
      rng: a PRNG key.
      vparams: a :class:`MeanField`.

    Returns:
      A params pytree with the structure of ``vparams.mean``.

    Raises:
      ValueError: if ``vparams`` is not a MeanField with matching fields.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> vparams = jr.variational.init({"w": jnp.zeros(1000)}, init_std=0.5)
      >>> w = jr.variational.sample(jax.random.key(0), vparams)["w"]
      >>> bool(abs(float(w.std()) - 0.5) < 0.05)
      True
    """
    _check_meanfield(vparams, "variational.sample")
    _random.check_key(rng, "variational.sample")
    means, treedef = jax.tree.flatten(vparams.mean)
    raws = jax.tree.leaves(vparams.raw_std)
    if not means:
        return vparams.mean
    # Written once: the noise is read by the draw and again by the gradient of raw_std; fused, XLA
    # hashed it in each reader (a digits-MLP ELBO step 1.23x faster written once, prediction
    # 1.08x; AMD EPYC). Noise read once (jr.gaussian_noise) is faster fused (0.83x written once).
    eps = _random.normal_leaves(rng, means, write_once=True)
    draws = [m + jax.nn.softplus(r) * e for m, r, e in zip(means, raws, eps)]
    return jax.tree.unflatten(treedef, draws)


def kl(
    vparams: MeanField,
    prior_mean: ArrayLike | PyTree = 0.0,
    prior_std: ArrayLike | PyTree = 1.0,
) -> jax.Array:
    r"""KL from the mean-field Gaussian to a Gaussian prior, summed over all weights.

    .. math::
      \mathrm{KL}\big(q \,\|\, p\big) = \sum_i \log\frac{\sigma_{0,i}}{\sigma_i}
        + \frac{\sigma_i^2 + (\mu_i - \mu_{0,i})^2}{2 \sigma_{0,i}^2} - \frac12,
      \qquad \sigma_i = \mathrm{softplus}(\rho_i)

    Args:
      vparams: a :class:`MeanField`.
      prior_mean: the prior's centre: a scalar (0 by default) or a params pytree (e.g.
        pre-trained weights, the Bayesian form of ``l2(center=...)``).
      prior_std: the prior's :math:`\sigma_0 > 0`: a scalar or a params pytree.

    Returns:
      The KL, a scalar.

    Raises:
      ValueError: if ``prior_std`` is concrete and not positive, or structures do not match.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> vparams = jr.variational.init({"w": jnp.zeros(4)}, init_std=1.0)
      >>> round(float(jr.variational.kl(vparams)), 6)
      0.0
    """
    _check_meanfield(vparams, "variational.kl")
    return _kl_normal(vparams.mean, vparams.raw_std, prior_mean, prior_std, "softplus", "variational.kl")


def elbo_loss(
    loss_fn: Callable[..., Any],
    *,
    num_examples: ArrayLike,
    prior_mean: ArrayLike | PyTree = 0.0,
    prior_std: ArrayLike | PyTree = 1.0,
    num_samples: int = 1,
    has_aux: bool = False,
) -> Callable[..., tuple[jax.Array, ElboTerms]]:
    r"""The negative ELBO per example (Bayes by Backprop) from a deterministic loss.

    .. math::
      L(\mu, \rho) = \frac{1}{S} \sum_{s=1}^{S} \mathrm{NLL}(w_s; \text{batch})
        + \frac{\mathrm{KL}(q_{\mu,\rho} \,\|\, p)}{N},
      \qquad w_s = \mu + \mathrm{softplus}(\rho) \odot \varepsilon_s

    ``loss_fn`` returns the *mean* negative log-likelihood over its batch, so the KL is weighted
    by :math:`1/N` with :math:`N` the size of the whole training set: the sum is the negative
    ELBO divided by :math:`N`, for any batch size. The :math:`S` weight samples are evaluated
    in parallel with ``vmap``.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs) -> nll`` (mean over the batch), or
        ``-> (nll, aux)`` with ``has_aux=True``.
      num_examples: :math:`N`, the number of training examples (positive; may be traced).
      prior_mean: the prior's centre: a scalar or a params pytree.
      prior_std: the prior's :math:`\sigma_0 > 0`: a scalar or a params pytree.
      num_samples: :math:`S \geq 1` weight samples per call (static).
      has_aux: whether ``loss_fn`` returns ``(nll, aux)``; ``aux`` is then stacked over the
        samples.

    Returns:
      ``fn(vparams, rng, *args, **kwargs) -> (total, ElboTerms(nll, kl, aux))``, ready for
      ``jax.value_and_grad(fn, has_aux=True)``.

    Raises:
      ValueError: if ``num_examples`` (concrete) or ``prior_std`` (concrete) is not positive, or
        ``num_samples`` is not an int >= 1.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> nll = lambda w, x, y: jnp.mean((x @ w["w"] - y) ** 2)
      >>> fn = jr.variational.elbo_loss(nll, num_examples=100)
      >>> vparams = jr.variational.init({"w": jnp.zeros(2)}, init_std=1.0)
      >>> (total, terms), grads = jax.value_and_grad(fn, has_aux=True)(
      ...     vparams, jax.random.key(0), jnp.zeros((5, 2)), jnp.zeros(5))
      >>> [round(float(v), 4) for v in (total, terms.nll, terms.kl)]
      [0.0, 0.0, 0.0]
    """
    _checks.check_callable("loss_fn", loss_fn, "variational.elbo_loss")
    _checks.check_positive("num_examples", num_examples, "variational.elbo_loss", scalar=True)  # (2,): a vector loss
    _check_prior_values(prior_mean, prior_std, "variational.elbo_loss")  # a NaN mean failed at call time
    num_samples = _checks.check_int_at_least("num_samples", num_samples, 1, "variational.elbo_loss")
    has_aux = _checks.check_flag("has_aux", has_aux, "variational.elbo_loss")

    def fn(vparams: MeanField, rng: jax.Array, *args: Any, **kwargs: Any) -> tuple[jax.Array, ElboTerms]:
        _check_meanfield(vparams, "variational.elbo_loss")
        _random.check_key(rng, "variational.elbo_loss")
        # first: a prior unlike the params is refused before the samples' losses run
        kl_value = _kl_normal(vparams.mean, vparams.raw_std, prior_mean, prior_std, "softplus", "variational.elbo_loss")

        def one(key: jax.Array, vp: MeanField, a: tuple, kw: dict) -> Any:
            # a per-example loss is averaged with the samples (the mean NLL either way): scalar=False
            out = loss_fn(sample(key, vp), *a, **kw)
            return _checks.split_aux(out, has_aux, "variational.elbo_loss", scalar=False)

        # The shared arrays pass through vmap, not closed over: an nnx model merged from them may reseed.
        one, shared = _chunking.pass_arrays(one, (vparams, args, kwargs))
        keys = jax.random.split(rng, num_samples)
        nlls, aux = jax.vmap(one, in_axes=(0,) + (None,) * len(shared))(keys, *shared)
        nll = jnp.mean(nlls)
        total = nll + (kl_value / jnp.asarray(num_examples, kl_value.dtype)).astype(nll.dtype)
        return total, ElboTerms(nll, kl_value, aux)

    return fn


def predict_samples(
    apply_fn: Callable[[PyTree, Any], Any],
    vparams: MeanField,
    x: Any,
    rng: jax.Array,
    num_samples: int,
    *,
    chunk_size: int | None = None,
) -> PyTree:
    r"""The outputs of ``num_samples`` weight samples, stacked on a leading axis.

    .. math:: f(x; w_s), \quad w_s \sim q_{\mu,\rho}, \quad s = 1, \dots, S

    The same keys as :func:`predict`, so :func:`predict` is the mean and ``ddof=0`` variance of
    these. Feed logits to :mod:`jaxreg.uncertainty` (predictive entropy, mutual information).

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` (an array or a pytree of arrays).
      vparams: a :class:`MeanField`.
      x: the inputs, passed unchanged to every sample.
      rng: a PRNG key; sample ``s`` uses ``jax.random.split(rng, num_samples)[s]``.
      num_samples: :math:`S \geq 1`, static.
      chunk_size: samples evaluated together by one ``vmap`` (a loop over chunks bounds the
        activations' memory); ``None`` chooses by measurement on the first call or trace under
        ``jit`` (as :func:`jaxreg.mc_dropout` does: about 1 s of timing, cached; the static rule
        under ``vmap``/``grad`` without a cached choice, or with ``JAXREG_AUTOTUNE=0``). Each
        sample's key does not depend on it; its values do only by float rounding (a chunk is
        another program, whose products XLA may round differently).

    Returns:
      The outputs with a leading axis of size ``num_samples``.

    Raises:
      ValueError: if ``num_samples`` is not an int >= 1, ``chunk_size`` is not an int >= 1 or
        ``rng`` is not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> vparams = jr.variational.init({"w": jnp.ones(3)}, init_std=0.1)
      >>> jr.variational.predict_samples(lambda p, x: p["w"] @ x, vparams, jnp.ones(3),
      ...                                jax.random.key(0), 5).shape
      (5,)
    """
    return _run_samples(apply_fn, vparams, x, rng, num_samples, chunk_size, "variational.predict_samples")


def _run_samples(
    apply_fn: Callable[[PyTree, Any], Any],
    vparams: MeanField,
    x: Any,
    rng: jax.Array,
    num_samples: Any,
    chunk_size: Any,
    where: str,
) -> Any:
    """The stacked outputs (``predict_samples``) or their moments (``predict``) of the weight samples.

    The samples per chunk are explicit, or measured, cached or static (``jaxreg._chunking``).
    """
    _checks.check_callable("apply_fn", apply_fn, where, "a function (params, x) -> outputs")
    _check_meanfield(vparams, where)
    num_samples = _checks.check_int_at_least("num_samples", num_samples, 1, where)
    chunk = _chunking.check_chunk_size(chunk_size, where)
    _random.check_key(rng, where)
    keys = jax.random.split(rng, num_samples)

    def one(vp: MeanField, x_: Any, key: jax.Array) -> Any:
        return apply_fn(sample(key, vp), x_)

    def program(c: int) -> Callable[..., Any]:
        if where == "variational.predict":  # the moments, merged over chunks
            return lambda vp, x_, ks: predict_chunked(lambda k, v, y: one(v, y, k), ks, c, consts=(vp, x_), where=where)
        return lambda vp, x_, ks: _chunking.map_chunks(lambda k, v, y: one(v, y, k), ks, c, consts=(vp, x_))

    if chunk is not None:
        return _eager.call(program(min(chunk, num_samples)), vparams, x, keys, compiled=chunk < num_samples)
    jaxpr = _chunking.trace_item(one, vparams, x, keys[0])
    static = _chunking.static_chunk(num_samples, None if jaxpr is None else _chunking.jaxpr_bytes(jaxpr.jaxpr))
    return _chunking.run_auto(
        None,
        num_samples,
        where=where,
        program=program,
        args=(vparams, x, keys),
        items=keys,
        item_jaxpr=jaxpr,
        static=static,
        memory_bound=where == "variational.predict",  # moments merged over chunks bound memory
    )


def predict(
    apply_fn: Callable[[PyTree, Any], Any],
    vparams: MeanField,
    x: Any,
    rng: jax.Array,
    num_samples: int,
    *,
    chunk_size: int | None = None,
) -> Prediction:
    r"""Predictive mean and variance over weight samples, evaluated in parallel with ``vmap``.

    .. math::
      \bar y = \frac1S \sum_{s=1}^S f(x; w_s), \qquad
      \mathrm{Var}[y] = \frac1S \sum_{s=1}^S \big(f(x; w_s) - \bar y\big)^2,
      \qquad w_s \sim q_{\mu,\rho}

    The variance has ``ddof=0``: it is the variance of the uniform mixture of the sampled
    networks, as in ``mc_dropout`` and ``ensemble.predict``. Pass probabilities (e.g. a softmax
    inside ``apply_fn``) to average a classifier's predictive distribution.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` (an array or a pytree of arrays).
      vparams: a :class:`MeanField`.
      x: the inputs, passed unchanged to every sample.
      rng: a PRNG key; sample ``s`` uses ``jax.random.split(rng, num_samples)[s]``.
      num_samples: :math:`S \geq 1`, static.
      chunk_size: evaluate the samples ``chunk_size`` at a time (a loop over chunks of a
        ``vmap``, the chunks' moments merged) to bound memory; ``None`` chooses by measurement
        as in :func:`predict_samples`. The result does not depend on it beyond float rounding.

    Returns:
      ``Prediction(mean, variance)``, each shaped like the outputs of ``apply_fn``.

    Raises:
      ValueError: if ``num_samples`` is not an int >= 1, ``chunk_size`` is not an int >= 1 or
        ``rng`` is not a PRNG key.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> vparams = jr.variational.init({"w": jnp.ones(1)}, init_std=0.5)
      >>> pred = jr.variational.predict(lambda p, x: p["w"] * x, vparams, jnp.ones(1),
      ...                               jax.random.key(0), 4000)
      >>> round(float(pred.mean[0]), 1), round(float(pred.variance[0]) ** 0.5, 1)  # N(1, 0.5^2)
      (1.0, 0.5)
    """
    return _run_samples(apply_fn, vparams, x, rng, num_samples, chunk_size, "variational.predict")
