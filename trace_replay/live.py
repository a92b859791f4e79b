"""Live trace replay on the testbed: a sender that replays a pcap's flows as raw Ethernet frames, and
a sink that counts what arrives, per flow, and measures each packet's one-way delay.

The sender rebuilds every IPv4 and IPv6 packet of the trace with the trace's addresses, ports and protocol
(both directions of each connection, in trace order), paces it on the trace clock divided by
`speed`, and stamps its payload with (magic, flow id, sequence number, send time). The sink
recognises the stamp, so per-flow loss is the sender's count minus the sink's, an arrival whose
sequence number is below one already seen for its flow is a reordering, and arrival minus send time
is the packet's one-way delay (sender and sink share the machine's clock).

    python -m trace_replay.live send TRACE.pcap.gz --interface src-eth0 --out sent.json --speed 2
    python -m trace_replay.live sink --interface sink-eth0 --out received.json

Both use AF_PACKET sockets, so they need CAP_NET_RAW (root, as in Mininet hosts).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mininet_topos.frames import CONTROLLER_PATH_DSCP, build_frame, parse_frame
from mininet_topos.lifecycle import stop_on_sigterm, write_json_atomically
from mininet_topos.packet_socket import PACKET_OUTGOING, interface_mac, open_packet_socket, socket_drops
from trace_replay.flows import flow_identities, flow_keys
from trace_replay.pcap import PACKET_DTYPE, PcapReader
from twin.flow import FlowKey

LOG = logging.getLogger(__name__)
DEFAULT_MAX_PPS = 2000.0
"""Peak replay rate the testbed is sized for on two cores (docs/testbed.md)."""
DEFAULT_LINE_RATE_PPS = 4000.0
"""Packets leave the source no faster than this, as through an access link: a trace burst (the
sample holds NFS bursts of hundreds of packets within a few ms) is spread out behind it, in order.
Unpaced, a new flow's burst would reach the switch before the controller could install its rules."""


# ---------------------------------------------------------------------------------------------
# The sender


REPLAY_DTYPE = np.dtype(
    [
        ("ts", "<f8"),
        ("flow", "<u4"),
        ("src_ip", "<u4"),
        ("dst_ip", "<u4"),
        ("src_port", "<u2"),
        ("dst_port", "<u2"),
        ("proto", "u1"),
        ("wire_len", "<u4"),
        ("is_ipv6", "?"),
        ("src_ip6", "V16"),
        ("dst_ip6", "V16"),
    ]
)
"""One packet to send: IPv4 addresses as host-order integers in src_ip/dst_ip, IPv6 ones (is_ipv6) as their 16
bytes in src_ip6/dst_ip6."""


@dataclass(frozen=True, eq=False)
class ReplaySchedule:
    """The packets to replay, in trace order, with flow ids numbered by first appearance."""

    packets: np.ndarray  # REPLAY_DTYPE; ts is seconds since the first packet, already divided by speed
    flows: list[FlowKey]  # flows[flow id]

    @property
    def duration_s(self) -> float:
        return float(self.packets["ts"][-1]) if len(self.packets) else 0.0

    def peak_pps(self) -> int:
        """Most packets sent in any one-second window starting at a packet."""
        ts = self.packets["ts"]
        return int((np.searchsorted(ts, ts + 1.0) - np.arange(len(ts))).max()) if len(ts) else 0


def load_schedule(
    path: str | os.PathLike,
    *,
    speed: float = 1.0,
    start_s: float = 0.0,
    duration_s: float | None = None,
    max_flows: int | None = None,
    max_pps: float = DEFAULT_MAX_PPS,
    line_rate_pps: float = DEFAULT_LINE_RATE_PPS,
) -> ReplaySchedule:
    """The replay of a trace's IPv4 and IPv6 packets from `start_s` (trace seconds after its first packet) for
    `duration_s`, keeping the `max_flows` flows with most packets there, played `speed` times faster
    and paced to at most `line_rate_pps` (a packet waits for the previous one's slot, order kept).

    Raises ValueError if the result is empty or would exceed `max_pps` in some second: the testbed
    only measures the NFs while the machine itself keeps up. Other packets (not IP, or malformed) are left
    out.
    """
    for name, value in (("speed", speed), ("max_pps", max_pps), ("line_rate_pps", line_rate_pps)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
    if start_s < 0 or (duration_s is not None and not duration_s > 0):
        raise ValueError(f"need start_s >= 0 and duration_s > 0, not {start_s!r} and {duration_s!r}")
    if max_flows is not None and max_flows < 1:
        raise ValueError(f"max_flows must be at least 1, not {max_flows!r}")

    reader = PcapReader(path)
    batches = [batch[batch["is_ipv4"] | batch["is_ipv6"]] for batch in reader]
    packets = np.concatenate(batches) if batches else np.zeros(0, PACKET_DTYPE)
    if len(packets):
        offset = packets["ts"] - packets["ts"][0]
        end = np.inf if duration_s is None else start_s + duration_s
        packets = packets[(offset >= start_s) & (offset < end)]
    if not len(packets):
        raise ValueError(
            f"{path}: no IP packets in the chosen window (start {start_s} s, duration {duration_s} s)"
        )

    low, high = flow_keys(packets)
    _, first_index, flow_of_packet = np.unique(
        np.stack((low, high), axis=1), axis=0, return_index=True, return_inverse=True
    )
    flow_of_packet = flow_of_packet.reshape(-1)
    if max_flows is not None and max_flows < len(first_index):
        counts = np.bincount(flow_of_packet)
        keep = np.lexsort((first_index, -counts))[:max_flows]  # busiest first, earliest on ties
        kept = np.isin(flow_of_packet, keep)
        packets, flow_of_packet = packets[kept], flow_of_packet[kept]
        _, first_index, flow_of_packet = np.unique(flow_of_packet, return_index=True, return_inverse=True)
    # Renumber flows by first appearance, so flow ids read in trace order.
    by_appearance = np.argsort(first_index)
    flow_ids = np.empty_like(by_appearance)
    flow_ids[by_appearance] = np.arange(len(by_appearance))

    schedule = np.zeros(len(packets), REPLAY_DTYPE)
    schedule["ts"] = paced((packets["ts"] - packets["ts"][0]) / speed, line_rate_pps)
    schedule["flow"] = flow_ids[flow_of_packet]
    for field in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "wire_len", "is_ipv6"):
        schedule[field] = packets[field]
    ipv6 = schedule["is_ipv6"]
    if ipv6.any():  # the reader's numbers of IPv6 addresses become the addresses
        for field in ("src_ip", "dst_ip"):
            schedule[f"{field}6"][ipv6] = reader.addresses.packed(schedule[field][ipv6])
            schedule[field][ipv6] = 0
    flows = flow_identities(*flow_keys(schedule[np.sort(first_index)], reader.addresses), reader.addresses)
    result = ReplaySchedule(schedule, flows)
    if (peak := result.peak_pps()) > max_pps:
        raise ValueError(
            f"{path}: the replay would peak at {peak} packets/s at speed {speed:g}, above the limit of "
            f"{max_pps:g}; lower the speed or max_flows, or raise max_pps"
        )
    return result


def paced(ts: np.ndarray, rate_pps: float) -> np.ndarray:
    """Sorted send times delayed so that consecutive packets are at least 1/rate_pps apart:
    t'_i = max(t_i, t'_(i-1) + 1/rate), in closed form i/rate + max_(j<=i) (t_j - j/rate)."""
    slots = np.arange(len(ts)) / rate_pps
    return slots + np.maximum.accumulate(ts - slots) if len(ts) else ts


def replay(schedule: ReplaySchedule, interface: str, sent_log: str | os.PathLike) -> dict:
    """Send the schedule out of `interface` on its clock; returns the sent log, which is also written
    to `sent_log` when the replay ends for any reason (so an interrupted run still accounts for
    every packet it sent). Packets that fall behind the clock go out at once, and the log says by
    how much the sender lagged at worst."""
    sent = np.zeros(len(schedule.flows), np.int64)
    log = {"interface": interface, "flows": {}, "packets_sent": 0, "max_lag_ms": 0.0}
    src_mac = interface_mac(interface)
    sock = open_packet_socket(interface, promiscuous=False)
    started = time.monotonic()
    max_lag = 0.0
    try:
        log["started"] = time.time()
        for row in schedule.packets:
            due = started + row["ts"]
            lag = time.monotonic() - due
            if lag < 0:
                time.sleep(-lag)
            else:
                max_lag = max(max_lag, lag)
            flow = int(row["flow"])
            ipv6 = bool(row["is_ipv6"])
            sock.send(
                build_frame(
                    src_mac,
                    row["src_ip6"].tobytes() if ipv6 else int(row["src_ip"]),
                    row["dst_ip6"].tobytes() if ipv6 else int(row["dst_ip"]),
                    int(row["src_port"]),
                    int(row["dst_port"]),
                    int(row["proto"]),
                    int(row["wire_len"]),
                    flow,
                    int(sent[flow]),
                    time.time_ns(),
                )
            )
            sent[flow] += 1
    finally:
        sock.close()
        log["finished"] = time.time()
        log["packets_sent"] = int(sent.sum())
        log["max_lag_ms"] = round(max_lag * 1000, 3)
        log["flows"] = {
            str(flow): {"key": list(key), "sent": int(count)}
            for flow, (key, count) in enumerate(zip(schedule.flows, sent))
            if count
        }
        write_json_atomically(sent_log, log)
    return log


# ---------------------------------------------------------------------------------------------
# The sink


DELAY_BIN_NS = 1_000_000_000
"""The sink averages each flow's one-way delays over bins of this much arrival time: the controller's
period (1 s), so a bin's mean is what an SLA per period judges."""


class SinkCounters:
    """Per-flow arrival counters and one-way delays of replayed frames.

    A frame is reordered when a later frame of its flow *in the same direction* arrived first: order is
    a per-direction property (TCP's), and the two directions take different rules, so a switch may
    interleave them differently than the trace. A reordered frame counts as set-up reordering when the
    controller forwarded it itself. A frame's delay is its arrival time minus the send time in its
    stamp (one clock: sender and sink share the machine); the sink keeps, per flow and per
    DELAY_BIN_NS of arrival time, the packet count and the delay sum (the bins' means in `snapshot`).
    """

    def __init__(self):
        # flow id -> [key, received, reordered, bytes, highest sequence a->b, reordered at set-up,
        #             highest sequence b->a, (a's address, a's port) as parsed, current bin,
        #             its packets, its delay sum (ns), [closed bins (bin, packets, delay sum)]]
        self._flows: dict[int, list] = {}
        self.ignored = 0  # frames without a replay stamp

    def count(self, frame: bytes, arrived_ns: int) -> None:
        """Count one frame that arrived at `arrived_ns` (`time.time_ns()`)."""
        parsed = parse_frame(frame)
        stamp = parsed.stamp(frame) if parsed else None
        if stamp is None:
            self.ignored += 1
            return
        flow_id, sequence, sent_ns = stamp
        counters = self._flows.get(flow_id)
        if counters is None:
            key = parsed.key
            side_a = (ipaddress.ip_address(key.ip_a).packed, key.port_a)
            counters = self._flows[flow_id] = [key, 0, 0, 0, -1, 0, -1, side_a, -1, 0, 0, []]
        highest = 4 if (parsed.src_ip, parsed.src_port) == counters[7] else 6
        counters[1] += 1
        counters[3] += len(frame)
        if sequence < counters[highest]:
            counters[2] += 1
            counters[5] += parsed.dscp == CONTROLLER_PATH_DSCP
        else:
            counters[highest] = sequence
        delay_bin = arrived_ns // DELAY_BIN_NS
        if delay_bin != counters[8]:
            if counters[9]:
                counters[11].append((counters[8], counters[9], counters[10]))
            counters[8], counters[9], counters[10] = delay_bin, 0, 0
        counters[9] += 1
        counters[10] += arrived_ns - sent_ns

    def snapshot(self) -> dict:
        flows = {
            str(flow): {"key": list(c[0]), "received": c[1], "reordered": c[2], "reordered_at_setup": c[5],
                        "bytes": c[3], "delay_bins": _delay_bins(c[11] + [(c[8], c[9], c[10])])}
            for flow, c in sorted(self._flows.items())
        }
        return {
            "time": time.time(),
            "received": sum(flow["received"] for flow in flows.values()),
            "reordered": sum(flow["reordered"] for flow in flows.values()),
            "reordered_at_setup": sum(flow["reordered_at_setup"] for flow in flows.values()),
            "ignored": self.ignored,
            "delay_bin_s": DELAY_BIN_NS / 1e9,
            "flows": flows,
        }


def _delay_bins(bins: list[tuple[int, int, int]]) -> list[list]:
    """[bin start (s since the epoch), packets, mean one-way delay (ms)] of each bin with packets."""
    return [[start * DELAY_BIN_NS / 1e9, packets, round(total / packets / 1e6, 3)]
            for start, packets, total in bins if packets]


def run_sink(interface: str, out: str | os.PathLike) -> None:
    """Count frames arriving on `interface` until SIGTERM or SIGINT, writing the counters to `out`
    then, and whenever SIGUSR1 asks (each write bumps the document's `writes`)."""
    counters = SinkCounters()
    writes = 0
    dump_requested = False

    def request_dump(_signum, _frame):
        nonlocal dump_requested
        dump_requested = True

    def dump():
        nonlocal writes, dump_requested, socket_dropped
        writes += 1
        dump_requested = False
        socket_dropped += socket_drops(sock)
        write_json_atomically(out, {"interface": interface, "writes": writes, "socket_dropped": socket_dropped,
                                    **counters.snapshot()})

    signal.signal(signal.SIGUSR1, request_dump)
    sock = open_packet_socket(interface, promiscuous=True, timeout=0.2)
    socket_dropped = 0
    dump()  # the file exists from the start: a reader can wait for it to know the sink is up
    try:
        with stop_on_sigterm():
            while True:
                try:
                    frame, address = sock.recvfrom(65535)
                except TimeoutError:
                    frame, address = None, None
                if frame is not None and address[2] != PACKET_OUTGOING:
                    counters.count(frame, time.time_ns())
                if dump_requested:
                    dump()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        dump()


def flow_outcomes(sent_log: dict, sink_log: dict) -> dict:
    """Per-flow and total sent, received, lost (sent - received) and reordered packets, and each flow's
    delay bins (the sink's [bin start s, packets, mean delay ms])."""
    flows = {}
    nothing = {"received": 0, "reordered": 0, "reordered_at_setup": 0, "delay_bins": []}
    for flow, entry in sent_log["flows"].items():
        arrived = sink_log["flows"].get(flow, nothing)
        flows[flow] = {
            "key": entry["key"],
            "sent": entry["sent"],
            "received": arrived["received"],
            "lost": entry["sent"] - arrived["received"],
            "reordered": arrived["reordered"],
            "reordered_at_setup": arrived["reordered_at_setup"],
            "delay_bins": arrived["delay_bins"],
        }
    unexpected = sorted(set(sink_log["flows"]) - set(sent_log["flows"]), key=int)
    if unexpected:
        raise ValueError(f"the sink counted flows the sender never sent: {unexpected[:10]}")
    totals = {
        name: sum(flow[name] for flow in flows.values())
        for name in ("sent", "received", "lost", "reordered", "reordered_at_setup")
    }
    return {**totals, "delay_bin_s": sink_log.get("delay_bin_s", DELAY_BIN_NS / 1e9), "flows": flows}


def packet_totals(outcomes: dict) -> dict:
    """The packet figures of `flow_outcomes` under dm-demo's summary names (docs/testbed.md): sent, received,
    lost = sent - received, reordered (a later packet of the flow in the same direction arrived first), of
    which at flow set-up."""
    return {"flows": len(outcomes["flows"]), "packets_sent": outcomes["sent"],
            "packets_received": outcomes["received"], "packets_lost": outcomes["lost"],
            "packets_reordered": outcomes["reordered"],
            "packets_reordered_at_flow_setup": outcomes["reordered_at_setup"]}


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "send":
            schedule = load_schedule(
                args.pcap,
                speed=args.speed,
                start_s=args.start,
                duration_s=args.duration,
                max_flows=args.max_flows,
                max_pps=args.max_pps,
                line_rate_pps=args.line_rate,
            )
            with stop_on_sigterm():
                log = replay(schedule, args.interface, args.out)
            print(
                f"sent {log['packets_sent']} packets of {len(log['flows'])} flows; worst lag {log['max_lag_ms']} ms"
            )
        elif args.command == "outcome":
            outcomes = flow_outcomes(*(json.loads(path.read_text()) for path in (args.sent, args.received)))
            print(json.dumps(packet_totals(outcomes)))
        else:
            run_sink(args.interface, args.out)
    except (OSError, ValueError) as exc:
        print(f"trace_replay.live: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trace_replay.live", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send", help="replay a pcap's flows out of an interface")
    send.add_argument("pcap", type=Path)
    send.add_argument("--interface", required=True)
    send.add_argument("--out", required=True, type=Path, help="sent log (JSON), written when the replay ends")
    send.add_argument("--speed", type=float, default=1.0, help="trace seconds per wall second (default 1)")
    send.add_argument(
        "--start", type=float, default=0.0, metavar="S", help="skip the trace's first S seconds"
    )
    send.add_argument(
        "--duration", type=float, metavar="S", help="replay S trace seconds (default: to the end)"
    )
    send.add_argument("--max-flows", type=int, metavar="N", help="keep only the N flows with most packets")
    send.add_argument(
        "--max-pps",
        type=float,
        default=DEFAULT_MAX_PPS,
        help=f"refuse schedules that peak above this rate (default {DEFAULT_MAX_PPS:g})",
    )
    send.add_argument(
        "--line-rate",
        type=float,
        default=DEFAULT_LINE_RATE_PPS,
        help=f"send no faster than this many packets/s, bursts spread in order (default {DEFAULT_LINE_RATE_PPS:g})",
    )
    outcome = commands.add_parser("outcome", help="one JSON line of packet totals from a sent and a sink log")
    outcome.add_argument("sent", type=Path, help="the sender's log (send --out)")
    outcome.add_argument("received", type=Path, help="the sink's counters (sink --out)")
    sink = commands.add_parser("sink", help="count replayed frames arriving on an interface")
    sink.add_argument("--interface", required=True)
    sink.add_argument(
        "--out", required=True, type=Path, help="counters (JSON), written on SIGTERM and SIGUSR1"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
