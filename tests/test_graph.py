"""The policy's graph view of the cluster state (section V.B): PyG and networkx agree, standby on request."""
import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from gnn_policy.graph import EDGE_FEATURES, GLOBAL_FEATURES, NODE_FEATURES, to_networkx, to_pyg
from tests.helpers import cluster
from tests.strategies import cluster_states


@settings(max_examples=100, deadline=None)
@given(cluster_states())
def test_pyg_and_networkx_views_agree(state):
    data = to_pyg(state)
    active = state.active_indices
    n = active.size
    assert data.x.shape == (n, len(NODE_FEATURES))
    assert data.edge_index.shape == (2, n * (n - 1)) and data.edge_attr.shape == (n * (n - 1), len(EDGE_FEATURES))
    assert data.u.shape == (1, len(GLOBAL_FEATURES))
    assert torch.equal(data.instance_index, torch.as_tensor(active))
    assert not torch.any(data.edge_index[0] == data.edge_index[1])
    graph = to_networkx(state)
    assert isinstance(graph, nx.DiGraph) and graph.number_of_edges() == n * (n - 1)
    for row, k in zip(data.x.tolist(), active.tolist()):
        node = graph.nodes[state.instance_ids[k]]
        assert [node[name] for name in NODE_FEATURES] == pytest.approx(row, rel=1e-5, abs=1e-6)
    for (sender, receiver), latency in zip(data.edge_index.T.tolist(), data.edge_attr[:, 0].tolist()):
        i, j = state.instance_ids[active[sender]], state.instance_ids[active[receiver]]
        assert graph.edges[i, j]["migration_ms"] == pytest.approx(latency * 100.0, rel=1e-5)


def test_standby_instances_join_the_graph_on_request():
    state = cluster([[500.0], [200.0]], standby=1)
    assert to_pyg(state).num_nodes == 2
    data = to_pyg(state, include_standby=True)
    assert data.num_nodes == 3 and data.x[2, NODE_FEATURES.index("active")] == 0.0
    assert np.isclose(data.u[0, 0].item(), 0.35)
