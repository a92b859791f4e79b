"""Soak benchmark of the live loop: keep the controller migrating flows under trace traffic until N
migrations have completed, then report per-flow loss and reordering, migration latency and the
controller's CPU and memory. Needs root (Mininet, Open vSwitch); not run in CI (its short version is
tests/test_bench_soak_live.py).

    flock /tmp/mininet.lock env PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_soak.py   # 1,000 migrations
    ... bench_soak.py --migrations 10000 --max-minutes 24 --json soak.json

One dm-demo bring-up (cluster, NF sizes and controller config; one `ryu-manager` throughout) runs the
whole soak in rounds: each replays the next `--window` trace seconds at `--speed`, cycling over the
trace's windows that stay within the testbed's packet rate (on the shipped sample at speed 0.5: the
30 s windows from 0, 30 and 90 s; the others peak above 2,000 packets/s). Each round restarts the sink,
which counts per flow id and sequence number of one replay, and counts the NFs' drops from its start.
`--max-minutes` starts no round after that long (the Mininet lock is shared): the JSON's `stopped_by`
says what ended the run, so a run that stopped early is not mistaken for the full count.

Th_var is lowered to `--var` (default 0: any imbalance) so that every period that is neither a
scale-out nor a scale-in balances load, and the policy keeps moving flows; Th_high and Th_low stay
at the controller's defaults, so scale-out and scale-in happen too. Once N migrations are done the
controller goes to manual mode and the replay is stopped; the round still drains and is counted.
Loss is split as dm-demo splits it (NF drops by design, packet-socket drops, elsewhere); reordering
into flow set-up (packets the controller forwarded itself) and migrations. Controller CPU is the
ryu-manager process's utime+stime (/proc/<pid>/stat) over the replays, as % of one core; its memory is
VmRSS (/proc/<pid>/status) at the start, every period and after every round: start, end, max and the
least-squares slope after the first round, per 1,000 migrations and per hour.

Loss outside the NFs is looked for in the switch too: around every round the drop counters of Open vSwitch
(its drop events, the kernel's drops on the switch's ports and on the packet sockets its userspace datapath
reads the ports from) are read, and `packets_lost_unaccounted` is what even they do not explain. Each flow
of note says whether it comes back within the round after its rules idled out (`returning`: it lands anew,
maybe on another instance, without a migration) and the most packets it sends within 100 ms.
`--workdir` keeps the controller's and the NFs' logs and the sent and sink counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from controller_app import demo
from mininet_topos.nf_cluster import ClusterSpec
from trace_replay.generate import sample_path
from trace_replay.live import ReplaySchedule, flow_outcomes, load_schedule
from twin.flow import FlowKey

ADDITIVE = (
    "decisions",
    "decisions_executed",
    "migrations",
    "instances_started",
    "instances_stopped",
    "flows",
    "migrated_flows",
    "packets_sent",
    "packets_received",
    "packets_lost",
    "packets_dropped_by_nfs",
    "packets_dropped_by_sockets",
    "packets_lost_elsewhere",
    "packets_reordered",
    "packets_reordered_at_flow_setup",
    "migrated_flows_packets_lost",
    "migrated_flows_packets_reordered_after_setup",
)
"""Fields of demo.summarise that add up over rounds; the percentiles are recomputed over all rounds."""


SWITCH_DROP_EVENTS = ("drop_action_", "datapath_drop_")
"""OVS's coverage events that count a packet dropped: by the OpenFlow pipeline (`drop_action_*`: a rule with no
action, a table miss with nowhere to go ...) or in the datapath (`datapath_drop_*`)."""
CONTROLLER_COPIES = "datapath_drop_userspace_action_error"
"""A copy for the controller (the landing rule's last action) the datapath could not hand over: the copy is
dropped, not the packet, whose output to its NF came before it in the same actions."""
BURST_S = 0.1


def switch_drops(switch: str) -> dict[str, int]:
    """Packets dropped in the switch so far: OVS's drop events (`ovs-appctl coverage/show` totals; the whole
    ovs-vswitchd, which serves one Mininet network at a time), the kernel's drop counters of the switch's
    ports (a veth drops a frame its peer has no room for) and the drops of the packet sockets OVS's userspace
    datapath reads each port from (`ss -0 -m`: a frame that finds the socket's receive buffer full)."""
    shown = subprocess.run(["ovs-appctl", "coverage/show"], capture_output=True, text=True, timeout=10,
                           check=True).stdout
    counts = {line.split()[0]: int(line.rsplit("total:", 1)[1]) for line in shown.splitlines()
              if line.startswith(SWITCH_DROP_EVENTS) and "total:" in line}
    for port in sorted(Path("/sys/class/net").glob(f"{switch}-eth*")):
        for counter in ("rx_dropped", "tx_dropped"):
            counts[f"{port.name} {counter}"] = int((port / "statistics" / counter).read_text())
    sockets = subprocess.run(["ss", "-0", "-m", "-p"], capture_output=True, text=True, timeout=10, check=True).stdout
    for port, drops in re.findall(rf"\*:({re.escape(switch)}-eth\d+) .*?ovs-vswitchd.*?,d(\d+)\)", sockets):
        counts[f"{port} ovs socket drops"] = int(drops)  # its receive buffer was full: OVS read too slowly
    return counts


def drops_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The drop counters that grew from `before` to `after`, by how much (a port's counters count per port)."""
    grown = {name: count - before.get(name, 0) for name, count in after.items()}
    return {name: n for name, n in sorted(grown.items()) if n > 0}


def data_drops(drops: dict[str, int]) -> int:
    """The switch's drops that may be replayed packets: all but the controller's copies."""
    return sum(n for name, n in drops.items() if name != CONTROLLER_COPIES)


def window_flows(schedule: ReplaySchedule, idle_timeout_s: float) -> dict[str, dict]:
    """Per flow id of a replay: whether it comes back after a silence of at least `idle_timeout_s` (its rules
    idle out and it lands afresh, maybe elsewhere: no migration, yet a change of instance) and the most
    packets it sends within BURST_S."""
    ts, flows = schedule.packets["ts"], schedule.packets["flow"]
    order = np.argsort(flows, kind="stable")
    bounds = np.flatnonzero(np.diff(flows[order])) + 1
    out = {}
    for group in np.split(order, bounds):
        times = ts[group]
        peak = int((np.searchsorted(times, times + BURST_S) - np.arange(len(times))).max())
        out[schedule.flows[int(flows[group[0]])].id] = {
            "returning": bool(len(times) > 1 and np.diff(times).max() >= idle_timeout_s),
            f"peak_packets_in_{int(BURST_S * 1000)}_ms": peak}
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat; the command name
    in field 2 may hold spaces, so fields are counted after its closing parenthesis)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def live_reports(loop: demo.LiveLoop) -> dict[str, dict]:
    """The reports of the NFs that answer (a stopped instance's process is gone)."""
    reports = {}
    for name, client in loop.cluster.clients.items():
        try:
            reports[name] = client.report()
        except (ConnectionError, TimeoutError, OSError):
            continue
    return reports


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.machine(),
    )
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def usable_windows(trace: Path, window_s: float, speed: float) -> list[float]:
    """Start times (trace seconds) of the consecutive windows the testbed accepts: a window whose
    replay would peak above the testbed's packet rate (docs/testbed.md, "Scale") is left out."""
    starts = []
    for start in np.arange(0.0, load_schedule(trace, max_pps=np.inf).duration_s, window_s):
        try:
            load_schedule(trace, speed=speed, start_s=float(start), duration_s=window_s)
        except ValueError:
            continue
        starts.append(float(start))
    if not starts:
        raise ValueError(
            f"{trace}: no {window_s:g} s window replays within the testbed's rate at speed {speed:g}"
        )
    return starts


@dataclass
class Round:
    """What one round measured: dm-demo's summary, the raw durations and the controller's CPU."""

    start_s: float
    summary: dict
    migration_ms: list[float]
    decision_ms: list[float]
    per_flow: dict = field(repr=False)
    cpu_s: float
    wall_s: float
    switch_drops: dict[str, int] = field(default_factory=dict)


@dataclass
class Memory:
    """ryu-manager's resident set size (VmRSS) sampled through the soak, with the migrations done by then."""

    pid: int
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    """(seconds since `started`, migrations done, RSS in MiB)"""

    def sample(self, migrations: int) -> None:
        status = Path(f"/proc/{self.pid}/status").read_text()
        kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        self.samples.append((time.monotonic() - self.started, migrations, kib / 1024))

    def figures(self, warm_up_migrations: int) -> dict:
        """Start, end and max RSS, and the least-squares slope per 1,000 migrations and per hour over the
        samples after `warm_up_migrations` (the first round: the policy's first calls allocate) and over the
        last half of the migrations (whether it levels off)."""
        points = self.samples
        half = points[-1][1] // 2
        values = [p[2] for p in points]
        return {"rss_mib_start": round(values[0], 1), "rss_mib_end": round(values[-1], 1),
                "rss_mib_max": round(max(values), 1), "samples": len(values),
                "slope_after_migrations": warm_up_migrations,
                **_slopes([p for p in points if p[1] >= warm_up_migrations] or points),
                "rss_mib_at_half": round(next(p[2] for p in points if p[1] >= half), 1),
                "last_half_after_migrations": half,
                **{f"last_half_{name}": value for name, value in _slopes([p for p in points if p[1] >= half]).items()}}


def _slopes(points: list[tuple[float, int, float]]) -> dict:
    """Least-squares RSS slopes of (seconds, migrations, MiB) samples: MiB per 1,000 migrations and per hour."""
    slope = {"mib_per_1000_migrations": None, "mib_per_hour": None}
    if len(points) > 2:
        seconds, moves, mib = (np.array(column, dtype=float) for column in zip(*points, strict=True))
        if np.ptp(moves) > 0:
            slope["mib_per_1000_migrations"] = round(float(np.polyfit(moves, mib, 1)[0]) * 1000, 3)
            slope["mib_per_hour"] = round(float(np.polyfit(seconds, mib, 1)[0]) * 3600, 3)
    return slope


def round_reports(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """The NF reports at a round's end with the drop counters made the round's own (NFs live across rounds)."""
    counters = ("dropped", "socket_dropped")
    return {name: {**report, **{c: report.get(c, 0) - before.get(name, {}).get(c, 0) for c in counters}}
            for name, report in after.items()}


def soak_config(args: argparse.Namespace) -> tuple[ClusterSpec, dict]:
    spec = ClusterSpec(
        active=args.instances,
        standby=args.standby,
        capacity_pps=args.capacity,
        buffer_packets=args.buffer,
        processing_ms=args.processing_ms,
    )
    config = {
        "policy": args.policy,
        "period_s": args.period,
        "quiet_ms": demo.DEFAULT_QUIET_MS,
        "mode": "manual",
        "thresholds": {"var": args.var},
        "rule_idle_timeout_s": demo.DEFAULT_RULE_IDLE_S,
        "nf_timeout_s": demo.DEFAULT_NF_TIMEOUT_S,
    }
    return spec, config


def soak_round(loop: demo.LiveLoop, args: argparse.Namespace, start_s: float, wanted: int, bar: tqdm,
               memory: Memory) -> Round:
    """One replay of one trace window through the running loop (the sink restarted: its counts start at
    zero); stops early once `wanted` migrations completed. RSS is sampled every period."""
    number = len(list(loop.workdir.glob("sent-*.json"))) + 1
    if number > 1:
        loop.cluster.start_sink(10.0)
    sent_log, before = loop.workdir / f"sent-{number}.json", live_reports(loop)
    switch_before = switch_drops(loop.cluster.switch)
    decisions, done_before = [], memory.samples[-1][1]
    cpu_before, started = cpu_seconds(loop.controller.pid), time.monotonic()
    replay = loop.cluster.start_replay(args.trace, sent_log, speed=args.speed, start=start_s, duration=args.window)
    done, auto = 0, False
    while replay.poll() is None:
        time.sleep(args.period)
        decisions += (new := loop.poll_decisions())
        moved = sum(m["outcome"] == "done" for d in new for m in d["migrations"])
        bar.update(moved)
        done += moved
        memory.sample(done_before + done)
        if done >= wanted:
            loop.api.write("/config", "PUT", {"mode": "manual"})
            replay.terminate()  # the sender exits 0 on SIGTERM, after writing its log
            replay.wait(timeout=10)
        elif not auto and time.monotonic() - started >= demo.WARM_UP_PERIODS * args.period:
            loop.api.write("/config", "PUT", {"mode": "auto"})
            auto = True
    loop.api.write("/config", "PUT", {"mode": "manual"})  # an empty cluster between rounds is not scaled in
    wall_s, cpu_s = time.monotonic() - started, cpu_seconds(loop.controller.pid) - cpu_before
    if replay.returncode != 0:
        raise RuntimeError(f"the replay failed (exit {replay.returncode}); see {loop.workdir}/replay.log")
    loop.drain()
    decisions += (new := loop.poll_decisions())
    bar.update(last := sum(m["outcome"] == "done" for d in new for m in d["migrations"]))
    memory.sample(done_before + done + last)
    reports = round_reports(before, live_reports(loop))
    dropped_in_switch = drops_between(switch_before, switch_drops(loop.cluster.switch))
    sink = loop.cluster.sink_counts()
    outcomes = flow_outcomes(json.loads(sent_log.read_text()), sink)
    migrated = {m["flow"] for d in decisions for m in d["migrations"] if m["outcome"] == "done"}
    schedule = window_flows(load_schedule(args.trace, speed=args.speed, start_s=start_s, duration_s=args.window),
                            demo.DEFAULT_RULE_IDLE_S)
    return Round(
        start_s,
        demo.summarise(decisions, outcomes, reports, sink["socket_dropped"]),
        [m["duration_ms"] for d in decisions for m in d["migrations"] if m["outcome"] == "done"],
        [d["decision_ms"] for d in decisions if d["origin"] == "policy"],
        {
            FlowKey.of(*f["key"]).id: {**f, "migrated": FlowKey.of(*f["key"]).id in migrated,
                                       **schedule.get(FlowKey.of(*f["key"]).id, {})}
            for f in outcomes["flows"].values()
        },
        cpu_s,
        wall_s,
        dropped_in_switch,
    )


def flows_of_note(round_: Round) -> dict:
    """The round's flows that lost packets or were reordered after their set-up: the evidence behind
    any non-zero total."""
    return {
        flow: outcome
        for flow, outcome in round_.per_flow.items()
        if outcome["lost"] or outcome["reordered"] > outcome["reordered_at_setup"]
    }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(float(np.percentile(values, 50)), 1),
        "p99": round(float(np.percentile(values, 99)), 1),
        "max": round(float(max(values)), 1),
    }


def totals(rounds: list[Round]) -> dict:
    """The soak's figures over all rounds."""
    flows = [f for r in rounds for f in r.per_flow.values()]
    migrated = [f for f in flows if f["migrated"]]
    scenarios = {
        kind: sum(r.summary["scenarios"][kind] for r in rounds) for kind in ("scale_out", "scale_in", "lb")
    }
    cpu_s, wall_s = sum(r.cpu_s for r in rounds), sum(r.wall_s for r in rounds)
    return {
        "rounds": len(rounds),
        **{name: sum(r.summary[name] for r in rounds) for name in ADDITIVE},
        "migrations_not_done": {
            outcome: sum(r.summary["migrations_not_done"][outcome] for r in rounds)
            for outcome in rounds[0].summary["migrations_not_done"]
        },
        "scenarios": scenarios,
        "flows_with_loss": sum(f["lost"] > 0 for f in flows),
        "migrated_flows_with_loss": sum(f["lost"] > 0 for f in migrated),
        "flows_reordered_at_setup": sum(f["reordered_at_setup"] > 0 for f in flows),
        "migrated_flows_reordered_after_setup": sum(
            f["reordered"] > f["reordered_at_setup"] for f in migrated
        ),
        "unmigrated_flows_packets_reordered_after_setup": sum(
            f["reordered"] - f["reordered_at_setup"] for f in flows if not f["migrated"]
        ),
        "returning_unmigrated_flows_packets_reordered_after_setup": sum(
            f["reordered"] - f["reordered_at_setup"] for f in flows if not f["migrated"] and f.get("returning")
        ),
        "switch_drops": {name: sum(r.switch_drops.get(name, 0) for r in rounds)
                         for name in sorted({name for r in rounds for name in r.switch_drops})},
        "packets_dropped_in_switch": sum(data_drops(r.switch_drops) for r in rounds),
        "packets_lost_unaccounted": sum(r.summary["packets_lost_elsewhere"] - data_drops(r.switch_drops)
                                        for r in rounds),
        "migration_ms": percentiles([ms for r in rounds for ms in r.migration_ms]),
        "decision_ms": percentiles([ms for r in rounds for ms in r.decision_ms]),
        "replay_wall_s": round(wall_s, 1),
        "controller_cpu_s": round(cpu_s, 2),
        "controller_cpu_percent_of_one_core": round(100 * cpu_s / wall_s, 1) if wall_s else None,
    }


def table(result: dict) -> str:
    t, m = result["totals"], result["controller_memory"]
    rows = [
        ("rounds", t["rounds"]),
        (
            "decisions (scale-out / scale-in / lb)",
            f"{t['decisions']} ({t['scenarios']['scale_out']} / {t['scenarios']['scale_in']} / {t['scenarios']['lb']})",
        ),
        (
            "migrations done / not done",
            f"{t['migrations']} / " + ", ".join(f"{n} {k}" for k, n in t["migrations_not_done"].items()),
        ),
        ("migration ms p50 / p99 / max", " / ".join(str(v) for v in t["migration_ms"].values())),
        ("decision ms p50 / p99", f"{t['decision_ms']['p50']} / {t['decision_ms']['p99']}"),
        ("flows (migrated)", f"{t['flows']} ({t['migrated_flows']})"),
        ("packets sent", t["packets_sent"]),
        (
            "lost: NF drops / socket drops / elsewhere",
            f"{t['packets_dropped_by_nfs']} / {t['packets_dropped_by_sockets']} / {t['packets_lost_elsewhere']}",
        ),
        ("flows with loss (migrated)", f"{t['flows_with_loss']} ({t['migrated_flows_with_loss']})"),
        ("packets lost on migrated flows", t["migrated_flows_packets_lost"]),
        (
            "reordered at flow set-up: packets (flows)",
            f"{t['packets_reordered_at_flow_setup']} ({t['flows_reordered_at_setup']})",
        ),
        (
            "reordered on migrated flows after set-up: packets (flows)",
            f"{t['migrated_flows_packets_reordered_after_setup']} ({t['migrated_flows_reordered_after_setup']})",
        ),
        (
            "reordered on unmigrated flows after set-up (returning flows)",
            (f"{t['unmigrated_flows_packets_reordered_after_setup']} "
             f"({t['returning_unmigrated_flows_packets_reordered_after_setup']})"),
        ),
        (
            "switch drops: packets (all counters) / lost unaccounted",
            f"{t['packets_dropped_in_switch']} ({t['switch_drops']}) / {t['packets_lost_unaccounted']}",
        ),
        (
            "controller CPU, % of one core",
            f"{t['controller_cpu_percent_of_one_core']} ({t['controller_cpu_s']} s over {t['replay_wall_s']} s)",
        ),
        (
            "controller RSS MiB start / end / max",
            f"{m['rss_mib_start']} / {m['rss_mib_end']} / {m['rss_mib_max']} ({m['samples']} samples)",
        ),
        (
            "RSS slope, MiB per 1,000 migrations / per hour",
            f"{m['mib_per_1000_migrations']} / {m['mib_per_hour']} (after {m['slope_after_migrations']})",
        ),
        (
            "RSS over the last half: MiB at its start, MiB per 1,000 migrations / per hour",
            (f"{m['rss_mib_at_half']} (migration {m['last_half_after_migrations']}), "
             f"{m['last_half_mib_per_1000_migrations']} / {m['last_half_mib_per_hour']}"),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def soak(args: argparse.Namespace, windows: list[float]) -> tuple[list[Round], Memory, str]:
    """Rounds through one live loop (one controller, one cluster) until `args.migrations` are done, a round
    migrates nothing or `args.max_minutes` have passed; the rounds, the controller's memory and why it stopped."""
    spec, config = soak_config(args)
    rounds: list[Round] = []
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else float("inf")
    with (
        tempfile.TemporaryDirectory(prefix="dm-soak-") as scratch,
        demo.live_loop(spec, config=config, workdir=args.workdir or scratch) as loop,
        tqdm(total=args.migrations, unit="migration", dynamic_ncols=True) as bar,
    ):
        memory = Memory(loop.controller.pid)
        memory.sample(0)
        while (done := sum(r.summary["migrations"] for r in rounds)) < args.migrations:
            if time.monotonic() >= deadline:
                return rounds, memory, f"--max-minutes {args.max_minutes:g}"
            start_s = windows[len(rounds) % len(windows)]
            bar.set_postfix_str(f"round {len(rounds) + 1}, trace {start_s:g}+{args.window:g} s")
            try:
                rounds.append(soak_round(loop, args, start_s, args.migrations - done, bar, memory))
            except (RuntimeError, TimeoutError, OSError) as error:  # the rounds done so far are still reported
                return rounds, memory, f"round {len(rounds) + 1} failed: {error}"
            if not rounds[-1].summary["migrations"]:  # more rounds would not migrate either
                return rounds, memory, f"round {len(rounds)} completed no migration"
    return rounds, memory, "--migrations"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--migrations", type=int, default=1000, metavar="N", help="stop after N migrations")
    parser.add_argument("--max-minutes", type=float, metavar="M",
                        help="start no round after M minutes (a run under a shared lock); the JSON says so")
    parser.add_argument(
        "--trace", type=Path, default=sample_path(), help="pcap to replay (default: the sample)"
    )
    parser.add_argument(
        "--window", type=float, default=30.0, metavar="S", help="trace seconds per round (default 30)"
    )
    parser.add_argument(
        "--speed", type=float, default=demo.DEFAULT_SPEED, help="trace seconds per wall second"
    )
    parser.add_argument("--var", type=float, default=0.0, help="Th_var during the soak (default 0)")
    parser.add_argument("--policy", default=demo.DEFAULT_POLICY)
    parser.add_argument("--period", type=float, default=1.0, help="controller period T, seconds")
    parser.add_argument("--instances", type=int, default=demo.DEFAULT_INSTANCES)
    parser.add_argument("--standby", type=int, default=demo.DEFAULT_STANDBY)
    parser.add_argument("--capacity", type=float, default=demo.DEFAULT_CAPACITY_PPS, help="NF packets/s")
    parser.add_argument("--buffer", type=int, default=demo.DEFAULT_BUFFER_PACKETS, help="NF buffer, packets")
    parser.add_argument("--processing-ms", type=float, default=demo.DEFAULT_PROCESSING_MS)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the rounds and totals here")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="keep the controller's log, the replays' logs and the sink's counts here (default: a "
                             "temporary directory, removed)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_soak: needs root (Mininet, Open vSwitch)", file=sys.stderr)
        return 2
    if args.migrations < 1:
        parser.error("--migrations must be at least 1")
    if args.max_minutes is not None and not args.max_minutes > 0:
        parser.error("--max-minutes must be positive")

    windows = usable_windows(args.trace, args.window, args.speed)
    started, load_start = datetime.now(UTC), os.getloadavg()
    rounds, memory, stopped = soak(args, windows)
    if not rounds:
        print(f"bench_soak: no round completed: {stopped}", file=sys.stderr)
        return 1
    result = {
        "benchmark": "soak",
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "args": {
            name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()
        },
        "trace_windows_s": windows,
        "stopped_by": stopped,
        "load_average_start_end": [load_start, os.getloadavg()],
        "totals": totals(rounds),
        "controller_memory": memory.figures(rounds[0].summary["migrations"]),
        "rss_samples": [[round(t, 1), moves, round(mib, 2)] for t, moves, mib in memory.samples],
        "rounds": [
            {
                "trace_start_s": r.start_s,
                "cpu_s": round(r.cpu_s, 2),
                "wall_s": round(r.wall_s, 1),
                **r.summary,
                "switch_drops": r.switch_drops,
                "flows_of_note": flows_of_note(r),
            }
            for r in rounds
        ],
    }
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
