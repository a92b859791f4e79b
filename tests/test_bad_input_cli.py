"""Issue 20, item 3 (and the option checks of item 1): every console script refuses a nonsense number or
output path at parse time, before any work: one `error:` line naming the option, status 2, no traceback,
no file."""
from __future__ import annotations

import os
from unittest import mock

import pytest

from controller_app import demo, dmctl
from gnn_policy import train
from gnn_policy.bench import cli as bench
from trace_replay import cli as trace

SAMPLE = "trace_replay/data/lbnl_sample.pcap.gz"
COMMANDS = {"dm-trace": trace.main, "dm-bench": bench.main, "dm-train": train.main, "dm-demo": demo.main,
            "dmctl": dmctl.main}


def refused(capsys, command: str, argv: list[str]) -> str:
    """Run `command argv`; assert argparse refused it (status 2, no traceback); the error line."""
    def work(*_args, **_kwargs):
        raise AssertionError(f"{command} started its work on input it should have refused")

    with mock.patch.dict(os.environ), mock.patch.object(demo, "run_demo", work), \
            mock.patch.object(train, "training_pool", work), mock.patch.object(bench, "_bench", work), \
            pytest.raises(SystemExit) as exit_info:
        COMMANDS[command](argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def train_argv(tmp_path, *extra: str) -> list[str]:
    return ["--trace", SAMPLE, "--out", str(tmp_path / "dm.pt"), "--logdir", str(tmp_path / "runs"),
            "--teacher-cache", str(tmp_path / "teacher.pt"), *extra]


@pytest.mark.parametrize("extra, option, fragment", [
    (["--pool-size", "-5"], "--pool-size", "at least 1"),
    (["--imitation-epochs", "-1", "--iterations", "-5"], "--imitation-epochs", "at least 0"),
    (["--iterations", "-5"], "--iterations", "at least 0"),
    (["--episodes", "0"], "--episodes", "at least 1"),
    (["--groups", "0"], "--groups", "at least 1"),
    (["--seed", "-1"], "--seed", "at least 0"),
    (["--lr-start", "nan"], "--lr-start", "finite"),
    (["--lr-end", "inf"], "--lr-end", "finite"),
    (["--imitation-lr", "0"], "--imitation-lr", "positive"),
    (["--teacher-time-limit", "-1"], "--teacher-time-limit", "positive"),
    (["--save-every", "0"], "--save-every", "at least 1"),
])
def test_dm_train_refuses_nonsense_numbers(capsys, tmp_path, extra, option, fragment):
    line = refused(capsys, "dm-train", train_argv(tmp_path, *extra))
    assert option in line and fragment in line
    assert not (tmp_path / "dm.pt").exists()


def test_dm_train_with_nothing_to_train_writes_no_untrained_checkpoint(capsys, tmp_path):
    status = train.main(train_argv(tmp_path, "--imitation-epochs", "0", "--iterations", "0"))
    err = capsys.readouterr().err
    assert status == 2 and "nothing to train" in err and "Traceback" not in err
    assert not (tmp_path / "dm.pt").exists()


@pytest.mark.parametrize("argv, option, fragment", [
    (["generate", "--out", "OUT", "--seconds", "1", "--seed", "-1"], "--seed", "at least 0"),
    (["generate", "--out", "OUT", "--seconds", "nan", "--seed", "1"], "--seconds", "finite"),
    (["generate", "--out", "OUT", "--seconds", "inf", "--seed", "1"], "--seconds", "finite"),
    (["info", SAMPLE, "--idle-timeout", "nan"], "--idle-timeout", "finite"),
    (["scenarios", SAMPLE, "--seed", "-1"], "--seed", "at least 0"),
])
def test_dm_trace_refuses_nonsense_numbers(capsys, tmp_path, argv, option, fragment):
    line = refused(capsys, "dm-trace", [str(tmp_path / "x.pcap") if a == "OUT" else a for a in argv])
    assert option in line and fragment in line
    assert not (tmp_path / "x.pcap").exists()


@pytest.mark.parametrize("argv, option, fragment", [
    (["--seed", "-1"], "--seed", "at least 0"),
    (["--time-budget", "nan"], "--time-budget", "finite"),
    (["--speed", "inf", "--experiment", "closed-loop"], "--speed", "finite"),
])
def test_dm_bench_refuses_nonsense_numbers(capsys, argv, option, fragment):
    line = refused(capsys, "dm-bench", argv)
    assert option in line and fragment in line


@pytest.mark.parametrize("argv, option, fragment", [
    (["--duration", "nan"], "--duration", "finite"),
    (["--duration", "0"], "--duration", "positive"),
    (["--instances", "0"], "--instances", "at least 1"),
    (["--standby", "-1"], "--standby", "at least 0"),
    (["--speed", "0"], "--speed", "positive"),
    (["--capacity", "inf"], "--capacity", "finite"),
    (["--buffer", "0"], "--buffer", "at least 1"),
    (["--processing-ms", "nan"], "--processing-ms", "finite"),
    (["--period", "0"], "--period", "positive"),
    (["--quiet-ms", "-1"], "--quiet-ms", "at least 0"),
    (["--max-flows", "0"], "--max-flows", "at least 1"),
    (["--start", "-1"], "--start", ">= 0"),
    (["--json", "/dev/full"], "--json", "not a regular file"),
])
def test_dm_demo_refuses_nonsense_before_starting_anything(capsys, argv, option, fragment):
    line = refused(capsys, "dm-demo", argv)
    assert option in line and fragment in line


@pytest.mark.parametrize("argv, option, fragment", [
    (["--interval", "nan", "--follow"], "--interval", "finite"),
    (["--interval", "inf", "--follow"], "--interval", "finite"),
    (["--interval", "0"], "--interval", "positive"),
    (["-n", "0"], "-n", "between 1 and 1000"),
])
def test_dmctl_refuses_nonsense_numbers(capsys, argv, option, fragment):
    line = refused(capsys, "dmctl", argv)
    assert option in line and fragment in line
