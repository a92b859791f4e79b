"""The closed loop in the twin: any `Policy`, optionally behind a stabilizer, drives trace-driven episodes
period by period, seeing only what the controller would see.

Each period t of `BatchedTwin.from_episodes` (one step = one controller period):

1. the policy sees `BatchedTwin.observed_states()`: flows live in t−1 and t at their rates over t−1,
   queues and assignment at the start of t (no clairvoyance; nothing is measured before period 0 ends,
   so period 0 does nothing);
2. its action is mapped back to slots; flows that arrived since the measurement and sit on an instance the
   action stops are steered onto the instances that stay (`BatchedTwin.steer_away`), as they would have
   been had they arrived after the decision;
3. the twin checks, charges and applies it on period t's traffic and advances. A rejected action counts as
   doing nothing: the period is charged the ω penalties of the cluster left as it was, never the twin's
   flat invalid penalty.

docs/twin.md ("The closed loop") defines every metric; `twin.loop_metrics` holds the definitions that the
live testbed's summary shares (reversals, flows migrated twice).
"""
from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from gnn_policy.base import Decision, Policy, Problem
from twin import cost
from twin.loop_metrics import flows_migrated_twice, reversals
from twin.migration import IndexedAction
from twin.params import CostParams, Thresholds
from twin.scenario import ScenarioKind
from twin.sim import BatchedTwin
from twin.state import ClusterState

if TYPE_CHECKING:
    from gnn_policy.stabilizer import Stabilizer

@dataclass(frozen=True)
class Period:
    """What one period did in one episode (after the action, over the period's traffic)."""

    time_s: float
    """Loop time at the start of the period: period index × period length."""
    cost: float
    invalid: bool
    invalid_reason: str | None
    """Why the twin rejected the action (`twin.sim.InvalidReason`'s name, e.g. 'BUFFER_OVERFLOW'); None when valid."""
    migrated: tuple[str, ...]
    """Ids of the flows moved."""
    started: int
    stopped: int
    """Instances the executed action started and stopped (0 for a rejected action)."""
    active: int
    utilisation_min: float
    utilisation_max: float
    """Over the active instances, after the action, at the period's rates."""
    sla_violating_flows: int
    drops: float
    decision_ms: float | None
    """Time the decision took; None when no scenario was acted on (or nothing was measured yet)."""


def run_closed_loop(
    twin: BatchedTwin,
    policies: Sequence[Policy],
    stabilizers: Sequence[Stabilizer | None] | None = None,
    *,
    thresholds: Thresholds | None = None,
    params: CostParams | None = None,
    on_period: Callable[[], None] = lambda: None,
) -> list[list[Period]]:
    """Drive every episode of `twin` to its horizon: `policies[b]` (and `stabilizers[b]`) decide episode b.

    Give each episode its own fresh policy and stabilizer: both may keep state across periods.
    `thresholds` and `params` default to the twin's; `on_period` is told when each period is done.
    Returns the periods of each episode.
    """
    thresholds = twin.thresholds if thresholds is None else thresholds
    params = twin.params if params is None else params
    stabilizers = [None] * twin.n_episodes if stabilizers is None else stabilizers
    if not len(policies) == len(stabilizers) == twin.n_episodes:
        raise ValueError(f"{twin.n_episodes} episodes need as many policies and stabilizers, got "
                         f"{len(policies)} and {len(stabilizers)}")
    runs: list[list[Period]] = [[] for _ in range(twin.n_episodes)]
    period = 0
    while not twin.done.any():
        now_s = period * twin.step_s
        states, slots = twin.observed_states()
        decided = [_decide(policies[b], stabilizers[b], states[b], thresholds, params, now_s, twin.step_s)
                   if period > 0 else (IndexedAction(), None) for b in range(twin.n_episodes)]
        for b, periods in enumerate(_step(twin, [d[0] for d in decided], slots, thresholds, params, now_s)):
            runs[b].append(Period(**periods, decision_ms=decided[b][1]))
        period += 1
        on_period()
    return runs


def _decide(policy: Policy, stabilizer: Stabilizer | None, state: ClusterState, thresholds: Thresholds,
            params: CostParams, now_s: float, period_s: float) -> tuple[IndexedAction, float | None]:
    """The action to execute and, when a scenario was acted on, how long deciding took (ms)."""
    began = time.perf_counter()
    if stabilizer is None:
        problem = Problem.of(state, thresholds, params)
        decision, kind = policy.decide(problem), problem.scenario.kind
    else:
        stabilized = stabilizer.decide(state, policy, now_s, period_s)
        decision, kind = stabilized.decision, stabilized.scenario
    elapsed_ms = 1000.0 * (time.perf_counter() - began)
    return _executable(decision), (None if kind is ScenarioKind.NONE else elapsed_ms)


def _executable(decision: Decision) -> IndexedAction:
    """An infeasible decision executes nothing."""
    return decision.action if decision.feasible else IndexedAction()


def _step(twin: BatchedTwin, actions: Sequence[IndexedAction], slots: Sequence[np.ndarray],
          thresholds: Thresholds, params: CostParams, now_s: float) -> list[dict]:
    """Execute one period's actions in every episode; the fields of each episode's `Period`."""
    observed = torch.zeros_like(twin.flow_live)
    for b, of_b in enumerate(slots):
        observed[b, torch.as_tensor(of_b, dtype=torch.long)] = True
    twin.steer_away(twin.flow_live & ~observed, twin.action_tensors(actions, slots)[2])
    dst, start, stop = twin.action_tensors(actions, slots)
    live, rate, assignment = twin.flow_live.clone(), twin.flow_rate.clone(), twin.assignment.clone()
    queue_start = twin.queue.clone()
    idle_penalty = cost.threshold_penalties(twin.utilisation, twin.active & twin.instance_mask, thresholds,
                                            params)
    result = twin.step(dst, start, stop)
    moved = live & (dst != assignment) & ~result.invalid[:, None]
    now = torch.where(moved, dst.long(), assignment)
    hold_ms = torch.where(moved, twin.migration_ms.flatten(1).gather(
        1, assignment.clamp(min=0) * twin.n_instances + now.clamp(min=0)), 0.0)
    violating = sla_violations(rate, now, hold_ms, twin.processing_ms, queue_start, twin.queue, twin.capacity,
                               twin.flow_sla_ms)
    charged = charged_cost(result.total_cost, result.invalid, idle_penalty)
    load = twin.load_of(now, rate)
    active = twin.active & twin.instance_mask
    utilisation = load / twin.capacity
    low = torch.where(active, utilisation, torch.inf).amin(-1)
    high = torch.where(active, utilisation, -torch.inf).amax(-1)
    started = torch.where(result.invalid, 0, start.sum(-1))
    stopped = torch.where(result.invalid, 0, stop.sum(-1))
    reasons = result.reasons()
    return [{
        "time_s": now_s, "cost": float(charged[b]), "invalid": bool(result.invalid[b]),
        "invalid_reason": reasons[b].name if result.invalid[b] else None,
        "migrated": tuple(twin.flow_ids[b, torch.nonzero(moved[b]).flatten().cpu().numpy()].tolist()),
        "started": int(started[b]), "stopped": int(stopped[b]), "active": int(active[b].sum()),
        "utilisation_min": float(low[b]) if active[b].any() else 0.0,
        "utilisation_max": float(high[b]) if active[b].any() else 0.0,
        "sla_violating_flows": int(violating[b]), "drops": float(result.drops[b]),
    } for b in range(twin.n_episodes)]


# --- the metrics, as small pure functions ----------------------------------------------------------------


def charged_cost(total_cost: torch.Tensor, invalid: torch.Tensor, idle_penalty: torch.Tensor) -> torch.Tensor:
    """[B] the period's cost: the step's eq. (2) + C_R + ω, or, for a rejected action, the ω of doing nothing."""
    return torch.where(invalid, idle_penalty, total_cost)


def sla_violations(rate, assignment, hold_ms, processing_ms, queue_start, queue_end, capacity, sla_ms):
    """[B] flows whose packets of the period wait longer than LA^f on average (eq. (1)'s terms).

    A flow counts when it sends packets in the period (`rate` > 0) from its instance `assignment` (−1: none):
    its delay is the hold time of its move (`hold_ms`, 0 when not moved) + la_p + the queueing delay of the
    period's mean queue, (start + end) / 2, of the fluid model.
    """
    on = assignment.clamp(min=0)
    mean_queue = (queue_start + queue_end) / 2.0
    la_q = cost.queueing_delay_ms(mean_queue.gather(1, on), capacity.gather(1, on))
    slack = cost.sla_slack(hold_ms, processing_ms.gather(1, on), la_q, sla_ms)
    return ((assignment >= 0) & (rate > 0) & (slack < 0)).sum(-1)


def episode_metrics(periods: Sequence[Period], period_s: float) -> dict:
    """The closed-loop record's metrics of one episode (docs/twin.md, "The closed loop")."""
    times = [p.decision_ms for p in periods if p.decision_ms is not None]
    return {
        "periods": len(periods),
        "total_cost": sum(p.cost for p in periods),
        "invalid_actions": sum(p.invalid for p in periods),
        "invalid_reasons": dict(sorted(Counter(p.invalid_reason for p in periods if p.invalid).items())),
        "sla_violation_flow_s": period_s * sum(p.sla_violating_flows for p in periods),
        "packets_dropped": sum(p.drops for p in periods),
        "instance_s": period_s * sum(p.active for p in periods),
        "migrations": sum(len(p.migrated) for p in periods),
        "flows_migrated_twice": flows_migrated_twice((p.time_s, flow) for p in periods for flow in p.migrated),
        "reversals": reversals((p.time_s, p.started, p.stopped) for p in periods),
        "decision_ms_p50": statistics.median(times) if times else None,
    }
