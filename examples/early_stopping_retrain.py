"""Early stopping per member, then retraining on train + validation: a vmapped grid of L2 strengths.

Four members of a small MLP on scikit-learn's digits, each with its own L2 scale (a per-member
leaf of the training state), train together as one scan-fused program; each stops on its own
when its validation loss stops improving. Then each is retrained from scratch on train +
validation data for the same number of epochs as its best snapshot (more updates, since an
epoch is now longer), and evaluated on the test split.

    python examples/early_stopping_retrain.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr

SCALES = [0.0, 1e-4, 1e-3, 1e-2]  # one L2 strength per member
BATCH = 64


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (64, 32)) / 8.0,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 10)) / jnp.sqrt(32.0),
        "b2": jnp.zeros(10),
    }


def logits_fn(params, x):
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def xent(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


opt = optax.adam(1e-2)


def step(state, batch, rng):
    """One member's update; its L2 scale is read from the state (a traced, per-member leaf)."""
    del rng  # no dropout here
    loss_fn = jr.regularize(xent, jr.l2(state["l2"], mask=jr.masks.kernels))
    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], *batch)
    updates, opt_state = opt.update(grads, state["opt"], state["params"])
    return {**state, "params": optax.apply_updates(state["params"], updates), "opt": opt_state}, terms.loss


def evaluate(state, data):
    x, y = data
    logits = logits_fn(state["params"], x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


@jax.jit
def fresh_states(key):
    params = jax.vmap(init_params)(jax.random.split(key, len(SCALES)))
    return {"params": params, "opt": jax.vmap(opt.init)(params), "l2": jnp.asarray(SCALES, jnp.float32)}


def main(num_steps: int = 600, eval_every: int = 20, patience: int = 3, seed: int = 0) -> dict:
    s = jr.data.load("digits", seed=seed, standardize=False)  # stratified 60/20/20
    x_tr, x_val, x_test = s.x_train / 16.0, s.x_val / 16.0, s.x_test / 16.0  # pixels in [0, 1]
    y_tr, y_val = s.y_train, s.y_val
    train, val, test = (x_tr, y_tr), (x_val, y_val), (x_test, s.y_test)

    result = jr.fit(
        step,
        evaluate,
        fresh_states(jax.random.key(0)),
        train,
        val,
        rng=jax.random.key(1),
        num_steps=num_steps,
        batch_size=BATCH,
        eval_every=eval_every,
        num_members=len(SCALES),
        early_stopping=jr.EarlyStopping(patience, min_delta=1e-3),
        progress=False,
    )
    stopped_at = [
        int(result.history.step[np.argmax(s)]) if s.any() else None for s in np.asarray(result.history.stopped)
    ]
    retrained = jr.retrain(
        step,
        fresh_states(jax.random.key(2)),
        train,
        val,
        result.best_num_steps,
        rng=jax.random.key(3),
        batch_size=BATCH,
        policy="epochs",
        num_members=len(SCALES),
        progress=False,
    )
    budget = jr.retrain_budget(
        result.best_num_steps, num_train=len(y_tr), num_val=len(y_val), batch_size=BATCH, policy="epochs"
    )
    evaluate_all = jax.jit(jax.vmap(evaluate, in_axes=(0, None)))
    _, acc_best = evaluate_all(result.best, test)
    _, acc_retrained = evaluate_all(retrained.state, test)

    print(
        f"{'l2':>8} {'stopped at':>10} {'best step':>9} {'best val':>8} {'retrain steps':>13} {'test acc':>8} {'retrained':>9}"
    )
    for i, scale in enumerate(SCALES):
        print(
            f"{scale:>8g} {stopped_at[i]!s:>10} {int(result.best_num_steps[i]):>9} "
            f"{float(result.stopping.best_metric[i]):>8.4f} {int(budget[i]):>13} "
            f"{float(acc_best[i]):>8.3f} {float(acc_retrained[i]):>9.3f}"
        )
    return {
        "stopped_at": stopped_at,
        "best_num_steps": [int(v) for v in result.best_num_steps],
        "retrain_steps": [int(v) for v in budget],
        "best_val_loss": [float(v) for v in result.stopping.best_metric],
        "test_accuracy_best": [float(v) for v in acc_best],
        "test_accuracy_retrained": [float(v) for v in acc_retrained],
        "num_train": len(y_tr),
        "num_val": len(y_val),
    }


if __name__ == "__main__":
    main()
