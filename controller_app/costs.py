"""The cost of a decision as the controller records it.

Predicted: the twin's formula (`twin.migration.apply`) on the decided action and the state it was
decided on; its `migration_time_ms` is the twin's model of the moves' wall time (the largest pair
batch). Measured: the same formula on what was carried out (the moves that completed, the instances
started and stopped), with each pair's la_ij the mean of its moves' own durations; the migration
time is measured, not modelled, and named for what it is: `migration_wall_ms` (first move's start to
last move's end, the counterpart of the predicted `migration_time_ms`) and `migration_busy_ms` (the
sum of the moves' own durations).
"""
from __future__ import annotations

import logging

from controller_app.decisions import DecisionRecord
from controller_app.execution import MigrationOutcome, migration_busy_ms, migration_wall_ms
from controller_app.state_collection import MigrationLatency
from twin.migration import Action, CostBreakdown, InvalidAction, Migration, apply
from twin.params import CostParams, Thresholds
from twin.state import ClusterState

LOG = logging.getLogger(__name__)


def cost_view(breakdown: CostBreakdown) -> dict:
    return {"total": breakdown.total, "reward": breakdown.reward, "migration": breakdown.migration,
            "resource": breakdown.resource, "threshold_penalty": breakdown.threshold_penalty,
            "sla_violations": breakdown.sla_violations, "migration_time_ms": breakdown.migration_time_ms,
            "variance_before": breakdown.variance_before, "variance_after": breakdown.variance_after}


def measured_cost(state: ClusterState, record: DecisionRecord, params: CostParams,
                  thresholds: Thresholds) -> dict | None:
    """The predicted formula on what `record`'s execution did, at its measured durations; None when
    what was done is not a valid action on `state` (e.g. a stop that went through although a move failed)."""
    done = [run for run in record.migrations if run.outcome is MigrationOutcome.DONE]
    executed = Action(tuple(Migration(r.flow, r.src, r.dst) for r in done),
                      start=tuple(record.started), stop=tuple(record.stopped))
    moves = MigrationLatency(params, kept=None)
    for run in done:
        moves.record(run.src, run.dst, run.duration_ms)
    latency = moves.over(state.migration_ms, state.instance_ids)
    try:
        _, breakdown = apply(state.with_changes(migration_ms=latency), executed, params, thresholds)
    except InvalidAction as error:
        LOG.warning("measured cost not computable: %s", error)
        return None
    measured = cost_view(breakdown)
    del measured["migration_time_ms"]  # the twin's model of the wall time; the measured one follows
    measured["migration_wall_ms"] = migration_wall_ms(record.migrations)
    measured["migration_busy_ms"] = migration_busy_ms(record.migrations)
    return measured
