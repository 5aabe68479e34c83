"""The one chunking executor for vmapped work, and how its chunk size is chosen.

``ensemble.map`` (members), ``mc_dropout`` / ``mc_dropout_samples`` (masks), ``es.gradient``
(directions) and ``variational.predict`` (weight samples) all evaluate one function over many
items. :func:`run_chunks` is how: ``vmap`` over a chunk of items, a loop (``lax.fori_loop``)
over chunks, per-item outputs stacked in item order and per-chunk summaries combined (moments,
running sums). :func:`run_auto` runs the program with the chunk :func:`resolve_chunk` chooses when
``chunk_size=None``:

1. **Measured** (the default): on the first call, a few candidate chunkings of the actual
   program are compiled and timed on this machine (always one plain ``vmap`` = all items and
   chunks of 1 = a loop, plus a few powers of two between and the static rule's choice), a
   handful of calls each (at least two, at most five), interleaved, for about
   ``JAXREG_AUTOTUNE_BUDGET`` seconds (default 1.0) of timed calls after the compiles; one
   ``vmap``, the loop and the static rule's choice are always compiled, more candidates only
   while the compiles have taken less than half the budget (a candidate whose first call alone
   exceeds the budget is dropped). The cost is thus
   two to five compiles of the program (for the digits MLP's Adam step on a 2-core CPU, 1.5-3 s
   each) plus up to the budget of timed calls, once per program and shape in a process. The
   fastest is cached per program (call site, the hash of the per-item jaxpr, argument shapes and
   dtypes, number of items, device kind) for the process, and on disk if
   ``JAXREG_AUTOTUNE_CACHE`` is set (``1``: ``$XDG_CACHE_HOME/jaxreg`` or ``~/.cache/jaxreg``;
   any other value: that directory).
2. **Under ``jit``** (the usual case: ``jax.jit(jr.ensemble.train_step(...))``) the arguments
   are tracers, but their shapes and dtypes are known: the candidates are compiled and timed the
   same way on stand-ins (concrete arrays of those shapes and dtypes: floats 0.5, integers 0,
   keys of zeros; the speed of these programs does not depend on the values) while the outer
   function is traced, and the choice is cached as in 1. Only under ``jit`` alone on one device,
   with at most ``STAND_IN_MAX_BYTES`` (1 GiB) of traced arguments (the stand-ins are a second
   copy of them). Traced values the function closes over (a batch closed over inside ``jit``, as
   ``jr.es.gradient(lambda p: loss(p, x, y), ...)`` does) become parameters of the candidates and
   get stand-ins too. Under ``vmap`` or ``grad`` (of the arguments or of a closed-over value), or
   with larger arguments, the cached choice for the same program is used if there is one, else
   the static rule. With several devices nothing is measured or read from the cache: the static
   rule is used (rounded up to a multiple of the devices an explicitly sharded item axis is split
   over), since candidates timed on one device would be placed unlike the real arguments.
3. **Static rule** (``JAXREG_AUTOTUNE=0``, or no cached choice where nothing is measured): one
   ``vmap`` if all items' intermediates (summed bytes of the per-item jaxpr, traced abstractly)
   fit in 128 MiB, else the largest power of two of items within a 48 MiB chunk (constants
   measured on a 2-core AMD EPYC; a proxy, not a measurement of the machine that runs).

An explicit ``chunk_size`` is never changed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import partial_eval as pe

from jaxreg import _checks, _eager, _machine

PyTree = Any

# The static rule (see the module docstring). Measured on a 2-core AMD EPYC (Zen 3, 32 MiB L3),
# jax 0.10.2; on a 2-core Intel Xeon (AVX-512) a plain vmap of 32 members was 1.5x the chunks it
# chose, which is why the default is to measure.
CHUNK_BUDGET_BYTES = 48 << 20
VMAP_ALL_BYTES = 128 << 20
FALLBACK_CHUNK = 4

# Under jit the candidates run on stand-ins, a second copy of the arguments: only while the
# traced arguments hold at most this much (a bound on memory, not a speed constant).
STAND_IN_MAX_BYTES = 1 << 30

DEFAULT_BUDGET_S = 1.0
MAX_ROUNDS = 5

# What abstract tracing (jax.make_jaxpr on ShapeDtypeStructs) raises for a function that needs
# concrete values (a Python `if` on an array, numpy on an array, int() of an array). Any other
# exception is a bug of the function and propagates: the real vmap would raise it too.
ABSTRACT_TRACING_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def check_chunk_size(chunk_size: Any, where: str, minimum: int = 1) -> int | None:
    """``None`` or an int ``>= minimum``; a ``ValueError`` naming ``where`` otherwise."""
    if chunk_size is None:
        return None
    return _checks.check_int_at_least("chunk_size", chunk_size, minimum, where)


# ----------------------------------------------------------------------------------------------
# The executor


def _leading(tree: PyTree) -> int:
    return int(jnp.shape(jax.tree.leaves(tree)[0])[0])


def explicit_shards(tree: PyTree) -> int:
    """How many devices the leading axis of ``tree``'s arrays is split over under explicit sharding.

    With a mesh of explicit axes (``jax.make_mesh``'s default) the sharding is part of an
    array's type, and a chunk of the leading axis must split evenly over those devices. 1 under
    automatic sharding (where XLA places chunks itself) or none.
    """
    return _leading_shards(tree, placed=False)


def placed_shards(tree: PyTree) -> int:
    """How many devices the leading axis of ``tree``'s arrays is split over, on any mesh.

    As :func:`explicit_shards`, and also a concrete array placed on a mesh of automatic axes
    (its ``.sharding``; its type says nothing): a chosen chunk is rounded to these devices, or
    XLA gathers every item onto every device to cut chunks that do not split.
    """
    return _leading_shards(tree, placed=True)


def _leading_shards(tree: PyTree, *, placed: bool) -> int:
    ways = 1
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, (jax.Array, jax.core.Tracer)) or jnp.ndim(leaf) == 0:
            continue
        concrete = placed and not isinstance(leaf, jax.core.Tracer)
        sharding = leaf.sharding if concrete else getattr(jax.typeof(leaf), "sharding", None)
        ways = math.lcm(ways, leading_axis_devices(sharding))
    return ways


def leading_axis_devices(sharding: Any) -> int:
    """How many devices a (named) sharding splits an array's leading axis over; 1 for none."""
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return 1
    names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return math.prod(sharding.mesh.shape[name] for name in names)


def _check_explicit_chunk(xs: PyTree, n: int, chunk: int, where: str) -> None:
    ways = explicit_shards(xs)
    if ways > 1 and chunk < n and chunk % ways:
        raise ValueError(
            f"{where}: chunk_size must be a multiple of the {ways} devices the item axis is sharded over "
            f"(a mesh of explicit axes, as jax.make_mesh makes), or at least the {n} items; got chunk_size = {chunk}."
        )


def run_chunks(
    block_fn: Callable[..., tuple[PyTree, PyTree]],
    xs: PyTree,
    chunk: int,
    combine: Callable[[PyTree, PyTree], PyTree] | None = None,
    *,
    consts: tuple = (),
    where: str = "chunks",
) -> tuple[PyTree, PyTree]:
    """Evaluates ``block_fn`` on chunks of ``xs``'s leading axis; returns ``(summary, outputs)``.

    ``block_fn(block, *consts) -> (summary, outputs)`` sees a block of ``b`` items (``b =
    chunk``, or the remainder) and the arguments shared by all items, passed rather than closed
    over: a flax nnx model merged from them inside may mutate its variables (``nnx.reseed``),
    which nnx refuses for values of an outer trace. ``outputs`` leaves have a leading axis ``b``
    and are stacked back in item order; ``summary`` of the blocks are reduced with
    ``combine(a, b)`` (``None``: no summary). Chunk
    ``j`` holds items ``j, j + K, j + 2K, ...`` (``K`` chunks): the stacked arrays are only
    reshaped, never transposed, so an item axis sharded across devices stays sharded in every
    chunk. The first chunk is peeled to build the output buffers, which then inherit its dtype
    and (under a mesh) its sharding.
    """
    n = _leading(xs)
    chunk = max(1, min(int(chunk), n))
    num_chunks, rem = divmod(n, chunk)
    if num_chunks == 1 and not rem:
        return block_fn(xs, *consts)
    _check_explicit_chunk(xs, n, chunk, where)
    main_n = num_chunks * chunk
    grid = jax.tree.map(lambda x: x[:main_n].reshape((chunk, num_chunks, *x.shape[1:])), xs)

    def slice_at(j: Any) -> PyTree:
        return jax.tree.map(lambda g: jax.lax.dynamic_index_in_dim(g, j, axis=1, keepdims=False), grid)

    first_block = slice_at(0)
    # A chunk's program is traced once, its jaxpr evaluated for the peeled chunk and again in the
    # loop: a second trace of the user's model (flax's Python) took half of an eager mc_dropout.
    # Not under disable_jit, where the loop runs in Python on values (prints, Python ifs: debugging).
    once = num_chunks > 1 and not jax.config.jax_disable_jit
    chunk_fn = functools.partial(_eager.replay, *_eager.trace(block_fn, first_block, *consts)) if once else block_fn
    summary, first = chunk_fn(first_block, *consts)
    if num_chunks > 1:
        buffers = jax.tree.map(lambda o: jnp.repeat(jnp.expand_dims(o, 1), num_chunks, axis=1), first)

        def body(j: jax.Array, carry: tuple[PyTree, PyTree]) -> tuple[PyTree, PyTree]:
            acc, bufs = carry
            s, out = chunk_fn(slice_at(j), *consts)
            acc = combine(acc, s) if combine is not None else acc
            bufs = jax.tree.map(lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o, j, axis=1), bufs, out)
            return acc, bufs

        summary, buffers = jax.lax.fori_loop(1, num_chunks, body, (summary, buffers))
        outputs = jax.tree.map(lambda b: b.reshape((main_n, *b.shape[2:])), buffers)
    else:
        outputs = first
    if rem:
        s, tail = block_fn(jax.tree.map(lambda x: x[main_n:], xs), *consts)
        summary = combine(summary, s) if combine is not None else summary
        outputs = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), outputs, tail)
    return summary, outputs


def pass_arrays(fn: Callable[..., Any], consts: tuple) -> tuple[Callable[..., Any], tuple]:
    """``(fn2, arrays)``: ``fn2(item, *arrays)`` is ``fn(item, *consts)``, with the jax arrays and
    tracers of ``consts`` passed as arguments and its other leaves (Python numbers, strings)
    closed over, as a closure keeps them (static: usable in Python control flow)."""
    leaves, treedef = jax.tree.flatten(consts)
    where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, (jax.Array, jax.core.Tracer))]

    def fn2(item: Any, *arrays: Any) -> Any:
        full = list(leaves)
        for i, a in zip(where, arrays):
            full[i] = a
        return fn(item, *jax.tree.unflatten(treedef, full))

    return fn2, tuple(leaves[i] for i in where)


def map_chunks(
    fn: Callable[..., PyTree], xs: PyTree, chunk: int, *, consts: tuple = (), where: str = "chunks"
) -> PyTree:
    """``jax.vmap(fn, in_axes=(0, None, ...))(xs, *consts)``, ``chunk`` items at a time by :func:`run_chunks`.

    ``consts``' arrays are passed through ``vmap`` (see :func:`run_chunks`; :func:`pass_arrays`).
    Chunks of one item call ``fn`` on the item itself (no ``vmap`` of size 1): the loop then
    runs the program a Python loop of ``jit(fn)`` would run.
    """
    fn, consts = pass_arrays(fn, consts)
    if max(1, min(int(chunk), _leading(xs))) == 1:

        def one(block: PyTree, *cs: Any) -> tuple[None, PyTree]:
            out = fn(jax.tree.map(lambda a: a[0], block), *cs)
            return None, jax.tree.map(lambda a: jnp.expand_dims(a, 0), out)

        return run_chunks(one, xs, 1, consts=consts, where=where)[1]
    in_axes = (0,) + (None,) * len(consts)
    return run_chunks(
        lambda block, *cs: (None, jax.vmap(fn, in_axes=in_axes)(block, *cs)), xs, chunk, consts=consts, where=where
    )[1]


# ----------------------------------------------------------------------------------------------
# The static rule


def _abstract(tree: PyTree) -> PyTree:
    def one(a: Any) -> Any:
        if isinstance(a, (jax.Array, np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(jnp.shape(a), a.dtype)
        return a

    return jax.tree.map(one, tree)


def _itemsize(dtype: Any) -> int:
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return 8  # a threefry key: two uint32 words
    return int(np.dtype(dtype).itemsize)


def jaxpr_bytes(jaxpr: Any) -> int:
    """The summed bytes of every intermediate of ``jaxpr`` (inner jaxprs included).

    A ``scan``'s (``lax.map``'s) stacked outputs count too: its body holds one iteration's.
    """
    from jax.extend.core import jaxprs_in_params

    total = 0
    for eqn in jaxpr.eqns:
        inner = list(jaxprs_in_params(eqn.params))
        if inner:
            total += sum(jaxpr_bytes(j) for j in inner)
            if eqn.primitive.name != "scan":
                continue
        for v in eqn.outvars:
            aval = v.aval
            shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
            if shape is None or dtype is None:
                continue
            total += math.prod(shape) * _itemsize(dtype)
    return total


def trace_item(fn: Callable[..., Any], *args: Any) -> Any | None:
    """``jax.make_jaxpr(fn)`` of one item, traced abstractly; ``None`` if ``fn`` needs concrete values."""
    try:
        return jax.make_jaxpr(fn)(*_abstract(args))
    except ABSTRACT_TRACING_ERRORS:
        return None


def static_chunk(
    num: int, item_bytes: int | None, budget: int = CHUNK_BUDGET_BYTES, vmap_all_bytes: int | None = None
) -> int:
    """Items per chunk: all of them if they fit ``vmap_all_bytes``, else the largest power of two within ``budget``.

    ``vmap_all_bytes=None`` means ``VMAP_ALL_BYTES`` with the default budget, and no such
    shortcut with another budget (a caller's own budget keeps its meaning).
    """
    if item_bytes is None:
        return min(num, FALLBACK_CHUNK)
    if vmap_all_bytes is None:
        vmap_all_bytes = VMAP_ALL_BYTES if budget == CHUNK_BUDGET_BYTES else 0
    if num * item_bytes <= vmap_all_bytes:
        return num
    target = max(1, budget // max(1, item_bytes))
    if target >= num:
        return num
    return 1 << (int(target).bit_length() - 1)


# ----------------------------------------------------------------------------------------------
# Measurement


def candidates(num: int, static: int, *, max_between: int = 3) -> list[int]:
    """Chunk sizes to time: ``num`` (one vmap), 1 (a loop), ``static``, and a few powers of two between.

    The powers of two strictly between 1 and ``num`` are thinned to ``max_between``, spread
    evenly in log scale. The order is the order of measurement (most informative first).
    """
    between = [1 << k for k in range(1, max(1, (num - 1).bit_length())) if 1 < (1 << k) < num]
    if len(between) > max_between:
        picks = np.linspace(0, len(between) - 1, max_between).round().astype(int)
        between = [between[i] for i in sorted(set(picks.tolist()))]
    out: list[int] = []
    for c in [num, 1, static, *between]:
        c = max(1, min(int(c), num))
        if c not in out:
            out.append(c)
    return out


def pick_fastest(
    cands: Sequence[int],
    prepare: Callable[[int], Callable[[], Any]],
    *,
    budget_s: float,
    clock: Callable[[], float] = time.perf_counter,
    max_rounds: int = MAX_ROUNDS,
    always: int = 3,
) -> tuple[int, dict[int, list[float]]]:
    """The candidate whose calls take the least time: compiles, then about ``budget_s`` of timed calls.

    ``prepare(c)`` compiles candidate ``c`` and returns a blocking call. Candidates are prepared
    in order, each followed by one untimed first call: the first ``always`` always (in the order
    of :func:`candidates`: one ``vmap``, a loop and the static rule's choice, so the choice is
    never slower than any of them beyond noise; at 128 digits-MLP members on a 2-core AMD EPYC
    chunks of 8 ran 1.08x a Python loop of jitted steps where one ``vmap`` ran 0.98x and the
    in-program loop 0.96x), the rest while the preparation (compiles included) has taken less
    than half the budget. A candidate whose first call alone exceeds the budget is dropped (a
    handful of its calls cannot fit). Then rounds call every kept candidate once, in alternating
    order (A B C, C B A, ...) so that slow drifts of a shared machine hit all alike, for
    ``budget_s`` seconds of timing (the compiles do not eat it: a single timed call per candidate
    is too noisy to choose by), at least two rounds and at most ``max_rounds``. The score is each
    candidate's fastest call. A candidate whose compile or first call runs out of device memory
    (``RESOURCE_EXHAUSTED``: one ``vmap`` of every item on a GPU) is dropped; when none fits,
    that error is raised.

    Returns:
      ``(chosen, samples)``, ``samples`` the timed calls per kept candidate.
    """
    start = clock()
    runners: dict[int, Callable[[], Any]] = {}
    ran: list[int] = []
    out_of_memory: Exception | None = None
    for i, c in enumerate(cands):
        if i >= always and clock() - start >= 0.5 * budget_s:
            break
        try:
            run = prepare(c)
            t0 = clock()
            run()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            out_of_memory = e  # a candidate the device cannot hold (one vmap of everything): dropped
            continue
        ran.append(c)
        if clock() - t0 <= budget_s:
            runners[c] = run
    if not runners:
        if not ran and out_of_memory is not None:
            raise out_of_memory  # no candidate fits, one item at a time included
        return (ran or cands)[0], {}  # every first call exceeds the budget: the first that ran, unmeasured
    order = list(runners)
    samples: dict[int, list[float]] = {c: [] for c in order}
    if len(order) > 1:
        timing = clock()
        for r in range(max_rounds):
            if r >= 2 and clock() - timing >= budget_s:
                break
            for c in order if r % 2 == 0 else order[::-1]:
                t0 = clock()
                runners[c]()
                samples[c].append(clock() - t0)
    chosen = min(order, key=lambda c: min(samples[c]) if samples[c] else math.inf)
    return chosen, samples


# ----------------------------------------------------------------------------------------------
# The cache and the choice

_CACHE: dict[Hashable, int] = {}
# One measurement per key at a time: threads asking for the same program wait for its choice
# (each measuring would time the others' work and cache whichever finished last).
_KEY_LOCKS: dict[Hashable, threading.RLock] = {}
_KEY_LOCKS_GUARD = threading.Lock()


def _key_lock(key: Hashable) -> threading.RLock:
    with _KEY_LOCKS_GUARD:
        return _KEY_LOCKS.setdefault(key, threading.RLock())


def callable_key(fn: Any) -> Any:
    """A stable cache-key part for a function argument: its module and qualified name, not its
    identity (a lambda written in each call was a new key, measured again every time)."""
    if callable(fn) and not isinstance(fn, str):
        return ("function", getattr(fn, "__module__", None), getattr(fn, "__qualname__", type(fn).__qualname__))
    return fn


def autotune_enabled() -> bool:
    """False when ``JAXREG_AUTOTUNE`` is ``0`` (or ``false``, ``off``, ``no``)."""
    return _eager.switched_on("JAXREG_AUTOTUNE")


def _budget_s() -> float:
    try:
        return float(os.environ.get("JAXREG_AUTOTUNE_BUDGET", DEFAULT_BUDGET_S))
    except ValueError:
        return DEFAULT_BUDGET_S


def cache_dir() -> str | None:
    """The on-disk cache directory, or ``None`` when ``JAXREG_AUTOTUNE_CACHE`` is unset or ``0``."""
    value = os.environ.get("JAXREG_AUTOTUNE_CACHE", "").strip()
    if value in ("", "0"):
        return None
    if value == "1":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "jaxreg")
    return value


def _cache_file() -> str | None:
    d = cache_dir()
    return None if d is None else os.path.join(d, "chunks.json")


def _read_disk() -> dict[str, int]:
    path = _cache_file()
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):  # unreadable, not JSON, not UTF-8: ignored, then rewritten
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path: str) -> Any:
    """An exclusive lock on ``path + ".lock"`` (POSIX ``flock``): writers merge, none loses entries."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): a lost entry costs a measurement, nothing else
        yield
        return
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_disk(key: str, chunk: int) -> None:
    path = _cache_file()
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _locked(path):  # read, add, replace: another process's entry written meanwhile is kept
            data = _read_disk()
            data[key] = int(chunk)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=0, sort_keys=True)
            os.replace(tmp, path)
    except OSError:  # a read-only home: the in-process cache still holds the choice
        pass


def clear_cache() -> None:
    """Forgets the in-process choices (the on-disk file is left alone)."""
    _CACHE.clear()


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray))


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(args)
    sig = []
    for leaf in leaves:
        if _is_array(leaf) or isinstance(leaf, jax.core.Tracer):
            sig.append((tuple(jnp.shape(leaf)), str(leaf.dtype)))
        else:
            sig.append((type(leaf).__name__,))
    return (str(treedef), tuple(sig))


def _one_device(args: tuple[Any, ...]) -> Any:
    """The device every array of ``args`` is on, or ``None`` when that is not one known device.

    Committed arrays say where they are: spread over several devices, ``None`` (a candidate would
    be timed unlike the call). Traced ones do not: ``None`` among several devices. Uncommitted
    arrays, numpy arrays and numbers run on the default device (``jax.default_device``'s, else
    the first), where jit runs them and the stand-ins are placed.
    """
    devices, traced = set(), False
    for leaf in jax.tree.leaves(args):
        if isinstance(leaf, jax.core.Tracer):
            traced = True
        elif isinstance(leaf, jax.Array) and leaf.committed:
            devices |= set(leaf.sharding.device_set)
    if len(devices) > 1 or (traced and jax.device_count() > 1):
        return None
    if devices:
        return devices.pop()
    default = jax.config.jax_default_device
    if isinstance(default, str):
        return jax.devices(default)[0]
    return default if default is not None else jax.devices()[0]


def _device_kind(device: Any) -> str:
    """The measuring device's part of a tuner key: platform, kind (on a CPU its model, vector
    extension and usable cores), device count."""
    if device.platform == "cpu":  # every CPU's device_kind is "cpu": an AMD's choice is not an Intel's
        widest = next((f for f in ("avx512f", "avx2", "sve", "asimd") if f in _machine.cpu_flags()), "")
        kind = f"{_machine.cpu_model()} {widest} x{_machine.usable_cpus()}"
    else:
        kind = device.device_kind
    return f"{device.platform}:{kind}:{jax.device_count()}"


def _is_traced(args: tuple[Any, ...], item_jaxpr: Any) -> bool:
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
        return True
    consts = [] if item_jaxpr is None else item_jaxpr.consts
    return any(isinstance(c, jax.core.Tracer) for c in consts)


def _stands_in(args: tuple[Any, ...], item_jaxpr: Any) -> bool:
    """Whether a traced call can be measured on stand-ins of its arguments.

    Only under ``jit`` alone (every traced argument and every traced value the function closes
    over a ``jit`` tracer, as when ``loss_fn`` closes over a batch inside ``jit``) on one device:
    there the program that will run is the one a concrete call would compile, with the closed-over
    values as parameters. Under ``vmap`` or ``grad`` the program that runs is a transformed one.
    (Several devices are excluded before, by :func:`_choose`, for traced arguments and for
    concrete ones spread over devices.)
    """
    consts = [] if item_jaxpr is None else item_jaxpr.consts
    traced = [x for x in (*jax.tree.leaves(args), *consts) if isinstance(x, jax.core.Tracer)]
    if not all(isinstance(x, pe.DynamicJaxprTracer) for x in traced):
        return False
    # The stand-ins are a second copy of the arguments while the candidates run: not for
    # arguments that could crowd the device's memory.
    return sum(math.prod(x.shape) * _itemsize(x.dtype) for x in traced) <= STAND_IN_MAX_BYTES


def _stand_in(leaf: Any) -> Any:
    """A concrete array with ``leaf``'s shape and dtype (floats 0.5, integers and bools 0, keys of zeros).

    Speed on these programs does not depend on the values (no data-dependent loop is chunked);
    0.5 keeps logarithms, square roots and ``1 / (1 - rate)`` finite.
    """
    if not isinstance(leaf, jax.core.Tracer):
        return leaf
    shape, dtype = tuple(leaf.shape), leaf.dtype
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        data_shape = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype)).shape
        return jax.random.wrap_key_data(jnp.zeros(data_shape, jnp.uint32), impl=jax.random.key_impl(leaf))
    value = 0.5 if jnp.issubdtype(dtype, jnp.inexact) else 0
    # On the default device once (not copied from the host at every timed call: on a GPU that
    # copy would be timed too).
    return jax.device_put(np.full(shape, value, dtype))


def _choose(
    chunk_size: int | None,
    num: int,
    *,
    where: str,
    program: Callable[[int], Callable[..., Any]],
    args: tuple[Any, ...],
    item_jaxpr: Any,
    static: int,
    extra: Hashable = (),
    clock: Callable[[], float] = time.perf_counter,
    memory_bound: bool = False,
    items: PyTree = None,
) -> tuple[int, Callable[[], Any] | None]:
    """Items per chunk: ``chunk_size`` if given, else the measured (or cached, or static) choice.

    Args:
      chunk_size: the caller's explicit choice (kept, capped at ``num``), or ``None``.
      num: the number of items.
      where: the call site, part of the cache key.
      program: ``program(chunk)(*args)`` computes the whole result with that chunk.
      args: the program's arguments (pytrees; their array leaves are passed to the compiled
        candidates, other leaves are held static).
      items: the arguments with the item axis (``()`` when the items are drawn inside; ``None``:
        all of ``args``): a sharded item axis makes the chunks split over its devices, other
        sharded arguments do not.
      item_jaxpr: the per-item jaxpr (:func:`trace_item`), or ``None``: part of the cache key,
        and how a closure over tracers is detected.
      static: the static rule's choice.
      extra: anything else the program depends on (hashable), part of the cache key.
      clock: the timer (a test injects a fake one).
      memory_bound: the chunks bound memory (moments merged over many samples): no candidate
        larger than the static rule's choice is measured (else up to ``num``, one ``vmap``).

    Returns:
      ``(chunk, run)``: the chunk size in ``[1, num]``, and when it was just measured, a call of
      the compiled winner on ``args`` (else ``None``).
    """
    if chunk_size is not None:
        return max(1, min(int(chunk_size), num)), None
    static = max(1, min(int(static), num))
    ways = placed_shards(args if items is None else items)
    if ways > 1 and static < num:  # chunks must split evenly over the devices (explicit sharding)
        static = min(num, -(-static // ways) * ways)
    if num <= 1 or item_jaxpr is None or not autotune_enabled():
        return static, None
    device = _one_device(args)
    if device is None:  # spread over devices, or traced among several: candidates would be placed unlike it
        return static, None
    program_hash = hashlib.sha1(str(item_jaxpr).encode()).hexdigest()
    key = (where, program_hash, _signature(args), num, _device_kind(device), extra, memory_bound)
    if key in _CACHE:
        return _CACHE[key], None
    disk_key = hashlib.sha1(repr((key, jax.__version__)).encode()).hexdigest()
    on_disk = _read_disk().get(disk_key)
    if isinstance(on_disk, int) and 1 <= on_disk <= num:
        _CACHE[key] = on_disk
        return on_disk, None
    traced = _is_traced(args, item_jaxpr)
    if traced and (jax.device_count() > 1 or not _stands_in(args, item_jaxpr)):  # closed-over tracers too
        return static, None
    if _checks.checks_traced():  # candidates would carry checks that only checkify can run
        return static, None
    with _key_lock(key):
        if key in _CACHE:  # another thread measured it while this one waited
            return _CACHE[key], None
        # Under jit: measure now, stage nothing into the trace. Outside, no such context: the
        # eager cache's key is the jaxpr that a later call traces, constants not folded.
        with jax.ensure_compile_time_eval() if traced else contextlib.nullcontext():
            cands = candidates(static if memory_bound else num, static)
            chosen, run = _measure(cands, args, program=program, clock=clock, traced=traced)
        _CACHE[key] = chosen
        _write_disk(disk_key, chosen)
    return chosen, run


def _measure(
    cands: list[int], args: tuple[Any, ...], *, program: Callable, clock: Callable[[], float], traced: bool
) -> tuple[int, Callable[[], Any] | None]:
    """Compiles and times the candidates on ``args`` (on stand-ins of them when ``traced``)."""
    if traced:
        args = jax.tree.map(_stand_in, args)
    leaves, treedef = jax.tree.flatten(args)
    is_arr = [_is_array(x) for x in leaves]
    arrays = [x for x, a in zip(leaves, is_arr) if a]

    def prepare(c: int) -> Callable[[], Any]:
        def flat_program(arrs: list[Any]) -> Any:
            it = iter(arrs)
            full = [next(it) if a else x for x, a in zip(leaves, is_arr)]
            return program(c)(*jax.tree.unflatten(treedef, full))

        if traced:
            # Values the program closes over that exist only in the outer trace (a batch closed
            # over inside jit) become parameters, given stand-ins like the traced arguments.
            closed = jax.make_jaxpr(flat_program)(arrays)
            consts = [_stand_in(x) for x in closed.consts]
            lowered = jax.jit(lambda arrs, cs: jax.core.eval_jaxpr(closed.jaxpr, cs, *arrs)).lower(arrays, consts)
            compiled = lowered.compile()
            runners[c] = lambda: compiled(arrays, consts)
        elif (bound := _eager.bind(program(c), *args)) is not None:
            # Through the eager cache, so that the next call outside jit finds the winner
            # compiled; its first call compiles, and runs once, before the first timed call.
            bound()
            runners[c] = bound
        else:
            compiled = jax.jit(flat_program).lower(arrays).compile()
            runners[c] = lambda: compiled(arrays)
        return lambda: jax.block_until_ready(runners[c]())

    runners: dict[int, Callable[[], Any]] = {}
    chosen, _ = pick_fastest(cands, prepare, budget_s=_budget_s(), clock=clock)
    return chosen, None if traced else runners.get(chosen)


def resolve_chunk(chunk_size: int | None, num: int, **kwargs: Any) -> int:
    """The chunk size :func:`run_auto` would use (same arguments); measures on a cache miss."""
    return _choose(chunk_size, num, **kwargs)[0]


def run_auto(chunk_size: int | None, num: int, **kwargs: Any) -> Any:
    """``program(chunk)(*args)`` with the chunk of :func:`resolve_chunk` (same arguments).

    Right after a measurement the compiled winner's result is returned (no second, op-by-op
    run of the program outside ``jit``).
    """
    chunk, run = _choose(chunk_size, num, **kwargs)
    if run is not None:
        return run()
    # Compiled once per program (op by op a loop over chunks was compiled on every call), one
    # vmap too: the tuner compiled it already, and tracing is paid here for the cache lookup anyway.
    return _eager.call(kwargs["program"](chunk), *kwargs["args"])
