"""The frames of the testbed's dataplane: the wire constants the sender, the NFs, the sink and the
controller agree on, and the build and parse of replayed Ethernet/IPv4 and Ethernet/IPv6 frames.

A replayed frame carries the trace packet's addresses, ports and protocol, and a stamp (magic, flow
id, sequence number, send time) at the start of its transport payload, so the sink can count each
flow's arrivals and measure each packet's one-way delay. The send time is CLOCK_REALTIME in
nanoseconds (`time.time_ns()`): the sender and the sink run on one machine, and network namespaces
share its clock. Build and parse run once per packet in the sender, the NFs and the sink, so they work on
`struct` layouts, one per header, rather than a general packet library.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from twin.flow import FlowKey

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17

STAMP_MAGIC = b"DMrp"
REPLAY_DST_MAC = bytes.fromhex("02dd00000001")
"""Destination MAC of every replayed frame: locally administered and no host's, so the NF and sink
hosts' kernels ignore the frames (their AF_PACKET sockets still see them) and the switch's rules,
not MAC learning, decide where they go."""
CONTROLLER_PATH_DSCP = 8
"""DSCP the controller writes into a packet it forwards itself (a packet-out: the flow's first packets,
before its rules are in), so the sink can tell set-up reordering from reordering by a migration."""

_ETHERNET = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")  # version | traffic class | flow label, payload length, next header, hops
_IPV6_EXTENSIONS = {0, 43, 60}  # hop-by-hop, routing, destination options: (length + 1) * 8 bytes
_IPV6_FRAGMENT, _MAX_EXTENSIONS = 44, 4
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_PORTS = struct.Struct("!HH")  # the source and destination ports that open both TCP and UDP headers
_STAMP = struct.Struct("!4sIIQ")  # magic, flow id, sequence, send time (ns)
_MIN_FRAME, _MAX_FRAME = 60, 1514  # Ethernet without FCS
_ETHERNET_LEN, _IPV4_LEN, _IPV6_LEN = _ETHERNET.size, _IPV4.size, _IPV6.size


@dataclass(frozen=True)
class ParsedFrame:
    """The fields of an IPv4 or IPv6 Ethernet frame that the NFs and the sink work on (addresses packed:
    4 or 16 bytes)."""

    src_ip: bytes
    dst_ip: bytes
    src_port: int
    dst_port: int
    proto: int
    payload_offset: int  # where the transport payload (and a replay stamp) starts
    dscp: int = 0

    @property
    def key(self) -> FlowKey:
        return FlowKey.of(self.src_ip, self.dst_ip, self.src_port, self.dst_port, self.proto)

    def stamp(self, frame: bytes) -> tuple[int, int, int] | None:
        """(flow id, sequence number, send time in ns) of a replayed frame, None for any other frame."""
        if len(frame) < self.payload_offset + _STAMP.size:
            return None
        magic, flow_id, sequence, sent_ns = _STAMP.unpack_from(frame, self.payload_offset)
        return (flow_id, sequence, sent_ns) if magic == STAMP_MAGIC else None


def parse_frame(frame: bytes) -> ParsedFrame | None:
    """Parse an untagged Ethernet frame carrying IPv4 or IPv6; None for anything else or a truncated frame."""
    if len(frame) < _ETHERNET_LEN + _IPV4_LEN:
        return None
    ethertype = _ETHERNET.unpack_from(frame)[2]
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(frame)
    if ethertype != ETH_P_IP:
        return None
    version_ihl, tos, _length, _ident, fragment, _ttl, proto, _checksum, src, dst = _IPV4.unpack_from(
        frame, _ETHERNET_LEN
    )
    header_len = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or header_len < _IPV4_LEN:
        return None
    return _transport(frame, src, dst, proto, _ETHERNET_LEN + header_len, fragment & 0x1FFF == 0, tos >> 2)


def _parse_ipv6(frame: bytes) -> ParsedFrame | None:
    """The IPv6 half of parse_frame: the transport protocol after up to _MAX_EXTENSIONS extension headers (as
    the trace reader and OVS's ip_proto take it); a non-first fragment has no ports."""
    if len(frame) < _ETHERNET_LEN + _IPV6_LEN:
        return None
    first_word, _length, proto, _hops, src, dst = _IPV6.unpack_from(frame, _ETHERNET_LEN)
    if first_word >> 28 != 6:
        return None
    transport, first_fragment = _ETHERNET_LEN + _IPV6_LEN, True
    for _ in range(_MAX_EXTENSIONS):
        if (proto not in _IPV6_EXTENSIONS and proto != _IPV6_FRAGMENT) or len(frame) < transport + 8:
            break
        if proto == _IPV6_FRAGMENT:
            first_fragment = first_fragment and int.from_bytes(frame[transport + 2:transport + 4], "big") >> 3 == 0
            proto, transport = frame[transport], transport + 8
        else:
            proto, transport = frame[transport], transport + (frame[transport + 1] + 1) * 8
    return _transport(frame, src, dst, proto, transport, first_fragment, (first_word >> 20 & 0xFF) >> 2)


def _transport(frame: bytes, src: bytes, dst: bytes, proto: int, transport: int, first_fragment: bool,
               dscp: int) -> ParsedFrame:
    """The ports (TCP and UDP, first fragments) and the payload's offset of a frame whose IP header ends at
    `transport`."""
    src_port = dst_port = 0
    payload = transport
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and first_fragment and len(frame) >= transport + _PORTS.size:
        src_port, dst_port = _PORTS.unpack_from(frame, transport)
        if proto == IPPROTO_UDP:
            payload += _UDP.size
        elif len(frame) >= transport + _TCP.size:
            payload += (frame[transport + 12] >> 4) * 4
    return ParsedFrame(src, dst, src_port, dst_port, proto, payload, dscp)


def build_frame(
    src_mac: bytes,
    src_ip: int | bytes,
    dst_ip: int | bytes,
    src_port: int,
    dst_port: int,
    proto: int,
    wire_len: int,
    flow_id: int,
    sequence: int,
    sent_ns: int,
) -> bytes:
    """A replayed frame: Ethernet, IPv4 (with checksum) or IPv6, a TCP or UDP header for those protocols,
    the stamp, and zero padding up to the trace packet's length (within Ethernet's limits).
    IPv4 addresses are host-order integers, as the trace reader gives them, IPv6 ones their 16 bytes;
    `sent_ns` is the send time (`time.time_ns()`)."""
    if proto == IPPROTO_TCP:
        transport = _TCP.pack(src_port, dst_port, sequence, 0, 5 << 4, 0x10, 65535, 0, 0)
    elif proto == IPPROTO_UDP:
        transport = _UDP.pack(src_port, dst_port, _UDP.size + _STAMP.size, 0)
    else:
        transport = b""
    stamp = _STAMP.pack(STAMP_MAGIC, flow_id, sequence, sent_ns)
    ipv6 = isinstance(src_ip, bytes) and len(src_ip) == 16
    ip_len = _IPV6_LEN if ipv6 else _IPV4_LEN
    headers_len = _ETHERNET_LEN + ip_len + len(transport) + len(stamp)
    padding = bytes(max(min(wire_len, _MAX_FRAME), _MIN_FRAME, headers_len) - headers_len)
    upper_len = len(transport) + len(stamp) + len(padding)
    if ipv6:
        ethertype, header = ETH_P_IPV6, _IPV6.pack(6 << 28, upper_len, proto, 64, src_ip, bytes(dst_ip))
    else:
        ethertype, header = ETH_P_IP, _ipv4_header(_address4(src_ip), _address4(dst_ip), proto, ip_len + upper_len,
                                                   sequence)
    return b"".join((_ETHERNET.pack(REPLAY_DST_MAC, src_mac, ethertype), header, transport, stamp, padding))


def _address4(address: int | bytes) -> bytes:
    return address if isinstance(address, bytes) else address.to_bytes(4, "big")


def _ipv4_header(src: bytes, dst: bytes, proto: int, total_len: int, ident: int) -> bytes:
    fields = [0x45, 0, total_len, ident & 0xFFFF, 0x4000, 64, proto, 0, src, dst]
    fields[7] = _ipv4_checksum(_IPV4.pack(*fields))
    return _IPV4.pack(*fields)


def _ipv4_checksum(header: bytes) -> int:
    """RFC 1071 checksum of an IPv4 header whose checksum field is zero."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
