"""The controller's long-lived containers stay bounded over a long run (issue 20, soak): per-flow
entries go when the flow's rules idle out, per-decision and per-move ones keep only the latest."""
from __future__ import annotations

from controller_app.core import DECISIONS_KEPT
from controller_app.deviation import HISTORY
from controller_app.state_collection import RULELESS_AFTER_S
from controller_app.steering import canonical, flow_key
from tests.controller_rig import land, run_period, tuple_n

FLOWS = 10_000
ALIVE = 50


def test_ended_flows_leave_every_per_flow_container(rig):
    """10,000 flows come and go, at most 50 at once: the registry, the state, the switch-stats
    counters and the pending merges hold only the flows that are still there."""
    c = rig.controller
    rig.controller.config = c.config.updated({"mode": "dry-run"})
    live: list = []
    biggest = 0
    for n in range(FLOWS):
        land(rig, tuple_n(n), "nf1" if n % 2 else "nf2")
        live.append(tuple_n(n))
        if len(live) > ALIVE:
            gone = live.pop(0)
            rig.counters.pop(gone, None)
            rig.switch.rules.pop(canonical(gone), None)
            rig.clock.now += c.config.rule_idle_timeout_s
            c.on_rule_expired(gone, float(c.config.rule_idle_timeout_s))
            c.on_rule_expired(gone.reverse(), float(c.config.rule_idle_timeout_s))
        if n % 25 == 0:
            run_period(rig, {t: 1 for t in live})
            biggest = max(biggest, len(c.flows), len(c.collection._counters), c.state.n_flows)
    assert biggest <= ALIVE + 1
    assert {f.key for f in c.flows} == {flow_key(t) for t in live}
    assert not c.steering._merges
    assert len(c.deviation.history.states) <= HISTORY


def test_decisions_moves_and_their_measurements_keep_only_the_latest(rig):
    """More decisions than the controller keeps, each one executed move of the same flow: the decision
    list stops at DECISIONS_KEPT, the measured latencies at their window per pair, the re-migration
    tracker at the moves of its window."""
    c = rig.controller
    flow = tuple_n(1)
    land(rig, flow, "nf1")
    c.reconfigure({"mode": "manual"})
    run_period(rig, {flow: 1})
    decisions = DECISIONS_KEPT + 200
    for k in range(decisions):
        src, dst = c.flows.get(flow_key(flow)).instance, ("nf2", "nf1")[k % 2]
        c.submit({"migrations": [{"flow": flow_key(flow), "src": src, "dst": dst}]})
        record = run_period(rig, {flow: 1})
        assert record.migrations[0].outcome.value == "done"
        run_period(rig, {flow: 1})  # the state the next request is checked against shows the move
        rig.calls.clear()
    assert len(c.decisions) == DECISIONS_KEPT
    assert c.decisions[-1].id == decisions
    assert all(len(kept) <= 20 for kept in c.latency._measured.values())
    assert len(c.metrics._remigrations._last_move) <= 1


def test_a_flow_no_rule_carries_and_no_nf_reports_is_forgotten_though_its_expiry_was_missed(rig):
    """Issue 20: a flow whose rules went without a flow-removed message the controller saw leaves the registry
    once flow-stats replies stop listing it (RULELESS_AFTER_S after it was last listed), unless an NF still
    reports state of it; the kept NF report holds the flow ids, not the NF's per-flow list."""
    c = rig.controller
    c.config = c.config.updated({"mode": "dry-run"})
    kept, lost, held = tuple_n(1), tuple_n(2), tuple_n(3)
    for t in (kept, lost, held):
        land(rig, t, "nf1")
    rig.nfs["nf2"].flows_with_state = [held]  # its older state, kept at nf2
    run_period(rig, {kept: 1, lost: 1, held: 1})
    for t in (lost, held):
        rig.counters.pop(t)
        rig.switch.rules.pop(canonical(t))
    periods = int(RULELESS_AFTER_S)
    for _ in range(periods):
        run_period(rig, {kept: 1})
    assert {f.key for f in c.flows} == {flow_key(t) for t in (kept, lost, held)}
    run_period(rig, {kept: 1})
    assert {f.key for f in c.flows} == {flow_key(t) for t in (kept, held)}
    nf2 = c.nfs["nf2"]
    assert "flows" not in nf2.last_report and nf2.flows_with_state == {flow_key(held)}
    rig.nfs["nf2"].flows_with_state = []  # nf2 forgot it (idle)
    run_period(rig, {kept: 1})
    assert {f.key for f in c.flows} == {flow_key(kept)}
