"""A tentative action built move by move over a read-only state: the bookkeeping of baselines and translator.

A `Plan` tracks what the action under construction does to the cluster: the load of every
instance, the packets that migrated flows add to each destination buffer (constraint (5), from
`twin.cost.migrated_buffer_packets`), which instances are started and stopped and which flows
have moved. Every baseline moves a flow at most once, so a flow's source is always its instance
in the input state, and `action()` is an `IndexedAction` that `twin.migration.apply` accepts as
long as each `move` went through the checks below.
"""
from __future__ import annotations

import numpy as np

from twin import cost
from twin.migration import IndexedAction
from twin.state import ClusterState


class Plan:
    def __init__(self, state: ClusterState):
        self.state = state
        # Offered load (packets/s) of each instance after the moves so far.
        self.load = np.array(state.load_pps, dtype=float)
        # Packets buffered at each destination by the flows moved onto it (constraint (5)).
        self.incoming = np.zeros(state.n_instances)
        # OFM only: buffer its safety test reserves at each destination (see `ofm_need`).
        self.reserved = np.zeros(state.n_instances)
        self.active = state.active.copy()
        self.count = state.flows_per_instance.copy()
        self.moved = np.zeros(state.n_flows, dtype=bool)
        self.received = np.zeros(state.n_instances, dtype=bool)
        self._flows: list[int] = []
        self._dst: list[int] = []
        self._start: list[int] = []
        self._stop: list[int] = []

    # --- views ------------------------------------------------------------------------------
    @property
    def utilisation(self) -> np.ndarray:
        return self.load / self.state.capacity

    def utilisation_after(self, dst: np.ndarray | int, rate: np.ndarray | float) -> np.ndarray:
        """Utilisation of `dst` once `rate` more packets/s land on it."""
        return (self.load[dst] + rate) / self.state.capacity[dst]

    def movable_flows(self, instance: int) -> np.ndarray:
        """Flows of `instance` in the input state that have not moved yet."""
        flows = self.state.flows_on(instance)
        return flows[~self.moved[flows]]

    def buffer_packets(self, flows: np.ndarray, dst: np.ndarray | int) -> np.ndarray:
        """size_f of constraint (5) for each flow moved to `dst` (an instance or one per flow)."""
        flows = np.asarray(flows, dtype=np.int64)
        return cost.migrated_buffer_packets(self.state, flows, np.broadcast_to(dst, flows.shape))

    def buffer_fits(self, dst: np.ndarray | int, packets: np.ndarray | float) -> np.ndarray:
        """Constraint (5) still holds at `dst` when `packets` more are buffered there."""
        return self.state.queue[dst] + self.incoming[dst] + packets <= self.state.buffer[dst]

    def ofm_need(self, flows: np.ndarray, dst: np.ndarray | int) -> np.ndarray:
        """OFM's buffer-safety demand of each flow moved to `dst`: (la_ij + 2·la_p_j)·r_f packets.

        It is constraint (5)'s size_f plus two processing latencies' worth of packets, so a move
        that passes OFM's test (`ofm_fits`) also passes constraint (5).
        """
        flows = np.asarray(flows, dtype=np.int64)
        return ofm_need(self.buffer_packets(flows, dst), self.state.rate[flows], self.state.processing_ms[dst])

    def ofm_fits(self, dst: np.ndarray | int, need: np.ndarray | float) -> np.ndarray:
        """OFM's buffer safety: the demand reserved at `dst` stays within its free buffer B_j − q_j."""
        return self.reserved[dst] + need <= self.state.buffer[dst] - self.state.queue[dst]

    @property
    def n_moves(self) -> int:
        return len(self._flows)

    # --- changes ----------------------------------------------------------------------------
    def move(self, flow: int, dst: int, packets: float, ofm_need: float = 0.0) -> None:
        """Move flow index `flow` from its input-state instance to active instance index `dst`, adding `packets`
        (its size_f, `buffer_packets`) to what `dst` buffers and `ofm_need` (OFM only) to what it reserves."""
        src = int(self.state.assignment[flow])
        assert not self.moved[flow] and src != dst and self.active[dst], (flow, src, dst)
        rate = self.state.rate[flow]
        self.load[src] -= rate
        self.load[dst] += rate
        self.count[src] -= 1
        self.count[dst] += 1
        self.incoming[dst] += packets
        self.reserved[dst] += ofm_need
        self.moved[flow] = True
        self.received[dst] = True
        self._flows.append(int(flow))
        self._dst.append(int(dst))

    def move_all(self, flows: list[int], dst: list[int], packets: list[float]) -> None:
        """`move` for many flows at once, with the same checks: for a caller that chose its moves on bookkeeping
        of its own (the translator), where a numpy update per flow would cost more than the choice."""
        if not flows:
            return
        flow_array, dst_array = np.array(flows, dtype=np.int64), np.array(dst, dtype=np.int64)
        src = self.state.assignment[flow_array]
        assert (np.unique(flow_array).size == flow_array.size and not self.moved[flow_array].any()
                and (src != dst_array).all() and self.active[dst_array].all()), (flows, dst)
        n, rate = self.state.n_instances, self.state.rate[flow_array]
        self.load += np.bincount(dst_array, rate, n) - np.bincount(src, rate, n)
        self.count += np.bincount(dst_array, minlength=n) - np.bincount(src, minlength=n)
        self.incoming += np.bincount(dst_array, np.asarray(packets, dtype=float), n)
        self.moved[flow_array] = True
        self.received[dst_array] = True
        self._flows.extend(flows)
        self._dst.extend(dst)

    def start(self, instance: int) -> None:
        assert not self.active[instance], instance
        self.active[instance] = True
        self._start.append(int(instance))

    @property
    def n_stops(self) -> int:
        return len(self._stop)

    def stop(self, instance: int) -> None:
        assert self.active[instance] and self.count[instance] == 0, instance
        self.active[instance] = False
        self._stop.append(int(instance))

    def checkpoint(self) -> tuple:
        return (self.load.copy(), self.incoming.copy(), self.reserved.copy(), self.active.copy(), self.count.copy(),
                self.moved.copy(), self.received.copy(), len(self._flows), len(self._start), len(self._stop))

    def rollback(self, checkpoint: tuple) -> None:
        (self.load, self.incoming, self.reserved, self.active, self.count, self.moved, self.received,
         n_flows, n_start, n_stop) = checkpoint
        del self._flows[n_flows:], self._dst[n_flows:], self._start[n_start:], self._stop[n_stop:]

    def action(self) -> IndexedAction:
        return IndexedAction(*(np.array(values, dtype=np.int64)
                               for values in (self._flows, self._dst, self._start, self._stop)))

    # --- choices shared by the scale-out baselines ---------------------------------------------
    def standby_order(self, src: int) -> np.ndarray:
        """Instances that can still be started: the largest capacity first, then the nearest to `src`."""
        idle = np.flatnonzero(~self.active & ~self.state.active)
        order = np.lexsort((idle, self.state.migration_ms[src, idle], -self.state.capacity[idle]))
        return idle[order]


def ofm_need(packets, rate, processing_ms):
    """`Plan.ofm_need` from a move's size_f (`packets`), the flow's rate and the destination's processing latency:
    for arrays or for single Python floats (OFM's load balancing tests one destination at a time)."""
    return packets + rate * 2.0 * processing_ms / 1000.0


def names(state: ClusterState, instances) -> str:
    """The ids of the instance indices `instances`, comma-separated, for messages."""
    return ", ".join(state.instance_ids[int(k)] for k in instances)
