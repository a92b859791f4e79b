"""The testbed's data plane on real Mininet and userspace Open vSwitch, with static rules (ovs-ofctl)
standing in for the controller: replayed flows reach the sink through their NF, a by-hand OpenNF-style
migration loses and reorders nothing, and an overloaded NF is the only place packets are lost."""

import json
import subprocess
import time

import pytest

from mininet_topos.nf_cluster import SINK_PORT, SOURCE_PORT, ClusterSpec, nf_cluster
from mininet_topos.testbed import free_tcp_port, ryu_controller
from tests import pcap_builder
from trace_replay.live import flow_outcomes, load_schedule

pytestmark = [
    pytest.mark.network,
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("ovs"),
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]

FLOW_PPS = 40  # per connection, both directions together
SECONDS = 6.0
QUIET_MS = 100  # well above the flows' 25 ms packet gap


@pytest.fixture
def trace(tmp_path):
    """Six connections (four TCP, two UDP) at FLOW_PPS each, their packets alternating direction."""
    endpoints = [("tcp", "10.9.0.1", 1000 + n, "192.168.5.5", 80) for n in range(4)]
    endpoints += [("udp", "10.9.0.2", 5000 + n, "192.168.5.53", 53) for n in range(2)]
    frames = []
    for flow, (kind, client, client_port, server, server_port) in enumerate(endpoints):
        build = getattr(pcap_builder, kind)
        for n in range(int(SECONDS * FLOW_PPS)):
            if n % 2:
                packet = build(server, server_port, client, client_port, 600)
            else:
                packet = build(client, client_port, server, server_port, 200)
            frames.append(
                pcap_builder.Frame(1000.0 + flow / 97 + n / FLOW_PPS, pcap_builder.ethernet(packet))
            )
    frames.sort(key=lambda frame: frame.ts)
    return pcap_builder.write_pcap(tmp_path / "trace.pcap", frames, snaplen=1600)


@pytest.fixture
def controller_port():
    """A stock Ryu with no app of ours: it completes the OpenFlow handshake and installs nothing."""
    port = free_tcp_port()
    with ryu_controller(["ryu.controller.ofp_handler"], port=port):
        yield port


def ofctl(switch: str, command: str, *args: str, bundle: bool = False) -> str:
    """Run ovs-ofctl on the switch. It sends a barrier after flow mods and waits for its reply, so the
    rules are in place when this returns; with `bundle`, all flow mods (one per line of args[0]) go
    in one atomic OpenFlow bundle (OVS supports ONF's bundle extension on OpenFlow 1.3)."""
    options = ["-O", "OpenFlow13", *(["--bundle", "--strict"] if bundle else [])]
    command_args = ["-"] if bundle else list(args)
    result = subprocess.run(
        ["ovs-ofctl", *options, command, switch, *command_args],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
        input=args[0] if bundle else None,
    )
    assert result.returncode == 0, f"ovs-ofctl {command} {args}: {result.stderr}"
    return result.stdout


def flow_matches(key) -> list[str]:
    """OpenFlow matches of both directions of a flow coming from the source (ports for TCP/UDP only)."""
    ip_a, ip_b, port_a, port_b, proto = key
    protocol = {6: "tcp", 17: "udp"}.get(proto)
    result = []
    for src, dst, src_port, dst_port in ((ip_a, ip_b, port_a, port_b), (ip_b, ip_a, port_b, port_a)):
        match = f"priority=100,in_port={SOURCE_PORT},{protocol or f'ip,nw_proto={proto}'},nw_src={src},nw_dst={dst}"
        if protocol:
            match += f",tp_src={src_port},tp_dst={dst_port}"
        result.append(match)
    return result


def steer(cluster, key, nf: str, *, move: bool = False) -> None:
    """Send both directions of the flow to `nf`. A move changes both rules in one bundle: with two
    separate flow mods, the reverse direction still reaches the old instance for a moment after the
    forward one goes to the new, and the flow's packets leave out of order."""
    rules = [f"{match},actions=output:{cluster.nfs[nf]['port']}" for match in flow_matches(key)]
    if move:
        ofctl(cluster.switch, "mod-flows", "\n".join(rules), bundle=True)
    else:
        for rule in rules:
            ofctl(cluster.switch, "add-flow", rule)


def install_static_rules(cluster, placement: dict) -> None:
    """Each flow to its NF, every NF's output to the sink."""
    for key, nf in placement.items():
        steer(cluster, key, nf)
    for nf in cluster.nfs.values():
        ofctl(cluster.switch, "add-flow", f"priority=1,in_port={nf['port']},actions=output:{SINK_PORT}")


def migrate(cluster, key, source: str, destination: str) -> None:
    """OpenNF's loss-free, order-preserving move, done by hand: hold at the destination, switch the
    rules, drain and export at the source, import and release at the destination."""
    src, dst = cluster.clients[source], cluster.clients[destination]
    dst.hold(key)
    steer(cluster, key, destination, move=True)
    state = src.export(key, quiet_ms=QUIET_MS)
    dst.import_(key, state)
    dst.release(key)


def finish_replay(cluster, replay, sent_log) -> dict:
    assert replay.wait(timeout=SECONDS + 20) == 0, (cluster.workdir / "replay.log").read_text()
    time.sleep(0.5)  # the NFs' queues and output lines drain
    return flow_outcomes(json.loads(sent_log.read_text()), cluster.sink_counts())


def reports(cluster) -> dict:
    return {name: client.report() for name, client in cluster.clients.items()}


def test_migrations_mid_replay_lose_and_reorder_nothing(trace, controller_port, tmp_path):
    flows = load_schedule(trace).flows
    placement = {key: ("nf1" if index < 3 else "nf2") for index, key in enumerate(flows)}
    moves = [(flows[0], "nf1", "nf2"), (flows[1], "nf1", "nf3"), (flows[4], "nf2", "nf3")]
    spec = ClusterSpec(active=2, standby=1, capacity_pps=300, buffer_packets=100, processing_ms=20)
    with nf_cluster(spec, controller_port=controller_port, workdir=tmp_path / "cluster") as cluster:
        description = json.loads(cluster.description_path.read_text())
        assert [host["role"] for host in description["hosts"]] == ["source", "sink", "nf", "nf", "nf"]
        assert [nf["active"] for nf in cluster.nfs.values()] == [True, True, False]
        install_static_rules(cluster, placement)
        sent_log = tmp_path / "sent.json"
        replay = cluster.start_replay(trace, sent_log)
        time.sleep(SECONDS / 3)
        cluster.clients["nf3"].activate()  # scale-out: the standby takes flows from now on
        for key, source, destination in moves:
            migrate(cluster, key, source, destination)
        outcomes = finish_replay(cluster, replay, sent_log)
        after = reports(cluster)

    sent_per_flow = int(SECONDS * FLOW_PPS)
    assert outcomes["sent"] == len(flows) * sent_per_flow
    assert (outcomes["lost"], outcomes["reordered"]) == (0, 0), json.dumps(outcomes["flows"])
    assert sum(report["dropped"] for report in after.values()) == 0
    # Every packet's one-way delay was measured: at least the NF's latency, and a held flow's far less than the run.
    for flow in outcomes["flows"].values():
        assert sum(packets for _, packets, _ in flow["delay_bins"]) == flow["received"]
        assert all(spec.processing_ms <= mean_ms < 1000 * SECONDS for _, _, mean_ms in flow["delay_bins"])
    # The flows' state moved with them: their new instance counts every packet they ever sent.
    for key, _source, destination in moves:
        [state] = [flow for flow in after[destination]["flows"] if tuple(flow["key"]) == key]
        assert state["packets"] == sent_per_flow
        assert all(
            tuple(flow["key"]) != key
            for name, report in after.items()
            if name != destination
            for flow in report["flows"]
        )
    assert after["nf3"]["processed"] > 0


def test_an_overloaded_nf_is_the_only_place_packets_are_lost(trace, controller_port, tmp_path):
    flows = load_schedule(trace).flows
    placement = {key: ("nf1" if index < 5 else "nf2") for index, key in enumerate(flows)}  # nf1: 200 pps
    spec = ClusterSpec(active=2, standby=0, capacity_pps=120, buffer_packets=30, processing_ms=20)
    with nf_cluster(spec, controller_port=controller_port, workdir=tmp_path / "cluster") as cluster:
        install_static_rules(cluster, placement)
        sent_log = tmp_path / "sent.json"
        outcomes = finish_replay(cluster, cluster.start_replay(trace, sent_log), sent_log)
        after = reports(cluster)

    overload = (len(flows) - 1) * FLOW_PPS - spec.capacity_pps  # packets/s beyond nf1's capacity
    assert after["nf1"]["dropped"] == pytest.approx(overload * SECONDS - spec.buffer_packets, rel=0.15)
    assert outcomes["lost"] == after["nf1"]["dropped"]  # nowhere else
    assert after["nf2"]["dropped"] == 0
    assert outcomes["flows"]["5"]["lost"] == 0
    assert outcomes["reordered"] == 0
