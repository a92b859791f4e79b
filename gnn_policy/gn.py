"""The GN-block network of section V.B: recurrent edge/node/global updates over the cluster graph.

One GN block (`torch_geometric.nn.MetaLayer`) is made of six small functions, as in the paper:

* φe(e_k, v_rk, v_sk, u), φv(ē'_i, v_i, u), φu(ē', v̄', u): simple recurrent cells (the paper's
  "RNN": h' = tanh(W·input + U·h)). The attribute being updated is the cell's hidden state and
  the neighbourhood is its input, so the same block applied `steps` times is a recurrent
  message-passing process that keeps what it learnt about each edge, node and the whole graph;
* ρe→v, ρe→u, ρv→u: two-layer feed-forward nets applied to each member of the set, then
  averaged. Averages, not sums, keep every message on one scale for any number of instances, so
  the same weights serve N = 10 or N = 50. The mean commutes with the second (affine) layer, so
  it is applied after the mean: the same function, with the per-edge work halved (N = 40 has
  1560 edges and 40 nodes, and the edges are what a decision pays for). Aggregations are PyG
  `scatter` means; a single graph (no `batch`) has one group for the global aggregations, whose
  mean is taken directly.

`GNPolicyNet` encodes the graph of `gnn_policy.graph.to_pyg` (plus the scenario thresholds, which the
graph does not carry), runs the block `steps` times and decodes two heads: per-edge logits over
the migration levels (`gnn_policy.agent` turns them into the stochastic policy) and per-node
logits that rank instances as destinations for a drained instance's load (scale-in). A network whose
config has `targets` also has a control head on the global state: act or hold, and the target utilisation
of the request (`gnn_policy.control`, the closed loop's decisions).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import MetaLayer
from torch_geometric.utils import scatter

from gnn_policy.graph import EDGE_FEATURES, GLOBAL_FEATURES, NODE_FEATURES, node_input

CONTEXT_FEATURES = ("th_high", "th_low")
"""Inputs the graph does not carry: the thresholds of the problem, appended to the global attribute."""
CONTROL_FEATURES = ("scale_out", "scale_in", "load_balance", "active_share", "budget_queue")
"""What the control head reads besides the global state (`gnn_policy.control.control_features`): the detected
scenario, the share of the instances that are active (the graph holds only those) and Q(t)."""

MIGRATION_LEVELS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)
"""Fractions of the source instance's load an edge can ask to migrate (level 0: move nothing)."""


@dataclass(frozen=True)
class NetConfig:
    """Everything that fixes the network's shape; stored in checkpoints and checked on load."""

    hidden: int = 16
    steps: int = 2
    levels: tuple[float, ...] = MIGRATION_LEVELS
    stay_bias: float = 5.0
    """Initial logit of level 0 over the others, so an untrained policy moves little (exploration starts calm)."""
    node_features: tuple[str, ...] = NODE_FEATURES
    edge_features: tuple[str, ...] = EDGE_FEATURES
    global_features: tuple[str, ...] = GLOBAL_FEATURES + CONTEXT_FEATURES
    targets: tuple[float, ...] = ()
    """The control head's target utilisations (`gnn_policy.control`); () for a network without one."""
    control_bias: float = 1.0
    """Initial logit of "act" over "hold" and of the first target over the others: an untrained control head
    leans towards the rule (always act, the grid's first target) and still explores."""

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> NetConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown network config keys {sorted(unknown)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


def from_sigmoid(doubled: torch.Tensor) -> torch.Tensor:
    """tanh(z) from `doubled` = 2z, as 2·σ(2z) − 1: the same function (within 3e-7) at about a third of the cost
    of torch's CPU tanh, the largest per-edge expense of a GN step (E × hidden values). Callers double z in its
    weights (exact: a power of two), where it costs nothing per edge."""
    return torch.sigmoid(doubled).mul(2.0).sub_(1.0)


def tanh_layer(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """tanh(layer(x)) by `from_sigmoid`: an encoder of the E edges in `GNBlock`'s precision."""
    return from_sigmoid(nn.functional.linear(x, 2.0 * layer.weight, 2.0 * layer.bias))


def two_layer(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The output heads: a two-layer feed-forward net."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class MeanOfTwoLayer(nn.Module):
    """ρ: mean over a set (grouped by `index`) of a two-layer net, the second layer applied after the mean."""

    def __init__(self, hidden: int):
        super().__init__()
        self.first = nn.Linear(hidden, hidden)
        self.second = nn.Linear(hidden, hidden)

    def forward(self, members: torch.Tensor, index: torch.Tensor | None, groups: int) -> torch.Tensor:
        """`index` None: every member belongs to the one group (a single graph), whose mean needs no scatter. An
        empty set (the edges of a one-instance graph) has mean 0, as `scatter` gives an empty group."""
        hidden = torch.relu(self.first(members))
        if index is not None:
            mean = scatter(hidden, index, dim=0, dim_size=groups, reduce="mean")
        else:
            mean = hidden.mean(dim=0, keepdim=True) if members.size(0) else hidden.new_zeros(1, hidden.size(1))
        return self.second(mean)


class EdgeUpdate(nn.Module):
    """φe: e'_k = RNN(input = [v_rk, v_sk, u], hidden = e_k)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.cell = nn.RNNCell(3 * hidden, hidden)

    def forward(self, sender: torch.Tensor, receiver: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                edge_graph: torch.Tensor | None) -> torch.Tensor:
        """`sender`, `receiver` [E, hidden]: the states of each edge's nodes edge_index[0] and edge_index[1];
        `edge` [E, hidden]; `u` [G, hidden]; `edge_graph` [E]: each edge's graph (None: a single graph).
        Returns the new edge states [E, hidden]."""
        return self.cell(torch.cat([receiver, sender, _per_member(u, edge_graph, edge.size(0))], dim=1), edge)

    def on_nodes(self, x: torch.Tensor, edge_index: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                 node_graph: torch.Tensor | None, weights: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """`forward` from the node states `x` [N, hidden] before they are gathered onto the edges (`edge_index`
        [2, E]: sender, receiver; `node_graph` [N]: each node's graph, None for a single graph), for `GNBlock`.
        The cell's input weights are linear in [v_rk, v_sk, u], so their receiver, sender and global parts (and
        the biases) are applied to the N nodes and G globals first: the same function with a quarter of the
        per-edge multiplications, and its tanh from a sigmoid (`from_sigmoid`, the pre-activation doubled on the
        nodes and in the hidden weights). Equal to `forward` up to float32 rounding, not bit for bit. `weights`:
        `folded()`, made once by the caller (None: made here)."""
        on_receiver, on_sender, on_global, biases, on_edge = weights or self.folded()
        bias = torch.addmm(biases, u, on_global)
        receiver = 2.0 * torch.addmm(_per_member(bias, node_graph, x.size(0)), x, on_receiver)
        gathered = receiver.index_select(0, edge_index[1]) + (x @ on_sender).index_select(0, edge_index[0])
        return from_sigmoid(torch.addmm(gathered, edge, on_edge))

    def folded(self) -> tuple[torch.Tensor, ...]:
        """`on_nodes`' weights (receiver, doubled sender and global parts of the input weights, both biases,
        the doubled hidden weights), which `GNBlock.prepare` makes once for the steps of a rollout."""
        cell = self.cell
        on_receiver, on_sender, on_global = cell.weight_ih.split(cell.hidden_size, dim=1)
        return on_receiver.t(), 2.0 * on_sender.t(), on_global.t(), cell.bias_ih + cell.bias_hh, \
            2.0 * cell.weight_hh.t()


class NodeUpdate(nn.Module):
    """ρe→v then φv: v'_i = RNN(input = [ρe→v over incoming edges, u], hidden = v_i)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.edges_to_node = MeanOfTwoLayer(hidden)
        self.cell = nn.RNNCell(2 * hidden, hidden)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                node_graph: torch.Tensor | None) -> torch.Tensor:
        """`x` [N, hidden] node states; `edge_index` [2, E] (sender, receiver); `edge` [E, hidden] the updated
        edge states, averaged per receiver; `u` [G, hidden]; `node_graph` [N]: each node's graph (None: a
        single graph). Returns the new node states [N, hidden]."""
        incoming = self.edges_to_node(edge, edge_index[1], x.size(0))
        return self.cell(torch.cat([incoming, _per_member(u, node_graph, x.size(0))], dim=1), x)


class GlobalUpdate(nn.Module):
    """ρe→u, ρv→u then φu: u' = RNN(input = [ρe→u over all edges, ρv→u over all nodes], hidden = u)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.edges_to_global = MeanOfTwoLayer(hidden)
        self.nodes_to_global = MeanOfTwoLayer(hidden)
        self.cell = nn.RNNCell(2 * hidden, hidden)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                node_graph: torch.Tensor | None) -> torch.Tensor:
        """`x` [N, hidden] and `edge` [E, hidden]: the updated node and edge states, averaged per graph (an edge
        is in its sender's graph); `edge_index` [2, E]; `u` [G, hidden]; `node_graph` [N] (None: a single
        graph). Returns the new global states [G, hidden]."""
        n_graphs = u.size(0)
        edge_graph = None if node_graph is None else node_graph.index_select(0, edge_index[0])
        edges = self.edges_to_global(edge, edge_graph, n_graphs)
        nodes = self.nodes_to_global(x, node_graph, n_graphs)
        return self.cell(torch.cat([edges, nodes], dim=1), u)


class GNBlock(MetaLayer):
    """`MetaLayer` (edge, node, then global update) with the edge update on the nodes (`EdgeUpdate.on_nodes`):
    MetaLayer's own forward gathers the node states onto the E edges first; the node and global updates' edge
    means are taken in one pass (`_edge_means`). The residual twin's block, which
    scores a few candidates on complete graphs with standby instances every period of the look-ahead. The
    policy keeps `MetaLayer`'s rounding: its mean-level requests meet the translator's exact comparisons (which
    receiver is asked most, whether a flow's rate passes what is left), where float32 noise decides near-ties
    and the decisions benchmarked with the shipped checkpoint would change."""

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, u: torch.Tensor,
                batch: torch.Tensor | None = None, prepared: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`prepared`: `prepare(edge_index, x.size(0), batch, u.size(0))`, made once for the steps and periods
        of a rollout on one graph (None: made here)."""
        prepared = prepared or self.prepare(edge_index, x.size(0), batch, u.size(0))
        edge_attr = self.edge_model.on_nodes(x, edge_index, edge_attr, u, batch, prepared["edge"])
        incoming, edges = self._edge_means(edge_index, edge_attr, prepared)
        x = self.node_model.cell(torch.cat([incoming, _per_member(u, batch, x.size(0))], dim=1), x)
        nodes = self.global_model.nodes_to_global(x, batch, u.size(0))
        return x, edge_attr, self.global_model.cell(torch.cat([edges, nodes], dim=1), u)

    def prepare(self, edge_index: torch.Tensor, n_nodes: int, batch: torch.Tensor | None, n_graphs: int) -> dict:
        """What every application of the block to one graph shares: the edge cell's folded weights, both edge
        means' first layers as one, each node's in-degree and each graph's edge count."""
        to_node, to_global = self.node_model.edges_to_node, self.global_model.edges_to_global
        degree = torch.bincount(edge_index[1], minlength=n_nodes).to(to_node.first.weight.dtype)
        counts = degree.sum().reshape(1) if batch is None else scatter(degree, batch, dim=0, dim_size=n_graphs,
                                                                       reduce="sum")
        return {"edge": self.edge_model.folded(), "first": torch.cat([to_node.first.weight, to_global.first.weight]),
                "bias": torch.cat([to_node.first.bias, to_global.first.bias]), "batch": batch, "n_graphs": n_graphs,
                "degree": degree.clamp(min=1.0)[:, None], "counts": counts.clamp(min=1.0)[:, None]}

    def _edge_means(self, edge_index: torch.Tensor, edge: torch.Tensor, prepared: dict
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ρe→v per receiver [N, hidden], ρe→u per graph [G, hidden]) in one pass over the E edges: both first
        layers as one product, one sum per receiver, and each graph's edge sum from its receivers' sums (an edge
        is in its receiver's graph as in its sender's). The functions of `NodeUpdate` and `GlobalUpdate` up to
        float32 rounding (the sums are taken in another order)."""
        h, degree = edge.size(1), prepared["degree"]
        both = torch.relu(nn.functional.linear(edge, prepared["first"], prepared["bias"]))
        sums = scatter(both, edge_index[1], dim=0, dim_size=degree.size(0), reduce="sum")
        graph_sums = (sums[:, h:].sum(dim=0, keepdim=True) if prepared["batch"] is None
                      else scatter(sums[:, h:], prepared["batch"], dim=0, dim_size=prepared["n_graphs"], reduce="sum"))
        return (self.node_model.edges_to_node.second(sums[:, :h] / degree),
                self.global_model.edges_to_global.second(graph_sums / prepared["counts"]))


@dataclass(frozen=True)
class PolicyLogits:
    edge: torch.Tensor
    """[E, levels]: unnormalised log-probabilities of each migration level on each directed edge."""
    node: torch.Tensor
    """[V]: unnormalised log-probabilities of each node as the destination of a drained instance."""
    control: torch.Tensor | None = None
    """[G, 2 + targets]: act / hold, then each target utilisation (None: no control head, or no `control` input)."""


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
        self.control_head = (two_layer(h + len(CONTROL_FEATURES), h, 2 + len(config.targets))
                             if config.targets else None)
        with torch.no_grad():
            self.edge_head[-1].bias.zero_()
            self.edge_head[-1].bias[0] = config.stay_bias
            if self.control_head is not None:
                self.control_head[-1].weight.mul_(0.1)
                self.control_head[-1].bias.zero_()
                self.control_head[-1].bias[0] = self.control_head[-1].bias[2] = config.control_bias

    def forward(self, graph: Data, context: torch.Tensor, control: torch.Tensor | None = None) -> PolicyLogits:
        """`graph` from `gnn_policy.graph.to_pyg`, or several collated into one (`batch` gives each node's graph);
        `context` [graphs, 2] holds Th_high, Th_low; `control` [graphs, len(CONTROL_FEATURES)] what the control
        head reads besides the global state (given only when the network has that head)."""
        node_graph = graph.batch  # None for a single graph
        x = torch.tanh(self.encode_node(node_input(graph, self.config.node_features)))
        edge = torch.tanh(self.encode_edge(graph.edge_attr))
        u = torch.tanh(self.encode_global(torch.cat([graph.u, context], dim=1)))
        for _ in range(self.config.steps):
            x, edge, u = self.block(x, graph.edge_index, edge, u, node_graph)
        node_logits = self.node_head(torch.cat([x, _per_member(u, node_graph, x.size(0))], dim=1)).squeeze(1)
        control_logits = (None if control is None or self.control_head is None
                          else self.control_head(torch.cat([u, control], dim=1)))
        return PolicyLogits(self._edge_logits(x, graph.edge_index, edge, u, node_graph), node_logits, control_logits)

    def _edge_logits(self, x: torch.Tensor, edge_index: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                     node_graph: torch.Tensor | None) -> torch.Tensor:
        """The edge head on [e_k, v_sk, v_rk, u]. Its first layer is linear, so its sender, receiver and global
        parts are applied to the V nodes and the globals before they are gathered onto the E edges (E = V·(V − 1)
        for a full cluster): the same function as on the concatenation, with a quarter of the per-edge work."""
        first, rest = self.edge_head[0], self.edge_head[1:]
        on_edge, on_sender, on_receiver, on_global = first.weight.split(edge.size(1), dim=1)
        sender, receiver = edge_index
        hidden = (torch.addmm(first.bias, edge, on_edge.t())
                  + (x @ on_sender.t()).index_select(0, sender)
                  + (x @ on_receiver.t()).index_select(0, receiver)
                  + _per_member(u @ on_global.t(), None if node_graph is None else node_graph.index_select(0, sender),
                                sender.size(0)))
        return rest(hidden)


def _per_member(values: torch.Tensor, group: torch.Tensor | None, size: int) -> torch.Tensor:
    """values[group]: each of `size` members' row of its group; a broadcast view of the single row when there is
    one group (`group` None for a single graph)."""
    return values.expand(size, -1) if group is None or values.size(0) == 1 else values.index_select(0, group)
