"""Argument checks that run before XLA sees a value.

A check fires on concrete values, at construction or trace time. A traced hyperparameter
(inside ``jit`` or ``vmap``) cannot be checked there without a host round trip, so by default it
is the caller's responsibility and sweeps stay one compiled program. Inside
:func:`traced_checks`, the same checks are also emitted on traced values with
``jax.experimental.checkify``; the caller then runs the function under ``checkify.checkify``
and calls ``err.throw()``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

__all__ = [
    "as_float_array",
    "check_in_range",
    "check_int_at_least",
    "check_nonnegative",
    "check_positive",
    "concrete",
    "traced_checks",
]

_TRACED_CHECKS = contextvars.ContextVar("jaxreg_traced_checks", default=False)


@contextlib.contextmanager
def traced_checks() -> Iterator[None]:
    """Also checks traced hyperparameters (a negative scale, a rate of 1.5 inside ``jit``).

    By default a hyperparameter that is a tracer when a regularizer is built (inside ``jit`` or
    ``vmap``) is not checked: that needs a device-to-host transfer. Inside this context, the
    checks that run on concrete values are also emitted as ``checkify.check`` on traced ones.
    Trace the function inside the context and run it under ``checkify.checkify``; its error
    names the argument and the value, as the concrete check would. JAX's compilation caches are
    cleared on entry and on exit, so that traces with and without the checks never mix (a
    function traced before would otherwise run unchecked, and one traced inside would carry
    checks that only ``checkify`` can run).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> from jax.experimental import checkify
      >>> f = lambda s: jr.l2(s)(jnp.ones(3))
      >>> with jr.traced_checks():
      ...     err, value = checkify.checkify(jax.jit(f))(-1.0)
      >>> err.get()
      'l2: scale must be finite and >= 0, got scale = -1.0 (traced)...'
    """
    jax.clear_caches()
    token = _TRACED_CHECKS.set(True)
    try:
        yield
    finally:
        _TRACED_CHECKS.reset(token)
        jax.clear_caches()


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


def _traced_check(ok: jax.Array, message: str, value: Any) -> None:
    if _TRACED_CHECKS.get():
        checkify.check(jnp.all(ok), message + " {} (traced).", value)


def check_nonnegative(name: str, value: Any, where: str = "") -> None:
    prefix = f"{where}: " if where else ""
    arr = concrete(value)
    if arr is None:
        if isinstance(value, jax.core.Tracer):
            _traced_check(
                jnp.isfinite(value) & (value >= 0), f"{prefix}{name} must be finite and >= 0, got {name} =", value
            )
        return
    if not np.issubdtype(arr.dtype, np.number) or np.any(~np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{prefix}{name} must be finite and >= 0, got {name} = {_fmt(value)}.")


def check_positive(name: str, value: Any, where: str = "") -> None:
    prefix = f"{where}: " if where else ""
    arr = concrete(value)
    if arr is None:
        if isinstance(value, jax.core.Tracer):
            _traced_check(
                jnp.isfinite(value) & (value > 0), f"{prefix}{name} must be finite and > 0, got {name} =", value
            )
        return
    if not np.issubdtype(arr.dtype, np.number) or np.any(~np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{prefix}{name} must be finite and > 0, got {name} = {_fmt(value)}.")


def check_in_range(
    name: str, value: Any, low: float, high: float, where: str = "", *, closed_high: bool = False
) -> None:
    """``low <= value < high`` (``<= high`` with ``closed_high``), finite; traced values under :func:`traced_checks`."""
    prefix = f"{where}: " if where else ""
    bound = "]" if closed_high else ")"
    message = f"{prefix}{name} must be in [{low}, {high}{bound}, got {name} ="
    arr = concrete(value)
    if arr is None:
        if isinstance(value, jax.core.Tracer):
            upper = value <= high if closed_high else value < high
            _traced_check(jnp.isfinite(value) & (value >= low) & upper, message, value)
        return
    upper_ok = arr <= high if closed_high else arr < high
    if not np.issubdtype(arr.dtype, np.number) or np.any(~np.isfinite(arr)) or np.any(arr < low) or np.any(~upper_ok):
        raise ValueError(f"{message} {_fmt(value)}.")


def check_int_at_least(name: str, value: Any, minimum: int, where: str = "") -> int:
    prefix = f"{where}: " if where else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{prefix}{name} must be an int >= {minimum}, got {name} = {value!r}.")
    if value < minimum:
        raise ValueError(f"{prefix}{name} must be >= {minimum}, got {name} = {value}.")
    return int(value)


def as_float_array(x: ArrayLike) -> jax.Array:
    """A hyperparameter as a strongly typed float array (default float dtype), tracers as they are.

    Python floats and float32 arrays then give the same jit cache key: no retrace between them.
    """
    if isinstance(x, jax.core.Tracer):
        return x
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    return jnp.asarray(x, dtype=dtype)
