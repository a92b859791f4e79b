"""Training (Algorithm 1) and checkpoints: the loss, a short run that learns, and safe loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gnn_policy import checkpoint
from gnn_policy.actions import act
from gnn_policy.agent import DeepMigration
from gnn_policy.base import Problem, score
from gnn_policy.baselines import SizeGreedy
from gnn_policy.checkpoint import CheckpointError
from gnn_policy.gn import GNPolicyNet, NetConfig
from gnn_policy.graph import to_pyg
from gnn_policy.imitation import imitation_choice
from gnn_policy.train import Example, Start, TrainConfig, imitate, main, reinforce_loss, train
from tests.helpers import cluster
from twin.migration import IndexedAction
from twin.params import Thresholds

SAMPLE = "trace_replay/data/lbnl_sample.pcap.gz"


def test_reinforce_loss_uses_returns_minus_the_per_step_group_mean():
    log_prob = torch.tensor([[0.1, 0.2], [0.3, 0.4]], requires_grad=True)  # [T=2, episodes=2], one group
    rewards = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    # returns R_0 = (3, 3), R_1 = (2, 0); baselines b_0 = 3, b_1 = 1; advantages (0, 0) and (1, −1)
    loss = reinforce_loss(log_prob, rewards, episodes=2)
    assert loss.item() == pytest.approx(-(0.3 * 1 + 0.4 * -1) / 2)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[0.0, 0.0], [-0.5, 0.5]]))


def test_short_training_improves_reward_on_a_fixed_small_case():
    # nf0 at 70 % with Th_high 60 %: moving about two flows to a cold instance saves ~10 000 of penalty
    state = cluster([[70.0] * 10, [70.0] * 3, [70.0] * 3])
    torch.manual_seed(0)
    net = GNPolicyNet(NetConfig(hidden=16, steps=2, stay_bias=3.0))
    config = TrainConfig(iterations=60, groups=1, episodes=16, lr_start=5e-3, lr_end=1e-3, seed=0)  # the paper's rates
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr_start)
    history = train(net, [Start(state, Thresholds(high=0.6))], config, optimizer=optimizer, progress=False)
    first = sum(h["reward"] for h in history[:10]) / 10
    last = sum(h["reward"] for h in history[-10:]) / 10
    # the translator refines away moves that do not pay, so even untrained actions are often cheap: training must cut
    # what is left by four fifths and end within half a unit (two migrations cost about 0.2)
    assert last > first / 5 and last > -0.5, (first, last)


def test_imitation_reproduces_the_teachers_action():
    # nf0 at 70 % with Th_high 60 %: Size-greedy moves flows to the instances with the most room
    state = cluster([[70.0] * 10, [70.0] * 3, [70.0] * 6])
    problem = Problem.of(state, Thresholds(high=0.6))
    teacher = SizeGreedy().decide(problem)
    torch.manual_seed(0)
    net = GNPolicyNet(NetConfig(hidden=16, steps=2))
    view, choice = imitation_choice(problem, teacher.action, net.config.levels)
    assert (choice.levels > 0).sum() >= 1
    history = imitate(net, [Example(view, choice, problem.thresholds)], TrainConfig(imitation_epochs=80),
                      progress=False)
    assert history[-1]["imitation_loss"] < history[0]["imitation_loss"] / 5
    with torch.no_grad():
        greedy = act(net, [view], [problem.thresholds], greedy=True)[0]
    assert torch.equal(greedy.choice.levels, choice.levels)
    learnt = score(problem, DeepMigration(net, guard=False).decide(problem)).breakdown.total
    assert learnt <= score(problem, teacher).breakdown.total + 1e-6


def test_imitation_maps_a_started_standby_onto_the_modified_graph():
    state = cluster([[100.0] * 7, [50.0], [50.0]], standby=2)  # nf0 at 70 %: a scale-out
    problem = Problem.of(state, Thresholds(high=0.6))
    flows = state.flows_on(0)[:3]
    teacher = IndexedAction(flows=flows, dst=np.full(3, 4), start=np.array([4]))  # starts the second standby
    view, choice = imitation_choice(problem, teacher, NetConfig().levels)
    assert view.label == "scale-out"
    nodes = view.graph.instance_index.tolist()
    senders, receivers = view.graph.edge_index.tolist()
    moving = [(nodes[s], nodes[r]) for s, r, level in zip(senders, receivers, choice.levels.tolist()) if level > 0]
    assert moving == [(0, 3)]  # the standby the view activated stands for the one the teacher started


def test_checkpoint_round_trip(tmp_path):
    net = GNPolicyNet(NetConfig(hidden=8, steps=1))
    path = tmp_path / "dm.pt"
    checkpoint.save(path, net, {"iteration": 4})
    loaded, record = checkpoint.load(path)
    graph = to_pyg(cluster([[10, 20], [30]]))
    context = torch.tensor([[0.6, 0.1]])
    assert record == {"iteration": 4} and loaded.config == net.config
    torch.testing.assert_close(loaded(graph, context).edge, net(graph, context).edge)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=99), "format version 99"),
    (lambda d: d.update(format="something-else"), "not a DeepMigration checkpoint"),
    (lambda d: d["config"].update(hidden=16), "weights do not fit"),
    (lambda d: d["config"].update(width=3), "unusable network config"),
])
def test_mismatched_checkpoints_are_rejected_with_the_reason(tmp_path, change, message):
    path = tmp_path / "dm.pt"
    checkpoint.save(path, GNPolicyNet(NetConfig(hidden=8, steps=1)))
    stored = torch.load(path, weights_only=True)
    change(stored)
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_missing_or_foreign_files_are_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        checkpoint.load(tmp_path / "junk.pt")


def test_cli_trains_saves_and_resumes(tmp_path):
    out = tmp_path / "dm.pt"
    common = ["--trace", SAMPLE, "--out", str(out), "--pool-size", "3", "--groups", "1", "--episodes", "2",
              "--logdir", str(tmp_path / "runs"), "--imitation-epochs", "2", "--teacher-time-limit", "0.5",
              "--teacher-cache", str(tmp_path / "teacher.pt")]
    assert main([*common, "--iterations", "1"]) == 0
    _, record = checkpoint.load(out)
    assert record["iteration"] == 0 and len(record["imitation"]) == 2
    assert (tmp_path / "teacher.pt").stat().st_size > 0
    assert main([*common, "--iterations", "2", "--resume", str(out), "--curves", str(tmp_path / "c.png")]) == 0
    _, record = checkpoint.load(out)
    assert record["iteration"] == 1 and len(record["history"]) == 2
    assert (tmp_path / "c.png").stat().st_size > 0
    assert any((tmp_path / "runs").iterdir())
