"""`dm-bench` (issue 3): command-line errors, records, figures and the --quick run that CI relies on."""
import itertools
import json
import os
from unittest import mock

import pytest

from gnn_policy import registry
from gnn_policy.base import Policy
from gnn_policy.bench import cli, experiments
from gnn_policy.registry import make_policy
from tests.pcap_builder import write_pcap
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.scenario import ScenarioKind

REQUIRED_FIELDS = {
    "experiment", "policy", "seed", "n_instances", "setting", "threshold", "scenario", "cost", "var_ratio",
    "decision_ms", "valid", "feasible", "reason", "error", "optimal_gap", "migration_cost", "resource_cost",
    "threshold_penalty", "sla_violations", "migration_time_ms", "variance_before", "variance_after",
}
HANDLERS = {"scale-out": {"ofm", "size-greedy", "optimal"}, "scale-in": {"ofm", "random", "optimal"},
            "lb": {"ofm", "pairwise", "optimal"},
            "time": {"ofm", "size-greedy", "pairwise", "random", "optimal"}}
TOLERANCE = 1e-6


def run_cli(argv):
    """`dm-bench argv` in this process, leaving the thread variables it sets behind it."""
    with mock.patch.dict(os.environ):
        return cli.main([str(arg) for arg in argv])


@pytest.fixture(scope="module")
def table():
    return read_flows(sample_path())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The CI run: every experiment and the default policies under --quick, once for the module."""
    out = tmp_path_factory.mktemp("bench")
    with mock.patch("sys.stdout") as stdout:
        status = run_cli(["--quick", "--json", out / "quick.json", "--plots", out / "plots"])
    printed = "".join(call.args[0] for call in stdout.write.call_args_list)
    return status, json.loads((out / "quick.json").read_text()), out / "plots", printed


# --- command-line errors: one line on stderr, status 2 -----------------------------------------

def assert_clean_error(capsys, status, *fragments):
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_unknown_policy_is_named(capsys):
    status = run_cli(["--policies", "ofm,magic", "--quick"])
    assert_clean_error(capsys, status, "unknown policy 'magic'", "optimal")


def test_unknown_experiment_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--experiment", "fig9"])
    assert_clean_error(capsys, exit_info.value.code, "invalid choice: 'fig9'")


@pytest.mark.parametrize("argv, fragment", [(["--seeds", "0"], "must be at least 1"),
                                            (["--threads", "two"], "not an integer"),
                                            (["--optimal-time-limit", "-1"], "must be a positive number")])
def test_bad_numbers_are_rejected_by_the_parser(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert_clean_error(capsys, exit_info.value.code, fragment)


def test_unreadable_trace_is_named(capsys, tmp_path):
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a pcap file at all")
    status = run_cli(["--trace", garbage, "--policies", "ofm", "--experiment", "lb", "--quick"])
    assert_clean_error(capsys, status, "cannot read trace", "garbage.pcap")


def test_missing_trace_is_named(capsys, tmp_path):
    status = run_cli(["--trace", tmp_path / "absent.pcap", "--policies", "ofm", "--quick"])
    assert_clean_error(capsys, status, "cannot read trace", "absent.pcap")


def test_trace_without_flows_is_named(capsys, tmp_path):
    empty = write_pcap(tmp_path / "empty.pcap", [])
    status = run_cli(["--trace", empty, "--policies", "ofm", "--experiment", "lb", "--quick"])
    assert_clean_error(capsys, status, "cannot build the experiments", "holds no flows")


def test_unwritable_json_fails_before_the_run(capsys, tmp_path):
    status = run_cli(["--json", tmp_path / "no" / "such" / "dir.json", "--policies", "ofm", "--quick"])
    assert_clean_error(capsys, status, "--json", "does not exist")


def test_policy_that_cannot_be_built_is_named(capsys, monkeypatch):
    def make(name, **options):
        if name == "pairwise":
            raise ImportError("no module named 'weights'")
        return make_policy(name, **options)

    monkeypatch.setattr(registry, "make_policy", make)
    status = run_cli(["--policies", "ofm,pairwise", "--quick"])
    assert_clean_error(capsys, status, "policy 'pairwise' cannot be built", "ImportError", "weights")


# --- measuring policies ------------------------------------------------------------------------

class Exploding(Policy):
    name = "exploding"
    handles = frozenset({ScenarioKind.LOAD_BALANCE})

    def _decide(self, problem):
        raise RuntimeError("solver crashed")


def test_policy_that_raises_is_recorded_invalid_and_the_run_goes_on(table):
    prototypes = {"exploding": {0: Exploding()}, "pairwise": {0: make_policy("pairwise")}}
    records = experiments.run(table, ["lb"], prototypes, [0], quick=True,
                              timing=experiments.Timing(repeats=1))
    broken = [r for r in records if r["policy"] == "exploding"]
    working = [r for r in records if r["policy"] == "pairwise"]
    assert len(broken) == len(working) == len(experiments.QUICK_GRIDS["lb"].settings)
    for record in broken:
        assert not record["valid"] and record["cost"] is None
        assert record["error"] == "RuntimeError: solver crashed"
    assert all(r["valid"] and r["var_ratio"] > 1.0 for r in working)


def test_policies_sit_out_the_scenarios_they_do_not_handle():
    sizes = make_policy("size-greedy")
    assert experiments.scenario_kinds("scale-out", sizes) == (ScenarioKind.SCALE_OUT,)
    assert experiments.scenario_kinds("lb", sizes) == ()
    assert experiments.scenario_kinds("time", sizes) == (ScenarioKind.SCALE_OUT,)
    assert experiments.scenario_kinds("time", make_policy("ofm")) == (ScenarioKind.LOAD_BALANCE,)


def test_small_subset_is_deterministic_and_follows_the_seed_option(table, tmp_path):
    def costs():
        out = tmp_path / "subset.json"
        assert run_cli(["--experiment", "scale-in", "--policies", "ofm,random", "--seed", 3, "--seeds", 1,
                        "--quick", "--json", out]) == 0
        return json.loads(out.read_text())

    first, second = costs(), costs()
    assert first["meta"]["seeds"] == [3]
    grid = experiments.QUICK_GRIDS["scale-in"]
    keys = {(r["policy"], r["threshold"], r["setting"], r["seed"]) for r in first["records"]}
    assert keys == set(itertools.product(("ofm", "random"), grid.thresholds, grid.settings, (3,)))
    assert [r["cost"] for r in first["records"]] == [r["cost"] for r in second["records"]]


def test_summary_statistics_leave_failed_records_out():
    base = {"experiment": "scale-out", "scenario": "scale_out", "threshold": 0.6, "setting": 4,
            "policy": "ofm", "var_ratio": None, "decision_ms": 1.0, "optimal_gap": None}
    records = [{**base, "seed": 0, "cost": 10.0, "valid": True, "feasible": True},
               {**base, "seed": 1, "cost": 20.0, "valid": True, "feasible": True},
               {**base, "seed": 2, "cost": None, "valid": False, "feasible": False}]
    (point,) = experiments.summarise(records)
    assert (point.runs, point.failed, point.mean) == (3, 1, 15.0)
    assert point.spread == pytest.approx(7.0710678)


# --- the --quick run ---------------------------------------------------------------------------

def test_quick_run_succeeds_within_two_minutes(quick_run):
    status, data, _, printed = quick_run
    assert status == 0
    assert data["meta"]["quick"] and data["meta"]["wall_s"] < 120
    assert "decision ms" in printed and f"{len(data['records'])} records" in printed


def test_quick_records_follow_the_schema(quick_run):
    records = quick_run[1]["records"]
    for record in records:
        assert REQUIRED_FIELDS <= record.keys()
        assert (record["optimal_gap"] is not None) == (record["policy"] == "optimal")
        assert record["decision_ms"] > 0 and record["n_instances"] >= record["setting"] > 0
        if record["experiment"] == "lb":
            assert record["var_ratio"] > 0
    keys = [(r["experiment"], r["policy"], r["scenario"], r["threshold"], r["setting"], r["seed"])
            for r in records]
    assert len(keys) == len(set(keys))
    for experiment, grid in experiments.QUICK_GRIDS.items():
        mine = [r for r in records if r["experiment"] == experiment]
        assert {r["policy"] for r in mine} == HANDLERS[experiment]
        assert len(mine) == len(HANDLERS[experiment]) * len(grid.thresholds) * len(grid.settings) * 2


def test_every_quick_record_is_valid(quick_run):
    for record in quick_run[1]["records"]:
        assert record["valid"] and not record["error"], record
        if record["feasible"]:
            assert record["cost"] == pytest.approx(
                record["migration_cost"] + record["resource_cost"] + record["threshold_penalty"])


def test_quick_run_writes_one_figure_per_experiment(quick_run):
    plots = quick_run[2]
    for experiment in experiments.EXPERIMENTS:
        png = plots / f"bench_{experiment.replace('-', '_')}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_optimal_is_never_beaten_on_any_quick_case(quick_run):
    """Issue 3: Optimal's cost <= every other's (scale-out, scale-in); its variance ratio >= theirs (lb)."""
    cases: dict[tuple, dict[str, dict]] = {}
    for r in quick_run[1]["records"]:
        if r["experiment"] != "time" and r["feasible"]:
            cases.setdefault((r["experiment"], r["threshold"], r["setting"], r["seed"]), {})[r["policy"]] = r
    assert cases
    for case, by_policy in cases.items():
        optimal = by_policy.pop("optimal")
        for name, other in by_policy.items():
            if case[0] == "lb":
                assert optimal["var_ratio"] >= other["var_ratio"] * (1 - TOLERANCE), (case, name)
            else:
                slack = TOLERANCE * max(1.0, abs(other["cost"]))
                assert optimal["cost"] <= other["cost"] + slack, (case, name)


def test_dump_actions_writes_one_comparable_line_per_record(tmp_path):
    dump = tmp_path / "actions.jsonl"
    with mock.patch("sys.stdout"):
        status = run_cli(["--experiment", "lb", "--quick", "--seeds", "1", "--policies", "ofm,pairwise",
                          "--dump-actions", dump])
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert status == 0 and len(lines) == 4  # N = 10 and 40, two policies
    for line in lines:
        assert set(line) == set(cli.DUMPED_KEYS) and "decision_ms" not in line
        assert len(line["action"]["flows"]) == len(line["action"]["dst"]) > 0
        assert line["action"]["flows"] == sorted(line["action"]["flows"])


def test_unwritable_action_dump_fails_before_the_run(capsys, tmp_path):
    status = run_cli(["--dump-actions", tmp_path / "no" / "dir.jsonl", "--policies", "ofm", "--quick"])
    assert_clean_error(capsys, status, "--dump-actions", "does not exist")
