"""The policy's view of the cluster state as a graph: nodes are instances, directed edges carry migration latency.

This is the GN-block input of section V.B (V: instance status, E: la_ij, u: overall load).
Features are scale-free (utilisations, fractions, latencies in units of 100 ms) so one set of
weights serves any cluster size. The network, the agent and training all build their graphs here;
`to_networkx` gives the same graph for inspection.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import torch
from torch_geometric.data import Data

from twin.cost import load_variance, queueing_delay_ms
from twin.state import ClusterState

LATENCY_UNIT_MS = 100.0
NODE_FEATURES = ("utilisation", "queue_fill", "queue_delay", "processing", "relative_capacity", "active")
OPTIONAL_NODE_FEATURES = ("twin_deviation",)
"""Node features a network may take after NODE_FEATURES (its config names them, in this order); `to_pyg` gives
them as `x_optional`. twin_deviation: the controller's estimate of its twin's deviation (paper 003's eq. (14)
f̂, `ClusterState.twin_deviation`), 0 where none is given (in the twin, which is its own truth)."""
EDGE_FEATURES = ("migration_latency",)
GLOBAL_FEATURES = ("cluster_utilisation", "load_variance")


def graph_nodes(state: ClusterState, include_standby: bool = False) -> np.ndarray:
    """Instance indices that become graph nodes: the active ones, or all of them."""
    return np.arange(state.n_instances) if include_standby else state.active_indices


def node_features(state: ClusterState, nodes: np.ndarray) -> np.ndarray:
    """[len(nodes), len(NODE_FEATURES)]: the NODE_FEATURES of the instances at state indices `nodes`, in
    that order; capacity is relative to the mean active capacity, delays are in LATENCY_UNIT_MS."""
    capacity = state.capacity[nodes]
    mean_capacity = state.capacity[state.active].mean() if state.active.any() else capacity.mean()
    return np.stack([
        state.utilisation[nodes],
        state.queue[nodes] / np.maximum(state.buffer[nodes], 1e-9),
        queueing_delay_ms(state.queue[nodes], capacity) / LATENCY_UNIT_MS,
        state.processing_ms[nodes] / LATENCY_UNIT_MS,
        capacity / mean_capacity,
        state.active[nodes].astype(float),
    ], axis=1)


def optional_node_features(state: ClusterState, nodes: np.ndarray) -> np.ndarray:
    """[len(nodes), len(OPTIONAL_NODE_FEATURES)]: the OPTIONAL_NODE_FEATURES of the instances at `nodes`."""
    deviation = np.zeros(state.n_instances) if state.twin_deviation is None else state.twin_deviation
    return np.stack([deviation[nodes]], axis=1)


def node_input(graph: Data, names: tuple[str, ...]) -> torch.Tensor:
    """The node matrix a network whose config names `names` (NODE_FEATURES, then a prefix of
    OPTIONAL_NODE_FEATURES) reads: `x`, with the optional columns it names."""
    extra = len(names) - len(NODE_FEATURES)
    return graph.x if extra <= 0 else torch.cat([graph.x, graph.x_optional[:, :extra]], dim=1)


def complete_edges(n_nodes: int) -> np.ndarray:
    """(2, n·(n−1)) sender/receiver pairs of the complete directed graph without self-loops."""
    senders, receivers = np.nonzero(~np.eye(n_nodes, dtype=bool))
    return np.stack([senders, receivers])


def global_features(state: ClusterState) -> np.ndarray:
    active = state.active
    capacity = state.capacity[active].sum()
    overall = state.load_pps[active].sum() / capacity if capacity > 0 else 0.0
    return np.array([overall, load_variance(state.utilisation, active)])


def to_pyg(state: ClusterState, include_standby: bool = False) -> Data:
    """A PyG `Data` with x, x_optional, edge_index, edge_attr, u and `instance_index` (node → state index)."""
    nodes = graph_nodes(state, include_standby)
    edges = complete_edges(nodes.size)
    latency = state.migration_ms[nodes[edges[0]], nodes[edges[1]]] / LATENCY_UNIT_MS
    return Data(
        x=torch.as_tensor(node_features(state, nodes), dtype=torch.float32),
        x_optional=torch.as_tensor(optional_node_features(state, nodes), dtype=torch.float32),
        edge_index=torch.as_tensor(edges, dtype=torch.long),
        edge_attr=torch.as_tensor(latency[:, None], dtype=torch.float32),
        u=torch.as_tensor(global_features(state)[None, :], dtype=torch.float32),
        instance_index=torch.as_tensor(nodes, dtype=torch.long),
    )


def to_networkx(state: ClusterState, include_standby: bool = False) -> nx.DiGraph:
    """The same graph for inspection and the REST API, with named features on ids."""
    nodes = graph_nodes(state, include_standby)
    features = node_features(state, nodes)
    overall, variance = global_features(state)
    graph = nx.DiGraph(cluster_utilisation=float(overall), load_variance=float(variance))
    for row, k in zip(features, nodes.tolist()):
        graph.add_node(state.instance_ids[k], load_pps=float(state.load_pps[k]),
                       flows=int(state.flows_per_instance[k]),
                       **{name: float(value) for name, value in zip(NODE_FEATURES, row)})
    for s, r in complete_edges(nodes.size).T.tolist():
        i, j = int(nodes[s]), int(nodes[r])
        graph.add_edge(state.instance_ids[i], state.instance_ids[j], migration_ms=float(state.migration_ms[i, j]))
    return graph
