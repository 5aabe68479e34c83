"""Tests of jr.spectral_norm, jr.spectral_penalty, jr.orthogonal, jr.orthogonalize and stateful jr.project.

References: numpy.linalg.svd in float64, the closed form of power iteration on a matrix with a
known spectrum, scipy.linalg.polar, keras's documented OrthogonalRegularizer rule.
"""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import jaxreg as jr
from jaxreg.spectral import power_iteration

EPS32 = float(np.finfo(np.float32).eps)


def _known_spectrum(m, n, s, seed=0):
    """M = U diag(s) V^T with random orthonormal U (m x r), V (n x r), in float64."""
    rng = np.random.default_rng(seed)
    r = len(s)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (u * np.asarray(s, np.float64)) @ v.T, u, v


def _sigma_max(w):
    w = np.asarray(w, np.float64)
    return np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)[0]


# ---------------------------------------------------------------------------------------------
# power iteration


@pytest.mark.parametrize("k", [0, 1, 3, 8])
def test_power_iteration_matches_its_closed_form_on_a_known_spectrum(k):
    s = np.array([3.0, 2.4, 1.0, 0.3, 0.1])  # full rank: V spans R^5, so c = V^T v0 is all of v0
    m, _, v = _known_spectrum(7, 5, s)
    v0 = np.random.default_rng(1).standard_normal(5)
    sigma, _, v_k = power_iteration(jnp.asarray(m, jnp.float32), jnp.asarray(v0, jnp.float32), k)
    # v_k is (M^T M)^k v0 normalized: with c = V^T v0, sigma_k^2 = sum c^2 s^(4k+2) / sum c^2 s^(4k).
    c2 = (v.T @ v0) ** 2
    expected = np.sqrt(np.sum(c2 * s ** (4 * k + 2)) / np.sum(c2 * s ** (4 * k)))
    # float32 matrix-vector products of length <= 7 with unit vectors: a few eps of sigma per iteration.
    np.testing.assert_allclose(float(sigma), expected, rtol=8 * EPS32 * (k + 1))
    assert float(sigma) <= s[0] * (1 + 4 * EPS32)  # a lower bound
    ref_v = v @ (c2**0.5 * np.sign(v.T @ v0) * s ** (2 * k))
    ref_v /= np.linalg.norm(ref_v)
    np.testing.assert_allclose(np.asarray(v_k), ref_v, atol=16 * EPS32 * (k + 1))


def test_power_iteration_converges_geometrically():
    s = np.array([2.0, 1.0, 0.5, 0.25])  # sigma_2 / sigma_1 = 1/2
    m, _, _ = _known_spectrum(6, 4, s, seed=2)
    v0 = jnp.asarray(np.random.default_rng(3).standard_normal(4), jnp.float32)
    errors = [s[0] - float(power_iteration(jnp.asarray(m, jnp.float32), v0, k)[0]) for k in range(6)]
    assert all(e >= -4 * EPS32 * s[0] for e in errors), errors  # a lower bound
    # sigma_1 - sigma_hat_k ~ (sigma_2 / sigma_1)^(4k) / 2 once the top direction dominates (k >= 1):
    # each iteration divides the error by about 16; allow 8 (plus the float32 floor).
    for a, b in itertools.pairwise(errors[1:]):
        assert b <= a / 8.0 + 4 * EPS32 * s[0], errors
    assert errors[-1] <= 1e-4 * s[0], errors


@pytest.mark.parametrize(
    "matrix, v", [(jnp.ones((3, 4)), jnp.ones(3)), (jnp.ones(4), jnp.ones(4)), (jnp.ones((2, 3, 4)), jnp.ones(4))]
)
def test_power_iteration_refuses_shapes_that_are_not_a_matrix_and_its_right_vector(matrix, v):
    with pytest.raises(ValueError, match=r"^power_iteration: matrix must be \(m, n\) and v \(n,\), got matrix.shape"):
        power_iteration(matrix, v)


# ---------------------------------------------------------------------------------------------
# spectral_norm


def _params():
    rng = np.random.default_rng(4)
    return {
        "dense": {"kernel": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32), "bias": jnp.ones(5)},
        "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)},
        "small": {"kernel": jnp.asarray(0.01 * rng.standard_normal((4, 4)), jnp.float32)},
    }


def test_spectral_norm_direct_call_caps_sigma_exactly():
    params, c = _params(), 1.5
    out = jax.jit(jr.spectral_norm(c))(params)
    for name in ("dense", "conv"):
        w, new = np.asarray(params[name]["kernel"], np.float64), np.asarray(out[name]["kernel"], np.float64)
        sigma = _sigma_max(w)
        assert sigma > c
        # (h, w, in, out) read as (h*w*in, out); the result is W c / sigma. float32 SVD: relative
        # error ~ eps * sqrt(size), taken as 64 eps.
        np.testing.assert_allclose(new, w * c / sigma, rtol=64 * EPS32)
        np.testing.assert_allclose(_sigma_max(new), c, rtol=64 * EPS32)
    # Within the bound: unchanged; biases (ndim 1) are not selected by default.
    np.testing.assert_array_equal(np.asarray(out["small"]["kernel"]), np.asarray(params["small"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(out["dense"]["bias"]), 1.0)


def test_spectral_norm_in_project_keeps_power_iteration_state():
    s = np.array([4.0, 1.0, 0.5])
    m, _, v_true = _known_spectrum(6, 4, s, seed=5)
    params = {"w": jnp.asarray(m, jnp.float32)}
    c = 2.0
    opt = optax.chain(optax.sgd(0.1), jr.project(jr.spectral_norm(c)))
    state = opt.init(params)
    v0 = np.asarray(state[1].constraint.v["w"], np.float64)
    assert v0.shape == (4,)

    @jax.jit
    def step(p, st):
        updates, st = opt.update(jax.tree.map(jnp.zeros_like, p), st, p)
        return optax.apply_updates(p, updates), st

    p1, state = step(params, state)
    # One iteration from the stored start: v1 = M^T M v0 / |.|, sigma1 = |M v1| (numpy, float64).
    v1 = m.T @ (m @ v0)
    v1 /= np.linalg.norm(v1)
    sigma1 = np.linalg.norm(m @ v1)
    np.testing.assert_allclose(np.asarray(p1["w"]), m * min(1.0, c / sigma1), rtol=16 * EPS32, atol=16 * EPS32)
    np.testing.assert_allclose(np.asarray(state[1].constraint.v["w"]), v1, atol=16 * EPS32)
    for _ in range(10):
        p1, state = step(p1, state)
    # The vectors converge to the top right singular vector, and the bound holds.
    v = np.asarray(state[1].constraint.v["w"], np.float64)
    assert abs(v @ v_true[:, 0]) >= 1 - 1e-5
    np.testing.assert_allclose(_sigma_max(p1["w"]), c, rtol=1e-5)


def test_spectral_norm_recovers_after_a_zero_kernel():
    # A zero-initialized kernel under a warmup from a learning rate of 0: its first update is 0,
    # M v = 0, and the stored vector became 0 for good (the estimate stayed 0: sigma_max 325 after
    # 20 steps for a bound of 1). The vector restarts from init's and the bound holds.
    params = {"k": jnp.zeros((4, 3))}
    opt = optax.chain(optax.sgd(optax.linear_schedule(0.0, 1.0, 10)), jr.project(jr.spectral_norm(1.0)))
    state = opt.init(params)
    grads = {"k": -jnp.arange(12.0).reshape(4, 3)}
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    v = state[1].constraint.v["k"]  # after the zero kernel's step: the vector it started from, not 0
    np.testing.assert_array_equal(
        np.asarray(v), np.asarray(jr.spectral_norm(1.0).init({"k": jnp.zeros((4, 3))}).v["k"])
    )
    for _ in range(19):
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    sigma = np.linalg.norm(np.asarray(params["k"], np.float64), 2)
    # The kernel stays along the gradient, whose sigma_2 / sigma_1 is 0.05: the estimate (a Rayleigh
    # quotient, error ~ (sigma_2 / sigma_1)^4k) is at the bound within float32 rounding.
    assert sigma <= 1.0 + 64 * EPS32, sigma


def test_spectral_norm_max_value_sweep_is_vmap_without_retrace():
    params = _params()
    cs = jnp.array([0.5, 1.0, 2.0], jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def project(constraint, p):
        return constraint(p)

    for c in cs.tolist():
        out = project(jr.spectral_norm(c), params)  # the bound is a leaf: no retrace
        np.testing.assert_allclose(_sigma_max(out["conv"]["kernel"]), c, rtol=64 * EPS32)
    swept = jax.vmap(lambda c: jr.spectral_norm(c)(params))(cs)
    for i, c in enumerate(cs.tolist()):
        np.testing.assert_allclose(_sigma_max(swept["dense"]["kernel"][i]), c, rtol=64 * EPS32)

    # The stateful form under vmap: one optimizer per bound, vmapped init and update.
    def run(c):
        opt = optax.chain(optax.sgd(0.0), jr.project(jr.spectral_norm(c, num_iters=30)))
        st = opt.init(params)
        updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), st, params)
        return optax.apply_updates(params, updates)

    out = jax.jit(jax.vmap(run))(cs)
    for i, c in enumerate(cs.tolist()):
        # 30 iterations on a random 8 x 5 matrix: sigma within 1e-3 of the exact value.
        np.testing.assert_allclose(_sigma_max(out["dense"]["kernel"][i]), c, rtol=1e-3)


@pytest.mark.parametrize("make", [jr.spectral_norm, jr.spectral_penalty, jr.orthogonal])
def test_a_python_float_and_a_float32_array_share_the_compiled_program(make):
    traces = []

    @jax.jit
    def apply(reg, p):
        traces.append(1)
        return reg(p)

    p = {"w": jnp.ones((3, 2))}
    for value in (1.0, jnp.float32(2.0), jnp.asarray(3.0, jnp.float32), 4.0):
        apply(make(value), p)
    assert len(traces) == 1


def test_spectral_norm_bfloat16_kernel_strict_promotion():
    w = jnp.asarray(np.diag([3.0, 1.0]), jnp.bfloat16)
    out = jr.spectral_norm(1.0)({"w": w})
    assert out["w"].dtype == jnp.bfloat16
    assert abs(float(out["w"][0, 0]) - 1.0) <= 2**-7  # bfloat16 has 8 significant bits


# ---------------------------------------------------------------------------------------------
# spectral_penalty


def test_spectral_penalty_value_and_gradient_vs_svd():
    s = np.array([3.0, 1.5, 0.2])  # ratio 1/2: after 30 iterations the estimate is exact in float32
    m, u, v = _known_spectrum(5, 4, s, seed=6)
    pen = jr.spectral_penalty(0.25, num_iters=30)
    w = {"w": jnp.asarray(m, jnp.float32), "b": jnp.ones(4)}
    np.testing.assert_allclose(float(pen(w)), 0.25 * s[0] ** 2, rtol=16 * EPS32)
    g = jax.grad(pen)(w)
    # d sigma_max / dM = u1 v1^T (simple top singular value): grad = 2 scale sigma u1 v1^T.
    np.testing.assert_allclose(np.asarray(g["w"]), 2 * 0.25 * s[0] * np.outer(u[:, 0], v[:, 0]), atol=64 * EPS32)
    np.testing.assert_array_equal(np.asarray(g["b"]), 0.0)


def test_spectral_penalty_vectors_get_no_gradient():
    # With one iteration the estimate is far from converged; with stop_gradient on u and v the
    # gradient is 2 scale sigma_hat u v^T for the iteration's own u, v (Miyato et al. 2018),
    # not the derivative through the iteration.
    m, _, _ = _known_spectrum(4, 3, [2.0, 1.9, 1.0], seed=7)
    w = jnp.asarray(m, jnp.float32)
    pen = jr.spectral_penalty(1.0, num_iters=1)
    v0 = np.asarray(jr.spectral.SpectralNorm(jnp.float32(1.0)).init({"w": w}).v["w"], np.float64)
    v1 = m.T @ (m @ v0)
    v1 /= np.linalg.norm(v1)
    u1 = m @ v1
    sigma = np.linalg.norm(u1)
    u1 /= sigma
    np.testing.assert_allclose(float(pen({"w": w})), sigma**2, rtol=16 * EPS32)
    np.testing.assert_allclose(np.asarray(jax.grad(pen)({"w": w})["w"]), 2 * sigma * np.outer(u1, v1), atol=64 * EPS32)


def test_spectral_penalty_scale_sweep_and_prox_error():
    w = {"w": jnp.asarray(np.diag([2.0, 1.0]), jnp.float32)}
    scales = jnp.array([0.0, 1.0, 3.0], jnp.float32)
    vals = jax.jit(jax.vmap(lambda sc: jr.spectral_penalty(sc)(w)))(scales)
    np.testing.assert_allclose(np.asarray(vals), np.asarray(scales) * 4.0, rtol=16 * EPS32)
    with pytest.raises(NotImplementedError, match=r"spectral_penalty.prox: this penalty has no cheap closed-form"):
        jr.spectral_penalty(1.0).prox(w, 0.1)


# ---------------------------------------------------------------------------------------------
# orthogonal penalty and orthogonalize


def _keras_orthogonal(factor, w, mode):
    """keras.regularizers.OrthogonalRegularizer as documented: factor times the mean |dot product|
    of the L2-normalized rows (columns), each pair once, self-products excluded."""
    w = np.asarray(w, np.float64)
    if mode == "rows":
        nrm = w / np.linalg.norm(w, axis=1, keepdims=True)
        g = nrm @ nrm.T
    else:
        nrm = w / np.linalg.norm(w, axis=0, keepdims=True)
        g = nrm.T @ nrm
    k = g.shape[0]
    return factor * 0.5 * np.sum(np.abs(g * (1 - np.eye(k)))) / (k * (k - 1) / 2)


@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_orthogonal_penalty_closed_form(mode):
    params = _params()
    pen = jr.orthogonal(0.3, mode=mode)
    total = 0.0
    for name in ("dense", "conv", "small"):
        w = np.asarray(params[name]["kernel"], np.float64)
        m = w.reshape(-1, w.shape[-1])
        g = m @ m.T if mode == "rows" else m.T @ m
        total += np.sum((g - np.eye(g.shape[0])) ** 2)
    # float32 Gram entries are sums of <= 36 products: relative error ~ 36 eps per entry.
    np.testing.assert_allclose(float(jax.jit(pen)(params)), 0.3 * total, rtol=64 * EPS32)
    # Gradient: d ||M M^T - I||^2 / dM = 4 (M M^T - I) M (rows), 4 M (M^T M - I) (columns).
    w = np.asarray(params["dense"]["kernel"], np.float64)
    ref = 4 * (w @ w.T - np.eye(8)) @ w if mode == "rows" else 4 * w @ (w.T @ w - np.eye(5))
    g = jax.grad(pen)(params)["dense"]["kernel"]
    np.testing.assert_allclose(np.asarray(g), 0.3 * ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_orthogonal_penalty_vs_keras_normalization():
    # Two unit rows at angle theta: keras gives factor * |cos theta|, this 2 * scale * cos^2 theta
    # (the diagonal of W W^T - I is 0 for unit rows, each off-diagonal entry counts twice).
    theta = 1.1
    w = np.array([[1.0, 0.0, 0.0], [np.cos(theta), np.sin(theta), 0.0]])
    ours = float(jr.orthogonal(0.7)({"w": jnp.asarray(w, jnp.float32)}))
    keras = _keras_orthogonal(0.7, w, "rows")
    np.testing.assert_allclose(keras, 0.7 * abs(np.cos(theta)), rtol=1e-12)
    np.testing.assert_allclose(ours, 2 * 0.7 * np.cos(theta) ** 2, rtol=16 * EPS32)
    # Scaling the rows changes this penalty, not keras's (which normalizes them first).
    assert _keras_orthogonal(0.7, 3 * w, "rows") == pytest.approx(keras, rel=1e-12)
    assert float(jr.orthogonal(0.7)({"w": jnp.asarray(3 * w, jnp.float32)})) > 10 * ours


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (3, 3, 2, 5)])
def test_orthogonalize_is_the_polar_factor(shape):
    rng = np.random.default_rng(8)
    w = rng.standard_normal(shape)
    m = w.reshape(-1, shape[-1])
    q = np.asarray(jax.jit(jr.orthogonalize())({"w": jnp.asarray(w, jnp.float32)})["w"], np.float64)
    polar, _ = scipy.linalg.polar(m)  # M = U P, U the nearest (semi-)orthogonal matrix
    # float32 SVD of a well-conditioned matrix: entries within ~ eps * cond * size.
    cond = np.linalg.cond(m)
    np.testing.assert_allclose(q.reshape(m.shape), polar, atol=32 * EPS32 * cond)
    gram = (
        q.reshape(m.shape).T @ q.reshape(m.shape)
        if m.shape[0] >= m.shape[1]
        else q.reshape(m.shape) @ q.reshape(m.shape).T
    )
    np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=32 * EPS32)


@pytest.mark.parametrize("case", ["random-tall", "random-wide", "2I", "diag(3,1,1)", "orthonormal-columns"])
def test_orthogonalize_gradient_matches_finite_differences_at_repeated_singular_values(case):
    # the polar factor is smooth at every full-rank matrix (orthogonal ones included, W =
    # orthogonalize(V) after a projection); differentiating through the SVD gave NaN there
    rng = np.random.default_rng(9)
    m = {
        "random-tall": rng.normal(size=(5, 3)),
        "random-wide": rng.normal(size=(3, 5)),
        "2I": 2 * np.eye(3),
        "diag(3,1,1)": np.diag([3.0, 1.0, 1.0]),
        "orthonormal-columns": np.linalg.qr(rng.normal(size=(5, 3)))[0],
    }[case]
    direction, weights = rng.normal(size=m.shape), rng.normal(size=m.shape)
    with jax.enable_x64(True):

        def f(x):
            return jnp.sum(jr.orthogonalize()({"w": x})["w"] * weights)

        grad = np.asarray(jax.grad(f)(jnp.asarray(m)))
        h = 1e-6  # central differences in float64: error ~h^2 + eps/h ~ 1e-10
        fd = (float(f(jnp.asarray(m + h * direction))) - float(f(jnp.asarray(m - h * direction)))) / (2 * h)
    assert np.all(np.isfinite(grad))
    assert float(np.sum(grad * direction)) == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_orthogonalize_with_project_and_sweeps():
    params = _params()
    opt = optax.chain(optax.sgd(0.1), jr.project(jr.orthogonalize(mask=jr.masks.by_path("dense/kernel"))))
    state = opt.init(params)
    assert isinstance(state[1], optax.EmptyState)  # stateless constraints keep an EmptyState
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(opt.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    w = np.asarray(new["dense"]["kernel"], np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(5), atol=32 * EPS32)
    np.testing.assert_allclose(
        np.asarray(new["conv"]["kernel"]), np.asarray(params["conv"]["kernel"] - 0.1), rtol=4 * EPS32, atol=4 * EPS32
    )
    # A sweep over the penalty's scale is a vmap.
    scales = jnp.array([0.5, 2.0], jnp.float32)
    vals = jax.vmap(lambda sc: jr.orthogonal(sc, mode="columns")(params))(scales)
    np.testing.assert_allclose(np.asarray(vals[1]), 4.0 * np.asarray(vals[0]), rtol=4 * EPS32)
    with pytest.raises(NotImplementedError, match=r"orthogonal.prox: this penalty has no cheap closed-form"):
        jr.orthogonal(1.0).prox(params, 0.1)


def test_orthogonalize_vmaps_over_members_and_penalties_compose():
    stacked = jax.random.normal(jax.random.key(9), (3, 5, 4))  # 3 ensemble members
    q = jax.jit(jax.vmap(jr.orthogonalize()))(stacked)
    for i in range(3):
        polar, _ = scipy.linalg.polar(np.asarray(stacked[i], np.float64))
        cond = np.linalg.cond(np.asarray(stacked[i], np.float64))
        np.testing.assert_allclose(np.asarray(q[i]), polar, atol=32 * EPS32 * cond)
    params = _params()
    total = jr.orthogonal(0.1) + 2.0 * jr.spectral_penalty(0.5, num_iters=30) + jr.l2(0.3)
    parts = jax.jit(lambda p: [jr.orthogonal(0.1)(p), jr.spectral_penalty(0.5, num_iters=30)(p), jr.l2(0.3)(p)])(params)
    expected = float(parts[0]) + 2.0 * float(parts[1]) + float(parts[2])
    np.testing.assert_allclose(float(jax.jit(total)(params)), expected, rtol=16 * EPS32)
    fn = jr.regularize(lambda p: jnp.zeros([]), jr.orthogonal(0.1))
    (value, terms), grads = jax.value_and_grad(fn, has_aux=True)(params)
    np.testing.assert_allclose(float(terms.penalty), float(jr.orthogonal(0.1)(params)), rtol=4 * EPS32)
    np.testing.assert_allclose(float(value), float(terms.penalty), rtol=4 * EPS32)
    chex.assert_trees_all_close(grads, jax.grad(jr.orthogonal(0.1))(params), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: one case per test

VEC = {"b": jnp.ones(3)}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jr.spectral_norm(0.0), r"spectral_norm: max_value must be finite and > 0, got max_value = 0.0"),
        (lambda: jr.spectral_norm(-1.0), r"spectral_norm: max_value must be finite and > 0, got max_value = -1.0"),
        (
            lambda: jr.spectral_norm(1.0, num_iters=0),
            r"spectral_norm: num_iters must be an int >= 1, got num_iters = 0",
        ),
        (lambda: jr.spectral_norm(1.0, num_iters=1.5), r"spectral_norm: num_iters must be an int >= 1"),
        (lambda: jr.spectral_norm(jnp.ones(2)), r"spectral_norm: max_value must be a scalar"),
        (
            lambda: jr.spectral_norm(1.0, mask={"b": True})(VEC),
            r"spectral_norm: leaf 'b' of shape \(3,\) is not a matrix",
        ),
        (lambda: jr.spectral_penalty(-0.1), r"spectral_penalty: scale must be finite and >= 0, got scale = -0.1"),
        (lambda: jr.spectral_penalty(1.0, num_iters=0), r"spectral_penalty: num_iters must be an int >= 1"),
        (lambda: jr.orthogonal(-1.0), r"orthogonal: scale must be finite and >= 0, got scale = -1.0"),
        (lambda: jr.orthogonal(1.0, mode="diag"), r"orthogonal: mode must be 'rows' or 'columns', got mode = 'diag'"),
        (lambda: jr.orthogonal(1.0, mask={"b": True})(VEC), r"orthogonal: leaf 'b' of shape \(3,\) is not a matrix"),
        (lambda: jr.orthogonalize(mask={"b": True})(VEC), r"orthogonalize: leaf 'b' of shape \(3,\) is not a matrix"),
        (lambda: jr.project(3.0), r"project: constraint must be a callable params -> params or an object with init"),
        (
            lambda: jr.spectral_norm(1.0).update({"w": jnp.eye(2)}, jr.spectral_norm(1.0).init({"v": jnp.eye(2)})),
            r"spectral_norm: the state holds vectors for \['v'\], the params select \['w'\]",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("make", [jr.orthogonal, jr.spectral_penalty])
def test_a_stacked_scale_applied_without_vmap_is_refused(make):
    w = {"k": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match=r"scale must be one number when the penalty is applied .*shape = \(2,\)"):
        make(jnp.ones(2))(w)  # a vector value, that jax.grad refuses
    swept = jax.vmap(lambda p: p(w))(make(jnp.array([1.0, 2.0])))
    np.testing.assert_allclose(np.asarray(swept), [float(make(1.0)(w)), float(make(2.0)(w))], rtol=1e-6)


@pytest.mark.parametrize("make", [jr.orthogonal, jr.spectral_penalty])
def test_value_follows_the_params_dtype_not_the_scales(make):
    # As every penalty: float32 params give a float32 value under x64 with a Python scale (it was
    # float64 and upcast the loss), and float64 params keep float64 with a float32 scale (it was
    # rounded to float32). The value check below tells float32 rounding (relative 6e-8) from float64.
    with jax.enable_x64(True):
        p32 = {"w": jnp.ones((3, 2), jnp.float32)}
        assert make(0.1)(p32).dtype == jnp.float32
        assert (make(0.1) + jr.l2(0.1))(p32).dtype == jnp.float32
        assert make(jnp.bfloat16(1.0))(p32).dtype == jnp.float32
        p64 = {"w": jnp.eye(3, dtype=jnp.float64) * (1 + 1e-3)}
        value = make(jnp.float32(1.0))(p64)
        assert value.dtype == jnp.float64
    if make is jr.orthogonal:  # ||W W^T - I||_F^2 = 3 ((1 + 1e-3)^2 - 1)^2 in float64
        assert float(value) == pytest.approx(3 * ((1 + 1e-3) ** 2 - 1) ** 2, rel=1e-10)
    else:  # sigma_max^2 of (1 + 1e-3) I, which power iteration reaches exactly
        assert float(value) == pytest.approx((1 + 1e-3) ** 2, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# zero-size kernels and flax nnx


def _orthogonal_reference(w, mode):
    m = np.asarray(w, np.float64).reshape(int(np.prod(w.shape[:-1])), w.shape[-1])
    g = m @ m.T if mode == "rows" else m.T @ m
    return float(np.sum((g - np.eye(g.shape[0])) ** 2))


@pytest.mark.parametrize("shape", [(3, 0), (2, 3, 0), (0, 3), (2, 0, 4)])
def test_zero_size_kernels(shape):
    """||M Mᵀ - I||² of an empty M is the identity's size (rows of a 3x0 M: 3); the projections
    leave an empty kernel empty, and project's state holds a vector of the last axis' size."""
    w = jnp.zeros(shape)
    for mode in ("rows", "columns"):
        assert float(jr.orthogonal(1.0, mode=mode)({"k": w})) == _orthogonal_reference(np.zeros(shape), mode)
    assert float(jr.spectral_penalty(1.0)({"k": w})) == 0.0
    assert jr.spectral_norm(1.0)({"k": w})["k"].shape == shape
    assert jr.orthogonalize()({"k": w})["k"].shape == shape
    params = {"k": w, "d": jnp.full((2, 2), 3.0)}
    tx = optax.chain(optax.sgd(0.1), jr.project(jr.spectral_norm(1.0)))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert new["k"].shape == shape
    np.testing.assert_allclose(_sigma_max(new["d"]), 1.0, rtol=1e-2)  # 6 -> 1 after one power iteration


def test_spectral_norm_state_inside_nnx_optimizer():
    """nnx.Optimizer inits on a State of Variables and updates on their arrays: the state's keys
    match both, and the kernels end capped at the exact largest singular value."""
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(3, 4, rngs=rngs)
            self.l2 = nnx.Linear(4, 2, rngs=rngs)

    model = MLP(nnx.Rngs(0))
    tx = optax.chain(optax.sgd(0.1), jr.project(jr.spectral_norm(0.1, num_iters=50)))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    for layer in (model.l1, model.l2):
        np.testing.assert_allclose(_sigma_max(layer.kernel[...]), 0.1, rtol=1e-4)


def test_complex_matrices_are_refused_by_name():
    """The power iterations and Gram matrices transpose without conjugating: orthogonal(1) of the
    unitary diag(j, 1) was 4, not 0."""
    w = {"k": jnp.diag(jnp.array([1j, 1.0], jnp.complex64))}
    for name, call in [
        ("orthogonal", lambda: jr.orthogonal(1.0)(w)),
        ("spectral_penalty", lambda: jr.spectral_penalty(1.0)(w)),
        ("spectral_norm", lambda: jr.spectral_norm(1.0)(w)),
        ("orthogonalize", lambda: jr.orthogonalize()(w)),
        ("spectral_norm", lambda: jr.project(jr.spectral_norm(1.0)).init(w)),
    ]:
        with pytest.raises(ValueError, match=rf"^{name}: leaf 'k' is complex \(complex64\)"):
            call()
    with pytest.raises(ValueError, match=r"^power_iteration: matrix is complex"):
        power_iteration(w["k"], jnp.ones(2))
