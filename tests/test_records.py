"""The recorded-transition format (twin.records): round trips, and every kind of damage refused by name."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import cluster_states, moves
from twin.flow import FiveTuple
from twin.migration import Action, Migration, apply
from twin.records import (
    SCHEMA,
    SCHEMA_VERSION,
    SHIPPED_DIR,
    SHIPPED_SPLIT,
    MoveRecord,
    PeriodRecord,
    RecordingError,
    RecordingWriter,
    load,
    shipped,
)
from twin.state import ClusterState, Flow, Instance

META = {"trace": "sample", "start_s": 0.0, "speed": 0.5, "policy": "ofm", "explore_eps": 0.0, "seed": 0}


def _record(state, action, **fields) -> PeriodRecord:
    runs = tuple(MoveRecord(m.flow, m.src, m.dst, "done", 40.0 + k) for k, m in enumerate(action.migrations))
    return PeriodRecord(action=action, scenario="lb", policy="ofm", decided=True, feasible=True, executed=True,
                        moves=runs, predicted={"total": 1.5, "migration": 1.0, "resource": 0.0},
                        measured={"total": 2.0, "migration_wall_ms": 80.0}, decision_ms=3.0,
                        instance_packets={i: (10, 9, 1) for i in state.instance_ids},
                        flow_delays={f: (5, 12.5) for f in state.flow_ids[:1]}, sink=(9, 11.0), **fields)


def _write(directory, periods=3):
    """A small recording of `periods` periods of one simple cluster, each migrating one flow back and forth."""
    state = ClusterState.from_objects(
        [Instance("nf1", 250.0, 800.0, 3.0), Instance("nf2", 250.0, 800.0), Instance("nf3", 250.0, 800.0,
                                                                                     active=False)],
        [Flow("10.0.0.1:1-10.0.0.2:2/6", FiveTuple("10.0.0.1", "10.0.0.2", 1, 2, 6), 50.0, 80.0, "nf1", 5e3),
         Flow("10.0.0.1:3-10.0.0.2:4/17", FiveTuple("10.0.0.2", "10.0.0.1", 4, 3, 17), 20.0, 60.0, "nf2")])
    writer = RecordingWriter(directory, META)
    states = []
    for t in range(periods):
        state = state.with_changes(time_s=float(t))
        flow = state.flow(0)
        action = Action((Migration(flow.id, flow.instance, "nf2" if flow.instance == "nf1" else "nf1"),))
        writer.add_period(state, _record(state, action, wall_time_s=1e9 + t))
        states.append(state)
        state = apply(state, action)[0]
    writer.close()
    return states


def test_round_trip_rebuilds_each_state_and_the_period_columns(tmp_path):
    states = _write(tmp_path / "rec")
    recording = load(tmp_path / "rec")
    assert recording.n_periods == 3 and recording.meta["schema_version"] == SCHEMA_VERSION
    assert recording.meta["policy"] == "ofm" and recording.meta["tables"]["flows"] == 6
    for t, state in enumerate(states):
        assert recording.state(t).same_as(state)
    migrations = recording.tables["migrations"]
    assert migrations.column("duration_ms").to_pylist() == [40.0, 40.0, 40.0]
    # the next state of period t is period t+1's rows: the flow moved at t is on its destination at t+1
    for t in range(2):
        moved = migrations.slice(t, 1).to_pylist()[0]
        assert recording.state(t + 1).flow(0).instance == moved["dst"]
    delays = recording.column("flows", "delay_ms")
    assert delays[0] == 12.5 and np.isnan(delays[1])
    assert recording.column("periods", "packets_dropped").tolist() == [3, 3, 3]
    assert recording.column("periods", "sink_delay_ms").tolist() == [11.0] * 3
    assert np.isnan(recording.column("periods", "predicted_sla_violations")).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_state_and_moves_round_trip(tmp_path_factory, data):
    state = data.draw(cluster_states())
    indexed = data.draw(moves(state))
    action = indexed.to_action(state)
    directory = tmp_path_factory.mktemp("rec") / "r"
    writer = RecordingWriter(directory, META)
    writer.add_period(state, _record(state, action))
    writer.add_period(apply(state, action)[0])
    writer.close()
    recording = load(directory)
    assert recording.state(0).same_as(state)
    assert recording.state(1).same_as(apply(state, action)[0])
    assert recording.tables["migrations"].num_rows == len(action.migrations)
    assert recording.column("instances", "utilisation")[: state.n_instances] == pytest.approx(state.utilisation)


def test_never_overwrites(tmp_path):
    _write(tmp_path / "rec")
    before = {p.name: p.read_bytes() for p in (tmp_path / "rec").iterdir()}
    with pytest.raises(RecordingError, match="never overwritten"):
        RecordingWriter(tmp_path / "rec", META)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecordingError, match="not an empty directory"):
        RecordingWriter(tmp_path / "file", META)
    assert {p.name: p.read_bytes() for p in (tmp_path / "rec").iterdir()} == before


def test_a_target_filled_while_recording_is_refused_at_close(tmp_path):
    writer = RecordingWriter(tmp_path / "rec", META)
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "other").write_text("keep me")
    with pytest.raises(RecordingError, match="never overwritten"):
        writer.close()
    assert (tmp_path / "rec" / "other").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]  # no staging directory left behind


def test_an_empty_target_directory_is_filled(tmp_path):
    (tmp_path / "rec").mkdir()
    _write(tmp_path / "rec")
    assert load(tmp_path / "rec").n_periods == 3


def _rewrite(path, table: pa.Table) -> None:
    path.unlink()
    pq.write_table(table, path)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "flows.parquet").write_bytes(b"not parquet at all"), r"flows\.parquet: not a readable Parquet"),
    (lambda d: (d / "instances.parquet").write_bytes((d / "instances.parquet").read_bytes()[:200]),
     r"instances\.parquet: not a readable Parquet"),
    (lambda d: (d / "latency.parquet").unlink(), r"latency\.parquet: missing"),
    (lambda d: (d / "meta.json").unlink(), r"meta\.json: missing"),
    (lambda d: (d / "meta.json").write_text("{"), r"meta\.json: not readable JSON"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()),
                                                        "schema_version": SCHEMA_VERSION + 1})),
     rf"meta\.json: schema_version {SCHEMA_VERSION + 1}"),
    (lambda d: (d / "meta.json").write_text(json.dumps({"trace": "x"})), r"meta\.json: schema_version None"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()),
                                                        "schema_version": 1})),
     r"meta\.json: schema_version 1, this code reads versions 2 to 3 \(record it again with this version\)"),
    (lambda d: _rewrite(d / "flows.parquet", pq.read_table(d / "flows.parquet").drop_columns(["sla_ms"])),
     r"flows\.parquet: missing column 'sla_ms'"),
    (lambda d: _rewrite(d / "flows.parquet", pq.read_table(d / "flows.parquet").set_column(
        10, "sla_ms", pa.array(["1"] * 6))), r"flows\.parquet: column 'sla_ms' is string, expected double"),
    (lambda d: _rewrite(d / "flows.parquet", pq.read_table(d / "flows.parquet").set_column(
        8, "rate_pps", pa.array([1.0, float("nan"), 1, 1, 1, 1]))),
     r"flows\.parquet: column 'rate_pps' has a non-finite value in row 1"),
    (lambda d: _rewrite(d / "flows.parquet", pq.read_table(d / "flows.parquet").set_column(
        12, "delay_ms", pa.array([1.0, None, float("inf"), 1, 1, 1]))),
     r"flows\.parquet: column 'delay_ms' has a non-finite value in row 2"),
    (lambda d: _rewrite(d / "flows.parquet", pq.read_table(d / "flows.parquet").set_column(
        8, "rate_pps", pa.array([1.0, None, 1, 1, 1, 1]))), r"flows\.parquet: column 'rate_pps' has 1 null"),
    (lambda d: _rewrite(d / "periods.parquet", pq.read_table(d / "periods.parquet").set_column(
        0, "period", pa.array([0, 2, 3]))), r"periods\.parquet: periods are not contiguous from 0 \(row 1"),
    (lambda d: _rewrite(d / "migrations.parquet", pq.read_table(d / "migrations.parquet").set_column(
        4, "outcome", pa.array(["done", "lost", "done"]))), r"migrations\.parquet: unknown move outcome 'lost'"),
    (lambda d: _rewrite(d / "flows.parquet", pq.read_table(d / "flows.parquet").slice(0, 4)),
     r"flows\.parquet: 4 rows, meta\.json says 6"),
])
def test_damage_is_refused_naming_the_file_and_the_problem(tmp_path, damage, message):
    _write(tmp_path / "rec")
    damage(tmp_path / "rec")
    with pytest.raises(RecordingError, match=message):
        load(tmp_path / "rec")


def test_an_invalid_state_is_refused_when_rebuilt(tmp_path):
    _write(tmp_path / "rec")
    path = tmp_path / "rec" / "flows.parquet"
    table = pq.read_table(path)
    _rewrite(path, table.set_column(7, "instance", pa.array(["nf3"] * 6)))  # nf3 is stopped
    with pytest.raises(RecordingError, match="period 0 is no valid cluster state: .*stopped instance 'nf3'"):
        load(tmp_path / "rec").state(0)


def test_the_schema_is_documented_column_by_column():
    doc = (Path(__file__).parents[1] / "docs" / "twin.md").read_text()
    section = doc[doc.index("## Recorded transitions"):]
    for table, columns in SCHEMA.items():
        assert f"`{table}`" in section
        for column in columns:
            assert f"`{column.name}`" in section, f"{table}.{column.name} is not documented"


def test_periods_before_the_cluster_is_up_round_trip(tmp_path):
    """The controller's first periods may precede the NFs' first reports: no instance, no flow."""
    empty = ClusterState.from_objects([], [])
    writer = RecordingWriter(tmp_path / "rec", META)
    writer.add_period(empty)
    writer.close()
    recording = load(tmp_path / "rec")
    assert recording.state(0).same_as(empty) and recording.tables["instances"].num_rows == 0
    with pytest.raises(IndexError):
        recording.state(1)


@pytest.mark.parametrize("split", sorted(SHIPPED_SPLIT))
def test_the_shipped_dataset_loads_and_matches_its_split(split):
    for directory in shipped(split):
        recording = load(directory)
        meta = recording.meta
        assert meta["source"] == "testbed" and meta["trace"] == "lbnl_sample.pcap.gz"
        assert directory.name.startswith(f"w{int(meta['start_s']):03d}-{meta['policy']}")
        assert (meta["explore_eps"] > 0) == directory.name.endswith("-x02")
        assert recording.n_periods >= 40 and recording.tables["migrations"].num_rows > 0
        seeds = {"train": range(100), "validation": range(100, 200), "test": range(200, 1 << 31)}[split]
        assert meta["seed"] in seeds
    windows = {s: [(load(d).meta["start_s"], load(d).meta["start_s"] + load(d).meta["duration_s"] * load(d).meta[
        "speed"]) for d in shipped(s)] for s in SHIPPED_SPLIT}
    for a, b in windows[split]:  # no held-out window overlaps a training one
        if split != "train":
            assert all(b <= start or a >= end for start, end in windows["train"])


def test_a_version_2_recording_loads_with_the_control_columns_null(tmp_path):
    states = _write(tmp_path / "rec")
    periods = pq.read_table(tmp_path / "rec" / "periods.parquet")
    added = [c.name for c in SCHEMA["periods"] if c.since > 2]
    assert added == ["control_hold", "control_target", "control_log_prob"]
    pq.write_table(periods.drop(added), tmp_path / "rec" / "periods.parquet")
    meta = json.loads((tmp_path / "rec" / "meta.json").read_text())
    (tmp_path / "rec" / "meta.json").write_text(json.dumps({**meta, "schema_version": 2}))
    recording = load(tmp_path / "rec")
    for name in added:
        assert recording.tables["periods"].column(name).null_count == len(states)
    assert recording.state(0).same_as(states[0])
    assert load(SHIPPED_DIR / SHIPPED_SPLIT["test"][0]).meta["schema_version"] == 2  # the shipped dataset: v2
