"""Pytree helpers: masks and leaf selection.

A mask says which leaves of a parameter pytree a regularizer acts on. As in
``optax.masked`` it is either a pytree of bools shaped like the params (or a prefix of
them), or a callable ``params -> such a pytree``. :class:`Mask` wraps either form and
adds ``&``, ``|`` and ``~``. Masks are resolved at trace time, on shapes and key paths
only, so they never cost anything inside a compiled step.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

PyTree = Any
MaskLike = "Mask | Callable[[PyTree], PyTree] | PyTree | None"

__all__ = [
    "Mask",
    "as_mask",
    "by_path",
    "everything",
    "key_path_str",
    "kernels",
    "resolve_mask",
]


def _key_str(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def key_path_str(path: tuple[Any, ...]) -> str:
    """Joins a JAX key path with ``"/"``: ``("params", "Dense_0", "kernel")`` -> ``"params/Dense_0/kernel"``.

    A trailing ``value`` attribute (how flax nnx ``Variable`` leaves flatten) is dropped,
    so the same regex selects a leaf in linen variables and in an nnx ``State``.
    """
    parts = [_key_str(k) for k in path]
    if parts and isinstance(path[-1], jax.tree_util.GetAttrKey) and parts[-1] == "value":
        parts = parts[:-1]
    return "/".join(parts)


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

    def __call__(self, params: PyTree) -> PyTree:
        return resolve_mask(self.fn, params)

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

    def __call__(self, params: PyTree) -> PyTree:
        regex = re.compile(self.pattern)
        return jax.tree_util.tree_map_with_path(lambda path, _: regex.search(key_path_str(path)) is not None, params)


def _everything(params: PyTree) -> PyTree:
    return jax.tree.map(lambda _: True, params)


kernels = Mask(_ndim_at_least_2, "kernels")
"""Leaves with ``ndim >= 2``: weight matrices and convolution kernels; no biases, no norm scales."""

everything = Mask(_everything, "everything")
"""Every leaf."""


def by_path(pattern: str) -> Mask:
    """Leaves whose key path, joined by ``"/"``, the regular expression ``pattern`` searches.

    Paths look like ``"params/Dense_0/kernel"`` for flax linen variables, ``"0/kernel"`` for
    a list of dicts and ``"linear/kernel"`` for an nnx ``State`` (the trailing ``value`` of an
    nnx ``Variable`` is dropped).

    Args:
      pattern: a regular expression, searched (``re.search``) in each leaf's path.

    Returns:
      A :class:`Mask`.

    Raises:
      ValueError: if ``pattern`` is not a valid regular expression.
    """
    try:
        re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"by_path: invalid regular expression, got pattern = {pattern!r} ({e}).") from e
    return Mask(_ByPath(pattern), f"by_path({pattern!r})")


def as_mask(mask: Any) -> Mask:
    """Normalizes ``None``, a :class:`Mask`, a callable or a pytree of bools to a :class:`Mask`."""
    if mask is None:
        return everything
    if isinstance(mask, Mask):
        return mask
    if callable(mask) and not isinstance(mask, (bool, np.bool_)):
        return Mask(mask, getattr(mask, "__name__", "callable"))
    if not _is_concrete_bool_tree(mask):
        bad = [type(x).__name__ for x in jax.tree.leaves(mask) if not isinstance(x, (bool, np.bool_))]
        raise ValueError(
            "mask must be a pytree of Python bools or a callable params -> such a pytree; "
            f"got leaves of type {sorted(set(bad))}."
        )
    leaves, treedef = jax.tree.flatten(mask)
    return Mask(_Constant(treedef, tuple(bool(x) for x in leaves)), "pytree")


def resolve_mask(mask: Any, params: PyTree) -> PyTree:
    """Returns a pytree of Python bools with exactly the structure of ``params``.

    ``mask`` may be ``None`` (every leaf), a :class:`Mask`, a callable, or a pytree of bools
    whose structure is that of ``params`` or a prefix of it (a ``True`` at a node selects the
    whole subtree, as in ``optax.masked``).

    Raises:
      ValueError: if the mask's structure does not match ``params``.
    """
    if mask is None:
        return _everything(params)
    if isinstance(mask, Mask):
        return mask(params)
    if callable(mask):
        mask = mask(params)
    params_def = jax.tree.structure(params)
    try:
        # Broadcast a prefix mask over the subtrees it covers.
        full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params)
        full = jax.tree.unflatten(params_def, jax.tree.leaves(full))
    except (ValueError, TypeError) as e:
        raise ValueError(
            "mask does not match the structure of the params: "
            f"mask = {jax.tree.structure(mask)}, params = {params_def}. Build it with "
            "jax.tree.map over the params, or pass a callable such as jr.masks.kernels."
        ) from e
    for leaf in jax.tree.leaves(full):
        if not isinstance(leaf, (bool, np.bool_)):
            raise ValueError(f"mask leaves must be Python bools known at trace time, got a {type(leaf).__name__}.")
    return jax.tree.map(bool, full)
