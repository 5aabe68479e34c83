"""Shared pieces of the benchmarks: settings per mode, the result row, the MLP workload, and
where the figures were measured (machine, allocator, peak memory of a subprocess).

Workload unless a comparison says otherwise: MLP 64-256-256-10 (ReLU) on scikit-learn's digits,
batch 128, Adam, L2 on the kernels and dropout 0.5 after each hidden layer. One member-step is
about 65 MFLOP (6 x 85,002 params x 128).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _machine

SIZES = (64, 256, 256, 10)
BATCH = 128
RATE = 0.5
L2 = 1e-4
L1 = 1e-5
MAX_NORM = 3.0
LR = 1e-3


GPU_BACKENDS = ("gpu", "cuda", "rocm")


def on_gpu() -> bool:
    """Whether JAX's default backend is a GPU."""
    return jax.default_backend() in GPU_BACKENDS


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
    seed: int = 0  # of the inputs, initializations and dropout keys (``key``)
    gpu: bool = False  # on a GPU: no CPU-only sections (torch threads, host RSS)

    @staticmethod
    def for_mode(mode: str, *, seed: int = 0, gpu: bool = False) -> Settings:
        """The settings of ``mode`` (``"tiny"``, ``"quick"`` or ``"full"``)."""
        return dataclasses.replace(Settings._preset(mode), seed=seed, gpu=gpu)

    @staticmethod
    def _preset(mode: str) -> Settings:
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


def key(settings: Settings, i: int) -> jax.Array:
    """The ``i``-th random key of a run: ``fold_in(key(settings.seed), i)``."""
    return jax.random.fold_in(jax.random.key(settings.seed), i)


@dataclasses.dataclass
class Row:
    """One line of the results table.

    ``ratio`` is "how many times better jaxreg is than the baseline" (>1: jaxreg wins), the
    median over interleaved pairs; ``ratio_q25``/``ratio_q75`` give its spread (over ``ratios``:
    two values for the sweep rows, whose runs are long). Two kinds of rows say otherwise in their
    ``unit``: section ``anatomy`` gives a variant's time over the full step's (the share a part
    costs), and the ``peak`` fractions are fractions of a rate.
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


# ----------------------------------------------------------------------------- machine and memory

# returning them to the OS and faulting them back in every step.
MALLOC_TUNING = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "268435456",
}


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes, from the OS.

    Reads ``VmHWM`` from ``/proc/self/status`` where it exists (Linux), else
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS).

    Returns:
      Bytes.

    Examples:
      >>> import numpy as np
      >>> from benchmarks import common
      >>> x = np.ones(64 * 2**20 // 8)  # 64 MiB, written, so resident
      >>> common.peak_rss() >= x.nbytes
      True
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # POSIX only: imported where used

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _rss_epilogue() -> str:
    """Python source appended to a subprocess's code: prints its peak RSS after a marker."""
    return (
        "\nimport sys\n"
        + inspect.getsource(peak_rss)
        + 'sys.stdout.flush()\nprint("\\n__JAXREG_PEAK_RSS__" + str(peak_rss()))\n'
    )


def peak_rss_of(code: str, *, env: dict[str, str] | None = None, timeout: float = 600.0) -> int:
    """Peak resident memory, in bytes, of a fresh Python process that runs ``code``.

    Peak memory is a high-water mark: within one process a configuration measured after a
    larger one reports the larger one's peak. Run each configuration in its own process, and
    subtract a baseline process (the same imports and setup without the work) to isolate it.

    Args:
      code: Python source run with ``python -c`` (it must finish its work before it ends,
        e.g. with ``jax.block_until_ready``).
      env: extra environment variables for the subprocess.
      timeout: seconds before the subprocess is killed.

    Returns:
      The subprocess's peak resident memory in bytes (``VmHWM``).

    Raises:
      RuntimeError: if the subprocess fails (its stderr tail is in the message).

    Examples:
      >>> from benchmarks import common
      >>> small = common.peak_rss_of("x = bytearray(1)")
      >>> big = common.peak_rss_of("x = bytearray(200 * 2**20)")
      >>> big - small > 150 * 2**20
      True
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", code + _rss_epilogue()],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    marker = "__JAXREG_PEAK_RSS__"
    if proc.returncode != 0 or marker not in proc.stdout:
        raise RuntimeError(f"peak_rss_of: the subprocess failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return int(proc.stdout.rsplit(marker, 1)[1].strip())


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def allocator() -> str:
    """Which allocator this process runs with, from the environment it started with.

    Returns:
      ``"tcmalloc (LD_PRELOAD)"``, ``"jemalloc (LD_PRELOAD)"``, ``"glibc malloc (tuned: ...)"``
      or ``"glibc malloc (default)"`` (or the preloaded library's path).

    Examples:
      >>> from benchmarks import common
      >>> isinstance(common.allocator(), str)
      True
    """
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if name in preload:
            return f"{name} (LD_PRELOAD)"
    if preload:
        return f"LD_PRELOAD={preload}"
    tuned = sorted(k for k in os.environ if k.startswith("MALLOC_"))
    if tuned:
        return "glibc malloc (tuned: " + ", ".join(f"{k}={os.environ[k]}" for k in tuned) + ")"
    return "glibc malloc (default)"


@dataclasses.dataclass(frozen=True)
class Machine:
    """Where figures were measured: hardware, software and the settings that change speed."""

    cpu_model: str
    cpu_flags: list[str]
    logical_cpus: int
    usable_cpus: int
    platform: str
    python: str
    jax: str
    jaxlib: str | None
    optax: str | None
    flax: str | None
    numpy: str
    torch: str | None
    backend: str
    devices: list[str]
    device_kind: str
    allocator: str
    env: dict[str, str]
    threefry_partitionable: bool

    @property
    def has_gpu(self) -> bool:
        return self.backend in GPU_BACKENDS

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["has_gpu"] = self.has_gpu
        return d


_ENV_KEYS = ("LD_PRELOAD", "XLA_FLAGS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "JAX_PLATFORMS")


def machine() -> Machine:
    """Describes this machine and process: CPU, cores, versions, backend, allocator, env.

    Returns:
      A :class:`Machine` (``to_dict()`` for JSON).

    Examples:
      >>> import jax
      >>> from benchmarks import common
      >>> m = common.machine()
      >>> m.jax == jax.__version__, m.backend == jax.default_backend(), m.logical_cpus >= 1
      (True, True, True)
    """
    devices = jax.devices()
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_") or k in _ENV_KEYS}
    return Machine(
        cpu_model=_machine.cpu_model(),
        cpu_flags=_machine.cpu_flags(),
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=_machine.usable_cpus(),
        platform=platform.platform(),
        python=platform.python_version(),
        jax=jax.__version__,
        jaxlib=_version("jaxlib"),
        optax=_version("optax"),
        flax=_version("flax"),
        numpy=np.__version__,
        torch=_version("torch"),
        backend=jax.default_backend(),
        devices=[str(d) for d in devices],
        device_kind=devices[0].device_kind if devices else "",
        allocator=allocator(),
        env=env,
        threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
    )
