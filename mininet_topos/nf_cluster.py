"""The NF-cluster testbed: one OpenFlow 1.3 switch, a replay source, a sink, N active and K standby NFs.

By hand, next to `ryu-manager controller_app.app` (README, "Run it by hand"; docs/testbed.md):

    sudo mn --custom mininet_topos/nf_cluster.py --topo nfcluster,2,2 --switch ovs,datapath=user,protocols=OpenFlow13 \\
        --controller remote,ip=127.0.0.1,port=6653

brings up a working cluster: `mn` takes this file's `CLI` (`mininet_topos.by_hand.NFClusterCLI`), which starts
the sink and the NF processes, writes the cluster description where the controller looks
(`mininet_topos.run_dir`), adds the `replay` and `nf` commands, and stops it all when the CLI exits.

From Python, `nf_cluster(...)` brings everything up, NF processes and sink included, writes the cluster
description the controller reads, and tears it all down on exit (see docs/testbed.md).

This file only imports the standard library and Mininet at the top: `mn --custom` executes it with
the system Python, outside the project's virtual environment (its `CLI` enters that environment).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from mininet.topo import Topo

SOURCE_PORT, SINK_PORT, FIRST_NF_PORT = 1, 2, 3
DESCRIPTION_FILE = "cluster.json"
DESCRIPTION_ENV = "DEEPMIGRATION_CLUSTER"


def _host_address(port: int) -> tuple[str, str]:
    """IP and MAC of the host on switch port `port`: 10.0.0.<port>, 00:00:00:00:00:<port>."""
    return f"10.0.0.{port}", f"00:00:00:00:00:{port:02x}"


LIVE_NF = {"capacity_pps": 250.0, "buffer_packets": 800, "processing_ms": 5.0}
"""The NF settings of dm-demo and of a cluster started by hand: the shipped sample at half speed peaks at 770
packets/s in one second, 550 of them from one flow, which one NF must absorb (a flow cannot be split): 250
packets/s of capacity and an 800-packet buffer, 5 ms of processing (docs/testbed.md)."""


def _check_sizes(active: int, standby: int) -> None:
    if active < 1 or standby < 0 or active + standby > 250:
        raise ValueError(f"need 1 <= active, 0 <= standby, active + standby <= 250; not {active}, {standby}")


class NFClusterTopo(Topo):
    """Hosts src (port 1), sink (port 2) and nf1..nf<active+standby> (ports 3...) on one switch."""

    def build(self, active: int = 2, standby: int = 1, switch: str = "s1", **nf_settings) -> None:
        """Called by Topo with the constructor's arguments (or `--topo nfcluster,3,1`'s): `active` + `standby` NF
        hosts on switch `switch` (`describe` marks the first `active` active); ValueError on impossible sizes.
        `nf_settings` (capacity_pps, buffer_packets, processing_ms; default LIVE_NF) are the NFs' when the
        cluster is started by hand (`spec`), e.g. `--topo nfcluster,2,2,capacity_pps=300`."""
        active, standby = int(active), int(standby)
        _check_sizes(active, standby)
        unknown = sorted(set(nf_settings) - set(LIVE_NF))
        if unknown:
            raise ValueError(f"unknown NF setting {unknown[0]!r}; known: {', '.join(LIVE_NF)}")
        self.spec = ClusterSpec(active, standby, **{name: type(default)(nf_settings.get(name, default))
                                                     for name, default in LIVE_NF.items()})
        name = self.addSwitch(switch, dpid=f"{1:016x}")
        hosts = ["src", "sink", *(f"nf{index}" for index in range(1, active + standby + 1))]
        for port, host in enumerate(hosts, start=SOURCE_PORT):
            ip, mac = _host_address(port)
            self.addLink(self.addHost(host, ip=f"{ip}/24", mac=mac), name, port2=port)


topos = {"nfcluster": NFClusterTopo}


@dataclass(frozen=True)
class ClusterSpec:
    """Size and NF parameters of a cluster; every NF gets the same capacity, buffer and latency."""

    active: int = 2
    standby: int = 1
    capacity_pps: float = 300.0
    buffer_packets: int = 100
    processing_ms: float = 20.0

    def __post_init__(self):
        _check_sizes(self.active, self.standby)
        if not self.capacity_pps > 0 or self.buffer_packets < 1 or self.processing_ms < 0:
            raise ValueError(
                f"need capacity_pps > 0, buffer_packets >= 1, processing_ms >= 0; not {self.capacity_pps}, "
                f"{self.buffer_packets}, {self.processing_ms}"
            )


def describe(spec: ClusterSpec, workdir: str | os.PathLike, switch: str = "s1") -> dict:
    """The cluster description the controller reads (written to <workdir>/cluster.json by nf_cluster)."""
    hosts = []
    names = ["src", "sink", *(f"nf{index}" for index in range(1, spec.active + spec.standby + 1))]
    for port, name in enumerate(names, start=SOURCE_PORT):
        ip, mac = _host_address(port)
        host = {
            "name": name,
            "role": {"src": "source", "sink": "sink"}.get(name, "nf"),
            "port": port,
            "mac": mac,
            "ip": ip,
            "interface": f"{name}-eth0",
        }
        if host["role"] == "nf":
            host |= {
                "instance": name,
                "capacity_pps": spec.capacity_pps,
                "buffer_packets": spec.buffer_packets,
                "processing_ms": spec.processing_ms,
                "active": port - FIRST_NF_PORT < spec.active,
                "control_socket": str(Path(workdir, f"{name}.sock")),
            }
        hosts.append(host)
    return {"version": 1, "switch": switch, "dpid": 1, "hosts": hosts}


class RunningCluster:
    """A cluster brought up by nf_cluster: its Mininet network, description and NF clients."""

    def __init__(self, net, description: dict, workdir: Path, stack: ExitStack, *,
                 python: str = sys.executable, env: dict[str, str] | None = None):
        """`python` runs the processes (the project's interpreter), with the environment `env` (default: ours)."""
        from mininet_topos.nf_channel import NFClient

        self.net = net
        self.description = description
        self.workdir = workdir
        self.description_path = workdir / DESCRIPTION_FILE
        self.sink_log = workdir / "sink.json"
        self.switch = description["switch"]
        self.nfs = {host["instance"]: host for host in description["hosts"] if host["role"] == "nf"}
        self.clients = {
            name: stack.enter_context(NFClient(nf["control_socket"])) for name, nf in self.nfs.items()
        }
        self._stack = stack
        self._python, self._env = python, env
        self._sink: subprocess.Popen | None = None

    def port(self, host: str) -> int:
        return next(entry["port"] for entry in self.description["hosts"] if entry["name"] == host)

    def start_process(self, host: str, args: list[str], log_name: str) -> subprocess.Popen:
        """Run `python args...` (the project's interpreter) in `host`'s namespace, logging to the
        workdir, until the cluster goes down (SIGTERM, then SIGKILL)."""
        from mininet_topos.testbed import stop_process

        with open(self.workdir / log_name, "wb") as log:
            process = self.net.get(host).popen(
                [self._python, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env,
            )
        self._stack.callback(stop_process, process)
        return process

    def start_replay(
        self, pcap: str | os.PathLike, sent_log: str | os.PathLike, **options
    ) -> subprocess.Popen:
        """Start replaying `pcap` from src; options are trace_replay.live's send flags without dashes,
        e.g. speed=2, duration=10, max_flows=50. The sent log is written when the replay ends."""
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
        args = [
            "-m",
            "trace_replay.live",
            "send",
            os.fspath(pcap),
            "--interface",
            "src-eth0",
            "--out",
            os.fspath(sent_log),
            *flags,
        ]
        return self.start_process("src", args, "replay.log")

    def sink_counts(self, timeout: float = 5.0) -> dict:
        """The sink's counters now (it writes them on SIGUSR1)."""
        writes = json.loads(self.sink_log.read_text())["writes"]
        self._sink.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while (counts := json.loads(self.sink_log.read_text()))["writes"] <= writes:
            if time.monotonic() >= deadline or self._sink.poll() is not None:
                raise RuntimeError(
                    f"the sink did not write its counters within {timeout:g} s; see {self.workdir}/sink.log"
                )
            time.sleep(0.05)
        return counts

    def wait_drained(self, timeout: float) -> None:
        """Wait until no NF that answers queues or holds a frame, then half a second for the last frames to
        reach the sink; RuntimeError after `timeout` s."""
        def queued(client) -> int:
            try:
                return client.report()["queue_packets"]
            except (OSError, RuntimeError):  # a dead NF holds nothing
                return 0

        deadline = time.monotonic() + timeout
        while any(queued(client) for client in self.clients.values()):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the NF queues did not drain within {timeout:g} s")
            time.sleep(0.1)
        time.sleep(0.5)

    def start_sink(self, timeout: float) -> None:
        """Start the sink (stopping the one running, if any: its counts start again from zero); return once
        it counts."""
        from mininet_topos.testbed import stop_process

        if self._sink is not None:
            stop_process(self._sink)
            self.sink_log.unlink(missing_ok=True)
        self._sink = self.start_process(
            "sink",
            ["-m", "trace_replay.live", "sink", "--interface", "sink-eth0", "--out", str(self.sink_log)],
            "sink.log",
        )
        _wait_until(self.sink_log.exists, timeout, self._sink, self.workdir / "sink.log", "the sink")

    def start_services(self, timeout: float) -> None:
        """Start the sink, then every NF (standbys inactive); return once all are ready."""
        self.start_sink(timeout)
        for name, nf in self.nfs.items():
            args = [
                "-m",
                "mininet_topos.nf_instance",
                "--instance",
                name,
                "--interface",
                nf["interface"],
                "--socket",
                nf["control_socket"],
                f"--capacity-pps={nf['capacity_pps']}",
                f"--buffer-packets={nf['buffer_packets']}",
                f"--processing-ms={nf['processing_ms']}",
            ]
            process = self.start_process(name, args + ([] if nf["active"] else ["--standby"]), f"{name}.log")
            socket_file = Path(nf["control_socket"])
            _wait_until(socket_file.exists, timeout, process, self.workdir / f"{name}.log", f"NF {name}")


def disable_ipv6(net) -> None:
    """No IPv6 chatter (router solicitations, MLD, DAD) on the measured links, from the hosts' kernels or from the
    switch's ends of the links (in the root namespace): the NFs and the sink would count it as IPv6 flows."""
    for host in net.hosts:
        host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
    for switch in net.switches:
        names = [intf.name for intf in switch.intfList() if intf.name != "lo"]
        switch.cmd(" ".join(["sysctl -qw", *(f"net.ipv6.conf.{name}.disable_ipv6=1" for name in names)]))


def _wait_until(ready, timeout: float, process: subprocess.Popen, log: Path, what: str) -> None:
    from mininet_topos.testbed import log_tail

    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() >= deadline:
            state = (
                f"exited with code {process.returncode}"
                if process.poll() is not None
                else f"not ready after {timeout:g} s"
            )
            raise RuntimeError(f"{what} {state}; last lines of {log}:\n{log_tail(log, lines=20)}")
        time.sleep(0.05)


@contextmanager
def nf_cluster(
    spec: ClusterSpec,
    *,
    controller_port: int,
    workdir: str | os.PathLike | None = None,
    start_timeout: float = 15.0,
) -> Iterator[RunningCluster]:
    """Bring up the cluster against the OpenFlow controller on 127.0.0.1:`controller_port`.

    Writes the description to <workdir>/cluster.json before the switch exists, so a controller
    started beforehand (with DEEPMIGRATION_CLUSTER pointing there) can read it when the switch
    connects. Yields once the switch is connected, the sink is counting and every NF's control
    socket is up; on exit stops every process it started (the sink writes its final counts), then
    the network. `workdir` (default: a new temporary directory, removed afterwards) keeps the
    description, sockets, sink counts and the processes' logs.
    """
    # Imported here rather than at the top: they need the project's environment (see module doc).
    from mininet_topos.nf_channel import check_socket_path
    from mininet_topos.testbed import mininet_network, switch_name

    with ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="nfcluster-"))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        switch = switch_name(1)
        description = describe(spec, workdir, switch)
        for host in description["hosts"]:
            if host["role"] == "nf":
                check_socket_path(host["control_socket"])
        (workdir / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1))

        topo = NFClusterTopo(spec.active, spec.standby, switch=switch)
        net = stack.enter_context(mininet_network(topo, controller_port=controller_port, autoSetMacs=False))
        disable_ipv6(net)
        # Registered after the network, so the processes stop before it does.
        with ExitStack() as processes:
            cluster = RunningCluster(net, description, workdir, processes)
            cluster.start_services(start_timeout)
            yield cluster


VENV_ENV = "DEEPMIGRATION_VENV"
"""The project's virtual environment for a cluster started by hand (default: the repository's .venv)."""


def enter_project_environment() -> str:
    """Make this repository and its virtual environment importable in the running interpreter (mn's
    system Python, of the venv's version: scripts/setup.sh builds the venv from it); returns the venv's
    interpreter, which runs the NF processes, the sink and the replay."""
    import site

    root = Path(enter_project_environment.__code__.co_filename).resolve().parent.parent
    venv = Path(os.environ.get(VENV_ENV) or root / ".venv")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = venv / "lib" / version / "site-packages"
    if not (venv / "bin" / "python").exists() or not site_packages.is_dir():
        raise RuntimeError(f"no {version} virtual environment at {venv}: run scripts/setup.sh (or set {VENV_ENV})")
    before = list(sys.path)
    site.addsitedir(str(site_packages))  # also runs its .pth files, as the venv's own interpreter does
    sys.path[:] = [str(root), *(entry for entry in sys.path if entry not in before), *before]
    return str(venv / "bin" / "python")


if __name__ != "mininet_topos.nf_cluster":  # executed by `mn --custom`, which takes a `CLI` from the file

    def CLI(mininet, *args, **kwargs):  # the name mn looks for
        """mn's CLI for the NF cluster (mininet_topos.by_hand), run with the project's environment; without it,
        no CLI: mn stops the network (an exception would make mn clean up every Mininet network there is)."""
        try:
            python = enter_project_environment()
            from mininet_topos.by_hand import NFClusterCLI
        except (RuntimeError, ImportError) as problem:
            from mininet.log import error

            error(f"*** the NF cluster cannot start: {problem}\n")
            return None
        return NFClusterCLI(mininet, *args, python=python, **kwargs)
