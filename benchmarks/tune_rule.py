"""Tune `deepmigration-rule`'s target utilisation on validation windows only (seeds 100-199).

    PYTHONPATH=. python benchmarks/tune_rule.py [--seed 100] [--episodes 8] [--periods 30] [--hold]

Runs the closed loop (no stabilizer) of `RuleMigration(target)` for each target of the grid on the validation
windows of `--seed` and prints the mean total_cost per target; `gnn_policy.rule_policy.RULE_TARGET` is the
lowest. docs/agent.md ("Ablations") records the run. `--hold` instead runs the rule at `RULE_TARGET` holding
(doing nothing) on chosen scenarios: what the closed-loop control head could learn (docs/agent.md, "Results");
`--hold-grid` runs the rule holding on both, at each target of the grid; `gnn_policy.rule_policy.HOLD_TARGET`
(`deepmigration-rule-hold`'s target) is its lowest.
"""
from __future__ import annotations

import argparse
import statistics

from gnn_policy.bench import loop
from gnn_policy.rule_policy import RULE_TARGET, HoldingRule, RuleMigration
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.scenario import ScenarioKind

HOLDS = {"load balancing": {ScenarioKind.LOAD_BALANCE}, "scale-in": {ScenarioKind.SCALE_IN},
         "both": {ScenarioKind.LOAD_BALANCE, ScenarioKind.SCALE_IN}}


GRID = (0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--periods", type=int, default=30)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--standby", type=int, default=2)
    parser.add_argument("--hold", action="store_true", help="the rule at RULE_TARGET holding on some scenarios")
    parser.add_argument("--hold-grid", action="store_true",
                        help="the rule holding on load balancing and scale-in, at each target of the grid")
    args = parser.parse_args()
    if not 100 <= args.seed <= 199:
        parser.error("tune on validation windows only: --seed must be in 100-199")
    setup = loop.LoopSetup(episodes=args.episodes, periods=args.periods, instances=args.instances,
                           standby=args.standby, seed=args.seed)
    batch = loop.build(sample_path(), read_flows(sample_path()), setup)
    width = 22 if args.hold else 6
    if args.hold:
        rules = {f"hold on {name}": HoldingRule(RULE_TARGET, kinds) for name, kinds in HOLDS.items()}
    elif args.hold_grid:
        rules = {f"{target:6.3f}": HoldingRule(target, HOLDS["both"]) for target in GRID}
    else:
        rules = {f"{target:6.3f}": RuleMigration(target) for target in GRID}
    print(f"{'rule' if args.hold else 'target':>{width}}  total_cost (mean over episodes)  migrations  instance_s")
    for label, rule in rules.items():
        (run,) = loop.run(batch, {"rule": rule}, (None,))
        mean = {m: statistics.fmean(r[m] for r in run.records) for m in ("total_cost", "migrations", "instance_s")}
        print(f"{label:>{width}}  {mean['total_cost']:33,.0f}  {mean['migrations']:10.1f}  {mean['instance_s']:10.1f}")


if __name__ == "__main__":
    main()
