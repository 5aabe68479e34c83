"""Bagging with static shapes: each member trains on its own bootstrap resample of the digits,
expressed as per-example weights (``jr.ensemble.bootstrap_weights``), all members in one
compiled step (``jr.ensemble.train_step``), the steps one ``lax.scan``. Each member also gets its own L2 scale, so the
ensemble doubles as a sweep.

    python examples/bagged_ensemble.py
"""

from __future__ import annotations

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
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def main(members: int = 8, steps: int = 60, seed: int = 0) -> dict[str, float]:
    (x, y), (x_test, y_test) = load(seed)
    n = x.shape[0]
    k_init, k_boot = jax.random.split(jax.random.key(seed))
    params = jr.ensemble.init(init_mlp, k_init, members)
    weights = jr.ensemble.bootstrap_weights(k_boot, members, n)  # (members, n), rows sum to n
    hparams = {"l2": jr.l2(jnp.geomspace(1e-5, 1e-3, members), mask=jr.masks.kernels)}  # one scale per member

    def loss_fn(p, w, rng, h):
        del rng
        nll = optax.softmax_cross_entropy_with_integer_labels(apply_mlp(p, x), y)
        return jnp.sum(w * nll) / n + h["l2"](p)  # full batch, weighted by bootstrap counts

    opt = optax.adam(1e-2)
    step = jr.ensemble.train_step(loss_fn, opt, batch_axis=0)

    @jax.jit
    def train(params, key):
        def body(carry, t):
            params, opt_state = carry
            params, opt_state, _ = step(params, opt_state, weights, jax.random.fold_in(key, t), hparams)
            return (params, opt_state), None

        (params, _), _ = jax.lax.scan(body, (params, jax.vmap(opt.init)(params)), jnp.arange(steps))
        return params

    params = train(params, jax.random.key(seed + 1))

    pred = jr.ensemble.predict(apply_mlp, params, x_test)
    member_logits = jr.ensemble.map(lambda p: apply_mlp(p, x_test))(params)
    member_acc = jnp.mean(jnp.argmax(member_logits, -1) == y_test[None], axis=1)
    ens_acc = float(jnp.mean(jnp.argmax(pred.mean, -1) == y_test))
    left_out = float(jnp.mean(weights == 0))
    print(f"out-of-bag fraction per member: {left_out:.3f} (expected about 0.368)")
    print(f"member accuracies: {[round(float(a), 3) for a in member_acc]}")
    print(f"accuracy bagged ensemble of {members}: {ens_acc:.3f}")
    return {
        "ensemble_accuracy": ens_acc,
        "member_accuracies": [float(a) for a in member_acc],
        "mean_member_accuracy": float(member_acc.mean()),
        "left_out": left_out,
    }


if __name__ == "__main__":
    main()
