"""The enterprise network of the trace: internal hosts in subnets, external peers, server pools, ports."""

from __future__ import annotations

import ipaddress

import numpy as np

from trace_replay.synthetic.distributions import pick, zipf_cdf
from trace_replay.synthetic.mix import APP_CLASSES, MULTICAST_GROUPS
from trace_replay.synthetic.ragged import group_starts, occurrence_index
from trace_replay.synthetic.wire import PROTO_IGMP

INTERNAL_NET = ipaddress.IPv4Network("10.37.0.0/16")

_EPHEMERAL_LOW = 10_000
"""Client ports come from [10000, 65535] and every server port is below 10000, so a client endpoint can
never equal a server endpoint and a connection's reverse 5-tuple never belongs to another flow."""
_EPHEMERAL_SPAN = 65_536 - _EPHEMERAL_LOW

_HOST_ZIPF = 0.8
_SERVER_ZIPF = 1.0
_INTERNAL_HOSTS = 3_000
_INTERNAL_SUBNETS = 40
_EXTERNAL_HOSTS = 20_000
_MULTICAST_NET = ipaddress.IPv4Network("239.255.0.0/16")


def is_internal(addresses: np.ndarray) -> np.ndarray:
    return (addresses & int(INTERNAL_NET.netmask)) == int(INTERNAL_NET.network_address)


class Network:
    """The enterprise /16 (hosts spread over subnets), external peers and per-class server pools.

    Hosts are indices into `addresses`: the internal ones first, then the external ones.
    """

    def __init__(self, rng: np.random.Generator):
        base = int(INTERNAL_NET.network_address)
        subnets = rng.choice(256, _INTERNAL_SUBNETS, replace=False)
        subnet_of_host = np.sort(pick(rng, zipf_cdf(_INTERNAL_SUBNETS, 0.5), _INTERNAL_HOSTS))
        rank_in_subnet = occurrence_index(subnet_of_host)
        fits = rank_in_subnet < 250  # .0, .1 (the router) and .255 stay free
        internal = base + (subnets[subnet_of_host[fits]].astype(np.int64) << 8) + rank_in_subnet[fits] + 2
        self.internal_hosts = len(internal)
        external = _external_addresses(rng)
        self.addresses = np.concatenate([rng.permutation(internal), external]).astype(np.uint32)
        self.internal_cdf = zipf_cdf(self.internal_hosts, _HOST_ZIPF)
        self.external_cdf = zipf_cdf(len(self.addresses) - self.internal_hosts, _HOST_ZIPF)
        group_offsets = rng.choice(_MULTICAST_NET.num_addresses, MULTICAST_GROUPS, replace=False)
        groups = int(_MULTICAST_NET.network_address) + group_offsets
        pools = [groups if app.proto == PROTO_IGMP
                 else rng.choice(self.internal_hosts, app.servers, replace=False) for app in APP_CLASSES]
        sizes = np.array([len(pool) for pool in pools])
        # per class, its servers' host indices (group addresses for IGMP), one pool after another
        self.server_pool_values = np.concatenate(pools).astype(np.int64)
        self.server_pool_start = group_starts(sizes)
        self.server_cdf = np.ones((len(pools), sizes.max()))
        for index, size in enumerate(sizes):
            self.server_cdf[index, :size] = zipf_cdf(size, _SERVER_ZIPF)

    def internal_clients(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` host indices (into `addresses`) of internal hosts, drawn Zipf-popular, repeats allowed."""
        return pick(rng, self.internal_cdf, size)

    def external_hosts(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` host indices (into `addresses`) of external peers, drawn Zipf-popular, repeats allowed."""
        return self.internal_hosts + pick(rng, self.external_cdf, size)


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


class PortAllocator:
    """Hands every host's connections consecutive ephemeral ports, like an OS does, never reusing one.

    A host whose port range is used up is replaced by another host of the same side, so a 5-tuple is
    never seen twice in a trace and tshark's conversations coincide with 5-tuple flows.
    """

    def __init__(self, rng: np.random.Generator, network: Network):
        self._first_port = rng.integers(0, _EPHEMERAL_SPAN, len(network.addresses))
        self._used = np.zeros(len(network.addresses), dtype=np.int64)
        self._internal_hosts = network.internal_hosts

    def allocate(self, rng: np.random.Generator, hosts: np.ndarray, avoid: np.ndarray) -> np.ndarray:
        """Ports for connections from `hosts` (updated in place where a host is replaced)."""
        ports = np.empty(len(hosts), dtype=np.int64)
        todo = np.arange(len(hosts))
        while len(todo):
            slot = self._used[hosts[todo]] + occurrence_index(hosts[todo])
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
