"""Policy improvement by rollouts in the twin (`dm-train --closed-loop`'s main step; docs/agent.md, "Rollout
advantages"): the advantage of every action at every decision of a base policy, measured exactly, then a step of
the control head towards the actions that pay.

REINFORCE's per-step baseline compares copies of a window whose histories have already parted after their first
decisions, so on these windows (a few decisions in six matter, ± 100,000 between windows) its signal drowns. Here
the copies of a window share their history up to one decision d: copy (d, a) follows the base policy, takes action
a at decision d, then follows the base policy again. The twin is deterministic, so the difference of two copies'
total_cost is exactly what a changes at d (the base policy's own action scores 0): A(s_d, a) = Q(s_d, a) − Q(s_d,
base), a critic measured by rollouts instead of learned (Monte Carlo, no bootstrap, no off-policy data). The head
then minimises the expected regret Σ_a π(a | s)·(max_a' A(s, a') − A(s, a)) / cost_unit over the decisions (the
exact π of `control.all_log_probs`): the all-action policy gradient with these advantages, one step of
approximate policy iteration per round.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch_geometric.data import Data

from gnn_policy import control
from gnn_policy.agent import DeepMigration
from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.closed_loop import run_closed_loop
from gnn_policy.gn import GNPolicyNet
from gnn_policy.rule_policy import HoldingRule
from trace_replay.episodes import EpisodeBatch
from trace_replay.files import atomic_write
from twin.choice import batched_twin
from twin.params import CostParams, Thresholds

BaseChoice = Callable[[Problem], control.ControlChoice]
"""The base policy in the control head's terms: its choice for a problem."""


@dataclass(frozen=True)
class Sample:
    """One decision of the base policy and what each action there would have saved."""

    inputs: control.ControlInput
    gains: np.ndarray
    """[1 + targets], `control.every_choice`'s order: the base policy's total_cost less that of taking the action
    at this decision and following the base policy otherwise (0 for the base policy's own action)."""


def rule_choice(rule: HoldingRule, targets: Sequence[float]) -> BaseChoice:
    """The hold rule as a base policy (its target must be on the grid)."""
    index = list(targets).index(rule.target)
    return lambda problem: control.ControlChoice(rule.holds(problem), index)


def head_choice(net: GNPolicyNet) -> BaseChoice:
    """The control head's greedy choice as a base policy."""
    def choice(problem: Problem) -> control.ControlChoice:
        with torch.inference_mode():
            logits = control.control_logits(net, [control.control_input(problem)])[0]
        return control.draw(logits, greedy=True)
    return choice


def fingerprint(problem: Problem) -> bytes:
    """Equal for equal observed states: the copies of a window share theirs until they part."""
    state = problem.state
    digest = hashlib.blake2b(digest_size=16)
    for array in (state.rate, state.assignment, state.active, state.queue, state.capacity):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(repr(state.flow_ids).encode())
    return digest.digest()


class Brancher(Policy):
    """Follows `base`, except at its decision number `at` (counted from 0), where it takes `choice` and records
    the head's input; `at` −1 only follows (and counts the decisions)."""

    name: ClassVar[str] = "deepmigration-brancher"
    handles = DeepMigration.handles

    def __init__(self, base: BaseChoice, targets: Sequence[float], at: int = -1,
                 choice: control.ControlChoice | None = None, memo: dict | None = None):
        self.base, self.targets, self.at, self.choice = base, tuple(targets), at, choice
        self.memo = {} if memo is None else memo
        """Decisions by (observed state, choice), shared by the copies of a window: realising a request is most
        of a decision's time, and until they part the copies ask for the same ones."""
        self.calls = 0
        self.seen: control.ControlInput | None = None

    def _decide(self, problem: Problem) -> Decision:
        if self.calls == self.at:
            self.seen, choice = control.control_input(problem), self.choice
        else:
            choice = self.base(problem)
        self.calls += 1
        if choice.hold:
            return control.decision(problem, choice, self.targets)
        key = (fingerprint(problem), choice.target)
        if key not in self.memo:
            self.memo[key] = control.decision(problem, choice, self.targets)
        return self.memo[key]


def replicate(batch: EpisodeBatch, copies: int, episodes: slice = slice(None)) -> EpisodeBatch:
    """Each episode of `batch` (of `episodes` only) `copies` times in a row (episode g's copies are g·copies ...)."""
    return replace(batch, **{f.name: np.repeat(getattr(batch, f.name)[episodes], copies, axis=0)
                             for f in fields(batch) if isinstance(getattr(batch, f.name), np.ndarray)})


def window(batch: EpisodeBatch, episode: int, copies: int = 1) -> EpisodeBatch:
    """Episode `episode` of `batch`, `copies` times."""
    return replicate(batch, copies, slice(episode, episode + 1))


def total_costs(batch: EpisodeBatch, policies: Sequence[Brancher], twin: str, params: CostParams,
                thresholds: Thresholds) -> np.ndarray:
    runs = run_closed_loop(batched_twin(twin, batch, params, thresholds), policies)
    return np.array([sum(p.cost for p in run) for run in runs])


def collect(batch: EpisodeBatch, base: BaseChoice, targets: Sequence[float], *, twin: str,
            params: CostParams = CostParams(), thresholds: Thresholds = Thresholds(),
            episodes: Sequence[int] | None = None, on_window: Callable[[], None] = lambda: None) -> list[Sample]:
    """The samples of every decision of `base` in `episodes` of `batch` (all by default): each window once as
    the base policy runs it, then as many copies as (decisions × actions), in one batched run per window."""
    episodes = range(batch.n_episodes) if episodes is None else episodes
    actions = control.every_choice(len(targets))
    samples = []
    for b in episodes:
        followers = [Brancher(base, targets)]
        (base_cost,) = total_costs(window(batch, b), followers, twin, params, thresholds)
        decisions = followers[0].calls
        if decisions:
            memo: dict = {}
            branches = [Brancher(base, targets, d, a, memo) for d in range(decisions) for a in actions]
            costs = total_costs(window(batch, b, len(branches)), branches, twin, params, thresholds)
            gains = (base_cost - costs).reshape(decisions, len(actions))
            samples += [Sample(branches[d * len(actions)].seen, gains[d]) for d in range(decisions)]
        on_window()
    return samples


def margined(gains: np.ndarray, margin: float) -> np.ndarray:
    """The gains less `margin` for every action that changes the episode (a gain other than 0): the head then
    leaves the base policy only where the measured gain exceeds the margin, which its errors on unseen states
    must pay for."""
    return np.where(gains != 0.0, gains - margin, 0.0)


def expected_regret(net: GNPolicyNet, samples: Sequence[Sample], cost_unit: float,
                    margin: float = 0.0) -> torch.Tensor:
    """Mean over the samples of Σ_a π(a | s)·regret(s, a) / cost_unit, regret the best `margined` gain less the
    action's (differentiable in the control head)."""
    gains = torch.tensor(np.stack([margined(s.gains, margin) for s in samples]), dtype=torch.float32)
    regret = (gains.max(dim=1, keepdim=True).values - gains) / cost_unit
    probs = control.all_log_probs(control.control_logits(net, [s.inputs for s in samples])).exp()
    return (probs * regret).sum(dim=1).mean()


def greedy_regret(net: GNPolicyNet, samples: Sequence[Sample]) -> float:
    """Total regret (cost units) of the greedy head's actions on the samples: 0 when it picks a best action
    everywhere; the base policy's is the sum of the best gains."""
    with torch.no_grad():
        logits = control.control_logits(net, [s.inputs for s in samples])
    actions = control.every_choice(logits.size(1) - 2)
    picked = [actions.index(control.draw(row, greedy=True)) for row in logits]
    return float(sum(s.gains.max() - s.gains[a] for s, a in zip(samples, picked)))


def improve(net: GNPolicyNet, samples: Sequence[Sample], steps: int, lr: float, cost_unit: float,
            optimizer: torch.optim.Optimizer | None = None, margin: float = 0.0) -> torch.optim.Optimizer:
    """`steps` full-batch Adam steps on `expected_regret`; the optimizer, to go on with."""
    optimizer = optimizer or torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = expected_regret(net, samples, cost_unit, margin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


CACHE_FORMAT = "deepmigration-rollouts"
CACHE_VERSION = 1


def cache_file(folder: Path, key: dict) -> Path:
    """The file of `key` (what fixes the samples: the windows, the twin, the base policy) in `folder`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return folder / f"rollouts-{digest}.pt"


def base_key(net: GNPolicyNet | None, rule_target: float | None) -> str:
    """Names the base policy: the rule's target, or a digest of the head's weights."""
    if net is None:
        return f"rule-hold {rule_target!r}"
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return f"head {digest.hexdigest()}"


def save_samples(path: Path, key: dict, samples: Sequence[Sample]) -> None:
    """The samples as plain tensors (loadable with weights_only), whole or not at all."""
    stored = [{"graph": dict(s.inputs.graph.to_dict()), "context": s.inputs.context, "control": s.inputs.control,
               "gains": torch.as_tensor(s.gains)} for s in samples]
    with atomic_write(path, make_parents=True) as handle:
        torch.save({"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": json.dumps(key, sort_keys=True),
                    "samples": stored}, handle)


def load_samples(path: Path, key: dict) -> list[Sample] | None:
    """The samples cached at `path` for `key`; None when there are none (a file of another key, format or
    version is ignored, to be replaced)."""
    if not path.is_file():
        return None
    stored = torch.load(path, weights_only=True)
    if not (isinstance(stored, dict) and stored.get("format") == CACHE_FORMAT
            and stored.get("version") == CACHE_VERSION and stored.get("key") == json.dumps(key, sort_keys=True)):
        return None
    return [Sample(control.ControlInput(Data(**s["graph"]), s["context"], s["control"]), s["gains"].numpy())
            for s in stored["samples"]]
