"""Sharded vs unsharded ensembles on 8 forced CPU devices.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): the device
count must be set before jax starts, so ``tests/test_ensemble.py`` runs this file in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python -m pytest tests/sharding_checks.py -q -p no:cacheprovider
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr

N = 16
EPS32 = float(np.finfo(np.float32).eps)
# A sharded step runs the same per-member float32 operations as the unsharded one, but XLA may
# tile the (8, 3) @ (3, 4) matmuls and the batch means differently per device count: a few ulp
# of the values (|params| ~ 1, a handful of accumulated terms), times two Adam steps.
ATOL = 64 * EPS32


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip(f"needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), got {jax.devices()}")


def _init(rng):
    k1, k2 = jax.random.split(rng)
    return {"w": jax.random.normal(k1, (3, 4)), "b": jnp.zeros(4), "v": jax.random.normal(k2, (4, 1))}


def _loss(p, batch, rng, h):
    x, y = batch
    hid = jr.dropout(rng, jnp.tanh(x @ p["w"] + p["b"][None]), 0.25)
    return jnp.mean((hid @ p["v"] - y) ** 2) + h(p)


_OPT = optax.adam(1e-2)


def _setup():
    params = jr.ensemble.init(_init, jax.random.key(0), N)
    state = jax.vmap(_OPT.init)(params)
    batch = (jax.random.normal(jax.random.key(1), (N, 8, 3)), jax.random.normal(jax.random.key(2), (N, 8, 1)))
    pens = jr.l2(jnp.linspace(0.0, 0.1, N), mask=jr.masks.kernels)
    return params, state, batch, pens


def _mesh():
    return jax.make_mesh((8,), ("members",))


@pytest.mark.parametrize("chunk_size", [None, 8, 16])
def test_sharded_step_with_stacked_keys_equals_unsharded(chunk_size):
    params, state, batch, pens = _setup()
    keys = jax.random.split(jax.random.key(3), N)
    step = jax.jit(jr.ensemble.train_step(_loss, _OPT, batch_axis=0, chunk_size=chunk_size))
    ref = step(params, state, batch, keys, pens)
    sharded = jr.ensemble.shard((params, state, batch, keys, pens), _mesh())
    assert len(sharded[0]["w"].sharding.device_set) == 8
    out = step(*sharded)
    assert len(out[0]["w"].sharding.device_set) == 8, out[0]["w"].sharding
    chex.assert_trees_all_close(out, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_sharded_step_with_one_key_equals_unsharded(chunk_size):
    # The README's recipe: shard params, state, batch and hparams, pass ONE key.
    params, state, batch, pens = _setup()
    step = jax.jit(jr.ensemble.train_step(_loss, _OPT, batch_axis=0, chunk_size=chunk_size))
    key = jax.random.key(4)
    ref = step(params, state, batch, key, pens)
    sp, ss, sb, sh = jr.ensemble.shard((params, state, batch, pens), _mesh())
    out = step(sp, ss, sb, key, sh)
    assert len(out[0]["w"].sharding.device_set) == 8, out[0]["w"].sharding
    chex.assert_trees_all_close(out, ref, rtol=0, atol=ATOL)


def test_sharded_predict_equals_unsharded():
    params, _, batch, _ = _setup()
    apply = jax.jit(lambda p, x: jr.ensemble.predict(lambda q, x: jnp.tanh(x @ q["w"] + q["b"][None]) @ q["v"], p, x))
    sp = jr.ensemble.shard(params, _mesh())
    # Means and variances over 16 members of outputs ~ 1: 16 terms of float32 rounding.
    chex.assert_trees_all_close(apply(sp, batch[0][0]), apply(params, batch[0][0]), rtol=0, atol=16 * 4 * EPS32)


def test_shard_passes_a_leafless_optimizer_state_through():
    # optax.sgd's state is EmptyState(): nothing to place, and the step must still run sharded.
    params, _, batch, pens = _setup()
    sgd = optax.sgd(0.1)
    state = jax.vmap(sgd.init)(params)
    assert jax.tree.leaves(state) == [] and jr.ensemble.shard(state, _mesh()) == state
    step = jax.jit(jr.ensemble.train_step(_loss, sgd, batch_axis=0))
    key = jax.random.key(5)
    ref = step(params, state, batch, key, pens)
    sp, ss, sb, sh = jr.ensemble.shard((params, state, batch, pens), _mesh())
    out = step(sp, ss, sb, key, sh)
    assert len(out[0]["w"].sharding.device_set) == 8, out[0]["w"].sharding
    chex.assert_trees_all_close(out, ref, rtol=0, atol=ATOL)


def test_shard_rejects_members_not_a_multiple_of_the_devices():
    with pytest.raises(
        ValueError, match=r"number of members \(12\) must be a multiple of the mesh axis 'members' of size 8"
    ):
        jr.ensemble.shard({"w": jnp.zeros((12, 2))}, _mesh())


def _auto_mesh():
    return jax.sharding.Mesh(np.array(jax.devices()), ("members",), axis_types=(jax.sharding.AxisType.Auto,))


def test_chunks_under_explicit_sharding_must_split_over_the_devices():
    # jax.make_mesh's axes are explicit: the sharding is part of the type, and a chunk of 4 members
    # cannot be split over 8 devices. A clear error naming chunk_size, not XLA's reshape error.
    params, state, batch, pens = _setup()
    sharded = jr.ensemble.shard((params, state, batch, pens), _mesh())
    step = jax.jit(jr.ensemble.train_step(_loss, _OPT, batch_axis=0, chunk_size=4))
    with pytest.raises(ValueError, match=r"ensemble.map: chunk_size must be a multiple of the 8 devices .* = 4\."):
        step(*sharded[:3], jax.random.key(4), sharded[3])
    # Under automatic axes XLA places the chunks itself: any chunk size runs, equal to unsharded.
    ref = step(params, state, batch, jax.random.key(4), pens)
    out = step(*jr.ensemble.shard((params, state, batch), _auto_mesh()), jax.random.key(4), pens)
    chex.assert_trees_all_close(out, ref, rtol=0, atol=ATOL)


def test_automatic_chunks_split_over_explicitly_sharded_devices():
    from jaxreg import _chunking

    x = jr.ensemble.shard(jnp.zeros((N, 2)), _mesh())
    assert _chunking.explicit_shards([x]) == 8
    assert _chunking.explicit_shards([jr.ensemble.shard(jnp.zeros((N, 2)), _auto_mesh())]) == 1
    # The static rule's 3 items per chunk become 8 (a multiple of the devices); nothing is timed.
    chunk = _chunking.resolve_chunk(None, N, where="t", program=None, args=([x],), item_jaxpr=None, static=3)
    assert chunk == 8


def test_only_a_sharded_item_axis_rounds_the_chunk():
    from jaxreg import _chunking

    # mc_dropout's items are its mask keys: an input x sharded over its batch axis does not make
    # the chunks split over the devices (3 masks per chunk stay 3, not 8: memory is their bound).
    x = jr.ensemble.shard(jnp.zeros((N, 2)), _mesh())
    keys = jax.random.split(jax.random.key(0), N)
    kwargs = dict(where="t", program=None, args=([x], keys), item_jaxpr=None, static=3)
    assert _chunking.resolve_chunk(None, N, items=keys, **kwargs) == 3
    assert _chunking.resolve_chunk(None, N, items=[x], **kwargs) == 8


def test_a_chunk_that_does_not_split_over_the_devices_names_the_caller():
    params = jr.ensemble.shard(jnp.ones((N, 2)), _mesh())
    with pytest.raises(ValueError, match=r"^ensemble\.predict: chunk_size must be a multiple of the 8 devices"):
        jr.ensemble.predict(lambda p, x: p * x, params, 1.0, chunk_size=4)


def test_unjitted_automatic_step_on_several_devices_is_not_timed(monkeypatch):
    # Several devices: the tuner would compile candidates placed unlike the real arguments
    # (a chunk of one member crashed under jax.set_mesh); the static rule is used.
    monkeypatch.setenv("JAXREG_AUTOTUNE", "1")
    params, state, batch, pens = _setup()
    step = jr.ensemble.train_step(_loss, _OPT, batch_axis=0)
    ref = jax.jit(step)(params, state, batch, jax.random.key(4), pens)
    mesh = _mesh()
    sharded = jr.ensemble.shard((params, state, batch, pens), mesh)
    with jax.set_mesh(mesh):
        out = step(*sharded[:3], jax.random.key(4), sharded[3])
    chex.assert_trees_all_close(out, ref, rtol=0, atol=ATOL)


def test_unjitted_automatic_map_on_one_of_several_devices_is_timed(monkeypatch):
    # Arrays on one device of several: the candidates run where the call runs, so they are timed
    # (before, any machine with several devices fell back to the static rule).
    from jaxreg import _chunking

    monkeypatch.setenv("JAXREG_AUTOTUNE", "1")
    monkeypatch.delenv("JAXREG_AUTOTUNE_CACHE", raising=False)
    monkeypatch.setattr(_chunking, "_CACHE", {})
    device = jax.devices()[3]
    x = jax.device_put(jnp.arange(N * 3.0).reshape(N, 3), device)
    out = jr.ensemble.map(lambda a: jnp.sin(a) * 2.0)(x)
    assert len(_chunking._CACHE) == 1 and out.devices() == {device}
    np.testing.assert_allclose(np.asarray(out), np.sin(np.asarray(x)) * 2.0, rtol=4 * EPS32, atol=4 * EPS32)
    # spread over the devices: not timed (nothing added to the cache)
    jr.ensemble.map(lambda a: jnp.sin(a) * 2.0)(jr.ensemble.shard(x, _mesh()))
    assert len(_chunking._CACHE) == 1
    # An uncommitted array runs where jit puts it, the default device, as host values do.
    loose = jnp.ones(3)
    with jax.default_device(jax.devices()[2]):
        assert _chunking._one_device((loose, 1.0)) == jax.devices()[2]
        assert jax.jit(lambda a: a + 1)(loose).devices() == {jax.devices()[2]}


def _fit_step(st, batch, rng, seen=None):
    """A member's training step for jr.fit; ``seen`` collects the stacked kernel's sharding per compile."""
    p, o, h = st
    if seen is not None:
        jax.debug.inspect_array_sharding(p["w"], callback=seen.append)
    value, g = jax.value_and_grad(_loss)(p, batch, rng, h)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction: b ** count (int32)
        u, o = _OPT.update(g, o, p)
    return (optax.apply_updates(p, u), o, h), value


def _fit_evaluate(st, data):
    p = st[0]
    return jnp.mean((jnp.tanh(data[0] @ p["w"] + p["b"][None]) @ p["v"] - data[1]) ** 2)


def test_fit_on_an_explicitly_sharded_ensemble_equals_unsharded():
    # jax.make_mesh's explicit axes: fit runs the chunk program under automatic axes on the same
    # devices and gives the state back placed as it came.
    params, state, _, pens = _setup()
    x, y = jax.random.normal(jax.random.key(1), (32, 3)), jax.random.normal(jax.random.key(2), (32, 1))

    kw = dict(
        rng=jax.random.key(5), num_steps=20, batch_size=8, eval_every=5, num_members=N, progress=False,
        early_stopping=jr.EarlyStopping(jnp.arange(N) % 3 + 1),
    )  # fmt: skip
    ref = jr.fit(_fit_step, _fit_evaluate, (params, state, pens), (x, y), (x, y), **kw)
    sharded = jr.ensemble.shard((params, state, pens), _mesh())
    out = jr.fit(_fit_step, _fit_evaluate, sharded, (x, y), (x, y), **kw)
    chex.assert_trees_all_close(out.state, ref.state, rtol=0, atol=ATOL)
    chex.assert_trees_all_close(out.history, ref.history, rtol=0, atol=ATOL)
    assert out.state[0]["w"].sharding == sharded[0]["w"].sharding


def test_fit_resumes_a_sharded_state_from_its_checkpoint(tmp_path):
    """orbax restored the early-stopping leaves committed to one device while the state came
    back sharded: the next chunk refused the mix ("incompatible devices for jitted computation")."""
    params, state, _, pens = _setup()
    x, y = jax.random.normal(jax.random.key(1), (32, 3)), jax.random.normal(jax.random.key(2), (32, 1))
    kw = dict(rng=jax.random.key(5), num_steps=20, batch_size=8, eval_every=5, num_members=N, progress=False)
    sharded = jr.ensemble.shard((params, state, pens), _auto_mesh())

    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop

    with pytest.raises(Stop):  # killed after the first chunk's checkpoint
        jr.fit(_fit_step, None, sharded, (x, y), checkpoint_dir=tmp_path, callback=stop, steps_per_chunk=10, **kw)
    seen = []  # the steps done at each chunk's end: a resume runs only the second chunk
    resumed = jr.fit(
        _fit_step, None, sharded, (x, y), checkpoint_dir=tmp_path, steps_per_chunk=10,
        callback=lambda n, h, s: seen.append(n), **kw,
    )  # fmt: skip
    assert seen == [20]
    full = jr.fit(_fit_step, None, sharded, (x, y), steps_per_chunk=10, **kw)
    chex.assert_trees_all_equal(resumed.state, full.state)
    chex.assert_trees_all_equal(resumed.history, full.history)
    assert resumed.state[0]["w"].sharding == sharded[0]["w"].sharding


@pytest.mark.parametrize("mesh", [_mesh, _auto_mesh])
def test_fit_keeps_the_member_axis_sharded_after_compaction(mesh):
    # Members 0-7 stop at their second evaluation (patience 1, an improvement of 1e9 needed);
    # compaction then runs the 8 left. Those must stay split over the 8 devices (one member
    # each), not gathered onto every device; the numbers are those of the unsharded run.
    params, state, _, pens = _setup()
    x, y = jax.random.normal(jax.random.key(1), (32, 3)), jax.random.normal(jax.random.key(2), (32, 1))
    seen = []  # the stacked kernel's sharding in each compiled chunk program (16 members, then 8)

    step = functools.partial(_fit_step, seen=seen)

    stopper = jr.EarlyStopping(jnp.where(jnp.arange(N) < 8, 1, 100), min_delta=jnp.where(jnp.arange(N) < 8, 1e9, 0.0))
    kw = dict(
        rng=jax.random.key(5), num_steps=40, batch_size=8, eval_every=5, num_members=N, progress=False,
        early_stopping=stopper, steps_per_chunk=5,
    )  # fmt: skip
    ref = jr.fit(step, _fit_evaluate, (params, state, pens), (x, y), (x, y), **kw)
    seen.clear()
    out = jr.fit(step, _fit_evaluate, jr.ensemble.shard((params, state, pens), mesh()), (x, y), (x, y), **kw)
    assert out.member_steps_computed == ref.member_steps_computed < N * 40  # compaction ran
    assert len(seen) >= 2 and all(len(sh.device_set) == 8 and not sh.is_fully_replicated for sh in seen), seen
    chex.assert_trees_all_close(out.state, ref.state, rtol=0, atol=ATOL)


@pytest.mark.parametrize("mesh", [_mesh, _auto_mesh])
def test_chunked_refuses_a_state_placed_on_several_devices(mesh):
    sharded = jr.ensemble.shard({"w": jnp.zeros((N, 2))}, mesh())
    with pytest.raises(
        ValueError,
        match=r"^chunk: a Chunked state holds its blocks on one device, but tree's leaf 'w' is placed on 8 devices",
    ):
        jr.ensemble.chunk(sharded, 8)


_ES_X = jax.random.normal(jax.random.key(2), (32, 16))
_ES_PARAMS = {"w": 0.3 * jax.random.normal(jax.random.key(1), (16, 8)), "b": jnp.zeros(8)}


def _es_loss(p, x=_ES_X):
    return jnp.mean(jnp.tanh(x @ p["w"] + p["b"][None]))  # in [-1, 1]


# Each branch of the estimate: antithetic raw sums, the non-antithetic reference shift merged
# over chunks and devices, ranks in one block, ranks in two passes.
@pytest.mark.parametrize(
    ("antithetic", "shaping", "chunk_size"),
    [(True, None, None), (False, None, 4), (True, "centered_ranks", None), (False, "centered_ranks", 4)],
)
def test_es_population_split_over_a_mesh_equals_one_device(antithetic, shaping, chunk_size):
    mesh = jax.make_mesh((4, 2), ("a", "b"))  # both axes split the directions
    n, sigma = 64, 1.0
    kw = dict(sigma=sigma, population=n, antithetic=antithetic, fitness_shaping=shaping, chunk_size=chunk_size)
    whole = jr.es.gradient(_es_loss, _ES_PARAMS, jax.random.key(0), **kw)
    split = jr.es.gradient(_es_loss, _ES_PARAMS, jax.random.key(0), mesh=mesh, **kw)
    jitted = jax.jit(lambda p, k, x: jr.es.gradient(lambda q: _es_loss(q, x), p, k, mesh=mesh, **kw))
    # The same directions and coefficients (|f| <= 1: |c| <= 2; utilities |c| <= 1), summed per
    # device then across: n terms |c e| / (n s) <= 2 * 6 / (n s), reordered: tol = n eps 12 / s.
    atol = n * EPS32 * 12 / sigma
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(whole)) > 100 * atol
    for got in (split, jitted(_ES_PARAMS, jax.random.key(0), _ES_X)):
        chex.assert_trees_all_close(got, whole, rtol=0, atol=atol)
        assert got["w"].sharding.is_fully_replicated


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_es_population_split_takes_params_sharded_over_the_mesh(axis_type):
    # The params replicated on the mesh first: sharded ones did not match shard_map's in_specs.
    mesh = jax.make_mesh((8,), ("pop",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    sharded = {
        **_ES_PARAMS,
        "w": jax.device_put(_ES_PARAMS["w"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("pop"))),
    }
    kw = dict(sigma=1.0, population=16)
    got = jr.es.gradient(_es_loss, sharded, jax.random.key(0), mesh=mesh, **kw)
    chex.assert_trees_all_close(
        got, jr.es.gradient(_es_loss, _ES_PARAMS, jax.random.key(0), **kw), rtol=0, atol=16 * EPS32 * 12
    )


def test_es_population_split_divides_each_devices_work():
    # XLA's own cost analysis of the compiled programs: per device, an eighth of the evaluations.
    mesh = jax.make_mesh((8,), ("pop",))

    def flops(m):
        fn = jax.jit(lambda p, k: jr.es.gradient(_es_loss, p, k, sigma=0.1, population=256, chunk_size=256, mesh=m))
        cost = fn.lower(_ES_PARAMS, jax.random.key(0)).compile().cost_analysis()
        return (cost if isinstance(cost, dict) else cost[0])["flops"]

    assert flops(mesh) < flops(None) / 6


def test_es_population_must_split_evenly_over_the_mesh():
    mesh = jax.make_mesh((8,), ("pop",))
    with pytest.raises(
        ValueError, match=r"population / 2 \(the \+/- pairs\) must be a multiple of 8, got population = 20"
    ):
        jr.es.gradient(_es_loss, _ES_PARAMS, jax.random.key(0), sigma=0.1, population=20, mesh=mesh)
    with pytest.raises(
        ValueError, match=r"es.value_and_gradient: .* population must be a multiple of 8, got population = 12"
    ):
        jr.es.value_and_gradient(
            _es_loss, _ES_PARAMS, jax.random.key(0), sigma=0.1, population=12, antithetic=False, mesh=mesh
        )


def test_automatic_chunks_outside_jit_split_over_a_mesh_of_automatic_axes():
    from jaxreg import _chunking

    # Outside jit an array placed on automatic axes says where it is (.sharding; its type does
    # not): the static rule's 3 members per chunk became chunks that did not split, and XLA
    # gathered every member onto every device. Inside jit its type says nothing: 3 stays.
    x = jr.ensemble.shard(jnp.zeros((N, 2)), _auto_mesh())
    assert _chunking.placed_shards([x]) == 8 and _chunking.explicit_shards([x]) == 1
    assert _chunking.resolve_chunk(None, N, where="t", program=None, args=([x],), item_jaxpr=None, static=3) == 8
    w = jr.ensemble.shard(jax.random.normal(jax.random.key(0), (N, 3, 2)), _auto_mesh())
    out = jr.ensemble.map(lambda w, v: jnp.tanh(v @ w), in_axes=(0, None))(w, jnp.ones((5, 3)))
    assert out.sharding.spec[0] == "members"  # members stay split: no gather
    # tanh of 3-term products, |y| <= 1
    chex.assert_trees_all_close(out, jax.vmap(lambda w: jnp.tanh(jnp.ones((5, 3)) @ w))(w), rtol=0, atol=4 * EPS32)


@pytest.mark.parametrize("spec", [(), ("pop",)])
def test_es_split_over_explicit_axes_takes_a_loss_closing_over_a_batch_placed_on_the_mesh(spec):
    # jax.shard_map cannot close over an array on a mesh of explicit axes (NotImplementedError):
    # the loss's closed-over arrays are passed in as arguments. Eager and under jit, the
    # one-device estimate.
    mesh = jax.make_mesh((8,), ("pop",))
    placed = jax.device_put(_ES_X, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))
    kw = dict(sigma=1.0, population=32)
    whole = jr.es.gradient(_es_loss, _ES_PARAMS, jax.random.key(0), **kw)
    eager = jr.es.gradient(lambda p: _es_loss(p, placed), _ES_PARAMS, jax.random.key(0), mesh=mesh, **kw)
    jitted = jax.jit(lambda p, k, x: jr.es.gradient(lambda q: _es_loss(q, x), p, k, mesh=mesh, **kw))
    for got in (eager, jitted(_ES_PARAMS, jax.random.key(0), placed)):
        chex.assert_trees_all_close(got, whole, rtol=0, atol=32 * EPS32 * 12)


def test_an_eager_placement_error_names_the_callers_argument_not_the_cached_program():
    # Called outside jit through the eager cache, jit's placement check named the cached
    # program's input and printed the whole program (1.5 to 29 thousand characters).
    params = jr.ensemble.shard(jnp.ones((N, 3)), _mesh())
    x = jax.device_put(jnp.ones((5, 3)), jax.devices()[5])
    with pytest.raises(ValueError, match="incompatible devices") as info:
        jr.ensemble.map(lambda p, v: v @ p, in_axes=(0, None), chunk_size=8)(params, x)
    assert "lambda ;" not in str(info.value) and len(str(info.value)) < 1000, str(info.value)[:300]


@pytest.mark.parametrize("unplaced", ["hparams", "rng", "batch"])
def test_train_step_names_a_mapped_argument_placed_unlike_the_params(unplaced):
    # vmap refused the mix naming no argument ("inconsistent axis specs: members vs None").
    params, state, batch, _ = _setup()
    hp = jnp.linspace(0.1, 1.0, N)
    keys = jax.random.split(jax.random.key(0), N)
    args = dict(
        zip(
            ("params", "state", "batch", "rng", "hparams"), jr.ensemble.shard((params, state, batch, keys, hp), _mesh())
        )
    )
    args[unplaced] = {"hparams": hp, "rng": keys, "batch": batch}[unplaced]
    loss = lambda p, b, r, h: h * _loss(p, b, r, lambda q: 0.0)  # noqa: E731
    step = jax.jit(jr.ensemble.train_step(loss, _OPT, batch_axis=0))
    with pytest.raises(
        ValueError,
        match=rf"^ensemble.train_step: the mapped arguments split the member axis differently over the mesh: {unplaced} leaf .* over None, params leaf .* over 'members'",
    ):
        step(*args.values())


def test_es_split_over_explicit_axes_names_a_loss_that_cannot_move_into_the_map():
    # A loss with an inner jit (jax.nn.relu) keeps the explicit placement it was traced with:
    # jax's NotImplementedError became a ValueError saying how to place the closed-over batch;
    # unplaced, the same loss splits over the mesh.
    mesh = jax.make_mesh((8,), ("pop",))
    placed = jax.device_put(_ES_X, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    kw = dict(sigma=1.0, population=32, mesh=mesh)
    relu_loss = lambda p, x: jnp.mean(jax.nn.relu(x @ p["w"] + p["b"][None]))  # noqa: E731
    with pytest.raises(
        ValueError, match=r"^es.gradient: with mesh=, loss_fn closes over an array placed on a mesh of explicit axes"
    ):
        jr.es.gradient(lambda p: relu_loss(p, placed), _ES_PARAMS, jax.random.key(0), **kw)
    got = jr.es.gradient(lambda p: relu_loss(p, _ES_X), _ES_PARAMS, jax.random.key(0), **kw)
    whole = jr.es.gradient(lambda p: relu_loss(p, _ES_X), _ES_PARAMS, jax.random.key(0), sigma=1.0, population=32)
    chex.assert_trees_all_close(got, whole, rtol=0, atol=32 * EPS32 * 12)
