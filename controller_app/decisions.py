"""The record of one decision: what was decided, by whom, what it was predicted to cost, and what
carrying it out did (every move's run, the instances started and stopped, the measured cost)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controller_app.views import action_view
from twin.migration import Action

if TYPE_CHECKING:
    from controller_app.execution import MigrationRun
    from gnn_policy.base import ControlDraw


@dataclass
class DecisionRecord:
    id: int
    time: float
    scenario: str
    policy: str
    origin: str
    """'policy' or 'manual'."""
    mode: str
    feasible: bool
    reason: str
    action: Action
    predicted: dict | None
    decision_ms: float
    executed: bool = False
    migrations: list[MigrationRun] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    measured: dict | None = None
    execution_ms: float = 0.0
    error: str = ""
    fallback: bool = False
    """Decided by the deviation fallback (the stabilized baseline, `policy` names it), not the configured policy."""
    twin_deviation: float | None = None
    """The cluster's twin deviation when it was decided (controller_app.deviation; None: not estimated yet)."""
    control: ControlDraw | None = None
    """The control head's draw behind the decision (`gnn_policy.base.Decision.control`), for the recording."""

    def view(self) -> dict:
        return {
            "id": self.id, "time": self.time, "scenario": self.scenario, "policy": self.policy,
            "origin": self.origin, "mode": self.mode, "feasible": self.feasible, "reason": self.reason,
            "action": action_view(self.action), "executed": self.executed,
            "migrations": [m.view() for m in self.migrations], "started": self.started, "stopped": self.stopped,
            "predicted_cost": self.predicted, "measured_cost": self.measured,
            "decision_ms": round(self.decision_ms, 3), "execution_ms": round(self.execution_ms, 3),
            "error": self.error, "fallback": self.fallback, "twin_deviation": self.twin_deviation,
        }
