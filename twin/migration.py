"""Actions on a cluster (flow migrations, instances started and stopped) and their cost.

`apply` is the single entry point that turns a state and an action into the next state and
the action's cost breakdown. It checks constraints (4) and (5) and everything an operator
would call a mistake (unknown ids, a flow moved twice, a move to a stopped instance, stopping
an instance that still holds flows); a failed check raises `InvalidAction` naming the offender
and the input state is untouched (states are immutable).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twin import cost
from twin.params import CostParams, Thresholds
from twin.state import ClusterState


class InvalidAction(ValueError):
    """An action that the cluster cannot carry out; `offender` names the flow or instance at fault."""

    def __init__(self, message: str, offender: str | None = None):
        super().__init__(message)
        self.offender = offender


@dataclass(frozen=True)
class Migration:
    flow: str
    src: str
    dst: str


@dataclass(frozen=True)
class Action:
    """Migrations plus the instances started before them and stopped after them."""

    migrations: tuple[Migration, ...] = ()
    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()

    def reversed(self) -> Action:
        """The action that undoes this one."""
        return Action(tuple(Migration(m.flow, m.dst, m.src) for m in self.migrations),
                      start=self.stop, stop=self.start)


@dataclass(frozen=True)
class IndexedAction:
    """The array form of an action, as policies and the simulator produce it."""

    flows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    dst: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    start: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    stop: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        """Each field a 1-D array of integer indices (lists are converted; an empty one of any type is
        taken)."""
        for name in ("flows", "dst", "start", "stop"):
            value = np.asarray(getattr(self, name))
            if value.size == 0:
                value = np.empty(0, dtype=np.int64)
            elif value.ndim != 1 or value.dtype.kind not in "iu":
                raise InvalidAction(f"IndexedAction.{name} must be a 1-D array of integer indices, "
                                    f"got {value.dtype} of shape {value.shape}")
            object.__setattr__(self, name, value)

    def to_action(self, state: ClusterState) -> Action:
        ids = state.instance_ids
        return Action(
            tuple(Migration(state.flow_ids[f], ids[state.assignment[f]], ids[d])
                  for f, d in zip(self.flows.tolist(), self.dst.tolist())),
            start=tuple(ids[k] for k in self.start.tolist()),
            stop=tuple(ids[k] for k in self.stop.tolist()))


@dataclass(frozen=True)
class CostBreakdown:
    """What an action costs: eq. (2) summed over moved flows, C_R and the ω penalties."""

    migration: float
    resource: float
    threshold_penalty: float
    flow_costs: np.ndarray
    sla_violations: int
    migration_time_ms: float
    variance_before: float
    variance_after: float

    @property
    def total(self) -> float:
        return self.migration + self.resource + self.threshold_penalty

    @property
    def reward(self) -> float:
        """The paper's reward: the negative of the total cost."""
        return -self.total

    @property
    def variance_ratio(self) -> float:
        """var_ori / var_lb of Fig. 6 (infinite when the action balances the load exactly)."""
        return self.variance_before / self.variance_after if self.variance_after > 0 else float("inf")


def index_action(state: ClusterState, action: Action) -> IndexedAction:
    """Resolve ids to indices, checking that every flow and instance exists and sources match."""
    def instance(instance_id: str, role: str) -> int:
        try:
            return state.instance_index[instance_id]
        except KeyError:
            raise InvalidAction(f"unknown instance {instance_id!r} ({role})", instance_id) from None

    flows, dst = [], []
    for move in action.migrations:
        f = state.flow_index.get(move.flow)
        if f is None:
            raise InvalidAction(f"unknown flow {move.flow!r}", move.flow)
        src = instance(move.src, f"source of flow {move.flow!r}")
        if state.assignment[f] != src:
            raise InvalidAction(f"flow {move.flow!r} is on {state.instance_ids[state.assignment[f]]!r}, "
                                f"not on source {move.src!r}", move.flow)
        flows.append(f)
        dst.append(instance(move.dst, f"destination of flow {move.flow!r}"))
    return IndexedAction(np.array(flows, dtype=np.int64), np.array(dst, dtype=np.int64),
                         np.array([instance(i, "started") for i in action.start], dtype=np.int64),
                         np.array([instance(i, "stopped") for i in action.stop], dtype=np.int64))


def _check(state: ClusterState, action: IndexedAction) -> tuple[np.ndarray, np.ndarray]:
    """Validate an indexed action; return the assignment and active mask after it."""
    ids = state.instance_ids
    flows, dst = action.flows, action.dst
    if flows.shape != dst.shape:
        raise InvalidAction(f"{flows.size} flows but {dst.size} destinations")
    if flows.size and (flows.min() < 0 or flows.max() >= state.n_flows):
        raise InvalidAction("a migration names a flow index outside the state")
    for name, indices in (("destination", dst), ("started instance", action.start),
                          ("stopped instance", action.stop)):
        if indices.size and (indices.min() < 0 or indices.max() >= state.n_instances):
            raise InvalidAction(f"a {name} index lies outside the cluster")

    counts = np.bincount(flows, minlength=state.n_flows)
    if np.any(counts > 1):
        f = state.flow_ids[int(np.argmax(counts > 1))]
        raise InvalidAction(f"flow {f!r} is moved more than once", f)
    to_self = state.assignment[flows] == dst
    if np.any(to_self):
        f = state.flow_ids[flows[int(np.argmax(to_self))]]
        raise InvalidAction(f"flow {f!r} is moved to the instance it is already on", f)

    for k in action.start.tolist():
        if state.active[k]:
            raise InvalidAction(f"instance {ids[k]!r} is already active and cannot be started", ids[k])
    for k in action.stop.tolist():
        if not state.active[k]:
            raise InvalidAction(f"instance {ids[k]!r} is not active and cannot be stopped", ids[k])
    both = np.intersect1d(action.start, action.stop)
    if both.size:
        raise InvalidAction(f"instance {ids[both[0]]!r} is both started and stopped", ids[both[0]])
    for name, indices in (("started", action.start), ("stopped", action.stop)):
        if np.unique(indices).size != indices.size:
            raise InvalidAction(f"an instance is {name} more than once")

    active = state.active.copy()
    active[action.start] = True
    stopped_dst = ~active[dst]
    if np.any(stopped_dst):
        k = int(dst[int(np.argmax(stopped_dst))])
        raise InvalidAction(f"destination {ids[k]!r} is not active; start it in the same action", ids[k])

    assignment = state.assignment.copy()
    assignment[flows] = dst
    remaining = np.bincount(assignment, minlength=state.n_instances)
    for k in action.stop.tolist():
        if remaining[k]:
            raise InvalidAction(f"instance {ids[k]!r} still holds {remaining[k]} flows and cannot be stopped", ids[k])
    active[action.stop] = False
    if state.n_flows and not active.any():
        raise InvalidAction("the action stops every instance while flows remain")

    occupancy = cost.buffer_occupancy(state, flows, dst)
    overflow = occupancy > state.buffer + 1e-9
    overflow &= np.bincount(dst, minlength=state.n_instances) > 0
    if np.any(overflow):
        k = int(np.argmax(overflow))
        raise InvalidAction(
            f"moving flows to {ids[k]!r} needs {occupancy[k]:.1f} packets of buffer "
            f"(queue {state.queue[k]:.1f}), more than its {state.buffer[k]:.1f} (constraint 5)", ids[k])
    return assignment, active


def carry(state: ClusterState, action: IndexedAction) -> ClusterState:
    """The state after a checked action: `apply` without the cost, for a twin that predicts states alone."""
    assignment, active = _check(state, action)
    return state.with_changes(assignment=assignment, active=active)


def apply(state: ClusterState, action: Action | IndexedAction, params: CostParams = CostParams(),
          thresholds: Thresholds = Thresholds()) -> tuple[ClusterState, CostBreakdown]:
    """Carry out an action: the next state and what the action cost."""
    indexed = index_action(state, action) if isinstance(action, Action) else action
    after = carry(state, indexed)
    active = after.active

    flow_costs = cost.flow_migration_cost(state, indexed.flows, indexed.dst, params)
    pair_counts = np.zeros((state.n_instances, state.n_instances))
    np.add.at(pair_counts, (state.assignment[indexed.flows], indexed.dst), 1)
    breakdown = CostBreakdown(
        migration=float(flow_costs.sum()),
        resource=cost.resource_cost(int(indexed.start.size) - int(indexed.stop.size), params),
        threshold_penalty=cost.threshold_penalty(after.utilisation, active, thresholds, params),
        flow_costs=flow_costs,
        sla_violations=int((~cost.sla_holds(state, indexed.flows, indexed.dst)).sum()),
        migration_time_ms=float(cost.batch_migration_ms(pair_counts, params).max(initial=0.0)),
        variance_before=cost.load_variance(state.utilisation, state.active),
        variance_after=cost.load_variance(after.utilisation, active),
    )
    return after, breakdown
