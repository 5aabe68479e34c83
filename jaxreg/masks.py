"""Masks: which leaves a regularizer acts on (``jr.masks.kernels``, ``jr.masks.by_path``)."""

from jaxreg._tree import Mask, by_path, everything, kernels

__all__ = ["Mask", "by_path", "everything", "kernels"]
