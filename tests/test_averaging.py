"""EMA, SWA and SWAG against torch.optim.swa_utils.AveragedModel and float64 numpy over the same trajectory."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr

EPS32 = float(jnp.finfo(jnp.float32).eps)
T = 25


def init_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (3, 2)), "b": jax.random.normal(k2, (2,))}


def noisy_grad(params, t):
    """The gradient of 0.5 * |p|^2 plus fresh noise at every step: a fluctuating trajectory."""
    keys = jax.random.split(jax.random.fold_in(jax.random.key(1), t), 2)
    noise = {"w": jax.random.normal(keys[0], (3, 2)), "b": jax.random.normal(keys[1], (2,))}
    return jax.tree.map(lambda p, n: p + n, params, noise)


def run_impl(opt, params, num_steps=T):
    """Trains with ``opt`` and returns (final opt state, the params after every update, stacked)."""

    def step(carry, t):
        params, state = carry
        updates, state = opt.update(noisy_grad(params, t), state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    (_, state), trajectory = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(num_steps))
    return state, trajectory


run = jax.jit(run_impl, static_argnums=(0, 2))


def snapshots(trajectory, params0):
    """w_0, w_1, ..., w_T as float64 numpy, each a dict."""
    traj = jax.tree.map(np.asarray, trajectory)
    first = {k: np.asarray(v, np.float64) for k, v in params0.items()}
    return [first] + [{k: np.asarray(traj[k][t], np.float64) for k in traj} for t in range(T)]


def torch_average(snaps, **kwargs):
    """torch.optim.swa_utils.AveragedModel (float64) fed the given snapshots in order."""
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import AveragedModel

    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    module.b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    averaged = AveragedModel(module, **kwargs)
    for snap in snaps:
        with torch.no_grad():
            module.w.copy_(torch.from_numpy(snap["w"]))
            module.b.copy_(torch.from_numpy(snap["b"]))
        averaged.update_parameters(module)
    return {"w": averaged.module.w.detach().numpy(), "b": averaged.module.b.detach().numpy()}


def bound(snaps):
    """Float32 round-off bound of a running average over T steps: each step adds at most ~3 ulps
    of the largest magnitude (a subtraction, a product, a sum), and old errors shrink, never grow."""
    return 3 * T * EPS32 * max(float(np.max(np.abs(s[k]))) for s in snaps for k in s)


def assert_close(got, expected, atol):
    for k in expected:
        np.testing.assert_allclose(np.asarray(got[k], np.float64), expected[k], rtol=0, atol=atol, err_msg=k)


def test_ema_matches_torch_averaged_model():
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    del torch
    params = init_params()
    state, traj = run(optax.chain(optax.sgd(0.1), jr.ema(0.9)), params)
    snaps = snapshots(traj, params)
    expected = torch_average(snaps, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    assert_close(jr.averaged_params(state), expected, bound(snaps))
    # and the average really differs from the last params (the test could fail)
    assert np.max(np.abs(expected["w"] - snaps[-1]["w"])) > 100 * bound(snaps)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.99, 1.0])
def test_ema_debias_is_the_bias_corrected_average(decay):
    """sum_t (1-d) d^(T-t) w_t / (1 - d^T) over w_1..w_T (float64); d = 1: the uniform mean, d = 0: w_T."""
    params = init_params()
    state, traj = run(optax.chain(optax.sgd(0.1), jr.ema(decay, debias=True)), params)
    snaps = snapshots(traj, params)[1:]
    if decay == 1.0:
        weights = np.full(T, 1.0 / T)
    else:
        weights = np.array([(1 - decay) * decay ** (T - t) for t in range(1, T + 1)]) / (1 - decay**T)
    expected = {k: sum(w * s[k] for w, s in zip(weights, snaps)) for k in snaps[0]}
    # the debiased weight (1-d)/(1-d^t) carries a few ulps of its own (expm1/log1p) per step
    assert_close(jr.averaged_params(state), expected, 2 * bound(snaps))


def test_swa_matches_torch_and_numpy():
    params = init_params()
    state, traj = run(optax.chain(optax.sgd(0.1), jr.swa(start=3, every=4)), params)
    snaps = snapshots(traj, params)
    taken = [snaps[t] for t in range(3, T + 1, 4)]  # the params after updates 3, 7, ..., 23
    expected = {k: np.mean([s[k] for s in taken], axis=0) for k in taken[0]}
    assert int(state[1].num_averaged) == len(taken) == 6
    assert_close(jr.averaged_params(state), expected, bound(snaps))
    assert_close(jr.averaged_params(state), torch_average(taken), bound(snaps))


def test_swa_from_start_zero_includes_the_initial_params():
    params = init_params()
    state, traj = run(optax.chain(optax.sgd(0.1), jr.swa(start=0, every=5)), params)
    snaps = snapshots(traj, params)
    taken = [snaps[t] for t in range(0, T + 1, 5)]
    expected = {k: np.mean([s[k] for s in taken], axis=0) for k in taken[0]}
    assert_close(jr.averaged_params(state), expected, bound(snaps))


def test_swa_before_start_is_the_current_params():
    params = init_params()
    state, traj = run(optax.chain(optax.sgd(0.1), jr.swa(start=100)), params)
    chex.assert_trees_all_equal(jr.averaged_params(state), jax.tree.map(lambda a: a[-1], traj))


def swag_run(rank=3, start=2, every=3):
    params = init_params()
    state, traj = run(optax.chain(optax.sgd(0.1), jr.swag(start, every, rank)), params)
    snaps = snapshots(traj, params)
    return state[1], [snaps[t] for t in range(start, T + 1, every)], snaps


def numpy_swag(taken, rank):
    """Maddox et al.'s moments and deviation columns (deviation from the mean after each snapshot)."""
    mean = {k: np.mean([s[k] for s in taken], axis=0) for k in taken[0]}
    sq = {k: np.mean([s[k] ** 2 for s in taken], axis=0) for k in taken[0]}
    columns = {}
    for i in range(len(taken)):
        running = {k: np.mean([s[k] for s in taken[: i + 1]], axis=0) for k in taken[0]}
        columns[i % rank] = {k: taken[i][k] - running[k] for k in taken[0]}
    return mean, sq, columns


def test_swag_moments_and_deviations_match_numpy():
    state, taken, snaps = swag_run()
    assert int(state.num_averaged) == len(taken) == 8
    mean, sq, columns = numpy_swag(taken, 3)
    atol = bound(snaps)
    assert_close(jr.averaged_params((state,)), mean, atol)
    assert_close(state.sq_mean, sq, 2 * atol * max(1.0, float(np.max(np.abs(snaps[-1]["w"])))))
    # the diagonal variance, E[w^2] - E[w]^2, to the cancellation bound of float32 (atol on E[w^2])
    var = {k: sq[k] - mean[k] ** 2 for k in sq}
    got_var = {k: np.asarray(state.sq_mean[k], np.float64) - np.asarray(state.mean[k], np.float64) ** 2 for k in sq}
    assert_close(got_var, var, 8 * atol * max(1.0, max(float(np.max(sq[k])) for k in sq)))
    assert min(float(np.min(v)) for v in var.values()) > 1e-3  # a real spread, not round-off
    for col, dev in columns.items():
        assert_close({k: state.deviations[k][col] for k in dev}, dev, 4 * atol)


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(tree[k], np.float64)) for k in ("b", "w")])


def test_swag_sample_mean_and_low_rank_covariance():
    """Empirical mean and covariance of 40000 samples vs s (diag(var) + D D^T / (K - 1)), 6 standard errors."""
    state, taken, _ = swag_run()
    mean, sq, columns = numpy_swag(taken, 3)
    n, scale = 40000, 0.5
    samples = jax.jit(jax.vmap(lambda k: jr.swag_sample((state,), k, scale=scale)))(
        jax.random.split(jax.random.key(7), n)
    )
    x = np.concatenate([np.asarray(samples["b"], np.float64), np.asarray(samples["w"], np.float64).reshape(n, -1)], 1)
    mu = flat(mean)
    d = np.stack([flat(columns[c]) for c in range(3)], axis=1)  # (p, K)
    diag = np.diag(flat(sq) - mu**2)
    sigma = scale * (diag + d @ d.T / (3 - 1))
    p = mu.shape[0]
    se_mean = np.sqrt(np.diag(sigma) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - mu), 6 * se_mean)
    emp = np.cov(x, rowvar=False, ddof=1)
    # Var of a sample covariance entry of a Gaussian: (S_ij^2 + S_ii S_jj) / n
    se_cov = np.sqrt((sigma**2 + np.outer(np.diag(sigma), np.diag(sigma))) / n)
    np.testing.assert_array_less(np.abs(emp - sigma), 6 * se_cov + 1e-12)
    # the low-rank part is visible: the diagonal-only covariance is rejected by the same bound
    off = ~np.eye(p, dtype=bool)
    assert np.any(np.abs(emp - scale * diag)[off] > 6 * se_cov[off])


def test_swag_sample_with_ensemble_predict_is_a_prediction():
    state, _, _ = swag_run()
    keys = jax.random.split(jax.random.key(3), 8)
    x = jnp.ones((4, 3))

    @jax.jit
    def bma(state, keys):
        stacked = jax.vmap(lambda k: jr.swag_sample((state,), k))(keys)
        return stacked, jr.ensemble.predict(lambda p, x: x @ p["w"] + p["b"][None], stacked, x)

    stacked, pred = bma(state, keys)
    assert isinstance(pred, jr.Prediction)
    outs = np.stack([np.asarray(x) @ np.asarray(stacked["w"][i]) + np.asarray(stacked["b"][i]) for i in range(8)])
    np.testing.assert_allclose(pred.mean, outs.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.variance, outs.var(0), rtol=1e-4, atol=1e-5)


def train_avg(decay, num_steps=10):
    params = init_params()
    opt = optax.chain(optax.sgd(0.1), jr.ema(0.0))  # update reads the decay from the state
    state = optax.chain(optax.sgd(0.1), jr.ema(decay)).init(params)

    def step(carry, t):
        params, state = carry
        updates, state = opt.update(noisy_grad(params, t), state, params)
        return (optax.apply_updates(params, updates), state), None

    (_, state), _ = jax.lax.scan(step, (params, state), jnp.arange(num_steps))
    return jr.averaged_params(state)


def test_sweep_over_decays_is_one_vmap_without_recompiles():
    decays = jnp.array([0.0, 0.5, 0.9, 0.99])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sweep(decays):
        return jax.vmap(train_avg)(decays)

    swept = sweep(decays)
    for i, d in enumerate(decays.tolist()):
        single = jax.jit(train_avg)(d)
        # same float32 operations in the same order; vmap may fuse differently: a few ulps
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], swept), single, atol=10 * EPS32, rtol=10 * EPS32)
    assert not np.allclose(swept["w"][0], swept["w"][3])
    sweep(decays[::-1])  # new values: no retrace


def test_ensemble_map_runs_members_like_vmap():
    decays = jnp.array([0.1, 0.5, 0.9])
    mapped = jr.ensemble.map(train_avg, chunk_size=2)(decays)
    vmapped = jax.vmap(train_avg)(decays)
    chex.assert_trees_all_close(mapped, vmapped, atol=10 * EPS32, rtol=10 * EPS32)


@pytest.mark.parametrize("make", [lambda: jr.swa(start=2, every=2), lambda: jr.swag(2, 2, rank=2)])
def test_fit_freezes_the_average_of_stopped_members(make):
    """Member 0 stops after the second evaluation (its metric never improves again); its averaged
    params equal those of a plain loop of exactly that many steps, while member 1 trains on."""
    opt = optax.chain(optax.sgd(0.05), make())
    x = jnp.ones((8, 3))  # identical rows: every batch order gives the same (exact) gradient
    y = jnp.full((8,), 2.0)

    def loss_fn(w, x, y):
        return jnp.mean(jnp.square(x @ w - y))

    def step(state, batch, rng):
        del rng
        w, opt_state = state
        loss, g = jax.value_and_grad(loss_fn)(w, *batch)
        updates, opt_state = opt.update(g, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), loss

    def evaluate(state, data):
        del state, data
        return jnp.asarray(1.0, jnp.float32), jnp.asarray(0.0, jnp.float32)  # constant: no improvement

    w0 = jnp.array([0.0, 0.5, -0.5])
    state = jax.vmap(lambda _: (w0, opt.init(w0)))(jnp.arange(2))
    eval_every, num_steps = 4, 16
    result = jr.fit(
        step,
        evaluate,
        state,
        (x, y),
        None,
        rng=jax.random.key(0),
        num_steps=num_steps,
        batch_size=8,
        eval_every=eval_every,
        num_members=2,
        early_stopping=jr.EarlyStopping(jnp.array([1, 100])),
        progress=False,
    )
    assert np.asarray(result.stopping.stopped).tolist() == [True, False]

    def loop(num):
        s = (w0, opt.init(w0))
        for _ in range(num):
            s, _ = jax.jit(step)(s, (x, y), None)
        return s

    final = jr.averaged_params(result.state[1])
    chex.assert_trees_all_close(final[0], jr.averaged_params(loop(2 * eval_every)[1]), atol=4 * EPS32)
    chex.assert_trees_all_close(final[1], jr.averaged_params(loop(num_steps)[1]), atol=4 * EPS32)
    assert not np.allclose(final[0], final[1])


BAD = [
    (lambda: jr.ema(1.5), r"ema: decay must be in \[0, 1\], got decay = 1\.5\."),
    (lambda: jr.ema(-0.1), r"ema: decay must be in \[0, 1\], got decay = -0\.1\."),
    (lambda: jr.swa(-1), r"swa: start must be an integer in \[0, 2147483647\], got start = -1\."),
    (lambda: jr.swag(2**40), r"swag: start must be an integer in \[0, 2147483647\], got start = 1099511627776\."),
    (lambda: jr.swa(2, every=0), r"swa: every must be an integer in \[1, 2147483647\], got every = 0\."),
    (lambda: jr.swag(0, 1, rank=-1), r"swag: rank must be an int >= 0, got rank = -1"),
    (lambda: jr.swag(0, 1, rank=2.0), r"swag: rank must be an int >= 0, got rank = 2\.0"),
    (lambda: jr.ema(0.9).update(jnp.ones(2), jr.ema(0.9).init(jnp.ones(2))), r"ema: needs params"),
    (lambda: jr.swa(1).update(jnp.ones(2), jr.swa(1).init(jnp.ones(2))), r"swa: needs params"),
    (lambda: jr.averaged_params(optax.sgd(0.1).init(jnp.ones(2))), r"averaged_params: opt_state holds no EmaState"),
    (
        lambda: jr.averaged_params(optax.chain(jr.ema(0.5), jr.swa(1)).init(jnp.ones(2))),
        r"averaged_params: opt_state holds 2 averaging states",
    ),
    (
        lambda: jr.swag_sample(jr.ema(0.5).init(jnp.ones(2)), jax.random.key(0)),
        r"swag_sample: opt_state holds no SwagState",
    ),
    (
        lambda: jr.swag_sample(jr.swag(0).init(jnp.ones(2)), jax.random.key(0), scale=-1.0),
        r"swag_sample: scale must be finite and >= 0, got scale = -1\.0",
    ),
    # one value per optimizer: a sweep builds states under vmap (an array would broadcast
    # against the params, or silently average per coordinate)
    (lambda: jr.ema(jnp.array([0.9, 0.99])), r"ema: decay must be a scalar, got decay\.shape = \(2,\)"),
    (lambda: jr.swa(jnp.array([1, 2])), r"swa: start must be a scalar, got start\.shape = \(2,\)"),
    (lambda: jr.swag(0, every=jnp.array([1, 2])), r"swag: every must be a scalar, got every\.shape = \(2,\)"),
]


@pytest.mark.parametrize(("make", "match"), BAD)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [lambda: jr.ema(0.9), lambda: jr.swa(0), lambda: jr.swag(0, rank=2)])
def test_a_state_made_for_other_params_is_refused_by_name(make):
    opt = optax.chain(optax.sgd(0.1), make())
    stale = opt.init({"w": jnp.ones((3, 2))})
    with pytest.raises(
        ValueError, match=r"params must be shaped like init's params, got leaf \['w'\] of shape \(2, 2\)"
    ):
        opt.update({"w": jnp.ones((2, 2))}, stale, {"w": jnp.ones((2, 2))})


def test_swag_sample_refuses_an_int_seed():
    opt = optax.chain(optax.sgd(1.0), jr.swag(start=0, rank=1))
    state = opt.init(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"swag_sample: rng must be a PRNG key.*Got rng = 3\."):
        jr.swag_sample(state, 3)


@pytest.mark.parametrize(("members", "rank"), [(2, 2), (3, 2)])
def test_swag_sample_refuses_a_member_axis(members, rank):
    # The rank would be read off the member axis: with members == rank a wrong covariance and
    # no error, else a broadcasting error from inside jax.
    opt = optax.chain(optax.sgd(0.1), jr.swag(0, rank=rank))
    states = jax.vmap(opt.init)(jnp.zeros((members, 2)))
    with pytest.raises(ValueError, match=r"swag_sample: opt_state has a member axis \(SwagState\.count\.shape = \("):
        jr.swag_sample(states, jax.random.key(0))
    per_member = jax.vmap(lambda s: jr.swag_sample(s, jax.random.key(0)))(states)
    assert per_member.shape == (members, 2)


@pytest.mark.parametrize("kind", ["ema", "ema_debias", "swa"])
def test_float64_params_are_averaged_in_float64(kind):
    """Under x64 the decay and the 1 / (n + 1) weights are float64: a float64 average of float64
    params agrees with numpy's to float64 round-off, not float32's (1e-8)."""
    with jax.enable_x64(True):
        tx = {"ema": jr.ema(0.9), "ema_debias": jr.ema(0.9, debias=True), "swa": jr.swa(0, 1)}[kind]
        opt = optax.chain(optax.sgd(0.1), tx)
        rng = np.random.default_rng(0)
        w = jnp.asarray(rng.normal(size=5))
        state = opt.init(w)
        snaps = [np.asarray(w)]
        for _ in range(T):
            updates, state = opt.update(jnp.asarray(rng.normal(size=5)), state, w)
            w = optax.apply_updates(w, updates)
            snaps.append(np.asarray(w))
        got = np.asarray(jr.averaged_params(state))
    assert got.dtype == np.float64
    if kind == "swa":
        expected = np.mean(snaps, axis=0)
    elif kind == "ema":
        expected = snaps[0]
        for x in snaps[1:]:
            expected = expected + 0.1 * (x - expected)
    else:  # Adam's bias-corrected average of the updated params
        weights = 0.1 * 0.9 ** np.arange(T - 1, -1, -1)
        expected = np.tensordot(weights, np.asarray(snaps[1:]), axes=1) / (1 - 0.9**T)
    scale = max(float(np.max(np.abs(s))) for s in snaps)
    np.testing.assert_allclose(got, expected, rtol=0, atol=3 * T * np.finfo(np.float64).eps * scale)


@pytest.mark.parametrize("debias", [False, True])
def test_ema_gradient_in_decay_matches_finite_differences_on_all_of_0_1(debias):
    # a decay may be a meta-gradient's leaf: finite and right at the endpoints too (one-sided
    # differences there), in float64 where a step of 1e-6 gives ~6 digits
    with jax.enable_x64(True):
        ws = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)))

        def averaged(d):
            tx = jr.ema(d, debias=debias)
            state = tx.init(jnp.zeros(2))
            for w in ws:
                _, state = tx.update(jnp.zeros(2), state, w)
            return jnp.sum(jr.averaged_params(state) * jnp.array([1.0, 2.0]))

        for d in (0.0, 0.3, 0.5, 0.9, 1.0):
            lo, hi = max(d - 1e-6, 0.0), min(d + 1e-6, 1.0)
            fd = (float(averaged(hi)) - float(averaged(lo))) / (hi - lo)
            assert float(jax.grad(averaged)(jnp.float64(d))) == pytest.approx(fd, rel=1e-4, abs=1e-6), d


def test_half_precision_params_are_averaged_in_float32():
    # a bfloat16 EMA of decay 0.99 of params held at 1 stalls near 0.8 (increments below
    # bfloat16's resolution); SWAG's E[w^2] - E[w]^2 of snapshots 1 +- 0.01 cancels in bfloat16
    w0, w1 = jnp.zeros(3, jnp.bfloat16), jnp.ones(3, jnp.bfloat16)
    tx = jr.ema(0.99)

    def ema_step(state, _):
        return tx.update(jnp.zeros(3, jnp.bfloat16), state, w1)[1], None

    state, _ = jax.lax.scan(ema_step, tx.init(w0), None, length=2000)
    avg = jr.averaged_params(state)
    assert avg.dtype == np.float32
    # exact: 1 - 0.99**2000 = 1 - 1.9e-9; float32 rounding of 2000 lerps, each within an ulp of 1
    np.testing.assert_allclose(np.asarray(avg), 1.0, rtol=0, atol=2000 * EPS32)

    snaps = jnp.asarray(1.0 + 0.01 * np.random.default_rng(0).standard_normal((200, 4)), jnp.bfloat16)
    tx = jr.swag(start=0, rank=0)

    def swag_step(state, snap):
        return tx.update(jnp.zeros(4, jnp.bfloat16), state, snap)[1], None

    state, _ = jax.lax.scan(swag_step, tx.init(snaps[0]), snaps[1:])
    exact = np.asarray(snaps, np.float64)
    var = np.asarray(state.sq_mean - jnp.square(state.mean), np.float64)
    # float32 moments of values near 1: the difference of two O(1) numbers to a few ulp of 1
    np.testing.assert_allclose(var, exact.var(0), rtol=0, atol=200 * EPS32)
    np.testing.assert_allclose(np.asarray(jr.averaged_params(state)), exact.mean(0), rtol=0, atol=200 * EPS32)


@pytest.mark.parametrize("make", [lambda: jr.ema(0.9), lambda: jr.swa(0, 1), lambda: jr.swag(0, 1, rank=2)])
def test_a_state_can_be_donated_beside_the_params_it_was_made_from(make):
    # The state owns its buffers (as optax's do): a step donating params and state runs, and
    # gives the numbers of the same step without donation.
    # (optax's sgd meets the integer leaf only through the mask: its -lr * g of an int is refused
    # under strict promotion)
    opt = optax.chain(optax.masked(optax.sgd(0.1), {"w": True, "n": False, "h": True}), make())
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "n": jnp.arange(3), "h": jnp.ones(2, jnp.bfloat16)}
    grads = {"w": jnp.full((4, 3), 0.5), "n": jnp.zeros(3, jnp.int32), "h": jnp.full(2, 0.25, jnp.bfloat16)}

    def step(p, s):
        u, s = opt.update(grads, s, p)
        return optax.apply_updates(p, u), s

    def run(step_fn):
        p = jax.tree.map(jnp.copy, params)
        s = opt.init(p)
        for _ in range(3):
            p, s = step_fn(p, s)
        return p, jr.averaged_params(s[1])

    chex.assert_trees_all_equal(run(jax.jit(step, donate_argnums=(0, 1))), run(jax.jit(step)))


def test_ema_count_saturates_and_keeps_averaging():
    # At the int32 maximum the count stays (optax.safe_increment) and the debiased weight is
    # (1 - d) / (1 - d**t) = 1 - d in float32: the average keeps moving as an EMA does (a wrapped,
    # negative count would make d**t infinite and the weight 0).
    decay, top = 0.5, np.iinfo(np.int32).max
    tx = jr.ema(decay, debias=True)
    w0, w1 = jnp.array([1.0, 2.0]), jnp.array([3.0, 5.0])
    state = tx.init(w0)._replace(count=jnp.int32(top))
    _, state = tx.update(jnp.zeros_like(w1), state, w1)
    assert int(state.count) == top
    ref = decay * np.asarray(w0) + (1 - decay) * np.asarray(w1)
    np.testing.assert_allclose(jr.averaged_params(state), ref, rtol=4 * EPS32)


@pytest.mark.parametrize("make", [lambda: jr.ema(0.5), lambda: jr.swa(0), lambda: jr.swag(0, rank=2)])
def test_a_frozen_leaf_with_a_none_update_is_averaged_as_the_unchanged_param(make):
    """A ``None`` update (a frozen leaf, as optax allows) leaves the param as is: its average is
    the param, and the other leaves average as they do without it."""
    params = {"w": jnp.array([1.0, 2.0]), "frozen": jnp.array([3.0])}
    opt, alone = make(), make()
    state, state_alone = opt.init(params), alone.init({"w": params["w"]})
    w = params["w"]
    for g in ([0.5, -1.0], [0.25, 0.25], [-1.0, 0.5]):
        u = jnp.asarray(g)
        out, state = opt.update({"w": u, "frozen": None}, state, {"w": w, "frozen": params["frozen"]})
        _, state_alone = alone.update({"w": u}, state_alone, {"w": w})
        assert out["frozen"] is None
        w = w + u
    avg = jr.averaged_params(state)
    np.testing.assert_array_equal(avg["frozen"], params["frozen"])
    np.testing.assert_array_equal(avg["w"], jr.averaged_params(state_alone)["w"])


def test_swag_refuses_a_complex_leaf():
    # its second moment was E[w**2] (-1 for snapshots j and -j, not E|w|^2 = 1) and the samples' spread 0
    with pytest.raises(ValueError, match=r"^swag: leaf 'c' is complex \(complex64\)"):
        jr.swag(0).init({"c": jnp.array([1j], jnp.complex64), "w": jnp.ones(2)})
