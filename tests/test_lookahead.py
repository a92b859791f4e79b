"""Look-ahead (issue 19, section 5): candidates scored k periods ahead by the residual twin's own rollout;
the lowest predicted cost wins, nothing of the future is read, and a foreign checkpoint is refused."""
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn_policy.base import Decision, Policy, Problem, score
from gnn_policy.closed_loop import run_closed_loop
from gnn_policy.lookahead import LOOKAHEAD_TWIN, LookAhead, LookAheadError, predicted_costs
from gnn_policy.registry import make_policy
from gnn_policy.rule_policy import RuleMigration
from tests.helpers import cluster
from tests.strategies import cluster_states
from trace_replay.episodes import build_episodes
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.params import Thresholds
from twin.residual import checkpoint as residual_checkpoint
from twin.residual.checkpoint import ResidualCheckpointError
from twin.residual.twin import ResidualTwin, Scores
from twin.scenario import ScenarioKind
from twin.sim import BatchedTwin

TH = Thresholds(high=0.6, low=0.1)


class Stub(RuleMigration):
    """A wrapped policy that is the rule at 0.3 (so its action differs from the rule candidate's)."""

    def __init__(self):
        super().__init__(0.3)


class FixedTwin:
    """A stand-in for the residual twin whose k-period ω penalties are given."""

    def __init__(self, penalties: list[list[float]]):
        self.penalties = np.array(penalties)
        self.asked: list = []

    def score_actions(self, state, actions, k, queues=True):
        self.asked.append(list(actions))
        c, n = len(actions), state.n_instances
        zeros = np.zeros((c, k, n))
        return Scores(zeros, zeros, zeros, self.penalties[:c, :k])


@given(state=cluster_states(max_instances=6, max_flows=30),
       penalties=st.lists(st.lists(st.floats(0.0, 1e6), min_size=3, max_size=3), min_size=3, max_size=3))
@settings(max_examples=40, deadline=None)
def test_the_lowest_predicted_cost_wins(state, penalties):
    problem = Problem.of(state, TH)
    if problem.scenario.kind is ScenarioKind.NONE:
        return
    twin = FixedTwin(penalties)
    chosen = LookAhead(Stub(), twin, k=3, candidates=("policy", "nothing", "rule")).decide(problem)
    (actions,) = twin.asked
    outcomes = [score(problem, Decision(a)) for a in actions]
    costs = [o.breakdown.migration + o.breakdown.resource + sum(p) for o, p in zip(outcomes, penalties)]
    best = actions[int(np.argmin(costs))]
    assert np.array_equal(chosen.action.flows, best.flows) and np.array_equal(chosen.action.dst, best.dst)
    assert np.array_equal(chosen.action.start, best.start) and np.array_equal(chosen.action.stop, best.stop)


def test_the_shipped_twins_choice_is_the_argmin_of_its_own_prediction():
    problem = Problem.of(cluster([[300.0, 200.0, 150.0], [100.0]], standby=3), TH)
    assert problem.scenario.kind is ScenarioKind.SCALE_OUT
    residual = ResidualTwin.load(LOOKAHEAD_TWIN)
    policy = LookAhead(Stub(), residual, k=2, candidates=("policy", "nothing", "rule"))
    decision = policy.decide(problem)
    usable = [o for o in (policy._candidate(label, problem) for label in policy.candidates) if o is not None]
    costs = predicted_costs(usable, residual.score_actions(problem.state, [o.decision.action for o in usable], 2))
    best = usable[int(np.argmin(costs))].decision.action
    assert np.array_equal(decision.action.flows, best.flows) and np.array_equal(decision.action.start, best.start)


def test_the_decisions_never_read_the_future():
    """Two episodes with the same past and a different future (every rate from period T on scaled by 5): the
    look-ahead's decisions up to period T are the same."""
    table = read_flows(sample_path())
    batch = build_episodes(sample_path(), table=table, seed=100, n_episodes=1, n_steps=9, n_instances=4,
                           n_standby=2, bin_s=1.0, max_flows=400)
    cut = 5
    rate = batch.rate.copy()
    rate[:, cut:] *= 5.0
    other = dataclasses.replace(batch, rate=rate)
    residual = ResidualTwin.load(LOOKAHEAD_TWIN)
    runs = []
    for episodes in (batch, other):
        policy = LookAhead(make_policy("deepmigration"), residual, k=3, candidates=("policy", "nothing", "rule"))
        runs.append(run_closed_loop(BatchedTwin.from_episodes(episodes), [policy])[0])
        assert sum(policy.chosen.values()) > 0, "the look-ahead decided nothing: the test would prove nothing"
    same, changed = runs
    assert [p.migrated for p in same[:cut + 1]] == [p.migrated for p in changed[:cut + 1]]
    assert [(p.started, p.stopped) for p in same[:cut + 1]] == [(p.started, p.stopped) for p in changed[:cut + 1]]


def test_a_residual_checkpoint_of_another_version_is_refused(tmp_path):
    net, _ = residual_checkpoint.load(None)
    path = tmp_path / "future.pt"
    torch.save({"format": residual_checkpoint.FORMAT, "version": residual_checkpoint.VERSION + 1,
                "config": net.config.to_dict(), "state_dict": net.state_dict()}, path)
    with pytest.raises(ResidualCheckpointError, match="version"):
        make_policy("deepmigration-lookahead", residual=str(path))


@pytest.mark.parametrize(("k", "candidates", "message"), [
    (0, ("policy",), "horizon k"), (2, (), "at least one"), (2, ("policy", "rule:2"), "rule:2"),
    (2, ("policy", "maybe"), "maybe")])
def test_a_bad_setup_is_refused_before_any_work(k, candidates, message):
    with pytest.raises(LookAheadError, match=message):
        LookAhead(Stub(), FixedTwin([[0.0]]), k=k, candidates=candidates)


def test_it_is_a_registered_policy_that_acts_like_one():
    policy = make_policy("deepmigration-lookahead")
    assert isinstance(policy, Policy) and policy.name == "deepmigration-lookahead"


def test_the_registry_look_ahead_scores_with_its_own_twin_not_the_fidelity_one():
    """The look-ahead's twin was chosen on its own validation windows (docs/agent.md, "Look-ahead"); the
    fidelity benchmark's shipped twin is another fit."""
    policy = make_policy("deepmigration-lookahead")
    own, fidelity = ResidualTwin.load(LOOKAHEAD_TWIN), ResidualTwin.load(None)
    assert policy.twin.net.config == own.net.config != fidelity.net.config
