"""Few malloc arenas for the controller process (issue 20, soak; docs/testbed.md, "Controller memory").

Measured in live soaks (`controller_app.memwatch`), the controller's RSS grew with the bytes glibc's heap
held free, not only with the bytes in use. glibc gives each OS thread that allocates an arena of its own, up
to 8 per core: the policy runs in eventlet's pool of 20 threads (`tpool`), each call on whichever thread is
free, so its freed tensors and graphs end up spread over up to 16 arenas that each keep their free chunks.
`malloc_trim` after every period gave nothing back (the free memory lies in pieces smaller than a page);
two arenas (what `MALLOC_ARENA_MAX=2` sets) did: the free bytes stayed flat and the RSS levelled off.
`limit_arenas` sets that when the app module loads, before the controller starts any thread; a
`MALLOC_ARENA_MAX` in the environment is left to rule (e.g. `MALLOC_ARENA_MAX=16` measures without the limit).
Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import os

ENV = "MALLOC_ARENA_MAX"
ARENAS = 2
M_ARENA_MAX = -8
"""mallopt's parameter number for the arena limit (glibc's malloc.h)."""


def limit_arenas(arenas: int = ARENAS) -> bool:
    """At most `arenas` malloc arenas from now on, unless MALLOC_ARENA_MAX says otherwise; whether it was set."""
    if os.environ.get(ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt(M_ARENA_MAX, arenas)) if mallopt is not None else False
