"""An NF process dying in the middle of a migration batch (as its source, then as its destination) or stalling
longer than a period, on the switch-less rig: the move is finished or rolled back so that no flow is left
pointing at the dead instance, and the loop goes on."""
from __future__ import annotations

from controller_app.execution import MigrationOutcome
from controller_app.steering import canonical, flow_key
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
