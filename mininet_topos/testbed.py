"""Bring-up and teardown of a live testbed: Open vSwitch, a Ryu controller and a Mininet network.

The kernel here has no Open vSwitch module, so switches run on OVS's userspace (netdev)
datapath. Every helper bounds its waits and cleans up after itself on any exit path, so a
failed run leaves neither processes nor bridges behind for the next one to trip over.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from mininet.log import warn
from mininet.net import Mininet
from mininet.node import OVSSwitch, RemoteController
from mininet.topo import Topo

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
LOCALHOST = "127.0.0.1"
DATAPATH_MAX_IDLE_MS = 500
"""OVS's `other_config:max-idle` (its minimum; default 10 000): how long an idle datapath flow stays
cached. It must stay below the per-flow rules' idle timeout (1 s or more), less the revalidator's round
(500 ms): a flow that comes back after its rules idled out must miss the datapath cache, so that its
first packet is translated afresh and its `learn` installs the rules to the instance that packet goes
to. A cached flow of the default path instead sends it where the default pointed at the last
revalidation and learns the rules only at the next one, with the default of that time
(docs/testbed.md, "New flows")."""

# Bridges and their ports live in the root namespace and Mininet deletes any existing
# interface of the name it is about to create, so two runs using the same switch names
# would tear down each other's ports. A per-process tag keeps the names apart.
RUN_TAG = secrets.token_hex(2)


def switch_name(index: int) -> str:
    """Name of switch ``index`` for this process, e.g. ``s1-3fa2``.

    The index comes first so Mininet still derives the datapath ID from it (``s1-...`` is
    dpid 1), and the result stays within Linux's 15-character limit for port names such as
    ``s12-3fa2-eth10``.
    """
    return f"s{index}-{RUN_TAG}"


def _run(cmd: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _ovs_is_running() -> bool:
    # Both daemons must answer: with ovsdb-server alone, `ovs-vsctl show` succeeds but
    # every bridge change (Mininet's add-br) waits forever for ovs-vswitchd.
    return (
        _run(["ovs-vsctl", "--timeout=5", "show"]).returncode == 0
        and _run(["ovs-appctl", "--timeout=5", "-t", "ovs-vswitchd", "version"]).returncode == 0
    )


def ensure_ovs_running() -> None:
    """Start ovsdb-server and ovs-vswitchd unless both already answer, and cap how long idle flows stay
    in the datapath cache (`DATAPATH_MAX_IDLE_MS`); idempotent.

    ``ovs-ctl`` skips the kernel module by itself when the kernel has no module support, as
    here. ``--system-id=random`` gives a fresh database the system ID that ovs-ctl otherwise
    reports as a failure, and ``--no-record-hostname`` keeps it from leaving a background
    job holding our output pipe.
    """
    if not _ovs_is_running():
        _start_ovs()
    max_idle = _run(["ovs-vsctl", "--timeout=5", "set", "Open_vSwitch", ".",
                     f"other_config:max-idle={DATAPATH_MAX_IDLE_MS}"])
    if max_idle.returncode != 0:
        raise RuntimeError(f"could not set Open vSwitch's max-idle: {max_idle.stderr.strip()}")


def _start_ovs() -> None:
    started = _run([OVS_CTL, "start", "--system-id=random", "--no-record-hostname"], timeout=60)
    if started.returncode != 0 or not _ovs_is_running():
        raise RuntimeError(
            f"could not start Open vSwitch with {OVS_CTL} (exit {started.returncode}):\n"
            f"{started.stdout}{started.stderr}"
        )


PACKET_IN_QUEUE = 512
"""OVS queues at most 100 packet-ins per controller connection by default and drops the rest: a new
flow's burst arriving before its rules are in would lose packets. 512 is OVS's maximum."""


def enlarge_packet_in_queue(switch: str) -> None:
    """Let the switch queue PACKET_IN_QUEUE packet-ins for each of its controllers."""
    def vsctl(*args: str) -> str:
        return subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True,
                              check=True).stdout

    for uuid in filter(None, vsctl("get", "bridge", switch, "controller").strip("[] \n").split(", ")):
        vsctl("set", "controller", uuid, f"controller_queue_size={PACKET_IN_QUEUE}")


def free_tcp_port() -> int:
    """A TCP port that is free right now; another process may still take it before we bind."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, *, process: subprocess.Popen | None = None) -> None:
    """Block until a TCP connection to ``host:port`` succeeds.

    Raises TimeoutError after ``timeout`` seconds, or RuntimeError as soon as ``process``
    (the would-be listener) exits, rather than waiting out the timeout for a dead server.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            error = exc
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process {process.pid} exited with code {process.returncode} before listening on {host}:{port}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:g} s ({error})")
        time.sleep(0.1)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a process log, for error messages."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


@contextmanager
def ryu_controller(
    apps: Sequence[str],
    *,
    port: int,
    wsapi_port: int | None = None,
    extra_args: Sequence[str] = (),
    log_path: str | os.PathLike | None = None,
    start_timeout: float = 20.0,
) -> Iterator[subprocess.Popen]:
    """Run ``ryu-manager apps`` on localhost for the duration of the block; yields its Popen.

    Uses the ``ryu-manager`` next to ``sys.executable`` so the controller runs on the same
    venv (and eventlet shim) as the caller. Returns only once the OpenFlow port (and the
    REST port, if ``wsapi_port`` is given) accepts connections. On exit the process gets
    SIGTERM, then SIGKILL. Output goes to ``log_path``, or to a temporary file that is
    removed afterwards; a failed start raises RuntimeError quoting the log's tail.
    """
    exe = Path(sys.executable).with_name("ryu-manager")
    if not exe.is_file():
        raise FileNotFoundError(f"{exe} not found; scripts/setup.sh installs Ryu into the venv")
    cmd = [str(exe), "--ofp-listen-host", LOCALHOST, "--ofp-tcp-listen-port", str(port)]
    ports = [port]
    if wsapi_port is not None:
        cmd += ["--wsapi-host", LOCALHOST, "--wsapi-port", str(wsapi_port)]
        ports.append(wsapi_port)
    cmd += [*extra_args, *apps]

    with ExitStack() as stack:
        if log_path is None:
            log_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ryu-"))) / "ryu.log"
        log_path = Path(log_path)
        log = stack.enter_context(log_path.open("wb"))
        # Own session: a Ctrl-C at the terminal reaches pytest, whose unwinding stops Ryu.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        stack.callback(stop_process, proc)
        deadline = time.monotonic() + start_timeout
        try:
            for listen_port in ports:
                wait_for_port(LOCALHOST, listen_port, max(deadline - time.monotonic(), 0.0), process=proc)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(
                f"ryu-manager {' '.join(apps)} did not start: {exc}\n"
                f"--- last lines of {log_path} ---\n{log_tail(log_path)}"
            ) from exc
        yield proc


class ProbedController(RemoteController):
    """A remote controller whose reachability probe is a TCP connect. Mininet's own probe runs telnet and
    decodes what comes back as text, which fails now and then on the controller's binary OpenFlow hello
    (a UnicodeDecodeError that stops the start)."""

    def isListening(self, ip: str, port: int) -> bool:
        try:
            socket.create_connection((ip, port), timeout=2.0).close()
        except OSError:
            warn(f"Unable to contact the remote controller at {ip}:{port}\n")
            return False
        return True


def _wait_connected(switches: Sequence[OVSSwitch], timeout: float) -> None:
    # OVS publishes is_connected to its database on a 5 s stats timer, so this takes up
    # to ~5 s even though the OpenFlow handshake itself is done in milliseconds.
    deadline = time.monotonic() + timeout
    while pending := [switch.name for switch in switches if not switch.connected()]:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"switches {pending} not connected to their controller after {timeout:g} s")
        time.sleep(0.2)


def _delete_leftovers(switch_names: Sequence[str]) -> None:
    """Remove the bridges and root-namespace ports of these switches, if any remain.

    ``net.stop()`` normally removes them; this covers a build or start that failed halfway.
    Unlike ``mn -c`` it touches only our own names: no other run's bridges, processes or
    /tmp/*.log files.
    """
    if not switch_names:
        return
    del_br = ["ovs-vsctl", "--timeout=10"]
    for name in switch_names:
        del_br += ["--", "--if-exists", "del-br", name]
    result = _run(del_br)
    if result.returncode != 0:
        raise RuntimeError(f"could not delete bridges {list(switch_names)}: {result.stderr.strip()}")
    for link in os.listdir("/sys/class/net"):
        if any(link == name or link.startswith(f"{name}-") for name in switch_names):
            _run(["ip", "link", "del", link])


@contextmanager
def mininet_network(
    topo: Topo,
    *,
    controller_port: int,
    controller_ip: str = LOCALHOST,
    connect_timeout: float = 15.0,
    **mininet_options,
) -> Iterator[Mininet]:
    """Build and start ``topo`` against a remote controller; yields the running Mininet.

    Switches are OpenFlow 1.3 OVS bridges on the userspace datapath; hosts get MACs derived
    from their IPs. ``mininet_options`` are passed to Mininet and override these defaults.
    Returns once every switch reports a controller connection, and always stops the network
    and removes its bridges, ports and node shells on exit, including after a failed start.
    Switch names should come from ``switch_name`` so parallel runs cannot collide.
    """
    ensure_ovs_running()
    options = {
        "switch": partial(OVSSwitch, datapath="user", protocols="OpenFlow13"),
        "controller": partial(ProbedController, ip=controller_ip, port=controller_port),
        "autoSetMacs": True,
    } | mininet_options
    net = Mininet(topo=topo, build=False, **options)
    try:
        net.build()
        net.start()
        _wait_connected(net.switches, connect_timeout)
        yield net
    finally:
        try:
            net.stop()
        finally:
            # RemoteController.stop() is a no-op, so net.stop() leaves each controller
            # node's bash shell running until the interpreter exits.
            for controller in net.controllers:
                controller.terminate()
            _delete_leftovers(topo.switches())
