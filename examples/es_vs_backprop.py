"""The same linear classifier trained two ways on scikit-learn digits: by an evolution strategy
on the accuracy itself (not differentiable: its gradient is zero almost everywhere), and by
backpropagation on the cross-entropy.

``jr.es.gradient`` perturbs the weights with a population of 128 antithetic Gaussian
directions, evaluates the training accuracy of every perturbed model in one ``vmap``, and
turns the centred ranks of the results into a descent direction for ``optax.adam``. The whole
training runs inside one jitted ``lax.scan``.

Run: ``python examples/es_vs_backprop.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jaxreg as jr


def logits(params, x):
    return x @ params["w"] + params["b"][None, :]


def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits(params, x), axis=-1) == y)


def cross_entropy(params, x, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y))


def main(steps: int = 150, population: int = 128, sigma: float = 0.05, seed: int = 0) -> dict[str, float]:
    s = jr.data.load("digits", seed=seed)  # stratified 60/20/20, standardized with the training statistics
    x_train, x_test = jnp.asarray(s.x_train), jnp.asarray(s.x_test)
    y_train, y_test = jnp.asarray(s.y_train), jnp.asarray(s.y_test)
    params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
    opt = optax.adam(0.02)

    @jax.jit
    def train_es(params, key):
        def step(carry, key):
            params, state = carry
            # Minimize the error rate (1 - accuracy); its rank-shaped ES gradient needs no derivative.
            error, grads = jr.es.value_and_gradient(
                lambda p: 1.0 - accuracy(p, x_train, y_train),
                params,
                key,
                sigma=sigma,
                population=population,
                fitness_shaping="centered_ranks",
            )
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), error

        return jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))

    @jax.jit
    def train_backprop(params):
        def step(carry, _):
            params, state = carry
            grads = jax.grad(cross_entropy)(params, x_train, y_train)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, opt.init(params)), None, length=steps)[0][0]

    (es_params, _), errors = train_es(params, jax.random.key(seed))
    bp_params = train_backprop(params)

    @jax.jit
    def evaluate(es_params, bp_params):
        # The exact gradient of the accuracy is zero wherever it is defined: backprop cannot use it.
        zero = jax.grad(accuracy)({"w": 0.01 * jnp.ones((64, 10)), "b": jnp.zeros(10)}, x_train, y_train)
        return (
            jnp.max(jnp.abs(zero["w"])),
            accuracy(es_params, x_train, y_train),
            accuracy(es_params, x_test, y_test),
            accuracy(bp_params, x_test, y_test),
        )

    max_grad, es_train, es_test, bp_test = (float(v) for v in evaluate(es_params, bp_params))
    results = {
        "es_train_accuracy_start": 1.0 - float(errors[0]),
        "es_train_accuracy": es_train,
        "es_test_accuracy": es_test,
        "backprop_test_accuracy": bp_test,
        "autodiff_accuracy_grad_max": max_grad,
    }
    print(f"autodiff gradient of the accuracy: max |g| = {max_grad:.1f}")
    print(f"ES train accuracy: {results['es_train_accuracy_start']:.4f} -> {results['es_train_accuracy']:.4f}")
    print(
        f"ES test accuracy: {results['es_test_accuracy']:.4f} (accuracy objective, population {population}, {steps} steps)"
    )
    print(f"backprop test accuracy: {results['backprop_test_accuracy']:.4f} (cross-entropy, {steps} steps)")
    print(f"chance: {1 / 10:.4f}")
    return results


if __name__ == "__main__":
    main()
