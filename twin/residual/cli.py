"""`dm-twin fit --kind residual` and the residual twin's place in `dm-twin eval` (wired in twin.cli)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from twin.fidelity.evaluate import load_dataset
from twin.fidelity.twins import FlowTwin
from twin.records import SHIPPED_DIR
from twin.residual import checkpoint
from twin.residual.training import FitConfig, FitError, fit
from twin.residual.twin import ResidualTwin

KINDS = ("residual",)


def add_fit_parser(commands) -> None:
    defaults = FitConfig()
    parser = commands.add_parser("fit", help="fit a learned twin on recorded transitions")
    parser.add_argument("--data", type=Path, default=SHIPPED_DIR,
                        help="a recording or a directory of recordings (default: the shipped dataset)")
    parser.add_argument("--kind", required=True, choices=KINDS, help="which learned twin")
    parser.add_argument("--out", required=True, type=Path, help="where to write the checkpoint (.pt)")
    parser.add_argument("--epochs", type=_positive, default=defaults.epochs,
                        help=f"most epochs (default {defaults.epochs}; early stopping on validation)")
    parser.add_argument("--synthetic", type=_positive_or_zero, default=defaults.synthetic,
                        help=f"simulated recordings added to the training data (default {defaults.synthetic})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"default {defaults.seed}")
    parser.add_argument("--logdir", type=Path, default=Path("runs/dm-twin-fit"), help="TensorBoard log folder")
    parser.add_argument("--threads", type=_positive, default=1,
                        help="torch threads (default 1: the network is small, more threads only contend)")


def _positive(text: str) -> int:
    value = _positive_or_zero(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_or_zero(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def fit_command(args) -> int:
    out = args.out
    if out.is_dir():
        raise FitError(f"--out {out} is a directory, not a file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise FitError(f"--out {out}: the directory {parent} does not exist or is not writable")
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    episodes = load_dataset(args.data, default_split="train")
    config = dataclasses.replace(FitConfig(), epochs=args.epochs, synthetic=args.synthetic, seed=args.seed)
    net, record = fit(episodes, config, logdir=args.logdir, progress=True)
    record["data"] = str(args.data)
    checkpoint.save(out, net, record)
    print(json.dumps({"out": str(out), "wall_s": round(time.monotonic() - started, 1),
                      **{key: record[key] for key in ("fit_s", "epochs_run", "chosen_epoch", "chosen_on",
                                                      "chosen_loss", "train_windows", "validation_windows",
                                                      "chosen_mae")},
                      "logdir": str(args.logdir)}, indent=1))
    return 0


def residual_twins(model: Path | None, base: FlowTwin) -> list[ResidualTwin]:
    """The residual twin of `model`, or of the shipped model; none where neither exists (a checkout before
    the shipped fit)."""
    if model is None and not checkpoint.DEFAULT_MODEL.is_file():
        return []
    return [ResidualTwin.load(model, base=base, params=base.params, thresholds=base.thresholds)]
