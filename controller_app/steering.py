"""Flow steering: which instance serves each flow, and the switch rules that send it there.

New flows never wait for the controller: the switch's **default steering** (the least utilised
instance, refreshed after every landing and every period) sends a flow's first packet to an
instance and installs the flow's exact rules for both directions there and then; the controller hears of it from a copy of that packet (`on_flow_landed`)
and registers the flow where it landed. A returning flow's old state is merged into the instance it
landed on; the flows of a dead instance go to the live ones at once. The switch is driven through
the `Switch` protocol, which the Ryu app implements with OpenFlow and tests with a fake.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from controller_app.config import ClusterDescription, NFDescription
from controller_app.instances import NFRuntime
from controller_app.recovery import RecoveredMove, Recovery
from twin.flow import FiveTuple, FlowKey

LOG = logging.getLogger(__name__)
RULE_AGE_SLACK_S = 0.05
"""How much earlier than the controller's steer an expired rule may seem to have been installed and still be
one of that steer's (the switch counts whole milliseconds; the two clocks are read at different moments)."""


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
    def reset(self, cluster: ClusterDescription, target: NFDescription | None,
              flows: list[tuple[FiveTuple, NFDescription]]) -> None:
        """In one atomic step: wipe the switch's rules, install the base rules (table-miss to the
        controller, every NF port to the sink), the default steering to `target` and the rules of `flows`."""

    def adopt(self, cluster: ClusterDescription, target: NFDescription | None) -> None:
        """Keep every per-flow rule the switch has; (re)install the base rules and the default steering to
        `target` over whatever base rules it had, then ask for the per-flow rules: the answer comes back as
        `Controller.on_rules_found`. A restarted controller adopts the rules its predecessor left."""

    def set_default_steering(self, target: NFDescription | None) -> None:
        """Where the switch sends new flows from now on: to `target`, installing the flow's rules for both
        directions to it with the first packet and sending the controller a copy of that packet marked
        with the instance. None drops new flows."""

    def steer(self, five_tuple: FiveTuple, nf: NFDescription) -> None:
        """Add or overwrite the rules sending both directions of a (canonical) flow to `nf`, atomically:
        the switch never sends one direction to the old instance and the other to the new one. The rules are
        fresh: they idle out a full idle timeout after this at the earliest, whatever rules they replace."""

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
    direction_counted: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Each direction's ("forward", "reverse") packet counter, and when (controller clock), in the latest flow-stats
    reply that listed it."""
    grew_after: dict[str, float] = field(default_factory=dict)
    """A direction carried a packet after this moment (controller clock): the reply before the latest one that
    showed its counter grown."""
    steered_at: float = -math.inf
    """When the controller last installed both directions' rules (controller clock); a rule that expires
    older than that is one they replaced."""
    refreshed_at: float = -math.inf
    """When the controller last put back the rules of a flow one of whose rules had idled out (controller clock)."""
    carried_at: float = -math.inf
    """When the latest complete flow-stats reply that listed a rule of the flow came (controller clock)."""

    def steered(self, instance: str, now: float) -> None:
        """Both directions' rules to `instance` were just sent to the switch, fresh: the flow is served there and
        neither rule is expired."""
        self.instance, self.steered_at = instance, now
        self.rules_expired.clear()

    def direction(self, five_tuple: FiveTuple) -> str:
        return "forward" if five_tuple == self.five_tuple else "reverse"

    def counted(self, five_tuple: FiveTuple, packets: int, now: float) -> None:
        """One direction's rule counted `packets` at `now`; a counter that went down belongs to a reinstalled
        rule and counts from zero. A direction's first count grew since the flow landed or was last steered."""
        direction = self.direction(five_tuple)
        then, before = self.direction_counted.get(direction, (max(self.first_seen, self.steered_at), 0))
        if packets > (before if packets >= before else 0):
            self.grew_after[direction] = then
        self.direction_counted[direction] = now, packets

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
        self._target: str | None = None
        """The default steering's instance as last sent to the switch."""
        self._merges: dict[str, str] = {}
        """Flow id -> the instance still holding its older state, for flows that landed elsewhere."""
        self._idle_timeout_s = 0.0
        self.recovery: Recovery | None = None
        """Set from an adopting connect until the adopted flows' interrupted moves are dealt with."""
        self.recovered: list[RecoveredMove] = []
        """What the last adoption did with the moves it found interrupted."""

    def connect(self, switch: Switch) -> None:
        """A (re)connected switch gets, atomically, the base rules, the default steering and the rule of
        every flow we still steer. A controller that steers no flow yet (it just started: perhaps restarted
        while the switch kept forwarding) adopts the switch's per-flow rules instead of wiping them
        (`adopt_rules`, then `recovery` once the NFs have reported)."""
        self.switch = switch
        target = self._least_utilised()
        self._target = target.id if target else None
        if not len(self.flows):
            self.recovery = Recovery()
            switch.adopt(self.cluster, target.desc if target else None)
            LOG.info("switch %016x connected: adopting its per-flow rules", self.cluster.dpid)
            return
        now = self._clock()
        for flow in self.flows:
            flow.steered(flow.instance, now)
        switch.reset(self.cluster, target.desc if target else None,
                     [(flow.five_tuple, self.nfs[flow.instance].desc) for flow in self.flows])
        LOG.info("switch %016x connected: reinstalled %d flows", self.cluster.dpid, len(self.flows))

    def adopt_rules(self, rules: Iterable[tuple[FiveTuple, str | None]]) -> None:
        """The per-flow rules the switch had at connect, as (directed 5-tuple, instance id; None for a port that
        is no instance's): each flow is registered where its rules send it, unless it landed since. A flow
        whose two directions disagree is set right at the next period, with the interrupted moves."""
        seen: dict[str, str] = {}
        now = self._clock()
        for five_tuple, instance in rules:
            key = flow_key(five_tuple)
            if instance not in self.nfs:
                LOG.warning("rule of %s sends it to no instance: left to idle out", key)
            elif key not in seen:
                seen[key] = instance
                if self.flows.get(key) is None:
                    self.flows.add(five_tuple, instance, now)
            elif seen[key] != instance and self.recovery is not None:
                self.recovery.disagreeing.add(key)
        if self.recovery is not None:
            self.recovery.rules_found = True
        LOG.info("adopted the rules of %d flows from the switch", len(seen))

    def disconnect(self) -> None:
        self.switch = None
        LOG.warning("switch %016x disconnected", self.cluster.dpid)

    # --- default steering ------------------------------------------------------------------
    def refresh_default_steering(self, exclude: Iterable[str] = ()) -> None:
        """Point the default steering at the least utilised usable instance (those in `exclude` left
        out) if it changed. Safe at any time: a new flow's rules are installed by the switch with its
        first packet, so no flow is ever between two choices."""
        target = self._least_utilised(exclude)
        if self.switch is None or (target.id if target else None) == self._target:
            return
        try:
            self.switch.set_default_steering(target.desc if target else None)
        except SwitchError as error:
            LOG.warning("could not refresh the default steering: %s", error)
            return
        self._target = target.id if target else None

    def exclude_from_new_flows(self, instances: Iterable[str], barrier_timeout_s: float) -> None:
        """Before instances are stopped: no new flow lands on them once this returns (the barrier makes
        the landings the switch made before the change known first, so such a flow keeps its instance up)."""
        instances = list(instances)
        if not instances or self.switch is None:
            return
        self.refresh_default_steering(exclude=instances)
        try:
            self.switch.barrier(barrier_timeout_s)
        except SwitchError as error:
            LOG.warning("no barrier after excluding %s from new flows: %s", instances, error)

    # --- switch events ---------------------------------------------------------------------
    def on_flow_landed(self, five_tuple: FiveTuple, instance: str) -> None:
        """The default steering sent a flow's packet (either direction) to instance id `instance` and
        installed the flow's rules to it: the flow is served there from now on. A flow whose older state
        another instance holds (it came back after its rules idled out) gets that state merged in at
        the next period; one that landed on an instance that is no longer usable is re-steered."""
        key = flow_key(five_tuple)
        flow = self.flows.get(key)
        if flow is not None and not flow.rules_expired:
            # its rules are in, so this is a late copy of a packet that came before them: on the instance
            # it landed on, or, if the flow has been moved since, on its old one; either way not a landing
            if instance != flow.instance and flow.refreshed_at == flow.steered_at:
                LOG.warning("flow %s landed on %s after its rules idled out, while they were put back to %s "
                            "(%.3f s ago): its packets on %s may be overtaken", key, instance, flow.instance,
                            self._clock() - flow.steered_at, instance)
            return
        if instance not in self.nfs:
            LOG.warning("flow %s landed on unknown instance %s", key, instance)
            return
        if flow is None:
            flow = self.flows.add(five_tuple, instance, self._clock())
        flow.instance = instance
        flow.rules_expired.clear()
        holder = next((nf.id for nf in self.nfs.values()
                       if nf.alive and nf.id != instance and key in nf.flows_with_state), None)
        if holder is not None:
            self._merges[key] = holder
        if not self.nfs[instance].usable:
            self._resteer(flow)
        self.refresh_default_steering()

    def on_rule_expired(self, five_tuple: FiveTuple, age_s: float | None = None) -> None:
        """One direction's rule idled out, `age_s` seconds after the switch installed it (None: unknown); the
        flow is forgotten when both have. While the other direction carries traffic (its own counter grew after
        this one went quiet, an idle timeout ago at the latest) the expired rule comes back at once, to the same
        instance: otherwise this direction's next packet would land anew, possibly elsewhere, taking the other
        direction and its queued packets along. A flow idle both ways (the other direction's last packets at the
        end of the same burst) is not put back: if it returns it lands anew, nothing of it queued anywhere, and
        the landing wins (`on_flow_landed`). Putting it back could not: the flow-removed message always reaches
        the controller before the copy of a packet that landed after the expiry, and the put-back would move
        the flow from under the packets already queued where they landed. A rule installed before the flow's
        current ones (its expiry crossed their steer, e.g. a move's) says nothing about them and is ignored."""
        flow = self.flows.get(flow_key(five_tuple))
        now = self._clock()
        if flow is None or (age_s is not None and now - age_s < flow.steered_at - RULE_AGE_SLACK_S):
            return
        expired = flow.direction(five_tuple)
        other = "reverse" if expired == "forward" else "forward"
        flow.rules_expired.add(expired)
        if len(flow.rules_expired) == 2:
            self.flows.forget(flow.key)
        elif self.switch is not None and flow.grew_after.get(other, -math.inf) > now - self._idle_timeout_s:
            flow.steered(flow.instance, now)
            flow.refreshed_at = now
            self.switch.steer(flow.five_tuple, self.nfs[flow.instance].desc)

    # --- the period ------------------------------------------------------------------------
    def on_period(self, quiet_ms: float, idle_timeout_s: float) -> None:
        """Once per period, after the rates are updated: refresh the default steering and merge the older
        state of flows that landed away from it."""
        self._idle_timeout_s = idle_timeout_s
        if self.recovery is not None and self.recovery.rules_found:
            self._finish_adoption(quiet_ms)
        self.refresh_default_steering()
        merges, self._merges = self._merges, {}
        for key, holder in merges.items():
            flow = self.flows.get(key)
            if flow is not None and flow.instance != holder and self.nfs[holder].alive:
                self._merge_state(flow, self.nfs[holder], self.nfs[flow.instance], quiet_ms)

    def _finish_adoption(self, quiet_ms: float) -> None:
        """The first period after adopting the switch's rules, with the NFs' reports in: the flows of instances
        that do not serve (dead with, or before, the old controller) are re-steered, the two directions of a flow
        are made to agree, the interrupted moves finished or rolled back and older state merged."""
        recovery, self.recovery = self.recovery, None
        for flow in self.flows:
            if not self.nfs[flow.instance].usable:
                self._resteer(flow)
            elif flow.key in recovery.disagreeing and self.switch is not None:
                try:
                    flow.steered(flow.instance, self._clock())
                    self.switch.steer(flow.five_tuple, self.nfs[flow.instance].desc)
                except SwitchError as error:
                    LOG.warning("could not set the rules of %s right: %s", flow.key, error)
        self._merges.update(recovery.run({flow.key: flow.instance for flow in self.flows}, self.nfs, quiet_ms))
        self.recovered = recovery.recovered

    def _merge_state(self, flow: SteeredFlow, holder: NFRuntime, serving: NFRuntime, quiet_ms: float) -> None:
        """Move the state `holder` kept of a flow that idled out there into the instance now serving it.
        No packet of the flow reaches `holder` any more, so its export only waits `quiet_ms`."""
        try:
            state = holder.channel.export(flow.five_tuple, quiet_ms)
        except Exception as error:  # noqa: BLE001 - an NF failure of any kind must not stop the loop
            LOG.warning("could not export the old state of %s from %s: %s", flow.key, holder.id, error)
            return
        try:
            serving.channel.import_(flow.five_tuple, state)
        except Exception as error:  # noqa: BLE001 - an NF failure of any kind must not stop the loop
            LOG.warning("could not merge the old state of %s into %s (%s): kept at %s", flow.key, serving.id,
                        error, holder.id)
            try:
                holder.channel.import_(flow.five_tuple, state)
            except Exception as again:  # noqa: BLE001
                LOG.error("state of %s lost: %s", flow.key, again)

    def mark_dead(self, nf: NFRuntime, why: str) -> None:
        """No new flow lands on it any more and its flows go to the live instances at once; their NF
        state died with the instance."""
        nf.alive, nf.last_error = False, why
        LOG.warning("NF %s is dead (%s): re-steering %d flows", nf.id, why, len(self.flows.on(nf.id)))
        self.refresh_default_steering()
        for flow in self.flows.on(nf.id):
            self._resteer(flow)

    def _resteer(self, flow: SteeredFlow) -> None:
        """Send a flow whose instance can no longer serve it to the least utilised usable one."""
        target = self._least_utilised() or self._activate_standby()
        if target is None:
            LOG.error("no live NF instance left for flow %s", flow.key)
            return
        flow.steered(target.id, self._clock())
        if self.switch is not None:
            try:
                self.switch.steer(flow.five_tuple, target.desc)
            except SwitchError as error:
                LOG.warning("could not re-steer %s: %s", flow.key, error)

    def _least_utilised(self, exclude: Iterable[str] = ()) -> NFRuntime | None:
        """The usable instance (not in `exclude`) with the least expected utilisation, flows without a
        measured rate counted at the mean rate."""
        load, excluded = self.flows.expected_load(), set(exclude)
        usable = [nf for nf in self.nfs.values() if nf.usable and nf.id not in excluded]
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
