"""`dm-demo --learn DIR`: the two loops of `001_16737d162f4cc0f3.txt` (its Algorithm 1 and eq. (8)) on the live
testbed. Agent 1 (weights θ1) runs on the testbed; agent 2 (θ2) trains in the calibrated twin. Only the control
head learns (act or hold, the target; `gnn_policy.control`), as in `dm-train --closed-loop`.

Outer iteration I = 0 .. Γ−1 (docs/agent.md, "Two loops"):

1. report: θ1 runs greedy on the live validation window (the first window `dm-bench --experiment closed-loop
   --seed K` draws at the testbed's set-up, for the first K of 100-199 whose window the testbed can replay;
   that K is the controller's seed too), recorded; its cost per period is agent 1's closed-loop cost at I;
2. collect (Algorithm 1 lines 3, 13-17): θ1 runs on live training window I (the I-th replayable window of
   seeds 0-99, the training split) with its control head sampling, recorded in `live/`;
3. agent 1 fine-tunes on that window (line 18): one on-policy REINFORCE step (`live_reinforce.live_step`);
4. the twin is re-calibrated (line 4, eq. (7)) on `--calibration-data` (the shipped dataset by default) and
   every live training window so far (`twin.calibration.fit`);
5. θ2 ← θ1 (line 20), then M iterations of `loop_training.iteration_step` in the re-calibrated twin (lines 5-11);
6. eq. (8) (line 12): θ1 ← ζ·θ1 + (1 − ζ)·θ2.

After the last iteration θ1 runs the live validation window once more. Both agents are scored every iteration
on the twin's validation windows (`loop_training.validate`: `dm-bench --experiment closed-loop --seed 100`), and
the final pick (`final.pt`) is the better of the last θ1 and θ2 there; its test cost (seed 200) is reported only.

DIR receives, each written whole: `agents/theta1-II.pt` (θ1 at the start of iteration II), `agent1-II.pt`
(after its live step), `agent2-II.pt`; `twin/calibrated-II.json`; `live/train-II` and `live-validation/val-II`
(recordings); `iterations/II.json`; then `summary.json`, `costs.png` and `final.pt`.
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from gnn_policy import checkpoint, control
from gnn_policy.bench import loop
from gnn_policy.gn import GNPolicyNet
from gnn_policy.live_reinforce import live_costs, live_step, replay_periods
from gnn_policy.loop_training import (
    TRAIN_SEEDS,
    VALIDATION_SEED,
    LoopTrainConfig,
    iteration_step,
    validate,
    with_control_head,
)
from trace_replay.files import write_text
from trace_replay.flows import FlowTable, read_flows
from twin.records import SHIPPED_DIR, RecordingError, check_target, load

TEST_SEED = 200
"""`dm-bench --seed 200`: the test windows, reported only (docs/agent.md, "Evaluation split (closed loop)")."""
VALIDATION_SEEDS = range(VALIDATION_SEED, TEST_SEED)


class TwoLoopsError(ValueError):
    """A two-loops session that cannot run; the message names the problem."""


@dataclass(frozen=True)
class TwoLoopsConfig:
    """Every hyper-parameter of a two-loops session (written to summary.json)."""

    outer: int = 3
    """Γ: outer iterations."""
    zeta: float = 0.5
    """ζ of eq. (8), in [0, 1]: 1 keeps agent 1's own weights, 0 takes agent 2's."""
    twin_iterations: int = 10
    """M (the paper's Φ): agent 2's iterations in the twin per outer iteration."""
    live_lr: float = 5e-3
    """Agent 1's Adam step on its live windows (section V's first learning rate), when `live_kl` is None."""
    live_kl: float | None = None
    """Agent 1's trust region instead: its step's mean KL(π_old ‖ π_new) over the windows' decisions (`--live-kl`)."""
    live_windows: int = 1
    """Live training windows per outer iteration (one step on all of them, each its own episode)."""
    validation_repeats: int = 1
    """Runs of the live validation window per point: their mean and spread (the testbed's own noise)."""
    calibration_data: str | None = str(SHIPPED_DIR)
    """Recordings the twin is fitted on besides the live training windows (None: those only)."""
    validation_episodes: int = 8
    seed: int = 0
    agent2: LoopTrainConfig = field(default_factory=lambda: LoopTrainConfig(twin="calibrated"))
    """Agent 2's episodes and hyper-parameters (`dm-train --closed-loop`'s defaults, in the calibrated twin)."""


def check_zeta(zeta: float) -> float:
    if not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and 0.0 <= zeta <= 1.0):
        raise TwoLoopsError(f"ζ (--zeta) must be a number in [0, 1], not {zeta!r}")
    return float(zeta)


def blend(theta1: GNPolicyNet, theta2: GNPolicyNet, zeta: float) -> GNPolicyNet:
    """Eq. (8): a copy of agent 1 with weights ζ·θ1 + (1 − ζ)·θ2 (which parameters train is agent 1's)."""
    check_zeta(zeta)
    if theta1.config != theta2.config:
        raise TwoLoopsError("eq. (8) needs two networks of the same config; agent 1 and agent 2 differ")
    second = theta2.state_dict()
    mixed = copy.deepcopy(theta1)
    mixed.load_state_dict({name: zeta * value + (1.0 - zeta) * second[name] if value.is_floating_point() else value
                           for name, value in theta1.state_dict().items()})
    return mixed


@dataclass
class Session:
    """What a session needs besides its config: the demo's settings, the trace, where everything goes."""

    demo: argparse.Namespace
    """dm-demo's parsed flags: the trace, the cluster, --duration (one live window), the period."""
    out: Path
    table: FlowTable
    lock: Path | None = None
    log: Callable[[str], None] = print
    training: list[tuple[int, float]] = field(default_factory=list)
    """(seed, trace start) of the live training windows (`live_windows`), `--live-windows` per outer iteration."""
    validation: tuple[int, float] = (VALIDATION_SEED, 0.0)
    """(seed, trace start) of the live validation window."""


def prepare(demo: argparse.Namespace, config: TwoLoopsConfig, out: Path, init: Path | None,
            lock: Path | None) -> tuple[Session, GNPolicyNet]:
    """Refuse, before any work, whatever would stop the session later; the session and agent 1's start."""
    check_zeta(config.zeta)
    if not 1 <= config.outer * config.live_windows <= len(TRAIN_SEEDS):
        raise TwoLoopsError(f"--outer × --live-windows {config.outer} × {config.live_windows}: 1 to "
                            f"{len(TRAIN_SEEDS)} (one training window each)")
    if min(config.twin_iterations, config.validation_episodes, config.live_windows, config.validation_repeats) < 1:
        raise TwoLoopsError("--twin-iterations, --live-windows, --validation-repeats and the validation episodes "
                            "must be at least 1")
    if config.live_kl is not None and not (math.isfinite(config.live_kl) and config.live_kl > 0):
        raise TwoLoopsError(f"--live-kl {config.live_kl}: the trust region's KL bound must be a positive number")
    for flag, bad in (("--record", demo.record is not None), ("--explore", demo.explore > 0),
                      ("--start", demo.start != 0), ("--policy", demo.policy != "deepmigration")):
        if bad:
            raise TwoLoopsError(f"{flag} cannot be given with --learn: the two loops choose it for each live window")
    try:
        check_target(out)
    except RecordingError as error:
        raise TwoLoopsError(f"--learn {out}: exists and is not an empty directory, or is not writable") from error
    if config.calibration_data is not None and not Path(config.calibration_data).is_dir():
        raise TwoLoopsError(f"--calibration-data {config.calibration_data}: no such directory of recordings")
    if lock is not None:
        try:
            lock.open("a").close()
        except OSError as error:
            raise TwoLoopsError(f"--lock {lock}: cannot be opened: {error.strerror or error}") from None
    try:
        net, _ = checkpoint.load(init)
        table = read_flows(demo.trace)
    except (OSError, ValueError) as error:  # CheckpointError is a ValueError
        raise TwoLoopsError(str(error)) from None
    session = Session(demo, out, table, lock)
    session.training = live_windows(session, TRAIN_SEEDS, config.outer * config.live_windows)
    (session.validation,) = live_windows(session, VALIDATION_SEEDS, 1)
    return session, with_control_head(net, control.TARGETS, config.seed, keep=True)


# --- the live loop ---------------------------------------------------------------------------------
def window_start(session: Session, seed: int) -> float:
    """Trace seconds after the first packet at which the live window of `seed` opens: the first window that
    `dm-bench --experiment closed-loop --seed K` draws at the testbed's speed and length."""
    demo = session.demo
    setup = loop.LoopSetup(episodes=1, periods=int(demo.duration / demo.period), instances=demo.instances,
                           standby=demo.standby, speed=demo.speed, seed=seed, capacity=demo.capacity,
                           buffer=demo.buffer, processing_ms=demo.processing_ms)
    batch = loop.build(demo.trace, session.table, setup)
    return round(float(batch.start_s[0] - session.table.records["first_ts"].min()), 3)


def live_windows(session: Session, seeds: range, count: int) -> list[tuple[int, float]]:
    """(seed, start) of the first `count` seeds of `seeds` whose window the testbed replays: dm-demo refuses a
    window that would peak above the packet rate the machine keeps up with (`demo.replay_schedule`)."""
    from controller_app.demo import replay_schedule

    demo, found = session.demo, []
    for seed in seeds:
        try:
            start = window_start(session, seed)
        except ValueError as error:  # the trace is shorter than a window
            raise TwoLoopsError(str(error)) from None
        try:
            replay_schedule(argparse.Namespace(**{**vars(demo), "start": start}))
        except ValueError:
            continue
        found.append((seed, start))
        if len(found) == count:
            return found
    raise TwoLoopsError(f"only {len(found)} of the windows of seeds {seeds.start}-{seeds.stop - 1} can be replayed "
                        f"live at --speed {demo.speed:g}, {count} are needed")


@contextmanager
def _locked(path: Path | None) -> Iterator[None]:
    """An exclusive flock on `path` for the block (none without a path): only one Mininet network at a time."""
    if path is None:
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_live(session: Session, weights: Path, window: tuple[int, float], *, sample: bool, record: Path) -> dict:
    """One recorded dm-demo run of `weights` on `window` (seed, start; the seed is the controller's too: its SLA
    draws and the control head's samples); its figures from the recording."""
    from controller_app.demo import run_demo

    seed, start = window
    args = argparse.Namespace(**{**vars(session.demo), "start": start, "seed": seed, "checkpoint": weights,
                                 "sample_control": sample, "record": record, "stabilizer": "off",
                                 "policy": "deepmigration", "explore": 0.0, "json": None, "learn": None})
    session.log(f"two loops: live window seed {seed} (trace {start:g} s on), {weights.name}, "
                f"{'sampling' if sample else 'greedy'} -> {record}")
    with _locked(session.lock):
        summary = run_demo(args, out=lambda line: None)
    if "error" in summary.get("record", {}):
        raise TwoLoopsError(f"the live window's recording failed: {summary['record']['error']}")
    recording = load(record)
    periods = replay_periods(recording)
    costs = live_costs(recording)[periods]
    holds = [h for h in recording.tables["periods"].column("control_hold").to_pylist() if h is not None]
    return {"window_seed": seed, "start_s": start, "weights": str(weights),
            "recording": str(record), "periods": int(periods.size), "cost_per_period": float(costs.mean()),
            "total_cost": float(costs.sum()), "control_decisions": len(holds),
            "hold_share": float(np.mean(holds)) if holds else None, "migrations": summary["migrations"],
            "packets_dropped_by_nfs": summary["packets_dropped_by_nfs"],
            "sla_violation_flow_s": summary["sla_violation_flow_s"]}


# --- the inner loop --------------------------------------------------------------------------------
def calibrate_twin(session: Session, config: TwoLoopsConfig, path: Path) -> dict:
    """Fit the calibrated twin on `--calibration-data` and every live training window so far (eq. (7))."""
    from twin.calibration import fit, save_params
    from twin.fidelity.evaluate import load_dataset

    episodes = load_dataset(session.out / "live", default_split="train")
    if config.calibration_data is not None:
        episodes = load_dataset(config.calibration_data, default_split="train") + episodes
    params = fit(episodes, "train")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_params(params, path)
    return {"params": str(path), "transitions": params.fitted_on["transitions"],
            "recordings": params.fitted_on["recordings"], "pooled_instance": asdict(params.pooled_instance),
            "pooled_move": asdict(params.pooled_move), "arrival_ratio": params.arrival_ratio,
            "least_utilised_share": params.least_utilised_share}


def train_agent2(theta1: GNPolicyNet, session: Session, config: LoopTrainConfig, first: int, count: int,
                 generator: torch.Generator) -> tuple[GNPolicyNet, dict]:
    """θ2 ← θ1, then `count` iterations of Algorithm 1 in the twin (global iterations `first` ...)."""
    net = copy.deepcopy(theta1)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=config.lr_start)
    history = [iteration_step(net, optimizer, session.table, session.demo.trace, config, first + k, generator)
               for k in range(count)]
    rewards = [h["closed_loop/reward_per_period"] for h in history]
    return net, {"iterations": count, "first_iteration": first, "reward_per_period_first": rewards[0],
                 "reward_per_period_last": rewards[-1], "reward_per_period_mean": float(np.mean(rewards)),
                 "hold_share_mean": float(np.mean([h.get("hold_share", 0.0) for h in history]))}


# --- the session -----------------------------------------------------------------------------------
def run_two_loops(session: Session, config: TwoLoopsConfig, theta1: GNPolicyNet) -> dict:
    """Every outer iteration, the final evaluation and pick; the summary (also written to summary.json)."""
    out, began = session.out, time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    agent2_config = replace(config.agent2, iterations=config.outer * config.twin_iterations, seed=config.seed)
    validation = _validation_batch(session, config, VALIDATION_SEED)
    scores = {"theta1": validate(theta1, validation)}
    history = []
    for index in range(config.outer):
        tag = f"{index:02d}"
        start = out / "agents" / f"theta1-{tag}.pt"
        _save(start, theta1, config, index, "agent 1 at the start of the iteration (eq. (8)'s θ1^{I,1})")
        record = {"iteration": index, "twin_validation": {"theta1_start": scores["theta1"]}}
        record["live_validation"] = live_validation(session, start, tag, config.validation_repeats)
        windows = session.training[index * config.live_windows:(index + 1) * config.live_windows]
        runs = [run_live(session, start, window, sample=True, record=out / "live" / f"train-{tag}-{k}")
                for k, window in enumerate(windows)]
        record["live_training"] = {"cost_per_period": float(np.mean([r["cost_per_period"] for r in runs])),
                                   "windows": runs}
        record["agent1_step"] = live_step(theta1, [load(r["recording"]) for r in runs], lr=config.live_lr,
                                          cost_unit=agent2_config.cost_unit, grad_clip=agent2_config.grad_clip,
                                          max_kl=config.live_kl)
        _save(out / "agents" / f"agent1-{tag}.pt", theta1, config, index, "agent 1 after its live step")
        record["calibration"] = calibrate_twin(session, config, out / "twin" / f"calibrated-{tag}.json")
        theta2, record["agent2"] = train_agent2(
            theta1, session, replace(agent2_config, calibrated=record["calibration"]["params"]),
            index * config.twin_iterations, config.twin_iterations, generator)
        _save(out / "agents" / f"agent2-{tag}.pt", theta2, config, index, "agent 2 after its twin iterations")
        scores = {"theta1": validate(blend(theta1, theta2, config.zeta), validation),
                  "theta2": validate(theta2, validation)}
        record["twin_validation"].update({"agent1_after_step": validate(theta1, validation),
                                          "agent2": scores["theta2"], "blended": scores["theta1"]})
        theta1 = blend(theta1, theta2, config.zeta)
        record["wall_s"] = round(time.monotonic() - began, 1)
        write_text(out / "iterations" / f"{tag}.json", json.dumps(record, indent=1) + "\n", make_parents=True)
        history.append(record)
        session.log(_line(record))
    return _finish(session, config, theta1, theta2, scores, history, began)


def live_validation(session: Session, weights: Path, tag: str, repeats: int) -> dict:
    """`repeats` greedy runs of `weights` on the live validation window (`live-validation/val-II-r`): agent 1's
    live cost per period at this point is their mean; their spread is the testbed's own noise."""
    runs = [run_live(session, weights, session.validation, sample=False,
                     record=session.out / "live-validation" / f"val-{tag}-{r}") for r in range(repeats)]
    return {"cost_per_period": float(np.mean([r["cost_per_period"] for r in runs])),
            **spread([r["cost_per_period"] for r in runs]), "repeats": runs}


def spread(costs: list[float]) -> dict:
    """The spread of repeated live windows: sample standard deviation (None for one run), min and max."""
    return {"std": float(np.std(costs, ddof=1)) if len(costs) > 1 else None,
            "min": float(min(costs)), "max": float(max(costs))}


def _finish(session: Session, config: TwoLoopsConfig, theta1: GNPolicyNet, theta2: GNPolicyNet, scores: dict,
            history: list[dict], began: float) -> dict:
    """The last live validation, the pick (the best on the twin's validation windows of the start, the last θ1
    and the last θ2; a tie keeps the earlier), its test cost, summary.json and the plot."""
    out = session.out
    last = out / "agents" / f"theta1-{config.outer:02d}.pt"
    _save(last, theta1, config, config.outer, "agent 1 after the last outer iteration")
    final_live = live_validation(session, last, f"{config.outer:02d}", config.validation_repeats)
    start, _ = checkpoint.load(out / "agents" / "theta1-00.pt")
    candidates = {"start": (history[0]["twin_validation"]["theta1_start"], start),
                  "agent1": (scores["theta1"], theta1), "agent2": (scores["theta2"], theta2)}
    picked = min(candidates, key=lambda name: candidates[name][0])
    net = candidates[picked][1]
    test = validate(net, _validation_batch(session, config, TEST_SEED))
    _save(out / "final.pt", net, config, config.outer, f"the best on validation: {picked}")
    summary = curves(history)
    summary["agent1_live_validation_cost_per_period"].append(final_live["cost_per_period"])
    summary["agent1_live_validation_spread"].append({k: final_live[k] for k in ("std", "min", "max")})
    summary = {
        "config": {**asdict(config), "agent2": asdict(config.agent2)}, "trace": str(session.demo.trace),
        "live_periods_per_window": int(session.demo.duration / session.demo.period), **summary,
        "final_live_validation": final_live,
        "pick": {"agent": picked, "validation_total_cost": candidates[picked][0],
                 "candidates": {name: value for name, (value, _) in candidates.items()},
                 "test_total_cost": test, "checkpoint": str(out / "final.pt")},
        "wall_s": round(time.monotonic() - began, 1)}
    write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    plot_costs(summary, out / "costs.png")
    return summary


def curves(history: list[dict]) -> dict:
    """Agent 1's and agent 2's costs over the outer iterations, from their records (`iterations/II.json`)."""
    return {"agent1_live_validation_cost_per_period": [r["live_validation"]["cost_per_period"] for r in history],
            "agent1_live_validation_spread": [{k: r["live_validation"].get(k) for k in ("std", "min", "max")}
                                              for r in history],
            "agent1_live_training_cost_per_period": [r["live_training"]["cost_per_period"] for r in history],
            "agent1_twin_validation_total_cost": [r["twin_validation"]["theta1_start"] for r in history]
            + [history[-1]["twin_validation"]["blended"]],
            "agent2_twin_validation_total_cost": [r["twin_validation"]["agent2"] for r in history]}


def report(out: Path) -> dict:
    """The curves of a session, finished or interrupted, from the iteration records in `out`, with agent 1's
    cost per period (mean and spread of the repeats) on every live validation window recorded
    (`live-validation/val-II-r`, also one whose iteration did not finish); written to `out/report.json` and
    `out/costs.png`."""
    history = [json.loads(path.read_text()) for path in sorted((out / "iterations").glob("[0-9][0-9].json"))]
    if not history:
        raise TwoLoopsError(f"{out}: no finished outer iteration (iterations/00.json)")
    figures = curves(history)
    points: dict[str, list[float]] = {}
    for path in sorted((out / "live-validation").glob("val-[0-9][0-9]-*")):
        window = load(path)
        points.setdefault(path.name[:6], []).append(float(live_costs(window)[replay_periods(window)].mean()))
    figures["agent1_live_validation_cost_per_period"] = [float(np.mean(costs)) for costs in points.values()]
    figures["agent1_live_validation_spread"] = [spread(costs) for costs in points.values()]
    write_text(out / "report.json", json.dumps(figures, indent=1) + "\n")
    plot_costs(figures, out / "costs.png")
    return figures


def _validation_batch(session: Session, config: TwoLoopsConfig, seed: int):
    return validation_batch(session.demo.trace, session.table, config, seed)


def validation_batch(trace: Path, table: FlowTable, config: TwoLoopsConfig, seed: int):
    """The twin's validation (or test) windows as `dm-train --closed-loop` validates on them."""
    agent2 = config.agent2
    return loop.build(trace, table, loop.LoopSetup(
        episodes=config.validation_episodes, periods=agent2.periods_max, instances=agent2.instances,
        standby=agent2.standby, speed=agent2.speed, max_flows=agent2.max_flows, seed=seed))


def _save(path: Path, net: GNPolicyNet, config: TwoLoopsConfig, iteration: int, what: str) -> None:
    checkpoint.save(path, net, {"kind": "two-loops", "iteration": iteration, "what": what, "zeta": config.zeta})


def _line(record: dict) -> str:
    live, twin = record["live_validation"], record["twin_validation"]
    spread_ = f" (min {live['min']:,.0f}, max {live['max']:,.0f})" if live.get("std") is not None else ""
    return (f"two loops: iteration {record['iteration']}: agent 1 live validation {live['cost_per_period']:,.0f} "
            f"per period{spread_}, live training {record['live_training']['cost_per_period']:,.0f}, step KL "
            f"{record['agent1_step'].get('kl', 0.0):.3g}; twin validation "
            f"θ1 {twin['theta1_start']:,.0f} -> agent 2 {twin['agent2']:,.0f}, blended {twin['blended']:,.0f} "
            f"({record['wall_s']:.0f} s)")


def plot_costs(summary: dict, path: Path) -> None:
    """Agent 1's live cost per period over outer iterations (left); both agents on the twin's validation (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = summary["agent1_live_validation_cost_per_period"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    low = [s["min"] if s["min"] is not None else c for s, c in zip(summary["agent1_live_validation_spread"], live)]
    high = [s["max"] if s["max"] is not None else c for s, c in zip(summary["agent1_live_validation_spread"], live)]
    left.errorbar(range(len(live)), live, yerr=[np.subtract(live, low), np.subtract(high, live)], marker="o",
                  capsize=3, label="validation window, greedy θ1 (mean, min-max of repeats)")
    training = summary["agent1_live_training_cost_per_period"]
    left.plot(range(len(training)), training, marker="x", linestyle=":", label="training window I, sampling θ1")
    left.set(xlabel="outer iteration I", ylabel="cost per period (total_cost share)", title="agent 1 on the testbed",
             xticks=range(len(live)))
    left.legend()
    twin1 = summary["agent1_twin_validation_total_cost"]
    right.plot(range(len(twin1)), twin1, marker="o", label="agent 1 (θ1 at the start of I)")
    right.plot(range(1, len(twin1)), summary["agent2_twin_validation_total_cost"], marker="s",
               label="agent 2 (end of I − 1)")
    right.set(xlabel="outer iteration I", ylabel="mean total_cost", title="twin validation windows (seed 100)",
              xticks=range(len(twin1)))
    right.legend()
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.part.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)


def config_from_args(args: argparse.Namespace) -> TwoLoopsConfig:
    data = args.calibration_data
    return TwoLoopsConfig(outer=args.outer, zeta=args.zeta, twin_iterations=args.twin_iterations,
                          live_lr=args.live_lr, live_kl=args.live_kl, live_windows=args.live_windows,
                          validation_repeats=args.validation_repeats, seed=args.seed,
                          calibration_data=None if data == "none" else data)


def main_learn(args: argparse.Namespace) -> int:
    """`dm-demo --learn DIR`: check everything, run the session, print the summary; exit status."""
    import sys

    try:
        config = config_from_args(args)
        session, theta1 = prepare(args, config, args.learn, args.checkpoint, args.lock)
    except TwoLoopsError as error:
        print(f"dm-demo --learn: {error}", file=sys.stderr)
        return 2
    session.log = lambda line: print(line, flush=True)
    try:
        summary = run_two_loops(session, config, theta1)
    except KeyboardInterrupt:
        print(f"dm-demo --learn: interrupted; what was finished is in {args.learn}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, TimeoutError, OSError) as error:  # TwoLoopsError, RecordingError, ...
        print(f"dm-demo --learn: {error}", file=sys.stderr)
        return 1
    print(json.dumps({key: summary[key] for key in summary if key != "config"}, indent=1))
    return 0


def window_costs(recordings: list[Path]) -> dict:
    """Each recorded live window's cost per period (over the replay) and their spread: repeated runs of one
    window with one policy measure the testbed's own noise. The median period's cost beside the mean: a few
    executed moves measured long under load can carry most of a window's total."""
    costs, medians = {}, {}
    for path in recordings:
        window = load(path)
        periods = live_costs(window)[replay_periods(window)]
        costs[str(path)], medians[str(path)] = float(periods.mean()), float(np.median(periods))
    values = list(costs.values())
    return {"cost_per_period": costs, "mean": float(np.mean(values)), **spread(values),
            "median_period_cost": medians, "median_spread": spread(list(medians.values()))}


def main(argv: list[str] | None = None) -> int:
    """`python -m gnn_policy.two_loops DIR`: the curves of a two-loops session from its iteration records;
    `--windows REC ...`: the live cost per period of recorded windows and their spread."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m gnn_policy.two_loops", description=main.__doc__)
    parser.add_argument("session", type=Path, nargs="?", help="a dm-demo --learn DIR")
    parser.add_argument("--windows", type=Path, nargs="+", metavar="REC", help="dm-demo --record directories")
    args = parser.parse_args(argv)
    if (args.session is None) == (args.windows is None):
        parser.error("give a session DIR or --windows, one of the two")
    try:
        figures = report(args.session) if args.windows is None else window_costs(args.windows)
    except (OSError, ValueError) as error:
        print(f"two loops: {error}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
