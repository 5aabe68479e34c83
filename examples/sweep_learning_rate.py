"""A learning-rate sweep as one program: ``jr.sweepable(optax.adam)`` puts the rate in the state.

A small MLP regression trained with Adam at 8 learning rates at once: the optimizer is built
inside ``jax.vmap`` with a traced learning rate, so every member's state holds its own rate
(``state.hyperparams["learning_rate"]``), and one jitted, vmapped ``lax.scan`` trains them all.
It is traced once; a second sweep over other rates reuses the program. At the small rates each
member ends where a separate run of plain ``optax.adam(lr)`` with a Python float does (what a
sweep costs without jaxreg: one compile and one run per value), within float32 rounding of the
batched matmuls (checked here for two of them); at rates near the edge of stability (0.1 and up
here) training is chaotic and a one-ulp difference grows to percents, in separate runs alike.

Run: ``python examples/sweep_learning_rate.py``
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr

TRACES = []


def init_mlp(key, sizes=(4, 32, 1)):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (sizes[0], sizes[1])) / np.sqrt(sizes[0]).astype(np.float32),
        "b1": jnp.zeros(sizes[1]),
        "w2": jax.random.normal(k2, (sizes[1], sizes[2])) / np.sqrt(sizes[1]).astype(np.float32),
    }


def loss_fn(p, x, y):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean(jnp.square((h @ p["w2"])[:, 0] - y))


def train(opt, params, opt_state, x, y, steps):
    """``steps`` full-batch steps; returns the final loss (one member)."""

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss_fn)(p, x, y)
        # optax's scale_by_adam computes b ** count (int32): the plain-optax baseline needs
        # standard promotion under strict mode; jr.sweepable scopes it itself.
        with jax.numpy_dtype_promotion("standard"):
            u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (params, opt_state), None, length=steps)
    return loss_fn(p, x, y)


def main(steps: int = 300, num_rates: int = 8) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype(np.float32)
    y = np.sin(x @ np.array([1.0, -1.0, 0.5, 2.0], np.float32)).astype(np.float32)
    params = init_mlp(jax.random.key(0))
    lrs = jnp.asarray(np.geomspace(1e-3, 3.0, num_rates), jnp.float32)

    make = jr.sweepable(optax.adam)
    opt = make(learning_rate=1e-3)  # the update: it reads each member's rate from its state

    @jax.jit
    def sweep(lrs):
        TRACES.append(1)  # runs only while tracing
        states = jax.vmap(lambda lr: make(learning_rate=lr).init(params))(lrs)
        return jax.vmap(lambda s: train(opt, params, s, x, y, steps))(states)

    losses = np.asarray(sweep(lrs))
    sweep(lrs * 0.5)  # other values: the same program, no new trace

    # What a user does without jaxreg: one optimizer (one compile) per Python-float rate;
    # here for two of the small rates, to keep the example quick.
    checked = [0, 2]
    separate = []
    for i in checked:
        ref = optax.adam(float(lrs[i]))
        with jax.numpy_dtype_promotion("standard"):  # scale_by_adam's init, as above
            ref_state = ref.init(params)
        separate.append(float(jax.jit(lambda s, ref=ref: train(ref, params, s, x, y, steps))(ref_state)))
    # Not bitwise: XLA may sum the vmapped (batched) matmuls in another order than the single
    # run's (the optimizer's arithmetic is the same: tests/test_hyperparams.py). At the small
    # rates that stays ~1e-6; at rates near the edge of stability (0.1 and up here) training is
    # chaotic and any one-ulp difference grows to percents, in separate runs alike.
    rel = np.abs(losses[checked] - np.asarray(separate)) / np.asarray(separate)
    best = int(np.nanargmin(losses))
    out = {
        "learning_rates": [float(f"{v:.3g}") for v in np.asarray(lrs)],
        "final_losses": [float(f"{v:.4g}") for v in losses],
        "traces": len(TRACES),
        "max_rel_diff_to_separate_optax_runs": float(f"{float(np.max(rel)):.2g}"),
        "best_learning_rate": float(f"{float(lrs[best]):.3g}"),
        "largest_learning_rate": float(f"{float(lrs[-1]):.3g}"),
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    return out


if __name__ == "__main__":
    main()
