"""Optimizer hyperparameters as state leaves: any optax factory, swept by ``vmap``, never recompiled.

:func:`sweepable` wraps an optax optimizer factory (``optax.sgd``, ``optax.adam``, a user's
function returning a ``GradientTransformation``) so that the numbers passed to it live in the
optimizer state as array leaves (``state.hyperparams[name]``), and :func:`schedule` does the same
for a schedule's own numbers (the peak of a warmup-cosine schedule). ``update`` rebuilds the
factory from the state's values at every step, so

* building the optimizer inside ``jax.vmap`` (or ``jr.ensemble.map``) with a traced value gives
  every member its own values: a sweep is one program;
* a new value is new data, never a new program;
* jaxreg's transforms that keep a hyperparameter in their state (``jr.ema``'s decay,
  ``jr.swa``'s and ``jr.swag``'s start and every, ``jr.add_gradient_noise``'s eta and gamma) use
  the value the factory built them with at this step, and keep it in their state, so a schedule
  reaches them however the factory derives it (``optax.inject_hyperparams`` keeps init's state:
  its schedule never does);
* arguments you do not pass stay the factory's own Python defaults, so the arithmetic is the
  unwrapped optimizer's wherever it can be (see :func:`sweepable` for what is bitwise and why).

It differs from ``optax.inject_hyperparams`` in three ways, each the cause of a known issue
there: only the arguments you pass become leaves (``inject_hyperparams`` also converts the
defaults, so ``adam``'s ``1 - b1`` is computed from a float32 ``b1`` and its trajectory drifts
from plain ``adam``: optax#583, #1532); a callable argument is passed through to the factory
untouched unless it is a :func:`schedule` (``inject_hyperparams`` treats every callable as a
schedule, which breaks callable masks and callable param pytrees: optax#913, #1373); and bools,
strings and integer structure arguments are static, and a traced value or an array for one is a
``ValueError`` naming it, at construction.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _checks, _rebuild

try:  # weak typing has no public API (see _weakly_typed); without it values stay strongly typed
    from jax._src.lax.lax import _convert_element_type
except ImportError:  # pragma: no cover
    _convert_element_type = None

PyTree = Any

__all__ = ["SweepableSchedule", "SweepableState", "schedule", "sweepable"]

_CONCRETIZATION_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


class SweepableState(NamedTuple):
    """The state of a :func:`sweepable` optimizer.

    Attributes:
      count: int32, the number of updates done; schedules are evaluated at it (0 first).
      hyperparams: ``{name: value}`` for every numeric argument passed to the factory (a scalar
        of the default float dtype, float32 unless x64 is on) and ``{name: {arg: value}}`` for
        every :func:`schedule` (its numeric arguments). ``update`` reads them from here.
      inner_state: the wrapped optimizer's own state.
    """

    count: jax.Array
    hyperparams: dict[str, Any]
    inner_state: optax.OptState


def _float_dtype() -> np.dtype:
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _contains_tracer(value: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def _is_number_tree(value: Any) -> bool:
    """A pytree (not itself a leaf) whose leaves are all floating-point numbers: a penalty's scales."""
    leaves = jax.tree.leaves(value)
    if not leaves or (len(leaves) == 1 and leaves[0] is value):
        return False
    return all(
        isinstance(x, (float, jax.Array, np.ndarray, np.generic)) and jnp.issubdtype(jnp.result_type(x), jnp.floating)
        for x in leaves
    )


def _is_key(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return np.dtype(dtype) == np.uint32 and np.ndim(value) >= 1  # raw key words (jax.random.PRNGKey)


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, np.generic)) and not isinstance(value, np.bool_)


def _describe(value: Any) -> str:
    if isinstance(value, jax.core.Tracer):
        return f"a traced value of dtype {value.dtype} (static arguments cannot be vmapped or jitted over)"
    if _is_array(value):
        arr = np.asarray(value)
        return (
            f"{arr.item()!r} ({arr.dtype})" if arr.ndim == 0 else f"an array of shape {arr.shape} and dtype {arr.dtype}"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return _checks.describe_int(value)
    return repr(value)


def _static_kind(param: inspect.Parameter | None) -> str | None:
    """'bool', 'str' or 'int' when the signature says the argument is one (default or annotation)."""
    if param is None:
        return None
    default = param.default
    for kind in (bool, str, int):  # bool before int: a bool default is an int too
        if default is not inspect.Parameter.empty and type(default) is kind:
            return kind.__name__
    ann = param.annotation
    for kind in (bool, str, int):
        if ann is kind or ann == kind.__name__:
            return kind.__name__
    return None


# optax's names for numbers with a domain: outside it optax raises nothing and the updates are NaN
# (adam's b1 = 1 divides by 1 - b1**t = 0) or climb the loss (a negative learning rate).
_DOMAINS: dict[str, tuple[float, float | None]] = {
    "learning_rate": (0, None),
    "weight_decay": (0, None),
    "eps": (0, None),
    "eps_root": (0, None),
    "b1": (0, 1),
    "b2": (0, 1),
}


# Numbers whose default is None (sgd's momentum): a bool there is a mistake too.
_NUMBER_NAMES = frozenset(_DOMAINS) | {"momentum"}


def _check_number(where: str, name: str, value: Any, param: inspect.Parameter | None) -> None:
    """Finite, and within optax's domain for the names in ``_DOMAINS`` (traced: under ``traced_checks``).

    The factory's own default is in its domain whatever the name says (``scale_by_sm3``'s
    ``b2 = 1.0`` accumulates, where adam's would divide by 0).
    """
    low, high = _DOMAINS.get(name, (None, None))
    default = inspect.Parameter.empty if param is None else param.default
    if low is not None and not isinstance(value, jax.core.Tracer) and _same_number(value, default):
        low = None
    if low is None:
        _checks.check_finite(name, value, where)
    elif high is None:
        _checks.check_nonnegative(name, value, where)
    else:
        _checks.check_in_range(name, value, low, high, where)


def _same_number(value: Any, default: Any) -> bool:
    if not isinstance(default, (int, float)) or isinstance(default, bool):
        return False
    return bool(np.asarray(value, np.float64) == default)


def _takes_number(name: str, param: inspect.Parameter | None) -> bool:
    """The argument is a number: one of optax's numeric names, or its default is a float or int."""
    if name in _NUMBER_NAMES:
        return True
    default = inspect.Parameter.empty if param is None else param.default
    return isinstance(default, (int, float)) and not isinstance(default, bool)


def _classify(where: str, name: str, value: Any, param: inspect.Parameter | None, static_args: frozenset) -> str:
    """'static', 'numeric' or 'schedule' for one argument; raises for a static one given a traced value."""
    if isinstance(value, SweepableSchedule):
        return "static" if name in static_args else "schedule"
    kind = _static_kind(param)
    if isinstance(value, (bool, np.bool_, str)) and kind not in ("bool", "str") and _takes_number(name, param):
        # A bool stayed static and the factory read True as 1; a string failed inside optax.
        raise ValueError(f"{where}: {name} must be a number, got {name} = {value!r}.")
    if kind in ("bool", "str") and (_is_array(value) or _contains_tracer(value)):
        raise ValueError(
            f"{where}: {name} is a {kind} argument, static (it selects the optimizer's structure, it is not "
            f"a number in its math), so it cannot be swept; got {name} = {_describe(value)}. Pass a Python {kind}."
        )
    if name in static_args or kind == "int":
        if _contains_tracer(value):
            why = "named in static_args" if name in static_args else "an int argument (structure, e.g. a step count)"
            raise ValueError(
                f"{where}: {name} is {why}, static, so it cannot be swept; got {name} = {_describe(value)}."
            )
        if kind == "int" and name not in static_args and _not_one_finite_number(value):
            # a (2,) array failed in the factory's `if steps <= 0`, a NaN step count made NaN values
            raise ValueError(f"{where}: {name} must be one finite number (an int), got {name} = {_describe(value)}.")
        return "static"
    if _is_key(value):
        # A PRNG key (typed, or raw uint32 words) is not a number to sweep: static, concrete.
        if isinstance(value, jax.core.Tracer):
            raise ValueError(
                f"{where}: {name} is a PRNG key, static, so it cannot be traced; got {name} = {_describe(value)}. "
                f"Pass a concrete key."
            )
        return "static"
    if callable(value) and _is_number_tree(value) and name not in static_args:
        # A jr.Penalty or a constraint: its numbers are leaves of the state too, so update reads
        # each member's (kept static, the update's instance would serve every member).
        return "tree"
    if value is None or isinstance(value, (bool, np.bool_, str)) or callable(value):
        return "static"
    if isinstance(value, complex) or (_is_array(value) and jnp.issubdtype(value.dtype, jnp.complexfloating)):
        # it stayed static, so sgd(learning_rate=0.1 + 5j) gave complex updates
        raise ValueError(f"{where}: {name} must be a real number, got {name} = {_describe(value)}.")
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        # numpy holds it as an object, not a number: it would have stayed static without a word.
        raise ValueError(
            f"{where}: {name} = {_checks.describe_int(value)} does not fit a 64-bit integer, so it cannot "
            f"be held as a hyperparameter; pass a float (or a smaller int)."
        )
    if isinstance(value, (float, int)) or _is_array(value):
        dtype = np.dtype(value.dtype if hasattr(value, "dtype") else np.result_type(value))
        if jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer):
            if np.ndim(value) != 0:
                raise ValueError(
                    f"{where}: {name} must be a scalar (one value per optimizer; to sweep, build the optimizer "
                    f"inside jax.vmap with one value per member), got {name} with shape {np.shape(value)}."
                )
            _check_number(where, name, value, param)  # NaN or ascending updates otherwise
            return "numeric"
        if isinstance(value, jax.core.Tracer):
            raise ValueError(
                f"{where}: {name} cannot be swept: only float (or int) numbers are hyperparameters, got "
                f"{name} = {_describe(value)}."
            )
        return "static"  # a concrete bool array: a mask
    if _contains_tracer(value):
        raise ValueError(
            f"{where}: {name} is not a number, so it stays static and cannot be swept; got {name} = a pytree "
            f"holding traced values. Sweep scalar float arguments (or a jr.schedule's numbers) instead."
        )
    return "static"


def _not_one_finite_number(value: Any) -> bool:
    if (
        value is None
        or isinstance(value, (bool, np.bool_))
        or (not isinstance(value, (int, float)) and not _is_array(value))
    ):
        return False  # None (the factory's "unset") and non-numbers are the factory's to judge
    arr = np.asarray(value)
    return arr.ndim != 0 or not jnp.issubdtype(arr.dtype, jnp.number) or not np.isfinite(arr.astype(np.float64))


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(getattr(fn, "func", None), "__qualname__", None) or repr(fn)


_NOT_KEYWORD = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _split(
    where: str, fn: Callable, args: tuple, kwargs: dict, static_args: frozenset
) -> tuple[tuple, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Binds ``fn(*args, **kwargs)`` into (positional, static, numeric, schedules); defaults are not bound."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    if signature is None:
        if args:
            raise ValueError(f"{where}: pass the arguments by keyword (the signature of {fn!r} is unknown).")
        items = [(name, value, None) for name, value in kwargs.items()]
        positional: tuple = ()
    else:
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        unknown = [k for k in kwargs if k not in signature.parameters or signature.parameters[k].kind in _NOT_KEYWORD]
        # bind would name a missing argument first: learning_rat=0.1 -> "missing learning_rate"
        if unknown and not takes_any:
            names = [n for n, p in signature.parameters.items() if p.kind not in _NOT_KEYWORD]
            close = difflib.get_close_matches(unknown[0], names, n=1)
            raise ValueError(
                f"{where}: {_fn_name(fn)} has no argument {', '.join(map(repr, unknown))}"
                f"{f' (did you mean {close[0]!r}?)' if close else ''}; its keyword arguments are {', '.join(names)}."
            )
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise ValueError(f"{where}: the arguments do not fit {_fn_name(fn)}{signature}: {e}.") from None
        items, positional = [], ()
        for name, value in bound.arguments.items():
            param = signature.parameters[name]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                items.extend((k, v, None) for k, v in value.items())
            elif param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                if _contains_tracer(value):
                    raise ValueError(
                        f"{where}: {name} is positional-only, static, so it cannot be swept; got {name} = "
                        f"{_describe(value)}. Sweep keyword arguments."
                    )
                positional = (*positional, *(value if param.kind is inspect.Parameter.VAR_POSITIONAL else (value,)))
            else:
                items.append((name, value, param))
    static, numeric, schedules, held = {}, {}, {}, {}
    dtype = _float_dtype()
    for name, value, param in items:
        kind = _classify(where, name, value, param, static_args)
        if kind == "numeric":
            exact = _check_held(where, name, value, dtype, param)
            if exact is not None:
                held[name] = exact
            with jax.ensure_compile_time_eval():  # a number given inside a trace stays concrete
                numeric[name] = jnp.asarray(value, dtype)
        elif kind == "tree":
            numeric[name] = value  # its leaves become state leaves as they are
        elif kind == "schedule":
            schedules[name] = value
        else:
            static[name] = value
    return positional, static, numeric, schedules, held


def _check_held(
    where: str, name: str, value: Any, dtype: np.dtype, param: inspect.Parameter | None
) -> np.ndarray | None:
    """The value the state holds, ``value`` rounded to ``dtype``, if concrete; it passes the checks
    ``value`` passed.

    Rounded in numpy: inside ``jit`` the stored ``jnp.asarray`` is a tracer even for a Python
    number. A traced value is rounded as it is (documented).
    """
    exact = _checks.concrete(value)
    if exact is None:
        return None
    held = np.asarray(exact, dtype)  # an overflow (1e39 in float32) was refused by _check_number
    if not isinstance(value, float) and jnp.issubdtype(exact.dtype, jnp.integer):
        if int(held) != int(exact):
            # An integer leaf of the state (swa's start) was silently rounded: 2**24 + 1 ran as 2**24.
            raise ValueError(
                f"{where}: {name} = {int(exact)} is not exact in {np.dtype(dtype).name}, the dtype "
                f"hyperparameters are kept in; enable x64, or pass it in static_args."
            )
        return held
    if held == exact:
        return held
    try:  # b2 = 0.99999999 is 1.0 in float32 (adam's updates NaN)
        _check_number(where, name, held, param)
    except ValueError as e:
        raise ValueError(
            f"{e} ({name} = {_checks.fmt(exact)} is {_checks.fmt(held)} in {np.dtype(dtype).name}, the dtype "
            f"hyperparameters are kept in; enable x64 for more digits.)"
        ) from None
    return held


def _check_factory(build: Callable[[dict], Any], held: dict[str, np.ndarray], values: dict[str, Any]) -> None:
    """Traces the factory once with the concrete numbers given, as the state holds them.

    Inside ``jit`` a number passed to ``make`` was stored as a tracer, so the factory's own checks
    (``jr.ema``'s decay in [0, 1]) saw a tracer and skipped; here they see the number (eagerly
    they fire at ``init``, as they always did). The other values (traced ones, trees, schedules)
    stay abstract, so the checks skip them as at ``init``: a schedule's placeholder 0 was checked
    as a ``max_norm`` bound once.
    """
    if not held:
        return
    rest = {name: value for name, value in values.items() if name not in held}

    def run(abstract_rest: dict[str, Any]) -> jax.Array:
        with jax.numpy_dtype_promotion("standard"):
            build({**abstract_rest, **held})
        return jnp.zeros((), jnp.float32)

    try:
        jax.eval_shape(run, _abstract(rest))
    except _CONCRETIZATION_ERRORS:
        pass  # control flow on an abstract value: the probe's, which named it


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _placeholder(value: Any) -> np.ndarray:
    known = _checks.concrete(value)
    dtype = jnp.result_type(value)
    return np.asarray(known, dtype) if known is not None else np.ones(jnp.shape(value), dtype)


def _probe(where: str, what: str, build: Callable[[dict], Any], values: dict[str, Any], hint: str) -> None:
    """Traces ``build`` with abstract values: a Python ``if`` on a hyperparameter fails here, not in the step."""

    def run(vals):
        build(vals)
        return jnp.zeros((), jnp.float32)

    try:
        jax.eval_shape(run, _abstract(values))
    except _CONCRETIZATION_ERRORS:
        # Find the culprit: one abstract value at a time, the others concrete: the values given
        # where they are known (a placeholder 1 could fail the factory's own range check).
        ones = {name: _placeholder(v) for name, v in values.items()}
        for name in values:
            try:
                jax.eval_shape(lambda v, name=name: run({**ones, name: v}), _abstract(values[name]))
            except _CONCRETIZATION_ERRORS:
                raise ValueError(
                    f"{where}: {what} uses {name} in Python control flow (an `if` or int() on its value), so it "
                    f"cannot be a state leaf; {hint.format(name=name)}."
                ) from None
        raise ValueError(
            f"{where}: {what} uses its hyperparameters {sorted(values)} in Python control flow together; "
            f"{hint.format(name='them')}."
        ) from None


# ----------------------------------------------------------------------------------------------
# schedules


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values"], meta_fields=["fn", "static"])
@dataclasses.dataclass(frozen=True, eq=False)
class SweepableSchedule:
    """A schedule factory with its numeric arguments as leaves; made by :func:`schedule`.

    Calling it, ``s(count)``, is the schedule ``fn(**static, **values)(count)``: it works wherever
    optax takes a schedule. As an argument of a :func:`sweepable` factory its ``values`` become
    ``state.hyperparams[name]`` and it is evaluated at ``state.count``.

    Attributes:
      fn: the schedule factory, e.g. ``optax.warmup_cosine_decay_schedule``.
      static: ``((name, value), ...)``, the arguments that stay Python values (ints, bools...).
      values: ``{name: scalar array}``, the numeric arguments (the default float dtype).
    """

    fn: Callable[..., optax.Schedule]
    static: tuple[tuple[str, Any], ...]
    values: dict[str, jax.Array]

    def build(self, values: dict[str, jax.Array] | None = None) -> optax.Schedule:
        """The optax schedule ``fn(**static, **values)`` (``values`` default: this object's)."""
        return self.fn(**dict(self.static), **(self.values if values is None else values))

    def __call__(self, count: jax.typing.ArrayLike) -> jax.Array:
        return _evaluate(self.fn, self.static, self.values, count)


def _weakly_typed(value: jax.Array) -> jax.Array:
    """``value`` weakly typed, as the Python float the factory would otherwise get.

    The leaves are float32 (float64 under x64) arrays; strongly typed, ``momentum * trace``
    would promote a bfloat16 optimizer state to float32 (a ``scan`` carry changes type) and a
    float32 one to float64 under x64 (a retrace). Weakly typed, they take the params' dtype, as
    optax's own Python-float hyperparameters do. jax has no public spelling of this conversion.
    """
    if _convert_element_type is None:
        return value
    return _convert_element_type(value, weak_type=True)


def _evaluate(fn: Callable, static: tuple, values: dict, count: jax.typing.ArrayLike) -> jax.Array:
    # optax's schedules compute float ** int32 (e.g. cosine decay's exponent, polynomial decay),
    # which strict dtype promotion rejects: only this trace runs with standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        return jnp.asarray(fn(**dict(static), **values)(count), _float_dtype())


def _warmup_cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> optax.Schedule:
    """``optax.warmup_cosine_decay_schedule``'s own composition, its Python branch on ``peak_value`` a ``where``.

    optax computes ``alpha = 0.0 if peak_value == 0.0 else end_value / peak_value``, a Python
    ``if`` on the value that a sweep traces; the rest is the same calls in the same order.
    """
    zero = jnp.equal(peak_value, 0.0)
    alpha = jnp.where(zero, 0.0, jnp.divide(end_value, jnp.where(zero, 1.0, peak_value)))
    return optax.join_schedules(
        [
            optax.linear_schedule(init_value=init_value, end_value=peak_value, transition_steps=warmup_steps),
            optax.cosine_decay_schedule(
                init_value=peak_value, decay_steps=decay_steps - warmup_steps, alpha=alpha, exponent=exponent
            ),
        ],
        [warmup_steps],
    )


# optax schedules that branch in Python on a number users sweep -> the same schedule without the branch.
_TRACEABLE = {optax.warmup_cosine_decay_schedule: _warmup_cosine_decay_schedule}


def schedule(fn: Callable[..., optax.Schedule], /, **kwargs: Any) -> SweepableSchedule:
    r"""A schedule whose own numbers (a peak, an end value, a decay rate) can be swept.

    ``jr.schedule(optax.warmup_cosine_decay_schedule, init_value=0.0, peak_value=lr,
    warmup_steps=100, decay_steps=1000)`` is the schedule

    .. math:: \eta_t = \text{fn}(\theta_\text{numeric}, \theta_\text{static})(t),

    with the numeric arguments :math:`\theta_\text{numeric}` (floats, float arrays, traced values)
    stored as scalar leaves of the default float dtype and the rest (ints such as
    ``warmup_steps``, bools, strings) kept as Python values, as in :func:`sweepable`. Pass it
    as an argument of a :func:`sweepable` factory: its numbers then live in
    ``state.hyperparams[name]`` and it is evaluated at ``state.count`` (0 at the first update,
    as optax's ``scale_by_schedule``). Called directly, ``s(count)`` is the plain schedule.

    ``optax.warmup_cosine_decay_schedule`` branches in Python on ``peak_value`` (``alpha = 0 if
    peak_value == 0 else end_value / peak_value``); ``schedule`` runs the same composition of
    ``optax.linear_schedule``, ``optax.cosine_decay_schedule`` and ``optax.join_schedules`` with
    that branch as a ``jnp.where``, so its peak can be swept. Another factory that branches on a
    number raises ``ValueError`` naming it: keep that number a Python value
    (``functools.partial``).

    Only the arguments passed become leaves; defaults stay ``fn``'s Python numbers. The values
    equal those of ``fn`` with Python floats within float32 rounding, not bitwise: ``fn``'s
    arithmetic on its arguments (``peak - init``, ``end / peak``) runs in float32 instead of
    float64 (a relative difference of a few ``eps``, about ``1e-7``).

    Args:
      fn: a schedule factory (keyword arguments to numbers, returning ``count -> value``).
      **kwargs: its arguments.

    Returns:
      A :class:`SweepableSchedule` (a pytree: its ``values`` are the leaves).

    Raises:
      ValueError: if ``fn`` is not callable, an argument does not fit its signature, a bool,
        str or int argument is given a traced value or an array, a numeric argument is not a
        scalar, or ``fn`` uses a numeric argument in Python control flow.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxreg as jr
      >>> def peak_at_step_2(peak):
      ...     s = jr.schedule(optax.warmup_cosine_decay_schedule, init_value=0.0, peak_value=peak,
      ...                     warmup_steps=2, decay_steps=10)
      ...     return s(2)
      >>> jax.vmap(peak_at_step_2)(jnp.array([0.1, 1.0])).tolist()
      [0.10000000149011612, 1.0]
    """
    where = f"schedule({_fn_name(fn)})"
    if not callable(fn):
        raise ValueError(f"schedule: fn must be a schedule factory (callable), got fn = {fn!r}.")
    positional, static, numeric, nested, _ = _split(where, fn, (), kwargs, frozenset())
    del positional
    if nested:
        name = next(iter(nested))
        raise ValueError(f"{where}: {name} is itself a jr.schedule; nested sweepable schedules are not supported.")
    static_items = tuple(static.items())
    fn = _TRACEABLE.get(fn, fn) if numeric else fn

    def build(vals):
        _evaluate(fn, static_items, vals, jnp.zeros((), jnp.int32))

    try:
        _probe(where, _fn_name(fn), build, numeric, "keep {name} a Python value with functools.partial(fn, ...)")
    except (TypeError, ValueError) as e:
        if str(e).startswith(where):
            raise
        # the factory's own error on a static argument (init_value='a': "unsupported operand type(s) for -")
        given = ", ".join(f"{k}={_describe(v)}" for k, v in kwargs.items())
        raise ValueError(f"{where}: {_fn_name(fn)}({given}) failed: {type(e).__name__}: {e}") from e
    return SweepableSchedule(fn, static_items, numeric)


# ----------------------------------------------------------------------------------------------
# sweepable


def _static_names(factory: Callable, static_args: Any) -> frozenset:
    """``static_args`` as a set of names, each an argument of ``factory`` (when its signature says)."""
    names = [static_args] if isinstance(static_args, str) else static_args
    try:
        names = list(names)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"sweepable: static_args must be a name or a sequence of names, got static_args = {static_args!r}."
        )
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return frozenset(names)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(names) - set(params))
        if unknown:
            raise ValueError(
                f"sweepable: static_args names {unknown}, which {_fn_name(factory)} does not take; its arguments "
                f"are {list(params)}, got static_args = {static_args!r}."
            )
    return frozenset(names)


def sweepable(
    factory: Callable[..., optax.GradientTransformation], *, static_args: str | Iterable[str] = ()
) -> Callable[..., optax.GradientTransformationExtraArgs]:
    r"""Wraps an optax optimizer factory so that the numbers passed to it are leaves of its state.

    ``jr.sweepable(optax.adam)(learning_rate=lr, b1=b1)`` behaves as ``optax.adam(lr, b1=b1)``
    with ``lr`` and ``b1`` stored in ``state.hyperparams`` (scalars of the default float dtype,
    float32 unless x64 is on). Each ``update`` rebuilds the factory from the state,

    .. math::
      (u_t, s^\text{inner}_{t+1}) = \text{factory}(h, \eta(t))\text{.update}(g_t, s^\text{inner}_t, w_t),
      \qquad h = \texttt{state.hyperparams},\ t = \texttt{state.count},

    where :math:`\eta(t)` are the :func:`schedule` arguments evaluated at the count. The count
    advances on every ``update`` call, as ``optax.inject_hyperparams``'s does: a factory that
    skips updates itself (``optax.MultiSteps``, ``optax.apply_if_finite``) sees a :func:`schedule`
    run ahead of the one it would evaluate at its own count (give it a plain optax schedule, a
    callable it handles itself, to keep its count). The values are never read from the closure, so:

    * per-member optimizers: build it inside ``jax.vmap`` (or ``jr.ensemble.map``) with a
      traced value, ``jax.vmap(lambda p, lr: jr.sweepable(optax.adam)(learning_rate=lr).init(p))``,
      and update with any instance built with the same arguments' *kinds*, e.g.
      ``jr.sweepable(optax.adam)(learning_rate=1e-3).update``: each member reads its own values;
    * a new value (a new state) never recompiles the step; reading or changing a value
      mid-run is ``optax.tree.get(state, "learning_rate")`` and
      ``optax.tree.set(state, learning_rate=jnp.float32(new))``;
    * the hyperparameters are differentiable inputs of ``update``.

    Inside the factory, jaxreg's transformations that keep a hyperparameter in their state
    (:func:`jaxreg.ema`'s decay, :func:`jaxreg.swa`'s and :func:`jaxreg.swag`'s ``start`` and
    ``every``, :func:`jaxreg.add_gradient_noise`'s ``eta`` and ``gamma``) take the value the
    rebuilt factory gives them on every ``update`` (this step's: a schedule's, or one computed
    from the arguments), not the one in their state. So sweep such a value as an argument of the
    factory; a value the factory only closes over is the same for every member (that of the
    instance that runs ``update``), even in states built under ``vmap`` with other values.

    Which arguments become leaves. Only those passed (positionally or by keyword); defaults
    stay the factory's Python numbers. Python floats and ints, and float or int scalars
    (numpy, jax, traced) are leaves, except: bools, strings, ``None`` and callables (masks,
    plain optax schedules, which the factory handles itself) stay static; so does an argument
    whose signature says ``bool``, ``str`` or ``int`` (by its default or annotation: structure,
    not math), an argument named in ``static_args``, and a pytree (a mask). A callable pytree
    of float numbers (a :class:`jaxreg.Penalty`, a constraint) is a leaf as a whole: its numbers
    live in the state, so ``penalty=jr.l1(s)`` under ``vmap`` gives each member its own scale.
    Passing a traced value or an array for a bool or str argument, or a traced value for any
    static one, raises ``ValueError`` naming it, as does a bool or a string for a number (an
    argument with a float or int default, ``momentum``, or one of optax's names below). Numbers
    must be finite, and within optax's domain for these names: ``learning_rate``, ``weight_decay``,
    ``eps`` and ``eps_root`` at least 0, ``b1`` and ``b2`` in [0, 1), unless the value is the
    factory's own default (``scale_by_sm3``'s ``b2 = 1``); concrete values when called, traced
    ones under :func:`jaxreg.traced_checks`. To sweep a schedule's numbers pass
    a :func:`schedule`.

    Numerics against the unwrapped ``factory(**concrete_values)`` (float32 params):

    * bitwise, for every argument the factory only multiplies or adds with (the learning rate of
      every optax optimizer, ``scale(-lr)``; a weight decay, ``g + wd * w``; sgd's momentum,
      ``g + m * t``): a Python float enters float32 arithmetic rounded to float32 exactly as
      the stored leaf is, so both programs do the same operations on the same values (bitwise
      on the CPUs tested; the tests allow weight decay ``rtol = 1e-5`` over 200 steps, since XLA
      may fuse a program holding a constant differently from one holding a parameter);
    * within rounding, for arguments the factory does arithmetic on before using them: Adam's,
      Lion's and RMSProp's decay rates enter as ``1 - b``, which the unwrapped factory
      computes in float64 from the Python float and rounds once, and the wrapped one computes
      in float32 from the rounded ``b`` (exact, but of the rounded value): ``1 - 0.999`` differs by
      a relative 1.3e-5. Over 100 Adam steps the params agree within 2e-4 relative (5e-5
      measured with ``b2 = 0.999``);
    * schedules: within float32 rounding of the schedule's own arithmetic (see :func:`schedule`);
    * integers (an argument without an int default or annotation, e.g. :func:`jaxreg.swa`'s
      ``start``) are stored in the float dtype too, exact up to :math:`2^{24}` in float32: a
      concrete larger one is refused, a traced one (built under ``vmap``) is rounded. Enable x64
      or name it in ``static_args`` for larger values.

    This is why defaults are not converted: ``optax.inject_hyperparams`` turns ``adam``'s
    default ``b1``, ``b2`` into float32 arrays too, and its trajectory drifts from plain
    ``adam`` even when only the learning rate is injected (optax#583, #1532).

    Strict dtype promotion: the factory's own trace (e.g. ``scale_by_adam``'s bias correction,
    ``b ** count`` with an int32 count) runs under standard promotion inside ``init`` and
    ``update``, so a user running ``jax_numpy_dtype_promotion="strict"`` can use any optax
    optimizer.

    Args:
      factory: a function returning an ``optax.GradientTransformation`` (``optax.sgd``,
        ``optax.adamw``, a user's ``lambda lr, wd: optax.chain(...)``...).
      static_args: names of numeric arguments to keep as Python values (e.g. an int used as a
        shape or a float the factory branches on).

    Returns:
      A function taking ``factory``'s arguments and returning an
      ``optax.GradientTransformationExtraArgs`` whose state is a :class:`SweepableState`.

    Raises:
      ValueError: when called, if the arguments do not fit ``factory``'s signature, a static
        argument is given a traced value (or a bool/str argument an array), a numeric argument
        is not a finite scalar in its domain (or is a bool or a string), or ``factory`` uses a
        numeric argument in Python control flow; at
        ``update`` time, if the state was not made by a sweepable optimizer with the same
        hyperparameter names.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxreg as jr
      >>> params = jnp.ones(2)
      >>> lrs = jnp.array([0.1, 0.5])
      >>> make = jr.sweepable(optax.sgd)
      >>> states = jax.vmap(lambda lr: make(learning_rate=lr).init(params))(lrs)
      >>> states.hyperparams["learning_rate"].tolist()
      [0.10000000149011612, 0.5]
      >>> opt = make(learning_rate=0.0)  # any value: update reads each member's from its state
      >>> grads = jnp.ones(2)
      >>> updates, states = jax.vmap(opt.update, in_axes=(None, 0))(grads, states)
      >>> updates[:, 0].tolist()
      [-0.10000000149011612, -0.5]

    References:
      optax ``inject_hyperparams`` (``optax/schedules/_inject.py``) and its issues #577, #583,
      #913, #932, #1373, #1532.
    """
    if not callable(factory):
        raise ValueError(
            f"sweepable: factory must be a callable returning an optax optimizer, got factory = {factory!r}."
        )
    static_names = _static_names(factory, static_args)
    fname = _fn_name(factory)

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        where = f"sweepable({fname})"
        positional, static, numeric, schedules, held = _split(where, factory, args, kwargs, static_names)
        sched_specs = {name: (s.fn, s.static) for name, s in schedules.items()}
        trees = {name for name, value in numeric.items() if not isinstance(value, jax.Array)}

        def inner(values: dict[str, Any]) -> optax.GradientTransformationExtraArgs:
            return optax.with_extra_args_support(factory(*positional, **static, **values))

        def values_at(hyperparams: dict[str, Any], count: jax.Array) -> dict[str, Any]:
            values = {name: hyperparams[name] for name in numeric}
            for name, (fn, fn_static) in sched_specs.items():
                values[name] = _evaluate(fn, fn_static, hyperparams[name], count)
            return {name: value if name in trees else _weakly_typed(value) for name, value in values.items()}

        probe_values = {**numeric, **{name: jnp.zeros((), _float_dtype()) for name in schedules}}
        _probe(where, fname, inner, probe_values, "keep {name} static with static_args or functools.partial")
        _check_factory(inner, held, probe_values)
        # The only numbers the closure holds are init's; update reads the state's.
        initial = {**numeric, **{name: dict(s.values) for name, s in schedules.items()}}

        def init_fn(params: PyTree) -> SweepableState:
            count = jnp.zeros([], jnp.int32)
            # The factory's own math may need standard promotion (scale_by_adam: b ** count, int32).
            with jax.numpy_dtype_promotion("standard"):
                inner_state = inner(values_at(initial, count)).init(params)
            return SweepableState(count=count, hyperparams=dict(initial), inner_state=inner_state)

        def update_fn(updates, state, params=None, **extra_args):
            _check_state(where, state, numeric, schedules)
            values = values_at(state.hyperparams, state.count)
            # The factory's own math may need standard promotion (scale_by_adam: b ** count, int32);
            # jaxreg's transforms that keep a hyperparameter in their state take this step's.
            with jax.numpy_dtype_promotion("standard"), _rebuild.rebuilding():
                updates, inner_state = inner(values).update(updates, state.inner_state, params, **extra_args)
            new_state = SweepableState(
                count=optax.safe_increment(state.count), hyperparams=state.hyperparams, inner_state=inner_state
            )
            return updates, new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    return make


def _check_state(where: str, state: Any, numeric: dict, schedules: dict) -> None:
    if not isinstance(state, SweepableState):
        raise ValueError(
            f"{where}: update needs the state made by a sweepable optimizer's init, got a {type(state).__name__}."
        )
    expected = {**{name: None for name in numeric}, **{name: sorted(s.values) for name, s in schedules.items()}}
    got = {name: sorted(value) if isinstance(value, dict) else None for name, value in dict(state.hyperparams).items()}
    if got != expected:
        raise ValueError(
            f"{where}: the state's hyperparameters {got} are not this optimizer's {expected} (None: a number, "
            f"a list: a schedule's numbers); build the optimizer with the same arguments that built the state."
        )
