"""Registration of small immutable classes as pytrees.

Numeric hyperparameters are children (leaves), so a new value does not recompile and ``vmap``
maps over them; masks, axes and selector functions are static auxiliary data. Unflattening
bypasses ``__init__`` so that argument checks never see tracers or placeholder objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import jax

T = TypeVar("T")


def register(data: Sequence[str], meta: Sequence[str] = ()):
    """Class decorator: registers ``cls`` as a pytree with ``data`` children and ``meta`` aux."""
    data, meta = tuple(data), tuple(meta)

    def wrap(cls: type[T]) -> type[T]:
        def flatten_with_keys(obj):
            children = [(jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in data]
            return children, tuple(getattr(obj, n) for n in meta)

        def flatten(obj):
            return [getattr(obj, n) for n in data], tuple(getattr(obj, n) for n in meta)

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for name, value in zip(data, children):
                object.__setattr__(obj, name, value)
            for name, value in zip(meta, aux):
                object.__setattr__(obj, name, value)
            return obj

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        cls._pytree_data = data
        cls._pytree_meta = meta
        return cls

    return wrap


def set_fields(obj: Any, **fields: Any) -> None:
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
