"""Test configuration: silent broadcasting and silent dtype promotion fail loudly (as in equinox).

Where optax itself needs standard promotion (``optax.scale_by_adam``'s bias correction computes
``decay ** count`` with an int32 count), the tests scope it with ``jax.numpy_dtype_promotion``
around that call only, each with a comment.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
