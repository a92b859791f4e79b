"""Checkpoints of the residual twin: weights, the network config and the fit's record, versioned.

As the policy's (`gnn_policy.checkpoint`): a plain dict of tensors, strings and numbers (the base twin's
calibrated parameters as their JSON), loaded with
`torch.load(weights_only=True)` (no pickled code runs); loading checks the format tag, the version and
that the stored config rebuilds a network the weights fit, and each failure raises a `ResidualCheckpointError`
that says which went wrong.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from twin.calibration import CalibratedParams, CalibrationError, params_from_json
from twin.checkpoint_file import read_versioned
from twin.residual.model import ResidualConfig, ResidualNet

FORMAT = "deepmigration-residual-twin"
VERSION = 3
"""3: the stored base parameters are calibrated-twin parameters version 3 (the move pace term); 2: the network
reads and corrects a base twin, whose calibrated parameters are stored with the weights."""
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "data" / "residual.pt"
"""The fitted model shipped with the package (`dm-twin eval` uses it unless --model names another)."""


class ResidualCheckpointError(ValueError):
    """A file that is not a usable residual-twin checkpoint; the message names the problem."""


def save(path: str | os.PathLike, net: ResidualNet, training: dict | None = None) -> None:
    """Write the weights, the config and `training` (the fit's config, epochs, validation losses, data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "config": net.config.to_dict(),
                "base": None if net.base is None else net.base.to_json(),
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
    try:
        base = None if stored.get("base") is None else params_from_json({**CalibratedParams().to_json(),
                                                                         **stored["base"]})
    except (CalibrationError, TypeError) as error:
        raise ResidualCheckpointError(f"{path} has unusable base-twin parameters: {error}") from None
    if (base is None) != (not config.base):
        raise ResidualCheckpointError(f"{path}: the network config and the stored base-twin parameters disagree "
                                      f"(base inputs {list(config.base)}, parameters "
                                      f"{'none' if base is None else 'stored'})")
    net = ResidualNet(config, base)
    try:
        net.load_state_dict(stored["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise ResidualCheckpointError(f"{path}: the weights do not fit the network its config describes: "
                                      f"{error}") from None
    net.eval()
    return net, stored.get("training", {})
