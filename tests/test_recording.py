"""The controller's recorder (controller_app.recording), the exploration wrapper (gnn_policy.exploration) and
dm-demo's --record/--explore checks, on the switch-less rig. The live run is in test_live_record.py."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller_app.config import ConfigError, ControllerConfig
from controller_app.demo import _parser, main
from controller_app.recording import finish
from gnn_policy.base import Problem
from gnn_policy.exploration import Exploring, random_valid_moves
from gnn_policy.registry import make_policy
from tests.controller_rig import make_rig, overload_nf1, run_period
from tests.strategies import cluster_states
from twin.flow import FlowKey
from twin.migration import apply
from twin.params import Thresholds
from twin.records import RecordingError, load
from twin.scenario import ScenarioKind

META = {"source": "test", "policy": "ofm"}


def _recorded_rig(tmp_path, **config):
    rig = make_rig(tmp_path, record_log=str(tmp_path / "record.jsonl"), **config)
    flows = overload_nf1(rig)
    records = [run_period(rig, {t: 12 for t in flows}) for _ in range(4)]
    return rig, flows, records


def test_every_period_is_recorded_with_its_state_action_and_moves(tmp_path):
    rig, _, _ = _recorded_rig(tmp_path)
    recording = load(finish(tmp_path / "record.jsonl", tmp_path / "rec", META))
    # overload_nf1's period and the four after it; the last is still waiting for its successor's counters
    assert recording.n_periods == 4
    periods = recording.tables["periods"].to_pylist()
    executed = [t for t, p in enumerate(periods) if p["executed"]]
    assert executed, "the scale-out was executed"
    t = executed[0]
    assert periods[t]["policy"] == "ofm" and periods[t]["decided"] and not periods[t]["explored"]
    assert periods[t]["scenario"] == "scale_out" and periods[t]["predicted_total"] > 0
    moves = [m for m in recording.tables["migrations"].to_pylist() if m["period"] == t]
    assert moves and all(m["outcome"] == "done" and m["duration_ms"] > 0 for m in moves)
    # period t's state is what the controller saw; its next state (t + 1) has the moved flows on their destinations
    before, after = recording.state(t), recording.state(t + 1)
    for move in moves:
        assert before.flow(before.flow_index[move["flow"]]).instance == move["src"]
        assert after.flow(after.flow_index[move["flow"]]).instance == move["dst"]
    assert recording.column("instances", "packets_in").tolist() == [0] * recording.tables["instances"].num_rows
    assert rig.log.exists()  # the JSON transition log goes on beside the recording


def test_the_sink_delays_are_joined_per_period(tmp_path):
    _recorded_rig(tmp_path)
    staging = tmp_path / "record.jsonl"
    periods = [json.loads(line) for line in staging.read_text().splitlines()]
    walls = [1000.0 + t for t in range(len(periods))]  # the rig's periods pass in no wall time
    for rows, wall in zip(periods, walls):
        rows["periods"][0]["wall_time_s"] = wall
    staging.write_text("".join(json.dumps(rows) + "\n" for rows in periods))
    flow = periods[0]["flows"][0]
    key = FlowKey.parse(flow["flow"])
    bins = [[walls[1] + 0.2, 4, 10.0], [walls[1] + 0.4, 6, 20.0], [walls[2] + 0.1, 3, 7.0]]
    outcomes = {"delay_bin_s": 0.2, "flows": {"1": {"key": list(key), "delay_bins": bins}}}
    recording = load(finish(staging, tmp_path / "rec", META, outcomes))
    rows = [r for r in recording.tables["flows"].to_pylist() if r["flow"] == flow["flow"]]
    assert [(r["delay_packets"], r["delay_ms"]) for r in rows[:3]] == [(None, None), (10, 16.0), (3, 7.0)]
    sink = recording.tables["periods"].select(["sink_packets", "sink_delay_ms"]).to_pylist()
    assert [tuple(p.values()) for p in sink[:4]] == [(0, None), (10, 16.0), (3, 7.0), (0, None)]


def test_a_staging_file_without_periods_is_refused(tmp_path):
    (tmp_path / "record.jsonl").write_text('{"periods": [')  # a line still being written
    with pytest.raises(RecordingError, match="staged no period"):
        finish(tmp_path / "record.jsonl", tmp_path / "rec", META)


def test_explore_one_replaces_every_decision_by_valid_random_moves(tmp_path):
    _, _, records = _recorded_rig(tmp_path, explore=1.0, seed=3)
    recording = load(finish(tmp_path / "record.jsonl", tmp_path / "rec", META))
    decided = [p for p in recording.tables["periods"].to_pylist() if p["decided"]]
    assert decided and all(p["explored"] and p["policy"] == "explore" for p in decided)
    assert all(r is None or "explore:" in r.reason for r in records)


def test_explore_must_be_a_probability():
    with pytest.raises(ConfigError, match="explore must be a probability"):
        ControllerConfig.from_dict({"explore": 1.5})
    with pytest.raises(ValueError, match="probability"):
        Exploring(make_policy("ofm"), -0.1)


@settings(max_examples=60, deadline=None)
@given(state=cluster_states(roomy_buffers=False), seed=st.integers(0, 2**31))
def test_random_moves_are_valid_distinct_and_seeded(state, seed):
    import numpy as np

    problem = Problem.of(state, Thresholds())
    action = random_valid_moves(problem, np.random.default_rng(seed))
    apply(state, action)  # raises InvalidAction if not valid
    assert len(set(action.flows.tolist())) == action.flows.size <= 8
    again = random_valid_moves(problem, np.random.default_rng(seed))
    assert np.array_equal(action.flows, again.flows) and np.array_equal(action.dst, again.dst)


@settings(max_examples=30, deadline=None)
@given(state=cluster_states(), eps=st.sampled_from([0.0, 0.5]))
def test_exploring_passes_the_policy_through_otherwise(state, eps):
    policy = make_policy("ofm")
    exploring = Exploring(make_policy("ofm"), eps, seed=1)
    problem = Problem.of(state, Thresholds())
    for _ in range(5):
        before = exploring.explorations
        decision = exploring.decide(problem)
        if exploring.explorations == before:
            expected = policy.decide(problem)
            assert decision.reason == expected.reason and decision.action.flows.tolist() == \
                expected.action.flows.tolist()
    if eps == 0.0 or problem.scenario.kind is ScenarioKind.NONE:
        assert exploring.explorations == 0


def test_demo_refuses_a_used_record_directory_before_starting(tmp_path, capsys, monkeypatch):
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "meta.json").write_text("{}")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert main(["--record", str(tmp_path / "rec"), "--duration", "1"]) == 1
    assert "never overwritten" in capsys.readouterr().err


def test_demo_explore_must_be_a_probability(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--explore", "2"])
    assert "not a probability" in capsys.readouterr().err
