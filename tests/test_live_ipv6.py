"""IPv6 flows on the live loop (Open vSwitch userspace datapath, Mininet, NF processes, `ryu-manager
controller_app.app`): the default steering lands them, the controller registers them under their IPv6 flow ids,
and moving some of them mid-replay loses and reorders nothing (docs/testbed.md, "IPv6").

Every flow sends one packet first and the rest from 300 ms later (as in test_faults_live), so only a move could
lose or reorder its packets.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import dpkt
import pytest

from controller_app.app import five_tuple_of
from controller_app.demo import live_loop
from controller_app.steering import flow_key
from tests import pcap_builder
from tests.helpers import manual_two_nf_setup
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
SERVER6 = "2001:db8:8::53"


def ipv6_trace(path: Path, rate_pps: float, seconds: float) -> Path:
    """Three UDP and two TCP IPv6 flows and one IPv4 UDP flow, both directions alternating, each after a lone
    first packet."""
    ends = [(pcap_builder.udp6, f"2001:db8:1::{n + 1}", 5000 + n, SERVER6, 53, dpkt.ethernet.ETH_TYPE_IP6)
            for n in range(3)]
    ends += [(pcap_builder.tcp6, f"2001:db8:2::{n + 1}", 40000 + n, SERVER6, 443, dpkt.ethernet.ETH_TYPE_IP6)
             for n in range(2)]
    ends.append((pcap_builder.udp, "10.8.0.1", 4000, "192.168.8.8", 53, dpkt.ethernet.ETH_TYPE_IP))
    frames = []
    for n, (build, client, sport, server, dport, ethertype) in enumerate(ends):
        start = n * 0.01
        times = [start] + [start + SETUP_GAP_S + k / rate_pps for k in range(int(seconds * rate_pps))]
        for k, ts in enumerate(times):
            args = (client, sport, server, dport, 200) if k % 2 == 0 else (server, dport, client, sport, 200)
            frames.append(pcap_builder.Frame(ts, pcap_builder.ethernet(build(*args), ethertype=ethertype)))
    frames.sort(key=lambda frame: frame.ts)
    return pcap_builder.write_pcap(path, frames, snaplen=1600)


def switch_rules(switch: str) -> dict[str, set[int]]:
    """Flow id -> the output ports of its per-flow rules (both directions), as the switch has them."""
    text = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--no-names", "dump-flows", switch, "cookie=0xd3e9/-1"],
                          capture_output=True, text=True, check=True).stdout
    rules: dict[str, set[int]] = {}
    for line in text.splitlines():
        if "priority=100" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split(" actions=")[0].replace(" ", ",").split(",")
                      if "=" in part)
        match = {name: fields[key] for name, key in (("ipv6_src", "ipv6_src"), ("ipv6_dst", "ipv6_dst"),
                                                     ("ipv4_src", "nw_src"), ("ipv4_dst", "nw_dst"))
                 if key in fields}
        if "ipv6_src" not in match and "ipv4_src" not in match:
            continue
        proto = 6 if "tcp6" in line or ",tcp," in f",{line}," else 17
        match |= {"ip_proto": proto, **{f"{'tcp' if proto == 6 else 'udp'}_{end}": int(fields[f"tp_{end}"])
                                        for end in ("src", "dst")}}
        port = int(line.split("actions=output:")[1].split(",")[0])
        rules.setdefault(flow_key(five_tuple_of(match)), set()).add(port)
    return rules


def test_ipv6_flows_are_steered_registered_and_moved_without_loss_or_reordering(tmp_path):
    pcap = ipv6_trace(tmp_path / "trace6.pcap", 20.0, 10)
    with live_loop(SPEC, config=CONFIG, workdir=tmp_path / "live") as loop:
        sent_log = tmp_path / "sent.json"
        replay = loop.cluster.start_replay(pcap, sent_log)
        api = loop.api
        flows = loop.wait_for(lambda: len(f := api.get("/flows")) == 6 and f, 5, "every flow steered")
        ids = {f["id"] for f in flows}
        assert sum(i.startswith("[2001:db8:") for i in ids) == 5, ids
        time.sleep(1.0)
        ports = {nf: host["port"] for nf, host in loop.cluster.nfs.items()}
        before = {f["id"]: f["instance"] for f in api.get("/flows")}
        moves = [{"flow": f, "src": nf, "dst": "nf2" if nf == "nf1" else "nf1"}
                 for f, nf in sorted(before.items()) if f.startswith("[")][:3]
        api.write("/migrations", "POST", {"migrations": moves})
        [decision] = loop.wait_for(lambda: loop.poll_decisions(), 5, "the moves carried out")
        assert [run["outcome"] for run in decision["migrations"]] == ["done"] * 3, decision
        after = {f["id"]: f["instance"] for f in api.get("/flows")}
        assert after == before | {move["flow"]: move["dst"] for move in moves}
        rules = switch_rules(loop.cluster.switch)
        assert rules == {f: {ports[nf]} for f, nf in after.items()}, (rules, after)
        assert replay.wait(timeout=40) == 0, (loop.workdir / "replay.log").read_text()
        loop.drain()
        outcomes = flow_outcomes(json.loads(sent_log.read_text()), loop.cluster.sink_counts())
        reports = {nf: client.report() for nf, client in loop.cluster.clients.items()}
    assert {FlowKey.of(*f["key"]).id for f in outcomes["flows"].values()} == ids
    assert (outcomes["lost"], outcomes["reordered"]) == (0, 0), outcomes
    state = {FlowKey.of(*flow["key"]).id: nf for nf, report in reports.items() for flow in report["flows"]}
    assert {f: state[f] for f in ids} == after  # each flow's state is where it is steered
    print("IPV6", json.dumps({"flows": len(ids), "moved": len(moves), "sent": outcomes["sent"],
                              "lost": outcomes["lost"], "reordered": outcomes["reordered"]}))
