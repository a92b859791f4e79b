"""The live loop end to end: real Open vSwitch, Mininet, NF processes and `ryu-manager controller_app.app`.

Traffic comes from crafted traces whose rates make each scenario certain (scale-out, scale-in, load
balancing). Every flow sends one packet first and the rest from 300 ms later, so its rules are in place
before its traffic: the only thing that could lose or reorder its packets is a migration.
"""
from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller_app.demo import live_loop
from mininet_topos.nf_cluster import ClusterSpec
from tests import pcap_builder
from tests.helpers import nf_pid
from trace_replay.live import flow_outcomes
from twin.flow import FlowKey

pytestmark = [
    pytest.mark.network,
    pytest.mark.timeout(90),
    pytest.mark.usefixtures("ovs"),
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]

SETUP_GAP_S = 0.3


def crafted_trace(path: Path, rates_pps: list[float], seconds: float, flap: tuple[float, float] | None = None) -> Path:
    """UDP flows at the given rates (both directions alternating), each after a lone first packet; with
    `flap` = (low rate, half-period s), every other half-period each flow sends at the low rate instead."""
    frames = []
    for n, rate in enumerate(rates_pps):
        client, server = ("10.7.0.1", 3000 + n), ("192.168.7.7", 53)
        start = n * 0.01
        times = [start] + [start + SETUP_GAP_S + k / rate for k in range(int(seconds * rate))]
        if flap is not None:
            low, half = flap
            times = [start] + flapped(times[1:], rate, low, half, start + SETUP_GAP_S)
        for k, ts in enumerate(times):
            a, b = (client, server) if k % 2 == 0 else (server, client)
            frames.append(pcap_builder.Frame(ts, pcap_builder.ethernet(pcap_builder.udp(*a, *b, 200))))
    frames.sort(key=lambda frame: frame.ts)
    return pcap_builder.write_pcap(path, frames, snaplen=1600)


def flapped(times: list[float], rate: float, low: float, half: float, origin: float) -> list[float]:
    """Packet times at `rate` thinned to `low` in every odd half-period after `origin`."""
    keep_every = max(round(rate / low), 1)
    return [ts for k, ts in enumerate(times) if int((ts - origin) // half) % 2 == 0 or k % keep_every == 0]


def config(**thresholds) -> dict:
    """Manual at first: an empty cluster would scale in before the traffic arrives."""
    return {"thresholds": thresholds, "quiet_ms": 50, "rule_idle_timeout_s": 5, "mode": "manual"}


def finish(loop, replay, sent_log: Path) -> dict:
    assert replay.wait(timeout=60) == 0, (loop.workdir / "replay.log").read_text()
    loop.drain()
    loop.poll_decisions()
    return flow_outcomes(json.loads(sent_log.read_text()), loop.cluster.sink_counts())


def executed(loop, scenario: str) -> list[dict]:
    return [d for d in loop.decisions.values() if d["scenario"] == scenario and d["executed"]]


def assert_migrations_clean(loop, outcomes: dict, decisions: list[dict]) -> set[str]:
    moved = {m["flow"] for d in decisions for m in d["migrations"] if m["outcome"] == "done"}
    assert moved, [d["migrations"] for d in decisions]
    per_flow = {FlowKey.of(*f["key"]).id: f for f in outcomes["flows"].values()}
    for flow in moved:
        assert (per_flow[flow]["lost"], per_flow[flow]["reordered"]) == (0, 0), per_flow[flow]
    assert sum(c.report()["dropped"] for c in loop.cluster.clients.values()) == 0
    return moved


@contextmanager
def episode(tmp_path, spec: ClusterSpec, rates: list[float], seconds: float, cfg: dict, until):
    """Replay the trace under the live loop until `until(loop)` holds, then to its end; the loop and
    the per-flow outcomes are checked while the cluster is still up."""
    trace = crafted_trace(tmp_path / "trace.pcap", rates, seconds)
    with live_loop(spec, config=cfg, workdir=tmp_path / "live") as loop:
        sent_log = tmp_path / "sent.json"
        replay = loop.cluster.start_replay(trace, sent_log)
        loop.wait_for(lambda: len(loop.api.get("/flows")) == len(rates), 5, "every flow steered")
        time.sleep(2 * loop.api.get("/config")["period_s"])  # a period of measured rates
        loop.api.write("/config", "PUT", {"mode": "auto"})
        loop.wait_for(lambda: (loop.poll_decisions(), until(loop))[1], seconds + 5, "the scenario")
        yield loop, finish(loop, replay, sent_log)


def test_scale_out_starts_the_standby_and_moves_flows_loss_free(tmp_path):
    # One active NF of 200 packets/s given 150: 75 % > Th_high 60 %.
    spec = ClusterSpec(active=1, standby=1, capacity_pps=200, buffer_packets=400, processing_ms=5)
    with episode(tmp_path, spec, [30.0] * 5, 10, config(high=0.6, low=0.05),
                 lambda loop: executed(loop, "scale_out")) as (loop, outcomes):
        [first, *_] = executed(loop, "scale_out")
        assert first["started"] == ["nf2"]
        assert all(m["dst"] == "nf2" for m in first["migrations"])
        assert_migrations_clean(loop, outcomes, [first])
        assert outcomes["lost"] == 0


def test_scale_in_drains_and_stops_an_instance_loss_free(tmp_path):
    # Two NFs of 200 packets/s sharing 40: 10 % each, under Th_low 20 %; one instance is enough.
    spec = ClusterSpec(active=2, standby=0, capacity_pps=200, buffer_packets=400, processing_ms=5)
    with episode(tmp_path, spec, [10.0] * 4, 10, config(high=0.6, low=0.2),
                 lambda loop: executed(loop, "scale_in")) as (loop, outcomes):
        [first, *_] = executed(loop, "scale_in")
        assert len(first["stopped"]) == 1
        stopped = first["stopped"][0]
        assert all(m["src"] == stopped for m in first["migrations"])
        assert_migrations_clean(loop, outcomes, [first])
        assert outcomes["lost"] == 0


def test_load_balancing_evens_out_an_uneven_placement_loss_free(tmp_path):
    # Placement is by expected load at arrival; one 60 packets/s flow and three of 8 leave the two
    # NFs of 100 packets/s at 60-70 % against ~15 %: variance above Th_var; no overload or underload.
    spec = ClusterSpec(active=2, standby=0, capacity_pps=100, buffer_packets=400, processing_ms=5)
    with episode(tmp_path, spec, [8.0, 8.0, 8.0, 40.0, 8.0], 10, config(high=0.95, low=0.01, var=0.005),
                 lambda loop: executed(loop, "lb")) as (loop, outcomes):
        assert_migrations_clean(loop, outcomes, executed(loop, "lb"))
        assert outcomes["lost"] == 0


def test_survives_switch_reconnect_nf_crash_and_bad_rest_input(tmp_path):
    spec = ClusterSpec(active=3, standby=0, capacity_pps=300, buffer_packets=400, processing_ms=5)
    trace = crafted_trace(tmp_path / "trace.pcap", [10.0] * 6, 20)
    cfg = config(high=0.95, low=0.0, var=1.0)  # no scenario: only the failures act
    with live_loop(spec, config=cfg, workdir=tmp_path / "live") as loop:
        api = loop.api
        replay = loop.cluster.start_replay(trace, tmp_path / "sent.json")
        loop.wait_for(lambda: len(api.get("/flows")) == 6, 5, "all six flows steered")

        # REST bad inputs while traffic flows: 4xx JSON errors, and the controller carries on.
        for path, method, body, token, status in [
            ("/config", "PUT", b"{oops", True, 400), ("/config", "PUT", {"thresholds": {"high": 2}}, True, 400),
            ("/migrations", "POST", {"migrations": [{"flow": "x", "src": "nf1", "dst": "nf2"}]}, True, 404),
            ("/config", "PUT", {"mode": "manual"}, "wrong", 403), ("/decisions?limit=0", "GET", None, False, 400)]:
            got, answer = api.call(path, method, body, token)
            assert (got, answer["status"]) == (status, status), answer
        assert api.get("/state")["switch_connected"]

        # Switch disconnect and reconnect: the controller reinstalls the flows' rules.
        switch = loop.cluster.switch
        target = subprocess.run(["ovs-vsctl", "get-controller", switch], capture_output=True, text=True,
                                check=True).stdout.strip()
        subprocess.run(["ovs-vsctl", "del-controller", switch], check=True)
        loop.wait_for(lambda: not api.get("/state")["switch_connected"], 10, "the controller sees the disconnect")
        subprocess.run(["ovs-vsctl", "set-controller", switch, target], check=True)
        loop.wait_for(lambda: api.get("/state")["switch_connected"], 15, "the switch reconnects")
        rules = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch, "cookie=0xd3e9/-1"],
                               capture_output=True, text=True, check=True).stdout
        assert rules.count("priority=100") == 12  # both directions of all six flows

        # An NF crash: its flows are re-steered to the live instances within two periods.
        flows = api.get("/flows")
        victim = max({f["instance"] for f in flows}, key=lambda nf: sum(f["instance"] == nf for f in flows))
        period = api.get("/config")["period_s"]
        subprocess.run(["kill", "-KILL", str(nf_pid(loop.cluster, victim))], check=True)
        killed = time.monotonic()
        loop.wait_for(lambda: all(f["instance"] != victim for f in api.get("/flows")), 2 * period + 1,
                      "the crashed NF's flows re-steered")
        assert time.monotonic() - killed <= 2 * period + 1
        dead = {i["id"]: i for i in api.get("/instances")}[victim]
        assert not dead["alive"]
        received = loop.cluster.sink_counts()["received"]
        time.sleep(1.0)
        assert loop.cluster.sink_counts()["received"] > received  # traffic flows on the survivors
        assert replay.wait(timeout=40) == 0
        loop.check_controller()


def test_a_flapping_load_makes_no_reversal_with_the_stabilizer(tmp_path):
    # Four flows jump between 70 and 3 packets/s every 2 s: two NFs of 200 packets/s swing between 70 %
    # (over Th_high, a scale-out without the stabilizer) and 3 % (a scale-in). The estimated load, about
    # 37 %, needs neither; the load that is steady (the mean) is what the stabilizer acts on.
    spec = ClusterSpec(active=2, standby=1, capacity_pps=200, buffer_packets=400, processing_ms=5)
    trace = crafted_trace(tmp_path / "trace.pcap", [70.0] * 4, 20, flap=(3.0, 2.0))
    cfg = {**config(high=0.6, low=0.1), "stabilizer": {"enabled": True}}
    with live_loop(spec, config=cfg, workdir=tmp_path / "live") as loop:
        sent_log = tmp_path / "sent.json"
        replay = loop.cluster.start_replay(trace, sent_log)
        loop.wait_for(lambda: len(loop.api.get("/flows")) == 4, 5, "every flow steered")
        time.sleep(2 * loop.api.get("/config")["period_s"])
        loop.api.write("/config", "PUT", {"mode": "auto"})
        outcomes = finish(loop, replay, sent_log)
        scale = [d for d in sorted(loop.decisions.values(), key=lambda d: d["id"])
                 if d["executed"] and (d["started"] or d["stopped"])]
        assert len(scale) <= 1, scale  # at most one scale action: nothing to reverse
        state = loop.api.get("/state")["stabilizer"]
        assert state["enabled"] and state["flows_estimated"] >= 0 and state["budget_queue"] >= 0
        deviation = loop.api.get("/state")["deviation"]  # the calibrated twin predicted every period
        assert deviation["twin"] == "calibrated" and deviation["error"] == "" and deviation["cluster"] is not None
        assert all(i["twin_deviation_abs"] is not None for i in loop.api.get("/instances") if i["active"])
        assert not any(d["fallback"] for d in loop.decisions.values())
        assert outcomes["lost"] == 0
