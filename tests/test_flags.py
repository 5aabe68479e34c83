"""Static switches (``has_aux``, ``antithetic``, ...) take True or False only.

A string such as ``"no"`` is truthy: read as a switch it would silently turn the option on, so
every public switch refuses it, naming the argument and the value, before anything is traced.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg as jr

SWITCHES = {
    "es.gradient antithetic": (
        "es.gradient",
        "antithetic",
        lambda v: jr.es.gradient(
            lambda p: jnp.sum(p), jnp.ones(2), jax.random.key(0), sigma=0.1, population=4, antithetic=v
        ),
    ),
    "regularize has_aux": ("regularize", "has_aux", lambda v: jr.regularize(jnp.sum, jr.l2(0.1), has_aux=v)),
    "ensemble.train_step has_aux": (
        "ensemble.train_step",
        "has_aux",
        lambda v: jr.ensemble.train_step(lambda p, b, r, h: jnp.sum(p), optax.sgd(0.1), has_aux=v),
    ),
    "replicate stacked": ("replicate", "stacked", lambda v: jr.ensemble.replicate(jnp.ones(2), 2, stacked=v)),
    "ema debias": ("ema", "debias", lambda v: jr.ema(0.9, debias=v)),
    "by_path allow_empty": ("by_path", "allow_empty", lambda v: jr.masks.by_path("w", allow_empty=v)),
    "sam_gradient adaptive": (
        "sam_gradient",
        "adaptive",
        lambda v: jr.sam_gradient(lambda p: jnp.sum(p**2), jnp.ones(2), rho=0.1, adaptive=v),
    ),
    **{
        f"{fn.__name__} from_logits": (fn.__name__, "from_logits", lambda v, fn=fn: fn(jnp.ones((2, 3)), from_logits=v))
        for fn in (jr.predictive_probs, jr.predictive_entropy, jr.expected_entropy, jr.mutual_information)
    },
    "elbo_loss has_aux": (
        "variational.elbo_loss",
        "has_aux",
        lambda v: jr.variational.elbo_loss(lambda p: 0.0, num_examples=10, has_aux=v),
    ),
}


@pytest.mark.parametrize("value", ["no", None, 1, np.array([True])], ids=["str", "None", "int", "array"])
@pytest.mark.parametrize("case", list(SWITCHES), ids=list(SWITCHES))
def test_a_switch_that_is_not_a_bool_is_refused(case, value):
    where, name, call = SWITCHES[case]
    with pytest.raises(ValueError, match=rf"^{re.escape(where)}: {name} must be True or False, got {name} = "):
        call(value)


# Switches whose effect is an array: a numpy bool must act as the Python bool it equals, and the
# two settings must differ (so the switch is read at all).
ARRAY_SWITCHES = {
    "es.gradient antithetic": lambda v: jr.es.gradient(
        lambda p: jnp.sum(p**3), jnp.array([1.0, 2.0]), jax.random.key(0), sigma=0.1, population=4, antithetic=v
    ),
    "replicate stacked": lambda v: jr.ensemble.replicate(jnp.ones((2, 3)), 2, stacked=v),
    "sam_gradient adaptive": lambda v: jr.sam_gradient(
        lambda p: jnp.sum(p**4), jnp.array([1.0, 2.0]), rho=0.1, adaptive=v
    ),
}


@pytest.mark.parametrize("case", list(ARRAY_SWITCHES), ids=list(ARRAY_SWITCHES))
def test_numpy_bools_act_as_the_python_bools(case):
    call = ARRAY_SWITCHES[case]
    on, off = call(True), call(False)
    chex.assert_trees_all_equal(call(np.True_), on)
    chex.assert_trees_all_equal(call(np.False_), off)
    assert jax.tree.structure(on) != jax.tree.structure(off) or any(
        np.shape(a) != np.shape(b) or not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(on), jax.tree.leaves(off))
    )


@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_check_flag_returns_the_python_bool(value):
    # Every switch above goes through it: numpy bools come back as the bool they equal.
    got = jr._checks.check_flag("flag", value, "f")
    assert type(got) is bool and got == bool(value)
