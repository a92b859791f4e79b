"""An NF instance of the testbed: a Prads-like per-flow monitor with a fixed capacity and a bounded buffer.

Frames read from the host's interface join a FIFO of `buffer_packets` (a full buffer drops the
frame and counts it); one processor takes them at `capacity_pps`, parses them and updates the
flow's state (packets, bytes, first and last seen, as Prads keeps per asset), and each frame leaves
unchanged `processing_ms` after its service started. So an instance given more than its capacity
queues, then drops: that is the overload the controller has to fix, and the only place the design
loses packets.

The controller drives it over a Unix socket (nf_channel): reports, activation, and the per-flow
hold / export / import / release steps of a loss-free, order-preserving migration.

    python -m mininet_topos.nf_instance --instance nf1 --interface nf1-eth0 --socket /tmp/x/nf1.sock \
        --capacity-pps 300 --buffer-packets 100 --processing-ms 20
"""

from __future__ import annotations

import argparse
import logging
import math
import secrets
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mininet_topos.frames import parse_frame
from mininet_topos.lifecycle import stop_on_sigterm
from mininet_topos.nf_channel import ChannelServer, RequestError, parse_key
from mininet_topos.packet_socket import PACKET_OUTGOING, open_packet_socket, socket_drops
from twin.flow import FlowKey

log = logging.getLogger("nf_instance")

EGRESS_GUARD_S = 0.02
"""An exported flow's last frame left this instance at least this long ago. Frames that two instances
send within a millisecond or two can leave the userspace switch in either order, so without the guard
the destination's first released frame could overtake the source's last one."""
TRANSFERS_KEPT = 8
"""How many ids of the exported states merged into a flow's state it remembers (and carries when it is exported
in turn), so that an exported state imported a second time counts once."""
JOURNAL_KEPT = 4096
"""Exported states kept until their import is acknowledged; beyond this the oldest is given up (logged)."""
FLOW_IDLE_S = 30.0
"""How long a flow may go without a frame (or an import) before the NF forgets its state, as Prads and other
per-flow monitors time their flows out. It must exceed the switch's rule idle timeout (the controller's
`rule_idle_timeout_s`: 3 s live, at most 10 s by default) plus a period: while a flow's rules send it here the
flow is the controller's to move, so its state must still be here, and a flow returning after its rules idled
out gets its older state merged from here (docs/testbed.md "Controller memory"). Forgotten, a returning flow
starts afresh, as it would at a real NF after its timeout."""
SWEEP_S = 1.0
"""How often the receive loop looks for idle flows (a report looks too)."""


@dataclass
class FlowState:
    """What the NF knows about a flow; this is what a migration moves."""

    packets: int = 0
    bytes: int = 0
    first_seen: float = math.inf  # wall-clock seconds
    last_seen: float = -math.inf
    transfers: tuple[str, ...] = field(default=())
    """The ids of the last TRANSFERS_KEPT exported states merged into this one."""

    def merge(self, other: FlowState) -> None:
        self.packets += other.packets
        self.bytes += other.bytes
        self.first_seen = min(self.first_seen, other.first_seen)
        self.last_seen = max(self.last_seen, other.last_seen)
        self.transfers = tuple(dict.fromkeys(self.transfers + other.transfers))[-TRANSFERS_KEPT:]

    def exported(self, transfer: str) -> dict:
        """The state as an export hands it over: its counters, the id of this transfer and those it merged."""
        return {**self.to_json(), "transfer": transfer, "transfers": list(self.transfers)}

    def to_json(self) -> dict:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }

    @classmethod
    def from_json(cls, value) -> FlowState:
        """A state as `exported` writes it (or without its transfer ids, as one written by hand); the transfer's
        own id joins `transfers`."""
        if not isinstance(value, dict) or set(value) - {"transfer", "transfers"} != {
            "packets", "bytes", "first_seen", "last_seen"
        }:
            raise RequestError(
                f"flow state must be an object with packets, bytes, first_seen, last_seen (and optionally "
                f"transfer, transfers); got {value!r}"
            )
        if not isinstance(value.get("transfers", []), list):
            raise RequestError(f"flow state transfers must be a list of transfer ids, not {value['transfers']!r}")
        transfers = [*value.get("transfers", ()), *([value["transfer"]] if "transfer" in value else [])]
        if not all(isinstance(t, str) for t in transfers):
            raise RequestError(f"flow state transfer ids must be strings, not {value!r}")
        for name in ("packets", "bytes"):
            if not isinstance(value[name], int) or value[name] < 0:
                raise RequestError(f"flow state {name} must be a non-negative integer, not {value[name]!r}")
        for name in ("first_seen", "last_seen"):
            if not isinstance(value[name], (int, float)):
                raise RequestError(f"flow state {name} must be a number, not {value[name]!r}")
        return cls(value["packets"], value["bytes"], value["first_seen"], value["last_seen"],
                   tuple(dict.fromkeys(transfers))[-TRANSFERS_KEPT:])


class NetworkFunction:
    """The instance's data path and control operations, independent of where frames come from.

    `receive` is called for each arriving frame; `running()` runs the processor and output threads
    that hand processed frames to `send`; `handle` answers control requests.
    """

    def __init__(
        self,
        instance: str,
        *,
        capacity_pps: float,
        buffer_packets: int,
        processing_ms: float,
        active: bool,
        send: Callable[[bytes], object],
        flow_idle_s: float = FLOW_IDLE_S,
    ):
        if not capacity_pps > 0 or buffer_packets < 1 or processing_ms < 0 or not flow_idle_s > 0:
            raise ValueError(
                f"{instance}: need capacity_pps > 0, buffer_packets >= 1, processing_ms >= 0 and "
                f"flow_idle_s > 0, not {capacity_pps!r}, {buffer_packets!r}, {processing_ms!r} and {flow_idle_s!r}"
            )
        self.instance = instance
        self.capacity_pps = capacity_pps
        self.buffer_packets = buffer_packets
        self.processing_ms = processing_ms
        self.flow_idle_s = flow_idle_s
        self.active = active
        self.shutdown_requested = threading.Event()
        self._send = send
        self._service_s = 1.0 / capacity_pps
        self._latency_s = max(processing_ms / 1000, self._service_s)

        lock = threading.Lock()
        self._lock = lock
        self._queued = threading.Condition(lock)  # a frame joined the FIFO
        self._processed = threading.Condition(lock)  # a frame joined the output line
        self._left = threading.Condition(lock)  # a frame left the instance
        self._stopping = False
        self._queue: deque[tuple[FlowKey, bytes]] = deque()
        self._held: dict[FlowKey, deque[bytes]] = {}
        self._held_packets = 0
        self._output: deque[tuple[float, FlowKey, bytes]] = deque()  # (due, key, frame), due ascending
        self._inside: Counter[FlowKey] = Counter()  # accepted frames not yet sent, per flow
        self._last_sent: dict[FlowKey, float] = {}
        self._last_arrival: dict[FlowKey, float] = {}  # monotonic seconds
        self._flows: dict[FlowKey, FlowState] = {}
        self._touched: OrderedDict[FlowKey, float] = OrderedDict()  # last frame or import (monotonic), oldest first
        self._exported: dict[str, tuple[FlowKey, dict]] = {}  # transfer id -> the state as exported
        self.received = self.processed = self.dropped = self.forwarded = self.ignored = self.forgotten = 0
        self.socket_dropped = 0  # frames the kernel dropped before this process read them (queue full)
        self._ops: dict[str, Callable[[dict], dict]] = {
            "report": lambda request: self.report(),
            "hold": lambda request: self.hold(parse_key(request.get("key"))),
            "export": lambda request: self.export(
                parse_key(request.get("key")),
                quiet_ms=_milliseconds(request, "quiet_ms", 50.0),
                timeout_ms=_milliseconds(request, "timeout_ms", 5000.0),
            ),
            "import": lambda request: self.import_(parse_key(request.get("key")), request.get("state")),
            "release": lambda request: self.release(parse_key(request.get("key"))),
            "acknowledge": lambda request: self.acknowledge(parse_key(request.get("key")), request.get("transfer")),
            "activate": lambda request: self.set_active(True),
            "deactivate": lambda request: self.set_active(False),
            "shutdown": lambda request: self.request_shutdown(),
        }

    # -- data path ---------------------------------------------------------------------------

    def receive(self, frame: bytes) -> None:
        """Admit an arriving frame: held flows' frames wait aside, others join the FIFO if the
        instance is active; either way a full buffer drops it. Frames that are neither IPv4 nor IPv6 are ignored."""
        parsed = parse_frame(frame)
        if parsed is None:
            self.ignored += 1
            return
        key = parsed.key
        with self._lock:
            self.received += 1
            self._last_arrival[key] = self._touch(key)
            held = self._held.get(key)
            if (held is None and not self.active) or len(
                self._queue
            ) + self._held_packets >= self.buffer_packets:
                self.dropped += 1
                return
            self._inside[key] += 1
            if held is not None:
                held.append(frame)
                self._held_packets += 1
            else:
                self._queue.append((key, frame))
                self._queued.notify()

    @contextmanager
    def running(self) -> Iterator[NetworkFunction]:
        """Run the processor and the output line for the duration of the block."""
        threads = [
            threading.Thread(target=self._process_loop, name=f"{self.instance} processor", daemon=True),
            threading.Thread(target=self._output_loop, name=f"{self.instance} output", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            with self._lock:
                self._stopping = True
                for condition in (self._queued, self._processed, self._left):
                    condition.notify_all()
            for thread in threads:
                thread.join(timeout=5)

    def _process_loop(self) -> None:
        """One frame per 1/capacity seconds: a frame waits in the FIFO while the processor is busy."""
        free_at = time.monotonic()
        while True:
            with self._lock:
                while not self._stopping and (not self._queue or time.monotonic() < free_at):
                    self._queued.wait(max(free_at - time.monotonic(), 0) if self._queue else None)
                if self._stopping:
                    return
                key, frame = self._queue.popleft()
            started = time.monotonic()
            free_at = started + self._service_s
            seen = time.time()
            with self._lock:
                self._flows.setdefault(key, FlowState()).merge(FlowState(1, len(frame), seen, seen))
                self.processed += 1
                self._output.append((started + self._latency_s, key, frame))
                self._processed.notify()

    def _output_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and (not self._output or time.monotonic() < self._output[0][0]):
                    self._processed.wait(self._output[0][0] - time.monotonic() if self._output else None)
                if self._stopping:
                    return
                _due, key, frame = self._output.popleft()
            self._send(frame)
            with self._lock:
                self._last_sent[key] = time.monotonic()
                self.forwarded += 1
                self._inside[key] -= 1
                if not self._inside[key]:
                    del self._inside[key]
                self._left.notify_all()

    # -- control -----------------------------------------------------------------------------

    def handle(self, request: dict) -> dict:
        """Answer one control request (the ChannelServer's handler)."""
        operation = self._ops.get(request["op"])
        if operation is None:
            raise RequestError(f"unknown op {request['op']!r}; known: {', '.join(self._ops)}")
        return operation(request)

    def _touch(self, key: FlowKey) -> float:
        """The flow was active just now (lock held): it is the newest in the idle order. Returns the time."""
        now = self._touched[key] = time.monotonic()
        self._touched.move_to_end(key)
        return now

    def forget_idle(self) -> int:
        """Forget every flow with no frame or import for `flow_idle_s`, unless it is held or has frames inside
        (its state, its arrival and departure times); returns how many were forgotten."""
        forgotten = 0
        with self._lock:
            horizon = time.monotonic() - self.flow_idle_s
            while self._touched:
                key, touched = next(iter(self._touched.items()))
                if touched > horizon:
                    break
                if key in self._held or self._inside.get(key):
                    self._touch(key)  # busy, so not idle: looked at again a full idle time later
                    continue
                del self._touched[key]
                forgotten += self._flows.pop(key, None) is not None
                self._last_arrival.pop(key, None)
                self._last_sent.pop(key, None)
            self.forgotten += forgotten
        return forgotten

    def report(self) -> dict:
        self.forget_idle()
        with self._lock:
            flows = [{"key": list(key), **state.to_json()} for key, state in self._flows.items()]
            return {
                "instance": self.instance,
                "time": time.time(),
                "capacity_pps": self.capacity_pps,
                "buffer_packets": self.buffer_packets,
                "processing_ms": self.processing_ms,
                "queue_packets": len(self._queue) + self._held_packets,
                "received": self.received,
                "processed": self.processed,
                "dropped": self.dropped,
                "socket_dropped": self.socket_dropped,
                "forwarded": self.forwarded,
                "ignored": self.ignored,
                "forgotten": self.forgotten,
                "flow_idle_s": self.flow_idle_s,
                "active": self.active,
                "held": [list(key) for key in self._held],
                "flows": flows,
                "queued": self._queued_flows(),
                "exported": [{"key": list(key), "state": state} for key, state in self._exported.values()],
            }

    def _queued_flows(self) -> list[dict]:
        """Per flow with frames in the buffer (the FIFO or held): `packets`, how many, and `drain_packets`, the
        frames the processor takes until it has taken the flow's last one in the FIFO (0: none there). A move's
        export waits for that drain, so the controller can tell at decision time which moves will wait."""
        queued: dict[FlowKey, list[int]] = {}
        for position, (key, _frame) in enumerate(self._queue, start=1):
            entry = queued.setdefault(key, [0, 0])
            entry[0] += 1
            entry[1] = position
        for key, frames in self._held.items():
            if frames:
                queued.setdefault(key, [0, 0])[0] += len(frames)
        return [{"key": list(key), "packets": packets, "drain_packets": drain}
                for key, (packets, drain) in queued.items()]

    def hold(self, key: FlowKey) -> dict:
        with self._lock:
            if key in self._held:
                raise RequestError(f"flow {list(key)} is already held")
            self._held[key] = deque()
        return {"key": list(key)}

    def release(self, key: FlowKey) -> dict:
        """Queue the held frames behind what is queued now; the flow's later frames queue behind them."""
        with self._lock:
            held = self._held.pop(key, None)
            if held is None:
                raise RequestError(f"flow {list(key)} is not held")
            self._held_packets -= len(held)
            self._queue.extend((key, frame) for frame in held)
            self._queued.notify()
        return {"key": list(key), "released": len(held)}

    def export(self, key: FlowKey, *, quiet_ms: float, timeout_ms: float) -> dict:
        """Wait until the flow has no frame inside the instance, none arrived for quiet_ms and the last
        one sent had EGRESS_GUARD_S to get through the switch, then remove its state and return it
        (None if it has none)."""
        quiet_s = quiet_ms / 1000
        deadline = time.monotonic() + timeout_ms / 1000
        with self._lock:
            if key in self._held:
                raise RequestError(f"flow {list(key)} is held here; release it before exporting")
            while True:
                now = time.monotonic()
                inside = self._inside.get(key, 0)
                quiet_at = max(self._last_arrival.get(key, -math.inf) + quiet_s,
                               self._last_sent.get(key, -math.inf) + EGRESS_GUARD_S)
                if not inside and now >= quiet_at:
                    break
                if now >= deadline:
                    raise RequestError(
                        f"flow {list(key)} not drained after {timeout_ms:g} ms: {inside} frames inside, "
                        f"last arrival {(now - quiet_at + quiet_s) * 1000:.0f} ms ago"
                    )
                self._left.wait((min(deadline, quiet_at) if not inside else deadline) - now)
            state = self._flows.pop(key, None)
            self._last_arrival.pop(key, None)
            self._last_sent.pop(key, None)
            self._touched.pop(key, None)
            if state is None:
                return {"key": list(key), "state": None}
            exported = state.exported(secrets.token_hex(8))
            self._exported[exported["transfer"]] = (key, exported)
            if len(self._exported) > JOURNAL_KEPT:
                transfer, (old, _) = next(iter(self._exported.items()))
                del self._exported[transfer]
                log.warning("%s: exported state %s of %s never acknowledged: given up", self.instance, transfer, old)
        return {"key": list(key), "state": exported}

    def import_(self, key: FlowKey, state_json) -> dict:
        """Merge exported state (None: nothing to merge) into the flow's state here, once: a state whose
        transfer id the flow's state has merged already is a duplicate and changes nothing. A state this NF
        exported itself and still keeps (a rolled-back move) is taken back."""
        if state_json is None:
            return {"key": list(key)}
        state = FlowState.from_json(state_json)
        transfer = state_json.get("transfer")
        with self._lock:
            kept = self._exported.pop(transfer, None)  # exported from here: taken back (or already merged)
            current = self._flows.get(key)
            if transfer is not None and current is not None and transfer in current.transfers:
                return {"key": list(key), "duplicate": True}
            if kept is not None:
                log.info("%s: exported state %s of %s taken back", self.instance, transfer, list(key))
            self._flows.setdefault(key, FlowState()).merge(state)
            self._touch(key)
        return {"key": list(key)}

    def acknowledge(self, key: FlowKey, transfer) -> dict:
        """The state exported as `transfer` has been imported elsewhere: forget the copy kept of it."""
        if not isinstance(transfer, str):
            raise RequestError(f"transfer must be the string id of an export, not {transfer!r}")
        with self._lock:
            known = self._exported.pop(transfer, None) is not None
        return {"key": list(key), "acknowledged": known}

    def set_active(self, active: bool) -> dict:
        """An inactive (standby or drained) instance drops new frames except those of held flows,
        and still processes what it has queued."""
        with self._lock:
            self.active = active
        return {"active": active}

    def request_shutdown(self) -> dict:
        self.shutdown_requested.set()
        return {}


def _milliseconds(request: dict, name: str, default: float) -> float:
    value = request.get(name, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 600_000:
        raise RequestError(f"{name} must be a number of milliseconds in 0..600000, not {value!r}")
    return float(value)


def serve(interface: str, socket_path: str, **nf_options) -> None:
    """Run an NF on `interface` with its control socket at `socket_path` until shutdown or SIGTERM."""
    packets = open_packet_socket(interface, promiscuous=True, timeout=0.2)
    try:
        nf = NetworkFunction(send=packets.send, **nf_options)
        with stop_on_sigterm(), nf.running(), ChannelServer(socket_path, nf.handle):
            log.info("%s up on %s, control socket %s", nf.instance, interface, socket_path)
            sweep_at = time.monotonic() + SWEEP_S
            while not nf.shutdown_requested.is_set():
                nf.socket_dropped += socket_drops(packets)
                if time.monotonic() >= sweep_at:
                    nf.forget_idle()
                    sweep_at = time.monotonic() + SWEEP_S
                try:
                    frame, address = packets.recvfrom(65535)
                except TimeoutError:
                    continue
                if address[2] != PACKET_OUTGOING:  # our own forwarded frames show up too
                    nf.receive(frame)
    finally:
        packets.close()
    summary = {name: value for name, value in nf.report().items() if name not in ("flows", "held", "queued")}
    log.info("%s stopped: %s", nf.instance, summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mininet_topos.nf_instance", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--instance", required=True, help="instance id, e.g. nf1")
    parser.add_argument("--interface", required=True, help="the host interface facing the switch")
    parser.add_argument("--socket", required=True, help="path of the control socket to create")
    parser.add_argument("--capacity-pps", type=float, required=True)
    parser.add_argument("--buffer-packets", type=int, required=True)
    parser.add_argument("--processing-ms", type=float, required=True)
    parser.add_argument("--flow-idle-s", type=float, default=FLOW_IDLE_S,
                        help=f"forget a flow's state after this long without a frame (default {FLOW_IDLE_S:g}; "
                             "longer than the switch's rule idle timeout)")
    parser.add_argument("--standby", action="store_true", help="start inactive, until `activate`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        serve(
            args.interface,
            args.socket,
            instance=args.instance,
            capacity_pps=args.capacity_pps,
            buffer_packets=args.buffer_packets,
            processing_ms=args.processing_ms,
            active=not args.standby,
            flow_idle_s=args.flow_idle_s,
        )
    except (OSError, ValueError) as exc:
        print(f"nf_instance: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
