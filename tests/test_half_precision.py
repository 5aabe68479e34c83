"""Half precision: penalties, their gradients, prox operators and constraints on float16 and
bfloat16 leaves, against float64 numpy on the same (already rounded) values.

Reductions run in float32, so nothing overflows at float16's 65504; penalty values come back in
float32, prox results and projections in the leaf's dtype. Tolerances: a float32 sum of n terms
is within about n * eps32 of the float64 sum (relative to the sum of magnitudes); a result cast
back to a half dtype is within half an ulp of that dtype (eps / 2, relative).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr

HALF = [jnp.float16, jnp.bfloat16]
EPS32 = float(np.finfo(np.float32).eps)


def _eps(dtype):
    return float(jnp.finfo(dtype).eps)


def _leaf(dtype, shape=(300, 200), scale=200.0, seed=0):
    """Values whose squares and sums overflow float16 (max 65504), exactly representable in ``dtype``."""
    x = np.random.default_rng(seed).normal(scale=scale, size=shape)
    return jnp.asarray(x, dtype)


def _f64(x):
    return np.asarray(x.astype(jnp.float32), np.float64)


def _sum_tol(terms):
    return len(terms.reshape(-1)) * EPS32 * float(np.sum(np.abs(terms)))


@pytest.mark.parametrize("dtype", HALF)
def test_l2_value_does_not_overflow(dtype):
    w = _leaf(dtype)
    ref = 0.5 * np.sum(_f64(w) ** 2)
    value = jr.l2(0.5)({"w": w})
    assert value.dtype == jnp.float32 and np.isfinite(value)
    np.testing.assert_allclose(value, ref, atol=_sum_tol(0.5 * _f64(w) ** 2))


@pytest.mark.parametrize("dtype", HALF)
def test_l1_of_many_ones_is_finite_and_exact(dtype):
    w = jnp.ones(100_000, dtype)
    value = jr.l1(1.0)(w)
    assert value.dtype == jnp.float32
    assert float(value) == 100_000.0  # integers below 2**24 are exact in float32


@pytest.mark.parametrize("dtype", HALF)
def test_group_lasso_and_elastic_net_values(dtype):
    w = _leaf(dtype)
    rows = np.linalg.norm(_f64(w), axis=1)
    np.testing.assert_allclose(jr.group_lasso(1.0)(w), rows.sum(), atol=_sum_tol(_f64(w) ** 2))
    ref = 0.3 * np.sum(np.abs(_f64(w))) + 0.2 * np.sum(_f64(w) ** 2)
    np.testing.assert_allclose(jr.elastic_net(0.3, 0.2)(w), ref, atol=_sum_tol(0.2 * _f64(w) ** 2 + np.abs(_f64(w))))


@pytest.mark.parametrize("dtype", HALF)
def test_l2_center_in_half_precision(dtype):
    w, c = _leaf(dtype, seed=1), _leaf(dtype, seed=2)
    ref = np.sum((_f64(w) - _f64(c)) ** 2)
    np.testing.assert_allclose(jr.l2(1.0, center=c)(w), ref, atol=_sum_tol((_f64(w) - _f64(c)) ** 2))


@pytest.mark.parametrize("dtype", HALF)
def test_gradient_has_the_leaf_dtype_and_value(dtype):
    w = _leaf(dtype, shape=(40, 30), scale=3.0)
    g = jax.grad(jr.l2(0.5))(w)
    assert g.dtype == dtype
    # d/dw 0.5 * w**2 = w, rounded once to the half dtype.
    np.testing.assert_allclose(_f64(g), _f64(w), rtol=_eps(dtype))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(
    "penalty, reference",
    [
        (jr.l1(0.7), lambda v, t: np.sign(v) * np.maximum(np.abs(v) - 0.7 * t, 0.0)),
        (jr.l2(0.7), lambda v, t: v / (1.0 + 2.0 * 0.7 * t)),
        (jr.elastic_net(0.7, 0.3), lambda v, t: np.sign(v) * np.maximum(np.abs(v) - 0.7 * t, 0.0) / (1 + 0.6 * t)),
        (
            jr.group_lasso(50.0),
            lambda v, t: v * np.maximum(0.0, 1.0 - 50.0 * t / np.linalg.norm(v, axis=1, keepdims=True)),
        ),
    ],
    ids=["l1", "l2", "elastic_net", "group_lasso"],
)
def test_prox_in_half_precision_matches_float64(dtype, penalty, reference):
    w, t = _leaf(dtype), 0.5
    out = penalty.prox(w, t)
    assert out.dtype == dtype
    ref = reference(_f64(w), t)
    # One rounding to the half dtype, plus float32 arithmetic before it.
    np.testing.assert_allclose(_f64(out), ref, rtol=_eps(dtype), atol=_eps(dtype) * 1e-3 * np.max(np.abs(ref)))


@pytest.mark.parametrize("dtype", HALF)
def test_max_norm_on_large_half_kernel(dtype):
    w = _leaf(dtype)  # column norms near 200 * sqrt(300) = 3464: their squares overflow float16
    out = jr.max_norm(2.0)(w)
    assert out.dtype == dtype
    norms = np.linalg.norm(_f64(w), axis=0, keepdims=True)
    ref = _f64(w) * np.minimum(1.0, 2.0 / norms)
    np.testing.assert_allclose(_f64(out), ref, rtol=_eps(dtype), atol=_eps(dtype) * 1e-3)
    np.testing.assert_allclose(np.linalg.norm(_f64(out), axis=0), 2.0, rtol=4 * _eps(dtype))


@pytest.mark.parametrize("dtype", HALF)
def test_unit_norm_on_large_half_kernel(dtype):
    out = jr.unit_norm(axis=1)(_leaf(dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(np.linalg.norm(_f64(out), axis=1), 1.0, rtol=4 * _eps(dtype))


@pytest.mark.parametrize("dtype", HALF)
def test_proximal_and_project_transforms_keep_the_half_dtype(dtype):
    import optax

    params = {"w": _leaf(dtype, shape=(8, 4), scale=3.0)}
    updates = jax.tree.map(jnp.zeros_like, params)
    for tx in (jr.proximal(jr.l1(0.5), 1.0), jr.project(jr.max_norm(1.0)), jr.add_penalty_grad(jr.l2(0.5))):
        out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
        assert out["w"].dtype == dtype
        assert bool(jnp.all(jnp.isfinite(optax.apply_updates(params, out)["w"])))


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_hyperparameters_are_checked_as_numbers(dtype):
    # Valid half values pass the checks (numpy calls bfloat16 non-numeric) and mean what float32 ones do...
    scale, rate = jnp.asarray(0.25, dtype), jnp.asarray(0.5, dtype)
    w = jnp.arange(4.0, dtype=jnp.float32)
    np.testing.assert_allclose(jr.l2(scale)(w), 0.25 * float(np.sum(np.arange(4.0) ** 2)), rtol=EPS32)  # no 1/2
    x = jnp.ones((1000,), jnp.float32)
    y = jr.dropout(jax.random.key(0), x, rate)
    assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, 2.0}  # kept entries scaled by 1 / (1 - 0.5)
    mu, std = jnp.zeros(3, dtype), jnp.ones(3, dtype)
    assert float(jr.kl_normal(mu, std)) == 0.0  # KL(N(0, 1) || N(0, 1))
    # ...and invalid ones are still refused, naming the argument.
    with pytest.raises(ValueError, match="scale"):
        jr.l2(jnp.asarray(-1.0, dtype))
    with pytest.raises(ValueError, match="rate"):
        jr.dropout(jax.random.key(0), x, jnp.asarray(jnp.inf, dtype))
    with pytest.raises(ValueError, match="std"):
        jr.kl_normal(mu, jnp.zeros(3, dtype))


@pytest.mark.parametrize("dtype", HALF)
def test_sum_and_scaled_prox_with_a_half_precision_step(dtype):
    # Strict promotion is on (conftest): a half step meets float32 hyperparameters explicitly.
    w, t = _leaf(dtype, shape=(30, 20), scale=3.0), jnp.asarray(0.5, dtype)
    soft = lambda v, th: np.sign(v) * np.maximum(np.abs(v) - th, 0.0)  # noqa: E731
    cases = [
        (jr.l1(0.7) + jr.l2(0.3), soft(_f64(w), 0.7 * 0.5) / (1.0 + 2.0 * 0.3 * 0.5)),
        (2.0 * jr.l1(0.7), soft(_f64(w), 2.0 * 0.7 * 0.5)),
        (2.0 * (jr.l1(0.7) + jr.l2(0.3)), soft(_f64(w), 1.4 * 0.5) / (1.0 + 2.0 * 0.6 * 0.5)),
    ]
    for penalty, ref in cases:
        out = penalty.prox(w, t)
        assert out.dtype == dtype
        # float32 arithmetic (a few eps32 of the leaf's magnitude) and one rounding to the half dtype;
        # t = 0.5 is exact in both half dtypes
        np.testing.assert_allclose(_f64(out), ref, rtol=_eps(dtype), atol=8 * EPS32 * np.max(np.abs(_f64(w))))
    # proximal_adam's first step from a gradient of ones: Adam's update is -lr (m_hat / sqrt(v_hat)
    # = 1 to eps / 1), then the elastic-net prox with step lr per coordinate (sqrt(v_hat) = 1).
    lr = 0.125  # exact in both half dtypes
    opt = jr.proximal_adam(jr.l1(0.1) + jr.l2(0.1), jnp.asarray(lr, dtype))
    updates, _ = opt.update(jnp.ones_like(w), opt.init(w), w)
    assert updates.dtype == dtype
    z = _f64(w) - lr
    ref = soft(z, lr * 0.1) / (1.0 + 2.0 * lr * 0.1)
    got = _f64(w) + _f64(updates)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2 * _eps(dtype) * np.max(np.abs(_f64(w))) + 1e-7)


@pytest.mark.parametrize("dtype", HALF)
def test_tie_prox_of_a_float32_and_a_half_group(dtype):
    a, b = _leaf(jnp.float32, shape=(6, 4), scale=3.0, seed=3), _leaf(dtype, shape=(6, 4), scale=3.0, seed=4)
    pen, t = jr.tie(0.7, lambda q: (q["a"], q["b"])), 0.3
    out = pen.prox({"a": a, "b": b}, t)
    assert out["a"].dtype == jnp.float32 and out["b"].dtype == dtype
    # The pair moves to its mean by the factor 1 / (1 + 4 t lambda), computed on the given values.
    va, vb = _f64(a), _f64(b)
    half = 0.5 * (1.0 - 1.0 / (1.0 + 4 * t * 0.7)) * (va - vb)
    np.testing.assert_allclose(_f64(out["a"]), va - half, rtol=8 * EPS32, atol=8 * EPS32 * np.max(np.abs(va)))
    np.testing.assert_allclose(_f64(out["b"]), vb + half, rtol=_eps(dtype), atol=_eps(dtype) * np.max(np.abs(vb)))
    np.testing.assert_allclose(pen({"a": a, "b": b}), 0.7 * np.sum((va - vb) ** 2), rtol=va.size * EPS32)
