"""Random scale-in (section VI.B): drain underloaded instances onto randomly chosen instances.

For each underloaded instance, coldest first, each of its flows goes to an active instance drawn
uniformly among those that are not draining and still fit the flow (below Th_high after the move
and within the buffer, constraint (5)). Draining instances are the underloaded instances still
waiting for their turn and the ones already stopped; an underloaded instance that could not be
drained becomes an ordinary destination for the later ones. When every flow found a home the
instance is stopped; when one did not, the instance's moves are undone and it keeps its flows. Draws come from one numpy
Generator seeded in the constructor: the same seed and the same sequence of problems give the
same decisions.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.plan import Plan
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind


class RandomScaleIn(Policy):
    name: ClassVar[str] = "random"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset({ScenarioKind.SCALE_IN})

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def _decide(self, problem: Problem) -> Decision:
        state, high = problem.state, problem.thresholds.high
        cold = [s for s in problem.scenario.underloaded if state.active[s]]
        if not cold:
            return Decision(IndexedAction(), reason="random: no underloaded instance, nothing to do")
        plan = Plan(state)
        waiting = np.zeros(state.n_instances, dtype=bool)
        waiting[cold] = True
        kept: list[str] = []
        for s in cold:
            sid = state.instance_ids[s]
            waiting[s] = False
            assert not plan.received[s], sid  # waiting instances receive nothing
            if plan.active.sum() <= 1:
                kept.append(f"{sid} is the last active instance")
                continue
            checkpoint = plan.checkpoint()
            homeless = ""
            for f in plan.movable_flows(s).tolist():
                dst = np.flatnonzero(plan.active & ~waiting)
                dst = dst[dst != s]
                packets = plan.buffer_packets(np.full(dst.size, f), dst)
                fits_load = plan.utilisation_after(dst, state.rate[f]) < high
                fits = np.flatnonzero(fits_load & plan.buffer_fits(dst, packets))
                if fits.size == 0:
                    homeless = f"flow {state.flow_ids[f]} of {sid} fits no instance: " + (
                        "no buffer room (constraint 5)" if fits_load.any() else f"none stays below Th_high {high:.2f}")
                    break
                k = int(fits[self.rng.integers(fits.size)])
                plan.move(f, int(dst[k]), float(packets[k]))
            if homeless:
                plan.rollback(checkpoint)
                kept.append(homeless)
            else:
                plan.stop(s)
        if plan.n_stops == 0:
            return Decision.infeasible("random: no underloaded instance can be drained: " + "; ".join(kept))
        return Decision(plan.action(), reason="; ".join(kept))
