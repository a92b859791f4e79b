"""The controller as the REST API shows it (docs/openapi.yaml), and the API's one parsed input:
the body of POST /migrations."""
from __future__ import annotations

import heapq
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from twin.migration import Action, Migration
from twin.scenario import detect

if TYPE_CHECKING:
    from controller_app.core import Controller


class ActionRejected(ValueError):
    """A manual action that cannot run; `status` is the HTTP status the REST API answers with."""

    def __init__(self, message: str, status: int, offender: str | None = None):
        super().__init__(message)
        self.status = status
        self.offender = offender


def action_view(action: Action) -> dict:
    return {"migrations": [asdict(m) for m in action.migrations], "start": list(action.start),
            "stop": list(action.stop)}


def instances_view(controller: Controller) -> list[dict]:
    state, deviation = controller.state, controller.deviation.estimator
    out = []
    for nf in controller.nfs.values():
        report = nf.last_report or {}
        k = state.instance_index.get(nf.id) if state is not None else None
        out.append({
            "id": nf.id, "host": nf.desc.host.name, "port": nf.desc.host.port, "alive": nf.alive,
            "active": nf.active, "capacity_pps": nf.capacity_pps, "buffer_packets": nf.desc.buffer_packets,
            "processing_ms": nf.desc.processing_ms, "queue_packets": float(report.get("queue_packets", 0.0)),
            "load_pps": float(state.load_pps[k]) if k is not None else 0.0,
            "utilisation": float(state.utilisation[k]) if k is not None else 0.0,
            "flows": len(controller.flows.on(nf.id)),
            "received": int(report.get("received", 0)), "processed": int(report.get("processed", 0)),
            "dropped": int(report.get("dropped", 0)), "error": nf.last_error, "stalled": nf.stalled,
            "missed_reports": nf.missed_reports,
            "twin_deviation": deviation.deviation(nf.id), "twin_deviation_abs": deviation.deviation_abs(nf.id),
        })
    return out


def flows_view(controller: Controller, limit: int | None = None, after: str | None = None) -> list[dict]:
    """The steered flows in id order (a stable order to page by): at most `limit`, those whose id sorts after
    `after`."""
    keys = (f.key for f in controller.flows if after is None or f.key > after)
    chosen = sorted(keys) if limit is None else heapq.nsmallest(limit, keys)
    return [controller.flows.get(key).view() for key in chosen]


def state_view(controller: Controller) -> dict:
    state, config = controller.state, controller.config
    scenario = detect(state, config.thresholds) if state is not None else None
    return {
        "time": None if state is None else state.time_s,
        "switch_connected": controller.switch_connected,
        "dpid": controller.cluster.dpid,
        "mode": config.mode.value,
        "policy": config.policy,
        "scenario": None if scenario is None else scenario.kind.value,
        "overloaded": [] if scenario is None else [state.instance_ids[k] for k in scenario.overloaded],
        "underloaded": [] if scenario is None else [state.instance_ids[k] for k in scenario.underloaded],
        "cluster_utilisation": None if scenario is None or math.isinf(scenario.cluster_utilisation)
        else scenario.cluster_utilisation,
        "variance": None if scenario is None else scenario.variance,
        "instances": instances_view(controller),
        "flows": len(controller.flows),
        "links": {str(port): rates for port, rates in sorted(controller.port_rates.items())},
        "pending_manual_actions": controller.pending_manual_actions,
        "stabilizer": controller.stabilizer.view(),
        "deviation": controller.deviation.view(),
    }


def decisions_view(controller: Controller, limit: int) -> list[dict]:
    """The latest `limit` decisions, newest first."""
    return [d.view() for d in list(controller.decisions)[-limit:]][::-1]


def parse_action(body: Any) -> Action:
    """The POST /migrations body: {"migrations": [{"flow", "src", "dst"}...], "start": [...], "stop": [...]}."""
    if not isinstance(body, dict):
        raise ActionRejected("the body must be a JSON object", 400)
    unknown = sorted(set(body) - {"migrations", "start", "stop"})
    if unknown:
        raise ActionRejected(f"unknown field {unknown[0]!r}", 400, unknown[0])
    moves = body.get("migrations", [])
    if not isinstance(moves, list):
        raise ActionRejected("migrations must be a list", 400, "migrations")
    parsed = []
    for k, move in enumerate(moves):
        if not isinstance(move, dict) or set(move) != {"flow", "src", "dst"} or \
                not all(isinstance(v, str) for v in move.values()):
            raise ActionRejected(f"migrations[{k}] must be an object of strings flow, src and dst", 400,
                                 f"migrations[{k}]")
        parsed.append(Migration(move["flow"], move["src"], move["dst"]))
    lists = {}
    for name in ("start", "stop"):
        value = body.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ActionRejected(f"{name} must be a list of instance ids", 400, name)
        lists[name] = tuple(value)
    action = Action(tuple(parsed), **lists)
    if not (action.migrations or action.start or action.stop):
        raise ActionRejected("the action is empty", 400)
    return action
