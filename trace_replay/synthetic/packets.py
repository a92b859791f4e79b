"""Flows to packets: each flow's blocks (handshake, messages, teardown), their packets' times, and
the packet fields the encoder writes."""

from __future__ import annotations

import dataclasses

import numpy as np

from trace_replay.synthetic.distributions import bounded_pareto, discrete_lomax, lognormal, pareto
from trace_replay.synthetic.mix import ClassTable
from trace_replay.synthetic.ragged import exclusive_cumsum_by_group, group_starts
from trace_replay.synthetic.sessions import Flows, Paths
from trace_replay.synthetic.wire import (
    ACK,
    FIN,
    IP_HEADER,
    IP_MTU,
    MSS,
    PROTO_ICMP,
    PROTO_TCP,
    PSH,
    RST,
    SYN,
    TCP_SYN_OPTIONS,
)

_ROUND_ALPHA = 1.5
_THINK_ALPHA = 1.5
_MAX_ROUNDS = 2_000
_MAX_THINK_S = 600.0
_MAX_FLOW_BYTES = 50e6
_SERVICE_MEDIAN_US = 500.0

_KIND_HANDSHAKE, _KIND_REJECT, _KIND_TEARDOWN, _KIND_TCP_DATA, _KIND_DATAGRAM = range(5)
_CONTROL_FLAGS = {
    _KIND_HANDSHAKE: np.array([SYN, SYN | ACK, ACK]),
    _KIND_REJECT: np.array([SYN, RST | ACK]),
    _KIND_TEARDOWN: np.array([FIN | ACK, FIN | ACK, ACK]),
}
"""TCP flags of the packets of the fixed-shape blocks; the second packet is the server's."""
_PACKETS_PER_KIND = np.array([len(_CONTROL_FLAGS.get(kind, ())) for kind in range(5)])

PACKET_DTYPE = np.dtype([
    ("ts", "<i8"), ("src", "<u4"), ("dst", "<u4"), ("sport", "<u2"), ("dport", "<u2"),
    ("proto", "u1"), ("from_server", "u1"), ("tcp_flags", "u1"), ("ip_len", "<u2"), ("ip_id", "<u2"),
    ("seq", "<u4"), ("ack", "<u4"), ("tag", "<u4"),
])
"""One packet before encoding.  `seq` is the TCP sequence number or the message number of ICMP echo,
ESP and GRE; `ack` the TCP acknowledgement; `tag` the TCP window, ICMP echo id, ESP SPI or GRE call id."""


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Per block, the unit a flow is made of: a handshake, a refusal, a teardown or one message."""

    flow: np.ndarray
    kind: np.ndarray
    from_server: np.ndarray
    payload: np.ndarray
    """Message payload in bytes; -1 for a datagram request that gets no answer."""
    gap_us: np.ndarray
    """Time from the flow's previous packet to the block's first one."""
    round: np.ndarray
    segment: np.ndarray
    """Largest payload of one packet."""
    pacing_us: np.ndarray
    """Mean gap between the datagrams of one message."""


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Per packet of a batch of flows, in flow order: what it is and when it is seen."""

    flow: np.ndarray
    from_server: np.ndarray
    flags: np.ndarray
    payload: np.ndarray
    round: np.ndarray
    ts: np.ndarray
    packets_per_flow: np.ndarray


def draw_blocks(rng: np.random.Generator, flows: Flows, paths: Paths, table: ClassTable) -> Blocks:
    """Each flow: a handshake (or a refusal), request/response rounds, a teardown (TCP only).

    The flow's bulk payload, lognormal with a bounded Pareto tail, is spread over its rounds with
    exponential weights; rounds after the first wait a Pareto think time.
    """
    count = len(flows.cls)
    col = {name: values[flows.cls] for name, values in table.column.items()}
    tcp = flows.proto == PROTO_TCP
    rejected = tcp & (rng.random(count) < col["reject_share"])
    rounds = np.where(rejected, 0, discrete_lomax(rng, col["rounds"], _ROUND_ALPHA, _MAX_ROUNDS))
    in_tail = rng.random(count) < col["tail_share"]
    bulk = np.where(in_tail, bounded_pareto(rng, col["tail_bytes"], col["tail_alpha"], _MAX_FLOW_BYTES),
                    np.minimum(lognormal(rng, col["response_bytes"], col["response_sigma"], count),
                               _MAX_FLOW_BYTES))
    upload = rng.random(count) < col["upload_share"]

    round_flow = np.repeat(np.arange(count), rounds)
    round_index = np.arange(len(round_flow)) - np.repeat(group_starts(rounds), rounds)
    rcol = {name: values[round_flow] for name, values in col.items()}
    weight = rng.exponential(size=len(round_flow))
    flow_weight = np.bincount(round_flow, weights=weight, minlength=count)
    datagram = ~tcp[round_flow]
    smallest = np.where(datagram, 0, 1)  # a TCP message carries at least one byte
    round_bulk = np.maximum(np.rint(bulk[round_flow] * weight / flow_weight[round_flow]), smallest)
    request = np.maximum(np.rint(lognormal(rng, rcol["request_bytes"], 0.5, len(round_flow))), smallest)
    up = upload[round_flow]
    forward_bytes = np.where(up, round_bulk, request).astype(np.int64)
    echo = flows.proto[round_flow] == PROTO_ICMP
    reverse_bytes = np.where(echo, forward_bytes, np.where(up, request, round_bulk)).astype(np.int64)
    answered = ~datagram | (rng.random(len(round_flow)) < rcol["response_share"])
    think = pareto(rng, rcol["think_s"] * 1e6, _THINK_ALPHA, _MAX_THINK_S * 1e6)
    rtt = paths.rtt_us[round_flow]
    forward_gap = np.where(round_index == 0, np.where(datagram, 0.0, rtt / 2), think)
    reverse_gap = rtt + lognormal(rng, _SERVICE_MEDIAN_US, 1.0, len(round_flow))

    opens = tcp.astype(np.int64)
    closes = (tcp & ~rejected).astype(np.int64)
    blocks_per_flow = opens + 2 * rounds + closes
    first_block = group_starts(blocks_per_flow)
    total = int(blocks_per_flow.sum())
    flow = np.repeat(np.arange(count), blocks_per_flow)
    kind = np.full(total, _KIND_DATAGRAM)
    from_server = np.zeros(total, dtype=np.int64)
    payload = np.zeros(total, dtype=np.int64)
    gap = np.zeros(total)
    block_round = np.full(total, -1)

    kind[first_block[tcp]] = np.where(rejected[tcp], _KIND_REJECT, _KIND_HANDSHAKE)
    forward = first_block[round_flow] + opens[round_flow] + 2 * round_index
    reverse = forward + 1
    kind[forward] = kind[reverse] = np.where(datagram, _KIND_DATAGRAM, _KIND_TCP_DATA)
    from_server[reverse] = 1
    payload[forward], payload[reverse] = forward_bytes, np.where(answered, reverse_bytes, -1)
    gap[forward], gap[reverse] = forward_gap, reverse_gap
    block_round[forward] = block_round[reverse] = round_index
    closing = (first_block + blocks_per_flow - 1)[closes == 1]
    kind[closing] = _KIND_TEARDOWN
    gap[closing] = pareto(rng, col["linger_s"][closes == 1] * 1e6, _THINK_ALPHA, _MAX_THINK_S * 1e6)
    largest_datagram = np.minimum(col["datagram_bytes"], IP_MTU - IP_HEADER - col["l4_header"])
    segment = np.where(kind == _KIND_TCP_DATA, MSS, largest_datagram[flow].astype(np.int64))
    return Blocks(flow=flow, kind=kind, from_server=from_server, payload=payload, gap_us=gap,
                  round=block_round, segment=segment, pacing_us=col["pacing_s"][flow] * 1e6)


def lay_out(rng: np.random.Generator, blocks: Blocks, paths: Paths, start_us: np.ndarray) -> Timeline:
    """Expand blocks into packets and time them.

    A TCP message goes out in MSS segments spaced by the bottleneck's frame time, pausing one round
    trip after every window of segments; the receiver ACKs every second segment.  Datagrams are spaced
    by exponential gaps.  Every gap is jittered by up to 25%.
    """
    data_packets = np.where(blocks.payload < 0, 0, np.maximum(1, -(-blocks.payload // blocks.segment)))
    packets_per_block = np.select([blocks.kind == _KIND_TCP_DATA, blocks.kind == _KIND_DATAGRAM],
                                  [data_packets + data_packets // 2, data_packets],
                                  _PACKETS_PER_KIND[blocks.kind])
    block = np.repeat(np.arange(len(blocks.kind)), packets_per_block)
    position = np.arange(len(block)) - np.repeat(group_starts(packets_per_block), packets_per_block)
    flow = blocks.flow[block]
    kind = blocks.kind[block]
    rtt, frame = paths.rtt_us[flow], paths.frame_us[flow]
    from_server = blocks.from_server[block].copy()
    flags = np.zeros(len(block), dtype=np.int64)
    payload = np.zeros(len(block), dtype=np.int64)
    gap = np.zeros(len(block))

    # Handshake (SYN, SYN-ACK, ACK), refusal (SYN, RST-ACK), teardown (FIN, FIN, ACK): the second packet
    # comes from the server one round trip after the first.
    for block_kind, pattern in _CONTROL_FLAGS.items():
        here = kind == block_kind
        from_server[here] = position[here] == 1
        flags[here] = pattern[position[here]]
        gap[here] = np.where(position[here] == 1, rtt[here], np.maximum(1.0, rtt[here] / 2))

    m = data_packets[block]
    full_pairs = 3 * (m // 2)
    data_index = np.where(position < full_pairs, 2 * (position // 3) + np.minimum(position % 3, 1), m - 1)
    size = np.where(data_index == m - 1, blocks.payload[block] - (m - 1) * blocks.segment[block],
                    blocks.segment[block])
    tcp_data = kind == _KIND_TCP_DATA
    ack = tcp_data & (position < full_pairs) & (position % 3 == 2)
    segment = tcp_data & ~ack
    from_server[ack] ^= 1
    payload[segment] = size[segment]
    flags[tcp_data] = ACK
    flags[segment & (data_index == m - 1)] = PSH | ACK
    window_full = data_index % paths.window[flow] == 0
    gap[segment] = frame[segment] + np.where(window_full[segment], rtt[segment], 0.0)
    gap[ack] = np.maximum(1.0, frame[ack] / 4)

    datagram = kind == _KIND_DATAGRAM
    payload[datagram] = size[datagram]
    gap[datagram] = rng.exponential(size=int(datagram.sum())) * blocks.pacing_us[block[datagram]]

    first_of_block = position == 0
    gap[first_of_block] = blocks.gap_us[block[first_of_block]]
    gap = np.maximum(np.rint(gap * (0.75 + 0.5 * rng.random(len(block)))), 1).astype(np.int64)
    packets_per_flow = np.bincount(flow, minlength=len(start_us))
    gap[group_starts(packets_per_flow)[packets_per_flow > 0]] = 0
    ts = start_us[flow] + exclusive_cumsum_by_group(gap, packets_per_flow) + gap
    return Timeline(flow=flow, from_server=from_server, flags=flags, payload=payload,
                    round=blocks.round[block], ts=ts, packets_per_flow=packets_per_flow)


def assemble(rng: np.random.Generator, flows: Flows, timeline: Timeline, addresses: np.ndarray,
             table: ClassTable) -> np.ndarray:
    """The PACKET_DTYPE rows of a timeline: addresses, lengths and per-direction counters (TCP sequence
    space, IP ids); `addresses` maps host indices to IPv4 addresses."""
    flow, flags, payload = timeline.flow, timeline.flags, timeline.payload
    count = len(timeline.packets_per_flow)
    proto = flows.proto[flow]
    client_addr = addresses[flows.client[flow]].astype(np.int64)
    reverse = timeline.from_server.astype(bool)
    side = reverse.astype(np.int64)
    packets = np.zeros(len(flow), dtype=PACKET_DTYPE)
    packets["ts"] = timeline.ts
    packets["proto"] = proto
    packets["from_server"] = side
    packets["src"] = np.where(reverse, flows.server_addr[flow], client_addr)
    packets["dst"] = np.where(reverse, client_addr, flows.server_addr[flow])
    packets["sport"] = np.where(reverse, flows.server_port[flow], flows.client_port[flow])
    packets["dport"] = np.where(reverse, flows.client_port[flow], flows.server_port[flow])
    packets["tcp_flags"] = flags
    options = np.where(flags & SYN, len(TCP_SYN_OPTIONS), 0)
    l4_header = table.column["l4_header"][flows.cls[flow]].astype(np.int64)
    packets["ip_len"] = IP_HEADER + l4_header + options + payload

    sequence_use = payload + ((flags & (SYN | FIN)) != 0)
    per_flow = timeline.packets_per_flow
    sent_before = np.stack([exclusive_cumsum_by_group(sequence_use * (side == d), per_flow)
                            for d in (0, 1)])
    sent_count = np.stack([exclusive_cumsum_by_group((side == d).astype(np.int64), per_flow)
                           for d in (0, 1)])
    packet = np.arange(len(flow))
    own_sent, other_sent = sent_before[side, packet], sent_before[1 - side, packet]
    own_count = sent_count[side, packet]
    isn = rng.integers(0, 1 << 32, (2, count))
    ip_id = rng.integers(0, 1 << 16, (2, count))
    tag = rng.integers(1, 1 << 32, (2, count))
    window = np.array([65535, 64240, 17520, 5840, 32768])[rng.integers(0, 5, (2, count))]
    tcp = proto == PROTO_TCP
    message_number = np.where(proto == PROTO_ICMP, timeline.round, own_count) + 1
    packets["seq"] = np.where(tcp, isn[side, flow] + own_sent, message_number) & 0xFFFFFFFF
    packets["ack"] = np.where(tcp & (flags & ACK != 0), isn[1 - side, flow] + other_sent, 0) & 0xFFFFFFFF
    packets["ip_id"] = (ip_id[side, flow] + own_count) & 0xFFFF
    packets["tag"] = np.select([tcp, proto == PROTO_ICMP], [window[side, flow], tag[0, flow] & 0xFFFF],
                               tag[side, flow])
    return packets
