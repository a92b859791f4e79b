"""`bench_agent.py --skip-quality` in two checkouts taking turns, for a before/after ratio on a shared machine.

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python benchmarks/bench_agent_turns.py /tmp/before . --rounds 6 -- --threads 1 --clock cpu --repeats 30

Runs the benchmark (with the arguments after `--`) in BEFORE, then in AFTER (each with its own PYTHONPATH), `--rounds` times, and prints every
line's p50 per round and, per line, the median over the rounds of each side and their ratio (after / before):
other jobs slow both sides alike within a round, and the median leaves out the rounds they hit hardest. The
machine's load average is printed before each run.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\s+(\S.*?)\s+(?:p50\s+)?(\d+\.\d+) ms")
"""A timed line of bench_agent.py: the raw and guarded p50, and each stage's p50."""


def run(checkout: Path, args: list[str]) -> dict[str, float]:
    """The p50 of every timed line of one bench_agent.py run in `checkout`."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run([sys.executable, "benchmarks/bench_agent.py", "--skip-quality", *args], cwd=checkout,
                         env=env, check=True, capture_output=True, text=True).stdout
    return {m.group(1): float(m.group(2)) for m in map(LINE.match, out.splitlines()) if m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    bench_args = argv[split + 1:]
    for checkout in (args.before, args.after):
        if not (checkout / "benchmarks" / "bench_agent.py").is_file():
            parser.error(f"{checkout} has no benchmarks/bench_agent.py")
    times: dict[str, dict[str, list[float]]] = {"before": defaultdict(list), "after": defaultdict(list)}
    for r in range(args.rounds):
        for side, checkout in (("before", args.before), ("after", args.after)):
            load = os.getloadavg()[0]
            p50s = run(checkout.resolve(), bench_args)
            print(f"round {r + 1} {side:6s} (load average {load:.2f}): "
                  + ", ".join(f"{label} {p50:.2f}" for label, p50 in p50s.items()), flush=True)
            for label, p50 in p50s.items():
                times[side][label].append(p50)
    print(f"\nmedian p50 over {args.rounds} rounds (ms): before, after, after / before")
    for label, before in times["before"].items():
        after = times["after"].get(label, [])
        if after:
            b, a = statistics.median(before), statistics.median(after)
            print(f"  {label:28s} {b:7.2f} {a:7.2f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
