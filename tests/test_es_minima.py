"""The ES-vs-gradient-descent comparison on Rastrigin: its facts, not its verdict."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.experiments import es_minima

TINY = dataclasses.replace(es_minima.Config(), dim=3, seeds=4, evaluations=4096, population=64, sigmas=(1.0,))


def test_rastrigin_global_minimum_and_local_minima_near_integers():
    assert float(es_minima.rastrigin(jnp.zeros(5))) == 0.0
    # Separable: a local minimum of 10 + x^2 - 10 cos(2 pi x) sits just inside each integer n,
    # where 2x + 20 pi sin(2 pi x) = 0; its value is about n^2 per coordinate.
    x = jnp.array([1.0, -2.0, 3.0]) * (1 - 1 / (1 + 20 * jnp.pi**2))
    np.testing.assert_allclose(jax.grad(es_minima.rastrigin)(x), 0.0, atol=0.05)


def test_gradient_descent_stays_in_the_basin_it_starts_in():
    result = es_minima.run(TINY)
    starts = np.asarray(es_minima._starts(TINY))
    gd_loss = np.asarray(result["methods"]["gradient descent"]["final_loss"]["per_seed"])
    # GD with a step below 2 / curvature never jumps a ridge: it ends at the local minimum of the
    # start's basin, near the nearest integer point, whose value is sum(n_i^2) within 1%.
    nearest = np.round(starts)
    np.testing.assert_allclose(gd_loss, np.sum(nearest**2, axis=-1), rtol=0.02, atol=0.05)
    assert result["methods"]["gradient descent"]["global_basin"] == float(np.mean(np.all(nearest == 0, axis=-1)))


def test_results_carry_intervals_and_a_verdict_for_each_sigma():
    result = es_minima.run(TINY)
    es = result["methods"]["ES (sigma 1)"]
    fl = es["final_loss"]
    assert fl["lo"] <= fl["mean"] <= fl["hi"] and len(fl["per_seed"]) == TINY.seeds
    d = es["minus_gradient_descent"]
    gd = np.asarray(result["methods"]["gradient descent"]["final_loss"]["per_seed"])
    np.testing.assert_allclose(d["mean"], np.mean(np.asarray(fl["per_seed"]) - gd), rtol=1e-12)
    assert es["verdict"] in {"lower loss than GD", "higher loss than GD", "no difference detected at this size"}


def test_budget_must_divide_into_populations():
    with pytest.raises(ValueError, match="evaluations must be a multiple of population"):
        es_minima.run(dataclasses.replace(TINY, evaluations=1000))
