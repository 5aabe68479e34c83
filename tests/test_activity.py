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


def test_one_path_selects_a_sown_activation_in_linen_and_in_nnx():
    # linen keeps sown values as a tuple under the name ("hidden_activations/0"); an nnx
    # Intermediate holds that tuple as its value ("h/value/0" before jaxreg drops "value").
    from flax import nnx

    class SownNnx(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(3, 4, use_bias=False, rngs=rngs)

        def __call__(self, x):
            h = self.hidden(x)
            self.sow(nnx.Intermediate, "hidden_activations", h)
            return jnp.sum(h)

    x = jax.random.normal(jax.random.key(5), (6, 3))
    model = SownNnx(nnx.Rngs(0))
    _, nnx_inter = nnx.capture(model, nnx.Intermediate)(x)
    params = {"hidden": {"kernel": model.hidden.kernel[...]}, "out": {"kernel": jnp.ones((4, 1))}}
    _, linen_state = Sown().apply({"params": params}, x, mutable=["intermediates"])
    h = np.asarray(x @ params["hidden"]["kernel"], np.float64)
    penalty = jr.l1(0.5, mask=jr.masks.by_path("hidden_activations/0"))
    for inter in (linen_state["intermediates"], nnx_inter):
        np.testing.assert_allclose(penalty(inter), 0.5 * np.abs(h).sum(), rtol=h.size * 1.2e-7)
