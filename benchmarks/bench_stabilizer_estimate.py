"""How far the stabilizer's load estimate is from the measured load, and where a policy's closed-loop cost
goes: the evidence behind the stabilizer's estimate and scale-in rule (docs/benchmark.md, "Tuning the
stabilizer"). Run it on validation windows only (sample seeds 100-199, generator seeds other than 4711/4712).

    .venv/bin/python benchmarks/bench_stabilizer_estimate.py --seed 100                     # sample, 8 x 120
    .venv/bin/python benchmarks/bench_stabilizer_estimate.py --trace gen1.pcap.gz --periods 300 --policy ofm

Part 1 replays the episodes with no action and compares, per period, the measured total rate with the sum
of the per-flow EWMAs (horizon 5 s, a new flow at its measured rate: the stabilizer's estimate before
2026-12-07) and with `RateEstimator`'s (the same, scaled to the total's estimate). Part 2 runs `--policy`
through the closed loop with and without `StabilizerConfig()` and splits the ω penalty of the periods
into the part above Th_high and the part below Th_low, the two things the number of instances trades.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import numpy as np
import torch

from gnn_policy import registry
from gnn_policy.bench import loop
from gnn_policy.closed_loop import _step, episode_metrics, run_closed_loop
from gnn_policy.stabilizer import RateEstimator, Stabilizer, StabilizerConfig
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.migration import IndexedAction
from twin.params import Thresholds
from twin.sim import BatchedTwin


def estimate_bias(batch, params, thresholds) -> dict:
    """Mean over periods and episodes of Σ estimate / measured total, for the plain and the scaled EWMA."""
    twin = BatchedTwin.from_episodes(batch, params, thresholds)
    plain = [RateEstimator("ewma", 5.0, calibrated=False) for _ in range(batch.n_episodes)]
    scaled = [RateEstimator("ewma", 5.0) for _ in range(batch.n_episodes)]
    ratios = {"per-flow EWMA": [], "scaled (RateEstimator)": []}
    silent = []
    now = 0.0
    while not twin.done.any():
        states, slots = twin.observed_states()
        for b, state in enumerate(states):
            measured = float(state.rate.sum())
            a = plain[b].update(state.flow_ids, state.rate, batch.step_s).sum()
            c = scaled[b].update(state.flow_ids, state.rate, batch.step_s).sum()
            if measured > 0 and now >= 10.0:  # past the first horizons
                ratios["per-flow EWMA"].append(a / measured)
                ratios["scaled (RateEstimator)"].append(c / measured)
                silent.append(float((state.rate == 0).mean()))
        _step(twin, [IndexedAction()] * batch.n_episodes, slots, thresholds, params, now)
        now += batch.step_s
    return {**{k: statistics.fmean(v) for k, v in ratios.items()}, "silent flows": statistics.fmean(silent)}


def cost_split(batch, policy_name, config, params, thresholds, seed) -> dict:
    """The closed loop's means per episode, with ω split into overload and underload."""
    twin = BatchedTwin.from_episodes(batch, params, thresholds)
    split = {"omega over Th_high": 0.0, "omega under Th_low": 0.0}
    step = twin.step

    def counted(dst, start, stop):
        result = step(dst, start, stop)
        u, on = twin.utilisation, twin.active & twin.instance_mask
        split["omega over Th_high"] += float(torch.where(on, (u - thresholds.high).clamp(min=0), 0.0).sum())
        split["omega under Th_low"] += float(torch.where(on, (thresholds.low - u).clamp(min=0), 0.0).sum())
        return result

    twin.step = counted
    prototype = registry.make_policy(policy_name, seed=seed)
    policies = [copy.deepcopy(prototype) for _ in range(batch.n_episodes)]
    stabilizers = [None if config is None else Stabilizer(config, thresholds, params) for _ in policies]
    metrics = [episode_metrics(p, batch.step_s) for p in run_closed_loop(twin, policies, stabilizers)]
    out = {m: statistics.fmean(r[m] for r in metrics) for m in ("total_cost", "migrations", "instance_s",
                                                                  "reversals")}
    return out | {k: params.omega * v / batch.n_episodes for k, v in split.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(sample_path()))
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--periods", type=int, default=120)
    parser.add_argument("--policy", default="ofm")
    args = parser.parse_args(argv)
    setup = loop.LoopSetup(episodes=args.episodes, periods=args.periods, seed=args.seed)
    batch = loop.build(args.trace, read_flows(args.trace), setup)
    params, thresholds = setup.params, Thresholds()
    print("estimate / measured total (mean over periods from 10 s on):")
    for name, value in estimate_bias(batch, params, thresholds).items():
        print(f"  {name:24s} {value:6.2f}")
    print(f"{args.policy}, closed loop (means per episode):")
    for label, config in (("off", None), ("on", StabilizerConfig())):
        row = cost_split(batch, args.policy, config, params, thresholds, args.seed)
        print(f"  {label:3s} " + "  ".join(f"{k} {v:,.1f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    np.set_printoptions(linewidth=120)
    raise SystemExit(main())
