"""optax's masking and adding semantics, case by case, for jaxreg's bridges.

Ported from optax's ``transforms/_masking_test.py`` and ``transforms/_adding_test.py``: every
case compares ``add_penalty_grad``, ``proximal`` and ``project`` with jaxreg masks against what
``optax.masked`` + ``optax.add_decayed_weights`` (or a plain ``jax.tree.map``) does with the same
input: prefix masks, mask functions, callable pytrees, ``None`` leaves, integer leaves and empty
subtrees.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr

EPS = float(np.finfo(np.float32).eps)
WD = 0.1
# add_penalty_grad(l2(wd / 2)) adds wd * w: one multiply and one add per element, as optax does.
TOL = dict(rtol=4 * EPS, atol=4 * EPS)


def _tree():
    params = {"a": 1.0, "b": [2.0, 3.0], "c": {"d": 4.0, "e": (5.0, 6.0)}}
    return jax.tree.map(jnp.asarray, params)


MASK = {"a": True, "b": [False, True], "c": {"d": True, "e": (False, True)}}


def _decay_both(mask_for_jaxreg, mask_for_optax, params, updates):
    ours = jr.add_penalty_grad(jr.l2(WD / 2, mask=mask_for_jaxreg))
    ref = optax.masked(optax.add_decayed_weights(WD), mask_for_optax)
    a, _ = jax.jit(ours.update)(updates, ours.init(params), params)
    b, _ = jax.jit(ref.update)(updates, ref.init(params), params)
    return a, b


@pytest.mark.parametrize("as_function", [False, True], ids=["pytree", "function"])
def test_masked_decay_equals_optax_masked(as_function):
    params = _tree()
    updates = jax.tree.map(lambda x: x / 10.0, params)
    mask = (lambda _: MASK) if as_function else MASK
    a, b = _decay_both(mask, mask, params, updates)
    chex.assert_trees_all_close(a, b, **TOL)


def test_prefix_mask_equals_optax_masked():
    mask = {"a": True, "b": False, "c": {"d": False, "e": True}}
    params = jax.tree.map(jnp.asarray, {"a": 1.0, "b": {"f": 2.0}, "c": {"d": 3.0, "e": ([4.0, 5.0], 6.0)}})
    updates = jax.tree.map(lambda x: x / 10.0, params)
    a, b = _decay_both(mask, mask, params, updates)
    chex.assert_trees_all_close(a, b, **TOL)


def test_mask_fn_on_ndim_equals_optax():
    params = {"a": jnp.ones((1, 2)), "b": (jnp.ones((1,)), np.ones((1, 2, 3), np.float32))}
    grads = jax.tree.map(lambda x: x * 2, params)
    a, b = _decay_both(jr.masks.kernels, lambda p: jax.tree.map(lambda x: x.ndim > 1, p), params, grads)
    chex.assert_trees_all_close(a, b, **TOL)
    np.testing.assert_array_equal(a["b"][0], grads["b"][0])


@pytest.mark.parametrize("extra_key_in_mask", [False, True], ids=["extra-param", "extra-mask-key"])
def test_tree_mismatch_fails(extra_key_in_mask):
    mask = {"a": True, "b": [False, True], "c": {"d": True, "e": (False, True)}}
    params = _tree()
    if extra_key_in_mask:
        mask["c"]["extra"] = True
    else:
        params["c"]["extra"] = jnp.asarray(7.0)
    tx = jr.add_penalty_grad(jr.l2(WD / 2, mask=mask))
    with pytest.raises(ValueError, match="mask does not match the structure of the params"):
        tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("container", [list, tuple, dict])
@pytest.mark.parametrize(
    "make", [lambda: jr.add_penalty_grad(jr.l2(0.1)), lambda: jr.proximal(jr.l1(0.1), 0.1)], ids=["grad", "prox"]
)
def test_empty_params(container, make):
    tx = make()
    updates, _ = tx.update(container(), tx.init(container()), container())
    assert updates == container()


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class CallableModule:
    """A callable pytree, as an equinox ``Module`` is (optax#913)."""

    w: object

    def __call__(self, x):
        return self.w.dot(x)

    def tree_flatten(self):
        return (self.w,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(*children)


@pytest.mark.parametrize("keep", [False, True])
def test_callable_pytree_is_a_pytree_mask_not_a_function(keep):
    module = CallableModule(jnp.array([1.0, 2.0, 3.0]))
    assert callable(module)
    ours = jr.add_penalty_grad(jr.l2(WD / 2, mask=CallableModule(keep)))
    ref = optax.masked(optax.add_decayed_weights(WD), CallableModule(keep))
    a, _ = ours.update(module, ours.init(module), module)
    b, _ = ref.update(module, ref.init(module), module)
    chex.assert_trees_all_close(a, b, **TOL)


def test_none_updates_pass_through_as_in_optax():
    weights = (jnp.ones((2,), jnp.float32), {"a": jnp.ones((2,), jnp.float32), "b": jnp.ones((2,), jnp.float32)})
    ref, _ = optax.add_decayed_weights(0.1).update(None, optax.EmptyState(), weights)
    ours, _ = jr.add_penalty_grad(jr.l2(0.05)).update(None, optax.EmptyState(), weights)
    assert ref is None and ours is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: jr.add_penalty_grad(jr.l2(0.05)),
        lambda: jr.proximal(jr.l1(0.1), 0.1),
        lambda: jr.project(jr.max_norm(1.0)),
    ],
    ids=["add_penalty_grad", "proximal", "project"],
)
def test_none_leaf_in_updates_stays_none(make):
    params = {"frozen": jnp.ones(3), "w": jnp.full((2, 2), 2.0)}
    updates = {"frozen": None, "w": jnp.zeros((2, 2))}
    tx = make()
    out, _ = tx.update(updates, tx.init(params), params)
    assert out["frozen"] is None
    # The other leaf gets exactly what it gets when the tree holds it alone.
    alone, _ = make().update(updates["w"], make().init(params["w"]), params["w"])
    np.testing.assert_array_equal(out["w"], alone)


@pytest.mark.parametrize(
    "make",
    [
        lambda: jr.add_penalty_grad(jr.l2(0.05)),
        lambda: jr.proximal(jr.elastic_net(0.1, 0.1), 0.1),
        lambda: jr.project(jr.unit_norm()),
        lambda: jr.proximal_adam(jr.l1(0.1), 0.1),
    ],
    ids=["add_penalty_grad", "proximal", "project", "proximal_adam"],
)
def test_integer_leaf_passes_through_unchanged(make):
    params = {"count": jnp.array(7, jnp.int32), "w": jnp.array([0.5, -2.0])}
    updates = {"count": jnp.array(1, jnp.int32), "w": jnp.array([0.1, 0.2])}
    tx = make()
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    assert out["count"].dtype == jnp.int32 and int(out["count"]) == 1
    float_only = make()
    alone, _ = float_only.update(updates["w"], float_only.init(params["w"]), params["w"])
    chex.assert_trees_all_close(out["w"], alone, **TOL)


@pytest.mark.parametrize(
    "make",
    [
        lambda: jr.add_penalty_grad(jr.l2(0.05)),
        lambda: jr.proximal(jr.l1(0.1), 0.1),
        lambda: jr.project(jr.non_negative()),
        lambda: jr.proximal_adam(jr.l1(0.1), 0.1),
    ],
    ids=["add_penalty_grad", "proximal", "project", "proximal_adam"],
)
def test_empty_and_none_subtrees_pass_through(make):
    params = {"empty": {}, "none": None, "w": jnp.array([0.5, -2.0])}
    updates = {"empty": {}, "none": None, "w": jnp.array([0.1, 0.2])}
    tx = make()
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    assert out["empty"] == {} and out["none"] is None
    alone, _ = make().update(updates["w"], make().init(params["w"]), params["w"])
    chex.assert_trees_all_close(out["w"], alone, **TOL)


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda: jr.add_penalty_grad(jr.l2(0.05)), "add_penalty_grad"),
        (lambda: jr.proximal(jr.l1(1.0), 0.1), "proximal"),
        (lambda: jr.proximal_adam(jr.l1(1.0), 0.1), "proximal_adam"),
        (lambda: jr.project(jr.max_norm(1.0)), "project"),
        (lambda: jr.ema(0.9), "ema"),
        (lambda: jr.swa(0, 1), "swa"),
        (lambda: jr.swag(0, 1), "swag"),
    ],
)
def test_updates_shaped_unlike_the_params_are_named(make, where):
    # They failed in jax's broadcasting ("add got incompatible shapes") or tree errors, unnamed.
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    tx = make()
    state = tx.init(params)
    with pytest.raises(
        ValueError, match=rf"^{where}: updates must be shaped like params, got leaf \['w'\] of shape \(2, 3\)"
    ):
        tx.update({"w": jnp.ones((2, 3)), "b": jnp.zeros(2)}, state, params)
    with pytest.raises(ValueError, match=rf"^{where}: updates must have the tree structure of params"):
        tx.update({"w": jnp.ones((3, 2))}, state, params)
    with pytest.raises(ValueError, match=rf"^{where}: updates must have the tree structure of params"):
        tx.update(0.0, state, params)  # a leaf where params has a dict: it passed, then failed inside jax


def test_early_stopping_and_freeze_name_a_snapshot_unlike_the_params():
    params = {"w": jnp.ones((3, 2))}
    stopper = jr.EarlyStopping(2)
    state = stopper.init(params)
    with pytest.raises(
        ValueError, match=r"^EarlyStopping.update: params must have the tree structure of state.best_params"
    ):
        stopper.update(state, 1.0, (params, ()))
    with pytest.raises(
        ValueError, match=r"^EarlyStopping.update: params must have the tree structure of state.best_params"
    ):
        stopper.update(state, 1.0, 0.0)  # a TypeError from jnp.where
    with pytest.raises(ValueError, match=r"^EarlyStopping.update: params must be shaped like state.best_params"):
        stopper.update(state, 1.0, {"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"^freeze_stopped: new must be shaped like old, got leaf \['w'\]"):
        jr.freeze_stopped(True, params, {"w": jnp.ones((2, 3))})


@pytest.mark.parametrize(
    "make", [lambda: jr.proximal_adam(jr.l1(0.1), 0.1), lambda: jr.ema(0.9)], ids=["proximal_adam", "ema"]
)
def test_a_state_from_init_on_other_params_is_named(make):
    """proximal_adam's stale state failed in jax's tree_map or broadcasting; ema named it."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    tx = make()
    where = "proximal_adam" if "proximal" in str(tx.update) else "ema"
    with pytest.raises(ValueError, match=rf"^{where}: params must have the tree structure of init's params"):
        tx.update(params, tx.init({"w": params["w"]}), params)
    with pytest.raises(ValueError, match=rf"^{where}: params must be shaped like init's params, got leaf \['w'\]"):
        tx.update(params, tx.init({"w": jnp.ones((4, 3)), "b": params["b"]}), params)


def test_proximal_adam_passes_a_nan_gradient_through_as_optax_adam_does_eagerly_and_jitted():
    """Eagerly it raised "l1.prox: step must be >= 0, got step = [0.99 nan ...]", a step the user
    never passed; jitted it gave NaN updates. Now NaN where the gradient is NaN, both ways, and
    the other coordinates as without the NaN (Adam is per coordinate)."""
    params = jnp.ones(4)
    grads = jnp.array([0.1, jnp.nan, 0.1, 0.1])
    tx = jr.proximal_adam(jr.l1(0.1), 0.1)
    state = tx.init(params)
    eager, _ = tx.update(grads, state, params)
    jitted, _ = jax.jit(tx.update)(grads, state, params)
    clean, _ = tx.update(jnp.full(4, 0.1), state, params)
    for out in (eager, jitted):
        assert np.isnan(float(out[1]))
        np.testing.assert_allclose(np.delete(np.asarray(out), 1), np.delete(np.asarray(clean), 1), rtol=1e-6)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction: float ** int32
        assert np.isnan(float(optax.adam(0.1).update(grads, optax.adam(0.1).init(params))[0][1]))


def test_a_state_made_on_nnx_variables_takes_pure_array_updates_as_optax_does():
    """init on nnx.state(model, nnx.Param), update with nnx.as_pure arrays: optax.adam takes it; the
    structure check took each Param (a one-leaf box) for a subtree the update lacked."""
    from flax import nnx

    wrapped = nnx.state(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param)
    pure = nnx.as_pure(wrapped)
    grads = jax.tree.map(jnp.ones_like, pure)
    tx = jr.proximal_adam(jr.l1(0.0), 0.1)
    reference = optax.adam(0.1)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction: float ** int32
        want, _ = reference.update(grads, reference.init(wrapped), pure)
    got, _ = tx.update(grads, tx.init(wrapped), pure)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    stopper = jr.EarlyStopping(2)
    state = stopper.update(stopper.init(wrapped), 1.0, pure)
    assert float(state.best_metric) == 1.0
