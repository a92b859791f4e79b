"""The GN policy's stochastic action distribution, how an action becomes flow migrations and how actions compare.

Every directed edge (s → r) of the graph draws, independently, one of the migration levels
`GNPolicyNet.config.levels`: the fraction of s's current load to move to r (level 0 moves nothing). A
per-edge categorical over a few fixed fractions was chosen because:

* its log-probability is exact and cheap, the sum over edges of log-softmax at the drawn level,
  which is all REINFORCE needs;
* it is size-agnostic (one categorical per edge for any N) and it can say "nothing" exactly, which
  is what most edges must say; a continuous Beta/Gaussian would put mass on tiny moves that each
  cost a full migration;
* flows are discrete anyway: the translator can only approximate an amount to a flow's rate.

The node values of the output graph are the resulting load distribution, load_j − out_j + in_j.
On the scale-in graph (one or more underloaded instances removed) the removed instances' load
must land somewhere: each removed instance, in removal order, draws its destination from a
categorical over the remaining nodes (softmax of the node logits, destinations already drawn
masked out), so the whole action keeps an exact log-probability. Deterministic mode proposes two
actions per graph, the most likely level per edge and the mean level per edge (netted, see
`proportional`: the mode cannot spread a surplus over several alike receivers), with the most
likely destinations. `realise` turns a request into flow migrations; `objective` says which of
two actions is better.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data

from gnn_policy.balancing import spread
from gnn_policy.base import Problem
from gnn_policy.gn import GNPolicyNet
from gnn_policy.refinement import refine
from gnn_policy.translator import LoadRequest, translate
from gnn_policy.views import GraphView, collate, context
from twin.migration import CostBreakdown, IndexedAction
from twin.params import Thresholds
from twin.scenario import ScenarioKind


@dataclass(frozen=True)
class Choice:
    """An action in the policy's own terms, on one view's graph."""

    levels: torch.Tensor
    """[edges] long: the index in `net.config.levels` drawn on each edge of the view's graph."""
    destinations: tuple[int, ...] = ()
    """Graph node position of the destination of each of the view's drained instances, in order."""
    weights: torch.Tensor | None = None
    """[edges, levels] imitation targets only: a distribution over the levels (None: all mass on `levels`)."""


@dataclass(frozen=True)
class Sample:
    choice: Choice
    request: LoadRequest
    mean_request: LoadRequest
    """The per-edge mean of the level distribution, netted (`proportional`), with the same drains: one action
    for several alike receivers, which the mode cannot say."""
    log_prob: torch.Tensor
    """0-d: exact log-probability of the drawn levels and drain destinations."""
    entropy: torch.Tensor
    """0-d: mean entropy of the per-edge level distributions."""


def act(net: GNPolicyNet, graph_views: Sequence[GraphView], thresholds: Sequence[Thresholds], *,
        greedy: bool = False, generator: torch.Generator | None = None,
        given: Sequence[Choice] | None = None) -> list[Sample]:
    """Run the network once on all views (`collate`) and draw, take the mode of, or (`given`, for imitation)
    score each action."""
    graphs = [view.graph for view in graph_views]
    logits = net(collate(graphs), context(thresholds))
    edge_log_p = torch.log_softmax(logits.edge, dim=1)
    edge_p = torch.softmax(logits.edge, dim=1)
    if given is not None:
        chosen = torch.cat([choice.levels for choice in given])
    elif greedy:
        chosen = logits.edge.argmax(dim=1)
    else:
        chosen = torch.multinomial(edge_p, 1, generator=generator).squeeze(1)
    if given is not None:
        targets = torch.cat([torch.nn.functional.one_hot(c.levels, edge_log_p.size(1)).float() if c.weights is None
                             else c.weights for c in given])
        edge_term = (targets * edge_log_p).sum(dim=1)
    else:
        edge_term = edge_log_p.gather(1, chosen[:, None]).squeeze(1)
    n_graphs = len(graphs)
    edges_per_graph = [graph.edge_index.size(1) for graph in graphs]
    edge_graph = torch.from_numpy(np.repeat(np.arange(n_graphs), edges_per_graph))
    log_prob = torch.zeros(n_graphs).index_add(0, edge_graph, edge_term)
    entropy_per_edge = -(edge_p * edge_log_p).sum(dim=1)
    entropy = (torch.zeros(n_graphs).index_add(0, edge_graph, entropy_per_edge)
               / torch.tensor(edges_per_graph).clamp(min=1))

    drawn, mean = _fractions(net, chosen, edge_p)
    samples = []
    for g, (view, (nodes, edges)) in enumerate(zip(graph_views, _slices(graphs))):
        destinations, drain_log_p = _drains(view, logits.node[nodes], greedy, generator,
                                            None if given is None else given[g].destinations)
        samples.append(Sample(Choice(chosen[edges], destinations),
                              *_requests(view, drawn[edges], mean[edges], destinations),
                              log_prob[g] + drain_log_p, entropy[g]))
    return samples


def propose(net: GNPolicyNet, graph_views: Sequence[GraphView],
            thresholds: Sequence[Thresholds]) -> list[tuple[LoadRequest, LoadRequest]]:
    """The requests of `act(greedy=True)` (most likely levels, netted mean levels) for each view, without the
    log-probabilities and entropies that only training needs: what `DeepMigration` compares."""
    graphs = [view.graph for view in graph_views]
    logits = net(collate(graphs), context(thresholds))
    drawn, mean = _fractions(net, logits.edge.argmax(dim=1), torch.softmax(logits.edge, dim=1))
    proposals = []
    for view, (nodes, edges) in zip(graph_views, _slices(graphs)):
        destinations, _ = _drains(view, logits.node[nodes], True, None, None)
        proposals.append(_requests(view, drawn[edges], mean[edges], destinations))
    return proposals


def _fractions(net: GNPolicyNet, chosen: torch.Tensor, edge_p: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per edge: the fraction of the chosen level and the mean fraction under the level distribution."""
    grid = np.asarray(net.config.levels)
    return grid[chosen.numpy()], edge_p.detach().numpy().astype(np.float64) @ grid


def _slices(graphs: Sequence[Data]) -> list[tuple[slice, slice]]:
    """The nodes and the edges of each graph in the collated graph."""
    node_start = list(itertools.accumulate((graph.x.size(0) for graph in graphs), initial=0))
    edge_start = list(itertools.accumulate((graph.edge_index.size(1) for graph in graphs), initial=0))
    return [(slice(node_start[g], node_start[g + 1]), slice(edge_start[g], edge_start[g + 1]))
            for g in range(len(graphs))]


def _requests(view: GraphView, drawn: np.ndarray, mean: np.ndarray,
              destinations: Sequence[int]) -> tuple[LoadRequest, LoadRequest]:
    """`Sample.request` from the drawn fractions and `Sample.mean_request` from the mean ones (the edges' instances
    looked up once for both)."""
    edges = _edge_instances(view)
    return (request_of(view, drawn, destinations, edges),
            netted(request_of(view, mean, destinations, edges)))


def _edge_instances(view: GraphView) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The view's node → instance map, each edge's sender and receiver instance and the sender's load."""
    nodes = view.graph.instance_index.numpy()
    senders, receivers = view.graph.edge_index.numpy()
    src = nodes[senders]
    return nodes, src, nodes[receivers], view.state.load_pps[src]


def request_of(view: GraphView, fractions: np.ndarray, destinations: Sequence[int],
               edges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> LoadRequest:
    """The loads asked for by a fraction of the sender's load per edge and a destination node per drained
    instance, in the state's instance indices (what `translate` takes). `edges`: `_edge_instances(view)`, computed
    here when not given."""
    nodes, src, dst, sender_load = _edge_instances(view) if edges is None else edges
    amounts = np.zeros((view.state.n_instances, view.state.n_instances))
    amounts[src, dst] = fractions * sender_load
    return LoadRequest(amounts, tuple((v, int(nodes[k])) for v, k in zip(view.drained, destinations)))


def netted(request: LoadRequest) -> LoadRequest:
    """`request` with its loads netted (`proportional`), the same drains."""
    return LoadRequest(proportional(request.amounts), request.drains)


def proportional(amounts: np.ndarray) -> np.ndarray:
    """The plan with the same net load per instance as `amounts` [N, N], every net sender's surplus spread over
    the net receivers in proportion to their intake: canonical (what alike receivers get does not depend on
    how a teacher paired them) and without the small back-and-forth loads a mean action has on every edge."""
    return spread(amounts.sum(axis=1) - amounts.sum(axis=0))


def _drains(view: GraphView, node_logits: torch.Tensor, greedy: bool, generator: torch.Generator | None,
            given: tuple[int, ...] | None) -> tuple[tuple[int, ...], torch.Tensor]:
    """Destination nodes of the removed instances, drawn without replacement while nodes remain."""
    log_p = node_logits.new_zeros(())
    if not view.drained:
        return (), log_p
    destinations = []
    taken = torch.zeros_like(node_logits, dtype=torch.bool)
    for d, _ in enumerate(view.drained):
        if taken.all():
            taken = torch.zeros_like(taken)
        node_log_p = torch.log_softmax(node_logits.masked_fill(taken, float("-inf")), dim=0)
        if given is not None:
            k = given[d]
        elif greedy:
            k = int(node_log_p.argmax())
        else:
            k = int(torch.multinomial(node_log_p.exp(), 1, generator=generator))
        log_p = log_p + node_log_p[k]
        taken = taken.clone()
        taken[k] = True
        destinations.append(k)
    return tuple(destinations), log_p


def realise(problem: Problem, request: LoadRequest) -> IndexedAction:
    """`translate` as every decision, imitation target and training step uses it: no destination pushed to
    Th_high; in load balancing the request's routes carrying the whole imbalance, no instance left further from
    the balanced utilisation than it started; in scaling the cheapest action `refine`'s local search reaches."""
    scenario = problem.scenario
    if scenario.kind is ScenarioKind.LOAD_BALANCE:
        return translate(problem.state, request, problem.params, problem.thresholds.high, scenario.cluster_utilisation)
    action = translate(problem.state, request, problem.params, problem.thresholds.high)
    return refine(problem.state, action, problem.params, problem.thresholds)


def objective(kind: ScenarioKind, breakdown: CostBreakdown) -> tuple[float, float]:
    """What "better" means per scenario (lower is better): load balancing minimises the variance of
    the utilisations first and the cost second (the Fig. 6 metric); scaling minimises the total cost."""
    if kind is ScenarioKind.LOAD_BALANCE:
        return (breakdown.variance_after, breakdown.total)
    return (breakdown.total, breakdown.variance_after)
