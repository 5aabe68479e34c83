"""Test configuration: silent broadcasting between ranks fails loudly (as in equinox).

Strict dtype promotion stays off: optax's own Adam (``decay ** count`` with an int32 count)
does not pass it.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
