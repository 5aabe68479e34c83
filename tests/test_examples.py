"""Every example's ``main`` with small settings, and a fact about its result that could be false.

The examples are user scripts, written for JAX's default promotion rules, so each runs inside
``jax.numpy_dtype_promotion("standard")`` and ``jax.numpy_rank_promotion("allow")`` (this
suite's conftest makes both strict). Accuracy bounds are chance plus five binomial standard
deviations of a chance-level classifier on the test part: ``0.1 + 5 * sqrt(0.1 * 0.9 / n)``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import jax
import numpy as np

import jaxreg as jr

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _main(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (flax modules) resolve string annotations through it
    spec.loader.exec_module(module)

    def run(**settings):
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            return module.main(**settings)

    return run


def _digits_test_size(seed: int = 0, **kwargs) -> int:
    return jr.data.load("digits", seed=seed, **kwargs).sizes()["test"]


def _above_chance(n: int, classes: int = 10) -> float:
    p = 1.0 / classes
    return p + 5.0 * math.sqrt(p * (1 - p) / n)


def test_every_example_has_a_test():
    tested = {name[len("test_") :].split("__")[0] for name in globals() if name.startswith("test_")}
    missing = {p.stem for p in EXAMPLES.glob("*.py")} - tested
    assert not missing, missing


def test_activity_sow():
    out = _main("activity_sow")(steps=60)
    # The L1 penalty on the sown activations leaves more of them exactly zero than no penalty.
    assert out["l1_zero_activations"] > out["plain_zero_activations"], out
    assert out["plain_test_acc"] > _above_chance(_digits_test_size(train_size=300, val_size=300)), out


def test_bagged_ensemble():
    members = 4
    out = _main("bagged_ensemble")(members=members, steps=30)
    n_train = jr.data.load("digits").sizes()["train"]
    # Out-of-bag fraction: (1 - 1/n)^n per example, averaged over members * n Bernoulli draws.
    p = (1 - 1 / n_train) ** n_train
    assert abs(out["left_out"] - p) < 5 * math.sqrt(p * (1 - p) / (members * n_train)), out
    # Averaging the members' probabilities is at least as accurate as the worst member.
    assert out["ensemble_accuracy"] >= min(out["member_accuracies"]), out
    assert out["ensemble_accuracy"] > _above_chance(_digits_test_size()), out


def test_bayesian_mlp():
    out = _main("bayesian_mlp")(steps=100, num_samples=8)
    assert out["accuracy"] > _above_chance(_digits_test_size()), out
    # Uniform noise is off the data: the predictive distribution there is flatter.
    assert out["entropy_off"] > out["entropy_test"], out
    assert 0.0 <= out["entropy_test"] <= math.log(10) * (1 + 1e-6), out


def test_early_stopping_retrain():
    num_steps, eval_every = 200, 20
    out = _main("early_stopping_retrain")(num_steps=num_steps, eval_every=eval_every, patience=2)
    best = np.asarray(out["best_num_steps"])
    # The best snapshot is taken at an evaluation: a multiple of eval_every, within the run.
    assert np.all(best % eval_every == 0) and np.all((best >= 0) & (best <= num_steps)), out
    # "epochs" policy, recomputed: ceil(u * floor((n_t + n_v) / B) / floor(n_t / B)), B = 64.
    n_t, n_v, b = out["num_train"], out["num_val"], 64
    expected = [math.ceil(u * ((n_t + n_v) // b) / (n_t // b)) for u in best.tolist()]
    assert out["retrain_steps"] == expected, out
    chance = _above_chance(_digits_test_size())
    assert min(out["test_accuracy_best"]) > chance and min(out["test_accuracy_retrained"]) > chance, out


def test_es_vs_backprop():
    out = _main("es_vs_backprop")(steps=30, population=32)
    # ES climbs the (gradient-free) accuracy objective from the zero-weight start.
    assert out["es_train_accuracy"] > out["es_train_accuracy_start"], out
    # ... which backprop cannot: the accuracy's autodiff gradient is exactly zero.
    assert out["autodiff_accuracy_grad_max"] == 0.0, out
    chance = _above_chance(_digits_test_size())
    assert out["es_test_accuracy"] > chance and out["backprop_test_accuracy"] > chance, out


def test_l1_proximal():
    out = _main("l1_proximal")(steps=2000)
    # Only the proximal step lands on exact zeros, on the lasso's support.
    assert out["proximal_exact_zeros"] > out["subgradient_exact_zeros"], out
    assert out["same_support_as_sklearn"], out
    # ISTA after 2000 steps of 0.1 on a well-conditioned 200 x 20 problem: converged far below 1e-3.
    assert out["max_abs_diff_to_sklearn"] < 1e-3, out


def test_mc_dropout_flax():
    out = _main("mc_dropout_flax")(steps=40, members=2, num_samples=4)
    chance = _above_chance(_digits_test_size())
    assert set(out) == {"linen_mc", "linen_ensemble", "nnx_mc", "nnx_ensemble"}, out
    assert min(out.values()) > chance, out


def test_residual_drop_path():
    rows = _main("residual_drop_path")(steps=100, hidden=32, num_blocks=1)
    configs = [(round(r["rate"], 6), r["max_value"]) for r in rows]  # rates are float32
    assert configs == [(0.0, 1.0), (0.0, 1000.0), (0.2, 1.0), (0.2, 1000.0)], rows
    for bounded, free in (rows[0:2], rows[2:4]):
        # The spectral-norm projection keeps the block's kernel smaller than an unbounded run's.
        assert bounded["max_sigma"] < free["max_sigma"], rows
        assert free["test_acc"] > _above_chance(_digits_test_size()), rows


def test_swa_sam_digits():
    out = _main("swa_sam_digits")(steps=80)
    chance = _above_chance(_digits_test_size())
    for kind in ("plain", "swa", "sam"):
        assert out[f"{kind}_test_accuracy"] > chance, out
        assert 0.0 <= out[f"{kind}_test_ece"] <= 1.0, out


def test_sweep_learning_rate():
    out = _main("sweep_learning_rate")(steps=50, num_rates=4)
    # One trace for two sweeps over other values.
    assert out["traces"] == 1, out
    assert len(out["final_losses"]) == 4, out
    # The largest rate (3.0) diverges or stalls: the best is a smaller one.
    assert out["best_learning_rate"] < out["largest_learning_rate"], out
    # Batched against separate runs at the small rates: float32 rounding of 50 steps of a
    # 128 x 32 network, relative 50 * 128 * eps ~ 1e-3 at most.
    assert out["max_rel_diff_to_separate_optax_runs"] < 50 * 128 * np.finfo(np.float32).eps, out


def test_sweep_vmap():
    out = _main("sweep_vmap")(steps=3000)
    assert out["traces"] == 1 and out["second_call_differs"], out
    # Gradient descent converged to the closed-form ridge solution (float32, |w| ~ 3).
    assert out["max_abs_diff_to_closed_form"] < 1e-4, out
    # A larger L2 scale gives a smaller weight norm (the scales increase).
    norms = out["weight_norms"]
    assert bool(np.all(np.diff(norms) <= 0)), out


def test_vae():
    out = _main("vae")(steps=200)
    assert out["final_loss"] < out["initial_loss"], out
    assert out["final_kl"] >= 0.0, out


def test_weight_decay_chain():
    steps = 200
    out = _main("weight_decay_chain")(steps=steps)
    # Decoupled decay through add_penalty_grad is AdamW: equal up to float32 rounding per step.
    assert out["decoupled_vs_adamw_max_abs_diff"] < steps * 10 * np.finfo(np.float32).eps, out
    # Coupled decay is another algorithm: far from AdamW.
    assert out["coupled_vs_adamw_max_abs_diff"] > 100 * out["decoupled_vs_adamw_max_abs_diff"], out
