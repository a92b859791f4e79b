"""The closed-loop head's training by rollout advantages (`gnn_policy.loop_rollouts`): exact gains, the shared memo
changes nothing, the regret step moves the head towards the best actions, the margin, the cache."""
import numpy as np
import pytest
import torch

from gnn_policy import control, loop_rollouts, loop_training, train
from gnn_policy.bench import loop
from gnn_policy.gn import GNPolicyNet, NetConfig
from gnn_policy.rule_policy import HoldingRule
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.params import CostParams, Thresholds

TH = Thresholds(high=0.6, low=0.1)


@pytest.fixture(scope="module")
def window():
    trace = sample_path()
    return loop.build(trace, read_flows(trace), loop.LoopSetup(episodes=1, periods=8, instances=4, standby=2, seed=3))


@pytest.fixture(scope="module")
def samples(window):
    base = loop_rollouts.rule_choice(HoldingRule(), control.TARGETS)
    return loop_rollouts.collect(window, base, control.TARGETS, twin="fluid")


def test_every_decision_gets_every_actions_exact_gain(window, samples):
    assert samples and all(s.gains.shape == (1 + len(control.TARGETS),) for s in samples)
    rule = HoldingRule()
    base = loop_rollouts.rule_choice(rule, control.TARGETS)
    (base_cost,) = loop_rollouts.total_costs(window, [loop_rollouts.Brancher(base, control.TARGETS)], "fluid",
                                             CostParams(), Thresholds())
    assert all(np.isclose(s.gains, 0.0).any() for s in samples)  # the base policy's own action gains nothing
    d = int(np.argmax([np.abs(s.gains).max() for s in samples]))
    a = int(np.argmax(np.abs(samples[d].gains)))
    alone = loop_rollouts.Brancher(base, control.TARGETS, d, control.every_choice(len(control.TARGETS))[a])
    (cost,) = loop_rollouts.total_costs(window, [alone], "fluid", CostParams(), Thresholds())
    assert cost == pytest.approx(base_cost - samples[d].gains[a], rel=1e-9)  # the shared memo changes nothing


def test_the_regret_step_moves_the_greedy_head_to_the_best_actions(samples):
    torch.manual_seed(0)
    net = loop_training.with_control_head(GNPolicyNet(NetConfig()), control.TARGETS, seed=1)
    rigged = [loop_rollouts.Sample(s.inputs, np.where(np.arange(s.gains.size) == 3, 5000.0, 0.0)) for s in samples]
    before = loop_rollouts.expected_regret(net, rigged, 1000.0).item()
    loop_rollouts.improve(net, rigged, steps=60, lr=0.05, cost_unit=1000.0)
    assert loop_rollouts.expected_regret(net, rigged, 1000.0).item() < before
    assert loop_rollouts.greedy_regret(net, rigged) == 0.0


def test_the_margin_keeps_the_base_policy_where_a_change_saves_less():
    gains = np.array([0.0, 1500.0, -300.0, 0.0, 2500.0])
    assert np.array_equal(loop_rollouts.margined(gains, 2000.0), [0.0, -500.0, -2300.0, 0.0, 500.0])
    assert np.array_equal(loop_rollouts.margined(gains, 0.0), gains)


def test_the_rollout_cache_round_trips_and_ignores_other_keys(tmp_path, samples):
    key = {"base": "rule-hold 0.3", "windows": 1}
    path = loop_rollouts.cache_file(tmp_path, key)
    loop_rollouts.save_samples(path, key, samples)
    back = loop_rollouts.load_samples(path, key)
    assert len(back) == len(samples)
    assert all(np.array_equal(a.gains, b.gains) and torch.equal(a.inputs.control, b.inputs.control)
               and torch.equal(a.inputs.graph.x, b.inputs.graph.x) for a, b in zip(back, samples))
    assert loop_rollouts.load_samples(path, {**key, "windows": 2}) is None
    assert loop_rollouts.cache_file(tmp_path, {**key, "windows": 2}) != path


def test_dm_train_refuses_a_target_off_the_grid_before_any_work(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert train.main(["--closed-loop", "--out", str(out), "--imitation-target", "0.33"]) == 2
    assert "--imitation-target 0.33 is not a target" in capsys.readouterr().err and not out.exists()
