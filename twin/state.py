"""The cluster state: NF instances, the flows steered to them and the migration latencies.

One array-backed model serves every consumer. Baselines, the policy, the twin simulator and
the controller read the numpy arrays; the object view (`Instance`, `Flow`) is for the REST API,
the tests and building small states by hand. The state is immutable: changes produce a new
state (see `twin.migration`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np

from twin._numbers import check_numbers
from twin.flow import FIVE_TUPLE_DTYPE, FiveTuple, FlowIdError
from twin.params import CostParams


class StateError(ValueError):
    """A cluster state that violates the model (bad shapes, unknown ids, flows on stopped instances)."""


@dataclass(frozen=True)
class Instance:
    """One NF instance. Capacity is in packets/s (NFs such as Prads work per packet)."""

    id: str
    capacity_pps: float
    buffer_packets: float
    queue_packets: float = 0.0
    active: bool = True
    processing_ms: float = CostParams.processing_ms


@dataclass(frozen=True)
class Flow:
    """One bidirectional flow, its rate, its SLA latency LA^f and the instance serving it."""

    id: str
    five_tuple: FiveTuple
    rate_pps: float
    sla_ms: float
    instance: str
    byte_rate: float = 0.0


def uniform_migration_latency(n_instances: int, params: CostParams = CostParams()) -> np.ndarray:
    """la_ij for a cluster whose instances are all one hop apart (zero on the diagonal)."""
    latency = np.full((n_instances, n_instances), params.single_flow_migration_ms)
    np.fill_diagonal(latency, 0.0)
    return latency


@dataclass(frozen=True, eq=False)
class ClusterState:
    """Arrays of N instances and M flows; `assignment[f]` is the index of flow f's instance."""

    instance_ids: tuple[str, ...]
    capacity: np.ndarray
    buffer: np.ndarray
    queue: np.ndarray
    active: np.ndarray
    processing_ms: np.ndarray
    migration_ms: np.ndarray
    flow_ids: tuple[str, ...]
    five_tuple: np.ndarray
    rate: np.ndarray
    byte_rate: np.ndarray
    sla_ms: np.ndarray
    assignment: np.ndarray
    time_s: float = field(default=0.0)
    twin_deviation: np.ndarray | None = field(default=None)
    """[N] the controller's running estimate of its twin's deviation per instance (predicted − measured
    utilisation, paper 003's eq. (14) f̂; controller_app.deviation), a policy input; None: not estimated,
    read as 0 (the twin's own episodes, where the twin is its own truth)."""

    def __post_init__(self) -> None:
        self._validate(changed=None)

    def _validate(self, changed: frozenset[str] | None) -> None:
        """Check the state; `changed` names the fields replaced in a copy of a checked state (None: all), so a
        derived state re-checks only those (shapes and the flow-instance cross-check always run)."""
        def fresh(*names: str) -> bool:
            return changed is None or not changed.isdisjoint(names)

        n, m = len(self.instance_ids), len(self.flow_ids)
        for name, array, shape in (
            ("capacity", self.capacity, (n,)), ("buffer", self.buffer, (n,)), ("queue", self.queue, (n,)),
            ("active", self.active, (n,)), ("processing_ms", self.processing_ms, (n,)),
            ("migration_ms", self.migration_ms, (n, n)), ("five_tuple", self.five_tuple, (m,)),
            ("rate", self.rate, (m,)), ("byte_rate", self.byte_rate, (m,)), ("sla_ms", self.sla_ms, (m,)),
            ("assignment", self.assignment, (m,)),
            *((("twin_deviation", self.twin_deviation, (n,)),) if self.twin_deviation is not None else ()),
        ):
            if np.shape(array) != shape:
                raise StateError(f"{name} has shape {np.shape(array)}, expected {shape}")
            if isinstance(array, np.ndarray):
                array.flags.writeable = False
        if fresh("instance_ids"):
            _require_unique("instance", self.instance_ids)
        if fresh("flow_ids"):
            _require_unique("flow", self.flow_ids)
        self._check_numbers(fresh)
        if m:
            if fresh("assignment", "instance_ids") and (self.assignment.min() < 0 or self.assignment.max() >= n):
                raise StateError("a flow is assigned to an instance index outside the cluster")
            stopped = ~self.active[self.assignment]
            if np.any(stopped):
                f = int(np.argmax(stopped))
                raise StateError(f"flow {self.flow_ids[f]!r} is on stopped instance "
                                 f"{self.instance_ids[self.assignment[f]]!r}")

    def _check_numbers(self, fresh) -> None:
        """Every number finite and in range, every array of the right kind, where it enters the model."""
        instances, flows = ("instance", self.instance_ids), ("flow", self.flow_ids)
        if fresh("capacity"):
            check_numbers("capacity", self.capacity, error=StateError, strict=True, owners=instances)
        for name, owners in (("buffer", instances), ("queue", instances), ("processing_ms", instances),
                             ("migration_ms", None), ("rate", flows), ("byte_rate", flows),
                             ("sla_ms", flows)):
            if fresh(name):
                check_numbers(name, getattr(self, name), error=StateError, owners=owners)
        if fresh("time_s"):
            check_numbers("time_s", self.time_s, error=StateError)
        if fresh("twin_deviation") and self.twin_deviation is not None and \
                not (np.asarray(self.twin_deviation).dtype.kind in "iuf" and np.isfinite(self.twin_deviation).all()):
            raise StateError("twin_deviation must be finite numbers (signed: predicted − measured utilisation)")
        for name, expected, fits in (("active", "bool", lambda dtype: dtype == bool),
                                     ("assignment", "an integer type", lambda dtype: dtype.kind in "iu"),
                                     ("five_tuple", "FIVE_TUPLE_DTYPE",
                                      lambda dtype: dtype == FIVE_TUPLE_DTYPE)):
            if fresh(name) and not fits(dtype := np.asarray(getattr(self, name)).dtype):
                raise StateError(f"{name} has dtype {dtype}, expected {expected}")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_objects(cls, instances: Sequence[Instance], flows: Iterable[Flow],
                     migration_ms: np.ndarray | None = None, params: CostParams = CostParams(),
                     time_s: float = 0.0) -> ClusterState:
        """Build a state from the object view; la_ij defaults to one OpenNF hop between every pair."""
        flows = list(flows)
        ids = tuple(i.id for i in instances)
        index = {instance_id: k for k, instance_id in enumerate(ids)}
        for flow in flows:
            if flow.instance not in index:
                raise StateError(f"flow {flow.id!r} is assigned to unknown instance {flow.instance!r}")
        return cls(
            instance_ids=ids,
            capacity=np.array([i.capacity_pps for i in instances], dtype=float),
            buffer=np.array([i.buffer_packets for i in instances], dtype=float),
            queue=np.array([i.queue_packets for i in instances], dtype=float),
            active=np.array([i.active for i in instances], dtype=bool),
            processing_ms=np.array([i.processing_ms for i in instances], dtype=float),
            migration_ms=(uniform_migration_latency(len(ids), params) if migration_ms is None
                          else np.asarray(migration_ms, dtype=float)),
            flow_ids=tuple(f.id for f in flows),
            five_tuple=np.array([_header_record(f) for f in flows], dtype=FIVE_TUPLE_DTYPE),
            rate=np.array([f.rate_pps for f in flows], dtype=float),
            byte_rate=np.array([f.byte_rate for f in flows], dtype=float),
            sla_ms=np.array([f.sla_ms for f in flows], dtype=float),
            assignment=np.array([index[f.instance] for f in flows], dtype=np.int64),
            time_s=time_s,
        )

    def with_changes(self, **changes) -> ClusterState:
        """A copy with some fields replaced. It is validated like any new state, except that fields taken over
        from this (already checked) state are not re-checked: scoring an action rebuilds the state of 1,600
        flows once per candidate, and their ids need no second uniqueness check (nor a second id lookup: the copy
        keeps this state's `flow_index` and `instance_index` when their ids are taken over)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"ClusterState has no field(s) {sorted(unknown)}")
        copy = object.__new__(ClusterState)
        for f in fields(self):
            object.__setattr__(copy, f.name, changes.get(f.name, getattr(self, f.name)))
        copy._validate(changed=frozenset(changes))
        for lookup, ids in (("flow_index", "flow_ids"), ("instance_index", "instance_ids")):
            if ids not in changes and lookup in self.__dict__:  # the same ids: the same (never mutated) lookup
                copy.__dict__[lookup] = self.__dict__[lookup]
        return copy

    # --- sizes and lookups ----------------------------------------------------------------
    @property
    def n_instances(self) -> int:
        return len(self.instance_ids)

    @property
    def n_flows(self) -> int:
        return len(self.flow_ids)

    @cached_property
    def instance_index(self) -> dict[str, int]:
        return {instance_id: k for k, instance_id in enumerate(self.instance_ids)}

    @cached_property
    def flow_index(self) -> dict[str, int]:
        return {flow_id: k for k, flow_id in enumerate(self.flow_ids)}

    # --- derived quantities (never stored, always computed from the flows) ------------------
    @cached_property
    def load_pps(self) -> np.ndarray:
        """Offered load of each instance: the sum of its flows' rates."""
        return np.bincount(self.assignment, weights=self.rate, minlength=self.n_instances)

    @cached_property
    def utilisation(self) -> np.ndarray:
        """l_j of the paper: load as a fraction of capacity."""
        return self.load_pps / self.capacity

    @cached_property
    def flows_per_instance(self) -> np.ndarray:
        return np.bincount(self.assignment, minlength=self.n_instances)

    @property
    def active_indices(self) -> np.ndarray:
        return np.flatnonzero(self.active)

    def flows_on(self, instance: int) -> np.ndarray:
        """Indices of the flows served by instance index `instance`."""
        return np.flatnonzero(self.assignment == instance)

    # --- object view ----------------------------------------------------------------------
    def instance(self, k: int) -> Instance:
        return Instance(self.instance_ids[k], float(self.capacity[k]), float(self.buffer[k]),
                        float(self.queue[k]), bool(self.active[k]), float(self.processing_ms[k]))

    def flow(self, f: int) -> Flow:
        return Flow(self.flow_ids[f], FiveTuple.from_record(self.five_tuple[f]), float(self.rate[f]),
                    float(self.sla_ms[f]), self.instance_ids[self.assignment[f]], float(self.byte_rate[f]))

    @property
    def instances(self) -> list[Instance]:
        return [self.instance(k) for k in range(self.n_instances)]

    @property
    def flows(self) -> list[Flow]:
        return [self.flow(f) for f in range(self.n_flows)]

    def same_as(self, other: ClusterState) -> bool:
        """Exact equality of every field (states hold arrays, so `==` is not defined)."""
        if self.instance_ids != other.instance_ids or self.flow_ids != other.flow_ids:
            return False
        return self.time_s == other.time_s and all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("capacity", "buffer", "queue", "active", "processing_ms", "migration_ms",
                         "five_tuple", "rate", "byte_rate", "sla_ms", "assignment"))


def _header_record(flow: Flow) -> tuple:
    """The FIVE_TUPLE_DTYPE record of a flow's header fields; a StateError naming the flow if they are no
    header."""
    try:
        return FiveTuple(*flow.five_tuple).to_record()
    except TypeError:
        raise StateError(f"five_tuple of flow {flow.id!r} is not (src_ip, dst_ip, src_port, dst_port, "
                         f"proto): {flow.five_tuple!r}") from None
    except FlowIdError as error:
        raise StateError(f"five_tuple of flow {flow.id!r}: {error}") from None


def _require_unique(kind: str, ids: Sequence[str]) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise StateError(f"{kind} id {duplicate!r} appears more than once")
