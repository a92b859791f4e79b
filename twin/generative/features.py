"""Per-instance features of a recorded period: what the generative twin reads and predicts.

Every instance of a cluster is described by the same features, so one network serves any number N of
instances (the models share their weights over instances and see the cluster through a pooled context).
The state of instance i at t (`STATE`) and the action on it during period t (`ACTION`) are computed from the
`ClusterState` the controller saw and the `RecordedAction` that was carried out: the same functions serve
the training transitions (`transitions`) and a twin's rollout from a `Past`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from twin.fidelity.episode import Episode, RecordedAction
from twin.state import ClusterState

STATE = ("utilisation", "queue_ratio", "active", "flows", "drop_ratio")
"""Load / capacity, queue / buffer, 1 if active, flows it serves, packets dropped in the previous period /
buffer."""
ACTION = ("load_out", "load_in", "moves_out", "moves_in", "started", "stopped")
"""Load (/ capacity) of the flows moved away and onto it, their numbers, 1 if started or stopped."""
BINARY_STATE, BINARY_ACTION = (STATE.index("active"),), (ACTION.index("started"), ACTION.index("stopped"))
FAILED_OUTCOMES = ("rolled_back", "rollback_failed")


def state_features(state: ClusterState, drops_before: np.ndarray | None) -> np.ndarray:
    """[N, len(STATE)]; `drops_before` [N] are the previous period's drops (None or NaN: not measured, 0)."""
    n = state.n_instances
    drops = np.zeros(n) if drops_before is None else np.nan_to_num(np.asarray(drops_before, dtype=float))
    buffer = np.maximum(state.buffer, 1e-9)
    return np.stack([state.utilisation, state.queue / buffer, state.active.astype(float),
                     np.bincount(state.assignment, minlength=n).astype(float), drops / buffer], axis=1)


def action_features(state: ClusterState, action: RecordedAction) -> np.ndarray:
    """[N, len(ACTION)]: the done moves of `action` at `state`'s rates (moves of flows it does not know
    count as moves without load)."""
    n, index = state.n_instances, state.flow_index
    rate = np.array([state.rate[index[f]] if f in index else 0.0 for f in action.flows])
    out = np.zeros((n, len(ACTION)))
    np.add.at(out[:, 0], action.src, rate)
    np.add.at(out[:, 1], action.dst, rate)
    out[:, :2] /= np.maximum(state.capacity, 1e-9)[:, None]
    out[:, 2] = np.bincount(action.src, minlength=n)
    out[:, 3] = np.bincount(action.dst, minlength=n)
    out[:, 4], out[:, 5] = action.started, action.stopped
    return out


@dataclass(frozen=True)
class Transitions:
    """Physical transitions, padded to the largest N: windows of the last H states and actions up to t,
    the state t+1, the reward of period t, whether it failed (see `failed`) and which instances exist."""

    states: np.ndarray
    """[B, H, N, len(STATE)]"""
    actions: np.ndarray
    """[B, H, N, len(ACTION)]"""
    next_states: np.ndarray
    """[B, N, len(STATE)]"""
    rewards: np.ndarray
    """[B] −(measured total cost) of period t; NaN where not measured."""
    failed: np.ndarray
    """[B] bool: period t failed (`failed_periods`)"""
    mask: np.ndarray
    """[B, N] bool: the instance exists (False: padding)."""

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def take(self, rows: np.ndarray) -> Transitions:
        return Transitions(*(getattr(self, name)[rows] for name in self.__dataclass_fields__))


def failed_periods(episode: Episode) -> np.ndarray:
    """[T-1] bool: period t failed (the paper's B_FAIL, constraints C1/C2 broken) when during it packets
    were dropped, a flow's SLA was violated, an active instance of state t+1 is loaded beyond its capacity,
    a move was rolled back, or the decision found no feasible action."""
    rows, column = slice(episode.first, episode.last - 1), episode.recording.column
    sla = np.nan_to_num(column("periods", "measured_sla_violations")[rows].astype(float))
    infeasible = column("periods", "decided")[rows] & ~column("periods", "feasible")[rows]
    rolled_back = [np.isin(episode.moves(t)["outcome"], FAILED_OUTCOMES).any() for t in range(episode.n_periods - 1)]
    overloaded = ((episode.utilisation[1:] > 1.0) & episode.active[1:]).any(axis=1)
    dropped = np.nansum(episode.drops[:-1], axis=1) > 0
    return dropped | (sla > 0) | overloaded | np.array(rolled_back, dtype=bool) | infeasible


def episode_features(episode: Episode) -> tuple[np.ndarray, np.ndarray]:
    """([T, N, len(STATE)], [T, N, len(ACTION)]) of every period of `episode`."""
    states = [state_features(episode.state(t), episode.drops[t - 1] if t else None)
              for t in range(episode.n_periods)]
    actions = [action_features(episode.state(t), episode.action(t)) for t in range(episode.n_periods)]
    return np.stack(states), np.stack(actions)


def transitions(episodes: Sequence[Episode], split: str, history: int) -> Transitions:
    """Every transition t -> t+1 of `split` (both periods in it); windows reaching before an episode's first
    period repeat that period."""
    rows = []
    for episode in episodes:
        states, actions = episode_features(episode)
        rewards = -episode.recording.column("periods", "measured_total")[episode.first:episode.last].astype(float)
        failed = failed_periods(episode)
        for t in range(episode.n_periods - 1):
            if episode.split[t] == split and episode.split[t + 1] == split:
                window = np.clip(np.arange(t - history + 1, t + 1), 0, None)
                rows.append((states[window], actions[window], states[t + 1], rewards[t], failed[t]))
    if not rows:
        return empty(history, 1)
    n = max(row[0].shape[1] for row in rows)
    return Transitions(np.stack([_pad(r[0], n, 1) for r in rows]), np.stack([_pad(r[1], n, 1) for r in rows]),
                       np.stack([_pad(r[2], n, 0) for r in rows]), np.array([r[3] for r in rows]),
                       np.array([r[4] for r in rows], dtype=bool),
                       np.stack([np.arange(n) < r[0].shape[1] for r in rows]))


def empty(history: int, n: int) -> Transitions:
    return Transitions(np.zeros((0, history, n, len(STATE))), np.zeros((0, history, n, len(ACTION))),
                       np.zeros((0, n, len(STATE))), np.zeros(0), np.zeros(0, dtype=bool), np.zeros((0, n), bool))


def _pad(array: np.ndarray, n: int, axis: int) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, n - array.shape[axis])
    return np.pad(array, widths)
