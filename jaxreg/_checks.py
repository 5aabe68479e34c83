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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

__all__ = [
    "as_float_array",
    "check_in_open_interval",
    "check_in_range",
    "check_int_at_least",
    "check_integer_at_least",
    "check_nonnegative",
    "check_positive",
    "check_rate",
    "check_scalar",
    "concrete",
    "traced_checks",
]

INT32_MAX = int(np.iinfo(np.int32).max)
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
    checks that only ``checkify`` can run). Those caches belong to the process, the switch to the
    thread: while one thread is inside the context, another thread's jitted functions may pick up
    its checked traces (and fail outside ``checkify``) or lend it their unchecked ones, so use it
    where no other thread traces. Inside it, automatic chunk sizes are not measured (a cached
    choice, else the static rule): candidates carrying checks run only under ``checkify``.

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


def broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether an array of ``shape`` broadcasts to ``target`` without changing it (a hyperparameter
    per vector, per member, per leaf: any other shape would broadcast the result into a new one)."""
    try:
        return tuple(np.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except ValueError:
        return False


def checks_traced() -> bool:
    """Whether this thread is inside :func:`traced_checks`."""
    return _TRACED_CHECKS.get()


def concrete(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array if it is known at trace time, else ``None``."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def fmt(value: Any) -> str:
    """A concrete value as error messages show it (a scalar's repr, or a short array)."""
    arr = np.asarray(value)
    return repr(arr.item()) if arr.ndim == 0 else np.array2string(arr, threshold=8)


def traced_check(ok: jax.Array, message: str, value: Any) -> None:
    """``checkify.check(all(ok))`` under :func:`traced_checks`, nothing otherwise; ``value`` follows ``message``."""
    if _TRACED_CHECKS.get():
        checkify.check(jnp.all(ok), message + " {} (traced).", value)


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def is_real_numeric(arr: np.ndarray) -> bool:
    # jnp's dtype tree knows the ml_dtypes floats (bfloat16, float8) that numpy's calls non-numeric.
    # A complex number is not one (its imaginary part was dropped by the comparisons).
    return bool(jnp.issubdtype(arr.dtype, jnp.number)) and not jnp.issubdtype(arr.dtype, jnp.complexfloating)


def _check_number(name: str, value: Any, where: str, requirement: str, ok: Callable[[Any], Any], scalar: bool) -> None:
    """Finite numbers with ``ok(value)`` everywhere; the one shape of every numeric check below.

    Concrete values raise ``ValueError("where: name must be <requirement>, got name = value.")``;
    traced ones are checked the same way under :func:`traced_checks` and skipped otherwise. With
    ``scalar``, a value with axes is refused first (its shape is known even when traced).
    """
    if scalar:
        check_scalar(name, value, where)
    message = f"{_prefix(where)}{name} must be {requirement}, got {name} ="
    arr = concrete(value)
    if arr is None:
        if isinstance(value, jax.core.Tracer):
            traced_check(jnp.isfinite(value) & ok(value), message, value)
        return
    if not is_real_numeric(arr) or np.any(~np.isfinite(arr)) or not np.all(ok(arr)):
        raise ValueError(f"{message} {fmt(value)}.")
    held = overflowing_dtype(arr)
    if held is not None:  # 1e39 is finite here, inf in float32
        raise ValueError(f"{message} {fmt(value)}, which overflows {held.name}, the dtype it is kept in.")


def overflowing_dtype(arr: np.ndarray) -> np.dtype | None:
    """The float dtype jax keeps a finite concrete number in (a float64 array or Python float is
    float32 without x64, an integer the default float dtype) if it rounds to inf there, else
    ``None``. No pass over an array already in that dtype (a pre-trained centre)."""
    floating = jnp.issubdtype(arr.dtype, jnp.floating)
    dtype = np.dtype(jax.dtypes.canonicalize_dtype(arr.dtype if floating else np.float64))
    if arr.dtype == dtype or not is_real_numeric(arr):
        return None
    with np.errstate(over="ignore"):
        held = arr.astype(dtype)
    return dtype if not np.all(np.isfinite(held)) else None


def check_labels(name: str, labels: Any, num_classes: int, where: str = "") -> None:
    """Integer class labels in ``[0, num_classes)`` (the dtype always; values when concrete, or under
    :func:`traced_checks`): a label out of range or a float label gave a silently wrong score."""
    dtype = jnp.result_type(labels)
    if not (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):  # bools: binary labels
        raise ValueError(f"{_prefix(where)}{name} must be integer class labels, got {name} of dtype {dtype}.")
    message = f"{_prefix(where)}{name} must be class indices in [0, {num_classes}), got {name} ="
    arr = concrete(labels)
    if arr is None:
        if isinstance(labels, jax.core.Tracer):
            traced_check((labels >= 0) & (labels < num_classes), message, labels)
        return
    bad = (arr < 0) | (arr >= num_classes)
    if np.any(bad):
        raise ValueError(f"{message} {fmt(arr[bad][:8])} (out of range).")


def check_callable(name: str, value: Any, where: str, what: str = "a function") -> None:
    """A function argument, checked when the caller is built (a TypeError at its first call otherwise)."""
    if not callable(value):
        raise ValueError(f"{_prefix(where)}{name} must be {what}, got {name} = {value!r}.")


def check_finite(name: str, value: Any, where: str = "") -> None:
    """Finite numbers (a prior mean, a centre); traced values under :func:`traced_checks`."""
    _check_number(name, value, where, "finite", lambda v: v == v, False)


def check_nonnegative(name: str, value: Any, where: str = "", *, scalar: bool = False) -> None:
    """``value >= 0``, finite (a scale, a ``min_delta``); a single number with ``scalar``."""
    _check_number(name, value, where, "finite and >= 0", lambda v: v >= 0, scalar)


def check_positive(name: str, value: Any, where: str = "", *, scalar: bool = False) -> None:
    """``value > 0``, finite (a step size, a ``sigma``); a single number with ``scalar``."""
    _check_number(name, value, where, "finite and > 0", lambda v: v > 0, scalar)


def check_in_range(
    name: str, value: Any, low: float, high: float, where: str = "", *, closed_high: bool = False, scalar: bool = False
) -> None:
    """``low <= value < high`` (``<= high`` with ``closed_high``), finite; traced values under :func:`traced_checks`."""
    bound = "]" if closed_high else ")"
    _check_number(
        name,
        value,
        where,
        f"in [{low}, {high}{bound}",
        lambda v: (v >= low) & ((v <= high) if closed_high else (v < high)),
        scalar,
    )


def check_in_open_interval(name: str, value: Any, low: float, high: float, where: str = "") -> None:
    """``low < value < high``, finite (a decay factor); traced values under :func:`traced_checks`."""
    _check_number(name, value, where, f"in ({low}, {high})", lambda v: (v > low) & (v < high), False)


def check_scalar(name: str, value: Any, where: str = "") -> None:
    """``value`` has no axes (a hyperparameter that is one number, possibly traced)."""
    if jnp.ndim(value) != 0:
        raise ValueError(f"{_prefix(where)}{name} must be a scalar, got {name}.shape = {jnp.shape(value)}.")


def check_rate(name: str, value: Any, where: str = "", *, float32_mask: bool = False, scalar: bool = True) -> None:
    """A probability of dropping in [0, 1), a scalar unless ``scalar=False`` (a traced rate is
    checked under :func:`traced_checks`).

    ``float32_mask``: the rate becomes a float32 keep threshold (dropout's masks), so a concrete
    rate that rounds to 1 in float32 (``0.9999999999``) is refused too: it would drop every unit.
    """
    check_in_range(name, value, 0, 1, where, scalar=scalar)
    rate = concrete(value) if float32_mask else None
    if rate is not None and np.any(np.asarray(rate, np.float32) >= 1.0):
        shown = repr(float(rate)) if np.ndim(rate) == 0 else fmt(rate)
        raise ValueError(f"{_prefix(where)}{name} must be below 1 in float32, got {name} = {shown}.")


def check_flag(name: str, value: Any, where: str = "") -> bool:
    """A static switch: ``True`` or ``False`` (numpy bools too); a string such as ``"no"`` is refused
    rather than read as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{_prefix(where)}{name} must be True or False, got {name} = {value!r}.")
    return bool(value)


def split_aux(out: Any, has_aux: bool, where: str, *, scalar: bool = True) -> tuple[Any, Any]:
    """``(loss, aux)`` of a ``loss_fn`` output, checked against ``has_aux`` and, with ``scalar``, for
    a scalar loss (a mismatch failed deep inside jax with an error naming neither; a per-example
    loss had a penalty added to every element)."""
    if has_aux:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            got = f"an array of shape {np.shape(out)}" if hasattr(out, "shape") else f"a {type(out).__name__}"
            raise ValueError(
                f"{where}: with has_aux=True loss_fn must return (loss, aux), got {got}; pass has_aux=False "
                f"for a loss alone."
            )
        loss, aux = out
    elif isinstance(out, (tuple, list)):
        raise ValueError(
            f"{where}: loss_fn returned a {type(out).__name__} of {len(out)}; pass has_aux=True if it returns "
            f"(loss, aux)."
        )
    else:
        loss, aux = out, None
    if scalar and jnp.ndim(loss) != 0:  # known at trace time
        raise ValueError(
            f"{where}: loss_fn must return a scalar loss, got an output of shape {jnp.shape(loss)} (reduce "
            f"a per-example loss, e.g. with .mean())."
        )
    return loss, aux


def need_params(params: Any, updates: Any, where: str) -> None:
    """A transformation that reads the params got them, shaped like the updates."""
    if params is None:
        raise ValueError(
            f"{where}: needs params (params = None; this transformation needs the current params): call "
            "optimizer.update(updates, state, params), with the transformation in the chain."
        )
    check_like("updates", updates, "params", params, where)


def check_real(what: str, x: Any, where: str, why: str) -> None:
    """Raise ``ValueError`` if ``x`` is complex: ``what`` names it, ``why`` says what needs it real."""
    if jnp.iscomplexobj(x):
        raise ValueError(f"{where}: {what} is complex ({jnp.result_type(x)}); {why}")


def _as_array(x: Any, name: str, where: str, what: str) -> jax.Array:
    """``jnp.asarray(x)``; its error for ``None``, text or a ragged list named neither ``where`` nor ``name``."""
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError, OverflowError) as e:
        got = f"{name} = None" if x is None else f"a {type(x).__name__} that is not an array ({str(e).splitlines()[0]})"
        raise ValueError(f"{where}: {name} must be {what}, got {got}.") from None


def as_inexact_array(x: Any, name: str, where: str, *, real: bool = False) -> jax.Array:
    """``x`` as a jax array of a floating-point (or, unless ``real``, complex) dtype; ``ValueError``
    naming ``where`` and ``name`` otherwise."""
    arr = _as_array(x, name, where, "a floating-point array")
    if not jnp.issubdtype(arr.dtype, jnp.floating if real else jnp.inexact):
        kind = "a real floating-point" if real and jnp.iscomplexobj(arr) else "a floating-point"
        raise ValueError(f"{where}: {name} must be {kind} array, got {name}.dtype = {arr.dtype}.")
    return arr


def as_real_array(x: Any, name: str, where: str) -> jax.Array:
    """``x`` as a jax array of real numbers (integer or floating point); ``ValueError`` naming
    ``where`` and ``name`` for text, ``None``, bools and complex numbers (a complex "KL")."""
    arr = _as_array(x, name, where, "real numbers")
    if not is_real_numeric(arr) or arr.dtype == jnp.bool_:
        raise ValueError(f"{where}: {name} must be real numbers, got dtype {arr.dtype}.")
    return arr


def check_like(name: str, tree: Any, ref_name: str, ref: Any, where: str) -> None:
    """``tree`` has ``ref``'s structure and leaf shapes (updates against params, a snapshot against
    the params it replaces); a mismatch failed in jax's broadcasting or tree errors, unnamed.
    A ``None`` in ``tree`` (a frozen leaf's update) matches anything. Shapes are static, so this
    runs at trace time only."""

    def leaf(path: Any, x: Any, y: Any) -> None:
        if x is not None and y is not None and jax.tree.structure(y).num_nodes != 1:
            # a leaf of tree where ref has a subtree (jnp.shape of a dict is ()); a one-leaf box
            # (an nnx Param of init's params, a pure array in the update, as optax takes) is its leaf
            inner = jax.tree.leaves(y)
            if len(inner) != 1 or isinstance(y, (Mapping, list, tuple)):
                raise TypeError
            y = inner[0]
        if x is not None and y is not None and jnp.shape(x) != jnp.shape(y):
            raise _ShapeMismatch(
                f"{where}: {name} must be shaped like {ref_name}, got leaf {jax.tree_util.keystr(path) or '<root>'} "
                f"of shape {jnp.shape(x)} in {name} and {jnp.shape(y)} in {ref_name}."
            )

    try:
        jax.tree_util.tree_map_with_path(leaf, tree, ref, is_leaf=lambda x: x is None)
    except _ShapeMismatch as e:
        raise ValueError(str(e)) from None
    except (ValueError, TypeError):
        raise ValueError(
            f"{where}: {name} must have the tree structure of {ref_name}, got {short_treedef(jax.tree.structure(tree))} "
            f"for {ref_name}'s {short_treedef(jax.tree.structure(ref))}."
        ) from None


class _ShapeMismatch(Exception):
    pass


def short_treedef(treedef: Any, limit: int = 200) -> str:
    text = str(treedef)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_int(value: int) -> str:
    """``repr`` of an int, or its size in bits when it would print 19 digits or more (10**400)."""
    return f"an int of {int(value).bit_length()} bits" if abs(int(value)) >= 10**18 else repr(int(value))


def check_int_at_least(name: str, value: Any, minimum: int, where: str = "", *, maximum: int | None = INT32_MAX) -> int:
    """A static Python (or numpy) int ``>= minimum`` (a shape, a count); returns it as an ``int``.

    ``maximum`` defaults to the int32 maximum: jax counts and indexes in int32 (without x64), so
    a larger count failed inside jax or MLIR (10**400) or asked for terabytes; ``None`` sets no
    bound (a numpy seed, a count used in host arithmetic only).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{_prefix(where)}{name} must be an int >= {minimum}, got {name} = {value!r}.")
    if maximum is not None and value > maximum:
        raise ValueError(
            f"{_prefix(where)}{name} must be an int in [{minimum}, {maximum}], got {name} = {describe_int(value)}."
        )
    return int(value)


def check_integer_at_least(name: str, value: Any, minimum: int, where: str = "", *, maximum: int | None = None) -> None:
    """An integer-valued number ``>= minimum`` that may be an array leaf (a patience, a start step).

    Python ints and int or float arrays of integral values pass; bools do not. ``maximum``: the
    largest allowed (:data:`INT32_MAX` for a count kept in an int32 leaf). A traced value is
    checked under :func:`traced_checks`.
    """
    requirement = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    message = f"{_prefix(where)}{name} must be an integer {requirement}, got {name} ="
    arr = concrete(value)
    if arr is None:
        if isinstance(value, jax.core.Tracer):
            ok = (value == jnp.round(value)) & (value >= minimum) if jnp.issubdtype(value.dtype, jnp.number) else False
            if maximum is not None:
                ok = ok & (value <= maximum)
            traced_check(ok, message, value)
        return
    if (
        arr.dtype == np.bool_
        or not is_real_numeric(arr)
        or np.any(~np.isfinite(arr))
        or np.any(arr != np.round(arr))
        or np.any(arr < minimum)
        or (maximum is not None and np.any(arr > maximum))
    ):
        raise ValueError(f"{message} {fmt(arr)}.")


def check_applied(where: str, **hyperparameters: Any) -> None:
    """A penalty applied to params holds one number per hyperparameter: a stacked one (a sweep's
    array) belongs under ``jax.vmap`` over the penalty, where each member's is a scalar; applied
    as it is, it would make the value a vector and the prox threshold each column differently."""
    for name, value in hyperparameters.items():
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{where}: {name} must be one number when the penalty is applied (vmap over a penalty "
                f"built from an array of values to sweep them), got {name}.shape = {jnp.shape(value)}."
            )


def as_float_array(x: ArrayLike, name: str | None = None, where: str | None = None) -> jax.Array:
    """A hyperparameter as a strongly typed float array (default float dtype), tracers as they are.

    Python floats and float32 arrays then give the same jit cache key: no retrace between them.
    With ``name`` and ``where``, a list (not a number or an array) raises ``ValueError`` naming
    them; a value that overflows the dtype is refused by the numeric check every caller runs
    first (:func:`overflowing_dtype`).
    """
    if isinstance(x, jax.core.Tracer):
        return x
    with jax.ensure_compile_time_eval():  # concrete inside a trace too (nnx.eval_shape, jit): not a leaked tracer
        return _as_float_array(x, name, where)


def _as_float_array(x: ArrayLike, name: str | None, where: str | None) -> jax.Array:
    try:
        dtype = jnp.result_type(x)
    except TypeError:  # a list: jax's "Cannot determine dtype of [0.1]" named no argument
        if name is None:
            raise
        raise ValueError(
            f"{where}: {name} must be a number or an array, got a {type(x).__name__}; pass jnp.asarray({name}) "
            f"for one value per member."
        ) from None
    dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)
    return jnp.asarray(x, dtype=dtype)
