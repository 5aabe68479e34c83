"""``regularize``: a data loss plus a penalty, with both terms reported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from jaxreg import _checks
from jaxreg.penalties import Penalty

__all__ = ["Terms", "regularize"]


class Terms(NamedTuple):
    """The parts of a regularized loss: ``total = loss + penalty``."""

    loss: jax.Array
    penalty: jax.Array
    aux: Any = None


def regularize(
    loss_fn: Callable[..., Any], penalty: Penalty, *, has_aux: bool = False
) -> Callable[..., tuple[jax.Array, Terms]]:
    r"""Adds ``penalty(params)`` to a loss and reports the terms separately.

    .. math:: L_\text{total}(w) = L(w; \text{batch}) + \Omega(w)

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs) -> loss``, or ``-> (loss, aux)`` with
        ``has_aux=True``. The penalty sees ``params`` only (the first argument).
      penalty: a :class:`jaxreg.penalties.Penalty`.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      ``fn(params, *args, **kwargs) -> (total, Terms(loss, penalty, aux))``, ready for
      ``jax.value_and_grad(fn, has_aux=True)``.

    Raises:
      ValueError: if ``loss_fn`` is not callable or ``penalty`` is not a Penalty; when called, if
        ``loss_fn`` returns a non-scalar loss or its output does not match ``has_aux``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> fn = jr.regularize(lambda w, x: jnp.sum((x @ w) ** 2), jr.l2(0.1))
      >>> (total, terms), grads = jax.value_and_grad(fn, has_aux=True)(jnp.ones(2), jnp.eye(2))
      >>> [round(float(v), 4) for v in (total, terms.loss, terms.penalty)]
      [2.2, 2.0, 0.2]
    """
    _checks.check_callable("loss_fn", loss_fn, "regularize")
    if not isinstance(penalty, Penalty):
        raise ValueError(f"regularize: penalty must be a jaxreg Penalty, got penalty = {penalty!r}.")
    has_aux = _checks.check_flag("has_aux", has_aux, "regularize")

    def fn(params: Any, *args: Any, **kwargs: Any) -> tuple[jax.Array, Terms]:
        loss, aux = _checks.split_aux(loss_fn(params, *args, **kwargs), has_aux, "regularize")
        value = penalty(params)
        dtype = jax.numpy.result_type(loss)
        if not jax.numpy.issubdtype(dtype, jax.numpy.inexact):  # an integer loss: no truncated penalty
            loss = jax.numpy.asarray(loss).astype(value.dtype)
            dtype = value.dtype
        return loss + value.astype(dtype), Terms(loss, value, aux)

    return fn
