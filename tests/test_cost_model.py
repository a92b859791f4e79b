"""The cost model: eq. (1)-(2), C_R, the ω penalties and constraints (4)-(5)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.strategies import cluster_states, moves
from twin import cost
from twin.flow import FiveTuple
from twin.migration import Action, IndexedAction, InvalidAction, Migration, apply
from twin.params import CostParams, Thresholds
from twin.state import ClusterState, Flow, Instance

PARAMS = CostParams()
TUPLE = FiveTuple("10.1.0.1", "10.2.0.1", 40000, 80, 6)


def two_instance_state(sla_ms: float = 100.0, src_queue: float = 200.0, dst_queue: float = 100.0) -> ClusterState:
    """nf0 at 1000 pps with `src_queue` packets queued (200 → 200 ms), nf1 likewise with `dst_queue`."""
    return ClusterState.from_objects(
        [Instance("nf0", 1000.0, 10_000.0, queue_packets=src_queue), Instance("nf1", 1000.0, 10_000.0,
                                                                              queue_packets=dst_queue)],
        [Flow("f0", TUPLE, 100.0, sla_ms, "nf0"), Flow("f1", TUPLE._replace(src_port=40001), 300.0, sla_ms, "nf1")])


def test_queueing_delay_is_backlog_over_capacity():
    assert cost.queueing_delay_ms(np.array([250.0]), np.array([1000.0]))[0] == pytest.approx(250.0)


def test_batch_migration_time_is_openNF_linear_fit():
    assert cost.batch_migration_ms(10, PARAMS) == pytest.approx(39.2 + 29.5)
    assert cost.batch_migration_ms(0, PARAMS) == 0.0
    assert PARAMS.single_flow_migration_ms == pytest.approx(42.15)


def test_cost_within_sla_matches_eq2_first_branch():
    # la_ij 42.15 + la_p 50 + la_q_dst 100 = 192.15 <= SLA 200: β·(192.15 − la_q_src 200)
    state = two_instance_state(sla_ms=200.0)
    c = cost.flow_migration_cost(state, np.array([0]), np.array([1]), PARAMS)
    assert c[0] == pytest.approx(192.15 - 200.0)


def test_cost_beyond_sla_matches_eq2_second_branch():
    # 192.15 > SLA 100: δ + β·(192.15 − 100)
    state = two_instance_state(sla_ms=100.0)
    c = cost.flow_migration_cost(state, np.array([0]), np.array([1]), CostParams(delta=7.0, beta=2.0))
    assert c[0] == pytest.approx(7.0 + 2.0 * (192.15 - 100.0))


def test_resource_cost_and_threshold_penalties():
    assert cost.resource_cost(2, PARAMS) == 2 * PARAMS.resource_cost
    assert cost.resource_cost(-1, PARAMS) == -PARAMS.resource_cost
    u = np.array([0.7, 0.05, 0.3, 0.9])
    active = np.array([True, True, True, False])
    expected = PARAMS.omega * ((0.7 - 0.6) + (0.1 - 0.05))
    assert cost.threshold_penalty(u, active, Thresholds(high=0.6, low=0.1), PARAMS) == pytest.approx(expected)


def test_buffer_occupancy_adds_packets_arriving_during_the_move():
    state = two_instance_state()
    occupancy = cost.buffer_occupancy(state, np.array([0]), np.array([1]))
    assert occupancy[1] == pytest.approx(100.0 + 100.0 * 0.04215)
    assert occupancy[0] == pytest.approx(200.0)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_empty_migration_set_costs_only_C_R(data):
    state = data.draw(cluster_states())
    standby = np.flatnonzero(~state.active)
    idle_active = np.flatnonzero(state.active & (state.flows_per_instance == 0))
    start = np.array(data.draw(st.lists(st.sampled_from(standby.tolist()), unique=True)) if standby.size else [],
                     dtype=np.int64)
    stop = np.array(data.draw(st.lists(st.sampled_from(idle_active.tolist()), unique=True, max_size=max(
        0, idle_active.size - 1))) if idle_active.size else [], dtype=np.int64)
    after, breakdown = apply(state, IndexedAction(start=start, stop=stop))
    assert breakdown.migration == 0.0 and breakdown.flow_costs.size == 0
    assert breakdown.resource == PARAMS.resource_cost * (start.size - stop.size)
    assert breakdown.total == pytest.approx(breakdown.resource + breakdown.threshold_penalty)
    assert np.array_equal(after.assignment, state.assignment)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_moves_conserve_total_load(data):
    state = data.draw(cluster_states())
    after, _ = apply(state, data.draw(moves(state)))
    assert after.load_pps.sum() == pytest.approx(state.load_pps.sum())
    assert after.n_flows == state.n_flows
    assert np.bincount(after.assignment, minlength=state.n_instances).sum() == state.n_flows  # (4): one instance each


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_apply_then_reverse_restores_the_state(data):
    state = data.draw(cluster_states())
    action = data.draw(moves(state)).to_action(state)
    after, _ = apply(state, action)
    restored, _ = apply(after, action.reversed())
    assert restored.same_as(state)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_sla_branch_switches_exactly_at_eq1(data):
    state = data.draw(cluster_states(min_instances=2, max_instances=3))
    assume(state.n_flows > 0 and state.active.sum() >= 2)
    action = data.draw(moves(state))
    assume(action.flows.size > 0)
    f, j = action.flows[:1], action.dst[:1]
    i = state.assignment[f]
    arrival = (state.migration_ms[i, j] + state.processing_ms[j]
               + cost.queueing_delay_ms(state.queue[j], state.capacity[j]))[0]
    params = CostParams(delta=data.draw(st.floats(1.0, 1000.0)), beta=data.draw(st.floats(0.1, 10.0)))
    at_bound = state.with_changes(sla_ms=np.where(np.arange(state.n_flows) == f[0], arrival, state.sla_ms))
    below = at_bound.with_changes(sla_ms=np.where(np.arange(state.n_flows) == f[0], np.nextafter(arrival, 0),
                                                  state.sla_ms))
    assert cost.sla_holds(at_bound, f, j)[0] and not cost.sla_holds(below, f, j)[0]
    met = cost.flow_migration_cost(at_bound, f, j, params)[0]
    missed = cost.flow_migration_cost(below, f, j, params)[0]
    src_delay = cost.queueing_delay_ms(state.queue[i], state.capacity[i])[0]
    assert met == pytest.approx(params.beta * (arrival - src_delay))
    assert missed == pytest.approx(params.delta, rel=1e-6, abs=1e-6)  # δ + β·(arrival − SLA) with SLA → arrival


def test_breakdown_totals_and_migration_time():
    state = two_instance_state(sla_ms=100.0)
    after, breakdown = apply(state, Action((Migration("f0", "nf0", "nf1"),)))
    assert breakdown.flow_costs[0] == pytest.approx(PARAMS.delta + 192.15 - 100.0)
    assert breakdown.migration == pytest.approx(breakdown.flow_costs.sum())
    assert breakdown.sla_violations == 1
    assert breakdown.migration_time_ms == pytest.approx(42.15)
    assert after.utilisation.tolist() == pytest.approx([0.0, 0.4])
    expected_penalty = PARAMS.omega * (0.1 - 0.0)
    assert breakdown.threshold_penalty == pytest.approx(expected_penalty)
    assert breakdown.total == pytest.approx(breakdown.migration + expected_penalty)
    assert breakdown.reward == -breakdown.total


INVALID = [
    (Action((Migration("nope", "nf0", "nf1"),)), "unknown flow 'nope'"),
    (Action((Migration("f0", "nf0", "nf9"),)), "unknown instance 'nf9'"),
    (Action((Migration("f0", "nf1", "nf2"),)), "flow 'f0' is on 'nf0', not on source 'nf1'"),
    (Action((Migration("f0", "nf0", "nf1"), Migration("f0", "nf0", "nf1"))), "flow 'f0' is moved more than once"),
    (Action((Migration("f0", "nf0", "nf0"),)), "already on"),
    (Action((Migration("f0", "nf0", "nf2"),)), "destination 'nf2' is not active"),
    (Action(stop=("nf0",)), "instance 'nf0' still holds 1 flows"),
    (Action(start=("nf0",)), "instance 'nf0' is already active"),
    (Action(stop=("nf2",)), "instance 'nf2' is not active"),
    (Action((Migration("f0", "nf0", "nf1"),), stop=("nf0", "nf1")), "'nf1' still holds"),
    (Action((Migration("f1", "nf1", "nf3"),)), "moving flows to 'nf3' needs"),
]


@pytest.mark.parametrize("action,message", INVALID)
def test_invalid_actions_name_the_offender_and_leave_the_state_unchanged(action, message):
    instances = [Instance("nf0", 1000.0, 500.0), Instance("nf1", 1000.0, 500.0),
                 Instance("nf2", 1000.0, 500.0, active=False), Instance("nf3", 1000.0, 5.0, queue_packets=4.0)]
    flows = [Flow("f0", TUPLE, 100.0, 90.0, "nf0"), Flow("f1", TUPLE._replace(src_port=1), 300.0, 90.0, "nf1")]
    state = ClusterState.from_objects(instances, flows)
    snapshot = ClusterState.from_objects(instances, flows)
    with pytest.raises(InvalidAction, match=message):
        apply(state, action)
    assert state.same_as(snapshot)


def test_buffer_constraint_is_inclusive_at_the_limit():
    # 300 pps for 42.15 ms = 12.645 packets; with a queue of 4 the destination needs exactly 16.645
    base = [Instance("nf0", 1000.0, 500.0), Instance("nf1", 1000.0, 16.645, queue_packets=4.0)]
    flows = [Flow("f0", TUPLE, 300.0, 90.0, "nf0")]
    apply(ClusterState.from_objects(base, flows), Action((Migration("f0", "nf0", "nf1"),)))
    tighter = [base[0], Instance("nf1", 1000.0, 16.6, queue_packets=4.0)]
    with pytest.raises(InvalidAction, match="constraint 5"):
        apply(ClusterState.from_objects(tighter, flows), Action((Migration("f0", "nf0", "nf1"),)))


@given(free=st.floats(0.0, 1e6), la_ij=st.floats(0.01, 1e4))
def test_largest_rate_buffered_inverts_the_packets_buffered_during_a_move(free, la_ij):
    rate = cost.largest_rate_buffered(free, la_ij)
    assert cost.packets_buffered_during_move(rate, la_ij) == pytest.approx(free, rel=1e-12, abs=1e-9)
