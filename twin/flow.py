"""A flow's identity, and its conversions to the forms the edges of the project use.

`FlowKey` names a bidirectional flow (a connection): both directions of a packet exchange give the
same key, oriented with the lower endpoint first, an endpoint being (address, port) compared as
numbers. That is the order in which `trace_replay.flows` groups a trace's packets, so the trace,
the NF reports and the controller agree. IPv4 and IPv6 are both admitted (the two endpoints of a
flow are of one version).

A key's one string form, `FlowKey.id`, is the flow id of the controller, the NF reports, the REST
API, the transition log and the demo summary: `ip:port-ip:port/proto` for IPv4, and
`[addr]:port-[addr]:port/proto` for IPv6.

`FiveTuple` is the directional header tuple of one packet (a direction matters for steering);
`FiveTuple.from_record`/`to_record` convert it to and from the `FIVE_TUPLE_DTYPE` arrays of the
cluster state, which hold IPv4 and IPv6 addresses as trace_replay.flows's flow table does.
"""
from __future__ import annotations

import functools
import ipaddress
import operator
from typing import NamedTuple

import numpy as np

FIVE_TUPLE_DTYPE = np.dtype([("src_ip", "<u4"), ("dst_ip", "<u4"), ("src_port", "<u2"),
                             ("dst_port", "<u2"), ("proto", "u1"), ("is_ipv6", "?"), ("src_ip6", "V16"),
                             ("dst_ip6", "V16")])
"""The cluster state's array form of a FiveTuple: IPv4 addresses as host-order integers in src_ip/dst_ip,
IPv6 ones (is_ipv6 set) as their 16 bytes in src_ip6/dst_ip6; the fields of trace_replay.flows.FLOW_DTYPE."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FlowIdError(ValueError):
    """Fields or a string that name no flow (a bad address, port, protocol or flow id)."""


class FiveTuple(NamedTuple):
    """The header fields of one direction of a flow, as a packet carries them."""

    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    proto: int

    def reverse(self) -> FiveTuple:
        """The other direction of the same flow."""
        return FiveTuple(self.dst_ip, self.src_ip, self.dst_port, self.src_port, self.proto)

    @classmethod
    def from_record(cls, record) -> FiveTuple:
        """The tuple of one FIVE_TUPLE_DTYPE record."""
        if record["is_ipv6"]:
            src, dst = (ipaddress.IPv6Address(record[name].tobytes()) for name in ("src_ip6", "dst_ip6"))
        else:
            src, dst = (ipaddress.IPv4Address(int(record[name])) for name in ("src_ip", "dst_ip"))
        return cls(str(src), str(dst), int(record["src_port"]), int(record["dst_port"]), int(record["proto"]))

    def to_record(self) -> tuple:
        """The fields of a FIVE_TUPLE_DTYPE record; FlowIdError for a bad address, port or protocol, and for
        endpoints of two IP versions."""
        src, dst = _address(self.src_ip), _address(self.dst_ip)
        if src.version != dst.version:
            raise FlowIdError(f"a flow's endpoints are of one IP version, not {src} and {dst}")
        ports = (_number("port", self.src_port, 0xFFFF), _number("port", self.dst_port, 0xFFFF),
                 _number("protocol", self.proto, 0xFF))
        if src.version == 4:
            return (int(src), int(dst), *ports, False, bytes(16), bytes(16))
        return (0, 0, *ports, True, src.packed, dst.packed)


class FlowKey(NamedTuple):
    """The direction-free identity of a flow: endpoint a is the lower one, by (address, port).

    Build keys with `FlowKey.of` (from either direction's fields) or `FlowKey.parse` (from a flow id);
    the plain constructor takes fields that are already canonical, as `trace_replay.flows` decodes them.
    """

    ip_a: str
    ip_b: str
    port_a: int
    port_b: int
    proto: int

    @classmethod
    def of(cls, src_ip, dst_ip, src_port, dst_port, proto) -> FlowKey:
        """The key of the flow a packet with these header fields belongs to, whichever its direction.
        Addresses may be text, `ipaddress` objects or packed bytes (as in a header)."""
        return _oriented(src_ip, dst_ip, _number("port", src_port, 0xFFFF),
                         _number("port", dst_port, 0xFFFF), _number("protocol", proto, 0xFF))

    @classmethod
    def parse(cls, flow_id: str) -> FlowKey:
        """The key a flow id (`FlowKey.id`) names; FlowIdError if it is no flow id."""
        endpoints, _, proto = flow_id.rpartition("/")
        first, dash, second = endpoints.partition("-")
        if not (dash and _is_number(proto)):
            raise FlowIdError(f"{flow_id!r} is not a flow id ip:port-ip:port/proto")
        (ip_a, port_a), (ip_b, port_b) = _endpoint(first, flow_id), _endpoint(second, flow_id)
        return cls.of(ip_a, ip_b, port_a, port_b, int(proto))

    @property
    def id(self) -> str:
        """The flow id: `ip:port-ip:port/proto`, IPv6 addresses in brackets."""
        if ":" in self.ip_a:
            return f"[{self.ip_a}]:{self.port_a}-[{self.ip_b}]:{self.port_b}/{self.proto}"
        return f"{self.ip_a}:{self.port_a}-{self.ip_b}:{self.port_b}/{self.proto}"

    @property
    def a_to_b(self) -> FiveTuple:
        """The header tuple of the direction from endpoint a to endpoint b."""
        return FiveTuple(*self)


@functools.lru_cache(maxsize=1 << 16)
def _oriented(src_ip, dst_ip, src_port: int, dst_port: int, proto: int) -> FlowKey:
    """The canonical key of checked ports and protocol; cached, as the data path asks per packet."""
    src, dst = _address(src_ip), _address(dst_ip)
    if src.version != dst.version:
        raise FlowIdError(f"a flow's endpoints are of one IP version, not {src} and {dst}")
    if (int(dst), dst_port) < (int(src), src_port):
        src, dst, src_port, dst_port = dst, src, dst_port, src_port
    return FlowKey(str(src), str(dst), src_port, dst_port, proto)


def _address(value) -> IPAddress:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise FlowIdError(f"{value!r} is not an IP address") from None
    if getattr(address, "scope_id", None):
        raise FlowIdError(f"{value!r} has a scope; a flow's addresses are global to the cluster")
    return address


def _number(name: str, value, top: int) -> int:
    """`value` as an int in 0..top (numpy integers accepted, booleans not)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise FlowIdError(f"{name} {value!r} is not an integer in 0..{top}") from None
    if not 0 <= number <= top:
        raise FlowIdError(f"{name} {value!r} is not an integer in 0..{top}")
    return number


def _endpoint(text: str, flow_id: str) -> tuple[IPAddress, int]:
    """(address, port) of one `ip:port` or `[ip6]:port` half of a flow id."""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        address = None
    if address is None or (address.version == 6) != bracketed or not _is_number(port):
        raise FlowIdError(f"{flow_id!r} is not a flow id: {text!r} is no ip:port or [ip6]:port")
    return address, int(port)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()
