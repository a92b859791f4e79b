"""Decision time at N = 40 of the look-ahead and the student (issue 19 goals: <= 20 ms p50 per period,
look-ahead included; <= 5 ms p50 in Fig. 7's set-up).

    PYTHONPATH=. python benchmarks/bench_lookahead.py [--threads 2] [--repeats 50] [--periods 20] \
        [--policies deepmigration,deepmigration-lookahead] [--clock wall|cpu]

1. Fig. 7's set-up (`build_timing(n_instances=40, seed=0)`: 40 flows per instance, load balancing,
   `torch.set_num_threads(--threads)`): p50 and p90 of `decide` for each of `--policies` (default
   `deepmigration` and `deepmigration-lookahead`, shipped k and candidates), taking turns in ten rounds so
   that a shared machine's slow spells hit all alike; then the p50 of the residual twin's scoring of the
   look-ahead's candidates alone (as the look-ahead asks: the utilisation and threshold penalties only).
2. The closed loop at N = 40 (36 active + 4 standby instances, one validation window of the sample, seed 100,
   `--periods` periods, no stabilizer): each policy's p50 decision time per period in which a scenario was
   acted on, by `--clock` (wall time, or the thread's CPU time: `bench_agent.CLOCKS`), and the loop's own
   `decision_ms_p50` (wall time) as `dm-bench --experiment closed-loop` reports it.
"""
from __future__ import annotations

import argparse
from typing import ClassVar

import numpy as np
import torch
from bench_agent import CLOCKS

from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.bench import loop
from gnn_policy.lookahead import HORIZON, LookAhead
from gnn_policy.registry import make_policy
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from trace_replay.scenarios import build_timing
from twin.scenario import ScenarioKind

POLICIES = ("deepmigration", "deepmigration-lookahead")
clock = CLOCKS["wall"]


def timed_ms(calls: dict, repeats: int, rounds: int = 10, warm_up: int = 5) -> dict[str, np.ndarray]:
    """`repeats` timed calls of each of `calls` after `warm_up` untimed ones, in `rounds` rounds that take turns."""
    for call in calls.values():
        for _ in range(warm_up):
            call()
    times: dict[str, list] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            for _ in range(max(1, repeats // rounds)):
                began = clock()
                call()
                times[label].append(1000.0 * (clock() - began))
    return {label: np.array(values) for label, values in times.items()}


PERIOD_MS: dict[str, list[float]] = {}
"""`Timed`'s record: the closed loop deep-copies every policy, so the times are kept by name here."""


class Timed(Policy):
    """`policy` with each decision on a scenario timed by `clock` (the closed loop's own `decision_ms_p50` is wall
    time)."""

    name: ClassVar[str] = "timed"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(ScenarioKind)

    def __init__(self, label: str, policy: Policy):
        self.label, self.policy = label, policy
        PERIOD_MS[label] = []

    def decide(self, problem: Problem) -> Decision:
        if problem.scenario.kind is ScenarioKind.NONE:
            return self.policy.decide(problem)
        began = clock()
        decision = self.policy.decide(problem)
        PERIOD_MS[self.label].append(1000.0 * (clock() - began))
        return decision

    def _decide(self, problem: Problem) -> Decision:
        return self.policy.decide(problem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--periods", type=int, default=20)
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated registry names; the look-ahead's twin is timed alone when one is "
                             "deepmigration-lookahead")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall time, or the calling thread's CPU time (with --threads 1; bench_agent.CLOCKS)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    names = args.policies.split(",")
    torch.set_num_threads(args.threads)
    table = read_flows(sample_path())
    setup = build_timing(table, n_instances=40, seed=0)
    problem = Problem.of(setup.state, setup.thresholds).as_scenario(ScenarioKind.LOAD_BALANCE)
    policies = {name: make_policy(name) for name in names}
    print(f"Fig. 7 set-up: load balancing, N = 40, {setup.state.n_flows} flows, {args.threads} threads, "
          f"{args.repeats} calls each, {args.clock} time:")
    for label, times in timed_ms({n: (lambda p=p: p.decide(problem)) for n, p in policies.items()},
                                 args.repeats).items():
        print(f"  {label:26s} p50 {np.percentile(times, 50):7.2f} ms   p90 {np.percentile(times, 90):7.2f} ms")
    wrapper = policies.get("deepmigration-lookahead")
    if isinstance(wrapper, LookAhead):
        actions = [o.decision.action for o in (wrapper._candidate(c, problem) for c in wrapper.candidates) if o]
        alone = timed_ms({"twin": lambda: wrapper.twin.score_actions(problem.state, actions, wrapper.k,
                                                                      queues=False)}, args.repeats)
        print(f"  residual twin scoring {len(actions)} candidates, k = {wrapper.k}: "
              f"p50 {np.percentile(alone['twin'], 50):7.2f} ms")

    loop_setup = loop.LoopSetup(episodes=1, periods=args.periods, instances=36, standby=4, seed=100)
    batch = loop.build(sample_path(), table, loop_setup)
    print(f"closed loop, N = 40 (36 active + 4 standby), seed 100, {args.periods} periods"
          + (f", look-ahead k = {HORIZON}:" if "deepmigration-lookahead" in names else ":"))
    for run in loop.run(batch, {name: Timed(name, make_policy(name)) for name in names}, (None,)):
        (record,) = run.records
        print(f"  {run.policy:26s} decision p50 {np.percentile(PERIOD_MS[run.policy], 50):7.2f} ms ({args.clock}; "
              f"the loop's wall decision_ms_p50 {record['decision_ms_p50']:7.2f} ms)   "
              f"total_cost {record['total_cost']:,.0f}   migrations {record['migrations']}")


if __name__ == "__main__":
    main()
