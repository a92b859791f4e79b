"""Load balancing's side of the translator (`gnn_policy.translator.translate` given a balanced utilisation).

Minimising the variance first fixes every instance's net load, so in load balancing the request gives the
routes and the balance the amounts (`fit_to_balance`: each sender sends its surplus, each receiver is asked
for its deficit), and the translator is exact: a sender keeps flows only while its total stays within its
surplus, then adds the one flow that brings it closest; a receiver takes a flow only if that leaves it closer
to the balanced load than before (the rule OFM and Pairwise follow too); and `settle` finishes with one-flow
exchanges between the instances furthest from it. No instance ends further from the balanced load than it
started.
"""
from __future__ import annotations

import bisect

import numpy as np

from gnn_policy.plan import Plan
from twin import cost


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
"""`settle` looks for a move between each of this many instances furthest above the balanced load and each of
this many furthest below it."""


def settle(plan: Plan, balanced: float, ceiling: float) -> None:
    """Load balancing's finish: whole flows leave each instance near, not at, its surplus. While one flow from
    an instance above the balanced utilisation to one below it lowers the variance (its sum of squared
    deviations), the flow that lowers it most among the `SETTLE_PAIRS` × `SETTLE_PAIRS` furthest pairs moves,
    each only if neither instance ends further from the balanced load than it started and constraints (4)-(5)
    and the ceiling hold. Not "closer than now": a small instance a little above the balanced load may have
    only flows that would put a large one as far above it as the small one was, which in utilisation (what
    the variance counts) is a fraction of it. At most N moves in all: a finish, not a balancer of its own (the
    request, fitted to the balance by `fit_to_balance`, does the bulk). Chosen on Python floats and lists and
    handed to the plan at the end, as in `gnn_policy.translator`'s shedding."""
    settling = _Settling(plan, balanced, ceiling)
    for _ in range(plan.state.n_instances):
        best = settling.best_move()
        if best is None or not settling.move(*best):
            break
    plan.move_all(*settling.moves)


class _Settling:
    """`settle`'s bookkeeping: each instance's deviation from the balanced load, the instances ranked by it, and
    the best flow of each (above, below) pair looked at, kept until one of the pair changes."""

    def __init__(self, plan: Plan, balanced: float, ceiling: float):
        state = plan.state
        self.plan = plan
        capacity = state.capacity.tolist()
        self.weight = [c ** -2.0 for c in capacity]
        self.deviation = surplus_above(plan.load, state.capacity, plan.active, balanced).tolist()
        # How far from the balanced load each instance started: where it may end, on either side.
        self.reach = np.abs(surplus_above(state.load_pps, state.capacity, plan.active, balanced)).tolist()
        self.room = [ceiling * c - load for c, load in zip(capacity, plan.load.tolist())]
        self.buffer_free = (state.buffer - state.queue - plan.incoming).tolist()
        # (deviation, instance), ascending: the order of a stable sort of the instances by deviation
        self.ranked = sorted(zip(self.deviation, range(state.n_instances)))
        # The unmoved flows of each instance looked at, by rate (kept up to date as they move), and the migration
        # latencies from it.
        self.offers: dict[int, tuple[list[float], list[int], list[float]]] = {}
        # (gain, position in i's offer) of the best flow from i to k, while neither has changed since.
        self.pair_moves: dict[tuple[int, int], tuple[float, int]] = {}
        self.moves: tuple[list[int], list[int], list[float]] = ([], [], [])

    def best_move(self) -> tuple[int, int, int] | None:
        """(i, position in i's offer, k) of the flow that lowers the variance most among the furthest pairs."""
        deviation, ranked, pair_moves = self.deviation, self.ranked, self.pair_moves
        above = [i for _, i in reversed(ranked[-SETTLE_PAIRS:]) if deviation[i] > 0.0]
        below = [k for _, k in ranked[:SETTLE_PAIRS] if deviation[k] < 0.0]
        best_gain, best = 0.0, None
        for i in above:
            for k in below:
                if (move := pair_moves.get((i, k))) is None:
                    move = pair_moves[i, k] = self.best_flow(i, k)
                if move[0] > best_gain:
                    best_gain, best = move[0], (i, move[1], k)
        return best

    def best_flow(self, i: int, k: int) -> tuple[float, int]:
        """(gain, position in i's offer) of the flow from i to k that lowers the variance most; (0, −1) if none
        fits."""
        if (offer := self.offers.get(i)) is None:
            state = self.plan.state
            flows = self.plan.movable_flows(i)
            flows = flows[np.argsort(state.rate[flows], kind="stable")]
            offer = self.offers[i] = (state.rate[flows].tolist(), flows.tolist(), state.migration_ms[i].tolist())
        rates, latency = offer[0], offer[2][k]
        deviation, weight, reach = self.deviation, self.weight, self.reach
        d_i, w_i, d_k, w_k = deviation[i], weight[i], deviation[k], weight[k]
        fitting = bisect.bisect_left(rates, min(d_i + reach[i], reach[k] - d_k, self.room[k]))
        if latency > 0.0:
            fitting = min(fitting, bisect.bisect_right(rates, cost.largest_rate_buffered(self.buffer_free[k], latency)))
        nearest = bisect.bisect_left(rates, (d_i * w_i - d_k * w_k) / (w_i + w_k), hi=fitting)
        best_gain, best = 0.0, -1
        for j in (nearest - 1, nearest):
            if 0 <= j < fitting and rates[j] > 0.0:
                x = rates[j]
                gain = w_i * (d_i * d_i - (d_i - x) ** 2) + w_k * (d_k * d_k - (d_k + x) ** 2)
                if gain > best_gain:
                    best_gain, best = gain, j
        return best_gain, best

    def move(self, i: int, j: int, k: int) -> bool:
        """Move the flow at position j of i's offer to k, if its buffered packets fit k's buffer; whether it
        moved."""
        rates, flows, latency = self.offers[i]
        rate = rates[j]
        packets = cost.packets_buffered_during_move(rate, latency[k])
        if packets > self.buffer_free[k]:
            return False
        for values, value in zip(self.moves, (flows[j], k, packets)):
            values.append(value)
        del rates[j], flows[j]
        deviation, ranked = self.deviation, self.ranked
        for instance, change in ((i, -rate), (k, rate)):
            del ranked[bisect.bisect_left(ranked, (deviation[instance], instance))]
            deviation[instance] += change
            bisect.insort(ranked, (deviation[instance], instance))
        self.room[i] += rate
        self.room[k] -= rate
        self.buffer_free[k] -= packets
        self.pair_moves = {pair: move for pair, move in self.pair_moves.items() if i not in pair and k not in pair}
        return True
