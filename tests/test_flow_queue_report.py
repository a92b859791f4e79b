"""The NF's per-flow queue (its report's `queued`) from the NF through the controller's state collection into a
recording, where the calibrated twin reads the drain wait of each move (issue 18: migration durations)."""
from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from controller_app.recording import finish
from mininet_topos.frames import build_frame
from mininet_topos.nf_instance import NetworkFunction
from tests.controller_rig import make_rig, overload_nf1, run_period
from twin.fidelity.evaluate import load_dataset
from twin.fidelity.twins import moved_flow_waits
from twin.flow import FiveTuple, FlowKey
from twin.records import load

MAC = bytes.fromhex("020000000001")


def _frame(t: FiveTuple, sequence: int) -> bytes:
    return build_frame(MAC, int(ipaddress.IPv4Address(t.src_ip)), int(ipaddress.IPv4Address(t.dst_ip)), t.src_port,
                       t.dst_port, t.proto, 100, 0, sequence, 0)


def _queued_nf(flows: list[FiveTuple]) -> NetworkFunction:
    """An NF whose processor does not run: flow 0 queues at FIFO positions 1 and 4, flow 1 at 2, flow 2 at 3,
    and flow 3 is held with two frames (held frames wait aside, not in the FIFO)."""
    nf = NetworkFunction("nf1", capacity_pps=100, buffer_packets=50, processing_ms=1, active=True,
                         send=lambda frame: None)
    nf.hold(FlowKey.of(*flows[3]))
    for sequence, flow in enumerate((0, 1, 2, 0, 3, 3)):
        nf.receive(_frame(flows[flow], sequence))
    return nf


def test_the_nf_reports_each_flows_queued_packets_and_drain():
    flows = [FiveTuple("10.0.0.1", "10.0.1.1", 10000 + n, 80, 6) for n in range(4)]
    queued = {tuple(entry["key"]): (entry["packets"], entry["drain_packets"])
              for entry in _queued_nf(flows).report()["queued"]}
    assert queued == {tuple(FlowKey.of(*flows[0])): (2, 4), tuple(FlowKey.of(*flows[1])): (1, 2),
                      tuple(FlowKey.of(*flows[2])): (1, 3), tuple(FlowKey.of(*flows[3])): (2, 0)}


def test_the_queue_report_round_trips_from_the_nf_to_the_recording(tmp_path):
    rig = make_rig(tmp_path, record_log=str(tmp_path / "record.jsonl"))
    flows = overload_nf1(rig)
    rig.nfs["nf1"].queued = _queued_nf(flows).report()["queued"]
    for nf in rig.nfs.values():
        nf.queued = nf.queued if nf.queued is not None else []
    for _ in range(3):
        run_period(rig, {t: 12 for t in flows})
    assert rig.controller.nfs["nf1"].queued[FlowKey.of(*flows[0]).id] == (2, 4)
    recording = load(finish(tmp_path / "record.jsonl", tmp_path / "rec", {"source": "test"}))
    rows = recording.tables["flows"].to_pylist()
    by_flow = {(r["period"], r["flow"]): (r["queued_packets"], r["drain_packets"]) for r in rows}
    ids = [FlowKey.of(*t).id for t in flows]
    assert [by_flow[(1, f)] for f in ids] == [(2, 4), (1, 2), (1, 3), (2, 0), (0, 0), (0, 0)]
    [episode] = load_dataset(tmp_path / "rec", "train")
    t = next(t for t in range(episode.n_periods) if episode.action(t).flows)
    action, state = episode.action(t), episode.state(t)
    table = episode.flow_table(t)
    waits = moved_flow_waits(table, state, action)
    drain = dict(zip(table["flow"].tolist(), table["drain_packets"].tolist()))
    capacity = state.capacity[action.src]
    assert waits == pytest.approx([1000.0 * drain[f] / c for f, c in zip(action.flows, capacity)])


def test_a_report_without_the_queue_records_nulls_and_a_bad_one_fails_the_report(tmp_path):
    rig = make_rig(tmp_path, record_log=str(tmp_path / "record.jsonl"))
    flows = overload_nf1(rig)
    for _ in range(2):
        run_period(rig, {t: 12 for t in flows})
    recording = load(finish(tmp_path / "record.jsonl", tmp_path / "rec", {"source": "test"}))
    assert set(recording.tables["flows"].column("drain_packets").to_pylist()) == {None}
    assert np.isnan(recording.column("flows", "queued_packets").astype(float)).all()
    rig.nfs["nf1"].queued = [{"key": list(flows[0]), "packets": -1, "drain_packets": 0}]
    run_period(rig, {t: 12 for t in flows})
    nf1 = rig.controller.nfs["nf1"]
    assert not nf1.alive and "report failed: report field queued has" in nf1.last_error
