"""The control head's load history (`gnn_policy.load_history`): the trend and EWMA of the cluster's
load, arrivals, the scenario's streak, the periods since the policy acted."""
import pytest

from gnn_policy.base import Problem
from gnn_policy.load_history import CAP, HISTORY_FEATURES, LoadHistory
from tests.helpers import cluster
from twin.params import Thresholds

TH = Thresholds(high=0.6, low=0.1)


def problem(rates: list[list[float]]) -> Problem:
    return Problem.of(cluster(rates), TH)


def test_features_before_any_period_are_refused():
    with pytest.raises(ValueError, match="before any observe"):
        LoadHistory().features(problem([[100.0], [100.0]]))


def test_the_trend_follows_the_cluster_load_and_only_the_past():
    history = LoadHistory()
    loads = [200.0, 200.0, 400.0, 800.0]
    for load in loads:
        history.observe(problem([[load / 2], [load / 2]]))
    features = dict(zip(HISTORY_FEATURES, history.features(problem([[400.0], [400.0]]))))
    assert len(features) == len(HISTORY_FEATURES)
    assert features["trend_1"] == pytest.approx(10 * (800 - 400) / 2000)
    assert features["trend_3"] == pytest.approx(10 * (800 - 200) / 2000 / 3)
    assert features["above_ewma"] > 0  # the newest period is above the mean of the earlier ones
    assert features["utilisation"] == pytest.approx(0.4)


def test_arrivals_streak_and_the_periods_since_acting():
    history = LoadHistory()
    first = problem([[100.0, 100.0], [100.0]])
    history.observe(first)
    history.acted()
    more = problem([[100.0, 100.0], [100.0, 100.0]])
    history.observe(more)
    features = dict(zip(HISTORY_FEATURES, history.features(more)))
    assert features["arrivals"] == pytest.approx(1 / 4)
    assert features["since_action"] == pytest.approx(1 / CAP)
    assert features["streak"] == pytest.approx((2 if first.scenario.kind is more.scenario.kind else 1) / CAP)
    for _ in range(2 * CAP):
        history.observe(more)
    assert dict(zip(HISTORY_FEATURES, history.features(more)))["since_action"] == 1.0
    assert dict(zip(HISTORY_FEATURES, history.features(more)))["streak"] == 1.0
