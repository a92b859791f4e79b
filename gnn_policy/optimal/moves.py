"""The restricted problem's moves: allowed (flow, destination) pairs with their eq. (2) costs and constraint (5)
packets, the rows every model shares ((4) and (5)) and the actions they decode to."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gnn_policy.base import Problem
from gnn_policy.optimal.milp import INF, Milp, group_rows
from twin import cost
from twin.migration import IndexedAction
from twin.state import ClusterState

BUFFER_MARGIN = 1e-6
"""Packets by which the models tighten constraint (5): HiGHS may break a row by its feasibility tolerance
(1e-7), `twin.migration.apply` forgives only 1e-9, so every solver answer passes apply's check."""


def indexed(flows, dst, start=(), stop=()) -> IndexedAction:
    """The IndexedAction moving flow indices `flows` to instance indices `dst` (paired, sorted by flow) and
    starting and stopping the instance indices `start`, `stop` (sorted)."""
    flows = np.asarray(flows, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    order = np.argsort(flows, kind="stable")
    return IndexedAction(flows[order], dst[order], np.sort(np.asarray(start, dtype=np.int64)),
                         np.sort(np.asarray(stop, dtype=np.int64)))


@dataclass(frozen=True)
class Pairs:
    flow: np.ndarray
    dst: np.ndarray
    src: np.ndarray
    cost: np.ndarray
    """C_ij^f of eq. (2), from twin.cost.flow_migration_cost."""
    size: np.ndarray
    """Packets buffered at the destination during the move (constraint (5)), twin.cost.migrated_buffer_packets."""

    @property
    def count(self) -> int:
        return int(self.flow.size)

    def subset(self, keep: np.ndarray) -> Pairs:
        return Pairs(self.flow[keep], self.dst[keep], self.src[keep], self.cost[keep], self.size[keep])


def allowed_pairs(problem: Problem, flows: np.ndarray, destinations: np.ndarray) -> Pairs:
    """Every (flow, destination) pair with destination != source that constraint (5) allows on its own."""
    state = problem.state
    flows = np.asarray(flows, dtype=np.int64)
    destinations = np.asarray(destinations, dtype=np.int64)
    f = np.repeat(flows, destinations.size)
    k = np.tile(destinations, flows.size)
    keep = state.assignment[f] != k
    f, k = f[keep], k[keep]
    size = cost.migrated_buffer_packets(state, f, k)
    keep = state.queue[k] + size <= state.buffer[k] - BUFFER_MARGIN
    f, k, size = f[keep], k[keep], size[keep]
    return Pairs(f, k, state.assignment[f], cost.flow_migration_cost(state, f, k, problem.params), size)


def move_columns(pair_index: dict[tuple[int, int], int], n_columns: int, action: IndexedAction) -> np.ndarray | None:
    """A column vector with the action's (flow, destination) move variables at 1; None when a move is
    not a column of the restricted model."""
    x = np.zeros(n_columns)
    for f, k in zip(action.flows.tolist(), action.dst.tolist()):
        col = pair_index.get((f, k))
        if col is None:
            return None
        x[col] = 1.0
    return x


def utilisation_terms(state: ClusterState, src: np.ndarray, dst: np.ndarray, rate: np.ndarray, cols: np.ndarray):
    """(instance, column, coefficient) of Δu for columns moving `rate` packets/s each: +r/c at the destination,
    −r/c at the source."""
    inst = np.r_[dst, src]
    coef = np.r_[rate / state.capacity[dst], -rate / state.capacity[src]]
    return inst, np.r_[cols, cols], coef


def assignment_rows(milp: Milp, pairs: Pairs, ycols: np.ndarray) -> None:
    """(4): each flow stays or moves to exactly one destination (Σ_k y_fk <= 1)."""
    starts, index, value, _ = group_rows(pairs.flow, ycols, np.ones(pairs.count))
    milp.csr_rows(starts, index, value, -INF, 1.0)


def buffer_rows(milp: Milp, state: ClusterState, dst: np.ndarray, size: np.ndarray, cols: np.ndarray) -> None:
    """(5): queue_j + Σ moved-in size <= buffer_j, only where the moves could exceed it (`size`: packets each
    column at 1 buffers at its destination `dst`)."""
    room = state.buffer - state.queue - BUFFER_MARGIN
    starts, index, value, keys = group_rows(dst, cols, size)
    if keys.size == 0:
        return
    totals = np.add.reduceat(value, starts)
    binding = totals > room[keys]
    rows = []
    ends = np.r_[starts[1:], index.size]
    for r in np.flatnonzero(binding):
        rows.append((index[starts[r]:ends[r]], value[starts[r]:ends[r]], -INF, float(room[keys[r]])))
    milp.rows(rows)
