"""Throughput of the batched twin simulator (twin.sim.BatchedTwin.step) in flow-steps per second.

    python benchmarks/bench_sim.py                 # B=64 episodes, N=10 instances, 400 flows each
    python benchmarks/bench_sim.py --steps 500 --threads 2

A flow-step is one flow slot of one episode advanced by one step. Every step proposes random valid
migrations (each live flow moves with probability --move-share to a random other active instance
whose free buffer holds the packets of its move);
the time of drawing them is included, as a policy's would be. Two set-ups are timed: mirrored
states with exactly 400 live flows (the scenario builders' timing set-up: 10 instances × 40 flows),
and trace-driven episodes over 400 flow slots, where flows arrive and leave.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from trace_replay.episodes import build_episodes
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from trace_replay.scenarios import build_timing
from twin import cost
from twin.sim import BatchedTwin


def random_moves(twin: BatchedTwin, move_share: float, generator: torch.Generator) -> torch.Tensor:
    """dst for `step`: each live flow moves with probability `move_share` to a random other active instance.

    The destination is the active instance a random 1..n_active−1 places after the flow's own in
    the list of active instances (cyclically), which is uniform over the others and needs no sampling
    loop. A flow whose move alone would overflow that destination's buffer (constraint (5)) stays.
    """
    active_first = torch.argsort((~twin.active).to(torch.uint8), dim=1, stable=True)
    n_active = twin.active.sum(-1, keepdim=True)
    rank_of = torch.cumsum(twin.active.long(), dim=1) - 1
    src = twin.assignment.clamp(min=0)
    offset = 1 + (torch.rand(src.shape, generator=generator) * (n_active - 1)).long()
    choice = active_first.gather(1, (rank_of.gather(1, src) + offset) % n_active.clamp(min=1))
    la_ij = twin.migration_ms.flatten(1).gather(1, src * twin.n_instances + choice)
    fits = cost.packets_buffered_during_move(twin.flow_rate, la_ij) <= (twin.buffer - twin.queue).gather(
        1, choice
    )
    drawn = torch.rand(src.shape, generator=generator) < move_share
    return torch.where(twin.flow_live & (n_active > 1) & drawn & fits, choice, twin.assignment)


def time_steps(twin: BatchedTwin, steps: int, move_share: float, seed: int) -> tuple[float, float, float]:
    """(flow-steps per second, share of rejected episode actions, mean moved flows per episode-step)."""
    generator = torch.Generator().manual_seed(seed)
    no_change = torch.zeros_like(twin.active)
    invalid = moved = 0.0
    begin = time.perf_counter()
    for _ in range(steps):
        result = twin.step(random_moves(twin, move_share, generator), no_change, no_change)
        invalid += result.invalid.float().mean().item()
        moved += result.moved.float().mean().item()
    elapsed = time.perf_counter() - begin
    return steps * twin.n_episodes * twin.n_flow_slots / elapsed, invalid / steps, moved / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pcap", default=str(sample_path()), help="trace for the flows (default: the shipped sample)"
    )
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--flows-per-instance", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--move-share", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = read_flows(args.pcap)
    flows = args.instances * args.flows_per_instance
    print(
        f"B={args.episodes} N={args.instances} F={flows} steps={args.steps} torch threads={args.threads} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__})"
    )

    states = [
        build_timing(
            table, n_instances=args.instances, seed=seed, flows_per_instance=args.flows_per_instance
        ).state
        for seed in range(args.episodes)
    ]
    mirrored = BatchedTwin.from_states(states, horizon=None)
    time_steps(mirrored, 5, args.move_share, seed=1)  # warm-up
    rate, invalid, moved = time_steps(mirrored, args.steps, args.move_share, seed=0)
    print(
        f"mirrored states: {rate:,.0f} flow-steps/s "
        f"({invalid:.1%} of actions rejected, {moved:.1f} moves per step)"
    )

    batch = build_episodes(
        args.pcap,
        table=table,
        n_episodes=args.episodes,
        n_steps=args.steps + 1,
        n_instances=args.instances,
        max_flows=flows,
        seed=0,
    )
    rate, invalid, moved = time_steps(BatchedTwin.from_episodes(batch), args.steps, args.move_share, seed=0)
    print(
        f"trace-driven:    {rate:,.0f} flow-steps/s "
        f"({invalid:.1%} of actions rejected, {moved:.1f} moves per step)"
    )


if __name__ == "__main__":
    main()
