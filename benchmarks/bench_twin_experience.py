"""Recorded testbed periods needed with and without the twin's experience (issue 19, section 3).

    PYTHONPATH=. python benchmarks/bench_twin_experience.py [--quick] [--budgets 25,50,100,200,all]
        [--seeds 0] [--iterations 30] [--json OUT.json] [--plot OUT.png]

For each budget B of recorded training periods (the first B periods of the shipped training recordings, in
order; `all` = every one, 219) and each seed, two agents start from the same untrained control head (the prior:
the rule) and take the same number of updates (`gnn_policy.twin_experience.train_agent`):

- **without the twin**: importance-weighted REINFORCE on the B periods' recorded decisions only (κ-mixed batches
  from the successful and failed buffers);
- **with the twin**: the same, plus Algorithm 1's episodes in the calibrated twin fitted on those B periods only.

**The final reward, and where it is measured.** Every agent is scored greedily on the closed loop's validation
windows (sample seed 100, `--eval-episodes` × `--eval-periods`, 4 active + 2 standby, no stabilizer) in the
**evaluation twin: the calibrated twin fitted on every recorded training and validation period** (the five
recordings of `twin.records.SHIPPED_SPLIT` but the test one). No agent trains in it: the with-twin agent's twin is
fitted on its B training periods only (at B = all on the four training recordings, without the validation one),
and no agent trains on seed-100 windows. It is a proxy for the testbed, the one this project can run at this
scale. reward = −(mean total_cost). The **final** reward is the better of the two arms' mean rewards at the
largest budget; an arm **reaches** it at the smallest budget whose mean reward is at least
prior + 0.95·(final − prior) (`twin_experience.threshold`). The JSON holds every point, the threshold, the
periods each arm needed (null: not within the budgets) and their ratio; the plot draws both curves.

`--describe` prints what each budget's recorded decisions hold (holds, acts, acts consistent with every target,
failed and successful) and stops. `--merge A.json,B.json --json OUT` joins runs made apart (e.g. one process per seed on a shared machine) into one
summary and plot; they must share the evaluation and the prior's reward.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from gnn_policy import checkpoint, control
from gnn_policy.bench import loop
from gnn_policy.live_experience import (
    ExperienceError,
    budget_episodes,
    fit_behaviour,
    live_experience,
    training_episodes,
)
from gnn_policy.twin_experience import (
    ExperienceConfig,
    evaluate,
    fresh_head,
    periods_needed,
    threshold,
    train_agent,
)
from trace_replay.cli_types import output_file_new_folders, positive_int
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin import records
from twin.calibration import fit

EVAL_SEED = 100
"""The closed loop's validation windows (docs/agent.md, "Evaluation split")."""
ARMS = ("without_twin", "with_twin")


def budgets(text: str, available: int) -> list[int]:
    """Parse `--budgets`: positive integers and `all`, none above the recorded training periods."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            values.append(available)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise ExperienceError(f"--budgets takes positive integers and 'all', got {part!r}")
    over = [b for b in values if b > available]
    if over:
        raise ExperienceError(f"--budgets {over[0]} exceeds the {available} recorded training periods")
    return sorted(set(values))


def run_point(shipped, episodes, budget: int, seed: int, config: ExperienceConfig, trace: Path, table,
              evaluation: tuple) -> list[dict]:
    """Both arms at one budget and seed: the evaluation of each trained head."""
    kept = budget_episodes(episodes, budget)
    prior = fresh_head(shipped, seed)
    experience = fit_behaviour(prior, live_experience(kept, control.TARGETS), steps=config.behaviour_steps)
    fitted = fit(kept, "train")
    points = []
    for arm in ARMS:
        net = fresh_head(shipped, seed)
        began = time.perf_counter()
        history = train_agent(net, experience, fitted if arm == "with_twin" else None, trace, table,
                              replace(config, seed=seed))
        points.append({"budget": budget, "arm": arm, "seed": seed, "train_s": time.perf_counter() - began,
                       "decisions": len(experience.transitions),
                       "twin_hold_share": statistics.fmean(m.get("twin/hold_share", 0.0) for m in history),
                       "chosen_iteration": history[-1].get("chosen_iteration", config.iterations),
                       **evaluate(net, *evaluation)})
        print(f"  budget {budget:4d} seed {seed} {arm:13s} total_cost {points[-1]['total_cost']:12,.0f} "
              f"migrations {points[-1]['migrations']:6.1f} ({points[-1]['train_s']:.0f} s)", flush=True)
    return points


def summary(points: list[dict], prior: float) -> dict:
    """Mean reward per arm and budget, the final reward, the threshold and the periods each arm needed."""
    curves = {arm: {} for arm in ARMS}
    for arm in ARMS:
        for budget in sorted({p["budget"] for p in points}):
            rewards = [p["reward"] for p in points if p["arm"] == arm and p["budget"] == budget]
            curves[arm][budget] = statistics.fmean(rewards)
    largest = max(curves[ARMS[0]])
    final = max(curves[arm][largest] for arm in ARMS)
    level = threshold(prior, final)
    needed = {arm: periods_needed(curves[arm], level) for arm in ARMS}
    ratio = (needed["without_twin"] / needed["with_twin"]
             if needed["without_twin"] and needed["with_twin"] and final > prior else None)
    return {"curves": {arm: {str(b): r for b, r in c.items()} for arm, c in curves.items()}, "final_reward": final,
            "improvement": final - prior,
            "improvement_share": (final - prior) / abs(prior), "threshold": level, "periods_needed": needed, "ratio": ratio,
            "goal_3x_met": ratio is not None and ratio >= 3.0}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for arm, label in zip(ARMS, ("recorded periods only", "recorded + twin experience")):
        curve = result["summary"]["curves"][arm]
        axes.plot([int(b) for b in curve], [-r for r in curve.values()], marker="o", label=label)
    axes.axhline(-result["prior_reward"], color="grey", linestyle=":", label="untrained head (the rule)")
    axes.axhline(-result["summary"]["threshold"], color="black", linestyle="--", label="95 % of the final gain")
    axes.set(xlabel="recorded testbed periods (training budget)",
             ylabel="validation total_cost (evaluation twin)", title="Experience from the twin")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def describe(episodes, chosen: list[int]) -> list[dict]:
    """What each budget's recorded decisions hold: the inferred actions and the buffers' sizes."""
    rows = []
    for budget in chosen:
        live = live_experience(budget_episodes(episodes, budget), control.TARGETS).transitions
        acts = live.targets[~live.hold]
        rows.append({"budget": budget, "decisions": len(live), "hold": int(live.hold.sum()), "act": len(acts),
                     "act_every_target": int(acts.all(axis=1).sum()), "failed": int(live.failed.sum()),
                     "successful": int((~live.failed).sum())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def merge(paths: list[Path]) -> dict:
    """One result from runs made apart: their points together, the summary recomputed."""
    runs = [json.loads(path.read_text()) for path in paths]
    first = runs[0]
    for path, other in zip(paths[1:], runs[1:]):
        if other["evaluation"] != first["evaluation"] or other["prior_reward"] != first["prior_reward"]:
            raise ValueError(f"{path} was evaluated otherwise than {paths[0]}: they cannot be merged")
    points = [point for run in runs for point in run["points"]]
    return {**first, "seeds": sorted({p["seed"] for p in points}), "points": points,
            "budgets": sorted({p["budget"] for p in points}), "wall_s": sum(run["wall_s"] for run in runs),
            "merged_from": [str(path) for path in paths], "summary": summary(points, first["prior_reward"])}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.merge:
        try:
            result = merge(args.merge)
        except (OSError, ValueError, KeyError) as error:
            print(f"bench_twin_experience: {error}", file=sys.stderr)
            return 2
        return _write(result, args)
    torch.set_num_threads(args.threads)
    quick = {"iterations": 3, "windows": 1, "episodes": 4, "periods_start": 5, "periods_max": 8} if args.quick else {}
    config = ExperienceConfig(**{"iterations": args.iterations, "episodes": args.episodes,
                                 "periods_max": args.periods, "live_weight": args.live_weight, **quick})
    try:  # everything that can be refused is refused here, before any work
        episodes = training_episodes()
        chosen = budgets("25,all" if args.quick and args.budgets is None else args.budgets or "25,50,100,200,all",
                         sum(e.n_periods for e in episodes))
        shipped, _ = checkpoint.load(args.checkpoint)
    except (OSError, ValueError) as error:
        print(f"bench_twin_experience: {error}", file=sys.stderr)
        return 2
    if args.describe:
        describe(episodes, chosen)
        return 0
    trace = Path(sample_path())
    table = read_flows(trace)
    evaluation_twin = fit(training_episodes(records.shipped("train") + records.shipped("validation")), "train")
    eval_episodes, eval_periods = (2, 10) if args.quick else (args.eval_episodes, args.eval_periods)
    batch = loop.build(trace, table, loop.LoopSetup(episodes=eval_episodes, periods=eval_periods,
                                                    instances=config.instances, standby=config.standby,
                                                    seed=EVAL_SEED))
    prior = evaluate(fresh_head(shipped, 0), batch, evaluation_twin)
    print(f"untrained head (the rule): total_cost {prior['total_cost']:,.0f}", flush=True)
    began, points = time.perf_counter(), []
    for budget in chosen:
        for seed in args.seeds:
            points += run_point(shipped, episodes, budget, seed, config, trace, table, (batch, evaluation_twin))
    result = {"config": asdict(config), "budgets": chosen, "seeds": args.seeds,
              "evaluation": {"twin": "calibrated, fitted on the training and validation recordings",
                             "windows": f"sample seed {EVAL_SEED}, {eval_episodes} x {eval_periods} periods",
                             "policy": "greedy control head, no stabilizer"},
              "prior_reward": prior["reward"], "points": points, "wall_s": time.perf_counter() - began}
    result["summary"] = summary(points, prior["reward"])
    return _write(result, args)


def _write(result: dict, args: argparse.Namespace) -> int:
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: budgets 25 and all, 3 short updates")
    parser.add_argument("--budgets", help="recorded periods, comma-separated, 'all' for every one "
                                          "(default 25,50,100,200,all)")
    parser.add_argument("--seeds", type=lambda t: [int(s) for s in t.split(",")], default=[0],
                        help="training seeds, comma-separated (default 0)")
    parser.add_argument("--iterations", type=positive_int, default=ExperienceConfig.iterations)
    parser.add_argument("--episodes", type=positive_int, default=4, help="copies of each training window")
    parser.add_argument("--periods", type=positive_int, default=20, help="longest training episode")
    parser.add_argument("--live-weight", type=float, default=ExperienceConfig.live_weight)
    parser.add_argument("--eval-episodes", type=positive_int, default=8)
    parser.add_argument("--eval-periods", type=positive_int, default=30)
    parser.add_argument("--checkpoint", type=Path, help="network whose body is kept (default: the shipped one)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--describe", action="store_true",
                        help="print what each budget's recorded decisions hold (inferred actions, buffers) and stop")
    parser.add_argument("--merge", type=lambda t: [Path(p) for p in t.split(",")], metavar="A.json,B.json",
                        help="join the JSON of runs made apart instead of running")
    parser.add_argument("--json", type=output_file_new_folders, metavar="OUT")
    parser.add_argument("--plot", type=output_file_new_folders, metavar="PNG")
    return parser


if __name__ == "__main__":
    sys.exit(main())
