"""Choose the look-ahead's horizon k and candidate set on validation windows only (sample seeds 100-199).

    PYTHONPATH=. python benchmarks/tune_lookahead.py [--seed 100] [--episodes 4] [--periods 30]

Runs the closed loop (no stabilizer) of `deepmigration`, `deepmigration-rule` and of `LookAhead(deepmigration, shipped residual
twin, k, candidates)` for every k of `--k` and candidate set of `--sets` on the validation windows of `--seed`,
and prints each one's mean metrics over the episodes and how often each candidate won.
`gnn_policy.lookahead.HORIZON` and `CANDIDATES` are the lowest total_cost; docs/agent.md ("Look-ahead")
records the run.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from collections import Counter

from gnn_policy.agent import DeepMigration
from gnn_policy.bench import loop
from gnn_policy.lookahead import LOOKAHEAD_TWIN, LookAhead, parse_candidate
from gnn_policy.rule_policy import RuleMigration
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.residual.twin import ResidualTwin

METRICS = ("total_cost", "migrations", "sla_violation_flow_s", "packets_dropped", "instance_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--periods", type=int, default=30)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--standby", type=int, default=2)
    parser.add_argument("--k", default="1,2,3,5", help="comma-separated horizons")
    parser.add_argument("--sets", default="policy+nothing;policy+nothing+rule;policy+nothing+rule+rule:0.3",
                        help="candidate sets: names joined by +, sets by ;")
    args = parser.parse_args()
    if not 100 <= args.seed <= 199:
        parser.error("tune on validation windows only: --seed must be in 100-199")
    horizons = [int(k) for k in args.k.split(",")]
    sets = [tuple(s.split("+")) for s in args.sets.split(";")]
    for names in sets:
        for name in names:
            parse_candidate(name)
    setup = loop.LoopSetup(episodes=args.episodes, periods=args.periods, instances=args.instances,
                           standby=args.standby, seed=args.seed)
    batch = loop.build(sample_path(), read_flows(sample_path()), setup)
    policy, twin = DeepMigration.load(None, seed=args.seed), ResidualTwin.load(LOOKAHEAD_TWIN)
    prototypes = {"deepmigration": policy, "deepmigration-rule": RuleMigration()}
    prototypes.update({f"k={k} {'+'.join(names)}": LookAhead(policy, twin, k, names)
                       for k in horizons for names in sets})
    print(f"{'variant':44s}" + "".join(f"{m:>22s}" for m in METRICS) + "  chosen")
    for name, prototype in prototypes.items():
        chosen: Counter[str] = Counter()
        (run,) = loop.run(batch, {name: _counting(prototype, chosen)}, (None,))
        means = [statistics.fmean(r[m] for r in run.records) for m in METRICS]
        print(f"{name:44s}" + "".join(f"{v:22,.1f}" for v in means) + f"  {dict(chosen)}", flush=True)


def _counting(prototype, chosen: Counter):
    """`prototype`, whose per-episode copies add their winners to `chosen` when deep-copied by `loop.run`."""
    if not isinstance(prototype, LookAhead):
        return prototype

    class Counting(LookAhead):
        def __deepcopy__(self, memo):
            fresh = LookAhead(copy.deepcopy(self.policy, memo), self.twin, self.k, self.candidates)
            fresh.chosen = chosen
            return fresh

    return Counting(prototype.policy, prototype.twin, prototype.k, prototype.candidates)


if __name__ == "__main__":
    main()
