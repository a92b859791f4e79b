"""Optimal: problem (3)-(6) solved with a MILP solver (HiGHS), the reference of Figs. 4-6.

* scale-out / scale-in: the total that `twin.migration.apply` charges (eq. (2) summed over the moved
  flows, C_R = R·ΔN and the ω threshold penalties) is minimised exactly. The penalties are linear
  with slack variables; the eq. (2) coefficients are the constants `twin.cost.flow_migration_cost`
  returns for every allowed (flow, destination) pair.
* load balancing: lexicographic. First the variance of the active utilisations (a convex quadratic,
  bounded from below by tangent cuts refined at every answer: an outer approximation, so its MILP
  bound is a bound of the variance), then eq. (3) among the answers whose variance lies under a cap
  (within a tolerance of the best, never above a heuristic's).

Moves are restricted (scale-out: flows of overloaded instances, to the other instances; scale-in:
flows of underloaded instances, to active instances; load balancing: flows of instances above the
balanced utilisation, to instances below it). Every answer is scored by `twin.migration.apply`, and
the best answer of the warm-start policies is always a candidate, so Optimal is never worse than
any of them. docs/optimal.md gives the formulations, what the restrictions lose, the gap definition
and measurements.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import highspy
import numpy as np

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
    """'optimal', 'time_limit', 'infeasible' or another HiGHS model status in lower case."""
    x: np.ndarray | None
    objective: float
    bound: float
    seconds: float
    saved: list[np.ndarray] = field(default_factory=list)


class _Milp:
    def __init__(self, threads: int, seed: int):
        self.h = highspy.Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("threads", int(threads))
        self.h.setOptionValue("random_seed", int(seed))
        self.h.setOptionValue("mip_rel_gap", 1e-6)
        self.n = 0
        self.offset = 0.0
        self.integer: list[np.ndarray] = []

    def add(self, count: int, lower=0.0, upper=1.0, cost=0.0, integer: bool = False) -> np.ndarray:
        if count == 0:
            return _EMPTY
        lower = np.broadcast_to(np.asarray(lower, dtype=float), (count,)).copy()
        upper = np.broadcast_to(np.asarray(upper, dtype=float), (count,)).copy()
        cols = np.arange(self.n, self.n + count, dtype=np.int64)
        self.h.addVars(count, lower, upper)
        costs = np.broadcast_to(np.asarray(cost, dtype=float), (count,)).copy()
        if np.any(costs != 0):
            self.h.changeColsCost(count, cols.astype(np.int32), costs)
        if integer:
            self.h.changeColsIntegrality(count, cols.astype(np.int32),
                                         np.full(count, highspy.HighsVarType.kInteger))
            self.integer.append(cols)
        self.n += count
        return cols

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
        self.h.addRows(len(rows), lower, upper, index.size, starts, index, value)

    def csr_rows(self, starts: np.ndarray, index: np.ndarray, value: np.ndarray, lower, upper) -> None:
        count = starts.size
        if count == 0:
            return
        self.h.addRows(count, np.broadcast_to(np.asarray(lower, dtype=float), (count,)).copy(),
                       np.broadcast_to(np.asarray(upper, dtype=float), (count,)).copy(), index.size,
                       starts.astype(np.int32), index.astype(np.int32), value.astype(float))

    def objective(self, cols: np.ndarray, costs: np.ndarray) -> None:
        """Replace the objective coefficients of every column (zero where not named)."""
        full = np.zeros(self.n)
        full[cols] = costs
        self.h.changeColsCost(self.n, np.arange(self.n, dtype=np.int32), full)

    def run(self, seconds: float, start: np.ndarray | None = None, *, rel_gap: float = 1e-6,
            abs_gap: float = 1e-6, save: bool = False) -> _Run:
        h = self.h
        h.setOptionValue("time_limit", float(max(seconds, 0.01)))
        h.setOptionValue("mip_rel_gap", float(rel_gap))
        h.setOptionValue("mip_abs_gap", float(abs_gap))
        h.setOptionValue("mip_improving_solution_save", bool(save))
        if start is not None:
            solution = highspy.HighsSolution()
            solution.col_value = np.asarray(start, dtype=float).tolist()
            solution.value_valid = True
            h.setSolution(solution)
        began = time.perf_counter()
        h.run()
        seconds_used = time.perf_counter() - began
        status = h.getModelStatus()
        info = h.getInfo()
        name = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kTimeLimit: "time_limit",
                highspy.HighsModelStatus.kInfeasible: "infeasible"}.get(status, str(status).split(".")[-1].lower())
        x = None
        if info.primal_solution_status == 2:  # feasible
            x = np.asarray(h.getSolution().col_value, dtype=float)
        bound = info.mip_dual_bound if self.integer else info.objective_function_value
        if name == "optimal" and x is not None and not math.isfinite(bound):
            bound = info.objective_function_value
        saved = []
        if save:
            saved = [np.asarray(s.col_value, dtype=float) for s in h.getSavedMipSolutions()]
        objective = info.objective_function_value if x is not None else math.inf
        return _Run(name, x, objective + self.offset, bound + self.offset if math.isfinite(bound) else -math.inf,
                    seconds_used, saved)


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

    def subset(self, keep: np.ndarray) -> "_Pairs":
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


def _group_rows(keys: np.ndarray, cols: np.ndarray, values: np.ndarray):
    """CSR (starts, index, value, key of each row) of the entries grouped by key."""
    order = np.argsort(keys, kind="stable")
    keys, cols, values = keys[order], cols[order], values[order]
    if keys.size == 0:
        return _EMPTY, _EMPTY, np.empty(0), _EMPTY
    starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
    return starts, cols, values, keys[starts]


def _utilisation_terms(state: ClusterState, pairs: _Pairs, ycols: np.ndarray):
    """(instance, column, coefficient) of Δu: +r/c at the destination, −r/c at the source."""
    rate = state.rate[pairs.flow]
    inst = np.r_[pairs.dst, pairs.src]
    cols = np.r_[ycols, ycols]
    coef = np.r_[rate / state.capacity[pairs.dst], -rate / state.capacity[pairs.src]]
    return inst, cols, coef


def _assignment_rows(milp: _Milp, pairs: _Pairs, ycols: np.ndarray) -> None:
    """(4): each flow stays or moves to exactly one destination (Σ_k y_fk <= 1)."""
    starts, index, value, _ = _group_rows(pairs.flow, ycols, np.ones(pairs.count))
    milp.csr_rows(starts, index, value, -_INF, 1.0)


def _buffer_rows(milp: _Milp, state: ClusterState, pairs: _Pairs, ycols: np.ndarray,
                 budget: np.ndarray | None = None) -> None:
    """(5): queue_j + Σ moved-in size <= buffer_j, only where the moves could exceed it."""
    room = state.buffer - state.queue - BUFFER_MARGIN if budget is None else budget
    starts, index, value, keys = _group_rows(pairs.dst, ycols, pairs.size)
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
        x = np.zeros(self.milp.n)
        for f, k in zip(action.flows.tolist(), action.dst.tolist()):
            col = self.pair_index.get((f, k))
            if col is None:
                return None
            x[col] = 1.0
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
        for a, b in zip(group[:-1], group[1:]):
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
    _buffer_rows(milp, state, pairs, y)

    # threshold penalties on the utilisation after the action
    inst, cols, coef = _utilisation_terms(state, pairs, y)
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
# Load balancing: variance of active utilisations, outer-approximated by tangent cuts.

@dataclass
class _BalanceModel:
    milp: _Milp
    pairs: _Pairs
    y: np.ndarray
    active: np.ndarray
    d: np.ndarray
    t: np.ndarray
    mu: int | None
    pair_index: dict
    cuts: set = field(default_factory=set)
    cap_row: int | None = None

    @property
    def n_active(self) -> int:
        return int(self.active.size)

    def decode(self, x: np.ndarray) -> IndexedAction:
        moved = x[self.y] > 0.5
        return _indexed(self.pairs.flow[moved], self.pairs.dst[moved])

    def encode(self, state: ClusterState, action: IndexedAction) -> np.ndarray | None:
        if action.start.size or action.stop.size:
            return None
        x = np.zeros(self.milp.n)
        for f, k in zip(action.flows.tolist(), action.dst.tolist()):
            col = self.pair_index.get((f, k))
            if col is None:
                return None
            x[col] = 1.0
        u = _utilisation_after(state, action)[self.active]
        x[self.d] = u - u.mean()
        x[self.t] = (u - u.mean()) ** 2
        if self.mu is not None:
            x[self.mu] = u.mean()
        return x

    def add_tangents(self, deviations: np.ndarray) -> None:
        """t_j >= 2a·d_j − a² at a = each given deviation (skipping points already cut)."""
        rows = []
        for p, a in enumerate(np.asarray(deviations, dtype=float).tolist()):
            key = (p, round(a, 12))
            if key in self.cuts:
                continue
            self.cuts.add(key)
            rows.append((np.array([self.t[p], self.d[p]]), np.array([1.0, -2.0 * a]), -a * a, _INF))
        self.milp.rows(rows)


def _utilisation_after(state: ClusterState, action: IndexedAction) -> np.ndarray:
    """Utilisation of every instance after the moves of `action` (a model-side check; apply scores)."""
    return state.with_changes(assignment=_moved_assignment(state, action)).utilisation


def _moved_assignment(state: ClusterState, action: IndexedAction) -> np.ndarray:
    assignment = state.assignment.copy()
    assignment[action.flows] = action.dst
    return assignment


def _variance_after(state: ClusterState, action: IndexedAction) -> float:
    return cost.load_variance(_utilisation_after(state, action), state.active)


def _deviations(state: ClusterState, action: IndexedAction, active: np.ndarray) -> np.ndarray:
    """u_j − mean(u) over the active instances after the moves."""
    u = _utilisation_after(state, action)[active]
    return u - u.mean()


def _balance_split(state: ClusterState) -> tuple[float, np.ndarray, np.ndarray]:
    """The balanced utilisation m = Σ load / Σ capacity and the active instances above and below it."""
    active = state.active_indices
    m = float(state.load_pps[active].sum() / state.capacity[active].sum())
    u = state.utilisation
    hot = active[u[active] > m * (1 + 1e-12) + 1e-15]
    cold = active[u[active] < m * (1 - 1e-12) - 1e-15]
    return m, hot, cold


def _tangent_grid(scale: float) -> np.ndarray:
    """Tangent points: every scale/16 up to 2·scale (where phase 2 keeps the deviations), then doubling to 2."""
    fine = scale * np.arange(0, 33) / 16.0
    coarse = scale * 2.0 ** np.arange(2, 64)
    steps = np.r_[fine, coarse[coarse < 2.0], 2.0]
    return np.unique(np.r_[steps, -steps])


def _balance_model(problem: Problem, pairs: _Pairs, threads: int, seed: int, grid_scale: float) -> _BalanceModel:
    state = problem.state
    active = state.active_indices
    milp = _Milp(threads, seed)
    y = milp.add(pairs.count, integer=True)
    d = milp.add(active.size, lower=-_INF, upper=_INF)
    t = milp.add(active.size, upper=_INF)
    capacity = state.capacity[active]
    mu_fixed = bool(np.all(capacity == capacity[0]))
    u0 = state.utilisation[active]
    _assignment_rows(milp, pairs, y)
    _buffer_rows(milp, state, pairs, y)
    # d_j = u_j − μ with u_j = u0_j + Δu_j; μ is the mean, fixed when capacities are equal (Σ u is then
    # constant), otherwise a free variable: var = min_μ (1/N) Σ (u_j − μ)².
    position = np.full(state.n_instances, -1)
    position[active] = np.arange(active.size)
    inst, cols, coef = _utilisation_terms(state, pairs, y)
    starts, index, value, keys = _group_rows(position[inst], cols, coef)
    terms = {int(p): (index[a:b], value[a:b]) for p, a, b in zip(keys, starts, np.r_[starts[1:], index.size])}
    rows = []
    mean0 = float(u0.mean())
    mu = None if mu_fixed else milp.add(1, lower=-_INF, upper=_INF)[0]
    for p in range(active.size):
        idx, val = terms.get(p, (_EMPTY, np.empty(0)))
        if mu_fixed:
            rows.append((np.r_[d[p], idx], np.r_[1.0, -val], u0[p] - mean0, u0[p] - mean0))
        else:
            rows.append((np.r_[d[p], idx, mu], np.r_[1.0, -val, 1.0], u0[p], u0[p]))
    milp.rows(rows)
    pair_index = {(int(f), int(k)): int(c) for f, k, c in zip(pairs.flow, pairs.dst, y)}
    model = _BalanceModel(milp, pairs, y, active, d, t, mu, pair_index)
    grid = _tangent_grid(grid_scale)
    for a in grid:
        model.add_tangents(np.full(active.size, a))
    model.add_tangents(u0 - mean0)
    return model


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
    best answer found is returned and `reason` says so. `variance_tolerance` is the band above the
    variance bound within which load-balancing answers count as equally balanced, so that the second,
    migration-cost phase has room to choose (docs/optimal.md).
    """

    name: ClassVar[str] = "optimal"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(
        {ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN, ScenarioKind.LOAD_BALANCE})

    def __init__(self, warm_start: Sequence[Policy] = (), time_limit_s: float = 10.0, *, threads: int = 1,
                 seed: int = 0, variance_tolerance: float = 1e-6,
                 exact_limit: int = 6000, decompose_above: int = 400):
        if not time_limit_s > 0:
            raise ValueError(f"time limit must be positive, got {time_limit_s}")
        if not variance_tolerance >= 0:
            raise ValueError(f"variance tolerance must be >= 0, got {variance_tolerance}")
        self.warm_start = tuple(warm_start)
        self.time_limit_s = float(time_limit_s)
        self.threads = int(threads)
        self.seed = int(seed)
        self.variance_tolerance = float(variance_tolerance)
        self.exact_limit = int(exact_limit)
        """Load balancing: largest number of (flow, destination) pairs solved on the full restricted model."""
        self.decompose_above = int(decompose_above)
        """Load balancing: from this many pairs on, the transport decomposition adds a warm start."""

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
        except Exception as error:  # the solver must never take the controller down
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
            except Exception as error:  # a failing baseline is skipped, never propagated
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
        report.timed_out |= run.status == "time_limit"
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
        """Lexicographic: the variance first (phase 1), then eq. (3) among answers within the variance cap (phase 2)."""
        state = problem.state
        m, hot, cold = _balance_split(state)
        full = _pairs(problem, np.flatnonzero(np.isin(state.assignment, hot)), cold)
        if full.count == 0:
            return self._nothing_movable(problem, candidates, int(np.isin(state.assignment, hot).sum()), report)
        heuristic_variance = min((c.variance for c in candidates if c.source != "no-op"), default=math.inf)
        exact = full.count <= self.exact_limit
        if full.count >= self.decompose_above:
            decomposed = self._transport_decomposition(problem, full, m, hot, cold, deadline, report)
            if decomposed is not None:
                candidates.append(decomposed)
        if exact:
            pairs = full
        else:
            pairs = self._reduced_pairs(problem, full, m, hot, cold, candidates)
            report.add(f"{full.count} move pairs: searched on {pairs.count} (transport-plan neighbourhood)")
        tol = self.variance_tolerance
        model = _balance_model(problem, pairs, self.threads, self.seed, max(math.sqrt(max(tol, 1e-12)), 1e-6))
        lower, phase1_proven = 0.0, False
        if exact or min(c.variance for c in candidates) > tol:
            lower, phase1_proven = self._minimise_variance(problem, model, candidates, deadline, report, exact)
            if not exact:
                lower = 0.0  # a bound of the neighbourhood is no bound of the restricted problem
        else:
            report.add(f"phase 1 skipped: the variance is already within {tol:g} of the lower bound 0")
        cap = self._variance_cap(candidates, lower, heuristic_variance)
        phase2_proven = self._cheapest_within(problem, model, candidates, cap, deadline, report)
        return self._choose_lb(problem, candidates, lower, heuristic_variance, exact and phase1_proven and phase2_proven,
                               report)

    def _variance_cap(self, candidates: list[_Candidate], lower: float, heuristic_variance: float) -> float:
        """Variances up to the cap count as equal in phase 2: within the tolerance of the bound, never above a
        heuristic's (so that Optimal's variance ratio bounds every heuristic's)."""
        best_variance = min(c.variance for c in candidates)
        return min(max(best_variance, lower + self.variance_tolerance), heuristic_variance)

    def _choose_lb(self, problem: Problem, candidates: list[_Candidate], lower: float, heuristic_variance: float,
                   proven: bool, report: _Report) -> Decision:
        cap = self._variance_cap(candidates, lower, heuristic_variance)
        best = min((c for c in candidates if c.variance <= cap), key=lambda c: (c.migration, c.variance))
        do_nothing = next(c for c in candidates if c.source == "no-op")
        gap = 0.0 if proven else improvement_gap(best.variance, lower, do_nothing.variance)
        report.add(f"answer from {best.source}: variance {best.variance:.3e} (bound {lower:.3e}, before "
                   f"{do_nothing.variance:.3e}, gap {gap:.3%}), migration cost {best.migration:.2f}"
                   + (", proven optimal" if proven else ""))
        return Decision(best.action, proven_optimal=bool(proven), optimal_gap=gap)

    def _minimise_variance(self, problem: Problem, model: _BalanceModel, candidates: list[_Candidate],
                           deadline: float, report: _Report, exact: bool) -> tuple[float, bool]:
        """Outer-approximation loop on min (1/N)Σ t_j; returns (lower bound, whether it meets the best variance).

        The MILP optimum of the cut model bounds the variance from below (tangents never exceed the
        square); its answer's true variance bounds it from above; tangents at that answer's deviations
        are added until the two meet within the tolerance.
        """
        state = problem.state
        n = model.n_active
        model.milp.objective(model.t, np.full(n, 1.0 / n))
        tol = self.variance_tolerance
        lower, closed, rounds = 0.0, False, 0
        while True:
            rounds += 1
            inside = [(c, model.encode(state, c.action)) for c in candidates]
            inside = [(c, x) for c, x in inside if x is not None]
            start = min(inside, key=lambda cx: cx[0].key(True))[1] if inside else None
            remaining = deadline - time.perf_counter()
            if remaining <= 0.01:
                report.timed_out = True
                break
            # phase 1 may use at most half of what is left: phase 2 needs time too
            run = model.milp.run(remaining * (0.5 if not exact else 0.7), start, rel_gap=1e-9,
                                 abs_gap=max(tol * 0.5, 1e-15))
            if run.status == "time_limit":
                report.timed_out = True
            if math.isfinite(run.bound):
                lower = max(lower, run.bound)
            if run.x is None:
                break
            action = model.decode(run.x)
            candidates.append(_checked(problem, action, "milp variance"))
            upper = min(c.variance for c in candidates)
            closed = run.status == "optimal" and upper - lower <= max(tol, 1e-9 * upper)
            if closed or run.status != "optimal":
                break
            model.add_tangents(_deviations(state, action, model.active))
        upper = min(c.variance for c in candidates)
        report.add(f"phase 1 (variance, {model.pairs.count} pairs, {rounds} MILP rounds, {len(model.cuts)} "
                   f"tangents): best {upper:.3e}, bound {lower:.3e}" + ("" if closed else " (not closed)"))
        return lower, closed

    def _cheapest_within(self, problem: Problem, model: _BalanceModel, candidates: list[_Candidate], cap: float,
                         deadline: float, report: _Report) -> bool:
        """Phase 2: min migration cost s.t. (1/N)Σ t_j <= cap; tangents are added at every answer whose true
        variance exceeds the cap until the MILP's optimum obeys it. Returns whether that optimum was proven."""
        state = problem.state
        n = model.n_active
        model.milp.objective(model.y, model.pairs.cost)
        if model.cap_row is None:
            model.milp.rows([(model.t, np.ones(n), -_INF, n * cap)])
            model.cap_row = model.milp.h.getNumRow() - 1
        else:
            model.milp.h.changeRowBounds(model.cap_row, -_INF, n * cap)
        proven, bound, rounds = False, -math.inf, 0
        while True:
            rounds += 1
            feasible = [(c, model.encode(state, c.action)) for c in candidates if c.variance <= cap]
            feasible = [(c, x) for c, x in feasible if x is not None]
            start = min(feasible, key=lambda cx: cx[0].migration)[1] if feasible else None
            remaining = deadline - time.perf_counter()
            if remaining <= 0.01:
                report.timed_out = True
                break
            run = model.milp.run(remaining, start, save=True)
            if run.status == "time_limit":
                report.timed_out = True
            if math.isfinite(run.bound):
                bound = max(bound, run.bound)
            violating = []
            for x in run.saved + ([run.x] if run.x is not None else []):
                action = model.decode(x)
                if _variance_after(state, action) > cap:
                    violating.append(_deviations(state, action, model.active))
                    continue
                candidates.append(_checked(problem, action, "milp cost"))
            if run.x is None or run.status != "optimal":
                break
            if _variance_after(state, model.decode(run.x)) <= cap:
                proven = True
                break
            for dev in violating:
                model.add_tangents(dev)
        report.add(f"phase 2 (cost within variance {cap:.3e}, {rounds} MILP rounds): cost bound {bound:.2f}"
                   + ("" if proven else " (not closed)"))
        return proven

    # --- load balancing at scale: a transport plan realised instance by instance -------------------
    def _transport_plan(self, state: ClusterState, m: float, hot: np.ndarray, cold: np.ndarray):
        """North-west-corner transport of the excess load (pps) of hot instances to the deficits of cold ones."""
        excess = state.load_pps[hot] - m * state.capacity[hot]
        deficit = m * state.capacity[cold] - state.load_pps[cold]
        hot = hot[np.argsort(-excess, kind="stable")]
        cold = cold[np.argsort(-deficit, kind="stable")]
        excess = np.sort(excess)[::-1].copy()
        deficit = np.sort(deficit)[::-1].copy()
        plan = []
        i = k = 0
        while i < hot.size and k < cold.size:
            amount = min(excess[i], deficit[k])
            plan.append((int(hot[i]), int(cold[k]), float(amount)))
            excess[i] -= amount
            deficit[k] -= amount
            if excess[i] <= deficit[k] * 1e-12 or excess[i] <= 0:
                i += 1
            else:
                k += 1
        return plan, hot, cold

    def _transport_decomposition(self, problem: Problem, full: _Pairs, m: float, hot: np.ndarray,
                                 cold: np.ndarray, deadline: float, report: _Report) -> _Candidate | None:
        """One small MILP per hot instance: split its flows into the amounts the transport plan sends."""
        state = problem.state
        plan, hot_sorted, _ = self._transport_plan(state, m, hot, cold)
        began = time.perf_counter()
        budget = (deadline - began) * 0.4
        per_pair_tol = math.sqrt(max(self.variance_tolerance, 1e-12)) / 8.0  # utilisation units
        partners: dict[int, list[tuple[int, float]]] = {}
        for j, k, amount in plan:
            partners.setdefault(j, []).append((k, amount))
        incoming = {}
        for j, k, amount in plan:
            incoming[k] = incoming.get(k, 0.0) + amount
        flows, dst = [], []
        for n_done, j in enumerate(hot_sorted.tolist()):
            left = budget - (time.perf_counter() - began)
            if left <= 0:
                report.timed_out = True
                break
            targets = partners.get(j, [])
            mine = np.isin(full.dst, [k for k, _ in targets]) & (full.src == j)
            pairs = full.subset(mine)
            if pairs.count == 0:
                continue
            milp = _Milp(self.threads, self.seed)
            y = milp.add(pairs.count, cost=pairs.cost, integer=True)
            _assignment_rows(milp, pairs, y)
            room = state.buffer - state.queue - BUFFER_MARGIN
            budget_k = room.copy()
            rows = []
            for k, amount in targets:
                share = amount / incoming[k] if incoming[k] > 0 else 1.0
                budget_k[k] = room[k] * share
                sel = pairs.dst == k
                if not np.any(sel):
                    continue
                tol_pps = per_pair_tol * state.capacity[k]
                weight = 1e8 / state.capacity[k]  # cost per pps of error beyond the tolerance
                over, under = milp.add(2, upper=_INF, cost=weight)
                rows.append((np.r_[y[sel], over], np.r_[state.rate[pairs.flow[sel]], -1.0], -_INF, amount + tol_pps))
                rows.append((np.r_[y[sel], under], np.r_[state.rate[pairs.flow[sel]], 1.0], amount - tol_pps, _INF))
            milp.rows(rows)
            _buffer_rows(milp, state, pairs, y, budget=budget_k)
            run = milp.run(left / max(1, hot_sorted.size - n_done), None, rel_gap=1e-4, abs_gap=1.0)
            if run.x is None:
                continue
            moved = run.x[y] > 0.5
            flows.extend(pairs.flow[moved].tolist())
            dst.extend(pairs.dst[moved].tolist())
        candidate = _evaluate(problem, _indexed(flows, dst), "transport decomposition")
        report.add(f"transport decomposition: {len(plan)} transfers in {time.perf_counter() - began:.2f} s"
                   + (f", variance {candidate.variance:.3e}, cost {candidate.total:.2f}" if candidate else ", rejected"))
        return candidate

    def _reduced_pairs(self, problem: Problem, full: _Pairs, m: float, hot: np.ndarray, cold: np.ndarray,
                       candidates: list[_Candidate]) -> _Pairs:
        """Pairs of the transport plan, each hot instance also linked to the cold neighbours of its partners,
        plus every pair a candidate uses."""
        plan, _, cold_sorted = self._transport_plan(problem.state, m, hot, cold)
        position = {k: n for n, k in enumerate(cold_sorted.tolist())}
        links = set()
        for j, k, _ in plan:
            for step in (-1, 0, 1):
                n = position[k] + step
                if 0 <= n < cold_sorted.size:
                    links.add((j, int(cold_sorted[n])))
        keep = np.array([(int(j), int(k)) in links for j, k in zip(full.src, full.dst)], dtype=bool)
        used = set()
        for c in candidates:
            used.update(zip(c.action.flows.tolist(), c.action.dst.tolist()))
        if used:
            keep |= np.array([(int(f), int(k)) in used for f, k in zip(full.flow, full.dst)], dtype=bool)
        return full.subset(keep)
