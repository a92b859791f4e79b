"""What the residual twin sees: one origin's history and the k actions after it, as a PyG graph.

The cluster graph is the complete directed graph over every instance (standby ones too, so a started
instance is a node), with the same features for every instance so that one set of weights serves any N.
A node's **state** s_i (the quantity eq. (15)-(16) steps) is four scale-free numbers:

* `utilisation`: the controller's l_i of the state (load over capacity);
* `queue_fill`: the reported queue over the buffer;
* `arrivals`: the packets the instance received during the period before the state, per capacity-second
  (the NF's own counter: the controller's l_i lags it, docs/twin.md "Residual twin");
* `drops`: the packets it dropped during that period, per buffer packet.

A window holds the last `history` states (newest first) and, for each of the k periods to roll out, the
action: per node whether it is active before and after, started, stopped, and the load moved in and out
(the moved flows' rates at the origin over the node's capacity); per node also its capacity relative to the
cluster's and its buffer in periods of full-rate service; per edge the moved load (over the mean
capacity), the moved flows and la_ij. Flows that arrived after the origin are unknown to the twin, so
their moves carry no load, as in the default twin.

The **base** inputs (`BASE`, when the network has a base twin): per node and period the calibrated twin's
own k-period rollout from the same origin with the same actions (its utilisation, queue fill and drops per
buffer packet): the physics the network corrects. Like the network, it reads only the past at the origin.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from gnn_policy.graph import LATENCY_UNIT_MS, complete_edges
from twin.fidelity.episode import Episode, Past, RecordedAction, state_flow_table
from twin.fidelity.twins import Step, Twin
from twin.migration import IndexedAction
from twin.state import ClusterState

STATE = ("utilisation", "queue_fill", "arrivals", "drops")
ACTION_NODE = ("active", "active_after", "started", "stopped", "moved_in", "moved_out")
STATIC_NODE = ("relative_capacity", "buffer_periods")
EDGE = ("migration_latency", "moved_load", "moved_flows")
BASE = ("base_utilisation", "base_queue_fill", "base_drops")
"""The base twin's prediction of each period, in the units of `STATE`'s utilisation, queue_fill and drops."""
FLOWS_UNIT = 10.0
"""Moved flows per edge are given in tens."""


@dataclass(frozen=True)
class Origin:
    """What is known at the origin: per instance, the last `history` states (newest first, [N, H, 4]),
    and the origin's cluster (capacities, buffers, flows and their rates, la_ij)."""

    history: np.ndarray
    state: ClusterState
    period_s: float


@dataclass(frozen=True)
class Move:
    """One period's action in the twin's terms: per pair the moved load (packets/s) and flows, the
    instances started and stopped."""

    load: np.ndarray
    flows: np.ndarray
    started: np.ndarray
    stopped: np.ndarray


def origin_of_past(past: Past, history: int) -> Origin:
    """The origin of a recorded period: states t, t-1, ... (the earliest known repeated before it; the first
    state's arrivals taken to be its load)."""
    state = past.state()
    rows = []
    for back in range(history):
        s = max(past.t - back, 0)
        known = past.state(s)
        if s > 0:
            arrivals = np.nan_to_num(past.packets_in(s - 1)[0]) / (known.capacity * past.period_s)
            drops = np.nan_to_num(past.drops(s - 1)[0])
        else:
            arrivals, drops = known.utilisation, np.zeros(known.n_instances)
        rows.append(np.stack([known.utilisation, known.queue / np.maximum(known.buffer, 1e-9), arrivals,
                              drops / np.maximum(known.buffer, 1e-9)], axis=1))
    return Origin(np.stack(rows, axis=1), state, past.period_s)


def origin_of_state(state: ClusterState, history: int, period_s: float = 1.0) -> Origin:
    """An origin with no past but `state` (the live case without a recording): every earlier state is taken
    to equal it, its arrivals to be its load and its drops none."""
    row = np.stack([state.utilisation, state.queue / np.maximum(state.buffer, 1e-9), state.utilisation,
                    np.zeros(state.n_instances)], axis=1)
    return Origin(np.repeat(row[:, None, :], history, axis=1), state, period_s)


class StatePast:
    """A bare ClusterState as a twin's `Past` (origin 0, nothing measured before it): what the base twin reads
    when actions are scored on a state without a recording."""

    def __init__(self, state: ClusterState, period_s: float = 1.0):
        self._state, self.t, self.period_s = state, 0, period_s
        self.instance_ids, self.capacity, self.buffer = state.instance_ids, state.capacity, state.buffer

    def state(self, t: int | None = None) -> ClusterState:
        if t not in (None, 0):
            raise IndexError(f"state {t} is not known at origin 0")
        return self._state

    def flow_table(self, t: int | None = None) -> dict[str, np.ndarray]:
        return state_flow_table(self.state(t))

    def queue(self, since: int) -> np.ndarray:
        return self._state.queue[None]

    def drops(self, since: int) -> np.ndarray:
        return np.empty((0, self._state.n_instances))

    packets_in = drops

    def durations(self, since: int) -> tuple[np.ndarray, list]:
        return np.empty(0), []


def as_recorded(state: ClusterState, action: IndexedAction) -> RecordedAction:
    """A policy's action on `state` as the base twin takes a recorded one (every move done)."""
    n, flows = state.n_instances, np.asarray(action.flows, dtype=np.int64)
    started, stopped = np.zeros(n, bool), np.zeros(n, bool)
    started[action.start], stopped[action.stop] = True, True
    return RecordedAction(tuple(np.asarray(state.flow_ids, dtype=object)[flows].tolist()), state.assignment[flows],
                          np.asarray(action.dst, dtype=np.int64), started, stopped, int(flows.size))


def base_prediction(steps: Sequence[Step], buffer: np.ndarray, horizon: int) -> np.ndarray:
    """[N, horizon, 3] the BASE inputs: the base twin's rollout `steps` (at least one) in state units of the
    origin's `buffer`; periods past the steps repeat the last."""
    buffer = np.maximum(buffer, 1e-9)
    rows = [np.stack([step.utilisation, step.queue / buffer, step.drops / buffer], axis=1) for step in steps]
    return np.stack(rows + rows[-1:] * (horizon - len(rows)), axis=1)


def recorded_move(origin: ClusterState, action: RecordedAction) -> Move:
    """A recorded action's moves at the origin's rates (moves of flows the origin does not know carry none)."""
    index = origin.flow_index
    rate = np.array([origin.rate[index[f]] if f in index else 0.0 for f in action.flows])
    return _move(origin.n_instances, action.src, action.dst, rate, action.started, action.stopped)


def indexed_move(state: ClusterState, action: IndexedAction) -> Move:
    """A policy's action on `state` (flow indices into it)."""
    n = state.n_instances
    started, stopped = np.zeros(n, bool), np.zeros(n, bool)
    started[action.start], stopped[action.stop] = True, True
    return _move(n, state.assignment[action.flows], action.dst, state.rate[action.flows], started, stopped)


def _move(n: int, src: np.ndarray, dst: np.ndarray, rate: np.ndarray, started: np.ndarray,
          stopped: np.ndarray) -> Move:
    load, flows = np.zeros((n, n)), np.zeros((n, n))
    np.add.at(load, (src, dst), rate)
    np.add.at(flows, (src, dst), 1.0)
    return Move(load, flows, np.asarray(started, bool), np.asarray(stopped, bool))


def window(origin: Origin, moves: Sequence[Move], horizon: int, targets: np.ndarray | None = None,
           mask: np.ndarray | None = None, base: np.ndarray | None = None) -> Data:
    """The graph of one origin and the moves of its next periods, padded to `horizon` periods (a padded
    period moves nothing and changes no instance). `targets` [N, horizon, 4] are the measured next states
    (NaN: unknown), `mask` [N, horizon] the instances whose prediction is scored and `base` [N, horizon, 3]
    the base twin's prediction (`base_prediction`; None: a network without a base)."""
    n = origin.state.n_instances
    edges = complete_edges(n)
    node_steps, edge_steps = _action_steps(origin.state, moves, horizon, edges)
    targets = np.full((n, horizon, len(STATE)), np.nan) if targets is None else targets
    mask = np.zeros((n, horizon), bool) if mask is None else mask
    f32 = torch.float32
    return Data(**_origin_tensors(origin, edges), node_steps=torch.as_tensor(node_steps, dtype=f32),
                edge_steps=torch.as_tensor(edge_steps, dtype=f32), base=_base_tensor(base, n, horizon),
                y=torch.as_tensor(targets, dtype=f32), mask=torch.as_tensor(mask))


def candidate_windows(origin: Origin, candidates: Sequence[Sequence[Move]], horizon: int,
                      bases: Sequence[np.ndarray | None]) -> Data:
    """What the network reads of `collate([window(origin, moves, horizon, base=base) for moves, base in
    zip(candidates, bases)])`, built at once (no targets): the origin's history, static features, edges and la_ij
    are the same in every window, so they are computed once and repeated, and only the moves and the base twin's
    predictions are per candidate. The look-ahead scores a few candidates every period, where PyG's generic
    collation cost as much as building the windows."""
    c, n = len(candidates), origin.state.n_instances
    edges = complete_edges(n)
    steps = [_action_steps(origin.state, moves, horizon, edges) for moves in candidates]
    shared = _origin_tensors(origin, edges)
    f32 = torch.float32
    offsets = torch.arange(c).repeat_interleave(edges.shape[1]) * n
    return Data(x=shared["x"].repeat(c, 1, 1), static=shared["static"].repeat(c, 1),
                edge_index=shared["edge_index"].repeat(1, c) + offsets, latency=shared["latency"].repeat(c, 1),
                node_steps=torch.as_tensor(np.concatenate([node for node, _ in steps]), dtype=f32),
                edge_steps=torch.as_tensor(np.concatenate([edge for _, edge in steps]), dtype=f32),
                base=torch.cat([_base_tensor(base, n, horizon) for base in bases]),
                batch=torch.arange(c).repeat_interleave(n), num_nodes=c * n)


def _base_tensor(base: np.ndarray | None, n: int, horizon: int) -> torch.Tensor:
    """[N, horizon, 3] the base twin's prediction, or [N, horizon, 0] for a network without a base."""
    return torch.as_tensor(np.zeros((n, horizon, 0)) if base is None else base, dtype=torch.float32)


def _origin_tensors(origin: Origin, edges: np.ndarray) -> dict[str, torch.Tensor]:
    """The parts of a window that only the origin fixes: history, static node features, edges and la_ij."""
    state = origin.state
    capacity = state.capacity
    f32 = torch.float32
    return {"x": torch.as_tensor(origin.history, dtype=f32),
            "static": torch.as_tensor(np.stack([capacity / _mean_capacity(state),
                                                state.buffer / (capacity * origin.period_s)], axis=1), dtype=f32),
            "edge_index": torch.as_tensor(edges, dtype=torch.long),
            "latency": torch.as_tensor(state.migration_ms[edges[0], edges[1]][:, None] / LATENCY_UNIT_MS,
                                       dtype=f32)}


def _mean_capacity(state: ClusterState) -> float:
    """The unit of moved load on the edges and of the relative capacities: the mean active capacity."""
    capacity = state.capacity
    return capacity[state.active].mean() if state.active.any() else capacity.mean()


def _action_steps(state: ClusterState, moves: Sequence[Move], horizon: int,
                  edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, horizon, ACTION_NODE] and [E, horizon, 2]: each period's action per node and per edge, a period after
    the last move padded with no move (it changes no instance and moves nothing)."""
    n, capacity, mean_capacity = state.n_instances, state.capacity, _mean_capacity(state)
    node_steps, edge_steps = np.zeros((n, horizon, len(ACTION_NODE))), np.zeros((edges.shape[1], horizon, 2))
    active = state.active.copy()
    for j, move in enumerate(moves[:horizon]):
        after = (active | move.started) & ~move.stopped
        if not after.any():
            after = active
        node_steps[:, j] = np.stack([active, after, move.started, move.stopped,
                                     move.load.sum(axis=0) / capacity, move.load.sum(axis=1) / capacity], axis=1)
        edge_steps[:, j] = np.stack([move.load[edges[0], edges[1]] / mean_capacity,
                                     move.flows[edges[0], edges[1]] / FLOWS_UNIT], axis=1)
        active = after
    node_steps[:, len(moves):, ACTION_NODE.index("active")] = active[:, None]
    node_steps[:, len(moves):, ACTION_NODE.index("active_after")] = active[:, None]
    return node_steps, edge_steps


def measured(episode: Episode, t: int) -> np.ndarray:
    """[N, 4] the measured state of period t+1 (the target of origin t): STATE's four numbers."""
    capacity, buffer = episode.capacity[t + 1], np.maximum(episode.buffer[t + 1], 1e-9)
    return np.stack([episode.utilisation[t + 1], episode.queue[t + 1] / buffer,
                     episode.packets_in[t] / (capacity * episode.period_s), episode.drops[t] / buffer], axis=1)


def training_windows(episodes: Sequence[Episode], split: str, horizon: int, history: int,
                     base: Twin | None = None) -> list[Data]:
    """Every origin of `split` with its next `horizon` periods' moves and measured states (as far as the
    split goes: later periods are masked out), and `base`'s prediction of them when given."""
    out = []
    for episode in episodes:
        inside = episode.split == split
        for t in range(episode.n_periods - 1):
            if not (inside[t] and inside[t + 1]):
                continue
            steps = 0
            while steps < horizon and t + steps + 1 < episode.n_periods and inside[t + steps + 1]:
                steps += 1
            past = episode.past(t)
            origin = origin_of_past(past, history)
            actions = [episode.action(t + j) for j in range(steps)]
            moves = [recorded_move(origin.state, action) for action in actions]
            targets = np.full((origin.state.n_instances, horizon, len(STATE)), np.nan)
            mask = np.zeros((origin.state.n_instances, horizon), bool)
            for j in range(steps):
                targets[:, j] = measured(episode, t + j)
                mask[:, j] = episode.active[t + j + 1]
            out.append(window(origin, moves, horizon, targets, mask,
                              None if base is None else base_prediction(base.rollout(past, actions), past.buffer, horizon)))
    return out


def collate(windows: Sequence[Data]) -> Batch:
    return Batch.from_data_list(list(windows))
