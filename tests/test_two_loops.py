"""The two loops (`dm-demo --learn`, gnn_policy.two_loops) off the testbed: eq. (8)'s blend, agent 1's live
REINFORCE step on a recording of the control head's draws, the live cost, and the bad input refused before any
work. The session itself on the real stack is tests/test_live_two_loops.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from controller_app import demo
from gnn_policy import checkpoint, control
from gnn_policy.base import Problem
from gnn_policy.live_reinforce import (
    LOG_PROB_TOLERANCE,
    LiveLearningError,
    kl_to,
    live_costs,
    live_samples,
    live_step,
    replay_periods,
)
from gnn_policy.loop_training import with_control_head
from gnn_policy.two_loops import TwoLoopsConfig, TwoLoopsError, blend, check_zeta, live_windows, prepare
from tests.helpers import cluster
from twin.params import CostParams, Thresholds
from twin.records import PeriodRecord, RecordingWriter, load


def _agent(seed: int = 0):
    net, _ = checkpoint.load(None)
    return with_control_head(net, control.TARGETS, seed)


def _perturbed(net, scale: float):
    other = _agent()
    with torch.no_grad():
        for parameter in other.control_head.parameters():
            parameter.add_(scale)
    return other


def test_blend_is_eq_8_elementwise_and_leaves_both_agents_as_they_were():
    theta1, theta2 = _agent(), _perturbed(_agent(), 0.5)
    before1 = {k: v.clone() for k, v in theta1.state_dict().items()}
    mixed = blend(theta1, theta2, 0.3)
    for name, value in mixed.state_dict().items():
        expected = 0.3 * before1[name] + 0.7 * theta2.state_dict()[name] if value.is_floating_point() \
            else before1[name]
        assert torch.allclose(value, expected, atol=1e-6), name
    assert all(torch.equal(v, before1[k]) for k, v in theta1.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(blend(theta1, theta2, 1.0).state_dict().values(),
                                                 theta1.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(blend(theta1, theta2, 0.0).state_dict().values(),
                                                 theta2.state_dict().values()))
    trainable = [n for n, p in mixed.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("control_head.") for n in trainable)


@pytest.mark.parametrize("zeta", [-0.1, 1.5, math.nan, math.inf, "0.5", None])
def test_a_bad_zeta_is_refused(zeta):
    with pytest.raises(TwoLoopsError, match="ζ"):
        check_zeta(zeta)
    with pytest.raises(TwoLoopsError, match="ζ"):
        blend(_agent(), _agent(), zeta)


def test_blending_networks_of_different_configs_is_refused():
    net, _ = checkpoint.load(None)
    other = with_control_head(net, (0.1, 0.2), 0)
    with pytest.raises(TwoLoopsError, match="same config"):
        blend(_agent(), other, 0.5)


STATES = [cluster([[300.0, 300.0, 300.0], [50.0]], standby=1), cluster([[100.0], [120.0]], standby=1),
          cluster([[200.0, 100.0], [300.0, 350.0]], standby=1), cluster([[500.0, 450.0], [20.0]], standby=1)]


def _recording(tmp_path, net, *, stabilizer=False, sample=True, seed=3):
    """The states above decided by the control head as the live controller decides them, recorded."""
    policy = control.LoopMigration(net, seed=seed, sample=sample)
    writer = RecordingWriter(tmp_path / "rec", {"stabilizer": stabilizer, "replay_started_wall_s": 1000.0,
                                                "duration_s": float(len(STATES))})
    for t, state in enumerate(STATES):
        problem = Problem.of(state, Thresholds())
        decision = policy.decide(problem)
        draw = decision.control
        writer.add_period(state, PeriodRecord(scenario=problem.scenario.kind.value, decided=draw is not None,
                                              wall_time_s=1000.0 + t, control=draw and draw.as_record()))
    writer.close()
    return load(tmp_path / "rec")


def test_the_recorded_draws_give_back_their_log_probability_and_one_step_moves_only_the_control_head(tmp_path):
    net = _agent()
    recording = _recording(tmp_path, net)
    holds = recording.tables["periods"].column("control_hold").to_pylist()
    assert sum(h is not None for h in holds) >= 3, "the states call for control decisions"
    body = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("control_head.")}
    head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("control_head.")}
    step = live_step(net, recording, lr=1e-2)
    assert step["log_prob_error"] <= LOG_PROB_TOLERANCE
    assert step["decisions"] == sum(h is not None for h in holds) and step["windows"][0]["periods"] == len(STATES)
    assert step["kl"] > 0
    assert math.isfinite(step["loss"]) and step["grad_norm"] >= 0
    assert all(torch.equal(net.state_dict()[k], v) for k, v in body.items())
    assert any(not torch.equal(net.state_dict()[k], v) for k, v in head.items())


def test_the_trust_region_step_learns_on_every_window_within_its_kl_bound(tmp_path):
    net = _agent()
    windows = [_recording(tmp_path / f"w{k}", net, seed=k) for k in range(2)]
    decisions = sum(int(w.tables["periods"].column("control_hold").is_valid().to_numpy(zero_copy_only=False).sum())
                    for w in windows)
    body = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("control_head.")}
    head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("control_head.")}
    step = live_step(net, windows, lr=1e-2, max_kl=1e-3)
    assert step["decisions"] == decisions and len(step["windows"]) == 2
    assert 0 < step["kl"] <= 1e-3 and step["step_norm"] > 0
    inputs = [s.inputs for w in windows for s in live_samples(w, net.config.targets, replay_periods(w))]
    assert kl_to(net, inputs, control.control_logits(_agent(), inputs)) == pytest.approx(step["kl"], rel=1e-4)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in body.items())
    assert any(not torch.equal(net.state_dict()[k], v) for k, v in head.items())
    wider = _agent()
    assert live_step(wider, windows, lr=1e-2, max_kl=1e-1)["step_norm"] > step["step_norm"]
    with pytest.raises(LiveLearningError, match="KL bound"):
        live_step(_agent(), windows, lr=1e-2, max_kl=0.0)


def test_a_window_drawn_by_other_weights_is_refused(tmp_path):
    recording = _recording(tmp_path, _agent())
    with pytest.raises(LiveLearningError, match="not run by them"):
        live_step(_perturbed(_agent(), 0.3), recording, lr=1e-2)


def test_a_window_recorded_with_the_stabilizer_on_is_refused(tmp_path):
    recording = _recording(tmp_path, _agent(), stabilizer=True)
    with pytest.raises(LiveLearningError, match="stabilizer"):
        live_step(_agent(), recording, lr=1e-2)


def test_the_live_cost_is_the_measured_total_or_the_threshold_penalties_of_the_cluster_as_it_was(tmp_path):
    writer = RecordingWriter(tmp_path / "rec", {})
    hot = cluster([[900.0], [100.0]])  # utilisations 0.9 and 0.1
    writer.add_period(hot, PeriodRecord())
    writer.add_period(hot, PeriodRecord(decided=True, executed=True, measured={"total": 1234.5}))
    writer.close()
    costs = live_costs(load(tmp_path / "rec"))
    th, omega = Thresholds(), CostParams().omega
    expected = omega * (max(0.9 - th.high, 0) + max(th.low - 0.9, 0) + max(0.1 - th.high, 0) + max(th.low - 0.1, 0))
    np.testing.assert_allclose(costs, [expected, 1234.5])


def _refused(capsys, tmp_path, *extra):
    code = demo.main(["--learn", str(tmp_path / "session"), "--duration", "5", *extra])
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--zeta", "1.5"], "ζ"), (["--zeta", "nan"], "ζ"),
    (["--calibration-data", "/nonexistent/recordings"], "--calibration-data /nonexistent/recordings"),
    (["--record", "/tmp/x"], "--record cannot be given with --learn"),
    (["--policy", "ofm"], "--policy cannot be given with --learn"),
    (["--checkpoint", "/nonexistent/agent.pt"], "no checkpoint at /nonexistent/agent.pt"),
    (["--trace", "/nonexistent/trace.pcap"], "/nonexistent/trace.pcap"),
    (["--lock", "/nonexistent/dir/lock"], "--lock /nonexistent/dir/lock"),
])
def test_dm_demo_learn_refuses_bad_input_before_any_work(capsys, tmp_path, extra, message):
    err = _refused(capsys, tmp_path, *extra)
    assert message in err
    assert not (tmp_path / "session").exists()


def test_dm_demo_learn_never_writes_into_a_directory_that_holds_something(capsys, tmp_path):
    (tmp_path / "session").mkdir()
    (tmp_path / "session" / "kept.txt").write_text("mine")
    assert "is not an empty directory" in _refused(capsys, tmp_path)
    assert (tmp_path / "session" / "kept.txt").read_text() == "mine"


@pytest.mark.parametrize("config, message", [
    (TwoLoopsConfig(live_kl=-0.01), "--live-kl"), (TwoLoopsConfig(live_kl=math.nan), "--live-kl"),
    (TwoLoopsConfig(outer=60, live_windows=2), "--outer × --live-windows 60 × 2"),
    (TwoLoopsConfig(validation_repeats=0), "--validation-repeats"),
])
def test_a_bad_session_config_is_refused_before_any_work(tmp_path, config, message):
    args = demo._parser().parse_args(["--duration", "10", "--learn", str(tmp_path / "s")])
    with pytest.raises(TwoLoopsError, match=message):
        prepare(args, config, tmp_path / "s", None, None)
    assert not (tmp_path / "s").exists()


def test_the_session_starts_from_the_checkpoints_own_control_head(tmp_path):
    args = demo._parser().parse_args(["--duration", "10", "--learn", str(tmp_path / "s")])
    _, theta1 = prepare(args, TwoLoopsConfig(), tmp_path / "s", None, None)
    shipped, _ = checkpoint.load(None)
    assert all(torch.equal(value, shipped.state_dict()[name]) for name, value in theta1.state_dict().items())


def test_live_windows_are_the_first_seeds_of_the_split_the_testbed_can_replay(tmp_path):
    from trace_replay.live import load_schedule

    args = demo._parser().parse_args(["--duration", "10", "--learn", str(tmp_path / "s")])
    session, _ = prepare(args, TwoLoopsConfig(outer=2, live_windows=2), tmp_path / "s", None, None)
    assert [seed for seed, _ in session.training] == [seed for seed, _ in live_windows(session, range(100), 4)]
    assert all(seed < 100 for seed, _ in session.training) and session.validation[0] in range(100, 200)
    for _, start in [*session.training, session.validation]:
        load_schedule(args.trace, speed=0.5, start_s=start, duration_s=5.0)  # replayable: no ValueError
    args.speed = 8.0  # every window would peak far above the testbed's packet rate
    with pytest.raises(TwoLoopsError, match="can be replayed live at --speed 8"):
        live_windows(session, range(3), 1)
    args.speed = 40.0
    with pytest.raises(TwoLoopsError, match="shorter than an episode"):
        live_windows(session, range(3), 1)


def test_report_draws_the_curves_of_a_finished_or_interrupted_session_from_its_iteration_records(tmp_path):
    import json

    from gnn_policy.two_loops import report, window_costs

    with pytest.raises(TwoLoopsError, match="no finished outer iteration"):
        report(tmp_path)
    (tmp_path / "iterations").mkdir()
    for k in range(2):
        record = {"live_validation": {"cost_per_period": 100.0 - k}, "live_training": {"cost_per_period": 90.0 + k},
                  "twin_validation": {"theta1_start": 50.0 - k, "agent2": 40.0 - k, "blended": 45.0 - k}}
        (tmp_path / "iterations" / f"{k:02d}.json").write_text(json.dumps(record))
    (tmp_path / "live-validation").mkdir()
    costs = []
    for repeat, seed in enumerate((3, 4)):  # two runs of a live validation window: their costs from the recordings
        recorded = _recording(tmp_path / f"r{repeat}", _agent(), seed=seed)
        recorded.directory.rename(tmp_path / "live-validation" / f"val-00-{repeat}")
        costs.append(float(live_costs(recorded).mean()))
    figures = report(tmp_path)
    assert figures == {"agent1_live_validation_cost_per_period": [pytest.approx(np.mean(costs))],
                       "agent1_live_validation_spread": [{"std": pytest.approx(np.std(costs, ddof=1)),
                                                          "min": min(costs), "max": max(costs)}],
                       "agent1_live_training_cost_per_period": [90.0, 91.0],
                       "agent1_twin_validation_total_cost": [50.0, 49.0, 44.0],
                       "agent2_twin_validation_total_cost": [40.0, 39.0]}
    assert json.loads((tmp_path / "report.json").read_text()) == figures
    windows = window_costs(sorted((tmp_path / "live-validation").iterdir()))
    assert list(windows["cost_per_period"].values()) == pytest.approx(costs)
    assert windows["mean"] == pytest.approx(np.mean(costs)) and windows["max"] == max(costs)
    assert windows["median_spread"]["min"] == min(windows["median_period_cost"].values())
    assert (tmp_path / "costs.png").stat().st_size > 10_000
