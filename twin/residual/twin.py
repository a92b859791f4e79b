"""The residual twin behind the fidelity benchmark's `Twin` interface, and its batched scoring of candidate
actions (the learning issue's "what would this action do").

The network predicts each instance's utilisation, queue, arrivals and drops period by period
(`twin.residual.model`), correcting its base twin's rollout (the calibrated twin of the parameters stored
with it) from the same origin with the same actions. What it does not model, the moves' durations and the
period's migration and resource cost, comes from a twin for the costs (the network's base unless another is
given; the default twin for a network without a base), and the threshold penalty is the one cost model's ω
on the residual twin's own utilisation after each period's moves.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from twin import cost
from twin.fidelity.episode import Past, RecordedAction
from twin.fidelity.twins import CalibratedTwin, DefaultTwin, FlowTwin, Step, Twin
from twin.migration import IndexedAction
from twin.params import CostParams, Thresholds
from twin.residual import checkpoint
from twin.residual.features import (
    ACTION_NODE,
    STATE,
    Move,
    Origin,
    StatePast,
    as_recorded,
    base_prediction,
    candidate_windows,
    indexed_move,
    origin_of_past,
    origin_of_state,
    recorded_move,
)
from twin.residual.model import ResidualNet, clip
from twin.state import ClusterState

OUTPUTS = ("utilisation", "queue_fill", "drops")
"""The state components the twin reports (the arrivals are only the network's input to its next period);
the utilisation first: the threshold penalties need it."""


@dataclass(frozen=True)
class Scores:
    """Predicted metrics of C candidate actions over k periods on N instances."""

    utilisation: np.ndarray
    """[C, k, N] utilisation of the states after periods 1..k."""
    queue: np.ndarray | None
    """[C, k, N] queue (packets) of those states (None: not asked for, `ResidualTwin.score_actions`)."""
    drops: np.ndarray | None
    """[C, k, N] packets dropped during each period (None: not asked for)."""
    threshold_penalty: np.ndarray
    """[C, k] the cost model's ω penalties of each period, on the utilisation after its moves."""


class ResidualTwin(Twin):
    """s' = base(s, a) + f(s, a, base(s, a)) (or s + f(s, a) without a base) rolled out with the given actions."""

    name = "residual"

    def __init__(self, net: ResidualNet, base: FlowTwin | None = None, params: CostParams = CostParams(),
                 thresholds: Thresholds = Thresholds()):
        """`base`: the twin for the move durations and the migration and resource costs."""
        self.net, self.params, self.thresholds = net.eval(), params, thresholds
        self.inputs = None if net.base is None else CalibratedTwin(net.base, params, thresholds)
        self.base = base or self.inputs or DefaultTwin(params, thresholds)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **kwargs) -> ResidualTwin:
        """The twin of the checkpoint at `path` (the shipped model when None)."""
        return cls(checkpoint.load(path)[0], **kwargs)

    def rollout(self, past: Past, actions: Sequence[RecordedAction]) -> list[Step]:
        if not actions:
            return []
        origin = origin_of_past(past, self.net.config.history)
        moves = [recorded_move(origin.state, action) for action in actions]
        steps = self.base.rollout(past, actions)
        inputs = None if self.inputs is None else base_prediction(
            steps if self.inputs is self.base else self.inputs.states(past, actions), past.buffer, len(actions))
        predicted, graph = self._predict(origin, [moves], len(actions), [inputs], OUTPUTS)
        scores = self._scores(origin, predicted, graph)
        return [replace(step, utilisation=scores.utilisation[0, j], queue=scores.queue[0, j],
                        drops=scores.drops[0, j],
                        costs={**step.costs, "threshold_penalty": float(scores.threshold_penalty[0, j])})
                for j, step in enumerate(steps)]

    def score_actions(self, state: ClusterState | Past, candidate_actions: Sequence[IndexedAction],
                      k: int, queues: bool = True) -> Scores:
        """Each candidate carried out on `state` now, then k − 1 periods without action, all candidates in one
        batched pass. `state` is a recorded origin (`Past`, whose history the network reads) or a bare
        ClusterState (taken to have been so for as long as the network looks back). `queues` False: the
        utilisation and the threshold penalties only (queue and drops None), which is all the look-ahead's
        cost reads; the members that predict only the queue and drops are then not run."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        history = self.net.config.history
        origin = origin_of_past(state, history) if isinstance(state, Past) else origin_of_state(state, history)
        moves = [[indexed_move(origin.state, action)] for action in candidate_actions]
        if not moves:
            n = origin.state.n_instances
            empty = np.zeros((0, k, n))
            return Scores(empty, empty if queues else None, empty if queues else None, np.zeros((0, k)))
        inputs = [None] * len(moves)
        if self.inputs is not None:
            past = state if isinstance(state, Past) else StatePast(state)
            idle = [as_recorded(origin.state, IndexedAction())] * (k - 1)
            inputs = [base_prediction(self.inputs.states(past, [as_recorded(origin.state, action)] + idle),
                                      past.buffer, k) for action in candidate_actions]
        predicted, graph = self._predict(origin, moves, k, inputs, OUTPUTS if queues else OUTPUTS[:1])
        return self._scores(origin, predicted, graph, queues)

    def _predict(self, origin: Origin, candidates: Sequence[Sequence[Move]], k: int,
                 inputs: Sequence[np.ndarray | None], components: Sequence[str]):
        """The clipped predictions [C, N, k, 4] (`components` only, the others NaN: `ResidualNet.predict`)
        and the batched graph's per-node action steps [C, N, k, A]; `inputs` the base twin's predictions per
        candidate (None without a base)."""
        batch = candidate_windows(origin, candidates, k, inputs)
        raw = self.net.predict(batch, components)
        n = origin.state.n_instances
        active = batch.node_steps[:, :, ACTION_NODE.index("active_after")]
        predicted = torch.stack([clip(raw[:, j], active[:, j]) for j in range(k)], dim=1)
        return predicted.reshape(-1, n, k, len(STATE)).numpy(), batch.node_steps.reshape(-1, n, k, len(ACTION_NODE))

    def _scores(self, origin: Origin, predicted: np.ndarray, steps: torch.Tensor, queues: bool = True) -> Scores:
        state = origin.state
        utilisation = predicted[..., STATE.index("utilisation")].transpose(0, 2, 1)
        steps = steps.numpy().transpose(0, 2, 1, 3)
        before = np.concatenate([np.broadcast_to(state.utilisation, utilisation[:, :1].shape), utilisation[:, :-1]],
                                axis=1)
        after = before + steps[..., ACTION_NODE.index("moved_in")] - steps[..., ACTION_NODE.index("moved_out")]
        active = steps[..., ACTION_NODE.index("active_after")] > 0.5
        penalty = np.array([[cost.threshold_penalty(u, a, self.thresholds, self.params) for u, a in zip(us, acts)]
                            for us, acts in zip(after, active)])
        if not queues:
            return Scores(utilisation, None, None, penalty)
        return Scores(utilisation,
                      predicted[..., STATE.index("queue_fill")].transpose(0, 2, 1) * state.buffer,
                      predicted[..., STATE.index("drops")].transpose(0, 2, 1) * state.buffer, penalty)


def score_actions(state: ClusterState | Past, candidate_actions: Sequence[IndexedAction], k: int,
                  model: str | os.PathLike | None = None) -> Scores:
    """`ResidualTwin.score_actions` with the model at `model` (the shipped one when None)."""
    return ResidualTwin.load(model).score_actions(state, candidate_actions, k)
