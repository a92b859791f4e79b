"""`dmctl`: the controller's state and decisions in a terminal, read from its REST API.

    dmctl [--url http://127.0.0.1:8080] state        # one row per NF instance
    dmctl decisions [-n 10]                           # the latest decisions, newest first
    dmctl state --follow [--interval 1]               # redraw until Ctrl-C
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from trace_replay.cli_types import positive_float

DEFAULT_URL = "http://127.0.0.1:8080"
PREFIX = "/deepmigration/v1"


class ApiUnavailable(RuntimeError):
    pass


def fetch(base_url: str, path: str) -> object:
    """GET `path` (e.g. "/state") of the API at `base_url` (without the /deepmigration/v1 prefix); the
    decoded JSON, or ApiUnavailable on an HTTP error or an unreachable controller."""
    url = base_url.rstrip("/") + PREFIX + path
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise ApiUnavailable(f"{url}: HTTP {error.code}: {error.read().decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ApiUnavailable(f"cannot reach the controller at {url}: {error}") from None


def render_state(state: dict) -> str:
    header = (f"switch {'connected' if state['switch_connected'] else 'DISCONNECTED'}  mode {state['mode']}  "
              f"policy {state['policy']}  scenario {state['scenario']}  flows {state['flows']}")
    rows = [("instance", "status", "util %", "load pps", "capacity", "queue", "flows", "dropped")]
    for i in state["instances"]:
        status = "dead" if not i["alive"] else "active" if i["active"] else "standby"
        rows.append((i["id"], status, f"{100 * i['utilisation']:.1f}", f"{i['load_pps']:.1f}",
                     f"{i['capacity_pps']:.0f}", f"{i['queue_packets']:.0f}", str(i["flows"]), str(i["dropped"])))
    return header + "\n" + _table(rows)


def render_decisions(decisions: list[dict]) -> str:
    rows = [("id", "time", "scenario", "policy", "origin", "moves", "done", "predicted", "measured", "decide ms")]
    for d in decisions:
        done = sum(m["outcome"] == "done" for m in d["migrations"])
        rows.append((str(d["id"]), time.strftime("%H:%M:%S", time.localtime(d["time"])), d["scenario"], d["policy"],
                     d["origin"], str(len(d["action"]["migrations"])), str(done) if d["executed"] else "-",
                     _cost(d["predicted_cost"]), _cost(d["measured_cost"]), f"{d['decision_ms']:.1f}"))
    return _table(rows) if decisions else "no decisions yet"


def _cost(cost: dict | None) -> str:
    return "-" if cost is None else f"{cost['total']:.1f}"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _show(args) -> str:
    if args.command == "state":
        return render_state(fetch(args.url, "/state"))
    return render_decisions(fetch(args.url, f"/decisions?limit={args.n}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmctl", description="Read the DeepMigration controller's REST API.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"controller REST address (default {DEFAULT_URL})")
    parser.add_argument("command", choices=("state", "decisions"), nargs="?", default="state")
    parser.add_argument("-n", type=int, default=10, help="how many decisions (1-1000)")
    parser.add_argument("--follow", "-f", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    parser.add_argument("--interval", type=positive_float,
                        default=1.0, help="seconds between redraws (default 1)")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 1000:
        parser.error("-n must be between 1 and 1000")
    try:
        if not args.follow:
            print(_show(args))
            return 0
        while True:
            print("\033[2J\033[H" + _show(args), flush=True)
            time.sleep(args.interval)
    except ApiUnavailable as error:
        print(f"dmctl: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
