"""The by-hand way in (README, "Run it by hand"): `ryu-manager controller_app.app` with no flags and
`mn --custom mininet_topos/nf_cluster.py ...` with its CLI fed on standard input, each a process of its own,
as a user runs them in two terminals. The network tests use the README's ports (6653, 8080) and the
well-known run directory, so they run under `flock /tmp/mininet.lock` like every network test."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from controller_app.app import ClusterWatch
from controller_app.config import ConfigError
from mininet_topos.nf_cluster import ClusterSpec, describe
from mininet_topos.run_dir import CLUSTER_PATH, RUN_DIR
from mininet_topos.testbed import LOCALHOST, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
RYU_MANAGER = Path(sys.executable).with_name("ryu-manager")
MN = ["mn", "--custom", "mininet_topos/nf_cluster.py", "--topo", "nfcluster,2,2",
      "--switch", "ovs,datapath=user,protocols=OpenFlow13", "--controller", "remote,ip=127.0.0.1,port=6653"]
REPLAY = "replay trace_replay/data/lbnl_sample.pcap.gz --speed 0.5 --duration {seconds}"
API = f"http://{LOCALHOST}:8080/deepmigration/v1"
# This checkout's code in every process; mn's system Python finds the virtual environment running the tests.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "DEEPMIGRATION_VENV": sys.prefix}


@pytest.fixture
def free_ports() -> None:
    for port in (6653, 8080):
        with socket.socket() as probe:
            if probe.connect_ex((LOCALHOST, port)) == 0:
                pytest.skip(f"port {port} is taken; the by-hand commands use it")


def get(path: str) -> object:
    with urllib.request.urlopen(API + path, timeout=10) as response:
        return json.load(response)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := condition():
                return result
        except OSError:  # the REST API not up (yet)
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.3)


@contextmanager
def controller(workdir: Path, name: str) -> Iterator[subprocess.Popen]:
    """`ryu-manager controller_app.app`, no flags, run from `workdir` (its transition log lands there)."""
    with (workdir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen([str(RYU_MANAGER), "controller_app.app"], cwd=workdir, env=ENV,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            wait_for_port(LOCALHOST, 8080, 60, process=process)
            yield process
        finally:
            stop_process(process)


def start_mn(workdir: Path) -> subprocess.Popen:
    """mn with its CLI on a pipe; its output goes to files (mn.out, mn.err) in `workdir`."""
    workdir.mkdir(exist_ok=True)
    with (workdir / "mn.out").open("wb") as out, (workdir / "mn.err").open("wb") as err:
        return subprocess.Popen(MN, cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=out, stderr=err, text=True)


def finish_mn(mn: subprocess.Popen, workdir: Path, commands: str, timeout: float = 180) -> dict:
    """Type `commands` into mn's CLI, wait for it to exit; the replay's JSON line."""
    mn.communicate(commands, timeout=timeout)
    out, err = (workdir / "mn.out").read_text(), (workdir / "mn.err").read_text()
    assert mn.returncode == 0, out + err
    lines = [match.group(0) for match in re.finditer(r'\{"flows".*\}', out)]
    assert len(lines) == 1, out + err
    return json.loads(lines[0])


def cluster_ready() -> bool:
    state = get("/state")
    return state["switch_connected"] and all(instance["alive"] for instance in state["instances"])


def assert_nothing_left(*ours: subprocess.Popen) -> None:
    """Our controllers and mn exited; no NF, sink or sender of the run directory, no Mininet host shell, no
    bridge, no run directory. (Other engineers' controllers and NFs, outside /run/deepmigration, may run.)"""
    assert all(process.poll() is not None for process in ours)
    leftovers = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:
            continue
        if proc.name.isdigit() and (str(RUN_DIR) in command or re.search(r"mininet:(src|sink|nf\d+)\b", command)):
            leftovers.append(command)
    assert not leftovers
    bridges = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True, check=True).stdout.split()
    assert "s1" not in bridges
    assert not RUN_DIR.exists()


@pytest.mark.network
@pytest.mark.usefixtures("ovs", "free_ports")
@pytest.mark.timeout(300)
def test_the_readme_commands_give_a_working_cluster(tmp_path):
    with controller(tmp_path, "ryu") as ryu:
        mn = start_mn(tmp_path)
        summary = finish_mn(mn, tmp_path, REPLAY.format(seconds=20) + "\nexit\n")
        assert summary["packets_sent"] > 1000
        assert summary["packets_lost"] == 0 and summary["packets_received"] == summary["packets_sent"], summary
        assert summary["packets_reordered"] == 0, summary

        # mn exited; the controller still runs and still shows what it did
        assert ryu.poll() is None
        config = get("/config")
        assert (config["policy"], config["mode"], config["stabilizer"]["enabled"]) == ("deepmigration", "auto", True)
        decisions = get("/decisions?limit=1000")
        moved = [m for d in decisions if d["executed"] for m in d["migrations"] if m["outcome"] == "done"]
        assert decisions and moved, decisions
        assert not get("/state")["switch_connected"]
        with urllib.request.urlopen(API + "/metrics", timeout=10) as response:
            assert "deepmigration_decisions" in response.read().decode()

        # mn again: the controller takes the new cluster
        mn_again = start_mn(tmp_path / "again")
        again = finish_mn(mn_again, tmp_path / "again", REPLAY.format(seconds=5) + "\nexit\n")
        assert again["packets_sent"] > 0 and again["packets_lost"] == 0, again
        assert (tmp_path / "ryu.log").read_text().count("/run/deepmigration/cluster.json adopted") == 2
    assert_nothing_left(ryu, mn, mn_again)


@pytest.mark.network
@pytest.mark.usefixtures("ovs", "free_ports")
@pytest.mark.timeout(300)
def test_mn_first_then_the_controller_then_the_controller_restarted(tmp_path):
    mn = start_mn(tmp_path)
    try:
        wait_until(CLUSTER_PATH.exists, 60, "mn writes the cluster description")
        with controller(tmp_path, "ryu-first") as first:
            wait_until(cluster_ready, 30, "the controller started after mn takes the cluster")
        with controller(tmp_path, "ryu-second") as second:
            wait_until(cluster_ready, 30, "the restarted controller takes the cluster")
            typos = "replay --speed -1\nreplay no-such.pcap\nnf nf9\n"  # each an error; the CLI carries on
            summary = finish_mn(mn, tmp_path, typos + "nf\n" + REPLAY.format(seconds=10) + "\nexit\n")
            errors = (tmp_path / "mn.err").read_text()
            assert "replay: argument --speed" in errors and "no such trace file: no-such.pcap" in errors
            assert "nf: no NF named nf9" in errors
            assert re.search(r"nf3  standby .* queue 0/800", (tmp_path / "mn.out").read_text())
            assert summary["packets_sent"] > 500
            assert summary["packets_lost"] == 0 and summary["packets_reordered"] == 0, summary
            assert not get("/state")["switch_connected"]
    finally:
        if mn.poll() is None:
            stop_process(mn)
    assert_nothing_left(first, second, mn)


@pytest.mark.network
@pytest.mark.usefixtures("ovs", "free_ports")
@pytest.mark.timeout(120)
def test_mn_stopped_by_sigterm_stops_the_cluster(tmp_path):
    mn = start_mn(tmp_path)
    try:
        wait_until(CLUSTER_PATH.exists, 60, "mn writes the cluster description")
        mn.terminate()
        mn.communicate(timeout=60)
    finally:
        if mn.poll() is None:
            stop_process(mn)
    assert "SIGTERM: stopping the NF cluster" in (tmp_path / "mn.out").read_text() + (tmp_path / "mn.err").read_text()
    assert_nothing_left(mn)


def test_the_controller_follows_the_description_file(tmp_path):
    """Appears: adopted; rewritten as it was: kept; a new session: adopted again; removed: gone; broken: an error."""
    path = tmp_path / "cluster.json"
    watch = ClusterWatch(path)
    assert watch.check() is None and not watch.present
    description = describe(ClusterSpec(), tmp_path, "s1") | {"session": {"pid": 1}}

    def write(document) -> None:
        partial = tmp_path / "partial"
        partial.write_text(document if isinstance(document, str) else json.dumps(document))
        partial.replace(path)

    write(description)
    assert [nf.instance for nf in watch.check().nfs] == ["nf1", "nf2", "nf3"] and watch.present
    assert watch.check() is None
    write(description)
    assert watch.check() is None and watch.present
    write(description | {"session": {"pid": 2}})
    assert watch.check() is not None
    path.unlink()
    assert watch.check() is None and not watch.present
    write("{broken")
    with pytest.raises(ConfigError, match="cluster description"):
        watch.check()


def test_the_replay_outcome_command_prints_the_demo_summary_figures(tmp_path):
    sent = {"flows": {"0": {"key": ["10.0.0.1", "10.0.0.9", 1, 2, 17], "sent": 5},
                      "1": {"key": ["10.0.0.1", "10.0.0.8", 3, 4, 6], "sent": 2}}}
    received = {"flows": {"0": {"received": 4, "reordered": 1, "reordered_at_setup": 0, "delay_bins": []}}}
    (tmp_path / "sent.json").write_text(json.dumps(sent))
    (tmp_path / "sink.json").write_text(json.dumps(received))
    done = subprocess.run([sys.executable, "-m", "trace_replay.live", "outcome", str(tmp_path / "sent.json"),
                           str(tmp_path / "sink.json")], capture_output=True, text=True, env=ENV, check=True)
    assert json.loads(done.stdout) == {"flows": 2, "packets_sent": 7, "packets_received": 4, "packets_lost": 3,
                                       "packets_reordered": 1, "packets_reordered_at_flow_setup": 0}
