"""Constraints against numpy and Keras' definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr

EPS = float(np.finfo(np.float32).eps)


def test_max_norm_matches_numpy_and_is_a_projection():
    w = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32) * 2
    for axis in (0, 1):
        norms = np.linalg.norm(w, axis=axis, keepdims=True)
        expected = w * np.minimum(1.0, 1.5 / norms)
        out = np.asarray(jr.max_norm(1.5, axis=axis)(jnp.asarray(w)))
        np.testing.assert_allclose(out, expected, rtol=8 * EPS)  # one norm, one scale
        assert np.all(np.linalg.norm(out, axis=axis) <= 1.5 * (1 + 8 * EPS))
        np.testing.assert_allclose(jr.max_norm(1.5, axis=axis)(jnp.asarray(out)), out, rtol=8 * EPS)  # idempotent


def test_unit_norm_and_non_negative():
    w = jnp.array([[3.0, 0.0], [4.0, 0.0]])
    out = jr.unit_norm(axis=0)(w)
    np.testing.assert_allclose(out, [[0.6, 0.0], [0.8, 0.0]], rtol=4 * EPS)  # zero column stays zero
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
    np.testing.assert_allclose(out[0], [[0.6], [0.8]], rtol=4 * EPS)
    np.testing.assert_allclose(out[1], w, rtol=4 * EPS)
    np.testing.assert_allclose(out[2], w, rtol=4 * EPS)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: jr.max_norm(0.0), r"max_norm: max_value must be finite and > 0, got max_value = 0.0"),
        (lambda: jr.max_norm(-1), r"max_norm: max_value must be finite and > 0, got max_value = -1"),
        (
            lambda: jr.unit_norm(axis=0.5),
            r"unit_norm: axis must be an int or a non-empty tuple of ints, got axis = 0.5",
        ),
        (
            lambda: jr.max_norm(1.0, axis=()),
            r"max_norm: axis must be an int or a non-empty tuple of ints, got axis = \(\)",
        ),
        (lambda: jr.max_norm(1.0, axis=(0, 0)), r"max_norm: axis must not repeat an axis, got axis = \(0, 0\)"),
        (lambda: jr.max_norm(1.0, axis=1)({"bias": jnp.ones(3)}), "max_norm: axis = 1 is out of range for leaf 'bias'"),
        (
            lambda: jr.unit_norm(axis=(0, 3))({"kernel": jnp.ones((2, 2))}),
            r"unit_norm: axis = \(0, 3\) is out of range for leaf 'kernel'",
        ),
        (
            lambda: jr.max_norm(1.0, axis=(0, -2))({"kernel": jnp.ones((3, 2))}),
            r"max_norm: axis = \(0, -2\) names an axis twice for leaf 'kernel' of shape \(3, 2\)",
        ),
        (
            lambda: jr.max_norm(jnp.ones(4))({"kernel": jnp.ones((3, 2))}),
            r"max_norm: max_value of shape \(4,\) does not broadcast against the norms \(1, 2\) of leaf 'kernel'",
        ),
    ],
    ids=[
        "zero-bound",
        "negative-bound",
        "float-axis",
        "empty-axes",
        "repeated-axis",
        "int-axis-range",
        "tuple-axis-range",
        "repeated-negative-axis",
        "bound-shape",
    ],
)
def test_bad_bounds_and_axes_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def _keras_max_norm(w, max_value, axis):
    """keras.constraints.MaxNorm as documented: w * clip(n, 0, c) / (epsilon + n), n the L2 norm over axis."""
    norms = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    return w * (np.clip(norms, 0, max_value) / (1e-7 + norms))


def test_max_norm_over_a_tuple_of_axes_equals_keras_and_a_reshaped_axis_0():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 4, 5)) * 2.0  # (h, w, in, out), norms ~ 12
    out = np.asarray(jr.max_norm(2.0, axis=(0, 1, 2))(jnp.asarray(kernel, jnp.float32)), np.float64)
    # keras adds epsilon = 1e-7 to norms of about 12: a relative difference below 1e-8, far under
    # float32's rounding of the result (a few eps32).
    np.testing.assert_allclose(out, _keras_max_norm(kernel, 2.0, (0, 1, 2)), rtol=8 * EPS, atol=8 * EPS)
    flat = jr.max_norm(2.0, axis=0)(jnp.asarray(kernel.reshape(-1, 5), jnp.float32))
    # The same norms summed in another order: a few ulps.
    np.testing.assert_allclose(out, np.asarray(flat).reshape(kernel.shape), rtol=4 * EPS, atol=4 * EPS)


def test_unit_norm_over_a_tuple_of_axes():
    kernel = np.random.default_rng(2).normal(size=(2, 2, 3, 4))
    out = np.asarray(jr.unit_norm(axis=(0, 1, 2))(jnp.asarray(kernel, jnp.float32)), np.float64)
    np.testing.assert_allclose(np.linalg.norm(out.reshape(-1, 4), axis=0), 1.0, rtol=8 * EPS)


def test_max_norm_takes_one_bound_per_vector():
    # a bound per output unit broadcasts against the kept-dims norms (1, out): keras's rule per column
    kernel = np.random.default_rng(2).normal(size=(4, 3)) * 2.0
    bounds = np.array([0.5, 1.0, 100.0])
    out = np.asarray(jr.max_norm(jnp.asarray(bounds, jnp.float32))(jnp.asarray(kernel, jnp.float32)), np.float64)
    expected = np.concatenate([_keras_max_norm(kernel[:, j : j + 1], bounds[j], 0) for j in range(3)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=8 * EPS, atol=8 * EPS)


def test_python_number_and_numpy_leaves_are_projected_as_arrays():
    # Penalties accept Python numbers as leaves; so do constraints (as float32 arrays).
    out = jr.non_negative()({"w": -2.0, "b": 3.0})
    assert float(out["w"]) == 0.0 and float(out["b"]) == 3.0
    np.testing.assert_allclose(jr.unit_norm(axis=0)({"w": np.array([3.0, 4.0])})["w"], [0.6, 0.8], rtol=4 * EPS)
    np.testing.assert_allclose(jr.max_norm(1.0, axis=0)(np.array([3.0, 4.0])), [0.6, 0.8], rtol=4 * EPS)


def test_max_norm_and_unit_norm_of_complex_leaves_use_the_modulus():
    """The norm of a complex vector is sqrt(sum |x|^2) (sum x**2 is complex: [3j, 4j] was left
    as it was, its "norm" 5j not above 1)."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))).astype(np.complex64)
    norms = np.sqrt(np.sum(np.abs(w.astype(np.complex128)) ** 2, axis=0, keepdims=True))
    want = w * np.minimum(1.0, 0.5 / norms)
    np.testing.assert_allclose(jr.max_norm(0.5)(jnp.asarray(w)), want, rtol=8 * EPS, atol=8 * EPS)
    np.testing.assert_allclose(jr.unit_norm()(jnp.asarray(w)), w / norms, rtol=8 * EPS, atol=8 * EPS)
