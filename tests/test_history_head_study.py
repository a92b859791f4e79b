"""benchmarks/history_head_study.py's closed-loop policy: the head deviates from the hold rule only on the chosen
scenarios, and never at two decisions in a row (its one-step advantages hold for one deviation at a time)."""
import torch

from benchmarks.history_head_study import HeadPolicy
from gnn_policy import control
from gnn_policy.bench import loop
from gnn_policy.closed_loop import run_closed_loop
from gnn_policy.load_history import HISTORY_FEATURES
from gnn_policy.rule_policy import HoldingRule
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.choice import batched_twin
from twin.params import Thresholds
from twin.scenario import ScenarioKind


class AlwaysHold(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.size(0), 2 + len(control.TARGETS))
        logits[:, control.HOLD] = 1.0
        return logits


class Logged(HeadPolicy):
    def _decide(self, problem):
        decision = super()._decide(problem)
        self.log.append((problem.scenario.kind, self.deviated, decision.reason))
        return decision


def test_the_head_deviates_on_its_scenarios_only_and_never_twice_in_a_row():
    trace = sample_path()
    setup = loop.LoopSetup(episodes=1, periods=30, instances=4, standby=2, seed=1)
    width = 5 + len(HISTORY_FEATURES)
    policy = Logged(HoldingRule(0.3), AlwaysHold(), (torch.zeros(width), torch.ones(width)),
                    {ScenarioKind.SCALE_OUT}, every=False)
    policy.log = []
    run_closed_loop(batched_twin("fluid", loop.build(trace, read_flows(trace), setup), setup.params, Thresholds()),
                    [policy])
    assert any(deviated for _, deviated, _ in policy.log)
    assert all(not (a and b) for (_, a, _), (_, b, _) in zip(policy.log, policy.log[1:]))
    for kind, deviated, reason in policy.log:
        assert not deviated or (kind is ScenarioKind.SCALE_OUT and reason == "deepmigration: hold")
        assert kind is ScenarioKind.SCALE_OUT or reason.startswith("deepmigration-rule")
