"""Size-greedy scale-out (section VI.B): the largest flows of each hot spot first, existing instances first.

For each overloaded instance, hottest first, its flows are taken largest first and each goes to
the active instance with the most room (Th_high·μ_j − load_j, in packets/s) that stays below
Th_high and within its buffer (constraint (5)) after the move. Only when no active instance
(including those this action already started) can take the flow is a standby instance started
for it. The source stops shedding flows once it is below Th_high. This maximises the load placed
on existing instances and starts as few instances as the greedy order allows.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.plan import Plan
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind


class SizeGreedy(Policy):
    name: ClassVar[str] = "size-greedy"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset({ScenarioKind.SCALE_OUT})

    def _decide(self, problem: Problem) -> Decision:
        state, high = problem.state, problem.thresholds.high
        hot = [s for s in problem.scenario.overloaded if state.active[s]]
        if not hot:
            return Decision(IndexedAction(), reason="size-greedy: no overloaded instance, nothing to do")
        plan = Plan(state)
        capacity = state.capacity
        notes: list[str] = []
        for s in hot:
            flows = plan.movable_flows(s)
            unplaced = n_buffer = 0
            for f in flows[np.lexsort((flows, -state.rate[flows]))].tolist():
                if plan.utilisation[s] < high:
                    break
                r = state.rate[f]
                # existing (and already started) instances, the one with the most room first
                dst = np.flatnonzero(plan.active)
                dst = dst[dst != s]
                packets = plan.buffer_packets(np.full(dst.size, f), dst)
                fits_load = plan.utilisation_after(dst, r) < high
                fits = fits_load & plan.buffer_fits(dst, packets)
                n_buffer += bool(fits_load.any() and not fits.any())
                if fits.any():
                    room = high * capacity[dst] - plan.load[dst]
                    k = int(np.flatnonzero(fits)[np.lexsort((dst[fits], -room[fits]))[0]])
                    plan.move(f, int(dst[k]), float(packets[k]))
                    continue
                # no existing instance fits: start the first standby instance that can take the flow
                standby = plan.standby_order(s)
                if standby.size:
                    packets = plan.buffer_packets(np.full(standby.size, f), standby)
                    fits = (plan.utilisation_after(standby, r) < high) & plan.buffer_fits(standby, packets)
                    if fits.any():
                        k = int(np.flatnonzero(fits)[0])
                        plan.start(int(standby[k]))
                        plan.move(f, int(standby[k]), float(packets[k]))
                        continue
                unplaced += 1
            if plan.utilisation[s] >= high:
                why = "no standby instance left" if plan.standby_order(s).size == 0 else "no instance fits its flows"
                notes.append(f"{state.instance_ids[s]} still at {plan.utilisation[s]:.1%} ({why}; {unplaced} flows "
                             f"unplaced, {n_buffer} of them only for lack of buffer (constraint 5))")
        if plan.n_moves == 0:
            return Decision.infeasible("size-greedy: no flow of an overloaded instance can move: " + "; ".join(notes))
        return Decision(plan.action(), reason="; ".join(notes))
