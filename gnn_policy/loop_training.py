"""`dm-train --closed-loop`: training the control head (act or hold, the target utilisation; `gnn_policy.control`)
in the closed loop, on training windows only (sample seeds 0-99; docs/agent.md "Evaluation split"). Three stages,
each optional, every hyper-parameter in `LoopTrainConfig`:

1. warm start (`imitate`): cross-entropy to `deepmigration-rule-hold`'s choices at `imitation_target` (the
   validation-tuned 0.3) on the states it visits;
2. rollout rounds (`improve_by_rollouts`, `gnn_policy.loop_rollouts`): every action's exact advantage at every
   decision of the base policy (the imitated rule, then the greedy head), measured by rollouts in the twin; full-batch
   Adam on the expected regret; the shipped run's stage;
3. Algorithm 1 of the paper (`iteration_step`), off by default (`iterations` 0): each iteration cuts `windows` trace
   windows and copies each `episodes` times (the N parallel episodes, whose mean return is the per-step baseline
   b_t), drives them period by period with `gnn_policy.closed_loop.run_closed_loop` in the twin `--twin` names,
   r_t = −(the period's cost, `Period.cost`) / `cost_unit`, R_t = Σ_{t' ≥ t} r_t', loss −Σ log π(a_t | s_t)·(R_t
   − b_t) / episodes (log π exact, one batched pass), gradient clipped, lr `lr_start` → `lr_end`, episode length
   growing by ε per iteration.

After the warm start and every `rollout_check_every` steps or `validate_every` iterations, the greedy policy runs
on the validation windows (sample seed 100) as `dm-bench --experiment closed-loop` does; the checkpoint with the
lowest mean total_cost is kept. Only the control head learns; the GN body and the edge and node heads keep the
weights they start from (the shipped checkpoint by default), so the one-shot experiments' decisions do not change.
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

from gnn_policy import checkpoint, control, loop_rollouts
from gnn_policy.agent import DeepMigration
from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.bench import loop
from gnn_policy.closed_loop import run_closed_loop
from gnn_policy.gn import CONTROL_FEATURES, GNPolicyNet
from gnn_policy.loop_rollouts import replicate
from gnn_policy.rule_policy import HOLD_TARGET, HoldingRule
from trace_replay.cli_types import (
    non_negative_float,
    non_negative_int,
    output_file_new_folders,
    positive_float,
    positive_int,
    rng_seed,
)
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

    imitation_steps: int = 100
    """Warm start: full-batch Adam steps (at `imitation_lr`) of cross-entropy to the choices of
    `deepmigration-rule-hold` at `imitation_target` on the states it visits in `imitation_windows` training windows
    (`imitate`); 0 starts from the prior."""
    imitation_windows: int = 16
    imitation_lr: float = 5e-3
    imitation_target: float = HOLD_TARGET
    rollout_rounds: int = 1
    """Rounds of policy improvement by rollouts (`gnn_policy.loop_rollouts`); the first round's base policy is
    the hold rule at `imitation_target`, every other round's the greedy head."""
    rollout_windows: int = 32
    """Training windows of each round, one per sample seed (`window_samples`)."""
    rollout_seed: int = 1
    rollout_steps: int = 100
    """Full-batch Adam steps on the expected regret per round, at `rollout_lr`."""
    rollout_lr: float = 1e-2
    rollout_margin: float = 2000.0
    """Cost a change of the base policy's action must save to count (`loop_rollouts.margined`)."""
    rollout_check_every: int = 50
    """Steps between validations in a round (the best checkpoint on validation is kept)."""
    iterations: int = 0
    """REINFORCE iterations after the rollout rounds (Algorithm 1 as the paper runs it; see docs/agent.md for why
    it is off by default)."""
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
    entropy_bonus: float = 0.0
    """β: the loss subtracts β·(mean entropy of π over the decisions), to keep exploring after a warm start."""
    calibrated: str | None = None
    """The calibrated twin's fitted parameters (`dm-twin calibrate`; None: the shipped ones)."""


def episode_length(config: LoopTrainConfig, iteration: int) -> int:
    return min(config.periods_max, config.periods_start + int(config.epsilon * iteration))


def learning_rate(config: LoopTrainConfig, iteration: int) -> float:
    share = iteration / max(1, config.iterations - 1)
    return config.lr_start + (config.lr_end - config.lr_start) * share


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
        choice = control.ControlChoice(self.rule.holds(problem), self.target)
        self.samples.append((control.control_input(problem), choice))
        return control.decision(problem, choice, control.TARGETS)


def imitate(net: GNPolicyNet, table: FlowTable, trace: Path, config: LoopTrainConfig) -> dict:
    """The warm start: `imitation_steps` of cross-entropy to the hold rule's choices on the states it visits in
    training windows (seed `TRAIN_SEEDS[0]`); the final loss and the share of states where the greedy head
    agrees with the rule."""
    setup = loop.LoopSetup(episodes=config.imitation_windows, periods=config.periods_max, seed=TRAIN_SEEDS[0],
                           instances=config.instances, standby=config.standby, speed=config.speed,
                           max_flows=config.max_flows)
    batch = loop.build(trace, table, setup)
    rule = HoldingRule(config.imitation_target)
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


def with_control_head(net: GNPolicyNet, targets: Sequence[float], seed: int, *, keep: bool = False) -> GNPolicyNet:
    """`net` with a control head over `targets`, the rest of its weights kept and frozen: its own head when `keep`
    and it has one over the same grid (training goes on from it), else a fresh one (seeded), so that a run from
    any checkpoint with the same body gives the same head."""
    if keep and net.config.targets == tuple(targets):
        headed = net
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            headed = GNPolicyNet(replace(net.config, targets=tuple(targets)))
        body = {k: v for k, v in net.state_dict().items() if not k.startswith("control_head.")}
        headed.load_state_dict({**headed.state_dict(), **body})
    for name, parameter in headed.named_parameters():
        parameter.requires_grad_(name.startswith("control_head."))
    return headed


class Keeper:
    """Validates the greedy head, keeps the best checkpoint at `out`, logs every step to TensorBoard and the
    history (each entry: `step`, `stage` and the metrics)."""

    def __init__(self, out: Path, config: LoopTrainConfig, trace: Path, validation: EpisodeBatch, writer):
        self.out, self.config, self.trace, self.validation, self.writer = out, config, trace, validation, writer
        self.history: list[dict] = []
        self.best = (float("inf"), 0, "")
        self.began = time.perf_counter()

    def log(self, net: GNPolicyNet, step: int, stage: str, metrics: dict, check: bool) -> dict:
        entry = {"step": step, "stage": stage, **metrics}
        if check:
            entry["closed_loop/validation_total_cost"] = validate(net, self.validation)
        entry["wall_s"] = time.perf_counter() - self.began
        self.history.append(entry)
        if check and entry["closed_loop/validation_total_cost"] < self.best[0]:
            self.best = (entry["closed_loop/validation_total_cost"], step, stage)
            checkpoint.save(self.out, net, {
                "kind": "closed-loop", "step": step, "stage": stage, "validation_total_cost": self.best[0],
                "train_config": asdict(self.config), "trace": str(self.trace), "history": self.history})
        for key, value in entry.items():
            if isinstance(value, int | float) and key != "step":
                self.writer.add_scalar(key, value, step)
        return entry


def rollout_samples(net: GNPolicyNet, table: FlowTable, trace: Path, config: LoopTrainConfig, round_: int,
                    cache: Path | None = None) -> list[loop_rollouts.Sample]:
    """Round `round_`'s samples: every decision of the base policy on its training windows, every action's gain."""
    samples = []
    for k in tqdm(range(config.rollout_windows), desc=f"rollouts, round {round_}", unit="window"):
        samples += window_samples(net, table, trace, config, round_, k, cache)
    return samples


def window_samples(net: GNPolicyNet, table: FlowTable, trace: Path, config: LoopTrainConfig, round_: int, k: int,
                   cache: Path | None = None) -> list[loop_rollouts.Sample]:
    """The samples of window k of round `round_` (the one window of training sample seed `rollout_seed` + round ·
    `rollout_windows` + k); read from `cache` (a folder) when an earlier run stored the same ones there (same
    window, twin and base policy), else collected and stored."""
    setup = loop.LoopSetup(episodes=1, periods=config.periods_max, instances=config.instances,
                           standby=config.standby, speed=config.speed, max_flows=config.max_flows,
                           seed=TRAIN_SEEDS[(config.rollout_seed + round_ * config.rollout_windows + k)
                                            % len(TRAIN_SEEDS)])
    rule = round_ == 0
    key = {"trace": str(trace), "trace_bytes": trace.stat().st_size, "setup": asdict(setup), "twin": config.twin,
           "targets": list(net.config.targets), "features": list(CONTROL_FEATURES),
           "base": loop_rollouts.base_key(None if rule else net, config.imitation_target)}
    path = None if cache is None else loop_rollouts.cache_file(cache, key)
    samples = None if path is None else loop_rollouts.load_samples(path, key)
    if samples is None:
        base = (loop_rollouts.rule_choice(HoldingRule(config.imitation_target), net.config.targets) if rule
                else loop_rollouts.head_choice(copy.deepcopy(net).eval()))
        samples = loop_rollouts.collect(loop.build(trace, table, setup), base, net.config.targets,
                                        twin=config.twin)
        if path is not None:
            loop_rollouts.save_samples(path, key, samples)
    return samples


def improve_by_rollouts(net: GNPolicyNet, table: FlowTable, trace: Path, config: LoopTrainConfig,
                        keeper: Keeper, cache: Path | None = None) -> int:
    """Every rollout round: samples, then `rollout_steps` on their expected regret, validated every
    `rollout_check_every` steps; the number of steps taken."""
    step = 0
    for round_ in range(config.rollout_rounds):
        samples = rollout_samples(net, table, trace, config, round_, cache)
        optimizer = None
        for _ in range(config.rollout_steps // config.rollout_check_every):
            optimizer = loop_rollouts.improve(net, samples, config.rollout_check_every, config.rollout_lr,
                                              config.cost_unit, optimizer, config.rollout_margin)
            step += config.rollout_check_every
            with torch.no_grad():
                regret = float(loop_rollouts.expected_regret(net, samples, config.cost_unit, config.rollout_margin))
            entry = keeper.log(net, step, f"rollout round {round_}", {
                "rollout/expected_regret": regret, "rollout/greedy_regret": loop_rollouts.greedy_regret(net, samples),
                "rollout/base_regret": float(sum(s.gains.max() for s in samples)), "rollout/decisions": len(samples)},
                check=True)
            tqdm.write(f"round {round_}, step {step}: greedy regret {entry['rollout/greedy_regret']:,.0f} of "
                       f"{entry['rollout/base_regret']:,.0f}, validation "
                       f"{entry['closed_loop/validation_total_cost']:,.0f}")
    return step


def train(net: GNPolicyNet, table: FlowTable, trace: Path, config: LoopTrainConfig, out: Path,
          logdir: Path, rollout_cache: Path | None = None) -> list[dict]:
    """The warm start, the rollout rounds, then REINFORCE; validate, keep the best checkpoint at `out`; the
    history."""
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    validation = loop.build(trace, table, loop.LoopSetup(
        episodes=config.validation_episodes, periods=config.periods_max, instances=config.instances,
        standby=config.standby, speed=config.speed, max_flows=config.max_flows, seed=VALIDATION_SEED))
    writer = SummaryWriter(log_dir=str(logdir))
    keeper = Keeper(out, config, trace, validation, writer)
    warm = imitate(net, table, trace, config) if config.imitation_steps else {}
    if warm:
        tqdm.write("imitation warm start: " + ", ".join(f"{k} {v:.4g}" for k, v in warm.items()))
    keeper.log(net, 0, "start", warm, check=True)
    offset = improve_by_rollouts(net, table, trace, config, keeper, rollout_cache)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=config.lr_start)
    with tqdm(range(config.iterations), desc="closed-loop REINFORCE", unit="it", disable=not config.iterations) as bar:
        for iteration in bar:
            metrics = iteration_step(net, optimizer, table, trace, config, iteration, generator)
            check = (iteration + 1) % config.validate_every == 0 or iteration + 1 == config.iterations
            keeper.log(net, offset + iteration + 1, "reinforce", metrics, check)
            bar.set_postfix(reward=f"{metrics['closed_loop/reward_per_period']:.2f}",
                            val=f"{keeper.best[0]:,.0f}@{keeper.best[1]}")
    writer.close()
    return keeper.history


def plot_curve(history: Sequence[dict], path: Path) -> None:
    """The training curve: the training signal (the greedy head's regret on the rollout rounds' decisions; the
    reward per period of REINFORCE's episodes) and the validation cost of the greedy head, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    regret = [(m["step"], m["rollout/greedy_regret"] / m["rollout/base_regret"]) for m in history
              if m.get("rollout/base_regret")]
    reward = [(m["step"], m["closed_loop/reward_per_period"]) for m in history if "closed_loop/reward_per_period" in m]
    if regret:
        left.plot(*zip(*regret), marker="o", label="greedy head's regret / the base policy's")
    if reward:
        left.plot(*zip(*reward), alpha=0.5, label="REINFORCE: reward per period (−cost / 1000)")
    left.set(xlabel="step", title="training decisions")
    left.legend(fontsize=8)
    checked = [(m["step"], m["closed_loop/validation_total_cost"]) for m in history
               if "closed_loop/validation_total_cost" in m]
    if checked:
        right.plot(*zip(*checked), marker="o")
    right.set(xlabel="step", ylabel="mean total_cost", title="validation windows (greedy)")
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
        if config.imitation_target not in control.TARGETS:
            raise ValueError(f"--imitation-target {config.imitation_target:g} is not a target of the control head's "
                             f"grid {list(control.TARGETS)}")
        if config.rollout_rounds and config.rollout_steps < config.rollout_check_every:
            raise ValueError(f"--rollout-steps {config.rollout_steps} is below --rollout-check-every "
                             f"{config.rollout_check_every}: no step would be validated")
        if args.rollout_cache is not None and args.rollout_cache.exists() and not args.rollout_cache.is_dir():
            raise ValueError(f"--rollout-cache {args.rollout_cache} is a file, not a folder")
        if args.logdir.exists() and not args.logdir.is_dir():
            raise ValueError(f"--logdir {args.logdir} is a file, not a folder")
        start, _ = checkpoint.load(args.init)
        table = read_flows(args.trace)
    except (OSError, ValueError) as error:  # CheckpointError is a ValueError
        print(f"dm-train: {error}", file=sys.stderr)
        return 2
    net = with_control_head(start, control.TARGETS, config.seed, keep=args.keep_head)
    try:
        history = train(net, table, args.trace, config, args.out, args.logdir, args.rollout_cache)
    except KeyboardInterrupt:
        print(f"dm-train: interrupted; the best checkpoint so far is {args.out}", file=sys.stderr)
        return 130
    if args.curves:
        plot_curve(history, args.curves)
    best = checkpoint.load(args.out)[1]
    print(f"dm-train: {len(history)} closed-loop steps logged; best validation total_cost "
          f"{best['validation_total_cost']:,.0f} at step {best['step']} ({best['stage']}), checkpoint {args.out}, "
          f"TensorBoard logs {args.logdir}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dm-train --closed-loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=Path(sample_path()), metavar="PCAP",
                        help="trace the episodes replay (default: the shipped sample)")
    parser.add_argument("--out", type=output_file_new_folders, required=True, metavar="CKPT",
                        help="where the best checkpoint on validation is written (replaced whole)")
    parser.add_argument("--init", type=Path, metavar="CKPT",
                        help="network whose body and edge and node heads are kept (default: the shipped checkpoint)")
    parser.add_argument("--keep-head", action="store_true",
                        help="go on from --init's control head (over the same targets) instead of a fresh one")
    parser.add_argument("--logdir", type=Path, default=Path("runs/dm-train-loop"), help="TensorBoard log folder")
    parser.add_argument("--curves", type=output_file_new_folders, metavar="PNG", help="write the training curve here")
    parser.add_argument("--rollout-cache", type=Path, metavar="DIR",
                        help="folder where the rollout rounds' samples are stored and, when a rerun asks for the same "
                             "ones (same windows, twin and base policy), read back instead of collected")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--twin", choices=[t for t in LOOP_TWINS if t != "residual"],
                        help=f"the twin the episodes run in (default {DEFAULT_LOOP_TWIN})")
    parser.add_argument("--seed", type=rng_seed, metavar="K", help="seed of the control head's init and sampling")
    for name, kind, text in (
            ("imitation-steps", non_negative_int, "warm-start steps imitating deepmigration-rule-hold (0: none)"),
            ("imitation-windows", positive_int, "training windows the warm start imitates on"),
            ("imitation-lr", positive_float, "the warm start's learning rate"),
            ("imitation-target", positive_float, "target utilisation of the imitated hold rule (on the grid)"),
            ("rollout-rounds", non_negative_int, "rounds of policy improvement by rollouts"),
            ("rollout-windows", positive_int, "training windows per rollout round"),
            ("rollout-seed", non_negative_int, "training sample seed of the first round's windows"),
            ("rollout-steps", non_negative_int, "Adam steps on the expected regret per round"),
            ("rollout-lr", positive_float, "their learning rate"),
            ("rollout-margin", non_negative_float, "cost a change of the base policy's action must save"),
            ("rollout-check-every", positive_int, "steps between validations in a round"),
            ("iterations", non_negative_int, "REINFORCE iterations after the rounds"),
            ("windows", positive_int, "windows per REINFORCE iteration"),
            ("episodes", positive_int, "parallel episodes per window"),
            ("periods-start", positive_int, "episode length at the first iteration"),
            ("periods", positive_int, "longest episode, and the validation episodes' length"),
            ("epsilon", positive_float, "periods added per iteration"), ("lr-start", positive_float, "first lr"),
            ("lr-end", positive_float, "last lr"), ("instances", positive_int, "active instances at the start"),
            ("standby", positive_int, "stopped instances at the start"),
            ("validate-every", positive_int, "REINFORCE iterations between validations"),
            ("entropy-bonus", positive_float, "entropy bonus β")):
        dest = {"periods": "periods_max"}.get(name, name.replace("-", "_"))
        parser.add_argument(f"--{name}", dest=dest, type=kind, metavar="X",
                            help=f"{text} (default {getattr(LoopTrainConfig, dest)})")
    return parser
