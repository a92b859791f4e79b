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

Load balancing (`balanced`, the balanced utilisation) aims at the balanced load itself, and
minimising the variance first fixes every instance's net load, so there the request gives the
routes and the balance the amounts (`fit_to_balance`: each sender sends its surplus, each receiver
is asked for its deficit), and the translator is exact: a sender keeps flows only while its total
stays within its surplus, then adds the one flow that brings it closest; a receiver takes a flow
only if that leaves it closer to the balanced load than before (the rule OFM and Pairwise follow
too); and `_settle` finishes with one-flow exchanges between the instances furthest from it. No
instance ends further from the balanced load than it started.

Every move goes through the baselines' `Plan` bookkeeping, so:

* constraint (4): a flow moves at most once, never to its own instance, only to an active or
  freshly started instance; an instance is stopped only once all its flows have left;
* constraint (5): a flow moves only when its buffered packets fit the destination's buffer on top
  of its queue and of what earlier moves put there (`twin.cost.migrated_buffer_packets`).

A drain that cannot place every flow is undone, so an instance is never stopped half-full.

Scaling's actions are then refined (`refine`): a local search on the action's total cost that drops,
redirects, exchanges and merges moves, under the same constraints.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from gnn_policy.plan import Plan
from twin import cost
from twin.migration import IndexedAction
from twin.params import CostParams, Thresholds
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
        _settle(plan, balanced, ceiling)
    return plan.action()


REFINE_MIN_GAIN = 1.0
"""What a change must save (ms-equivalents, a thousandth of C_R) for `refine` to make it: a round makes at most
one change per instance, and a drained instance's flows sent between alike destinations save hundredths each,
a round apiece."""


def refine(state: ClusterState, action: IndexedAction, params: CostParams, thresholds: Thresholds) -> IndexedAction:
    """Scaling's finish: a local search on the action's total cost (eq. (2) summed over the moves, C_R and the
    ω penalties, `twin.cost`). Each round prices every single change of four kinds and makes those that lower
    the cost, best first, skipping any that touches an instance a better one of the round touched (changes on
    disjoint instances keep each other's gains exact), until no change lowers it:

    * dropping a move: the levels are coarse and a network asks a hot sender for somewhat more than its excess
      over Th_high, so a request's last flows often cost more than the penalty they save; a started instance
      that loses its last arrival is not started;
    * sending a moved flow to another active instance: the translator fills receivers as the request asks, not
      by what a move costs at each (its latency, the destination's processing and queue, eq. (1));
    * moving another flow of the same source to the same destination instead: one that keeps its SLA, or whose
      rate leaves less penalty;
    * merging two moves of one source: one dropped, the other exchanged for a larger flow, where neither a
      drop nor an exchange alone pays.

    No change puts a source back at Th_high or above (at Th_high exactly ω charges nothing, but the instance is
    overloaded again) or a destination at Th_high or above or past its buffer (constraint (5)), so (4)-(5) keep
    holding. A drained instance's moves are only redirected (it must be emptied to stop): to a cheaper
    destination, or to an instance left below Th_low, whose ω penalty each packet/s lowers."""
    n = state.n_instances
    flows, dst = action.flows.copy(), action.dst.copy()
    src = state.assignment[flows]
    drained = np.isin(src, action.stop)
    capacity, high = state.capacity, thresholds.high
    # eq. (2) cost and constraint (5) packets of every flow of a source to every instance: the state's queues
    # fix them, so the search only looks them up
    candidates = np.flatnonzero(np.isin(state.assignment, src))
    row_of = np.full(state.n_flows, -1)
    row_of[candidates] = np.arange(candidates.size)
    exchangeable = candidates[~np.isin(state.assignment[candidates], action.stop)]
    """The flows another move may be exchanged for: a drained instance's flows all move already."""
    every_pair = (np.repeat(candidates, n), np.tile(np.arange(n), candidates.size))
    cost_to = cost.flow_migration_cost(state, *every_pair, params).reshape(-1, n)
    packets_to = cost.migrated_buffer_packets(state, *every_pair).reshape(-1, n)
    rate = state.rate[flows]
    move_cost = cost.flow_migration_cost(state, flows, dst, params)
    packets = cost.migrated_buffer_packets(state, flows, dst)
    load = state.load_pps + np.bincount(dst, rate, n) - np.bincount(src, rate, n)
    buffer_free = state.buffer - state.queue - np.bincount(dst, packets, n)
    active = state.active.copy()
    active[action.start] = True
    active[action.stop] = False
    started = np.zeros(n, dtype=bool)
    started[action.start] = True
    arrivals = np.bincount(dst, minlength=n)
    kept = np.ones(flows.size, dtype=bool)
    moved = np.zeros(state.n_flows, dtype=bool)
    moved[flows] = True
    now = np.zeros(n)
    """The ω penalty of each instance at the start of the round (`change_at` prices changes against it)."""

    def change_at(instances: np.ndarray, rates: np.ndarray, losing_an_arrival: bool = False) -> np.ndarray:
        """Change of the ω penalty of `instances` when `rates` more land on them, less C_R for a started
        instance that loses its last arrival (it is not started)."""
        unstarted = started[instances] & (arrivals[instances] == 1) & losing_an_arrival
        after = cost.threshold_penalties(((load[instances] + rates) / capacity[instances])[..., None],
                                         (active[instances] & ~unstarted)[..., None], thresholds, params)
        return after - now[instances] - cost.resource_cost(unstarted, params)

    def overloads(instances: np.ndarray, rates: np.ndarray) -> np.ndarray:
        """Whether `rates` more put each of `instances` at Th_high or above, from below it."""
        return (((load[instances] + rates) / capacity[instances] >= high)
                & (load[instances] / capacity[instances] < high))

    def take_off(i: int) -> None:
        load[src[i]] += rate[i]
        load[dst[i]] -= rate[i]
        buffer_free[dst[i]] += packets[i]
        arrivals[dst[i]] -= 1
        moved[flows[i]] = False

    def put_on(i: int, flow: int, k: int) -> None:
        flows[i], dst[i], rate[i] = flow, k, state.rate[flow]
        move_cost[i], packets[i] = cost_to[row_of[flow], k], packets_to[row_of[flow], k]
        load[src[i]] -= rate[i]
        load[k] += rate[i]
        buffer_free[k] -= packets[i]
        arrivals[k] += 1
        moved[flow] = True

    while (every := np.flatnonzero(kept)).size:
        now[:] = cost.threshold_penalties((load / capacity)[:, None], active[:, None], thresholds, params)
        # [moves, instances]: the flow of each move, drained ones too, sent to each instance instead
        s, d, r = src[every], dst[every], rate[every]
        k = np.broadcast_to(np.arange(n), (every.size, n))
        r_k = np.broadcast_to(r[:, None], k.shape)
        redirect = (cost_to[row_of[flows[every]]] - move_cost[every][:, None] + change_at(k, r_k)
                    + change_at(d, -r, True)[:, None])
        redirect[~active[k] | (k == s[:, None]) | (k == d[:, None]) | ((load[k] + r_k) / capacity[k] >= high)
                 | (packets_to[row_of[flows[every]]] > buffer_free[k])] = np.inf
        # the other changes keep every flow of a drained instance moving
        m = every[~drained[every]]
        s, d, r = src[m], dst[m], rate[m]
        drop = change_at(s, r) + change_at(d, -r, True) - move_cost[m]
        drop[overloads(s, r)] = np.inf
        # (move, flow) pairs: an unmoved flow of the same source sent to the same destination instead
        e, g = np.nonzero((state.assignment[exchangeable][None, :] == s[:, None]) & ~moved[exchangeable])
        g = exchangeable[g]
        shift = state.rate[g] - r[e]
        g_cost, g_packets = cost_to[row_of[g], d[e]], packets_to[row_of[g], d[e]]
        exchange = g_cost - move_cost[m][e] + change_at(s[e], -shift) + change_at(d[e], shift)
        exchange[overloads(s[e], -shift) | (shift > 0.0) & ((load[d[e]] + shift) / capacity[d[e]] >= high)
                 | (g_packets - packets[m][e] > buffer_free[d[e]])] = np.inf
        # (move, exchange) pairs of one source: the move dropped and the exchange made, two moves become one
        a, b = np.nonzero((s[:, None] == s[None, :]) & ~np.eye(m.size, dtype=bool))
        options = np.bincount(e, minlength=m.size)
        a, q = np.repeat(a, options[b]), _ranges(np.searchsorted(e, b), options[b])
        b = e[q]
        same = d[a] == d[b]
        into_b = shift[q] - np.where(same, r[a], 0.0)
        merge = (g_cost[q] - move_cost[m][a] - move_cost[m][b] + change_at(s[b], r[a] - shift[q])
                 + np.where(same, 0.0, change_at(d[a], -r[a], True)) + change_at(d[b], into_b))
        merge[overloads(s[b], r[a] - shift[q]) | (into_b > 0.0) & ((load[d[b]] + into_b) / capacity[d[b]] >= high)
              | (g_packets[q] - packets[m][b] - np.where(same, packets[m][a], 0.0) > buffer_free[d[b]])] = np.inf

        # every change that lowers the cost, best first, each made unless it touches an instance that an earlier
        # one of this round touched: changes on disjoint instances do not alter each other's gains
        to = redirect.argmin(axis=1)
        gains = np.concatenate([drop, redirect[np.arange(every.size), to], exchange, merge])
        order = np.argsort(gains, kind="stable")
        order = order[gains[order] < -REFINE_MIN_GAIN]
        if not order.size:
            break
        sizes = np.array([m.size, every.size, exchange.size, merge.size])
        kinds = np.repeat(np.arange(4), sizes)[order]
        indices = order - np.r_[0, np.cumsum(sizes)[:-1]][kinds]
        touched: set[int] = set()
        for kind, x in zip(kinds.tolist(), indices.tolist()):
            if kind == 0:
                i = int(m[x])
                instances = {src[i], dst[i]}
            elif kind == 1:
                i = int(every[x])
                instances = {dst[i], to[x]}
            elif kind == 2:
                i = int(m[e[x]])
                instances = {src[i], dst[i]}
            else:
                i, j = int(m[a[x]]), int(m[b[x]])
                instances = {src[j], dst[i], dst[j]}
            if not touched.isdisjoint(instances):
                continue
            touched |= instances
            left = dst[i]
            take_off(i)
            if kind == 0:
                kept[i] = False
            elif kind == 1:
                put_on(i, int(flows[i]), int(to[x]))
            elif kind == 2:
                put_on(i, int(g[x]), int(left))
            else:
                kept[i] = False
                take_off(j)
                put_on(j, int(g[q[x]]), int(dst[j]))
            if started[left] and arrivals[left] == 0:
                active[left] = started[left] = False
    return IndexedAction(flows[kept], dst[kept], action.start[started[action.start]], action.stop)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated index ranges [start, start + length) of each pair."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - ends + lengths, lengths) + np.arange(ends[-1] if ends.size else 0)


def surplus_above(load: np.ndarray, capacity: np.ndarray, active: np.ndarray, balanced: float) -> np.ndarray:
    """Packets/s each active instance is above the `balanced` utilisation (negative below it; 0 for the others)."""
    return np.where(active, load - balanced * capacity, 0.0)


def spread(net_load: np.ndarray) -> np.ndarray:
    """[N, N] loads that send each instance's positive `net_load` to those with a negative one, in proportion
    to what these take."""
    out, into = np.maximum(net_load, 0.0), np.maximum(-net_load, 0.0)
    return np.outer(out, into) / max(into.sum(), 1e-12)


def fit_to_balance(amounts: np.ndarray, above_balance: np.ndarray) -> np.ndarray:
    """Load balancing: the request's routes, each sender's row scaled to its surplus. Minimising the variance
    first fixes what every instance must send (its surplus above the balanced load) or take (its deficit, which
    `translate` asks of it), so the request only says by which routes: its loads from instances above the
    balance to instances below it, in its proportions. An instance the request leaves out is routed like
    `spread`, in proportion to the others' imbalances."""
    out, into = np.maximum(above_balance, 0.0), np.maximum(-above_balance, 0.0)
    fitted = np.where((out > 0.0)[:, None] & (into > 0.0)[None, :], amounts, 0.0)
    if not into.any():
        return fitted
    default = spread(above_balance)
    unrouted_senders, unrouted_receivers = fitted.sum(axis=1) <= 0.0, fitted.sum(axis=0) <= 0.0
    fitted[unrouted_senders] = default[unrouted_senders]
    fitted[:, unrouted_receivers] = default[:, unrouted_receivers]
    sent = fitted.sum(axis=1, keepdims=True)
    return np.divide(fitted, sent, out=np.zeros_like(fitted), where=sent > 0.0) * out[:, None]


SETTLE_PAIRS = 3
"""`_settle` looks for a move between each of this many instances furthest above the balanced load and each of
this many furthest below it."""


def _settle(plan: Plan, balanced: float, ceiling: float) -> None:
    """Load balancing's finish: whole flows leave each instance near, not at, its surplus. While one flow from
    an instance above the balanced utilisation to one below it lowers the variance (its sum of squared
    deviations), the flow that lowers it most among the `SETTLE_PAIRS` × `SETTLE_PAIRS` furthest pairs moves,
    each only if neither instance ends further from the balanced load than it started and constraints (4)-(5)
    and the ceiling hold. Not "closer than now": a small instance a little above the balanced load may have
    only flows that would put a large one as far above it as the small one was, which in utilisation (what
    the variance counts) is a fraction of it. At most N moves in all: a finish, not a balancer of its own (the
    request, fitted to the balance by `fit_to_balance`, does the bulk). Chosen on Python floats and lists and
    handed to the plan at the end, as in `_Shedding`."""
    state = plan.state
    n = state.n_instances
    capacity = state.capacity.tolist()
    weight = [c ** -2.0 for c in capacity]
    deviation = surplus_above(plan.load, state.capacity, plan.active, balanced).tolist()
    reach = np.abs(surplus_above(state.load_pps, state.capacity, plan.active, balanced)).tolist()
    """How far from the balanced load each instance started: where it may end, on either side."""
    room = [ceiling * c - load for c, load in zip(capacity, plan.load.tolist())]
    buffer_free = (state.buffer - state.queue - plan.incoming).tolist()
    latencies = state.migration_ms.tolist()
    offers: dict[int, tuple[list[float], list[int]]] = {}
    """The unmoved flows of each instance looked at, by rate (kept up to date as they move)."""
    moves: tuple[list[int], list[int], list[float]] = ([], [], [])
    pair_moves: dict[tuple[int, int], tuple[float, int]] = {}
    """(gain, position in i's offer) of the best flow from i to k, while neither has changed since."""

    def best_flow(i: int, k: int) -> tuple[float, int]:
        if i not in offers:
            flows = plan.movable_flows(i)
            flows = flows[np.argsort(state.rate[flows], kind="stable")]
            offers[i] = (state.rate[flows].tolist(), flows.tolist())
        rates = offers[i][0]
        d_i, w_i, d_k, w_k, latency = deviation[i], weight[i], deviation[k], weight[k], latencies[i][k]
        fitting = bisect.bisect_left(rates, min(d_i + reach[i], reach[k] - d_k, room[k]))
        if latency > 0.0:
            fitting = min(fitting, bisect.bisect_right(rates, cost.largest_rate_buffered(buffer_free[k], latency)))
        nearest = bisect.bisect_left(rates, (d_i * w_i - d_k * w_k) / (w_i + w_k), hi=fitting)
        best_gain, best = 0.0, -1
        for j in (nearest - 1, nearest):
            if 0 <= j < fitting and rates[j] > 0.0:
                x = rates[j]
                gain = w_i * (d_i * d_i - (d_i - x) ** 2) + w_k * (d_k * d_k - (d_k + x) ** 2)
                if gain > best_gain:
                    best_gain, best = gain, j
        return best_gain, best

    for _ in range(n):
        order = sorted(range(n), key=deviation.__getitem__)
        above = [i for i in reversed(order[-SETTLE_PAIRS:]) if deviation[i] > 0.0]
        below = [k for k in order[:SETTLE_PAIRS] if deviation[k] < 0.0]
        best_gain, best = 0.0, None
        for i in above:
            for k in below:
                if (i, k) not in pair_moves:
                    pair_moves[i, k] = best_flow(i, k)
                gain, j = pair_moves[i, k]
                if gain > best_gain:
                    best_gain, best = gain, (i, j, k)
        if best is None:
            break
        i, j, k = best
        rates, flows = offers[i]
        rate = rates[j]
        packets = cost.packets_buffered_during_move(rate, latencies[i][k])
        if packets > buffer_free[k]:
            break
        for values, value in zip(moves, (flows[j], k, packets)):
            values.append(value)
        del rates[j], flows[j]
        deviation[i] -= rate
        deviation[k] += rate
        room[i] += rate
        room[k] -= rate
        buffer_free[k] -= packets
        pair_moves = {pair: move for pair, move in pair_moves.items() if i not in pair and k not in pair}
    plan.move_all(*moves)


class _Shedding:
    """The senders' moves of `translate`, chosen on Python floats and lists of its own and handed to the plan at
    the end (`commit`): numpy's per-call overhead on single flows and a few receivers would cost more than the
    choices."""

    def __init__(self, plan: Plan, intake: np.ndarray, ceiling: float, above_balance: np.ndarray | None):
        state = plan.state
        self.plan = plan
        self.exact = above_balance is not None
        self.intake = intake.tolist()
        """What each instance is still asked to take in, from all senders."""
        self.load = plan.load.tolist()
        self.load_limit = (ceiling * state.capacity).tolist()
        self.buffer_free = (state.buffer - state.queue - plan.incoming).tolist()
        self.above_balance = above_balance.tolist() if self.exact else None
        """Load balancing: packets/s each instance is above the balanced load (negative below it); no move may
        leave an instance further from it than it was."""
        self.moves: tuple[list[int], list[int], list[float]] = ([], [], [])
        """Flows, destinations and buffered packets of the moves so far, for `commit`."""

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
        plan, intake, above, exact, load, buffer_free = (
            self.plan, self.intake, self.above_balance, self.exact, self.load, self.buffer_free)
        from_s = plan.state.migration_ms[s].tolist()
        moved_flows, moved_dst, moved_packets = self.moves
        moved: set[int] = set()
        # what each receiver can still take below the ceiling, in its buffer and towards the balanced load, and
        # what it is still asked for, kept up to date as flows move
        room = [self.load_limit[r] - load[r] for r in receivers]
        buffer_room = [buffer_free[r] for r in receivers]
        short = [-above[r] for r in receivers] if exact else [math.inf] * len(receivers)
        latency = [from_s[r] for r in receivers]
        asked = [intake[r] for r in receivers]

        ranking = sorted((asked[j], j) for j in range(len(receivers)))
        # no flow this large fits any receiver: a quick test before `_receiver`'s search, tightened to every rate
        # that fitted none (moves only shrink what receivers can take, and a larger flow fits no better)
        largest = min(max(room), 2.0 * max(short))

        def receiver(rate: float) -> int:
            nonlocal largest
            j = _receiver(rate, latency, room, buffer_room, short, asked, ranking)
            if j < 0:
                largest = min(largest, rate)
            return j

        def move(f: int, rate: float, j: int) -> None:
            r = receivers[j]
            if not plan.active[r]:
                plan.start(r)
            packets = cost.packets_buffered_during_move(rate, latency[j])
            moved.add(f)
            moved_flows.append(f)
            moved_dst.append(r)
            moved_packets.append(packets)
            load[s] -= rate
            load[r] += rate
            buffer_free[r] -= packets
            room[j] -= rate
            buffer_room[j] -= packets
            short[j] -= rate
            if exact:
                above[r] += rate
                above[s] -= rate
            del ranking[bisect.bisect_left(ranking, (asked[j], j))]
            asked[j] -= rate
            intake[r] -= rate
            bisect.insort(ranking, (asked[j], j))

        remaining = total
        shed_any = False
        for f, rate in zip(flows, rates):
            if remaining <= 0.0:
                break
            # a flow that would not bring the total closer (exact: that would pass it), or that exceeds every
            # receiver's room, stays
            too_large = rate > remaining if exact else rate >= 2.0 * remaining
            if rate <= 0.0 or too_large or rate >= largest:
                continue
            if (j := receiver(rate)) >= 0:
                move(f, rate, j)
                remaining -= rate
                shed_any = True
        if exact and remaining > 0.0:
            closing = sorted((abs(remaining - rate), rate, f) for f, rate in zip(flows, rates)
                             if f not in moved and 0.0 < rate < min(2.0 * remaining, largest))
            for _, rate, f in closing:
                if (j := receiver(rate)) >= 0:
                    move(f, rate, j)
                    shed_any = True
                    break
        # A sender that sheds flows is not left at or above the ceiling by its request's rounding (the levels are
        # coarse, and ω charges every point above Th_high): while it is, the smallest flow that clears it goes,
        # or else the largest one that fits a receiver, each only if it leaves the sender closer to the balanced
        # load.
        excess = load[s] - self.load_limit[s]
        while shed_any and excess >= 0.0:
            limit = min(largest, 2.0 * above[s]) if exact else largest
            left = sorted((rate, f) for f, rate in zip(flows, rates) if f not in moved and 0.0 < rate < limit)
            clearing = [flow for flow in left if flow[0] > excess]
            for rate, f in clearing + left[::-1]:
                if (j := receiver(rate)) >= 0:
                    move(f, rate, j)
                    excess -= rate
                    break
            else:
                break


def _receiver(rate: float, latency: list[float], room: list[float], buffer_room: list[float], short: list[float],
              asked: list[float], ranking: list[tuple[float, int]]) -> int:
    """Position of the receiver a flow of `rate` goes to, among those it fits (below the ceiling: `room`; within
    the buffer for the packets it buffers while moving; left closer to the balanced load than before: rate <
    2·`short`): best fit, the one with the least intake still asked of it (`asked`; `ranking` holds the sorted
    (asked, position) pairs) that is at least `rate`, so that the flow meets a request without passing it and large
    flows go where they fit; if there is none, the one asked for most, which the flow brings closest. Ties to
    the lowest position; −1 if it fits none."""

    def fits(j: int) -> bool:
        return (rate < room[j] and rate < 2.0 * short[j]
                and cost.packets_buffered_during_move(rate, latency[j]) <= buffer_room[j])

    split = bisect.bisect_left(ranking, (rate, -1))
    for position in range(split, len(ranking)):
        if fits(j := ranking[position][1]):
            return j
    return min((j for _, j in ranking[:split] if fits(j)), key=lambda j: (-asked[j], j), default=-1)


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
