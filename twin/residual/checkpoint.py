"""Checkpoints of the residual twin: weights, the network config and the fit's record, versioned.

As the policy's (`gnn_policy.checkpoint`): a plain dict of tensors, strings and numbers, loaded with
`torch.load(weights_only=True)` (no pickled code runs); loading checks the format tag, the version and
that the stored config rebuilds a network the weights fit, and each failure raises a `ResidualCheckpointError`
that says which went wrong.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from twin.checkpoint_file import read_versioned
from twin.residual.model import ResidualConfig, ResidualNet

FORMAT = "deepmigration-residual-twin"
VERSION = 1
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "data" / "residual.pt"
"""The fitted model shipped with the package (`dm-twin eval` uses it unless --model names another)."""


class ResidualCheckpointError(ValueError):
    """A file that is not a usable residual-twin checkpoint; the message names the problem."""


def save(path: str | os.PathLike, net: ResidualNet, training: dict | None = None) -> None:
    """Write the weights, the config and `training` (the fit's config, epochs, validation losses, data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "config": net.config.to_dict(),
                "state_dict": net.state_dict(), "training": training or {}}, path)


def load(path: str | os.PathLike | None = None) -> tuple[ResidualNet, dict]:
    """The network stored at `path` (the shipped model when None) and its training record."""
    path = Path(DEFAULT_MODEL if path is None else path)
    if not path.is_file():
        raise ResidualCheckpointError(f"no residual-twin model at {path}" + (
            "; fit one with `dm-twin fit --kind residual --out FILE` and pass it with --model"
            if path == DEFAULT_MODEL else ""))
    stored = read_versioned(path, FORMAT, VERSION, "residual-twin", ResidualCheckpointError)
    try:
        config = ResidualConfig.from_dict(stored["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise ResidualCheckpointError(f"{path} has an unusable network config: {error}") from None
    net = ResidualNet(config)
    try:
        net.load_state_dict(stored["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise ResidualCheckpointError(f"{path}: the weights do not fit the network its config describes: "
                                      f"{error}") from None
    net.eval()
    return net, stored.get("training", {})
