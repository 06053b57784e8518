"""Keep freed tensor memory inside the process on Linux/glibc, so big CPU tensors stop page-faulting.

Why: PyTorch's CPU allocator is plain ``malloc``. glibc serves every block above 32 MiB (and, until
its threshold adapts, every block above 128 KiB) with a fresh ``mmap`` and returns it with
``munmap`` on free, so each new ``[T, B, C, H, W]`` activation — the LIF's membrane and spikes, the
conv outputs, their gradients — costs one page fault per 4 KiB on first touch, *every step*. On the
2-core machine of benchmarks/RESULTS.md a fresh 100 MB ``x * 0.5`` takes 65 ms, the same multiply
into reused memory 8 ms. Multi-step SNNs allocate T times the activations of their ANN twin, so this
hits them hardest.

:func:`tune_malloc` sets ``M_MMAP_MAX = 0`` (serve large blocks from the heap, whose freed memory is
reused) and ``M_TRIM_THRESHOLD = 1 GiB`` (do not hand the heap back to the OS after each step). The
arithmetic is untouched — results are bit-identical — but the process keeps its peak memory until it
exits, which is what a training or evaluation process wants and a long-lived host application may
not. Hence: the ``spikeprune`` command calls it (``SPIKEPRUNE_MALLOC=system`` turns it off); the
library never does so on import. Elsewhere (macOS, musl, Windows) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["tune_malloc"]

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30

_tuned = False


def tune_malloc() -> bool:
    """Make glibc reuse freed memory for large blocks (see the module docstring). True if applied.

    Idempotent. Honours ``SPIKEPRUNE_MALLOC=system`` (leave the allocator as it is).
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("SPIKEPRUNE_MALLOC", "").lower() == "system" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success
    _tuned = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
    return _tuned
