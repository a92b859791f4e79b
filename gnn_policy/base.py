"""The one interface every migration policy implements: baselines, the exact solver and the GN agent.

A policy receives a `Problem` (the cluster state, the detected scenario, the thresholds and the
cost parameters) and returns a `Decision`: an action in array form, or the reason why no
feasible action exists. Policies never score themselves; `score` applies the decision through
the shared cost model, which also checks constraints (4)-(5).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import ClassVar

from twin.migration import CostBreakdown, IndexedAction, InvalidAction, apply
from twin.params import CostParams, Thresholds
from twin.scenario import Scenario, ScenarioKind, detect
from twin.state import ClusterState


@dataclass(frozen=True)
class Problem:
    state: ClusterState
    scenario: Scenario
    thresholds: Thresholds
    params: CostParams = CostParams()
    budget_queue: float = 0.0
    """Q(t), the migration-budget deficit of `gnn_policy.stabilizer` (0 without one): a policy may spend
    fewer migrations when it is large."""
    forced: bool = False
    """The scenario was imposed (`as_scenario`, the paper's one-shot experiments): the policy must act on it,
    holding is not an option."""

    @classmethod
    def of(cls, state: ClusterState, thresholds: Thresholds, params: CostParams = CostParams()) -> Problem:
        """The problem the twin sees in `state`: scenario detection included."""
        return cls(state, detect(state, thresholds), thresholds, params)

    def as_scenario(self, kind: ScenarioKind) -> Problem:
        """The same state treated as another scenario (the benchmarks fix the scenario per experiment)."""
        return replace(self, scenario=replace(self.scenario, kind=kind), forced=True)


@dataclass(frozen=True)
class ControlDraw:
    """The closed-loop control head's action behind a decision (`gnn_policy.control`), as the controller records
    it (twin.records' `control_*` columns): with the state it was drawn on, what recomputing log π(a | s) under
    other weights needs (the live fine-tuning of `dm-demo --learn`)."""

    hold: bool
    target: float | None
    """The target utilisation of an act; None when holding."""
    log_prob: float
    """log π(a | s) under the weights that drew it."""

    def as_record(self) -> dict:
        return {"hold": self.hold, "target": self.target, "log_prob": self.log_prob}


@dataclass(frozen=True)
class Decision:
    action: IndexedAction
    feasible: bool = True
    reason: str = ""
    """Why the decision is infeasible, or a note on how it was reached (e.g. a solver's time limit)."""
    proven_optimal: bool | None = None
    """Exact solvers only: whether optimality was proven."""
    optimal_gap: float | None = None
    """Exact solvers only: the certified relative gap of the returned action."""
    control: ControlDraw | None = None
    """The control head's draw this decision realises (`gnn_policy.control.LoopMigration`); None otherwise."""

    @classmethod
    def infeasible(cls, reason: str) -> Decision:
        return cls(IndexedAction(), feasible=False, reason=reason)


class Policy(abc.ABC):
    """Decides migrations for the scenarios it `handles`; other scenarios get an infeasible decision."""

    name: ClassVar[str]
    handles: ClassVar[frozenset[ScenarioKind]]

    def decide(self, problem: Problem) -> Decision:
        kind = problem.scenario.kind
        if kind is ScenarioKind.NONE:
            return Decision(IndexedAction(), reason="no scenario: nothing to do")
        if kind not in self.handles:
            return Decision.infeasible(f"{self.name} does not handle {kind.value}")
        return self._decide(problem)

    @abc.abstractmethod
    def _decide(self, problem: Problem) -> Decision:
        """The decision for a scenario this policy handles."""


@dataclass(frozen=True)
class Scored:
    """A decision as the shared cost model scores it (`score`)."""

    decision: Decision
    valid: bool
    """Constraints (4)-(5) and every other check of `twin.migration.apply` hold."""
    breakdown: CostBreakdown | None
    """The cost breakdown of a valid decision; None for an invalid one."""
    error: str = ""
    """Why `apply` rejected an invalid decision."""


def score(problem: Problem, decision: Decision) -> Scored:
    """Apply a decision through the shared cost model; an invalid one is reported, never raised."""
    try:
        _, breakdown = apply(problem.state, decision.action, problem.params, problem.thresholds)
    except InvalidAction as error:
        return Scored(decision, False, None, str(error))
    return Scored(decision, True, breakdown)
