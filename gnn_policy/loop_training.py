"""`dm-train --closed-loop`: Algorithm 1 of the paper in the closed loop, for the control head (act or hold, the
target utilisation; `gnn_policy.control`). Read top to bottom, one iteration:

1. cut `windows` trace windows of the training split (sample seeds 0-99, docs/agent.md "Evaluation split")
   and copy each `episodes` times: Algorithm 1's N parallel episodes start from the same state, so the mean
   return over them is a fair per-step baseline b_t;
2. drive them period by period with `gnn_policy.closed_loop.run_closed_loop`, the benchmark's own loop, in
   the twin `--twin` names (`twin.choice.batched_twin`: fluid or calibrated): wherever the
   scenario detector calls, the policy samples hold or (act, target) and records the draw;
3. r_t = −(the period's cost, the closed-loop benchmark's `total_cost` share: `Period.cost`) / `cost_unit`,
   R_t = Σ_{t' ≥ t} r_t', b_t = mean of R_t over the window's copies; the loss is
   −Σ_decisions log π(a_t | s_t)·(R_t − b_t) / episodes, log π recomputed exactly in one batched pass;
4. clip the gradient norm, step Adam with the learning rate falling linearly from `lr_start` to `lr_end`
   (5e-3 → 1e-3, section V), and let the episode length grow by ε periods per iteration;
5. every `validate_every` iterations, run the greedy policy on the validation windows (sample seed 100) as
   `dm-bench --experiment closed-loop` does and keep the checkpoint with the lowest mean total_cost.

Only the control head learns; the GN body and the edge and node heads keep the weights they start from (the
shipped checkpoint by default), so the one-shot experiments' decisions do not change.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm import tqdm

from gnn_policy import checkpoint, control
from gnn_policy.agent import DeepMigration
from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.bench import loop
from gnn_policy.closed_loop import run_closed_loop
from gnn_policy.gn import GNPolicyNet
from gnn_policy.rule_policy import HoldingRule
from trace_replay.cli_types import output_file_new_folders, positive_float, positive_int, rng_seed
from trace_replay.episodes import EpisodeBatch
from trace_replay.flows import FlowTable, read_flows
from trace_replay.generate import sample_path
from twin.choice import DEFAULT_LOOP_TWIN, LOOP_TWINS, batched_twin
from twin.params import Thresholds

TRAIN_SEEDS = range(100)
"""Training windows: `dm-bench --experiment closed-loop --seed K` draws validation windows for K in 100-199 and
test windows for K ≥ 200 (docs/benchmark.md, "Evaluation split"); training uses 0-99 only."""
VALIDATION_SEED = 100


@dataclass(frozen=True)
class LoopTrainConfig:
    """Every hyper-parameter of a closed-loop training run (stored in the checkpoint's training record)."""

    iterations: int = 120
    windows: int = 2
    """G: trace windows per iteration."""
    episodes: int = 8
    """N: parallel episodes per window (b_t is their mean return)."""
    periods_start: int = 10
    periods_max: int = 30
    epsilon: float = 0.25
    """ε: periods added to the episode length per iteration."""
    lr_start: float = 5e-3
    lr_end: float = 1e-3
    grad_clip: float = 1.0
    cost_unit: float = 1000.0
    """r_t = −cost_t / cost_unit (ms-equivalents, as dm-train's one-shot reward)."""
    instances: int = 4
    standby: int = 2
    max_flows: int = 4000
    speed: float = 1.0
    validation_episodes: int = 8
    validate_every: int = 10
    twin: str = DEFAULT_LOOP_TWIN
    seed: int = 0
    imitation_steps: int = 0
    """Warm start: full-batch Adam steps (at `imitation_lr`) of cross-entropy to `deepmigration-rule-hold`'s choices on
    the states it visits in `imitation_windows` training windows (`imitate`); 0 starts from the prior."""
    imitation_windows: int = 16
    imitation_lr: float = 5e-3
    entropy_bonus: float = 0.0
    """β: the loss subtracts β·(mean entropy of π over the decisions), to keep exploring after a warm start."""
    calibrated: str | None = None
    """The calibrated twin's fitted parameters (`dm-twin calibrate`; None: the shipped ones)."""


def episode_length(config: LoopTrainConfig, iteration: int) -> int:
    return min(config.periods_max, config.periods_start + int(config.epsilon * iteration))


def learning_rate(config: LoopTrainConfig, iteration: int) -> float:
    share = iteration / max(1, config.iterations - 1)
    return config.lr_start + (config.lr_end - config.lr_start) * share


def replicate(batch: EpisodeBatch, copies: int) -> EpisodeBatch:
    """Each episode of `batch` `copies` times in a row (window g's copies are episodes g·copies ...)."""
    per_episode = {f.name: np.repeat(getattr(batch, f.name), copies, axis=0) for f in fields(batch)
                   if isinstance(getattr(batch, f.name), np.ndarray)}
    return replace(batch, **per_episode)


@dataclass
class Draw:
    """One sampled decision: when, on what input, what was drawn."""

    period: int
    inputs: control.ControlInput
    choice: control.ControlChoice


class Explorer(Policy):
    """The stochastic control policy of one training episode: samples, records each draw for the update."""

    name: ClassVar[str] = "deepmigration-explorer"
    handles = DeepMigration.handles

    def __init__(self, net: GNPolicyNet, generator: torch.Generator, clock: list[int]):
        self.net, self.generator, self.clock = net, generator, clock
        self.draws: list[Draw] = []

    def _decide(self, problem: Problem) -> Decision:
        inputs = control.control_input(problem)
        with torch.no_grad():
            logits = control.control_logits(self.net, [inputs])[0]
        choice = control.draw(logits, greedy=False, generator=self.generator)
        self.draws.append(Draw(self.clock[0], inputs, choice))
        return control.decision(problem, choice, self.net.config.targets)


def returns(costs: np.ndarray, cost_unit: float) -> np.ndarray:
    """[B, T] R_t = Σ_{t' ≥ t} r_t' with r = −cost / cost_unit."""
    return np.flip(np.cumsum(np.flip(-costs / cost_unit, axis=1), axis=1), axis=1).copy()


def advantages(returns_: np.ndarray, copies: int) -> np.ndarray:
    """[B, T] R_t − b_t, b_t the mean R_t over the `copies` episodes of the same window."""
    grouped = returns_.reshape(-1, copies, returns_.shape[1])
    return (grouped - grouped.mean(axis=1, keepdims=True)).reshape(returns_.shape)


def iteration_step(net: GNPolicyNet, optimizer: torch.optim.Optimizer, table: FlowTable, trace: Path,
                   config: LoopTrainConfig, iteration: int, generator: torch.Generator) -> dict:
    """One iteration of Algorithm 1 (steps 1-4 of the module's docstring); its metrics."""
    periods = episode_length(config, iteration)
    setup = loop.LoopSetup(episodes=config.windows, periods=periods, instances=config.instances,
                           standby=config.standby, speed=config.speed, max_flows=config.max_flows,
                           seed=TRAIN_SEEDS[iteration % len(TRAIN_SEEDS)])
    batch = replicate(loop.build(trace, table, setup), config.episodes)
    clock = [0]
    explorers = [Explorer(net, generator, clock) for _ in range(batch.n_episodes)]
    params, thresholds = setup.params, Thresholds()
    twin = batched_twin(config.twin, batch, params, thresholds, calibrated=config.calibrated)
    runs = run_closed_loop(twin, explorers, on_period=lambda: clock.__setitem__(0, clock[0] + 1))
    costs = np.array([[p.cost for p in run] for run in runs])
    advantage = advantages(returns(costs, config.cost_unit), config.episodes)
    draws = [(b, d) for b, explorer in enumerate(explorers) for d in explorer.draws]
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, iteration)
    metrics = {"closed_loop/reward_per_period": float(-costs.mean() / config.cost_unit),
               "closed_loop/cost_per_episode": float(costs.sum(axis=1).mean()), "episode_length": periods,
               "lr": learning_rate(config, iteration), "decisions": len(draws)}
    if not draws:
        return metrics
    logits = control.control_logits(net, [d.inputs for _, d in draws])
    log_p = control.log_prob(logits, [d.choice for _, d in draws])
    weight = torch.tensor([advantage[b, d.period] for b, d in draws], dtype=torch.float32)
    loss = -(log_p * weight).sum() / batch.n_episodes - config.entropy_bonus * control.entropy(logits).mean()
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], config.grad_clip)
    optimizer.step()
    holds = [d.choice.hold for _, d in draws]
    targets = [net.config.targets[d.choice.target] for _, d in draws if not d.choice.hold]
    return {**metrics, "loss": loss.item(), "grad_norm": float(grad_norm),
            "entropy": float(control.entropy(logits.detach()).mean()), "hold_share": float(np.mean(holds)),
            "mean_target": float(np.mean(targets)) if targets else 0.0}


class Imitator(Policy):
    """Acts as the hold rule and records each state with the rule's choice in the control head's terms."""

    name: ClassVar[str] = "deepmigration-imitator"
    handles = DeepMigration.handles

    def __init__(self, rule: HoldingRule, target: int):
        self.rule, self.target = rule, target
        self.samples: list[tuple[control.ControlInput, control.ControlChoice]] = []

    def _decide(self, problem: Problem) -> Decision:
        self.samples.append((control.control_input(problem), control.ControlChoice(self.rule.holds(problem),
                                                                                   self.target)))
        return self.rule._decide(problem)


def imitate(net: GNPolicyNet, table: FlowTable, trace: Path, config: LoopTrainConfig) -> dict:
    """The warm start: `imitation_steps` of cross-entropy to the hold rule's choices on the states it visits in
    training windows (seed `TRAIN_SEEDS[0]`); the final loss and the share of states where the greedy head
    agrees with the rule."""
    setup = loop.LoopSetup(episodes=config.imitation_windows, periods=config.periods_max, seed=TRAIN_SEEDS[0],
                           instances=config.instances, standby=config.standby, speed=config.speed,
                           max_flows=config.max_flows)
    batch = loop.build(trace, table, setup)
    rule = HoldingRule()
    imitators = [Imitator(rule, net.config.targets.index(rule.target)) for _ in range(batch.n_episodes)]
    run_closed_loop(batched_twin(config.twin, batch, setup.params, Thresholds()), imitators)
    inputs, choices = zip(*(sample for imitator in imitators for sample in imitator.samples))
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=config.imitation_lr)
    for _ in range(config.imitation_steps):
        loss = -control.log_prob(control.control_logits(net, inputs), choices).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = control.control_logits(net, inputs)
        loss = -control.log_prob(logits, choices).mean()
    greedy = [control.draw(row, greedy=True) for row in logits]
    agree = [g.hold == c.hold and (c.hold or g.target == c.target) for g, c in zip(greedy, choices)]
    return {"imitation/loss": float(loss), "imitation/agreement": float(np.mean(agree)),
            "imitation/states": len(choices), "entropy": float(control.entropy(logits).mean())}


def validate(net: GNPolicyNet, batch: EpisodeBatch) -> float:
    """Mean closed-loop total_cost of the greedy policy on the validation windows (as dm-bench runs it)."""
    policy = control.LoopMigration(copy.deepcopy(net).eval())
    (run,) = loop.run(batch, {"deepmigration": policy}, (None,))
    return statistics.fmean(record["total_cost"] for record in run.records)


def with_control_head(net: GNPolicyNet, targets: Sequence[float], seed: int) -> GNPolicyNet:
    """`net` with a control head over `targets`, the rest of its weights kept and frozen: its own head when it has
    one over the same grid (training goes on from it), else a fresh one (seeded)."""
    if net.config.targets == tuple(targets):
        for name, parameter in net.named_parameters():
            parameter.requires_grad_(name.startswith("control_head."))
        return net
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        headed = GNPolicyNet(replace(net.config, targets=tuple(targets)))
    body = {k: v for k, v in net.state_dict().items() if not k.startswith("control_head.")}
    headed.load_state_dict({**headed.state_dict(), **body})
    for name, parameter in headed.named_parameters():
        parameter.requires_grad_(name.startswith("control_head."))
    return headed


def train(net: GNPolicyNet, table: FlowTable, trace: Path, config: LoopTrainConfig, out: Path,
          logdir: Path) -> list[dict]:
    """Run every iteration, validate, keep the best checkpoint at `out`; the history."""
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=config.lr_start)
    validation = loop.build(trace, table, loop.LoopSetup(
        episodes=config.validation_episodes, periods=config.periods_max, instances=config.instances,
        standby=config.standby, speed=config.speed, max_flows=config.max_flows, seed=VALIDATION_SEED))
    writer = SummaryWriter(log_dir=str(logdir))
    history: list[dict] = []
    if config.imitation_steps:
        warm = imitate(net, table, trace, config)
        tqdm.write("imitation warm start: " + ", ".join(f"{k} {v:.4g}" for k, v in warm.items()))
        for key, value in warm.items():
            writer.add_scalar(key, value, 0)
    best = (validate(net, validation), 0)
    _save_best(out, net, config, trace, history, best)
    writer.add_scalar("closed_loop/validation_total_cost", best[0], 0)
    began = time.perf_counter()
    with tqdm(range(config.iterations), desc="closed-loop REINFORCE", unit="it") as bar:
        for iteration in bar:
            metrics = {"iteration": iteration, **iteration_step(net, optimizer, table, trace, config, iteration,
                                                              generator)}
            if (iteration + 1) % config.validate_every == 0 or iteration + 1 == config.iterations:
                metrics["closed_loop/validation_total_cost"] = validate(net, validation)
                if metrics["closed_loop/validation_total_cost"] < best[0]:
                    best = (metrics["closed_loop/validation_total_cost"], iteration + 1)
                    _save_best(out, net, config, trace, history + [metrics], best)
            metrics["wall_s"] = time.perf_counter() - began
            history.append(metrics)
            for key, value in metrics.items():
                if key != "iteration":
                    writer.add_scalar(key, value, iteration + 1)
            bar.set_postfix(reward=f"{metrics['closed_loop/reward_per_period']:.2f}",
                            val=f"{best[0]:,.0f}@{best[1]}")
    writer.close()
    return history


def _save_best(out: Path, net: GNPolicyNet, config: LoopTrainConfig, trace: Path, history: list[dict],
               best: tuple[float, int]) -> None:
    checkpoint.save(out, net, {"kind": "closed-loop", "iteration": best[1], "validation_total_cost": best[0],
                               "train_config": asdict(config), "trace": str(trace), "history": history})


def plot_curve(history: Sequence[dict], path: Path) -> None:
    """The training curve: reward per period (each iteration and a running mean) and the validation cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([m["iteration"] + 1 for m in history])
    reward = np.array([m["closed_loop/reward_per_period"] for m in history])
    running = np.convolve(reward, np.ones(10) / 10, mode="valid") if reward.size >= 10 else reward
    checked = [(m["iteration"] + 1, m["closed_loop/validation_total_cost"]) for m in history
               if "closed_loop/validation_total_cost" in m]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(steps, reward, alpha=0.35, label="each iteration")
    left.plot(steps[steps.size - running.size:], running, label="mean of 10")
    left.set(xlabel="iteration", ylabel="reward per period (−cost / 1000)", title="training episodes")
    left.legend()
    if checked:
        right.plot(*zip(*checked), marker="o")
    right.set(xlabel="iteration", ylabel="mean total_cost", title="validation windows (greedy)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    defaults = LoopTrainConfig()
    config = LoopTrainConfig(**{f.name: getattr(args, f.name) if getattr(args, f.name, None) is not None
                                else getattr(defaults, f.name) for f in fields(LoopTrainConfig)})
    torch.set_num_threads(args.threads)
    try:  # everything that can be refused is refused here, before any work
        if config.periods_start > config.periods_max:
            raise ValueError(f"--periods-start {config.periods_start} exceeds --periods {config.periods_max}")
        if args.logdir.exists() and not args.logdir.is_dir():
            raise ValueError(f"--logdir {args.logdir} is a file, not a folder")
        start, _ = checkpoint.load(args.init)
        table = read_flows(args.trace)
    except (OSError, ValueError) as error:  # CheckpointError is a ValueError
        print(f"dm-train: {error}", file=sys.stderr)
        return 2
    net = with_control_head(start, control.TARGETS, config.seed)
    try:
        history = train(net, table, args.trace, config, args.out, args.logdir)
    except KeyboardInterrupt:
        print(f"dm-train: interrupted; the best checkpoint so far is {args.out}", file=sys.stderr)
        return 130
    if args.curves:
        plot_curve(history, args.curves)
    best = checkpoint.load(args.out)[1]
    print(f"dm-train: {len(history)} closed-loop iterations; best validation total_cost "
          f"{best['validation_total_cost']:,.0f} at iteration {best['iteration']}, checkpoint {args.out}, "
          f"TensorBoard logs {args.logdir}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dm-train --closed-loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=Path(sample_path()), metavar="PCAP",
                        help="trace the episodes replay (default: the shipped sample)")
    parser.add_argument("--out", type=output_file_new_folders, required=True, metavar="CKPT",
                        help="where the best checkpoint on validation is written (replaced whole)")
    parser.add_argument("--init", type=Path, metavar="CKPT",
                        help="network whose body and heads are kept, its control head too if it has one over "
                             "the same targets (default: the shipped checkpoint)")
    parser.add_argument("--logdir", type=Path, default=Path("runs/dm-train-loop"), help="TensorBoard log folder")
    parser.add_argument("--curves", type=output_file_new_folders, metavar="PNG", help="write the training curve here")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--twin", choices=[t for t in LOOP_TWINS if t != "residual"],
                        help=f"the twin the episodes run in (default {DEFAULT_LOOP_TWIN})")
    parser.add_argument("--seed", type=rng_seed, metavar="K", help="seed of the control head's init and sampling")
    for name, kind, text in (
            ("iterations", positive_int, "REINFORCE iterations"), ("windows", positive_int, "windows per iteration"),
            ("episodes", positive_int, "parallel episodes per window"),
            ("periods-start", positive_int, "episode length at the first iteration"),
            ("periods", positive_int, "longest episode, and the validation episodes' length"),
            ("epsilon", positive_float, "periods added per iteration"), ("lr-start", positive_float, "first lr"),
            ("lr-end", positive_float, "last lr"), ("instances", positive_int, "active instances at the start"),
            ("standby", positive_int, "stopped instances at the start"),
            ("validate-every", positive_int, "iterations between validations"),
            ("imitation-steps", positive_int, "warm-start steps imitating deepmigration-rule-hold"),
            ("imitation-windows", positive_int, "training windows the warm start imitates on"),
            ("imitation-lr", positive_float, "the warm start's learning rate"),
            ("entropy-bonus", positive_float, "entropy bonus β")):
        dest = {"periods": "periods_max"}.get(name, name.replace("-", "_"))
        parser.add_argument(f"--{name}", dest=dest, type=kind, metavar="X",
                            help=f"{text} (default {getattr(LoopTrainConfig, dest)})")
    return parser
