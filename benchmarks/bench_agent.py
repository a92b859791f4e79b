"""DeepMigration's decision time, and its quality against OFM and Optimal on the dm-bench set-ups.

    nice .venv/bin/python benchmarks/bench_agent.py                          # seeds 0..2, Optimal 10 s
    nice .venv/bin/python benchmarks/bench_agent.py --seeds 5 --optimal-time-limit 0   # no Optimal
    nice .venv/bin/python benchmarks/bench_agent.py --checkpoint ckpt.pt --skip-quality
    nice .venv/bin/python benchmarks/bench_agent.py --skip-quality --threads 1 --clock cpu   # a loaded machine

Timing: load balancing on `build_timing(n_instances=40, seed=0)` (40 flows per instance, as Fig. 7),
`torch.set_num_threads(--threads)`, p50 and p90 of `decide` (wall time, or with `--clock cpu` the thread's CPU
time) over `--repeats` calls, for the raw
policy (the double GNN's action comparison only) and with the guard (plus the cheap baselines), taking
turns in ten rounds, so that a shared machine's slow spells hit both alike. Then the p50 of each stage
of a raw decision on its own (graph views, network forward, decoding into requests, translating and
scoring every candidate) and of the guard's extra work.

Quality: every set-up of Figs. 4-6 (`trace_replay.scenarios.paper_setups`) for seeds 0..S-1, the
raw and the guarded policy, OFM and Optimal, each called on the set-up's scenario as dm-bench calls
it; per point the mean metric over the seeds (total cost, or var_ori / var_lb for load balancing)
and how often the guard fired. Training never sees these seeds (it uses seeds ≥ 1000). For load
balancing also "spread request": what the translator makes of a request without routes, every surplus
above the balanced load spread over the instances below it in proportion to their deficits
(`spread_balance`), so that the raw column's lead over it is what the network's routes add.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from gnn_policy.actions import propose, realise
from gnn_policy.agent import DeepMigration
from gnn_policy.balancing import spread, surplus_above
from gnn_policy.base import Decision, Problem, score
from gnn_policy.registry import make_policy
from gnn_policy.translator import LoadRequest
from gnn_policy.views import collate, context, views
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from trace_replay.scenarios import build_timing, paper_setups
from twin.scenario import ScenarioKind

WARM_UP_CALLS = 5
"""Calls before timing: a running controller decides again and again, so first-call allocations and cold
caches are not what it pays."""


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
"""`--clock`: wall time, or the CPU time of the calling thread. With one torch thread a decision runs on the
calling thread alone, so its CPU time is what it would take on an idle machine, less the shared caches: on a
loaded 2-core machine the wall time measures the other jobs (and two torch threads wait for each other)."""
clock = CLOCKS["wall"]


def call_times_ms(call, repeats: int, warm_up: int = WARM_UP_CALLS) -> np.ndarray:
    for _ in range(warm_up):
        call()
    times = []
    for _ in range(repeats):
        begin = clock()
        call()
        times.append(clock() - begin)
    return np.array(times) * 1000.0


def interleaved_times_ms(calls: dict, repeats: int, rounds: int = 10) -> dict[str, np.ndarray]:
    """`repeats` timed calls of each of `calls`, in `rounds` rounds that take turns."""
    for call in calls.values():
        call_times_ms(call, 0)
    times: dict[str, list] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            times[label].extend(call_times_ms(call, max(1, repeats // rounds), warm_up=0))
    return {label: np.array(values) for label, values in times.items()}


def stages(policy: DeepMigration, problem: Problem) -> dict:
    """Each stage of `DeepMigration._decide` as a call of its own, on the same inputs the decision uses."""
    graph_views = views(problem)
    graph, thresholds = collate([view.graph for view in graph_views]), context([problem.thresholds])
    with torch.inference_mode():
        requests = [r for pair in propose(policy.net, graph_views, [problem.thresholds] * len(graph_views))
                    for r in pair]
    actions = [realise(problem, r) for r in requests]

    def forward():
        with torch.inference_mode():
            policy.net(graph, thresholds)

    def network_and_decoding():
        with torch.inference_mode():
            propose(policy.net, graph_views, [problem.thresholds] * len(graph_views))
    return {
        "graph views": lambda: views(problem),
        "network": forward,
        "network + decoding": network_and_decoding,
        f"translate x{len(requests)}": lambda: [realise(problem, r) for r in requests],
        f"score x{len(actions)}": lambda: [score(problem, Decision(a)) for a in actions],
        "guard (baselines + score)": lambda: policy.best_baseline(problem),
    }


def spread_balance(problem: Problem) -> Decision:
    """The load balancing of a request without routes: each active instance's surplus above the balanced load
    spread over the instances below it in proportion to their deficits (`fit_to_balance` routes an instance
    the request leaves out this way)."""
    state = problem.state
    surplus = surplus_above(state.load_pps, state.capacity, state.active, problem.scenario.cluster_utilisation)
    return Decision(realise(problem, LoadRequest(spread(surplus))))


def metric(problem: Problem, decision) -> float:
    """dm-bench's metric: var_ori / var_lb for load balancing, the total cost otherwise (NaN if unusable)."""
    outcome = score(problem, decision)
    if not (decision.feasible and outcome.valid):
        return float("nan")
    if problem.scenario.kind is ScenarioKind.LOAD_BALANCE:
        return outcome.breakdown.variance_ratio
    return outcome.breakdown.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="policy weights (default: the shipped checkpoint)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3, help="quality on seeds 0..S-1")
    parser.add_argument("--optimal-time-limit", type=float, default=10.0, help="0 leaves Optimal out")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall time, or the calling thread's CPU time (with --threads 1: see CLOCKS)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    table = read_flows(sample_path())
    raw = DeepMigration.load(args.checkpoint, guard=False)
    guarded = DeepMigration.load(args.checkpoint)

    setup = build_timing(table, n_instances=40, seed=0)
    problem = Problem.of(setup.state, setup.thresholds).as_scenario(ScenarioKind.LOAD_BALANCE)
    print(
        f"decision time ({args.clock}), load balancing, N = 40, {setup.state.n_flows} flows, {args.threads} threads, "
        f"{args.repeats} calls:"
    )
    timed = interleaved_times_ms({"raw": lambda: raw.decide(problem), "guarded": lambda: guarded.decide(problem)},
                                 args.repeats)
    for label, times in timed.items():
        print(f"  {label:8s} p50 {np.percentile(times, 50):6.2f} ms   p90 {np.percentile(times, 90):6.2f} ms")
    print("stages of a decision, each timed alone (p50):")
    for label, call in stages(raw, problem).items():
        print(f"  {label:26s} {np.percentile(call_times_ms(call, args.repeats), 50):6.2f} ms")
    if args.skip_quality:
        return

    others = {"ofm": make_policy("ofm")}
    if args.optimal_time_limit > 0:
        others["optimal"] = make_policy("optimal", time_limit_s=args.optimal_time_limit)
    points: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    fired: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for seed in range(args.seeds):
        for s in paper_setups(table, seed=seed):
            problem = Problem.of(s.state, s.thresholds).as_scenario(s.expected_kind)
            values = points[(s.experiment, s.threshold if s.experiment != "lb" else None, s.setting)]
            before = guarded.guard_fired
            values["raw"].append(metric(problem, raw.decide(problem)))
            values["guarded"].append(metric(problem, guarded.decide(problem)))
            fired[s.experiment][0] += guarded.guard_fired - before
            fired[s.experiment][1] += 1
            for name, policy in others.items():
                values[name].append(metric(problem, policy.decide(problem)))
            if problem.scenario.kind is ScenarioKind.LOAD_BALANCE:
                values["spread request"].append(metric(problem, spread_balance(problem)))
    names = ["raw", "guarded", *others, "spread request"]
    print(
        f"\nquality on the paper's set-ups, seeds 0..{args.seeds - 1} (mean; cost, or var_ori/var_lb for lb):"
    )
    print("| experiment | threshold | setting | " + " | ".join(names) + " | "
          + " | ".join(f"{mine} / {ref}" for mine in ("raw", "guarded") for ref in others) + " |")
    print("|---" * (len(names) + 2 * len(others) + 3) + "|")
    for (experiment, threshold, setting), values in points.items():
        means = {name: float(np.mean(values[name])) if values[name] else float("nan") for name in names}
        print(f"| {experiment} | {'' if threshold is None else f'{threshold:.0%}'} | {setting} | "
              + " | ".join(f"{means[name]:.4g}" for name in names)
              + " | " + " | ".join(f"{means[mine] / means[ref]:.3f}" for mine in ("raw", "guarded") for ref in others)
              + " |")
    print(
        "\nguard fired (guarded policy): "
        + ", ".join(f"{experiment} {n}/{total}" for experiment, (n, total) in fired.items())
    )


if __name__ == "__main__":
    main()
