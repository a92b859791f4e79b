"""The closed loop's stability and service metrics (issue 17, section 2), defined once so that a run of
the twin's loop and a run on the live testbed read alike.

- `reversals`: executed scale actions that undo a recent one: a period that starts an instance within
  `REVERSAL_WINDOW_S` after a period that stopped one, or stops one within that window after a start.
  Each such period counts once (a period that both starts and stops counts once too); out-in-out
  within the window counts 2.
- `flows_migrated_twice`: flows (not moves) moved again within `REMIGRATION_WINDOW_S` of a move.
- `instance_seconds`: active-instance seconds, from samples of the active count.
- `sla_violation_flow_seconds`: flow-seconds in which the mean delay of a flow's packets exceeds the
  flow's SLA (LA^f).

Times are seconds of loop time (any origin); windows are inclusive. The functions are pure, over plain
sequences; `ReversalTracker` and `RemigrationTracker` are the same definitions fed one period or move
at a time (a running controller's counters), and the functions are written over them.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable

import numpy as np

REVERSAL_WINDOW_S = 30.0
REMIGRATION_WINDOW_S = 10.0
_EPS_S = 1e-9
"""Slack on the windows, so that a gap summed from float periods (300 x 0.1 s) still reads as 30 s."""


class ReversalTracker:
    """Counts reversals period by period; periods come in time order."""

    def __init__(self, window_s: float = REVERSAL_WINDOW_S):
        self.window_s = window_s
        self._last_start = self._last_stop = self._last_time = -math.inf

    def add(self, time_s: float, started: int, stopped: int) -> bool:
        """Record one period's executed scale actions (instances started and stopped); True when the
        period reverses a recent one."""
        if started < 0 or stopped < 0:
            raise ValueError(f"instance counts cannot be negative: started {started}, stopped {stopped}")
        if time_s < self._last_time:
            raise ValueError(f"periods must come in time order: {time_s} after {self._last_time}")
        self._last_time = time_s
        limit = self.window_s + _EPS_S
        reversal = (started > 0 and time_s - self._last_stop <= limit) or \
                   (stopped > 0 and time_s - self._last_start <= limit)
        if started:
            self._last_start = time_s
        if stopped:
            self._last_stop = time_s
        return reversal


class RemigrationTracker:
    """Counts flows moved again within the window of a move; moves come in time order."""

    def __init__(self, window_s: float = REMIGRATION_WINDOW_S):
        self.window_s = window_s
        self._last_move: dict[Hashable, float] = {}
        self._counted: set[Hashable] = set()
        self._prune_at = 1024

    def add(self, time_s: float, flow: Hashable) -> bool:
        """Record one move of `flow`; True when it makes the flow count (once per flow)."""
        last = self._last_move.get(flow, -math.inf)
        if time_s < last:
            raise ValueError(f"moves of flow {flow!r} must come in time order: {time_s} after {last}")
        self._last_move[flow] = time_s
        if len(self._last_move) >= self._prune_at:  # forget moves too old to count, amortised
            self._last_move = {f: t for f, t in self._last_move.items() if time_s - t <= self.window_s + _EPS_S}
            self._prune_at = max(1024, 2 * len(self._last_move))
        if flow in self._counted or time_s - last > self.window_s + _EPS_S:
            return False
        self._counted.add(flow)
        return True


def reversals(periods: Iterable[tuple[float, int, int]], window_s: float = REVERSAL_WINDOW_S) -> int:
    """Reversals over (time_s, instances started, instances stopped) per period, in any order."""
    tracker = ReversalTracker(window_s)
    return sum(tracker.add(*period) for period in sorted(periods, key=lambda period: period[0]))


def flows_migrated_twice(moves: Iterable[tuple[float, Hashable]], window_s: float = REMIGRATION_WINDOW_S) -> int:
    """Flows moved again within `window_s` of a move, over (time_s, flow id) per executed move."""
    tracker = RemigrationTracker(window_s)
    return sum(tracker.add(*move) for move in sorted(moves, key=lambda move: move[0]))


def instance_seconds(samples: Iterable[tuple[float, int]], end_s: float) -> float:
    """Active-instance seconds from (time_s, active instances) samples, each count holding until the next
    sample and the last one until `end_s`."""
    ordered = sorted(samples)
    if ordered and end_s < ordered[-1][0]:
        raise ValueError(f"end_s {end_s} is before the last sample at {ordered[-1][0]}")
    ends = [t for t, _ in ordered[1:]] + [end_s]
    return float(sum(active * (end - t) for (t, active), end in zip(ordered, ends)))


def sla_violation_flow_seconds(mean_delay_ms, sla_ms, period_s: float = 1.0) -> float:
    """Flow-seconds over SLA: `period_s` times the number of (flow, period) entries whose mean packet
    delay exceeds the flow's SLA. The arrays broadcast; NaN (no packet in that period) never counts."""
    delay = np.asarray(mean_delay_ms, dtype=float)
    with np.errstate(invalid="ignore"):
        return float(period_s * np.count_nonzero(delay > np.asarray(sla_ms, dtype=float)))
