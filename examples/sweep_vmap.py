"""A sweep over L2 scales as one ``vmap``: the penalty's scale is an array leaf.

Ridge regression by gradient descent, trained for 8 scales at once by vmapping a jitted training
function over the scale. The function is traced once (a new scale never recompiles), and every
member lands on the closed-form ridge solution
``w = (X^T X / n + 2 lam I)^{-1} X^T y / n`` (``jr.l2`` has no factor 1/2).

Run: ``python examples/sweep_vmap.py``
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg as jr

TRACES = []


def main(steps=3000, lr=0.1):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0], np.float32) + 0.3 * rng.normal(size=100)).astype(np.float32)
    scales = jnp.asarray(np.geomspace(1e-3, 1.0, 8), jnp.float32)
    opt = optax.sgd(lr)

    def train(scale):
        TRACES.append(1)  # runs only while tracing
        loss = jr.regularize(lambda w: 0.5 * jnp.mean((x @ w - y) ** 2), jr.l2(scale))

        def step(carry, _):
            w, s = carry
            g = jax.grad(lambda w: loss(w)[0])(w)
            u, s = opt.update(g, s, w)
            return (optax.apply_updates(w, u), s), None

        w0 = jnp.zeros(5)
        return jax.lax.scan(step, (w0, opt.init(w0)), None, length=steps)[0][0]

    sweep = jax.jit(jax.vmap(train))
    ws = np.asarray(sweep(scales))
    ws_again = np.asarray(sweep(scales * 1.01))  # new values: no new trace
    n = x.shape[0]
    closed = np.stack(
        [np.linalg.solve(x.T @ x / n + 2 * float(s) * np.eye(5), x.T @ y / n) for s in np.asarray(scales)]
    )
    out = {
        "num_scales": int(scales.shape[0]),
        "traces": len(TRACES),
        "max_abs_diff_to_closed_form": float(np.max(np.abs(ws - closed))),
        "weight_norms": [round(float(v), 4) for v in np.linalg.norm(ws, axis=1)],
        "second_call_differs": bool(np.any(ws_again != ws)),
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    return out


if __name__ == "__main__":
    main()
