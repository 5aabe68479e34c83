"""Ahead-of-time compilation with its costs: trace+lower vs compile seconds, XLA's FLOPs.

:func:`compile_fn` runs ``jax.jit(f).lower(*args).compile()`` and times the two stages apart,
with the FLOPs and bytes of XLA's own cost analysis (:func:`cost_flops`); :func:`compile_log`
records JAX's compile-time events inside a block, for code that jits internally. Retraces are
caught with ``chex.assert_max_traces`` (it replaces the former ``TraceCounter``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxreg.benchmark.timing import _record

__all__ = ["CompileLog", "CompiledFn", "compile_fn", "compile_log", "cost_flops"]


@dataclasses.dataclass(frozen=True)
class CompiledFn:
    """An ahead-of-time compiled function with its compile costs and XLA cost analysis.

    Attributes:
      compiled: the ``jax.stages.Compiled``; call it with the same argument shapes.
      lower_s: seconds to trace and lower to StableHLO.
      compile_s: seconds XLA took to compile (a cache lookup's if ``cached``).
      cached: True when JAX answered from its caches and no backend compile ran.
      flops: floating-point operations per call from ``compiled.cost_analysis()`` (NaN if
        the backend reports none).
      bytes_accessed: bytes read and written per call from the same analysis (NaN if none).
    """

    compiled: Any
    lower_s: float
    compile_s: float
    flops: float
    bytes_accessed: float
    cached: bool = False

    def __call__(self, *args: Any) -> Any:
        return self.compiled(*args)

    def to_dict(self) -> dict[str, Any]:
        return _record(self, ("lower_s", "compile_s", "flops", "bytes_accessed", "cached"))


def _cost_value(analysis: Any, key: str) -> float:
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    if not analysis or key not in analysis:
        return math.nan
    return float(analysis[key])


def cost_flops(compiled: Any) -> float:
    """FLOPs per call of a compiled function, from XLA's own cost analysis.

    Args:
      compiled: a ``jax.stages.Compiled`` (``jax.jit(f).lower(*args).compile()``) or a
        :class:`CompiledFn`.

    Returns:
      The ``"flops"`` entry of ``compiled.cost_analysis()``, or NaN where the backend has none.
      XLA counts the body of a loop (``lax.scan``, ``fori_loop``, ``lax.map``) once, not once per
      iteration: for such programs take the FLOPs of the body's own function times the trip count.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> c = jax.jit(jnp.matmul).lower(jnp.ones((8, 4)), jnp.ones((4, 2))).compile()
      >>> jr.benchmark.cost_flops(c)  # 2 * m * n * k
      128.0
    """
    if isinstance(compiled, CompiledFn):
        return compiled.flops
    return _cost_value(compiled.cost_analysis(), "flops")


def compile_fn(
    fn: Callable[..., Any], *args: Any, static_argnums: int | Sequence[int] = (), **jit_kwargs: Any
) -> CompiledFn:
    r"""Compiles ``fn`` ahead of time for ``args``, timing trace+lower and compile apart.

    .. math:: t_\text{first call} \approx t_\text{lower} + t_\text{compile} + t_\text{run}

    A program JAX has compiled before in this process (a step already called with these
    shapes) is answered from its caches in microseconds: then no backend compile runs
    (:func:`compile_log` sees none) and ``cached`` is True, ``lower_s`` and ``compile_s`` the
    lookups' times. To time the compile, call ``compile_fn`` before the first call of the step
    (its result is the compiled step to call), or pass the plain function the step wraps before
    it ever ran. (Clearing JAX's caches for it would recompile every other function of the
    process, and retrace one under ``chex.assert_max_traces``.)

    Args:
      fn: a Python function or an already ``jax.jit``-wrapped one.
      *args: example arguments (arrays or ``jax.ShapeDtypeStruct``).
      static_argnums: passed to ``jax.jit`` when ``fn`` is not jitted yet.
      **jit_kwargs: other ``jax.jit`` options (``donate_argnums``, ...).

    Returns:
      A :class:`CompiledFn`: callable, with ``lower_s``, ``compile_s``, ``flops`` and
      ``bytes_accessed``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> c = jr.benchmark.compile_fn(lambda a, b: a @ b, jnp.ones((16, 8)), jnp.ones((8, 4)))
      >>> c.flops, c.compile_s >= 0.0
      (1024.0, True)
      >>> c(jnp.ones((16, 8)), jnp.ones((8, 4))).shape
      (16, 4)
    """
    if hasattr(fn, "lower") and (static_argnums != () or jit_kwargs):
        # a jitted function keeps the options it was jitted with: these would be ignored
        options = ", ".join(["static_argnums"] * (static_argnums != ()) + sorted(jit_kwargs))
        raise ValueError(
            f"compile_fn: {options} apply when fn is not jitted yet; fn is already jax.jit-wrapped "
            "(pass the plain function, or jit it with these options yourself)."
        )
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn, static_argnums=static_argnums, **jit_kwargs)

    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    with compile_log() as log:
        compiled = lowered.compile()
    t2 = time.perf_counter()
    analysis = compiled.cost_analysis()
    return CompiledFn(
        compiled=compiled,
        lower_s=t1 - t0,
        compile_s=t2 - t1,
        cached=log.compiles == 0,
        flops=_cost_value(analysis, "flops"),
        bytes_accessed=_cost_value(analysis, "bytes accessed"),
    )


_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}


@dataclasses.dataclass
class CompileLog:
    """Time JAX spent tracing, lowering and compiling inside a :func:`compile_log` block.

    Attributes:
      trace_s: seconds tracing Python to jaxprs.
      lower_s: seconds lowering jaxprs to StableHLO.
      compile_s: seconds in the XLA backend compiler.
      compiles: number of backend compilations.
    """

    trace_s: float = 0.0
    lower_s: float = 0.0
    compile_s: float = 0.0
    compiles: int = 0

    @property
    def total_s(self) -> float:
        return self.trace_s + self.lower_s + self.compile_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_s": self.total_s}


class compile_log:
    """Context manager recording JAX's own compile-time events inside the block.

    Separates compile time from run time where ahead-of-time compilation is not at hand, e.g.
    inside a library call that jits internally (a training loop). Uses ``jax.monitoring``'s
    duration events; everything compiled in the process during the block counts.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> x = jnp.ones(5)
      >>> with jr.benchmark.compile_log() as log:
      ...     _ = jax.jit(lambda x: jnp.cos(x) + 1)(x)
      >>> log.compiles, log.compile_s > 0
      (1, True)
    """

    def __init__(self) -> None:
        self.log = CompileLog()

    def _listener(self, event: str, duration: float, **kwargs: Any) -> None:
        field = _COMPILE_EVENTS.get(event)
        if field is not None:
            setattr(self.log, field, getattr(self.log, field) + float(duration))
            if field == "compile_s":
                self.log.compiles += 1

    def __enter__(self) -> CompileLog:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self.log

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)
