"""The LBNL-like trace generator: determinism, frame validity, and the statistics docs/traces.md promises."""

from __future__ import annotations

import collections
import gzip
import pathlib
import shlex
import struct

import dpkt
import numpy as np
import pytest

from trace_replay import cli
from trace_replay.flows import FlowTable, read_flows
from trace_replay.generate import (
    APP_CLASSES,
    DEFAULT_FLOWS_PER_SECOND,
    INTERNAL_NET,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    SAMPLE_COMMAND,
    SAMPLE_SECONDS,
    SAMPLE_SEED,
    SNAPLEN,
    GenerationSummary,
    generate_pcap,
    sample_path,
)

SHORT_SECONDS = 30
STATS_SECONDS = 600

Record = collections.namedtuple("Record", "ts caplen wire_len frame")


def _read_records(path: pathlib.Path) -> tuple[bytes, list[Record]]:
    """The global header and every record, read without a pcap library so that lengths are checked too."""
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    records, offset = [], 24
    while offset < len(data):
        sec, usec, caplen, wire_len = struct.unpack_from("<IIII", data, offset)
        offset += 16
        records.append(Record(sec * 1_000_000 + usec, caplen, wire_len, data[offset:offset + caplen]))
        offset += caplen
    assert offset == len(data), "the last record runs past the end of the file"
    return data[:24], records


def _internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _flow_key(ip: dpkt.ip.IP) -> tuple:
    ports = (ip.data.sport, ip.data.dport) if ip.p in (PROTO_TCP, PROTO_UDP) else (0, 0)
    ends = sorted([(ip.src, ports[0]), (ip.dst, ports[1])])
    return (ip.p, *ends)


def _is_internal(addresses: np.ndarray) -> np.ndarray:
    return (addresses & int(INTERNAL_NET.netmask)) == int(INTERNAL_NET.network_address)


@pytest.fixture(scope="module")
def short_trace(tmp_path_factory) -> tuple[GenerationSummary, bytes, list[Record]]:
    path = tmp_path_factory.mktemp("short") / "short.pcap"
    summary = generate_pcap(path, seconds=SHORT_SECONDS, seed=1)
    return (summary, *_read_records(path))


@pytest.fixture(scope="module")
def packets_by_flow(short_trace) -> dict[tuple, list[tuple[Record, dpkt.ip.IP]]]:
    flows = collections.defaultdict(list)
    for record in short_trace[2]:
        ip = dpkt.ethernet.Ethernet(record.frame).data
        flows[_flow_key(ip)].append((record, ip))
    return flows


@pytest.fixture(scope="module")
def long_trace(tmp_path_factory) -> FlowTable:
    path = tmp_path_factory.mktemp("long") / "long.pcap.gz"
    generate_pcap(path, seconds=STATS_SECONDS, seed=5)
    return read_flows(path)


# --- determinism ------------------------------------------------------------------------------------


def test_same_seed_gives_identical_gzip_bytes_and_other_seeds_differ(tmp_path):
    first, again, other = (tmp_path / name for name in ("a.pcap.gz", "b.pcap.gz", "c.pcap.gz"))
    assert generate_pcap(first, seconds=10, seed=1) == generate_pcap(again, seconds=10, seed=1)
    generate_pcap(other, seconds=10, seed=2)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert first.read_bytes()[4:8] == b"\0\0\0\0", "gzip header must carry mtime 0"


def test_a_shorter_trace_is_a_prefix_of_a_longer_one(tmp_path):
    generate_pcap(tmp_path / "short.pcap", seconds=7.5, seed=3)
    generate_pcap(tmp_path / "long.pcap", seconds=15, seed=3)
    short, long = (tmp_path / "short.pcap").read_bytes(), (tmp_path / "long.pcap").read_bytes()
    assert len(short) < len(long) and long.startswith(short)


def test_rejects_non_positive_arguments(tmp_path):
    with pytest.raises(ValueError, match="seconds"):
        generate_pcap(tmp_path / "x.pcap", seconds=0, seed=1)
    with pytest.raises(ValueError, match="flows_per_second"):
        generate_pcap(tmp_path / "x.pcap", seconds=1, seed=1, flows_per_second=0)


# --- file format ------------------------------------------------------------------------------------


def test_global_header_is_classic_microsecond_ethernet_with_snaplen_68(short_trace):
    magic, major, minor, _, _, snaplen, link_type = struct.unpack("<IHHiIII", short_trace[1])
    assert (magic, major, minor, snaplen, link_type) == (0xA1B2C3D4, 2, 4, SNAPLEN, 1)


def test_summary_describes_the_file(short_trace):
    summary, _, records = short_trace
    assert summary.packets == len(records)
    assert summary.bytes == sum(record.wire_len for record in records)
    assert summary.duration == pytest.approx((records[-1].ts - records[0].ts) / 1e6, abs=1e-6)
    assert 0 < summary.duration <= SHORT_SECONDS


def test_timestamps_never_decrease(short_trace):
    timestamps = np.array([record.ts for record in short_trace[2]])
    assert np.all(np.diff(timestamps) >= 0)


def test_every_record_is_the_header_only_prefix_of_a_valid_ethernet_ipv4_frame(short_trace):
    for record in short_trace[2]:
        assert record.caplen == min(record.wire_len, SNAPLEN) == len(record.frame)
        assert 60 <= record.wire_len <= 1514
        eth = dpkt.ethernet.Ethernet(record.frame)
        assert eth.type == dpkt.ethernet.ETH_TYPE_IP
        ip = eth.data
        assert (ip.v, ip.hl, ip.mf, ip.offset) == (4, 5, 0, 0)
        assert record.wire_len == max(14 + ip.len, 60)
        assert _internet_checksum(record.frame[14:34]) == 0xFFFF, "IPv4 header checksum"


def test_transport_checksums_hold_for_the_zero_payload_the_capture_cut_off(short_trace):
    """Payload beyond the snap length is taken to be zeros; checksums must be right for that frame."""
    for record in short_trace[2]:
        ip = dpkt.ethernet.Ethernet(record.frame).data
        segment = record.frame[34:14 + ip.len].ljust(ip.len - 20, b"\0")
        if ip.p in (PROTO_TCP, PROTO_UDP):
            pseudo = ip.src + ip.dst + struct.pack("!HH", ip.p, len(segment))
            assert _internet_checksum(pseudo + segment) == 0xFFFF
        elif ip.p == PROTO_ICMP:
            assert _internet_checksum(segment) == 0xFFFF


# --- connections ------------------------------------------------------------------------------------


def test_tcp_connections_open_with_a_handshake_and_run_both_ways(packets_by_flow):
    opened = 0
    for key, packets in packets_by_flow.items():
        if key[0] != PROTO_TCP or packets[0][1].data.flags != dpkt.tcp.TH_SYN:
            continue  # the capture began after this connection's SYN
        opened += 1
        syn, reply = packets[0][1], packets[1][1] if len(packets) > 1 else None
        if reply is None:
            continue  # the capture ended right after the SYN
        assert (reply.src, reply.data.sport) == (syn.dst, syn.data.dport)
        assert reply.data.flags in (dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK)
        assert reply.data.ack == syn.data.seq + 1
        syns = sum(ip.data.flags & dpkt.tcp.TH_SYN != 0 for _, ip in packets)
        assert syns <= 2, "one handshake per 5-tuple"
    assert opened > 200


def test_tcp_flows_mix_pure_acks_with_full_segments_and_close_from_both_ends(packets_by_flow):
    tcp = [packets for key, packets in packets_by_flow.items() if key[0] == PROTO_TCP]
    wire = np.array([record.wire_len for packets in tcp for record, _ in packets])
    assert np.mean(wire == 60) > 0.25 and np.mean(wire == 1514) > 0.2
    both_ways = [len({ip.src for _, ip in packets}) == 2 for packets in tcp if len(packets) >= 4]
    assert np.mean(both_ways) == 1.0
    fin_senders = [{ip.src for _, ip in packets if ip.data.flags & dpkt.tcp.TH_FIN} for packets in tcp]
    closing = [senders for senders in fin_senders if senders]
    assert len(closing) > 100
    both_closed = np.mean([len(senders) == 2 for senders in closing])
    assert both_closed > 0.95, "only the end of the capture may cut a close short"


def test_client_endpoints_are_never_reused(packets_by_flow):
    """A 5-tuple belongs to one connection only, so every reader and tshark see the same flows."""
    clients = collections.Counter()
    for key, packets in packets_by_flow.items():
        if key[0] in (PROTO_TCP, PROTO_UDP):
            first = packets[0][1]
            high = max((first.src, first.data.sport), (first.dst, first.data.dport), key=lambda end: end[1])
            clients[(key[0], *high)] += 1
    assert clients and max(clients.values()) == 1


def test_packets_of_long_flows_come_in_bursts(packets_by_flow):
    """Inter-packet gaps vary more than a Poisson stream's (coefficient of variation above 1)."""
    variations = []
    for packets in packets_by_flow.values():
        if len(packets) >= 30:
            gaps = np.diff([record.ts for record, _ in packets])
            variations.append(gaps.std() / gaps.mean())
    assert len(variations) >= 15 and np.median(variations) > 1.5


# --- statistics ---------------------------------------------------------------------------------------


def test_flow_rate_matches_the_configured_mean(long_trace):
    assert 0.7 < len(long_trace) / STATS_SECONDS / DEFAULT_FLOWS_PER_SECOND < 1.4


def test_protocol_shares_of_flows_follow_the_application_mix(long_trace):
    shares = {proto: sum(app.flow_share for app in APP_CLASSES if app.proto == proto)
              for proto in (PROTO_TCP, PROTO_UDP, PROTO_ICMP)}
    proto = long_trace.records["proto"]
    for number, share in shares.items():
        assert np.mean(proto == number) == pytest.approx(share, abs=0.04)
    assert 0.003 < np.mean(np.isin(proto, (2, 47, 50))) < 0.012  # IGMP, GRE, ESP


def test_tcp_carries_most_packets_and_bytes(long_trace):
    records = long_trace.records
    tcp = records["proto"] == PROTO_TCP
    assert records["bytes"][tcp].sum() > 0.75 * records["bytes"].sum()
    assert records["packets"][tcp].sum() > 0.75 * records["packets"].sum()


def test_flow_sizes_are_heavy_tailed(long_trace):
    sizes = np.sort(long_trace.records["bytes"].astype(np.float64))[::-1]
    n = len(sizes)
    assert sizes[: n // 10].sum() > 0.80 * sizes.sum()
    assert sizes[: n // 100].sum() > 0.50 * sizes.sum()
    assert np.median(sizes) < 2_000
    tail = sizes[: n // 100 + 1]
    hill_alpha = 1 / np.mean(np.log(tail[:-1] / tail[-1]))
    assert 0.8 < hill_alpha < 1.5


def test_flow_durations_are_heavy_tailed(long_trace):
    durations = long_trace.records["last_ts"] - long_trace.records["first_ts"]
    assert np.percentile(durations, 99) > 20 * np.median(durations)
    assert np.mean(durations > 60) > 0.01


def test_flow_arrivals_are_bursty_at_several_time_scales(long_trace):
    start = long_trace.records["first_ts"] - long_trace.records["first_ts"].min()
    dispersion = []
    for scale_s in (1, 10):
        counts = np.bincount((start // scale_s).astype(np.int64))[:-1]  # the last bin is partial
        dispersion.append(counts.var() / counts.mean())
    assert dispersion[0] > 5, "a Poisson process has dispersion 1"
    assert dispersion[1] > 2 * dispersion[0], "burstiness grows with the time scale"


def test_addresses_are_one_internal_slash16_with_many_subnets_plus_external_peers(long_trace):
    records = long_trace.records
    src_in, dst_in = _is_internal(records["src_ip"]), _is_internal(records["dst_ip"])
    assert np.all(src_in | dst_in), "the monitor sits inside the enterprise"
    assert 0.1 < np.mean(~(src_in & dst_in)) < 0.4
    internal = np.concatenate([records["src_ip"][src_in], records["dst_ip"][dst_in]])
    assert len(np.unique(internal >> 8)) >= 20


# --- the shipped sample -------------------------------------------------------------------------------


def test_sample_is_regenerated_byte_for_byte_by_its_documented_command(tmp_path):
    argv = shlex.split(SAMPLE_COMMAND)
    assert argv[:2] == ["dm-trace", "generate"]
    out = tmp_path / "sample.pcap.gz"
    argv[argv.index("--out") + 1] = str(out)
    assert cli.main(argv[1:]) == 0
    assert out.read_bytes() == sample_path().read_bytes()
    assert f"--seconds {SAMPLE_SECONDS} --seed {SAMPLE_SEED}" in SAMPLE_COMMAND


def test_sample_is_small_and_holds_enough_flows():
    assert sample_path().stat().st_size <= 5_000_000
    assert len(read_flows(sample_path())) >= 10_000
