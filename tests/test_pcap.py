"""trace_replay.pcap: parsing of header-only traces, file variants, and the error contract."""

from __future__ import annotations

import gzip
import ipaddress
import shutil
import struct
import subprocess
import threading
import warnings

import dpkt
import numpy as np
import pytest

from tests.pcap_builder import (
    ETHERNET,
    LINUX_SLL,
    RAW_IP,
    Frame,
    ethernet,
    icmp,
    ipv4,
    linux_cooked,
    pcap_bytes,
    tcp,
    udp,
    write_pcap,
)
from trace_replay.pcap import (
    L3_IPV4,
    L3_IPV4_MALFORMED,
    L3_IPV6_MALFORMED,
    L3_NON_IP,
    PACKET_DTYPE,
    PcapError,
    PcapReader,
    TornRecordWarning,
    iter_packet_batches,
)


def ip_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def read_all(path, **options) -> np.ndarray:
    batches = list(iter_packet_batches(path, **options))
    return np.concatenate(batches) if batches else np.empty(0, PACKET_DTYPE)


def mixed_frames() -> list[Frame]:
    return [
        Frame(1_100_000_000.25, ethernet(tcp("10.0.0.1", 40000, "131.243.1.2", 80, payload_len=1400))),
        Frame(1_100_000_000.5, ethernet(tcp("131.243.1.2", 80, "10.0.0.1", 40000))),
        Frame(1_100_000_001.0, ethernet(udp("10.0.0.3", 5353, "10.0.0.255", 53, payload_len=30), vlan=12)),
        Frame(1_100_000_001.5, ethernet(icmp("10.0.0.1", "10.0.0.9"))),
        Frame(1_100_000_002.0, ethernet(bytes(40), ethertype=dpkt.ethernet.ETH_TYPE_IP6)),
        Frame(1_100_000_002.5, ethernet(bytes(28), ethertype=dpkt.ethernet.ETH_TYPE_ARP)),
    ]


def test_header_only_records_report_the_wire_length_and_all_fields(tmp_path):
    packets = read_all(write_pcap(tmp_path / "t.pcap", mixed_frames()))

    assert packets.dtype == PACKET_DTYPE
    assert packets["wire_len"].tolist() == [
        14 + 20 + 20 + 1400,
        54,
        18 + 20 + 8 + 30,
        14 + 20 + 8 + 56,
        54,
        42,
    ]
    assert packets["ts"].tolist() == [
        1_100_000_000.25,
        1_100_000_000.5,
        1_100_000_001.0,
        1_100_000_001.5,
        1_100_000_002.0,
        1_100_000_002.5,
    ]
    # the IPv6 frame holds 40 zero bytes: no IPv6 header (version 0)
    assert packets["l3"].tolist() == [L3_IPV4, L3_IPV4, L3_IPV4, L3_IPV4, L3_IPV6_MALFORMED, L3_NON_IP]
    assert packets["is_ipv4"].tolist() == [True, True, True, True, False, False]
    assert packets["proto"].tolist() == [6, 6, 17, 1, 0, 0]
    assert packets["src_ip"][:4].tolist() == [
        ip_int(a) for a in ("10.0.0.1", "131.243.1.2", "10.0.0.3", "10.0.0.1")
    ]
    assert packets["dst_ip"][:4].tolist() == [
        ip_int(a) for a in ("131.243.1.2", "10.0.0.1", "10.0.0.255", "10.0.0.9")
    ]
    assert packets["src_port"].tolist() == [40000, 80, 5353, 0, 0, 0]
    assert packets["dst_port"].tolist() == [80, 40000, 53, 0, 0, 0]
    assert packets["has_ports"].tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("link_type", [RAW_IP, 12, 14, 228])
def test_raw_ip_link_types(tmp_path, link_type):
    frames = [Frame(5.0, tcp("10.1.1.1", 1025, "10.2.2.2", 443, payload_len=900))]
    packets = read_all(write_pcap(tmp_path / "raw.pcap", frames, link_type=link_type))
    assert packets[["src_ip", "dst_ip", "src_port", "dst_port", "proto", "wire_len"]].tolist() == [
        (ip_int("10.1.1.1"), ip_int("10.2.2.2"), 1025, 443, 6, 20 + 20 + 900)
    ]


def test_linux_cooked_link_type(tmp_path):
    frames = [Frame(5.0, linux_cooked(udp("10.1.1.1", 1025, "10.2.2.2", 161, payload_len=200)))]
    packets = read_all(write_pcap(tmp_path / "sll.pcap", frames, link_type=LINUX_SLL))
    assert packets[["src_port", "dst_port", "proto", "wire_len"]].tolist() == [(1025, 161, 17, 16 + 28 + 200)]


def test_nanosecond_timestamps_keep_their_precision(tmp_path):
    frames = [
        Frame(1.000000123, ethernet(icmp("10.0.0.1", "10.0.0.2"))),
        Frame(2.999999999, ethernet(icmp("10.0.0.2", "10.0.0.1"))),
    ]
    micro = read_all(write_pcap(tmp_path / "us.pcap", frames))
    nano = read_all(write_pcap(tmp_path / "ns.pcap", frames, nanosecond=True))
    assert nano["ts"] == pytest.approx([1.000000123, 2.999999999], abs=1e-12)
    assert micro["ts"] == pytest.approx([1.0, 3.0], abs=1e-12)


def test_big_endian_file_reads_like_little_endian(tmp_path):
    little = read_all(write_pcap(tmp_path / "le.pcap", mixed_frames(), byte_order="<"))
    big = read_all(write_pcap(tmp_path / "be.pcap", mixed_frames(), byte_order=">"))
    np.testing.assert_array_equal(big, little)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    plain = read_all(write_pcap(tmp_path / "t.pcap", mixed_frames()))
    compressed = read_all(write_pcap(tmp_path / "t.pcap", mixed_frames(), compress=True))
    np.testing.assert_array_equal(compressed, plain)


def test_concatenated_gzip_members_read_as_one_stream(tmp_path):
    data = pcap_bytes(mixed_frames())
    path = tmp_path / "members.pcap.gz"
    path.write_bytes(gzip.compress(data[:100]) + gzip.compress(data[100:]))
    np.testing.assert_array_equal(read_all(path), read_all(write_pcap(tmp_path / "t.pcap", mixed_frames())))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("batch_bytes", [1, 50, 97, 1000])
@pytest.mark.filterwarnings("ignore::trace_replay.pcap.TimestampsBackwardsWarning")  # the frames repeat their times
def test_records_split_across_chunks_read_the_same(tmp_path, batch_bytes, compress):
    frames = mixed_frames() * 20
    expected = read_all(write_pcap(tmp_path / "whole.pcap", frames))
    path = write_pcap(tmp_path / "t.pcap", frames, compress=compress)
    np.testing.assert_array_equal(read_all(path, batch_bytes=batch_bytes), expected)


def test_fragments_after_the_first_carry_its_ports_but_no_header(tmp_path):
    datagram = dpkt.udp.UDP(sport=7, dport=9, data=bytes(2000))
    frames = [
        Frame(1.0, ethernet(ipv4("10.0.0.1", "10.0.0.2", 17, bytes(datagram)[:1480], more_fragments=True))),
        Frame(1.1, ethernet(ipv4("10.0.0.1", "10.0.0.2", 17, bytes(datagram)[1480:], fragment_offset=1480))),
    ]
    packets = read_all(write_pcap(tmp_path / "frag.pcap", frames))
    assert packets[["has_ports", "src_port", "dst_port", "proto"]].tolist() == [
        (True, 7, 9, 17),
        (False, 7, 9, 17),  # the ports of its first fragment (tests/test_pcap_edge_cases.py)
    ]


def test_ip_options_move_the_ports(tmp_path):
    options = b"\x01" * 8  # eight no-op options: header length 28
    frames = [Frame(1.0, ethernet(tcp("10.0.0.1", 2000, "10.0.0.2", 25, options=options)))]
    packets = read_all(write_pcap(tmp_path / "opts.pcap", frames))
    assert packets[["src_port", "dst_port", "has_ports"]].tolist() == [(2000, 25, True)]


def test_snap_length_cutting_into_headers(tmp_path):
    frames = [Frame(1.0, ethernet(tcp("10.0.0.1", 2000, "10.0.0.2", 25, payload_len=100)))]
    no_ports = read_all(write_pcap(tmp_path / "s36.pcap", frames, snaplen=36))
    cut_ip_header = read_all(write_pcap(tmp_path / "s30.pcap", frames, snaplen=30))
    assert no_ports[["l3", "is_ipv4", "has_ports", "src_ip", "wire_len"]].tolist() == [
        (L3_IPV4, True, False, ip_int("10.0.0.1"), 154)
    ]
    assert cut_ip_header[["l3", "is_ipv4", "wire_len"]].tolist() == [(L3_IPV4_MALFORMED, False, 154)]


def test_reader_reports_the_file_header(tmp_path):
    reader = PcapReader(
        write_pcap(tmp_path / "t.pcap", mixed_frames(), snaplen=96, nanosecond=True, byte_order=">")
    )
    assert sum(len(batch) for batch in reader) == 6
    assert (
        reader.header.link_type,
        reader.header.snaplen,
        reader.header.nanosecond,
        reader.header.byte_order,
    ) == (ETHERNET, 96, True, ">")
    assert reader.torn_records == 0


def test_progress_bar_only_when_asked(tmp_path, capsys):
    path = write_pcap(tmp_path / "t.pcap", mixed_frames())
    read_all(path)
    assert capsys.readouterr().err == ""
    read_all(path, progress=True)
    assert "100%" in capsys.readouterr().err


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("cut", [3, 15, 16, 40])
def test_torn_last_record_is_skipped_counted_and_warned_about(tmp_path, cut, compress):
    data = pcap_bytes(mixed_frames())
    last_record = data.rindex(struct.pack("<I", 1_100_000_002))
    path = tmp_path / "cut.pcap"
    torn = data[: last_record + cut]
    path.write_bytes(gzip.compress(torn) if compress else torn)

    needed = 58 if cut >= 16 else 16  # the whole ARP record once its header is there to say so
    reader = PcapReader(path)
    with pytest.warns(
        TornRecordWarning, match=rf"cut\.pcap: byte {last_record}.*cut short \({cut} of {needed} bytes\)"
    ):
        packets = np.concatenate(list(reader))
    assert len(packets) == 5
    assert reader.torn_records == 1


def test_complete_file_gives_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_all(write_pcap(tmp_path / "t.pcap", mixed_frames()))


def error_for(path, **options) -> str:
    with pytest.raises(PcapError) as caught:
        read_all(path, **options)
    message = str(caught.value)
    assert message.startswith(f"{path}: byte "), message
    return message


@pytest.mark.parametrize("size", [0, 3, 23])
def test_truncated_file_header(tmp_path, size):
    path = tmp_path / "short.pcap"
    path.write_bytes(pcap_bytes([])[:size])
    assert f"byte {size}: file ends after {size} bytes, inside the 24-byte pcap file header" in error_for(
        path
    )


def test_wrong_magic_says_what_it_found(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, this is not a capture file\n")
    assert "byte 0: not a pcap file: magic bytes 68 65 6c 6c" in error_for(path)


def test_pcapng_without_an_interface_is_refused(tmp_path):
    path = tmp_path / "trace.pcapng"
    path.write_bytes(bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000"))
    assert "byte 28: the pcapng file ends before any interface description block" in error_for(path)


def test_unsupported_link_type(tmp_path):
    path = write_pcap(tmp_path / "wifi.pcap", mixed_frames(), link_type=105)
    assert "byte 20: link type 105 is not supported" in error_for(path)


@pytest.mark.parametrize("batch_bytes", [1 << 20, 64])
def test_caplen_beyond_snap_length_names_the_record(tmp_path, batch_bytes):
    data = bytearray(pcap_bytes(mixed_frames()))
    third = 24 + 2 * 16 + 68 + 54  # after a header-only record of 68 bytes and one of 54
    struct.pack_into("<I", data, third + 8, 1500)
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(data))
    message = error_for(path, batch_bytes=batch_bytes)
    assert f"byte {third}: record caplen 1500 exceeds snap length 68 (corrupt record)" in message


def test_huge_corrupt_caplen_is_an_error_not_a_torn_record(tmp_path):
    data = bytearray(pcap_bytes(mixed_frames() * 50))
    struct.pack_into("<I", data, 24 + 8, 0xFFFFFFF0)
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(data))
    assert "byte 24: record caplen 4294967280 exceeds snap length 68" in error_for(path, batch_bytes=256)


def test_caplen_beyond_original_length(tmp_path):
    data = bytearray(pcap_bytes(mixed_frames()))
    struct.pack_into("<I", data, 24 + 12, 50)  # first record: 68 bytes captured of "50"
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(data))
    assert "byte 24: record caplen 68 exceeds its original length 50" in error_for(path)


def test_offsets_in_gzip_files_count_decompressed_bytes(tmp_path):
    data = bytearray(pcap_bytes(mixed_frames()))
    struct.pack_into("<I", data, 24 + 8, 1500)
    path = tmp_path / "bad.pcap.gz"
    path.write_bytes(gzip.compress(bytes(data)))
    assert "byte 24 of the decompressed data: record caplen 1500" in error_for(path)


def test_corrupt_gzip_stream(tmp_path):
    compressed = bytearray(gzip.compress(pcap_bytes(mixed_frames() * 30)))
    compressed[len(compressed) // 2 : len(compressed) // 2 + 8] = b"\xff" * 8
    path = tmp_path / "bad.pcap.gz"
    path.write_bytes(bytes(compressed))
    assert "byte 0: corrupt gzip stream" in error_for(path)


def test_truncated_gzip_stream(tmp_path):
    compressed = gzip.compress(pcap_bytes(mixed_frames() * 30))
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(compressed[:-20])
    assert f"byte {len(compressed) - 20}: gzip stream is truncated" in error_for(path)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_all(tmp_path / "absent.pcap")


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_fields_agree_with_tshark(tmp_path):
    rng = np.random.default_rng(7)
    hosts = ["10.0.0.1", "10.0.0.2", "131.243.5.6", "192.168.1.9"]
    frames = []
    for i in range(300):
        src, dst = rng.choice(hosts, 2, replace=False)
        kind = rng.integers(0, 4)
        if kind == 0:
            packet = tcp(src, int(rng.integers(1, 65535)), dst, 80, payload_len=int(rng.integers(0, 1400)))
        elif kind == 1:
            packet = udp(src, int(rng.integers(1, 65535)), dst, 53, payload_len=int(rng.integers(0, 500)))
        elif kind == 2:
            packet = icmp(src, dst, payload_len=int(rng.integers(0, 100)))
        else:
            packet = ipv4(src, dst, dpkt.ip.IP_PROTO_GRE, bytes(int(rng.integers(4, 300))))
        frames.append(
            Frame(
                1_200_000_000 + i * 0.013,
                ethernet(packet, vlan=int(rng.integers(1, 4000)) if i % 3 == 0 else None),
            )
        )
    path = write_pcap(tmp_path / "random.pcap", frames)
    fields = [
        "frame.time_epoch",
        "frame.len",
        "ip.src",
        "ip.dst",
        "ip.proto",
        "tcp.srcport",
        "tcp.dstport",
        "udp.srcport",
        "udp.dstport",
    ]
    output = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", *[arg for field in fields for arg in ("-e", field)]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    expected = []
    for line in output.splitlines():
        ts, length, src, dst, proto, tsport, tdport, usport, udport = line.split("\t")
        expected.append(
            (
                round(float(ts), 6),
                int(length),
                ip_int(src),
                ip_int(dst),
                int(proto),
                int(tsport or usport or 0),
                int(tdport or udport or 0),
            )
        )
    packets = read_all(path)
    actual = [
        (
            round(float(p["ts"]), 6),
            int(p["wire_len"]),
            int(p["src_ip"]),
            int(p["dst_ip"]),
            int(p["proto"]),
            int(p["src_port"]),
            int(p["dst_port"]),
        )
        for p in packets
    ]
    assert actual == expected


def test_stopping_early_releases_the_reader(tmp_path):
    path = write_pcap(tmp_path / "t.pcap", mixed_frames() * 200, compress=True)
    batches = iter_packet_batches(path, batch_bytes=200)
    assert len(next(batches)) > 0
    batches.close()  # must not hang on the read-ahead thread
    assert "pcap-read-ahead" not in {thread.name for thread in threading.enumerate()}
