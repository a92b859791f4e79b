"""`dm-distill`: a small student of the shipped policy (issue 19, section 6; `001_16737d162f4cc0f3.txt`,
knowledge distillation).

The student is a `GNPolicyNet` of the teacher's config with a smaller `hidden` (at most a quarter of the
teacher's parameters). It is fitted to minimise the KL divergence KL(teacher ‖ student) of the two action
distributions (`gnn_policy.actions`): the per-edge categorical over the migration levels, and the per-graph
softmax of the node logits that ranks drain destinations, on the graphs the teacher sees (`views`) in the
closed loop. States come from the teacher driving trace-driven episodes of the shipped sample at training
seeds (0-99); the KL on validation seeds (100-199) picks the epoch kept. docs/agent.md ("Student").
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.utils import softmax as group_softmax
from tqdm import tqdm

from gnn_policy import checkpoint
from gnn_policy.agent import DeepMigration
from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.gn import GNPolicyNet
from gnn_policy.views import collate, context, views

STUDENT_PATH = Path(__file__).resolve().parent / "data" / "student.pt"
"""The shipped student (`deepmigration-student`)."""
TRAINING_SEEDS = (0, 1, 2, 3)
VALIDATION_SEEDS = (100,)
SHAPES = ((4, 2), (6, 4), (12, 6))
"""(active, standby) instances of the episodes the states come from: the closed-loop benchmark's shapes and
a larger one, so the student sees clusters of several sizes (the network serves any N)."""


class DistillError(ValueError):
    """Options `dm-distill` cannot work with; the message names the problem."""


class Recorder(Policy):
    """The teacher's policy, unchanged, keeping every problem it was asked to decide."""

    name = "recorder"

    def __init__(self, policy: Policy, problems: list[Problem]):
        self.policy, self.problems = policy, problems
        self.handles = policy.handles

    def _decide(self, problem: Problem) -> Decision:
        self.problems.append(problem)
        return self.policy.decide(problem)

    def __deepcopy__(self, memo):
        return Recorder(copy.deepcopy(self.policy, memo), self.problems)


def student_of(teacher: GNPolicyNet, hidden: int) -> GNPolicyNet:
    """A freshly initialised network of the teacher's config with `hidden` units and no control head (the
    student distils the migration heads; the closed loop's act/hold head is not part of it)."""
    return GNPolicyNet(dataclasses.replace(teacher.config, hidden=hidden, targets=()))


def parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def recorded_problems(teacher: GNPolicyNet, seeds: Sequence[int], episodes: int, periods: int) -> list[Problem]:
    """Every problem the guarded teacher decides while driving the closed loop (no stabilizer) on `episodes`
    windows of the sample for each seed and shape."""
    from gnn_policy.bench import loop
    from trace_replay.flows import read_flows
    from trace_replay.generate import sample_path

    table, problems = read_flows(sample_path()), []
    for seed in seeds:
        for active, standby in SHAPES:
            setup = loop.LoopSetup(episodes=episodes, periods=periods, instances=active, standby=standby, seed=seed)
            batch = loop.build(sample_path(), table, setup)
            loop.run(batch, {"teacher": Recorder(DeepMigration(teacher, seed=seed), problems)}, (None,))
    return problems


def batches(problems: Sequence[Problem], size: int) -> list[tuple]:
    """The network inputs of `size` problems at a time: every view's graph collated, and the thresholds."""
    out = []
    for first in range(0, len(problems), size):
        graphs, thresholds = [], []
        for problem in problems[first:first + size]:
            for view in views(problem):
                graphs.append(view.graph)
                thresholds.append(problem.thresholds)
        out.append((collate(graphs), context(thresholds)))
    return out


def kl(teacher, student, graph) -> torch.Tensor:
    """KL(teacher ‖ student), the mean over edges of the level categoricals plus the mean over graphs of the
    drain-destination softmax."""
    edge = torch.nn.functional.kl_div(torch.log_softmax(student.edge, 1), torch.log_softmax(teacher.edge, 1),
                                      log_target=True, reduction="batchmean")
    index = graph.batch if graph.batch is not None else torch.zeros(graph.x.size(0), dtype=torch.long)
    groups = int(index.max()) + 1
    p = group_softmax(teacher.node, index)
    log_ratio = torch.log(p.clamp(min=1e-12)) - torch.log(group_softmax(student.node, index).clamp(min=1e-12))
    return edge + (p * log_ratio).sum() / groups


def distil(teacher: GNPolicyNet, student: GNPolicyNet, train: Sequence[tuple], validation: Sequence[tuple], *,
           epochs: int, lr: float, seed: int, progress: bool = True) -> tuple[GNPolicyNet, dict]:
    """Fit `student` to `teacher` on `train`; the epoch of least validation KL is kept. Returns it and the
    record (per-epoch losses)."""
    torch.manual_seed(seed)
    teacher.eval()
    with torch.no_grad():
        targets = [teacher(graph, ctx) for graph, ctx in train]
        held = [teacher(graph, ctx) for graph, ctx in validation]
    optimiser = torch.optim.Adam(student.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    best = (float("inf"), -1, copy.deepcopy(student.state_dict()))
    history = []
    bar = tqdm(range(epochs), desc="dm-distill", unit="epoch", disable=None if progress else True)
    for epoch in bar:
        student.train()
        total = 0.0
        for b in torch.randperm(len(train)).tolist():
            graph, ctx = train[b]
            loss = kl(targets[b], student(graph, ctx), graph)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        schedule.step()
        student.eval()
        with torch.no_grad():
            val = sum(float(kl(t, student(g, c), g)) for t, (g, c) in zip(held, validation)) / max(len(held), 1)
        history.append({"epoch": epoch, "train_kl": total / len(train), "validation_kl": val})
        if val < best[0]:
            best = (val, epoch, copy.deepcopy(student.state_dict()))
        bar.set_postfix(train=f"{total / len(train):.4f}", validation=f"{val:.4f}", best=best[1])
    student.load_state_dict(best[2])
    return student.eval(), {"chosen_epoch": best[1], "validation_kl": best[0], "history": history}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dm-distill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="the teacher's checkpoint (default: the shipped policy)")
    parser.add_argument("--out", required=True,
                        help=f"where the student goes (the shipped one is {STUDENT_PATH}; written whole or not at all)")
    parser.add_argument("--hidden", type=int, default=7, help="the student's hidden units (default 7)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--episodes", type=int, default=1, help="windows per seed and shape")
    parser.add_argument("--periods", type=int, default=15, help="periods per window")
    parser.add_argument("--batch", type=int, default=16, help="problems per gradient step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        teacher, _ = checkpoint.load(args.teacher)
        for name in ("hidden", "epochs", "episodes", "periods", "batch", "threads"):
            if getattr(args, name) < 1:
                raise DistillError(f"--{name} must be at least 1, got {getattr(args, name)}")
        if not args.lr > 0:
            raise DistillError(f"--lr must be positive, got {args.lr}")
        student = student_of(teacher, args.hidden)
        if 4 * parameters(student) > parameters(teacher):
            raise DistillError(f"--hidden {args.hidden} gives {parameters(student)} parameters, more than a quarter "
                               f"of the teacher's {parameters(teacher)}")
        out = Path(args.out)
        if out.exists() and not out.is_file():
            raise DistillError(f"--out {out} exists and is not a file")
    except (DistillError, checkpoint.CheckpointError) as error:
        print(f"dm-distill: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    train = recorded_problems(teacher, TRAINING_SEEDS, args.episodes, args.periods)
    validation = recorded_problems(teacher, VALIDATION_SEEDS, args.episodes, args.periods)
    student, record = distil(teacher, student, batches(train, args.batch), batches(validation, args.batch),
                             epochs=args.epochs, lr=args.lr, seed=args.seed)
    record.update({"teacher": args.teacher or "shipped", "teacher_parameters": parameters(teacher),
                   "student_parameters": parameters(student), "train_problems": len(train),
                   "validation_problems": len(validation), "training_seeds": list(TRAINING_SEEDS),
                   "validation_seeds": list(VALIDATION_SEEDS), "shapes": [list(s) for s in SHAPES],
                   "wall_s": round(time.monotonic() - started, 1), **{k: getattr(args, k) for k in (
                       "hidden", "epochs", "lr", "episodes", "periods", "batch", "seed")}})
    checkpoint.save(out, student, {"distillation": record})
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
