"""The closed loop in the twin (issue 17): no clairvoyance, a rejected action charged as doing nothing,
and the metrics' small functions against hand-made sequences."""
import numpy as np
import pytest
import torch

from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.closed_loop import (
    episode_metrics,
    run_closed_loop,
    sla_violations,
)
from gnn_policy.registry import make_policy
from trace_replay.episodes import build_episodes
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind
from twin.sim import BatchedTwin

PCAP = sample_path()
SHAPE = {"n_episodes": 2, "n_steps": 21, "n_instances": 4, "n_standby": 2, "bin_s": 1.0, "max_flows": 2000}


@pytest.fixture(scope="module")
def batch():
    return build_episodes(PCAP, table=read_flows(PCAP), seed=200, **SHAPE)


class Idle(Policy):
    """Never acts."""

    name = "idle"
    handles = frozenset(ScenarioKind) - {ScenarioKind.NONE}

    def _decide(self, problem: Problem) -> Decision:
        return Decision(IndexedAction())


class StartsAnActiveInstance(Idle):
    """Always proposes an action the twin rejects (starting instance 0, which is active)."""

    def decide(self, problem: Problem) -> Decision:
        return Decision(IndexedAction(start=np.array([0])))


class Recorder(Idle):
    """Keeps every state it is shown."""

    def __init__(self):
        self.seen = []

    def decide(self, problem: Problem) -> Decision:
        self.seen.append(problem.state)
        return super().decide(problem)


# --- the metrics' small functions ---------------------------------------------------------------

def test_sla_violations_use_the_mean_queue_and_the_hold_time():
    """Instance 0: queue 0 → 40 packets at 1000 pkt/s (20 ms mean); instance 1 empty; la_p 50 ms."""
    capacity, processing = torch.tensor([[1000.0, 1000.0]]), torch.tensor([[50.0, 50.0]])
    queue_start, queue_end = torch.tensor([[0.0, 0.0]]), torch.tensor([[40.0, 0.0]])
    rate = torch.tensor([[5.0, 5.0, 0.0, 5.0, 5.0]])
    assignment = torch.tensor([[0, 0, 0, 1, -1]])
    hold = torch.tensor([[0.0, 0.0, 0.0, 42.0, 0.0]])
    sla = torch.tensor([[71.0, 69.0, 10.0, 91.0, 10.0]])
    # flow 0: 70 ms <= 71; flow 1: 70 > 69; flow 2 sends nothing; flow 3: 42 + 50 = 92 > 91; flow 4 is empty
    assert sla_violations(rate, assignment, hold, processing, queue_start, queue_end, capacity, sla).tolist() == [2]


# --- the loop -----------------------------------------------------------------------------------

def test_the_policy_sees_the_previous_period_only(batch):
    twin = BatchedTwin.from_episodes(batch)
    recorders = [Recorder() for _ in range(batch.n_episodes)]
    run_closed_loop(twin, recorders)
    for b, recorder in enumerate(recorders):
        assert len(recorder.seen) == batch.n_steps - 2  # period 0 has no measurement
        for t, state in enumerate(recorder.seen, start=1):
            slots = np.flatnonzero(batch.live(t - 1)[b] & batch.live(t)[b])
            assert state.flow_ids == tuple(batch.flow_ids[b, slots])
            assert np.allclose(state.rate, batch.rate[b, t - 1, slots])


def test_a_rejected_action_counts_as_doing_nothing(batch):
    idle = run_closed_loop(BatchedTwin.from_episodes(batch), [Idle(), Idle()])
    rejected = run_closed_loop(BatchedTwin.from_episodes(batch), [StartsAnActiveInstance()] * 2)
    for mine, reference in zip(rejected, idle, strict=True):
        metrics, expected = episode_metrics(mine, batch.step_s), episode_metrics(reference, batch.step_s)
        assert metrics["invalid_actions"] == len(mine) - 1
        assert metrics["invalid_reasons"] == {"START_ACTIVE": len(mine) - 1}
        assert [p.invalid_reason for p in mine] == [None] + ["START_ACTIVE"] * (len(mine) - 1)
        assert metrics["total_cost"] == pytest.approx(expected["total_cost"])
        assert [p.cost for p in mine] == pytest.approx([p.cost for p in reference])
        assert metrics["migrations"] == 0 and metrics["instance_s"] == expected["instance_s"]


@pytest.mark.parametrize("name", ["ofm", "size-greedy", "random", "pairwise"])
def test_shipped_policies_close_the_loop_without_invalid_actions(batch, name):
    periods = run_closed_loop(BatchedTwin.from_episodes(batch), [make_policy(name, seed=0) for _ in range(2)])
    for mine in periods:
        metrics = episode_metrics(mine, batch.step_s)
        assert metrics["periods"] == batch.n_steps - 1 and metrics["invalid_actions"] == 0
        assert metrics["total_cost"] > 0 and metrics["instance_s"] >= len(mine)
        assert all(p.active >= 1 for p in mine)
    assert sum(len(p.migrated) for run in periods for p in run) > 0 or name == "pairwise"
