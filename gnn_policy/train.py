"""`dm-train`: imitation warm start, then Algorithm 1 of the paper (REINFORCE) in the batched twin.

Phase 1, imitation (a departure from the paper, docs/agent.md says why): the teacher (`Optimal`
with a short time limit, warm-started from every baseline, so never worse than the best of them)
decides each training state once (cached on disk); its flow-level action is converted to the
policy's own action space (`imitation.imitation_choice`: a migration level per edge, a destination
per drained instance) and the network maximises the log-probability of that choice.

Phase 2, Algorithm 1, one iteration top to bottom:

1. draw `groups` start states from the training pool and copy each `episodes` times: the N
   parallel episodes of Algorithm 1 start from the same state, so their mean return is a fair
   per-step baseline b_t;
2. run them `length` steps in `twin.sim.BatchedTwin`: at each step the GNN samples an action on
   the current graph or (scale-out/scale-in, chosen at random per episode) on the modified graph
   of Fig. 3, the translator turns it into flows and the twin scores and applies it;
3. R_t = Σ_{t' ≥ t} r_t', b_t = mean of R_t over the episodes of a group, and the loss is
   −Σ log π(a_t | s_t)·(R_t − b_t);
4. clip the gradient norm, step Adam with a learning rate decaying linearly from `lr_start` to
   `lr_end`, and let the episode length grow by ε.

Training states are built from the trace with seeds ≥ `TRAIN_SEED_BASE` (1000): `dm-bench`
evaluates on seeds 0..9, which training never sees.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gnn_policy import checkpoint
from gnn_policy.actions import Choice, act, realise
from gnn_policy.base import Problem
from gnn_policy.checkpoint import CheckpointError
from gnn_policy.gn import GNPolicyNet, NetConfig
from gnn_policy.imitation import imitation_choice
from gnn_policy.views import GraphView, views
from trace_replay import scenarios
from trace_replay.cli_types import (
    non_negative_int,
    output_file_new_folders,
    positive_float,
    positive_int,
    rng_seed,
)
from trace_replay.files import atomic_write, rescue_path
from trace_replay.flows import FlowTable, read_flows
from twin import cost
from twin.checkpoint_file import first_line
from twin.migration import IndexedAction
from twin.params import CostParams, Thresholds
from twin.scenario import ScenarioKind
from twin.sim import BatchedTwin
from twin.state import ClusterState

TRAIN_SEED_BASE = 1000
"""Seeds of training states start here; evaluation (dm-bench) uses seeds 0..9."""
LB_VARIANCE_WEIGHT = 10.0
"""Reward of load balancing per unit of var_after/var_before, against costs in seconds of latency."""
COST_UNIT = 1000.0
"""Costs are divided by this in rewards (1000 ms-equivalents = one instance's C_R) to keep gradients O(1)."""


def training_reward(kind: ScenarioKind, total: float, variance_before: float, variance_after: float) -> float:
    """The training reward: the paper's −total cost (section V.C, `CostBreakdown.reward`) in `COST_UNIT`s, plus
    for load balancing a term for the variance left, var_after / var_before, since a balancing that moves
    nothing costs nothing."""
    value = -total / COST_UNIT
    if kind is ScenarioKind.LOAD_BALANCE and variance_before > 0:
        value -= LB_VARIANCE_WEIGHT * variance_after / variance_before
    return value


@dataclass(frozen=True)
class TrainConfig:
    imitation_epochs: int = 400
    """Passes over the teacher's choices before REINFORCE (0: start REINFORCE from scratch, as the paper)."""
    imitation_lr: float = 3e-3
    imitation_batch: int = 16
    teacher_time_limit_s: float = 2.0
    """Optimal's limit per training state when it teaches."""
    iterations: int = 0
    """REINFORCE iterations after imitation. 0 by default: measured on held-out training states (seeds
    1150-1209), 60 to 200 fine-tuning iterations made the greedy policy worse (docs/agent.md)."""
    groups: int = 4
    """Distinct start states per iteration."""
    episodes: int = 8
    """N of Algorithm 1: parallel episodes per start state, sharing the baseline b_t."""
    initial_length: float = 1.0
    length_growth: float = 0.005
    """ε: the episode length grows by this many steps per iteration."""
    max_length: int = 2
    lr_start: float = 1e-3
    lr_end: float = 2e-4
    grad_clip: float = 1.0
    pool_size: int = 150
    seed: int = 0
    """Seeds the network init and the sampling; training states use TRAIN_SEED_BASE + k regardless."""


@dataclass(frozen=True)
class Start:
    """A training start state and the thresholds its twin scores with."""

    state: ClusterState
    thresholds: Thresholds


def training_pool(table: FlowTable, size: int, params: CostParams = CostParams()) -> list[Start]:
    """Scale-out, scale-in and load-balancing set-ups of the paper's kinds, on seeds ≥ TRAIN_SEED_BASE.

    Scale-in uses 10-30 instances instead of the paper's 50 and load balancing 8-30 (dm-bench: up to
    40): the policy is size-agnostic and smaller graphs train and are taught faster.
    """
    pool = []
    for k in range(size):
        seed = TRAIN_SEED_BASE + k
        rng = np.random.default_rng(seed)
        kind = k % 3
        if kind == 0:
            setup = scenarios.build_scale_out(table, overloaded=int(rng.choice([2, 4, 6, 8])),
                                              th_high=float(rng.choice([0.55, 0.6])), seed=seed, params=params)
        elif kind == 1:
            setup = scenarios.build_scale_in(table, underloaded=int(rng.choice([2, 3, 5, 8])),
                                             th_low=float(rng.choice([0.1, 0.15])), seed=seed,
                                             n_instances=int(rng.choice([10, 15, 30])), params=params)
        else:
            setup = scenarios.build_load_balance(table, n_instances=int(rng.choice([8, 10, 15, 20, 30])),
                                                 seed=seed, params=params)
        pool.append(Start(setup.state, setup.thresholds))
    return pool


# --- phase 1: imitation -----------------------------------------------------------------------------
def teacher_actions(pool: Sequence[Start], time_limit_s: float, cache: Path | None = None,
                    progress: bool = True) -> list[IndexedAction]:
    """Optimal's action on each start state; read from / written to `cache`, keyed by the states and the limit."""
    from gnn_policy.registry import make_policy

    key = _pool_key(pool, time_limit_s)
    stored = read_teacher_cache(cache)
    if stored is not None and stored["key"] == key and len(stored["actions"]) == len(pool):
        return stored["actions"]
    teacher = make_policy("optimal", seed=0, time_limit_s=time_limit_s, with_agent=False)
    actions = [teacher.decide(Problem.of(start.state, start.thresholds)).action
               for start in tqdm(pool, disable=not progress, desc="teacher", unit="state")]
    if cache is not None:
        rows = [[torch.as_tensor(a) for a in (x.flows, x.dst, x.start, x.stop)] for x in actions]
        with atomic_write(cache, make_parents=True) as handle:
            torch.save({"key": key, "actions": rows}, handle)
    return actions


class TeacherCacheError(ValueError):
    """A teacher cache file that is not one `teacher_actions` wrote; it is left alone, not overwritten."""


def read_teacher_cache(cache: Path | None) -> dict | None:
    """{"key", "actions"} of the cache at `cache`, None when there is none; TeacherCacheError for any other
    file."""
    if cache is None or not cache.exists():
        return None
    try:
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        key, rows = stored["key"], stored["actions"]
        if not isinstance(key, str) or not isinstance(rows, list):
            raise TypeError("no key string and action list")
        if any(not isinstance(row, list) or len(row) != 4 for row in rows):
            raise TypeError("an action is not (flows, dst, start, stop)")
        actions = [IndexedAction(*(t.numpy() for t in row)) for row in rows]
    except Exception as error:  # noqa: BLE001  whatever the file holds, it is named, not run or overwritten
        raise TeacherCacheError(f"--teacher-cache {cache} is not a teacher cache of dm-train "
                                f"({first_line(error)}); remove it or pass another path") from None
    return {"key": key, "actions": actions}


def _pool_key(pool: Sequence[Start], time_limit_s: float) -> str:
    digest = hashlib.sha1(f"optimal {time_limit_s}".encode())
    for start in pool:
        s = start.state
        for array in (s.capacity, s.buffer, s.queue, s.active, s.rate, s.sla_ms, s.assignment):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(repr(start.thresholds).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Example:
    """One teacher decision in the policy's action space."""

    view: GraphView
    choice: Choice
    thresholds: Thresholds


def imitation_examples(pool: Sequence[Start], actions: Sequence[IndexedAction], levels: Sequence[float],
                       params: CostParams = CostParams()) -> list[Example]:
    """The teacher's `actions` (one per start of `pool`, in order) as choices over the migration `levels`;
    starts whose state has no scenario give no example."""
    examples = []
    for start, action in zip(pool, actions):
        problem = Problem.of(start.state, start.thresholds, params)
        if problem.scenario.kind is not ScenarioKind.NONE:
            view, choice = imitation_choice(problem, action, levels)
            examples.append(Example(view, choice, start.thresholds))
    return examples


def imitate(net: GNPolicyNet, examples: Sequence[Example], config: TrainConfig, *,
            log: Callable[[int, dict], None] | None = None, progress: bool = True) -> list[dict]:
    """Behaviour cloning: maximise the log-probability of the teacher's choices, per edge, in minibatches."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.imitation_lr)
    history = []
    net.train()
    for epoch in tqdm(range(config.imitation_epochs), disable=not progress, desc="imitation", unit="epoch"):
        order = torch.randperm(len(examples), generator=generator).tolist()
        losses = []
        for first in range(0, len(order), config.imitation_batch):
            batch = [examples[k] for k in order[first:first + config.imitation_batch]]
            samples = act(net, [e.view for e in batch], [e.thresholds for e in batch],
                          given=[e.choice for e in batch])
            loss = -torch.stack([s.log_prob for s in samples]).sum() / sum(e.view.graph.num_edges for e in batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        metrics = {"epoch": epoch, "imitation_loss": float(np.mean(losses))}
        history.append(metrics)
        if log is not None:
            log(epoch, metrics)
    return history


# --- phase 2: REINFORCE (Algorithm 1) ---------------------------------------------------------------
def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Adam's learning rate at `iteration` (0-based): linear from lr_start at the first to lr_end at the last."""
    progress = iteration / max(config.iterations - 1, 1)
    return config.lr_start + (config.lr_end - config.lr_start) * min(progress, 1.0)


def episode_length(config: TrainConfig, iteration: int) -> int:
    """Steps per episode at `iteration`: initial_length + ε·iteration, rounded down, at most max_length."""
    return min(config.max_length, int(config.initial_length + config.length_growth * iteration))


def run_episodes(net: GNPolicyNet, starts: Sequence[Start], config: TrainConfig, length: int,
                 generator: torch.Generator, rng: np.random.Generator, params: CostParams) -> dict:
    """Roll out `episodes` copies of each start for `length` steps; log-probs, rewards and what they cost."""
    thresholds = starts[0].thresholds
    states = [start.state for start in starts for _ in range(config.episodes)]
    twin = BatchedTwin.from_states(states, params, thresholds)
    log_probs, rewards, entropies = [], [], []
    first_costs: dict[str, list[float]] = {}
    for t in range(length):
        problems = [Problem.of(state, thresholds, params) for state in twin.states()]
        chosen = [_pick(views(problem), rng) for problem in problems]
        samples = act(net, chosen, [thresholds] * len(chosen), greedy=False, generator=generator)
        actions = [realise(problem, sample.request) for problem, sample in zip(problems, samples)]
        variance_before = _variances(twin)
        result = twin.step(*twin.action_tensors(actions))
        variance_after = _variances(twin)
        step_rewards = []
        for b, problem in enumerate(problems):
            kind = problem.scenario.kind
            total = float(-result.reward[b])  # the twin charges a rejected action its invalid penalty
            step_rewards.append(training_reward(kind, total, variance_before[b], variance_after[b]))
            if t == 0:
                first_costs.setdefault(kind.value, []).append(total)
        log_probs.append(torch.stack([s.log_prob for s in samples]))
        entropies.append(torch.stack([s.entropy for s in samples]))
        rewards.append(torch.tensor(step_rewards, dtype=torch.float32))
    return {"log_prob": torch.stack(log_probs), "reward": torch.stack(rewards), "entropy": torch.stack(entropies),
            "first_costs": first_costs}


def _pick(graph_views: list, rng: np.random.Generator):
    """Current or modified graph, uniformly: both GNNs of Fig. 3 learn from every scaling state."""
    return graph_views[int(rng.integers(len(graph_views)))]


def _variances(twin: BatchedTwin) -> np.ndarray:
    utilisation = twin.utilisation.cpu().numpy()
    active = (twin.active & twin.instance_mask).cpu().numpy()
    return np.array([cost.load_variance(u, a) for u, a in zip(utilisation, active)])


def reinforce_loss(log_prob: torch.Tensor, rewards: torch.Tensor, episodes: int) -> torch.Tensor:
    """Algorithm 1, lines 4-9: [T, G·N] log-probs and rewards; baseline per step and per start-state group."""
    returns = rewards.flip(0).cumsum(0).flip(0)
    grouped = returns.view(returns.size(0), -1, episodes)
    advantage = (grouped - grouped.mean(dim=2, keepdim=True)).view_as(returns)
    return -(log_prob * advantage).sum(0).mean()


def train(net: GNPolicyNet, pool: Sequence[Start], config: TrainConfig, *, optimizer: torch.optim.Optimizer,
          start_iteration: int = 0, params: CostParams = CostParams(),
          log: Callable[[int, dict], None] | None = None, progress: bool = True) -> list[dict]:
    """Iterations `start_iteration`..`config.iterations` of Algorithm 1; one metrics dict per iteration."""
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    by_thresholds: dict[Thresholds, list[Start]] = {}
    for start in pool:
        by_thresholds.setdefault(start.thresholds, []).append(start)
    keys = list(by_thresholds)
    history = []
    bar = tqdm(range(start_iteration, config.iterations), disable=not progress, desc="dm-train", unit="it")
    for iteration in bar:
        group = by_thresholds[keys[int(rng.integers(len(keys)))]]
        starts = [group[int(i)] for i in rng.integers(len(group), size=config.groups)]
        length = episode_length(config, iteration)
        for param_group in optimizer.param_groups:
            param_group["lr"] = learning_rate(config, iteration)
        net.train()
        rollout = run_episodes(net, starts, config, length, generator, rng, params)
        loss = reinforce_loss(rollout["log_prob"], rollout["reward"], config.episodes)
        optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip))
        optimizer.step()
        metrics = {"iteration": iteration, "reward": float(rollout["reward"].sum(0).mean()),
                   "first_step_reward": float(rollout["reward"][0].mean()),
                   "entropy": float(rollout["entropy"].detach().mean()), "grad_norm": grad_norm, "loss": float(loss.detach()),
                   "episode_length": length, "lr": learning_rate(config, iteration),
                   **{f"cost/{kind}": float(np.mean(c)) for kind, c in rollout["first_costs"].items()}}
        history.append(metrics)
        if log is not None:
            log(iteration, metrics)
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", length=length)
    return history


def plot_curves(imitation: Sequence[dict], history: Sequence[dict], path: Path) -> None:
    """Training curves (imitation loss; reward, first-step cost by scenario, entropy, grad norm), to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(values: np.ndarray, window: int) -> np.ndarray:
        kernel = np.ones(min(window, values.size)) / min(window, values.size)
        return np.convolve(values, kernel, mode="valid")

    window = max(1, min(25, len(history) // 10))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    panels = [("epoch", "imitation: −log π(teacher) per edge", ["imitation_loss"], imitation, 1),
              ("iteration", "REINFORCE: episode reward (−cost / 1000)", ["reward"], history, window),
              ("iteration", "REINFORCE: first-step cost by scenario",
               sorted({k for h in history for k in h if k.startswith("cost/")}), history, window),
              ("iteration", "REINFORCE: mean per-edge entropy (nats)", ["entropy"], history, window),
              ("iteration", "REINFORCE: gradient norm (pre-clip)", ["grad_norm"], history, window)]
    for ax, (axis, title, keys, records, span) in zip(axes.flat, panels):
        for key in keys:
            points = [(h[axis], h[key]) for h in records if key in h]
            if points:
                x, y = (np.array(v) for v in zip(*points))
                s = smooth(y, span)
                ax.plot(x[x.size - s.size:], s, label=key.removeprefix("cost/"))
        ax.set_title(title)
        ax.set_xlabel(axis)
        if len(keys) > 1:
            ax.legend()
            ax.set_yscale("symlog")
    axes.flat[-1].axis("off")
    fig.suptitle(f"DeepMigration training: {len(imitation)} imitation epochs, then {len(history)} REINFORCE "
                 f"iterations (moving average of {window})")
    fig.tight_layout()
    try:
        with atomic_write(path, make_parents=True) as handle:
            fig.savefig(handle, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


@dataclass
class Progress:
    """Where training stands: the network, its optimizer and the records so far (empty for a fresh start)."""

    net: GNPolicyNet
    optimizer: torch.optim.Optimizer
    start_iteration: int = 0
    imitation: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--closed-loop" in argv:  # Algorithm 1 in the closed loop: its own options (gnn_policy/loop_training.py)
        from gnn_policy import loop_training

        return loop_training.main([arg for arg in argv if arg != "--closed-loop"])
    args = _parser().parse_args(argv)
    defaults = TrainConfig()
    config = TrainConfig(**{f.name: getattr(args, f.name, None) if getattr(args, f.name, None) is not None
                            else getattr(defaults, f.name) for f in fields(TrainConfig)})
    torch.manual_seed(config.seed)
    try:  # everything that can be refused is refused here, before any work
        table = read_flows(args.trace)
        progress = resume(args.resume, config) if args.resume else fresh_start(config)
        if args.logdir.exists() and not args.logdir.is_dir():
            raise ValueError(f"--logdir {args.logdir} is a file, not a folder")
        if not args.resume and config.imitation_epochs > 0:
            read_teacher_cache(args.teacher_cache)
    except (OSError, ValueError) as error:  # CheckpointError and TeacherCacheError are ValueErrors
        print(f"dm-train: {error}", file=sys.stderr)
        return 2

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(args.logdir))
    net, optimizer = progress.net, progress.optimizer
    imitation, history = progress.imitation, progress.history

    def save() -> bool:
        last = history[-1]["iteration"] if history else progress.start_iteration - 1
        return _save(args.out, net, {"iteration": last, "train_config": asdict(config),
                                     "trace": str(args.trace), "optimizer": optimizer.state_dict(),
                                     "imitation": imitation, "history": history})

    def log(step: int, metrics: dict) -> None:
        (history if "iteration" in metrics else imitation).append(metrics)
        for key, value in metrics.items():
            if key not in ("iteration", "epoch"):
                writer.add_scalar(key, value, step)
        if "iteration" in metrics and (step + 1) % args.save_every == 0:
            save()

    loaded = len(imitation) + len(history)
    try:
        pool = training_pool(table, config.pool_size)
        if not args.resume and config.imitation_epochs > 0:
            actions = teacher_actions(pool, config.teacher_time_limit_s, args.teacher_cache)
            imitate(net, imitation_examples(pool, actions, net.config.levels), config, log=log)
        train(net, pool, config, optimizer=optimizer, start_iteration=progress.start_iteration, log=log)
    except KeyboardInterrupt:  # keep what this run learnt; a run that learnt nothing leaves --out alone
        saved = len(imitation) + len(history) > loaded and save()
        print(f"dm-train: interrupted after {len(imitation)} imitation epochs and {len(history)} iterations"
              + (f"; checkpoint {args.out} (--resume continues it)" if saved else "; nothing written"),
              file=sys.stderr)
        return 130
    finally:
        writer.close()
    if not save():
        return 1
    if args.curves:
        try:
            plot_curves(imitation, history, args.curves)
        except OSError as error:
            print(f"dm-train: cannot write --curves {args.curves}: {error.strerror or error}",
                  file=sys.stderr)
            return 1
    print(f"dm-train: {len(imitation)} imitation epochs, {len(history)} iterations, checkpoint {args.out}, "
          f"TensorBoard logs {args.logdir}")
    return 0


def fresh_start(config: TrainConfig) -> Progress:
    """A new network, or a ValueError when the options leave nothing to train."""
    if config.imitation_epochs == 0 and config.iterations == 0:
        raise ValueError("nothing to train: --imitation-epochs and --iterations are both 0")
    net = GNPolicyNet(NetConfig())
    return Progress(net, torch.optim.Adam(net.parameters(), lr=config.lr_start))


def resume(path: Path, config: TrainConfig) -> Progress:
    """The progress stored in checkpoint `path`, every part checked; CheckpointError naming what is wrong."""
    net, record = checkpoint.load(path)
    iteration = record.get("iteration", -1)
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < -1:
        raise CheckpointError(f"{path}: the training record's iteration is {iteration!r}, "
                              "not an integer >= -1")
    if iteration + 1 >= config.iterations:
        raise ValueError(f"nothing to train: {path} has done {iteration + 1} iterations and --iterations is "
                         f"{config.iterations}")
    records = {}
    for name, counter in (("imitation", "epoch"), ("history", "iteration")):
        entries = record.get(name, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get(counter), int)
                                                    for e in entries):
            raise CheckpointError(f"{path}: the training record's {name} is not a list of metrics with an "
                                  f"integer {counter!r}")
        records[name] = list(entries)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr_start)
    if "optimizer" in record:
        _load_optimizer(optimizer, record["optimizer"], path)
    return Progress(net, optimizer, iteration + 1, records["imitation"], records["history"])


def _load_optimizer(optimizer: torch.optim.Optimizer, state, path: Path) -> None:
    """Adam's stored state, checked against the network it steps: one finite moment tensor per weight, shaped
    like it (torch checks only the number of weights, and a mismatch would fail at the first step)."""
    try:
        optimizer.load_state_dict(state)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the optimizer state does not fit the network: {error}") from None
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if not (isinstance(value, torch.Tensor) and value.isfinite().all()
                        and (name == "step" or value.shape == parameter.shape)):
                    raise CheckpointError(f"{path}: the optimizer state's {name!r} does not fit a weight "
                                          f"of shape {tuple(parameter.shape)} or is not finite")


def _save(path: Path, net: GNPolicyNet, training: dict) -> bool:
    """Write the checkpoint; if `path` cannot be written, keep it in a temporary file and say where."""
    try:
        checkpoint.save(path, net, training)
        return True
    except OSError as error:
        kept = rescue_path("dm-train", ".pt")
        checkpoint.save(kept, net, training)
        print(f"dm-train: cannot write {path}: {error.strerror or error}; the checkpoint is in {kept}",
              file=sys.stderr)
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dm-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--closed-loop", action="store_true",
                        help="train the act/hold and target heads in the closed loop instead (its options: "
                             "dm-train --closed-loop --help)")
    parser.add_argument("--trace", type=Path, required=True, metavar="PCAP", help="trace the training states come from")
    parser.add_argument("--out", type=output_file_new_folders, required=True, metavar="CKPT",
                        help="where to write the checkpoint (replaced whole; checked before training)")
    parser.add_argument("--resume", type=Path, metavar="CKPT",
                        help="continue REINFORCE from this checkpoint's iteration (no imitation)")
    parser.add_argument("--seed", type=rng_seed, metavar="K", help="seed of the network init and of the sampling")
    parser.add_argument("--pool-size", dest="pool_size", type=positive_int, metavar="K", help="training states built")
    imitation = parser.add_argument_group("phase 1, imitation of the teacher (Optimal with a short time limit)")
    imitation.add_argument("--imitation-epochs", dest="imitation_epochs", type=non_negative_int, metavar="E",
                           help=f"passes over the teacher's choices, 0 to skip (default {TrainConfig.imitation_epochs})")
    imitation.add_argument("--imitation-lr", dest="imitation_lr", type=positive_float, metavar="LR",
                           help=f"Adam learning rate (default {TrainConfig.imitation_lr})")
    imitation.add_argument("--teacher-time-limit", dest="teacher_time_limit_s", type=positive_float, metavar="S",
                           help=f"Optimal's limit per state (default {TrainConfig.teacher_time_limit_s})")
    imitation.add_argument("--teacher-cache", type=output_file_new_folders, default="runs/dm-train/teacher.pt",
                           metavar="PATH",
                           help="where the teacher's actions are cached (reused while pool and limit match)")
    reinforce = parser.add_argument_group("phase 2, REINFORCE in the batched twin (Algorithm 1)")
    reinforce.add_argument("--iterations", type=non_negative_int, metavar="N",
                           help=f"total iterations (default {TrainConfig.iterations})")
    reinforce.add_argument("--groups", type=positive_int, metavar="G", help="start states per iteration")
    reinforce.add_argument("--episodes", type=positive_int, metavar="N", help="parallel episodes per start state")
    reinforce.add_argument("--lr-start", dest="lr_start", type=positive_float, metavar="LR",
                           help=f"learning rate at the first iteration (default {TrainConfig.lr_start})")
    reinforce.add_argument("--lr-end", dest="lr_end", type=positive_float, metavar="LR",
                           help=f"learning rate at the last iteration (default {TrainConfig.lr_end})")
    parser.add_argument("--logdir", type=Path, default=Path("runs/dm-train"), help="TensorBoard log folder")
    parser.add_argument("--save-every", dest="save_every", type=positive_int, default=50, metavar="K",
                        help="also write the checkpoint every K iterations (default 50)")
    parser.add_argument("--curves", type=output_file_new_folders, metavar="PNG", help="also write the training curves here")
    return parser


if __name__ == "__main__":
    sys.exit(main())
