"""The paper's four experiments (section VI.C, Figs. 4-7) as grids of cases, and how a policy is measured.

A *case* is one built set-up (`trace_replay.scenarios`) for one experiment, setting, threshold and
seed. Every policy sees the same case with the experiment's scenario fixed, is timed on its
`decide` call alone and is scored by the shared cost model (`gnn_policy.base.score`). One record
per (experiment, policy, setting, seed) comes out; docs/benchmark.md lists its fields.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gnn_policy.base import Decision, Policy, Problem, score
from trace_replay import scenarios
from trace_replay.flows import FlowTable
from twin.migration import IndexedAction
from twin.params import Thresholds
from twin.scenario import ScenarioKind

EXPERIMENTS: tuple[str, ...] = ("scale-out", "scale-in", "lb", "time")


@dataclass(frozen=True)
class Grid:
    """The points of one experiment: its thresholds (None where it has none) and x-axis settings."""

    thresholds: tuple[float | None, ...]
    settings: tuple[int, ...]


FULL_GRIDS: dict[str, Grid] = {
    "scale-out": Grid((0.55, 0.60), (4, 6, 8)),
    "scale-in": Grid((0.10, 0.15), (5, 10, 15)),
    "lb": Grid((None,), (10, 20, 30, 40)),
    "time": Grid((None,), (10, 15, 20, 25, 30, 35, 40)),
}
QUICK_GRIDS: dict[str, Grid] = {
    "scale-out": Grid((0.55, 0.60), (4, 8)),
    "scale-in": Grid((0.10, 0.15), (5, 15)),
    "lb": Grid((None,), (10, 40)),
    "time": Grid((None,), (10, 40)),
}


EXPERIMENT_KIND: dict[str, ScenarioKind] = {
    "scale-out": ScenarioKind.SCALE_OUT, "scale-in": ScenarioKind.SCALE_IN, "lb": ScenarioKind.LOAD_BALANCE}
"""The scenario each cost experiment fixes; the timing experiment uses each policy's own."""
TIMING_OVERLOADED_SHARE = 0.4
"""Timing set-ups for scale-out-only policies: overloaded share of N, as 4 of the 10 instances of Fig. 4."""
TIMING_UNDERLOADED_SHARE = 0.2
"""Timing set-ups for scale-in-only policies: underloaded share of N, as 10 of the 50 instances of Fig. 5."""


@dataclass
class Case:
    """One point of an experiment. Its set-ups are built on first use, one per scenario measured."""

    table: FlowTable
    experiment: str
    setting: int
    threshold: float | None
    seed: int
    _setups: dict[ScenarioKind, scenarios.ExperimentSetup] = field(
        default_factory=dict, init=False, repr=False)

    def setup(self, kind: ScenarioKind) -> scenarios.ExperimentSetup:
        if kind not in self._setups:
            self._setups[kind] = self._build(kind)
        return self._setups[kind]

    def _build(self, kind: ScenarioKind) -> scenarios.ExperimentSetup:
        table, setting, threshold, seed = self.table, self.setting, self.threshold, self.seed
        if self.experiment == "scale-out":
            return scenarios.build_scale_out(table, overloaded=setting, th_high=threshold, seed=seed)
        if self.experiment == "scale-in":
            return scenarios.build_scale_in(table, underloaded=setting, th_low=threshold, seed=seed)
        if self.experiment == "lb":
            return scenarios.build_load_balance(table, n_instances=setting, seed=seed)
        if kind is ScenarioKind.SCALE_OUT:
            overloaded = max(1, round(TIMING_OVERLOADED_SHARE * setting))
            return scenarios.build_scale_out(table, overloaded=overloaded, th_high=Thresholds().high,
                                             n_instances=setting, seed=seed)
        if kind is ScenarioKind.SCALE_IN:
            underloaded = max(1, round(TIMING_UNDERLOADED_SHARE * setting))
            return scenarios.build_scale_in(table, underloaded=underloaded, th_low=Thresholds().low,
                                            n_instances=setting, seed=seed)
        return scenarios.build_timing(table, n_instances=setting, seed=seed)


def iter_cases(table: FlowTable, experiment: str, seeds: Sequence[int], quick: bool) -> Iterator[Case]:
    """The cases of `experiment` (one of EXPERIMENTS) drawn from `table`: every threshold, setting and
    seed of its grid (QUICK_GRIDS when `quick`, else FULL_GRIDS); set-ups are built on first use."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    grid = (QUICK_GRIDS if quick else FULL_GRIDS)[experiment]
    for threshold in grid.thresholds:
        for setting in grid.settings:
            for seed in seeds:
                yield Case(table, experiment, setting, threshold, seed)


def count_cases(experiment: str, n_seeds: int, quick: bool) -> int:
    """How many cases `iter_cases` yields for `experiment` with `n_seeds` seeds, without building any."""
    grid = (QUICK_GRIDS if quick else FULL_GRIDS)[experiment]
    return len(grid.thresholds) * len(grid.settings) * n_seeds


def scenario_kinds(experiment: str, policy: Policy) -> tuple[ScenarioKind, ...]:
    """The scenarios `policy` is measured on in `experiment`; empty means it sits the experiment out.

    The cost experiments fix their own scenario. The timing experiment times every policy on its
    natural scenario: load balancing with exactly 40 flows per instance (`build_timing`), as in the
    paper, for those that handle it; otherwise the scale-out or scale-in set-up of the same N, whose
    instances hold about 40 flows at their mean utilisation (Size-greedy, Random).
    """
    if experiment != "time":
        kind = EXPERIMENT_KIND[experiment]
        return (kind,) if kind in policy.handles else ()
    if ScenarioKind.LOAD_BALANCE in policy.handles:
        return (ScenarioKind.LOAD_BALANCE,)
    return tuple(sorted(policy.handles, key=lambda kind: kind.value))


@dataclass(frozen=True)
class Timing:
    repeats: int = 5
    """Most `decide` calls per record; the median wall time is reported."""
    budget_s: float = 1.0
    """No repetition starts once a record's calls have taken this long (slow solvers run once)."""


def measure(case: Case, kind: ScenarioKind, policy_name: str, prototype: Policy, timing: Timing) -> dict:
    """One record: `prototype`'s decision on `case` under `kind`, timed and scored.

    Each call goes to a fresh copy of the prototype, so seeded policies make the same decision on
    every repetition and the recorded decision does not depend on how often it was timed. An
    exception inside `decide` makes the record invalid with the error; it never stops the run.
    """
    setup = case.setup(kind)
    problem = Problem.of(setup.state, setup.thresholds).as_scenario(kind)
    record = {
        "experiment": case.experiment, "policy": policy_name, "seed": case.seed, "setting": case.setting,
        "threshold": _defining_threshold(setup.thresholds, kind), "scenario": kind.value,
        "n_instances": int(setup.state.active.sum()), "n_standby": int((~setup.state.active).sum()),
        "n_flows": setup.state.n_flows, "resampled_flows": setup.report.resampled,
    }
    durations: list[float] = []
    decision: Decision | None = None
    try:
        while len(durations) < timing.repeats and (not durations or sum(durations) < timing.budget_s):
            policy = copy.deepcopy(prototype)
            began = time.perf_counter()
            answer = policy.decide(problem)
            durations.append(time.perf_counter() - began)
            if decision is None:
                decision = answer
    except Exception as error:  # noqa: BLE001  a broken policy is a result of the benchmark, not a crash
        return {**record, **_failed(f"{type(error).__name__}: {error}", durations)}
    outcome = score(problem, decision)
    breakdown = outcome.breakdown
    scored = outcome.valid and decision.feasible
    return {
        **record,
        "valid": outcome.valid, "feasible": decision.feasible, "reason": decision.reason,
        "error": outcome.error,
        "decision_ms": 1000.0 * statistics.median(durations), "repeats": len(durations),
        "moves": int(decision.action.flows.size), "started": int(decision.action.start.size),
        "stopped": int(decision.action.stop.size),
        "cost": breakdown.total if scored else None,
        "migration_cost": breakdown.migration if scored else None,
        "resource_cost": breakdown.resource if scored else None,
        "threshold_penalty": breakdown.threshold_penalty if scored else None,
        "sla_violations": breakdown.sla_violations if scored else None,
        "migration_time_ms": breakdown.migration_time_ms if scored else None,
        "variance_before": breakdown.variance_before if breakdown else None,
        "variance_after": breakdown.variance_after if scored else None,
        "var_ratio": _finite(breakdown.variance_ratio) if scored else None,
        "optimal_gap": decision.optimal_gap, "proven_optimal": decision.proven_optimal,
        "action": action_record(decision.action),
    }


def action_record(action: IndexedAction) -> dict[str, list[int]]:
    """The action in plain lists, as `dm-bench --dump-actions` writes it (moves sorted by flow)."""
    order = np.argsort(action.flows, kind="stable")
    return {"flows": action.flows[order].tolist(), "dst": action.dst[order].tolist(),
            "start": sorted(action.start.tolist()), "stop": sorted(action.stop.tolist())}


def _defining_threshold(thresholds: Thresholds, kind: ScenarioKind) -> float | None:
    """Th_high of a scale-out, Th_low of a scale-in; load balancing has no threshold on the figure's axis."""
    return {ScenarioKind.SCALE_OUT: thresholds.high, ScenarioKind.SCALE_IN: thresholds.low}.get(kind)


def _failed(error: str, durations: list[float]) -> dict:
    nothing = dict.fromkeys(("cost", "migration_cost", "resource_cost", "threshold_penalty",
                             "sla_violations", "migration_time_ms", "variance_before", "variance_after",
                             "var_ratio", "optimal_gap", "proven_optimal"))
    return {"valid": False, "feasible": False, "reason": "", "error": error,
            "decision_ms": 1000.0 * statistics.median(durations) if durations else None,
            "repeats": len(durations), "moves": 0, "started": 0, "stopped": 0, "action": None, **nothing}


def _finite(value: float) -> float | None:
    """JSON has no infinity: a perfectly balanced answer (var_lb = 0) has its ratio written as null."""
    return value if math.isfinite(value) else None


def run(table: FlowTable, experiments: Sequence[str], prototypes: Mapping[str, Mapping[int, Policy]],
        seeds: Sequence[int], *, quick: bool, timing: Timing = Timing(),
        on_step: Callable[[str], None] = lambda label: None) -> list[dict]:
    """Every record of `experiments`; `prototypes[name][seed]` is the policy built for that seed.

    `on_step` is told about each (case, policy) pair once it is done.
    """
    records = []
    for experiment in experiments:
        for case in iter_cases(table, experiment, seeds, quick):
            for name, by_seed in prototypes.items():
                prototype = by_seed[case.seed]
                for kind in scenario_kinds(experiment, prototype):
                    records.append(measure(case, kind, name, prototype, timing))
                on_step(f"{experiment} {case.setting} seed {case.seed} {name}")
    return records


# --- aggregation -------------------------------------------------------------------------------

METRIC: dict[str, str] = {"scale-out": "cost", "scale-in": "cost", "lb": "var_ratio", "time": "decision_ms"}
"""The y-axis of each experiment's figure."""


@dataclass(frozen=True)
class Point:
    """One bar or line point: a policy's records at one setting, over the seeds."""

    experiment: str
    scenario: str
    threshold: float | None
    setting: int
    policy: str
    runs: int
    failed: int
    """Records that are invalid or infeasible; they carry no cost and are left out of the statistics."""
    mean: float | None
    spread: float | None
    """Sample standard deviation over the seeds (0 for a single seed)."""
    decision_ms: float | None
    worst_gap: float | None


def summarise(records: Sequence[dict]) -> list[Point]:
    """Mean and spread of each experiment's metric per (experiment, scenario, threshold, setting, policy)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = tuple(record[name] for name in ("experiment", "scenario", "threshold", "setting", "policy"))
        groups.setdefault(key, []).append(record)
    points = []
    for (experiment, scenario, threshold, setting, policy), group in groups.items():
        values = [r[METRIC[experiment]] for r in group if r["valid"] and r["feasible"]]
        values = [v for v in values if v is not None]
        times = [r["decision_ms"] for r in group if r["decision_ms"] is not None]
        gaps = [r["optimal_gap"] for r in group if r["optimal_gap"] is not None]
        points.append(Point(
            experiment, scenario, threshold, setting, policy, runs=len(group),
            failed=sum(not (r["valid"] and r["feasible"]) for r in group),
            mean=statistics.fmean(values) if values else None,
            spread=statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
            decision_ms=statistics.fmean(times) if times else None,
            worst_gap=max(gaps) if gaps else None))
    return points
