"""Every period's executed action in the closed loop, one JSON line each, for `benchmarks/same_actions.py`:
do two versions of the code drive the same episodes the same way?

    PYTHONPATH=. python benchmarks/loop_actions.py OUT.jsonl [--policies deepmigration,deepmigration-lookahead] \
        [--seed 100] [--episodes 2] [--periods 15] [--instances 36] [--standby 4]

The closed loop of `dm-bench --experiment closed-loop` (no stabilizer, the fluid twin) on the sample; a line per
(policy, episode, period) in `same_actions.py`'s record shape: `experiment` "closed-loop", `seed` the episode,
`setting` the period, `scenario` what the period's problem was, and as `action` the flow ids moved and the
counts of instances started and stopped (`valid`: the twin accepted it). The default seed, 100, draws
validation windows (docs/agent.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gnn_policy.bench import loop
from gnn_policy.registry import make_policy
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--policies", default="deepmigration,deepmigration-lookahead")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--periods", type=int, default=15)
    parser.add_argument("--instances", type=int, default=36)
    parser.add_argument("--standby", type=int, default=4)
    args = parser.parse_args()
    table = read_flows(sample_path())
    setup = loop.LoopSetup(episodes=args.episodes, periods=args.periods, instances=args.instances,
                           standby=args.standby, seed=args.seed)
    batch = loop.build(sample_path(), table, setup)
    names = args.policies.split(",")
    lines = []
    for run in loop.run(batch, {name: make_policy(name) for name in names}, (None,)):
        for episode, periods in enumerate(run.periods):
            for t, period in enumerate(periods):
                lines.append({"experiment": "closed-loop", "scenario": "acted" if period.decision_ms is not None
                              else "none", "threshold": None, "setting": t, "seed": episode, "policy": run.policy,
                              "valid": not period.invalid, "proven_optimal": None,
                              "action": {"migrated": sorted(period.migrated), "started": period.started,
                                         "stopped": period.stopped}})
        costs = [record["total_cost"] for record in run.records]
        print(f"{run.policy:26s} total_cost {sum(costs):,.0f} over {len(costs)} episodes")
    args.out.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    print(f"{len(lines)} periods written to {args.out}")


if __name__ == "__main__":
    main()
