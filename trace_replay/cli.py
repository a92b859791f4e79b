"""`dm-trace`: inspect pcap traces and generate synthetic ones."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from trace_replay.cli_types import output_file, positive_float, rng_seed
from trace_replay.files import sigterm_as_interrupt
from trace_replay.flows import read_flows
from trace_replay.pcap import PcapError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(), sigterm_as_interrupt():
        warnings.showwarning = _show_warning
        try:
            status = args.command(args)
            sys.stdout.flush()  # inside the try, so a closed pipe is seen here rather than at exit
            return status
        except BrokenPipeError:
            return _reader_gone()
        except (PcapError, OSError, ValueError) as exc:
            print(f"dm-trace: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("dm-trace: interrupted" + (f"; {args.out} is left as it was" if "out" in args else ""),
                  file=sys.stderr)
            return 130


def _reader_gone() -> int:
    """The reader of stdout left (`dm-trace ... | head -1`): exit quietly with status 1, as Python's
    documentation on SIGPIPE recommends, pointing stdout at /dev/null so the final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (such as a torn last record) as one line, without Python's source location."""
    print(f"dm-trace: warning: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dm-trace", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="packet, flow and protocol counts of a pcap or pcapng file (gzip'ed or not)")
    info.add_argument("pcap", type=Path, metavar="PCAP")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    info.add_argument(
        "--idle-timeout",
        type=positive_float,
        metavar="S",
        help="split a flow at gaps longer than S seconds (default: never)",
    )
    info.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    info.set_defaults(command=_info)

    generate = commands.add_parser("generate", help="write a synthetic enterprise-like header-only trace")
    generate.add_argument("--out", type=output_file, required=True, metavar="PCAP",
                          help="written whole or not at all: an existing file is replaced only once the new one "
                               "is complete (gzip-compressed when the name ends in .gz)")
    generate.add_argument("--seconds", type=positive_float, required=True, metavar="S")
    generate.add_argument("--seed", type=rng_seed, required=True, metavar="K")
    generate.set_defaults(command=_generate)

    scenarios = commands.add_parser(
        "scenarios", help="build the paper's experiment set-ups (Figs. 4-7) from a trace and show what the twin detects")
    scenarios.add_argument("pcap", type=Path, metavar="PCAP")
    scenarios.add_argument("--seed", type=rng_seed, default=0, metavar="K", help="seed of the set-ups (default 0)")
    scenarios.add_argument("--json", action="store_true", help="print one JSON object per set-up")
    scenarios.set_defaults(command=_scenarios)
    return parser


def _info(args: argparse.Namespace) -> int:
    table = read_flows(args.pcap, idle_timeout=args.idle_timeout, progress=args.progress)
    summary = table.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    rows = [
        ("trace", table.source),
        ("packets", f"{summary['packets']:,}"),
        ("IP packets", f"{summary['ip_packets']:,}"),
        ("flows", f"{summary['flows']:,}"),
        ("IP bytes", f"{summary['bytes']:,}"),
        ("duration", f"{summary['duration_s']:,.3f} s"),
    ]
    if table.stats.torn_records:
        rows.append(("torn records", f"{table.stats.torn_records:,}"))
    if table.stats.timestamps_backwards:
        rows.append(("timestamps backwards", f"{table.stats.timestamps_backwards:,}"))
    if summary["protocols"]:
        rows.append(("protocols", ""))
        rows += [(f"  {name}", f"{count:,}") for name, count in summary["protocols"].items()]
    width = max(len(label) for label, _ in rows)
    print("\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in rows))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from trace_replay.generate import generate_pcap  # written separately; only this command needs it

    generate_pcap(args.out, seconds=args.seconds, seed=args.seed)
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    from trace_replay.scenarios import describe, paper_setups

    table = read_flows(args.pcap)
    described = [describe(setup) for setup in paper_setups(table, seed=args.seed)]
    if args.json:
        print("\n".join(json.dumps(row) for row in described))
        return 0
    header = ("experiment", "setting", "Th", "instances", "flows", "detected", "over", "under", "variance")
    rows = [(row["experiment"], row["setting"], f"{row['threshold']:.2f}", row["instances"], row["flows"],
             row["detected"], row["overloaded"], row["underloaded"], f"{row['variance']:.4f}")
            for row in described]
    widths = [max(len(str(value)) for value in column) for column in zip(header, *rows)]
    for line in (header, *rows):
        print("  ".join(f"{value!s:>{width}}" for value, width in zip(line, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
