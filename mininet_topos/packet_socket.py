"""Packet (AF_PACKET) sockets, through which the testbed's sender, NFs and sink see and send raw frames.

They need CAP_NET_RAW (root, as in Mininet hosts).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
"""The packet type (in recvfrom's address) of a frame this host sent: a reader skips its own frames."""
_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, _PACKET_MR_PROMISC, _PACKET_STATISTICS = 263, 1, 1, 6
_SO_RCVBUFFORCE = 33

RECEIVE_BUFFER_BYTES = 32 << 20
"""Kernel queue of a packet socket. The default (about 200 kB, some 100 frames) overflows on a trace's
bursts whenever the reading process waits for a core, which would lose packets outside the design."""


def open_packet_socket(interface: str, *, promiscuous: bool, timeout: float | None = None) -> socket.socket:
    """An AF_PACKET socket bound to `interface` that sees every frame on it (and sends raw frames).
    Promiscuous mode is a membership of this socket, so the kernel drops it when the socket closes."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError as exc:
        raise PermissionError(f"opening a packet socket on {interface} needs CAP_NET_RAW (root)") from exc
    try:
        sock.bind((interface, 0))
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
        if promiscuous:
            index = socket.if_nametoindex(interface)
            membership = struct.pack("iHH8s", index, _PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, membership)
        sock.settimeout(timeout)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot open a packet socket on interface {interface!r}: {exc}") from exc
    return sock


def socket_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped on `sock` because its queue was full, since the previous call
    (reading PACKET_STATISTICS resets the kernel's counters)."""
    _, drops = struct.unpack("II", sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
    return drops


def interface_mac(interface: str) -> bytes:
    return bytes.fromhex(Path(f"/sys/class/net/{interface}/address").read_text().strip().replace(":", ""))
