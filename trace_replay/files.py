"""Writing a command's output file so that nothing is lost: checked before the work, replaced whole after it.

`check_output` refuses, before any work, a destination that cannot end up as a regular file (a directory, a
device such as /dev/full, a folder that does not take new files such as /proc). `atomic_write` writes to a
temporary file in the target's directory and renames it over the target only once it is complete, so an
error or Ctrl-C leaves the previous file as it was and no partial file behind. `rescue_text` keeps results
that could not be written where they were asked for. Standard library only: every command imports it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PART_SUFFIX = ".part"
"""The temporary file of `atomic_write` is `.NAME.XXXXXXXX.part` next to NAME."""


class OutputError(ValueError):
    """An output path that cannot be written as a regular file; the message names the path and the reason."""


def check_output(path: str | os.PathLike, *, make_parents: bool = False) -> Path:
    """`path` if a regular file can be written there (created, or an existing one replaced), else OutputError.

    With `make_parents`, missing folders are allowed if the nearest existing one takes new entries
    (`atomic_write(make_parents=True)` creates them); nothing is created here.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise OutputError(f"{path} is a directory, not a file")
    if target.exists() and not target.is_file():
        raise OutputError(f"{path} is not a regular file (a device, pipe or socket); write to a file instead")
    folder = target.parent
    while make_parents and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"directory {path.parent} does not exist")
    try:
        probe, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=PART_SUFFIX)
    except OSError as error:
        raise OutputError(f"cannot write in {folder}: {error.strerror or error}") from None
    os.close(probe)
    os.unlink(name)
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, make_parents: bool = False) -> Iterator[IO]:
    """A file object ("wb" or "w") whose content replaces `path` when the block completes; on any exception
    (KeyboardInterrupt included) the temporary file is removed and `path` is left untouched.

    A symbolic link is followed (the file it names is replaced); the new file gets the old one's
    permissions, or the usual ones (0666 less the umask) for a new file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write opens files for writing only ('w' or 'wb'), not {mode!r}")
    check_output(path, make_parents=make_parents)
    target = Path(os.path.realpath(path))
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    permissions = target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask()
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PART_SUFFIX)
    try:
        os.fchmod(descriptor, permissions)
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_text(path: str | os.PathLike, text: str, *, make_parents: bool = False) -> None:
    """`atomic_write` of one string."""
    with atomic_write(path, "w", make_parents=make_parents) as handle:
        handle.write(text)


def rescue_path(command: str, suffix: str) -> Path:
    """A new empty file in the temporary directory, for results a command computed but could not write where
    it was asked to: they are kept there instead of being lost."""
    descriptor, name = tempfile.mkstemp(prefix=f"{command}-", suffix=suffix)
    os.close(descriptor)
    return Path(name)


def rescue_text(text: str, command: str, suffix: str) -> Path:
    """`text` written to a `rescue_path`; that path."""
    path = rescue_path(command, suffix)
    path.write_text(text)
    return path


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the block, as Ctrl-C does, so `atomic_write` cleans up after
    both."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
