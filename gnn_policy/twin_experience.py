"""Experience from the twin (issue 19, section 3; `000_2c676631a2e0d96a.txt`): the control head (`gnn_policy.control`)
trained on recorded live transitions mixed with the twin's experience, where the twin is fitted on those same
recorded periods only.

One update (`train_agent`), per iteration:

- **live part**: a batch of J recorded decisions (`gnn_policy.live_experience`: the action inferred as hold or a
  set of targets, its exact log-probability `choice_log_prob`) drawn from the successful and
  failed physical buffers (`twin.generative.buffers.PhysicalBuffers`, κ·J successful, κ = 0.3). The recorded
  actions came from other policies, so the gradient is **importance-weighted REINFORCE on the control head's
  exact log-probability**: −mean(ρ · Â · log π(a|s)), ρ = min(ρ̄, π(a|s) / μ̂(a|s)) with no gradient through ρ,
  μ̂ the estimated behaviour policy (`live_experience.fit_behaviour`), ρ̄ = 2, Â the decision's value
  standardised over the batch (its mean is the baseline). Per-decision weights, one step: the later recorded
  periods inside a value are not re-weighted (truncated per-decision importance sampling: biased, bounded
  variance);
- **twin part** (the with-twin arm only): Algorithm 1's episodes as `gnn_policy.loop_training` runs them (its
  `replicate`, `Explorer`, `returns`, `advantages`, episode length growing by ε, lr 5e-3 → 1e-3) in the
  **calibrated twin fitted on the budget's recorded periods** (`twin.calibration.fit`, `twin.choice.calibrate`),
  on training windows of the sample (seeds 0-99). These are on-policy: their weights go through the same
  `importance_weights` and are exactly 1. Â is the per-step baseline's advantage, standardised over the
  iteration's decisions, so both parts have one scale;
- loss = twin part + `live_weight` · live part; Adam, gradient norm clipped, only the control head learns.

With the twin, the head kept is the one that scores best, greedily, in the agent's own twin on training windows no
iteration draws (`ExperienceConfig.select_every`): choosing a checkpoint is part of what a twin gives. Without
it the last head is kept.

The generative twin's synthetic buffer B_DT (`twin.generative.buffers.TwinBuffer`) holds per-instance feature
vectors without flows, and the residual twin has no per-flow state either (`twin.choice.RESIDUAL_REFUSED`): neither
can realise the control head's action (the rule's request, translated into flow moves), so the twin whose
experience the head learns from is the calibrated one, the twin that drives closed-loop episodes.
"""
from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from gnn_policy import control
from gnn_policy.bench import loop
from gnn_policy.closed_loop import run_closed_loop
from gnn_policy.gn import GNPolicyNet
from gnn_policy.live_experience import LiveExperience, choice_log_prob, importance_weights
from gnn_policy.loop_training import (
    TRAIN_SEEDS,
    Explorer,
    advantages,
    episode_length,
    learning_rate,
    replicate,
    returns,
    with_control_head,
)
from trace_replay.episodes import EpisodeBatch
from trace_replay.flows import FlowTable
from twin.calibration import CalibratedParams
from twin.choice import calibrate
from twin.generative.buffers import PhysicalBuffers
from twin.params import Thresholds
from twin.sim import BatchedTwin

KAPPA = 0.3
"""Share of a live batch drawn from the successful buffer (Table I of `000`)."""
SELECT_SEED = TRAIN_SEEDS[-1]
"""The training windows the with-twin agent chooses its head on, in its own twin; iterations use the others."""


@dataclass(frozen=True)
class ExperienceConfig:
    """Every hyper-parameter of one training run (the field names of `LoopTrainConfig` where they mean the same,
    so that its schedule functions serve)."""

    iterations: int = 30
    windows: int = 2
    episodes: int = 8
    periods_start: int = 10
    periods_max: int = 30
    epsilon: float = 0.5
    lr_start: float = 3e-2
    lr_end: float = 5e-3
    """Higher than dm-train's 5e-3 → 1e-3: advantages here are standardised, and at 5e-3 the greedy head had not
    left the prior after 20 iterations (docs/agent.md, "Experience from the twin")."""
    grad_clip: float = 1.0
    cost_unit: float = 1000.0
    instances: int = 4
    standby: int = 2
    speed: float = 1.0
    max_flows: int = 4000
    kappa: float = KAPPA
    batch: int = 32
    """J: recorded decisions per live batch."""
    live_weight: float = 1.0
    truncation: float = 2.0
    behaviour_steps: int = 100
    seed: int = 0
    select_every: int = 5
    """With the twin: every this many iterations the greedy head is scored in the agent's own twin on
    `select_windows` × `select_periods` of training seed `SELECT_SEED` (no iteration trains on it) and the best
    head so far is kept (0: keep the last). Without the twin there is nothing to score it in: the last is kept."""
    select_windows: int = 8
    select_periods: int = 30
    """As many windows as the evaluation: with 4 × 20 periods the choice kept the untrained head at every budget of
    a first run (4 short windows of one seed say little about when holding pays)."""


def fresh_head(net: GNPolicyNet, seed: int) -> GNPolicyNet:
    """`net`'s body with a new, untrained control head over `control.TARGETS` (the prior: the rule), frozen body."""
    headless = GNPolicyNet(replace(net.config, targets=()))
    headless.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("control_head.")})
    return with_control_head(headless, control.TARGETS, seed)


def calibrated_twin(batch: EpisodeBatch, fitted: CalibratedParams) -> BatchedTwin:
    """The closed loop's twin over `batch` with `fitted`'s physics (as `twin.choice.batched_twin` builds the
    shipped calibrated one)."""
    twin = BatchedTwin.from_episodes(batch, loop.LoopSetup().params, Thresholds())
    calibrate(twin, fitted)
    return twin


def standardised(values: torch.Tensor) -> torch.Tensor:
    """(values − mean) / std over the batch (a single value or no spread: zeros)."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    return (values - values.mean()) / values.std().clamp(min=1e-8)


def live_loss(net: GNPolicyNet, experience: LiveExperience, buffers: PhysicalBuffers, config: ExperienceConfig,
              rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """Importance-weighted REINFORCE on a κ-mixed batch of recorded decisions."""
    batch = buffers.sample(config.batch, config.kappa, rng)
    logits = control.control_logits(net, [experience.inputs[r] for r in batch.row])
    log_p = choice_log_prob(logits, batch.hold, batch.targets)
    weights = importance_weights(log_p, torch.as_tensor(batch.log_behaviour, dtype=torch.float32), config.truncation)
    advantage = standardised(torch.as_tensor(batch.value, dtype=torch.float32))
    return -(weights * advantage * log_p).mean(), {
        "live/weight_mean": float(weights.mean()), "live/weight_truncated": float((weights >= config.truncation).float().mean()),
        "live/failed_share": float(batch.failed.mean())}


def twin_loss(net: GNPolicyNet, fitted: CalibratedParams, trace: Path, table: FlowTable, config: ExperienceConfig,
              iteration: int, generator: torch.Generator) -> tuple[torch.Tensor | None, dict]:
    """REINFORCE with the per-step baseline on one iteration's episodes in the budget's calibrated twin."""
    setup = loop.LoopSetup(episodes=config.windows, periods=episode_length(config, iteration),
                           instances=config.instances, standby=config.standby, speed=config.speed,
                           max_flows=config.max_flows, seed=TRAIN_SEEDS[iteration % (len(TRAIN_SEEDS) - 1)])
    batch = replicate(loop.build(trace, table, setup), config.episodes)
    clock = [0]
    explorers = [Explorer(net, generator, clock) for _ in range(batch.n_episodes)]
    runs = run_closed_loop(calibrated_twin(batch, fitted), explorers,
                           on_period=lambda: clock.__setitem__(0, clock[0] + 1))
    costs = np.array([[p.cost for p in run] for run in runs])
    advantage = advantages(returns(costs, config.cost_unit), config.episodes)
    draws = [(b, d) for b, explorer in enumerate(explorers) for d in explorer.draws]
    metrics = {"twin/reward_per_period": float(-costs.mean() / config.cost_unit), "twin/decisions": len(draws)}
    if not draws:
        return None, metrics
    log_p = control.log_prob(control.control_logits(net, [d.inputs for _, d in draws]), [d.choice for _, d in draws])
    weights = importance_weights(log_p, log_p.detach(), config.truncation)
    weight = standardised(torch.tensor([advantage[b, d.period] for b, d in draws], dtype=torch.float32))
    metrics["twin/hold_share"] = float(np.mean([d.choice.hold for _, d in draws]))
    return -(weights * weight * log_p).mean(), metrics


def train_agent(net: GNPolicyNet, experience: LiveExperience | None, fitted: CalibratedParams | None, trace: Path,
                table: FlowTable, config: ExperienceConfig) -> list[dict]:
    """Train `net`'s control head in place for `config.iterations` updates: on `experience` (recorded decisions
    with μ̂ fitted; None or empty: no live part) and, when `fitted` is given, on episodes of that twin. The
    per-iteration metrics. ValueError when there is nothing to learn from."""
    has_live = experience is not None and len(experience.transitions) > 0
    if not has_live and fitted is None:
        raise ValueError("nothing to train on: no recorded decision and no twin")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    buffers = PhysicalBuffers(experience.transitions) if has_live else None
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=config.lr_start)
    history = []
    chooser = _Chooser(net, fitted, trace, table, config) if fitted is not None and config.select_every else None
    for iteration in range(config.iterations):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, iteration)
        parts, metrics = [], {"iteration": iteration}
        if fitted is not None:
            loss, more = twin_loss(net, fitted, trace, table, config, iteration, generator)
            metrics.update(more)
            if loss is not None:
                parts.append(loss)
        if has_live:
            loss, more = live_loss(net, experience, buffers, config, rng)
            metrics.update(more)
            parts.append(config.live_weight * loss)
        if parts:
            total = torch.stack(parts).sum()
            optimizer.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], config.grad_clip)
            optimizer.step()
            metrics["loss"] = float(total.detach())
        if chooser is not None and ((iteration + 1) % config.select_every == 0 or iteration + 1 == config.iterations):
            metrics["twin/selection_total_cost"] = chooser.score(net, iteration + 1)
        history.append(metrics)
    if chooser is not None:
        chooser.restore(net)
        history[-1]["chosen_iteration"] = chooser.best[1]
    return history


class _Chooser:
    """Keeps the control head that scores best in the agent's own twin (`ExperienceConfig.select_every`)."""

    def __init__(self, net: GNPolicyNet, fitted: CalibratedParams, trace: Path, table: FlowTable,
                 config: ExperienceConfig):
        self.fitted = fitted
        self.batch = loop.build(trace, table, loop.LoopSetup(
            episodes=config.select_windows, periods=config.select_periods, instances=config.instances,
            standby=config.standby, speed=config.speed, max_flows=config.max_flows, seed=SELECT_SEED))
        self.best = (math.inf, 0, self._head(net))
        self.score(net, 0)

    @staticmethod
    def _head(net: GNPolicyNet) -> dict:
        return {k: v.clone() for k, v in net.state_dict().items() if k.startswith("control_head.")}

    def score(self, net: GNPolicyNet, iteration: int) -> float:
        total = evaluate(net, self.batch, self.fitted)["total_cost"]
        if total < self.best[0]:
            self.best = (total, iteration, self._head(net))
        return total

    def restore(self, net: GNPolicyNet) -> None:
        net.load_state_dict({**net.state_dict(), **self.best[2]})


def evaluate(net: GNPolicyNet, batch: EpisodeBatch, fitted: CalibratedParams) -> dict:
    """The greedy policy (`control.LoopMigration`, no stabilizer) on `batch`'s windows in the calibrated twin of
    `fitted`: mean total_cost over the episodes, the reward (its negative) and the migrations per episode."""
    policies = [control.LoopMigration(copy.deepcopy(net).eval()) for _ in range(batch.n_episodes)]
    runs = run_closed_loop(calibrated_twin(batch, fitted), policies)
    totals = [sum(p.cost for p in run) for run in runs]
    return {"total_cost": statistics.fmean(totals), "reward": -statistics.fmean(totals),
            "migrations": statistics.fmean(sum(len(p.migrated) for p in run) for run in runs)}


def threshold(prior: float, final: float, share: float = 0.95) -> float:
    """The reward that counts as reaching `share` of the final one: `share` of the way from the prior's reward
    (the untrained head) to the final reward (rewards are −cost, negative, so a plain share of the final reward
    would mean nothing)."""
    return prior + share * (final - prior)


def periods_needed(rewards: dict[int, float], level: float) -> int | None:
    """The smallest budget (recorded periods) whose reward reaches `level`; None when no budget does."""
    reached = [budget for budget, reward in rewards.items() if reward >= level]
    return min(reached) if reached else None
