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


def tcp(src: str, sport: int, dst: str, dport: int, payload_len: int = 0, **ip_options) -> bytes:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_ACK, data=bytes(payload_len))
    return ipv4(src, dst, dpkt.ip.IP_PROTO_TCP, segment, **ip_options)


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
