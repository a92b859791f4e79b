"""Stability that any policy gets: one component between the state collection and the policy.

The controller and the twin's closed loop both call `Stabilizer.decide` once per period with the
measured state (rates over the last period, queues and assignment now). It

1. **estimates the load** over a window (`estimator`: an EWMA of time constant `horizon_s`, or the
   mean over the last `horizon_s`) instead of acting on one period's counters: per flow for where the
   load is, scaled to the estimate of the cluster's total for how much (`RateEstimator`);
2. detects the needs on the estimated state with a **dead band** (`tolerance`, in utilisation) around
   Th_high (scale-out above Th_high + tolerance, scale-in when the load fits on fewer instances at
   Th_high − tolerance), and acts on the first only once it **held for its window** (`scale_out_window_s`,
   `scale_in_window_s`, `balance_window_s`: the Kubernetes HPA's stabilization windows); a need the
   policy cannot act on gives way to the next;
3. asks the policy, then **caps the migrations** of one period (`max_migrations`), trimming the
   action so that it stays valid under `twin.migration.apply`;
4. keeps the long-term **migration budget** with the Lyapunov deficit queue of paper 003 (eq. 12-13):
   Q(t+1) = max(Q(t) + C(t) − B, 0), C(t) the period's migration cost (eq. (2) over the moves, without
   the source queue's relief: `migration_charge`) and B `budget_per_period`. Among "do nothing" and the trimmed action cut to
   fewer moves, it executes the one that minimises v·(C_R + ω penalties after it) + Q(t)·C.

docs/controller.md ("Stabilizer") gives every setting's default and why.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from gnn_policy.base import Decision, Policy, Problem
from twin import cost
from twin.cost import load_variance
from twin.migration import CostBreakdown, IndexedAction, InvalidAction, apply
from twin.params import CostParams, Thresholds
from twin.scenario import Scenario, ScenarioKind, detect, drainable, instances_needed
from twin.state import ClusterState

SNAPSHOT_VERSION = 1
ESTIMATORS = ("ewma", "mean", "last")


class StabilizerError(ValueError):
    """A stabilizer setting or snapshot that cannot be used; `field` names the setting at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class StabilizerConfig:
    """The stabilizer's settings; `StabilizerConfig()` is on with the values tuned on the twin's validation
    windows and measured on the testbed (docs/controller.md, docs/benchmark.md "Tuning the stabilizer")."""

    enabled: bool = True
    """Off: `decide` passes the policy's decision on the measured state through untouched."""
    estimator: str = "ewma"
    """'ewma', 'mean' (sliding mean over `horizon_s`) or 'last' (one period's measurement)."""
    horizon_s: float = 5.0
    """The EWMA's time constant, or the sliding mean's window."""
    tolerance: float = 0.05
    """Dead band (utilisation): scale out at Th_high + tolerance; scale in when the load fits on fewer instances
    at Th_high − tolerance."""
    scale_out_window_s: float = 0.0
    """How long a scale-out need must hold before acting (0: at once)."""
    scale_in_window_s: float = 30.0
    """How long a scale-in need must hold before acting."""
    balance_window_s: float = 5.0
    """How long a load-balancing need must hold before acting."""
    max_migrations: int | None = 32
    """Most moves executed in one period (None: no cap)."""
    budget_per_period: float | None = 100.0
    """B of the deficit queue, in eq. (2)'s cost units per period (None: no long-term budget)."""
    v: float = 100.0
    """The weight of the period's other cost (C_R + ω) against Q(t)·C(t) (paper 003's v)."""

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise StabilizerError("enabled must be true or false", "enabled")
        if self.estimator not in ESTIMATORS:
            raise StabilizerError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {self.estimator!r}",
                                  "estimator")
        for name in ("horizon_s", "tolerance", "scale_out_window_s", "scale_in_window_s", "balance_window_s", "v"):
            _require_number(name, getattr(self, name))
        if self.tolerance >= 1.0:
            raise StabilizerError("tolerance must be below 1 (a utilisation)", "tolerance")
        if self.max_migrations is not None and (not isinstance(self.max_migrations, int)
                                                or isinstance(self.max_migrations, bool) or self.max_migrations < 1):
            raise StabilizerError("max_migrations must be an integer >= 1, or null for no cap", "max_migrations")
        if self.budget_per_period is not None:
            _require_number("budget_per_period", self.budget_per_period)

    @classmethod
    def off(cls) -> StabilizerConfig:
        """Enabled, but every mechanism neutral: the policy's decision on the measured state, unchanged."""
        return cls(estimator="last", tolerance=0.0, scale_out_window_s=0.0, scale_in_window_s=0.0,
                   balance_window_s=0.0, max_migrations=None, budget_per_period=None)

    @property
    def passes_through(self) -> bool:
        return not self.enabled or self == replace(StabilizerConfig.off(), horizon_s=self.horizon_s, v=self.v)

    def window_s(self, kind: ScenarioKind) -> float:
        return {ScenarioKind.SCALE_OUT: self.scale_out_window_s, ScenarioKind.SCALE_IN: self.scale_in_window_s,
                ScenarioKind.LOAD_BALANCE: self.balance_window_s}.get(kind, 0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    def updated(self, changes: Any) -> StabilizerConfig:
        """This config with `changes` (a JSON object of some fields) applied and checked."""
        if not isinstance(changes, dict):
            raise StabilizerError("the stabilizer settings must be a JSON object")
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise StabilizerError(f"unknown stabilizer setting {unknown[0]!r}", unknown[0])
        return replace(self, **changes)


def _require_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise StabilizerError(f"{name} must be a finite number >= 0", name)


@dataclass(frozen=True)
class StabilizedDecision:
    decision: Decision
    """The action to execute (may be empty)."""
    scenario: ScenarioKind
    """The scenario acted on (NONE when held back)."""
    note: str
    """Why held back or trimmed ('' when passed through)."""
    budget_queue: float = 0.0
    """Q after this period's charge."""


# --- load estimation ------------------------------------------------------------------------------
class RateEstimator:
    """Per-flow rate estimates by flow id, scaled so that they add up to the same estimator applied to the
    cluster's total measured rate; flows that left the state are forgotten.

    The per-flow estimates say where the load is, the total's estimate how much there is. Unscaled, they
    overstate it several times on real traces: most flows send in bursts (on the sample and the generator's
    traces 80-90 % of the live flows send nothing in a given second), and a burst counted at its measured
    rate decays over the horizon while the flow sends nothing, so that Σ per-flow EWMA ran at 3-5× the
    measured total (docs/controller.md, "Stabilizer"). The total's estimate has no such bias.

    The total rises at once with the measured total and falls at the estimator's pace (an EWMA lifted to
    the measurement when it is exceeded; the sliding mean or the measurement, whichever is larger): the HPA
    anchor at the estimate, so that a burst is provisioned for when it comes and released only slowly."""

    CLUSTER = "cluster"
    """The one id of the total's estimator."""

    def __init__(self, kind: str, horizon_s: float, calibrated: bool = True):
        self.kind, self.horizon_s = kind, horizon_s
        self.ewma: dict[str, float] = {}
        self.samples: dict[str, list[list[float]]] = {}
        """mean: per flow, [rate, period_s, age_s] of the samples inside the horizon."""
        self.cluster = RateEstimator(kind, horizon_s, calibrated=False) if calibrated else None
        """The estimator of the cluster's total measured rate (None: this is it)."""

    def update(self, flow_ids: tuple[str, ...], rates: np.ndarray, period_s: float) -> np.ndarray:
        per_flow = self._smooth(flow_ids, np.asarray(rates, dtype=float), period_s)
        if self.cluster is None:
            return per_flow
        measured = float(np.sum(rates))
        total = max(measured, float(self.cluster._smooth((self.CLUSTER,), np.array([measured]), period_s)[0]))
        if self.kind == "ewma":
            self.cluster.ewma[self.CLUSTER] = total
        estimated = float(per_flow.sum())
        return per_flow * (total / estimated) if estimated > 0 else per_flow

    def _smooth(self, flow_ids: tuple[str, ...], rates: np.ndarray, period_s: float) -> np.ndarray:
        if self.kind == "ewma":
            alpha = 1.0 - math.exp(-period_s / self.horizon_s) if self.horizon_s > 0 else 1.0
            old = self.ewma
            self.ewma = {f: (r if f not in old else old[f] + alpha * (r - old[f]))
                         for f, r in zip(flow_ids, rates.tolist())}
            return np.array([self.ewma[f] for f in flow_ids], dtype=float)
        if self.kind == "mean":
            self.samples = {f: [[r, period_s, 0.0]] + [[x, w, age + period_s] for x, w, age in self.samples.get(f, ())
                                                         if age + period_s < self.horizon_s]
                            for f, r in zip(flow_ids, rates.tolist())}
            return np.array([sum(x * w for x, w, _ in s) / sum(w for _, w, _ in s)
                             for s in (self.samples[f] for f in flow_ids)], dtype=float)
        return rates

    def to_json(self) -> dict:
        data = {"kind": self.kind, "ewma": self.ewma, "samples": self.samples}
        return data if self.cluster is None else {**data, "cluster": self.cluster.to_json()}

    @classmethod
    def from_json(cls, data: dict, kind: str, horizon_s: float, calibrated: bool = True) -> RateEstimator:
        """The estimates of a snapshot; dropped when the snapshot used another estimator (or, written before
        the total was estimated, has no total's estimate)."""
        estimator = cls(kind, horizon_s, calibrated)
        if data["kind"] == kind and (not calibrated or "cluster" in data):
            estimator.ewma = {str(f): float(r) for f, r in data["ewma"].items()}
            estimator.samples = {str(f): [[float(x) for x in s] for s in samples]
                                 for f, samples in data["samples"].items()}
            if calibrated:
                estimator.cluster = cls.from_json(data["cluster"], kind, horizon_s, calibrated=False)
        return estimator


# --- trimming to a cap ----------------------------------------------------------------------------
def trim(state: ClusterState, action: IndexedAction, cap: int) -> IndexedAction:
    """At most `cap` moves of `action`, valid under `apply` when `action` is.

    A stopped instance is kept only with its whole drain (smallest drains first); the remaining room
    goes to the other moves that do most: from the hottest instances first, the largest rates first.
    A started instance that receives no kept move is dropped.
    """
    if action.flows.size <= cap:
        return action
    src = state.assignment[action.flows]
    keep = np.zeros(action.flows.size, dtype=bool)
    room = cap
    stops = []
    for k in sorted(action.stop.tolist(), key=lambda k: int((src == k).sum())):
        drain = src == k
        if drain.sum() <= room:
            stops.append(k)
            keep |= drain
            room -= int(drain.sum())
    others = np.flatnonzero(~np.isin(src, action.stop))
    order = np.lexsort((-state.rate[action.flows[others]], -state.utilisation[src[others]]))
    keep[others[order[:room]]] = True
    dst = action.dst[keep]
    return IndexedAction(action.flows[keep], dst, action.start[np.isin(action.start, dst)],
                         np.array(stops, dtype=np.int64))


def migration_charge(state: ClusterState, action: IndexedAction, params: CostParams) -> float:
    """C(t) of the deficit queue: eq. (2) summed over the moved flows, with the queue each flow leaves behind
    not counted as a gain. Eq. (2) itself (`CostBreakdown.migration`) subtracts the source's queueing delay, so
    a move off a congested instance costs less than nothing and a budget charged with it would shrink with
    every move off an overload; what a move always costs is its flow's arrival at the destination."""
    flows, dst = action.flows, action.dst
    costs = cost.moved_flow_cost(cost.migration_latency_ms(state, flows, dst), state.processing_ms[dst],
                                 cost.queueing_delay_ms(state.queue[dst], state.capacity[dst]), 0.0,
                                 state.sla_ms[flows], params)
    return float(np.sum(costs))


@dataclass(frozen=True, eq=False)
class Candidate:
    action: IndexedAction
    breakdown: CostBreakdown
    charge: float
    """C(t) if this candidate is executed (`migration_charge`)."""

    @property
    def other_cost(self) -> float:
        """C_R plus the ω penalties after the action: what the budget trades migrations against."""
        return self.breakdown.resource + self.breakdown.threshold_penalty


def candidates(state: ClusterState, action: IndexedAction, cap: int | None, cut: bool, params: CostParams,
               thresholds: Thresholds) -> list[Candidate]:
    """The valid actions to choose from, largest first: `action` trimmed to `cap`, then (`cut`) halved
    down to one move, then doing nothing."""
    sizes = [min(action.flows.size, cap) if cap is not None else action.flows.size]
    while cut and sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    actions = [trim(state, action, size) for size in sizes] + [IndexedAction()]
    out: list[Candidate] = []
    for candidate in actions:
        try:
            out.append(Candidate(candidate, apply(state, candidate, params, thresholds)[1],
                                 migration_charge(state, candidate, params)))
        except InvalidAction:
            continue
    return out


# --- the component --------------------------------------------------------------------------------
class Stabilizer:
    """Estimation, dead band, windows, cap and budget between the measured state and any policy."""

    def __init__(self, config: StabilizerConfig, thresholds: Thresholds, params: CostParams = CostParams()):
        self.config, self.thresholds, self.params = config, thresholds, params
        self.estimator = RateEstimator(config.estimator, config.horizon_s)
        self._q = 0.0
        self.need = ScenarioKind.NONE
        """The need the estimated state shows (after the dead band), whether or not its window is over."""
        self.held_s = 0.0
        """How long `need` has held, over consecutive periods."""
        self.last_note = ""
        self.time_s: float | None = None
        self.estimated: ClusterState | None = None

    @property
    def budget_queue(self) -> float:
        """Q(t): how far the executed migrations ran over the budget, in cost units (0 when within it)."""
        return self._q

    # --- one period ---------------------------------------------------------------------------
    def observe(self, state: ClusterState, now_s: float, period_s: float) -> ClusterState:
        """Take in one period's measurement without deciding (e.g. manual mode): estimates, the need and its
        window go on, and Q is charged no migration. Returns the estimated state."""
        estimated = self._estimate(state, now_s, period_s)
        self._charge(0.0)
        return estimated

    def decide(self, state: ClusterState, policy: Policy, now_s: float, period_s: float) -> StabilizedDecision:
        """This period's action for `state` (what was measured), through `policy`; Q is charged its cost."""
        if not self.config.enabled:
            problem = Problem.of(state, self.thresholds, self.params)
            return StabilizedDecision(policy.decide(problem), problem.scenario.kind, "")
        estimated = self._estimate(state, now_s, period_s)
        result, cost = self._act(estimated, policy)
        self._charge(cost)
        self.last_note = result.note
        if not _empty(result.decision.action):
            self.held_s = 0.0  # after an action, a need must hold anew for its window
        return replace(result, budget_queue=self._q)

    def _act(self, estimated: ClusterState, policy: Policy) -> tuple[StabilizedDecision, float]:
        """The period's decision and its migration cost C(t), before Q is charged.

        The need is asked first; when the policy cannot act on it (an infeasible decision, e.g. a scale-out
        with no standby instance left for OFM), the other needs the estimated state shows are asked in
        priority order, each once the need held for its window: an unmet need must not block the others."""
        if self.config.passes_through:  # every mechanism neutral: exactly the policy on the measured state
            problem = Problem.of(estimated, self.thresholds, self.params)
            return StabilizedDecision(policy.decide(problem), problem.scenario.kind, ""), 0.0
        window = self.config.window_s(self.need)
        if self.need is not ScenarioKind.NONE and self.held_s < window - 1e-9:
            return _held(f"{self.need.value} held {self.held_s:g} s of its {window:g} s window"), 0.0
        decision, kind = Decision(IndexedAction(), reason="no scenario: nothing to do"), ScenarioKind.NONE
        for need in self._needs(estimated):
            if self.held_s < self.config.window_s(need) - 1e-9:
                continue
            decision, kind = policy.decide(Problem(estimated, self._scenario(estimated, need), self.thresholds,
                                                   self.params, self._q)), need
            if decision.feasible:
                break
        if not decision.feasible or _empty(decision.action):
            return StabilizedDecision(decision, kind, ""), 0.0
        return self._choose(estimated, decision, kind)

    def _estimate(self, state: ClusterState, now_s: float, period_s: float) -> ClusterState:
        rates = self.estimator.update(state.flow_ids, state.rate, period_s)
        self.estimated = state.with_changes(rate=rates)
        need = self._need(self.estimated)
        if need is ScenarioKind.NONE:
            self.held_s = 0.0
        else:
            self.held_s = self.held_s + period_s if need is self.need else period_s
        self.need, self.time_s = need, now_s
        return self.estimated

    @property
    def _below_band(self) -> Thresholds:
        """Th_high − tolerance: the level the instances left after a scale-in must carry the load at."""
        t = self.thresholds
        return Thresholds(high=max(t.high - self.config.tolerance, 1e-6), low=0.0, var=t.var)

    def _need(self, state: ClusterState) -> ScenarioKind:
        """The first of `_needs`, or NONE."""
        return next(iter(self._needs(state)), ScenarioKind.NONE)

    def _needs(self, state: ClusterState) -> tuple[ScenarioKind, ...]:
        """Every need the state shows through the dead band, in twin.scenario's priority order: overload beyond
        Th_high + tolerance; a load that fewer instances can carry at Th_high − tolerance (section III's summed
        scale-in trigger, whether or not one instance is under Th_low: with the load spread evenly none is); a
        variance over Th_var."""
        t, tolerance = self.thresholds, self.config.tolerance
        active = state.active_indices
        u = state.utilisation[active]
        needs = [ScenarioKind.SCALE_OUT] if np.any(u >= t.high + tolerance) else []
        if active.size < 2:
            return tuple(needs)
        if instances_needed(state, self._below_band) < active.size:
            needs.append(ScenarioKind.SCALE_IN)
        if load_variance(state.utilisation, state.active) >= t.var:
            needs.append(ScenarioKind.LOAD_BALANCE)
        return tuple(needs)

    def _scenario(self, estimated: ClusterState, kind: ScenarioKind) -> Scenario:
        """The scenario handed to the policy for `kind`; for a scale-in, the instances it may drain are those the
        load judgment at Th_high − tolerance lets go, coldest first (`twin.scenario.drainable`)."""
        scenario = replace(detect(estimated, self.thresholds), kind=kind)
        if kind is not ScenarioKind.SCALE_IN:
            return scenario
        band = self._below_band
        return replace(scenario, underloaded=drainable(estimated, band),
                       instances_needed=instances_needed(estimated, band))

    def _choose(self, estimated: ClusterState, decision: Decision,
                kind: ScenarioKind) -> tuple[StabilizedDecision, float]:
        """The cap and the budget: the valid candidate minimising v·(C_R + ω) + Q·C, the largest on a tie."""
        budget = self.config.budget_per_period is not None
        options = candidates(estimated, decision.action, self.config.max_migrations, budget, self.params,
                             self.thresholds)
        asked = int(decision.action.flows.size)
        doing = [c for c in options if not _empty(c.action)]
        if not doing:
            return _held("the action cannot be trimmed to a valid one: nothing done"), 0.0
        best = min(options, key=lambda c: self.config.v * c.other_cost + self._q * c.charge) \
            if budget else doing[0]
        moves = int(best.action.flows.size)
        if _empty(best.action):
            return _held(f"budget: doing nothing beats {asked} moves at Q={self._q:.1f}"), 0.0
        note = "" if best.action is decision.action else \
            f"{moves} of {asked} moves (cap {self.config.max_migrations}, Q={self._q:.1f})"
        return StabilizedDecision(replace(decision, action=best.action), kind, note), best.charge

    def _charge(self, migration_cost: float) -> None:
        """Eq. (12): Q(t+1) = max(Q(t) + C(t) − B, 0)."""
        if self.config.budget_per_period is not None:
            self._q = max(self._q + migration_cost - self.config.budget_per_period, 0.0)

    # --- persistence --------------------------------------------------------------------------
    def view(self) -> dict:
        """What the REST state shows: Q, the need and its window, the last note, the estimated load."""
        est = self.estimated
        return {"enabled": self.config.enabled, "budget_queue": self._q, "need": self.need.value,
                "held_s": self.held_s, "window_s": self.config.window_s(self.need), "last_note": self.last_note,
                "estimated_load_pps": {} if est is None else dict(zip(est.instance_ids, est.load_pps.tolist())),
                "flows_estimated": len(est.flow_ids) if est is not None else 0}

    def snapshot(self) -> dict:
        return {"version": SNAPSHOT_VERSION, "time_s": self.time_s, "budget_queue": self._q,
                "need": self.need.value, "held_s": self.held_s, "last_note": self.last_note,
                "estimator": self.estimator.to_json()}

    @classmethod
    def restore(cls, snapshot: dict, config: StabilizerConfig, thresholds: Thresholds,
                params: CostParams = CostParams()) -> Stabilizer:
        """A stabilizer that goes on from `snapshot` under `config` (estimates of another estimator are
        dropped); StabilizerError naming what is wrong with a bad or other-version snapshot."""
        if not isinstance(snapshot, dict):
            raise StabilizerError("a stabilizer snapshot must be a JSON object")
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise StabilizerError(f"stabilizer snapshot version {snapshot.get('version')!r}; this code reads "
                                  f"version {SNAPSHOT_VERSION}")
        stabilizer = cls(config, thresholds, params)
        try:
            stabilizer._q = _non_negative(snapshot["budget_queue"])
            stabilizer.need = ScenarioKind(snapshot["need"])
            stabilizer.held_s = _non_negative(snapshot["held_s"])
            stabilizer.last_note = str(snapshot["last_note"])
            stabilizer.time_s = None if snapshot["time_s"] is None else float(snapshot["time_s"])
            stabilizer.estimator = RateEstimator.from_json(snapshot["estimator"], config.estimator, config.horizon_s)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise StabilizerError(f"bad stabilizer snapshot: {type(error).__name__} {error}") from None
        return stabilizer

    def reconfigured(self, config: StabilizerConfig, thresholds: Thresholds) -> Stabilizer:
        """The same state under new settings (a run-time config change)."""
        return self.restore(self.snapshot(), config, thresholds, self.params)


def _empty(action: IndexedAction) -> bool:
    return not (action.flows.size or action.start.size or action.stop.size)


def _held(note: str) -> StabilizedDecision:
    """Doing nothing, and why."""
    return StabilizedDecision(Decision(IndexedAction(), reason=note), ScenarioKind.NONE, note)


def _non_negative(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{value!r} is not a finite number >= 0")
    return number

