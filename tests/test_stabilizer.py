"""The stabilizer between the measured state and any policy (gnn_policy.stabilizer)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.baselines import OFM
from gnn_policy.stabilizer import (
    SNAPSHOT_VERSION,
    Stabilizer,
    StabilizerConfig,
    StabilizerError,
    migration_charge,
    trim,
)
from tests.helpers import cluster
from tests.strategies import cluster_states
from twin.migration import IndexedAction, InvalidAction, apply
from twin.params import CostParams, Thresholds
from twin.scenario import ScenarioKind, drainable

THRESHOLDS = Thresholds(high=0.6, low=0.1, var=0.01)
BARE = StabilizerConfig.off()
"""Every mechanism neutral; each test turns on the one it looks at."""


@dataclass
class Scripted(Policy):
    """Returns the next of its actions whatever the problem, and remembers the problems it saw."""

    name: ClassVar[str] = "scripted"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(ScenarioKind) - {ScenarioKind.NONE}
    actions: list

    def __post_init__(self):
        self.seen: list[Problem] = []

    def _decide(self, problem: Problem) -> Decision:
        self.seen.append(problem)
        return Decision(self.actions.pop(0) if self.actions else IndexedAction())


def move(flow: int, dst: int) -> IndexedAction:
    return IndexedAction(np.array([flow]), np.array([dst]))


def test_the_virtual_queue_follows_eq_12_by_hand():
    # nf0 at 71 % is overloaded; moving its 10 packets/s flow to nf1 lowers ω by 1,000 (v = 10: v·1,000 >> Q·C).
    state = cluster([[700.0, 10.0], [100.0]])
    policy = Scripted([move(1, 1)] * 3)
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"budget_per_period": 50.0, "v": 10.0}), THRESHOLDS)
    # C(t) of one move, eq. (2) within the SLA: β·(la_ij + la_p_dst + la_q_dst − la_q_src), queues empty.
    c = 39.2 + 2.95 + 50.0
    expected_q, q = [], 0.0
    for cost in (c, c, c, 0.0, 0.0):
        q = max(q + cost - 50.0, 0.0)
        expected_q.append(q)
    assert expected_q == pytest.approx([42.15, 84.3, 126.45, 76.45, 26.45])
    got = [stabilizer.decide(state, policy, now_s=t, period_s=1.0) for t in range(5)]
    assert [d.decision.action.flows.size for d in got] == [1, 1, 1, 0, 0]
    assert [d.budget_queue for d in got] == pytest.approx(expected_q)
    assert stabilizer.budget_queue == pytest.approx(26.45)
    # The policy reads Q(t), the queue before its period's charge.
    assert [p.budget_queue for p in policy.seen] == pytest.approx([0.0, 42.15, 84.3, 126.45, 76.45])


def test_a_large_deficit_makes_doing_nothing_the_better_candidate():
    state = cluster([[700.0, 10.0], [100.0]])
    config = StabilizerConfig.off().updated({"budget_per_period": 50.0, "v": 1.0})
    fresh = Stabilizer(config, THRESHOLDS)
    assert fresh.decide(state, Scripted([move(1, 1)]), 0.0, 1.0).decision.action.flows.size == 1
    indebted = Stabilizer.restore({**fresh.snapshot(), "budget_queue": 1e4}, config, THRESHOLDS)
    held = indebted.decide(state, Scripted([move(1, 1)]), 1.0, 1.0)
    assert held.scenario is ScenarioKind.NONE and held.decision.action.flows.size == 0
    assert held.note.startswith("budget")
    assert indebted.budget_queue == pytest.approx(1e4 - 50.0)


@st.composite
def valid_actions(draw):
    """A state and a valid action on it: some instances started, some stopped (each with its whole drain),
    other flows moved anywhere active."""
    state = draw(cluster_states(min_instances=3, max_flows=30))
    active, standby = state.active_indices, np.flatnonzero(~state.active)
    stop = np.array(draw(st.lists(st.sampled_from(active.tolist()), unique=True, max_size=active.size - 1)),
                    dtype=np.int64)
    start = np.array(draw(st.lists(st.sampled_from(standby.tolist()), unique=True)) if standby.size else [],
                     dtype=np.int64)
    targets = np.concatenate([np.setdiff1d(active, stop), start])
    flows, dst = [], []
    for f in range(state.n_flows):
        src = state.assignment[f]
        if src in stop or draw(st.booleans()):
            choices = targets[targets != src]
            if choices.size:
                flows.append(f)
                dst.append(int(choices[draw(st.integers(0, choices.size - 1))]))
    action = IndexedAction(np.array(flows, dtype=np.int64), np.array(dst, dtype=np.int64), start, stop)
    try:
        apply(state, action)
    except InvalidAction:
        assume(False)
    return state, action


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_actions(), st.integers(1, 12))
def test_a_trimmed_action_is_valid_and_within_the_cap(case, cap):
    state, action = case
    trimmed = trim(state, action, cap)
    assert trimmed.flows.size <= cap
    apply(state, trimmed)  # raises InvalidAction if the trim broke the action
    assert set(trimmed.flows.tolist()) <= set(action.flows.tolist())
    assert set(trimmed.stop.tolist()) <= set(action.stop.tolist())
    if action.flows.size <= cap:
        assert trimmed is action


def test_the_trim_keeps_the_moves_from_the_hottest_instance_and_drops_an_incomplete_drain():
    state = cluster([[550.0, 100.0, 5.0], [300.0, 30.0], [20.0, 20.0, 20.0]])
    hot_big, hot_small, warm = 1, 2, 4
    action = IndexedAction(np.array([hot_big, hot_small, warm, 5, 6, 7]), np.array([1, 1, 0, 0, 0, 1]),
                           stop=np.array([2]))
    apply(state, action)
    trimmed = trim(state, action, 2)
    assert trimmed.stop.size == 0  # nf2's drain (3 moves) does not fit
    assert trimmed.flows.tolist() == [hot_big, hot_small]


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 5_000.0), st.floats(0.1, 30.0), st.floats(0.05, 5.0), st.integers(1, 30),
       st.sampled_from(["ewma", "mean", "last"]))
def test_the_estimate_of_a_constant_rate_is_that_rate(rate, horizon_s, period_s, periods, estimator):
    state = cluster([[rate], [0.0]])
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"estimator": estimator, "horizon_s": horizon_s}),
                            Thresholds(high=1.0, low=0.0, var=1e9))
    for t in range(periods):
        stabilizer.decide(state, OFM(), t * period_s, period_s)
        assert stabilizer.estimated.rate[0] == pytest.approx(rate)


def test_the_ewma_smooths_a_fall_and_the_flows_add_up_to_the_totals_estimate():
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"estimator": "ewma", "horizon_s": 5.0}), THRESHOLDS)
    stabilizer.decide(cluster([[1000.0], []]), OFM(), 0.0, 1.0)
    stabilizer.decide(cluster([[100.0], [50.0]]), OFM(), 1.0, 1.0)
    alpha = 1.0 - np.exp(-1.0 / 5.0)
    total = 1000.0 + alpha * (150.0 - 1000.0)  # the total's EWMA
    per_flow = np.array([1000.0 + alpha * (100.0 - 1000.0), 50.0])  # where the load is: a new flow at its rate
    assert stabilizer.estimated.rate.tolist() == pytest.approx((per_flow * total / per_flow.sum()).tolist())


def test_a_rise_of_the_total_counts_at_once():
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"estimator": "ewma", "horizon_s": 5.0}), THRESHOLDS)
    stabilizer.decide(cluster([[100.0], []]), OFM(), 0.0, 1.0)
    stabilizer.decide(cluster([[1000.0], [50.0]]), OFM(), 1.0, 1.0)
    assert stabilizer.estimated.rate.sum() == pytest.approx(1050.0)


@pytest.mark.parametrize("estimator", ["ewma", "mean"])
def test_bursty_flows_are_not_counted_several_times(estimator):
    """Each second 10 new flows send 10 packets and then nothing while they stay live (as most flows of the
    traces do): the load is 100 packets/s, which an estimate per flow alone put at several times that."""
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"estimator": estimator, "horizon_s": 5.0}),
                            Thresholds(high=1.0, low=0.0, var=1e9))
    live: list[str] = []
    for t in range(30):
        live = (live + [f"b{t}.{i}" for i in range(10)])[-80:]  # a flow stays live 8 s
        rates = [10.0 if name.startswith(f"b{t}.") else 0.0 for name in live]
        state = cluster([rates]).with_changes(flow_ids=tuple(live))
        stabilizer.decide(state, OFM(), float(t), 1.0)
        assert stabilizer.estimated.rate.sum() == pytest.approx(100.0)


@settings(max_examples=60, deadline=None)
@given(cluster_states(max_flows=25), st.booleans())
def test_with_everything_off_the_decision_is_the_policys(state, disabled):
    config = StabilizerConfig(enabled=False) if disabled else StabilizerConfig.off()
    stabilizer = Stabilizer(config, THRESHOLDS)
    expected = OFM().decide(Problem.of(state, THRESHOLDS))
    for t in range(2):
        got = stabilizer.decide(state, OFM(), float(t), 1.0)
        assert got.note == "" and got.decision.feasible == expected.feasible
        assert got.decision.reason == expected.reason
        for name in ("flows", "dst", "start", "stop"):
            assert np.array_equal(getattr(got.decision.action, name), getattr(expected.action, name))


def test_scale_in_waits_for_its_window_then_acts():
    state = cluster([[20.0], [30.0], [300.0]])  # nf0 and nf1 at 2-3 %: one instance too many
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"scale_in_window_s": 3.0}), THRESHOLDS)
    got = [stabilizer.decide(state, OFM(), float(t), 1.0) for t in range(4)]
    assert [d.scenario for d in got[:2]] == [ScenarioKind.NONE] * 2
    assert "scale_in held 2 s of its 3 s window" in got[1].note and not got[1].decision.action.flows.size
    assert got[2].scenario is ScenarioKind.SCALE_IN and got[2].decision.action.stop.size == 1
    assert got[3].scenario is ScenarioKind.NONE  # after acting, the need must hold anew


def test_a_scale_in_need_interrupted_by_an_overload_starts_its_window_again():
    quiet, busy = cluster([[20.0], [30.0], [300.0]], standby=1), cluster([[20.0], [30.0], [400.0, 300.0]], standby=1)
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"scale_in_window_s": 2.0}), THRESHOLDS)
    kinds = [stabilizer.decide(s, OFM(), float(t), 1.0).scenario
             for t, s in enumerate([quiet, busy, quiet, quiet])]
    assert kinds == [ScenarioKind.NONE, ScenarioKind.SCALE_OUT, ScenarioKind.NONE, ScenarioKind.SCALE_IN]


def test_scale_out_acts_at_once():
    stabilizer = Stabilizer(StabilizerConfig(), THRESHOLDS)  # the defaults
    got = stabilizer.decide(cluster([[500.0, 200.0], [300.0]], standby=1), OFM(), 0.0, 1.0)
    assert got.scenario is ScenarioKind.SCALE_OUT and got.decision.action.flows.size


@pytest.mark.parametrize("rates, kind", [
    ([[640.0], [560.0]], ScenarioKind.NONE),  # 64 %: above Th_high but inside the band
    ([[660.0], [400.0]], ScenarioKind.SCALE_OUT),  # at Th_high + tolerance
    ([[60.0], [100.0]], ScenarioKind.SCALE_IN),  # 6 %, inside the band, but the load fits on one instance
    ([[300.0], [280.0]], ScenarioKind.NONE),  # 58 % fits on one at Th_high, not at Th_high − tolerance
    ([[250.0], [250.0], [250.0]], ScenarioKind.SCALE_IN),  # none underloaded: 75 % fits on two at 55 %
    ([[40.0], [580.0]], ScenarioKind.LOAD_BALANCE),  # one instance would carry 62 %: above Th_high − tolerance
])
def test_the_dead_band(rates, kind):
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"tolerance": 0.05}), THRESHOLDS)
    assert stabilizer.decide(cluster(rates, standby=1), Scripted([]), 0.0, 1.0).scenario is kind


def test_an_action_whose_drain_exceeds_the_cap_becomes_doing_nothing():
    state = cluster([[20.0, 20.0, 20.0], [300.0]])
    drain = IndexedAction(np.array([0, 1, 2]), np.array([1, 1, 1]), stop=np.array([0]))
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"max_migrations": 2}), THRESHOLDS)
    got = stabilizer.decide(state, Scripted([drain]), 0.0, 1.0)
    assert got.scenario is ScenarioKind.NONE and "cannot be trimmed" in got.note
    capped = Stabilizer(StabilizerConfig.off().updated({"max_migrations": 3}), THRESHOLDS)
    assert capped.decide(state, Scripted([drain]), 0.0, 1.0).decision.action.stop.tolist() == [0]


def test_snapshot_round_trip_goes_on_where_it_stopped():
    config = StabilizerConfig(scale_in_window_s=3.0)
    state = cluster([[20.0], [30.0], [300.0]])
    before = Stabilizer(config, THRESHOLDS)
    for t in range(2):
        before.decide(state, OFM(), float(t), 1.0)
    snapshot = json.loads(json.dumps(before.snapshot()))
    after = Stabilizer.restore(snapshot, config, THRESHOLDS)
    assert after.snapshot() == before.snapshot()
    assert after.decide(state, OFM(), 2.0, 1.0).scenario is ScenarioKind.SCALE_IN  # the window went on
    other = Stabilizer.restore(snapshot, StabilizerConfig(estimator="mean"), THRESHOLDS)
    assert other.estimator.ewma == {} and other.held_s == 2.0  # another estimator's estimates are dropped


@pytest.mark.parametrize("snapshot, message", [
    ({"version": 99}, "version 99"),
    ([], "JSON object"),
    ({"version": SNAPSHOT_VERSION}, "bad stabilizer snapshot"),
    ({"version": SNAPSHOT_VERSION, "budget_queue": -1, "need": "none", "held_s": 0, "last_note": "",
      "time_s": None, "estimator": {"kind": "ewma", "ewma": {}, "samples": {}}}, "bad stabilizer snapshot"),
])
def test_a_bad_snapshot_gets_a_clear_error(snapshot, message):
    with pytest.raises(StabilizerError, match=message):
        Stabilizer.restore(snapshot, StabilizerConfig(), THRESHOLDS)


@pytest.mark.parametrize("changes, field", [
    ({"estimator": "median"}, "estimator"), ({"horizon_s": -1}, "horizon_s"), ({"max_migrations": 0}, "max_migrations"),
    ({"tolerance": 1.5}, "tolerance"), ({"budget_per_period": "x"}, "budget_per_period"), ({"nope": 1}, "nope"),
    ({"enabled": "yes"}, "enabled"),
])
def test_bad_settings_name_the_field(changes, field):
    with pytest.raises(StabilizerError) as error:
        StabilizerConfig().updated(changes)
    assert error.value.field == field


def test_the_budget_is_charged_eq_2_without_the_escaped_queue():
    state = cluster([[700.0, 10.0], [100.0]])
    _, breakdown = apply(state, move(1, 1), CostParams(), THRESHOLDS)
    assert migration_charge(state, move(1, 1), CostParams()) == pytest.approx(breakdown.migration)  # no queue
    stabilizer = Stabilizer(StabilizerConfig.off().updated({"budget_per_period": 0.0}), THRESHOLDS)
    stabilizer.decide(state, Scripted([move(1, 1)]), 0.0, 1.0)
    assert stabilizer.budget_queue == pytest.approx(breakdown.migration)
    # A flow leaving a 0.5 s queue: eq. (2) is a gain, the move still costs its arrival at nf1.
    congested = state.with_changes(queue=np.array([500.0, 0.0]))
    _, relieved = apply(congested, move(1, 1), CostParams(), THRESHOLDS)
    assert relieved.migration < 0 < migration_charge(congested, move(1, 1), CostParams()) == \
        pytest.approx(breakdown.migration)


def test_scale_in_drains_the_instances_the_load_judgment_lets_go():
    """No instance is under Th_low, but 4 × 25 % fits on two at Th_high − tolerance: the policy is asked to
    scale in and told which instances it may drain, the two coldest."""
    policy = Scripted([])
    state = cluster([[260.0], [240.0], [250.0], [230.0]])
    Stabilizer(BARE.updated({"tolerance": 0.05}), THRESHOLDS).decide(state, policy, 0.0, 1.0)
    scenario = policy.seen[0].scenario
    assert scenario.kind is ScenarioKind.SCALE_IN
    assert scenario.underloaded == (3, 1) and scenario.instances_needed == 2


def test_drainable_leaves_enough_instances_for_the_load():
    state = cluster([[260.0], [240.0], [250.0], [230.0]], standby=2)
    assert drainable(state, Thresholds(high=0.55, low=0.0)) == (3, 1)
    assert drainable(state, Thresholds(high=0.3, low=0.0)) == ()  # 98 % needs all four at 30 %
    assert drainable(cluster([[0.0], [0.0]]), THRESHOLDS) == (0,)  # no load: one instance stays


def test_a_need_the_policy_cannot_act_on_does_not_block_the_next():
    """Overload with no standby left: a scale-out-only policy has nothing to do, so the load-balancing need
    (held for its window) is asked next."""

    class ScaleOutOnly(Scripted):
        handles: ClassVar[frozenset[ScenarioKind]] = frozenset({ScenarioKind.SCALE_OUT, ScenarioKind.LOAD_BALANCE})

        def _decide(self, problem: Problem) -> Decision:
            if problem.scenario.kind is ScenarioKind.SCALE_OUT:
                return Decision.infeasible("no standby instance left")
            return super()._decide(problem)

    state = cluster([[500.0, 200.0], [300.0]])  # 70 % and 30 %: overloaded, variance 0.04
    policy = ScaleOutOnly([move(1, 1)])
    got = Stabilizer(BARE.updated({"tolerance": 0.01}), THRESHOLDS).decide(state, policy, 0.0, 1.0)
    assert got.scenario is ScenarioKind.LOAD_BALANCE and got.decision.action.flows.tolist() == [1]
    waiting = Stabilizer(BARE.updated({"tolerance": 0.01, "balance_window_s": 2.0}), THRESHOLDS)
    assert not waiting.decide(state, ScaleOutOnly([move(1, 1)]), 0.0, 1.0).decision.feasible  # window not over
