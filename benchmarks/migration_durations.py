"""What the recorded move durations measure, what decides whether a move waits, and how well each fit of the
calibrated twin's move model predicts them (issue 18's "migration duration within 20 % MAPE").

On the testbed every move of a period runs phase by phase together (`controller_app.execution`): each move's
duration runs from its destination's hold to its release, so it spans the whole batch (the other moves' holds,
the one barrier, every export, which waits for the source to serve the flow's packets still queued there and for
`quiet_ms` without arrivals, every import and release). The NF reports, per flow, the frames its processor takes
until the flow's last queued one is taken (`drain_packets`); w, the batch's drain wait, is the largest of its
moved flows' (`twin.physics`). The script prints, per split: the moves, the batches (periods with done moves),
the spread of durations within a batch, the share of moves under 20 ms, and the ms per move of the batches
with w = 0; then the batches from a source queued beyond 100 ms (la_q), apart by whether a moved flow had
packets queued (w > 0); then, for every candidate fit of `twin.calibration` (loss x per-pair or pooled a, b,
fitted on the training split), MAPE, median APE and MAE per split; last, the MAPE of each fit with each pace
window of `twin.move_pace` (β fitted on the training split).

    PYTHONPATH=. .venv/bin/python benchmarks/migration_durations.py [--data DIR]
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np

from twin.calibration import MOVE_LOSSES, _MoveRows, fit_moves, paced_variants
from twin.fidelity.evaluate import load_dataset
from twin.records import SHIPPED_DIR

SPLITS = ("train", "validation", "test")


def _summary(rows: _MoveRows) -> str:
    batches = np.unique(rows.periods)
    spread = [np.ptp(rows.y[rows.periods == b]) / np.median(rows.y[rows.periods == b]) for b in batches]
    quiet = rows.wait == 0.0
    per_move = rows.y[quiet] / rows.n["period"][quiet]
    return (f"{rows.y.size} | {batches.size} | {np.median(spread):.3f} | {np.mean(rows.y < 20):.2f} | "
            f"{np.median(rows.y):.0f} | {rows.y.max():.0f} | {np.median(per_move):.2f} "
            f"({np.percentile(per_move, 10):.2f}-{np.percentile(per_move, 90):.2f})")


def _spread(values: list[float]) -> str:
    return f"{np.median(values):.2f} ({np.percentile(values, 10):.2f}-{np.percentile(values, 90):.2f})" \
        if values else "-"


def _queued(rows: _MoveRows) -> str:
    """Batches with a move from a source whose la_q at t exceeded 100 ms, apart by w > 0 (a moved flow had packets
    queued) and w = 0: how many, how many of them took under 100 ms, and duration / w (w > 0) or the median
    duration in ms (w = 0)."""
    cells = {True: [0, 0, []], False: [0, 0, []]}
    for b in np.unique(rows.periods):
        inside = rows.periods == b
        if rows.la_q[inside].max() <= 100.0:
            continue
        wait, duration = rows.wait[inside][0], float(np.median(rows.y[inside]))
        cell = cells[bool(wait > 0)]
        cell[0] += 1
        cell[1] += duration < 100.0
        cell[2].append(duration / wait if wait > 0 else duration)
    return " | ".join(f"{total} | {quick} | {_spread(values)}" for total, quick, values in cells.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=SHIPPED_DIR)
    args = parser.parse_args()
    episodes = load_dataset(args.data, default_split="train")
    rows = {split: _MoveRows.of([(e, t) for e in episodes for t in range(e.n_periods - 1)
                                 if e.split[t] == split and e.split[t + 1] == split]) for split in SPLITS}
    print("| split | moves | batches | within-batch spread (median (max-min)/median) | share < 20 ms | "
          "median ms | max ms | ms per move, batches with w = 0 (median, 10-90 %) |")
    print("|---|---|---|---|---|---|---|---|")
    for split in SPLITS:
        if rows[split].y.size:
            print(f"| {split} | {_summary(rows[split])} |")
    print()
    print("| split | la_q > 100 ms, w > 0: batches | of them < 100 ms | duration / w | "
          "la_q > 100 ms, w = 0: batches | of them < 100 ms | median duration ms |")
    print("|---|---|---|---|---|---|---|")
    for split in SPLITS:
        if rows[split].y.size:
            print(f"| {split} | {_queued(rows[split])} |")
    print()
    print("| fit (on train) | batch | a, b, c (pooled) | " + " | ".join(
        f"{s} MAPE | {s} median APE | {s} MAE ms" for s in SPLITS) + " |")
    print("|---|---|---|" + "---|---|---|" * len(SPLITS))
    for loss, per_pair in itertools.product(MOVE_LOSSES, (True, False)):
        (fits, pooled), batch, drain = fit_moves(rows["train"], loss, per_pair)
        cells = []
        for split in SPLITS:
            r = rows[split]
            if not r.y.size:
                cells += ["-"] * 3
                continue
            miss = np.abs(r.predict(fits, pooled, batch, drain) - r.y)
            cells += [f"{np.mean(miss / r.y):.1%}", f"{np.median(miss / r.y):.1%}", f"{np.mean(miss):.1f}"]
        name = f"{loss}{'' if per_pair else ', pooled'}"
        print(f"| {name} | {batch} | {pooled.a_ms:.1f}, {pooled.b_ms:.2f}, {drain:.2f} | " + " | ".join(cells) + " |")
    _paced(rows)


def _paced(rows: dict[str, _MoveRows]) -> None:
    """MAPE per split of every fit with every pace window (window 0: no pace), β fitted on the training split."""
    splits = [s for s in SPLITS if rows[s].y.size]
    print()
    print("| fit (on train) | pace window | β | " + " | ".join(f"{s} MAPE" for s in splits) + " |")
    print("|---|---|---|" + "---|" * len(splits))
    for loss, per_pair in itertools.product(MOVE_LOSSES, (True, False)):
        fitted = fit_moves(rows["train"], loss, per_pair)
        per_split = {s: list(paced_variants(rows["train"], rows[s], *fitted)) for s in splits}
        for k, (window, exponent, _) in enumerate(per_split["train"]):
            cells = [f"{np.mean(np.abs(per_split[s][k][2] - rows[s].y) / rows[s].y):.1%}" for s in splits]
            print(f"| {loss}{'' if per_pair else ', pooled'} | {window} | {exponent:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
