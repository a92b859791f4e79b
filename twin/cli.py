"""dm-twin: fit the calibrated twin to recorded data and measure how well each twin predicts it.

    dm-twin calibrate [--data DIR] --out params.json
    dm-twin eval [--data DIR] [--json OUT] [--plots DIR] [--params FILE] [--model KIND=FILE] [--k 1,5,10]
    dm-twin fit [--data DIR] --kind generative|residual --out FILE [--logdir DIR] [--set NAME=VALUE]

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
from twin.fidelity.evaluate import (
    LEARNED_TWINS,
    METRICS,
    choose_windows,
    collect,
    learned_twins,
    load_dataset,
    origins,
    records,
)
from twin.fidelity.twins import CalibratedTwin, ConstantRateTwin, DefaultTwin, FluidTwin
from twin.generative.checkpoint import CheckpointError as GenerativeCheckpointError
from twin.generative.fit import FitError as GenerativeFitError
from twin.records import SHIPPED_DIR, RecordingError
from twin.residual.checkpoint import ResidualCheckpointError
from twin.residual.training import FitError as ResidualFitError

EMBEDDED_PARAMS = Path(__file__).parent / "data" / "calibrated.json"


def _fit_generative(args) -> dict:
    from twin.generative.command import fit_generative
    return fit_generative(args.data, args.out, args.logdir, args.set)


def _fit_residual(args) -> dict:
    from twin.residual.cli import fit_residual
    return fit_residual(args.data, args.out, args.logdir, args.set)


FIT_KINDS = {
    "generative": _fit_generative,
    "residual": _fit_residual,
}
"""`dm-twin fit --kind`: each learned twin's fit, called with the parsed arguments."""


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
    evaluate.add_argument("--k", type=_ks, default=[1, 5, 10], help="horizons in periods (default 1,5,10)")
    evaluate.add_argument("--model", type=_model, action="append", default=[], metavar="KIND=FILE",
                          help=f"a learned twin's checkpoint ({', '.join(LEARNED_TWINS)}; default: the shipped "
                               "one where it exists)")
    learn = commands.add_parser("fit", help="fit a learned twin on the training split, chosen on validation")
    learn.add_argument("--data", type=Path, default=SHIPPED_DIR,
                       help="a recording or a directory of recordings (default: the shipped dataset)")
    learn.add_argument("--kind", required=True, choices=sorted(FIT_KINDS), help="which learned twin")
    learn.add_argument("--out", required=True, type=Path, help="where to write the checkpoint")
    learn.add_argument("--logdir", type=Path, default=Path("runs/dm-twin-fit"), help="TensorBoard log folder")
    learn.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="change a hyper-parameter of the kind (e.g. steps=500)")
    return parser


def _model(text: str) -> tuple[str, Path]:
    kind, _, path = text.partition("=")
    if kind not in LEARNED_TWINS or not path:
        raise argparse.ArgumentTypeError(f"--model takes KIND=FILE with KIND one of {', '.join(LEARNED_TWINS)}, "
                                         f"got {text!r}")
    return kind, Path(path)


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
                      **{key: params.fitted_on[key] for key in ("move_loss", "move_loss_chosen_on", "move_mape")
                         if key in params.fitted_on},
                      "move_drain_factor": params.move_drain_factor, "move_pace_window": params.move_pace_window,
                      "move_pace_exponent": params.move_pace_exponent, "rate_base_pps": params.rate_base_pps,
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
    learned = learned_twins(dict(args.model), base=CalibratedTwin(params))  # a bad checkpoint: before any work
    episodes = load_dataset(args.data, default_split="test")
    if not any(origins(e, "test", min(args.k)) for e in episodes):
        raise UsageError(f"{args.data}: no held-out (test) periods to evaluate on")
    has_validation = any(origins(e, "validation", 1) for e in episodes)
    windows = choose_windows(episodes) if has_validation else params.constant_rate_windows
    twins = [DefaultTwin(), ConstantRateTwin(windows), FluidTwin(), CalibratedTwin(params), *learned]
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


def fit_learned(args) -> int:
    check_output(args.out)
    if args.logdir.exists() and not args.logdir.is_dir():
        raise UsageError(f"--logdir {args.logdir} exists and is not a directory")
    FIT_KINDS[args.kind](args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"calibrate": calibrate, "eval": evaluate, "fit": fit_learned}[args.command](args)
    except (RecordingError, CalibrationError, OutputError, UsageError, GenerativeCheckpointError,
            GenerativeFitError, ResidualCheckpointError, ResidualFitError) as error:
        print(f"dm-twin: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
