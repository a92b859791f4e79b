"""`dm-bench --experiment closed-loop`: every policy, with and without the stabilizer, drives the same
trace-driven episodes period by period (`gnn_policy.closed_loop`); one record per (policy, stabilizer,
episode). docs/benchmark.md ("Closed loop") lists the defaults, the fields and the evaluation split.
"""
from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gnn_policy.base import Policy
from gnn_policy.closed_loop import Period, episode_metrics, run_closed_loop
from gnn_policy.stabilizer import Stabilizer, StabilizerConfig
from trace_replay.episodes import EpisodeBatch, build_episodes
from trace_replay.flows import FlowTable
from twin.choice import DEFAULT_LOOP_TWIN, batched_twin
from twin.params import CostParams, Thresholds

EXPERIMENT = "closed-loop"
PERIOD_S = 1.0
"""One step of the twin is one controller period (the controller's default `period_s`)."""
MAX_FLOWS = 4000
"""Flow slots per episode: a seeded sample of the window's flows when it holds more (docs/benchmark.md)."""
METRICS = ("total_cost", "invalid_actions", "sla_violation_flow_s", "packets_dropped", "instance_s", "migrations",
           "flows_migrated_twice", "reversals", "decision_ms_p50")
STABILIZER_CHOICES = ("on", "off", "both")
HINDSIGHT = "hindsight"
"""The row of the hindsight bound (`hindsight_run`): not a policy, the optimum with the future known."""
HINDSIGHT_TWIN = "fluid"
"""The twin the hindsight bound plans and is scored in, whatever `--twin` says: its MILP models the hand-set one."""


def stabilizer_settings(which: str,
                        config: StabilizerConfig = StabilizerConfig()) -> tuple[StabilizerConfig | None, ...]:
    """What `--stabilizer` runs: None is today's loop (the policy on the measured state), `config` the
    stabilizer's settings (`--stabilizer-config` over `StabilizerConfig()`)."""
    return {"off": (None,), "on": (config,), "both": (None, config)}[which]


@dataclass(frozen=True)
class LoopSetup:
    """The episodes every policy drives: E windows of P periods of one trace."""

    episodes: int = 8
    periods: int = 120
    instances: int = 6
    standby: int = 4
    speed: float = 1.0
    seed: int = 0
    max_flows: int = MAX_FLOWS
    start: float | None = None
    """Trace seconds from the first packet to every window's start (None: drawn per episode)."""
    capacity: float | None = None
    """Every instance's capacity, packets/s; every flow is kept (None: sized per episode)."""
    buffer: float | None = None
    """Every instance's buffer, packets (None: 100 ms at capacity)."""
    processing_ms: float | None = None
    """la_p (None: `CostParams`'s)."""

    @property
    def params(self) -> CostParams:
        return CostParams() if self.processing_ms is None else CostParams(processing_ms=self.processing_ms)


def build(trace: str | Path, table: FlowTable, setup: LoopSetup) -> EpisodeBatch:
    """The episodes of `setup`: P periods need P + 1 bins (the last one only ends the horizon). With `start`,
    `capacity`, `buffer` and `processing_ms` it is the testbed's set-up (`dm-demo`'s options of those names)."""
    return build_episodes(trace, table=table, n_episodes=setup.episodes, n_steps=setup.periods + 1,
                          n_instances=setup.instances, n_standby=setup.standby, seed=setup.seed,
                          max_flows=setup.max_flows, bin_s=PERIOD_S, speed=setup.speed, params=setup.params,
                          window_start_s=setup.start, capacity_pps=setup.capacity, buffer_packets=setup.buffer)


@dataclass(frozen=True)
class Run:
    """One (policy, stabilizer) over every episode: the records and each episode's periods (for the plots)."""

    policy: str
    stabilizer: dict | None
    records: list[dict]
    periods: list[list[Period]]


def run(batch: EpisodeBatch, prototypes: Mapping[str, Policy | Sequence[Policy]],
        settings: Sequence[StabilizerConfig | None], *, thresholds: Thresholds = Thresholds(),
        params: CostParams = CostParams(), twin: str = DEFAULT_LOOP_TWIN,
        on_period: Callable[[], None] = lambda: None) -> list[Run]:
    """Every policy under every stabilizer setting on the same episodes of `twin` (`twin.choice.LOOP_TWINS`);
    each episode gets a fresh copy of the policy and a fresh stabilizer. A sequence of policies under one name
    (`registry.REPLICAS`: seeds) is one row, every replica's episodes in it; every record names the twin."""
    runs = []
    for name, prototype in prototypes.items():
        replicas = prototype if isinstance(prototype, Sequence) else (prototype,)
        for config in settings:
            setting = None if config is None else config.to_dict()
            records, periods = [], []
            for replica, one in enumerate(replicas):
                episodes = batched_twin(twin, batch, params, thresholds)
                policies = [copy.deepcopy(one) for _ in range(batch.n_episodes)]
                stabilizers = [None if config is None else Stabilizer(config, thresholds, params)
                               for _ in range(batch.n_episodes)]
                mine = run_closed_loop(episodes, policies, stabilizers, on_period=on_period)
                records += [{"experiment": EXPERIMENT, "policy": name, "stabilizer": setting, "twin": twin,
                             "episode": b,
                             "window_start_s": float(batch.start_s[b]),
                             **({"replica": replica} if len(replicas) > 1 else {}),
                             **episode_metrics(periods_b, batch.step_s)} for b, periods_b in enumerate(mine)]
                periods += mine
            runs.append(Run(name, setting, records, periods))
    return runs


def hindsight_run(batch: EpisodeBatch, *, thresholds: Thresholds = Thresholds(), params: CostParams = CostParams(),
                  say: Callable[[str], None] = print) -> Run:
    """The `hindsight` row: every episode small enough for `gnn_policy.optimal.hindsight` solved exactly with its
    future known; `say` is told each solve's time and each skipped episode (with why)."""
    from gnn_policy.optimal import hindsight

    records, periods = [], []
    for b in range(batch.n_episodes):
        episode = hindsight.Episode.of(batch, b)
        try:
            solution = hindsight.solve(episode, thresholds, params)
        except hindsight.Unsolved as error:
            say(f"hindsight: episode {b} skipped: {error}")
            continue
        if not solution.proven:
            say(f"hindsight: episode {b} skipped: optimum not proven in {hindsight.TIME_LIMIT_S:g} s")
            continue
        mine = hindsight.plan_periods(episode, solution.assignment, solution.active, thresholds, params,
                                      batch.step_s)
        say(f"hindsight: episode {b}: {episode.size} assignment variables, optimum {solution.objective:,.1f} "
            f"proven in {solution.seconds:.2f} s")
        records.append({"experiment": EXPERIMENT, "policy": HINDSIGHT, "stabilizer": None, "twin": HINDSIGHT_TWIN,
                        "episode": b,
                        "window_start_s": float(batch.start_s[b]), "solve_s": solution.seconds,
                        **episode_metrics(mine, batch.step_s)})
        periods.append(mine)
    return Run(HINDSIGHT, None, records, periods)


def format_table(runs: Sequence[Run]) -> str:
    """Each metric's mean ± spread (sample standard deviation) over the episodes, one row per run."""
    header = ("policy", "stabilizer", "episodes", *METRICS)
    rows = [header]
    for one in runs:
        setting = "-" if one.policy == HINDSIGHT else "off" if one.stabilizer is None else "on"
        cells = [one.policy, setting, str(len(one.records))]
        for metric in METRICS:
            values = [r[metric] for r in one.records if r[metric] is not None]
            cells.append(_mean_spread(values))
        rows.append(tuple(cells))
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
                     for row in rows)


def _mean_spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{_number(statistics.fmean(values))} ± {_number(spread)}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
