"""Soak benchmark of the live loop: keep the controller migrating flows under trace traffic until N
migrations have completed, then report per-flow loss and reordering, migration latency and the
controller's CPU. Needs root (Mininet, Open vSwitch); not run in CI.

    sudo .venv/bin/python benchmarks/bench_soak.py                        # 1,000 migrations
    sudo .venv/bin/python benchmarks/bench_soak.py --migrations 200 --json soak.json

The loop runs in rounds: each is one dm-demo bring-up (same cluster, NF sizes and controller config)
replaying the next `--window` trace seconds at `--speed`, cycling over the trace's windows that stay
within the testbed's packet rate (on the shipped sample at speed 0.5: the 30 s windows from 0, 30
and 90 s; the others peak above 2,000 packets/s). A round is a fresh cluster because the sink
counts per flow id and sequence number of one replay.

Th_var is lowered to `--var` (default 0: any imbalance) so that every period that is neither a
scale-out nor a scale-in balances load, and the policy keeps moving flows; Th_high and Th_low stay
at the controller's defaults, so scale-out and scale-in happen too. Once N migrations are done the
controller goes to manual mode and the replay is stopped; the round still drains and is counted.
Loss is split as dm-demo splits it (NF drops by design, packet-socket drops, elsewhere); reordering
into flow set-up (packets the controller forwarded itself) and migrations. Controller CPU is the
ryu-manager process's utime+stime (/proc/<pid>/stat) over the replays, as % of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from trace_replay.live import flow_outcomes, load_schedule
from twin.flow import FlowKey

ADDITIVE = (
    "decisions",
    "decisions_executed",
    "migrations",
    "migrations_failed",
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


def soak_round(args: argparse.Namespace, start_s: float, wanted: int, bar: tqdm) -> Round:
    """One live loop over one trace window; stops early once `wanted` migrations completed."""
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
    with (
        tempfile.TemporaryDirectory(prefix="dm-soak-") as workdir,
        demo.live_loop(spec, config=config, workdir=workdir) as loop,
    ):
        sent_log = Path(workdir) / "sent.json"
        cpu_before, started = cpu_seconds(loop.controller.pid), time.monotonic()
        replay = loop.cluster.start_replay(
            args.trace, sent_log, speed=args.speed, start=start_s, duration=args.window
        )
        done, auto = 0, False
        while replay.poll() is None:
            time.sleep(args.period)
            moved = sum(m["outcome"] == "done" for d in loop.poll_decisions() for m in d["migrations"])
            bar.update(moved)
            done += moved
            if done >= wanted:
                loop.api.write("/config", "PUT", {"mode": "manual"})
                replay.terminate()  # the sender exits 0 on SIGTERM, after writing its log
                replay.wait(timeout=10)
            elif not auto and time.monotonic() - started >= demo.WARM_UP_PERIODS * args.period:
                loop.api.write("/config", "PUT", {"mode": "auto"})
                auto = True
        wall_s, cpu_s = time.monotonic() - started, cpu_seconds(loop.controller.pid) - cpu_before
        if replay.returncode != 0:
            raise RuntimeError(f"the replay failed (exit {replay.returncode}); see {workdir}/replay.log")
        loop.drain()
        bar.update(sum(m["outcome"] == "done" for d in loop.poll_decisions() for m in d["migrations"]))
        reports = live_reports(loop)
        sink = loop.cluster.sink_counts()
        outcomes = flow_outcomes(json.loads(sent_log.read_text()), sink)
        decisions = sorted(loop.decisions.values(), key=lambda d: d["id"])
    migrated = {m["flow"] for d in decisions for m in d["migrations"] if m["outcome"] == "done"}
    return Round(
        start_s,
        demo.summarise(decisions, outcomes, reports, sink["socket_dropped"]),
        [m["duration_ms"] for d in decisions for m in d["migrations"] if m["outcome"] == "done"],
        [d["decision_ms"] for d in decisions if d["origin"] == "policy"],
        {
            FlowKey.of(*f["key"]).id: {**f, "migrated": FlowKey.of(*f["key"]).id in migrated}
            for f in outcomes["flows"].values()
        },
        cpu_s,
        wall_s,
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
        "migration_ms": percentiles([ms for r in rounds for ms in r.migration_ms]),
        "decision_ms": percentiles([ms for r in rounds for ms in r.decision_ms]),
        "replay_wall_s": round(wall_s, 1),
        "controller_cpu_s": round(cpu_s, 2),
        "controller_cpu_percent_of_one_core": round(100 * cpu_s / wall_s, 1) if wall_s else None,
    }


def table(result: dict) -> str:
    t = result["totals"]
    rows = [
        ("rounds", t["rounds"]),
        (
            "decisions (scale-out / scale-in / lb)",
            f"{t['decisions']} ({t['scenarios']['scale_out']} / {t['scenarios']['scale_in']} / {t['scenarios']['lb']})",
        ),
        ("migrations done / failed", f"{t['migrations']} / {t['migrations_failed']}"),
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
        ("reordered on unmigrated flows after set-up", t["unmigrated_flows_packets_reordered_after_setup"]),
        (
            "controller CPU, % of one core",
            f"{t['controller_cpu_percent_of_one_core']} ({t['controller_cpu_s']} s over {t['replay_wall_s']} s)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--migrations", type=int, default=1000, metavar="N", help="stop after N migrations")
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
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_soak: needs root (Mininet, Open vSwitch)", file=sys.stderr)
        return 2
    if args.migrations < 1:
        parser.error("--migrations must be at least 1")

    windows = usable_windows(args.trace, args.window, args.speed)
    started = datetime.now(UTC)
    rounds: list[Round] = []
    with tqdm(total=args.migrations, unit="migration", dynamic_ncols=True) as bar:
        while (done := sum(r.summary["migrations"] for r in rounds)) < args.migrations:
            start_s = windows[len(rounds) % len(windows)]
            bar.set_postfix_str(f"round {len(rounds) + 1}, trace {start_s:g}+{args.window:g} s")
            rounds.append(soak_round(args, start_s, args.migrations - done, bar))
            if not rounds[-1].summary["migrations"]:  # more rounds would not migrate either
                print(f"bench_soak: round {len(rounds)} completed no migration; stopping", file=sys.stderr)
                break
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
        "totals": totals(rounds),
        "rounds": [
            {
                "trace_start_s": r.start_s,
                "cpu_s": round(r.cpu_s, 2),
                "wall_s": round(r.wall_s, 1),
                **r.summary,
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
