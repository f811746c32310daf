"""Keep freed memory in the process, so large CPU tensors are not page-faulted in afresh every step.

glibc's malloc serves each allocation above its mmap threshold (adaptive, at most 32 MiB by default)
with a new ``mmap`` and unmaps it on free, so every reuse page-faults the whole block in again,
zero-filled by the kernel. A CPU training step allocates and frees many tensors above that size
(ResNet-50's first-stage maps at batch 32, ``[32, 256, 56, 56]`` float32, are 103 MB; PVT v2's
first-stage MLP hidden at batch 8 is 51 MB). Measured when this was written (2 cores, fp32 train
step, median step time of processes run alternately with and without it, because a process-wide
setting cannot be toggled fairly inside one process: setting glibc's threshold back also turns off
its adaptive threshold): ResNet-50 at batch 32 1.7x faster (2 pairs: 1.66x, 1.81x), pvt_v2_b2 at
batch 8 1.22x (median of 5 pairs, 1.07-1.31x).

:func:`keep_freed_memory` raises glibc's mmap and trim thresholds, so freed blocks stay in the heap
and are reused. The cost: the process's resident memory stays near its peak instead of shrinking
between steps. It is process-wide (every model in the process gains, a timm twin's too), so it is not
part of :func:`zoo.accel.apply`; ``train.py`` and ``eval.py`` call it (``keep_freed_memory: true``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 30  # bytes: blocks up to 1 GiB come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # bytes of free heap top kept before it is given back


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (module docstring) for this process.

    Returns:
        True when set; False where the C library is not glibc (macOS, musl, Windows), which is left as it is.
    """
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD))
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD))
    return bool(ok)
