"""Who talks to whom, when and over which path: session arrivals, their flows and the flows' paths."""

from __future__ import annotations

import dataclasses

import numpy as np

from trace_replay.synthetic.distributions import discrete_lomax, lognormal, pick
from trace_replay.synthetic.mix import MAX_FLOWS_PER_SESSION, SESSION_ALPHA, ClassTable
from trace_replay.synthetic.network import Network, PortAllocator
from trace_replay.synthetic.ragged import exclusive_cumsum_by_group, group_starts
from trace_replay.synthetic.wire import (
    ETHERNET_HEADER,
    IP_HEADER,
    MSS,
    PROTO_IGMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_HEADER,
)

SLOT_US = 1_000_000
"""Time step of the arrival-rate modulation."""
_FLOW_GAP_MEDIAN_S = 0.25
_FLOW_GAP_SIGMA = 1.5
_LOW_RATE, _HIGH_RATE = 0.6, 1.8
_LOW_SOJOURN_S, _HIGH_SOJOURN_S = 45.0, 15.0
"""Two-state Markov modulation of the session rate (Markov-modulated Poisson arrivals)."""


@dataclasses.dataclass
class Flows:
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
class Paths:
    """Per flow: the network path its packets take."""

    rtt_us: np.ndarray
    frame_us: np.ndarray
    """Time a full-size frame takes at the bottleneck link."""
    window: np.ndarray
    """Segments a TCP sender sends before it waits one round trip for ACKs."""


class RateModulation:
    """Two-state Markov chain, stepped once per slot, that scales the session arrival rate (mean 1)."""

    def __init__(self, rng: np.random.Generator):
        high_share = _HIGH_SOJOURN_S / (_HIGH_SOJOURN_S + _LOW_SOJOURN_S)
        mean = high_share * _HIGH_RATE + (1 - high_share) * _LOW_RATE
        self._rate = (_LOW_RATE / mean, _HIGH_RATE / mean)
        slot_s = SLOT_US / 1e6
        self._leave = (-np.expm1(-slot_s / _LOW_SOJOURN_S), -np.expm1(-slot_s / _HIGH_SOJOURN_S))
        self._high = int(rng.random() < high_share)

    def rates(self, rng: np.random.Generator, slots: int) -> np.ndarray:
        """[slots] multipliers of the session rate, one per SLOT_US slot, continuing the chain from the last call."""
        rates = np.empty(slots)
        for slot, draw in enumerate(rng.random(slots)):
            if draw < self._leave[self._high]:
                self._high = 1 - self._high
            rates[slot] = self._rate[self._high]
        return rates


class SessionSource:
    """Draws the sessions that start in each time window and the flows they open."""

    def __init__(self, rng: np.random.Generator, flows_per_second: float, table: ClassTable):
        self._rng = rng
        self.network = Network(rng)
        self._ports = PortAllocator(rng, self.network)
        self._modulation = RateModulation(rng)
        self._portless_pairs: set[tuple[int, int, int]] = set()
        self._table = table
        self._sessions_per_second = table.sessions_per_second(flows_per_second)

    def flows(self, start_us: int, end_us: int) -> Flows:
        """Sessions arrive as a Markov-modulated Poisson process; each opens a heavy-tailed number of
        flows of one class, between one client and one server, spaced by lognormal gaps."""
        rng, net, table = self._rng, self.network, self._table
        slots = (end_us - start_us) // SLOT_US
        mean_per_slot = self._sessions_per_second * SLOT_US / 1e6
        per_slot = rng.poisson(mean_per_slot * self._modulation.rates(rng, slots))
        sessions = int(per_slot.sum())
        session_start = np.sort(start_us + np.repeat(np.arange(slots) * SLOT_US, per_slot)
                                + rng.integers(0, SLOT_US, sessions))
        session_class = pick(rng, table.session_cdf, sessions)
        col = {name: values[session_class] for name, values in table.column.items()}

        side = rng.random(sessions)
        inbound = side < col["inbound"]
        outbound = ~inbound & (side < col["inbound"] + col["outbound"])
        client = np.where(inbound, net.external_hosts(rng, sessions), net.internal_clients(rng, sessions))
        server_rank = (rng.random(sessions)[:, None] >= net.server_cdf[session_class]).sum(axis=1)
        pool_server = net.server_pool_values[net.server_pool_start[session_class] + server_rank]
        group = col["proto"] == PROTO_IGMP
        server_host = np.where(outbound, net.external_hosts(rng, sessions), np.where(group, -1, pool_server))
        server_addr = np.where(group, pool_server, net.addresses[server_host])

        per_session = discrete_lomax(rng, col["flows_per_session"], SESSION_ALPHA, MAX_FLOWS_PER_SESSION)
        session = np.repeat(np.arange(sessions), per_session)
        gaps = np.rint(lognormal(rng, _FLOW_GAP_MEDIAN_S * 1e6, _FLOW_GAP_SIGMA, len(session)))
        gaps = gaps.astype(np.int64)
        gaps[group_starts(per_session)] = 0
        cls = session_class[session]
        flows = Flows(
            start_us=session_start[session] + exclusive_cumsum_by_group(gaps, per_session) + gaps,
            cls=cls,
            proto=table.column["proto"][cls].astype(np.int64),
            client=client[session],
            server_host=server_host[session],
            server_addr=server_addr[session].astype(np.int64),
            wan=(inbound | outbound)[session],
        )
        self._assign_ports(flows)
        return flows

    def _assign_ports(self, flows: Flows) -> None:
        rng, table = self._rng, self._table
        ported = np.isin(flows.proto, (PROTO_TCP, PROTO_UDP))
        port_index = (rng.random(len(flows.cls))[:, None] >= table.port_cdf[flows.cls]).sum(axis=1)
        flows.server_port = np.where(ported, table.port_table[flows.cls, port_index], 0)
        flows.client_port = np.zeros(len(flows.cls), dtype=np.int64)
        clients = flows.client[ported]
        flows.client_port[ported] = self._ports.allocate(rng, clients, flows.server_host[ported])
        flows.client[ported] = clients
        self._dedupe_portless(flows, np.flatnonzero(~ported))

    def _dedupe_portless(self, flows: Flows, portless: np.ndarray) -> None:
        """Give each portless flow its own host pair: a (proto, pair) key is its whole 5-tuple."""
        net = self.network
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


def draw_paths(rng: np.random.Generator, flows: Flows) -> Paths:
    """Sub-millisecond LAN round trips at 10/100/1000 Mb/s; tens of milliseconds and a few Mb/s
    across the wide area."""
    count = len(flows.cls)
    rtt = np.where(flows.wan, lognormal(rng, 40e3, 0.8, count), lognormal(rng, 300.0, 0.7, count))
    lan_mbps = np.array([10.0, 100.0, 1000.0])[pick(rng, np.array([0.1, 0.7, 1.0]), count)]
    mbps = np.where(flows.wan, np.clip(lognormal(rng, 4.0, 1.0, count), 0.1, 100.0), lan_mbps)
    return Paths(
        rtt_us=rtt,
        frame_us=np.maximum(1.0, (MSS + ETHERNET_HEADER + IP_HEADER + TCP_HEADER) * 8 / mbps),
        window=np.array([12, 44, 128])[pick(rng, np.array([0.4, 0.8, 1.0]), count)],
    )
