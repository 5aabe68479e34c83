"""A small variational autoencoder on scikit-learn digits: loss = reconstruction + ``kl_normal``.

The encoder outputs the mean and the log-std of a diagonal Gaussian over a 4-D latent code; a
reparameterized sample is decoded into Bernoulli pixel probabilities. The KL term
``jr.kl_normal(mean, log_std, parameterization="log_std")`` pulls the code toward N(0, I): it is
the regularizer that makes the latent space smooth enough to sample from.

Run: ``python examples/vae.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr

LATENT = 4


def dense(rng, n_in, n_out):
    w = rng.normal(size=(n_in, n_out)) * np.sqrt(1.0 / n_in)  # numpy: no eager XLA compiles
    return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros(n_out)}


def apply_dense(p, x):
    return x @ p["w"] + p["b"][None, :]


def encode(params, x):
    h = jnp.tanh(apply_dense(params["enc"], x))
    out = apply_dense(params["enc_out"], h)
    return out[:, :LATENT], out[:, LATENT:]  # mean, log-std


def decode(params, z):
    return apply_dense(params["dec_out"], jnp.tanh(apply_dense(params["dec"], z)))  # pixel logits


def loss_fn(params, x, key):
    """Per-example negative ELBO: Bernoulli reconstruction + KL(q(z|x) || N(0, I)), batch mean."""
    mean, log_std = encode(params, x)
    z = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    logits = decode(params, z)
    reconstruction = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x)) / x.shape[0]
    kl = jr.kl_normal(mean, log_std, parameterization="log_std") / x.shape[0]
    return reconstruction + kl, (reconstruction, kl)


def main(steps: int = 600, hidden: int = 64, seed: int = 0) -> dict[str, float]:
    s = jr.data.load("digits", seed=seed, standardize=False)
    x = jnp.asarray(np.concatenate([s.x_train, s.x_val, s.x_test]) / 16.0)  # all images, pixels in [0, 1]
    rng = np.random.default_rng(seed)
    params = {
        "enc": dense(rng, 64, hidden),
        "enc_out": dense(rng, hidden, 2 * LATENT),
        "dec": dense(rng, LATENT, hidden),
        "dec_out": dense(rng, hidden, 64),
    }
    opt = optax.adam(3e-3)

    @jax.jit
    def train(params, key):
        def step(carry, key):
            params, state = carry
            (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, key)
            updates, state = opt.update(grads, state)
            return (optax.apply_updates(params, updates), state), (loss, *parts)

        return jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))

    (params, _), (losses, recs, kls) = train(params, jax.random.key(seed))
    # Averages over the first and last 50 steps (each step sees a fresh latent sample).
    initial, final = float(jnp.mean(losses[:50])), float(jnp.mean(losses[-50:]))
    final_rec, final_kl = float(jnp.mean(recs[-50:])), float(jnp.mean(kls[-50:]))
    # Samples from the prior decode to digit-like images: mean pixel intensity close to the data's.
    samples = jax.nn.sigmoid(decode(params, jnp.asarray(rng.normal(size=(500, LATENT)), jnp.float32)))
    print(f"initial loss: {initial:.2f} nats per image")
    print(f"final loss: {final:.2f} nats per image")
    print(f"final reconstruction: {final_rec:.2f} nats per image")
    print(f"final kl: {final_kl:.2f} nats per image")
    print(f"mean pixel of prior samples: {float(samples.mean()):.3f} (data: {float(x.mean()):.3f})")
    return {"initial_loss": initial, "final_loss": final, "final_kl": final_kl}


if __name__ == "__main__":
    main()
