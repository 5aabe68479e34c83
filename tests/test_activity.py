"""Activity regularization: penalties on activations a flax linen model sows."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxreg as jr


class Sown(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4, use_bias=False, name="hidden")(x)
        self.sow("intermediates", "hidden_activations", h)
        return nn.Dense(1, use_bias=False, name="out")(h)


def _loss(params, x, y, penalty):
    out, state = Sown().apply({"params": params}, x, mutable=["intermediates"])
    return jnp.mean((out[:, 0] - y) ** 2) + penalty(state["intermediates"])


def test_l2_on_sown_activations_changes_the_gradient_by_the_closed_form():
    x = jax.random.normal(jax.random.key(0), (8, 3))
    y = jax.random.normal(jax.random.key(1), (8,))
    params = Sown().init(jax.random.key(2), x)["params"]
    s = 0.3
    g_reg = jax.grad(_loss)(params, x, y, jr.l2(s))
    g_plain = jax.grad(_loss)(params, x, y, jr.l2(0.0))
    # d/dW s * |x W|^2 = 2 s x^T x W; the output layer does not see the penalty.
    w = params["hidden"]["kernel"]
    np.testing.assert_allclose(
        g_reg["hidden"]["kernel"] - g_plain["hidden"]["kernel"], 2 * s * x.T @ x @ w, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(g_reg["out"]["kernel"], g_plain["out"]["kernel"], rtol=1e-6)


def test_l1_on_sown_activations_gradient_is_sign_pattern():
    x = jax.random.normal(jax.random.key(3), (5, 3))
    params = Sown().init(jax.random.key(4), x)["params"]
    s = 0.1
    g = jax.grad(lambda p: _loss(p, x, jnp.zeros(5), jr.l1(s)) - _loss(p, x, jnp.zeros(5), jr.l1(0.0)))(params)
    h = x @ params["hidden"]["kernel"]
    np.testing.assert_allclose(g["hidden"]["kernel"], s * x.T @ jnp.sign(h), rtol=1e-4, atol=1e-6)
