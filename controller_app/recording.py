"""Recording the controller's periods in the twin's format (twin.records; dm-demo --record).

The controller process cannot write the final recording: the sink's per-packet delays are known only when
the run ends, in dm-demo. So it appends each period's rows (`twin.records.period_rows`) as one JSON line
to a staging file (a crash loses at most the period in hand), and `finish` joins the sink's delays per
period and writes the Parquet recording from it.

A period's packet counters (packets in, out and dropped at each NF) are the differences of the NF's
cumulative counters between its start and the next period's start, so a period is held until the next
one begins, as the transition log holds it; the period in hand when the controller stops is not recorded.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from controller_app.decisions import DecisionRecord
from controller_app.instances import NFRuntime
from twin.flow import FlowKey
from twin.records import MoveRecord, PeriodRecord, RecordingError, RecordingWriter, period_rows
from twin.scenario import ScenarioKind
from twin.state import ClusterState

COUNTERS = ("received", "forwarded", "dropped")
"""The NF report's cumulative counters behind a period's packets in, out and dropped."""


def period_record(record: DecisionRecord | None, kind: ScenarioKind, explored: bool, wall_time_s: float) -> PeriodRecord:
    """What a twin.records period holds of the controller's decision (None: no decision this period)."""
    if record is None:
        return PeriodRecord(scenario=kind.value, wall_time_s=wall_time_s)
    moves = tuple(MoveRecord(run.flow, run.src, run.dst, run.outcome.value,
                             run.duration_ms if run.started_at is not None and run.finished_at is not None
                             else None) for run in record.migrations)
    policy = "manual" if record.origin == "manual" else "explore" if explored else record.policy
    return PeriodRecord(action=record.action, scenario=record.scenario, policy=policy, decided=True,
                        explored=explored, feasible=record.feasible, executed=record.executed, moves=moves,
                        started=tuple(record.started), stopped=tuple(record.stopped), predicted=record.predicted,
                        measured=record.measured, decision_ms=record.decision_ms,
                        execution_ms=record.execution_ms, wall_time_s=wall_time_s,
                        control=None if explored or record.control is None else record.control.as_record())


class PeriodRecorder:
    """Appends one JSON line of `period_rows` per period to `path`, once the next period's NF counters are in."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._pending: dict | None = None
        self._counters: dict[str, tuple[int, ...] | None] = {}

    def period(self, state: ClusterState, record: PeriodRecord, nfs: Mapping[str, NFRuntime]) -> None:
        """Record a period that began with `state`; completes (and writes) the previous one."""
        counters = {name: _counters(nf) for name, nf in nfs.items()}
        if self._pending is not None:
            self._complete(counters)
        record = replace(record, flow_queues=flow_queues(state, nfs))
        self._pending, self._counters = period_rows(state, record), counters

    def _complete(self, counters: Mapping[str, tuple[int, ...] | None]) -> None:
        rows = self._pending
        dropped = []
        for row in rows["instances"]:
            before, after = self._counters.get(row["instance"]), counters.get(row["instance"])
            if before is None or after is None or any(a < b for a, b in zip(after, before)):
                continue  # not measured: a dead NF, or one restarted (its counters went back)
            row["packets_in"], row["packets_out"], row["packets_dropped"] = (a - b for a, b in zip(after, before))
            dropped.append(row["packets_dropped"])
        rows["periods"][0]["packets_dropped"] = sum(dropped) if dropped else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps(rows, allow_nan=False) + "\n")
        self._pending = None


def flow_queues(state: ClusterState, nfs: Mapping[str, NFRuntime]) -> dict[str, tuple[int, int]] | None:
    """Each flow's (queued packets, drain packets) at the instance serving it in `state`, from the NFs' last
    reports; None when an instance serving flows does not report its per-flow queue."""
    queues = {}
    for flow, k in zip(state.flow_ids, state.assignment.tolist()):
        nf = nfs.get(state.instance_ids[k])
        queued = None if nf is None else nf.queued
        if queued is None:
            return None
        queues[flow] = queued.get(flow, (0, 0))
    return queues


def _counters(nf: NFRuntime) -> tuple[int, ...] | None:
    report = nf.last_report
    if not nf.alive or not report:
        return None
    return tuple(int(report.get(name, 0)) for name in COUNTERS)


def finish(staging: str | Path, directory: str | Path, meta: Mapping, outcomes: Mapping | None = None,
           period_s: float = 1.0) -> Path:
    """Write the recording at `directory` from the controller's staging file, with the sink's delays of
    `outcomes` (trace_replay.live.flow_outcomes) joined per period: a delay bin belongs to the period whose
    [wall time, next period's wall time) holds the bin's middle. Returns the directory."""
    staging = Path(staging)
    try:
        lines = staging.read_text().splitlines(keepends=True)
        # a line is written in one append: one without its newline is the controller writing it just now
        periods = [json.loads(line) for line in lines if line.endswith("\n")]
    except (OSError, json.JSONDecodeError) as error:
        raise RecordingError(f"{staging}: the controller's staged periods cannot be read: {error}") from None
    if not periods:
        raise RecordingError(f"{staging}: the controller staged no period; nothing to record")
    starts = [rows["periods"][0]["wall_time_s"] for rows in periods]
    if outcomes is not None:
        _join_delays(periods, starts + [starts[-1] + period_s], outcomes)
    writer = RecordingWriter(directory, meta)
    for rows in periods:
        writer.add_rows(rows)
    return writer.close()


def _join_delays(periods: list[dict], bounds: list[float], outcomes: Mapping) -> None:
    """Fill each flow row's delay_packets and delay_ms, and each period's sink totals, from the sink's bins.
    Packets of a flow the period's state does not list (it landed during the period) count in the totals only."""
    half_bin = outcomes.get("delay_bin_s", 1.0) / 2.0
    sums: dict[tuple[int, str | None], list[float]] = {}
    for flow in outcomes["flows"].values():
        flow_id = FlowKey.of(*flow["key"]).id
        for start, packets, mean_ms in flow.get("delay_bins", []):
            t = int(np.searchsorted(bounds, start + half_bin, side="right")) - 1
            if 0 <= t < len(periods):
                for key in ((t, flow_id), (t, None)):
                    total = sums.setdefault(key, [0, 0.0])
                    total[0] += packets
                    total[1] += packets * mean_ms
    for t, rows in enumerate(periods):
        for row in rows["flows"]:
            if (total := sums.get((t, row["flow"]))) is not None:
                row["delay_packets"], row["delay_ms"] = int(total[0]), total[1] / total[0]
        packets, delay = sums.get((t, None), (0, 0.0))
        rows["periods"][0]["sink_packets"] = int(packets)
        rows["periods"][0]["sink_delay_ms"] = delay / packets if packets else None
