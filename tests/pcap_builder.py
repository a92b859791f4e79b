"""Small pcap files for the trace_replay tests.

Frames are built with dpkt; records are written with struct rather than dpkt's Writer, because the
tests need what it cannot do: header-only records whose original length exceeds the captured
bytes, either byte order, and nanosecond timestamps.
"""

from __future__ import annotations

import gzip
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import dpkt

ETHERNET, RAW_IP, LINUX_SLL = 1, 101, 113
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


@dataclass(frozen=True)
class Frame:
    ts: float
    data: bytes  # the whole frame as on the wire; the file keeps at most snaplen bytes of it


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes | dpkt.Packet = b"",
    *,
    fragment_offset: int = 0,
    more_fragments: bool = False,
    options: bytes = b"",
) -> bytes:
    """An IPv4 packet; fragment_offset counts bytes, as dpkt does."""
    packet = dpkt.ip.IP(
        src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, data=payload, opts=options
    )
    packet.hl = 5 + len(options) // 4  # dpkt leaves the header length at 5 words
    packet.offset = fragment_offset
    packet.mf = int(more_fragments)
    return bytes(packet)


def fragmented_udp(ident: int, src: str = "10.0.0.1", sport: int = 7, size: int = 3000) -> list[bytes]:
    """The IPv4 fragments (1480 payload bytes each) of one UDP datagram of `size` bytes, IP id `ident`."""
    datagram = bytes(dpkt.udp.UDP(sport=sport, dport=9, data=bytes(size)))
    pieces = []
    for at in range(0, len(datagram), 1480):
        packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton("10.0.0.2"), p=dpkt.ip.IP_PROTO_UDP,
                            id=ident, data=datagram[at : at + 1480])
        packet.offset, packet.mf = at, int(at + 1480 < len(datagram))
        pieces.append(bytes(packet))
    return pieces


def tcp(src: str, sport: int, dst: str, dport: int, payload_len: int = 0, **ip_options) -> bytes:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_ACK, data=bytes(payload_len))
    return ipv4(src, dst, dpkt.ip.IP_PROTO_TCP, segment, **ip_options)


def ipv6(src: str, dst: str, next_header: int, payload: bytes | dpkt.Packet = b"") -> bytes:
    """An IPv6 packet; `payload` starts with any extension headers `next_header` announces."""
    header = struct.pack(">IHBB", 6 << 28, len(bytes(payload)), next_header, 64)
    return header + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + bytes(payload)


def tcp6(src: str, sport: int, dst: str, dport: int, payload_len: int = 0) -> bytes:
    return ipv6(src, dst, dpkt.ip.IP_PROTO_TCP, dpkt.tcp.TCP(sport=sport, dport=dport, data=bytes(payload_len)))


def udp6(src: str, sport: int, dst: str, dport: int, payload_len: int = 0) -> bytes:
    return ipv6(src, dst, dpkt.ip.IP_PROTO_UDP, dpkt.udp.UDP(sport=sport, dport=dport, data=bytes(payload_len)))


def udp(src: str, sport: int, dst: str, dport: int, payload_len: int = 0) -> bytes:
    return ipv4(
        src, dst, dpkt.ip.IP_PROTO_UDP, dpkt.udp.UDP(sport=sport, dport=dport, data=bytes(payload_len))
    )


def icmp(src: str, dst: str, payload_len: int = 56) -> bytes:
    echo = dpkt.icmp.ICMP(
        type=dpkt.icmp.ICMP_ECHO, data=dpkt.icmp.ICMP.Echo(id=7, seq=1, data=bytes(payload_len))
    )
    return ipv4(src, dst, dpkt.ip.IP_PROTO_ICMP, echo)


def ethernet(
    ip_packet: bytes, *, vlan: int | None = None, ethertype: int = dpkt.ethernet.ETH_TYPE_IP
) -> bytes:
    tags = [dpkt.ethernet.VLANtag8021Q(id=vlan)] if vlan is not None else []
    return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=ethertype, vlan_tags=tags, data=ip_packet))


def tagged(ip_packet: bytes, tags: list[tuple[int, int]], ethertype: int = dpkt.ethernet.ETH_TYPE_IP) -> bytes:
    """An Ethernet frame with the (TPID, VLAN id) tags given, outermost first: 802.1ad QinQ is
    [(0x88A8, outer), (0x8100, inner)]."""
    header = MAC_B + MAC_A + b"".join(struct.pack(">HH", tpid, vid) for tpid, vid in tags)
    return header + struct.pack(">H", ethertype) + ip_packet


def linux_cooked(ip_packet: bytes) -> bytes:
    return bytes(dpkt.sll.SLL(type=0, ethtype=dpkt.ethernet.ETH_TYPE_IP, data=ip_packet))


def pcap_bytes(
    frames: list[Frame],
    *,
    link_type: int = ETHERNET,
    snaplen: int = 68,
    byte_order: str = "<",
    nanosecond: bool = False,
) -> bytes:
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    units = 10**9 if nanosecond else 10**6
    parts = [struct.pack(f"{byte_order}IHHiIII", magic, 2, 4, 0, 0, snaplen, link_type)]
    for frame in frames:
        captured = frame.data[:snaplen]
        ticks = round(frame.ts * units)
        parts.append(
            struct.pack(f"{byte_order}IIII", ticks // units, ticks % units, len(captured), len(frame.data))
        )
        parts.append(captured)
    return b"".join(parts)


def write_pcap(path: Path, frames: list[Frame], *, compress: bool = False, **layout) -> Path:
    data = pcap_bytes(frames, **layout)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def pcapng_bytes(
    frames: list[Frame],
    *,
    link_type: int = ETHERNET,
    snaplen: int = 68,
    byte_order: str = "<",
    tsresol: int | None = None,
    simple: bool = False,
) -> bytes:
    """A pcapng file: a section header, one interface (with if_tsresol 10^-tsresol s when given) and an
    enhanced packet block per frame (a simple packet block when `simple`, which has no timestamp)."""

    def block(kind: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        length = 12 + len(body)
        return struct.pack(f"{byte_order}II", kind, length) + body + struct.pack(f"{byte_order}I", length)

    def options(*pairs: tuple[int, bytes]) -> bytes:
        coded = b"".join(struct.pack(f"{byte_order}HH", code, len(value)) + value + bytes(-len(value) % 4)
                         for code, value in pairs)
        return coded + struct.pack(f"{byte_order}HH", 0, 0) if pairs else b""

    units = 10 ** (tsresol if tsresol is not None else 6)
    parts = [block(0x0A0D0D0A, struct.pack(f"{byte_order}IHHq", 0x1A2B3C4D, 1, 0, -1)),
             block(1, struct.pack(f"{byte_order}HHI", link_type, 0, snaplen)
                   + options(*([(9, bytes([tsresol]))] if tsresol is not None else [])))]
    for frame in frames:
        captured = frame.data[:snaplen]
        if simple:
            parts.append(block(3, struct.pack(f"{byte_order}I", len(frame.data)) + captured))
            continue
        ticks = round(frame.ts * units)
        parts.append(block(6, struct.pack(f"{byte_order}IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(captured),
                                          len(frame.data)) + captured))
    return b"".join(parts)
