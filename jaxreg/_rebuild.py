"""Whether a transformation is being rebuilt by :func:`jaxreg.sweepable` for one update.

jaxreg's transformations that keep a hyperparameter in their state (``ema``'s decay, ``swa``'s
and ``swag``'s start and every, ``add_gradient_noise``'s eta and gamma) read it from the state, so
that one optimizer updates states built under ``vmap`` over values. Inside a sweepable update the
transformation was just rebuilt from this step's values (a schedule's, a changed one, however the
factory computes it from its arguments), so there the value it was built with wins, and is
written into the state it returns.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_REBUILT = contextvars.ContextVar("jaxreg_rebuilt", default=False)


@contextlib.contextmanager
def rebuilding() -> Iterator[None]:
    """Marks the updates run inside as those of a just-rebuilt transformation."""
    token = _REBUILT.set(True)
    try:
        yield
    finally:
        _REBUILT.reset(token)


def rebuilt() -> bool:
    """True inside :func:`rebuilding`: the closure's hyperparameters are this step's."""
    return _REBUILT.get()
