"""OFM (Sun et al., JSAC 2018, the DeepMigration paper's [10]): two heuristics and one exact program.

* scale-out: one standby instance per overloaded instance, filled with the source's flows of the
  highest OFM score rate·(LA^f − la_p − la_ij) while it stays under the safe load and buffer-safe;
* load balancing: heavy and light instances split at the average utilisation, safe flows picked
  largest first from heavy instances and placed largest first on the lightest light instance;
* scale-in: the program "merge underloaded instance s into d" solved exactly as a maximum-weight
  matching (each instance takes part in at most one merge).

docs/baselines.md gives the exact reading of each step.
"""
from __future__ import annotations

import bisect
from typing import ClassVar

import networkx as nx
import numpy as np

from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.plan import Plan, names, ofm_need
from twin import cost
from twin.migration import IndexedAction
from twin.scenario import ScenarioKind

#: Benefits are rounded to this many units per cost unit before matching, so that networkx's
#: max_weight_matching runs on integers, where it is exact.
WEIGHT_SCALE = 1_000_000


class OFM(Policy):
    """OFM for all three scenarios. `safe_load` defaults to the problem's Th_high (OFM's overload threshold)."""

    name: ClassVar[str] = "ofm"
    handles: ClassVar[frozenset[ScenarioKind]] = frozenset(
        {ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN, ScenarioKind.LOAD_BALANCE})

    def __init__(self, safe_load: float | None = None):
        if safe_load is not None and not 0.0 < safe_load <= 1.0:
            raise ValueError(f"safe load must lie in (0, 1], got {safe_load}")
        self.safe_load = safe_load

    def _safe(self, problem: Problem) -> float:
        return problem.thresholds.high if self.safe_load is None else self.safe_load

    def _decide(self, problem: Problem) -> Decision:
        kind = problem.scenario.kind
        if kind is ScenarioKind.SCALE_OUT:
            return self._scale_out(problem)
        if kind is ScenarioKind.SCALE_IN:
            return self._scale_in(problem)
        return self._load_balance(problem)

    # --- scale-out ------------------------------------------------------------------------------
    def _scale_out(self, problem: Problem) -> Decision:
        state, safe = problem.state, self._safe(problem)
        hot = [s for s in problem.scenario.overloaded if state.active[s]]
        if not hot:
            return Decision(IndexedAction(), reason="ofm scale-out: no overloaded instance, nothing to do")
        hot = [s for s in hot if state.utilisation[s] >= safe]
        if not hot:
            return Decision(IndexedAction(), reason=f"ofm scale-out: every overloaded instance is under the safe "
                                                    f"load {safe:.2f}, nothing to do")
        plan = Plan(state)
        notes: list[str] = []
        for rank, s in enumerate(hot):
            standby = plan.standby_order(s)
            if standby.size == 0:
                left = names(state, hot[rank:])
                if rank == 0:
                    return Decision.infeasible(f"ofm scale-out: no standby instance to start for overloaded {left}")
                notes.append(f"no standby instance left: {left} stay overloaded")
                break
            d = int(standby[0])
            flows = plan.movable_flows(s)
            rate = state.rate[flows]
            la_ij = cost.migration_latency_ms(state, flows, np.full(flows.size, d))
            score = rate * (state.sla_ms[flows] - state.processing_ms[d] - la_ij)
            order = np.lexsort((flows, -rate, -score))
            packets = plan.buffer_packets(flows, d)
            need = plan.ofm_need(flows, d)
            started = False
            blocked_load = blocked_buffer = 0
            for k in order.tolist():
                if plan.utilisation[s] < safe:
                    break
                if plan.utilisation_after(d, rate[k]) >= safe:
                    blocked_load += 1
                    continue
                if not (plan.ofm_fits(d, need[k]) and plan.buffer_fits(d, packets[k])):
                    blocked_buffer += 1
                    continue
                if not started:
                    plan.start(d)
                    started = True
                plan.move(int(flows[k]), d, float(packets[k]), float(need[k]))
            sid, did = state.instance_ids[s], state.instance_ids[d]
            if not started:
                notes.append(f"no flow of {sid} fits on standby {did} ({blocked_buffer} blocked by its buffer "
                             f"{state.buffer[d]:.1f} (OFM buffer safety / constraint 5), {blocked_load} by the "
                             f"safe load {safe:.2f}); {did} not started")
            elif plan.utilisation[s] >= safe:
                notes.append(f"{sid} still at {plan.utilisation[s]:.1%} after filling {did}")
        if plan.n_moves == 0:
            return Decision.infeasible("ofm scale-out: " + "; ".join(notes))
        return Decision(plan.action(), reason="; ".join(notes))

    # --- load balancing ---------------------------------------------------------------------------
    def _load_balance(self, problem: Problem) -> Decision:
        state = problem.state
        plan = Plan(state)
        active = state.active_indices
        u = state.utilisation
        if active.size < 2:
            return Decision(IndexedAction(), reason="ofm lb: fewer than two active instances, nothing to do")
        average = float(u[active].mean())
        heavy = active[u[active] > average]
        light = active[u[active] < average]
        if heavy.size == 0 or light.size == 0:
            return Decision(IndexedAction(), reason="ofm lb: load already even, nothing to do")

        picks, n_unsafe = _lb_picks(state, heavy, light, average)
        moves, blocked = _lb_placements(plan, picks, light, average)
        plan.move_all(*moves)
        if plan.n_moves == 0:
            return Decision.infeasible(
                f"ofm lb: no flow can move from a heavy to a light instance ({n_unsafe} flows on heavy instances fail "
                f"the SLA test, {picks.size} picks found no light instance within the average load and the buffer "
                "(OFM buffer safety / constraint 5))")
        note = f"{blocked} of {picks.size} picks found no light instance" if blocked else ""
        return Decision(plan.action(), reason=note)

    # --- scale-in -------------------------------------------------------------------------------
    def _scale_in(self, problem: Problem) -> Decision:
        state, params, safe = problem.state, problem.params, self._safe(problem)
        cold = [s for s in problem.scenario.underloaded if state.active[s]]
        if not cold:
            return Decision(IndexedAction(), reason="ofm scale-in: no underloaded instance, nothing to do")
        plan = Plan(state)
        # An underloaded instance without flows needs no destination: stop it outright (keeping one active).
        for s in cold:
            if plan.count[s] == 0 and plan.active.sum() > 1:
                plan.stop(s)
        sources = [s for s in cold if plan.active[s] and plan.count[s] > 0]
        targets = np.flatnonzero(plan.active)

        graph = nx.Graph()
        n_buffer = n_load = n_loss = 0
        for s in sources:
            flows = state.flows_on(s)
            dst = targets[targets != s]
            if dst.size == 0:
                continue
            k = flows.size
            flows_rep, dst_rep = np.tile(flows, dst.size), np.repeat(dst, k)
            migration = cost.flow_migration_cost(state, flows_rep, dst_rep, params).reshape(dst.size, k).sum(axis=1)
            packets = cost.migrated_buffer_packets(state, flows_rep, dst_rep).reshape(dst.size, k).sum(axis=1)
            fits_buffer = plan.buffer_fits(dst, packets)
            fits_load = plan.utilisation_after(dst, state.load_pps[s]) < safe
            benefit = params.resource_cost - migration
            weight = np.round(benefit * WEIGHT_SCALE).astype(np.int64)
            n_buffer += int((~fits_buffer).sum())
            n_load += int((fits_buffer & ~fits_load).sum())
            n_loss += int((fits_buffer & fits_load & (weight <= 0)).sum())
            keep = fits_buffer & fits_load & (weight > 0)
            for d, w, b in zip(dst[keep].tolist(), weight[keep].tolist(), benefit[keep].tolist()):
                if self._better_direction(state, graph, s, d, w):
                    graph.add_edge(s, d, weight=w, src=s, dst=d, benefit=b)

        merges = sorted((graph.edges[a, b]["src"], graph.edges[a, b]["dst"])
                        for a, b in nx.max_weight_matching(graph, maxcardinality=False))
        for s, d in merges:
            flows = plan.movable_flows(s)
            packets = plan.buffer_packets(flows, d)
            for f, p in zip(flows.tolist(), packets.tolist()):
                plan.move(f, d, p)
            plan.stop(s)
        if plan.n_moves == 0 and plan.n_stops == 0:
            return Decision.infeasible(
                f"ofm scale-in: no underloaded instance can be merged ({n_buffer} pairs overflow the destination "
                f"buffer (constraint 5), {n_load} exceed the safe load {safe:.2f}, {n_loss} cost more than R)")
        return Decision(plan.action(), reason=f"ofm scale-in: {len(merges)} merges")

    @staticmethod
    def _better_direction(state, graph: nx.Graph, s: int, d: int, weight: int) -> bool:
        """For an unordered pair keep the larger benefit; on a tie the colder source, then the lower index."""
        if not graph.has_edge(s, d):
            return True
        other = graph.edges[s, d]
        if weight != other["weight"]:
            return weight > other["weight"]
        u = state.utilisation
        return (u[s], s) < (u[other["src"]], other["src"])


def _lb_picks(state, heavy: np.ndarray, light: np.ndarray, average: float) -> tuple[np.ndarray, int]:
    """OFM load balancing's step 1: the safe flows of the heavy instances (the single-flow SLA test of OFM, no
    queueing term, against the best light instance), each heavy instance's picked largest first (then by flow
    index) while it stays at or above the average utilisation; the picks largest first (then by flow index), and
    how many flows on heavy instances failed the test. Chosen on Python floats: a numpy call per flow would cost
    more than the choice."""
    flows = np.flatnonzero(np.isin(state.assignment, heavy))
    owner = state.assignment[flows]
    slack = (state.sla_ms[flows][:, None] - state.processing_ms[light][None, :]
             - state.migration_ms[owner[:, None], light[None, :]])
    safe = (slack >= 0.0).any(axis=1)
    flows, owner = flows[safe], owner[safe]
    order = np.lexsort((flows, -state.rate[flows], owner))
    remaining = dict(zip(heavy.tolist(), state.load_pps[heavy].tolist()))
    capacity = dict(zip(heavy.tolist(), state.capacity[heavy].tolist()))
    picks = []
    for f, rate, s in zip(flows[order].tolist(), state.rate[flows[order]].tolist(), owner[order].tolist()):
        if (remaining[s] - rate) / capacity[s] >= average:
            picks.append(f)
            remaining[s] -= rate
    picks_arr = np.array(picks, dtype=np.int64)
    return picks_arr[np.lexsort((picks_arr, -state.rate[picks_arr]))], int((~safe).sum())


def _lb_placements(plan: Plan, picks: np.ndarray, light: np.ndarray,
                   average: float) -> tuple[tuple[list[int], list[int], list[float]], int]:
    """OFM load balancing's step 2: each pick, in order, onto the lightest light instance (then the lowest index)
    where it passes the SLA test and stays within the average utilisation, OFM's buffer safety (`Plan.ofm_fits`)
    and constraint (5) (`Plan.buffer_fits`); the moves (flows, destinations, buffered packets) and how many picks
    found no light instance. The SLA test of every pair is computed at once; the rest is kept on Python floats,
    the buffered packets and OFM's demand of a pair only when its turn comes (most picks take the first light
    instance they try), with the light instances ranked by (utilisation, index), so the first that fits is taken."""
    state = plan.state
    pair_flows, pair_light = np.repeat(picks, light.size), np.tile(light, picks.size)
    sla_ok = (state.migration_ms[state.assignment[pair_flows], pair_light]
              <= state.sla_ms[pair_flows] - state.processing_ms[pair_light]).reshape(-1, light.size).tolist()
    latency = {s: state.migration_ms[s, light].tolist() for s in np.unique(state.assignment[picks]).tolist()}
    processing = state.processing_ms[light].tolist()
    load, capacity = state.load_pps[light].tolist(), state.capacity[light].tolist()
    queue, buffer = state.queue[light].tolist(), state.buffer[light].tolist()
    free = (state.buffer[light] - state.queue[light]).tolist()
    reserved, incoming = [0.0] * light.size, [0.0] * light.size
    ranking = sorted((load[j] / capacity[j], index, j) for j, index in enumerate(light.tolist()))
    moves: tuple[list[int], list[int], list[float]] = ([], [], [])
    blocked = 0
    for i, (f, rate, s) in enumerate(zip(picks.tolist(), state.rate[picks].tolist(),
                                         state.assignment[picks].tolist())):
        ok, from_s = sla_ok[i], latency[s]
        for position, (_, index, j) in enumerate(ranking):
            if ok[j] and (load[j] + rate) / capacity[j] <= average:
                buffered = cost.packets_buffered_during_move(rate, from_s[j])
                wants = ofm_need(buffered, rate, processing[j])
                if reserved[j] + wants <= free[j] and queue[j] + incoming[j] + buffered <= buffer[j]:
                    break
        else:
            blocked += 1
            continue
        del ranking[position]
        load[j] += rate
        reserved[j] += wants
        incoming[j] += buffered
        bisect.insort(ranking, (load[j] / capacity[j], index, j))
        for values, value in zip(moves, (f, index, buffered)):
            values.append(value)
    return moves, blocked
