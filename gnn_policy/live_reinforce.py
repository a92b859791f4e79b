"""Agent 1's learning on the testbed (`dm-demo --learn`, `gnn_policy.two_loops`): on-policy REINFORCE on the
control decisions of one recorded live window.

A live window is one `dm-demo --record` run of the control head sampling its act/hold and target
(`--sample-control`, the stabilizer off, so that the policy sees `Problem.of` the recorded state). The recording
holds, per decided period, the draw and its log-probability (twin.records' `control_*` columns, schema v2); with
the period's state (`Recording.state`) that is the control head's whole input, so log π(a_t | s_t) is recomputed
exactly under any weights (`live_samples`; `live_step` checks it against the recorded value before the update).

The reward is the closed-loop benchmark's: r_t = −cost_t / cost_unit, cost_t the period's `total_cost` share on
what the testbed did (`live_costs`), over the periods of the replay (`replay_periods`). One window is one episode,
so the baseline is not the mean over parallel copies (`loop_training.advantages`) but the window's mean reward:
A_t = Σ_{t' ≥ t} (r_t' − r̄) (`loop_training.returns` of the centred costs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gnn_policy import control
from gnn_policy.base import Problem
from gnn_policy.gn import GNPolicyNet
from gnn_policy.loop_training import returns
from twin.migration import Action, apply
from twin.params import CostParams, Thresholds
from twin.records import Recording

LOG_PROB_TOLERANCE = 1e-4
"""Largest |recomputed − recorded| log π(a | s) under the weights that ran the window: beyond it the recording
was not drawn by these weights (another checkpoint, another input), and the update would not be on-policy."""


class LiveLearningError(ValueError):
    """A recording agent 1 cannot learn from; the message names the recording and the problem."""


@dataclass(frozen=True)
class LiveSample:
    """One recorded control decision: its period (index into the replay's periods), input, draw, log-prob."""

    period: int
    inputs: control.ControlInput
    choice: control.ControlChoice
    recorded_log_prob: float


def replay_periods(recording: Recording) -> np.ndarray:
    """Indices of the periods that began while the trace replayed: [replay start, + duration_s) by wall time
    (dm-demo's meta `replay_started_wall_s`); the warm-up before and the drain after are left out."""
    meta = recording.meta
    start, duration = meta.get("replay_started_wall_s"), meta.get("duration_s")
    if not isinstance(start, (int, float)) or not isinstance(duration, (int, float)):
        raise LiveLearningError(f"{recording.directory}: meta.json has no replay_started_wall_s and duration_s "
                                "(recorded by a dm-demo older than --learn)")
    wall = recording.column("periods", "wall_time_s")
    periods = np.flatnonzero((wall >= start) & (wall < start + duration))
    if periods.size == 0:
        raise LiveLearningError(f"{recording.directory}: no period began during the replay")
    return periods


def live_costs(recording: Recording, params: CostParams = CostParams(),
               thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """[periods] each period's cost as the closed-loop benchmark charges it (`Period.cost`: eq. (2)'s migration
    cost + C_R + the ω penalties after the action), on what the testbed did: the measured cost of an executed
    decision (`measured_total`, the same formula at the measured move durations), else the ω penalties of the
    cluster as it was (`twin.migration.apply` of no action)."""
    measured = recording.column("periods", "measured_total")
    return np.array([measured[t] if np.isfinite(measured[t])
                     else apply(recording.state(t), Action(), params, thresholds)[1].total
                     for t in range(recording.n_periods)])


def live_samples(recording: Recording, targets: tuple[float, ...], periods: np.ndarray,
                 thresholds: Thresholds = Thresholds(), params: CostParams = CostParams()) -> list[LiveSample]:
    """The control decisions among `periods` (in that order), rebuilt as the controller's policy saw them."""
    meta = recording.meta
    if meta.get("stabilizer") is not False:
        raise LiveLearningError(f"{recording.directory}: recorded with the stabilizer on (or unknown): the "
                                "control head then saw the stabilizer's estimated state and Q(t), which the "
                                "recording does not hold")
    table = recording.tables["periods"]
    hold, target, log_p, scenario = (table.column(name).to_pylist() for name in
                                     ("control_hold", "control_target", "control_log_prob", "scenario"))
    samples = []
    for index, t in enumerate(periods.tolist()):
        if hold[t] is None:
            continue
        problem = Problem.of(recording.state(t), thresholds, params)
        if problem.scenario.kind.value != scenario[t]:
            raise LiveLearningError(f"{recording.directory}: period {t}: the state gives scenario "
                                    f"{problem.scenario.kind.value}, the controller recorded {scenario[t]} "
                                    "(other thresholds?)")
        if not hold[t] and target[t] not in targets:
            raise LiveLearningError(f"{recording.directory}: period {t}: target {target[t]} is not on the control "
                                    f"head's grid {targets}")
        choice = control.ControlChoice(hold[t], 0 if hold[t] else targets.index(target[t]))
        samples.append(LiveSample(index, control.control_input(problem), choice, log_p[t]))
    return samples


def live_step(net: GNPolicyNet, recording: Recording, *, lr: float, cost_unit: float = 1000.0,
              grad_clip: float = 1.0) -> dict:
    """One REINFORCE update of `net` (its trainable parameters: the control head) on the window `recording`,
    which these weights must have drawn (checked); the window's figures and the update's."""
    periods = replay_periods(recording)
    costs = live_costs(recording)[periods]
    samples = live_samples(recording, net.config.targets, periods)
    figures = {"periods": int(periods.size), "cost_per_period": float(costs.mean()),
               "total_cost": float(costs.sum()), "decisions": len(samples),
               "hold_share": float(np.mean([s.choice.hold for s in samples])) if samples else None}
    if not samples:
        return {**figures, "loss": None, "grad_norm": None, "log_prob_error": None}
    advantage = returns((costs - costs.mean())[None, :], cost_unit)[0]
    logits = control.control_logits(net, [s.inputs for s in samples])
    log_p = control.log_prob(logits, [s.choice for s in samples])
    error = float((log_p.detach() - torch.tensor([s.recorded_log_prob for s in samples])).abs().max())
    if error > LOG_PROB_TOLERANCE:
        raise LiveLearningError(f"{recording.directory}: the recorded draws' log-probabilities differ from these "
                                f"weights' by up to {error:.3g}: the window was not run by them")
    weight = torch.tensor([advantage[s.period] for s in samples], dtype=torch.float32)
    loss = -(log_p * weight).sum()
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    optimizer.step()
    return {**figures, "loss": loss.item(), "grad_norm": float(grad_norm), "log_prob_error": error,
            "entropy": float(control.entropy(logits.detach()).mean())}
