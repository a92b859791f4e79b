"""`dm-bench`: the DeepMigration paper's experiments (Figs. 4-7) and the closed loop, for any policies and trace.

Only the standard library (and `trace_replay.cli_types`, which needs nothing else) is imported at module
level: the thread count of numpy's BLAS is fixed through the environment, which works only before numpy is
first imported (docs/benchmark.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from trace_replay.cli_types import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    rng_seed,
)
from twin.choice import LOOP_TWINS

EXPERIMENT_CHOICES = ("scale-out", "scale-in", "lb", "time", "all", "closed-loop")
DEFAULT_POLICIES = "ofm,size-greedy,pairwise,random,optimal"
LOOP_POLICIES = "ofm,size-greedy,deepmigration,pairwise,random"
LOOP_OPTIMAL_LIMIT_S = 1.0
LOOP_OPTIONS = {"speed": 1.0, "episodes": 8, "periods": 120, "instances": 6, "standby": 4, "stabilizer": "both",
                "start": None, "capacity": None, "buffer": None, "processing_ms": None,
                "max_flows": 4000, "twin": "fluid"}
"""The closed loop's options and their defaults (None on the command line means 'not given'; a None default:
drawn per episode, or the cost model's)."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
FULL_SEEDS, QUICK_SEEDS = 5, 2
FULL_OPTIMAL_LIMIT_S, QUICK_OPTIMAL_LIMIT_S = 10.0, 2.0


class BenchError(Exception):
    """A problem with the command's input; printed as one line, exit status 2."""


class OutputLost(Exception):
    """An output that could not be written after the run (its content was kept elsewhere); exit status 1."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(args.threads)
    try:
        return _bench(args, argv if argv is not None else sys.argv[1:])
    except BenchError as error:
        print(f"dm-bench: {error}", file=sys.stderr)
        return 2
    except OutputLost as error:
        print(f"dm-bench: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dm-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=EXPERIMENT_CHOICES, default="all",
                        help="which figure to regenerate, or closed-loop (default: all, the paper's four)")
    parser.add_argument("--trace", type=Path, metavar="PCAP",
                        help="pcap or pcap.gz trace (default: the shipped sample lbnl_sample.pcap.gz)")
    parser.add_argument("--policies", metavar="NAMES",
                        help=f"comma-separated policy names (default: {DEFAULT_POLICIES}; closed-loop: "
                             f"{LOOP_POLICIES})")
    parser.add_argument("--seed", type=rng_seed, default=0, metavar="K", help="first seed (default 0)")
    parser.add_argument("--seeds", type=positive_int, metavar="S",
                        help=f"seeds K..K+S-1 per point (default {FULL_SEEDS}, --quick {QUICK_SEEDS})")
    parser.add_argument("--quick", action="store_true",
                        help="fewer settings and seeds, a shorter Optimal time limit: the CI run (< 2 min)")
    parser.add_argument("--json", type=Path, metavar="OUT",
                        help="write the records and the run's set-up here (checked before the run)")
    parser.add_argument("--dump-actions", type=Path, metavar="FILE",
                        help="write every record's action, one JSON line each, to compare runs for equality")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write one PNG per experiment here")
    parser.add_argument("--threads", type=positive_int, default=2, metavar="T",
                        help="torch and BLAS threads during the run (default 2)")
    parser.add_argument("--optimal-time-limit", type=positive_float, metavar="S",
                        help=f"Optimal's time limit per decision (default {FULL_OPTIMAL_LIMIT_S:g} s, "
                             f"--quick {QUICK_OPTIMAL_LIMIT_S:g} s, closed-loop {LOOP_OPTIMAL_LIMIT_S:g} s)")
    parser.add_argument("--checkpoint", metavar="PATH", help="weights of the deepmigration policy")
    parser.add_argument("--repeats", type=positive_int, default=5, metavar="R",
                        help="most timed decide calls per record; the median is reported (default 5)")
    parser.add_argument("--time-budget", type=positive_float, default=1.0, metavar="S",
                        help="no further repetition once a record's calls took this long (default 1 s)")
    loop = parser.add_argument_group("closed-loop", "options of --experiment closed-loop only")
    loop.add_argument("--speed", type=positive_float, metavar="X",
                      help=f"trace seconds per simulated second, as dm-demo --speed (default {LOOP_OPTIONS['speed']:g})")
    loop.add_argument("--episodes", type=positive_int, metavar="E",
                      help=f"trace windows every policy drives (default {LOOP_OPTIONS['episodes']})")
    loop.add_argument("--periods", type=positive_int, metavar="P",
                      help=f"controller periods (1 s) per episode (default {LOOP_OPTIONS['periods']})")
    loop.add_argument("--instances", type=positive_int, metavar="N",
                      help=f"initially active instances (default {LOOP_OPTIONS['instances']})")
    loop.add_argument("--standby", type=non_negative_int, metavar="K",
                      help=f"stopped instances ready to start (default {LOOP_OPTIONS['standby']})")
    loop.add_argument("--max-flows", type=positive_int, metavar="F",
                      help=f"flow slots per episode, a seeded sample of the window's flows when it holds more "
                           f"(default {LOOP_OPTIONS['max_flows']}; the hindsight row needs a few dozen)")
    loop.add_argument("--start", type=non_negative_float, metavar="S",
                      help="open every window S trace seconds after the trace's first packet, as dm-demo --start "
                           "(default: a seeded draw per episode)")
    loop.add_argument("--capacity", type=positive_float, metavar="PPS",
                      help="every instance's capacity, packets/s, as dm-demo --capacity; every flow is kept "
                           "(default: sized per episode for a 25-50 %% mean utilisation)")
    loop.add_argument("--buffer", type=positive_float, metavar="PACKETS",
                      help="every instance's buffer, packets, as dm-demo --buffer (default: 100 ms at capacity)")
    loop.add_argument("--processing-ms", type=non_negative_float, metavar="MS",
                      help="NF processing latency la_p, as dm-demo --processing-ms (default: the cost model's 50)")
    loop.add_argument("--stabilizer", choices=("on", "off", "both"),
                      help="run each policy with the stabilizer, without it (today's loop) or both "
                           f"(default {LOOP_OPTIONS['stabilizer']})")
    loop.add_argument("--twin", choices=LOOP_TWINS,
                      help="the twin the episodes run in (twin.choice): fluid (hand-set), calibrated (the testbed's "
                           "fitted physics, twin/data/calibrated.json); residual is refused with the reason "
                           f"(default {LOOP_OPTIONS['twin']})")
    loop.add_argument("--stabilizer-config", metavar="JSON",
                      help="the stabilizer's settings: a JSON object of StabilizerConfig fields over its defaults, "
                           "e.g. '{\"scale_in_window_s\": 20, \"max_migrations\": 16}' (default: the defaults)")
    return parser


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    from tqdm import tqdm

    from gnn_policy.bench import experiments
    from trace_replay.generate import sample_path

    names = _policy_names(args)
    if args.experiment == "closed-loop":
        return _bench_loop(args, argv, names)
    given = [f"--{name.replace('_', '-')}" for name in (*LOOP_OPTIONS, "stabilizer_config")
             if getattr(args, name) is not None]
    if given:
        raise BenchError(f"{given[0]} applies to --experiment closed-loop only")
    chosen = experiments.EXPERIMENTS if args.experiment == "all" else (args.experiment,)
    seeds = list(range(args.seed, args.seed + (args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS))))
    limit = args.optimal_time_limit or (QUICK_OPTIMAL_LIMIT_S if args.quick else FULL_OPTIMAL_LIMIT_S)
    _check_outputs(args)

    prototypes = {name: {seed: _policy(name, seed, limit, args) for seed in seeds} for name in names}
    trace = args.trace or sample_path()
    table = _read_trace(trace)

    total = sum(experiments.count_cases(e, len(seeds), args.quick) for e in chosen) * len(names)
    began = time.perf_counter()
    with tqdm(total=total, unit="decision", file=sys.stderr, disable=None) as bar:
        def step(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update()

        try:
            records = experiments.run(table, chosen, prototypes, seeds, quick=args.quick,
                                      timing=experiments.Timing(args.repeats, args.time_budget), on_step=step)
        except ValueError as error:  # the scenario builders' verdict on the trace (policy errors are records)
            raise BenchError(f"cannot build the experiments from {trace}: {error}") from None
    wall_s = time.perf_counter() - began

    points = experiments.summarise(records)
    print(format_table(points))
    print(f"\n{len(records)} records in {wall_s:.1f} s")
    if args.json:
        meta = {"command": ["dm-bench", *argv], "trace": str(trace), "trace_flows": len(table),
                "experiments": list(chosen), "policies": names, "seeds": seeds, "quick": args.quick,
                "threads": args.threads, "optimal_time_limit_s": limit, "repeats": args.repeats,
                "time_budget_s": args.time_budget, "wall_s": round(wall_s, 1), "machine": _machine()}
        table_records = [{k: v for k, v in record.items() if k != "action"} for record in records]
        document = {"meta": meta, "records": table_records}
        _write("--json", args.json, json.dumps(document, indent=1, allow_nan=False) + "\n")
    if args.dump_actions:
        _write("--dump-actions", args.dump_actions,
               "".join(json.dumps(_action_line(r), sort_keys=True) + "\n" for r in records))
    if args.plots:
        from gnn_policy.bench.plots import write_plots

        for path in _plotted(write_plots, points, args.plots):
            print(f"wrote {path}")
    return 0


def _policy_names(args: argparse.Namespace) -> list[str]:
    default = LOOP_POLICIES if args.experiment == "closed-loop" else DEFAULT_POLICIES
    text = default if args.policies is None else args.policies
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise BenchError("--policies names no policy")
    return names


def _policy(name: str, seed: int, limit: float, args: argparse.Namespace):
    """A policy built by name, or a BenchError naming it; torch (once imported) runs on --threads threads."""
    from gnn_policy.registry import UnknownPolicy, make_policy

    try:
        policy = make_policy(name, seed=seed, time_limit_s=limit, checkpoint=args.checkpoint)
    except UnknownPolicy as error:
        raise BenchError(str(error)) from None
    except Exception as error:  # noqa: BLE001  any failure to build is reported naming the policy
        raise BenchError(f"policy {name!r} cannot be built: {type(error).__name__}: {error}") from None
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(args.threads)
    return policy


def _policy_replicas(name: str, seed: int, limit: float, args: argparse.Namespace):
    """`_policy`, or for a name of `registry.REPLICAS` the list of its replicas built with seeds seed, seed + 1, ..."""
    from gnn_policy.registry import REPLICAS

    if name not in REPLICAS:
        return _policy(name, seed, limit, args)
    return [_policy(name, seed + k, limit, args) for k in range(REPLICAS[name])]


def _read_trace(trace: Path):
    from trace_replay.flows import read_flows
    from trace_replay.pcap import PcapError

    try:
        return read_flows(trace)
    except (PcapError, OSError) as error:
        raise BenchError(f"cannot read trace {trace}: {error}") from None


def _bench_loop(args: argparse.Namespace, argv: list[str], names: list[str]) -> int:
    """The closed-loop experiment: build the episodes, run every policy and setting, report."""
    from tqdm import tqdm

    from gnn_policy.bench import loop
    from trace_replay.generate import sample_path

    options = {name: LOOP_OPTIONS[name] if getattr(args, name) is None else getattr(args, name)
               for name in LOOP_OPTIONS}
    setup = loop.LoopSetup(**{k: v for k, v in options.items() if k not in ("stabilizer", "twin")}, seed=args.seed)
    _check_twin(options["twin"])
    settings = loop.stabilizer_settings(options["stabilizer"], _stabilizer_config(args))
    _check_outputs(args)
    limit = args.optimal_time_limit or LOOP_OPTIMAL_LIMIT_S
    prototypes = {name: _policy_replicas(name, args.seed, limit, args) for name in names if name != loop.HINDSIGHT}
    trace = args.trace or sample_path()
    try:
        batch = loop.build(trace, _read_trace(trace), setup)
    except ValueError as error:
        raise BenchError(f"cannot build the closed-loop episodes from {trace}: {error}") from None
    began = time.perf_counter()
    replicas = sum(len(p) if isinstance(p, list) else 1 for p in prototypes.values())
    with tqdm(total=replicas * len(settings) * setup.periods, unit="period", file=sys.stderr,
              disable=None) as bar:
        runs = loop.run(batch, prototypes, settings, params=setup.params, twin=options["twin"],
                        on_period=bar.update)
    if loop.HINDSIGHT in names:
        runs.append(loop.hindsight_run(batch, params=setup.params, say=lambda line: print(line, file=sys.stderr)))
    wall_s = time.perf_counter() - began
    print(loop.format_table(runs))
    records = [record for run in runs for record in run.records]
    print(f"\n{len(records)} records in {wall_s:.1f} s")
    if args.json:
        meta = {"command": ["dm-bench", *argv], "trace": str(trace), "experiment": loop.EXPERIMENT,
                "policies": names, **options, "seed": args.seed, "period_s": loop.PERIOD_S,
                "threads": args.threads, "optimal_time_limit_s": limit,
                "wall_s": round(wall_s, 1), "machine": _machine()}
        document = {"meta": meta, "records": records}
        _write("--json", args.json, json.dumps(document, indent=1, allow_nan=False) + "\n")
    if args.plots:
        from gnn_policy.bench.plots import write_loop_plots

        for path in _plotted(write_loop_plots, runs, args.plots):
            print(f"wrote {path}")
    return 0


def _check_twin(name: str) -> None:
    """A BenchError, before any work, for a twin the closed loop cannot run (or whose parameters cannot load)."""
    from twin.calibration import CalibrationError
    from twin.choice import TwinChoiceError, check_loop_twin, load_calibrated

    try:
        check_loop_twin(name)
        if name == "calibrated":
            load_calibrated()
    except (TwinChoiceError, CalibrationError) as error:
        raise BenchError(f"--twin {name}: {error}") from None


def _stabilizer_config(args: argparse.Namespace):
    """`--stabilizer-config` over `StabilizerConfig()`, or a BenchError naming what is wrong with it."""
    from gnn_policy.stabilizer import StabilizerConfig, StabilizerError

    if args.stabilizer_config is None:
        return StabilizerConfig()
    if args.stabilizer == "off":
        raise BenchError("--stabilizer-config needs --stabilizer on or both")
    try:
        changes = json.loads(args.stabilizer_config)
    except json.JSONDecodeError as error:
        raise BenchError(f"--stabilizer-config is not JSON: {error}") from None
    try:
        return StabilizerConfig().updated(changes)
    except StabilizerError as error:
        raise BenchError(f"--stabilizer-config: {error}") from None


DUMPED_KEYS = ("experiment", "scenario", "threshold", "setting", "seed", "policy", "valid", "feasible",
               "proven_optimal", "action")


def _action_line(record: dict) -> dict:
    """What a decision did, without its timing: equal lines mean the same decision."""
    return {key: record[key] for key in DUMPED_KEYS}


def _write(option: str, path: Path, text: str) -> None:
    """Replace `path` whole with `text`; if that fails, keep `text` in a temporary file and say where."""
    from trace_replay import files

    try:
        files.write_text(path, text)
    except OSError as error:
        kept = files.rescue_text(text, "dm-bench", path.suffix)
        reason = error.strerror or error
        raise OutputLost(f"{option}: cannot write {path}: {reason}; the results are in {kept}") from None


def _plotted(write, results, folder: Path) -> list:
    """The figures `write` drew into `folder`, or OutputLost naming why they could not be written."""
    try:
        return write(results, folder)
    except OSError as error:
        reason = error.strerror or error
        raise OutputLost(f"--plots: cannot write the figures in {folder}: {reason}") from None


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before a long run, not after it, when an output cannot be written (a missing folder, a directory,
    a device such as /dev/full, a folder such as /proc that takes no new file)."""
    from trace_replay.files import OutputError, check_output

    for option, path in (("--json", args.json), ("--dump-actions", args.dump_actions)):
        try:
            if path:
                check_output(path)
        except OutputError as error:
            raise BenchError(f"{option}: {error}") from None
    if args.plots:
        try:
            args.plots.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BenchError(f"--plots: cannot create {args.plots}: {error}") from None


def _machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def format_table(points) -> str:
    """The readable summary: one row per (experiment, threshold, setting, policy)."""
    from gnn_policy.bench.experiments import METRIC

    header = ("experiment", "Th", "setting", "policy", "runs", "failed", "metric", "mean", "spread",
              "decision ms", "worst gap")
    rows = [header]
    for p in sorted(points, key=_row_order):
        policy = p.policy if p.experiment != "time" or p.scenario == "lb" else f"{p.policy} ({p.scenario})"
        threshold = "-" if p.threshold is None else f"{p.threshold:.0%}"
        rows.append((p.experiment, threshold, str(p.setting), policy, str(p.runs), str(p.failed),
                     METRIC[p.experiment], _number(p.mean), _number(p.spread),
                     _number(p.decision_ms), "-" if p.worst_gap is None else f"{p.worst_gap:.2%}"))
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
                     for row in rows)


def _row_order(point) -> tuple:
    """Figure order: by threshold panel, then setting; the timing experiment has one panel."""
    from gnn_policy.bench.experiments import EXPERIMENTS

    panel = 0.0 if point.experiment == "time" or point.threshold is None else point.threshold
    return EXPERIMENTS.index(point.experiment), panel, point.setting, point.policy, point.scenario


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
