"""The transition log: one JSON line per period (state, decision, costs, timings) completed with the
state observed one period later, for offline learning and analysis."""
from __future__ import annotations

import json
from pathlib import Path

from controller_app.config import ControllerConfig
from controller_app.decisions import DecisionRecord
from controller_app.views import action_view
from twin.migration import Action
from twin.scenario import ScenarioKind
from twin.state import ClusterState


def state_summary(state: ClusterState) -> dict:
    """What a transition line records of a state: per-instance load and queue, flow counts."""
    return {
        "time": state.time_s,
        "instances": [
            {"id": i, "active": bool(state.active[k]), "capacity_pps": float(state.capacity[k]),
             "buffer_packets": float(state.buffer[k]), "queue_packets": float(state.queue[k]),
             "load_pps": float(state.load_pps[k]), "utilisation": float(state.utilisation[k]),
             "flows": int(state.flows_per_instance[k])}
            for k, i in enumerate(state.instance_ids)],
        "flows": state.n_flows,
        "migration_ms": state.migration_ms.tolist(),
    }


def transition(time: float, state: ClusterState, kind: ScenarioKind, config: ControllerConfig,
               record: DecisionRecord | None) -> dict:
    """One period's line, but for its `next_state`: `time` is wall-clock time, `record` the period's
    decision if it took one."""
    return {
        "time": time, "state": state_summary(state), "scenario": kind.value,
        "policy": config.policy, "mode": config.mode.value,
        "decision": None if record is None else record.id,
        "action": action_view(record.action if record else Action()),
        "executed": bool(record and record.executed),
        "predicted_cost": record.predicted if record else None,
        "measured_cost": record.measured if record else None,
        "reward": record.predicted["reward"] if record and record.predicted else 0.0,
        "timings": {"decision_ms": record.decision_ms if record else 0.0,
                    "execution_ms": record.execution_ms if record else 0.0,
                    "migration_ms": [m.duration_ms for m in record.migrations] if record else []},
    }


class TransitionLog:
    """Appends one JSON line per period; a line waits for the next period's state before it is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._pending: dict | None = None

    def hold(self, transition: dict) -> None:
        self._pending = transition

    def complete(self, next_state: ClusterState) -> None:
        if self._pending is None:
            return
        self._pending["next_state"] = state_summary(next_state)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps(self._pending) + "\n")
        self._pending = None
