"""Constraints against numpy and Keras' definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr


def test_max_norm_matches_numpy_and_is_a_projection():
    w = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32) * 2
    for axis in (0, 1):
        norms = np.linalg.norm(w, axis=axis, keepdims=True)
        expected = w * np.minimum(1.0, 1.5 / norms)
        out = np.asarray(jr.max_norm(1.5, axis=axis)(jnp.asarray(w)))
        np.testing.assert_allclose(out, expected, rtol=1e-6)
        assert np.all(np.linalg.norm(out, axis=axis) <= 1.5 + 1e-5)
        np.testing.assert_allclose(jr.max_norm(1.5, axis=axis)(jnp.asarray(out)), out, rtol=1e-6)  # idempotent


def test_unit_norm_and_non_negative():
    w = jnp.array([[3.0, 0.0], [4.0, 0.0]])
    out = jr.unit_norm(axis=0)(w)
    np.testing.assert_allclose(out, [[0.6, 0.0], [0.8, 0.0]], rtol=1e-6)  # zero column stays zero
    np.testing.assert_array_equal(jr.non_negative()(jnp.array([-1.0, 0.0, 2.0])), [0.0, 0.0, 2.0])


def test_mask_restricts_constraint():
    params = {"kernel": jnp.full((2, 2), -5.0), "bias": jnp.full((2,), -5.0)}
    out = jr.non_negative(mask=jr.masks.kernels)(params)
    np.testing.assert_array_equal(out["kernel"], 0.0)
    np.testing.assert_array_equal(out["bias"], -5.0)


def test_constraints_jit_and_vmap_over_bound():
    w = jnp.array([[3.0], [4.0]])
    bounds = jnp.array([1.0, 5.0, 10.0])
    out = jax.jit(jax.vmap(lambda c: jr.max_norm(c)(w)))(bounds)
    np.testing.assert_allclose(out[0], [[0.6], [0.8]], rtol=1e-6)
    np.testing.assert_allclose(out[1], w, rtol=1e-6)
    np.testing.assert_allclose(out[2], w, rtol=1e-6)


def test_bad_bounds_and_axes_raise():
    with pytest.raises(ValueError, match=r"max_norm: max_value must be finite and > 0, got max_value = 0.0"):
        jr.max_norm(0.0)
    with pytest.raises(ValueError, match=r"max_value = -1"):
        jr.max_norm(-1)
    with pytest.raises(ValueError, match="unit_norm: axis must be an int"):
        jr.unit_norm(axis=0.5)
    with pytest.raises(ValueError, match="max_norm: axis = 1 is out of range for leaf 'bias'"):
        jr.max_norm(1.0, axis=1)({"bias": jnp.ones(3)})
