"""`dm-train`: Algorithm 1 of the paper, REINFORCE on the GN policy in the batched twin.

One iteration, top to bottom:

1. draw `groups` start states from the training pool and copy each `episodes` times: the N
   parallel episodes of Algorithm 1 start from the same state, so their mean return is a fair
   per-step baseline b_t;
2. run them `length` steps in `twin.sim.BatchedTwin`: at each step the GNN samples an action on
   the current graph or (scale-out/scale-in, chosen at random per episode) on the modified graph
   of Fig. 3, the translator turns it into flows and the twin scores and applies it;
3. R_t = Σ_{t' ≥ t} r_t', b_t = mean of R_t over the episodes of a group, and the loss is
   −Σ log π(a_t | s_t)·(R_t − b_t);
4. clip the gradient norm, step Adam with a learning rate decaying linearly from 5e-3 to 1e-3, and
   let the episode length grow by ε.

Training states are built from the trace with seeds ≥ `TRAIN_SEED_BASE` (1000): `dm-bench`
evaluates on seeds 0..9, which training never sees.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gnn_policy import checkpoint
from gnn_policy.agent import act, reward, views
from gnn_policy.base import Problem
from gnn_policy.gn import GNPolicyNet, NetConfig
from gnn_policy.translator import translate
from trace_replay import scenarios
from trace_replay.flows import FlowTable, read_flows
from twin import cost
from twin.params import CostParams, Thresholds
from twin.sim import BatchedTwin
from twin.state import ClusterState

TRAIN_SEED_BASE = 1000
"""Seeds of training states start here; evaluation (dm-bench) uses seeds 0..9."""


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 800
    groups: int = 4
    """Distinct start states per iteration."""
    episodes: int = 8
    """N of Algorithm 1: parallel episodes per start state, sharing the baseline b_t."""
    initial_length: float = 1.0
    length_growth: float = 0.005
    """ε: the episode length grows by this many steps per iteration."""
    max_length: int = 2
    lr_start: float = 5e-3
    lr_end: float = 1e-3
    grad_clip: float = 1.0
    pool_size: int = 120
    seed: int = 0
    """Seeds the network init and the sampling; training states use TRAIN_SEED_BASE + k regardless."""


@dataclass(frozen=True)
class Start:
    """A training start state and the thresholds its twin scores with."""

    state: ClusterState
    thresholds: Thresholds


def training_pool(table: FlowTable, size: int, params: CostParams = CostParams()) -> list[Start]:
    """Scale-out, scale-in and load-balancing set-ups of the paper's kinds, on seeds ≥ TRAIN_SEED_BASE.

    Scale-in uses 10-15 instances instead of the paper's 50 and load balancing 8-15: the policy is size-agnostic and smaller
    graphs train faster.
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
            setup = scenarios.build_scale_in(table, underloaded=int(rng.choice([2, 3, 5])),
                                             th_low=float(rng.choice([0.1, 0.15])), seed=seed,
                                             n_instances=int(rng.choice([10, 15])), params=params)
        else:
            setup = scenarios.build_load_balance(table, n_instances=int(rng.choice([8, 10, 15])), seed=seed,
                                                 params=params)
        pool.append(Start(setup.state, setup.thresholds))
    return pool


def learning_rate(config: TrainConfig, iteration: int) -> float:
    progress = iteration / max(config.iterations - 1, 1)
    return config.lr_start + (config.lr_end - config.lr_start) * min(progress, 1.0)


def episode_length(config: TrainConfig, iteration: int) -> int:
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
        actions = [translate(view.state, sample.request, params) for view, sample in zip(chosen, samples)]
        variance_before = _variances(twin)
        result = twin.step(*twin.action_tensors(actions))
        variance_after = _variances(twin)
        step_rewards = []
        for b, problem in enumerate(problems):
            kind = problem.scenario.kind
            total = float(-result.reward[b])  # the twin charges a rejected action its invalid penalty
            step_rewards.append(reward(kind, total, variance_before[b], variance_after[b]))
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


def plot_curves(history: Sequence[dict], path: Path) -> None:
    """Training curves (reward, first-step cost by scenario, entropy, grad norm), smoothed, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
        kernel = np.ones(min(window, values.size)) / min(window, values.size)
        return np.convolve(values, kernel, mode="valid")

    iterations = np.array([h["iteration"] for h in history])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [("reward", "episode reward (−cost / 1000)", ["reward"]),
              ("cost", "first-step cost by scenario", sorted({k for h in history for k in h if k.startswith("cost/")})),
              ("entropy", "mean per-edge entropy (nats)", ["entropy"]), ("grad", "gradient norm (pre-clip)", ["grad_norm"])]
    for ax, (_, title, keys) in zip(axes.flat, panels):
        for key in keys:
            points = [(h["iteration"], h[key]) for h in history if key in h]
            x, y = (np.array(v) for v in zip(*points)) if points else (np.array([]), np.array([]))
            if y.size:
                s = smooth(y)
                ax.plot(x[x.size - s.size:], s, label=key.removeprefix("cost/"))
        ax.set_title(title)
        ax.set_xlabel("iteration")
        if len(keys) > 1:
            ax.legend()
            ax.set_yscale("symlog")
    fig.suptitle(f"DeepMigration training ({iterations.size} iterations, moving average of 25)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    defaults = TrainConfig()
    config = TrainConfig(**{f.name: getattr(args, f.name, None) if getattr(args, f.name, None) is not None
                            else getattr(defaults, f.name) for f in fields(TrainConfig)})
    torch.manual_seed(config.seed)
    try:
        table = read_flows(args.trace)
        if args.resume:
            net, record = checkpoint.load(args.resume)
            start_iteration = int(record.get("iteration", -1)) + 1
        else:
            net, record, start_iteration = GNPolicyNet(NetConfig()), {}, 0
    except (OSError, ValueError) as error:
        print(f"dm-train: {error}", file=sys.stderr)
        return 2
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr_start)
    if "optimizer" in record:
        optimizer.load_state_dict(record["optimizer"])
    pool = training_pool(table, config.pool_size)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(args.logdir))

    history = list(record.get("history", []))

    def save() -> None:
        last = history[-1]["iteration"] if history else start_iteration - 1
        checkpoint.save(args.out, net, {"iteration": last, "train_config": asdict(config), "trace": str(args.trace),
                                        "optimizer": optimizer.state_dict(), "history": history})

    def log(iteration: int, metrics: dict) -> None:
        history.append(metrics)
        for key, value in metrics.items():
            if key != "iteration":
                writer.add_scalar(key, value, iteration)
        if (iteration + 1) % args.save_every == 0:
            save()

    train(net, pool, config, optimizer=optimizer, start_iteration=start_iteration, log=log)
    writer.close()
    save()
    if args.curves:
        plot_curves(history, args.curves)
    print(f"dm-train: {len(history)} iterations, checkpoint {args.out}, TensorBoard logs {args.logdir}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dm-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, required=True, metavar="PCAP", help="trace the training states come from")
    parser.add_argument("--iterations", type=int, metavar="N", help=f"total iterations (default {TrainConfig.iterations})")
    parser.add_argument("--out", type=Path, required=True, metavar="CKPT", help="where to write the checkpoint")
    parser.add_argument("--resume", type=Path, metavar="CKPT", help="continue from this checkpoint's iteration")
    parser.add_argument("--seed", type=int, metavar="K", help="seed of the network init and of the sampling")
    parser.add_argument("--groups", type=int, metavar="G", help="start states per iteration")
    parser.add_argument("--episodes", type=int, metavar="N", help="parallel episodes per start state")
    parser.add_argument("--pool-size", dest="pool_size", type=int, metavar="K", help="training states built")
    parser.add_argument("--logdir", type=Path, default=Path("runs/dm-train"), help="TensorBoard log folder")
    parser.add_argument("--save-every", dest="save_every", type=int, default=50, metavar="K",
                        help="also write the checkpoint every K iterations (default 50)")
    parser.add_argument("--curves", type=Path, metavar="PNG", help="also write the training curves here")
    return parser


if __name__ == "__main__":
    sys.exit(main())
