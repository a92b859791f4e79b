"""The controller without a switch: flow steering, the cluster state, the decision loop and migrations.

Ryu stays out of this module (as FAUCET keeps its logic apart from its Ryu shell), so every
behaviour here is driven by tests through two small interfaces: `Switch` (the OpenFlow rules
the controller needs) and `NFChannel` (the NF instance's control socket). The Ryu app
(`controller_app.app`) implements `Switch` and forwards OpenFlow events and the period timer.

One period (`Controller.tick`): collect the NF reports, turn the latest flow counters into
rates, build the shared `ClusterState`, detect the scenario, ask the configured policy, then,
depending on the mode, execute the action (auto), only log it (dry-run) or wait for an
operator (manual). Each period appends one transition line to the log; its `next_state` is the
state observed one period later.
"""
from __future__ import annotations

import enum
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from controller_app.config import ClusterDescription, ConfigError, ControllerConfig, Mode, NFDescription
from gnn_policy.base import Policy, Problem
from gnn_policy.registry import make_policy
from twin.flow import FlowKey
from twin.migration import Action, CostBreakdown, InvalidAction, Migration, apply
from twin.params import CostParams
from twin.scenario import ScenarioKind, detect
from twin.state import ClusterState, FiveTuple, Flow, Instance, uniform_migration_latency

LOG = logging.getLogger(__name__)
DECISIONS_KEPT = 1000
RESTEER_AFTER_S = 1.0


# --- flow keys ---------------------------------------------------------------------------------
def canonical(five_tuple: FiveTuple) -> FiveTuple:
    """The direction-free form of a 5-tuple, oriented as trace_replay keys flows (and the NFs report them)."""
    return FlowKey.of(*five_tuple).a_to_b


def reverse(five_tuple: FiveTuple) -> FiveTuple:
    return five_tuple.reverse()


def flow_key(five_tuple: FiveTuple) -> str:
    """The flow id shared by the controller, the NF reports and the state (twin.flow.FlowKey.id)."""
    return FlowKey.of(*five_tuple).id


# --- the two interfaces the core drives --------------------------------------------------------
class SwitchError(RuntimeError):
    """The switch did not do what was asked (disconnected, barrier timed out)."""


class Switch(Protocol):
    def install_base_rules(self, cluster: ClusterDescription) -> None:
        """Table-miss to the controller and every NF port to the sink."""

    def steer(self, five_tuple: FiveTuple, nf: NFDescription) -> None:
        """Add or overwrite the rules sending both directions of a (canonical) flow to `nf`, atomically:
        the switch never sends one direction to the old instance and the other to the new one."""

    def barrier(self, timeout_s: float) -> None:
        """Return once the switch has applied every earlier message; raise SwitchError otherwise
        (no reply in time, or an earlier `steer` was refused)."""


class NFChannel(Protocol):
    """The NF control channel (mininet_topos.nf_channel.NFClient); keys are canonical 5-tuples; failures raise."""

    def report(self) -> dict: ...
    def hold(self, key: FiveTuple) -> Any: ...
    def export(self, key: FiveTuple, quiet_ms: float) -> Any: ...
    def import_(self, key: FiveTuple, state: Any) -> Any: ...
    def release(self, key: FiveTuple) -> Any: ...
    def activate(self) -> Any: ...
    def deactivate(self) -> Any: ...


class ActionRejected(ValueError):
    """A manual action that cannot run; `status` is the HTTP status the REST API answers with."""

    def __init__(self, message: str, status: int, offender: str | None = None):
        super().__init__(message)
        self.status = status
        self.offender = offender


# --- runtime records ---------------------------------------------------------------------------
@dataclass
class SteeredFlow:
    key: str
    five_tuple: FiveTuple
    """Canonical orientation."""
    instance: str
    sla_ms: float
    first_seen: float
    packets: int = 0
    bytes: int = 0
    counted_at: float | None = None
    rate_pps: float | None = None
    """None until two counter samples exist."""
    byte_rate: float = 0.0
    rules_expired: set[str] = field(default_factory=set)
    steered_to: str | None = None
    """The instance the last packet-in steered the flow to, and when."""
    steered_at: float = -math.inf

    def view(self) -> dict:
        return {"id": self.key, "five_tuple": self.five_tuple._asdict(), "instance": self.instance,
                "rate_pps": self.rate_pps or 0.0, "byte_rate": self.byte_rate, "sla_ms": self.sla_ms,
                "packets": self.packets, "bytes": self.bytes, "first_seen": self.first_seen}


@dataclass
class NFRuntime:
    desc: NFDescription
    channel: NFChannel
    active: bool
    alive: bool = False
    """Whether the NF answered its last report; none is until its first answer, so no flow is steered
    to an instance whose process has not come up yet."""
    last_report: dict | None = None
    last_error: str = ""
    flows_with_state: set[str] = field(default_factory=set)
    """Flow ids of the per-flow state the NF reported last."""

    @property
    def id(self) -> str:
        return self.desc.instance

    @property
    def usable(self) -> bool:
        return self.alive and self.active


class Step(str, enum.Enum):
    """The steps of a loss-free, order-preserving move, in order (OpenNF's protocol)."""

    HOLD = "hold"          # dst buffers the flow's packets it receives from now on
    REDIRECT = "redirect"  # both rules now point at dst
    BARRIER = "barrier"    # ... and the switch has applied them: src receives no more packets
    EXPORT = "export"      # src drained its queue of the flow, then gave up the flow's state
    IMPORT = "import"      # dst holds the state
    RELEASE = "release"    # dst processes the held packets in order, then the rest


class Outcome(str, enum.Enum):
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    SKIPPED = "skipped"


@dataclass
class MigrationRun:
    flow: str
    src: str
    dst: str
    completed: list[Step] = field(default_factory=list)
    outcome: Outcome = Outcome.DONE
    error: str = ""
    duration_ms: float = 0.0

    def view(self) -> dict:
        return {"flow": self.flow, "src": self.src, "dst": self.dst, "outcome": self.outcome.value,
                "steps": [s.value for s in self.completed], "error": self.error,
                "duration_ms": round(self.duration_ms, 3)}


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

    def view(self) -> dict:
        return {
            "id": self.id, "time": self.time, "scenario": self.scenario, "policy": self.policy,
            "origin": self.origin, "mode": self.mode, "feasible": self.feasible, "reason": self.reason,
            "action": action_view(self.action), "executed": self.executed,
            "migrations": [m.view() for m in self.migrations], "started": self.started, "stopped": self.stopped,
            "predicted_cost": self.predicted, "measured_cost": self.measured,
            "decision_ms": round(self.decision_ms, 3), "execution_ms": round(self.execution_ms, 3),
            "error": self.error,
        }


def action_view(action: Action) -> dict:
    return {"migrations": [asdict(m) for m in action.migrations], "start": list(action.start),
            "stop": list(action.stop)}


def cost_view(breakdown: CostBreakdown) -> dict:
    return {"total": breakdown.total, "reward": breakdown.reward, "migration": breakdown.migration,
            "resource": breakdown.resource, "threshold_penalty": breakdown.threshold_penalty,
            "sla_violations": breakdown.sla_violations, "migration_time_ms": breakdown.migration_time_ms,
            "variance_before": breakdown.variance_before, "variance_after": breakdown.variance_after}


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


# --- flow registry -----------------------------------------------------------------------------
class FlowRegistry:
    """Which instance serves each flow, and the flow's counters and rates."""

    def __init__(self, sla_ms: Callable[[], float]):
        self._flows: dict[str, SteeredFlow] = {}
        self._draw_sla = sla_ms

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self):
        return iter(list(self._flows.values()))

    def get(self, key: str) -> SteeredFlow | None:
        return self._flows.get(key)

    def add(self, five_tuple: FiveTuple, instance: str, now: float) -> SteeredFlow:
        c = canonical(five_tuple)
        flow = SteeredFlow(flow_key(c), c, instance, self._draw_sla(), now)
        self._flows[flow.key] = flow
        return flow

    def forget(self, key: str) -> None:
        self._flows.pop(key, None)

    def on(self, instance: str) -> list[SteeredFlow]:
        return [f for f in self._flows.values() if f.instance == instance]

    def record_counters(self, counters: dict[str, tuple[int, int]], now: float) -> None:
        """Turn cumulative (packets, bytes) per flow into rates over the time since the last sample.

        A counter that went down belongs to a reinstalled rule and counts from zero.
        """
        for key, (packets, octets) in counters.items():
            flow = self._flows.get(key)
            if flow is None:
                continue
            if flow.counted_at is None:
                since, base_packets, base_bytes = flow.first_seen, 0, 0
            else:
                since = flow.counted_at
                base_packets, base_bytes = (flow.packets, flow.bytes) if packets >= flow.packets else (0, 0)
            elapsed = now - since
            if elapsed > 0:
                flow.rate_pps = (packets - base_packets) / elapsed
                flow.byte_rate = (octets - base_bytes) / elapsed
            flow.packets, flow.bytes, flow.counted_at = packets, octets, now

    def expected_load(self) -> dict[str, float]:
        """Load per instance, counting a flow with no rate yet at the mean measured rate."""
        rates = [f.rate_pps for f in self._flows.values() if f.rate_pps is not None]
        prior = float(np.mean(rates)) if rates else 1.0
        load: dict[str, float] = {}
        for f in self._flows.values():
            load[f.instance] = load.get(f.instance, 0.0) + (prior if f.rate_pps is None else f.rate_pps)
        return load


class MigrationLatency:
    """la_ij: CostParams' single-flow default, replaced per pair by the mean of measured moves."""

    def __init__(self, params: CostParams, kept: int = 20):
        self._params = params
        self._measured: dict[tuple[str, str], deque[float]] = {}
        self._kept = kept

    def record(self, src: str, dst: str, duration_ms: float) -> None:
        self._measured.setdefault((src, dst), deque(maxlen=self._kept)).append(duration_ms)

    def matrix(self, instance_ids: tuple[str, ...]) -> np.ndarray:
        latency = uniform_migration_latency(len(instance_ids), self._params)
        index = {i: k for k, i in enumerate(instance_ids)}
        for (src, dst), samples in self._measured.items():
            if src in index and dst in index:
                latency[index[src], index[dst]] = float(np.mean(samples))
        return latency


# --- migrations --------------------------------------------------------------------------------
@dataclass
class _Move:
    run: MigrationRun
    flow: SteeredFlow
    src: NFRuntime
    dst: NFRuntime
    exported: list[Any] = field(default_factory=list)
    """The source's exported state, once exported."""


class Migrator:
    """Moves flows between instances loss-free and in order; a failed step rolls the finished ones back."""

    def __init__(self, switch: Switch, flows: FlowRegistry, config: Callable[[], ControllerConfig],
                 clock: Callable[[], float] = time.monotonic):
        self._switch = switch
        self._flows = flows
        self._config = config
        self._clock = clock

    def migrate(self, flow: SteeredFlow, src: NFRuntime, dst: NFRuntime) -> MigrationRun:
        return self.migrate_all([(flow, src, dst)])[0]

    def migrate_all(self, moves: list[tuple[SteeredFlow, NFRuntime, NFRuntime]]) -> list[MigrationRun]:
        """Move several flows together, step by step: every destination holds, every flow's rules move
        (one atomic bundle per flow), one barrier, then each source exports once drained, each
        destination imports and releases. Per flow the order is OpenNF's, so each move is loss-free
        and order-preserving; together they share one barrier and one quiet time instead of paying
        them once per flow (a source drains all its moved flows at once). A flow whose step fails is
        rolled back alone; a failed barrier rolls back every flow whose rules moved.
        A run's duration is from the start of the batch to the end of its own last step.
        """
        config = self._config()
        started = self._clock()
        every = [_Move(MigrationRun(flow.key, src.id, dst.id), flow, src, dst) for flow, src, dst in moves]
        moving = list(every)
        steps: tuple[tuple[Step, Callable[[_Move], Any]], ...] = (
            (Step.HOLD, lambda m: m.dst.channel.hold(m.flow.five_tuple)),
            (Step.REDIRECT, lambda m: self._point(m.flow, m.dst)),
            (Step.BARRIER, None),
            (Step.EXPORT, lambda m: m.exported.append(m.src.channel.export(m.flow.five_tuple, config.quiet_ms))),
            (Step.IMPORT, lambda m: m.dst.channel.import_(m.flow.five_tuple, m.exported[0])),
            (Step.RELEASE, lambda m: m.dst.channel.release(m.flow.five_tuple)),
        )
        for step, do in steps:
            if step is Step.BARRIER:
                if not moving:
                    break
                try:
                    self._switch.barrier(config.barrier_timeout_s)
                except Exception as error:  # noqa: BLE001 - any switch failure: undo, report, keep the loop alive
                    for move in moving:
                        self._fail(move, step, error, started)
                    moving = []
                    break
                for move in moving:
                    move.run.completed.append(step)
                continue
            still = []
            for move in moving:
                try:
                    do(move)
                except Exception as error:  # noqa: BLE001 - any NF or switch failure: undo, report, keep the loop alive
                    self._fail(move, step, error, started)
                    continue
                move.run.completed.append(step)
                if step is Step.RELEASE:
                    move.run.duration_ms = (self._clock() - started) * 1000.0
                still.append(move)
            moving = still
        return [move.run for move in every]

    def _fail(self, move: _Move, step: Step, error: Exception, started: float) -> None:
        move.run.error = f"{step.value} failed: {error}"
        self._roll_back(move.run, move.flow, move.src, move.dst, move.exported)
        move.run.duration_ms = (self._clock() - started) * 1000.0

    def _point(self, flow: SteeredFlow, nf: NFRuntime) -> None:
        flow.instance = nf.id  # packet-ins from now on are steered to nf too
        self._switch.steer(flow.five_tuple, nf.desc)

    def _roll_back(self, run: MigrationRun, flow: SteeredFlow, src: NFRuntime, dst: NFRuntime,
                   exported: list[Any]) -> None:
        undo: list[tuple[str, Callable[[], Any]]] = []
        if Step.REDIRECT in run.completed or flow.instance == dst.id:
            undo += [("rules back to source", lambda: self._point(flow, src)),
                     ("barrier", lambda: self._switch.barrier(self._config().barrier_timeout_s))]
        if exported:
            undo.append(("state back to source", lambda: src.channel.import_(flow.five_tuple, exported[0])))
        if Step.HOLD in run.completed:
            undo.append(("destination release", lambda: dst.channel.release(flow.five_tuple)))
        failures = []
        for what, do in undo:
            try:
                do()
            except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
                failures.append(f"{what}: {error}")
        run.outcome = Outcome.ROLLBACK_FAILED if failures else Outcome.ROLLED_BACK
        if failures:
            run.error += "; rollback: " + "; ".join(failures)
        LOG.warning("migration of %s from %s to %s %s: %s", flow.key, src.id, dst.id, run.outcome.value, run.error)


# --- transition log ----------------------------------------------------------------------------
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


# --- the controller ----------------------------------------------------------------------------
class Controller:
    """The switch-independent controller. The Ryu app calls the `on_*` methods and `tick`."""

    def __init__(self, cluster: ClusterDescription, config: ControllerConfig,
                 channel_factory: Callable[[NFDescription, float], NFChannel], *,
                 params: CostParams = CostParams(), clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 policy_factory: Callable[[str, int], Policy] = lambda name, seed: make_policy(name, seed=seed),
                 offload: Callable[..., Any] = lambda fn, *args: fn(*args)):
        """`offload(fn, *args)` runs the slow calls (loading and running a policy); Ryu passes an OS thread pool."""
        self.cluster = cluster
        self.config = config
        self.params = params
        self._clock = clock
        self._wall = wall_clock
        self._policy_factory = policy_factory
        self._offload = offload
        self._policy = policy_factory(config.policy, config.seed)
        rng = np.random.default_rng(config.seed)
        self.flows = FlowRegistry(lambda: float(rng.uniform(params.sla_min_ms, params.sla_max_ms)))
        self.nfs = {nf.instance: NFRuntime(nf, channel_factory(nf, config.nf_timeout_s), nf.active)
                    for nf in cluster.nfs}
        self.latency = MigrationLatency(params)
        self.transitions = TransitionLog(config.transition_log)
        self.decisions: deque[DecisionRecord] = deque(maxlen=DECISIONS_KEPT)
        self.state: ClusterState | None = None
        self.port_rates: dict[int, dict] = {}
        self._switch: Switch | None = None
        self._counters: dict[str, tuple[int, int]] = {}
        self._counted_at: float | None = None
        self._ports: dict[int, tuple[int, int, float]] = {}
        self._manual: deque[Action] = deque()
        self._next_decision_id = 1

    # --- configuration ----------------------------------------------------------------------
    def reconfigure(self, patch: Any) -> ControllerConfig:
        """Apply a PUT /config body; the policy is built before anything changes."""
        config = self.config.updated(patch)
        if config.policy != self.config.policy:
            try:
                self._policy = self._offload(self._policy_factory, config.policy, config.seed)
            except Exception as error:  # noqa: BLE001 - e.g. a checkpoint that cannot be loaded
                raise ConfigError(f"policy {config.policy!r} cannot be loaded: {error}", "policy") from None
        self.config = config
        return config

    # --- switch events ----------------------------------------------------------------------
    @property
    def switch_connected(self) -> bool:
        return self._switch is not None

    def on_switch_connected(self, switch: Switch) -> None:
        """A (re)connected switch gets the base rules and the rule of every flow we still steer."""
        self._switch = switch
        switch.install_base_rules(self.cluster)
        for flow in self.flows:
            switch.steer(flow.five_tuple, self.nfs[flow.instance].desc)
        LOG.info("switch %016x connected: reinstalled %d flows", self.cluster.dpid, len(self.flows))

    def on_switch_disconnected(self) -> None:
        self._switch = None
        LOG.warning("switch %016x disconnected", self.cluster.dpid)

    def on_new_flow(self, in_port: int, five_tuple: FiveTuple) -> NFDescription | None:
        """Steer a table-miss packet from the source: the NF it goes to, or None to drop it."""
        if in_port != self.cluster.source.port or self._switch is None:
            return None
        key = flow_key(five_tuple)
        flow = self.flows.get(key)
        now = self._clock()
        # A known flow's packet-in mostly missed rules installed a moment ago (a burst's first packets):
        # it is only forwarded. The rules are sent again if they expired, point elsewhere, or should
        # have been in place for a while.
        steer = flow is None or bool(flow.rules_expired) or flow.steered_to != flow.instance or \
            now - flow.steered_at > RESTEER_AFTER_S
        if flow is None or not self.nfs[flow.instance].usable:
            target = self._state_holder(key) or self._least_utilised()
            if target is None:
                return None
            if flow is None:
                flow = self.flows.add(five_tuple, target.id, now)
            else:
                flow.instance = target.id
            steer = True
        nf = self.nfs[flow.instance].desc
        if steer:
            flow.rules_expired.clear()
            flow.steered_to, flow.steered_at = flow.instance, now
            self._switch.steer(flow.five_tuple, nf)
        return nf

    def on_rule_expired(self, five_tuple: FiveTuple) -> None:
        """One direction's rule idled out; the flow is forgotten when both have."""
        flow = self.flows.get(flow_key(five_tuple))
        if flow is None:
            return
        flow.rules_expired.add("forward" if five_tuple == flow.five_tuple else "reverse")
        if len(flow.rules_expired) == 2:
            self.flows.forget(flow.key)

    def on_flow_stats(self, counters: Iterable[tuple[FiveTuple, int, int]], now: float | None = None) -> None:
        """A complete flow-stats reply: (directed 5-tuple, packets, bytes) per rule."""
        totals: dict[str, list[int]] = {}
        for five_tuple, packets, octets in counters:
            total = totals.setdefault(flow_key(five_tuple), [0, 0])
            total[0] += packets
            total[1] += octets
        self._counters = {k: (p, b) for k, (p, b) in totals.items()}
        self._counted_at = self._clock() if now is None else now

    def on_port_stats(self, counters: Iterable[tuple[int, int, int]], now: float | None = None) -> None:
        """Port counters (port, rx bytes, tx bytes) become link loads in bytes/s."""
        now = self._clock() if now is None else now
        for port, rx, tx in counters:
            if port in self._ports:
                last_rx, last_tx, then = self._ports[port]
                if now > then:
                    self.port_rates[port] = {"rx_bps": max(rx - last_rx, 0) * 8 / (now - then),
                                             "tx_bps": max(tx - last_tx, 0) * 8 / (now - then)}
            self._ports[port] = (rx, tx, now)

    def on_port_down(self, port: int) -> None:
        """An NF's port went down: treat the NF as crashed."""
        for nf in self.nfs.values():
            if nf.desc.host.port == port and nf.alive:
                self._mark_dead(nf, f"switch port {port} down")

    # --- the period -------------------------------------------------------------------------
    def tick(self) -> DecisionRecord | None:
        """One period: observe, detect, decide, act and log; never raises on NF or switch failures."""
        now = self._clock()
        self.poll_instances()
        if self._counted_at is not None:
            self.flows.record_counters(self._counters, self._counted_at)
        state = self.build_state(now)
        self.state = state
        self.transitions.complete(state)
        scenario = detect(state, self.config.thresholds)

        record = None
        if self._manual:
            record = self._record(state, scenario.kind, "manual", self._manual.popleft(), 0.0, True, "")
        elif self.config.mode is not Mode.MANUAL and scenario.kind is not ScenarioKind.NONE:
            record = self._decide(state)
        if record is not None:
            if record.predicted is not None and (record.origin == "manual" or self.config.mode is Mode.AUTO):
                self._execute(state, record)
            self.decisions.append(record)
        self.transitions.hold(self._transition(state, scenario.kind, record))
        return record

    def _decide(self, state: ClusterState) -> DecisionRecord:
        problem = Problem.of(state, self.config.thresholds, self.params)
        started = time.perf_counter()
        try:
            decision = self._offload(self._policy.decide, problem)
        except Exception as error:  # a policy bug must not stop the controller
            LOG.exception("policy %s failed", self.config.policy)
            decision_ms = (time.perf_counter() - started) * 1000.0
            return self._record(state, problem.scenario.kind, "policy", Action(), decision_ms, False,
                                f"policy error: {error}")
        decision_ms = (time.perf_counter() - started) * 1000.0
        action = decision.action.to_action(state) if decision.feasible else Action()
        return self._record(state, problem.scenario.kind, "policy", action, decision_ms, decision.feasible,
                            decision.reason)

    def _record(self, state: ClusterState, kind: ScenarioKind, origin: str, action: Action, decision_ms: float,
                feasible: bool, reason: str) -> DecisionRecord:
        predicted, error = None, ""
        if feasible:
            try:
                predicted = cost_view(apply(state, action, self.params, self.config.thresholds)[1])
            except InvalidAction as invalid:
                error = f"invalid action: {invalid}"
        record = DecisionRecord(self._next_decision_id, self._wall(), kind.value, self.config.policy, origin,
                                self.config.mode.value, feasible, reason, action, predicted, decision_ms,
                                error=error)
        self._next_decision_id += 1
        return record

    def _transition(self, state: ClusterState, kind: ScenarioKind, record: DecisionRecord | None) -> dict:
        return {
            "time": self._wall(), "state": state_summary(state), "scenario": kind.value,
            "policy": self.config.policy, "mode": self.config.mode.value,
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

    # --- observing --------------------------------------------------------------------------
    def poll_instances(self) -> None:
        """Ask every NF for its report: the ones that answer are alive, the others get no new flows."""
        for nf in self.nfs.values():
            try:
                report = nf.channel.report()
            except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
                if nf.alive:
                    self._mark_dead(nf, f"report failed: {error}")
                continue
            if not nf.alive:
                LOG.info("NF %s answers", nf.id)
            nf.alive, nf.last_report, nf.last_error = True, report, ""
            nf.flows_with_state = {flow_key(FiveTuple(*flow["key"])) for flow in report.get("flows", ())}
            nf.active = bool(report.get("active", nf.active))

    def _mark_dead(self, nf: NFRuntime, why: str) -> None:
        """Its flows go to the live instances at once; their NF state died with the instance."""
        nf.alive, nf.last_error = False, why
        LOG.warning("NF %s is dead (%s): re-steering %d flows", nf.id, why, len(self.flows.on(nf.id)))
        for flow in self.flows.on(nf.id):
            target = self._least_utilised() or self._activate_standby()
            if target is None:
                LOG.error("no live NF instance left for flow %s", flow.key)
                continue
            flow.instance = target.id
            if self._switch is not None:
                try:
                    self._switch.steer(flow.five_tuple, target.desc)
                except SwitchError as error:
                    LOG.warning("could not re-steer %s: %s", flow.key, error)

    def _state_holder(self, key: str) -> NFRuntime | None:
        """The usable instance whose last report holds the flow's state: a flow that comes back after
        its rules idled out returns there, behind its own packets still queued in that instance."""
        for nf in self.nfs.values():
            if nf.usable and key in nf.flows_with_state:
                return nf
        return None

    def _least_utilised(self) -> NFRuntime | None:
        load = self.flows.expected_load()
        usable = [nf for nf in self.nfs.values() if nf.usable]
        if not usable:
            return None
        return min(usable, key=lambda nf: (load.get(nf.id, 0.0) / self._capacity(nf), nf.id))

    def _activate_standby(self) -> NFRuntime | None:
        for nf in self.nfs.values():
            if nf.alive and not nf.active:
                try:
                    nf.channel.activate()
                except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
                    LOG.warning("could not activate standby %s: %s", nf.id, error)
                    continue
                nf.active = True
                return nf
        return None

    def _capacity(self, nf: NFRuntime) -> float:
        reported = (nf.last_report or {}).get("capacity_pps")
        return float(reported) if reported else nf.desc.capacity_pps

    def build_state(self, now: float | None = None) -> ClusterState:
        """The shared cluster state: live instances (active and standby) and the flows on active ones."""
        live = [nf for nf in self.nfs.values() if nf.alive]
        instances = []
        for nf in live:
            report = nf.last_report or {}
            instances.append(Instance(nf.id, self._capacity(nf),
                                      float(report.get("buffer_packets", nf.desc.buffer_packets)),
                                      max(float(report.get("queue_packets", 0.0)), 0.0), nf.active,
                                      nf.desc.processing_ms))
        usable = {nf.id for nf in live if nf.active}
        flows = [Flow(f.key, f.five_tuple, max(f.rate_pps or 0.0, 0.0), f.sla_ms, f.instance, max(f.byte_rate, 0.0))
                 for f in self.flows if f.instance in usable]
        ids = tuple(i.id for i in instances)
        return ClusterState.from_objects(instances, flows, self.latency.matrix(ids), self.params,
                                         time_s=self._clock() if now is None else now)

    # --- acting -----------------------------------------------------------------------------
    def submit(self, body: Any) -> Action:
        """Validate a manual migration request against the current state and queue it for the next period."""
        if self.state is None:
            raise ActionRejected("no cluster state yet: wait one period", 409)
        action = parse_action(body)
        try:
            apply(self.state, action, self.params, self.config.thresholds)
        except InvalidAction as error:
            unknown = str(error).startswith("unknown")
            raise ActionRejected(str(error), 404 if unknown else 409, error.offender) from None
        self._manual.append(action)
        return action

    def _execute(self, state: ClusterState, record: DecisionRecord) -> None:
        if self._switch is None:
            record.error = "switch not connected: nothing executed"
            return
        started = time.perf_counter()
        action = record.action
        record.executed = True
        for instance in action.start:
            try:
                self.nfs[instance].channel.activate()
                self.nfs[instance].active = True
                record.started.append(instance)
            except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
                record.error = f"could not activate {instance}: {error}"
        migrator = Migrator(self._switch, self.flows, lambda: self.config, self._clock)
        runs: dict[int, MigrationRun] = {}
        batch: list[tuple[int, tuple[SteeredFlow, NFRuntime, NFRuntime]]] = []
        for k, move in enumerate(action.migrations):
            flow, src, dst = self.flows.get(move.flow), self.nfs[move.src], self.nfs[move.dst]
            if flow is None or flow.instance != src.id or not dst.usable or not src.alive:
                runs[k] = MigrationRun(move.flow, move.src, move.dst, outcome=Outcome.SKIPPED,
                                       error="flow gone, moved, or an instance is not usable")
            else:
                batch.append((k, (flow, src, dst)))
        for (k, _), run in zip(batch, migrator.migrate_all([move for _, move in batch])):
            runs[k] = run
            if run.outcome is Outcome.DONE:
                self.latency.record(run.src, run.dst, run.duration_ms)
        record.migrations.extend(runs[k] for k in sorted(runs))
        for instance in action.stop:
            nf = self.nfs[instance]
            if self.flows.on(instance):
                record.error = f"{instance} still holds flows after the moves: not stopped"
                continue
            try:
                nf.channel.deactivate()
                nf.active = False
                record.stopped.append(instance)
            except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
                record.error = f"could not deactivate {instance}: {error}"
        record.execution_ms = (time.perf_counter() - started) * 1000.0
        record.measured = self._measured_cost(state, record)

    def _measured_cost(self, state: ClusterState, record: DecisionRecord) -> dict | None:
        """The predicted formula on what happened: the moves that completed, at their measured durations."""
        done = [run for run in record.migrations if run.outcome is Outcome.DONE]
        executed = Action(tuple(Migration(r.flow, r.src, r.dst) for r in done),
                          start=tuple(record.started), stop=tuple(record.stopped))
        latency = state.migration_ms.copy()
        for run in done:
            latency[state.instance_index[run.src], state.instance_index[run.dst]] = run.duration_ms
        try:
            _, breakdown = apply(state.with_changes(migration_ms=latency), executed, self.params,
                                 self.config.thresholds)
        except InvalidAction as error:  # e.g. a stop that went through although a move failed
            LOG.warning("measured cost not computable: %s", error)
            return None
        measured = cost_view(breakdown)
        measured["migration_time_ms"] = sum(run.duration_ms for run in record.migrations)
        return measured

    # --- views for the REST API -------------------------------------------------------------
    def instances_view(self) -> list[dict]:
        state = self.state
        out = []
        for nf in self.nfs.values():
            report = nf.last_report or {}
            k = state.instance_index.get(nf.id) if state is not None else None
            out.append({
                "id": nf.id, "host": nf.desc.host.name, "port": nf.desc.host.port, "alive": nf.alive,
                "active": nf.active, "capacity_pps": self._capacity(nf), "buffer_packets": nf.desc.buffer_packets,
                "processing_ms": nf.desc.processing_ms, "queue_packets": float(report.get("queue_packets", 0.0)),
                "load_pps": float(state.load_pps[k]) if k is not None else 0.0,
                "utilisation": float(state.utilisation[k]) if k is not None else 0.0,
                "flows": len(self.flows.on(nf.id)),
                "received": int(report.get("received", 0)), "processed": int(report.get("processed", 0)),
                "dropped": int(report.get("dropped", 0)), "error": nf.last_error,
            })
        return out

    def flows_view(self) -> list[dict]:
        return [f.view() for f in self.flows]

    def state_view(self) -> dict:
        state = self.state
        scenario = detect(state, self.config.thresholds) if state is not None else None
        return {
            "time": None if state is None else state.time_s,
            "switch_connected": self.switch_connected,
            "dpid": self.cluster.dpid,
            "mode": self.config.mode.value,
            "policy": self.config.policy,
            "scenario": None if scenario is None else scenario.kind.value,
            "overloaded": [] if scenario is None else [state.instance_ids[k] for k in scenario.overloaded],
            "underloaded": [] if scenario is None else [state.instance_ids[k] for k in scenario.underloaded],
            "cluster_utilisation": None if scenario is None or math.isinf(scenario.cluster_utilisation)
            else scenario.cluster_utilisation,
            "variance": None if scenario is None else scenario.variance,
            "instances": self.instances_view(),
            "flows": len(self.flows),
            "links": {str(port): rates for port, rates in sorted(self.port_rates.items())},
            "pending_manual_actions": len(self._manual),
        }

    def decisions_view(self, limit: int) -> list[dict]:
        return [d.view() for d in list(self.decisions)[-limit:]][::-1]


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
