"""`dm-demo --learn` on the real testbed (Open vSwitch, Mininet, the NF processes, `ryu-manager
controller_app.app`): a tiny two-loops session of 2 outer iterations of short live windows writes every
checkpoint, recording, iteration record and the summary, and agent 1's live steps were on-policy (the recorded
log-probabilities are the weights' own)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from controller_app.demo import _parser
from gnn_policy import checkpoint
from gnn_policy.live_reinforce import LOG_PROB_TOLERANCE
from gnn_policy.loop_training import LoopTrainConfig
from gnn_policy.two_loops import TwoLoopsConfig, prepare, run_two_loops
from twin.calibration import load_params
from twin.records import SHIPPED_DIR, SHIPPED_SPLIT, load

pytestmark = [
    pytest.mark.network,
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("ovs"),
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]

TINY = TwoLoopsConfig(outer=2, twin_iterations=1, validation_episodes=1, live_kl=0.01,
                      calibration_data=str(SHIPPED_DIR / SHIPPED_SPLIT["validation"][0]),
                      agent2=LoopTrainConfig(twin="calibrated", windows=1, episodes=2, periods_start=4, periods_max=4))


def test_a_tiny_two_loops_session_writes_everything_and_learns_on_policy(tmp_path):
    out = tmp_path / "session"
    demo = _parser().parse_args(["--duration", "10", "--learn", str(out)])
    session, theta1 = prepare(demo, replace(TINY, zeta=0.5), out, None, None)
    summary = run_two_loops(session, TINY, theta1)

    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for name in ("theta1-00", "agent1-00", "agent2-00", "theta1-01", "agent1-01", "agent2-01", "theta1-02"):
        net, meta = checkpoint.load(out / "agents" / f"{name}.pt")
        assert meta["kind"] == "two-loops" and net.control_head is not None
    assert checkpoint.load(out / "final.pt")[1]["what"].startswith("the best on validation")
    assert (out / "costs.png").stat().st_size > 10_000
    assert not list(out.rglob("*.part")), "every file was written whole"

    for k in range(2):
        record = json.loads((out / "iterations" / f"{k:02d}.json").read_text())
        step = record["agent1_step"]
        assert step["decisions"] > 0, "the sampling control head decided on the live window"
        assert step["log_prob_error"] <= LOG_PROB_TOLERANCE and math.isfinite(step["loss"])
        assert 0 <= step["kl"] <= 0.01, "the trust region bounds agent 1's live step"
        (validation,), (training,) = record["live_validation"]["repeats"], record["live_training"]["windows"]
        for figures, sampling in ((validation, False), (training, True)):
            assert figures["periods"] >= 5 and math.isfinite(figures["cost_per_period"]) and figures["cost_per_period"] >= 0
            recording = load(figures["recording"])
            assert recording.meta["stabilizer"] is False and recording.meta["checkpoint"].endswith(f"theta1-{k:02d}.pt")
            assert recording.meta["control_sampling"] is sampling
        assert training["window_seed"] in range(100) and validation["window_seed"] >= 100
        fitted = load_params(record["calibration"]["params"])
        assert f"train-{k:02d}-0" in fitted.fitted_on["recordings"]
        twin = record["twin_validation"]
        assert all(math.isfinite(twin[key]) for key in ("theta1_start", "agent2", "blended", "agent1_after_step"))

    seeds = [json.loads((out / "iterations" / f"{k:02d}.json").read_text())["live_training"]["windows"][0]["window_seed"]
             for k in range(2)]
    assert seeds[0] < seeds[1], "each outer iteration learns on a window of its own"
    costs = summary["agent1_live_validation_cost_per_period"]
    assert len(costs) == 3 and all(math.isfinite(c) and c >= 0 for c in costs)
    assert len(summary["agent2_twin_validation_total_cost"]) == 2
    assert summary["pick"]["agent"] in ("start", "agent1", "agent2") and math.isfinite(summary["pick"]["test_total_cost"])
