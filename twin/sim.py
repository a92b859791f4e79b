"""The batched twin simulator: B independent episodes of the NF cluster stepped at once as tensors.

Each step the policy proposes, for every episode, a destination per flow slot and the instances
to start and stop. The simulator checks constraints (4)-(5) per episode, scores the action with the
shared cost model (`twin.cost`: the reward equals `twin.migration.apply`'s −total for the same state
and action), applies it, then advances time by one step: queues fill and drain with the fluid
queue model, flows change rate, leave and arrive as in the trace, and new flows are steered the
way the controller steers them. docs/twin.md describes the time, queue and steering models.

Layout: instances are padded to a common N and flow slots to a common F. `instance_mask` marks
real instances, `flow_live` the slots holding a flow now (`assignment` is −1 elsewhere). Every
tensor has the episode as its leading dimension, so `step` runs without a Python loop over
episodes or flows.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from twin import cost
from twin.flow import FIVE_TUPLE_DTYPE
from twin.migration import IndexedAction
from twin.params import CostParams, Thresholds
from twin.physics import Physics, flow_wait_ms
from twin.scenario import ScenarioKind, detect
from twin.state import ClusterState

if TYPE_CHECKING:
    from trace_replay.episodes import EpisodeBatch

DEFAULT_INVALID_PENALTY = 10_000.0
"""Cost charged to an episode whose action is rejected: ten instances' worth of C_R, more than any
valid action of a typical cluster costs, so rejected actions never pay off."""

_PADDED_CAPACITY = 1.0
"""Capacity given to padding instances so that utilisation stays finite (they hold no flow)."""


class InvalidReason(enum.IntEnum):
    """Why an episode's action was rejected; the first failed check in this order is reported."""

    VALID = 0
    UNKNOWN_INSTANCE = 1
    """A destination, started or stopped instance outside the episode's cluster (or padding)."""
    START_ACTIVE = 2
    """Starting an instance that is already active."""
    STOP_INACTIVE = 3
    """Stopping an instance that is not active (this includes one started in the same action)."""
    DESTINATION_INACTIVE = 4
    """Moving a flow to an instance that is stopped and not started by the action."""
    STOP_NOT_EMPTY = 5
    """Stopping an instance that still holds flows after the moves (so no action stops every instance
    while flows remain)."""
    BUFFER_OVERFLOW = 6
    """Constraint (5): a destination's queue plus the packets buffered during the moves exceed its buffer."""


@dataclass(frozen=True)
class StepResult:
    """What one step did to each episode; every field has shape [B]."""

    reward: torch.Tensor
    """−(migration + resource + threshold_penalty); −invalid_penalty for a rejected action."""
    migration_cost: torch.Tensor
    """Eq. (2) summed over the moved flows."""
    resource_cost: torch.Tensor
    """C_R = R·ΔN."""
    threshold_penalty: torch.Tensor
    """ω penalties of the state after the action (before time advances)."""
    moved: torch.Tensor
    """Flows migrated (0 for a rejected action)."""
    sla_violations: torch.Tensor
    """Moved flows that break eq. (1)."""
    migration_time_ms: torch.Tensor
    """The slowest OpenNF batch of the action (batches between different pairs run in parallel)."""
    invalid: torch.Tensor
    """The action was rejected and the cluster left as it was."""
    reason: torch.Tensor
    """An `InvalidReason` code per episode."""
    drops: torch.Tensor
    """Packets lost to full buffers while time advanced."""
    done: torch.Tensor
    """The episode has reached its horizon."""

    @property
    def total_cost(self) -> torch.Tensor:
        """The cost of the action as `CostBreakdown.total` defines it (zero parts for rejected actions)."""
        return self.migration_cost + self.resource_cost + self.threshold_penalty

    def reasons(self) -> list[InvalidReason]:
        return [InvalidReason(code) for code in self.reason.tolist()]


@dataclass(frozen=True)
class _Trace:
    """Per-step flow data of trace-driven episodes: rate [B, T, F], arrival and departure steps [B, F]."""

    rate: torch.Tensor
    arrival: torch.Tensor
    departure: torch.Tensor


def fluid_queue(queue: torch.Tensor, arrivals: torch.Tensor, service: torch.Tensor, buffer: torch.Tensor,
                step_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The fluid FIFO over one step of `step_s` s: (queue after, packets dropped), elementwise.

    q ← clip(q + (λ − μ)·Δt, 0, B), λ = `arrivals` and μ = `service` in packets/s; what the clip cuts above
    B is dropped. The one queue formula: the simulator's step and the twin's calibration (twin.calibration)
    both use it.
    """
    backlog = (queue + (arrivals - service) * step_s).clamp(min=0.0)
    after = torch.minimum(backlog, buffer)
    return after, backlog - after


class BatchedTwin:
    """B cluster episodes stepped together. Build it with `from_states` or `from_episodes`."""

    def __init__(
        self,
        *,
        capacity: torch.Tensor,
        buffer: torch.Tensor,
        queue: torch.Tensor,
        active: torch.Tensor,
        instance_mask: torch.Tensor,
        processing_ms: torch.Tensor,
        migration_ms: torch.Tensor,
        flow_rate: torch.Tensor,
        flow_sla_ms: torch.Tensor,
        assignment: torch.Tensor,
        flow_live: torch.Tensor,
        byte_rate: torch.Tensor,
        five_tuple: np.ndarray,
        flow_ids: np.ndarray,
        instance_ids: Sequence[tuple[str, ...]],
        start_time_s: torch.Tensor,
        step_s: float,
        horizon: int | None,
        trace: _Trace | None,
        params: CostParams,
        thresholds: Thresholds,
        invalid_penalty: float,
    ):
        if not step_s > 0:
            raise ValueError(f"step_s must be a positive number of seconds, got {step_s!r}")
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be at least one step, got {horizon}")
        self.capacity, self.buffer, self.queue, self.active = capacity, buffer, queue, active
        self.instance_mask, self.processing_ms, self.migration_ms = instance_mask, processing_ms, migration_ms
        self.flow_rate, self.flow_sla_ms, self.assignment, self.flow_live = (
            flow_rate,
            flow_sla_ms,
            assignment,
            flow_live,
        )
        self.byte_rate, self.five_tuple, self.flow_ids, self.instance_ids = (
            byte_rate,
            five_tuple,
            flow_ids,
            instance_ids,
        )
        self.start_time_s, self.step_s, self.horizon, self._trace = start_time_s, step_s, horizon, trace
        self.params, self.thresholds, self.invalid_penalty = params, thresholds, invalid_penalty
        self.time_step = 0
        self._episodes = torch.arange(capacity.shape[0], device=capacity.device)
        self.physics = Physics()

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_states(
        cls,
        states: Sequence[ClusterState],
        params: CostParams = CostParams(),
        thresholds: Thresholds = Thresholds(),
        *,
        step_s: float = 1.0,
        horizon: int | None = None,
        invalid_penalty: float = DEFAULT_INVALID_PENALTY,
        device: str | torch.device = "cpu",
    ) -> BatchedTwin:
        """Mirror live states: one episode per state, flows keep their rates and nobody arrives or leaves.

        This is the "what if" twin of a controller snapshot; `state(b)` gives state b back exactly.
        """
        if not states:
            raise ValueError("from_states needs at least one state")
        b, n, f = len(states), max(s.n_instances for s in states), max(s.n_flows for s in states)
        f64 = {"dtype": torch.float64, "device": device}
        capacity = torch.full((b, n), _PADDED_CAPACITY, **f64)
        buffer, queue, processing = (torch.zeros(b, n, **f64) for _ in range(3))
        migration = torch.zeros(b, n, n, **f64)
        active = torch.zeros(b, n, dtype=torch.bool, device=device)
        instance_mask = torch.zeros_like(active)
        rate, sla, byte_rate = (torch.zeros(b, f, **f64) for _ in range(3))
        assignment = torch.full((b, f), -1, dtype=torch.long, device=device)
        five_tuple = np.zeros((b, f), dtype=FIVE_TUPLE_DTYPE)
        flow_ids = np.full((b, f), "", dtype=object)
        for k, s in enumerate(states):
            ni, nf = s.n_instances, s.n_flows
            for target, source in (
                (capacity, s.capacity),
                (buffer, s.buffer),
                (queue, s.queue),
                (processing, s.processing_ms),
            ):
                target[k, :ni] = torch.tensor(np.asarray(source, dtype=np.float64))
            migration[k, :ni, :ni] = torch.tensor(np.asarray(s.migration_ms, dtype=np.float64))
            active[k, :ni] = torch.tensor(s.active)
            instance_mask[k, :ni] = True
            for target, source in ((rate, s.rate), (sla, s.sla_ms), (byte_rate, s.byte_rate)):
                target[k, :nf] = torch.tensor(np.asarray(source, dtype=np.float64))
            assignment[k, :nf] = torch.tensor(s.assignment, dtype=torch.long)
            five_tuple[k, :nf] = s.five_tuple
            flow_ids[k, :nf] = s.flow_ids
        return cls(
            capacity=capacity,
            buffer=buffer,
            queue=queue,
            active=active,
            instance_mask=instance_mask,
            processing_ms=processing,
            migration_ms=migration,
            flow_rate=rate,
            flow_sla_ms=sla,
            assignment=assignment,
            flow_live=assignment >= 0,
            byte_rate=byte_rate,
            five_tuple=five_tuple,
            flow_ids=flow_ids,
            instance_ids=[s.instance_ids for s in states],
            start_time_s=torch.tensor([s.time_s for s in states], **f64),
            step_s=step_s,
            horizon=horizon,
            trace=None,
            params=params,
            thresholds=thresholds,
            invalid_penalty=invalid_penalty,
        )

    @classmethod
    def from_episodes(
        cls,
        batch: EpisodeBatch,
        params: CostParams = CostParams(),
        thresholds: Thresholds = Thresholds(),
        *,
        invalid_penalty: float = DEFAULT_INVALID_PENALTY,
        device: str | torch.device = "cpu",
    ) -> BatchedTwin:
        """Trace-driven episodes: flows arrive, change rate and leave per step as in `batch`.

        The flows present at step 0 are steered onto the initially active instances like any arrival.
        """
        b, n = batch.capacity.shape
        f64 = {"dtype": torch.float64, "device": device}
        capacity = torch.as_tensor(batch.capacity, **f64)
        migration = torch.full((b, n, n), params.single_flow_migration_ms, **f64)
        migration[:, torch.arange(n), torch.arange(n)] = 0.0
        trace = _Trace(
            rate=torch.as_tensor(batch.rate, device=device),
            arrival=torch.as_tensor(batch.arrival, dtype=torch.long, device=device),
            departure=torch.as_tensor(batch.departure, dtype=torch.long, device=device),
        )
        f = batch.rate.shape[2]
        twin = cls(
            capacity=capacity,
            buffer=torch.as_tensor(batch.buffer, **f64),
            queue=torch.zeros(b, n, **f64),
            active=torch.as_tensor(batch.initially_active, dtype=torch.bool, device=device),
            instance_mask=torch.ones(b, n, dtype=torch.bool, device=device),
            processing_ms=torch.full((b, n), params.processing_ms, **f64),
            migration_ms=migration,
            flow_rate=torch.zeros(b, f, **f64),
            flow_sla_ms=torch.as_tensor(batch.sla_ms, **f64),
            assignment=torch.full((b, f), -1, dtype=torch.long, device=device),
            flow_live=torch.zeros(b, f, dtype=torch.bool, device=device),
            byte_rate=torch.as_tensor(batch.byte_rate, **f64),
            five_tuple=batch.five_tuple,
            flow_ids=batch.flow_ids,
            instance_ids=[tuple(f"nf{k}" for k in range(n))] * b,
            start_time_s=torch.as_tensor(batch.start_s, **f64),
            step_s=batch.step_s,
            horizon=batch.n_steps - 1,
            trace=trace,
            params=params,
            thresholds=thresholds,
            invalid_penalty=invalid_penalty,
        )
        twin._follow_trace()
        return twin

    # --- sizes and derived quantities -------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return self.capacity.shape[0]

    @property
    def n_instances(self) -> int:
        return self.capacity.shape[1]

    @property
    def n_flow_slots(self) -> int:
        return self.flow_rate.shape[1]

    @property
    def load(self) -> torch.Tensor:
        """[B, N] offered load in packets/s: the sum of the live flows' rates on each instance."""
        return self.load_of(self.assignment)

    @property
    def utilisation(self) -> torch.Tensor:
        """[B, N] l_j of the paper."""
        return self.load / self.capacity

    @property
    def done(self) -> torch.Tensor:
        """[B] whether each episode has reached its horizon (never, without one)."""
        reached = self.horizon is not None and self.time_step >= self.horizon
        return torch.full((self.n_episodes,), reached, dtype=torch.bool, device=self.capacity.device)

    def load_of(self, assignment: torch.Tensor, rate: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] packets/s each instance receives when the slots are on `assignment` (−1: empty) at `rate`
        (default: the current flow rates)."""
        rate = self.flow_rate if rate is None else rate
        load = torch.zeros_like(self.capacity)
        return load.scatter_add_(1, assignment.clamp(min=0), torch.where(assignment >= 0, rate, 0.0))

    # --- per-episode views for code that speaks ClusterState --------------------------------------
    def flow_slots(self, b: int) -> np.ndarray:
        """Slot of each flow of `state(b)`: flow k of the exported state lives in slot flow_slots(b)[k]."""
        return torch.nonzero(self.flow_live[b]).flatten().cpu().numpy()

    def state(self, b: int) -> ClusterState:
        """Episode b as a ClusterState (padding dropped, live flows in slot order)."""
        return self.states([b])[0]

    def states(self, episodes: Sequence[int] | None = None) -> list[ClusterState]:
        """`state(b)` for each of `episodes` (all by default), converting each tensor to numpy once."""
        arrays = self._arrays()
        return [self._export(arrays, b) for b in (range(self.n_episodes) if episodes is None else episodes)]

    def observed_states(self) -> tuple[list[ClusterState], list[np.ndarray]]:
        """What the controller measures at the start of this step, and the slot of each state's flows.

        The flows live in both the previous step and this one, at the rates of the previous step;
        queues and assignment as they are now (docs/twin.md, "The closed loop"). Nothing is measured
        before the first step. A twin without a trace (`from_states`) observes its exact state.
        """
        arrays = self._arrays()
        if self._trace is not None:
            trace, t = self._trace, self.time_step
            seen = self.flow_live & (trace.arrival <= t - 1) & (t - 1 < trace.departure)
            before = trace.rate[:, max(t - 1, 0), :].to(self.flow_rate.dtype)
            arrays["flow_live"] = seen.cpu().numpy()
            arrays["flow_rate"] = torch.where(seen, before, 0.0).cpu().numpy()
        states = [self._export(arrays, b) for b in range(self.n_episodes)]
        return states, [np.flatnonzero(arrays["flow_live"][b]) for b in range(self.n_episodes)]

    def _arrays(self) -> dict[str, np.ndarray]:
        names = ("capacity", "buffer", "queue", "active", "processing_ms", "migration_ms", "flow_rate",
                 "byte_rate", "flow_sla_ms", "assignment", "flow_live", "start_time_s")
        return {name: getattr(self, name).cpu().numpy() for name in names}

    def _export(self, arrays: dict[str, np.ndarray], b: int) -> ClusterState:
        n = len(self.instance_ids[b])
        slots = np.flatnonzero(arrays["flow_live"][b])
        instances = {
            name: arrays[name][b, :n].copy()
            for name in ("capacity", "buffer", "queue", "active", "processing_ms")
        }
        flows = {
            name: arrays[source][b, slots]
            for name, source in (
                ("rate", "flow_rate"),
                ("byte_rate", "byte_rate"),
                ("sla_ms", "flow_sla_ms"),
                ("assignment", "assignment"),
            )
        }
        return ClusterState(
            instance_ids=self.instance_ids[b],
            **instances,
            migration_ms=arrays["migration_ms"][b, :n, :n].copy(),
            flow_ids=tuple(self.flow_ids[b, slots].tolist()),
            five_tuple=self.five_tuple[b, slots],
            **flows,
            time_s=float(arrays["start_time_s"][b]) + self.time_step * self.step_s,
        )

    def scenario_kinds(self) -> list[ScenarioKind]:
        """The scenario `twin.scenario.detect` sees in each episode, with the twin's thresholds."""
        return [detect(state, self.thresholds).kind for state in self.states()]

    def action_tensors(
        self, actions: Sequence[IndexedAction], slots: Sequence[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dst, start, stop) for `step` from one IndexedAction per episode, indexed like `state(b)`
        or, given `slots` (as `observed_states` returns them), like the states those slots describe."""
        if len(actions) != self.n_episodes:
            raise ValueError(f"{len(actions)} actions for {self.n_episodes} episodes")
        dst = self.assignment.clone()
        start = torch.zeros_like(self.active)
        stop = torch.zeros_like(self.active)
        for b, action in enumerate(actions):
            of_b = self.flow_slots(b) if slots is None else slots[b]
            moved = torch.as_tensor(of_b[action.flows], dtype=torch.long)
            dst[b, moved] = torch.as_tensor(action.dst, dtype=torch.long, device=dst.device)
            start[b, torch.as_tensor(action.start, dtype=torch.long)] = True
            stop[b, torch.as_tensor(action.stop, dtype=torch.long)] = True
        return dst, start, stop

    # --- the step -------------------------------------------------------------------------------
    def step(self, dst: torch.Tensor, start: torch.Tensor, stop: torch.Tensor) -> StepResult:
        """Apply one action per episode, score it, then advance time by one step.

        `dst[b, f] == assignment[b, f]` keeps flow f where it is; `dst` of empty slots is ignored.
        A rejected episode keeps its cluster unchanged, is charged `invalid_penalty` and still advances.
        """
        self._check_shapes(dst, start, stop)
        if self.done.any():
            raise RuntimeError(
                f"every episode has reached its horizon of {self.horizon} steps; build a new twin"
            )
        moved = self.flow_live & (dst != self.assignment)
        reason, dst_safe, la_ij, active_after = self._validate(dst, start, stop, moved)
        valid = reason == InvalidReason.VALID
        moved &= valid[:, None]

        src = self.assignment.clamp(min=0)
        queue_delay = cost.queueing_delay_ms(self.queue, self.capacity)
        la_p_dst = self._per_flow(self.processing_ms, dst_safe)
        la_q_dst = self._per_flow(queue_delay, dst_safe)
        flow_costs = cost.moved_flow_cost(
            la_ij, la_p_dst, la_q_dst, self._per_flow(queue_delay, src), self.flow_sla_ms, self.params
        )
        sla_broken = cost.sla_slack(la_ij, la_p_dst, la_q_dst, self.flow_sla_ms) < 0.0
        assignment_after = torch.where(moved, dst_safe, self.assignment)
        active_after = torch.where(valid[:, None], active_after, self.active)
        load_after = self.load_of(assignment_after)
        utilisation_after = load_after / self.capacity
        zero = torch.zeros_like(self.start_time_s)
        migration = torch.where(moved, flow_costs, 0.0).sum(-1)
        resource = torch.where(
            valid, cost.resource_cost((start.sum(-1) - stop.sum(-1)).to(zero.dtype), self.params), zero
        )
        penalty = torch.where(
            valid,
            cost.threshold_penalties(
                utilisation_after, active_after & self.instance_mask, self.thresholds, self.params
            ),
            zero,
        )
        total = migration + resource + penalty
        result = {
            "reward": torch.where(valid, -total, -self.invalid_penalty + zero),
            "migration_cost": migration,
            "resource_cost": resource,
            "threshold_penalty": penalty,
            "moved": moved.sum(-1),
            "sla_violations": (moved & sla_broken).sum(-1),
            "migration_time_ms": (self._migration_time(src, dst_safe, moved) if self.physics.move_a_ms is None
                                  else torch.where(moved, la_ij, 0.0).amax(-1)),
            "invalid": ~valid,
            "reason": reason,
        }

        self.assignment, self.active = assignment_after, active_after
        result["drops"] = self._advance_queues(load_after)
        self.time_step += 1
        if self._trace is not None:
            self._follow_trace()
        return StepResult(**result, done=self.done)

    def _check_shapes(self, dst: torch.Tensor, start: torch.Tensor, stop: torch.Tensor) -> None:
        for name, tensor, shape, dtypes in (
            ("dst", dst, self.assignment.shape, (torch.int64, torch.int32)),
            ("start", start, self.active.shape, (torch.bool,)),
            ("stop", stop, self.active.shape, (torch.bool,)),
        ):
            if tensor.shape != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
            if tensor.dtype not in dtypes:
                raise ValueError(f"{name} has dtype {tensor.dtype}, expected one of {dtypes}")

    def _per_flow(self, per_instance: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        """per_instance[b, instance[b, f]] as a [B, F] tensor."""
        return per_instance.gather(1, instance)

    def _validate(self, dst: torch.Tensor, start: torch.Tensor, stop: torch.Tensor, moved: torch.Tensor):
        """The first failed check per episode, and the operands the cost needs (safe to gather)."""
        n = self.n_instances
        out_of_range = moved & ((dst < 0) | (dst >= n))
        dst_safe = torch.where(moved & ~out_of_range, dst.long(), self.assignment.clamp(min=0))
        unknown = (
            out_of_range.any(-1)
            | (moved & ~self._per_flow(self.instance_mask, dst_safe)).any(-1)
            | ((start | stop) & ~self.instance_mask).any(-1)
        )
        active_started = self.active | start
        src = self.assignment.clamp(min=0)
        assignment_after = torch.where(moved, dst_safe, self.assignment)
        holds_flows = (
            torch.zeros_like(self.active, dtype=torch.long).scatter_add_(
                1, assignment_after.clamp(min=0), (assignment_after >= 0).long()
            )
            > 0
        )
        active_after = active_started & ~stop
        la_ij = self._move_ms(src, dst_safe, moved)
        buffered = torch.zeros_like(self.queue).scatter_add_(
            1, dst_safe, torch.where(moved, cost.packets_buffered_during_move(self.flow_rate, la_ij), 0.0)
        )
        arrivals = torch.zeros_like(self.queue).scatter_add_(1, dst_safe, moved.to(self.queue.dtype))
        overflow = (arrivals > 0) & (self.queue + buffered > self.buffer + 1e-9)
        checks = (
            (InvalidReason.UNKNOWN_INSTANCE, unknown),
            (InvalidReason.START_ACTIVE, (start & self.active).any(-1)),
            (InvalidReason.STOP_INACTIVE, (stop & ~self.active).any(-1)),
            (InvalidReason.DESTINATION_INACTIVE, (moved & ~self._per_flow(active_started, dst_safe)).any(-1)),
            (InvalidReason.STOP_NOT_EMPTY, (stop & holds_flows).any(-1)),
            (InvalidReason.BUFFER_OVERFLOW, overflow.any(-1)),
        )
        reason = torch.zeros(self.n_episodes, dtype=torch.long, device=dst.device)
        for code, failed in reversed(checks):
            reason = torch.where(failed, int(code), reason)
        return reason, dst_safe, la_ij, active_after

    def _move_ms(self, src: torch.Tensor, dst: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """[B, F] la_ij of each flow's move: its pair's `migration_ms`, or the fitted duration (`Physics`)."""
        pair = src * self.n_instances + dst
        if self.physics.move_a_ms is None:
            return self.migration_ms.flatten(1).gather(1, pair)
        la_q = self._per_flow(cost.queueing_delay_ms(self.queue, self.capacity), src)
        return self.physics.move_ms(pair, moved, flow_wait_ms(self.flow_rate, la_q), self.n_instances)

    def _migration_time(self, src: torch.Tensor, dst: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """Largest OpenNF batch time over the (source, destination) pairs of each episode's moves."""
        n = self.n_instances
        pair_counts = torch.zeros(
            self.n_episodes, n * n, dtype=self.capacity.dtype, device=self.capacity.device
        )
        pair_counts.scatter_add_(1, src * n + dst, moved.to(pair_counts.dtype))
        return cost.batch_migration_ms(pair_counts, self.params).amax(-1)

    def _advance_queues(self, arrivals: torch.Tensor) -> torch.Tensor:
        """Fluid queue over one step: q ← clip(q + (λ − μ)·Δt, 0, B); what is cut above B is dropped.

        `arrivals` is λ [B, N], the load of the assignment the step ends with.
        """
        service, buffer = self.physics.queue(self.capacity, self.buffer)
        self.queue, drops = fluid_queue(self.queue, self.physics.arrival_ratio * arrivals,
                                        torch.where(self.active, service, 0.0), buffer, self.step_s)
        return drops.sum(-1)

    def _follow_trace(self) -> None:
        """Set the flows of the current step: rates from the trace, departures, and steered arrivals."""
        trace, t = self._trace, self.time_step
        live = (trace.arrival <= t) & (t < trace.departure)
        arriving = live & ~self.flow_live
        self.flow_rate = torch.where(live, trace.rate[:, t, :].to(self.flow_rate.dtype), 0.0)
        self.flow_live = live
        self.assignment = torch.where(live, self.assignment, -1)
        self.assignment = torch.where(arriving, self._steer(arriving), self.assignment)

    def steer_away(self, flows: torch.Tensor, stop: torch.Tensor) -> None:
        """Deal `flows` [B, F] that sit on an instance `stop` [B, N] stops onto the instances that stay
        active, by the default steering rule: a flow that arrived after the decision never met the
        instances it stops (the closed loop's order, docs/twin.md)."""
        stranded = flows & self.flow_live & stop.gather(1, self.assignment.clamp(min=0))
        staying = self.active & ~stop
        self.assignment = torch.where(stranded, self._steer(stranded, staying), self.assignment)

    def _steer(self, arriving: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Default steering of new flows: dealt round-robin over the active instances, least utilised first.

        The controller does not know a new flow's rate when its first packet arrives, so it spreads
        the step's arrivals over the active instances (`self.active` unless given) in increasing
        order of their current utilisation; with a fitted φ (`Physics.least_utilised_share`) the first
        φ of them (in slot order) all land on the least utilised one.
        """
        active = self.active if active is None else active
        utilisation = torch.where(active, self.utilisation, torch.inf)
        by_utilisation = torch.argsort(utilisation, dim=1, stable=True)
        n_active = active.sum(-1, keepdim=True).clamp(min=1)
        rank = torch.cumsum(arriving.long(), dim=1) - 1
        first = torch.round(self.physics.least_utilised_share * arriving.sum(-1, keepdim=True)).long()
        dealt = by_utilisation.gather(1, (rank - first).clamp(min=0) % n_active)
        return torch.where(rank < first, by_utilisation[:, :1], dealt)
