"""Do two `dm-bench --dump-actions` files hold the same decisions?

    python benchmarks/same_actions.py BEFORE.jsonl AFTER.jsonl

Records are matched on (experiment, scenario, threshold, setting, seed, policy). Optimal's actions are
compared only where both runs proved them optimal: a time-limited answer depends on the machine's load.
Exit status 0 when every compared record has the same action, 1 otherwise, 2 on unreadable input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEY = ("experiment", "scenario", "threshold", "setting", "seed", "policy")


def load(path: Path) -> dict[tuple, dict]:
    records = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
            records[tuple(record[name] for name in KEY)] = record
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a dm-bench action record ({error})") from None
    return records


def comparable(before: dict, after: dict) -> bool:
    return before["policy"] != "optimal" or bool(before["proven_optimal"] and after["proven_optimal"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    try:
        before, after = load(args.before), load(args.after)
    except (OSError, ValueError) as error:
        print(f"same_actions: {error}", file=sys.stderr)
        return 2
    missing = sorted(set(before) ^ set(after), key=str)
    compared = [key for key in before if key in after and comparable(before[key], after[key])]
    differing = [key for key in compared
                 if (before[key]["action"], before[key]["valid"]) != (after[key]["action"], after[key]["valid"])]
    for key in missing:
        print(f"only in one file: {dict(zip(KEY, key, strict=True))}")
    for key in differing:
        print(f"different action: {dict(zip(KEY, key, strict=True))}")
    print(f"{len(compared)} records compared, {len(differing)} differ, {len(missing)} unmatched, "
          f"{len(before) - len(compared) - len(set(before) - set(after))} unproven Optimal records skipped")
    return 0 if not differing and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
