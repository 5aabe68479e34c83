"""optax bridges against optax's own transforms and scikit-learn's ridge / lasso / elastic net."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.linear_model import ElasticNet, Lasso, Ridge

import jaxreg as jr


def _params():
    k = jax.random.split(jax.random.key(0), 3)
    return {
        "dense": {"kernel": jax.random.normal(k[0], (4, 3)), "bias": jax.random.normal(k[1], (3,))},
        "scale": jax.random.normal(k[2], (3,)),
    }


# The chains compared below run the same float32 operations in the same order, up to XLA's
# fusion choices: a few ulps per step over 5 steps of values of order 1.
EPS = float(np.finfo(np.float32).eps)
RTOL, ATOL = 32 * EPS, 32 * EPS


def _run(opt, params, steps=5, seed=1):
    """Applies `steps` updates with deterministic pseudo-gradients; returns the params after each."""
    state, history = opt.init(params), []
    keys = jax.random.split(jax.random.key(seed), steps)
    for k in keys:
        leaves, treedef = jax.tree.flatten(params)
        ks = jax.random.split(k, len(leaves))
        grads = jax.tree.unflatten(treedef, [jax.random.normal(kk, x.shape) for kk, x in zip(ks, leaves)])
        # optax's Adam bias correction computes ``decay ** count`` (float ** int32), which strict
        # dtype promotion refuses: only the optimizer's update runs under standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def _assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


def test_decoupled_l2_reproduces_adamw_update_for_update():
    lr, wd = 1e-2, 0.1
    mask = jax.tree.map(lambda x: x.ndim >= 2, _params())
    ours = optax.chain(
        optax.scale_by_adam(),
        jr.add_penalty_grad(jr.l2(wd / 2, mask=jr.masks.kernels)),
        optax.scale_by_learning_rate(lr),
    )
    ref = optax.adamw(lr, weight_decay=wd, mask=mask)
    for a, b in zip(_run(ours, _params()), _run(ref, _params())):
        _assert_trees_close(a, b)


def test_coupled_l2_reproduces_add_decayed_weights_before_the_optimizer():
    wd = 0.05
    ours = optax.chain(jr.add_penalty_grad(jr.l2(wd / 2)), optax.adam(1e-2))
    ref = optax.chain(optax.add_decayed_weights(wd), optax.adam(1e-2))
    for a, b in zip(_run(ours, _params()), _run(ref, _params())):
        _assert_trees_close(a, b)


def test_add_penalty_grad_equals_gradient_of_regularized_loss():
    params = _params()
    penalty = jr.elastic_net(0.01, 0.02, mask=jr.masks.by_path("kernel")) + jr.tie(
        0.3, lambda p: (p["scale"], p["dense"]["bias"])
    )
    loss = lambda p: jnp.sum(p["dense"]["kernel"] ** 3) + jnp.sum(jnp.sin(p["scale"]))  # noqa: E731
    (_, terms), g = jax.value_and_grad(jr.regularize(loss, penalty), has_aux=True)(params)
    u, _ = jr.add_penalty_grad(penalty).update(jax.grad(loss)(params), optax.EmptyState(), params)
    # The same gradient through two differentiation paths: a few ulps of values of order 10.
    _assert_trees_close(g, u, rtol=64 * EPS, atol=64 * EPS)
    np.testing.assert_allclose(terms.penalty, penalty(params), rtol=4 * EPS)


def _design(n=60, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = np.array([2.0, -1.5, 0.0, 0.0, 1.0, 0.0, 0.5, 0.0])[:d]
    y = x @ w + 0.3 * rng.normal(size=n)
    return x.astype(np.float32), y.astype(np.float32)


def test_ridge_solution_through_regularize_matches_sklearn():
    x, y = _design()
    alpha = 3.0
    ref = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky").fit(x, y).coef_
    fn = jr.regularize(lambda w, x, y: jnp.sum((x @ w - y) ** 2), jr.l2(alpha))
    solver = optax.lbfgs()

    def step(carry, _):
        w, state = carry
        (value, _), g = jax.value_and_grad(fn, has_aux=True)(w, x, y)
        updates, state = solver.update(g, state, w, value=value, grad=g, value_fn=lambda w: fn(w, x, y)[0])
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(x.shape[1])
    (w, _), _ = jax.lax.scan(step, (w0, solver.init(w0)), length=100)
    np.testing.assert_allclose(w, ref, rtol=1e-4, atol=1e-4)


def _ista(penalty, x, y, steps=3000):
    """Proximal gradient on (1/2n)|Xw - y|^2 + penalty, step 1/L."""
    n = x.shape[0]
    lr = float(n / np.linalg.eigvalsh(x.T @ x).max())
    opt = optax.chain(optax.sgd(lr), jr.proximal(penalty, lr))
    loss = lambda w: 0.5 * jnp.mean((x @ w - y) ** 2)  # noqa: E731

    def step(carry, _):
        w, state = carry
        updates, state = opt.update(jax.grad(loss)(w), state, w)
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(x.shape[1])
    (w, _), _ = jax.jit(lambda w0: jax.lax.scan(step, (w0, opt.init(w0)), length=steps))(w0)
    return np.asarray(w)


def test_lasso_solution_through_proximal_matches_sklearn_with_exact_zeros():
    x, y = _design()
    alpha = 0.2
    ref = (
        Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100_000)
        .fit(x.astype(np.float64), y.astype(np.float64))
        .coef_
    )
    w = _ista(jr.l1(alpha), x, y)
    np.testing.assert_allclose(w, ref, atol=2e-4)
    np.testing.assert_array_equal(w == 0.0, ref == 0.0)
    assert np.sum(w == 0.0) >= 2  # the true zeros come out exactly zero


def test_elastic_net_solution_matches_sklearn():
    x, y = _design()
    alpha, ratio = 0.3, 0.6
    ref = (
        ElasticNet(alpha=alpha, l1_ratio=ratio, fit_intercept=False, tol=1e-12, max_iter=100_000)
        .fit(x.astype(np.float64), y.astype(np.float64))
        .coef_
    )
    w = _ista(jr.elastic_net(alpha * ratio, 0.5 * alpha * (1 - ratio)), x, y)
    np.testing.assert_allclose(w, ref, atol=2e-4)
    np.testing.assert_array_equal(w == 0.0, ref == 0.0)


def test_proximal_follows_a_schedule():
    schedule = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.5)
    opt = jr.proximal(jr.l1(1.0), schedule)
    w = jnp.array([3.0, -3.0])
    state = opt.init(w)
    for t in range(4):
        u, state = opt.update(jnp.zeros(2), state, w)
        new = optax.apply_updates(w, u)
        np.testing.assert_allclose(new, np.sign(w) * (np.abs(w) - 0.5 * 0.5**t), rtol=4 * EPS)
        w = new
    assert int(state.count) == 4 and state.count.dtype == jnp.int32


@pytest.mark.parametrize(
    "schedule",
    [optax.linear_schedule(0.5, 0.1, transition_steps=3), optax.cosine_decay_schedule(0.5, decay_steps=3)],
    ids=["linear", "cosine"],
)
def test_proximal_and_proximal_adam_take_optax_schedules_under_strict_promotion(schedule):
    # The suite runs with strict dtype promotion; optax's schedules mix the int32 count with floats.
    w = jnp.array([3.0, -3.0])
    opt, state, x = jr.proximal(jr.l1(1.0), schedule), None, w
    state = opt.init(w)
    for t in range(3):
        u, state = opt.update(jnp.zeros(2), state, x)
        new = optax.apply_updates(x, u)
        np.testing.assert_allclose(new, np.sign(x) * np.maximum(np.abs(x) - float(schedule(t)), 0.0), rtol=4 * EPS)
        x = new
    # With a zero penalty proximal_adam is optax.adam on the same schedule (run under standard promotion).
    grads = [jnp.array([0.3, -1.0]), jnp.array([-0.2, 0.5]), jnp.array([1.0, 0.1])]
    opt = jr.proximal_adam(jr.l1(0.0), schedule)
    with jax.numpy_dtype_promotion("standard"):
        ref = optax.adam(schedule)
        ref_state, y = ref.init(w), w
    state, x = opt.init(w), w
    for g in grads:
        u, state = opt.update(g, state, x)
        x = optax.apply_updates(x, u)
        with jax.numpy_dtype_promotion("standard"):
            v, ref_state = ref.update(g, ref_state, y)
            y = optax.apply_updates(y, v)
    np.testing.assert_allclose(x, y, rtol=16 * EPS)


@pytest.mark.parametrize("schedule", [optax.constant_schedule(0.1), lambda count: 0.1], ids=["constant", "lambda"])
def test_proximal_adam_takes_a_schedule_returning_a_python_number(schedule):
    # optax.constant_schedule returns its Python float as is; it is optax.adam's step, bit for bit.
    w, g = jnp.array([0.05, -2.0]), jnp.array([0.3, -1.0])
    opt = jr.proximal_adam(jr.l1(0.0), schedule)
    u, _ = opt.update(g, opt.init(w), w)
    with jax.numpy_dtype_promotion("standard"):
        ref = optax.adam(schedule)
        v, _ = ref.update(g, ref.init(w), w)
    np.testing.assert_array_equal(optax.apply_updates(w, u), optax.apply_updates(w, v))


@pytest.mark.parametrize("half", [jnp.bfloat16, jnp.float16])
def test_proximal_adam_of_half_leaves_with_a_schedule_is_adam_in_float32_rounded(half):
    # A schedule's float32 learning rate met a half leaf's second moment under strict promotion
    # (on for the tests) and failed. The step is taken in float32 and rounded once: with a zero
    # penalty, the float32 params' Adam run (optax, the same schedule) rounded to the half dtype.
    schedule = optax.linear_schedule(0.5, 0.1, transition_steps=3)
    w = jnp.array([3.0, -3.0, 0.25])
    grads = [jnp.array([0.3, -1.0, 0.5]), jnp.array([-0.2, 0.5, 0.25]), jnp.array([1.0, 0.125, -0.5])]
    opt = jr.proximal_adam(jr.l1(0.0), schedule)
    state, x = opt.init(w.astype(half)), w.astype(half)
    with jax.numpy_dtype_promotion("standard"):
        ref = optax.adam(schedule)
        ref_state, y = ref.init(w), w
    for g in grads:
        u, state = opt.update(g.astype(half), state, x)
        assert u.dtype == half
        x = optax.apply_updates(x, u)
        with jax.numpy_dtype_promotion("standard"):
            v, ref_state = ref.update(g, ref_state, y)
            y = optax.apply_updates(y, v)
        # one step's movement (<= lr) is rounded once per step into x: a few half ulps of |x| <= 4
        np.testing.assert_allclose(np.asarray(x, np.float32), y, rtol=0, atol=4 * float(jnp.finfo(half).eps) * 4)


def test_proximal_adam_zero_penalty_is_adam_and_l1_threshold_is_per_coordinate():
    params = _params()
    for a, b in zip(_run(jr.proximal_adam(jr.l1(0.0), 1e-2), params), _run(optax.adam(1e-2), params)):
        _assert_trees_close(a, b)
    # One step from w with gradient g: Adam's first step has v_hat = g^2, so the per-coordinate
    # step is lr / (|g| + eps), the threshold lr * lam / (|g| + eps), the point z = w - lr * sign(g).
    w, g, lr, lam = jnp.array([0.3, 0.3, -1.0]), jnp.array([0.1, 4.0, -2.0]), 0.1, 0.5
    opt = jr.proximal_adam(jr.l1(lam), lr)
    u, _ = opt.update(g, opt.init(w), w)  # proximal_adam scopes optax's promotion itself
    step = lr / (np.abs(np.asarray(g)) + 1e-8)
    z = np.asarray(w) - lr * np.asarray(g) / (np.abs(np.asarray(g)) + 1e-8)
    np.testing.assert_allclose(
        optax.apply_updates(w, u), np.sign(z) * np.maximum(np.abs(z) - step * lam, 0), rtol=16 * EPS, atol=16 * EPS
    )


def test_project_max_norm_in_chain():
    w = {"kernel": jnp.array([[3.0, 0.1], [4.0, 0.1]]), "bias": jnp.array([10.0, 10.0])}
    opt = optax.chain(optax.sgd(1.0), jr.project(jr.max_norm(1.0, mask=jr.masks.kernels)))
    u, _ = opt.update(jax.tree.map(jnp.zeros_like, w), opt.init(w), w)
    new = optax.apply_updates(w, u)
    np.testing.assert_allclose(new["kernel"], [[0.6, 0.1], [0.8, 0.1]], rtol=4 * EPS)
    np.testing.assert_array_equal(new["bias"], w["bias"])


@pytest.mark.parametrize(
    ("constraint", "params", "match"),
    [
        # a scalar was broadcast into the leaf: every entry became the sum
        (
            lambda p: jnp.sum(p),
            jnp.array([1.0, 2.0, 3.0]),
            r"leaf <root> of shape \(\) in the constraint's output and \(3,\)",
        ),
        (lambda p: {"w": p["w"]}, {"w": jnp.ones(2), "b": jnp.ones(1)}, r"have the tree structure of params"),
        # a scalar for a dict of params passed the check (jnp.shape of a dict is ()) and failed in jax's tree_map
        (lambda p: 0.0, {"w": jnp.ones(2)}, r"have the tree structure of params, got PyTreeDef\(\*\)"),
    ],
    ids=["scalar", "structure", "scalar-for-a-tree"],
)
def test_project_refuses_a_constraint_output_shaped_unlike_the_params(constraint, params, match):
    opt = jr.project(constraint)
    with pytest.raises(ValueError, match=r"^project: the constraint's output must .*" + match):
        opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)


def test_project_refuses_a_penalty_at_construction():
    # a penalty is callable (params -> its scalar value): as a constraint it set every entry to it
    with pytest.raises(
        ValueError, match=r"^project: constraint must map params to params, got the penalty .*jr.proximal"
    ):
        jr.project(jr.l2(0.1))


def test_project_and_proximal_land_in_the_set_with_half_precision_updates():
    # float32 master weights, bfloat16 gradients: the correction is emitted in float32, so the
    # projected point is P_C(w + u) up to one float32 rounding, and exact zeros stay exact
    w = jnp.asarray(np.linspace(0.2, 0.4, 9), jnp.float32)
    g = jnp.full((9,), 0.7, jnp.bfloat16)
    target = np.asarray(w, np.float64) - np.float64(g[0])  # bfloat16(0.7): every entry below 0 after the step
    for tx, expected in [
        (jr.project(jr.non_negative()), np.maximum(target, 0.0)),
        (jr.project(jr.max_norm(0.5, axis=0)), target * min(1.0, 0.5 / np.linalg.norm(target))),
        (jr.proximal(jr.l1(1.0), 1.0), np.sign(target) * np.maximum(np.abs(target) - 1.0, 0.0)),
    ]:
        opt = optax.chain(optax.sgd(1.0), tx)
        u, _ = opt.update(g, opt.init(w), w)
        new = np.asarray(optax.apply_updates(w, u), np.float64)
        np.testing.assert_allclose(new, expected, rtol=0, atol=4 * EPS)
        np.testing.assert_array_equal(new[expected == 0], 0.0)


@pytest.mark.parametrize(
    "tx",
    [
        jr.add_penalty_grad(jr.l2(0.1)),
        jr.proximal(jr.l1(0.1), 0.1),
        jr.project(jr.non_negative()),
        jr.proximal_adam(jr.l1(0.1), 0.1),
    ],
)
def test_missing_params_raise(tx):
    w = jnp.ones(2)
    with pytest.raises(ValueError, match="params = None; this transformation needs the current params"):
        tx.update(w, tx.init(w))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: jr.proximal(jr.l1(0.1), -0.1), r"learning_rate must be finite and >= 0, got learning_rate = -0\.1"),
        (lambda: jr.add_penalty_grad(lambda p: 0.0), "add_penalty_grad: penalty must be a jaxreg Penalty"),
        (lambda: jr.project(3.0), "project: constraint must be a callable"),
        (lambda: jr.proximal_adam(0.1, jr.l1(0.1)), r"proximal_adam: the arguments are \(penalty, learning_rate\)"),
        (lambda: jr.proximal_adam(jr.l1(0.1), 0.1, b1=1.5), r"proximal_adam: b1 must be in \[0, 1\), got b1 = 1\.5"),
        (lambda: jr.proximal_adam(jr.l1(0.1), 0.1, b2=-1.0), r"proximal_adam: b2 must be in \[0, 1\), got b2 = -1\.0"),
        (
            lambda: jr.proximal_adam(jr.l1(0.1), 0.1, eps=-1.0),
            r"proximal_adam: eps must be finite and >= 0, got eps = -1",
        ),
        (
            lambda: jr.proximal_adam(jr.l1(0.1) + jr.group_lasso(0.2), 0.1),
            r"proximal_adam: penalty must be separable .* no closed-form prox for GroupLasso; use "
            r"optax.chain\(optax.adam\(lr\), jr.proximal\(penalty, lr\)\)",
        ),
        (
            lambda: jr.proximal(jr.l1(0.1), jnp.array([0.1, 0.2])),
            r"proximal: learning_rate must be a scalar, got learning_rate.shape = \(2,\)",
        ),
        (
            lambda: optax.inject_hyperparams(jr.proximal)(jr.l1(0.1), 0.1).init(jnp.ones(2)),
            r"proximal: penalty must be a jaxreg Penalty, got penalty = .* \(optax.inject_hyperparams calls every "
            r"callable argument as a schedule: pass static_args=\('penalty',\)",
        ),
        (
            lambda: optax.inject_hyperparams(jr.project)(constraint=jr.max_norm(1.0)).init(jnp.ones((2, 2))),
            r"project: constraint must be a callable .* \(optax.inject_hyperparams calls every "
            r"callable argument as a schedule: pass static_args=\('constraint',\)",
        ),
    ],
    ids=[
        "negative-lr",
        "not-a-penalty",
        "not-callable",
        "old-argument-order",
        "b1",
        "b2",
        "eps",
        "non-separable",
        "array-lr",
        "inject-hyperparams",
        "inject-hyperparams-project",
    ],
)
def test_bad_arguments_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("make", [jr.proximal, jr.proximal_adam])
def test_a_schedule_returning_an_array_is_refused(make):
    # A constant of that shape is refused at construction; a schedule's was broadcast silently.
    tx = make(jr.l1(0.1), lambda count: jnp.ones(2))
    w = jnp.ones(2)
    with pytest.raises(
        ValueError,
        match=rf"^{make.__name__}: a learning_rate schedule must return a scalar, got a value of shape \(2,\)",
    ):
        tx.update(w, tx.init(w), w)


def test_a_prox_step_that_does_not_broadcast_to_a_leaf_is_named():
    params = {"w": jnp.ones((3, 2))}
    with pytest.raises(
        ValueError, match=r"^l1.prox: step must broadcast to each leaf's shape, got a step of shape \(5,\) for leaf 'w'"
    ):
        jr.l1(1.0).prox(params, jnp.ones(5))
    # A step that broadcasts (one per row) is each coordinate's own step: soft-thresholding by it.
    got = jr.l1(1.0).prox(params, {"w": jnp.array([[0.25], [0.5], [2.0]])})
    np.testing.assert_array_equal(got["w"], np.array([[0.75, 0.75], [0.5, 0.5], [0.0, 0.0]]))


def test_transforms_jit_and_vmap_over_scales():
    w = jnp.array([1.0, -0.05, 0.5])

    def one(scale):
        opt = optax.chain(optax.sgd(0.1), jr.add_penalty_grad(jr.l2(scale)), jr.proximal(jr.l1(scale), 0.1))
        u, _ = opt.update(jnp.zeros(3), opt.init(w), w)
        return optax.apply_updates(w, u)

    scales = jnp.array([0.0, 0.5, 1.0])
    batched = jax.jit(jax.vmap(one))(scales)
    for i, s in enumerate([0.0, 0.5, 1.0]):
        np.testing.assert_allclose(batched[i], one(s), rtol=4 * EPS, atol=4 * EPS)


def test_proximal_adam_passes_integer_leaves_eagerly_as_under_jit():
    # an integer leaf's Adam step was NaN, which the eager step check refused
    params = {"w": jnp.array([1.0, -0.01]), "step": jnp.array(3)}
    grads = {"w": jnp.array([0.1, 0.1]), "step": jnp.array(0)}
    opt = jr.proximal_adam(jr.l1(0.1), 0.1)
    eager, _ = opt.update(grads, opt.init(params), params)
    jitted, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    assert int(eager["step"]) == 0 and eager["step"].dtype == jnp.int32
    # the float leaf: Adam's first direction is g / (|g| + eps) ~ 1, so z = w - 0.1; the per-coordinate
    # step is lr / (sqrt(v_hat) + eps) = 0.1 / (0.1 + 1e-8), the L1 threshold that step times 0.1
    z = np.array([1.0, -0.01]) - 0.1 * 0.1 / (0.1 + 1e-8)
    threshold = 0.1 / (0.1 + 1e-8) * 0.1
    expected = np.sign(z) * np.maximum(np.abs(z) - threshold, 0) - [1.0, -0.01]
    np.testing.assert_allclose(np.asarray(eager["w"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jitted["w"]), np.asarray(eager["w"]), rtol=0, atol=4 * EPS)


def _sgd_on_floats(lr: float) -> optax.GradientTransformation:
    # optax's sgd computes -lr * g of a bool too, which strict promotion (these tests') refuses
    return optax.masked(optax.sgd(lr), lambda p: jax.tree.map(lambda x: x.dtype != jnp.bool_, p))


@pytest.mark.parametrize(
    "last",
    [
        lambda: optax.chain(_sgd_on_floats(0.1), jr.proximal(jr.l1(0.5), 0.1)),
        lambda: optax.chain(_sgd_on_floats(0.1), jr.project(jr.non_negative())),
        lambda: jr.proximal_adam(jr.l1(0.5), 0.1),
    ],
)
def test_a_bool_leaf_passes_through_and_the_float_leaves_step_as_without_it(last):
    # optax's own optimizers leave a flag in the params as it is; so do the prox and projection
    # (bools have no difference: the emitted update was ``new - params``).
    opt = last()
    w, g = jnp.array([1.0, -0.02]), jnp.array([1.0, 0.5])
    with_flag, _ = opt.update(
        {"w": g, "flag": jnp.array(False)},
        opt.init({"w": w, "flag": jnp.array(True)}),
        {"w": w, "flag": jnp.array(True)},
    )
    alone, _ = opt.update({"w": g}, opt.init({"w": w}), {"w": w})
    new = optax.apply_updates({"w": w, "flag": jnp.array(True)}, with_flag)
    assert new["flag"].dtype == jnp.bool_ and bool(new["flag"])
    chex.assert_trees_all_equal(with_flag["w"], alone["w"])


@pytest.mark.parametrize("make", [jr.proximal, jr.proximal_adam])
@pytest.mark.parametrize(
    "penalty, name", [(jr.orthogonal(1.0), "Orthogonal"), (jr.l1(0.1) + jr.spectral_penalty(1.0), "SpectralPenalty")]
)
def test_a_penalty_without_a_closed_form_prox_is_refused_at_construction(make, penalty, name):
    with pytest.raises(
        ValueError, match=rf"{make.__name__}: penalty has no closed-form proximal operator for {name}; "
    ):
        make(penalty, 0.1)


@pytest.mark.parametrize(
    "make, match",
    [
        # The usual slip: a (loss, aux) loss without has_aux, or the reverse. It failed inside jax
        # ("invalid shape in fixed-type tuple", "iteration over a 0-d array") naming neither.
        (
            lambda: jr.regularize(lambda p: (jnp.sum(p), {"acc": 0.0}), jr.l2(1.0)),
            r"regularize: loss_fn returned a tuple of 2; pass has_aux=True if it returns \(loss, aux\)",
        ),
        (
            lambda: jr.regularize(jnp.sum, jr.l2(1.0), has_aux=True),
            r"regularize: with has_aux=True loss_fn must return \(loss, aux\), got an array of shape \(\)",
        ),
        (
            lambda: jr.variational.elbo_loss(lambda p: (jnp.sum(p), 0.0), num_examples=10),
            r"variational.elbo_loss: loss_fn returned a tuple of 2; pass has_aux=True",
        ),
    ],
)
def test_a_has_aux_mismatch_is_named(make, match):
    fn = make()
    with pytest.raises(ValueError, match=match):
        if "elbo" in match:
            jax.value_and_grad(fn, has_aux=True)(jr.variational.init(jnp.ones(3)), jax.random.key(0))
        else:
            jax.value_and_grad(fn, has_aux=True)(jnp.ones(3))


def test_a_factory_default_outside_the_usual_domain_is_accepted():
    # scale_by_sm3 accumulates with b2 = 1 (its default), where adam's b2 = 1 divides by 0.
    params, grads = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.25])
    wrapped = jr.sweepable(optax.scale_by_sm3)(b1=0.9, b2=1.0)
    plain = optax.scale_by_sm3(b1=0.9, b2=1.0)
    got = wrapped.update(grads, wrapped.init(params), params)[0]
    # within rounding: 1 - b1 from the float32-rounded b1 (the sweepable docstring's "within rounding")
    want = plain.update(grads, plain.init(params), params)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=8 * EPS)
    with pytest.raises(ValueError, match=r"^sweepable\(adam\): b2 must be in \[0, 1\), got b2 = 1\.0\."):
        jr.sweepable(optax.adam)(learning_rate=0.1, b2=1.0)


def test_a_per_example_loss_or_a_missing_has_aux_is_refused_by_name():
    # A vector loss had the penalty added to every element (sum(total) counted it 4 times); in
    # train_step it failed in jax's grad, as did a (loss, aux) pair without has_aux=True.
    per_example = jr.regularize(lambda w: w**2, jr.l2(0.1))
    with pytest.raises(
        ValueError, match=r"^regularize: loss_fn must return a scalar loss, got an output of shape \(4,\)"
    ):
        per_example(jnp.ones(4))
    opt = optax.sgd(0.1)
    params = jnp.ones((2, 3))
    args = (params, jax.vmap(opt.init)(params), jnp.ones(3), jax.random.key(0))
    vector = jr.ensemble.train_step(lambda p, b, r, h: (p * b) ** 2, opt)
    with pytest.raises(ValueError, match=r"^ensemble.train_step: loss_fn must return a scalar loss, got an output"):
        vector(*args)
    paired = jr.ensemble.train_step(lambda p, b, r, h: (jnp.sum(p), {"a": 1.0}), opt)
    with pytest.raises(ValueError, match=r"^ensemble.train_step: loss_fn returned a tuple of 2; pass has_aux=True"):
        paired(*args)
    # the checked step is still the member's plain gradient step: loss sum(p**2 b), grad 2 p b
    step = jr.ensemble.train_step(lambda p, b, r, h: jnp.sum(p**2 * b), opt)
    new, _, losses = step(*args)
    np.testing.assert_allclose(np.asarray(new), 1.0 - 0.1 * 2.0, rtol=EPS)
    np.testing.assert_allclose(np.asarray(losses), 3.0, rtol=EPS)


def test_an_integer_loss_does_not_truncate_the_penalty():
    total, _ = jr.regularize(lambda p: 1, jr.l2(0.3))(jnp.ones(2))
    assert float(total) == pytest.approx(1 + 0.3 * 2, rel=4 * EPS)  # was 1: the penalty cast to int


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: jr.regularize(None, jr.l2(0.1)), r"^regularize: loss_fn must be a function, got loss_fn = None\."),
        (lambda: jr.ensemble.map(None), r"^ensemble.map: fn must be a function, got fn = None\."),
        (
            lambda: jr.ensemble.train_step(None, optax.sgd(0.1)),
            r"^ensemble.train_step: loss_fn must be a function \(params, batch, rng, hparams\) -> loss, got loss_fn = None\.",
        ),
        (
            lambda: jr.ensemble.train_step(lambda p, b, r, h: 0.0, 0.1),
            r"^ensemble.train_step: optimizer must be an optax GradientTransformation, got optimizer = 0\.1\.",
        ),
        # Non-finite or complex numbers were accepted: NaN updates, a dropped imaginary part.
        (
            lambda: jr.sweepable(optax.adam)(learning_rate=float("nan")),
            r"^sweepable\(adam\): learning_rate must be finite and >= 0, got learning_rate = nan\.",
        ),
        # Out of optax's domain, optax raised nothing: ascent, NaN updates (1 - b1**t = 0), a bool
        # read as the learning rate 1, a string failing inside optax.
        (
            lambda: jr.sweepable(optax.adam)(learning_rate=-0.1),
            r"^sweepable\(adam\): learning_rate must be finite and >= 0, got learning_rate = -0\.1\.",
        ),
        (
            lambda: jr.sweepable(optax.adam)(learning_rate=0.1, b1=1.0),
            r"^sweepable\(adam\): b1 must be in \[0, 1\), got b1 = 1\.0\.",
        ),
        (
            lambda: jr.sweepable(optax.adamw)(learning_rate=0.1, weight_decay=-1e-4),
            r"^sweepable\(adamw\): weight_decay must be finite and >= 0, got weight_decay = -0\.0001\.",
        ),
        (
            lambda: jr.sweepable(optax.adam)(learning_rate=True),
            r"^sweepable\(adam\): learning_rate must be a number, got learning_rate = True\.",
        ),
        (
            lambda: jr.sweepable(optax.adam)(learning_rate="0.1"),
            r"^sweepable\(adam\): learning_rate must be a number, got learning_rate = '0\.1'\.",
        ),
        (
            lambda: jr.sweepable(optax.sgd)(learning_rate=0.1, momentum=True),
            r"^sweepable\(sgd\): momentum must be a number, got momentum = True\.",
        ),
        # A function argument that is not one failed with jax's or Python's TypeError, some only
        # when called.
        (
            lambda: jr.mc_dropout("f", 1.0, 1.0, jax.random.key(0), 4),
            r"^mc_dropout: apply_fn must be a function \(params, x, rng\) -> outputs, got apply_fn = 'f'\.",
        ),
        (
            lambda: jr.mc_dropout_samples("f", 1.0, 1.0, jax.random.key(0), 4),
            r"^mc_dropout_samples: apply_fn must be a function",
        ),
        (
            lambda: jr.mc_dropconnect("f", jnp.ones(2), 1.0, jax.random.key(0), 4, 0.5),
            r"^mc_dropconnect: apply_fn must be a function",
        ),
        (lambda: jr.ensemble.predict("f", jnp.ones(2), 1.0), r"^ensemble.predict: apply_fn must be a function"),
        (
            lambda: jr.ensemble.init("f", jax.random.key(0), 2),
            r"^ensemble.init: init_fn must be a function rng -> params, got init_fn = 'f'\.",
        ),
        (
            lambda: jr.es.gradient("f", jnp.ones(2), jax.random.key(0), sigma=0.1, population=4),
            r"^es.gradient: loss_fn must be a function params -> loss, got loss_fn = 'f'\.",
        ),
        (
            lambda: jr.es.value_and_gradient("f", jnp.ones(2), jax.random.key(0), sigma=0.1, population=4),
            r"^es.value_and_gradient: loss_fn must be a function",
        ),
        (lambda: jr.sam_gradient("f", jnp.ones(2), rho=0.1), r"^sam_gradient: loss_fn must be a function"),
        (
            lambda: jr.variational.elbo_loss("f", num_examples=10),
            r"^variational.elbo_loss: loss_fn must be a function, got loss_fn = 'f'\.",
        ),
        (
            lambda: jr.variational.predict("f", jr.variational.init(jnp.ones(2)), 1.0, jax.random.key(0), 4),
            r"^variational.predict: apply_fn must be a function",
        ),
        (lambda: jr.l2(1 + 1j), r"^l2: scale must be finite and >= 0, got scale = \(1\+1j\)\."),
        (lambda: jr.l2(0.1, center={"w": jnp.array([0.0, np.nan])}), r"^l2: center\['w'\] must be finite"),
        (
            lambda: jr.kl_normal(jnp.zeros(3), jnp.ones(3), prior_mean=np.nan),
            r"^kl_normal: prior_mean must be finite, got prior_mean = nan\.",
        ),
    ],
)
def test_functions_and_numbers_are_checked_when_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_centre_with_a_non_float_leaf_is_not_checked_for_finiteness():
    params = {"w": jnp.array([1.0, 2.0]), "frozen": jnp.array([True])}
    pen = jr.l2(0.5, center={"w": jnp.array([1.0, 0.0]), "frozen": jnp.array([False])})
    assert float(pen(params)) == 0.5 * 4.0  # (2 - 0)^2; the bool leaf is not penalized


def test_regularizers_built_inside_a_trace_hold_no_tracer():
    """flax's restore recipe builds the model and optimizer inside ``nnx.eval_shape`` and keeps its
    graphdef, which holds the optax chain: a penalty or constraint built there held a leaked
    tracer, and the second call of the jitted step failed ("supplied 3 arguments ... expected 5")."""
    from flax import nnx

    x = jnp.ones((4, 3))

    def make():
        return optax.chain(
            jr.add_penalty_grad(jr.l2(0.1)),
            jr.sweepable(optax.sgd)(learning_rate=0.05),
            jr.proximal(jr.l1(0.01), 0.05),
            jr.project(jr.max_norm(1.0)),
        )

    def build():
        model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, make(), wrt=nnx.Param)

    graphdef, _ = nnx.split(nnx.eval_shape(build))
    model, opt = nnx.merge(graphdef, nnx.state(build()))  # the restored state, concretely

    @nnx.jit
    def step(model, opt):
        opt.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

    ref_model, ref_opt = build()  # the chain built outside any trace
    for _ in range(3):
        step(model, opt)
        step(ref_model, ref_opt)
    chex.assert_trees_all_equal(nnx.state(model), nnx.state(ref_model))
    # and the objects themselves: built in a trace, their numbers are concrete arrays
    built = {}
    jax.eval_shape(lambda: built.update(p=jr.l1(0.3), c=jr.max_norm(2.0), e=jr.EarlyStopping(3, min_delta=0.1)) or 0.0)
    assert not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(built))
