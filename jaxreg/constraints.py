"""Constraints: projections ``params -> params`` onto a feasible set.

Use them after an optimizer step with :func:`jaxreg.project`, or call them directly. Each is a
pytree whose bound is a leaf (a sweep over ``max_value`` is a ``vmap``); ``axis`` and ``mask``
are static. Only floating-point leaves are projected.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxreg import _checks, _pytree
from jaxreg._tree import as_mask, key_path_str, resolve_mask
from jaxreg.penalties import _asarray

PyTree = Any

__all__ = ["Constraint", "MaxNorm", "NonNegative", "UnitNorm", "max_norm", "non_negative", "unit_norm"]


class Constraint:
    """Base class: a projection applied leaf by leaf to the masked floating-point leaves."""

    mask: Any = None

    def _project_leaf(self, path: Any, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __call__(self, params: PyTree) -> PyTree:
        keep = jax.tree.leaves(resolve_mask(self.mask, params))
        paths, treedef = jax.tree_util.tree_flatten_with_path(params)
        out = [
            self._project_leaf(p, x).astype(x.dtype) if k and jnp.issubdtype(jnp.result_type(x), jnp.inexact) else x
            for (p, x), k in zip(paths, keep)
        ]
        return jax.tree.unflatten(treedef, out)


def _norm_along(where: str, axis: int, path: Any, x: jax.Array) -> jax.Array:
    ndim = jnp.ndim(x)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{where}: axis = {axis} is out of range for leaf {key_path_str(path)!r} of shape {jnp.shape(x)}; "
            "restrict the constraint with mask=jr.masks.kernels."
        )
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _check_axis(where: str, axis: Any) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"{where}: axis must be an int, got axis = {axis!r}.")
    return axis


@_pytree.register(data=("max_value",), meta=("axis", "mask"))
class MaxNorm(Constraint):
    r"""Rescales each weight vector whose L2 norm along ``axis`` exceeds ``max_value``.

    .. math:: w \leftarrow w \cdot \min\left(1, \frac{c}{\|w\|_{2,\text{axis}}}\right)

    As in Keras, the norm is taken along ``axis``: on a Dense kernel ``(in, out)`` with
    ``axis=0`` each output unit's incoming weight vector is bounded (Srivastava et al. 2014).
    """

    def __init__(self, max_value: ArrayLike, *, axis: int = 0, mask: Any = None):
        _checks.check_positive("max_value", max_value, "max_norm")
        _pytree.set_fields(
            self,
            max_value=_asarray(max_value),
            axis=_check_axis("max_norm", axis),
            mask=None if mask is None else as_mask(mask),
        )

    def _project_leaf(self, path: Any, x: jax.Array) -> jax.Array:
        norm = _norm_along("max_norm", self.axis, path, x)
        return x * jnp.where(norm > self.max_value, self.max_value / jnp.where(norm > 0, norm, 1.0), 1.0)


@_pytree.register(data=(), meta=("axis", "mask"))
class UnitNorm(Constraint):
    r"""Scales each weight vector along ``axis`` to unit L2 norm; a zero vector stays zero.

    .. math:: w \leftarrow w / \|w\|_{2,\text{axis}}
    """

    def __init__(self, *, axis: int = 0, mask: Any = None):
        _pytree.set_fields(self, axis=_check_axis("unit_norm", axis), mask=None if mask is None else as_mask(mask))

    def _project_leaf(self, path: Any, x: jax.Array) -> jax.Array:
        norm = _norm_along("unit_norm", self.axis, path, x)
        return x / jnp.where(norm > 0, norm, 1.0)


@_pytree.register(data=(), meta=("mask",))
class NonNegative(Constraint):
    r"""Clips to the non-negative orthant: :math:`w \leftarrow \max(w, 0)`."""

    def __init__(self, *, mask: Any = None):
        _pytree.set_fields(self, mask=None if mask is None else as_mask(mask))

    def _project_leaf(self, path: Any, x: jax.Array) -> jax.Array:
        del path
        return jnp.maximum(x, 0)


def max_norm(max_value: ArrayLike, *, axis: int = 0, mask: Any = None) -> MaxNorm:
    """Max-norm constraint: each vector along ``axis`` has L2 norm at most ``max_value``.

    Args:
      max_value: the bound, > 0.
      axis: the axis the norm is taken along (``0``: per output unit of a Dense kernel).
      mask: which leaves to constrain (e.g. ``jr.masks.kernels``); default every leaf.

    Returns:
      A :class:`MaxNorm` projection.

    Raises:
      ValueError: if ``max_value`` is not > 0, or ``axis`` does not exist for a masked leaf.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.max_norm(1.0)(jnp.array([[3.0, 0.1], [4.0, 0.1]]))
      Array([[0.6, 0.1],
             [0.8, 0.1]], dtype=float32)
    """
    return MaxNorm(max_value, axis=axis, mask=mask)


def unit_norm(*, axis: int = 0, mask: Any = None) -> UnitNorm:
    """Unit-norm constraint along ``axis`` (a zero vector stays zero).

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.unit_norm()(jnp.array([[3.0], [4.0]]))
      Array([[0.6],
             [0.8]], dtype=float32)
    """
    return UnitNorm(axis=axis, mask=mask)


def non_negative(*, mask: Any = None) -> NonNegative:
    """Non-negativity constraint.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.non_negative()(jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    return NonNegative(mask=mask)
