"""The traffic mix: the application classes of the enterprise trace and the parameters of each.

Figures follow the categories of Pang et al. 2005; docs/traces.md tabulates them with their sources.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trace_replay.synthetic.distributions import discrete_lomax_mean, normalised_cdf
from trace_replay.synthetic.wire import (
    L4_HEADER,
    PROTO_ESP,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_IGMP,
    PROTO_TCP,
    PROTO_UDP,
)

MULTICAST_GROUPS = 12
"""Multicast groups the IGMP class's hosts report membership of."""
SESSION_ALPHA = 1.5
"""Tail index of the discrete-Lomax number of flows a session opens."""
MAX_FLOWS_PER_SESSION = 200


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
             servers=MULTICAST_GROUPS, rounds=1.0, think_s=30.0, response_share=0.0),
)


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """The application classes as arrays indexed by class number, for vectorised draws."""

    column: dict[str, np.ndarray]
    """Every numeric field of `AppClass`, and `l4_header`: the transport header bytes of its protocol."""
    flows_per_session: np.ndarray
    """Mean number of flows a session of the class opens."""
    session_weights: np.ndarray
    """Relative session arrival rate of each class: its flow share over its flows per session."""
    session_cdf: np.ndarray
    port_table: np.ndarray
    """[class, k] the class's k-th server port; 0 past its last."""
    port_cdf: np.ndarray
    """[class, k] cumulative weight of the class's first k+1 server ports; 1 past its last."""

    @classmethod
    def from_classes(cls, classes: tuple[AppClass, ...]) -> ClassTable:
        column = {field.name: np.array([getattr(app, field.name) for app in classes], dtype=np.float64)
                  for field in dataclasses.fields(AppClass)
                  if isinstance(getattr(classes[0], field.name), (int, float))}
        column["l4_header"] = np.array([L4_HEADER[app.proto] for app in classes], dtype=np.float64)
        flows_per_session = np.array([
            discrete_lomax_mean(app.flows_per_session, SESSION_ALPHA, MAX_FLOWS_PER_SESSION)
            for app in classes])
        session_weights = column["flow_share"] / flows_per_session
        width = max(len(app.ports) for app in classes)
        port_table = np.zeros((len(classes), width), dtype=np.int64)
        port_cdf = np.ones((len(classes), width))
        for index, app in enumerate(classes):
            if app.ports:
                ports, weights = zip(*app.ports, strict=True)
                port_table[index, :len(ports)] = ports
                port_cdf[index, :len(ports)] = normalised_cdf(np.array(weights))
        return cls(column=column, flows_per_session=flows_per_session, session_weights=session_weights,
                   session_cdf=normalised_cdf(session_weights), port_table=port_table, port_cdf=port_cdf)

    def sessions_per_second(self, flows_per_second: float) -> float:
        """The session arrival rate that opens `flows_per_second` flows on average."""
        weights = self.session_weights
        return flows_per_second * weights.sum() / np.sum(weights * self.flows_per_session)
