"""Captures as real networks and tools make them: 802.1ad / QinQ tags, IP fragments, timestamps that go
backwards, gzip with zero padding, pcapng (tcpdump's and Wireshark's default) and IPv6."""

from __future__ import annotations

import gzip
import ipaddress
import shutil
import subprocess
import warnings

import dpkt
import numpy as np
import pytest

from tests.pcap_builder import (
    Frame,
    ethernet,
    fragmented_udp,
    ipv6,
    pcap_bytes,
    pcapng_bytes,
    tagged,
    tcp,
    tcp6,
    udp,
    write_pcap,
)
from trace_replay.episodes import build_episodes
from trace_replay.flows import flow_identities, flow_keys, read_flows
from trace_replay.pcap import (
    L3_IPV4,
    L3_IPV6,
    PACKET_DTYPE,
    PcapError,
    PcapReader,
    TimestampsBackwardsWarning,
)
from trace_replay.scenarios import Sizing
from twin.flow import FiveTuple, FlowKey
from twin.sim import BatchedTwin

A6, B6 = "2001:db8::1", "2001:db8::2:1"


def read_all(path, **options) -> np.ndarray:
    batches = list(PcapReader(path, **options))
    return np.concatenate(batches) if batches else np.empty(0, PACKET_DTYPE)


def error_for(path, **options) -> str:
    with pytest.raises(PcapError) as caught:
        read_all(path, **options)
    return str(caught.value)


# --- 802.1ad / QinQ ------------------------------------------------------------------------------
@pytest.mark.parametrize("tags", [[(0x88A8, 10), (0x8100, 20)], [(0x8100, 10), (0x8100, 20)],
                                  [(0x9100, 10), (0x8100, 20)], [(0x88A8, 10)]])
def test_stacked_vlan_tags_are_parsed_as_ip(tmp_path, tags):
    frames = [Frame(1.0, tagged(tcp("10.0.0.1", 1234, "10.0.0.2", 80), tags))]
    packet = read_all(write_pcap(tmp_path / "qinq.pcap", frames))[0]
    assert (packet["l3"], packet["src_port"], packet["dst_port"], packet["proto"]) == (L3_IPV4, 1234, 80, 6)
    assert packet["dst_ip"] == int(ipaddress.IPv4Address("10.0.0.2"))


# --- IP fragments --------------------------------------------------------------------------------
def fragmented(ts: float, ident: int, src: str = "10.0.0.1", sport: int = 7) -> list[Frame]:
    return [Frame(ts + k * 0.001, ethernet(piece)) for k, piece in enumerate(fragmented_udp(ident, src, sport))]


@pytest.mark.parametrize("batch_bytes", [1 << 20, 100])
def test_later_fragments_belong_to_the_flow_of_their_first(tmp_path, batch_bytes):
    frames = fragmented(1.0, 41) + [Frame(1.5, ethernet(udp("10.0.0.1", 7, "10.0.0.2", 9, 10)))]
    path = write_pcap(tmp_path / "frag.pcap", frames)
    packets = read_all(path, batch_bytes=batch_bytes)
    assert packets[["src_port", "dst_port"]].tolist() == [(7, 9)] * 4
    table = read_flows(path)
    assert table.records[["src_port", "dst_port", "packets"]].tolist() == [(7, 9, 4)]


def test_fragments_are_matched_by_addresses_protocol_and_ip_id(tmp_path):
    one, other = fragmented(1.0, 41, sport=7), fragmented(1.0005, 42, sport=8)
    interleaved = [one[0], other[0], other[1], one[1], one[2], other[2]]
    orphan = fragmented(2.0, 43)[1:]  # its first fragment was not captured
    frames = [Frame(1.0 + k * 0.001, frame.data) for k, frame in enumerate(interleaved + orphan)]
    packets = read_all(write_pcap(tmp_path / "frag.pcap", frames))
    assert packets["src_port"].tolist() == [7, 8, 8, 7, 7, 8, 0, 0]
    assert len(read_flows(tmp_path / "frag.pcap")) == 3  # the orphans form a flow without ports


# --- timestamps going backwards --------------------------------------------------------------------
def test_timestamps_going_backwards_are_counted_and_warned_about(tmp_path):
    stamps = [1.0, 2.0, 1.5, 3.0, 2.5, 2.9, 4.0]
    frames = [Frame(ts, ethernet(tcp("10.0.0.1", 1000, "10.0.0.2", 80))) for ts in stamps]
    path = write_pcap(tmp_path / "unordered.pcap", frames)
    reader = PcapReader(path, batch_bytes=100)
    with pytest.warns(TimestampsBackwardsWarning, match="3 records have a timestamp earlier than a record before") as caught:
        packets = np.concatenate(list(reader))
    assert len(caught) == 1 and "reordercap" in str(caught[0].message)
    assert reader.timestamps_backwards == 3 and packets["ts"].tolist() == stamps  # kept in file order
    with pytest.warns(TimestampsBackwardsWarning):
        table = read_flows(path)
    assert table.stats.timestamps_backwards == 3
    assert (table.records["first_ts"][0], table.records["last_ts"][0]) == (1.0, 4.0)


@pytest.mark.parametrize("batch_bytes", [1 << 20, 150, 60])
def test_each_record_is_compared_with_the_latest_before_it_in_any_batch(tmp_path, batch_bytes):
    frames = [Frame(ts, ethernet(tcp("10.0.0.1", 1000, "10.0.0.2", 80))) for ts in (1.0, 5.0, 2.0, 3.0, 6.0)]
    reader = PcapReader(write_pcap(tmp_path / "late.pcap", frames), batch_bytes=batch_bytes)
    with pytest.warns(TimestampsBackwardsWarning, match="2 records have"):
        list(reader)
    assert reader.timestamps_backwards == 2


def test_ordered_timestamps_give_no_warning(tmp_path):
    frames = [Frame(ts, ethernet(tcp("10.0.0.1", 1000, "10.0.0.2", 80))) for ts in (1.0, 1.0, 2.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_flows(write_pcap(tmp_path / "ordered.pcap", frames)).stats.timestamps_backwards == 0


# --- gzip padding ----------------------------------------------------------------------------------
def test_gzip_followed_by_zero_padding_reads_as_gzip_t_accepts(tmp_path):
    frames = [Frame(1.0 + k, ethernet(tcp("10.0.0.1", 1000, "10.0.0.2", 80))) for k in range(5)]
    data = pcap_bytes(frames)
    padded = tmp_path / "padded.pcap.gz"
    padded.write_bytes(gzip.compress(data) + bytes(4096))
    assert subprocess.run(["gzip", "-t", str(padded)], check=False).returncode == 0
    np.testing.assert_array_equal(read_all(padded), read_all(write_pcap(tmp_path / "t.pcap", frames)))
    garbage = tmp_path / "garbage.pcap.gz"
    garbage.write_bytes(gzip.compress(data) + bytes(10) + b"junk")
    assert "non-zero bytes after the gzip data's zero padding" in error_for(garbage)


# --- pcapng ----------------------------------------------------------------------------------------
def mixed() -> list[Frame]:
    return [Frame(1_600_000_000.125 + k * 0.25, ethernet(tcp("10.0.0.1", 40000 + k % 3, "10.0.0.2", 80, 1400)))
            for k in range(40)] + [Frame(1_600_000_011.0, ethernet(udp("10.0.0.3", 53, "10.0.0.1", 5353, 30)))]


@pytest.mark.parametrize("layout", [{}, {"byte_order": ">"}, {"tsresol": 9}, {"tsresol": 3}])
@pytest.mark.parametrize("batch_bytes", [1 << 20, 77])
def test_pcapng_reads_like_the_same_classic_pcap(tmp_path, layout, batch_bytes):
    frames = mixed()
    if layout.get("tsresol") == 3:
        frames = [Frame(round(f.ts, 3), f.data) for f in frames]
    expected = read_all(write_pcap(tmp_path / "t.pcap", frames))
    path = tmp_path / "t.pcapng"
    path.write_bytes(pcapng_bytes(frames, **layout))
    np.testing.assert_array_equal(read_all(path, batch_bytes=batch_bytes), expected)
    path.write_bytes(gzip.compress(pcapng_bytes(frames, **layout)))
    np.testing.assert_array_equal(read_all(path, batch_bytes=batch_bytes), expected)


def test_pcapng_simple_packet_blocks_have_no_timestamp(tmp_path):
    path = tmp_path / "simple.pcapng"
    path.write_bytes(pcapng_bytes(mixed()[:3], simple=True))
    packets = read_all(path)
    assert packets["ts"].tolist() == [0.0] * 3 and packets["wire_len"].tolist() == [1454] * 3


@pytest.mark.skipif(shutil.which("editcap") is None, reason="needs editcap (Wireshark)")
def test_pcapng_written_by_editcap(tmp_path):
    classic = write_pcap(tmp_path / "t.pcap", mixed())
    converted = tmp_path / "t.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(classic), str(converted)], check=True)
    np.testing.assert_array_equal(read_all(converted), read_all(classic))
    assert read_flows(converted).summary() == read_flows(classic).summary()


def test_corrupt_pcapng_names_the_file_and_offset(tmp_path):
    data = bytearray(pcapng_bytes(mixed()))
    second_packet = 28 + 20 + (32 + 68)  # section header, interface, one enhanced packet block
    data[second_packet + 4 : second_packet + 8] = (7).to_bytes(4, "little")  # a block length below 12
    path = tmp_path / "bad.pcapng"
    path.write_bytes(bytes(data))
    assert f"{path}: byte {second_packet}: pcapng block length 7" in error_for(path)
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(pcapng_bytes(mixed())[:-30])
    with pytest.warns(UserWarning, match="cut short"):
        assert len(read_all(cut)) == len(mixed()) - 1
    other_link = tmp_path / "wifi.pcapng"
    other_link.write_bytes(pcapng_bytes(mixed(), link_type=105))
    assert "link type 105 is not supported" in error_for(other_link)


# --- IPv6 ------------------------------------------------------------------------------------------
def test_ipv6_packets_are_parsed_and_grouped_into_flows(tmp_path):
    frames = [
        Frame(1.0, ethernet(tcp6(A6, 40000, B6, 443, 100), ethertype=dpkt.ethernet.ETH_TYPE_IP6)),
        Frame(1.5, ethernet(tcp6(B6, 443, A6, 40000, 1000), ethertype=dpkt.ethernet.ETH_TYPE_IP6)),
        Frame(2.0, ethernet(tcp("10.0.0.1", 40000, "10.0.0.2", 443))),
        Frame(2.5, ethernet(ipv6(A6, B6, 58, bytes(8)), ethertype=dpkt.ethernet.ETH_TYPE_IP6)),  # ICMPv6
        # a hop-by-hop options header before UDP
        Frame(3.0, ethernet(ipv6(A6, B6, 0, bytes([17, 0]) + bytes(6) + bytes(dpkt.udp.UDP(sport=5, dport=6))),
                            ethertype=dpkt.ethernet.ETH_TYPE_IP6)),
    ]
    path = write_pcap(tmp_path / "v6.pcap", frames, snaplen=200)
    packets = read_all(path)
    assert packets["l3"].tolist() == [L3_IPV6, L3_IPV6, L3_IPV4, L3_IPV6, L3_IPV6]
    assert packets["is_ipv6"].tolist() == [True, True, False, True, True]
    assert packets[["src_port", "dst_port", "proto"]].tolist() == [(40000, 443, 6), (443, 40000, 6),
                                                                   (40000, 443, 6), (0, 0, 58), (5, 6, 17)]
    table = read_flows(path)
    assert table.summary()["flows"] == 4 and table.summary()["ip_packets"] == 5
    first = table.records[0]
    assert (first["is_ipv6"], first["packets"], first["src_port"]) == (True, 2, 40000)
    assert ipaddress.IPv6Address(first["src_ip6"].tobytes()) == ipaddress.IPv6Address(A6)
    keys = flow_identities(*flow_keys(table.records, table.addresses), table.addresses)
    assert keys[0] == FlowKey.of(A6, B6, 40000, 443, 6) and keys[1] == FlowKey.of("10.0.0.1", "10.0.0.2",
                                                                                   40000, 443, 6)


def test_ipv6_flows_flow_through_episodes_into_the_twin(tmp_path):
    frames = []
    for k in range(400):  # 20 s: an IPv6 and an IPv4 flow, 10 packets/s each
        ts = 100.0 + k * 0.05
        if k % 2:
            frames.append(Frame(ts, ethernet(tcp6(A6, 40000, B6, 443, 10), ethertype=dpkt.ethernet.ETH_TYPE_IP6)))
        else:
            frames.append(Frame(ts, ethernet(udp("10.0.0.1", 5000, "10.0.0.2", 53, 10))))
    path = write_pcap(tmp_path / "mixed.pcap", frames, snaplen=200)
    batch = build_episodes(path, n_episodes=2, n_steps=10, n_instances=1, seed=0, max_flows=4, bin_s=1.0,
                           sizing=Sizing(max_flow_share=0.9))  # no flow left out as heavy
    for b in range(2):
        tuples = {FiveTuple.from_record(batch.five_tuple[b, slot]): batch.rate[b, 1:9, slot].tolist()
                  for slot in range(2)}
        assert tuples == {FiveTuple(A6, B6, 40000, 443, 6): [10.0] * 8,
                          FiveTuple("10.0.0.1", "10.0.0.2", 5000, 53, 17): [10.0] * 8}
    twin = BatchedTwin.from_episodes(batch)
    assert twin.state(0).flow(0).five_tuple.src_ip in (A6, "10.0.0.1")


def test_the_live_replay_sends_ipv6_flows_as_ipv6_frames(tmp_path):
    from mininet_topos.frames import build_frame, parse_frame
    from trace_replay.live import load_schedule

    frames = [Frame(1.0 + k * 0.1, ethernet(tcp6(A6, 40000, B6, 443), ethertype=dpkt.ethernet.ETH_TYPE_IP6)
                    if k % 2 else ethernet(tcp("10.0.0.1", 40000, "10.0.0.2", 443))) for k in range(10)]
    path = write_pcap(tmp_path / "mixed.pcap", frames, snaplen=200)
    schedule = load_schedule(path)
    assert schedule.flows == [FlowKey.of("10.0.0.1", "10.0.0.2", 40000, 443, 6), FlowKey.of(A6, B6, 40000, 443, 6)]
    assert len(schedule.packets) == 10 and schedule.packets["is_ipv6"].tolist() == [k % 2 == 1 for k in range(10)]
    row = schedule.packets[1]
    frame = build_frame(bytes(6), row["src_ip6"].tobytes(), row["dst_ip6"].tobytes(), int(row["src_port"]),
                        int(row["dst_port"]), int(row["proto"]), int(row["wire_len"]), 1, 0, 0)
    assert parse_frame(frame).key == schedule.flows[1] and parse_frame(frame).stamp(frame) == (1, 0, 0)
