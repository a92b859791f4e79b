"""Recorded transitions: the columnar format in which the testbed (or a simulation) records every period,
so that a twin can be fitted to, and judged against, what the testbed did (issue 18, data acquisition).

A recording is a directory:

- `meta.json`: `schema_version` (`SCHEMA_VERSION`), the settings of the run (trace, window start,
  speed, policy, explore eps, seed, cluster settings, period) and the row count of each table;
- one Parquet file per table of `SCHEMA` (`periods`, `instances`, `flows`, `latency`, `migrations`),
  each row keyed by its `period` t (0, 1, 2, ... without gaps).

Period t holds the state the controller saw at t, the action taken on it, what carrying it out did and
what was measured during the period (until t+1's state). **The next state of period t is period t+1's
rows**; the last period has no next state. Measured columns are nullable: null means "not measured"
(a simulated recording, or a period without packets); NaN and infinities are refused everywhere.
docs/twin.md ("Recorded transitions") lists every column with its unit.

`RecordingWriter` writes one (no controller needed: `twin.sim` runs can be recorded too); `load` reads
and validates one, raising `RecordingError` (a ValueError) naming the file and the problem.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twin.flow import FIVE_TUPLE_DTYPE
from twin.migration import Action
from twin.state import ClusterState, StateError

SCHEMA_VERSION = 3
"""2: the flows table gains `queued_packets` and `drain_packets` (the NF's per-flow queue at t); 3: the periods
table gains the control head's draw (`control_*`)."""
OLDEST_READABLE_VERSION = 2
"""A version-2 recording loads with the columns added since null (`_upgrade`); a version-1 one is refused: without
the per-flow queue its moves' drain waits cannot be told apart (twin.physics)."""
META_FILE = "meta.json"
MOVE_OUTCOMES = ("done", "rolled_back", "rollback_failed", "skipped", "not_executed")
"""A planned move's outcome: the executor's four, or `not_executed` (a dry-run, an infeasible or failed
decision, a decision in manual mode)."""
SHIPPED_DIR = Path(__file__).parent / "data" / "recorded"
"""The embedded dataset (benchmarks/record_dataset.sh makes it): one recording per dm-demo run."""
SHIPPED_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("w000-deepmigration-x02", "w040-ofm", "w080-pairwise-x02", "w125-deepmigration",
              "w075-deepmigration-s075-x02", "w010-ofm-s075-x02", "w000-size-greedy-s075-x02",
              "w075-pairwise-s075-x02"),
    "validation": ("w160-size-greedy-x02",),
    "test": ("w195-deepmigration-x02",),
}
"""The split by recording (trace window): the test and validation windows are disjoint from the training ones."""


class RecordingError(ValueError):
    """A recording that cannot be read or written: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    unit: str
    doc: str
    nullable: bool = False
    since: int = 1
    """The schema version that added the column (nullable when > 1: older recordings load it as null)."""


def _cols(*specs: tuple) -> tuple[Column, ...]:
    return tuple(Column(*spec) for spec in specs)


_F, _I, _B, _S = pa.float64(), pa.int64(), pa.bool_(), pa.string()
PREDICTED = ("total", "migration", "resource", "threshold_penalty", "sla_violations", "migration_time_ms",
             "variance_before", "variance_after")
"""The predicted cost components (controller_app.costs.cost_view, less the reward = -total)."""
MEASURED = ("total", "migration", "resource", "threshold_penalty", "sla_violations", "migration_wall_ms",
            "migration_busy_ms", "variance_before", "variance_after")
"""The measured cost components (controller_app.costs.measured_cost)."""
_COST_UNITS = {"migration_time_ms": "ms", "migration_wall_ms": "ms", "migration_busy_ms": "ms",
               "sla_violations": "flows", "variance_before": "utilisation²", "variance_after": "utilisation²"}

SCHEMA: dict[str, tuple[Column, ...]] = {
    "periods": _cols(
        ("period", _I, "-", "period index t, 0, 1, 2, ..."),
        ("time_s", _F, "s", "the state's time (the controller's monotonic clock, or the simulation's)"),
        ("wall_time_s", _F, "s since epoch", "wall-clock time of the period's start (joins the sink's delays)",
         True),
        ("scenario", _S, "-", "scenario detected on the state: none, scale_out, scale_in, lb"),
        ("policy", _S, "-", "who chose the action: a policy name, `explore`, `manual`, or empty without one"),
        ("decided", _B, "-", "a decision was taken this period"),
        ("explored", _B, "-", "the policy's action was replaced by a random valid one (--explore)"),
        ("feasible", _B, "-", "the decision found a feasible action"),
        ("executed", _B, "-", "the action was carried out (auto mode, switch connected)"),
        ("decision_ms", _F, "ms", "time the decision took"),
        ("execution_ms", _F, "ms", "time carrying the action out took"),
        *((f"predicted_{name}", _F, _COST_UNITS.get(name, "cost"),
           f"predicted {name} (twin.migration.apply on the decided action)", True) for name in PREDICTED),
        *((f"measured_{name}", _F, _COST_UNITS.get(name, "cost"),
           f"measured {name} (the same formula on what was done, at measured durations)", True)
          for name in MEASURED),
        ("packets_dropped", _I, "packets", "packets the NF instances dropped during the period", True),
        ("sink_packets", _I, "packets", "packets of every flow the sink received during the period", True),
        ("sink_delay_ms", _F, "ms", "their mean one-way delay, source to sink", True),
        ("control_hold", _B, "-", "the control head's draw (gnn_policy.control): hold or act; null without one",
         True, 3),
        ("control_target", _F, "-", "the target utilisation of an act; null when holding or without a draw",
         True, 3),
        ("control_log_prob", _F, "-", "log π(a | s) of the draw under the weights that drew it", True, 3),
    ),
    "instances": _cols(
        ("period", _I, "-", "period t"),
        ("instance", _S, "-", "instance id; rows keep the state's instance order"),
        ("active", _B, "-", "the instance serves flows"),
        ("capacity_pps", _F, "packets/s", "service capacity"),
        ("buffer_packets", _F, "packets", "buffer size"),
        ("queue_packets", _F, "packets", "queue at the start of the period (the NF's report)"),
        ("processing_ms", _F, "ms", "per-packet processing latency la_p"),
        ("load_pps", _F, "packets/s", "offered load: the sum of its flows' rates (derived, for reading)"),
        ("utilisation", _F, "-", "load_pps / capacity_pps (derived, for reading)"),
        ("start", _B, "-", "the action starts this instance"),
        ("stop", _B, "-", "the action stops this instance"),
        ("started", _B, "-", "the execution started it"),
        ("stopped", _B, "-", "the execution stopped it"),
        ("packets_in", _I, "packets", "packets the NF received during the period", True),
        ("packets_out", _I, "packets", "packets the NF forwarded during the period", True),
        ("packets_dropped", _I, "packets", "packets the NF dropped (full buffer) during the period", True),
    ),
    "flows": _cols(
        ("period", _I, "-", "period t"),
        ("flow", _S, "-", "flow id (twin.flow FlowKey.id on the testbed); rows keep the state's flow order"),
        ("src_ip", pa.uint32(), "IPv4 as integer", "the state's directed five-tuple (FIVE_TUPLE_DTYPE); 0 for IPv6"),
        ("dst_ip", pa.uint32(), "IPv4 as integer", "destination address"),
        ("src_port", pa.uint16(), "-", "source port"),
        ("dst_port", pa.uint16(), "-", "destination port"),
        ("proto", pa.uint8(), "-", "IP protocol"),
        ("instance", _S, "-", "the instance serving the flow at t"),
        ("rate_pps", _F, "packets/s", "the flow's rate as the controller saw it at t (from the switch counters)"),
        ("byte_rate", _F, "bytes/s", "the flow's byte rate"),
        ("sla_ms", _F, "ms", "the flow's SLA latency LA^f"),
        ("delay_packets", _I, "packets", "the flow's packets the sink received during the period (null: none)",
         True),
        ("delay_ms", _F, "ms", "their mean one-way delay, source to sink", True),
        ("queued_packets", _I, "packets", "its frames in its instance's buffer at t (NF report; null: none)", True,
         2),
        ("drain_packets", _I, "packets", "frames its instance serves until its last queued one is (0: none)", True,
         2),
        ("is_ipv6", _B, "-", "the flow's addresses are IPv6 ones (src_ip6, dst_ip6)"),
        ("src_ip6", _S, "-", "IPv6 source address in its text form; empty for IPv4"),
        ("dst_ip6", _S, "-", "IPv6 destination address in its text form; empty for IPv4"),
    ),
    "latency": _cols(
        ("period", _I, "-", "period t"),
        ("src", _S, "-", "source instance"),
        ("dst", _S, "-", "destination instance"),
        ("migration_ms", _F, "ms", "la_ij: the controller's estimate of one flow's move src -> dst"),
    ),
    "migrations": _cols(
        ("period", _I, "-", "period t of the decision"),
        ("flow", _S, "-", "flow id"),
        ("src", _S, "-", "instance the flow leaves"),
        ("dst", _S, "-", "instance the flow moves to"),
        ("outcome", _S, "-", "done, rolled_back, rollback_failed, skipped or not_executed"),
        ("duration_ms", _F, "ms", "the move's own duration (destination hold to release)", True),
    ),
}
"""Every table, its columns in file order, their Arrow types, units and meaning."""


@dataclass(frozen=True)
class MoveRecord:
    """One move as carried out (controller_app.execution.MigrationRun, reduced to what is recorded)."""

    flow: str
    src: str
    dst: str
    outcome: str = "done"
    duration_ms: float | None = None


@dataclass(frozen=True)
class PeriodRecord:
    """What happened in one period besides its state; every field defaults to "nothing happened"."""

    action: Action = field(default_factory=Action)
    scenario: str = "none"
    policy: str = ""
    decided: bool = False
    explored: bool = False
    feasible: bool = False
    executed: bool = False
    moves: tuple[MoveRecord, ...] = ()
    """The moves as run, when executed (their outcomes and durations); otherwise empty."""
    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    predicted: Mapping[str, float] | None = None
    measured: Mapping[str, float] | None = None
    decision_ms: float = 0.0
    execution_ms: float = 0.0
    wall_time_s: float | None = None
    instance_packets: Mapping[str, tuple[int, int, int]] | None = None
    """Instance id -> (packets in, out, dropped) during the period."""
    flow_delays: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    """Flow id -> (packets, mean one-way delay ms) the sink measured during the period."""
    sink: tuple[int, float] | None = None
    """(packets, mean one-way delay ms) of every flow at the sink during the period."""
    flow_queues: Mapping[str, tuple[int, int]] | None = None
    """Flow id -> (queued packets, drain packets) at its instance at t; a flow not listed has none queued.
    None: not reported (both columns null)."""
    control: Mapping[str, object] | None = None
    """The control head's draw behind the decision: {"hold", "target", "log_prob"} (gnn_policy.base.ControlDraw);
    with the period's state it is what recomputing log π(a | s) under other weights needs (dm-demo --learn)."""


def period_rows(state: ClusterState, record: PeriodRecord = PeriodRecord()) -> dict[str, list[dict]]:
    """The rows (without `period`) one period adds to each table: plain, JSON-able values."""
    ids = state.instance_ids
    counters = record.instance_packets
    dropped = None if counters is None else int(sum(c[2] for c in counters.values()))
    periods = {"time_s": float(state.time_s), "wall_time_s": record.wall_time_s, "scenario": record.scenario,
               "policy": record.policy, "decided": record.decided, "explored": record.explored,
               "feasible": record.feasible, "executed": record.executed,
               "decision_ms": float(record.decision_ms), "execution_ms": float(record.execution_ms),
               **_costs("predicted", PREDICTED, record.predicted), **_costs("measured", MEASURED, record.measured),
               "packets_dropped": dropped, "sink_packets": None if record.sink is None else int(record.sink[0]),
               "sink_delay_ms": None if record.sink is None else float(record.sink[1]),
               **_control(record.control)}
    instances = []
    for k, instance in enumerate(ids):
        packets = (counters or {}).get(instance)
        instances.append({
            "instance": instance, "active": bool(state.active[k]), "capacity_pps": float(state.capacity[k]),
            "buffer_packets": float(state.buffer[k]), "queue_packets": float(state.queue[k]),
            "processing_ms": float(state.processing_ms[k]), "load_pps": float(state.load_pps[k]),
            "utilisation": float(state.utilisation[k]), "start": instance in record.action.start,
            "stop": instance in record.action.stop, "started": instance in record.started,
            "stopped": instance in record.stopped,
            **dict(zip(("packets_in", "packets_out", "packets_dropped"),
                       (None, None, None) if packets is None else (int(p) for p in packets)))})
    flows = []
    for f, flow in enumerate(state.flow_ids):
        tuple5 = state.five_tuple[f]
        delay = record.flow_delays.get(flow)
        flows.append({"flow": flow, **{name: _field(tuple5[name]) for name in FIVE_TUPLE_DTYPE.names},
                      "instance": ids[state.assignment[f]], "rate_pps": float(state.rate[f]),
                      "byte_rate": float(state.byte_rate[f]), "sla_ms": float(state.sla_ms[f]),
                      "delay_packets": None if delay is None else int(delay[0]),
                      "delay_ms": None if delay is None else float(delay[1]),
                      **_queue_cells(record.flow_queues, flow)})
    latency = [{"src": a, "dst": b, "migration_ms": float(state.migration_ms[i, j])}
               for i, a in enumerate(ids) for j, b in enumerate(ids)]
    return {"periods": [periods], "instances": instances, "flows": flows, "latency": latency,
            "migrations": _migration_rows(record)}


def _queue_cells(queues: Mapping[str, tuple[int, int]] | None, flow: str) -> dict:
    queued, drain = (None, None) if queues is None else queues.get(flow, (0, 0))
    return {"queued_packets": None if queued is None else int(queued),
            "drain_packets": None if drain is None else int(drain)}


def _control(draw: Mapping[str, object] | None) -> dict:
    if draw is None:
        return {"control_hold": None, "control_target": None, "control_log_prob": None}
    target = draw.get("target")
    return {"control_hold": bool(draw["hold"]), "control_target": None if target is None else float(target),
            "control_log_prob": float(draw["log_prob"])}


def _costs(prefix: str, names: tuple[str, ...], costs: Mapping[str, float] | None) -> dict:
    return {f"{prefix}_{name}": None if costs is None or costs.get(name) is None else float(costs[name])
            for name in names}


def _migration_rows(record: PeriodRecord) -> list[dict]:
    """The executed moves as run; a decided action that was not executed, as `not_executed` moves."""
    if record.moves:
        return [{"flow": m.flow, "src": m.src, "dst": m.dst, "outcome": m.outcome, "duration_ms": m.duration_ms}
                for m in record.moves]
    return [{"flow": m.flow, "src": m.src, "dst": m.dst, "outcome": "not_executed", "duration_ms": None}
            for m in record.action.migrations]


class RecordingWriter:
    """Collects periods in memory and writes the recording at `close()`, atomically: the files go to a
    temporary directory beside `directory`, which is renamed into place. An existing non-empty
    `directory` is refused here, before any period is collected, and again at `close()`."""

    def __init__(self, directory: str | os.PathLike, meta: Mapping):
        self.directory = Path(directory)
        check_target(self.directory)
        self.meta = dict(meta)
        try:
            json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise RecordingError(f"{self.directory / META_FILE}: meta is not plain JSON: {error}") from None
        self._rows: dict[str, list[dict]] = {table: [] for table in SCHEMA}
        self.periods = 0

    def add_period(self, state: ClusterState, record: PeriodRecord = PeriodRecord()) -> None:
        """Record period `self.periods`: the state seen and what happened in the period."""
        self.add_rows(period_rows(state, record))

    def add_rows(self, rows: Mapping[str, Iterable[dict]]) -> None:
        """Record one period given as `period_rows` returns it (e.g. read back from a staging file)."""
        for table in SCHEMA:
            self._rows[table].extend({"period": self.periods, **row} for row in rows.get(table, ()))
        self.periods += 1

    def close(self) -> Path:
        """Write every table and meta.json, then move them into place; returns the directory."""
        check_target(self.directory)
        tables = {name: _table(name, rows, self.directory) for name, rows in self._rows.items()}
        meta = {**self.meta, "schema_version": SCHEMA_VERSION,
                "tables": {name: table.num_rows for name, table in tables.items()}}
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", dir=self.directory.parent))
        try:
            for name, table in tables.items():
                pq.write_table(table, staging / f"{name}.parquet", compression="zstd")
            (staging / META_FILE).write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
            check_target(self.directory)
            os.replace(staging, self.directory)  # onto a missing or empty directory only (checked)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.directory


def check_target(directory: Path) -> None:
    """Refuse to write a recording over anything: `directory` must be missing or an empty directory whose
    parent is writable."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise RecordingError(f"{directory}: exists and is not an empty directory; a recording is never overwritten")
    parent = directory.parent if directory.parent.exists() else _existing_ancestor(directory)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RecordingError(f"{directory}: {parent} is not writable")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _table(name: str, rows: list[dict], directory: Path) -> pa.Table:
    schema = pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in SCHEMA[name]])
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
        raise RecordingError(f"{directory / (name + '.parquet')}: cannot hold these rows: {error}") from None
    _check_table(name, table, directory / f"{name}.parquet")
    return table


# --- reading -----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Recording:
    """A loaded, validated recording: `meta` and one pyarrow Table per table of SCHEMA."""

    directory: Path
    meta: dict
    tables: dict[str, pa.Table]

    @property
    def n_periods(self) -> int:
        return self.tables["periods"].num_rows

    def column(self, table: str, name: str) -> np.ndarray:
        """One column as numpy (nulls as NaN in float columns; strings as an object array)."""
        values = self.tables[table].column(name)
        if pa.types.is_string(values.type):
            return np.asarray(values.to_pylist(), dtype=object)
        if pa.types.is_floating(values.type):
            return values.to_numpy(zero_copy_only=False)
        return values.to_numpy()

    def rows(self, table: str, period: int) -> slice:
        """The row range of `table` that belongs to `period` (rows are stored in period order)."""
        bounds = self._bounds[table]
        return slice(int(bounds[period]), int(bounds[period + 1]))

    @cached_property
    def _bounds(self) -> dict[str, np.ndarray]:
        return {name: np.searchsorted(self.column(name, "period"), np.arange(self.n_periods + 1))
                for name in SCHEMA}

    def state(self, period: int) -> ClusterState:
        """The ClusterState the controller saw at `period`, rebuilt from its rows."""
        if not 0 <= period < self.n_periods:
            raise IndexError(f"period {period} outside 0..{self.n_periods - 1}")
        inst, flows, lat = (self.tables[t].slice(s.start, s.stop - s.start)
                            for t, s in ((t, self.rows(t, period)) for t in ("instances", "flows", "latency")))
        ids = tuple(inst.column("instance").to_pylist())
        index = {instance: k for k, instance in enumerate(ids)}
        latency = np.zeros((len(ids), len(ids)))
        for src, dst, ms in zip(*(lat.column(c).to_pylist() for c in ("src", "dst", "migration_ms"))):
            latency[index[src], index[dst]] = ms
        five = np.zeros(flows.num_rows, dtype=FIVE_TUPLE_DTYPE)
        for name in FIVE_TUPLE_DTYPE.names:
            column = flows.column(name)
            five[name] = (_packed(column.to_pylist()) if pa.types.is_string(column.type)
                          else column.to_numpy(zero_copy_only=False))
        try:
            return ClusterState(
                instance_ids=ids, capacity=_floats(inst, "capacity_pps"), buffer=_floats(inst, "buffer_packets"),
                queue=_floats(inst, "queue_packets"), active=inst.column("active").to_numpy(zero_copy_only=False),
                processing_ms=_floats(inst, "processing_ms"), migration_ms=latency,
                flow_ids=tuple(flows.column("flow").to_pylist()), five_tuple=five,
                rate=_floats(flows, "rate_pps"), byte_rate=_floats(flows, "byte_rate"),
                sla_ms=_floats(flows, "sla_ms"),
                assignment=np.array([index[i] for i in flows.column("instance").to_pylist()], dtype=np.int64),
                time_s=float(self.tables["periods"].column("time_s")[period].as_py()))
        except StateError as error:
            raise RecordingError(f"{self.directory}: period {period} is no valid cluster state: {error}") from None


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(float)


def load(directory: str | os.PathLike) -> Recording:
    """Read and validate a recording; RecordingError naming the file and the problem otherwise."""
    directory = Path(directory)
    meta = _read_meta(directory / META_FILE)
    tables = {}
    for name in SCHEMA:
        path = directory / f"{name}.parquet"
        if not path.is_file():
            raise RecordingError(f"{path}: missing (every recording has the tables {', '.join(SCHEMA)})")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise RecordingError(f"{path}: not a readable Parquet file: {error}") from None
        table = _upgrade(name, table, meta["schema_version"])
        _check_table(name, table, path)
        tables[name] = table
    _check_keys(tables, directory)
    for name, count in meta.get("tables", {}).items():
        if name in tables and tables[name].num_rows != count:
            raise RecordingError(f"{directory / (name + '.parquet')}: {tables[name].num_rows} rows, "
                                 f"meta.json says {count}")
    return Recording(directory, meta, tables)


def shipped(split: str) -> list[Path]:
    """The directories of the embedded recordings of one split: train, validation or test."""
    if split not in SHIPPED_SPLIT:
        raise ValueError(f"unknown split {split!r}; the shipped dataset has {', '.join(SHIPPED_SPLIT)}")
    return [SHIPPED_DIR / name for name in SHIPPED_SPLIT[split]]


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise RecordingError(f"{path}: missing; {path.parent} is not a recording")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordingError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(meta, dict):
        raise RecordingError(f"{path}: must hold a JSON object")
    version = meta.get("schema_version")
    if type(version) is not int or not OLDEST_READABLE_VERSION <= version <= SCHEMA_VERSION:
        raise RecordingError(f"{path}: schema_version {version!r}, this code reads versions "
                             f"{OLDEST_READABLE_VERSION} to {SCHEMA_VERSION} (record it again with this version)")
    return meta


def _upgrade(name: str, table: pa.Table, version: int) -> pa.Table:
    """A table of an older schema version with the columns added since, all null."""
    for column in SCHEMA[name]:
        if column.since > version and column.name not in table.column_names:
            table = table.append_column(pa.field(column.name, column.type, nullable=True),
                                        pa.nulls(table.num_rows, column.type))
    return table


def _field(value):
    """A FIVE_TUPLE_DTYPE field as a row holds it (JSON-friendly, for the controller's staging file): an IPv6
    address in its text form (empty for none), a bool or an int."""
    if isinstance(value, np.void):
        address = value.tobytes()
        return str(ipaddress.IPv6Address(address)) if any(address) else ""
    return bool(value) if isinstance(value, np.bool_) else int(value)


def _packed(texts: list[str]) -> list[bytes]:
    return [ipaddress.IPv6Address(text).packed if text else bytes(16) for text in texts]


def _check_table(name: str, table: pa.Table, path: Path) -> None:
    """Columns, types, nulls and finiteness of one table."""
    for column in SCHEMA[name]:
        if column.name not in table.column_names:
            raise RecordingError(f"{path}: missing column {column.name!r}")
        values = table.column(column.name)
        if values.type != column.type:
            raise RecordingError(f"{path}: column {column.name!r} is {values.type}, expected {column.type}")
        if values.null_count and not column.nullable:
            raise RecordingError(f"{path}: column {column.name!r} has {values.null_count} null values")
        if pa.types.is_floating(column.type):
            finite = pc.fill_null(pc.is_finite(values), True).to_numpy(zero_copy_only=False)
            if not finite.all():
                raise RecordingError(f"{path}: column {column.name!r} has a non-finite value in row "
                                     f"{int(np.argmin(finite))}")
    if name == "migrations":
        outcomes = set(table.column("outcome").to_pylist()) - set(MOVE_OUTCOMES)
        if outcomes:
            raise RecordingError(f"{path}: unknown move outcome {min(outcomes)!r}")


def _check_keys(tables: dict[str, pa.Table], directory: Path) -> None:
    """Periods 0..n-1 without gaps; every other table's rows in period order, within 0..n-1."""
    periods = tables["periods"].column("period").to_numpy()
    if not np.array_equal(periods, np.arange(periods.size)):
        gap = int(np.argmax(periods != np.arange(periods.size)))
        raise RecordingError(f"{directory / 'periods.parquet'}: periods are not contiguous from 0 "
                             f"(row {gap} holds period {periods[gap]})")
    for name, table in tables.items():
        column = table.column("period").to_numpy()
        if column.size and (np.any(np.diff(column) < 0) or column.min() < 0 or column.max() >= periods.size):
            raise RecordingError(f"{directory / (name + '.parquet')}: period column out of order or outside "
                                 f"0..{periods.size - 1}")

