"""The hindsight bound of the closed loop: the multi-period optimum of one trace-driven episode with every
period's traffic known in advance, solved exactly by HiGHS (docs/optimal.md, "The hindsight bound").

The oracle chooses, for every period, the active instances and the instance of every live flow. It pays what
the closed loop charges (`gnn_policy.closed_loop`): eq. (2) for every flow that changes instance between two
periods, C_R = R·ΔN for the instances started and stopped, and the ω penalties of the utilisations after the
action at the period's rates. As in the closed loop it starts and stops no instance in period 0 (nothing is
measured before period 0 ends). It is freer than any policy: it sees the future and places each new flow
(and each flow of period 0) where it likes at no cost (the controller's steering places it, and moving it
costs eq. (2)).
It keeps every instance at or below its capacity, so its queues stay empty; eq. (2)'s queueing delays are
then zero and each flow's migration cost is a constant of the model. `plan_periods` prices a plan with
`twin.cost` alone, so the model's objective is checked against the one cost model, never a copy of it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gnn_policy.closed_loop import Period
from gnn_policy.optimal.milp import INF, Milp
from gnn_policy.optimal.moves import BUFFER_MARGIN
from twin import cost
from twin.params import CostParams, Thresholds

MAX_ASSIGNMENTS = 2400
"""Largest model solved: (live flow, period) pairs × instances, the binary assignment variables. Beyond it an
episode is skipped (docs/optimal.md gives the solve times this limit was chosen from)."""
TIME_LIMIT_S = 120.0
"""An episode whose optimum HiGHS does not prove within this time is skipped, never reported unproven."""


class Unsolved(ValueError):
    """An episode the bound does not cover; the message says why."""


class TooLarge(Unsolved):
    """An episode beyond `MAX_ASSIGNMENTS`; the message gives its size."""


@dataclass(frozen=True)
class Episode:
    """One episode as the oracle sees it: periods 0..T−1 of the trace, the flows live in at least one."""

    rate: np.ndarray
    """[T, F] packets/s of each flow in each period (0 where not live)."""
    live: np.ndarray
    """[T, F] bool: the flow sends in the period (the twin's arrival <= t < departure)."""
    sla_ms: np.ndarray
    flow_ids: np.ndarray
    capacity: np.ndarray
    """[N] packets/s."""
    buffer: np.ndarray
    active: np.ndarray
    """[N] bool: the instances active before period 0."""

    @classmethod
    def of(cls, batch, b: int) -> Episode:
        """Episode `b` of an `EpisodeBatch` over the closed loop's periods (n_steps − 1 of them)."""
        periods = np.arange(batch.n_steps - 1)[:, None]
        live = (batch.arrival[b][None, :] <= periods) & (periods < batch.departure[b][None, :])
        keep = live.any(axis=0)
        rate = np.where(live, batch.rate[b, :-1], 0.0)[:, keep]
        return cls(rate, live[:, keep], batch.sla_ms[b][keep], batch.flow_ids[b][keep], batch.capacity[b],
                   batch.buffer[b], batch.initially_active[b].astype(bool))

    @property
    def size(self) -> int:
        """Binary assignment variables of the model."""
        return int(self.live.sum()) * self.capacity.size


@dataclass(frozen=True)
class Solution:
    assignment: np.ndarray
    """[T, F] instance of each flow in each period, −1 where not live."""
    active: np.ndarray
    """[T, N] bool: the instances active in each period."""
    objective: float
    bound: float
    seconds: float
    proven: bool


def move_costs(episode: Episode, params: CostParams) -> np.ndarray:
    """[F] eq. (2) for moving each flow between two instances of the twin (la_ij = one OpenNF move, la_p of the
    destination) with empty queues."""
    return cost.moved_flow_cost(params.single_flow_migration_ms, params.processing_ms, 0.0, 0.0, episode.sla_ms,
                                params)


def solve(episode: Episode, thresholds: Thresholds = Thresholds(), params: CostParams = CostParams(), *,
          time_limit_s: float = TIME_LIMIT_S, threads: int = 1, seed: int = 0) -> Solution:
    """The exact optimum of `episode`; TooLarge beyond `MAX_ASSIGNMENTS`, Unsolved without a plan."""
    if episode.size > MAX_ASSIGNMENTS:
        raise TooLarge(f"{int(episode.live.sum())} (flow, period) pairs × {episode.capacity.size} instances = "
                       f"{episode.size} assignment variables, more than {MAX_ASSIGNMENTS}")
    began = time.perf_counter()
    model = _Model(episode, thresholds, params, threads, seed)
    run = model.milp.run(time_limit_s)
    if run.x is None:
        raise Unsolved(f"HiGHS found no plan ({run.status}): the episode's load does not fit its instances' "
                       "capacity")
    assignment, active = model.decode(run.x)
    return Solution(assignment, active, run.objective, run.bound, time.perf_counter() - began,
                    run.status == "optimal")


class _Model:
    """The MILP of docs/optimal.md ("The hindsight bound"): columns x (flow on instance in period), a (instance
    active in period), m (flow moved onto instance in period), over and under (the ω penalties)."""

    def __init__(self, episode: Episode, thresholds: Thresholds, params: CostParams, threads: int, seed: int):
        self.episode = episode
        n_periods, _ = episode.live.shape
        n = episode.capacity.size
        self.pairs = np.argwhere(episode.live)  # (t, f) of every live flow-period, row-major
        milp = self.milp = Milp(threads, seed)
        self.x = milp.add(len(self.pairs) * n, integer=True).reshape(-1, n)
        resource = cost.resource_cost(1.0, params)
        self.a = milp.add(n_periods * n, integer=True,
                          cost=np.r_[np.zeros((n_periods - 1) * n), np.full(n, resource)]).reshape(n_periods, n)
        milp.offset = -resource * float(episode.active.sum())
        milp.bounds(self.a[0], episode.active, episode.active)  # period 0: the instances stay as they are
        index = {(int(t), int(f)): k for k, (t, f) in enumerate(self.pairs)}
        stays = [(k, index[(t - 1, f)]) for k, (t, f) in enumerate(self.pairs.tolist()) if (t - 1, f) in index]
        self.now, self.before = (np.array(c, dtype=np.int64) for c in zip(*stays)) if stays else (np.zeros(0, int),) * 2
        costs = move_costs(episode, params)[self.pairs[self.now, 1]]
        self.m = milp.add(self.now.size * n, cost=np.repeat(costs, n)).reshape(-1, n)
        self.over = milp.add(n_periods * n, upper=INF, cost=params.omega).reshape(n_periods, n)
        self.under = milp.add(n_periods * n, upper=INF, cost=params.omega).reshape(n_periods, n)
        self._rows(thresholds, params)

    def _rows(self, thresholds: Thresholds, params: CostParams) -> None:
        episode, milp, x, n = self.episode, self.milp, self.x, self.episode.capacity.size
        t_of, f_of = self.pairs[:, 0], self.pairs[:, 1]
        one = np.ones(n)
        rows = [(x[k], one, 1.0, 1.0) for k in range(len(self.pairs))]  # every live flow on one instance
        rows += [(np.r_[x[k, j], self.a[t_of[k], j]], np.array([1.0, -1.0]), -INF, 0.0)  # only on active ones
                 for k in range(len(self.pairs)) for j in range(n)]
        rows += [(np.r_[self.m[r, j], x[k, j], x[b, j]], np.array([1.0, -1.0, 1.0]), 0.0, INF)  # moved onto j
                 for r, (k, b) in enumerate(zip(self.now, self.before)) for j in range(n)]
        rate = episode.rate[t_of, f_of]
        size = cost.packets_buffered_during_move(episode.rate[t_of[self.now], f_of[self.now]],
                                                 params.single_flow_migration_ms)
        for t in range(episode.live.shape[0]):
            on = np.flatnonzero(t_of == t)
            moved = np.flatnonzero(t_of[self.now] == t)
            for j in range(n):
                share = rate[on] / episode.capacity[j]
                rows.append((x[on, j], share, -INF, 1.0))  # at or below capacity: no queue
                rows.append((np.r_[self.over[t, j], x[on, j]], np.r_[1.0, -share], -thresholds.high, INF))
                rows.append((np.r_[self.under[t, j], x[on, j], self.a[t, j]], np.r_[1.0, share, -thresholds.low],
                             0.0, INF))
                if size[moved].sum() > episode.buffer[j] - BUFFER_MARGIN:  # constraint (5), where it can bind
                    rows.append((self.m[moved, j], size[moved], -INF, episode.buffer[j] - BUFFER_MARGIN))
        milp.rows(rows)

    def decode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        episode = self.episode
        assignment = np.full(episode.live.shape, -1, dtype=np.int64)
        assignment[self.pairs[:, 0], self.pairs[:, 1]] = np.argmax(x[self.x], axis=1)
        return assignment, x[self.a] > 0.5


def plan_periods(episode: Episode, assignment: np.ndarray, active: np.ndarray, thresholds: Thresholds,
                 params: CostParams, step_s: float) -> list[Period]:
    """What each period of a plan does and costs, priced by `twin.cost` as the closed loop prices a period
    (empty queues: the plan keeps every instance within its capacity, checked here with constraint (5))."""
    n = episode.capacity.size
    periods = []
    before_active, before = episode.active, np.full(episode.live.shape[1], -1)
    la = params.single_flow_migration_ms
    for t in range(episode.live.shape[0]):
        moved = (before >= 0) & (assignment[t] >= 0) & (assignment[t] != before)
        load = np.bincount(assignment[t][episode.live[t]], weights=episode.rate[t][episode.live[t]], minlength=n)
        buffered = np.bincount(assignment[t][moved], minlength=n,
                               weights=cost.packets_buffered_during_move(episode.rate[t][moved], la))
        if np.any(load > episode.capacity + 1e-6) or np.any(buffered > episode.buffer):
            raise ValueError(f"period {t}: the plan overloads an instance or its buffer")
        started, stopped = int((active[t] & ~before_active).sum()), int((before_active & ~active[t]).sum())
        utilisation = load / episode.capacity
        charged = (cost.moved_flow_cost(la, params.processing_ms, 0.0, 0.0, episode.sla_ms[moved], params).sum()
                   + cost.resource_cost(started - stopped, params)
                   + cost.threshold_penalties(utilisation, active[t], thresholds, params))
        violating = cost.sla_slack(np.where(moved, la, 0.0), params.processing_ms, 0.0, episode.sla_ms) < 0
        periods.append(Period(
            time_s=t * step_s, cost=float(charged), invalid=False, invalid_reason=None,
            migrated=tuple(episode.flow_ids[moved].tolist()), started=started, stopped=stopped,
            active=int(active[t].sum()), utilisation_min=float(utilisation[active[t]].min(initial=np.inf))
            if active[t].any() else 0.0, utilisation_max=float(utilisation[active[t]].max(initial=0.0)),
            sla_violating_flows=int((violating & episode.live[t]).sum()), drops=0.0, decision_ms=None))
        before_active, before = active[t], np.where(episode.live[t], assignment[t], -1)
    return periods
