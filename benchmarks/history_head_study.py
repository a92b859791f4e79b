"""A control head that reads the load's history (`gnn_policy.load_history`), trained on the rollout rounds' exact
one-step advantages over the hold rule, checked by K-fold over training windows and in the closed loop
(docs/agent.md, "Load history for the control head").

    PYTHONPATH=. python benchmarks/history_head_study.py --cache DIR [--windows 32] [--folds 3] [--margin 2000]
        [--kinds scale-out] [--hidden 16 | --linear] [--steps 200] [--lr 1e-2] [--init 0] [--ensemble 1] [--seed 100] [--every] [--save PT]

Reads (or collects, as `dm-train --rollout-cache` does) the first rollout round's samples of training windows 1 …
`--windows` (sample seeds `rollout_seed` + k), replays the hold rule on each to record `HISTORY_FEATURES` at each
of its decisions (checked against the samples' own control features), and trains a head over [the control
features, the history features] (standardised; no GN global state: with it the head fitted the training windows
and lost on held-out ones) on the expected regret with `--margin`, deviating only on `--kinds`. `--folds K`
prints the one-step gain over the hold rule on training and held-out decisions; then the head trained on every
window runs the closed loop on the windows of `--seed` (100 validation; 200 test, reported only), beside the hold
rule. The one-step advantages hold for one deviation between decisions of the rule, so the head's policy follows
the hold rule at the decision after a deviation (`--every`: deviate wherever the head says).
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from gnn_policy import checkpoint, control, loop_training
from gnn_policy.agent import DeepMigration
from gnn_policy.base import Decision, Policy, Problem
from gnn_policy.bench import loop
from gnn_policy.closed_loop import run_closed_loop
from gnn_policy.gn import two_layer
from gnn_policy.load_history import LoadHistory
from gnn_policy.loop_rollouts import margined
from gnn_policy.rule_policy import HoldingRule
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from twin.choice import batched_twin
from twin.params import Thresholds
from twin.scenario import ScenarioKind

KINDS = {"scale-out": ScenarioKind.SCALE_OUT, "scale-in": ScenarioKind.SCALE_IN,
         "load-balance": ScenarioKind.LOAD_BALANCE}


class Recorder(Policy):
    """The hold rule, recording [control features, history features] at each decision."""

    name: ClassVar[str] = "deepmigration-rule-hold"
    handles = DeepMigration.handles

    def __init__(self, rule: HoldingRule):
        self.rule, self.history, self.rows = rule, LoadHistory(), []

    def decide(self, problem: Problem) -> Decision:
        self.history.observe(problem)
        return super().decide(problem)

    def inputs(self, problem: Problem) -> torch.Tensor:
        return torch.cat([control.control_features(problem), torch.tensor([self.history.features(problem)])], 1)

    def _decide(self, problem: Problem) -> Decision:
        self.rows.append(self.inputs(problem))
        if not self.rule.holds(problem):
            self.history.acted()
        return self.rule._decide(problem)


class HeadPolicy(Recorder):
    """The head's greedy choice on `kinds`, the hold rule elsewhere and (unless `every`) right after a deviation."""

    name: ClassVar[str] = "deepmigration-history"

    def __init__(self, rule: HoldingRule, head: torch.nn.Module, scale: tuple, kinds: set, every: bool):
        super().__init__(rule)
        self.head, self.scale, self.kinds, self.every, self.deviated = head, scale, kinds, every, False

    def _decide(self, problem: Problem) -> Decision:
        if problem.scenario.kind not in self.kinds or (self.deviated and not self.every):
            self.deviated = False
            return super()._decide(problem)
        with torch.no_grad():
            choice = control.draw(self.head((self.inputs(problem) - self.scale[0]) / self.scale[1])[0], greedy=True)
        rule_target = control.TARGETS.index(self.rule.target)
        self.deviated = choice.hold != self.rule.holds(problem) or (not choice.hold and choice.target != rule_target)
        if not choice.hold:
            self.history.acted()
        return control.decision(problem, choice, control.TARGETS)


def window_data(args, table, config) -> list[dict]:
    """Per training window: inputs [D, F], gains [D, 1 + targets] and whether each decision is on `--kinds`."""
    net = loop_training.with_control_head(checkpoint.load(args.init_body)[0], control.TARGETS, 0)
    data = []
    for k in range(args.windows):
        samples = loop_training.window_samples(net, table, args.trace, config, 0, k, args.cache)
        setup = loop.LoopSetup(episodes=1, periods=config.periods_max, instances=config.instances,
                               standby=config.standby, max_flows=config.max_flows,
                               seed=loop_training.TRAIN_SEEDS[config.rollout_seed + k])
        recorder = Recorder(HoldingRule(config.imitation_target))
        run_closed_loop(batched_twin(config.twin, loop.build(args.trace, table, setup), setup.params,
                                     Thresholds()), [recorder])
        stored = torch.cat([s.inputs.control for s in samples]) if samples else torch.zeros(0, 5)
        if len(recorder.rows) != len(samples) or not torch.allclose(
                torch.cat(recorder.rows)[:, :stored.size(1)], stored, atol=1e-5):
            raise ValueError(f"window {k}: the replayed hold rule's decisions differ from the cached samples'")
        data.append({"x": torch.cat(recorder.rows), "gains": torch.tensor(np.stack([s.gains for s in samples]),
                                                                          dtype=torch.float32),
                     "on": torch.cat(recorder.rows)[:, [list(KINDS).index(n) for n in args.kinds]].sum(1) > 0.5})
    return data


class Ensemble(torch.nn.Module):
    """The mean logits of heads trained alike from different initial weights (less variance than one)."""

    def __init__(self, heads: list[torch.nn.Module]):
        super().__init__()
        self.heads = torch.nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(x) for head in self.heads]).mean(0)


def fit(args, data: list[dict]) -> tuple[torch.nn.Module, tuple]:
    """`--ensemble` heads (`fit_one`, seeds `--init` …) averaged."""
    heads = [fit_one(argparse.Namespace(**{**vars(args), "init": args.init + k}), data) for k in range(args.ensemble)]
    return (heads[0][0] if args.ensemble == 1 else Ensemble([h for h, _ in heads])), heads[0][1]


def fit_one(args, data: list[dict]) -> tuple[torch.nn.Module, tuple]:
    """A fresh head (seed `--init`, last layer scaled by 0.1 and no bias, as `GNPolicyNet`'s) trained on the
    expected regret of the margined gains of the decisions on `--kinds`."""
    x = torch.cat([d["x"][d["on"]] for d in data])
    gains = torch.cat([d["gains"][d["on"]] for d in data])
    scale = (x.mean(0), x.std(0) + 1e-3)
    torch.manual_seed(args.init)
    outputs = 2 + len(control.TARGETS)
    head = torch.nn.Linear(x.size(1), outputs) if args.linear else two_layer(x.size(1), args.hidden, outputs)
    last = head if args.linear else head[-1]
    with torch.no_grad():
        last.weight.mul_(0.1)
        last.bias.zero_()
    kept = torch.tensor(margined(gains.numpy(), args.margin))
    regret = (kept.max(1, keepdim=True).values - kept) / 1000.0
    optimizer = torch.optim.Adam(head.parameters(), lr=args.lr)
    for _ in range(args.steps):
        loss = (control.all_log_probs(head((x - scale[0]) / scale[1])).exp() * regret).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head, scale


def picked_gain(head, scale, data: list[dict]) -> float:
    """Summed one-step gain over the hold rule of the head's greedy actions on the decisions on `--kinds`."""
    actions = control.every_choice(len(control.TARGETS))
    total = 0.0
    for d in data:
        with torch.no_grad():
            logits = head((d["x"][d["on"]] - scale[0]) / scale[1])
        picks = [actions.index(control.draw(row, greedy=True)) for row in logits]
        total += float(d["gains"][d["on"]][torch.arange(len(picks)), picks].sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--trace", type=Path, default=Path(sample_path()), help="default: the shipped sample")
    parser.add_argument("--init-body", type=Path, help="checkpoint whose body keys the cache (default: shipped)")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--folds", type=int, default=0)
    parser.add_argument("--margin", type=float, default=2000.0)
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=["scale-out"])
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--linear", action="store_true")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--init", type=int, default=0, help="seed of the head's initial weights")
    parser.add_argument("--ensemble", type=int, default=1, help="heads averaged (seeds --init, --init + 1, ...)")
    parser.add_argument("--seed", type=int, default=100, help="closed-loop windows (100 validation, 200 test)")
    parser.add_argument("--every", action="store_true", help="deviate wherever the head says")
    parser.add_argument("--save", type=Path, help="store the trained head (weights, input scale, options) here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = read_flows(args.trace)
    config = loop_training.LoopTrainConfig()
    data = window_data(args, table, config)
    print(f"{sum(len(d['x']) for d in data)} decisions in {len(data)} windows, {int(sum(d['on'].sum() for d in data))}"
          f" on {', '.join(args.kinds)}; their best one-step gains sum to "
          f"{sum(float(d['gains'][d['on']].max(1).values.sum()) for d in data):,.0f}", flush=True)
    if args.folds:
        trained = held = 0.0
        for fold in range(args.folds):
            inside = [d for k, d in enumerate(data) if k % args.folds != fold]
            head, scale = fit(args, inside)
            trained += picked_gain(head, scale, inside)
            held += picked_gain(head, scale, [d for k, d in enumerate(data) if k % args.folds == fold])
        print(f"{args.folds}-fold, one-step gain over the hold rule: training decisions {trained:,.0f}, "
              f"held-out decisions {held:,.0f}", flush=True)
    head, scale = fit(args, data)
    if args.save:
        torch.save({"head": head.state_dict(), "scale": scale, "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}},
                   args.save)
    rule = HoldingRule(config.imitation_target)
    batch = loop.build(args.trace, table, replace(loop.LoopSetup(episodes=8, periods=30, instances=4, standby=2),
                                                  seed=args.seed))
    policies = {"deepmigration-rule-hold": rule,
                "history head": HeadPolicy(rule, head, scale, {KINDS[n] for n in args.kinds}, args.every)}
    for run in loop.run(batch, policies, (None,)):
        costs = [r["total_cost"] for r in run.records]
        print(f"seed {args.seed}, {run.policy}: total_cost {statistics.fmean(costs):,.0f} ± "
              f"{statistics.stdev(costs):,.0f}, migrations {statistics.fmean(r['migrations'] for r in run.records):.1f}"
              f", per episode {[round(c) for c in costs]}", flush=True)


if __name__ == "__main__":
    main()
