"""The controller's Prometheus metrics (controller_app.metrics) on the switch-less rig, read back with
prometheus_client's own parser (the REST route is exercised against ryu-manager in test_rest_api.py)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from controller_app.views import instances_view
from tests.controller_rig import overload_nf1, run_period


def samples(controller) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of the controller's exposition."""
    text = controller.metrics.text().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_scale_out_shows_in_the_counters_histograms_and_instance_gauges(rig):
    c = rig.controller
    flows = overload_nf1(rig)
    decided_before = len(c.decisions)
    record = run_period(rig, {t: 12 for t in flows})  # nf1 at 72 % > Th_high 60 %: scale-out
    assert record.executed and record.started and record.migrations
    got = samples(c)
    assert got[("deepmigration_decisions_total", (("executed", "true"), ("scenario", "scale_out")))] == 1.0
    assert got[("deepmigration_decisions_total", (("executed", "true"), ("scenario", "scale_in")))] == 0.0
    assert got[("deepmigration_migrations_total", (("outcome", "done"),))] == len(record.migrations)
    assert got[("deepmigration_migrations_total", (("outcome", "rolled_back"),))] == 0.0
    assert got[("deepmigration_instances_started_total", ())] == len(record.started)
    assert got[("deepmigration_instances_stopped_total", ())] == 0.0
    assert got[("deepmigration_reversals_total", ())] == got[("deepmigration_flows_migrated_twice_total", ())] == 0
    assert got[("deepmigration_migration_duration_seconds_count", ())] == len(record.migrations)
    assert got[("deepmigration_migration_duration_seconds_sum", ())] == sum(
        m.duration_ms for m in record.migrations) / 1000.0
    assert got[("deepmigration_decision_duration_seconds_count", ())] == decided_before + 1
    assert got[("deepmigration_flows_steered", ())] == len(flows)
    for instance in instances_view(c):
        labels = (("instance", instance["id"]),)
        assert got[("deepmigration_instance_utilisation_ratio", labels)] == instance["utilisation"]
        assert got[("deepmigration_instance_load_packets_per_second", labels)] == instance["load_pps"]
        assert got[("deepmigration_instance_queue_packets", labels)] == instance["queue_packets"]
        assert got[("deepmigration_instance_active", labels)] == float(instance["active"])
        assert got[("deepmigration_instance_flows", labels)] == instance["flows"]
    assert got[("deepmigration_instance_active", (("instance", record.started[0]),))] == 1.0


def test_stopping_the_started_instance_soon_after_is_a_reversal_and_its_flows_count_once(rig):
    c = rig.controller
    flows = overload_nf1(rig)
    record = run_period(rig, {t: 12 for t in flows})
    started = record.started[0]
    back = [{"flow": m.flow, "src": m.dst, "dst": m.src} for m in record.migrations if m.dst == started]
    c.reconfigure({"mode": "manual"})
    rig.clock.now += 5.0  # well within both windows (10 s for moves, 30 s for scale actions)
    run_period(rig, {t: 1 for t in flows})  # the state after the scale-out
    c.submit({"migrations": back, "stop": [started]})
    undo = run_period(rig, {t: 1 for t in flows})
    assert undo.executed and undo.stopped == [started]
    got = samples(c)
    assert got[("deepmigration_reversals_total", ())] == 1.0
    assert got[("deepmigration_flows_migrated_twice_total", ())] == len(back) > 0
    assert got[("deepmigration_instance_active", (("instance", started),))] == 0.0
