"""Pytree helpers: masks and leaf selection.

A mask says which leaves of a parameter pytree a regularizer acts on. As in
``optax.masked`` it is either a pytree of bools shaped like the params (or a prefix of
them), or a callable ``params -> such a pytree``. :class:`Mask` wraps either form and
adds ``&``, ``|`` and ``~``. Masks are resolved at trace time, on shapes and key paths
only, so they never cost anything inside a compiled step.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _checks

PyTree = Any
MaskLike = "Mask | Callable[[PyTree], PyTree] | PyTree | None"

__all__ = [
    "Mask",
    "Slot",
    "apply_updates",
    "as_mask",
    "by_path",
    "compute_dtype",
    "everything",
    "is_float",
    "is_mask_function",
    "is_none",
    "key_path_str",
    "kernels",
    "pytree_dataclass",
    "resolve_mask",
    "selected_positions",
    "selection",
    "wider_dtype",
]


def pytree_dataclass(*, data: list[str], meta: list[str]) -> Callable[[type], type]:
    """Class decorator: a frozen dataclass registered as a pytree (``jax.tree_util.register_dataclass``).

    ``data`` fields are leaves (numeric hyperparameters: a new value does not recompile, and
    ``vmap`` maps over them); ``meta`` fields are static (masks, axes, selectors). Unflattening
    calls the dataclass ``__init__``, so argument checks live in the factory functions.
    """

    def wrap(cls: type) -> type:
        return jax.tree_util.register_dataclass(
            dataclasses.dataclass(frozen=True, eq=False)(cls), data_fields=data, meta_fields=meta
        )

    return wrap


def key_path_str(path: tuple[Any, ...]) -> str:
    """Joins a JAX key path with ``"/"``: ``("params", "Dense_0", "kernel")`` -> ``"params/Dense_0/kernel"``.

    A ``value`` attribute (how a flax nnx ``Variable`` flattens: last for an array, before the
    index for a sown ``Intermediate``'s tuple, ``h/value/0``) is dropped, so the same regex
    selects a leaf in linen variables (``h/0``) and in an nnx ``State``.
    """
    path = tuple(k for k in path if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value"))
    return jax.tree_util.keystr(path, simple=True, separator="/")


def is_none(x: Any) -> bool:
    """``is_leaf`` for trees holding ``None`` (a frozen leaf's update, as optax allows)."""
    return x is None


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates`` (as ``optax.apply_updates``, in the wider dtype, under any promotion
    mode); a ``None`` update (a frozen leaf, as optax allows) leaves the param as is."""

    def one(u: Any, p: Any) -> Any:
        if u is None:
            return p
        wide = wider_dtype(u, p)
        return (jnp.asarray(p, wide) + jnp.asarray(u, wide)).astype(jnp.result_type(p))

    return jax.tree.map(one, updates, params, is_leaf=is_none)


def abs2(x: jax.Array) -> jax.Array:
    """``|x|^2``, real: ``x**2`` for real leaves, ``re(x conj(x))`` for complex ones (not ``x**2``)."""
    if jnp.iscomplexobj(x):
        return jnp.real(x * jnp.conj(x))
    return jnp.square(x)


def leaf_name(path: tuple[Any, ...]) -> str:
    """:func:`key_path_str` for error messages: a bare array (the empty path) is ``"<root>"``."""
    return key_path_str(path) or "<root>"


def is_float(x: Any) -> bool:
    """Whether a leaf is a floating-point (or complex) array: the only leaves regularizers touch."""
    return x is not None and jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def compute_dtype(dtype: Any) -> Any:
    """The dtype regularizers compute a floating leaf in: float32 for half precision, else its own.

    Reductions of float16 or bfloat16 values in their own dtype overflow (float16 stops at 65504)
    or lose most of their bits; XLA's own ``jnp.sum(..., dtype=jnp.float32)`` accumulates the same
    way. Written out because ``jnp.promote_types`` refuses mixed floats under strict promotion.
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return dtype


def statistic_dtype(dtype: Any) -> Any:
    """The dtype a mean or sum of values of ``dtype`` is computed in: :func:`compute_dtype` for a
    floating or complex dtype, the default float for integers and bools (as ``jnp.mean``'s; under
    strict promotion an integer array meets no float implicitly, and an int8 sum wraps)."""
    dtype = jnp.dtype(dtype)
    return compute_dtype(dtype) if jnp.issubdtype(dtype, jnp.inexact) else default_float()


def wider_dtype(a: Any, b: Any) -> Any:
    """The dtype holding both ``a``'s and ``b``'s (jax's standard lattice, whatever the promotion
    mode: strict promotion, on in a caller, refuses bfloat16 with float32 implicitly)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(jnp.result_type(a), jnp.result_type(b))


def default_float() -> Any:
    """JAX's default float dtype now: float64 under ``jax_enable_x64``, else float32.

    The dtype of hyperparameter leaves and of the factors computed from them, so that float64
    params are averaged, scaled and perturbed with float64 factors.
    """
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def is_mask_function(mask: Any) -> bool:
    """Whether ``mask`` is a function ``params -> bools`` rather than a pytree of bools.

    As in ``optax.masked``: a callable pytree (an equinox ``Module`` of bools, a registered
    dataclass with ``__call__``) is a pytree mask; only a callable that is itself a leaf, or a
    pytree whose every leaf is callable, is a mask function (optax#913, #1007, #1373).
    """
    callable_leaves = jax.tree.leaves(jax.tree.map(callable, mask))
    return len(callable_leaves) > 0 and all(callable_leaves)


def _is_concrete_bool_tree(tree: PyTree) -> bool:
    return all(isinstance(x, (bool, np.bool_)) for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class Mask:
    """A selection of pytree leaves, combinable with ``&``, ``|`` and ``~``.

    Args:
      fn: ``params -> pytree of bools`` with the structure of ``params``.
      name: a readable description, used in ``repr`` and error messages.

    Masks are hashable (they compare by ``fn`` and ``name``), so a penalty holding one can be
    a static part of a jitted function's argument without forcing a recompilation.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
      >>> (jr.masks.kernels & ~jr.masks.by_path("b$"))(params)
      {'b': False, 'w': True}
    """

    fn: Callable[[PyTree], PyTree]
    name: str = "mask"

    def __call__(self, params: PyTree, where: str = "") -> PyTree:
        return resolve_mask(self.fn, params, where)

    def __and__(self, other: Any) -> Mask:
        other = as_mask(other)
        return Mask(_Binary(np.logical_and, self, other), f"({self.name} & {other.name})")

    def __or__(self, other: Any) -> Mask:
        other = as_mask(other)
        return Mask(_Binary(np.logical_or, self, other), f"({self.name} | {other.name})")

    def __invert__(self) -> Mask:
        return Mask(_Not(self), f"~{self.name}")

    __rand__ = __and__
    __ror__ = __or__

    def __repr__(self) -> str:
        return f"Mask({self.name})"


@dataclasses.dataclass(frozen=True)
class _Binary:
    op: Callable[[Any, Any], Any]
    a: Mask
    b: Mask

    def __call__(self, params: PyTree) -> PyTree:
        ma, mb = self.a(params), self.b(params)
        return jax.tree.map(lambda x, y: bool(self.op(x, y)), ma, mb)


@dataclasses.dataclass(frozen=True)
class _Not:
    a: Mask

    def __call__(self, params: PyTree) -> PyTree:
        return jax.tree.map(lambda x: not x, self.a(params))


@dataclasses.dataclass(frozen=True)
class _Constant:
    """A fixed pytree of bools, stored hashably as (treedef, leaves)."""

    treedef: Any
    leaves: tuple[bool, ...]

    def __call__(self, params: PyTree) -> PyTree:
        del params
        return jax.tree.unflatten(self.treedef, list(self.leaves))


def _ndim_at_least_2(params: PyTree) -> PyTree:
    return jax.tree.map(lambda x: np.ndim(x) >= 2, params)


@dataclasses.dataclass(frozen=True)
class _ByPath:
    pattern: str
    allow_empty: bool = False

    def __call__(self, params: PyTree) -> PyTree:
        regex = re.compile(self.pattern)
        selected = jax.tree_util.tree_map_with_path(
            lambda path, _: regex.search(key_path_str(path)) is not None, params
        )
        if not self.allow_empty and not any(jax.tree.leaves(selected)):
            paths = [key_path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
            shown = ", ".join(repr(p) for p in paths[:6]) + (", ..." if len(paths) > 6 else "")
            raise ValueError(
                f"by_path: pattern = {self.pattern!r} selects no leaf of the params; their paths are {shown or 'none'}. "
                "Fix the pattern, or pass allow_empty=True if an empty selection is intended."
            )
        return selected


def _everything(params: PyTree) -> PyTree:
    return jax.tree.map(lambda _: True, params)


kernels = Mask(_ndim_at_least_2, "kernels")
"""Leaves with ``ndim >= 2``: weight matrices and convolution kernels; no biases, no norm scales."""

everything = Mask(_everything, "everything")
"""Every leaf."""


def by_path(pattern: str, *, allow_empty: bool = False) -> Mask:
    """Leaves whose key path, joined by ``"/"``, the regular expression ``pattern`` searches.

    Paths look like ``"params/Dense_0/kernel"`` for flax linen variables, ``"0/kernel"`` for
    a list of dicts and ``"linear/kernel"`` for an nnx ``State`` (the ``value`` attribute of an
    nnx ``Variable`` is dropped wherever it sits: a sown ``Intermediate`` reads ``"h/0"`` as in
    linen, not ``"h/value/0"``).

    Args:
      pattern: a regular expression, searched (``re.search``) in each leaf's path.
      allow_empty: if ``False`` (the default), resolving the mask on params where the pattern
        selects no leaf raises, since that is almost always a typo (``"kernal"``) that would
        silently turn a penalty into 0.

    Returns:
      A :class:`Mask`.

    Raises:
      ValueError: if ``pattern`` is not a valid regular expression; when resolved, if it
        selects no leaf and ``allow_empty`` is ``False`` (the message lists the paths).

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
      >>> jr.masks.by_path("kernel$")(params)
      {'dense': {'bias': False, 'kernel': True}}
    """
    try:
        re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"by_path: invalid regular expression, got pattern = {pattern!r} ({e}).") from e
    allow_empty = _checks.check_flag("allow_empty", allow_empty, "by_path")
    return Mask(_ByPath(pattern, allow_empty), f"by_path({pattern!r})")


def as_mask(mask: Any, where: str = "") -> Mask:
    """Normalizes ``None``, a :class:`Mask`, a mask function or a pytree of bools to a :class:`Mask`.

    Raises:
      ValueError: if ``mask`` is none of these (the message starts with ``where``).
    """
    if mask is None:
        return everything
    if isinstance(mask, Mask):
        return mask
    if is_mask_function(mask):
        return Mask(mask, getattr(mask, "__name__", "callable"))
    if not _is_concrete_bool_tree(mask):
        bad = [type(x).__name__ for x in jax.tree.leaves(mask) if not isinstance(x, (bool, np.bool_))]
        raise ValueError(
            f"{where + ': ' if where else ''}mask must be a pytree of Python bools or a callable params -> such a pytree; "
            f"got leaves of type {sorted(set(bad))}."
        )
    leaves, treedef = jax.tree.flatten(mask)
    return Mask(_Constant(treedef, tuple(bool(x) for x in leaves)), "pytree")


def optional_mask(mask: Any, where: str) -> Mask | None:
    """``None`` kept (every leaf), anything else through :func:`as_mask`: a regularizer's ``mask`` argument."""
    return None if mask is None else as_mask(mask, where)


def _is_flax_variable(x: Any) -> bool:
    return hasattr(x, "get_value") and type(x).__module__.startswith("flax.")


def _broadcast_mask(mask: Any, params: PyTree) -> PyTree:
    """``mask`` broadcast to ``params``; a mask built over an nnx ``State`` of Variables also fits
    the plain arrays ``nnx.Optimizer`` updates (its Variables' values are the bools)."""
    try:
        return jax.tree.broadcast(mask, params)
    except (ValueError, TypeError):
        if not any(_is_flax_variable(x) for x in jax.tree.leaves(mask, is_leaf=_is_flax_variable)):
            raise
    plain = jax.tree.map(lambda x: x.get_value() if _is_flax_variable(x) else x, mask, is_leaf=_is_flax_variable)
    return jax.tree.broadcast(plain, params)


def resolve_mask(mask: Any, params: PyTree, where: str = "") -> PyTree:
    """Returns a pytree of Python bools with exactly the structure of ``params``.

    ``mask`` may be ``None`` (every leaf), a :class:`Mask`, a mask function, or a pytree of bools
    whose structure is that of ``params`` or a prefix of it (a ``True`` at a node selects the
    whole subtree, as in ``optax.masked``). ``None`` subtrees of ``params`` stay ``None``.

    Raises:
      ValueError: if the mask's structure does not match ``params`` (the message starts with
        ``where``, the public function that was given the mask).
    """
    prefix = f"{where}: " if where else ""
    if mask is None:
        return _everything(params)
    if isinstance(mask, Mask):
        return mask(params, where)
    if is_mask_function(mask):
        mask = mask(params)
    try:
        full = _broadcast_mask(mask, params)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{prefix}mask does not match the structure of the params: "
            f"mask = {jax.tree.structure(mask)}, params = {jax.tree.structure(params)}. Build it with "
            "jax.tree.map over the params, or pass a callable such as jr.masks.kernels."
        ) from e
    for leaf in jax.tree.leaves(full):
        if not isinstance(leaf, (bool, np.bool_)):
            raise ValueError(
                f"{prefix}mask leaves must be Python bools known at trace time, got a {type(leaf).__name__}."
            )
    return jax.tree.map(bool, full)


def selection(mask: Any, params: PyTree, where: str = "") -> PyTree:
    """``resolve_mask(mask, params, where)`` restricted to floating-point leaves: what a regularizer acts on."""
    return jax.tree.map(lambda keep, x: keep and is_float(x), resolve_mask(mask, params, where), params)


class Slot:
    """A placeholder leaf: a selector applied to a tree of slots reveals which leaves it selects."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def selected_positions(where: Any, params: PyTree, what: str) -> tuple[Any, list[list[int]], list[Any]]:
    """Runs ``where`` on a tree of :class:`Slot` placeholders shaped like ``params``.

    Returns ``(treedef, positions, use_defs)``: for each subtree ``where`` returns, the flat
    indices of the params leaves it selects, and its structure.

    Raises:
      ValueError: naming ``what`` if ``where`` computes new values instead of selecting subtrees.
    """
    leaves, treedef = jax.tree.flatten(params, is_leaf=lambda x: x is None)
    slots = jax.tree.unflatten(treedef, [Slot(i) for i in range(len(leaves))])
    try:
        uses = where(slots)
    except Exception as e:  # any failure on placeholders means ``where`` does more than select
        raise ValueError(f"{what}: where must select subtrees of the params, not compute new values ({e}).") from e
    if not isinstance(uses, (tuple, list)):
        raise ValueError(f"{what}: where(params) must return a tuple of selected subtrees, got {type(uses).__name__}.")
    positions = []
    for use in uses:
        picked = jax.tree.leaves(use)
        if not all(isinstance(s, Slot) for s in picked):
            raise ValueError(f"{what}: where must select subtrees of the params, not compute new values.")
        positions.append([s.index for s in picked])
    return treedef, positions, [jax.tree.structure(u) for u in uses]


def total(terms: list[jax.Array]) -> jax.Array:
    """The sum of a penalty's terms in their widest dtype (float32 with none)."""
    if not terms:
        return jnp.zeros([], jnp.float32)
    dtype = jnp.result_type(*terms)
    return functools.reduce(jnp.add, [t.astype(dtype) for t in terms])


def scaled_total(scale: jax.Array, terms: list[jax.Array]) -> jax.Array:
    """``scale * total(terms)`` in the terms' dtype: a penalty's value follows its params, not its scale."""
    summed = total(terms)
    return jnp.asarray(scale).astype(summed.dtype) * summed
