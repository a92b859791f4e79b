"""Study the rollout rounds of `dm-train --closed-loop` (docs/agent.md, "Rollout advantages"): how much the control
head gains over the hold rule on held-out training windows and on the validation windows.

    PYTHONPATH=. python benchmarks/rollout_study.py --cache DIR [--init CKPT] [--windows 32] [--start warm|fresh]
        [--margin 2000] [--lr 1e-2] [--steps 100] [--check-every 50] [--folds 3]

Collects (or reads from `--cache`, as `dm-train --rollout-cache` does) the first round's samples of training windows
0 … windows − 1. With `--folds K`: K-fold over the windows, the head trained on K − 1 folds; prints the summed gain
over the hold rule of the greedy head's actions on the training and the held-out decisions (one-step estimates).
Without: trains on every window and prints the validation total_cost (sample seed 100) every `--check-every` steps.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from gnn_policy import checkpoint, control, loop_rollouts, loop_training
from gnn_policy.bench import loop
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path


def head(init: Path | None, start: str, table, trace: Path, config: loop_training.LoopTrainConfig):
    net = loop_training.with_control_head(checkpoint.load(init)[0], control.TARGETS, config.seed)
    if start == "warm":
        loop_training.imitate(net, table, trace, config)
    return net


def picked_gain(net, samples) -> float:
    with torch.no_grad():
        logits = control.control_logits(net, [s.inputs for s in samples])
    actions = control.every_choice(len(control.TARGETS))
    return float(sum(s.gains[actions.index(control.draw(row, greedy=True))] for s, row in zip(samples, logits)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--trace", type=Path, default=Path(sample_path()), help="default: the shipped sample")
    parser.add_argument("--init", type=Path, help="network whose body is kept (default: the shipped checkpoint)")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--start", choices=("warm", "fresh"), default="fresh")
    parser.add_argument("--margin", type=float, default=2000.0)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--folds", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    trace = args.trace
    table = read_flows(trace)
    config = replace(loop_training.LoopTrainConfig(), rollout_margin=args.margin)
    keynet = loop_training.with_control_head(checkpoint.load(args.init)[0], control.TARGETS, 0)
    per_window = [loop_training.window_samples(keynet, table, trace, config, 0, k, args.cache)
                  for k in range(args.windows)]
    print(f"{sum(map(len, per_window))} decisions; the best actions' gains sum to "
          f"{sum(s.gains.max() for w in per_window for s in w):,.0f}", flush=True)
    if args.folds:
        trained = held = 0.0
        for fold in range(args.folds):
            train = [s for k, w in enumerate(per_window) if k % args.folds != fold for s in w]
            net = head(args.init, args.start, table, trace, config)
            loop_rollouts.improve(net, train, args.steps, args.lr, config.cost_unit, margin=args.margin)
            trained += picked_gain(net, train)
            held += picked_gain(net, [s for k, w in enumerate(per_window) if k % args.folds == fold for s in w])
        print(f"gain over the hold rule: training decisions {trained:,.0f}, held-out decisions {held:,.0f}")
        return
    samples = [s for w in per_window for s in w]
    net = head(args.init, args.start, table, trace, config)
    validation = loop.build(trace, table, loop.LoopSetup(episodes=8, periods=30, instances=4, standby=2, seed=100))
    print(f"step 0: validation {loop_training.validate(net, validation):,.0f}")
    optimizer = None
    for step in range(args.check_every, args.steps + 1, args.check_every):
        optimizer = loop_rollouts.improve(net, samples, args.check_every, args.lr, config.cost_unit, optimizer,
                                          args.margin)
        print(f"step {step}: greedy regret {loop_rollouts.greedy_regret(net, samples):,.0f}, validation "
              f"{loop_training.validate(net, validation):,.0f}", flush=True)


if __name__ == "__main__":
    main()
