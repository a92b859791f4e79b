"""trace_replay.flows and the dm-trace command: flow grouping, trace statistics, and a cross-check
against a slow per-packet reference built on dpkt."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import sys
import types

import dpkt
import numpy as np
import pytest

import trace_replay.flows as flows_module
from tests.pcap_builder import Frame, ethernet, icmp, ipv4, pcap_bytes, tcp, udp, write_pcap
from trace_replay.cli import main
from trace_replay.flows import FLOW_DTYPE, FlowTable, TraceStats, read_flows, trace_info
from trace_replay.pcap import PcapReader

A, B, C = "10.0.0.1", "131.243.7.8", "10.0.0.3"


def ip_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


NO_IPV6 = (False, bytes(16), bytes(16))  # is_ipv6, src_ip6, dst_ip6 of an IPv4 flow


def flow(src, dst, sport, dport, proto, first_ts, last_ts, packets, nbytes) -> tuple:
    return (ip_int(src), ip_int(dst), sport, dport, proto, first_ts, last_ts, packets, nbytes, *NO_IPV6)


def conversation() -> list[Frame]:
    """Two TCP connections, a ping exchange, a GRE tunnel, a DNS query, and traffic not grouped."""
    return [
        Frame(10.0, ethernet(tcp(B, 80, A, 40000))),  # the server speaks first: B is this flow's source
        Frame(10.5, ethernet(tcp(A, 40000, B, 80, payload_len=1000))),
        Frame(11.0, ethernet(icmp(A, C))),
        Frame(11.2, ethernet(icmp(C, A))),
        Frame(12.0, ethernet(ipv4(A, C, dpkt.ip.IP_PROTO_GRE, bytes(100)))),
        Frame(12.5, ethernet(tcp(A, 40001, B, 80), vlan=3)),
        Frame(13.0, ethernet(tcp(B, 80, A, 40000, payload_len=200))),
        Frame(13.5, ethernet(udp(A, 5353, C, 53, payload_len=40))),
        Frame(14.0, ethernet(bytes(40), ethertype=dpkt.ethernet.ETH_TYPE_IP6)),  # no IPv6 header: malformed
        Frame(14.5, ethernet(bytes(28), ethertype=dpkt.ethernet.ETH_TYPE_ARP)),
    ]


def test_both_directions_form_one_flow_whose_source_spoke_first(tmp_path):
    table = read_flows(write_pcap(tmp_path / "conv.pcap", conversation()))

    assert isinstance(table, FlowTable) and table.records.dtype == FLOW_DTYPE
    assert table.records.tolist() == [
        flow(B, A, 80, 40000, 6, 10.0, 13.0, 3, 54 + 1054 + 254),
        flow(A, C, 0, 0, 1, 11.0, 11.2, 2, 98 + 98),
        flow(A, C, 0, 0, 47, 12.0, 12.0, 1, 134),
        flow(A, B, 40001, 80, 6, 12.5, 12.5, 1, 58),
        flow(A, C, 5353, 53, 17, 13.5, 13.5, 1, 82),
    ]
    assert len(table) == 5
    assert table.source == "conv.pcap"


def test_trace_statistics(tmp_path):
    table = read_flows(write_pcap(tmp_path / "conv.pcap", conversation()))
    assert table.stats == TraceStats(
        packets=10,
        ip_packets=8,
        bytes=int(table.records["bytes"].sum()),
        duration_s=4.5,
        protocols={"tcp": 4, "icmp": 2, "gre": 1, "ipv6-malformed": 1, "non-ip": 1, "udp": 1},
        torn_records=0,
        link_type=1,
        snaplen=68,
    )
    assert table.stats.bytes == 54 + 1054 + 254 + 196 + 134 + 58 + 82


def test_uncommon_protocols_are_named_by_number(tmp_path):
    frames = [
        Frame(1.0, ethernet(ipv4(A, B, 253, bytes(10)))),
        Frame(2.0, ethernet(ipv4(A, B, 50, bytes(10)))),
    ]
    assert read_flows(write_pcap(tmp_path / "p.pcap", frames)).stats.protocols == {
        "esp": 1,
        "ip-proto-253": 1,
    }


def test_same_addresses_and_ports_but_another_protocol_is_another_flow(tmp_path):
    frames = [Frame(1.0, ethernet(tcp(A, 53, B, 53))), Frame(2.0, ethernet(udp(B, 53, A, 53)))]
    records = read_flows(write_pcap(tmp_path / "p.pcap", frames)).records
    assert records[["src_ip", "proto", "packets"]].tolist() == [(ip_int(A), 6, 1), (ip_int(B), 17, 1)]


def ping_train(times: list[float]) -> list[Frame]:
    return [Frame(t, ethernet(icmp(A, B) if i % 2 == 0 else icmp(B, A))) for i, t in enumerate(times)]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "batch_bytes", [100, 1 << 20]
)  # 100: one record a batch, so every merge is across batches
def test_idle_timeout_splits_at_gaps_longer_than_it(tmp_path, monkeypatch, compress, batch_bytes):
    path = write_pcap(tmp_path / "ping.pcap", ping_train([0.0, 1.0, 3.0, 8.0, 8.5, 20.0]), compress=compress)
    monkeypatch.setattr(flows_module, "PcapReader", functools.partial(PcapReader, batch_bytes=batch_bytes))

    whole = read_flows(path).records
    split = read_flows(path, idle_timeout=2.0).records

    assert whole[["first_ts", "last_ts", "packets"]].tolist() == [(0.0, 20.0, 6)]
    assert split[["src_ip", "first_ts", "last_ts", "packets", "bytes"]].tolist() == [
        (ip_int(A), 0.0, 3.0, 3, 3 * 98),  # the gap of exactly 2 s does not split
        (ip_int(B), 8.0, 8.5, 2, 2 * 98),  # the later part's first packet came from B
        (ip_int(B), 20.0, 20.0, 1, 98),
    ]


@pytest.mark.parametrize("batch_bytes", [60, 200, 1 << 20])
def test_flows_do_not_depend_on_batch_boundaries(tmp_path, monkeypatch, batch_bytes):
    path = write_pcap(tmp_path / "random.pcap", random_frames(np.random.default_rng(3), 800))
    expected = read_flows(path, idle_timeout=0.5)
    monkeypatch.setattr(flows_module, "PcapReader", functools.partial(PcapReader, batch_bytes=batch_bytes))
    actual = read_flows(path, idle_timeout=0.5)
    np.testing.assert_array_equal(actual.records, expected.records)
    assert actual.stats == expected.stats


def test_read_flows_rejects_a_meaningless_timeout(tmp_path):
    path = write_pcap(tmp_path / "ping.pcap", ping_train([0.0]))
    for timeout in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="idle_timeout"):
            read_flows(path, idle_timeout=timeout)


def test_trace_info(tmp_path):
    info = trace_info(write_pcap(tmp_path / "conv.pcap", conversation()))
    assert info == {
        "packets": 10,
        "ip_packets": 8,
        "flows": 5,
        "bytes": 1832,
        "duration_s": 4.5,
        "protocols": {"tcp": 4, "icmp": 2, "gre": 1, "ipv6-malformed": 1, "non-ip": 1, "udp": 1},
    }


def test_empty_trace(tmp_path):
    table = read_flows(write_pcap(tmp_path / "empty.pcap", []))
    assert len(table) == 0 and table.records.dtype == FLOW_DTYPE
    assert (table.stats.packets, table.stats.duration_s, table.stats.protocols) == (0, 0.0, {})


# --- cross-check against an independent, per-packet implementation ---------------------------------


def random_frames(rng: np.random.Generator, count: int) -> list[Frame]:
    """Few hosts and ports, so keys repeat in both directions; gaps of up to a second, so a sub-second
    idle timeout splits flows; VLAN tags, fragments, IP options and non-IPv4 frames mixed in."""
    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "131.243.1.1", "131.243.1.2"]
    ports = [53, 80, 443, 1025, 40000]
    frames, ts = [], 1_100_000_000.0
    for _ in range(count):
        ts += float(rng.choice([0.0, 0.001, 0.1, 0.7, 1.0]))
        src, dst = (str(h) for h in rng.choice(hosts, 2, replace=False))
        sport, dport = (int(p) for p in rng.choice(ports, 2))
        kind = int(rng.integers(0, 9))
        payload_len = int(rng.integers(0, 1400))
        if kind <= 2:
            options = bytes(4 * int(rng.integers(0, 3))) if kind == 2 else b""
            packet = tcp(src, sport, dst, dport, payload_len, options=options)
        elif kind <= 4:
            packet = udp(src, sport, dst, dport, payload_len)
        elif kind == 5:
            packet = icmp(src, dst, payload_len)
        elif kind == 6:
            packet = ipv4(
                src, dst, int(rng.choice([6, 17, 47])), bytes(payload_len + 8), fragment_offset=1480
            )
        elif kind == 7:
            packet = ipv4(src, dst, dpkt.ip.IP_PROTO_GRE, bytes(payload_len + 4))
        else:
            frames.append(Frame(ts, ethernet(bytes(40 + payload_len), ethertype=dpkt.ethernet.ETH_TYPE_IP6)))
            continue
        frames.append(
            Frame(ts, ethernet(packet, vlan=int(rng.integers(1, 4095)) if rng.random() < 0.2 else None))
        )
    return frames


def reference_flows(path, idle_timeout=None) -> list[tuple]:
    """Flows computed one packet at a time with dpkt and a dict, in the same order as read_flows."""
    with open(path, "rb") as file:
        dpkt.pcap.LEFileHdr(file.read(24))
        live, done, index = {}, [], 0
        while header_bytes := file.read(16):
            header = dpkt.pcap.LEPktHdr(header_bytes)
            frame = dpkt.ethernet.Ethernet(file.read(header.caplen))
            ts = header.tv_sec + header.tv_usec / 1e6
            packet = frame.data
            if not isinstance(packet, dpkt.ip.IP):
                continue
            segment = packet.data
            if packet.offset == 0 and isinstance(segment, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                source, destination = (
                    (int.from_bytes(packet.src), segment.sport),
                    (int.from_bytes(packet.dst), segment.dport),
                )
            else:
                source, destination = (int.from_bytes(packet.src), 0), (int.from_bytes(packet.dst), 0)
            key = (min(source, destination), max(source, destination), packet.p)
            current = live.get(key)
            if current is not None and idle_timeout is not None and ts - current["last_ts"] > idle_timeout:
                done.append(live.pop(key))
                current = None
            if current is None:
                current = live[key] = {
                    "flow": (*source, *destination),
                    "proto": packet.p,
                    "first_ts": ts,
                    "last_ts": ts,
                    "packets": 0,
                    "bytes": 0,
                    "index": index,
                }
            current["last_ts"] = max(current["last_ts"], ts)
            current["packets"] += 1
            current["bytes"] += header.len
            index += 1
    flows = sorted([*done, *live.values()], key=lambda f: (f["first_ts"], f["index"]))
    return [
        (
            f["flow"][0],
            f["flow"][2],
            f["flow"][1],
            f["flow"][3],
            f["proto"],
            f["first_ts"],
            f["last_ts"],
            f["packets"],
            f["bytes"],
            *NO_IPV6,
        )
        for f in flows
    ]


@pytest.mark.parametrize("idle_timeout", [None, 0.5, 5.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_matches_a_per_packet_reference(tmp_path, seed, idle_timeout):
    path = write_pcap(tmp_path / "random.pcap", random_frames(np.random.default_rng(seed), 2000))
    assert read_flows(path, idle_timeout=idle_timeout).records.tolist() == reference_flows(path, idle_timeout)


def test_hash_collisions_do_not_change_the_result(tmp_path, monkeypatch):
    """With a hash that maps every key alike, grouping must fall back to its exact sort and the live
    flow index to long probe chains; the flows must not change."""
    path = write_pcap(tmp_path / "random.pcap", random_frames(np.random.default_rng(4), 1000))
    expected = read_flows(path, idle_timeout=0.5).records
    monkeypatch.setattr(flows_module, "_mix", lambda key_lo, key_hi: np.zeros_like(key_lo))
    np.testing.assert_array_equal(read_flows(path, idle_timeout=0.5).records, expected)


def test_pair_index_behaves_like_a_dict():
    rng = np.random.default_rng(5)
    index, reference = flows_module.PairIndex(capacity_bits=4), {}
    for _ in range(200):
        fresh = {
            (int(a), int(b)) for a, b in rng.integers(0, 50, (int(rng.integers(1, 40)), 2))
        } - reference.keys()
        if fresh:
            keys = np.array(sorted(fresh), np.uint64)
            values = rng.integers(0, 10**9, len(keys))
            index.add(keys[:, 0], keys[:, 1], values)
            reference.update(zip(map(tuple, keys.tolist()), values.tolist(), strict=True))
        if reference and rng.random() < 0.5:
            gone = [key for key in reference if rng.random() < 0.3]
            if gone:
                index.discard(*np.array(gone, np.uint64).T)
                for key in gone:
                    del reference[key]
        probe = rng.integers(0, 50, (100, 2)).astype(np.uint64)
        expected = [reference.get((int(a), int(b)), -1) for a, b in probe]
        assert index.get(probe[:, 0], probe[:, 1]).tolist() == expected


# --- dm-trace ------------------------------------------------------------------------------------


def test_cli_info_json(tmp_path, capsys):
    path = write_pcap(tmp_path / "conv.pcap", conversation())
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == trace_info(path)


def test_cli_info_idle_timeout_and_table(tmp_path, capsys):
    path = write_pcap(tmp_path / "ping.pcap", ping_train([0.0, 1.0, 3.0, 8.0, 8.5, 20.0]))
    assert main(["info", str(path), "--json", "--idle-timeout", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["flows"] == 3
    assert main(["info", str(path)]) == 0
    table = capsys.readouterr().out
    assert "ping.pcap" in table and "flows" in table and "icmp" in table and "20.000 s" in table


@pytest.mark.parametrize("content", [None, b"not a capture, just text"])
def test_cli_errors_are_one_line_and_exit_code_2(tmp_path, capsys, content):
    path = tmp_path / "trace.pcap"
    if content is not None:
        path.write_bytes(content)
    assert main(["info", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dm-trace: ") and captured.err.count("\n") == 1
    assert str(path) in captured.err
    assert "Traceback" not in captured.err


def test_cli_reports_a_torn_record_as_a_one_line_warning(tmp_path, capsys):
    data = pcap_bytes(conversation())
    last_record = len(data) - (16 + 42)  # the ARP frame closes the trace
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-10])
    assert main(["info", str(path)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"^torn records +1$", captured.out, re.MULTILINE)
    assert captured.err == (
        f"dm-trace: warning: {path}: byte {last_record}: "
        "the last record is cut short (48 of 58 bytes); skipped it\n"
    )


def test_cli_generate_calls_the_generator(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("trace_replay.generate")
    fake.generate_pcap = lambda out_path, *, seconds, seed: calls.append((out_path, seconds, seed))
    monkeypatch.setitem(sys.modules, "trace_replay.generate", fake)
    assert main(["generate", "--out", str(tmp_path / "g.pcap"), "--seconds", "30", "--seed", "7"]) == 0
    assert calls == [(tmp_path / "g.pcap", 30.0, 7)]
