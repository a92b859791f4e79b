"""Recordings made by the twin's simulator with known parameters: the ground truth that calibration must
recover (tests/test_calibration.py) and a stand-in for the testbed's data where none is recorded yet.

The simulated cluster serves at `service_ratio` times the capacity it reports and buffers `buffer_ratio`
times its reported buffer; each flow has packets queued with the probability of `twin.physics.flow_wait_ms`'s
expectation, its last one at the tail of its instance's queue (the NF's per-flow report); moves take
a + b·n + c·w ms (n: the period's moves, w: the batch's drain wait) plus noise; the sink sees each
flow's packets after la_p plus its instance's queueing delay plus noise; the reported queue carries noise
too. Each period the controller's view (`BatchedTwin.observed_states`, rates measured over the last period)
is recorded, random valid moves are made (an explorer), and the twin steps on the trace's next bin.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from twin import cost
from twin.fidelity.episode import RecordedAction
from twin.fidelity.twins import pair_latency
from twin.migration import IndexedAction, InvalidAction, apply
from twin.params import CostParams
from twin.physics import batch_wait_ms, flow_wait_ms
from twin.records import MoveRecord, PeriodRecord, RecordingWriter
from twin.sim import BatchedTwin, fluid_queue


@dataclass(frozen=True)
class Truth:
    """The parameters the simulated testbed runs with (per instance index where a tuple)."""

    service_ratio: tuple[float, ...] = (0.8, 1.2)
    buffer_ratio: tuple[float, ...] = (0.5, 1.5)
    processing_ms: tuple[float, ...] = (12.0, 30.0)
    move_a_ms: float = 25.0
    move_b_ms: float = 6.0
    move_drain_factor: float = 0.9
    """c: ms per ms of the batch's drain wait."""
    pair_a_ms: dict[tuple[int, int], float] = field(default_factory=dict)
    """Pairs whose moves take another a."""


def record_simulation(batch, directory: str | os.PathLike, truth: Truth, *, seed: int,
                      move_probability: float = 0.05, noise: float = 0.05, meta: dict | None = None) -> None:
    """Write a recording of `batch` (a trace_replay.episodes.EpisodeBatch of one episode) to `directory`."""
    if batch.capacity.shape[0] != 1:
        raise ValueError(f"record_simulation records one episode, got {batch.capacity.shape[0]}")
    rng = np.random.default_rng(seed)
    twin = BatchedTwin.from_episodes(batch)
    n = twin.n_instances
    reported_capacity, reported_buffer = twin.capacity[0].clone(), twin.buffer[0].clone()
    twin.capacity = twin.capacity * torch.tensor(_per_instance(truth.service_ratio, n))
    twin.buffer = twin.buffer * torch.tensor(_per_instance(truth.buffer_ratio, n))
    processing = _per_instance(truth.processing_ms, n)
    writer = RecordingWriter(directory, {"source": "twin.fidelity.synthetic", "seed": seed,
                                         "period_s": twin.step_s, **(meta or {})})
    while not twin.done.any():
        states, slots = twin.observed_states()
        seen = states[0].with_changes(capacity=reported_capacity.numpy(), buffer=reported_buffer.numpy(),
                                      queue=_noisy(twin.queue[0].numpy(), noise, rng))
        action = _explore(seen, rng, move_probability, twin.buffer[0].numpy(), twin.queue[0].numpy())
        drain = _drain_packets(seen, rng)
        durations = _durations(seen, action, truth, rng, noise, drain)
        dst, start, stop = twin.action_tensors([action], slots)
        before = twin.queue.clone()
        arrivals = twin.load_of(torch.where(twin.flow_live, dst, -1))
        twin.step(dst, start, stop)
        _, dropped = fluid_queue(before, arrivals, torch.where(twin.active, twin.capacity, 0.0), twin.buffer,
                                 twin.step_s)
        moved = set(action.flows.tolist())
        mean_queue = ((before + twin.queue) / 2.0)[0].numpy()
        la_q = cost.queueing_delay_ms(mean_queue, twin.capacity[0].numpy())
        delays = {seen.flow_ids[f]: (max(int(seen.rate[f] * twin.step_s), 1),
                                     float(processing[k] + la_q[k] + noise * 10 * rng.standard_normal()))
                  for f, k in enumerate(seen.assignment.tolist()) if f not in moved}
        packets_in = (arrivals[0] * twin.step_s).numpy()
        served = before[0].numpy() + packets_in - twin.queue[0].numpy() - dropped[0].numpy()
        recorded = action.to_action(seen)
        measured = _measured(seen, action, durations)
        writer.add_period(seen, PeriodRecord(
            action=recorded, policy="explore", decided=True, explored=True, feasible=True, executed=True,
            moves=tuple(MoveRecord(m.flow, m.src, m.dst, "done", float(d))
                        for m, d in zip(recorded.migrations, durations)),
            measured=measured,
            instance_packets={i: (round(packets_in[k]), round(max(served[k], 0)), round(float(dropped[0, k])))
                              for k, i in enumerate(seen.instance_ids)},
            flow_delays=delays, flow_queues={f: (int(d > 0), int(d)) for f, d in zip(seen.flow_ids, drain)}))
    writer.close()


def _per_instance(values: tuple[float, ...], n: int) -> np.ndarray:
    return np.resize(np.asarray(values, dtype=float), n)


def _noisy(queue: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    return np.maximum(queue * (1.0 + noise * rng.standard_normal(queue.shape)), 0.0)


def _explore(state, rng, probability: float, true_buffer: np.ndarray, true_queue: np.ndarray) -> IndexedAction:
    """Random valid moves: each flow with `probability` to another active instance (none if invalid)."""
    active = state.active_indices
    if state.n_flows == 0 or active.size < 2:
        return IndexedAction()
    flows = np.flatnonzero(rng.random(state.n_flows) < probability)
    dst = np.array([rng.choice(active[active != state.assignment[f]]) for f in flows], dtype=np.int64)
    action = IndexedAction(flows.astype(np.int64), dst)
    try:
        apply(state.with_changes(buffer=true_buffer, queue=true_queue), action)
    except InvalidAction:
        return IndexedAction()
    return action


def _drain_packets(state, rng) -> np.ndarray:
    """[F] each flow's drain packets as its NF reports them: its instance's whole queue when one of its packets is
    queued (with the probability behind `flow_wait_ms`'s expectation), else 0."""
    la_q = cost.queueing_delay_ms(state.queue, state.capacity)[state.assignment]
    queued = rng.random(state.n_flows) < -np.expm1(-state.rate * la_q / 1000.0)
    return np.where(queued, np.round(state.queue[state.assignment]), 0.0)


def _durations(state, action, truth: Truth, rng, noise: float, drain: np.ndarray) -> np.ndarray:
    n = action.flows.size
    src = state.assignment[action.flows]
    waits = flow_wait_ms(state.rate[action.flows], np.zeros(n), drain[action.flows], state.capacity[src])
    wait = truth.move_drain_factor * batch_wait_ms(waits, np.ones(n, bool))
    return np.array([max((truth.pair_a_ms.get(pair, truth.move_a_ms) + truth.move_b_ms * n + wait)
                         * (1.0 + noise * rng.standard_normal()), 1.0)
                     for pair in zip(src.tolist(), action.dst.tolist())])


def _measured(state, action, durations: np.ndarray) -> dict:
    """The measured cost as the controller computes it: the action at its moves' measured durations."""
    src = state.assignment[action.flows]
    recorded = RecordedAction((), src, action.dst, np.zeros(state.n_instances, bool),
                              np.zeros(state.n_instances, bool), action.flows.size)
    latency = pair_latency(state.migration_ms, recorded, durations)
    _, breakdown = apply(state.with_changes(migration_ms=latency, buffer=np.full(state.n_instances, 1e300)),
                         action, CostParams())
    return {"total": breakdown.total, "migration": breakdown.migration, "resource": breakdown.resource,
            "threshold_penalty": breakdown.threshold_penalty, "sla_violations": breakdown.sla_violations}
