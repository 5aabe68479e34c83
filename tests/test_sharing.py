"""Hard sharing: one copy, gradients summed over its uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg as jr


def test_expand_compress_roundtrip_and_one_stored_copy():
    params = {"a": {"w": jnp.arange(6.0).reshape(2, 3)}, "b": {"w": jnp.zeros((2, 3))}, "c": jnp.ones(2)}
    share = jr.Share(lambda p: (p["a"], p["b"]))
    compact = share.compress(params)
    assert jax.tree.leaves(compact.params["a"]) == [] and jax.tree.leaves(compact.params["b"]) == []
    n_stored = sum(x.size for x in jax.tree.leaves(compact))
    assert n_stored == 6 + 2  # one copy of the shared weights
    full = share.expand(compact)
    np.testing.assert_array_equal(full["a"]["w"], params["a"]["w"])
    np.testing.assert_array_equal(full["b"]["w"], params["a"]["w"])
    np.testing.assert_array_equal(full["c"], params["c"])


def test_gradient_of_shared_copy_is_sum_over_uses_including_a_transposed_use():
    # Tied autoencoder: decoder kernel is the encoder kernel transposed.
    x = jax.random.normal(jax.random.key(0), (7, 4))
    params = {"enc": jax.random.normal(jax.random.key(1), (4, 3)), "dec": jnp.zeros((3, 4))}
    share = jr.Share(lambda p: (p["enc"], p["dec"]), transforms=(None, jnp.transpose))

    def full_loss(p):
        return jnp.sum((jnp.tanh(x @ p["enc"]) @ p["dec"] - x) ** 2)

    compact = share.compress(params)
    g = jax.grad(lambda c: full_loss(share.expand(c)))(compact)
    full = share.expand(compact)
    gf = jax.grad(full_loss)(full)
    np.testing.assert_allclose(g.shared, gf["enc"] + gf["dec"].T, rtol=1e-5, atol=1e-5)


_PARAMS = {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))}


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: jr.Share(lambda p: (p["a"], p["b"])).compress(_PARAMS),
            r"Share: use 1 has shapes \[\(3, 3\)\] but the transformed source has \[\(2, 3\)\]",
        ),
        (lambda: jr.Share(lambda p: (p["a"],)).compress(_PARAMS), "Share: .* at least two uses"),
        (
            # "use 1 has shapes [(3, 3)] but the transformed source has [(3, 3)]"
            lambda: jr.Share(lambda p: ({"x": p["b"]}, p["b"])).compress(_PARAMS),
            r"^Share: use 1 has the tree structure PyTreeDef\(\*\) but the transformed source has "
            r"PyTreeDef\(\{'x': \*\}\)\.$",
        ),
        (lambda: jr.Share(lambda p: (p["a"], p["a"] * 2)).compress(_PARAMS), "Share: where must select subtrees"),
        (
            lambda: jr.Share(lambda p: (p["a"], p["b"]), transforms=(jnp.transpose, None)),
            r"transforms\[0\] must be None",
        ),
        (
            # expand handed back the source's float32 in the bfloat16 use's place
            lambda: jr.Share(lambda p: (p["a"], p["b"])).compress({"a": jnp.ones(2), "b": jnp.ones(2, jnp.bfloat16)}),
            r"^Share: use 1 has dtypes \['bfloat16'\] but the transformed source has \['float32'\]; cast",
        ),
    ],
    ids=["shape", "one-use", "structure", "computes", "first-transform", "dtype"],
)
def test_shape_mismatch_and_bad_where_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_expand_under_jit_and_vmap():
    share = jr.Share(lambda p: (p[0], p[1]))
    compact = share.compress([jnp.ones(3), jnp.ones(3)])
    stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), compact)
    out = jax.jit(jax.vmap(share.expand))(stacked)
    np.testing.assert_array_equal(out[1][1], [2.0, 2.0, 2.0])


def test_share_names_a_non_callable_transform_and_an_expand_of_plain_params():
    params = {"a": jnp.ones(3), "b": jnp.ones(3)}
    with pytest.raises(
        ValueError, match=r"^Share: transforms\[1\] must be a callable or None, got transforms\[1\] = 3\."
    ):
        jr.Share(lambda q: (q["a"], q["b"]), transforms=[None, 3])
    share = jr.Share(lambda q: (q["a"], q["b"]))
    with pytest.raises(
        ValueError, match=r"^Share.expand: compact must be the Shared that compress returned, got a dict"
    ):
        share.expand(params)
    compact = share.compress(params)
    np.testing.assert_array_equal(share.expand(tuple(compact))["b"], params["a"])  # a plain pair works too


def test_a_use_in_another_dtype_is_tied_through_a_casting_transform():
    """The model gets each use in its own dtype; the gradient still sums over the uses."""
    params = {"enc": jnp.arange(6.0).reshape(2, 3), "dec": jnp.zeros((3, 2), jnp.bfloat16)}
    share = jr.Share(lambda p: (p["enc"], p["dec"]), transforms=(None, lambda w: w.T.astype(jnp.bfloat16)))
    full = share.expand(share.compress(params))
    assert full["dec"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(full["dec"], params["enc"].T.astype(jnp.bfloat16))
    grad = jax.grad(lambda s: jnp.sum(share.expand(jr.Shared(share.compress(params).params, s))["dec"]))
    np.testing.assert_array_equal(grad(params["enc"]), np.ones((2, 3)))
