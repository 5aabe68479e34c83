"""Weight averaging through the optimizer: EMA (Polyak), SWA and SWAG as optax transformations.

Each transformation goes last in an ``optax.chain``: it passes the updates through unchanged
and folds the new params ``params + updates`` into an average kept in its state. So the average
trains, checkpoints, ``vmap``s and freezes (:func:`jaxreg.freeze_stopped`) with the rest of the
optimizer state, per ensemble member. The hyperparameters (``decay``, ``start``, ``every``) are
leaves of the state, read by ``update``: build the states under ``jax.vmap`` over values and a
sweep over decays is one program. To schedule or change one during training, wrap the factory in
:func:`jaxreg.sweepable`: there the value it builds the transformation with at each step is used
and kept in the state; ``optax.inject_hyperparams`` rebuilds the transformation but keeps init's
state, so its values never reach ``update``. :func:`averaged_params` reads the average out of any chain
state; :func:`swag_sample` draws params from SWAG's Gaussian (diagonal plus low rank).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jaxreg import _checks, _random, _rebuild
from jaxreg._tree import apply_updates, compute_dtype, default_float, leaf_name

PyTree = Any

__all__ = ["EmaState", "SwaState", "SwagState", "averaged_params", "ema", "swa", "swag", "swag_sample"]


class EmaState(NamedTuple):
    """State of :func:`ema`.

    Attributes:
      count: number of updates seen (int32; stays at the int32 maximum, as optax's counts).
      decay: the decay (a float leaf: float32, float64 under ``jax_enable_x64``; read by ``update``).
      average: the (debiased, if asked) exponential moving average of the params.
    """

    count: jax.Array
    decay: jax.Array
    average: PyTree


class SwaState(NamedTuple):
    """State of :func:`swa`.

    Attributes:
      count: number of updates seen (int32; stays at the int32 maximum, as optax's counts).
      num_averaged: number of snapshots in the average (int32).
      start: the first update whose params enter the average (int32 leaf).
      every: updates between snapshots (int32 leaf).
      average: the equal-weight average of the snapshots (the current params before the first).
    """

    count: jax.Array
    num_averaged: jax.Array
    start: jax.Array
    every: jax.Array
    average: PyTree


class SwagState(NamedTuple):
    """State of :func:`swag`.

    Attributes:
      count: number of updates seen (int32; stays at the int32 maximum, as optax's counts).
      num_averaged: number of snapshots collected (int32).
      start: the first update whose params are collected (int32 leaf).
      every: updates between snapshots (int32 leaf).
      mean: the mean of the snapshots (the SWA average).
      sq_mean: the mean of their squares.
      deviations: the last ``rank`` deviations ``snapshot - mean`` (mean after that snapshot), each
        leaf of shape ``(rank, *param_shape)``, a ring buffer (zeros where not yet filled).
    """

    count: jax.Array
    num_averaged: jax.Array
    start: jax.Array
    every: jax.Array
    mean: PyTree
    sq_mean: PyTree
    deviations: PyTree


_STATES = (EmaState, SwaState, SwagState)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _need_params(where: str, params: Any, updates: Any, average: Any) -> None:
    _checks.need_params(params, updates, where)
    # a state made for other params (another model's checkpoint) failed in jnp's broadcasting
    _checks.check_like("params", params, "init's params", average, where)


def _rebuilt_with(state: Any, **closure: Any) -> Any:
    """``state`` with the closure's hyperparameters when :func:`jaxreg.sweepable` rebuilt the
    transformation for this update (they are this step's), else as it is (``update`` reads the
    state's, e.g. per member under ``vmap``)."""
    if not _rebuild.rebuilt():
        return state
    return state._replace(**{k: jnp.asarray(v).astype(getattr(state, k).dtype) for k, v in closure.items()})


def _accumulator(params: PyTree) -> PyTree:
    """``params`` with half-precision float leaves in float32: the dtype averages are kept in.

    A bfloat16 average of decay 0.99 stalls (its increments fall below bfloat16's resolution:
    an EMA of params held at 1 stops at 0.8), and a bfloat16 ``E[w^2] - E[w]^2`` cancels.
    Every leaf is a copy, as optax's states are: a state sharing the params' buffers cannot be
    donated beside them (``jax.jit(..., donate_argnums=...)``: "donate the same buffer twice").
    """

    def one(w):
        if _is_float(w):
            return jnp.array(w, compute_dtype(jnp.result_type(w)), copy=True)
        return jnp.array(w, copy=True) if isinstance(w, jax.Array) else w

    return jax.tree.map(one, params)


def _lerp(average: PyTree, new: PyTree, weight: jax.Array) -> PyTree:
    """``average + weight * (new - average)`` on float leaves (in the leaf's dtype); other leaves take ``new``."""

    def one(a, w):
        if not _is_float(a):
            return jnp.asarray(w)
        a, w = jnp.asarray(a), jnp.asarray(w, jnp.result_type(a))
        t = weight.astype(a.dtype)
        # torch.lerp's two-sided form: exact at weight 0 and 1, half an ulp of rounding otherwise
        return jnp.where(t < 0.5, a + t * (w - a), w - (w - a) * (1 - t))

    return jax.tree.map(one, average, new)


def _snapshot(t: jax.Array, start: jax.Array, every: jax.Array) -> jax.Array:
    """Whether the params after update ``t`` (``t = 0``: the initial params) are a snapshot."""
    return jnp.logical_and(t >= start, jnp.remainder(t - start, every) == 0)


def _check_schedule(start: ArrayLike, every: ArrayLike, where: str) -> None:
    """``start`` an integer >= 0 and ``every`` an integer >= 1 (scalar array leaves allowed)."""
    _checks.check_scalar("start", start, where)
    _checks.check_scalar("every", every, where)
    _checks.check_integer_at_least("start", start, 0, where, maximum=_checks.INT32_MAX)
    _checks.check_integer_at_least("every", every, 1, where, maximum=_checks.INT32_MAX)


def _schedule(start: ArrayLike, every: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(start, every, num_averaged)`` of a fresh :class:`SwaState` or :class:`SwagState`."""
    start_, every_ = jnp.asarray(start, jnp.int32), jnp.asarray(every, jnp.int32)
    return start_, every_, _snapshot(jnp.zeros([], jnp.int32), start_, every_).astype(jnp.int32)


def _next_snapshot(state: SwaState | SwagState) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(count, is_snapshot, num_averaged, weight)`` of the next update of an SWA or SWAG state.

    ``weight`` moves a running mean of ``n`` snapshots to the mean of ``n + 1`` (``1 / (n + 1)``)
    on a snapshot; before the first snapshot (``n = 0``) it is 1, so the "average" follows the params.
    """
    count = optax.safe_increment(state.count)
    snap = _snapshot(count, state.start, state.every)
    n = state.num_averaged
    dtype = default_float()
    weight = jnp.where(snap, 1.0 / (n + 1).astype(dtype), (n == 0).astype(dtype))
    return count, snap, n, weight


def ema(decay: ArrayLike, *, debias: bool = False) -> optax.GradientTransformation:
    r"""An exponential moving average of the params (Polyak averaging), kept in the optimizer state.

    With :math:`w_t` the params after update :math:`t` (:math:`w_0` those given to ``init``) and
    :math:`d` = ``decay``:

    .. math::
      \bar w_0 = w_0, \qquad \bar w_t = \bar w_{t-1} + \beta_t (w_t - \bar w_{t-1}), \qquad
      \beta_t = 1 - d \ \text{ or, with debias, } \ \beta_t = \frac{1 - d}{1 - d^t},

    so without ``debias`` the average starts at the initial params (``torch.optim.swa_utils``'s
    ``AveragedModel`` with ``get_ema_multi_avg_fn(decay)``, first fed :math:`w_0`), and with
    ``debias`` it is Adam's bias-corrected average
    :math:`\sum_{s=1}^t (1-d) d^{t-s} w_s / (1 - d^t)` of the updated params only (exactly
    :math:`w_1` after the first update; the uniform average when :math:`d = 1`). The updates pass
    through unchanged: place it last in the chain. Non-float leaves are copied, not averaged;
    half-precision leaves are averaged in float32 (a bfloat16 average of decay 0.99 stalls at 0.8
    of a constant), and :func:`averaged_params` returns them in float32.

    Args:
      decay: in [0, 1]; a leaf of the state (may be traced: build states under ``jax.vmap`` over
        decays for a sweep; ``update`` reads the state's value). Schedule it with
        ``jr.sweepable(jr.ema)(decay=jr.schedule(...))``, not ``optax.inject_hyperparams``.
      debias: Adam-style bias correction. Static.

    Returns:
      An ``optax.GradientTransformation`` whose state is an :class:`EmaState`.

    Raises:
      ValueError: if ``decay`` is not a scalar in [0, 1], or ``update`` gets no params.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import jaxreg as jr
      >>> opt = optax.chain(optax.sgd(1.0), jr.ema(0.5))
      >>> w = jnp.zeros(())
      >>> state = opt.init(w)
      >>> for g in (-2.0, -2.0):  # params 0 -> 2 -> 4
      ...     u, state = opt.update(jnp.asarray(g), state, w)
      ...     w = optax.apply_updates(w, u)
      >>> float(w), float(jr.averaged_params(state))  # 0.5 * (0.5 * 0 + 0.5 * 2) + 0.5 * 4
      (4.0, 2.5)

    References:
      Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J. Control
      Optim. 30(4), 1992.

      Kingma & Ba, "Adam: a method for stochastic optimization", ICLR 2015 (bias correction).
    """
    _checks.check_in_range("decay", decay, 0, 1, "ema", closed_high=True, scalar=True)
    debias = _checks.check_flag("debias", debias, "ema")

    def init_fn(params):
        return EmaState(jnp.zeros([], jnp.int32), jnp.asarray(decay, default_float()), _accumulator(params))

    def update_fn(updates, state, params=None):
        _need_params("ema", params, updates, state.average)
        state = _rebuilt_with(state, decay=decay)
        count = optax.safe_increment(state.count)
        one_minus = 1.0 - state.decay
        if debias:
            t = count.astype(one_minus.dtype)
            # (1 - d) / (1 - d**t), its value and derivative in d finite on all of [0, 1] (a decay
            # may be a meta-gradient's leaf): 1 - d**t as -expm1(t log1p(d - 1)) near 1 (no
            # cancellation), directly below 1/2 (log1p(-1) at d = 0), and at d = 1 its expansion
            # 1/t + (t - 1)/(2t) (1 - d). Double wheres: the branches not taken get safe inputs.
            near = state.decay >= 0.5
            e_near = jnp.where(near & (one_minus > 0), one_minus, 0.5)
            d_far = jnp.where(near, 0.0, state.decay)
            weight = jnp.where(
                one_minus == 0,
                1.0 / t + (t - 1.0) / (2.0 * t) * one_minus,
                jnp.where(near, e_near / -jnp.expm1(t * jnp.log1p(-e_near)), (1.0 - d_far) / (1.0 - d_far**t)),
            )
        else:
            weight = one_minus
        average = _lerp(state.average, apply_updates(params, updates), weight)
        return updates, EmaState(count, state.decay, average)

    return optax.GradientTransformation(init_fn, update_fn)


def swa(start: ArrayLike, every: ArrayLike = 1) -> optax.GradientTransformation:
    r"""Stochastic weight averaging: the equal-weight average of snapshots of the params, in the optimizer state.

    With :math:`w_t` the params after update :math:`t` (:math:`w_0` those given to ``init``), the
    snapshots are :math:`w_t` for :math:`t \in S = \{\text{start}, \text{start} + \text{every},
    \dots\}` and the average after update :math:`t` is

    .. math:: \bar w_t = \frac{1}{|S_t|} \sum_{s \in S_t} w_s, \qquad S_t = S \cap [0, t],

    computed incrementally as ``torch.optim.swa_utils.AveragedModel`` does,
    :math:`\bar w \leftarrow \bar w + (w - \bar w) / (n + 1)`. Before the first snapshot the
    "average" is the current params. The updates pass through unchanged: place it last in the
    chain (after a learning-rate schedule such as SWA's constant or cyclic one). Half-precision
    leaves are averaged in float32 (as :func:`ema`).

    Args:
      start: the first update whose params enter the average; an integer >= 0 (leaf of the state).
      every: updates between snapshots; an integer >= 1 (leaf of the state).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`SwaState`.

    Raises:
      ValueError: if ``start`` or ``every`` is not a scalar integer in range, or ``update`` gets no params.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import jaxreg as jr
      >>> opt = optax.chain(optax.sgd(1.0), jr.swa(start=2, every=2))
      >>> w = jnp.zeros(())
      >>> state = opt.init(w)
      >>> for _ in range(5):  # params 1, 2, 3, 4, 5: snapshots after updates 2 and 4
      ...     u, state = opt.update(jnp.asarray(-1.0), state, w)
      ...     w = optax.apply_updates(w, u)
      >>> float(jr.averaged_params(state)), int(state[1].num_averaged)
      (3.0, 2)

    References:
      Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, "Averaging weights leads to wider optima and
      better generalization", UAI 2018.
    """
    _check_schedule(start, every, "swa")

    def init_fn(params):
        start_, every_, num = _schedule(start, every)
        return SwaState(jnp.zeros([], jnp.int32), num, start_, every_, _accumulator(params))

    def update_fn(updates, state, params=None):
        _need_params("swa", params, updates, state.average)
        state = _rebuilt_with(state, start=start, every=every)
        count, snap, n, weight = _next_snapshot(state)
        average = _lerp(state.average, apply_updates(params, updates), weight)
        return updates, SwaState(count, n + snap.astype(jnp.int32), state.start, state.every, average)

    return optax.GradientTransformation(init_fn, update_fn)


def swag(start: ArrayLike, every: ArrayLike = 1, rank: int = 20) -> optax.GradientTransformation:
    r"""SWA-Gaussian: the moments of the SWA snapshots and their last ``rank`` deviations, in the optimizer state.

    With the snapshots :math:`w_1, \dots, w_n` taken as in :func:`swa`, the state keeps

    .. math::
      \bar w = \frac{1}{n} \sum_i w_i, \qquad \overline{w^2} = \frac{1}{n} \sum_i w_i^2, \qquad
      D = [\,w_i - \bar w_{(i)}\,]_{i = n-K+1}^{n},

    where :math:`\bar w_{(i)}` is the mean of the first :math:`i` snapshots and
    :math:`K = \min(n, \text{rank})` (the last ``rank`` deviations, a ring buffer). SWAG's
    posterior is :math:`\mathcal N\big(\bar w,\ s\,(\Sigma_{\text{diag}} + D D^\top / \max(K - 1, 1))\big)`,
    :math:`\Sigma_{\text{diag}} = \operatorname{diag}(\max(\overline{w^2} - \bar w^2, 0))`, with
    :math:`s = 1/2` in Maddox et al.; :func:`swag_sample` draws from it and :func:`averaged_params`
    returns :math:`\bar w`. The updates pass through unchanged: place it last in the chain.
    Half-precision leaves have their moments and deviations in float32 (a bfloat16
    :math:`\overline{w^2} - \bar w^2` cancels to 40x the variance of snapshots spread by 1%).

    Args:
      start: the first update whose params are collected; an integer >= 0 (leaf of the state).
      every: updates between snapshots; an integer >= 1 (leaf of the state).
      rank: number of deviation columns kept; a Python int >= 0 (0: SWAG-diagonal). Static (it is
        a shape).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`SwagState`.

    Raises:
      ValueError: if ``start``, ``every`` or ``rank`` is not a scalar in range, or ``update`` gets no params.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxreg as jr
      >>> opt = optax.chain(optax.sgd(1.0), jr.swag(start=1, rank=2))
      >>> w = jnp.zeros(2)
      >>> state = opt.init(w)
      >>> for g in ([-1.0, 0.0], [0.0, -2.0], [-1.0, 0.0]):  # snapshots [1, 0], [1, 2], [2, 2]
      ...     u, state = opt.update(jnp.asarray(g), state, w)
      ...     w = optax.apply_updates(w, u)
      >>> jr.averaged_params(state).tolist()
      [1.3333333730697632, 1.3333333730697632]
      >>> samples = jax.vmap(lambda k: jr.swag_sample(state, k))(jax.random.split(jax.random.key(0), 4))
      >>> samples.shape
      (4, 2)

    References:
      Maddox, Garipov, Izmailov, Vetrov & Wilson, "A simple baseline for Bayesian uncertainty in
      deep learning", NeurIPS 2019.
    """
    _check_schedule(start, every, "swag")
    rank = _checks.check_int_at_least("rank", rank, 0, "swag")

    def init_fn(params):
        for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
            # its second moment and samples would need E|w|^2 and a complex normal
            _checks.check_real(f"leaf {leaf_name(path)!r}", w, "swag", "SWAG's Gaussian is over real parameters.")
        start_, every_, num = _schedule(start, every)
        mean = _accumulator(params)
        sq = jax.tree.map(lambda w: jnp.square(w) if _is_float(w) else w, _accumulator(params))  # own buffers
        dev = jax.tree.map(lambda w: jnp.zeros((rank, *jnp.shape(w)), jnp.result_type(w)), mean)
        return SwagState(jnp.zeros([], jnp.int32), num, start_, every_, mean, sq, dev)

    def update_fn(updates, state, params=None):
        _need_params("swag", params, updates, state.mean)
        state = _rebuilt_with(state, start=start, every=every)
        count, snap, n, weight = _next_snapshot(state)
        new = apply_updates(params, updates)
        mean = _lerp(state.mean, new, weight)
        squares = jax.tree.map(lambda w: jnp.square(w) if _is_float(w) else w, _accumulator(new))
        sq_mean = _lerp(state.sq_mean, squares, weight)
        column = jnp.remainder(n, max(rank, 1))

        def deviation(d, w, m):
            if rank == 0 or not _is_float(w):
                return d
            written = jax.lax.dynamic_update_index_in_dim(d, (w.astype(m.dtype) - m).astype(d.dtype), column, axis=0)
            return jnp.where(snap, written, d)

        deviations = jax.tree.map(deviation, state.deviations, new, mean)
        return updates, SwagState(
            count, n + snap.astype(jnp.int32), state.start, state.every, mean, sq_mean, deviations
        )

    return optax.GradientTransformation(init_fn, update_fn)


def _find(opt_state: PyTree, types: tuple[type, ...], where: str) -> Any:
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _STATES)) if isinstance(s, types)]
    names = " or ".join(t.__name__ for t in types)
    if not found:
        raise ValueError(
            f"{where}: opt_state holds no {names}; put jr.ema, jr.swa or jr.swag last in the optax chain "
            f"(for swag_sample: jr.swag), got an opt_state of structure {jax.tree.structure(opt_state)}."
        )
    if len(found) > 1:
        raise ValueError(f"{where}: opt_state holds {len(found)} averaging states ({names}); use a chain with one.")
    return found[0]


def averaged_params(opt_state: PyTree) -> PyTree:
    r"""The averaged params held by the :func:`ema`, :func:`swa` or :func:`swag` state inside ``opt_state``.

    .. math:: \bar w = \text{the EMA, the SWA average, or SWAG's mean}

    ``opt_state`` is any optimizer state (a chain's tuple, masked or injected states, with or
    without a member axis): the state tree is searched for the one averaging state.

    Args:
      opt_state: an optimizer state with exactly one averaging state in it.

    Returns:
      The average, structured like the params (with the member axis, if the state has one);
      float32 for half-precision params (``.astype`` them back if the model needs their dtype).

    Raises:
      ValueError: if ``opt_state`` holds no averaging state, or more than one.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> import jaxreg as jr
      >>> state = optax.chain(optax.adam(1e-3), jr.swa(start=10)).init({"w": jnp.ones(2)})
      >>> jr.averaged_params(state)["w"].tolist()
      [1.0, 1.0]
    """
    state = _find(opt_state, _STATES, "averaged_params")
    return state.mean if isinstance(state, SwagState) else state.average


def swag_sample(opt_state: PyTree, rng: jax.Array, *, scale: ArrayLike = 0.5) -> PyTree:
    r"""Draws params from the SWAG posterior held by the :func:`swag` state inside ``opt_state``.

    With :math:`z_1 \sim \mathcal N(0, I_p)` (one entry per parameter) and
    :math:`z_2 \sim \mathcal N(0, I_{\text{rank}})` (shared by all leaves):

    .. math::
      w = \bar w + \sqrt{s} \Big( \Sigma_{\text{diag}}^{1/2} z_1 + \frac{D z_2}{\sqrt{\max(K - 1, 1)}} \Big),
      \qquad w \sim \mathcal N\big(\bar w,\ s\,(\Sigma_{\text{diag}} + D D^\top / \max(K - 1, 1))\big),

    with :math:`\bar w`, :math:`\Sigma_{\text{diag}}`, :math:`D` and :math:`K` as in :func:`swag`
    (unfilled columns of :math:`D` are zero) and :math:`s` = ``scale`` (Maddox et al. use 1/2).
    Pure: ``jax.vmap`` over keys gives stacked samples for :func:`jaxreg.ensemble.predict`, whose
    ``Prediction`` is then SWAG's Bayesian model average and its variance.

    Args:
      opt_state: an optimizer state with one :class:`SwagState` in it (no member axis; ``vmap``
        over members otherwise).
      rng: a PRNG key.
      scale: the covariance scale :math:`s \ge 0` (may be traced).

    Returns:
      A params pytree (non-float leaves are the mean's); float32 for half-precision params, as
      :func:`averaged_params` (``.astype`` them back if the model needs their dtype).

    Raises:
      ValueError: if ``opt_state`` holds no :class:`SwagState` (or several) or has a member axis,
        or ``scale`` is negative or not a scalar.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import jaxreg as jr
      >>> opt = optax.chain(optax.sgd(1.0), jr.swag(start=0, rank=0))
      >>> state = opt.init(jnp.zeros(3))
      >>> _, state = opt.update(-jnp.full(3, 2.0), state, jnp.zeros(3))  # snapshots 0 and 2
      >>> keys = jax.random.split(jax.random.key(0), 20000)
      >>> w = jax.vmap(lambda k: jr.swag_sample(state, k, scale=1.0))(keys)  # N(1, 1) per entry
      >>> bool(jnp.all(jnp.abs(w.mean(0) - 1.0) < 0.05)), bool(jnp.all(jnp.abs(w.var(0) - 1.0) < 0.1))
      (True, True)
      >>> pred = jr.ensemble.predict(lambda p, x: p @ x, w, jnp.ones(3))
      >>> pred.mean.shape, bool(jnp.abs(pred.variance - 3.0) < 0.2)
      ((), True)

    References:
      Maddox, Garipov, Izmailov, Vetrov & Wilson, "A simple baseline for Bayesian uncertainty in
      deep learning", NeurIPS 2019.
    """
    _checks.check_nonnegative("scale", scale, "swag_sample", scalar=True)
    _random.check_key(rng, "swag_sample")
    state = _find(opt_state, (SwagState,), "swag_sample")
    if jnp.ndim(state.count) != 0:
        # The rank would be read off the member axis: a wrong covariance, or a broadcasting error.
        raise ValueError(
            "swag_sample: opt_state has a member axis (SwagState.count.shape = "
            f"{jnp.shape(state.count)}); map over the members: "
            "jax.vmap(lambda s: jr.swag_sample(s, rng))(opt_state)."
        )
    leaves, treedef = jax.tree.flatten(state.mean)
    sq_leaves = treedef.flatten_up_to(state.sq_mean)
    dev_leaves = treedef.flatten_up_to(state.deviations)
    key_diag, key_rank = jax.random.split(rng)
    diag_keys = jax.random.split(key_diag, max(len(leaves), 1))
    rank = dev_leaves[0].shape[0] if dev_leaves else 0
    acc = default_float()
    z2 = jax.random.normal(key_rank, (rank,), acc)
    filled = jnp.minimum(state.num_averaged, rank)
    denom = jnp.sqrt(jnp.maximum(filled - 1, 1).astype(acc))
    root_scale = jnp.sqrt(jnp.asarray(scale, acc))
    out = []
    for key, m, sq, d in zip(diag_keys, leaves, sq_leaves, dev_leaves):
        if not _is_float(m):
            out.append(m)
            continue
        dtype = jnp.result_type(m)
        std = jnp.sqrt(jnp.maximum(sq - jnp.square(m), 0))
        noise = std * _random.normal(key, jnp.shape(m), dtype)
        if rank:
            noise = noise + jnp.tensordot(z2.astype(dtype), d, axes=1) / denom.astype(dtype)
        out.append(m + root_scale.astype(dtype) * noise)
    return jax.tree.unflatten(treedef, out)
