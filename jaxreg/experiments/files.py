"""The files of a run: the data split it reads, and the results, history and params it writes.

Params are saved with :mod:`flax.serialization` (msgpack: ``params/<regime>.msgpack``, the
nested ``{"dense0": {"kernel", "bias"}, ...}`` dict, stacked on a leading member axis for an
ensemble); the history and the data split as ``.npz``; the results as JSON and CSV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any

import flax.serialization
import jax
import numpy as np

from jaxreg import data as jdata

__all__ = ["load_data", "load_params", "save_params", "write_csv", "write_json"]


def load_data(
    dataset: str = "digits",
    *,
    path: str | None = None,
    seed: int = 0,
    train_size: float | int | None = None,
    val_size: float | int | None = None,
) -> jdata.Split:
    """The run's split: digits 200 train / 500 validation / rest test, else 30% / 30% / 40%.

    Raises:
      jaxreg.data.DataError: for an unusable ``--data`` file or a regression data set.
    """
    small = dataset == "digits" and path is None
    train_size = train_size if train_size is not None else (200 if small else 0.3)
    val_size = val_size if val_size is not None else (500 if small else 0.3)
    if path is not None:
        return jdata.load_npz(path, seed=seed, train_size=train_size, val_size=val_size)
    split = jdata.load(dataset, seed=seed, train_size=train_size, val_size=val_size)
    if split.task != "classification":
        raise jdata.DataError(f"the experiments are for classification; {dataset!r} is a regression data set")
    return split


def save_params(path: str, params: Any) -> None:
    """Saves params (a pytree of arrays, possibly stacked) as msgpack with :mod:`flax.serialization`."""
    with open(path, "wb") as f:
        f.write(flax.serialization.to_bytes(jax.device_get(params)))


def load_params(path: str) -> dict[str, Any]:
    """Inverse of :func:`save_params`: the nested dict of numpy arrays."""
    with open(path, "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON (numpy scalars and arrays as numbers and lists)."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)


def write_csv(path: str, rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
    """Writes one CSV line per row with the columns ``keys`` (``None`` as an empty cell)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(keys))
        for r in rows:
            w.writerow(["" if r.get(k) is None else r[k] for k in keys])
