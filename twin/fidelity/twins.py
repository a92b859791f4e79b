"""The twins the fidelity benchmark compares, behind one interface: from what is known at origin t
(`Past`) and the recorded actions of t..t+k-1, predict each of the k periods.

Every twin here is a `FlowTwin`: the flows of state t, on their instances, step by step carried through
the recorded actions. The twins differ only in five answers (docs/twin.md, "Fidelity"): the rate of each
flow in later periods, the load of flows that arrive after t and where it lands, the queue and the drops,
and how long each move takes. The cost of each period is always `twin.migration.apply` on the predicted
state (the one cost model), with each pair's la_ij the mean of the twin's predicted durations of its moves,
as the controller's measured cost takes the measured ones (controller_app.costs).
"""
from __future__ import annotations

import abc
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from twin import cost, move_pace
from twin.fidelity.episode import Past, RecordedAction
from twin.migration import IndexedAction, apply, carry
from twin.params import CostParams, Thresholds
from twin.physics import batch_wait_ms, flow_wait_ms
from twin.sim import fluid_queue
from twin.state import ClusterState

if TYPE_CHECKING:
    from twin.calibration import CalibratedParams

RATE_MEMORY = 10
"""Periods over which the calibrated twin takes a flow's mean rate."""
UNCHECKED_BUFFER = 1e300
"""The buffer a recorded action is costed with: the testbed carried it out, so constraint (5) is not
checked again on the twin's predicted queues."""


@dataclass(frozen=True)
class Step:
    """Step j of a rollout from origin t: what period t+j did and the state t+j+1 it leads to."""

    utilisation: np.ndarray
    """[N] per-instance utilisation of state t+j+1."""
    queue: np.ndarray
    """[N] queue (packets) of state t+j+1."""
    drops: np.ndarray
    """[N] packets dropped during period t+j."""
    migration_ms: np.ndarray
    """Duration of each done move of period t+j, in the recorded order."""
    costs: dict[str, float]
    """Period t+j's cost components (migration, resource, threshold_penalty)."""


class Twin(abc.ABC):
    """A twin of the testbed: `rollout(past, actions)` returns one Step per recorded action."""

    name = ""

    @abc.abstractmethod
    def rollout(self, past: Past, actions: Sequence[RecordedAction]) -> list[Step]:
        ...


class FlowTwin(Twin):
    """The shared engine; subclasses answer the five questions (`rates`, `arrivals`, `advance`, `move_ms`)."""

    def __init__(self, params: CostParams = CostParams(), thresholds: Thresholds = Thresholds()):
        self.params, self.thresholds = params, thresholds

    def rates(self, past: Past, j: int) -> np.ndarray:
        """The rate of each flow of state t as state t+j will show it (default: its last measured rate)."""
        return past.state().rate

    def arrivals(self, past: Past, carried: np.ndarray, utilisation: np.ndarray,
                 active: np.ndarray) -> np.ndarray:
        """[N] load (packets/s) of the flows that arrived after t, one period later (default: none)."""
        return carried

    @abc.abstractmethod
    def advance(self, past: Past, queue: np.ndarray, load: np.ndarray,
                active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(queue after, drops [N]) over one period that offers `load` packets/s."""

    @abc.abstractmethod
    def move_ms(self, past: Past, action: RecordedAction, state: ClusterState, j: int) -> np.ndarray:
        """The duration of each done move of `action`, carried out on the twin's `state` at step j (j = 0: the
        recorded state t)."""

    def rollout(self, past: Past, actions: Sequence[RecordedAction]) -> list[Step]:
        return self._rollout(past, actions, costs=True)

    def states(self, past: Past, actions: Sequence[RecordedAction]) -> list[Step]:
        """`rollout`'s states alone (utilisation, queue, drops; no durations, costs {}): what the residual twin
        reads of its base for every candidate the look-ahead scores, without the moves' durations and the
        periods' costs, which it takes from elsewhere."""
        return self._rollout(past, actions, costs=False)

    def _rollout(self, past: Past, actions: Sequence[RecordedAction], costs: bool) -> list[Step]:
        origin = past.state()
        n, capacity = origin.n_instances, origin.capacity
        assignment, active, queue = origin.assignment, origin.active, origin.queue
        carried = np.zeros(n)
        _ = origin.flow_index  # made once here, kept by every step's derived state (`carry_out` reads it)
        steps = []
        for j, action in enumerate(actions):
            now = origin.with_changes(rate=self.rates(past, j), assignment=assignment, active=active, queue=queue,
                                      buffer=np.full(n, UNCHECKED_BUFFER))
            durations = self.move_ms(past, action, now, j) if costs else np.empty(0)
            if costs:
                now = now.with_changes(migration_ms=pair_latency(origin.migration_ms, action, durations))
            now, carried, indexed = carry_out(now, action, carried)
            if costs:
                after, breakdown = apply(now, indexed, self.params, self.thresholds)
                period_costs = {"migration": breakdown.migration, "resource": breakdown.resource,
                                "threshold_penalty": cost.threshold_penalty(after.utilisation + carried / capacity,
                                                                            after.active, self.thresholds,
                                                                            self.params)}
            else:
                after, period_costs = carry(now, indexed), {}
            assignment, active = after.assignment, after.active
            carried = self.arrivals(past, carried, after.utilisation + carried / capacity, active)
            load = np.bincount(assignment, weights=self.rates(past, j + 1), minlength=n) + carried
            queue, drops = self.advance(past, queue, load, active)
            steps.append(Step(load / capacity, queue, drops, durations, period_costs))
        return steps


def pair_latency(latency: np.ndarray, action: RecordedAction, durations: np.ndarray) -> np.ndarray:
    """la_ij with every pair that `action` moves flows over set to the mean of those moves' durations."""
    latency = latency.copy()
    for src, dst in set(zip(action.src.tolist(), action.dst.tolist())):
        pair = (action.src == src) & (action.dst == dst)
        latency[src, dst] = float(durations[pair].mean())
    return latency


def carry_out(state: ClusterState, action: RecordedAction,
              carried: np.ndarray) -> tuple[ClusterState, np.ndarray, IndexedAction]:
    """The recorded action as an IndexedAction on the twin's state: moves of flows the twin does not know
    (they arrived after the origin) or that are already where they go are left out; a stop leaves first
    the flows (and arrived load) the twin still has there with the least utilised instance that stays."""
    start = np.flatnonzero(action.started & ~state.active)
    stop = action.stopped & state.active
    staying = (state.active | action.started) & ~stop
    if not staying.any():
        stop[:] = False
    index = state.flow_index
    moved = {index[f]: int(d) for f, d in zip(action.flows, action.dst.tolist()) if f in index}
    moved = {f: d for f, d in moved.items() if state.assignment[f] != d and staying[d]}
    stranded = stop[state.assignment] & ~np.isin(np.arange(state.n_flows), list(moved))
    if stranded.any() or carried[stop].any():
        utilisation = state.utilisation + carried / state.capacity
        target = int(np.argmin(np.where(staying & state.active, utilisation, np.inf)))
        assignment = state.assignment.copy()
        assignment[stranded] = target
        carried = carried.copy()
        carried[target] += carried[stop].sum()
        carried[stop] = 0.0
        state = state.with_changes(assignment=assignment)
    flows = np.array(sorted(moved), dtype=np.int64)
    return state, carried, IndexedAction(flows, np.array([moved[f] for f in flows.tolist()], dtype=np.int64),
                                         start.astype(np.int64), np.flatnonzero(stop).astype(np.int64))


def moved_load(state: ClusterState, action: RecordedAction) -> np.ndarray:
    """[N] how the done moves of `action` change each instance's load at state's rates (flows it knows)."""
    index = state.flow_index
    known = [(index[f], s, d) for f, s, d in zip(action.flows, action.src.tolist(), action.dst.tolist())
             if f in index]
    change = np.zeros(state.n_instances)
    for f, src, dst in known:
        change[src] -= state.rate[f]
        change[dst] += state.rate[f]
    return change


def flow_means(past: Past, window: int) -> np.ndarray:
    """The mean rate of each flow of state t over the states t-window+1..t in which it was present. A window of
    state t alone, whose table lists the state's flows in order (a bare state's, every period the look-ahead
    scores), is each flow's rate: the same numbers without sorting 1,600 flow ids."""
    state = past.state()
    tables = [past.flow_table(s) for s in range(max(past.t - window + 1, 0), past.t + 1)]
    if len(tables) == 1 and tuple(tables[0]["flow"].tolist()) == tuple(state.flow_ids):
        return np.array(tables[0]["rate"], dtype=float)
    ids = np.concatenate([table["flow"] for table in tables])
    rates = np.concatenate([table["rate"] for table in tables])
    known, inverse = np.unique(ids, return_inverse=True)
    means = np.bincount(inverse, weights=rates) / np.bincount(inverse)
    return means[np.searchsorted(known, np.asarray(state.flow_ids, dtype=object))] if state.n_flows else means[:0]


def fluid(queue: np.ndarray, load: np.ndarray, service: np.ndarray, buffer: np.ndarray,
          step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """twin.sim's fluid queue over one period, on numpy arrays."""
    after, drops = fluid_queue(*(torch.from_numpy(np.array(a, dtype=float)) for a in (queue, load, service, buffer)),
                               step_s)
    return after.numpy(), drops.numpy()


# --- the twins ------------------------------------------------------------------------------------------
class DefaultTwin(FlowTwin):
    """Issue 18's pinned baseline: state t persists. Flows keep their last measured rates and move with the
    recorded moves; queue and drops are those last measured (state t's queue, period t-1's drops); a move
    takes the controller's la_ij of state t (the running mean of its pair's measured moves)."""

    name = "default"

    def advance(self, past, queue, load, active):
        last = past.drops(past.t - 1)
        return past.state().queue, (np.nan_to_num(last[-1]) if len(last) else np.zeros_like(queue))

    def move_ms(self, past, action, state, j):
        return past.state().migration_ms[action.src, action.dst]


class ConstantRateTwin(FlowTwin):
    """The floor: every quantity is its mean over the last w periods (w per metric, chosen on validation):
    flows at their mean rates, the mean queue and drops, moves at the mean measured duration."""

    name = "constant-rate"
    METRICS = ("utilisation", "queue", "drops", "migration_ms")

    def __init__(self, windows: dict[str, int], params: CostParams = CostParams(),
                 thresholds: Thresholds = Thresholds()):
        super().__init__(params, thresholds)
        self.windows = {metric: int(windows.get(metric, 1)) for metric in self.METRICS}

    def rates(self, past, j):
        return past.state().rate if j == 0 else flow_means(past, self.windows["utilisation"])

    def advance(self, past, queue, load, active):
        queues, drops = past.queue(past.t - self.windows["queue"] + 1), past.drops(past.t - self.windows["drops"])
        mean_drops = np.nanmean(drops, axis=0) if len(drops) and np.isfinite(drops).any() else np.zeros_like(queue)
        return queues.mean(axis=0), np.nan_to_num(mean_drops)

    def move_ms(self, past, action, state, j):
        measured, _ = past.durations(past.t - self.windows["migration_ms"])
        if measured.size:
            return np.full(action.src.size, float(measured.mean()))
        return past.state().migration_ms[action.src, action.dst]


class FluidTwin(FlowTwin):
    """twin/sim.py as it is: flows keep their last measured rates, queues and drops follow the fluid model
    at the configured capacities and buffers, moves take OFM's 39.2 + 2.95·n ms (n: the pair's batch)."""

    name = "fluid"

    def advance(self, past, queue, load, active):
        return fluid(queue, load, np.where(active, past.capacity, 0.0), past.buffer, past.period_s)

    def move_ms(self, past, action, state, j):
        n = past.state().n_instances
        pair = action.src * n + action.dst
        counts = np.bincount(pair, minlength=n * n)[pair]
        return cost.batch_migration_ms(counts, self.params)


class CalibratedTwin(FlowTwin):
    """The fluid twin with fitted parameters (twin.calibration): flows' rates revert towards their means and
    leave, new flows' load arrives and is steered, queues at the fitted service rates and buffers, moves
    at the fitted a + b·n of their pair plus c times the batch's drain wait (the largest of its flows'
    `moved_flow_waits`: reported by the sources at t, expected from rates and predicted queues later)."""

    name = "calibrated"

    def __init__(self, fitted: CalibratedParams, params: CostParams = CostParams(),
                 thresholds: Thresholds = Thresholds()):
        super().__init__(params, thresholds)
        self.fitted = fitted
        self._memo: tuple[Past, np.ndarray, np.ndarray, float] | None = None
        self._pair_params: dict[tuple[str, str], CostParams] = {}
        self._per_instance: dict[tuple[tuple[str, ...], str], np.ndarray] = {}
        self._pace_memo: tuple[Past, float] | None = None

    def _traffic(self, past: Past) -> tuple[np.ndarray, np.ndarray, float]:
        """(last rates, mean rates, new load per period) of the origin, computed once per rollout."""
        if self._memo is None or self._memo[0] is not past:
            window = self.fitted.arrival_window
            tables = [past.flow_table(s) for s in range(max(past.t - window, 0), past.t + 1)]
            fresh = [float(now["rate"][~np.isin(now["flow"], before["flow"])].sum())
                     for before, now in itertools.pairwise(tables)]
            self._memo = (past, past.state().rate, flow_means(past, RATE_MEMORY),
                          float(np.mean(fresh)) if fresh else 0.0)
        return self._memo[1:]

    def rates(self, past, j):
        """x_j of x_{j+1} = α·x_j + γ·m + δ from x_0, the rates of state t."""
        last, mean, _ = self._traffic(past)
        alpha, pull = self.fitted.rate_persistence, self.fitted.rate_reversion * mean + self.fitted.rate_base_pps
        if j == 0:
            return last
        if abs(1.0 - alpha) < 1e-12:
            return last + pull * j
        return alpha ** j * last + pull * (1.0 - alpha ** j) / (1.0 - alpha)

    def arrivals(self, past, carried, utilisation, active):
        _, _, fresh = self._traffic(past)
        share = np.where(active, (1.0 - self.fitted.least_utilised_share) / max(active.sum(), 1), 0.0)
        if active.any():  # a cluster with no instance running (a controller starting up) steers nothing
            share[int(np.argmin(np.where(active, utilisation, np.inf)))] += self.fitted.least_utilised_share
        survive = min(self.fitted.rate_persistence + self.fitted.rate_reversion, 1.0)
        return survive * carried + fresh * share

    def _instances(self, past: Past, name: str) -> np.ndarray:
        """The fitted `name` of each instance of `past`, made once per set of instances (every period of every
        candidate the look-ahead scores asks for it)."""
        key = (tuple(past.instance_ids), name)
        if key not in self._per_instance:
            self._per_instance[key] = np.array([getattr(self.fitted.instance(i), name) for i in key[0]])
            self._per_instance[key].flags.writeable = False
        return self._per_instance[key]

    def advance(self, past, queue, load, active):
        service = np.where(active, self._instances(past, "service_ratio") * past.capacity, 0.0)
        buffer = np.maximum(self._instances(past, "buffer_ratio") * past.buffer, queue)  # it holds what it holds
        return fluid(queue, self.fitted.arrival_ratio * load, service, buffer, past.period_s)

    def _move_params(self, src: str, dst: str) -> CostParams:
        """The pair's fitted a + b·n as cost parameters, made once per pair (a checked CostParams per move
        was most of the look-ahead's scoring time)."""
        key = (src, dst)
        if key not in self._pair_params:
            fit = self.fitted.move(src, dst)
            self._pair_params[key] = CostParams(migration_base_ms=fit.a_ms, migration_per_flow_ms=fit.b_ms)
        return self._pair_params[key]

    def move_ms(self, past, action, state, j):
        per_move, wait = self._move_parts(past.instance_ids, action, state, past.flow_table() if j == 0 else None)
        return per_move * self._pace(past) + self.fitted.move_drain_factor * wait

    def _move_parts(self, ids, action: RecordedAction, state: ClusterState, table) -> tuple[np.ndarray, float]:
        """(a + b·n of each done move of `action` on `state`, w its batch's drain wait); `table`: the flows of
        `state`, with the reported queues."""
        n = len(ids)
        pair = action.src * n + action.dst
        batch = np.full(pair.size, action.n_run) if self.fitted.batch == "period" else np.bincount(pair)[pair] \
            if pair.size else pair
        out = np.empty(pair.size)
        for k, (src, dst) in enumerate(zip(action.src.tolist(), action.dst.tolist())):
            out[k] = cost.batch_migration_ms(batch[k], self._move_params(ids[src], ids[dst]))
        waits = moved_flow_waits(table, state, action)
        return out, float(batch_wait_ms(waits, np.ones(waits.size, bool)))

    def _pace(self, past: Past) -> float:
        """ρ^β of the batches without a drain wait measured before the origin (`twin.move_pace`), once per
        origin."""
        window = self.fitted.move_pace_window
        if window == 0 or self.fitted.move_pace_exponent == 0.0:
            return 1.0
        if self._pace_memo is None or self._pace_memo[0] is not past:
            since = past.t - move_pace.LOOKBACK_PERIODS
            durations, actions = past.durations(since)
            logs, offset = [], 0
            for p, action in zip(range(max(since, 0), past.t), actions):
                measured = durations[offset:offset + len(action.flows)]
                offset += len(action.flows)
                known = np.isfinite(measured)
                if known.any():
                    per_move, wait = self._move_parts(past.instance_ids, action, past.state(p), past.flow_table(p))
                    if wait == 0.0:
                        logs.append(move_pace.batch_log_ratio(measured[known], per_move[known]))
            self._pace_memo = (past, move_pace.pace(logs, window, self.fitted.move_pace_exponent))
        return self._pace_memo[1]


def moved_flow_waits(table: dict[str, np.ndarray] | None, state: ClusterState, action: RecordedAction) -> np.ndarray:
    """[moves] the drain wait (`twin.physics.flow_wait_ms`) of each done move of `action` on `state`: from the
    source's reported per-flow queue where `table` (the flows of `state`) holds it, else expected
    from the flow's rate and its source's queueing delay."""
    la_q = cost.queueing_delay_ms(state.queue, state.capacity)[action.src]
    rate = np.zeros(action.src.size)
    drain = np.full(action.src.size, np.nan)
    flows = {f: k for k, f in enumerate(state.flow_ids)}
    reported = table is not None and "drain_packets" in table  # a bare or live state's table has no queue
    rows = {f: k for k, f in enumerate(table["flow"].tolist())} if reported else {}
    for m, flow in enumerate(action.flows):
        if flow in flows:
            rate[m] = state.rate[flows[flow]]
        if flow in rows:
            drain[m] = table["drain_packets"][rows[flow]]
    return flow_wait_ms(rate, la_q, drain, state.capacity[action.src])
