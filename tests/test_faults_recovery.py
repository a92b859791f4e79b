"""A controller restarted in the middle of a migration batch, on the switch-less rig: the new controller adopts the
switch's rules (no wipe), rebuilds which flow is on which instance, and finishes or rolls back every move its
predecessor left half done (controller_app.recovery)."""
from __future__ import annotations

import pytest

from controller_app import execution
from controller_app.execution import MigrationOutcome
from controller_app.recovery import FAULT_ENV, interrupted_moves, kill_point
from controller_app.steering import canonical, flow_key
from tests.controller_rig import land, restart, run_period, tuple_n


class Crash(BaseException):
    """Stands for the SIGKILL of `recovery.maybe_kill`: nothing of the old controller runs after it."""


@pytest.fixture
def crash_at(monkeypatch):
    """`crash_at("barrier:1")`: the next migration batch stops dead at that point."""
    def kill(point, step, done):
        if point == (step, done):
            raise Crash(f"{step}:{done}")

    monkeypatch.setattr(execution, "maybe_kill", kill)
    return lambda point: monkeypatch.setenv(FAULT_ENV, point)


def interrupted_batch(rig, point: str, crash_at, moved: int = 3):
    """Three flows on nf1 (each with state there), `moved` of them moved to nf2 in one batch that dies at `point`."""
    flows = [tuple_n(n) for n in range(3)]
    for t in flows:
        land(rig, t, "nf1")
        rig.nfs["nf1"].state[flow_key(t)] = {"packets": 40 + t.src_port % 10}
    rig.nfs["nf1"].flows_with_state = list(flows)
    c = rig.controller
    c.reconfigure({"mode": "manual"})
    run_period(rig, {t: 5 for t in flows})
    crash_at(point)
    c.submit({"migrations": [{"flow": flow_key(t), "src": "nf1", "dst": "nf2"} for t in flows[:moved]]})
    with pytest.raises(Crash):
        run_period(rig, {t: 5 for t in flows})
    for nf in rig.nfs.values():  # what each NF would report now
        nf.flows_with_state = [t for t in flows if flow_key(t) in nf.state]
    return flows


def assert_consistent(rig, flows):
    """Every flow's rules, registry entry and state agree, and no NF holds anything."""
    c = rig.controller
    for t in flows:
        instance = c.flows.get(flow_key(t)).instance
        assert rig.switch.rules[canonical(t)] == instance
        assert [nf for nf, fake in rig.nfs.items() if flow_key(t) in fake.state] == [instance]
    assert not any(fake.held for fake in rig.nfs.values())


def test_a_restarted_controller_adopts_the_rules_instead_of_wiping_them(rig, tmp_path):
    flows = [tuple_n(n) for n in range(4)]
    for k, t in enumerate(flows):
        land(rig, t, ("nf1", "nf2")[k % 2])
    rules = dict(rig.switch.rules)
    c = restart(rig, tmp_path, mode="manual")
    assert ("switch", "adopt", 4) in rig.calls and not [call for call in rig.calls if call[1] == "reset"][1:]
    assert rig.switch.rules == rules
    assert {flow.key: flow.instance for flow in c.flows} == {flow_key(t): rules[canonical(t)] for t in flows}
    run_period(rig, {t: 5 for t in flows})
    assert c.steering.recovered == [] and c.state.n_flows == 4


def test_moves_redirected_before_the_crash_are_finished(rig, tmp_path, crash_at):
    flows = interrupted_batch(rig, "barrier:1", crash_at)
    assert all(rig.switch.rules[canonical(t)] == "nf2" for t in flows) and len(rig.nfs["nf2"].held) == 3
    c = restart(rig, tmp_path, mode="manual")
    run_period(rig, {t: 5 for t in flows})
    assert [r.outcome for r in c.steering.recovered] == ["finished"] * 3
    assert_consistent(rig, flows)
    assert {rig.nfs["nf2"].state[flow_key(t)]["packets"] for t in flows} == {40, 41, 42}  # no state lost
    # in OpenNF's order: the state is exported and imported before the held packets are released
    tail = [call for call in rig.calls if call[0] == "nf2" and call[1] in ("import", "release")]
    assert [call[1] for call in tail[-2:]] == ["import", "release"]


def test_moves_held_but_not_redirected_are_rolled_back(rig, tmp_path, crash_at):
    flows = interrupted_batch(rig, "hold:2", crash_at)
    assert len(rig.nfs["nf2"].held) == 2 and all(rig.switch.rules[canonical(t)] == "nf1" for t in flows)
    c = restart(rig, tmp_path, mode="manual")
    run_period(rig, {t: 5 for t in flows})
    assert [r.outcome for r in c.steering.recovered] == ["rolled_back"] * 2
    assert all(c.flows.get(flow_key(t)).instance == "nf1" for t in flows)
    assert_consistent(rig, flows)


@pytest.mark.parametrize("point", ["export:1", "export:3", "import:1"])
def test_a_crash_between_export_and_import_finishes_and_loses_no_state(rig, tmp_path, crash_at, point):
    """The source keeps what it exported until the import is acknowledged: the restarted controller imports the
    states the dead one had exported but not imported, before it releases the held packets."""
    flows = interrupted_batch(rig, point, crash_at)
    kept = {flow_key(t) for t, _ in rig.nfs["nf1"].exported.values()}
    assert len(kept) == (2 if point == "import:1" else int(point[-1]))  # exported, never (acknowledged as) imported
    c = restart(rig, tmp_path, mode="manual")
    restarted = len(rig.calls)
    run_period(rig, {t: 5 for t in flows})
    assert [r.outcome for r in c.steering.recovered] == ["finished"] * 3
    assert_consistent(rig, flows)
    assert {rig.nfs["nf2"].state[flow_key(t)]["packets"] for t in flows} == {40, 41, 42}  # no state lost
    assert not rig.nfs["nf1"].exported  # every copy acknowledged
    for t in flows:  # each flow's state in before its held packets go
        steps = [call[1] for call in rig.calls[restarted:] if call[:3] in (("nf2", "import", flow_key(t)),
                                                                           ("nf2", "release", flow_key(t)))]
        assert steps == (["import", "release"] if flow_key(t) in kept or point == "export:1" else ["release"]), steps


def test_a_state_imported_but_not_acknowledged_counts_once_even_after_the_flow_moved_on(rig, crash_at):
    """An acknowledgement lost (the source did not answer): the copy is settled at a later period, where the
    flow's instance has merged it already, even if the flow moved on since (the ids travel with the state)."""
    flows = [tuple_n(n) for n in range(2)]
    for t in flows:
        land(rig, t, "nf1")
        rig.nfs["nf1"].state[flow_key(t)] = {"packets": 40}
    c = rig.controller
    c.reconfigure({"mode": "manual"})
    run_period(rig, {t: 5 for t in flows})
    rig.nfs["nf1"].fail_on = "acknowledge"
    c.submit({"migrations": [{"flow": flow_key(flows[0]), "src": "nf1", "dst": "nf2"}]})
    [run] = run_period(rig, {t: 5 for t in flows}).migrations
    assert run.outcome is MigrationOutcome.DONE and len(rig.nfs["nf1"].exported) == 1
    rig.nfs["nf1"].stalled = True  # ... and it keeps the copy while the flow moves on to nf3
    run_period(rig, {t: 5 for t in flows})
    c.submit({"start": ["nf3"], "migrations": [{"flow": flow_key(flows[0]), "src": "nf2", "dst": "nf3"}]})
    [run] = run_period(rig, {t: 5 for t in flows}).migrations
    assert run.outcome is MigrationOutcome.DONE
    assert c.flows.get(flow_key(flows[0])).instance == "nf3"
    rig.nfs["nf1"].stalled, rig.nfs["nf1"].fail_on = False, None
    run_period(rig, {t: 5 for t in flows})
    assert not rig.nfs["nf1"].exported and rig.nfs["nf3"].state[flow_key(flows[0])] == {"packets": 40}


def test_flows_of_an_instance_that_died_with_the_controller_are_resteered(rig, tmp_path, crash_at):
    flows = interrupted_batch(rig, "barrier:1", crash_at)
    rig.nfs["nf2"].dead = True  # the destination died too: its held packets with it
    c = restart(rig, tmp_path, mode="manual")
    run_period(rig, {t: 5 for t in flows})
    assert all(c.flows.get(flow_key(t)).instance != "nf2" for t in flows)
    assert all(rig.switch.rules[canonical(t)] == c.flows.get(flow_key(t)).instance for t in flows)
    assert c.steering.recovered == []


def test_interrupted_moves_are_read_from_the_reports(rig):
    t = tuple_n(1)
    land(rig, t, "nf2")
    rig.nfs["nf2"].held = [canonical(t)]
    rig.nfs["nf1"].flows_with_state = [t]
    rig.nfs["nf3"].held = [canonical(tuple_n(2))]
    rig.controller.poll_instances()
    serving = {flow.key: flow.instance for flow in rig.controller.flows}
    moves = {m.flow: m for m in interrupted_moves(serving, rig.controller.nfs)}
    assert (moves[flow_key(t)].finish, moves[flow_key(t)].sources) == (True, ("nf1",))
    assert (moves[flow_key(tuple_n(2))].finish, moves[flow_key(tuple_n(2))].holder) == (False, "nf3")


@pytest.mark.parametrize("value", ["hold", "hold:0", "hold:x", "drop:1", ":2"])
def test_a_malformed_kill_point_is_named_and_ignored(monkeypatch, caplog, value):
    monkeypatch.setenv(FAULT_ENV, value)
    assert kill_point() is None
    assert FAULT_ENV in caplog.text and repr(value) in caplog.text


def test_a_kill_point_names_a_step_and_a_count(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "barrier:1")
    assert kill_point() == ("barrier", 1)
    monkeypatch.delenv(FAULT_ENV)
    assert kill_point() is None
