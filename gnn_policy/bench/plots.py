"""One PNG per experiment in the style of the paper's Figs. 4-7 (matplotlib, Agg backend).

Figs. 4-6 are grouped bars (one group per setting, one bar per policy, error bars = spread over
seeds); Fig. 7 is one line per policy. Each policy keeps its colour across figures.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display is needed or wanted
import matplotlib.pyplot as plt
import numpy as np

from gnn_policy.bench.experiments import Point

if TYPE_CHECKING:
    from gnn_policy.bench.loop import Run

COLOURS = {"ofm": "tab:blue", "size-greedy": "tab:orange", "pairwise": "tab:green", "random": "tab:purple",
           "optimal": "tab:red", "deepmigration": "tab:brown"}
COST = "total cost (ms-equivalents)"
TITLES = {  # experiment: (title, x label, y label, name of the threshold that splits the panels)
    "scale-out": ("Fig. 4: scale-out", "overloaded instances (of 10)", COST, "Th_high"),
    "scale-in": ("Fig. 5: scale-in", "underloaded instances (of 50)", COST, "Th_low"),
    "lb": ("Fig. 6: load balancing", "instances N", "variance ratio var_ori / var_lb", None),
    "time": ("Fig. 7: computation time", "instances N (about 40 flows each)", "decision time (ms)", None),
}
LOG_SPAN = 50.0
"""Bars switch to a log axis when the largest positive value exceeds the smallest by this factor."""
LOG_FLOOR = 0.2
"""On a log axis the bottom sits at this fraction of the smallest mean: a spread larger than its mean
runs off the bottom instead of stretching the axis down to nothing."""


def write_plots(points: Sequence[Point], directory: Path) -> list[Path]:
    """The figure of every experiment present in `points`, as `bench_<experiment>.png` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for experiment in TITLES:
        mine = [p for p in points if p.experiment == experiment]
        if not mine:
            continue
        figure = _lines(mine) if experiment == "time" else _bars(mine)
        path = directory / f"bench_{experiment.replace('-', '_')}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def _bars(points: Sequence[Point]):
    experiment = points[0].experiment
    title, xlabel, ylabel, threshold_name = TITLES[experiment]
    thresholds = sorted({p.threshold for p in points}, key=lambda t: -1.0 if t is None else t)
    policies = list(dict.fromkeys(p.policy for p in points))
    settings = sorted({p.setting for p in points})
    figure, axes = plt.subplots(1, len(thresholds), figsize=(5.5 * len(thresholds), 4), squeeze=False)
    width = 0.8 / len(policies)
    for ax, threshold in zip(axes[0], thresholds, strict=True):
        by_key = {(p.setting, p.policy): p for p in points if p.threshold == threshold}
        for k, policy in enumerate(policies):
            cells = [by_key.get((s, policy)) for s in settings]
            mean = np.array([np.nan if c is None or c.mean is None else c.mean for c in cells])
            spread = np.array([0.0 if c is None or c.spread is None else c.spread for c in cells])
            x = np.arange(len(settings)) + (k - (len(policies) - 1) / 2) * width
            ax.bar(x, mean, width, yerr=spread, capsize=3, label=policy, color=COLOURS.get(policy))
        ax.set_xticks(np.arange(len(settings)), [str(s) for s in settings])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_title(title if threshold is None else f"{title}, {threshold_name} = {threshold:.0%}")
        means = [p.mean for p in by_key.values() if p.mean is not None]
        if means and min(means) > 0 and max(means) / min(means) > LOG_SPAN:
            ax.set_yscale("log")
            ax.set_ylim(bottom=LOG_FLOOR * min(means))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _lines(points: Sequence[Point]):
    title, xlabel, ylabel, _ = TITLES["time"]
    figure, ax = plt.subplots(figsize=(6, 4))
    series = dict.fromkeys((p.policy, p.scenario) for p in points)
    for policy, scenario in series:
        mine = sorted((p for p in points if (p.policy, p.scenario) == (policy, scenario)),
                      key=lambda p: p.setting)
        label = policy if scenario == "lb" else f"{policy} ({scenario.replace('_', '-')})"
        mean = [np.nan if p.mean is None else p.mean for p in mine]
        ax.errorbar([p.setting for p in mine], mean, yerr=[p.spread or 0.0 for p in mine],
                    marker="o", capsize=3, label=label, color=COLOURS.get(policy),
                    linestyle="-" if scenario == "lb" else "--")
    ax.set_yscale("log")
    means = [p.mean for p in points if p.mean is not None and p.mean > 0]
    if means:
        ax.set_ylim(bottom=LOG_FLOOR * min(means))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    return figure


def write_loop_plots(runs: Sequence[Run], directory: Path) -> list[Path]:
    """`closed_loop_<policy>.png`: the first episode over time under each stabilizer setting: the
    utilisation band (min-max over the active instances), the active instances, the migrations per period."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for policy in dict.fromkeys(run.policy for run in runs):
        figure, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
        for run, colour in zip((r for r in runs if r.policy == policy), ("tab:red", "tab:blue"), strict=False):
            periods = run.periods[0]
            label = "stabilizer off" if run.stabilizer is None else "stabilizer on"
            time_s = [p.time_s for p in periods]
            axes[0].fill_between(time_s, [p.utilisation_min for p in periods],
                                 [p.utilisation_max for p in periods], step="post", alpha=0.35, color=colour,
                                 label=label)
            axes[1].step(time_s, [p.active for p in periods], where="post", color=colour, label=label)
            axes[2].step(time_s, [len(p.migrated) for p in periods], where="post", color=colour, label=label)
        for ax, ylabel in zip(axes, ("utilisation (min-max)", "active instances", "migrations"), strict=True):
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_title(f"closed loop: {policy}, episode 0")
        axes[2].set_xlabel("loop time (s)")
        figure.tight_layout()
        path = directory / f"closed_loop_{policy.replace('-', '_')}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
