"""Penalties on parameter pytrees: ``l2``, ``l1``, ``elastic_net``, ``tie``, ``group_lasso``.

A penalty is a pure function ``tree -> scalar`` with a closed-form proximal operator
``prox(tree, step) = argmin_u  ||u - tree||^2 / (2 step) + penalty(u)``. It is itself a pytree
whose numeric hyperparameters are leaves: pass it into a jitted function and a new scale does
not recompile; ``jax.vmap`` over scales gives a whole sweep. Masks, axes and selectors are
static. Only floating-point leaves are ever penalized; others pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxreg import _checks, _pytree
from jaxreg._tree import as_mask, key_path_str, resolve_mask

PyTree = Any

__all__ = [
    "ElasticNet",
    "GroupLasso",
    "L1",
    "L2",
    "Penalty",
    "Scaled",
    "Sum",
    "Tie",
    "elastic_net",
    "group_lasso",
    "l1",
    "l2",
    "tie",
]


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _selected(tree: PyTree, mask: Any) -> list[bool]:
    m = resolve_mask(mask, tree)
    return [keep and _is_float(x) for x, keep in zip(jax.tree.leaves(tree), jax.tree.leaves(m))]


def _total(terms: list[jax.Array]) -> jax.Array:
    if not terms:
        return jnp.zeros([], jnp.float32)
    return sum(terms[1:], terms[0])


def _step_leaves(step: Any, tree: PyTree, where: str) -> list[Any]:
    """A scalar step for every leaf, or a per-coordinate step pytree shaped like ``tree``."""
    leaves = jax.tree.leaves(tree)
    if (
        jax.tree.structure(step) == jax.tree.structure(tree)
        and len(leaves) > 0
        and not (jax.tree_util.treedef_is_leaf(jax.tree.structure(tree)))
    ):
        return jax.tree.leaves(step)
    if not jax.tree_util.treedef_is_leaf(jax.tree.structure(step)):
        raise ValueError(
            f"{where}: step must be a scalar or a pytree shaped like the params, got a step with "
            f"structure {jax.tree.structure(step)} for params {jax.tree.structure(tree)}."
        )
    return [step] * len(leaves)


def _check_steps_scalar(step: Any, where: str) -> None:
    if not jax.tree_util.treedef_is_leaf(jax.tree.structure(step)) or jnp.ndim(step) != 0:
        raise ValueError(
            f"{where}: this proximal operator has a closed form for a scalar step only, got a step "
            f"of structure {jax.tree.structure(step)}."
        )


def _asarray(x: ArrayLike) -> jax.Array:
    """A hyperparameter as a strongly typed float array (default float dtype), tracers as they are.

    Python floats and float32 arrays then give the same jit cache key: no retrace between them.
    """
    if isinstance(x, jax.core.Tracer):
        return x
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    return jnp.asarray(x, dtype=dtype)


class Penalty:
    """Base class of penalties: ``tree -> scalar``, ``prox``, ``+`` and scalar ``*``.

    Subclasses implement ``__call__`` and ``prox``. ``penalty_a + penalty_b`` is a
    :class:`Sum`; ``c * penalty`` is a :class:`Scaled` penalty whose prox is exact
    (``prox_{c p}(v, t) = prox_p(v, c t)``).
    """

    def __call__(self, tree: PyTree) -> jax.Array:
        raise NotImplementedError

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        """``argmin_u ||u - tree||^2 / (2 step) + self(u)``, leaf by leaf where it separates."""
        raise NotImplementedError

    def __add__(self, other: Penalty) -> Sum:
        if not isinstance(other, Penalty):
            return NotImplemented
        left = self.terms if isinstance(self, Sum) else (self,)
        right = other.terms if isinstance(other, Sum) else (other,)
        return Sum(left + right)

    def __mul__(self, factor: ArrayLike) -> Scaled:
        if isinstance(factor, Penalty):
            return NotImplemented
        return Scaled(factor, self)

    __rmul__ = __mul__


@_pytree.register(data=("scale", "center"), meta=("mask",))
class L2(Penalty):
    r"""Squared L2 norm (weight decay), optionally centred on reference params.

    .. math::
      \Omega(w) = \lambda \sum_i m_i (w_i - c_i)^2,
      \qquad \mathrm{prox}_{t\Omega}(v) = \frac{v + 2 t \lambda c}{1 + 2 t \lambda}

    There is no factor 1/2: the gradient is :math:`2 \lambda (w - c)`, so
    ``add_penalty_grad(l2(wd / 2))`` equals ``optax.add_decayed_weights(wd)``.
    """

    def __init__(self, scale: ArrayLike, *, mask: Any = None, center: PyTree | None = None):
        _checks.check_nonnegative("scale", scale, "l2")
        _pytree.set_fields(self, scale=_asarray(scale), center=center, mask=None if mask is None else as_mask(mask))

    def _centers(self, tree: PyTree) -> list[Any]:
        leaves = jax.tree.leaves(tree)
        if self.center is None:
            return [None] * len(leaves)
        if jax.tree.structure(self.center) != jax.tree.structure(tree):
            raise ValueError(
                "l2: center must have the structure of the params, got center = "
                f"{jax.tree.structure(self.center)} for params {jax.tree.structure(tree)}."
            )
        centers = jax.tree.leaves(self.center)
        for (path, x), c in zip(jax.tree_util.tree_flatten_with_path(tree)[0], centers):
            if jnp.shape(x) != jnp.shape(c):
                raise ValueError(
                    f"l2: center leaf {key_path_str(path)!r} has shape {jnp.shape(c)}, "
                    f"params leaf has shape {jnp.shape(x)}."
                )
        return centers

    def __call__(self, tree: PyTree) -> jax.Array:
        keep, centers = _selected(tree, self.mask), self._centers(tree)
        terms = [
            jnp.sum(jnp.square(x if c is None else x - c)) for x, c, k in zip(jax.tree.leaves(tree), centers, keep) if k
        ]
        return self.scale * _total(terms)

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        leaves, treedef = jax.tree.flatten(tree)
        keep, centers = _selected(tree, self.mask), self._centers(tree)
        steps = _step_leaves(step, tree, "l2.prox")
        out = []
        for x, c, k, t in zip(leaves, centers, keep, steps):
            if not k:
                out.append(x)
                continue
            shrink = 1.0 + 2.0 * t * self.scale
            y = x / shrink if c is None else (x + 2.0 * t * self.scale * c) / shrink
            out.append(y.astype(x.dtype))
        return jax.tree.unflatten(treedef, out)

    def __repr__(self) -> str:
        return f"l2(scale={self.scale}, mask={self.mask}, center={'None' if self.center is None else '...'})"


def _soft_threshold(x: jax.Array, threshold: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0)


@_pytree.register(data=("scale",), meta=("mask",))
class L1(Penalty):
    r"""L1 norm (sparsity).

    .. math::
      \Omega(w) = \lambda \sum_i m_i |w_i|,
      \qquad \mathrm{prox}_{t\Omega}(v) = \mathrm{sign}(v) \max(|v| - t\lambda, 0)

    The proximal step (soft threshold) gives exact zeros; a subgradient step never does.
    """

    def __init__(self, scale: ArrayLike, *, mask: Any = None):
        _checks.check_nonnegative("scale", scale, "l1")
        _pytree.set_fields(self, scale=_asarray(scale), mask=None if mask is None else as_mask(mask))

    def __call__(self, tree: PyTree) -> jax.Array:
        keep = _selected(tree, self.mask)
        return self.scale * _total([jnp.sum(jnp.abs(x)) for x, k in zip(jax.tree.leaves(tree), keep) if k])

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        leaves, treedef = jax.tree.flatten(tree)
        keep, steps = _selected(tree, self.mask), _step_leaves(step, tree, "l1.prox")
        out = [_soft_threshold(x, t * self.scale).astype(x.dtype) if k else x for x, k, t in zip(leaves, keep, steps)]
        return jax.tree.unflatten(treedef, out)

    def __repr__(self) -> str:
        return f"l1(scale={self.scale}, mask={self.mask})"


@_pytree.register(data=("l1", "l2"), meta=("mask",))
class ElasticNet(Penalty):
    r"""L1 plus squared L2.

    .. math::
      \Omega(w) = \lambda_1 \sum_i m_i |w_i| + \lambda_2 \sum_i m_i w_i^2,
      \qquad \mathrm{prox}_{t\Omega}(v) = \frac{\mathrm{sign}(v)\max(|v| - t\lambda_1, 0)}{1 + 2t\lambda_2}
    """

    def __init__(self, l1: ArrayLike, l2: ArrayLike, *, mask: Any = None):
        _checks.check_nonnegative("l1", l1, "elastic_net")
        _checks.check_nonnegative("l2", l2, "elastic_net")
        _pytree.set_fields(self, l1=_asarray(l1), l2=_asarray(l2), mask=None if mask is None else as_mask(mask))

    def __call__(self, tree: PyTree) -> jax.Array:
        keep = _selected(tree, self.mask)
        leaves = [x for x, k in zip(jax.tree.leaves(tree), keep) if k]
        return self.l1 * _total([jnp.sum(jnp.abs(x)) for x in leaves]) + self.l2 * _total(
            [jnp.sum(jnp.square(x)) for x in leaves]
        )

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        leaves, treedef = jax.tree.flatten(tree)
        keep, steps = _selected(tree, self.mask), _step_leaves(step, tree, "elastic_net.prox")
        out = [
            (_soft_threshold(x, t * self.l1) / (1.0 + 2.0 * t * self.l2)).astype(x.dtype) if k else x
            for x, k, t in zip(leaves, keep, steps)
        ]
        return jax.tree.unflatten(treedef, out)

    def __repr__(self) -> str:
        return f"elastic_net(l1={self.l1}, l2={self.l2}, mask={self.mask})"


@_pytree.register(data=("scale",), meta=("where",))
class Tie(Penalty):
    r"""Soft parameter tying: squared distance between two parameter groups.

    .. math::
      \Omega(w) = \lambda \sum_i (a_i - b_i)^2, \quad (a, b) = \mathrm{where}(w)

    The prox pulls the pair toward its mean:
    :math:`a - b \leftarrow (a - b) / (1 + 4 t \lambda)` with :math:`a + b` unchanged, exact
    when ``a`` and ``b`` are disjoint parts of the params.
    """

    def __init__(self, scale: ArrayLike, where: Callable[[PyTree], tuple[PyTree, PyTree]]):
        _checks.check_nonnegative("scale", scale, "tie")
        if not callable(where):
            raise ValueError(f"tie: where must be a callable params -> (a, b), got where = {where!r}.")
        _pytree.set_fields(self, scale=_asarray(scale), where=where)

    def _pair(self, tree: PyTree) -> tuple[PyTree, PyTree]:
        pair = self.where(tree)
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"tie: where(params) must return a pair (a, b), got {type(pair).__name__}.")
        a, b = pair
        if jax.tree.structure(a) != jax.tree.structure(b):
            raise ValueError(
                f"tie: the tied groups differ in structure: a = {jax.tree.structure(a)}, b = {jax.tree.structure(b)}."
            )
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            if jnp.shape(x) != jnp.shape(y):
                raise ValueError(f"tie: the tied groups differ in shape: a has {jnp.shape(x)}, b has {jnp.shape(y)}.")
        return a, b

    def __call__(self, tree: PyTree) -> jax.Array:
        a, b = self._pair(tree)
        return self.scale * _total([jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))])

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        _check_steps_scalar(step, "tie.prox")
        a, b = self._pair(tree)
        removed = 1.0 - 1.0 / (1.0 + 4.0 * step * self.scale)
        half = jax.tree.map(lambda x, y: 0.5 * removed * (x - y), a, b)
        # ``where`` selects; its transpose scatters the change back into the params.
        _, scatter = jax.vjp(self.where, tree)
        (delta,) = scatter((jax.tree.map(jnp.negative, half), half))
        return jax.tree.map(lambda x, d: (x + d).astype(x.dtype), tree, delta)

    def __repr__(self) -> str:
        return f"tie(scale={self.scale}, where={getattr(self.where, '__name__', self.where)})"


@_pytree.register(data=("scale",), meta=("axis", "mask"))
class GroupLasso(Penalty):
    r"""Group lasso: the sum of the L2 norms of groups, which zeroes whole groups.

    For a leaf :math:`W`, group :math:`g` is the slice :math:`W_g` at index :math:`g` of
    ``axis`` (taken along all the other axes). With ``axis=0`` on a Dense kernel of shape
    ``(in, out)`` each group is the fan-out of one input unit.

    .. math::
      \Omega(W) = \lambda \sum_g \|W_g\|_2,
      \qquad \mathrm{prox}_{t\Omega}(V)_g = V_g \max\left(0, 1 - \frac{t\lambda}{\|V_g\|_2}\right)

    A 0-d leaf is a group of its own; a 1-d leaf with ``axis=0`` has one-element groups (L1).
    """

    def __init__(self, scale: ArrayLike, *, axis: int = 0, mask: Any = None):
        _checks.check_nonnegative("scale", scale, "group_lasso")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"group_lasso: axis must be an int, got axis = {axis!r}.")
        _pytree.set_fields(self, scale=_asarray(scale), axis=axis, mask=None if mask is None else as_mask(mask))

    def _other_axes(self, path: Any, x: Any) -> tuple[int, ...]:
        ndim = jnp.ndim(x)
        if ndim == 0:
            return ()
        if not -ndim <= self.axis < ndim:
            raise ValueError(
                f"group_lasso: axis = {self.axis} is out of range for leaf {key_path_str(path)!r} of shape "
                f"{jnp.shape(x)}; restrict the penalty with mask=jr.masks.kernels."
            )
        axis = self.axis % ndim
        return tuple(i for i in range(ndim) if i != axis)

    def _norms(self, path: Any, x: jax.Array) -> jax.Array:
        sq = jnp.sum(jnp.square(x), axis=self._other_axes(path, x), keepdims=True)
        positive = sq > 0
        # Double where: the norm's gradient at a zero group is 0 (a subgradient), not NaN.
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)

    def __call__(self, tree: PyTree) -> jax.Array:
        keep = _selected(tree, self.mask)
        paths = jax.tree_util.tree_flatten_with_path(tree)[0]
        return self.scale * _total([jnp.sum(self._norms(p, x)) for (p, x), k in zip(paths, keep) if k])

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        _check_steps_scalar(step, "group_lasso.prox")
        keep = _selected(tree, self.mask)
        paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        out = []
        for (p, x), k in zip(paths, keep):
            if not k:
                out.append(x)
                continue
            norm = self._norms(p, x)
            factor = jnp.where(
                norm > 0, jnp.maximum(0.0, 1.0 - step * self.scale / jnp.where(norm > 0, norm, 1.0)), 0.0
            )
            out.append((x * factor).astype(x.dtype))
        return jax.tree.unflatten(treedef, out)

    def __repr__(self) -> str:
        return f"group_lasso(scale={self.scale}, axis={self.axis}, mask={self.mask})"


@_pytree.register(data=("terms",))
class Sum(Penalty):
    r"""The sum of penalties.

    The prox applies the terms' proxes in sequence, non-quadratic terms first and uncentred
    L2 terms last. That is exact when the terms act on disjoint leaves, and for L1 followed by
    an uncentred L2 on the same leaves (the elastic net); otherwise it is the usual
    one-pass splitting approximation.
    """

    def __init__(self, terms: tuple[Penalty, ...]):
        for t in terms:
            if not isinstance(t, Penalty):
                raise ValueError(f"Sum: every term must be a Penalty, got {type(t).__name__}.")
        _pytree.set_fields(self, terms=tuple(terms))

    def __call__(self, tree: PyTree) -> jax.Array:
        return _total([t(tree) for t in self.terms])

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        def last(t: Penalty) -> bool:
            return isinstance(t, L2) and t.center is None

        for t in sorted(self.terms, key=last):
            tree = t.prox(tree, step)
        return tree

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


@_pytree.register(data=("factor", "penalty"))
class Scaled(Penalty):
    r"""``factor * penalty``; its prox is exact: :math:`\mathrm{prox}_{t c \Omega} = \mathrm{prox}_{(c t) \Omega}`."""

    def __init__(self, factor: ArrayLike, penalty: Penalty):
        _checks.check_nonnegative("factor", factor, "Scaled")
        _pytree.set_fields(self, factor=_asarray(factor), penalty=penalty)

    def __call__(self, tree: PyTree) -> jax.Array:
        return self.factor * self.penalty(tree)

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        return self.penalty.prox(tree, jax.tree.map(lambda t: self.factor * t, step))

    def __repr__(self) -> str:
        return f"{self.factor} * ({self.penalty!r})"


def l2(scale: ArrayLike, *, mask: Any = None, center: PyTree | None = None) -> L2:
    """Squared L2 penalty ``scale * sum(mask * (w - center)**2)`` (no 1/2).

    Args:
      scale: non-negative strength; an array leaf (a sweep is a ``vmap``).
      mask: which leaves to penalize: a pytree of bools, a callable, or a :class:`jaxreg.masks.Mask`.
      center: optional params-shaped pytree to pull toward (L2-SP, a prior at pre-trained weights).

    Returns:
      An :class:`L2` penalty.

    Raises:
      ValueError: if a concrete ``scale`` is negative or not finite.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> float(jr.l2(0.5)({"w": jnp.array([1.0, 2.0])}))
      2.5
    """
    return L2(scale, mask=mask, center=center)


def l1(scale: ArrayLike, *, mask: Any = None) -> L1:
    """L1 penalty ``scale * sum(mask * |w|)``; its prox is the soft threshold.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.l1(1.0).prox(jnp.array([-3.0, 0.5, 2.0]), 1.0)
      Array([-2.,  0.,  1.], dtype=float32)
    """
    return L1(scale, mask=mask)


def elastic_net(l1: ArrayLike, l2: ArrayLike, *, mask: Any = None) -> ElasticNet:
    """Elastic net ``l1 * sum(|w|) + l2 * sum(w**2)`` on the masked leaves.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> float(jr.elastic_net(1.0, 0.5)(jnp.array([-2.0, 1.0])))
      5.5
    """
    return ElasticNet(l1, l2, mask=mask)


def tie(scale: ArrayLike, where: Callable[[PyTree], tuple[PyTree, PyTree]]) -> Tie:
    """Soft tying ``scale * sum((a - b)**2)`` with ``(a, b) = where(params)``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> params = {"task_a": jnp.array([1.0, 2.0]), "task_b": jnp.array([0.0, 0.0])}
      >>> float(jr.tie(0.5, lambda p: (p["task_a"], p["task_b"]))(params))
      2.5
    """
    return Tie(scale, where)


def group_lasso(scale: ArrayLike, *, axis: int = 0, mask: Any = None) -> GroupLasso:
    """Group lasso: ``scale`` times the sum of the L2 norms of the slices along ``axis``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> w = jnp.array([[3.0, 4.0], [0.0, 1.0]])
      >>> float(jr.group_lasso(1.0)(w))   # rows: 5 + 1
      6.0
    """
    return GroupLasso(scale, axis=axis, mask=mask)
