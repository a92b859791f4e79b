"""twin.loop_metrics: the closed loop's reversals, re-migrated flows, instance-seconds and SLA flow-seconds,
on hand-made sequences and as properties."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from twin.loop_metrics import (
    RemigrationTracker,
    ReversalTracker,
    flows_migrated_twice,
    instance_seconds,
    reversals,
    sla_violation_flow_seconds,
)


def test_out_in_out_within_the_window_counts_two():
    assert reversals([(0.0, 1, 0), (10.0, 0, 1), (35.0, 1, 0)]) == 2


def test_a_reversal_needs_the_opposite_action_within_30_s():
    assert reversals([(0.0, 1, 0), (31.0, 0, 1)]) == 0  # in after out, too late
    assert reversals([(0.0, 1, 0), (30.0, 0, 1)]) == 1  # the window is inclusive
    assert reversals([(0.0, 1, 0), (5.0, 2, 0), (9.0, 1, 0)]) == 0  # out, out, out: no undoing
    assert reversals([(0.0, 0, 1), (3.0, 0, 0), (4.0, 1, 0)]) == 1  # a quiet period between changes nothing
    assert reversals([]) == 0


def test_a_period_that_both_starts_and_stops_counts_once():
    assert reversals([(0.0, 1, 0), (1.0, 1, 0), (2.0, 1, 1)]) == 1
    assert reversals([(0.0, 1, 1)]) == 0  # a swap on its own undoes nothing earlier


def test_periods_may_come_in_any_order_but_the_tracker_wants_time_order():
    assert reversals([(35.0, 1, 0), (0.0, 1, 0), (10.0, 0, 1)]) == 2
    tracker = ReversalTracker()
    tracker.add(5.0, 1, 0)
    with pytest.raises(ValueError, match="time order"):
        tracker.add(4.0, 0, 1)
    with pytest.raises(ValueError, match="negative"):
        tracker.add(6.0, -1, 0)


def test_a_period_of_0_1_s_summed_300_times_still_reads_as_30_s():
    period = 0.1
    assert reversals([(0.0, 1, 0), (sum([period] * 300), 0, 1)]) == 1


@given(st.lists(st.floats(0.0, 30.0), min_size=1, max_size=30))
def test_alternating_scale_actions_within_the_window_all_reverse_but_the_first(gaps):
    times = np.cumsum([0.0, *gaps])
    periods = [(t, k % 2, 1 - k % 2) for k, t in enumerate(times)]
    assert reversals(periods) == len(periods) - 1


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=30))
def test_scale_actions_more_than_30_s_apart_never_reverse(actions):
    assert reversals([(31.0 * k, started, stopped) for k, (started, stopped) in enumerate(actions)]) == 0


def test_flows_not_moves_count_and_11_s_apart_does_not():
    moves = [(0.0, "f1"), (4.0, "f1"), (9.0, "f1"),  # f1: moved three times within 10 s: one flow
             (0.0, "f2"), (11.0, "f2"),  # f2: 11 s apart, no
             (20.0, "f3"), (30.0, "f3"),  # f3: 10 s apart, inclusive
             (5.0, "f4")]
    assert flows_migrated_twice(moves) == 2
    assert flows_migrated_twice([(1.0, 7), (1.0, 7)]) == 1  # twice in one period; any hashable id


def test_the_remigration_tracker_forgets_old_moves_but_still_counts_each_flow_once():
    tracker = RemigrationTracker()
    counted = [tracker.add(float(t), f"f{t}") for t in range(5000)]  # 5000 flows, each moved once
    assert not any(counted) and len(tracker._last_move) < 2048
    assert tracker.add(5000.0, "f4999") and not tracker.add(5001.0, "f4999")
    assert not tracker.add(6000.0, "f0")


def test_instance_seconds_hold_each_count_until_the_next_sample():
    assert instance_seconds([(0.0, 2), (10.0, 3), (15.0, 2)], end_s=20.0) == 2 * 10 + 3 * 5 + 2 * 5
    assert instance_seconds([(10.0, 3), (0.0, 2)], end_s=10.0) == 20.0
    assert instance_seconds([], end_s=5.0) == 0.0
    with pytest.raises(ValueError, match="before the last sample"):
        instance_seconds([(10.0, 1)], end_s=5.0)


def test_sla_flow_seconds_count_periods_over_the_flows_sla_and_skip_periods_without_packets():
    delay = np.array([[5.0, 50.0, math.nan], [80.0, 20.0, 120.0]])  # flow x period
    sla = np.array([[40.0], [100.0]])
    assert sla_violation_flow_seconds(delay, sla) == 1.0 + 1.0
    assert sla_violation_flow_seconds(delay, sla, period_s=0.1) == pytest.approx(0.2)
    assert sla_violation_flow_seconds([], []) == 0.0


def test_reversals_over_the_twin_loops_period_sequences():
    assert reversals([(0.0, 1, 0), (5.0, 0, 1), (10.0, 1, 0)]) == 2  # out-in-out
    assert reversals([(0.0, 1, 0), (1.0, 0, 0), (31.0, 0, 1)]) == 0  # beyond 30 s
    assert reversals([(0.0, 0, 1), (2.0, 0, 2), (20.0, 1, 0), (25.0, 1, 0)]) == 2  # both outs follow the ins
    assert reversals([(0.0, 1, 0), (3.0, 2, 0), (4.0, 0, 0)]) == 0  # the same direction never reverses
    assert reversals([(0.0, 1, 0), (10.0, 0, 1)], window_s=5.0) == 0


def test_flows_migrated_twice_counts_flows_not_moves_over_periods():
    periods = [(0.0, ["a", "b"]), (5.0, ["a"]), (7.0, ["a"]), (20.0, ["b"]), (25.0, ["b", "c"]), (40.0, ["c"])]
    moves = [(t, flow) for t, flows in periods for flow in flows]
    assert flows_migrated_twice(moves) == 2  # a (0 → 5 → 7) once, b (20 → 25); c 15 s apart
    assert flows_migrated_twice(moves, window_s=1.0) == 0
