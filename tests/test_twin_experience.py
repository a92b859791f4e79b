"""Experience from the twin (issue 19, section 3): the κ mix of a live batch, the importance weights, recorded
decisions in the control head's terms and the refusals of bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.bench_twin_experience import budgets
from gnn_policy import checkpoint, control
from gnn_policy.base import Problem
from gnn_policy.live_experience import (
    ExperienceError,
    LiveTransitions,
    budget_episodes,
    choice_log_prob,
    consistent_targets,
    fit_behaviour,
    importance_weights,
    live_experience,
    training_episodes,
)
from gnn_policy.twin_experience import ExperienceConfig, fresh_head, periods_needed, threshold, train_agent
from twin.generative.buffers import PhysicalBuffers
from twin.params import Thresholds
from twin.scenario import ScenarioKind


def transitions(failed: list[bool]) -> LiveTransitions:
    n = len(failed)
    return LiveTransitions(np.arange(n), np.zeros(n, bool), np.ones((n, 3), bool), np.arange(n, dtype=float),
                           np.array(failed, dtype=bool), np.zeros(n))


@settings(max_examples=60, deadline=None)
@given(successful=st.integers(1, 30), failed=st.integers(1, 30), j=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_a_live_batch_draws_kappa_of_it_from_the_successful_buffer(successful, failed, j, seed):
    buffers = PhysicalBuffers(transitions([False] * successful + [True] * failed))
    batch = buffers.sample(j, 0.3, np.random.default_rng(seed))
    assert isinstance(batch, LiveTransitions) and len(batch) == j
    assert int((~batch.failed).sum()) == round(0.3 * j)
    assert not batch.failed[:round(0.3 * j)].any() and batch.failed[round(0.3 * j):].all()
    assert set(batch.row[~batch.failed]) <= set(range(successful))
    assert set(batch.row[batch.failed]) <= set(range(successful, successful + failed))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 20), failed=st.booleans(), j=st.integers(1, 40))
def test_one_empty_buffer_leaves_the_whole_batch_to_the_other(rows, failed, j):
    batch = PhysicalBuffers(transitions([failed] * rows)).sample(j, 0.3, np.random.default_rng(0))
    assert len(batch) == j and bool(batch.failed.all()) == failed and bool(batch.failed.any()) == failed


def test_both_buffers_empty_is_refused():
    with pytest.raises(ValueError, match="both physical buffers are empty"):
        PhysicalBuffers(transitions([])).sample(8, 0.3, np.random.default_rng(0))


log_probs = st.lists(st.floats(-30.0, 0.0, allow_nan=False), min_size=1, max_size=32)


@settings(max_examples=80, deadline=None)
@given(target=log_probs, behaviour=log_probs, truncation=st.floats(0.1, 10.0))
def test_importance_weights_are_bounded(target, behaviour, truncation):
    n = min(len(target), len(behaviour))
    weights = importance_weights(torch.tensor(target[:n]), torch.tensor(behaviour[:n]), truncation)
    assert torch.all(weights >= 0) and torch.all(weights <= truncation)
    assert not weights.requires_grad


@settings(max_examples=40, deadline=None)
@given(target=log_probs)
def test_importance_weights_are_exactly_one_on_policy(target):
    log_p = torch.tensor(target, requires_grad=True)
    assert torch.equal(importance_weights(log_p, log_p.detach()), torch.ones(len(target)))


def test_importance_weights_refuse_a_missing_behaviour_and_a_bad_truncation():
    with pytest.raises(ExperienceError, match="fit the behaviour policy first"):
        importance_weights(torch.zeros(2), torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="truncation"):
        importance_weights(torch.zeros(2), torch.zeros(2), 0.0)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.booleans(), st.integers(0, len(control.TARGETS) - 1)), min_size=1, max_size=12),
       seed=st.integers(0, 1000))
def test_a_one_target_set_has_the_control_heads_exact_log_prob(rows, seed):
    logits = torch.randn((len(rows), 2 + len(control.TARGETS)), generator=torch.Generator().manual_seed(seed))
    hold = np.array([h for h, _ in rows])
    chosen = np.eye(len(control.TARGETS), dtype=bool)[[k for _, k in rows]]
    expected = control.log_prob(logits, [control.ControlChoice(h, k) for h, k in rows])
    assert torch.allclose(choice_log_prob(logits, hold, chosen), expected, atol=1e-6)
    every = choice_log_prob(logits, np.zeros(len(rows), bool), np.ones_like(chosen))
    assert torch.allclose(every, torch.log_softmax(logits[:, :2], 1)[:, control.ACT], atol=1e-6)


def test_the_consistent_targets_are_those_leaving_as_many_instances_carrying_load():
    episode = training_episodes()[0]
    for t in range(episode.n_periods - 1):
        problem = Problem.of(episode.state(t), Thresholds())
        if problem.scenario.kind is ScenarioKind.LOAD_BALANCE:
            assert consistent_targets(problem, int(problem.state.active.sum()), control.TARGETS).all()
        if problem.scenario.kind is ScenarioKind.SCALE_OUT:
            every = consistent_targets(problem, problem.state.n_instances, control.TARGETS)
            assert every[0] and every.any()
            assert consistent_targets(problem, 0, control.TARGETS).any()


@pytest.mark.parametrize("budget", [0, -3, 10_000, 2.5])
def test_a_budget_outside_the_data_is_refused(budget):
    with pytest.raises(ExperienceError, match="budget"):
        budget_episodes(training_episodes(), budget)


def test_bench_budgets_name_the_problem():
    assert budgets("50,all,25", 219) == [25, 50, 219]
    with pytest.raises(ExperienceError, match="exceeds the 219"):
        budgets("25,500", 219)
    with pytest.raises(ExperienceError, match="positive integers"):
        budgets("25,x", 219)


def test_recorded_decisions_of_a_budget():
    episodes = training_episodes()
    kept = budget_episodes(episodes, 25)
    assert sum(e.n_periods for e in kept) == 25
    experience = live_experience(kept, control.TARGETS)
    live = experience.transitions
    assert 0 < len(live) <= 24 and experience.periods == 25
    assert np.isfinite(live.value).all() and (live.value <= 0).all()
    assert np.isnan(live.log_behaviour).all()
    assert (live.targets.any(axis=1) == ~live.hold).all()
    prior = fresh_head(checkpoint.load(None)[0], 0)
    fitted = fit_behaviour(prior, experience, steps=5).transitions
    assert np.isfinite(fitted.log_behaviour).all() and (fitted.log_behaviour <= 0).all()


def test_nothing_to_learn_from_is_refused():
    prior = fresh_head(checkpoint.load(None)[0], 0)
    empty = live_experience([], control.TARGETS)
    with pytest.raises(ExperienceError, match="no recorded decision"):
        fit_behaviour(prior, empty)
    with pytest.raises(ValueError, match="nothing to train on"):
        train_agent(prior, empty, None, None, None, ExperienceConfig())


def test_live_training_moves_only_the_control_head():
    shipped = checkpoint.load(None)[0]
    net = fresh_head(shipped, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    experience = fit_behaviour(net, live_experience(budget_episodes(training_episodes(), 25), control.TARGETS),
                               steps=5)
    history = train_agent(net, experience, None, None, None, ExperienceConfig(iterations=3, batch=8))
    assert len(history) == 3 and all(0 < m["live/weight_mean"] <= 2.0 for m in history)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("control_head.") for k in changed)


def test_periods_needed_and_the_threshold():
    level = threshold(-100.0, -80.0)
    assert level == pytest.approx(-81.0)
    assert periods_needed({25: -95.0, 50: -80.5, 100: -80.0}, level) == 50
    assert periods_needed({25: -95.0, 50: -90.0}, level) is None


def test_training_with_the_twin_keeps_the_head_it_scores_best_in_its_own_twin():
    from trace_replay.flows import read_flows
    from trace_replay.generate import sample_path
    from twin.calibration import fit

    kept = budget_episodes(training_episodes(), 25)
    net = fresh_head(checkpoint.load(None)[0], 0)
    experience = fit_behaviour(net, live_experience(kept, control.TARGETS), steps=5)
    config = ExperienceConfig(iterations=2, windows=1, episodes=2, periods_start=3, periods_max=3, batch=8,
                              select_every=1, select_windows=1, select_periods=3)
    trace = sample_path()
    history = train_agent(net, experience, fit(kept, "train"), trace, read_flows(trace), config)
    assert [m["iteration"] for m in history] == [0, 1]
    assert all("twin/selection_total_cost" in m for m in history)
    assert history[-1]["chosen_iteration"] in (0, 1, 2)
