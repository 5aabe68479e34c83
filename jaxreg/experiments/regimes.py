"""Regimes as values of array leaves, and the one vmapped, jitted program that trains them all.

A *member* is one network with its own hyperparameters, carried as array leaves of
:class:`Hyper`: coupled L2 scale, L1 scale (proximal step), decoupled weight decay, max-norm
bound, dropout rate, hidden activation (ReLU or sigmoid) and a bootstrap weight per training
example, its learning rate, a spectral-norm bound, a SAM radius and Adam's ``b1`` (a leaf of the
optimizer state through :func:`jaxreg.sweepable` when some member sets one). Every member runs the same
optimizer chain

.. code-block:: python

    optax.chain(optax.scale_by_adam(),
                jr.add_penalty_grad(jr.l2(wd / 2, mask=kernels)),   # decoupled (AdamW)
                optax.scale_by_learning_rate(lr),                   # lr: a leaf too
                jr.proximal(jr.l1(l1, mask=kernels), lr),           # exact zeros
                jr.project(jr.max_norm(c, mask=kernels)),           # per-unit bound
                jr.project(jr.spectral_norm(s, mask=kernels)),      # per-layer Lipschitz bound
                jr.swa(start, every))                               # the SWA average, read-only

on the loss ``jr.regularize(weighted_cross_entropy, jr.l2(l2, mask=kernels))``, with dropout
on the hidden units at the member's rate. A regime that turns a regularizer off sets its leaf
to zero (or a bound to a huge value), so all regimes are one compiled program:
``jr.fit``'s ``lax.scan`` over steps, ``vmap``-ped over members, the same compiled chunk called
once per progress-bar tick. Training is full batch (the training split
is deliberately small), so the only randomness is the initialization, the dropout masks and
the bootstrap resamples, all drawn from the seed.

Every member's chain carries its SWA average (:func:`jaxreg.swa` from ``Config.swa_start``), so
the SWA regime is read off a member's averaged params with no extra member. Members with a SAM
radius (``sam_rho > 0``) pay two gradients per step, so they are trained as a second program
(the same data, evaluations and snapshots, the gradient from :func:`jaxreg.sam_gradient`) and
merged back into member order: :class:`Trained` looks the same either way.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr

PyTree = Any

__all__ = [
    "ADAM_B1",
    "NO_MAX_NORM",
    "NO_SPECTRAL_NORM",
    "Config",
    "Hyper",
    "Member",
    "Trained",
    "apply",
    "classification_metrics",
    "hidden_activations",
    "init_params",
    "member_probs",
    "saturation",
    "stack_hypers",
    "train",
    "weight_stats",
]

NO_MAX_NORM = 1e6
"""The max-norm bound that stands for "no constraint" (no unit's norm comes near it)."""

NO_SPECTRAL_NORM = 1e6
"""The spectral-norm bound that stands for "no constraint" (no kernel's top singular value comes near it)."""


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings of a run: they fix the compiled program's shapes."""

    hidden: tuple[int, ...] = (256, 256)
    learning_rate: float = 1e-3
    steps: int = 2000
    eval_every: int = 20
    target_loss: float = 0.05
    saturation: float = 0.05
    swa_start: float = 0.75  # SWA averages the params after updates round(swa_start * steps), +swa_every, ...
    swa_every: int = 1
    spectral_iters: int = 1  # power iterations per step of the spectral-norm projection


class Hyper(NamedTuple):
    """A member's hyperparameters, all array leaves (a new value never recompiles)."""

    l2: jax.Array  # coupled L2 scale, in the loss: l2 * sum(w**2) over kernels
    l1: jax.Array  # L1 scale of the proximal step (threshold lr * l1 per step)
    wd: jax.Array  # decoupled weight decay: w <- w - lr * wd * w, AdamW-style
    max_norm: jax.Array  # bound on each hidden/output unit's incoming weight norm
    dropout: jax.Array  # drop probability of hidden units
    sigmoid: jax.Array  # 1.0: sigmoid hidden units, 0.0: ReLU
    weights: jax.Array  # (n_train,) bootstrap counts (ones: the plain training set)
    init: jax.Array  # int32 index of the initialization (same index: same initial weights)
    lr: jax.Array  # learning rate (NaN in stack_hypers' output: Config.learning_rate, filled by train)
    spectral: jax.Array  # bound on each kernel's largest singular value (NO_SPECTRAL_NORM: none)
    sam_rho: jax.Array  # SAM radius (> 0: trained in the SAM program, two gradients per step)
    b1: jax.Array  # Adam's b1 (NaN in stack_hypers' output: optax's default, see train)


@dataclasses.dataclass
class Member:
    """A member as the host sees it: a name and the values of its leaves."""

    name: str
    l2: float = 0.0
    l1: float = 0.0
    wd: float = 0.0
    max_norm: float = NO_MAX_NORM
    dropout: float = 0.0
    sigmoid: bool = False
    init: int = 0  # members with the same init index start from the same weights
    bootstrap: int = -1  # >= 0: row of the bootstrap weights; -1: every example once
    lr: float | None = None  # None: the run's learning rate (Config.learning_rate)
    spectral: float = NO_SPECTRAL_NORM
    sam_rho: float = 0.0
    b1: float | None = None  # None: Adam's own default b1 (0.9); a value makes b1 a state leaf


def stack_hypers(members: list[Member], seed: int, num_train: int) -> Hyper:
    """Stacks the members' leaves on a leading member axis."""
    k_boot = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    num_boot = max([m.bootstrap for m in members] + [-1]) + 1
    boot = jr.ensemble.bootstrap_weights(k_boot, num_boot, num_train) if num_boot else None
    weights = [jnp.ones(num_train, jnp.float32) if m.bootstrap < 0 else boot[m.bootstrap] for m in members]

    def f(attr: str) -> jax.Array:
        return jnp.asarray([float(getattr(m, attr)) for m in members], jnp.float32)

    def or_nan(attr: str) -> jax.Array:
        return jnp.asarray(
            [math.nan if getattr(m, attr) is None else float(getattr(m, attr)) for m in members], jnp.float32
        )

    return Hyper(
        l2=f("l2"),
        l1=f("l1"),
        wd=f("wd"),
        max_norm=f("max_norm"),
        dropout=f("dropout"),
        sigmoid=f("sigmoid"),
        weights=jnp.stack(weights),
        init=jnp.asarray([m.init for m in members], jnp.int32),
        lr=or_nan("lr"),
        spectral=f("spectral"),
        sam_rho=f("sam_rho"),
        b1=or_nan("b1"),
    )


def init_params(seed: int, init: int, sizes: tuple[int, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Glorot-uniform kernels ``(in, out)`` and zero biases, layers ``dense0``, ``dense1``, ...

    Drawn on the host with numpy from ``(seed, init)``: no random-bit program to compile, and
    members with the same ``init`` start from the same weights.
    """
    rng = np.random.default_rng([seed, init])
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        limit = math.sqrt(6.0 / (n_in + n_out))
        params[f"dense{i}"] = {
            "kernel": rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32),
            "bias": np.zeros((n_out,), np.float32),
        }
    return params


def _activation(z: jax.Array, sigmoid: jax.Array) -> jax.Array:
    return jnp.where(sigmoid > 0.5, jax.nn.sigmoid(z), jax.nn.relu(z))


def hidden_activations(params: PyTree, x: jax.Array, sigmoid: jax.Array) -> list[jax.Array]:
    """The hidden layers' activations (no dropout), one ``(n, width)`` array per layer."""
    out, h = [], x
    for i in range(len(params) - 1):
        layer = params[f"dense{i}"]
        h = _activation(h @ layer["kernel"] + layer["bias"][None, :], sigmoid)
        out.append(h)
    return out


def apply(
    params: PyTree,
    x: jax.Array,
    sigmoid: jax.Array,
    rate: jax.Array | None = None,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Logits of the MLP; with ``rng`` the hidden units are dropped at ``rate`` (inverted dropout)."""
    n = len(params)
    h = x
    for i in range(n):
        layer = params[f"dense{i}"]
        h = h @ layer["kernel"] + layer["bias"][None, :]
        if i < n - 1:
            h = _activation(h, sigmoid)
            if rng is not None:
                h = jr.dropout(jax.random.fold_in(rng, i), h, rate)
    return h


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


ADAM_B1 = 0.9
"""optax's default ``b1`` of ``scale_by_adam``: a member's ``b1`` when it has none of its own."""


def _optimizer(
    h: Hyper, lr: Any, *, swa_start: int = 0, swa_every: int = 1, spectral_iters: int = 1, b1_leaf: bool = False
):
    """The members' chain; ``lr`` is ``h.lr`` in :func:`train` (a float gives the same numbers).

    With ``b1_leaf``, Adam is ``jr.sweepable(optax.scale_by_adam)(b1=h.b1)``: each member's
    ``b1`` is a leaf of its optimizer state (``state.hyperparams["b1"]``), read by ``update``;
    without it, plain ``optax.scale_by_adam()`` (optax's Python default, the numbers of a run
    where no member sets ``b1``).
    """
    kernels = jr.masks.kernels
    adam = jr.sweepable(optax.scale_by_adam)(b1=h.b1) if b1_leaf else optax.scale_by_adam()
    return optax.chain(
        adam,
        jr.add_penalty_grad(jr.l2(h.wd / 2.0, mask=kernels)),
        optax.scale_by_learning_rate(lr),
        jr.proximal(jr.l1(h.l1, mask=kernels), lr),
        jr.project(jr.max_norm(h.max_norm, mask=kernels)),
        jr.project(jr.spectral_norm(h.spectral, mask=kernels, num_iters=spectral_iters)),
        jr.swa(swa_start, swa_every),
    )


class TrainState(NamedTuple):
    """One member's training state; ``hyper`` rides along unchanged (a leaf per member)."""

    params: PyTree
    opt_state: PyTree
    hyper: Hyper


@dataclasses.dataclass
class Trained:
    """What :func:`train` returns: the members' final and best-validation params and history."""

    final: PyTree  # params stacked on the member axis
    best: PyTree  # each member's params at its lowest validation loss
    best_step: np.ndarray  # (members,) updates done when the best snapshot was taken
    step: np.ndarray  # (evals,) updates done at each evaluation
    train_loss: np.ndarray  # (members, evals) mean training objective (data term) over the period
    val_loss: np.ndarray  # (members, evals)
    val_acc: np.ndarray  # (members, evals)
    num_steps: int
    wall_s: float
    averaged: PyTree = None  # each member's SWA average (jr.averaged_params of its chain)
    swa_start: int = 0  # the first update whose params enter the average
    programs: int = 1  # compiled training programs run (2 with SAM members)


def _chunk_size(num_steps: int, eval_every: int, target_chunks: int = 20) -> int:
    num_evals = num_steps // eval_every
    want = max(1, round(num_evals / target_chunks))
    divisors = [d for d in range(1, num_evals + 1) if num_evals % d == 0]
    return eval_every * min(divisors, key=lambda d: (abs(d - want), d))


def num_steps_for(config: Config) -> int:
    """``config.steps`` rounded up to a multiple of ``eval_every``."""
    return max(1, -(-config.steps // config.eval_every)) * config.eval_every


def swa_start_for(config: Config) -> int:
    """The first update whose params enter the SWA average: ``round(swa_start * num_steps)``."""
    if not 0.0 <= config.swa_start <= 1.0:
        raise ValueError(f"Config: swa_start must be in [0, 1], got swa_start = {config.swa_start}.")
    if int(config.swa_every) < 1:
        raise ValueError(f"Config: swa_every must be >= 1, got swa_every = {config.swa_every}.")
    return round(config.swa_start * num_steps_for(config))


def train(
    config: Config,
    hyper: Hyper,
    data: dict[str, np.ndarray],
    num_classes: int,
    *,
    seed: int,
    progress: bool = True,
    echo: Any = None,
) -> Trained:
    """Trains every member as one program: ``jr.fit`` scans over steps, ``vmap``-ped over members.

    Full batch (``batch_size`` = the training split); an evaluation on the validation split
    every ``eval_every`` steps keeps each member's best-validation-loss snapshot (early stopping
    as data: nobody is stopped, so the early-stopping regime can be read off any member).
    Members with ``sam_rho > 0`` are trained as a second program of the same schedule whose
    gradient is :func:`jaxreg.sam_gradient`'s, compiled and run in a thread beside the first (its
    ``wall_s`` is then the time of both together); the results are merged back into member order.
    A NaN learning rate (a member without its own) becomes ``config.learning_rate``. When some
    member has its own ``b1``, Adam's ``b1`` is a state leaf of every member (NaN becomes optax's
    default :data:`ADAM_B1`); when none has, the chain is plain ``optax.scale_by_adam()``.
    ``echo`` (e.g. ``print``) receives a status line before each program compiles.
    """
    lr = np.asarray(hyper.lr, np.float32)
    hyper = hyper._replace(lr=jnp.asarray(np.where(np.isnan(lr), np.float32(config.learning_rate), lr)))
    b1 = np.asarray(hyper.b1, np.float32)
    b1_leaf = not bool(np.all(np.isnan(b1)))
    hyper = hyper._replace(b1=jnp.asarray(np.where(np.isnan(b1), np.float32(ADAM_B1), b1)))
    sam = np.asarray(hyper.sam_rho) > 0
    groups = [(g, flag) for g, flag in ((np.flatnonzero(~sam), False), (np.flatnonzero(sam), True)) if g.size]
    t0 = time.perf_counter()

    def program(k: int) -> Trained:  # the first program shows the progress bar
        idx, use_sam = groups[k]
        sub = jax.tree.map(lambda a: a[idx], hyper)
        return _train_program(config, sub, data, num_classes, seed, progress and k == 0, echo, use_sam, b1_leaf)

    if len(groups) == 1:
        return program(0)
    # The SAM program compiles and runs in a thread beside the main one: XLA's compiler is
    # single-threaded and releases the GIL, so on two cores the second compile costs no wall
    # time. Each program is deterministic on its own; the thread changes no number.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        later = [pool.submit(program, k) for k in range(1, len(groups))]
        parts = [(groups[0][0], program(0))] + [(groups[k][0], f.result()) for k, f in enumerate(later, 1)]
    wall = time.perf_counter() - t0
    order = np.concatenate([idx for idx, _ in parts])
    inverse = np.argsort(order)  # row j of the concatenation is member order[j]

    def merge(*arrays):
        return np.concatenate(arrays)[inverse]

    t = [p for _, p in parts]
    return Trained(
        final=jax.tree.map(merge, *[p.final for p in t]),
        best=jax.tree.map(merge, *[p.best for p in t]),
        best_step=merge(*[p.best_step for p in t]),
        step=t[0].step,
        train_loss=merge(*[p.train_loss for p in t]),
        val_loss=merge(*[p.val_loss for p in t]),
        val_acc=merge(*[p.val_acc for p in t]),
        num_steps=t[0].num_steps,
        wall_s=wall,
        averaged=jax.tree.map(merge, *[p.averaged for p in t]),
        swa_start=t[0].swa_start,
        programs=len(t),
    )


def _train_program(
    config: Config,
    hyper: Hyper,
    data: dict[str, np.ndarray],
    num_classes: int,
    seed: int,
    progress: bool,
    echo: Any,
    sam: bool,
    b1_leaf: bool = False,
) -> Trained:
    """One ``jr.fit`` program over the members of ``hyper`` (SAM's gradient when ``sam``)."""
    x_tr = jnp.asarray(data["x_train"])
    y_tr = jnp.asarray(data["y_train"])
    n = int(x_tr.shape[0])
    sizes = (int(x_tr.shape[1]), *config.hidden, num_classes)
    num_members = int(hyper.l2.shape[0])
    num_steps = num_steps_for(config)
    swa_start = swa_start_for(config)

    def optimizer(h: Hyper) -> optax.GradientTransformation:
        return _optimizer(
            h,
            h.lr,
            swa_start=swa_start,
            swa_every=int(config.swa_every),
            spectral_iters=config.spectral_iters,
            b1_leaf=b1_leaf,
        )

    def data_loss(params, h: Hyper, x, y, weights, rng):
        logits = apply(params, x, h.sigmoid, h.dropout, rng)
        return jnp.sum(weights * cross_entropy(logits, y)) / jnp.sum(weights)

    def regularized(params, h, *args):
        return jr.regularize(data_loss, jr.l2(h.l2, mask=jr.masks.kernels))(params, h, *args)

    objective = jax.value_and_grad(regularized, has_aux=True)

    def gradient(params, h: Hyper, x, y, w, rng):
        if not sam:
            (_, terms), grads = objective(params, h, x, y, w, rng)
            return terms.loss, grads
        # SAM: the gradient of the whole objective at w + rho * g / ||g|| (same batch, same dropout
        # masks); the history's data term is the objective less the L2 term (exact when l2 = 0).
        total, grads = jr.sam_gradient(lambda p: regularized(p, h, x, y, w, rng)[0], params, rho=h.sam_rho)
        return total - jr.l2(h.l2, mask=jr.masks.kernels)(params), grads

    def step_fn(state: TrainState, batch, rng):
        x, y, idx = batch
        h = state.hyper
        loss, grads = gradient(state.params, h, x, y, h.weights[idx], rng)
        with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
            updates, opt_state = optimizer(h).update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, h), loss

    def eval_fn(state: TrainState, val):
        x, y = val
        logits = apply(state.params, x, state.hyper.sigmoid)
        return jnp.mean(cross_entropy(logits, y)), jnp.mean(jnp.argmax(logits, -1) == y)

    inits = [init_params(seed, int(i), sizes) for i in np.asarray(hyper.init)]
    params0 = jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *inits)
    state = jax.jit(jax.vmap(lambda p, h: TrainState(p, optimizer(h).init(p), h)))(params0, hyper)
    if echo is not None:
        what = "the SAM training program" if sam else "the training program"
        echo(f"compiling {what} ({num_members} member{'s' if num_members != 1 else ''}, {num_steps} steps)…")
    t0 = time.perf_counter()
    result = jr.fit(
        step_fn,
        eval_fn,
        state,
        (x_tr, y_tr, jnp.arange(n, dtype=jnp.int32)),
        (jnp.asarray(data["x_val"]), jnp.asarray(data["y_val"])),
        rng=jax.random.fold_in(jax.random.PRNGKey(seed), 7),
        num_steps=num_steps,
        batch_size=n,
        eval_every=config.eval_every,
        num_members=num_members,
        snapshot_fn=lambda s: s.params,
        steps_per_chunk=_chunk_size(num_steps, config.eval_every),
        progress=progress,
    )
    final = jax.device_get(result.state.params)  # numpy from here on: no eager op compiles
    averaged = jax.device_get(jr.averaged_params(result.state.opt_state))
    wall = time.perf_counter() - t0
    h = result.history
    return Trained(
        final=final,
        best=jax.device_get(result.best),
        best_step=np.asarray(result.best_num_steps),
        step=np.asarray(h.step),
        train_loss=np.asarray(h.train_loss),
        val_loss=np.asarray(h.val_loss),
        val_acc=np.asarray(h.metric),
        num_steps=int(result.num_steps),
        wall_s=wall,
        averaged=averaged,
        swa_start=swa_start,
    )


# --------------------------------------------------------------------------- metrics


def _flat_kernels(params: PyTree) -> list[np.ndarray]:
    return [np.asarray(params[k]["kernel"]) for k in sorted(params, key=lambda s: int(s[5:]))]


def weight_stats(params: PyTree) -> dict[str, float]:
    """Fraction of exactly-zero kernel entries; mean L2 norm of the units' incoming weights."""
    kernels = _flat_kernels(params)
    total = sum(k.size for k in kernels)
    zeros = sum(int(np.sum(k == 0.0)) for k in kernels)
    norms = np.concatenate([np.sqrt(np.sum(np.square(k.astype(np.float64)), axis=0)) for k in kernels])
    return {"zero_frac": zeros / total, "weight_norm": float(np.mean(norms))}


def saturation(params: PyTree, x: np.ndarray, threshold: float) -> float:
    """Fraction of hidden sigmoid activations within ``threshold`` of 0 or 1 (on inputs ``x``)."""
    acts = _hidden_sigmoid(params, jnp.asarray(x))
    flat = np.concatenate([np.asarray(a).ravel() for a in acts])
    return float(np.mean((flat < threshold) | (flat > 1.0 - threshold)))


@jax.jit
def _hidden_sigmoid(params, x):
    return hidden_activations(params, x, jnp.ones([], jnp.float32))


def member_probs(stacked: PyTree, sigmoid: jax.Array, x: jax.Array) -> np.ndarray:
    """Softmax probabilities of every member, ``(members, n, classes)``, one vmapped call."""
    return np.asarray(_probs(stacked, jnp.asarray(sigmoid), jnp.asarray(x)))


@jax.jit
def _probs(stacked, sigmoid, x):
    return jax.vmap(lambda p, s: jax.nn.softmax(apply(p, x, s), axis=-1))(stacked, sigmoid)


def classification_metrics(probs: Any, labels: Any, *, ece: bool = True) -> dict[str, float]:
    """Accuracy, mean negative log-likelihood and (with ``ece``) expected calibration error, 15 bins."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    correct = probs.argmax(-1) == labels
    nll = -np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)))
    out = {"acc": float(np.mean(correct)), "loss": float(nll)}
    if ece:
        out["ece"] = float(_ece(jnp.asarray(probs, jnp.float32), jnp.asarray(labels)))
    return out


@jax.jit
def _ece(probs, labels):
    return jr.expected_calibration_error(probs, labels, num_bins=15)
