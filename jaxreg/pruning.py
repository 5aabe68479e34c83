"""Successive halving inside one program: at rung evaluations only the best members keep training.

:class:`SuccessiveHalving` is passed to :func:`jaxreg.fit` as ``prune=``. At evaluations
``first_rung``, ``first_rung * eta``, ``first_rung * eta**2``, ... (1-based counts of evaluations)
the members still running are ranked by the monitored value and only the best
``max(1, floor(running / eta))`` continue; the others stop as if early-stopped (their best
snapshot is kept), and :func:`jaxreg.fit`'s member compaction removes them from the computation.
This is the successive-halving rung schedule of Hyperband / ASHA (Li et al. 2018) run as one
vmapped program.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["SuccessiveHalving"]

_MODES = ("min", "max")


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["eta", "first_rung", "mode"])
@dataclasses.dataclass(frozen=True)
class SuccessiveHalving:
    r"""Successive halving: at rung :math:`r` keep the best :math:`\lfloor n_r / \eta \rfloor` running members.

    The rungs are the evaluations (counted from 1)

    .. math:: k_r = K \eta^r, \qquad r = 0, 1, 2, \dots

    At rung :math:`k_r`, after the early-stopping update of that evaluation, the :math:`n_r`
    members still running (not stopped, budget not spent) are ranked by the monitored value
    (ascending for ``mode="min"``, descending for "max"; a non-finite value (NaN, :math:`\pm\infty`:
    a diverged member) ranks last, ties go to the lower
    member index) and the best :math:`\max(1, \lfloor n_r / \eta \rfloor)` continue; the others
    are marked stopped. ``eta``, ``first_rung`` and ``mode`` are static (they shape the schedule).

    Args:
      eta: the reduction factor, an int >= 2.
      first_rung: :math:`K`, the evaluation of the first rung, an int >= 1.
      mode: "min" or "max"; ``None`` takes the early stopper's mode in :func:`jaxreg.fit` ("min"
        without one).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxreg as jr
      >>> sh = jr.SuccessiveHalving(eta=2, first_rung=3)
      >>> sh.rungs(num_evals=30)
      (3, 6, 12, 24)
      >>> value = jnp.array([0.5, jnp.nan, 0.1, 0.3, 0.2])
      >>> sh.keep(value, running=jnp.array([True, True, True, True, False])).tolist()
      [False, False, True, True, False]

    References:
      Jamieson & Talwalkar, `Non-stochastic Best Arm Identification and Hyperparameter
      Optimization <https://arxiv.org/abs/1502.07943>`_, 2016; Li et al., `A System for Massively
      Parallel Hyperparameter Tuning <https://arxiv.org/abs/1810.05934>`_, 2020.
    """

    eta: int = 2
    first_rung: int = 1
    mode: str | None = None

    def __post_init__(self) -> None:
        for name in ("eta", "first_rung"):  # numpy ints as Python ints (static fields hash and print as ints)
            value = getattr(self, name)
            if isinstance(value, np.integer) and not isinstance(value, np.bool_):
                object.__setattr__(self, name, int(value))
        self.check("SuccessiveHalving")  # at construction, where the bad value is written

    def check(self, where: str) -> None:
        """Raises ``ValueError`` (naming ``where``) unless ``eta >= 2``, ``first_rung >= 1`` and mode is valid."""
        owner = "" if where == "SuccessiveHalving" else "SuccessiveHalving."
        for name, low in (("eta", 2), ("first_rung", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{where}: {owner}{name} must be an int >= {low}, got {name} = {value!r}.")
        if self.mode is not None and self.mode not in _MODES:
            raise ValueError(f'{where}: {owner}mode must be "min", "max" or None, got mode = {self.mode!r}.')

    def rungs(self, num_evals: int) -> tuple[int, ...]:
        """The rung evaluations (1-based) up to ``num_evals``."""
        self.check("SuccessiveHalving.rungs")
        out, k = [], self.first_rung
        while k <= num_evals:
            out.append(k)
            k *= self.eta
        return tuple(out)

    def keep(self, value: ArrayLike, running: ArrayLike, *, mode: str | None = None) -> jax.Array:
        """Which members continue at a rung: the best ``max(1, running.sum() // eta)`` of ``running``.

        Args:
          value: the monitored value, one per member.
          running: bool, the members still running.
          mode: overrides ``self.mode`` ("min" when both are ``None``).

        Returns:
          A bool array like ``running``; False for every member that is not running.
        """
        if mode is None:
            mode = self.mode if self.mode is not None else "min"
        if mode not in _MODES:
            raise ValueError(f'SuccessiveHalving.keep: mode must be "min", "max" or None, got mode = {mode!r}.')
        value = jnp.asarray(value)  # ranked in its own dtype: rounding could tie distinct values
        if value.dtype == jnp.bool_:
            value = value.astype(jnp.int32)
        running = jnp.asarray(running, jnp.bool_)
        if value.ndim != 1 or value.shape != running.shape:
            raise ValueError(
                "SuccessiveHalving.keep: value and running must be one entry per member (1-D, the same "
                f"shape), got value.shape = {value.shape}, running.shape = {running.shape}."
            )
        if mode == "min":
            score = value
        else:  # ~x = -x - 1 for a signed int, MAX - x for an unsigned one: descending, never overflowing
            score = -value if jnp.issubdtype(value.dtype, jnp.inexact) else jnp.invert(value)
        diverged = jnp.logical_not(jnp.isfinite(score))  # -inf for a loss is no best
        score = jnp.where(diverged, jnp.zeros_like(score), score)
        # lexsort: the last key is the primary one -> running first, then finite, then best score;
        # it is stable, so ties keep the lower member index.
        order = jnp.lexsort((score, diverged, jnp.logical_not(running)))
        rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
        count = jnp.sum(running, dtype=order.dtype)  # int64 under x64, as lexsort's order
        num_keep = jnp.maximum(count // self.eta, 1)
        return jnp.logical_and(running, rank < num_keep)
