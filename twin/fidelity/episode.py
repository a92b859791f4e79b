"""A recording as the fidelity benchmark reads it: contiguous periods over one instance set, with the
truth of every period and, for a twin, only the past (`Past`) and the recorded actions (`RecordedAction`).

A twin that predicts from origin t gets `episode.past(t)`, which answers only for the states up to t and
for what was measured during the periods before t (a period's drops, move durations, packet counters and
delays are known when it ends), and the actions of t..t+k-1 (`episode.action`): the moves that were carried
out and the instances started and stopped, without their durations. The rule of issue 18 ("never the
recorded or the trace's future") is so kept by construction, not by discipline.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from twin.records import Recording, RecordingError
from twin.state import ClusterState

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class RecordedAction:
    """What period t carried out: the done moves (flow ids, source and destination instance indices) and the
    instances started and stopped ([N] bool). `n_run` counts the moves that ran (done or rolled back)."""

    flows: tuple[str, ...]
    src: np.ndarray
    dst: np.ndarray
    started: np.ndarray
    stopped: np.ndarray
    n_run: int


class Episode:
    """Periods [first, last) of one recording, all over the same instances; `split[t]` labels period t."""

    def __init__(self, recording: Recording, first: int, last: int, split: str | np.ndarray, name: str):
        self.recording, self.first, self.last, self.name = recording, first, last, name
        self.n_periods = last - first
        self.split = np.full(self.n_periods, split, dtype=object) if isinstance(split, str) else split
        if self.split.shape != (self.n_periods,) or not set(self.split) <= set(SPLITS):
            raise RecordingError(f"{recording.directory}: a split label is not one of {', '.join(SPLITS)}")
        state = recording.state(first)
        self.instance_ids = state.instance_ids
        n = len(self.instance_ids)

        def per_instance(name: str) -> np.ndarray:
            rows = recording.rows("instances", first)
            start, stop = rows.start, recording.rows("instances", last - 1).stop
            return recording.column("instances", name)[start:stop].astype(float).reshape(self.n_periods, n)

        self.capacity, self.buffer = per_instance("capacity_pps"), per_instance("buffer_packets")
        self.queue, self.utilisation = per_instance("queue_packets"), per_instance("utilisation")
        self.processing_ms = per_instance("processing_ms")
        self.active = per_instance("active").astype(bool)
        self.started, self.stopped = per_instance("started").astype(bool), per_instance("stopped").astype(bool)
        self.packets_in, self.packets_out = per_instance("packets_in"), per_instance("packets_out")
        self.drops = per_instance("packets_dropped")
        periods = slice(first, last)
        self.time_s = recording.column("periods", "time_s")[periods].astype(float)
        self.costs = {name: recording.column("periods", f"measured_{name}")[periods].astype(float)
                      for name in COST_COMPONENTS}
        self.period_s = float(recording.meta.get("period_s") or _median_step(self.time_s))
        self._states: dict[int, ClusterState] = {}
        self._columns: dict[tuple[str, str], np.ndarray] = {}
        self._actions: dict[int, RecordedAction] = {}

    # --- states, flows and moves ----------------------------------------------------------------
    def state(self, t: int) -> ClusterState:
        """The ClusterState the controller saw at period t (cached: every twin of every origin reads it)."""
        if t not in self._states:
            self._states[t] = self.recording.state(self.first + t)
        return self._states[t]

    def flow_table(self, t: int) -> dict[str, np.ndarray]:
        """Period t's flows: ids (object), instance index, rate, delay_ms and delay_packets (NaN: none), and the
        per-flow queue at t, queued_packets and drain_packets (NaN: not reported)."""
        rows = self.recording.rows("flows", self.first + t)
        index = {instance: k for k, instance in enumerate(self.instance_ids)}
        column = self._column
        return {"flow": column("flows", "flow")[rows],
                "instance": np.array([index[i] for i in column("flows", "instance")[rows]], dtype=np.int64),
                "rate": column("flows", "rate_pps")[rows].astype(float),
                "delay_ms": column("flows", "delay_ms")[rows].astype(float),
                "delay_packets": column("flows", "delay_packets")[rows].astype(float),
                "queued_packets": column("flows", "queued_packets")[rows].astype(float),
                "drain_packets": column("flows", "drain_packets")[rows].astype(float)}

    def moves(self, t: int) -> dict[str, np.ndarray]:
        """Period t's recorded moves: flow, src and dst indices, outcome and duration_ms (NaN: none)."""
        rows = self.recording.rows("migrations", self.first + t)
        index = {instance: k for k, instance in enumerate(self.instance_ids)}
        column = self._column
        return {"flow": column("migrations", "flow")[rows],
                "src": np.array([index[i] for i in column("migrations", "src")[rows]], dtype=np.int64),
                "dst": np.array([index[i] for i in column("migrations", "dst")[rows]], dtype=np.int64),
                "outcome": column("migrations", "outcome")[rows],
                "duration_ms": column("migrations", "duration_ms")[rows].astype(float)}

    def action(self, t: int) -> RecordedAction:
        if t not in self._actions:
            self._actions[t] = self._action(t)
        return self._actions[t]

    def _action(self, t: int) -> RecordedAction:
        moves = self.moves(t)
        done = moves["outcome"] == "done"
        ran = np.isin(moves["outcome"], ("done", "rolled_back", "rollback_failed"))
        return RecordedAction(tuple(moves["flow"][done].tolist()), moves["src"][done], moves["dst"][done],
                              self.started[t], self.stopped[t], int(ran.sum()))

    def durations(self, t: int) -> np.ndarray:
        """The measured durations of period t's done moves, in the order of `action(t).flows`."""
        moves = self.moves(t)
        return moves["duration_ms"][moves["outcome"] == "done"]

    def _column(self, table: str, name: str) -> np.ndarray:
        """A column of the recording as numpy, read once (the recording converts the whole column per call)."""
        key = (table, name)
        if key not in self._columns:
            self._columns[key] = self.recording.column(table, name)
        return self._columns[key]

    def step_s(self, t: int) -> float:
        """Length of period t: to the next state's time, or the recording's period for the last one."""
        return float(self.time_s[t + 1] - self.time_s[t]) if t + 1 < self.n_periods else self.period_s

    def past(self, t: int) -> Past:
        return Past(self, t)


COST_COMPONENTS = ("migration", "resource", "threshold_penalty")
"""The period's cost components (twin.migration.CostBreakdown) that the benchmark compares."""


class Past:
    """What a twin may read at origin t: states 0..t, and the measurements of periods 0..t-1."""

    def __init__(self, episode: Episode, t: int):
        self._episode, self.t = episode, t
        self.instance_ids, self.period_s = episode.instance_ids, episode.period_s
        self.capacity, self.buffer = episode.capacity[t], episode.buffer[t]

    def state(self, t: int | None = None) -> ClusterState:
        return self._episode.state(self._known_state(t))

    def flow_table(self, t: int | None = None) -> dict[str, np.ndarray]:
        """The flows of state t (<= origin), without the delays measured during period t."""
        table = dict(self._episode.flow_table(self._known_state(t)))
        del table["delay_ms"], table["delay_packets"]
        return table

    def queue(self, since: int) -> np.ndarray:
        """[periods, N] the queues of states since..t."""
        return self._episode.queue[max(since, 0):self.t + 1]

    def drops(self, since: int) -> np.ndarray:
        """[periods, N] drops measured in periods since..t-1."""
        return self._episode.drops[max(since, 0):self.t]

    def packets_in(self, since: int) -> np.ndarray:
        """[periods, N] packets the instances received in periods since..t-1 (NaN: not measured)."""
        return self._episode.packets_in[max(since, 0):self.t]

    def durations(self, since: int) -> tuple[np.ndarray, list[RecordedAction]]:
        """The measured move durations of periods since..t-1 (concatenated) and those periods' actions."""
        periods = range(max(since, 0), self.t)
        return (np.concatenate([self._episode.durations(p) for p in periods]) if periods else np.empty(0),
                [self._episode.action(p) for p in periods])

    def _known_state(self, t: int | None) -> int:
        t = self.t if t is None else t
        if not 0 <= t <= self.t:
            raise IndexError(f"state {t} is not known at origin {self.t}")
        return t


def state_flow_table(state: ClusterState) -> dict[str, np.ndarray]:
    """`Past.flow_table` of a state known without a recording (a live or bare one): no per-flow queue."""
    return {"flow": np.array(state.flow_ids, dtype=object), "instance": state.assignment, "rate": state.rate}


def _median_step(time_s: np.ndarray) -> float:
    steps = np.diff(time_s)
    return float(np.median(steps)) if steps.size else 1.0


def episodes_of(recording: Recording, split: str | np.ndarray, name: str) -> list[Episode]:
    """The recording cut where its instance set changes (an NF lost or added): one Episode per stretch
    (none for the periods before the controller knew any instance)."""
    ids = recording.column("instances", "instance")
    bounds = [recording.rows("instances", t) for t in range(recording.n_periods)]
    keys = [tuple(ids[b]) for b in bounds]
    labels = np.full(recording.n_periods, split, dtype=object) if isinstance(split, str) else split
    cuts = [0] + [t for t in range(1, len(keys)) if keys[t] != keys[t - 1]] + [len(keys)]
    return [Episode(recording, a, b, labels[a:b], name) for a, b in itertools.pairwise(cuts) if b > a and keys[a]]
