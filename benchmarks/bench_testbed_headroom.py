"""Data-plane headroom of the testbed: how many packets/s the machine carries src -> switch -> NF ->
switch -> sink when no NF limits them, i.e. the rate beyond which the machine itself, not an NF,
would lose packets or fall behind the trace clock. Needs root (Mininet, Open vSwitch).

    sudo .venv/bin/python benchmarks/bench_testbed_headroom.py
    sudo .venv/bin/python benchmarks/bench_testbed_headroom.py --rates 1000 4000 8000 --json headroom.json

Two NFs with a capacity far above any offered rate (10^6 packets/s, 5,000-packet buffer, no
processing delay) get `--flows` UDP flows of 242-byte frames, alternately; static rules (ovs-ofctl)
stand in for the controller, so only the data plane is measured. Each rate is one replay of
`--seconds` of evenly spaced packets, unpaced (the replay's line-rate limit is lifted), on the same
cluster; counters are differenced per rate. Loss is split into NF drops (a full buffer: should stay
0 here), packet-socket drops (NF and sink sockets whose queues overflowed) and the rest (the switch
or the veth links).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dpkt
from tqdm import tqdm

from mininet_topos.nf_cluster import SINK_PORT, SOURCE_PORT, ClusterSpec, RunningCluster, nf_cluster
from mininet_topos.testbed import ensure_ovs_running, free_tcp_port, ryu_controller

DEFAULT_RATES = (500, 1000, 2000, 3000, 4000, 6000, 8000, 10000)
SPEC = ClusterSpec(active=2, standby=0, capacity_pps=1e6, buffer_packets=5000, processing_ms=0)
CLIENT, SERVER, FIRST_CLIENT_PORT, SERVER_PORT = "10.8.0.1", "192.168.9.9", 2000, 53
PAYLOAD_BYTES = 200
"""UDP payload; with UDP, IPv4 and Ethernet headers a 242-byte frame."""
UNLIMITED = 1e9
"""For the replay's rate limits: the trace is already evenly spaced at the offered rate."""


def write_trace(path: Path, pps: float, seconds: float, flows: int) -> Path:
    """`flows` UDP flows (client port FIRST_CLIENT_PORT + i) sharing `pps` evenly, interleaved."""
    ethernet = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02")
    with path.open("wb") as file:
        writer = dpkt.pcap.Writer(file, snaplen=1600)
        for n in range(int(pps * seconds)):
            udp = dpkt.udp.UDP(
                sport=FIRST_CLIENT_PORT + n % flows, dport=SERVER_PORT, data=b"\0" * PAYLOAD_BYTES
            )
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(
                src=socket.inet_aton(CLIENT), dst=socket.inet_aton(SERVER), p=dpkt.ip.IP_PROTO_UDP, data=udp
            )
            ip.len = len(ip)
            ethernet.data = ip
            writer.writepkt(bytes(ethernet), ts=n / pps)
    return path


def install_rules(cluster: RunningCluster, flows: int) -> None:
    """Flow i to NF i mod 2, every NF's output to the sink, in one ovs-ofctl call (it ends with a
    barrier, so the rules are in when it returns)."""
    ports = [nf["port"] for nf in cluster.nfs.values()]
    rules = [
        f"priority=100,in_port={SOURCE_PORT},udp,nw_src={CLIENT},tp_src={FIRST_CLIENT_PORT + i},"
        f"actions=output:{ports[i % len(ports)]}"
        for i in range(flows)
    ]
    rules += [f"priority=1,in_port={port},actions=output:{SINK_PORT}" for port in ports]
    subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "add-flows", cluster.switch, "-"],
        input="\n".join(rules),
        text=True,
        check=True,
        capture_output=True,
        timeout=10,
    )


def counters(cluster: RunningCluster) -> dict:
    """Cumulative packets received at the sink, dropped by the NFs, dropped by packet sockets."""
    reports = [client.report() for client in cluster.clients.values()]
    sink = cluster.sink_counts()
    return {
        "received": sink["received"],
        "nf_dropped": sum(r["dropped"] for r in reports),
        "socket_dropped": sink["socket_dropped"] + sum(r.get("socket_dropped", 0) for r in reports),
    }


def wait_drained(cluster: RunningCluster, timeout: float = 10.0) -> None:
    """Until no NF queues a frame, then a moment for the last frames to reach the sink."""
    deadline = time.monotonic() + timeout
    while any(client.report()["queue_packets"] for client in cluster.clients.values()):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the NF queues did not drain within {timeout:g} s")
        time.sleep(0.1)
    time.sleep(0.5)


def measure(cluster: RunningCluster, workdir: Path, pps: int, seconds: float, flows: int) -> dict:
    """One replay at `pps`; the differences of the counters over it."""
    trace = write_trace(workdir / f"headroom-{pps}.pcap", pps, seconds, flows)
    sent_log = workdir / f"sent-{pps}.json"
    before = counters(cluster)
    replay = cluster.start_replay(trace, sent_log, max_pps=UNLIMITED, line_rate=UNLIMITED)
    if replay.wait(timeout=seconds + 60) != 0:
        raise RuntimeError(f"the replay at {pps} packets/s failed; see {workdir}/replay.log")
    wait_drained(cluster)
    after = counters(cluster)
    log = json.loads(sent_log.read_text())
    received = after["received"] - before["received"]
    nf_dropped = after["nf_dropped"] - before["nf_dropped"]
    socket_dropped = after["socket_dropped"] - before["socket_dropped"]
    lost = log["packets_sent"] - received
    return {
        "offered_pps": pps,
        "sent": log["packets_sent"],
        "send_pps": round(log["packets_sent"] / (log["finished"] - log["started"])),
        "received": received,
        "lost": lost,
        "lost_percent": round(100 * lost / log["packets_sent"], 2),
        "nf_dropped": nf_dropped,
        "socket_dropped": socket_dropped,
        "lost_elsewhere": lost - nf_dropped - socket_dropped,
        "sender_max_lag_ms": log["max_lag_ms"],
    }


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.machine(),
    )
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release()}


def table(rows: list[dict]) -> str:
    columns = (
        "offered_pps",
        "send_pps",
        "sent",
        "lost",
        "lost_percent",
        "nf_dropped",
        "socket_dropped",
        "lost_elsewhere",
        "sender_max_lag_ms",
    )
    widths = [max(len(name), *(len(str(row[name])) for row in rows)) for name in columns]
    lines = ["  ".join(name.rjust(width) for name, width in zip(columns, widths))]
    lines += ["  ".join(str(row[name]).rjust(width) for name, width in zip(columns, widths)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=DEFAULT_RATES, metavar="PPS")
    parser.add_argument("--seconds", type=float, default=5.0, help="replay length per rate (default 5)")
    parser.add_argument("--flows", type=int, default=20, help="UDP flows sharing the rate (default 20)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the rows here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_testbed_headroom: needs root (Mininet, Open vSwitch)", file=sys.stderr)
        return 2

    started = datetime.now(UTC)
    ensure_ovs_running()
    port = free_tcp_port()
    rows = []
    # A stock Ryu completes the switch's OpenFlow handshake and installs nothing; the rules are static.
    with (
        tempfile.TemporaryDirectory(prefix="dm-headroom-") as workdir,
        ryu_controller(["ryu.controller.ofp_handler"], port=port),
        nf_cluster(SPEC, controller_port=port, workdir=Path(workdir) / "cluster") as cluster,
    ):
        install_rules(cluster, args.flows)
        for pps in tqdm(args.rates, unit="rate"):
            rows.append(measure(cluster, Path(workdir), pps, args.seconds, args.flows))
    print(table(rows))
    if args.json:
        result = {
            "benchmark": "testbed_headroom",
            "date": started.isoformat(timespec="seconds"),
            "machine": machine(),
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "spec": vars(args) | {"json": str(args.json)},
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
