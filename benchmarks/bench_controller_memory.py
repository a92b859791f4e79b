"""Memory of the switch-less controller (controller_app.core) over many moves, apart from Ryu, Mininet and the
NF processes (issue 20, soak): the rig of the controller's tests (tests/controller_rig.py: fake switch and NFs,
a hand-moved clock) executes one manual decision of `--flows` moves every other period, the flows going back
and forth between two instances. Prints the process's RSS (VmRSS) every 250 decisions and the RSS slope per
1,000 moves once the decision list is full (DECISIONS_KEPT), then RSS before and after glibc's malloc_trim.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_controller_memory.py --decisions 1500
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile
from pathlib import Path

from controller_app.core import DECISIONS_KEPT
from controller_app.steering import flow_key
from tests.controller_rig import land, make_rig, run_period, tuple_n


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1500, help="manual decisions (default 1500)")
    parser.add_argument("--flows", type=int, default=8, help="flows moved by each decision (default 8)")
    args = parser.parse_args(argv)
    if args.decisions <= DECISIONS_KEPT or args.flows < 1:
        parser.error(f"--decisions must exceed {DECISIONS_KEPT} (the kept decisions) and --flows be at least 1")
    rig = make_rig(Path(tempfile.mkdtemp(prefix="ctlmem-")), policy="deepmigration")
    c, flows = rig.controller, [tuple_n(k) for k in range(args.flows)]
    for t in flows:
        land(rig, t, "nf1")
    c.reconfigure({"mode": "manual"})
    run_period(rig, {t: 1 for t in flows})
    full = None
    for k in range(args.decisions):
        c.submit({"migrations": [{"flow": flow_key(t), "src": c.flows.get(flow_key(t)).instance,
                                  "dst": ("nf2", "nf1")[k % 2]} for t in flows]})
        run_period(rig, {t: 1 for t in flows})
        run_period(rig, {t: 1 for t in flows})  # the next request is checked against a state showing the move
        rig.calls.clear()  # the fakes' own logs, not the controller's
        for nf in rig.nfs.values():
            nf.exported.clear(), nf.merged.clear(), nf.state.clear()
        if full is None and len(c.decisions) == DECISIONS_KEPT:
            gc.collect()
            full = (k, rss_mib())
        if k % 250 == 0:
            print(f"decision {k}: {k * args.flows} moves, RSS {rss_mib():.1f} MiB, {len(c.decisions)} decisions kept")
    gc.collect()
    moves = (args.decisions - 1 - full[0]) * args.flows
    print(f"RSS {full[1]:.1f} -> {rss_mib():.1f} MiB over the last {moves} moves (decision list full): "
          f"{(rss_mib() - full[1]) * 1000 / max(moves, 1):.3f} MiB per 1,000 moves")
    before = rss_mib()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(f"malloc_trim(0): RSS {before:.1f} -> {rss_mib():.1f} MiB")


if __name__ == "__main__":
    main()
