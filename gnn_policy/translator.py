"""The policy translator of section IV: from loads on the GNN's edges to concrete flow migrations.

The GNN speaks in loads (packets/s from instance i to instance j, and "empty instance v" for the
scale-in graph); the cluster needs flows. For each edge, largest request first, the translator
takes flows of the source in order of eq. (2) cost per packet/s moved (so flows that keep their
SLA at the destination and large flows come first: fewer moves for the same load) and keeps a
flow only while it brings the moved load closer to the request. Every move goes through the
baselines' `Plan` bookkeeping, so:

* constraint (4): a flow moves at most once, never to its own instance, only to an active or
  freshly started instance; an instance is stopped only once all its flows have left;
* constraint (5): a flow moves only when its buffered packets fit the destination's buffer on top
  of its queue and of what earlier moves put there (`twin.cost.migrated_buffer_packets`).

A drain that cannot place every flow is undone, so an instance is never stopped half-full.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gnn_policy.baselines._plan import Plan
from twin import cost
from twin.migration import IndexedAction
from twin.params import CostParams
from twin.state import ClusterState


@dataclass(frozen=True)
class LoadRequest:
    """What the GNN asks for, in the state's instance indices."""

    amounts: np.ndarray
    """[N, N] packets/s to migrate from instance i (row) to instance j (column); the diagonal is ignored."""
    drains: tuple[tuple[int, int], ...] = field(default=())
    """(v, d): move every flow of v, to d where it fits and elsewhere otherwise, then stop v."""


def translate(state: ClusterState, request: LoadRequest, params: CostParams = CostParams()) -> IndexedAction:
    """The flow-level action that realises `request` as closely as constraints (4)-(5) allow."""
    n = state.n_instances
    if np.shape(request.amounts) != (n, n):
        raise ValueError(f"amounts have shape {np.shape(request.amounts)}, expected {(n, n)} for this state")
    plan = Plan(state)
    draining = np.zeros(n, dtype=bool)
    draining[[v for v, _ in request.drains]] = True
    for v, d in request.drains:
        _drain(plan, v, d, draining)
    amounts = np.where(np.eye(n, dtype=bool) | draining[None, :], 0.0, np.asarray(request.amounts, dtype=float))
    for s in np.argsort(-amounts.sum(axis=1), kind="stable").tolist():
        for r in np.argsort(-amounts[s], kind="stable").tolist():
            if amounts[s, r] <= 0.0:
                break
            _fill(plan, s, r, amounts[s, r], params)
    return plan.action()


def _fill(plan: Plan, s: int, r: int, amount: float, params: CostParams) -> None:
    """Move flows of `s` to `r`, cheapest per packet/s first, while each brings the total closer to `amount`."""
    state = plan.state
    flows = plan.movable_flows(s)
    if flows.size == 0:
        return
    dst = np.full(flows.size, r)
    rate = state.rate[flows]
    per_load = np.divide(cost.flow_migration_cost(state, flows, dst, params), rate,
                         out=np.full(flows.size, np.inf), where=rate > 0)
    packets = plan.buffer_packets(flows, r)
    remaining = amount
    for k in np.lexsort((flows, per_load)).tolist():
        if rate[k] <= 0.0 or rate[k] >= 2.0 * remaining or not plan.buffer_fits(r, packets[k]):
            continue
        if not plan.active[r]:
            plan.start(r)
        plan.move(int(flows[k]), r, float(packets[k]))
        remaining -= rate[k]


def _drain(plan: Plan, v: int, preferred: int, draining: np.ndarray) -> None:
    """Empty and stop `v`: each flow, largest first, to `preferred` or else to the emptiest instance that fits."""
    state = plan.state
    if not plan.active[v]:
        return
    homes = np.flatnonzero(plan.active & ~draining)
    if homes.size == 0:
        return
    checkpoint = plan.checkpoint()
    flows = plan.movable_flows(v)
    for f in flows[np.lexsort((flows, -state.rate[flows]))].tolist():
        homes = np.flatnonzero(plan.active & ~draining)
        homes = homes[np.lexsort((homes, plan.utilisation[homes], homes != preferred))]
        packets = plan.buffer_packets(np.full(homes.size, f), homes)
        fits = np.flatnonzero(plan.buffer_fits(homes, packets))
        if fits.size == 0:
            plan.rollback(checkpoint)
            return
        plan.move(f, int(homes[fits[0]]), float(packets[fits[0]]))
    plan.stop(v)
