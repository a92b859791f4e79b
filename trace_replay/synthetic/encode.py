"""Packets to libpcap bytes: header-only Ethernet/IPv4 frames of TCP, UDP, ICMP, ESP, GRE and IGMP.

Each frame is what a real stack would send with an all-zero payload, cut at SNAPLEN; the IPv4, TCP,
UDP, ICMP and IGMP checksums hold for that frame, so tshark, Zeek and our reader accept every record.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from trace_replay.synthetic import wire
from trace_replay.synthetic.network import is_internal
from trace_replay.synthetic.wire import (
    ETHERNET_HEADER,
    IP_HEADER,
    SNAPLEN,
    SYN,
    TCP_HEADER,
    TCP_SYN_OPTIONS,
    frame_length,
)

TRACE_EPOCH = 1103068800
"""2004-12-15 00:00:00 UTC, while the LBNL/ICSI traces were being recorded; only offsets from it matter."""
_LINKTYPE_ETHERNET = 1
_ROUTER_MAC = bytes([0x00, 0x0B, 0x5F, 0x37, 0x00, 0x01])
_WRITE_BATCH = 1 << 16

_HEAD_DTYPE = np.dtype([
    ("sec", "<u4"), ("usec", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4"),  # libpcap record header
    ("dst_oui", ">u2"), ("dst_nic", ">u4"), ("src_oui", ">u2"), ("src_nic", ">u4"), ("ethertype", ">u2"),
    ("vhl", "u1"), ("tos", "u1"), ("len", ">u2"), ("id", ">u2"), ("frag", ">u2"), ("ttl", "u1"),
    ("proto", "u1"), ("sum", ">u2"), ("src", ">u4"), ("dst", ">u4"),
])
"""Record header, Ethernet header and IPv4 header of one packet, laid out as written."""
_RECORD_HEADER = 16
_IP_OFFSET = _RECORD_HEADER + ETHERNET_HEADER
_L4_OFFSET = _IP_OFFSET + IP_HEADER
_TCP_DTYPE = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"), ("off", "u1"),
                       ("flags", "u1"), ("win", ">u2"), ("sum", ">u2"), ("urp", ">u2"), ("opt", "u1", 8)])
_UDP_DTYPE = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("len", ">u2"), ("sum", ">u2")])
_ICMP_DTYPE = np.dtype([("type", "u1"), ("code", "u1"), ("sum", ">u2"), ("id", ">u2"), ("seq", ">u2")])
_ESP_DTYPE = np.dtype([("spi", ">u4"), ("seq", ">u4")])
_GRE_DTYPE = np.dtype([("flags", ">u2"), ("ptype", ">u2"), ("len", ">u2"), ("call", ">u2"), ("seq", ">u4"),
                       ("ppp", "u1", 4)])
_IGMP_DTYPE = np.dtype([("type", "u1"), ("max_resp", "u1"), ("sum", ">u2"), ("group", ">u4")])
_ROUTER_OUI = int.from_bytes(_ROUTER_MAC[:2], "big")
_ROUTER_NIC = int.from_bytes(_ROUTER_MAC[2:], "big")


def _checksum(words: np.ndarray) -> np.ndarray:
    """RFC 1071 Internet checksum of each row of big-endian 16-bit words."""
    total = words.sum(axis=1, dtype=np.uint64)
    while np.any(total >> 16):
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).astype(np.uint16)


def _words(rows: np.ndarray) -> np.ndarray:
    """Big-endian 16-bit words of each record of a structured array."""
    return rows.view(np.uint8).reshape(len(rows), -1).view(">u2")


def _pseudo_header(head: np.ndarray) -> np.ndarray:
    src, dst = head["src"].astype(np.uint64), head["dst"].astype(np.uint64)
    return np.stack([src >> 16, src & 0xFFFF, dst >> 16, dst & 0xFFFF, head["proto"].astype(np.uint64),
                     head["len"].astype(np.uint64) - IP_HEADER], axis=1)


def _host_ttl(addresses: np.ndarray) -> np.ndarray:
    """A fixed TTL per source: the OS's initial TTL less the hops to the monitor, both hashed from it."""
    mixed = (addresses.astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    initial = np.array([128, 128, 128, 64, 64, 255], dtype=np.int64)[(mixed >> np.uint64(8)) % np.uint64(6)]
    spread = (mixed >> np.uint64(20)).astype(np.int64)
    hops = np.where(is_internal(addresses), spread % 3, 6 + spread % 14)
    return initial - hops


def _encode(packets: np.ndarray) -> bytes:
    """libpcap records of `packets`: the first SNAPLEN bytes of each frame, whose payload is all zeros.

    Internal hosts get a locally administered MAC built from their address; others sit behind the router.
    """
    count = len(packets)
    proto = packets["proto"]
    ip_len = packets["ip_len"].astype(np.int64)
    on_wire = frame_length(ip_len)
    caplen = np.minimum(on_wire, SNAPLEN)

    head = np.zeros(count, dtype=_HEAD_DTYPE)
    head["sec"] = TRACE_EPOCH + packets["ts"] // 1_000_000
    head["usec"] = packets["ts"] % 1_000_000
    head["caplen"] = caplen
    head["wirelen"] = on_wire
    for end in ("src", "dst"):
        internal = is_internal(packets[end])
        head[f"{end}_oui"] = np.where(internal, 0x0200, _ROUTER_OUI)
        head[f"{end}_nic"] = np.where(internal, packets[end], _ROUTER_NIC)
    head["ethertype"] = 0x0800
    head["vhl"] = 0x45
    head["len"] = ip_len
    head["id"] = packets["ip_id"]
    head["frag"] = np.where(proto == wire.PROTO_TCP, 0x4000, 0)  # don't fragment
    head["ttl"] = np.where(proto == wire.PROTO_IGMP, 1, _host_ttl(packets["src"]))
    head["proto"] = proto
    head["src"] = packets["src"]
    head["dst"] = packets["dst"]
    head["sum"] = _checksum(_words(head)[:, _IP_OFFSET // 2:_L4_OFFSET // 2])

    rows = np.zeros((count, _RECORD_HEADER + SNAPLEN), dtype=np.uint8)
    rows[:, :_L4_OFFSET] = head.view(np.uint8).reshape(count, -1)
    for proto_number, encoder in _L4_ENCODERS.items():
        selected = np.flatnonzero(proto == proto_number)
        if len(selected):
            l4 = encoder(packets[selected], head[selected])
            l4_bytes = l4.view(np.uint8).reshape(len(selected), -1)
            rows[selected, _L4_OFFSET:_L4_OFFSET + l4_bytes.shape[1]] = l4_bytes
    keep = np.arange(rows.shape[1]) < (_RECORD_HEADER + caplen)[:, None]
    return rows[keep].tobytes()


def _encode_tcp(packets: np.ndarray, head: np.ndarray) -> np.ndarray:
    tcp = np.zeros(len(packets), dtype=_TCP_DTYPE)
    syn = (packets["tcp_flags"] & SYN) != 0
    tcp["sport"], tcp["dport"] = packets["sport"], packets["dport"]
    tcp["seq"], tcp["ack"] = packets["seq"], packets["ack"]
    tcp["off"] = np.where(syn, (TCP_HEADER + len(TCP_SYN_OPTIONS)) // 4, TCP_HEADER // 4) << 4
    tcp["flags"] = packets["tcp_flags"]
    tcp["win"] = packets["tag"]
    tcp["opt"][syn] = np.frombuffer(TCP_SYN_OPTIONS, dtype=np.uint8)
    tcp["sum"] = _checksum(np.concatenate([_pseudo_header(head), _words(tcp)], axis=1))
    return tcp


def _encode_udp(packets: np.ndarray, head: np.ndarray) -> np.ndarray:
    udp = np.zeros(len(packets), dtype=_UDP_DTYPE)
    udp["sport"], udp["dport"] = packets["sport"], packets["dport"]
    udp["len"] = head["len"] - IP_HEADER
    checksum = _checksum(np.concatenate([_pseudo_header(head), _words(udp)], axis=1))
    udp["sum"] = np.where(checksum == 0, 0xFFFF, checksum)
    return udp


def _encode_icmp(packets: np.ndarray, head: np.ndarray) -> np.ndarray:
    icmp = np.zeros(len(packets), dtype=_ICMP_DTYPE)
    icmp["type"] = np.where(packets["from_server"] == 1, 0, 8)  # echo reply, echo request
    icmp["id"] = packets["tag"]
    icmp["seq"] = packets["seq"]
    icmp["sum"] = _checksum(_words(icmp))
    return icmp


def _encode_esp(packets: np.ndarray, head: np.ndarray) -> np.ndarray:
    esp = np.zeros(len(packets), dtype=_ESP_DTYPE)
    esp["spi"], esp["seq"] = packets["tag"], packets["seq"]
    return esp


def _encode_gre(packets: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Enhanced GRE (RFC 2637, PPTP) carrying MPPE-compressed PPP, so no inner IP header is exposed."""
    gre = np.zeros(len(packets), dtype=_GRE_DTYPE)
    gre["flags"] = 0x3001  # key and sequence number present, version 1
    gre["ptype"] = 0x880B
    gre["len"] = head["len"] - IP_HEADER - 12  # everything after the 12-byte GRE header, PPP included
    gre["call"] = packets["tag"] & 0xFFFF
    gre["seq"] = packets["seq"]
    gre["ppp"] = (0xFF, 0x03, 0x00, 0xFD)
    return gre


def _encode_igmp(packets: np.ndarray, head: np.ndarray) -> np.ndarray:
    igmp = np.zeros(len(packets), dtype=_IGMP_DTYPE)
    igmp["type"] = 0x16  # IGMPv2 membership report
    igmp["group"] = packets["dst"]
    igmp["sum"] = _checksum(_words(igmp))
    return igmp


_L4_ENCODERS = {wire.PROTO_TCP: _encode_tcp, wire.PROTO_UDP: _encode_udp, wire.PROTO_ICMP: _encode_icmp,
                wire.PROTO_ESP: _encode_esp, wire.PROTO_GRE: _encode_gre, wire.PROTO_IGMP: _encode_igmp}


class PcapWriter:
    """Classic libpcap output (microsecond timestamps, Ethernet), encoded in large batches."""

    _GLOBAL_HEADER = np.dtype([("magic", "<u4"), ("major", "<u2"), ("minor", "<u2"), ("zone", "<i4"),
                               ("sigfigs", "<u4"), ("snaplen", "<u4"), ("linktype", "<u4")])

    def __init__(self, out: BinaryIO):
        self._out = out
        self._batch: list[np.ndarray] = []
        self._batched = 0
        self.packets = 0
        self.bytes = 0
        self.first_us = 0
        self.last_us = 0
        out.write(np.array([(0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, _LINKTYPE_ETHERNET)],
                           dtype=self._GLOBAL_HEADER).tobytes())

    def add(self, packets: np.ndarray) -> None:
        if len(packets):
            self._batch.append(packets)
            self._batched += len(packets)
        if self._batched >= _WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        packets = np.concatenate(self._batch)
        self._batch, self._batched = [], 0
        if not self.packets:
            self.first_us = int(packets["ts"][0])
        self.last_us = int(packets["ts"][-1])
        self.packets += len(packets)
        self.bytes += int(frame_length(packets["ip_len"]).sum())
        self._out.write(_encode(packets))
