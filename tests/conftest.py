"""Test configuration: silent broadcasting and silent dtype promotion fail loudly (as in equinox).

Where optax itself needs standard promotion (``optax.scale_by_adam``'s bias correction computes
``decay ** count`` with an int32 count), the tests scope it with ``jax.numpy_dtype_promotion``
around that call only, each with a comment.

Chunk sizes are not measured in the suite (``JAXREG_AUTOTUNE=0``, unless the environment says
otherwise): a measured choice depends on the machine's timing, and tests that compare two
programs bit for bit need the same chunking on both sides. ``tests/test_chunking.py`` turns
measurement back on for its own tests, which check it.
"""

import os

import jax

os.environ.setdefault("JAXREG_AUTOTUNE", "0")

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
