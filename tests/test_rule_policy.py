"""The ablations of issue 19, section 7: `deepmigration-rule` (the learned heads replaced by constants) and
`deepmigration-random` (random weights, deterministic per seed)."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from gnn_policy.actions import realise
from gnn_policy.base import Problem
from gnn_policy.registry import REPLICAS, make_policy
from gnn_policy.rule_policy import (
    HOLD_KINDS,
    HOLD_TARGET,
    RULE_TARGET,
    HoldingRule,
    RuleMigration,
    random_weights,
    rule_count,
    rule_request,
    rule_view,
)
from tests.helpers import cluster
from tests.strategies import cluster_states
from twin.migration import apply
from twin.params import Thresholds
from twin.scenario import ScenarioKind

TH = Thresholds(high=0.6, low=0.1)


def problem_of(state) -> Problem:
    return Problem.of(state, TH)


def same_action(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in ((a.flows, b.flows), (a.dst, b.dst), (a.start, b.start),
                                                 (a.stop, b.stop)))


@given(state=cluster_states(max_instances=6, max_flows=30))
@settings(max_examples=40, deadline=None)
def test_the_rules_action_is_the_translators_answer_to_the_constant_request(state):
    problem = problem_of(state)
    if problem.scenario.kind is ScenarioKind.NONE:
        return
    for target in (0.3, RULE_TARGET, 0.5):
        decision = RuleMigration(target).decide(problem)
        assert same_action(decision.action, realise(problem, rule_request(problem, target)))
        apply(state, decision.action, problem.params, TH)  # valid: raises InvalidAction otherwise


def test_scale_out_starts_ceil_load_over_target_instances_and_balances_them():
    state = cluster([[300.0, 200.0, 150.0], [100.0]], standby=3)  # 750 pps on two 1000 pps instances
    problem = problem_of(state)
    assert problem.scenario.kind is ScenarioKind.SCALE_OUT
    target = 0.3
    assert rule_count(problem, target) == math.ceil(750.0 / (target * 1000.0)) == 3
    view = rule_view(problem, target)
    assert sorted(view.graph.instance_index.tolist()) == [0, 1, 2]
    request = rule_request(problem, target)
    net = request.amounts.sum(axis=1) - request.amounts.sum(axis=0)
    assert np.allclose(state.load_pps[:3] - net[:3], 250.0) and request.drains == ()


def test_scale_in_drains_to_the_least_loaded_staying_instance():
    state = cluster([[50.0], [40.0], [300.0], [200.0]])
    problem = problem_of(state)
    assert problem.scenario.kind is ScenarioKind.SCALE_IN
    request = rule_request(problem, 0.5)  # 590 pps: two instances at 50 %
    drained = [v for v, _ in request.drains]
    assert len(drained) == 2 and set(drained) <= {0, 1}
    assert all(d == 3 for _, d in request.drains[:1])


def test_bad_target_is_named():
    with pytest.raises(ValueError, match="target utilisation"):
        RuleMigration(0.0)


def test_random_weights_are_deterministic_per_seed():
    first, again, other = random_weights(5), random_weights(5), random_weights(6)
    for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(first.net.state_dict().values(),
                                                     other.net.state_dict().values()))
    problem = problem_of(cluster([[400.0, 300.0], [50.0], [60.0]], standby=1))
    assert same_action(first.decide(problem).action, again.decide(problem).action)


def test_registry_builds_the_ablations():
    assert isinstance(make_policy("deepmigration-rule"), RuleMigration)
    assert make_policy("deepmigration-rule").target == RULE_TARGET
    assert REPLICAS["deepmigration-random"] == 3
    assert make_policy("deepmigration-random", seed=2).name == "deepmigration"


def test_the_hold_rule_holds_on_load_balancing_and_scale_in_and_acts_as_the_rule_otherwise():
    hold = make_policy("deepmigration-rule-hold")
    assert isinstance(hold, HoldingRule) and hold.target == HOLD_TARGET == 0.3 and hold.hold == HOLD_KINDS
    busy = Problem.of(cluster([[300.0, 200.0, 150.0], [100.0]], standby=3), Thresholds(high=0.6, low=0.1))
    assert busy.scenario.kind is ScenarioKind.SCALE_OUT
    assert same_action(hold.decide(busy).action, RuleMigration(HOLD_TARGET).decide(busy).action)
    for kind in HOLD_KINDS:
        problem = replace(busy, scenario=replace(busy.scenario, kind=kind))
        assert hold.holds(problem) and hold.decide(problem).action.flows.size == 0
        assert not hold.holds(busy.as_scenario(kind))  # the paper's forced scenarios are never held
