"""Early stopping as data: a metric-driven state machine that runs inside ``jit``, ``scan`` and ``vmap``.

``EarlyStopping`` holds the hyperparameters (``patience``, ``min_delta``, ``baseline`` and
``start_from`` are pytree leaves, so a sweep over patience is a ``vmap``; ``mode`` is static). Its state, :class:`EarlyStoppingState`,
is a ``NamedTuple`` of arrays with a snapshot of the best params. Under ``vmap`` over an ensemble
each member stops on its own; :func:`freeze_stopped` keeps the params and optimizer state of
stopped members unchanged while the others train on in the same ``lax.scan``.
``ReduceOnPlateau`` is the same kind of state machine for keras's ``ReduceLROnPlateau``: its
state's ``scale`` multiplies a learning rate.

:func:`retrain_budget` gives the number of updates for retraining on train + validation data
after a run with a held-out set (Goodfellow, Bengio & Courville 2016, Algorithm 7.2), under the
policy "same number of parameter updates" or "same number of epochs".
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxreg import _checks

PyTree = Any

__all__ = [
    "EarlyStopping",
    "EarlyStoppingState",
    "PlateauState",
    "ReduceOnPlateau",
    "freeze_stopped",
    "retrain_budget",
]

_MODES = ("min", "max")
_POLICIES = ("updates", "epochs")


class EarlyStoppingState(NamedTuple):
    """State of :class:`EarlyStopping`; every leaf is an array.

    Attributes:
      best_metric: best metric seen so far (the float dtype given to ``init``, by default the
        default float dtype; ``+inf`` for "min", ``-inf`` for "max" before any improvement).
      best_params: the params passed with the update that gave ``best_metric`` (the initial params
        until then).
      best_step: 0-based index of the update that gave ``best_metric`` (int32; ``-1`` before any).
      step: number of updates seen while not stopped (int32).
      wait: number of counted updates since the last improvement that beat the baseline (int32).
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
      ValueError: if ``stopped`` is not of bool dtype or does not match the leading shape of a leaf.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxreg as jr
      >>> old = {"w": jnp.zeros((3, 2))}
      >>> new = {"w": jnp.ones((3, 2))}
      >>> jr.freeze_stopped(jnp.array([False, True, False]), new, old)["w"][:, 0].tolist()
      [1.0, 0.0, 1.0]
    """
    _checks.check_like("new", new, "old", old, "freeze_stopped")
    try:
        dtype = np.dtype(stopped.dtype) if hasattr(stopped, "dtype") else np.asarray(stopped).dtype
    except (TypeError, ValueError):
        dtype = None
    if dtype != np.bool_:  # "no" and 0.5 were read as true
        raise ValueError(f"freeze_stopped: stopped must be a bool or an array of bools, got stopped = {stopped!r}.")
    return _select(jnp.logical_not(jnp.asarray(stopped)), new, old)


def _float_dtype() -> np.dtype:
    """The default float dtype: float32, or float64 with ``jax_enable_x64``."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


# Concrete arrays even when built inside a trace (nnx.eval_shape's restore template, a jitted
# init): a traced leaf leaked out of it, and the next call of the step failed.
def _int_leaf(x: ArrayLike) -> jax.Array:
    with jax.ensure_compile_time_eval():
        return jnp.asarray(x, jnp.int32)


def _float_leaf(x: ArrayLike, dtype: Any = None) -> jax.Array:
    with jax.ensure_compile_time_eval():
        return jnp.asarray(x, _float_dtype() if dtype is None else dtype)


def _check_mode(where: str, mode: Any) -> None:
    if mode not in _MODES:
        raise ValueError(f'{where}: mode must be "min" or "max", got mode = {mode!r}.')


def _own_copy(x: Any) -> Any:
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return jnp.array(x, copy=True)
    return x  # under a trace the state's outputs are the program's own; numpy and numbers as given


def _check_hyperparameter_shapes(obj: Any, names: tuple[str, ...], state_shape: tuple, where: str) -> None:
    """Each hyperparameter leaf is a scalar or broadcasts to the state's counters without changing them.

    An array ``patience`` against a one-member state gave the state a member axis it did not have
    (caught, if at all, at the next update under another function's name).
    """
    for name in names:
        shape = jnp.shape(getattr(obj, name))
        if not _checks.broadcasts_to(shape, state_shape):
            raise ValueError(
                f"{where}: {name} must be a scalar or one per member of a state batched on a member axis, got "
                f"{name}.shape = {shape} for a state of shape {state_shape} (to sweep it, jax.vmap over the "
                f"stopper and its state together)."
            )


def _metric_and_dtype(metric: ArrayLike, state_best: jax.Array, where: str) -> tuple[jax.Array, Any]:
    """The metric in its own float dtype (ints in the state's), and the comparison dtype.

    The comparison runs in the wider of the metric's and the state's float dtypes (an explicit
    promotion, so strict dtype promotion holds): no rounding of the metric before it is compared.
    The metric broadcasts to the state's best value (a scalar, one per member, or ``(S, 1)``
    against an ``(S, M)`` state) without changing its shape: any other shape would broadcast
    the state into a new one.
    """
    try:
        metric = jnp.asarray(metric)
    except (TypeError, ValueError, OverflowError):  # a string, None, an object, an int beyond 64 bits
        shown = _checks.describe_int(metric) if isinstance(metric, int) else repr(metric)
        raise ValueError(f"{where}: metric must be a number or an array of numbers, got metric = {shown}.") from None
    if not (jnp.issubdtype(metric.dtype, jnp.integer) or jnp.issubdtype(metric.dtype, jnp.floating)):
        # a bool was the metric 1.0 (a flag passed for the metric)
        raise ValueError(f"{where}: metric must be a number or an array of numbers, got a {metric.dtype} metric.")
    state_dtype, state_shape = state_best.dtype, jnp.shape(state_best)
    if not _checks.broadcasts_to(metric.shape, state_shape):
        raise ValueError(
            f"{where}: metric must be a scalar or one per member, broadcasting to the state's best value "
            f"of shape {state_shape}, got metric.shape = {metric.shape}."
        )
    if not jnp.issubdtype(metric.dtype, jnp.floating):
        metric = metric.astype(state_dtype)
    a, b = jnp.dtype(metric.dtype), jnp.dtype(state_dtype)
    if a == b:
        return metric, a
    bits_a, bits_b = jnp.finfo(a).bits, jnp.finfo(b).bits
    if bits_a != bits_b:
        return metric, a if bits_a > bits_b else b
    return metric, jnp.dtype(jnp.float32)  # bfloat16 against float16: float32 holds both exactly


class _CheckedConstruction(type):
    """Metaclass of the public hyperparameter classes of this module.

    ``EarlyStopping(...)`` (the public class) runs its ``_create`` classmethod: argument checks on
    concrete values and conversion to array leaves, then it builds an instance of the registered
    data subclass. jax's unflatten and ``dataclasses.replace`` call the data subclass, whose
    constructor is the plain dataclass ``__init__`` (it only stores fields), so tracers and the
    placeholder objects jax unflattens with (e.g. in ``vmap``'s ``in_axes``) never meet the checks.
    ``isinstance(x, EarlyStopping)`` holds for every instance.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        create = cls.__dict__.get("_create")
        if create is None:  # the registered data subclass: a plain dataclass constructor
            return super().__call__(*args, **kwargs)
        return create.__func__(cls, *args, **kwargs)

    @property
    def __signature__(cls) -> inspect.Signature | None:
        """``_create``'s signature for ``inspect``, ``help`` and IDEs (they read ``__call__``'s
        ``*args, **kwargs`` otherwise); ``None`` (the default lookup) for the data subclass."""
        create = cls.__dict__.get("_create")
        return None if create is None else inspect.signature(create.__get__(None, cls))


def _storage(public: type) -> type:
    """The registered storage of a public hyperparameter class: a frozen dataclass subclass.

    Its fields are the public class's annotated attributes, in order; ``mode`` is static (a
    meta field), the others are array leaves. Its constructor only stores the fields (the
    metaclass finds no ``_create`` on it), so jax's unflatten never meets the checks.
    """
    namespace = {
        "__annotations__": dict(public.__annotations__),
        "__doc__": f"The registered storage of :class:`{public.__name__}` (its constructor only stores the fields).",
        "__module__": public.__module__,
    }
    cls = dataclasses.dataclass(frozen=True, repr=False)(type(public)(f"_{public.__name__}Data", (public,), namespace))
    data_fields = [name for name in public.__annotations__ if name != "mode"]
    return jax.tree_util.register_dataclass(cls, data_fields=data_fields, meta_fields=["mode"])


def _repr(obj: Any, name: str) -> str:
    fields = ", ".join(f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj))
    return f"{name}({fields})"


class EarlyStopping(metaclass=_CheckedConstruction):
    r"""Early stopping on a monitored metric, as pure state that runs inside ``jit``, ``scan`` and ``vmap``.

    With :math:`m_t` the metric passed to update :math:`t` (0-based), :math:`b` the best metric so
    far (:math:`+\infty` before any update), :math:`\delta` = ``min_delta``, :math:`\beta` =
    ``baseline`` and :math:`s` = ``start_from``, mode "min" counts update :math:`t \ge s` as an
    improvement, and as beating the baseline, when

    .. math:: m_t < b - \delta, \qquad m_t < \beta - \delta

    ("max": :math:`m_t > b + \delta`, :math:`m_t > \beta + \delta`); a non-finite metric (NaN,
    :math:`\pm\infty`: a diverged run) never improves, so it never replaces the best snapshot. On an
    improvement the metric, the params and the update index are kept; ``wait`` resets to 0 when the
    update improves *and* beats the baseline, and grows by one otherwise. ``stopped`` becomes true
    once ``wait >= patience``; after that, ``update`` returns its state unchanged (``step``
    included). Updates :math:`t < s` only advance ``step``: the state's ``best_metric``,
    ``best_params``, ``wait`` and ``stopped`` equal those of a stopper fed only the updates from
    :math:`s` on, while ``step`` and ``best_step`` keep indexing all updates.

    This follows keras's ``EarlyStopping`` (``min_delta``, ``baseline``, ``start_from_epoch``),
    with these differences: the best starts at :math:`\pm\infty` and a non-finite metric never
    improves (keras takes a NaN for neither, and a :math:`-\infty` loss for the best); the stop test runs on every counted update (keras skips it on an
    update that improves on the best without beating the baseline, so a run that keeps improving
    slowly while staying worse than the baseline never stops there; here it stops after
    ``patience`` such updates, which is what the baseline promises); keras never stops on epoch 0.
    ``baseline=None`` is stored as :math:`+\infty` ("min") or :math:`-\infty` ("max"), which every
    improvement beats.

    ``patience``, ``min_delta``, ``baseline`` and ``start_from`` are pytree leaves: pass the
    stopper into a jitted function and a new value does not recompile, and ``jax.vmap`` sweeps
    them: build the stopper inside the vmapped function from the swept value
    (``jax.vmap(lambda p: run(jr.EarlyStopping(p)))(patiences)``), or vmap over a built one
    whose leaves all have the member axis (``jax.vmap`` maps every leaf, so a scalar
    ``min_delta`` beside an array ``patience`` fails there). The state's ``wait``/``stopped``
    work per member under ``vmap``, or batched directly: with ``state``, ``metric`` and the params stacked on a leading
    member axis, every member stops on its own.

    ``EarlyStopping(...)`` checks its arguments and converts them to arrays; the instance is a
    frozen dataclass registered with ``jax.tree_util.register_dataclass`` (``mode`` static), whose
    unflattening (under ``jit``, ``vmap``, ``tree.map``) stores fields without checks.

    Args:
      patience: number of counted updates without improvement (or without beating the baseline)
        after which to stop; an integer >= 1 (may be traced, or an int array of one per member).
      min_delta: the margin an improvement must beat (>= 0; may be traced).
      mode: "min" (lower is better, e.g. a loss) or "max" (e.g. an accuracy). Static.
      baseline: a value the metric must beat for ``wait`` to reset, or ``None`` (no baseline).
      start_from: the index of the first update that counts (an integer >= 0; may be traced).

    Raises:
      ValueError: if ``patience`` is below 1 or not an integer, ``min_delta`` is negative,
        ``mode`` is not "min" or "max", ``baseline`` is NaN or ``start_from`` is negative or not
        an integer.

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

      With a baseline, improvements that stay worse than it do not reset the patience:

      >>> strict = jr.EarlyStopping(2, baseline=0.5)
      >>> def strict_body(state, m):
      ...     state = strict.update(state, m, {"w": m})
      ...     return state, state.stopped
      >>> _, stopped = jax.lax.scan(strict_body, strict.init({"w": jnp.zeros(())}), jnp.array([3.0, 2.0, 1.0]))
      >>> stopped.tolist()
      [False, True, True]

    References:
      Prechelt, "Early Stopping - But When?", in Neural Networks: Tricks of the Trade, 1998.

      keras ``keras.callbacks.EarlyStopping``, https://keras.io/api/callbacks/early_stopping/
    """

    patience: jax.Array
    min_delta: jax.Array
    baseline: jax.Array
    start_from: jax.Array
    mode: str

    @classmethod
    def _create(
        cls,
        patience: ArrayLike,
        *,
        min_delta: ArrayLike = 0.0,
        mode: str = "min",
        baseline: ArrayLike | None = None,
        start_from: ArrayLike = 0,
    ) -> EarlyStopping:
        _checks.check_integer_at_least("patience", patience, 1, "EarlyStopping", maximum=_checks.INT32_MAX)
        _checks.check_nonnegative("min_delta", min_delta, "EarlyStopping")
        _check_mode("EarlyStopping", mode)
        _checks.check_integer_at_least("start_from", start_from, 0, "EarlyStopping", maximum=_checks.INT32_MAX)
        if baseline is None:
            baseline = jnp.inf if mode == "min" else -jnp.inf
        arr = _checks.concrete(baseline)
        # a complex baseline reached float() (its TypeError)
        if arr is not None and (not _checks.is_real_numeric(arr) or np.any(np.isnan(arr))):
            raise ValueError(f"EarlyStopping: baseline must be a number or None, got baseline = {_checks.fmt(arr)}.")
        return _EarlyStoppingData(
            patience=_int_leaf(patience),
            min_delta=_float_leaf(min_delta),
            baseline=_float_leaf(baseline),
            start_from=_int_leaf(start_from),
            mode=mode,
        )

    def __repr__(self) -> str:
        return _repr(self, "EarlyStopping")

    def init(self, params: PyTree, *, dtype: Any = None) -> EarlyStoppingState:
        """The state before any update: no best metric yet, ``best_params`` a copy of ``params``.

        The copy is the state's own (outside ``jit``): a step that donates both the params and
        this state would otherwise donate one buffer twice.

        Args:
          params: the pytree to snapshot (params, or a whole training state).
          dtype: the float dtype of ``best_metric`` (default: the default float dtype, float32 or
            float64 with ``jax_enable_x64``); metrics of a narrower float dtype are kept exactly.

        Returns:
          An :class:`EarlyStoppingState` with scalar counters (``vmap`` ``init`` for a member axis).
        """
        dtype = _float_dtype() if dtype is None else jnp.dtype(dtype)
        worst = jnp.inf if self.mode == "min" else -jnp.inf
        return EarlyStoppingState(
            best_metric=jnp.full([], worst, dtype),
            best_params=jax.tree.map(_own_copy, params),
            best_step=jnp.full([], -1, jnp.int32),
            step=jnp.zeros([], jnp.int32),
            wait=jnp.zeros([], jnp.int32),
            stopped=jnp.zeros([], jnp.bool_),
        )

    def _beats(self, metric: jax.Array, reference: jax.Array, dtype: Any) -> jax.Array:
        metric, reference, delta = metric.astype(dtype), reference.astype(dtype), self.min_delta.astype(dtype)
        # A non-finite metric is a diverged run, never an improvement (-inf < best for a loss).
        beats = metric < reference - delta if self.mode == "min" else metric > reference + delta
        return jnp.logical_and(jnp.isfinite(metric), beats)

    def improved(self, state: EarlyStoppingState, metric: ArrayLike) -> jax.Array:
        """Whether ``metric`` improves on ``state.best_metric`` by more than ``min_delta`` (False when not finite)."""
        metric, dtype = _metric_and_dtype(metric, state.best_metric, "EarlyStopping.improved")
        _check_hyperparameter_shapes(self, ("min_delta",), jnp.shape(state.best_metric), "EarlyStopping.improved")
        return self._beats(metric, state.best_metric, dtype)

    def update(self, state: EarlyStoppingState, metric: ArrayLike, params: PyTree) -> EarlyStoppingState:
        """Takes one metric (and the params it was measured on) into account.

        Args:
          state: the current state.
          metric: the monitored value, a scalar (or one per member, batched like ``state``); any
            float dtype (compared without rounding, stored in ``best_metric``'s dtype).
          params: the pytree to snapshot if ``metric`` improves, structured like ``best_params``.

        Returns:
          The new state; ``state`` itself (leaf for leaf) where already stopped.
        """
        metric, dtype = _metric_and_dtype(metric, state.best_metric, "EarlyStopping.update")
        _check_hyperparameter_shapes(self, _STOPPING_LEAVES, jnp.shape(state.best_metric), "EarlyStopping.update")
        _checks.check_like("params", params, "state.best_params", state.best_params, "EarlyStopping.update")
        active = jnp.logical_not(state.stopped)
        counted = jnp.logical_and(active, state.step >= self.start_from)
        better = jnp.logical_and(counted, self._beats(metric, state.best_metric, dtype))
        reset = jnp.logical_and(better, self._beats(metric, self.baseline, dtype))
        wait = jnp.where(counted, jnp.where(reset, 0, state.wait + 1), state.wait)
        new = EarlyStoppingState(
            best_metric=jnp.where(better, metric.astype(state.best_metric.dtype), state.best_metric),
            best_params=_select(better, params, state.best_params),
            best_step=jnp.where(better, state.step, state.best_step),
            step=optax.safe_increment(state.step),
            wait=wait,
            stopped=jnp.logical_and(counted, wait >= self.patience),
        )
        return _select(active, new, state)


_EarlyStoppingData = _storage(EarlyStopping)
_STOPPING_LEAVES = ("patience", "min_delta", "baseline", "start_from")


class PlateauState(NamedTuple):
    """State of :class:`ReduceOnPlateau`; every leaf is an array.

    Attributes:
      scale: the factor to multiply the learning rate (or the updates) by (float32; starts at 1).
      best: best metric so far (``+inf`` for "min", ``-inf`` for "max" before any improvement).
      wait: number of updates without improvement outside cooldown since the last reduction
        (int32).
      cooldown_count: updates of cooldown left after the last reduction (int32).
      count: number of updates seen (int32; stays at the int32 maximum, as optax's counts).
    """

    scale: jax.Array
    best: jax.Array
    wait: jax.Array
    cooldown_count: jax.Array
    count: jax.Array


class ReduceOnPlateau(metaclass=_CheckedConstruction):
    r"""A learning-rate scale that shrinks when a metric plateaus (keras's ``ReduceLROnPlateau``), as pure state.

    With :math:`m_t` the metric of update :math:`t`, :math:`b` the best so far (:math:`+\infty`
    first) and :math:`\delta` = ``min_delta``, each update applies keras's rules in order:

    1. in cooldown (``cooldown_count > 0``): ``cooldown_count -= 1`` and ``wait = 0``;
    2. improvement (mode "min"; "max" mirrored), a non-finite metric never improving:

       .. math:: m_t < b - \delta \ \Rightarrow\ b \leftarrow m_t,\ \text{wait} \leftarrow 0;

    3. otherwise, if not in cooldown (after step 1): ``wait += 1``; once ``wait >= patience`` and
       ``scale > min_scale``:

       .. math:: \text{scale} \leftarrow \max(\text{factor} \cdot \text{scale},\ \text{min\_scale}),

       ``cooldown_count = cooldown`` and ``wait = 0``.

    The scale starts at 1, so ``learning_rate * state.scale`` is keras's learning rate with
    ``min_lr = learning_rate * min_scale``. As in :class:`EarlyStopping` (and keras's own
    ``ReduceLROnPlateau``), the best starts at :math:`\pm\infty` and a non-finite metric (NaN,
    :math:`\pm\infty`) never improves.

    ``factor``, ``patience``, ``min_delta``, ``cooldown`` and ``min_scale`` are pytree leaves: a
    new value does not recompile and ``jax.vmap`` over a plateau with array leaves is a sweep.
    The scale is state, so it cannot sit inside a fixed ``optax.chain``; feed it to the
    optimizer at each step, e.g. multiply the updates::

        updates, opt_state = opt.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: plateau_state.scale.astype(u.dtype) * u, updates)

    (exactly a learning rate times the scale for SGD or Adam, whose updates are linear in the
    learning rate), or, with ``optax.inject_hyperparams`` (or a ``jr.sweepable`` optimizer), set
    the learning rate before the update, in the state's dtype (float64 under x64, where the scale
    is float32; a ``lax.scan`` carry keeps its dtype)::

        hp = opt_state.hyperparams
        hp["learning_rate"] = (lr * plateau_state.scale).astype(hp["learning_rate"].dtype)

    Args:
      factor: the factor the scale is multiplied by on a plateau, in (0, 1).
      patience: updates without improvement (outside cooldown) before a reduction; integer >= 1.
      min_delta: the margin an improvement must beat (>= 0).
      cooldown: updates after a reduction during which ``wait`` stays 0; integer >= 0.
      min_scale: the scale never goes below it, in [0, 1] (the scale starts at 1).
      mode: "min" or "max". Static.

    Raises:
      ValueError: if ``factor`` is not in (0, 1), ``patience`` is not an integer >= 1,
        ``cooldown`` not an integer >= 0, ``min_delta`` negative, ``min_scale`` not in [0, 1], or
        ``mode`` not "min"/"max".

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxreg as jr
      >>> plateau = jr.ReduceOnPlateau(0.5, 2)
      >>> def body(state, m):
      ...     state = plateau.update(state, m)
      ...     return state, state.scale
      >>> _, scales = jax.lax.scan(body, plateau.init(), jnp.array([3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0]))
      >>> scales.tolist()
      [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]

    References:
      keras ``keras.callbacks.ReduceLROnPlateau``, https://keras.io/api/callbacks/reduce_lr_on_plateau/
    """

    factor: jax.Array
    patience: jax.Array
    min_delta: jax.Array
    cooldown: jax.Array
    min_scale: jax.Array
    mode: str

    @classmethod
    def _create(
        cls,
        factor: ArrayLike,
        patience: ArrayLike,
        *,
        min_delta: ArrayLike = 0.0,
        cooldown: ArrayLike = 0,
        min_scale: ArrayLike = 0.0,
        mode: str = "min",
    ) -> ReduceOnPlateau:
        _checks.check_in_open_interval("factor", factor, 0, 1, "ReduceOnPlateau")
        _checks.check_integer_at_least("patience", patience, 1, "ReduceOnPlateau", maximum=_checks.INT32_MAX)
        _checks.check_nonnegative("min_delta", min_delta, "ReduceOnPlateau")
        _checks.check_integer_at_least("cooldown", cooldown, 0, "ReduceOnPlateau", maximum=_checks.INT32_MAX)
        # the scale starts at 1: a floor above it would never let the scale drop
        _checks.check_in_range("min_scale", min_scale, 0, 1, "ReduceOnPlateau", closed_high=True)
        _check_mode("ReduceOnPlateau", mode)
        return _ReduceOnPlateauData(
            factor=_float_leaf(factor, jnp.float32),
            patience=_int_leaf(patience),
            min_delta=_float_leaf(min_delta),
            cooldown=_int_leaf(cooldown),
            min_scale=_float_leaf(min_scale, jnp.float32),
            mode=mode,
        )

    def __repr__(self) -> str:
        return _repr(self, "ReduceOnPlateau")

    def init(self, *, dtype: Any = None) -> PlateauState:
        """The state before any update: ``scale = 1``, no best yet.

        Args:
          dtype: the float dtype of ``best`` (default: the default float dtype).

        Returns:
          A :class:`PlateauState` of scalars (``vmap`` over a plateau for a member axis).
        """
        dtype = _float_dtype() if dtype is None else jnp.dtype(dtype)
        worst = jnp.inf if self.mode == "min" else -jnp.inf
        return PlateauState(
            scale=jnp.ones([], jnp.float32),
            best=jnp.full([], worst, dtype),
            wait=jnp.zeros([], jnp.int32),
            cooldown_count=jnp.zeros([], jnp.int32),
            count=jnp.zeros([], jnp.int32),
        )

    def update(self, state: PlateauState, metric: ArrayLike) -> PlateauState:
        """Takes one metric into account.

        Args:
          state: the current state.
          metric: the monitored value, a scalar (or one per member, batched like ``state``).

        Returns:
          The new state.
        """
        metric, dtype = _metric_and_dtype(metric, state.best, "ReduceOnPlateau.update")
        _check_hyperparameter_shapes(self, _PLATEAU_LEAVES, jnp.shape(state.best), "ReduceOnPlateau.update")
        m, best, delta = metric.astype(dtype), state.best.astype(dtype), self.min_delta.astype(dtype)
        better = jnp.logical_and(jnp.isfinite(m), m < best - delta if self.mode == "min" else m > best + delta)
        in_cooldown = state.cooldown_count > 0
        cooldown_count = jnp.where(in_cooldown, state.cooldown_count - 1, state.cooldown_count)
        wait = jnp.where(in_cooldown, 0, state.wait)
        counts = jnp.logical_and(jnp.logical_not(better), cooldown_count <= 0)
        wait = jnp.where(better, 0, jnp.where(counts, wait + 1, wait))
        reduce = jnp.logical_and(jnp.logical_and(counts, wait >= self.patience), state.scale > self.min_scale)
        scale = jnp.where(reduce, jnp.maximum(state.scale * self.factor, self.min_scale), state.scale)
        return PlateauState(
            scale=scale,
            best=jnp.where(better, metric.astype(state.best.dtype), state.best),
            wait=jnp.where(reduce, 0, wait),
            cooldown_count=jnp.where(reduce, self.cooldown, cooldown_count),
            count=optax.safe_increment(state.count),
        )


_ReduceOnPlateauData = _storage(ReduceOnPlateau)
_PLATEAU_LEAVES = ("factor", "patience", "min_delta", "cooldown", "min_scale")


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
      ValueError: on a policy other than "updates"/"epochs", ``num_updates`` that are not
        integers >= 0, ``num_train < batch_size``, a negative ``num_val`` or a ``batch_size``
        below 1.

    Examples:
      >>> import jaxreg as jr
      >>> int(jr.retrain_budget(100, num_train=1000, num_val=250, batch_size=100, policy="updates"))
      100
      >>> int(jr.retrain_budget(100, num_train=1000, num_val=250, batch_size=100, policy="epochs"))
      120
    """
    return checked_retrain_budget(num_updates, num_train, num_val, batch_size, policy, "retrain_budget")


_HOST_COUNT_MAX = int(np.iinfo(np.int64).max) // 2  # counted in int64 on the host; num_train + num_val must fit too


def checked_retrain_budget(
    num_updates: ArrayLike, num_train: int, num_val: int, batch_size: int, policy: str, where: str
) -> jax.Array:
    """:func:`retrain_budget` whose errors name ``where`` (``retrain`` checks its own arguments)."""
    if policy not in _POLICIES:
        raise ValueError(f'{where}: policy must be "updates" or "epochs", got policy = {policy!r}.')
    _checks.check_integer_at_least("num_updates", num_updates, 0, where, maximum=_checks.INT32_MAX)
    # host arithmetic in int64: data sets beyond int32 examples are counts like any other
    batch_size = _checks.check_int_at_least("batch_size", batch_size, 1, where, maximum=_HOST_COUNT_MAX)
    if where == "retrain_budget":
        num_train = _checks.check_int_at_least("num_train", num_train, 1, where, maximum=_HOST_COUNT_MAX)
    if num_train < batch_size:  # one batch must fit the training data
        examples = f"num_train = {num_train}" if where == "retrain_budget" else f"{num_train}"
        data = "training examples" if where == "retrain_budget" else "train_data examples"
        raise ValueError(
            f"{where}: batch_size must be at most the number of {data} ({examples}), got batch_size = {batch_size}."
        )
    num_val = _checks.check_int_at_least("num_val", num_val, 0, where, maximum=_HOST_COUNT_MAX)
    u = jnp.asarray(num_updates, jnp.int32)
    if policy == "updates":
        return u
    per_epoch_train = num_train // batch_size
    per_epoch_all = (num_train + num_val) // batch_size
    # u * per_epoch_all overflows int32 at realistic sizes (500k updates of 5k batches): in int64,
    # the result saturated at the int32 maximum (refused when concrete)
    with jax.enable_x64(True):
        wide = (u.astype(jnp.int64) * per_epoch_all + per_epoch_train - 1) // per_epoch_train
        top = _checks.INT32_MAX
        concrete = _checks.concrete(wide)
        if concrete is not None and np.any(concrete > top):
            raise ValueError(
                f"{where}: the epochs policy needs {int(jnp.max(wide))} updates for num_updates = "
                f"{int(jnp.max(u))}, more than an int32 holds ({top})."
            )
        return jnp.minimum(wide, top).astype(jnp.int32)
