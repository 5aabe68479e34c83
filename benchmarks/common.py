"""Shared pieces of the benchmarks: settings per mode, the result row, the MLP workload.

Workload unless a comparison says otherwise: MLP 64-256-256-10 (ReLU) on scikit-learn's digits,
batch 128, Adam, L2 on the kernels and dropout 0.5 after each hidden layer. One member-step is
about 65 MFLOP (6 x 85,002 params x 128).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

SIZES = (64, 256, 256, 10)
BATCH = 128
RATE = 0.5
L2 = 1e-4
L1 = 1e-5
MAX_NORM = 3.0
LR = 1e-3


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much to measure: ``tiny`` for the test suite, ``quick``, or ``full``."""

    mode: str
    pairs: int
    warmup: int
    min_time: float
    members: tuple[int, ...]
    mc_samples: tuple[int, ...]
    train_members: int
    train_steps: int
    train_steps_compile: tuple[int, ...]
    es_population: int
    torch_members: tuple[int, ...]
    memory: bool
    peak_size: int

    @staticmethod
    def for_mode(mode: str) -> Settings:
        if mode == "tiny":
            return Settings("tiny", 5, 1, 0.0, (2,), (4,), 2, 40, (), 16, (2,), False, 256)
        if mode == "quick":
            return Settings("quick", 5, 1, 0.05, (8, 32), (64,), 32, 40, (40, 400), 256, (8, 32), True, 1024)
        if mode == "full":
            return Settings(
                "full",
                7,
                2,
                0.2,
                (1, 8, 32, 128),
                (16, 64, 256),
                32,
                300,
                (200, 1000, 2000),
                256,
                (1, 8, 32, 128),
                True,
                2048,
            )
        raise ValueError(f"mode must be 'tiny', 'quick' or 'full', got mode = {mode!r}.")

    @property
    def number(self) -> int | None:
        """Calls per repeat: 1 in tiny mode, else calibrated to ``min_time``."""
        return 1 if self.mode == "tiny" else None


@dataclasses.dataclass
class Row:
    """One line of the results table.

    ``ratio`` is always "how many times better jaxreg is than the baseline" (>1: jaxreg wins),
    the median over interleaved pairs; ``ratio_q25``/``ratio_q75`` give its spread.
    """

    section: str
    workload: str
    jaxreg: str
    baseline: str
    unit: str = ""
    jaxreg_value: float | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    ratio_q25: float | None = None
    ratio_q75: float | None = None
    ratios: list[float] = dataclasses.field(default_factory=list)
    jaxreg_rel_iqr: float | None = None
    baseline_rel_iqr: float | None = None
    target: str = ""
    status: str = "ok"
    note: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def unavailable(section: str, workload: str, why: str, *, target: str = "") -> Row:
    return Row(section, workload, "-", "-", status="not available", note=why, target=target)


def row_from_comparison(
    section: str,
    workload: str,
    jaxreg: str,
    baseline: str,
    comparison: Any,
    *,
    work: float = 1.0,
    unit: str = "calls/s",
    target: str = "",
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> Row:
    """A row from a ``jr.benchmark.Comparison`` whose A is jaxreg and B the baseline.

    Values are throughputs (``work`` per median second); the ratio is the median paired
    speedup ``t_baseline / t_jaxreg``.
    """
    speedups = [1.0 / r for r in comparison.ratios]
    return Row(
        section=section,
        workload=workload,
        jaxreg=jaxreg,
        baseline=baseline,
        unit=unit,
        jaxreg_value=work / comparison.a.median,
        baseline_value=work / comparison.b.median,
        ratio=float(np.median(speedups)),
        ratio_q25=float(np.quantile(speedups, 0.25)),
        ratio_q75=float(np.quantile(speedups, 0.75)),
        ratios=speedups,
        jaxreg_rel_iqr=comparison.a.rel_iqr,
        baseline_rel_iqr=comparison.b.rel_iqr,
        target=target,
        note=note,
        extra=extra or {},
    )


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# ----------------------------------------------------------------------------- the workload


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: 1797 x 64 float32 inputs in [0, 1], int32 labels 0-9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)


def batch() -> tuple[jax.Array, jax.Array]:
    x, y = digits()
    return jnp.asarray(x[:BATCH]), jnp.asarray(y[:BATCH])


def init_mlp(key: jax.Array, sizes: tuple[int, ...] = SIZES) -> dict[str, dict[str, jax.Array]]:
    """LeCun-normal kernels ``(in, out)`` and zero biases, named as flax linen names them."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        params[f"Dense_{i}"] = {
            "kernel": jax.random.normal(k, (n_in, n_out), jnp.float32) / np.sqrt(n_in).astype(np.float32),
            "bias": jnp.zeros((n_out,), jnp.float32),
        }
    return params


def bernoulli_dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout as flax's ``nn.Dropout`` writes it (``jax.random.bernoulli``)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jax.lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))


def mlp_apply(
    params: dict[str, Any], x: jax.Array, key: jax.Array | None, *, rate: float = RATE, dropout: Callable | None = None
) -> jax.Array:
    """Logits; dropout after each hidden layer when ``key`` is given."""
    drop = dropout or bernoulli_dropout
    n = len(params)
    h = x
    for i in range(n):
        layer = params[f"Dense_{i}"]
        h = h @ layer["kernel"] + layer["bias"][None, :]
        if i < n - 1:
            h = jax.nn.relu(h)
            if key is not None and rate > 0:
                key, sub = jax.random.split(key)
                h = drop(sub, h, rate)
    return h


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def hand_l2(params: dict[str, Any], scale: float = L2) -> jax.Array:
    return scale * sum(jnp.sum(jnp.square(layer["kernel"])) for layer in params.values())


def jaxreg_dropout() -> tuple[Callable | None, str]:
    """``jr.dropout`` if it exists yet, else ``(None, why)``."""
    import jaxreg as jr

    fn = getattr(jr, "dropout", None)
    if fn is None:
        return None, "jr.dropout not available yet: jaxreg side uses jax.random.bernoulli dropout"
    return fn, ""


def make_hand_step(rate: float = RATE) -> tuple[Callable, optax.GradientTransformation]:
    """The reference training step, by hand in optax: CE + L2 in the loss, bernoulli dropout, Adam."""
    opt = optax.adam(LR)

    def loss_fn(params, x, y, key):
        return cross_entropy(mlp_apply(params, x, key, rate=rate), y) + hand_l2(params)

    def step(params, opt_state, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
        with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
            updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, opt


def make_jaxreg_step(rate: float = RATE) -> tuple[Callable, optax.GradientTransformation, str]:
    """The same step through jaxreg: ``jr.regularize`` with ``jr.l2`` on kernels and ``jr.dropout``."""
    import jaxreg as jr

    drop, note = jaxreg_dropout()
    opt = optax.adam(LR)
    penalty = jr.l2(L2, mask=jr.masks.kernels)

    def data_loss(params, x, y, key):
        return cross_entropy(mlp_apply(params, x, key, rate=rate, dropout=drop), y)

    loss_fn = jr.regularize(data_loss, penalty)

    def step(params, opt_state, x, y, key):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, key)
        with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
            updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, opt, note


def member_flops() -> float:
    """Analytic FLOPs of one member-step: 6 x params x batch (forward 2, backward 4)."""
    n_params = sum(a * b + b for a, b in itertools.pairwise(SIZES))
    return 6.0 * n_params * BATCH
