"""Argument checks that run before XLA sees a value.

A check fires only on concrete values: a traced hyperparameter (inside ``jit`` or ``vmap``)
is the caller's responsibility, so that sweeps stay one compiled program.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def concrete(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array if it is known at trace time, else ``None``."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _fmt(value: Any) -> str:
    arr = np.asarray(value)
    return repr(arr.item()) if arr.ndim == 0 else np.array2string(arr, threshold=8)


def check_nonnegative(name: str, value: Any, where: str = "") -> None:
    arr = concrete(value)
    if arr is None:
        return
    if not np.issubdtype(arr.dtype, np.number) or np.any(~np.isfinite(arr)) or np.any(arr < 0):
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{name} must be finite and >= 0, got {name} = {_fmt(value)}.")


def check_positive(name: str, value: Any, where: str = "") -> None:
    arr = concrete(value)
    if arr is None:
        return
    if not np.issubdtype(arr.dtype, np.number) or np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{name} must be finite and > 0, got {name} = {_fmt(value)}.")


def check_int_at_least(name: str, value: Any, minimum: int, where: str = "") -> int:
    prefix = f"{where}: " if where else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{prefix}{name} must be an int >= {minimum}, got {name} = {value!r}.")
    if value < minimum:
        raise ValueError(f"{prefix}{name} must be >= {minimum}, got {name} = {value}.")
    return int(value)
