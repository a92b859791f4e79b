"""The closed loop's decisions as part of the policy's action (issue 19, section 1): act now or hold, and the
target utilisation of the request, drawn from the network's control head with an exact log-probability.

The action is a = hold, or a = (act, target k) with k an index into `NetConfig.targets`; its log-probability
is exact: log p(hold), or log p(act) + log p(k), two softmaxes of the control head (`log_prob`). The request of
(act, k) is `deepmigration-rule`'s request at target k (`gnn_policy.rule_policy.rule_request`): the scenario's
graph with ⌈load / target⌉ instances, every instance of it at the same utilisation, realised by the translator
(`gnn_policy.actions.realise`). So how many instances to start or drain is **derived from the target**, not
drawn: that request evens out the utilisation, so a target acts only through the count, and a second head for
the count would say the same thing twice (and a count that contradicts the target would only move the
evened-out utilisation away from it). Which instances start or drain is the views' rule (`Plan.standby_order`,
`drain_order`).

The constant rule is the special case "always act, target `RULE_TARGET`"; the untrained head leans towards it
(`NetConfig.control_bias`), and Algorithm 1 in the closed loop (`gnn_policy.loop_training`) learns when to
hold and how much headroom to leave from the state. In the paper's one-shot experiments the scenario is forced
(`Problem.forced`): `LoopMigration` then decides exactly as `DeepMigration` (no hold, the paper's threshold).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch_geometric.data import Data

from gnn_policy import checkpoint
from gnn_policy.actions import realise
from gnn_policy.agent import DeepMigration
from gnn_policy.base import ControlDraw, Decision, Problem
from gnn_policy.gn import GNPolicyNet
from gnn_policy.graph import to_pyg
from gnn_policy.rule_policy import rule_request
from gnn_policy.views import collate, context
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind

TARGETS = (0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)
"""The control head's target utilisations: the grid `benchmarks/tune_rule.py` sweeps for the rule, up to Th_high;
the first is the rule's tuned `RULE_TARGET`, which the untrained head prefers. (Below 0.05 the rule's count is
every instance on these set-ups: 0.01 and 0.025 gave the same episodes as 0.05.)"""
ACT, HOLD = 0, 1
"""Positions of the act / hold logits; the target logits follow them."""


@dataclass(frozen=True)
class ControlChoice:
    """One closed-loop action in the control head's terms."""

    hold: bool
    target: int = 0
    """Index into `NetConfig.targets` (meaningless when holding)."""


@dataclass(frozen=True)
class ControlInput:
    """What the network reads for one control decision: the current graph and the two context vectors."""

    graph: Data
    context: torch.Tensor
    """[1, 2] Th_high, Th_low."""
    control: torch.Tensor
    """[1, len(CONTROL_FEATURES)] `control_features`."""


def control_input(problem: Problem) -> ControlInput:
    return ControlInput(to_pyg(problem.state), context([problem.thresholds]), control_features(problem))


def control_features(problem: Problem) -> torch.Tensor:
    """[1, len(gn.CONTROL_FEATURES)]: the scenario (one-hot), the share of instances active (the graph holds
    only the active ones, so without it the head cannot tell whether a standby is left) and log(1 + Q(t))."""
    kind, state = problem.scenario.kind, problem.state
    return torch.tensor([[float(kind is ScenarioKind.SCALE_OUT), float(kind is ScenarioKind.SCALE_IN),
                          float(kind is ScenarioKind.LOAD_BALANCE), float(state.active.mean()),
                          math.log1p(max(problem.budget_queue, 0.0))]], dtype=torch.float32)


def control_logits(net: GNPolicyNet, inputs: Sequence[ControlInput]) -> torch.Tensor:
    """[G, 2 + targets] the control head's logits for each input (one batched forward pass)."""
    logits = net(collate([i.graph for i in inputs]), torch.cat([i.context for i in inputs]),
                 torch.cat([i.control for i in inputs])).control
    if logits is None:
        raise ValueError("the network has no control head (its config has no targets)")
    return logits


def log_prob(logits: torch.Tensor, choices: Sequence[ControlChoice]) -> torch.Tensor:
    """[G] the exact log π(a | s) of each choice: log p(hold), or log p(act) + log p(target)."""
    act_hold = torch.log_softmax(logits[:, :2], dim=1)
    target = torch.log_softmax(logits[:, 2:], dim=1)
    hold = torch.tensor([c.hold for c in choices])
    index = torch.tensor([c.target for c in choices])
    acting = act_hold[:, ACT] + target.gather(1, index[:, None]).squeeze(1)
    return torch.where(hold, act_hold[:, HOLD], acting)


def every_choice(targets: int) -> list[ControlChoice]:
    """Every action of a head over `targets` target utilisations: hold, then act at each target."""
    return [ControlChoice(True)] + [ControlChoice(False, k) for k in range(targets)]


def all_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """[G, 1 + targets] log π of every action in `every_choice`'s order (each row's exponentials sum to 1)."""
    act_hold = torch.log_softmax(logits[:, :2], dim=1)
    target = torch.log_softmax(logits[:, 2:], dim=1)
    return torch.cat([act_hold[:, HOLD:HOLD + 1], act_hold[:, ACT:ACT + 1] + target], dim=1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """[G] the entropy of the whole action distribution: H(act/hold) + p(act)·H(target)."""
    act_hold = torch.log_softmax(logits[:, :2], dim=1)
    target = torch.log_softmax(logits[:, 2:], dim=1)
    h_act = -(act_hold.exp() * act_hold).sum(1)
    h_target = -(target.exp() * target).sum(1)
    return h_act + act_hold[:, ACT].exp() * h_target


def draw(logits: torch.Tensor, *, greedy: bool, generator: torch.Generator | None = None) -> ControlChoice:
    """A choice from one row of logits [2 + targets]: sampled, or the most likely act/hold and target (a hold
    carries target 0, as in `every_choice`)."""
    act_hold, target = logits[:2], logits[2:]
    if greedy:
        hold, index = bool(act_hold.argmax() == HOLD), int(target.argmax())
    else:
        hold = bool(torch.multinomial(torch.softmax(act_hold, 0), 1, generator=generator) == HOLD)
        index = int(torch.multinomial(torch.softmax(target, 0), 1, generator=generator))
    return ControlChoice(True) if hold else ControlChoice(False, index)


def decision(problem: Problem, choice: ControlChoice, targets: Sequence[float]) -> Decision:
    """The choice as a decision: nothing when holding, else the rule's request at the chosen target, realised."""
    if choice.hold:
        return Decision(IndexedAction(), reason="deepmigration: hold")
    target = targets[choice.target]
    return Decision(realise(problem, rule_request(problem, target)), reason=f"deepmigration: act, target {target:g}")


class LoopMigration(DeepMigration):
    """DeepMigration with a control head (`NetConfig.targets`): in the closed loop its greedy act/hold and target
    decide (`sample`: drawn from π instead, seeded, for on-policy learning on the testbed); on a forced scenario,
    or without a control head, it is `DeepMigration` unchanged. No guard on the control path: the guard's
    one-period comparison would undo exactly the decisions that look past the period. Each control decision
    carries its draw and log-probability (`Decision.control`), which the controller records."""

    def __init__(self, net: GNPolicyNet, *, seed: int = 0, guard: bool = True, sample: bool = False):
        super().__init__(net, seed=seed, guard=guard)
        self.sample = sample
        self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def load(cls, path: str | None = None, *, seed: int = 0, guard: bool = True,
             sample: bool = False) -> LoopMigration:
        net, _ = checkpoint.load(path)
        return cls(net, seed=seed, guard=guard, sample=sample)

    def _decide(self, problem: Problem) -> Decision:
        if problem.forced or self.net.control_head is None:
            return super()._decide(problem)
        self.decisions += 1
        with torch.inference_mode():
            logits = control_logits(self.net, [control_input(problem)])
            choice = draw(logits[0], greedy=not self.sample, generator=self._generator)
            log_p = float(log_prob(logits, [choice])[0])
        targets = self.net.config.targets
        made = decision(problem, choice, targets)
        return replace(made, control=ControlDraw(choice.hold, None if choice.hold else targets[choice.target], log_p))
