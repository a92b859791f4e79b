"""Where a cluster started by hand (`mn --custom mininet_topos/nf_cluster.py`) lives on this machine, so that
`ryu-manager controller_app.app` finds it without flags: `RUN_DIR` holds the cluster description, the NFs'
control sockets, the sink's counts and the processes' logs for as long as the Mininet CLI runs.

One such cluster at a time: the session holds an advisory lock (flock) on the directory, which the kernel
drops when its process dies however it dies, so a directory left by a killed `mn` is recognised as stale
and cleared by the next one. Standard library only: `mn` runs it with the system Python.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RUN_DIR = Path("/run/deepmigration")
CLUSTER_PATH = RUN_DIR / "cluster.json"
"""The cluster description of the by-hand cluster: where the controller looks when it is given none."""


class SessionBusy(RuntimeError):
    """Another by-hand cluster is running on this machine."""


@contextmanager
def run_dir_session(run_dir: Path = RUN_DIR) -> Iterator[Path]:
    """Own `run_dir` for the block: created (or cleared, if a dead session left it) and locked; on exit the
    whole directory is removed. Raises SessionBusy if a live session holds it."""
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    handle = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SessionBusy(f"another NF cluster started by hand is running ({run_dir} is locked); "
                              "exit its Mininet CLI first") from None
        for stale in run_dir.iterdir():  # a session that died without cleaning up
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
        try:
            yield run_dir
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        os.close(handle)
