"""The default steering that places new flows without the controller (controller_app.steering), against
the fake switch: its weights, when they change, and how the controller follows where flows land."""
from __future__ import annotations

from controller_app.steering import canonical, flow_key
from tests.controller_rig import land, new_flow, run_period, tuple_n
from twin.flow import FiveTuple
from twin.scenario import ScenarioKind


def steers(rig) -> list[tuple]:
    return [call for call in rig.calls if call[:2] == ("switch", "steer")]


def test_new_flows_go_to_the_least_utilised_instance_and_the_choice_follows_every_landing(rig):
    rig.controller.config = rig.controller.config.updated({"mode": "dry-run"})  # nothing moves
    assert rig.switch.default == "nf1"  # a tie: the first; the standby nf3 takes none
    placed = [new_flow(rig, tuple_n(n)) for n in range(4)]
    assert placed == ["nf1", "nf2", "nf1", "nf2"]  # each landing moves the choice on
    run_period(rig, {tuple_n(0): 30, tuple_n(1): 1, tuple_n(2): 1, tuple_n(3): 1})
    assert rig.switch.default == "nf2"  # nf1 carries the busy flow


def test_the_switch_hears_of_the_default_only_when_it_changes(rig):
    land(rig, tuple_n(1), "nf1")
    run_period(rig, {tuple_n(1): 10})
    changes = len(rig.switch.default_changes)
    run_period(rig, {tuple_n(1): 10})
    run_period(rig, {tuple_n(1): 10})
    assert len(rig.switch.default_changes) == changes


def test_a_dead_instance_takes_no_new_flow_and_its_flows_move_at_once(rig):
    land(rig, tuple_n(1), "nf1")
    rig.nfs["nf1"].dead = True
    run_period(rig, {tuple_n(1): 5})
    at, target = next(change for change in rig.switch.default_changes if change[1] != "nf1")
    assert target == "nf2"
    first_steer = rig.calls.index(("switch", "steer", flow_key(tuple_n(1)), "nf2"))
    assert at <= first_steer  # no new flow lands on nf1 once its flows are re-steered
    assert rig.switch.rules[canonical(tuple_n(1))] == "nf2"


def test_an_instance_is_out_of_the_default_steering_before_it_is_drained_and_stopped(rig):
    land(rig, tuple_n(1), "nf1")
    land(rig, tuple_n(2), "nf2")
    rig.calls.clear()
    rig.switch.default_changes.clear()
    record = run_period(rig, {tuple_n(1): 2, tuple_n(2): 2})  # 2 % each, under Th_low: one instance is enough
    assert record.scenario == ScenarioKind.SCALE_IN.value and record.stopped
    [stopped] = record.stopped
    excluded = [at for at, target in rig.switch.default_changes if target != stopped]
    first_hold = next(k for k, call in enumerate(rig.calls) if call[1] == "hold")
    assert excluded and excluded[0] <= first_hold
    assert rig.calls[excluded[0]] == ("switch", "barrier")  # landings before the change are known first


def test_a_flow_that_lands_on_a_stopping_instance_keeps_it_up(rig):
    land(rig, tuple_n(1), "nf1")
    land(rig, tuple_n(2), "nf2")
    real_barrier = rig.switch.barrier

    def barrier(timeout_s):  # a copy the switch sent before the weights changed arrives meanwhile
        if not rig.controller.flows.get(flow_key(tuple_n(3))):
            for instance in ("nf1", "nf2"):
                if instance != rig.switch.default:
                    land(rig, tuple_n(3), instance)
        real_barrier(timeout_s)

    rig.switch.barrier = barrier
    record = run_period(rig, {tuple_n(1): 2, tuple_n(2): 2})
    assert record.scenario == ScenarioKind.SCALE_IN.value
    assert not record.stopped and "still holds flows" in record.error
    late = rig.controller.flows.get(flow_key(tuple_n(3)))
    assert rig.nfs[late.instance].active


def test_further_copies_of_a_placed_flow_change_nothing(rig):
    instance = new_flow(rig, tuple_n(1))
    for _ in range(3):
        rig.controller.on_flow_landed(tuple_n(1).reverse(), instance)
    assert len(rig.controller.flows) == 1 and not steers(rig)


def test_a_flow_landing_on_an_instance_that_cannot_serve_it_is_resteered(rig):
    rig.nfs["nf3"].flows_with_state = []
    land(rig, tuple_n(1), "nf3")  # the standby: the copy was on its way when it was stopped
    flow = rig.controller.flows.get(flow_key(tuple_n(1)))
    assert flow.instance in {"nf1", "nf2"}
    assert steers(rig) == [("switch", "steer", flow.key, flow.instance)]


def test_an_expired_direction_of_a_flow_in_use_comes_back_to_the_same_instance(rig):
    land(rig, tuple_n(1), "nf1")
    run_period(rig, {tuple_n(1): 5})  # the flow carries traffic (one direction only)
    rig.controller.on_rule_expired(tuple_n(1).reverse())
    assert steers(rig) == [("switch", "steer", flow_key(tuple_n(1)), "nf1")]
    assert not rig.controller.flows.get(flow_key(tuple_n(1))).rules_expired


def test_an_idle_flow_expires_direction_by_direction_and_is_forgotten(rig):
    land(rig, tuple_n(1), "nf1")
    run_period(rig, {tuple_n(1): 5})
    for _ in range(12):  # idle for longer than the rules' idle timeout (10 s)
        run_period(rig, {tuple_n(1): 0})
    rig.controller.on_rule_expired(tuple_n(1))
    rig.controller.on_rule_expired(tuple_n(1).reverse())
    assert not steers(rig) and len(rig.controller.flows) == 0


def test_a_report_with_a_nan_queue_is_a_failed_report_not_a_crash(rig):
    land(rig, tuple_n(1), "nf1")
    rig.nfs["nf1"].queue = float("nan")
    run_period(rig, {tuple_n(1): 5})  # the period runs
    assert not rig.controller.nfs["nf1"].alive
    assert "queue_packets" in rig.controller.nfs["nf1"].last_error
    assert rig.switch.rules[canonical(tuple_n(1))] == "nf2"  # its flows move as for any failed NF


class RecordingDatapath:
    """Enough of a Ryu datapath for OpenFlowSwitch to build its messages with the real OpenFlow 1.3 parser."""

    def __init__(self):
        from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser

        self.ofproto, self.ofproto_parser = ofproto_v1_3, ofproto_v1_3_parser
        self.sent: list = []
        self.xids = iter(range(1, 1 << 30))

    def set_xid(self, message) -> None:
        message.xid = next(self.xids)

    def send_msg(self, message) -> bool:
        self.sent.append(message)
        return True


def test_only_source_port_traffic_is_steered():
    """The default rules and the rules they learn match IPv4 and IPv6 from the source port only: replies and
    the NFs' traffic to the sink never take them (they would be sent back into the NFs)."""
    from controller_app.app import DEFAULT_IP_PRIORITY, LANDING_TABLE, OpenFlowSwitch
    from controller_app.config import HostPort, NFDescription

    source_port = 7
    datapath = RecordingDatapath()
    switch = OpenFlowSwitch(datapath, source_port=source_port, idle_timeout_s=3)
    target = NFDescription("nf1", HostPort("nf1", 3, "00:00:00:00:00:03"), 250.0, 800.0, 5.0, True, "/tmp/nf1")
    switch.set_default_steering(target)
    assert all(rule.table_id == 0 and rule.priority == DEFAULT_IP_PRIORITY for rule in datapath.sent)
    assert [dict(rule.match.items()) for rule in datapath.sent] == [
        {"in_port": source_port, "eth_type": 0x0800}, {"in_port": source_port, "eth_type": 0x86DD}]
    landing = [switch._landing_rule(eth_type, proto) for eth_type in (0x0800, 0x86DD) for proto in (6, 17, None)]
    for mod in landing:
        assert mod.table_id == LANDING_TABLE  # reached only through the default rule's resubmit
        learns = [a for a in mod.instructions[0].actions if type(a).__name__ == "NXActionLearn"]
        assert len(learns) == 2  # both directions' rules
        for learn in learns:
            in_port = [spec for spec in learn.specs if spec.dst == ("in_port_nxm", 0)]
            assert [spec.src for spec in in_port] == [source_port]  # the learned rules too
    switch.set_default_steering(None)
    assert [dict(rule.match.items()) for rule in datapath.sent[-2:]] == [
        {"in_port": source_port, "eth_type": 0x0800}, {"in_port": source_port, "eth_type": 0x86DD}]
    assert all(not rule.instructions or not rule.instructions[0].actions for rule in datapath.sent[-2:])  # dropped


def test_ipv6_flows_get_ipv6_rules_and_learned_rules_that_copy_the_128_bit_addresses():
    from controller_app.app import OpenFlowSwitch, five_tuple_of

    switch = OpenFlowSwitch(RecordingDatapath(), source_port=1, idle_timeout_s=3)
    for five_tuple in (FiveTuple("2001:db8::1", "2001:db8::1:0:0:53", 5000, 53, 17),
                       FiveTuple("2001:db8::1", "fe80::1:2", 0, 0, 58), FiveTuple("10.0.0.1", "10.0.0.2", 9, 80, 6)):
        match = switch.match(five_tuple)
        assert five_tuple_of(match) == five_tuple
        assert match["eth_type"] == (0x86DD if ":" in five_tuple.src_ip else 0x0800)
    assert five_tuple_of({"ipv6_src": "2001:DB8:0::1", "ipv6_dst": "2001:db8::2", "ip_proto": 6, "tcp_src": 1,
                          "tcp_dst": 2}) == FiveTuple("2001:db8::1", "2001:db8::2", 1, 2, 6)  # written as twin.flow does
    [learn, _] = [a for a in switch._landing_rule(0x86DD, 17).instructions[0].actions
                  if type(a).__name__ == "NXActionLearn"]
    copied = {spec.dst[0]: (spec.src, spec.n_bits) for spec in learn.specs if isinstance(spec.src, tuple) and spec.dst}
    assert copied["ipv6_src_nxm"] == (("ipv6_src_nxm", 0), 128) and copied["ipv6_dst_nxm"][1] == 128
    assert [spec.src for spec in learn.specs if spec.dst == ("eth_type_nxm", 0)] == [0x86DD]


def test_a_late_landing_copy_after_a_move_does_not_undo_the_move(rig):
    """A landing copy of a packet that came before the flow's rules were in can reach the controller after
    the flow was moved: the flow stays where its rules send it."""
    land(rig, tuple_n(1), "nf1")
    c = rig.controller
    c.reconfigure({"mode": "manual"})
    run_period(rig, {tuple_n(1): 5})
    c.submit({"migrations": [{"flow": flow_key(tuple_n(1)), "src": "nf1", "dst": "nf2"}]})
    run_period(rig, {tuple_n(1): 5})
    assert rig.switch.rules[canonical(tuple_n(1))] == "nf2"
    c.on_flow_landed(tuple_n(1), "nf1")  # the late copy
    assert c.flows.get(flow_key(tuple_n(1))).instance == "nf2"


def test_an_old_rule_expiring_after_a_move_leaves_the_flow_where_it_moved(rig):
    """The sequence behind the test_live_record flake: a flow moves nf1 -> nf2; the idle-timeout removals of the
    rules the move replaced (installed at the landing, expired just before the move's bundle reached the switch)
    arrive after it, then a late landing copy naming nf1. The flow stays on nf2, its rules counted as in."""
    key = flow_key(tuple_n(1))
    land(rig, tuple_n(1), "nf1")
    landed_at = rig.clock.now
    c = rig.controller
    c.reconfigure({"mode": "manual"})
    run_period(rig, {tuple_n(1): 5})
    c.submit({"migrations": [{"flow": key, "src": "nf1", "dst": "nf2"}]})
    run_period(rig, {tuple_n(1): 5})
    moved_at = rig.clock.now
    rig.clock.now += 0.2
    for direction in (tuple_n(1), tuple_n(1).reverse()):
        c.on_rule_expired(direction, age_s=rig.clock.now - landed_at)  # the replaced rules
    flow = c.flows.get(key)
    assert flow is not None and flow.instance == "nf2" and not flow.rules_expired
    c.on_flow_landed(tuple_n(1), "nf1")  # a late copy: not back on its source
    assert c.flows.get(key).instance == "nf2"
    before = len(steers(rig))
    rig.clock.now += 1.0
    c.on_rule_expired(tuple_n(1).reverse(), age_s=rig.clock.now - moved_at)  # the move's own rule: it counts
    assert steers(rig)[before:] == [("switch", "steer", key, "nf2")]  # the flow carries traffic: put back


def test_a_flow_whose_rules_idle_out_during_its_move_gets_no_rules_behind_the_registrys_back(rig):
    """Both rules of a moving flow idle out while the batch holds it (it ended): the registry forgets it, so
    the move must not install rules for it (they would carry its next packets unseen, no landing copy)."""
    key = flow_key(tuple_n(1))
    land(rig, tuple_n(1), "nf1")
    c = rig.controller
    c.reconfigure({"mode": "manual"})
    run_period(rig, {tuple_n(1): 0})
    c.submit({"migrations": [{"flow": key, "src": "nf1", "dst": "nf2"}]})
    hold = rig.nfs["nf2"].hold

    def hold_while_the_rules_expire(five_tuple):
        hold(five_tuple)
        for direction in (tuple_n(1), tuple_n(1).reverse()):
            c.on_rule_expired(direction, age_s=10.0)

    rig.nfs["nf2"].hold = hold_while_the_rules_expire
    record = run_period(rig, {})
    [run] = record.migrations
    assert run.outcome.value == "rolled_back" and "idled out" in run.error
    assert not steers(rig) and c.flows.get(key) is None
    assert not rig.nfs["nf2"].held  # the destination's hold is released


def test_a_steer_installs_fresh_rules_and_only_idle_timeouts_are_expiries():
    """OVS gives a rule that an add replaces the replaced rule's last-used time (tests/test_ovs_rule_idle.py):
    `steer` deletes each direction's rule before adding it, in the same atomic bundle. The deletions' (and a
    reset's) flow-removed messages are not the flow going quiet."""
    from types import SimpleNamespace

    from controller_app.app import FLOW_COOKIE, FLOW_PRIORITY, DeepMigrationApp, OpenFlowSwitch
    from controller_app.config import HostPort, NFDescription

    datapath = RecordingDatapath()
    ofp = datapath.ofproto
    switch = OpenFlowSwitch(datapath, source_port=1, idle_timeout_s=3)
    target = NFDescription("nf2", HostPort("nf2", 4, "00:00:00:00:00:04"), 250.0, 800.0, 5.0, True, "/tmp/nf2")
    switch.steer(tuple_n(1), target)
    controls = [m.type for m in datapath.sent if type(m).__name__ == "ONFBundleCtrlMsg"]
    assert controls == [ofp.ONF_BCT_OPEN_REQUEST, ofp.ONF_BCT_COMMIT_REQUEST]  # one atomic bundle
    mods = [m.message for m in datapath.sent if type(m).__name__ == "ONFBundleAddMsg"]
    directions = [dict(switch.match(d).items()) for d in (tuple_n(1), tuple_n(1).reverse())]
    assert [(m.command, m.priority, dict(m.match.items())) for m in mods] == [
        *((ofp.OFPFC_DELETE_STRICT, FLOW_PRIORITY, d) for d in directions),
        *((ofp.OFPFC_ADD, FLOW_PRIORITY, d) for d in directions)]
    assert all(m.out_port == ofp.OFPP_ANY and m.cookie_mask == 0 for m in mods[:2])  # learned rules too

    expired = []
    app = SimpleNamespace(switch=switch, core=SimpleNamespace(on_rule_expired=lambda *a: expired.append(a)))
    for reason in (ofp.OFPRR_DELETE, ofp.OFPRR_IDLE_TIMEOUT):
        msg = SimpleNamespace(datapath=datapath, reason=reason, cookie=FLOW_COOKIE, match=switch.match(tuple_n(1)),
                              duration_sec=2, duration_nsec=500_000_000)
        DeepMigrationApp.flow_removed_handler(app, SimpleNamespace(msg=msg))
    assert expired == [(tuple_n(1), 2.5)]


def test_a_landing_that_races_a_put_back_is_logged_and_the_flow_stays_put_back(rig, caplog):
    """The race left (issue 20): one rule of a one-way flow idles out while the other direction carries traffic,
    and the idle direction comes back and lands (its `learn`ed rules) on the default steering's instance just
    before the controller puts its rules back to the old one. The put-back wins (the flow's later packets go
    there), so its first packets, on the instance it landed on, can be overtaken: the late copy that shows it
    is logged, by flow."""
    key = flow_key(tuple_n(1))
    land(rig, tuple_n(1), "nf1")
    c = rig.controller
    c.config = c.config.updated({"mode": "dry-run"})
    run_period(rig, {tuple_n(1): 5})
    for packets in (0, 5):
        c.on_flow_stats([(tuple_n(1), 5, 500), (tuple_n(1).reverse(), packets, packets * 100)], rig.clock.now)
        rig.clock.now += 1.0
    c.on_rule_expired(tuple_n(1), age_s=10.0)  # put back to nf1: the other direction carries traffic
    with caplog.at_level("WARNING", logger="controller_app.steering"):
        c.on_flow_landed(tuple_n(1), "nf2")  # its landing's copy, which came after the flow-removed message
        c.on_flow_landed(tuple_n(1), "nf1")  # a late copy naming the flow's own instance says nothing
    assert c.flows.get(key).instance == "nf1" and steers(rig)[-1] == ("switch", "steer", key, "nf1")
    [record] = [r for r in caplog.records if "while they were put back" in r.getMessage()]
    assert key in record.getMessage() and "landed on nf2" in record.getMessage()


def test_a_flow_idle_both_ways_is_not_put_back_and_its_landing_wins(rig, caplog):
    """Issue 20's reorders on never-migrated flows: a returning flow's first rule idles out while its rate,
    which comes a period or two late, still says it is active. Its other direction's own counter has not grown
    since, so nothing of it is queued anywhere: no put-back, and when its next packet lands elsewhere (the copy
    comes after the flow-removed message) the flow is registered there, on the switch's rules, and its older
    state merged in."""
    key = flow_key(tuple_n(1))
    land(rig, tuple_n(1), "nf1")
    c = rig.controller
    c.config = c.config.updated({"mode": "dry-run"})
    c.on_flow_stats([(tuple_n(1), 5, 500), (tuple_n(1).reverse(), 5, 500)], rig.clock.now + 0.5)
    run_period(rig, {tuple_n(1): 5})  # forward only: the reverse counter stays at 5 from now on
    rig.clock.now += c.config.rule_idle_timeout_s - 0.5  # the reverse's last growth is a timeout old
    run_period(rig, {tuple_n(1): 5})  # the forward's late rate: the flow still counts as active
    assert c.flows.get(key).rate_pps > 0
    rig.nfs["nf1"].flows_with_state = [tuple_n(1)]
    rig.nfs["nf1"].state[key] = {"packets": 20}
    c.poll_instances()
    c.on_rule_expired(tuple_n(1), age_s=10.0)
    assert not steers(rig) and c.flows.get(key).rules_expired == {"forward"}
    with caplog.at_level("WARNING", logger="controller_app.steering"):
        land(rig, tuple_n(1), "nf2")  # the switch's learned rules send both directions to nf2
    assert c.flows.get(key).instance == "nf2" and not c.flows.get(key).rules_expired
    assert not [r for r in caplog.records if "while they were put back" in r.getMessage()]
    run_period(rig, {})
    merge = [call for call in rig.calls if call[0] in ("nf1", "nf2") and call[1] in ("export", "import")]
    assert merge == [("nf1", "export", key), ("nf2", "import", key)]
    assert not steers(rig) and rig.switch.rules[canonical(tuple_n(1))] == "nf2"


def test_a_burst_ending_in_both_directions_is_not_put_back(rig):
    """The other direction's last packets came with this one's, at the end of the same burst: the reply that
    showed them came after this direction went quiet, but the packets may have come before, so they say
    nothing of a live direction. One that grew between replies both after that is live: put back."""
    key = flow_key(tuple_n(1))
    land(rig, tuple_n(1), "nf1")
    c = rig.controller
    run_period(rig, {tuple_n(1): 5})  # sets the idle timeout (10 s)
    start = rig.clock.now
    c.on_flow_stats([(tuple_n(1), 5, 500), (tuple_n(1).reverse(), 0, 0)], start + 0.5)
    c.on_flow_stats([(tuple_n(1), 8, 800), (tuple_n(1).reverse(), 4, 400)], start + 1.5)  # the burst's end
    rig.clock.now = start + 1.5 + c.config.rule_idle_timeout_s - 0.2
    c.on_rule_expired(tuple_n(1), age_s=10.0)
    assert not steers(rig) and c.flows.get(key).rules_expired == {"forward"}
    land(rig, tuple_n(2), "nf1")
    landed = rig.clock.now
    c.on_flow_stats([(tuple_n(2), 5, 500), (tuple_n(2).reverse(), 0, 0)], landed + 0.2)
    c.on_flow_stats([(tuple_n(2), 5, 500), (tuple_n(2).reverse(), 4, 400)], landed + 1.2)  # after 0.2 s
    rig.clock.now = landed + c.config.rule_idle_timeout_s  # the forward quiet since `landed` at the latest
    c.on_rule_expired(tuple_n(2), age_s=10.0)
    assert steers(rig) == [("switch", "steer", flow_key(tuple_n(2)), "nf1")]


def test_each_direction_counts_its_own_traffic_and_a_reinstalled_rule_counts_from_zero(rig):
    key = flow_key(tuple_n(1))
    rig.clock.now = 0.5
    land(rig, tuple_n(1), "nf1")
    c = rig.controller
    c.on_flow_stats([(tuple_n(1), 5, 500), (tuple_n(1).reverse(), 0, 0)], 1.0)
    assert c.flows.get(key).grew_after == {"forward": 0.5}  # since it landed
    c.on_flow_stats([(tuple_n(1), 5, 500), (tuple_n(1).reverse(), 3, 300)], 2.0)
    assert c.flows.get(key).grew_after == {"forward": 0.5, "reverse": 1.0}
    c.on_flow_stats([(tuple_n(1), 0, 0), (tuple_n(1).reverse(), 3, 300)], 3.0)  # forward reinstalled, unused
    assert c.flows.get(key).grew_after == {"forward": 0.5, "reverse": 1.0}
    c.on_flow_stats([(tuple_n(1), 2, 200), (tuple_n(1).reverse(), 3, 300)], 4.0)
    assert c.flows.get(key).grew_after == {"forward": 3.0, "reverse": 1.0}
