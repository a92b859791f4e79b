"""The batched twin simulator: mirroring states, scoring like `apply`, per-episode rejection, queues."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import cluster_states, moves
from twin import cost
from twin.flow import FiveTuple
from twin.migration import IndexedAction, InvalidAction, apply
from twin.params import CostParams, Thresholds
from twin.scenario import detect
from twin.sim import DEFAULT_INVALID_PENALTY, BatchedTwin, InvalidReason
from twin.state import ClusterState, Flow, Instance

TUPLE = FiveTuple("10.1.0.1", "10.2.0.1", 40000, 80, 6)


def small_cluster(queue: float = 0.0, buffer: float = 1000.0) -> ClusterState:
    """nf0 holds f0 (300 pps) and f1 (200 pps), nf1 holds f2 (100 pps), nf2 is on standby; 1000 pps each."""
    instances = [
        Instance("nf0", 1000.0, buffer, queue),
        Instance("nf1", 1000.0, buffer, queue),
        Instance("nf2", 1000.0, buffer, queue, active=False),
    ]
    flows = [
        Flow("f0", TUPLE, 300.0, 100.0, "nf0"),
        Flow("f1", TUPLE._replace(src_port=1), 200.0, 100.0, "nf0"),
        Flow("f2", TUPLE._replace(src_port=2), 100.0, 100.0, "nf1"),
    ]
    return ClusterState.from_objects(instances, flows)


def stay(twin: BatchedTwin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return twin.assignment.clone(), torch.zeros_like(twin.active), torch.zeros_like(twin.active)


@st.composite
def actions(draw, state: ClusterState) -> IndexedAction:
    """Moves to other active instances plus arbitrary starts and stops, valid or not, as a policy proposes."""
    action = draw(moves(state))
    n = state.n_instances
    start = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=2))
    stop = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=2))
    return IndexedAction(
        action.flows, action.dst, np.array(start, dtype=np.int64), np.array(stop, dtype=np.int64)
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(cluster_states(roomy_buffers=False), min_size=1, max_size=3))
def test_from_states_then_state_gives_each_state_back(states):
    twin = BatchedTwin.from_states(states)
    assert all(twin.state(b).same_as(state) for b, state in enumerate(states))
    assert twin.scenario_kinds() == [detect(state, Thresholds()).kind for state in states]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_reward_and_validity_agree_with_apply(data):
    states = data.draw(
        st.lists(cluster_states(roomy_buffers=data.draw(st.booleans())), min_size=1, max_size=3)
    )
    proposed = [data.draw(actions(state)) for state in states]
    params, thresholds = CostParams(), Thresholds()
    twin = BatchedTwin.from_states(states, params, thresholds)
    result = twin.step(*twin.action_tensors(proposed))
    for b, (state, action) in enumerate(zip(states, proposed)):
        try:
            after, breakdown = apply(state, action, params, thresholds)
        except InvalidAction:
            assert result.invalid[b] and result.reason[b] != InvalidReason.VALID
            assert result.reward[b] == -DEFAULT_INVALID_PENALTY
            assert np.array_equal(twin.assignment[b, : state.n_flows].numpy(), state.assignment)
            continue
        assert not result.invalid[b]
        assert result.reward[b].item() == pytest.approx(breakdown.reward, rel=1e-9, abs=1e-6)
        assert result.migration_cost[b].item() == pytest.approx(breakdown.migration, rel=1e-9, abs=1e-6)
        assert result.threshold_penalty[b].item() == pytest.approx(
            breakdown.threshold_penalty, rel=1e-9, abs=1e-6
        )
        assert result.resource_cost[b].item() == breakdown.resource
        assert result.sla_violations[b].item() == breakdown.sla_violations
        assert result.migration_time_ms[b].item() == pytest.approx(breakdown.migration_time_ms)
        assert result.moved[b].item() == action.flows.size
        assert np.array_equal(twin.state(b).assignment, after.assignment)
        assert np.array_equal(twin.state(b).active, after.active)


def test_an_invalid_action_is_rejected_for_its_episode_only():
    state = small_cluster()
    twin = BatchedTwin.from_states([state] * 3, invalid_penalty=123.0)
    dst, start, stop = stay(twin)
    dst[:, 1] = 1  # every episode moves f1 from nf0 to nf1
    stop[1, 0] = True  # episode 1 also stops nf0, which still holds f0
    result = twin.step(dst, start, stop)
    assert result.invalid.tolist() == [False, True, False]
    assert result.reasons()[1] is InvalidReason.STOP_NOT_EMPTY
    assert result.reward[1].item() == -123.0 and result.moved[1].item() == 0
    assert twin.state(1).assignment.tolist() == [0, 0, 1]
    assert twin.state(1).active.tolist() == [True, True, False]
    _, breakdown = apply(state, IndexedAction(np.array([1]), np.array([1])))
    for b in (0, 2):
        assert twin.state(b).assignment.tolist() == [0, 1, 1]
        assert result.reward[b].item() == pytest.approx(breakdown.reward)


@pytest.mark.parametrize(
    "reason,edit",
    [
        (InvalidReason.UNKNOWN_INSTANCE, lambda dst, start, stop: dst.__setitem__((0, 0), 7)),
        (
            InvalidReason.UNKNOWN_INSTANCE,
            lambda dst, start, stop: dst.__setitem__((0, 0), 3),
        ),  # padding of episode 0
        (InvalidReason.START_ACTIVE, lambda dst, start, stop: start.__setitem__((0, 0), True)),
        (InvalidReason.STOP_INACTIVE, lambda dst, start, stop: stop.__setitem__((0, 2), True)),
        (InvalidReason.DESTINATION_INACTIVE, lambda dst, start, stop: dst.__setitem__((0, 0), 2)),
        (InvalidReason.STOP_NOT_EMPTY, lambda dst, start, stop: stop.__setitem__((0, 1), True)),
        (InvalidReason.STOP_NOT_EMPTY, lambda dst, start, stop: stop[0, :2].fill_(True)),  # every instance
    ],
)
def test_each_rule_rejects_with_its_reason(reason, edit):
    padded_partner = ClusterState.from_objects([Instance(f"x{k}", 10.0, 10.0) for k in range(4)], [])
    twin = BatchedTwin.from_states([small_cluster(), padded_partner])
    dst, start, stop = stay(twin)
    edit(dst, start, stop)
    result = twin.step(dst, start, stop)
    assert result.reasons() == [reason, InvalidReason.VALID]


def test_buffer_overflow_is_rejected_and_equality_is_allowed():
    state = small_cluster(queue=0.0, buffer=300.0 * 0.04215)  # exactly f0's packets during its move
    twin = BatchedTwin.from_states([state, small_cluster(queue=1.0, buffer=300.0 * 0.04215)])
    dst, start, stop = stay(twin)
    dst[:, 0] = 1
    assert twin.step(dst, start, stop).reasons() == [InvalidReason.VALID, InvalidReason.BUFFER_OVERFLOW]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_moves_conserve_the_load(data):
    states = data.draw(st.lists(cluster_states(), min_size=1, max_size=3))
    twin = BatchedTwin.from_states(states)
    before = twin.load.sum(-1)
    result = twin.step(*twin.action_tensors([data.draw(moves(state)) for state in states]))
    assert not result.invalid.any()
    assert torch.allclose(twin.load.sum(-1), before)
    assert torch.allclose(before, torch.where(twin.flow_live, twin.flow_rate, 0.0).sum(-1))


@settings(max_examples=100, deadline=None)
@given(cluster_states(roomy_buffers=False), st.floats(0.001, 2.0))
def test_queues_follow_the_fluid_model(state, step_s):
    twin = BatchedTwin.from_states([state], step_s=step_s)
    result = twin.step(*stay(twin))
    service = np.where(state.active, state.capacity, 0.0)
    backlog = np.maximum(state.queue + (state.load_pps - service) * step_s, 0.0)
    assert np.allclose(twin.state(0).queue, np.minimum(backlog, state.buffer))
    assert result.drops[0].item() == pytest.approx(np.maximum(backlog - state.buffer, 0.0).sum())
    assert twin.state(0).time_s == pytest.approx(state.time_s + step_s)


def test_the_penalty_uses_the_shared_formula_on_batched_tensors():
    u = torch.tensor([[0.7, 0.05, 0.3], [0.2, 0.3, 0.4]], dtype=torch.float64)
    active = torch.tensor([[True, True, False], [True, True, True]])
    batched = cost.threshold_penalties(u, active, Thresholds(), CostParams())
    rows = [
        cost.threshold_penalty(row.numpy(), mask.numpy(), Thresholds(), CostParams())
        for row, mask in zip(u, active)
    ]
    assert batched.tolist() == pytest.approx(rows)
    variance = cost.utilisation_variance(u, active)
    assert variance.tolist() == pytest.approx([np.var([0.7, 0.05]), np.var([0.2, 0.3, 0.4])])


def test_horizon_ends_the_episodes():
    twin = BatchedTwin.from_states([small_cluster()], horizon=2)
    assert not twin.step(*stay(twin)).done.any()
    assert twin.step(*stay(twin)).done.all()
    with pytest.raises(RuntimeError, match="horizon of 2 steps"):
        twin.step(*stay(twin))


@pytest.mark.parametrize(
    "name,tensors,message",
    [
        ("dst shape", lambda t: (t.assignment[:, :2], *stay(t)[1:]), "dst has shape"),
        ("dst dtype", lambda t: (t.assignment.double(), *stay(t)[1:]), "dst has dtype"),
        ("stop shape", lambda t: (*stay(t)[:2], torch.zeros(1, 2, dtype=torch.bool)), "stop has shape"),
    ],
)
def test_malformed_actions_are_refused_with_the_tensor_named(name, tensors, message):
    twin = BatchedTwin.from_states([small_cluster()])
    with pytest.raises(ValueError, match=message):
        twin.step(*tensors(twin))


def test_construction_errors_are_explicit():
    with pytest.raises(ValueError, match="at least one state"):
        BatchedTwin.from_states([])
    with pytest.raises(ValueError, match="step_s"):
        BatchedTwin.from_states([small_cluster()], step_s=0.0)
    twin = BatchedTwin.from_states([small_cluster()])
    with pytest.raises(ValueError, match="2 actions for 1 episodes"):
        twin.action_tensors([IndexedAction(), IndexedAction()])
