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
must land somewhere: each removed instance, least loaded first, draws its destination from a
categorical over the remaining nodes (softmax of the node logits, destinations already drawn
masked out), so the whole action keeps an exact log-probability. Deterministic mode takes the
most likely level and destination.

**The double GNN.** The load judgment (`twin.scenario.instances_needed`) says how many instances
must be active. For scale-out the modified graph adds that many standby instances (at least one),
each the standby nearest the next most loaded instance; for scale-in it removes that many
underloaded instances (at least one), least loaded first. The GNN runs on the current and on the
modified graph, and the action comparison keeps the better of the two under the scenario's
figure of merit (`objective`). A guard then compares with the cheap baselines on the same state
and returns the best baseline's action if it is better; `guard_fired` counts how often.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from gnn_policy import checkpoint
from gnn_policy.base import Decision, Outcome, Policy, Problem, score
from gnn_policy.baselines import OFM, Pairwise, RandomScaleIn, SizeGreedy
from gnn_policy.baselines._plan import Plan
from gnn_policy.gn import GNPolicyNet
from gnn_policy.translator import LoadRequest, translate
from twin.graph import to_pyg
from twin.migration import CostBreakdown
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
    """`twin.graph.to_pyg` of the (possibly modified) state; `graph.instance_index` maps nodes to instances."""
    drained: tuple[int, ...] = ()
    """Instances removed from the graph (scale-in): each must be emptied and stopped."""
    label: str = "current"


def views(problem: Problem) -> list[GraphView]:
    """The current graph, plus the modified graph of Fig. 3 for scale-out and scale-in."""
    state, kind = problem.state, problem.scenario.kind
    current = GraphView(state, to_pyg(state))
    if kind is ScenarioKind.SCALE_OUT:
        modified = scale_out_view(problem)
    elif kind is ScenarioKind.SCALE_IN:
        modified = scale_in_view(problem)
    else:
        modified = None
    return [current] if modified is None else [current, modified]


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


def scale_in_view(problem: Problem) -> GraphView | None:
    """The least loaded underloaded instances removed with their flows; None when none can go."""
    state = problem.state
    n_active = int(state.active.sum())
    cold = list(problem.scenario.underloaded)
    wanted = min(max(1, n_active - problem.scenario.instances_needed), len(cold), n_active - 1)
    if wanted < 1:
        return None
    drained = tuple(cold[:wanted])
    keep = ~np.isin(state.assignment, drained)
    active = state.active.copy()
    active[list(drained)] = False
    remaining = state.with_changes(
        active=active, flow_ids=tuple(np.asarray(state.flow_ids, dtype=object)[keep].tolist()),
        five_tuple=state.five_tuple[keep], rate=state.rate[keep], byte_rate=state.byte_rate[keep],
        sla_ms=state.sla_ms[keep], assignment=state.assignment[keep])
    return GraphView(state, to_pyg(remaining), drained=drained, label="scale-in")


def context(thresholds: Sequence[Thresholds]) -> torch.Tensor:
    """[graphs, 2] the thresholds the network needs besides the graph (`gn.CONTEXT_FEATURES`)."""
    return torch.tensor([[t.high, t.low] for t in thresholds], dtype=torch.float32)


@dataclass(frozen=True)
class Sample:
    request: LoadRequest
    log_prob: torch.Tensor
    """0-d: exact log-probability of the drawn levels and drain destinations."""
    entropy: torch.Tensor
    """0-d: mean entropy of the per-edge level distributions."""


def act(net: GNPolicyNet, graph_views: Sequence[GraphView], thresholds: Sequence[Thresholds], *,
        greedy: bool, generator: torch.Generator | None = None) -> list[Sample]:
    """Run the network once on all views (one PyG batch) and draw (or take the mode of) each action."""
    batch = Batch.from_data_list([view.graph for view in graph_views])
    logits = net(batch, context(thresholds))
    levels = torch.tensor(net.config.levels, dtype=torch.float64)
    edge_log_p = torch.log_softmax(logits.edge, dim=1)
    if greedy:
        chosen = edge_log_p.argmax(dim=1)
    else:
        chosen = torch.multinomial(edge_log_p.exp(), 1, generator=generator).squeeze(1)
    edge_graph = batch.batch[batch.edge_index[0]]
    n_graphs = len(graph_views)
    log_prob = torch.zeros(n_graphs).index_add(0, edge_graph, edge_log_p.gather(1, chosen[:, None]).squeeze(1))
    entropy_per_edge = -(edge_log_p.exp() * edge_log_p).sum(dim=1)
    edges_per_graph = torch.bincount(edge_graph, minlength=n_graphs).clamp(min=1)
    entropy = torch.zeros(n_graphs).index_add(0, edge_graph, entropy_per_edge) / edges_per_graph

    samples = []
    edge_start = np.cumsum([0] + [view.graph.num_edges for view in graph_views])
    for g, view in enumerate(graph_views):
        nodes = view.graph.instance_index.numpy()
        edge_rows = slice(int(edge_start[g]), int(edge_start[g + 1]))
        senders, receivers = view.graph.edge_index.numpy()
        src, dst = nodes[senders], nodes[receivers]
        amounts = np.zeros((view.state.n_instances, view.state.n_instances))
        amounts[src, dst] = levels[chosen[edge_rows]].numpy() * view.state.load_pps[src]
        drains, drain_log_p = _drains(view, logits.node[int(batch.ptr[g]):int(batch.ptr[g + 1])], greedy, generator)
        samples.append(Sample(LoadRequest(amounts, drains), log_prob[g] + drain_log_p, entropy[g]))
    return samples


def _drains(view: GraphView, node_logits: torch.Tensor, greedy: bool,
            generator: torch.Generator | None) -> tuple[tuple[tuple[int, int], ...], torch.Tensor]:
    """Destinations of the removed instances, drawn without replacement while nodes remain."""
    log_p = node_logits.new_zeros(())
    drains = []
    taken = torch.zeros_like(node_logits, dtype=torch.bool)
    for v in view.drained:
        if taken.all():
            taken = torch.zeros_like(taken)
        node_log_p = torch.log_softmax(node_logits.masked_fill(taken, float("-inf")), dim=0)
        if greedy:
            k = int(node_log_p.argmax())
        else:
            k = int(torch.multinomial(node_log_p.exp(), 1, generator=generator))
        log_p = log_p + node_log_p[k]
        taken = taken.clone()
        taken[k] = True
        drains.append((v, int(view.graph.instance_index[k])))
    return tuple(drains), log_p


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
            ScenarioKind.LOAD_BALANCE: (OFM(), Pairwise()),
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
            samples = act(self.net, graph_views, [problem.thresholds] * len(graph_views), greedy=True)
        candidates = [score(problem, Decision(translate(problem.state, s.request, problem.params),
                                              reason=f"deepmigration: {v.label} graph"))
                      for v, s in zip(graph_views, samples)]
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
