"""Penalties: values, gradients and proximal operators against closed forms and numpy."""

import functools
import re

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxreg as jr

# Closed forms below are a few float32 operations on values of order 1: 8 ulps (8 * EPS relative).
EPS = float(np.finfo(np.float32).eps)
SETTINGS = settings(max_examples=25, deadline=None)

floats = st.floats(-3.0, 3.0, allow_nan=False, width=32)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


@st.composite
def pytrees(draw):
    """Random nested dict/list pytrees of float32 arrays."""
    n = draw(st.integers(1, 4))
    leaves = [draw(hnp.arrays(np.float32, draw(shapes), elements=floats)) for _ in range(n)]
    keys = [f"k{i}" for i in range(n)]
    if draw(st.booleans()):
        return {k: jnp.asarray(v) for k, v in zip(keys, leaves)}
    return [{"w": jnp.asarray(v)} for v in leaves]


def _np_leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


@SETTINGS
@given(pytrees(), st.floats(0.0, 2.0), st.data())
def test_values_match_numpy(tree, scale, data):
    keep = [data.draw(st.booleans()) for _ in jax.tree.leaves(tree)]
    mask = jax.tree.unflatten(jax.tree.structure(tree), keep)
    leaves = [x for x, k in zip(_np_leaves(tree), keep) if k]

    def close(value, terms):
        # A float32 sum of n terms, in any order, is within n * eps * sum|terms| of the float64 sum.
        n = max(1, sum(t.size for t in terms))
        bound = n * EPS * sum(float(np.sum(np.abs(t))) for t in terms) + EPS
        np.testing.assert_allclose(value, sum(float(np.sum(t)) for t in terms), rtol=0, atol=bound)

    close(jr.l2(scale, mask=mask)(tree), [scale * x**2 for x in leaves])
    close(jr.l1(scale, mask=mask)(tree), [scale * np.abs(x) for x in leaves])
    close(jr.elastic_net(0.3, scale, mask=mask)(tree), [0.3 * np.abs(x) + scale * x**2 for x in leaves])


def test_l2_center_is_distance_to_reference():
    w = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[3.0]])}
    c = {"a": jnp.array([0.5, 0.0]), "b": jnp.array([[1.0]])}
    assert float(jr.l2(2.0, center=c)(w)) == pytest.approx(2.0 * (0.25 + 4.0 + 4.0))
    assert float(jr.l2(2.0, center=w)(w)) == 0.0


def test_group_lasso_value_matches_numpy_row_and_column_norms():
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    rows = np.linalg.norm(w, axis=1).sum()
    cols = np.linalg.norm(w, axis=0).sum()
    np.testing.assert_allclose(jr.group_lasso(0.5, axis=0)(jnp.asarray(w)), 0.5 * rows, rtol=8 * EPS)
    np.testing.assert_allclose(jr.group_lasso(0.5, axis=1)(jnp.asarray(w)), 0.5 * cols, rtol=8 * EPS)
    np.testing.assert_allclose(jr.group_lasso(0.5, axis=-1)(jnp.asarray(w)), 0.5 * cols, rtol=8 * EPS)


def test_tie_value_and_gradient():
    p = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([0.0, 4.0]), "c": jnp.array(7.0)}
    pen = jr.tie(0.5, lambda t: (t["a"], t["b"]))
    assert float(pen(p)) == pytest.approx(0.5 * (1.0 + 4.0))
    g = jax.grad(pen)(p)
    np.testing.assert_allclose(g["a"], 2 * 0.5 * (p["a"] - p["b"]))
    np.testing.assert_allclose(g["b"], -2 * 0.5 * (p["a"] - p["b"]))
    assert float(g["c"]) == 0.0


def test_sum_and_scale_algebra():
    w = {"k": jnp.array([[1.0, -2.0]]), "b": jnp.array([3.0])}
    a, b = jr.l2(0.1), jr.l1(0.2, mask=jr.masks.kernels)
    np.testing.assert_allclose((a + b)(w), a(w) + b(w), rtol=8 * EPS)
    np.testing.assert_allclose((3.0 * a)(w), 3.0 * a(w), rtol=8 * EPS)
    np.testing.assert_allclose((a * 3.0 + b + a)(w), 4.0 * a(w) + b(w), rtol=8 * EPS)
    assert len((a + b + a).terms) == 3  # sums flatten


def _penalty_id(penalty: jr.Penalty) -> str:
    # repr without object addresses: the same id in every process (pytest-xdist compares them).
    return re.sub(r" at 0x[0-9a-f]+", "", repr(penalty))


# Finite-difference gradients of every penalty, at points away from kinks.
_W = {"k": jnp.array([[0.7, -1.3, 0.4], [2.1, -0.6, 1.1]]), "b": jnp.array([0.9, -0.8, 1.5])}


@pytest.mark.parametrize(
    "penalty",
    [
        jr.l2(0.3),
        jr.l2(0.3, center=jax.tree.map(lambda x: 0.5 * x + 0.1, _W)),
        jr.l1(0.2),
        jr.elastic_net(0.2, 0.1, mask=jr.masks.kernels),
        jr.tie(0.4, lambda t: (t["k"][0], t["b"])),
        jr.group_lasso(0.3, axis=0, mask=jr.masks.kernels),
        jr.group_lasso(0.3, axis=1, mask=jr.masks.kernels),
        jr.l2(0.1) + 2.0 * jr.l1(0.05),
    ],
    ids=_penalty_id,
)
def test_gradients_match_finite_differences(penalty):
    w64 = _W
    check_grads(penalty, (w64,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-3)


def _prox_objective(penalty, u, v, t):
    sq = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v)))
    return sq / (2 * t) + penalty(u)


@SETTINGS
@given(pytrees(), st.floats(0.01, 1.0), st.floats(0.01, 2.0), st.integers(0, 2**31 - 1))
def test_prox_is_the_minimizer(tree, scale, step, seed):
    """prox(v) minimizes |u - v|^2 / 2t + penalty(u): no random perturbation does better."""
    penalties = [jr.l2(scale), jr.l1(scale), jr.elastic_net(scale, 0.5 * scale), jr.group_lasso(scale, axis=-1)]
    rng = np.random.default_rng(seed)
    for penalty in penalties:
        u = penalty.prox(tree, step)
        best = float(_prox_objective(penalty, u, tree, step))
        for _ in range(5):
            delta = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 1e-2, jnp.float32), u)
            other = jax.tree.map(jnp.add, u, delta)
            # The objective is of order 10 and evaluated in float32: 1e-4 is ~100 ulps of it, while a
            # perturbation of 1e-2 raises a strongly convex objective by at least |delta|^2 / 2t.
            assert best <= float(_prox_objective(penalty, other, tree, step)) + 1e-4, penalty


def test_prox_closed_forms_match_numpy():
    v = np.array([-3.0, -0.2, 0.0, 0.4, 2.5], np.float32)
    t, lam = 0.5, 1.0
    soft = np.sign(v) * np.maximum(np.abs(v) - t * lam, 0)
    np.testing.assert_allclose(jr.l1(lam).prox(jnp.asarray(v), t), soft)
    np.testing.assert_allclose(jr.l2(lam).prox(jnp.asarray(v), t), v / (1 + 2 * t * lam), rtol=8 * EPS)
    np.testing.assert_allclose(jr.elastic_net(lam, 0.3).prox(jnp.asarray(v), t), soft / (1 + 2 * t * 0.3), rtol=8 * EPS)
    # L1 then L2 in a Sum is the elastic net's prox, whatever the order written.
    np.testing.assert_allclose(
        (jr.l2(0.3) + jr.l1(lam)).prox(jnp.asarray(v), t), soft / (1 + 2 * t * 0.3), rtol=8 * EPS
    )
    # A scaled L2 is still an uncentred L2: 2 * l2(0.15) + l1 is the same elastic net, in either order.
    for summed in (2.0 * jr.l2(0.15) + jr.l1(lam), jr.l1(lam) + 2.0 * jr.l2(0.15)):
        np.testing.assert_allclose(summed.prox(jnp.asarray(v), t), soft / (1 + 2 * t * 0.3), rtol=8 * EPS)
    c = np.array([1.0, 1.0, 1.0, 1.0, 1.0], np.float32)
    np.testing.assert_allclose(
        jr.l2(lam, center=jnp.asarray(c)).prox(jnp.asarray(v), t), (v + 2 * t * lam * c) / (1 + 2 * t * lam), rtol=1e-6
    )
    # Scaled prox: prox_{t c p} = prox_p with step c t.
    np.testing.assert_allclose((2.0 * jr.l1(lam)).prox(jnp.asarray(v), t), jr.l1(lam).prox(jnp.asarray(v), 2 * t))


def test_l1_prox_gives_exact_zeros_and_group_lasso_zeroes_whole_groups():
    w = jnp.array([[0.1, -0.2], [3.0, 4.0], [0.3, 0.0]])
    out = jr.l1(1.0).prox(w, 0.25)
    np.testing.assert_array_equal(np.asarray(out) == 0.0, [[True, True], [False, False], [False, True]])
    g = jr.group_lasso(1.0, axis=0).prox(w, 1.0)
    np.testing.assert_array_equal(np.asarray(g[0]), 0.0)  # norm 0.22 < 1: whole row zero
    np.testing.assert_array_equal(np.asarray(g[2]), 0.0)
    np.testing.assert_allclose(np.asarray(g[1]), np.array([3.0, 4.0]) * (1 - 1 / 5), rtol=8 * EPS)


@pytest.mark.parametrize(
    "penalty",
    [jr.l1(0.3), jr.elastic_net(0.3, 0.1), jr.group_lasso(0.3, axis=0), jr.l1(0.3) + jr.l2(0.1), jr.l1(0.0)],
    ids=["l1", "elastic_net", "group_lasso", "sum", "l1-scale-0"],
)
@pytest.mark.parametrize("step", [0.0, 0.7])
def test_prox_jacobian_at_zero_entries_matches_finite_differences(penalty, step):
    """At a threshold of 0 (a step or a scale of 0) the prox is the identity, its Jacobian too,
    zero entries and zero groups included (it was 0 there); above 0 a zero entry stays inside
    the threshold (Jacobian 0). Central differences in float64, away from every kink by > h."""
    with jax.enable_x64(True):
        w = jnp.array([[0.5, -1.0], [0.0, 0.0]])  # row 1: zero entries, a zero group
        f = lambda v: penalty.prox(v, step).reshape(-1)  # noqa: E731
        h = 1e-6
        basis = np.eye(4).reshape(4, 2, 2)
        fd = np.stack([(np.asarray(f(w + h * e)) - np.asarray(f(w - h * e))) / (2 * h) for e in basis], axis=1)
        for jac in (jax.jacrev(f)(w), jax.jacfwd(f)(w)):
            np.testing.assert_allclose(np.asarray(jac).reshape(4, 4), fd, atol=1e-8)
        # and in the step (a meta-gradient through a schedule's step), from one side: steps are >= 0
        g = lambda s: penalty.prox(w, s).reshape(-1)  # noqa: E731
        one_sided = (np.asarray(g(step + h)) - np.asarray(g(step))) / h
        np.testing.assert_allclose(np.asarray(jax.jacfwd(g)(jnp.float64(step))), one_sided, atol=1e-5)


def test_masked_leaves_untouched_by_prox():
    w = {"kernel": jnp.full((2, 2), 0.1), "bias": jnp.full((2,), 0.1)}
    out = jr.l1(1.0, mask=jr.masks.kernels).prox(w, 1.0)
    np.testing.assert_array_equal(out["kernel"], 0.0)
    np.testing.assert_array_equal(out["bias"], w["bias"])


def test_tie_prox_pulls_pair_to_mean_and_is_optimal():
    p = {"a": jnp.array([1.0, -1.0]), "b": jnp.array([0.0, 1.0]), "c": jnp.array([5.0])}
    pen, t = jr.tie(0.7, lambda q: (q["a"], q["b"])), 0.3
    u = pen.prox(p, t)
    np.testing.assert_allclose(u["a"] + u["b"], p["a"] + p["b"], rtol=8 * EPS)
    np.testing.assert_allclose(u["a"] - u["b"], (p["a"] - p["b"]) / (1 + 4 * t * 0.7), rtol=8 * EPS)
    np.testing.assert_array_equal(u["c"], p["c"])
    # Optimality: gradient of the prox objective vanishes at u.
    g = jax.grad(lambda q: _prox_objective(pen, q, p, t))(u)
    for leaf in jax.tree.leaves(g):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-5)


def test_integer_leaves_are_never_penalized():
    tree = {"w": jnp.array([2.0]), "count": jnp.array([5], jnp.int32)}
    assert float(jr.l2(1.0)(tree)) == 4.0
    out = jr.l1(10.0).prox(tree, 1.0)
    assert int(out["count"][0]) == 5 and float(out["w"][0]) == 0.0


def test_tie_skips_pairs_of_integer_leaves():
    tree = {
        "a": jnp.array([3], jnp.int32),
        "b": jnp.array([5], jnp.int32),
        "c": jnp.array([1.0, 2.0]),
        "d": jnp.zeros(2),
    }
    pen, t = jr.tie(2.0, lambda q: ((q["a"], q["c"]), (q["b"], q["d"]))), 0.1
    np.testing.assert_allclose(pen(tree), 2.0 * (1.0 + 4.0), rtol=8 * EPS)  # only the (c, d) pair
    out = pen.prox(tree, t)
    assert out["a"].dtype == jnp.int32 and int(out["a"][0]) == 3 and int(out["b"][0]) == 5
    np.testing.assert_allclose(out["c"] - out["d"], np.array([1.0, 2.0]) / (1 + 4 * t * 2.0), rtol=8 * EPS)
    np.testing.assert_allclose(out["c"] + out["d"], np.array([1.0, 2.0]), rtol=8 * EPS)
    grads, _ = jr.add_penalty_grad(pen).update(jax.tree.map(jnp.zeros_like, tree), optax.EmptyState(), tree)
    np.testing.assert_allclose(grads["c"], 2.0 * 2.0 * np.array([1.0, 2.0]), rtol=8 * EPS)
    assert grads["b"].tolist() == [0]


def test_sum_of_a_list_and_zero_scaled_prox_at_infinite_step():
    w = jnp.array([0.5, -2.0, 3.0])
    total = sum([jr.l1(0.3), jr.l2(0.2), jr.group_lasso(0.1)])
    ref = 0.3 * 5.5 + 0.2 * (0.25 + 4.0 + 9.0) + 0.1 * float(np.abs(np.asarray(w)).sum())  # 1-D: groups of one
    np.testing.assert_allclose(total(w), ref, rtol=8 * EPS)
    # prox of 0 * penalty is the identity, whatever the step (0 * inf is not a NaN threshold here)
    np.testing.assert_array_equal((0.0 * jr.l1(1.0)).prox(w, jnp.inf), w)
    np.testing.assert_array_equal((0.0 * (jr.l1(1.0) + jr.l2(1.0))).prox(w, jnp.inf), w)


def test_sweep_of_scales_is_one_vmap_and_one_trace():
    w = {"w": jnp.arange(4.0)}
    scales = jnp.array([0.0, 0.5, 1.0, 2.0])
    values = jax.vmap(lambda s: jr.l2(s)(w))(scales)
    np.testing.assert_allclose(values, scales * 14.0)
    # A penalty is a pytree: passing a new scale into a jitted function does not retrace.
    f = jax.jit(chex.assert_max_traces(lambda pen, t: pen(t) + jnp.sum(pen.prox(t, 0.1)["w"]), n=1))
    chex.clear_trace_counter()
    for s in [0.1, 0.2, 0.3]:
        f(jr.l1(s, mask=jr.masks.kernels | jr.masks.by_path("w")), w)
        f(jr.l1(jnp.float32(s), mask=jr.masks.kernels | jr.masks.by_path("w")), w)
    # vmap over a stack of penalties.
    stacked = jr.elastic_net(jnp.array([0.1, 0.2]), jnp.array([0.3, 0.4]))
    np.testing.assert_allclose(
        jax.vmap(lambda p: p(w))(stacked), [0.1 * 6 + 0.3 * 14, 0.2 * 6 + 0.4 * 14], rtol=8 * EPS
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: jr.l2(-0.1),
        lambda: jr.l1(float("nan")),
        lambda: jr.elastic_net(0.1, -1.0),
        lambda: jr.tie(-1.0, lambda p: p),
        lambda: jr.group_lasso(-2.0),
        lambda: 2.0 * jr.l1(0.1) * -1.0,
    ],
)
def test_negative_or_nan_scale_raises(make):
    with pytest.raises(ValueError, match=r"must be finite and >= 0, got \w+ = "):
        make()


_ERR_W = {"a": jnp.ones(2), "b": jnp.ones(3), "c": jnp.ones(3)}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: jr.tie(1.0, lambda p: (p["a"], p["b"]))(_ERR_W), "tie: the tied groups differ in shape"),
        (lambda: jr.tie(1.0, lambda p: ((p["a"],), p["b"]))(_ERR_W), "tie: the tied groups differ in structure"),
        (
            lambda: jr.tie(1.0, lambda p: (2 * p["b"], p["c"])).prox(_ERR_W, 0.1),
            r"tie: where must select parts of the params \(keys, indices, slices\), not compute new values; it uses \['mul'\]",
        ),
        (lambda: jr.tie(1.0, lambda p: p["b"] + p["c"])(_ERR_W), "tie: where\\(params\\) must return a pair"),
        (lambda: jr.l2(1.0, center={"a": jnp.ones(2)})(_ERR_W), "l2: center must have the structure"),
        (
            lambda: jr.l2(1.0, center={"a": jnp.ones(2), "b": jnp.ones(4), "c": jnp.ones(3)})(_ERR_W),
            "l2: center leaf 'b' has shape",
        ),
        (lambda: jr.group_lasso(1.0, axis=1)(_ERR_W), "group_lasso: axis = 1 is out of range for leaf 'a'"),
        (lambda: jr.group_lasso(1.0, axis=(0, 1)), r"group_lasso: axis must be an int, got axis = \(0, 1\)"),
        (
            lambda: jr.group_lasso(1.0).prox(_ERR_W, jax.tree.map(jnp.ones_like, _ERR_W)),
            "closed form for a scalar step only",
        ),
        (
            lambda: jr.l1(1.0).prox(_ERR_W, {"a": 1.0}),
            "l1.prox: step must be a scalar or a pytree shaped like the params",
        ),
        (
            lambda: jr.l1(1.0).prox(_ERR_W, -0.5),
            r"l1.prox: step must be >= 0 \(inf allowed, not NaN\), got step = -0.5\.",
        ),
        (
            lambda: jr.l2(1.0).prox(_ERR_W, {"a": 0.1, "b": float("nan"), "c": 0.1}),
            r"l2.prox: step must be >= 0 \(inf allowed, not NaN\), got step = nan\.",
        ),
        (lambda: jr.group_lasso(1.0).prox(_ERR_W, -1.0), r"group_lasso.prox: step must be >= 0"),
        (lambda: jr.tie(1.0, lambda p: (p["b"], p["c"])).prox(_ERR_W, -1.0), r"tie.prox: step must be >= 0"),
        (lambda: jr.l1(1.0, mask={"a": 1, "b": 0, "c": 0}), r"l1: mask must be a pytree of Python bools"),
        (lambda: jr.max_norm(1.0, mask={"a": 1, "b": 0, "c": 0}), r"max_norm: mask must be a pytree of Python bools"),
        (lambda: jr.spectral_norm(1.0, mask={"a": 1, "b": 0, "c": 0}), r"spectral_norm: mask must be a pytree"),
    ],
    ids=[
        "tie-shape",
        "tie-structure",
        "tie-computes",
        "tie-not-a-pair",
        "center-structure",
        "center-shape",
        "group-axis-range",
        "group-axis-tuple",
        "group-step-tree",
        "step-structure",
        "step-negative",
        "step-nan-leaf",
        "group-step-negative",
        "tie-step-negative",
        "mask-int-leaves",
        "constraint-mask-int-leaves",
        "spectral-mask-int-leaves",
    ],
)
def test_structure_and_shape_mismatches_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_tie_prox_with_a_sliced_selection_is_exact():
    # where selects a row of a kernel: still a selection, so the prox is the closed form.
    p = {"k": jnp.array([[1.0, 2.0], [5.0, 6.0]]), "b": jnp.array([3.0, -2.0])}
    t, lam = 0.25, 0.5
    out = jr.tie(lam, lambda q: (q["k"][0], q["b"])).prox(p, t)
    a, b = np.array([1.0, 2.0]), np.array([3.0, -2.0])
    diff = (a - b) / (1 + 4 * t * lam)
    np.testing.assert_allclose(out["k"][0], (a + b) / 2 + diff / 2, rtol=4 * EPS)
    np.testing.assert_allclose(out["b"], (a + b) / 2 - diff / 2, rtol=4 * EPS)
    np.testing.assert_array_equal(out["k"][1], p["k"][1])


def test_tie_with_index_arrays_is_a_selection_and_its_prox_is_exact():
    # Fancy indexing normalizes negative indices (lt, add, select_n on the index array, not on
    # the params): still a selection. Even rows tied to odd rows, against numpy's closed form.
    k = np.arange(12.0, dtype=np.float32).reshape(4, 3) ** 1.5
    t, lam = 0.2, 0.5
    tied = jr.tie(lam, lambda q: (q["k"][jnp.array([0, 2])], q["k"][jnp.array([-3, 3])]))
    a, b = k[[0, 2]], k[[1, 3]]
    np.testing.assert_allclose(tied({"k": jnp.asarray(k)}), lam * np.sum((a - b) ** 2), rtol=8 * EPS)
    out = np.asarray(tied.prox({"k": jnp.asarray(k)}, t)["k"])
    diff = (a - b) / (1 + 4 * t * lam)
    np.testing.assert_allclose(out[[0, 2]], (a + b) / 2 + diff / 2, rtol=8 * EPS)
    np.testing.assert_allclose(out[[1, 3]], (a + b) / 2 - diff / 2, rtol=8 * EPS)
    # Computing on the params is still refused, also inside a nested jit or by broadcasting.
    for computes in (
        lambda q: (jax.jit(lambda x: 2 * x)(q["k"][0]), q["k"][1]),
        lambda q: (jnp.broadcast_to(q["k"][0, 0], (3,)), q["k"][1]),
    ):
        with pytest.raises(ValueError, match="tie: where must select parts of the params"):
            jr.tie(lam, computes)({"k": jnp.asarray(k)})


def test_traced_negative_scale_is_reported_under_traced_checks():
    from jax.experimental import checkify

    def value(scale):
        return jr.l2(scale)(jnp.ones(3))

    with jr.traced_checks():
        err, _ = checkify.checkify(jax.jit(value))(-1.0)
    assert "l2: scale must be finite and >= 0, got scale = -1.0 (traced)" in err.get()
    with jr.traced_checks():
        err, out = checkify.checkify(jax.jit(value))(0.5)
    assert err.get() is None and float(out) == 1.5
    # Outside the context a traced value is not checked (a sweep stays one program).
    assert float(jax.jit(value)(-1.0)) == -3.0


@pytest.mark.parametrize(
    "penalty",
    [
        jr.l2(0.3, center=_W),
        jr.l1(0.2, mask=jr.masks.kernels),
        jr.elastic_net(0.2, 0.1),
        jr.tie(0.4, lambda t: (t["k"][0], t["b"])),
        jr.group_lasso(0.3, axis=1, mask=jr.masks.kernels),
        jr.l2(0.1) + 2.0 * jr.l1(0.05),
    ],
    ids=_penalty_id,
)
def test_value_and_prox_under_jit_and_vmap_equal_per_member(penalty):
    members = [jax.tree.map(lambda x, i=i: x * (i + 1) - 0.5 * i, _W) for i in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *members)
    values = jax.jit(jax.vmap(penalty))(stacked)
    proxed = jax.jit(jax.vmap(lambda t: penalty.prox(t, 0.1)))(stacked)
    for i, m in enumerate(members):
        # The same float32 math, batched or not: XLA may reorder a sum of ~10 terms (16 ulps).
        np.testing.assert_allclose(values[i], penalty(m), rtol=16 * EPS)
        for a, b in zip(
            jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], proxed)), jax.tree.leaves(penalty.prox(m, 0.1))
        ):
            np.testing.assert_allclose(a, b, rtol=16 * EPS, atol=16 * EPS)


def test_l1_gradient_is_the_sign_subgradient_zero_at_zero():
    # keras's L1 (tf.abs) and torch's abs differentiate to sign(w), 0 at w = 0: weights that are
    # exactly zero (pruned, or zeroed by a prox) stay zero under a gradient step on the penalty.
    w = {"k": jnp.array([0.0, -0.0, 1.5, -2.0]), "b": jnp.zeros(3)}
    for penalty, scale in ((jr.l1(0.1), 0.1), (jr.elastic_net(0.1, 0.0), 0.1)):
        g = jax.grad(penalty)(w)
        for name in w:
            np.testing.assert_array_equal(g[name], scale * np.sign(np.asarray(w[name])).astype(np.float32))
    opt = optax.chain(jr.add_penalty_grad(jr.l1(0.1)), optax.sgd(1.0))
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, w), opt.init(w), w)
    new = optax.apply_updates(w, updates)
    np.testing.assert_array_equal(new["k"], np.float32([0.0, 0.0, 1.4, -1.9]))
    np.testing.assert_array_equal(new["b"], np.zeros(3, np.float32))


def _np_soft(v, t):
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def _np_block_soft(v, t):  # group g = row g (group_lasso's axis=0: the norm runs over the other axes)
    norms = np.sqrt(np.sum(v**2, axis=1, keepdims=True))
    return v * np.maximum(0.0, 1.0 - t / np.where(norms > 0, norms, 1.0)) * (norms > 0)


@pytest.mark.parametrize(
    "terms, l1, gl, l2",
    [
        ([jr.elastic_net(0.2, 0.3), jr.l1(0.2)], 0.4, 0.0, 0.3),
        ([jr.l2(0.3), jr.l2(0.2)], 0.0, 0.0, 0.5),  # sequential shrinks would give a product
        ([2 * (jr.l2(0.15) + jr.l1(0.1)), jr.l1(0.2)], 0.4, 0.0, 0.3),
        ([jr.group_lasso(0.3), jr.l1(0.2)], 0.2, 0.3, 0.0),
        ([jr.group_lasso(0.3), jr.l2(0.2), jr.elastic_net(0.1, 0.05)], 0.1, 0.3, 0.25),
    ],
)
def test_a_sums_prox_is_exact_and_does_not_depend_on_the_order_of_its_terms(terms, l1, gl, l2):
    # prox of l1|w|_1 + gl sum_g |w_g| + l2 |w|^2 with step t: completing the square,
    # block_soft(soft(v, t l1), t gl) / (1 + 2 t l2) (Yuan & Lin; Zou & Hastie; Simon et al.)
    v = np.array([[1.3, -0.2, 0.05], [0.5, -2.0, 0.1], [-0.7, 0.4, 0.02]])
    t = 0.9
    expected = _np_block_soft(_np_soft(v, t * l1), t * gl) / (1 + 2 * t * l2)
    for order in (terms, terms[::-1]):
        penalty = functools.reduce(lambda a, b: a + b, order)
        got = np.asarray(penalty.prox(jnp.asarray(v, jnp.float32), t), np.float64)
        # a few float32 operations on values of order 1
        np.testing.assert_allclose(got, expected, rtol=0, atol=16 * np.finfo(np.float32).eps)


def test_complex_leaves_are_penalized_by_their_modulus():
    # a complex leaf is a float leaf to regularizers: sum |z|^2, not sum z^2 (3 - 2j for these)
    z = jnp.array([1 + 1j, 2 - 1j, 0j], jnp.complex64)
    mod = np.abs(np.asarray(z, np.complex128))
    eps = float(np.finfo(np.float32).eps)
    assert float(jr.l2(1.0)(z)) == pytest.approx(np.sum(mod**2), rel=4 * eps)
    assert float(jr.elastic_net(1.0, 1.0)(z)) == pytest.approx(np.sum(mod) + np.sum(mod**2), rel=4 * eps)
    assert float(jr.group_lasso(1.0)(z[None])) == pytest.approx(np.sqrt(np.sum(mod**2)), rel=4 * eps)
    # jax's gradient of a real function of z is df/dx - i df/dy: for l2, 2 conj(z)... of |z|^2 = 2 z* -> 2 x - 2 i y
    np.testing.assert_allclose(np.asarray(jax.grad(jr.l2(1.0))(z)), 2 * np.conj(np.asarray(z)), rtol=4 * eps)
    unit = np.asarray(z)[:2] / mod[:2]
    np.testing.assert_allclose(np.asarray(jax.grad(jr.l1(1.0))(z))[:2], np.conj(unit), rtol=4 * eps)


def test_a_python_float_leaf_is_a_float_leaf():
    params = {"w": jnp.array([1.0, -2.0]), "temperature": 2.0}
    assert float(jr.l2(0.1)(params)) == pytest.approx(0.1 * (1 + 4 + 4), rel=1e-6)
    out = jr.l1(0.1).prox(params, 0.5)
    assert float(out["temperature"]) == pytest.approx(1.95, rel=1e-6)
    updates, _ = jr.add_penalty_grad(jr.l2(0.1)).update(params, optax.EmptyState(), params)
    assert float(updates["temperature"]) == pytest.approx(2.0 + 0.1 * 2 * 2.0, rel=1e-6)


def test_a_stacked_scale_applied_without_vmap_is_refused():
    # its value would be a vector and its prox would threshold each column by another scale
    w = jnp.ones((3, 2))
    stacked = jr.l1(jnp.array([0.1, 1.0]))
    for call in (lambda: stacked(w), lambda: stacked.prox(w, 1.0), lambda: (2 * jr.l2(jnp.ones(2)))(w)):
        with pytest.raises(ValueError, match=r"must be one number when the penalty is applied .*shape = \(2,\)"):
            call()
    # the sweep it is built for: one value per member
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda p: p(w))(stacked)), [0.6, 6.0], rtol=1e-6)


@pytest.mark.parametrize("make", [jr.l1, jr.l2, lambda s: jr.elastic_net(s, s), jr.group_lasso])
def test_an_infinite_step_of_a_zero_penalty_is_the_identity(make):
    v = jnp.array([[3.0, -1.0]])
    np.testing.assert_array_equal(np.asarray(make(0.0).prox(v, float("inf"))), np.asarray(v))  # inf * 0 was NaN
    np.testing.assert_array_equal(np.asarray(make(0.5).prox(v, float("inf"))), 0.0)  # the minimizer


def test_an_infinite_step_of_a_centred_l2_lands_on_the_center():
    out = jr.l2(0.5, center=jnp.array([2.0, -1.0])).prox(jnp.array([3.0, 7.0]), float("inf"))
    np.testing.assert_array_equal(np.asarray(out), [2.0, -1.0])


def test_an_infinite_step_of_a_sum_with_an_l2_on_some_leaves():
    # leaves no L2 selects take a zero shrink strength: inf * 0 must not make them NaN
    v = {"a": jnp.array([3.0, -1.0]), "b": jnp.array([2.0])}
    penalty = jr.l1(0.5) + jr.l2(0.3, mask={"a": True, "b": False})
    out = penalty.prox(v, float("inf"))
    np.testing.assert_array_equal(np.asarray(out["a"]), 0.0)
    np.testing.assert_array_equal(np.asarray(out["b"]), 0.0)
    zero = (jr.l1(0.0) + jr.l2(0.3, mask={"a": True, "b": False})).prox(v, float("inf"))
    np.testing.assert_array_equal(np.asarray(zero["b"]), [2.0])  # no penalty on b at all: the identity


def test_a_float_leaf_tied_to_an_integer_one_is_refused():
    # The pair passed through unpenalized, as integer pairs do: 0 for a distance of 18.
    tie = jr.tie(1.0, lambda p: (p["a"], p["b"]))
    with pytest.raises(ValueError, match=r"^tie: a float leaf is tied to a non-float one: a has dtype int32"):
        tie({"a": jnp.array([0, 0]), "b": jnp.array([3.0, 3.0])})
    assert float(tie({"a": jnp.array([0.0, 0.0]), "b": jnp.array([3.0, 3.0])})) == 18.0


def test_traced_negative_or_nan_prox_steps_are_reported_under_traced_checks():
    from jax.experimental import checkify

    def prox(step):
        return jr.l1(0.1).prox(jnp.ones(2), step)

    def proximal_update(lr):  # a schedule's value: named as proximal's learning_rate, not the prox's step
        tx = jr.proximal(jr.l1(0.1), lambda count: lr)
        return tx.update(jnp.zeros(2), tx.init(jnp.ones(2)), jnp.ones(2))[0]

    with jr.traced_checks():
        bad = checkify.checkify(jax.jit(prox))(-1.0)[0].get()
        nan = checkify.checkify(jax.jit(prox))(jnp.nan)[0].get()
        good, out = checkify.checkify(jax.jit(prox))(jnp.inf)  # inf: the penalty's minimizer
        lr = checkify.checkify(jax.jit(proximal_update))(-1.0)[0].get()
    assert bad.startswith("l1.prox: step must be >= 0 (inf allowed, not NaN), got step = -1.0 (traced)")
    assert nan.startswith("l1.prox: step must be >= 0 (inf allowed, not NaN), got step = nan (traced)")
    assert good.get() is None and out.tolist() == [0.0, 0.0]
    assert lr.startswith("proximal: a learning_rate schedule must return values >= 0, got learning_rate(count) = -1.0")
    tx = jr.proximal(jr.l1(0.1), lambda count: jnp.nan)
    with pytest.raises(ValueError, match=r"^proximal: a learning_rate schedule must return values >= 0, got .* = nan"):
        tx.update(jnp.zeros(2), tx.init(jnp.ones(2)), jnp.ones(2))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: jr.l2(1e39), r"^l2: scale must be finite and >= 0, got scale = 1e\+39, which overflows float32"),
        (lambda: jr.elastic_net(0.1, 1e40), r"^elastic_net: l2 must be .*, got l2 = 1e\+40, which overflows float32"),
        (lambda: 1e39 * jr.l1(1.0), r"^Scaled: factor must be .*, got factor = 1e\+39, which overflows float32"),
        (lambda: jr.max_norm(1e39), r"^max_norm: max_value must be .* = 1e\+39, which overflows float32"),
        # these held inf (or NaN params, or no noise at all) without a word
        (lambda: jr.orthogonal(1e39), r"^orthogonal: scale must be .* = 1e\+39, which overflows float32"),
        (lambda: jr.spectral_penalty(1e39), r"^spectral_penalty: scale must be .* = 1e\+39, which overflows float32"),
        (lambda: jr.spectral_norm(1e39), r"^spectral_norm: max_value must be .* = 1e\+39, which overflows float32"),
        (lambda: jr.proximal_adam(jr.l1(0.1), 0.1, eps=1e39), r"^proximal_adam: eps must .* which overflows float32"),
        (lambda: jr.EarlyStopping(3, min_delta=1e39), r"^EarlyStopping: min_delta must .* which overflows float32"),
        (
            lambda: jr.add_gradient_noise(0.1, gamma=1e39, key=jax.random.key(0)),
            r"^add_gradient_noise: gamma must .* which overflows float32",
        ),
    ],
)
def test_a_finite_hyperparameter_that_overflows_float32_is_refused(build, message):
    """The checks saw a finite number; the penalty would have held inf (and its gradient NaN at 0)."""
    with pytest.raises(ValueError, match=message):
        build()
    with jax.enable_x64(True):  # float64 holds it
        built = build()
        if not isinstance(built, optax.GradientTransformation):  # a transform closes over it
            floats = [x for x in jax.tree.leaves(built) if jnp.issubdtype(x.dtype, jnp.floating)]
            assert any(np.any(np.asarray(x) >= 1e39) for x in floats)  # the value, as given


def test_group_lasso_propagates_a_nan_weight_as_l1_and_l2_do():
    """A NaN group's norm was taken as 0 (``sq > 0`` is False for NaN): the penalty hid it (1.414
    here), its prox zeroed the group; a zero group keeps its 0 value, gradient and prox."""
    w = {"w": jnp.array([[jnp.nan, 1.0], [1.0, 1.0]])}
    penalty = jr.group_lasso(1.0)
    assert np.isnan(float(penalty(w))) and np.isnan(float(jr.l2(1.0)(w)))
    assert np.all(np.isnan(np.asarray(penalty.prox(w, 0.1)["w"][0])))
    np.testing.assert_allclose(penalty.prox(w, 0.1)["w"][1], np.full(2, 1 - 0.1 / np.sqrt(2)), rtol=1e-6)
    zero = {"w": jnp.zeros((2, 2))}
    assert float(penalty(zero)) == 0.0
    np.testing.assert_array_equal(jax.grad(penalty)(zero)["w"], 0.0)
    np.testing.assert_array_equal(penalty.prox(zero, 0.1)["w"], 0.0)


def test_a_complex_prox_step_is_refused_not_taken_as_its_real_part():
    """l1(0.1).prox(w, 0.1 + 5j) was the prox at step 0.1 (a complex scale is refused the same way)."""
    for penalty in (jr.l1(0.1), jr.l2(0.1)):
        with pytest.raises(
            ValueError, match=r"\.prox: step must be >= 0 \(inf allowed, not NaN\), got step = \(0\.1\+5j\)"
        ):
            penalty.prox(jnp.ones(2), 0.1 + 5j)


@pytest.mark.parametrize(
    ("build", "where", "name"),
    [
        (lambda: jr.l2([0.1]), "l2", "scale"),
        (lambda: jr.elastic_net([0.1], 0.1), "elastic_net", "l1"),
        (lambda: jr.max_norm([1.0]), "max_norm", "max_value"),
        (lambda: [0.1] * jr.l1(0.1), "Scaled", "factor"),
        (lambda: jr.orthogonal([0.1]), "orthogonal", "scale"),
        (lambda: jr.spectral_penalty([0.1]), "spectral_penalty", "scale"),
    ],
)
def test_a_list_hyperparameter_is_named(build, where, name):
    """jax's TypeError "Cannot determine dtype of [0.1]" named neither the function nor the argument."""
    with pytest.raises(ValueError, match=rf"^{where}: {name} must be a number or an array, got a list"):
        build()


@pytest.mark.parametrize("baseline", [0.1 + 0.1j, np.complex64(1.0)])
def test_early_stopping_refuses_a_complex_baseline_by_name(baseline):
    # float() raised "argument must be a string or a real number, not 'complex'"
    with pytest.raises(ValueError, match=r"^EarlyStopping: baseline must be a number or None, got baseline = "):
        jr.EarlyStopping(3, baseline=baseline)
