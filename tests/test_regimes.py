"""The main job's training program: SWA averages, the SAM program, spectral norm and lr leaves.

Tiny MLPs on a synthetic 3-class problem, a few full-batch steps each; every check compares
:func:`jaxreg.experiments.regimes.train` with an independent computation (numpy means, a hand
SAM gradient with Adam's closed-form first step, numpy's SVD, the chain with a float step).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr
from jaxreg.experiments import presets, report
from jaxreg.experiments import regimes as R

EPS = float(np.finfo(np.float32).eps)
SEED = 3
NUM_CLASSES = 3


def _data(n_train=48, n_val=24, d=6):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(d, NUM_CLASSES))
    x = rng.normal(size=(n_train + n_val, d)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(n_train + n_val, NUM_CLASSES)), -1).astype(np.int32)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_val": x[n_train:], "y_val": y[n_train:]}


def _train(members, config, data=None):
    data = _data() if data is None else data
    hyper = R.stack_hypers(members, SEED, len(data["y_train"]))
    return R.train(config, hyper, data, NUM_CLASSES, seed=SEED, progress=False), hyper


def _member(tree, i):
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def _kernels_first(params):
    return [params[f"dense{i}"] for i in range(len(params))]


# --------------------------------------------------------------------------- SWA


def test_swa_average_is_the_mean_of_the_snapshots():
    # start = round(0.5 * 20) = 10, every 5: the snapshots are the params after updates 10, 15, 20.
    # A run of t steps ends at the params after update t, so shorter runs give the snapshots.
    members = [R.Member("none"), R.Member("l2", l2=1e-2)]
    cfg = R.Config(hidden=(8, 8), steps=20, eval_every=5, swa_start=0.5, swa_every=5)
    trained, _ = _train(members, cfg)
    assert trained.swa_start == 10
    snaps = [_train(members, R.Config(hidden=(8, 8), steps=t, eval_every=5))[0].final for t in (10, 15)]
    snaps.append(trained.final)
    mean = jax.tree.map(lambda *a: np.mean(np.stack([np.asarray(x, np.float64) for x in a]), axis=0), *snaps)
    for got, want in zip(jax.tree.leaves(trained.averaged), jax.tree.leaves(mean), strict=True):
        # three float32 lerps (each half an ulp of its operands) plus the snapshots' own rounding
        tol = 4 * 3 * EPS * np.max(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        assert got.shape[0] == len(members)
    # the average is not the final params (it could have been: a fact that can be false)
    assert any(
        np.max(np.abs(a - b)) > 1e-4 for a, b in zip(jax.tree.leaves(trained.averaged), jax.tree.leaves(trained.final))
    )


def test_swa_start_is_checked():
    with pytest.raises(ValueError, match="swa_start must be in"):
        R.swa_start_for(R.Config(swa_start=1.5))
    with pytest.raises(ValueError, match="swa_every must be"):
        R.swa_start_for(R.Config(swa_every=0))


# --------------------------------------------------------------------------- SAM


def _loss(params, x, y, l2):
    logits = R.apply(params, x, jnp.zeros([], jnp.float32))
    data = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return data + l2 * sum(jnp.sum(jnp.square(p["kernel"])) for p in params.values())


def _hand_first_step(params, x, y, l2, rho, lr):
    """SAM by hand (w + rho g / ||g|| over all leaves) and Adam's closed-form first step,
    u = -lr m_hat / (sqrt(v_hat) + 1e-8), m_hat = (1 - b1) g / (1 - b1**1), v_hat = (1 - b2) g**2 / (1 - b2**1),
    which is g / (|g| + 1e-8) but for the float32 bias corrections (b2 = 0.999 rounds to float32 with a
    relative error of 1.2e-8, which 1 - b2 amplifies to 1.3e-5): they are computed as float32 does.
    Returns the params and the gradient."""
    g = jax.grad(_loss)(params, x, y, l2)
    if rho > 0:
        norm = np.sqrt(sum(np.sum(np.square(np.asarray(v, np.float64))) for v in jax.tree.leaves(g)))
        params_eps = jax.tree.map(lambda w, gi: w + np.float32(rho / norm) * gi, params, g)
        g = jax.grad(_loss)(params_eps, x, y, l2)
    f = np.float32
    c1 = f(1 - 0.9) / (f(1) - f(0.9))  # m_hat / g
    c2 = f(1 - 0.999) / (f(1) - f(0.999))  # v_hat / g**2

    def step(w, gi):
        gi = np.asarray(gi, np.float64)
        return np.asarray(w) - lr * (c1 * gi) / (np.sqrt(c2 * gi * gi) + 1e-8)

    new = jax.tree.map(step, params, g)
    return new, g


@pytest.mark.slow
def test_sam_members_first_update_is_the_hand_sam_step_in_member_order():
    data = _data()
    lr = 1e-3
    members = [
        R.Member("none"),
        R.Member("sam", sam_rho=0.5),
        R.Member("l2", l2=1e-2),
        R.Member("sam_l2", sam_rho=1.0, l2=1e-2, init=1),
    ]
    cfg = R.Config(hidden=(8, 8), learning_rate=lr, steps=1, eval_every=1)
    trained, _ = _train(members, cfg, data)
    assert trained.programs == 2
    sizes = (data["x_train"].shape[1], 8, 8, NUM_CLASSES)
    x, y = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    flips = 0
    for i, m in enumerate(members):
        p0 = jax.tree.map(jnp.asarray, R.init_params(SEED, m.init, sizes))
        want, g = _hand_first_step(p0, x, y, m.l2, m.sam_rho, lr)
        got = _member(trained.final, i)
        for a, b, w0, gi in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(p0), jax.tree.leaves(g)):
            gi = np.abs(np.asarray(gi))
            # rounding of w + u, of Adam's bias corrections, and of g itself (48 examples summed,
            # amplified by d/dg [g / (|g| + e)] = e / (|g| + e)**2 where g is tiny)
            dg = 48 * EPS * np.max(gi)
            tol = 4 * EPS * (np.abs(np.asarray(w0)) + lr) + lr * 1e-8 * dg / (gi + 1e-8) ** 2
            assert np.all(np.abs(a - b) <= tol), (m.name, float(np.max(np.abs(a - b) - tol)))
        if m.sam_rho > 0:  # the SAM step is not the plain one
            plain, _ = _hand_first_step(p0, x, y, m.l2, 0.0, lr)
            flips += sum(int(np.sum(np.abs(a - b) > lr)) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(plain)))
        # the history's first training loss is the data term at the initial params
        logits = R.apply(p0, x, jnp.zeros([], jnp.float32))
        data_term = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)))
        np.testing.assert_allclose(trained.train_loss[i, 0], data_term, rtol=64 * EPS)
    assert flips > 0


# --------------------------------------------------------------------------- spectral norm


def test_spectral_member_kernels_are_within_the_bound():
    bound = 1.0
    members = [R.Member("none"), R.Member("spectral", spectral=bound)]
    cfg = R.Config(hidden=(16, 16), learning_rate=1e-2, steps=100, eval_every=10)
    trained, _ = _train(members, cfg)
    top = {
        i: [
            np.linalg.svd(np.asarray(k["kernel"], np.float64), compute_uv=False)[0]
            for k in _kernels_first(_member(trained.final, i))
        ]
        for i in range(2)
    }
    assert max(top[0]) > 1.5 * bound  # the bound binds: without it some layer exceeds it
    # One power iteration per step from the previous step's vector: the estimate is a lower bound
    # of sigma_max, so the capped kernel's sigma_max is bound * sigma / sigma_hat; after 100 warm
    # iterations on slowly moving kernels the estimate is within 1e-3 (asserted).
    assert max(top[1]) <= bound * (1 + 1e-3), top[1]
    assert max(top[1]) >= bound * (1 - 1e-3)  # and it is active at the bound, not far below


# --------------------------------------------------------------------------- learning-rate leaf


def _old_chain(h, lr):
    """The chain before lr became a leaf (no spectral projection, no SWA), with a float lr."""
    kernels = jr.masks.kernels
    return optax.chain(
        optax.scale_by_adam(),
        jr.add_penalty_grad(jr.l2(h.wd / 2.0, mask=kernels)),
        optax.scale_by_learning_rate(lr),
        jr.proximal(jr.l1(h.l1, mask=kernels), lr),
        jr.project(jr.max_norm(h.max_norm, mask=kernels)),
    )


@pytest.mark.parametrize("lr", [3e-4, pytest.param(3e-3, marks=pytest.mark.slow)])
def test_lr_leaf_chain_is_bitwise_the_float_chain(lr):
    data = _data()
    members = [R.Member("m", lr=lr, wd=1.0, l1=1e-3, max_norm=0.7)]
    h = jax.tree.map(lambda a: a[0], R.stack_hypers(members, SEED, len(data["y_train"])))
    sizes = (data["x_train"].shape[1], 8, NUM_CLASSES)
    p0 = jax.tree.map(jnp.asarray, R.init_params(SEED, 0, sizes))
    x, y = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])

    def run(make):
        @jax.jit
        def go(p):
            opt = make()

            def one_step(_, carry):
                p, state = carry
                g = jax.grad(_loss)(p, x, y, 0.0)
                with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam: float ** int32
                    u, state = opt.update(g, state, p)
                return optax.apply_updates(p, u), state

            return jax.lax.fori_loop(0, 20, one_step, (p, opt.init(p)))[0]

        return go(p0)

    new = run(lambda: R._optimizer(h, h.lr, swa_start=5, spectral_iters=1))
    old = run(lambda: _old_chain(h, lr))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_lr_leaf_member_trains_like_a_separate_float_run():
    # Members with their own lr in one vmapped program against the float-lr chain run alone: the
    # same arithmetic, up to how XLA vectorizes the vmapped matmuls (float32 rounding of the
    # gradient, amplified by Adam's normalization at most by lr per step).
    data = _data()
    members = [R.Member("slow", lr=3e-4), R.Member("default"), R.Member("fast", lr=3e-3, wd=1.0)]
    steps = 10
    cfg = R.Config(hidden=(8,), learning_rate=1e-3, steps=steps, eval_every=5)
    trained, hyper = _train(members, cfg, data)
    sizes = (data["x_train"].shape[1], 8, NUM_CLASSES)
    x, y = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    for i, lr in enumerate([3e-4, 1e-3, 3e-3]):
        h = jax.tree.map(lambda a, i=i: a[i], hyper)
        opt = _old_chain(h, lr)
        p = jax.tree.map(jnp.asarray, R.init_params(SEED, 0, sizes))
        state = opt.init(p)
        for _ in range(steps):
            g = jax.grad(_loss)(p, x, y, 0.0)
            with jax.numpy_dtype_promotion("standard"):  # optax's scale_by_adam: float ** int32
                u, state = opt.update(g, state, p)
            p = optax.apply_updates(p, u)
        for a, b in zip(jax.tree.leaves(_member(trained.final, i)), jax.tree.leaves(p)):
            np.testing.assert_allclose(a, b, rtol=0, atol=steps * 4 * EPS * (np.max(np.abs(np.asarray(b))) + lr))


# --------------------------------------------------------------------------- presets and report


def test_presets_add_the_new_members_and_keep_the_old_ones():
    s = presets.Settings.default()
    members, index = presets.members(s)
    names = [m.name for m in members]
    assert names[:9] == [
        "none",
        "l2",
        "weight_decay",
        "l1",
        "elastic_net",
        "max_norm",
        "dropout",
        "sigmoid",
        "sigmoid_l2",
    ]
    for m in members[:9] + [members[i] for i in index["bagging"]]:
        assert (m.lr, m.spectral, m.sam_rho) == (None, R.NO_SPECTRAL_NORM, 0.0)
    assert index["swa"] == index["none"]
    assert members[index["sam"][0]].sam_rho == s.sam_rho
    assert members[index["spectral_norm"][0]].spectral == s.spectral
    assert index[presets.grid_name(s.learning_rate, 0.0)] == index["none"]
    assert index[presets.grid_name(s.learning_rate, s.wd)] == index["weight_decay"]
    grid = [index[presets.grid_name(lr, wd)][0] for lr in s.lr_grid for wd in s.wd_grid]
    assert len(set(grid)) == len(s.lr_grid) * len(s.wd_grid)
    for lr in s.lr_grid:
        for wd in s.wd_grid:
            m = members[index[presets.grid_name(lr, wd)][0]]
            assert (s.learning_rate if m.lr is None else m.lr, m.wd) == (lr, wd)
    hyper = R.stack_hypers(members, 0, 10)
    assert np.sum(np.asarray(hyper.sam_rho) > 0) == 1


def test_grid_table_and_findings_read_the_rows():
    rows = [
        {"regime": n, "kind": k, "gap": g, "test_acc": a, "val_acc": v, "test_nll": 0.3, "test_ece": 0.02}
        for n, k, g, a, v in [("none", "single", 0.3, 0.9, 0.9), ("swa", "single", 0.2, 0.91, 0.9)]
    ]
    grid = [
        {
            "regime": f"g{lr}{wd}",
            "kind": "grid",
            "lr": lr,
            "wd": wd,
            "gap": 0.1 * wd,
            "test_acc": 0.8 + lr,
            "val_acc": lr + wd,
        }
        for lr in (0.01, 0.03)
        for wd in (0.0, 1.0)
    ]
    text = report.grid_table(grid)
    lines = text.splitlines()
    assert lines[0].split() == ["lr", "wd=0", "wd=1"]
    assert lines[2].split() == ["1e-02", "0.810", "0.810"]
    out = report.grid_findings({"regimes": rows + grid})
    assert "at lr 3e-02, wd 1" in out[0]
    # SWA, SAM and spectral norm are compared with none like every regime: paired intervals by seed
    assert {"swa", "sam", "spectral_norm"} <= set(report.REGULARIZED)
