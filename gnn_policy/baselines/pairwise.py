"""Pairwise load balancing (section VI.B): the most loaded instance paired with the least loaded one.

Rounds: sort the active instances by utilisation and pair the k-th most loaded with the k-th
least loaded (disjoint pairs, k = 0, 1, ...). Within a pair, move the largest flow of the heavier
instance whose move strictly narrows the pair's utilisation gap while both instances stay inside
the pair's old utilisation interval (with equal capacities: rate < gap in load), and whose
packets fit the lighter instance's buffer (constraint (5)); repeat until no flow qualifies, then
go on to the next pair. Rounds repeat until one moves nothing. A flow moves at most once.

Every instance stays inside the interval of its pair, and pairs are disjoint, so the max-min
utilisation gap of the cluster never increases.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.plan import Plan
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind


class Pairwise(Policy):
    name: ClassVar[str] = "pairwise"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset({ScenarioKind.LOAD_BALANCE})

    def __init__(self, max_rounds: int | None = None):
        if max_rounds is not None and max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.max_rounds = max_rounds

    def _decide(self, problem: Problem) -> Decision:
        state = problem.state
        active = state.active_indices
        if active.size < 2:
            return Decision(IndexedAction(), reason="pairwise: fewer than two active instances, nothing to do")
        plan = Plan(state)
        rounds = 0
        while self.max_rounds is None or rounds < self.max_rounds:
            rounds += 1
            order = active[np.lexsort((active, -plan.utilisation[active]))]
            improved = False
            for k in range(order.size // 2):
                improved |= self._balance(plan, int(order[k]), int(order[-1 - k]))
            if not improved:
                break
        if plan.n_moves == 0:
            u = state.utilisation[active]
            if u.max() - u.min() <= 0.0:
                return Decision(IndexedAction(), reason="pairwise: load already even, nothing to do")
            return Decision.infeasible("pairwise: no flow move narrows any pair's utilisation gap within the "
                                       "destination buffers (constraint 5)")
        return Decision(plan.action(), reason=f"pairwise: {plan.n_moves} moves in {rounds} rounds")

    @staticmethod
    def _balance(plan: Plan, hi: int, lo: int) -> bool:
        """Move flows from `hi` to `lo` while a move narrows their gap; whether any moved."""
        state = plan.state
        flows = plan.movable_flows(hi)
        if flows.size == 0:
            return False
        rate = state.rate[flows]
        packets = plan.buffer_packets(flows, lo)
        order = np.lexsort((flows, -rate))           # largest first, ties to the lower flow index
        flows, rate, packets = flows[order], rate[order], packets[order]
        free = np.ones(flows.size, dtype=bool)
        moved = False
        while True:
            u_hi, u_lo = plan.utilisation[hi], plan.utilisation[lo]
            gap = u_hi - u_lo
            if gap <= 0.0:
                break
            new_hi = u_hi - rate / state.capacity[hi]
            new_lo = u_lo + rate / state.capacity[lo]
            ok = free & (new_lo <= u_hi) & (new_hi >= u_lo) & (np.abs(new_hi - new_lo) < gap)
            ok &= plan.buffer_fits(lo, packets)
            if not ok.any():
                break
            k = int(np.argmax(ok))                   # the first qualifying flow is the largest
            plan.move(int(flows[k]), lo, float(packets[k]))
            free[k] = False
            moved = True
        return moved
