"""SWA and SAM on a digits MLP: test accuracy and calibration against plain training.

Three runs from the same initialization and batches (scikit-learn's 8x8 digits, a 64-64-10 MLP,
SGD with momentum): plain, SWA (``jr.swa`` last in the chain, evaluated on the average of the
snapshots of the second half), and SAM (``jr.sam_gradient`` feeding the same optimizer). Each run
is one ``lax.scan``. Prints ``name: value`` lines (accuracy and expected calibration error).

    python examples/swa_sam_digits.py            # fast default (seconds)
    python examples/swa_sam_digits.py --steps 3000
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import jaxreg as jr


def load(seed: int = 0):
    """The digits from ``jr.data.load`` (stratified 60/20/20), pixels scaled to [0, 1]: train, test."""
    s = jr.data.load("digits", seed=seed, standardize=False)
    return (jnp.asarray(s.x_train / 16.0), jnp.asarray(s.y_train)), (
        jnp.asarray(s.x_test / 16.0),
        jnp.asarray(s.y_test),
    )


def init_mlp(rng, sizes=(64, 64, 10)):
    keys = jax.random.split(rng, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def apply_mlp(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None])
    return x @ params[-1]["w"] + params[-1]["b"][None]


def loss_fn(params, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply_mlp(params, x), y))


def train(kind: str, params, data, *, steps: int, batch_size: int, lr: float, rho: float, seed: int):
    x, y = data
    tx = optax.sgd(lr, momentum=0.9)
    if kind == "swa":
        tx = optax.chain(tx, jr.swa(start=steps // 2, every=max(steps // 40, 1)))

    def step(carry, t):
        params, state = carry
        idx = jax.random.choice(jax.random.fold_in(jax.random.key(seed), t), x.shape[0], (batch_size,), replace=False)
        if kind == "sam":
            _, g = jr.sam_gradient(loss_fn, params, x[idx], y[idx], rho=rho)
        else:
            g = jax.grad(loss_fn)(params, x[idx], y[idx])
        updates, state = tx.update(g, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
    return jr.averaged_params(state) if kind == "swa" else params


def main(steps: int = 400, batch_size: int = 64, lr: float = 0.05, rho: float = 0.05, seed: int = 0) -> dict:
    train_data, (x_test, y_test) = load(seed)
    params = init_mlp(jax.random.key(seed))
    out = {}
    for kind in ("plain", "swa", "sam"):
        run = jax.jit(
            lambda p, d, kind=kind: train(kind, p, d, steps=steps, batch_size=batch_size, lr=lr, rho=rho, seed=seed)
        )
        trained = run(params, train_data)
        probs = jax.nn.softmax(apply_mlp(trained, x_test))
        out[f"{kind}_test_accuracy"] = float(jnp.mean(jnp.argmax(probs, -1) == y_test))
        out[f"{kind}_test_ece"] = float(jr.expected_calibration_error(probs, y_test))
        out[f"{kind}_test_nll"] = float(loss_fn(trained, x_test, y_test))
    for k, v in out.items():
        print(f"{k}: {v:.4f}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(steps=args.steps, rho=args.rho, seed=args.seed)
