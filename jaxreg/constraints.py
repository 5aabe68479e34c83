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

from jaxreg import _checks
from jaxreg._tree import abs2, compute_dtype, leaf_name, optional_mask, pytree_dataclass, selection

PyTree = Any
Axis = int | tuple[int, ...]

__all__ = ["Constraint", "MaxNorm", "NonNegative", "UnitNorm", "max_norm", "non_negative", "unit_norm"]


class Constraint:
    """Base class: a projection applied leaf by leaf to the masked floating-point leaves.

    Each leaf is projected in float32 at least (a half-precision kernel's norms cannot
    overflow) and returned in its own dtype; integer leaves and ``None`` subtrees pass through.
    """

    mask: Any = None
    _name = "constraint"  # the factory's name, for error messages

    def _project_leaf(self, path: Any, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __call__(self, params: PyTree) -> PyTree:
        def one(path: Any, keep: bool, x: Any) -> Any:
            if not keep:
                return x
            x = jnp.asarray(x)  # a Python number leaf, as penalties accept
            return self._project_leaf(path, x.astype(compute_dtype(x.dtype))).astype(x.dtype)

        return jax.tree_util.tree_map_with_path(one, selection(self.mask, params, self._name), params)


def _norm_over(where: str, axis: Axis, path: Any, x: jax.Array) -> jax.Array:
    """The L2 norm over ``axis`` (an int or a tuple of ints), kept as size-1 dims."""
    ndim = jnp.ndim(x)
    axes = axis if isinstance(axis, tuple) else (axis,)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{where}: axis = {axis} is out of range for leaf {leaf_name(path)!r} of shape {jnp.shape(x)}; "
                "restrict the constraint with mask=jr.masks.kernels."
            )
    if len({a % ndim for a in axes}) != len(axes):  # (0, -2) on a 2-d leaf names axis 0 twice
        raise ValueError(
            f"{where}: axis = {axis} names an axis twice for leaf {leaf_name(path)!r} of shape {jnp.shape(x)}."
        )
    sq = jnp.sum(abs2(x), axis=axes, keepdims=True)  # |x|^2: a complex leaf's norm is real
    zero = sq == 0  # not sq > 0: a NaN group's norm stays NaN
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def _check_axis(where: str, axis: Any) -> Axis:
    def is_int(a: Any) -> bool:
        return isinstance(a, int) and not isinstance(a, bool)

    if is_int(axis):
        return axis
    if isinstance(axis, (tuple, list)) and len(axis) > 0 and all(is_int(a) for a in axis):
        if len(set(axis)) != len(axis):
            raise ValueError(f"{where}: axis must not repeat an axis, got axis = {axis!r}.")
        return tuple(axis)
    raise ValueError(f"{where}: axis must be an int or a non-empty tuple of ints, got axis = {axis!r}.")


@pytree_dataclass(data=["max_value"], meta=["axis", "mask"])
class MaxNorm(Constraint):
    r"""Rescales each weight vector whose L2 norm over ``axis`` exceeds ``max_value``.

    .. math:: w \leftarrow w \cdot \min\left(1, \frac{c}{\|w\|_{2,\text{axis}}}\right)

    As in Keras (``MaxNorm(axis=...)``), ``axis`` names the axes the norm runs over: on a Dense
    kernel ``(in, out)`` with ``axis=0`` each output unit's incoming weight vector is bounded
    (Srivastava et al. 2014); on a conv kernel ``(h, w, in, out)`` use ``axis=(0, 1, 2)``.
    """

    max_value: jax.Array
    axis: Axis = 0
    mask: Any = None
    _name = "max_norm"

    def _project_leaf(self, path: Any, x: jax.Array) -> jax.Array:
        norm = _norm_over("max_norm", self.axis, path, x)
        bound = jnp.asarray(self.max_value).astype(norm.dtype)  # real: a complex leaf's norm is
        # one bound, or one per vector (broadcasting against the kept-dims norms)
        if not _checks.broadcasts_to(bound.shape, norm.shape):
            raise ValueError(
                f"max_norm: max_value of shape {bound.shape} does not broadcast against the norms "
                f"{norm.shape} of leaf {leaf_name(path)!r} of shape {jnp.shape(x)} (axis = {self.axis})."
            )
        bound = jnp.broadcast_to(bound, norm.shape)  # explicit: no implicit rank promotion
        return x * jnp.where(norm > bound, bound / jnp.where(norm > 0, norm, 1.0), 1.0).astype(x.dtype)


@pytree_dataclass(data=[], meta=["axis", "mask"])
class UnitNorm(Constraint):
    r"""Scales each weight vector over ``axis`` to unit L2 norm; a zero vector stays zero.

    .. math:: w \leftarrow w / \|w\|_{2,\text{axis}}
    """

    axis: Axis = 0
    mask: Any = None
    _name = "unit_norm"

    def _project_leaf(self, path: Any, x: jax.Array) -> jax.Array:
        norm = _norm_over("unit_norm", self.axis, path, x)
        return x / jnp.where(norm > 0, norm, 1.0).astype(x.dtype)


@pytree_dataclass(data=[], meta=["mask"])
class NonNegative(Constraint):
    r"""Clips to the non-negative orthant: :math:`w \leftarrow \max(w, 0)`."""

    mask: Any = None
    _name = "non_negative"

    def _project_leaf(self, path: Any, x: jax.Array) -> jax.Array:
        del path
        return jnp.maximum(x, 0)


def max_norm(max_value: ArrayLike, *, axis: Axis = 0, mask: Any = None) -> MaxNorm:
    r"""Max-norm constraint: each vector over ``axis`` has L2 norm at most ``max_value``.

    .. math:: w_v \leftarrow w_v \min\!\Big(1, \frac{c}{\lVert w_v \rVert_2}\Big)

    for each vector :math:`w_v` over ``axis`` (the Euclidean projection onto the ball of radius
    :math:`c`).

    Args:
      max_value: the bound, > 0; an array leaf (a sweep over bounds is a ``vmap``).
      axis: the axis, or tuple of axes, the norm runs over (keras's ``MaxNorm(axis=...)``):
        ``0`` bounds each output unit of a Dense kernel ``(in, out)``; ``(0, 1, 2)`` each output
        channel of a conv kernel ``(h, w, in, out)``. ``group_lasso``'s ``axis`` means the
        opposite (the axis that indexes the groups).
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
    _checks.check_positive("max_value", max_value, "max_norm")
    return MaxNorm(
        _checks.as_float_array(max_value, "max_value", "max_norm"),
        axis=_check_axis("max_norm", axis),
        mask=optional_mask(mask, "max_norm"),
    )


def unit_norm(*, axis: Axis = 0, mask: Any = None) -> UnitNorm:
    r"""Unit-norm constraint: each vector over ``axis`` is scaled to L2 norm 1.

    .. math:: w_v \leftarrow \frac{w_v}{\lVert w_v \rVert_2} \quad (w_v \ne 0; \text{ a zero vector stays zero})

    Args:
      axis: the axis, or tuple of axes, the norm runs over, as in :func:`max_norm`.
      mask: which leaves to constrain (e.g. ``jr.masks.kernels``); default every leaf.

    Returns:
      A :class:`UnitNorm` projection.

    Raises:
      ValueError: if ``axis`` is not an int or a tuple of distinct ints, or does not exist for a
        masked leaf.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.unit_norm()(jnp.array([[3.0], [4.0]]))
      Array([[0.6],
             [0.8]], dtype=float32)
    """
    return UnitNorm(axis=_check_axis("unit_norm", axis), mask=optional_mask(mask, "unit_norm"))


def non_negative(*, mask: Any = None) -> NonNegative:
    r"""Non-negativity constraint: the projection onto :math:`w \ge 0`, :math:`w \leftarrow \max(w, 0)`.

    Args:
      mask: which leaves to constrain; default every leaf.

    Returns:
      A :class:`NonNegative` projection.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.non_negative()(jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    return NonNegative(mask=optional_mask(mask, "non_negative"))
