"""Masks select the same leaves on flax linen variables, flax nnx states and plain containers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxreg as jr
from jaxreg._tree import key_path_str, resolve_mask


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(5)(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(2)(nn.relu(x))


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.dense_0 = nnx.Linear(3, 5, rngs=rngs)
        self.norm = nnx.LayerNorm(5, rngs=rngs)
        self.dense_1 = nnx.Linear(5, 2, rngs=rngs)


def _linen():
    return LinenMLP().init(jax.random.key(0), jnp.ones((1, 3)))


def _nnx():
    return nnx.state(NnxMLP(nnx.Rngs(0)), nnx.Param)


def _selected_paths(tree, mask):
    sel = resolve_mask(mask, tree)
    return sorted(
        key_path_str(p)
        for (p, _), keep in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(sel))
        if keep
    )


def test_kernels_selects_matrices_only_on_linen_nnx_and_plain():
    assert _selected_paths(_linen(), jr.masks.kernels) == ["params/Dense_0/kernel", "params/Dense_1/kernel"]
    assert _selected_paths(_nnx(), jr.masks.kernels) == ["dense_0/kernel", "dense_1/kernel"]
    plain = [{"w": jnp.ones((3, 5)), "b": jnp.ones(5)}, (jnp.ones((5, 2)), jnp.ones(2))]
    assert _selected_paths(plain, jr.masks.kernels) == ["0/w", "1/0"]


def test_by_path_and_combinations():
    v = _linen()
    no_norm = jr.masks.everything & ~jr.masks.by_path("LayerNorm")
    assert _selected_paths(v, no_norm) == [
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
        "params/Dense_1/bias",
        "params/Dense_1/kernel",
    ]
    assert _selected_paths(v, jr.masks.by_path(r"Dense_1/(kernel|bias)$")) == [
        "params/Dense_1/bias",
        "params/Dense_1/kernel",
    ]
    assert _selected_paths(v, jr.masks.kernels | jr.masks.by_path("scale$")) == [
        "params/Dense_0/kernel",
        "params/Dense_1/kernel",
        "params/LayerNorm_0/scale",
    ]
    # On nnx the trailing ``value`` is dropped, so an anchored regex works the same.
    assert _selected_paths(_nnx(), jr.masks.by_path("bias$")) == ["dense_0/bias", "dense_1/bias", "norm/bias"]


def test_penalty_with_mask_equals_penalty_on_selected_leaves_on_nnx_state():
    state = _nnx()
    expected = sum(float(jnp.sum(x**2)) for x in [state["dense_0"]["kernel"][...], state["dense_1"]["kernel"][...]])
    assert float(jr.l2(1.0, mask=jr.masks.kernels)(state)) == pytest.approx(expected, rel=1e-6)
    # Same gradient pipeline as optax.masked on the nnx State.
    g = jax.grad(jr.l2(0.5, mask=jr.masks.kernels))(state)
    np.testing.assert_allclose(g["dense_0"]["kernel"][...], state["dense_0"]["kernel"][...], rtol=1e-6)
    np.testing.assert_array_equal(g["dense_0"]["bias"][...], 0.0)


def test_mask_agrees_with_optax_masked_on_linen():
    v = _linen()
    mask = jr.masks.kernels & ~jr.masks.by_path("Dense_1")
    ours = optax.chain(jr.add_penalty_grad(jr.l2(0.5, mask=mask)), optax.sgd(0.1))
    ref = optax.chain(optax.masked(optax.add_decayed_weights(1.0), mask(v)), optax.sgd(0.1))
    g = jax.tree.map(jnp.ones_like, v)
    a, _ = ours.update(g, ours.init(v), v)
    b, _ = ref.update(g, ref.init(v), v)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def test_pytree_and_prefix_masks():
    tree = {"enc": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "dec": {"w": jnp.ones((2, 2))}}
    assert _selected_paths(tree, {"enc": True, "dec": False}) == ["enc/b", "enc/w"]
    assert _selected_paths(tree, lambda p: {"enc": {"w": False, "b": True}, "dec": {"w": True}}) == ["dec/w", "enc/b"]
    assert float(jr.l1(1.0, mask={"enc": False, "dec": True})(tree)) == 4.0


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: jr.l2(1.0, mask={"a": True, "c": False})({"a": jnp.ones(2), "b": jnp.ones(2)}),
            "^l2: mask does not match the structure of the params",
        ),
        (
            lambda: jr.group_lasso(1.0, mask={"a": True})({"b": jnp.ones((2, 2))}),
            "^group_lasso: mask does not match the structure of the params",
        ),
        (
            lambda: jr.l1(1.0, mask={"a": True}).prox({"b": jnp.ones(2)}, 0.1),
            "^l1: mask does not match the structure of the params",
        ),
        (
            lambda: jr.elastic_net(1.0, 1.0, mask={"a": True})({"b": jnp.ones(2)}),
            "^elastic_net: mask does not match the structure of the params",
        ),
        (
            lambda: jr.max_norm(1.0, mask={"a": True})({"b": jnp.ones((2, 2))}),
            "^max_norm: mask does not match the structure of the params",
        ),
        (lambda: jr.l2(1.0, mask={"a": jnp.array(True), "b": False}), "mask must be a pytree of Python bools"),
        (lambda: jr.masks.by_path("("), r"by_path: invalid regular expression, got pattern = '\('"),
        (
            lambda: jr.l2(1.0, mask=jr.masks.by_path("kernal"))(_linen()),
            r"by_path: pattern = 'kernal' selects no leaf of the params; their paths are 'params/Dense_0/bias', "
            r"'params/Dense_0/kernel'",
        ),
        (
            lambda: jr.l2(1.0, mask=jr.masks.kernels & jr.masks.by_path("Dense_9"))(_linen()),
            "by_path: pattern = 'Dense_9' selects no leaf",
        ),
    ],
    ids=[
        "structure",
        "structure-group_lasso",
        "structure-l1-prox",
        "structure-elastic_net",
        "structure-max_norm",
        "traced-leaf",
        "bad-regex",
        "typo",
        "typo-in-combination",
    ],
)
def test_mask_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_by_path_allow_empty_selects_nothing_silently():
    v = _linen()
    assert _selected_paths(v, jr.masks.by_path("embedding", allow_empty=True)) == []
    # The usual "everything but the embedding" on a model without one.
    assert len(_selected_paths(v, ~jr.masks.by_path("embedding", allow_empty=True))) == len(jax.tree.leaves(v))


def test_masks_are_hashable_and_equal_by_value():
    a = jr.masks.kernels & ~jr.masks.by_path("bias")
    b = jr.masks.kernels & ~jr.masks.by_path("bias")
    assert a == b and hash(a) == hash(b)
    assert a != (jr.masks.kernels & ~jr.masks.by_path("scale"))


def test_a_mask_built_over_an_nnx_state_of_variables_fits_the_optimizers_plain_arrays():
    """``jax.tree.map(f, nnx.state(model, nnx.Param))`` holds Variables of bools; nnx.Optimizer
    inits on Variables and updates plain arrays, and the update refused the mask (with a message
    telling the user to build it the way they had)."""
    x = jnp.ones((4, 3))

    def run(mask):
        model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        if mask == "state":
            mask = jax.tree.map(lambda p: p.ndim > 1, nnx.state(model, nnx.Param))
        tx = optax.chain(jr.add_penalty_grad(jr.l2(0.5, mask=mask)), optax.sgd(0.1))
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
        for _ in range(2):
            opt.update(model, nnx.grad(lambda m: jnp.sum(m(x)))(model))
        return nnx.state(model, nnx.Param)

    masked, kernels, everything = run("state"), run(jr.masks.kernels), run(None)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(masked[name][...], kernels[name][...])
    # the mask did select: an unmasked penalty also pulls the bias
    assert not np.array_equal(masked["bias"][...], everything["bias"][...])
