"""Issue 20, item 1: no work or file destroyed. Outputs are checked before the work and replaced whole
after it; an error or Ctrl-C leaves the previous file as it was and no partial file behind; results that
cannot be written where asked are kept elsewhere and named."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from gnn_policy import checkpoint, train
from gnn_policy.bench import cli as bench
from gnn_policy.gn import GNPolicyNet, NetConfig
from trace_replay import cli as trace
from trace_replay import files
from trace_replay.generate import generate_pcap

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = "trace_replay/data/lbnl_sample.pcap.gz"
PRECIOUS = b"precious work that must survive"


def precious(path: Path) -> Path:
    path.write_bytes(PRECIOUS)
    return path


def leftovers(folder: Path, *keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in keep)


def never(*_args, **_kwargs):
    raise AssertionError("the work started although an output cannot be written")


# --- the shared helper ------------------------------------------------------------------------------

def test_atomic_write_replaces_the_file_only_when_complete(tmp_path):
    target = precious(tmp_path / "out.bin")
    with pytest.raises(RuntimeError), files.atomic_write(target) as handle:
        handle.write(b"half")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == PRECIOUS and leftovers(tmp_path, target) == []
    with pytest.raises(KeyboardInterrupt), files.atomic_write(target) as handle:
        handle.write(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == PRECIOUS and leftovers(tmp_path, target) == []
    files.write_text(target, "whole")
    assert target.read_text() == "whole" and leftovers(tmp_path, target) == []


def test_atomic_write_keeps_permissions_and_follows_links(tmp_path):
    target = precious(tmp_path / "out.txt")
    target.chmod(0o640)
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    files.write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("path, fragment", [
    ("/dev/full", "not a regular file"),
    ("/dev/null", "not a regular file"),
    ("/proc/dm-bench.json", "cannot write in /proc"),
    ("/proc/self/results.json", "cannot write in /proc"),
    ("TMP", "is a directory"),
    ("TMP/no/such/dir/out.json", "does not exist"),
])
def test_check_output_refuses_what_cannot_become_a_regular_file(tmp_path, path, fragment):
    with pytest.raises(files.OutputError, match=fragment):
        files.check_output(path.replace("TMP", str(tmp_path)))


def test_check_output_may_allow_missing_folders_without_creating_them(tmp_path):
    path = tmp_path / "a" / "b" / "out.pt"
    assert files.check_output(path, make_parents=True) == path
    assert not (tmp_path / "a").exists()
    files.write_text(path, "x", make_parents=True)
    assert path.read_text() == "x"


# --- dm-trace generate ------------------------------------------------------------------------------

def test_generate_with_a_bad_seed_leaves_the_existing_file_intact(capsys, tmp_path):
    existing = precious(tmp_path / "existing.pcap")
    with pytest.raises(SystemExit) as exit_info:
        trace.main(["generate", "--out", str(existing), "--seconds", "1", "--seed", "-1"])
    assert exit_info.value.code == 2 and "--seed" in capsys.readouterr().err
    assert existing.read_bytes() == PRECIOUS
    with pytest.raises(ValueError, match="seed"):
        generate_pcap(existing, seconds=1, seed=-1)
    assert existing.read_bytes() == PRECIOUS and leftovers(tmp_path, existing) == []


def test_generate_interrupted_in_process_leaves_nothing_behind(capsys, tmp_path, monkeypatch):
    existing = precious(tmp_path / "existing.pcap.gz")

    def interrupted(out, *_args):
        out.write(b"\x00" * 100_000)
        raise KeyboardInterrupt

    monkeypatch.setattr("trace_replay.generate._write_trace", interrupted)
    try:
        status = trace.main(["generate", "--out", str(existing), "--seconds", "1", "--seed", "1"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped dm-trace as a traceback")
    assert status == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert existing.read_bytes() == PRECIOUS and leftovers(tmp_path, existing) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_generate_killed_by_a_signal_leaves_the_old_file_and_no_partial_one(tmp_path, signum):
    """The failure as reported: Ctrl-C during a long `dm-trace generate` left a traceback and a partial
    file. The command starts with SIGINT live, as from a terminal: a suite run in the background by a shell
    without job control (`nohup make test &`) inherits SIGINT ignored, and so would the command."""
    existing = precious(tmp_path / "existing.pcap")
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # a caught signal is reset on exec
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "trace_replay.cli", "generate", "--out", str(existing), "--seconds", "100000",
             "--seed", "1"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and existing.stat().st_size == len(PRECIOUS) and not any(
            p.stat().st_size > 0 for p in tmp_path.glob(f".{existing.name}.*")):
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0 and "interrupted" in err
    assert existing.read_bytes() == PRECIOUS and leftovers(tmp_path, existing) == []


# --- dm-bench ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, path, fragment", [
    ("--json", "/dev/full", "not a regular file"),
    ("--json", "/proc/dm-bench.json", "cannot write in /proc"),
    ("--json", "TMP", "is a directory"),
    ("--dump-actions", "/dev/full", "not a regular file"),
])
def test_dm_bench_refuses_an_unwritable_output_before_the_run(capsys, tmp_path, option, path, fragment):
    with mock.patch.dict(os.environ), mock.patch("gnn_policy.bench.cli._policy", never), \
            mock.patch("gnn_policy.bench.cli._read_trace", never):
        status = bench.main([option, path.replace("TMP", str(tmp_path)), "--quick"])
    err = capsys.readouterr().err
    assert status == 2 and option in err and fragment in err and "Traceback" not in err


def test_dm_bench_keeps_the_results_when_the_write_fails_after_the_run(capsys, tmp_path, monkeypatch):
    out = precious(tmp_path / "bench.json")

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "write_text", disk_full)
    with mock.patch.dict(os.environ):
        status = bench.main(["--json", str(out), "--experiment", "lb", "--policies", "ofm", "--quick",
                             "--seeds", "1", "--repeats", "1"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err and "No space left" in err
    rescued = Path(err.split("the results are in ")[1].split()[0])
    try:
        assert json.loads(rescued.read_text())["records"]
    finally:
        rescued.unlink()
    assert out.read_bytes() == PRECIOUS


# --- dm-train and checkpoints -----------------------------------------------------------------------

def train_argv(tmp_path, **options: str) -> list[str]:
    chosen = {"--trace": SAMPLE, "--out": str(tmp_path / "dm.pt"), "--logdir": str(tmp_path / "runs"),
              "--teacher-cache": str(tmp_path / "teacher.pt"), **options}
    return [item for pair in chosen.items() for item in pair]


@pytest.mark.parametrize("option, path, fragment", [
    ("--out", "TMP", "is a directory"),
    ("--out", "/dev/full", "not a regular file"),
    ("--curves", "/proc/curves.png", "cannot write in /proc"),
    ("--teacher-cache", "TMP", "is a directory"),
])
def test_dm_train_refuses_an_unwritable_output_before_training(capsys, tmp_path, option, path, fragment):
    with mock.patch.object(train, "training_pool", never), pytest.raises(SystemExit) as exit_info:
        train.main(train_argv(tmp_path, **{option: path.replace("TMP", str(tmp_path))}))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and option in err and fragment in err and "Traceback" not in err


def test_a_failed_checkpoint_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "dm.pt"
    net = GNPolicyNet(NetConfig(hidden=8, steps=1))
    checkpoint.save(path, net, {"iteration": 3})
    real_save = torch.save

    def torn(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError):
        checkpoint.save(path, GNPolicyNet(NetConfig(hidden=8, steps=1)), {"iteration": 4})
    monkeypatch.undo()
    assert checkpoint.load(path)[1] == {"iteration": 3} and leftovers(tmp_path, path) == []


def test_dm_train_interrupted_before_learning_anything_leaves_out_alone(capsys, tmp_path):
    out = precious(tmp_path / "dm.pt")

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    with mock.patch.object(train, "training_pool", interrupted):
        status = train.main(train_argv(tmp_path, **{"--iterations": "3"}))
    err = capsys.readouterr().err
    assert status == 130 and "interrupted" in err and "nothing written" in err and "Traceback" not in err
    assert out.read_bytes() == PRECIOUS


def test_dm_train_keeps_the_checkpoint_when_out_cannot_be_written_at_the_end(capsys, tmp_path, monkeypatch):
    out = precious(tmp_path / "dm.pt")
    real_save = checkpoint.save

    def full_disk_at_out(path, net, training=None):
        if Path(path) == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(path, net, training)

    monkeypatch.setattr(checkpoint, "save", full_disk_at_out)
    tiny = {"--pool-size": "3", "--imitation-epochs": "0", "--iterations": "1", "--groups": "1",
            "--episodes": "2"}
    status = train.main(train_argv(tmp_path, **tiny))
    err = capsys.readouterr().err
    assert status == 1 and "No space left" in err and "Traceback" not in err
    kept = Path(err.split("the checkpoint is in ")[1].split()[0])
    try:
        assert checkpoint.load(kept)[1]["iteration"] == 0
    finally:
        kept.unlink()
    assert out.read_bytes() == PRECIOUS
