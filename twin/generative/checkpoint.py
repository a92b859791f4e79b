"""Checkpoints of the generative twin: weights, scaler, hyper-parameters and the fit's record, versioned.

A checkpoint is a plain dict of tensors, strings and numbers, loaded with `torch.load(weights_only=True)`
(no pickled code runs), like the policy's (gnn_policy.checkpoint). Loading checks the format tag, the
version, the feature names and that the stored hyper-parameters rebuild networks the weights fit; each
failure raises a `CheckpointError` that names the problem.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from trace_replay.files import atomic_write
from twin.checkpoint_file import read_versioned
from twin.generative.features import ACTION, STATE
from twin.generative.models import GenerativeConfig, GenerativeModel

FORMAT = "generative-twin"
VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).parent.parent / "data" / "generative.pt"
"""The fitted checkpoint shipped with the package, once made (`dm-twin fit --kind generative`)."""


class CheckpointError(ValueError):
    """A file that is not a usable generative-twin checkpoint; the message names the problem."""


def save(path: str | os.PathLike, model: GenerativeModel, training: dict | None = None) -> None:
    """Write the checkpoint whole (a temporary file renamed into place) or not at all."""
    with atomic_write(path, make_parents=True) as file:
        torch.save({"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
                    "features": {"state": list(STATE), "action": list(ACTION)},
                    "state_dict": model.state_dict(), "training": training or {}}, file)


def load(path: str | os.PathLike | None = None) -> tuple[GenerativeModel, dict]:
    """The model stored at `path` (the shipped default when None) and its training record."""
    path = Path(DEFAULT_CHECKPOINT if path is None else path)
    if not path.is_file():
        raise CheckpointError(f"no generative-twin checkpoint at {path}; fit one with "
                              "`dm-twin fit --kind generative --out FILE`")
    stored = read_versioned(path, FORMAT, VERSION, "generative-twin", CheckpointError)
    if stored.get("features") != {"state": list(STATE), "action": list(ACTION)}:
        raise CheckpointError(f"{path} was fitted on other features ({stored.get('features')!r}); "
                              f"this code uses state {list(STATE)} and action {list(ACTION)}")
    try:
        model = GenerativeModel(GenerativeConfig.from_dict(stored["config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has unusable hyper-parameters: {error}") from None
    try:
        model.load_state_dict(stored["state_dict"])
    except (KeyError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{path}: the weights do not fit the networks its hyper-parameters describe: "
                              f"{error}") from None
    model.eval()
    return model, stored.get("training", {})
