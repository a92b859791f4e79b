"""The GN-block network of section V.B: recurrent edge/node/global updates over the cluster graph.

One GN block (`torch_geometric.nn.MetaLayer`) is made of six small functions, as in the paper:

* φe(e_k, v_rk, v_sk, u), φv(ē'_i, v_i, u), φu(ē', v̄', u): simple recurrent cells (GRU cells). The
  attribute being updated is the cell's hidden state and the neighbourhood is its input, so the
  same block applied `steps` times is a recurrent message-passing process that keeps what it
  learnt about each edge, node and the whole graph from one step to the next;
* ρe→v, ρe→u, ρv→u: two-layer feed-forward nets applied to each member of the set, then
  averaged (scatter mean). Averages, not sums, keep the scale of every message the same for any
  number of instances, so the same weights serve N = 10 or N = 50.

`GNPolicyNet` encodes the graph of `twin.graph.to_pyg` (plus the scenario thresholds, which the
graph does not carry), runs the block `steps` times and decodes two heads: per-edge logits over
the migration levels (`gnn_policy.agent` turns them into the stochastic policy) and per-node
logits that rank instances as destinations for a drained instance's load (scale-in).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import MetaLayer
from torch_geometric.utils import scatter

from twin.graph import EDGE_FEATURES, GLOBAL_FEATURES, NODE_FEATURES

CONTEXT_FEATURES = ("th_high", "th_low")
"""Inputs the graph does not carry: the thresholds of the problem, appended to the global attribute."""

MIGRATION_LEVELS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
"""Fractions of the source instance's load an edge can ask to migrate (level 0: move nothing)."""


@dataclass(frozen=True)
class NetConfig:
    """Everything that fixes the network's shape; stored in checkpoints and checked on load."""

    hidden: int = 32
    steps: int = 3
    levels: tuple[float, ...] = MIGRATION_LEVELS
    stay_bias: float = 5.0
    """Initial logit of level 0 over the others, so an untrained policy moves little (exploration starts calm)."""
    node_features: tuple[str, ...] = NODE_FEATURES
    edge_features: tuple[str, ...] = EDGE_FEATURES
    global_features: tuple[str, ...] = GLOBAL_FEATURES + CONTEXT_FEATURES

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> NetConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown network config keys {sorted(unknown)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


def two_layer(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The ρ functions and the output heads: a two-layer feed-forward net."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class EdgeUpdate(nn.Module):
    """φe: e'_k = GRU(input = [v_rk, v_sk, u], hidden = e_k)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.cell = nn.GRUCell(3 * hidden, hidden)

    def forward(self, sender: torch.Tensor, receiver: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                edge_graph: torch.Tensor) -> torch.Tensor:
        return self.cell(torch.cat([receiver, sender, u[edge_graph]], dim=1), edge)


class NodeUpdate(nn.Module):
    """ρe→v then φv: v'_i = GRU(input = [mean over incoming edges of ρ(e'), u], hidden = v_i)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.edges_to_node = two_layer(hidden, hidden, hidden)
        self.cell = nn.GRUCell(2 * hidden, hidden)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                node_graph: torch.Tensor) -> torch.Tensor:
        incoming = scatter(self.edges_to_node(edge), edge_index[1], dim=0, dim_size=x.size(0), reduce="mean")
        return self.cell(torch.cat([incoming, u[node_graph]], dim=1), x)


class GlobalUpdate(nn.Module):
    """ρe→u, ρv→u then φu: u' = GRU(input = [mean of ρ(e'), mean of ρ(v')], hidden = u)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.edges_to_global = two_layer(hidden, hidden, hidden)
        self.nodes_to_global = two_layer(hidden, hidden, hidden)
        self.cell = nn.GRUCell(2 * hidden, hidden)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                node_graph: torch.Tensor) -> torch.Tensor:
        n_graphs = u.size(0)
        edge_graph = node_graph[edge_index[0]]
        edges = scatter(self.edges_to_global(edge), edge_graph, dim=0, dim_size=n_graphs, reduce="mean")
        nodes = scatter(self.nodes_to_global(x), node_graph, dim=0, dim_size=n_graphs, reduce="mean")
        return self.cell(torch.cat([edges, nodes], dim=1), u)


@dataclass(frozen=True)
class PolicyLogits:
    edge: torch.Tensor
    """[E, levels]: unnormalised log-probabilities of each migration level on each directed edge."""
    node: torch.Tensor
    """[V]: unnormalised log-probabilities of each node as the destination of a drained instance."""


class GNPolicyNet(nn.Module):
    """Encode → GN block applied `steps` times (shared weights) → edge and node heads."""

    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        self.config = config
        h = config.hidden
        self.encode_node = nn.Linear(len(config.node_features), h)
        self.encode_edge = nn.Linear(len(config.edge_features), h)
        self.encode_global = nn.Linear(len(config.global_features), h)
        self.block = MetaLayer(EdgeUpdate(h), NodeUpdate(h), GlobalUpdate(h))
        self.edge_head = two_layer(4 * h, h, len(config.levels))
        self.node_head = two_layer(2 * h, h, 1)
        with torch.no_grad():
            self.edge_head[-1].bias.zero_()
            self.edge_head[-1].bias[0] = config.stay_bias

    def forward(self, graph: Data | Batch, context: torch.Tensor) -> PolicyLogits:
        """`graph` from `twin.graph.to_pyg` (or a `Batch` of them); `context` [graphs, 2] holds Th_high, Th_low."""
        node_graph = graph.batch if isinstance(graph, Batch) else graph.x.new_zeros(graph.num_nodes, dtype=torch.long)
        x = torch.tanh(self.encode_node(graph.x))
        edge = torch.tanh(self.encode_edge(graph.edge_attr))
        u = torch.tanh(self.encode_global(torch.cat([graph.u, context], dim=1)))
        for _ in range(self.config.steps):
            x, edge, u = self.block(x, graph.edge_index, edge, u, node_graph)
        sender, receiver = graph.edge_index
        edge_logits = self.edge_head(torch.cat([edge, x[sender], x[receiver], u[node_graph[sender]]], dim=1))
        node_logits = self.node_head(torch.cat([x, u[node_graph]], dim=1)).squeeze(1)
        return PolicyLogits(edge_logits, node_logits)
