"""The C allocator's policy while the suite times cells: glibc's, made steady (mallopt), or left as it is.

Why: torch's CPU tensors come from the C library's malloc. glibc serves a block above its mmap threshold
with a fresh mmap and unmaps it when freed, and trims the heap's free top back to the kernel; both
thresholds move with what the process freed before (mallopt(3): the dynamic mmap threshold). So a step
may fault its pages in anew every time (a B64 H256 oneDNN training step here: 5,300 page faults, a
36 MiB workspace mapped and unmapped each step, 41 ms; 32 ms without them), and whether it does depends
on the cells that ran before it in the process. Between fresh processes that timed the same cell in
another order, its time moved 20-40% (cudnn B64 H256: 5.5-5.7 or 6.7-7.4 times the probe), which five
processes did not average away within 5%. `steady` keeps freed memory for reuse instead, as CUDA's
caching allocator does on a GPU: no mmap, no trim, the heap grown 64 MiB at a time. The steps then touch
pages they have touched before, and a cell's time no longer depends on its neighbours.
"""

from __future__ import annotations

import ctypes
import platform
import sys

#: the policies `--malloc` takes; the first is the default
POLICIES = ("steady", "default")

# mallopt(3)'s parameters
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
#: steady: never serve a block with mmap (M_MMAP_MAX 0), never give the heap's top back (M_TRIM_THRESHOLD -1, which
#: disables trimming), grow the heap 64 MiB at a time (M_TOP_PAD)
STEADY = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: -1, M_TOP_PAD: 64 << 20}
STEADY_TEXT = "glibc steady: no mmap, no trim, top pad 64 MiB (mallopt)"


def steady_unavailable() -> str | None:
    """Why `steady` cannot be applied here (it needs glibc), or None."""
    libc = platform.libc_ver()[0]
    if sys.platform.startswith("linux") and libc == "glibc":
        return None
    return f"steady needs glibc; this is {sys.platform} {libc or 'without glibc'}"


def set_malloc(policy: str) -> str:
    """Apply `policy` to this process's C allocator; returns what environment.json records. `default` changes
    nothing. `steady` needs glibc (the suite's Linux machines); elsewhere it changes nothing and says so."""
    if policy == "default":
        return "default"
    if policy != "steady":
        raise ValueError(f"unknown malloc policy {policy!r}; one of {', '.join(POLICIES)}")
    unavailable = steady_unavailable()
    if unavailable:
        return f"default ({unavailable})"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    refused = [param for param, value in STEADY.items() if mallopt(param, value) != 1]
    if refused:
        raise RuntimeError(f"glibc's mallopt refused parameters {refused}")
    return STEADY_TEXT
