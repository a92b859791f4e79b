"""Exploration for data acquisition (issue 18): a wrapper that, with probability eps per decision, replaces
the policy's action by a random valid migration set, so that recorded transitions cover more than one
policy's choices. It wraps any policy, so there is one perturbation and not one per policy.

The random set moves 1 to `MAX_MOVES` distinct flows, each to another active instance, and is valid under
`twin.migration.apply` (a move that breaks constraint (5) is dropped until the rest is valid). It never
starts or stops an instance: the data's scale actions are the policies' own.
"""
from __future__ import annotations

import numpy as np

from gnn_policy.base import Decision, Policy, Problem
from twin.migration import IndexedAction, InvalidAction, apply
from twin.scenario import ScenarioKind

MAX_MOVES = 8
_STREAM = 0xE4  # the exploration's own random stream of a seed, apart from the controller's SLA draws


class Exploring(Policy):
    """`policy`, whose decision is replaced by random valid moves with probability `eps` whenever a
    scenario calls for a decision; `explorations` counts the replaced decisions."""

    name = "explore"
    handles = frozenset(ScenarioKind) - {ScenarioKind.NONE}

    def __init__(self, policy: Policy, eps: float, seed: int = 0):
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"the exploration probability must be in [0, 1], not {eps!r}")
        self.policy, self.eps = policy, eps
        self._rng = np.random.default_rng((seed, _STREAM))
        self.explorations = 0

    def decide(self, problem: Problem) -> Decision:
        if problem.scenario.kind is ScenarioKind.NONE or self._rng.random() >= self.eps:
            return self.policy.decide(problem)
        self.explorations += 1
        return self._decide(problem)

    def _decide(self, problem: Problem) -> Decision:
        action = random_valid_moves(problem, self._rng)
        return Decision(action, reason=f"explore: {action.flows.size} random valid moves (eps {self.eps:g})")


def random_valid_moves(problem: Problem, rng: np.random.Generator) -> IndexedAction:
    """1 to MAX_MOVES distinct flows to random other active instances, valid on the problem's state (empty
    when no flow can move)."""
    state = problem.state
    active = state.active_indices
    if state.n_flows == 0 or active.size < 2:
        return IndexedAction()
    count = int(rng.integers(1, min(MAX_MOVES, state.n_flows) + 1))
    flows = rng.choice(state.n_flows, size=count, replace=False).astype(np.int64)
    others = [active[active != state.assignment[f]] for f in flows]
    dst = np.array([rng.choice(choices) for choices in others], dtype=np.int64)
    while flows.size:
        action = IndexedAction(flows, dst)
        try:
            apply(state, action, problem.params, problem.thresholds)
            return action
        except InvalidAction:
            flows, dst = flows[:-1], dst[:-1]
    return IndexedAction()
