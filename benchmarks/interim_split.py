"""Copy recordings with a split by periods written into each copy's meta.json (`split`, read by
`dm-twin`): the recordings named by --test are held out whole, every other one trains on its first
periods and validates on its last `--validation` share. For checks on a dataset whose own split is not
complete yet (the shipped one while it is being recorded).

    python benchmarks/interim_split.py SRC DST --test NAME [--test NAME ...] [--validation 0.2]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from twin.records import META_FILE, load


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a directory of recordings")
    parser.add_argument("dst", type=Path, help="a directory that does not exist yet")
    parser.add_argument("--test", action="append", default=[], help="a recording held out as test")
    parser.add_argument("--validation", type=float, default=0.2, help="share of the last periods validating")
    args = parser.parse_args(argv)
    if args.dst.exists():
        parser.error(f"{args.dst} exists; name a new directory")
    names = sorted(p.name for p in args.src.iterdir() if (p / META_FILE).exists())
    if not set(args.test) <= set(names):
        parser.error(f"--test names a recording not in {args.src}: {sorted(set(args.test) - set(names))}")
    splits = {}
    for name in names:
        shutil.copytree(args.src / name, args.dst / name)
        periods = load(args.dst / name).n_periods
        cut = int(periods * (1.0 - args.validation))
        splits[name] = "test" if name in args.test else {"train": [[0, cut]], "validation": [[cut, periods]]}
        meta_path = args.dst / name / META_FILE
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "split": splits[name]}, indent=1))
    print(json.dumps(splits))


if __name__ == "__main__":
    main()
