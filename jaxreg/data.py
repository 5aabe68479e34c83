"""Bundled data sets and splits: digits, breast cancer, wine, diabetes, or a user's ``.npz``.

Every loader returns a :class:`Split`: stratified train / validation / test parts (for
classification) with the features standardized by statistics of the training part only, so
nothing about the validation or test examples leaks into training. Nothing is downloaded:
the data sets are the ones scikit-learn ships.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from jaxreg import _checks

__all__ = ["DATASETS", "DataError", "Split", "load", "load_npz", "split"]

DATASETS = ("digits", "breast_cancer", "wine", "diabetes")
"""Names accepted by :func:`load`; ``diabetes`` is a regression task, the others classification."""


class DataError(ValueError):
    """A data file or data set that cannot be used (missing, malformed, wrong shapes or labels)."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Train / validation / test arrays (float32 features, int32 labels or float32 targets).

    Attributes:
      x_train, y_train, x_val, y_val, x_test, y_test: the parts.
      task: ``"classification"`` or ``"regression"``.
      num_classes: number of classes (0 for regression).
      mean, std: the standardization, fitted on ``x_train`` before it was applied
        (``std`` has 1 where a feature is constant on the training part).
      name: where the data came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    name: str

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _sklearn(submodule: str) -> Any:
    """``sklearn.<submodule>``, or an ``ImportError`` that names the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(f"sklearn.{submodule}")
    except ModuleNotFoundError as err:
        raise ImportError(
            "jaxreg.data needs scikit-learn (its bundled data sets and stratified splits): pip install 'jaxreg[cli]'"
        ) from err


_SEED_MAX = 2**32 - 2  # the second shuffle is seeded with seed + 1; numpy takes seeds below 2**32


def _check_seed(seed: Any, where: str) -> int:
    seed = _checks.check_int_at_least("seed", seed, 0, where, maximum=None)
    if seed > _SEED_MAX:
        raise ValueError(f"{where}: seed must be an int in [0, {_SEED_MAX}], got seed = {seed!r}.")
    return seed


def _count(size: float | int, n: int, what: str) -> int:
    if isinstance(size, (bool, np.bool_)):
        raise ValueError(f"split: {what} must be an int count or a fraction in (0, 1), got {what} = {size!r}.")
    if isinstance(size, (int, np.integer)):
        count = int(size)
    elif isinstance(size, (float, np.floating)) and 0.0 < size < 1.0:
        count = round(size * n)
    else:
        raise ValueError(f"split: {what} must be an int count or a fraction in (0, 1), got {what} = {size!r}.")
    if count < 1:
        raise ValueError(f"split: {what} must give at least one example, got {what} = {size!r} of {n} examples.")
    return count


def split(
    x: Any,
    y: Any,
    *,
    seed: int = 0,
    train_size: float | int = 0.6,
    val_size: float | int = 0.2,
    task: str = "classification",
    standardize: bool = True,
    name: str = "arrays",
) -> Split:
    """Splits arrays into train / validation / test, stratified by class for classification.

    The test part is what remains after ``train_size + val_size`` examples. Features are
    standardized with the mean and standard deviation of the training part.

    Args:
      x: features, shape ``(n, d)``.
      y: integer labels ``(n,)`` (classification) or float targets ``(n,)`` (regression).
      seed: the seed of the shuffles (``sklearn.model_selection.train_test_split``).
      train_size, val_size: counts (int) or fractions of ``n`` (float in (0, 1)).
      task: ``"classification"`` or ``"regression"``.
      standardize: whether to standardize the features with the training statistics.
      name: a label kept in :attr:`Split.name`.

    Returns:
      A :class:`Split`.

    Raises:
      DataError: on wrong shapes, non-finite values, labels that are not integers, or a split
        that leaves a part empty or a class without an example in a part (a rare class's
        stratified share of a small part rounds to none).
      ValueError: on a bad ``seed``, ``train_size``, ``val_size`` or ``task``.

    Examples:
      >>> import numpy as np
      >>> x = np.arange(40.0).reshape(20, 2); y = np.repeat([0, 1], 10)
      >>> s = split(x, y, train_size=10, val_size=4)
      >>> s.sizes(), np.bincount(s.y_train).tolist()
      ({'train': 10, 'val': 4, 'test': 6}, [5, 5])
    """
    train_test_split = _sklearn("model_selection").train_test_split

    seed = _check_seed(seed, "split")
    if task not in ("classification", "regression"):
        raise ValueError(f"split: task must be 'classification' or 'regression', got task = {task!r}.")
    _checks.check_flag("standardize", standardize, "split")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise DataError(f"x must be a 2-d array (examples, features), got shape {x.shape}.")
    if y.ndim != 1:
        raise DataError(f"y must be a 1-d array of labels, got shape {y.shape}.")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}.")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"x must hold real numbers, got dtype {x.dtype}.")
    if not np.all(np.isfinite(x)):
        raise DataError("x holds NaN or infinite values.")
    n = x.shape[0]
    n_train, n_val = _count(train_size, n, "train_size"), _count(val_size, n, "val_size")
    if n_train + n_val >= n:
        raise DataError(f"train_size + val_size = {n_train + n_val} leaves no test examples out of {n}.")

    stratify = None
    num_classes = 0
    if task == "classification":
        if np.issubdtype(y.dtype, np.floating):
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise DataError(f"labels y must be integers for classification, got values like {y[:3].tolist()}.")
        elif not np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
            raise DataError(f"labels y must be integers for classification, got dtype {y.dtype}.")
        # checked in y's own dtype: a uint64 label above 2**63 read as negative once cast
        if y.min() < 0:
            raise DataError(f"labels y must be >= 0, got a label {y.min().item()}.")
        if y.max() >= n:  # bincount would allocate a count per class up to it (7 TiB for 10**12)
            raise DataError(
                f"labels y must be 0..K-1 with every class present, got a label {y.max().item()} among {n} examples."
            )
        y = y.astype(np.int64)
        num_classes = int(y.max()) + 1
        counts = np.bincount(y, minlength=num_classes)
        if np.any(counts == 0):
            missing = np.flatnonzero(counts == 0).tolist()
            raise DataError(f"labels y must be 0..K-1 with every class present, classes {missing[:5]} are missing.")
        if num_classes < 2:
            raise DataError("labels y must hold at least 2 classes.")
        if np.any(counts < 3):
            raise DataError(
                f"every class needs at least 3 examples for a stratified split, got counts {counts.tolist()}."
            )
        if n_train < num_classes or n_val < num_classes or n - n_train - n_val < num_classes:
            raise DataError(
                f"each part needs at least one example per class: {num_classes} classes, "
                f"train {n_train}, val {n_val}, test {n - n_train - n_val}."
            )
        stratify = y
    else:
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
            raise DataError("regression targets y must be finite numbers.")

    idx = np.arange(n)
    idx_train, idx_rest = train_test_split(idx, train_size=n_train, random_state=seed, stratify=stratify)
    rest_strat = None if stratify is None else stratify[idx_rest]
    if rest_strat is not None and np.any(np.bincount(rest_strat, minlength=num_classes) < 2):
        # a class with one example left cannot give both validation and test one (sklearn's
        # stratified split would raise its own error)
        left = np.bincount(rest_strat, minlength=num_classes)
        raise DataError(
            f"after the training part, validation and test need 2 examples of every class, got counts "
            f"{left.tolist()} left for them (classes of {counts.tolist()}); add examples or lower train_size."
        )
    idx_val, idx_test = train_test_split(idx_rest, train_size=n_val, random_state=seed + 1, stratify=rest_strat)
    if task == "classification":
        # A stratified split rounds each class's share: a rare class can get none in a small part.
        for part_name, i in (("train", idx_train), ("val", idx_val), ("test", idx_test)):
            per_class = np.bincount(y[i], minlength=num_classes)
            if np.any(per_class == 0):
                raise DataError(
                    f"each part needs at least one example per class: the {part_name} part of {len(i)} examples "
                    f"has none of classes {np.flatnonzero(per_class == 0).tolist()[:5]} (classes of "
                    f"{counts.tolist()}); add examples of them or enlarge the {part_name} part."
                )

    x = x.astype(np.float64)
    if standardize:
        mean = x[idx_train].mean(axis=0)
        std = x[idx_train].std(axis=0)
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])

    def part(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = ((x[i] - mean[None, :]) / std[None, :]).astype(np.float32)
        ys = y[i].astype(np.int32) if task == "classification" else y[i].astype(np.float32)
        return xs, ys

    (xt, yt), (xv, yv), (xs, ys) = part(idx_train), part(idx_val), part(idx_test)
    return Split(xt, yt, xv, yv, xs, ys, task, num_classes, mean.astype(np.float32), std.astype(np.float32), name)


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    datasets = _sklearn("datasets")

    loaders = {
        "digits": (datasets.load_digits, "classification"),
        "breast_cancer": (datasets.load_breast_cancer, "classification"),
        "wine": (datasets.load_wine, "classification"),
        "diabetes": (datasets.load_diabetes, "regression"),
    }
    if name not in loaders:
        raise ValueError(f"load: unknown data set, got name = {name!r}; choose one of {', '.join(DATASETS)}.")
    fn, task = loaders[name]
    bunch = fn()
    return np.asarray(bunch.data), np.asarray(bunch.target), task


def load(
    name: str = "digits",
    *,
    seed: int = 0,
    train_size: float | int = 0.6,
    val_size: float | int = 0.2,
    standardize: bool = True,
) -> Split:
    """Loads a data set that scikit-learn bundles and splits it (see :func:`split`).

    Args:
      name: one of ``"digits"``, ``"breast_cancer"``, ``"wine"`` (classification) and
        ``"diabetes"`` (regression).
      seed, train_size, val_size, standardize: as in :func:`split`.

    Returns:
      A :class:`Split`.

    Raises:
      ValueError: for an unknown ``name`` or bad sizes.

    Examples:
      >>> s = load("digits", train_size=300, val_size=500)
      >>> s.sizes(), s.num_classes, s.num_features
      ({'train': 300, 'val': 500, 'test': 997}, 10, 64)
    """
    _check_seed(seed, "load")
    x, y, task = _raw(name)
    return split(
        x, y, seed=seed, train_size=train_size, val_size=val_size, task=task, standardize=standardize, name=name
    )


def load_npz(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    train_size: float | int = 0.6,
    val_size: float | int = 0.2,
    task: str = "classification",
    standardize: bool = True,
) -> Split:
    """Loads a user's ``.npz`` holding arrays ``x`` ``(n, d)`` and ``y`` ``(n,)`` and splits it.

    Args:
      path: the ``.npz`` file.
      seed, train_size, val_size, task, standardize: as in :func:`split`.

    Returns:
      A :class:`Split`.

    Raises:
      DataError: if the file is missing or not an ``.npz``, lacks ``x`` or ``y``, or the arrays
        have wrong shapes, non-finite values or non-integer labels. The message is one line.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise DataError(f"data path is a directory, not an .npz file: {path}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):  # numpy read any other file as a pickle
        raise DataError(f"{path} is not an .npz archive (a zip of arrays x and y, as np.savez writes)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError (pickled objects), EOFError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read {path} as an .npz archive ({type(e).__name__}: {msg})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a .npy array, not an .npz archive with arrays x and y")
    try:
        with archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"{path} lacks array(s) {', '.join(missing)}; it holds {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except Exception as e:  # a member that is pickled or corrupt
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read {path} as an .npz archive ({type(e).__name__}: {msg})") from e
    try:
        return split(
            x,
            y,
            seed=seed,
            train_size=train_size,
            val_size=val_size,
            task=task,
            standardize=standardize,
            name=os.path.basename(path),
        )
    except DataError as e:
        raise DataError(f"{path}: {e}") from e
