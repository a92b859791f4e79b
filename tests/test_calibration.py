"""twin.calibration: the least-squares fit recovers the parameters a recording was simulated with, and a
parameter file is checked field by field."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import cluster, simulated_dataset
from twin.calibration import CalibratedParams, CalibrationError, fit, load_params, save_params
from twin.fidelity.evaluate import load_dataset
from twin.fidelity.twins import CalibratedTwin
from twin.migration import Action, Migration
from twin.records import MoveRecord, PeriodRecord, RecordingWriter


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulated")
    return {**simulated_dataset(root, steps=150), "root": root}


def test_calibration_recovers_the_simulated_parameters(simulated):
    truth = simulated["truth"]
    params = fit(load_dataset(simulated["root"], "train"))
    for k, instance in enumerate(("nf0", "nf1")):
        fitted = params.instances[instance]
        assert fitted.service_ratio == pytest.approx(truth.service_ratio[k], rel=0.05)
        assert fitted.buffer_ratio == pytest.approx(truth.buffer_ratio[k], rel=0.1)
        assert fitted.processing_ms == pytest.approx(truth.processing_ms[k], abs=6.0)
    assert params.batch == "period"
    assert params.pooled_move.a_ms == pytest.approx(truth.move_a_ms, rel=0.1)
    assert params.pooled_move.b_ms == pytest.approx(truth.move_b_ms, rel=0.1)
    assert params.move_drain_factor == pytest.approx(truth.move_drain_factor, rel=0.1)
    for pair in params.moves.values():
        assert pair.a_ms == pytest.approx(truth.move_a_ms, rel=0.15)
    assert params.least_utilised_share < 0.3  # the simulator deals new flows round-robin, not to the least utilised
    assert params.fitted_on["recordings"] == ["sim-1"]  # the training recording only


def _move_recording(directory, a_ms: float, b_ms: float, batches: list[int], slow: int = 0,
                    pace: float = 1.0) -> None:
    """Periods of two instances whose done moves, n per period, take exactly pace·(a + b·n) ms (the first `slow`
    periods ten times as long: outliers)."""
    writer = RecordingWriter(directory, {"source": "test", "period_s": 1.0})
    for period, n in enumerate(batches):
        state = cluster([[10.0] * max(batches), [10.0]])
        moves = tuple(Migration(state.flow_ids[f], "nf0", "nf1") for f in range(n))
        duration = (a_ms + b_ms * n) * (10.0 if period < slow else 1.0) * pace
        writer.add_period(state, PeriodRecord(action=Action(moves), executed=True,
                                              moves=tuple(MoveRecord(m.flow, m.src, m.dst, "done", duration)
                                                          for m in moves)))
    writer.add_period(cluster([[10.0], [10.0]]))
    writer.close()


def _drain_recording(directory, a_ms: float, b_ms: float, c: float, batches: list[tuple[int, int]]) -> None:
    """Periods of two instances (capacity 1000 packets/s) whose n done moves take exactly a + b·n + c·w ms, w the
    drain wait of the moved flows: the first one's source reports `drain` packets to serve before its last queued
    one (1 ms each), the others none."""
    writer = RecordingWriter(directory, {"source": "test", "period_s": 1.0})
    for n, drain in batches:
        state = cluster([[10.0] * 6, [10.0]])
        moves = tuple(Migration(state.flow_ids[f], "nf0", "nf1") for f in range(n))
        queues = {flow: (0, 0) for flow in state.flow_ids} | {state.flow_ids[0]: (min(drain, 1), drain)}
        duration = a_ms + b_ms * n + c * drain
        writer.add_period(state, PeriodRecord(action=Action(moves), executed=True, flow_queues=queues,
                                              moves=tuple(MoveRecord(m.flow, m.src, m.dst, "done", duration)
                                                          for m in moves)))
    writer.add_period(cluster([[10.0], [10.0]]))
    writer.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a_ms=st.floats(1.0, 100.0), b_ms=st.floats(0.0, 10.0), c=st.floats(0.0, 2.0),
       batches=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 800)), min_size=12, max_size=20)
       .filter(lambda b: len({n for n, _ in b}) > 1 and len({d for _, d in b}) > 2))
def test_the_drain_factor_is_recovered_from_moves_that_waited_for_queued_packets(tmp_path_factory, a_ms, b_ms, c,
                                                                                 batches):
    directory = tmp_path_factory.mktemp("drain") / "recording"
    _drain_recording(directory, a_ms, b_ms, c, batches)
    params = fit(load_dataset(directory, "train"))
    assert params.move_drain_factor == pytest.approx(c, rel=1e-4, abs=1e-4)
    assert params.pooled_move.a_ms == pytest.approx(a_ms, rel=1e-4, abs=1e-3)
    assert params.pooled_move.b_ms == pytest.approx(b_ms, rel=1e-4, abs=1e-3)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a_ms=st.floats(1.0, 200.0), b_ms=st.floats(0.0, 20.0),
       batches=st.lists(st.integers(1, 6), min_size=8, max_size=20).filter(lambda b: len(set(b)) > 1))
def test_move_durations_are_fitted_exactly_when_they_follow_the_model(tmp_path_factory, a_ms, b_ms, batches):
    directory = tmp_path_factory.mktemp("moves") / "recording"
    _move_recording(directory, a_ms, b_ms, batches)
    params = fit(load_dataset(directory, "train"))
    fitted = params.move("nf0", "nf1")
    assert fitted.a_ms == pytest.approx(a_ms, rel=1e-6, abs=1e-6)
    assert fitted.b_ms == pytest.approx(b_ms, rel=1e-6, abs=1e-6)


def test_the_move_loss_is_chosen_on_validation_and_resists_outliers(tmp_path):
    batches = [1, 2, 3, 4, 5, 6] * 3
    _move_recording(tmp_path / "train", 10.0, 2.0, batches, slow=2)
    _move_recording(tmp_path / "validation", 10.0, 2.0, batches)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["train"], "validation": ["validation"]}))
    params = fit(load_dataset(tmp_path, "train"))
    assert params.fitted_on["move_loss_chosen_on"] == "validation"
    mape = params.fitted_on["move_mape"]
    assert mape[params.fitted_on["move_loss"]] == min(mape.values())
    assert mape["squared"] > 0.1  # the two slow periods pull the least-squares fit off
    assert not params.fitted_on["move_loss"].startswith("squared")
    fitted = params.move("nf0", "nf1")
    assert fitted.a_ms + fitted.b_ms * 3 == pytest.approx(16.0, rel=0.02)


def test_the_pace_of_earlier_batches_scales_the_next_moves(tmp_path):
    """A run whose controller moves flows twice as slowly: the pace term, fitted on two training runs of
    different paces and chosen on a slow validation run, predicts its moves from the batches before them."""
    batches = [1, 2, 3, 4, 5, 6] * 3
    _move_recording(tmp_path / "quick", 10.0, 2.0, batches)
    _move_recording(tmp_path / "slow", 10.0, 2.0, batches, pace=2.0)
    _move_recording(tmp_path / "validation", 10.0, 2.0, batches, pace=2.0)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["quick", "slow"], "validation": ["validation"]}))
    episodes = load_dataset(tmp_path, "train")
    params = fit(episodes)
    assert params.move_pace_window > 0
    assert params.move_pace_exponent == pytest.approx(1.0)
    assert min(params.fitted_on["move_mape_paced"].values()) < 0.01 < min(params.fitted_on["move_mape"].values())
    twin = CalibratedTwin(params)
    (validation,) = [e for e in episodes if e.split[0] == "validation"]
    for t in range(1, len(batches)):  # from the second batch on, the first one's pace is known
        (step,) = twin.rollout(validation.past(t), [validation.action(t)])
        np.testing.assert_allclose(step.migration_ms, validation.durations(t), rtol=1e-6)
    assert CalibratedParams().move_pace_window == 0  # off unless fitted


def test_parameters_round_trip(tmp_path, simulated):
    params = fit(load_dataset(simulated["root"], "train"))
    save_params(params, tmp_path / "p.json")
    assert load_params(tmp_path / "p.json") == params


@pytest.mark.parametrize(("change", "named"), [
    (lambda d: d.update(version=1), "version 1, this code reads version 3 only"),
    (lambda d: d.update(version=2), "version 2, this code reads version 3 only (fit it again"),
    (lambda d: d.update(move_pace_window=-1), "'move_pace_window'"),
    (lambda d: d.pop("batch"), "'batch'"),
    (lambda d: d.update(least_utilised_share=1.5), "'least_utilised_share'"),
    (lambda d: d["pooled_move"].update(a_ms=-1.0), "'pooled_move.a_ms'"),
    (lambda d: d["instances"].update(nf9={"service_ratio": 1.0}), "'instances.nf9'"),
    (lambda d: d.update(kind="something else"), "not a calibrated-twin parameter file"),
])
def test_a_bad_parameter_file_is_refused_by_name(tmp_path, change, named):
    data = CalibratedParams().to_json()
    change(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=named.replace("(", r"\(")) as caught:
        load_params(tmp_path / "p.json")
    assert str(tmp_path / "p.json") in str(caught.value)


def test_a_file_that_is_not_json_is_refused(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not a readable JSON"):
        load_params(tmp_path / "p.json")


def test_nothing_to_fit_on_is_refused(tmp_path):
    _move_recording(tmp_path / "r", 40.0, 3.0, [1, 2])
    with pytest.raises(CalibrationError, match="no two consecutive validation periods"):
        fit(load_dataset(tmp_path / "r", "train"), split="validation")
