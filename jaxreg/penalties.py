"""Penalties on parameter pytrees: ``l2``, ``l1``, ``elastic_net``, ``tie``, ``group_lasso``.

A penalty is a pure function ``tree -> scalar`` with a closed-form proximal operator
``prox(tree, step) = argmin_u  ||u - tree||^2 / (2 step) + penalty(u)``. It is itself a pytree
whose numeric hyperparameters are leaves: pass it into a jitted function and a new scale does
not recompile; ``jax.vmap`` over scales gives a whole sweep. Masks, axes and selectors are
static. Only floating-point leaves are ever penalized; others pass through unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxreg import _checks
from jaxreg._tree import (
    abs2,
    compute_dtype,
    default_float,
    leaf_name,
    optional_mask,
    pytree_dataclass,
    scaled_total,
    selection,
    total,
    wider_dtype,
)

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


def _acc(x: jax.Array) -> jax.Array:
    """``x`` in the dtype penalties compute in: float32 at least, so half precision cannot overflow."""
    return jnp.asarray(x).astype(compute_dtype(jnp.result_type(x)))  # a Python float leaf too


def _as(value: Any, x: jax.Array) -> jax.Array:
    """A hyperparameter or step cast to the compute dtype of leaf ``x`` (explicit: strict promotion)."""
    return jnp.asarray(value).astype(compute_dtype(jnp.result_type(x)))


def _map_selected(fn: Callable[..., jax.Array], tree: PyTree, mask: Any, *rest: PyTree, where: str = "") -> PyTree:
    """``fn(x, *r)`` on the selected floating-point leaves (in their own dtype), others unchanged."""

    def one(keep: bool, x: Any, *r: Any) -> Any:
        return fn(x, *r).astype(jnp.result_type(x)) if keep else x

    return jax.tree.map(one, selection(mask, tree, where), tree, *rest)


def _selected_terms(fn: Callable[[jax.Array], jax.Array], tree: PyTree, mask: Any, where: str = "") -> list[jax.Array]:
    keep = jax.tree.leaves(selection(mask, tree, where))
    return [fn(_acc(x)) for x, k in zip(jax.tree.leaves(tree), keep) if k]


_STEPS_FROM_CALLER = contextvars.ContextVar("jaxreg_prox_steps_from_caller", default=False)


@contextlib.contextmanager
def steps_from_caller() -> Iterator[None]:
    """Inside, a prox does not check its step: the caller computed it from values it checked
    (``proximal_adam``'s per-coordinate steps are NaN exactly where the gradient is, and a NaN
    gradient passes through as NaN updates, as in optax, not as an error about a step)."""
    token = _STEPS_FROM_CALLER.set(True)
    try:
        yield
    finally:
        _STEPS_FROM_CALLER.reset(token)


def _check_step_values(step: Any, where: str) -> None:
    """A prox's step is a length: each concrete value ``>= 0`` (not NaN).

    ``inf`` is allowed (the prox is then the penalty's minimizer, as for Adam's step at an
    untouched coordinate with ``eps=0``); traced steps are checked under :func:`jaxreg.traced_checks`.
    """
    if _STEPS_FROM_CALLER.get():
        return
    message = f"{where}: step must be >= 0 (inf allowed, not NaN), got step ="
    for t in jax.tree.leaves(step):
        arr = _checks.concrete(t)
        if arr is None:
            if isinstance(t, jax.core.Tracer):
                _checks.traced_check(t >= 0, message, t)
        elif not _checks.is_real_numeric(arr) or np.any(~(arr >= 0)):  # complex too: its imaginary part was dropped
            raise ValueError(f"{message} {_checks.fmt(arr)}.")


def _steps_like(step: Any, tree: PyTree, where: str) -> PyTree:
    """A step for every leaf: a scalar (or array) broadcast to all leaves, or a params-shaped pytree."""
    _check_step_values(step, where)
    tree_def, step_def = jax.tree.structure(tree), jax.tree.structure(step)
    if not jax.tree_util.treedef_is_leaf(step_def) and step_def == tree_def:
        steps = step
    elif jax.tree_util.treedef_is_leaf(step_def) and step is not None:
        steps = jax.tree.map(lambda _: step, tree)
    else:
        steps = None
    if steps is not None:
        # Each step must broadcast to its leaf's shape (it failed in jax's broadcasting, unnamed).
        for (path, x), t in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(steps)):
            if not _checks.broadcasts_to(jnp.shape(t), jnp.shape(x)):
                raise ValueError(
                    f"{where}: step must broadcast to each leaf's shape, got a step of shape {jnp.shape(t)} for "
                    f"leaf {leaf_name(path)!r} of shape {jnp.shape(x)}."
                )
        return steps
    raise ValueError(
        f"{where}: step must be a scalar or a pytree shaped like the params, got a step with "
        f"structure {step_def} for params {tree_def}."
    )


def _check_scalar_step(step: Any, where: str) -> None:
    _check_step_values(step, where)
    if not jax.tree_util.treedef_is_leaf(jax.tree.structure(step)) or jnp.ndim(step) != 0:
        raise ValueError(
            f"{where}: this proximal operator has a closed form for a scalar step only, got a step "
            f"of structure {jax.tree.structure(step)}."
        )


class Penalty:
    """Base class of penalties: ``tree -> scalar``, ``prox``, ``+`` and scalar ``*``.

    Subclasses are frozen dataclasses registered as pytrees (numeric hyperparameters are leaves)
    and implement ``__call__`` and ``prox``; build them with the factory functions
    (:func:`l2`, ...), which check their arguments. ``penalty_a + penalty_b`` is a
    :class:`Sum` (``sum(penalties)`` works too); ``c * penalty`` is a :class:`Scaled` penalty
    whose prox is exact (``prox_{c p}(v, t) = prox_p(v, c t)``). Values are reduced in float32 at
    least (half precision leaves do not overflow) and returned in that dtype; ``prox`` returns
    each leaf in its own dtype. Only floating-point leaves are penalized; integer leaves and
    ``None`` subtrees pass through. A subclass without a closed-form prox sets
    ``has_prox = False`` (its ``prox`` raises ``NotImplementedError``).
    """

    has_prox: ClassVar[bool] = True

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

    def __radd__(self, other: Any) -> Penalty:
        # ``sum(penalties)`` starts from the integer 0
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented

    def __mul__(self, factor: ArrayLike) -> Scaled:
        if isinstance(factor, Penalty):
            return NotImplemented
        _checks.check_nonnegative("factor", factor, "Scaled")
        return Scaled(_checks.as_float_array(factor, "factor", "Scaled"), self)

    __rmul__ = __mul__


@pytree_dataclass(data=["scale", "center"], meta=["mask"])
class L2(Penalty):
    r"""Squared L2 norm (weight decay), optionally centred on reference params.

    .. math::
      \Omega(w) = \lambda \sum_i m_i (w_i - c_i)^2,
      \qquad \mathrm{prox}_{t\Omega}(v) = \frac{v + 2 t \lambda c}{1 + 2 t \lambda}

    There is no factor 1/2: the gradient is :math:`2 \lambda (w - c)`, so
    ``add_penalty_grad(l2(wd / 2))`` equals ``optax.add_decayed_weights(wd)``.
    """

    scale: jax.Array
    center: PyTree | None = None
    mask: Any = None

    def _centers(self, tree: PyTree) -> PyTree:
        if self.center is None:
            return jax.tree.map(lambda _: None, tree)
        if jax.tree.structure(self.center) != jax.tree.structure(tree):
            raise ValueError(
                "l2: center must have the structure of the params, got center = "
                f"{jax.tree.structure(self.center)} for params {jax.tree.structure(tree)}."
            )
        for (path, x), c in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(self.center)):
            if jnp.shape(x) != jnp.shape(c):
                raise ValueError(
                    f"l2: center leaf {leaf_name(path)!r} has shape {jnp.shape(c)}, "
                    f"params leaf has shape {jnp.shape(x)}."
                )
        return self.center

    def _diffs(self, tree: PyTree) -> PyTree:
        centers = self._centers(tree)
        if self.center is None:
            return tree
        return jax.tree.map(lambda x, c: _acc(x) - _as(c, x) if _is_float_leaf(x) else x, tree, centers)

    def __call__(self, tree: PyTree) -> jax.Array:
        _checks.check_applied("l2", scale=self.scale)
        diffs = self._diffs(tree)
        keep = jax.tree.leaves(selection(self.mask, tree, "l2"))
        terms = [jnp.sum(abs2(_acc(d))) for d, k in zip(jax.tree.leaves(diffs), keep) if k]
        return scaled_total(self.scale, terms)

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        _checks.check_applied("l2", scale=self.scale)
        steps = _steps_like(step, tree, "l2.prox")
        if self.center is None:
            return _map_selected(
                lambda x, t: _acc(x) / (1.0 + 2.0 * _times(_as(t, x), _as(self.scale, x))),
                tree,
                self.mask,
                steps,
                where="l2",
            )

        def one(x: jax.Array, t: Any, c: jax.Array) -> jax.Array:
            rate = 2.0 * _times(_as(t, x), _as(self.scale, x))
            # an infinite step lands on the center (the minimizer): inf / inf is NaN
            safe = jnp.where(jnp.isinf(rate), 0.0, rate)
            return jnp.where(jnp.isinf(rate), _as(c, x), (_acc(x) + safe * _as(c, x)) / (1.0 + safe))

        return _map_selected(one, tree, self.mask, steps, self._centers(tree), where="l2")


def _is_float_leaf(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _times(step: ArrayLike, scale: ArrayLike) -> jax.Array:
    """``step * scale``, 0 for an infinite step of a zero scale (``inf * 0`` is NaN; a zero
    penalty's prox is the identity at any step). Finite steps take the product itself, so its
    gradient in the scale is kept. Also the product of two factors (finite: they are checked).
    Computed in the wider of the two dtypes (explicit: a half-precision step under strict
    promotion)."""
    step, scale = jnp.asarray(step), jnp.asarray(scale)
    dtype = wider_dtype(step, scale)
    step, scale = step.astype(dtype), scale.astype(dtype)
    return jnp.where(jnp.isinf(step) & (scale == 0), jnp.zeros_like(step), step * scale)


@jax.custom_jvp
def _abs(x: jax.Array) -> jax.Array:
    """``|x|`` whose derivative is ``sign(x)``: 0 at 0, the subgradient keras (``tf.abs``) and torch use.

    ``jnp.abs``'s derivative at 0 is 1, so a gradient step on an L1 term would move weights that
    are exactly zero (pruned, or zeroed by a prox) off zero.
    """
    return jnp.abs(x)


@_abs.defjvp
def _abs_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    if jnp.iscomplexobj(x):  # d|x| = re(conj(x / |x|) dx), 0 at 0
        return jnp.abs(x), jnp.real(jnp.conj(jnp.sign(x)) * t)
    return jnp.abs(x), jnp.sign(x) * t


def _soft_threshold(x: jax.Array, threshold: jax.Array) -> jax.Array:
    # sign(x) max(|x| - t, 0); at t = 0 (a step or scale of 0) written x - t sign(x), the identity
    # to jax's derivatives too (sign(x) max(...) had Jacobian 0 at x = 0, cutting meta-gradients),
    # with the same derivative in t.
    shrunk = jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0)
    identity = jnp.where(x == 0, x, x - threshold * jnp.sign(x))  # x == 0: keeps -0.0 as it was
    return jnp.where(threshold == 0, identity, shrunk)


@pytree_dataclass(data=["scale"], meta=["mask"])
class L1(Penalty):
    r"""L1 norm (sparsity).

    .. math::
      \Omega(w) = \lambda \sum_i m_i |w_i|,
      \qquad \mathrm{prox}_{t\Omega}(v) = \mathrm{sign}(v) \max(|v| - t\lambda, 0)

    The proximal step (soft threshold) gives exact zeros; a subgradient step never does. The
    gradient is the subgradient :math:`\lambda m_i \mathrm{sign}(w_i)`, 0 at :math:`w_i = 0` (as keras's
    and torch's ``abs``), so weights that are exactly zero stay there under a gradient step.
    """

    scale: jax.Array
    mask: Any = None

    def __call__(self, tree: PyTree) -> jax.Array:
        _checks.check_applied("l1", scale=self.scale)
        return scaled_total(self.scale, _selected_terms(lambda x: jnp.sum(_abs(x)), tree, self.mask, "l1"))

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        _checks.check_applied("l1", scale=self.scale)
        steps = _steps_like(step, tree, "l1.prox")
        return _map_selected(
            lambda x, t: _soft_threshold(_acc(x), _times(_as(t, x), _as(self.scale, x))),
            tree,
            self.mask,
            steps,
            where="l1",
        )


@pytree_dataclass(data=["l1", "l2"], meta=["mask"])
class ElasticNet(Penalty):
    r"""L1 plus squared L2.

    .. math::
      \Omega(w) = \lambda_1 \sum_i m_i |w_i| + \lambda_2 \sum_i m_i w_i^2,
      \qquad \mathrm{prox}_{t\Omega}(v) = \frac{\mathrm{sign}(v)\max(|v| - t\lambda_1, 0)}{1 + 2t\lambda_2}

    The L1 term's gradient is :math:`\lambda_1 m_i \mathrm{sign}(w_i)`, 0 at :math:`w_i = 0`, as :class:`L1`'s.
    """

    l1: jax.Array
    l2: jax.Array
    mask: Any = None

    def __call__(self, tree: PyTree) -> jax.Array:
        _checks.check_applied("elastic_net", l1=self.l1, l2=self.l2)
        absolute = scaled_total(self.l1, _selected_terms(lambda x: jnp.sum(_abs(x)), tree, self.mask, "elastic_net"))
        squared = scaled_total(self.l2, _selected_terms(lambda x: jnp.sum(abs2(x)), tree, self.mask, "elastic_net"))
        return absolute + squared.astype(absolute.dtype)

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        _checks.check_applied("elastic_net", l1=self.l1, l2=self.l2)
        steps = _steps_like(step, tree, "elastic_net.prox")

        def one(x: jax.Array, t: Any) -> jax.Array:
            t = _as(t, x)
            return _soft_threshold(_acc(x), _times(t, _as(self.l1, x))) / (1.0 + 2.0 * _times(t, _as(self.l2, x)))

        return _map_selected(one, tree, self.mask, steps, where="elastic_net")


# Primitives that only move data: a ``where`` built from them selects (each output element is
# one element of the params), so the transpose of its linearization scatters back exactly.
_SELECTION_PRIMITIVES = frozenset(
    {"slice", "dynamic_slice", "gather", "squeeze", "reshape", "expand_dims", "transpose", "rev", "copy", "copy_p"}
)


def _computes(jaxpr: Any, depends: list[bool] | None = None) -> list[str]:
    """Names of the primitives in ``jaxpr`` (recursively) that compute on the params.

    ``depends[i]`` says whether input ``i`` carries params (all of them by default). Work on
    constants alone (the sign normalization of an index array, ``p["w"][jnp.array([0, 2])]``)
    is not computing on the params; only a primitive with a params-carrying input must select.
    """
    from jax.extend.core import Literal, jaxprs_in_params

    carries = set()
    for v, d in zip(jaxpr.invars, [True] * len(jaxpr.invars) if depends is None else depends):
        if d:
            carries.add(v)
    found = []
    for eqn in jaxpr.eqns:
        inputs = [not isinstance(v, Literal) and v in carries for v in eqn.invars]
        if not any(inputs):
            continue
        carries.update(eqn.outvars)
        inner = list(jaxprs_in_params(eqn.params))
        if inner:
            for j in inner:
                j = getattr(j, "jaxpr", j)
                # Call-like primitives (pjit, closed_call) pass their inputs through one to one;
                # for any other (cond, scan, ...) every inner input is taken to carry params.
                exact = len(j.invars) == len(inputs) and len(inner) == 1
                found += _computes(j, inputs if exact else None)
        elif eqn.primitive.name not in _SELECTION_PRIMITIVES:
            found.append(eqn.primitive.name)
    return found


@pytree_dataclass(data=["scale"], meta=["where"])
class Tie(Penalty):
    r"""Soft parameter tying: squared distance between two parameter groups.

    .. math::
      \Omega(w) = \lambda \sum_i (a_i - b_i)^2, \quad (a, b) = \mathrm{where}(w)

    ``where`` must select: return two parts of the params with the same structure and shapes,
    picked by key, index, slice or index array (``p["k"][0]``, ``p["k"][jnp.array([0, 2])]``),
    never computed (``2 * p["a"]`` is refused
    with a ``ValueError``: the prox below would be wrong for it). The prox pulls the pair
    toward its mean: :math:`a - b \leftarrow (a - b) / (1 + 4 t \lambda)` with :math:`a + b`
    unchanged, exact when ``a`` and ``b`` do not overlap. The pair is computed in the wider of
    its two dtypes (float32 at least) and each side returned in its own; a pair of integer
    leaves is not penalized (it passes through, as integer leaves do in every penalty), and a
    float leaf tied to an integer one is refused.
    """

    scale: jax.Array
    where: Callable[[PyTree], tuple[PyTree, PyTree]]

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
            if _is_float_leaf(x) != _is_float_leaf(y):  # it passed through unpenalized: a silent 0
                raise ValueError(
                    f"tie: a float leaf is tied to a non-float one: a has dtype {jnp.result_type(x)}, b has "
                    f"{jnp.result_type(y)}."
                )
        computed = _computes(jax.make_jaxpr(self.where)(tree).jaxpr)
        if computed:
            raise ValueError(
                f"tie: where must select parts of the params (keys, indices, slices), not compute new values; "
                f"it uses {sorted(set(computed))}."
            )
        return a, b

    def __call__(self, tree: PyTree) -> jax.Array:
        _checks.check_applied("tie", scale=self.scale)
        a, b = self._pair(tree)
        pairs = [_pair_acc(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if _is_float_pair(x, y)]
        terms = [jnp.sum(abs2(u - v)) for u, v in pairs]
        return scaled_total(self.scale, terms)

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        _checks.check_applied("tie", scale=self.scale)
        _check_scalar_step(step, "tie.prox")
        a, b = self._pair(tree)

        def half_change(x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
            """The changes of ``x`` and ``y`` (each in its own dtype; none for a non-float pair)."""
            if not _is_float_pair(x, y):
                return _no_change(x), _no_change(y)
            u, v = _pair_acc(x, y)
            removed = 1.0 - 1.0 / (1.0 + 4.0 * _times(_as(step, u), _as(self.scale, u)))
            half = 0.5 * removed * (u - v)
            return (-half).astype(jnp.result_type(x)), half.astype(jnp.result_type(y))

        changes = [half_change(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
        cotangent = (
            jax.tree.unflatten(jax.tree.structure(a), [c[0] for c in changes]),
            jax.tree.unflatten(jax.tree.structure(b), [c[1] for c in changes]),
        )
        # ``where`` selects; the transpose of its linearization scatters the change back.
        _, scatter = jax.vjp(self.where, tree)
        (delta,) = scatter(cotangent)
        return jax.tree.map(
            lambda x, d: (_acc(x) + _as(d, x)).astype(jnp.result_type(x)) if _is_float_leaf(x) else x, tree, delta
        )


def _pair_acc(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A tied pair in one compute dtype: the wider of the two leaves', float32 at least."""
    u, v = _acc(x), _acc(y)
    dtype = wider_dtype(u, v)
    return u.astype(dtype), v.astype(dtype)


def _is_float_pair(x: Any, y: Any) -> bool:
    """Whether a tied pair is penalized: both leaves floating (an integer leaf passes through)."""
    return _is_float_leaf(x) and _is_float_leaf(y)


def _no_change(x: Any) -> Any:
    """A zero cotangent for leaf ``x``: float0 for an integer or bool leaf, as ``jax.vjp`` wants."""
    if _is_float_leaf(x):
        return jnp.zeros(jnp.shape(x), jnp.result_type(x))
    return np.zeros(jnp.shape(x), jax.dtypes.float0)


def _check_axis(where: str, axis: Any) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"{where}: axis must be an int, got axis = {axis!r}.")
    return axis


@pytree_dataclass(data=["scale"], meta=["axis", "mask"])
class GroupLasso(Penalty):
    r"""Group lasso: the sum of the L2 norms of groups, which zeroes whole groups.

    For a leaf :math:`W`, group :math:`g` is the slice :math:`W_g` at index :math:`g` of
    ``axis`` (taken along all the other axes). With ``axis=0`` on a Dense kernel of shape
    ``(in, out)`` each group is the fan-out of one input unit.

    .. math::
      \Omega(W) = \lambda \sum_g \|W_g\|_2,
      \qquad \mathrm{prox}_{t\Omega}(V)_g = V_g \max\left(0, 1 - \frac{t\lambda}{\|V_g\|_2}\right)

    ``axis`` here indexes the groups: the norm runs over the *other* axes. That is the opposite
    of ``max_norm``'s and ``unit_norm``'s ``axis``, which names the axes the norm runs over: on a
    Dense kernel ``(in, out)``, ``group_lasso(axis=1)`` and ``max_norm(axis=0)`` both take one
    norm per output unit. A 0-d leaf is a group of its own; a 1-d leaf with ``axis=0`` has
    one-element groups (L1).
    """

    scale: jax.Array
    axis: int = 0
    mask: Any = None

    def _other_axes(self, path: Any, x: Any) -> tuple[int, ...]:
        ndim = jnp.ndim(x)
        if ndim == 0:
            return ()
        if not -ndim <= self.axis < ndim:
            raise ValueError(
                f"group_lasso: axis = {self.axis} is out of range for leaf {leaf_name(path)!r} of shape "
                f"{jnp.shape(x)}; restrict the penalty with mask=jr.masks.kernels."
            )
        axis = self.axis % ndim
        return tuple(i for i in range(ndim) if i != axis)

    def _norms(self, path: Any, x: jax.Array) -> jax.Array:
        sq = jnp.sum(abs2(_acc(x)), axis=self._other_axes(path, x), keepdims=True)
        zero = sq == 0  # not sq > 0: a NaN group stays NaN (l1 and l2 give NaN too)
        # Double where: the norm's gradient at a zero group is 0 (a subgradient), not NaN.
        return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))

    def __call__(self, tree: PyTree) -> jax.Array:
        _checks.check_applied("group_lasso", scale=self.scale)
        keep = jax.tree.leaves(selection(self.mask, tree, "group_lasso"))
        paths = jax.tree_util.tree_flatten_with_path(tree)[0]
        return scaled_total(self.scale, [jnp.sum(self._norms(p, x)) for (p, x), k in zip(paths, keep) if k])

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        _checks.check_applied("group_lasso", scale=self.scale)
        _check_scalar_step(step, "group_lasso.prox")

        def one(path: Any, keep: bool, x: Any) -> Any:
            if not keep:
                return x
            norm = self._norms(path, x)
            threshold = _times(_as(step, x), _as(self.scale, x))
            # a zero group stays zero; its factor 1 at threshold 0 keeps the identity's Jacobian there
            zero_group = jnp.where(threshold > 0, 0.0, 1.0)
            nonzero = norm != 0  # NaN too: its factor is NaN (jnp.maximum propagates it), not 0
            factor = jnp.where(nonzero, jnp.maximum(0.0, 1.0 - threshold / jnp.where(nonzero, norm, 1.0)), zero_group)
            return (_acc(x) * factor).astype(jnp.result_type(x))

        return jax.tree_util.tree_map_with_path(one, selection(self.mask, tree, "group_lasso"), tree)


@pytree_dataclass(data=["terms"], meta=[])
class Sum(Penalty):
    r"""The sum of penalties.

    The prox flattens the sum (nested sums, scalings distributed over them, an elastic net as its
    L1 and L2 parts), then applies the L1 terms' soft thresholds, the other terms' proxes in the
    order written, and one shrink by :math:`1 / (1 + 2t \sum_k c_k \lambda_k)` for all uncentred
    L2 terms together (sequential shrinks are not that product). The order of the terms does not
    matter, and the result is exact when the terms act on disjoint leaves, and on the same leaves
    for L1 + group lasso + uncentred L2 (the elastic net, the sparse group lasso: with
    :math:`\lambda_2` the summed L2 strength,
    :math:`\mathrm{prox}(v) = \mathrm{prox}_{t\,\mathrm{GL}}(\mathrm{soft}(v, t\lambda_1)) / (1 + 2t\lambda_2)`);
    otherwise (centred L2, tie, a group lasso after another non-L1 term) it is the usual one-pass
    splitting approximation.
    """

    terms: tuple[Penalty, ...]

    def __call__(self, tree: PyTree) -> jax.Array:
        return total([t(tree) for t in self.terms])

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        atoms = _atoms(self, None)

        def kind(atom: tuple[Any, Penalty]) -> int:
            p = atom[1]
            return 0 if isinstance(p, L1) else 2 if isinstance(p, L2) and p.center is None else 1

        for factor, p in sorted((a for a in atoms if kind(a) < 2), key=kind):  # stable: as written within a kind
            tree = (p if factor is None else Scaled(factor, p)).prox(tree, step)
        shrinks = [a for a in atoms if kind(a) == 2]
        if not shrinks:
            return tree
        # prox of sum_k c_k s_k |w|^2 over the leaves each selects: v / (1 + 2 t sum_k c_k s_k), i.e.
        # L2(1)'s prox with a step t * sum_k c_k s_k per leaf (0, the identity, where none selects)
        strength = jax.tree.map(lambda x: 0.0, tree)
        for factor, p in shrinks:
            scale = p.scale if factor is None else _times(factor, p.scale)
            keep = selection(p.mask, tree, "l2")
            strength = jax.tree.map(lambda total, k, scale=scale: total + scale if k else total, strength, keep)
        steps = _steps_like(step, tree, "l2.prox")
        return L2(jnp.ones([], default_float()), center=None, mask=None).prox(
            tree, jax.tree.map(_times, steps, strength)
        )


def without_prox(penalty: Penalty) -> list[str]:
    """The names of the terms of ``penalty`` that have no closed-form prox (``has_prox = False``)."""
    return sorted({type(p).__name__ for _, p in _atoms(penalty, None) if not p.has_prox})


def non_separable(penalty: Penalty) -> list[str]:
    """The names of the terms of ``penalty`` that couple coordinates (group lasso, tie): their
    prox has no closed form for a per-coordinate step."""
    return sorted({type(p).__name__ for _, p in _atoms(penalty, None) if isinstance(p, GroupLasso | Tie)})


def _atoms(penalty: Penalty, factor: Any) -> list[tuple[Any, Penalty]]:
    """``penalty`` as a flat list of ``(factor or None, term)``: sums flattened, scalings
    distributed over them, an elastic net split into its L1 and uncentred L2 parts."""
    if isinstance(penalty, Sum):
        return [atom for t in penalty.terms for atom in _atoms(t, factor)]
    if isinstance(penalty, Scaled):
        inner = penalty.factor if factor is None else _times(factor, penalty.factor)
        return _atoms(penalty.penalty, inner)
    if isinstance(penalty, ElasticNet):
        return [(factor, L1(penalty.l1, mask=penalty.mask)), (factor, L2(penalty.l2, center=None, mask=penalty.mask))]
    return [(factor, penalty)]


@pytree_dataclass(data=["factor", "penalty"], meta=[])
class Scaled(Penalty):
    r"""``factor * penalty``; its prox is exact: :math:`\mathrm{prox}_{t c \Omega} = \mathrm{prox}_{(c t) \Omega}`."""

    factor: jax.Array
    penalty: Penalty

    def __call__(self, tree: PyTree) -> jax.Array:
        _checks.check_applied("a scaled penalty", factor=self.factor)
        value = self.penalty(tree)
        return jnp.asarray(self.factor).astype(value.dtype) * value

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        _checks.check_applied("a scaled penalty", factor=self.factor)
        return self.penalty.prox(tree, jax.tree.map(lambda t: _times(t, self.factor), step))


def l2(scale: ArrayLike, *, mask: Any = None, center: PyTree | None = None) -> L2:
    """Squared L2 penalty ``scale * sum(mask * (w - center)**2)`` (no 1/2).

    Args:
      scale: non-negative strength; an array leaf (a sweep is a ``vmap``).
      mask: which leaves to penalize: a pytree of bools, a callable, or a :class:`jaxreg.masks.Mask`.
      center: optional params-shaped pytree to pull toward (L2-SP, a prior at pre-trained weights).

    Returns:
      An :class:`L2` penalty.

    Raises:
      ValueError: if a concrete ``scale`` is negative or not finite, or a concrete ``center`` is not finite.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> float(jr.l2(0.5)({"w": jnp.array([1.0, 2.0])}))
      2.5
    """
    _checks.check_nonnegative("scale", scale, "l2")
    for path, c in jax.tree_util.tree_flatten_with_path(center)[0]:
        if jnp.issubdtype(jnp.result_type(c), jnp.floating):  # other leaves are left unpenalized
            _checks.check_finite(f"center{jax.tree_util.keystr(path)}", c, "l2")
    return L2(_checks.as_float_array(scale, "scale", "l2"), center=center, mask=optional_mask(mask, "l2"))


def l1(scale: ArrayLike, *, mask: Any = None) -> L1:
    r"""L1 penalty ``scale * sum(mask * |w|)``; its prox is the soft threshold.

    .. math::
      \Omega(w) = \lambda \sum_i |w_i|, \qquad
      \operatorname{prox}_{t\Omega}(w)_i = \operatorname{sign}(w_i) \max(|w_i| - t\lambda, 0)

    The prox gives exact zeros (use it through :func:`jaxreg.proximal`); its gradient is
    ``scale * sign(w)`` (0 at 0).

    Args:
      scale: the strength :math:`\lambda \ge 0`; an array leaf (a sweep is a ``vmap``).
      mask: which leaves to penalize: a pytree of bools, a callable, or a :class:`jaxreg.masks.Mask`.

    Returns:
      An :class:`L1` penalty.

    Raises:
      ValueError: if a concrete ``scale`` is negative or not finite.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.l1(1.0).prox(jnp.array([-3.0, 0.5, 2.0]), 1.0)
      Array([-2.,  0.,  1.], dtype=float32)
    """
    _checks.check_nonnegative("scale", scale, "l1")
    return L1(_checks.as_float_array(scale, "scale", "l1"), mask=optional_mask(mask, "l1"))


def elastic_net(l1: ArrayLike, l2: ArrayLike, *, mask: Any = None) -> ElasticNet:
    r"""Elastic net ``l1 * sum(|w|) + l2 * sum(w**2)`` on the masked leaves.

    .. math::
      \Omega(w) = \lambda_1 \sum_i |w_i| + \lambda_2 \sum_i w_i^2, \qquad
      \operatorname{prox}_{t\Omega}(w)_i =
        \frac{\operatorname{sign}(w_i) \max(|w_i| - t\lambda_1, 0)}{1 + 2 t \lambda_2}

    Args:
      l1: the L1 strength :math:`\lambda_1 \ge 0`; an array leaf.
      l2: the squared-L2 strength :math:`\lambda_2 \ge 0` (no 1/2, as :func:`l2`); an array leaf.
      mask: which leaves to penalize: a pytree of bools, a callable, or a :class:`jaxreg.masks.Mask`.

    Returns:
      An :class:`ElasticNet` penalty.

    Raises:
      ValueError: if a concrete ``l1`` or ``l2`` is negative or not finite.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> float(jr.elastic_net(1.0, 0.5)(jnp.array([-2.0, 1.0])))
      5.5
    """
    _checks.check_nonnegative("l1", l1, "elastic_net")
    _checks.check_nonnegative("l2", l2, "elastic_net")
    return ElasticNet(
        _checks.as_float_array(l1, "l1", "elastic_net"),
        _checks.as_float_array(l2, "l2", "elastic_net"),
        mask=optional_mask(mask, "elastic_net"),
    )


def tie(scale: ArrayLike, where: Callable[[PyTree], tuple[PyTree, PyTree]]) -> Tie:
    r"""Soft tying ``scale * sum((a - b)**2)`` with ``(a, b) = where(params)``.

    .. math:: \Omega(w) = \lambda \sum_i (a_i - b_i)^2, \quad (a, b) = \mathrm{where}(w)

    The prox pulls each pair toward its mean (:class:`Tie`).

    Args:
      scale: the strength :math:`\lambda \ge 0`; an array leaf.
      where: ``params -> (a, b)``, two parts of the params with one structure and shape, selected
        (keys, indices, slices), not computed.

    Returns:
      A :class:`Tie` penalty.

    Raises:
      ValueError: if a concrete ``scale`` is negative or not finite or ``where`` is not callable;
        when applied, if ``where`` computes values, or the parts differ in structure, shape or kind
        (a float leaf tied to an integer one).

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> params = {"task_a": jnp.array([1.0, 2.0]), "task_b": jnp.array([0.0, 0.0])}
      >>> float(jr.tie(0.5, lambda p: (p["task_a"], p["task_b"]))(params))
      2.5
    """
    _checks.check_nonnegative("scale", scale, "tie")
    if not callable(where):
        raise ValueError(f"tie: where must be a callable params -> (a, b), got where = {where!r}.")
    return Tie(_checks.as_float_array(scale, "scale", "tie"), where)


def group_lasso(scale: ArrayLike, *, axis: int = 0, mask: Any = None) -> GroupLasso:
    r"""Group lasso: ``scale`` times the sum of the groups' L2 norms, one group per index of ``axis``.

    .. math::
      \Omega(w) = \lambda \sum_g \lVert w_g \rVert_2, \qquad
      \operatorname{prox}_{t\Omega}(w)_g = \max\!\Big(1 - \frac{t\lambda}{\lVert w_g \rVert_2}, 0\Big)\, w_g

    Group :math:`g` is ``w`` at index ``g`` of ``axis``, every other axis in it: with ``axis=0`` a
    Dense kernel ``(in, out)`` has one group per input unit (its row), and the prox zeroes whole
    inputs. (:func:`jaxreg.max_norm`'s ``axis`` is the other way round: the axes its norm runs
    over.) A leaf with fewer than two axes has groups of one entry (the L1 penalty).

    Args:
      scale: the strength :math:`\lambda \ge 0`; an array leaf.
      axis: the axis that indexes the groups (an int).
      mask: which leaves to penalize: a pytree of bools, a callable, or a :class:`jaxreg.masks.Mask`.

    Returns:
      A :class:`GroupLasso` penalty.

    Raises:
      ValueError: if a concrete ``scale`` is negative or not finite or ``axis`` is not an int.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> w = jnp.array([[3.0, 4.0], [0.0, 1.0]])
      >>> float(jr.group_lasso(1.0)(w))   # rows: 5 + 1
      6.0
    """
    _checks.check_nonnegative("scale", scale, "group_lasso")
    return GroupLasso(
        _checks.as_float_array(scale, "scale", "group_lasso"),
        axis=_check_axis("group_lasso", axis),
        mask=optional_mask(mask, "group_lasso"),
    )
