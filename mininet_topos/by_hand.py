"""The NF cluster by hand: the Mininet CLI of `mn --custom mininet_topos/nf_cluster.py --topo nfcluster,A,S`.

`mn` builds and starts the network, then runs the `CLI` the custom file names, which is this one: before its
prompt it starts the sink and the NF processes (standbys inactive, ready to be activated), as `nf_cluster`
does for dm-demo, and only once they answer writes the cluster description to `run_dir.CLUSTER_PATH`, where
`ryu-manager controller_app.app` finds it. When the CLI ends (`exit`, end of input, SIGTERM or SIGHUP) the
description goes first (the controller lets go of the cluster), then the processes, then the run directory;
`mn` then stops the network as usual. Commands besides Mininet's:

    replay [PCAP] [--speed X] [--start S] [--duration S] [--max-flows N]
    nf [NAME]

Runs in `mn`'s system Python with the project's virtual environment added (`nf_cluster.enter_project_environment`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mininet.cli import CLI
from mininet.log import error, output

from mininet_topos.lifecycle import write_json_atomically
from mininet_topos.nf_cluster import RunningCluster, describe, disable_ipv6
from mininet_topos.run_dir import CLUSTER_PATH, SessionBusy, run_dir_session
from mininet_topos.testbed import enlarge_packet_in_queue, ensure_ovs_running, log_tail, stop_process

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "trace_replay" / "data" / "lbnl_sample.pcap.gz"
START_TIMEOUT_S = 15.0
DRAIN_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 5.0


class _Hangup(BaseException):
    """SIGTERM or SIGHUP (the terminal closed): leave the CLI the way `exit` does, so everything stops."""


@contextmanager
def _leave_on_signals() -> Iterator[None]:
    def leave(signum, _frame):
        raise _Hangup(signal.Signals(signum).name)

    previous = {number: signal.signal(number, leave) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def cluster_session(net, spec, python: str) -> Iterator[RunningCluster]:
    """The sink and NF processes of `spec` on the running network `net`, and the cluster description at
    CLUSTER_PATH, for the block; everything removed afterwards (description first)."""
    with run_dir_session() as workdir, ExitStack() as stack:
        switch = net.switches[0].name
        ensure_ovs_running()  # already running (mn started the switch); this sets its datapath max-idle
        enlarge_packet_in_queue(switch)
        disable_ipv6(net)
        description = describe(spec, workdir, switch) | {"session": {"pid": os.getpid(), "started": time.time()}}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cluster = RunningCluster(net, description, workdir, stack, python=python, env=env)
        cluster.start_services(START_TIMEOUT_S)
        write_json_atomically(CLUSTER_PATH, description)
        stack.callback(CLUSTER_PATH.unlink, missing_ok=True)  # undone first: the controller lets go first
        yield cluster


class NFClusterCLI(CLI):
    """Mininet's CLI around a running NF cluster, with `replay` and `nf`."""

    def __init__(self, mininet, stdin=sys.stdin, script=None, *, python: str, **kwargs):
        self.cluster: RunningCluster | None = None
        spec = getattr(mininet.topo, "spec", None)
        if spec is None:  # another topology given with this custom file: a plain Mininet CLI
            super().__init__(mininet, stdin, script, **kwargs)
            return
        self._python = python
        self._replays = 0
        try:
            with _leave_on_signals(), cluster_session(mininet, spec, python) as cluster:
                self.cluster = cluster
                output(_banner(cluster))
                super().__init__(mininet, stdin, script, **kwargs)
        except _Hangup as signal_name:
            output(f"\n*** {signal_name}: stopping the NF cluster\n")
        except (SessionBusy, RuntimeError, OSError, subprocess.SubprocessError) as problem:
            error(f"*** the NF cluster: {problem}; stopped\n")

    def do_replay(self, line: str) -> None:
        """replay [PCAP] [--speed X] [--start S] [--duration S] [--max-flows N]
        Replay PCAP (default: the shipped LBNL-like sample) from src through the NF cluster to sink: the
        trace clock divided by X (default 1), from S trace seconds in, for S seconds of wall time (default:
        to the end), only the N busiest flows. Prints progress every 5 s and, at the end, one JSON line:
        flows, packets_sent, packets_received, packets_lost, packets_reordered (of them at flow set-up) and
        packets_dropped_by_nfs, as dm-demo's summary counts them. Ctrl-C stops the replay early and still
        counts what was sent."""
        try:
            args = _replay_parser().parse_args(shlex.split(line))
        except ValueError as problem:
            error(f"*** replay: {problem}\n*** usage: {_replay_parser().format_usage()}")
            return
        if self.cluster is None:
            error("*** replay: no NF cluster runs (the topology is not nfcluster)\n")
            return
        if not args.pcap.is_file():
            error(f"*** replay: no such trace file: {args.pcap}\n")
            return
        try:
            self._result(json.dumps(self._replay(args)))
        except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError) as problem:
            error(f"*** replay failed: {problem}\n")

    def do_nf(self, line: str) -> None:
        """nf [NAME]
        Each NF's status, queue, load (packets/s processed over the last half second), utilisation, flows
        and drops; with NAME, that NF's line and its busiest flows."""
        if self.cluster is None:
            error("*** nf: no NF cluster runs (the topology is not nfcluster)\n")
            return
        names = line.split() or list(self.cluster.clients)
        unknown = [name for name in names if name not in self.cluster.clients]
        if unknown:
            error(f"*** nf: no NF named {unknown[0]}; the NFs: {' '.join(self.cluster.clients)}\n")
            return
        first = {name: _report(self.cluster.clients[name]) for name in names}
        time.sleep(0.5)
        lines = []
        for name in names:
            report = _report(self.cluster.clients[name])
            lines.append(_nf_line(name, first[name], report, 0.5))
            if line.split() and report:
                lines += [f"    {' '.join(map(str, flow['key']))}  {flow['packets']} packets  {flow['bytes']} bytes"
                          for flow in sorted(report["flows"], key=lambda f: -f["packets"])[:10]]
        self._result("\n".join(lines))

    def _result(self, text: str) -> None:
        """A command's result on standard output (Mininet's messages go to standard error), on lines of its
        own also when the CLI reads a pipe (no newline after the prompt then)."""
        print(text if self.isatty() else "\n" + text, flush=True)

    def _replay(self, args: argparse.Namespace) -> dict:
        cluster = self.cluster
        self._replays += 1
        sent_log = cluster.workdir / f"sent-{self._replays}.json"
        cluster.start_sink(START_TIMEOUT_S)  # counts from zero for this replay
        dropped_before = _nf_dropped(cluster)
        options = {"speed": args.speed, "start": args.start}
        options |= {"duration": args.duration * args.speed} if args.duration else {}
        options |= {"max_flows": args.max_flows} if args.max_flows else {}
        sender = cluster.start_replay(args.pcap.resolve(), sent_log, **options)
        output(f"*** replaying {args.pcap} from src to sink (speed {args.speed:g}); Ctrl-C stops it\n")
        try:
            self._follow(sender)
        except KeyboardInterrupt:
            output("\n*** replay stopped; counting what was sent\n")
            stop_process(sender)
        if not sent_log.exists():
            raise RuntimeError(f"the replay failed (exit {sender.returncode}):\n"
                               f"{log_tail(cluster.workdir / 'replay.log', lines=5)}")
        cluster.wait_drained(DRAIN_TIMEOUT_S)
        cluster.sink_counts()
        totals = subprocess.run([self._python, "-m", "trace_replay.live", "outcome", str(sent_log),
                                 str(cluster.sink_log)], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        return json.loads(totals.stdout) | {"packets_dropped_by_nfs": _nf_dropped(cluster) - dropped_before}

    def _follow(self, sender: subprocess.Popen) -> None:
        """Wait for the sender, with a line of NF figures every PROGRESS_EVERY_S."""
        started = last = time.monotonic()
        reports = {name: _report(client) for name, client in self.cluster.clients.items()}
        while sender.poll() is None:
            time.sleep(0.1)
            if (now := time.monotonic()) - last >= PROGRESS_EVERY_S:
                latest = {name: _report(client) for name, client in self.cluster.clients.items()}
                output(f"t={now - started:4.0f}s  " + "  ".join(
                    _nf_line(name, reports[name], latest[name], now - last, brief=True) for name in latest) + "\n")
                reports, last = latest, now


def _banner(cluster: RunningCluster) -> str:
    nfs = cluster.nfs.values()
    active = [nf["instance"] for nf in nfs if nf["active"]]
    standby = [nf["instance"] for nf in nfs if not nf["active"]]
    first = next(iter(nfs))
    return (f"*** NF cluster up: sink, {len(active)} active NF ({' '.join(active)}) and {len(standby)} standby "
            f"({' '.join(standby) or '-'}), each {first['capacity_pps']:g} packets/s, buffer "
            f"{first['buffer_packets']}, {first['processing_ms']:g} ms\n"
            f"*** cluster description for the controller: {CLUSTER_PATH}\n"
            "*** commands: replay [PCAP] [--speed X] [--start S] [--duration S] [--max-flows N]; nf [NAME]; "
            "help replay\n")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(message)


def _replay_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="replay", add_help=False)
    parser.add_argument("pcap", type=Path, nargs="?", default=SAMPLE)
    parser.add_argument("--speed", type=_positive, default=1.0)
    parser.add_argument("--start", type=_non_negative, default=0.0)
    parser.add_argument("--duration", type=_positive)
    parser.add_argument("--max-flows", type=int)
    return parser


def _positive(text: str) -> float:
    if not float(text) > 0:
        raise ValueError(f"{text} is not > 0")
    return float(text)


def _non_negative(text: str) -> float:
    if not float(text) >= 0:
        raise ValueError(f"{text} is not >= 0")
    return float(text)


def _report(client) -> dict | None:
    """The NF's report, or None if it does not answer."""
    try:
        return client.report()
    except (OSError, RuntimeError):
        return None


def _nf_dropped(cluster: RunningCluster) -> int:
    return sum(report["dropped"] for client in cluster.clients.values() if (report := _report(client)))


def _nf_line(name: str, before: dict | None, after: dict | None, seconds: float, brief: bool = False) -> str:
    """One NF's figures; its load is the packets it processed between two reports `seconds` apart."""
    if after is None:
        return f"{name} dead"
    load = (after["processed"] - before["processed"]) / seconds if before else 0.0
    status = "active" if after["active"] else "standby"
    if brief:
        return f"{name}{'' if after['active'] else '-'} {load:.0f}pps q{after['queue_packets']} f{len(after['flows'])}"
    return (f"{name}  {status:7s}  load {load:6.1f} packets/s ({100 * load / after['capacity_pps']:5.1f} %)  "
            f"queue {after['queue_packets']}/{after['buffer_packets']}  flows {len(after['flows'])}  "
            f"held {len(after['held'])}  dropped {after['dropped']}")
