"""`dm-twin fit --kind generative`: fit the generative twin on a recorded dataset's training split, choose
its weights on the validation split, write the checkpoint and print the fit's record."""
from __future__ import annotations

import json
from pathlib import Path

from twin import fit_settings
from twin.fidelity.evaluate import load_dataset
from twin.generative.checkpoint import save
from twin.generative.features import transitions
from twin.generative.fit import FitError, against_mean, fit
from twin.generative.models import GenerativeConfig


def configured(settings: list[str]) -> GenerativeConfig:
    """The default hyper-parameters with NAME=VALUE settings (numbers) applied."""
    return fit_settings.configured(GenerativeConfig(), settings, FitError)


def fit_generative(data: Path, out: Path, logdir: Path, settings: list[str]) -> dict:
    """Fit, save to `out`, return the record (also stored in the checkpoint)."""
    config = configured(settings)
    episodes = load_dataset(data, default_split="train")
    model, record = fit(episodes, config, logdir=logdir)
    held = transitions(episodes, record["chosen_on"], config.history)
    record = {"data": str(data), "config": config.to_dict(), **record,
              f"{record['chosen_on']}_mse_against_mean": against_mean(
                  model, held, transitions(episodes, "train", config.history))}
    save(out, model, record)
    print(json.dumps({"out": str(out), "logdir": str(logdir), **record}, indent=1))
    return record
