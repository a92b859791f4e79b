"""The closed loop's twin by name (twin.choice; issue 18 section 3): fluid is twin.sim as it was, calibrated
the testbed's fitted physics, residual refused with why; dm-bench --twin and the records' `twin`."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
import torch

from gnn_policy.bench import cli, loop
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin import cost
from twin.calibration import CalibratedParams, InstanceFit, MoveFit
from twin.choice import (
    RESIDUAL_REFUSED,
    TwinChoiceError,
    batched_twin,
    calibrate,
    check_loop_twin,
    load_calibrated,
)
from twin.sim import BatchedTwin, fluid_queue
from twin.state import ClusterState, Flow, Instance

FITTED = CalibratedParams(pooled_instance=InstanceFit(service_ratio=0.5, buffer_ratio=0.25),
                          pooled_move=MoveFit(a_ms=10.0, b_ms=4.0), batch="period", move_drain_factor=0.5,
                          arrival_ratio=0.8, least_utilised_share=1.0)


@pytest.fixture(scope="module")
def batch():
    setup = loop.LoopSetup(episodes=2, periods=12, instances=3, standby=1, seed=5)
    return loop.build(sample_path(), read_flows(sample_path()), setup)


def state(rate: float = 60.0) -> ClusterState:
    instances = [Instance("nf0", 100.0, 400.0, queue_packets=50.0), Instance("nf1", 100.0, 400.0),
                 Instance("nf2", 100.0, 400.0)]
    flows = [Flow(f"f{k}", ("10.0.0.1", "10.0.0.2", 1000 + k, 80, 6), rate, 500.0, "nf0") for k in range(3)]
    return ClusterState.from_objects(instances, flows)


def test_fluid_is_the_twin_as_it_was(batch):
    chosen, plain = batched_twin("fluid", batch), BatchedTwin.from_episodes(batch)
    while not chosen.done.any():
        a, b = (twin.step(twin.assignment.clone(), torch.zeros_like(twin.active), torch.zeros_like(twin.active))
                for twin in (chosen, plain))
        assert torch.equal(a.reward, b.reward) and torch.equal(a.drops, b.drops)
        assert torch.equal(chosen.queue, plain.queue) and torch.equal(chosen.assignment, plain.assignment)


def test_calibrated_twin_queues_at_the_fitted_service_rate_buffer_and_arrival_ratio():
    twin = BatchedTwin.from_states([state()])
    calibrate(twin, FITTED)
    queue = twin.queue.clone()
    twin.step(twin.assignment.clone(), torch.zeros_like(twin.active), torch.zeros_like(twin.active))
    load = torch.tensor([[180.0, 0.0, 0.0]], dtype=torch.float64)
    expected, _ = fluid_queue(queue, 0.8 * load, 0.5 * twin.capacity, 0.25 * twin.buffer, 1.0)
    assert torch.allclose(twin.queue, expected)
    assert twin.migration_ms[0, 0, 1] == 14.0 and twin.migration_ms[0, 1, 1] == 0.0  # a + b: one move's la_ij


@pytest.mark.parametrize("rate", [60.0, 1.0])
def test_calibrated_moves_take_a_plus_b_n_plus_c_times_the_expected_drain_wait(rate):
    twin = BatchedTwin.from_states([state(rate)])
    calibrate(twin, FITTED)
    dst = twin.assignment.clone()
    dst[0, :2] = torch.tensor([1, 2])  # two moves in the period, from nf0 with 50 packets queued
    result = twin.step(dst, torch.zeros_like(twin.active), torch.zeros_like(twin.active))
    la_q = float(cost.queueing_delay_ms(np.array(50.0), np.array(100.0)))
    # a flow of `rate` packets/s has one of its packets in 500 ms of queue with probability 1 - e^(-rate * 0.5)
    wait = la_q * (1.0 - np.exp(-rate * la_q / 1000.0))
    assert float(result.migration_time_ms[0]) == pytest.approx(10.0 + 4.0 * 2 + 0.5 * wait)


def test_calibrated_steering_sends_the_share_phi_of_new_flows_to_the_least_utilised():
    twin = BatchedTwin.from_states([state()])
    arriving = torch.ones_like(twin.assignment, dtype=torch.bool)
    dealt = twin._steer(arriving)
    calibrate(twin, FITTED)
    assert sorted(dealt[0].tolist()) == [0, 1, 2]  # round robin
    assert twin._steer(arriving)[0].tolist() == [1, 1, 1]  # phi = 1: all to the least utilised (nf1, first)
    twin.physics = replace(twin.physics, least_utilised_share=0.0)
    assert torch.equal(twin._steer(arriving), dealt)


def test_the_shipped_calibration_loads_and_residual_is_refused_with_why(batch):
    assert batched_twin("calibrated", batch).physics.arrival_ratio == load_calibrated().arrival_ratio
    with pytest.raises(TwinChoiceError, match="per-flow"):
        check_loop_twin("residual")
    with pytest.raises(TwinChoiceError, match="unknown twin 'magic'"):
        batched_twin("magic", batch)


def run_cli(argv):
    with mock.patch.dict(os.environ):
        return cli.main([str(arg) for arg in argv])


def test_dm_bench_names_the_twin_in_every_record_and_refuses_residual(tmp_path, capsys):
    small = ["--experiment", "closed-loop", "--episodes", "1", "--periods", "8", "--instances", "3", "--standby", "1",
             "--policies", "ofm", "--stabilizer", "on"]
    with mock.patch("gnn_policy.bench.loop.build") as build:
        assert run_cli([*small, "--twin", "residual", "--json", tmp_path / "r.json"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"dm-bench: --twin residual: {RESIDUAL_REFUSED}" and not build.called
    for name in ("fluid", "calibrated"):
        with mock.patch("sys.stdout"):
            assert run_cli([*small, "--twin", name, "--json", tmp_path / f"{name}.json"]) == 0
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["meta"]["twin"] == name and [r["twin"] for r in report["records"]] == [name]
    with mock.patch("sys.stdout"):
        assert run_cli([*small, "--json", tmp_path / "d.json"]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["records"][0]["twin"] == "fluid"
