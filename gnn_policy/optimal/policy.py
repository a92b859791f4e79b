"""`Optimal`: the policy that solves problem (3)-(6) with HiGHS, never worse than its warm-start policies."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.optimal.answers import Candidate, Report, evaluate
from gnn_policy.optimal.balancing import LoadBalancing
from gnn_policy.optimal.scaling import solve_scaling
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind


class Optimal(Policy):
    """Problem (3)-(6) solved with HiGHS, warm-started from the best answer of the given policies.

    `time_limit_s` bounds the whole decision (warm-start policies included); when it is reached the
    best answer found is returned and `reason` says so. Load balancing is lexicographic with a tolerance:
    variances within `variance_gap` of the certified improvement (var_ori − bound) count as equal, and the
    cheapest of them is sought; flows below `integral_share` of their instance's capacity are fractional in
    the relaxation that bounds the variance (docs/optimal.md).
    """

    name: ClassVar[str] = "optimal"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(
        {ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN, ScenarioKind.LOAD_BALANCE})

    def __init__(self, warm_start: Sequence[Policy] = (), time_limit_s: float = 10.0, *, threads: int = 1,
                 seed: int = 0, variance_gap: float = 0.01, integral_share: float = 0.05):
        if not time_limit_s > 0:
            raise ValueError(f"time limit must be positive, got {time_limit_s}")
        if not 0 < variance_gap < 1:
            raise ValueError(f"variance gap must lie in (0, 1), got {variance_gap}")
        self.warm_start = tuple(warm_start)
        self.time_limit_s = float(time_limit_s)
        self.threads = int(threads)
        self.seed = int(seed)
        self.variance_gap = float(variance_gap)
        self.integral_share = float(integral_share)

    def _decide(self, problem: Problem) -> Decision:
        began = time.perf_counter()
        deadline = began + self.time_limit_s
        load_balance = problem.scenario.kind is ScenarioKind.LOAD_BALANCE
        report = Report()
        candidates = self._warm_starts(problem, report)
        try:
            if load_balance:
                solve = LoadBalancing(self.variance_gap, self.integral_share, self.threads, self.seed).solve
                decision = solve(problem, candidates, deadline, report)
            else:
                decision = solve_scaling(problem, candidates, deadline, report, self.threads, self.seed)
        except Exception as error:  # noqa: BLE001 - the solver must never take the controller down
            report.add(f"solver failed ({type(error).__name__}: {error}); best warm start returned")
            decision = self._fallback(problem, candidates, load_balance, report)
        elapsed = time.perf_counter() - began
        reason = "; ".join(([decision.reason] if decision.reason else []) + report.notes + [f"{elapsed:.2f} s"])
        if report.timed_out:
            reason = f"time limit {self.time_limit_s:g} s reached, best answer found returned; " + reason
        return Decision(decision.action, decision.feasible, reason, decision.proven_optimal, decision.optimal_gap)

    def _warm_starts(self, problem: Problem, report: Report) -> list[Candidate]:
        candidates = [evaluate(problem, IndexedAction(), "no-op")]
        for policy in self.warm_start:
            try:
                decision = policy.decide(problem)
            except Exception as error:  # noqa: BLE001 - a failing baseline is skipped, never propagated
                report.add(f"warm start {policy.name} raised {type(error).__name__}")
                continue
            if not decision.feasible:
                continue
            candidate = evaluate(problem, decision.action, policy.name)
            if candidate is None:
                report.add(f"warm start {policy.name} gave an invalid action")
            else:
                candidates.append(candidate)
        return [c for c in candidates if c is not None]

    def _fallback(self, problem: Problem, candidates: list[Candidate], load_balance: bool,
                  report: Report) -> Decision:
        if not candidates:
            return Decision.infeasible("no valid action found: " + "; ".join(report.notes))
        best = min(candidates, key=lambda c: c.key(load_balance))
        return Decision(best.action, proven_optimal=False, optimal_gap=None)
