"""`dm-twin fit --kind generative`: fit the generative twin on a recorded dataset's training split, choose
its weights on the validation split, write the checkpoint and print the fit's record."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from twin.fidelity.evaluate import load_dataset
from twin.generative.checkpoint import save
from twin.generative.features import transitions
from twin.generative.fit import FitError, against_mean, fit
from twin.generative.models import GenerativeConfig


def configured(settings: list[str]) -> GenerativeConfig:
    """The default hyper-parameters with NAME=VALUE settings (numbers) applied."""
    defaults, changes = GenerativeConfig(), {}
    for setting in settings:
        name, _, value = setting.partition("=")
        default = getattr(defaults, name, None)
        if not isinstance(default, int | float) or isinstance(default, bool):
            numbers = [k for k, v in defaults.to_dict().items() if isinstance(v, int | float)]
            raise FitError(f"--set {setting!r}: {name!r} is not a numeric hyper-parameter ({', '.join(numbers)})")
        try:
            changes[name] = type(default)(value)
        except ValueError:
            raise FitError(f"--set {setting!r}: {name} takes a number of type {type(default).__name__}, "
                           f"got {value!r}") from None
    try:
        return dataclasses.replace(defaults, **changes)
    except ValueError as error:
        raise FitError(f"--set: {error}") from None


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
