"""Early stopping as data: a metric-driven state machine that runs inside ``jit``, ``scan`` and ``vmap``.

``EarlyStopping`` holds the hyperparameters (``patience`` and ``min_delta`` are pytree leaves, so
a sweep over patience is a ``vmap``; ``mode`` is static). Its state, :class:`EarlyStoppingState`,
is a ``NamedTuple`` of arrays with a snapshot of the best params. Under ``vmap`` over an ensemble
each member stops on its own; :func:`freeze_stopped` keeps the params and optimizer state of
stopped members unchanged while the others train on in the same ``lax.scan``.

:func:`retrain_budget` gives the number of updates for retraining on train + validation data
after a run with a held-out set (Goodfellow, Bengio & Courville 2016, Algorithm 7.2), under the
policy "same number of parameter updates" or "same number of epochs".
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxreg import _checks, _pytree

PyTree = Any

__all__ = ["EarlyStopping", "EarlyStoppingState", "freeze_stopped", "retrain_budget"]

_MODES = ("min", "max")
_POLICIES = ("updates", "epochs")


class EarlyStoppingState(NamedTuple):
    """State of :class:`EarlyStopping`; every leaf is an array.

    Attributes:
      best_metric: best metric seen so far (float32; ``+inf`` for "min", ``-inf`` for "max" before
        any improvement).
      best_params: the params passed with the update that gave ``best_metric`` (the initial params
        until then).
      best_step: 0-based index of the update that gave ``best_metric`` (int32; ``-1`` before any).
      step: number of updates seen while not stopped (int32).
      wait: number of updates since the last improvement (int32).
      stopped: whether ``wait >= patience`` has been reached (bool).
    """

    best_metric: jax.Array
    best_params: PyTree
    best_step: jax.Array
    step: jax.Array
    wait: jax.Array
    stopped: jax.Array


def _broadcast_to_leaf(cond: jax.Array, leaf: jax.Array) -> jax.Array:
    """``cond`` with trailing unit axes so that it broadcasts against ``leaf`` without rank promotion."""
    cond = jnp.asarray(cond)
    leaf = jnp.asarray(leaf)
    if cond.ndim > leaf.ndim or leaf.shape[: cond.ndim] != cond.shape:
        raise ValueError(
            f"freeze_stopped: stopped must have the leading (member) shape of every leaf, got stopped "
            f"of shape {cond.shape} for a leaf of shape {leaf.shape}."
        )
    return jnp.reshape(cond, cond.shape + (1,) * (leaf.ndim - cond.ndim))


def _select(cond: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(_broadcast_to_leaf(cond, a), a, b), on_true, on_false)


def freeze_stopped(stopped: ArrayLike, new: PyTree, old: PyTree) -> PyTree:
    r"""Keeps ``old`` where ``stopped`` and takes ``new`` elsewhere, leaf by leaf.

    .. math:: x_{\text{out}} = \begin{cases} x_{\text{old}} & \text{stopped} \\
       x_{\text{new}} & \text{otherwise} \end{cases}

    Use it after a training step to freeze the members of an ensemble that have stopped (their
    params and optimizer state stop changing) while the others train on, inside the same
    ``lax.scan``. ``stopped`` is a bool scalar, or an array whose shape is the leading (member)
    shape of every leaf of ``new`` and ``old``; it is broadcast explicitly (no rank promotion).

    Args:
      stopped: bool, scalar or of shape ``(num_members,)`` (e.g. ``EarlyStoppingState.stopped``).
      new: the state after the step.
      old: the state before the step, with the structure and shapes of ``new``.

    Returns:
      A pytree like ``new``.

    Raises:
      ValueError: if ``stopped`` does not match the leading shape of a leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxreg as jr
      >>> old = {"w": jnp.zeros((3, 2))}
      >>> new = {"w": jnp.ones((3, 2))}
      >>> jr.freeze_stopped(jnp.array([False, True, False]), new, old)["w"][:, 0].tolist()
      [1.0, 0.0, 1.0]
    """
    return _select(jnp.logical_not(jnp.asarray(stopped, jnp.bool_)), new, old)


def _check_patience(patience: Any) -> None:
    arr = _checks.concrete(patience)
    if arr is None:
        return
    if (
        arr.dtype == np.bool_
        or not np.issubdtype(arr.dtype, np.number)
        or np.any(~np.isfinite(arr))
        or np.any(arr != np.round(arr))
        or np.any(arr < 1)
    ):
        raise ValueError(f"EarlyStopping: patience must be an integer >= 1, got patience = {_checks._fmt(arr)}.")


@_pytree.register(data=("patience", "min_delta"), meta=("mode",))
class EarlyStopping:
    r"""Early stopping on a monitored metric, as pure state that runs inside ``jit``, ``scan`` and ``vmap``.

    With :math:`m_t` the metric passed to update :math:`t` and :math:`b` the best metric so far
    (:math:`+\infty` before any update), mode "min" counts an improvement when

    .. math:: m_t < b - \delta

    ("max": :math:`m_t > b + \delta`); a NaN never improves. On an improvement the metric, the
    params and the update index are kept and ``wait`` resets to 0; otherwise ``wait`` grows by one.
    ``stopped`` becomes true once ``wait >= patience``; after that, ``update`` returns its state
    unchanged (``step`` included).

    ``patience`` and ``min_delta`` are pytree leaves: pass the stopper into a jitted function and a
    new value does not recompile, and ``jax.vmap`` over a stopper with array leaves sweeps them.
    The state's ``wait``/``stopped`` work per member under ``vmap``, or batched directly: with
    ``state``, ``metric`` and the params stacked on a leading member axis, every member stops on
    its own.

    Args:
      patience: number of updates without improvement after which to stop; an integer >= 1 (may be
        traced, or an int array of one patience per member).
      min_delta: the margin an improvement must beat (>= 0; may be traced).
      mode: "min" (lower is better, e.g. a loss) or "max" (e.g. an accuracy). Static.

    Raises:
      ValueError: if ``patience`` is below 1 or not an integer, ``min_delta`` is negative, or
        ``mode`` is not "min" or "max".

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxreg as jr
      >>> stopper = jr.EarlyStopping(2)
      >>> state = stopper.init({"w": jnp.zeros(())})
      >>> def body(state, m):
      ...     state = stopper.update(state, m, {"w": m})
      ...     return state, state.stopped
      >>> state, stopped = jax.lax.scan(body, state, jnp.array([3.0, 1.0, 2.0, 1.0, 0.0]))
      >>> stopped.tolist()
      [False, False, False, True, True]
      >>> int(state.best_step), float(state.best_params["w"]), int(state.step)
      (1, 1.0, 4)
    """

    patience: jax.Array
    min_delta: jax.Array
    mode: str

    def __init__(self, patience: ArrayLike, *, min_delta: ArrayLike = 0.0, mode: str = "min"):
        _check_patience(patience)
        _checks.check_nonnegative("min_delta", min_delta, "EarlyStopping")
        if mode not in _MODES:
            raise ValueError(f'EarlyStopping: mode must be "min" or "max", got mode = {mode!r}.')
        _pytree.set_fields(
            self,
            patience=jnp.asarray(patience, jnp.int32),
            min_delta=jnp.asarray(min_delta, jnp.float32),
            mode=mode,
        )

    def __repr__(self) -> str:
        return f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, mode={self.mode!r})"

    def init(self, params: PyTree) -> EarlyStoppingState:
        """The state before any update: no best metric yet, ``best_params = params``.

        Args:
          params: the pytree to snapshot (params, or a whole training state).

        Returns:
          An :class:`EarlyStoppingState` with scalar counters (``vmap`` ``init`` for a member axis).
        """
        worst = jnp.inf if self.mode == "min" else -jnp.inf
        return EarlyStoppingState(
            best_metric=jnp.full([], worst, jnp.float32),
            best_params=params,
            best_step=jnp.full([], -1, jnp.int32),
            step=jnp.zeros([], jnp.int32),
            wait=jnp.zeros([], jnp.int32),
            stopped=jnp.zeros([], jnp.bool_),
        )

    def improved(self, state: EarlyStoppingState, metric: ArrayLike) -> jax.Array:
        """Whether ``metric`` improves on ``state.best_metric`` by more than ``min_delta`` (False on NaN)."""
        metric = jnp.asarray(metric, jnp.float32)
        if self.mode == "min":
            return metric < state.best_metric - self.min_delta
        return metric > state.best_metric + self.min_delta

    def update(self, state: EarlyStoppingState, metric: ArrayLike, params: PyTree) -> EarlyStoppingState:
        """Takes one metric (and the params it was measured on) into account.

        Args:
          state: the current state.
          metric: the monitored value, a scalar (or one per member, batched like ``state``).
          params: the pytree to snapshot if ``metric`` improves, structured like ``best_params``.

        Returns:
          The new state; ``state`` itself (leaf for leaf) where already stopped.
        """
        metric = jnp.asarray(metric, jnp.float32)
        active = jnp.logical_not(state.stopped)
        better = jnp.logical_and(active, self.improved(state, metric))
        wait = jnp.where(better, 0, state.wait + 1)
        new = EarlyStoppingState(
            best_metric=jnp.where(better, metric, state.best_metric),
            best_params=_select(better, params, state.best_params),
            best_step=jnp.where(better, state.step, state.best_step),
            step=state.step + 1,
            wait=wait,
            stopped=wait >= self.patience,
        )
        return _select(active, new, state)


def retrain_budget(
    num_updates: ArrayLike,
    *,
    num_train: int,
    num_val: int,
    batch_size: int,
    policy: str = "updates",
) -> jax.Array:
    r"""Number of parameter updates for retraining on train + validation data after early stopping.

    After a run on ``num_train`` examples (validation on ``num_val`` held out) found its best
    params after ``num_updates`` updates, retrain from a fresh start on all
    :math:`n_t + n_v` examples (Goodfellow et al. 2016, Algorithm 7.2) for

    .. math::
      u' = u \ (\text{"updates"}), \qquad
      u' = \left\lceil u \, \frac{\lfloor (n_t + n_v) / B \rfloor}{\lfloor n_t / B \rfloor} \right\rceil
      \ (\text{"epochs"}),

    where :math:`B` is the batch size and an epoch is :math:`\lfloor n / B \rfloor` updates (full
    batches of a fresh permutation, as in :func:`jaxreg.training.fit`). With more data per epoch,
    the same number of epochs means more updates.

    Args:
      num_updates: updates done at the best evaluation; an int, or an int array (one per member).
      num_train: number of training examples of the first run.
      num_val: number of held-out validation examples, now added to the training data.
      batch_size: examples per update.
      policy: "updates" (same number of parameter updates) or "epochs" (same number of passes).

    Returns:
      An int32 array shaped like ``num_updates``.

    Raises:
      ValueError: on a policy other than "updates"/"epochs", ``num_train < batch_size``, a negative
        ``num_val`` or a ``batch_size`` below 1.

    Examples:
      >>> import jaxreg as jr
      >>> int(jr.retrain_budget(100, num_train=1000, num_val=250, batch_size=100, policy="updates"))
      100
      >>> int(jr.retrain_budget(100, num_train=1000, num_val=250, batch_size=100, policy="epochs"))
      120
    """
    if policy not in _POLICIES:
        raise ValueError(f'retrain_budget: policy must be "updates" or "epochs", got policy = {policy!r}.')
    batch_size = _checks.check_int_at_least("batch_size", batch_size, 1, "retrain_budget")
    num_train = _checks.check_int_at_least("num_train", num_train, batch_size, "retrain_budget")
    num_val = _checks.check_int_at_least("num_val", num_val, 0, "retrain_budget")
    u = jnp.asarray(num_updates, jnp.int32)
    if policy == "updates":
        return u
    per_epoch_train = num_train // batch_size
    per_epoch_all = (num_train + num_val) // batch_size
    return (u * per_epoch_all + per_epoch_train - 1) // per_epoch_train
