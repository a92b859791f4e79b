"""Scale-out and scale-in as one MILP: min Σ C y + R(Σ start − Σ stop) + ω Σ (over + under), the total that
`twin.migration.apply` charges, over the restricted moves (docs/optimal.md, "Restrictions")."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from gnn_policy.base import Decision, Problem
from gnn_policy.optimal import moves
from gnn_policy.optimal.answers import Candidate, Report, checked, improvement_gap, nothing_movable
from gnn_policy.optimal.milp import EMPTY, INF, Milp, group_rows
from twin import cost
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind
from twin.state import ClusterState


@dataclass
class ScaleModel:
    milp: Milp
    pairs: moves.Pairs
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
        return moves.indexed(self.pairs.flow[moved], self.pairs.dst[moved], self.standby[x[self.s] > 0.5],
                        self.stoppable[x[self.z] > 0.5])

    def encode(self, problem: Problem, action: IndexedAction) -> np.ndarray | None:
        """The column vector of an action, or None when the action lies outside the restricted problem."""
        x = moves.move_columns(self.pair_index, self.milp.n, action)
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


def identical_groups(state: ClusterState, instances: np.ndarray, sources: np.ndarray) -> list[np.ndarray]:
    """Instances indistinguishable to every move from `sources` (same capacity, buffer, queue, la_p, la_ij)."""
    groups: dict[tuple, list[int]] = {}
    for k in instances.tolist():
        key = (state.capacity[k], state.buffer[k], state.queue[k], state.processing_ms[k],
               tuple(state.migration_ms[sources, k].tolist()))
        groups.setdefault(key, []).append(k)
    return [np.array(g) for g in groups.values() if len(g) > 1]


def scale_model(problem: Problem, pairs: moves.Pairs, movable: np.ndarray, threads: int, seed: int) -> ScaleModel:
    """The unsolved MILP over the moves `pairs`: it may start the standby instances they reach and stop active
    ones holding only flows of `movable` (flow indices); `threads` and `seed` go to HiGHS."""
    state, params, th = problem.state, problem.params, problem.thresholds
    n = state.n_instances
    standby = np.unique(pairs.dst[~state.active[pairs.dst]])
    movable_mask = np.zeros(state.n_flows, dtype=bool)
    movable_mask[movable] = True
    unmovable_per_instance = np.bincount(state.assignment[~movable_mask], minlength=n)
    stoppable = np.flatnonzero(state.active & (unmovable_per_instance == 0))
    touched = np.unique(np.r_[pairs.src, pairs.dst, stoppable, standby]).astype(np.int64)

    milp = Milp(threads, seed)
    resource = cost.resource_cost(1, params)
    y = milp.add(pairs.count, cost=pairs.cost, integer=True)
    s = milp.add(standby.size, cost=resource, integer=True)
    z = milp.add(stoppable.size, cost=-resource, integer=True)
    over = milp.add(touched.size, upper=INF, cost=params.omega)
    under = milp.add(touched.size, upper=INF, cost=params.omega)
    untouched_active = state.active.copy()
    untouched_active[touched] = False
    milp.offset = cost.threshold_penalty(state.utilisation, untouched_active, th, params)

    moves.assignment_rows(milp, pairs, y)
    rows = []
    # moves only to active or started instances: y_fk <= s_k
    s_of = {k: c for k, c in zip(standby.tolist(), s.tolist())}
    for col, k in zip(y.tolist(), pairs.dst.tolist()):
        if k in s_of:
            rows.append((np.array([col, s_of[k]]), np.array([1.0, -1.0]), -INF, 0.0))
    # identical standby instances are started in a fixed order
    for group in identical_groups(state, standby, np.unique(pairs.src)):
        for a, b in itertools.pairwise(group):
            rows.append((np.array([s_of[a], s_of[b]]), np.array([1.0, -1.0]), 0.0, INF))
    # a stopped instance ends empty: every flow on it moves, none moves onto it
    z_of = {k: c for k, c in zip(stoppable.tolist(), z.tolist())}
    by_flow_starts, by_flow_cols, _, by_flow_keys = group_rows(pairs.flow, y, np.ones(pairs.count))
    by_flow_ends = np.r_[by_flow_starts[1:], by_flow_cols.size]
    flow_cols = {int(f): by_flow_cols[a:b] for f, a, b in zip(by_flow_keys, by_flow_starts, by_flow_ends)}
    for j in stoppable.tolist():
        for f in state.flows_on(j).tolist():
            cols = flow_cols.get(f, EMPTY)
            rows.append((np.r_[cols, z_of[j]], np.r_[np.ones(cols.size), -1.0], 0.0, INF))
    for col, k in zip(y.tolist(), pairs.dst.tolist()):
        if k in z_of:
            rows.append((np.array([col, z_of[k]]), np.array([1.0, 1.0]), -INF, 1.0))
    milp.rows(rows)
    moves.buffer_rows(milp, state, pairs.dst, pairs.size, y)

    # threshold penalties on the utilisation after the action
    inst, cols, coef = moves.utilisation_terms(state, pairs.src, pairs.dst, state.rate[pairs.flow], y)
    position = np.full(n, -1)
    position[touched] = np.arange(touched.size)
    starts, index, value, keys = group_rows(position[inst], cols, coef)
    terms = {int(p): (index[a:b], value[a:b]) for p, a, b in zip(keys, starts, np.r_[starts[1:], index.size])}
    u0 = state.utilisation
    rows = []
    for p, j in enumerate(touched.tolist()):
        idx, val = terms.get(p, (EMPTY, np.empty(0)))
        # over_j >= u_j - Th_high
        rows.append((np.r_[over[p], idx], np.r_[1.0, -val], u0[j] - th.high, INF))
        # under_j >= Th_low·active_j - u_j
        if j in s_of:
            rows.append((np.r_[under[p], idx, s_of[j]], np.r_[1.0, val, -th.low], -u0[j], INF))
        elif j in z_of:
            rows.append((np.r_[under[p], idx, z_of[j]], np.r_[1.0, val, th.low], th.low - u0[j], INF))
        else:
            rows.append((np.r_[under[p], idx], np.r_[1.0, val], th.low - u0[j], INF))
    milp.rows(rows)
    pair_index = {(int(f), int(k)): int(c) for f, k, c in zip(pairs.flow, pairs.dst, y)}
    return ScaleModel(milp, pairs, y, standby, s, stoppable, z, touched, over, under, pair_index)


def solve_scaling(problem: Problem, candidates: list[Candidate], deadline: float, report: Report, threads: int,
                  seed: int) -> Decision:
    """Scale-out moves flows of overloaded instances to the other instances and to standby ones; scale-in
    moves flows of underloaded instances to any active instance (docs/optimal.md, "Restrictions")."""
    state, scenario = problem.state, problem.scenario
    out = scenario.kind is ScenarioKind.SCALE_OUT
    sources = np.asarray(scenario.overloaded if out else scenario.underloaded, dtype=np.int64)
    movable = np.flatnonzero(np.isin(state.assignment, sources))
    excluded = sources if out else np.flatnonzero(~state.active)
    pairs = moves.allowed_pairs(problem, movable, np.setdiff1d(np.arange(state.n_instances), excluded))
    if pairs.count == 0:
        return nothing_movable(problem, candidates, movable.size, report)
    model = scale_model(problem, pairs, movable, threads, seed)
    inside = [(c, x) for c in candidates if (x := model.encode(problem, c.action)) is not None]
    start = min(inside, key=lambda cx: cx[0].total)[1] if inside else None
    run = model.milp.run(deadline - time.perf_counter(), start)
    report.add(f"HiGHS: {pairs.count} move pairs, {model.standby.size} standby, {model.stoppable.size} "
               f"stoppable, {run.status} in {run.seconds:.2f} s")
    report.timed_out |= run.stopped
    if run.x is not None:
        candidates.append(checked(problem, model.decode(run.x), "milp"))
    best = min(candidates, key=lambda c: c.key(False))
    do_nothing = next(c for c in candidates if c.source == "no-op")
    proven = run.status == "optimal" and best.total <= run.bound + 1e-6 * max(1.0, abs(best.total))
    gap = 0.0 if proven else improvement_gap(best.total, run.bound, do_nothing.total)
    report.add(f"answer from {best.source}: total {best.total:.2f}, bound {run.bound:.2f}, doing nothing "
               f"{do_nothing.total:.2f}, gap {gap:.3%}" + (", proven optimal" if proven else ""))
    return Decision(best.action, proven_optimal=proven, optimal_gap=gap)
