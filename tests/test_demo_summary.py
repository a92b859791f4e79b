"""`dm-demo`'s summary figures from the controller's decision records (the live run is in test_live_loop.py)."""
from controller_app.demo import summarise
from twin.flow import FlowKey

FLOW_A, FLOW_B, FLOW_C = (FlowKey.of("10.0.0.1", "10.0.0.2", port, 80, 6) for port in (1000, 1001, 1002))


def decision(time: float, started=(), stopped=(), moved=()) -> dict:
    return {"time": time, "executed": True, "scenario": "lb", "origin": "policy", "decision_ms": 5.0,
            "started": list(started), "stopped": list(stopped),
            "migrations": [{"flow": flow, "outcome": "done", "duration_ms": 30.0} for flow in moved]}


def outcome(key: FlowKey, bins: list) -> dict:
    return {"key": list(key), "sent": 0, "received": 0, "lost": 0, "reordered": 0, "reordered_at_setup": 0,
            "delay_bins": bins}


def test_the_summary_counts_done_moves_and_splits_the_others_by_outcome():
    moves = [("f1", "done", 40.0), ("f2", "done", 60.0), ("f3", "skipped", 0.0), ("f4", "rolled_back", 90.0)]
    decisions = [{"time": 1000.0, "executed": True, "scenario": "scale_out", "origin": "policy", "decision_ms": 12.0,
                  "started": ["nf3"], "stopped": [],
                  "migrations": [{"flow": f, "outcome": o, "duration_ms": ms} for f, o, ms in moves]}]
    outcomes = {"flows": {}, "sent": 10, "received": 10, "lost": 0, "reordered": 1, "reordered_at_setup": 1}
    summary = summarise(decisions, outcomes, {"nf1": {"received": 10, "dropped": 0}}, sink_socket_dropped=0)
    assert summary["migrations"] == 2
    assert summary["migrations_not_done"] == {"skipped": 1, "rolled_back": 1, "rollback_failed": 0}
    assert summary["migration_ms_p50"] == 50.0 and summary["instances_started"] == 1
    assert summary["packets_reordered_after_setup"] == 0


def test_the_loop_figures_judge_every_flows_delay_against_its_sla_and_count_reversals_and_repeat_moves():
    decisions = [decision(0.0, started=["nf3"], moved=[FLOW_A.id]), decision(5.0, moved=[FLOW_A.id, FLOW_B.id]),
                 decision(12.0, stopped=["nf3"]), decision(20.0, started=["nf3"]), decision(40.0, moved=[FLOW_B.id])]
    flows = {"0": outcome(FLOW_A, [[100.0, 10, 5.0], [101.0, 30, 25.0]]),  # 1 s over its 20 ms
             "1": outcome(FLOW_B, [[100.0, 10, 90.0]]),  # within its 100 ms: moved but fine
             "2": outcome(FLOW_C, [[102.0, 50, 500.0]])}  # the controller never listed it: not judged
    outcomes = {"flows": flows, "sent": 0, "received": 0, "lost": 0, "reordered": 0, "reordered_at_setup": 0,
                "delay_bin_s": 1.0}
    summary = summarise(decisions, outcomes, {}, 0, sla_ms={FLOW_A.id: 20.0, FLOW_B.id: 100.0}, instance_s=150.0)
    assert summary["sla_violation_flow_s"] == 1.0 and summary["flows_without_sla"] == 1
    assert summary["packet_delay_ms_mean"] == (10 * 5.0 + 30 * 25.0 + 10 * 90.0 + 50 * 500.0) / 100
    assert summary["flows_migrated_twice"] == 1  # A within 5 s; B's moves are 35 s apart
    assert summary["reversals"] == 2  # out at 0, in at 12, out at 20
    assert summary["instance_s"] == 150.0
    assert summarise(decisions, outcomes, {}, 0)["sla_violation_flow_s"] is None  # no SLAs read: not judged
