"""The controller's period through the stabilizer (gnn_policy.stabilizer), with the fake switch and NFs."""
from __future__ import annotations

import json
import logging
from itertools import pairwise

import pytest

from controller_app.config import ConfigError, ControllerConfig
from controller_app.stabilization import stabilizer_path
from controller_app.views import state_view
from tests.controller_rig import make_rig, new_flow, run_period, tuple_n

ON = {"enabled": True}


def flapping(rig, periods: int, high: float = 40.0, low: float = 2.0) -> list:
    """Six flows whose rate jumps between `high` and `low` packets/s every period; the executed decisions."""
    flows = [tuple_n(n) for n in range(6)]
    for t in flows:
        new_flow(rig, t)
    records = [run_period(rig, {t: (high if k % 2 else low) for t in flows}) for k in range(periods)]
    return [r for r in records if r is not None and r.executed]


def reversals(records) -> int:
    """Executed scale actions that undo the previous one: a start after a stop, or a stop after a start."""
    directions = [1 if r.started else -1 for r in records if r.started or r.stopped]
    return sum(a != b for a, b in pairwise(directions))


def test_a_flapping_load_makes_no_reversal_with_the_stabilizer(tmp_path):
    off = make_rig(tmp_path / "off")
    assert reversals(flapping(off, 20)) >= 4  # without it the loop thrashes
    on = make_rig(tmp_path / "on", stabilizer=ON)
    executed = flapping(on, 20)
    assert reversals(executed) == 0
    assert sum(len(r.migrations) for r in executed) <= 2


def test_a_lasting_overload_still_scales_out_at_once_and_a_lasting_underload_scales_in_after_its_window(tmp_path):
    rig = make_rig(tmp_path, stabilizer={**ON, "scale_in_window_s": 3.0, "estimator": "last"})
    flows = [tuple_n(n) for n in range(6)]
    for t in flows:
        new_flow(rig, t)
    run_period(rig, {t: 0 for t in flows})
    out = run_period(rig, {t: 30 for t in flows})  # 90 % on each active instance
    assert out.scenario == "scale_out" and out.executed and out.started == ["nf3"]
    held = [run_period(rig, {t: 1 for t in flows}) for _ in range(2)]
    assert held == [None, None]
    assert state_view(rig.controller)["stabilizer"]["last_note"] == "scale_in held 2 s of its 3 s window"
    record = run_period(rig, {t: 1 for t in flows})
    assert record.scenario == "scale_in" and record.executed and record.stopped


def test_the_state_view_shows_q_and_the_window(tmp_path):
    rig = make_rig(tmp_path, stabilizer=ON)
    new_flow(rig, tuple_n(1))
    run_period(rig, {tuple_n(1): 5})
    view = state_view(rig.controller)["stabilizer"]
    assert view["enabled"] and view["budget_queue"] == 0.0 and view["flows_estimated"] == 1
    assert set(view) >= {"need", "held_s", "window_s", "last_note", "estimated_load_pps"}
    assert rig.controller.config.public()["stabilizer"]["scale_in_window_s"] == 30.0


@pytest.mark.parametrize("patch, field", [
    ({"stabilizer": {"tolerance": 2}}, "stabilizer.tolerance"),
    ({"stabilizer": {"estimator": "median"}}, "stabilizer.estimator"),
    ({"stabilizer": {"max_migrations": 0}}, "stabilizer.max_migrations"),
    ({"stabilizer": {"scale_in_window_s": -1}}, "stabilizer.scale_in_window_s"),
    ({"stabilizer": {"nope": 1}}, "stabilizer.nope"),
    ({"stabilizer": True}, "stabilizer"),
])
def test_bad_stabilizer_settings_name_the_field_and_change_nothing(rig, patch, field):
    before = rig.controller.config
    with pytest.raises(ConfigError) as error:
        rig.controller.reconfigure(patch)
    assert error.value.field == field
    assert rig.controller.config == before


def test_settings_change_at_run_time_and_keep_the_stabilizers_state(rig):
    c = rig.controller
    c.reconfigure({"stabilizer": {"enabled": True, "budget_per_period": 0.0, "estimator": "last"}})
    flows = [tuple_n(n) for n in range(6)]
    for t in flows:
        new_flow(rig, t)
    run_period(rig, {t: 0 for t in flows})
    run_period(rig, {t: 30 for t in flows})  # a scale-out: its migrations are charged to Q
    q = c.stabilizer.budget_queue
    assert q > 0
    c.reconfigure({"stabilizer": {"scale_in_window_s": 2.5}})
    run_period(rig, {t: 30 for t in flows})
    assert c.stabilizer.config.scale_in_window_s == 2.5 and c.stabilizer.budget_queue >= q
    assert ControllerConfig.from_dict({"stabilizer": {"enabled": True}}).stabilizer.enabled


def test_the_stabilizer_survives_a_restart_and_its_window_goes_on(tmp_path):
    settings = {**ON, "scale_in_window_s": 4.0, "estimator": "last"}
    first = make_rig(tmp_path, stabilizer=settings)
    flows = [tuple_n(n) for n in range(4)]
    for t in flows:
        new_flow(first, t)
    for _ in range(3):
        assert run_period(first, {t: 1 for t in flows}) is None  # scale-in need held 3 s of 4
    saved = json.loads(stabilizer_path(first.log).read_text())
    assert saved["need"] == "scale_in" and saved["held_s"] == 3.0

    second = make_rig(tmp_path, stabilizer=settings)  # the same transition log: the same state file
    assert second.controller.stabilizer.snapshot() == first.controller.stabilizer.snapshot()
    for t in flows:
        new_flow(second, t)
    record = run_period(second, {t: 1 for t in flows})
    assert record is not None and record.scenario == "scale_in"  # the window was not restarted


def test_a_bad_state_file_is_logged_and_replaced_by_a_fresh_stabilizer(tmp_path, caplog):
    stabilizer_path(tmp_path / "transitions.jsonl").write_text("{not json")
    with caplog.at_level(logging.ERROR):
        rig = make_rig(tmp_path, stabilizer=ON)
    assert "unusable" in caplog.text and rig.controller.stabilizer.budget_queue == 0.0
    stabilizer_path(tmp_path / "transitions.jsonl").write_text(json.dumps({"version": 0}))
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        make_rig(tmp_path, stabilizer=ON)
    assert "version 0" in caplog.text
