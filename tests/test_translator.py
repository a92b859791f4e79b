"""The policy translator: loads on edges become flows, never breaking constraints (4)-(5)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnn_policy.balancing import fit_to_balance, settle, spread
from gnn_policy.plan import Plan
from gnn_policy.refinement import refine
from gnn_policy.translator import LoadRequest, _receiver, translate
from tests.helpers import cluster
from tests.strategies import cluster_states
from twin.flow import FiveTuple
from twin.migration import IndexedAction, apply
from twin.params import CostParams, Thresholds
from twin.state import ClusterState, Flow, Instance


def amounts(state: ClusterState, entries: dict[tuple[int, int], float]) -> np.ndarray:
    matrix = np.zeros((state.n_instances, state.n_instances))
    for (s, r), value in entries.items():
        matrix[s, r] = value
    return matrix


def moved_rate(state: ClusterState, action) -> float:
    return float(state.rate[action.flows].sum())


def test_flows_sum_closest_to_the_requested_load():
    state = cluster([[50, 30, 20, 10], []])
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 60.0})))
    assert moved_rate(state, action) == pytest.approx(60.0)
    assert set(action.dst.tolist()) == {1}


def test_prefers_flows_that_keep_their_sla():
    # nf1's processing latency (50 ms) plus one hop (42.15 ms) breaks a 70 ms SLA but keeps a 110 ms one
    state = cluster([[40, 40], []])
    state = state.with_changes(sla_ms=np.array([70.0, 110.0]))
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 40.0})))
    assert action.flows.tolist() == [1]


def test_buffer_of_the_destination_bounds_the_moves():
    # each 100 pps flow buffers 100 · 42.15 ms = 4.2 packets at the destination; nf1 has room for 10
    state = cluster([[100, 100, 100, 100], []], buffer=10.0)
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 400.0})))
    assert action.flows.size == 2
    apply(state, action)


def test_standby_destination_is_started_only_when_it_receives_flows():
    state = cluster([[50, 50], []], standby=1)
    used = translate(state, LoadRequest(amounts(state, {(0, 2): 50.0})))
    unused = translate(state, LoadRequest(amounts(state, {(1, 2): 50.0})))
    assert used.start.tolist() == [2]
    assert unused.start.size == 0 and unused.flows.size == 0


def test_drain_empties_and_stops_the_instance():
    state = cluster([[10, 5], [100], [200]])
    action = translate(state, LoadRequest(amounts(state, {}), drains=((0, 1),)))
    assert action.stop.tolist() == [0]
    assert sorted(action.flows.tolist()) == [0, 1] and set(action.dst.tolist()) == {1}
    # the drawn destination takes flows only up to the balanced utilisation (315 / 2000); the emptiest the rest
    spilled = translate(state, LoadRequest(amounts(state, {}), drains=((0, 2),)))
    assert spilled.stop.tolist() == [0] and set(spilled.dst.tolist()) == {1}


def test_ceiling_keeps_destinations_below_it():
    state = cluster([[50, 50, 50], [500]])
    capped = translate(state, LoadRequest(amounts(state, {(0, 1): 150.0})), ceiling=0.6)
    assert moved_rate(state, capped) == pytest.approx(50.0)  # a second flow would put nf1 at 60 %


def test_a_sender_that_sheds_is_not_left_at_the_ceiling():
    # nf0 at 63.7 %: the 20 pps flow realises the 20 pps asked for exactly but leaves nf0 at 61.7 %; the smallest
    # flow that clears 60 % (40 pps: the 12 and 5 pps flows do not, the 560 pps one is larger) goes too
    state = cluster([[560, 40, 20, 12, 5], []])
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 20.0})), ceiling=0.6)
    assert sorted(state.rate[action.flows].tolist()) == [20.0, 40.0]
    assert apply(state, action)[0].utilisation[0] < 0.6


def test_a_sender_asked_for_less_than_a_flow_stays_where_it_is():
    state = cluster([[500, 130], []])
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 1e-9})), ceiling=0.6)
    assert action.flows.size == 0


def test_drain_that_cannot_place_every_flow_is_undone():
    state = cluster([[100, 100], [10]], buffer=5.0)  # the second 100 pps flow no longer fits nf1's buffer
    action = translate(state, LoadRequest(amounts(state, {}), drains=((0, 1),)))
    assert action.flows.size == 0 and action.stop.size == 0


def test_amounts_of_the_wrong_shape_are_rejected():
    state = cluster([[10], [10]])
    with pytest.raises(ValueError, match="expected \\(2, 2\\)"):
        translate(state, LoadRequest(np.zeros((3, 3))))


def test_amounts_that_are_not_finite_are_rejected():
    state = cluster([[10], [10]])
    with pytest.raises(ValueError, match="finite"):
        translate(state, LoadRequest(amounts(state, {(0, 1): np.nan})))


# few distinct values, so that ties are frequent
_amounts = st.sampled_from([-50.0, 0.0, 10.0, 30.0, 60.0, 100.0, 1000.0, 1030.0, 1100.0])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), rate=st.sampled_from([5.0, 20.0, 50.0, 100.0]))
def test_receiver_is_the_best_fit_among_those_it_fits_with_ties_to_the_lowest_position(data, rate):
    """Best fit: among the receivers a flow fits, the least asked-for one whose request it does not pass; if it
    passes every request, the most asked-for one. Fitting means below the ceiling, within the buffer, and left
    closer to the balanced load than before (rate < 2·short)."""
    n = data.draw(st.integers(1, 6))
    room, buffer_room, short, asked = (data.draw(st.lists(_amounts, min_size=n, max_size=n)) for _ in range(4))
    latency = data.draw(st.lists(st.sampled_from([1.0, 42.15, 200.0]), min_size=n, max_size=n))
    fits = [rate < room[j] and rate < 2.0 * short[j] and rate * latency[j] / 1000.0 <= buffer_room[j]
            for j in range(n)]
    within = [(asked[j], j) for j in range(n) if fits[j] and asked[j] >= rate]
    beyond = [(-asked[j], j) for j in range(n) if fits[j] and asked[j] < rate]
    expected = min(within)[1] if within else min(beyond)[1] if beyond else -1
    ranking = sorted((asked[j], j) for j in range(n))
    assert _receiver(rate, latency, room, buffer_room, short, asked, ranking) == expected


def test_receivers_are_filled_by_best_fit():
    # a 30 pps flow fills nf2's 30 exactly rather than going to nf1, which is asked for more
    state = cluster([[30], [], []])
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 100.0, (0, 2): 30.0})))
    assert action.dst.tolist() == [2]


def balanced_utilisation(state: ClusterState) -> float:
    return float(state.load_pps[state.active].sum() / state.capacity[state.active].sum())


def test_load_balancing_realises_the_request_exactly_and_never_crosses_the_balanced_load():
    # balanced load 150 pps each: nf0 is 50 above, nf1 50 below. The 85 and the 60 would pass the request, 40 + 10
    # meet it
    state = cluster([[85, 60, 40, 10, 5], [50, 50], [150]])
    balanced = balanced_utilisation(state)
    assert balanced * 1000.0 == pytest.approx(150.0)
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 50.0})), balanced=balanced)
    assert sorted(state.rate[action.flows].tolist()) == [10.0, 40.0]
    # asking for more is cut at the surplus, and nf2, already balanced, takes nothing
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 500.0, (0, 2): 500.0})), balanced=balanced)
    assert sorted(state.rate[action.flows].tolist()) == [10.0, 40.0]
    # scaling (no balanced load) takes the 85 at once: it brings the total closer to the request
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 50.0})))
    assert state.rate[action.flows].tolist() == [85.0]


def test_load_balancing_settles_what_whole_flows_leave():
    # balanced load 10 each. nf0 sheds its 10: the 6 overshoots nf1's deficit of 5 by 1 and the 4 leaves nf2 1
    # short; no flow of nf0 fixes that, but nf1's own 1 pps flow to nf2 does
    state = cluster([[6, 4, 10], [1, 4], [1, 4]])
    for entries in ({(0, 1): 5.0, (0, 2): 5.0}, {}):  # a request without routes is routed like `spread`
        action = translate(state, LoadRequest(amounts(state, entries)), balanced=balanced_utilisation(state))
        assert apply(state, action)[0].load_pps.tolist() == [10.0, 10.0, 10.0]
        assert sorted(zip(state.assignment[action.flows].tolist(), state.rate[action.flows].tolist())) == [
            (0, 4.0), (0, 6.0), (1, 1.0)]


def test_settling_may_put_an_instance_past_the_balance_but_not_further_than_it_started():
    # balanced utilisation 0.4. nf0 (250 pps) is 0.65 pps above its 100; its only small flow, 0.9, puts nf1
    # (1000 pps), which the plan has brought from 5.3 to 0.3 below its 400, 0.6 above it: further than now, not
    # than at the start, and in utilisation a sixteenth of nf0's excess. The variance drops, so the flow moves
    state = ClusterState.from_objects(
        [Instance("nf0", 250.0, 1000.0), Instance("nf1", 1000.0, 1000.0), Instance("nf2", 1000.0, 1000.0)],
        [Flow(f"f{k}", FiveTuple("10.0.0.1", "10.0.0.2", 1000 + k, 80, 6), rate, 110.0, home)
         for k, (rate, home) in enumerate([(99.75, "nf0"), (0.9, "nf0"), (394.7, "nf1"), (400.0, "nf2"), (5.0, "nf2")])])
    plan = Plan(state)
    plan.move(4, 1, 0.0)
    settle(plan, balanced=0.4, ceiling=0.9)
    action = plan.action()
    assert sorted(zip(action.flows.tolist(), action.dst.tolist())) == [(1, 1), (4, 1)]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(2, 7))
def test_fitting_to_the_balance_keeps_the_routes_and_sends_every_surplus(data, n):
    """Every sender sends exactly its surplus, only to instances below the balance, never by a route the request
    leaves out between instances it routes, and in the request's proportions when it routes every receiver; an
    instance the request leaves out is routed like `spread`."""
    above = np.array(data.draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n)), dtype=float)
    above -= above.mean()
    values = np.array(data.draw(st.lists(st.sampled_from([0.0, 5e-324, 0.01, 1.0, 7.5, 50.0]), min_size=n * n,
                                         max_size=n * n))).reshape(n, n)
    hot, cold = above > 0.0, above < 0.0
    fitted = fit_to_balance(values, above)
    assert np.all(fitted >= 0.0) and not fitted[~hot].any() and not fitted[:, ~cold].any()
    if not cold.any():
        return
    np.testing.assert_allclose(fitted.sum(axis=1)[hot], above[hot], rtol=1e-9)
    routes = values[np.ix_(hot, cold)] > 0.0
    between_routed = np.outer(routes.any(axis=1), routes.any(axis=0))
    assert not fitted[np.ix_(hot, cold)][between_routed & ~routes].any()
    if routes.any(axis=0).all():  # every receiver routed: routed senders keep the request's proportions
        routed = routes.any(axis=1)
        requested = values[np.ix_(hot, cold)][routed]
        np.testing.assert_allclose(fitted[np.ix_(hot, cold)][routed] / above[hot][routed][:, None],
                                   requested / requested.sum(axis=1, keepdims=True), atol=1e-12)  # shares: denormals lose digits
    np.testing.assert_allclose(fit_to_balance(np.zeros((n, n)), above), spread(above), atol=1e-9)


def test_refining_drops_the_moves_that_do_not_pay_for_themselves():
    # nf0 at 64 % is asked for 140 pps: the 100 and the 40 go. Without the 40 nf0 is still under Th_high (54 %),
    # so that move only costs; without the 100 it would be back at 60 %
    state = cluster([[500, 100, 40], [300]])
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 140.0})), ceiling=0.6)
    assert sorted(state.rate[action.flows].tolist()) == [40.0, 100.0]
    refined = refine(state, action, CostParams(), Thresholds(high=0.6, low=0.1))
    assert state.rate[refined.flows].tolist() == [100.0]
    # a standby instance that would receive only an unneeded flow is not started
    state = cluster([[500, 100, 40], [300]], standby=1)
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 100.0, (0, 2): 40.0})), ceiling=0.6)
    assert action.start.tolist() == [2]
    refined = refine(state, action, CostParams(), Thresholds(high=0.6, low=0.1))
    assert refined.start.size == 0 and refined.dst.tolist() == [1]


def test_refining_sends_a_flow_where_its_move_costs_less():
    # nf1's queue delays every flow moved onto it; nf2 has room too and no queue
    state = cluster([[500, 100], [300], [300]])
    state = state.with_changes(queue=np.array([0.0, 200.0, 0.0]))
    action = translate(state, LoadRequest(amounts(state, {(0, 1): 100.0})), ceiling=0.6)
    assert action.dst.tolist() == [1]
    refined = refine(state, action, CostParams(), Thresholds(high=0.55, low=0.1))
    assert refined.flows.tolist() == action.flows.tolist() and refined.dst.tolist() == [2]


def test_refining_moves_a_flow_that_keeps_its_sla_instead():
    # both small flows relieve nf0 (at 61 %) alike, but the 15 of the 12 ms SLA violates eq. (1) wherever it goes
    state = cluster([[575, 15, 20], [300]])
    state = state.with_changes(sla_ms=np.array([110.0, 12.0, 110.0, 110.0]))
    refined = refine(state, IndexedAction(np.array([1]), np.array([1])), CostParams(), Thresholds(high=0.6, low=0.1))
    assert refined.flows.tolist() == [2] and refined.dst.tolist() == [1]


def test_refining_moves_one_larger_flow_instead_of_two():
    # nf0 at 65.5 % needs 55.1 pps off: the 70 alone does it, one move instead of two
    state = cluster([[500, 70, 40, 45], [300]])
    refined = refine(state, IndexedAction(np.array([2, 3]), np.array([1, 1])), CostParams(),
                     Thresholds(high=0.6, low=0.1))
    assert refined.flows.tolist() == [1] and refined.dst.tolist() == [1]


def test_refining_sends_a_drained_flow_to_an_instance_left_below_th_low():
    # nf0 (3 %) is drained onto nf1 (40 %); nf2 stays at 8 %, under Th_low = 10 %, and pays ω for the 2 % it
    # lacks: nf0's 30 pps lift it to 11 % and cost as much to move there. Every flow of nf0 still moves
    state = cluster([[30], [400], [80]])
    action = IndexedAction(np.array([0]), np.array([1]), stop=np.array([0]))
    refined = refine(state, action, CostParams(), Thresholds(high=0.6, low=0.1))
    assert refined.flows.tolist() == [0] and refined.dst.tolist() == [2] and refined.stop.tolist() == [0]


@st.composite
def requests(draw, state: ClusterState) -> LoadRequest:
    n = state.n_instances
    scale = float(state.load_pps.max(initial=1.0))
    values = draw(st.lists(st.floats(0.0, 1.5), min_size=n * n, max_size=n * n))
    keep = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
    matrix = np.where(keep, values, 0.0).reshape(n, n) * scale
    active = state.active_indices.tolist()
    drained = draw(st.lists(st.sampled_from(active), unique=True, max_size=len(active)))
    drains = tuple((v, draw(st.integers(0, n - 1))) for v in drained)
    return LoadRequest(matrix, drains)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), state=cluster_states(max_instances=6, max_flows=30, roomy_buffers=False))
def test_translated_actions_never_violate_constraints_4_and_5(data, state):
    request = data.draw(requests(state))
    balancing = data.draw(st.booleans()) and not request.drains
    balanced = balanced_utilisation(state) if balancing else None
    action = translate(state, request, ceiling=data.draw(st.sampled_from([np.inf, 0.6, 0.3])), balanced=balanced)
    after, _ = apply(state, action)  # raises InvalidAction on any violation of (4), (5) or the other checks
    if balancing:  # no instance ends further from the balanced load than it started
        distance = np.abs(state.load_pps - balanced * state.capacity)
        assert np.all(np.abs(after.load_pps - balanced * state.capacity) <= distance + 1e-9)
    assert np.unique(action.flows).size == action.flows.size
    assert not np.any(state.assignment[action.flows] == action.dst)
    drained = {v for v, _ in request.drains}
    assert not drained & set(action.dst.tolist())
    assert set(action.stop.tolist()) <= drained
    assert after.n_flows == state.n_flows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), state=cluster_states(max_instances=6, max_flows=30, roomy_buffers=False))
def test_refining_never_raises_the_cost_and_keeps_drains_and_constraints(data, state):
    request = data.draw(requests(state))
    thresholds = Thresholds(high=data.draw(st.sampled_from([0.3, 0.6, 0.9])), low=0.1)
    action = translate(state, request, ceiling=thresholds.high)
    refined = refine(state, action, CostParams(), thresholds)
    breakdown = apply(state, refined, CostParams(), thresholds)[1]  # raises on any violation of (4), (5)
    assert breakdown.total <= apply(state, action, CostParams(), thresholds)[1].total + 1e-6
    assert refined.stop.tolist() == action.stop.tolist()
    assert set(refined.start.tolist()) <= set(action.start.tolist())
    drained = np.isin(state.assignment[action.flows], action.stop)
    assert set(action.flows[drained].tolist()) <= set(refined.flows.tolist())  # drained flows all still move
    # no instance the translated action left below Th_high is put at or above it
    translated, final = apply(state, action, CostParams(), thresholds)[0], apply(state, refined, CostParams(), thresholds)[0]
    assert not np.any(final.active & (final.utilisation >= thresholds.high)
                      & (translated.utilisation < thresholds.high))
