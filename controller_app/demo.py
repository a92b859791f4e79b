"""`dm-demo`: the whole live loop on one machine, from a trace to a summary of what the controller did.

Starts Open vSwitch (userspace datapath), the controller under `ryu-manager controller_app.app`, the
Mininet NF cluster (source, sink, N active and K standby NF instances) and the replay of a trace
window; prints the REST address and one line per period while it runs; then prints and writes a
summary (decisions, migrations, scenarios, packets sent / lost / reordered, decision and migration
latencies, and the closed loop's figures: SLA flow-seconds from the sink's per-packet delays,
instance-seconds, flows migrated twice, reversals, as twin.loop_metrics defines them). Everything it started is torn down on the way out, also on Ctrl-C, SIGTERM or an error.

    sudo .venv/bin/dm-demo --duration 60 --json summary.json

`live_loop(...)` is the same bring-up as a context manager, for the integration tests and the
benchmarks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller_app.config import LIVE_DEFAULTS
from mininet_topos.nf_cluster import LIVE_NF
from twin.flow import FlowKey
from twin.loop_metrics import flows_migrated_twice, instance_seconds, reversals, sla_violation_flow_seconds
from twin.records import SHIPPED_DIR, check_target

DEFAULT_POLICY = LIVE_DEFAULTS["policy"]
"""The policy dm-demo runs unless --policy says otherwise (any name of gnn_policy.registry): the
shipped checkpoint, gnn_policy/data/deepmigration.pt."""

# The default run: the sample trace from its start at half speed (60 s of wall time replay 30 trace
# seconds): 170-380 packets/s in 10 s windows, ~15 new flows/s, a peak of 770 packets/s in one second,
# 550 of them from one flow. A flow cannot be split, so one NF must absorb such a burst: 250 packets/s
# of capacity and an 800-packet buffer. Two active NFs run at ~50 % on average; bursts push one over
# Th_high (scale-out, a standby starts), quieter seconds leave one nearly idle (scale-in), uneven flows
# call for load balancing. Measured (docs/testbed.md): all three occur and no NF drops a packet.
DEFAULT_START_S = 0.0
DEFAULT_SPEED = 0.5
DEFAULT_INSTANCES, DEFAULT_STANDBY = 2, 2
DEFAULT_CAPACITY_PPS, DEFAULT_BUFFER_PACKETS, DEFAULT_PROCESSING_MS = LIVE_NF.values()  # 250.0, 800, 5.0
DEFAULT_NF_TIMEOUT_S = LIVE_DEFAULTS["nf_timeout_s"]
"""An export waits for the flow's queued frames to leave the source NF: up to a full buffer's 3.2 s."""
DEFAULT_QUIET_MS = LIVE_DEFAULTS["quiet_ms"]
"""How long a source NF waits for the flow's last in-flight frame before exporting its state; it must
cover the switch -> NF delay of a frame forwarded just before the rules changed, on a busy machine."""
DEFAULT_RULE_IDLE_S = LIVE_DEFAULTS["rule_idle_timeout_s"]
"""Idle timeout of the per-flow rules: a flow the controller still tracks is one that sent within it."""
WARM_UP_PERIODS = 2
"""The controller starts in manual mode and goes auto once the replay ran this many periods: an empty
cluster at start-up would otherwise be scaled in before the first packet."""
DRAIN_TIMEOUT_S = 10.0
RECORD_STAGING = "record.jsonl"
"""The controller's staged periods in the work directory (controller_app.recording), for --record."""


# --- REST ----------------------------------------------------------------------------------------
class RestClient:
    """The controller's REST API (`/deepmigration/v1`); `call` returns (status, JSON body)."""

    def __init__(self, base: str, token: str):
        self.base = base
        self._token = token

    def call(self, path: str, method: str = "GET", body: object | bytes | None = None,
             token: str | None | bool = True, timeout: float = 10.0) -> tuple[int, object]:
        """One request; `body` is sent as JSON unless it is bytes already. `token`: True sends the write
        token, False or None none, a string that one instead; `timeout` in s. Error statuses are returned too."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {self._token if token is True else token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def get(self, path: str) -> object:
        status, body = self.call(path, token=False)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body

    def flows(self, page: int = 1000) -> list[dict]:
        """Every steered flow: GET /flows `page` flows at a time, each page after the last id of the one before."""
        flows: list[dict] = []
        while True:
            query = urllib.parse.urlencode({"limit": page, **({"after": flows[-1]["id"]} if flows else {})})
            batch = self.get(f"/flows?{query}")
            flows += batch
            if len(batch) < page:
                return flows

    def write(self, path: str, method: str, body: object) -> object:
        """`method` (PUT, POST) `body` to `path` with the write token; the JSON answer, or RuntimeError on >= 300."""
        status, answer = self.call(path, method, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer


# --- bring-up ------------------------------------------------------------------------------------
@dataclass
class LiveLoop:
    """A running live loop: the Mininet cluster, the controller process and its REST API."""

    cluster: object  # mininet_topos.nf_cluster.RunningCluster
    controller: object  # subprocess.Popen of ryu-manager
    api: RestClient
    workdir: Path
    transition_log: Path
    decisions: dict[int, dict] = field(default_factory=dict)
    sla_ms: dict[str, float] = field(default_factory=dict)
    """Each flow's SLA (LA^f) as the controller drew it, by flow id, from every `poll_state`."""
    active: list[tuple[float, int]] = field(default_factory=list)
    """(time.monotonic(), active instances) at every `poll_state`."""

    def poll_decisions(self) -> list[dict]:
        """Fetch the latest decisions; returns the new ones (all are kept in `decisions` by id)."""
        new = [d for d in self.api.get("/decisions?limit=1000") if d["id"] not in self.decisions]
        for decision in new:
            self.decisions[decision["id"]] = decision
        return sorted(new, key=lambda d: d["id"])

    def poll_state(self) -> dict:
        """GET /state, returned; also keeps the active instance count and, from GET /flows, every flow's
        SLA (a flow stays in /flows for its rules' idle timeout, longer than a period, so none is missed)."""
        state = self.api.get("/state")
        self.active.append((time.monotonic(), sum(i["active"] for i in state["instances"])))
        self.sla_ms.update((flow["id"], flow["sla_ms"]) for flow in self.api.flows())
        return state

    def wait_for(self, condition: Callable[[], object], timeout: float, what: str, every: float = 0.2):
        """Poll `condition` until it returns something truthy (returned); TimeoutError naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_controller()
            if result := condition():
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s; controller log {self.workdir / 'ryu.log'}")
            time.sleep(every)

    def check_controller(self) -> None:
        if self.controller.poll() is not None:
            raise RuntimeError(f"ryu-manager exited with code {self.controller.returncode}; "
                               f"see {self.workdir / 'ryu.log'}")

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Wait until no NF holds or queues a frame, then for the last frames to reach the sink."""
        def empty():
            return all(c.report()["queue_packets"] == 0 for c in self.cluster.clients.values()
                       if not _dead(c))
        self.wait_for(empty, timeout, "the NF queues drain")
        time.sleep(0.5)


def _dead(client) -> bool:
    try:
        client.report()
    except (ConnectionError, TimeoutError, OSError):
        return True
    return False


@contextmanager
def live_loop(spec, *, config: dict | None = None, workdir: str | os.PathLike | None = None,
              token: str = "dm-demo-local-token") -> Iterator[LiveLoop]:
    """OVS, `ryu-manager controller_app.app` and the NF cluster `spec` (a ClusterSpec), up for the block.

    `config` is the controller config (controller_app.config.ControllerConfig fields); the token
    and the transition log (in `workdir`) are filled in. Everything is stopped on exit, in reverse
    order, whatever the exit.
    """
    from mininet_topos.nf_cluster import DESCRIPTION_FILE, describe, nf_cluster
    from mininet_topos.testbed import (
        LOCALHOST,
        enlarge_packet_in_queue,
        ensure_ovs_running,
        free_tcp_port,
        ryu_controller,
        switch_name,
    )

    with ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dm-live-"))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ensure_ovs_running()
        transition_log = workdir / "transitions.jsonl"
        transition_log.unlink(missing_ok=True)
        config = {"transition_log": str(transition_log), **(config or {}), "token": token}
        # The controller reads the cluster description when it starts, so it is written now; nf_cluster
        # writes the same document (same spec, workdir and switch name) before the switch connects.
        (workdir / DESCRIPTION_FILE).write_text(json.dumps(describe(spec, workdir, switch_name(1)), indent=1))
        (workdir / "controller.json").write_text(json.dumps(config, indent=1))
        (workdir / "ryu.conf").write_text(
            f"[deepmigration]\ncluster = {workdir / DESCRIPTION_FILE}\nconfig = {workdir / 'controller.json'}\n")
        port, wsapi_port = free_tcp_port(), free_tcp_port()
        controller = stack.enter_context(ryu_controller(
            ["controller_app.app"], port=port, wsapi_port=wsapi_port, log_path=workdir / "ryu.log",
            extra_args=["--config-file", str(workdir / "ryu.conf")]))
        cluster = stack.enter_context(nf_cluster(spec, controller_port=port, workdir=workdir))
        enlarge_packet_in_queue(cluster.switch)
        api = RestClient(f"http://{LOCALHOST}:{wsapi_port}/deepmigration/v1", token)
        loop = LiveLoop(cluster, controller, api, workdir, transition_log)
        loop.wait_for(lambda: api.get("/state")["switch_connected"], 15, "the switch connects to the controller")
        loop.wait_for(lambda: all(nf["alive"] for nf in api.get("/instances")), 15,
                      "every NF instance answers the controller")
        yield loop


# --- the summary ---------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


NF_COUNTERS = ("received", "processed", "forwarded", "dropped", "socket_dropped", "held", "queue_packets")


def summarise(decisions: list[dict], outcomes: dict, nf_reports: dict[str, dict],
              sink_socket_dropped: int, *, sla_ms: dict[str, float] | None = None,
              instance_s: float | None = None) -> dict:
    """The run's figures from the controller's decisions, the sender/sink outcome and the NF reports;
    packets lost are split into NF drops (a full buffer, by design), packets the kernel dropped on a
    full packet-socket queue (the machine, not the design) and the rest. `sla_ms` (flow id -> SLA) and
    `instance_s` come from the periodic state reads (`LiveLoop.poll_state`); without them the SLA
    figures and `instance_s` are None."""
    runs = [m for d in decisions for m in d["migrations"]]
    done = [m for m in runs if m["outcome"] == "done"]
    migrated = {m["flow"] for m in done}
    on_migrated = [f for f in outcomes["flows"].values() if FlowKey.of(*f["key"]).id in migrated]
    dropped = sum(r.get("dropped", 0) for r in nf_reports.values())
    socket_dropped = sum(r.get("socket_dropped", 0) for r in nf_reports.values()) + sink_socket_dropped
    return {
        "decisions": len(decisions),
        "decisions_executed": sum(bool(d["executed"]) for d in decisions),
        "scenarios": {kind: sum(d["scenario"] == kind for d in decisions) for kind in ("scale_out", "scale_in", "lb")},
        "migrations": len(done),
        "migrations_not_done": {outcome: sum(m["outcome"] == outcome for m in runs)
                                for outcome in ("skipped", "rolled_back", "rollback_failed")},
        "instances_started": sum(len(d["started"]) for d in decisions),
        "instances_stopped": sum(len(d["stopped"]) for d in decisions),
        "flows": len(outcomes["flows"]),
        "migrated_flows": len(migrated),
        "packets_sent": outcomes["sent"],
        "packets_received": outcomes["received"],
        "packets_lost": outcomes["lost"],
        "packets_dropped_by_nfs": dropped,
        "packets_dropped_by_sockets": socket_dropped,
        "packets_lost_elsewhere": outcomes["lost"] - dropped - socket_dropped,
        "packets_reordered": outcomes["reordered"],
        "packets_reordered_at_flow_setup": outcomes["reordered_at_setup"],
        "packets_reordered_after_setup": outcomes["reordered"] - outcomes["reordered_at_setup"],
        "nf_counters": {name: {counter: report.get(counter, 0) for counter in NF_COUNTERS}
                        for name, report in sorted(nf_reports.items())},
        "migrated_flows_packets_lost": sum(f["lost"] for f in on_migrated),
        "migrated_flows_packets_reordered_after_setup": sum(f["reordered"] - f["reordered_at_setup"]
                                                            for f in on_migrated),
        "decision_ms_p50": _percentile([d["decision_ms"] for d in decisions if d["origin"] == "policy"], 50),
        "decision_ms_p99": _percentile([d["decision_ms"] for d in decisions if d["origin"] == "policy"], 99),
        "migration_ms_p50": _percentile([m["duration_ms"] for m in done], 50),
        "migration_ms_p99": _percentile([m["duration_ms"] for m in done], 99),
        **delay_figures(outcomes, sla_ms),
        "instance_s": None if instance_s is None else round(instance_s, 3),
        "flows_migrated_twice": flows_migrated_twice((d["time"], m["flow"]) for d in decisions
                                                     for m in d["migrations"] if m["outcome"] == "done"),
        "reversals": reversals((d["time"], len(d["started"]), len(d["stopped"])) for d in decisions
                               if d["started"] or d["stopped"]),
    }


def delay_figures(outcomes: dict, sla_ms: dict[str, float] | None) -> dict:
    """From the sink's per-flow delay bins (`outcomes`, trace_replay.live.flow_outcomes): the packets' mean
    one-way delay, the 99th percentile of the flow-seconds' mean delays and, with each flow's SLA,
    `sla_violation_flow_s` (flow-seconds whose mean delay exceeds the flow's SLA; every flow) and
    `flows_without_sla` (flows the controller never listed: not judged)."""
    bins = [(FlowKey.of(*flow["key"]).id, packets, mean_ms)
            for flow in outcomes["flows"].values() for _, packets, mean_ms in flow.get("delay_bins", [])]
    packets = sum(count for _, count, _ in bins)
    figures = {"packet_delay_ms_mean": round(sum(c * ms for _, c, ms in bins) / packets, 3) if packets else None,
               "flow_s_delay_ms_p99": _percentile([ms for _, _, ms in bins], 99),
               "sla_violation_flow_s": None, "flows_without_sla": None}
    if sla_ms is not None:
        judged = [(ms, sla_ms[flow]) for flow, _, ms in bins if flow in sla_ms]
        figures["sla_violation_flow_s"] = sla_violation_flow_seconds(
            [ms for ms, _ in judged], [sla for _, sla in judged], outcomes.get("delay_bin_s", 1.0))
        figures["flows_without_sla"] = len({FlowKey.of(*f["key"]).id for f in outcomes["flows"].values()}
                                           - set(sla_ms))
    return figures


def progress_line(elapsed: float, state: dict, loop: LiveLoop) -> str:
    """One line of progress: `elapsed` s since the replay started, `state` a GET /state body, and the
    decisions and done migrations `loop` has polled so far."""
    decisions = loop.decisions.values()
    moves = sum(m["outcome"] == "done" for d in decisions for m in d["migrations"])
    load = " ".join(f"{i['id']}{'' if i['active'] else '-'}{'' if i['alive'] else '!'}:{i['utilisation']:.2f}"
                    for i in state["instances"])
    return (f"t={elapsed:5.1f}s  scenario={state['scenario'] or '-':9s} flows={state['flows']:4d}  "
            f"util[{load}]  decisions={len(decisions):3d} migrations={moves:4d}")


# --- the command ---------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace, out=print) -> dict:
    """Replay `args.trace` (the `dm-demo` flags) through a fresh live loop, passing `out` a progress line
    every period; returns the run's summary (`summarise`, plus the settings and the REST base URL)."""
    from mininet_topos.nf_cluster import ClusterSpec
    from trace_replay.live import flow_outcomes

    if args.record:
        check_target(args.record)  # a recording is never written over anything: refused before the network starts
    schedule = replay_schedule(args)  # fail early, before anything starts
    out(f"trace {args.trace}: {len(schedule.packets)} packets of {len(schedule.flows)} flows over "
        f"{schedule.duration_s:.0f} s, peak {schedule.peak_pps()} packets/s")
    spec = ClusterSpec(active=args.instances, standby=args.standby, capacity_pps=args.capacity,
                       buffer_packets=args.buffer, processing_ms=args.processing_ms)
    config = {"policy": args.policy, "period_s": args.period, "quiet_ms": args.quiet_ms, "mode": "manual",
              "rule_idle_timeout_s": DEFAULT_RULE_IDLE_S, "nf_timeout_s": DEFAULT_NF_TIMEOUT_S,
              "stabilizer": {"enabled": args.stabilizer == "on"}, "seed": args.seed, "explore": args.explore,
              "checkpoint": str(args.checkpoint or ""), "control_sampling": args.sample_control}
    with ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="dm-demo-"))
        if args.record:
            config["record_log"] = str(Path(workdir) / RECORD_STAGING)
            Path(config["record_log"]).unlink(missing_ok=True)  # a kept --workdir may hold an earlier run's
        loop = stack.enter_context(live_loop(spec, config=config, workdir=workdir))
        out(f"REST API: {loop.api.base}/state  (also /instances /flows /decisions /config; "
            f"dmctl --url {loop.api.base} state --follow); writes need 'Authorization: Bearer {loop.api._token}'")
        sent_log = Path(workdir) / "sent.json"
        replay = loop.cluster.start_replay(args.trace, sent_log, speed=args.speed, start=args.start,
                                           duration=args.duration * args.speed,
                                           **({"max_flows": args.max_flows} if args.max_flows else {}))
        started, started_wall = time.monotonic(), time.time()
        loop.poll_state()
        auto = False
        while replay.poll() is None:
            if not auto and time.monotonic() - started >= WARM_UP_PERIODS * args.period:
                loop.api.write("/config", "PUT", {"mode": "auto"})
                auto = True
            time.sleep(max(args.period - (time.monotonic() - started) % args.period, 0.05))
            loop.check_controller()
            loop.poll_decisions()
            out(progress_line(time.monotonic() - started, loop.poll_state(), loop))
        if replay.returncode != 0:
            raise RuntimeError(f"the replay failed (exit {replay.returncode}); see {workdir}/replay.log")
        loop.drain()
        loop.poll_decisions()
        loop.poll_state()
        reports = {name: client.report() for name, client in loop.cluster.clients.items() if not _dead(client)}
        sink = loop.cluster.sink_counts()
        outcomes = flow_outcomes(json.loads(sent_log.read_text()), sink)
        summary = {"policy": args.policy, "stabilizer": loop.api.get("/config")["stabilizer"],
                   "duration_s": round(time.monotonic() - started, 1),
                   "instances": args.instances, "standby": args.standby, "capacity_pps": args.capacity,
                   **summarise(sorted(loop.decisions.values(), key=lambda d: d["id"]), outcomes, reports,
                               sink["socket_dropped"], sla_ms=loop.sla_ms,
                               instance_s=instance_seconds(loop.active, end_s=loop.active[-1][0])),
                   "rest": loop.api.base}
        if args.record:
            summary["record"] = record_run(args, Path(workdir) / RECORD_STAGING, outcomes, started_wall)
    return summary


def replay_schedule(args: argparse.Namespace):
    """The replay of the `dm-demo` flags' window (trace_replay.live.load_schedule); ValueError when the window is
    empty or would peak above the packet rate the testbed keeps up with."""
    from trace_replay.live import load_schedule

    return load_schedule(args.trace, speed=args.speed, start_s=args.start, duration_s=args.duration * args.speed,
                         max_flows=args.max_flows)


def record_run(args: argparse.Namespace, staging: Path, outcomes: dict, replay_started: float | None = None) -> dict:
    """Write the run's recording (`--record`) from the controller's staged periods and the sink's delays;
    returns where it went and its period count, or the error (the summary is not lost with the recording).
    `replay_started`: the replay's wall-clock start (time.time()), so that a reader can tell the replay's
    periods from the warm-up and the drain."""
    from controller_app.recording import finish
    from twin.records import RecordingError

    meta = {"source": "testbed", "trace": args.trace.name, "start_s": args.start, "duration_s": args.duration,
            "speed": args.speed, "max_flows": args.max_flows, "policy": args.policy, "explore_eps": args.explore,
            "seed": args.seed, "stabilizer": args.stabilizer == "on", "period_s": args.period,
            "checkpoint": str(args.checkpoint or ""), "control_sampling": args.sample_control,
            "replay_started_wall_s": replay_started,
            "cluster": {"instances": args.instances, "standby": args.standby, "capacity_pps": args.capacity,
                        "buffer_packets": args.buffer, "processing_ms": args.processing_ms},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        directory = finish(staging, args.record, meta, outcomes, args.period)
    except RecordingError as error:
        return {"error": str(error)}
    return {"directory": str(directory), "periods": json.loads((directory / "meta.json").read_text())["tables"]
            ["periods"]}


def _parser() -> argparse.ArgumentParser:
    from trace_replay.cli_types import (
        non_negative_float,
        non_negative_int,
        output_file,
        positive_float,
        positive_int,
        rng_seed,
    )
    from trace_replay.generate import sample_path

    parser = argparse.ArgumentParser(prog="dm-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=positive_float, default=60.0, metavar="S", help="seconds of replay (default %(default)s)")
    parser.add_argument("--trace", type=Path, default=sample_path(), help="pcap to replay (default %(default)s)")
    parser.add_argument("--policy", default=DEFAULT_POLICY, help="migration policy (default %(default)s)")
    parser.add_argument("--instances", type=positive_int, default=DEFAULT_INSTANCES, help="active NF instances at start (default %(default)s)")
    parser.add_argument("--standby", type=non_negative_int, default=DEFAULT_STANDBY, help="standby NF instances (default %(default)s)")
    parser.add_argument("--json", type=output_file, metavar="OUT", help="also write the summary here")
    parser.add_argument("--start", type=non_negative_float, default=DEFAULT_START_S, metavar="S",
                        help="start S trace seconds into the trace (default %(default)s)")
    parser.add_argument("--speed", type=positive_float, default=DEFAULT_SPEED,
                        help="trace seconds per wall second; scales the packet rate too (default %(default)s)")
    parser.add_argument("--max-flows", type=positive_int, metavar="N", help="replay only the N busiest flows of the window")
    parser.add_argument("--capacity", type=positive_float, default=DEFAULT_CAPACITY_PPS, help="NF capacity, packets/s (default %(default)s)")
    parser.add_argument("--buffer", type=positive_int, default=DEFAULT_BUFFER_PACKETS, help="NF buffer, packets (default %(default)s)")
    parser.add_argument("--processing-ms", type=non_negative_float, default=DEFAULT_PROCESSING_MS, help="NF latency, ms (default %(default)s)")
    parser.add_argument("--period", type=positive_float, default=1.0, help="controller period T, seconds (default %(default)s)")
    parser.add_argument("--quiet-ms", type=non_negative_int, default=DEFAULT_QUIET_MS,
                        help="source-NF quiet time before export, ms (default %(default)s)")
    parser.add_argument("--stabilizer", choices=("on", "off"), default="on",
                        help="gnn_policy.stabilizer between the state and the policy, with the settings of "
                             "docs/controller.md (default %(default)s)")
    parser.add_argument("--workdir", type=Path, help="keep logs, cluster description and transitions here")
    parser.add_argument("--record", type=Path, metavar="DIR",
                        help="record every period's transition here (twin.records; a new or empty directory)")
    parser.add_argument("--explore", type=_probability, default=0.0, metavar="EPS",
                        help="with probability EPS per decision, a random valid migration set replaces the "
                             "policy's (gnn_policy.exploration; default %(default)s)")
    parser.add_argument("--seed", type=rng_seed, default=0, help="the controller's seed: SLA draws, exploration (default %(default)s)")
    parser.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="the network the deepmigration policies load (default: the shipped one)")
    parser.add_argument("--sample-control", action="store_true",
                        help="the control head draws act/hold and the target from its distribution (seeded by "
                             "--seed) instead of taking the most likely: on-policy learning on the testbed (default %(default)s)")
    learn = parser.add_argument_group("two loops (--learn; docs/agent.md, \"Two loops\")")
    learn.add_argument("--learn", type=Path, metavar="DIR",
                       help="run the paper's two loops instead of one replay, writing everything to DIR (new or "
                            "empty): live windows of --duration periods with agent 1, the twin calibrated on them, "
                            "agent 2 trained in it, eq. (8)'s blend; the stabilizer is off")
    learn.add_argument("--outer", type=positive_int, default=3, metavar="N", help="outer iterations Γ (default %(default)s)")
    learn.add_argument("--zeta", type=float, default=0.5, metavar="Z",
                       help="ζ of eq. (8): θ1 = ζ·θ1 + (1 − ζ)·θ2, in [0, 1] (default %(default)s)")
    learn.add_argument("--twin-iterations", type=positive_int, default=10, metavar="M",
                       help="agent 2's REINFORCE iterations in the calibrated twin per outer iteration (default %(default)s)")
    learn.add_argument("--live-lr", type=positive_float, default=5e-3, metavar="LR",
                       help="agent 1's Adam learning rate on its live periods, without --live-kl (default %(default)s)")
    learn.add_argument("--live-kl", type=positive_float, metavar="DELTA",
                       help="agent 1's step is a trust-region step instead: the longest along the gradient whose "
                            "mean KL(old ‖ new) over the window's decisions is at most DELTA (docs/agent.md)")
    learn.add_argument("--live-windows", type=positive_int, default=1, metavar="K",
                       help="live training windows per outer iteration, one step on all (default %(default)s)")
    learn.add_argument("--validation-repeats", type=positive_int, default=1, metavar="R",
                       help="runs of the live validation window per point: mean and spread (default %(default)s)")
    learn.add_argument("--calibration-data", default=str(SHIPPED_DIR), metavar="DIR",
                       help="recordings the twin is fitted on besides the live windows, or 'none' "
                            "(default %(default)s)")
    learn.add_argument("--lock", type=Path, metavar="FILE",
                       help="hold an exclusive flock on FILE during each live window only (e.g. /tmp/mininet.lock)")
    return parser


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1]")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("dm-demo: needs root (Mininet creates network namespaces and OVS bridges)", file=sys.stderr)
        return 2

    def stop(signum, _frame):  # SIGTERM unwinds like Ctrl-C, through every teardown
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    if args.learn is not None:
        from gnn_policy.two_loops import main_learn

        return main_learn(args)
    try:
        summary = run_demo(args, out=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("dm-demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, ValueError, OSError) as error:
        print(f"dm-demo: {error}", file=sys.stderr)
        return 1
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        from trace_replay.files import write_text

        try:
            write_text(args.json, text + "\n")
        except OSError as error:
            print(f"dm-demo: cannot write --json {args.json}: {error.strerror or error} "
                  "(the summary is above)", file=sys.stderr)
            return 1
    if "error" in summary.get("record", {}):
        print(f"dm-demo: the recording failed: {summary['record']['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
