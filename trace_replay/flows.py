"""Bidirectional flow tables from pcap traces, built batch by batch with numpy.

Each batch is grouped by flow key with one sort; only the per-key aggregates are merged into the
table of live flows, through a vectorised hash index, so no Python code runs per packet or per flow.
IPv4 and IPv6 packets are grouped alike: an IPv6 address enters the uint64 flow keys as its number in
the trace's `AddressBook` (docs/traces.md, "IPv6").
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field

import numpy as np

from trace_replay.pcap import (
    L3_IPV4,
    L3_IPV4_MALFORMED,
    L3_IPV6,
    L3_IPV6_MALFORMED,
    L3_NON_IP,
    AddressBook,
    PcapHeader,
    PcapReader,
)
from twin.flow import FlowKey

FLOW_DTYPE = np.dtype(
    [
        ("src_ip", "<u4"),
        ("dst_ip", "<u4"),
        ("src_port", "<u2"),
        ("dst_port", "<u2"),
        ("proto", "u1"),
        ("first_ts", "<f8"),
        ("last_ts", "<f8"),
        ("packets", "<u8"),
        ("bytes", "<u8"),
        ("is_ipv6", "?"),
        ("src_ip6", "V16"),
        ("dst_ip6", "V16"),
    ]
)
"""One flow. src is the endpoint that sent the flow's first packet (in file order); bytes sums wire
lengths; ports are 0 for flows keyed without them. An IPv6 flow has is_ipv6 set, its addresses in
src_ip6/dst_ip6 (network-order bytes, as in trace_replay.pcap.PACKET_DTYPE) and 0 in src_ip/dst_ip."""
_IPV6_KEY_BIT = np.uint64(1 << 63)
"""Set in the high half of an IPv6 flow's key (whose endpoints use 48 bits), so no IPv4 key equals it."""

# Live and finished flows keep an IPv6 flow's addresses as their numbers in the reader's AddressBook (in
# src_ip/dst_ip, as the packets do), which keeps them narrow; `finish` writes the addresses. They also carry
# the number of their first packet, which orders flows that share a first timestamp the same way whatever
# the batch size.
_WORK_DTYPE = np.dtype([item for item in FLOW_DTYPE.descr if item[0] not in ("src_ip6", "dst_ip6")]
                       + [("first_packet", "<u8")])

_IP_PROTOCOL_NAMES = {
    1: "icmp",
    2: "igmp",
    4: "ipip",
    6: "tcp",
    17: "udp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    89: "ospf",
    103: "pim",
    112: "vrrp",
    132: "sctp",
}
_L3_NAMES = {L3_NON_IP: "non-ip", L3_IPV6: "ipv6", L3_IPV4_MALFORMED: "ipv4-malformed",
             L3_IPV6_MALFORMED: "ipv6-malformed"}


@dataclass(frozen=True)
class TraceStats:
    """Whole-trace counts, over every record read (not only the packets grouped into flows)."""

    packets: int  # records read
    ip_packets: int  # IPv4 and IPv6 packets, the ones grouped into flows
    bytes: int  # wire bytes of those packets, i.e. the sum of the flows' bytes
    duration_s: float  # latest minus earliest timestamp over all packets
    protocols: dict[str, int]  # packet counts: IPv4 protocols by name, plus "ipv6" (all IPv6), "non-ip", ...
    torn_records: int
    link_type: int
    snaplen: int
    timestamps_backwards: int = 0  # records stamped earlier than one before them (PcapReader)


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise and fail
class FlowTable:
    """The flows of one trace, with the trace's statistics."""

    records: np.ndarray  # FLOW_DTYPE, sorted by first_ts
    stats: TraceStats
    source: str  # file name it came from
    addresses: AddressBook = field(default_factory=lambda: AddressBook())
    """The numbers of the IPv6 addresses in the flow keys: flow_keys(records, addresses) keys the records."""

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> dict:
        """The `dm-trace info --json` object."""
        return {
            "packets": self.stats.packets,
            "ip_packets": self.stats.ip_packets,
            "flows": len(self),
            "bytes": self.stats.bytes,
            "duration_s": self.stats.duration_s,
            "protocols": dict(self.stats.protocols),
        }


def read_flows(
    path: str | os.PathLike, *, idle_timeout: float | None = None, progress: bool = False
) -> FlowTable:
    """Group the IPv4 and IPv6 packets of a pcap or pcapng file (or either gzip'ed) into bidirectional flows.

    Packets share a flow when they share protocol, addresses and (TCP/UDP) ports in either
    direction. With `idle_timeout`, a gap longer than it between consecutive packets of a key ends
    the flow and the later packet starts a new one; flows idle that long are also retired from the
    live table, which is what bounds memory on long traces (timestamps are taken to be in order).
    """
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be a positive number of seconds, not {idle_timeout!r}")
    reader = PcapReader(path, progress=progress)
    grouper = _FlowGrouper(idle_timeout, reader.addresses)
    tally = _TraceTally()
    for batch in reader:
        tally.add(batch)
        ip = batch["is_ipv4"] | batch["is_ipv6"]
        grouper.add(batch if ip.all() else batch[ip])
    return FlowTable(
        records=grouper.finish(),
        stats=tally.stats(reader.header, reader.torn_records, reader.timestamps_backwards),
        source=os.path.basename(os.fspath(path)),
        addresses=reader.addresses,
    )


def trace_info(path: str | os.PathLike, *, progress: bool = False) -> dict:
    """Summary of a trace, the `dm-trace info --json` object: flows are counted without an idle timeout."""
    return read_flows(path, progress=progress).summary()


def _protocol_name(ip_protocol: int) -> str:
    return _IP_PROTOCOL_NAMES.get(ip_protocol, f"ip-proto-{ip_protocol}")


class _TraceTally:
    """Whole-trace counters, kept alongside the flows."""

    def __init__(self):
        self.packets = 0
        self.ip_bytes = 0
        self.l3_counts = np.zeros(len(_L3_NAMES) + 1, np.int64)
        self.ip_protocol_counts = np.zeros(256, np.int64)
        self.first_ts = math.inf
        self.last_ts = -math.inf

    def add(self, batch: np.ndarray) -> None:
        self.packets += len(batch)
        self.first_ts = min(self.first_ts, float(batch["ts"].min()))
        self.last_ts = max(self.last_ts, float(batch["ts"].max()))
        self.l3_counts += np.bincount(batch["l3"], minlength=len(self.l3_counts))
        ipv4 = batch["is_ipv4"]
        self.ip_protocol_counts += np.bincount(batch["proto"][ipv4], minlength=256)
        self.ip_bytes += int(batch["wire_len"][ipv4 | batch["is_ipv6"]].sum(dtype=np.uint64))

    def stats(self, header: PcapHeader, torn_records: int, timestamps_backwards: int) -> TraceStats:
        counts = {_protocol_name(p): int(n) for p, n in enumerate(self.ip_protocol_counts) if n}
        counts |= {_L3_NAMES[kind]: int(n) for kind, n in enumerate(self.l3_counts) if n and kind != L3_IPV4}
        return TraceStats(
            packets=self.packets,
            ip_packets=int(self.l3_counts[L3_IPV4] + self.l3_counts[L3_IPV6]),
            bytes=self.ip_bytes,
            duration_s=self.last_ts - self.first_ts if self.packets else 0.0,
            protocols=dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
            torn_records=torn_records,
            link_type=header.link_type,
            snaplen=header.snaplen,
            timestamps_backwards=timestamps_backwards,
        )


class _FlowGrouper:
    """Streaming flow aggregation: live flows sit in slots of a growable array, found by key through
    a PairIndex; finished flows are set aside until the end."""

    def __init__(self, idle_timeout: float | None, addresses: AddressBook):
        self._idle_timeout = idle_timeout
        self._addresses = addresses
        self._index = PairIndex()
        self._slots = np.zeros(1024, _WORK_DTYPE)
        self._slot_keys = np.zeros((1024, 2), np.uint64)
        self._alive = np.zeros(1024, bool)
        self._slots_used = 0  # high-water mark; evicted slots below it are reused from _free
        self._free = np.empty(0, np.intp)
        self._finished: list[np.ndarray] = []
        self._packets_seen = 0
        self._latest_ts = -math.inf

    def add(self, packets: np.ndarray) -> None:
        """Fold in a batch of IP packets that follows all earlier batches in the file."""
        if not len(packets):
            return
        key_lo, key_hi = flow_keys(packets)
        order, key_lo, key_hi, key_change = _group_by_key(key_lo, key_hi)
        ts = packets["ts"][order]
        segment_break = np.concatenate(([True], key_change))
        key_starts = np.flatnonzero(segment_break)
        if self._idle_timeout is not None:
            segment_break[1:] |= np.diff(ts) > self._idle_timeout
        segment_starts = np.flatnonzero(segment_break)

        first_packet = order[segment_starts]
        segments = np.empty(len(segment_starts), _WORK_DTYPE)
        for name in ("src_ip", "dst_ip", "src_port", "dst_port", "proto", "is_ipv6"):
            segments[name] = packets[name][first_packet]
        segments["first_ts"] = np.minimum.reduceat(ts, segment_starts)
        segments["last_ts"] = np.maximum.reduceat(ts, segment_starts)
        segments["packets"] = np.diff(segment_starts, append=len(ts))
        segments["bytes"] = np.add.reduceat(packets["wire_len"][order].astype(np.uint64), segment_starts)
        segments["first_packet"] = first_packet + self._packets_seen
        self._packets_seen += len(packets)

        first_segment = np.searchsorted(segment_starts, key_starts)
        last_segment = np.append(first_segment[1:], len(segment_starts)) - 1
        self._merge(key_lo[key_starts], key_hi[key_starts], segments, first_segment, last_segment)
        self._latest_ts = max(self._latest_ts, float(segments["last_ts"].max()))
        if self._idle_timeout is not None:
            self._retire_idle()

    def finish(self) -> np.ndarray:
        """All flows, sorted by first timestamp, then by first packet."""
        live = _rows(self._slots[: self._slots_used], self._alive[: self._slots_used])
        flows = np.concatenate([*self._finished, live])
        order = np.argsort(flows["first_packet"])
        if (np.diff(flows["first_ts"][order]) < 0).any():  # timestamps out of file order
            order = np.lexsort((flows["first_packet"], flows["first_ts"]))
        ordered = _rows(flows, order)
        table = np.zeros(len(flows), FLOW_DTYPE)
        for name in _WORK_DTYPE.names[:-1]:
            table[name] = ordered[name]
        ipv6 = table["is_ipv6"]
        if ipv6.any():
            for number, address in (("src_ip", "src_ip6"), ("dst_ip", "dst_ip6")):
                table[address][ipv6] = self._addresses.packed(table[number][ipv6])
                table[number][ipv6] = 0
        return table

    def _merge(self, key_lo, key_hi, segments, first_segment, last_segment) -> None:
        """Merge a batch's segments, given per key (one row per distinct key) by their first and last
        index, into the live flows. A key's first segment extends its live flow unless the idle gap
        forbids it; its last segment becomes (or stays part of) the live flow; the rest are done."""
        slots = self._index.get(key_lo, key_hi)
        known = slots >= 0
        done = np.ones(len(segments), bool)
        done[last_segment] = False

        known_slots, known_first = slots[known], first_segment[known]
        flows = self._slots
        extend = np.ones(len(known_slots), bool)
        if self._idle_timeout is not None:
            extend = segments["first_ts"][known_first] - flows["last_ts"][known_slots] <= self._idle_timeout
        into, source = known_slots[extend], _rows(segments, known_first[extend])
        flows["first_ts"][into] = np.minimum(flows["first_ts"][into], source["first_ts"])
        flows["last_ts"][into] = np.maximum(flows["last_ts"][into], source["last_ts"])
        flows["packets"][into] += source["packets"]
        flows["bytes"][into] += source["bytes"]
        done[known_first[extend]] = False

        # A live flow is over when the gap forbade extending it or a later segment of its key follows.
        replaced = ~extend | (known_first != last_segment[known])
        retired = known_slots[replaced]
        self._finished.append(_rows(flows, retired))
        _set_rows(flows, retired, _rows(segments, last_segment[known][replaced]))
        self._finished.append(_rows(segments, done))

        new = ~known
        new_slots = self._allocate(int(new.sum()))
        _set_rows(self._slots, new_slots, _rows(segments, last_segment[new]))
        self._slot_keys[new_slots, 0] = key_lo[new]
        self._slot_keys[new_slots, 1] = key_hi[new]
        self._index.add(key_lo[new], key_hi[new], new_slots)

    def _retire_idle(self) -> None:
        """Finish the flows that no later packet can extend, given timestamps in order."""
        used = slice(0, self._slots_used)
        horizon = self._latest_ts - self._idle_timeout
        idle = np.flatnonzero(self._alive[used] & (self._slots["last_ts"][used] < horizon))
        if idle.size:
            self._finished.append(_rows(self._slots, idle))
            self._alive[idle] = False
            self._index.discard(self._slot_keys[idle, 0], self._slot_keys[idle, 1])
            self._free = np.concatenate((self._free, idle))

    def _allocate(self, count: int) -> np.ndarray:
        reused, self._free = self._free[:count], self._free[count:]
        fresh_count = count - len(reused)
        needed = self._slots_used + fresh_count
        if needed > len(self._slots):
            capacity = max(needed, 2 * len(self._slots))
            self._slots = _grown(self._slots, capacity)
            self._slot_keys = _grown(self._slot_keys, capacity)
            self._alive = _grown(self._alive, capacity)
        slots = np.concatenate((reused, np.arange(self._slots_used, needed)))
        self._slots_used = needed
        self._alive[slots] = True
        return slots


def _rows(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """table[index] for a structured array, copied as raw bytes: several times faster than numpy's
    field-by-field structured copy."""
    raw = np.dtype(f"V{table.dtype.itemsize}")
    return table.view(raw)[index].view(table.dtype)


def _set_rows(table: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:
    """table[index] = rows for structured arrays of one dtype, copied as raw bytes (see _rows)."""
    raw = np.dtype(f"V{table.dtype.itemsize}")
    table.view(raw)[index] = rows.view(raw)


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    bigger = np.zeros((capacity, *array.shape[1:]), array.dtype)
    bigger[: len(array)] = array
    return bigger


def flow_keys(packets: np.ndarray, addresses: AddressBook | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Direction-free flow keys as two uint64 halves: (lower endpoint << 8 | protocol, higher
    endpoint), an endpoint being address << 16 | port: the orientation of twin.flow.FlowKey, vectorised
    for the reader (flow_identities decodes them). An IPv6 row (is_ipv6, where the array has that field)
    enters with its addresses' numbers and _IPV6_KEY_BIT set: the numbers the reader's packets hold in
    src_ip/dst_ip, or, for arrays holding the addresses themselves (src_ip6/dst_ip6: FLOW_DTYPE,
    FIVE_TUPLE_DTYPE), their numbers in `addresses`. Keys compare when one book numbered them all."""
    src_ip, dst_ip = packets["src_ip"].astype(np.uint64), packets["dst_ip"].astype(np.uint64)
    names = packets.dtype.names or ()
    ipv6 = packets["is_ipv6"] if "is_ipv6" in names else np.zeros(len(packets), bool)
    has_ipv6 = ipv6.any()
    if has_ipv6 and "src_ip6" in names:
        if addresses is None:
            raise ValueError("IPv6 addresses are keyed by their numbers in an AddressBook; none was given")
        src_ip[ipv6] = addresses.numbers(packets["src_ip6"][ipv6])
        dst_ip[ipv6] = addresses.numbers(packets["dst_ip6"][ipv6])
    source = src_ip << 16 | packets["src_port"]
    destination = dst_ip << 16 | packets["dst_port"]
    key_hi = np.maximum(source, destination)
    if has_ipv6:
        key_hi[ipv6] |= _IPV6_KEY_BIT
    return np.minimum(source, destination) << 8 | packets["proto"], key_hi


def flow_identities(key_lo: np.ndarray, key_hi: np.ndarray, addresses: AddressBook | None = None) -> list[FlowKey]:
    """The FlowKey of each flow_keys pair (`addresses`: the book that keyed any IPv6 ones)."""
    ipv6 = (key_hi & _IPV6_KEY_BIT) != 0
    ip_a, port_a, proto = key_lo >> 24, (key_lo >> 8) & 0xFFFF, key_lo & 0xFF
    ip_b, port_b = (key_hi & ~_IPV6_KEY_BIT) >> 16, key_hi & 0xFFFF
    keys = []
    for v6, a, b, pa, pb, p in zip(ipv6.tolist(), ip_a.tolist(), ip_b.tolist(), port_a.tolist(), port_b.tolist(),
                                   proto.tolist()):
        if v6:  # numbered in order of sight, not by value: FlowKey.of orients the endpoints
            keys.append(FlowKey.of(addresses.address(a), addresses.address(b), pa, pb, p))
        else:
            keys.append(FlowKey(str(ipaddress.IPv4Address(a)), str(ipaddress.IPv4Address(b)), pa, pb, p))
    return keys


def _mix(key_lo: np.ndarray, key_hi: np.ndarray) -> np.ndarray:
    """A 64-bit hash of key pairs (splitmix64's finaliser); callers use its high bits."""
    h = key_lo * np.uint64(0x9E3779B97F4A7C15) ^ key_hi
    h ^= h >> 30
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> 27
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> 31
    return h


def _group_by_key(
    key_lo: np.ndarray, key_hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order that brings equal keys together, keeping file order within a key; the keys in that
    order; and where along it the key changes.

    Sorting one uint64 of (hash high bits, position) is several times cheaper than a two-key
    lexsort. Equal keys have equal hashes, so the order is right unless two distinct keys share the
    truncated hash; that shows up as a key change inside a run of one hash and falls back to lexsort.
    """
    index_bits = max(1, (len(key_lo) - 1).bit_length())
    hash_and_position = _mix(key_lo, key_hi) >> index_bits << index_bits | np.arange(
        len(key_lo), dtype=np.uint64
    )
    hash_and_position.sort()
    order = (hash_and_position & ((1 << index_bits) - 1)).astype(np.intp)
    sorted_lo, sorted_hi = key_lo[order], key_hi[order]
    key_change = (sorted_lo[1:] != sorted_lo[:-1]) | (sorted_hi[1:] != sorted_hi[:-1])
    hash_change = (hash_and_position[1:] ^ hash_and_position[:-1]) >> index_bits != 0
    if (key_change & ~hash_change).any():
        order = np.lexsort((key_hi, key_lo))
        sorted_lo, sorted_hi = key_lo[order], key_hi[order]
        key_change = (sorted_lo[1:] != sorted_lo[:-1]) | (sorted_hi[1:] != sorted_hi[:-1])
    return order, sorted_lo, sorted_hi, key_change


class PairIndex:
    """Hash map from (uint64, uint64) keys to slot numbers, with open addressing and linear probing
    done for a whole array of keys per round. Kept at most half full, so rounds stay few."""

    _EMPTY, _DELETED = -1, -2

    def __init__(self, capacity_bits: int = 16):
        self._reset(capacity_bits)

    def get(self, key_lo: np.ndarray, key_hi: np.ndarray) -> np.ndarray:
        """Values stored for the keys, -1 for keys not present."""
        found = self._find(key_lo, key_hi)
        return np.where(found >= 0, self._values[found], -1)

    def add(self, key_lo: np.ndarray, key_hi: np.ndarray, values: np.ndarray) -> None:
        """Store values for keys that are distinct and not present."""
        if 2 * (self._filled + len(key_lo)) > len(self._values):
            self._rehash(self._live + len(key_lo))
        pending = np.arange(len(key_lo))
        position = self._home(key_lo, key_hi)
        while pending.size:
            free = self._values[position] == self._EMPTY
            claimants, claimed = pending[free], position[free]
            # Where several keys claim one free position, exactly one write survives: its key wins.
            self._values[claimed] = claimants
            won = self._values[claimed] == claimants
            winners, taken = claimants[won], claimed[won]
            self._values[taken] = values[winners]
            self._keys_lo[taken] = key_lo[winners]
            self._keys_hi[taken] = key_hi[winners]
            still = np.ones(len(pending), bool)
            still[np.flatnonzero(free)[won]] = False
            pending, position = pending[still], (position[still] + 1) & self._mask
        self._filled += len(key_lo)
        self._live += len(key_lo)

    def discard(self, key_lo: np.ndarray, key_hi: np.ndarray) -> None:
        """Remove keys that are present (leaving tombstones, so probe chains stay intact)."""
        self._values[self._find(key_lo, key_hi)] = self._DELETED
        self._live -= len(key_lo)

    def _find(self, key_lo: np.ndarray, key_hi: np.ndarray) -> np.ndarray:
        """Table position of each key, -1 for keys not present."""
        found = np.full(len(key_lo), -1, np.intp)
        pending = np.arange(len(key_lo))
        position = self._home(key_lo, key_hi)
        while pending.size:
            value = self._values[position]
            hit = (
                (value >= 0)
                & (self._keys_lo[position] == key_lo[pending])
                & (self._keys_hi[position] == key_hi[pending])
            )
            found[pending[hit]] = position[hit]
            going_on = ~hit & (value != self._EMPTY)
            pending, position = pending[going_on], (position[going_on] + 1) & self._mask
        return found

    def _home(self, key_lo: np.ndarray, key_hi: np.ndarray) -> np.ndarray:
        return (_mix(key_lo, key_hi) >> (64 - self._bits)).astype(np.intp)

    def _rehash(self, live_needed: int) -> None:
        keep = self._values >= 0
        key_lo, key_hi, values = self._keys_lo[keep], self._keys_hi[keep], self._values[keep]
        self._reset(max(16, (4 * live_needed - 1).bit_length()))
        self.add(key_lo, key_hi, values)

    def _reset(self, bits: int) -> None:
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._keys_lo = np.zeros(1 << bits, np.uint64)
        self._keys_hi = np.zeros(1 << bits, np.uint64)
        self._values = np.full(1 << bits, self._EMPTY, np.int64)
        self._filled = 0  # live entries plus tombstones
        self._live = 0
