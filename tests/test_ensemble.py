"""Tests of jr.ensemble: init, bootstrap, map, predict, train_step, shard, checkpoints."""

import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr

ROOT = pathlib.Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)


def _init(rng):
    k1, k2 = jax.random.split(rng)
    return {
        "dense": {"kernel": jax.random.normal(k1, (3, 4)), "bias": jax.random.normal(k2, (4,))},
        "out": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)},
    }


def _apply(p, x):
    h = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"][None])
    return h @ p["out"]["kernel"] + p["out"]["bias"][None]


def test_init_equals_init_fn_per_split_key():
    stacked = jr.ensemble.init(_init, jax.random.key(0), 3)
    keys = jax.random.split(jax.random.key(0), 3)
    for i, member in enumerate(jr.ensemble.unstack(stacked)):
        # jax.random.normal under vmap draws the same bits and the same float32 transform.
        chex.assert_trees_all_close(member, _init(keys[i]), rtol=0, atol=4 * EPS32)


def test_stack_unstack_roundtrip():
    members = [_init(k) for k in jax.random.split(jax.random.key(1), 4)]
    stacked = jr.ensemble.stack(members)
    assert stacked["dense"]["bias"].shape == (4, 4)
    for a, b in zip(jr.ensemble.unstack(stacked), members):
        chex.assert_trees_all_equal(a, b)


def test_stack_names_the_leaf_whose_shapes_differ():
    with pytest.raises(
        ValueError, match=r"stack: members must have the same shapes, got leaf 'a/w' of shape \(3,\) in tree 1"
    ):
        jr.ensemble.stack([{"a": {"w": jnp.zeros(2)}}, {"a": {"w": jnp.zeros(3)}}])


def test_bootstrap_counts_sum_to_n_and_leave_out_about_e_inverse():
    n, members = 3000, 8
    w = np.asarray(jr.ensemble.bootstrap_weights(jax.random.key(2), members, n))
    assert w.shape == (members, n) and w.dtype == np.float32
    np.testing.assert_array_equal(w.sum(axis=1), np.full(members, n))
    assert np.all(w == np.round(w)) and np.all(w >= 0)
    zeros = (w == 0).mean(axis=1)
    # P(example never drawn) = (1 - 1/n)^n ~ e^-1; per-member sd ~ sqrt(p(1-p)/n) ~ 0.0088.
    expected = (1 - 1 / n) ** n
    assert np.all(np.abs(zeros - expected) < 0.04), zeros
    assert abs(zeros.mean() - expected) < 0.015, zeros.mean()
    assert not np.array_equal(w[0], w[1])  # members get different resamples


def test_permutations_are_independent_permutations():
    p = np.asarray(jr.ensemble.permutations(jax.random.key(3), 5, 50))
    for row in p:
        np.testing.assert_array_equal(np.sort(row), np.arange(50))
    assert len({tuple(r) for r in p}) == 5


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3])
def test_map_equals_vmap(chunk_size):
    params = jr.ensemble.init(_init, jax.random.key(4), 5)
    x = jax.random.normal(jax.random.key(5), (6, 3))
    xs = jax.random.normal(jax.random.key(6), (6, 5, 3))  # member axis 1

    def fn(p, x, x_member):
        return {"shared": _apply(p, x), "own": _apply(p, x_member)}

    expected = jax.vmap(fn, in_axes=(0, None, 1))(params, x, xs)
    got = jax.jit(jr.ensemble.map(fn, in_axes=(0, None, 1), chunk_size=chunk_size))(params, x, xs)
    # The same float32 ops per member; a chunk's vmap width may change SIMD rounding of the
    # length-3 and length-4 dot products (outputs |y| <= 4 * 1 + 2): a few ulp of 8.
    chex.assert_trees_all_close(got, expected, rtol=0, atol=8 * 8 * EPS32)


def test_predict_mean_and_population_variance():
    params = jr.ensemble.init(_init, jax.random.key(7), 4)
    x = jax.random.normal(jax.random.key(8), (5, 3))
    outs = np.stack([np.asarray(_apply(m, x)) for m in jr.ensemble.unstack(params)])
    outs64 = outs.astype(np.float64)  # float64 moments of the float32 outputs
    scale = float(np.max(np.abs(outs64)))
    for chunk in (None, 1, 3, 4):
        pred = jax.jit(lambda p, c=chunk: jr.ensemble.predict(_apply, p, x, chunk_size=c))(params)
        # Means of 4 outputs (each with ~8 ulp of rounding): 16 eps |y|; the variance's squares
        # (and Chan's merge across chunks) double that relative to scale^2.
        np.testing.assert_allclose(np.asarray(pred.mean), outs64.mean(0), rtol=0, atol=16 * EPS32 * scale)
        np.testing.assert_allclose(np.asarray(pred.variance), outs64.var(0, ddof=0), rtol=0, atol=64 * EPS32 * scale**2)


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 9])
def test_predict_variance_is_accurate_relative_to_itself_far_from_zero(chunk):
    """Outputs of mean 1e4 and spread 1e-2: the variance to float32 rounding of the spread, not of
    the mean. Chunk means rounded to eps * |mean| made merged variances 100-400x worse than one
    float32 pass (0.12 relative at chunks of 2), and the deviations from a rounded mean put one
    pass itself at 1.5e-2."""
    outs = (1e4 + 1e-2 * np.random.default_rng(0).normal(size=(9, 50))).astype(np.float32)
    want = outs.astype(np.float64).var(0)
    pred = jax.jit(lambda p: jr.ensemble.predict(lambda m, x: m, p, None, chunk_size=chunk))(jnp.asarray(outs))
    # The shifted samples are exact (within a factor 2 of each other: Sterbenz); their mean and
    # squares round to a few eps relative to the spread: 8 samples' sums, 8 * 2 eps.
    np.testing.assert_allclose(np.asarray(pred.variance), want, rtol=16 * EPS32)
    np.testing.assert_allclose(np.asarray(pred.mean), outs.astype(np.float64).mean(0), rtol=4 * EPS32)


_BAD = {"a": jnp.zeros((3, 2)), "b": {"c": jnp.zeros((4, 2))}}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jr.ensemble.num_members(_BAD), r"leaf 'b/c' has 4 members, leaf 'a' has 3"),
        (lambda: jr.ensemble.predict(lambda p, x: p["a"], _BAD, None), r"'b/c' has 4 members"),
        (lambda: jr.ensemble.map(lambda a, b: a + b)(jnp.zeros(3), jnp.zeros(4)), r"has 4 members"),
        (
            lambda: jr.ensemble.predict(lambda p, x: p["a"], _BAD, None),
            r"^ensemble.predict: stacked_params: leaves disagree",
        ),
        (
            lambda: _train_with(hparams=lambda h: {**h, "rate": h["rate"][:3]}),
            r"^ensemble.train_step: hparams leaf 'rate' has shape \(3,\); it needs the member axis \(0\) of size 4",
        ),
        (
            lambda: _train_with(batch=lambda b: (b[0][:3], b[1][:3])),
            r"^ensemble.train_step: batch leaf '0' has shape \(3, 8, 3\)",
        ),
        (
            lambda: _train_with(rng=jax.random.split(jax.random.key(0), 3)),
            r"^ensemble.train_step: rng leaf '<root>' has shape \(3,\)",
        ),
        (
            lambda: _train_with(opt_state=lambda s: jax.tree.map(lambda a: a[:2], s)),
            r"^ensemble.train_step: opt_state leaf '0/count' has shape \(2,\)",
        ),
    ],
)
def test_mismatched_member_axes_name_the_leaf(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jr.ensemble.init(_init, jax.random.key(0), 0), "num_members = 0"),
        (lambda: jr.ensemble.bootstrap_weights(jax.random.key(0), 0, 5), "num_members = 0"),
        (lambda: jr.ensemble.bootstrap_weights(jax.random.key(0), 2, 0), "num_examples = 0"),
        (lambda: jr.ensemble.map(jnp.sin, chunk_size=0), "chunk_size = 0"),
        (lambda: jr.ensemble.stack([]), "num_members >= 1"),
        (lambda: jr.ensemble.num_members({"a": jnp.zeros(())}), "scalar"),
        (lambda: jr.ensemble.predict(_apply, {"w": jnp.zeros((2, 1))}, None, chunk_size=0), "chunk_size = 0"),
        (lambda: jr.ensemble.train_step(_loss, _OPT, chunk_size=0), "chunk_size = 0"),
        (lambda: jr.ensemble.init(_init, 0, 3), r"ensemble.init: rng must be a PRNG key.*jax.random.key\(0\)"),
        (lambda: jr.ensemble.bootstrap_weights(7, 2, 5), r"bootstrap_weights: rng must be a PRNG key"),
        (lambda: jr.ensemble.permutations(jnp.ones(2), 2, 5), r"permutations: rng must be a PRNG key"),
        (lambda: jr.ensemble.split_keys(0, 2), r"split_keys: rng must be a PRNG key"),
        (lambda: _train_with_rng(0), r"ensemble.train_step: rng must be a PRNG key"),
        (lambda: _train_with_rng(jnp.zeros((4, 3), jnp.uint32)), r"rng must be a PRNG key.*shape \(4, 3\)"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# A per-member training step: dropout rate and L2 scale are per-member hyperparameters.


def _loss(p, batch, rng, h):
    x, y = batch
    h1 = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"][None])
    h1 = jr.dropout(rng, h1, h["rate"])
    pred = h1 @ p["out"]["kernel"] + p["out"]["bias"][None]
    return jnp.mean((pred - y) ** 2) + h["l2"](p)


_OPT = optax.adam(1e-2)


def _train_with_rng(rng):
    params, opt_state, batch, hparams = _setup()
    return jr.ensemble.train_step(_loss, _OPT, batch_axis=0)(params, opt_state, batch, rng, hparams)


def _train_with(*, hparams=None, batch=None, rng=None, opt_state=None):
    """One train_step on _setup()'s members with one argument replaced (a function of the original)."""
    params, state, data, hps = _setup()
    return jr.ensemble.train_step(_loss, _OPT, batch_axis=0)(
        params,
        state if opt_state is None else opt_state(state),
        data if batch is None else batch(data),
        jax.random.key(0) if rng is None else rng,
        hps if hparams is None else hparams(hps),
    )


def _setup(n=4):
    params = jr.ensemble.init(_init, jax.random.key(9), n)
    opt_state = jax.vmap(_OPT.init)(params)
    xb = jax.random.normal(jax.random.key(10), (n, 8, 3))
    yb = jax.random.normal(jax.random.key(11), (n, 8, 2))
    hparams = {
        "rate": jnp.linspace(0.0, 0.5, n),
        "l2": jr.l2(jnp.linspace(0.0, 0.3, n), mask=jr.masks.kernels),
    }
    return params, opt_state, (xb, yb), hparams


@pytest.mark.parametrize("chunked", [False, True])
def test_train_step_gives_the_optimizer_each_members_loss_as_value(chunked):
    """optax optimizers that read ``value=`` (reduce_on_plateau, polyak_sgd) get the member's own
    loss: the same params and states as each member stepped alone with ``update(..., value=loss)``."""
    import optax.contrib

    opt = optax.chain(optax.sgd(0.5), optax.contrib.reduce_on_plateau(factor=0.5, patience=1, accumulation_size=1))
    polyak = optax.polyak_sgd(max_learning_rate=1.0)
    targets = jnp.array([[1.0, -2.0], [3.0, 0.5], [0.0, 0.0]])

    def loss(p, target, rng, h):
        return jnp.sum(jnp.abs(p - target)) + 0.1  # |.|: plateaus under sgd, so the scale moves

    for tx in (opt, polyak):
        params = jnp.zeros((3, 2))
        state = jax.vmap(tx.init)(params)
        step = jax.jit(jr.ensemble.train_step(loss, tx, batch_axis=0))
        stateful = bool(jax.tree.leaves(state))  # polyak_sgd's is empty: train_step gives each block one
        p, s = params, state
        if chunked:
            p, s = jr.ensemble.chunk(params, 2), jr.ensemble.chunk(state, 2) if stateful else state
        for _ in range(6):
            p, s, _ = step(p, s, targets, jax.random.key(0))
        if chunked:
            p, s = jr.ensemble.unchunk(p), jr.ensemble.unchunk(s) if stateful else state

        @jax.jit
        def alone(pi, si, target, tx=tx):  # one member stepped by itself, the optimizer told its loss
            value, g = jax.value_and_grad(loss)(pi, target, None, None)
            with jax.numpy_dtype_promotion("standard"):  # reduce_on_plateau mixes int32 counts in
                u, si = tx.update(g, si, pi, value=value)
            return optax.apply_updates(pi, u), si

        for i in range(3):
            pi, si = params[i], tx.init(params[i])
            for _ in range(6):
                pi, si = alone(pi, si, targets[i])
            np.testing.assert_allclose(p[i], pi, rtol=0, atol=8 * EPS32)
            chex.assert_trees_all_close(jax.tree.map(lambda leaf, i=i: leaf[i], s), si, rtol=0, atol=8 * EPS32)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_train_step_equals_stepping_each_member_alone(chunk_size):
    n = 4
    params, opt_state, batch, hparams = _setup(n)
    keys = jax.random.split(jax.random.key(12), n)
    # A single key is split into one per member: both forms give the same step.
    rng = jax.random.key(12) if chunk_size is None else keys
    step = jax.jit(jr.ensemble.train_step(_loss, _OPT, batch_axis=0, chunk_size=chunk_size))
    p2, s2, losses = step(params, opt_state, batch, rng, hparams)
    p2, s2, losses = step(p2, s2, batch, rng, hparams)

    @jax.jit
    def one_member(p, s, b, key, rate, scale):
        h = {"rate": rate, "l2": jr.l2(scale, mask=jr.masks.kernels)}
        loss, g = jax.value_and_grad(_loss)(p, b, key, h)
        with jax.numpy_dtype_promotion("standard"):  # optax's adam computes decay ** int32 count
            u, s = _OPT.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    for i in range(n):
        p = jax.tree.map(lambda leaf, i=i: leaf[i], params)
        s = jax.tree.map(lambda leaf, i=i: leaf[i], opt_state)
        b = (batch[0][i], batch[1][i])
        for _ in range(2):
            p, s, loss = one_member(p, s, b, keys[i], hparams["rate"][i], hparams["l2"].scale[i])
        # The same float32 ops per member; Adam's normalized steps (1e-2) are insensitive to a
        # few ulp of the gradients, so params (|w| ~ 1) agree to a few ulp per step (2 steps).
        chex.assert_trees_all_close(jax.tree.map(lambda leaf, i=i: leaf[i], p2), p, rtol=0, atol=32 * EPS32)
        # A mean of 8 * 2 squared errors of size ~1 plus the penalty: 16 terms of rounding.
        np.testing.assert_allclose(float(losses[i]), float(loss), rtol=32 * EPS32)


def test_penalty_mask_sees_one_member_biases_not_kernels():
    # A stacked bias (N, d) has ndim 2; inside train_step each member's bias has ndim 1, so
    # jr.masks.kernels leaves it alone: a pure-penalty loss must not move any bias.
    params, _, _, _ = _setup(3)
    pen = jr.l2(1.0, mask=jr.masks.kernels)
    step = jax.jit(jr.ensemble.train_step(lambda p, b, r, h: pen(p), optax.sgd(0.1)))
    new, _, losses = step(params, jax.vmap(optax.sgd(0.1).init)(params), None, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(new["dense"]["bias"]), np.asarray(params["dense"]["bias"]))
    # w - 0.1 * 2 w: one float32 multiply-add per weight, 2 ulp of |w|.
    np.testing.assert_allclose(
        np.asarray(new["dense"]["kernel"]), 0.8 * np.asarray(params["dense"]["kernel"]), rtol=2 * EPS32
    )
    per_member = [float(pen(m)) for m in jr.ensemble.unstack(params)]
    # A float32 sum of 12 + 8 squares: at most 20 eps relative.
    np.testing.assert_allclose(np.asarray(losses), per_member, rtol=20 * EPS32)


def test_checkpoint_roundtrip_resumes_to_identical_numbers(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    params, opt_state, batch, hparams = _setup(4)
    step = jax.jit(jr.ensemble.train_step(_loss, _OPT, batch_axis=0))
    key = jax.random.key(13)
    for t in range(2):
        params, opt_state, _ = step(params, opt_state, batch, jax.random.fold_in(key, t), hparams)
    path = tmp_path / "ckpt"
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, {"params": params, "opt_state": opt_state})
    ckptr.wait_until_finished()

    def run(p, s):
        for t in range(2, 4):
            p, s, losses = step(p, s, batch, jax.random.fold_in(key, t), hparams)
        return p, s, losses

    direct = run(params, opt_state)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state})
    restored = ckptr.restore(path, target)
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(opt_state)
    resumed = run(restored["params"], restored["opt_state"])
    chex.assert_trees_all_equal(resumed, direct)


def test_shard_on_eight_cpu_devices_equals_unsharded():
    # The device count is fixed when jax starts: tests/sharding_checks.py runs in a fresh process.
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/sharding_checks.py", "-p", "no:cacheprovider", "-rs", "-n", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    # Every check ran and passed (a skip would mean the process did not get its 8 devices).
    assert "36 passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-2000:]


@pytest.mark.parametrize("in_axes", [{"a": 0}, True, "0"])
def test_map_refuses_in_axes_that_vmap_refuses(in_axes):
    """jax.vmap takes an int, None or a tuple at the top; a dict was read as every argument's
    prefix (the same call raised in jax.vmap)."""
    tree = {"a": jnp.ones(3)}
    with pytest.raises((ValueError, TypeError)):
        jax.vmap(lambda t: t["a"], in_axes=in_axes)(tree)
    with pytest.raises(ValueError, match=r"^ensemble.map: in_axes must be an int, None, or a tuple"):
        jr.ensemble.map(lambda t: t["a"], in_axes=in_axes)(tree)
    np.testing.assert_array_equal(
        jr.ensemble.map(lambda t: t["a"], in_axes=(in_axes,) if in_axes == {"a": 0} else 0)(tree), tree["a"]
    )


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_map_maps_keyword_arguments_like_vmap(chunk_size):
    w, x, b = jnp.arange(16.0).reshape(4, 2, 2), jnp.ones(2), jnp.arange(8.0).reshape(4, 2)

    def fn(w, x, b):
        return w @ x + b

    ours = jr.ensemble.map(fn, in_axes=(0, None), chunk_size=chunk_size)(w, x, b=b)
    ref = jax.vmap(fn, in_axes=(0, None))(w, x, b=b)
    # Integers up to 37 in float32: every product and sum is exact.
    chex.assert_trees_all_equal(ours, ref)


def test_replicate_one_member_and_each_member_of_a_stacked_tree():
    one = _init(jax.random.key(0))
    rep = jr.ensemble.replicate(one, 3)
    for a, r in zip(jax.tree.leaves(one), jax.tree.leaves(rep)):
        assert r.shape == (3, *a.shape)
        for j in range(3):
            np.testing.assert_array_equal(np.asarray(r[j]), np.asarray(a))  # copies are exact
    stacked = jr.ensemble.init(_init, jax.random.key(1), 2)
    rep = jr.ensemble.replicate(stacked, 3, stacked=True)
    for a, r in zip(jax.tree.leaves(stacked), jax.tree.leaves(rep)):
        # Independent reference: numpy's repeat; member i's copies sit at rows 3i, 3i+1, 3i+2.
        np.testing.assert_array_equal(np.asarray(r), np.repeat(np.asarray(a), 3, axis=0))
        np.testing.assert_array_equal(np.asarray(r).reshape(2, 3, *a.shape[1:])[1, 2], np.asarray(a[1]))


@pytest.mark.parametrize("num", [0, -1, 1.5, True])
def test_replicate_rejects_a_bad_num(num):
    with pytest.raises(ValueError, match="replicate: num must be"):
        jr.ensemble.replicate(jnp.zeros(2), num)


def test_replicate_stacked_rejects_disagreeing_member_axes():
    with pytest.raises(ValueError):
        jr.ensemble.replicate({"a": jnp.zeros((2, 3)), "b": jnp.zeros((3,))}, 2, stacked=True)


@pytest.mark.parametrize("batch_axis", ["x", 1.5, True])
def test_train_step_refuses_a_batch_axis_that_is_not_an_int(batch_axis):
    with pytest.raises(ValueError, match=r"ensemble.train_step: batch_axis must be None .* got batch_axis = "):
        jr.ensemble.train_step(lambda p, b, r, h: jnp.sum(p), optax.sgd(0.1), batch_axis=batch_axis)


def test_an_empty_member_axis_is_refused_by_name():
    # it failed inside XLA's slicing; jax.vmap would return an empty result, jaxreg has no member to run
    empty = jnp.ones((0, 3))
    for call in (
        lambda: jr.ensemble.map(jnp.sum)(empty),
        lambda: jr.ensemble.map(jnp.sum, chunk_size=2)(empty),
        lambda: jr.ensemble.predict(lambda p, x: p * x, empty, 1.0),
        lambda: jr.ensemble.num_members({"w": empty}),
    ):
        with pytest.raises(ValueError, match=r"the member axis is empty"):
            call()


KEY0 = jax.random.key(0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda n: jr.ensemble.split_keys(KEY0, n), r"^split_keys: num_members must be an int in \[1, 2147483647\]"),
        (lambda n: jr.ensemble.bootstrap_weights(KEY0, 2, n), r"^bootstrap_weights: num_examples must be an int in"),
        (lambda n: jr.ensemble.replicate(jnp.ones(2), n), r"^replicate: num must be an int in \[1, 2147483647\]"),
        (lambda n: jr.swag(0, 1, rank=n), r"^swag: rank must be an int in \[0, 2147483647\]"),
        (
            lambda n: jr.mc_dropout(lambda p, x, k: x, {}, jnp.ones(2), KEY0, n),
            r"^mc_dropout: num_samples must be an int in \[1, 2147483647\]",
        ),
    ],
    ids=["split_keys", "bootstrap_weights", "replicate", "swag", "mc_dropout"],
)
@pytest.mark.parametrize("count", [2**31, 10**400], ids=["2**31", "10**400"])
def test_a_count_beyond_int32_is_refused_by_name(call, match, count):
    """jax counts and indexes in int32: 10**400 failed inside MLIR ("get(): incompatible function
    arguments"), 2**40 in jax's OverflowError or a 20 TB allocation."""
    shown = "an int of 1329 bits" if count == 10**400 else "2147483648"
    with pytest.raises(ValueError, match=match + rf".*, got .* = {shown}\.$"):
        call(count)


@pytest.mark.parametrize("mesh", [None, "cpu", jax.devices()], ids=["None", "str", "devices"])
def test_shard_refuses_what_is_not_a_mesh_by_name(mesh):
    # AttributeError: 'NoneType' object has no attribute 'axis_names'
    with pytest.raises(ValueError, match=r"^shard: mesh must be a jax.sharding.Mesh, got mesh = "):
        jr.ensemble.shard({"w": jnp.ones((2, 3))}, mesh)


def test_train_step_names_an_opt_state_for_other_params_and_integer_params():
    """Only the member axis was checked: Adam moments of shape (1, 3) broadcast against (4, 3)
    gradients (the state changed shape and the params moved by 0.17 too much); an integer leaf
    failed in jax.grad, a state of another structure in jax's tree errors, naming nothing."""
    loss = lambda p, batch, rng, h: jnp.sum(p["w"] ** 2)  # noqa: E731
    opt = optax.adam(0.1)
    params = {"w": jnp.ones((2, 4, 3))}
    step = jr.ensemble.train_step(loss, opt)
    key = jax.random.key(0)
    stale = jax.vmap(opt.init)({"w": jnp.ones((2, 1, 3))})
    with pytest.raises(ValueError, match=r"^ensemble.train_step: opt_state must be .* leaf '0/mu/w' of shape \(1, 3\)"):
        step(params, stale, None, key)
    with pytest.raises(ValueError, match=r"^ensemble.train_step: opt_state must be .* another structure"):
        step(params, jax.vmap(optax.sgd(0.1).init)(params), None, key)
    with pytest.raises(
        ValueError, match=r"^ensemble.train_step: params must be floating point .* leaf 'n' of dtype int32"
    ):
        step(
            {**params, "n": jnp.zeros((2,), jnp.int32)},
            jax.vmap(opt.init)({**params, "n": jnp.zeros((2,), jnp.int32)}),
            None,
            key,
        )
    new, _, _ = step(params, jax.vmap(opt.init)(params), None, key)  # the state init gives is taken
    np.testing.assert_allclose(new["w"], 0.9, rtol=1e-6)  # Adam's first step: lr * sign(g)


def test_train_step_takes_states_that_differ_from_init_only_in_static_data():
    """The state check compares leaf paths and shapes, not treedefs: a mask function built anew
    per member (a Mask of another lambda), a restored state of lists, optax.identity's () and an
    init that reads values on the host all ran before the check and still do."""
    params = {"w": jnp.ones((2, 3, 2)), "b": jnp.ones((2, 2))}
    loss = lambda p, batch, rng, h: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
    key = jax.random.key(0)

    def opt_for(scale):  # a new mask function each time: its Mask compares by identity
        penalty = jr.l2(scale, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
        return optax.chain(jr.add_penalty_grad(penalty), optax.sgd(1.0))

    states = jax.vmap(lambda p: opt_for(0.0).init(p))(params)
    new, _, _ = jax.jit(jr.ensemble.train_step(loss, opt_for(0.0)))(params, states, None, key)
    np.testing.assert_allclose(new["w"], -1.0)  # w - 1.0 * 2w
    adam = optax.adam(0.1)
    as_lists = jax.tree.map(lambda x: x, list(jax.vmap(adam.init)(params)), is_leaf=lambda x: isinstance(x, tuple))
    new, _, _ = jr.ensemble.train_step(loss, adam)(params, as_lists, None, key)
    np.testing.assert_allclose(new["w"], 0.9, rtol=1e-6)
    new, _, _ = jr.ensemble.train_step(loss, optax.identity())(params, (), None, key)
    np.testing.assert_allclose(new["w"], 1.0 + 2.0)  # identity: the gradient itself is added

    def host_init(p):  # reads values: jax.eval_shape cannot trace it
        return {"scale": jax.tree.map(lambda x: jnp.asarray(float(np.asarray(x).max())), p)}

    host = optax.GradientTransformation(host_init, lambda u, s, p=None: (u, s))
    state = jax.tree.map(lambda x: jnp.stack([x, x]), host_init({"w": params["w"][0], "b": params["b"][0]}))
    new, _, _ = jr.ensemble.train_step(loss, host)(params, state, None, key)
    np.testing.assert_allclose(new["b"], 3.0)
