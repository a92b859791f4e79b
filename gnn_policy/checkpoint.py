"""Checkpoints of the GN policy: weights, the network config and the training progress, versioned.

A checkpoint is a plain dict of tensors, strings and numbers, so it loads with
`torch.load(weights_only=True)` (no pickled code runs). Loading checks the format tag, the format
version, that the stored config is one this code can run (sizes in range, known features, sane
migration levels), that the weights fit the network it describes and are finite; each failure raises a
`CheckpointError` that says which of them went wrong, so a checkpoint that loads also works.
"""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import torch

from gnn_policy.gn import CONTEXT_FEATURES, GNPolicyNet, NetConfig
from gnn_policy.graph import EDGE_FEATURES, GLOBAL_FEATURES, NODE_FEATURES, OPTIONAL_NODE_FEATURES
from trace_replay.files import atomic_write
from twin.checkpoint_file import read_versioned

FORMAT = "deepmigration-gn"
VERSION = 3
"""3: the config's control head (`targets`, `control_bias`; `gnn_policy.control`); 2: simple RNN cells and 18
migration levels (version 1 had GRU cells and 10 levels)."""
MAX_HIDDEN = 4096
MAX_STEPS = 32
"""Bounds of a loadable config: the shipped network has hidden 16 and steps 2; a decision runs the GN block
`steps` times, so a config of 10**9 steps would hang every decision instead of failing at load."""
DEFAULT_CHECKPOINT = Path(__file__).parent / "data" / "deepmigration.pt"
"""The trained checkpoint shipped with the package (`DeepMigration.load(None)`)."""


class CheckpointError(ValueError):
    """A file that is not a usable DeepMigration checkpoint; the message names the problem."""


def save(path: str | os.PathLike, net: GNPolicyNet, training: dict | None = None) -> None:
    """Write the weights, the config and `training` (iteration, seed, optimizer state, ...), whole or not
    at all: a failed write leaves the previous checkpoint at `path` as it was."""
    with atomic_write(path, make_parents=True) as handle:
        torch.save({"format": FORMAT, "version": VERSION, "config": net.config.to_dict(),
                    "state_dict": net.state_dict(), "training": training or {}}, handle)


def load(path: str | os.PathLike | None = None) -> tuple[GNPolicyNet, dict]:
    """The network stored at `path` (the shipped default when None) and its training record."""
    path = Path(DEFAULT_CHECKPOINT if path is None else path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}" + (
            "; train one with `dm-train --out` and pass it as the checkpoint" if path == DEFAULT_CHECKPOINT else ""))
    stored = read_versioned(path, FORMAT, VERSION, "DeepMigration", CheckpointError)
    try:
        config = NetConfig.from_dict(stored["config"])
        check_config(config)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an unusable network config: {error}") from error
    net = GNPolicyNet(config)
    weights = stored.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{path}: the weights are not a dict of tensors")
    try:
        net.load_state_dict(weights)
    except (KeyError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the weights do not fit the network its config describes: {error}") from error
    broken = [name for name, tensor in weights.items()
              if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise CheckpointError(f"{path}: weight {broken[0]} is not finite (NaN or infinity); the training "
                              "diverged or the file is damaged")
    training = stored.get("training", {})
    if not isinstance(training, dict):
        raise CheckpointError(f"{path}: the training record is a {type(training).__name__}, not a dict")
    return net, training


def check_config(config: NetConfig) -> None:
    """ValueError naming the first value of `config` no network of this code can work with: a size out of
    range (`steps` runs the block that often per decision), migration levels that are not
    0 = l_0 < l_1 < ... <= 1, targets that are not increasing utilisations in (0, 1], or feature names other
    than those `gnn_policy.graph` builds, in its order (node features: NODE_FEATURES, then optionally a prefix
    of OPTIONAL_NODE_FEATURES)."""
    for name, value, top in (("hidden", config.hidden, MAX_HIDDEN), ("steps", config.steps, MAX_STEPS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ValueError(f"{name} must be an integer in 1..{top}, got {value!r}")
    levels = config.levels
    if not (isinstance(levels, tuple) and levels and all(_is_number(x) for x in levels) and levels[0] == 0
            and all(a < b for a, b in itertools.pairwise(levels)) and levels[-1] <= 1):
        raise ValueError(f"levels must be increasing fractions from 0 to at most 1, got {levels!r}")
    for name in ("stay_bias", "control_bias"):
        value = getattr(config, name)
        if not (_is_number(value) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    targets = config.targets
    if not (isinstance(targets, tuple) and all(_is_number(x) and 0 < x <= 1 for x in targets)
            and all(a < b for a, b in itertools.pairwise(targets))):
        raise ValueError(f"targets must be increasing utilisations in (0, 1] (or none), got {targets!r}")
    optional = OPTIONAL_NODE_FEATURES[:max(len(config.node_features) - len(NODE_FEATURES), 0)]
    for kind, names, built in (("node", config.node_features, NODE_FEATURES + optional),
                               ("edge", config.edge_features, EDGE_FEATURES),
                               ("global", config.global_features, GLOBAL_FEATURES + CONTEXT_FEATURES)):
        unknown = [name for name in names if name not in built]
        if unknown:
            raise ValueError(f"{kind} feature {unknown[0]!r} is unknown; this code builds {list(built)}")
        if tuple(names) != built:
            raise ValueError(f"{kind}_features {list(names)} differ from the {list(built)} this code builds "
                             "(names and order must match)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
