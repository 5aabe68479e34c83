"""Activity regularization: an L1 penalty on hidden activations that a flax linen model ``sow``s.

The model records its hidden activations with ``self.sow("intermediates", ...)``; the training
loss asks ``apply`` for that collection (``mutable=["intermediates"]``) and adds
``jr.l1(scale)`` of it, the same penalty that acts on weights elsewhere. The result is a sparse
representation: most ReLU units are exactly 0 on a given input.

Run: ``python examples/activity_sow.py``
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr
from jaxreg import data


class MLP(nn.Module):
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden)(x))
        self.sow("intermediates", "hidden", h)
        return nn.Dense(10)(h)


def train(scale, split, steps=150, seed=0):
    model = MLP()
    x, y = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    params = model.init(jax.random.key(seed), x[:1])["params"]
    penalty = jr.l1(scale)
    opt = optax.adam(3e-3)

    def loss_fn(p):
        logits, state = model.apply({"params": p}, x, mutable=["intermediates"])
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        acts = state["intermediates"]
        return ce + penalty(acts) / x.shape[0]  # mean over examples of scale * sum|h|

    @jax.jit
    def run(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam computes float ** int32
                u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0]

    params = run(params)
    logits, state = model.apply({"params": params}, jnp.asarray(split.x_test), mutable=["intermediates"])
    (h,) = state["intermediates"]["hidden"]
    acc = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(split.y_test)))
    return {"mean_activation": float(jnp.mean(h)), "zero_activations": float(jnp.mean(h == 0.0)), "test_acc": acc}


def main(scale=0.05, steps=150):
    split = data.load("digits", seed=0, train_size=300, val_size=300)
    plain, sparse = train(0.0, split, steps), train(scale, split, steps)
    out = {f"plain_{k}": v for k, v in plain.items()} | {f"l1_{k}": v for k, v in sparse.items()}
    for k, v in out.items():
        print(f"{k}: {np.round(v, 4)}")
    return out


if __name__ == "__main__":
    main()
