"""`dm-bench --experiment closed-loop` (issue 17): records, table, plots and clean errors."""
import json
import os
from unittest import mock

import pytest

from gnn_policy.bench import cli, goal
from gnn_policy.stabilizer import StabilizerConfig

METRICS = {"total_cost", "invalid_actions", "sla_violation_flow_s", "packets_dropped", "instance_s", "migrations",
           "flows_migrated_twice", "reversals", "decision_ms_p50"}
SMALL = ["--experiment", "closed-loop", "--episodes", "2", "--periods", "15", "--instances", "3", "--standby", "2"]


def run_cli(argv):
    with mock.patch.dict(os.environ):
        return cli.main([str(arg) for arg in argv])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("loop")
    with mock.patch("sys.stdout") as stdout:
        status = run_cli([*SMALL, "--policies", "ofm,random", "--json", out / "loop.json", "--plots", out])
    printed = "".join(call.args[0] for call in stdout.write.call_args_list)
    return status, json.loads((out / "loop.json").read_text()), out, printed


def test_one_record_per_policy_setting_and_episode(small_run):
    status, report, _, _ = small_run
    assert status == 0
    records = report["records"]
    keys = {(r["policy"], r["stabilizer"] is None, r["episode"]) for r in records}
    assert keys == {(p, off, e) for p in ("ofm", "random") for off in (True, False) for e in (0, 1)}
    for record in records:
        assert record["experiment"] == "closed-loop" and record["periods"] == 15
        assert METRICS <= set(record) and record["invalid_actions"] == 0
    assert all(r["stabilizer"] in (None, StabilizerConfig().to_dict()) for r in records)
    meta = report["meta"]
    assert (meta["speed"], meta["episodes"], meta["periods"], meta["stabilizer"]) == (1.0, 2, 15, "both")


def test_every_policy_drives_the_same_episodes(small_run):
    records = small_run[1]["records"]
    starts = {(r["policy"], r["stabilizer"] is None): [x["window_start_s"] for x in records
                                                       if (x["policy"], x["stabilizer"] is None)
                                                       == (r["policy"], r["stabilizer"] is None)]
              for r in records}
    assert len({tuple(v) for v in starts.values()}) == 1


def test_table_and_one_png_per_policy(small_run):
    _, _, out, printed = small_run
    for column in ("policy", "stabilizer", *sorted(METRICS)):
        assert column in printed
    assert "±" in printed and "8 records" in printed
    assert sorted(p.name for p in out.glob("*.png")) == ["closed_loop_ofm.png", "closed_loop_random.png"]


def test_stabilizer_off_is_the_plain_loop(tmp_path):
    with mock.patch("sys.stdout"):
        assert run_cli([*SMALL, "--policies", "size-greedy", "--stabilizer", "off", "--json", tmp_path / "o.json"]) == 0
    records = json.loads((tmp_path / "o.json").read_text())["records"]
    assert len(records) == 2 and all(r["stabilizer"] is None for r in records)


@pytest.mark.parametrize("argv,fragment", [
    (["--experiment", "scale-in", "--speed", "2"], "--speed applies to --experiment closed-loop only"),
    (["--experiment", "scale-in", "--stabilizer-config", "{}"],
     "--stabilizer-config applies to --experiment closed-loop only"),
    ([*SMALL, "--stabilizer-config", "{tolerance: 1"], "--stabilizer-config is not JSON"),
    ([*SMALL, "--stabilizer-config", "[1]"], "must be a JSON object"),
    ([*SMALL, "--stabilizer-config", '{"windows": 3}'], "unknown stabilizer setting 'windows'"),
    ([*SMALL, "--stabilizer-config", '{"tolerance": -0.1}'], "tolerance must be a finite number >= 0"),
    ([*SMALL, "--stabilizer-config", '{"max_migrations": 0}'], "max_migrations must be an integer >= 1"),
    ([*SMALL, "--stabilizer", "off", "--stabilizer-config", "{}"], "needs --stabilizer on or both"),
    ([*SMALL, "--policies", "ofm", "--periods", "400"], "shorter than an episode"),
    ([*SMALL, "--policies", "nope"], "unknown policy 'nope'"),
    ([*SMALL, "--standby", "-1"], "must be at least 0"),
    ([*SMALL, "--speed", "0"], "must be a positive number"),
    ([*SMALL, "--stabilizer", "maybe"], "invalid choice"),
    (["--experiment", "scale-in", "--capacity", "250"], "--capacity applies to --experiment closed-loop only"),
    ([*SMALL, "--policies", "ofm", "--start", "290"], "window start 290 s"),
    ([*SMALL, "--start", "-1"], "must be a number >= 0"),
    ([*SMALL, "--capacity", "0"], "must be a positive number"),
    ([*SMALL, "--buffer", "x"], "not a number"),
    ([*SMALL, "--processing-ms", "-5"], "must be a number >= 0"),
])
def test_bad_options_give_one_line_and_status_2(capsys, argv, fragment):
    try:
        status = run_cli(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2 and fragment in err and "Traceback" not in err


def test_bad_stabilizer_config_fails_before_any_work(capsys, tmp_path):
    with mock.patch("gnn_policy.bench.loop.build") as build:
        status = run_cli([*SMALL, "--stabilizer-config", '{"v": "ten"}', "--json", tmp_path / "x.json"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "v must be a finite number" in err
    assert not build.called and not (tmp_path / "x.json").exists()


def test_stabilizer_config_goes_into_the_records(tmp_path):
    changes = {"scale_in_window_s": 20, "max_migrations": None, "estimator": "mean"}
    with mock.patch("sys.stdout"):
        assert run_cli([*SMALL, "--policies", "ofm", "--stabilizer-config", json.dumps(changes),
                        "--json", tmp_path / "c.json"]) == 0
    records = json.loads((tmp_path / "c.json").read_text())["records"]
    on = [r["stabilizer"] for r in records if r["stabilizer"] is not None]
    assert len(on) == 2 and all(s == {**StabilizerConfig().to_dict(), **changes} for s in on)
    assert all(r["invalid_reasons"] == {} for r in records)


def test_the_testbeds_set_up_fixes_the_window_and_the_instances(tmp_path):
    """`--start`, `--capacity`, `--buffer` and `--processing-ms` as dm-demo's: the window opens at the same
    trace second in every episode and the instances are the testbed's, whatever the seed."""
    from gnn_policy.bench import loop
    from trace_replay.flows import read_flows
    from trace_replay.generate import sample_path

    setup = loop.LoopSetup(episodes=2, periods=20, instances=2, standby=2, speed=0.5, seed=3, start=120.0,
                           capacity=250.0, buffer=800.0, processing_ms=5.0)
    table = read_flows(sample_path())
    batch = loop.build(sample_path(), table, setup)
    first = float(table.records["first_ts"].min())
    assert batch.start_s.tolist() == pytest.approx([first + 120.0] * 2)
    assert (batch.capacity == 250.0).all() and (batch.buffer == 800.0).all()
    assert batch.initially_active.sum(-1).tolist() == [2, 2] and batch.capacity.shape[1] == 4
    assert setup.params.processing_ms == 5.0 and loop.LoopSetup().params.processing_ms == 50.0
    with mock.patch("sys.stdout"):
        assert run_cli(["--experiment", "closed-loop", "--episodes", "1", "--periods", "10", "--instances", "2",
                        "--standby", "2", "--speed", "0.5", "--start", "120", "--capacity", "250", "--buffer", "800",
                        "--processing-ms", "5", "--policies", "ofm", "--json", tmp_path / "t.json"]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    meta = report["meta"]
    assert (meta["start"], meta["capacity"], meta["buffer"], meta["processing_ms"]) == (120.0, 250.0, 800.0, 5.0)
    assert [r["window_start_s"] for r in report["records"]] == pytest.approx([first + 120.0] * 2)


def loop_record(policy, on, migrations, sla=10.0, drops=100.0, cost=1000.0):
    return {"experiment": "closed-loop", "policy": policy, "stabilizer": {"v": 1.0} if on else None,
            "migrations": migrations, "sla_violation_flow_s": sla, "packets_dropped": drops, "total_cost": cost,
            "instance_s": 100.0}


def test_goal_verdicts_follow_the_issue_tolerances():
    records = [loop_record("a", False, 100), loop_record("a", True, 20, sla=10.5, drops=109.0, cost=1050.0),
               loop_record("b", False, 100, drops=0.0), loop_record("b", True, 21, drops=10.0, cost=1051.0),
               loop_record("c", False, 100), loop_record("c", True, 10, sla=10.6), loop_record("d", False, 5)]
    found = {v.policy: v for v in goal.verdicts(records)}
    assert set(found) == {"a", "b", "c"}  # d has no run with the stabilizer
    assert found["a"].all_met and found["a"].migration_ratio == 5.0  # 5 %, 10 packets: at the limit
    assert {m for m, ok in found["b"].met.items() if not ok} == {"migrations", "total_cost"}
    assert {m for m, ok in found["c"].met.items() if not ok} == {"sla_violation_flow_s"}


def test_goal_cli_reads_a_report(tmp_path, capsys):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"records": [loop_record("ofm", False, 50), loop_record("ofm", True, 5)]}))
    assert goal.main([str(report)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("ofm") and "( 10.0x)" in last and last.endswith("met")
    (tmp_path / "bad.json").write_text("{")
    assert goal.main([str(tmp_path / "bad.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
