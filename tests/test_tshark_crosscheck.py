"""tshark and the project's reader count the same packets, bytes and conversations in generated traces.

The generator never reuses a 5-tuple (clients take fresh ephemeral ports, portless flows get their own
host pair), so tshark's TCP conversations, which it splits into separate streams when a port pair is
reused after a close, and its UDP conversations coincide with the reader's bidirectional 5-tuple flows
(`read_flows` without an idle timeout).  tshark 4.0 prints conversation bytes in truncated SI units
("12 MB"), so its tables are compared in that unit and exact per-conversation bytes come from a
per-packet field dump keyed by tcp.stream / udp.stream.
"""

from __future__ import annotations

import collections
import ipaddress
import re
import shutil
import subprocess

import numpy as np
import pytest

from trace_replay.flows import read_flows, trace_info
from trace_replay.generate import PROTO_TCP, PROTO_UDP, generate_pcap, sample_path

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

_CONVERSATION = re.compile(  # A <-> B, frames and bytes B to A, A to B, then in total
    r"^(?P<a>\S+)\s+<->\s+(?P<b>\S+)\s+\d+\s+\d+ \w+\s+\d+\s+\d+ \w+\s+"
    r"(?P<frames>\d+)\s+(?P<bytes>\d+ \w+)\s")
_IO_TOTAL = re.compile(r"^\|\s*[\d.]+\s*<>\s*[\d.]+\s*\|\s*(?P<frames>\d+)\s*\|\s*(?P<bytes>\d+)\s*\|$")
_TABLES = {"TCP Conversations": "tcp", "UDP Conversations": "udp", "IPv4 Conversations": "ip"}


def _tshark(path, *args: str) -> str:
    return subprocess.run([TSHARK, "-n", "-r", str(path), *args], capture_output=True, text=True,
                          check=True).stdout


def _tshark_size(count: int) -> str:
    """How tshark 4.0 prints a byte count: the largest SI unit that leaves at least 10, rounded down."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 10_000:
            return f"{count} {unit}"
        count //= 1000
    return f"{count} TB"


def _address(value: int) -> str:
    return str(ipaddress.IPv4Address(int(value)))


@pytest.fixture(scope="module", params=["generated-30s", "shipped-sample"])
def trace(request, tmp_path_factory):
    if request.param == "shipped-sample":
        return sample_path()
    path = tmp_path_factory.mktemp("tshark") / "generated.pcap"
    generate_pcap(path, seconds=30, seed=3)
    return path


@pytest.fixture(scope="module")
def tshark_stats(trace) -> tuple[tuple[int, int], dict[str, dict[frozenset, tuple[int, str]]]]:
    """(frames, bytes) of the whole trace and, per table, {endpoint pair: (frames, printed bytes)}."""
    text = _tshark(trace, "-q", "-z", "io,stat,0", "-z", "conv,tcp", "-z", "conv,udp", "-z", "conv,ip")
    totals, tables, table = None, {name: {} for name in _TABLES.values()}, None
    for line in text.splitlines():
        if line.strip() in _TABLES:
            table = tables[_TABLES[line.strip()]]
        elif (io := _IO_TOTAL.match(line)) is not None:
            totals = int(io["frames"]), int(io["bytes"])
        elif table is not None and (conversation := _CONVERSATION.match(line)) is not None:
            pair = frozenset((conversation["a"], conversation["b"]))
            assert pair not in table, f"tshark split conversation {sorted(pair)}"
            table[pair] = int(conversation["frames"]), conversation["bytes"]
    assert totals is not None, text
    return totals, tables


@pytest.fixture(scope="module")
def tshark_streams(trace) -> dict[str, dict[frozenset, list[int]]]:
    """Exact [frames, bytes] per TCP and UDP stream, keyed by endpoint pair, from a per-packet dump."""
    fields = ["frame.len", "ip.src", "ip.dst", "tcp.stream", "tcp.srcport", "tcp.dstport",
              "udp.stream", "udp.srcport", "udp.dstport"]
    text = _tshark(trace, "-T", "fields", *[arg for field in fields for arg in ("-e", field)])
    streams = {"tcp": collections.defaultdict(lambda: [0, 0]), "udp": collections.defaultdict(lambda: [0, 0])}
    stream_of = {"tcp": {}, "udp": {}}
    for line in text.splitlines():
        length, src, dst, *transport = line.split("\t")
        for proto, (stream, sport, dport) in zip(("tcp", "udp"), (transport[:3], transport[3:]), strict=True):
            if stream:
                pair = frozenset((f"{src}:{sport}", f"{dst}:{dport}"))
                assert stream_of[proto].setdefault(pair, stream) == stream, f"{proto} stream split for {pair}"
                streams[proto][pair][0] += 1
                streams[proto][pair][1] += int(length)
    return streams


@pytest.fixture(scope="module")
def reader_flows(trace) -> dict[str, dict[frozenset, tuple[int, int]]]:
    """The reader's (packets, bytes) per TCP flow, per UDP flow and per address pair over all flows."""
    records = read_flows(trace).records
    flows = {"tcp": {}, "udp": {}, "ip": collections.defaultdict(lambda: (0, 0))}
    for flow in records:
        src, dst = _address(flow["src_ip"]), _address(flow["dst_ip"])
        packets, size = int(flow["packets"]), int(flow["bytes"])
        for proto, name in ((PROTO_TCP, "tcp"), (PROTO_UDP, "udp")):
            if flow["proto"] == proto:
                ends = frozenset((f"{src}:{flow['src_port']}", f"{dst}:{flow['dst_port']}"))
                flows[name][ends] = packets, size
        pair = frozenset((src, dst))
        flows["ip"][pair] = (flows["ip"][pair][0] + packets, flows["ip"][pair][1] + size)
    return flows


def test_total_packets_and_bytes_agree(trace, tshark_stats):
    info = trace_info(trace)
    assert tshark_stats[0] == (info["packets"], info["bytes"])
    assert info["packets"] == info["ip_packets"]


@pytest.mark.parametrize("table", ["tcp", "udp", "ip"])
def test_conversation_tables_agree(table, tshark_stats, reader_flows):
    ours = {pair: (packets, _tshark_size(size)) for pair, (packets, size) in reader_flows[table].items()}
    theirs = tshark_stats[1][table]
    assert len(theirs) == len(ours) > 0
    assert theirs == ours


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_exact_stream_bytes_agree(proto, tshark_streams, reader_flows):
    theirs = {pair: tuple(counts) for pair, counts in tshark_streams[proto].items()}
    assert theirs == reader_flows[proto]


def test_both_traces_are_big_enough_to_mean_something(reader_flows):
    assert len(reader_flows["tcp"]) > 1000 and len(reader_flows["udp"]) > 500
    assert np.mean([packets for packets, _ in reader_flows["tcp"].values()]) > 5
