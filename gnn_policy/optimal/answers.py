"""Optimal's answers: candidate actions scored by the shared cost model, the notes of a decision and the
certified gap."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from gnn_policy.base import Decision, Problem, score
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind


@dataclass(frozen=True)
class Candidate:
    """An action together with what the shared cost model says about it; `source` names who proposed it."""

    action: IndexedAction
    source: str
    total: float
    """Everything `apply` charges: the objective of scale-out and scale-in."""
    migration: float
    """Eq. (3): the migration cost alone, the secondary objective of load balancing."""
    variance: float

    def key(self, load_balance: bool) -> tuple[float, float]:
        return (self.variance, self.migration) if load_balance else (self.total, self.variance)


def evaluate(problem: Problem, action: IndexedAction, source: str) -> Candidate | None:
    """`action` scored by the cost model; None when `apply` rejects it."""
    outcome = score(problem, Decision(action))
    if not outcome.valid:
        return None
    breakdown = outcome.breakdown
    return Candidate(action, source, breakdown.total, breakdown.migration, breakdown.variance_after)


def checked(problem: Problem, action: IndexedAction, source: str) -> Candidate:
    """A solver answer scored by the cost model; one that `apply` rejects means the model is wrong."""
    candidate = evaluate(problem, action, source)
    if candidate is None:
        raise RuntimeError(f"{source}: a HiGHS answer fails twin.migration.apply; the model disagrees with it")
    return candidate


def improvement_gap(incumbent: float, bound: float, do_nothing: float) -> float:
    """Share of the best possible improvement over doing nothing that is not certified (docs/optimal.md).

    It is the usual relative gap of the equivalent maximisation "improve on doing nothing"; unlike
    |incumbent − bound| / |incumbent| it does not depend on where zero lies (scale-in totals are
    negative, load-balancing variances can be almost zero).
    """
    if not math.isfinite(bound):
        return 1.0
    achievable = do_nothing - bound
    if achievable <= 1e-12 * max(1.0, abs(do_nothing)):
        return 0.0
    return float(min(1.0, max(0.0, incumbent - bound) / achievable))


@dataclass
class Report:
    """What a decision's `reason` tells: notes of each step, and whether a solve stopped at its time limit."""

    notes: list[str] = field(default_factory=list)
    timed_out: bool = False

    def add(self, note: str) -> None:
        self.notes.append(note)


def nothing_movable(problem: Problem, candidates: list[Candidate], n_movable: int, report: Report) -> Decision:
    """No flow of the restricted problem fits any destination: infeasible unless a warm start found a move."""
    moves = [c for c in candidates if c.source != "no-op"]
    if moves:
        best = min(moves, key=lambda c: c.key(problem.scenario.kind is ScenarioKind.LOAD_BALANCE))
        report.add(f"the restricted problem has no move; answer from {best.source}, optimality not proven")
        return Decision(best.action, proven_optimal=False, optimal_gap=None)
    if n_movable == 0:
        return Decision.infeasible("optimal: no flow may move in this scenario (no instance to relieve holds flows)")
    return Decision.infeasible(f"optimal: none of the {n_movable} movable flows fits the buffer of any eligible "
                               "destination (constraint 5)")
