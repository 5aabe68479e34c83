"""sam_gradient against the closed form on a quadratic and against optax.contrib.sam on a small model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

import jaxreg as jr

EPS32 = float(jnp.finfo(jnp.float32).eps)


def quadratic_setup():
    a = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]])
    b = jnp.array([1.0, -2.0, 0.5])
    w = {"u": jnp.array([0.3, -1.2]), "v": jnp.array([0.8])}

    def loss(p):
        x = jnp.concatenate([p["u"], p["v"]])
        return 0.5 * x @ a @ x - b @ x

    return np.asarray(a, np.float64), np.asarray(b, np.float64), w, loss


@pytest.mark.parametrize("adaptive", [False, True])
def test_quadratic_closed_form(adaptive):
    """L = x^T A x / 2 - b^T x: g = A x - b, eps = rho T^2 g / |T g|, grad = A (x + eps) - b (float64)."""
    a, b, w, loss = quadratic_setup()
    rho, eta = 0.3, 0.01
    got_loss, got = jax.jit(lambda p, r: jr.sam_gradient(loss, p, rho=r, adaptive=adaptive, eta=eta))(w, rho)
    x = np.concatenate([np.asarray(w["u"], np.float64), np.asarray(w["v"], np.float64)])
    g = a @ x - b
    t = np.abs(x) + eta if adaptive else np.ones_like(x)
    eps = rho * t**2 * g / np.linalg.norm(t * g)
    expected = a @ (x + eps) - b
    # float32 matrix-vector products of 3 terms of magnitude <= |A| |x|: a few ulps of ~10
    tol = 16 * EPS32 * float(np.abs(a).sum(1).max() * np.abs(x + eps).max() + np.abs(b).max())
    np.testing.assert_allclose(np.concatenate([got["u"], got["v"]]), expected, atol=tol, rtol=0)
    np.testing.assert_allclose(float(got_loss), 0.5 * x @ a @ x - b @ x, atol=tol, rtol=0)
    assert np.max(np.abs(expected - g)) > 100 * tol  # the perturbation matters


def test_mask_leaves_unselected_leaves_unperturbed():
    a, b, w, loss = quadratic_setup()
    rho = 0.3
    _, got = jr.sam_gradient(loss, w, rho=rho, mask={"u": True, "v": False})
    x = np.concatenate([np.asarray(w["u"], np.float64), np.asarray(w["v"], np.float64)])
    g = a @ x - b
    eps = np.zeros(3)
    eps[:2] = rho * g[:2] / np.linalg.norm(g[:2])
    np.testing.assert_allclose(np.concatenate([got["u"], got["v"]]), a @ (x + eps) - b, atol=1e-5, rtol=0)


def test_matches_optax_contrib_sam_on_a_small_model():
    """One outer step of optax.contrib.sam (opaque mode, normalized-sgd adversary of radius rho) moves
    the params by -lr times the gradient at the SAM point: the same as sgd on sam_gradient."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (16, 4))
    y = jax.random.normal(k2, (16,))
    params = {"w": jax.random.normal(k3, (4,)) * 0.5, "b": jnp.zeros([])}

    def loss(p):
        return jnp.mean(jnp.square(jnp.tanh(x @ p["w"] + p["b"]) - y))

    lr, rho = 0.1, 0.05
    sam = optax.contrib.sam(
        optax.sgd(lr), optax.chain(optax.contrib.normalize(), optax.sgd(rho)), sync_period=2, opaque_mode=True
    )
    g0 = jax.grad(loss)(params)
    updates, _ = sam.update(g0, sam.init(params), params, grad_fn=lambda p, _: jax.grad(loss)(p))
    _, ours = jr.sam_gradient(loss, params, rho=rho)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -lr * g, ours), atol=1e-6, rtol=1e-5)


def test_rho_is_traced_and_a_sweep_is_a_vmap():
    _, _, w, loss = quadratic_setup()

    traces = []

    @jax.jit
    def sweep(rhos):
        traces.append(1)
        return jax.vmap(lambda r: jr.sam_gradient(loss, w, rho=r)[1])(rhos)

    rhos = jnp.array([0.0, 0.1, 0.5])
    out = sweep(rhos)
    for i, r in enumerate(rhos.tolist()):
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], out), jr.sam_gradient(loss, w, rho=r)[1], atol=1e-6
        )
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], out), jax.grad(loss)(w), atol=1e-6)  # rho = 0: plain
    sweep(rhos + 0.1)
    assert len(traces) == 1, f"retraced {len(traces)} times"


def test_zero_gradient_gives_no_perturbation():
    loss, g = jr.sam_gradient(lambda w: jnp.sum(jnp.square(w)), jnp.zeros(3), rho=1.0)
    assert float(loss) == 0.0 and np.all(np.asarray(g) == 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": -0.1}, r"sam_gradient: rho must be finite and >= 0, got rho = -0\.1"),
        ({"rho": 0.1, "eta": -1.0}, r"sam_gradient: eta must be finite and >= 0, got eta = -1\.0"),
        # one radius per call (a sweep is a vmap): an array of the params' shape would silently
        # give each coordinate its own radius
        ({"rho": jnp.array([0.1, 0.2])}, r"sam_gradient: rho must be a scalar, got rho\.shape = \(2,\)"),
        ({"rho": jnp.array([[0.1]])}, r"sam_gradient: rho must be a scalar, got rho\.shape = \(1, 1\)"),
        ({"rho": 0.1, "mask": {"b": True}}, r"sam_gradient: mask does not match the structure of the params"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jr.sam_gradient(lambda w: jnp.sum(w), jnp.ones(2), **kwargs)


def test_a_loss_that_is_not_a_scalar_is_refused_by_name():
    with pytest.raises(
        ValueError, match=r"^sam_gradient: loss_fn must return a scalar loss, got an output of shape \(2,\)"
    ):
        jr.sam_gradient(lambda w: 2.0 * w, jnp.ones(2), rho=0.1)


def test_has_aux_returns_the_aux_at_params_and_the_same_gradient():
    """With has_aux the gradient is the plain loss's SAM gradient (closed form w (1 + rho/|w|) for
    |w|²/2) and aux comes from the evaluation at params, as jax.value_and_grad(has_aux=True)."""
    w = jnp.array([3.0, 4.0])
    (loss, aux), g = jr.sam_gradient(lambda v: (0.5 * jnp.sum(v**2), {"w_seen": v}), w, rho=0.5, has_aux=True)
    np.testing.assert_allclose(g, np.array([3.0, 4.0]) * (1 + 0.5 / 5.0), rtol=4 * EPS32)
    np.testing.assert_array_equal(aux["w_seen"], w)
    assert float(loss) == 12.5


def test_an_output_that_does_not_match_has_aux_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^sam_gradient: loss_fn returned a tuple of 2; pass has_aux=True"):
        jr.sam_gradient(lambda v: (jnp.sum(v), v), jnp.ones(2), rho=0.1)
    with pytest.raises(ValueError, match=r"^sam_gradient: with has_aux=True loss_fn must return \(loss, aux\)"):
        jr.sam_gradient(lambda v: jnp.sum(v), jnp.ones(2), rho=0.1, has_aux=True)


def test_integer_leaves_are_not_perturbed_and_get_a_float0_gradient():
    # As jax.grad(..., allow_int=True): the float leaves' gradient is SAM's, the counter's float0.
    params = {"w": jnp.array([3.0, 4.0]), "step": jnp.array(7, jnp.int32)}

    def loss(p):
        return 0.5 * jnp.sum(jnp.square(p["w"])) * p["step"].astype(jnp.float32)

    value, g = jr.sam_gradient(loss, params, rho=0.5)
    assert float(value) == 0.5 * 25.0 * 7
    # w + 0.5 * w / |w| = [3.3, 4.4], times the counter 7
    np.testing.assert_allclose(np.asarray(g["w"]), 7 * np.array([3.3, 4.4]), rtol=4 * np.finfo(np.float32).eps)
    assert g["step"].dtype == jax.dtypes.float0


def test_float64_params_are_perturbed_with_a_float64_radius():
    with jax.enable_x64(True):
        w = jnp.array([3.0, 4.0], jnp.float64)
        _, g = jr.sam_gradient(lambda v: 0.5 * jnp.sum(jnp.square(v)), w, rho=0.5)
    assert g.dtype == np.float64
    # 1.1 * w in float64 (a float32 factor would be off by ~1e-8)
    np.testing.assert_allclose(np.asarray(g), np.array([3.3, 4.4]), rtol=4 * np.finfo(np.float64).eps)


@pytest.mark.parametrize("grad_norm", [1e2, 1e6, 2e6])
def test_float16_params_under_a_loss_scale_get_the_full_radius(grad_norm):
    # With a loss scale the gradient norm is large and rho/||g|| is subnormal in float16 (zero at
    # 2e6): the perturbation rho T^2 g / ||T g|| is formed in float32 and only then rounded.
    n, rho, w0 = 10_000, 0.05, 1e-3
    scale = grad_norm / (w0 * np.sqrt(n))  # loss = scale/2 |w|^2: g = scale * w, ||g|| = grad_norm
    w = jnp.full((n,), w0, jnp.float16)
    _, g = jr.sam_gradient(lambda w: 0.5 * scale * jnp.sum(jnp.square(w.astype(jnp.float32))), w, rho=rho)
    eps = np.asarray(g, np.float64) / scale - np.float64(w[0])  # the gradient at w + eps is scale * (w + eps)
    expected = rho / np.sqrt(n)  # all entries equal; up to the float16 spacing near w + eps
    spacing = float(np.spacing(np.float16(w0 + expected)))
    np.testing.assert_allclose(eps, expected, atol=spacing + 1e-3 * expected)


def test_a_complex_leaf_is_refused_and_can_be_masked_out():
    """jax.grad of a real loss is the conjugate of the ascent direction at a complex leaf, and
    sum(g**2) is not its norm: SAM's perturbation was silently wrong there."""
    params = {"c": jnp.array([1.0 + 2.0j]), "w": jnp.array([3.0, 4.0])}

    def loss(p):
        return jnp.sum(jnp.abs(p["c"]) ** 2) + 0.5 * jnp.sum(p["w"] ** 2)

    with pytest.raises(ValueError, match=r"^sam_gradient: leaf 'c' is complex \(complex64\)"):
        jr.sam_gradient(loss, params, rho=0.5)
    _, g = jr.sam_gradient(loss, params, rho=0.5, mask={"c": False, "w": True})
    np.testing.assert_allclose(g["w"], [3.3, 4.4], rtol=4 * EPS32)  # w + 0.5 w / |w|, the real leaf alone
