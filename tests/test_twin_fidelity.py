"""The fidelity benchmark: the twins' rollouts (by hand on a tiny recording), their honesty about the
future, the records of `dm-twin eval`, and bad input refused with exit code 2."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import cluster, simulated_dataset
from tests.strategies import cluster_states, moves
from twin import cli
from twin.fidelity.evaluate import METRICS, collect, load_dataset, records
from twin.fidelity.twins import DefaultTwin, FluidTwin
from twin.migration import Action, Migration, apply
from twin.records import MoveRecord, PeriodRecord, RecordingWriter
from twin.sim import BatchedTwin

TWINS = {"default", "constant-rate", "fluid", "calibrated", "residual"}
"""The residual twin with the shipped model (twin/data/residual.pt)."""


def _state(rates: tuple[float, float, float], b_on: str, queue: tuple[float, float]):
    """nf0 and nf1 (capacity 100 pps) with flows a, b, c; b on `b_on`."""
    state = cluster([[rates[0], rates[1]], [rates[2]]], capacity=100.0, buffer=100.0, sla_ms=100.0)
    assignment = state.assignment.copy()
    assignment[1] = state.instance_index[b_on]
    return state.with_changes(assignment=assignment, queue=np.array(queue, dtype=float))


@pytest.fixture
def tiny(tmp_path):
    """Three periods: at 0 flow b (20 pps) moves from nf0 to nf1 in 60 ms; nf0 drops 3 packets in period 0."""
    writer = RecordingWriter(tmp_path / "tiny", {"source": "test", "period_s": 1.0})
    first = _state((5.0, 20.0, 30.0), "nf0", (4.0, 0.0))
    move = Action((Migration(first.flow_ids[1], "nf0", "nf1"),))
    writer.add_period(first, PeriodRecord(action=move, executed=True,
                                          moves=(MoveRecord(first.flow_ids[1], "nf0", "nf1", "done", 60.0),),
                                          instance_packets={"nf0": (100, 97, 3), "nf1": (50, 50, 0)}))
    writer.add_period(_state((5.0, 25.0, 30.0), "nf1", (1.0, 2.0)))
    writer.add_period(_state((15.0, 25.0, 30.0), "nf1", (0.0, 0.0)))
    writer.close()
    return load_dataset(tmp_path / "tiny", "test")[0]


def test_the_default_twin_is_state_t_persisted_with_the_moves(tiny):
    [step] = DefaultTwin().rollout(tiny.past(0), [tiny.action(0)])
    np.testing.assert_allclose(step.utilisation, [0.05, 0.5])  # b's 20 pps went with it to nf1
    np.testing.assert_allclose(step.queue, [4.0, 0.0])
    np.testing.assert_allclose(step.drops, [0.0, 0.0])  # nothing measured before period 0
    np.testing.assert_allclose(step.migration_ms, [39.2 + 2.95])  # the controller's la_ij of state 0
    # eq. (2): la_ij + la_p + la_q(nf1) = 42.15 + 50 + 0 <= 100 ms, so β·(92.15 − la_q(nf0) = 40) = 52.15
    assert step.costs["migration"] == pytest.approx(52.15)
    assert step.costs["resource"] == 0.0
    assert step.costs["threshold_penalty"] == pytest.approx(100_000 * (0.1 - 0.05))  # nf0 below Th_low
    [later] = DefaultTwin().rollout(tiny.past(1), [tiny.action(1)])
    np.testing.assert_allclose(later.drops, [3.0, 0.0])  # period 0's drops, the last measured


def test_the_benchmark_compares_with_the_raw_measured_values(tiny):
    samples = collect(DefaultTwin(), [tiny], [1], "test")
    predicted, measured = samples[(1, "utilisation")]
    assert predicted == pytest.approx([0.05, 0.5, 0.05, 0.55])
    assert measured == pytest.approx([0.05, 0.55, 0.15, 0.55])
    [utilisation] = [r for r in records("default", samples) if r["metric"] == "utilisation"]
    assert utilisation == {"twin": "default", "k": 1, "metric": "utilisation", "mae": pytest.approx(0.0375),
                           "mape": pytest.approx((0.05 / 0.55 + 0.1 / 0.15) / 4), "n": 4}
    assert samples[(1, "migration_ms")] == ([pytest.approx(42.15)], [60.0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_twin_carries_a_recorded_action_out_as_apply_does(tmp_path_factory, data):
    """On any cluster and any valid moves, the twins' period cost is `apply`'s (at the twin's durations) and
    the default twin's next utilisation is that of `apply`'s next state at the same rates."""
    state = data.draw(cluster_states())
    action = data.draw(moves(state))
    directory = tmp_path_factory.mktemp("property") / "recording"
    writer = RecordingWriter(directory, {"source": "test", "period_s": 1.0})
    recorded = action.to_action(state)
    writer.add_period(state, PeriodRecord(action=recorded, executed=True, moves=tuple(
        MoveRecord(m.flow, m.src, m.dst, "done", 50.0) for m in recorded.migrations)))
    writer.add_period(state)
    writer.close()
    [episode] = load_dataset(directory, "test")
    after, breakdown = apply(state, action)
    [step] = DefaultTwin().rollout(episode.past(0), [episode.action(0)])
    np.testing.assert_allclose(step.utilisation, after.utilisation)
    assert step.costs["migration"] == pytest.approx(breakdown.migration)
    assert step.costs["threshold_penalty"] == pytest.approx(breakdown.threshold_penalty)
    assert len(step.migration_ms) == action.flows.size


def test_a_twin_cannot_read_the_future(tiny):
    past = tiny.past(1)
    assert past.state().same_as(tiny.state(1))
    with pytest.raises(IndexError):
        past.state(2)
    assert past.drops(0).shape == (1, 2)  # period 1's drops are measured only when it ends


def test_the_fluid_twin_steps_as_the_simulator_does(tiny):
    [step] = FluidTwin().rollout(tiny.past(0), [tiny.action(0)])
    sim = BatchedTwin.from_states([tiny.state(0)], step_s=1.0)
    dst = sim.assignment.clone()
    dst[0, 1] = 1
    result = sim.step(dst, torch.zeros_like(sim.active), torch.zeros_like(sim.active))
    np.testing.assert_allclose(step.queue, sim.queue[0].numpy())
    assert step.drops.sum() == pytest.approx(float(result.drops[0]))
    np.testing.assert_allclose(step.utilisation, sim.utilisation[0].numpy())
    assert step.costs["migration"] == pytest.approx(float(result.migration_cost[0]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    simulated_dataset(root, steps=40)
    params = root.parent / "params.json"
    assert cli.main(["calibrate", "--data", str(root), "--out", str(params)]) == 0
    return root, params


def test_eval_writes_one_record_per_twin_horizon_and_metric(dataset, tmp_path):
    root, params = dataset
    out, plots = tmp_path / "fidelity.json", tmp_path / "plots"
    assert cli.main(["eval", "--data", str(root), "--params", str(params), "--json", str(out),
                     "--plots", str(plots)]) == 0
    rows = json.loads(out.read_text())
    assert {(r["twin"], r["k"], r["metric"]) for r in rows} == {
        (t, k, m) for t in TWINS for k in (1, 5, 10) for m in METRICS}
    assert len(rows) == len(TWINS) * 3 * len(METRICS)
    for row in rows:
        assert set(row) == {"twin", "k", "metric", "mae", "mape", "n"}
        assert isinstance(row["n"], int) and row["n"] > 0
        assert row["mae"] >= 0 and (row["mape"] is None or row["mape"] >= 0)
    assert (plots / "utilisation.png").stat().st_size > 0


def _refused(capsys, argv: list[str], named: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_input_is_refused_with_exit_code_2(dataset, tmp_path, capsys):
    root, params = dataset
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(capsys, ["eval", "--data", str(empty), "--params", str(params)], "not a recording")
    _refused(capsys, ["eval", "--data", str(tmp_path / "missing"), "--params", str(params)], "not a directory")
    other = tmp_path / "other"
    other.mkdir()
    recording = next(p for p in root.iterdir() if p.is_dir())
    for part in recording.iterdir():
        (other / part.name).write_bytes(part.read_bytes())
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "schema_version": 99}))
    _refused(capsys, ["eval", "--data", str(other), "--params", str(params)], "schema_version 99")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(params.read_text()), "version": 7}))
    _refused(capsys, ["eval", "--data", str(root), "--params", str(bad)], "version 7")
    _refused(capsys, ["calibrate", "--data", str(root), "--out", str(tmp_path / "no" / "p.json")],
             "does not exist")
    _refused(capsys, ["eval", "--data", str(root), "--params", str(params), "--json", str(tmp_path)],
             "is a directory")
    with pytest.raises(SystemExit) as exited:
        cli.main(["eval", "--data", str(root), "--k", "0"])
    assert exited.value.code == 2
    assert "--k needs horizons" in capsys.readouterr().err
