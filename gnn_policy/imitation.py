"""Imitation: a teacher's flow-level action turned into the GN policy's action space, for the warm start of
`gnn_policy.train`."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gnn_policy.actions import Choice, netted, objective, proportional, realise, request_of
from gnn_policy.base import Decision, Problem, score
from gnn_policy.views import GraphView, views
from twin.migration import IndexedAction


def imitation_choice(problem: Problem, action: IndexedAction, levels: Sequence[float]) -> tuple[GraphView, Choice]:
    """A teacher's flow-level `action` in the policy's action space (`_choice_of`) on the view whose mean action
    realises it best."""
    kind = problem.scenario.kind
    best = None
    for view in views(problem):
        choice = _choice_of(view, action, levels)
        mean = (choice.weights.double() @ torch.tensor(levels, dtype=torch.float64)).numpy()
        request = netted(request_of(view, mean, choice.destinations))
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
