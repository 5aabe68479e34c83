"""Spectral and orthogonality regularizers on weight matrices.

Every selected leaf is read as a matrix :math:`M` of shape ``(prod(shape[:-1]), shape[-1])``:
a Dense kernel ``(in, out)`` as it is, a conv kernel ``(h, w, in, out)`` as ``(h*w*in, out)``.

* :func:`spectral_norm`: a constraint for :func:`jaxreg.project` that rescales each kernel so
  that its largest singular value is at most ``max_value``. Inside ``jr.project`` it is
  *stateful*: the power-iteration vectors (Miyato et al. 2018) are the transformation's state,
  carried from step to step (no model collection, no ``batch_stats``); called directly on a
  pytree it uses the exact singular value (an SVD).
* :func:`spectral_penalty`: :math:`\\lambda \\sum \\sigma_{\\max}(M)^2` estimated by power
  iteration (Yoshida & Miyato 2017).
* :func:`orthogonal`: the soft orthogonality penalty :math:`\\lambda \\|M M^\\top - I\\|_F^2`.
* :func:`orthogonalize`: the projection onto the nearest orthogonal matrix (the polar factor).

The stateful-constraint protocol of :func:`jaxreg.project`: an object with
``init(params) -> state`` and ``update(params, state) -> (params, state)``; state is a pytree of
arrays. Plain callables ``params -> params`` remain stateless constraints.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxreg import _checks
from jaxreg._tree import kernels, key_path_str, optional_mask, resolve_mask, scaled_total
from jaxreg.penalties import Penalty

PyTree = Any

__all__ = [
    "Orthogonal",
    "Orthogonalize",
    "SpectralNorm",
    "SpectralNormState",
    "SpectralPenalty",
    "orthogonal",
    "orthogonalize",
    "power_iteration",
    "spectral_norm",
    "spectral_penalty",
]

_MODES = ("rows", "columns")


def _selected(where: str, mask: Any, params: PyTree) -> list[tuple[str, jax.Array]]:
    """``(path, leaf)`` of the selected floating-point leaves; ``mask=None`` means every kernel (ndim >= 2).

    Paths are the masks' own (an nnx ``Variable``'s ``value`` dropped): ``nnx.Optimizer`` inits
    on a ``State`` of Variables and updates on their arrays, and both must name a kernel alike.
    """
    explicit = mask is not None
    keep = jax.tree.leaves(resolve_mask(mask if explicit else kernels, params, where))
    out = []
    for (path, x), k in zip(jax.tree_util.tree_flatten_with_path(params)[0], keep):
        if not k or not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            continue
        if jnp.ndim(x) < 2:
            raise ValueError(
                f"{where}: leaf {key_path_str(path)!r} of shape {jnp.shape(x)} is not a matrix (ndim < 2); "
                "select kernels only, e.g. mask=jr.masks.kernels."
            )
        _check_real(where, f"leaf {key_path_str(path)!r}", x)
        out.append((key_path_str(path), x))
    return out


def _check_real(where: str, what: str, x: Any) -> None:
    # The power iterations, Gram matrices and polar factors here transpose without conjugating.
    hint = " Leave it out with mask=." if what.startswith("leaf") else ""
    _checks.check_real(what, x, where, "the spectral constraints and penalties take real matrices." + hint)


def _as_matrix(x: jax.Array) -> jax.Array:
    """``x`` as ``(prod(shape[:-1]), shape[-1])``, in at least float32 (no bfloat16 SVDs or power iterations)."""
    # Rows counted, not inferred: reshape cannot infer -1 beside a zero-size last axis.
    m = jnp.reshape(x, (math.prod(x.shape[:-1]), x.shape[-1]))
    return m.astype(jnp.float32) if jnp.finfo(m.dtype).bits < 32 else m


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    # Full float32 precision on every backend (no TF32/bf16 passes): the products are small.
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v), jnp.asarray(eps, v.dtype))


# A jitted function of its own: called outside jit, a fori_loop built anew on each call was
# traced and compiled again every time (jr.spectral_penalty ran 105 ms a call eagerly); inside
# jit XLA inlines the call.
@functools.partial(jax.jit, static_argnames="num_iters")
def _iterate(m: jax.Array, v: jax.Array, num_iters: int) -> jax.Array:
    def body(_: Any, v: jax.Array) -> jax.Array:
        return _normalize(_dot(m.T, _normalize(_dot(m, v))))

    return jax.lax.fori_loop(0, num_iters, body, v)


def power_iteration(matrix: jax.Array, v: jax.Array, num_iters: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Estimates the largest singular value of ``matrix`` by power iteration from ``v``.

    .. math::
      u \leftarrow \frac{M v}{\|M v\|}, \quad v \leftarrow \frac{M^\top u}{\|M^\top u\|}
      \quad (\text{num\_iters times}), \qquad \hat\sigma = u^\top M v, \ u = \frac{M v}{\|M v\|}

    The vectors are under ``stop_gradient`` (Miyato et al. 2018), so the gradient of
    :math:`\hat\sigma` with respect to :math:`M` is :math:`u v^\top`, the gradient of
    :math:`\sigma_{\max}` at convergence. First order only: second derivatives (``jax.hessian``,
    Hessian-vector products) hold :math:`u, v` fixed and miss how they turn with :math:`M`
    (the Hessian of :math:`\hat\sigma` is 0); for curvature differentiate
    ``jnp.linalg.norm(M, 2)`` (an SVD) instead. :math:`\hat\sigma \le \sigma_{\max}` always; after
    :math:`k` iterations the angle between ``v`` and the top singular vector shrinks like
    :math:`(\sigma_2 / \sigma_1)^{2k}`, and the error of :math:`\hat\sigma` (a Rayleigh quotient)
    like its square, :math:`(\sigma_2 / \sigma_1)^{4k}`.

    Args:
      matrix: ``(m, n)``.
      v: the current estimate of the top right singular vector, ``(n,)`` (need not be normalized).
      num_iters: iterations, >= 0 (0: only evaluates :math:`\hat\sigma` at ``v``).

    Returns:
      ``(sigma, u, v)``: the estimate, and the updated left ``(m,)`` and right ``(n,)`` vectors.

    Raises:
      ValueError: if ``matrix`` is not 2-D, ``v`` not ``(n,)`` or ``num_iters`` not an int >= 0.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxreg.spectral import power_iteration
      >>> sigma, u, v = power_iteration(jnp.diag(jnp.array([3.0, 1.0])), jnp.array([1.0, 1.0]), 20)
      >>> round(float(sigma), 5)
      3.0
    """
    num_iters = _checks.check_int_at_least("num_iters", num_iters, 0, "power_iteration")
    _check_real("power_iteration", "matrix", matrix)
    if jnp.ndim(matrix) != 2 or jnp.shape(v) != jnp.shape(matrix)[1:]:
        raise ValueError(
            f"power_iteration: matrix must be (m, n) and v (n,), got matrix.shape = {jnp.shape(matrix)} and "
            f"v.shape = {jnp.shape(v)}."
        )
    m = jax.lax.stop_gradient(matrix)
    v = _iterate(m, _normalize(jax.lax.stop_gradient(v).astype(matrix.dtype)), num_iters)
    u = jax.lax.stop_gradient(_normalize(_dot(m, v)))
    v = jax.lax.stop_gradient(v)
    return _dot(u, _dot(matrix, v)), u, v


def _start_vector(index: int, n: int, dtype: Any) -> jax.Array:
    dtype = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
    # A fixed random start (so that init needs no key): almost surely not orthogonal to the top
    # singular vector, unlike a constant vector.
    return jax.random.normal(jax.random.fold_in(jax.random.key(0), index), (n,), dtype)


def _usable(v: jax.Array) -> jax.Array:
    """Whether a power-iteration vector can be iterated: finite and not zero."""
    return jnp.logical_and(jnp.all(jnp.isfinite(v)), jnp.any(v != 0))


def _cap(x: jax.Array, sigma: jax.Array, max_value: jax.Array) -> jax.Array:
    c = max_value.astype(x.dtype)
    sigma = sigma.astype(x.dtype)
    return x * jnp.where(sigma > c, c / jnp.where(sigma > 0, sigma, 1.0), 1.0)


class SpectralNormState(NamedTuple):
    """State of :func:`spectral_norm` inside :func:`jaxreg.project`.

    ``v``: the right singular vector estimates, a dict from each selected leaf's path (joined by
    ``"/"``) to a vector of shape ``(shape[-1],)``.
    """

    v: dict[str, jax.Array]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["max_value"], meta_fields=["mask", "num_iters"])
@dataclasses.dataclass(frozen=True, eq=False)
class SpectralNorm:
    r"""Caps the largest singular value of each selected kernel at ``max_value``.

    .. math:: W \leftarrow W \cdot \min\left(1, \frac{c}{\hat\sigma(W)}\right)

    Build it with :func:`spectral_norm`. ``init``/``update`` are the stateful form used by
    :func:`jaxreg.project` (power iteration, :math:`\hat\sigma`); ``__call__`` the stateless one
    (the exact :math:`\sigma_{\max}`).
    """

    max_value: jax.Array
    mask: Any = None
    num_iters: int = 1

    def init(self, params: PyTree) -> SpectralNormState:
        """Fixed random start vectors, one per selected kernel (no key needed: they are deterministic)."""
        leaves = _selected("spectral_norm", self.mask, params)
        return SpectralNormState(v={p: _start_vector(i, x.shape[-1], x.dtype) for i, (p, x) in enumerate(leaves)})

    def update(self, params: PyTree, state: SpectralNormState) -> tuple[PyTree, SpectralNormState]:
        """``num_iters`` power iterations from the stored vectors, then the rescaling.

        A stored vector that is zero or not finite starts again from ``init``'s; an iterate that
        collapses (a zero kernel, ``M v = 0``, or an overflowing one) keeps the vector it started
        from. Stored as zero, it stayed zero: the estimate was 0 and no kernel was ever capped
        again (a zero-initialized kernel under a warmup from a learning rate of 0).
        """
        selected = _selected("spectral_norm", self.mask, params)
        leaves = dict(selected)
        index = {p: i for i, (p, _) in enumerate(selected)}
        if set(leaves) != set(state.v):
            raise ValueError(
                f"spectral_norm: the state holds vectors for {sorted(state.v)}, the params select {sorted(leaves)}; "
                "build the state with init on params of the same structure."
            )
        new_v = {}

        def one(path: Any, x: Any) -> Any:
            key = key_path_str(path)
            if key not in leaves:
                return x
            stored = state.v[key]
            start = jnp.where(_usable(stored), stored, _start_vector(index[key], stored.shape[0], stored.dtype))
            sigma, _, v = power_iteration(_as_matrix(x), start, self.num_iters)
            v = v.astype(stored.dtype)
            new_v[key] = jnp.where(_usable(v), v, start)
            return _cap(x, sigma, self.max_value).astype(x.dtype)

        out = jax.tree_util.tree_map_with_path(one, params)
        return out, SpectralNormState(v=new_v)

    def __call__(self, params: PyTree) -> PyTree:
        """The projection with the exact largest singular value (``jnp.linalg.norm(M, 2)``, an SVD)."""
        leaves = dict(_selected("spectral_norm", self.mask, params))

        def one(path: Any, x: Any) -> Any:
            if key_path_str(path) not in leaves:
                return x
            return _cap(x, jnp.linalg.norm(_as_matrix(x), 2), self.max_value).astype(x.dtype)

        return jax.tree_util.tree_map_with_path(one, params)


def _check_num_iters(where: str, num_iters: Any, minimum: int) -> int:
    return _checks.check_int_at_least("num_iters", num_iters, minimum, where)


def spectral_norm(max_value: ArrayLike, *, mask: Any = None, num_iters: int = 1) -> SpectralNorm:
    r"""Spectral-norm constraint: each kernel's largest singular value at most ``max_value``.

    .. math::
      W \leftarrow W \cdot \min\left(1, \frac{c}{\hat\sigma(M)}\right), \qquad
      M = \mathrm{reshape}(W, (-1, \text{out}))

    With :func:`jaxreg.project` (last in a chain) it keeps one right-singular-vector estimate per
    kernel in the transformation's state and refines it by ``num_iters`` power iterations per
    step (:func:`power_iteration`), as Miyato et al. 2018; since the weights move little between
    steps one iteration suffices once warmed up. The estimate is a lower bound, so early on the
    bound is approximate; it tightens as the vectors converge. Unlike Miyato's
    :math:`W / \sigma`, kernels already within the bound are left as they are (a projection, as
    keras's ``max_norm``). Called directly, ``spectral_norm(c)(params)`` projects with the exact
    singular value.

    Args:
      max_value: the bound :math:`c > 0`; an array leaf, so a sweep is a ``vmap``.
      mask: which leaves to constrain; default every leaf with ``ndim >= 2``
        (``jr.masks.kernels``). A selected leaf with ``ndim < 2`` is an error.
      num_iters: power iterations per step, >= 1.

    Returns:
      A :class:`SpectralNorm`: a stateful constraint for ``jr.project`` and a callable
      ``params -> params``.

    Raises:
      ValueError: if a concrete ``max_value`` is not > 0, ``num_iters < 1``, or the mask selects a
        leaf that is not a matrix.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg as jr
      >>> opt = optax.chain(optax.sgd(1.0), jr.project(jr.spectral_norm(1.0, num_iters=20)))
      >>> params = {"w": jnp.diag(jnp.array([4.0, 0.5]))}
      >>> updates, state = opt.update({"w": jnp.zeros((2, 2))}, opt.init(params), params)
      >>> jnp.round(optax.apply_updates(params, updates)["w"], 4)
      Array([[1.   , 0.   ],
             [0.   , 0.125]], dtype=float32)

    References:
      Miyato et al., `Spectral Normalization for Generative Adversarial Networks
      <https://arxiv.org/abs/1802.05957>`_, ICLR 2018.
    """
    _checks.check_positive("max_value", max_value, "spectral_norm", scalar=True)
    return SpectralNorm(
        _checks.as_float_array(max_value, "max_value", "spectral_norm"),
        optional_mask(mask, "spectral_norm"),
        _check_num_iters("spectral_norm", num_iters, 1),
    )


def _no_prox(name: str) -> NotImplementedError:
    return NotImplementedError(
        f"{name}.prox: this penalty has no cheap closed-form proximal operator, so it cannot be used with "
        "jr.proximal or jr.proximal_adam. Use it in the loss (jr.regularize) or as a gradient "
        f"(jr.add_penalty_grad){', or constrain with jr.spectral_norm and jr.project' if name == 'spectral_penalty' else ', or project with jr.orthogonalize and jr.project'}."
    )


@functools.partial(jax.tree_util.register_dataclass, data_fields=["scale"], meta_fields=["mask", "num_iters"])
@dataclasses.dataclass(frozen=True, eq=False)
class SpectralPenalty(Penalty):
    r"""``scale`` times the sum of the squared estimated top singular values; see :func:`spectral_penalty`."""

    has_prox = False

    scale: jax.Array
    mask: Any = None
    num_iters: int = 10

    def __call__(self, tree: PyTree) -> jax.Array:
        _checks.check_applied("spectral_penalty", scale=self.scale)
        terms = []
        for i, (_, x) in enumerate(_selected("spectral_penalty", self.mask, tree)):
            sigma, _, _ = power_iteration(_as_matrix(x), _start_vector(i, x.shape[-1], x.dtype), self.num_iters)
            terms.append(jnp.square(sigma))
        return scaled_total(self.scale, terms)

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        del tree, step
        raise _no_prox("spectral_penalty")


def spectral_penalty(scale: ArrayLike, *, mask: Any = None, num_iters: int = 10) -> SpectralPenalty:
    r"""Spectral norm regularization: ``scale`` times the sum of squared top singular values.

    .. math::
      \Omega(W) = \lambda \sum_l \hat\sigma(M_l)^2, \qquad
      \nabla_{M_l} \Omega = 2 \lambda \hat\sigma_l \, u_l v_l^\top

    (Yoshida & Miyato 2017, without their 1/2, like :func:`jaxreg.l2`.) Each call runs
    ``num_iters`` power iterations from a fixed random start (:func:`power_iteration`, vectors
    under ``stop_gradient``), so the penalty is a pure function of the params; the estimate is
    a lower bound that converges like :math:`(\sigma_2/\sigma_1)^{2k}`. It has no closed-form
    ``prox``: use it in the loss or through :func:`jaxreg.add_penalty_grad`. Its gradient is
    exact at convergence, its second derivatives are not: ``jax.hessian`` and Hessian-vector
    products see only the rank-one term :math:`2\lambda\, \mathrm{vec}(u v^\top)
    \mathrm{vec}(u v^\top)^\top` (the singular vectors are held fixed); for curvature
    (Newton-CG, Hessian-based sharpness) penalize ``jnp.linalg.norm(M, 2) ** 2`` instead.

    Args:
      scale: :math:`\lambda \ge 0`; an array leaf (a sweep is a ``vmap``).
      mask: which leaves; default every leaf with ``ndim >= 2``.
      num_iters: power iterations per evaluation, >= 1.

    Returns:
      A :class:`SpectralPenalty` (a :class:`jaxreg.Penalty`; ``prox`` raises ``NotImplementedError``).

    Raises:
      ValueError: if a concrete ``scale`` is negative or ``num_iters < 1``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> round(float(jr.spectral_penalty(0.5)({"w": jnp.diag(jnp.array([3.0, 1.0]))})), 4)
      4.5

    References:
      Yoshida & Miyato, `Spectral Norm Regularization for Improving the Generalizability of Deep
      Learning <https://arxiv.org/abs/1705.10941>`_, 2017.
    """
    _checks.check_nonnegative("scale", scale, "spectral_penalty")
    return SpectralPenalty(
        _checks.as_float_array(scale, "scale", "spectral_penalty"),
        optional_mask(mask, "spectral_penalty"),
        _check_num_iters("spectral_penalty", num_iters, 1),
    )


def _check_mode(where: str, mode: Any) -> str:
    if mode not in _MODES:
        raise ValueError(f"{where}: mode must be 'rows' or 'columns', got mode = {mode!r}.")
    return mode


def _gram(m: jax.Array, mode: str) -> jax.Array:
    return _dot(m, m.T) if mode == "rows" else _dot(m.T, m)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["scale"], meta_fields=["mode", "mask"])
@dataclasses.dataclass(frozen=True, eq=False)
class Orthogonal(Penalty):
    r"""Soft orthogonality :math:`\lambda \|M M^\top - I\|_F^2` (rows) or :math:`\lambda \|M^\top M - I\|_F^2`; see :func:`orthogonal`."""

    has_prox = False

    scale: jax.Array
    mode: str = "rows"
    mask: Any = None

    def __call__(self, tree: PyTree) -> jax.Array:
        _checks.check_applied("orthogonal", scale=self.scale)
        terms = []
        for _, x in _selected("orthogonal", self.mask, tree):
            g = _gram(_as_matrix(x), self.mode)
            terms.append(jnp.sum(jnp.square(g - jnp.eye(g.shape[0], dtype=g.dtype))))
        return scaled_total(self.scale, terms)

    def prox(self, tree: PyTree, step: ArrayLike | PyTree) -> PyTree:
        del tree, step
        raise _no_prox("orthogonal")


def orthogonal(scale: ArrayLike, *, mode: str = "rows", mask: Any = None) -> Orthogonal:
    r"""Soft orthogonality penalty on each kernel's Gram matrix.

    .. math::
      \Omega(W) = \lambda \sum_l \|M_l M_l^\top - I\|_F^2 \ (\text{rows}), \qquad
      \lambda \sum_l \|M_l^\top M_l - I\|_F^2 \ (\text{columns})

    ``"rows"`` asks the rows of :math:`M` (``(prod(shape[:-1]), out)``) to be orthonormal, which
    is reachable only when there are no more rows than columns; ``"columns"`` the columns (the
    output units' weight vectors; the usual choice for a Dense kernel with ``in >= out``).

    Keras's ``OrthogonalRegularizer(factor, mode)`` is a different quantity: it L2-normalizes the
    rows (columns) first and takes ``factor`` times the *mean absolute* off-diagonal entry of the
    Gram matrix (``factor * 0.5 * sum|G - diag G| / (k (k - 1) / 2)`` for :math:`k` rows), which
    ignores the norms and is not squared; here the norms count (the diagonal pulls them to 1)
    and the entries are squared and summed. For two unit rows at angle :math:`\theta`, keras
    gives ``factor * |cos(theta)|`` and this ``2 * scale * cos(theta)**2``.

    Args:
      scale: :math:`\lambda \ge 0`; an array leaf.
      mode: ``"rows"`` (:math:`M M^\top`) or ``"columns"`` (:math:`M^\top M`).
      mask: which leaves; default every leaf with ``ndim >= 2``.

    Returns:
      An :class:`Orthogonal` penalty (``prox`` raises ``NotImplementedError``; for a hard
      constraint use :func:`orthogonalize` with :func:`jaxreg.project`).

    Raises:
      ValueError: if a concrete ``scale`` is negative or ``mode`` is not ``"rows"``/``"columns"``.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> float(jr.orthogonal(1.0)({"w": jnp.array([[1.0, 0.0], [1.0, 0.0]])}))   # G = [[1, 1], [1, 1]]
      2.0

    References:
      Brock et al., `Neural Photo Editing with Introspective Adversarial Networks
      <https://arxiv.org/abs/1609.07093>`_, ICLR 2017 (orthogonal regularization).
    """
    _checks.check_nonnegative("scale", scale, "orthogonal")
    return Orthogonal(
        _checks.as_float_array(scale, "scale", "orthogonal"),
        _check_mode("orthogonal", mode),
        optional_mask(mask, "orthogonal"),
    )


@jax.custom_jvp
def _polar_factor(m: jax.Array) -> jax.Array:
    """``U V^T`` of the thin SVD ``m = U S V^T``."""
    u, _, vt = jnp.linalg.svd(m, full_matrices=False)
    return _dot(u, vt)


@_polar_factor.defjvp
def _polar_factor_jvp(primals, tangents):
    # The polar factor is smooth wherever m has full rank, repeated singular values included (every
    # orthogonal matrix), but differentiating through the SVD divides by s_i^2 - s_j^2 (NaN
    # there). Its derivative in closed form divides by s_i + s_j only: with X = U^T dM V,
    #   dQ = U [(X - X^T) / (s_i + s_j)] V^T + (I - U U^T) dM V S^-1 V^T      (tall, r > c)
    #                                         + U S^-1 U^T dM (I - V V^T)      (wide, r < c).
    (m,), (dm,) = primals, tangents
    u, s, vt = jnp.linalg.svd(m, full_matrices=False)
    ut_dm = _dot(u.T, dm)
    x = _dot(ut_dm, vt.T)
    dq = _dot(_dot(u, (x - x.T) / (s[:, None] + s[None, :])), vt)
    rows, cols = m.shape
    if rows > cols:
        dq = dq + _dot((_dot(dm, vt.T) - _dot(u, x)) / s[None, :], vt)
    elif rows < cols:
        dq = dq + _dot(u, (ut_dm - _dot(x, vt)) / s[:, None])
    return _dot(u, vt), dq


def _polar(x: jax.Array) -> jax.Array:
    return jnp.reshape(_polar_factor(_as_matrix(x)), x.shape)


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["mask"])
@dataclasses.dataclass(frozen=True, eq=False)
class Orthogonalize:
    r"""Projects each selected kernel onto its polar factor; see :func:`orthogonalize`."""

    mask: Any = None

    def __call__(self, params: PyTree) -> PyTree:
        leaves = dict(_selected("orthogonalize", self.mask, params))
        return jax.tree_util.tree_map_with_path(
            lambda path, x: _polar(x).astype(x.dtype) if key_path_str(path) in leaves else x, params
        )


def orthogonalize(*, mask: Any = None) -> Orthogonalize:
    r"""Projection onto the nearest (semi-)orthogonal matrix: the polar factor, via an SVD.

    .. math::
      M = U \Sigma V^\top \ \Rightarrow\ M \leftarrow U V^\top
      = \arg\min_{Q:\ Q^\top Q = I \text{ or } Q Q^\top = I} \|Q - M\|_F

    For a tall :math:`M` (``rows >= columns``) the columns come out orthonormal, for a wide one
    the rows. A constraint for :func:`jaxreg.project` (stateless) or a direct call. Its first
    derivative is in closed form, finite at repeated singular values (every orthogonal matrix);
    a second derivative there (a Hessian at an already orthogonal matrix) goes through the SVD's
    own derivative and is NaN.

    Args:
      mask: which leaves; default every leaf with ``ndim >= 2``.

    Returns:
      An :class:`Orthogonalize` projection ``params -> params``.

    Raises:
      ValueError: if the mask selects a leaf that is not a matrix.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> q = jr.orthogonalize()(jnp.array([[2.0, 0.0], [0.0, 0.5]]))
      >>> jnp.round(q, 5)
      Array([[1., 0.],
             [0., 1.]], dtype=float32)

    References:
      Higham, `Computing the Polar Decomposition — with Applications
      <https://doi.org/10.1137/0907079>`_, SIAM J. Sci. Stat. Comput. 1986.
    """
    return Orthogonalize(optional_mask(mask, "orthogonalize"))
