"""DeepMigration: the trained GN policy in deterministic mode, with the action comparison and the baseline guard.

The GNN runs on all graphs of `gnn_policy.views.views` (the current one and the double GNN's modified ones) in
one batch, proposes two actions per graph (`gnn_policy.actions.propose`), and the action comparison keeps the
best under the scenario's figure of merit (`gnn_policy.actions.objective`). A guard then compares with the
cheap baselines on the same state (`DeepMigration.best_baseline`) and returns the best baseline's action if it
is better; `guard_fired` counts how often.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from gnn_policy import checkpoint
from gnn_policy.actions import objective, propose, realise
from gnn_policy.base import Decision, Policy, Problem, Scored, score
from gnn_policy.baselines import OFM, RandomScaleIn, SizeGreedy
from gnn_policy.gn import GNPolicyNet
from gnn_policy.views import views
from twin.scenario import ScenarioKind


class DeepMigration(Policy):
    """The trained GN policy in deterministic mode, with the action comparison and the baseline guard."""

    name: ClassVar[str] = "deepmigration"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(
        {ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN, ScenarioKind.LOAD_BALANCE})

    def __init__(self, net: GNPolicyNet, *, seed: int = 0, guard: bool = True):
        self.net = net.eval()
        self.guard = guard
        # Decisions where a cheap baseline beat the GNN's action and was returned instead.
        self.guard_fired = 0
        self.decisions = 0
        self._baselines: dict[ScenarioKind, tuple[Policy, ...]] = {
            ScenarioKind.SCALE_OUT: (OFM(), SizeGreedy()),
            ScenarioKind.SCALE_IN: (OFM(), RandomScaleIn(seed=seed)),
            ScenarioKind.LOAD_BALANCE: (OFM(),),
        }

    @classmethod
    def load(cls, path: str | None = None, *, seed: int = 0, guard: bool = True) -> DeepMigration:
        """The policy stored at `path`; None loads the checkpoint shipped in `gnn_policy/data/`."""
        net, _ = checkpoint.load(path)
        return cls(net, seed=seed, guard=guard)

    def _decide(self, problem: Problem) -> Decision:
        self.decisions += 1
        kind = problem.scenario.kind
        graph_views = views(problem)
        with torch.inference_mode():
            proposals = propose(self.net, graph_views, [problem.thresholds] * len(graph_views))
        candidates = [score(problem, Decision(realise(problem, request),
                                              reason=f"deepmigration: {v.label} graph, {how}"))
                      for v, requests in zip(graph_views, proposals)
                      for request, how in zip(requests, ("most likely levels", "mean levels"))]
        best = min((c for c in candidates if c.valid), key=lambda c: objective(kind, c.breakdown))
        if not self.guard:
            return best.decision
        fallback = self.best_baseline(problem)
        if fallback is not None and objective(kind, fallback.breakdown) < objective(kind, best.breakdown):
            self.guard_fired += 1
            return Decision(fallback.decision.action,
                            reason=f"deepmigration guard: {fallback.decision.reason or 'a baseline'} was better")
        return best.decision

    def best_baseline(self, problem: Problem) -> Scored | None:
        """The guard's yardstick: the best valid action of the cheap baselines for this scenario, scored."""
        kind = problem.scenario.kind
        outcomes = []
        for policy in self._baselines[kind]:
            decision = policy.decide(problem)
            if decision.feasible:
                outcome = score(problem, Decision(decision.action, reason=policy.name))
                if outcome.valid:
                    outcomes.append(outcome)
        return min(outcomes, key=lambda o: objective(kind, o.breakdown), default=None)
