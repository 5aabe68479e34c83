"""ES against gradient descent where gradient descent is known to stall: the Rastrigin function.

.. math:: f(x) = 10 d + \\sum_{i=1}^d \\left(x_i^2 - 10 \\cos(2 \\pi x_i)\\right)

has a local minimum near every integer point and its global minimum 0 at the origin. Gradient
descent from a random start in :math:`[-5.12, 5.12]^d` falls into the local minimum of its
start's basin. An evolution strategy follows the gradient of the Gaussian-smoothed objective
:math:`\\mathbb E_\\varepsilon f(x + \\sigma\\varepsilon)`, in which the cosine is damped by
:math:`e^{-2\\pi^2\\sigma^2}`: at :math:`\\sigma = 1` the smoothed function is a bowl, at
:math:`\\sigma = 0.3` the ripples are 17% as deep. Both methods get the same number of loss
evaluations (a gradient counted as one, which favours gradient descent: a backward pass costs
more than a forward one). Every seed (its own start and noise) is one member of a ``vmap``; the
whole comparison is one compiled program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg as jr

__all__ = ["Config", "rastrigin", "run"]


def rastrigin(x: jax.Array) -> jax.Array:
    """The Rastrigin function of a vector ``x`` (global minimum 0 at the origin)."""
    return 10.0 * x.shape[-1] + jnp.sum(x**2 - 10.0 * jnp.cos(2.0 * jnp.pi * x), axis=-1)


@dataclasses.dataclass(frozen=True)
class Config:
    """The comparison's settings; ``evaluations`` is the budget of loss evaluations per run."""

    dim: int = 8
    seeds: int = 16
    evaluations: int = 12_800
    population: int = 128
    gd_learning_rate: float = 2e-3  # below 2 / (2 + 40 pi^2), the curvature bound: GD is stable
    es_learning_rate: float = 0.05
    sigmas: tuple[float, ...] = (0.3, 0.6, 1.0)
    seed: int = 0


def _starts(cfg: Config) -> jax.Array:
    return jax.random.uniform(jax.random.key(cfg.seed), (cfg.seeds, cfg.dim), minval=-5.12, maxval=5.12)


def _gradient_descent(x0: jax.Array, cfg: Config) -> jax.Array:
    grad = jax.grad(rastrigin)

    def step(x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return x - cfg.gd_learning_rate * grad(x), None

    x, _ = jax.lax.scan(step, x0, length=cfg.evaluations)
    return x


def _evolution_strategy(x0: jax.Array, key: jax.Array, sigma: float, cfg: Config) -> jax.Array:
    steps = cfg.evaluations // cfg.population

    def step(x: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        k, t = inputs
        # The whole population in one vmap, fixed: a measured chunking could differ between runs,
        # and thousands of steps on Rastrigin carry a last-bit difference into the result.
        g = jr.es.gradient(rastrigin, x, k, sigma=sigma, population=cfg.population, chunk_size=cfg.population)
        # A learning rate decaying linearly to 0: the estimate's noise does not leave the last
        # point jittering around the minimum it found.
        lr = cfg.es_learning_rate * (1.0 - t / steps)
        return x - lr * g, None

    ts = jnp.arange(steps, dtype=jnp.float32)
    x, _ = jax.lax.scan(step, x0, (jax.random.split(key, steps), ts))
    return x


def _summary(values: np.ndarray) -> dict[str, Any]:
    iv = jr.stats.mean_interval(values)
    vals = values.tolist()
    return {"mean": float(iv.mean), "lo": float(iv.lo), "hi": float(iv.hi), "values": vals, "per_seed": vals}


def run(cfg: Config = Config()) -> dict[str, Any]:
    """Runs gradient descent and ES (one run per sigma) from the same starts, all seeds at once.

    Returns:
      A dict: per method, the final loss (mean, 95% t interval, per seed) and the fraction of
      seeds that ended in the global minimum's basin (every coordinate within 0.5 of 0); per ES
      sigma, the paired difference of final losses against gradient descent and its verdict.
    """
    if cfg.evaluations % cfg.population:
        raise ValueError(
            f"es_minima: evaluations must be a multiple of population, got evaluations = {cfg.evaluations} "
            f"and population = {cfg.population}."
        )
    starts = _starts(cfg)
    keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.seeds)

    @jax.jit
    def finals(starts: jax.Array, keys: jax.Array) -> dict[str, jax.Array]:
        out = {"gradient descent": jax.vmap(lambda x: _gradient_descent(x, cfg))(starts)}
        for sigma in cfg.sigmas:
            out[f"ES (sigma {sigma:g})"] = jax.vmap(lambda x, k, s=sigma: _evolution_strategy(x, k, s, cfg))(
                starts, keys
            )
        return out

    points = jax.device_get(finals(starts, keys))
    gd_loss = np.asarray(rastrigin(jnp.asarray(points["gradient descent"])), np.float64)
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "start_loss": _summary(np.asarray(rastrigin(starts), np.float64)),
        "methods": {},
    }
    for name, x in points.items():
        loss = np.asarray(rastrigin(jnp.asarray(x)), np.float64)
        entry = {"final_loss": _summary(loss), "global_basin": float(np.mean(np.all(np.abs(x) < 0.5, axis=-1)))}
        if name != "gradient descent":
            diff = jr.stats.paired_difference(loss, gd_loss)
            entry["minus_gradient_descent"] = {"mean": float(diff.mean), "lo": float(diff.lo), "hi": float(diff.hi)}
            entry["verdict"] = jr.stats.verdict(diff, higher="higher loss than GD", lower="lower loss than GD")
        result["methods"][name] = entry
    result["ripple_left"] = {f"{s:g}": math.exp(-2 * math.pi**2 * s**2) for s in cfg.sigmas}
    return result


def format_result(result: dict[str, Any]) -> str:
    """A small table: method, final loss mean ± interval, fraction in the global basin, verdict."""
    cfg = result["config"]
    lines = [
        f"ES vs gradient descent on Rastrigin (d = {cfg['dim']}, {cfg['seeds']} seeds, "
        f"{cfg['evaluations']} loss evaluations each; start loss {result['start_loss']['mean']:.1f}):"
    ]
    for name, entry in result["methods"].items():
        fl = entry["final_loss"]
        half = max(fl["mean"] - fl["lo"], fl["hi"] - fl["mean"])
        verdict = entry.get("verdict", "")
        lines.append(
            f"  {name:<18} final loss {fl['mean']:7.2f} ± {half:5.2f}   in global basin {entry['global_basin']:.0%}"
            + (f"   {verdict}" if verdict else "")
        )
    return "\n".join(lines)
