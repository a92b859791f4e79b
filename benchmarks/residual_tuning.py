"""Choosing the residual twin's hyper-parameters on the validation split (never the test split).

Fits each variant of `twin.residual.training.FitConfig` named below on the training split of --data and
prints, per variant, the fit's time and the fidelity benchmark's MAE on the validation periods (k = 1 and
5: utilisation, queue, drops), with the default and calibrated twins' (--params) beside them.

    PYTHONPATH=. .venv/bin/python benchmarks/residual_tuning.py [--data DIR] [--variants NAME,...] [--seed N]
    PYTHONPATH=. .venv/bin/python benchmarks/residual_tuning.py --model FILE   (a fitted checkpoint, no fit)
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from twin.calibration import load_params
from twin.cli import EMBEDDED_PARAMS
from twin.fidelity.evaluate import collect, load_dataset, records
from twin.fidelity.twins import CalibratedTwin, DefaultTwin
from twin.records import SHIPPED_DIR
from twin.residual.model import ResidualConfig
from twin.residual.training import FitConfig, fit
from twin.residual.twin import ResidualTwin

BASE = FitConfig()
VARIANTS = {
    "default": BASE,
    "nobase": dataclasses.replace(BASE, net=ResidualConfig(base=())),
    "total10": dataclasses.replace(BASE, per_component=0, weights=(1.0, 10.0, 1.0, 1.0)),
    "queue10": dataclasses.replace(BASE, weights=(1.0, 10.0, 1.0, 1.0)),
    "queue30": dataclasses.replace(BASE, weights=(1.0, 30.0, 1.0, 1.0)),
    "queue100": dataclasses.replace(BASE, weights=(1.0, 100.0, 1.0, 1.0)),
    "mse": dataclasses.replace(BASE, loss="mse"),
    "rollout1": dataclasses.replace(BASE, rollout=1),
    "rollout10": dataclasses.replace(BASE, rollout=10),
    "hidden16": dataclasses.replace(BASE, net=ResidualConfig(hidden=16)),
    "hidden64": dataclasses.replace(BASE, net=ResidualConfig(hidden=64)),
    "history1": dataclasses.replace(BASE, net=ResidualConfig(history=1)),
    "history5": dataclasses.replace(BASE, net=ResidualConfig(history=5)),
    "synthetic4": dataclasses.replace(BASE, synthetic=4),
    "normalised": dataclasses.replace(BASE, normalise=1),
}
METRICS = ("utilisation", "queue", "drops")


def _row(name: str, twin, episodes) -> str:
    rows = records(name, collect(twin, episodes, [1, 5], "validation"))
    cells = {(r["metric"], r["k"]): r["mae"] for r in rows}
    return " | ".join(f"{cells[(m, k)]:.4g}" for m in METRICS for k in (1, 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=SHIPPED_DIR)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=BASE.epochs)
    parser.add_argument("--seed", type=int, default=BASE.seed)
    parser.add_argument("--params", default=EMBEDDED_PARAMS, help="the calibrated twin's parameters")
    parser.add_argument("--model", action="append", default=[],
                        help="a fitted checkpoint to report instead of fitting (repeatable; no variants fitted)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    episodes = load_dataset(args.data, default_split="train")
    header = " | ".join(f"{m} k{k}" for m in METRICS for k in (1, 5))
    print(f"| variant | fit s | epochs | {header} |")
    print("|---|---|---|" + "---|" * 2 * len(METRICS))
    print(f"| default twin | - | - | {_row('default', DefaultTwin(), episodes)} |", flush=True)
    print(f"| calibrated twin | - | - | {_row('calibrated', CalibratedTwin(load_params(args.params)), episodes)} |",
          flush=True)
    for path in args.model:
        print(f"| {path} | - | - | {_row('residual', ResidualTwin.load(path), episodes)} |", flush=True)
    for name in [] if args.model else args.variants.split(","):
        started = time.monotonic()
        net, record = fit(episodes, dataclasses.replace(VARIANTS[name], epochs=args.epochs, seed=args.seed), progress=False)
        print(f"| {name} | {time.monotonic() - started:.0f} | {record['chosen_epoch']}/{record['epochs_run']} | "
              f"{_row('residual', ResidualTwin(net), episodes)} |", flush=True)


if __name__ == "__main__":
    main()
