"""Orbax I/O of :func:`jaxreg.fit`'s resumable checkpoints (private).

A checkpoint holds three items: ``meta`` (JSON: the schedule the run was started with, the
rng's key data included, so another call cannot silently continue it), ``carry`` (the training
state and the early-stopping state, flattened to numbered leaves) and ``history`` (the host-side
records so far, plus the progress counters).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def open_manager(directory: str | os.PathLike) -> Any:
    """An orbax ``CheckpointManager`` on ``directory`` keeping the last two checkpoints."""
    ocp = _ocp()
    return ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)), options=ocp.CheckpointManagerOptions(max_to_keep=2)
    )


def _numbered(tree: PyTree) -> dict[str, Any]:
    # a zero-size leaf holds no numbers and orbax refuses it ("Cannot save arrays with zero size"):
    # restore takes it from the carry given
    return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(tree)) if np.size(leaf) != 0}


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, list) or len(value) <= 8 else f"{value[:8]!r}..."


@contextlib.contextmanager
def _readable(directory: Any, step: int) -> Iterator[None]:
    """orbax's errors on a damaged or foreign checkpoint (a ``KeyError`` for a missing item, a
    JSON or tensorstore error for truncated data, a tree mismatch) as one ``ValueError`` naming
    the directory and the step."""
    try:
        yield
    except Exception as e:  # any orbax failure: re-raised with the checkpoint named
        path = os.path.join(os.fspath(directory), str(step))
        raise ValueError(
            f"fit: checkpoint_dir's latest checkpoint (step {step}) cannot be restored into this run "
            f"({type(e).__name__}: {str(e)[:300]}); it is damaged or holds another state structure. Remove "
            f"{path!r} to resume from an earlier checkpoint, or pass another checkpoint_dir; got checkpoint_dir "
            f"= {os.fspath(directory)!r}."
        ) from e


def _other_state(saved: list, given: list, directory: Any) -> str:
    """Names the first state leaf whose path, shape or dtype differs (the whole list ran to 16k characters)."""
    for a, b in zip(saved, given):
        if a != b:
            where = f"state leaf {b[0] or '<root>'}"
            there, here = f"{a[2]} {tuple(a[1])}", f"{b[2]} {tuple(b[1])}"
            if a[0] != b[0]:
                where, there, here = "the state", f"leaf {a[0]!r}", f"leaf {b[0]!r}"
            break
    else:
        where, there, here = "the state", f"{len(saved)} leaves", f"{len(given)} leaves"
    return (
        f"fit: checkpoint_dir holds a run of another state: {where} is {there} there, {here} in this call "
        f"(a resume would cast the saved numbers); pass the state of that run, or another checkpoint_dir; "
        f"got checkpoint_dir = {os.fspath(directory)!r}."
    )


def _uncommitted(x: Any) -> Any:
    """``x`` as an array jit may place anywhere, as the run's own leaf was (orbax commits what it
    restores to one device)."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(np.asarray(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return jnp.asarray(np.asarray(x))


def restore(manager: Any, directory: Any, carry: PyTree, records: dict[str, np.ndarray], meta: dict[str, Any]):
    """The latest checkpoint as ``(progress, carry, records)``, or ``None`` if there is none.

    Raises:
      ValueError: if the checkpoint's ``meta`` differs from ``meta`` (another schedule, rng, early
        stopper or member budgets).
    """
    latest = manager.latest_step()
    if latest is None:
        return None
    ocp = _ocp()
    with _readable(directory, latest):
        saved = manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    for name, value in meta.items():
        # A key the checkpoint lacks was not recorded by the version that wrote it: not compared.
        if name == "state" and name in saved and saved[name] != value:
            raise ValueError(_other_state(saved[name], value, directory))
        if name in saved and saved[name] != value:
            raise ValueError(
                f"fit: checkpoint_dir holds a run of another schedule: {name} = {_describe(saved.get(name))} "
                f"there, {name} = {_describe(value)} in this call; pass the arguments of that run to resume it, "
                f"or another checkpoint_dir; got checkpoint_dir = {os.fspath(directory)!r}."
            )
    leaves, treedef = jax.tree.flatten(carry)
    target = {"carry": _numbered(carry), "history": {**records}}
    with _readable(directory, latest):
        item = manager.restore(
            latest,
            args=ocp.args.Composite(
                carry=ocp.args.StandardRestore(target["carry"]), history=ocp.args.StandardRestore(target["history"])
            ),
        )
    saved = item["carry"]

    def placed(i: int, leaf: Any) -> Any:
        if str(i) not in saved:
            return leaf
        # where the run placed it: a sharded state's early-stopping leaves came back on one device
        # and the next chunk refused the mix ("incompatible devices for jitted computation")
        if isinstance(leaf, jax.Array) and getattr(leaf, "committed", False):
            return jax.device_put(saved[str(i)], leaf.sharding)
        return _uncommitted(saved[str(i)])

    carry = jax.tree.unflatten(treedef, [placed(i, leaf) for i, leaf in enumerate(leaves)])
    records = {name: np.array(item["history"][name]) for name in records}
    return records.pop("progress"), carry, records


def save(manager: Any, index: int, carry: PyTree, records: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Saves checkpoint ``index`` (asynchronously; ``manager.wait_until_finished`` joins it)."""
    ocp = _ocp()
    manager.save(
        index,
        args=ocp.args.Composite(
            meta=ocp.args.JsonSave(meta),
            carry=ocp.args.StandardSave(_numbered(carry)),
            history=ocp.args.StandardSave({name: np.array(value) for name, value in records.items()}),
        ),
    )


def close(manager: Any) -> None:
    manager.wait_until_finished()
    manager.close()
