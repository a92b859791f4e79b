"""`dm-demo --record` end to end on the real testbed (Open vSwitch, Mininet, the NF processes and
`ryu-manager controller_app.app`): the recording loads, has one row per period, per-flow rows that follow
the executed migrations, the moves' durations and the sink's delays."""
from __future__ import annotations

import numpy as np
import pytest

from controller_app.config import LIVE_DEFAULTS
from controller_app.demo import _parser, run_demo
from twin.records import load

pytestmark = [
    pytest.mark.network,
    pytest.mark.timeout(150),
    pytest.mark.usefixtures("ovs"),
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]


def test_a_recorded_demo_run_holds_every_period_and_its_moves(tmp_path):
    args = _parser().parse_args(["--duration", "15", "--stabilizer", "off", "--policy", "ofm", "--explore", "0.5",
                                 "--seed", "7", "--record", str(tmp_path / "rec"), "--workdir", str(tmp_path / "work")])
    summary = run_demo(args, out=lambda line: None)
    recording = load(tmp_path / "rec")
    assert recording.n_periods == summary["record"]["periods"] >= 15
    assert recording.meta["policy"] == "ofm" and recording.meta["explore_eps"] == 0.5 and recording.meta["seed"] == 7
    periods = recording.tables["periods"].to_pylist()
    decided = [p for p in periods if p["decided"]]
    assert any(p["explored"] for p in decided) and any(not p["explored"] for p in decided)
    assert all(p["policy"] == ("explore" if p["explored"] else "ofm") for p in decided)

    moves = [m for m in recording.tables["migrations"].to_pylist() if m["outcome"] == "done"]
    assert moves, "the run executed migrations"
    assert all(m["duration_ms"] > 0 for m in moves)
    elsewhere = []
    for t in {m["period"] for m in moves}:
        assert periods[t]["executed"] and periods[t]["measured_migration_wall_ms"] > 0
        if t + 1 == recording.n_periods:
            continue
        before, after = recording.state(t), recording.state(t + 1)
        for move in (m for m in moves if m["period"] == t):
            assert before.flow(before.flow_index[move["flow"]]).instance == move["src"]
            if move["flow"] not in after.flow_index:
                continue  # a flow can end within the period
            # the move's rules are fresh: they expire rule_idle_timeout_s after it at the earliest, and only then
            # does its next packet land afresh (default steering): only a period longer than that may find it
            # elsewhere
            if (after.time_s - before.time_s <= LIVE_DEFAULTS["rule_idle_timeout_s"]
                    and after.flow(after.flow_index[move["flow"]]).instance != move["dst"]):
                elsewhere.append((t, move["flow"], move["dst"], after.flow(after.flow_index[move["flow"]]).instance))

    drains = recording.column("flows", "drain_packets").astype(float)
    assert not np.isnan(drains).any() and (drains >= 0).all(), "every flow row has its NF's per-flow queue"
    delays = recording.column("flows", "delay_ms")
    assert np.count_nonzero(delays[~np.isnan(delays)] > 0) > 0, "the sink's delays are joined per period"
    assert recording.column("periods", "packets_dropped")[-1] >= 0  # the NFs' counters are measured
    assert (tmp_path / "work" / "transitions.jsonl").read_text().count("\n") >= recording.n_periods - 1
    assert not elsewhere, f"moved flows elsewhere one period later (period, flow, dst, registry): {elsewhere}"
