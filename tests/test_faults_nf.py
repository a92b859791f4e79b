"""An NF process dying in the middle of a migration batch (as its source, then as its destination) or stalling
longer than a period, on the switch-less rig: the move is finished or rolled back so that no flow is left
pointing at the dead instance, a stalled NF keeps its flows until it answers or has missed `nf_stall_periods`
reports, and the loop goes on."""
from __future__ import annotations

import pytest

from controller_app.config import ConfigError, ControllerConfig
from controller_app.execution import MigrationOutcome
from controller_app.steering import canonical, flow_key
from controller_app.views import instances_view
from tests.controller_rig import land, run_period, tuple_n


def flows_on_nf1(rig, n: int = 3):
    flows = [tuple_n(k) for k in range(n)]
    for t in flows:
        land(rig, t, "nf1")
        rig.nfs["nf1"].state[flow_key(t)] = {"packets": 9}
    rig.controller.reconfigure({"mode": "manual"})
    run_period(rig, {t: 5 for t in flows})
    return flows


def die_when(rig, victim: str, instance: str, method: str) -> None:
    """`victim` dies the moment `instance` is asked `method` (before it answers)."""
    fake = rig.nfs[instance]
    original = getattr(fake, method)

    def then_die(*args):
        rig.nfs[victim].dead = True
        return original(*args)

    setattr(fake, method, then_die)


def test_a_source_dying_mid_move_finishes_the_move_without_its_state(rig):
    flows = flows_on_nf1(rig)
    die_when(rig, "nf1", "nf1", "export")
    c = rig.controller
    c.submit({"migrations": [{"flow": flow_key(flows[0]), "src": "nf1", "dst": "nf2"}]})
    [run] = run_period(rig, {t: 5 for t in flows}).migrations
    assert run.outcome is MigrationOutcome.DONE and "source gone" in run.error
    assert rig.switch.rules[canonical(flows[0])] == "nf2" and not rig.nfs["nf2"].held
    run_period(rig, {t: 5 for t in flows})  # the dead source's report fails: its other flows go elsewhere
    assert all(c.flows.get(flow_key(t)).instance != "nf1" for t in flows)
    assert all(rig.switch.rules[canonical(t)] != "nf1" for t in flows)


def test_a_destination_dying_mid_move_rolls_the_move_back(rig):
    flows = flows_on_nf1(rig)
    die_when(rig, "nf2", "nf1", "export")
    c = rig.controller
    c.submit({"migrations": [{"flow": flow_key(flows[0]), "src": "nf1", "dst": "nf2"}]})
    [run] = run_period(rig, {t: 5 for t in flows}).migrations
    assert run.outcome is MigrationOutcome.ROLLED_BACK and "destination gone" in run.error, run.error
    assert rig.switch.rules[canonical(flows[0])] == "nf1" and c.flows.get(flow_key(flows[0])).instance == "nf1"
    assert rig.nfs["nf1"].state[flow_key(flows[0])] == {"packets": 9}  # the state went back to the source
    run_period(rig, {t: 5 for t in flows})
    assert not c.nfs["nf2"].alive and all(c.flows.get(flow_key(t)).instance == "nf1" for t in flows)


def test_an_nf_that_stops_answering_is_left_out_then_taken_back(rig):
    flows = flows_on_nf1(rig)
    c = rig.controller
    rig.nfs["nf1"].dead = True  # as a stalled NF's report times out
    run_period(rig, {t: 5 for t in flows})
    assert not c.nfs["nf1"].alive and all(c.flows.get(flow_key(t)).instance != "nf1" for t in flows)
    rig.nfs["nf1"].dead = False
    run_period(rig, {t: 5 for t in flows})
    assert c.nfs["nf1"].alive and "nf1" in c.state.instance_ids


def test_a_stalled_nf_keeps_its_flows_takes_no_new_ones_and_is_taken_back(rig):
    """A report that times out is a stall, not a death: the NF's flows stay (their queued packets would be
    overtaken if they moved without the migration protocol), no new flow lands on it, no move touches it."""
    flows = flows_on_nf1(rig)
    c = rig.controller
    rig.nfs["nf1"].stalled = True
    run_period(rig, {t: 5 for t in flows})
    nf1 = c.nfs["nf1"]
    assert nf1.alive and nf1.stalled and nf1.missed_reports == 1 and not nf1.usable
    assert all(c.flows.get(flow_key(t)).instance == "nf1" and rig.switch.rules[canonical(t)] == "nf1" for t in flows)
    assert rig.switch.default == "nf2"  # new flows go elsewhere
    c.submit({"migrations": [{"flow": flow_key(flows[0]), "src": "nf1", "dst": "nf2"}]})
    [run] = run_period(rig, {t: 5 for t in flows}).migrations
    assert run.outcome is MigrationOutcome.SKIPPED and nf1.missed_reports == 2
    view = {i["id"]: i for i in instances_view(c)}
    rig.nfs["nf1"].stalled = False
    run_period(rig, {t: 5 for t in flows})
    assert nf1.usable and not nf1.stalled and nf1.missed_reports == 0 and nf1.last_error == ""
    assert all(c.flows.get(flow_key(t)).instance == "nf1" for t in flows)
    assert view["nf1"]["stalled"] and view["nf1"]["missed_reports"] == 2


def test_an_nf_stalled_for_nf_stall_periods_is_dead_and_its_flows_resteered(rig):
    flows = flows_on_nf1(rig)
    c = rig.controller
    assert c.config.nf_stall_periods == 3
    rig.nfs["nf1"].stalled = True
    for missed in (1, 2):
        run_period(rig, {t: 5 for t in flows})
        assert c.nfs["nf1"].stalled and c.nfs["nf1"].missed_reports == missed
    run_period(rig, {t: 5 for t in flows})
    assert not c.nfs["nf1"].alive and "3 periods in a row" in c.nfs["nf1"].last_error
    assert all(c.flows.get(flow_key(t)).instance == "nf2" and rig.switch.rules[canonical(t)] == "nf2" for t in flows)


def test_one_stall_period_makes_a_timed_out_report_a_death(rig):
    flows = flows_on_nf1(rig)
    c = rig.controller
    c.config = c.config.updated({"nf_stall_periods": 1}, allowed=("nf_stall_periods",))
    rig.nfs["nf1"].stalled = True
    run_period(rig, {t: 5 for t in flows})
    assert not c.nfs["nf1"].alive and all(c.flows.get(flow_key(t)).instance == "nf2" for t in flows)


@pytest.mark.parametrize("value", [0, -1, 101, 2.5, True, "3"])
def test_nf_stall_periods_is_an_integer_from_1_to_100(value):
    with pytest.raises(ConfigError) as error:
        ControllerConfig.from_dict({"nf_stall_periods": value})
    assert error.value.field == "nf_stall_periods" or "nf_stall_periods" in str(error.value)
