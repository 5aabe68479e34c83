"""What CPU this process runs on: model name, vector extensions, usable cores.

Every CPU device's jax ``device_kind`` is "cpu", so a choice measured on one CPU (the chunk
tuner's, kept on disk) is keyed by these; the benchmarks record them with their figures.
"""

from __future__ import annotations

import functools
import os
import platform

_FLAGS = ("avx", "avx2", "avx512f", "fma", "amx_tile", "neon", "asimd", "sve")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.lower()
                if key.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif key.startswith(("flags", "features")) and not flags:
                    flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector and matrix extensions among ``avx, avx2, avx512f, fma, amx_tile, neon, asimd, sve``."""
    return [f for f in _FLAGS if f in _cpuinfo()[1]]


def usable_cpus() -> int:
    """The cores this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
