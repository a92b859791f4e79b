"""Choose agent 1's live step (`dm-demo --learn --live-kl`, docs/agent.md "Two loops") on training and
validation data only: each candidate step (Adam at a learning rate, or the trust region at a KL bound) is taken
from the same start on the same recorded live **training** window(s), and the stepped head is scored greedy on
the twin's **validation** windows (`dm-bench --experiment closed-loop --seed 100`, as the session scores agents).

    PYTHONPATH=. python benchmarks/tune_live_step.py --window /tmp/train-2 --checkpoint START.pt \\
        --kl 0.001 0.003 0.01 0.03 --lr 5e-3
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from gnn_policy import checkpoint, control
from gnn_policy.live_reinforce import live_samples, live_step, replay_periods
from gnn_policy.loop_training import VALIDATION_SEED, validate, with_control_head
from gnn_policy.two_loops import TwoLoopsConfig, validation_batch
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.records import load


def greedy_flips(before, after, inputs) -> int:
    """How many of the windows' decided states the step changed the most likely action of."""
    with torch.no_grad():
        old = control.all_log_probs(control.control_logits(before, inputs)).argmax(1)
        new = control.all_log_probs(control.control_logits(after, inputs)).argmax(1)
    return int((old != new).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=Path, nargs="+", required=True, help="recorded live training window(s)")
    parser.add_argument("--checkpoint", type=Path, help="the weights that ran the window(s) (default: shipped)")
    parser.add_argument("--kl", type=float, nargs="*", default=[0.001, 0.003, 0.01, 0.03])
    parser.add_argument("--lr", type=float, nargs="*", default=[5e-3])
    parser.add_argument("--episodes", type=int, default=8, help="twin validation episodes (default %(default)s)")
    args = parser.parse_args()
    net, _ = checkpoint.load(args.checkpoint)
    start = with_control_head(net, control.TARGETS, 0, keep=True)
    windows = [load(path) for path in args.window]
    inputs = [s.inputs for w in windows for s in live_samples(w, start.config.targets, replay_periods(w))]
    config = TwoLoopsConfig(validation_episodes=args.episodes)
    batch = validation_batch(sample_path(), read_flows(sample_path()), config, VALIDATION_SEED)
    began = time.monotonic()
    print(json.dumps({"step": "none (the start)", "twin_validation": validate(start, batch)}), flush=True)
    candidates = [("adam", lr, None) for lr in args.lr] + [("trust region", None, kl) for kl in args.kl]
    for kind, lr, kl in candidates:
        stepped = copy.deepcopy(start)
        step = live_step(stepped, windows, lr=lr or 5e-3, max_kl=kl)
        print(json.dumps({"step": kind, "lr": lr, "max_kl": kl, "kl": step["kl"], "step_norm": step.get("step_norm"),
                          "decisions": step["decisions"], "greedy_flips": greedy_flips(start, stepped, inputs),
                          "twin_validation": validate(stepped, batch),
                          "wall_s": round(time.monotonic() - began, 1)}), flush=True)


if __name__ == "__main__":
    main()
