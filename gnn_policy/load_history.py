"""What the closed loop's past says about where the load goes next (docs/agent.md, "Load history for the control
head"): a policy that keeps a `LoadHistory` shows it every period's observed state and reads `features` at a
decision. Only the past is used: the features of period t come from the states observed up to t.

The rollout study found that which deviation from the hold rule pays "depends on where the load goes next"; one
state does not tell, its predecessors partly do (the trend of the cluster's load, how far it is from its recent
mean, how many flows are new, how long the scenario has lasted, how long since the policy last acted).
"""
from __future__ import annotations

import math

from gnn_policy.base import Problem
from twin.scenario import ScenarioKind

HISTORY_FEATURES = ("utilisation", "utilisation_max", "trend_1", "trend_3", "above_ewma", "arrivals",
                    "backlog", "since_action", "streak", "ewma_need")
"""`LoadHistory.features`, in order: the active instances' mean and highest utilisation; the change of the
cluster's load (share of every instance's capacity, active or not) over 1 period and per period over 3 (× 10);
its distance above the EWMA of the earlier periods (× 10); the share of flows not seen the period before;
log(1 + queued packets per packet/s of active capacity, in ms); periods since the policy last acted and periods
the current scenario has lasted (each capped at `CAP`, / `CAP`); and the instances the EWMA load needs at
Th_high less those active, per active instance."""
EWMA_WEIGHT = 0.5
"""Weight of the newest period in the EWMA of the cluster's load."""
CAP = 10


class LoadHistory:
    """The per-period record behind `HISTORY_FEATURES`; one per episode (a policy that holds one is copied
    fresh per episode by the closed-loop benchmark)."""

    def __init__(self) -> None:
        self.loads: list[float] = []
        self.kinds: list[ScenarioKind] = []
        self.flows: frozenset[str] | None = None
        self.arrivals = 0.0
        self.since_action = CAP

    def observe(self, problem: Problem) -> None:
        """Record one period's observed state; call it every period, scenario or not."""
        state = problem.state
        self.loads.append(float(state.rate.sum() / state.capacity.sum()))
        self.kinds.append(problem.scenario.kind)
        flows = frozenset(state.flow_ids)
        self.arrivals = 0.0 if self.flows is None else len(flows - self.flows) / max(1, len(flows))
        self.flows = flows
        self.since_action = min(self.since_action + 1, CAP)

    def acted(self) -> None:
        """The policy's decision this period changed the cluster."""
        self.since_action = 0

    def features(self, problem: Problem) -> list[float]:
        """`HISTORY_FEATURES` at the current period (after its `observe`)."""
        if not self.loads:
            raise ValueError("LoadHistory.features before any observe: the history has no period")
        state, loads = problem.state, self.loads
        active = state.active
        utilisation = state.utilisation[active]
        trend_1 = loads[-1] - loads[-2] if len(loads) > 1 else 0.0
        trend_3 = (loads[-1] - loads[-4]) / 3 if len(loads) > 3 else trend_1
        earlier = loads[0]
        for load in loads[:-1]:
            earlier = (1 - EWMA_WEIGHT) * earlier + EWMA_WEIGHT * load
        streak = 0
        for kind in reversed(self.kinds):
            if kind is not self.kinds[-1]:
                break
            streak += 1
        ewma = (1 - EWMA_WEIGHT) * earlier + EWMA_WEIGHT * loads[-1]
        n_active = int(active.sum())
        needed = math.ceil(ewma * state.capacity.sum() / (problem.thresholds.high * state.capacity[active].mean())
                           - 1e-9)
        backlog_ms = 1000.0 * float(state.queue[active].sum() / state.capacity[active].sum())
        return [float(utilisation.mean()), float(utilisation.max()), 10 * trend_1, 10 * trend_3,
                10 * (loads[-1] - earlier), self.arrivals, math.log1p(backlog_ms), self.since_action / CAP,
                min(streak, CAP) / CAP, (needed - n_active) / n_active]
