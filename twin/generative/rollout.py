"""The generative twin's LSTM as a `Twin` of the fidelity benchmark (name `generative`).

From origin t it reads the features of the last H states and actions (`Past`), predicts state t+1 with
the recorded action of t, appends its prediction and the next recorded action, and so on (eq. 25 rolled
out). Utilisation, queue and drops are the LSTM's; an instance is active as the recorded starts and stops
say. The LSTM predicts neither move durations nor the period's flows, so moves take the default twin's
la_ij, and the migration and resource costs are the default twin's; the threshold penalty of period t+j
is taken on the utilisation of state t+j (measured for j = 0, else predicted) with the period's moves
(the one cost model, twin.cost).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from twin import cost
from twin.fidelity.episode import Past, RecordedAction
from twin.fidelity.twins import DefaultTwin, Step, Twin
from twin.generative.checkpoint import load
from twin.generative.features import ACTION, STATE, action_features, state_features
from twin.generative.models import GenerativeModel
from twin.params import CostParams, Thresholds

UTILISATION, QUEUE, ACTIVE, DROPS = (STATE.index(name) for name in ("utilisation", "queue_ratio", "active",
                                                                     "drop_ratio"))
LOAD_IN, LOAD_OUT = ACTION.index("load_in"), ACTION.index("load_out")


class GenerativeTwin(Twin):
    """The LSTM of a fitted `GenerativeModel` rolled out with the recorded actions."""

    name = "generative"

    def __init__(self, model: GenerativeModel, params: CostParams = CostParams(),
                 thresholds: Thresholds = Thresholds()):
        self.model, self.params, self.thresholds = model, params, thresholds
        self._engine = DefaultTwin(params, thresholds)

    def history(self, past: Past) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Features of states t-H+1..t and of the actions of periods t-H+1..t-1 (fewer near the start)."""
        first = max(past.t - self.model.config.history + 1, 0)
        drops = past.drops(first - 1)
        states = [state_features(past.state(s), drops[s - 1 - max(first - 1, 0)] if s else None)
                  for s in range(first, past.t + 1)]
        _, actions = past.durations(first)
        return states, [action_features(past.state(first + k), a) for k, a in enumerate(actions)]

    def window(self, rows: list[np.ndarray]) -> torch.Tensor:
        """The last H rows, the first repeated where there are fewer (as `features.transitions` pads)."""
        rows = rows[-self.model.config.history:]
        return torch.as_tensor(np.stack([rows[0]] * (self.model.config.history - len(rows)) + rows))[None]

    def rollout(self, past: Past, actions: Sequence[RecordedAction]) -> list[Step]:
        origin = past.state()
        states, done = self.history(past)
        active = origin.active.copy()
        mask = torch.ones((1, origin.n_instances), dtype=torch.bool)
        steps = []
        for j, (action, default) in enumerate(zip(actions, self._engine.rollout(past, actions))):
            done.append(action_features(origin, action))
            predicted, _ = self.model.predict(self.window(states), self.window(done), mask)
            active = (active | action.started) & ~action.stopped
            penalty = default.costs["threshold_penalty"] if j == 0 else cost.threshold_penalty(
                states[-1][:, UTILISATION] + done[-1][:, LOAD_IN] - done[-1][:, LOAD_OUT], active, self.thresholds,
                self.params)
            after = predicted[0].numpy().copy()
            after[:, ACTIVE] = active
            after[:, [UTILISATION, QUEUE, DROPS]] = np.maximum(after[:, [UTILISATION, QUEUE, DROPS]], 0.0)
            after[~active, UTILISATION] = 0.0
            states.append(after)
            steps.append(replace(default, utilisation=after[:, UTILISATION], queue=after[:, QUEUE] * past.buffer,
                                 drops=after[:, DROPS] * past.buffer,
                                 costs={**default.costs, "threshold_penalty": penalty}))
        return steps


def load_twin(path: str | os.PathLike | None = None) -> GenerativeTwin:
    """The generative twin of the checkpoint at `path` (the shipped one when None)."""
    return GenerativeTwin(load(path)[0])
