"""The baselines of section VI.B (docs/baselines.md): OFM, Size-greedy, Pairwise and Random."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn_policy.base import Problem, score
from gnn_policy.baselines import BASELINES, OFM, Pairwise, RandomScaleIn, SizeGreedy
from gnn_policy.plan import Plan
from tests.strategies import cluster_states
from twin import cost
from twin.flow import FiveTuple
from twin.migration import apply
from twin.params import CostParams, Thresholds
from twin.scenario import ScenarioKind
from twin.state import ClusterState, Flow, Instance

TUPLE = FiveTuple("10.1.0.1", "10.2.0.1", 40000, 80, 6)
TH = Thresholds(high=0.6, low=0.1)
OUT, IN, LB = ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN, ScenarioKind.LOAD_BALANCE


def cluster(loads, capacity=1000.0, standby=0, buffer=10_000.0, sla=100.0) -> ClusterState:
    """`loads[k]` lists the flow rates on active instance nf{k}; `standby` idle instances sb{k} follow."""
    instances = [Instance(f"nf{k}", capacity, buffer) for k in range(len(loads))]
    instances += [Instance(f"sb{k}", capacity, buffer, active=False) for k in range(standby)]
    flows = [Flow(f"f{k}.{i}", TUPLE._replace(src_port=100 * k + i), float(r), sla, f"nf{k}")
             for k, rates in enumerate(loads) for i, r in enumerate(rates)]
    return ClusterState.from_objects(instances, flows)


PARAMS = CostParams()


def decide(policy, state, kind=None, thresholds=TH, params=PARAMS):
    problem = Problem.of(state, thresholds, params)
    if kind is not None:
        problem = problem.as_scenario(kind)
    decision = policy.decide(problem)
    outcome = score(problem, decision)
    assert outcome.valid, outcome.error
    return problem, decision, outcome


def after_state(problem, decision) -> ClusterState:
    after, _ = apply(problem.state, decision.action, problem.params, problem.thresholds)
    return after


def gap(state) -> float:
    u = state.utilisation[state.active]
    return float(u.max() - u.min()) if u.size else 0.0


# --- plan bookkeeping -------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(state=cluster_states(standby=False), data=st.data())
def test_plan_move_all_books_as_moves_one_by_one(state, data):
    """The translator chooses moves on lists of its own and books them at once: the plan must end the same."""
    moves = []
    for f in data.draw(st.lists(st.integers(0, max(state.n_flows - 1, 0)), unique=True, max_size=state.n_flows)):
        others = np.flatnonzero(state.active & (np.arange(state.n_instances) != state.assignment[f]))
        if others.size:
            moves.append((f, int(others[data.draw(st.integers(0, others.size - 1))]), data.draw(st.floats(0.0, 50.0))))
    one_by_one, at_once = Plan(state), Plan(state)
    for f, d, packets in moves:
        one_by_one.move(f, d, packets)
    at_once.move_all(*(list(values) for values in zip(*moves)) if moves else ([], [], []))
    for attribute in ("load", "incoming", "count", "moved", "received"):
        np.testing.assert_allclose(getattr(at_once, attribute), getattr(one_by_one, attribute), atol=1e-6)
    assert at_once.action().flows.tolist() == one_by_one.action().flows.tolist()
    assert at_once.action().dst.tolist() == one_by_one.action().dst.tolist()
    if moves:
        with pytest.raises(AssertionError):
            at_once.move_all([moves[0][0]], [moves[0][1]], [0.0])


# --- registry ---------------------------------------------------------------------------------

def test_registry_names_and_scenarios():
    assert set(BASELINES) == {"ofm", "size-greedy", "pairwise", "random"}
    assert all(BASELINES[name].name == name for name in BASELINES)
    assert OFM.handles == {OUT, IN, LB}
    assert SizeGreedy.handles == {OUT} and Pairwise.handles == {LB} and RandomScaleIn.handles == {IN}
    decision = SizeGreedy().decide(Problem.of(cluster([[50.0], [500.0]]), TH).as_scenario(LB))
    assert not decision.feasible and "does not handle lb" in decision.reason


# --- every output is a valid action (property) ----------------------------------------------------

POLICIES = [(OFM, OUT), (OFM, IN), (OFM, LB), (SizeGreedy, OUT), (Pairwise, LB), (RandomScaleIn, IN)]


@pytest.mark.parametrize("policy_cls,kind", POLICIES, ids=[f"{p.name}-{k.value}" for p, k in POLICIES])
@settings(max_examples=60, deadline=None)
@given(state=st.one_of(cluster_states(max_instances=6, max_flows=30),
                       cluster_states(max_instances=6, max_flows=30, roomy_buffers=False)),
       thresholds=st.sampled_from([Thresholds(0.6, 0.1), Thresholds(0.55, 0.15), Thresholds(0.3, 0.2)]))
def test_every_decision_passes_apply(policy_cls, kind, state, thresholds):
    problem = Problem.of(state, thresholds).as_scenario(kind)
    decision = policy_cls().decide(problem)
    if decision.feasible:
        outcome = score(problem, decision)
        assert outcome.valid, outcome.error
    else:
        assert decision.reason and decision.action.flows.size == 0


@pytest.mark.parametrize("policy,kind", [(OFM(), OUT), (SizeGreedy(), OUT), (OFM(), LB), (Pairwise(), LB),
                                         (OFM(), IN), (RandomScaleIn(), IN)])
def test_tiny_buffers_give_an_infeasible_decision_naming_the_buffer(policy, kind):
    loads = {OUT: [[300.0, 200.0, 150.0], [100.0]], LB: [[300.0, 200.0], [50.0], [40.0]],
             IN: [[30.0, 20.0], [300.0], [300.0]]}[kind]
    state = cluster(loads, standby=1, buffer=0.0)
    decision = policy.decide(Problem.of(state, TH).as_scenario(kind))
    assert not decision.feasible
    assert "buffer" in decision.reason


# --- OFM ---------------------------------------------------------------------------------------

def test_ofm_scale_out_moves_highest_scores_to_one_new_instance_until_safe():
    # nf0 at 0.80. Scores r·(LA − la_p 50 − la_ij 42.15): big 300·(70 − 92.15) < 0, a 150·17.85 = 2677,
    # b 100·17.85 = 1785, c 250·(95 − 92.15) = 712
    instances = [Instance("nf0", 1000.0, 10_000.0), Instance("nf1", 1000.0, 10_000.0),
                 Instance("sb0", 1000.0, 10_000.0, active=False)]
    flows = [Flow("big", TUPLE, 300.0, 70.0, "nf0"), Flow("a", TUPLE, 150.0, 110.0, "nf0"),
             Flow("b", TUPLE, 100.0, 110.0, "nf0"), Flow("c", TUPLE, 250.0, 95.0, "nf0"),
             Flow("other", TUPLE, 300.0, 100.0, "nf1")]
    state = ClusterState.from_objects(instances, flows)
    problem, decision, _ = decide(OFM(), state)
    assert problem.scenario.kind is OUT
    assert decision.action.start.tolist() == [2]
    # a (nf0 → 0.65), then b (→ 0.55 < 0.6): done; the larger c has the lower score
    assert [state.flow_ids[f] for f in decision.action.flows] == ["a", "b"]
    assert set(decision.action.dst.tolist()) == {2}


@settings(max_examples=80, deadline=None)
@given(state=cluster_states(max_instances=7, max_flows=35), safe=st.sampled_from([None, 0.4, 0.5]))
def test_ofm_scale_out_keeps_new_instances_under_the_safe_load(state, safe):
    problem = Problem.of(state, TH).as_scenario(OUT)
    decision = OFM(safe_load=safe).decide(problem)
    if not decision.feasible:
        return
    after = after_state(problem, decision)
    limit = TH.high if safe is None else safe
    started = decision.action.start
    assert np.all(after.utilisation[started] < limit)
    assert set(decision.action.dst.tolist()) <= set(started.tolist())
    # one new instance per overloaded source, which only sheds flows
    sources = state.assignment[decision.action.flows]
    assert set(sources.tolist()) <= set(problem.scenario.overloaded)
    assert all(len(set(decision.action.dst[sources == s].tolist())) == 1 for s in set(sources.tolist()))


def test_ofm_scale_out_without_standby_is_infeasible():
    decision = OFM().decide(Problem.of(cluster([[400.0, 300.0], [100.0]]), TH))
    assert not decision.feasible and "no standby instance" in decision.reason


def test_ofm_scale_out_safe_load_above_th_high_leaves_milder_overloads():
    state = cluster([[400.0, 300.0], [100.0]], standby=1)                  # nf0 at 0.70 >= Th_high 0.6
    decision = OFM(safe_load=0.75).decide(Problem.of(state, TH))
    assert decision.feasible and decision.action.flows.size == 0 and "safe load" in decision.reason


def test_ofm_scale_out_when_standby_runs_out_leaves_the_rest_overloaded():
    state = cluster([[400.0, 300.0], [400.0, 250.0], [100.0]], standby=1)
    _, decision, _ = decide(OFM(), state)
    assert decision.feasible and decision.action.start.tolist() == [3]
    assert set(state.assignment[decision.action.flows].tolist()) == {0}   # the hottest instance only
    assert "nf1 stay overloaded" in decision.reason


@settings(max_examples=80, deadline=None)
@given(state=cluster_states(max_instances=6, max_flows=30))
def test_ofm_load_balancing_never_widens_the_gap(state):
    problem = Problem.of(state, TH).as_scenario(LB)
    decision = OFM().decide(problem)
    if decision.feasible:
        assert gap(after_state(problem, decision)) <= gap(state) + 1e-9


def test_ofm_load_balancing_places_the_largest_pick_on_the_lightest_instance():
    # average 0.375: nf0 (0.65) and nf3 (0.50) are heavy; nf1 (0.05) and nf2 (0.30) are light
    state = cluster([[250.0, 200.0, 200.0], [50.0], [300.0], [500.0]], sla=110.0)
    _, decision, outcome = decide(OFM(), state, LB)
    moves = {state.flow_ids[f]: state.instance_ids[d] for f, d in zip(decision.action.flows, decision.action.dst)}
    # picks, largest first, sources staying >= 0.375: 250 of nf0 (→ 0.40); its 200s would drop it
    # to 0.20 and nf3's 500 to 0. The pick goes to nf1, the lightest, reaching 0.30 <= average
    assert moves == {"f0.0": "nf1"}
    assert outcome.breakdown.variance_after < outcome.breakdown.variance_before


def test_ofm_load_balancing_skips_flows_that_fail_the_sla_test():
    # SLA 70 < la_p 50 + la_ij 42.15: no flow is safe
    decision = OFM().decide(Problem.of(cluster([[300.0, 200.0, 200.0], [50.0]], sla=70.0), TH).as_scenario(LB))
    assert not decision.feasible and "SLA" in decision.reason


def _merge_pairs(state, decision):
    src = state.assignment[decision.action.flows]
    return sorted(set(zip(src.tolist(), decision.action.dst.tolist())))


def _best_matching_value(state, thresholds, params, safe):
    """Brute force of OFM's scale-in program: every matching of feasible pairs with positive benefit."""
    u = state.utilisation
    cold = [s for s in np.flatnonzero(state.active & (u <= thresholds.low)).tolist()]
    empty = [s for s in cold if state.flows_per_instance[s] == 0]
    n_active = int(state.active.sum())
    stopped_empty = empty[:max(0, min(len(empty), n_active - 1))]
    value = params.resource_cost * len(stopped_empty)
    targets = [d for d in state.active_indices.tolist() if d not in stopped_empty]
    edges = {}
    for s in cold:
        flows = state.flows_on(s)
        if flows.size == 0:
            continue
        for d in targets:
            if d == s:
                continue
            dst = np.full(flows.size, d)
            if state.queue[d] + cost.migrated_buffer_packets(state, flows, dst).sum() > state.buffer[d]:
                continue
            if (state.load_pps[d] + state.load_pps[s]) / state.capacity[d] >= safe:
                continue
            benefit = params.resource_cost - cost.flow_migration_cost(state, flows, dst, params).sum()
            key = frozenset((s, d))
            if benefit > 0 and benefit > edges.get(key, 0.0):
                edges[key] = benefit
    best = 0.0
    items = list(edges.items())
    for r in range(1, len(items) + 1):
        for combo in itertools.combinations(items, r):
            nodes = [n for pair, _ in combo for n in pair]
            if len(nodes) == len(set(nodes)):
                best = max(best, sum(b for _, b in combo))
    return value + best


@settings(max_examples=80, deadline=None)
@given(state=st.one_of(cluster_states(max_instances=6, max_flows=12),
                       cluster_states(max_instances=6, max_flows=12, roomy_buffers=False)),
       thresholds=st.sampled_from([Thresholds(0.6, 0.1), Thresholds(0.6, 0.3), Thresholds(0.9, 0.5)]))
def test_ofm_scale_in_is_an_exact_matching_and_stops_merged_sources(state, thresholds):
    params = CostParams()
    problem = Problem.of(state, thresholds, params).as_scenario(IN)
    decision = OFM().decide(problem)
    if decision.feasible:
        assert score(problem, decision).valid
        pairs = _merge_pairs(state, decision)
        nodes = [n for pair in pairs for n in pair]
        assert len(nodes) == len(set(nodes))                               # a matching
        stopped = set(decision.action.stop.tolist())
        assert {s for s, _ in pairs} <= stopped                            # merged sources end stopped
        for s, _ in pairs:                                                 # ... with all their flows gone
            assert set(state.flows_on(s).tolist()) <= set(decision.action.flows.tolist())
        value = (params.resource_cost * len(stopped)
                 - cost.flow_migration_cost(state, decision.action.flows, decision.action.dst, params).sum())
    else:
        value = 0.0
    assert value == pytest.approx(_best_matching_value(state, thresholds, params, thresholds.high),
                                  abs=1e-4 * max(1, state.n_instances))


def test_ofm_scale_in_merges_pairs_and_respects_the_safe_load():
    # nf0 and nf1 at 5 % (one flow each, benefit R − 92.15 for any merge); nf2 at 0.50 would reach
    # the safe load 0.55; nf3 and nf4 at 0.30 can each take one. Two merges beat merging nf0 and nf1.
    state = cluster([[50.0], [50.0], [500.0], [300.0], [300.0]])
    _, decision, _ = decide(OFM(safe_load=0.55), state, IN)
    pairs = _merge_pairs(state, decision)
    assert {s for s, _ in pairs} == {0, 1} and {d for _, d in pairs} == {3, 4}
    assert sorted(decision.action.stop.tolist()) == [0, 1]
    # with nf3 and nf4 too full, only one merge is possible: nf0 and nf1 merge into each other
    state = cluster([[50.0], [50.0], [500.0], [580.0], [580.0]])
    _, decision, _ = decide(OFM(safe_load=0.55), state, IN)
    assert _merge_pairs(state, decision) == [(0, 1)]          # equal benefits: the colder, then lower, source


def test_ofm_scale_in_stops_an_empty_underloaded_instance_without_a_partner():
    state = cluster([[], [300.0], [300.0]])
    _, decision, outcome = decide(OFM(), state, IN)
    assert decision.action.stop.tolist() == [0] and decision.action.flows.size == 0
    assert outcome.breakdown.resource == -CostParams().resource_cost


# --- Size-greedy ---------------------------------------------------------------------------------

def test_size_greedy_uses_existing_room_before_starting_an_instance():
    # nf0 at 0.70; nf1 at 0.20 has room for 0.39 below 0.6: the largest flow (150) fits
    state = cluster([[150.0, 300.0, 100.0, 150.0], [200.0]], standby=1)
    _, decision, _ = decide(SizeGreedy(), state)
    assert decision.action.start.size == 0
    assert [state.flow_ids[f] for f in decision.action.flows] == ["f0.1"]   # 300, the largest: nf0 → 0.40
    assert decision.action.dst.tolist() == [1]


def test_size_greedy_starts_an_instance_only_when_no_existing_one_fits():
    # nf1 at 0.55 has room for < 0.05; the 300 flow needs a new instance, then nf0 is at 0.40
    state = cluster([[300.0, 200.0, 200.0], [550.0]], standby=2)
    _, decision, _ = decide(SizeGreedy(), state)
    assert decision.action.start.tolist() == [2]
    assert [state.flow_ids[f] for f in decision.action.flows] == ["f0.0"]
    # a second overloaded instance reuses the started one before starting another
    state = cluster([[300.0, 200.0, 200.0], [550.0], [200.0, 250.0, 200.0]], standby=2)
    _, decision, _ = decide(SizeGreedy(), state)
    assert decision.action.start.tolist() == [3]
    moved = {state.flow_ids[f]: state.instance_ids[d] for f, d in zip(decision.action.flows, decision.action.dst)}
    assert moved == {"f0.0": "sb0", "f2.1": "sb0"}


@settings(max_examples=60, deadline=None)
@given(state=cluster_states(max_instances=6, max_flows=30))
def test_size_greedy_keeps_destinations_below_th_high(state):
    problem = Problem.of(state, TH).as_scenario(OUT)
    decision = SizeGreedy().decide(problem)
    if decision.feasible and decision.action.flows.size:
        after = after_state(problem, decision)
        assert np.all(after.utilisation[np.unique(decision.action.dst)] < TH.high)


# --- Pairwise ----------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(state=st.one_of(cluster_states(max_instances=7, max_flows=35),
                       cluster_states(max_instances=7, max_flows=35, roomy_buffers=False)),
       rounds=st.sampled_from([None, 1]))
def test_pairwise_never_widens_the_max_min_gap(state, rounds):
    problem = Problem.of(state, TH).as_scenario(LB)
    decision = Pairwise(max_rounds=rounds).decide(problem)
    if decision.feasible:
        assert gap(after_state(problem, decision)) <= gap(state) + 1e-9


def test_pairwise_moves_the_largest_flow_that_narrows_the_pair():
    # nf0 0.80, nf1 0.10, gap 700 pps: the 450 flow narrows it (→ 0.35 / 0.55); the next round pairs
    # nf1 (now the heavier) with nf0 and moves nf1's own 100 flow (→ 0.45 / 0.45); then nothing improves
    state = cluster([[450.0, 250.0, 100.0], [100.0]])
    _, decision, outcome = decide(Pairwise(), state, LB)
    assert [state.flow_ids[f] for f in decision.action.flows] == ["f0.0", "f1.0"]
    assert outcome.breakdown.variance_after == pytest.approx(0.0, abs=1e-12)
    # a flow larger than the gap never moves
    decision = Pairwise().decide(Problem.of(cluster([[700.0], [100.0]]), TH).as_scenario(LB))
    assert not decision.feasible and "narrows" in decision.reason


def test_pairwise_with_even_load_has_nothing_to_do():
    decision = Pairwise().decide(Problem.of(cluster([[300.0], [300.0]]), TH).as_scenario(LB))
    assert decision.feasible and decision.action.flows.size == 0


# --- Random ------------------------------------------------------------------------------------

def test_random_is_reproducible_per_seed():
    rng = np.random.default_rng(0)
    loads = [[20.0, 30.0, 10.0]] * 4 + [list(rng.uniform(30, 60, 6)) for _ in range(8)]
    problem = Problem.of(cluster(loads), TH)
    assert problem.scenario.kind is IN

    def run(seed):
        action = RandomScaleIn(seed).decide(problem).action
        return action.flows.tolist(), action.dst.tolist(), action.stop.tolist()

    assert run(7) == run(7)
    assert len({str(run(seed)) for seed in range(5)}) > 1


def test_random_drains_whole_instances_or_leaves_them():
    # nf0's 90-pps flow fits nowhere below 0.6 (nf2, nf3 at 0.55); nf1's flows fit
    state = cluster([[90.0, 5.0], [20.0, 20.0], [550.0], [550.0]])
    _, decision, _ = decide(RandomScaleIn(1), state, IN)
    assert decision.action.stop.tolist() == [1]
    assert set(state.assignment[decision.action.flows].tolist()) == {1}
    assert "fits no instance" in decision.reason


@settings(max_examples=60, deadline=None)
@given(state=cluster_states(max_instances=6, max_flows=30), seed=st.integers(0, 3))
def test_random_stops_every_drained_instance_and_keeps_destinations_below_th_high(state, seed):
    problem = Problem.of(state, TH).as_scenario(IN)
    decision = RandomScaleIn(seed).decide(problem)
    if decision.feasible:
        stopped = set(decision.action.stop.tolist())
        assert set(state.assignment[decision.action.flows].tolist()) <= stopped
        if decision.action.flows.size:
            after = after_state(problem, decision)
            assert np.all(after.utilisation[np.unique(decision.action.dst)] < TH.high)
