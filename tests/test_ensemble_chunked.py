"""Tests of jr.ensemble.Chunked: an ensemble held as blocks of members, stepped where it lies."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr

EPS32 = float(np.finfo(np.float32).eps)
N = 5


def _init(rng):
    k1, k2 = jax.random.split(rng)
    return {
        "dense": {"kernel": jax.random.normal(k1, (3, 4)), "bias": jax.random.normal(k2, (4,))},
        "out": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)},
    }


def _loss(p, batch, rng, h):
    x, y = batch
    h1 = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"][None])
    h1 = jr.dropout(rng, h1, h["rate"])
    pred = h1 @ p["out"]["kernel"] + p["out"]["bias"][None]
    loss = jnp.mean((pred - y) ** 2) + h["l2"](p)
    return loss, {"pred_mean": jnp.mean(pred)}


def _setup(opt):
    params = jr.ensemble.init(_init, jax.random.key(9), N)
    batch = (jax.random.normal(jax.random.key(10), (N, 8, 3)), jax.random.normal(jax.random.key(11), (N, 8, 2)))
    hparams = {"rate": jnp.linspace(0.0, 0.5, N), "l2": jr.l2(jnp.linspace(0.0, 0.3, N), mask=jr.masks.kernels)}
    return params, jax.vmap(opt.init)(params), batch, hparams


def _sizes(chunked):
    return [jr.ensemble.num_members(part) for part in chunked.parts]


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7])
def test_chunk_and_unchunk_are_inverse_and_keep_member_order(block):
    params = jr.ensemble.init(_init, jax.random.key(0), N)
    chunked = jr.ensemble.chunk(params, block)
    expected = [min(block, N - s) for s in range(0, N, block)]
    assert _sizes(chunked) == expected
    assert jr.ensemble.num_members(chunked) == N
    # Pure data movement: exact.
    chex.assert_trees_all_equal(jr.ensemble.unchunk(chunked), params)
    for got, want in zip(jr.ensemble.unstack(chunked), jr.ensemble.unstack(params)):
        chex.assert_trees_all_equal(got, want)
    # Each block owns its buffers (a donated step must not donate the stacked state's).
    leaf = jax.tree.leaves(chunked.parts[0])[0]
    assert leaf.unsafe_buffer_pointer() != jax.tree.leaves(params)[0].unsafe_buffer_pointer()
    # ... and unchunk's result owns its own, one block or several.
    joined = jax.tree.leaves(jr.ensemble.unchunk(chunked))[0]
    assert joined.unsafe_buffer_pointer() != leaf.unsafe_buffer_pointer()


@pytest.mark.parametrize("rng_form", ["single", "stacked"])
def test_chunked_train_step_equals_the_stacked_step(rng_form):
    opt = optax.adam(1e-2)
    params, opt_state, batch, hparams = _setup(opt)
    rng = jax.random.key(12) if rng_form == "single" else jax.random.split(jax.random.key(12), N)
    step = jr.ensemble.train_step(_loss, opt, batch_axis=0, has_aux=True)
    stacked = jax.jit(step)
    chunked = jax.jit(step, donate_argnums=(0, 1))

    p, s = params, opt_state
    cp, cs = jr.ensemble.chunk(params, 2), jr.ensemble.chunk(opt_state, 2)
    for _ in range(2):
        p, s, losses, aux = stacked(p, s, batch, rng, hparams)
        cp, cs, c_losses, c_aux = chunked(cp, cs, batch, rng, hparams)
    assert isinstance(cp, jr.ensemble.Chunked) and isinstance(cs, jr.ensemble.Chunked)
    assert _sizes(cp) == _sizes(cs) == [2, 2, 1]
    # Member i gets the same key, batch rows and hyperparameters in both: the same float32 ops
    # per member, so as in test_ensemble's member-alone check, Adam's normalized steps (1e-2)
    # leave params (|w| ~ 1) a few ulp apart per step (2 steps), losses 16 terms of rounding.
    chex.assert_trees_all_close(jr.ensemble.unchunk(cp), p, rtol=0, atol=32 * EPS32)
    chex.assert_trees_all_close(jr.ensemble.unchunk(cs), s, rtol=0, atol=32 * EPS32)
    np.testing.assert_allclose(c_losses, losses, rtol=32 * EPS32)
    np.testing.assert_allclose(c_aux["pred_mean"], aux["pred_mean"], rtol=32 * EPS32, atol=32 * EPS32)


@pytest.mark.parametrize("state_form", ["chunked", "plain"])
def test_chunked_train_step_with_a_stateless_optimizer_and_a_shared_batch(state_form):
    # optax.sgd's state has no leaves: chunked per block, or given as it is to every block.
    opt = optax.sgd(0.1)
    params, _, (x, y), hparams = _setup(opt)
    step = jax.jit(jr.ensemble.train_step(lambda *a: _loss(*a)[0], opt))  # has_aux=False: 3 outputs
    p, _, losses = step(params, jax.vmap(opt.init)(params), (x[0], y[0]), jax.random.key(3), hparams)
    cp = jr.ensemble.chunk(params, 3)
    if state_form == "chunked":
        cs = jr.ensemble.Chunked(tuple(jax.vmap(opt.init)(part) for part in cp.parts))
    else:
        cs = opt.init(params)
    cp, cs, c_losses = step(cp, cs, (x[0], y[0]), jax.random.key(3), hparams)
    assert isinstance(cs, jr.ensemble.Chunked) and len(cs.parts) == 2
    # SGD: w - 0.1 g, g to a few ulp of |w| ~ 1 (the same per-member ops).
    chex.assert_trees_all_close(jr.ensemble.unchunk(cp), p, rtol=0, atol=8 * EPS32)
    np.testing.assert_allclose(c_losses, losses, rtol=16 * EPS32)


def test_chunk_refuses_bad_block_sizes_and_unchunk_a_stacked_tree():
    params = jr.ensemble.init(_init, jax.random.key(0), N)
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match=r"^chunk: chunk_size must be"):
            jr.ensemble.chunk(params, bad)
    with pytest.raises(ValueError, match=r"^unchunk: expected a jr.ensemble.Chunked, got dict"):
        jr.ensemble.unchunk(params)
    with pytest.raises(ValueError, match=r"a Chunked ensemble needs a non-empty tuple of parts, got 0 parts"):
        jr.ensemble.unchunk(jr.ensemble.Chunked(()))
    with pytest.raises(ValueError, match=r"a Chunked ensemble needs a non-empty tuple of parts, got dict"):
        jr.ensemble.unchunk(jr.ensemble.Chunked(params))


def test_chunked_train_step_refuses_mismatched_blocks():
    opt = optax.adam(1e-2)
    params, opt_state, batch, hparams = _setup(opt)
    step = jr.ensemble.train_step(_loss, opt, batch_axis=0, has_aux=True)
    rng = jax.random.key(0)
    with pytest.raises(ValueError, match=r"params and opt_state must both be jr.ensemble.Chunked or both stacked"):
        step(jr.ensemble.chunk(params, 2), opt_state, batch, rng, hparams)
    with pytest.raises(ValueError, match=r"opt_state must hold one block per block of params \(3\), got 2"):
        step(jr.ensemble.chunk(params, 2), jr.ensemble.chunk(opt_state, 3), batch, rng, hparams)
    with pytest.raises(ValueError, match=r"opt_state's blocks hold \[3, 1, 1\] members, params' \[2, 2, 1\]"):
        chunked_state = jr.ensemble.Chunked(
            (*jr.ensemble.chunk(opt_state, 3).parts[:1], *jr.ensemble.chunk(opt_state, 1).parts[3:])
        )
        step(jr.ensemble.chunk(params, 2), chunked_state, batch, rng, hparams)
    # A stateless optimizer's blocks: a count that disagrees is refused, not truncated.
    sgd = optax.sgd(0.1)
    sgd_step = jr.ensemble.train_step(lambda *a: _loss(*a)[0], sgd, batch_axis=0)
    with pytest.raises(ValueError, match=r"opt_state must hold one block per block of params \(3\), got 1"):
        sgd_step(jr.ensemble.chunk(params, 2), jr.ensemble.Chunked((sgd.init(params),)), batch, rng, hparams)
    with pytest.raises(ValueError, match=r"opt_state must hold one block per block of params \(3\), got 0"):
        sgd_step(jr.ensemble.chunk(params, 2), jr.ensemble.Chunked(()), batch, rng, hparams)
    short = jax.tree.map(lambda a: a[:4], batch)
    with pytest.raises(ValueError, match=r"ensemble.train_step: batch leaf '0' has shape \(4, 8, 3\)"):
        step(jr.ensemble.chunk(params, 2), jr.ensemble.chunk(opt_state, 2), short, rng, hparams)
    with pytest.raises(ValueError, match=r"ensemble.train_step: rng leaf '<root>' has shape \(4,\)"):
        step(jr.ensemble.chunk(params, 2), jr.ensemble.chunk(opt_state, 2), batch, jax.random.split(rng, 4), hparams)


def test_map_predict_and_shard_refuse_a_chunked_ensemble():
    chunked = jr.ensemble.chunk(jr.ensemble.init(_init, jax.random.key(0), N), 2)
    x = jnp.ones((6, 3))
    with pytest.raises(ValueError, match=r"^ensemble.map: a Chunked ensemble is not taken here"):
        jr.ensemble.map(lambda p: p["out"]["bias"])(chunked)
    with pytest.raises(ValueError, match=r"^ensemble.predict: a Chunked ensemble is not taken here"):
        jr.ensemble.predict(lambda p, x: x @ p["dense"]["kernel"], chunked, x)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("members",))
    with pytest.raises(ValueError, match=r"^shard: a Chunked ensemble is not taken here"):
        jr.ensemble.shard(chunked, mesh)
