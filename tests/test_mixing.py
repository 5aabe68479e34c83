"""Tests of jr.mixup and jr.cutmix against Beta(alpha, alpha), exact label mixing and timm's box rule."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxreg as jr

SIGMAS = 6.0
EPS32 = float(np.finfo(np.float32).eps)


def _probe_batch(n=5, d=3):
    """x with x[0, 0] = 1 and x[-1, 0] = 0, so that mixup's x_mixed[0, 0] = lam exactly."""
    x = np.arange(n * d, dtype=np.float32).reshape(n, d) / (n * d) + 0.5
    x[0, 0], x[-1, 0] = 1.0, 0.0
    return jnp.asarray(x)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_coefficient_is_beta(alpha):
    x = _probe_batch()
    y = jax.nn.one_hot(jnp.arange(5), 5)
    keys = jax.random.split(jax.random.key(0), 2000)
    xm, _ = jax.jit(jax.vmap(lambda k: jr.mixup(k, x, y, alpha)))(keys)
    lam = np.asarray(xm[:, 0, 0], np.float64)
    ks = scipy.stats.kstest(lam, scipy.stats.beta(alpha, alpha).cdf)
    assert ks.pvalue > 1e-3, ks


def test_mixup_mixes_inputs_and_labels_exactly_with_flipped_partner():
    x = _probe_batch()
    y = jnp.asarray(np.random.default_rng(0).dirichlet(np.ones(4), size=5), jnp.float32)  # soft labels
    xm, ym = jr.mixup(jax.random.key(1), x, y, 0.7)
    lam = float(xm[0, 0])
    assert 0.0 < lam < 1.0
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    # Reference in float64; float32 rounds lam * a, (1 - lam) * b and the sum: 3 eps relative to
    # the largest magnitude (<= 1.5 for x, 1 for y).
    np.testing.assert_allclose(np.asarray(xm), lam * xs + (1 - lam) * xs[::-1], atol=4 * EPS32 * 1.5)
    np.testing.assert_allclose(np.asarray(ym), lam * ys + (1 - lam) * ys[::-1], atol=4 * EPS32)
    np.testing.assert_allclose(np.asarray(ym).sum(-1), 1.0, atol=8 * EPS32)


def test_mixup_alpha_sweep_is_one_compile():
    x, y = _probe_batch(), jax.nn.one_hot(jnp.arange(5), 5)
    keys = jax.random.split(jax.random.key(2), 1000)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def lams(alpha):
        return jax.vmap(lambda k: jr.mixup(k, x, y, alpha)[0][0, 0])(keys)

    for alpha in (0.5, 2.0):
        lam = np.asarray(lams(jnp.float32(alpha)), np.float64)
        var = 1.0 / (4.0 * (2.0 * alpha + 1.0))  # Var of Beta(a, a)
        assert abs(lam.mean() - 0.5) <= SIGMAS * math.sqrt(var / lam.size), (alpha, lam.mean())
    swept = jax.vmap(lambda a: jr.mixup(jax.random.key(3), x, y, a)[1])(jnp.array([0.5, 2.0], jnp.float32))
    single = jax.jit(lambda a: jr.mixup(jax.random.key(3), x, y, a)[1])
    for i, a in enumerate((0.5, 2.0)):
        np.testing.assert_array_equal(np.asarray(swept[i]), np.asarray(single(jnp.float32(a))))


def _constant_images(n=4, h=9, w=7, c=2):
    return jnp.broadcast_to(jnp.arange(1.0, n + 1.0)[:, None, None, None], (n, h, w, c))


def test_cutmix_box_and_labels_by_actual_area():
    n, h, w = 4, 9, 7
    x = _constant_images(n, h, w)
    y = jax.nn.one_hot(jnp.arange(n), n)
    for seed in range(6):
        xm, ym = jr.cutmix(jax.random.key(seed), x, y, 1.0)
        xm, ym = np.asarray(xm), np.asarray(ym, np.float64)
        from_partner = xm[..., 0] != np.asarray(x)[..., 0]  # (n, h, w); the middle pair differs too (n even)
        # One box for the whole batch, the same in every channel, taken from the flipped batch.
        assert np.all(from_partner == from_partner[:1])
        np.testing.assert_array_equal(xm[from_partner], np.asarray(x)[::-1][from_partner])
        box = from_partner[0]
        rows, cols = np.nonzero(box.any(1))[0], np.nonzero(box.any(0))[0]
        if rows.size:
            # A rectangle: exactly the product of its row and column ranges.
            expected = np.zeros_like(box)
            expected[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
            np.testing.assert_array_equal(box, expected)
        frac = box.mean()
        ref = (1 - frac) * np.eye(n) + frac * np.eye(n)[::-1]
        np.testing.assert_allclose(ym, ref, atol=4 * EPS32)


def test_cutmix_labels_are_the_exact_pixel_share_in_float64_under_x64():
    # The area fraction was computed in float32 (7x7 images: 0.918367326 for 45/49) and lambda
    # drawn in float32, x64 on or not; under x64 they are float64, so the share is exact there.
    with jax.enable_x64(True):
        x = _constant_images(2, 7, 7).astype(jnp.float64)
        y = jnp.eye(2, dtype=jnp.float64)
        for seed in range(6):
            xm, ym = jr.cutmix(jax.random.key(seed), x, y, 1.0)
            assert ym.dtype == jnp.float64
            share = float(np.mean(np.asarray(xm)[0, ..., 0] != np.asarray(x)[0, ..., 0]))
            assert float(ym[0, 1]) == pytest.approx(share, rel=0, abs=4 * np.finfo(np.float64).eps)
        _, ym = jr.mixup(jax.random.key(0), x, y, 0.4)
        assert ym.dtype == jnp.float64


def _timm_box_areas(rng, alpha, h, w, k):
    """timm.data.mixup.rand_bbox (margin 0) with lam ~ Beta(alpha, alpha): area fractions and box heights."""
    out = []
    for _ in range(k):
        lam = rng.beta(alpha, alpha)
        cut_rat = np.sqrt(1.0 - lam)
        cut_h, cut_w = int(h * cut_rat), int(w * cut_rat)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
        xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
        out.append(((yh - yl) * (xh - xl) / (h * w), yh - yl))
    return np.asarray(out, np.float64)


def test_cutmix_box_distribution_matches_timm():
    n, h, w, k, alpha = 2, 12, 10, 2000, 1.0
    x = _constant_images(n, h, w, 1)
    y = jax.nn.one_hot(jnp.arange(n), n)
    xm, ym = jax.jit(jax.vmap(lambda key: jr.cutmix(key, x, y, alpha)))(jax.random.split(jax.random.key(4), k))
    box = np.asarray(xm[:, 0, :, :, 0]) != 1.0  # (k, h, w)
    ours = np.stack([box.mean((1, 2)), box.any(2).sum(1)], 1).astype(np.float64)
    ref = _timm_box_areas(np.random.default_rng(5), alpha, h, w, k)
    for j, name in enumerate(["area fraction", "box height"]):
        se = math.sqrt(ours[:, j].var() / k + ref[:, j].var() / k)
        assert abs(ours[:, j].mean() - ref[:, j].mean()) <= SIGMAS * se, (name, ours[:, j].mean(), ref[:, j].mean())
    # The labels carry the area: y[0, 1] is the fraction of image 0 that came from image 1.
    np.testing.assert_allclose(np.asarray(ym[:, 0, 1]), ours[:, 0], atol=4 * EPS32)


def test_cutmix_alpha_sweep_is_vmap():
    x = _constant_images(2, 8, 8, 1)
    y = jax.nn.one_hot(jnp.arange(2), 2)
    alphas = jnp.array([0.3, 3.0], jnp.float32)
    xm, ym = jax.jit(jax.vmap(lambda a: jr.cutmix(jax.random.key(6), x, y, a)))(alphas)
    single = jax.jit(lambda a: jr.cutmix(jax.random.key(6), x, y, a))
    for i, a in enumerate(alphas.tolist()):
        xi, yi = single(jnp.float32(a))
        np.testing.assert_array_equal(np.asarray(xm[i]), np.asarray(xi))
        np.testing.assert_allclose(np.asarray(ym[i]), np.asarray(yi), atol=EPS32)


def test_mixing_keeps_dtypes_under_strict_promotion():
    x = _constant_images(2, 4, 4, 1).astype(jnp.bfloat16)
    y = jax.nn.one_hot(jnp.arange(2), 2, dtype=jnp.bfloat16)
    for fn in (jr.mixup, jr.cutmix):
        xm, ym = fn(jax.random.key(0), x, y, 1.0)
        assert (xm.dtype, ym.dtype) == (jnp.bfloat16, jnp.bfloat16), fn


KEY = jax.random.key(0)
XI = jnp.ones((2, 4, 4, 1))
YI = jnp.eye(2)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jr.mixup(KEY, XI, YI, 0.0), r"mixup: alpha must be finite and > 0, got alpha = 0.0"),
        (lambda: jr.mixup(KEY, XI, YI, -1.0), r"mixup: alpha must be finite and > 0, got alpha = -1.0"),
        (lambda: jr.mixup(KEY, XI, jnp.array([0, 1]), 1.0), r"mixup: y must be one-hot or soft labels"),
        (lambda: jr.mixup(KEY, XI, jnp.eye(3), 1.0), r"mixup: x and y must have the same number of examples"),
        (
            lambda: jr.mixup(0, XI, YI, 1.0),
            r"mixup: rng must be a PRNG key; pass a PRNG key such as jax.random.key\(0\)",
        ),
        (lambda: jr.mixup(KEY, jnp.ones((2, 3), jnp.int32), YI, 1.0), r"mixup: x must be a floating-point array"),
        (lambda: jr.cutmix(KEY, XI, YI, 0.0), r"cutmix: alpha must be finite and > 0, got alpha = 0.0"),
        (lambda: jr.cutmix(KEY, jnp.ones((2, 4, 4)), YI, 1.0), r"cutmix: x must have at least 4 axes"),
        (lambda: jr.cutmix(KEY, jnp.ones((2, 4, 4, 1, 1)), YI, 1.0), r"cutmix: x must be images \(N, H, W, C\)"),
        (lambda: jr.cutmix(1, XI, YI, 1.0), r"cutmix: rng must be a PRNG key"),
        # two inputs of two examples each, stacked by jnp.asarray, would be mixed with each other
        (lambda: jr.mixup(KEY, [XI[:, 0], XI[:, 1]], YI, 1.0), r"mixup: x must be an array .*got list"),
        (lambda: jr.mixup(KEY, {"img": XI}, YI, 1.0), r"mixup: x must be an array .*got dict"),
        (lambda: jr.cutmix(KEY, XI, [[1.0, 0.0], [0.0, 1.0]], 1.0), r"cutmix: y must be an array .*got list"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_an_array_like_from_another_framework_is_mixed_as_its_array():
    """An object with __array__ (a torch or tf tensor on the host) is one batch, as jnp.asarray takes it."""

    class HostTensor:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)
    chex.assert_trees_all_equal(jr.mixup(KEY, HostTensor(x), HostTensor(y), 1.0), jr.mixup(KEY, x, y, 1.0))


def test_cutmix_box_side_is_the_exact_floor_for_tiny_and_boundary_lambdas():
    """floor(side * sqrt(1 - lam)), exactly (timm's float64 differs only below lam = 2**-53). In
    float32, 1 - lam rounded to 1 below lam = 2**-25 and the box took the whole side (1.6% of
    draws at alpha = 0.2)."""
    from fractions import Fraction

    from jaxreg import mixing

    sides = [1, 7, 8, 10, 32, 224]
    lams = [0.0, 1e-30, 1e-10, 2.0**-26, 2.0**-24, 1e-6, 0.19, 0.36, 0.5, 0.75, 0.9999, 1.0]
    lams += [1.0 - (k / 8) ** 2 for k in range(1, 8)]  # exact in float32: side 8's box is k exactly
    for side in sides:
        for lam in lams:
            lam32 = Fraction(float(np.float32(lam)))
            room = side * side * (1 - lam32)  # the largest k with k**2 <= room, in exact arithmetic
            want = max(k for k in range(side + 1) if k * k <= room)
            # side**2 * lam is rounded once in float32: within a few ulps of another square (below
            # the whole side, where room = 0 is exact) either neighbour is float32's answer
            gap = min(abs(room - k * k) for k in range(side))
            if gap != 0 and gap <= side * side * Fraction(2) ** -22:
                continue
            assert int(mixing._box_side(side, jnp.float32(lam32))) == want, (side, lam)
