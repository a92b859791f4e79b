"""Faults on the live loop, on the real stack (Open vSwitch userspace datapath, Mininet, NF processes,
`ryu-manager controller_app.app`), each while traffic flows; the figures are in docs/testbed.md ("Faults").

Every flow sends one packet first and the rest from 300 ms later (as in test_live_loop), so only the fault can
lose or reorder its packets. Each test prints its figures (`pytest -s`) as one `FAULT` JSON line.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller_app.demo import live_loop
from controller_app.recovery import FAULT_ENV
from mininet_topos.nf_cluster import ClusterSpec
from mininet_topos.testbed import ryu_controller
from tests import pcap_builder
from trace_replay.live import flow_outcomes

pytestmark = [
    pytest.mark.network,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("ovs"),
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]

SETUP_GAP_S = 0.3
SPEC = ClusterSpec(active=2, standby=0, capacity_pps=300, buffer_packets=1000, processing_ms=5)
CONFIG = {"thresholds": {"high": 0.95, "low": 0.0, "var": 1.0}, "quiet_ms": 50, "rule_idle_timeout_s": 5,
          "mode": "manual"}
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


@pytest.mark.parametrize(("kill_at", "outcome"), [("barrier:1", "finished"), ("hold:1", "rolled_back")])
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
            assert log.count(f"to {dst} {outcome}") == len(moved), log[-3000:]
            assert replay.wait(timeout=40) == 0, (loop.workdir / "replay.log").read_text()
            loop.drain()
            outcomes = flow_outcomes(json.loads(sent_log.read_text()), loop.cluster.sink_counts())
    assert (outcomes["sent"], outcomes["lost"], outcomes["reordered"]) == (outcomes["sent"], 0, 0), outcomes
    print("FAULT", json.dumps({"fault": f"controller SIGKILL at {kill_at}", "moves": len(moved),
                               "held_at_kill": stuck, "reconnect_s": round(reconnected, 2),
                               "recovered_s": round(recovered, 2), "sent": outcomes["sent"],
                               "lost": outcomes["lost"], "reordered": outcomes["reordered"]}))
