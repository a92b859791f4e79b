"""Turn a trace's flows into the paper's experiment set-ups (section VI.C, Figs. 4-7).

Each builder draws flows from a trace, sizes equal instances so that a typical instance holds
about `flows_per_instance` flows, then fills every instance up to a target utilisation drawn for
its role (overloaded, underloaded, hot/cold). Two properties of real traces need a decision
(docs/model.md, "Scenario builders"):

* heavy tails: a flow whose rate exceeds `max_flow_share` of an instance's capacity cannot be
  placed meaningfully (alone it nearly crosses a threshold), so it is left out and counted;
* sparse traces: when the pool runs dry, flows are drawn again as re-keyed copies (a fresh id
  and source port), and the number of such copies is reported.

Everything is seeded: the same trace, arguments and seed give the same state.
"""
from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from trace_replay.flows import FlowTable
from twin.flow import FIVE_TUPLE_DTYPE
from twin.params import CostParams, Thresholds
from twin.scenario import ScenarioKind, detect
from twin.state import ClusterState, uniform_migration_latency

FILL_TOLERANCE = 0.01
"""An instance is full once its utilisation is within this distance of its target."""


@dataclass(frozen=True)
class FlowPool:
    """Per-flow average rates of a trace, the raw material of every set-up."""

    rate: np.ndarray
    byte_rate: np.ndarray
    five_tuple: np.ndarray
    trace_index: np.ndarray

    @classmethod
    def from_table(cls, table: FlowTable, min_duration_s: float = 1.0) -> FlowPool:
        """Average rate over each flow's lifetime, floored at `min_duration_s` so one-packet flows stay finite."""
        records = table.records
        duration = np.maximum(records["last_ts"] - records["first_ts"], min_duration_s)
        five_tuple = np.zeros(len(records), dtype=FIVE_TUPLE_DTYPE)
        for name in FIVE_TUPLE_DTYPE.names:
            five_tuple[name] = records[name]
        return cls(records["packets"] / duration, records["bytes"] / duration, five_tuple,
                   np.arange(len(records)))

    def __len__(self) -> int:
        return self.rate.size


@dataclass(frozen=True)
class BuildReport:
    flows_in_trace: int
    flows_used: int
    excluded_heavy: int
    """Flows left out because one alone exceeds `max_flow_share` of an instance."""
    resampled: int
    """Re-keyed copies drawn because the trace held too few flows."""


@dataclass(frozen=True)
class ExperimentSetup:
    experiment: str
    setting: int
    """Overloaded or underloaded instance count, or N, as on the x-axis of the paper's figure."""
    seed: int
    state: ClusterState
    thresholds: Thresholds
    report: BuildReport

    @property
    def threshold(self) -> float:
        """The threshold the experiment varies: Th_high (scale-out), Th_low (scale-in) or Th_var."""
        return {"scale-out": self.thresholds.high, "scale-in": self.thresholds.low}.get(
            self.experiment, self.thresholds.var)

    @property
    def expected_kind(self) -> ScenarioKind:
        return {"scale-out": ScenarioKind.SCALE_OUT, "scale-in": ScenarioKind.SCALE_IN}.get(
            self.experiment, ScenarioKind.LOAD_BALANCE)


@dataclass(frozen=True)
class Sizing:
    """How instances are dimensioned relative to the trace."""

    flows_per_instance: int = 40
    max_flow_share: float = 0.1
    buffer_ms: float = 100.0
    """Buffer of an instance, in milliseconds of traffic at its full capacity."""


def build_scale_out(table: FlowTable, *, overloaded: int, th_high: float, seed: int, n_instances: int = 10,
                    sizing: Sizing = Sizing(), params: CostParams = CostParams()) -> ExperimentSetup:
    """Fig. 4: `overloaded` of `n_instances` equal instances above Th_high, one standby each."""
    _require(0 < overloaded <= n_instances, f"overloaded must lie in 1..{n_instances}, got {overloaded}")
    thresholds = Thresholds(high=th_high)
    rng = np.random.default_rng(seed)
    targets = rng.uniform(0.2, th_high - 0.1, n_instances)
    hot = rng.choice(n_instances, overloaded, replace=False)
    targets[hot] = rng.uniform(th_high + 0.02, min(th_high + 0.15, 0.95), overloaded)
    state, report = _build(table, targets, n_standby=overloaded, rng=rng, sizing=sizing, params=params)
    return ExperimentSetup("scale-out", overloaded, seed, state, thresholds, report)


def build_scale_in(table: FlowTable, *, underloaded: int, th_low: float, seed: int, n_instances: int = 50,
                   sizing: Sizing = Sizing(), params: CostParams = CostParams()) -> ExperimentSetup:
    """Fig. 5: `underloaded` of `n_instances` equal instances below Th_low; the rest have room to absorb them."""
    _require(0 < underloaded < n_instances, f"underloaded must lie in 1..{n_instances - 1}, got {underloaded}")
    thresholds = Thresholds(low=th_low)
    rng = np.random.default_rng(seed)
    targets = rng.uniform(th_low + 0.15, 0.45, n_instances)
    cold = rng.choice(n_instances, underloaded, replace=False)
    targets[cold] = rng.uniform(0.02, th_low - 0.01, underloaded)
    state, report = _build(table, targets, n_standby=0, rng=rng, sizing=sizing, params=params)
    return ExperimentSetup("scale-in", underloaded, seed, state, thresholds, report)


def build_load_balance(table: FlowTable, *, n_instances: int, seed: int, thresholds: Thresholds = Thresholds(),
                       sizing: Sizing = Sizing(), params: CostParams = CostParams()) -> ExperimentSetup:
    """Fig. 6: hot and cold spots between Th_low and Th_high whose variance is at least Th_var."""
    _require(n_instances >= 2, f"load balancing needs at least 2 instances, got {n_instances}")
    rng = np.random.default_rng(seed)
    low, high = thresholds.low + 0.05, thresholds.high - 0.05
    targets = rng.uniform(low, high, n_instances)
    while targets.var() < thresholds.var:
        targets = rng.uniform(low, high, n_instances)
    state, report = _build(table, targets, n_standby=0, rng=rng, sizing=sizing, params=params)
    return ExperimentSetup("lb", n_instances, seed, state, thresholds, report)


def build_timing(table: FlowTable, *, n_instances: int, seed: int, flows_per_instance: int = 40,
                 mean_utilisation: float = 0.35, sizing: Sizing = Sizing(),
                 params: CostParams = CostParams()) -> ExperimentSetup:
    """Fig. 7: load balancing with exactly `flows_per_instance` random flows on every instance."""
    _require(n_instances >= 2, f"the timing experiment needs at least 2 instances, got {n_instances}")
    rng = np.random.default_rng(seed)
    pool = FlowPool.from_table(table)
    _require(len(pool) > 0, f"trace {table.source} holds no flows")
    chosen, resampled = _draw(pool, n_instances * flows_per_instance, rng)
    capacity = pool.rate[chosen].sum() / (n_instances * mean_utilisation)
    assignment = np.repeat(np.arange(n_instances), flows_per_instance)
    state = _state(pool, chosen, assignment, np.full(n_instances, capacity), 0, rng, sizing, params)
    report = BuildReport(len(pool), chosen.size, 0, resampled)
    return ExperimentSetup("time", n_instances, seed, state, Thresholds(), report)


SCALE_OUT_SETTINGS = {"overloaded": (4, 6, 8), "th_high": (0.55, 0.6)}
SCALE_IN_SETTINGS = {"underloaded": (5, 10, 15), "th_low": (0.1, 0.15)}
LOAD_BALANCE_SIZES = (10, 20, 30, 40)


def paper_setups(table: FlowTable, *, seed: int) -> Iterator[ExperimentSetup]:
    """Every set-up of Figs. 4-6 at one seed, in the order of the paper's figures."""
    for th_high, overloaded in itertools.product(SCALE_OUT_SETTINGS["th_high"], SCALE_OUT_SETTINGS["overloaded"]):
        yield build_scale_out(table, overloaded=overloaded, th_high=th_high, seed=seed)
    for th_low, underloaded in itertools.product(SCALE_IN_SETTINGS["th_low"], SCALE_IN_SETTINGS["underloaded"]):
        yield build_scale_in(table, underloaded=underloaded, th_low=th_low, seed=seed)
    for n_instances in LOAD_BALANCE_SIZES:
        yield build_load_balance(table, n_instances=n_instances, seed=seed)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _draw(pool: FlowPool, count: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """`count` pool indices without replacement while they last, then repeats (re-keyed by `_state`)."""
    order = rng.permutation(len(pool))
    if count <= order.size:
        return order[:count], 0
    repeats = rng.choice(len(pool), count - order.size)
    return np.concatenate([order, repeats]), int(repeats.size)


def _build(table: FlowTable, targets: np.ndarray, *, n_standby: int, rng: np.random.Generator, sizing: Sizing,
           params: CostParams) -> tuple[ClusterState, BuildReport]:
    """Equal instances filled greedily, in random flow order, to their target utilisations.

    A flow that would overshoot an instance waits for the next one. An instance that misses
    more flows than the pool holds stops short of its target rather than loop.
    """
    pool = FlowPool.from_table(table)
    _require(len(pool) > 0, f"trace {table.source} holds no flows")
    typical = pool.rate[pool.rate <= np.quantile(pool.rate, 0.99)].mean()
    capacity = sizing.flows_per_instance * typical / targets.mean()
    eligible = np.flatnonzero(pool.rate <= sizing.max_flow_share * capacity)
    _require(eligible.size > 0, f"every flow of {table.source} exceeds {sizing.max_flow_share:.0%} of an instance")

    fresh = itertools.chain.from_iterable(rng.permutation(eligible) for _ in itertools.count())
    chosen, assignment = [], []
    deferred: deque[int] = deque()
    for k, target in enumerate(targets):
        low, high = (target - FILL_TOLERANCE) * capacity, (target + FILL_TOLERANCE) * capacity
        load, misses, waiting, deferred = 0.0, 0, deferred, deque()
        while load < low and misses <= eligible.size:
            flow = waiting.popleft() if waiting else int(next(fresh))
            if load + pool.rate[flow] <= high:
                chosen.append(flow)
                assignment.append(k)
                load += pool.rate[flow]
            else:
                deferred.append(flow)
                misses += 1
        deferred.extend(waiting)
    chosen_idx = np.array(chosen, dtype=np.int64)
    state = _state(pool, chosen_idx, np.array(assignment, dtype=np.int64), np.full(targets.size, capacity),
                   n_standby, rng, sizing, params)
    repeats = chosen_idx.size - np.unique(chosen_idx).size
    return state, BuildReport(len(pool), chosen_idx.size, len(pool) - eligible.size, repeats)


def _state(pool: FlowPool, chosen: np.ndarray, assignment: np.ndarray, capacity: np.ndarray, n_standby: int,
           rng: np.random.Generator, sizing: Sizing, params: CostParams) -> ClusterState:
    """Assemble the cluster: copies of a flow get distinct ids and source ports; queues follow M/M/1."""
    n_active = capacity.size
    capacity = np.concatenate([capacity, np.full(n_standby, capacity.mean())])
    n = capacity.size
    copy_number = _occurrence_number(chosen)
    five_tuple = pool.five_tuple[chosen].copy()
    five_tuple["src_port"] = (five_tuple["src_port"].astype(np.int64) + 7919 * copy_number) % 65536
    flow_ids = tuple(f"f{i}" if c == 0 else f"f{i}.{c}" for i, c in zip(pool.trace_index[chosen].tolist(),
                                                                        copy_number.tolist()))
    load = np.bincount(assignment, weights=pool.rate[chosen], minlength=n)
    rho = np.clip(load / capacity, 0.0, 0.99)
    buffer = capacity * sizing.buffer_ms / 1000.0
    queue = np.minimum(rho ** 2 / (1.0 - rho), buffer)
    active = np.arange(n) < n_active
    return ClusterState(
        instance_ids=tuple(f"nf{k}" for k in range(n)), capacity=capacity, buffer=buffer, queue=queue,
        active=active, processing_ms=np.full(n, params.processing_ms),
        migration_ms=uniform_migration_latency(n, params), flow_ids=flow_ids, five_tuple=five_tuple,
        rate=pool.rate[chosen].astype(float), byte_rate=pool.byte_rate[chosen].astype(float),
        sla_ms=rng.uniform(params.sla_min_ms, params.sla_max_ms, chosen.size), assignment=assignment)


def _occurrence_number(values: np.ndarray) -> np.ndarray:
    """For each element, how many equal elements precede it (0 for the first occurrence)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, values.size]))
    occurrence = np.empty(values.size, dtype=np.int64)
    occurrence[order] = np.arange(values.size) - run_start
    return occurrence


def describe(setup: ExperimentSetup) -> dict:
    """A JSON-friendly summary: what was built and which scenario the twin detects in it."""
    state = setup.state
    scenario = detect(state, setup.thresholds)
    active = state.active
    return {
        "experiment": setup.experiment, "setting": setup.setting, "seed": setup.seed,
        "threshold": setup.threshold,
        "instances": int(active.sum()), "standby": int((~active).sum()), "flows": state.n_flows,
        "capacity_pps": float(state.capacity[active].mean()),
        "utilisation": [round(float(u), 4) for u in state.utilisation[active]],
        "detected": scenario.kind.value, "overloaded": len(scenario.overloaded),
        "underloaded": len(scenario.underloaded), "variance": scenario.variance,
        "flows_in_trace": setup.report.flows_in_trace, "excluded_heavy": setup.report.excluded_heavy,
        "resampled": setup.report.resampled,
    }
