"""The DeepMigration policy: exact log-probabilities, the double GNN, the guard and always-valid output."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnn_policy.actions import act, objective, proportional, propose
from gnn_policy.agent import DeepMigration
from gnn_policy.base import Problem, score
from gnn_policy.gn import GNPolicyNet, NetConfig
from gnn_policy.graph import to_pyg
from gnn_policy.optimal import Optimal
from gnn_policy.registry import make_policy
from gnn_policy.views import (
    GraphView,
    drain_counts,
    drain_estimate,
    drain_order,
    drain_prices,
    scale_in_view,
    scale_out_view,
    views,
)
from tests.helpers import cluster
from tests.strategies import cluster_states
from twin.params import Thresholds
from twin.scenario import ScenarioKind

THRESHOLDS = Thresholds(high=0.6, low=0.1)


@pytest.fixture(scope="module")
def net() -> GNPolicyNet:
    torch.manual_seed(3)
    return GNPolicyNet(NetConfig(hidden=8, steps=2, stay_bias=0.0))


def test_log_probability_matches_a_hand_computation(net):
    state = cluster([[300, 200], [100], [50]])
    view = GraphView(state, to_pyg(state))
    sample = act(net, [view], [THRESHOLDS], greedy=False, generator=torch.Generator().manual_seed(11))[0]

    with torch.no_grad():
        logits = net(view.graph, torch.tensor([[0.6, 0.1]])).edge.tolist()
    senders, receivers = view.graph.edge_index.tolist()
    levels = net.config.levels
    expected = 0.0
    for row, s, r in zip(logits, senders, receivers):
        drawn_fraction = sample.request.amounts[s, r] / state.load_pps[s]
        level = min(range(len(levels)), key=lambda k: abs(levels[k] - drawn_fraction))
        expected += row[level] - math.log(sum(math.exp(x) for x in row))
    assert sample.log_prob.item() == pytest.approx(expected, abs=1e-4)


def test_drain_destinations_add_their_log_probability_without_replacement(net):
    state = cluster([[5], [3], [200, 100], [150], [250]])  # nf0 and nf1 underloaded
    problem = Problem.of(state, THRESHOLDS)
    view = scale_in_view(problem)
    assert set(view.drained) == {0, 1}
    sample = act(net, [view], [THRESHOLDS], greedy=False, generator=torch.Generator().manual_seed(5))[0]
    edges_only = act(net, [GraphView(state, view.graph)], [THRESHOLDS], greedy=False,
                     generator=torch.Generator().manual_seed(5))[0]

    with torch.no_grad():
        node = net(view.graph, torch.tensor([[0.6, 0.1]])).node.tolist()
    nodes = view.graph.instance_index.tolist()
    first, second = (nodes.index(d) for _, d in sample.request.drains)
    assert first != second
    log_first = node[first] - math.log(sum(math.exp(x) for x in node))
    rest = [x for k, x in enumerate(node) if k != first]
    log_second = node[second] - math.log(sum(math.exp(x) for x in rest))
    assert (sample.log_prob - edges_only.log_prob).item() == pytest.approx(log_first + log_second, abs=1e-4)


def test_modified_graphs_of_the_double_gnn():
    state = cluster([[400, 300], [100], [50]], standby=2)
    problem = Problem.of(state, THRESHOLDS)
    assert problem.scenario.kind is ScenarioKind.SCALE_OUT
    grown = scale_out_view(problem)
    assert grown.graph.num_nodes == 4 and grown.drained == ()
    assert [v.label for v in views(problem)] == ["current", "scale-out"]

    state = cluster([[5], [300], [200]])
    view = scale_in_view(Problem.of(state, THRESHOLDS))
    assert view.drained == (0,) and view.graph.instance_index.tolist() == [1, 2]


def test_scale_in_graphs_drain_shares_of_what_the_load_judgment_lets_go():
    state = cluster([[5], [3], [4], [6], [2], [8], [7], [9], [300], [250]])  # 8 cold instances, one flow each
    problem = Problem.of(state, THRESHOLDS)
    # every drain of one flow saves C_R for about one migration: draining all 8 pays best, 7 is its neighbour
    assert drain_counts(problem) == [2, 4, 6, 7, 8]
    assert [v.label for v in views(problem)] == ["current", *(f"scale-in {k}" for k in (2, 4, 6, 7, 8))]
    assert views(problem)[1].drained == drain_order(problem)[:2]


def test_scale_in_graphs_include_the_count_the_drain_estimate_favours():
    # five cold instances: three of 20 flows at 3 %, and two of 95 flows of 1 pps at 9.5 %, just under Th_low.
    # Emptying any of them costs more than the C_R its stop saves, but the first three also end an ω penalty of
    # 7 points of utilisation each, and their 90 pps lift the other two to Th_low; emptying one of those two
    # costs far more than its C_R and penalty. So 3 drains pay best, a count no share of 5 gives
    flows = [[1.5] * 20, [1.5] * 20, [1.5] * 20, [1] * 95, [1] * 95]
    state = cluster([*flows, [300], [250], [280]])
    problem = Problem.of(state, THRESHOLDS)
    assert len(problem.scenario.underloaded) == 5
    order, prices = drain_prices(problem)
    assert order[:3] == (0, 1, 2) and (prices > 1000.0).all()
    assert int(np.argmin(drain_estimate(problem, order, prices))) == 2
    assert 3 in drain_counts(problem)
    decision = Optimal(time_limit_s=10).decide(problem.as_scenario(ScenarioKind.SCALE_IN))
    assert sorted(decision.action.stop.tolist()) == [0, 1, 2], decision.reason


def test_scale_in_graphs_drain_the_instances_cheapest_to_empty_first():
    # nf0 is the least loaded but holds six flows; nf1 holds one: emptying nf1 costs a sixth of emptying nf0
    state = cluster([[10, 10, 10, 10, 10, 10], [80], [400], [450]])
    problem = Problem.of(state, Thresholds(high=0.6, low=0.1))
    assert problem.scenario.underloaded == (0, 1)
    assert drain_order(problem) == (1, 0)
    assert scale_in_view(problem, 1).drained == (1,)


def test_proportional_plan_keeps_net_loads_and_only_sends_from_net_senders():
    amounts = np.array([[0.0, 6.0, 2.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    plan = proportional(amounts)
    net = amounts.sum(axis=1) - amounts.sum(axis=0)
    np.testing.assert_allclose(plan.sum(axis=1) - plan.sum(axis=0), net)
    assert (plan[net <= 0] == 0).all() and (plan[:, net >= 0] == 0).all()


def test_proposals_are_the_requests_of_the_greedy_samples(net):
    problem = Problem.of(cluster([[5], [3], [200, 100], [150], [250]]), THRESHOLDS)  # scale-in: drains too
    graph_views = views(problem)
    thresholds = [THRESHOLDS] * len(graph_views)
    samples = act(net, graph_views, thresholds, greedy=True)
    proposals = propose(net, graph_views, thresholds)
    assert len(proposals) == len(samples) > 1
    for (request, mean_request), sample in zip(proposals, samples):
        for mine, theirs in ((request, sample.request), (mean_request, sample.mean_request)):
            np.testing.assert_array_equal(mine.amounts, theirs.amounts)
            assert mine.drains == theirs.drains


def test_greedy_mode_is_deterministic(net):
    problem = Problem.of(cluster([[400, 300], [100], [50]], standby=1), THRESHOLDS)
    agent = DeepMigration(net, guard=False)
    first, second = agent.decide(problem), agent.decide(problem)
    assert np.array_equal(first.action.flows, second.action.flows)
    assert np.array_equal(first.action.dst, second.action.dst)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=cluster_states(max_instances=6, max_flows=30, roomy_buffers=False),
       high=st.floats(0.3, 0.9), guard=st.booleans())
def test_decisions_are_always_valid_and_the_guard_never_loses_to_a_baseline(net, state, high, guard):
    problem = Problem.of(state, Thresholds(high=high, low=0.1))
    agent = DeepMigration(net, guard=guard)
    outcome = score(problem, agent.decide(problem))
    assert outcome.valid, outcome.error
    if guard and problem.scenario.kind is not ScenarioKind.NONE:
        best = DeepMigration(net).best_baseline(problem)  # fresh: the same random-baseline draws as `agent`
        if best is not None:
            assert objective(problem.scenario.kind, outcome.breakdown) <= objective(problem.scenario.kind,
                                                                                   best.breakdown)


def test_guard_counts_when_it_replaces_the_gnn_action():
    calm = GNPolicyNet(NetConfig(hidden=8, steps=1, stay_bias=50.0))  # always "move nothing"
    problem = Problem.of(cluster([[400, 300], [100], [50]]), THRESHOLDS)
    agent = DeepMigration(calm)
    decision = agent.decide(problem)
    assert agent.guard_fired == 1 and agent.decisions == 1
    assert decision.action.flows.size > 0 and "guard" in decision.reason


def test_registry_loads_a_checkpoint(tmp_path, net):
    from gnn_policy import checkpoint

    path = tmp_path / "dm.pt"
    checkpoint.save(path, net)
    policy = make_policy("deepmigration", checkpoint=str(path), seed=4)
    assert isinstance(policy, DeepMigration) and policy.name == "deepmigration"
    problem = Problem.of(cluster([[400, 300], [100], [50]]), THRESHOLDS)
    assert score(problem, policy.decide(problem)).valid


def test_optimal_is_warm_started_from_the_agent_except_as_the_trainers_teacher(tmp_path, net):
    """The yardstick is never less balanced (or dearer) than the policy it measures; the teacher of
    `gnn_policy.train` must not learn from the policy's own answers."""
    from gnn_policy import checkpoint

    path = tmp_path / "dm.pt"
    checkpoint.save(path, net)
    optimal = make_policy("optimal", checkpoint=str(path), time_limit_s=2.0)
    assert "deepmigration" in {policy.name for policy in optimal.warm_start}
    teacher = make_policy("optimal", time_limit_s=2.0, with_agent=False)
    assert "deepmigration" not in {policy.name for policy in teacher.warm_start}
    problem = Problem.of(cluster([[50, 30, 20, 7, 3], [10], [40, 5]]), THRESHOLDS).as_scenario(
        ScenarioKind.LOAD_BALANCE)
    agent = score(problem, make_policy("deepmigration", checkpoint=str(path)).decide(problem))
    assert score(problem, optimal.decide(problem)).breakdown.variance_after <= agent.breakdown.variance_after + 1e-12
