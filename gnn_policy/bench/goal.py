"""Issue 17's goal, checked on a closed-loop JSON report: does the stabilizer dominate today's loop?

For each policy run both with and without the stabilizer (`--stabilizer both`), on the means over the
episodes: migrations off/on must be at least 5, and `sla_violation_flow_s`, `packets_dropped` and
`total_cost` with it no more than without it, within 5 % (drops: within 5 % or 10 packets, whichever is
larger). docs/benchmark.md ("Closed loop") uses it for the tuning rule and the test tables:

    python -m gnn_policy.bench.goal REPORT.json [REPORT.json ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

MIGRATION_RATIO = 5.0
TOLERANCE = 0.05
DROP_SLACK = 10.0
NO_MORE = ("sla_violation_flow_s", "packets_dropped", "total_cost")


@dataclass(frozen=True)
class Verdict:
    """One policy's off/on comparison; `ratios` are on/off of the NO_MORE metrics."""

    policy: str
    migrations_off: float
    migrations_on: float
    ratios: dict[str, float]
    instance_s: tuple[float, float]
    met: dict[str, bool]

    @property
    def migration_ratio(self) -> float:
        return self.migrations_off / self.migrations_on if self.migrations_on else float("inf")

    @property
    def all_met(self) -> bool:
        return all(self.met.values())


def _mean(records: Iterable[dict], metric: str) -> float:
    return statistics.fmean(r[metric] for r in records)


def _ratio(off: float, on: float) -> float:
    """on/off; 1 when both are 0."""
    return on / off if off else (1.0 if on == 0 else float("inf"))


def verdicts(records: Sequence[dict]) -> list[Verdict]:
    """One verdict per policy that has records both with and without the stabilizer, in report order."""
    out = []
    for policy in dict.fromkeys(r["policy"] for r in records):
        off = [r for r in records if r["policy"] == policy and r["stabilizer"] is None]
        on = [r for r in records if r["policy"] == policy and r["stabilizer"] is not None]
        if not off or not on:
            continue
        means = {m: (_mean(off, m), _mean(on, m)) for m in (*NO_MORE, "migrations", "instance_s")}
        ratios = {m: _ratio(*means[m]) for m in NO_MORE}
        met = {m: means[m][1] <= means[m][0] * (1 + TOLERANCE) for m in NO_MORE}
        met["packets_dropped"] |= means["packets_dropped"][1] <= means["packets_dropped"][0] + DROP_SLACK
        verdict = Verdict(policy, *means["migrations"], ratios, means["instance_s"], met)
        met["migrations"] = verdict.migration_ratio >= MIGRATION_RATIO
        out.append(verdict)
    return out


def format_verdicts(found: Sequence[Verdict]) -> str:
    lines = [("policy         migrations off -> on (ratio)   sla on/off  drops on/off  cost on/off   "
              "instance_s off -> on   goal")]
    for v in found:
        failed = [m for m, ok in v.met.items() if not ok]
        lines.append(f"{v.policy:<14} {v.migrations_off:7.1f} -> {v.migrations_on:6.1f} ({v.migration_ratio:5.1f}x)"
                     f"   {v.ratios['sla_violation_flow_s']:10.3f}  {v.ratios['packets_dropped']:12.3f}"
                     f"  {v.ratios['total_cost']:11.3f}   {v.instance_s[0]:8.0f} -> {v.instance_s[1]:6.0f}   "
                     + ("met" if not failed else "NOT met: " + ", ".join(failed)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gnn_policy.bench.goal", description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+", metavar="REPORT", help="dm-bench closed-loop --json files")
    args = parser.parse_args(argv)
    for path in args.reports:
        try:
            records = [r for r in json.loads(path.read_text())["records"] if r.get("experiment") == "closed-loop"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"goal: cannot read {path}: {error}", file=sys.stderr)
            return 2
        print(f"{path}:\n{format_verdicts(verdicts(records))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
