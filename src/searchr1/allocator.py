"""glibc malloc thresholds for a training process (`tune_malloc`, called by `searchr1`'s CLI).

Why: by default glibc serves every allocation above a dynamic threshold (128 KiB, rising to at
most 32 MiB) with a fresh mmap, and returns freed heap tops above 128 KiB to the kernel. A CPU
training step allocates and frees tensors of tens to hundreds of MiB (activations, [B, T, V]
logits, bf16 weight casts) hundreds of times, so every step maps fresh pages and the kernel zeroes
each one on first touch: the demo of 2026-12-07 took 65 million minor page faults and 178 s of
system time in a 1,236 s run. With both thresholds at 1 GiB the freed memory stays in the heap and
is reused; one micro-batch of the demo's update ran 1.2x faster with 10x fewer faults
(`benchmarks/update_pass.py`). Numerics are unchanged: only where the bytes come from.

The price is resident memory that is not given back between steps (up to the step's peak), which a
long-lived trainer reaches anyway. Off with `SEARCHR1_MALLOC_TUNING=0`, and a no-op where the C
library is not glibc (macOS, musl) or the thresholds are already set by the user
(`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # 1 GiB: mallopt takes a C int, so at most 2 GiB - 1
SWITCH = "SEARCHR1_MALLOC_TUNING"  # 0 / false / no / off: leave glibc as it is
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: dict[str, int] | None = None


def tuning_wanted(environ=os.environ) -> bool:
    """Whether to set the thresholds: not disabled, and not already set by the user."""
    if environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return not any(environ.get(k) for k in USER_SETTINGS)


def tune_malloc(threshold: int = THRESHOLD, environ=os.environ) -> dict[str, int]:
    """Set glibc's mmap and trim thresholds to `threshold` bytes for the rest of this process (and
    nothing else). Returns what was set ({} when skipped or not glibc). Idempotent."""
    global _applied
    if not 0 < threshold < 2 ** 31:
        raise ValueError(f"threshold must be in (0, 2**31), got {threshold}")
    if _applied is not None:
        return _applied
    _applied = {}
    if not tuning_wanted(environ) or platform.libc_ver()[0] != "glibc":
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Both or neither: setting either one stops glibc's dynamic threshold, and the trim threshold
    # alone leaves every allocation over 128 KiB on mmap (1.6x slower than the default, same test).
    # mallopt returns 1 on success.
    for name, param in (("mmap_threshold", M_MMAP_THRESHOLD), ("trim_threshold", M_TRIM_THRESHOLD)):
        if mallopt(param, threshold) == 1:
            _applied[name] = threshold
    return _applied
