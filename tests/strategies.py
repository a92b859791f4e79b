"""Hypothesis strategies for cluster states, actions and packet headers, shared by the property tests."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from twin.flow import FIVE_TUPLE_DTYPE, FiveTuple
from twin.migration import IndexedAction
from twin.state import ClusterState

rates = st.floats(min_value=0.5, max_value=500.0, allow_nan=False)


@st.composite
def cluster_states(draw, min_instances: int = 2, max_instances: int = 6, max_flows: int = 40,
                   roomy_buffers: bool = True, standby: bool = True) -> ClusterState:
    """A random cluster; with roomy buffers every move satisfies constraint (5)."""
    n = draw(st.integers(min_instances, max_instances))
    active = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))) if standby else np.ones(n, bool)
    active[draw(st.integers(0, n - 1))] = True
    capacity = np.array(draw(st.lists(st.floats(500.0, 20_000.0), min_size=n, max_size=n)))
    buffer = capacity * (10.0 if roomy_buffers else draw(st.floats(0.0, 0.2)))
    queue = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))) * buffer * 0.5
    m = draw(st.integers(0, max_flows))
    active_idx = np.flatnonzero(active)
    assignment = active_idx[np.array(draw(st.lists(st.integers(0, active_idx.size - 1), min_size=m, max_size=m)),
                                     dtype=np.int64)]
    latency = np.array(draw(st.lists(st.floats(1.0, 200.0), min_size=n * n, max_size=n * n))).reshape(n, n)
    np.fill_diagonal(latency, 0.0)
    five_tuple = np.zeros(m, dtype=FIVE_TUPLE_DTYPE)
    five_tuple["src_port"] = np.arange(m)
    return ClusterState(
        instance_ids=tuple(f"nf{k}" for k in range(n)), capacity=capacity, buffer=buffer, queue=queue,
        active=active, processing_ms=np.full(n, 50.0), migration_ms=latency,
        flow_ids=tuple(f"f{k}" for k in range(m)), five_tuple=five_tuple,
        rate=np.array(draw(st.lists(rates, min_size=m, max_size=m))),
        byte_rate=np.zeros(m), sla_ms=np.array(draw(st.lists(st.floats(70.0, 110.0), min_size=m, max_size=m))),
        assignment=assignment.astype(np.int64))


@st.composite
def moves(draw, state: ClusterState) -> IndexedAction:
    """Moves of distinct flows to other active instances (no instance started or stopped)."""
    active = state.active_indices
    if state.n_flows == 0 or active.size < 2:
        return IndexedAction()
    flows = np.array(draw(st.lists(st.integers(0, state.n_flows - 1), unique=True, max_size=state.n_flows)),
                     dtype=np.int64)
    dst = []
    for f in flows.tolist():
        others = active[active != state.assignment[f]]
        dst.append(int(others[draw(st.integers(0, others.size - 1))]))
    return IndexedAction(flows, np.array(dst, dtype=np.int64))


ports = st.integers(0, 0xFFFF)
protocols = st.integers(0, 0xFF)


@st.composite
def five_tuples(draw, version: int | None = None) -> FiveTuple:
    """Header fields of one packet, IPv4 or IPv6 (`version` fixes which); endpoints often shared, so
    that ties in the canonical order (same address, or same address and port) are drawn too."""
    version = version or draw(st.sampled_from((4, 6)))
    addresses = st.ip_addresses(v=version).map(str)
    src_ip = draw(addresses)
    dst_ip = draw(st.one_of(st.just(src_ip), addresses))
    src_port = draw(ports)
    dst_port = draw(st.one_of(st.just(src_port), ports))
    return FiveTuple(src_ip, dst_ip, src_port, dst_port, draw(protocols))
