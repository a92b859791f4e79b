"""Checkpoints of the GN policy: weights, the network config and the training progress, versioned.

A checkpoint is a plain dict of tensors, strings and numbers, so it loads with
`torch.load(weights_only=True)` (no pickled code runs). Loading checks the format tag, the format
version and that the stored config rebuilds a network the weights fit; each failure raises a
`CheckpointError` that says which of them went wrong.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from gnn_policy.gn import GNPolicyNet, NetConfig

FORMAT = "deepmigration-gn"
VERSION = 2
"""2: simple RNN cells and 18 migration levels (version 1 had GRU cells and 10 levels)."""
DEFAULT_CHECKPOINT = Path(__file__).parent / "data" / "deepmigration.pt"
"""The trained checkpoint shipped with the package (`DeepMigration.load(None)`)."""


class CheckpointError(ValueError):
    """A file that is not a usable DeepMigration checkpoint; the message names the problem."""


def save(path: str | os.PathLike, net: GNPolicyNet, training: dict | None = None) -> None:
    """Write the weights, the config and `training` (iteration, seed, optimizer state, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "config": net.config.to_dict(),
                "state_dict": net.state_dict(), "training": training or {}}, path)


def load(path: str | os.PathLike | None = None) -> tuple[GNPolicyNet, dict]:
    """The network stored at `path` (the shipped default when None) and its training record."""
    path = Path(DEFAULT_CHECKPOINT if path is None else path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}" + (
            "; train one with `dm-train --out` and pass it as the checkpoint" if path == DEFAULT_CHECKPOINT else ""))
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {error}") from error
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        found = stored.get("format") if isinstance(stored, dict) else type(stored).__name__
        raise CheckpointError(f"{path} is not a DeepMigration checkpoint (format {found!r}, expected {FORMAT!r})")
    if stored.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {stored.get('version')!r}; "
                              f"this code reads version {VERSION}")
    try:
        config = NetConfig.from_dict(stored["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an unusable network config: {error}") from error
    net = GNPolicyNet(config)
    try:
        net.load_state_dict(stored["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the weights do not fit the network its config describes: {error}") from error
    return net, stored.get("training", {})
