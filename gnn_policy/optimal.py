"""Optimal: problem (3)-(6) solved with a MILP solver (HiGHS), the reference of Figs. 4-6.

* scale-out / scale-in: the total that `twin.migration.apply` charges (eq. (2) summed over the moved
  flows, C_R = R·ΔN and the ω threshold penalties) is minimised exactly. The penalties are linear
  with slack variables; the eq. (2) coefficients are the constants `twin.cost.flow_migration_cost`
  returns for every allowed (flow, destination) pair.
* load balancing: lexicographic with a stated tolerance. A certified lower bound L of the variance of
  the active utilisations comes from a relaxation (flows split, or only the large ones binary; the
  squares as tangent cuts); then eq. (3) is minimised over the answers whose variance is at most
  min(L + variance_gap·(var_ori − L), any heuristic's): answers from a box of deviations that lies
  under that cap, a cost bound from the cap relaxed by tangent cuts.

Moves are restricted (scale-out: flows of overloaded instances, to the other instances; scale-in:
flows of underloaded instances, to active instances; load balancing: flows of instances above the
balanced utilisation, to instances below it). Every answer is scored by `twin.migration.apply`, and
the best answer of the warm-start policies is always a candidate, so Optimal is never worse than
any of them. docs/optimal.md gives the formulations, what the restrictions lose, the gap definition
and measurements.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import highspy
import numpy as np

from gnn_policy import highs_worker
from gnn_policy.base import Decision, Policy, Problem, score
from twin import cost
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind
from twin.state import ClusterState

_INF = highspy.kHighsInf
_EMPTY = np.empty(0, dtype=np.int64)

BUFFER_MARGIN = 1e-6
"""Packets by which the models tighten constraint (5): HiGHS may break a row by its feasibility tolerance
(1e-7), `twin.migration.apply` forgives only 1e-9, so every solver answer passes apply's check."""


# ------------------------------------------------------------------------------------------------
# Candidates: an action together with what the shared cost model says about it.

@dataclass(frozen=True)
class _Candidate:
    action: IndexedAction
    source: str
    total: float
    """Everything `apply` charges: the objective of scale-out and scale-in."""
    migration: float
    """Eq. (3): the migration cost alone, the secondary objective of load balancing."""
    variance: float

    def key(self, load_balance: bool) -> tuple[float, float]:
        return (self.variance, self.migration) if load_balance else (self.total, self.variance)


def _evaluate(problem: Problem, action: IndexedAction, source: str) -> _Candidate | None:
    outcome = score(problem, Decision(action))
    if not outcome.valid:
        return None
    breakdown = outcome.breakdown
    return _Candidate(action, source, breakdown.total, breakdown.migration, breakdown.variance_after)


def _checked(problem: Problem, action: IndexedAction, source: str) -> _Candidate:
    """A solver answer scored by the cost model; one that `apply` rejects means the model is wrong."""
    candidate = _evaluate(problem, action, source)
    if candidate is None:
        raise RuntimeError(f"{source}: a HiGHS answer fails twin.migration.apply; the model disagrees with it")
    return candidate


def improvement_gap(incumbent: float, bound: float, do_nothing: float) -> float:
    """Share of the best possible improvement over doing nothing that is not certified (docs/optimal.md).

    It is the usual relative gap of the equivalent maximisation "improve on doing nothing"; unlike
    |incumbent − bound| / |incumbent| it does not depend on where zero lies (scale-in totals are
    negative, load-balancing variances can be almost zero).
    """
    if not math.isfinite(bound):
        return 1.0
    achievable = do_nothing - bound
    if achievable <= 1e-12 * max(1.0, abs(do_nothing)):
        return 0.0
    return float(min(1.0, max(0.0, incumbent - bound) / achievable))


def _indexed(flows, dst, start=(), stop=()) -> IndexedAction:
    flows = np.asarray(flows, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    order = np.argsort(flows, kind="stable")
    return IndexedAction(flows[order], dst[order], np.sort(np.asarray(start, dtype=np.int64)),
                         np.sort(np.asarray(stop, dtype=np.int64)))


# ------------------------------------------------------------------------------------------------
# A thin layer over highspy: columns and rows added in numpy batches, one run with a warm start.

@dataclass
class _Run:
    status: str
    """'optimal', 'time_limit', 'infeasible', another HiGHS model status in lower case, or 'killed' (HiGHS overran
    its time limit and its worker process was stopped, `gnn_policy.highs_worker`)."""
    x: np.ndarray | None
    objective: float
    bound: float
    seconds: float
    saved: list[np.ndarray] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """Whether the solve ended at the time limit rather than with a proof."""
        return self.status in ("time_limit", "killed")


PROOF_SLACK = 10.0
"""A run that ends "optimal" with its answer more than this many times its gap tolerances above its bound was
not proven (`_Milp.run`); the slack keeps HiGHS's own rounding of the gap from triggering a second solve."""


class _Milp:
    """A MILP built in numpy batches and solved by HiGHS in the worker process (`gnn_policy.highs_worker`), which
    is killed when a solve overruns its time limit. The model is the log of its highspy calls."""

    def __init__(self, threads: int, seed: int):
        self.settings = {"output_flag": False, "threads": int(threads), "random_seed": int(seed), "mip_rel_gap": 1e-6}
        self.log: list[tuple[str, tuple]] = []
        self.key = highs_worker.new_key()
        self.n = 0
        self.offset = 0.0
        self.n_integer = 0
        self.costs = np.zeros(0)
        """The objective coefficient of every column, as set in HiGHS (a run prices its answer with them)."""
        highs_worker.solver_process.start()

    def add(self, count: int, lower=0.0, upper=1.0, cost=0.0, integer: bool = False) -> np.ndarray:
        if count == 0:
            return _EMPTY
        lower = np.broadcast_to(np.asarray(lower, dtype=float), (count,)).copy()
        upper = np.broadcast_to(np.asarray(upper, dtype=float), (count,)).copy()
        cols = np.arange(self.n, self.n + count, dtype=np.int64)
        self.log.append(("addVars", (count, lower, upper)))
        costs = np.broadcast_to(np.asarray(cost, dtype=float), (count,)).copy()
        if np.any(costs != 0):
            self.log.append(("changeColsCost", (count, cols.astype(np.int32), costs)))
        self.costs = np.r_[self.costs, costs]
        self.n += count
        if integer:
            self.set_integer(cols)
        return cols

    def set_integer(self, cols: np.ndarray) -> None:
        if cols.size:
            self.log.append(("changeColsIntegrality", (cols.size, cols.astype(np.int32),
                                                       np.full(cols.size, highspy.HighsVarType.kInteger))))
            self.n_integer += cols.size

    def bounds(self, cols: np.ndarray, lower, upper) -> None:
        self.log.append(("changeColsBounds", (cols.size, cols.astype(np.int32),
                                              np.broadcast_to(np.asarray(lower, dtype=float), cols.shape).copy(),
                                              np.broadcast_to(np.asarray(upper, dtype=float), cols.shape).copy())))

    def rows(self, rows: list[tuple[np.ndarray, np.ndarray, float, float]]) -> None:
        """Add rows lo <= Σ val·x[idx] <= hi."""
        rows = [r for r in rows if len(r[0])]
        if not rows:
            return
        lengths = np.array([len(r[0]) for r in rows])
        starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int32)
        index = np.concatenate([np.asarray(r[0]) for r in rows]).astype(np.int32)
        value = np.concatenate([np.asarray(r[1], dtype=float) for r in rows])
        lower = np.array([r[2] for r in rows], dtype=float)
        upper = np.array([r[3] for r in rows], dtype=float)
        self.log.append(("addRows", (len(rows), lower, upper, index.size, starts, index, value)))

    def csr_rows(self, starts: np.ndarray, index: np.ndarray, value: np.ndarray, lower, upper) -> None:
        count = starts.size
        if count == 0:
            return
        self.log.append(("addRows", (count, np.broadcast_to(np.asarray(lower, dtype=float), (count,)).copy(),
                                     np.broadcast_to(np.asarray(upper, dtype=float), (count,)).copy(), index.size,
                                     starts.astype(np.int32), index.astype(np.int32), value.astype(float))))

    def objective(self, cols: np.ndarray, costs: np.ndarray) -> None:
        """Replace the objective coefficients of every column (zero where not named)."""
        full = np.zeros(self.n)
        full[cols] = costs
        self.log.append(("changeColsCost", (self.n, np.arange(self.n, dtype=np.int32), full)))
        self.costs = full

    def run(self, seconds: float, start: np.ndarray | None = None, *, rel_gap: float = 1e-6,
            abs_gap: float = 1e-6, save: bool = False) -> _Run:
        """One solve within `seconds`, from `start` if given. HiGHS 1.16 can end a warm-started solve with status
        optimal while its bound lies far below the start's objective (it returns the start, and reports the
        bound as the objective): such a run is solved again by a fresh solver without the start in the time left,
        and the better answer is kept with the higher bound."""
        began = time.perf_counter()
        self.settings.update(mip_rel_gap=float(rel_gap), mip_abs_gap=float(abs_gap),
                             mip_improving_solution_save=bool(save))
        first = self._solve(seconds, start, save)
        unproven = first.objective - first.bound > PROOF_SLACK * max(abs_gap, rel_gap * abs(first.objective))
        if start is None or first.status != "optimal" or not unproven:
            return first
        self.key = highs_worker.new_key()
        second = self._solve(seconds - (time.perf_counter() - began), None, save)
        better = second if second.x is not None and second.objective <= first.objective else first
        return _Run(better.status, better.x, better.objective, max(first.bound, second.bound),
                    first.seconds + second.seconds, first.saved + second.saved)

    def _solve(self, seconds: float, start: np.ndarray | None, save: bool) -> _Run:
        seconds = float(max(seconds, 0.01))
        began = time.perf_counter()
        report = highs_worker.solver_process.solve(self.key, self.log, {**self.settings, "time_limit": seconds},
                                                   start, seconds, save)
        if report is None:  # killed: the worker and every model it held are gone
            self.key = highs_worker.new_key()
            return _Run("killed", None, math.inf, -math.inf, time.perf_counter() - began)
        x = report["x"]
        bound = report["mip_dual_bound"] if self.n_integer else report["objective"]
        if report["status"] == "optimal" and x is not None and not math.isfinite(bound):
            bound = report["objective"]
        # the solution's own objective: after a warm start HiGHS can report another one in its info
        objective = float(self.costs @ x) if x is not None else math.inf
        return _Run(report["status"], x, objective + self.offset, bound + self.offset if math.isfinite(bound) else -math.inf,
                    time.perf_counter() - began, report["saved"])


# ------------------------------------------------------------------------------------------------
# Allowed moves: the restricted problem's (flow, destination) pairs with their eq. (2) costs.

@dataclass(frozen=True)
class _Pairs:
    flow: np.ndarray
    dst: np.ndarray
    src: np.ndarray
    cost: np.ndarray
    """C_ij^f of eq. (2), from twin.cost.flow_migration_cost."""
    size: np.ndarray
    """Packets buffered at the destination during the move (constraint (5)), twin.cost.migrated_buffer_packets."""

    @property
    def count(self) -> int:
        return int(self.flow.size)

    def subset(self, keep: np.ndarray) -> _Pairs:
        return _Pairs(self.flow[keep], self.dst[keep], self.src[keep], self.cost[keep], self.size[keep])


def _pairs(problem: Problem, flows: np.ndarray, destinations: np.ndarray) -> _Pairs:
    """Every (flow, destination) pair with destination != source that constraint (5) allows on its own."""
    state = problem.state
    flows = np.asarray(flows, dtype=np.int64)
    destinations = np.asarray(destinations, dtype=np.int64)
    f = np.repeat(flows, destinations.size)
    k = np.tile(destinations, flows.size)
    keep = state.assignment[f] != k
    f, k = f[keep], k[keep]
    size = cost.migrated_buffer_packets(state, f, k)
    keep = state.queue[k] + size <= state.buffer[k] - BUFFER_MARGIN
    f, k, size = f[keep], k[keep], size[keep]
    return _Pairs(f, k, state.assignment[f], cost.flow_migration_cost(state, f, k, problem.params), size)


def _move_columns(pair_index: dict[tuple[int, int], int], n_columns: int, action: IndexedAction) -> np.ndarray | None:
    """A column vector with the action's (flow, destination) move variables at 1; None when a move is
    not a column of the restricted model."""
    x = np.zeros(n_columns)
    for f, k in zip(action.flows.tolist(), action.dst.tolist()):
        col = pair_index.get((f, k))
        if col is None:
            return None
        x[col] = 1.0
    return x


def _group_rows(keys: np.ndarray, cols: np.ndarray, values: np.ndarray):
    """CSR (starts, index, value, key of each row) of the entries grouped by key."""
    order = np.argsort(keys, kind="stable")
    keys, cols, values = keys[order], cols[order], values[order]
    if keys.size == 0:
        return _EMPTY, _EMPTY, np.empty(0), _EMPTY
    starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
    return starts, cols, values, keys[starts]


def _utilisation_terms(state: ClusterState, src: np.ndarray, dst: np.ndarray, rate: np.ndarray, cols: np.ndarray):
    """(instance, column, coefficient) of Δu for columns moving `rate` packets/s each: +r/c at the destination,
    −r/c at the source."""
    inst = np.r_[dst, src]
    coef = np.r_[rate / state.capacity[dst], -rate / state.capacity[src]]
    return inst, np.r_[cols, cols], coef


def _assignment_rows(milp: _Milp, pairs: _Pairs, ycols: np.ndarray) -> None:
    """(4): each flow stays or moves to exactly one destination (Σ_k y_fk <= 1)."""
    starts, index, value, _ = _group_rows(pairs.flow, ycols, np.ones(pairs.count))
    milp.csr_rows(starts, index, value, -_INF, 1.0)


def _buffer_rows(milp: _Milp, state: ClusterState, dst: np.ndarray, size: np.ndarray, cols: np.ndarray) -> None:
    """(5): queue_j + Σ moved-in size <= buffer_j, only where the moves could exceed it (`size`: packets each
    column at 1 buffers at its destination `dst`)."""
    room = state.buffer - state.queue - BUFFER_MARGIN
    starts, index, value, keys = _group_rows(dst, cols, size)
    if keys.size == 0:
        return
    totals = np.add.reduceat(value, starts)
    binding = totals > room[keys]
    rows = []
    ends = np.r_[starts[1:], index.size]
    for r in np.flatnonzero(binding):
        rows.append((index[starts[r]:ends[r]], value[starts[r]:ends[r]], -_INF, float(room[keys[r]])))
    milp.rows(rows)


# ------------------------------------------------------------------------------------------------
# Scale-out and scale-in: min Σ C y + R(Σ start − Σ stop) + ω Σ (over + under).

@dataclass
class _ScaleModel:
    milp: _Milp
    pairs: _Pairs
    y: np.ndarray
    standby: np.ndarray
    s: np.ndarray
    stoppable: np.ndarray
    z: np.ndarray
    touched: np.ndarray
    over: np.ndarray
    under: np.ndarray
    pair_index: dict

    def decode(self, x: np.ndarray) -> IndexedAction:
        moved = x[self.y] > 0.5
        return _indexed(self.pairs.flow[moved], self.pairs.dst[moved], self.standby[x[self.s] > 0.5],
                        self.stoppable[x[self.z] > 0.5])

    def encode(self, problem: Problem, action: IndexedAction) -> np.ndarray | None:
        """The column vector of an action, or None when the action lies outside the restricted problem."""
        x = _move_columns(self.pair_index, self.milp.n, action)
        if x is None:
            return None
        for instances, members, cols in ((action.start, self.standby, self.s), (action.stop, self.stoppable, self.z)):
            position = {k: n for n, k in enumerate(members.tolist())}
            for k in instances.tolist():
                if k not in position:
                    return None
                x[cols[position[k]]] = 1.0
        state, th = problem.state, problem.thresholds
        load = state.load_pps.copy()
        np.subtract.at(load, state.assignment[action.flows], state.rate[action.flows])
        np.add.at(load, action.dst, state.rate[action.flows])
        u = load / state.capacity
        active = state.active.copy()
        active[action.start] = True
        active[action.stop] = False
        t = self.touched
        x[self.over] = np.clip(u[t] - th.high, 0.0, None)
        x[self.under] = np.where(active[t], np.clip(th.low - u[t], 0.0, None), 0.0)
        return x


def _identical_groups(state: ClusterState, instances: np.ndarray, sources: np.ndarray) -> list[np.ndarray]:
    """Instances indistinguishable to every move from `sources` (same capacity, buffer, queue, la_p, la_ij)."""
    groups: dict[tuple, list[int]] = {}
    for k in instances.tolist():
        key = (state.capacity[k], state.buffer[k], state.queue[k], state.processing_ms[k],
               tuple(state.migration_ms[sources, k].tolist()))
        groups.setdefault(key, []).append(k)
    return [np.array(g) for g in groups.values() if len(g) > 1]


def _scale_model(problem: Problem, pairs: _Pairs, movable: np.ndarray, threads: int, seed: int) -> _ScaleModel:
    state, params, th = problem.state, problem.params, problem.thresholds
    n = state.n_instances
    standby = np.unique(pairs.dst[~state.active[pairs.dst]])
    movable_mask = np.zeros(state.n_flows, dtype=bool)
    movable_mask[movable] = True
    unmovable_per_instance = np.bincount(state.assignment[~movable_mask], minlength=n)
    stoppable = np.flatnonzero(state.active & (unmovable_per_instance == 0))
    touched = np.unique(np.r_[pairs.src, pairs.dst, stoppable, standby]).astype(np.int64)

    milp = _Milp(threads, seed)
    resource = cost.resource_cost(1, params)
    y = milp.add(pairs.count, cost=pairs.cost, integer=True)
    s = milp.add(standby.size, cost=resource, integer=True)
    z = milp.add(stoppable.size, cost=-resource, integer=True)
    over = milp.add(touched.size, upper=_INF, cost=params.omega)
    under = milp.add(touched.size, upper=_INF, cost=params.omega)
    untouched_active = state.active.copy()
    untouched_active[touched] = False
    milp.offset = cost.threshold_penalty(state.utilisation, untouched_active, th, params)

    _assignment_rows(milp, pairs, y)
    rows = []
    # moves only to active or started instances: y_fk <= s_k
    s_of = {k: c for k, c in zip(standby.tolist(), s.tolist())}
    for col, k in zip(y.tolist(), pairs.dst.tolist()):
        if k in s_of:
            rows.append((np.array([col, s_of[k]]), np.array([1.0, -1.0]), -_INF, 0.0))
    # identical standby instances are started in a fixed order
    for group in _identical_groups(state, standby, np.unique(pairs.src)):
        for a, b in itertools.pairwise(group):
            rows.append((np.array([s_of[a], s_of[b]]), np.array([1.0, -1.0]), 0.0, _INF))
    # a stopped instance ends empty: every flow on it moves, none moves onto it
    z_of = {k: c for k, c in zip(stoppable.tolist(), z.tolist())}
    by_flow_starts, by_flow_cols, _, by_flow_keys = _group_rows(pairs.flow, y, np.ones(pairs.count))
    by_flow_ends = np.r_[by_flow_starts[1:], by_flow_cols.size]
    flow_cols = {int(f): by_flow_cols[a:b] for f, a, b in zip(by_flow_keys, by_flow_starts, by_flow_ends)}
    for j in stoppable.tolist():
        for f in state.flows_on(j).tolist():
            cols = flow_cols.get(f, _EMPTY)
            rows.append((np.r_[cols, z_of[j]], np.r_[np.ones(cols.size), -1.0], 0.0, _INF))
    for col, k in zip(y.tolist(), pairs.dst.tolist()):
        if k in z_of:
            rows.append((np.array([col, z_of[k]]), np.array([1.0, 1.0]), -_INF, 1.0))
    milp.rows(rows)
    _buffer_rows(milp, state, pairs.dst, pairs.size, y)

    # threshold penalties on the utilisation after the action
    inst, cols, coef = _utilisation_terms(state, pairs.src, pairs.dst, state.rate[pairs.flow], y)
    position = np.full(n, -1)
    position[touched] = np.arange(touched.size)
    starts, index, value, keys = _group_rows(position[inst], cols, coef)
    terms = {int(p): (index[a:b], value[a:b]) for p, a, b in zip(keys, starts, np.r_[starts[1:], index.size])}
    u0 = state.utilisation
    rows = []
    for p, j in enumerate(touched.tolist()):
        idx, val = terms.get(p, (_EMPTY, np.empty(0)))
        # over_j >= u_j - Th_high
        rows.append((np.r_[over[p], idx], np.r_[1.0, -val], u0[j] - th.high, _INF))
        # under_j >= Th_low·active_j - u_j
        if j in s_of:
            rows.append((np.r_[under[p], idx, s_of[j]], np.r_[1.0, val, -th.low], -u0[j], _INF))
        elif j in z_of:
            rows.append((np.r_[under[p], idx, z_of[j]], np.r_[1.0, val, th.low], th.low - u0[j], _INF))
        else:
            rows.append((np.r_[under[p], idx], np.r_[1.0, val], th.low - u0[j], _INF))
    milp.rows(rows)
    pair_index = {(int(f), int(k)): int(c) for f, k, c in zip(pairs.flow, pairs.dst, y)}
    return _ScaleModel(milp, pairs, y, standby, s, stoppable, z, touched, over, under, pair_index)


# ------------------------------------------------------------------------------------------------
# Load balancing: the variance of the active utilisations first, eq. (3) second.

@dataclass
class _BalanceModel:
    """y_fk over the load-balancing pairs, a free level μ and d_j = u_j − μ for each active instance.

    (1/N)·Σ_j d_j² >= var(u) for every μ, with equality at the mean, so the variance is bounded from
    below through tangent cuts t_j >= 2a·d_j − a² on the squares and from above by boxes on the d_j.
    """
    milp: _Milp
    pairs: _Pairs
    y: np.ndarray
    mu: int
    d: np.ndarray
    active: np.ndarray
    pair_index: dict
    relaxed_index: dict = field(default_factory=dict)
    """(flow, destination) of each relaxed pair -> its aggregated column z_ik (packets/s)."""
    t: np.ndarray = field(default_factory=lambda: _EMPTY)
    cuts: set = field(default_factory=set)

    @property
    def n_active(self) -> int:
        return int(self.active.size)

    def decode(self, x: np.ndarray) -> IndexedAction:
        moved = x[self.y] > 0.5
        return _indexed(self.pairs.flow[moved], self.pairs.dst[moved])

    def deviations(self, x: np.ndarray) -> np.ndarray:
        """u_j − mean(u) at a (possibly fractional) solution."""
        d = x[self.d]
        return d - d.mean()

    def encode(self, state: ClusterState, action: IndexedAction) -> np.ndarray | None:
        """The column vector of an action, or None when it lies outside the restricted problem."""
        if action.start.size or action.stop.size:
            return None
        relaxed = np.array([(f, k) in self.relaxed_index for f, k in zip(action.flows.tolist(), action.dst.tolist())],
                           dtype=bool)
        x = _move_columns(self.pair_index, self.milp.n, _indexed(action.flows[~relaxed], action.dst[~relaxed]))
        if x is None:
            return None
        for f, k in zip(action.flows[relaxed].tolist(), action.dst[relaxed].tolist()):
            x[self.relaxed_index[f, k]] += state.rate[f]
        u = _utilisation_after(state, action)[self.active]
        x[self.mu] = u.mean()
        x[self.d] = u - u.mean()
        if self.t.size:
            x[self.t] = (u - u.mean()) ** 2
        return x

    def add_squares(self, points: np.ndarray) -> None:
        """Columns t_j >= 0 with tangent cuts at `points` (the same for every instance)."""
        self.t = self.milp.add(self.n_active, upper=_INF)
        for a in points:
            self.add_tangents(np.full(self.n_active, a))

    def add_tangents(self, deviations: np.ndarray) -> int:
        """t_j >= 2a·d_j − a² at a = each given deviation, skipping points already cut; returns the new count."""
        rows = []
        for p, a in enumerate(np.asarray(deviations, dtype=float).tolist()):
            key = (p, round(a, 12))
            if key in self.cuts:
                continue
            self.cuts.add(key)
            rows.append((np.array([self.t[p], self.d[p]]), np.array([1.0, -2.0 * a]), -a * a, _INF))
        self.milp.rows(rows)
        return len(rows)


def _utilisation_after(state: ClusterState, action: IndexedAction) -> np.ndarray:
    """Utilisation of every instance after the moves of `action` (a model-side check; apply scores)."""
    assignment = state.assignment.copy()
    assignment[action.flows] = action.dst
    return state.with_changes(assignment=assignment).utilisation


def _balance_split(state: ClusterState) -> tuple[np.ndarray, np.ndarray]:
    """The active instances above and below the balanced utilisation Σ load / Σ capacity."""
    active = state.active_indices
    m = float(state.load_pps[active].sum() / state.capacity[active].sum())
    u = state.utilisation
    hot = active[u[active] > m * (1 + 1e-12) + 1e-15]
    cold = active[u[active] < m * (1 - 1e-12) - 1e-15]
    return hot, cold


def _pairs_under_cap(state: ClusterState, pairs: _Pairs, cap: float) -> _Pairs:
    """The pairs that an answer with variance <= cap can use.

    Destinations only gain load here, so moving f to k leaves u_k >= u0_k + r_f/c_k; no entry of an N-vector
    with variance V lies more than sqrt((N − 1)·V) above its mean; and the mean rises at most by what moving
    each flow to its most favourable destination adds. A flow that lands above that on k (an elephant onto an
    instance already near the mean) makes every answer using the pair exceed the cap: dropping such pairs
    keeps every answer and tightens the LP relaxation, which would otherwise spread the elephant in fractions.
    """
    active = state.active_indices
    u = state.utilisation
    rate = state.rate[pairs.flow]
    gain = np.zeros(state.n_flows)
    np.maximum.at(gain, pairs.flow, rate * (1 / state.capacity[pairs.dst] - 1 / state.capacity[pairs.src]))
    highest_mean = u[active].mean() + gain.sum() / active.size
    landing = u[pairs.dst] + rate / state.capacity[pairs.dst]
    return pairs.subset(landing - highest_mean <= math.sqrt((active.size - 1) * cap))


def _tangent_points(step: float, reach: float) -> np.ndarray:
    """Tangent points every `step` over [−reach, reach] (0 included)."""
    count = math.ceil(reach / step)
    return step * np.arange(-count, count + 1)


def _balance_model(problem: Problem, pairs: _Pairs, integral: np.ndarray, threads: int, seed: int) -> _BalanceModel:
    """(4), (5) and d_j = u0_j + Δu_j − μ, with y_fk binary for the pairs in `integral`.

    The other pairs are relaxed: their flows may split, and only their total rate per (source, destination)
    matters to the loads and to (5) (a flow's buffered packets are its rate times the pair's latency), so they
    are aggregated into one continuous column z_ik of packets/s per instance pair, at most the rate of the
    flows that may take that pair and, per source, of its relaxed flows: a relaxation of the flow-level LP with
    hundreds of columns instead of tens of thousands. The model's actions (`decode`) are the binary moves.
    """
    state = problem.state
    active = state.active_indices
    binary, relaxed = pairs.subset(integral), pairs.subset(~integral)
    milp = _Milp(threads, seed)
    y = milp.add(binary.count, integer=True)
    _assignment_rows(milp, binary, y)
    keys, pair_of = np.unique(np.c_[relaxed.src, relaxed.dst], axis=0, return_inverse=True)
    z_src, z_dst = keys[:, 0], keys[:, 1]
    z = milp.add(z_src.size, upper=np.bincount(pair_of.ravel(), weights=state.rate[relaxed.flow],
                                               minlength=z_src.size))
    relaxed_flows = np.unique(relaxed.flow)
    shed = np.bincount(state.assignment[relaxed_flows], weights=state.rate[relaxed_flows],
                       minlength=state.n_instances)
    starts, index, value, sources = _group_rows(z_src, z, np.ones(z.size))
    milp.csr_rows(starts, index, value, -_INF, shed[sources])
    per_rate = cost.packets_buffered_during_move(1.0, state.migration_ms[z_src, z_dst])
    _buffer_rows(milp, state, np.r_[binary.dst, z_dst], np.r_[binary.size, per_rate], np.r_[y, z])
    mu = int(milp.add(1, lower=-_INF, upper=_INF)[0])
    d = milp.add(active.size, lower=-_INF, upper=_INF)
    position = np.full(state.n_instances, -1)
    position[active] = np.arange(active.size)
    inst, cols, coef = _utilisation_terms(state, np.r_[binary.src, z_src], np.r_[binary.dst, z_dst],
                                          np.r_[state.rate[binary.flow], np.ones(z.size)], np.r_[y, z])
    starts, index, value, keys = _group_rows(position[inst], cols, coef)
    terms = {int(p): (index[a:b], value[a:b]) for p, a, b in zip(keys, starts, np.r_[starts[1:], index.size])}
    u0 = state.utilisation[active]
    rows = []
    for p in range(active.size):
        idx, val = terms.get(p, (_EMPTY, np.empty(0)))
        rows.append((np.r_[d[p], mu, idx], np.r_[1.0, 1.0, -val], u0[p], u0[p]))
    milp.rows(rows)
    pair_index = {(int(f), int(k)): int(c) for f, k, c in zip(binary.flow, binary.dst, y)}
    relaxed_index = {(int(f), int(k)): int(c) for f, k, c in zip(relaxed.flow, relaxed.dst, z[pair_of.ravel()])}
    return _BalanceModel(milp, binary, y, mu, d, active, pair_index, relaxed_index)


def _trust_region(target: np.ndarray, cap: float) -> tuple[float, float]:
    """A half-width w and a budget b such that every d with |d_j − a_j| <= w and 2·Σ a_j·d_j <= b has
    (1/N)·Σ d_j² <= cap (a = target): Σ d² = 2·Σ a·d − Σ a² + Σ (d − a)² <= b − Σ a² + N·w².

    w is the larger of the plain box's half-width (the largest with (1/N)·Σ (|a_j| + w)² <= cap, where the
    linear row is implied) and √((cap − mean a²)/2), which leaves half of the slack to the linear row: an
    elephant's large |a_j| would otherwise shrink the plain box for every instance. The budget is ∞ where the
    plain box wins (the row is implied then). NaN when the target itself lies above the cap.
    """
    n = target.size
    s1 = float(np.abs(target).mean())
    s2 = float((target ** 2).mean())
    if s2 >= cap:
        return math.nan, math.nan
    plain = -s1 + math.sqrt(s1 * s1 - s2 + cap)
    width = math.sqrt((cap - s2) / 2)
    return (plain, math.inf) if plain >= width else (width, n * (cap + s2 - width * width))


# ------------------------------------------------------------------------------------------------
# The policy.

@dataclass
class _Report:
    notes: list[str] = field(default_factory=list)
    timed_out: bool = False

    def add(self, note: str) -> None:
        self.notes.append(note)


class Optimal(Policy):
    """Problem (3)-(6) solved with HiGHS, warm-started from the best answer of the given policies.

    `time_limit_s` bounds the whole decision (warm-start policies included); when it is reached the
    best answer found is returned and `reason` says so. Load balancing is lexicographic with a tolerance:
    variances within `variance_gap` of the certified improvement (var_ori − bound) count as equal, and the
    cheapest of them is sought; flows below `integral_share` of their instance's capacity are fractional in
    the relaxation that bounds the variance (docs/optimal.md).
    """

    name: ClassVar[str] = "optimal"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(
        {ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN, ScenarioKind.LOAD_BALANCE})

    def __init__(self, warm_start: Sequence[Policy] = (), time_limit_s: float = 10.0, *, threads: int = 1,
                 seed: int = 0, variance_gap: float = 0.01, integral_share: float = 0.05):
        if not time_limit_s > 0:
            raise ValueError(f"time limit must be positive, got {time_limit_s}")
        if not 0 < variance_gap < 1:
            raise ValueError(f"variance gap must lie in (0, 1), got {variance_gap}")
        self.warm_start = tuple(warm_start)
        self.time_limit_s = float(time_limit_s)
        self.threads = int(threads)
        self.seed = int(seed)
        self.variance_gap = float(variance_gap)
        self.integral_share = float(integral_share)

    # --- entry -----------------------------------------------------------------------------
    def _decide(self, problem: Problem) -> Decision:
        began = time.perf_counter()
        deadline = began + self.time_limit_s
        load_balance = problem.scenario.kind is ScenarioKind.LOAD_BALANCE
        report = _Report()
        candidates = self._warm_starts(problem, report)
        try:
            if load_balance:
                decision = self._load_balance(problem, candidates, deadline, report)
            else:
                decision = self._scale(problem, candidates, deadline, report)
        except Exception as error:  # noqa: BLE001 - the solver must never take the controller down
            report.add(f"solver failed ({type(error).__name__}: {error}); best warm start returned")
            decision = self._fallback(problem, candidates, load_balance, report)
        elapsed = time.perf_counter() - began
        reason = "; ".join(([decision.reason] if decision.reason else []) + report.notes + [f"{elapsed:.2f} s"])
        if report.timed_out:
            reason = f"time limit {self.time_limit_s:g} s reached, best answer found returned; " + reason
        return Decision(decision.action, decision.feasible, reason, decision.proven_optimal, decision.optimal_gap)

    def _warm_starts(self, problem: Problem, report: _Report) -> list[_Candidate]:
        candidates = [_evaluate(problem, IndexedAction(), "no-op")]
        for policy in self.warm_start:
            try:
                decision = policy.decide(problem)
            except Exception as error:  # noqa: BLE001 - a failing baseline is skipped, never propagated
                report.add(f"warm start {policy.name} raised {type(error).__name__}")
                continue
            if not decision.feasible:
                continue
            candidate = _evaluate(problem, decision.action, policy.name)
            if candidate is None:
                report.add(f"warm start {policy.name} gave an invalid action")
            else:
                candidates.append(candidate)
        return [c for c in candidates if c is not None]

    def _fallback(self, problem: Problem, candidates: list[_Candidate], load_balance: bool,
                  report: _Report) -> Decision:
        if not candidates:
            return Decision.infeasible("no valid action found: " + "; ".join(report.notes))
        best = min(candidates, key=lambda c: c.key(load_balance))
        return Decision(best.action, proven_optimal=False, optimal_gap=None)

    # --- scale-out and scale-in ---------------------------------------------------------------
    def _scale(self, problem: Problem, candidates: list[_Candidate], deadline: float, report: _Report) -> Decision:
        """Scale-out moves flows of overloaded instances to the other instances and to standby ones; scale-in
        moves flows of underloaded instances to any active instance (docs/optimal.md, "Restrictions")."""
        state, scenario = problem.state, problem.scenario
        out = scenario.kind is ScenarioKind.SCALE_OUT
        sources = np.asarray(scenario.overloaded if out else scenario.underloaded, dtype=np.int64)
        movable = np.flatnonzero(np.isin(state.assignment, sources))
        excluded = sources if out else np.flatnonzero(~state.active)
        pairs = _pairs(problem, movable, np.setdiff1d(np.arange(state.n_instances), excluded))
        if pairs.count == 0:
            return self._nothing_movable(problem, candidates, movable.size, report)
        model = _scale_model(problem, pairs, movable, self.threads, self.seed)
        inside = [(c, x) for c in candidates if (x := model.encode(problem, c.action)) is not None]
        start = min(inside, key=lambda cx: cx[0].total)[1] if inside else None
        run = model.milp.run(deadline - time.perf_counter(), start)
        report.add(f"HiGHS: {pairs.count} move pairs, {model.standby.size} standby, {model.stoppable.size} "
                   f"stoppable, {run.status} in {run.seconds:.2f} s")
        report.timed_out |= run.stopped
        if run.x is not None:
            candidates.append(_checked(problem, model.decode(run.x), "milp"))
        best = min(candidates, key=lambda c: c.key(False))
        do_nothing = next(c for c in candidates if c.source == "no-op")
        proven = run.status == "optimal" and best.total <= run.bound + 1e-6 * max(1.0, abs(best.total))
        gap = 0.0 if proven else improvement_gap(best.total, run.bound, do_nothing.total)
        report.add(f"answer from {best.source}: total {best.total:.2f}, bound {run.bound:.2f}, doing nothing "
                   f"{do_nothing.total:.2f}, gap {gap:.3%}" + (", proven optimal" if proven else ""))
        return Decision(best.action, proven_optimal=proven, optimal_gap=gap)

    @staticmethod
    def _nothing_movable(problem: Problem, candidates: list[_Candidate], n_movable: int, report: _Report) -> Decision:
        """No flow of the restricted problem fits any destination: infeasible unless a warm start found a move."""
        moves = [c for c in candidates if c.source != "no-op"]
        if moves:
            best = min(moves, key=lambda c: c.key(problem.scenario.kind is ScenarioKind.LOAD_BALANCE))
            report.add(f"the restricted problem has no move; answer from {best.source}, optimality not proven")
            return Decision(best.action, proven_optimal=False, optimal_gap=None)
        if n_movable == 0:
            return Decision.infeasible("optimal: no flow may move in this scenario (no instance to relieve holds flows)")
        return Decision.infeasible(f"optimal: none of the {n_movable} movable flows fits the buffer of any eligible "
                                   "destination (constraint 5)")

    # --- load balancing -----------------------------------------------------------------------
    def _load_balance(self, problem: Problem, candidates: list[_Candidate], deadline: float,
                      report: _Report) -> Decision:
        """Lexicographic (docs/optimal.md): a certified lower bound L of the variance (phase 1), then the cheapest
        answer (eq. (3)) whose variance is at most cap = min(L + variance_gap·(var_ori − L), any heuristic's)."""
        state = problem.state
        hot, cold = _balance_split(state)
        movable = np.flatnonzero(np.isin(state.assignment, hot))
        pairs = _pairs(problem, movable, cold)
        if pairs.count == 0:
            return self._nothing_movable(problem, candidates, movable.size, report)
        do_nothing = next(c for c in candidates if c.source == "no-op")
        heuristic = min((c.variance for c in candidates if c.source != "no-op"), default=math.inf)
        if math.isfinite(heuristic) and (useful := _pairs_under_cap(state, pairs, heuristic)).count:
            pairs = useful  # the bound is then min(bound, heuristic): still valid (_variance_bound)
        share = state.rate[pairs.flow] / state.capacity[pairs.src]
        balanced = problem.scenario.cluster_utilisation
        lower = 0.0
        # phase 1 on the LP relaxation first; while no known answer reaches the cap, again with more flows binary:
        # first the elephants that alone fill a balanced instance, then every flow of `integral_share` or more
        passes = [share >= threshold for threshold in (math.inf, max(balanced, self.integral_share),
                                                       self.integral_share)]
        for integral in [p for i, p in enumerate(passes) if i == 0 or p.sum() > passes[i - 1].sum()]:
            phase1_deadline = time.perf_counter() + 0.6 * (deadline - time.perf_counter())
            lower, target = self._variance_bound(problem, pairs, integral, do_nothing.variance, heuristic,
                                                 candidates, phase1_deadline, report, lower)
            cap = self._variance_cap(lower, do_nothing.variance, heuristic)
            under_cap = _pairs_under_cap(state, pairs, cap)
            box_deadline = time.perf_counter() + 0.5 * (deadline - time.perf_counter())
            if self._box_answer(problem, under_cap, target, cap, candidates, box_deadline, report):
                break
        cost_bound = self._cost_bound(problem, under_cap, target, cap, candidates, deadline, report)

        under = [c for c in candidates if c.variance <= cap]
        if not under:  # phase 1 did not close: no known answer is within the tolerance of the bound
            best = min(candidates, key=lambda c: c.key(True))
            gap = improvement_gap(best.variance, lower, do_nothing.variance)
            report.add(f"answer from {best.source}: variance {best.variance:.3e} above the cap {cap:.3e} "
                       f"(bound {lower:.3e}, variance gap {gap:.3%})")
            return Decision(best.action, proven_optimal=False, optimal_gap=gap)
        best = min(under, key=lambda c: (c.migration, c.variance))
        slack = best.migration - cost_bound
        gap = 0.0 if slack <= 1e-6 * max(1.0, best.migration) else min(1.0, slack / best.migration)
        report.add(f"answer from {best.source}: variance {best.variance:.3e} (bound {lower:.3e}, cap {cap:.3e}, "
                   f"before {do_nothing.variance:.3e}), migration cost {best.migration:.2f} (bound "
                   f"{cost_bound:.2f}, gap {gap:.3%})" + (", proven optimal" if gap == 0.0 else ""))
        return Decision(best.action, proven_optimal=gap == 0.0, optimal_gap=gap)

    def _variance_cap(self, lower: float, variance_before: float, heuristic: float) -> float:
        """Variances up to the cap count as equal: within `variance_gap` of the certified improvement, and never
        above a heuristic's (so that Optimal's var_ori / var_lb is at least every heuristic's)."""
        return min(lower + self.variance_gap * (variance_before - lower), heuristic)

    def _variance_bound(self, problem: Problem, pairs: _Pairs, integral: np.ndarray, variance_before: float,
                        heuristic: float, candidates: list[_Candidate], deadline: float, report: _Report,
                        lower: float) -> tuple[float, np.ndarray | None]:
        """Phase 1: a lower bound of the restricted minimum variance (at least `lower`), and the deviations
        u_j − mean(u) of the relaxation's answer (the target of phase 2; None when none was found in time).

        Pairs outside `integral` may move fractionally. The tangent-cut optimum of this relaxation bounds the
        variance from below; tangents at the answer's deviations are added until its true variance is within a
        tenth of the distance from the bound to the cap, so that phase 2 has room around it. The search starts
        from the lowest-variance answer known; with binaries it stops as soon as its bound puts the best heuristic
        answer under the cap and its incumbent, as a target, lies in the lower half of the room below the cap.
        """
        began = time.perf_counter()
        certifying = self.variance_gap * (variance_before - heuristic) / (1 - self.variance_gap)
        model = _balance_model(problem, pairs, integral, self.threads, self.seed)
        n = model.n_active
        model.add_squares(_tangent_points(math.sqrt(variance_before) / 8, math.sqrt(n * variance_before)))
        model.milp.objective(model.t, np.full(n, 1.0 / n))
        known = sorted((c for c in candidates if c.source != "no-op"), key=lambda c: c.variance)
        start = next((x for c in known if (x := model.encode(problem.state, c.action)) is not None), None)
        target, closed, rounds = None, False, 0
        while (remaining := deadline - time.perf_counter()) > 0.01:
            rounds += 1
            room = self._variance_cap(lower, variance_before, heuristic) - lower
            precision = 0.1 * room
            run = model.milp.run(remaining, start, rel_gap=1e-9, abs_gap=max(precision / 2, min(certifying, room / 2)))
            report.timed_out |= run.stopped
            # answers above the heuristic's variance may have used pairs the caller dropped, hence the min
            lower = max(lower, min(run.bound, heuristic))
            if run.x is None:
                break
            target = model.deviations(run.x)  # a stopped search's incumbent still gives phase 2 a target
            if run.status != "optimal":
                break
            refined = float(np.mean(target ** 2)) - lower <= precision
            closed = refined or heuristic <= self._variance_cap(lower, variance_before, heuristic)
            # a refined target gives phase 2's box room; with binaries each round is a search, so a bound that
            # certifies the heuristic answer is enough
            if refined or (closed and integral.any()) or not model.add_tangents(target):
                break
        report.add(f"phase 1 (variance bound, {int(integral.sum())} of {pairs.count} pairs binary, {rounds} "
                   f"rounds, {time.perf_counter() - began:.2f} s): bound {lower:.3e}" + ("" if closed else " (not closed)"))
        return lower, target

    def _box_answer(self, problem: Problem, pairs: _Pairs, target: np.ndarray | None, cap: float,
                    candidates: list[_Candidate], deadline: float, report: _Report) -> bool:
        """Phase 2, answers: min eq. (3) with the deviations in a trust region around phase 1's target that
        lies wholly under the cap (`_trust_region`), so every answer of this model is feasible. Returns whether
        it found one."""
        state = problem.state
        width, budget = _trust_region(target, cap) if target is not None else (math.nan, math.nan)
        if not math.isfinite(width):
            report.add("phase 2 box skipped: " + ("no target" if target is None else
                                                 f"the target's variance {np.mean(target ** 2):.3e} is above the cap"))
            return False
        inner = _balance_model(problem, pairs, np.ones(pairs.count, dtype=bool), self.threads, self.seed)
        inner.milp.bounds(inner.d, target - width, target + width)
        if math.isfinite(budget):
            inner.milp.rows([(inner.d, 2.0 * target, -_INF, budget)])
        inner.milp.objective(inner.y, pairs.cost)
        inside = [(c, x) for c in candidates if (x := inner.encode(state, c.action)) is not None
                  and np.all(np.abs(x[inner.d] - target) <= width) and 2.0 * target @ x[inner.d] <= budget]
        start = min(inside, key=lambda cx: cx[0].migration)[1] if inside else None
        run = inner.milp.run(deadline - time.perf_counter(), start)
        report.timed_out |= run.stopped
        if run.x is not None:
            candidates.append(_checked(problem, inner.decode(run.x), "milp box"))
        report.add(f"phase 2 box (half-width {width:.2e}): {run.status} in {run.seconds:.2f} s")
        return run.x is not None

    def _cost_bound(self, problem: Problem, pairs: _Pairs, target: np.ndarray | None, cap: float,
                    candidates: list[_Candidate], deadline: float, report: _Report) -> float:
        """Phase 2, bound: a lower bound of eq. (3) over the restricted answers with variance <= cap.

        The cap is relaxed to Σ_j t_j <= N·cap with tangent cuts, so the MILP bound is valid; its answers are kept
        when their true variance is under the cap.
        """
        state = problem.state
        everything = np.ones(pairs.count, dtype=bool)
        outer = _balance_model(problem, pairs, everything, self.threads, self.seed)
        n = outer.n_active
        outer.add_squares(_tangent_points(math.sqrt(cap) / 4, math.sqrt(n * cap)))
        if target is not None:
            outer.add_tangents(target)
        outer.milp.rows([(outer.t, np.ones(n), -_INF, n * cap)])
        outer.milp.objective(outer.y, pairs.cost)
        under = [(c, x) for c in candidates if c.variance <= cap and (x := outer.encode(state, c.action)) is not None]
        start = min(under, key=lambda cx: cx[0].migration)[1] if under else None
        run = outer.milp.run(deadline - time.perf_counter(), start, save=True)
        report.timed_out |= run.stopped
        for x in run.saved + ([run.x] if run.x is not None else []):
            action = outer.decode(x)
            if cost.load_variance(_utilisation_after(state, action), state.active) <= cap:
                candidates.append(_checked(problem, action, "milp cap"))
        report.add(f"phase 2 cap: {run.status} in {run.seconds:.2f} s, cost bound {run.bound:.2f}")
        return run.bound
