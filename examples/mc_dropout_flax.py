"""MC-dropout and ensembles with flax: a linen model (``nn.Dropout`` with a ``"dropout"`` RNG
stream) and an nnx model (``nnx.Dropout`` given a key), both trained as a small ensemble with
``jr.ensemble.train_step`` (every member its own key and data order), then evaluated with
``jr.mc_dropout`` (member 0, many masks) and ``jr.ensemble.predict`` (all members, no dropout).

    python examples/mc_dropout_flax.py
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxreg as jr


class LinenMLP(nn.Module):
    hidden: int = 64
    rate: float = 0.3

    @nn.compact
    def __call__(self, x, deterministic: bool = False):
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.Dropout(self.rate, deterministic=deterministic)(x)  # draws from the "dropout" stream
        return nn.Dense(10)(x)


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, hidden: int = 64, rate: float = 0.3):
        self.l1 = nnx.Linear(64, hidden, rngs=rngs)
        self.drop = nnx.Dropout(rate)
        self.l2 = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x, rng=None):
        h = nnx.relu(self.l1(x))
        h = self.drop(h, rngs=rng, deterministic=rng is None)  # rng=None: no dropout
        return self.l2(h)


def load(seed: int = 0):
    """The digits from ``jr.data.load`` (stratified 60/20/20), pixels scaled to [0, 1]: train, test."""
    s = jr.data.load("digits", seed=seed, standardize=False)
    return (jnp.asarray(s.x_train / 16.0), jnp.asarray(s.y_train)), (
        jnp.asarray(s.x_test / 16.0),
        jnp.asarray(s.y_test),
    )


def train(apply_train, params, train_data, *, steps: int, batch_size: int = 128, seed: int = 0):
    """Trains every member of ``params`` (stacked) on its own data order with its own dropout keys."""
    x, y = train_data
    n_members = jr.ensemble.num_members(params)

    def loss_fn(p, batch, rng, hparams):
        del hparams
        xb, yb = batch
        return optax.softmax_cross_entropy_with_integer_labels(apply_train(p, xb, rng), yb).mean()

    opt = optax.adam(3e-3)
    member_step = jr.ensemble.train_step(loss_fn, opt, batch_axis=0)
    key = jax.random.key(seed)

    def step(carry, t):
        params, opt_state = carry
        k = jax.random.fold_in(key, t)
        idx = jr.ensemble.permutations(k, n_members, x.shape[0])[:, :batch_size]  # (members, batch)
        params, opt_state, _ = member_step(params, opt_state, (x[idx], y[idx]), jax.random.fold_in(k, 1))
        return (params, opt_state), None

    @jax.jit
    def run(params):
        (params, _), _ = jax.lax.scan(step, (params, jax.vmap(opt.init)(params)), jnp.arange(steps))
        return params

    return run(params)


def accuracy(logits, y) -> float:
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


def report(name, apply_stochastic, apply_deterministic, params, test_data, num_samples):
    x, y = test_data

    @jax.jit
    def evaluate(params, rng):
        member0 = jax.tree.map(lambda leaf: leaf[0], params)
        mc = jr.mc_dropout(apply_stochastic, member0, x, rng, num_samples)
        ens = jr.ensemble.predict(apply_deterministic, params, x)
        samples = jr.mc_dropout_samples(apply_stochastic, member0, x, rng, num_samples)  # same keys as mc
        return apply_deterministic(member0, x), mc, ens, jr.mutual_information(samples)

    logits0, mc, ens, bald = evaluate(params, jax.random.key(1))
    single = accuracy(logits0, y)
    print(f"accuracy {name} single member, no dropout: {single:.3f}")
    print(f"accuracy {name} mc_dropout ({num_samples} masks): {accuracy(mc.mean, y):.3f}")
    print(f"accuracy {name} ensemble.predict ({jr.ensemble.num_members(params)} members): {accuracy(ens.mean, y):.3f}")
    wrong = jnp.argmax(mc.mean, -1) != y
    if bool(wrong.any()) and bool((~wrong).any()):
        print(
            f"{name}: mean BALD on misclassified {float(bald[wrong].mean()):.4f} vs correct {float(bald[~wrong].mean()):.4f}"
        )
    return accuracy(mc.mean, y), accuracy(ens.mean, y)


def main(steps: int = 50, members: int = 3, num_samples: int = 8) -> dict[str, float]:
    train_data, test_data = load()
    results = {}

    # flax linen: dropout keys through the "dropout" RNG stream.
    model = LinenMLP()
    x0 = train_data[0][:1]
    params = jr.ensemble.init(lambda k: model.init(k, x0, deterministic=True), jax.random.key(10), members)
    params = train(lambda v, x, rng: model.apply(v, x, rngs={"dropout": rng}), params, train_data, steps=steps)
    results["linen_mc"], results["linen_ensemble"] = report(
        "linen",
        lambda v, x, rng: model.apply(v, x, rngs={"dropout": rng}),
        lambda v, x: model.apply(v, x, deterministic=True),
        params,
        test_data,
        num_samples,
    )

    # flax nnx: split into a static graphdef and a state pytree; the state is what gets stacked.
    graphdef, _ = nnx.split(NnxMLP(nnx.Rngs(0)))

    def apply_nnx(state, x, rng=None):
        return nnx.merge(graphdef, state)(x, rng)

    states = jr.ensemble.init(lambda k: nnx.split(NnxMLP(nnx.Rngs(k)))[1], jax.random.key(20), members)
    states = train(apply_nnx, states, train_data, steps=steps, seed=1)
    results["nnx_mc"], results["nnx_ensemble"] = report(
        "nnx", apply_nnx, lambda s, x: apply_nnx(s, x), states, test_data, num_samples
    )
    return results


if __name__ == "__main__":
    main()
