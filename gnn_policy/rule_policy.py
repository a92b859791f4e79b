"""The ablations of DeepMigration's learned part (docs/agent.md, "Ablations"): the same views, translator and
action comparison with the network's heads replaced by constants (`RuleMigration`), or the network kept with
random weights (`random_weights`).

What the network decides, and what the rule puts in its place:

* how many instances the modified graph starts or drains (the load judgment at Th_high and `drain_estimate`
  in `gnn_policy.views`): instances = ⌈load / target⌉, the load judgment with `target` in place of Th_high;
* the per-edge migration levels (a fraction of the sender's load per edge): every active instance brought to
  the same utilisation, each sender's surplus spread over the receivers in proportion to their deficit
  (`gnn_policy.balancing.spread`);
* the drain destinations (the node head): the least loaded instances that stay, in turn.

The request goes through `gnn_policy.actions.realise`, the translator every DeepMigration decision uses.
"""
from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch

from gnn_policy.actions import realise
from gnn_policy.agent import DeepMigration
from gnn_policy.balancing import spread
from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.gn import GNPolicyNet
from gnn_policy.graph import to_pyg
from gnn_policy.translator import LoadRequest
from gnn_policy.views import GraphView, drain_order, scale_in_view, scale_out_view
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind, instances_needed

RULE_TARGET = 0.05
"""The rule's target utilisation, tuned on validation episodes only (docs/agent.md, "Ablations":
`benchmarks/tune_rule.py`, seed 100)."""

class RuleMigration(Policy):
    """DeepMigration with its learned heads replaced by constants: always act, one target utilisation."""

    name: ClassVar[str] = "deepmigration-rule"
    handles: ClassVar[frozenset[ScenarioKind]] = DeepMigration.handles

    def __init__(self, target: float = RULE_TARGET):
        if not (isinstance(target, float | int) and 0.0 < target <= 1.0):
            raise ValueError(f"target utilisation must be a number in (0, 1], got {target!r}")
        self.target = float(target)

    def _decide(self, problem: Problem) -> Decision:
        return Decision(realise(problem, rule_request(problem, self.target)),
                        reason=f"deepmigration-rule: target {self.target:g}")


HOLD_KINDS = frozenset({ScenarioKind.LOAD_BALANCE, ScenarioKind.SCALE_IN})
"""Where `deepmigration-rule-hold` holds: the best of `benchmarks/tune_rule.py --hold` on validation windows."""
HOLD_TARGET = 0.3
"""`deepmigration-rule-hold`'s target utilisation: the lowest total_cost of `benchmarks/tune_rule.py --hold-grid`
on validation windows only (seed 100: 321,019 at 0.3 against 323,092 at `RULE_TARGET`; docs/agent.md)."""


class HoldingRule(RuleMigration):
    """The rule holding (doing nothing) on the scenarios in `hold`, acting at `target` on the others: the plain
    rule the closed-loop control head must beat (docs/agent.md, "Results")."""

    name: ClassVar[str] = "deepmigration-rule-hold"

    def __init__(self, target: float = HOLD_TARGET, hold: frozenset[ScenarioKind] = HOLD_KINDS):
        super().__init__(target)
        self.hold = frozenset(hold)

    def holds(self, problem: Problem) -> bool:
        return problem.scenario.kind in self.hold and not problem.forced

    def _decide(self, problem: Problem) -> Decision:
        if self.holds(problem):
            return Decision(IndexedAction(), reason="deepmigration-rule-hold: hold")
        return super()._decide(problem)


def rule_count(problem: Problem, target: float) -> int:
    """⌈load / target⌉ in instances: the load judgment (`instances_needed`) at `target` instead of Th_high."""
    thresholds = problem.thresholds
    return instances_needed(problem.state, replace(thresholds, high=target, low=min(thresholds.low, target / 2)))


def rule_view(problem: Problem, target: float) -> GraphView:
    """The graph the rule's request is on: the scenario's modified graph with `rule_count` active instances
    (instances started for a scale-out, drained for a scale-in), the current graph when that count needs no
    change of the active set."""
    state, kind = problem.state, problem.scenario.kind
    wanted = rule_count(problem, target)
    n_active = int(state.active.sum())
    ruled = replace(problem, scenario=replace(problem.scenario, instances_needed=wanted))
    view = None
    if kind is ScenarioKind.SCALE_OUT and wanted > n_active:
        view = scale_out_view(ruled)
    elif kind is ScenarioKind.SCALE_IN:
        count = min(n_active - wanted, len(problem.scenario.underloaded), n_active - 1)
        if count >= 1:
            view = scale_in_view(ruled, count, drain_order(ruled))
    return view if view is not None else GraphView(state, to_pyg(state))


def rule_request(problem: Problem, target: float) -> LoadRequest:
    """The request of `rule_view`'s graph with the constants in place of the heads: drained instances to the
    least loaded staying ones in turn, then every instance of the graph at the same utilisation."""
    view = rule_view(problem, target)
    state = view.state
    nodes = view.graph.instance_index.numpy()
    load = np.zeros(state.n_instances)
    load[nodes] = state.load_pps[nodes]
    staying = nodes[np.argsort(load[nodes], kind="stable")]
    drains = tuple((int(v), int(staying[k % staying.size])) for k, v in enumerate(view.drained))
    for v, d in drains:
        load[d] += state.load_pps[v]
    balanced = load[nodes].sum() / state.capacity[nodes].sum()
    surplus = np.zeros(state.n_instances)
    surplus[nodes] = load[nodes] - balanced * state.capacity[nodes]
    return LoadRequest(spread(surplus), drains)


def random_weights(seed: int, *, checkpoint: str | None = None, guard: bool = True) -> DeepMigration:
    """DeepMigration with the shipped network's shape and freshly initialised weights drawn from `seed`: the
    same views, translator, action comparison and guard, and control head if it has one; nothing learned."""
    from gnn_policy import checkpoint as checkpoints
    from gnn_policy.control import LoopMigration

    shipped, _ = checkpoints.load(checkpoint)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = GNPolicyNet(shipped.config)
    return LoopMigration(net, seed=seed, guard=guard)

