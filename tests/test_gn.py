"""The GN-block network: permutation-equivariant over instances, size-agnostic, batch-consistent."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from gnn_policy.gn import GNPolicyNet, NetConfig
from gnn_policy.graph import to_pyg
from tests.helpers import cluster
from twin.state import ClusterState

CONTEXT = torch.tensor([[0.6, 0.1]])


@pytest.fixture(scope="module")
def net() -> GNPolicyNet:
    torch.manual_seed(7)
    return GNPolicyNet(NetConfig(hidden=16, steps=2)).eval()


def permuted(state: ClusterState, order: np.ndarray) -> ClusterState:
    """The same cluster with its instances listed in `order` (new position k holds old instance order[k])."""
    position = np.argsort(order)
    return state.with_changes(
        instance_ids=tuple(state.instance_ids[k] for k in order), capacity=state.capacity[order],
        buffer=state.buffer[order], queue=state.queue[order], active=state.active[order],
        processing_ms=state.processing_ms[order], migration_ms=state.migration_ms[np.ix_(order, order)],
        assignment=position[state.assignment])


def logits_by_id(net: GNPolicyNet, state: ClusterState) -> tuple[dict, dict]:
    graph = to_pyg(state)
    with torch.no_grad():
        out = net(graph, CONTEXT)
    ids = [state.instance_ids[k] for k in graph.instance_index.tolist()]
    edges = {(ids[s], ids[r]): out.edge[e] for e, (s, r) in enumerate(graph.edge_index.t().tolist())}
    nodes = {ids[k]: out.node[k] for k in range(len(ids))}
    return edges, nodes


def test_permuting_instances_permutes_the_output(net):
    state = cluster([[30, 20, 10], [80, 5], [40], [], [15, 15, 15, 15]])
    state = state.with_changes(queue=np.array([1.0, 4.0, 0.0, 2.0, 3.0]),
                               migration_ms=state.migration_ms * np.linspace(0.5, 1.5, 25).reshape(5, 5))
    edges, nodes = logits_by_id(net, state)
    for order in (np.array([4, 2, 0, 3, 1]), np.array([1, 0, 2, 4, 3])):
        edges_p, nodes_p = logits_by_id(net, permuted(state, order))
        assert edges_p.keys() == edges.keys()
        for key in edges:
            torch.testing.assert_close(edges_p[key], edges[key], atol=1e-5, rtol=1e-5)
        for key in nodes:
            torch.testing.assert_close(nodes_p[key], nodes[key], atol=1e-5, rtol=1e-5)


def test_same_weights_run_any_cluster_size(net):
    for n in (2, 5, 12):
        state = cluster([[10.0 * (k + 1)] for k in range(n)])
        out = net(to_pyg(state), CONTEXT)
        assert out.edge.shape == (n * (n - 1), len(net.config.levels))
        assert out.node.shape == (n,)
        assert torch.isfinite(out.edge).all() and torch.isfinite(out.node).all()


def test_batched_graphs_give_the_logits_of_each_graph_alone(net):
    states = [cluster([[30, 20], [5]]), cluster([[1], [60, 60], [30], [10]])]
    graphs = [to_pyg(s) for s in states]
    with torch.no_grad():
        together = net(Batch.from_data_list(graphs), CONTEXT.repeat(2, 1))
        alone = [net(g, CONTEXT) for g in graphs]
    torch.testing.assert_close(together.edge, torch.cat([a.edge for a in alone]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.node, torch.cat([a.node for a in alone]), atol=1e-5, rtol=1e-5)


def test_untrained_policy_prefers_to_move_nothing(net):
    out = net(to_pyg(cluster([[30, 20], [5], [7]])), CONTEXT)
    assert (out.edge.argmax(dim=1) == 0).all()


def test_config_round_trips_through_a_plain_dict():
    config = NetConfig(hidden=8, steps=1, levels=(0.0, 0.5, 1.0))
    assert NetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown network config keys \\['width'\\]"):
        NetConfig.from_dict({**config.to_dict(), "width": 3})


def concatenated_logits(net: GNPolicyNet, graph, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The network as section V.B writes it, for one graph: every per-edge layer on its concatenated input and
    every ρ a plain mean of the two-layer net."""
    sender, receiver = graph.edge_index
    edges, nodes = graph.edge_index.size(1), graph.x.size(0)
    block = net.block

    def rho(mlp, members):
        return mlp.second(torch.relu(mlp.first(members))).mean(dim=0)

    x = torch.tanh(net.encode_node(graph.x))
    edge = torch.tanh(net.encode_edge(graph.edge_attr))
    u = torch.tanh(net.encode_global(torch.cat([graph.u, context], dim=1)))
    for _ in range(net.config.steps):
        edge = block.edge_model.cell(torch.cat([x[receiver], x[sender], u.expand(edges, -1)], dim=1), edge)
        incoming = torch.stack([rho(block.node_model.edges_to_node, edge[receiver == k]) for k in range(nodes)])
        x = block.node_model.cell(torch.cat([incoming, u.expand(nodes, -1)], dim=1), x)
        pooled = torch.cat([rho(block.global_model.edges_to_global, edge), rho(block.global_model.nodes_to_global, x)])
        u = block.global_model.cell(pooled[None, :], u)
    edge_logits = net.edge_head(torch.cat([edge, x[sender], x[receiver], u.expand(edges, -1)], dim=1))
    return edge_logits, net.node_head(torch.cat([x, u.expand(nodes, -1)], dim=1)).squeeze(1)


def test_forward_is_the_concatenated_input_network(net):
    state = cluster([[30, 20, 10], [80, 5], [40], [], [15, 15, 15, 15]])
    state = state.with_changes(migration_ms=state.migration_ms * np.linspace(0.5, 1.5, 25).reshape(5, 5))
    graph = to_pyg(state)
    with torch.no_grad():
        out = net(graph, CONTEXT)
        edge, node = concatenated_logits(net, graph, CONTEXT)
    torch.testing.assert_close(out.edge, edge, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.node, node, atol=1e-5, rtol=1e-5)
