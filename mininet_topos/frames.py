"""The frames of the testbed's dataplane: the wire constants the sender, the NFs, the sink and the
controller agree on, and the build and parse of replayed Ethernet/IPv4 frames.

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

ETH_P_IP = 0x0800
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
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_PORTS = struct.Struct("!HH")  # the source and destination ports that open both TCP and UDP headers
_STAMP = struct.Struct("!4sIIQ")  # magic, flow id, sequence, send time (ns)
_MIN_FRAME, _MAX_FRAME = 60, 1514  # Ethernet without FCS
_ETHERNET_LEN, _IPV4_LEN = _ETHERNET.size, _IPV4.size


@dataclass(frozen=True)
class ParsedFrame:
    """The fields of an IPv4 Ethernet frame that the NFs and the sink work on."""

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
    """Parse an untagged Ethernet frame carrying IPv4; None for anything else or a truncated frame."""
    if len(frame) < _ETHERNET_LEN + _IPV4_LEN or _ETHERNET.unpack_from(frame)[2] != ETH_P_IP:
        return None
    version_ihl, tos, _length, _ident, fragment, _ttl, proto, _checksum, src, dst = _IPV4.unpack_from(
        frame, _ETHERNET_LEN
    )
    header_len = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or header_len < _IPV4_LEN:
        return None
    transport = _ETHERNET_LEN + header_len
    src_port = dst_port = 0
    payload = transport
    first_fragment = fragment & 0x1FFF == 0
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and first_fragment and len(frame) >= transport + _PORTS.size:
        src_port, dst_port = _PORTS.unpack_from(frame, transport)
        if proto == IPPROTO_UDP:
            payload += _UDP.size
        elif len(frame) >= transport + _TCP.size:
            payload += (frame[transport + 12] >> 4) * 4
    return ParsedFrame(src, dst, src_port, dst_port, proto, payload, tos >> 2)


def build_frame(
    src_mac: bytes,
    src_ip: int,
    dst_ip: int,
    src_port: int,
    dst_port: int,
    proto: int,
    wire_len: int,
    flow_id: int,
    sequence: int,
    sent_ns: int,
) -> bytes:
    """A replayed frame: Ethernet, IPv4 (with checksum), a TCP or UDP header for those protocols,
    the stamp, and zero padding up to the trace packet's length (within Ethernet's limits).
    Addresses are host-order integers, as the trace reader gives them; `sent_ns` is the send time
    (`time.time_ns()`)."""
    if proto == IPPROTO_TCP:
        transport = _TCP.pack(src_port, dst_port, sequence, 0, 5 << 4, 0x10, 65535, 0, 0)
    elif proto == IPPROTO_UDP:
        transport = _UDP.pack(src_port, dst_port, _UDP.size + _STAMP.size, 0)
    else:
        transport = b""
    stamp = _STAMP.pack(STAMP_MAGIC, flow_id, sequence, sent_ns)
    headers_len = _ETHERNET_LEN + _IPV4_LEN + len(transport) + len(stamp)
    padding = bytes(max(min(wire_len, _MAX_FRAME), _MIN_FRAME, headers_len) - headers_len)
    ip_total = _IPV4_LEN + len(transport) + len(stamp) + len(padding)
    fields = [
        0x45,
        0,
        ip_total,
        sequence & 0xFFFF,
        0x4000,
        64,
        proto,
        0,
        src_ip.to_bytes(4, "big"),
        dst_ip.to_bytes(4, "big"),
    ]
    fields[7] = _ipv4_checksum(_IPV4.pack(*fields))
    return b"".join(
        (_ETHERNET.pack(REPLAY_DST_MAC, src_mac, ETH_P_IP), _IPV4.pack(*fields), transport, stamp, padding)
    )


def _ipv4_checksum(header: bytes) -> int:
    """RFC 1071 checksum of an IPv4 header whose checksum field is zero."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
