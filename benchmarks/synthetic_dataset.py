"""Write a simulated recorded dataset (twin.fidelity.synthetic, known parameters) with its split.json:
a stand-in for the testbed's recordings where none is shipped. Seeds follow the project's split (train
0-99, validation 100-199, test >= 200); each recording is another window of the sample trace.

    python benchmarks/synthetic_dataset.py OUT [--train 4] [--steps 150] [--instances 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from trace_replay.episodes import build_episodes
from twin.fidelity.synthetic import Truth, record_simulation

SAMPLE_TRACE = "trace_replay/data/lbnl_sample.pcap.gz"


def record(root: Path, seed: int, steps: int, instances: int, utilisation: float) -> str:
    batch = build_episodes(SAMPLE_TRACE, n_episodes=1, n_steps=steps, n_instances=instances, seed=seed,
                           bin_s=1.0, max_flows=400)
    batch = dataclasses.replace(batch, rate=batch.rate * 50)  # packets enough that whole drops count
    capacity = np.full_like(batch.capacity, batch.rate.sum(-1).mean() / instances / utilisation)
    batch = dataclasses.replace(batch, capacity=capacity, buffer=capacity * 0.5)
    name = f"sim-{seed}"
    record_simulation(batch, root / name, Truth(), seed=seed, meta={"utilisation": utilisation})
    return name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a directory that does not exist yet")
    parser.add_argument("--train", type=int, default=4, help="training recordings (seeds 1, 2, ...)")
    parser.add_argument("--steps", type=int, default=150, help="periods per recording")
    parser.add_argument("--instances", type=int, default=3, help="NF instances")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; name a new directory")
    args.out.mkdir(parents=True)
    seeds = {"train": range(1, 1 + args.train), "validation": (101,), "test": (201, 202)}
    split = {label: [record(args.out, seed, args.steps, args.instances, 0.7 + 0.05 * (seed % 4))
                     for seed in members] for label, members in seeds.items()}
    (args.out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    print(json.dumps(split))


if __name__ == "__main__":
    main()
