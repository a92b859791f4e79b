"""The controller's Prometheus metrics (GET /metrics, docs/controller.md), in the text format.

Counters and histograms are fed by each decision record as the controller keeps it (`record`, called
once per decision); the per-instance gauges and the steered flows are read from the controller's own
REST views when scraped, so there is no second state model. Reversals and re-migrated flows follow
twin.loop_metrics, the definitions the twin's closed-loop benchmark uses, on the controller's clock.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from controller_app.views import instances_view
from twin.loop_metrics import RemigrationTracker, ReversalTracker

if TYPE_CHECKING:
    from controller_app.core import Controller
    from controller_app.decisions import DecisionRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format that `generate_latest` writes."""
SCENARIOS = ("scale_out", "scale_in", "lb")
OUTCOMES = ("done", "skipped", "rolled_back", "rollback_failed")
DECISION_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MIGRATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INSTANCE_GAUGES = (  # (metric name, help, the instances_view field)
    ("deepmigration_instance_active", "1 when the NF instance is active (serves flows), else 0", "active"),
    ("deepmigration_instance_alive", "1 when the NF instance answered its last report, else 0", "alive"),
    ("deepmigration_instance_utilisation_ratio", "Load over capacity in the last period", "utilisation"),
    ("deepmigration_instance_load_packets_per_second", "Packets/s steered to the instance", "load_pps"),
    ("deepmigration_instance_queue_packets", "Packets queued in the instance at its last report",
     "queue_packets"),
    ("deepmigration_instance_capacity_packets_per_second", "The instance's capacity", "capacity_pps"),
    ("deepmigration_instance_flows", "Flows steered to the instance", "flows"),
)
DEVIATION_GAUGES = (  # (metric name, help, the instances_view field): only instances with an estimate
    ("deepmigration_instance_twin_deviation_ratio",
     "The twin's deviation: running mean of predicted minus measured utilisation (paper 003 eq. 14)",
     "twin_deviation"),
    ("deepmigration_instance_twin_deviation_abs_ratio",
     "Running mean of |predicted minus measured| utilisation of the twin", "twin_deviation_abs"),
)


class ControllerMetrics:
    """The metrics of one controller, in a registry of their own (not prometheus_client's global one)."""

    def __init__(self, controller: Controller, clock: Callable[[], float]):
        """`clock` is the controller's (monotonic, seconds): the reversal and re-migration windows run on it."""
        self.registry = CollectorRegistry()
        self._clock = clock
        self._reversals = ReversalTracker()
        self._remigrations = RemigrationTracker()
        self.decisions = Counter("deepmigration_decisions", "Decisions by scenario and whether they were executed",
                                 ["scenario", "executed"], registry=self.registry)
        self.migrations = Counter("deepmigration_migrations", "Flow moves by outcome (done, or why not)",
                                  ["outcome"], registry=self.registry)
        self.started = Counter("deepmigration_instances_started", "NF instances started (scale-out)",
                               registry=self.registry)
        self.stopped = Counter("deepmigration_instances_stopped", "NF instances stopped (scale-in)",
                               registry=self.registry)
        self.reversals = Counter("deepmigration_reversals", "Executed scale actions undoing one of the last 30 s",
                                 registry=self.registry)
        self.remigrated = Counter("deepmigration_flows_migrated_twice", "Flows moved again within 10 s of a move",
                                  registry=self.registry)
        self.decision_seconds = Histogram("deepmigration_decision_duration_seconds", "Time the policy took to decide",
                                          buckets=DECISION_BUCKETS_S, registry=self.registry)
        self.migration_seconds = Histogram("deepmigration_migration_duration_seconds",
                                           "Each done move's duration, hold to release", buckets=MIGRATION_BUCKETS_S,
                                           registry=self.registry)
        for scenario in SCENARIOS:  # every series exists from the start, at 0
            for executed in ("true", "false"):
                self.decisions.labels(scenario, executed)
        for outcome in OUTCOMES:
            self.migrations.labels(outcome)
        self.registry.register(_LiveGauges(controller))

    def record(self, record: DecisionRecord) -> None:
        """Count one decision the controller recorded (after it was executed, if it was)."""
        now = self._clock()
        self.decisions.labels(record.scenario, str(record.executed).lower()).inc()
        if record.origin == "policy":
            self.decision_seconds.observe(record.decision_ms / 1000.0)
        for run in record.migrations:
            self.migrations.labels(run.outcome.value).inc()
            if run.outcome.value == "done":
                self.migration_seconds.observe(run.duration_ms / 1000.0)
                self.remigrated.inc(int(self._remigrations.add(now, run.flow)))
        self.started.inc(len(record.started))
        self.stopped.inc(len(record.stopped))
        if record.started or record.stopped:
            self.reversals.inc(int(self._reversals.add(now, len(record.started), len(record.stopped))))

    def text(self) -> bytes:
        """The exposition, as GET /metrics serves it (CONTENT_TYPE)."""
        return generate_latest(self.registry)


class _LiveGauges:
    """Per-instance gauges and the steered flows, read from the controller's views at each scrape."""

    def __init__(self, controller: Controller):
        self._controller = controller

    def collect(self) -> Iterator[GaugeMetricFamily]:
        instances = instances_view(self._controller)
        for name, documentation, field in INSTANCE_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["instance"])
            for instance in instances:
                family.add_metric([instance["id"]], float(instance[field]))
            yield family
        for name, documentation, field in DEVIATION_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["instance"])
            for instance in instances:
                if instance[field] is not None:
                    family.add_metric([instance["id"]], float(instance[field]))
            yield family
        yield GaugeMetricFamily("deepmigration_twin_deviation_fallback",
                                "1 while the controller falls back to the stabilized baseline (twin deviation)",
                                value=float(self._controller.deviation.fallback.active))
        yield GaugeMetricFamily("deepmigration_flows_steered", "Flows the controller steers now",
                                value=len(self._controller.flows))
