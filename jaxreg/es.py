r"""Evolution-strategy gradient estimates, the population evaluated in parallel with ``vmap``.

The estimate is the gradient of the Gaussian-smoothed loss
:math:`L_\sigma(\theta) = \mathbb E_{\varepsilon \sim \mathcal N(0, I)}[L(\theta + \sigma\varepsilon)]`,
which needs only evaluations of :math:`L`: it trains through non-differentiable objectives
(accuracy, a simulator, a quantized forward pass) and smooths away narrow local minima. The
result is a params-shaped pytree, so it feeds any optax optimizer in place of ``jax.grad``, and
every step is pure, so it runs inside ``jit`` and ``lax.scan`` (``sigma`` may be traced; the
population size is static).

References:
  Salimans et al., *Evolution Strategies as a Scalable Alternative to Reinforcement Learning*, 2017.
  Wierstra et al., *Natural Evolution Strategies*, JMLR 2014.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxreg import _checks, _chunking, _eager, _random
from jaxreg._tree import leaf_name, wider_dtype

PyTree = Any
FitnessShaping = Literal["centered_ranks", "centred_ranks"] | Callable[[jax.Array], jax.Array] | None

__all__ = ["centered_ranks", "gradient", "value_and_gradient"]

_RANKS = ("centered_ranks", "centred_ranks")


def centered_ranks(losses: ArrayLike) -> jax.Array:
    r"""Centred ranks in :math:`[-\tfrac12, \tfrac12]`, ties sharing their average rank.

    .. math:: u_i = \frac{\mathrm{rank}(f_i)}{n - 1} - \frac12,
      \qquad \mathrm{rank}(f_i) = \#\{j : f_j < f_i\} + \tfrac12 \big(\#\{j : f_j = f_i\} - 1\big)

    The utilities sum to zero and are invariant to any increasing transformation of the losses,
    which makes the ES update robust to outliers and to the scale of the objective.

    Args:
      losses: a 1-D array of :math:`n \geq 2` values.

    Returns:
      The utilities, float32 (or wider), shaped like ``losses``.

    Raises:
      ValueError: if ``losses`` is not 1-D with at least 2 elements.

    Examples:
      >>> import jax.numpy as jnp, jaxreg as jr
      >>> jr.es.centered_ranks(jnp.array([3.0, -1.0, 10.0, 3.0, 0.5])).tolist()
      [0.125, -0.5, 0.5, 0.125, -0.25]
    """
    losses = jnp.asarray(losses)
    if losses.ndim != 1 or losses.shape[0] < 2:
        raise ValueError(f"centered_ranks: losses must be 1-D with at least 2 elements, got shape {losses.shape}.")
    n = losses.shape[0]
    dtype = wider_dtype(losses.dtype, jnp.float32)  # an integer loss (an error count) too
    ordered = jnp.sort(losses)
    below = jnp.searchsorted(ordered, losses, side="left")
    below_or_equal = jnp.searchsorted(ordered, losses, side="right")
    ranks = (below + below_or_equal - 1).astype(dtype) / 2.0
    return ranks / (n - 1) - 0.5


def _check_args(
    params: PyTree,
    sigma: Any,
    population: Any,
    antithetic: bool,
    fitness_shaping: Any,
    chunk_size: Any,
    where: str,
    mesh: Any = None,
) -> tuple[int, int | None]:
    _checks.check_positive("sigma", sigma, where, scalar=True)
    population = _checks.check_int_at_least("population", population, 2, where)
    _checks.check_flag("antithetic", antithetic, where)
    if antithetic and population % 2:
        raise ValueError(
            f"{where}: with antithetic=True the population is made of +/- pairs, so it must be even, "
            f"got population = {population}."
        )
    chunk_size = _chunking.check_chunk_size(chunk_size, where, 2 if antithetic else 1)
    if chunk_size is not None:
        if antithetic and chunk_size % 2:
            raise ValueError(
                f"{where}: with antithetic=True chunks hold whole +/- pairs, so chunk_size must be even, "
                f"got chunk_size = {chunk_size}."
            )
    if not (fitness_shaping is None or fitness_shaping in _RANKS or callable(fitness_shaping)):
        raise ValueError(
            f"{where}: fitness_shaping must be None, 'centered_ranks' or a callable losses -> utilities, "
            f"got fitness_shaping = {fitness_shaping!r}."
        )
    if mesh is not None:
        if not isinstance(mesh, jax.sharding.Mesh):
            raise ValueError(f"{where}: mesh must be a jax.sharding.Mesh or None, got mesh = {mesh!r}.")
        num_dirs = population // 2 if antithetic else population
        if num_dirs % mesh.size:
            what = "population / 2 (the +/- pairs)" if antithetic else "population"
            raise ValueError(
                f"{where}: the directions are split evenly over the mesh's {mesh.size} devices, so "
                f"{what} must be a multiple of {mesh.size}, got population = {population}."
            )
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            raise ValueError(
                f"{where}: every params leaf must be floating point to be perturbed, got leaf "
                f"{leaf_name(path)!r} with dtype {jnp.result_type(x)}."
            )
    return population, chunk_size


# The static rule (chunk_size=None under vmap/grad with nothing cached, or JAXREG_AUTOTUNE=0),
# measured on a 2-core AMD EPYC (Zen 3), jax 0.10.2, population 256, a cross-entropy MLP on 128
# digits: one vmap over the whole population was the slowest choice once the model has a hidden
# layer (64-64-10: 63 ms vs 25 ms in chunks of 16-64 members; 64-256-10: 410-460 ms vs 90-150 ms
# in chunks of 8-16), and the best for a linear model (4 ms). The chunk is the largest power of
# two of directions whose intermediates stay within 8 MiB; accelerators get one vmap.
_CHUNK_BUDGET_BYTES = 8 << 20


def _one_direction(loss_fn: Callable[[PyTree], Any], treedef: Any, antithetic: bool) -> Callable[..., Any]:
    """The losses of one direction: the per-item function whose jaxpr sizes and keys the chunking."""

    def one(leaves: list[Any], rng: jax.Array, sigma: jax.Array, i: jax.Array) -> list[Any]:
        eps = _random.normal_leaves(jax.random.fold_in(rng, i), leaves, write_once=True)
        return _perturbed_losses(loss_fn, treedef, leaves, [sigma.astype(e.dtype) * e for e in eps], antithetic)

    return one


def _one_output(out: Any, where: str) -> jax.Array:
    """``loss_fn``'s output as one array; a pair ``(loss, aux)`` or ``None`` is named (np.shape of a
    tuple of tracers raised jax's TracerArrayConversionError)."""
    if out is None or not jax.tree_util.treedef_is_leaf(jax.tree.structure(out)):
        hint = "; for a loss with aux pass lambda p: loss_fn(p)[0]" if isinstance(out, tuple | list) else ""
        got = "None" if out is None else f"a {type(out).__name__}"
        raise ValueError(f"{where}: loss_fn must return a scalar, got {got}{hint}.")
    return jnp.asarray(out)


def _perturbed_losses(
    loss_fn: Callable[[PyTree], Any], treedef: Any, leaves: list[Any], deltas: list[Any], antithetic: bool
) -> list[Any]:
    """``[L(theta + delta), L(theta - delta)]`` (antithetic) or ``[L(theta + delta)]``, ``loss_fn`` called as is."""
    members = [[x + d for x, d in zip(leaves, deltas)]]
    if antithetic:
        members.append([x - d for x, d in zip(leaves, deltas)])
    return [loss_fn(jax.tree.unflatten(treedef, m)) for m in members]


def _estimate(
    loss_fn: Callable[[PyTree], Any],
    params: PyTree,
    rng: jax.Array,
    sigma: ArrayLike,
    population: int,
    antithetic: bool,
    fitness_shaping: FitnessShaping,
    dirs_per_chunk: int,
    where: str,
    axes: tuple[str, ...] | None = None,
) -> PyTree:
    """The estimate; with ``axes`` (inside ``shard_map`` over those mesh axes) each device draws
    and evaluates its own contiguous share of the directions, and the sums are added across them."""
    leaves, treedef = jax.tree.flatten(params)
    if not leaves:
        return params
    num_dirs = population // 2 if antithetic else population
    signs = 2 if antithetic else 1
    sigma = jnp.asarray(sigma)
    if axes is None:
        local, first = num_dirs, jnp.uint32(0)

        def total(tree: Any) -> Any:
            return tree

        def gather(x: jax.Array) -> jax.Array:
            return x

        def mine(x: jax.Array) -> jax.Array:
            return x
    else:
        local = num_dirs // jax.lax.axis_size(axes)
        first = jax.lax.axis_index(axes).astype(jnp.uint32) * jnp.uint32(local)

        def total(tree: Any) -> Any:
            return jax.lax.psum(tree, axes)

        def gather(x: jax.Array) -> jax.Array:  # every device's rows, in device (= direction) order
            return jax.lax.all_gather(x, axes, tiled=True)

        def mine(x: jax.Array) -> jax.Array:  # this device's rows of a gathered array
            return jax.lax.dynamic_slice_in_dim(x, first, local)

    def noise(i: jax.Array) -> list[jax.Array]:
        # Written once: each direction's noise is read by theta + sigma eps, theta - sigma eps, the
        # weighted sum and fusions inside the loss; fused, XLA hashed it again for every reader
        # (population 256 of the digits MLP: 1.3-1.5x slower at every chunking; AMD EPYC).
        return _random.normal_leaves(jax.random.fold_in(rng, i), leaves, write_once=True)

    def evaluate(eps: list[jax.Array]) -> jax.Array:
        """Losses of a block of directions (leading axis b) -> [b, signs]."""
        b = eps[0].shape[0]
        steps = [sigma.astype(e.dtype) * e for e in eps]
        if b == 1:
            # One direction: loss_fn on each perturbed params itself, as a loop of jitted
            # evaluations runs it (a vmap over the signs would batch every matmul of the loss).
            outs = _perturbed_losses(loss_fn, treedef, leaves, [d[0] for d in steps], antithetic)
            losses = jnp.stack([_one_output(o, where) for o in outs])  # a non-scalar loss: the check below
        else:
            perturbed = []
            for x, d in zip(leaves, steps):
                block = [x[None] + d, x[None] - d] if antithetic else [x[None] + d]
                perturbed.append(jnp.concatenate(block, axis=0))
            losses = _one_output(jax.vmap(lambda ls: loss_fn(jax.tree.unflatten(treedef, ls)))(perturbed), where)
        if jnp.shape(losses) != (signs * b,):
            raise ValueError(f"{where}: loss_fn must return a scalar, got an output of shape {jnp.shape(losses)[1:]}.")
        losses = losses.astype(wider_dtype(losses.dtype, jnp.float32))
        return losses.reshape(signs, b).T

    def weighted_sum(coef: jax.Array, eps: list[jax.Array]) -> list[jax.Array]:
        # HIGHEST: a GPU's default float32 dot (TF32) would round the coefficients to 10 bits
        return [jnp.tensordot(coef.astype(e.dtype), e, axes=1, precision=jax.lax.Precision.HIGHEST) for e in eps]

    def utilities(losses: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Shaped fitness: [num_dirs, signs] losses -> (coefficient per direction, scale)."""
        flat = losses.T.reshape(-1)  # all '+' members, then all '-' members
        n = flat.shape[0]
        shape_fn = centered_ranks if fitness_shaping in _RANKS else fitness_shaping
        u, denom = jnp.asarray(shape_fn(flat)), n
        if u.shape != flat.shape:
            raise ValueError(
                f"{where}: fitness_shaping must return one utility per member, got shape {u.shape} "
                f"for losses of shape {flat.shape}."
            )
        u = u.astype(flat.dtype)
        u = u.reshape(signs, num_dirs)
        coef = u[0] - u[1] if antithetic else u[0]
        return coef, 1.0 / (denom * sigma.astype(flat.dtype))

    idx = first + jnp.arange(local, dtype=jnp.uint32)

    def add(a: list[jax.Array], b: list[jax.Array]) -> list[jax.Array]:
        return [u + v for u, v in zip(a, b)]

    if fitness_shaping is None and antithetic:
        # One pass: the raw-fitness estimate needs only running sums, so each chunk's noise is
        # drawn once and dropped: sum_j (f+ - f-) eps_j.
        def block_sums(block_idx: jax.Array) -> tuple[list[jax.Array], jax.Array]:
            eps = jax.vmap(noise)(block_idx)
            losses = evaluate(eps)
            return weighted_sum(losses[:, 0] - losses[:, 1], eps), losses

        sums, losses = _chunking.run_chunks(block_sums, idx, dirs_per_chunk, combine=add)
        sums = total(sums)
        scale = 1.0 / (signs * num_dirs * sigma.astype(losses.dtype))
    elif fitness_shaping is None:
        # One pass too: sum_i (f_i - mean f) eps_i = S - (D / n) E with S = sum_i (f_i - r) eps_i,
        # D = sum_i (f_i - r), E = sum_i eps_i about a reference loss r: a block's own mean,
        # moved to the first block's when blocks merge (r_b - r_a is exact for nearby losses).
        # About r = 0, sum_i f_i eps_i - mean(f) sum_i eps_i cancelled: a loss of 1e4 with sigma
        # 0.01 lost 2-4% of the estimate in float32, depending on the chunks.
        def block_sums(block_idx: jax.Array) -> tuple[tuple[Any, ...], jax.Array]:
            eps = jax.vmap(noise)(block_idx)
            losses = evaluate(eps)
            f = losses[:, 0]
            ref = jnp.mean(f)
            count = jnp.asarray(f.shape[0], f.dtype)
            return (weighted_sum(f - ref, eps), [jnp.sum(e, axis=0) for e in eps], jnp.sum(f - ref), count, ref), losses

        def merge(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
            (sums_a, eps_a, dev_a, n_a, ref_a), (sums_b, eps_b, dev_b, n_b, ref_b) = a, b
            shift = ref_b - ref_a
            moved = [s_ + shift.astype(e_.dtype) * e_ for s_, e_ in zip(sums_b, eps_b)]
            return add(sums_a, moved), add(eps_a, eps_b), dev_a + dev_b + n_b * shift, n_a + n_b, ref_a

        (sums, eps_sums, dev, count, ref), losses = _chunking.run_chunks(block_sums, idx, dirs_per_chunk, combine=merge)
        if axes is not None:  # every device's sums moved to the first device's reference, then added
            shift = ref - gather(ref[None])[0]
            sums = [s_ + shift.astype(e_.dtype) * e_ for s_, e_ in zip(sums, eps_sums)]
            sums, eps_sums, dev, count = total((sums, eps_sums, dev + count * shift, count))
        mean_dev = dev / count
        sums = [s_ - mean_dev.astype(e_.dtype) * e_ for s_, e_ in zip(sums, eps_sums)]
        scale = 1.0 / ((num_dirs - 1) * sigma.astype(losses.dtype))
    elif dirs_per_chunk >= local:  # one block: keep its noise for the weighted sum
        eps = jax.vmap(noise)(idx)
        coef, scale = utilities(gather(evaluate(eps)))
        sums = total(weighted_sum(mine(coef), eps))
    else:
        # Two passes: the utilities need every loss first; the noise is regenerated from its key.
        losses = _chunking.run_chunks(lambda block: (None, evaluate(jax.vmap(noise)(block))), idx, dirs_per_chunk)[1]
        coef, scale = utilities(gather(losses))
        sums, _ = _chunking.run_chunks(
            lambda block: (weighted_sum(block[1], jax.vmap(noise)(block[0])), None),
            (idx, mine(coef)),
            dirs_per_chunk,
            combine=add,
        )
        sums = total(sums)
    grads = [(scale.astype(s.dtype) * s).astype(jnp.result_type(x)) for s, x in zip(sums, leaves)]
    return jax.tree.unflatten(treedef, grads)


def _gradient(
    loss_fn: Callable[[PyTree], Any],
    params: PyTree,
    rng: jax.Array,
    sigma: ArrayLike,
    population: int,
    antithetic: bool,
    fitness_shaping: FitnessShaping,
    chunk_size: int | None,
    where: str,
    mesh: jax.sharding.Mesh | None = None,
) -> PyTree:
    """Resolves the directions per chunk (explicit, measured, cached or static) and estimates."""
    _random.check_key(rng, where)
    params = jax.tree.map(jnp.asarray, params)  # a Python float leaf has no x[None] ("not subscriptable")
    leaves, treedef = jax.tree.flatten(params)
    if not leaves:
        return params
    if mesh is not None:
        return _gradient_on_mesh(
            loss_fn, params, rng, sigma, population, antithetic, fitness_shaping, chunk_size, where, mesh
        )
    # An array, not a Python float: the eager cache keys Python numbers by value (a compile per sigma).
    sigma = _checks.as_float_array(sigma, "sigma", where)
    num_dirs = population // 2 if antithetic else population
    signs = 2 if antithetic else 1

    def program(c: int) -> Callable[..., PyTree]:
        return lambda p, r, s: _estimate(loss_fn, p, r, s, population, antithetic, fitness_shaping, c, where)

    if chunk_size is not None:
        dirs = max(1, min(num_dirs, chunk_size // signs))
        return _eager.call(program(dirs), params, rng, sigma, compiled=dirs < num_dirs)
    jaxpr = _item_jaxpr(loss_fn, treedef, antithetic, leaves, rng, sigma)
    static = _static_dirs(num_dirs, jaxpr)
    return _chunking.run_auto(
        None,
        num_dirs,
        where=where,
        program=program,
        args=(params, rng, sigma),
        items=(),  # the directions are drawn inside, never sharded
        item_jaxpr=jaxpr,
        static=static,
        extra=(antithetic, _chunking.callable_key(fitness_shaping)),
    )


def _item_jaxpr(loss_fn: Callable[[PyTree], Any], treedef: Any, antithetic: bool, leaves: list[Any], rng, sigma):
    one = _one_direction(loss_fn, treedef, antithetic)
    return _chunking.trace_item(one, leaves, rng, jnp.asarray(sigma), jnp.zeros([], jnp.uint32))


def _static_dirs(num_dirs: int, jaxpr: Any) -> int:
    """Directions per chunk by the static rule: the whole population on accelerators."""
    if jax.default_backend() != "cpu":
        return num_dirs
    item_bytes = None if jaxpr is None else _chunking.jaxpr_bytes(jaxpr.jaxpr)
    return _chunking.static_chunk(num_dirs, item_bytes, _CHUNK_BUDGET_BYTES)


def _gradient_on_mesh(
    loss_fn: Callable[[PyTree], Any],
    params: PyTree,
    rng: jax.Array,
    sigma: ArrayLike,
    population: int,
    antithetic: bool,
    fitness_shaping: FitnessShaping,
    chunk_size: int | None,
    where: str,
    mesh: jax.sharding.Mesh,
) -> PyTree:
    """The directions split over every device of ``mesh`` (``jax.shard_map``, all axes at once).

    Each device runs :func:`_estimate` on its share, chunked by ``chunk_size`` or by the static
    rule on the share (nothing is timed across devices); params, key and ``sigma`` are replicated.
    """
    num_dirs = population // 2 if antithetic else population
    signs = 2 if antithetic else 1
    local = num_dirs // mesh.size
    if chunk_size is not None:
        chunk = max(1, min(local, chunk_size // signs))
    else:
        leaves, treedef = jax.tree.flatten(params)
        chunk = _static_dirs(local, _item_jaxpr(loss_fn, treedef, antithetic, leaves, rng, sigma))
    axes = tuple(mesh.axis_names)
    replicated = jax.sharding.PartitionSpec()
    # The inputs replicated on the mesh first (params sharded over it would not match in_specs).
    everywhere = jax.sharding.NamedSharding(mesh, replicated)
    explicit = all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
    place = jax.sharding.reshard if explicit else jax.lax.with_sharding_constraint
    params, rng, sigma = jax.tree.map(lambda x: place(x, everywhere), (params, rng, jnp.asarray(sigma)))
    loss_of, closure = _closure_as_arguments(loss_fn, params)
    closure = jax.tree.map(lambda x: place(x, everywhere), closure)

    def body(p: PyTree, r: jax.Array, s: jax.Array, c: list[Any]) -> PyTree:
        loss = loss_fn if loss_of is None else loss_of(c)
        return _estimate(loss, p, r, s, population, antithetic, fitness_shaping, chunk, where, axes)

    # A replayed loss was traced outside the map: its equations carry no varying-axes types to check.
    run = jax.shard_map(body, mesh=mesh, in_specs=(replicated,) * 4, out_specs=replicated, check_vma=loss_of is None)
    try:
        return _eager.call(run, params, rng, sigma, closure)
    except Exception as e:  # the loss itself traced fine above: what fails is its replay in the map
        if loss_of is None:
            raise
        # An inner jit of the loss (jax.nn.relu, log_softmax) keeps the explicit-axes types it was
        # traced with, which the map's manual axes refuse (NotImplementedError, ShardingTypeError).
        raise ValueError(
            f"{where}: with mesh=, loss_fn closes over an array placed on a mesh of explicit axes and "
            "its program cannot be moved into jax.shard_map (an inner jit of the loss keeps that "
            "placement); leave the arrays it closes over unplaced (as jnp.asarray makes them) or "
            f"place them on a mesh of automatic axes. jax said: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e


def _closure_as_arguments(loss_fn: Callable[[PyTree], Any], params: PyTree) -> tuple[Callable | None, list[Any]]:
    """``loss_fn``'s closed-over arrays as arguments, where one is on a mesh of explicit axes.

    ``jax.shard_map`` cannot close over such an array (a batch placed with ``jax.make_mesh``'s
    default axes: ``NotImplementedError``); traced once here, the loss is replayed from its jaxpr
    with them passed in. Returns ``(loss_of, consts)``, ``loss_of(consts)`` the loss, or
    ``(None, [])`` where ``loss_fn`` is used as it is.
    """
    closed, out_tree = _eager.trace(loss_fn, params)
    if not any(_on_explicit_mesh(c) for c in closed.consts):
        return None, []

    def loss_of(consts: list[Any]) -> Callable[[PyTree], Any]:
        return lambda p: _eager.replay(closed, out_tree, p, consts=consts)

    return loss_of, list(closed.consts)


def _on_explicit_mesh(x: Any) -> bool:
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    axis_types = getattr(mesh, "axis_types", ()) if mesh is not None and not mesh.empty else ()
    return any(t == jax.sharding.AxisType.Explicit for t in axis_types)


def gradient(
    loss_fn: Callable[[PyTree], Any],
    params: PyTree,
    rng: jax.Array,
    *,
    sigma: ArrayLike,
    population: int,
    antithetic: bool = True,
    fitness_shaping: FitnessShaping = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> PyTree:
    r"""Evolution-strategy estimate of the gradient of ``loss_fn`` at ``params``.

    With :math:`n` = ``population`` losses :math:`f_i = L(\theta + \sigma \varepsilon_i)`,
    :math:`\varepsilon_i \sim \mathcal N(0, I)` over every leaf:

    .. math::
      \hat g = \frac{1}{n \sigma} \sum_{j=1}^{n/2} (f_j^+ - f_j^-)\, \varepsilon_j
      \quad\text{(antithetic: } f_j^\pm = L(\theta \pm \sigma \varepsilon_j)\text{)},
      \qquad
      \hat g = \frac{1}{(n - 1) \sigma} \sum_{i=1}^{n} (f_i - \bar f)\, \varepsilon_i
      \quad\text{(otherwise)}

    Both are unbiased estimates of :math:`\nabla_\theta\, \mathbb E_\varepsilon[L(\theta + \sigma
    \varepsilon)]`, which equals :math:`\nabla L(\theta)` for a quadratic :math:`L`. With
    ``fitness_shaping``, the losses are replaced by utilities :math:`u_i` (e.g. centred ranks)
    and :math:`\hat g = \frac{1}{n\sigma}\sum_i u_i \varepsilon_i`: a descent direction robust to
    the scale of :math:`L`, no longer its gradient in magnitude.

    The population is evaluated with ``vmap`` (``loss_fn`` sees one params pytree; it is batched
    for you), ``chunk_size`` members at a time in a loop over chunks (``lax.fori_loop``): each chunk's
    noise is drawn, used and dropped (with fitness shaping, drawn again from its key for the
    weighted sum), so memory is bounded by one chunk. The noise of direction ``j`` depends only
    on ``(rng, j)``, so the estimate does not depend on ``chunk_size`` beyond rounding.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` to minimize; need not be differentiable. Close over
        the batch (``lambda p: loss(p, x, y)``); inside ``jit`` the batch may be traced.
      params: any pytree of floating-point arrays.
      rng: a PRNG key; reuse it to reuse the same perturbations.
      sigma: the perturbation scale :math:`\sigma > 0`, a scalar (may be traced).
      population: :math:`n \geq 2` loss evaluations per estimate (static; even if antithetic).
      antithetic: evaluate mirrored pairs :math:`\theta \pm \sigma\varepsilon_j` (lower variance).
      fitness_shaping: ``None`` (raw losses), ``"centered_ranks"`` (alias ``"centred_ranks"``;
        see :func:`centered_ranks`), or a callable ``losses[n] -> utilities[n]``, applied to the
        losses ordered as all ``+`` members then all ``-`` members.
      chunk_size: members evaluated at once (even if antithetic). ``None`` chooses by
        measurement: on the first call (under ``jit``: at trace time, on stand-ins of the
        arguments) a few chunkings (the whole population in one ``vmap``, one direction at a
        time, powers of two between) are compiled and timed on this machine within about 1 s
        (``JAXREG_AUTOTUNE_BUDGET``), and the fastest is cached for the process (and on disk with
        ``JAXREG_AUTOTUNE_CACHE=1``). Under ``vmap`` or ``grad`` the cached choice for the same
        program and shapes is used, else the static rule: on CPU the
        largest power of two of members whose intermediates fit about 8 MiB (measured on a
        2-core AMD EPYC), on accelerators the whole population. ``JAXREG_AUTOTUNE=0`` always
        uses the static rule. With ``mesh``: members per chunk on each device (``None``: the
        static rule on each device's share, nothing timed).
      mesh: a ``jax.sharding.Mesh`` to split the population over: each of its devices (all
        axes together) draws and evaluates its own contiguous share of the directions, and the
        weighted sums are added across devices (``jax.shard_map``; ``params``, ``rng`` and
        ``sigma`` replicated, the estimate returned replicated). The directions are those of one
        device, so the estimate equals the unsplit one up to the order of summation. The
        directions (``population / 2`` if antithetic) must divide evenly over ``mesh.size``.
        ``None`` (default): one program, placed as its inputs are.

    Returns:
      The gradient estimate, a pytree with the structure and dtypes of ``params``.

    Raises:
      ValueError: if ``rng`` is not a PRNG key, ``sigma`` is not a scalar or (concrete) not
        positive, ``population`` is not an int >= 2 or is odd with ``antithetic=True``,
        ``chunk_size`` is invalid, ``mesh`` is not a mesh or its size does not divide the directions,
        ``fitness_shaping`` is unknown, ``loss_fn`` does not return a scalar, or a leaf is not
        floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxreg as jr
      >>> loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
      >>> params, opt = {"w": jnp.zeros(4)}, optax.adam(0.1)
      >>> state = opt.init(params)
      >>> def step(carry, key):
      ...     params, state = carry
      ...     grads = jr.es.gradient(loss, params, key, sigma=0.1, population=32)
      ...     with jax.numpy_dtype_promotion("standard"):  # adam: decay ** int32 count
      ...         updates, state = opt.update(grads, state, params)
      ...     return (optax.apply_updates(params, updates), state), None
      >>> (params, _), _ = jax.lax.scan(step, (params, state), jax.random.split(jax.random.key(0), 300))
      >>> bool(jnp.allclose(params["w"], 3.0, atol=0.05))
      True
    """
    where = "es.gradient"
    _checks.check_callable("loss_fn", loss_fn, where, "a function params -> loss")
    population, chunk_size = _check_args(
        params, sigma, population, antithetic, fitness_shaping, chunk_size, where, mesh
    )
    return _gradient(loss_fn, params, rng, sigma, population, antithetic, fitness_shaping, chunk_size, where, mesh)


def value_and_gradient(
    loss_fn: Callable[[PyTree], Any],
    params: PyTree,
    rng: jax.Array,
    *,
    sigma: ArrayLike,
    population: int,
    antithetic: bool = True,
    fitness_shaping: FitnessShaping = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[jax.Array, PyTree]:
    r"""``(loss_fn(params), gradient(...))``: the unperturbed loss and the ES gradient estimate.

    .. math:: \big(L(\theta),\ \hat g\big), \qquad \hat g \text{ as in } :func:`gradient`

    The value costs one more evaluation of ``loss_fn`` (at the unperturbed ``params``), so it
    reports the objective itself, e.g. the accuracy of the current model, not a smoothed one.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: any pytree of floating-point arrays.
      rng: a PRNG key.
      sigma: the perturbation scale, a positive scalar (may be traced).
      population: loss evaluations per estimate (static).
      antithetic: evaluate mirrored pairs.
      fitness_shaping: ``None``, ``"centered_ranks"`` or a callable (see :func:`gradient`).
      chunk_size: members evaluated at once; ``None`` chooses (see :func:`gradient`).
      mesh: devices to split the population over (see :func:`gradient`).

    Returns:
      ``(value, grads)``: ``value`` as returned by ``loss_fn``; ``grads`` shaped like ``params``.

    Raises:
      ValueError: as :func:`gradient`.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg as jr
      >>> loss = lambda p: jnp.sum(p ** 2)
      >>> value, grads = jr.es.value_and_gradient(loss, jnp.ones(3), jax.random.key(0),
      ...                                         sigma=0.01, population=4000)
      >>> round(float(value), 4), [round(float(g)) for g in grads]  # the true gradient is 2 p
      (3.0, [2, 2, 2])
    """
    where = "es.value_and_gradient"
    _checks.check_callable("loss_fn", loss_fn, where, "a function params -> loss")
    population, chunk_size = _check_args(
        params, sigma, population, antithetic, fitness_shaping, chunk_size, where, mesh
    )
    grads = _gradient(loss_fn, params, rng, sigma, population, antithetic, fitness_shaping, chunk_size, where, mesh)
    return loss_fn(params), grads
