"""Where the controller's memory goes (issue 20, soak): an opt-in diagnostic, off unless
`DEEPMIGRATION_MEMWATCH=PATH` is set in `ryu-manager`'s environment.

When on, every `DEEPMIGRATION_MEMWATCH_S` seconds (default 60) a green thread appends one JSON line to PATH:
the process's RSS, glibc's own account of its heap (`mallinfo2`, all arenas: bytes in use, bytes free but
kept, mmapped chunks), the blocks Python's small-object allocator holds (its arenas are mmapped, outside
glibc's account) and the objects the garbage collector tracks. With `DEEPMIGRATION_MEMWATCH_FRAMES=N` (N > 0)
`tracemalloc` also traces the Python heap, N frames deep, from the app's first turn of the event loop (after
the policy is loaded), and each line adds the bytes traced and the 15 source lines whose allocations grew
most since the second line. Tracing slows every allocation several times over.
RSS that grows with the traced bytes is Python objects kept; RSS that grows with glibc's free-but-kept
bytes, the traced bytes flat, is fragmentation of the native heap. Tracing costs CPU and memory (each
allocation carries its trace): read the growth, not the level.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

ENV, EVERY_ENV, FRAMES_ENV = "DEEPMIGRATION_MEMWATCH", "DEEPMIGRATION_MEMWATCH_S", "DEEPMIGRATION_MEMWATCH_FRAMES"
DEFAULT_EVERY_S = 60.0
TOP_LINES = 15
MIB = 1 << 20


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (glibc 2.33+): every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def rss_mib(pid: int | str = "self") -> float:
    """VmRSS of a process, MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def glibc_heap() -> dict | None:
    """glibc's heap over all arenas, MiB: `in_use` (malloc'd, not freed), `free_kept` (freed, not given back
    to the system), `mmapped` (large chunks, given back on free); None without glibc's mallinfo2."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"in_use": round(info.uordblks / MIB, 2), "free_kept": round(info.fordblks / MIB, 2),
            "mmapped": round(info.hblkhd / MIB, 2), "arena": round(info.arena / MIB, 2)}


class MemWatch:
    """Appends the memory lines to `path`; `line()` takes one (called every period of the watch)."""

    def __init__(self, path: Path, frames: int = 0):
        self.path = path
        self.started = time.monotonic()
        self._base: tracemalloc.Snapshot | None = None
        self._lines = 0
        if frames > 0 and not tracemalloc.is_tracing():
            tracemalloc.start(frames)

    def line(self) -> dict:
        self._lines += 1
        record = {
            "t_s": round(time.monotonic() - self.started, 1),
            "rss_mib": round(rss_mib(), 1),
            "glibc_mib": glibc_heap(),
            "python_blocks": sys.getallocatedblocks(),
            "gc_objects": len(gc.get_objects()),
        }
        if tracemalloc.is_tracing():
            record.update(self._traced())
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
        return record

    def _traced(self) -> dict:
        snapshot = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
        if self._lines == 2:
            self._base = snapshot
        growth = snapshot.compare_to(self._base, "lineno")[:TOP_LINES] if self._base is not None else []
        return {"traced_mib": round(tracemalloc.get_traced_memory()[0] / MIB, 2),
                "top_growth": [{"where": str(stat.traceback[0]), "kib": round(stat.size_diff / 1024, 1),
                                "count": stat.count_diff} for stat in growth]}


def start(spawn, sleep) -> bool:
    """Start the watch when the environment asks for it: `spawn(fn)` and `sleep(s)` are the event loop's
    (Ryu's hub); whether it is on."""
    target = os.environ.get(ENV)
    if not target:
        return False
    every, frames = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_S)), int(os.environ.get(FRAMES_ENV, "0"))
    if not every > 0 or frames < 0:
        raise ValueError(f"{EVERY_ENV} must be a positive number of seconds and {FRAMES_ENV} at least 0")

    def run():
        watch = MemWatch(Path(target), frames)
        while True:
            watch.line()
            sleep(every)

    spawn(run)
    return True
