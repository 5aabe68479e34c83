"""Masks: which leaves a regularizer acts on (``jr.masks.kernels``, ``jr.masks.by_path``)."""

from jaxreg._tree import Mask, as_mask, by_path, everything, kernels, key_path_str, resolve_mask

__all__ = ["Mask", "as_mask", "by_path", "everything", "key_path_str", "kernels", "resolve_mask"]
