"""dm-twin: fit the calibrated twin to recorded data and measure how well each twin predicts it.

    dm-twin calibrate [--data DIR] --out params.json
    dm-twin fit [--data DIR] --kind residual --out model.pt [--epochs N] [--synthetic N] [--logdir DIR]
    dm-twin eval [--data DIR] [--json OUT] [--plots DIR] [--params FILE] [--model FILE] [--k 1,5,10]

`--data` is a recording (`dm-demo --record`) or a directory of them, by default the shipped dataset
(twin/data/recorded); periods are split into training, validation and test as the dataset says
(docs/twin.md, "Fidelity"): a directory or recording without a split is all training to `calibrate` and
all held out to `eval`. Bad input is refused with a one-line
error and exit code 2 before any work.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from trace_replay.files import OutputError, check_output, write_text
from twin.calibration import CalibratedParams, CalibrationError, fit, load_params, save_params
from twin.fidelity.evaluate import METRICS, choose_windows, collect, load_dataset, origins, records
from twin.fidelity.twins import CalibratedTwin, ConstantRateTwin, DefaultTwin, FluidTwin
from twin.records import SHIPPED_DIR, RecordingError
from twin.residual.checkpoint import DEFAULT_MODEL, ResidualCheckpointError
from twin.residual.cli import add_fit_parser, fit_command, residual_twins
from twin.residual.training import FitError

EMBEDDED_PARAMS = Path(__file__).parent / "data" / "calibrated.json"


class UsageError(ValueError):
    """A command line that cannot be carried out."""


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be comma-separated whole numbers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k needs horizons of at least 1 period, got {text!r}")
    return ks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dm-twin", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    calibrate = commands.add_parser("calibrate", help="fit the calibrated twin's parameters by least squares")
    calibrate.add_argument("--data", type=Path, default=SHIPPED_DIR,
                           help="a recording or a directory of recordings (default: the shipped dataset)")
    calibrate.add_argument("--out", required=True, type=Path, help="where to write the parameters (JSON)")
    evaluate = commands.add_parser("eval", help="each twin's error on held-out recorded periods")
    evaluate.add_argument("--data", type=Path, default=SHIPPED_DIR,
                          help="a recording or a directory of recordings (default: the shipped dataset)")
    evaluate.add_argument("--json", type=Path, help="write the records here")
    evaluate.add_argument("--plots", type=Path, help="write predicted-against-measured plots here")
    evaluate.add_argument("--params", type=Path, help=f"calibrated parameters (default: {EMBEDDED_PARAMS.name}, "
                                                      "embedded)")
    evaluate.add_argument("--model", type=Path, help=f"residual-twin model (default: {DEFAULT_MODEL.name}, "
                                                     "embedded, where shipped)")
    evaluate.add_argument("--k", type=_ks, default=[1, 5, 10], help="horizons in periods (default 1,5,10)")
    add_fit_parser(commands)
    return parser


def calibrate(args) -> int:
    check_output(args.out)
    episodes = load_dataset(args.data, default_split="train")
    params = fit(episodes, "train")
    has_validation = any(origins(e, "validation", 1) for e in episodes)
    windows = choose_windows(episodes, "validation" if has_validation else "train")
    params = CalibratedParams(**{**params.__dict__, "constant_rate_windows": windows,
                                 "fitted_on": {**params.fitted_on,
                                               "windows_chosen_on": "validation" if has_validation else "train"}})
    save_params(params, args.out)
    print(json.dumps({"out": str(args.out), "transitions": params.fitted_on["transitions"],
                      "batch": params.batch, "pooled_move": params.pooled_move.__dict__,
                      "move_drain_factor": params.move_drain_factor, "rate_base_pps": params.rate_base_pps,
                      "pooled_instance": params.pooled_instance.__dict__,
                      "rate_persistence": params.rate_persistence, "rate_reversion": params.rate_reversion,
                      "arrival_window": params.arrival_window,
                      "least_utilised_share": params.least_utilised_share, "arrival_ratio": params.arrival_ratio,
                      "constant_rate_windows": windows},
                     indent=1))
    return 0


def evaluate(args) -> int:
    if args.json is not None:
        check_output(args.json)
    if args.plots is not None and args.plots.exists() and not args.plots.is_dir():
        raise UsageError(f"--plots {args.plots} exists and is not a directory")
    params = load_params(args.params or EMBEDDED_PARAMS)
    residual = residual_twins(args.model, base=CalibratedTwin(params))
    episodes = load_dataset(args.data, default_split="test")
    if not any(origins(e, "test", min(args.k)) for e in episodes):
        raise UsageError(f"{args.data}: no held-out (test) periods to evaluate on")
    has_validation = any(origins(e, "validation", 1) for e in episodes)
    windows = choose_windows(episodes) if has_validation else params.constant_rate_windows
    twins = [DefaultTwin(), ConstantRateTwin(windows), FluidTwin(), CalibratedTwin(params), *residual]
    all_records, samples = [], {}
    total = len(twins) * sum(len(origins(e, "test", min(args.k))) for e in episodes)
    with tqdm(total=total, desc="rollouts", file=sys.stderr, disable=None) as bar:
        for twin in twins:
            samples[twin.name] = collect(twin, episodes, args.k, "test", on_origin=bar.update)
            all_records += records(twin.name, samples[twin.name])
    print(_table(all_records, [t.name for t in twins], args.k))
    print(f"constant-rate windows: {windows} ({'chosen on validation' if has_validation else 'from the params'})")
    if args.json:
        write_text(args.json, json.dumps(all_records, indent=1) + "\n")
    if args.plots:
        from twin.fidelity.plots import plot_predictions
        for path in plot_predictions(samples, args.plots):
            print(f"plot: {path}")
    return 0


def _table(rows: list[dict], twins: list[str], ks: list[int]) -> str:
    """MAE (MAPE %) per metric and k, one column per twin."""
    by = {(r["twin"], r["k"], r["metric"]): r for r in rows}
    lines = ["| metric | k | n | " + " | ".join(twins) + " |", "|---|---|---|" + "---|" * len(twins)]
    for metric in METRICS:
        for k in ks:
            cells = []
            for twin in twins:
                r = by[(twin, k, metric)]
                mape = "" if r["mape"] is None else f" ({100 * r['mape']:.0f}%)"
                cells.append("-" if r["mae"] is None else f"{r['mae']:.4g}{mape}")
            lines.append(f"| {metric} | {k} | {by[(twins[0], k, metric)]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"calibrate": calibrate, "eval": evaluate, "fit": fit_command}
        return commands[args.command](args)
    except (RecordingError, CalibrationError, OutputError, UsageError, ResidualCheckpointError, FitError) as error:
        print(f"dm-twin: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
