"""Coupled vs decoupled weight decay with ``jr.add_penalty_grad``: where it sits in the chain decides.

* Before the optimizer (coupled, "L2 in the gradient"): Adam rescales the decay term together
  with the data gradient, so weights with large gradients are barely decayed.
* After ``scale_by_adam`` and before the learning rate (decoupled, AdamW): every weight decays by
  ``lr * wd * w`` per step. With ``jr.l2(wd / 2)`` (gradient ``wd * w``) this chain equals
  ``optax.adamw(lr, weight_decay=wd)``.

Run: ``python examples/weight_decay_chain.py``
"""

import jax
import jax.numpy as jnp
import optax

import jaxreg as jr


def train(opt, steps=200, seed=0):
    """Logistic regression on a toy problem; returns the final params."""
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (128, 8))
    y = (x @ jax.random.normal(kw, (8,)) > 0).astype(jnp.float32)
    params = {"kernel": jnp.zeros((8, 1)), "bias": jnp.zeros((1,))}

    def loss(p):
        logits = (x @ p["kernel"])[:, 0] + p["bias"][0]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))

    @jax.jit
    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
            u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def main(lr=0.05, wd=0.1, steps=200):
    decay = jr.l2(wd / 2, mask=jr.masks.kernels)  # gradient wd * w on kernels only
    coupled = optax.chain(jr.add_penalty_grad(decay), optax.scale_by_adam(), optax.scale_by_learning_rate(lr))
    decoupled = optax.chain(optax.scale_by_adam(), jr.add_penalty_grad(decay), optax.scale_by_learning_rate(lr))
    # optax's own AdamW, masked to kernels like the penalty.
    adamw = optax.adamw(lr, weight_decay=wd, mask=lambda p: {"kernel": True, "bias": False})
    p_coupled, p_decoupled, p_adamw = (train(opt, steps) for opt in (coupled, decoupled, adamw))
    diff_adamw = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p_decoupled), jax.tree.leaves(p_adamw))
    )
    diff_coupled = float(jnp.max(jnp.abs(p_coupled["kernel"] - p_adamw["kernel"])))
    out = {
        "decoupled_vs_adamw_max_abs_diff": diff_adamw,
        "coupled_vs_adamw_max_abs_diff": diff_coupled,
        "kernel_norm_coupled": float(jnp.linalg.norm(p_coupled["kernel"])),
        "kernel_norm_decoupled": float(jnp.linalg.norm(p_decoupled["kernel"])),
    }
    for k, v in out.items():
        print(f"{k}: {v:.3g}")
    return out


if __name__ == "__main__":
    main()
