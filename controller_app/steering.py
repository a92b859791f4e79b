"""Flow steering: which instance serves each flow, and the switch rules that send it there.

New flows go to the least utilised usable instance (or back to the one holding their state); the
flows of a dead instance go to the live ones at once. The switch is driven through the `Switch`
protocol, which the Ryu app implements with OpenFlow flow mods and tests with a fake.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from controller_app.config import ClusterDescription, NFDescription
from controller_app.instances import NFRuntime
from twin.flow import FiveTuple, FlowKey

LOG = logging.getLogger(__name__)
RESTEER_AFTER_S = 1.0


# --- flow keys ---------------------------------------------------------------------------------
def canonical(five_tuple: FiveTuple) -> FiveTuple:
    """The direction-free form of a 5-tuple, oriented as trace_replay keys flows (and the NFs report them)."""
    return FlowKey.of(*five_tuple).a_to_b


def flow_key(five_tuple: FiveTuple) -> str:
    """The flow id shared by the controller, the NF reports and the state (twin.flow.FlowKey.id)."""
    return FlowKey.of(*five_tuple).id


# --- the switch --------------------------------------------------------------------------------
class SwitchError(RuntimeError):
    """The switch did not do what was asked (disconnected, barrier timed out)."""


class Switch(Protocol):
    def install_base_rules(self, cluster: ClusterDescription) -> None:
        """Table-miss to the controller and every NF port to the sink."""

    def steer(self, five_tuple: FiveTuple, nf: NFDescription) -> None:
        """Add or overwrite the rules sending both directions of a (canonical) flow to `nf`, atomically:
        the switch never sends one direction to the old instance and the other to the new one."""

    def barrier(self, timeout_s: float) -> None:
        """Return once the switch has applied every earlier message; raise SwitchError otherwise
        (no reply in time, or an earlier `steer` was refused)."""


# --- flow registry -----------------------------------------------------------------------------
@dataclass
class SteeredFlow:
    key: str
    five_tuple: FiveTuple
    """Canonical orientation."""
    instance: str
    sla_ms: float
    first_seen: float
    packets: int = 0
    bytes: int = 0
    counted_at: float | None = None
    rate_pps: float | None = None
    """None until two counter samples exist."""
    byte_rate: float = 0.0
    rules_expired: set[str] = field(default_factory=set)
    steered_to: str | None = None
    """The instance the last packet-in steered the flow to, and when."""
    steered_at: float = -math.inf

    def view(self) -> dict:
        return {"id": self.key, "five_tuple": self.five_tuple._asdict(), "instance": self.instance,
                "rate_pps": self.rate_pps or 0.0, "byte_rate": self.byte_rate, "sla_ms": self.sla_ms,
                "packets": self.packets, "bytes": self.bytes, "first_seen": self.first_seen}


class FlowRegistry:
    """Which instance serves each flow, and the flow's counters and rates."""

    def __init__(self, sla_ms: Callable[[], float]):
        self._flows: dict[str, SteeredFlow] = {}
        self._draw_sla = sla_ms

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self):
        return iter(list(self._flows.values()))

    def get(self, key: str) -> SteeredFlow | None:
        return self._flows.get(key)

    def add(self, five_tuple: FiveTuple, instance: str, now: float) -> SteeredFlow:
        """Register a flow (either direction) as served by instance id `instance`, first seen at `now`
        (controller clock, s), with a freshly drawn SLA; replaces any entry of the same flow."""
        c = canonical(five_tuple)
        flow = SteeredFlow(flow_key(c), c, instance, self._draw_sla(), now)
        self._flows[flow.key] = flow
        return flow

    def forget(self, key: str) -> None:
        self._flows.pop(key, None)

    def on(self, instance: str) -> list[SteeredFlow]:
        return [f for f in self._flows.values() if f.instance == instance]

    def expected_load(self) -> dict[str, float]:
        """Load per instance, counting a flow with no rate yet at the mean measured rate."""
        rates = [f.rate_pps for f in self._flows.values() if f.rate_pps is not None]
        prior = float(np.mean(rates)) if rates else 1.0
        load: dict[str, float] = {}
        for f in self._flows.values():
            load[f.instance] = load.get(f.instance, 0.0) + (prior if f.rate_pps is None else f.rate_pps)
        return load


# --- steering ----------------------------------------------------------------------------------
class Steering:
    """Places flows on instances and keeps the switch's rules in line with the registry."""

    def __init__(self, cluster: ClusterDescription, nfs: dict[str, NFRuntime], flows: FlowRegistry,
                 clock: Callable[[], float]):
        self.cluster = cluster
        self.nfs = nfs
        self.flows = flows
        self._clock = clock
        self.switch: Switch | None = None

    def connect(self, switch: Switch) -> None:
        """A (re)connected switch gets the base rules and the rule of every flow we still steer."""
        self.switch = switch
        switch.install_base_rules(self.cluster)
        for flow in self.flows:
            switch.steer(flow.five_tuple, self.nfs[flow.instance].desc)
        LOG.info("switch %016x connected: reinstalled %d flows", self.cluster.dpid, len(self.flows))

    def disconnect(self) -> None:
        self.switch = None
        LOG.warning("switch %016x disconnected", self.cluster.dpid)

    def on_new_flow(self, in_port: int, five_tuple: FiveTuple) -> NFDescription | None:
        """Steer a table-miss packet from the source: the NF it goes to, or None to drop it."""
        if in_port != self.cluster.source.port or self.switch is None:
            return None
        key = flow_key(five_tuple)
        flow = self.flows.get(key)
        now = self._clock()
        # A known flow's packet-in mostly missed rules installed a moment ago (a burst's first packets):
        # it is only forwarded. The rules are sent again if they expired, point elsewhere, or should
        # have been in place for a while.
        steer = flow is None or bool(flow.rules_expired) or flow.steered_to != flow.instance or \
            now - flow.steered_at > RESTEER_AFTER_S
        if flow is None or not self.nfs[flow.instance].usable:
            target = self._state_holder(key) or self._least_utilised()
            if target is None:
                return None
            if flow is None:
                flow = self.flows.add(five_tuple, target.id, now)
            else:
                flow.instance = target.id
            steer = True
        nf = self.nfs[flow.instance].desc
        if steer:
            flow.rules_expired.clear()
            flow.steered_to, flow.steered_at = flow.instance, now
            self.switch.steer(flow.five_tuple, nf)
        return nf

    def on_rule_expired(self, five_tuple: FiveTuple) -> None:
        """One direction's rule idled out; the flow is forgotten when both have."""
        flow = self.flows.get(flow_key(five_tuple))
        if flow is None:
            return
        flow.rules_expired.add("forward" if five_tuple == flow.five_tuple else "reverse")
        if len(flow.rules_expired) == 2:
            self.flows.forget(flow.key)

    def mark_dead(self, nf: NFRuntime, why: str) -> None:
        """Its flows go to the live instances at once; their NF state died with the instance."""
        nf.alive, nf.last_error = False, why
        LOG.warning("NF %s is dead (%s): re-steering %d flows", nf.id, why, len(self.flows.on(nf.id)))
        for flow in self.flows.on(nf.id):
            target = self._least_utilised() or self._activate_standby()
            if target is None:
                LOG.error("no live NF instance left for flow %s", flow.key)
                continue
            flow.instance = target.id
            if self.switch is not None:
                try:
                    self.switch.steer(flow.five_tuple, target.desc)
                except SwitchError as error:
                    LOG.warning("could not re-steer %s: %s", flow.key, error)

    def _state_holder(self, key: str) -> NFRuntime | None:
        """The usable instance whose last report holds the flow's state: a flow that comes back after
        its rules idled out returns there, behind its own packets still queued in that instance."""
        for nf in self.nfs.values():
            if nf.usable and key in nf.flows_with_state:
                return nf
        return None

    def _least_utilised(self) -> NFRuntime | None:
        load = self.flows.expected_load()
        usable = [nf for nf in self.nfs.values() if nf.usable]
        if not usable:
            return None
        return min(usable, key=lambda nf: (load.get(nf.id, 0.0) / nf.capacity_pps, nf.id))

    def _activate_standby(self) -> NFRuntime | None:
        for nf in self.nfs.values():
            if nf.alive and not nf.active:
                try:
                    nf.channel.activate()
                except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
                    LOG.warning("could not activate standby %s: %s", nf.id, error)
                    continue
                nf.active = True
                return nf
        return None
