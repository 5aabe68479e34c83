"""Calls of the library's looped programs outside ``jit``, compiled once and reused.

``jr.mc_dropout``, ``jr.ensemble.map`` and ``.predict``, ``jr.es.gradient`` and
``jr.variational.predict`` build their program anew on each call (a closure over the user's
function and the chunk), so called outside ``jit`` it ran op by op and every ``lax.map`` or
``fori_loop`` over chunks was traced and compiled again on every call (``jr.es.gradient`` with
``mesh=``: its ``shard_map``; ``jr.ensemble.init``: a ``jax.jit`` built on each call).

:func:`call` traces the program (``jax.make_jaxpr``) and keys a ``jax.jit`` of its jaxpr on
what decides the computation: the jaxpr's structure (its wiring, each variable's shape, dtype,
weak type and sharding, literal values by their bytes), the primitives' parameters compared by
value, and the jax settings that change the numbers without changing the jaxpr
(``jax_threefry_partitionable``, the default matmul precision, x64). The values the program closes over (arrays captured by the user's function)
are arguments of the compiled program, passed anew on each call, so a closure over new data is
never served stale results. What cannot be keyed by value runs as it is, op by op, as before: a
program with a callback (its function is no value; kept by identity it would also keep whatever
it closes over alive), an inner ``jit`` with constants of its own (a numpy array it closes over
may change in place), a program that reads a concrete argument in Python (traced, it cannot),
and calls under a trace (``jit``, ``vmap``, ``grad``: there the outer program is compiled
anyway), under ``jax.disable_jit()`` or with ``JAXREG_EAGER_CACHE=0`` (read on every call;
``false``, ``off``, ``no`` too). Call sites pass ``compiled=False`` for one ``vmap`` of all
items given as an explicit chunk: without a loop, jax already runs its primitives from its own
cache, and tracing (and a compile for every new Python number) would only add to each call. A
measured chunk is compiled either way: the chunk tuner times its candidates through
:func:`bind`, so the call after the measurement finds the winner compiled (it compiled it again).

Each eager call still traces the program (the key is its jaxpr), so the gain is the compile:
``jaxreg bench --quick --only eager`` on a 2-vCPU Intel Xeon (AVX-512), paired against the
op-by-op path in one process, on the digits MLP (64-256-256-10, batch 128): ``jr.mc_dropout``
(K = 64, chunks of 8) 43 ms a call against 448 (10.3x), ``jr.ensemble.map`` of 16 members in
chunks of 4 13 against 141 ms (11.3x), ``jr.es.gradient`` (population 32, chunks of 4) 43
against 555 ms (13.8x); one ``vmap`` of the 16 members runs op by op either way (0.97
[0.94-0.99], the same code). Inside ``jax.jit`` the same calls take a few ms: a loop of many calls
belongs in ``jit``.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.extend.random
import numpy as np

# Compiled programs kept (least recently used dropped): each holds a jaxpr, not its arrays.
MAX_ENTRIES = 64

_COMPILED: collections.OrderedDict[Hashable, Callable[..., Any]] = collections.OrderedDict()

# Forward evaluation never calls a custom rule's derivative thunks, and each trace makes new ones.
_RULE_PRIMITIVES = ("custom_jvp_call", "custom_vjp_call")


class _Uncacheable(Exception):
    """A parameter that is not a plain value: the program is called as it is."""


# Parameter values compared by value: Python's and numpy's scalars and jax's own parameter
# types (dtypes, enums, dimension numbers, shardings, meshes), which compare by value.
_VALUE_MODULES = ("jax", "jaxlib", "numpy", "ml_dtypes")

# Compared by value though callable (a Mesh is a context manager).
_PLACEMENTS = (jax.sharding.Mesh, jax.sharding.AbstractMesh, jax.sharding.Sharding)

# The parameter of random_wrap and random_seed (a raw uint32 key becoming a typed one, as flax's
# Dropout does with jax.random.PRNGKey keys): its fields are the impl's functions.
_PRNG_IMPL = type(jax.extend.random.threefry_prng_impl)

# The fields of an equation's context (jax's JaxprEqnContext) that eval_jaxpr applies again.
_EQN_CONTEXT = (
    "threefry_partitionable",
    "compute_type",
    "cur_abstract_mesh",
    "remove_size_one_mesh_axis",
    "xla_metadata",
)

# jax's settings that change what a traced program computes without changing its jaxpr
# (random_bits lowers to another stream with threefry_partitionable; an unspecified precision
# follows default_matmul_precision).
_SETTINGS = ("jax_threefry_partitionable", "jax_default_matmul_precision", "jax_enable_x64")


def _jaxpr_key(jaxpr: Any, out: list[Any]) -> None:
    """Appends to ``out`` what decides ``jaxpr``'s computation: its wiring (each variable by the
    order it is bound in), every variable's aval (shape, dtype, weak type, sharding), literals by
    their bytes, and each primitive with its parameters (inner jaxprs walked the same way)."""
    index: dict[Any, int] = {}

    def atom(a: Any) -> Any:
        if isinstance(a, jex_core.Literal):
            val = np.asarray(a.val)
            return ("literal", val.dtype.str, val.tobytes(), a.aval)
        return index[a]

    for v in (*jaxpr.constvars, *jaxpr.invars):
        index[v] = len(index)
        out.append(v.aval)
    out.append((len(jaxpr.constvars), len(jaxpr.invars)))
    for eqn in jaxpr.eqns:
        rule = eqn.primitive.name.startswith(_RULE_PRIMITIVES)
        out.append(("eqn", eqn.primitive.name))
        # The settings an equation was traced under, which eval_jaxpr applies again (a
        # `with jax.threefry_partitionable(...)` inside the program).
        for name in _EQN_CONTEXT:
            _value_key(getattr(eqn.ctx, name, None), out)
        out.append(tuple(atom(a) for a in eqn.invars))
        for v in eqn.outvars:
            index[v] = len(index)
        out.append(tuple(v.aval for v in eqn.outvars))
        for name in sorted(eqn.params):
            value = eqn.params[name]
            if rule and not isinstance(value, (jex_core.Jaxpr, jex_core.ClosedJaxpr, bool, int, str, type(None))):
                continue  # the derivative rules (functions, wrapped functions, thunks)
            out.append(("param", name))
            _value_key(value, out)
    out.append(("out", tuple(atom(a) for a in jaxpr.outvars)))


def _value_key(value: Any, out: list[Any]) -> None:
    if isinstance(value, jex_core.ClosedJaxpr):
        # Constants of an inner program (an inner jit's closed-over numpy array, which may change
        # in place, or a large array the key would keep alive): not cached.
        if value.consts:
            raise _Uncacheable
        _jaxpr_key(value.jaxpr, out)
    elif isinstance(value, jex_core.Jaxpr):
        _jaxpr_key(value, out)
    elif isinstance(value, _PRNG_IMPL):  # a tuple of module-level functions, compared by value
        out.append(value)
    elif isinstance(value, (tuple, list)):
        out.append((type(value), len(value)))
        for v in value:
            _value_key(v, out)
    elif isinstance(value, frozenset):  # shard_map's manual axes
        for v in value:
            _value_key(v, [])  # each a value, or not cached
        out.append(value)
    elif isinstance(value, (float, complex, np.generic)):
        # By type and bytes: 0.0 == -0.0 and 1 == True == 1.0 as numbers, not as parameters.
        out.append((type(value), np.asarray(value).tobytes()))
    elif value is None or isinstance(value, (bool, int, str, bytes)):
        out.append((type(value), value))
    elif isinstance(value, _PLACEMENTS):
        out.append(value)
    elif callable(value) or not type(value).__module__.startswith(_VALUE_MODULES):
        # A callback's function, a user's object: compared by identity it would keep a new one
        # (and what it holds) alive on every call, and match nothing.
        raise _Uncacheable
    else:
        try:
            hash(value)
        except TypeError as e:
            raise _Uncacheable from e
        out.append(value)


def switched_on(variable: str) -> bool:
    """False when the environment variable is ``0``, ``false``, ``off`` or ``no``; on by default."""
    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "off", "no")


def enabled() -> bool:
    """Whether eager calls go through the cache (``JAXREG_EAGER_CACHE``, see :func:`switched_on`)."""
    return switched_on("JAXREG_EAGER_CACHE")


def _evaluate(jaxpr: Any, consts: list[Any], args: list[Any]) -> list[Any]:
    return jax.core.eval_jaxpr(jaxpr, consts, *args)


def trace(fn: Callable[..., Any], *example: Any) -> tuple[Any, Any]:
    """``(closed_jaxpr, out_tree)`` of ``fn`` traced at ``example``'s types (:func:`replay` runs it)."""
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*example)
    return closed, jax.tree.structure(shapes)


def replay(closed: Any, out_tree: Any, *args: Any, consts: list[Any] | None = None) -> Any:
    """The traced function's output on ``args`` (pytrees of its inputs' structure), its
    closed-over values ``consts`` (default: those it was traced with), without tracing it again."""
    consts = closed.consts if consts is None else consts
    return jax.tree.unflatten(out_tree, jax.core.eval_jaxpr(closed.jaxpr, consts, *jax.tree.leaves(args)))


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def call(program: Callable[..., Any], *args: Any, compiled: bool = True) -> Any:
    """``program(*args)``, compiled once per computation when called outside a trace.

    Args:
      program: a pure function of ``args`` (pytrees); it may close over arrays.
      *args: its arguments. Their ``jax.Array`` leaves become the compiled program's inputs;
        other leaves (numpy arrays, Python numbers) are traced as constants, as ``program`` would
        see them called directly.
      compiled: ``False`` calls ``program`` as it is: for a program without a loop (one
        ``vmap`` of all items), whose primitives jax already runs from its own cache, so that
        tracing and a compile per new Python number would only add to each call.

    Returns:
      ``program(*args)``.
    """
    bound = bind(program, *args) if compiled else None
    if bound is None:
        return program(*args)
    try:
        return bound()
    except ValueError:
        # jit's own argument checks (devices, placements) name the cached program's inputs and
        # print the whole program; called as it is, the program raises jax's error about the
        # caller's own arguments (or runs, where op by op jax places them itself).
        return program(*args)


def bind(program: Callable[..., Any], *args: Any) -> Callable[[], Any] | None:
    """``program(*args)`` as a call of its cached compiled program, or ``None`` where :func:`call`
    runs it as it is (under a trace, switched off, or nothing to key it on).

    The program is traced now; the returned function compiles it on its first call (unless the
    cache holds it) and runs it on every call, on the same arguments (the chunk tuner times it).
    """
    leaves, treedef = jax.tree.flatten(args)
    if not enabled() or jax.config.jax_disable_jit or any(_is_tracer(x) for x in leaves):
        return None
    lifted = [isinstance(x, jax.Array) for x in leaves]
    arrays = [x for x, a in zip(leaves, lifted) if a]

    def flat(arrs: list[Any]) -> Any:
        it = iter(arrs)
        return program(*jax.tree.unflatten(treedef, [next(it) if a else x for x, a in zip(leaves, lifted)]))

    try:
        closed, out_tree = trace(flat, arrays)
    except Exception:
        # The program reads an argument's value in Python (a boolean mask, a shape from a sum,
        # an attribute of a concrete array), which a traced argument cannot give: run it as it
        # is, which raises the program's own error if it has one.
        return None
    if any(_is_tracer(c) for c in closed.consts):  # closes over an outer trace's values
        return None
    parts: list[Any] = [tuple(getattr(jax.config, name) for name in _SETTINGS)]
    try:
        _jaxpr_key(closed.jaxpr, parts)
        key = tuple(parts)
        hash(key)
    except (_Uncacheable, TypeError, KeyError):  # KeyError: a variable not bound in its jaxpr
        return None
    run = _COMPILED.get(key)
    if run is None:
        run = jax.jit(functools.partial(_evaluate, closed.jaxpr))
        _COMPILED[key] = run
        while len(_COMPILED) > MAX_ENTRIES:
            _COMPILED.popitem(last=False)
    else:
        _COMPILED.move_to_end(key)
    consts = list(closed.consts)
    return lambda: jax.tree.unflatten(out_tree, run(consts, arrays))


def clear_cache() -> None:
    """Forgets every compiled program."""
    _COMPILED.clear()
