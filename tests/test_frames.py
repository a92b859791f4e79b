"""mininet_topos.frames, checked against dpkt: the frames the sender builds are the packets dpkt reads,
and parse_frame reads what dpkt builds."""
from __future__ import annotations

import ipaddress
import struct

import dpkt
from hypothesis import given
from hypothesis import strategies as st

from mininet_topos.frames import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    REPLAY_DST_MAC,
    STAMP_MAGIC,
    build_frame,
    parse_frame,
)
from tests.strategies import five_tuples
from twin.flow import FiveTuple, FlowKey

MAC = bytes.fromhex("020000000001")
protocols = st.sampled_from((IPPROTO_TCP, IPPROTO_UDP, dpkt.ip.IP_PROTO_ICMP, dpkt.ip.IP_PROTO_GRE))
packets = st.builds(lambda packet, proto: packet._replace(proto=proto), five_tuples(version=4), protocols)


def built(packet: FiveTuple, wire_len: int, flow_id: int, sequence: int, sent_ns: int = 0) -> bytes:
    src, dst = (int(ipaddress.IPv4Address(ip)) for ip in packet[:2])
    return build_frame(MAC, src, dst, packet.src_port, packet.dst_port, packet.proto, wire_len, flow_id, sequence,
                       sent_ns)


send_times = st.integers(0, 2**64 - 1)


@given(packets, st.integers(0, 2000), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), send_times)
def test_built_frames_are_valid_packets_with_the_trace_fields_and_the_stamp(packet, wire_len, flow_id, sequence,
                                                                            sent_ns):
    frame = built(packet, wire_len, flow_id, sequence, sent_ns)
    ethernet = dpkt.ethernet.Ethernet(frame)
    ip = ethernet.data
    assert (ethernet.dst, ethernet.src, ethernet.type) == (REPLAY_DST_MAC, MAC, dpkt.ethernet.ETH_TYPE_IP)
    headers_len = 14 + 20 + {IPPROTO_TCP: 20, IPPROTO_UDP: 8}.get(packet.proto, 0) + 20  # ... + stamp
    assert len(frame) == max(min(wire_len, 1514), 60, headers_len)  # padded to the trace's length
    assert ip.len == len(frame) - 14 and ip.df and ip.ttl == 64 and ip.tos == 0
    checked = dpkt.ip.IP(bytes(ip))
    checked.sum = 0
    assert dpkt.ip.IP(bytes(checked)).sum == ip.sum, "IPv4 header checksum"
    assert (ipaddress.IPv4Address(ip.src), ipaddress.IPv4Address(ip.dst), ip.p) == (
        ipaddress.IPv4Address(packet.src_ip), ipaddress.IPv4Address(packet.dst_ip), packet.proto)
    payload = bytes(ip.data)
    if packet.proto in (IPPROTO_TCP, IPPROTO_UDP):
        transport = ip.data
        assert (transport.sport, transport.dport) == (packet.src_port, packet.dst_port)
        payload = bytes(transport.data)
    assert struct.unpack_from("!4sIIQ", payload) == (STAMP_MAGIC, flow_id, sequence, sent_ns)


@given(packets, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), send_times)
def test_parse_reads_back_what_build_wrote(packet, flow_id, sequence, sent_ns):
    frame = built(packet, 100, flow_id, sequence, sent_ns)
    parsed = parse_frame(frame)
    has_ports = packet.proto in (IPPROTO_TCP, IPPROTO_UDP)
    ports = packet[2:4] if has_ports else (0, 0)
    assert parsed.key == FlowKey.of(*packet[:2], *ports, packet.proto)
    assert parsed.stamp(frame) == (flow_id, sequence, sent_ns) and parsed.dscp == 0


@given(five_tuples(version=4), st.sampled_from((IPPROTO_TCP, IPPROTO_UDP)), st.integers(0, 63),
       st.integers(0, 10), st.binary(max_size=40))
def test_parse_reads_dpkt_frames_with_options_and_any_dscp(packet, proto, dscp, option_words, payload):
    layer = (dpkt.tcp.TCP if proto == IPPROTO_TCP else dpkt.udp.UDP)(
        sport=packet.src_port, dport=packet.dst_port, data=payload)
    ip = dpkt.ip.IP(src=ipaddress.IPv4Address(packet.src_ip).packed, dst=ipaddress.IPv4Address(packet.dst_ip).packed,
                    p=proto, tos=dscp << 2, hl=5 + option_words, opts=b"\x01" * 4 * option_words, data=layer)
    frame = bytes(dpkt.ethernet.Ethernet(src=MAC, dst=REPLAY_DST_MAC, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))
    parsed = parse_frame(frame)
    assert (parsed.src_port, parsed.dst_port, parsed.proto, parsed.dscp) == (*packet[2:4], proto, dscp)
    assert frame[parsed.payload_offset:] == payload
    assert parsed.stamp(frame) is None or payload[:4] == STAMP_MAGIC


def test_later_fragments_and_other_frames_carry_no_ports_or_are_ignored():
    ip = dpkt.ip.IP(src=bytes(4), dst=bytes(4), p=IPPROTO_UDP, offset=40, data=bytes(16))
    frame = bytes(dpkt.ethernet.Ethernet(src=MAC, dst=MAC, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))
    assert (parse_frame(frame).src_port, parse_frame(frame).dst_port) == (0, 0)
    assert parse_frame(bytes(14) + b"\x86\xdd" + bytes(60)) is None
    assert parse_frame(frame[:30]) is None


@given(five_tuples(version=6), protocols, st.integers(0, 2000), st.integers(0, 2**32 - 1), send_times)
def test_ipv6_frames_are_valid_packets_and_parse_back(packet, proto, wire_len, sequence, sent_ns):
    packet = packet._replace(proto=proto)
    src, dst = (ipaddress.IPv6Address(ip).packed for ip in packet[:2])
    frame = build_frame(MAC, src, dst, packet.src_port, packet.dst_port, proto, wire_len, 7, sequence, sent_ns)
    ethernet = dpkt.ethernet.Ethernet(frame)
    ip = ethernet.data
    assert ethernet.type == dpkt.ethernet.ETH_TYPE_IP6 and isinstance(ip, dpkt.ip6.IP6)
    assert (ip.src, ip.dst, ip.nxt, ip.hlim, ip.plen) == (src, dst, proto, 64, len(frame) - 14 - 40)
    has_ports = proto in (IPPROTO_TCP, IPPROTO_UDP)
    parsed = parse_frame(frame)
    assert parsed.key == FlowKey.of(*packet[:2], *(packet[2:4] if has_ports else (0, 0)), proto)
    assert parsed.stamp(frame) == (7, sequence, sent_ns) and parsed.dscp == 0


def test_ipv6_extension_headers_are_followed_to_the_transport_and_later_fragments_have_no_ports():
    src, dst = ipaddress.IPv6Address("2001:db8::1").packed, ipaddress.IPv6Address("2001:db8::2").packed
    udp = bytes(dpkt.udp.UDP(sport=5000, dport=53, data=STAMP_MAGIC + bytes(16)))

    def frame(extensions: bytes, first: int, dscp: int = 0) -> bytes:
        header = struct.pack("!IHBB", 6 << 28 | dscp << 22, len(extensions) + len(udp), first, 64) + src + dst
        return MAC + MAC + b"\x86\xdd" + header + extensions + udp

    hop_by_hop = bytes([44, 0]) + bytes(6)  # next: a fragment header
    first_fragment = bytes([IPPROTO_UDP, 0]) + struct.pack("!HI", 1, 9)  # offset 0, more fragments
    parsed = parse_frame(frame(hop_by_hop + first_fragment, 0, dscp=46))
    assert (parsed.proto, parsed.src_port, parsed.dst_port, parsed.dscp) == (IPPROTO_UDP, 5000, 53, 46)
    assert parsed.stamp(frame(hop_by_hop + first_fragment, 0)) is not None
    later = parse_frame(frame(bytes([IPPROTO_UDP, 0]) + struct.pack("!HI", 185 << 3, 9), 44))
    assert (later.proto, later.src_port, later.dst_port) == (IPPROTO_UDP, 0, 0)
    assert parse_frame(frame(b"", IPPROTO_UDP)[:40]) is None  # cut inside the IPv6 header
