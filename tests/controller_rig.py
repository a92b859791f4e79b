"""A switch-less controller rig shared by the controller's tests: a fake switch, fake NF channels and a
clock the tests move by hand. The `rig` fixture (tests/conftest.py) is `make_rig` on a fresh directory."""
from __future__ import annotations

from pathlib import Path

from controller_app.config import ClusterDescription, ControllerConfig
from controller_app.core import Controller
from controller_app.steering import SwitchError, canonical, flow_key
from twin.flow import FiveTuple

SOURCE_PORT = 1


def cluster_dict(active=("nf1", "nf2"), standby=("nf3",), capacity=100.0) -> dict:
    hosts = [{"name": "src", "role": "source", "port": SOURCE_PORT, "mac": "00:00:00:00:00:01"},
             {"name": "sink", "role": "sink", "port": 2, "mac": "00:00:00:00:00:02"}]
    for k, name in enumerate((*active, *standby)):
        hosts.append({"name": name, "role": "nf", "port": 3 + k, "mac": f"00:00:00:00:01:{k:02x}",
                      "instance": name, "capacity_pps": capacity, "buffer_packets": 1000,
                      "processing_ms": 5.0, "active": name in active, "control_socket": f"/tmp/{name}.sock"})
    return {"dpid": 1, "hosts": hosts}


class FakeNF:
    """Records every call; `fail_on` makes one method raise, `dead` makes every call raise ConnectionError (the
    process is gone), `stalled` TimeoutError (the process does not answer).
    A hold takes `hold_s` seconds of the clock (none unless set); an export takes 50 ms."""

    def __init__(self, desc, calls: list, clock):
        self.desc, self.calls, self.clock = desc, calls, clock
        self.active = desc.active
        self.queue = 0.0
        self.state: dict[str, dict] = {}
        self.fail_on: str | None = None
        self.dead = False
        self.stalled = False
        self.flows_with_state: list[FiveTuple] = []
        self.held: list[FiveTuple] = []
        self.hold_s = 0.0
        self.exported: dict[str, tuple[FiveTuple, dict]] = {}
        """Exported states kept until acknowledged (transfer id -> (key, state)), as the NF keeps them."""
        self.merged: dict[str, set[str]] = {}
        """Flow id -> the transfer ids merged into its state here: a second import of one changes nothing."""
        self.queued: list[dict] | None = None
        """The report's per-flow queue (`queued`), when set; without it the report has no such field."""

    def _call(self, name, *args):
        self.calls.append((self.desc.instance, name, *args))
        if self.dead:
            raise ConnectionError(f"{self.desc.instance} socket closed")
        if self.stalled:
            raise TimeoutError(f"{self.desc.instance} timed out")
        if name == self.fail_on:
            raise RuntimeError(f"{name} refused")

    def report(self):
        self._call("report")
        return {"instance": self.desc.instance, "time": 0.0, "capacity_pps": self.desc.capacity_pps,
                "buffer_packets": self.desc.buffer_packets, "queue_packets": self.queue, "received": 0,
                "processed": 0, "dropped": 0, "active": self.active,
                "flows": [{"key": list(canonical(t))} for t in self.flows_with_state],
                "held": [list(t) for t in self.held],
                "exported": [{"key": list(t), "state": s} for t, s in self.exported.values()],
                **({} if self.queued is None else {"queued": self.queued})}

    def hold(self, key):
        self._call("hold", flow_key(key))
        self.held.append(canonical(key))
        self.clock.now += self.hold_s

    def export(self, key, quiet_ms):
        self._call("export", flow_key(key))
        self.clock.now += 0.05  # draining the flow's queue takes 50 ms
        state = {**self.state.pop(flow_key(key), {"packets": 7}), "transfer": f"{self.desc.instance}.{len(self.calls)}",
                 "transfers": sorted(self.merged.pop(flow_key(key), ()))}
        self.exported[state["transfer"]] = (canonical(key), state)
        return state

    def import_(self, key, state):
        self._call("import", flow_key(key))
        transfer = (state or {}).get("transfer")
        self.exported.pop(transfer, None)
        if transfer is not None and transfer in self.merged.get(flow_key(key), ()):
            return
        self.merged.setdefault(flow_key(key), set()).update({transfer, *(state or {}).get("transfers", ())} - {None})
        self.state[flow_key(key)] = {k: v for k, v in (state or {}).items() if k not in ("transfer", "transfers")}

    def acknowledge(self, key, transfer):
        self._call("acknowledge", flow_key(key))
        self.exported.pop(transfer, None)

    def release(self, key):
        self._call("release", flow_key(key))
        if canonical(key) in self.held:
            self.held.remove(canonical(key))

    def activate(self):
        self._call("activate")
        self.active = True

    def deactivate(self):
        self._call("deactivate")
        self.active = False


class FakeSwitch:
    """Rules per canonical flow and the default steering's instance, which `landing` applies. Changes
    of the default go to `default_changes` as (how many calls came before, instance), not to `calls`."""

    def __init__(self, calls: list):
        self.calls = calls
        self.rules: dict[FiveTuple, str] = {}
        self.default: str | None = None
        self.default_changes: list[tuple[int, str | None]] = []
        self.base_installed = False
        self.fail_barrier = False

    def reset(self, cluster, target, flows):
        self.calls.append(("switch", "reset", len(flows)))
        self.base_installed = True
        self.default = target.instance if target else None
        self.rules = {canonical(t): nf.instance for t, nf in flows}

    def adopt(self, cluster, target):
        """Keeps `rules` (a restarted controller adopts them: `found_rules` is what the switch answers)."""
        self.calls.append(("switch", "adopt", len(self.rules)))
        self.base_installed = True
        self.default = target.instance if target else None

    def found_rules(self) -> list[tuple[FiveTuple, str]]:
        """The per-flow rules as the switch reports them: both directions of every flow."""
        return [(t, nf) for c, nf in self.rules.items() for t in (c, c.reverse())]

    def set_default_steering(self, target):
        self.default = target.instance if target else None
        self.default_changes.append((len(self.calls), self.default))

    def landing(self, five_tuple) -> str | None:
        """Where a flow's packet goes: along its rules if it has them, else to the default steering's
        instance, installing its rules for both directions there."""
        if canonical(five_tuple) not in self.rules and self.default is not None:
            self.rules[canonical(five_tuple)] = self.default
        return self.rules.get(canonical(five_tuple))

    def steer(self, five_tuple, nf):
        self.calls.append(("switch", "steer", flow_key(five_tuple), nf.instance))
        self.rules[five_tuple] = nf.instance

    def barrier(self, timeout_s):
        self.calls.append(("switch", "barrier"))
        if self.fail_barrier:
            raise SwitchError("barrier timed out")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Rig:
    """The controller under test and its fakes: `controller`, `switch`, `nfs` (by instance), `calls`
    (every NF and switch call in order), `clock`, `log` (the transition log's path)."""

    def __init__(self, controller: Controller, switch: FakeSwitch, nfs: dict[str, FakeNF], calls: list,
                 clock: Clock, log: Path):
        self.controller, self.switch, self.nfs, self.calls, self.clock, self.log = \
            controller, switch, nfs, calls, clock, log


def make_rig(directory: Path, **config) -> Rig:
    """A controller (policy OFM, unless `config` changes it or other fields) on the cluster of `cluster_dict()`,
    its switch connected, its NFs polled."""
    calls: list = []
    nfs: dict[str, FakeNF] = {}
    clock = Clock()

    def channel(desc, timeout):
        nfs[desc.instance] = FakeNF(desc, calls, clock)
        return nfs[desc.instance]

    config = ControllerConfig.from_dict({"transition_log": str(directory / "transitions.jsonl"), "policy": "ofm",
                                         **config})
    controller = Controller(ClusterDescription.from_dict(cluster_dict()), config, channel, clock=clock)
    switch = FakeSwitch(calls)
    controller.on_switch_connected(switch)
    controller.poll_instances()
    return Rig(controller, switch, nfs, calls, clock, directory / "transitions.jsonl")


def restart(rig, directory: Path, **config) -> Controller:
    """A fresh controller process in place of `rig.controller` (killed: it does nothing more), on the same
    switch (its rules kept) and the same NFs; it adopts the switch's rules and polls the NFs. `rig.controller`
    becomes the new one."""
    config = ControllerConfig.from_dict({"transition_log": str(directory / "transitions.jsonl"), "policy": "ofm",
                                         **config})
    controller = Controller(ClusterDescription.from_dict(cluster_dict()), config,
                            lambda desc, timeout: rig.nfs[desc.instance], clock=rig.clock)
    controller.on_switch_connected(rig.switch)
    controller.on_rules_found(rig.switch.found_rules())
    controller.poll_instances()
    rig.controller = controller
    return controller


def new_flow(rig, five_tuple: FiveTuple) -> str | None:
    """A new flow's first packet: the default steering places it, the controller hears of it."""
    instance = rig.switch.landing(five_tuple)
    if instance is not None:
        rig.controller.on_flow_landed(five_tuple, instance)
    return instance


def land(rig, five_tuple: FiveTuple, instance: str) -> None:
    """A new flow that the default steering placed on `instance`."""
    rig.switch.rules[canonical(five_tuple)] = instance
    rig.controller.on_flow_landed(five_tuple, instance)


def tuple_n(n: int) -> FiveTuple:
    return FiveTuple("10.0.0.1", "10.0.1.1", 10000 + n, 80, 6)


def run_period(rig, rates: dict[FiveTuple, float]) -> object:
    """Feed one period of switch counters growing at `rates` (pps, forward direction) and tick."""
    rig.clock.now += 1.0
    counters = getattr(rig, "counters", {})
    for t, rate in rates.items():
        counters[t] = counters.get(t, 0) + rate
    rig.counters = counters
    rig.controller.on_flow_stats([(t, int(p), int(p) * 100) for t, p in counters.items()], rig.clock.now)
    return rig.controller.tick()


def overload_nf1(rig) -> list[FiveTuple]:
    flows = [tuple_n(n) for n in range(6)]
    for t in flows:  # every flow lands on nf1, as an unlucky hash would place them
        land(rig, t, "nf1")
    rig.controller.config = rig.controller.config.updated({"mode": "dry-run"})
    run_period(rig, {t: 0 for t in flows})
    rig.controller.config = rig.controller.config.updated({"mode": "auto"})
    return flows
