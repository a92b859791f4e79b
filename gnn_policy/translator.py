"""The policy translator of section IV: from loads on the GNN's edges to concrete flow migrations.

The GNN speaks in loads (packets/s from instance i to instance j, and "empty instance v" for the
scale-in graph); the cluster needs flows. For each sender, largest total request first, the
translator takes its flows in order of eq. (2) cost per packet/s moved (so flows that keep their
SLA at the destination and large flows come first: fewer moves for the same load), keeps a flow
while it brings the sender's moved load closer to its total request, and sends it to a receiver by
best fit: the one it fills most tightly among those whose remaining request (by all senders
together) it does not exceed, else the one asked for most. Totals rather than single edges, so that
many small edge requests still move whole flows. A sender that sheds flows and is still at or
above `ceiling` (Th_high) after its request also sheds the smallest flow that clears it: the levels
are coarse, and a hot spot left a few tenths of a point above Th_high pays the ω penalty, which
costs more than one more migration.

Load balancing (`balanced`, the balanced utilisation) aims at the balanced load itself: the request gives
the routes and the balance the amounts, and no instance ends further from the balanced load than it started
(`gnn_policy.balancing`).

Every move goes through the baselines' `Plan` bookkeeping, so:

* constraint (4): a flow moves at most once, never to its own instance, only to an active or
  freshly started instance; an instance is stopped only once all its flows have left;
* constraint (5): a flow moves only when its buffered packets fit the destination's buffer on top
  of its queue and of what earlier moves put there (`twin.cost.migrated_buffer_packets`).

A drain that cannot place every flow is undone, so an instance is never stopped half-full.

Scaling's actions are then refined (`gnn_policy.refinement.refine`): a local search on the action's total
cost that drops, redirects, exchanges and merges moves, under the same constraints.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from gnn_policy.balancing import fit_to_balance, settle, surplus_above
from gnn_policy.plan import Plan
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
              ceiling: float = math.inf, balanced: float | None = None) -> IndexedAction:
    """The flow-level action that realises `request` as closely as constraints (4)-(5) allow, never pushing a
    destination of an edge to `ceiling` utilisation or above (the agent passes Th_high: the levels are coarse,
    and an edge that overshoots must not turn its destination into a new hot spot) and, given the `balanced`
    utilisation of a load balancing, taking only the request's routes from it and leaving no instance further
    from the balanced load than it started."""
    n = state.n_instances
    if np.shape(request.amounts) != (n, n):
        raise ValueError(f"amounts have shape {np.shape(request.amounts)}, expected {(n, n)} for this state")
    if not np.all(np.isfinite(request.amounts)):
        raise ValueError("amounts must be finite")
    plan = Plan(state)
    draining = np.zeros(n, dtype=bool)
    draining[[v for v, _ in request.drains]] = True
    for v, d in request.drains:
        _drain(plan, v, d, draining)
    amounts = np.where(np.eye(n, dtype=bool) | draining[None, :], 0.0, np.asarray(request.amounts, dtype=float))
    above_balance = None
    intake = amounts.sum(axis=0)
    if balanced is not None:
        above_balance = surplus_above(plan.load, state.capacity, plan.active, balanced)
        amounts = fit_to_balance(amounts, above_balance)
        intake = np.maximum(-above_balance, 0.0)
    totals = amounts.sum(axis=1)
    senders = [s for s in np.argsort(-totals, kind="stable").tolist() if totals[s] > 0.0]
    if not senders:
        return plan.action()
    # each sender's unmoved flows in the order it offers them: eq. (2) cost per packet/s moved, priced at the
    # receiver it is asked to feed most (the first largest entry of its row), then flow index
    is_sender = np.zeros(n, dtype=bool)
    is_sender[senders] = True
    offered = np.flatnonzero(is_sender[state.assignment] & ~plan.moved)
    owner = state.assignment[offered]
    rate = state.rate[offered]
    per_load = np.divide(cost.flow_migration_cost(state, offered, np.argmax(amounts, axis=1)[owner], params), rate,
                         out=np.full(offered.size, np.inf), where=rate > 0)
    order = np.lexsort((per_load, owner))
    flows, rates = offered[order].tolist(), rate[order].tolist()
    bounds = np.searchsorted(owner[order], np.arange(n + 1)).tolist()
    shedding = _Shedding(plan, intake, ceiling, above_balance)
    for s in senders:
        offer = slice(bounds[s], bounds[s + 1])
        shedding.shed(s, flows[offer], rates[offer], np.flatnonzero(amounts[s] > 0.0).tolist(), float(totals[s]))
    shedding.commit()
    if balanced is not None:
        settle(plan, balanced, ceiling)
    return plan.action()


class _Shedding:
    """The senders' moves of `translate`, chosen on Python floats and lists of its own and handed to the plan at
    the end (`commit`): numpy's per-call overhead on single flows and a few receivers would cost more than the
    choices. Every list is indexed by instance."""

    def __init__(self, plan: Plan, intake: np.ndarray, ceiling: float, above_balance: np.ndarray | None):
        state = plan.state
        self.plan = plan
        self.exact = above_balance is not None
        # what each instance is still asked to take in, from all senders
        self.intake = intake.tolist()
        self.load = plan.load.tolist()
        self.load_limit = (ceiling * state.capacity).tolist()
        self.buffer_free = (state.buffer - state.queue - plan.incoming).tolist()
        self.active = plan.active.tolist()
        # load balancing: packets/s each instance is below the balanced load (negative above it); no move may
        # leave an instance further from it than it was (inf: no such limit)
        self.short = (-above_balance).tolist() if self.exact else [math.inf] * state.n_instances
        # flows, destinations and buffered packets of the moves so far, for `commit`
        self.moves: tuple[list[int], list[int], list[float]] = ([], [], [])

    def commit(self) -> None:
        self.plan.move_all(*self.moves)

    def shed(self, s: int, flows: list[int], rates: list[float], receivers: list[int], total: float) -> None:
        """Move `flows` of `s`, in their order, towards `total` (what `s` is asked to send), each to the one of
        `receivers` that `_receiver` picks. Totals per sender and per receiver, rather than per edge, let many
        small requests (a spread-out mean action) still move whole flows to where they were asked for.

        Scaling keeps a flow while it brings the moved total closer to `total`: the request's aim is to bring the
        sender under Th_high, and a move costs about the same whatever its rate, so a flow that overshoots by
        less than what is left is welcome. Load balancing (`exact`) aims at the balanced load itself: a flow is
        kept only while the total stays within `total`, then the one flow that brings it closest, if any."""
        sender = _Sender(self, s, receivers)
        exact = self.exact
        remaining = total
        shed_any = False
        for f, rate in zip(flows, rates):
            if remaining <= 0.0:
                break
            # a flow that would not bring the total closer (exact: that would pass it), or that exceeds every
            # receiver's room, stays
            if rate <= 0.0 or (rate > remaining if exact else rate >= 2.0 * remaining) or rate >= sender.largest:
                continue
            if sender.take(f, rate):
                remaining -= rate
                shed_any = True
        if exact and remaining > 0.0:
            shed_any |= sender.close_gap(flows, rates, remaining)
        if shed_any:
            sender.clear_ceiling(flows, rates)


class _Sender:
    """One sender's shedding (`_Shedding.shed`): what each of its receivers can still take below the ceiling (its
    room, from the sender's start), in its buffer and towards the balanced load, and what it is still asked for,
    kept up to date as flows move."""

    def __init__(self, shedding: _Shedding, s: int, receivers: list[int]):
        self.shedding, self.s = shedding, s
        self.latency = shedding.plan.state.migration_ms[s].tolist()
        self.moved: set[int] = set()
        self.room = [limit - load for limit, load in zip(shedding.load_limit, shedding.load)]
        intake, short = shedding.intake, shedding.short
        # (asked, receiver) pairs, ascending: best fit's search order, ties to the lowest instance
        self.ranking = sorted((intake[r], r) for r in receivers)
        # no flow this large fits any receiver: a quick test before `_receiver`'s search, tightened to every rate
        # that fitted none (moves only shrink what receivers can take, and a larger flow fits no better)
        self.largest = min(max(self.room[r] for r in receivers), 2.0 * max(short[r] for r in receivers))

    def take(self, f: int, rate: float) -> bool:
        """Move flow `f` of `rate` to the receiver `_receiver` picks, starting it if it is not active; whether it
        fitted one."""
        shedding, ranking, latency = self.shedding, self.ranking, self.latency
        intake, buffer_free, short = shedding.intake, shedding.buffer_free, shedding.short
        r = _receiver(rate, latency, self.room, buffer_free, short, intake, ranking)
        if r < 0:
            self.largest = min(self.largest, rate)
            return False
        if not shedding.active[r]:
            shedding.plan.start(r)
            shedding.active[r] = True
        s, load = self.s, shedding.load
        packets = cost.packets_buffered_during_move(rate, latency[r])
        self.moved.add(f)
        moved_flows, moved_dst, moved_packets = shedding.moves
        moved_flows.append(f)
        moved_dst.append(r)
        moved_packets.append(packets)
        load[s] -= rate
        load[r] += rate
        buffer_free[r] -= packets
        self.room[r] -= rate
        short[r] -= rate
        short[s] += rate
        del ranking[bisect.bisect_left(ranking, (intake[r], r))]
        intake[r] -= rate
        bisect.insort(ranking, (intake[r], r))
        return True

    def close_gap(self, flows: list[int], rates: list[float], remaining: float) -> bool:
        """Load balancing: the one unmoved flow that brings the sender's total closest to its surplus, with
        `remaining` still to send; whether one moved."""
        moved, limit = self.moved, min(2.0 * remaining, self.largest)
        closing = sorted((abs(remaining - rate), rate, f) for f, rate in zip(flows, rates)
                         if 0.0 < rate < limit and f not in moved)
        return any(self.take(f, rate) for _, rate, f in closing)

    def clear_ceiling(self, flows: list[int], rates: list[float]) -> None:
        """A sender that sheds flows is not left at or above the ceiling by its request's rounding (the levels are
        coarse, and ω charges every point above Th_high): while it is, the smallest flow that clears it goes, or
        else the largest one that fits a receiver, each only if it leaves the sender closer to the balanced
        load."""
        shedding, s = self.shedding, self.s
        excess = shedding.load[s] - shedding.load_limit[s]
        while excess >= 0.0:
            limit = min(self.largest, -2.0 * shedding.short[s]) if shedding.exact else self.largest
            left = sorted((rate, f) for f, rate in zip(flows, rates) if f not in self.moved and 0.0 < rate < limit)
            clearing = [flow for flow in left if flow[0] > excess]
            for rate, f in clearing + left[::-1]:
                if self.take(f, rate):
                    excess -= rate
                    break
            else:
                break


def _receiver(rate: float, latency: list[float], room: list[float], buffer_room: list[float], short: list[float],
              asked: list[float], ranking: list[tuple[float, int]]) -> int:
    """The receiver a flow of `rate` goes to, among those it fits (below the ceiling: `room`; within the buffer
    for the packets it buffers while moving; left closer to the balanced load than before: rate < 2·`short`):
    best fit, the one with the least intake still asked of it (`asked`; `ranking` holds the sorted (asked,
    receiver) pairs) that is at least `rate`, so that the flow meets a request without passing it and large
    flows go where they fit; if there is none, the one asked for most, which the flow brings closest. Ties to
    the lowest receiver; −1 if it fits none."""
    split = bisect.bisect_left(ranking, (rate, -1))
    for position in range(split, len(ranking)):
        j = ranking[position][1]
        if (rate < room[j] and rate < 2.0 * short[j]
                and cost.packets_buffered_during_move(rate, latency[j]) <= buffer_room[j]):
            return j
    best, most = -1, -math.inf
    # ascending (asked, receiver): the first of the largest asked that fits is the lowest receiver
    for wanted, j in ranking[:split]:
        if (wanted > most and rate < room[j] and rate < 2.0 * short[j]
                and cost.packets_buffered_during_move(rate, latency[j]) <= buffer_room[j]):
            best, most = j, wanted
    return best


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
    flows = flows[np.lexsort((flows, -state.rate[flows]))]
    # only moves happen while v drains, so the homes stay; `preferred` may not be one
    latency = state.migration_ms[v, homes]
    drawn = np.flatnonzero(homes == preferred)
    for f, rate in zip(flows.tolist(), state.rate[flows].tolist()):
        packets = cost.packets_buffered_during_move(rate, latency)
        fits = plan.buffer_fits(homes, packets)
        if drawn.size and fits[drawn[0]] and plan.utilisation_after(preferred, rate) <= balanced:
            k = int(drawn[0])
        elif fits.any():
            fitting = np.flatnonzero(fits)
            k = int(fitting[np.argmin(plan.utilisation[homes[fitting]])])
        else:
            plan.rollback(checkpoint)
            return
        plan.move(f, int(homes[k]), float(packets[k]))
    plan.stop(v)
