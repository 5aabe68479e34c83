"""Calls of the library's looped programs outside ``jit``, compiled once and reused.

``jr.mc_dropout``, ``jr.ensemble.map`` and ``.predict``, ``jr.es.gradient`` and
``jr.variational.predict`` build their program anew on each call (a closure over the user's
function and the chunk), so called outside ``jit`` it ran op by op and every ``lax.map`` or
``fori_loop`` over chunks was traced and compiled again on every call.

:func:`call` traces the program (``jax.make_jaxpr``) and keys a ``jax.jit`` of its jaxpr on
what decides the computation: the jaxpr's text (its wiring, shapes, dtypes and inlined literal
values) and the primitives' parameters, compared by value, with the objects among them that
are not plain values (a callback's function, say) held and compared by identity. The values the
program closes over (arrays captured by the user's function) are arguments of the compiled
program, passed anew on each call, so a closure over new data is never served stale results.
Outside a trace only: with traced arguments or closed-over tracers (under ``jit``, ``vmap``,
``grad``) the program is simply called, and ``jax.disable_jit()`` keeps the op-by-op path, as
does ``JAXREG_EAGER_CACHE=0`` (read on every call; ``false``, ``off``, ``no`` too).

Each eager call still traces the program (the key is its jaxpr), so the gain is the compile:
``jaxreg bench --quick --only eager`` on a 2-vCPU Intel Xeon (AVX-512), paired against the
op-by-op path in one process, on the digits MLP (64-256-256-10, batch 128): ``jr.mc_dropout``
(K = 64, chunks of 8) 81 ms a call against 476 (5.9x), ``jr.ensemble.map`` of 16 members in
chunks of 4 14 against 141 ms (10x), ``jr.es.gradient`` (population 32, chunks of 4) 85 against
667 ms (8.0x). Inside ``jax.jit`` the same calls take a few ms: a loop of many calls belongs
in ``jit``.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.extend.core as jex_core

# What tracing raises for a function that needs concrete values (a Python `if` on an array,
# numpy on an array, int() of an array). Any other exception is a bug of the function and
# propagates: the real call would raise it too.
ABSTRACT_TRACING_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)

# Compiled programs kept (least recently used dropped): each holds a jaxpr, not its arrays.
MAX_ENTRIES = 64

_COMPILED: collections.OrderedDict[Hashable, Callable[..., Any]] = collections.OrderedDict()

# Forward evaluation never calls a custom rule's derivative thunks, and each trace makes new ones.
_RULE_PRIMITIVES = ("custom_jvp_call", "custom_vjp_call")


class _Uncacheable(Exception):
    """A parameter that can be neither hashed nor walked: the program is called as it is."""


def _params_key(jaxpr: Any, out: list[Any]) -> None:
    for eqn in jaxpr.eqns:
        rule = eqn.primitive.name.startswith(_RULE_PRIMITIVES)
        out.append(eqn.primitive.name)
        for name in sorted(eqn.params):
            value = eqn.params[name]
            if rule and not isinstance(value, (jex_core.Jaxpr, jex_core.ClosedJaxpr, bool, int, str, type(None))):
                continue  # the derivative rules (functions, wrapped functions, thunks)
            out.append(name)
            _value_key(value, out)


def _value_key(value: Any, out: list[Any]) -> None:
    if isinstance(value, jex_core.ClosedJaxpr):
        _params_key(value.jaxpr, out)
        out.extend(("consts", *(_Identity(c) for c in value.consts)))
    elif isinstance(value, jex_core.Jaxpr):
        _params_key(value, out)
    elif isinstance(value, (tuple, list)):
        out.append(len(value))
        for v in value:
            _value_key(v, out)
    else:
        try:
            hash(value)
        except TypeError as e:
            raise _Uncacheable from e
        out.append(value)


class _Identity:
    """An object compared by identity (and held, so its id is not reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def enabled() -> bool:
    """False when ``JAXREG_EAGER_CACHE`` is ``0`` (or ``false``, ``off``, ``no``), as ``JAXREG_AUTOTUNE``."""
    return os.environ.get("JAXREG_EAGER_CACHE", "1").strip().lower() not in ("0", "false", "off", "no")


def _evaluate(jaxpr: Any, consts: list[Any], args: list[Any]) -> list[Any]:
    return jax.core.eval_jaxpr(jaxpr, consts, *args)


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def call(program: Callable[..., Any], *args: Any) -> Any:
    """``program(*args)``, compiled once per computation when called outside a trace.

    Args:
      program: a pure function of ``args`` (pytrees); it may close over arrays.
      *args: its arguments. Their ``jax.Array`` leaves become the compiled program's inputs;
        other leaves (numpy arrays, Python numbers) are traced as constants, as ``program`` would
        see them called directly.

    Returns:
      ``program(*args)``.
    """
    leaves, treedef = jax.tree.flatten(args)
    if not enabled() or jax.config.jax_disable_jit or any(_is_tracer(x) for x in leaves):
        return program(*args)
    lifted = [isinstance(x, jax.Array) for x in leaves]
    arrays = [x for x, a in zip(leaves, lifted) if a]

    def flat(arrs: list[Any]) -> Any:
        it = iter(arrs)
        return program(*jax.tree.unflatten(treedef, [next(it) if a else x for x, a in zip(leaves, lifted)]))

    try:
        closed, shapes = jax.make_jaxpr(flat, return_shape=True)(arrays)
    except ABSTRACT_TRACING_ERRORS:  # it reads an argument's value in Python: run it as it is
        return program(*args)
    if any(_is_tracer(c) for c in closed.consts):  # closes over an outer trace's values
        return program(*args)
    parts: list[Any] = [str(closed.jaxpr)]
    try:
        _params_key(closed.jaxpr, parts)
        key = tuple(parts)
        hash(key)
    except (_Uncacheable, TypeError):
        return program(*args)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = jax.jit(functools.partial(_evaluate, closed.jaxpr))
        _COMPILED[key] = compiled
        while len(_COMPILED) > MAX_ENTRIES:
            _COMPILED.popitem(last=False)
    else:
        _COMPILED.move_to_end(key)
    out = compiled(list(closed.consts), arrays)
    return jax.tree.unflatten(jax.tree.structure(shapes), out)


def clear_cache() -> None:
    """Forgets every compiled program."""
    _COMPILED.clear()
