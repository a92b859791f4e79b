"""The policy translator of section IV: from loads on the GNN's edges to concrete flow migrations.

The GNN speaks in loads (packets/s from instance i to instance j, and "empty instance v" for the
scale-in graph); the cluster needs flows. For each sender, largest total request first, the
translator takes its flows in order of eq. (2) cost per packet/s moved (so flows that keep their
SLA at the destination and large flows come first: fewer moves for the same load), keeps a flow
only while it brings the sender's moved load closer to its total request, and sends it to one of
the sender's receivers, the one whose total requested intake it matches best. Totals rather than
single edges, so that many small edge requests still move whole flows. Every move goes through
the baselines' `Plan` bookkeeping, so:

* constraint (4): a flow moves at most once, never to its own instance, only to an active or
  freshly started instance; an instance is stopped only once all its flows have left;
* constraint (5): a flow moves only when its buffered packets fit the destination's buffer on top
  of its queue and of what earlier moves put there (`twin.cost.migrated_buffer_packets`).

A drain that cannot place every flow is undone, so an instance is never stopped half-full.
"""
from __future__ import annotations

import math
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


def translate(state: ClusterState, request: LoadRequest, params: CostParams = CostParams(),
              ceiling: float = math.inf) -> IndexedAction:
    """The flow-level action that realises `request` as closely as constraints (4)-(5) allow, never pushing a
    destination of an edge to `ceiling` utilisation or above (the agent passes Th_high: the levels are coarse,
    and an edge that overshoots must not turn its destination into a new hot spot)."""
    n = state.n_instances
    if np.shape(request.amounts) != (n, n):
        raise ValueError(f"amounts have shape {np.shape(request.amounts)}, expected {(n, n)} for this state")
    plan = Plan(state)
    draining = np.zeros(n, dtype=bool)
    draining[[v for v, _ in request.drains]] = True
    for v, d in request.drains:
        _drain(plan, v, d, draining)
    amounts = np.where(np.eye(n, dtype=bool) | draining[None, :], 0.0, np.asarray(request.amounts, dtype=float))
    intake = amounts.sum(axis=0)
    for s in np.argsort(-amounts.sum(axis=1), kind="stable").tolist():
        if amounts[s].sum() > 0.0:
            _shed(plan, s, amounts[s], intake, params, ceiling)
    return plan.action()


def _shed(plan: Plan, s: int, wanted: np.ndarray, intake: np.ndarray, params: CostParams, ceiling: float) -> None:
    """Move flows of `s` while each brings their total closer to Σ wanted, cheapest per packet/s first (priced
    at the receiver asked for most), each to one of its receivers that the flow brings closer to its total
    `intake` still asked for from all senders (else the one most short of it), below `ceiling` and within its
    buffer. Totals per sender and per receiver, rather than per edge, let many small requests (a spread-out
    mean action) still move whole flows to where they were asked for."""
    state = plan.state
    flows = plan.movable_flows(s)
    receivers = np.flatnonzero(wanted > 0.0)
    if flows.size == 0:
        return
    rate = state.rate[flows]
    main = np.full(flows.size, receivers[np.argmax(wanted[receivers])])
    per_load = np.divide(cost.flow_migration_cost(state, flows, main, params), rate,
                         out=np.full(flows.size, np.inf), where=rate > 0)
    packets = plan.buffer_packets(np.repeat(flows, receivers.size), np.tile(receivers, flows.size)).reshape(
        flows.size, receivers.size)
    # what each receiver can still take below the ceiling and in its buffer, kept up to date as flows move
    room = ceiling * state.capacity[receivers] - plan.load[receivers]
    buffer_room = state.buffer[receivers] - state.queue[receivers] - plan.incoming[receivers]
    asked = intake[receivers]
    remaining = wanted.sum()
    for k in np.lexsort((flows, per_load)).tolist():
        if remaining <= 0.0:
            break
        if rate[k] <= 0.0 or rate[k] >= 2.0 * remaining:
            continue
        fits = (rate[k] < room) & (packets[k] <= buffer_room)
        if not fits.any():
            continue
        preference = np.where(rate[k] < 2.0 * asked, 0.0, 1e18) - asked  # closer to its request, then most short
        j = int(np.argmin(np.where(fits, preference, np.inf)))
        r = int(receivers[j])
        if not plan.active[r]:
            plan.start(r)
        plan.move(int(flows[k]), r, float(packets[k, j]))
        room[j] -= rate[k]
        buffer_room[j] -= packets[k, j]
        asked[j] -= rate[k]
        intake[r] -= rate[k]
        remaining -= rate[k]


def _drain(plan: Plan, v: int, preferred: int, draining: np.ndarray) -> None:
    """Empty and stop `v`: each flow, largest first, to `preferred` while that keeps it at or below the balanced
    utilisation (all load over the capacity that stays), or else to the emptiest instance whose buffer fits."""
    state = plan.state
    if not plan.active[v]:
        return
    homes = np.flatnonzero(plan.active & ~draining)
    if homes.size == 0:
        return
    balanced = plan.load[plan.active].sum() / state.capacity[homes].sum()
    checkpoint = plan.checkpoint()
    flows = plan.movable_flows(v)
    for f in flows[np.lexsort((flows, -state.rate[flows]))].tolist():
        homes = np.flatnonzero(plan.active & ~draining)
        first = (homes == preferred) & (plan.utilisation_after(homes, state.rate[f]) <= balanced)
        homes = homes[np.lexsort((homes, plan.utilisation[homes], ~first))]
        packets = plan.buffer_packets(np.full(homes.size, f), homes)
        fits = np.flatnonzero(plan.buffer_fits(homes, packets))
        if fits.size == 0:
            plan.rollback(checkpoint)
            return
        plan.move(f, int(homes[fits[0]]), float(packets[fits[0]]))
    plan.stop(v)
