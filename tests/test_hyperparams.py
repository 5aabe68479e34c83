"""Tests of jr.sweepable and jr.schedule: optimizer hyperparameters as state leaves.

References are optax's own unwrapped optimizers built with Python floats, jitted. Where the
wrapped optimizer does the same float32 operations on the same rounded values (a learning rate,
a weight decay, sgd's momentum) the comparison is bitwise; where the factory computes ``1 - b``
from a beta (Adam, RMSProp), the unwrapped one rounds the float64 ``1 - b`` once while the
wrapped one computes ``1 - fl32(b)`` exactly: a relative difference of up to
``2**-24 / (1 - b)`` (6e-5 for b = 0.999) in the moment's weight, so within the issue's
``rtol = 2e-4`` over 100 steps (measured: 5e-5 for b2 = 0.999).
"""

import functools
import operator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr

A = jax.random.normal(jax.random.key(0), (16, 5))
B = jax.random.normal(jax.random.key(1), (16,))
W0 = {"w": jax.random.normal(jax.random.key(2), (5,)), "b": jnp.zeros(())}
# Far from the optimum: no gradient coordinate passes through 0 within the run. RMSProp's
# g / sqrt(nu) is a sign where g is tiny, which turns a one-ulp difference into a different step.
W_FAR = jax.tree.map(lambda x: 3 * x + 2, W0)


def _loss(w, a=A, b=B):
    return jnp.mean(jnp.square(a @ w["w"] + w["b"] - b))


def _train(opt, steps, w0=W0):
    """Params after ``steps`` full-batch steps of ``opt`` on a least-squares problem (jitted scan)."""

    def body(carry, _):
        w, s = carry
        g = jax.grad(_loss)(w)
        # The unwrapped optax references (scale_by_adam: b ** count, int32) need standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            u, s = opt.update(g, s, w)
        return (optax.apply_updates(w, u), s), None

    @jax.jit
    def run(w0):
        with jax.numpy_dtype_promotion("standard"):  # the unwrapped references' init, as above
            s0 = opt.init(w0)
        return jax.lax.scan(body, (w0, s0), None, length=steps)[0]

    return run(w0)


def _train_members(opt, n, steps):
    """``_train`` for ``n`` copies of ``W0`` stacked on a member axis, one vmapped program.

    A member of a vmapped sweep is compared with the same member of a vmapped run of the
    unwrapped optimizer, not with an unbatched run: XLA may sum a batched matmul in another
    order than the unbatched one (one ulp), which the dynamics then carry along.
    """
    w0 = jax.tree.map(lambda x: jnp.stack([x] * n), W0)

    def body(carry, _):
        w, s = carry
        g = jax.vmap(jax.grad(_loss))(w)
        with jax.numpy_dtype_promotion("standard"):  # the unwrapped references, as in _train
            u, s = jax.vmap(opt.update)(g, s, w)
        return (optax.apply_updates(w, u), s), None

    @jax.jit
    def run(w0):
        with jax.numpy_dtype_promotion("standard"):
            s0 = jax.vmap(opt.init)(w0)
        return jax.lax.scan(body, (w0, s0), None, length=steps)[0]

    return run(w0)


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _max_rel(ref, got):
    """Largest |ref - got| of a leaf relative to that leaf's largest |ref|."""
    return max(
        float(jnp.max(jnp.abs(r - g)) / jnp.max(jnp.abs(r))) for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got))
    )


# (factory, kwargs, steps, rtol, w0); rtol 0: bitwise.
CASES = [
    pytest.param(optax.sgd, dict(learning_rate=0.03), 100, 0.0, W0, id="sgd-lr"),
    pytest.param(optax.sgd, dict(learning_rate=0.03, momentum=0.9), 100, 0.0, W0, id="sgd-momentum"),
    pytest.param(optax.sgd, dict(learning_rate=0.03, momentum=0.9, nesterov=True), 100, 0.0, W0, id="sgd-nesterov"),
    pytest.param(optax.adam, dict(learning_rate=0.01), 100, 0.0, W0, id="adam-lr"),
    pytest.param(optax.adam, dict(learning_rate=0.01, b1=0.8, b2=0.999), 100, 2e-4, W0, id="adam-betas"),
    pytest.param(optax.adamw, dict(learning_rate=0.01, weight_decay=0.1), 200, 1e-5, W0, id="adamw-wd"),
    pytest.param(optax.lion, dict(learning_rate=1e-3, b1=0.9, b2=0.99, weight_decay=0.01), 100, 2e-4, W0, id="lion"),
    pytest.param(optax.rmsprop, dict(learning_rate=1e-3, decay=0.9, momentum=0.5), 100, 2e-4, W_FAR, id="rmsprop"),
]


@pytest.mark.parametrize("factory, kwargs, steps, rtol, w0", CASES)
def test_matches_the_unwrapped_optimizer(factory, kwargs, steps, rtol, w0):
    ref = _train(factory(**kwargs), steps, w0)
    got = _train(jr.sweepable(factory)(**kwargs), steps, w0)
    if rtol == 0.0:
        chex.assert_trees_all_equal(got[0], ref[0])
    else:
        assert _max_rel(ref[0], got[0]) <= rtol, (factory.__name__, kwargs, _max_rel(ref[0], got[0]))
    # What is in the state: exactly the arguments passed that are numbers, as float32 scalars.
    numbers = {k for k, v in kwargs.items() if not isinstance(v, bool)}
    assert set(got[1].hyperparams) == numbers
    for k in numbers:
        assert got[1].hyperparams[k].dtype == jnp.float32 and got[1].hyperparams[k].shape == ()
        assert float(got[1].hyperparams[k]) == float(np.float32(kwargs[k]))
    assert int(got[1].count) == steps


def test_per_member_values_under_vmap_equal_separate_runs():
    """Built inside vmap with traced values; updated by an instance built with other values."""
    lrs = jnp.array([0.003, 0.01, 0.03], jnp.float32)
    b1s = jnp.array([0.5, 0.8, 0.9], jnp.float32)
    make = jr.sweepable(optax.adam)
    states = jax.vmap(lambda lr, b1: make(learning_rate=lr, b1=b1).init(W0))(lrs, b1s)
    opt = make(learning_rate=0.0, b1=0.0)  # never read: update takes each member's values from its state

    def body(carry, _):
        w, s = carry
        g = jax.vmap(jax.grad(_loss))(w)
        u, s = jax.vmap(opt.update)(g, s, w)
        return (optax.apply_updates(w, u), s), None

    w = jax.tree.map(lambda x: jnp.stack([x] * 3), W0)
    got, s = jax.jit(lambda w, s: jax.lax.scan(body, (w, s), None, length=100)[0])(w, states)
    np.testing.assert_array_equal(s.hyperparams["learning_rate"], lrs)
    for i in range(3):
        ref = _member(_train_members(optax.adam(float(lrs[i]), b1=float(b1s[i])), 3, 100)[0], i)
        if i == 0:  # b1 = 0.5 and 1 - b1 are exact in float32: bitwise
            chex.assert_trees_all_equal(_member(got, i), ref)
        else:  # 1 - b1 rounded differently (module docstring): within the betas' rtol
            assert _max_rel(ref, _member(got, i)) <= 2e-4


def test_per_member_values_under_ensemble_map_and_train_step():
    """jr.ensemble.map (in chunks) to init, jr.ensemble.train_step to train: sgd's lr and momentum bitwise."""
    lrs = jnp.array([0.01, 0.02, 0.05, 0.1], jnp.float32)
    make = jr.sweepable(optax.sgd)
    params0 = jax.tree.map(lambda x: jnp.stack([x] * 4), W0)
    states = jr.ensemble.map(lambda p, lr: make(learning_rate=lr, momentum=0.9).init(p), chunk_size=2)(params0, lrs)

    def loss(p, batch, rng, h):
        return _loss(p, *batch)

    def train(opt, states):
        # One vmap on both sides: a measured chunking could differ between the two programs,
        # and another vectorization changes the last bits (bitwise is a claim about sweepable).
        step = jax.jit(jr.ensemble.train_step(loss, opt, chunk_size=4))
        params = params0
        for _ in range(20):
            params, states, _ = step(params, states, (A, B), jax.random.key(0))
        return params

    got = train(make(learning_rate=1.0, momentum=0.0), states)
    for i in range(4):
        ref_opt = optax.sgd(float(lrs[i]), momentum=0.9)
        ref = train(ref_opt, jax.vmap(ref_opt.init)(params0))
        chex.assert_trees_all_equal(_member(got, i), _member(ref, i))


def test_a_new_value_never_recompiles():
    make = jr.sweepable(optax.adamw)
    opt = make(learning_rate=1e-3, weight_decay=1e-4)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(w, s):
        u, s = opt.update(jax.grad(_loss)(w), s, w)
        return optax.apply_updates(w, u), s

    # Python floats, an int, numpy and jax scalars: all become the same float32 leaf (no retrace
    # from a weak type or another dtype, optax#577), and the updated state feeds back in unchanged.
    values = [(1e-3, 1e-4), (np.float64(3e-2), 0), (jnp.float32(0.1), np.float32(0.5))]
    outs = []
    for lr, wd in values:
        w, s = W0, make(learning_rate=lr, weight_decay=wd).init(W0)
        for _ in range(3):
            w, s = step(w, s)
        outs.append(w["w"])
    # The values took effect (not the closure's): each run equals its own unwrapped adamw.
    for (lr, wd), got in zip(values, outs):
        chex.assert_trees_all_equal(got, _train(optax.adamw(float(lr), weight_decay=float(wd)), 3)[0]["w"])


def test_changing_a_value_in_the_state_takes_effect_at_the_next_update():
    make = jr.sweepable(optax.sgd)
    opt = make(learning_rate=0.1)
    s = opt.init(W0)
    g = jax.grad(_loss)(W0)
    u1, s = opt.update(g, s)
    assert float(optax.tree.get(s, "learning_rate")) == float(np.float32(0.1))
    s = optax.tree.set(s, learning_rate=jnp.float32(0.25))
    u2, _ = opt.update(g, s)
    chex.assert_trees_all_equal(u1, optax.sgd(0.1).update(g, optax.sgd(0.1).init(W0))[0])
    chex.assert_trees_all_equal(u2, optax.sgd(0.25).update(g, optax.sgd(0.25).init(W0))[0])


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_a_half_precision_value_is_a_hyperparameter_too(dtype):
    # numpy calls bfloat16 non-numeric; it must still become a swept leaf, not a static constant.
    s = jr.sweepable(optax.sgd)(learning_rate=jnp.asarray(0.25, dtype)).init(W0)
    assert float(optax.tree.get(s, "learning_rate")) == 0.25  # exact in both half dtypes


def test_hyperparameters_are_differentiable():
    """d(sgd update)/d(lr) = -g exactly (the update is -lr * g)."""
    make = jr.sweepable(optax.sgd)
    g = jax.grad(_loss)(W0)

    def first_update(lr):
        opt = make(learning_rate=lr)
        return opt.update(g, opt.init(W0))[0]["w"]

    chex.assert_trees_all_equal(jax.jacobian(first_update)(jnp.float32(0.1)), -g["w"])


def test_in_a_chain_with_jaxreg_bridges():
    """A user factory: decoupled L2 via jr.add_penalty_grad (= adamw) then an L1 proximal step."""

    def adamw_l1(learning_rate, weight_decay, l1):
        return optax.chain(
            optax.scale_by_adam(),
            jr.add_penalty_grad(jr.l2(weight_decay / 2)),
            optax.scale_by_learning_rate(learning_rate),
            jr.proximal(jr.l1(l1), learning_rate),
        )

    kwargs = dict(learning_rate=0.01, weight_decay=0.1, l1=0.01)
    ref = _train(adamw_l1(**kwargs), 200)[0]
    got = _train(jr.sweepable(adamw_l1)(**kwargs), 200)[0]
    # wd / 2 and the penalty's gradient 2 * (wd / 2) * w are exact scalings by 2: the same float32
    # values as with Python floats; rtol 1e-5 allows XLA to fuse the two programs differently.
    assert _max_rel(ref, got) <= 1e-5
    # ...and the bridge chain with l1 = 0 is adamw itself, within the same rounding.
    got_adamw = _train(jr.sweepable(adamw_l1)(learning_rate=0.01, weight_decay=0.1, l1=0.0), 200)[0]
    assert _max_rel(_train(optax.adamw(0.01, weight_decay=0.1), 200)[0], got_adamw) <= 1e-5


# ----------------------------------------------------------------------------- schedules

SCHED = dict(init_value=0.0, warmup_steps=10, decay_steps=60, end_value=1e-4)


def test_schedule_peak_swept_under_vmap_equals_the_unwrapped_schedule():
    peaks = jnp.array([0.01, 0.03], jnp.float32)
    make = jr.sweepable(optax.adam)

    def init(peak):
        lr = jr.schedule(optax.warmup_cosine_decay_schedule, peak_value=peak, **SCHED)
        return make(learning_rate=lr).init(W0)

    states = jax.vmap(init)(peaks)
    assert set(states.hyperparams["learning_rate"]) == {"init_value", "peak_value", "end_value"}
    opt = make(learning_rate=jr.schedule(optax.warmup_cosine_decay_schedule, peak_value=1.0, **SCHED))

    def body(carry, _):
        w, s = carry
        u, s = jax.vmap(opt.update)(jax.vmap(jax.grad(_loss))(w), s, w)
        return (optax.apply_updates(w, u), s), None

    w = jax.tree.map(lambda x: jnp.stack([x] * 2), W0)
    got, s = jax.jit(lambda w, s: jax.lax.scan(body, (w, s), None, length=60)[0])(w, states)
    assert s.count.tolist() == [60, 60]
    for i in range(2):
        ref = _train(optax.adam(optax.warmup_cosine_decay_schedule(peak_value=float(peaks[i]), **SCHED)), 60)[0]
        # The schedule's own arithmetic (end / peak, the warmup's slope) runs in float32 from
        # float32 values instead of from Python floats: a few ulp per step, 1e-5 over 60 steps.
        assert _max_rel(ref, jax.tree.map(lambda x, i=i: x[i], got)) <= 1e-5


def test_schedule_values_equal_optax_within_float32_rounding():
    counts = jnp.arange(0, 80, dtype=jnp.int32)
    ours = jax.vmap(jr.schedule(optax.warmup_cosine_decay_schedule, peak_value=0.02, **SCHED))(counts)
    ref = optax.warmup_cosine_decay_schedule(peak_value=0.02, **SCHED)
    with jax.numpy_dtype_promotion("standard"):  # optax's cosine decay computes float ** int32
        ref_values = jax.vmap(ref)(counts)
    # float64 reference of the closed form, to see both are within float32 rounding of it.
    c = np.asarray(counts, np.float64)
    warm = 0.02 * c / 10
    t = np.clip(c - 10, 0, 50) / 50
    cos = 1e-4 + (0.02 - 1e-4) * 0.5 * (1 + np.cos(np.pi * t))
    exact = np.where(c < 10, warm, cos)
    np.testing.assert_allclose(ours, exact, rtol=4e-6, atol=1e-9)  # a few float32 ulp of 2**-24
    np.testing.assert_allclose(ours, ref_values, rtol=4e-6, atol=1e-9)


def test_schedule_for_a_non_learning_rate_argument_and_a_plain_schedule_stays_static():
    """sgd's momentum from a schedule (evaluated at the count); a plain optax schedule is the factory's."""
    momentum = jr.schedule(optax.linear_schedule, init_value=0.5, end_value=0.9, transition_steps=20)
    got = _train(jr.sweepable(optax.sgd)(learning_rate=0.03, momentum=momentum), 30)

    def body(carry, t):  # reference: sgd with momentum linear_schedule(t) at step t, by hand
        w, trace = carry
        g = jax.grad(_loss)(w)
        m = jnp.float32(0.5) + (jnp.float32(0.9) - jnp.float32(0.5)) * (t.astype(jnp.float32) / 20)
        m = jnp.where(t >= 20, jnp.float32(0.9), m)
        trace = jax.tree.map(lambda gi, ti: gi + m * ti, g, trace)
        return (jax.tree.map(lambda wi, ti: wi - jnp.float32(0.03) * ti, w, trace), trace), None

    zeros = jax.tree.map(jnp.zeros_like, W0)
    ref = jax.lax.scan(body, (W0, zeros), jnp.arange(30, dtype=jnp.int32))[0][0]
    assert _max_rel(ref, got[0]) <= 1e-5  # float32 rounding of the schedule's arithmetic
    plain = optax.cosine_decay_schedule(0.03, 30)
    got_plain = _train(jr.sweepable(optax.sgd)(learning_rate=plain, momentum=0.9), 30)
    assert set(got_plain[1].hyperparams) == {"momentum"}
    chex.assert_trees_all_equal(got_plain[0], _train(optax.sgd(plain, momentum=0.9), 30)[0])


# ----------------------------------------------------------------------------- checkpoints and jr.fit


def test_orbax_checkpoint_resumes_equal(tmp_path):
    import orbax.checkpoint as ocp

    make = jr.sweepable(optax.adamw)
    lr = jr.schedule(optax.warmup_cosine_decay_schedule, peak_value=0.02, **SCHED)
    opt = make(learning_rate=lr, weight_decay=0.05, b2=0.99)

    @jax.jit
    def steps(w, s):
        def body(c, _):
            w, s = c
            u, s = opt.update(jax.grad(_loss)(w), s, w)
            return (optax.apply_updates(w, u), s), None

        return jax.lax.scan(body, (w, s), None, length=15)[0]

    full = steps(*steps(W0, opt.init(W0)))
    half = steps(W0, opt.init(W0))
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "c", half)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "c", jax.tree.map(ocp.utils.to_shape_dtype_struct, half))
    assert isinstance(restored[1], jr.SweepableState)
    chex.assert_trees_all_equal(steps(*restored), full)


class _Stop(Exception):
    pass


@pytest.mark.slow  # four fits of a few seconds' compile each
def test_fit_per_member_learning_rates_and_resume(tmp_path):
    """One jr.fit over 3 learning rates = 3 members of fits with Python-float adam; resume equal."""
    x = jax.random.normal(jax.random.key(3), (48, 5))
    y = x @ jnp.array([1.0, -2.0, 0.5, 0.0, 3.0])
    lrs = jnp.array([0.003, 0.01, 0.03], jnp.float32)
    make = jr.sweepable(optax.adam)
    opt = make(learning_rate=1e-3)

    def step_with(opt):
        def step(state, batch, rng):
            w, s = state
            loss, g = jax.value_and_grad(lambda w: _loss(w, *batch))(w)
            with jax.numpy_dtype_promotion("standard"):  # the unwrapped adam references
                u, s = opt.update(g, s, w)
            return (optax.apply_updates(w, u), s), loss

        return step

    def evaluate(state, data):
        return _loss(state[0], *data)

    params = jax.tree.map(lambda a: jnp.stack([a] * 3), W0)
    state = (params, jax.vmap(lambda p, lr: make(learning_rate=lr).init(p))(params, lrs))
    kw = dict(rng=jax.random.key(4), num_steps=40, batch_size=16, eval_every=10, num_members=3, progress=False)
    kw.update(steps_per_chunk=20)
    result = jr.fit(step_with(opt), evaluate, state, (x, y), (x, y), **kw)
    np.testing.assert_array_equal(result.state[1].hyperparams["learning_rate"], lrs)
    for i in (0, 2):  # member i against member i of a 3-member fit of plain adam(lrs[i]): same batches, keys
        ref_opt = optax.adam(float(lrs[i]))
        with jax.numpy_dtype_promotion("standard"):  # scale_by_adam's init under strict promotion
            ref_state = (params, jax.vmap(ref_opt.init)(params))
        ref = jr.fit(step_with(ref_opt), evaluate, ref_state, (x, y), (x, y), **kw)
        chex.assert_trees_all_equal(_member(result.state[0], i), _member(ref.state[0], i))

    def stop(*args):
        raise _Stop

    with pytest.raises(_Stop):
        jr.fit(step_with(opt), evaluate, state, (x, y), (x, y), checkpoint_dir=tmp_path, callback=stop, **kw)
    resumed = jr.fit(step_with(opt), evaluate, state, (x, y), (x, y), checkpoint_dir=tmp_path, **kw)
    chex.assert_trees_all_equal(resumed.state, result.state)


# ----------------------------------------------------------------------------- errors


def _user_factory(learning_rate, mode: str = "a", depth: int = 2):
    del mode, depth
    return optax.sgd(learning_rate)


def _branching_factory(learning_rate, weight_decay=0.0):
    if weight_decay > 0:  # a Python `if` on a value: cannot be a leaf
        return optax.adamw(learning_rate, weight_decay=weight_decay)
    return optax.adam(learning_rate)


def _in_vmap(fn):
    return jax.vmap(fn)(jnp.ones(2, jnp.float32))


ERRORS = [
    (lambda: jr.sweepable(optax.sgd)(0.1, nesterov=jnp.array(True)), r"nesterov is a bool argument, static"),
    (lambda: _in_vmap(lambda v: jr.sweepable(optax.sgd)(0.1, nesterov=v > 0).init(W0)), r"nesterov is a bool argument"),
    (lambda: jr.sweepable(optax.rmsprop)(0.1, centered=jnp.array(1.0)), r"centered is a bool argument"),
    (lambda: jr.sweepable(_user_factory)(0.1, mode=np.array("b")), r"mode is a str argument"),
    (lambda: _in_vmap(lambda v: jr.sweepable(_user_factory)(0.1, depth=v).init(W0)), r"depth is an int argument"),
    (lambda: _in_vmap(lambda v: jr.sweepable(optax.sgd, static_args="momentum")(0.1, momentum=v)), r"static_args"),
    (lambda: _in_vmap(lambda v: jr.sweepable(optax.adamw)(0.1, mask={"w": v > 0}).init(W0)), r"mask is not a number"),
    (lambda: jr.sweepable(optax.sgd)(jnp.array([0.1, 0.2])), r"learning_rate must be a scalar .* shape \(2,\)"),
    (
        lambda: jr.sweepable(optax.sgd)(0.1, momentun=0.9),
        r"^sweepable\(sgd\): sgd has no argument 'momentun' \(did you mean 'momentum'\?\); its keyword arguments "
        r"are learning_rate, momentum, nesterov, accumulator_dtype\.$",
    ),
    # signature.bind named the missing learning_rate, not the misspelt one
    (lambda: jr.sweepable(optax.sgd)(learning_rat=0.1), r"^sweepable\(sgd\): sgd has no argument 'learning_rat' \(did"),
    (lambda: jr.sweepable(optax.sgd)(0.1, 0.9, momentum=0.9), r"do not fit"),
    (lambda: jr.sweepable(_branching_factory)(0.1, weight_decay=0.1), r"uses weight_decay in Python control flow"),
    (lambda: jr.sweepable(optax.sgd)(0.1).update(W0, optax.sgd(0.1).init(W0)), r"needs the state made by a sweepable"),
    (
        lambda: jr.sweepable(optax.sgd)(0.1).update(W0, jr.sweepable(optax.sgd)(0.1, 0.9).init(W0)),
        r"not this optimizer",
    ),
    (lambda: jr.sweepable(42), r"factory must be a callable"),
    (
        lambda: _in_vmap(
            lambda v: jr.schedule(optax.linear_schedule, init_value=1.0, end_value=0.0, transition_steps=v)
        ),
        r"transition_steps is an int argument",
    ),
    (
        lambda: jr.schedule(optax.exponential_decay, init_value=1.0, transition_steps=10, decay_rate=0.5),
        r"uses decay_rate in Python control flow.*keep decay_rate a Python value with functools.partial",
    ),
    # The culprit is found with the other arguments at their given values: a placeholder 1.0 for
    # learning_rate would be fine, but one for factor would fail reduce_on_plateau's own range check.
    (
        lambda: jr.sweepable(
            lambda learning_rate, factor: optax.chain(
                optax.sgd(learning_rate), optax.contrib.reduce_on_plateau(factor=factor, patience=1)
            )
        )(learning_rate=0.6, factor=0.5),
        r"uses factor in Python control flow",
    ),
    (
        lambda: jr.sweepable(optax.sgd, static_args=3),
        r"static_args must be a name or a sequence of names, got static_args = 3\.",
    ),
    (lambda: jr.sweepable(optax.sgd, static_args="lr"), r"static_args names \['lr'\], which sgd does not take"),
]


@pytest.mark.parametrize("fn, match", ERRORS)
def test_errors(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


@pytest.mark.parametrize("how", ["penalty", "factory argument"])
def test_a_penalty_swept_under_vmap_equals_separate_runs(how):
    # A jr.Penalty's numbers are state leaves: update reads each member's, whichever instance
    # updates (kept static, the update's l1(0) served every member: scale 0 for 1).
    if how == "penalty":
        make = jr.sweepable(jr.proximal_adam)
        build = lambda s: make(penalty=jr.l1(s), learning_rate=0.1)  # noqa: E731
    else:
        make = jr.sweepable(lambda scale, learning_rate: jr.proximal_adam(jr.l1(scale), learning_rate))
        build = lambda s: make(scale=s, learning_rate=0.1)  # noqa: E731
    scales = jnp.array([0.0, 1.0])
    states = jax.vmap(lambda s: build(s).init(W0))(scales)
    g = jax.grad(_loss)(W0)
    updates, _ = jax.vmap(build(0.0).update, in_axes=(None, 0, None))(g, states, W0)
    for i, scale in enumerate([0.0, 1.0]):
        plain = jr.proximal_adam(jr.l1(scale), 0.1)
        expected, _ = plain.update(g, plain.init(W0), W0)
        # The same float32 scale and learning rate in the same operations (vmap may fuse them
        # differently): within an ulp of each step's coordinates, |u| <= lr (1 + scale).
        atol = 2 * float(jnp.finfo(jnp.float32).eps) * 0.1 * (1 + scale)
        chex.assert_trees_all_close(jax.tree.map(operator.itemgetter(i), updates), expected, rtol=0, atol=atol)


def test_static_arguments_by_kind_and_functools_partial():
    """Bools, ints, None, callables, masks stay static; functools.partial keeps a number a Python value."""
    mask = {"w": True, "b": False}
    opt = jr.sweepable(optax.adamw)(0.01, weight_decay=0.1, mask=mask, nesterov=True)
    assert set(opt.init(W0).hyperparams) == {"learning_rate", "weight_decay"}
    chex.assert_trees_all_equal(
        _train(opt, 20)[0], _train(optax.adamw(0.01, weight_decay=0.1, mask=mask, nesterov=True), 20)[0]
    )
    exp = functools.partial(optax.exponential_decay, decay_rate=0.5)
    s = jr.schedule(exp, init_value=0.1, transition_steps=10)
    assert set(s.values) == {"init_value"}
    with jax.numpy_dtype_promotion("standard"):  # optax's exponential decay computes float ** int32
        expected = optax.exponential_decay(0.1, 10, 0.5)(jnp.int32(20))
    np.testing.assert_allclose(s(jnp.int32(20)), expected, rtol=2e-7)  # 0.1 * 0.25: one rounding


# ----------------------------------------------------------------------------- the example


@pytest.mark.parametrize(
    "factory, kwargs",
    [(optax.sgd, {"momentum": 0.9}), (optax.adam, {"b1": 0.9}), (optax.rmsprop, {"decay": 0.9})],
)
def test_swept_values_take_the_params_dtype_as_optax_python_floats_do(factory, kwargs):
    # strongly typed float32 values promoted a bfloat16 state to float32: a scan carry changed type
    params = {"w": jnp.linspace(-1.0, 1.0, 8, dtype=jnp.bfloat16)}
    grads = jax.tree.map(lambda w: (0.5 * w).astype(w.dtype), params)

    def run(opt):
        def body(carry, _):
            p, s = carry
            u, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, u), s), u

        with jax.numpy_dtype_promotion("standard"):
            (p, s), u = jax.lax.scan(body, (params, opt.init(params)), None, length=3)
        return p, s, u

    p, s, u = run(jr.sweepable(factory)(0.1, **kwargs))
    p_ref, s_ref, u_ref = run(factory(0.1, **kwargs))
    assert u["w"].dtype == u_ref["w"].dtype == jnp.bfloat16
    assert [x.dtype for x in jax.tree.leaves(s.inner_state)] == [x.dtype for x in jax.tree.leaves(s_ref)]
    # both in bfloat16 from the same float32 constants: within a bfloat16 ulp of each other
    np.testing.assert_allclose(
        np.asarray(p["w"], np.float32), np.asarray(p_ref["w"], np.float32), rtol=2**-7, atol=2**-10
    )


def test_a_float32_step_under_x64_is_traced_once():
    with jax.enable_x64(True):
        opt = jr.sweepable(optax.sgd)(0.1, momentum=0.9)
        params = jnp.ones(3, jnp.float32)
        step = jax.jit(chex.assert_max_traces(lambda p, s: opt.update(p, s, p), n=1))
        state = opt.init(params)
        for _ in range(3):
            updates, state = step(params, state)
        assert updates.dtype == jnp.float32 and state.inner_state[0].trace.dtype == jnp.float32


def test_a_scheduled_ema_decay_reaches_the_state_that_update_reads():
    # jr.ema's update reads EmaState.decay (one optimizer for states built under vmap); the
    # schedule's value must be written there each step (it stayed init's: a silent constant).
    decay = jr.schedule(optax.linear_schedule, init_value=0.0, end_value=0.5, transition_steps=1)
    opt = optax.chain(optax.sgd(1.0), jr.sweepable(jr.ema)(decay=decay))
    w, g = jnp.zeros(()), jnp.asarray(-1.0)  # params 1, 2, 3
    state = opt.init(w)
    expected, reference = [], 0.0  # w_0 = 0 enters first (no debias), then lerp by 1 - d_t
    for t, d in enumerate([0.0, 0.5, 0.5]):
        u, state = opt.update(g, state, w)
        w = optax.apply_updates(w, u)
        reference = d * reference + (1 - d) * float(t + 1)
        expected.append(reference)
        assert float(jr.averaged_params(state)) == expected[-1]
    assert expected == [1.0, 1.5, 2.25]  # not 3.0, the constant decay 0 of init


def test_gradient_noise_eta_changed_in_the_state_takes_effect():
    opt = jr.sweepable(jr.add_gradient_noise, static_args=("key",))(eta=0.0, key=jax.random.key(3))
    g = jnp.zeros(4)
    state = opt.init(g)
    u, state = opt.update(g, state)
    assert not np.any(np.asarray(u))  # eta 0: no noise
    # The swept value only (optax.tree.set would also set GradientNoiseState.eta by name).
    state = state._replace(hyperparams={**state.hyperparams, "eta": jnp.float32(100.0)})
    u, _ = opt.update(g, state)
    # The unwrapped transform at the same count and key, with eta 100 from its init.
    plain = jr.add_gradient_noise(100.0, key=jax.random.key(3))
    inner = state.inner_state._replace(eta=jnp.float32(100.0))
    expected, _ = plain.update(g, inner)
    assert np.any(np.asarray(u))
    chex.assert_trees_all_equal(u, expected)


def test_swa_start_changed_in_the_state_takes_effect():
    opt = optax.chain(optax.sgd(1.0), jr.sweepable(jr.swa, static_args=("every",))(start=0, every=1))
    w, g = jnp.zeros(()), jnp.asarray(-1.0)
    state = opt.init(w)
    for i in range(3):
        if i == 1:
            swept = state[1]._replace(hyperparams={**state[1].hyperparams, "start": jnp.float32(100.0)})
            state = (state[0], swept)  # postpone averaging (the swept value only, not SwaState.start)
        u, state = opt.update(g, state, w)
        w = optax.apply_updates(w, u)
    # w_0 and w_1 were averaged before the change; none after (start 100).
    assert int(state[1].inner_state.num_averaged) == 2
    assert float(jr.averaged_params(state)) == 0.5


def test_an_integer_not_exact_in_the_hyperparameter_dtype_is_refused_not_rounded():
    """float32 holds every integer up to 2**24 and not 2**24 + 1 (it rounded to 2**24: averaging
    began a step early); static, or under x64, the integer is kept exactly."""
    make = jr.sweepable(jr.swa)
    assert int(make(start=2**24).init(jnp.zeros(2)).hyperparams["start"]) == 2**24
    with pytest.raises(ValueError, match=r"^sweepable\(swa\): start = 16777217 is not exact in float32"):
        make(start=2**24 + 1)
    static = jr.sweepable(jr.swa, static_args=("start",))(start=2**24 + 1)
    assert int(static.init(jnp.zeros(2)).inner_state.start) == 2**24 + 1
    with jax.enable_x64(True):
        assert int(make(start=2**24 + 1).init(jnp.zeros(2)).hyperparams["start"]) == 2**24 + 1


@pytest.mark.parametrize("value", [0.1 + 5j, np.complex64(0.1), jnp.array(0.1j)], ids=["complex", "np", "jax"])
def test_a_complex_hyperparameter_is_refused_not_kept_static(value):
    """It stayed static: sgd(learning_rate=0.1 + 5j) gave complex updates [-0.01-0.5j, ...]."""
    with pytest.raises(
        ValueError, match=r"^sweepable\(sgd\): learning_rate must be a real number, got learning_rate ="
    ):
        jr.sweepable(optax.sgd)(learning_rate=value)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**400], ids=["2**64", "-2**63-1", "10**400"])
def test_an_int_beyond_64_bits_is_refused_not_kept_static(value):
    """numpy holds such an int as an object, not a number: sgd kept it as a static learning rate
    (10**400 ran without a word); a float of the same size is a number and is checked as one."""
    with pytest.raises(ValueError, match=r"^sweepable\(sgd\): learning_rate = an int of \d+ bits does not fit"):
        jr.sweepable(optax.sgd)(learning_rate=value)
    assert jr.sweepable(optax.sgd)(learning_rate=2.0**70).init(jnp.zeros(2)).hyperparams["learning_rate"] == 2.0**70


def test_python_integers_inside_jit_are_the_eager_values():
    """A Python int built into the optimizer inside ``jit`` (or ``jit(vmap)``) is the value it is
    eagerly (it raised TracerArrayConversionError: the exactness check read the traced leaf)."""
    w, g = jnp.zeros(2), -jnp.ones(2)

    def first_update(lr):
        opt = optax.chain(jr.sweepable(optax.adamw)(learning_rate=lr, weight_decay=0), jr.sweepable(jr.swa)(start=1))
        u, _ = opt.update(g, opt.init(w), w)
        return u

    eager = first_update(1)
    # adamw's first step is lr * g / (|g| + eps): eager and compiled round it within 2 ulps
    tol = 2 * float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(jax.jit(first_update, static_argnums=0)(1), eager, rtol=tol)
    swept = jax.jit(jax.vmap(first_update))(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(swept, np.stack([eager, 2 * eager]), rtol=tol)


def test_a_concrete_value_given_inside_jit_meets_the_factorys_own_checks():
    """Inside ``jit`` the numbers are stored as tracers; jaxreg's transforms check a concrete one
    (it was skipped there and ema(1.5) averaged to garbage)."""
    with pytest.raises(ValueError, match=r"^ema: decay must be in \[0, 1\], got decay = 1.5"):
        jax.jit(lambda w: jr.sweepable(jr.ema)(decay=1.5).init(w))(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"^add_gradient_noise: eta must be finite and >= 0, got eta = -1.0"):
        key = jax.random.key(0)  # concrete: closed over
        jax.jit(lambda w: jr.sweepable(jr.add_gradient_noise)(eta=-1, key=key).init(w))(jnp.zeros(2))
    # a traced value is the caller's (as documented): no check, no error
    states = jax.jit(jax.vmap(lambda d: jr.sweepable(jr.ema)(decay=d).init(jnp.zeros(2))))(jnp.array([0.5, 0.9]))
    np.testing.assert_array_equal(states.hyperparams["decay"], np.float32([0.5, 0.9]))


def test_a_number_beside_a_schedule_is_checked_without_checking_the_schedule():
    """The factory's checks see the concrete number, not a placeholder for the schedule (0 was
    checked as max_norm's bound and as swa's every: valid calls were refused)."""

    def opt(learning_rate, max_value):
        return optax.chain(optax.sgd(learning_rate), jr.project(jr.max_norm(max_value)))

    bound = jr.schedule(optax.linear_schedule, init_value=2.0, end_value=1.0, transition_steps=10)
    tx = jr.sweepable(opt)(learning_rate=0.5, max_value=bound)
    w = jnp.array([3.0, 4.0])
    u, _ = tx.update(-jnp.ones(2), tx.init(w), w)
    # sgd's step to [3.5, 4.5], then projected onto the norm ball of the schedule's first value, 2
    np.testing.assert_allclose(
        w + u, np.array([3.5, 4.5]) * 2.0 / np.hypot(3.5, 4.5), rtol=4 * float(np.finfo(np.float32).eps)
    )
    every = jr.schedule(optax.constant_schedule, value=2.0)
    jr.sweepable(jr.swa)(start=1, every=every).init(w)
    with pytest.raises(ValueError, match=r"^max_norm: max_value must be finite and > 0, got max_value = -1.0"):
        jr.sweepable(lambda learning_rate, b: opt(learning_rate, b))(learning_rate=bound, b=-1.0)


def test_a_value_that_rounds_out_of_its_domain_in_float32_is_refused():
    """b2 = 0.99999999 is in [0, 1) but is 1.0 in float32: adam's first update was NaN."""
    with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\), got b2 = 1.0\. \(b2 = 0.99999999 is 1.0 in float32"):
        jr.sweepable(optax.adam)(learning_rate=0.1, b2=0.99999999)
    with pytest.raises(
        ValueError, match=r"learning_rate must be .*, got learning_rate = 1e\+39, which overflows float32"
    ):
        jr.sweepable(optax.sgd)(learning_rate=1e39)
    with jax.enable_x64(True):  # float64 holds both
        assert (
            float(jr.sweepable(optax.adam)(b2=0.99999999, learning_rate=0.1).init(jnp.zeros(1)).hyperparams["b2"])
            == 0.99999999
        )
    opt = jr.sweepable(optax.adam)(learning_rate=0.1, b2=0.9999999)  # 1 - 1.2e-7: below 1 in float32
    assert float(opt.init(jnp.zeros(1)).hyperparams["b2"]) < 1.0


@pytest.mark.parametrize("key", [jax.random.key(5), jax.random.PRNGKey(5)], ids=["typed", "raw"])
def test_a_prng_key_argument_is_static_and_the_noise_is_the_unwrapped_transforms(key):
    # A typed key crashed the argument check (TypeError); raw key words were taken for a
    # non-scalar hyperparameter.
    opt = jr.sweepable(jr.add_gradient_noise)(eta=0.5, key=key)
    assert set(opt.init(W0).hyperparams) == {"eta"}
    plain = jr.add_gradient_noise(0.5, key=key)
    g = jax.tree.map(jnp.zeros_like, W0)
    u, _ = opt.update(g, opt.init(W0))
    expected, _ = plain.update(g, plain.init(W0))
    chex.assert_trees_all_equal(u, expected)
    with pytest.raises(ValueError, match=r"key is a PRNG key, static, so it cannot be traced"):
        jax.vmap(lambda k: jr.sweepable(jr.add_gradient_noise)(eta=0.5, key=k))(jax.random.split(jax.random.key(0), 2))


def test_a_rebuilt_transform_keeps_its_own_value_whatever_the_arguments_are_named():
    # The value jr.ema is built with at each step is used, not an argument of the same name: an
    # rmsprop decay beside jr.ema(0.999) must not reach the EMA, and a half-life must.
    grads, w = jnp.ones(2), jnp.zeros(2)
    make = jr.sweepable(
        lambda learning_rate, decay: optax.chain(optax.rmsprop(learning_rate, decay=decay), jr.ema(0.999))
    )
    opt = make(learning_rate=0.1, decay=0.5)
    _, state = opt.update(grads, opt.init(w), w)
    assert float(state.inner_state[1].decay) == float(np.float32(0.999))
    halflife = jr.sweepable(lambda halflife: jr.ema(0.5 ** (1.0 / halflife)))
    opt = halflife(halflife=1.0)
    state = opt.init(w)
    state = state._replace(hyperparams={"halflife": jnp.float32(2.0)})  # a changed value
    _, state = opt.update(grads, state, w)
    assert float(state.inner_state.decay) == pytest.approx(0.5**0.5, rel=4 * float(jnp.finfo(jnp.float32).eps))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # optax's own TypeError from inside the trace, naming neither the schedule nor the argument
        (
            dict(init_value="a", end_value=0.0, transition_steps=10),
            r"^schedule\(linear_schedule\): linear_schedule\(init_value='a', end_value=0.0, transition_steps=10\) "
            r"failed: TypeError: ",
        ),
        (dict(init_value=None, end_value=0.0, transition_steps=10), r"linear_schedule\(init_value=None, .*failed"),
        # "The truth value of an array with more than one element is ambiguous", from optax's `if`
        (
            dict(init_value=0.1, end_value=0.0, transition_steps=jnp.array([10, 20])),
            r"^schedule\(linear_schedule\): transition_steps must be one finite number \(an int\), got "
            r"transition_steps = an array of shape \(2,\) and dtype int32\.$",
        ),
        # a schedule of NaN values
        (dict(init_value=0.1, end_value=0.0, transition_steps=float("nan")), r"transition_steps = nan\.$"),
    ],
    ids=["str", "none", "array-steps", "nan-steps"],
)
def test_schedule_names_arguments_its_factory_cannot_take(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jr.schedule(optax.linear_schedule, **kwargs)
    s = jr.schedule(optax.linear_schedule, init_value=0.1, end_value=0.0, transition_steps=10.0)  # a float count
    assert float(s(5)) == pytest.approx(float(optax.linear_schedule(0.1, 0.0, 10)(5)), rel=1e-6)
