"""Hard parameter sharing: one stored copy, used in several places."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxreg._tree import is_none, selected_positions

PyTree = Any

__all__ = ["Shared", "Share"]


class Shared(NamedTuple):
    """Compact params: ``params`` with every use set to ``None``, and the stored copy ``shared``."""

    params: PyTree
    shared: PyTree


class Share:
    r"""Hard sharing: the places ``where(params)`` selects hold one stored copy.

    ``where(params)`` returns a sequence of uses (subtrees of ``params``). The first is the
    source; use ``k`` is computed leaf by leaf, ``jax.tree.map(transforms[k], source)`` (identity by
    default; pass ``jnp.transpose`` for the decoder of a tied autoencoder). :meth:`compress` keeps the source
    once; :meth:`expand` rebuilds full params to feed the model. Because ``expand`` is
    differentiable, the gradient with respect to the stored copy is the sum over its uses:

    .. math:: \frac{\partial L}{\partial s} = \sum_k J_{T_k}^\top \frac{\partial L}{\partial w_k}

    Args:
      where: ``params -> (use_0, use_1, ...)``; it must only select, not compute.
      transforms: one callable (applied to each leaf of the source) or ``None`` per use;
        ``transforms[0]`` must be ``None``.

    Raises:
      ValueError: if ``where`` selects fewer than two uses, or a use's structure, shapes or
        dtypes do not match the transformed source.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> share = jr.Share(lambda p: (p["enc"], p["dec"]), transforms=(None, jnp.transpose))
      >>> params = {"enc": jnp.ones((2, 3)), "dec": jnp.zeros((3, 2))}
      >>> compact = share.compress(params)
      >>> share.expand(compact)["dec"].shape
      (3, 2)
    """

    def __init__(
        self,
        where: Callable[[PyTree], Sequence[PyTree]],
        *,
        transforms: Sequence[Callable[[PyTree], PyTree] | None] | None = None,
    ):
        if not callable(where):
            raise ValueError(f"Share: where must be a callable params -> uses, got where = {where!r}.")
        if transforms is not None:
            transforms = tuple(transforms)
            if transforms and transforms[0] is not None:
                raise ValueError("Share: transforms[0] must be None: the first use is the stored source.")
            for k, fn in enumerate(transforms):
                if fn is not None and not callable(fn):
                    raise ValueError(
                        f"Share: transforms[{k}] must be a callable or None, got transforms[{k}] = {fn!r}."
                    )
        self.where = where
        self.transforms = transforms

    def _uses(self, params: PyTree) -> tuple[list[list[int]], Any, list[Any]]:
        treedef, positions, use_defs = selected_positions(self.where, params, "Share")
        if len(positions) < 2:
            raise ValueError(f"Share: where(params) must return a sequence of at least two uses, got {len(positions)}.")
        if self.transforms is not None and len(self.transforms) != len(positions):
            raise ValueError(
                f"Share: transforms has {len(self.transforms)} entries for {len(positions)} uses; give one per use."
            )
        return positions, treedef, use_defs

    def _transform(self, k: int, source: PyTree) -> PyTree:
        fn = None if self.transforms is None else self.transforms[k]
        return source if fn is None else jax.tree.map(fn, source)

    def compress(self, params: PyTree) -> Shared:
        """Stores the source once, in ``shared``; every use in ``params`` becomes ``None``."""
        positions, treedef, use_defs = self._uses(params)
        leaves = jax.tree.leaves(params, is_leaf=is_none)
        source = jax.tree.unflatten(use_defs[0], [leaves[i] for i in positions[0]])
        for k in range(1, len(positions)):
            expected = self._transform(k, source)
            got = [leaves[i] for i in positions[k]]
            if jax.tree.structure(expected) != use_defs[k]:
                raise ValueError(
                    f"Share: use {k} has the tree structure {use_defs[k]} but the transformed source has "
                    f"{jax.tree.structure(expected)}."
                )
            if any(jnp.shape(e) != jnp.shape(g) for e, g in zip(jax.tree.leaves(expected), got)):
                raise ValueError(
                    f"Share: use {k} has shapes {[jnp.shape(g) for g in got]} but the transformed source has "
                    f"{[jnp.shape(e) for e in jax.tree.leaves(expected)]}."
                )
            dtypes = [jnp.result_type(g) for g in got], [jnp.result_type(e) for e in jax.tree.leaves(expected)]
            if dtypes[0] != dtypes[1]:  # expand would hand the model the source's dtype in this use's place
                raise ValueError(
                    f"Share: use {k} has dtypes {[d.name for d in dtypes[0]]} but the transformed source has "
                    f"{[d.name for d in dtypes[1]]}; cast in the use's transform (e.g. lambda w: w.T.astype(dtype))."
                )
        drop = {i for pos in positions for i in pos}
        kept = [None if i in drop else x for i, x in enumerate(leaves)]
        return Shared(params=jax.tree.unflatten(treedef, kept), shared=source)

    def expand(self, compact: Shared) -> PyTree:
        """Full params: every use filled from the stored copy (differentiable)."""
        if not (isinstance(compact, tuple) and len(compact) == 2):  # Shared, or a (params, shared) pair
            raise ValueError(
                f"Share.expand: compact must be the Shared that compress returned, got a {type(compact).__name__}; "
                f"call share.compress(params) first."
            )
        params, source = compact
        positions, treedef, _ = self._uses(params)
        leaves = list(jax.tree.leaves(params, is_leaf=is_none))
        for k, pos in enumerate(positions):
            for i, value in zip(pos, jax.tree.leaves(self._transform(k, source))):
                leaves[i] = value
        return jax.tree.unflatten(treedef, leaves)
