"""Mixup and CutMix: train on convex combinations of example pairs and of their labels.

Both draw one mixing coefficient :math:`\\lambda \\sim \\mathrm{Beta}(\\alpha, \\alpha)` per batch
(as Zhang et al. 2018 and timm's ``Mixup`` in its default ``"batch"`` mode) and pair example
``n`` with example ``N - 1 - n``: the partner is the batch flipped along its leading axis, as in
timm (``x.flip(0)``), which costs no random permutation; shuffle the data between steps (as
every training loop does) and the pairs change from step to step. In a batch of odd size the
middle example is its own partner.

Labels must be one-hot or soft (floating point, classes on the last axis). For label smoothing
apply ``optax.smooth_labels(one_hot, alpha)`` first, as timm's ``mixup_target`` does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxreg import _checks, _random
from jaxreg._tree import default_float

__all__ = ["cutmix", "mixup"]


def _check_batch(where: str, x: Any, y: Any, min_ndim: int) -> tuple[jax.Array, jax.Array]:
    for name, value in (("x", x), ("y", y)):
        # A list or dict of inputs is not stacked into one batch: jnp.asarray would make the
        # inputs the examples and mix input 1 with input 2.
        if not jax.tree_util.treedef_is_leaf(jax.tree.structure(value)):  # array-likes (__array__) pass
            raise ValueError(
                f"{where}: {name} must be an array (one batch, examples on the leading axis), got {type(value).__name__}; "
                "for several inputs call it once per input with the same rng and alpha (the same lambda and partners)."
            )
    x, y = _checks.as_inexact_array(x, "x", where), jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.inexact) or y.ndim < 2:
        raise ValueError(
            f"{where}: y must be one-hot or soft labels (floating point, classes on the last axis), got y "
            f"with dtype {y.dtype} and shape {y.shape}; for integer labels use jax.nn.one_hot(y, num_classes)."
        )
    if x.ndim < min_ndim:
        raise ValueError(f"{where}: x must have at least {min_ndim} axes, got x.shape = {x.shape}.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{where}: x and y must have the same number of examples, got x.shape = {x.shape}, y.shape = {y.shape}."
        )
    return x, y


def _check_alpha(where: str, alpha: Any) -> jax.Array:
    _checks.check_positive("alpha", alpha, where, scalar=True)
    # the default float: under x64 alpha, lambda and the box's area fraction are float64
    return jnp.asarray(alpha, default_float())


def _mix(lam: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    lam = lam.astype(a.dtype)
    return lam * a + (1.0 - lam) * b


def mixup(rng: jax.Array, x: ArrayLike, y: ArrayLike, alpha: ArrayLike) -> tuple[jax.Array, jax.Array]:
    r"""Mixup: a convex combination of each example with its partner, labels mixed alike.

    .. math::
      \tilde x_n = \lambda x_n + (1 - \lambda) x_{N-1-n}, \quad
      \tilde y_n = \lambda y_n + (1 - \lambda) y_{N-1-n}, \quad
      \lambda \sim \mathrm{Beta}(\alpha, \alpha)

    One :math:`\lambda` for the batch; the partner is the flipped batch (see the module doc).

    Args:
      rng: a PRNG key.
      x: inputs, examples on the leading axis, floating point.
      y: one-hot or soft labels ``(N, ..., classes)``, floating point.
      alpha: the Beta parameter, > 0; may be traced (a sweep is a ``vmap``). Small ``alpha``
        keeps :math:`\lambda` near 0 or 1 (little mixing); ``alpha = 1`` is uniform.

    Returns:
      ``(x_mixed, y_mixed)`` with the shapes and dtypes of ``x`` and ``y``.

    Raises:
      ValueError: if ``rng`` is not a PRNG key, a concrete ``alpha`` is not > 0, ``y`` is not
        floating point with a class axis, or ``x`` and ``y`` differ in their number of examples.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> y = jax.nn.one_hot(jnp.array([0, 1]), 2)
      >>> xm, ym = jr.mixup(jax.random.key(0), jnp.array([[1.0], [0.0]]), y, 0.4)
      >>> bool(jnp.allclose(ym[:, 0], xm[:, 0])), bool(jnp.allclose(ym.sum(-1), 1.0))
      (True, True)

    References:
      Zhang et al., `mixup: Beyond Empirical Risk Minimization <https://arxiv.org/abs/1710.09412>`_, ICLR 2018.
    """
    _random.check_key(rng, "mixup")
    a = _check_alpha("mixup", alpha)
    x, y = _check_batch("mixup", x, y, 1)
    lam = jax.random.beta(rng, a, a, dtype=a.dtype)
    return _mix(lam, x, jnp.flip(x, 0)), _mix(lam, y, jnp.flip(y, 0))


def _box_side(side: int, lam: jax.Array) -> jax.Array:
    """``floor(side * sqrt(1 - lam))``, timm's box side: the largest integer ``k`` with
    ``k**2 <= side**2 * (1 - lam)``.

    In float32, ``1 - lam`` is 1 for ``lam < 2**-25`` (1.6% of draws at ``alpha = 0.2``) and the
    box covered the whole side where timm's float64 leaves one row out; the float32 estimate is
    corrected by one either way against the exact integer ``side**2 - k**2`` (exact in float32 up
    to a side of 4096; ``side**2 * lam`` rounds once, so a ``lam`` within a few ulps of a square's
    boundary may land on either side of it, as timm's float64 may).
    """
    k = jnp.clip(jnp.floor(side * jnp.sqrt(1.0 - lam)).astype(jnp.int32), 0, side)
    need = (side * side) * lam  # k fits iff side**2 * lam <= side**2 - k**2

    def room(k):
        return (side * side - k * k).astype(lam.dtype)

    k = jnp.where(need > room(k), k - 1, k)
    return jnp.where((k < side) & (need <= room(k + 1)), k + 1, k)


def cutmix(rng: jax.Array, x: ArrayLike, y: ArrayLike, alpha: ArrayLike) -> tuple[jax.Array, jax.Array]:
    r"""CutMix: paste a box from each image's partner; labels mixed by the box's actual area.

    .. math::
      \lambda \sim \mathrm{Beta}(\alpha, \alpha), \quad
      (h, w) = (\lfloor H \sqrt{1 - \lambda} \rfloor, \lfloor W \sqrt{1 - \lambda} \rfloor), \quad
      \tilde y_n = \lambda' y_n + (1 - \lambda') y_{N-1-n}, \quad
      \lambda' = 1 - \frac{|B|}{H W}

    As timm's ``rand_bbox`` and ``Mixup`` (batch mode): a centre :math:`(c_y, c_x)` uniform over
    the pixels, the box :math:`B = [c_y - \lfloor h/2 \rfloor, c_y + \lfloor h/2 \rfloor) \times
    [c_x - \lfloor w/2 \rfloor, c_x + \lfloor w/2 \rfloor)` clipped to the image, the same box for
    every example, and the labels mixed with the clipped box's area fraction, so that
    :math:`\tilde y` is exactly the fraction of pixels that came from each image. The box is a
    mask built from comparisons (no dynamic shapes), so ``alpha`` and the box may be traced.

    Args:
      rng: a PRNG key.
      x: images ``(N, H, W, C)``, floating point.
      y: one-hot or soft labels ``(N, ..., classes)``, floating point.
      alpha: the Beta parameter, > 0; may be traced.

    Returns:
      ``(x_mixed, y_mixed)`` with the shapes and dtypes of ``x`` and ``y``.

    Raises:
      ValueError: if ``rng`` is not a PRNG key, a concrete ``alpha`` is not > 0, ``x`` is not
        ``(N, H, W, C)``, ``y`` is not floating point with a class axis, or they differ in ``N``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> x = jnp.stack([jnp.ones((8, 8, 1)), jnp.zeros((8, 8, 1))])
      >>> xm, ym = jr.cutmix(jax.random.key(1), x, jax.nn.one_hot(jnp.array([0, 1]), 2), 1.0)
      >>> bool(jnp.allclose(ym[0, 0], xm[0].mean()))   # label = share of pixels from image 0
      True

    References:
      Yun et al., `CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
      Features <https://arxiv.org/abs/1905.04899>`_, ICCV 2019.
    """
    _random.check_key(rng, "cutmix")
    a = _check_alpha("cutmix", alpha)
    x, y = _check_batch("cutmix", x, y, 4)
    if x.ndim != 4:
        raise ValueError(f"cutmix: x must be images (N, H, W, C), got x.shape = {x.shape}.")
    height, width = x.shape[1], x.shape[2]
    k_lam, k_y, k_x = jax.random.split(rng, 3)
    lam = jax.random.beta(k_lam, a, a, dtype=a.dtype)
    cut_h, cut_w = _box_side(height, lam), _box_side(width, lam)
    cy = jax.random.randint(k_y, (), 0, height, dtype=jnp.int32)
    cx = jax.random.randint(k_x, (), 0, width, dtype=jnp.int32)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows = jax.lax.iota(jnp.int32, height)
    cols = jax.lax.iota(jnp.int32, width)
    in_rows = (rows >= y0) & (rows < y1)
    in_cols = (cols >= x0) & (cols < x1)
    box = in_rows[:, None] & in_cols[None, :]
    x_mixed = jnp.where(box[None, :, :, None], jnp.flip(x, 0), x)
    area = ((y1 - y0) * (x1 - x0)).astype(a.dtype)
    lam_area = 1.0 - area / (height * width)
    return x_mixed, _mix(lam_area, y, jnp.flip(y, 0))
