"""The controller's logic without a switch: a fake switch and fake NF channels stand in for OVS and the NFs."""
from __future__ import annotations

import json

import pytest

from controller_app.config import ClusterDescription, ConfigError, ControllerConfig, Mode
from controller_app.core import Controller
from controller_app.execution import MigrationOutcome, Step
from controller_app.steering import canonical, flow_key
from controller_app.views import ActionRejected, flows_view, instances_view
from tests.controller_rig import (
    Clock,
    FakeNF,
    FakeSwitch,
    cluster_dict,
    land,
    new_flow,
    overload_nf1,
    run_period,
    tuple_n,
)
from twin.flow import FiveTuple
from twin.migration import apply
from twin.scenario import ScenarioKind


def test_flow_key_is_direction_free_and_reuses_trace_ordering():
    t = FiveTuple("10.0.0.9", "10.0.0.1", 80, 40000, 6)
    assert flow_key(t) == flow_key(t.reverse()) == "10.0.0.1:40000-10.0.0.9:80/6"
    assert canonical(t) == canonical(t.reverse()) == t.reverse()


def test_new_flows_land_where_the_default_steering_sends_them_both_directions(rig):
    c = rig.controller
    placed = [new_flow(rig, tuple_n(n)) for n in range(8)]
    assert placed == ["nf1", "nf2"] * 4  # least utilised first; the standby nf3 gets nothing
    first = c.flows.get(flow_key(tuple_n(1))).instance
    again = new_flow(rig, tuple_n(1).reverse())  # the reply direction: same flow, same NF
    assert again == first and len(c.flows) == 8
    assert rig.switch.rules[canonical(tuple_n(1))] == first
    assert not [call for call in rig.calls if call[:2] == ("switch", "steer")]  # the switch installed the rules


def test_counters_become_rates_and_state(rig):
    c = rig.controller
    land(rig, tuple_n(1), "nf1")
    run_period(rig, {tuple_n(1): 30})
    run_period(rig, {tuple_n(1): 40})
    state = c.state
    f = state.flow_index[flow_key(tuple_n(1))]
    assert state.rate[f] == pytest.approx(40.0)
    assert state.instance_ids == ("nf1", "nf2", "nf3")
    assert state.utilisation[state.assignment[f]] == pytest.approx(0.4)


def test_scale_out_moves_flows_loss_free_and_logs_the_transition(rig):
    c = rig.controller
    flows = overload_nf1(rig)
    rig.calls.clear()
    record = run_period(rig, {t: 12 for t in flows})  # nf1 at 72 % > Th_high 60 %
    assert record.scenario == ScenarioKind.SCALE_OUT.value and record.executed
    assert record.migrations and all(m.outcome is MigrationOutcome.DONE for m in record.migrations)
    assert record.predicted["total"] > 0 and record.measured is not None
    move = record.migrations[0]
    assert move.completed == list(Step)
    # OpenNF order: dst holds before the rules move, the barrier precedes the export, release comes last.
    steps = [call[:2] for call in rig.calls if call[1] != "report"]
    if record.started:  # a started standby is activated before anything moves to it
        assert steps[:len(record.started)] == [(i, "activate") for i in record.started]
        steps = steps[len(record.started):]
    # The moves go together, phase by phase (one barrier for all), each in OpenNF's order.
    assert steps.count(("switch", "barrier")) == 1
    for m in record.migrations:
        mine = [call[:2] for call in rig.calls if call[1] == "barrier" or call[2:3] == (m.flow,)]
        assert mine == [(m.dst, "hold"), ("switch", "steer"), ("switch", "barrier"), (m.src, "export"),
                        (m.dst, "import"), (m.src, "acknowledge"), (m.dst, "release")]
    for m in record.migrations:
        assert rig.switch.rules[c.flows.get(m.flow).five_tuple] == m.dst == c.flows.get(m.flow).instance
    # Each export drains for 50 ms; a move lasts from its own hold to its own release, which comes
    # after every export of the batch (the holds take no time here).
    assert [m.duration_ms for m in record.migrations] == pytest.approx(
        [50.0 * len(record.migrations)] * len(record.migrations))
    latency = c.latency.matrix(c.state.instance_ids)  # the measured durations replaced OpenNF's 42.15 ms
    pair = [m.duration_ms for m in record.migrations if (m.src, m.dst) == (move.src, move.dst)]
    assert latency[c.state.instance_index[move.src], c.state.instance_index[move.dst]] == pytest.approx(
        sum(pair) / len(pair))

    run_period(rig, {t: 12 for t in flows})
    lines = [json.loads(line) for line in rig.log.read_text().splitlines()]
    executed = next(line for line in lines if line["executed"])
    assert executed["action"]["migrations"] and executed["reward"] == record.predicted["reward"]
    after = {i["id"]: i for i in executed["next_state"]["instances"]}
    assert after["nf1"]["utilisation"] < 0.6


def test_measured_cost_times_each_move_and_the_whole_batch(rig):
    c = rig.controller
    flows = overload_nf1(rig)
    c.reconfigure({"mode": "manual"})
    rig.nfs["nf2"].hold_s = 0.01  # each hold at nf2 takes 10 ms: the second move starts 10 ms after the first
    c.submit({"migrations": [{"flow": flow_key(t), "src": "nf1", "dst": "nf2"} for t in flows[:2]]})
    record = run_period(rig, {t: 12 for t in flows})
    first, second = record.migrations
    assert first.outcome is second.outcome is MigrationOutcome.DONE
    # Both release after both exports (50 ms each), 120 ms after the first hold began.
    assert (first.duration_ms, second.duration_ms) == pytest.approx((120.0, 110.0))
    measured = record.measured
    assert measured["migration_wall_ms"] == pytest.approx(120.0)  # the counterpart of the predicted time
    assert measured["migration_busy_ms"] == pytest.approx(230.0)
    assert "migration_time_ms" not in measured and "migration_time_ms" in record.predicted
    # la_ij of the pair is the mean of its two moves, in the measured cost as in the latency estimate.
    state = c.state
    pair = state.instance_index["nf1"], state.instance_index["nf2"]
    assert c.latency.matrix(state.instance_ids)[pair] == pytest.approx(115.0)
    latency = state.migration_ms.copy()
    latency[pair] = 115.0
    _, expected = apply(state.with_changes(migration_ms=latency), record.action, c.params, c.config.thresholds)
    assert measured["migration"] == pytest.approx(expected.migration)
    assert measured["total"] == pytest.approx(expected.total)


def test_dry_run_decides_but_moves_nothing(rig):
    flows = overload_nf1(rig)
    rig.controller.reconfigure({"mode": "dry-run"})
    record = run_period(rig, {t: 12 for t in flows})
    assert record.feasible and record.action.migrations and not record.executed
    assert {rig.switch.rules[canonical(t)] for t in flows} == {"nf1"}


def test_manual_mode_runs_only_posted_actions(rig):
    c = rig.controller
    flows = overload_nf1(rig)
    c.reconfigure({"mode": "manual"})
    assert run_period(rig, {t: 12 for t in flows}) is None  # overloaded, but nobody asked
    key = flow_key(flows[0])
    with pytest.raises(ActionRejected) as unknown:
        c.submit({"migrations": [{"flow": "nope", "src": "nf1", "dst": "nf2"}]})
    assert unknown.value.status == 404 and unknown.value.offender == "nope"
    with pytest.raises(ActionRejected) as wrong_source:
        c.submit({"migrations": [{"flow": key, "src": "nf2", "dst": "nf3"}]})
    assert wrong_source.value.status == 409
    with pytest.raises(ActionRejected) as malformed:
        c.submit({"migrations": [{"flow": key}]})
    assert malformed.value.status == 400
    c.submit({"migrations": [{"flow": key, "src": "nf1", "dst": "nf2"}]})
    record = run_period(rig, {t: 12 for t in flows})
    assert record.origin == "manual" and record.migrations[0].outcome is MigrationOutcome.DONE
    assert rig.switch.rules[canonical(flows[0])] == "nf2"


@pytest.mark.parametrize("failing, state_returned", [("export", False), ("import", True)])
def test_failed_migration_rolls_back_and_loop_survives(rig, failing, state_returned):
    c = rig.controller
    flows = overload_nf1(rig)
    c.reconfigure({"mode": "manual"})
    key = flow_key(flows[0])
    c.submit({"migrations": [{"flow": key, "src": "nf1", "dst": "nf2"}]})
    (rig.nfs["nf1"] if failing == "export" else rig.nfs["nf2"]).fail_on = failing
    rig.calls.clear()
    record = run_period(rig, {t: 12 for t in flows})
    run = record.migrations[0]
    assert run.outcome is MigrationOutcome.ROLLED_BACK and failing in run.error
    assert rig.switch.rules[canonical(flows[0])] == "nf1" == c.flows.get(key).instance
    assert ("nf2", "release", key) in rig.calls
    assert (("nf1", "import", key) in rig.calls) is state_returned
    assert record.measured["migration"] == 0.0  # nothing moved
    assert run_period(rig, {t: 12 for t in flows}) is None  # next period runs normally


def test_barrier_failure_rolls_back(rig):
    flows = overload_nf1(rig)
    rig.controller.reconfigure({"mode": "manual"})
    rig.controller.submit({"migrations": [{"flow": flow_key(flows[0]), "src": "nf1", "dst": "nf2"}]})
    rig.switch.fail_barrier = True
    record = run_period(rig, {t: 12 for t in flows})
    assert record.migrations[0].outcome is MigrationOutcome.ROLLBACK_FAILED  # the rollback's own barrier fails too
    assert rig.switch.rules[canonical(flows[0])] == "nf1"


def test_crashed_nf_flows_are_resteered_in_the_same_period(rig):
    c = rig.controller
    flows = [tuple_n(n) for n in range(4)]
    for t in flows:
        new_flow(rig, t)
    on_nf1 = [t for t in flows if c.flows.get(flow_key(t)).instance == "nf1"]
    assert on_nf1
    rig.nfs["nf1"].dead = True
    run_period(rig, {t: 5 for t in flows})
    assert all(rig.switch.rules[canonical(t)] != "nf1" for t in flows)
    assert "nf1" not in c.state.instance_ids and c.state.n_flows == len(flows)
    view = {i["id"]: i for i in instances_view(c)}
    assert not view["nf1"]["alive"] and "socket closed" in view["nf1"]["error"]
    rig.nfs["nf1"].dead = False
    run_period(rig, {t: 5 for t in flows})
    assert "nf1" in c.state.instance_ids


def test_reconnected_switch_gets_every_rule_back(rig):
    c = rig.controller
    for n in range(3):
        new_flow(rig, tuple_n(n))
    c.on_switch_disconnected()
    fresh = FakeSwitch([])
    c.on_switch_connected(fresh)
    assert fresh.base_installed and set(fresh.rules) == {canonical(tuple_n(n)) for n in range(3)}
    assert fresh.rules == rig.switch.rules and fresh.default == rig.switch.default


def test_flow_forgotten_once_both_rules_expire(rig):
    c = rig.controller
    new_flow(rig, tuple_n(1))
    c.on_rule_expired(tuple_n(1))
    assert len(c.flows) == 1
    c.on_rule_expired(tuple_n(1).reverse())
    assert len(c.flows) == 0


def test_reconfigure_validates_before_changing_anything(rig):
    c = rig.controller
    with pytest.raises(ConfigError) as bad:
        c.reconfigure({"thresholds": {"high": 1.5}})
    assert "high" in str(bad.value)
    with pytest.raises(ConfigError) as unknown:
        c.reconfigure({"policy": "magic"})
    assert unknown.value.field == "policy"
    with pytest.raises(ConfigError):
        c.reconfigure({"token": "stolen"})
    assert c.config.thresholds.high == 0.6 and c.config.policy == "ofm"
    c.reconfigure({"thresholds": {"high": 0.7}, "policy": "size-greedy", "period_s": 2})
    assert (c.config.thresholds.high, c.config.thresholds.low, c.config.policy, c.config.period_s) == \
        (0.7, 0.1, "size-greedy", 2.0)
    assert c.config.mode is Mode.AUTO


def test_cluster_description_errors_name_the_field():
    broken = cluster_dict()
    del broken["hosts"][2]["capacity_pps"]
    with pytest.raises(ConfigError, match="capacity_pps"):
        ClusterDescription.from_dict(broken)
    twice = cluster_dict()
    twice["hosts"][3]["port"] = twice["hosts"][2]["port"]
    with pytest.raises(ConfigError, match="port"):
        ClusterDescription.from_dict(twice)


def test_no_flow_is_steered_to_an_instance_that_has_not_answered_yet(tmp_path):
    nfs: dict[str, FakeNF] = {}

    def channel(desc, timeout):
        nfs[desc.instance] = FakeNF(desc, [], Clock())
        return nfs[desc.instance]

    controller = Controller(ClusterDescription.from_dict(cluster_dict()),
                            ControllerConfig(transition_log=str(tmp_path / "t.jsonl")), channel, clock=Clock())
    switch = FakeSwitch([])
    controller.on_switch_connected(switch)
    assert switch.landing(tuple_n(1)) is None  # new flows are dropped: no instance to take them
    controller.poll_instances()
    assert switch.landing(tuple_n(1)) in {"nf1", "nf2"}


def test_a_returning_flow_that_lands_elsewhere_gets_its_old_state_merged_in(rig):
    c = rig.controller
    land(rig, tuple_n(1), "nf1")
    for direction in (tuple_n(1), tuple_n(1).reverse()):
        c.on_rule_expired(direction)
    assert not flows_view(c)
    rig.nfs["nf1"].flows_with_state = [tuple_n(1)]
    rig.nfs["nf1"].state[flow_key(tuple_n(1))] = {"packets": 9}
    c.poll_instances()
    land(rig, tuple_n(1), "nf2")  # nf2 the least utilised meanwhile: it comes back there
    assert c.flows.get(flow_key(tuple_n(1))).instance == "nf2"
    run_period(rig, {})
    merge = [call for call in rig.calls if call[0] in ("nf1", "nf2") and call[1] in ("export", "import")]
    assert merge == [("nf1", "export", flow_key(tuple_n(1))), ("nf2", "import", flow_key(tuple_n(1)))]
    assert rig.nfs["nf2"].state[flow_key(tuple_n(1))] == {"packets": 9}
    assert rig.switch.rules[canonical(tuple_n(1))] == "nf2"  # its packets never changed path
