"""Seeded generator of LBNL/ICSI-like enterprise packet traces.

The DeepMigration paper evaluates on the LBNL/ICSI enterprise traces (Pang et al., IMC 2005), which
cannot be downloaded here.  This module writes header-only libpcap files with the traits the
flow-migration experiments depend on: heavy-tailed flow sizes and durations, an enterprise application
mix, bidirectional TCP connections (handshake, delayed ACKs, teardown), one internal /16 with many
subnets plus external peers, and bursty flow arrivals.  docs/traces.md lists each target and its source.

Generation is vectorised and streaming.  Sessions are drawn one time window at a time; every new flow is
expanded to all of its packets at once; packets wait in a time-ordered buffer until no later window can
precede them and are then written.  Memory is bounded by the packets of flows still in progress.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import ipaddress
import pathlib
from typing import BinaryIO

import numpy as np

SAMPLE_SEED = 2005
SAMPLE_SECONDS = 300
SAMPLE_FILE = "lbnl_sample.pcap.gz"
SAMPLE_COMMAND = (
    f"dm-trace generate --out trace_replay/data/{SAMPLE_FILE} --seconds {SAMPLE_SECONDS} --seed {SAMPLE_SEED}"
)

SNAPLEN = 68
"""Bytes kept per packet, as in the header-only LBNL/ICSI datasets."""
TRACE_EPOCH = 1103068800
"""2004-12-15 00:00:00 UTC, while the LBNL/ICSI traces were being recorded; only offsets from it matter."""
INTERNAL_NET = ipaddress.IPv4Network("10.37.0.0/16")
DEFAULT_FLOWS_PER_SECOND = 45.0

_LINKTYPE_ETHERNET = 1
_ETHERNET_HEADER = 14
_ETHERNET_MIN_FRAME = 60
_IP_HEADER = 20
_TCP_HEADER = 20
_IP_MTU = 1500
_TCP_SYN_OPTIONS = bytes([2, 4, 0x05, 0xB4, 1, 1, 4, 2])  # MSS 1460, NOP, NOP, SACK permitted
_MSS = 1460
_ROUTER_MAC = bytes([0x00, 0x0B, 0x5F, 0x37, 0x00, 0x01])

PROTO_ICMP, PROTO_IGMP, PROTO_TCP, PROTO_UDP, PROTO_GRE, PROTO_ESP = 1, 2, 6, 17, 47, 50
_L4_HEADER = {PROTO_ICMP: 8, PROTO_IGMP: 8, PROTO_TCP: _TCP_HEADER, PROTO_UDP: 8, PROTO_ESP: 8,
              PROTO_GRE: 16}
"""Transport header bytes before the payload (GRE: enhanced header with key and sequence, then PPP)."""
_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_EPHEMERAL_LOW = 10_000
"""Client ports come from [10000, 65535] and every server port is below 10000, so a client endpoint can
never equal a server endpoint and a connection's reverse 5-tuple never belongs to another flow."""
_EPHEMERAL_SPAN = 65_536 - _EPHEMERAL_LOW

_WINDOW_US = 10_000_000
"""Sessions are drawn per window; packets before a window's end are final once it is drawn."""
_SLOT_US = 1_000_000
"""Time step of the arrival-rate modulation."""
_WARMUP_WINDOWS = 6
"""Flows start this many windows before t=0 so the trace opens in steady state, mid-connection."""
_WRITE_BATCH = 1 << 16
_GZIP_LEVEL = 5
"""zlib level 5 compresses these records within 3% of level 9 in an eighth of its time."""

_SESSION_ALPHA = 1.5
_ROUND_ALPHA = 1.5
_THINK_ALPHA = 1.5
_MAX_FLOWS_PER_SESSION = 200
_MAX_ROUNDS = 2_000
_MAX_THINK_S = 600.0
_MAX_FLOW_BYTES = 50e6
_FLOW_GAP_MEDIAN_S = 0.25
_FLOW_GAP_SIGMA = 1.5
_SERVICE_MEDIAN_US = 500.0
_HOST_ZIPF = 0.8
_SERVER_ZIPF = 1.0

_INTERNAL_HOSTS = 3_000
_INTERNAL_SUBNETS = 40
_EXTERNAL_HOSTS = 20_000
_MULTICAST_GROUPS = 12
_MULTICAST_NET = ipaddress.IPv4Network("239.255.0.0/16")

_LOW_RATE, _HIGH_RATE = 0.6, 1.8
_LOW_SOJOURN_S, _HIGH_SOJOURN_S = 45.0, 15.0
"""Two-state Markov modulation of the session rate (Markov-modulated Poisson arrivals)."""


@dataclasses.dataclass(frozen=True)
class GenerationSummary:
    """What a generated trace holds; `bytes` counts wire (orig_len) bytes, `duration` first to last packet."""

    packets: int
    flows: int
    bytes: int
    duration: float


@dataclasses.dataclass(frozen=True)
class AppClass:
    """One application category of the enterprise mix, after the categories of Pang et al. 2005.

    A flow is a series of request/response rounds.  Payload sizes are in bytes, times in seconds.  TCP
    payload is cut into MSS segments, every second one acknowledged by a pure ACK (a lone last segment
    is acknowledged by the next message, as delayed ACKs piggyback); datagram payload is cut into
    datagrams of at most `datagram_bytes`, unacknowledged.
    """

    name: str
    proto: int
    flow_share: float
    """Share of all flows."""
    request_bytes: float
    """Median request payload per round (lognormal, sigma 0.5)."""
    response_bytes: float
    """Median of the lognormal body of a flow's bulk payload, spread over its rounds."""
    ports: tuple[tuple[int, float], ...] = ()
    """Server ports with their weights; empty for protocols without ports."""
    servers: int = 1
    """Internal servers (multicast groups for IGMP) the class's sessions concentrate on, Zipf-popular."""
    outbound: float = 0.0
    """Share of sessions from an internal client to an external server."""
    inbound: float = 0.0
    """Share of sessions from an external client to an internal server."""
    flows_per_session: float = 0.0
    """Scale of the discrete-Lomax number of flows a session opens (0: one flow)."""
    rounds: float = 0.0
    """Scale of the discrete-Lomax number of request/response rounds per flow (0: one round)."""
    response_sigma: float = 0.0
    tail_share: float = 0.0
    """Share of flows whose bulk payload comes from a bounded Pareto tail instead of the body."""
    tail_bytes: float = 1.0
    """Where that tail starts."""
    tail_alpha: float = 1.2
    upload_share: float = 0.0
    """Share of flows whose bulk payload goes client to server."""
    think_s: float = 0.0
    """Pareto scale of the pause before each further round."""
    linger_s: float = 0.0
    """Pareto scale of the idle time before a TCP close."""
    reject_share: float = 0.0
    """Share of TCP connections refused with a RST."""
    response_share: float = 1.0
    """Share of datagram requests that get an answer."""
    datagram_bytes: int = 1472
    pacing_s: float = 0.0
    """Mean gap between consecutive datagrams of one message."""


APP_CLASSES: tuple[AppClass, ...] = (
    AppClass("name", PROTO_UDP, flow_share=0.3185, request_bytes=36, response_bytes=130,
             ports=((53, 0.72), (137, 0.24), (427, 0.04)), servers=4, outbound=0.04,
             flows_per_session=0.8, response_sigma=0.5, response_share=0.93),
    AppClass("windows", PROTO_TCP, flow_share=0.15, request_bytes=180, response_bytes=1_500,
             ports=((445, 0.6), (139, 0.3), (135, 0.1)), servers=40,
             flows_per_session=0.7, rounds=0.7, response_sigma=1.5, tail_share=0.02, tail_bytes=60e3,
             upload_share=0.3, think_s=0.4, linger_s=8.0, reject_share=0.18),
    AppClass("web", PROTO_TCP, flow_share=0.20, request_bytes=420, response_bytes=2_000,
             ports=((80, 0.62), (443, 0.33), (8080, 0.05)), servers=30, outbound=0.55, inbound=0.03,
             flows_per_session=1.5, rounds=0.3, response_sigma=1.3, tail_share=0.03, tail_bytes=60e3,
             upload_share=0.03, think_s=1.0, linger_s=4.0, reject_share=0.03),
    AppClass("email", PROTO_TCP, flow_share=0.05, request_bytes=60, response_bytes=3_000,
             ports=((25, 0.4), (993, 0.3), (143, 0.2), (110, 0.1)), servers=4, outbound=0.25, inbound=0.3,
             flows_per_session=0.3, rounds=0.7, response_sigma=1.5, tail_share=0.04, tail_bytes=60e3,
             tail_alpha=1.3, upload_share=0.45, think_s=2.0, linger_s=5.0, reject_share=0.05),
    AppClass("net-file", PROTO_TCP, flow_share=0.03, request_bytes=150, response_bytes=4_000,
             ports=((2049, 0.7), (524, 0.3)), servers=8,
             flows_per_session=0.3, rounds=1.5, response_sigma=1.6, tail_share=0.03, tail_bytes=200e3,
             tail_alpha=1.15, upload_share=0.35, think_s=0.2, linger_s=10.0),
    AppClass("nfs-udp", PROTO_UDP, flow_share=0.02, request_bytes=140, response_bytes=4_000,
             ports=((2049, 1.0),), servers=4,
             flows_per_session=0.3, rounds=3.0, response_sigma=1.2, tail_share=0.05, tail_bytes=64e3,
             tail_alpha=1.3, upload_share=0.35, think_s=0.1, pacing_s=0.0002),
    AppClass("backup", PROTO_TCP, flow_share=0.002, request_bytes=300, response_bytes=150e3,
             ports=((1500, 0.7), (497, 0.3)), servers=2,
             rounds=5.0, response_sigma=1.2, tail_share=0.1, tail_bytes=1e6,
             tail_alpha=1.1, upload_share=0.9, think_s=0.05, linger_s=2.0),
    AppClass("bulk", PROTO_TCP, flow_share=0.0075, request_bytes=300, response_bytes=30e3,
             ports=((21, 0.4), (2811, 0.3), (873, 0.3)), servers=10, outbound=0.5, inbound=0.2,
             response_sigma=1.8, tail_share=0.06, tail_bytes=500e3,
             tail_alpha=1.1, upload_share=0.4, think_s=1.0, linger_s=1.0),
    AppClass("interactive", PROTO_TCP, flow_share=0.025, request_bytes=48, response_bytes=1_500,
             ports=((22, 0.8), (23, 0.1), (6000, 0.1)), servers=60, outbound=0.3, inbound=0.25,
             rounds=6.0, response_sigma=1.0, tail_share=0.01, tail_bytes=50e3,
             tail_alpha=1.3, upload_share=0.05, think_s=2.5, linger_s=20.0),
    AppClass("net-mgnt", PROTO_UDP, flow_share=0.08, request_bytes=60, response_bytes=120,
             ports=((161, 0.45), (123, 0.35), (514, 0.2)), servers=6, outbound=0.1,
             flows_per_session=0.5, response_sigma=0.8, response_share=0.75),
    AppClass("streaming", PROTO_UDP, flow_share=0.01, request_bytes=80, response_bytes=20e3,
             ports=((5004, 0.5), (1755, 0.3), (554, 0.2)), servers=3, outbound=0.3,
             response_sigma=1.5, tail_share=0.05, tail_bytes=300e3, datagram_bytes=1200, pacing_s=0.02),
    AppClass("other-tcp", PROTO_TCP, flow_share=0.07, request_bytes=300, response_bytes=2_000,
             ports=((1433, 0.3), (3389, 0.25), (5900, 0.15), (8000, 0.15), (1521, 0.15)), servers=30,
             outbound=0.1, inbound=0.05,
             flows_per_session=0.3, rounds=0.7, response_sigma=1.8, tail_share=0.03, tail_bytes=80e3,
             upload_share=0.3, think_s=1.5, linger_s=5.0, reject_share=0.08),
    AppClass("icmp", PROTO_ICMP, flow_share=0.03, request_bytes=40, response_bytes=40,
             servers=300, outbound=0.3, inbound=0.05, rounds=1.0, think_s=1.0, response_share=0.85),
    AppClass("esp", PROTO_ESP, flow_share=0.002, request_bytes=300, response_bytes=20e3, outbound=1.0,
             rounds=5.0, response_sigma=1.5, tail_share=0.05, tail_bytes=300e3,
             upload_share=0.3, think_s=0.5, pacing_s=0.002),
    AppClass("gre", PROTO_GRE, flow_share=0.002, request_bytes=200, response_bytes=15e3, outbound=1.0,
             rounds=5.0, response_sigma=1.5, tail_share=0.05, tail_bytes=300e3,
             upload_share=0.3, think_s=0.5, pacing_s=0.002),
    AppClass("igmp", PROTO_IGMP, flow_share=0.003, request_bytes=0, response_bytes=0,
             servers=_MULTICAST_GROUPS, rounds=1.0, think_s=30.0, response_share=0.0),
)


def generate_pcap(
    out_path: str | pathlib.Path,
    *,
    seconds: float,
    seed: int,
    flows_per_second: float = DEFAULT_FLOWS_PER_SECOND,
) -> GenerationSummary:
    """Write an LBNL-like header-only trace of `seconds` seconds; gzip it when the name ends in .gz.

    The same (seconds, seed, flows_per_second) always gives the same bytes, and a shorter trace is the
    prefix of a longer one with the same seed and rate.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if flows_per_second <= 0:
        raise ValueError(f"flows_per_second must be positive, got {flows_per_second}")
    path = pathlib.Path(out_path)
    with open(path, "wb") as raw:
        if path.suffix == ".gz":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0) as gz:
                return _write_trace(gz, round(seconds * 1e6), seed, flows_per_second)
        return _write_trace(raw, round(seconds * 1e6), seed, flows_per_second)


def sample_path() -> pathlib.Path:
    """The shipped sample trace, generated by SAMPLE_COMMAND."""
    return pathlib.Path(importlib.resources.files(__package__).joinpath("data", SAMPLE_FILE))


def _write_trace(out: BinaryIO, end_us: int, seed: int, flows_per_second: float) -> GenerationSummary:
    rng = np.random.default_rng(seed)
    source = _FlowSource(rng, flows_per_second)
    pending = _TimeOrderedBuffer()
    writer = _PcapWriter(out)
    flows = 0
    windows = -(-end_us // _WINDOW_US)  # ceiling division: the last window may end after the trace
    for window in range(-_WARMUP_WINDOWS, windows):
        window_end = (window + 1) * _WINDOW_US
        packets, flow_count = source.packets_for_window(window * _WINDOW_US, window_end, end_us)
        pending.add(packets)
        flows += flow_count
        writer.add(pending.pop_before(min(window_end, end_us)))
    writer.flush()
    return GenerationSummary(
        packets=writer.packets,
        flows=flows,
        bytes=writer.bytes,
        duration=(writer.last_us - writer.first_us) / 1e6 if writer.packets else 0.0,
    )


# --------------------------------------------------------------------------------------------------
# Distributions


def _discrete_lomax(rng: np.random.Generator, scale: np.ndarray, alpha: float, cap: int) -> np.ndarray:
    """Counts >= 1 with P(K > k) = (1 + k/scale)^-alpha: a heavy tail that starts at one."""
    u = 1.0 - rng.random(len(scale))
    counts = 1 + np.floor(scale * (u ** (-1.0 / alpha) - 1.0))
    return np.minimum(counts, cap).astype(np.int64)


def _discrete_lomax_mean(scale: float, alpha: float, cap: int) -> float:
    if scale == 0:
        return 1.0
    k = np.arange(1, cap)
    return float(1.0 + np.sum((1.0 + k / scale) ** -alpha))


def _pareto(rng: np.random.Generator, scale: np.ndarray, alpha: float, cap: float) -> np.ndarray:
    return np.minimum(scale * (1.0 - rng.random(len(scale))) ** (-1.0 / alpha), cap)


def _bounded_pareto(rng: np.random.Generator, low: np.ndarray, alpha: np.ndarray, high: float) -> np.ndarray:
    u = rng.random(len(low))
    return low * (1.0 - u * (1.0 - (low / high) ** alpha)) ** (-1.0 / alpha)


def _lognormal(rng: np.random.Generator, median: np.ndarray | float, sigma: np.ndarray | float,
               size: int) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(size))


def _normalised_cdf(weights: np.ndarray) -> np.ndarray:
    """Cumulative shares that end at exactly 1."""
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    return _normalised_cdf(np.arange(1, n + 1, dtype=np.float64) ** -exponent)


def _pick(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _group_starts(lengths: np.ndarray) -> np.ndarray:
    return np.cumsum(lengths) - lengths


def _exclusive_cumsum_by_group(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Running sums that restart at every group of `lengths` consecutive elements."""
    running = np.cumsum(values) - values
    return running - np.repeat(running[_group_starts(lengths)[lengths > 0]], lengths[lengths > 0])


def _occurrence_index(keys: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements share its key."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(keys)), 0))
    index = np.empty(len(keys), dtype=np.int64)
    index[order] = np.arange(len(keys)) - group_start
    return index


# --------------------------------------------------------------------------------------------------
# Hosts and sessions


class _Network:
    """The enterprise /16 (hosts spread over subnets), external peers and per-class server pools."""

    def __init__(self, rng: np.random.Generator):
        base = int(INTERNAL_NET.network_address)
        subnets = rng.choice(256, _INTERNAL_SUBNETS, replace=False)
        subnet_of_host = np.sort(_pick(rng, _zipf_cdf(_INTERNAL_SUBNETS, 0.5), _INTERNAL_HOSTS))
        rank_in_subnet = _occurrence_index(subnet_of_host)
        fits = rank_in_subnet < 250  # .0, .1 (the router) and .255 stay free
        internal = base + (subnets[subnet_of_host[fits]].astype(np.int64) << 8) + rank_in_subnet[fits] + 2
        self.internal_hosts = len(internal)
        external = _external_addresses(rng)
        self.addresses = np.concatenate([rng.permutation(internal), external]).astype(np.uint32)
        self.internal_cdf = _zipf_cdf(self.internal_hosts, _HOST_ZIPF)
        self.external_cdf = _zipf_cdf(len(self.addresses) - self.internal_hosts, _HOST_ZIPF)
        group_offsets = rng.choice(_MULTICAST_NET.num_addresses, _MULTICAST_GROUPS, replace=False)
        groups = int(_MULTICAST_NET.network_address) + group_offsets
        pools = [groups if app.proto == PROTO_IGMP
                 else rng.choice(self.internal_hosts, app.servers, replace=False) for app in APP_CLASSES]
        sizes = np.array([len(pool) for pool in pools])
        self.server_pool_values = np.concatenate(pools).astype(np.int64)
        self.server_pool_start = _group_starts(sizes)
        self.server_cdf = np.ones((len(pools), sizes.max()))
        for index, size in enumerate(sizes):
            self.server_cdf[index, :size] = _zipf_cdf(size, _SERVER_ZIPF)

    def internal_clients(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return _pick(rng, self.internal_cdf, size)

    def external_hosts(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.internal_hosts + _pick(rng, self.external_cdf, size)


def _external_addresses(rng: np.random.Generator) -> np.ndarray:
    """Unicast addresses outside private, loopback, link-local, multicast and reserved space."""
    excluded = [ipaddress.IPv4Network(n) for n in
                ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                 "172.16.0.0/12", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3")]
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < _EXTERNAL_HOSTS:
        candidates = rng.integers(1 << 24, 224 << 24, 2 * _EXTERNAL_HOSTS)
        keep = np.ones(len(candidates), dtype=bool)
        for net in excluded:
            keep &= (candidates & int(net.netmask)) != int(net.network_address)
        fresh = candidates[keep & ((candidates & 0xFF) != 0) & ((candidates & 0xFF) != 255)]
        chosen = np.concatenate([chosen, fresh[~np.isin(fresh, chosen)]])
        chosen = chosen[np.sort(np.unique(chosen, return_index=True)[1])]
    return chosen[:_EXTERNAL_HOSTS]


class _PortAllocator:
    """Hands every host's connections consecutive ephemeral ports, like an OS does, never reusing one.

    A host whose port range is used up is replaced by another host of the same side, so a 5-tuple is
    never seen twice in a trace and tshark's conversations coincide with 5-tuple flows.
    """

    def __init__(self, rng: np.random.Generator, network: _Network):
        self._first_port = rng.integers(0, _EPHEMERAL_SPAN, len(network.addresses))
        self._used = np.zeros(len(network.addresses), dtype=np.int64)
        self._internal_hosts = network.internal_hosts

    def allocate(self, rng: np.random.Generator, hosts: np.ndarray, avoid: np.ndarray) -> np.ndarray:
        """Ports for connections from `hosts` (updated in place where a host is replaced)."""
        ports = np.empty(len(hosts), dtype=np.int64)
        todo = np.arange(len(hosts))
        while len(todo):
            slot = self._used[hosts[todo]] + _occurrence_index(hosts[todo])
            fits = (slot < _EPHEMERAL_SPAN) & (hosts[todo] != avoid[todo])
            done = todo[fits]
            ports[done] = _EPHEMERAL_LOW + (self._first_port[hosts[done]] + slot[fits]) % _EPHEMERAL_SPAN
            np.add.at(self._used, hosts[done], 1)
            todo = todo[~fits]
            internal = hosts[todo] < self._internal_hosts
            hosts[todo] = np.where(
                internal,
                rng.integers(0, self._internal_hosts, len(todo)),
                rng.integers(self._internal_hosts, len(self._used), len(todo)),
            )
        return ports


class _RateModulation:
    """Two-state Markov chain, stepped once per slot, that scales the session arrival rate (mean 1)."""

    def __init__(self, rng: np.random.Generator):
        high_share = _HIGH_SOJOURN_S / (_HIGH_SOJOURN_S + _LOW_SOJOURN_S)
        mean = high_share * _HIGH_RATE + (1 - high_share) * _LOW_RATE
        self._rate = (_LOW_RATE / mean, _HIGH_RATE / mean)
        slot_s = _SLOT_US / 1e6
        self._leave = (-np.expm1(-slot_s / _LOW_SOJOURN_S), -np.expm1(-slot_s / _HIGH_SOJOURN_S))
        self._high = int(rng.random() < high_share)

    def rates(self, rng: np.random.Generator, slots: int) -> np.ndarray:
        rates = np.empty(slots)
        for slot, draw in enumerate(rng.random(slots)):
            if draw < self._leave[self._high]:
                self._high = 1 - self._high
            rates[slot] = self._rate[self._high]
        return rates


# --------------------------------------------------------------------------------------------------
# Flows to packets

_KIND_HANDSHAKE, _KIND_REJECT, _KIND_TEARDOWN, _KIND_TCP_DATA, _KIND_DATAGRAM = range(5)
_CONTROL_FLAGS = {
    _KIND_HANDSHAKE: np.array([_SYN, _SYN | _ACK, _ACK]),
    _KIND_REJECT: np.array([_SYN, _RST | _ACK]),
    _KIND_TEARDOWN: np.array([_FIN | _ACK, _FIN | _ACK, _ACK]),
}
"""TCP flags of the packets of the fixed-shape blocks; the second packet is the server's."""
_PACKETS_PER_KIND = np.array([len(_CONTROL_FLAGS.get(kind, ())) for kind in range(5)])

_PACKET_DTYPE = np.dtype([
    ("ts", "<i8"), ("src", "<u4"), ("dst", "<u4"), ("sport", "<u2"), ("dport", "<u2"),
    ("proto", "u1"), ("from_server", "u1"), ("tcp_flags", "u1"), ("ip_len", "<u2"), ("ip_id", "<u2"),
    ("seq", "<u4"), ("ack", "<u4"), ("tag", "<u4"),
])
"""One packet before encoding.  `seq` is the TCP sequence number or the message number of ICMP echo,
ESP and GRE; `ack` the TCP acknowledgement; `tag` the TCP window, ICMP echo id, ESP SPI or GRE call id."""


def _class_column(field: str) -> np.ndarray:
    return np.array([getattr(app, field) for app in APP_CLASSES], dtype=np.float64)


@dataclasses.dataclass
class _Flows:
    """Flow-level draws: who talks to whom, on which ports, from when."""

    start_us: np.ndarray
    cls: np.ndarray
    proto: np.ndarray
    client: np.ndarray
    """Host index of the endpoint that opens the flow."""
    server_host: np.ndarray
    """Host index of the other endpoint, -1 for a multicast group."""
    server_addr: np.ndarray
    wan: np.ndarray
    """Whether one endpoint is outside the enterprise."""
    client_port: np.ndarray | None = None
    server_port: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _Paths:
    """Per flow: the network path its packets take."""

    rtt_us: np.ndarray
    frame_us: np.ndarray
    """Time a full-size frame takes at the bottleneck link."""
    window: np.ndarray
    """Segments a TCP sender sends before it waits one round trip for ACKs."""


@dataclasses.dataclass(frozen=True)
class _Blocks:
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
class _Timeline:
    """Per packet of a batch of flows, in flow order: what it is and when it is seen."""

    flow: np.ndarray
    from_server: np.ndarray
    flags: np.ndarray
    payload: np.ndarray
    round: np.ndarray
    ts: np.ndarray
    packets_per_flow: np.ndarray


class _FlowSource:
    """Draws the sessions of each window and expands their flows into packets."""

    def __init__(self, rng: np.random.Generator, flows_per_second: float):
        self._rng = rng
        self._network = _Network(rng)
        self._ports = _PortAllocator(rng, self._network)
        self._modulation = _RateModulation(rng)
        self._portless_pairs: set[tuple[int, int, int]] = set()
        flows_per_session = np.array([
            _discrete_lomax_mean(app.flows_per_session, _SESSION_ALPHA, _MAX_FLOWS_PER_SESSION)
            for app in APP_CLASSES])
        session_weights = _class_column("flow_share") / flows_per_session
        self._session_cdf = _normalised_cdf(session_weights)
        self._sessions_per_second = flows_per_second * session_weights.sum() / np.sum(
            session_weights * flows_per_session)
        width = max(len(app.ports) for app in APP_CLASSES)
        self._port_table = np.zeros((len(APP_CLASSES), width), dtype=np.int64)
        self._port_cdf = np.ones((len(APP_CLASSES), width))
        for index, app in enumerate(APP_CLASSES):
            if app.ports:
                ports, weights = zip(*app.ports, strict=True)
                self._port_table[index, :len(ports)] = ports
                self._port_cdf[index, :len(ports)] = _normalised_cdf(np.array(weights))
        self._column = {field.name: _class_column(field.name) for field in dataclasses.fields(AppClass)
                        if isinstance(getattr(APP_CLASSES[0], field.name), (int, float))}
        self._column["l4_header"] = np.array([_L4_HEADER[app.proto] for app in APP_CLASSES], dtype=np.float64)

    def packets_for_window(self, start_us: int, end_us: int, trace_end_us: int) -> tuple[np.ndarray, int]:
        """Packets in [0, trace_end_us) of the flows whose sessions start in [start_us, end_us), and the
        number of flows they belong to."""
        flows = self._draw_flows(start_us, end_us)
        paths = self._draw_paths(flows)
        timeline = _lay_out(self._rng, self._draw_blocks(flows, paths), paths, flows.start_us)
        packets = self._assemble(flows, timeline)
        keep = (packets["ts"] >= 0) & (packets["ts"] < trace_end_us)
        flow_count = int(np.count_nonzero(np.bincount(timeline.flow[keep], minlength=1)))
        return packets[keep], flow_count

    def _draw_flows(self, start_us: int, end_us: int) -> _Flows:
        """Sessions arrive as a Markov-modulated Poisson process; each opens a heavy-tailed number of
        flows of one class, between one client and one server, spaced by lognormal gaps."""
        rng, net = self._rng, self._network
        slots = (end_us - start_us) // _SLOT_US
        mean_per_slot = self._sessions_per_second * _SLOT_US / 1e6
        per_slot = rng.poisson(mean_per_slot * self._modulation.rates(rng, slots))
        sessions = int(per_slot.sum())
        session_start = np.sort(start_us + np.repeat(np.arange(slots) * _SLOT_US, per_slot)
                                + rng.integers(0, _SLOT_US, sessions))
        session_class = _pick(rng, self._session_cdf, sessions)
        col = {name: values[session_class] for name, values in self._column.items()}

        side = rng.random(sessions)
        inbound = side < col["inbound"]
        outbound = ~inbound & (side < col["inbound"] + col["outbound"])
        client = np.where(inbound, net.external_hosts(rng, sessions), net.internal_clients(rng, sessions))
        server_rank = (rng.random(sessions)[:, None] >= net.server_cdf[session_class]).sum(axis=1)
        pool_server = net.server_pool_values[net.server_pool_start[session_class] + server_rank]
        group = col["proto"] == PROTO_IGMP
        server_host = np.where(outbound, net.external_hosts(rng, sessions), np.where(group, -1, pool_server))
        server_addr = np.where(group, pool_server, net.addresses[server_host])

        per_session = _discrete_lomax(rng, col["flows_per_session"], _SESSION_ALPHA, _MAX_FLOWS_PER_SESSION)
        session = np.repeat(np.arange(sessions), per_session)
        gaps = np.rint(_lognormal(rng, _FLOW_GAP_MEDIAN_S * 1e6, _FLOW_GAP_SIGMA, len(session)))
        gaps = gaps.astype(np.int64)
        gaps[_group_starts(per_session)] = 0
        cls = session_class[session]
        flows = _Flows(
            start_us=session_start[session] + _exclusive_cumsum_by_group(gaps, per_session) + gaps,
            cls=cls,
            proto=self._column["proto"][cls].astype(np.int64),
            client=client[session],
            server_host=server_host[session],
            server_addr=server_addr[session].astype(np.int64),
            wan=(inbound | outbound)[session],
        )
        self._assign_ports(flows)
        return flows

    def _assign_ports(self, flows: _Flows) -> None:
        rng = self._rng
        ported = np.isin(flows.proto, (PROTO_TCP, PROTO_UDP))
        port_index = (rng.random(len(flows.cls))[:, None] >= self._port_cdf[flows.cls]).sum(axis=1)
        flows.server_port = np.where(ported, self._port_table[flows.cls, port_index], 0)
        flows.client_port = np.zeros(len(flows.cls), dtype=np.int64)
        clients = flows.client[ported]
        flows.client_port[ported] = self._ports.allocate(rng, clients, flows.server_host[ported])
        flows.client[ported] = clients
        self._dedupe_portless(flows, np.flatnonzero(~ported))

    def _dedupe_portless(self, flows: _Flows, portless: np.ndarray) -> None:
        """Give each portless flow its own host pair: a (proto, pair) key is its whole 5-tuple."""
        net = self._network
        for flow in portless:
            while True:
                client = int(flows.client[flow])
                ends = sorted((int(net.addresses[client]), int(flows.server_addr[flow])))
                pair = (int(flows.proto[flow]), *ends)
                if client != flows.server_host[flow] and pair not in self._portless_pairs:
                    self._portless_pairs.add(pair)
                    break
                flows.client[flow] = (net.internal_clients(self._rng, 1)[0] if client < net.internal_hosts
                                      else net.external_hosts(self._rng, 1)[0])

    def _draw_paths(self, flows: _Flows) -> _Paths:
        """Sub-millisecond LAN round trips at 10/100/1000 Mb/s; tens of milliseconds and a few Mb/s
        across the wide area."""
        rng, count = self._rng, len(flows.cls)
        rtt = np.where(flows.wan, _lognormal(rng, 40e3, 0.8, count), _lognormal(rng, 300.0, 0.7, count))
        lan_mbps = np.array([10.0, 100.0, 1000.0])[_pick(rng, np.array([0.1, 0.7, 1.0]), count)]
        mbps = np.where(flows.wan, np.clip(_lognormal(rng, 4.0, 1.0, count), 0.1, 100.0), lan_mbps)
        return _Paths(
            rtt_us=rtt,
            frame_us=np.maximum(1.0, (_MSS + _ETHERNET_HEADER + _IP_HEADER + _TCP_HEADER) * 8 / mbps),
            window=np.array([12, 44, 128])[_pick(rng, np.array([0.4, 0.8, 1.0]), count)],
        )

    def _draw_blocks(self, flows: _Flows, paths: _Paths) -> _Blocks:
        """Each flow: a handshake (or a refusal), request/response rounds, a teardown (TCP only).

        The flow's bulk payload, lognormal with a bounded Pareto tail, is spread over its rounds with
        exponential weights; rounds after the first wait a Pareto think time.
        """
        rng, count = self._rng, len(flows.cls)
        col = {name: values[flows.cls] for name, values in self._column.items()}
        tcp = flows.proto == PROTO_TCP
        rejected = tcp & (rng.random(count) < col["reject_share"])
        rounds = np.where(rejected, 0, _discrete_lomax(rng, col["rounds"], _ROUND_ALPHA, _MAX_ROUNDS))
        in_tail = rng.random(count) < col["tail_share"]
        bulk = np.where(in_tail, _bounded_pareto(rng, col["tail_bytes"], col["tail_alpha"], _MAX_FLOW_BYTES),
                        np.minimum(_lognormal(rng, col["response_bytes"], col["response_sigma"], count),
                                   _MAX_FLOW_BYTES))
        upload = rng.random(count) < col["upload_share"]

        round_flow = np.repeat(np.arange(count), rounds)
        round_index = np.arange(len(round_flow)) - np.repeat(_group_starts(rounds), rounds)
        rcol = {name: values[round_flow] for name, values in col.items()}
        weight = rng.exponential(size=len(round_flow))
        flow_weight = np.bincount(round_flow, weights=weight, minlength=count)
        datagram = ~tcp[round_flow]
        smallest = np.where(datagram, 0, 1)  # a TCP message carries at least one byte
        round_bulk = np.maximum(np.rint(bulk[round_flow] * weight / flow_weight[round_flow]), smallest)
        request = np.maximum(np.rint(_lognormal(rng, rcol["request_bytes"], 0.5, len(round_flow))), smallest)
        up = upload[round_flow]
        forward_bytes = np.where(up, round_bulk, request).astype(np.int64)
        echo = flows.proto[round_flow] == PROTO_ICMP
        reverse_bytes = np.where(echo, forward_bytes, np.where(up, request, round_bulk)).astype(np.int64)
        answered = ~datagram | (rng.random(len(round_flow)) < rcol["response_share"])
        think = _pareto(rng, rcol["think_s"] * 1e6, _THINK_ALPHA, _MAX_THINK_S * 1e6)
        rtt = paths.rtt_us[round_flow]
        forward_gap = np.where(round_index == 0, np.where(datagram, 0.0, rtt / 2), think)
        reverse_gap = rtt + _lognormal(rng, _SERVICE_MEDIAN_US, 1.0, len(round_flow))

        opens = tcp.astype(np.int64)
        closes = (tcp & ~rejected).astype(np.int64)
        blocks_per_flow = opens + 2 * rounds + closes
        first_block = _group_starts(blocks_per_flow)
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
        gap[closing] = _pareto(rng, col["linger_s"][closes == 1] * 1e6, _THINK_ALPHA, _MAX_THINK_S * 1e6)
        largest_datagram = np.minimum(col["datagram_bytes"], _IP_MTU - _IP_HEADER - col["l4_header"])
        segment = np.where(kind == _KIND_TCP_DATA, _MSS, largest_datagram[flow].astype(np.int64))
        return _Blocks(flow=flow, kind=kind, from_server=from_server, payload=payload, gap_us=gap,
                       round=block_round, segment=segment, pacing_us=col["pacing_s"][flow] * 1e6)

    def _assemble(self, flows: _Flows, timeline: _Timeline) -> np.ndarray:
        """Addresses, lengths and per-direction counters (TCP sequence space, IP ids) of each packet."""
        rng = self._rng
        flow, flags, payload = timeline.flow, timeline.flags, timeline.payload
        count = len(timeline.packets_per_flow)
        proto = flows.proto[flow]
        client_addr = self._network.addresses[flows.client[flow]].astype(np.int64)
        reverse = timeline.from_server.astype(bool)
        side = reverse.astype(np.int64)
        packets = np.zeros(len(flow), dtype=_PACKET_DTYPE)
        packets["ts"] = timeline.ts
        packets["proto"] = proto
        packets["from_server"] = side
        packets["src"] = np.where(reverse, flows.server_addr[flow], client_addr)
        packets["dst"] = np.where(reverse, client_addr, flows.server_addr[flow])
        packets["sport"] = np.where(reverse, flows.server_port[flow], flows.client_port[flow])
        packets["dport"] = np.where(reverse, flows.client_port[flow], flows.server_port[flow])
        packets["tcp_flags"] = flags
        options = np.where(flags & _SYN, len(_TCP_SYN_OPTIONS), 0)
        l4_header = self._column["l4_header"][flows.cls[flow]].astype(np.int64)
        packets["ip_len"] = _IP_HEADER + l4_header + options + payload

        sequence_use = payload + ((flags & (_SYN | _FIN)) != 0)
        per_flow = timeline.packets_per_flow
        sent_before = np.stack([_exclusive_cumsum_by_group(sequence_use * (side == d), per_flow)
                                for d in (0, 1)])
        sent_count = np.stack([_exclusive_cumsum_by_group((side == d).astype(np.int64), per_flow)
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
        packets["ack"] = np.where(tcp & (flags & _ACK != 0), isn[1 - side, flow] + other_sent, 0) & 0xFFFFFFFF
        packets["ip_id"] = (ip_id[side, flow] + own_count) & 0xFFFF
        packets["tag"] = np.select([tcp, proto == PROTO_ICMP], [window[side, flow], tag[0, flow] & 0xFFFF],
                                   tag[side, flow])
        return packets


def _lay_out(rng: np.random.Generator, blocks: _Blocks, paths: _Paths, start_us: np.ndarray) -> _Timeline:
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
    position = np.arange(len(block)) - np.repeat(_group_starts(packets_per_block), packets_per_block)
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
    flags[tcp_data] = _ACK
    flags[segment & (data_index == m - 1)] = _PSH | _ACK
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
    gap[_group_starts(packets_per_flow)[packets_per_flow > 0]] = 0
    ts = start_us[flow] + _exclusive_cumsum_by_group(gap, packets_per_flow) + gap
    return _Timeline(flow=flow, from_server=from_server, flags=flags, payload=payload,
                     round=blocks.round[block], ts=ts, packets_per_flow=packets_per_flow)


class _TimeOrderedBuffer:
    """Packets not yet written, as time-sorted runs (one per window) that are merged only when due.

    Merging just the due heads keeps the cost per window proportional to what is written, not to the
    packets of long flows still waiting; ties keep the order in which packets were added.
    """

    _MAX_RUNS = 32

    def __init__(self):
        self._runs: list[np.ndarray] = []

    def add(self, packets: np.ndarray) -> None:
        if len(packets):
            self._runs.append(packets[np.argsort(packets["ts"], kind="stable")])
        if len(self._runs) > self._MAX_RUNS:
            self._runs = [_merge_runs(self._runs)]

    def pop_before(self, ts: int) -> np.ndarray:
        cuts = [int(np.searchsorted(run["ts"], ts, side="left")) for run in self._runs]
        due = _merge_runs([run[:cut] for run, cut in zip(self._runs, cuts, strict=True)])
        self._runs = [run[cut:] for run, cut in zip(self._runs, cuts, strict=True) if cut < len(run)]
        return due


def _merge_runs(runs: list[np.ndarray]) -> np.ndarray:
    """One time-sorted array of all packets in `runs`; equal timestamps keep the runs' order."""
    merged = np.empty(sum(len(run) for run in runs), dtype=_PACKET_DTYPE)
    offset = 0
    for run in runs:
        merged[offset:offset + len(run)] = run
        offset += len(run)
    return merged[np.argsort(merged["ts"], kind="stable")]


# --------------------------------------------------------------------------------------------------
# Encoding

_HEAD_DTYPE = np.dtype([
    ("sec", "<u4"), ("usec", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4"),  # libpcap record header
    ("dst_oui", ">u2"), ("dst_nic", ">u4"), ("src_oui", ">u2"), ("src_nic", ">u4"), ("ethertype", ">u2"),
    ("vhl", "u1"), ("tos", "u1"), ("len", ">u2"), ("id", ">u2"), ("frag", ">u2"), ("ttl", "u1"),
    ("proto", "u1"), ("sum", ">u2"), ("src", ">u4"), ("dst", ">u4"),
])
"""Record header, Ethernet header and IPv4 header of one packet, laid out as written."""
_RECORD_HEADER = 16
_IP_OFFSET = _RECORD_HEADER + _ETHERNET_HEADER
_L4_OFFSET = _IP_OFFSET + _IP_HEADER
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
                     head["len"].astype(np.uint64) - _IP_HEADER], axis=1)


def _is_internal(addresses: np.ndarray) -> np.ndarray:
    return (addresses & int(INTERNAL_NET.netmask)) == int(INTERNAL_NET.network_address)


def _host_ttl(addresses: np.ndarray) -> np.ndarray:
    """A fixed TTL per source: the OS's initial TTL less the hops to the monitor, both hashed from it."""
    mixed = (addresses.astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    initial = np.array([128, 128, 128, 64, 64, 255], dtype=np.int64)[(mixed >> np.uint64(8)) % np.uint64(6)]
    spread = (mixed >> np.uint64(20)).astype(np.int64)
    hops = np.where(_is_internal(addresses), spread % 3, 6 + spread % 14)
    return initial - hops


def _encode(packets: np.ndarray) -> bytes:
    """libpcap records of `packets`: the first SNAPLEN bytes of each frame, whose payload is all zeros.

    Internal hosts get a locally administered MAC built from their address; others sit behind the router.
    """
    count = len(packets)
    proto = packets["proto"]
    ip_len = packets["ip_len"].astype(np.int64)
    wire = np.maximum(ip_len + _ETHERNET_HEADER, _ETHERNET_MIN_FRAME)
    caplen = np.minimum(wire, SNAPLEN)

    head = np.zeros(count, dtype=_HEAD_DTYPE)
    head["sec"] = TRACE_EPOCH + packets["ts"] // 1_000_000
    head["usec"] = packets["ts"] % 1_000_000
    head["caplen"] = caplen
    head["wirelen"] = wire
    for end in ("src", "dst"):
        internal = _is_internal(packets[end])
        head[f"{end}_oui"] = np.where(internal, 0x0200, _ROUTER_OUI)
        head[f"{end}_nic"] = np.where(internal, packets[end], _ROUTER_NIC)
    head["ethertype"] = 0x0800
    head["vhl"] = 0x45
    head["len"] = ip_len
    head["id"] = packets["ip_id"]
    head["frag"] = np.where(proto == PROTO_TCP, 0x4000, 0)  # don't fragment
    head["ttl"] = np.where(proto == PROTO_IGMP, 1, _host_ttl(packets["src"]))
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
    syn = (packets["tcp_flags"] & _SYN) != 0
    tcp["sport"], tcp["dport"] = packets["sport"], packets["dport"]
    tcp["seq"], tcp["ack"] = packets["seq"], packets["ack"]
    tcp["off"] = np.where(syn, (_TCP_HEADER + len(_TCP_SYN_OPTIONS)) // 4, _TCP_HEADER // 4) << 4
    tcp["flags"] = packets["tcp_flags"]
    tcp["win"] = packets["tag"]
    tcp["opt"][syn] = np.frombuffer(_TCP_SYN_OPTIONS, dtype=np.uint8)
    tcp["sum"] = _checksum(np.concatenate([_pseudo_header(head), _words(tcp)], axis=1))
    return tcp


def _encode_udp(packets: np.ndarray, head: np.ndarray) -> np.ndarray:
    udp = np.zeros(len(packets), dtype=_UDP_DTYPE)
    udp["sport"], udp["dport"] = packets["sport"], packets["dport"]
    udp["len"] = head["len"] - _IP_HEADER
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
    gre["len"] = head["len"] - _IP_HEADER - 12  # everything after the 12-byte GRE header, PPP included
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


_L4_ENCODERS = {PROTO_TCP: _encode_tcp, PROTO_UDP: _encode_udp, PROTO_ICMP: _encode_icmp,
                PROTO_ESP: _encode_esp, PROTO_GRE: _encode_gre, PROTO_IGMP: _encode_igmp}


class _PcapWriter:
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
        self.bytes += int(np.maximum(packets["ip_len"].astype(np.int64) + _ETHERNET_HEADER,
                                     _ETHERNET_MIN_FRAME).sum())
        self._out.write(_encode(packets))
