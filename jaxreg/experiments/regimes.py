"""Regimes as values of array leaves, and the one vmapped, jitted program that trains them all.

A *member* is one network with its own hyperparameters, carried as array leaves of
:class:`Hyper`: coupled L2 scale, L1 scale (proximal step), decoupled weight decay, max-norm
bound, dropout rate, hidden activation (ReLU or sigmoid) and a bootstrap weight per training
example. Every member runs the same optimizer chain

.. code-block:: python

    optax.chain(optax.scale_by_adam(),
                jr.add_penalty_grad(jr.l2(wd / 2, mask=kernels)),   # decoupled (AdamW)
                optax.scale_by_learning_rate(lr),
                jr.proximal(jr.l1(l1, mask=kernels), lr),           # exact zeros
                jr.project(jr.max_norm(c, mask=kernels)))           # per-unit bound

on the loss ``jr.regularize(weighted_cross_entropy, jr.l2(l2, mask=kernels))``, with dropout
on the hidden units at the member's rate. A regime that turns a regularizer off sets its leaf
to zero (or the max-norm bound to a huge value), so all regimes are one compiled program:
``jr.fit``'s ``lax.scan`` over steps, ``vmap``-ped over members, the same compiled chunk called
once per progress-bar tick. Training is full batch (the training split
is deliberately small), so the only randomness is the initialization, the dropout masks and
the bootstrap resamples, all drawn from the seed.
"""

from __future__ import annotations

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
    "NO_MAX_NORM",
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


def stack_hypers(members: list[Member], seed: int, num_train: int) -> Hyper:
    """Stacks the members' leaves on a leading member axis."""
    k_boot = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    num_boot = max([m.bootstrap for m in members] + [-1]) + 1
    boot = jr.ensemble.bootstrap_weights(k_boot, num_boot, num_train) if num_boot else None
    weights = [jnp.ones(num_train, jnp.float32) if m.bootstrap < 0 else boot[m.bootstrap] for m in members]

    def f(attr: str) -> jax.Array:
        return jnp.asarray([float(getattr(m, attr)) for m in members], jnp.float32)

    return Hyper(
        l2=f("l2"),
        l1=f("l1"),
        wd=f("wd"),
        max_norm=f("max_norm"),
        dropout=f("dropout"),
        sigmoid=f("sigmoid"),
        weights=jnp.stack(weights),
        init=jnp.asarray([m.init for m in members], jnp.int32),
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


def _optimizer(h: Hyper, lr: float) -> optax.GradientTransformation:
    kernels = jr.masks.kernels
    return optax.chain(
        optax.scale_by_adam(),
        jr.add_penalty_grad(jr.l2(h.wd / 2.0, mask=kernels)),
        optax.scale_by_learning_rate(lr),
        jr.proximal(jr.l1(h.l1, mask=kernels), lr),
        jr.project(jr.max_norm(h.max_norm, mask=kernels)),
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


def _chunk_size(num_steps: int, eval_every: int, target_chunks: int = 20) -> int:
    num_evals = num_steps // eval_every
    want = max(1, round(num_evals / target_chunks))
    divisors = [d for d in range(1, num_evals + 1) if num_evals % d == 0]
    return eval_every * min(divisors, key=lambda d: (abs(d - want), d))


def num_steps_for(config: Config) -> int:
    """``config.steps`` rounded up to a multiple of ``eval_every``."""
    return max(1, -(-config.steps // config.eval_every)) * config.eval_every


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
    ``echo`` (e.g. ``print``) receives a status line before the program compiles.
    """
    x_tr = jnp.asarray(data["x_train"])
    y_tr = jnp.asarray(data["y_train"])
    n = int(x_tr.shape[0])
    sizes = (int(x_tr.shape[1]), *config.hidden, num_classes)
    lr = config.learning_rate
    num_members = int(hyper.l2.shape[0])
    num_steps = num_steps_for(config)

    def data_loss(params, h: Hyper, x, y, weights, rng):
        logits = apply(params, x, h.sigmoid, h.dropout, rng)
        return jnp.sum(weights * cross_entropy(logits, y)) / jnp.sum(weights)

    objective = jax.value_and_grad(
        lambda params, h, *args: jr.regularize(data_loss, jr.l2(h.l2, mask=jr.masks.kernels))(params, h, *args),
        has_aux=True,
    )

    def step_fn(state: TrainState, batch, rng):
        x, y, idx = batch
        h = state.hyper
        (_, terms), grads = objective(state.params, h, x, y, h.weights[idx], rng)
        with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
            updates, opt_state = _optimizer(h, lr).update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, h), terms.loss

    def eval_fn(state: TrainState, val):
        x, y = val
        logits = apply(state.params, x, state.hyper.sigmoid)
        return jnp.mean(cross_entropy(logits, y)), jnp.mean(jnp.argmax(logits, -1) == y)

    inits = [init_params(seed, int(i), sizes) for i in np.asarray(hyper.init)]
    params0 = jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *inits)
    state = jax.jit(jax.vmap(lambda p, h: TrainState(p, _optimizer(h, lr).init(p), h)))(params0, hyper)
    if echo is not None:
        echo(f"compiling the training program ({num_members} members, {num_steps} steps)…")
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
