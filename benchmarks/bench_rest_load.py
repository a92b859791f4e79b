"""REST load on the live loop: while dm-demo's loop replays the shipped sample (real Mininet, Open vSwitch and
`ryu-manager controller_app.app`), a bounded open-loop client sends `--rate` requests/s for `--seconds` to the
controller's REST API on 127.0.0.1, and the benchmark reports whether the controller kept up. Needs root.

    flock /tmp/mininet.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_rest_load.py --json load.json
    ... bench_rest_load.py --rate 0          # the same run without the load: the baseline of the lateness

The requests are a fixed mix (`MIX`) of every read the API offers (state, instances, flows, decisions, config,
metrics at both paths), authorised writes (PATCH /config, and `--moves-per-s` manual migrations of a flow the
controller lists to another active instance, with the token) and bad ones (no token, a wrong token, a body that
is no JSON, a bad query, a method not allowed), each with the statuses it may get. Requests are issued on
schedule (request k at k / rate s) by a pool of `--workers` threads, each with its own keep-alive session; the
latency is from the moment a request is sent to its answer, the start lag how late it was sent.

Reported: status counts (a 5xx, a connection error or a status the request's kind cannot get fails the run),
request latency p50/p99/max, the controller period's lateness p50/p99/max over the periods of the load window
(from the transition log: each period's state time; lateness = the time between consecutive periods' starts
minus `period_s`, so a period that executes migrations is late by their duration with or without load), the
controller's CPU, and from the sink the packets lost (split as dm-demo splits them: only NF drops are allowed)
and reordered after flow set-up (none allowed).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests

from benchmarks.bench_soak import cpu_seconds, machine, percentiles
from controller_app import demo
from controller_app.rest import METRICS, PREFIX
from mininet_topos.nf_cluster import ClusterSpec
from trace_replay.generate import sample_path
from trace_replay.live import flow_outcomes

WRONG_TOKEN = "not-the-token-of-this-controller"
MIX = {  # kind: (weight per 200 requests, method, path, token, body, the statuses it may get)
    "state": (40, "GET", PREFIX + "/state", None, None, {200}),
    "instances": (25, "GET", PREFIX + "/instances", None, None, {200}),
    "flows": (30, "GET", PREFIX + "/flows", None, None, {200}),
    "decisions": (30, "GET", PREFIX + "/decisions?limit=20", None, None, {200}),
    "config": (15, "GET", PREFIX + "/config", None, None, {200}),
    "metrics": (15, "GET", PREFIX + METRICS, None, None, {200}),
    "root_metrics": (10, "GET", METRICS, None, None, {200}),
    "patch_config": (20, "PATCH", PREFIX + "/config", True, {"mode": "auto"}, {200}),
    "no_token": (5, "POST", PREFIX + "/migrations", None, {"migrations": []}, {401}),
    "wrong_token": (4, "PUT", PREFIX + "/config", WRONG_TOKEN, {"mode": "auto"}, {403}),
    "bad_json": (3, "PATCH", PREFIX + "/config", True, b"{not json", {400}),
    "bad_limit": (2, "GET", PREFIX + "/decisions?limit=x", None, None, {400}),
    "not_allowed": (1, "DELETE", PREFIX + "/state", None, None, {405}),
}
MOVE_STATUSES = {202, 404, 409, 429}
"""A manual migration: queued, or refused because the flow left or the state changed since it was read (404,
409), or the queue of 16 is full (429)."""


@dataclass
class Load:
    """The client side: what every request got."""

    server: str
    """http://host:port, without the API's prefix"""
    token: str
    statuses: Counter = field(default_factory=Counter)
    by_kind: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    """by kind"""
    lag_ms: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    flows: list = field(default_factory=list)
    instances: list = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def send(self, kind: str, due: float) -> None:
        """Send one request of `kind` (a MIX key or "move"), scheduled for `due` (time.monotonic())."""
        method, path, token, body, allowed = self._request(kind)
        url = self.server + path
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {self.token if token is True else token}"
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = time.monotonic()
        try:
            response = self.session().request(method, url, data=data, headers=headers, timeout=10)
            status, answer = response.status_code, response.content
        except requests.RequestException as error:
            status, answer = type(error).__name__, str(error).encode()
        answered = time.monotonic()
        self._keep(kind, path, status, answer)
        with self._lock:
            self.statuses[status] += 1
            self.by_kind.setdefault(kind, Counter())[status] += 1
            self.latency_ms.setdefault(kind, []).append((answered - sent) * 1000.0)
            self.lag_ms.append((sent - due) * 1000.0)
            if status not in allowed:
                self.unexpected.append({"kind": kind, "status": status, "answer": answer[:300].decode(errors="replace")})

    def _request(self, kind: str) -> tuple:
        if kind != "move":
            return MIX[kind][1:]
        flows, instances = self.flows, self.instances
        movable = [f for f in flows if f["instance"] in instances]
        if not movable or len(instances) < 2:  # nothing to move: an empty action, authorised but refused
            return "POST", PREFIX + "/migrations", True, {"migrations": []}, {400}
        flow = self.rng.choice(movable)
        dst = self.rng.choice([i for i in instances if i != flow["instance"]])
        return "POST", PREFIX + "/migrations", True, {"migrations": [{"flow": flow["id"], "src": flow["instance"],
                                                             "dst": dst}]}, MOVE_STATUSES

    def _keep(self, kind: str, path: str, status, answer: bytes) -> None:
        """The moves are drawn from the latest flows and active instances the load itself read."""
        if status != 200 or kind not in ("flows", "instances"):
            return
        body = json.loads(answer)
        if kind == "flows":
            self.flows = body
        else:
            self.instances = [i["id"] for i in body if i["active"] and i["alive"]]


def schedule(rate: float, seconds: float, moves_per_s: float, seed: int,
             phase_s: float | None = None) -> list[tuple[float, str]]:
    """(offset s, kind) of every request: `rate` per s drawn from MIX by weight, plus the moves, in time order;
    none at rate 0 (the baseline). With `phase_s`, only in the even phases (0 to phase_s, 2 phase_s to 3 ...)."""
    if rate == 0:
        return []
    rng = random.Random(seed)
    kinds, weights = list(MIX), [MIX[k][0] for k in MIX]
    plan = [(k / rate, kind) for k, kind in enumerate(rng.choices(kinds, weights, k=int(rate * seconds)))]
    if moves_per_s > 0:
        plan += [(k / moves_per_s + 0.5 / max(rate, 1.0), "move") for k in range(int(moves_per_s * seconds))]
    return sorted(p for p in plan if phase_s is None or loaded(p[0], phase_s))


def loaded(offset: float, phase_s: float | None) -> bool:
    """Whether `offset` s into the run falls in a phase with load (every phase without `phase_s`)."""
    return phase_s is None or int(offset // phase_s) % 2 == 0


def run_load(load: Load, plan: list[tuple[float, str]], workers: int, seconds: float) -> tuple[float, float]:
    """Issue `plan` on schedule, over `seconds` at least; returns (start, end) in time.monotonic()."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load") as pool:
        for offset, kind in plan:
            due = started + offset
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            pool.submit(load.send, kind, due)
        time.sleep(max(started + seconds - time.monotonic(), 0.0))
    return started, time.monotonic()


def lateness(transition_log: Path, period_s: float, start: float, end: float, phase_s: float | None = None) -> dict:
    """The periods' lateness (ms) within [start, end] (time.monotonic(), the controller's clock): the time
    between consecutive periods' starts minus the period; split into the previous period's own work (its
    policy's decision and the execution of its moves, which the loop waits for) and the rest (collecting
    the state, and waiting for the process: the event loop, the CPU). With `phase_s`, also apart for the
    periods that started in a phase with load and in one without."""
    lines = [json.loads(line) for line in transition_log.read_text().splitlines() if line]
    periods = [(after["state"]["time"], (after["state"]["time"] - before["state"]["time"] - period_s) * 1000.0,
                before["timings"]["decision_ms"] + before["timings"]["execution_ms"])
               for before, after in itertools.pairwise(lines) if start <= after["state"]["time"] <= end]
    figures = lateness_figures(periods)
    if phase_s is not None:
        figures["with_load"] = lateness_figures([p for p in periods if loaded(p[0] - start, phase_s)])
        figures["without_load"] = lateness_figures([p for p in periods if not loaded(p[0] - start, phase_s)])
    return figures


def lateness_figures(periods: list[tuple[float, float, float]]) -> dict:
    late, work = [p[1] for p in periods], [p[2] for p in periods]
    return {"periods": len(late), **percentiles(late), "previous_period_work_ms": percentiles(work),
            "rest_ms": percentiles([t - w for t, w in zip(late, work, strict=True)])}


ACCESS_LINE = re.compile(r'"(\w+) ([^ ?"]+)\S* HTTP/1\.\d" (\d+) \d+ ([\d.]+)$')
"""eventlet.wsgi's access log line in ryu.log: method, path, status, bytes and the seconds the server spent."""


def server_time(ryu_log: Path, wall_s: float) -> dict:
    """From the controller's access log (eventlet's: a request's time from its parsed headers to its answer
    written, waiting for its turn included): per method and path, the requests and their times (ms p50/p99/max
    and in all), and the sum of all those times over `wall_s` (requests overlap; the demo's own reads count)."""
    spent: dict[str, list[float]] = {}
    for line in ryu_log.read_text(errors="replace").splitlines():
        if match := ACCESS_LINE.search(line):
            spent.setdefault(f"{match[1]} {match[2]}", []).append(float(match[4]) * 1000.0)
    total_ms = sum(sum(ms) for ms in spent.values())
    return {"server_s_per_wall_s": round(total_ms / 1000.0 / wall_s, 3),
            "by_path": {path: {"requests": len(ms), **percentiles(ms), "total_s": round(sum(ms) / 1000.0, 2)}
                        for path, ms in sorted(spent.items(), key=lambda item: -sum(item[1]))}}


def client_cpu_s() -> float:
    """This process's user + system CPU seconds: what the load itself costs the shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench(args: argparse.Namespace) -> dict:
    """One dm-demo run with the load from its warm-up to the end of the replay; the figures."""
    spec = ClusterSpec(active=demo.DEFAULT_INSTANCES, standby=demo.DEFAULT_STANDBY,
                       capacity_pps=demo.DEFAULT_CAPACITY_PPS, buffer_packets=demo.DEFAULT_BUFFER_PACKETS,
                       processing_ms=demo.DEFAULT_PROCESSING_MS)
    config = {"policy": args.policy, "period_s": args.period, "quiet_ms": demo.DEFAULT_QUIET_MS, "mode": "manual",
              "rule_idle_timeout_s": demo.DEFAULT_RULE_IDLE_S, "nf_timeout_s": demo.DEFAULT_NF_TIMEOUT_S,
              "stabilizer": {"enabled": True}}  # dm-demo's default
    plan = schedule(args.rate, args.seconds, args.moves_per_s, args.seed, args.phase_s)
    kept = contextlib.nullcontext(args.workdir) if args.workdir else None
    with kept or tempfile.TemporaryDirectory(prefix="dm-rest-load-") as workdir, \
            demo.live_loop(spec, config=config, workdir=workdir) as loop:
        sent_log = Path(workdir) / "sent.json"
        warm_up = demo.WARM_UP_PERIODS * args.period
        replay = loop.cluster.start_replay(args.trace, sent_log, speed=args.speed,
                                           duration=(args.seconds + warm_up + 2 * args.period) * args.speed)
        time.sleep(warm_up)
        loop.api.write("/config", "PUT", {"mode": "auto"})
        load = Load(loop.api.base.removesuffix(PREFIX), loop.api._token)
        cpu_before, client_before = cpu_seconds(loop.controller.pid), client_cpu_s()
        start, end = run_load(load, plan, args.workers, args.seconds)
        cpu_s, client_s = cpu_seconds(loop.controller.pid) - cpu_before, client_cpu_s() - client_before
        if replay.wait(timeout=args.seconds + 60) != 0:
            raise RuntimeError(f"the replay failed (exit {replay.returncode}); see {workdir}/replay.log")
        loop.drain()
        loop.poll_decisions()
        loop.check_controller()
        reports = {name: client.report() for name, client in loop.cluster.clients.items()}
        sink = loop.cluster.sink_counts()
        outcomes = flow_outcomes(json.loads(sent_log.read_text()), sink)
        summary = demo.summarise(sorted(loop.decisions.values(), key=lambda d: d["id"]), outcomes, reports,
                                 sink["socket_dropped"])
        late = lateness(loop.transition_log, args.period, start, end, args.phase_s)
        server = server_time(loop.workdir / "ryu.log", end - start)
    return {"requests": sum(load.statuses.values()), "load_s": round(end - start, 1),
            "requests_per_s": round(sum(load.statuses.values()) / (end - start), 1),
            "statuses": {str(k): v for k, v in sorted(load.statuses.items(), key=str)},
            "by_kind": {kind: {str(k): v for k, v in c.items()} for kind, c in sorted(load.by_kind.items())},
            "server_errors": sum(v for k, v in load.statuses.items() if isinstance(k, int) and k >= 500),
            "connection_errors": sum(v for k, v in load.statuses.items() if not isinstance(k, int)),
            "unexpected": load.unexpected[:20], "unexpected_count": len(load.unexpected),
            "latency_ms": percentiles([ms for values in load.latency_ms.values() for ms in values]),
            "latency_ms_by_kind": {kind: percentiles(ms) for kind, ms in sorted(load.latency_ms.items())}, "start_lag_ms": percentiles(load.lag_ms),
            "period_lateness_ms": late, "server_time": server, "controller_cpu_percent_of_one_core": round(100 * cpu_s / (end - start), 1),
            "client_cpu_percent_of_one_core": round(100 * client_s / (end - start), 1),
            **{name: summary[name] for name in (
                "decisions", "decisions_executed", "migrations", "packets_sent", "packets_received", "packets_lost",
                "packets_dropped_by_nfs", "packets_dropped_by_sockets", "packets_lost_elsewhere",
                "packets_reordered_at_flow_setup", "packets_reordered_after_setup")}}


def failures(result: dict) -> list[str]:
    """What the run must not show: 5xx, connection errors, unexpected statuses, loss but NF drops, reordering."""
    checks = {"server_errors": "5xx answers", "connection_errors": "requests without an answer",
              "unexpected_count": "answers with a status their request cannot get",
              "packets_dropped_by_sockets": "packets dropped by packet sockets",
              "packets_lost_elsewhere": "packets lost elsewhere than in an NF buffer",
              "packets_reordered_after_setup": "packets reordered after flow set-up"}
    return [f"{result[name]} {what}" for name, what in checks.items() if result[name]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s (0: no load, the baseline)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--moves-per-s", type=float, default=0.5, help="authorised manual migrations per s")
    parser.add_argument("--workers", type=int, default=32, help="client threads (default 32)")
    parser.add_argument("--trace", type=Path, default=sample_path(), help="pcap to replay (default: the sample)")
    parser.add_argument("--speed", type=float, default=demo.DEFAULT_SPEED, help="trace seconds per wall second")
    parser.add_argument("--policy", default=demo.DEFAULT_POLICY)
    parser.add_argument("--period", type=float, default=1.0, help="controller period T, seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures here")
    parser.add_argument("--phase-s", type=float, metavar="S",
                        help="load S seconds on, S off, in turn, and the lateness of each apart (an A/B under "
                             "the same machine load)")
    parser.add_argument("--workdir", type=Path, help="keep the controller's log and transition log here")
    args = parser.parse_args(argv)
    if (args.rate < 0 or args.seconds <= 0 or args.moves_per_s < 0 or args.workers < 1
            or (args.phase_s is not None and not args.phase_s > 0)):
        parser.error("--rate and --moves-per-s must be >= 0, --seconds and --phase-s > 0 and --workers >= 1")
    if os.geteuid() != 0:
        print("bench_rest_load: needs root (Mininet, Open vSwitch)", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    result = {"benchmark": "rest_load", "date": started.isoformat(timespec="seconds"), "machine": machine(),
              "load_average": os.getloadavg(), "args": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()},
              **bench(args)}
    result["load_average_after"] = os.getloadavg()
    result["failures"] = failures(result)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
