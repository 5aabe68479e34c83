"""Ensembles on a leading member axis: init, bagging, per-member execution, prediction, sharding.

An ensemble is an ordinary pytree whose every leaf has a leading axis of ``num_members``
(params, optimizer state, per-member hyperparameters, keys). :func:`map` runs a per-member
function over that axis, as ``jax.vmap`` would, but in chunks of members inside a loop when
that is faster (on a CPU the stacked working set of many members falls out of cache). Penalties
and masks inside the mapped function see one member at a time, so a stacked bias of shape
``(N, d)`` is never mistaken for a kernel. :class:`Chunked` holds a large ensemble as separate
blocks of members, which :func:`train_step` updates where they lie.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxreg import _checks, _chunking, _eager, _random
from jaxreg._tree import is_none, key_path_str
from jaxreg.uncertainty import Prediction, predict_chunked

PyTree = Any

__all__ = [
    "Chunked",
    "bootstrap_weights",
    "chunk",
    "init",
    "map",
    "num_members",
    "permutations",
    "predict",
    "replicate",
    "shard",
    "split_keys",
    "stack",
    "train_step",
    "unchunk",
    "unstack",
]


def _leaf_name(path: tuple[Any, ...], prefix: str = "") -> str:
    s = key_path_str(path)
    return f"{prefix}{s}" if s else (prefix.rstrip("/") or "<root>")


def num_members(tree: PyTree, *, name: str = "tree") -> int:
    """The size of the leading member axis shared by every leaf of ``tree``.

    Args:
      tree: a stacked pytree (every leaf an array with a leading member axis).
      name: the argument's name, for error messages.

    Returns:
      The number of members.

    Raises:
      ValueError: if ``tree`` has no leaves, a leaf is a scalar, the member axis is empty, or
        leaves disagree, naming the first leaf that disagrees.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.ensemble.num_members({"w": jnp.zeros((4, 2, 3)), "b": jnp.zeros((4, 3))})
      4
    """
    if isinstance(tree, Chunked):
        return sum(_part_sizes(tree, name))
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        raise ValueError(f"{name} has no array leaves, so it has no member axis.")
    sizes = []
    for path, leaf in flat:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"{name}: leaf {_leaf_name(path)!r} is a scalar; stacked leaves need a leading member axis."
            )
        sizes.append((path, shape[0]))
    first_path, n = sizes[0]
    if n == 0:
        raise ValueError(f"{name}: the member axis is empty: leaf {_leaf_name(first_path)!r} has 0 members.")
    for path, size in sizes[1:]:
        if size != n:
            raise ValueError(
                f"{name}: leaves disagree on the member axis: leaf {_leaf_name(path)!r} has {size} members, "
                f"leaf {_leaf_name(first_path)!r} has {n}."
            )
    return int(n)


def _check_num_members(value: Any, where: str) -> int:
    return _checks.check_int_at_least("num_members", value, 1, where)


def _single_key(rng: Any) -> bool:
    rng_shape = jnp.shape(rng)
    if _random.is_key_array(rng):
        return rng_shape == ()
    return rng_shape == (2,)


def split_keys(rng: jax.Array, num_members: int) -> jax.Array:
    """One key per member: ``jax.random.split(rng, num_members)``; stacked keys pass through.

    Raises:
      ValueError: if ``rng`` is not a PRNG key (or stacked keys), ``num_members < 1``, or
        stacked keys have another number of members.

    Examples:
      >>> import jax, jaxreg as jr
      >>> jr.ensemble.split_keys(jax.random.key(0), 3).shape
      (3,)
    """
    _random.check_key(rng, "split_keys", stacked=True)
    num_members = _check_num_members(num_members, "split_keys")
    if _single_key(rng):
        return jax.random.split(rng, num_members)
    n = jnp.shape(rng)[0]
    if n != num_members:
        raise ValueError(f"split_keys: rng holds {n} keys, but num_members = {num_members}.")
    return rng


def init(init_fn: Callable[[jax.Array], PyTree], rng: jax.Array, num_members: int) -> PyTree:
    """Initializes ``num_members`` members, each from its own key, stacked on a leading axis.

    .. math:: \\theta_i = \\mathrm{init}(k_i), \\quad (k_1, \\dots, k_N) = \\mathrm{split}(k, N)

    ``vmap(init_fn)`` runs as one compiled program (not op by op), compiled once per program and
    shapes: another call with the same ``init_fn`` reuses it (a ``jax.jit`` built on each call
    compiled again every time, about 1 s for a small MLP).

    Args:
      init_fn: ``init_fn(rng) -> params`` (e.g. ``lambda k: model.init(k, x)``), pure.
      rng: a PRNG key.
      num_members: ``N >= 1``.

    Returns:
      ``params`` with a leading axis of ``N`` on every leaf.

    Raises:
      ValueError: if ``num_members < 1`` or ``rng`` is not a PRNG key.

    Examples:
      >>> import jax, jaxreg as jr
      >>> params = jr.ensemble.init(lambda k: {"w": jax.random.normal(k, (3,))}, jax.random.key(0), 5)
      >>> params["w"].shape
      (5, 3)
    """
    _checks.check_callable("init_fn", init_fn, "ensemble.init", "a function rng -> params")
    num_members = _check_num_members(num_members, "ensemble.init")
    _random.check_key(rng, "ensemble.init")
    return _eager.call(jax.vmap(init_fn), jax.random.split(rng, num_members))


def bootstrap_weights(rng: jax.Array, num_members: int, num_examples: int) -> jax.Array:
    r"""Bagging as weights: how often each example appears in each member's bootstrap resample.

    Each member draws ``num_examples`` examples uniformly with replacement (multinomial
    resampling); its row counts the draws, so every row sums to ``num_examples`` and about
    :math:`(1 - 1/n)^n \approx e^{-1} = 36.8\%` of the examples get weight 0 (out of bag).
    Weighting each example's loss by its count trains on the resample with static shapes.

    .. math:: w_{ij} = \#\{t : I_{it} = j\}, \quad I_{it} \sim \mathrm{Uniform}\{1..n\}

    Args:
      rng: a PRNG key.
      num_members: ``N >= 1``.
      num_examples: ``n >= 1``.

    Returns:
      float32 array ``(N, n)`` of counts.

    Raises:
      ValueError: if ``num_members < 1``, ``num_examples < 1`` or ``rng`` is not a PRNG key.

    Examples:
      >>> import jax, jaxreg as jr
      >>> w = jr.ensemble.bootstrap_weights(jax.random.key(0), 3, 100)
      >>> w.shape, w.sum(axis=1).tolist()
      ((3, 100), [100.0, 100.0, 100.0])
    """
    num_members = _check_num_members(num_members, "bootstrap_weights")
    n = _checks.check_int_at_least("num_examples", num_examples, 1, "bootstrap_weights")
    _random.check_key(rng, "bootstrap_weights")

    def one(key: jax.Array) -> jax.Array:
        idx = jax.random.randint(key, (n,), 0, n)
        return jnp.zeros(n, jnp.float32).at[idx].add(1.0)

    return jax.vmap(one)(jax.random.split(rng, num_members))


def permutations(rng: jax.Array, num_members: int, num_examples: int) -> jax.Array:
    """An independent data order per member: int32 array ``(N, n)``, each row a permutation of ``range(n)``.

    Raises:
      ValueError: if ``num_members < 1``, ``num_examples < 1`` or ``rng`` is not a PRNG key.

    Examples:
      >>> import jax, jaxreg as jr
      >>> sorted(jr.ensemble.permutations(jax.random.key(0), 2, 4)[1].tolist())
      [0, 1, 2, 3]
    """
    num_members = _check_num_members(num_members, "permutations")
    n = _checks.check_int_at_least("num_examples", num_examples, 1, "permutations")
    _random.check_key(rng, "permutations")
    return jax.vmap(lambda k: jax.random.permutation(k, n).astype(jnp.int32))(jax.random.split(rng, num_members))


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks members' pytrees on a new leading axis.

    Raises:
      ValueError: if ``trees`` is empty or their structures or leaf shapes differ.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.ensemble.stack([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
      (2, 2)
    """
    trees = list(trees)
    if not trees:
        raise ValueError("stack: got no trees; an ensemble needs num_members >= 1.")
    structure = jax.tree.structure(trees[0])
    first = jax.tree_util.tree_flatten_with_path(trees[0])[0]
    for i, t in enumerate(trees[1:], start=1):
        if jax.tree.structure(t) != structure:
            raise ValueError(f"stack: tree {i} has structure {jax.tree.structure(t)}, tree 0 has {structure}.")
        for (path, a), b in zip(first, jax.tree.leaves(t)):
            if jnp.shape(a) != jnp.shape(b):
                raise ValueError(
                    f"stack: members must have the same shapes, got leaf {_leaf_name(path)!r} of shape "
                    f"{jnp.shape(b)} in tree {i} and {jnp.shape(a)} in tree 0."
                )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: PyTree) -> list[PyTree]:
    """Splits a stacked pytree into a list of its members (the inverse of :func:`stack`).

    Raises:
      ValueError: if the leaves disagree on the member axis.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> [m["w"].tolist() for m in jr.ensemble.unstack({"w": jnp.arange(4.0).reshape(2, 2)})]
      [[0.0, 1.0], [2.0, 3.0]]
    """
    if isinstance(tree, Chunked):
        return [member for part in tree.parts for member in unstack(part)]
    n = num_members(tree, name="unstack: tree")
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


# ----------------------------------------------------------------------------------------------
# Chunked: an ensemble held as separate blocks of members


class Chunked(NamedTuple):
    """An ensemble held as consecutive blocks of members, each block a stacked pytree of its own.

    ``parts[0]`` holds members ``0 ... c - 1``, ``parts[1]`` the next ``c``, and so on (the last
    block may be smaller). Each block is its own set of buffers, so a jitted step that takes and
    returns a ``Chunked`` state (:func:`train_step`) updates every block where it lies: a stacked
    state updated a chunk at a time inside one program is written into its full-size outputs by
    ``dynamic-update-slice`` (after a first fill), and static slices of it are joined by a copy.
    Blocks also run side by side on XLA's CPU runtime, which executes independent operations
    concurrently. Build one with :func:`chunk`; :func:`unchunk` stacks it again. It serves many
    members on one device; members spread over devices stay stacked (:func:`shard`).
    """

    parts: tuple[PyTree, ...]


def _part_sizes(chunked: Chunked, name: str = "tree") -> list[int]:
    if not isinstance(chunked.parts, tuple) or not chunked.parts:
        shown = f"{len(chunked.parts)} parts" if isinstance(chunked.parts, tuple) else type(chunked.parts).__name__
        raise ValueError(f"{name}: a Chunked ensemble needs a non-empty tuple of parts, got {shown}.")
    structure = jax.tree.structure(chunked.parts[0])
    for i, part in enumerate(chunked.parts[1:], start=1):
        if jax.tree.structure(part) != structure:
            raise ValueError(f"{name}: part {i} has structure {jax.tree.structure(part)}, part 0 has {structure}.")
    return [num_members(part, name=f"{name} part {i}") for i, part in enumerate(chunked.parts)]


def chunk(tree: PyTree, chunk_size: int) -> Chunked:
    """Splits a stacked pytree into consecutive blocks of ``chunk_size`` members (:class:`Chunked`).

    Member ``i`` goes to block ``i // chunk_size``; the last block holds the remainder. Each
    block's leaves are copies (their own buffers). A ``chunk_size`` of at least the number of
    members gives one block.

    When a chunked state pays: many members on a CPU, where a stacked step slows down once the
    members' weights and optimizer state leave the cache. On the digits MLP (64-256-256-10, Adam,
    L2 + dropout) with 128 members, the jitted :func:`train_step` of a state chunked by 8 ran
    1.39x the stacked step on a 2-vCPU AMD EPYC (``jaxreg bench --only ensemble,torch``). The
    best block size depends on the model and the machine: time a few
    (:func:`jaxreg.benchmark.interleave`). An optimizer state without leaves (``optax.sgd``'s)
    needs no chunking: :func:`train_step` gives it to every block.

    Args:
      tree: a stacked pytree (params, optimizer state, ...).
      chunk_size: members per block, an int ``>= 1``.

    Returns:
      ``Chunked(parts)``.

    Raises:
      ValueError: if ``chunk_size`` is not an int ``>= 1``, ``tree``'s leaves disagree on the
        member axis, or a leaf is placed on several devices (``Chunked`` is for one device).

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> c = jr.ensemble.chunk({"w": jnp.arange(5.0)}, 2)
      >>> [part["w"].tolist() for part in c.parts]
      [[0.0, 1.0], [2.0, 3.0], [4.0]]
      >>> jr.ensemble.unchunk(c)["w"].tolist(), jr.ensemble.num_members(c)
      ([0.0, 1.0, 2.0, 3.0, 4.0], 5)
    """
    chunk_size = _checks.check_int_at_least("chunk_size", chunk_size, 1, "chunk")
    if isinstance(tree, Chunked):
        tree = unchunk(tree)
    n = num_members(tree, name="chunk: tree")
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        devices = getattr(getattr(leaf, "sharding", None), "device_set", ())
        if len(devices) > 1:
            raise ValueError(
                f"chunk: a Chunked state holds its blocks on one device, but tree's leaf {_leaf_name(path)!r} "
                f"is placed on {len(devices)} devices; on several devices keep the stacked state "
                f"(jr.ensemble.shard) and its train_step."
            )
    starts = range(0, n, chunk_size)
    return Chunked(
        tuple(jax.tree.map(lambda a, s=s: jnp.array(a[s : s + chunk_size], copy=True), tree) for s in starts)
    )


def unchunk(chunked: Chunked) -> PyTree:
    """The stacked pytree of a :class:`Chunked` one (its blocks concatenated in member order).

    Raises:
      ValueError: if ``chunked`` is not a :class:`Chunked` or its parts disagree in structure.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.ensemble.unchunk(jr.ensemble.chunk(jnp.arange(3.0), 2)).tolist()
      [0.0, 1.0, 2.0]
    """
    if not isinstance(chunked, Chunked):
        raise ValueError(f"unchunk: expected a jr.ensemble.Chunked, got {type(chunked).__name__}.")
    _part_sizes(chunked, "unchunk")
    if len(chunked.parts) == 1:  # a copy, as with several parts: donating the blocks keeps it alive
        return jax.tree.map(lambda a: jnp.array(a, copy=True), chunked.parts[0])
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *chunked.parts)


def _refuse_chunked(args: Any, where: str) -> None:
    if any(isinstance(x, Chunked) for x in jax.tree.leaves(args, is_leaf=lambda x: isinstance(x, Chunked))):
        raise ValueError(
            f"{where}: a Chunked ensemble is not taken here; pass jr.ensemble.unchunk(...) (stacked), or "
            "call it on each of its parts."
        )


# ----------------------------------------------------------------------------------------------
# map: vmap over members, executed in chunks


def _broadcast_axes(in_axes: Any, args: tuple[Any, ...]) -> list[Any]:
    """``in_axes`` (a prefix of ``args``) as one axis (int or None) per leaf of ``args``."""
    treedef = jax.tree.structure(args)
    if isinstance(in_axes, list):
        in_axes = tuple(in_axes)
    if not (in_axes is None or isinstance(in_axes, int | tuple)) or isinstance(in_axes, bool):
        # jax.vmap's rule: a dict here was read as every argument's prefix
        raise ValueError(
            f"ensemble.map: in_axes must be an int, None, or a tuple with an entry per positional argument, as "
            f"jax.vmap's, got in_axes = {in_axes!r}."
        )
    if not isinstance(in_axes, tuple):
        in_axes = (in_axes,) * len(args)
    if len(in_axes) != len(args):
        raise ValueError(
            f"ensemble.map: in_axes has {len(in_axes)} entries but the function got {len(args)} arguments."
        )
    try:
        full = jax.tree.map(lambda ax, sub: jax.tree.map(lambda _: ax, sub), in_axes, args, is_leaf=is_none)
        axes = treedef.flatten_up_to(full)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"ensemble.map: in_axes = {in_axes} is not a prefix of the arguments' structure {treedef}."
        ) from e
    for ax in axes:
        if ax is not None and (isinstance(ax, bool) or not isinstance(ax, int)):
            raise ValueError(f"ensemble.map: in_axes entries must be ints or None, got {ax!r}.")
    return axes


def _check_member_axis_sharding(named: list[tuple[str, Any, int]], where: str) -> None:
    """On a mesh of explicit axes every mapped leaf splits its member axis alike (jax's vmap
    refused the mix naming no argument: "inconsistent axis specs: m vs None")."""
    first = None
    for label, x, member_axis in named:
        spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None) or ()
        # None too off a mesh of explicit axes (nothing in the type)
        axis = spec[member_axis] if member_axis < len(spec) else None
        axis = axis[0] if isinstance(axis, tuple) and len(axis) == 1 else axis
        if first is None:
            first = (label, axis)
        elif axis != first[1]:
            raise ValueError(
                f"{where}: the mapped arguments split the member axis differently over the mesh: {label} over "
                f"{axis!r}, {first[0]} over {first[1]!r}; place every mapped argument alike (jr.ensemble.shard)."
            )


def map(
    fn: Callable[..., PyTree],
    *,
    in_axes: Any = 0,
    chunk_size: int | None = None,
) -> Callable[..., PyTree]:
    """``jax.vmap(fn, in_axes)`` over the member axis, executed in chunks of members.

    The members are split into ``N / chunk_size`` chunks; a loop (``lax.fori_loop``, like
    ``lax.map``) runs ``vmap(fn)`` on one chunk at a time, so the working set is a chunk's.
    Chunk ``j`` holds members ``j, j + N/c, j + 2N/c, ...``: the stacked arrays are only
    reshaped, never transposed, and a member axis sharded across devices stays sharded inside
    every chunk (keep ``chunk_size`` a multiple of the number of devices; on a mesh of explicit
    axes, ``jax.make_mesh``'s default, another ``chunk_size`` is a ``ValueError`` and the
    automatic one is rounded up to a multiple). Outputs have the
    member axis first (``out_axes=0``) and equal those of ``jax.vmap(fn, in_axes)``.

    Args:
      fn: the per-member function.
      in_axes: as in ``jax.vmap``: an int, ``None`` (broadcast), or a tuple/pytree prefix of
        the arguments holding ints and ``None``.
      chunk_size: members per chunk. ``chunk_size >= N`` is a plain ``vmap``, 1 a loop over
        members. ``None`` chooses by measurement: on the first call (or, under ``jit``, while
        the caller is traced, on stand-in arrays of the same shapes and dtypes), a few chunkings
        of this very program (one ``vmap``, a loop, the static rule's choice and a few powers of
        two between) are compiled and timed on this machine, interleaved, within
        ``JAXREG_AUTOTUNE_BUDGET`` seconds (default 1; plus two to five compiles of the member
        function), and the fastest is cached per program, argument shapes, ``N`` and device (on
        disk too with ``JAXREG_AUTOTUNE_CACHE=1``); values the function closes over that the
        same ``jit`` traces get stand-ins too. Under ``vmap`` or ``grad`` or on several devices
        nothing is timed: the cached choice for the same program is used, else the static rule
        (one ``vmap`` if all members' intermediates fit in 128 MiB, else chunks within 48 MiB;
        constants measured on a 2-core AMD EPYC).
        ``JAXREG_AUTOTUNE=0`` always uses the static rule.

    Returns:
      The mapped function.

    Raises:
      ValueError: if ``chunk_size < 1``; when called, if the mapped leaves disagree on the
        member axis (naming the leaf) or ``in_axes`` does not fit the arguments.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> f = jr.ensemble.map(lambda w, x: w @ x, in_axes=(0, None), chunk_size=2)
      >>> f(jnp.arange(12.0).reshape(6, 2), jnp.ones(2)).tolist()
      [1.0, 5.0, 9.0, 13.0, 17.0, 21.0]
    """
    _checks.check_callable("fn", fn, "ensemble.map")
    chunk_arg = None if chunk_size is None else _checks.check_int_at_least("chunk_size", chunk_size, 1, "ensemble.map")

    def mapped(*args: Any, **kwargs: Any) -> PyTree:
        _refuse_chunked((args, kwargs), "ensemble.map")
        if kwargs:
            # As jax.vmap: keyword arguments are mapped over their leading axis.
            names = tuple(sorted(kwargs))
            positional = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)

            def positional_fn(*all_args: Any) -> PyTree:
                return fn(*all_args[: len(args)], **dict(zip(names, all_args[len(args) :])))

            inner = map(positional_fn, in_axes=(*positional, *(0,) * len(names)), chunk_size=chunk_size)
            return inner(*args, *(kwargs[k] for k in names))
        axes = _broadcast_axes(in_axes, args)
        flat, treedef = jax.tree_util.tree_flatten_with_path(args)
        leaves = [leaf for _, leaf in flat]
        positions = [i for i, ax in enumerate(axes) if ax is not None]
        if not positions:
            raise ValueError("ensemble.map: in_axes maps no argument; there is no member axis.")
        moved, n, first = {}, None, None
        for i in positions:
            path, leaf = flat[i]
            ax = axes[i]
            if jnp.ndim(leaf) == 0 or not -jnp.ndim(leaf) <= ax < jnp.ndim(leaf):
                raise ValueError(
                    f"ensemble.map: argument leaf {_leaf_name(path)!r} has no axis {ax} (shape {jnp.shape(leaf)})."
                )
            x = jnp.asarray(leaf)
            x = x if ax % x.ndim == 0 else jnp.moveaxis(x, ax, 0)
            if n is None:
                n, first = x.shape[0], path
                if n == 0:
                    raise ValueError(
                        f"ensemble.map: the member axis is empty: leaf {_leaf_name(path)!r} has shape {x.shape}."
                    )
            elif x.shape[0] != n:
                raise ValueError(
                    f"ensemble.map: leaves disagree on the member axis: leaf {_leaf_name(path)!r} has {x.shape[0]} "
                    f"members, leaf {_leaf_name(first)!r} has {n}."
                )
            moved[i] = x
        _check_member_axis_sharding(
            [(f"leaf {_leaf_name(flat[i][0])!r}", moved[i], 0) for i in positions], "ensemble.map"
        )

        consts = [None if i in moved else leaf for i, leaf in enumerate(leaves)]
        xs = [moved[i] for i in positions]

        def call(const_leaves: list[Any], mapped_leaves: list[Any]) -> PyTree:
            full = list(const_leaves)
            for i, v in zip(positions, mapped_leaves):
                full[i] = v
            return fn(*jax.tree.unflatten(treedef, full))

        def program(c: int) -> Callable[..., PyTree]:
            # The shared leaves stay closed over: a concrete one is read as a value op by op (its
            # sharding, in Python), as before; an nnx model merged from them may reseed all the same.
            return lambda cs, ms: _chunking.map_chunks(lambda m: call(cs, m), ms, c, where="ensemble.map")

        if chunk_arg is not None:
            return _eager.call(program(min(chunk_arg, n)), consts, xs, compiled=chunk_arg < n)
        jaxpr = _chunking.trace_item(call, consts, [jax.ShapeDtypeStruct(x.shape[1:], x.dtype) for x in xs])
        static = _chunking.static_chunk(n, None if jaxpr is None else _chunking.jaxpr_bytes(jaxpr.jaxpr))
        return _chunking.run_auto(
            None, n, where="ensemble.map", program=program, args=(consts, xs), items=xs, item_jaxpr=jaxpr, static=static
        )

    return mapped


def predict(
    apply_fn: Callable[[PyTree, Any], PyTree],
    stacked_params: PyTree,
    x: Any,
    *,
    chunk_size: int | None = None,
) -> Prediction:
    r"""The ensemble's mean prediction and its variance over members (``ddof=0``).

    .. math::
      \mu = \frac{1}{N} \sum_i f(x; \theta_i), \qquad \sigma^2 = \frac{1}{N} \sum_i (f(x; \theta_i) - \mu)^2

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` for one member (an array or pytree).
      stacked_params: the members' params, stacked on a leading axis.
      x: the inputs, shared by every member.
      chunk_size: members per chunk, as in :func:`map` (``None`` chooses by measurement); the
        chunks' moments are merged (:func:`jaxreg.uncertainty.predict_chunked`).

    Returns:
      ``Prediction(mean, variance)``.

    Raises:
      ValueError: if ``stacked_params``' leaves disagree on the member axis or ``chunk_size < 1``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> pred = jr.ensemble.predict(lambda w, x: w * x, jnp.array([1.0, 3.0]), 2.0)
      >>> float(pred.mean), float(pred.variance)
      (4.0, 4.0)
    """
    _refuse_chunked(stacked_params, "ensemble.predict")
    _checks.check_callable("apply_fn", apply_fn, "ensemble.predict")
    n = num_members(stacked_params, name="ensemble.predict: stacked_params")
    chunk = _chunking.check_chunk_size(chunk_size, "ensemble.predict")

    def program(c: int) -> Callable[..., Prediction]:
        # x stays closed over, as in map: the members' params are the mapped items (an nnx state
        # stacked on the member axis merges from vmap's values).
        return lambda ps, x_: predict_chunked(lambda p: apply_fn(p, x_), ps, c, where="ensemble.predict")

    if chunk is not None:
        return _eager.call(program(chunk), stacked_params, x, compiled=chunk < n)
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), stacked_params)
    jaxpr = _chunking.trace_item(apply_fn, one, x)
    static = _chunking.static_chunk(n, None if jaxpr is None else _chunking.jaxpr_bytes(jaxpr.jaxpr))
    return _chunking.run_auto(
        None,
        n,
        where="ensemble.predict",
        program=program,
        args=(stacked_params, x),
        items=stacked_params,
        item_jaxpr=jaxpr,
        static=static,
    )


def _check_member_state(params: PyTree, opt_state: PyTree, optimizer: optax.GradientTransformation) -> None:
    """One member's params are differentiable and its opt_state is ``optimizer.init``'s for them
    (trace time only): an integer leaf failed in jax.grad, naming no leaf; a state of another
    structure in jax's tree errors; moments of other shapes broadcast against the gradients."""
    where = "ensemble.train_step"
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise ValueError(
                f"{where}: params must be floating point (jax.grad differentiates them), got leaf "
                f"{_leaf_name(path)!r} of dtype {jnp.result_type(leaf)}; keep integer state outside params."
            )
    try:
        expected = jax.eval_shape(optimizer.init, params)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return  # an init that reads values on the host: nothing to compare against
    # Leaf paths, not treedefs: those hold static data (a mask function built twice differs) and
    # tell a list from a tuple (a restored state), which optax does not.
    got_leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    want_leaves = jax.tree_util.tree_flatten_with_path(expected)[0]
    got_paths, want_paths = [_leaf_name(p) for p, _ in got_leaves], [_leaf_name(p) for p, _ in want_leaves]
    if got_paths != want_paths:
        first = next((g, w) for g, w in itertools.zip_longest(got_paths, want_paths) if g != w)
        raise ValueError(
            f"{where}: opt_state must be jax.vmap(optimizer.init)(params), got a state of another structure: leaf "
            f"{first[0]!r} where init's state has {first[1]!r} ({len(got_paths)} leaves for {len(want_paths)})."
        )
    for (path, got), (_, want) in zip(got_leaves, want_leaves):
        if jnp.shape(got) != want.shape:
            raise ValueError(
                f"{where}: opt_state must be jax.vmap(optimizer.init)(params), got leaf {_leaf_name(path)!r} of "
                f"shape {jnp.shape(got)} per member where init gives {want.shape} (built for other params?)."
            )


def train_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    batch_axis: int | None = None,
    chunk_size: int | None = None,
) -> Callable[..., tuple[Any, ...]]:
    """A training step for a whole ensemble: every member its own key, data and hyperparameters.

    ``loss_fn(params, batch, rng, hparams)`` sees ONE member: its params, its batch, its key
    and its hyperparameters (e.g. ``{"l2": scale, "rate": dropout_rate}``, or a penalty object
    such as ``jr.l2(scales)`` whose leaves are stacked). So masks like ``jr.masks.kernels``
    see unstacked leaves, and a sweep over hyperparameters is one ensemble. The returned

    ``step(params, opt_state, batch, rng, hparams=None) -> (params, opt_state, loss[, aux])``

    takes stacked ``params`` and ``opt_state`` (``jax.vmap(optimizer.init)(params)``), a
    ``batch`` shared by all members (``batch_axis=None``) or with a member axis
    (``batch_axis=0``: each member's own data order or bootstrap weights), a single key (split
    into one per member) or stacked keys, and ``hparams`` stacked on the member axis. It
    returns the members' losses (``(N,)``). Wrap it in ``jax.jit``.

    ``params`` and ``opt_state`` may instead both be :class:`Chunked` (:func:`chunk`): each block
    is stepped as one vmap and comes back as its own buffers, member ``i`` with the key, batch
    rows and hyperparameters it gets in the stacked step; losses and ``aux`` stay stacked. On a
    CPU with many members this is faster than any chunking of one stacked state (see
    :class:`Chunked`); ``chunk_size`` is then unused.

    Args:
      loss_fn: ``loss_fn(params, batch, rng, hparams) -> loss`` or ``(loss, aux)``.
      optimizer: an optax ``GradientTransformation``, applied per member; its ``update`` gets the
        member's loss as ``value=`` (for ``optax.contrib.reduce_on_plateau``, ``optax.polyak_sgd``;
        optimizers that take no extra arguments never see it).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      batch_axis: ``None`` (shared batch) or the member axis of the batch's leaves.
      chunk_size: members per chunk, as in :func:`map` (a stacked state only).

    Returns:
      The ensemble step.

    Raises:
      ValueError: at call time, if stacked leaves disagree on the member axis, a params leaf is
        not floating point, a member's ``opt_state`` has other leaves or shapes than
        ``optimizer.init`` gives for its params, or ``loss_fn`` returns a non-scalar loss or an
        output that does not match ``has_aux``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxreg as jr
      >>> loss = lambda p, batch, rng, h: h * jnp.sum((p - batch) ** 2)
      >>> opt = optax.sgd(0.25)
      >>> step = jax.jit(jr.ensemble.train_step(loss, opt))
      >>> params = jnp.zeros((2, 1))
      >>> params, state, losses = step(params, jax.vmap(opt.init)(params), jnp.ones(1), jax.random.key(0),
      ...                              jnp.array([1.0, 2.0]))
      >>> params[:, 0].tolist(), losses.tolist()
      ([0.5, 1.0], [1.0, 2.0])
    """

    _checks.check_callable(
        "loss_fn", loss_fn, "ensemble.train_step", "a function (params, batch, rng, hparams) -> loss"
    )
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise ValueError(
            f"ensemble.train_step: optimizer must be an optax GradientTransformation, got optimizer = {optimizer!r}."
        )
    chunk_size = _chunking.check_chunk_size(chunk_size, "ensemble.train_step")
    has_aux = _checks.check_flag("has_aux", has_aux, "ensemble.train_step")
    if batch_axis is not None and (isinstance(batch_axis, bool) or not isinstance(batch_axis, int)):
        raise ValueError(
            f"ensemble.train_step: batch_axis must be None (a shared batch) or an int (the batch's member "
            f"axis), got batch_axis = {batch_axis!r}."
        )

    with_extra_args = optax.with_extra_args_support(optimizer)

    def checked_loss(params, batch, rng, hparams):
        loss, aux = _checks.split_aux(loss_fn(params, batch, rng, hparams), has_aux, "ensemble.train_step")
        return (loss, aux) if has_aux else loss

    def member_step(params, opt_state, batch, rng, hparams):
        _check_member_state(params, opt_state, optimizer)
        out, grads = jax.value_and_grad(checked_loss, has_aux=has_aux)(params, batch, rng, hparams)
        # optax's scale_by_adam computes decay ** count (float ** int32): standard promotion
        # for the optimizer's own update only, so that a user running strict promotion can use it.
        # value=: the member's loss, as optax's optimizers that read it expect
        # (contrib.reduce_on_plateau, polyak_sgd); the others drop it.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = with_extra_args.update(grads, opt_state, params, value=out[0] if has_aux else out)
        params = optax.apply_updates(params, updates)
        if has_aux:
            loss, aux = out
            return params, opt_state, loss, aux
        return params, opt_state, out

    def step(params: PyTree, opt_state: PyTree, batch: Any, rng: jax.Array, hparams: PyTree = None):
        if isinstance(params, Chunked) or isinstance(opt_state, Chunked):
            return chunked_step(params, opt_state, batch, rng, hparams)
        n = num_members(params, name="ensemble.train_step: params")
        _random.check_key(rng, "ensemble.train_step", stacked=True)
        keys = _place_like(split_keys(rng, n), params) if _single_key(rng) else rng
        mapped = {"opt_state": (opt_state, 0), "batch": (batch, batch_axis), "rng": (keys, 0), "hparams": (hparams, 0)}
        for name, (tree, axis) in mapped.items():
            _check_members(tree, n, axis, name, "ensemble.train_step")
        mapped = {"params": (params, 0), **mapped}
        _check_member_axis_sharding(
            [
                (f"{name} leaf {_leaf_name(path)!r}", leaf, axis % jnp.ndim(leaf))
                for name, (tree, axis) in mapped.items()
                if axis is not None
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
                if jnp.ndim(leaf) > 0
            ],
            "ensemble.train_step",
        )
        return map(member_step, in_axes=(0, 0, batch_axis, 0, 0), chunk_size=chunk_size)(
            params, opt_state, batch, keys, hparams
        )

    def chunked_step(params: Chunked, opt_state: Chunked, batch: Any, rng: jax.Array, hparams: PyTree):
        # Each block is stepped as one vmap and returned as its own buffers; member i gets the key,
        # batch slice and hyperparameters it gets in the stacked step, so the result is the same.
        where = "ensemble.train_step"
        if isinstance(params, Chunked) and not isinstance(opt_state, Chunked) and not jax.tree.leaves(opt_state):
            opt_state = Chunked((opt_state,) * len(params.parts))  # a stateless optimizer's: every block's
        if not (isinstance(params, Chunked) and isinstance(opt_state, Chunked)):
            raise ValueError(
                f"{where}: params and opt_state must both be jr.ensemble.Chunked or both stacked, got "
                f"{type(params).__name__} and {type(opt_state).__name__}."
            )
        sizes = _part_sizes(params, f"{where}: params")
        num_parts = len(opt_state.parts) if isinstance(opt_state.parts, tuple) else None
        if num_parts != len(sizes):
            raise ValueError(
                f"{where}: opt_state must hold one block per block of params ({len(sizes)}), got "
                f"{num_parts if num_parts is not None else type(opt_state.parts).__name__}."
            )
        state_sizes = _part_sizes(opt_state, f"{where}: opt_state") if jax.tree.leaves(opt_state) else sizes
        if state_sizes != sizes:
            raise ValueError(
                f"{where}: opt_state's blocks hold {state_sizes} members, params' {sizes}; chunk both alike "
                f"(jax.vmap(optimizer.init) on each part, or jr.ensemble.chunk of the stacked state)."
            )
        n = sum(sizes)
        _random.check_key(rng, where, stacked=True)
        keys = split_keys(rng, n) if _single_key(rng) else rng
        for name, tree, axis in (("batch", batch, batch_axis), ("rng", keys, 0)):
            _check_members(tree, n, axis, name, where)
        _check_members(hparams, n, 0, "hparams", where)

        def rows(tree: PyTree, axis: int | None, start: int, size: int) -> PyTree:
            if axis is None:
                return tree
            return jax.tree.map(lambda a: jax.lax.slice_in_dim(a, start, start + size, axis=axis), tree)

        outs, start = [], 0
        for p, s, size in zip(params.parts, opt_state.parts, sizes):
            block = map(member_step, in_axes=(0, 0, batch_axis, 0, 0), chunk_size=size)
            outs.append(block(p, s, rows(batch, batch_axis, start, size), keys[start : start + size],
                              rows(hparams, 0, start, size)))  # fmt: skip
            start += size
        new_params = Chunked(tuple(o[0] for o in outs))
        new_state = Chunked(tuple(o[1] for o in outs))
        rest = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *(o[2:] for o in outs))
        return (new_params, new_state, *rest)

    return step


def _check_members(tree: PyTree, n: int, axis: int | None, name: str, where: str) -> None:
    """Every leaf of argument ``name`` has ``n`` members on ``axis`` (``None``: not mapped)."""
    if axis is None:
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = jnp.shape(leaf)
        if not -len(shape) <= axis < len(shape) or shape[axis] != n:
            raise ValueError(
                f"{where}: {name} leaf {_leaf_name(path)!r} has shape {shape}; it needs the member axis "
                f"({axis}) of size {n}, the number of members in params."
            )


def _member_axes(sharding: Any) -> Any:
    """The mesh axes of a ``NamedSharding``'s leading (member) dimension, or ``None``."""
    if not isinstance(sharding, NamedSharding) or not sharding.spec or sharding.spec[0] is None:
        return None
    return sharding.spec[0]


def _place_like(keys: jax.Array, params: PyTree) -> jax.Array:
    """Keys split from one key, placed like the members (the first leaf's member-axis sharding).

    Params sharded by :func:`shard` (``NamedSharding``; with ``jax.make_mesh``'s explicit axes,
    the sharding is part of each array's type, and ``vmap`` requires every mapped input to
    agree) get keys split on the same mesh axes: by ``device_put`` for concrete arrays, by
    ``jax.sharding.reshard`` inside ``jit`` on explicit axes. Otherwise the placement is XLA's.
    """
    leaf = jax.tree.leaves(params)[0]
    if not isinstance(leaf, jax.core.Tracer):
        sharding = getattr(leaf, "sharding", None)
        axes = _member_axes(sharding)
        if axes is None:
            return keys
        return jax.device_put(keys, NamedSharding(sharding.mesh, PartitionSpec(axes)))
    sharding = jax.typeof(leaf).sharding
    axes = _member_axes(sharding)
    if axes is None:
        return keys
    names = axes if isinstance(axes, tuple) else (axes,)
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types))
    if not all(types.get(a) == jax.sharding.AxisType.Explicit for a in names):
        return keys
    return jax.sharding.reshard(keys, sharding.update(spec=PartitionSpec(axes)))


def shard(tree: PyTree, mesh: Mesh, *, axis_name: str | None = None) -> PyTree:
    """Places the member axis of every leaf across the devices of ``mesh`` (``NamedSharding``).

    Each leaf gets ``PartitionSpec(axis_name)``: members are split into contiguous blocks, one
    per device along ``axis_name``; other axes are replicated along the mesh's other axes. A
    jitted ensemble step then runs sharded without code changes (XLA propagates the sharding).

    Args:
      tree: a stacked pytree.
      mesh: a ``jax.sharding.Mesh``.
      axis_name: the mesh axis for members; defaults to the mesh's first axis.

    Returns:
      ``tree`` with its leaves placed by ``jax.device_put`` (a tree without leaves, such as
      ``optax.sgd``'s ``EmptyState``, as it is).

    Raises:
      ValueError: if ``mesh`` is not a ``Mesh``, the leaves disagree on the member axis,
        ``axis_name`` is not an axis of ``mesh``, or the number of members is not a multiple of
        that axis's size.
    """
    if not isinstance(mesh, Mesh):  # None or a device name: "'NoneType' object has no attribute 'axis_names'"
        raise ValueError(f"shard: mesh must be a jax.sharding.Mesh, got mesh = {mesh!r}.")
    axis_name = mesh.axis_names[0] if axis_name is None else axis_name
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"shard: axis_name must be one of the mesh's axes {mesh.axis_names}, got axis_name = {axis_name!r}."
        )
    _refuse_chunked(tree, "shard")
    if not jax.tree.leaves(tree):
        return tree  # nothing to place: an optimizer's EmptyState, a None
    n = num_members(tree, name="shard: tree")
    size = mesh.shape[axis_name]
    if n % size:
        raise ValueError(
            f"shard: the number of members ({n}) must be a multiple of the mesh axis {axis_name!r} of size {size}."
        )
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    return jax.device_put(tree, sharding)


# ----------------------------------------------------------------------------------------------
# replicate: seeds as a member axis


def replicate(tree: PyTree, num: int, *, stacked: bool = False) -> PyTree:
    r"""``num`` copies of a member, or of each member of a stacked tree, on the member axis.

    The usual way to run a configuration under several seeds in one program: replicate its
    member (params, per-member hyperparameters, ...) and then give each copy its own key,
    initialization or resample. With ``stacked=False`` the copies go on a new leading axis:
    leaf shape :math:`s \to (\text{num}, *s)`. With ``stacked=True`` the tree already has a
    member axis of size :math:`N` and each member is repeated ``num`` times in place, as
    ``jnp.repeat(leaf, num, axis=0)``: shape :math:`(N, *s) \to (N \cdot \text{num}, *s)`,
    the copies of member :math:`i` at rows :math:`i \cdot \text{num}, \dots, (i + 1) \cdot
    \text{num} - 1` (so ``reshape(N, num, ...)`` gives a member x copy grid).

    Args:
      tree: one member's pytree, or (with ``stacked=True``) a stacked pytree.
      num: copies per member, an integer >= 1.
      stacked: whether ``tree`` already has a leading member axis.

    Returns:
      The replicated pytree (jax arrays).

    Raises:
      ValueError: if ``num`` is not an integer >= 1, or (``stacked=True``) the leaves disagree
        on the member axis.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.ensemble.replicate({"w": jnp.zeros((3, 2))}, 4)["w"].shape
      (4, 3, 2)
      >>> jr.ensemble.replicate(jnp.array([1.0, 2.0]), 3, stacked=True).tolist()
      [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    """
    num = _checks.check_int_at_least("num", num, 1, "replicate")
    stacked = _checks.check_flag("stacked", stacked, "replicate")
    if stacked:
        num_members(tree, name="replicate: tree")
        return jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x), num, axis=0), tree)
    return jax.tree.map(lambda x: jnp.repeat(jnp.asarray(x)[None], num, axis=0), tree)
