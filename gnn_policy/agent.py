"""DeepMigration: the GN policy, its stochastic action distribution and the double GNN of Fig. 3.

**The action distribution.** Every directed edge (s → r) of the graph draws, independently, one
of the migration levels `GNPolicyNet.config.levels`: the fraction of s's current load to move to
r (level 0 moves nothing). A per-edge categorical over a few fixed fractions was chosen because:

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
likely destinations.

**The double GNN.** The load judgment (`twin.scenario.instances_needed`) says how many instances
must be active. For scale-out the modified graph adds that many standby instances (at least one),
each the standby nearest the next most loaded instance; for scale-in, graphs remove shares of the
underloaded instances that can go (`DRAIN_SHARES`) and the counts around the one `drain_estimate`
favours (`drain_counts`), cheapest to empty first (`drain_order`). The GNN runs on all graphs in one batch, and
the action comparison keeps the best action under the scenario's figure of merit (`objective`). A guard
then compares with the cheap baselines on the same state and returns the best baseline's action if it is
better; `guard_fired` counts how often.

**Imitation.** `imitation_choice` turns a teacher's flow-level action into this action space, for
the warm start of `gnn_policy.train`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch_geometric.data import Data

from gnn_policy import checkpoint
from gnn_policy.base import Decision, Outcome, Policy, Problem, score
from gnn_policy.baselines import OFM, RandomScaleIn, SizeGreedy
from gnn_policy.gn import GNPolicyNet
from gnn_policy.graph import to_pyg
from gnn_policy.plan import Plan
from gnn_policy.translator import LoadRequest, refine, spread, translate
from twin import cost
from twin.migration import CostBreakdown, IndexedAction
from twin.params import Thresholds
from twin.scenario import ScenarioKind
from twin.state import ClusterState

LB_VARIANCE_WEIGHT = 10.0
"""Reward of load balancing per unit of var_after/var_before, against costs in seconds of latency."""
COST_UNIT = 1000.0
"""Costs are divided by this in rewards (1000 ms-equivalents = one instance's C_R) to keep gradients O(1)."""


@dataclass(frozen=True)
class GraphView:
    """One graph the GNN sees for a problem: the current cluster or the double GNN's modified one."""

    state: ClusterState
    """The real state; requests and actions are in its indices."""
    graph: Data
    """`gnn_policy.graph.to_pyg` of the (possibly modified) state; `graph.instance_index` maps nodes to instances."""
    drained: tuple[int, ...] = ()
    """Instances removed from the graph (scale-in): each must be emptied and stopped."""
    label: str = "current"


DRAIN_SHARES = (0.25, 0.5, 0.75, 1.0)
"""Scale-in graphs remove these shares of the instances the load judgment lets go (`drain_order`), and the
counts around the one that `drain_estimate` says pays most (`drain_counts`). The action comparison keeps the
best: draining an instance whose flows cost more to move than the C_R and ω penalty it saves does not pay,
and how many do depends on the state."""


def views(problem: Problem) -> list[GraphView]:
    """The current graph, plus the modified graph(s) of Fig. 3 for scale-out and scale-in."""
    state, kind = problem.state, problem.scenario.kind
    current = GraphView(state, to_pyg(state))
    if kind is ScenarioKind.SCALE_OUT:
        modified = [scale_out_view(problem)]
    elif kind is ScenarioKind.SCALE_IN:
        drain = drain_prices(problem)
        modified = [scale_in_view(problem, count, drain[0]) for count in drain_counts(problem, drain)]
    else:
        modified = []
    return [current, *(view for view in modified if view is not None)]


def scale_out_view(problem: Problem) -> GraphView | None:
    """Standby instances activated (empty), each next to the next most loaded instance; None without standby."""
    state = problem.state
    hot = list(problem.scenario.overloaded) or [int(np.argmax(np.where(state.active, state.utilisation, -1.0)))]
    wanted = max(1, problem.scenario.instances_needed - int(state.active.sum()))
    plan = Plan(state)
    for k in range(wanted):
        standby = plan.standby_order(hot[k % len(hot)])
        if standby.size == 0:
            break
        plan.start(int(standby[0]))
    if plan.active.sum() == state.active.sum():
        return None
    return GraphView(state, to_pyg(state.with_changes(active=plan.active)), label="scale-out")


def drain_counts(problem: Problem, drain: tuple[tuple[int, ...], np.ndarray] | None = None) -> list[int]:
    """How many instances each scale-in graph removes: `DRAIN_SHARES` of those the load judgment lets go, and
    the count of drains in `drain_order` with the lowest `drain_estimate`, with its two neighbours: the fixed
    shares alone miss the count that pays best (3 of 5, say), and the estimate is rough. `drain` is
    `drain_prices(problem)`, computed here when not given."""
    n_active = int(problem.state.active.sum())
    wanted = min(max(1, n_active - problem.scenario.instances_needed), len(problem.scenario.underloaded), n_active - 1)
    if wanted < 1:
        return []
    order, prices = drain if drain is not None else drain_prices(problem)
    best = int(np.argmin(drain_estimate(problem, order, prices)[:wanted])) + 1
    counts = {max(1, round(wanted * share)) for share in DRAIN_SHARES} | {best - 1, best, best + 1}
    return sorted(count for count in counts if 1 <= count <= wanted)


def drain_estimate(problem: Problem, order: Sequence[int], prices: np.ndarray) -> np.ndarray:
    """Estimated change of the total cost when the first c underloaded instances of `order` are drained, for
    c = 1, 2, ...: their `prices` less C_R each, and the change of the ω penalty of the underloaded instances.
    A drained instance's penalty goes with it; the drained load fills the shortfall below Th_low of those that
    stay (Optimal puts drained flows there), and what is still short is charged as one instance of their mean
    capacity."""
    state, params, thresholds = problem.state, problem.params, problem.thresholds
    order = np.asarray(order, dtype=np.int64)
    capacity = float(state.capacity[order].mean())
    shortfall = np.maximum(thresholds.low * state.capacity[order] - state.load_pps[order], 0.0)
    staying = np.r_[np.cumsum(shortfall[::-1])[::-1][1:], 0.0]
    """Shortfall (packets/s) of the underloaded instances after the first c of `order`."""
    left = np.maximum(staying - np.cumsum(state.load_pps[order]), 0.0)
    after = cost.threshold_penalties((thresholds.low - left / capacity)[:, None], np.ones((order.size, 1), dtype=bool),
                                     thresholds, params)
    before = cost.threshold_penalty(state.utilisation[order], np.ones(order.size, dtype=bool), thresholds, params)
    return np.cumsum(prices) - params.resource_cost * np.arange(1, order.size + 1) + after - before


def drain_order(problem: Problem) -> tuple[int, ...]:
    """The underloaded instances, cheapest to empty first (`drain_prices`)."""
    return drain_prices(problem)[0]


def drain_prices(problem: Problem) -> tuple[tuple[int, ...], np.ndarray]:
    """The underloaded instances cheapest to empty first, ties to the less loaded, and the price of emptying
    each: eq. (2) summed over its flows, each priced at the least loaded other active instance (moving a flow
    costs about the same anywhere; how many flows an instance holds is what differs)."""
    state, params = problem.state, problem.params
    underloaded = np.asarray(problem.scenario.underloaded, dtype=np.int64)
    if underloaded.size == 0:
        return (), np.zeros(0)
    keep = np.flatnonzero(state.active & ~np.isin(np.arange(state.n_instances), underloaded))
    if keep.size == 0:
        return tuple(underloaded.tolist()), np.zeros(underloaded.size)
    home = int(keep[np.argmin(state.utilisation[keep])])
    flows = np.flatnonzero(np.isin(state.assignment, underloaded))
    prices = cost.flow_migration_cost(state, flows, np.full(flows.size, home), params)
    to_empty = np.bincount(state.assignment[flows], weights=prices, minlength=state.n_instances)[underloaded]
    order = np.lexsort((state.utilisation[underloaded], to_empty))
    return tuple(underloaded[order].tolist()), to_empty[order]


def scale_in_view(problem: Problem, count: int | None = None, order: tuple[int, ...] | None = None) -> GraphView | None:
    """The first `count` (default: all the load judgment lets go) underloaded instances of `order` (default:
    `drain_order`, which `views` computes once for all its graphs) removed with their flows; None when none can
    go."""
    state = problem.state
    if count is None:
        counts = drain_counts(problem)
        if not counts:
            return None
        count = counts[-1]
    drained = (drain_order(problem) if order is None else order)[:count]
    keep = ~np.isin(state.assignment, drained)
    active = state.active.copy()
    active[list(drained)] = False
    remaining = state.with_changes(
        active=active, flow_ids=tuple(np.asarray(state.flow_ids, dtype=object)[keep].tolist()),
        five_tuple=state.five_tuple[keep], rate=state.rate[keep], byte_rate=state.byte_rate[keep],
        sla_ms=state.sla_ms[keep], assignment=state.assignment[keep])
    return GraphView(state, to_pyg(remaining), drained=drained, label=f"scale-in {count}")


def context(thresholds: Sequence[Thresholds]) -> torch.Tensor:
    """[graphs, 2] the thresholds the network needs besides the graph (`gn.CONTEXT_FEATURES`)."""
    return torch.tensor([[t.high, t.low] for t in thresholds], dtype=torch.float32)


def collate(graphs: Sequence[Data]) -> Data:
    """The graphs as one for the network, `batch` giving each node's graph: `Batch.from_data_list` reduced to
    the attributes of `gnn_policy.graph.to_pyg` graphs (PyG's generic collation takes about 0.7 ms, a seventh of a
    decision's 5 ms budget at N = 40); a single graph is passed through."""
    if len(graphs) == 1:
        return graphs[0]
    sizes = [graph.x.size(0) for graph in graphs]
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    return Data(x=torch.cat([g.x for g in graphs]), edge_attr=torch.cat([g.edge_attr for g in graphs]),
                edge_index=torch.cat([g.edge_index + s for g, s in zip(graphs, starts)], dim=1),
                u=torch.cat([g.u for g in graphs]), batch=torch.from_numpy(np.repeat(np.arange(len(graphs)), sizes)))


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
    node_start = np.cumsum([0, *(graph.x.size(0) for graph in graphs)]).tolist()
    edge_start = np.cumsum([0, *(graph.edge_index.size(1) for graph in graphs)]).tolist()
    return [(slice(node_start[g], node_start[g + 1]), slice(edge_start[g], edge_start[g + 1]))
            for g in range(len(graphs))]


def _requests(view: GraphView, drawn: np.ndarray, mean: np.ndarray,
              destinations: Sequence[int]) -> tuple[LoadRequest, LoadRequest]:
    """`Sample.request` from the drawn fractions and `Sample.mean_request` from the mean ones."""
    return request_of(view, drawn, destinations), _netted(request_of(view, mean, destinations))


def request_of(view: GraphView, fractions: np.ndarray, destinations: Sequence[int]) -> LoadRequest:
    """The loads asked for by a fraction of the sender's load per edge and a destination node per drained
    instance, in the state's instance indices (what `translate` takes)."""
    nodes = view.graph.instance_index.numpy()
    senders, receivers = view.graph.edge_index.numpy()
    src, dst = nodes[senders], nodes[receivers]
    amounts = np.zeros((view.state.n_instances, view.state.n_instances))
    amounts[src, dst] = fractions * view.state.load_pps[src]
    return LoadRequest(amounts, tuple((v, int(nodes[k])) for v, k in zip(view.drained, destinations)))


def _netted(request: LoadRequest) -> LoadRequest:
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


def imitation_choice(problem: Problem, action: IndexedAction, levels: Sequence[float]) -> tuple[GraphView, Choice]:
    """A teacher's flow-level `action` in the policy's action space (`_choice_of`) on the view whose mean action
    realises it best."""
    kind = problem.scenario.kind
    best = None
    for view in views(problem):
        choice = _choice_of(view, action, levels)
        mean = (choice.weights.double() @ torch.tensor(levels, dtype=torch.float64)).numpy()
        request = _netted(request_of(view, mean, choice.destinations))
        outcome = score(problem, Decision(realise(problem, request)))
        if outcome.valid and (best is None or objective(kind, outcome.breakdown) < best[0]):
            best = (objective(kind, outcome.breakdown), view, choice)
    if best is None:
        raise ValueError("no view of the problem realises the teacher's action validly")
    return best[1], best[2]


def _choice_of(view: GraphView, action: IndexedAction, levels: Sequence[float]) -> Choice:
    """Edges: the fraction the teacher moves, as weights on the two levels around it whose mean is that
    fraction exactly ("two-hot"); drains: where most of the drained instance's load went."""
    state = view.state
    nodes = view.graph.instance_index.numpy()
    # standby instances of one set-up are alike: the view's added ones stand for the teacher's started ones
    added = nodes[~state.active[nodes]]
    dst = action.dst.copy()
    for k, started in enumerate(action.start.tolist()):
        dst[action.dst == started] = added[k] if k < added.size else -1
    keep = dst >= 0
    moved = np.zeros((state.n_instances, state.n_instances))
    np.add.at(moved, (state.assignment[action.flows[keep]], dst[keep]), state.rate[action.flows[keep]])
    # Which receiver takes which sender's load is arbitrary among alike instances (a teacher pairs them by
    # rank, say), so the target is the canonical plan with the same net loads: every sender's surplus spread
    # over the receivers in proportion to what they take. A function of the nodes, it is learnable.
    transfers = moved.copy()
    transfers[list(view.drained)] = 0.0  # the drains carry these
    plan = proportional(transfers)
    senders, receivers = nodes[view.graph.edge_index.numpy()]
    fraction = np.clip(plan[senders, receivers] / np.maximum(state.load_pps[senders], 1e-12), 0.0, 1.0)
    grid = np.asarray(levels)
    upper = np.clip(np.searchsorted(grid, fraction), 1, grid.size - 1)
    share = (fraction - grid[upper - 1]) / (grid[upper] - grid[upper - 1])
    weights = np.zeros((fraction.size, grid.size))
    rows = np.arange(fraction.size)
    weights[rows, upper - 1] = 1.0 - share
    weights[rows, upper] += share
    destinations: list[int] = []
    taken = np.zeros(nodes.size, dtype=bool)
    for v in view.drained:  # without replacement, as `_drains` draws them
        if taken.all():
            taken[:] = False
        free = np.flatnonzero(~taken)
        received = moved[v, nodes[free]]
        k = int(free[np.argmax(received)] if received.sum() > 0 else free[np.argmin(state.utilisation[nodes[free]])])
        taken[k] = True
        destinations.append(k)
    return Choice(torch.as_tensor(weights.argmax(axis=1)), tuple(destinations),
                  torch.as_tensor(weights, dtype=torch.float32))


def objective(kind: ScenarioKind, breakdown: CostBreakdown) -> tuple[float, float]:
    """What "better" means per scenario (lower is better): load balancing minimises the variance of
    the utilisations first and the cost second (the Fig. 6 metric); scaling minimises the total cost."""
    if kind is ScenarioKind.LOAD_BALANCE:
        return (breakdown.variance_after, breakdown.total)
    return (breakdown.total, breakdown.variance_after)


def reward(kind: ScenarioKind, total: float, variance_before: float, variance_after: float) -> float:
    """The training reward: −total cost (section V.C) in `COST_UNIT`s, plus for load balancing a term
    for the variance left, var_after / var_before, since a balancing that moves nothing costs nothing."""
    value = -total / COST_UNIT
    if kind is ScenarioKind.LOAD_BALANCE and variance_before > 0:
        value -= LB_VARIANCE_WEIGHT * variance_after / variance_before
    return value


class DeepMigration(Policy):
    """The trained GN policy in deterministic mode, with the action comparison and the baseline guard."""

    name: ClassVar[str] = "deepmigration"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(
        {ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN, ScenarioKind.LOAD_BALANCE})

    def __init__(self, net: GNPolicyNet, *, seed: int = 0, guard: bool = True):
        self.net = net.eval()
        self.guard = guard
        self.guard_fired = 0
        """Decisions where a cheap baseline beat the GNN's action and was returned instead."""
        self.decisions = 0
        self._baselines: dict[ScenarioKind, tuple[Policy, ...]] = {
            ScenarioKind.SCALE_OUT: (OFM(), SizeGreedy()),
            ScenarioKind.SCALE_IN: (OFM(), RandomScaleIn(seed=seed)),
            ScenarioKind.LOAD_BALANCE: (OFM(),),
        }

    @classmethod
    def load(cls, path: str | None = None, *, seed: int = 0, guard: bool = True) -> DeepMigration:
        """The policy stored at `path`; None loads the checkpoint shipped in `gnn_policy/data/`."""
        net, _ = checkpoint.load(path)
        return cls(net, seed=seed, guard=guard)

    def _decide(self, problem: Problem) -> Decision:
        self.decisions += 1
        kind = problem.scenario.kind
        graph_views = views(problem)
        with torch.inference_mode():
            proposals = propose(self.net, graph_views, [problem.thresholds] * len(graph_views))
        candidates = [score(problem, Decision(realise(problem, request),
                                              reason=f"deepmigration: {v.label} graph, {how}"))
                      for v, requests in zip(graph_views, proposals)
                      for request, how in zip(requests, ("most likely levels", "mean levels"))]
        best = min((c for c in candidates if c.valid), key=lambda c: objective(kind, c.breakdown))
        if not self.guard:
            return best.decision
        fallback = self._best_baseline(problem)
        if fallback is not None and objective(kind, fallback.breakdown) < objective(kind, best.breakdown):
            self.guard_fired += 1
            return Decision(fallback.decision.action,
                            reason=f"deepmigration guard: {fallback.decision.reason or 'a baseline'} was better")
        return best.decision

    def _best_baseline(self, problem: Problem) -> Outcome | None:
        kind = problem.scenario.kind
        outcomes = []
        for policy in self._baselines[kind]:
            decision = policy.decide(problem)
            if decision.feasible:
                outcome = score(problem, Decision(decision.action, reason=policy.name))
                if outcome.valid:
                    outcomes.append(outcome)
        return min(outcomes, key=lambda o: objective(kind, o.breakdown), default=None)
