"""Recorded live transitions in the control head's terms (issue 19, section 3): what the testbed did, as
experience for `gnn_policy.twin_experience`.

A recording (`twin.records`) holds the state the controller saw, the moves carried out and the instances
started and stopped, but not the control head's action (hold, or act at target k): the recorded policies were
other ones (DeepMigration's one-period policy, OFM, Pairwise, Size-greedy, random exploration). So the action is
**inferred** from what was executed (`consistent_targets`): nothing moved, started or stopped → hold; otherwise
act, at **any target whose request would leave as many instances carrying load as the executed action left**
(`rule_policy.rule_view`: the instances of the request's graph less those it drains). The target acts only
through that count (`gnn_policy.control`), so the data cannot say more: on a load-balancing decision every target
is consistent, and on a cluster with every instance started every target low enough to want them all. The
recorded choice is the event "act, target in that set", whose exact log-probability is
log p(act) + log Σ_{k in set} p(k) (`choice_log_prob`; `control.log_prob` for a one-target set). A decision period
is one whose detected scenario is not `none` (the closed loop asks the policy only then).

Every recorded period gets the reward r_t = −(the cost model's total, `twin.migration.apply`, of the executed
action on the recorded state t) / cost_unit; an action the cost model refuses is charged as holding, as the
closed loop charges a rejected action. A decision's `value` is the mean of r over it and the next periods of its
stretch (at most `horizon`, within the budget): the live counterpart of the twin's R_t, as a mean so that rows
near a stretch's end are on one scale with the others. `failed` is `twin.generative.features.failed_periods`,
the paper's B_FAIL definition, so `twin.generative.buffers.PhysicalBuffers` keeps these rows apart as it keeps
the generative twin's.

The behaviour policy μ that chose the recorded actions is not known: `fit_behaviour` estimates it as a control
head fitted by maximum likelihood on the inferred choices (a copy of the starting head, so same features), and
`importance_weights` are min(ρ̄, π / μ̂).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gnn_policy import control
from gnn_policy.base import Problem
from gnn_policy.gn import GNPolicyNet
from gnn_policy.rule_policy import rule_view
from twin import records
from twin.fidelity.episode import Episode, episodes_of
from twin.generative.features import failed_periods
from twin.migration import IndexedAction, InvalidAction, apply
from twin.params import CostParams, Thresholds
from twin.scenario import ScenarioKind

HORIZON = 10
"""Periods a recorded decision's value averages over (it and the next ones of its stretch)."""
TRUNCATION = 2.0
"""ρ̄: importance weights are cut at this (truncated importance sampling)."""


class ExperienceError(ValueError):
    """Recorded experience that cannot be built or drawn from; the message says why."""


@dataclass(frozen=True)
class LiveTransitions:
    """One row per recorded decision; arrays of equal length (a `PhysicalBuffers` transitions type)."""

    row: np.ndarray
    """Index into `LiveExperience.inputs`."""
    hold: np.ndarray
    targets: np.ndarray
    """[n, K] bool: the inferred choice is hold, or act at a target of this set (`consistent_targets`)."""
    value: np.ndarray
    """Mean reward of the decision's period and the next ones (at most HORIZON)."""
    failed: np.ndarray
    log_behaviour: np.ndarray
    """log μ̂(a | s), the estimated behaviour policy's log-probability of the inferred choice (NaN until fitted)."""

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def take(self, rows: np.ndarray) -> LiveTransitions:
        return LiveTransitions(*(getattr(self, name)[rows] for name in self.__dataclass_fields__))


@dataclass(frozen=True)
class LiveExperience:
    """The decisions of the first `periods` recorded training periods, with the inputs the head reads."""

    inputs: tuple[control.ControlInput, ...]
    transitions: LiveTransitions
    periods: int
    stretches: tuple[tuple[str, int, int], ...]
    """(recording, first, last) of every stretch of periods used."""


def training_episodes(directories: Sequence[Path] | None = None) -> list[Episode]:
    """The training recordings' stretches (`twin.records.shipped("train")` unless named), in recording order."""
    episodes = []
    for directory in records.shipped("train") if directories is None else directories:
        episodes += episodes_of(records.load(directory), "train", Path(directory).name)
    return episodes


def budget_episodes(episodes: Sequence[Episode], budget: int) -> list[Episode]:
    """The first `budget` periods of `episodes` in order (the last stretch cut), each labelled `train`: what a
    learner had after recording that many periods. ExperienceError for a budget below 1 or above the data."""
    available = sum(e.n_periods for e in episodes)
    if not isinstance(budget, int) or budget < 1:
        raise ExperienceError(f"the budget of recorded periods must be a positive integer, got {budget!r}")
    if budget > available:
        raise ExperienceError(f"a budget of {budget} recorded periods exceeds the {available} the training "
                              "recordings hold")
    kept, left = [], budget
    for episode in episodes:
        if left == 0:
            break
        take = min(left, episode.n_periods)
        kept.append(Episode(episode.recording, episode.first, episode.first + take, "train", episode.name))
        left -= take
    return kept


def consistent_targets(problem: Problem, carrying: int, targets: Sequence[float]) -> np.ndarray:
    """[K] bool: the targets whose request leaves `carrying` instances with load (the closest count when none
    does), see the module's docstring."""
    counts = []
    for target in targets:
        view = rule_view(problem, target)
        counts.append(view.graph.instance_index.numel() - len(view.drained))
    gap = np.abs(np.array(counts) - carrying)
    return gap == gap.min()


def choice_log_prob(logits: torch.Tensor, hold: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    """[G] exact log π of each inferred choice: log p(hold), or log p(act) + log Σ_{k in set} p(k)."""
    act_hold = torch.log_softmax(logits[:, :2], dim=1)
    target = torch.log_softmax(logits[:, 2:], dim=1)
    in_set = torch.logsumexp(target.masked_fill(~torch.as_tensor(targets), -torch.inf), dim=1)
    return torch.where(torch.as_tensor(hold), act_hold[:, control.HOLD], act_hold[:, control.ACT] + in_set)


def executed(episode: Episode, t: int) -> IndexedAction:
    """The executed action of period t in index form: the done moves and the instances started and stopped."""
    action = episode.action(t)
    state = episode.state(t)
    index = state.flow_index
    known = [k for k, flow in enumerate(action.flows) if flow in index]
    return IndexedAction(np.array([index[action.flows[k]] for k in known], dtype=np.int64),
                         action.dst[known].astype(np.int64), np.flatnonzero(action.started),
                         np.flatnonzero(action.stopped))


def period_outcome(episode: Episode, t: int, thresholds: Thresholds, params: CostParams) -> tuple[float, int, bool]:
    """(cost of period t, instances carrying load after its action, whether it acted): the cost model on the
    recorded state and executed action, a refused action charged and left as holding."""
    state, action = episode.state(t), executed(episode, t)
    acted = bool(action.flows.size or action.start.size or action.stop.size)
    try:
        after, breakdown = apply(state, action, params, thresholds)
    except InvalidAction:
        after, breakdown = apply(state, IndexedAction(), params, thresholds)
        acted = False
    return breakdown.total, int(after.active.sum()), acted


def live_experience(episodes: Sequence[Episode], targets: Sequence[float], *, cost_unit: float = 1000.0,
                    horizon: int = HORIZON, thresholds: Thresholds = Thresholds(),
                    params: CostParams = CostParams()) -> LiveExperience:
    """Every decision of `episodes` (use `budget_episodes`) with its inferred choice, value and failed flag.
    A stretch's last period has no next state, so it is no transition (its reward still counts in values)."""
    inputs, rows = [], []
    for episode in episodes:
        outcomes = [period_outcome(episode, t, thresholds, params) for t in range(episode.n_periods)]
        rewards = -np.array([o[0] for o in outcomes]) / cost_unit
        failed = failed_periods(episode) if episode.n_periods > 1 else np.zeros(0, bool)
        for t in range(episode.n_periods - 1):
            problem = Problem.of(episode.state(t), thresholds, params)
            if problem.scenario.kind is ScenarioKind.NONE:
                continue
            hold = not outcomes[t][2]
            chosen = np.zeros(len(targets), bool) if hold else consistent_targets(problem, outcomes[t][1], targets)
            rows.append((len(inputs), hold, chosen, float(rewards[t:t + horizon].mean()), failed[t]))
            inputs.append(control.control_input(problem))
    columns = list(zip(*rows)) if rows else [()] * 5
    chosen = np.stack(columns[2]) if rows else np.zeros((0, len(targets)), bool)
    transitions = LiveTransitions(np.array(columns[0], dtype=np.int64), np.array(columns[1], dtype=bool),
                                  chosen, np.array(columns[3], dtype=float),
                                  np.array(columns[4], dtype=bool), np.full(len(rows), np.nan))
    return LiveExperience(tuple(inputs), transitions, sum(e.n_periods for e in episodes),
                          tuple((e.name, e.first, e.last) for e in episodes))


def importance_weights(log_target: torch.Tensor, log_behaviour: torch.Tensor,
                       truncation: float = TRUNCATION) -> torch.Tensor:
    """min(ρ̄, π(a|s) / μ(a|s)), no gradient: exactly 1 where the data is on-policy (log_target = log_behaviour)."""
    if not truncation > 0:
        raise ValueError(f"the truncation ρ̄ must be positive, got {truncation}")
    if torch.isnan(log_behaviour).any():
        raise ExperienceError("a behaviour log-probability is missing (NaN): fit the behaviour policy first")
    return torch.exp(log_target.detach() - log_behaviour).clamp(max=truncation)


def fit_behaviour(net: GNPolicyNet, experience: LiveExperience, *, steps: int = 100, lr: float = 5e-3,
                  smoothing: float = 0.1) -> LiveExperience:
    """`experience` with log μ̂ filled in: a copy of `net`'s control head fitted by maximum likelihood (full-batch
    Adam) to the inferred choices, mixed with the uniform policy by `smoothing` so that no recorded action gets
    a vanishing μ̂ (the weights are truncated anyway)."""
    transitions = experience.transitions
    if not len(transitions):
        raise ExperienceError("no recorded decision to fit the behaviour policy on (the budget's periods hold "
                              "no scenario)")
    behaviour = copy.deepcopy(net)
    inputs = [experience.inputs[r] for r in transitions.row]
    hold, chosen = transitions.hold, transitions.targets
    optimizer = torch.optim.Adam([p for p in behaviour.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = -choice_log_prob(control.control_logits(behaviour, inputs), hold, chosen).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        fitted = choice_log_prob(control.control_logits(behaviour, inputs), hold, chosen).exp()
    uniform = torch.as_tensor(np.where(hold, 0.5, 0.5 * chosen.sum(axis=1) / chosen.shape[1]), dtype=torch.float32)
    log_mu = torch.log((1 - smoothing) * fitted + smoothing * uniform).numpy().astype(float)
    return LiveExperience(experience.inputs, LiveTransitions(
        transitions.row, transitions.hold, transitions.targets, transitions.value, transitions.failed, log_mu),
        experience.periods, experience.stretches)
