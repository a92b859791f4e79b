"""The figures of the live benchmarks (benchmarks/bench_rest_load.py, benchmarks/bench_soak.py) on made-up
inputs, without a network: the request plan, the period lateness, the pass/fail rules, the memory slope and
the soak's totals over rounds."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from benchmarks import bench_rest_load, bench_soak
from trace_replay.live import REPLAY_DTYPE, ReplaySchedule
from twin.flow import FlowKey

pytestmark = pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning")


def test_the_plan_is_the_rate_times_the_seconds_in_the_mix_plus_the_moves_in_time_order():
    plan = bench_rest_load.schedule(200, 60, 0.5, seed=3)
    kinds = Counter(kind for _, kind in plan)
    assert len(plan) == 200 * 60 + 30 and kinds["move"] == 30
    assert [t for t, _ in plan] == sorted(t for t, _ in plan) and plan[-1][0] < 60
    weights = {kind: spec[0] for kind, spec in bench_rest_load.MIX.items()}
    assert sum(weights.values()) == 200
    for kind, weight in weights.items():  # each kind near its share of the 12,000 requests
        assert abs(kinds[kind] - 60 * weight) < 5 * (60 * weight) ** 0.5 + 5, kind
    assert bench_rest_load.schedule(0, 60, 0.5, seed=3) == []  # the baseline: no load at all


def test_with_phases_the_load_runs_only_in_every_other_phase():
    plan = bench_rest_load.schedule(100, 40, 0.5, seed=1, phase_s=10)
    assert len(plan) == 100 * 20 + 10
    assert all(int(t // 10) in (0, 2) for t, _ in plan)


def test_the_mix_has_reads_authorised_writes_and_bad_requests_each_with_its_statuses():
    spec = bench_rest_load.MIX
    assert {s[1] for s in spec.values()} >= {"GET", "PATCH", "PUT", "POST", "DELETE"}
    assert all(s[5] == {200} for s in spec.values() if s[1] == "GET" and "limit=x" not in s[2])
    assert spec["no_token"][3] is None and spec["no_token"][5] == {401}
    assert spec["wrong_token"][3] == bench_rest_load.WRONG_TOKEN and spec["wrong_token"][5] == {403}
    assert spec["patch_config"][3] is True and spec["patch_config"][5] == {200}


def test_lateness_is_the_gap_between_period_starts_minus_the_period_split_into_work_and_the_rest(tmp_path):
    log = tmp_path / "transitions.jsonl"
    starts, work = [10.0, 11.0, 12.3, 13.3, 15.0, 16.0], [0.0, 250.0, 0.0, 500.0, 0.0, 0.0]
    log.write_text("".join(json.dumps({"state": {"time": t}, "timings": {"decision_ms": w / 2,
                                                                        "execution_ms": w / 2}}) + "\n"
                           for t, w in zip(starts, work, strict=True)))
    late = bench_rest_load.lateness(log, 1.0, start=10.5, end=15.5)  # the periods starting at 11, 12.3, 13.3, 15
    assert late["periods"] == 4
    assert late["max"] == 700.0 and late["p50"] == pytest.approx(150.0)
    assert late["previous_period_work_ms"]["max"] == 500.0 and late["rest_ms"]["max"] == 200.0
    phased = bench_rest_load.lateness(log, 1.0, start=10.5, end=15.5, phase_s=2.0)  # loaded: [10.5, 12.5) ...
    assert phased["with_load"]["periods"] == 3 and phased["without_load"]["periods"] == 1
    assert phased["without_load"]["max"] == 0.0 and phased["with_load"]["max"] == 700.0


def test_a_run_fails_on_a_5xx_a_lost_answer_an_unexpected_status_loss_outside_nf_buffers_or_reordering():
    clean = dict.fromkeys(("server_errors", "connection_errors", "unexpected_count", "packets_dropped_by_sockets",
                           "packets_lost_elsewhere", "packets_reordered_after_setup"), 0)
    assert bench_rest_load.failures(clean) == []
    for name in clean:
        assert len(bench_rest_load.failures({**clean, name: 2})) == 1, name


def test_the_memory_slope_is_zero_when_flat_and_the_growth_per_thousand_moves_when_not():
    flat, growing = bench_soak.Memory(pid=0), bench_soak.Memory(pid=0)
    flat.samples = [(0.0, 0, 400.0), (60.0, 100, 430.0)] + [(60.0 + k, 100 + 10 * k, 430.0) for k in range(1, 50)]
    growing.samples = [(0.0, 0, 400.0)] + [(float(k), 10 * k, 400.0 + 0.02 * k) for k in range(1, 100)]
    figures = flat.figures(warm_up_migrations=100)
    assert figures["rss_mib_start"] == 400.0 and figures["rss_mib_end"] == 430.0 and figures["rss_mib_max"] == 430.0
    assert figures["mib_per_1000_migrations"] == pytest.approx(0.0, abs=1e-9)
    assert growing.figures(0)["mib_per_1000_migrations"] == pytest.approx(2.0)
    assert growing.figures(0)["mib_per_hour"] == pytest.approx(72.0)


def test_the_last_half_slope_tells_a_run_that_levels_off_from_one_that_grows():
    """Growth early, flat from the middle migration on: the whole run has a slope, its last half none."""
    memory = bench_soak.Memory(pid=0)
    memory.samples = [(float(k), 10 * k, 400.0 + min(k, 50) * 0.1) for k in range(101)]
    figures = memory.figures(warm_up_migrations=0)
    assert figures["mib_per_1000_migrations"] > 1.0
    assert figures["last_half_after_migrations"] == 500 and figures["rss_mib_at_half"] == 405.0
    assert figures["last_half_mib_per_1000_migrations"] == pytest.approx(0.0, abs=1e-9)


def test_a_process_that_reads_its_own_rss_gets_a_positive_figure():
    import os

    memory = bench_soak.Memory(os.getpid())
    memory.sample(0)
    assert memory.samples[0][1] == 0 and memory.samples[0][2] > 1.0


def test_the_nf_drops_of_a_round_are_counted_from_its_start():
    before = {"nf1": {"dropped": 5, "socket_dropped": 1}}
    after = {"nf1": {"dropped": 7, "socket_dropped": 1, "queue_packets": 0}, "nf2": {"dropped": 3}}
    assert bench_soak.round_reports(before, after) == {
        "nf1": {"dropped": 2, "socket_dropped": 0, "queue_packets": 0}, "nf2": {"dropped": 3, "socket_dropped": 0}}


def test_the_soak_totals_add_the_rounds_and_split_the_moves_not_done_by_outcome():
    def round_(moves, lost_by_nfs):
        summary = {name: 0 for name in bench_soak.ADDITIVE} | {
            "migrations": moves, "packets_dropped_by_nfs": lost_by_nfs,
            "migrations_not_done": {"skipped": 1, "rolled_back": 0, "rollback_failed": 0},
            "scenarios": {"scale_out": 1, "scale_in": 0, "lb": 2}}
        flows = {"a": {"lost": lost_by_nfs, "reordered": 0, "reordered_at_setup": 0, "migrated": True}}
        return bench_soak.Round(0.0, summary, [100.0] * moves, [2.0], flows, cpu_s=1.0, wall_s=10.0)

    totals = bench_soak.totals([round_(10, 0), round_(5, 3)])
    assert totals["migrations"] == 15 and totals["packets_dropped_by_nfs"] == 3
    assert totals["migrations_not_done"] == {"skipped": 2, "rolled_back": 0, "rollback_failed": 0}
    assert totals["scenarios"] == {"scale_out": 2, "scale_in": 0, "lb": 4}
    assert totals["migrated_flows_with_loss"] == 1 and totals["controller_cpu_percent_of_one_core"] == 10.0


def test_the_server_time_comes_from_the_controllers_access_log(tmp_path):
    log = tmp_path / "ryu.log"
    log.write_text('loading app controller_app.app\n'
                   '127.0.0.1 - - [07/Dec/2026 20:16:55] "GET /deepmigration/v1/flows HTTP/1.1" 200 1910 0.004000\n'
                   '127.0.0.1 - - [07/Dec/2026 20:16:55] "GET /deepmigration/v1/flows HTTP/1.1" 200 1910 0.002000\n'
                   '127.0.0.1 - - [07/Dec/2026 20:16:56] "GET /deepmigration/v1/decisions?limit=x HTTP/1.1" 400 '
                   '80 0.001000\n')
    server = bench_rest_load.server_time(log, wall_s=0.07)
    assert server["server_s_per_wall_s"] == 0.1
    assert server["by_path"]["GET /deepmigration/v1/flows"] == {"requests": 2, "p50": 3.0, "p99": 4.0, "max": 4.0,
                                                                 "total_s": 0.01}
    assert server["by_path"]["GET /deepmigration/v1/decisions"]["requests"] == 1


def test_switch_drops_of_a_round_leave_out_the_controllers_copies_and_the_rest_is_unaccounted():
    before = {bench_soak.CONTROLLER_COPIES: 10, "drop_action_of_pipeline": 1, "s1-eth1 ovs socket drops": 0}
    after = {bench_soak.CONTROLLER_COPIES: 50, "drop_action_of_pipeline": 1, "s1-eth1 ovs socket drops": 7,
             "s1-eth2 rx_dropped": 0}
    drops = bench_soak.drops_between(before, after)
    assert drops == {bench_soak.CONTROLLER_COPIES: 40, "s1-eth1 ovs socket drops": 7}
    assert bench_soak.data_drops(drops) == 7
    summary = {name: 0 for name in bench_soak.ADDITIVE} | {
        "packets_lost_elsewhere": 9, "migrations_not_done": {"skipped": 0},
        "scenarios": {"scale_out": 0, "scale_in": 0, "lb": 0}}
    round_ = bench_soak.Round(0.0, summary, [], [], {}, cpu_s=1.0, wall_s=1.0, switch_drops=drops)
    totals = bench_soak.totals([round_])
    assert totals["packets_dropped_in_switch"] == 7 and totals["packets_lost_unaccounted"] == 2


def test_a_flow_that_falls_silent_past_the_idle_timeout_is_returning_and_its_burst_is_counted():
    packets = np.zeros(6, dtype=REPLAY_DTYPE)
    packets["flow"] = [0, 1, 0, 0, 1, 0]
    packets["ts"] = [0.0, 0.5, 0.01, 0.02, 1.0, 4.5]
    flows = [FlowKey.of("10.0.0.1", "10.0.0.2", 1, 80, 6), FlowKey.of("10.0.0.3", "10.0.0.4", 2, 80, 6)]
    marks = bench_soak.window_flows(ReplaySchedule(packets, flows), idle_timeout_s=3.0)
    assert marks == {flows[0].id: {"returning": True, "peak_packets_in_100_ms": 3},
                     flows[1].id: {"returning": False, "peak_packets_in_100_ms": 1}}
