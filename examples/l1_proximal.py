"""L1 with the proximal step: exact zeros, and the lasso solution of scikit-learn.

``optax.sgd(lr)`` followed by ``jr.proximal(jr.l1(alpha), lr)`` is proximal gradient descent
(ISTA) on ``mean((X w - y)**2) / 2 + alpha * sum(|w|)``, the objective of ``sklearn``'s
``Lasso(alpha)``. The soft threshold sets small weights to exactly 0.0; the same penalty as a
term of the loss (a subgradient step) only makes them jitter around zero.

Run: ``python examples/l1_proximal.py``
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.linear_model import Lasso

import jaxreg as jr


def main(alpha=0.1, lr=0.1, steps=2000):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20)).astype(np.float32)
    w_true = np.zeros(20, np.float32)
    w_true[:4] = [2.0, -1.5, 1.0, 0.5]
    y = x @ w_true + 0.1 * rng.normal(size=200).astype(np.float32)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def data_loss(w):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    def fit(opt, loss):
        def step(carry, _):
            w, s = carry
            u, s = opt.update(jax.grad(loss)(w), s, w)
            return (optax.apply_updates(w, u), s), None

        w0 = jnp.zeros(20)
        return jax.jit(lambda w: jax.lax.scan(step, (w, opt.init(w)), None, length=steps)[0][0])(w0)

    prox = fit(optax.chain(optax.sgd(lr), jr.proximal(jr.l1(alpha), lr)), data_loss)
    penalized = jr.regularize(data_loss, jr.l1(alpha))
    subgrad = fit(optax.sgd(lr), lambda w: penalized(w)[0])
    lasso = Lasso(alpha=alpha, fit_intercept=False, tol=1e-9, max_iter=100000)
    ref = lasso.fit(np.asarray(x, np.float64), np.asarray(y, np.float64)).coef_
    out = {
        "proximal_exact_zeros": int(jnp.sum(prox == 0.0)),
        "subgradient_exact_zeros": int(jnp.sum(subgrad == 0.0)),
        "sklearn_zeros": int(np.sum(ref == 0.0)),
        "same_support_as_sklearn": bool(np.array_equal(np.asarray(prox) != 0, ref != 0)),
        "max_abs_diff_to_sklearn": float(np.max(np.abs(np.asarray(prox) - ref))),
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    return out


if __name__ == "__main__":
    main()
