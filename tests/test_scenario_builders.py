"""Scenario builders: the paper's experiment set-ups from a trace's flows (section VI.C)."""
import json

import numpy as np
import pytest

from tests.pcap_builder import write_pcap
from trace_replay.cli import main as trace_cli
from trace_replay.flows import FLOW_DTYPE, FlowTable, TraceStats
from trace_replay.generate import sample_path
from trace_replay.scenarios import (
    FlowPool,
    Sizing,
    build_load_balance,
    build_scale_in,
    build_scale_out,
    build_timing,
    describe,
    paper_setups,
)
from twin.params import Thresholds
from twin.scenario import ScenarioKind, detect


def synthetic_table(n_flows: int, seed: int = 0, elephants: int = 0) -> FlowTable:
    """Heavy-tailed flows (lognormal packet counts over 1-60 s) plus `elephants` huge ones."""
    rng = np.random.default_rng(seed)
    records = np.zeros(n_flows + elephants, dtype=FLOW_DTYPE)
    records["src_ip"] = 0x0A000000 + np.arange(records.size)
    records["dst_ip"] = 0x0A100001
    records["src_port"] = 1024 + np.arange(records.size) % 60000
    records["dst_port"] = 80
    records["proto"] = 6
    duration = rng.uniform(1.0, 60.0, records.size)
    records["first_ts"] = np.sort(rng.uniform(0.0, 600.0, records.size))
    records["last_ts"] = records["first_ts"] + duration
    records["packets"] = np.maximum(1, rng.lognormal(4.0, 1.5, records.size)).astype(np.uint64)
    records["packets"][n_flows:] = 10_000_000
    records["bytes"] = records["packets"] * 600
    stats = TraceStats(packets=int(records["packets"].sum()), ip_packets=int(records["packets"].sum()),
                       bytes=int(records["bytes"].sum()), duration_s=660.0, protocols={"tcp": 1},
                       torn_records=0, link_type=1, snaplen=68)
    return FlowTable(records=records, stats=stats, source="synthetic")


TABLE = synthetic_table(20_000, elephants=3)


def test_flow_rates_are_packets_over_floored_lifetime():
    table = synthetic_table(3)
    records = table.records.copy()
    records["last_ts"][0] = records["first_ts"][0]  # a one-instant flow: lifetime floored at 1 s
    pool = FlowPool.from_table(FlowTable(records, table.stats, "t"))
    assert pool.rate[0] == records["packets"][0]
    lifetime = records["last_ts"][1] - records["first_ts"][1]
    assert pool.rate[1] == pytest.approx(records["packets"][1] / lifetime)


@pytest.mark.parametrize("k,th_high", [(4, 0.55), (6, 0.6), (8, 0.6)])
def test_scale_out_has_k_overloaded_of_ten_and_standby(k, th_high):
    setup = build_scale_out(TABLE, overloaded=k, th_high=th_high, seed=3)
    state, scenario = setup.state, detect(setup.state, setup.thresholds)
    assert state.active.sum() == 10 and (~state.active).sum() == k
    assert scenario.kind is ScenarioKind.SCALE_OUT and len(scenario.overloaded) == k
    assert np.allclose(state.capacity, state.capacity[0])
    assert setup.thresholds.high == th_high and setup.report.excluded_heavy >= 3


@pytest.mark.parametrize("k,th_low", [(5, 0.1), (10, 0.15), (15, 0.1)])
def test_scale_in_has_k_underloaded_of_fifty(k, th_low):
    setup = build_scale_in(TABLE, underloaded=k, th_low=th_low, seed=4)
    scenario = detect(setup.state, setup.thresholds)
    assert setup.state.n_instances == 50
    assert scenario.kind is ScenarioKind.SCALE_IN and len(scenario.underloaded) == k


@pytest.mark.parametrize("n", [10, 40])
def test_load_balance_spreads_load_between_thresholds(n):
    setup = build_load_balance(TABLE, n_instances=n, seed=5)
    u = setup.state.utilisation
    thresholds = Thresholds()
    assert detect(setup.state, thresholds).kind is ScenarioKind.LOAD_BALANCE
    assert u.min() > thresholds.low and u.max() < thresholds.high


def test_timing_puts_exactly_forty_flows_on_every_instance():
    setup = build_timing(TABLE, n_instances=40, seed=6)
    assert setup.state.flows_per_instance.tolist() == [40] * 40
    assert setup.state.utilisation.mean() == pytest.approx(0.35)


def test_builders_are_seeded():
    a = build_scale_out(TABLE, overloaded=4, th_high=0.6, seed=9).state
    b = build_scale_out(TABLE, overloaded=4, th_high=0.6, seed=9).state
    c = build_scale_out(TABLE, overloaded=4, th_high=0.6, seed=10).state
    assert a.same_as(b) and not a.same_as(c)


def test_sparse_trace_is_resampled_with_distinct_rekeyed_flows():
    sparse = synthetic_table(300, seed=1)
    setup = build_scale_in(sparse, underloaded=5, th_low=0.1, seed=2)
    state = setup.state
    assert setup.report.resampled > 0 and state.n_flows > 300
    assert len(set(state.flow_ids)) == state.n_flows
    keys = {tuple(row) for row in state.five_tuple.tolist()}
    assert len(keys) == state.n_flows
    assert detect(state, setup.thresholds).kind is ScenarioKind.SCALE_IN


def test_heavy_flows_are_excluded_and_counted():
    setup = build_load_balance(synthetic_table(5_000, elephants=5), n_instances=10, seed=0)
    assert setup.report.excluded_heavy >= 5
    assert setup.state.rate.max() <= Sizing().max_flow_share * setup.state.capacity[0]


def test_bad_arguments_and_empty_traces_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="overloaded must lie in 1..10"):
        build_scale_out(TABLE, overloaded=11, th_high=0.6, seed=0)
    empty = FlowTable(np.zeros(0, dtype=FLOW_DTYPE), TABLE.stats, "empty.pcap")
    with pytest.raises(ValueError, match="empty.pcap holds no flows"):
        build_load_balance(empty, n_instances=10, seed=0)


def test_describe_reports_what_was_built():
    summary = describe(build_scale_out(TABLE, overloaded=6, th_high=0.6, seed=1))
    assert summary["detected"] == "scale_out" and summary["overloaded"] == 6
    assert summary["instances"] == 10 and summary["standby"] == 6


def test_paper_setups_cover_figs_4_to_6_and_each_triggers_its_scenario():
    setups = list(paper_setups(TABLE, seed=3))
    assert [(s.experiment, s.setting, s.threshold) for s in setups[:3]] == [
        ("scale-out", 4, 0.55), ("scale-out", 6, 0.55), ("scale-out", 8, 0.55)]
    assert len(setups) == 6 + 6 + 4
    assert all(detect(s.state, s.thresholds).kind is s.expected_kind for s in setups)


def test_cli_scenarios_on_the_shipped_sample_prints_one_json_line_per_setup(capsys):
    assert trace_cli(["scenarios", str(sample_path()), "--json", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 16 and {row["detected"] for row in rows} == {"scale_out", "scale_in", "lb"}


def test_cli_scenarios_names_an_empty_trace(tmp_path, capsys):
    path = tmp_path / "empty.pcap"
    write_pcap(path, [])
    assert trace_cli(["scenarios", str(path)]) == 2
    assert "empty.pcap holds no flows" in capsys.readouterr().err
