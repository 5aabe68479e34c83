"""A scan-fused training loop with evaluation, early stopping, history and resumable checkpoints.

:func:`fit` runs a user's pure step function over in-memory data. The schedule is cut into
chunks of ``chunk_size`` steps; each chunk is one compiled program (a ``lax.scan`` over
evaluation periods, each a ``lax.scan`` over ``eval_every`` steps followed by an evaluation and an
early-stopping update), reused for every chunk, so compile time does not depend on ``num_steps``
and no Python runs per step. Between chunks the host updates a progress bar, calls an optional
callback and saves an optional orbax checkpoint.

Every random draw is derived from ``key`` and the global step index (the shuffling of epoch ``e``
from ``fold_in(data_key, e)``, the step's rng from ``fold_in(step_key, step)``), never from a
carried Python state, so a run killed mid-way and resumed from its last checkpoint ends with the
same numbers as an uninterrupted run.

An optional ensemble axis (``num_members``): the state's leaves are stacked on a leading member
axis, the step and evaluation are ``vmap``-ped, each member shuffles with its own key and stops on
its own; stopped members are frozen (:func:`jaxreg.freeze_stopped`). Per-member hyperparameters
(a penalty scale, a dropout rate) are leaves of the state with a member axis: the step reads them
from its state and returns them unchanged, so a grid of regimes trains as one program.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxreg import _checks
from jaxreg.early_stopping import EarlyStopping, EarlyStoppingState, freeze_stopped, retrain_budget

PyTree = Any
StepFn = Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]
EvalFn = Callable[[PyTree, PyTree], Any]

__all__ = ["FitResult", "History", "fit", "retrain"]

_MONITORS = ("val_loss", "metric")
_NEVER = 2**30  # patience of the internal best-tracker when no early stopping is asked for


class History(NamedTuple):
    """Per-evaluation records; with ``num_members`` every field but ``step`` has a trailing member axis.

    Attributes:
      step: (num_evals,) int32, parameter updates scheduled before each evaluation.
      train_loss: mean of the step losses since the previous evaluation (float32).
      val_loss: validation loss at each evaluation (NaN when there is no ``eval_fn``).
      metric: the evaluation's metric (NaN when there is no ``eval_fn``).
      stopped: bool, whether the member had stopped after this evaluation.
    """

    step: jax.Array
    train_loss: jax.Array
    val_loss: jax.Array
    metric: jax.Array
    stopped: jax.Array


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
      num_steps: the number of steps the loop ran (a multiple of ``chunk_size``).
    """

    state: PyTree
    best: PyTree
    history: History
    stopping: EarlyStoppingState | None
    best_num_steps: jax.Array
    num_steps: int


def _leaf_paths(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path) or "<root>", leaf) for path, leaf in flat]


def _num_examples(train_data: PyTree) -> int:
    leaves = _leaf_paths(train_data)
    if not leaves:
        raise ValueError("fit: train_data must hold at least one array, got an empty pytree.")
    sizes = {name: np.shape(leaf)[0] if np.ndim(leaf) > 0 else None for name, leaf in leaves}
    if any(s is None for s in sizes.values()) or len(set(sizes.values())) != 1:
        raise ValueError(
            f"fit: every leaf of train_data must have the same leading (example) axis, got leading sizes {sizes}."
        )
    return next(iter(sizes.values()))


def _check_member_axis(name: str, tree: PyTree, num_members: int) -> None:
    for path, leaf in _leaf_paths(tree):
        shape = np.shape(leaf)
        if len(shape) == 0 or shape[0] != num_members:
            raise ValueError(
                f"fit: every leaf of {name} must have a leading member axis of size num_members = "
                f"{num_members}, got {name}{path} with shape {shape}."
            )


def _default_chunk_evals(num_evals: int) -> int:
    """The divisor of ``num_evals`` closest to ``num_evals / 10`` (about ten chunks)."""
    target = max(1.0, num_evals / 10)
    divisors = [d for d in range(1, num_evals + 1) if num_evals % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


def _split_eval(out: Any) -> tuple[jax.Array, jax.Array]:
    if isinstance(out, tuple | list) and len(out) == 2:
        loss, metric = out
    else:
        loss = metric = out
    return jnp.asarray(loss, jnp.float32), jnp.asarray(metric, jnp.float32)


@functools.partial(jax.jit, static_argnums=1)
def _keys(key: ArrayLike, num_members: int) -> tuple[jax.Array, jax.Array]:
    data_key, step_key = jax.random.split(key)
    return jax.random.split(data_key, num_members), jax.random.split(step_key, num_members)


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


@functools.partial(jax.jit, static_argnames=("snapshot_fn",))
def _init_stopping(stopper: EarlyStopping, state: PyTree, *, snapshot_fn) -> EarlyStoppingState:
    if snapshot_fn is not None:
        return jax.vmap(stopper.init)(jax.vmap(snapshot_fn)(state))
    num_members = jax.tree.leaves(stopper)[0].shape[0]
    es = jax.vmap(stopper.init)(jnp.zeros((num_members,)))
    return es._replace(best_params=None)


def _identity(tree: PyTree) -> PyTree:
    return tree


class _ChunkConfig(NamedTuple):
    """Static part of the chunk program (functions hash by identity, so repeated fits reuse it)."""

    step_fn: StepFn
    eval_fn: EvalFn | None
    snapshot_fn: Callable[[PyTree], PyTree]
    monitor: str
    num_examples: int
    batch_size: int
    eval_every: int
    chunk_size: int


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run_chunk(state, es, start, consts, *, cfg: _ChunkConfig):
    """``chunk_size`` steps from global step ``start`` (traced: one program for every chunk)."""
    train_data, val_data, stopper, budget, data_keys, step_keys = consts
    n, batch_size, eval_every = cfg.num_examples, cfg.batch_size, cfg.eval_every
    steps_per_epoch = n // batch_size
    num_members = budget.shape[0]

    def perms_for(epoch):
        return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n))(data_keys)

    def one_step(carry, s):
        state, perm, stopped = carry
        epoch, pos = s // steps_per_epoch, s % steps_per_epoch
        perm = jax.lax.cond(pos == 0, lambda: perms_for(epoch), lambda: perm)
        idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size, axis=1)
        batch = jax.vmap(lambda i: jax.tree.map(lambda a: jnp.take(a, i, axis=0), train_data))(idx)
        rngs = jax.vmap(lambda k: jax.random.fold_in(k, s))(step_keys)
        new_state, loss = jax.vmap(cfg.step_fn)(state, batch, rngs)
        new_state = freeze_stopped(jnp.logical_or(stopped, s >= budget), new_state, state)
        return (new_state, perm, stopped), jnp.asarray(loss, jnp.float32)

    def period(carry, k):
        state, es, perm = carry
        steps = start + k * eval_every + jnp.arange(eval_every, dtype=jnp.int32)
        (state, perm, _), losses = jax.lax.scan(one_step, (state, perm, es.stopped), steps)
        train_loss = jnp.mean(losses, axis=0)
        if cfg.eval_fn is not None:
            val_loss, metric = jax.vmap(lambda s: _split_eval(cfg.eval_fn(s, val_data)))(state)
            watched = val_loss if cfg.monitor == "val_loss" else metric
            snapshot = jax.vmap(cfg.snapshot_fn)(state)
            es = jax.vmap(lambda st, e, m, p: st.update(e, m, p))(stopper, es, watched, snapshot)
        else:
            val_loss = metric = jnp.full((num_members,), jnp.nan, jnp.float32)
        return (state, es, perm), (train_loss, val_loss, metric, es.stopped)

    perm0 = perms_for(start // steps_per_epoch)
    periods = jnp.arange(cfg.chunk_size // eval_every, dtype=jnp.int32)
    (state, es, _), records = jax.lax.scan(period, (state, es, perm0), periods)
    return state, es, records


def fit(
    step_fn: StepFn,
    eval_fn: EvalFn | None,
    state: PyTree,
    train_data: PyTree,
    val_data: PyTree = None,
    *,
    key: ArrayLike,
    num_steps: int,
    batch_size: int,
    eval_every: int,
    num_members: int | None = None,
    early_stopping: EarlyStopping | None = None,
    monitor: str = "val_loss",
    snapshot_fn: Callable[[PyTree], PyTree] | None = None,
    member_steps: ArrayLike | None = None,
    chunk_size: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int, History, PyTree], None] | None = None,
) -> FitResult:
    r"""Trains with ``step_fn`` for ``num_steps`` steps, evaluating every ``eval_every`` steps, scan-fused.

    Step :math:`s` (0-based) of a member uses the batch

    .. math::
      \text{idx}_s = \pi_{e}[\,p B : (p + 1) B\,], \quad
      e = \lfloor s / P \rfloor,\ p = s \bmod P,\ P = \lfloor n / B \rfloor,

    where :math:`\pi_e` is the permutation of the :math:`n` training examples drawn from
    ``fold_in(member_data_key, e)`` (a fresh shuffle every epoch, different per member, the last
    partial batch dropped), and the rng ``fold_in(member_step_key, s)``, with
    ``data_key, step_key = jax.random.split(key)`` and member :math:`m`'s keys
    ``jax.random.split(data_key, N)[m]``, ``jax.random.split(step_key, N)[m]`` (:math:`N = 1` for
    a single model). After steps
    :math:`s = k \cdot \text{eval\_every} - 1` the loop evaluates, records the history, and feeds
    the monitored value to ``early_stopping`` with ``snapshot_fn(state)``; a stopped member's state
    is frozen from then on (its later steps are computed and discarded).

    Args:
      step_fn: ``step_fn(state, batch, rng) -> (new_state, loss)`` for ONE member: pure and
        jittable, ``batch`` is ``train_data`` indexed by the batch's example indices (a pytree of
        arrays with leading axis ``batch_size``), ``rng`` a PRNG key for dropout and the like.
      eval_fn: ``eval_fn(state, val_data) -> (val_loss, metric)`` for one member (a single scalar
        counts as both), or ``None`` for no evaluation (history records the train loss only).
      state: the initial training state (params, optimizer state, per-member hyperparameters...);
        with ``num_members``, every leaf stacked on a leading member axis.
      train_data: a pytree of arrays with a common leading example axis (shared by all members).
      val_data: anything ``eval_fn`` takes (shared by all members).
      key: PRNG key; the data keys and step keys of every member derive from it.
      num_steps: total number of steps; a multiple of ``eval_every`` and of ``chunk_size``.
      batch_size: examples per step, at most the number of training examples.
      eval_every: steps between evaluations; must divide ``num_steps``.
      num_members: size of the leading member axis of ``state``, or ``None`` for a single model.
      early_stopping: an :class:`jaxreg.EarlyStopping` (its leaves scalars or one per member), or
        ``None`` to only keep the best snapshot. Needs ``eval_fn``.
      monitor: what early stopping watches: "val_loss" or "metric" (use ``mode="max"`` on the
        stopper for an accuracy).
      snapshot_fn: what the best snapshot keeps, ``state -> pytree`` (default: the whole state).
      member_steps: optional number of updates per member (an int or one per member); a member is
        frozen once it has done that many (used by :func:`retrain`).
      chunk_size: steps per compiled chunk; a multiple of ``eval_every`` that divides ``num_steps``
        (default: about a tenth of the run). Progress, callbacks and checkpoints happen between
        chunks.
      checkpoint_dir: optional directory for an orbax ``CheckpointManager``: the loop saves after
        every chunk and, if the directory already holds a checkpoint of this schedule, resumes
        from the latest one (pass the same ``key`` and initial ``state`` structure).
      progress: show a tqdm bar with the current (member-mean) train and validation loss.
      callback: optional ``callback(num_steps_done, history_so_far, state)`` called after every
        chunk (after the checkpoint is saved); raising from it ends the run there.

    Returns:
      A :class:`FitResult`. Without ``num_members`` the member axis is absent everywhere.

    Raises:
      ValueError: if ``eval_every`` does not divide ``num_steps``, ``chunk_size`` is not a multiple
        of ``eval_every`` dividing ``num_steps``, ``batch_size`` exceeds the number of examples,
        a leaf of ``state``, ``early_stopping`` or ``member_steps`` has a member axis of another
        size than ``num_members``, ``monitor`` is unknown, or ``early_stopping`` is given without
        ``eval_fn``.

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
      >>> result = jr.fit(step, evaluate, (w0, opt.init(w0)), (x, y), (x, y), key=jax.random.key(1),
      ...                 num_steps=200, batch_size=16, eval_every=20, progress=False)
      >>> result.history.val_loss.shape, bool(result.history.val_loss[-1] < 1e-4)
      ((10,), True)
    """
    # ---- checks (all before anything is traced) -------------------------------------------
    num_steps = _checks.check_int_at_least("num_steps", num_steps, 1, "fit")
    batch_size = _checks.check_int_at_least("batch_size", batch_size, 1, "fit")
    eval_every = _checks.check_int_at_least("eval_every", eval_every, 1, "fit")
    if num_steps % eval_every:
        raise ValueError(
            f"fit: eval_every must divide num_steps (evaluations happen after every eval_every "
            f"steps), got eval_every = {eval_every} for num_steps = {num_steps}."
        )
    num_evals = num_steps // eval_every
    if chunk_size is None:
        chunk_size = eval_every * _default_chunk_evals(num_evals)
    chunk_size = _checks.check_int_at_least("chunk_size", chunk_size, 1, "fit")
    if chunk_size % eval_every or num_steps % chunk_size:
        raise ValueError(
            f"fit: chunk_size must be a multiple of eval_every = {eval_every} that divides num_steps = "
            f"{num_steps}, got chunk_size = {chunk_size}."
        )
    if monitor not in _MONITORS:
        raise ValueError(f'fit: monitor must be "val_loss" or "metric", got monitor = {monitor!r}.')
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise ValueError(
            f"fit: early_stopping must be a jaxreg.EarlyStopping, got early_stopping = {early_stopping!r}."
        )
    if early_stopping is not None and eval_fn is None:
        raise ValueError("fit: early_stopping needs an eval_fn to monitor, got eval_fn = None.")
    n = _num_examples(train_data)
    if batch_size > n:
        raise ValueError(f"fit: batch_size must be at most the {n} training examples, got batch_size = {batch_size}.")
    single = num_members is None
    if single:
        num_members = 1
        state = _add_member_axis(state)
    else:
        num_members = _checks.check_int_at_least("num_members", num_members, 1, "fit")
        _check_member_axis("state", state, num_members)
    N = num_members

    def per_member(name: str, tree: PyTree) -> PyTree:
        def widen(path, leaf):
            leaf = np.asarray(leaf)
            if leaf.ndim == 0:
                return np.broadcast_to(leaf, (N,))
            if leaf.shape != (N,):
                raise ValueError(
                    f"fit: {name}{jax.tree_util.keystr(path)} must be a scalar or have shape (num_members,) = "
                    f"({N},), got shape {leaf.shape}."
                )
            return leaf

        return jax.tree_util.tree_map_with_path(widen, tree)

    tracking = eval_fn is not None
    stopper = early_stopping if early_stopping is not None else EarlyStopping(_NEVER)
    stopper = per_member("early_stopping", stopper)
    budget = per_member("member_steps", np.asarray(num_steps if member_steps is None else member_steps, np.int32))
    snapshot = snapshot_fn if snapshot_fn is not None else _identity
    data_keys, step_keys = _keys(key, N)

    cfg = _ChunkConfig(step_fn, eval_fn, snapshot, monitor, n, batch_size, eval_every, chunk_size)
    consts = (train_data, val_data, stopper, budget, data_keys, step_keys)

    # ---- host loop ----------------------------------------------------------------------------
    es = _init_stopping(stopper, state, snapshot_fn=snapshot if tracking else None)
    hist = {
        "train_loss": np.full((num_evals, N), np.nan, np.float32),
        "val_loss": np.full((num_evals, N), np.nan, np.float32),
        "metric": np.full((num_evals, N), np.nan, np.float32),
        "stopped": np.zeros((num_evals, N), np.bool_),
    }
    meta = np.array([num_steps, eval_every, chunk_size, batch_size, N, n], np.int64)
    num_chunks = num_steps // chunk_size
    evals_per_chunk = chunk_size // eval_every
    eval_steps = (np.arange(num_evals, dtype=np.int32) + 1) * eval_every

    manager = None
    done_chunks = 0
    if checkpoint_dir is not None:
        manager, restored = _open_checkpoint(checkpoint_dir, (state, es), hist, meta)
        if restored is not None:
            done_chunks, (state, es), hist = restored

    def history_so_far(num_done: int) -> History:
        k = num_done * evals_per_chunk
        rows = {name: value[:k, 0] if single else value[:k] for name, value in hist.items()}
        return History(step=jnp.asarray(eval_steps[:k]), **{name: jnp.asarray(v) for name, v in rows.items()})

    def unstack(tree: PyTree) -> PyTree:
        return _drop_member_axis(tree) if single else tree

    bar = _progress_bar(num_steps, progress, done_chunks * chunk_size)
    try:
        chunk_index = done_chunks
        while chunk_index < num_chunks:
            if np.all(np.asarray(es.stopped) | (chunk_index * chunk_size >= budget)):
                break
            start = jnp.asarray(chunk_index * chunk_size, jnp.int32)
            state, es, records = _run_chunk(state, es, start, consts, cfg=cfg)
            rows = slice(chunk_index * evals_per_chunk, (chunk_index + 1) * evals_per_chunk)
            for name, value in zip(("train_loss", "val_loss", "metric", "stopped"), records):
                hist[name][rows] = np.asarray(value)
            chunk_index += 1
            if manager is not None:
                _save_checkpoint(manager, chunk_index, (state, es), hist, meta)
            if bar is not None:
                bar.update(chunk_size)
                bar.set_postfix(_postfix(hist, rows, es.stopped, tracking))
            if callback is not None:
                callback(chunk_index * chunk_size, history_so_far(chunk_index), unstack(state))
    finally:
        if bar is not None:
            bar.close()
        if manager is not None:
            manager.wait_until_finished()
            manager.close()

    history = history_so_far(chunk_index)
    best_step = np.asarray(es.best_step)
    best_num_steps = np.where(best_step >= 0, eval_steps[np.maximum(best_step, 0)], 0)
    best_num_steps = jnp.asarray(np.minimum(best_num_steps, budget).astype(np.int32))
    stopping = es if tracking else None
    best = es.best_params if tracking else None
    state, best, stopping, best_num_steps = unstack(state), unstack(best), unstack(stopping), unstack(best_num_steps)
    return FitResult(state, best, history, stopping, best_num_steps, chunk_index * chunk_size)


def _postfix(hist: dict, rows: slice, stopped: jax.Array, tracking: bool) -> dict:
    with np.errstate(all="ignore"):
        post = {"train": f"{np.nanmean(hist['train_loss'][rows][-1]):.4g}"}
        if tracking:
            post["val"] = f"{np.nanmean(hist['val_loss'][rows][-1]):.4g}"
            post["stopped"] = f"{int(np.sum(np.asarray(stopped)))}/{np.size(stopped)}"
    return post


def _progress_bar(total: int, enabled: bool, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="fit")


def _open_checkpoint(directory, carry: PyTree, hist: dict, meta: np.ndarray):
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)), options=ocp.CheckpointManagerOptions(max_to_keep=2)
    )
    latest = manager.latest_step()
    if latest is None:
        return manager, None
    leaves, treedef = jax.tree.flatten(carry)
    target = {
        "carry": {str(i): leaf for i, leaf in enumerate(leaves)},
        "history": hist,
        "meta": meta,
    }
    item = manager.restore(latest, args=ocp.args.StandardRestore(target))
    if not np.array_equal(np.asarray(item["meta"]), meta):
        manager.close()
        raise ValueError(
            f"fit: checkpoint_dir holds a run of another schedule ([num_steps, eval_every, chunk_size, "
            f"batch_size, num_members, num_examples] = {np.asarray(item['meta']).tolist()}, this run is "
            f"{meta.tolist()}), got checkpoint_dir = {os.fspath(directory)!r}."
        )
    carry = jax.tree.unflatten(treedef, [jnp.asarray(item["carry"][str(i)]) for i in range(len(leaves))])
    hist = {name: np.array(item["history"][name]) for name in hist}
    return manager, (int(latest), carry, hist)


def _save_checkpoint(manager, chunk_index: int, carry: PyTree, hist: dict, meta: np.ndarray) -> None:
    import orbax.checkpoint as ocp

    leaves = jax.tree.leaves(carry)
    item = {
        "carry": {str(i): leaf for i, leaf in enumerate(leaves)},
        "history": {name: np.array(value) for name, value in hist.items()},
        "meta": meta,
    }
    manager.save(chunk_index, args=ocp.args.StandardSave(item))


def retrain(
    step_fn: StepFn,
    state: PyTree,
    train_data: PyTree,
    val_data: PyTree,
    num_updates: ArrayLike,
    *,
    key: ArrayLike,
    batch_size: int,
    policy: str = "updates",
    eval_every: int | None = None,
    num_members: int | None = None,
    eval_fn: EvalFn | None = None,
    eval_data: PyTree = None,
    progress: bool = True,
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
      key: PRNG key of the retraining run.
      batch_size: examples per step.
      policy: "updates" or "epochs".
      eval_every: steps between history records (default: about 20 records).
      num_members: as in :func:`fit`.
      eval_fn: optional ``eval_fn(state, eval_data)`` to record (e.g. on a test set); no early
        stopping happens.
      eval_data: what ``eval_fn`` takes.
      progress: show a progress bar.

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
      >>> r = jr.retrain(step, jnp.zeros((), jnp.int32), data, held_out, 6, key=jax.random.key(0),
      ...                batch_size=4, policy="epochs", progress=False)
      >>> int(r.state)  # 6 updates = 1.5 epochs of 4; on 20 examples 1.5 epochs of 5 updates
      8
    """
    if jax.tree.structure(train_data) != jax.tree.structure(val_data):
        raise ValueError(
            f"retrain: val_data must have the structure of train_data, got val_data = "
            f"{jax.tree.structure(val_data)} for train_data = {jax.tree.structure(train_data)}."
        )
    n_train, n_val = _num_examples(train_data), _num_examples(val_data)
    budget = retrain_budget(num_updates, num_train=n_train, num_val=n_val, batch_size=batch_size, policy=policy)
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
        key=key,
        num_steps=num_steps,
        batch_size=batch_size,
        eval_every=eval_every,
        num_members=num_members,
        member_steps=budget,
        progress=progress,
    )
