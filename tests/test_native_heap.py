"""The controller's native heap (issue 20, soak): `native_heap.trim` gives a fragmented heap's free pages back
(RSS falls while the live objects stay), it can be turned off for a measurement, and the opt-in memory watch
(`memwatch`) writes one JSON line per turn with glibc's account of its heap and, when tracing, the growth."""
from __future__ import annotations

import importlib
import json
import tracemalloc

import pytest

from controller_app import memwatch, native_heap


def test_trim_gives_back_the_free_pages_between_live_chunks():
    if native_heap._LIBC is None:
        pytest.skip("not glibc")
    chunks = [bytearray(12_000) for _ in range(8_000)]  # ~92 MiB from the main heap (below the mmap threshold)
    kept = chunks[::4]
    del chunks  # three chunks of four freed: holes of whole pages between the live ones
    before = memwatch.rss_mib()
    assert native_heap.trim()
    assert memwatch.rss_mib() < before - 20
    assert all(len(chunk) == 12_000 for chunk in kept)


def test_trim_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(native_heap.ENV, "0")
    try:
        assert importlib.reload(native_heap).trim() is False
    finally:
        monkeypatch.delenv(native_heap.ENV)
        importlib.reload(native_heap)


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
