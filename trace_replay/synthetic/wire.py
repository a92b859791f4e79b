"""Header sizes, protocol numbers and TCP flags of the generated frames.

Shared by the traffic model, which sizes packets, and the encoder, which writes them.
"""

from __future__ import annotations

import numpy as np

SNAPLEN = 68
"""Bytes kept per packet, as in the header-only LBNL/ICSI datasets."""
ETHERNET_HEADER = 14
ETHERNET_MIN_FRAME = 60
IP_HEADER = 20
TCP_HEADER = 20
IP_MTU = 1500
MSS = 1460
TCP_SYN_OPTIONS = bytes([2, 4, 0x05, 0xB4, 1, 1, 4, 2])  # MSS 1460, NOP, NOP, SACK permitted

PROTO_ICMP, PROTO_IGMP, PROTO_TCP, PROTO_UDP, PROTO_GRE, PROTO_ESP = 1, 2, 6, 17, 47, 50
L4_HEADER = {PROTO_ICMP: 8, PROTO_IGMP: 8, PROTO_TCP: TCP_HEADER, PROTO_UDP: 8, PROTO_ESP: 8, PROTO_GRE: 16}
"""Transport header bytes before the payload (GRE: enhanced header with key and sequence, then PPP)."""
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
"""TCP flags."""


def frame_length(ip_len: np.ndarray) -> np.ndarray:
    """Wire length of each Ethernet frame: header and IP packet, padded to the minimum frame."""
    return np.maximum(ip_len.astype(np.int64) + ETHERNET_HEADER, ETHERNET_MIN_FRAME)
