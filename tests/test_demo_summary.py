"""`dm-demo`'s summary figures from the controller's decision records (the live run is in test_live_loop.py)."""
from controller_app.demo import summarise


def test_the_summary_counts_done_moves_and_splits_the_others_by_outcome():
    moves = [("f1", "done", 40.0), ("f2", "done", 60.0), ("f3", "skipped", 0.0), ("f4", "rolled_back", 90.0)]
    decisions = [{"executed": True, "scenario": "scale_out", "origin": "policy", "decision_ms": 12.0,
                  "started": ["nf3"], "stopped": [],
                  "migrations": [{"flow": f, "outcome": o, "duration_ms": ms} for f, o, ms in moves]}]
    outcomes = {"flows": {}, "sent": 10, "received": 10, "lost": 0, "reordered": 1, "reordered_at_setup": 1}
    summary = summarise(decisions, outcomes, {"nf1": {"received": 10, "dropped": 0}}, sink_socket_dropped=0)
    assert summary["migrations"] == 2
    assert summary["migrations_not_done"] == {"skipped": 1, "rolled_back": 1, "rollback_failed": 0}
    assert summary["migration_ms_p50"] == 50.0 and summary["instances_started"] == 1
    assert summary["packets_reordered_after_setup"] == 0
