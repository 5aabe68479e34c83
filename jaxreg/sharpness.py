"""Sharpness-aware minimization as a gradient estimator: :func:`sam_gradient` feeds any optax chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxreg import _checks
from jaxreg._tree import compute_dtype, leaf_name, resolve_mask

PyTree = Any

__all__ = ["sam_gradient"]


def sam_gradient(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    *args: Any,
    rho: ArrayLike,
    adaptive: bool = False,
    mask: Any = None,
    eta: ArrayLike = 0.0,
    has_aux: bool = False,
) -> tuple[Any, PyTree]:
    r"""The loss at ``params`` and the sharpness-aware gradient: the gradient at the worst nearby point.

    With :math:`g = \nabla L(w)` and, for ASAM (``adaptive=True``), :math:`T_w = |w| + \eta`
    elementwise (:math:`T_w = 1` for SAM):

    .. math::
      \epsilon = \rho \, \frac{T_w^2 \, g}{\lVert T_w \, g \rVert_2}, \qquad
      \text{returns } \big(L(w),\ \nabla L(w + \epsilon)\big),

    the norm running over all selected leaves together (:math:`\epsilon = 0` where
    :math:`g = 0`). Leaves outside ``mask`` (and non-float leaves) are not perturbed and do not
    enter the norm; their gradient is still taken at the perturbed point (an integer leaf's is
    jax's ``float0`` zero, as from ``jax.grad(..., allow_int=True)``). The norm and
    :math:`\rho / \lVert T_w g \rVert` are computed in float32, or float64 when a selected leaf is.
    Two gradient evaluations; ``rho`` and ``eta`` may be traced (a sweep over radii is a ``vmap``).

    Args:
      loss_fn: ``loss_fn(params, *args) -> scalar``, or ``-> (scalar, aux)`` with ``has_aux``.
      params: the params.
      *args: passed to ``loss_fn`` (a batch, an rng...).
      rho: the radius :math:`\rho \ge 0` of the neighbourhood.
      adaptive: ASAM's scale-invariant neighbourhood (Kwon et al. 2021). Static.
      mask: which leaves to perturb: a pytree of bools, a callable ``params -> pytree of bools``
        or a :mod:`jaxreg.masks` mask; ``None`` for all.
      eta: ASAM's offset :math:`\eta \ge 0` in :math:`|w| + \eta` (Kwon et al. use 0.01);
        ignored without ``adaptive``. It applies to every selected leaf: ASAM's reference code
        takes :math:`T_w = |w| + \eta` for weights and :math:`T_w = 1` for biases, which this
        function does not offer (a ``mask`` leaves biases unperturbed instead).
      has_aux: ``loss_fn`` returns ``(loss, aux)``, as in ``jax.value_and_grad(..., has_aux=True)``
        (a model's updated batch statistics, metrics). Static.

    Returns:
      ``(loss, grad)``: the loss at ``params`` and the gradient at ``params + epsilon``; with
      ``has_aux``, ``((loss, aux), grad)``, ``aux`` from the evaluation at ``params`` (the one at
      the perturbed point is discarded).

    Raises:
      ValueError: if ``rho`` or ``eta`` is negative or not a scalar, ``mask`` does not match
        ``params``, or ``loss_fn``'s output does not match ``has_aux`` or its loss is not a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxreg as jr
      >>> loss, g = jr.sam_gradient(lambda w: 0.5 * jnp.sum(w**2), jnp.array([3.0, 4.0]), rho=0.5)
      >>> float(loss), g.tolist()  # w + 0.5 * w / |w| = [3.3, 4.4]
      (12.5, [3.299999952316284, 4.400000095367432])

    References:
      Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-aware minimization for efficiently improving
      generalization", ICLR 2021.

      Kwon, Kim, Park & Choi, "ASAM: adaptive sharpness-aware minimization for scale-invariant
      learning of deep neural networks", ICML 2021.
    """
    _checks.check_callable("loss_fn", loss_fn, "sam_gradient", "a function (params, *args) -> loss")
    _checks.check_nonnegative("rho", rho, "sam_gradient", scalar=True)
    _checks.check_nonnegative("eta", eta, "sam_gradient", scalar=True)
    adaptive = _checks.check_flag("adaptive", adaptive, "sam_gradient")
    has_aux = _checks.check_flag("has_aux", has_aux, "sam_gradient")
    selected = jax.tree.map(
        lambda keep, w: bool(keep) and jnp.issubdtype(jnp.result_type(w), jnp.inexact),
        resolve_mask(mask, params, "sam_gradient"),
        params,
    )
    for (path, w), keep in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(selected)):
        if keep:
            # jax.grad of a real loss is the conjugate of the ascent direction at a complex leaf: a
            # perturbation along it (and a norm of g**2) would not be SAM's.
            why = "SAM's perturbation is defined here for real parameters. Leave it out with mask=."
            _checks.check_real(f"leaf {leaf_name(path)!r}", w, "sam_gradient", why)

    # allow_int: integer leaves (a step counter, an index) get jax's float0 gradient, as in
    # jax.grad(..., allow_int=True), and are never perturbed.
    # Checked at trace time: jax's TypeError named neither loss_fn nor its shape.
    def loss_and_aux(p: PyTree, *a: Any) -> tuple[jax.Array, Any]:
        return _checks.split_aux(loss_fn(p, *a), has_aux, "sam_gradient")

    (loss, aux), g = jax.value_and_grad(loss_and_aux, has_aux=True, allow_int=True)(params, *args)

    # float32 at least (half-precision norms overflow, and rho/||g|| under a loss scale is
    # subnormal in float16); float64 when a selected leaf is
    acc = max(
        (
            compute_dtype(jnp.result_type(w))
            for w, keep in zip(jax.tree.leaves(params), jax.tree.leaves(selected))
            if keep
        ),
        key=lambda d: d.itemsize,
        default=jnp.dtype(jnp.float32),
    )

    def scale(w, keep):
        if not keep:
            return None
        return jnp.abs(w.astype(acc)) + jnp.asarray(eta, acc) if adaptive else jnp.ones(jnp.shape(w), acc)

    t = jax.tree.map(scale, params, selected)
    tg = jax.tree.map(lambda ti, gi: None if ti is None else ti * gi.astype(acc), t, g, is_leaf=lambda x: x is None)
    sq = [jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tg)]
    norm = jnp.sqrt(sum(sq[1:], sq[0])) if sq else jnp.zeros([], acc)
    factor = jnp.where(norm > 0, jnp.asarray(rho, acc) / jnp.where(norm > 0, norm, 1.0), 0.0)

    def perturb(w, ti, tgi):
        if ti is None:
            return w
        return w + (factor * ti * tgi).astype(w.dtype)  # eps = rho T^2 g / ||T g||, in acc

    perturbed = jax.tree.map(perturb, params, t, tg, is_leaf=lambda x: x is None)
    sharp = jax.grad(lambda p, *a: loss_and_aux(p, *a)[0], allow_int=True)(perturbed, *args)
    return ((loss, aux) if has_aux else loss), sharp
