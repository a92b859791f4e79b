"""Scaling's finish: a local search (`refine`) on the total cost of a translated action that drops, redirects,
exchanges and merges its moves under constraints (4)-(5)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from twin import cost
from twin.migration import IndexedAction
from twin.params import CostParams, Thresholds
from twin.state import ClusterState

REFINE_MIN_GAIN = 1.0
"""What a change must save (ms-equivalents, a thousandth of C_R) for `refine` to make it: a round makes at most
one change per instance, and a drained instance's flows sent between alike destinations save hundredths each,
a round apiece."""


class Change(enum.Enum):
    """The changes a round of `refine` prices, in the order that breaks ties between equal gains."""

    DROP = "drop"
    """A move undone."""
    REDIRECT = "redirect"
    """A moved flow sent to another active instance."""
    EXCHANGE = "exchange"
    """Another flow of the same source moved to the same destination instead."""
    MERGE = "merge"
    """Two moves of one source made one: the first dropped, the second exchanged."""


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
    search = _LocalSearch(state, action, params, thresholds)
    while search.round():
        pass
    return search.action()


@dataclass(frozen=True)
class _Options:
    """The changes one round priced: the gain of each kind's changes (ms-equivalents, negative saves) and what
    each changes. Moves are positions in the search's arrays; "of `movable`" means a position in `movable`."""

    gains: dict[Change, np.ndarray]
    redirected: np.ndarray
    """The move of each redirect: every kept move."""
    redirect_to: np.ndarray
    """The cheapest destination of each redirect."""
    movable: np.ndarray
    """The kept moves of instances not drained: the moves the other changes alter."""
    exchanged: np.ndarray
    """The move of each exchange, of `movable`."""
    exchange_flow: np.ndarray
    """The flow each exchange moves instead."""
    merge_dropped: np.ndarray
    """The move each merge drops, of `movable`."""
    merge_kept: np.ndarray
    """The move each merge exchanges, of `movable`."""
    merge_exchange: np.ndarray
    """The exchange each merge makes, a position in `exchanged` and `exchange_flow`."""


class _LocalSearch:
    """`refine`'s state: the action's moves (position i: `flows[i]` from `src[i]` to `dst[i]`, kept while
    `kept[i]`) and what they leave on every instance, kept up to date as changes are made."""

    def __init__(self, state: ClusterState, action: IndexedAction, params: CostParams, thresholds: Thresholds):
        self.state, self.action_in, self.params, self.thresholds = state, action, params, thresholds
        n = self.n = state.n_instances
        self.flows, self.dst = action.flows.copy(), action.dst.copy()
        self.src = state.assignment[self.flows]
        self.drained = np.isin(self.src, action.stop)
        self.capacity, self.high = state.capacity, thresholds.high
        # eq. (2) cost and constraint (5) packets of every flow of a source to every instance: the state's queues
        # fix them, so the search only looks them up
        candidates = np.flatnonzero(np.isin(state.assignment, self.src))
        self.row_of = np.full(state.n_flows, -1)
        self.row_of[candidates] = np.arange(candidates.size)
        # the flows another move may be exchanged for: a drained instance's flows all move already
        self.exchangeable = candidates[~np.isin(state.assignment[candidates], action.stop)]
        every_pair = (np.repeat(candidates, n), np.tile(np.arange(n), candidates.size))
        self.cost_to = cost.flow_migration_cost(state, *every_pair, params).reshape(-1, n)
        self.packets_to = cost.migrated_buffer_packets(state, *every_pair).reshape(-1, n)
        self.rate = state.rate[self.flows]
        self.move_cost = cost.flow_migration_cost(state, self.flows, self.dst, params)
        self.packets = cost.migrated_buffer_packets(state, self.flows, self.dst)
        self.load = state.load_pps + np.bincount(self.dst, self.rate, n) - np.bincount(self.src, self.rate, n)
        self.buffer_free = state.buffer - state.queue - np.bincount(self.dst, self.packets, n)
        self.active = state.active.copy()
        self.active[action.start] = True
        self.active[action.stop] = False
        self.started = np.zeros(n, dtype=bool)
        self.started[action.start] = True
        self.arrivals = np.bincount(self.dst, minlength=n)
        self.kept = np.ones(self.flows.size, dtype=bool)
        self.moved = np.zeros(state.n_flows, dtype=bool)
        self.moved[self.flows] = True
        # the ω penalty of each instance at the start of the round (`change_at` prices changes against it)
        self.now = np.zeros(n)

    def action(self) -> IndexedAction:
        """The refined action: the kept moves, the instances still started, the same stops."""
        start = self.action_in.start
        return IndexedAction(self.flows[self.kept], self.dst[self.kept], start[self.started[start]], self.action_in.stop)

    def round(self) -> bool:
        """Make every priced change that lowers the cost, best first, each unless it touches an instance that an
        earlier one of this round touched (changes on disjoint instances do not alter each other's gains);
        whether it made any."""
        every = np.flatnonzero(self.kept)
        if not every.size:
            return False
        self.now[:] = cost.threshold_penalties((self.load / self.capacity)[:, None], self.active[:, None],
                                               self.thresholds, self.params)
        options = self._price(every)
        gains = np.concatenate([options.gains[kind] for kind in Change])
        order = np.argsort(gains, kind="stable")
        order = order[gains[order] < -REFINE_MIN_GAIN]
        if not order.size:
            return False
        sizes = np.array([options.gains[kind].size for kind in Change])
        kinds = np.repeat(np.arange(len(Change)), sizes)[order]
        indices = order - np.r_[0, np.cumsum(sizes)[:-1]][kinds]
        changes = list(Change)
        touched: set[int] = set()
        for k, x in zip(kinds.tolist(), indices.tolist()):
            kind = changes[k]
            i, instances = self._affected(kind, x, options)
            if not touched.isdisjoint(instances):
                continue
            touched |= instances
            left = self.dst[i]
            if kind is Change.DROP:
                self.drop(i)
            elif kind is Change.REDIRECT:
                self.redirect(i, int(options.redirect_to[x]))
            elif kind is Change.EXCHANGE:
                self.exchange(i, int(options.exchange_flow[x]))
            else:
                self.merge(i, int(options.movable[options.merge_kept[x]]),
                           int(options.exchange_flow[options.merge_exchange[x]]))
            if self.started[left] and self.arrivals[left] == 0:
                self.active[left] = self.started[left] = False
        return True

    def _affected(self, kind: Change, x: int, options: _Options) -> tuple[int, set]:
        """The move that change `x` of `kind` alters (a merge's dropped one) and the instances it touches."""
        src, dst, movable = self.src, self.dst, options.movable
        if kind is Change.DROP:
            i = int(movable[x])
            return i, {src[i], dst[i]}
        if kind is Change.REDIRECT:
            i = int(options.redirected[x])
            return i, {dst[i], options.redirect_to[x]}
        if kind is Change.EXCHANGE:
            i = int(movable[options.exchanged[x]])
            return i, {src[i], dst[i]}
        i, j = int(movable[options.merge_dropped[x]]), int(movable[options.merge_kept[x]])
        return i, {src[j], dst[i], dst[j]}

    # --- the changes ------------------------------------------------------------------------------------------
    def drop(self, i: int) -> None:
        """Undo move i."""
        self._take_off(i)
        self.kept[i] = False

    def redirect(self, i: int, k: int) -> None:
        """Send move i's flow to instance k instead."""
        self._take_off(i)
        self._put_on(i, int(self.flows[i]), k)

    def exchange(self, i: int, flow: int) -> None:
        """Move `flow` of the same source to move i's destination instead of move i's flow."""
        destination = int(self.dst[i])
        self._take_off(i)
        self._put_on(i, flow, destination)

    def merge(self, i: int, j: int, flow: int) -> None:
        """Drop move i and exchange move j's flow for `flow`."""
        self.drop(i)
        self.exchange(j, flow)

    def _take_off(self, i: int) -> None:
        src, dst, rate = self.src, self.dst, self.rate
        self.load[src[i]] += rate[i]
        self.load[dst[i]] -= rate[i]
        self.buffer_free[dst[i]] += self.packets[i]
        self.arrivals[dst[i]] -= 1
        self.moved[self.flows[i]] = False

    def _put_on(self, i: int, flow: int, k: int) -> None:
        self.flows[i], self.dst[i], self.rate[i] = flow, k, self.state.rate[flow]
        self.move_cost[i], self.packets[i] = self.cost_to[self.row_of[flow], k], self.packets_to[self.row_of[flow], k]
        self.load[self.src[i]] -= self.rate[i]
        self.load[k] += self.rate[i]
        self.buffer_free[k] -= self.packets[i]
        self.arrivals[k] += 1
        self.moved[flow] = True

    # --- pricing ----------------------------------------------------------------------------------------------
    def change_at(self, instances: np.ndarray, rates: np.ndarray, losing_an_arrival: bool = False) -> np.ndarray:
        """Change of the ω penalty of `instances` when `rates` more land on them, less C_R for a started
        instance that loses its last arrival (it is not started)."""
        load, capacity = self.load, self.capacity
        unstarted = self.started[instances] & (self.arrivals[instances] == 1) & losing_an_arrival
        after = cost.threshold_penalties(((load[instances] + rates) / capacity[instances])[..., None],
                                         (self.active[instances] & ~unstarted)[..., None], self.thresholds, self.params)
        return after - self.now[instances] - cost.resource_cost(unstarted, self.params)

    def overloads(self, instances: np.ndarray, rates: np.ndarray) -> np.ndarray:
        """Whether `rates` more put each of `instances` at Th_high or above, from below it."""
        load, capacity = self.load, self.capacity
        return (((load[instances] + rates) / capacity[instances] >= self.high)
                & (load[instances] / capacity[instances] < self.high))

    def _price(self, every: np.ndarray) -> _Options:
        """Every change of this round with its gain."""
        redirect, to = self._price_redirects(every)
        # the other changes keep every flow of a drained instance moving
        m = every[~self.drained[every]]
        drop = self._price_drops(m)
        exchange, e, g, shift, g_cost, g_packets = self._price_exchanges(m)
        merge, a, b, q = self._price_merges(m, e, shift, g_cost, g_packets)
        gains = {Change.DROP: drop, Change.REDIRECT: redirect, Change.EXCHANGE: exchange, Change.MERGE: merge}
        return _Options(gains, every, to, m, e, g, a, b, q)

    def _price_redirects(self, every: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each kept move's flow, drained ones too, sent to its cheapest other instance: the gain and where."""
        load, capacity, n = self.load, self.capacity, self.n
        # [moves, instances]: the flow of each move sent to each instance instead
        s, d, r = self.src[every], self.dst[every], self.rate[every]
        k = np.broadcast_to(np.arange(n), (every.size, n))
        r_k = np.broadcast_to(r[:, None], k.shape)
        rows = self.row_of[self.flows[every]]
        redirect = (self.cost_to[rows] - self.move_cost[every][:, None] + self.change_at(k, r_k)
                    + self.change_at(d, -r, True)[:, None])
        redirect[~self.active[k] | (k == s[:, None]) | (k == d[:, None]) | ((load[k] + r_k) / capacity[k] >= self.high)
                 | (self.packets_to[rows] > self.buffer_free[k])] = np.inf
        to = redirect.argmin(axis=1)
        return redirect[np.arange(every.size), to], to

    def _price_drops(self, m: np.ndarray) -> np.ndarray:
        s, d, r = self.src[m], self.dst[m], self.rate[m]
        drop = self.change_at(s, r) + self.change_at(d, -r, True) - self.move_cost[m]
        drop[self.overloads(s, r)] = np.inf
        return drop

    def _price_exchanges(self, m: np.ndarray) -> tuple[np.ndarray, ...]:
        """(move, flow) pairs: an unmoved flow of the same source sent to the same destination instead. The gains,
        the move (a position in `m`) and the flow of each, and what the flow adds to the rate, costs and
        buffers at the destination (merges reuse them)."""
        state, load, capacity, exchangeable = self.state, self.load, self.capacity, self.exchangeable
        s, d, r = self.src[m], self.dst[m], self.rate[m]
        e, g = np.nonzero((state.assignment[exchangeable][None, :] == s[:, None]) & ~self.moved[exchangeable])
        g = exchangeable[g]
        shift = state.rate[g] - r[e]
        g_cost, g_packets = self.cost_to[self.row_of[g], d[e]], self.packets_to[self.row_of[g], d[e]]
        exchange = g_cost - self.move_cost[m][e] + self.change_at(s[e], -shift) + self.change_at(d[e], shift)
        exchange[self.overloads(s[e], -shift) | (shift > 0.0) & ((load[d[e]] + shift) / capacity[d[e]] >= self.high)
                 | (g_packets - self.packets[m][e] > self.buffer_free[d[e]])] = np.inf
        return exchange, e, g, shift, g_cost, g_packets

    def _price_merges(self, m: np.ndarray, e: np.ndarray, shift: np.ndarray, g_cost: np.ndarray,
                      g_packets: np.ndarray) -> tuple[np.ndarray, ...]:
        """(move, exchange) pairs of one source: the move dropped and the exchange made, two moves become one.
        The gains, the dropped move a, the exchanged move b (positions in `m`) and the exchange q (in `e`)."""
        load, capacity = self.load, self.capacity
        s, d, r = self.src[m], self.dst[m], self.rate[m]
        a, b = np.nonzero((s[:, None] == s[None, :]) & ~np.eye(m.size, dtype=bool))
        options = np.bincount(e, minlength=m.size)
        a, q = np.repeat(a, options[b]), _ranges(np.searchsorted(e, b), options[b])
        b = e[q]
        same = d[a] == d[b]
        into_b = shift[q] - np.where(same, r[a], 0.0)
        move_cost, packets = self.move_cost[m], self.packets[m]
        merge = (g_cost[q] - move_cost[a] - move_cost[b] + self.change_at(s[b], r[a] - shift[q])
                 + np.where(same, 0.0, self.change_at(d[a], -r[a], True)) + self.change_at(d[b], into_b))
        merge[self.overloads(s[b], r[a] - shift[q]) | (into_b > 0.0) & ((load[d[b]] + into_b) / capacity[d[b]] >= self.high)
              | (g_packets[q] - packets[b] - np.where(same, packets[a], 0.0) > self.buffer_free[d[b]])] = np.inf
        return merge, a, b, q


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated index ranges [start, start + length) of each pair."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - ends + lengths, lengths) + np.arange(ends[-1] if ends.size else 0)
