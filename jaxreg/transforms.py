"""optax bridges: a penalty's gradient, its proximal step and a projection as transformations.

Where each goes in an ``optax.chain``:

* ``add_penalty_grad(p)`` before the optimizer: coupled regularization (L2 in the gradient,
  rescaled by Adam like the data gradient).
* ``add_penalty_grad(p)`` after ``scale_by_adam`` and before ``scale_by_learning_rate``:
  decoupled regularization (AdamW, Loshchilov & Hutter 2019).
* ``proximal(p, learning_rate)`` last: ``params <- prox(params + updates, learning_rate)``
  (proximal gradient; exact zeros for L1).
* ``project(c)`` last: ``params <- c(params + updates)`` (projected gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg import _checks
from jaxreg._tree import apply_updates, compute_dtype, is_float, is_none, wider_dtype
from jaxreg.penalties import Penalty, non_separable, steps_from_caller, without_prox

PyTree = Any

__all__ = [
    "ProximalAdamState",
    "ProjectState",
    "ProximalState",
    "add_penalty_grad",
    "project",
    "proximal",
    "proximal_adam",
]


def _inject_hint(name: str, value: Any) -> str:
    """Why an array came where a callable belongs: optax.inject_hyperparams called it as a schedule."""
    if not isinstance(value, jax.Array):
        return ""
    return (
        " (optax.inject_hyperparams calls every callable argument as a schedule: pass "
        f"static_args=('{name}',), or sweep with jr.sweepable)"
    )


def _check_penalty(name: str, penalty: Any) -> None:
    if not isinstance(penalty, Penalty):
        hint = _inject_hint("penalty", penalty)
        raise ValueError(f"{name}: penalty must be a jaxreg Penalty, got penalty = {penalty!r}{hint}.")


def _check_has_prox(name: str, penalty: Penalty) -> None:
    missing = without_prox(penalty)
    if missing:
        raise ValueError(
            f"{name}: penalty has no closed-form proximal operator for {', '.join(missing)}; put it in the "
            f"loss (jr.regularize) or the gradient (jr.add_penalty_grad) instead, got penalty = {penalty!r}."
        )


def _check_learning_rate(name: str, learning_rate: Any) -> None:
    if not callable(learning_rate):
        # one number (a sweep over rates is a vmap, inside which each rate is a scalar)
        _checks.check_nonnegative("learning_rate", learning_rate, name, scalar=True)


def add_penalty_grad(penalty: Penalty) -> optax.GradientTransformation:
    r"""Adds the gradient of a penalty at the current params to the updates.

    .. math:: u \leftarrow u + \nabla \Omega(w)

    Placed first, before the optimizer, it is coupled regularization. Placed after
    ``optax.scale_by_adam()`` and before ``optax.scale_by_learning_rate(lr)``, it is
    decoupled (AdamW): with ``l2(wd / 2)``, whose gradient is ``wd * w``, the chain equals
    ``optax.adamw(lr, weight_decay=wd)``.

    Args:
      penalty: a :class:`jaxreg.penalties.Penalty`.

    Returns:
      An ``optax.GradientTransformation`` with an ``optax.EmptyState``.

    Raises:
      ValueError: at ``update`` time, if ``params`` is not passed.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg as jr
      >>> opt = optax.chain(jr.add_penalty_grad(jr.l2(0.5)), optax.sgd(0.1))
      >>> params = {"w": jnp.ones(3), "step": jnp.array(7)}   # integer leaves pass through
      >>> updates, state = opt.update({"w": jnp.zeros(3), "step": jnp.array(0)}, opt.init(params), params)
      >>> updates["w"]
      Array([-0.1, -0.1, -0.1], dtype=float32)
    """
    _check_penalty("add_penalty_grad", penalty)

    def init_fn(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: PyTree, state: optax.EmptyState, params: PyTree | None = None):
        _checks.need_params(params, updates, "add_penalty_grad")
        # allow_int: integer leaves (a step counter) get a float0 gradient and pass through.
        grads = jax.grad(penalty, allow_int=True)(params)

        def add(u: Any, g: Any) -> Any:
            if u is None or g is None or g.dtype == jax.dtypes.float0:
                return u
            return jnp.asarray(u) + g.astype(jnp.result_type(u))  # u may be a Python float

        return jax.tree.map(add, updates, grads, is_leaf=is_none), state

    return optax.GradientTransformation(init_fn, update_fn)


class ProximalState(NamedTuple):
    """State of :func:`proximal`: the number of steps taken (for a schedule)."""

    count: jax.Array


def _learning_rate_at(learning_rate: Any, count: jax.Array, where: str) -> jax.Array:
    if not callable(learning_rate):
        return jnp.asarray(learning_rate)
    # optax's schedules mix the int32 count with float constants, which strict promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        value = learning_rate(count)
    if jnp.ndim(value) != 0:  # a constant of that shape is refused at construction; so is a schedule's
        raise ValueError(
            f"{where}: a learning_rate schedule must return a scalar, got a value of shape {jnp.shape(value)}."
        )
    # named here: the prox's own check would name its step
    message = f"{where}: a learning_rate schedule must return values >= 0, got learning_rate(count) ="
    arr = _checks.concrete(value)
    if arr is None:
        if isinstance(value, jax.core.Tracer):
            _checks.traced_check(value >= 0, message, value)
    elif not arr >= 0:
        raise ValueError(f"{message} {_checks.fmt(arr)} at count = {_checks.fmt(count)}.")
    return value


def _per_coordinate_step(lr: jax.Array, nu_hat: jax.Array, eps: float, eps_root: float) -> jax.Array:
    """Adam's step size ``lr / (sqrt(nu_hat + eps_root) + eps)`` per coordinate."""
    lr, nu_hat = _with_lr(lr, nu_hat)
    return lr / (jnp.sqrt(nu_hat + eps_root) + eps)


def _lr_times(lr: jax.Array, direction: jax.Array) -> jax.Array:
    lr, direction = _with_lr(lr, direction)
    return lr * direction


def _with_lr(lr: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``lr`` and ``x`` in one dtype. A Python-number learning rate (weakly typed) takes ``x``'s, as
    in optax's ``scale_by_learning_rate``; a float32 one (a schedule's) beside a half-precision
    ``x`` meets it in float32 (strict promotion refused the pair)."""
    if not isinstance(lr, jax.Array) or lr.weak_type:  # a schedule may return a Python number
        return lr, x
    dtype = wider_dtype(compute_dtype(x.dtype), lr)
    return lr.astype(dtype), x.astype(dtype)


def _delta(new: PyTree, params: PyTree, updates: PyTree) -> PyTree:
    """The updates that move ``params`` to ``new``; ``None`` updates stay ``None``.

    ``params + (new - params)`` is ``new`` up to one rounding (exactly when the two are within a
    factor 2, by Sterbenz's lemma); a zero comes back exactly, since ``p + (0 - p) = 0``. The
    updates come in the wider of the updates' and the params' dtypes: half-precision updates of
    float32 params (bf16 gradients, float32 master weights) would round the correction, and the
    projected point would leave the constraint set. A bool leaf's updates pass through, as in optax.
    """

    def one(u: Any, n: Any, p: Any) -> Any:
        if u is None:
            return None
        if jnp.result_type(p) == jnp.bool_:
            return u  # a flag: no penalty or constraint acts on it, and bools have no difference
        return (n - p).astype(wider_dtype(u, p))

    return jax.tree.map(one, updates, new, params, is_leaf=is_none)


def proximal(penalty: Penalty, learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    r"""The proximal step of a penalty, last in a chain (proximal gradient / ISTA).

    .. math:: w_{t+1} = \mathrm{prox}_{\eta_t \Omega}(w_t + u_t)

    where :math:`u_t` are the incoming updates (already scaled by :math:`-\eta_t`) and
    :math:`\eta_t` is ``learning_rate``, a scalar or an ``optax`` schedule evaluated at the
    step count. The emitted updates are ``prox(...) - params``, so ``optax.apply_updates``
    gives the proximal point; L1 thresholds to exact zeros. For the per-coordinate step of
    Adam use :func:`proximal_adam`.

    Args:
      penalty: a :class:`jaxreg.penalties.Penalty` with a closed-form ``prox``.
      learning_rate: the step of the optimizer before it (the same value or schedule).

    Returns:
      An ``optax.GradientTransformation`` with a :class:`ProximalState`.

    Raises:
      ValueError: if ``learning_rate`` is negative, if a term of ``penalty`` has no closed-form
        prox (``jr.orthogonal``, ``jr.spectral_penalty``), or at ``update`` time without ``params``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg as jr
      >>> opt = optax.chain(optax.sgd(0.1), jr.proximal(jr.l1(1.0), 0.1))
      >>> params = jnp.array([0.05, -2.0])
      >>> updates, _ = opt.update(jnp.zeros(2), opt.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([ 0. , -1.9], dtype=float32)
    """
    _check_penalty("proximal", penalty)
    _check_has_prox("proximal", penalty)
    _check_learning_rate("proximal", learning_rate)

    def init_fn(params: PyTree) -> ProximalState:
        del params
        return ProximalState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates: PyTree, state: ProximalState, params: PyTree | None = None):
        _checks.need_params(params, updates, "proximal")
        step = _learning_rate_at(learning_rate, state.count, "proximal")
        new = penalty.prox(apply_updates(params, updates), step)
        return _delta(new, params, updates), ProximalState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


class ProximalAdamState(NamedTuple):
    """State of :func:`proximal_adam`: Adam's moments and the schedule's step count."""

    adam: optax.ScaleByAdamState
    count: jax.Array


def proximal_adam(
    penalty: Penalty,
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformation:
    r"""Adam with the proximal step taken in Adam's own per-coordinate metric.

    After Adam, coordinate :math:`i` moves with step
    :math:`\eta_i = \eta / (\sqrt{\hat v_i + \epsilon_\text{root}} + \epsilon)`, so the
    threshold differs per coordinate. This takes

    .. math::
      w_{t+1} = \arg\min_u \sum_i \frac{(u_i - z_i)^2}{2 \eta_i} + \Omega(u),
      \quad z = w_t - \eta \, \hat m / (\sqrt{\hat v + \epsilon_\text{root}} + \epsilon)

    which for a separable penalty (``l1``, ``l2``, ``elastic_net``) is the penalty's prox with
    a per-coordinate step (for L1: threshold :math:`\eta_i \lambda`). With a zero penalty it
    is ``optax.adam``. Non-separable penalties (``group_lasso``, ``tie``) and those without a
    closed-form prox (``orthogonal``, ``spectral_penalty``) are refused with a ``ValueError``.

    Caution: a coordinate whose gradient has always been zero (an unused embedding row, a dead
    unit) has :math:`\hat v_i = 0`, hence :math:`\eta_i = \eta / \epsilon` (``1e5`` for
    :math:`\eta = 10^{-3}`): one step shrinks it by :math:`1 / (1 + 2 \eta_i \lambda)` under
    ``l2`` (21x for :math:`\lambda = 10^{-4}`) and zeroes it under ``l1`` once
    :math:`\eta_i \lambda \ge |w_i|`. That is this metric's math, not a rounding effect. Where such
    coordinates must keep their values, take the prox with the plain step instead,
    ``optax.chain(optax.adam(lr), jr.proximal(penalty, lr))``, or raise ``eps`` (which bounds
    :math:`\eta_i` by :math:`\eta / \epsilon`).

    Args:
      penalty: a separable penalty.
      learning_rate: scalar or schedule (the argument order is that of :func:`proximal`; before
        0.2 it was ``proximal_adam(learning_rate, penalty)``, which now raises a ``ValueError``
        saying so).
      b1, b2, eps, eps_root: as in ``optax.scale_by_adam``.

    Returns:
      A complete optimizer, an ``optax.GradientTransformation``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg as jr
      >>> opt = jr.proximal_adam(jr.l1(1.0), 0.1)
      >>> params = jnp.array([0.05, -2.0])
      >>> updates, _ = opt.update(jnp.array([1.0, 1.0]), opt.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([ 0., -2.], dtype=float32)
    """
    if isinstance(learning_rate, Penalty) and not isinstance(penalty, Penalty):
        raise ValueError(
            "proximal_adam: the arguments are (penalty, learning_rate), as in proximal; got "
            f"penalty = {penalty!r} and learning_rate = {learning_rate!r} (the order before 0.2)."
        )
    _check_penalty("proximal_adam", penalty)
    _check_has_prox("proximal_adam", penalty)
    _check_learning_rate("proximal_adam", learning_rate)
    for name, value in (("b1", b1), ("b2", b2)):
        _checks.check_in_range(name, value, 0, 1, "proximal_adam", scalar=True)
    for name, value in (("eps", eps), ("eps_root", eps_root)):
        _checks.check_nonnegative(name, value, "proximal_adam", scalar=True)
    coupled = non_separable(penalty)
    if coupled:
        raise ValueError(
            f"proximal_adam: penalty must be separable (l1, l2, elastic_net, their sums and scalings): "
            f"a per-coordinate step has no closed-form prox for {', '.join(coupled)}; use "
            f"optax.chain(optax.adam(lr), jr.proximal(penalty, lr)), got penalty = {penalty!r}."
        )
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def init_fn(params: PyTree) -> ProximalAdamState:
        return ProximalAdamState(adam=adam.init(params), count=jnp.zeros([], jnp.int32))

    def update_fn(updates: PyTree, state: ProximalAdamState, params: PyTree | None = None):
        _checks.need_params(params, updates, "proximal_adam")
        # a state from init on other params failed in jax's tree_map or broadcasting, unnamed
        _checks.check_like("params", params, "init's params", state.adam.mu, "proximal_adam")
        lr = _learning_rate_at(learning_rate, state.count, "proximal_adam")
        # optax's bias correction computes ``decay ** count`` (a float to an int32 power), which
        # strict dtype promotion refuses; only that part runs under standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            direction, adam_state = adam.update(updates, state.adam, params)
            nu_hat = optax.tree.bias_correction(adam_state.nu, b2, adam_state.count)
        # integer leaves have no step (their nu is no variance; the prox leaves them alone)
        steps = jax.tree.map(
            lambda v, p: (
                _per_coordinate_step(lr, v, eps, eps_root) if is_float(p) else jnp.zeros([], jnp.result_type(lr))
            ),
            nu_hat,
            params,
        )
        z = jax.tree.map(lambda p, d: p - _lr_times(lr, d).astype(p.dtype) if is_float(p) else p, params, direction)
        with steps_from_caller():  # lr is checked; a step is NaN only where the gradient is
            new = penalty.prox(z, steps)
        # Adam only moves floating-point leaves: an integer leaf's update passes through unchanged.
        deltas = jax.tree.map(
            lambda u, d, p: d if u is None or is_float(p) else u,
            updates,
            _delta(new, params, updates),
            params,
            is_leaf=is_none,
        )
        return deltas, ProximalAdamState(adam=adam_state, count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


class ProjectState(NamedTuple):
    """State of :func:`project` with a stateful constraint: the constraint's own state."""

    constraint: PyTree


def project(constraint: Callable[[PyTree], PyTree]) -> optax.GradientTransformation:
    r"""Projects the stepped params onto a constraint set, last in a chain.

    .. math:: w_{t+1} = P_C(w_t + u_t)

    A constraint is either a callable ``params -> params`` (stateless, e.g. ``jr.max_norm``), or a
    *stateful* constraint: an object with ``init(params) -> state`` and
    ``update(params, state) -> (params, state)`` whose state (a pytree of arrays) this
    transformation carries from step to step, e.g. ``jr.spectral_norm``'s power-iteration
    vectors. An object with both forms is used through ``init``/``update``.

    Args:
      constraint: ``params -> params``, e.g. ``jr.max_norm(3.0, mask=jr.masks.kernels)``, or a
        stateful constraint such as ``jr.spectral_norm(1.0)``.

    Returns:
      An ``optax.GradientTransformation`` with an ``optax.EmptyState`` (stateless constraint) or
      a :class:`ProjectState` holding ``constraint.init(params)`` (stateful).

    Raises:
      ValueError: if ``constraint`` is neither callable nor stateful, or is a penalty (its value
        is a scalar: use :func:`proximal`); at ``update`` time without ``params``, or when the
        constraint returns a tree shaped unlike the params.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg as jr
      >>> opt = optax.chain(optax.sgd(1.0), jr.project(jr.non_negative()))
      >>> params = jnp.array([0.5, 0.5])
      >>> updates, _ = opt.update(jnp.array([1.0, -1.0]), opt.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([0. , 1.5], dtype=float32)
    """
    stateful = callable(getattr(constraint, "init", None)) and callable(getattr(constraint, "update", None))
    if not stateful and not callable(constraint):
        hint = _inject_hint("constraint", constraint)
        raise ValueError(
            "project: constraint must be a callable params -> params or an object with init(params) and "
            f"update(params, state), got constraint = {constraint!r}{hint}."
        )
    if isinstance(constraint, Penalty):  # callable too, but params -> scalar: broadcast over every leaf
        raise ValueError(
            f"project: constraint must map params to params, got the penalty {constraint!r}; a penalty's "
            "step is jr.proximal(penalty, learning_rate)."
        )

    def init_fn(params: PyTree) -> optax.EmptyState | ProjectState:
        if stateful:
            return ProjectState(constraint=constraint.init(params))
        del params
        return optax.EmptyState()

    def update_fn(updates: PyTree, state: Any, params: PyTree | None = None):
        _checks.need_params(params, updates, "project")
        stepped = apply_updates(params, updates)
        if stateful:
            new, inner = constraint.update(stepped, state.constraint)
        else:
            new, inner = constraint(stepped), None
        # a scalar or a tree of another shape would be broadcast into every leaf, silently
        _checks.check_like("the constraint's output", new, "params", stepped, "project")
        if stateful:
            return _delta(new, params, updates), ProjectState(constraint=inner)
        return _delta(new, params, updates), state

    return optax.GradientTransformation(init_fn, update_fn)
