"""Summarise recordings (twin.records): periods, decisions, explored and executed periods, moves, flow rows,
the share of active instance-periods whose queue at the state exceeds 0, 100 and 400 packets and the mean
queue, size on disk. Default: the shipped dataset, by split.

    python benchmarks/dataset_summary.py [DIR ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from twin.records import SHIPPED_SPLIT, load, shipped


def summary(directory: Path) -> dict:
    recording = load(directory)
    periods = recording.tables["periods"]
    moves = recording.column("migrations", "outcome")
    delays = recording.column("flows", "delay_ms")
    spacing = np.diff(recording.column("periods", "time_s"))
    queue = recording.column("instances", "queue_packets")[recording.column("instances", "active")]
    return {
        "periods": recording.n_periods,
        "period_s_mean": round(float(spacing.mean()), 2) if spacing.size else None,
        "period_s_max": round(float(spacing.max()), 2) if spacing.size else None,
        "decided": int(recording.column("periods", "decided").sum()),
        "explored": int(recording.column("periods", "explored").sum()),
        "executed": int(recording.column("periods", "executed").sum()),
        "moves_done": int(np.count_nonzero(moves == "done")),
        "flow_rows": recording.tables["flows"].num_rows,
        "flow_rows_with_delay": int(np.count_nonzero(~np.isnan(delays))),
        "sink_packets": int(np.nansum(recording.column("periods", "sink_packets"))),
        "nf_drops": int(np.nansum(recording.column("periods", "packets_dropped"))),
        **{f"queue_over_{q}": round(float(np.mean(queue > q)), 2) for q in (0, 100, 400)},
        "queue_mean": round(float(queue.mean()), 1),
        "policies": ",".join(sorted(set(periods.column("policy").to_pylist()) - {""})),
        "kB": round(sum(p.stat().st_size for p in directory.iterdir()) / 1024, 1),
    }


def main(argv: list[str]) -> int:
    rows = ([(str(d), "-", d) for d in map(Path, argv)] if argv else
            [(d.name, split, d) for split in SHIPPED_SPLIT for d in shipped(split)])
    names = list(summary(rows[0][2]))
    print("| recording | split | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    total_kb = 0.0
    for name, split, directory in rows:
        figures = summary(directory)
        total_kb += figures["kB"]
        print(f"| `{name}` | {split} | " + " | ".join(str(figures[n]) for n in names) + " |")
    print(f"\ntotal {total_kb / 1024:.2f} MB in {len(rows)} recordings")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
