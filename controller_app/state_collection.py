"""State collection: switch counters become rates, NF reports are polled, and the shared `ClusterState`
is built from both, with the migration latencies measured so far."""
from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from controller_app.instances import NFRuntime
from controller_app.steering import FlowRegistry, flow_key
from twin.flow import FiveTuple
from twin.params import CostParams
from twin.state import ClusterState, Flow, Instance, uniform_migration_latency

LOG = logging.getLogger(__name__)


def record_counters(flows: FlowRegistry, counters: dict[str, tuple[int, int]], now: float) -> None:
    """Turn cumulative (packets, bytes) per flow into rates over the time since the last sample.

    A counter that went down belongs to a reinstalled rule and counts from zero.
    """
    for key, (packets, octets) in counters.items():
        flow = flows.get(key)
        if flow is None:
            continue
        flow.carried_at = now
        if flow.counted_at is None:
            since, base_packets, base_bytes = flow.first_seen, 0, 0
        else:
            since = flow.counted_at
            base_packets, base_bytes = (flow.packets, flow.bytes) if packets >= flow.packets else (0, 0)
        elapsed = now - since
        if elapsed > 0:
            flow.rate_pps = (packets - base_packets) / elapsed
            flow.byte_rate = (octets - base_bytes) / elapsed
        flow.packets, flow.bytes, flow.counted_at = packets, octets, now


class MigrationLatency:
    """la_ij: CostParams' single-flow default, replaced per pair by the mean of measured moves
    (the latest `kept` of each pair; all of them for `kept=None`)."""

    def __init__(self, params: CostParams, kept: int | None = 20):
        self._params = params
        self._measured: dict[tuple[str, str], deque[float]] = {}
        self._kept = kept

    def record(self, src: str, dst: str, duration_ms: float) -> None:
        """One done move from instance id `src` to `dst` that took `duration_ms` ms."""
        self._measured.setdefault((src, dst), deque(maxlen=self._kept)).append(duration_ms)

    def matrix(self, instance_ids: tuple[str, ...]) -> np.ndarray:
        return self.over(uniform_migration_latency(len(instance_ids), self._params), instance_ids)

    def over(self, latency: np.ndarray, instance_ids: tuple[str, ...]) -> np.ndarray:
        """A copy of `latency` (rows and columns in `instance_ids` order) with every pair that has
        measured moves replaced by their mean."""
        latency = latency.copy()
        index = {i: k for k, i in enumerate(instance_ids)}
        for (src, dst), samples in self._measured.items():
            if src in index and dst in index:
                latency[index[src], index[dst]] = float(np.mean(samples))
        return latency


REPORT_NUMBERS = ("buffer_packets", "queue_packets")
RULELESS_AFTER_S = 10.0
"""A flow-stats reply that comes this long after a flow landed, was steered or was last listed was requested
after that (the switch answers within a period or two), so a flow it does not list has no rule left."""


def _check_report(report) -> None:
    """An NF report whose numbers the state model would refuse is a failed report, named, not a crash."""
    if not isinstance(report, dict):
        raise TypeError(f"report is a {type(report).__name__}, not an object")
    for name in REPORT_NUMBERS:
        value = report.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"report field {name} = {value!r} is not a finite number >= 0")


def _queued(report: dict) -> dict[str, tuple[int, int]] | None:
    """The report's per-flow queue: flow id -> (packets, drain_packets); None for an NF that does not report it."""
    if "queued" not in report:
        return None
    queued = {}
    for entry in report["queued"] or ():
        counts = (entry.get("packets"), entry.get("drain_packets"))
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError(f"report field queued has {entry!r}: packets and drain_packets must be integers >= 0")
        queued[flow_key(FiveTuple(*entry["key"]))] = counts
    return queued


class StateCollector:
    """Gathers what one period observes: flow and port counters from the switch, reports from the NFs."""

    def __init__(self, nfs: dict[str, NFRuntime], flows: FlowRegistry, latency: MigrationLatency,
                 params: CostParams, clock: Callable[[], float], on_dead: Callable[[NFRuntime, str], None],
                 stall_periods: Callable[[], int] = lambda: 1):
        """`on_dead(nf, why)` is called for an NF that is gone (its report refused, closed or invalid) or whose
        report timed out `stall_periods()` periods in a row."""
        self.nfs = nfs
        self.flows = flows
        self.latency = latency
        self.params = params
        self.port_rates: dict[int, dict] = {}
        self._clock = clock
        self._on_dead = on_dead
        self._stall_periods = stall_periods
        self._counters: dict[str, tuple[int, int]] = {}
        self._counted_at: float | None = None
        self._ports: dict[int, tuple[int, int, float]] = {}

    def on_flow_stats(self, counters: Iterable[tuple[FiveTuple, int, int]], now: float | None = None) -> None:
        """A complete flow-stats reply: (directed 5-tuple, packets, bytes) per rule. The rates come from the sums
        of both directions; each direction's own counter tells steering whether it still carries traffic."""
        now = self._clock() if now is None else now
        totals: dict[str, list[int]] = {}
        for five_tuple, packets, octets in counters:
            key = flow_key(five_tuple)
            total = totals.setdefault(key, [0, 0])
            total[0] += packets
            total[1] += octets
            if (flow := self.flows.get(key)) is not None:
                flow.counted(five_tuple, packets, now)
        self._counters = {k: (p, b) for k, (p, b) in totals.items()}
        self._counted_at = now

    def on_port_stats(self, counters: Iterable[tuple[int, int, int]], now: float | None = None) -> None:
        """Port counters (port, rx bytes, tx bytes) become link loads in bytes/s."""
        now = self._clock() if now is None else now
        for port, rx, tx in counters:
            if port in self._ports:
                last_rx, last_tx, then = self._ports[port]
                if now > then:
                    self.port_rates[port] = {"rx_bps": max(rx - last_rx, 0) * 8 / (now - then),
                                             "tx_bps": max(tx - last_tx, 0) * 8 / (now - then)}
            self._ports[port] = (rx, tx, now)

    def poll_instances(self) -> None:
        """Ask every NF for its report: the ones that answer are alive, the others get no new flows."""
        for nf in self.nfs.values():
            try:
                report = nf.channel.report()
                _check_report(report)
                queued = _queued(report)
            except TimeoutError as error:
                self._missed(nf, error)
                continue
            except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
                nf.missed_reports = 0
                if nf.alive:
                    self._on_dead(nf, f"report failed: {error}")
                continue
            if not nf.alive or nf.stalled:
                LOG.info("NF %s answers", nf.id)
            nf.flows_with_state = {flow_key(FiveTuple(*flow["key"])) for flow in report.get("flows", ())}
            kept = {name: value for name, value in report.items() if name != "flows"}  # its ids are kept, above
            nf.alive, nf.last_report, nf.last_error, nf.missed_reports = True, kept, "", 0
            nf.queued = queued
            nf.active = bool(report.get("active", nf.active))

    def _missed(self, nf: NFRuntime, error: Exception) -> None:
        """A report that timed out: the NF stalls (a dead process refuses or closes the connection instead). It is
        dead once it has missed `stall_periods()` reports in a row; until then only stalled."""
        nf.missed_reports += 1
        if not nf.alive:
            return
        if nf.missed_reports >= self._stall_periods():
            nf.missed_reports = 0
            self._on_dead(nf, f"report timed out {self._stall_periods()} periods in a row: {error}")
            return
        nf.last_error = f"stalled: report timed out ({nf.missed_reports} of {self._stall_periods()}): {error}"
        LOG.warning("NF %s %s; no new flows, its flows stay", nf.id, nf.last_error)

    def update_rates(self) -> None:
        """The flows' rates from the latest complete flow-stats reply, if any came."""
        if self._counted_at is not None:
            record_counters(self.flows, self._counters, self._counted_at)
            self.forget_ruleless()

    def forget_ruleless(self) -> list[str]:
        """Forget the flows that no rule carries (the latest flow-stats reply came RULELESS_AFTER_S after their
        landing, steer or last listing, and did not list them) and no live NF reports state of: their rules'
        expiry was missed (e.g. a lost flow-removed message), and nothing else would ever drop them. Returns
        their ids."""
        reported = set().union(*(nf.flows_with_state for nf in self.nfs.values() if nf.alive))
        horizon = self._counted_at - RULELESS_AFTER_S
        gone = [f.key for f in self.flows
                if max(f.carried_at, f.first_seen, f.steered_at) < horizon and f.key not in reported]
        for key in gone:
            self.flows.forget(key)
        if gone:
            LOG.info("forgot %d flows that no rule carries and no NF reports", len(gone))
        return gone

    def build_state(self, now: float | None = None) -> ClusterState:
        """The shared cluster state: live instances (active and standby) and the flows on active ones."""
        live = [nf for nf in self.nfs.values() if nf.alive]
        instances = []
        for nf in live:
            report = nf.last_report or {}
            instances.append(Instance(nf.id, nf.capacity_pps,
                                      float(report.get("buffer_packets", nf.desc.buffer_packets)),
                                      max(float(report.get("queue_packets", 0.0)), 0.0), nf.active,
                                      nf.desc.processing_ms))
        usable = {nf.id for nf in live if nf.active}
        flows = [Flow(f.key, f.five_tuple, max(f.rate_pps or 0.0, 0.0), f.sla_ms, f.instance, max(f.byte_rate, 0.0))
                 for f in self.flows if f.instance in usable]
        ids = tuple(i.id for i in instances)
        return ClusterState.from_objects(instances, flows, self.latency.matrix(ids), self.params,
                                         time_s=self._clock() if now is None else now)
