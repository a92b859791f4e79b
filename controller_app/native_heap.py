"""Give the controller's freed native memory back to the system (issue 20, soak; docs/testbed.md,
"Controller memory").

Measured in a live soak (`controller_app.memwatch`), the controller's RSS grew with the bytes glibc's heap
held *free*, not with the bytes in use: the period's work (the policy's tensors and graphs, the state's
arrays, the REST answers) frees chunks of every size between live ones, and glibc gives memory back only
from the top of a heap, so the free pages in the middle stay resident. `malloc_trim(0)` hands every whole
free page of every arena back (madvise); the app calls `trim` once per period. Elsewhere than glibc (no
`malloc_trim`) it does nothing, and `DEEPMIGRATION_MALLOC_TRIM=0` in the controller's environment turns it
off (to measure without it).
"""
from __future__ import annotations

import ctypes
import os

ENV = "DEEPMIGRATION_MALLOC_TRIM"


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc() if os.environ.get(ENV, "1") != "0" else None


def trim() -> bool:
    """Return the heap's free pages to the system; whether any were (False without glibc, or turned off)."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False
