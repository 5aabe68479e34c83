"""A scan-fused training loop with evaluation, early stopping, history and resumable checkpoints.

:func:`fit` runs a user's pure step function over in-memory data. The schedule is cut into
chunks of evaluation blocks; each chunk is one run of a compiled program (a ``while_loop`` over
a traced number of evaluation blocks, each a ``lax.scan`` over ``eval_every`` steps followed by
an evaluation and an early-stopping update), the same program for every chunk length, so compile
time depends neither on ``num_steps`` nor on the chunk lengths, and no Python runs per step.
Everything that is not the step itself is paid once per evaluation block: the block's batch
indices and rngs are computed before its inner scan, members that stopped are frozen by one
select after it, and each epoch's shuffle is drawn once per run (a permutation cache carried from
block to block and chunk to chunk). By default a chunk lasts about :data:`CHUNK_SECONDS` (measured
per program; see :class:`_ChunkPolicy`), so a short run is one chunk and one host sync. Between
chunks the host updates a progress bar, calls an optional callback, saves an optional orbax
checkpoint (:mod:`jaxreg._checkpoint`) and compacts the ensemble: members that stopped leave the
computation. A chunk ends early once every member has stopped, or once few enough remain for a
smaller stack (so compaction happens at the same block whatever the chunk lengths).

Every random draw is derived from ``rng`` and the global step index (the shuffling of epoch ``e``
from ``fold_in(data_key, e)``, the step's rng from ``fold_in(step_key, step)``), never from a
carried Python state, so a run killed mid-way and resumed from its last checkpoint ends with the
same numbers as an uninterrupted run.

An optional ensemble axis (``num_members``): the state's leaves are stacked on a leading member
axis, the step and evaluation are ``vmap``-ped, each member shuffles with its own key and stops on
its own; stopped members are frozen. Per-member hyperparameters (a penalty scale, a dropout rate,
a learning rate of :func:`jaxreg.sweepable`) are leaves of the state with a member axis: the step
reads them from its state and returns them unchanged, so a grid of regimes trains as one program.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.typing import ArrayLike

from jaxreg import _checkpoint, _checks, _chunking, _random
from jaxreg._tree import wider_dtype
from jaxreg.early_stopping import EarlyStopping, EarlyStoppingState, checked_retrain_budget, freeze_stopped
from jaxreg.pruning import SuccessiveHalving

PyTree = Any
StepFn = Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]
EvalFn = Callable[[PyTree, PyTree], Any]

__all__ = ["FitResult", "History", "fit", "retrain"]

_MONITORS = ("val_loss", "metric")
_NEVER = 2**30  # patience of the internal best-tracker when no early stopping is asked for
_RECORDS = ("train_loss", "val_loss", "metric", "stopped", "pruned")
# The default chunk policy (steps_per_chunk=None): chunks of about CHUNK_SECONDS of device time
# (one progress tick), at most _MAX_AUTO_BLOCKS evaluation blocks.
CHUNK_SECONDS = 0.5
_MAX_AUTO_BLOCKS = 256


class History(NamedTuple):
    """Per-evaluation records; with ``num_members`` every field but ``step`` is ``(num_members, num_evals)``.

    The member axis comes first, as in every other stacked tree of jaxreg. A member records NaN
    losses for the evaluation blocks it did not train in (stopped before the block, or its
    ``member_steps`` spent).

    Attributes:
      step: (num_evals,) int32, parameter updates scheduled before each evaluation.
      train_loss: mean of the member's step losses since the previous evaluation (float32).
      val_loss: validation loss at each evaluation (NaN when there is no ``eval_fn``).
      metric: the evaluation's metric (NaN when there is no ``eval_fn``).
      stopped: bool, whether the member had stopped after this evaluation (early-stopped or pruned).
      pruned: bool, whether ``prune`` stopped the member at this evaluation.
    """

    step: jax.Array
    train_loss: jax.Array
    val_loss: jax.Array
    metric: jax.Array
    stopped: jax.Array
    pruned: jax.Array


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      state: the final training state (members frozen where they stopped).
      best: ``snapshot_fn(state)`` at each member's best evaluation (``None`` without ``eval_fn``).
      history: a :class:`History`, cut to the evaluations that ran (all members stopped ends a run
        at the next chunk boundary).
      stopping: the final :class:`jaxreg.EarlyStoppingState` (``None`` without ``eval_fn``).
      best_num_steps: updates done when the best snapshot was taken (int32; 0 if no evaluation
        improved), the input of :func:`jaxreg.retrain_budget`.
      num_steps: the number of steps the loop ran (a multiple of ``eval_every``; less than asked
        when every member stopped before the end).
      member_steps_computed: member-steps the compiled programs actually ran (the stacked size
        of each chunk, padding of compaction included, times its steps); without compaction
        ``num_members * num_steps``.
    """

    state: PyTree
    best: PyTree
    history: History
    stopping: EarlyStoppingState | None
    best_num_steps: jax.Array
    num_steps: int
    member_steps_computed: int = 0


# ----------------------------------------------------------------------------- validation


def _leaf_paths(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path) or "<root>", leaf) for path, leaf in flat]


def _num_examples(train_data: PyTree, where: str = "fit", name: str = "train_data") -> int:
    leaves = _leaf_paths(train_data)
    if not leaves:
        raise ValueError(f"{where}: {name} must hold at least one array, got an empty pytree.")
    sizes = {path: np.shape(leaf)[0] if np.ndim(leaf) > 0 else None for path, leaf in leaves}
    if any(s is None for s in sizes.values()) or len(set(sizes.values())) != 1:
        raise ValueError(
            f"{where}: every leaf of {name} must have the same leading (example) axis, got leading sizes {sizes}."
        )
    return next(iter(sizes.values()))


def _check_member_axis(name: str, tree: PyTree, num_members: int, where: str = "fit") -> None:
    for path, leaf in _leaf_paths(tree):
        shape = np.shape(leaf)
        if len(shape) == 0 or shape[0] != num_members:
            raise ValueError(
                f"{where}: every leaf of {name} must have a leading member axis of size num_members = "
                f"{num_members}, got {name}{path} with shape {shape}."
            )


def _renamed(where: str, new_name: str, new: Any, old_name: str, old: Any) -> Any:
    """``new``, or the deprecated ``old`` with a DeprecationWarning (both given: ValueError)."""
    if old is None:
        return new
    if new is not None:
        raise ValueError(f"{where}: pass {new_name} only ({old_name} is its deprecated name), got both.")
    warnings.warn(
        f"{where}: {old_name}= is deprecated, use {new_name}= (it will be removed in the next release).",
        DeprecationWarning,
        stacklevel=3,
    )
    return old


class _Schedule(NamedTuple):
    """The checked integers of a call."""

    num_steps: int
    batch_size: int
    eval_every: int
    steps_per_chunk: int | None  # None: chosen by time (see _ChunkPolicy)
    num_examples: int
    num_members: int
    single: bool

    @property
    def num_evals(self) -> int:
        return self.num_steps // self.eval_every

    @property
    def max_blocks(self) -> int:
        """The longest chunk in evaluation blocks (static: the size of the chunk's records buffer)."""
        if self.steps_per_chunk is not None:
            return self.steps_per_chunk // self.eval_every
        return min(1 << max(0, math.ceil(math.log2(self.num_evals))), _MAX_AUTO_BLOCKS)


def _check_schedule(num_steps, batch_size, eval_every, steps_per_chunk, num_members, train_data, state) -> _Schedule:
    num_steps = _checks.check_int_at_least("num_steps", num_steps, 1, "fit")
    batch_size = _checks.check_int_at_least("batch_size", batch_size, 1, "fit")
    eval_every = _checks.check_int_at_least("eval_every", eval_every, 1, "fit")
    if num_steps % eval_every:
        raise ValueError(
            f"fit: eval_every must divide num_steps (evaluations happen after every eval_every "
            f"steps), got eval_every = {eval_every} for num_steps = {num_steps}."
        )
    if steps_per_chunk is not None:
        steps_per_chunk = _checks.check_int_at_least("steps_per_chunk", steps_per_chunk, 1, "fit")
    if steps_per_chunk is not None and (steps_per_chunk % eval_every or num_steps % steps_per_chunk):
        raise ValueError(
            f"fit: steps_per_chunk must be a multiple of eval_every = {eval_every} that divides num_steps = "
            f"{num_steps}, got steps_per_chunk = {steps_per_chunk}."
        )
    if not jax.tree.leaves(state):  # jax's vmap error named no argument
        raise ValueError(f"fit: state must hold at least one array leaf, got state = {state!r}.")
    n = _num_examples(train_data)
    if batch_size > n:
        raise ValueError(f"fit: batch_size must be at most the {n} training examples, got batch_size = {batch_size}.")
    single = num_members is None
    if single:
        num_members = 1
    else:
        num_members = _checks.check_int_at_least("num_members", num_members, 1, "fit")
        _check_member_axis("state", state, num_members)
    return _Schedule(num_steps, batch_size, eval_every, steps_per_chunk, n, num_members, single)


def _check_callables(
    step_fn, eval_fn, snapshot_fn, callback, checkpoint_dir, compact, progress, where: str = "fit"
) -> None:
    """The functions, flags and path of a call (a TypeError deep in the run otherwise, or after a chunk)."""
    if not callable(step_fn):
        raise ValueError(
            f"{where}: step_fn must be a function (state, batch, rng) -> (state, loss), got step_fn = {step_fn!r}."
        )
    for name, value in (("eval_fn", eval_fn), ("snapshot_fn", snapshot_fn), ("callback", callback)):
        if value is not None and not callable(value):
            raise ValueError(f"{where}: {name} must be a function or None, got {name} = {value!r}.")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, str | os.PathLike):
        raise ValueError(f"fit: checkpoint_dir must be a path or None, got checkpoint_dir = {checkpoint_dir!r}.")
    if checkpoint_dir is not None and os.fspath(checkpoint_dir) == "":  # os.path.abspath("") is the cwd
        raise ValueError(f"fit: checkpoint_dir must name a directory, got checkpoint_dir = {checkpoint_dir!r}.")
    if checkpoint_dir is not None and os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise ValueError(f"fit: checkpoint_dir must be a directory, got checkpoint_dir = {checkpoint_dir!r}, a file.")
    for name, value in (("compact", compact), ("progress", progress)):
        _checks.check_flag(name, value, "fit")
    if callback is not None:
        try:
            signature = inspect.signature(callback)
        except (TypeError, ValueError):  # no signature to read (a builtin): called as it is
            signature = None
        try:  # called after the first chunk otherwise: a TypeError once a chunk's work is done
            if signature is not None:
                signature.bind(0, None, None)
        except TypeError:
            raise ValueError(
                f"{where}: callback must take (num_steps, history, state), got callback = {callback!r} "
                f"with signature {signature}."
            ) from None


def _check_options(eval_fn, monitor, early_stopping, prune) -> str:
    """Checks the evaluation options; returns the mode pruning ranks by."""
    if monitor not in _MONITORS:
        raise ValueError(f'fit: monitor must be "val_loss" or "metric", got monitor = {monitor!r}.')
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise ValueError(
            f"fit: early_stopping must be a jaxreg.EarlyStopping, got early_stopping = {early_stopping!r}."
        )
    if early_stopping is not None and eval_fn is None:
        raise ValueError("fit: early_stopping needs an eval_fn to monitor, got eval_fn = None.")
    if monitor == "metric" and early_stopping is None and eval_fn is not None:
        # Without a stopper nothing says whether a higher metric is better, and the best
        # snapshot would silently keep the lowest one (the worst accuracy).
        raise ValueError(
            'fit: monitor = "metric" needs early_stopping, an EarlyStopping whose mode says which way is '
            'better (mode="max" for an accuracy); to keep the best snapshot without stopping, pass '
            "EarlyStopping(patience=num_steps // eval_every + 1, mode=...); got early_stopping = None."
        )
    if prune is None:
        return "min"
    if not isinstance(prune, SuccessiveHalving):
        raise ValueError(f"fit: prune must be a jaxreg.SuccessiveHalving or None, got prune = {prune!r}.")
    prune.check("fit")
    if eval_fn is None:
        raise ValueError("fit: prune needs an eval_fn to rank the members by, got eval_fn = None.")
    return prune.mode or (early_stopping.mode if early_stopping is not None else "min")


def _per_member(name: str, tree: PyTree, num_members: int) -> PyTree:
    """Every leaf of ``tree`` as a host array of shape ``(num_members,)`` (scalars broadcast)."""

    def widen(path, leaf):
        leaf = np.asarray(leaf)
        if leaf.ndim == 0:
            return np.broadcast_to(leaf, (num_members,))
        if leaf.shape != (num_members,):
            raise ValueError(
                f"fit: {name}{jax.tree_util.keystr(path)} must be a scalar or have shape (num_members,) = "
                f"({num_members},), got shape {leaf.shape}."
            )
        return leaf

    return jax.tree_util.tree_map_with_path(widen, tree)


# ----------------------------------------------------------------------------- the contract


def _shapes(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: f"{jnp.dtype(a.dtype).name}{list(a.shape)}", tree)


def _check_step_contract(step_fn: StepFn, state: PyTree, batch: PyTree, rng: Any) -> None:
    """``step_fn(state, batch, rng) -> (new_state, scalar loss)`` with new_state shaped like state."""

    def no_text(out: Any) -> Any:  # a string loss failed in jax's eval_shape, naming neither
        if isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[1], str | bytes):
            raise ValueError(f"fit: step_fn must return a real scalar loss, got loss = {out[1]!r}.")
        return out

    out = jax.eval_shape(lambda *a: no_text(step_fn(*a)), state, batch, rng)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise ValueError(
            f"fit: step_fn must return a pair (new_state, loss) for one member, got {_shapes(out)} "
            f"(state: {_shapes(state)})."
        )
    new_state, loss = out
    if jax.tree.structure(new_state) != jax.tree.structure(state):
        raise ValueError(
            f"fit: step_fn must return a new_state with the structure of state, got new_state = "
            f"{_shapes(new_state)} for state = {_shapes(state)}."
        )
    for (path, new), old in zip(jax.tree_util.tree_flatten_with_path(new_state)[0], jax.tree.leaves(state)):
        if new.shape != old.shape or new.dtype != old.dtype:
            name = jax.tree_util.keystr(path) or "<root>"
            raise ValueError(
                f"fit: step_fn must keep every leaf's shape and dtype (the state is a scan carry), got "
                f"new_state{name} = {_shapes(new)} for state{name} = {_shapes(old)}."
            )
    if not hasattr(loss, "shape") or loss.shape != ():
        raise ValueError(f"fit: step_fn must return a scalar loss for one member, got loss = {_shapes(loss)}.")
    if not (jnp.issubdtype(loss.dtype, jnp.integer) or jnp.issubdtype(loss.dtype, jnp.floating)):
        # complex: its imaginary part was dropped from the history; bool: the losses 1 and 0 (as eval_fn's)
        raise ValueError(f"fit: step_fn must return a real scalar loss, got a loss of dtype {loss.dtype}.")


def _check_eval_contract(eval_fn: EvalFn, state: PyTree, val_data: PyTree) -> None:
    """``eval_fn(state, val_data) -> scalar`` or ``(scalar val_loss, scalar metric)``, real numbers."""

    def no_text(out: Any) -> Any:  # a string failed in jax's eval_shape, naming neither
        parts = out if isinstance(out, tuple | list) and len(out) == 2 else (out,)
        for part in parts:
            if isinstance(part, str | bytes):
                raise ValueError(f"fit: eval_fn must return real numbers, got {part!r}.")
        return out

    out = jax.eval_shape(lambda s, v: no_text(eval_fn(s, v)), state, val_data)
    parts = out if isinstance(out, tuple | list) and len(out) == 2 else (out,)
    if not all(hasattr(p, "shape") and p.shape == () for p in parts):
        raise ValueError(
            f"fit: eval_fn must return a scalar val_loss or a pair (val_loss, metric) of scalars for one "
            f"member, got {_shapes(out)}."
        )
    for p in parts:  # True and False were the losses 1 and 0
        if not (jnp.issubdtype(p.dtype, jnp.integer) or jnp.issubdtype(p.dtype, jnp.floating)):
            raise ValueError(f"fit: eval_fn must return real numbers, got a value of dtype {p.dtype}.")


def _split_eval(out: Any) -> tuple[jax.Array, jax.Array]:
    if isinstance(out, tuple | list) and len(out) == 2:
        loss, metric = out
    else:
        loss = metric = out
    return _at_least_float32(loss), _at_least_float32(metric)


def _at_least_float32(x: Any) -> jax.Array:
    """A float64 value stays float64 for the stopper and the rungs (rounded to float32 it tied
    values 1e-9 apart under x64); the history records hold float32."""
    x = jnp.asarray(x)
    return x.astype(wider_dtype(x.dtype, jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)


# ----------------------------------------------------------------------------- the compiled chunk


def _identity(tree: PyTree) -> PyTree:
    return tree


class _Plan(NamedTuple):
    """Static part of the chunk program (functions hash by identity, so repeated fits reuse it)."""

    step_fn: StepFn
    eval_fn: EvalFn | None
    snapshot_fn: Callable[[PyTree], PyTree]
    monitor: str
    num_examples: int
    batch_size: int
    eval_every: int
    max_blocks: int  # the longest chunk, in evaluation blocks (the size of the records buffer)
    mask_budget: bool  # some member's budget ends inside an evaluation block: freeze per step
    prune: SuccessiveHalving | None
    prune_mode: str
    rungs: tuple[int, ...]


class _Consts(NamedTuple):
    """Arguments of the chunk program; all but the data have a leading member axis."""

    train_data: PyTree
    val_data: PyTree
    stopper: EarlyStopping
    budget: jax.Array
    data_keys: jax.Array
    step_keys: jax.Array


def _full_batch(plan: _Plan) -> bool:
    """Every step sees the whole training set: its batch is ``train_data`` itself, no shuffle."""
    return plan.batch_size == plan.num_examples


def _epochs_per_block(plan: _Plan) -> int:
    """How many epochs one block of ``eval_every`` steps can touch (the slots of the permutation cache)."""
    if _full_batch(plan):
        return 0  # no permutation is ever drawn
    steps_per_epoch = plan.num_examples // plan.batch_size
    return (plan.eval_every - 1) // steps_per_epoch + 2


def _permutation(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.permutation(key, n)``, bit for bit, about 3x faster on CPU.

    jax shuffles by stable ``lax.sort_key_val`` rounds on random 32-bit keys; XLA's CPU sort of
    two operands with a comparator is slow. Sorting the 64-bit words ``key << 32 | position``
    (one operand, the default order) gives the same order (ties by position = stable), so the
    same rounds are run on them. The 64-bit words exist only inside this function.
    """
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))  # as jax's _shuffle
    x = jnp.arange(n, dtype=jnp.int32)
    for _ in range(rounds):
        key, sub = _random.split(key)
        bits = _random.bits(sub, (n,))
        with jax.enable_x64(True):
            words = (bits.astype(jnp.uint64) << jnp.uint64(32)) | jnp.arange(n, dtype=jnp.uint64)
            order = (jnp.sort(words) & jnp.uint64(0xFFFFFFFF)).astype(jnp.int32)
        x = x[order]
    return x


def _refresh_permutations(plan: _Plan, data_keys: jax.Array, cache, first_epoch: jax.Array, last_epoch: jax.Array):
    """The permutation cache holding epochs ``first_epoch ... last_epoch`` (the epochs of a block).

    ``cache = (perms, epochs)``: ``perms[:, j]`` is the ``(members, n)`` permutation of epoch
    ``epochs[j]``, and slot ``j`` holds an epoch ``e`` with ``e % slots == j``. Only slots that the
    block needs and that hold another epoch are recomputed (a ``lax.cond`` per slot, once per
    block); the cache is carried from block to block and from chunk to chunk, so every epoch's
    permutations are drawn once per run (a sort of ``n`` keys per member: on a small model the
    most expensive thing a block does besides its steps).
    """
    slots = _epochs_per_block(plan)

    def slot(perms, j):
        want = first_epoch + (j - first_epoch) % slots
        held = cache[1][j]
        keep = jnp.logical_or(held == want, want > last_epoch)

        def draw(perms):
            new = jax.vmap(lambda k: _permutation(_random.fold_in(k, want), plan.num_examples))(data_keys)
            return jax.lax.dynamic_update_index_in_dim(perms, new, j, axis=1)

        return jax.lax.cond(keep, lambda p: p, draw, perms), jnp.where(want > last_epoch, held, want)

    perms, epochs = jax.lax.scan(slot, cache[0], jnp.arange(slots, dtype=jnp.int32))
    return perms, epochs


def _empty_cache(plan: _Plan, num_members: int):
    """A permutation cache holding no epoch (every slot is drawn when first needed)."""
    return _empty_cache_arrays(num_members, _epochs_per_block(plan), plan.num_examples)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _empty_cache_arrays(num_members: int, slots: int, num_examples: int):
    # One small program (two eager ops would be two dispatches per fit call).
    return jnp.zeros((num_members, slots, num_examples), jnp.int32), jnp.full((slots,), -1, jnp.int32)


def _block_inputs(plan: _Plan, perms: jax.Array, steps: jax.Array, step_keys: jax.Array):
    """Batch indices ``(eval_every, members, batch)`` and rngs ``(eval_every, members)`` of a block.

    A full batch has no indices (``None``): every step takes ``train_data`` as it is.
    """
    rngs = jax.vmap(lambda s: jax.vmap(lambda k: _random.fold_in(k, s))(step_keys))(steps)
    if _full_batch(plan):
        return None, rngs
    n, batch_size = plan.num_examples, plan.batch_size
    steps_per_epoch = n // batch_size
    num_members = perms.shape[0]
    slot = (steps // steps_per_epoch) % perms.shape[1]
    offset = slot * n + (steps % steps_per_epoch) * batch_size  # (eval_every,)
    flat = offset[:, None] + jnp.arange(batch_size, dtype=jnp.int32)[None, :]
    idx = jnp.take(perms.reshape(num_members, -1), flat.reshape(-1), axis=1)
    idx = jnp.moveaxis(idx.reshape(num_members, plan.eval_every, batch_size), 1, 0)
    return idx, rngs


def _train_block(plan: _Plan, consts: _Consts, state: PyTree, idx: Any, rngs: jax.Array, steps: jax.Array):
    """``eval_every`` steps of every member (no freezing but the budget's); per-step losses.

    ``idx=None`` (a full batch): every member's step takes the shared ``train_data`` unbatched
    (``in_axes=None``), so no per-member copy of the data is gathered.
    """

    def one_step(state, xs):
        idx_s, rng_s, s = xs
        if idx_s is None:
            new, loss = jax.vmap(plan.step_fn, in_axes=(0, None, 0))(state, consts.train_data, rng_s)
        else:
            batch = jax.tree.map(lambda a: a.at[idx_s].get(mode="promise_in_bounds"), consts.train_data)
            new, loss = jax.vmap(plan.step_fn)(state, batch, rng_s)
        new = jax.tree.map(lambda a, b: jax.lax.convert_element_type(a, b.dtype), new, state)
        if plan.mask_budget:
            new = freeze_stopped(s >= consts.budget, new, state)
        return new, jnp.asarray(loss, jnp.float32)

    return jax.lax.scan(one_step, state, (idx, rngs, steps))


def _block_train_loss(plan: _Plan, losses: jax.Array, steps: jax.Array, budget: jax.Array, active: jax.Array):
    """Mean loss of the steps each member ran in the block (NaN for members that ran none)."""
    if plan.mask_budget:
        done = steps[:, None] < budget[None, :]
        count = jnp.sum(done, axis=0, dtype=jnp.int32)
        total = jnp.sum(jnp.where(done, losses, jnp.float32(0)), axis=0)
        mean = total / jnp.maximum(count, 1).astype(jnp.float32)
    else:
        mean = jnp.mean(losses, axis=0)
    return jnp.where(active, mean, jnp.float32(jnp.nan))


def _evaluate(
    plan: _Plan, consts: _Consts, state: PyTree, es: EarlyStoppingState, active: jax.Array, eval_index, steps_done
):
    """Evaluation, early-stopping update and pruning of active members; the block's records.

    A rung ranks the members still running after it: active, not stopped, budget not spent
    (``steps_done < budget``); a member whose budget ends at the rung takes no place."""
    nan = jnp.float32(jnp.nan)
    num_members = active.shape[0]
    pruned = jnp.zeros((num_members,), jnp.bool_)
    if plan.eval_fn is None:
        val_loss = metric = jnp.full((num_members,), nan)
        return es, val_loss, metric, pruned
    val_loss, metric = jax.vmap(lambda s: _split_eval(plan.eval_fn(s, consts.val_data)))(state)
    watched = val_loss if plan.monitor == "val_loss" else metric
    snapshot = jax.vmap(plan.snapshot_fn)(state)
    updated = jax.vmap(lambda st, e, m, p: st.update(e, m, p))(consts.stopper, es, watched, snapshot)
    es = freeze_stopped(jnp.logical_not(active), updated, es)
    if plan.rungs:
        running = jnp.logical_and(active, jnp.logical_not(es.stopped))
        running = jnp.logical_and(running, steps_done < consts.budget)
        keep = plan.prune.keep(watched, running, mode=plan.prune_mode)
        at_rung = jnp.any(eval_index == jnp.asarray(plan.rungs, jnp.int32))
        pruned = jnp.logical_and(at_rung, jnp.logical_and(running, jnp.logical_not(keep)))
        es = es._replace(stopped=jnp.logical_or(es.stopped, pruned))
    records = [jnp.where(active, v.astype(jnp.float32), nan) for v in (val_loss, metric)]
    return es, *records, pruned


@functools.partial(jax.jit, static_argnames=("plan",))
def _run_chunk(state, es, perms, epochs, first_block, num_blocks, shrink_at, consts: _Consts, *, plan: _Plan):
    """Up to ``num_blocks`` evaluation blocks from block ``first_block`` (all three traced).

    One program for every chunk of a run whatever its length (a ``while_loop`` over blocks, at
    most ``plan.max_blocks``), so the host may choose chunk lengths freely without compiling
    again; the loop ends early once no member is active, or once ``shrink_at`` or fewer are
    (compaction's next smaller stack: it then starts at that block, wherever the host's chunks
    end, so the numbers do not depend on chunk lengths; ``-1`` without compaction). Returns the
    carry, the permutation cache, the records ``(max_blocks, members)`` of which the first
    ``blocks_run`` are written, and ``blocks_run``.
    """
    member = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
    batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((plan.batch_size, *a.shape[1:]), a.dtype), consts.train_data)
    _check_step_contract(
        plan.step_fn, member, batch, jax.ShapeDtypeStruct(consts.step_keys.shape[1:], consts.step_keys.dtype)
    )
    if plan.eval_fn is not None:
        _check_eval_contract(plan.eval_fn, member, consts.val_data)

    steps_per_epoch = plan.num_examples // plan.batch_size
    num_members = consts.budget.shape[0]

    def active_at(es, t0):
        return jnp.logical_and(jnp.logical_not(es.stopped), t0 < consts.budget)

    def cond(carry):
        k, _, es, _, _ = carry
        t0 = (first_block + k) * plan.eval_every
        count = jnp.sum(active_at(es, t0), dtype=jnp.int32)
        return jnp.logical_and(k < num_blocks, count > jnp.maximum(shrink_at, 0))

    def block(carry):
        k, state, es, cache, records = carry
        t0 = (first_block + k) * plan.eval_every
        steps = t0 + jnp.arange(plan.eval_every, dtype=jnp.int32)
        if not _full_batch(plan):
            cache = _refresh_permutations(
                plan, consts.data_keys, cache, t0 // steps_per_epoch, (t0 + plan.eval_every - 1) // steps_per_epoch
            )
        idx, rngs = _block_inputs(plan, cache[0], steps, consts.step_keys)
        active = active_at(es, t0)
        trained, losses = _train_block(plan, consts, state, idx, rngs, steps)
        state = freeze_stopped(jnp.logical_not(active), trained, state)
        train_loss = _block_train_loss(plan, losses, steps, consts.budget, active)
        es, val_loss, metric, pruned = _evaluate(
            plan, consts, state, es, active, first_block + k + 1, t0 + plan.eval_every
        )
        row = (train_loss, val_loss, metric, es.stopped, pruned)
        records = tuple(jax.lax.dynamic_update_index_in_dim(r, v, k, axis=0) for r, v in zip(records, row))
        return k + 1, state, es, cache, records

    nan = jnp.float32(jnp.nan)
    records = (
        *(jnp.full((plan.max_blocks, num_members), nan) for _ in range(3)),
        *(jnp.zeros((plan.max_blocks, num_members), jnp.bool_) for _ in range(2)),
    )
    carry = (jnp.int32(0), state, es, (perms, epochs), records)
    k, state, es, (perms, epochs), records = jax.lax.while_loop(cond, block, carry)
    return state, es, perms, epochs, records, k


# ----------------------------------------------------------------------------- host-side helpers


# Host-side setup as single small programs (eager ops would compile one program each).
@jax.jit
def _add_member_axis(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: jnp.expand_dims(a, 0), tree)


@jax.jit
def _drop_member_axis(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: a[0], tree)


@jax.jit
def _concatenate(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


@jax.jit
def _take_members(tree: PyTree, idx: jax.Array) -> PyTree:
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)


def _sharded_like(part: PyTree, full: PyTree) -> PyTree:
    """``part`` (members taken from ``full``) placed as ``full``'s leaves are where the member axis
    is split over devices by a ``NamedSharding`` and ``part``'s members still divide evenly over
    them: the gather's output is otherwise replicated, every device running every member left."""

    def one(p: Any, f: Any) -> Any:
        sharding = getattr(f, "sharding", None)
        if not isinstance(sharding, jax.sharding.NamedSharding):
            return p
        ways = _chunking.leading_axis_devices(sharding)
        return jax.device_put(p, sharding) if ways > 1 and p.shape[0] % ways == 0 else p

    return jax.tree.map(one, part, full)


@jax.jit
def _put_members(tree: PyTree, idx: jax.Array, part: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: a.at[idx].set(b, unique_indices=True), tree, part)


def _checked_snapshot(snapshot_fn: Callable[[PyTree], PyTree]) -> Callable[[PyTree], PyTree]:
    """``snapshot_fn``, whose output must be arrays (checked once, at trace time: jax's TypeError
    from inside vmap named neither snapshot_fn nor the leaf)."""

    def checked(state: PyTree) -> PyTree:
        out = snapshot_fn(state)
        for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]:
            if isinstance(leaf, jax.Array):  # a tracer here: numbers
                continue
            if not isinstance(leaf, np.ndarray | np.number | np.bool_ | int | float | complex) or (
                np.asarray(leaf).dtype.kind in "USOV"  # np.str_ is an np.generic
            ):
                raise ValueError(
                    f"fit: snapshot_fn must return a pytree of arrays (the best snapshot is kept as one), got "
                    f"snapshot{jax.tree_util.keystr(path)} = {leaf!r}."
                )
        return out

    return checked


@functools.partial(jax.jit, static_argnames=("snapshot_fn",))
def _init_stopping(stopper: EarlyStopping, state: PyTree, *, snapshot_fn) -> EarlyStoppingState:
    if snapshot_fn is not None:
        return jax.vmap(stopper.init)(jax.vmap(_checked_snapshot(snapshot_fn))(state))
    num_members = jax.tree.leaves(stopper)[0].shape[0]
    es = jax.vmap(stopper.init)(jnp.zeros((num_members,)))
    return es._replace(best_params=None)


@functools.partial(jax.jit, static_argnames=("snapshot_fn", "slots", "num_examples"))
def _setup(rng: jax.Array, stopper: EarlyStopping, budget: Any, state: PyTree, *, snapshot_fn, slots, num_examples):
    """The run's device-side constants in one program (each its own dispatch cost ~0.1-0.3 ms).

    Returns the stopper and budget on the device, the members' data and step keys
    (``split(split(rng)[i], N)``, as :func:`fit` documents), the initial early-stopping state and
    an empty permutation cache.
    """
    num_members = budget.shape[0]
    data_key, step_key = jax.random.split(rng)
    keys = (jax.random.split(data_key, num_members), jax.random.split(step_key, num_members))
    es = _init_stopping(stopper, state, snapshot_fn=snapshot_fn)
    return stopper, budget, keys, es, _empty_cache_arrays(num_members, slots, num_examples)


def _compaction(active: np.ndarray, compact: bool) -> np.ndarray | None:
    """Members of the next chunk: the active ones, padded with stopped ones to a power of two.

    ``None`` means all of them (no gather).
    """
    num_members = active.shape[0]
    count = int(np.sum(active))
    size = min(num_members, 1 << max(0, math.ceil(math.log2(max(count, 1))))) if compact else num_members
    if size == num_members:
        return None
    return np.sort(np.argsort(~active, kind="stable")[:size]).astype(np.int32)


def _shrink_at(stacked: int, compact: bool) -> np.int32:
    """The active count at which :func:`_compaction` picks a smaller stack than ``stacked``: the
    largest power of two below it (0 for one member; -1 without compaction). A chunk stops there,
    so compaction happens at the first block where it can, not where a timed chunk happens to
    end: a stack of another size rounds differently in the last bits (XLA's kernels depend on
    it), and a run then depended on its chunk lengths, which are measured in wall time, and on
    where it was interrupted and resumed."""
    if not compact:
        return np.int32(-1)
    return np.int32(0 if stacked < 2 else 1 << (math.ceil(math.log2(stacked)) - 1))


_SECONDS_PER_BLOCK: dict[tuple[Any, int], float] = {}  # (plan, stacked size) -> seconds, for the process


class _ChunkPolicy:
    """How many evaluation blocks the next chunk runs.

    With ``steps_per_chunk`` given, always that many steps. Otherwise (the default) chunks last
    about :data:`CHUNK_SECONDS` of wall time: the seconds per block of each program (the plan and
    the stacked size) are measured on every chunk that did not compile and kept for the process,
    so a first run on a new program goes 1 block (compiles), 1 block (measured), then chunks of
    the measured length, and later runs of the same program start at the measured length. A
    chunk never crosses a ``prune`` rung, so members pruned there leave the computation at once.
    Results do not depend on the policy: every chunk length runs the same compiled program, and
    compaction ends a chunk at the block where the stack shrinks (:func:`_shrink_at`).
    """

    def __init__(self, sched: _Schedule, plan: _Plan):
        self.sched, self.plan = sched, plan

    def blocks(self, blocks_done: int, stacked: int) -> int:
        sched = self.sched
        if sched.steps_per_chunk is not None:
            # to the next multiple: after a chunk that compaction ended early, the ends stay aligned
            every = sched.steps_per_chunk // sched.eval_every
            count = every - blocks_done % every
        else:
            per_block = _SECONDS_PER_BLOCK.get((self.plan, stacked))
            count = 1 if per_block is None else int(CHUNK_SECONDS / max(per_block, 1e-9))
            count = max(1, min(count, sched.max_blocks))
            later = [r for r in self.plan.rungs if r > blocks_done]
            if later:
                count = min(count, later[0] - blocks_done)
        return min(count, sched.num_evals - blocks_done)

    def record(self, stacked: int, blocks: int, seconds: float) -> None:
        if blocks > 0:
            _SECONDS_PER_BLOCK[(self.plan, stacked)] = seconds / blocks


class _Loop:
    """The host loop's state: records on the host, the stacked carry, progress counters."""

    def __init__(self, sched: _Schedule, state: PyTree, es: EarlyStoppingState, budget: np.ndarray):
        n, e = sched.num_members, sched.num_evals
        self.sched = sched
        self.state, self.es, self.budget = state, es, budget
        self.cache = None  # the permutation cache (perms, epochs) carried between chunks
        self.records = {
            "train_loss": np.full((n, e), np.nan, np.float32),
            "val_loss": np.full((n, e), np.nan, np.float32),
            "metric": np.full((n, e), np.nan, np.float32),
            "stopped": np.zeros((n, e), np.bool_),
            "pruned": np.zeros((n, e), np.bool_),
        }
        self.chunks_done = 0
        self.blocks_done = 0
        self.member_steps = 0
        self.eval_steps = (np.arange(e, dtype=np.int32) + 1) * sched.eval_every
        self._stopped = np.zeros((n,), np.bool_)  # a fresh state (a restored one is read in restore)

    @property
    def steps_done(self) -> int:
        return self.blocks_done * self.sched.eval_every

    def active(self) -> np.ndarray:
        return ~self._stopped & (self.steps_done < self.budget)

    def run_chunk(self, consts: _Consts, plan: _Plan, compact: bool, policy: _ChunkPolicy) -> int:
        """Runs the next chunk; returns the number of steps it advanced."""
        members = _compaction(self.active(), compact)
        stacked = self.sched.num_members if members is None else len(members)
        num_blocks = policy.blocks(self.blocks_done, stacked)
        if self.cache is None or self.cache[0].shape[0] != self.sched.num_members:
            self.cache = _empty_cache(plan, self.sched.num_members)
        # numpy scalars: jit transfers them on its fast path (jnp.asarray is an eager op each).
        first, count = np.int32(self.blocks_done), np.int32(num_blocks)
        shrink_at = _shrink_at(stacked, compact)
        compiled = _run_chunk._cache_size()
        t0 = time.perf_counter()
        if members is None:
            self.state, self.es, perms, epochs, records, ran = _run_chunk(
                self.state, self.es, *self.cache, first, count, shrink_at, consts, plan=plan
            )
            self.cache = (perms, epochs)
            rows = slice(None)
        else:
            idx = jnp.asarray(members)
            full = (self.state, self.es, self.cache[0], consts[2:])
            part = _sharded_like(_take_members(full, idx), full)
            sub = _Consts(consts.train_data, consts.val_data, *part[3])
            state, es, perms, epochs, records, ran = _run_chunk(
                part[0], part[1], part[2], self.cache[1], first, count, shrink_at, sub, plan=plan
            )
            self.state, self.es, cache_perms = _put_members(
                (self.state, self.es, self.cache[0]), idx, (state, es, perms)
            )
            self.cache = (cache_perms, epochs)
            rows = members
        records, ran, self._stopped = jax.device_get((records, ran, self.es.stopped))
        if _run_chunk._cache_size() == compiled:  # no compile in this call: a measurement
            policy.record(stacked, int(ran), time.perf_counter() - t0)
        ran = int(ran)
        cols = slice(self.blocks_done, self.blocks_done + ran)
        if members is not None:  # members left out of the chunk record what a frozen member records
            self.records["stopped"][:, cols] = self._stopped[:, None]
        for name, value in zip(_RECORDS, records):
            self.records[name][rows, cols] = value[:ran].T
        self.chunks_done += 1
        self.blocks_done += ran
        self.member_steps += stacked * ran * self.sched.eval_every
        # fewer blocks than asked: every member stopped (the run ends) or compaction's stack shrinks
        return ran * self.sched.eval_every

    def history(self) -> History:
        k = self.blocks_done
        rows = {name: value[0, :k] if self.sched.single else value[:, :k] for name, value in self.records.items()}
        # One device_put, not jnp.asarray: jnp.asarray of a host array compiles a copy program per
        # shape (a callback's history compiled 3 per chunk); one call for all is as fast as cached ones.
        step, rows = jax.device_put((self.eval_steps[:k], rows))
        return History(step=step, **rows)

    def unstack(self, tree: PyTree) -> PyTree:
        return _drop_member_axis(tree) if self.sched.single else tree

    def checkpoint_records(self) -> dict[str, np.ndarray]:
        return {**self.records, "progress": np.array([self.blocks_done, self.member_steps], np.int64)}

    def restore(self, progress: np.ndarray, carry: PyTree, records: dict[str, np.ndarray]) -> None:
        self.blocks_done, self.member_steps = int(progress[0]), int(progress[1])
        (self.state, self.es), self.records = carry, records
        self._stopped = np.asarray(self.es.stopped)


def _checkpoint_meta(
    sched: _Schedule,
    rng: Any,
    prune: SuccessiveHalving | None,
    stopper: EarlyStopping,
    budget: np.ndarray,
    monitor: str,
    snapshot: Any,
    compact: bool,
) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: the schedule, the rng, the early stopper, the
    member budgets, what is monitored (they decide which members stop when), the snapshot's
    structure (the best snapshot is part of the carry) and compaction (the stack's size decides
    the rounding and the member-steps computed)."""
    key_data = np.asarray(
        jax.random.key_data(rng) if jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key) else rng
    )
    return {
        "num_steps": sched.num_steps,
        "eval_every": sched.eval_every,
        "steps_per_chunk": sched.steps_per_chunk,
        "batch_size": sched.batch_size,
        "num_members": sched.num_members,
        "num_examples": sched.num_examples,
        "rng": [int(v) for v in key_data.reshape(-1)],
        "prune": None if prune is None else [prune.eta, prune.first_rung, prune.mode],
        "member_steps": [int(v) for v in np.asarray(budget).reshape(-1)],
        "monitor": monitor,
        "snapshot": repr(snapshot),
        "compact": bool(compact),  # np.True_ is not JSON
        # As text: a baseline of inf is not JSON.
        "early_stopping": repr(
            {f.name: np.asarray(getattr(stopper, f.name)).tolist() for f in dataclasses.fields(stopper)}
        ),
    }


def _postfix(loop: _Loop, tracking: bool) -> dict:
    col = loop.blocks_done - 1
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns once members stopped
        post = {"train": f"{np.nanmean(loop.records['train_loss'][:, col]):.4g}"}
        if tracking:
            stopped = np.asarray(loop.es.stopped)
            post["val"] = f"{np.nanmean(loop.records['val_loss'][:, col]):.4g}"
            post["stopped"] = f"{int(np.sum(stopped))}/{stopped.size}"
    return post


def _progress_bar(total: int, enabled: bool, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="fit")


def _result(loop: _Loop, tracking: bool) -> FitResult:
    es, budget = loop.es, loop.budget
    best_step = np.asarray(es.best_step)
    best_num_steps = np.where(best_step >= 0, loop.eval_steps[np.maximum(best_step, 0)], 0)
    best_num_steps = jax.device_put(np.minimum(best_num_steps, budget).astype(np.int32))
    stopping = es if tracking else None
    best = es.best_params if tracking else None
    state, best, stopping, best_num_steps = (loop.unstack(t) for t in (loop.state, best, stopping, best_num_steps))
    steps_run = loop.steps_done
    return FitResult(state, best, loop.history(), stopping, best_num_steps, steps_run, loop.member_steps)


def _explicit_sharding(leaf: Any) -> NamedSharding | None:
    sharding = getattr(leaf, "sharding", None)
    if isinstance(leaf, jax.Array) and isinstance(sharding, NamedSharding):
        if any(t == AxisType.Explicit for t in sharding.mesh.axis_types):
            return sharding
    return None


def _automatic_axes(tree: PyTree) -> PyTree:
    """``tree`` with leaves on a mesh of explicit axes re-placed on the same mesh with automatic axes.

    The chunk program mixes the state's member axis with per-member arrays it makes itself
    (batch indices, rngs, the early-stopping state); with explicit axes (``jax.make_mesh``'s
    default) ``vmap`` refuses operands whose member axes are sharded differently, with
    automatic ones XLA propagates the state's sharding. Same devices and layout: no copy.
    """

    def one(leaf: Any) -> Any:
        sharding = _explicit_sharding(leaf)
        if sharding is None:
            return leaf
        mesh = sharding.mesh.update(axis_types=(AxisType.Auto,) * len(sharding.mesh.axis_names))
        return jax.device_put(leaf, NamedSharding(mesh, sharding.spec, memory_kind=sharding.memory_kind))

    return jax.tree.map(one, tree)


def _strongly_typed(tree: PyTree) -> PyTree:
    """Weakly typed leaves (Python numbers, ``jnp.asarray(0)``) as strongly typed arrays of their dtype.

    The chunk's carry comes back strongly typed, so a weak leaf in the first chunk's arguments
    compiled the chunk program a second time for the later chunks (flax's ``TrainState.create``
    holds ``step=0``, a Python int).
    """

    def one(leaf: Any) -> Any:
        if isinstance(leaf, bool | int | float | complex) or getattr(leaf, "weak_type", False):
            return jnp.asarray(leaf, dtype=jnp.result_type(leaf))
        return leaf

    return jax.tree.map(one, tree)


def _placed_like(tree: PyTree, like: PyTree) -> PyTree:
    """``tree``'s leaves back on the explicit-axes sharding of the matching leaves of ``like``."""
    if jax.tree.structure(tree) != jax.tree.structure(like):
        return tree

    def one(leaf: Any, ref: Any) -> Any:
        sharding = _explicit_sharding(ref)
        if sharding is None or not isinstance(leaf, jax.Array) or leaf.shape != ref.shape:
            return leaf
        return jax.device_put(leaf, sharding)

    return jax.tree.map(one, tree, like)


# ----------------------------------------------------------------------------- fit


def fit(
    step_fn: StepFn,
    eval_fn: EvalFn | None,
    state: PyTree,
    train_data: PyTree,
    val_data: PyTree = None,
    *,
    rng: ArrayLike | None = None,
    num_steps: int,
    batch_size: int,
    eval_every: int,
    num_members: int | None = None,
    early_stopping: EarlyStopping | None = None,
    monitor: str = "val_loss",
    snapshot_fn: Callable[[PyTree], PyTree] | None = None,
    member_steps: ArrayLike | None = None,
    steps_per_chunk: int | None = None,
    compact: bool = True,
    prune: SuccessiveHalving | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int, History, PyTree], None] | None = None,
    key: ArrayLike | None = None,
    chunk_size: int | None = None,
) -> FitResult:
    r"""Trains with ``step_fn`` for ``num_steps`` steps, evaluating every ``eval_every`` steps, scan-fused.

    Step :math:`s` (0-based) of a member uses the batch

    .. math::
      \text{idx}_s = \pi_{e}[\,p B : (p + 1) B\,], \quad
      e = \lfloor s / P \rfloor,\ p = s \bmod P,\ P = \lfloor n / B \rfloor,

    where :math:`\pi_e` is the permutation of the :math:`n` training examples drawn from
    ``fold_in(member_data_key, e)`` (a fresh shuffle every epoch, different per member, the last
    partial batch dropped; with :math:`B = n`, a full batch, no shuffle is drawn and every step's
    batch is ``train_data`` itself, in its order, shared by all members: the order of a full batch
    changes nothing but float rounding and which row a per-row random draw falls on), and the rng
    ``fold_in(member_step_key, s)``, with
    ``data_key, step_key = jax.random.split(rng)`` and member :math:`m`'s keys
    ``jax.random.split(data_key, N)[m]``, ``jax.random.split(step_key, N)[m]`` (:math:`N = 1` for
    a single model). After steps :math:`s = k \cdot \text{eval\_every} - 1` the loop evaluates,
    records the history, and feeds the monitored value to ``early_stopping`` with
    ``snapshot_fn(state)``; then ``prune`` may stop more members. A stopped member's state is
    frozen from then on.

    Compaction (``compact=True``): the members still training (not stopped, ``member_steps``
    not spent) are gathered into a stacked state of :math:`2^{\lceil \log_2 n_\text{active}
    \rceil}` members (padded with stopped ones, capped at :math:`N`), trained, and scattered
    back, so stopped members cost nothing and at most :math:`\lceil \log_2 N \rceil + 1` programs compile. A
    chunk ends at the first evaluation after which that stack would be smaller, and the next one
    runs on it: the stack shrinks at the same block whatever the chunk lengths (timed, given, or
    cut by an interruption and resume), so they change no bit of the result. Each member's
    numbers are those of the run without compaction up to float32 rounding (XLA's kernels for a
    smaller stack round differently). Members that stop while the stack keeps its size are still
    computed, frozen, until it shrinks.

    Args:
      step_fn: ``step_fn(state, batch, rng) -> (new_state, loss)`` for ONE member: pure and
        jittable, ``batch`` is ``train_data`` indexed by the batch's example indices (a pytree of
        arrays with leading axis ``batch_size``), ``rng`` a PRNG key for dropout and the like;
        ``new_state`` has the structure, shapes and dtypes of ``state``, ``loss`` is a scalar.
      eval_fn: ``eval_fn(state, val_data) -> (val_loss, metric)`` for one member (a single scalar
        counts as both), or ``None`` for no evaluation (history records the train loss only).
      state: the initial training state (params, optimizer state, per-member hyperparameters...);
        with ``num_members``, every leaf stacked on a leading member axis.
      train_data: a pytree of arrays with a common leading example axis (shared by all members).
      val_data: anything ``eval_fn`` takes (shared by all members).
      rng: PRNG key; the data keys and step keys of every member derive from it.
      num_steps: total number of steps; a multiple of ``eval_every`` and of ``steps_per_chunk``.
      batch_size: examples per step, at most the number of training examples.
      eval_every: steps between evaluations; must divide ``num_steps``.
      num_members: size of the leading member axis of ``state``, or ``None`` for a single model.
      early_stopping: an :class:`jaxreg.EarlyStopping` (its leaves scalars or one per member), or
        ``None`` to only keep the best snapshot. Needs ``eval_fn``.
      monitor: what early stopping and pruning watch: "val_loss" or "metric" (use ``mode="max"``
        on the stopper for an accuracy; "metric" needs ``early_stopping``, whose mode gives the
        direction).
      snapshot_fn: what the best snapshot keeps, ``state -> pytree`` (default: the whole state).
        ``step_fn``, ``eval_fn`` and ``snapshot_fn`` are static parts of the compiled chunk, as
        under ``jax.jit``: a new function object (a lambda written in the call) compiles again, so
        define them once for repeated fits.
      member_steps: optional number of updates per member (an int or one per member); a member is
        frozen once it has done that many (used by :func:`retrain`).
      steps_per_chunk: steps per chunk; a multiple of ``eval_every`` that divides ``num_steps``
        (with compaction a chunk also ends where the stack shrinks, see above, and the next
        one at the next multiple).
        Default (``None``): chunks of about ``jaxreg.training.CHUNK_SECONDS`` (0.5 s) of wall
        time, measured per program and kept for the process (a first run does 1 block, 1 block,
        then the measured length), never across a ``prune`` rung. Progress, callbacks,
        checkpoints and compaction happen between chunks; the numbers do not depend on it (every
        chunk length runs the same compiled program, and a stack shrinks at the same block).
      compact: remove stopped members from the computation between chunks (see above). Each
        stack size it reaches compiles its own program (seconds each for a model of a few layers):
        a cold one-off run in which few members stop early can be slower with it (1.7x in a
        32-member sweep that saved 23% of member-steps, three programs at 2-4 s each); pass
        ``False`` there. It pays once the programs are compiled, or when most members stop early.
      prune: optional :class:`jaxreg.SuccessiveHalving`; needs ``eval_fn``.
      checkpoint_dir: optional directory for an orbax ``CheckpointManager``: the loop saves after
        every chunk and, if the directory already holds a checkpoint of this run (same schedule and
        ``rng``, else ``ValueError``), resumes from the latest one (pass the same initial ``state``
        structure).
      progress: show a tqdm bar with the current (member-mean) train and validation loss.
      callback: optional ``callback(num_steps_done, history_so_far, state)`` called after every
        chunk, once that chunk's checkpoint save has started: orbax writes it in the background,
        so during the callback the directory may hold only the previous chunk's (a process that
        dies there resumes from it); raising from it ends the run, after the save completes.
      key: deprecated name of ``rng`` (DeprecationWarning).
      chunk_size: deprecated name of ``steps_per_chunk`` (DeprecationWarning).

    Returns:
      A :class:`FitResult`. Without ``num_members`` the member axis is absent everywhere.

    Raises:
      ValueError: if ``eval_every`` does not divide ``num_steps``, ``steps_per_chunk`` is not a
        multiple of ``eval_every`` dividing ``num_steps``, ``batch_size`` exceeds the number of
        examples, a leaf of ``state``, ``early_stopping`` or ``member_steps`` has a member axis of
        another size than ``num_members``, ``monitor`` is unknown, ``early_stopping`` or ``prune``
        is given without ``eval_fn``, ``step_fn`` or ``eval_fn`` return something else than
        described above (checked on the first trace), or ``checkpoint_dir`` holds a run of
        another schedule or rng.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxreg as jr
      >>> x = jax.random.normal(jax.random.key(0), (64, 3))
      >>> y = x @ jnp.array([1.0, -2.0, 0.5])
      >>> opt = optax.sgd(0.1)
      >>> def loss_fn(w, x, y):
      ...     return jnp.mean((x @ w - y) ** 2)
      >>> def step(state, batch, rng):
      ...     w, opt_state = state
      ...     loss, g = jax.value_and_grad(loss_fn)(w, *batch)
      ...     updates, opt_state = opt.update(g, opt_state, w)
      ...     return (optax.apply_updates(w, updates), opt_state), loss
      >>> def evaluate(state, data):
      ...     return loss_fn(state[0], *data), 0.0
      >>> w0 = jnp.zeros(3)
      >>> result = jr.fit(step, evaluate, (w0, opt.init(w0)), (x, y), (x, y), rng=jax.random.key(1),
      ...                 num_steps=200, batch_size=16, eval_every=20, progress=False)
      >>> result.history.val_loss.shape, bool(result.history.val_loss[-1] < 1e-4)
      ((10,), True)
    """
    rng = _renamed("fit", "rng", rng, "key", key)
    if rng is None:
        raise ValueError("fit: rng (a PRNG key, e.g. jax.random.key(0)) is required, got rng = None.")
    _random.check_key(rng, "fit")
    _check_callables(step_fn, eval_fn, snapshot_fn, callback, checkpoint_dir, compact, progress)
    steps_per_chunk = _renamed("fit", "steps_per_chunk", steps_per_chunk, "chunk_size", chunk_size)
    sched = _check_schedule(num_steps, batch_size, eval_every, steps_per_chunk, num_members, train_data, state)
    prune_mode = _check_options(eval_fn, monitor, early_stopping, prune)
    given_state = state
    state, train_data, val_data = _automatic_axes((_strongly_typed(state), train_data, val_data))
    N = sched.num_members
    if sched.single:
        state = _add_member_axis(state)
    tracking = eval_fn is not None
    stopper = _per_member("early_stopping", early_stopping if early_stopping is not None else EarlyStopping(_NEVER), N)
    if member_steps is not None:
        _checks.check_integer_at_least("member_steps", member_steps, 0, "fit")
        member_steps = np.minimum(np.asarray(member_steps), num_steps)  # more than num_steps: all of them
    budget = _per_member("member_steps", np.asarray(num_steps if member_steps is None else member_steps, np.int32), N)
    snapshot = snapshot_fn if snapshot_fn is not None else _identity
    plan = _Plan(
        step_fn, eval_fn, snapshot, monitor, sched.num_examples, sched.batch_size, sched.eval_every,
        sched.max_blocks, bool(np.any((budget % sched.eval_every != 0) & (budget < num_steps))),
        prune, prune_mode, () if prune is None else prune.rungs(sched.num_evals),
    )  # fmt: skip
    # On the device once (host arrays would be copied again at every call that takes them).
    stopper, device_budget, keys, es, cache = _setup(
        rng,
        stopper,
        budget,
        state,
        snapshot_fn=snapshot if tracking else None,
        slots=_epochs_per_block(plan),
        num_examples=plan.num_examples,
    )
    consts = _Consts(train_data, val_data, stopper, device_budget, *keys)
    loop = _Loop(sched, state, es, budget)
    loop.cache = cache
    meta = None
    if checkpoint_dir is not None:  # reads rng back: a sync
        snapshot_shapes = None
        if tracking:
            # leaf paths, shapes and dtypes only: a treedef's text can hold the reprs of static
            # fields (a function's address), which differ in the process that resumes
            shapes = jax.eval_shape(jax.vmap(snapshot), state)
            snapshot_shapes = [
                (jax.tree_util.keystr(path), a.shape, str(a.dtype))
                for path, a in jax.tree_util.tree_flatten_with_path(shapes)[0]
            ]
        meta = _checkpoint_meta(sched, rng, prune, stopper, budget, monitor, snapshot_shapes, compact)
        # the state's dtypes: orbax casts the saved carry into the given state's (float32 -> float16)
        meta["state"] = [  # JSON lists: compared as they come back
            [jax.tree_util.keystr(p), list(jnp.shape(a)), jnp.result_type(a).name]
            for p, a in jax.tree_util.tree_flatten_with_path(state)[0]
        ]

    _train(loop, consts, plan, compact, meta, checkpoint_dir, progress, callback)
    result = _result(loop, tracking)
    # An explicitly sharded state comes back placed as it was given.
    return result._replace(state=_placed_like(result.state, given_state), best=_placed_like(result.best, given_state))


def _train(loop: _Loop, consts, plan, compact, meta, checkpoint_dir, progress, callback) -> None:
    """The host loop over chunks: compaction, checkpoints, progress bar and callback between them."""
    manager = None
    if checkpoint_dir is not None:
        manager = _checkpoint.open_manager(checkpoint_dir)
        try:
            restored = _checkpoint.restore(
                manager, checkpoint_dir, (loop.state, loop.es), loop.checkpoint_records(), meta
            )
        except BaseException:
            manager.close()
            raise
        if restored is not None:
            loop.restore(*restored)
    sched = loop.sched
    policy = _ChunkPolicy(sched, plan)
    bar = _progress_bar(sched.num_steps, progress, loop.steps_done)
    try:
        while loop.blocks_done < sched.num_evals and np.any(loop.active()):
            advanced = loop.run_chunk(consts, plan, compact, policy)
            if manager is not None:
                _checkpoint.save(manager, loop.blocks_done, (loop.state, loop.es), loop.checkpoint_records(), meta)
            if bar is not None:
                bar.update(advanced)
                bar.set_postfix(_postfix(loop, plan.eval_fn is not None))
            if callback is not None:
                callback(loop.steps_done, loop.history(), loop.unstack(loop.state))
    finally:
        if bar is not None:
            bar.close()
        if manager is not None:
            _checkpoint.close(manager)


# ----------------------------------------------------------------------------- retrain


def retrain(
    step_fn: StepFn,
    state: PyTree,
    train_data: PyTree,
    val_data: PyTree,
    num_updates: ArrayLike,
    *,
    rng: ArrayLike | None = None,
    batch_size: int,
    policy: str = "updates",
    eval_every: int | None = None,
    num_members: int | None = None,
    eval_fn: EvalFn | None = None,
    eval_data: PyTree = None,
    progress: bool = True,
    compact: bool = True,
    key: ArrayLike | None = None,
) -> FitResult:
    r"""Retrains from ``state`` on train + validation data for the budget of :func:`jaxreg.retrain_budget`.

    The second phase of early stopping with a held-out set (Goodfellow et al. 2016, Algorithm
    7.2): after :func:`fit` found the best number of updates :math:`u` (``FitResult.best_num_steps``,
    one per member), train a fresh state on the concatenation of ``train_data`` and ``val_data``
    for

    .. math:: u' = \text{retrain\_budget}(u, n_t, n_v, B, \text{policy})

    updates per member ("updates": the same number of updates; "epochs": the same number of
    passes, so more updates). Members with smaller budgets are frozen once theirs is spent; the
    loop runs :math:`\max u'` steps rounded up to a multiple of ``eval_every``.

    Args:
      step_fn: as in :func:`fit`.
      state: the fresh initial state (stacked on a member axis with ``num_members``).
      train_data: the training pytree of the first run (leading example axis).
      val_data: the held-out pytree, with the structure of ``train_data``; it is appended to it.
      num_updates: updates of the first run's best snapshot, an int or one per member.
      rng: PRNG key of the retraining run.
      batch_size: examples per step.
      policy: "updates" or "epochs".
      eval_every: steps between history records (default: about 20 records).
      num_members: as in :func:`fit`.
      eval_fn: optional ``eval_fn(state, eval_data)`` to record (e.g. on a test set); no early
        stopping happens.
      eval_data: what ``eval_fn`` takes.
      progress: show a progress bar.
      compact: as in :func:`fit` (members whose budget is spent leave the computation).
      key: deprecated name of ``rng`` (DeprecationWarning).

    Returns:
      The :class:`FitResult` of the retraining run; ``history.step`` counts scheduled steps, a
      member's own count stops at its budget.

    Raises:
      ValueError: as :func:`jaxreg.retrain_budget` and :func:`fit`, and if ``val_data`` does not have
        the structure of ``train_data``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxreg as jr
      >>> x = jnp.arange(40.0).reshape(20, 2) / 40
      >>> data, held_out = (x[:16], x[:16].sum(1)), (x[16:], x[16:].sum(1))
      >>> def step(state, batch, rng):  # counts its updates
      ...     return state + 1, jnp.zeros(())
      >>> r = jr.retrain(step, jnp.zeros((), jnp.int32), data, held_out, 6, rng=jax.random.key(0),
      ...                batch_size=4, policy="epochs", progress=False)
      >>> int(r.state)  # 6 updates = 1.5 epochs of 4; on 20 examples 1.5 epochs of 5 updates
      8
    """
    rng = _renamed("retrain", "rng", rng, "key", key)
    # retrain's own arguments named here (fit would name itself and its member_steps)
    if rng is None:
        raise ValueError("retrain: rng (a PRNG key, e.g. jax.random.key(0)) is required, got rng = None.")
    _random.check_key(rng, "retrain")
    if num_members is not None:
        num_members = _checks.check_int_at_least("num_members", num_members, 1, "retrain")
        _check_member_axis("state", state, num_members, "retrain")
    if np.ndim(num_updates) != 0 and np.shape(num_updates) != (1 if num_members is None else num_members,):
        raise ValueError(
            "retrain: num_updates must be one number or one per member, got num_updates.shape = "
            f"{np.shape(num_updates)} for num_members = {num_members}."
        )
    _check_callables(step_fn, eval_fn, None, None, None, compact, progress, "retrain")
    if jax.tree.structure(train_data) != jax.tree.structure(val_data):
        raise ValueError(
            f"retrain: val_data must have the structure of train_data, got val_data = "
            f"{jax.tree.structure(val_data)} for train_data = {jax.tree.structure(train_data)}."
        )
    for path, a, b in zip(
        (k for k, _ in jax.tree_util.tree_flatten_with_path(train_data)[0]),
        jax.tree.leaves(train_data),
        jax.tree.leaves(val_data),
    ):
        if jnp.shape(a)[1:] != jnp.shape(b)[1:] or jnp.result_type(a) != jnp.result_type(b):
            name = jax.tree_util.keystr(path) or "<root>"
            raise ValueError(
                f"retrain: val_data's examples must be shaped like train_data's (they are concatenated), got "
                f"val_data{name if name != '<root>' else ''} of shape {jnp.shape(b)} and dtype {jnp.result_type(b)} "
                f"for train_data's {jnp.shape(a)} and {jnp.result_type(a)}."
            )
    n_train, n_val = _num_examples(train_data, "retrain"), _num_examples(val_data, "retrain", "val_data")
    budget = checked_retrain_budget(num_updates, n_train, n_val, batch_size, policy, "retrain")
    total = max(int(np.max(np.asarray(budget))), 1)
    if eval_every is None:
        eval_every = max(1, -(-total // 20))
    eval_every = _checks.check_int_at_least("eval_every", eval_every, 1, "retrain")
    num_steps = -(-total // eval_every) * eval_every
    all_data = _concatenate(train_data, val_data)
    return fit(
        step_fn,
        eval_fn,
        state,
        all_data,
        eval_data,
        rng=rng,
        num_steps=num_steps,
        batch_size=batch_size,
        eval_every=eval_every,
        num_members=num_members,
        member_steps=budget,
        progress=progress,
        compact=compact,
    )
