"""Faults on the live loop, on the real stack (Open vSwitch userspace datapath, Mininet, NF processes,
`ryu-manager controller_app.app`), each while traffic flows; the figures are in docs/testbed.md ("Faults").

Every flow sends one packet first and the rest from 300 ms later (as in test_live_loop), so only the fault can
lose or reorder its packets. Each test prints its figures (`pytest -s`) as one `FAULT` JSON line.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller_app.demo import live_loop
from controller_app.recovery import FAULT_ENV
from mininet_topos.testbed import OVS_CTL, ensure_ovs_running, ryu_controller
from tests import pcap_builder
from tests.helpers import manual_two_nf_setup, nf_pid
from trace_replay.live import flow_outcomes
from twin.flow import FlowKey

pytestmark = [
    pytest.mark.network,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("ovs"),
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]

SETUP_GAP_S = 0.3
SPEC, CONFIG = manual_two_nf_setup()
"""No scenario ever: only the fault and the moves the test asks for act."""


def trace(path: Path, flows: int, rate_pps: float, seconds: float) -> Path:
    """UDP flows at `rate_pps` (both directions alternating), each after a lone first packet."""
    frames = []
    for n in range(flows):
        client, server = ("10.8.0.1", 4000 + n), ("192.168.8.8", 53)
        start = n * 0.01
        times = [start] + [start + SETUP_GAP_S + k / rate_pps for k in range(int(seconds * rate_pps))]
        for k, ts in enumerate(times):
            a, b = (client, server) if k % 2 == 0 else (server, client)
            frames.append(pcap_builder.Frame(ts, pcap_builder.ethernet(pcap_builder.udp(*a, *b, 200))))
    frames.sort(key=lambda frame: frame.ts)
    return pcap_builder.write_pcap(path, frames, snaplen=1600)


def ovs(*args: str) -> str:
    return subprocess.run(["ovs-vsctl", *args], capture_output=True, text=True, check=True).stdout.strip()


def held(loop) -> int:
    return sum(len(client.report()["held"]) for client in loop.cluster.clients.values())


@contextmanager
def restarted_controller(loop):
    """A new `ryu-manager` on the OpenFlow and REST ports of the killed one, with its config; it becomes
    `loop.controller` (stopped on exit)."""
    port = int(ovs("get-controller", loop.cluster.switch).rsplit(":", 1)[1])
    wsapi_port = int(loop.api.base.split(":")[2].split("/")[0])
    with ryu_controller(["controller_app.app"], port=port, wsapi_port=wsapi_port,
                        log_path=loop.workdir / "ryu-restarted.log",
                        extra_args=["--config-file", str(loop.workdir / "ryu.conf")]) as controller:
        loop.controller = controller
        yield controller


@pytest.mark.parametrize(("kill_at", "outcome"), [("barrier:1", "finished"), ("hold:1", "rolled_back"),
                                                ("export:1", "finished"), ("import:1", "finished")])
def test_controller_killed_mid_batch_and_restarted_loses_and_reorders_nothing(tmp_path, monkeypatch, kill_at,
                                                                                outcome):
    monkeypatch.setenv(FAULT_ENV, kill_at)  # the first controller kills itself there
    pcap = trace(tmp_path / "trace.pcap", 4, 20.0, 16)
    with live_loop(SPEC, config=CONFIG, workdir=tmp_path / "live") as loop:
        monkeypatch.delenv(FAULT_ENV)  # ... the restarted one does not
        # the switch retries a lost controller within 1 s (OVS's default backoff grows to 8 s)
        ovs("set", "Controller", ovs("get", "Bridge", loop.cluster.switch, "controller").strip("[]"),
            "max_backoff=1000")
        sent_log = tmp_path / "sent.json"
        replay = loop.cluster.start_replay(pcap, sent_log)
        api = loop.api
        flows = loop.wait_for(lambda: len(f := api.get("/flows")) == 4 and f, 5, "every flow steered")
        time.sleep(1.0)
        src = max({"nf1", "nf2"}, key=lambda nf: sum(f["instance"] == nf for f in flows))
        dst = ({"nf1", "nf2"} - {src}).pop()
        moved = sorted(f["id"] for f in flows if f["instance"] == src)
        api.write("/migrations", "POST", {"migrations": [{"flow": f, "src": src, "dst": dst} for f in moved]})
        old = loop.controller
        assert old.wait(timeout=10) == -signal.SIGKILL
        killed = time.monotonic()
        stuck = held(loop)
        with restarted_controller(loop):
            loop.wait_for(lambda: api.get("/state")["switch_connected"], 15, "the switch reconnects")
            reconnected = time.monotonic() - killed
            loop.wait_for(lambda: held(loop) == 0 and len(api.get("/flows")) == 4, 10, "the moves recovered")
            recovered = time.monotonic() - killed
            where = {f["id"]: f["instance"] for f in api.get("/flows")}
            assert {where[f] for f in moved} == {dst if outcome == "finished" else src}
            log = (loop.workdir / "ryu-restarted.log").read_text()
            assert log.count(f"to {dst} {outcome}") == (1 if kill_at == "hold:1" else len(moved)), log[-3000:]
            # the states exported but not imported when the controller died, imported by the restarted one
            settled = log.count(f"settled into {dst}")
            assert settled == {"export:1": 1, "import:1": len(moved) - 1}.get(kill_at, 0), log[-3000:]
            assert replay.wait(timeout=40) == 0, (loop.workdir / "replay.log").read_text()
            loop.drain()
            outcomes = flow_outcomes(json.loads(sent_log.read_text()), loop.cluster.sink_counts())
            reports = [client.report() for client in loop.cluster.clients.values()]
    assert (outcomes["sent"], outcomes["lost"], outcomes["reordered"]) == (outcomes["sent"], 0, 0), outcomes
    counted: dict[str, int] = {}  # no NF state lost: every packet of a flow is in its state, wherever it is
    for report in reports:
        assert report["exported"] == [], report["exported"]  # every exported state's import acknowledged
        for flow in report["flows"]:
            counted[FlowKey.of(*flow["key"]).id] = counted.get(FlowKey.of(*flow["key"]).id, 0) + flow["packets"]
    sent = {FlowKey.of(*f["key"]).id: f["sent"] for f in outcomes["flows"].values()}
    assert {flow: counted.get(flow) for flow in sent} == sent, counted
    print("FAULT", json.dumps({"fault": f"controller SIGKILL at {kill_at}", "moves": len(moved),
                               "held_at_kill": stuck, "reconnect_s": round(reconnected, 2),
                               "recovered_s": round(recovered, 2), "states_settled": settled, "sent": outcomes["sent"],
                               "lost": outcomes["lost"], "reordered": outcomes["reordered"]}))


def outcomes_of(loop, replay, sent_log: Path) -> dict:
    assert replay.wait(timeout=40) == 0, (loop.workdir / "replay.log").read_text()
    loop.drain()
    return flow_outcomes(json.loads(sent_log.read_text()), loop.cluster.sink_counts())


def lost_by_instance(outcomes: dict, instance_of: dict[str, str]) -> dict[str, dict]:
    """Lost and reordered packets summed over the flows that `instance_of` (flow id -> instance) places."""
    totals: dict[str, dict] = {}
    for flow in outcomes["flows"].values():
        entry = totals.setdefault(instance_of[FlowKey.of(*flow["key"]).id], {"lost": 0, "reordered": 0})
        entry["lost"] += flow["lost"]
        entry["reordered"] += flow["reordered"]
    return totals


@pytest.mark.parametrize("victim", ["src", "dst"])
def test_an_nf_killed_mid_migration_loses_only_its_own_packets(tmp_path, victim):
    rate, quiet_ms = 20.0, 1500  # the batch waits 1.5 s in its export step: the NF is killed then
    pcap = trace(tmp_path / "trace.pcap", 4, rate, 12)
    with live_loop(SPEC, config={**CONFIG, "quiet_ms": quiet_ms}, workdir=tmp_path / "live") as loop:
        sent_log = tmp_path / "sent.json"
        replay = loop.cluster.start_replay(pcap, sent_log)
        api = loop.api
        flows = loop.wait_for(lambda: len(f := api.get("/flows")) == 4 and f, 5, "every flow steered")
        time.sleep(1.0)
        src = max({"nf1", "nf2"}, key=lambda nf: sum(f["instance"] == nf for f in flows))
        dst = ({"nf1", "nf2"} - {src}).pop()
        moved = sorted(f["id"] for f in flows if f["instance"] == src)[:1]
        before = {f["id"]: f["instance"] for f in flows}
        api.write("/migrations", "POST", {"migrations": [{"flow": f, "src": src, "dst": dst} for f in moved]})
        loop.wait_for(lambda: loop.cluster.clients[dst].report()["held"], 5, "the batch in flight", every=0.05)
        time.sleep(0.3)  # hold, redirect and barrier take milliseconds: the batch now waits in its export step
        dead = {"src": src, "dst": dst}[victim]
        subprocess.run(["kill", "-KILL", str(nf_pid(loop.cluster, dead))], check=True)
        killed = time.monotonic()
        loop.wait_for(lambda: all(f["instance"] != dead for f in api.get("/flows")), 5, "the dead NF's flows re-steered")
        resteered = time.monotonic() - killed
        [decision] = loop.poll_decisions()
        [run] = decision["migrations"]
        outcomes = outcomes_of(loop, replay, sent_log)
    assert run["outcome"] == ("done" if victim == "src" else "rolled_back"), run
    lost = {FlowKey.of(*f["key"]).id: (f["lost"], f["reordered"]) for f in outcomes["flows"].values()}
    untouched = [f for f, nf in before.items() if nf != dead and f not in moved]
    assert all(lost[f] == (0, 0) for f in untouched), lost  # flows that never met the dead NF
    if victim == "src":  # the moved flow left the source before it died
        assert all(lost[f] == (0, 0) for f in moved), lost
    bound = rate * (resteered + quiet_ms / 1000 + 1.0)  # per flow that met the dead NF
    assert all(lost[f][0] <= bound for f in before), (lost, bound)
    print("FAULT", json.dumps({"fault": f"NF {victim} SIGKILL mid-migration", "move": run["outcome"],
                               "resteered_s": round(resteered, 2), "sent": outcomes["sent"],
                               "lost": outcomes["lost"], "reordered": outcomes["reordered"],
                               "lost_per_flow_bound": round(bound), "lost_per_flow": lost}))


def test_open_vswitch_restarted_under_traffic_comes_back_with_every_rule(tmp_path):
    rate = 20.0
    pcap = trace(tmp_path / "trace.pcap", 4, rate, 14)
    with live_loop(SPEC, config=CONFIG, workdir=tmp_path / "live") as loop:
        sent_log = tmp_path / "sent.json"
        replay = loop.cluster.start_replay(pcap, sent_log)
        api = loop.api
        loop.wait_for(lambda: len(api.get("/flows")) == 4, 5, "every flow steered")
        time.sleep(1.0)
        try:
            stopped = time.monotonic()
            subprocess.run(["ovs-appctl", "-t", "ovs-vswitchd", "exit"], check=True, timeout=10)
            subprocess.run([OVS_CTL, "--no-ovsdb-server", "--no-record-hostname", "start"], check=True,
                           capture_output=True, timeout=60)
        finally:
            ensure_ovs_running()
        restarted = time.monotonic() - stopped
        received = loop.cluster.sink_counts()["received"]
        loop.wait_for(lambda: api.get("/state")["switch_connected"] and
                      loop.cluster.sink_counts()["received"] > received, 15, "traffic through the restarted switch")
        resumed = time.monotonic() - stopped
        rules = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", loop.cluster.switch, "cookie=0xd3e9/-1"],
                               capture_output=True, text=True, check=True).stdout
        outcomes = outcomes_of(loop, replay, sent_log)
    assert rules.count("priority=100") == 8  # both directions of all four flows, re-installed
    assert outcomes["reordered"] == 0
    assert outcomes["lost"] <= 4 * rate * (resumed + 1.0), outcomes["lost"]
    print("FAULT", json.dumps({"fault": "ovs-vswitchd restarted", "restart_s": round(restarted, 2),
                               "traffic_back_s": round(resumed, 2), "sent": outcomes["sent"],
                               "lost": outcomes["lost"], "reordered": outcomes["reordered"]}))


def test_an_nf_stalled_for_several_periods_keeps_the_period_on_time_and_its_flows_in_order(tmp_path):
    """A stall is not a death: the stalled NF takes no new flow but keeps its own, whose packets wait in it (and
    in its socket's queue) and come out in order when it runs again; nothing is lost or reordered."""
    nf_timeout_s, period_s, stall_s, stall_periods = 0.3, 1.0, 2.5, 4  # 2.5 s miss at most 3 reports
    pcap = trace(tmp_path / "trace.pcap", 4, 20.0, 12)
    config = {**CONFIG, "nf_timeout_s": nf_timeout_s, "nf_stall_periods": stall_periods}
    with live_loop(SPEC, config=config, workdir=tmp_path / "live") as loop:
        sent_log = tmp_path / "sent.json"
        replay = loop.cluster.start_replay(pcap, sent_log)
        api = loop.api
        flows = loop.wait_for(lambda: len(f := api.get("/flows")) == 4 and f, 5, "every flow steered")
        before = {f["id"]: f["instance"] for f in flows}
        time.sleep(1.0)
        stalled = max({"nf1", "nf2"}, key=lambda nf: sum(f == nf for f in before.values()))
        pid = nf_pid(loop.cluster, stalled)
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            instance = loop.wait_for(lambda: (i := {i["id"]: i for i in api.get("/instances")}[stalled])["stalled"]
                                     and i, 2 * period_s + 1, "the stalled NF left out of new flows")
            left_out = time.monotonic() - stopped
            time.sleep(max(stall_s - left_out, 0.0))
            during = {f["id"]: f["instance"] for f in api.get("/flows")}
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        loop.wait_for(lambda: not {i["id"]: i for i in api.get("/instances")}[stalled]["stalled"], 2 * period_s + 1,
                      "the NF answers again")
        back = time.monotonic() - resumed
        outcomes = outcomes_of(loop, replay, sent_log)
        times = [json.loads(line)["time"] for line in loop.transition_log.read_text().splitlines()]
    assert instance["alive"] and during == before  # never declared dead: no flow re-steered
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= period_s + 2 * nf_timeout_s + 0.5, gaps  # one timed-out report per period, no more
    by_instance = lost_by_instance(outcomes, before)
    assert (outcomes["lost"], outcomes["reordered"]) == (0, 0), by_instance
    print("FAULT", json.dumps({"fault": f"NF SIGSTOP {stall_s} s", "stall_periods": stall_periods,
                               "left_out_s": round(left_out, 2), "answers_again_s": round(back, 2),
                               "max_period_s": round(max(gaps), 2), "sent": outcomes["sent"],
                               "by_instance": by_instance}))
