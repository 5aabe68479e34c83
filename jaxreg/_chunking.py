"""Automatic chunk sizes for vmapped work (MC-dropout masks, ensemble members, ES directions).

One item's working set is estimated from the bytes of its jaxpr's intermediates, traced
abstractly; the chunk is then chosen so that a chunk's working set stays cache- and
allocator-friendly on a CPU. Shared by ``dropout``, ``ensemble`` and ``es``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

# Auto chunking, measured on a 2-core AMD EPYC (Zen 3, 32 MiB L3), jax 0.10.2, for MC-dropout
# masks and ensemble members alike. One item's working set is proxied by the summed bytes of
# its jaxpr's intermediates. When all items together stay within 128 MiB, one plain vmap is
# fastest (8-32-1 on 16 inputs, 0.13 MB per mask; the digits MLP's Adam step at batch 128,
# 10.5 MB per member, at N = 8). Beyond, chunks of the largest power of two within 48 MiB:
# MLP 64-256-256-10 on 1797 inputs (~30 MB per mask): 1 mask per chunk, 1.8-1.9x a Python loop
# of jitted passes and ~3x a plain vmap at K = 64; 8-256-1 on 256 inputs (2.1 MB): 16 (a plain
# vmap of 256 masks is 2-4x slower); on 1024 inputs (8.4 MB): 4; the Adam step at N = 32-128:
# 4 members per chunk (0.9-1.9x a plain vmap over runs on a shared, noisy machine).
_CHUNK_BUDGET_BYTES = 48 << 20
_VMAP_ALL_BYTES = 128 << 20
_FALLBACK_CHUNK = 4


def _abstract(tree: PyTree) -> PyTree:
    def one(a: Any) -> Any:
        if isinstance(a, (jax.Array, np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(jnp.shape(a), a.dtype)
        return a

    return jax.tree.map(one, tree)


def _jaxpr_bytes(jaxpr: Any) -> int:
    from jax.extend.core import jaxprs_in_params

    total = 0
    for eqn in jaxpr.eqns:
        inner = list(jaxprs_in_params(eqn.params))
        if inner:
            total += sum(_jaxpr_bytes(j) for j in inner)
            continue
        for v in eqn.outvars:
            aval = v.aval
            shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
            if shape is None or dtype is None:
                continue
            try:
                itemsize = int(np.dtype(dtype).itemsize)
            except TypeError:
                itemsize = 8  # PRNG key arrays
            total += math.prod(shape) * itemsize
    return total


def _working_set_bytes(fn: Callable[..., Any], *args: Any) -> int | None:
    """The bytes of all intermediates in ``fn``'s jaxpr for one item (a proxy for its working set)."""
    try:
        closed = jax.make_jaxpr(fn)(*_abstract(args))
        return _jaxpr_bytes(closed.jaxpr)
    except Exception:  # a function that cannot be traced abstractly: use the fallback chunk
        return None


def _auto_chunk(
    num: int, item_bytes: int | None, budget: int = _CHUNK_BUDGET_BYTES, vmap_all_bytes: int | None = None
) -> int:
    """Items per chunk: all of them if they fit ``vmap_all_bytes``, else the largest power of two within ``budget``.

    ``vmap_all_bytes=None`` means ``_VMAP_ALL_BYTES`` with the default budget, and no such
    shortcut with another budget (a caller's own budget keeps its meaning).
    """
    if item_bytes is None:
        return min(num, _FALLBACK_CHUNK)
    if vmap_all_bytes is None:
        vmap_all_bytes = _VMAP_ALL_BYTES if budget == _CHUNK_BUDGET_BYTES else 0
    if num * item_bytes <= vmap_all_bytes:
        return num
    target = max(1, budget // max(1, item_bytes))
    if target >= num:
        return num
    return 1 << (int(target).bit_length() - 1)
