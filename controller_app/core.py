"""The controller without a switch: the period that ties steering, state collection, decisions and
execution together.

Ryu stays out of this package's logic (as FAUCET keeps its logic apart from its Ryu shell), so every
behaviour is driven by tests through two small interfaces: `steering.Switch` (the OpenFlow rules
the controller needs) and `instances.NFChannel` (the NF instance's control socket). The Ryu app
(`controller_app.app`) implements `Switch` and forwards OpenFlow events and the period timer to
`Controller`, which hands each to the part that owns it:

- `steering`: the flow registry, new-flow placement, re-steering the flows of a dead instance;
- `state_collection`: counters into rates, NF reports, the `ClusterState`, migration latencies;
- `execution`: carrying out an action (OpenNF moves, rollback);
- `costs`: the predicted and the measured cost; `views`: the REST views; `transitions`: the log.

One period (`Controller.tick`): collect the NF reports, turn the latest flow counters into
rates, build the shared `ClusterState`, detect the scenario, ask the configured policy (through
`gnn_policy.stabilizer` when the config turns it on: estimated rates, windows, cap, budget), then,
depending on the mode, execute the action (auto), only log it (dry-run) or wait for an
operator (manual). Each period appends one transition line to the log; its `next_state` is the
state observed one period later.
"""
from __future__ import annotations

import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from controller_app.config import ClusterDescription, ConfigError, ControllerConfig, Mode, NFDescription
from controller_app.costs import cost_view, measured_cost
from controller_app.decisions import DecisionRecord
from controller_app.deviation import DeviationMonitor
from controller_app.execution import Executor
from controller_app.instances import NFChannel, NFRuntime
from controller_app.metrics import ControllerMetrics
from controller_app.recording import PeriodRecorder, period_record
from controller_app.recovery import settle_exports
from controller_app.stabilization import load_stabilizer, save_stabilizer, stabilizer_path
from controller_app.state_collection import MigrationLatency, StateCollector
from controller_app.steering import FlowRegistry, Steering, Switch
from controller_app.transitions import TransitionLog, transition
from controller_app.views import ActionRejected, parse_action
from gnn_policy.base import ControlDraw, Policy, Problem
from gnn_policy.exploration import Exploring
from gnn_policy.registry import make_policy
from gnn_policy.stabilizer import Stabilizer, StabilizerConfig
from twin.choice import flow_twin
from twin.flow import FiveTuple
from twin.migration import Action, InvalidAction, apply
from twin.params import CostParams
from twin.scenario import ScenarioKind, detect
from twin.state import ClusterState

LOG = logging.getLogger(__name__)
DECISIONS_KEPT = 1000
_VERSIONS = itertools.count(1)
"""One count for every controller: a controller that replaces another (a new cluster) never repeats a version."""


def _changes(method):
    """Bump the controller's `version` once `method` is done (it changed what the REST API shows)."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self.changed()
    return wrapped


class Controller:
    """The switch-independent controller. The Ryu app calls the `on_*` methods and `tick`."""

    def __init__(self, cluster: ClusterDescription, config: ControllerConfig,
                 channel_factory: Callable[[NFDescription, float], NFChannel], *,
                 params: CostParams = CostParams(), clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 policy_factory: Callable[[str, int], Policy] | None = None,
                 offload: Callable[..., Any] = lambda fn, *args: fn(*args)):
        """`offload(fn, *args)` runs the slow calls (loading and running a policy); Ryu passes an OS thread pool.
        `policy_factory(name, seed)` builds a policy; by default the registry's, with the config's options."""
        self.cluster = cluster
        self.config = config
        self.params = params
        self._clock = clock
        self._wall = wall_clock
        self._policy_factory = policy_factory or (
            lambda name, seed: make_policy(name, seed=seed, **self.config.policy_options()))
        self._offload = offload
        self._policy = self._make_policy(config)
        rng = np.random.default_rng(config.seed)
        self.flows = FlowRegistry(lambda: float(rng.uniform(params.sla_min_ms, params.sla_max_ms)))
        self.nfs = {nf.instance: NFRuntime(nf, channel_factory(nf, config.nf_timeout_s), nf.active)
                    for nf in cluster.nfs}
        self.latency = MigrationLatency(params)
        self.steering = Steering(cluster, self.nfs, self.flows, clock)
        self.collection = StateCollector(self.nfs, self.flows, self.latency, params, clock, self.steering.mark_dead,
                                         lambda: self.config.nf_stall_periods)
        self.executor = Executor(self.nfs, self.flows, self.latency, lambda: self.config, clock)
        self.transitions = TransitionLog(config.transition_log)
        self.recorder = PeriodRecorder(config.record_log) if config.record_log else None
        self.stabilizer: Stabilizer = load_stabilizer(stabilizer_path(config.transition_log), config.stabilizer,
                                                      config.thresholds, params)
        self.deviation = DeviationMonitor(config.deviation, lambda name: flow_twin(name, params, self.config.thresholds))
        self._fallback: tuple[Policy, Stabilizer | None] | None = None
        """While the deviation fallback is on: the baseline and, when the config's stabilizer is off, its own."""
        self.decisions: deque[DecisionRecord] = deque(maxlen=DECISIONS_KEPT)
        self.state: ClusterState | None = None
        self._manual: deque[Action] = deque()
        self._next_decision_id = 1
        self.metrics = ControllerMetrics(self, clock)
        self.version = next(_VERSIONS)
        """Changes whenever what the REST views show may have changed (`controller_app.rest` keeps its encoded
        answers while it does not): after each event and write, and in a period once its state is built,
        once its decision is made and at its end (a read between two steps of a period shows the last one)."""

    def changed(self) -> None:
        self.version = next(_VERSIONS)

    # --- configuration ----------------------------------------------------------------------
    def reconfigure(self, patch: Any) -> ControllerConfig:
        """Apply a PUT /config body; the policy is built before anything changes."""
        config = self.config.updated(patch)
        if config.deviation != self.config.deviation:
            self.deviation.reconfigure(config.deviation)
            self._fallback = None
        if config.policy != self.config.policy:
            try:
                self._policy = self._offload(self._make_policy, config)
            except Exception as error:  # noqa: BLE001 - e.g. a checkpoint that cannot be loaded
                raise ConfigError(f"policy {config.policy!r} cannot be loaded: {error}", "policy") from None
        if config != self.config:
            self.config = config
            self.changed()
        return config

    def _make_policy(self, config: ControllerConfig) -> Policy:
        """The configured policy, perturbed by exploration when the config asks for it."""
        policy = self._policy_factory(config.policy, config.seed)
        return Exploring(policy, config.explore, config.seed) if config.explore > 0 else policy

    # --- switch and NF events, each to the part that owns it ---------------------------------
    @property
    def switch_connected(self) -> bool:
        return self.steering.switch is not None

    @_changes
    def on_switch_connected(self, switch: Switch) -> None:
        self.steering.connect(switch)

    @_changes
    def on_rules_found(self, rules: Iterable[tuple[FiveTuple, str | None]]) -> None:
        """The switch's per-flow rules at an adopting connect: (directed 5-tuple, instance id or None)."""
        self.steering.adopt_rules(rules)

    @_changes
    def on_switch_disconnected(self) -> None:
        self.steering.disconnect()

    @_changes
    def on_flow_landed(self, five_tuple: FiveTuple, instance: str) -> None:
        """The switch's default steering placed a new flow on `instance` (a marked copy of its packet)."""
        self.steering.on_flow_landed(five_tuple, instance)

    @_changes
    def on_rule_expired(self, five_tuple: FiveTuple, age_s: float | None = None) -> None:
        """One direction's rule idled out after `age_s` seconds in the switch (None: unknown)."""
        self.steering.on_rule_expired(five_tuple, age_s)

    @_changes
    def on_flow_stats(self, counters: Iterable[tuple[FiveTuple, int, int]], now: float | None = None) -> None:
        """A complete flow-stats reply: (directed 5-tuple, packets, bytes) per rule."""
        self.collection.on_flow_stats(counters, now)

    @_changes
    def on_port_stats(self, counters: Iterable[tuple[int, int, int]], now: float | None = None) -> None:
        """Port counters: (port, rx bytes, tx bytes)."""
        self.collection.on_port_stats(counters, now)

    @_changes
    def on_port_down(self, port: int) -> None:
        """An NF's port went down: treat the NF as crashed."""
        for nf in self.nfs.values():
            if nf.desc.host.port == port and nf.alive:
                self.steering.mark_dead(nf, f"switch port {port} down")

    @_changes
    def poll_instances(self) -> None:
        """Ask the NFs for their reports outside a period; new flows may land on the ones that answer."""
        self.collection.poll_instances()
        self.steering.refresh_default_steering()

    @property
    def port_rates(self) -> dict[int, dict]:
        """Link loads per switch port: {"rx_bps", "tx_bps"}."""
        return self.collection.port_rates

    @property
    def pending_manual_actions(self) -> int:
        return len(self._manual)

    # --- the period -------------------------------------------------------------------------
    @_changes
    def tick(self) -> DecisionRecord | None:
        """One period: observe, detect, decide, act and log; never raises on NF or switch failures."""
        now, wall = self._clock(), self._wall() if self.recorder else 0.0
        explorations = getattr(self._policy, "explorations", 0)
        self.collection.poll_instances()
        self.collection.update_rates()
        recovery = self.steering.recovery
        settle_exports({flow.key: flow.instance for flow in self.flows}, self.nfs,
                       adopting=recovery is not None and not recovery.rules_found)
        self.steering.on_period(self.config.quiet_ms, self.config.rule_idle_timeout_s)
        state = self.collection.build_state(now)
        self.state = state
        self.changed()
        self.transitions.complete(state)
        scenario = detect(state, self.config.thresholds)
        self._measure_deviation(state)
        decided = state.with_changes(twin_deviation=self.deviation.deviations(state.instance_ids))

        record = None
        if self._manual:
            self._observe(state, now)
            record = self._record(state, scenario.kind, "manual", self._manual.popleft(), 0.0, True, "")
        elif self.config.mode is Mode.MANUAL:
            self._observe(state, now)
        elif self.config.stabilizer.enabled or self.deviation.fallback.active:
            record = self._decide_stabilized(decided, now)
        elif scenario.kind is not ScenarioKind.NONE:
            record = self._decide(decided)
        if record is not None:
            if record.predicted is not None and (record.origin == "manual" or self.config.mode is Mode.AUTO):
                self._execute(state, record)
            self.decisions.append(record)
            self.metrics.record(record)
            self.changed()
        self.deviation.predict(record)
        self.transitions.hold(transition(self._wall(), state, scenario.kind, self.config, record))
        if self.recorder is not None:
            explored = getattr(self._policy, "explorations", 0) != explorations
            self.recorder.period(state, period_record(record, scenario.kind, explored, wall), self.nfs)
        if self.config.stabilizer.enabled:
            save_stabilizer(stabilizer_path(self.config.transition_log), self.stabilizer)
        return record

    def _sync_stabilizer(self) -> bool:
        """Bring the stabilizer to the config's settings (changed at run time between periods, so never while it
        decides in another thread); whether it is on."""
        stabilizer, config = self.stabilizer, self.config
        if stabilizer.config != config.stabilizer or stabilizer.thresholds != config.thresholds:
            self.stabilizer = stabilizer.reconfigured(config.stabilizer, config.thresholds)
        return config.stabilizer.enabled

    def _observe(self, state: ClusterState, now: float) -> None:
        """A period without a policy decision: the stabilizer's estimates and windows go on."""
        if self._sync_stabilizer():
            self.stabilizer.observe(state, now, self.config.period_s)

    def _measure_deviation(self, state: ClusterState) -> None:
        """Compare the twin's prediction with `state`; say when the deviation fallback starts or ends."""
        if not self.deviation.measure(state, self.config.period_s):
            return
        settings = self.config.deviation
        if self.deviation.fallback.active:
            LOG.warning("twin deviation %.3f stayed above %g for %d periods: falling back to %s behind the "
                        "stabilizer", self.deviation.estimator.cluster, settings.bound, settings.hold_periods,
                        settings.fallback_policy)
        else:
            LOG.warning("twin deviation back under %g: policy %s again", settings.release * settings.bound,
                        self.config.policy)
            self._fallback = None

    def _deciding(self) -> tuple[Stabilizer, Policy, str]:
        """(stabilizer, policy, its name) of this period: the configured ones, or the deviation fallback's
        baseline behind the config's stabilizer when that is on, else behind a `StabilizerConfig()` of its own."""
        on = self._sync_stabilizer()
        if not self.deviation.fallback.active:
            return self.stabilizer, self._policy, self.config.policy
        name = self.config.deviation.fallback_policy
        if self._fallback is None:
            own = None if on else Stabilizer(StabilizerConfig(), self.config.thresholds, self.params)
            self._fallback = (self._offload(self._policy_factory, name, self.config.seed), own)
        policy, own = self._fallback
        return (self.stabilizer if own is None else own), policy, name

    def _decide_stabilized(self, state: ClusterState, now: float) -> DecisionRecord | None:
        """The policy's decision through the stabilizer; None when it holds back (or nothing is needed)."""
        stabilizer, policy, name = self._deciding()
        fallback = self.deviation.fallback.active
        started = time.perf_counter()
        try:
            result = self._offload(stabilizer.decide, state, policy, now, self.config.period_s)
        except Exception as error:  # a policy bug must not stop the controller
            LOG.exception("policy %s failed", name)
            return self._record(state, stabilizer.need, "policy", Action(),
                                (time.perf_counter() - started) * 1000.0, False, f"policy error: {error}",
                                policy=name, fallback=fallback)
        decision_ms = (time.perf_counter() - started) * 1000.0
        if result.scenario is ScenarioKind.NONE:
            return None
        decision = result.decision
        action = decision.action.to_action(state) if decision.feasible else Action()
        settings = self.config.deviation
        why = fallback and (f"twin deviation fallback: {settings.fallback_policy} behind the stabilizer while the "
                            f"deviation ({self.deviation.estimator.cluster:.3f}) is not back under "
                            f"{settings.release * settings.bound:g}")
        reason = "; ".join(filter(None, (why, decision.reason, result.note and f"stabilizer: {result.note}")))
        return self._record(stabilizer.estimated, result.scenario, "policy", action, decision_ms,
                            decision.feasible, reason, policy=name, fallback=fallback, control=decision.control)

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
                            decision.reason, control=decision.control)

    def _record(self, state: ClusterState, kind: ScenarioKind, origin: str, action: Action, decision_ms: float,
                feasible: bool, reason: str, *, policy: str | None = None, fallback: bool = False,
                control: ControlDraw | None = None) -> DecisionRecord:
        predicted, error = None, ""
        if feasible:
            try:
                predicted = cost_view(apply(state, action, self.params, self.config.thresholds)[1])
            except InvalidAction as invalid:
                error = f"invalid action: {invalid}"
        record = DecisionRecord(self._next_decision_id, self._wall(), kind.value, policy or self.config.policy,
                                origin, self.config.mode.value, feasible, reason, action, predicted, decision_ms,
                                error=error, fallback=fallback, twin_deviation=self.deviation.estimator.cluster,
                                control=control)
        self._next_decision_id += 1
        return record

    def _execute(self, state: ClusterState, record: DecisionRecord) -> None:
        switch = self.steering.switch
        if switch is None:
            record.error = "switch not connected: nothing executed"
            return
        started = time.perf_counter()
        self.steering.exclude_from_new_flows(record.action.stop, self.config.barrier_timeout_s)
        self.executor.execute(switch, record)
        record.execution_ms = (time.perf_counter() - started) * 1000.0
        record.measured = measured_cost(state, record, self.params, self.config.thresholds)

    # --- manual actions ---------------------------------------------------------------------
    @_changes
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
