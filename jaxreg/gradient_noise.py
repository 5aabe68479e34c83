"""Annealed Gaussian gradient noise with its key in the optimizer state (per-member noise under vmap)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jaxreg import _checks, _random, _rebuild
from jaxreg._tree import default_float

__all__ = ["GradientNoiseState", "add_gradient_noise"]


class GradientNoiseState(NamedTuple):
    """State of :func:`add_gradient_noise`.

    Attributes:
      count: number of updates seen (int32, stays at its maximum as optax's); ``t`` of the variance.
      key: the PRNG key of the next update's noise (a leaf: one per member under ``vmap``).
      eta: the noise scale (a leaf of the default float: float64 under x64, as ``ema``'s decay).
      gamma: the annealing exponent (likewise).
    """

    count: jax.Array
    key: jax.Array
    eta: jax.Array
    gamma: jax.Array


def add_gradient_noise(eta: ArrayLike, gamma: ArrayLike = 0.55, *, key: jax.Array) -> optax.GradientTransformation:
    r"""Adds annealed Gaussian noise to the updates; the key lives in the state.

    .. math::
      u_t \leftarrow u_t + \xi_t, \qquad \xi_t \sim \mathcal N\!\Big(0,\ \frac{\eta}{(1 + t)^{\gamma}} I\Big),

    with :math:`t = 0` at the first update (Neelakantan et al. 2015, who use :math:`\gamma = 0.55`
    and :math:`\eta \in \{0.01, 0.3, 1\}`). Unlike ``optax.add_noise``, whose seed is fixed when the
    optimizer is built, the key, ``eta`` and ``gamma`` are leaves of the state: build the state
    under ``jax.vmap`` over split keys (or values) and every member draws its own noise. Each
    update splits the state's key; every float leaf gets an independent draw in its own dtype
    (integer leaves pass through unchanged; ``optax.add_noise`` refuses them).

    Args:
      eta: the noise variance at ``t = 0``, >= 0 (may be traced).
      gamma: the annealing exponent, >= 0 (may be traced). ``eta`` and ``gamma`` are leaves of
        the state, read by ``update``: change them during training with :func:`jaxreg.sweepable`,
        whose rebuilt values are used and kept (``optax.inject_hyperparams`` keeps init's state).
      key: a PRNG key (typed or raw uint32).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`GradientNoiseState`.

    Raises:
      ValueError: if ``eta`` or ``gamma`` is negative or not a scalar.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import jaxreg as jr
      >>> keys = jax.random.split(jax.random.key(0), 3)
      >>> states = jax.vmap(lambda k: jr.add_gradient_noise(0.01, key=k).init(jnp.zeros(2)))(keys)
      >>> noise = jr.add_gradient_noise(0.01, key=keys[0])  # update reads the state's key
      >>> updates, _ = jax.vmap(noise.update)(jnp.zeros((3, 2)), states)
      >>> bool(jnp.all(updates[0] != updates[1]))  # members draw independent noise
      True

    References:
      Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, "Adding gradient noise
      improves learning for very deep networks", arXiv:1511.06807, 2015.
    """
    _checks.check_nonnegative("eta", eta, "add_gradient_noise", scalar=True)
    _checks.check_nonnegative("gamma", gamma, "add_gradient_noise", scalar=True)
    _random.check_key(key, "add_gradient_noise", name="key")

    def init_fn(params: Any) -> GradientNoiseState:
        del params
        return GradientNoiseState(
            jnp.zeros([], jnp.int32), key, jnp.asarray(eta, default_float()), jnp.asarray(gamma, default_float())
        )

    def update_fn(updates, state, params=None):
        del params
        if _rebuild.rebuilt():  # rebuilt by jr.sweepable for this step: its values are this step's
            state = state._replace(eta=jnp.asarray(eta, default_float()), gamma=jnp.asarray(gamma, default_float()))
        next_key, draw = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(draw, max(len(leaves), 1))
        t = state.count.astype(state.eta.dtype)
        std = jnp.sqrt(state.eta / jnp.power(1.0 + t, state.gamma))
        noisy = [
            u + std.astype(jnp.result_type(u)) * _random.normal(k, jnp.shape(u), jnp.result_type(u))
            if jnp.issubdtype(jnp.result_type(u), jnp.inexact)
            else u  # integer leaves pass through, as in every jaxreg transform
            for k, u in zip(keys, leaves)
        ]
        return jax.tree.unflatten(treedef, noisy), GradientNoiseState(
            optax.safe_increment(state.count), next_key, state.eta, state.gamma
        )

    return optax.GradientTransformation(init_fn, update_fn)
