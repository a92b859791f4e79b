"""Issue 19, sections 1-2: the control head's actions (act or hold, the target utilisation) with an exact
log-probability, the one-shot experiments unchanged, and Algorithm 1 in the closed loop (`dm-train --closed-loop`)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from gnn_policy import checkpoint, control, loop_training, train
from gnn_policy.agent import DeepMigration
from gnn_policy.base import Problem
from gnn_policy.checkpoint import CheckpointError
from gnn_policy.gn import GNPolicyNet, NetConfig
from gnn_policy.rule_policy import HOLD_TARGET, RULE_TARGET, RuleMigration
from tests.helpers import cluster
from tests.strategies import cluster_states
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.params import Thresholds
from twin.scenario import ScenarioKind

TH = Thresholds(high=0.6, low=0.1)
SMALL = ("--imitation-windows", "1", "--imitation-steps", "2", "--rollout-windows", "1", "--rollout-steps", "1",
         "--rollout-check-every", "1")
"""A dm-train --closed-loop run small enough for a test: one window to imitate on and one of rollouts."""


def headed(seed: int = 0) -> GNPolicyNet:
    torch.manual_seed(seed)
    return GNPolicyNet(NetConfig(targets=control.TARGETS))


def same_action(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in ((a.flows, b.flows), (a.dst, b.dst), (a.start, b.start),
                                                 (a.stop, b.stop)))


@given(state=cluster_states(max_instances=6, max_flows=30))
@settings(max_examples=25, deadline=None)
def test_the_control_log_probabilities_are_exact(state):
    problem = Problem.of(state, TH)
    if problem.scenario.kind is ScenarioKind.NONE:  # the policy is asked only when the detector calls
        return
    net = headed()
    with torch.no_grad():
        net.control_head[-1].weight.normal_()  # a head that depends on the state
        logits = control.control_logits(net, [control.control_input(problem)])
    choices = control.every_choice(len(control.TARGETS))
    log_p = control.log_prob(logits.expand(len(choices), -1), choices)
    assert torch.isclose(log_p.exp().sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(control.all_log_probs(logits)[0], log_p, atol=1e-6)
    generator = torch.Generator().manual_seed(1)
    drawn = control.draw(logits[0], greedy=False, generator=generator)
    assert drawn in choices or drawn.hold


def test_an_untrained_head_acts_like_the_rule_and_hold_does_nothing():
    state = cluster([[300.0, 200.0, 150.0], [100.0]], standby=3)
    problem = Problem.of(state, TH)
    assert problem.scenario.kind is ScenarioKind.SCALE_OUT
    policy = control.LoopMigration(headed())
    rule = RuleMigration(RULE_TARGET).decide(problem)
    assert control.TARGETS[0] == RULE_TARGET
    assert same_action(policy.decide(problem).action, rule.action)
    held = control.decision(problem, control.ControlChoice(True), control.TARGETS)
    assert held.feasible and held.action.flows.size == 0 and held.action.start.size == 0


def test_a_forced_scenario_is_decided_as_deepmigration_does():
    state = cluster([[300.0, 200.0, 150.0], [100.0]], standby=3)
    problem = Problem.of(state, TH).as_scenario(ScenarioKind.SCALE_OUT)
    assert problem.forced and not Problem.of(state, TH).forced
    net = headed()
    with torch.no_grad():
        net.control_head[-1].bias[control.HOLD] = 50.0  # a head that would hold
    assert same_action(control.LoopMigration(net).decide(problem).action, DeepMigration(net).decide(problem).action)


def test_returns_and_the_per_step_baseline():
    costs = np.array([[1000.0, 2000.0], [3000.0, 0.0]])
    assert np.allclose(loop_training.returns(costs, 1000.0), [[-3.0, -2.0], [-3.0, 0.0]])
    advantage = loop_training.advantages(loop_training.returns(costs, 1000.0), copies=2)
    assert np.allclose(advantage, [[0.0, -1.0], [0.0, 1.0]])


def test_a_headed_checkpoint_round_trips_and_bad_targets_are_named(tmp_path):
    path = tmp_path / "headed.pt"
    checkpoint.save(path, headed())
    net, _ = checkpoint.load(path)
    assert net.config.targets == control.TARGETS and net.control_head is not None
    stored = torch.load(path, weights_only=True)
    for bad in ([0.5, 0.2], [0.0, 0.5], [0.2, 1.5]):
        stored["config"]["targets"] = bad
        torch.save(stored, path)
        with pytest.raises(CheckpointError, match="targets"):
            checkpoint.load(path)
    stored["version"] = 2
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match="version 2; this code reads version 3"):
        checkpoint.load(path)


def test_dm_train_closed_loop_learns_the_head_only(tmp_path):
    out = tmp_path / "loop.pt"
    status = train.main(["--closed-loop", "--out", str(out), *SMALL, "--iterations", "2", "--windows", "1",
                         "--episodes", "2", "--periods-start", "3", "--periods", "4", "--validate-every", "1",
                         "--logdir", str(tmp_path / "tb"), "--curves", str(tmp_path / "curve.png")])
    assert status == 0 and (tmp_path / "curve.png").is_file()
    trained, record = checkpoint.load(out)
    shipped, _ = checkpoint.load(None)
    assert record["kind"] == "closed-loop" and trained.config.targets == control.TARGETS
    body = {k: v for k, v in trained.state_dict().items() if not k.startswith("control_head.")}
    assert all(torch.equal(v, shipped.state_dict()[k]) for k, v in body.items())


def test_dm_train_closed_loop_runs_in_the_calibrated_twin_and_the_record_names_it(tmp_path, capsys):
    out = tmp_path / "loop.pt"
    assert train.main(["--closed-loop", "--out", str(out), *SMALL, "--iterations", "1", "--windows", "1",
                       "--episodes", "2",
                       "--periods-start", "3", "--periods", "3", "--twin", "calibrated",
                       "--logdir", str(tmp_path / "tb")]) == 0
    assert checkpoint.load(out)[1]["train_config"]["twin"] == "calibrated"
    with pytest.raises(SystemExit) as refused:
        train.main(["--closed-loop", "--out", str(tmp_path / "r.pt"), "--twin", "residual"])
    assert refused.value.code == 2
    assert "invalid choice: 'residual'" in capsys.readouterr().err and not (tmp_path / "r.pt").exists()


def test_dm_train_closed_loop_refuses_bad_options_before_any_work(tmp_path, capsys):
    assert train.main(["--closed-loop", "--out", str(tmp_path / "x.pt"), "--periods-start", "9",
                       "--periods", "3"]) == 2
    assert "--periods-start 9 exceeds --periods 3" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_a_one_instance_graph_gives_the_same_finite_logits_alone_and_batched():
    one = cluster([[224.0]], standby=2)  # the rule may leave a single instance: a graph without edges
    two = cluster([[300.0], [100.0]], standby=2)
    problems = [Problem.of(state, TH).as_scenario(ScenarioKind.SCALE_OUT) for state in (one, two)]
    inputs = [control.control_input(problem) for problem in problems]
    net = headed()
    with torch.no_grad():
        alone = control.control_logits(net, inputs[:1])
        batched = control.control_logits(net, inputs)
    assert torch.isfinite(alone).all() and torch.allclose(alone[0], batched[0], atol=1e-6)


def test_a_head_over_the_same_grid_is_kept_and_only_the_head_learns():
    net = headed(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kept = loop_training.with_control_head(net, control.TARGETS, seed=9, keep=True)
    assert all(torch.equal(v, before[k]) for k, v in kept.state_dict().items())
    again = loop_training.with_control_head(net, control.TARGETS, seed=9)  # a fresh head by default, seeded
    assert torch.equal(again.control_head[0].weight,
                       loop_training.with_control_head(headed(5), control.TARGETS, seed=9).control_head[0].weight)
    assert not torch.equal(again.control_head[0].weight, before["control_head.0.weight"])
    fresh = loop_training.with_control_head(GNPolicyNet(NetConfig()), control.TARGETS, seed=9)
    assert fresh.config.targets == control.TARGETS
    for model in (kept, fresh):
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {
            n for n, _ in model.named_parameters() if n.startswith("control_head.")}


def test_the_imitation_warm_start_makes_the_greedy_head_the_hold_rule():
    net = loop_training.with_control_head(GNPolicyNet(NetConfig()), control.TARGETS, seed=4)
    net.load_state_dict({**net.state_dict(), **{k: v for k, v in checkpoint.load(None)[0].state_dict().items()
                                               if not k.startswith("control_head.")}})
    config = loop_training.LoopTrainConfig(imitation_steps=100, imitation_windows=4, periods_max=10)
    metrics = loop_training.imitate(net, read_flows(sample_path()), sample_path(), config)
    assert metrics["imitation/states"] > 0 and metrics["imitation/agreement"] == 1.0
    state = cluster([[300.0, 200.0, 150.0], [100.0]], standby=3)
    busy = Problem.of(state, TH)
    policy = control.LoopMigration(net)
    assert same_action(policy.decide(busy).action, RuleMigration(HOLD_TARGET).decide(busy).action)
