"""`dm-twin fit --kind residual` (wired in twin.cli): fit on the training split, choose on validation, save."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from twin import fit_settings
from twin.fidelity.evaluate import load_dataset
from twin.residual import checkpoint
from twin.residual.training import FitConfig, FitError, fit


def fit_residual(data: Path, out: Path, logdir: Path, settings: list[str]) -> dict:
    """Fit with FitConfig's defaults and the NAME=VALUE `settings`, save to `out`, print and return the record.
    One torch thread: the network is small, more threads only contend."""
    config = fit_settings.configured(FitConfig(), settings, FitError)
    torch.set_num_threads(1)
    started = time.monotonic()
    episodes = load_dataset(data, default_split="train")
    net, record = fit(episodes, config, logdir=logdir, progress=True)
    record["data"] = str(data)
    checkpoint.save(out, net, record)
    print(json.dumps({"out": str(out), "wall_s": round(time.monotonic() - started, 1),
                      **{key: record[key] for key in ("fit_s", "epochs_run", "chosen_epoch", "chosen_on",
                                                      "chosen_loss", "train_windows", "validation_windows",
                                                      "chosen_mae")},
                      "logdir": str(logdir)}, indent=1))
    return record
