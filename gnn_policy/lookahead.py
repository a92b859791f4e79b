"""Look-ahead (issue 19, section 5; `002_90c4d10f2b539789.txt`, eq. (15)-(16)): before acting, score a few
candidate actions k periods ahead with the learned dynamics and carry out the one with the lowest predicted
cost.

The dynamics are the residual twin's own rollout (`twin.residual.twin.ResidualTwin.score_actions`): each
candidate is carried out on the measured state now, then k − 1 periods pass without action, every state
after the first predicted by the network from its own predictions. Nothing else is read: the wrapper sees
the `Problem` a policy sees (the measured state), never an episode's recorded future or a trace.

A candidate's predicted cost is the closed loop's period cost (`twin.migration.CostBreakdown`: eq. (2) and
C_R of the action now) plus the cost model's ω penalties (`twin.cost.threshold_penalty`) of each of the k
periods on the predicted utilisation (`Scores.threshold_penalty`), so every candidate is charged the same
way; the first period's ω is the breakdown's own. The twin is asked for that utilisation alone
(`queues=False`), so the members of its network that predict only queues and drops are not run. Ties go to
the earlier candidate, the wrapped policy's action first; a candidate that is the same action as an earlier
one is not scored again.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from gnn_policy.base import Decision, Policy, Problem, Scored, score
from gnn_policy.rule_policy import RULE_TARGET, RuleMigration
from twin.migration import IndexedAction
from twin.residual.twin import ResidualTwin, Scores
from twin.scenario import ScenarioKind

POLICY, NOTHING, RULE = "policy", "nothing", "rule"
CANDIDATES = (POLICY, NOTHING, RULE)
"""The shipped candidate set, chosen on validation windows (docs/agent.md, "Look-ahead")."""
HORIZON = 3
"""The shipped k, chosen on validation windows (docs/agent.md, "Look-ahead")."""
LOOKAHEAD_TWIN = Path(__file__).resolve().parent / "data" / "lookahead_twin.pt"
"""The residual twin the look-ahead scores with: the 3-state-history fit, chosen on the look-ahead's own
validation windows (docs/agent.md, "Look-ahead"). The fidelity benchmark's shipped twin
(`twin/data/residual.pt`, chosen on one-period prediction error) decides worse there."""


class LookAheadError(ValueError):
    """A look-ahead set-up that cannot work (k, candidate names); the message names the problem."""


def parse_candidate(name: str) -> tuple[str, float | None]:
    """`policy`, `nothing`, `rule` (the rule at `RULE_TARGET`) or `rule:T` (the rule at target T)."""
    if name in (POLICY, NOTHING):
        return name, None
    if name == RULE:
        return RULE, RULE_TARGET
    if name.startswith(RULE + ":"):
        try:
            target = float(name[len(RULE) + 1:])
        except ValueError:
            target = float("nan")
        if 0.0 < target <= 1.0:
            return RULE, target
    raise LookAheadError(f"unknown look-ahead candidate {name!r}; known: policy, nothing, rule, rule:T "
                         f"(T a target utilisation in (0, 1])")


class LookAhead(Policy):
    """`policy` with its action checked against other candidates by the residual twin's k-period rollout."""

    name: ClassVar[str] = "deepmigration-lookahead"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(
        {ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN, ScenarioKind.LOAD_BALANCE})

    def __init__(self, policy: Policy, twin: ResidualTwin, k: int = HORIZON,
                 candidates: Sequence[str] = CANDIDATES):
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise LookAheadError(f"the look-ahead horizon k must be an integer >= 1, got {k!r}")
        if not candidates:
            raise LookAheadError("the look-ahead needs at least one candidate")
        self.policy, self.twin, self.k = policy, twin, k
        self.candidates = tuple(candidates)
        self._rules = {name: RuleMigration(target) for name in self.candidates
                       for kind, target in [parse_candidate(name)] if kind == RULE}
        self.chosen: Counter[str] = Counter()
        """How often each candidate won (for the benchmark's notes)."""

    @classmethod
    def load(cls, policy: Policy, model: str | os.PathLike | None = None, **kwargs) -> LookAhead:
        """`policy` with the residual twin stored at `model` (`LOOKAHEAD_TWIN` when None); a checkpoint of
        another format or version raises `twin.residual.checkpoint.ResidualCheckpointError` naming it."""
        return cls(policy, ResidualTwin.load(LOOKAHEAD_TWIN if model is None else model), **kwargs)

    def _decide(self, problem: Problem) -> Decision:
        if problem.scenario.kind not in self.policy.handles:
            return self.policy.decide(problem)
        usable: list[tuple[str, Scored]] = []
        for label in self.candidates:
            outcome = self._candidate(label, problem)
            if outcome is not None and not any(_same(outcome.decision.action, o.decision.action) for _, o in usable):
                usable.append((label, outcome))
        if not usable:
            return Decision.infeasible("look-ahead: no candidate action is valid")
        scores = self.twin.score_actions(problem.state, [o.decision.action for _, o in usable], self.k,
                                         queues=False)
        costs = predicted_costs([o for _, o in usable], scores)
        best = int(np.argmin(costs))
        label, outcome = usable[best]
        self.chosen[label] += 1
        return Decision(outcome.decision.action,
                        reason=f"look-ahead k={self.k}: {label} (predicted {costs[best]:,.0f}); "
                               f"{outcome.decision.reason}")

    def _candidate(self, label: str, problem: Problem) -> Scored | None:
        """The candidate's decision on `problem`, scored now; None when it is infeasible or invalid."""
        if label == POLICY:
            decision = self.policy.decide(problem)
        elif label == NOTHING:
            decision = Decision(IndexedAction(), reason="do nothing")
        else:
            decision = self._rules[label].decide(problem)
        if not decision.feasible:
            return None
        outcome = score(problem, decision)
        return outcome if outcome.valid else None


def _same(a: IndexedAction, b: IndexedAction) -> bool:
    """Two candidates that are one action are scored once (under the earlier one's label)."""
    return all(np.array_equal(x, y) for x, y in ((a.flows, b.flows), (a.dst, b.dst), (a.start, b.start),
                                                 (a.stop, b.stop)))


def predicted_costs(outcomes: Sequence[Scored], scores: Scores) -> np.ndarray:
    """[C] each valid candidate's eq. (2) + C_R now plus the ω penalties of the k predicted periods."""
    now = np.array([o.breakdown.migration + o.breakdown.resource for o in outcomes], dtype=float)
    return now + scores.threshold_penalty.sum(axis=1)
