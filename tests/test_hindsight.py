"""The hindsight bound of the closed loop (issue 19, section 7): exact on tiny episodes (brute force), priced
by `twin.cost` alone, below every policy, and a `dm-bench --experiment closed-loop` row."""
import itertools
import json
import os
from unittest import mock

import numpy as np
import pytest

from gnn_policy.bench import cli, loop
from gnn_policy.optimal import hindsight
from gnn_policy.registry import make_policy
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.params import CostParams, Thresholds

TH, PARAMS = Thresholds(), CostParams()


def tiny_episode(seed: int, periods: int = 3, buffer: float = 3.0) -> hindsight.Episode:
    """2 instances (one active), 3 flows with random rates, SLAs and lifetimes: decisions that matter."""
    rng = np.random.default_rng(seed)
    live = rng.random((periods, 3)) < 0.8
    rate = np.where(live, rng.uniform(5.0, 55.0, (periods, 3)), 0.0)
    return hindsight.Episode(rate, live, rng.uniform(70.0, 110.0, 3), np.array(["a", "b", "c"], dtype=object),
                             np.array([100.0, 100.0]), np.array([buffer, buffer]), np.array([True, False]))


def total(episode, assignment, active) -> float:
    return sum(p.cost for p in hindsight.plan_periods(episode, assignment, active, TH, PARAMS, 1.0))


def brute_force(episode: hindsight.Episode) -> float:
    """The cheapest plan over every active set (the initial one in period 0, as the closed loop) and assignment of
    every period, priced by `plan_periods`."""
    n_periods, n_flows = episode.live.shape
    choices = []
    for t in range(n_periods):
        period = []
        for active in itertools.product((False, True), repeat=2) if t else [tuple(episode.active)]:
            on = [k for k in range(2) if active[k]]
            for placed in itertools.product(on, repeat=int(episode.live[t].sum())):
                row = np.full(n_flows, -1)
                row[episode.live[t]] = placed
                period.append((row, np.array(active)))
        choices.append(period)
    best = np.inf
    for plan in itertools.product(*choices):
        try:
            best = min(best, total(episode, np.array([p[0] for p in plan]), np.array([p[1] for p in plan])))
        except ValueError:  # overloads an instance or a buffer: not a plan of the model
            continue
    return best


@pytest.mark.parametrize("seed,periods", [(1, 2), (2, 3), (3, 3)])
def test_equals_brute_force_on_two_instances_and_three_flows(seed, periods):
    episode = tiny_episode(seed, periods)
    solution = hindsight.solve(episode, TH, PARAMS)
    assert solution.proven
    assert solution.objective == pytest.approx(brute_force(episode), rel=1e-9, abs=1e-6)
    assert solution.objective == pytest.approx(total(episode, solution.assignment, solution.active), rel=1e-9)


def tiny_batch(seed: int):
    setup = loop.LoopSetup(episodes=2, periods=8, instances=2, standby=1, seed=seed, max_flows=10)
    return loop.build(sample_path(), read_flows(sample_path()), setup)


@pytest.mark.parametrize("seed", [100, 101, 102])
def test_below_every_policy_and_priced_by_the_cost_model(seed):
    batch = tiny_batch(seed)
    bound = loop.hindsight_run(batch, say=lambda _: None)
    assert [r["episode"] for r in bound.records] == [0, 1]
    for b, record in enumerate(bound.records):
        solution = hindsight.solve(hindsight.Episode.of(batch, b))
        assert record["total_cost"] == pytest.approx(solution.objective, rel=1e-9)
    names = ("ofm", "size-greedy", "pairwise", "random", "deepmigration", "deepmigration-rule",
             "deepmigration-random")
    runs = loop.run(batch, {name: make_policy(name, seed=seed) for name in names}, (None,))
    for run in runs:
        for record in run.records:
            assert bound.records[record["episode"]]["total_cost"] <= record["total_cost"] + 1e-6, run.policy


def test_too_large_an_episode_is_skipped_and_said():
    batch = tiny_batch(100)
    said = []
    with mock.patch.object(hindsight, "MAX_ASSIGNMENTS", 5):
        run = loop.hindsight_run(batch, say=said.append)
    assert run.records == [] and len(said) == 2 and all("skipped" in line and "more than 5" in line for line in said)


def test_a_closed_loop_row_with_the_random_weights_averaged_over_three_seeds(tmp_path, capsys):
    argv = ["--experiment", "closed-loop", "--episodes", "1", "--periods", "5", "--instances", "2", "--standby",
            "1", "--max-flows", "8", "--stabilizer", "off", "--seed", "100",
            "--policies", "ofm,deepmigration-random,hindsight", "--json", tmp_path / "loop.json"]
    with mock.patch.dict(os.environ):
        assert cli.main([str(a) for a in argv]) == 0
    records = json.loads((tmp_path / "loop.json").read_text())["records"]
    assert sorted(r.get("replica", -1) for r in records if r["policy"] == "deepmigration-random") == [0, 1, 2]
    (bound,) = [r for r in records if r["policy"] == "hindsight"]
    assert all(bound["total_cost"] <= r["total_cost"] + 1e-6 for r in records)
    out = capsys.readouterr()
    assert "hindsight" in out.out and "proven in" in out.err


def test_an_episode_whose_load_cannot_fit_is_unsolved_with_the_reason():
    episode = tiny_episode(2, 2)
    overloaded = hindsight.Episode(episode.rate * 10.0, episode.live, episode.sla_ms, episode.flow_ids,
                                   episode.capacity, episode.buffer, episode.active)
    with pytest.raises(hindsight.Unsolved, match="does not fit"):
        hindsight.solve(overloaded, TH, PARAMS)
