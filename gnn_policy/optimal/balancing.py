"""Load balancing, lexicographic with a stated tolerance: the variance of the active utilisations first, eq. (3)
second, in three phases (`LoadBalancing`): a certified lower bound of the variance, answers in a box of deviations
under the cap, a cost bound from the cap relaxed by tangent cuts (docs/optimal.md)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from gnn_policy.base import Decision, Problem
from gnn_policy.optimal.answers import Candidate, Report, checked, improvement_gap, nothing_movable
from gnn_policy.optimal.milp import EMPTY, INF, Milp, group_rows
from gnn_policy.optimal.moves import (
    Pairs,
    allowed_pairs,
    assignment_rows,
    buffer_rows,
    indexed,
    move_columns,
    utilisation_terms,
)
from twin import cost
from twin.migration import IndexedAction
from twin.state import ClusterState


@dataclass
class BalanceModel:
    """y_fk over the load-balancing pairs, a free level μ and d_j = u_j − μ for each active instance.

    (1/N)·Σ_j d_j² >= var(u) for every μ, with equality at the mean, so the variance is bounded from
    below through tangent cuts t_j >= 2a·d_j − a² on the squares and from above by boxes on the d_j.
    """
    milp: Milp
    pairs: Pairs
    y: np.ndarray
    mu: int
    d: np.ndarray
    active: np.ndarray
    pair_index: dict
    relaxed_index: dict = field(default_factory=dict)
    """(flow, destination) of each relaxed pair -> its aggregated column z_ik (packets/s)."""
    t: np.ndarray = field(default_factory=lambda: EMPTY)
    cuts: set = field(default_factory=set)

    @property
    def n_active(self) -> int:
        return int(self.active.size)

    def decode(self, x: np.ndarray) -> IndexedAction:
        moved = x[self.y] > 0.5
        return indexed(self.pairs.flow[moved], self.pairs.dst[moved])

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
        x = move_columns(self.pair_index, self.milp.n, indexed(action.flows[~relaxed], action.dst[~relaxed]))
        if x is None:
            return None
        for f, k in zip(action.flows[relaxed].tolist(), action.dst[relaxed].tolist()):
            x[self.relaxed_index[f, k]] += state.rate[f]
        u = utilisation_after(state, action)[self.active]
        x[self.mu] = u.mean()
        x[self.d] = u - u.mean()
        if self.t.size:
            x[self.t] = (u - u.mean()) ** 2
        return x

    def add_squares(self, points: np.ndarray) -> None:
        """Columns t_j >= 0 with tangent cuts at `points` (the same for every instance)."""
        self.t = self.milp.add(self.n_active, upper=INF)
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
            rows.append((np.array([self.t[p], self.d[p]]), np.array([1.0, -2.0 * a]), -a * a, INF))
        self.milp.rows(rows)
        return len(rows)


def utilisation_after(state: ClusterState, action: IndexedAction) -> np.ndarray:
    """Utilisation of every instance after the moves of `action` (a model-side check; apply scores)."""
    assignment = state.assignment.copy()
    assignment[action.flows] = action.dst
    return state.with_changes(assignment=assignment).utilisation


def balance_split(state: ClusterState) -> tuple[np.ndarray, np.ndarray]:
    """The active instances above and below the balanced utilisation Σ load / Σ capacity."""
    active = state.active_indices
    m = float(state.load_pps[active].sum() / state.capacity[active].sum())
    u = state.utilisation
    hot = active[u[active] > m * (1 + 1e-12) + 1e-15]
    cold = active[u[active] < m * (1 - 1e-12) - 1e-15]
    return hot, cold


def pairs_under_cap(state: ClusterState, pairs: Pairs, cap: float) -> Pairs:
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


def tangent_points(step: float, reach: float) -> np.ndarray:
    """Tangent points every `step` over [−reach, reach] (0 included)."""
    count = math.ceil(reach / step)
    return step * np.arange(-count, count + 1)


def balance_model(problem: Problem, pairs: Pairs, integral: np.ndarray, threads: int, seed: int) -> BalanceModel:
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
    milp = Milp(threads, seed)
    y = milp.add(binary.count, integer=True)
    assignment_rows(milp, binary, y)
    keys, pair_of = np.unique(np.c_[relaxed.src, relaxed.dst], axis=0, return_inverse=True)
    z_src, z_dst = keys[:, 0], keys[:, 1]
    z = milp.add(z_src.size, upper=np.bincount(pair_of.ravel(), weights=state.rate[relaxed.flow],
                                               minlength=z_src.size))
    relaxed_flows = np.unique(relaxed.flow)
    shed = np.bincount(state.assignment[relaxed_flows], weights=state.rate[relaxed_flows],
                       minlength=state.n_instances)
    starts, index, value, sources = group_rows(z_src, z, np.ones(z.size))
    milp.csr_rows(starts, index, value, -INF, shed[sources])
    per_rate = cost.packets_buffered_during_move(1.0, state.migration_ms[z_src, z_dst])
    buffer_rows(milp, state, np.r_[binary.dst, z_dst], np.r_[binary.size, per_rate], np.r_[y, z])
    mu = int(milp.add(1, lower=-INF, upper=INF)[0])
    d = milp.add(active.size, lower=-INF, upper=INF)
    position = np.full(state.n_instances, -1)
    position[active] = np.arange(active.size)
    inst, cols, coef = utilisation_terms(state, np.r_[binary.src, z_src], np.r_[binary.dst, z_dst],
                                          np.r_[state.rate[binary.flow], np.ones(z.size)], np.r_[y, z])
    starts, index, value, keys = group_rows(position[inst], cols, coef)
    terms = {int(p): (index[a:b], value[a:b]) for p, a, b in zip(keys, starts, np.r_[starts[1:], index.size])}
    u0 = state.utilisation[active]
    rows = []
    for p in range(active.size):
        idx, val = terms.get(p, (EMPTY, np.empty(0)))
        rows.append((np.r_[d[p], mu, idx], np.r_[1.0, 1.0, -val], u0[p], u0[p]))
    milp.rows(rows)
    pair_index = {(int(f), int(k)): int(c) for f, k, c in zip(binary.flow, binary.dst, y)}
    relaxed_index = {(int(f), int(k)): int(c) for f, k, c in zip(relaxed.flow, relaxed.dst, z[pair_of.ravel()])}
    return BalanceModel(milp, binary, y, mu, d, active, pair_index, relaxed_index)


def trust_region(target: np.ndarray, cap: float) -> tuple[float, float]:
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


@dataclass(frozen=True)
class LoadBalancing:
    """The three-phase load-balancing solve with `Optimal`'s settings: variances within `variance_gap` of the
    certified improvement count as equal, flows below `integral_share` of their instance's capacity are fractional
    in the relaxation that bounds the variance, and HiGHS runs with `threads` and `seed`."""

    variance_gap: float
    integral_share: float
    threads: int
    seed: int

    def solve(self, problem: Problem, candidates: list[Candidate], deadline: float, report: Report) -> Decision:
        """Lexicographic (docs/optimal.md): a certified lower bound L of the variance (phase 1), then the cheapest
        answer (eq. (3)) whose variance is at most cap = min(L + variance_gap·(var_ori − L), any heuristic's)."""
        state = problem.state
        hot, cold = balance_split(state)
        movable = np.flatnonzero(np.isin(state.assignment, hot))
        pairs = allowed_pairs(problem, movable, cold)
        if pairs.count == 0:
            return nothing_movable(problem, candidates, movable.size, report)
        do_nothing = next(c for c in candidates if c.source == "no-op")
        heuristic = min((c.variance for c in candidates if c.source != "no-op"), default=math.inf)
        if math.isfinite(heuristic) and (useful := pairs_under_cap(state, pairs, heuristic)).count:
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
            under_cap = pairs_under_cap(state, pairs, cap)
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

    def _variance_bound(self, problem: Problem, pairs: Pairs, integral: np.ndarray, variance_before: float,
                        heuristic: float, candidates: list[Candidate], deadline: float, report: Report,
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
        model = balance_model(problem, pairs, integral, self.threads, self.seed)
        n = model.n_active
        model.add_squares(tangent_points(math.sqrt(variance_before) / 8, math.sqrt(n * variance_before)))
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

    def _box_answer(self, problem: Problem, pairs: Pairs, target: np.ndarray | None, cap: float,
                    candidates: list[Candidate], deadline: float, report: Report) -> bool:
        """Phase 2, answers: min eq. (3) with the deviations in a trust region around phase 1's target that
        lies wholly under the cap (`trust_region`), so every answer of this model is feasible. Returns whether
        it found one."""
        state = problem.state
        width, budget = trust_region(target, cap) if target is not None else (math.nan, math.nan)
        if not math.isfinite(width):
            report.add("phase 2 box skipped: " + ("no target" if target is None else
                                                 f"the target's variance {np.mean(target ** 2):.3e} is above the cap"))
            return False
        inner = balance_model(problem, pairs, np.ones(pairs.count, dtype=bool), self.threads, self.seed)
        inner.milp.bounds(inner.d, target - width, target + width)
        if math.isfinite(budget):
            inner.milp.rows([(inner.d, 2.0 * target, -INF, budget)])
        inner.milp.objective(inner.y, pairs.cost)
        inside = [(c, x) for c in candidates if (x := inner.encode(state, c.action)) is not None
                  and np.all(np.abs(x[inner.d] - target) <= width) and 2.0 * target @ x[inner.d] <= budget]
        start = min(inside, key=lambda cx: cx[0].migration)[1] if inside else None
        run = inner.milp.run(deadline - time.perf_counter(), start)
        report.timed_out |= run.stopped
        if run.x is not None:
            candidates.append(checked(problem, inner.decode(run.x), "milp box"))
        report.add(f"phase 2 box (half-width {width:.2e}): {run.status} in {run.seconds:.2f} s")
        return run.x is not None

    def _cost_bound(self, problem: Problem, pairs: Pairs, target: np.ndarray | None, cap: float,
                    candidates: list[Candidate], deadline: float, report: Report) -> float:
        """Phase 2, bound: a lower bound of eq. (3) over the restricted answers with variance <= cap.

        The cap is relaxed to Σ_j t_j <= N·cap with tangent cuts, so the MILP bound is valid; its answers are kept
        when their true variance is under the cap.
        """
        state = problem.state
        everything = np.ones(pairs.count, dtype=bool)
        outer = balance_model(problem, pairs, everything, self.threads, self.seed)
        n = outer.n_active
        outer.add_squares(tangent_points(math.sqrt(cap) / 4, math.sqrt(n * cap)))
        if target is not None:
            outer.add_tangents(target)
        outer.milp.rows([(outer.t, np.ones(n), -INF, n * cap)])
        outer.milp.objective(outer.y, pairs.cost)
        under = [(c, x) for c in candidates if c.variance <= cap and (x := outer.encode(state, c.action)) is not None]
        start = min(under, key=lambda cx: cx[0].migration)[1] if under else None
        run = outer.milp.run(deadline - time.perf_counter(), start, save=True)
        report.timed_out |= run.stopped
        for x in run.saved + ([run.x] if run.x is not None else []):
            action = outer.decode(x)
            if cost.load_variance(utilisation_after(state, action), state.active) <= cap:
                candidates.append(checked(problem, action, "milp cap"))
        report.add(f"phase 2 cap: {run.status} in {run.seconds:.2f} s, cost bound {run.bound:.2f}")
        return run.bound
