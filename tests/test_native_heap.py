"""The controller's native heap (issue 20, soak): `native_heap.limit_arenas` keeps glibc to 2 malloc arenas
however many threads allocate (counted by glibc's own `malloc_stats`, in a fresh process), leaves a
MALLOC_ARENA_MAX of the environment to rule, and the opt-in memory watch (`memwatch`) writes one JSON line per
turn with glibc's account of its heap and, when tracing, the growth."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tracemalloc

import pytest

from controller_app import memwatch, native_heap

THREADS_ALLOCATING = """
import ctypes, sys, threading
from controller_app import native_heap
if sys.argv[1] == "limit":
    assert native_heap.limit_arenas()
start, done = threading.Barrier(8), []
def work():
    start.wait()  # all at once: each contends for an arena
    done.append([bytearray(200) for _ in range(20_000)])
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != native_heap.ENV}
    run = subprocess.run([sys.executable, "-c", THREADS_ALLOCATING, mode], capture_output=True, text=True,
                         env=env, timeout=60, check=True)
    return run.stderr.count("Arena ")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas and malloc_stats")
def test_eight_threads_allocating_share_two_arenas_once_limited():
    assert arenas("limit") <= native_heap.ARENAS < arenas("default")


def test_an_arena_limit_in_the_environment_rules(monkeypatch):
    monkeypatch.setenv(native_heap.ENV, "16")
    assert native_heap.limit_arenas() is False


def test_the_watch_writes_heap_lines_and_the_growth_when_tracing(tmp_path):
    path = tmp_path / "memory.jsonl"
    watch = memwatch.MemWatch(path, frames=1)
    try:
        watch.line()
        watch.line()  # the base of the growth
        grown = [str(k) * 50 for k in range(20_000)]
        last = watch.line()
    finally:
        tracemalloc.stop()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3 and lines[-1] == last and grown
    assert {"rss_mib", "glibc_mib", "python_blocks", "gc_objects", "traced_mib"} <= set(last)
    assert last["glibc_mib"]["in_use"] > 0
    assert last["top_growth"][0]["where"].startswith(__file__) and last["top_growth"][0]["kib"] > 1000


def test_the_watch_is_off_unless_asked_and_refuses_a_bad_period(monkeypatch):
    spawned = []
    monkeypatch.delenv(memwatch.ENV, raising=False)
    assert memwatch.start(spawned.append, lambda s: None) is False and not spawned
    monkeypatch.setenv(memwatch.ENV, "/dev/null")
    monkeypatch.setenv(memwatch.EVERY_ENV, "0")
    with pytest.raises(ValueError, match=memwatch.EVERY_ENV):
        memwatch.start(spawned.append, lambda s: None)
    monkeypatch.setenv(memwatch.EVERY_ENV, "5")
    assert memwatch.start(spawned.append, lambda s: None) is True and len(spawned) == 1
