"""The graphs the GNN sees for a problem: the current cluster and the double GNN's modified graphs (Fig. 3).

The load judgment (`twin.scenario.instances_needed`) says how many instances must be active. For scale-out
the modified graph adds that many standby instances (at least one), each the standby nearest the next most
loaded instance; for scale-in, graphs remove shares of the underloaded instances that can go (`DRAIN_SHARES`)
and the counts around the one `drain_estimate` favours (`drain_counts`), cheapest to empty first
(`drain_order`). `collate` and `context` turn the views into the network's input.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data

from gnn_policy.base import Problem
from gnn_policy.graph import to_pyg
from gnn_policy.plan import Plan
from twin import cost
from twin.params import Thresholds
from twin.scenario import ScenarioKind
from twin.state import ClusterState


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
    # Shortfall (packets/s) of the underloaded instances after the first c of `order`.
    staying = np.r_[np.cumsum(shortfall[::-1])[::-1][1:], 0.0]
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
    return Data(x=torch.cat([g.x for g in graphs]), x_optional=torch.cat([g.x_optional for g in graphs]),
                edge_attr=torch.cat([g.edge_attr for g in graphs]),
                edge_index=torch.cat([g.edge_index + s for g, s in zip(graphs, starts)], dim=1),
                u=torch.cat([g.u for g in graphs]), batch=torch.from_numpy(np.repeat(np.arange(len(graphs)), sizes)))
