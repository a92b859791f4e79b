"""The header every versioned checkpoint of the project shares (the policy's, the residual and generative
twins'): loaded weights-only, its format tag and version checked before anything else is read."""
from __future__ import annotations

from pathlib import Path

import torch


def read_versioned(path: Path, fmt: str, version: int, what: str, error: type[Exception]) -> dict:
    """The stored dict at `path`, or `error` naming the problem: not a readable torch file, another format
    (`what` names the expected kind) or another version. A weights-only load runs no pickled code."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as problem:
        raise error(f"{path} is not a readable torch checkpoint: {first_line(problem)}") from problem
    if not isinstance(stored, dict) or stored.get("format") != fmt:
        found = stored.get("format") if isinstance(stored, dict) else type(stored).__name__
        raise error(f"{path} is not a {what} checkpoint (format {found!r}, expected {fmt!r})")
    if stored.get("version") != version:
        raise error(f"{path} has {what} checkpoint format version {stored.get('version')!r}; "
                    f"this code reads version {version}")
    return stored


def first_line(error: Exception) -> str:
    """The first line of an error's message (torch's loading errors run to a page), for a one-line report."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
