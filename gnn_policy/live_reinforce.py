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

import math
from collections.abc import Sequence
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
TRUST_STEP_MAX = 4.0
"""The trust-region step's longest try, in parameter norm (the shipped control head's weights have norm 6.6)."""
TRUST_HALVINGS = 30


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


def live_step(net: GNPolicyNet, recordings: Recording | Sequence[Recording], *, lr: float,
              cost_unit: float = 1000.0, grad_clip: float = 1.0, max_kl: float | None = None) -> dict:
    """One REINFORCE update of `net` (its trainable parameters: the control head) on the windows `recordings`,
    which these weights must have drawn (checked; each window its own episode and baseline): an Adam step at
    `lr`, or with `max_kl` the trust-region step (`trust_region_step`); the windows' figures and the update's."""
    recordings = [recordings] if isinstance(recordings, Recording) else list(recordings)
    windows, samples, weights = [], [], []
    for recording in recordings:
        periods = replay_periods(recording)
        costs = live_costs(recording)[periods]
        found = live_samples(recording, net.config.targets, periods)
        advantage = returns((costs - costs.mean())[None, :], cost_unit)[0]
        windows.append({"recording": str(recording.directory), "periods": int(periods.size),
                        "cost_per_period": float(costs.mean()), "decisions": len(found)})
        samples += found
        weights += [advantage[s.period] for s in found]
    figures = {"windows": windows, "cost_per_period": float(np.mean([w["cost_per_period"] for w in windows])),
               "decisions": len(samples),
               "hold_share": float(np.mean([s.choice.hold for s in samples])) if samples else None}
    if not samples:
        return {**figures, "loss": None, "grad_norm": None, "log_prob_error": None}
    inputs = [s.inputs for s in samples]
    logits = control.control_logits(net, inputs)
    log_p = control.log_prob(logits, [s.choice for s in samples])
    error = float((log_p.detach() - torch.tensor([s.recorded_log_prob for s in samples])).abs().max())
    if error > LOG_PROB_TOLERANCE:
        raise LiveLearningError(f"{recordings[0].directory}: the recorded draws' log-probabilities differ from "
                                f"these weights' by up to {error:.3g}: the window was not run by them")
    loss = -(log_p * torch.tensor(weights, dtype=torch.float32)).sum()
    trainable = [p for p in net.parameters() if p.requires_grad]
    net.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    if max_kl is None:
        optimizer = torch.optim.Adam(trainable, lr=lr)
        optimizer.step()
        update = {"kl": kl_to(net, inputs, logits.detach())}
    else:
        update = trust_region_step(net, trainable, inputs, logits.detach(), max_kl)
    net.zero_grad()
    return {**figures, "loss": loss.item(), "grad_norm": float(grad_norm), "log_prob_error": error,
            "entropy": float(control.entropy(logits.detach()).mean()), **update}


def kl_to(net: GNPolicyNet, inputs: list[control.ControlInput], old_logits: torch.Tensor) -> float:
    """Mean over `inputs` of KL(π_old ‖ π_net) on the whole action distribution (hold, act at each target)."""
    with torch.no_grad():
        old = control.all_log_probs(old_logits)
        new = control.all_log_probs(control.control_logits(net, inputs))
        return float((old.exp() * (old - new)).sum(1).mean())


def trust_region_step(net: GNPolicyNet, trainable: list[torch.Tensor], inputs: list[control.ControlInput],
                      old_logits: torch.Tensor, max_kl: float) -> dict:
    """TRPO's line search on the plain gradient (already in `.grad`): the longest step TRUST_STEP_MAX·2^−k
    along −g/‖g‖ whose mean KL(π_old ‖ π_new) over the window's decided states is at most `max_kl`; no step if
    none is. One live window is one noisy sample of ~26 decisions: the bound keeps it from swinging the head
    (an Adam step at 5e-3 moved every weight by 5e-3 and put the head back on the hold rule)."""
    if not (math.isfinite(max_kl) and max_kl > 0):
        raise LiveLearningError(f"the trust region's KL bound must be a positive number, not {max_kl!r}")
    before = [p.detach().clone() for p in trainable]
    grads = [p.grad.detach().clone() for p in trainable]
    norm = float(torch.sqrt(sum((g * g).sum() for g in grads)))
    for halvings in range(TRUST_HALVINGS + 1):
        size = TRUST_STEP_MAX * 0.5 ** halvings if norm > 0 else 0.0
        with torch.no_grad():
            for parameter, start, grad in zip(trainable, before, grads):
                parameter.copy_(start - size * grad / max(norm, 1e-12))
        kl = kl_to(net, inputs, old_logits)
        if kl <= max_kl:
            return {"kl": kl, "step_norm": size, "max_kl": max_kl}
    with torch.no_grad():
        for parameter, start in zip(trainable, before):
            parameter.copy_(start)
    return {"kl": 0.0, "step_norm": 0.0, "max_kl": max_kl}
