"""The stabilizer's state on disk, next to the transition log, so that a controller restart goes on where
it stopped (estimates, windows, Q) and causes no reversal.

Written atomically (a temporary file renamed over the old one) every period; a file that cannot be read
is logged and replaced by a fresh stabilizer, never a crash.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from gnn_policy.stabilizer import Stabilizer, StabilizerConfig, StabilizerError
from twin.params import CostParams, Thresholds

LOG = logging.getLogger(__name__)


def stabilizer_path(transition_log: str | os.PathLike) -> Path:
    """`transitions.jsonl` → `transitions.stabilizer.json`, in the same folder."""
    log = Path(transition_log)
    return log.with_name(f"{log.stem}.stabilizer.json")


def load_stabilizer(path: Path, config: StabilizerConfig, thresholds: Thresholds, params: CostParams) -> Stabilizer:
    """The stabilizer saved at `path`, or a fresh one (logged) when there is none or it cannot be used."""
    if not path.exists():
        return Stabilizer(config, thresholds, params)
    try:
        stabilizer = Stabilizer.restore(json.loads(path.read_text()), config, thresholds, params)
    except (OSError, ValueError) as error:  # JSONDecodeError and StabilizerError are ValueErrors
        what = error if isinstance(error, StabilizerError) else f"{type(error).__name__}: {error}"
        LOG.error("stabilizer state %s is unusable (%s); starting from a fresh stabilizer", path, what)
        return Stabilizer(config, thresholds, params)
    LOG.info("stabilizer state restored from %s: Q=%.1f, need %s held %.1f s", path, stabilizer.budget_queue,
             stabilizer.need.value, stabilizer.held_s)
    return stabilizer


def save_stabilizer(path: Path, stabilizer: Stabilizer) -> None:
    """Replace `path` atomically with the stabilizer's snapshot; a failed write is logged, the period goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp",
                                         delete=False) as out:
            json.dump(stabilizer.snapshot(), out)
        os.replace(out.name, path)
    except OSError as error:
        LOG.error("cannot save the stabilizer state to %s: %s", path, error)
