"""How the dataplane's long-running processes (sender, sink, NF instances) stop and leave their logs:
SIGTERM ends them through `finally` clauses, and a log is replaced whole, never seen half-written."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the block, so `finally` clauses (the final logs) run."""

    def leave(_signum, _frame):
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_json_atomically(path: str | os.PathLike, document: dict) -> None:
    """Write via a temporary file and a rename, so a concurrent reader never sees half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=1))
    partial.replace(path)
