"""After a controller restart: the moves its predecessor left half done, finished or rolled back.

A restarted controller adopts the switch's per-flow rules (`Steering.connect`, `adopt_rules`): they say where
each flow's packets go now. The NF reports say the rest: which flows an instance holds (a move's destination
buffers them from its first step, `hold`, to its last, `release`) and which flows it keeps state of. A flow held
at the instance its rules point at was redirected: the move is finished (the state still at another instance is
exported from there and imported, then the held packets are released, in order). A flow held anywhere else was
never redirected: the hold is released, and the flow stays where its rules send it. Either way no packet is lost
or reordered, and no state either: an NF keeps each state it exports until the import is acknowledged, and lists
it in its report, so a state the dead controller had exported but not imported is imported from there
(`settle_exports`, before the held packets are released); an import counts once (an NF knows the ids of the
exports merged into a flow's state).

`FAULT_ENV` is a test-only hook that makes the controller kill itself (SIGKILL) at a chosen point of a
migration batch, so that the tests interrupt a batch exactly there (docs/testbed.md, "Faults").
"""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

from controller_app.instances import NFRuntime
from twin.flow import FiveTuple, FlowIdError, FlowKey

LOG = logging.getLogger(__name__)

FAULT_ENV = "DEEPMIGRATION_KILL_AT"
"""`STEP:K` (e.g. `hold:2`, `barrier:1`, `import:1`): SIGKILL the controller once the K-th move of a batch has
completed STEP (the barrier counts once per batch). For fault tests only; unset in normal runs."""


STEPS = ("hold", "redirect", "barrier", "export", "import", "release")


def kill_point() -> tuple[str, int] | None:
    """The step and count of `FAULT_ENV`, or None when it is not set."""
    value = os.environ.get(FAULT_ENV, "")
    if not value:
        return None
    step, _, count = value.partition(":")
    if step not in STEPS or not count.isdigit() or int(count) < 1:
        LOG.error("%s=%r ignored: want STEP:K, STEP one of %s, K >= 1", FAULT_ENV, value, ", ".join(STEPS))
        return None
    return step, int(count)


def maybe_kill(point: tuple[str, int] | None, step: str, done: int) -> None:
    """Kill this process if `done` moves have now completed `step` and that is the kill point."""
    if point is not None and point == (step, done):
        LOG.warning("%s=%s: killing the controller now", FAULT_ENV, os.environ.get(FAULT_ENV))
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class InterruptedMove:
    """A flow an instance holds although no controller is moving it."""

    flow: str
    five_tuple: FiveTuple
    """Canonical orientation."""
    holder: str
    finish: bool
    """Whether the flow's rules already send it to the holder (finish the move) or not (roll it back)."""
    sources: tuple[str, ...] = ()
    """The other live instances that keep state of the flow, to export it from when finishing."""


@dataclass
class RecoveredMove:
    move: InterruptedMove
    outcome: str
    """"finished", "rolled_back" or "failed"."""
    error: str = ""


def interrupted_moves(serving: dict[str, str], nfs: dict[str, NFRuntime]) -> list[InterruptedMove]:
    """The held flows of the live instances' last reports, against `serving` (flow id -> the instance its rules
    send it to)."""
    moves = []
    for nf in nfs.values():
        if not nf.alive:
            continue
        for key in (nf.last_report or {}).get("held", ()):
            flow = FlowKey.of(*FiveTuple(*key))
            finish = serving.get(flow.id) == nf.id
            sources = tuple(other.id for other in nfs.values()
                            if finish and other.alive and other.id != nf.id and flow.id in other.flows_with_state)
            moves.append(InterruptedMove(flow.id, flow.a_to_b, nf.id, finish, sources))
    return moves


def recover(move: InterruptedMove, nfs: dict[str, NFRuntime], quiet_ms: float) -> RecoveredMove:
    """Finish or roll back one interrupted move. A state that cannot be imported goes back to its source."""
    holder = nfs[move.holder]
    try:
        for source in (nfs[s] for s in move.sources):
            state = source.channel.export(move.five_tuple, quiet_ms)
            try:
                holder.channel.import_(move.five_tuple, state)
            except Exception:
                source.channel.import_(move.five_tuple, state)
                raise
            acknowledge(source, move.five_tuple, state)
        holder.channel.release(move.five_tuple)
    except Exception as error:  # noqa: BLE001 - an NF failure of any kind must not stop the loop
        LOG.error("interrupted move of %s to %s not recovered: %s", move.flow, move.holder, error)
        return RecoveredMove(move, "failed", str(error))
    outcome = "finished" if move.finish else "rolled_back"
    LOG.warning("interrupted move of %s to %s %s (state from %s)", move.flow, move.holder, outcome,
                ", ".join(move.sources) or "nowhere")
    return RecoveredMove(move, outcome)


def acknowledge(source: NFRuntime, five_tuple: FiveTuple, state) -> None:
    """Tell `source` that the state it exported was imported, so it drops the copy it keeps. Best effort: a copy
    left behind is settled at a later period (`settle_exports`), where importing it again changes nothing."""
    transfer = state.get("transfer") if isinstance(state, dict) else None
    if transfer is None:
        return
    try:
        source.channel.acknowledge(five_tuple, transfer)
    except Exception as error:  # noqa: BLE001 - an NF failure of any kind must not stop the loop
        LOG.warning("could not acknowledge the import of %s's state to %s: %s", FlowKey.of(*five_tuple).id,
                    source.id, error)


def settle_exports(serving: dict[str, str], nfs: dict[str, NFRuntime], *, adopting: bool = False) -> list[str]:
    """Import every exported state an NF still keeps (its report's `exported`: the import was never acknowledged,
    e.g. the controller died between a move's export and import) into the instance serving its flow (flow id ->
    instance in `serving`; the exporter itself for a flow no longer steered, unless the switch's rules are still
    being adopted: `adopting`), then acknowledge it. An NF merges a state once, so one that had been imported
    changes nothing. Returns the flow ids settled."""
    settled = []
    for nf in nfs.values():
        if not nf.alive or nf.stalled:
            continue
        for entry in (nf.last_report or {}).get("exported", ()):
            try:
                flow, state = FlowKey.of(*entry["key"]), entry["state"]
            except (FlowIdError, KeyError, TypeError) as error:
                LOG.error("NF %s reports an exported state that names no flow (%r): %s", nf.id, entry, error)
                continue
            if adopting and flow.id not in serving:
                continue  # its rules may not be known yet
            target = nfs.get(serving.get(flow.id, nf.id))
            if target is None or not target.alive or target.stalled:
                continue  # a later period, once the flow's instance answers (or the flow is re-steered)
            try:
                target.channel.import_(flow.a_to_b, state)
            except Exception as error:  # noqa: BLE001 - an NF failure of any kind must not stop the loop
                LOG.warning("exported state of %s at %s not settled into %s: %s", flow.id, nf.id, target.id, error)
                continue
            if target is not nf:
                acknowledge(nf, flow.a_to_b, state)
            LOG.warning("exported state of %s kept at %s settled into %s", flow.id, nf.id, target.id)
            settled.append(flow.id)
    return settled


@dataclass
class Recovery:
    """An adoption in progress: the rules are in once `rules_found`; the next period recovers the moves."""

    rules_found: bool = False
    disagreeing: set[str] = field(default_factory=set)
    """Flows whose two directions' rules sent them to different instances."""
    recovered: list[RecoveredMove] = field(default_factory=list)

    def run(self, serving: dict[str, str], nfs: dict[str, NFRuntime], quiet_ms: float) -> dict[str, str]:
        """Recover every interrupted move; returns the other adopted flows whose older state another live
        instance keeps (flow id -> that instance), for `Steering` to merge as it does for returning flows."""
        moves = interrupted_moves(serving, nfs)
        self.recovered = [recover(move, nfs, quiet_ms) for move in moves]
        handled = {move.flow for move in moves if move.finish}
        return dict(_holders(serving, nfs, handled))


def _holders(serving: dict[str, str], nfs: dict[str, NFRuntime], skip: set[str]) -> Iterable[tuple[str, str]]:
    for key, instance in serving.items():
        if key in skip:
            continue
        holder = next((nf.id for nf in nfs.values() if nf.alive and nf.id != instance and key in nf.flows_with_state),
                      None)
        if holder is not None:
            yield key, holder
